// Generation with the cached decoder: the same tokens as the full-recompute path, batched equal to
// one at a time (greedy and sampled, plain and speculative), speculative greedy equal to plain
// greedy, and the exact speculative sampling rule giving the plain sampling distribution.
// All in f64, where the paths differ by round-off only (design.md 1.9): equal tokens are exact
// expectations there, not tolerances.
#include <gtest/gtest.h>

#include <map>

#include "infer_fixtures.h"
#include "model/batch.h"

namespace um::test {
namespace {

std::vector<std::vector<int32_t>> make_prompts(const Golden& g, const std::vector<int64_t>& lens) {
  std::vector<std::vector<int32_t>> p;
  for (size_t b = 0; b < lens.size(); ++b) {
    const int32_t* w = g.batch(1) + int64_t(b % size_t(g.B)) * (g.T + 1);
    std::vector<int32_t> ids = {kBosId};
    for (int64_t i = 1; i < lens[b]; ++i) ids.push_back(w[i] == kEosId ? 9 : w[i]);  // one document
    p.push_back(ids);
  }
  return p;
}

std::vector<std::vector<int32_t>> tokens_of(const std::vector<GenerateResult>& r) {
  std::vector<std::vector<int32_t>> t;
  for (const auto& x : r) t.push_back(x.tokens);
  return t;
}

// The cached decoder generates exactly the tokens of generate_full_recompute, for greedy and
// sampled decoding, stopping at the same place (EOS, max tokens or the context).
TEST(Generate, CachedEqualsFullRecomputeF64) {
  for (const std::string& name : golden_names()) {
    Loaded<double> loaded(name, Weights::sharp);
    auto& [g, ws, ctx, ps] = loaded;
    Model<double> model(g.rc.model, g.table, {1, g.T, g.rc.train.balance_scope, 0, g.rc.train.aux_free});
    Decoder<double> dec(g.rc.model, g.table, ps, decoder_options(g, 1));
    for (double temp : {0.0, 1.0}) {
      SamplingParams sp;
      sp.temperature = temp;
      sp.top_k = 20;
      sp.top_p = 0.9;
      sp.seed = 3;
      for (const auto& prompt : make_prompts(g, {1, 5})) {
        GenerateResult full = generate_full_recompute<double>(model, ps, prompt, 100, sp, ctx);
        GenerateOptions go;
        go.max_new_tokens = 100;
        go.sampling = sp;
        GenerateResult cached = generate<double>(dec, {prompt}, go, ctx)[0];
        EXPECT_EQ(cached.tokens, full.tokens) << name << " temperature " << temp;
        EXPECT_EQ(cached.hit_eos, full.hit_eos);
        EXPECT_EQ(cached.hit_context, full.hit_context);
      }
    }
  }
}

// B prompts of different lengths decoded together give each prompt's tokens alone (its sampling
// stream keyed by its sequence id), in plain and speculative mode.
TEST(Generate, BatchedEqualsOneAtATimeF64) {
  for (const std::string& name : golden_names()) {
    Loaded<double> loaded(name, Weights::sharp);
    auto& [g, ws, ctx, ps] = loaded;
    const int64_t depth = g.rc.model.num_nextn_predict_layers;
    const auto prompts = make_prompts(g, {3, 1, 8, 5});
    const int64_t B = int64_t(prompts.size());
    Decoder<double> batched(g.rc.model, g.table, ps, decoder_options(g, B, depth));
    Decoder<double> single(g.rc.model, g.table, ps, decoder_options(g, 1, depth));
    for (bool spec : {false, true}) {
      if (spec && depth == 0) continue;
      for (double temp : {0.0, 0.9}) {
        GenerateOptions go;
        go.max_new_tokens = 9;
        go.sampling.temperature = temp;
        go.sampling.top_k = 16;
        go.sampling.seed = 5;
        go.speculative = spec;
        const auto all = tokens_of(generate<double>(batched, prompts, go, ctx));
        for (int64_t b = 0; b < B; ++b) {
          const auto one = generate<double>(single, {prompts[b]}, go, ctx, nullptr, {}, {b});
          EXPECT_EQ(all[b], one[0].tokens) << name << " sequence " << b << " speculative " << spec << " temperature " << temp;
        }
      }
    }
  }
}

// Greedy speculative decoding emits exactly the tokens of greedy plain decoding: with random
// weights (drafts mostly rejected) and with the mirror weights (drafts mostly accepted, several
// per round), for every draft length, batched, up to the end of the context.
TEST(Speculative, GreedyEqualsPlainGreedyF64) {
  for (const char* name : {"tiny_dssn", "tiny_grouped", "tiny_moge"}) {
    for (Weights wk : {Weights::sharp, Weights::mirror}) {
      Loaded<double> loaded(name, wk);
      auto& [g, ws, ctx, ps] = loaded;
      const int64_t depth = g.rc.model.num_nextn_predict_layers;
      const auto prompts = make_prompts(g, {2, 6, 1});
      Decoder<double> plain(g.rc.model, g.table, ps, decoder_options(g, 3));
      Decoder<double> spec(g.rc.model, g.table, ps, decoder_options(g, 3, depth));
      GenerateOptions go;
      go.max_new_tokens = 100;  // runs into the context
      go.sampling.temperature = 0;
      GenerateStats ps_stats;
      const auto want = generate<double>(plain, prompts, go, ctx, &ps_stats);
      for (int64_t draft = 1; draft <= depth; ++draft) {
        go.speculative = true;
        go.draft = draft;
        GenerateStats st;
        const auto got = generate<double>(spec, prompts, go, ctx, &st);
        EXPECT_EQ(tokens_of(got), tokens_of(want)) << name << " " << weights_name(wk) << " draft " << draft;
        for (size_t b = 0; b < got.size(); ++b) EXPECT_EQ(got[b].hit_context, want[b].hit_context);
        EXPECT_GT(st.drafted, 0);
        EXPECT_LE(st.accepted, st.drafted);
        EXPECT_EQ(st.generated_tokens, ps_stats.generated_tokens);
        EXPECT_LE(st.decode_passes, ps_stats.decode_passes);  // never more passes than plain
        if (wk == Weights::mirror) {
          EXPECT_GT(st.acceptance(), 0.5) << name << " draft " << draft;
        }
        std::printf("[ measured ] %s %s draft %lld: acceptance %lld/%lld, %lld passes vs %lld plain\n", name,
                    weights_name(wk), (long long)draft, (long long)st.accepted, (long long)st.drafted,
                    (long long)st.decode_passes, (long long)ps_stats.decode_passes);
      }
    }
  }
}

// The exact rule for sampled speculative decoding: over many seeds, the second generated token
// (the first one a verify pass produces) follows the plain sampling distribution p(. | prompt,
// first token). Mirror weights so that drafts are often accepted and both branches of the rule
// run. Compared by total variation distance against p itself.
TEST(Speculative, SampledFollowsTheTargetDistributionF64) {
  Loaded<double> loaded("tiny_grouped", Weights::mirror);
  auto& [g, ws, ctx, ps] = loaded;
  const int64_t V = g.rc.model.vocab_size;
  const auto prompt = make_prompts(g, {4})[0];
  Decoder<double> spec(g.rc.model, g.table, ps, decoder_options(g, 1, 1));
  Decoder<double> plain(g.rc.model, g.table, ps, decoder_options(g, 1));
  GenerateOptions go;
  go.max_new_tokens = 3;  // the prefill samples token 0; one verify pass (one draft) gives 1 and 2
  go.sampling.temperature = 1.5;  // flatter: several tokens in play
  go.sampling.top_k = 8;          // at most 8 outcomes: a tight bound on an exact sampler's TV
  go.speculative = true;
  const int n = 3000;
  std::map<int32_t, std::map<int32_t, int>> counts;  // first token -> second token -> count
  int64_t drafted = 0, accepted = 0;
  for (int s = 0; s < n; ++s) {
    go.sampling.seed = uint64_t(s);
    GenerateStats st;
    const auto r = generate<double>(spec, {prompt}, go, ctx, &st)[0];
    ASSERT_EQ(r.tokens.size(), 3u);
    ++counts[r.tokens[0]][r.tokens[1]];
    drafted += st.drafted, accepted += st.accepted;
  }
  // the most frequent first token; p(. | prompt, it) from the plain decoder's logits
  int32_t t1 = -1;
  int best = 0;
  for (auto& [t, m] : counts) {
    int c = 0;
    for (auto& [u, k] : m) c += k;
    if (c > best) best = c, t1 = t;
  }
  std::vector<int32_t> ctx_ids = prompt;
  ctx_ids.push_back(t1);
  std::vector<double> logits(V);
  plain.cache().clear(0);
  plain.forward({{0, ctx_ids.data(), int64_t(ctx_ids.size())}}, LogitRows::last, logits.data(), ctx);
  SamplingDist dist;
  sampling_distribution(logits.data(), V, go.sampling, dist);
  double tv = 0;
  for (int32_t u = 0; u < V; ++u) {
    const double emp = counts[t1].count(u) ? double(counts[t1][u]) / best : 0.0;
    tv += 0.5 * std::fabs(emp - dist.probability(u));
  }
  // an exact sampler's expected TV over k <= 8 outcomes from n samples is at most
  // 0.5 * sqrt(2 k / (pi n)) (Cauchy-Schwarz on sum sqrt(p_i)): <= 0.05 for n >= 500, so 0.1 is
  // two of those; keeping the draft on every acceptance test, or a residual that still holds the
  // rejected draft, moves p(d)(1 - p(d)) of mass, 0.16 to 0.25 for the p(d) of 0.2 to 0.8 seen here
  EXPECT_GE(best, 500);
  EXPECT_LT(tv, 0.1) << "first token " << t1 << ", " << best << " samples";
  EXPECT_GT(accepted, 0);
  EXPECT_LT(accepted, drafted);
  std::printf("[ measured ] sampled speculative: TV distance %.3f over %d samples; acceptance %lld/%lld\n", tv, best,
              (long long)accepted, (long long)drafted);
}

}  // namespace
}  // namespace um::test
