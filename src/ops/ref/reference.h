// fp64 reference implementations of the CPU ops: the plainest loops that state the math, with
// no blocking, fusion or threading. Tests compare every op (f32 and f64) against these.
// Not for use outside tests: they are slow on purpose.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

namespace um::ref {

using Vec = std::vector<double>;

// y (N,out) = x (N,in) W^T
inline Vec linear(const Vec& x, const Vec& W, int64_t N, int64_t n_in, int64_t n_out) {
  Vec y(N * n_out, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < n_out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < n_in; ++i) s += x[n * n_in + i] * W[o * n_in + i];
      y[n * n_out + o] = s;
    }
  return y;
}

inline Vec rmsnorm(const Vec& x, const Vec& g, int64_t N, int64_t D, double eps) {
  Vec y(N * D);
  for (int64_t n = 0; n < N; ++n) {
    double ms = 0;
    for (int64_t d = 0; d < D; ++d) ms += x[n * D + d] * x[n * D + d];
    ms /= D;
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = g[d] * x[n * D + d] / std::sqrt(ms + eps);
  }
  return y;
}

// x: (N, H, d) with the rope dims being all d of each head. Angles computed from scratch.
inline Vec rope(const Vec& x, const std::vector<int32_t>& pos, int64_t N, int64_t H, int64_t d,
                double theta) {
  Vec y(x.size());
  const int64_t half = d / 2;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < half; ++j) {
        double a = pos[n] / std::pow(theta, 2.0 * j / d);
        const double* xr = &x[(n * H + h) * d];
        double* yr = &y[(n * H + h) * d];
        yr[j] = xr[j] * std::cos(a) - xr[j + half] * std::sin(a);
        yr[j + half] = xr[j + half] * std::cos(a) + xr[j] * std::sin(a);
      }
  return y;
}

inline Vec swiglu(const Vec& gu, int64_t N, int64_t F) {
  Vec h(N * F);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) {
      double g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f];
      h[n * F + f] = g / (1.0 + std::exp(-g)) * u;
    }
  return h;
}

inline Vec embedding(const std::vector<int32_t>& ids, const Vec& W, int64_t D) {
  Vec y(ids.size() * D);
  for (size_t n = 0; n < ids.size(); ++n)
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = W[ids[n] * D + d];
  return y;
}

// doc: (B*T) document id of every token; token i of a sequence sees j <= i with doc[j] == doc[i].
inline Vec attention(const Vec& q, const Vec& k, const Vec& v, const std::vector<int32_t>& doc,
                     int64_t B, int64_t T, int64_t H, int64_t dqk, int64_t dv, double scale) {
  Vec o(B * T * H * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t qi = (b * T + i) * H + h;
        std::vector<double> s;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j <= i; ++j) {
          if (doc[b * T + j] != doc[b * T + i]) continue;
          const int64_t kj = (b * T + j) * H + h;
          double dot = 0;
          for (int64_t c = 0; c < dqk; ++c) dot += q[qi * dqk + c] * k[kj * dqk + c];
          s.push_back(dot * scale);
          keys.push_back(kj);
        }
        double m = *std::max_element(s.begin(), s.end()), z = 0;
        for (double& x : s) z += (x = std::exp(x - m));
        for (size_t t = 0; t < keys.size(); ++t)
          for (int64_t c = 0; c < dv; ++c) o[qi * dv + c] += s[t] / z * v[keys[t] * dv + c];
      }
  return o;
}

// sum over rows with target >= 0 of -log softmax(h W^T)_target
inline double lm_head_ce(const Vec& h, const Vec& W, const std::vector<int32_t>& targets,
                         int64_t N, int64_t D, int64_t V) {
  Vec logits = linear(h, W, N, D, V);
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    double m = -std::numeric_limits<double>::infinity(), z = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, logits[n * V + j]);
    for (int64_t j = 0; j < V; ++j) z += std::exp(logits[n * V + j] - m);
    total += m + std::log(z) - logits[n * V + targets[n]];
  }
  return total;
}

