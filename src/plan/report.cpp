#include "plan/report.h"

#include <algorithm>
#include <cmath>

namespace um::plan {

namespace {

std::string si(double v, const char* unit = "") {
  char buf[64];
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (std::fabs(v) >= 1000.0 && i < 6) v /= 1000.0, ++i;
  std::snprintf(buf, sizeof buf, "%.*f%s%s", v < 10 ? 2 : (v < 100 ? 1 : 0), v, prefixes[i], unit);
  return buf;
}

std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", bytes / 1e9);
  return buf;
}

const char* attention_label(const PlanModel& m) { return m.attention == AttentionKind::mla ? "MLA" : "GQA"; }

}  // namespace

std::string short_layout(const Prediction& p) {
  const Layout& l = p.layout;
  std::string s = "tp" + std::to_string(l.tp) + " pp" + std::to_string(l.pp);
  if (l.vpp > 1) s += " vpp" + std::to_string(l.vpp);
  s += " ep" + std::to_string(l.ep);
  if (l.tp_extend_ep) s += " tp_extend_ep";
  else if (l.expert_tp() != l.tp) s += " etp" + std::to_string(l.expert_tp());
  s += " dp" + std::to_string(l.dp) + " mbs" + std::to_string(l.mbs);
  if (l.recompute != Recompute::none) s += l.recompute == Recompute::full ? " full" : " sel";
  if (!l.zero) s += " zero0";
  if (p.dispatch == Dispatch::hierarchical) s += " hier";
  return s;
}

void print_header(std::FILE* out, const PlanModel& m, const Hardware& hw, const Workload& w) {
  const PlanParamCounts n = plan_param_counts(m);
  std::fprintf(out, "model     %s: %lld layers (%lld dense) + %lld MTP, D=%lld, %s %lld heads", m.name.c_str(),
               (long long)m.n_layers, (long long)m.n_dense_layers, (long long)m.mtp_depth, (long long)m.hidden,
               attention_label(m), (long long)m.n_heads);
  if (m.has_experts())
    std::fprintf(out, ", %lld experts top-%lld F=%lld (+%lld shared)", (long long)m.n_experts,
                 (long long)m.top_k, (long long)m.expert_width,
                 (long long)(m.expert_width ? m.shared_width / m.expert_width : 0));
  std::fprintf(out, "\n          %s total / %s active parameters (MTP %s)\n", si(double(n.total)).c_str(),
               si(double(n.active)).c_str(), si(double(n.mtp)).c_str());
  std::fprintf(out, "hardware  %s: %s %sFLOP/s, %s GB at %sB/s, %d per node, intra %sB/s, inter %sB/s\n",
               hw.name.c_str(), precision_name(hw.precision), si(hw.peak_flops).c_str(), gb(hw.memory_bytes).c_str(),
               si(hw.memory_bandwidth).c_str(), hw.devices_per_node, si(hw.intra_node.bandwidth).c_str(),
               si(hw.inter_node.bandwidth).c_str());
  std::fprintf(out, "workload  %lld devices, seq %lld, global batch %lld (%s tokens/step), EP overlap %s, imbalance %.2f\n",
               (long long)w.devices, (long long)w.seq_len, (long long)w.global_batch,
               si(double(w.global_batch) * w.seq_len).c_str(), ep_overlap_name(w.ep_overlap), w.moe_imbalance);
  const double n_mm = double(matmul_params_per_token(m)), mean_keys = (w.seq_len + 1.0) / 2.0;
  std::fprintf(out, "FLOPs/token F = 6 N_mm + 6 H (d_qk+d_v) n_bar L_att = 6*%.4g + 6*%lld*%lld*%.1f*%lld = %.4g (design.md 7)\n\n",
               n_mm, (long long)m.n_heads, (long long)(m.d_qk() + m.d_v()), mean_keys,
               (long long)(m.n_layers + m.mtp_depth), model_flops_per_token(m, w.seq_len));
}

void print_layout_table(std::FILE* out, const std::vector<Prediction>& ranked, size_t top) {
  std::fprintf(out, "%4s  %-46s %8s %9s %6s | %7s %7s %6s %6s %6s %7s %6s %6s | %7s\n", "rank", "layout", "step_s",
               "tokens/s", "MFU", "compute", "recomp", "tp", "ep", "pp", "bubble", "dp", "optim", "mem_GB");
  for (size_t i = 0; i < std::min(top, ranked.size()); ++i) {
    const Prediction& p = ranked[i];
    const TimeBreakdown& t = p.time;
    std::fprintf(out, "%4zu  %-46s %8.3f %9s %5.1f%% | %7.3f %7.3f %6.3f %6.3f %6.3f %7.3f %6.3f %6.3f | %7s\n", i + 1,
                 short_layout(p).c_str(), p.step_time_s, si(p.tokens_per_s).c_str(), 100 * p.mfu, t.compute,
                 t.recompute, t.tp_exposed, t.ep_exposed, t.pp_exposed, t.bubble, t.dp_exposed, t.optimizer,
                 gb(p.memory.total()).c_str());
  }
}

