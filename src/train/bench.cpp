#include "train/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "core/alloc_count.h"
#include "core/rng.h"
#include "model/batch.h"
#include "model/flops.h"
#include "ops/gemm.h"
#include "parallel/comm.h"
#include "train/data.h"
#include "train/engine.h"
#include "train/step.h"

namespace um {

std::vector<int32_t> synthetic_windows(int64_t n, int64_t T, int64_t V, uint64_t seed) {
  const Philox rng(seed, "bench.windows");
  std::vector<int32_t> stream;
  uint64_t i = 0;
  while (int64_t(stream.size()) < n * T + 1) {
    const int64_t len = 1 + int64_t(rng.below(i++, uint64_t(2 * T)));
    stream.push_back(kBosId);
    for (int64_t k = 0; k < len; ++k) stream.push_back(4 + int32_t(rng.below(i++, uint64_t(V - 4))));
    stream.push_back(kEosId);
  }
  std::vector<int32_t> w(n * (T + 1));
  for (int64_t s = 0; s < n; ++s) std::copy_n(stream.begin() + s * T, T + 1, w.begin() + s * (T + 1));
  return w;
}

double measure_sgemm_gflops() {
  const int64_t n = 2048;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  cpu::gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    cpu::gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * double(n * n * n) / s / 1e9);
  }
  return best;
}

