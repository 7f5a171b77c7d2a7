// Searches of the planner (design.md 5): every parallel layout of a device count that fits in memory,
// ranked by predicted step time; and model geometries (layers, hidden size, experts) at a fixed
// total/active parameter budget, each with its best layout, as Pangu Ultra MoE chose its shape
// (arXiv 2505.04519, section 2). This file enumerates and ranks; the predictions come from
// plan/simulate.h.
#pragma once

#include <cstdint>
#include <vector>

#include "plan/simulate.h"

namespace um::plan {

// Which layouts the search enumerates. tp runs over divisors of devices_per_node (TP stays inside
// a node, Megatron-Core's advice), pp over divisors of devices / tp, ep over divisors of E.
struct SearchSpace {
  std::vector<int> vpp = {1, 2, 3, 4, 6, 8};
  std::vector<int> mbs = {1, 2, 4, 8};
  std::vector<Recompute> recompute = {Recompute::none, Recompute::selective, Recompute::full};
  std::vector<int> zero = {1};  // ZeRO-1 never costs more here (same bytes, sharded state)
  bool expert_tp_variants = true;  // besides etp = tp: etp = 1 and tp_extend_ep
};

struct SearchResult {
  std::vector<Prediction> ranked;  // layouts that fit, fastest first
  int64_t evaluated = 0;
  std::vector<double> step_times;  // every valid layout, fitting or not, ascending
  Prediction smallest;             // the layout needing the least memory (for "nothing fits")
};

std::vector<Layout> enumerate_layouts(const PlanModel& m, const Hardware& hw, const Workload& w,
                                      const SearchSpace& space = {});
SearchResult search_layouts(const PlanModel& m, const Hardware& hw, const Workload& w,
                            const SearchSpace& space = {});

// 1-based rank a prediction would take among the fitting layouts (1 + those strictly faster).
int64_t rank_among(const SearchResult& r, double step_time_s);
// The same among all valid layouts, memory ignored.
int64_t rank_by_time(const SearchResult& r, double step_time_s);

struct GeometryGrid {
  std::vector<int64_t> layers, hidden, experts;  // empty: a default grid around the base model
  double tolerance = 0.05;                       // |params / budget - 1| allowed, total and active
};

struct GeometryCandidate {
  PlanModel model;
  PlanParamCounts counts;
  bool found = false;  // some layout fits
  Prediction best;
};

// A geometry with L layers, hidden D and E experts derived from `base`: attention shape and dense
// layers kept, dense FFN width scaled with D, expert width F and top-K solved so that total and
// active parameters match the base model's. Returns false when no (F, K) is within tolerance.
bool derive_geometry(const PlanModel& base, int64_t layers, int64_t hidden, int64_t experts,
                     double tolerance, PlanModel* out);

// Every grid geometry within tolerance, with its best layout, fastest (tokens/s) first.
std::vector<GeometryCandidate> search_geometry(const PlanModel& base, const Hardware& hw, const Workload& w,
                                               const GeometryGrid& grid, const SearchSpace& space);

}  // namespace um::plan
