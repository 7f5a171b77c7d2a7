#include "model/weights.h"

#include <vector>

#include "core/rng.h"
#include "ops/elementwise.h"

namespace um {

template <class T>
void ParamStore<T>::sync_compute(const Ctx& ctx) {
  if constexpr (kHasComputeCopy) cast_from_acc<T>(wc.data(), w.data(), w.size(), false, ctx);
}

namespace {

template <class A>
void init_values(A* w, const ParamTable& table, const ModelConfig& c, uint64_t seed) {
  const double matrix_std = matrix_init_std(c);
  for (const ParamInfo& p : table.params) {
    A* x = w + p.offset;
    if (p.init == InitRule::constant || p.init == InitRule::zeros) {
      std::fill(x, x + p.numel, A(p.init == InitRule::constant ? p.value : 0.0));
      continue;
    }
    // a tied embedding is also the LM head and takes the matrix rule (design.md 1.3)
    const bool embedding = p.init == InitRule::embedding && !c.tie_word_embeddings;
    const double std = embedding ? c.init_embedding_std : matrix_std;
    const Philox rng(seed, p.name);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < p.numel; ++i) x[i] = static_cast<A>(std * rng.normal(i));
  }
}

}  // namespace

template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c,
                 uint64_t seed, const Ctx& ctx) {
  using A = acc_t<T>;
  if (store.device() == Device::cpu) {
    init_values(store.w.data(), table, c, seed);
  } else {
    std::vector<A> host(size_t(store.w.size()), A(0));
    init_values(host.data(), table, c, seed);
    ctx.upload(store.w.data(), host.data(), host.size());
  }
  ctx.zero(store.buf.data(), size_t(store.buf.size()));
  store.sync_compute(ctx);
}

template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c, uint64_t seed) {
  UM_CHECK(store.device() == Device::cpu, "init", "a device store needs a Ctx");
  Workspace ws;
  init_params(store, table, c, seed, Ctx::cpu(&ws));
}

template <class T>
void download_state(const ParamStore<T>& ps, ParamStore<acc_t<T>>& host, const Ctx& ctx) {
  UM_CHECK(host.w.size() == ps.w.size() && host.m.size() == ps.m.size() && host.buf.size() == ps.buf.size(),
           "params", "host and device stores differ in size");
  ctx.download(host.w.data(), ps.w.data(), size_t(ps.w.size()));
  ctx.download(host.m.data(), ps.m.data(), size_t(ps.m.size()));
  ctx.download(host.v.data(), ps.v.data(), size_t(ps.v.size()));
  ctx.download(host.buf.data(), ps.buf.data(), size_t(ps.buf.size()));
}

template <class T>
void upload_state(ParamStore<T>& ps, const ParamStore<acc_t<T>>& host, const Ctx& ctx) {
  UM_CHECK(host.w.size() == ps.w.size() && host.m.size() == ps.m.size() && host.buf.size() == ps.buf.size(),
           "params", "host and device stores differ in size");
  ctx.upload(ps.w.data(), host.w.data(), size_t(ps.w.size()));
  ctx.upload(ps.m.data(), host.m.data(), size_t(ps.m.size()));
  ctx.upload(ps.v.data(), host.v.data(), size_t(ps.v.size()));
  ctx.upload(ps.buf.data(), host.buf.data(), size_t(ps.buf.size()));
  ps.sync_compute(ctx);
  ctx.synchronize();
}

template void download_state<float>(const ParamStore<float>&, ParamStore<float>&, const Ctx&);
template void download_state<bf16>(const ParamStore<bf16>&, ParamStore<float>&, const Ctx&);
template void upload_state<float>(ParamStore<float>&, const ParamStore<float>&, const Ctx&);
template void upload_state<bf16>(ParamStore<bf16>&, const ParamStore<float>&, const Ctx&);

template struct ParamStore<float>;
template struct ParamStore<double>;
template struct ParamStore<bf16>;
template void init_params<float>(ParamStore<float>&, const ParamTable&, const ModelConfig&, uint64_t, const Ctx&);
template void init_params<double>(ParamStore<double>&, const ParamTable&, const ModelConfig&, uint64_t, const Ctx&);
template void init_params<bf16>(ParamStore<bf16>&, const ParamTable&, const ModelConfig&, uint64_t, const Ctx&);
template void init_params<float>(ParamStore<float>&, const ParamTable&, const ModelConfig&, uint64_t);
template void init_params<double>(ParamStore<double>&, const ParamTable&, const ModelConfig&, uint64_t);

}  // namespace um