template <class C>
int bench(const BenchOptions& opt, const Placement& placement) {
  using clock = std::chrono::steady_clock;
  Comm& world = Runtime::current()->world();
  const int W = world.size();
  const bool root = world.rank() == 0;
  RunConfig rc = load_run_config(opt.config_path, opt.overrides, W);
  UM_CHECK(opt.steps >= 1 && opt.warmup >= 0, "bench", "--steps must be >= 1 and --warmup >= 0");
  UM_CHECK(rc.model.rope_scaling.is_null(), "bench", "model.rope_scaling (YaRN) is not implemented for training");
  Engine<C> e(rc, world, placement.device);
  const TrainConfig& tc = e.rc.train;
  const int64_t T = rc.data.seq_len, B = tc.batch_size, n_local = e.local_sequences();
  const bool gpu = placement.device != Device::cpu;
  Ctx ctx = e.ctx;
  Profiler prof;
  if (gpu) {  // phases are timed at device synchronisation points (a separate, untimed step)
    prof.sync_fn = [](void* stream) { device_api(Device::cuda).synchronize(stream); };
    prof.sync_arg = ctx.stream;
  }
  init_params(e.ps, e.table, rc.model, tc.seed, ctx);

  // the windows of every step: synthetic, or the data directory's (first steps of its order)
  const int64_t n_steps = opt.warmup + opt.steps;
  std::vector<int32_t> all;
  if (opt.data_dir.empty()) {
    all = synthetic_windows(n_steps * B, T, rc.model.vocab_size, tc.seed);
  } else {
    DataDir data(opt.data_dir);
    data.check_model_vocab(rc.model.vocab_size);
    TrainWindows tw(data.train(), T, tc.seed);
    all.resize(n_steps * B * (T + 1));
    for (int64_t s = 1; s <= n_steps; ++s) tw.fill(s, B, 0, B, all.data() + (s - 1) * B * (T + 1));
  }
  std::vector<int32_t> local(n_local * (T + 1));
  if (!opt.save_windows.empty() && root) {
    std::FILE* f = std::fopen(opt.save_windows.c_str(), "wb");
    UM_CHECK(f && std::fwrite(all.data(), sizeof(int32_t), all.size(), f) == all.size() && std::fclose(f) == 0,
             "bench", "cannot write ", opt.save_windows);
  }

  const double sgemm = gpu ? 0.0 : measure_sgemm_gflops();
  const FlopsPerToken fl = flops_per_token(rc.model, T);
  const Peak peak = run_peak(placement, opt.hardware, ctx.n_threads, W);
  std::vector<double> step_s;
  std::array<double, size_t(Phase::count)> phase{};
  int64_t adam_step = 0, allocations = 0;
  StepOutcome outcome;
  double comm_s = 0;
  auto comm_busy = [&] {
    double s = world.busy_seconds();
    if (e.layout.ep) s += e.layout.ep->busy_seconds() + e.layout.edp->busy_seconds();
    if (e.layout.ep_intra) s += e.layout.ep_intra->busy_seconds() + e.layout.ep_inter->busy_seconds();
    return s;
  };
  // On the CPU the phases are charged during the timed steps; on a GPU they need device syncs at
  // every phase boundary, so the timed steps run without them and one extra step is profiled.
  for (int64_t s = 1; s <= n_steps + (gpu ? 1 : 0); ++s) {
    const bool profiled = gpu ? s == n_steps + 1 : s > opt.warmup;
    const bool timed = s > opt.warmup && s <= n_steps;
    e.take_canonical(all.data() + ((s - 1) % n_steps) * B * (T + 1), local.data());
    ctx.prof = profiled ? &prof : nullptr;
    world.barrier();
    const int64_t a0 = allocation_count();
    const double c0 = comm_busy();
    const auto t0 = clock::now();
    prof.start();
    train_step(outcome, *e.model, e.ps, e.optim, tc, s, adam_step, local.data(), e.groups, ctx);
    ctx.synchronize();
    prof.stop();
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (profiled)
      for (size_t p = 0; p < phase.size(); ++p) phase[p] += prof.seconds(Phase(p)) / (gpu ? 1.0 : double(opt.steps));
    if (!timed) continue;
    allocations += allocation_count() - a0;
    comm_s += comm_busy() - c0;
    step_s.push_back(dt);
  }
  std::vector<double> sorted = step_s;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const double tok_s = double(B * T) / median, gflops = fl.total * tok_s / 1e9;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double n_params = double(count_params(rc.model).total);
  const double state_bytes = double(e.ps.w.size() + e.ps.g.size() + e.ps.m.size() + e.ps.v.size()) * sizeof(float) +
                             double(e.ps.wc.size()) * sizeof(C);
  const double local_params = double(e.table.n_elements);

  json j;
  j["config"] = opt.config_path;
  j["device"] = device_name(placement.device);
  j["device_name"] = e.device->name();
  j["dtype"] = placement.dtype == DType::bf16 ? "bf16" : "f32";
  j["ranks"] = W;
  j["threads_per_rank"] = ctx.n_threads;
  j["tokens_per_step"] = B * T;
  j["step_s_median"] = median;
  j["step_s"] = step_s;
  j["tokens_per_s"] = tok_s;
  j["model_flops_per_token"] = fl.total;
  j["model_gflops"] = gflops;
  j["peak_gflops"] = peak.flops / 1e9;
  j["peak"] = peak.describe;
  j["mfu"] = peak.flops > 0 ? json(gflops * 1e9 / peak.flops) : json(nullptr);
  if (!gpu) {
    j["sgemm_gflops"] = sgemm;
    j["fraction_of_sgemm"] = gflops / (sgemm * W);
  }
  j["peak_rss_bytes"] = double(ru.ru_maxrss) * 1024.0;
  j["allocations_per_step"] = allocation_count() < 0 ? -1.0 : double(allocations) / double(opt.steps);
  j["bytes_per_parameter"] = state_bytes / local_params;
  j["parameters"] = n_params;
  j["activation_bytes_per_token"] = double(e.model->activation_bytes()) / double(tc.micro_batch_size * T);
  j["communication_s_per_step"] = comm_s / double(opt.steps);
  json ph = json::object();
  for (size_t p = 0; p < phase.size(); ++p)
    if (Phase(p) != Phase::count) ph[phase_name(Phase(p))] = phase[p];
  j["phases_s_per_step"] = ph;
  if (!root) return 0;
  if (opt.json) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("bench %s: %d rank(s) on %s (%s), %lld tokens per step (%lld warm-up + %lld timed steps)\n",
              opt.config_path.c_str(), W, e.device->name().c_str(), placement.describe().c_str(), (long long)(B * T),
              (long long)opt.warmup, (long long)opt.steps);
  std::printf("  %s\n", fl.formula.c_str());
  std::printf("  step time   %.3f s median (of %zu)\n", median, step_s.size());
  std::printf("  throughput  %.0f tokens/s, %.1f model GFLOP/s\n", tok_s, gflops);
  if (peak.flops > 0) std::printf("  MFU         %.1f%% of the %s\n", 100 * j["mfu"].get<double>(), peak.describe.c_str());
  else std::printf("  MFU         %s\n", peak.describe.c_str());
  if (!gpu)
    std::printf("              %.1f%% of the measured sgemm rate (%.0f GFLOP/s per rank)\n",
                100 * j["fraction_of_sgemm"].get<double>(), sgemm);
  std::printf("  memory      peak RSS %.0f MiB; %.1f bytes per parameter (weights, grads, Adam); %.0f KiB activations per token\n",
              double(ru.ru_maxrss) / 1024.0, j["bytes_per_parameter"].get<double>(),
              j["activation_bytes_per_token"].get<double>() / 1024.0);
  if (allocation_count() >= 0)
    std::printf("  allocations %.1f per steady-state step\n", j["allocations_per_step"].get<double>());
  std::printf("  time by phase (s per step, rank 0%s):\n", gpu ? ", one extra step synchronised at every phase" : "");
  for (size_t p = 0; p < phase.size(); ++p)
    std::printf("    %-28s %8.4f  %5.1f%%\n", phase_name(Phase(p)), phase[p],
                100 * phase[p] / std::max(1e-12, std::accumulate(phase.begin(), phase.end(), 0.0)));
  return 0;
}

int run_bench(const BenchOptions& opt) {
  const Placement placement = parse_placement(opt.device, opt.dtype);
  if (placement.dtype == DType::bf16) return bench<bf16>(opt, placement);
  return bench<float>(opt, placement);
}

}  // namespace um
