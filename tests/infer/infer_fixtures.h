// Models for the inference tests: the golden configs of tests/golden (MTP depth 1 and 2, q_lora 0
// and > 0, sigmoid and softmax, greedy / group_limited with the aux-free bias / moge, Pre-LN and
// tied embeddings) with three kinds of weights:
//   golden   the reference's initial weights (TinyInit: small, nearly flat logits)
//   sharp    a plain normal init with a large std and random aux-free biases, so attention is
//            peaked, routing decisive and greedy tokens well separated
//   mirror   sharp, but every layer's post-norm gains tiny and each MTP eh_proj = [I 0]: the main
//            model predicts mostly from the current token and each MTP module from the token it
//            is fed, so drafts mostly agree with the main model (a high acceptance rate that
//            exercises multi-token acceptance; sandwich-norm configs only)
// plus the full-recompute reference logits from the training forward (model/model.h).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../model/golden.h"
#include "core/rng.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "model/model.h"

namespace um::test {

enum class Weights { golden, sharp, mirror };

inline const char* weights_name(Weights w) {
  return w == Weights::golden ? "golden" : (w == Weights::sharp ? "sharp" : "mirror");
}

template <class T>
void make_weights(const Golden& g, Weights kind, ParamStore<T>& ps) {
  if (kind == Weights::golden) {
    g.load(ps);
    return;
  }
  ModelConfig c = g.rc.model;
  c.init = InitMethod::fixed;
  c.initializer_range = 0.3;
  c.init_embedding_std = 1.0;
  init_params(ps, g.table, c, 7);
  const Philox rng(11, "infer.test.bias");
  for (int64_t i = 0; i < ps.buf.size(); ++i) ps.buf[i] = T(0.2 * (rng.uniform(uint64_t(i)) - 0.5));
  if (kind != Weights::mirror) return;
  const ModelConfig& m = g.rc.model;
  const int64_t D = m.hidden_size;
  for (int l = 0; l < m.n_layers_total(); ++l)
    for (const char* n : {"post_attention_layernorm", "post_mlp_layernorm"}) {
      const ParamInfo& p = g.table.at("model.layers." + std::to_string(l) + "." + n + ".weight");
      for (int64_t i = 0; i < p.numel; ++i) ps.w[p.offset + i] = T(0.02);
    }
  for (int64_t k = 1; k <= m.num_nextn_predict_layers; ++k) {
    const ParamInfo& p = g.table.at("model.layers." + std::to_string(m.num_hidden_layers + k - 1) + ".eh_proj.weight");
    for (int64_t r = 0; r < D; ++r)
      for (int64_t col = 0; col < 2 * D; ++col) ps.w[p.offset + r * 2 * D + col] = T(col == r ? 1 : 0);
  }
}

// The training forward's logits (B, T, V) and MTP logits (B, T-k, V) of the golden's first batch.
template <class T>
Capture<T> reference_forward(const Golden& g, ParamStore<T>& ps, const Ctx& ctx) {
  ModelOptions mo{g.B, g.T, g.rc.train.balance_scope, 0, g.rc.train.aux_free};
  Model<T> model(g.rc.model, g.table, mo);
  StepScales sc;
  sc.n_mtp.assign(g.rc.model.num_nextn_predict_layers, 1.0);
  Capture<T> cap;
  model.forward_backward(ps, g.batch(1), g.B, sc, false, ctx, &cap);
  return cap;
}

inline DecoderOptions decoder_options(const Golden& g, int64_t slots, int64_t mtp_depth = 0) {
  DecoderOptions d;
  d.slots = slots;
  d.max_context = g.T;
  d.aux_free = g.rc.train.aux_free;
  d.mtp_depth = mtp_depth;
  return d;
}

// max |a - b| / max |b| over n values
template <class T>
double normwise(const T* a, const T* b, int64_t n) {
  double d = 0, m = 0;
  for (int64_t i = 0; i < n; ++i) {
    d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
    m = std::max(m, std::fabs(double(b[i])));
  }
  return m > 0 ? d / m : d;
}

// The tests' shapes are tiny: a thread team costs more than it saves, and on a loaded 2-core
// machine its spin-waits dominate (measured: 100x slower). One thread; the threaded paths run in
// the CLI tests (test_infer_cli.cpp) on larger shapes.
inline Ctx test_ctx(Workspace* ws) {
  Ctx c = Ctx::cpu(ws);
  c.n_threads = 1;
  return c;
}

// One golden config with test weights and a single-threaded context, as most tests start:
//   Loaded<double> L(name, Weights::sharp); auto& [g, ws, ctx, ps] = L;
template <class T>
struct Loaded {
  Golden g;
  Workspace ws;
  Ctx ctx;
  ParamStore<T> ps;
  Loaded(const std::string& name, Weights w) : g(name), ctx(test_ctx(&ws)), ps(g.table) { make_weights(g, w, ps); }
};

inline const std::vector<std::string>& golden_names() {
  static const std::vector<std::string> names = {"tiny_dssn", "tiny_grouped", "tiny_moge", "tiny_preln"};
  return names;
}

}  // namespace um::test
