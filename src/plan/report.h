// Text and JSON rendering of planner results for `ultramoe plan`: the model/hardware/workload
// header with the design.md 7 FLOPs formula and its numbers, the ranked layout table, the step-time
// and memory breakdown of one layout, and the geometry table. Formatting only; no decisions.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "plan/search.h"

namespace um::plan {

void print_header(std::FILE* out, const PlanModel& m, const Hardware& hw, const Workload& w);
void print_layout_table(std::FILE* out, const std::vector<Prediction>& ranked, size_t top);
void print_breakdown(std::FILE* out, const Prediction& p, const Workload& w);
void print_geometry_table(std::FILE* out, const std::vector<GeometryCandidate>& c, size_t top);

json model_json(const PlanModel& m);
json hardware_json(const Hardware& hw);
json workload_json(const Workload& w);

std::string short_layout(const Prediction& p);  // "tp8 pp16 vpp2 ep4 tp_extend_ep mbs1 sel hier"

}  // namespace um::plan
