// The C++ model against the independent PyTorch reference (tests/reference): forward outputs,
// every loss part, every parameter gradient by name, and 10 training steps, for the four tiny
// configs of tests/golden. f64 agrees to round-off; f32 to the tolerances stated below.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "golden.h"
#include "train/step.h"

namespace um::test {
namespace {

// f64: the two implementations differ only in summation order and libm (measured: <= 1e-15
// forward, <= 6e-15 gradients).
constexpr double kF64Forward = 1e-12, kF64Grad = 1e-11, kF64Loss = 1e-12;
// f32 against the f64 reference: float rounding through a few layers (measured: logits <= 7e-7,
// losses <= 1.3e-8, gradients <= 1.9e-6 normwise per tensor); 10x margin.
constexpr double kF32Forward = 7e-6, kF32Loss = 2e-7, kF32Grad = 2e-5;

class GoldenModel : public ::testing::TestWithParam<std::string> {};

template <class T>
struct StepOne {
  StepOutcome out;
  Capture<T> cap;  // micro-batches concatenated in data order
};

template <class T>
StepOne<T> run_step_one(const Golden& g, ParamStore<T>& ps, Model<T>& model, const Ctx& ctx) {
  StepOne<T> r;
  const TrainConfig& tc = g.rc.train;
  const int64_t m = tc.micro_batch_size, L = g.rc.model.num_hidden_layers,
                depth = g.rc.model.num_nextn_predict_layers;
  // the step's gradients and losses
  r.out = accumulate_step<T>(model, ps, tc, 1, g.batch(1), StepGroups{}, ctx);
  // forward captures, micro-batch by micro-batch (a forward does not change the weights; the
  // training forward is used so capacity mode applies exactly as in the step)
  const StepScales sc = step_scales(g.rc.model, tc, g.batch(1), g.B, g.T, 1, StepGroups{});
  ParamStore<T> scratch_grads(g.table);
  std::copy(ps.w.data(), ps.w.data() + ps.w.size(), scratch_grads.w.data());
  std::copy(ps.buf.data(), ps.buf.data() + ps.buf.size(), scratch_grads.buf.data());
  r.cap.hidden.assign(L + depth, {});
  r.cap.mtp_logits.assign(depth, {});
  for (int64_t first = 0; first < g.B; first += m) {
    Capture<T> c;
    model.forward_backward(scratch_grads, g.batch(1) + first * (g.T + 1), m, sc, true, ctx, &c);
    auto append = [](std::vector<T>& dst, const std::vector<T>& src) { dst.insert(dst.end(), src.begin(), src.end()); };
    append(r.cap.logits, c.logits);
    append(r.cap.hidden_norm, c.hidden_norm);
    for (size_t i = 0; i < c.hidden.size(); ++i) append(r.cap.hidden[i], c.hidden[i]);
    for (size_t k = 0; k < c.mtp_logits.size(); ++k) append(r.cap.mtp_logits[k], c.mtp_logits[k]);
  }
  return r;
}

template <class T>
void check_step_one(const Golden& g, double tol_fwd, double tol_loss, double tol_grad) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  ParamStore<T> ps(g.table);
  g.load(ps);
  ModelOptions mo{g.rc.train.micro_batch_size, g.T, g.rc.train.balance_scope, g.rc.train.capacity_factor,
                  g.rc.train.aux_free};
  Model<T> model(g.rc.model, g.table, mo);
  StepOne<T> r = run_step_one<T>(g, ps, model, ctx);
  const json& j = g.meta;

  EXPECT_EQ(r.out.n_main, j["n_main"].get<int64_t>());
  EXPECT_LE(normwise(r.cap.logits, g.tensor("logits")), tol_fwd) << "logits";
  EXPECT_LE(normwise(r.cap.hidden_norm, g.tensor("hidden.norm")), tol_fwd) << "hidden.norm";
  for (size_t i = 0; i < r.cap.hidden.size(); ++i)
    EXPECT_LE(normwise(r.cap.hidden[i], g.tensor("hidden." + std::to_string(i))), tol_fwd) << "hidden." << i;
  for (size_t k = 0; k < r.cap.mtp_logits.size(); ++k) {
    EXPECT_LE(normwise(r.cap.mtp_logits[k], g.tensor("mtp_logits." + std::to_string(k + 1))), tol_fwd)
        << "mtp_logits." << k + 1;
    EXPECT_EQ(r.out.n_mtp[k], j["n_mtp"][k].get<int64_t>());
  }

