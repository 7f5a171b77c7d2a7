// The latent KV cache of MLA decoding (design.md 1.4, 1.9) and the per-sequence state beside it.
// For every decoder layer — the L main layers, then one per MTP module kept for speculative
// decoding — and every sequence slot, each cached token holds ONE row of kv_lora + rope values:
//   [ ckv (kv_lora): RMSNorm_kva of the compressed KV ; k_pe (rope): the shared RoPE key, rotated ]
// Nothing per head is cached: the per-head k_nope and v are ckv Wkv_b, which decoding never forms
// (Wkv_b is absorbed into the query and output paths, infer/decoder.h). Keeping ckv and k_pe in
// one row makes the attention of all heads one GEMM against the same key matrix (MQA-shaped).
//
// Beside the rows, per slot: the token ids fed to the main model so far, the document start of
// every position (positions restart after EOS and attention stops at document starts, exactly as
// in training, design.md 1.8), the main cached length, and the cached length of each MTP module
// (MTP module k at position j needs token j+k, so its cache trails the main one).
// Storage is allocated once for (slots, max_context); nothing grows while decoding.
// Not here: the attention math (decoder.cpp), sampling, the MTP hidden-state history (decoder).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace um {

template <class T>
class LatentCache {
 public:
  LatentCache() = default;
  // n_layers cache layers (main layers, then the MTP layers kept), slots sequences of up to
  // max_context tokens each.
  LatentCache(const ModelConfig& c, int64_t n_layers, int64_t slots, int64_t max_context);

  int64_t slots() const { return slots_; }
  int64_t max_context() const { return max_context_; }
  int64_t n_layers() const { return n_layers_; }
  int64_t width() const { return width_; }  // kv_lora + rope values per token per layer
  int64_t kv_lora() const { return kv_lora_; }

  // (max_context, width) rows of one layer and slot; row i is position i of that sequence.
  T* rows(int64_t layer, int64_t slot) { return data_.data() + (layer * slots_ + slot) * max_context_ * width_; }
  const T* rows(int64_t layer, int64_t slot) const {
    return data_.data() + (layer * slots_ + slot) * max_context_ * width_;
  }

  // --- per-slot sequence state ---
  int64_t length(int64_t slot) const { return length_[slot]; }  // main positions cached
  int64_t mtp_length(int64_t k, int64_t slot) const { return mtp_length_[(k - 1) * slots_ + slot]; }
  void set_mtp_length(int64_t k, int64_t slot, int64_t n) { mtp_length_[(k - 1) * slots_ + slot] = n; }
  const int32_t* tokens(int64_t slot) const { return tokens_.data() + slot * max_context_; }
  // First position of the document that position i belongs to (its attention window start).
  int32_t seg_start(int64_t slot, int64_t i) const { return seg_start_[slot * max_context_ + i]; }
  // RoPE position of position i: its distance from the document start.
  int32_t rope_pos(int64_t slot, int64_t i) const { return int32_t(i - seg_start(slot, i)); }

  // Appends ids at the slot's length (their document starts follow the EOS rule) and returns the
  // first new position. An error when the slot would pass max_context.
  int64_t append(int64_t slot, const int32_t* ids, int64_t n);
  // Drops main positions >= n (rejected drafts); MTP lengths are clamped to n.
  void truncate(int64_t slot, int64_t n);
  void clear(int64_t slot) { truncate(slot, 0); }

  // Bytes of the rows (all layers and slots) and of one token's rows over all cache layers.
  size_t bytes() const { return static_cast<size_t>(data_.size()) * sizeof(T); }
  int64_t bytes_per_token() const { return n_layers_ * width_ * int64_t(sizeof(T)); }

 private:
  int64_t n_layers_ = 0, slots_ = 0, max_context_ = 0, width_ = 0, kv_lora_ = 0;
  int64_t mtp_modules_ = 0;
  AlignedArray<T> data_;            // (n_layers, slots, max_context, width)
  std::vector<int64_t> length_;     // (slots)
  std::vector<int64_t> mtp_length_; // (mtp modules, slots)
  std::vector<int32_t> tokens_;     // (slots, max_context)
  std::vector<int32_t> seg_start_;  // (slots, max_context)
};

// Cache sizes per token over the L main layers (MTP excluded), in bytes of elem_bytes-wide values:
//   latent (MLA):         L * (kv_lora + rope)
//   uncompressed MHA:     L * H * (d_qk + d_v)       K of every head (nope + rope) and V of every
//                                                    head, what a standard multi-head cache holds
int64_t latent_cache_bytes_per_token(const ModelConfig& c, int64_t elem_bytes);
int64_t mha_cache_bytes_per_token(const ModelConfig& c, int64_t elem_bytes);

}  // namespace um
