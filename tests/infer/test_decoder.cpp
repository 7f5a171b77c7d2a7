// The cached decoder against the training forward (full recompute): logits at every position of
// prefill and incremental decoding, MTP logits through the MTP latent caches, absorbed against
// naive MLA, chunked passes, documents inside a prompt, and the decoder's input checks.
// Tolerances: f64 — the paths differ only in summation order (absorbed MLA reassociates the
// q.k and p.v products; measured <= 1e-14 normwise), so 1e-9 leaves a wide margin. f32 — float
// rounding through a few layers with a different grouping of the sums (measured below 2e-6 on
// these models); 5e-5 stated.
#include <gtest/gtest.h>
#include <omp.h>

#include "infer_fixtures.h"
#include "model/batch.h"

namespace um::test {
namespace {

constexpr double kF64 = 1e-9, kF32 = 5e-5;

// Every in-process test of this executable runs single-threaded (init_params and BLAS included):
// the shapes are tiny, and on a loaded 2-core machine a thread team's spin-waits cost 100x the
// work (see test_ctx). The binaries the CLI tests start keep their default threads.
class SingleThreaded : public ::testing::Environment {
 public:
  void SetUp() override { omp_set_num_threads(1); }
};
const ::testing::Environment* const kSingleThreaded = ::testing::AddGlobalTestEnvironment(new SingleThreaded);

struct Case {
  std::string golden;
  Weights weights;
};

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  return i.param.golden + "_" + weights_name(i.param.weights);
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (const std::string& n : golden_names())
    for (Weights w : {Weights::golden, Weights::sharp}) v.push_back({n, w});
  return v;
}

class CachedDecoding : public ::testing::TestWithParam<Case> {};

// Sequence b prefills its first p_b tokens in one pass (all rows' logits), then decodes the rest of
// its window one token per pass, batched with the other sequences; every row's logits must equal
// the training forward's at that position. max_rows small forces chunked passes. By default the
// prefill runs through GEMM and moe_forward, the decoding steps through the few-row kernels;
// skinny_rows 0 makes every pass use GEMM, max_rows 5 every pass the few-row kernels.
template <class T>
void check_cached_equals_full(const Case& cs, double tol, int64_t max_rows, MlaMode mla, int64_t skinny_rows = 8) {
  Loaded<T> loaded(cs.golden, cs.weights);
  auto& [g, ws, ctx, ps] = loaded;
  const Capture<T> ref = reference_forward(g, ps, ctx);
  const int64_t B = g.B, Tn = g.T, V = g.rc.model.vocab_size;
  DecoderOptions o = decoder_options(g, B);
  o.max_rows = max_rows;
  o.mla = mla;
  o.skinny_rows = skinny_rows;
  Decoder<T> dec(g.rc.model, g.table, ps, o);
  std::vector<const int32_t*> win(B);
  std::vector<int64_t> pre(B);
  for (int64_t b = 0; b < B; ++b) {
    win[b] = g.batch(1) + b * (Tn + 1);
    pre[b] = 1 + (3 * b + 2) % (Tn - 1);  // different prompt lengths
  }
  double worst = 0;
  auto check_row = [&](const T* got, int64_t b, int64_t i) {
    const double e = normwise(got, ref.logits.data() + (b * Tn + i) * V, V);
    worst = std::max(worst, e);
    EXPECT_LE(e, tol) << "sequence " << b << " position " << i;
  };
  std::vector<Feed> feeds;
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) feeds.push_back({b, win[b], pre[b]}), total += pre[b];
  std::vector<T> logits(std::max(total, B) * V);
  dec.forward(feeds, LogitRows::all, logits.data(), ctx);
  int64_t row = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < pre[b]; ++i) check_row(logits.data() + row++ * V, b, i);
  for (;;) {
    feeds.clear();
    for (int64_t b = 0; b < B; ++b)
      if (dec.cache().length(b) < Tn) feeds.push_back({b, win[b] + dec.cache().length(b), 1});
    if (feeds.empty()) break;
    dec.forward(feeds, LogitRows::last, logits.data(), ctx);
    for (size_t f = 0; f < feeds.size(); ++f)
      check_row(logits.data() + f * V, feeds[f].slot, dec.cache().length(feeds[f].slot) - 1);
  }
  std::printf("[ measured ] %s %s %s max_rows %lld skinny_rows %lld %s: worst normwise logits error %.2e\n",
              cs.golden.c_str(), weights_name(cs.weights), sizeof(T) == 8 ? "f64" : "f32", (long long)max_rows,
              (long long)skinny_rows, mla == MlaMode::naive ? "naive" : "absorbed", worst);
}

