// The KV-cached decoder (design.md 1.4, 1.9): the training model's math over the training weights
// (a ParamStore + ParamTable + ModelConfig, read-only), run incrementally on a batch of sequences
// with a latent cache (infer/kv_cache.h).
//
// One primitive does prefill, decoding and speculative verification alike: forward() appends, for
// each sequence slot it names, n tokens at the slot's current length and runs them through the
// main model — every row attends to its slot's cached rows and to the rows before it in the same
// feed, under the causal + document mask of training. Prefill feeds whole prompts, a decode step
// one token per active sequence, a verify pass the pending token plus the drafts. Passes larger
// than max_rows rows run in chunks; a chunk sees the cache the earlier chunks wrote, so chunking
// changes nothing but the grouping of the GEMMs.
//
// Absorbed MLA (DeepSeek-V2 sec. 2.1.2): per head, kv_b's rows split into W_uk (nope, kv_lora)
// and W_uv (dv, kv_lora), so
//   q_nope . k_nope_j = q_nope . (W_uk ckv_j) = (q_nope W_uk) . ckv_j      query absorbs W_uk
//   o = sum_j p_j v_j = (sum_j p_j ckv_j) W_uv^T                          output absorbs W_uv
// and the score of head h against cached token j is one dot product of [q_nope W_uk ; q_pe] with
// the cached row [ckv ; k_pe], scale 1/sqrt(nope + rope) unchanged. All heads share the key rows,
// so a sequence's attention is one (rows*H, W) x (W, keys) GEMM. W_uk and W_uv are views into
// kv_b, not copies: folding them further into Wq_b or Wo would cost more FLOPs than it saves
// whenever kv_lora > nope (it always is in the reference geometries). MlaMode::naive instead
// up-projects the cached ckv to per-head K and V and runs standard attention: the reference the
// absorbed path is tested against.
//
// MoE layers route exactly as in training (ffn.h moe_forward, the same code): dropless, with the
// aux-free bias when the config or the options ask for it. MTP modules (design.md 1.7) keep their
// own cache layers and, for chaining, the history of their input hidden states (h^{k-1} per
// position: the main final-norm output for k = 1, module k-1's head-norm output after); see
// mtp_forward. Not here: sampling and the generation loops (infer/generate.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/ctx.h"
#include "infer/kv_cache.h"
#include "model/config.h"
#include "model/params.h"
#include "model/weights.h"

namespace um {

enum class MlaMode : uint8_t { absorbed, naive };

struct DecoderOptions {
  int64_t slots = 1;          // sequences decoded together
  int64_t max_context = 0;    // cached positions per sequence; 0 = max_position_embeddings
  int64_t max_rows = 256;     // rows per forward chunk (bounds the activation memory)
  int64_t skinny_rows = 16;   // chunks of at most this many rows (decoding) use the few-row kernels
                              // (ops/skinny_linear.h) instead of GEMM; 0 = never
  bool aux_free = false;      // route with the aux-free bias (always on when the config says noaux_tc)
  int64_t mtp_depth = 0;      // MTP modules with caches, for speculative decoding (<= the model's)
  MlaMode mla = MlaMode::absorbed;
};

// n tokens appended to `slot` at its current length (main model).
struct Feed {
  int64_t slot = 0;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
};

// Rows of MTP module k for positions first..first+n-1 of a slot: row j reads h^{k-1}_j from the
// history and the embedding of tokens[j - first] = x_{j+k} (design.md 1.7).
struct MtpFeed {
  int64_t slot = 0;
  int64_t first = 0;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
};

// Which rows get logits: none, the last row of every feed ((feeds, V)), or all ((sum n, V)).
enum class LogitRows : uint8_t { none, last, all };

template <class T>
class Decoder {
 public:
  // The weights are read, never copied or changed: ps must outlive the decoder.
  Decoder(const ModelConfig& c, const ParamTable& table, const ParamStore<T>& ps, const DecoderOptions& o);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const DecoderOptions& options() const { return opt_; }
  LatentCache<T>& cache() { return cache_; }
  const LatentCache<T>& cache() const { return cache_; }

  // Main model over the feeds (distinct slots; rows in feed order). logits: see LogitRows. With
  // mtp_depth > 0 the final-norm outputs go to the history (history(0, ...)).
  void forward(const std::vector<Feed>& feeds, LogitRows which, T* logits, const Ctx& ctx);

  // MTP module k (1-based, <= mtp_depth) over the feeds. Contract: each feed starts at or before
  // the module's cached length (first <= cache().mtp_length(k, slot)), covers only positions the
  // main model has cached, and history(k-1, slot, j) holds h^{k-1}_j computed from confirmed
  // tokens. Writes the module's cache rows and, for k < mtp_depth, history(k, ...); sets the
  // module's cached length to first + n (the caller lowers it when the last rows used drafts).
  void mtp_forward(int k, const std::vector<MtpFeed>& feeds, LogitRows which, T* logits, const Ctx& ctx);

  // (D) h^k at position i of a slot: k = 0 main final-norm output, k >= 1 module k's head-norm
  // output. Only with mtp_depth > 0.
  const T* history(int k, int64_t slot, int64_t i) const;

  // Tests: when set, every forward copies each layer's attention output (rows, D) here, one
  // vector per cache layer (of the last chunk only).
  void capture_attention(std::vector<std::vector<T>>* out) { attn_capture_ = out; }

  // Bytes held: cache, MTP history, activations.
  size_t bytes() const;

 private:
  struct Impl;
  void run_chunk(int layer_begin, int layer_end, const Ctx& ctx);
  // The LM head over the chunk's N normalised rows (impl's h): every row's logits at row
  // done_rows of `logits`, or only the last row of each feed, at the feed's index.
  void head_logits(LogitRows which, T* logits, int64_t done_rows, int64_t N, const Ctx& ctx);
  ModelConfig cfg_;
  DecoderOptions opt_;
  const ParamStore<T>& ps_;
  LatentCache<T> cache_;
  std::vector<std::vector<T>>* attn_capture_ = nullptr;
  std::unique_ptr<Impl> impl_;
};

}  // namespace um
