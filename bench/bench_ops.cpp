// Microbenchmarks of the hot CPU ops, with achieved GFLOP/s printed next to this machine's
// large-sgemm rate (measured at start-up). Not a test: run `build/release/bench/bench_ops`.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/ctx.h"
#include "core/rng.h"
#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/grouped_gemm.h"

namespace {

using namespace um;

std::vector<float> random_vec(size_t n, uint64_t seed) {
  Philox rng(seed, "bench");
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(rng.normal(i));
  return v;
}

double measure_sgemm_gflops() {
  const int n = 2048;
  auto a = random_vec(n * n, 1), b = random_vec(n * n, 2);
  std::vector<float> c(n * n);
  cpu::gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);  // warm-up
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    cpu::gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / s / 1e9);
  }
  return best;
}

// y (N, out) = x (N, in) W^T, the shape of every linear in the model.
void BM_Linear(benchmark::State& state) {
  const int64_t N = state.range(0), n_in = state.range(1), n_out = state.range(2);
  auto x = random_vec(N * n_in, 3), W = random_vec(n_out * n_in, 4);
  std::vector<float> y(N * n_out);
  for (auto _ : state)
    cpu::gemm<float>(false, true, N, n_out, n_in, 1.f, x.data(), n_in, W.data(), n_in, 0.f, y.data(), n_out);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * N * n_in * n_out * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Linear)->Args({4096, 512, 512})->Args({4096, 512, 8192})->Args({4096, 2048, 512})->Unit(benchmark::kMillisecond)->UseRealTime();

// Causal attention over B sequences of T tokens, one document each (the worst case).
void BM_Attention(benchmark::State& state) {
  const int64_t B = state.range(0), T = state.range(1);
  const int H = static_cast<int>(state.range(2)), dqk = 96, dv = 64;
  const bool backward = state.range(3) != 0;
  auto q = random_vec(B * T * H * dqk, 5), k = random_vec(B * T * H * dqk, 6),
       v = random_vec(B * T * H * dv, 7), d_o = random_vec(B * T * H * dv, 8);
  std::vector<float> o(B * T * H * dv), lse(B * H * T), dq(q.size()), dk(k.size()), dvv(v.size());
  std::vector<int32_t> seg(B * T, 0);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  const double scale = 1.0 / std::sqrt(double(dqk));
  attention_forward<float>(o.data(), lse.data(), q.data(), k.data(), v.data(), seg.data(), B, T, H, dqk, dv, scale, ctx);
  for (auto _ : state) {
    if (!backward)
      attention_forward<float>(o.data(), lse.data(), q.data(), k.data(), v.data(), seg.data(), B, T, H, dqk, dv, scale, ctx);
    else
      attention_backward<float>(dq.data(), dk.data(), dvv.data(), d_o.data(), o.data(), lse.data(), q.data(),
                                k.data(), v.data(), seg.data(), B, T, H, dqk, dv, scale, ctx);
  }
  // causal useful FLOPs: T(T+1)/2 score pairs, 2*(dqk+dv) flops each (forward); backward 2x that
  const double fwd = 2.0 * B * H * (T * (T + 1) / 2.0) * (dqk + dv);
  state.counters["GFLOP/s"] = benchmark::Counter((backward ? 2 * fwd : fwd) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Attention)->Args({8, 512, 4, 0})->Args({8, 512, 4, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

// The expert GEMM of a dropless MoE layer: N*K rows spread over E experts.
void BM_GroupedLinear(benchmark::State& state) {
  const int64_t rows = state.range(0), E = state.range(1), n_in = state.range(2), n_out = state.range(3);
  auto x = random_vec(rows * n_in, 9), W = random_vec(E * n_out * n_in, 10);
  std::vector<float> y(rows * n_out);
  std::vector<int32_t> offsets(E + 1);
  for (int64_t e = 0; e <= E; ++e) offsets[e] = static_cast<int32_t>(rows * e / E);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  for (auto _ : state)
    grouped_linear_forward<float>(y.data(), x.data(), n_in, W.data(), n_out * n_in, offsets.data(), E, n_in, n_out, ctx);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * n_in * n_out * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GroupedLinear)->Args({16384, 32, 512, 512})->Args({16384, 32, 256, 512})->Unit(benchmark::kMillisecond)->UseRealTime();


// The two ways to run E expert GEMMs, against the op's choice (grouped_gemm.cpp): 32 experts of
// `rows` rows each, (rows x 512) x (512 x 256). Strategy 0: grouped_linear_forward as the model
// calls it; 1: side by side, one expert per thread, single-threaded BLAS; 2: one after another,
// every thread in BLAS. The op should pick the faster of 1 and 2 at every size.
void BM_GroupedStrategy(benchmark::State& state) {
  const int64_t rows = state.range(0), E = 32, n_in = 512, n_out = 256;
  const int strategy = static_cast<int>(state.range(1));
  auto x = random_vec(rows * E * n_in, 11), W = random_vec(E * n_out * n_in, 12);
  std::vector<float> y(rows * E * n_out);
  std::vector<int32_t> offsets(E + 1);
  for (int64_t e = 0; e <= E; ++e) offsets[e] = static_cast<int32_t>(rows * e);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  auto one = [&](int64_t e) {
    cpu::gemm<float>(false, true, rows, n_out, n_in, 1.f, x.data() + e * rows * n_in, n_in, W.data() + e * n_out * n_in,
                n_in, 0.f, y.data() + e * rows * n_out, n_out);
  };
  for (auto _ : state) {
    if (strategy == 0) {
      grouped_linear_forward<float>(y.data(), x.data(), n_in, W.data(), n_out * n_in, offsets.data(), E, n_in, n_out, ctx);
    } else if (strategy == 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.n_threads)
      for (int64_t e = 0; e < E; ++e) one(e);
    } else {
      for (int64_t e = 0; e < E; ++e) one(e);
    }
  }
  state.counters["MFLOP/group"] = 2.0 * rows * n_in * n_out / 1e6;
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * E * n_in * n_out * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GroupedStrategy)->ArgsProduct({{16, 32, 64, 128, 256, 512, 1024}, {0, 1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", measure_sgemm_gflops());
  benchmark::AddCustomContext("sgemm_2048_GFLOP/s", buf);
  benchmark::AddCustomContext("blas", blas_parallel_kind());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
