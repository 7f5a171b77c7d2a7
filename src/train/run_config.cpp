#include "train/run_config.h"

#include "train/pipeline.h"

#include <algorithm>
#include <cmath>

#include "model/recompute.h"

namespace um {

double StepSchedule::at(int64_t step) const {
  double v = points.front().second;
  for (const auto& [s, val] : points)
    if (s <= step) v = val;
  return v;
}

json StepSchedule::to_json() const {
  if (points.size() == 1 && points[0].first == 1) return points[0].second;
  json a = json::array();
  for (const auto& [s, v] : points) a.push_back({s, v});
  return a;
}

StepSchedule StepSchedule::parse(const json& v, const std::string& where) {
  if (v.is_number()) return constant(v.get<double>());
  UM_CHECK(v.is_array() && !v.empty(), "config", where,
           ": expected a number or a list [[step, value], ...], got ", v.dump());
  StepSchedule s;
  for (const json& p : v) {
    UM_CHECK(p.is_array() && p.size() == 2 && p[0].is_number_integer() && p[1].is_number(),
             "config", where, ": each entry must be [step, value], got ", p.dump());
    s.points.emplace_back(p[0].get<int64_t>(), p[1].get<double>());
  }
  for (size_t i = 1; i < s.points.size(); ++i)
    UM_CHECK(s.points[i].first > s.points[i - 1].first, "config", where,
             ": steps must increase, got ", v.dump());
  return s;
}

const char* lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::constant: return "constant";
    case LrSchedule::cosine: return "cosine";
    case LrSchedule::wsd: return "wsd";
  }
  return "?";
}

double learning_rate(const TrainConfig& t, int64_t s) {
  if (t.warmup_steps > 0 && s <= t.warmup_steps)
    return t.lr * static_cast<double>(s) / static_cast<double>(t.warmup_steps);
  switch (t.lr_schedule) {
    case LrSchedule::constant: return t.lr;
    case LrSchedule::cosine: {
      if (s >= t.decay_steps) return t.min_lr;
      const double x = double(s - t.warmup_steps) / double(t.decay_steps - t.warmup_steps);
      return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + std::cos(M_PI * x));
    }
    case LrSchedule::wsd: {
      if (s <= t.decay_start) return t.lr;
      if (t.decay_steps <= 0 || s >= t.decay_start + t.decay_steps) return t.min_lr;
      const double x = double(s - t.decay_start) / double(t.decay_steps);
      return t.lr + (t.min_lr - t.lr) * x;
    }
  }
  return t.lr;
}