TEST_P(CachedDecoding, EqualsFullRecomputeF64) { check_cached_equals_full<double>(GetParam(), kF64, 256, MlaMode::absorbed); }
TEST_P(CachedDecoding, EqualsFullRecomputeF64Chunked) { check_cached_equals_full<double>(GetParam(), kF64, 5, MlaMode::absorbed); }
TEST_P(CachedDecoding, EqualsFullRecomputeF64Gemm) { check_cached_equals_full<double>(GetParam(), kF64, 256, MlaMode::absorbed, 0); }
TEST_P(CachedDecoding, EqualsFullRecomputeF64Naive) { check_cached_equals_full<double>(GetParam(), kF64, 256, MlaMode::naive); }
TEST_P(CachedDecoding, EqualsFullRecomputeF32) { check_cached_equals_full<float>(GetParam(), kF32, 256, MlaMode::absorbed); }

INSTANTIATE_TEST_SUITE_P(Golden, CachedDecoding, ::testing::ValuesIn(all_cases()), case_name);

// Absorbed and naive MLA give the same attention output in every layer (main and MTP) for the
// same cached rows: prefill, then decoding steps.
TEST(AbsorbedMla, EqualsNaiveAttention) {
  for (const std::string& name : golden_names()) {
    Loaded<double> loaded(name, Weights::sharp);
    auto& [g, ws, ctx, ps] = loaded;
    const int64_t depth = g.rc.model.num_nextn_predict_layers, B = 2, V = g.rc.model.vocab_size;
    DecoderOptions oa = decoder_options(g, B, depth), on = oa;
    on.mla = MlaMode::naive;
    Decoder<double> absorbed(g.rc.model, g.table, ps, oa), naive(g.rc.model, g.table, ps, on);
    std::vector<std::vector<double>> ca, cn;
    absorbed.capture_attention(&ca);
    naive.capture_attention(&cn);
    std::vector<double> la(4 * V * g.T), ln(4 * V * g.T);
    double worst = 0;
    auto compare = [&](int64_t layer_begin, int64_t layer_end, const char* what) {
      ASSERT_EQ(ca.size(), cn.size());
      for (int64_t l = layer_begin; l < layer_end; ++l) {
        ASSERT_EQ(ca[l].size(), cn[l].size());
        ASSERT_FALSE(ca[l].empty());
        std::vector<double> ref(cn[l]);
        const double e = normwise(ca[l].data(), ref.data(), int64_t(ref.size()));
        worst = std::max(worst, e);
        EXPECT_LE(e, 1e-12) << name << " " << what << " layer " << l;
      }
    };
    const int32_t* w0 = g.batch(1);
    const int32_t* w1 = g.batch(1) + (g.T + 1);
    const int64_t L = g.rc.model.num_hidden_layers;
    for (Decoder<double>* d : {&absorbed, &naive})
      d->forward({{0, w0, 7}, {1, w1, 4}}, LogitRows::all, d == &absorbed ? la.data() : ln.data(), ctx);
    compare(0, L, "prefill");
    for (int step = 0; step < 3; ++step) {
      for (Decoder<double>* d : {&absorbed, &naive})
        d->forward({{0, w0 + 7 + step, 1}, {1, w1 + 4 + step, 1}}, LogitRows::last,
                   d == &absorbed ? la.data() : ln.data(), ctx);
      compare(0, L, "decode");
    }
    for (int64_t k = 1; k <= depth; ++k) {
      const int64_t n = 9 - k;  // main positions 0..9 of slot 0 are cached (7 + 3 decoded)
      for (Decoder<double>* d : {&absorbed, &naive})
        d->mtp_forward(int(k), {{0, 0, w0 + k, n}}, LogitRows::all, d == &absorbed ? la.data() : ln.data(), ctx);
      compare(L + k - 1, L + k, "mtp");
      EXPECT_LE(normwise(la.data(), ln.data(), n * V), 1e-12) << name << " MTP logits, module " << k;
    }
    std::printf("[ measured ] %s: absorbed vs naive attention, worst normwise %.2e\n", name.c_str(), worst);
  }
}

