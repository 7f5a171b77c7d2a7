#include "infer/infer_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "core/json_reader.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "model/batch.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/run_config.h"
#include "train/windows.h"

namespace um {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Measured {
  double prefill_tps = 0, decode_tps = 0, acceptance = 0;
  int64_t drafted = 0, accepted = 0, passes = 0;
  std::vector<std::vector<int32_t>> tokens;  // of the last repeat
};

}  // namespace

int run_infer_bench(const InferBenchOptions& o) {
  UM_CHECK(o.ckpt.empty() != o.config.empty(), "bench", "give exactly one of --ckpt and --config");
  UM_CHECK(o.batch >= 1 && o.prompt_len >= 1 && o.new_tokens >= 2 && o.repeats >= 1 && o.full_tokens >= 0, "bench",
           "--batch, --prompt-len and --repeats must be >= 1 and --max-new-tokens >= 2");
  // the model: a checkpoint's weights, or the config's random init
  std::unique_ptr<OpenedCheckpoint> ck;
  RunConfig rc;
  ParamTable table;
  ParamStore<float> own;
  if (!o.ckpt.empty()) {
    ck = std::make_unique<OpenedCheckpoint>(open_checkpoint(o.ckpt));
    rc = ck->rc;
  } else {
    rc = load_run_config(o.config, o.overrides);
    table = build_param_table(rc.model);
    own = ParamStore<float>(table, 0);
    init_params(own, table, rc.model, rc.train.seed);
  }
  const ParamTable& t = ck ? ck->table : table;
  const ParamStore<float>& ps = ck ? ck->ps : own;
  const ModelConfig& mc = rc.model;
  const int64_t V = mc.vocab_size, B = o.batch, n_ctx = o.prompt_len + o.new_tokens,
                depth = mc.num_nextn_predict_layers;
  UM_CHECK(n_ctx <= mc.max_position_embeddings, "bench", "--prompt-len + --max-new-tokens = ", n_ctx,
           " exceeds max_position_embeddings ", mc.max_position_embeddings);

  // prompts
  std::vector<std::vector<int32_t>> prompts(B);
  if (!o.data_dir.empty()) {
    DataDir data(o.data_dir);
    data.check_model_vocab(V);
    EvalWindows ew(data.val(), std::max<int64_t>(o.prompt_len - 1, 1));
    UM_CHECK(ew.n_windows() >= 1, "bench", data.path(), " has no validation windows");
    std::vector<int32_t> win(ew.window_len());
    for (int64_t b = 0; b < B; ++b) {
      ew.fill(b % ew.n_windows(), win.data());
      prompts[b].assign(1, kBosId);
      for (int64_t i = 0; i + 1 < o.prompt_len; ++i) prompts[b].push_back(win[i] == kPadId ? kEosId : win[i]);
    }
  } else {
    const Philox rng(o.seed, "bench.prompts");
    for (int64_t b = 0; b < B; ++b) {
      prompts[b].assign(1, kBosId);
      for (int64_t i = 1; i < o.prompt_len; ++i)
        prompts[b].push_back(int32_t(8 + rng.below(uint64_t(b * o.prompt_len + i), uint64_t(V - 8))));
    }
  }

  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  const bool aux_free = rc.train.aux_free;
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.seed = o.seed;
  SamplingParams sampled;
  sampled.temperature = o.temperature;
  sampled.top_p = 0.95;
  sampled.seed = o.seed;

  auto measure = [&](int64_t batch, bool spec, const SamplingParams& sp) {
    DecoderOptions d;
    d.slots = batch;
    d.max_context = n_ctx;
    d.aux_free = aux_free;
    d.mtp_depth = spec ? depth : 0;
    Decoder<float> dec(mc, t, ps, d);
    std::vector<std::vector<int32_t>> pr(prompts.begin(), prompts.begin() + batch);
    GenerateOptions go;
    go.max_new_tokens = o.new_tokens;
    go.sampling = sp;
    go.speculative = spec;
    go.stop_at_eos = false;
    std::vector<double> pre, dec_tps;
    Measured m;
    for (int64_t r = 0; r <= o.repeats; ++r) {  // repeat 0 warms up
      GenerateStats st;
      std::vector<GenerateResult> res = generate<float>(dec, pr, go, ctx, &st);
      if (r == 0) continue;
      pre.push_back(st.prefill_tokens_per_s());
      dec_tps.push_back(st.decode_tokens_per_s());
      m.drafted = st.drafted;
      m.accepted = st.accepted;
      m.acceptance = st.acceptance();
      m.passes = st.decode_passes;
      m.tokens.clear();
      for (auto& x : res) m.tokens.push_back(x.tokens);
    }
    m.prefill_tps = median(pre);
    m.decode_tps = median(dec_tps);
    return m;
  };

  const Measured one = measure(1, false, greedy);
  const Measured plain = measure(B, false, greedy);
  Measured spec, spec1, plain_s, spec_s;
  if (depth > 0) {
    spec1 = measure(1, true, greedy);
    spec = measure(B, true, greedy);
    plain_s = measure(B, false, sampled);
    spec_s = measure(B, true, sampled);
  }
  const bool spec_identical = depth > 0 && spec.tokens == plain.tokens;

  // the full-recompute reference: batch 1, the same first prompt, a window of the same context
  double full_tps = 0;
  bool full_identical = true;
  if (o.full_tokens > 0) {
    const int64_t n_full = std::min(o.full_tokens, o.new_tokens);
    Model<float> model(mc, t, {1, n_ctx, rc.train.balance_scope, 0, aux_free});
    ParamStore<float>& psm = const_cast<ParamStore<float>&>(ps);  // the forward only reads the weights
    std::vector<double> tps;
    for (int64_t r = 0; r < std::min<int64_t>(o.repeats, 2); ++r) {
      auto t0 = std::chrono::steady_clock::now();
      GenerateResult g = generate_full_recompute<float>(model, psm, prompts[0], n_full, greedy, ctx);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tps.push_back(double(g.tokens.size()) / s);
      full_identical = std::equal(g.tokens.begin(), g.tokens.end(), one.tokens[0].begin());
    }
    full_tps = median(tps);
  }

  const int64_t latent = latent_cache_bytes_per_token(mc, 4), mha = mha_cache_bytes_per_token(mc, 4);
  const std::string source = ck ? ck->dir : o.config;
  if (o.json) {
    json j = {{"model", source}, {"trained", bool(ck)}, {"batch", B}, {"prompt_len", o.prompt_len},
              {"new_tokens", o.new_tokens}, {"threads", ctx.n_threads},
              {"cache_bytes_per_token_latent_f32", latent}, {"cache_bytes_per_token_mha_f32", mha},
              {"cache_compression", double(mha) / double(latent)},
              {"batch1_prefill_tokens_per_s", one.prefill_tps}, {"batch1_decode_tokens_per_s", one.decode_tps},
              {"prefill_tokens_per_s", plain.prefill_tps}, {"decode_tokens_per_s", plain.decode_tps},
              {"full_recompute_tokens_per_s", full_tps}, {"full_recompute_identical", full_identical}};
    if (depth > 0) {
      j["spec_greedy_batch1"] = {{"acceptance", spec1.acceptance}, {"decode_tokens_per_s", spec1.decode_tps},
                                 {"speedup", spec1.decode_tps / one.decode_tps},
                                 {"identical_to_plain", spec1.tokens == one.tokens}};
      j["spec_greedy"] = {{"acceptance", spec.acceptance}, {"decode_tokens_per_s", spec.decode_tps},
                          {"speedup", spec.decode_tps / plain.decode_tps}, {"identical_to_plain", spec_identical},
                          {"drafted", spec.drafted}, {"accepted", spec.accepted}};
      j["spec_sampled"] = {{"temperature", o.temperature}, {"top_p", 0.95}, {"acceptance", spec_s.acceptance},
                           {"decode_tokens_per_s", spec_s.decode_tps}, {"plain_decode_tokens_per_s", plain_s.decode_tps},
                           {"speedup", spec_s.decode_tps / plain_s.decode_tps}};
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("inference bench: %s (%s), %d threads, prompts of %lld tokens (%s), %lld new tokens each\n",
              source.c_str(), ck ? "trained" : "random init", ctx.n_threads, (long long)o.prompt_len,
              o.data_dir.empty() ? "random ids" : "validation text", (long long)o.new_tokens);
  std::printf("cache bytes/token (f32, %lld main layers): MLA latent %lld  vs  multi-head K+V %lld  (%.1fx smaller)\n",
              (long long)mc.num_hidden_layers, (long long)latent, (long long)mha, double(mha) / double(latent));
  std::printf("%-34s %14s %14s\n", "", "prefill tok/s", "decode tok/s");
  std::printf("%-34s %14.0f %14.1f\n", "cached, batch 1, greedy", one.prefill_tps, one.decode_tps);
  std::printf("%-34s %14.0f %14.1f\n", ("cached, batch " + std::to_string(B) + ", greedy").c_str(), plain.prefill_tps,
              plain.decode_tps);
  if (o.full_tokens > 0)
    std::printf("%-34s %14s %14.1f   (%.1fx slower than cached batch 1; tokens %s)\n", "full recompute, batch 1",
                "-", full_tps, full_tps > 0 ? one.decode_tps / full_tps : 0.0, full_identical ? "identical" : "DIFFER");
  if (depth > 0) {
    std::printf("speculative (MTP depth %lld), batch 1:\n", (long long)depth);
    std::printf("  greedy:  acceptance %.1f%% (%lld/%lld)  decode %.1f tok/s  speed-up %.2fx  tokens %s\n",
                100 * spec1.acceptance, (long long)spec1.accepted, (long long)spec1.drafted, spec1.decode_tps,
                spec1.decode_tps / one.decode_tps,
                spec1.tokens == one.tokens ? "identical to plain greedy" : "DIFFER from plain greedy");
    std::printf("speculative (MTP depth %lld), batch %lld:\n", (long long)depth, (long long)B);
    std::printf("  greedy:  acceptance %.1f%% (%lld/%lld)  decode %.1f tok/s  speed-up %.2fx  tokens %s\n",
                100 * spec.acceptance, (long long)spec.accepted, (long long)spec.drafted, spec.decode_tps,
                spec.decode_tps / plain.decode_tps, spec_identical ? "identical to plain greedy" : "DIFFER from plain greedy");
    std::printf("  sampled (T %.2f, top-p 0.95):  acceptance %.1f%%  decode %.1f tok/s vs plain %.1f  speed-up %.2fx\n",
                o.temperature, 100 * spec_s.acceptance, spec_s.decode_tps, plain_s.decode_tps,
                spec_s.decode_tps / plain_s.decode_tps);
  }
  return 0;
}

}  // namespace um