inline Vec router_scores(const Vec& z, int64_t N, int64_t E, bool softmax) {
  Vec s(N * E);
  for (int64_t n = 0; n < N; ++n) {
    if (!softmax) {
      for (int64_t e = 0; e < E; ++e) s[n * E + e] = 1.0 / (1.0 + std::exp(-z[n * E + e]));
      continue;
    }
    double m = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t e = 0; e < E; ++e) m = std::max(m, z[n * E + e]);
    for (int64_t e = 0; e < E; ++e) sum += std::exp(z[n * E + e] - m);
    for (int64_t e = 0; e < E; ++e) s[n * E + e] = std::exp(z[n * E + e] - m) / sum;
  }
  return s;
}

// Indices of the k largest values (ties: lower index), best first, by a full stable sort.
inline std::vector<int32_t> topk_indices(const Vec& val, const std::vector<int32_t>& cand, int k) {
  std::vector<int32_t> order(cand.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return val[a] > val[b] || (val[a] == val[b] && cand[a] < cand[b]);
  });
  std::vector<int32_t> out;
  for (int i = 0; i < k; ++i) out.push_back(cand[order[i]]);
  return out;
}

// design.md 1.5 selection for one token. method: 0 greedy, 1 group_limited, 2 moge.
inline std::vector<int32_t> select_experts(const Vec& biased, int k, int method, int n_group,
                                           int topk_group) {
  const int E = static_cast<int>(biased.size());
  std::vector<int32_t> all(E);
  std::iota(all.begin(), all.end(), 0);
  if (method == 0) return topk_indices(biased, all, k);
  const int per = E / n_group;
  if (method == 2) {
    std::vector<int32_t> out;
    for (int g = 0; g < n_group; ++g) {
      Vec v(biased.begin() + g * per, biased.begin() + (g + 1) * per);
      std::vector<int32_t> c(all.begin() + g * per, all.begin() + (g + 1) * per);
      for (int32_t e : topk_indices(v, c, k / n_group)) out.push_back(e);
    }
    return out;
  }
  Vec gscore(n_group);
  std::vector<int32_t> groups(n_group);
  std::iota(groups.begin(), groups.end(), 0);
  for (int g = 0; g < n_group; ++g) {
    Vec v(biased.begin() + g * per, biased.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    gscore[g] = 0;
    for (int j = 0; j < std::min(2, per); ++j) gscore[g] += v[j];
  }
  std::vector<int32_t> keep = topk_indices(gscore, groups, topk_group);
  Vec masked(E, -std::numeric_limits<double>::infinity());
  for (int32_t g : keep)
    for (int e = g * per; e < (g + 1) * per; ++e) masked[e] = biased[e];
  return topk_indices(masked, all, k);
}

inline Vec gates(const Vec& s, const std::vector<int32_t>& idx, const Vec* router_scale,
                 int64_t N, int64_t E, int k, bool norm, double scaling) {
  Vec g(N * k);
  for (int64_t n = 0; n < N; ++n) {
    double denom = 1;
    if (norm) {
      denom = 1e-20;
      for (int j = 0; j < k; ++j) denom += s[n * E + idx[n * k + j]];
    }
    for (int j = 0; j < k; ++j) {
      const int32_t e = idx[n * k + j];
      g[n * k + j] = s[n * E + e] / denom * scaling * (router_scale ? (*router_scale)[e] : 1.0);
    }
  }
  return g;
}

// Dense MoE reference: y[t] = sum_j gate[t,j] * (x[t] W_{idx[t,j]}^T), W: (E, n_out, n_in),
// pairs with keep[t*k+j] == 0 dropped.
inline Vec moe_linear_combine(const Vec& x, const Vec& W, const std::vector<int32_t>& idx,
                              const Vec& gate, const std::vector<uint8_t>& keep, int64_t N, int k,
                              int64_t n_in, int64_t n_out) {
  Vec y(N * n_out, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int j = 0; j < k; ++j) {
      if (!keep.empty() && !keep[t * k + j]) continue;
      const double* We = &W[idx[t * k + j] * n_out * n_in];
      for (int64_t o = 0; o < n_out; ++o) {
        double s = 0;
        for (int64_t i = 0; i < n_in; ++i) s += x[t * n_in + i] * We[o * n_in + i];
        y[t * n_out + o] += gate[t * k + j] * s;
      }
    }
  return y;
}

// One AdamW step exactly as torch.optim.AdamW writes it.
inline void adamw(Vec& p, Vec& m, Vec& v, const Vec& g, double lr, double b1, double b2,
                  double eps, double wd, int64_t step) {
  const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= 1 - lr * wd;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= (lr / bc1) * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
  }
}

