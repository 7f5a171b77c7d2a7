#include "infer/kv_cache.h"

#include <algorithm>

#include "model/batch.h"

namespace um {

template <class T>
LatentCache<T>::LatentCache(const ModelConfig& c, int64_t n_layers, int64_t slots, int64_t max_context)
    : n_layers_(n_layers), slots_(slots), max_context_(max_context),
      width_(c.kv_lora_rank + c.qk_rope_head_dim), kv_lora_(c.kv_lora_rank),
      mtp_modules_(n_layers - c.num_hidden_layers),
      data_(n_layers * slots * max_context * (c.kv_lora_rank + c.qk_rope_head_dim)),
      length_(slots, 0), mtp_length_(std::max<int64_t>(n_layers - c.num_hidden_layers, 0) * slots, 0),
      tokens_(slots * max_context, kPadId), seg_start_(slots * max_context, 0) {
  UM_CHECK(slots >= 1, "infer", "the cache needs at least one sequence slot, got ", slots);
  UM_CHECK(max_context >= 1, "infer", "the cache needs a context of at least one token, got ", max_context);
  UM_CHECK(n_layers >= c.num_hidden_layers && n_layers <= c.n_layers_total(), "infer", "cache of ",
           n_layers, " layers for a model of ", c.num_hidden_layers, " main and ",
           c.num_nextn_predict_layers, " MTP layers");
}

template <class T>
int64_t LatentCache<T>::append(int64_t slot, const int32_t* ids, int64_t n) {
  UM_CHECK(slot >= 0 && slot < slots_, "infer", "sequence slot ", slot, " out of range [0, ", slots_, ")");
  const int64_t first = length_[slot];
  UM_CHECK(first + n <= max_context_, "infer", "sequence slot ", slot, " would hold ", first + n,
           " tokens, more than the context of ", max_context_);
  int32_t* tok = tokens_.data() + slot * max_context_;
  int32_t* seg = seg_start_.data() + slot * max_context_;
  for (int64_t i = first; i < first + n; ++i) {
    tok[i] = ids[i - first];
    // a document is a maximal run ending with EOS: the position after an EOS starts a new one
    seg[i] = i == 0 ? 0 : (tok[i - 1] == kEosId ? int32_t(i) : seg[i - 1]);
  }
  length_[slot] = first + n;
  return first;
}

template <class T>
void LatentCache<T>::truncate(int64_t slot, int64_t n) {
  UM_CHECK(slot >= 0 && slot < slots_, "infer", "sequence slot ", slot, " out of range [0, ", slots_, ")");
  UM_CHECK(n >= 0 && n <= length_[slot], "infer", "cannot truncate slot ", slot, " of length ",
           length_[slot], " to ", n);
  length_[slot] = n;
  for (int64_t k = 0; k < mtp_modules_; ++k)
    mtp_length_[k * slots_ + slot] = std::min(mtp_length_[k * slots_ + slot], n);
}

int64_t latent_cache_bytes_per_token(const ModelConfig& c, int64_t elem_bytes) {
  return c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * elem_bytes;
}

int64_t mha_cache_bytes_per_token(const ModelConfig& c, int64_t elem_bytes) {
  return c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim) * elem_bytes;
}

template class LatentCache<float>;
template class LatentCache<double>;

}  // namespace um
