// The Pangu-style MoE transformer (design.md 1): embedding, decoder layers with DSSN, MLA and a
// dense or MoE FFN, final norm, LM head, MTP modules, and the loss J of design.md 1.8:
//   J = CE(main) + (lambda/D) sum_k CE^k + alpha sum_l mean_pools B_l + beta_z sum_l mean z^2
// A Model holds parameter offsets and the activation memory for one micro-batch on one device
// (Model<float> and Model<double> on the CPU, Model<float> and Model<bf16> on CUDA); the weights
// live in a ParamStore owned by the caller, so the trainer, the optimizer and checkpoints work on
// the flat buffers directly. Forward and backward of a micro-batch are one call: every loss term
// is already divided by its global count (StepScales), so gradients of micro-batches and ranks
// simply add up (design.md 1.8).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "core/ctx.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/ffn.h"
#include "model/mla.h"
#include "model/params.h"
#include "model/weights.h"

namespace um {

enum class BalanceScope : uint8_t { sequence, micro_batch, ep_group, global };
const char* balance_scope_name(BalanceScope s);
BalanceScope parse_balance_scope(const std::string& s);

// A contiguous piece of the model that one pipeline rank runs for a micro-batch (design.md 4), in
// units: 0 the input embedding, 1..L the main decoder layers 0..L-1, L+1 the tail (final norm,
// LM head and the MTP modules). n_slots micro-batches keep their activations in the chunk at once
// (the pipeline schedule's in-flight count).
struct ChunkSpec {
  int unit_begin = 0, unit_end = -1;  // [begin, end); -1: to the last unit
  int n_slots = 1;
};

struct ModelOptions {
  int64_t micro_batch = 1;         // sequences per forward (the arena is sized for this many)
  int64_t seq_len = 1;             // T
  BalanceScope balance_scope = BalanceScope::micro_batch;
  double capacity_factor = 0;      // 0 = dropless (training only)
  bool aux_free = false;           // use the aux-free bias in selection (noaux_tc implies it)
  MoeComms comms;                  // expert parallelism and cross-rank balance pools (null: local)
  Recompute recompute;             // activations rebuilt in the backward instead of kept
  Device device = Device::cpu;     // where activations live (the ParamStore must be there too)
  std::vector<ChunkSpec> chunks;   // this rank's pieces; empty: the whole model, one slot
};

// Normalisations known before the forward (design.md 1.6-1.8), the same on every micro-batch of a
// step.
struct StepScales {
  double n_main = 1;                // valid main targets in the global batch
  std::vector<double> n_mtp;        // valid depth-k targets in the global batch
  double mtp_lambda = 0;            // lambda; each depth is weighted lambda/D
  double balance_alpha = 0;
  double n_pools = 1;               // balance pools in the step
  double z_coef = 0;                // beta_z
  int64_t n_sequences = 1;          // global sequences in the step (z-loss means)
  bool with_mtp = true;             // false: skip the MTP modules (evaluation, generation)
  // Called during the backward with each range [begin, end) of replicated parameters whose
  // gradients this micro-batch has finished (a layer, the head, the embedding), so the caller
  // can start reducing them while the backward goes on. Null: not called.
  std::function<void(int64_t, int64_t)> on_grads_ready;
};

// What one micro-batch forward produced (sums, not yet normalised, so they add across
// micro-batches and ranks).
struct MicroResult {
  double ce_main = 0;                // sum of -log p over valid main targets
  std::vector<double> ce_mtp;        // per depth
  std::vector<MoeStats> moe;         // per MoE layer, in layer order (MTP layers last)
};

// Optional copies of forward intermediates for tests and debugging (all (rows, ...) row-major).
template <class T>
struct Capture {
  std::vector<T> logits;                   // (B, T, V)
  std::vector<std::vector<T>> mtp_logits;  // (B, T-k, V)
  std::vector<std::vector<T>> hidden;      // output of every decoder layer (MTP: before its head norm)
  std::vector<T> hidden_norm;              // final-norm output
};

template <class T>
class Model {
 public:
  Model(const ModelConfig& c, const ParamTable& table, const ModelOptions& opt);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Runs one micro-batch of windows (B <= options().micro_batch sequences of seq_len + 1 ids).
  // With backward, gradients accumulate into ps.g. The result lives in the model until the next
  // call (no allocation per call).
  // Needs the whole model in one chunk.
  const MicroResult& forward_backward(ParamStore<T>& ps, const int32_t* windows, int64_t B,
                               const StepScales& sc, bool backward, const Ctx& ctx,
                               Capture<T>* capture = nullptr);

  // Pipeline parallelism: one chunk at a time, the activations of micro-batch `slot` kept in the
  // chunk until its backward. A chunk without the embedding reads its input from chunk_input()
  // (the previous virtual stage's output, received there first); a chunk without the tail leaves
  // its output in chunk_output(), and its backward reads the output's gradient from grad(),
  // where it leaves the input's gradient (to send back). `windows` are the micro-batch's token
  // windows (every stage reads positions, document masks and targets from them).
  const MicroResult& forward_chunk(int chunk, int slot, ParamStore<T>& ps, const int32_t* windows, int64_t B,
                                   const StepScales& sc, bool backward, const Ctx& ctx,
                                   Capture<T>* capture = nullptr);
  void backward_chunk(int chunk, int slot, ParamStore<T>& ps, const StepScales& sc, const Ctx& ctx);
  T* chunk_input(int chunk, int slot);   // (B*T, D)
  T* chunk_output(int chunk, int slot);  // (B*T, D)
  T* grad(int chunk, int slot);          // (B*T, D)
  int n_chunks() const;
  int chunk_slots(int chunk) const;  // micro-batches whose activations the chunk can hold at once
  // Whether this rank holds decoder layer `layer` (main or MTP), the embedding, the tail.
  bool owns_layer(int layer) const;

  // Standard deviation over all elements of every main layer's attention and FFN outputs (before
  // their post-norms) in the last forward of B sequences (downloaded to the host).
  void sublayer_output_std(int64_t B, std::vector<double>& attn, std::vector<double>& ffn,
                           const Ctx& ctx) const;

  const ModelConfig& config() const { return cfg_; }
  const ModelOptions& options() const { return opt_; }
  const std::vector<int>& moe_layers() const { return moe_layers_; }
  // Offset of MoE layer moe_layers()[i]'s aux-free bias in the buffer array (-1 when another
  // pipeline rank holds the layer).
  int64_t bias_offset(size_t i) const;
  // Offset of the input embedding (V x D) in the flat buffers; -1 when this rank holds none.
  int64_t embedding_offset() const;
  size_t activation_bytes() const;  // the arenas (kept activations + backward scratch)

 private:
  struct Impl;
  ModelConfig cfg_;
  ModelOptions opt_;
  std::vector<int> moe_layers_;
  std::unique_ptr<Impl> impl_;
};

// DSSN "auto" (design.md 1.2, our experiment): with every post-norm gain at 1, one forward on a
// calibration batch; c = the std of the sub-layer outputs averaged over the main layers, kept
// separately for attention and FFN; then the post gains of all layers (MTP included) start at
// c/sqrt(L). Only the constants configured as "auto" are replaced. Returns (c_attn, c_ffn).
template <class T>
std::pair<double, double> calibrate_dssn(Model<T>& model, ParamStore<T>& ps, const ParamTable& t,
                                         const int32_t* windows, int64_t B, const Ctx& ctx);

}  // namespace um