void print_breakdown(std::FILE* out, const Prediction& p, const Workload& w) {
  const TimeBreakdown& t = p.time;
  const MemoryBreakdown& m = p.memory;
  const Layout& l = p.layout;
  std::fprintf(out, "layout      %s (all-to-all %s)\n", layout_string(l).c_str(), dispatch_name(p.dispatch));
  std::fprintf(out, "step time   %.4g s = compute %.4g + recompute %.4g + TP %.4g + EP %.4g (of %.4g) + PP %.4g"
               " + bubble %.4g + DP %.4g (of %.4g) + optimizer %.4g\n",
               p.step_time_s, t.compute, t.recompute, t.tp_exposed, t.ep_exposed, t.ep_total, t.pp_exposed,
               t.bubble, t.dp_exposed, t.dp_total, t.optimizer);
  std::fprintf(out, "throughput  %s tokens/s (%s per device), MFU %.1f%%, %s model FLOP/s per device\n",
               si(p.tokens_per_s).c_str(), si(p.tokens_per_s / w.devices).c_str(), 100 * p.mfu,
               si(p.model_flops_per_token * p.tokens_per_s / w.devices).c_str());
  std::fprintf(out, "pipeline    %lld micro-batches per step, bubble (p-1)/(m v + p - 1) = %.1f%%, slowest stage %d\n",
               (long long)p.micro_batches, 100 * p.bubble_fraction, p.bottleneck_stage);
  std::fprintf(out, "memory      %s GB of %s GB (stage %d): weights %s, grads %s, optimizer %s, activations %s,"
               " buffers %s, reserved %s%s\n",
               gb(m.total()).c_str(), gb(p.memory_capacity).c_str(), p.memory_stage, gb(m.weights).c_str(),
               gb(m.grads).c_str(), gb(m.optimizer).c_str(), gb(m.activations).c_str(), gb(m.buffers).c_str(),
               gb(m.reserved).c_str(), p.fits ? "" : "  DOES NOT FIT");
}

void print_geometry_table(std::FILE* out, const std::vector<GeometryCandidate>& c, size_t top) {
  std::fprintf(out, "%4s  %5s %6s %5s %6s %3s %9s %9s | %-46s %9s %6s %7s\n", "rank", "L", "D", "E", "F", "K", "total",
               "active", "best layout", "tokens/s", "MFU", "mem_GB");
  for (size_t i = 0; i < std::min(top, c.size()); ++i) {
    const GeometryCandidate& g = c[i];
    std::fprintf(out, "%4zu  %5lld %6lld %5lld %6lld %3lld %9s %9s | %-46s %9s %5.1f%% %7s\n", i + 1,
                 (long long)g.model.n_layers, (long long)g.model.hidden, (long long)g.model.n_experts,
                 (long long)g.model.expert_width, (long long)g.model.top_k, si(double(g.counts.total)).c_str(),
                 si(double(g.counts.active)).c_str(), g.found ? short_layout(g.best).c_str() : "(nothing fits)",
                 g.found ? si(g.best.tokens_per_s).c_str() : "-", g.found ? 100 * g.best.mfu : 0.0,
                 gb(g.best.memory.total()).c_str());
  }
}

json model_json(const PlanModel& m) {
  const PlanParamCounts n = plan_param_counts(m);
  return {{"name", m.name}, {"attention", attention_label(m)}, {"num_hidden_layers", m.n_layers},
          {"first_k_dense_replace", m.n_dense_layers}, {"hidden_size", m.hidden}, {"num_attention_heads", m.n_heads},
          {"n_routed_experts", m.n_experts}, {"num_experts_per_tok", m.top_k},
          {"moe_intermediate_size", m.expert_width}, {"num_nextn_predict_layers", m.mtp_depth},
          {"total_params", n.total}, {"active_params", n.active}, {"mtp_params", n.mtp}};
}

json hardware_json(const Hardware& hw) {
  return {{"name", hw.name}, {"precision", precision_name(hw.precision)}, {"peak_flops", hw.peak_flops},
          {"memory_bytes", hw.memory_bytes}, {"devices_per_node", hw.devices_per_node}};
}

json workload_json(const Workload& w) {
  return {{"devices", w.devices}, {"seq_len", w.seq_len}, {"global_batch", w.global_batch},
          {"ep_overlap", ep_overlap_name(w.ep_overlap)}, {"moe_imbalance", w.moe_imbalance}};
}

}  // namespace um::plan
