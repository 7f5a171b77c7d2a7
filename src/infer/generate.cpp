#include "infer/generate.h"

#include "model/batch.h"

namespace um {

template <class T>
GenerateResult generate_full_recompute(Model<T>& model, ParamStore<T>& ps,
                                       const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                       const SamplingParams& sp, const Ctx& ctx,
                                       const std::function<void(int32_t)>& on_token) {
  const int64_t T_ = model.options().seq_len, V = model.config().vocab_size;
  UM_CHECK(!prompt.empty(), "sample", "empty prompt");
  UM_CHECK(int64_t(prompt.size()) <= T_, "sample", "the prompt has ", prompt.size(),
           " tokens (with BOS) but the model's context is ", T_);
  // one window of T+1 ids; positions past the sequence hold PAD, which causal attention never
  // lets the real positions see
  std::vector<int32_t> window(T_ + 1, kPadId);
  std::copy(prompt.begin(), prompt.end(), window.begin());
  int64_t len = int64_t(prompt.size());
  StepScales sc;
  sc.n_mtp.assign(model.config().num_nextn_predict_layers, 1.0);
  sc.with_mtp = false;
  Capture<T> cap;
  std::vector<std::pair<double, int32_t>> scratch;
  GenerateResult r;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    if (len > T_) {  // the next token would need position T
      r.hit_context = true;
      break;
    }
    model.forward_backward(ps, window.data(), 1, sc, false, ctx, &cap);
    const int32_t next = sample_token<T>(cap.logits.data() + (len - 1) * V, V, sp, 0, len, scratch);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
    if (next == kEosId) {
      r.hit_eos = true;
      break;
    }
    window[len++] = next;
  }
  return r;
}

template GenerateResult generate_full_recompute<float>(Model<float>&, ParamStore<float>&, const std::vector<int32_t>&,
                                                       int64_t, const SamplingParams&, const Ctx&,
                                                       const std::function<void(int32_t)>&);
template GenerateResult generate_full_recompute<double>(Model<double>&, ParamStore<double>&, const std::vector<int32_t>&,
                                                        int64_t, const SamplingParams&, const Ctx&,
                                                        const std::function<void(int32_t)>&);

}  // namespace um
