// Plain generation by full recomputation: every new token re-runs the whole sequence through
// the training forward (no KV cache). Correct and simple; the cached, absorbed-MLA decoder is the
// fast path. Prompts get BOS prepended (DESIGN 1.9); generation stops at EOS, at max_new_tokens,
// or when the model's context (its seq_len) is full.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace um {

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt)
  bool hit_eos = false;
  bool hit_context = false;
};

// on_token (optional) is called with each new id as it is produced (for streaming output).
template <class T>
GenerateResult generate_full_recompute(Model<T>& model, ParamStore<T>& ps,
                                       const std::vector<int32_t>& prompt_with_bos,
                                       int64_t max_new_tokens, const SamplingParams& sp,
                                       const Ctx& ctx,
                                       const std::function<void(int32_t)>& on_token = {});

}  // namespace um
