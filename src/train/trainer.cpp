#include "train/trainer.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/failpoint.h"
#include "model/flops.h"
#include "model/model.h"
#include "parallel/attention_balance.h"
#include "parallel/groups.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/engine.h"
#include "plan/hardware.h"
#include "train/evaluate.h"
#include "train/metrics.h"
#include "train/run_config.h"
#include "train/spikes.h"
#include "train/step.h"

namespace um {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

// Keys that may differ between a checkpoint and a resumed run (design.md 8).
bool may_change_on_resume(const std::string& section, const std::string& key, const json& saved) {
  if (section == "train")
    return key == "steps" || key == "checkpoint_every" || key == "keep_checkpoints" ||
           key == "eval_every" || key == "eval_batches";
  if (section == "data") return key == "path";
  if (section == "parallel") {  // checkpoints are layout-independent, unless the pools depend on it
    const std::string scope = saved["train"].value("balance_scope", "");
    return !(key == "ep" && scope == "ep_group");
  }
  return false;
}

void check_resume_compatible(const json& saved, const json& now, int saved_world, int world) {
  for (const char* section : {"model", "train", "data", "parallel"}) {
    const json& a = saved[section];
    const json& b = now[section];
    for (auto it = b.begin(); it != b.end(); ++it) {
      if (may_change_on_resume(section, it.key(), saved)) continue;
      const json old = a.contains(it.key()) ? a[it.key()] : json();
      UM_CHECK(old == it.value(), "resume", section, ".", it.key(), " is ", it.value().dump(),
               " but the checkpoint was trained with ", old.dump(),
               " (only train.steps and the every-N keys may change on --resume)");
    }
  }
  const std::string scope = saved["train"].value("balance_scope", "");
  UM_CHECK(scope != "global" || saved_world == world, "resume", "balance_scope global pools all ",
           saved_world, " ranks of the checkpoint's run; resuming on ", world, " ranks would change the loss");
}

std::string format_duration(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  return buf;
}

// ", pp 2 x vpp 2 (layers 3/3/3/3 + tail)" or "".
template <class T>
std::string pipeline_summary(const RunConfig& rc, const Engine<T>& e) {
  if (rc.parallel.pp == 1) return "";
  std::string s = ", pp " + std::to_string(rc.parallel.pp);
  if (rc.parallel.vpp > 1) s += " x vpp " + std::to_string(rc.parallel.vpp);
  s += " (layers";
  const std::vector<int> n = e.pipeline.layers_per_virtual_stage(rc.model);
  for (size_t v = 0; v < n.size(); ++v) s += (v ? "/" : " ") + std::to_string(n[v]);
  return s + " + tail, " + std::to_string(e.model->activation_bytes() >> 20) + " MiB activations on this rank)";
}

}  // namespace