  EXPECT_LE(rel_error(r.out.loss, j["loss"]), tol_loss) << "loss " << r.out.loss;
  EXPECT_LE(rel_error(r.out.loss_mtp + 1, j["loss_mtp"].get<double>() + 1), tol_loss) << "loss_mtp";
  EXPECT_LE(rel_error(r.out.loss_bal + 1, j["loss_bal"].get<double>() + 1), tol_loss) << "loss_bal";
  EXPECT_LE(rel_error(r.out.loss_z + 1, j["loss_z"].get<double>() + 1), tol_loss) << "loss_z";
  EXPECT_LE(rel_error(r.out.loss_total, j["loss_total"]), tol_loss) << "loss_total";
  for (size_t k = 0; k < r.out.mtp_ce.size(); ++k)
    EXPECT_LE(rel_error(r.out.mtp_ce[k], j["mtp_ce"][k]), tol_loss) << "mtp_ce " << k;
  for (size_t l = 0; l < r.out.balance.size(); ++l) {
    EXPECT_LE(rel_error(r.out.balance[l], j["balance"][l]), tol_loss) << "balance layer " << l;
    EXPECT_EQ(r.out.moe[l].load, j["expert_load"][l].get<std::vector<int64_t>>()) << "expert load " << l;
    EXPECT_EQ(r.out.moe[l].dropped, j["dropped_pairs"][l].get<int64_t>()) << "dropped " << l;
  }

