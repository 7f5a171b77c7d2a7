#include "train/step.h"

#include <cmath>

#include "ops/optim.h"

namespace um {

StepScales step_scales(const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                       int64_t B, int64_t T, int64_t step) {
  const int64_t depth = c.num_nextn_predict_layers;
  const std::vector<int64_t> n = count_valid_targets(windows, B, T, depth);
  StepScales sc;
  sc.n_main = double(n[0]);
  for (int64_t k = 1; k <= depth; ++k) sc.n_mtp.push_back(double(n[k]));
  sc.mtp_lambda = depth > 0 ? tc.mtp_lambda.at(step) : 0.0;
  sc.balance_alpha = tc.balance_alpha;
  // one process: every pooled scope (micro_batch, ep_group, global) pools one micro-batch
  sc.n_pools = tc.balance_scope == BalanceScope::sequence ? double(B)
                                                          : double(B / tc.micro_batch_size);
  sc.z_coef = tc.z_loss_coef;
  sc.n_sequences = B;
  return sc;
}

template <class T>
StepOutcome accumulate_step(Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                            int64_t step, const int32_t* windows, const Ctx& ctx) {
  const ModelConfig& c = model.config();
  const int64_t B = tc.batch_size, m = tc.micro_batch_size, T_ = model.options().seq_len;
  const int64_t depth = c.num_nextn_predict_layers;
  const StepScales sc = step_scales(c, tc, windows, B, T_, step);

  StepOutcome out;
  out.step = step;
  out.lr = learning_rate(tc, step);
  out.n_main = int64_t(sc.n_main);
  for (double n : sc.n_mtp) out.n_mtp.push_back(int64_t(n));
  out.mtp_ce.assign(depth, 0.0);
  const size_t n_moe = model.moe_layers().size();
  out.moe.resize(n_moe);
  for (auto& s : out.moe) s.reset(c.n_routed_experts);

  ps.zero_grad();
  double ce_main = 0;
  for (int64_t first = 0; first < B; first += m) {
    MicroResult r = model.forward_backward(ps, windows + first * (T_ + 1), m, sc, true, ctx);
    ce_main += r.ce_main;
    for (int64_t k = 0; k < depth; ++k) out.mtp_ce[k] += r.ce_mtp[k];
    for (size_t l = 0; l < n_moe; ++l) {
      MoeStats& a = out.moe[l];
      const MoeStats& b = r.moe[l];
      for (size_t e = 0; e < a.load.size(); ++e) a.load[e] += b.load[e];
      a.tokens += b.tokens;
      a.dropped += b.dropped;
      a.balance += b.balance;
      a.z_sum += b.z_sum;
      a.entropy_sum += b.entropy_sum;
      a.margin_min = std::min(a.margin_min, b.margin_min);
    }
  }

  // losses (DESIGN 1.8): every term divided by its global count
  out.loss = sc.n_main > 0 ? ce_main / sc.n_main : 0.0;
  for (int64_t k = 0; k < depth; ++k) {
    out.mtp_ce[k] = sc.n_mtp[k] > 0 ? out.mtp_ce[k] / sc.n_mtp[k] : 0.0;
    out.loss_mtp += sc.mtp_lambda / double(depth) * out.mtp_ce[k];
  }
  for (size_t l = 0; l < n_moe; ++l) {
    out.balance.push_back(out.moe[l].balance / sc.n_pools);
    out.loss_bal += sc.balance_alpha * out.balance.back();
    const int64_t rows_per_seq = T_ - std::max<int64_t>(0, model.moe_layers()[l] - c.num_hidden_layers + 1);
    out.loss_z += sc.z_coef * out.moe[l].z_sum / double(B * rows_per_seq);
  }
  out.loss_total = out.loss + out.loss_mtp + out.loss_bal + out.loss_z;
  return out;
}

template <class T>
void apply_update(StepOutcome& out, Model<T>& model, ParamStore<T>& ps,
                  const std::vector<DecayRun>& runs, const TrainConfig& tc, int64_t& adam_step,
                  const Ctx& ctx) {
  const ModelConfig& c = model.config();
  const size_t n_moe = model.moe_layers().size();
  // global norm, non-finite check, clipping, AdamW, aux-free biases (DESIGN 2, 1.6)
  out.grad_norm = std::sqrt(sum_squares<T>(ps.g.data(), ps.g.size(), ctx));
  if (!std::isfinite(out.grad_norm) || !std::isfinite(out.loss_total)) {
    out.skipped = true;
    return;
  }
  const double coef = clip_coefficient(out.grad_norm, tc.grad_clip);
  out.clipped = coef < 1.0;
  if (out.clipped) scale_inplace<T>(ps.g.data(), ps.g.size(), coef, ctx);
  ++adam_step;
  adamw_step<T>(ps, runs, tc, out.lr, adam_step, ctx);
  if (tc.aux_free || c.aux_free_bias) {
    const double gamma = tc.aux_free_gamma.at(out.step);
    for (size_t l = 0; l < n_moe; ++l)
      aux_free_update<T>(ps.buf.data() + model.bias_offset(l), out.moe[l].load, gamma);
  }
}

template <class T>
StepOutcome train_step(Model<T>& model, ParamStore<T>& ps, const std::vector<DecayRun>& runs,
                       const TrainConfig& tc, int64_t step, int64_t& adam_step,
                       const int32_t* windows, const Ctx& ctx) {
  StepOutcome out = accumulate_step<T>(model, ps, tc, step, windows, ctx);
  apply_update<T>(out, model, ps, runs, tc, adam_step, ctx);
  return out;
}

#define UM_INSTANTIATE(T)                                                                       \
  template StepOutcome accumulate_step<T>(Model<T>&, ParamStore<T>&, const TrainConfig&, int64_t, \
                                          const int32_t*, const Ctx&);                          \
  template void apply_update<T>(StepOutcome&, Model<T>&, ParamStore<T>&,                        \
                                const std::vector<DecayRun>&, const TrainConfig&, int64_t&,     \
                                const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

template StepOutcome train_step<float>(Model<float>&, ParamStore<float>&, const std::vector<DecayRun>&,
                                       const TrainConfig&, int64_t, int64_t&, const int32_t*, const Ctx&);
template StepOutcome train_step<double>(Model<double>&, ParamStore<double>&, const std::vector<DecayRun>&,
                                        const TrainConfig&, int64_t, int64_t&, const int32_t*, const Ctx&);

}  // namespace um
