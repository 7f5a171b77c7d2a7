#include "plan/search.h"

#include <algorithm>
#include <cmath>

namespace um::plan {

namespace {

std::vector<int> divisors(int64_t n, int64_t at_most) {
  std::vector<int> d;
  for (int64_t k = 1; k <= std::min(n, at_most); ++k)
    if (n % k == 0) d.push_back(static_cast<int>(k));
  return d;
}

// The expert shardings worth trying for one (tp, ep): etp = tp, etp = 1, tp_extend_ep. etp = 1
// with ep = tp k is the same placement as tp_extend_ep with ep = k (whole experts over tp k
// adjacent devices), so only the latter is listed.
std::vector<Layout> expert_variants(const Layout& base, bool variants) {
  std::vector<Layout> out{base};
  if (!variants || base.tp == 1) return out;
  Layout etp1 = base;
  etp1.etp = 1;
  if (base.ep % base.tp != 0) out.push_back(etp1);
  Layout extend = base;
  extend.tp_extend_ep = true;
  out.push_back(extend);
  return out;
}

bool valid(const PlanModel& m, const Workload& w, Layout& l) {
  try {
    check_layout(m, w, l);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::vector<Layout> enumerate_layouts(const PlanModel& m, const Hardware& hw, const Workload& w,
                                      const SearchSpace& space) {
  std::vector<Layout> out;
  const std::vector<int> eps = m.has_experts() ? divisors(m.n_experts, m.n_experts) : std::vector<int>{1};
  for (int tp : divisors(hw.devices_per_node, hw.devices_per_node)) {
    if (w.devices % tp != 0 || m.n_heads % tp != 0) continue;
    for (int pp : divisors(w.devices / tp, m.n_units())) {
      for (int vpp : space.vpp) {
        if ((vpp > 1 && pp == 1) || pp * vpp > m.n_units()) continue;
        for (int mbs : space.mbs)
          for (int ep : eps) {
            Layout base;
            base.tp = tp, base.pp = pp, base.vpp = vpp, base.mbs = mbs, base.ep = ep;
            for (Layout l : expert_variants(base, space.expert_tp_variants && m.has_experts()))
              for (Recompute r : space.recompute)
                for (int zero : space.zero) {
                  l.recompute = r;
                  l.zero = zero;
                  l.dp = 0;
                  if (valid(m, w, l)) out.push_back(l);
                }
          }
      }
    }
  }
  return out;
}

SearchResult search_layouts(const PlanModel& m, const Hardware& hw, const Workload& w, const SearchSpace& space) {
  SearchResult r;
  for (const Layout& l : enumerate_layouts(m, hw, w, space)) {
    Prediction p = evaluate(m, hw, w, l);
    ++r.evaluated;
    if (r.evaluated == 1 || p.memory.total() < r.smallest.memory.total()) r.smallest = p;
    r.step_times.push_back(p.step_time_s);
    if (p.fits) r.ranked.push_back(std::move(p));
  }
  std::stable_sort(r.ranked.begin(), r.ranked.end(),
                   [](const Prediction& a, const Prediction& b) { return a.step_time_s < b.step_time_s; });
  std::sort(r.step_times.begin(), r.step_times.end());
  return r;
}

namespace {

// Ties within a relative 1e-12 count as equal, so a layout ranks with its equals.
bool faster(double a, double b) { return a < b * (1 - 1e-12); }

}  // namespace

int64_t rank_among(const SearchResult& r, double step_time_s) {
  int64_t n = 0;
  for (const Prediction& p : r.ranked) n += faster(p.step_time_s, step_time_s);
  return n + 1;
}

int64_t rank_by_time(const SearchResult& r, double step_time_s) {
  int64_t n = 0;
  for (double t : r.step_times) n += faster(t, step_time_s);
  return n + 1;
}

namespace {

// Widths are rounded to multiples of this, the tile size GEMM libraries favour.
constexpr int64_t kWidthQuantum = 128;

int64_t round_to(double x, int64_t q) { return std::max<int64_t>(q, static_cast<int64_t>(std::llround(x / q)) * q); }

bool within(double value, double target, double tolerance) {
  return std::fabs(value / target - 1.0) <= tolerance;
}

}  // namespace

bool derive_geometry(const PlanModel& base, int64_t layers, int64_t hidden, int64_t experts,
                     double tolerance, PlanModel* out) {
  const PlanParamCounts target = plan_param_counts(base);
  PlanModel g = base;
  g.n_layers = layers;
  g.hidden = hidden;
  g.n_experts = experts;
  g.n_dense_layers = std::min(base.n_dense_layers, layers);
  if (base.dense_width > 0) g.dense_width = round_to(static_cast<double>(base.dense_width) * hidden / base.hidden, kWidthQuantum);
  const int64_t n_shared = base.expert_width > 0 ? base.shared_width / base.expert_width : 0;
  auto with = [&](int64_t F, int64_t K) {
    PlanModel x = g;
    x.expert_width = F;
    x.shared_width = n_shared * F;
    x.top_k = K;
    return plan_param_counts(x);
  };
  // total = A + c F and active = a0(F) + K a1(F): both linear, solve F then K.
  const double A = static_cast<double>(with(0, 0).total), c = static_cast<double>(with(1, 0).total) - A;
  if (c <= 0 || target.total <= A) return false;
  const int64_t F = round_to((target.total - A) / c, kWidthQuantum);
  const double a0 = static_cast<double>(with(F, 0).active), a1 = static_cast<double>(with(F, 1).active) - a0;
  const int64_t K = std::clamp<int64_t>(std::llround((target.active - a0) / a1), 1, experts);
  g.expert_width = F;
  g.shared_width = n_shared * F;
  g.top_k = K;
  if (g.group_limited && (experts % g.n_group != 0 || K > g.topk_group * (experts / g.n_group))) g.group_limited = false;
  const PlanParamCounts got = plan_param_counts(g);
  if (!within(static_cast<double>(got.total), static_cast<double>(target.total), tolerance) ||
      !within(static_cast<double>(got.active), static_cast<double>(target.active), tolerance))
    return false;
  g.name = base.name + " L" + std::to_string(layers) + " D" + std::to_string(hidden) + " E" + std::to_string(experts);
  *out = g;
  return true;
}

namespace {

// Default grid: layers L0 +- 4 and 8, hidden D0 +- 512 and 1024, experts E0/2, E0, 2 E0.
constexpr int64_t kLayerStep = 4, kHiddenStep = 512;

std::vector<int64_t> around(int64_t center, int64_t step, int64_t minimum) {
  std::vector<int64_t> v;
  for (int64_t k = -2; k <= 2; ++k)
    if (center + k * step >= minimum) v.push_back(center + k * step);
  return v;
}

}  // namespace

std::vector<GeometryCandidate> search_geometry(const PlanModel& base, const Hardware& hw, const Workload& w,
                                               const GeometryGrid& grid, const SearchSpace& space) {
  UM_CHECK(base.has_experts(), "plan", "geometry search needs an MoE model; ", base.name, " has no experts");
  const std::vector<int64_t> layers = grid.layers.empty() ? around(base.n_layers, kLayerStep, base.n_dense_layers + 1) : grid.layers;
  const std::vector<int64_t> hidden = grid.hidden.empty() ? around(base.hidden, kHiddenStep, kHiddenStep) : grid.hidden;
  const std::vector<int64_t> experts = grid.experts.empty()
      ? std::vector<int64_t>{base.n_experts / 2, base.n_experts, base.n_experts * 2} : grid.experts;
  std::vector<GeometryCandidate> out;
  for (int64_t L : layers)
    for (int64_t D : hidden)
      for (int64_t E : experts) {
        GeometryCandidate c;
        if (E < 1 || !derive_geometry(base, L, D, E, grid.tolerance, &c.model)) continue;
        c.counts = plan_param_counts(c.model);
        SearchResult r = search_layouts(c.model, hw, w, space);
        c.found = !r.ranked.empty();
        c.best = c.found ? r.ranked.front() : r.smallest;
        out.push_back(std::move(c));
      }
  std::stable_sort(out.begin(), out.end(), [](const GeometryCandidate& a, const GeometryCandidate& b) {
    if (a.found != b.found) return a.found;
    return a.best.tokens_per_s > b.best.tokens_per_s;
  });
  return out;
}

}  // namespace um::plan
