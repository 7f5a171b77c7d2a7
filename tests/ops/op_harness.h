// Table-driven op checking in the spirit of ggml's test-backend-ops. An op case is a struct:
//   std::string name() const;           Tolerance tol;
//   std::vector<Input> inputs(const Philox&) const;           (random, deterministic)
//   Vecs reference(const Vecs& in) const;                      (fp64, ops/ref)
//   template <class T> Vecs forward(const Vecs& in, const Ctx&) const;
//   template <class T> Vecs backward(const Vecs& in, const Vecs& dout, const Ctx&) const;
//        (one gradient per input; empty for inputs that are not differentiable)
// check_op compares forward<f64> and forward<f32> with the reference, the f64 backward with
// central finite differences of L = sum(r * forward<f64>) for a random projection r, and the
// f32 backward with the f64 one. All errors are normwise: max|a-b| / max|b|.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "core/ctx.h"
#include "core/rng.h"

namespace um::test {

using Vecs = std::vector<std::vector<double>>;

struct Input {
  std::string name;
  std::vector<double> data;
  bool diff = true;
};

struct Tolerance {
  double f64 = 1e-12;   // f64 op vs fp64 reference: only summation order differs
  double f32 = 2e-6;    // f32 op vs fp64 reference: a few float roundings per output
  double grad = 1e-7;   // f64 backward vs central differences with h = 1e-5: O(h^2) + roundoff
  double f32_grad = 1e-5;
};

template <class T>
std::vector<T> to(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

inline std::vector<double> normals(const Philox& rng, uint64_t offset, size_t n,
                                   double scale = 1.0, double mean = 0.0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = mean + scale * rng.normal(offset + i);
  return v;
}

// gtest prints a failing case by its name rather than its bytes.
template <class C>
  requires requires(const C& c) { c.name(); }
std::ostream& operator<<(std::ostream& os, const C& c) {
  return os << c.name();
}

inline double normwise_error(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, mag = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    mag = std::max(mag, std::fabs(b[i]));
  }
  return mag > 0 ? diff / mag : diff;
}

template <class Op>
void check_op(const Op& op) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  Philox rng(20261129, op.name());
  const std::vector<Input> inputs = op.inputs(rng);
  Vecs in;
  for (const Input& x : inputs) in.push_back(x.data);

  const Vecs ref = op.reference(in);
  const Vecs out64 = op.template forward<double>(in, ctx);
  const Vecs out32 = op.template forward<float>(in, ctx);
  ASSERT_EQ(out64.size(), ref.size());
  ASSERT_EQ(out32.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(out64[i].size(), ref[i].size()) << "output " << i;
    EXPECT_LE(normwise_error(out64[i], ref[i]), op.tol.f64) << "f64 forward, output " << i;
    EXPECT_LE(normwise_error(out32[i], ref[i]), op.tol.f32) << "f32 forward, output " << i;
  }

  // Random projection r of the outputs; L(x) = sum r . forward(x).
  Vecs r;
  for (size_t i = 0; i < ref.size(); ++i) r.push_back(normals(rng, 1u << 30, ref[i].size()));
  auto L = [&](const Vecs& x) {
    Vecs o = op.template forward<double>(x, ctx);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i)
      for (size_t j = 0; j < o[i].size(); ++j) s += r[i][j] * o[i][j];
    return s;
  };
  const Vecs g64 = op.template backward<double>(in, r, ctx);
  const Vecs g32 = op.template backward<float>(in, r, ctx);
  ASSERT_EQ(g64.size(), inputs.size());
  const double h = 1e-5;
  for (size_t a = 0; a < inputs.size(); ++a) {
    if (!inputs[a].diff) continue;
    ASSERT_EQ(g64[a].size(), in[a].size()) << "gradient of " << inputs[a].name;
    double gmax = 0;
    for (double g : g64[a]) gmax = std::max(gmax, std::fabs(g));
    // up to 48 coordinates: all of a small input, else a deterministic random subset
    std::vector<size_t> coords;
    const size_t n = in[a].size();
    for (size_t i = 0; i < std::min<size_t>(n, 48); ++i)
      coords.push_back(n <= 48 ? i : rng.below((2u << 30) + a * 1000 + i, n));
    double worst = 0;
    for (size_t i : coords) {
      Vecs xp = in, xm = in;
      xp[a][i] += h;
      xm[a][i] -= h;
      const double num = (L(xp) - L(xm)) / (2 * h);
      worst = std::max(worst, std::fabs(num - g64[a][i]));
    }
    EXPECT_LE(worst / std::max(gmax, 1e-30), op.tol.grad)
        << "finite differences, input " << inputs[a].name << " (max |grad| " << gmax << ")";
    EXPECT_LE(normwise_error(g32[a], g64[a]), op.tol.f32_grad)
        << "f32 backward vs f64, input " << inputs[a].name;
  }
}

}  // namespace um::test