// MTP module k over positions j with tokens x_{j+k} reproduces the training forward's depth-k
// logits, fed in two pieces so the second reads the module's cache written by the first.
TEST(MtpCache, ModuleLogitsEqualTrainingF64) {
  for (const char* name : {"tiny_dssn", "tiny_grouped", "tiny_moge"}) {
    for (Weights wk : {Weights::golden, Weights::sharp}) {
      Loaded<double> loaded(name, wk);
      auto& [g, ws, ctx, ps] = loaded;
      const Capture<double> ref = reference_forward(g, ps, ctx);
      const int64_t B = g.B, Tn = g.T, V = g.rc.model.vocab_size, depth = g.rc.model.num_nextn_predict_layers;
      Decoder<double> dec(g.rc.model, g.table, ps, decoder_options(g, B, depth));
      std::vector<Feed> feeds;
      for (int64_t b = 0; b < B; ++b) feeds.push_back({b, g.batch(1) + b * (Tn + 1), Tn});
      std::vector<double> logits(B * Tn * V);
      dec.forward(feeds, LogitRows::none, nullptr, ctx);
      double worst = 0;
      for (int64_t k = 1; k <= depth; ++k) {
        const int64_t Tk = Tn - k, cut = Tk / 2;
        for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, cut}, {cut, Tk}}) {
          std::vector<MtpFeed> mf;
          for (int64_t b = 0; b < B; ++b) mf.push_back({b, lo, g.batch(1) + b * (Tn + 1) + lo + k, hi - lo});
          dec.mtp_forward(int(k), mf, LogitRows::all, logits.data(), ctx);
          int64_t row = 0;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t j = lo; j < hi; ++j, ++row) {
              const double e = normwise(logits.data() + row * V, ref.mtp_logits[k - 1].data() + (b * Tk + j) * V, V);
              worst = std::max(worst, e);
              EXPECT_LE(e, kF64) << name << " module " << k << " sequence " << b << " position " << j;
            }
        }
      }
      std::printf("[ measured ] %s %s: MTP logits worst normwise %.2e\n", name, weights_name(wk), worst);
    }
  }
}

