#include "train/optimizer.h"

#include <algorithm>

#include "ops/optim.h"

namespace um {

std::vector<DecayRun> decay_runs(const ParamTable& t, bool decay_norms) {
  std::vector<DecayRun> runs;
  for (const ParamInfo& p : t.params) {
    // design.md 2: decay on every 2-D weight; norm gains only with weight_decay_norms; never on
    // 1-D non-norm tensors (router_scale)
    const bool decay = p.decay || (decay_norms && p.is_norm());
    if (!runs.empty() && runs.back().decay == decay && runs.back().end == p.offset)
      runs.back().end = p.offset + p.numel;
    else
      runs.push_back({p.offset, p.offset + p.numel, decay});
  }
  return runs;
}

namespace {
std::vector<DecayRun> clip_runs(const std::vector<DecayRun>& runs, int64_t a, int64_t b, int64_t c, int64_t d) {
  std::vector<DecayRun> out;
  for (const DecayRun& r : runs)
    for (auto [lo, hi] : {std::pair{a, b}, std::pair{c, d}}) {
      const int64_t s = std::max(r.begin, lo), e = std::min(r.end, hi);
      if (s < e) out.push_back({s, e, r.decay});
    }
  std::sort(out.begin(), out.end(), [](const DecayRun& x, const DecayRun& y) { return x.begin < y.begin; });
  return out;
}
}  // namespace

Optimizer Optimizer::full(const ParamTable& t, bool decay_norms) {
  Optimizer o;
  o.dense_end = t.n_replicated;
  o.expert_begin = t.n_replicated;
  o.expert_end = t.n_elements;
  o.runs = decay_runs(t, decay_norms);
  return o;
}

Optimizer Optimizer::zero_shard(const ParamTable& t, bool decay_norms, int world_rank, int world_size,
                                int edp_rank, int edp_size) {
  UM_CHECK(t.n_replicated % world_size == 0 && (t.n_elements - t.n_replicated) % edp_size == 0, "zero",
           "the parameter table is not padded for ", world_size, " shards");
  Optimizer o;
  o.zero = true;
  const int64_t dchunk = t.n_replicated / world_size, echunk = (t.n_elements - t.n_replicated) / edp_size;
  o.dense_begin = world_rank * dchunk;
  o.dense_end = o.dense_begin + dchunk;
  o.expert_begin = t.n_replicated + edp_rank * echunk;
  o.expert_end = o.expert_begin + echunk;
  o.runs = clip_runs(decay_runs(t, decay_norms), o.dense_begin, o.dense_end, o.expert_begin, o.expert_end);
  return o;
}

template <class T>
void adamw_step(ParamStore<T>& ps, const Optimizer& opt, const TrainConfig& tc, double lr,
                int64_t step, const Ctx& ctx) {
  for (const DecayRun& r : opt.runs) {
    AdamWHyper h{lr, tc.adam_beta1, tc.adam_beta2, tc.adam_eps, r.decay ? tc.weight_decay : 0.0, step};
    const int64_t mi = opt.moment_index(r.begin);
    adamw_update<acc_t<T>>(ps.w.data() + r.begin, ps.m.data() + mi, ps.v.data() + mi, ps.g.data() + r.begin,
                           r.end - r.begin, h, ctx);
  }
}

template <class T>
void aux_free_update(T* bias, const std::vector<int64_t>& load, double gamma, std::vector<std::byte>& host,
                     const Ctx& ctx) {
  const size_t E = load.size();
  double mean = 0;
  for (int64_t l : load) mean += double(l);
  mean /= double(E);
  if (host.size() < E * sizeof(T)) host.resize(E * sizeof(T));
  T* b = reinterpret_cast<T*>(host.data());
  ctx.download(b, bias, E);
  for (size_t i = 0; i < E; ++i) {
    const double d = mean - double(load[i]);
    const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
    b[i] = static_cast<T>(b[i] + gamma * sign);
  }
  ctx.upload(bias, b, E);
}

template void adamw_step<float>(ParamStore<float>&, const Optimizer&, const TrainConfig&, double, int64_t, const Ctx&);
template void adamw_step<double>(ParamStore<double>&, const Optimizer&, const TrainConfig&, double, int64_t, const Ctx&);
template void adamw_step<bf16>(ParamStore<bf16>&, const Optimizer&, const TrainConfig&, double, int64_t, const Ctx&);
template void aux_free_update<float>(float*, const std::vector<int64_t>&, double, std::vector<std::byte>&, const Ctx&);
template void aux_free_update<double>(double*, const std::vector<int64_t>&, double, std::vector<std::byte>&, const Ctx&);

}  // namespace um
