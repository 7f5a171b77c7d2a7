#include "train/pipeline.h"

#include <algorithm>

#include "core/error.h"

namespace um {

PipelineLayout PipelineLayout::make(const ModelConfig& c, const ParallelConfig& p) {
  PipelineLayout pl;
  pl.pp = int(p.pp);
  pl.vpp = int(p.vpp);
  const int V = pl.n_virtual(), L = int(c.num_hidden_layers);
  std::vector<int64_t> n(V, 0);
  if (!p.pp_layers.empty()) {
    UM_CHECK(int(p.pp_layers.size()) == V, "config", "parallel.pp_layers: ", p.pp_layers.size(),
             " numbers for pp x vpp = ", V, " virtual stages");
    n = p.pp_layers;
    UM_CHECK(p.mtp_stage != "own" || n.back() == 0, "config", "parallel.mtp_stage \"own\" gives the tail a virtual stage "
             "of its own: the last number of parallel.pp_layers must be 0, got ", n.back());
  } else {
    const int with_layers = p.mtp_stage == "own" ? V - 1 : V;
    UM_CHECK(with_layers >= 1 && L >= with_layers, "config", "parallel.pp x vpp = ", V, " virtual stages",
             p.mtp_stage == "own" ? " (the last one the tail's own)" : "", " for ", L,
             " layers: every virtual stage needs at least one layer (or give parallel.pp_layers)");
    for (int v = 0; v < with_layers; ++v) n[v] = L / with_layers + (v < L % with_layers ? 1 : 0);
  }
  int64_t sum = 0;
  for (int64_t x : n) sum += x;
  UM_CHECK(sum == L, "config", "parallel.pp_layers sums to ", sum, ", the model has ", L, " layers");
  int u = 0;
  for (int v = 0; v < V; ++v) {
    const int begin = v == 0 ? 0 : u;
    int end = (v == 0 ? 1 : u) + int(n[v]);
    if (v == V - 1) end = L + 2;  // + the tail
    UM_CHECK(end > begin, "config", "parallel.pp_layers: virtual stage ", v,
             " would hold nothing (only the first and the last may have no main layers: they hold the embedding and "
             "the tail)");
    pl.units.push_back({begin, end});
    u = end;
  }
  return pl;
}

StageContents PipelineLayout::contents(const ModelConfig& c, int stage) const {
  StageContents s;
  const int L = int(c.num_hidden_layers);
  s.embedding = s.tail = false;
  s.layers.assign(c.n_layers_total(), false);
  for (int ch = 0; ch < vpp; ++ch) {
    const auto [b, e] = units[virtual_stage(pp, ch, stage)];
    for (int u = b; u < e; ++u) {
      if (u == 0) s.embedding = true;
      else if (u <= L) s.layers[u - 1] = true;
      else {
        s.tail = true;
        for (int l = L; l < c.n_layers_total(); ++l) s.layers[l] = true;
      }
    }
  }
  return s;
}

std::vector<ChunkSpec> PipelineLayout::chunks(int stage, int64_t micro_batches) const {
  const std::vector<PipeAction> sched = pipeline_schedule(pp, vpp, micro_batches, stage);
  std::vector<ChunkSpec> out;
  for (int ch = 0; ch < vpp; ++ch) {
    std::vector<PipeAction> mine;
    for (const PipeAction& a : sched)
      if (a.chunk == ch) mine.push_back(a);
    const auto [b, e] = units[virtual_stage(pp, ch, stage)];
    out.push_back({b, e, int(schedule_peak_in_flight(mine))});
  }
  return out;
}

std::vector<int> PipelineLayout::layers_per_virtual_stage(const ModelConfig& c) const {
  const int L = int(c.num_hidden_layers);
  std::vector<int> out;
  for (const auto& [b, e] : units) out.push_back(std::min(e, L + 1) - std::max(b, 1));
  return out;
}

template <class T>
void pipeline_run(Model<T>& model, ParamStore<T>& ps, const int32_t* windows, int64_t m, int64_t n_micro,
                  const StepScales& sc, bool backward, Comm& pipe, PipelineScratch& s, const Ctx& ctx,
                  const std::function<void(int64_t, const MicroResult&)>& on_result) {
  const int pp = pipe.size(), stage = pipe.rank(), vpp = model.n_chunks(), V = pp * vpp;
  const int64_t T1 = model.options().seq_len + 1, D = model.config().hidden_size;
  const int64_t count = m * (T1 - 1) * D;  // one micro-batch's residual stream
  const DType dt = dtype_of<T>();
  const int64_t n_entries = backward ? n_micro : -n_micro;  // forward-only runs keep their own order
  if (s.pp != pp || s.vpp != vpp || s.stage != stage || s.micro_batches != n_entries) {
    s.pp = pp, s.vpp = vpp, s.stage = stage, s.micro_batches = n_entries;
    if (backward) {
      s.schedule = pipeline_schedule(pp, vpp, n_micro, stage);
    } else {  // micro-batch after micro-batch, each through this rank's chunks in order
      s.schedule.clear();
      for (int64_t i = 0; i < n_micro; ++i)
        for (int ch = 0; ch < vpp; ++ch) s.schedule.push_back({true, ch, int(i)});
    }
    s.slot_of.assign(vpp, std::vector<int>(n_micro, -1));
    s.free_slots.assign(vpp, {});
  }
  for (int ch = 0; ch < vpp; ++ch) {
    s.free_slots[ch].clear();
    for (int k = model.chunk_slots(ch) - 1; k >= 0; --k) s.free_slots[ch].push_back(k);
  }
  const int64_t bytes = count * int64_t(sizeof(T));
  auto send = [&](const T* src, int dst, int tag) {
    PipelineScratch::Outgoing* o = nullptr;
    for (PipelineScratch::Outgoing& x : s.outgoing)
      if (x.req.test()) {
        o = &x;
        break;
      }
    if (!o) {
      s.outgoing.emplace_back();
      o = &s.outgoing.back();
    }
    if (o->buf.size() < bytes) o->buf = DeviceBuffer<std::byte>(bytes, ctx.device);
    T* staged = reinterpret_cast<T*>(o->buf.data());
    ctx.copy(staged, src, size_t(count));
    ctx.synchronize();
    o->req = pipe.isend(staged, count, dt, dst, tag);
  };
  // tags: the direction and the virtual stage that receives
  auto tag = [&](bool forward, int v) { return (forward ? 0 : V) + v; };

  for (const PipeAction& a : s.schedule) {
    const int v = virtual_stage(pp, a.chunk, stage);
    const int64_t i = a.micro;
    if (a.forward) {
      UM_CHECK(!s.free_slots[a.chunk].empty(), "pipeline", "chunk ", a.chunk, " has no free activation slot for micro-batch ",
               i, " (the schedule keeps more in flight than the model was sized for)");
      const int slot = s.free_slots[a.chunk].back();
      s.free_slots[a.chunk].pop_back();
      s.slot_of[a.chunk][i] = slot;
      if (v > 0) {
        PhaseTimer timer(ctx.prof, Phase::communication);
        pipe.recv(model.chunk_input(a.chunk, slot), count, dt, rank_of_virtual(pp, v - 1), tag(true, v));
      }
      const MicroResult& r = model.forward_chunk(a.chunk, slot, ps, windows + i * m * T1, m, sc, backward, ctx);
      if (on_result) on_result(i, r);
      if (v + 1 < V) send(model.chunk_output(a.chunk, slot), rank_of_virtual(pp, v + 1), tag(true, v + 1));
      if (!backward) s.free_slots[a.chunk].push_back(slot);
    } else {
      const int slot = s.slot_of[a.chunk][i];
      if (v + 1 < V) {
        PhaseTimer timer(ctx.prof, Phase::communication);
        pipe.recv(model.grad(a.chunk, slot), count, dt, rank_of_virtual(pp, v + 1), tag(false, v));
      }
      model.backward_chunk(a.chunk, slot, ps, sc, ctx);
      if (v > 0) send(model.grad(a.chunk, slot), rank_of_virtual(pp, v - 1), tag(false, v - 1));
      s.free_slots[a.chunk].push_back(slot);
    }
  }
  PhaseTimer timer(ctx.prof, Phase::communication);
  for (PipelineScratch::Outgoing& o : s.outgoing) o.req.wait();
}

#define UM_INSTANTIATE(T)                                                                                      \
  template void pipeline_run<T>(Model<T>&, ParamStore<T>&, const int32_t*, int64_t, int64_t, const StepScales&, \
                                bool, Comm&, PipelineScratch&, const Ctx&,                                     \
                                const std::function<void(int64_t, const MicroResult&)>&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
UM_INSTANTIATE(bf16)
#undef UM_INSTANTIATE

}  // namespace um
