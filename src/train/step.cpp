#include "train/step.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "ops/elementwise.h"
#include "ops/optim.h"
#include "train/pipeline.h"

namespace um {

double pools_per_step(const TrainConfig& tc, int64_t world, int64_t ep) {
  const double B = double(tc.batch_size), m = double(tc.micro_batch_size);
  switch (tc.balance_scope) {
    case BalanceScope::sequence: return B;
    case BalanceScope::micro_batch: return B / m;
    case BalanceScope::ep_group: return B / (m * double(ep));
    case BalanceScope::global: return B / (m * double(world));
  }
  return B / m;
}

StepScales step_scales(const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                       int64_t n_local, int64_t T, int64_t step, const StepGroups& g) {
  StepScales sc;
  std::vector<int64_t> counts;
  std::vector<int32_t> eos;
  step_scales(sc, c, tc, windows, n_local, T, step, g, counts, eos);
  return sc;
}

void step_scales(StepScales& sc, const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                 int64_t n_local, int64_t T, int64_t step, const StepGroups& g,
                 std::vector<int64_t>& n, std::vector<int32_t>& eos) {
  const int64_t depth = c.num_nextn_predict_layers;
  count_valid_targets(n, eos, windows, n_local, T, depth);
  if (g.world) g.world->sum(n);  // design.md 1.8: all-reduced once per step
  sc.n_main = double(n[0]);
  sc.n_mtp.resize(depth);
  for (int64_t k = 1; k <= depth; ++k) sc.n_mtp[k - 1] = double(n[k]);
  sc.mtp_lambda = depth > 0 ? tc.mtp_lambda.at(step) : 0.0;
  sc.balance_alpha = tc.balance_alpha;
  sc.n_pools = pools_per_step(tc, g.world_size(), g.ep_size());
  sc.z_coef = tc.z_loss_coef;
  sc.n_sequences = tc.batch_size;
  sc.on_grads_ready = nullptr;
}

namespace {

// Sums the step's statistics over the world: losses, per-layer loads and sums (one all-reduce).
void reduce_stats(StepOutcome& out, double& ce_main, Comm& world) {
  std::vector<double>& v = out.scratch.stats;
  v.assign(1, ce_main);
  for (double x : out.mtp_ce) v.push_back(x);
  for (const MoeStats& s : out.moe) {
    v.insert(v.end(), {double(s.tokens), double(s.dropped), s.balance, s.z_sum, s.entropy_sum});
    for (int64_t l : s.load) v.push_back(double(l));  // exact: counts stay far below 2^53
  }
  world.sum(v);
  size_t at = 0;
  ce_main = v[at++];
  for (double& x : out.mtp_ce) x = v[at++];
  for (MoeStats& s : out.moe) {
    s.tokens = int64_t(v[at++]);
    s.dropped = int64_t(v[at++]);
    s.balance = v[at++];
    s.z_sum = v[at++];
    s.entropy_sum = v[at++];
    for (int64_t& l : s.load) l = int64_t(v[at++]);
  }
  v.clear();
  for (const MoeStats& s : out.moe) v.push_back(s.margin_min);
  world.all_reduce(v.data(), int64_t(v.size()), DType::f64, ReduceOp::min);
  for (size_t i = 0; i < v.size(); ++i) out.moe[i].margin_min = v[i];
}

}  // namespace

template <class T>
StepOutcome accumulate_step(Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                            int64_t step, const int32_t* windows, const StepGroups& g,
                            const Ctx& ctx, const Optimizer* opt) {
  StepOutcome out;
  accumulate_step<T>(out, model, ps, tc, step, windows, g, ctx, opt);
  return out;
}

template <class T>
void accumulate_step(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                     int64_t step, const int32_t* windows, const StepGroups& g, const Ctx& ctx,
                     const Optimizer* opt) {
  const ModelConfig& c = model.config();
  const int64_t W = g.world_size(), m = tc.micro_batch_size, T_ = model.options().seq_len;
  const int64_t n_local = tc.batch_size / W, depth = c.num_nextn_predict_layers;
  StepScales& sc = out.scratch.scales;
  step_scales(sc, c, tc, windows, n_local, T_, step, g, out.scratch.counts, out.scratch.eos);

  out.step = step;
  out.lr = learning_rate(tc, step);
  out.loss = out.loss_mtp = out.loss_bal = out.loss_z = out.loss_total = out.grad_norm = 0;
  out.clipped = out.skipped = false;
  out.n_main = int64_t(sc.n_main);
  out.n_mtp.resize(depth);
  for (int64_t k = 0; k < depth; ++k) out.n_mtp[k] = int64_t(sc.n_mtp[k]);
  out.mtp_ce.assign(depth, 0.0);
  const size_t n_moe = model.moe_layers().size();
  out.moe.resize(n_moe);
  for (auto& s : out.moe) s.reset(c.n_routed_experts);
  out.balance.clear();

  ps.zero_grad(ctx);
  double ce_main = 0;
  const bool overlap = opt && !opt->zero && g.world && g.world->size() > 1 && !g.pipe;
  out.pending.clear();
  out.pending_elements = 0;
  out.reduce_started = overlap;
  // What the hook needs, behind one pointer: a lambda that captures 8 bytes fits std::function's
  // small buffer, so setting the hook does not allocate.
  struct Reduce {
    StepOutcome* out;
    Comm* world;
    acc_t<T>* grad;
  } reduce{&out, g.world, ps.g.data()};
  struct Sums {
    StepOutcome* out;
    double* ce_main;
    int64_t depth;
  } sums{&out, &ce_main, depth};
  auto add = [&sums](const MicroResult& r) {
    StepOutcome& o = *sums.out;
    *sums.ce_main += r.ce_main;
    for (int64_t k = 0; k < sums.depth; ++k) o.mtp_ce[k] += r.ce_mtp[k];
    for (size_t l = 0; l < o.moe.size(); ++l) {
      MoeStats& a = o.moe[l];
      const MoeStats& b = r.moe[l];
      for (size_t e = 0; e < a.load.size(); ++e) a.load[e] += b.load[e];
      a.tokens += b.tokens;
      a.dropped += b.dropped;
      a.balance += b.balance;
      a.z_sum += b.z_sum;
      a.entropy_sum += b.entropy_sum;
      a.margin_min = std::min(a.margin_min, b.margin_min);
    }
  };
  if (g.pipe) {  // this rank's chunks, in its schedule's order (design.md 4, train/pipeline.h)
    pipeline_run<T>(model, ps, windows, m, n_local / m, sc, true, *g.pipe, out.scratch.pipe, ctx,
                    [&add](int64_t, const MicroResult& r) { add(r); });
  } else {
    for (int64_t first = 0; first < n_local; first += m) {
      if (overlap && first + m >= n_local)  // the last micro-batch: its finished ranges are final
        sc.on_grads_ready = [r = &reduce](int64_t b, int64_t e) {
          r->out->pending.push_back(r->world->iall_reduce(r->grad + b, e - b, dtype_of<acc_t<T>>(), ReduceOp::sum));
          r->out->pending_elements += e - b;
        };
      add(model.forward_backward(ps, windows + first * (T_ + 1), m, sc, true, ctx));
    }
  }
  if (Comm* all = g.everyone()) {  // every rank: a pipeline's stages each add their own layers and losses
    PhaseTimer timer(ctx.prof, Phase::communication);
    reduce_stats(out, ce_main, *all);
  }

  // losses (design.md 1.8): every term divided by its global count
  out.loss = sc.n_main > 0 ? ce_main / sc.n_main : 0.0;
  for (int64_t k = 0; k < depth; ++k) {
    out.mtp_ce[k] = sc.n_mtp[k] > 0 ? out.mtp_ce[k] / sc.n_mtp[k] : 0.0;
    out.loss_mtp += sc.mtp_lambda / double(depth) * out.mtp_ce[k];
  }
  for (size_t l = 0; l < n_moe; ++l) {
    out.balance.push_back(out.moe[l].balance / sc.n_pools);
    out.loss_bal += sc.balance_alpha * out.balance.back();
    const int64_t rows_per_seq = T_ - std::max<int64_t>(0, model.moe_layers()[l] - c.num_hidden_layers + 1);
    out.loss_z += sc.z_coef * out.moe[l].z_sum / double(tc.batch_size * rows_per_seq);
  }
  out.loss_total = out.loss + out.loss_mtp + out.loss_bal + out.loss_z;
  sc.on_grads_ready = nullptr;
}

namespace {
// ZeRO-1's staging buffer for one shard, on the step's device: grows once, then reused.
template <class A>
A* zero_scratch(StepOutcome& out, int64_t elements, const Ctx& ctx) {
  DeviceBuffer<std::byte>& b = out.scratch.shard;
  const int64_t bytes = elements * int64_t(sizeof(A));
  if (b.size() < bytes || b.device() != ctx.device) b = DeviceBuffer<std::byte>(bytes, ctx.device);
  return reinterpret_cast<A*>(b.data());
}
}  // namespace

template <class T>
void apply_update(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                  const TrainConfig& tc, int64_t& adam_step, const StepGroups& g, const Ctx& ctx) {
  using A = acc_t<T>;
  const ModelConfig& c = model.config();
  const size_t n_moe = model.moe_layers().size();
  A* grad = ps.g.data();
  const int64_t n_dense = opt.zero ? 0 : opt.dense_end;  // replicated region size without ZeRO
  PhaseTimer timer(ctx.prof, Phase::optimizer);
  std::optional<PhaseTimer> comm;
  comm.emplace(ctx.prof, Phase::communication);
  const DType dt = dtype_of<A>();

  // Pipeline parallelism: the first and the last stage each hold the embedding (the tail reads it
  // for the MTP inputs or a tied head); their gradients are summed first, so both copies take the
  // same update, and the norm counts the first stage's copy only.
  const int64_t emb = model.embedding_offset();
  const int64_t emb_n = emb >= 0 ? c.vocab_size * c.hidden_size : 0;
  const bool two_copies = g.pipe && g.pp_size() > 1 && tail_reads_embedding(c);
  if (two_copies && (g.pp_rank() == 0 || g.pp_rank() == g.pp_size() - 1))
    g.embed->all_reduce(grad + emb, emb_n, dt, ReduceOp::sum);
  const bool skip_copy = two_copies && g.pp_rank() == g.pp_size() - 1;
  // sum of squares over [b, e), without this rank's embedding copy when the first stage counts it
  auto squares = [&](int64_t b, int64_t e) {
    if (!skip_copy || e <= emb || b >= emb + emb_n) return sum_squares<A>(grad + b, e - b, ctx);
    double s = 0;
    if (b < emb) s += sum_squares<A>(grad + b, emb - b, ctx);
    if (e > emb + emb_n) s += sum_squares<A>(grad + emb + emb_n, e - (emb + emb_n), ctx);
    return s;
  };

  // gradient reductions (plain sums, design.md 1.8) and the squared norm, every element once
  double ss = 0;
  if (!opt.zero) {
    if (out.reduce_started) {  // started during the backward; every replicated tensor exactly once
      for (Request& r : out.pending) r.wait();
      int64_t params = 0;
      for (const DecayRun& r : opt.runs)
        if (r.begin < n_dense) params += std::min(r.end, n_dense) - r.begin;
      UM_CHECK(out.pending_elements == params, "step", "the backward reported ", out.pending_elements,
               " replicated gradient elements, the table has ", params);
      out.pending.clear();
      out.reduce_started = false;
    } else if (g.world && g.world->size() > 1) {
      g.world->all_reduce(grad, n_dense, dt, ReduceOp::sum);
    }
    if (g.edp && g.edp->size() > 1)
      g.edp->all_reduce(grad + opt.expert_begin, opt.expert_end - opt.expert_begin, dt, ReduceOp::sum);
    comm.reset();  // the norm is the optimizer's work
    double parts[2] = {squares(0, n_dense),
                       sum_squares<A>(grad + opt.expert_begin, opt.expert_end - opt.expert_begin, ctx)};
    if (g.ep && g.ep->size() > 1) {
      comm.emplace(ctx.prof, Phase::communication);
      g.ep->all_reduce(&parts[1], 1, DType::f64, ReduceOp::sum);  // each expert once
    }
    ss = parts[0] + parts[1];
  } else {
    // ZeRO-1: reduce-scatter into this rank's shards; each shard's elements counted once
    const int64_t dchunk = opt.dense_end - opt.dense_begin, echunk = opt.expert_end - opt.expert_begin;
    A* shard = zero_scratch<A>(out, std::max(dchunk, echunk), ctx);
    if (g.world && g.world->size() > 1) {
      g.world->reduce_scatter(grad, shard, dchunk, dt, ReduceOp::sum);
      ctx.copy(grad + opt.dense_begin, shard, size_t(dchunk));
    }
    if (g.edp && g.edp->size() > 1) {
      const int64_t expert_base = opt.expert_begin - g.edp->rank() * echunk;
      g.edp->reduce_scatter(grad + expert_base, shard, echunk, dt, ReduceOp::sum);
      ctx.copy(grad + opt.expert_begin, shard, size_t(echunk));
    }
    comm.reset();
    double part = squares(opt.dense_begin, opt.dense_end) +
                  sum_squares<A>(grad + opt.expert_begin, echunk, ctx);
    if (g.world && g.world->size() > 1) {
      comm.emplace(ctx.prof, Phase::communication);
      g.world->all_reduce(&part, 1, DType::f64, ReduceOp::sum);
    }
    ss = part;
  }
  if (g.pipe && g.pp_size() > 1) {  // each stage's parameters once
    comm.emplace(ctx.prof, Phase::communication);
    g.pipe->all_reduce(&ss, 1, DType::f64, ReduceOp::sum);
  }
  comm.reset();
  out.grad_norm = std::sqrt(ss);

  // non-finite: decided on the global norm, so every rank agrees (design.md 2)
  if (!std::isfinite(out.grad_norm) || !std::isfinite(out.loss_total)) {
    out.skipped = true;
    return;
  }
  const double coef = clip_coefficient(out.grad_norm, tc.grad_clip);
  out.clipped = coef < 1.0;
  if (out.clipped)
    for (const DecayRun& r : opt.runs) scale_inplace<A>(grad + r.begin, r.end - r.begin, coef, ctx);
  ++adam_step;
  adamw_step<T>(ps, opt, tc, out.lr, adam_step, ctx);
  if (opt.zero) {  // every rank gets the updated weights of every shard
    PhaseTimer gather(ctx.prof, Phase::communication);
    const int64_t dchunk = opt.dense_end - opt.dense_begin, echunk = opt.expert_end - opt.expert_begin;
    A* mine = zero_scratch<A>(out, std::max(dchunk, echunk), ctx);
    if (g.world && g.world->size() > 1) {
      ctx.copy(mine, ps.w.data() + opt.dense_begin, size_t(dchunk));
      g.world->all_gather(mine, ps.w.data(), dchunk, dt);
    }
    if (g.edp && g.edp->size() > 1) {
      ctx.copy(mine, ps.w.data() + opt.expert_begin, size_t(echunk));
      g.edp->all_gather(mine, ps.w.data() + opt.expert_begin - g.edp->rank() * echunk, echunk, dt);
    }
  }
  ps.sync_compute(ctx);
  if (tc.aux_free || c.aux_free_bias) {  // loads already summed over the world: same on every rank
    const double gamma = tc.aux_free_gamma.at(out.step);
    for (size_t l = 0; l < n_moe; ++l)
      if (model.bias_offset(l) >= 0)  // a pipeline rank updates the layers it holds
        aux_free_update<A>(ps.buf.data() + model.bias_offset(l), out.moe[l].load, gamma, out.scratch.bias, ctx);
  }
}

template <class T>
void train_step(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                const TrainConfig& tc, int64_t step, int64_t& adam_step, const int32_t* windows,
                const StepGroups& g, const Ctx& ctx) {
  accumulate_step<T>(out, model, ps, tc, step, windows, g, ctx, &opt);
  apply_update<T>(out, model, ps, opt, tc, adam_step, g, ctx);
}

template <class T>
StepOutcome train_step(Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                       const TrainConfig& tc, int64_t step, int64_t& adam_step,
                       const int32_t* windows, const StepGroups& g, const Ctx& ctx) {
  StepOutcome out;
  train_step<T>(out, model, ps, opt, tc, step, adam_step, windows, g, ctx);
  return out;
}

#define UM_INSTANTIATE(T)                                                                        \
  template StepOutcome accumulate_step<T>(Model<T>&, ParamStore<T>&, const TrainConfig&, int64_t, \
                                          const int32_t*, const StepGroups&, const Ctx&,         \
                                          const Optimizer*);                                     \
  template void accumulate_step<T>(StepOutcome&, Model<T>&, ParamStore<T>&, const TrainConfig&,   \
                                   int64_t, const int32_t*, const StepGroups&, const Ctx&,       \
                                   const Optimizer*);                                            \
  template void train_step<T>(StepOutcome&, Model<T>&, ParamStore<T>&, const Optimizer&,          \
                              const TrainConfig&, int64_t, int64_t&, const int32_t*,             \
                              const StepGroups&, const Ctx&);                                    \
  template void apply_update<T>(StepOutcome&, Model<T>&, ParamStore<T>&, const Optimizer&,        \
                                const TrainConfig&, int64_t&, const StepGroups&, const Ctx&);    \
  template StepOutcome train_step<T>(Model<T>&, ParamStore<T>&, const Optimizer&, const TrainConfig&, \
                                     int64_t, int64_t&, const int32_t*, const StepGroups&, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
UM_INSTANTIATE(bf16)
#undef UM_INSTANTIATE

}  // namespace um