namespace {

TrainConfig parse_train(const json& j) {
  JsonReader r(j, "train");
  TrainConfig t;
  auto positive = [&](const char* key, int64_t v) {
    UM_CHECK(v >= 1, "config", "train.", key, ": must be >= 1, got ", v);
    return v;
  };
  auto nonneg = [&](const char* key, double v) {
    UM_CHECK(v >= 0, "config", "train.", key, ": must be >= 0, got ", v);
    return v;
  };
  t.steps = positive("steps", r.opt<int64_t>("steps", t.steps));
  t.batch_size = positive("batch_size", r.opt<int64_t>("batch_size", t.batch_size));
  t.micro_batch_size = positive("micro_batch_size", r.opt<int64_t>("micro_batch_size", t.batch_size));
  t.seed = static_cast<uint64_t>(r.opt<int64_t>("seed", 0));
  t.lr = nonneg("lr", r.opt<double>("lr", t.lr));
  t.min_lr = nonneg("min_lr", r.opt<double>("min_lr", t.min_lr));
  const std::string sched = r.opt<std::string>("lr_schedule", "cosine");
  if (sched == "constant") t.lr_schedule = LrSchedule::constant;
  else if (sched == "cosine") t.lr_schedule = LrSchedule::cosine;
  else if (sched == "wsd") t.lr_schedule = LrSchedule::wsd;
  else fail("config", "train.lr_schedule: expected constant, cosine or wsd, got \"", sched, "\"");
  t.warmup_steps = r.opt<int64_t>("warmup_steps", 0);
  t.decay_steps = r.opt<int64_t>("decay_steps", 0);
  t.decay_start = r.opt<int64_t>("decay_start", 0);
  UM_CHECK(t.warmup_steps >= 0 && t.decay_steps >= 0 && t.decay_start >= 0, "config",
           "train.warmup_steps, decay_steps and decay_start must be >= 0");
  if (t.lr_schedule == LrSchedule::cosine)
    UM_CHECK(t.decay_steps > t.warmup_steps, "config", "train.decay_steps: cosine needs decay_steps (the step "
             "where min_lr is reached) > warmup_steps=", t.warmup_steps, ", got ", t.decay_steps);
  t.weight_decay = nonneg("weight_decay", r.opt<double>("weight_decay", t.weight_decay));
  t.weight_decay_norms = r.opt<bool>("weight_decay_norms", false);
  t.adam_beta1 = r.opt<double>("adam_beta1", t.adam_beta1);
  t.adam_beta2 = r.opt<double>("adam_beta2", t.adam_beta2);
  UM_CHECK(t.adam_beta1 >= 0 && t.adam_beta1 < 1 && t.adam_beta2 >= 0 && t.adam_beta2 < 1, "config",
           "train.adam_beta1/adam_beta2 must be in [0, 1)");
  t.adam_eps = nonneg("adam_eps", r.opt<double>("adam_eps", t.adam_eps));
  t.grad_clip = nonneg("grad_clip", r.opt<double>("grad_clip", t.grad_clip));
  if (r.has("mtp_lambda")) t.mtp_lambda = StepSchedule::parse(r.raw("mtp_lambda"), "train.mtp_lambda");
  else r.skip("mtp_lambda");
  t.balance_scope = parse_balance_scope(r.opt<std::string>("balance_scope", "micro_batch"));
  t.balance_alpha = nonneg("balance_alpha", r.opt<double>("balance_alpha", t.balance_alpha));
  t.aux_free = r.opt<bool>("aux_free", false);
  if (r.has("aux_free_gamma"))
    t.aux_free_gamma = StepSchedule::parse(r.raw("aux_free_gamma"), "train.aux_free_gamma");
  else r.skip("aux_free_gamma");
  t.z_loss_coef = nonneg("z_loss_coef", r.opt<double>("z_loss_coef", 0.0));
  t.capacity_factor = nonneg("capacity_factor", r.opt<double>("capacity_factor", 0.0));
  t.checkpoint_every = r.opt<int64_t>("checkpoint_every", 0);
  t.keep_checkpoints = positive("keep_checkpoints", r.opt<int64_t>("keep_checkpoints", 3));
  t.eval_every = r.opt<int64_t>("eval_every", 0);
  t.eval_batches = r.opt<int64_t>("eval_batches", 0);
  UM_CHECK(t.checkpoint_every >= 0 && t.eval_every >= 0 && t.eval_batches >= 0, "config",
           "train.checkpoint_every, eval_every and eval_batches must be >= 0");
  t.spike_window = positive("spike_window", r.opt<int64_t>("spike_window", 100));
  t.grad_spike_factor = r.opt<double>("grad_spike_factor", 2.0);
  t.loss_spike_factor = r.opt<double>("loss_spike_factor", 1.05);
  const json& rc = r.raw("recompute");
  if (!rc.is_null()) {
    UM_CHECK(rc.is_array(), "config", "train.recompute: expected a list of module names, got ", rc.dump());
    for (const json& x : rc) {
      UM_CHECK(x.is_string(), "config", "train.recompute: expected strings, got ", x.dump());
      t.recompute.push_back(x.get<std::string>());
    }
    Recompute::parse(t.recompute);  // names checked here, with the key in the message
  }
  t.imbalance_devices = r.opt<int64_t>("imbalance_devices", 0);
  r.finish();
  return t;
}

DataConfig parse_data(const json& j) {
  JsonReader r(j, "data");
  DataConfig d;
  d.path = r.opt<std::string>("path", "");
  d.seq_len = r.opt<int64_t>("seq_len", d.seq_len);
  UM_CHECK(d.seq_len >= 1, "config", "data.seq_len: must be >= 1, got ", d.seq_len);
  r.finish();
  return d;
}

ParallelConfig parse_parallel(const json& j) {
  JsonReader r(j, "parallel");
  ParallelConfig p;
  p.ep = r.opt<int64_t>("ep", 1);
  UM_CHECK(p.ep >= 1, "config", "parallel.ep: must be >= 1, got ", p.ep);
  p.zero = r.opt<int64_t>("zero", 0);
  UM_CHECK(p.zero == 0 || p.zero == 1, "config", "parallel.zero: expected 0 or 1, got ", p.zero);
  p.ranks_per_node = r.opt<int64_t>("ranks_per_node", 0);
  p.dp_attention_balance = r.opt<bool>("dp_attention_balance", false);
  p.pp = r.opt<int64_t>("pp", 1);
  p.vpp = r.opt<int64_t>("vpp", 1);
  UM_CHECK(p.pp >= 1 && p.vpp >= 1, "config", "parallel.pp and parallel.vpp must be >= 1, got ", p.pp, " and ", p.vpp);
  p.pp_layers = r.opt<std::vector<int64_t>>("pp_layers", {});
  p.mtp_stage = r.opt<std::string>("mtp_stage", "last");
  UM_CHECK(p.mtp_stage == "last" || p.mtp_stage == "own", "config", "parallel.mtp_stage: expected last or own, got \"",
           p.mtp_stage, "\"");
  r.finish();
  return p;
}

}  // namespace

