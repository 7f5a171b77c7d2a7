#include "plan/layout.h"

#include <sstream>
#include <vector>

namespace um::plan {

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::none: return "none";
    case Recompute::selective: return "selective";
    case Recompute::full: return "full";
  }
  return "?";
}

const char* dispatch_name(Dispatch d) { return d == Dispatch::flat ? "flat" : "hier"; }

const char* ep_overlap_name(EpOverlap o) {
  switch (o) {
    case EpOverlap::none: return "none";
    case EpOverlap::shared: return "shared";
    case EpOverlap::full: return "full";
  }
  return "?";
}

namespace {

int parse_int(const std::string& key, const std::string& value) {
  size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  UM_CHECK(used == value.size() && !value.empty(), "plan", "layout ", key, "=", value,
           ": expected an integer");
  return v;
}

void set_key(Layout& l, const std::string& key, const std::string& value) {
  if (key == "tp") l.tp = parse_int(key, value);
  else if (key == "pp") l.pp = parse_int(key, value);
  else if (key == "vpp") l.vpp = parse_int(key, value);
  else if (key == "ep") l.ep = parse_int(key, value);
  else if (key == "etp") l.etp = parse_int(key, value);
  else if (key == "dp") l.dp = parse_int(key, value);
  else if (key == "mbs") l.mbs = parse_int(key, value);
  else if (key == "zero") l.zero = parse_int(key, value);
  else if (key == "tp_extend_ep") l.tp_extend_ep = parse_int(key, value) != 0;
  else if (key == "recompute") {
    if (value == "none") l.recompute = Recompute::none;
    else if (value == "selective") l.recompute = Recompute::selective;
    else if (value == "full") l.recompute = Recompute::full;
    else fail("plan", "layout recompute=", value, ": expected none, selective or full");
  } else if (key == "dispatch") {
    if (value == "flat") l.dispatch = Dispatch::flat;
    else if (value == "hier" || value == "hierarchical") l.dispatch = Dispatch::hierarchical;
    else fail("plan", "layout dispatch=", value, ": expected flat or hier");
  } else {
    fail("plan", "layout key '", key, "' is unknown (expected tp, pp, vpp, ep, etp, dp, mbs, ",
         "tp_extend_ep, recompute, zero, dispatch)");
  }
}

}  // namespace

Layout parse_layout(const std::string& spec) {
  Layout l;
  std::stringstream ss(spec);
  std::string item;
  std::vector<std::string> seen;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    auto eq = item.find('=');
    UM_CHECK(eq != std::string::npos && eq > 0, "plan", "layout '", spec, "': expected key=value, got '", item, "'");
    const std::string key = item.substr(0, eq);
    for (const auto& k : seen) UM_CHECK(k != key, "plan", "layout '", spec, "': ", key, " given twice");
    seen.push_back(key);
    set_key(l, key, item.substr(eq + 1));
  }
  UM_CHECK(!seen.empty(), "plan", "layout '", spec, "' is empty");
  return l;
}

std::string layout_string(const Layout& l) {
  std::ostringstream os;
  os << "tp=" << l.tp << ",pp=" << l.pp << ",vpp=" << l.vpp << ",ep=" << l.ep;
  if (l.tp_extend_ep) os << ",tp_extend_ep=1";
  else if (l.etp > 0 && l.etp != l.tp) os << ",etp=" << l.etp;
  os << ",dp=" << l.dp << ",mbs=" << l.mbs << ",recompute=" << recompute_name(l.recompute)
     << ",zero=" << l.zero;
  if (l.dispatch) os << ",dispatch=" << dispatch_name(*l.dispatch);
  return os.str();
}

int64_t micro_batches(const Workload& w, const Layout& l) {
  return w.global_batch / (static_cast<int64_t>(l.dp) * l.mbs);
}

void check_workload(const Workload& w) {
  UM_CHECK(w.devices >= 1, "plan", "--devices must be >= 1, got ", w.devices);
  UM_CHECK(w.seq_len >= 1, "plan", "--seq must be >= 1, got ", w.seq_len);
  UM_CHECK(w.global_batch >= 1, "plan", "--global-batch must be >= 1, got ", w.global_batch);
  UM_CHECK(w.moe_imbalance >= 1.0, "plan", "--imbalance is max/mean load and must be >= 1, got ",
           w.moe_imbalance);
}

