#include "train/evaluate.h"

#include <cmath>
#include <vector>

namespace um {

template <class T>
EvalResult evaluate(Model<T>& model, ParamStore<T>& ps, const EvalWindows& windows,
                    int64_t max_windows, const Ctx& ctx) {
  const int64_t T_ = model.options().seq_len, mb = model.options().micro_batch;
  UM_CHECK(windows.seq_len() == T_, "eval", "windows of length ", windows.seq_len(),
           " for a model run at seq_len ", T_);
  const int64_t n = max_windows > 0 ? std::min(max_windows, windows.n_windows()) : windows.n_windows();
  std::vector<int32_t> buf(mb * (T_ + 1));
  StepScales sc;
  sc.n_mtp.assign(model.config().num_nextn_predict_layers, 1.0);
  sc.with_mtp = false;
  EvalResult r;
  double total = 0;
  for (int64_t first = 0; first < n; first += mb) {
    const int64_t B = std::min(mb, n - first);
    for (int64_t b = 0; b < B; ++b) windows.fill(first + b, buf.data() + b * (T_ + 1));
    r.tokens += count_valid_targets(buf.data(), B, T_, 0)[0];
    total += model.forward_backward(ps, buf.data(), B, sc, false, ctx).ce_main;
  }
  r.windows = n;
  r.loss = r.tokens > 0 ? total / double(r.tokens) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

template EvalResult evaluate<float>(Model<float>&, ParamStore<float>&, const EvalWindows&, int64_t, const Ctx&);
template EvalResult evaluate<double>(Model<double>&, ParamStore<double>&, const EvalWindows&, int64_t, const Ctx&);

}  // namespace um