template <class T>
int train(const TrainOptions& opt, const Placement& placement) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  std::unique_ptr<Comm> local;
  Comm* world = Runtime::current() ? &Runtime::current()->world() : nullptr;
  if (!world) world = (local = make_local_comm()).get();
  const int W = world->size(), rank = world->rank();
  const bool root = rank == 0;
  auto say = [&](const char* fmt, auto... args) {
    if (!root) return;
    std::printf(fmt, args...);
    std::fflush(stdout);
  };

  RunConfig rc = load_run_config(opt.config_path, opt.overrides, W);
  if (!opt.data_dir.empty()) rc.data.path = opt.data_dir;
  UM_CHECK(!rc.data.path.empty(), "train", "no data: pass --data DIR or set data.path");
  UM_CHECK(rc.model.rope_scaling.is_null(), "train", "model.rope_scaling (YaRN) is accepted by inspect and "
           "plan but training with it is not implemented yet; set it to null");
  const std::string out = opt.out_dir.empty() ? "runs/" + fs::path(opt.config_path).stem().string() : opt.out_dir;
  const std::string ckpt_root = out + "/checkpoints";
  const TrainConfig& tc = rc.train;
  const int ep = int(rc.parallel.ep);
  check_layout(rc, W);

  // --resume / fresh start rules (design.md 8)
  const std::string latest = latest_checkpoint(ckpt_root);
  if (opt.resume) {
    UM_CHECK(!latest.empty(), "train", "--resume: no complete checkpoint in ", ckpt_root);
  } else {
    UM_CHECK(latest.empty(), "train", out, " already holds checkpoints (", fs::path(latest).filename().string(),
             "); pass --resume to continue, or choose another --out");
  }
  if (root) {
    std::error_code ec;
    fs::create_directories(out, ec);
    UM_CHECK(!ec && fs::is_directory(out), "train", "cannot create output directory ", out,
             ec ? ": " + ec.message() : "");
  }

  DataDir data(rc.data.path);
  data.check_model_vocab(rc.model.vocab_size);
  // data-parallel ranks: the ranks of one pipeline stage (all of them without pipeline parallelism)
  const int Wd = int(rc.parallel.data_ranks(W)), dp = rank % Wd;
  const int64_t T_ = rc.data.seq_len, B = tc.batch_size, m = tc.micro_batch_size, n_local = B / Wd;
  TrainWindows train_windows(data.train(), T_, tc.seed);
  EvalWindows val_windows(data.val(), T_);

  // the layout: EP groups, expert-data-parallel groups, balance pools (design.md 4, 1.6)
  Engine<T> engine(rc, *world, placement.device);
  const bool zero = rc.parallel.zero == 1;
  const StepGroups& groups = engine.groups;
  const ParamTable& table = engine.table;
  const Optimizer& optim = engine.optim;
  ParamStore<T>& ps = engine.ps;
  Model<T>& model = *engine.model;
  const Ctx& ctx = engine.ctx;
  // checkpoints are written from (and read into) host f32 buffers; a device store goes through
  // this mirror, made once
  std::unique_ptr<ParamStore<float>> host;
  if (placement.device != Device::cpu) host = std::make_unique<ParamStore<float>>(table, optim.moment_elements());
  SpikeDetector spikes(tc.spike_window, tc.grad_spike_factor, tc.loss_spike_factor);
  TrainerState state;
  int64_t skipped_steps = 0;
  double tokens_seen = 0;
  std::vector<int32_t> global_batch(B * (T_ + 1)), local_batch(n_local * (T_ + 1));

  if (opt.resume) {
    const RunConfig saved = read_checkpoint_config(latest);
    // data.path may change on resume, the tokenizer may not: the ids would mean other text
    // (design.md 3, 6: the checkpoint keeps tokenizer.model, shards carry its SHA-256)
    if (fs::exists(latest + "/tokenizer.model")) {
      const Tokenizer saved_tok = Tokenizer::load(latest + "/tokenizer.model");
      UM_CHECK(saved_tok.sha256() == data.tokenizer().sha256(), "resume", "the data in ", data.path(),
               " was encoded with another tokenizer (SHA-256 ", to_hex(data.tokenizer().sha256()).substr(0, 16),
               "...) than the checkpoint's ", latest, "/tokenizer.model (", to_hex(saved_tok.sha256()).substr(0, 16),
               "...)");
    } else {
      say("note: %s has no tokenizer.model; the data's tokenizer cannot be checked against it\n", latest.c_str());
    }
    state = read_trainer_state(latest);
    check_resume_compatible(saved.to_json(), rc.to_json(),
                            int(state.counters.value("data_ranks", state.counters.value("world", int64_t{Wd}))), Wd);
    if (host) {
      load_checkpoint(latest, table, *host, &optim);
      upload_state(ps, *host, ctx);
    } else {
      if constexpr (std::is_same_v<T, float>) load_checkpoint(latest, table, ps, &optim);
    }
    spikes.from_json(state.spikes);
    skipped_steps = state.counters.value("skipped_steps", int64_t{0});
    tokens_seen = state.counters.value("tokens_seen", 0.0);
    say("resumed from %s (step %lld)\n", latest.c_str(), (long long)state.step);
  } else {
    init_params(ps, table, rc.model, tc.seed, ctx);
    if (rc.model.sandwich_norm && (rc.model.dssn_c_attn_auto || rc.model.dssn_c_ffn_auto)) {
      UM_CHECK(rc.parallel.pp == 1, "train", "DSSN auto calibration (model.dssn_c_attn/dssn_c_ffn \"auto\") runs "
               "the whole model on one rank; with parallel.pp > 1 give the constants as numbers");
      // every rank calibrates on the same first micro-batch of step 1, so the gains agree
      train_windows.fill(1, B, 0, m, local_batch.data());
      auto [ca, cf] = calibrate_dssn(model, ps, table, local_batch.data(), m, ctx);
      say("DSSN auto calibration on the first micro-batch: c_attn %.4g, c_ffn %.4g\n", ca, cf);
    }
  }
  std::unique_ptr<MetricsLog> metrics;
  if (root) metrics = std::make_unique<MetricsLog>(out + "/metrics.jsonl", opt.resume ? state.step : 0);

  const FlopsPerToken fl = flops_per_token(rc.model, T_);
  const Peak peak = run_peak(placement, opt.hardware, ctx.n_threads, W);
  const double peak_total = peak.flops;
  const ParamCounts counts = count_params(rc.model);
  if (root) {
    std::printf("config:\n%s\n", rc.to_json().dump(2).c_str());
    std::printf("model: %.2fM parameters (%.2fM active per token), %.1f MiB of activations per rank\n",
                counts.total / 1e6, counts.active / 1e6, model.activation_bytes() / 1048576.0);
    std::printf("layout: %d rank%s x %d threads, ep %d%s%s%s, micro-batch %lld x %lld micro-steps\n", W,
                W > 1 ? "s" : "", ctx.n_threads, ep, zero ? ", ZeRO-1" : "",
                engine.layout.hierarchical() ? ", hierarchical dispatch" : "", pipeline_summary(rc, engine).c_str(),
                (long long)m, (long long)(n_local / m));
    std::printf("data: %s — %lld train tokens (%lld windows of %lld), %lld validation tokens\n",
                rc.data.path.c_str(), (long long)data.train().size(), (long long)train_windows.n_windows(),
                (long long)T_, (long long)data.val().size());
    std::printf("device: %s (%s)\n", engine.device->name().c_str(), placement.describe().c_str());
    std::printf("MFU: %s; %s\n", fl.formula.c_str(), peak.describe.c_str());
    std::fflush(stdout);
  }

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const int64_t first_step = state.step + 1;
  const auto t_loop = clock::now();
  const int64_t n_devices = tc.imbalance_devices > 0 ? tc.imbalance_devices : default_imbalance_devices(rc);
  int64_t last_ckpt = opt.resume ? state.step : -1;
  json last_moe = state.counters.value("expert_load", json::array());  // the last step's MoE summary

  auto save = [&](int64_t step) {
    state.step = step;
    state.spikes = spikes.to_json();
    state.data = {{"next_step", step + 1}, {"epoch", train_windows.epoch_of(step + 1, B)}};
    state.counters = {{"skipped_steps", skipped_steps}, {"tokens_seen", tokens_seen},
                      {"expert_load", last_moe}, {"world", W}, {"data_ranks", Wd}};
    std::string dir;
    if (host) {
      download_state(ps, *host, ctx);
      dir = save_checkpoint(ckpt_root, rc, table, *host, optim, state, data.path() + "/tokenizer.model", groups);
    } else if constexpr (std::is_same_v<T, float>) {
      dir = save_checkpoint(ckpt_root, rc, table, ps, optim, state, data.path() + "/tokenizer.model", groups);
    }
    if (root) prune_checkpoints(ckpt_root, tc.keep_checkpoints);
    last_ckpt = step;
    say("checkpoint: %s\n", dir.c_str());
  };
  auto run_eval = [&](int64_t step) {
    if (val_windows.n_windows() == 0) return;
    const EvalResult e = evaluate(model, ps, val_windows, tc.eval_batches * m, ctx, &engine.layout.data(), nullptr,
                                  groups.pipe);
    if (root) metrics->write({{"kind", "eval"}, {"step", step}, {"val_loss", e.loss}, {"val_ppl", e.ppl}, {"val_tokens", e.tokens}});
    say("eval step %lld: val_loss %.4f  val_ppl %.2f  (%lld tokens)\n", (long long)step, e.loss, e.ppl, (long long)e.tokens);
  };

  int64_t step = state.step;
  StepOutcome o;  // reused from step to step
  while (step < tc.steps) {
    int64_t stop = g_stop_signal.load();  // every rank stops after the same step
    world->all_reduce(&stop, 1, DType::i64, ReduceOp::max);
    if (stop) break;
    ++step;
    const auto t0 = clock::now();
    // this rank's sequences: the canonical placement, or the attention-balanced one (design.md 3)
    double attn_balanced = 1, attn_canonical = 1;
    if (Wd == 1) {
      train_windows.fill(step, B, 0, B, local_batch.data());
    } else if (!rc.parallel.dp_attention_balance) {
      for (int64_t a = 0; a < n_local / m; ++a)
        train_windows.fill(step, B, canonical_first_sequence(a, dp, Wd, m), m, local_batch.data() + a * m * (T_ + 1));
    } else {
      train_windows.fill(step, B, 0, B, global_batch.data());
      const SequenceAssignment sa = balance_attention(attention_costs(global_batch.data(), B, T_), Wd, m, ep,
                                                      tc.balance_scope, tc.balance_alpha > 0, tc.capacity_factor > 0);
      for (int64_t i = 0; i < n_local; ++i)
        std::copy_n(global_batch.data() + sa.seqs[dp][i] * (T_ + 1), T_ + 1, local_batch.data() + i * (T_ + 1));
      attn_balanced = sa.max_over_mean;
      attn_canonical = sa.canonical_max_over_mean;
    }
    failpoint_throw("train.step");
    train_step(o, model, ps, optim, tc, step, state.adam_step, local_batch.data(), groups, ctx);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    const double tok_s = double(B * T_) / dt;
    tokens_seen += double(B * T_);
    SpikeDetector::Verdict sv;
    if (o.skipped) ++skipped_steps;
    else sv = spikes.observe(o.grad_norm, o.loss);
    const double mfu = peak_total > 0 ? fl.total * tok_s / peak_total : std::nan("");
    json line = train_metrics_line(o, tok_s, mfu, model.moe_layers(), n_devices);
    line["grad_spike"] = sv.grad_spike;
    line["loss_spike"] = sv.loss_spike;
    if (rc.parallel.dp_attention_balance && Wd > 1) {
      line["attn_cost_max_mean"] = attn_balanced;
      line["attn_cost_max_mean_unbalanced"] = attn_canonical;
    }
    if (root) metrics->write(line);
    last_moe = line["moe"];
    if (step % opt.log_every == 0 || step == tc.steps || o.skipped) {
      const double elapsed = std::chrono::duration<double>(clock::now() - t_loop).count();
      const double eta = elapsed / double(step - first_step + 1) * double(tc.steps - step);
      if (o.skipped)
        say("step %lld/%lld | SKIPPED: non-finite loss or gradient\n", (long long)step, (long long)tc.steps);
      else
        say("step %4lld/%lld | loss %.4f (mtp %.3f bal %.4f z %.4f) | lr %.2e | gnorm %.3f | %.0f tok/s | "
            "MFU %.1f%% | ETA %s\n",
            (long long)step, (long long)tc.steps, o.loss, o.loss_mtp, o.loss_bal, o.loss_z, o.lr, o.grad_norm, tok_s,
            100.0 * (peak_total > 0 ? mfu : 0.0), format_duration(eta).c_str());
    }
    if (tc.eval_every > 0 && step % tc.eval_every == 0 && step != tc.steps) run_eval(step);
    if (tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0 && step != tc.steps) save(step);
  }
  const bool interrupted = step < tc.steps;
  if (interrupted) say("stopping on a signal after step %lld\n", (long long)step);
  if (!interrupted && step >= first_step) run_eval(step);
  if (last_ckpt != step) save(step);
  const double total_s = std::chrono::duration<double>(clock::now() - t_start).count();
  say("done: step %lld, %lld skipped, grad-spike rate %.2f%% and loss-spike rate %.2f%% over %lld counted steps, %s\n",
      (long long)step, (long long)skipped_steps, 100 * spikes.grad_spike_rate(), 100 * spikes.loss_spike_rate(),
      (long long)spikes.counted(), format_duration(total_s).c_str());
  return 0;
}

int run_training(const TrainOptions& opt) {
  const Placement placement = parse_placement(opt.device, opt.dtype);
  if (placement.dtype == DType::bf16) return train<bf16>(opt, placement);
  return train<float>(opt, placement);
}

}  // namespace um
