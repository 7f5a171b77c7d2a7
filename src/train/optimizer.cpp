#include "train/optimizer.h"

#include "ops/optim.h"

namespace um {

std::vector<DecayRun> decay_runs(const ParamTable& t, bool decay_norms) {
  std::vector<DecayRun> runs;
  for (const ParamInfo& p : t.params) {
    // DESIGN 2: decay on every 2-D weight; norm gains only with weight_decay_norms; never on
    // 1-D non-norm tensors (router_scale)
    const bool decay = p.decay || (decay_norms && p.is_norm());
    if (!runs.empty() && runs.back().decay == decay && runs.back().end == p.offset)
      runs.back().end = p.offset + p.numel;
    else
      runs.push_back({p.offset, p.offset + p.numel, decay});
  }
  return runs;
}

template <class T>
void adamw_step(ParamStore<T>& ps, const std::vector<DecayRun>& runs, const TrainConfig& tc,
                double lr, int64_t step, const Ctx& ctx) {
  for (const DecayRun& r : runs) {
    AdamWHyper h{lr, tc.adam_beta1, tc.adam_beta2, tc.adam_eps, r.decay ? tc.weight_decay : 0.0, step};
    adamw_update<T>(ps.w.data() + r.begin, ps.m.data() + r.begin, ps.v.data() + r.begin,
                    ps.g.data() + r.begin, r.end - r.begin, h, ctx);
  }
}

template <class T>
void aux_free_update(T* bias, const std::vector<int64_t>& load, double gamma) {
  double mean = 0;
  for (int64_t l : load) mean += double(l);
  mean /= double(load.size());
  for (size_t i = 0; i < load.size(); ++i) {
    const double d = mean - double(load[i]);
    const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
    bias[i] = static_cast<T>(bias[i] + gamma * sign);
  }
}

template void adamw_step<float>(ParamStore<float>&, const std::vector<DecayRun>&, const TrainConfig&, double, int64_t, const Ctx&);
template void adamw_step<double>(ParamStore<double>&, const std::vector<DecayRun>&, const TrainConfig&, double, int64_t, const Ctx&);
template void aux_free_update<float>(float*, const std::vector<int64_t>&, double);
template void aux_free_update<double>(double*, const std::vector<int64_t>&, double);

}  // namespace um