// A prompt holding EOS: the positions after it restart at 0 and attend only to their own
// document, as in training (the golden windows hold several documents; this one is built).
TEST(Documents, InsideAPromptAsInTrainingF64) {
  Loaded<double> loaded("tiny_dssn", Weights::sharp);
  auto& [g, ws, ctx, ps] = loaded;
  const int64_t Tn = g.T, V = g.rc.model.vocab_size;
  std::vector<int32_t> window(Tn + 1);
  for (int64_t i = 0; i <= Tn; ++i) window[i] = int32_t(8 + (i * 7) % (V - 8));
  window[0] = kBosId;
  window[5] = kEosId;
  window[6] = kBosId;
  window[11] = kEosId;
  ModelOptions mo{1, Tn, g.rc.train.balance_scope, 0, g.rc.train.aux_free};
  Model<double> model(g.rc.model, g.table, mo);
  StepScales sc;
  sc.n_mtp.assign(2, 1.0);
  sc.with_mtp = false;
  Capture<double> cap;
  model.forward_backward(ps, window.data(), 1, sc, false, ctx, &cap);
  Decoder<double> dec(g.rc.model, g.table, ps, decoder_options(g, 1));
  std::vector<double> logits(Tn * V);
  dec.forward({{0, window.data(), 8}}, LogitRows::all, logits.data(), ctx);
  for (int64_t i = 8; i < Tn; ++i) dec.forward({{0, window.data() + i, 1}}, LogitRows::all, logits.data() + i * V, ctx);
  EXPECT_LE(normwise(logits.data(), cap.logits.data(), Tn * V), kF64);
  EXPECT_EQ(dec.cache().rope_pos(0, 5), 5);   // EOS closes its document
  EXPECT_EQ(dec.cache().rope_pos(0, 6), 0);   // the next one starts at position 0
  EXPECT_EQ(dec.cache().rope_pos(0, 12), 0);
  EXPECT_EQ(dec.cache().seg_start(0, 14), 12);
}

// The decoder's input checks: each names the offending value.
TEST(Decoder, RejectsBadInput) {
  const Golden g("tiny_preln");  // no MTP modules
  Workspace ws;
  Ctx ctx = test_ctx(&ws);
  ParamStore<double> ps(g.table);
  g.load(ps);
  const int64_t V = g.rc.model.vocab_size;
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  DecoderOptions o = decoder_options(g, 2);
  expect_error([&] { o.mtp_depth = 1; Decoder<double> d(g.rc.model, g.table, ps, o); }, "the model has 0 MTP modules");
  o.mtp_depth = 0;
  expect_error([&] { DecoderOptions x = o; x.max_context = g.rc.model.max_position_embeddings + 1;
                     Decoder<double> d(g.rc.model, g.table, ps, x); }, "max_position_embeddings");
  Decoder<double> dec(g.rc.model, g.table, ps, o);
  std::vector<int32_t> ids(g.T + 1, 5);
  std::vector<double> logits(2 * V * (g.T + 1));
  expect_error([&] { dec.forward({{0, ids.data(), g.T + 1}}, LogitRows::last, logits.data(), ctx); }, "exceed the context of");
  expect_error([&] { dec.forward({{2, ids.data(), 1}}, LogitRows::last, logits.data(), ctx); }, "slot 2 out of range");
  expect_error([&] { dec.forward({{0, ids.data(), 1}, {0, ids.data(), 1}}, LogitRows::last, logits.data(), ctx); },
               "appears twice");
  ids[0] = int32_t(V);
  expect_error([&] { dec.forward({{0, ids.data(), 1}}, LogitRows::last, logits.data(), ctx); }, "outside the vocabulary");
  EXPECT_EQ(dec.cache().length(0), 0);  // a rejected pass changes nothing

  // generation: empty prompt, a prompt longer than the context, speculative without MTP
  GenerateOptions go;
  go.max_new_tokens = 4;
  expect_error([&] { generate<double>(dec, {{}}, go, ctx); }, "prompt 0 is empty");
  expect_error([&] { generate<double>(dec, {std::vector<int32_t>(g.T + 1, 5)}, go, ctx); },
               "prompt 0 has " + std::to_string(g.T + 1) + " tokens (with BOS) but the context is " + std::to_string(g.T));
  expect_error([&] { generate<double>(dec, {{1}, {1}, {1}}, go, ctx); }, "3 prompts, but the decoder has 2 sequence slots");
  go.speculative = true;
  expect_error([&] { generate<double>(dec, {{1, 5}}, go, ctx); }, "speculative decoding drafts with the MTP modules");
}

}  // namespace
}  // namespace um::test
