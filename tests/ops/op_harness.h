// Table-driven op checking in the spirit of ggml's test-backend-ops. An op case is a struct:
//   std::string name() const;           Tolerance tol;
//   std::vector<Input> inputs(const Philox&) const;           (random, deterministic)
//   Vecs reference(const Vecs& in) const;                      (fp64, ops/ref)
//   template <class T> Vecs forward(const Vecs& in, const Ctx&) const;
//   template <class T> Vecs backward(const Vecs& in, const Vecs& dout, const Ctx&) const;
//        (one gradient per input; empty for inputs that are not differentiable)
//   optional: static constexpr bool kAccOnly = true;  (an op of the accumulation type only:
//        router, optimizer, statistics; no bf16 run)
// Cases allocate their buffers on the Ctx's device through Buf/IBuf, so one case runs on every
// backend. The backend axis:
//   check_op        CPU: forward<f64> and forward<f32> against the reference, the f64 backward
//                   against central finite differences of L = sum(r * forward<f64>) for a random
//                   projection r, and the f32 backward against the f64 one.
//   check_op_device CUDA (a GPU, or the CPU emulation of CUDA): forward<f32> against the
//                   reference and backward<f32> against the CPU's f64 backward at float
//                   tolerance; then forward<bf16> and backward<bf16> on inputs rounded to bf16,
//                   against the reference and the f64 backward on those same rounded inputs,
//                   at bf16 tolerance.
// All errors are normwise: max|a-b| / max|b|.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/ctx.h"
#include "core/rng.h"
#include "ops/device_context.h"

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
  // CUDA: f32 kernels (expf, other summation orders) and bf16 (8-bit mantissa: inputs, outputs
  // and intermediate tiles rounded to bf16, sums in f32)
  double cuda_f32 = 1e-5;
  double cuda_f32_grad = 5e-5;
  double bf16 = 2e-2;
  double bf16_grad = 4e-2;
};

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, bf16>) return bf16::from_float(float(x));
  else return T(x);
}

template <class T>
std::vector<T> to(const std::vector<double>& v) {
  std::vector<T> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = from_double<T>(v[i]);
  return r;
}
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = to_double(v[i]);
  return r;
}

// A buffer of an op case on ctx's device, filled from doubles (rounded to T), read back as
// doubles.
template <class T>
class Buf {
 public:
  Buf(const Ctx& ctx, const std::vector<double>& v) : ctx_(ctx), dev_(int64_t(v.size()), ctx.device) {
    const std::vector<T> h = to<T>(v);
    ctx_.upload(dev_.data(), h.data(), h.size());
  }
  Buf(const Ctx& ctx, size_t n, double fill = 0.0) : Buf(ctx, std::vector<double>(n, fill)) {}
  T* ptr() { return dev_.data(); }
  size_t size() const { return size_t(dev_.size()); }
  std::vector<T> host() const {
    std::vector<T> h(size());
    ctx_.download(h.data(), dev_.data(), h.size());
    return h;
  }
  std::vector<double> get() const { return widen(host()); }

 private:
  const Ctx& ctx_;
  DeviceBuffer<T> dev_;
};

// Integer arrays (ids, positions, indices) on ctx's device.
template <class I>
class IBuf {
 public:
  IBuf(const Ctx& ctx, const std::vector<I>& v) : ctx_(ctx), dev_(int64_t(v.size()), ctx.device) {
    ctx_.upload(dev_.data(), v.data(), v.size());
  }
  I* ptr() { return v_size() ? dev_.data() : nullptr; }
  std::vector<I> get() const {
    std::vector<I> h(size_t(dev_.size()));
    ctx_.download(h.data(), dev_.data(), h.size());
    return h;
  }

 private:
  size_t v_size() const { return size_t(dev_.size()); }
  const Ctx& ctx_;
  DeviceBuffer<I> dev_;
};

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
constexpr bool acc_only() {
  if constexpr (requires { Op::kAccOnly; }) return Op::kAccOnly;
  else return false;
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

// The CUDA context of the device checks, made once per test binary.
inline const DeviceContext& cuda_context() {
  static std::unique_ptr<DeviceContext> dc = DeviceContext::create(Device::cuda);
  return *dc;
}

inline std::vector<double> round_to_bf16(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16::from_float(float(v[i])).to_float();
  return r;
}

template <class Op>
void check_op_device(const Op& op) {
  Workspace cpu_ws, ws(Device::cuda);
  const Ctx cpu = Ctx::cpu(&cpu_ws);
  const Ctx ctx = cuda_context().ctx(&ws);
  Philox rng(20261129, op.name());
  const std::vector<Input> inputs = op.inputs(rng);
  Vecs in;
  for (const Input& x : inputs) in.push_back(x.data);
  const Vecs ref = op.reference(in);
  Vecs r;
  for (size_t i = 0; i < ref.size(); ++i) r.push_back(normals(rng, 1u << 30, ref[i].size()));

  auto compare = [&](const Vecs& got, const Vecs& want, double tol, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i) {
      if (want[i].empty()) continue;  // not differentiable
      ASSERT_EQ(got[i].size(), want[i].size()) << what << ", output " << i;
      EXPECT_LE(normwise_error(got[i], want[i]), tol) << what << ", output " << i;
    }
  };
  const Vecs g64 = op.template backward<double>(in, r, cpu);
  compare(op.template forward<float>(in, ctx), ref, op.tol.cuda_f32, "cuda f32 forward");
  compare(op.template backward<float>(in, r, ctx), g64, op.tol.cuda_f32_grad, "cuda f32 backward vs cpu f64");
  if constexpr (!acc_only<Op>()) {
    Vecs in16, r16;
    for (const auto& x : in) in16.push_back(round_to_bf16(x));
    for (const auto& x : r) r16.push_back(round_to_bf16(x));
    compare(op.template forward<bf16>(in16, ctx), op.reference(in16), op.tol.bf16, "cuda bf16 forward");
    compare(op.template backward<bf16>(in16, r16, ctx), op.template backward<double>(in16, r16, cpu), op.tol.bf16_grad,
            "cuda bf16 backward vs cpu f64");
  }
}

// The device checks run in the `cuda` test binary (built with a CUDA backend); the CPU checks in
// `unit`. Case files use UM_CHECK_OP so the same cases serve both.
#ifdef UM_TEST_DEVICE
#define UM_CHECK_OP(op) ::um::test::check_op_device(op)
#else
#define UM_CHECK_OP(op) ::um::test::check_op(op)
#endif

}  // namespace um::test
