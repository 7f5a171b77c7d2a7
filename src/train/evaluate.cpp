#include "train/evaluate.h"

#include <cmath>
#include <vector>

#include "train/pipeline.h"

namespace um {

template <class T>
EvalResult evaluate(Model<T>& model, ParamStore<T>& ps, const EvalWindows& windows,
                    int64_t max_windows, const Ctx& ctx, Comm* world,
                    std::vector<MoeStats>* expert_load, Comm* pipe) {
  UM_CHECK(!pipe || !expert_load, "eval", "per-expert statistics need the whole model on one rank (no pipeline parallelism)");
  const int64_t W = world ? world->size() : 1, rank = world ? world->rank() : 0;
  const int64_t T_ = model.options().seq_len, mb = model.options().micro_batch;
  UM_CHECK(windows.seq_len() == T_, "eval", "windows of length ", windows.seq_len(),
           " for a model run at seq_len ", T_);
  const int64_t n = max_windows > 0 ? std::min(max_windows, windows.n_windows()) : windows.n_windows();
  std::vector<int32_t> buf(mb * (T_ + 1));
  StepScales sc;
  sc.n_mtp.assign(model.config().num_nextn_predict_layers, 1.0);
  sc.with_mtp = false;
  EvalResult r;
  double total = 0;
  PipelineScratch pipe_scratch;
  for (int64_t round = 0; round * W * mb < n; ++round) {
    const int64_t first = (round * W + rank) * mb;
    const int64_t B = std::max<int64_t>(0, std::min(mb, n - first));
    for (int64_t b = 0; b < B; ++b) windows.fill(first + b, buf.data() + b * (T_ + 1));
    if (B == 0) std::fill(buf.begin(), buf.begin() + (T_ + 1), kPadId);  // scores nothing
    r.tokens += count_valid_targets(buf.data(), std::max<int64_t>(B, 1), T_, 0)[0];
    if (pipe) {
      pipeline_run<T>(model, ps, buf.data(), std::max<int64_t>(B, 1), 1, sc, false, *pipe, pipe_scratch, ctx,
                      [&total](int64_t, const MicroResult& res) { total += res.ce_main; });
      continue;
    }
    const MicroResult& res = model.forward_backward(ps, buf.data(), std::max<int64_t>(B, 1), sc, false, ctx);
    total += res.ce_main;
    if (expert_load && B > 0) {
      if (expert_load->empty()) {
        expert_load->resize(res.moe.size());
        for (MoeStats& s : *expert_load) s.reset(model.config().n_routed_experts);
      }
      for (size_t l = 0; l < res.moe.size(); ++l) {
        MoeStats& a = (*expert_load)[l];
        for (size_t e = 0; e < a.load.size(); ++e) a.load[e] += res.moe[l].load[e];
        a.tokens += res.moe[l].tokens;
        a.entropy_sum += res.moe[l].entropy_sum;
      }
    }
  }
  if (world && W > 1) {
    std::vector<double> sums = {total, double(r.tokens)};
    world->sum(sums);
    total = sums[0];
    r.tokens = int64_t(sums[1]);
  }
  if (pipe && pipe->size() > 1) pipe->all_reduce(&total, 1, DType::f64, ReduceOp::sum);  // the last stage's
  r.windows = n;
  r.loss = r.tokens > 0 ? total / double(r.tokens) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

template EvalResult evaluate<float>(Model<float>&, ParamStore<float>&, const EvalWindows&, int64_t, const Ctx&,
                                    Comm*, std::vector<MoeStats>*, Comm*);
template EvalResult evaluate<double>(Model<double>&, ParamStore<double>&, const EvalWindows&, int64_t, const Ctx&,
                                     Comm*, std::vector<MoeStats>*, Comm*);
template EvalResult evaluate<bf16>(Model<bf16>&, ParamStore<bf16>&, const EvalWindows&, int64_t, const Ctx&,
                                   Comm*, std::vector<MoeStats>*, Comm*);

}  // namespace um