// MLA's per-head keys and values: k[n,h] = [kv[n,h,:nope] ; kva[n, kv_lora:kv_lora+rd]],
// v[n,h] = kv[n,h,nope:]. kv: (N, H*(nope+dv)), kva: (N, kv_lora+rd).
inline std::pair<Vec, Vec> mla_kv(const Vec& kv, const Vec& kva, int64_t N, int64_t H, int64_t nope, int64_t rd,
                                  int64_t dv, int64_t kv_lora) {
  const int64_t kvw = kv_lora + rd;
  Vec k(N * H * (nope + rd)), v(N * H * dv);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t j = 0; j < nope; ++j) k[(n * H + h) * (nope + rd) + j] = kv[n * H * (nope + dv) + h * (nope + dv) + j];
      for (int64_t j = 0; j < rd; ++j) k[(n * H + h) * (nope + rd) + nope + j] = kva[n * kvw + kv_lora + j];
      for (int64_t j = 0; j < dv; ++j) v[(n * H + h) * dv + j] = kv[n * H * (nope + dv) + h * (nope + dv) + nope + j];
    }
  return {k, v};
}

// The balance term of one micro-batch (design.md 1.6): sum over rows n of sum_e f_e(S_n) s'_{n,e} / |S|,
// f_e(S) = E / (K |S|) c_e(S), c_e(S) the rows of pool S that selected e, pools of pool_rows rows,
// s' = s / sum(s) (sigmoid) or s (softmax).
inline double balance_term(const Vec& s, const std::vector<int32_t>& idx, int64_t N, int64_t E, int k,
                           int64_t pool_rows, bool softmax) {
  double total = 0;
  for (int64_t q = 0; q < N / pool_rows; ++q) {
    Vec c(E, 0.0);
    for (int64_t n = q * pool_rows; n < (q + 1) * pool_rows; ++n)
      for (int j = 0; j < k; ++j) c[idx[n * k + j]] += 1;
    for (int64_t n = q * pool_rows; n < (q + 1) * pool_rows; ++n) {
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += s[n * E + e];
      for (int64_t e = 0; e < E; ++e)
        total += double(E) / double(k * pool_rows) * c[e] * s[n * E + e] / (softmax ? 1.0 : sum) / double(pool_rows);
    }
  }
  return total;
}

// sum over rows of logsumexp(z_n)^2 (the router z-loss before its coefficient)
inline double z_loss(const Vec& z, int64_t N, int64_t E) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    double m = -std::numeric_limits<double>::infinity(), l = 0;
    for (int64_t e = 0; e < E; ++e) m = std::max(m, z[n * E + e]);
    for (int64_t e = 0; e < E; ++e) l += std::exp(z[n * E + e] - m);
    total += (m + std::log(l)) * (m + std::log(l));
  }
  return total;
}

// Capacity selection (design.md 1.5): per expert, the C pairs with the highest score s[t, e]
// (ties: lower token index) kept.
inline std::vector<uint8_t> capacity_keep(const std::vector<int32_t>& idx, const Vec& s, int64_t N, int k,
                                          int64_t E, int64_t C) {
  std::vector<uint8_t> keep(N * k, 0);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> pairs;
    for (int64_t p = 0; p < N * k; ++p)
      if (idx[p] == e) pairs.push_back(p);
    std::stable_sort(pairs.begin(), pairs.end(),
                     [&](int64_t a, int64_t b) { return s[(a / k) * E + e] > s[(b / k) * E + e]; });
    for (size_t r = 0; r < pairs.size() && int64_t(r) < C; ++r) keep[pairs[r]] = 1;
  }
  return keep;
}

}  // namespace um::ref