  // every parameter gradient, by name; the golden holds exactly the table's parameters
  size_t n_grads = 0;
  for (const auto& [name, e] : g.st->entries())
    if (name.rfind("grad.", 0) == 0) ++n_grads;
  EXPECT_EQ(n_grads, g.table.params.size()) << "the golden and the table disagree on the parameter set";
  double gmax = 0;
  for (int64_t i = 0; i < ps.g.size(); ++i) gmax = std::max(gmax, std::fabs(double(ps.g[i])));
  for (const ParamInfo& p : g.table.params) {
    const std::vector<double> want = g.tensor("grad." + p.name);
    std::vector<T> got(ps.g.data() + p.offset, ps.g.data() + p.offset + p.numel);
    double wmax = 0;
    for (double x : want) wmax = std::max(wmax, std::fabs(x));
    if (wmax < 1e-12 * gmax) {  // an expert no token reached: zero on both sides
      for (T x : got) EXPECT_LE(std::fabs(double(x)), 1e-12 * gmax) << p.name;
      continue;
    }
    EXPECT_LE(normwise(got, want), tol_grad) << "grad." << p.name;
  }
}

TEST_P(GoldenModel, StepOneF64) { check_step_one<double>(Golden(GetParam()), kF64Forward, kF64Loss, kF64Grad); }
TEST_P(GoldenModel, StepOneF32) { check_step_one<float>(Golden(GetParam()), kF32Forward, kF32Loss, kF32Grad); }

// Ten optimizer steps in f64: schedule, clipping, AdamW, aux-free biases, MTP lambda schedule.
TEST_P(GoldenModel, TenStepsF64) {
  const Golden g(GetParam());
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  ParamStore<double> ps(g.table);
  g.load(ps);
  const TrainConfig& tc = g.rc.train;
  Model<double> model(g.rc.model, g.table, {tc.micro_batch_size, g.T, tc.balance_scope, tc.capacity_factor, tc.aux_free});
  const Optimizer opt = Optimizer::full(g.table, tc.weight_decay_norms);
  int64_t adam_step = 0;
  const json& steps = g.meta["steps"];
  ASSERT_EQ(int64_t(steps.size()), g.S);
  for (int64_t s = 1; s <= g.S; ++s) {
    StepOutcome o = train_step<double>(model, ps, opt, tc, s, adam_step, g.batch(s), StepGroups{}, ctx);
    const json& want = steps[s - 1];
    EXPECT_LE(rel_error(o.lr, want["lr"]), 1e-14) << "lr at step " << s;
    EXPECT_LE(rel_error(o.loss, want["loss"]), 1e-9) << "loss at step " << s;
    EXPECT_LE(rel_error(o.loss_total, want["loss_total"]), 1e-9) << "loss_total at step " << s;
    EXPECT_LE(rel_error(o.grad_norm, want["grad_norm"]), 1e-8) << "grad_norm at step " << s;
    EXPECT_EQ(o.clipped, want["clipped"].get<bool>()) << "clipped at step " << s;
  }
  EXPECT_EQ(adam_step, g.S);
  for (const ParamInfo& p : g.table.params) {
    std::vector<double> got(ps.w.data() + p.offset, ps.w.data() + p.offset + p.numel);
    EXPECT_LE(normwise(got, g.tensor("final.param." + p.name)), 1e-8) << "final " << p.name;
  }
  for (const BufferInfo& b : g.table.buffers) {
    std::vector<double> got(ps.buf.data() + b.offset, ps.buf.data() + b.offset + b.numel);
    std::vector<double> want = g.tensor("final.buffer." + b.name);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "final " << b.name;
  }
}

// The whole model by central finite differences in f64: J along a random direction of every
// parameter tensor against the analytic gradient (the reference's routing margins keep top-k
// and the capacity cut-off fixed under the perturbation).
TEST_P(GoldenModel, FiniteDifferencesF64) {
  const Golden g(GetParam());
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  ParamStore<double> ps(g.table);
  g.load(ps);
  const TrainConfig& tc = g.rc.train;
  Model<double> model(g.rc.model, g.table, {tc.micro_batch_size, g.T, tc.balance_scope, tc.capacity_factor, tc.aux_free});
  accumulate_step<double>(model, ps, tc, 1, g.batch(1), StepGroups{}, ctx);
  const std::vector<double> grad(ps.g.data(), ps.g.data() + ps.g.size());
  auto J = [&]() { return accumulate_step<double>(model, ps, tc, 1, g.batch(1), StepGroups{}, ctx).loss_total; };
  Philox rng(77, "model-fd");
  const double h = 1e-5;
  double worst = 0;
  for (const ParamInfo& p : g.table.params) {
    std::vector<double> dir(p.numel);
    double norm = 0, analytic = 0;
    for (int64_t i = 0; i < p.numel; ++i) norm += (dir[i] = rng.normal(p.offset + i)) * dir[i];
    norm = std::sqrt(norm);
    double* w = ps.w.data() + p.offset;
    std::vector<double> w0(w, w + p.numel);
    for (int64_t i = 0; i < p.numel; ++i) analytic += grad[p.offset + i] * dir[i] / norm;
    for (int64_t i = 0; i < p.numel; ++i) w[i] = w0[i] + h * dir[i] / norm;
    const double jp = J();
    for (int64_t i = 0; i < p.numel; ++i) w[i] = w0[i] - h * dir[i] / norm;
    const double jm = J();
    std::copy(w0.begin(), w0.end(), w);
    const double numeric = (jp - jm) / (2 * h);
    // error relative to the gradient's scale over the tensor (directional derivatives can be ~0)
    double gnorm = 0;
    for (int64_t i = 0; i < p.numel; ++i) gnorm += grad[p.offset + i] * grad[p.offset + i];
    const double err = std::fabs(numeric - analytic) / std::max(std::sqrt(gnorm), 1e-8);
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-6) << p.name << ": numeric " << numeric << " analytic " << analytic;
  }
  RecordProperty("worst_fd_error", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Reference, GoldenModel,
                         ::testing::Values("tiny_dssn", "tiny_preln", "tiny_grouped", "tiny_moge"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace um::test