RunConfig parse_run_config(const json& j, int world) {
  UM_CHECK(j.is_object(), "config", "a run config must be a JSON object with sections model, train, data, parallel");
  for (auto it = j.begin(); it != j.end(); ++it)
    UM_CHECK(it.key() == "model" || it.key() == "train" || it.key() == "data" || it.key() == "parallel",
             "config", "unknown section ", it.key(), " (expected model, train, data, parallel)");
  UM_CHECK(j.contains("model"), "config", "missing section model");
  RunConfig rc;
  rc.model_json = j["model"];
  rc.model = parse_model_config(j["model"], "model");
  rc.train = parse_train(j.contains("train") ? j["train"] : json::object());
  rc.data = parse_data(j.contains("data") ? j["data"] : json::object());
  rc.parallel = parse_parallel(j.contains("parallel") ? j["parallel"] : json::object());
  const TrainConfig& t = rc.train;
  const ParallelConfig& pc = rc.parallel;
  const bool layout = world > 0;
  UM_CHECK(!layout || world % pc.pp == 0, "config", "parallel.pp=", pc.pp, " must divide the number of ranks, ", world);
  const int64_t data_ranks = layout ? pc.data_ranks(world) : 1;
  UM_CHECK(t.batch_size % (t.micro_batch_size * data_ranks) == 0, "config", "train.batch_size=", t.batch_size,
           " must be a multiple of micro_batch_size=", t.micro_batch_size, " x data-parallel ranks=", data_ranks,
           pc.pp > 1 ? " (ranks / parallel.pp)" : "");
  if (pc.pp > 1 || pc.vpp > 1) {
    UM_CHECK(pc.pp > 1, "config", "parallel.vpp=", pc.vpp, " needs parallel.pp > 1 (virtual stages interleave across "
             "pipeline ranks)");
    const int64_t micro = t.batch_size / t.micro_batch_size / data_ranks;
    UM_CHECK(!layout || pc.vpp == 1 || micro % pc.pp == 0, "config", "parallel.vpp=", pc.vpp,
             ": the interleaved schedule needs the micro-batches per step (", micro,
             ") to be a multiple of parallel.pp=", pc.pp);
    for (int64_t n : pc.pp_layers) UM_CHECK(n >= 0, "config", "parallel.pp_layers: negative layer count ", n);
    PipelineLayout::make(rc.model, pc);  // the cut into virtual stages, checked
  } else {
    UM_CHECK(pc.pp_layers.empty(), "config", "parallel.pp_layers is given without pipeline parallelism (parallel.pp = 1)");
  }
  UM_CHECK(rc.data.seq_len <= rc.model.max_position_embeddings, "config", "data.seq_len=", rc.data.seq_len,
           " exceeds model.max_position_embeddings=", rc.model.max_position_embeddings);
  UM_CHECK(rc.data.seq_len > rc.model.num_nextn_predict_layers, "config", "data.seq_len=", rc.data.seq_len,
           " leaves no positions for MTP depth ", rc.model.num_nextn_predict_layers);
  if (rc.model.n_routed_experts > 0)
    UM_CHECK(rc.model.n_routed_experts % rc.parallel.ep == 0, "config", "parallel.ep=", rc.parallel.ep,
             " does not divide model.n_routed_experts=", rc.model.n_routed_experts);
  return rc;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides,
                          int world) {
  json j = read_json_file(path);
  for (const std::string& o : overrides) apply_override(j, o);
  return parse_run_config(j, world);
}

json RunConfig::to_json() const {
  json j;
  j["model"] = model_config_to_json(model);
  const TrainConfig& t = train;
  j["train"] = {{"steps", t.steps}, {"batch_size", t.batch_size}, {"micro_batch_size", t.micro_batch_size},
                {"seed", t.seed}, {"lr", t.lr}, {"min_lr", t.min_lr},
                {"lr_schedule", lr_schedule_name(t.lr_schedule)}, {"warmup_steps", t.warmup_steps},
                {"decay_steps", t.decay_steps}, {"decay_start", t.decay_start},
                {"weight_decay", t.weight_decay}, {"weight_decay_norms", t.weight_decay_norms},
                {"adam_beta1", t.adam_beta1}, {"adam_beta2", t.adam_beta2}, {"adam_eps", t.adam_eps},
                {"grad_clip", t.grad_clip}, {"mtp_lambda", t.mtp_lambda.to_json()},
                {"balance_scope", balance_scope_name(t.balance_scope)}, {"balance_alpha", t.balance_alpha},
                {"aux_free", t.aux_free}, {"aux_free_gamma", t.aux_free_gamma.to_json()},
                {"z_loss_coef", t.z_loss_coef}, {"capacity_factor", t.capacity_factor},
                {"checkpoint_every", t.checkpoint_every}, {"keep_checkpoints", t.keep_checkpoints},
                {"eval_every", t.eval_every}, {"eval_batches", t.eval_batches},
                {"spike_window", t.spike_window}, {"grad_spike_factor", t.grad_spike_factor},
                {"loss_spike_factor", t.loss_spike_factor}, {"recompute", t.recompute},
                {"imbalance_devices", t.imbalance_devices}};
  j["data"] = {{"path", data.path}, {"seq_len", data.seq_len}};
  j["parallel"] = {{"ep", parallel.ep}, {"zero", parallel.zero}, {"ranks_per_node", parallel.ranks_per_node},
                   {"dp_attention_balance", parallel.dp_attention_balance}, {"pp", parallel.pp},
                   {"vpp", parallel.vpp}, {"pp_layers", parallel.pp_layers}, {"mtp_stage", parallel.mtp_stage}};
  return j;
}

}  // namespace um