namespace {

void check_sizes(const Layout& l) {
  const std::pair<const char*, int> sizes[] = {{"tp", l.tp}, {"pp", l.pp}, {"vpp", l.vpp}, {"ep", l.ep}, {"mbs", l.mbs}};
  for (auto [name, v] : sizes) UM_CHECK(v >= 1, "plan", "parallel layout ", name, "=", v, " must be >= 1");
  UM_CHECK(l.etp >= 0, "plan", "parallel layout etp=", l.etp, " must be >= 1");
  UM_CHECK(l.zero == 0 || l.zero == 1, "plan", "parallel layout zero=", l.zero, " must be 0 or 1");
  UM_CHECK(l.vpp == 1 || l.pp > 1, "plan", "parallel layout vpp=", l.vpp, " needs pp > 1");
  UM_CHECK(!(l.tp_extend_ep && l.etp > 0 && l.etp != 1), "plan", "parallel layout tp_extend_ep keeps experts whole; etp=",
           l.etp, " contradicts it");
}

void check_devices(const Workload& w, Layout& l) {
  const int64_t model_parallel = static_cast<int64_t>(l.tp) * l.pp;
  UM_CHECK(w.devices % model_parallel == 0, "plan", "parallel layout tp=", l.tp, " x pp=", l.pp, " = ",
           model_parallel, " does not divide --devices ", w.devices);
  const int64_t dp = w.devices / model_parallel;
  UM_CHECK(l.dp == 0 || l.dp == dp, "plan", "parallel layout dp=", l.dp, " contradicts --devices ", w.devices,
           " / (tp=", l.tp, " x pp=", l.pp, ") = ", dp);
  l.dp = static_cast<int>(dp);
}

void check_attention(const PlanModel& m, const Layout& l) {
  UM_CHECK(m.n_heads % l.tp == 0, "plan", "parallel layout tp=", l.tp, " does not divide num_attention_heads=",
           m.n_heads);
  if (m.attention == AttentionKind::gqa)
    UM_CHECK(m.n_kv_heads % l.tp == 0, "plan", "parallel layout tp=", l.tp,
             " does not divide num_key_value_heads=", m.n_kv_heads);
}

void check_experts(const PlanModel& m, const Layout& l) {
  if (!m.has_experts()) {
    UM_CHECK(l.ep == 1 && !l.tp_extend_ep && (l.etp == 0 || l.etp == l.tp), "plan", "parallel layout ep=", l.ep,
             ": model ", m.name, " has no routed experts");
    return;
  }
  const int64_t E = m.n_experts;
  UM_CHECK(E % l.ep == 0, "plan", "parallel layout ep=", l.ep, " does not divide n_routed_experts=", E);
  if (l.tp_extend_ep)
    UM_CHECK(E % (static_cast<int64_t>(l.tp) * l.ep) == 0, "plan", "parallel layout tp_extend_ep: tp=", l.tp,
             " x ep=", l.ep, " = ", l.tp * l.ep, " does not divide n_routed_experts=", E);
  UM_CHECK(m.expert_width % l.expert_tp() == 0, "plan", "parallel layout etp=", l.expert_tp(),
           " does not divide moe_intermediate_size=", m.expert_width);
  const int64_t plane = static_cast<int64_t>(l.tp) * l.dp;
  UM_CHECK(plane % l.expert_group() == 0, "plan", "parallel layout expert group ",
           l.tp_extend_ep ? "tp x ep" : "etp x ep", " = ", l.expert_group(), " does not divide tp x dp = ", plane,
           " (the devices of one pipeline stage)");
}

void check_pipeline(const PlanModel& m, const Workload& w, const Layout& l) {
  const int64_t chunks = static_cast<int64_t>(l.pp) * l.vpp;
  UM_CHECK(chunks <= m.n_units(), "plan", "parallel layout pp=", l.pp, " x vpp=", l.vpp, " = ", chunks,
           " pipeline chunks exceed the ", m.n_units(), " layers (", m.n_layers, " + ", m.mtp_depth, " MTP)");
  const int64_t per_step = static_cast<int64_t>(l.dp) * l.mbs;
  UM_CHECK(w.global_batch % per_step == 0, "plan", "--global-batch ", w.global_batch,
           " is not a multiple of dp=", l.dp, " x mbs=", l.mbs, " = ", per_step);
  const int64_t m_mb = w.global_batch / per_step;
  // Megatron-Core's interleaved 1F1B schedule runs micro-batches in groups of pp.
  if (l.vpp > 1)
    UM_CHECK(m_mb % l.pp == 0, "plan", "parallel layout vpp=", l.vpp, ": the interleaved schedule needs the ",
             m_mb, " micro-batches to be a multiple of pp=", l.pp);
}

}  // namespace

void check_layout(const PlanModel& m, const Workload& w, Layout& l) {
  check_workload(w);
  check_sizes(l);
  check_devices(w, l);
  check_attention(m, l);
  check_experts(m, l);
  check_pipeline(m, w, l);
}

}  // namespace um::plan
