#include "train/engine.h"

#include <algorithm>
#include <cstdio>

#include "model/flops.h"
#include "plan/hardware.h"
#include "train/step.h"

namespace um {

void check_layout(const RunConfig& rc, int W) {
  const int64_t ep = rc.parallel.ep, pp = rc.parallel.pp, Wd = W / pp;
  UM_CHECK(W % pp == 0, "config", "parallel.pp=", pp, " must divide the number of ranks, ", W);
  UM_CHECK(Wd % ep == 0, "config", "parallel.ep=", ep, " must divide the number of ranks", pp > 1 ? " of a pipeline stage, " : ", ", Wd);
  UM_CHECK(rc.train.batch_size % (rc.train.micro_batch_size * Wd) == 0, "config", "train.batch_size=",
           rc.train.batch_size, " must be a multiple of micro_batch_size=", rc.train.micro_batch_size,
           " x data-parallel ranks=", Wd);
  if (rc.train.imbalance_devices > 0)
    UM_CHECK(rc.model.n_routed_experts % rc.train.imbalance_devices == 0, "config", "train.imbalance_devices=",
             rc.train.imbalance_devices, " does not divide n_routed_experts=", rc.model.n_routed_experts);
}

void warn_moge_devices(const RunConfig& rc, int rank) {
  const ModelConfig& m = rc.model;
  const int64_t devices = rc.parallel.ep > 1 ? rc.parallel.ep : rc.train.imbalance_devices;
  if (rank != 0 || m.topk_method != TopkMethod::moge || devices <= 1 || m.n_group % devices == 0) return;
  std::fprintf(stderr,
               "ultramoe: warning: MoGE balances devices only when their number divides n_group; %lld devices "
               "(%s) do not divide n_group=%lld, so device loads can differ (design.md 1.5)\n",
               (long long)devices, rc.parallel.ep > 1 ? "parallel.ep" : "train.imbalance_devices",
               (long long)m.n_group);
}

std::string Placement::describe() const {
  return std::string(device_name(device)) + " " + std::string(dtype == DType::bf16 ? "bf16 compute, f32 master weights" : "f32");
}

Placement parse_placement(const std::string& device, const std::string& dtype) {
  Placement p;
  p.device = parse_device(device.empty() ? "cpu" : device);
  if (dtype.empty()) p.dtype = p.device == Device::cuda ? DType::bf16 : DType::f32;
  else if (dtype == "f32") p.dtype = DType::f32;
  else if (dtype == "bf16") p.dtype = DType::bf16;
  else fail("cli", "--dtype: expected f32 or bf16, got \"", dtype, "\"");
  UM_CHECK(p.device == Device::cuda || p.dtype == DType::f32, "cli", "--dtype bf16 needs --device cuda");
  return p;
}

Peak run_peak(const Placement& pl, const std::string& hardware, int n_threads, int W) {
  Peak p;
  char buf[512];
  if (pl.device == Device::cpu) {
    const CpuPeak c = cpu_peak(n_threads);
    p.flops = c.flops * W;
    std::snprintf(buf, sizeof buf, "FP32 peak: %d rank(s) x %d cores x %.2f GHz x 32 = %.1f GFLOP/s (clock: %s)", W, c.cores,
                  c.ghz, p.flops / 1e9, c.source.c_str());
    p.describe = buf;
  } else if (!hardware.empty()) {
    const plan::Hardware hw = plan::read_hardware_file(hardware);
    p.flops = hw.peak_flops * W;
    std::snprintf(buf, sizeof buf, "%s peak: %d device(s) x %.1f TFLOP/s (%s)", plan::precision_name(hw.precision), W,
                  hw.peak_flops / 1e12, hw.name.c_str());
    p.describe = buf;
  } else {
    p.describe = "not reported (pass --hardware FILE with the device's peak, e.g. configs/hardware/h200.json)";
  }
  return p;
}

template <class T>
Engine<T>::Engine(const RunConfig& config, Comm& w, Device d, Profiler* prof)
    : rc(config), world(&w), W(w.size()), rank(w.rank()), ep(int(config.parallel.ep)),
      pp(int(config.parallel.pp)), pp_rank(0), Wd(W / std::max(pp, 1)), dp_rank(rank),
      layout((check_layout(config, W), w), int(config.parallel.ep), int(config.parallel.ranks_per_node),
             int(config.parallel.pp)),
      device(DeviceContext::create(d)), ws(d), ctx(device->ctx(&ws, prof)) {
  pp_rank = layout.pp_rank;
  dp_rank = layout.data().rank();
  UM_CHECK(d == Device::cpu || W == 1, "engine", "training on ", W, " ranks with --device ", device_name(d),
           " is not implemented yet: the gradient and dispatch collectives of the CUDA backend need NCCL "
           "groups beside the MPI ones; run one process per GPU job");
  warn_moge_devices(rc, rank);
  const TrainConfig& tc = rc.train;
  groups = W > 1 ? layout.groups() : StepGroups{};
  if (ep > 1) comms.ep = layout.ep.get();
  comms.intra = layout.ep_intra.get();
  comms.inter = layout.ep_inter.get();
  if (tc.balance_scope == BalanceScope::ep_group && ep > 1) comms.pool = layout.ep.get();
  if (tc.balance_scope == BalanceScope::global && Wd > 1) comms.pool = &layout.data();
  const bool zero = rc.parallel.zero == 1;
  std::vector<ChunkSpec> chunks;
  StageContents contents;
  if (pp > 1) {
    UM_CHECK(d == Device::cpu, "engine", "pipeline parallelism runs on the CPU only");
    pipeline = PipelineLayout::make(rc.model, rc.parallel);
    contents = pipeline.contents(rc.model, pp_rank);
    chunks = pipeline.chunks(pp_rank, local_sequences() / tc.micro_batch_size);
  }
  table = build_param_table(rc.model, dp_rank % ep, ep, zero ? int64_t(Wd) * 16 : 1, pp > 1 ? &contents : nullptr);
  optim = zero ? Optimizer::zero_shard(table, tc.weight_decay_norms, dp_rank, Wd, layout.edp->rank(), Wd / ep)
               : Optimizer::full(table, tc.weight_decay_norms);
  ps = ParamStore<T>(table, optim.moment_elements(), d);
  ModelOptions mo{tc.micro_batch_size, rc.data.seq_len, tc.balance_scope, tc.capacity_factor, tc.aux_free, comms,
                  Recompute::parse(tc.recompute), d};
  mo.chunks = chunks;
  model = std::make_unique<Model<T>>(rc.model, table, mo);
}

template <class T>
void Engine<T>::take_canonical(const int32_t* global_batch, int32_t* local) const {
  const int64_t T1 = rc.data.seq_len + 1, m = rc.train.micro_batch_size;
  for (int64_t a = 0; a < local_sequences() / m; ++a)
    std::copy_n(global_batch + canonical_first_sequence(a, dp_rank, Wd, m) * T1, m * T1, local + a * m * T1);
}

template struct Engine<float>;
template struct Engine<bf16>;

}  // namespace um
