#include "model/weights.h"

#include "core/rng.h"

namespace um {

template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c,
                 uint64_t seed) {
  const double matrix_std = matrix_init_std(c);
  for (const ParamInfo& p : table.params) {
    T* w = store.w.data() + p.offset;
    if (p.init == InitRule::constant || p.init == InitRule::zeros) {
      std::fill(w, w + p.numel, T(p.init == InitRule::constant ? p.value : 0.0));
      continue;
    }
    // a tied embedding is also the LM head and takes the matrix rule (DESIGN 1.3)
    const bool embedding = p.init == InitRule::embedding && !c.tie_word_embeddings;
    const double std = embedding ? c.init_embedding_std : matrix_std;
    const Philox rng(seed, p.name);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < p.numel; ++i) w[i] = static_cast<T>(std * rng.normal(i));
  }
  std::fill(store.buf.data(), store.buf.data() + store.buf.size(), T(0));
}

template void init_params<float>(ParamStore<float>&, const ParamTable&, const ModelConfig&, uint64_t);
template void init_params<double>(ParamStore<double>&, const ParamTable&, const ModelConfig&, uint64_t);

}  // namespace um
