#include "train/engine.h"

#include <algorithm>
#include <cstdio>

#include "train/step.h"

namespace um {

void check_layout(const RunConfig& rc, int W) {
  const int64_t ep = rc.parallel.ep;
  UM_CHECK(W % ep == 0, "config", "parallel.ep=", ep, " must divide the number of ranks, ", W);
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
               "(%s) do not divide n_group=%lld, so device loads can differ (DESIGN 1.5)\n",
               (long long)devices, rc.parallel.ep > 1 ? "parallel.ep" : "train.imbalance_devices",
               (long long)m.n_group);
}

Engine::Engine(const RunConfig& config, Comm& w)
    : rc(config), world(&w), W(w.size()), rank(w.rank()), ep(int(config.parallel.ep)),
      layout(w, int(config.parallel.ep), int(config.parallel.ranks_per_node)) {
  check_layout(rc, W);
  warn_moge_devices(rc, rank);
  const TrainConfig& tc = rc.train;
  groups = W > 1 ? layout.groups() : StepGroups{};
  if (ep > 1) comms.ep = layout.ep.get();
  comms.intra = layout.ep_intra.get();
  comms.inter = layout.ep_inter.get();
  if (tc.balance_scope == BalanceScope::ep_group && ep > 1) comms.pool = layout.ep.get();
  if (tc.balance_scope == BalanceScope::global && W > 1) comms.pool = world;
  const bool zero = rc.parallel.zero == 1;
  table = build_param_table(rc.model, rank % ep, ep, zero ? int64_t(W) * 16 : 1);
  optim = zero ? Optimizer::zero_shard(table, tc.weight_decay_norms, rank, W, layout.edp->rank(), W / ep)
               : Optimizer::full(table, tc.weight_decay_norms);
  ps = ParamStore<float>(table, optim.moment_elements());
  model = std::make_unique<Model<float>>(
      rc.model, table,
      ModelOptions{tc.micro_batch_size, rc.data.seq_len, tc.balance_scope, tc.capacity_factor, tc.aux_free, comms,
                   Recompute::parse(tc.recompute)});
}

void Engine::take_canonical(const int32_t* global_batch, int32_t* local) const {
  const int64_t T1 = rc.data.seq_len + 1, m = rc.train.micro_batch_size;
  for (int64_t a = 0; a < local_sequences() / m; ++a)
    std::copy_n(global_batch + canonical_first_sequence(a, rank, W, m) * T1, m * T1, local + a * m * T1);
}

}  // namespace um
