#include "train/checkpoint.h"

#include "train/pipeline.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/failpoint.h"
#include "core/safetensors.h"
#include "parallel/comm.h"

namespace um {

namespace fs = std::filesystem;

namespace {

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  UM_CHECK(fd >= 0, "checkpoint", "cannot open ", path, " to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  UM_CHECK(rc == 0, "checkpoint", "fsync of ", path, " failed: ", std::strerror(err));
}

void write_text(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    UM_CHECK(f.good(), "checkpoint", "cannot create ", path);
    f << text;
    f.flush();
    UM_CHECK(f.good(), "checkpoint", "writing ", path, " failed (disk full?)");
  }
  fsync_path(path, false);
}

bool is_step_dir(const std::string& name) {
  return name.size() == 12 && name.rfind("step_", 0) == 0 &&
         std::all_of(name.begin() + 5, name.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

}  // namespace

json TrainerState::to_json() const {
  return {{"step", step}, {"adam_step", adam_step}, {"data", data}, {"spikes", spikes},
          {"counters", counters}};
}

TrainerState TrainerState::from_json(const json& j, const std::string& where) {
  UM_CHECK(j.is_object() && j.contains("step") && j.contains("adam_step"), "checkpoint", where,
           ": trainer_state.json lacks step/adam_step");
  TrainerState s;
  s.step = j["step"].get<int64_t>();
  s.adam_step = j["adam_step"].get<int64_t>();
  s.data = j.value("data", json::object());
  s.spikes = j.value("spikes", json::object());
  s.counters = j.value("counters", json::object());
  return s;
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%07lld", static_cast<long long>(step));
  return buf;
}

json hf_config_json(const ModelConfig& c) {
  json j = model_config_to_json(c);
  j["architectures"] = {"UltramoeForCausalLM"};
  j["model_type"] = "ultramoe";
  return j;
}

namespace {

// One tensor to save: weights, and the Adam moments (null for buffers).
struct SavedTensor {
  std::string name;
  Shape shape;
  const float *w, *m, *v;
};

// The non-expert tensors (replicated parameters, then buffers) are shared out among the shard
// writers in table order, by bytes, so that every writer and rank 0 (which writes the index)
// agree on the assignment without talking. Returns the shard of each, in that order.
std::vector<int> dense_shards(const ParamTable& t, int n_shards) {
  std::vector<int64_t> sizes;
  for (const ParamInfo& p : t.params)
    if (p.expert < 0) sizes.push_back(p.numel);
  for (const BufferInfo& b : t.buffers) sizes.push_back(b.numel);
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  std::vector<int> shard;
  int64_t before = 0;
  for (int64_t n : sizes) {
    shard.push_back(total > 0 ? int((before * n_shards) / total) : 0);
    before += n;
  }
  return shard;
}

std::string model_file(int shard, int n_shards) {
  return n_shards == 1 ? "model.safetensors" : shard_file_name("model", shard + 1, n_shards);
}
std::string optimizer_file(int shard, int n_shards) {
  return n_shards == 1 ? "optimizer.safetensors" : shard_file_name("optimizer", shard + 1, n_shards);
}

// Writes one shard's weight and moment files into dir.
void write_shard_files(const std::string& dir, const std::vector<SavedTensor>& items, int shard, int n_shards,
                       int64_t adam_step) {
  SafetensorsWriter model, opt;
  for (const auto& it : items) {
    model.add(it.name, DType::f32, it.shape, it.w);
    if (it.m) {
      opt.add(it.name + ".exp_avg", DType::f32, it.shape, it.m);
      opt.add(it.name + ".exp_avg_sq", DType::f32, it.shape, it.v);
    }
  }
  model.set_metadata("format", "pt");
  model.write(dir + "/" + model_file(shard, n_shards), true);
  failpoint_kill("checkpoint.after_model");
  opt.set_metadata("adam_step", std::to_string(adam_step));
  opt.write(dir + "/" + optimizer_file(shard, n_shards), true);
}

// The index files of a sharded checkpoint (rank 0): every tensor of the full model by name, in
// the shard its writer put it in (the writers' rule replayed for every pipeline stage).
void write_checkpoint_indexes(const std::string& dir, const RunConfig& rc, int ep, int pp) {
  const ModelConfig& mc = rc.model;
  const int n_shards = pp * ep;
  UM_CHECK(pp == 1 || pp == rc.parallel.pp, "checkpoint", "written by ", pp, " pipeline stages, the config has parallel.pp=",
           rc.parallel.pp);
  const PipelineLayout pl = pp > 1 ? PipelineLayout::make(mc, rc.parallel) : PipelineLayout{};
  const int64_t per_shard = mc.n_routed_experts / ep;
  std::map<std::string, std::string> wmap, omap;
  uint64_t wbytes = 0, obytes = 0;
  for (int stage = 0; stage < pp; ++stage) {
    StageContents contents;
    if (pp > 1) contents = pl.contents(mc, stage);
    const ParamTable t = build_param_table(mc, 0, 1, 1, pp > 1 ? &contents : nullptr);
    const std::vector<int> dense = dense_shards(t, ep);
    size_t k = 0;
    for (const ParamInfo& p : t.params) {
      const int shard = stage * ep + (p.expert >= 0 ? int(p.expert / per_shard) : dense[k++]);
      if (stage > 0 && p.component == Component::embedding) continue;  // the first stage's copy
      wmap[p.name] = model_file(shard, n_shards);
      omap[p.name + ".exp_avg"] = omap[p.name + ".exp_avg_sq"] = optimizer_file(shard, n_shards);
      wbytes += uint64_t(p.numel) * 4;
      obytes += uint64_t(p.numel) * 8;
    }
    for (const BufferInfo& b : t.buffers) {
      wmap[b.name] = model_file(stage * ep + dense[k++], n_shards);
      wbytes += uint64_t(b.numel) * 4;
    }
  }
  write_safetensors_index(dir + "/model.safetensors.index.json", wmap, wbytes, true);
  write_safetensors_index(dir + "/optimizer.safetensors.index.json", omap, obytes, true);
}

// Rank 0, after every shard is written: the small files, then the atomic rename.
std::string finish_checkpoint_dir(const std::string& root, const std::string& tmp, const RunConfig& rc,
                                  const TrainerState& state, const std::string& tokenizer_path, int ep, int pp) {
  const int n_shards = ep * pp;
  std::error_code ec;
  const std::string final_dir = root + "/" + checkpoint_name(state.step);
  if (n_shards > 1) write_checkpoint_indexes(tmp, rc, ep, pp);
  write_text(tmp + "/config.json", hf_config_json(rc.model).dump(2) + "\n");
  write_text(tmp + "/ultramoe.json", rc.to_json().dump(2) + "\n");
  write_text(tmp + "/trainer_state.json", state.to_json().dump(2) + "\n");
  if (!tokenizer_path.empty()) {
    fs::copy_file(tokenizer_path, tmp + "/tokenizer.model", fs::copy_options::overwrite_existing, ec);
    UM_CHECK(!ec, "checkpoint", "copying ", tokenizer_path, ": ", ec.message());
    fsync_path(tmp + "/tokenizer.model", false);
  }
  fsync_path(tmp, true);
  // replace an existing checkpoint of the same step only once the new one is complete
  if (fs::exists(final_dir)) {
    const std::string old = final_dir + ".old";
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    UM_CHECK(!ec, "checkpoint", "cannot move aside ", final_dir, ": ", ec.message());
    fs::rename(tmp, final_dir, ec);
    UM_CHECK(!ec, "checkpoint", "cannot rename ", tmp, ": ", ec.message());
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir, ec);
    UM_CHECK(!ec, "checkpoint", "cannot rename ", tmp, " to ", final_dir, ": ", ec.message());
  }
  fsync_path(root, true);
  return final_dir;
}

template <class T>
std::vector<float> to_f32(const T* p, int64_t n) {
  return std::vector<float>(p, p + n);
}

}  // namespace

template <class T>
std::string save_checkpoint(const std::string& root, const RunConfig& rc, const ParamTable& table,
                            const ParamStore<T>& ps, const Optimizer& opt, const TrainerState& state,
                            const std::string& tokenizer_path, const StepGroups& g) {
  // g.world: the data-parallel ranks of this rank's pipeline stage (the job without pipelining)
  Comm* all = g.everyone();
  const int rank = all ? all->rank() : 0, ep = g.ep_size();
  const bool multi = all && all->size() > 1;
  const int64_t n = table.n_elements, n_rep = table.n_replicated;
  // every rank learns whether any rank failed; the first error is rethrown where it happened
  std::exception_ptr error;
  auto agree = [&](const char* what) {
    if (!multi) {
      if (error) std::rethrow_exception(error);
      return;
    }
    int64_t failed = error ? 1 : 0;
    all->all_reduce(&failed, 1, DType::i64, ReduceOp::max);
    if (error) std::rethrow_exception(error);
    if (failed) fail("checkpoint", "another rank failed ", what, " of step ", state.step);
  };
  // 1. every element's moments for this rank's table (ZeRO-1 keeps only a shard)
  std::vector<float> w = to_f32(ps.w.data(), n), m(n, 0.0f), v(n, 0.0f);
  if (!opt.zero) {
    m = to_f32(ps.m.data(), n);
    v = to_f32(ps.v.data(), n);
  } else {
    const int64_t dchunk = opt.dense_end - opt.dense_begin, echunk = opt.expert_end - opt.expert_begin;
    std::vector<float> md = to_f32(ps.m.data(), dchunk), vd = to_f32(ps.v.data(), dchunk);
    std::vector<float> me = to_f32(ps.m.data() + dchunk, echunk), ve = to_f32(ps.v.data() + dchunk, echunk);
    if (g.world && g.world->size() > 1) {
      g.world->all_gather(md.data(), m.data(), dchunk, DType::f32);
      g.world->all_gather(vd.data(), v.data(), dchunk, DType::f32);
    } else {
      std::copy(md.begin(), md.end(), m.begin());
      std::copy(vd.begin(), vd.end(), v.begin());
    }
    if (g.edp && g.edp->size() > 1) {
      g.edp->all_gather(me.data(), m.data() + n_rep, echunk, DType::f32);
      g.edp->all_gather(ve.data(), v.data() + n_rep, echunk, DType::f32);
    } else {
      std::copy(me.begin(), me.end(), m.begin() + n_rep);
      std::copy(ve.begin(), ve.end(), v.begin() + n_rep);
    }
  }
  // 2. rank 0 makes the temporary directory (--out is on a filesystem every rank sees)
  const std::string tmp = root + "/" + checkpoint_name(state.step) + ".tmp";
  if (rank == 0) {
    try {
      std::error_code ec;
      fs::create_directories(root, ec);
      UM_CHECK(!ec, "checkpoint", "cannot create ", root, ": ", ec.message());
      fs::remove_all(tmp, ec);
      fs::create_directory(tmp, ec);
      UM_CHECK(!ec, "checkpoint", "cannot create ", tmp, ": ", ec.message());
    } catch (...) {
      error = std::current_exception();
    }
  }
  agree("creating the directory");
  // 3. the ranks of EP group 0 of each pipeline stage hold the stage's experts once: EP rank q of
  // stage s writes shard s*ep + q, its experts and its share of the stage's replicated tensors
  // (the embedding once: the last stage's copy is the first one's). Nothing is gathered to rank 0.
  const int q = g.world_rank(), n_shards = g.pp_size() * ep, shard = g.pp_rank() * ep + q;
  const bool copy_of_embedding = g.pp_size() > 1 && g.pp_rank() > 0;
  if (q < ep) {
    try {
      std::vector<float> buf = to_f32(ps.buf.data(), table.n_buffer_elements);
      const std::vector<int> dense = dense_shards(table, ep);
      std::vector<SavedTensor> items;
      size_t k = 0;
      for (const ParamInfo& p : table.params) {
        const bool mine = p.expert >= 0 ? true : dense[k++] == q;
        if (copy_of_embedding && p.component == Component::embedding) continue;
        if (mine) items.push_back({p.name, p.shape, w.data() + p.offset, m.data() + p.offset, v.data() + p.offset});
      }
      for (const BufferInfo& b : table.buffers)
        if (dense[k++] == q) items.push_back({b.name, {b.numel}, buf.data() + b.offset, nullptr, nullptr});
      write_shard_files(tmp, items, shard, n_shards, state.adam_step);
    } catch (...) {
      error = std::current_exception();
    }
  }
  agree("writing its shard");
  // 4. rank 0 writes the rest and renames the directory into place
  std::string dir = root + "/" + checkpoint_name(state.step);
  if (rank == 0) {
    try {
      dir = finish_checkpoint_dir(root, tmp, rc, state, tokenizer_path, ep, g.pp_size());
    } catch (...) {
      error = std::current_exception();
    }
  }
  agree("finishing the checkpoint");
  return dir;
}

template <class T>
std::string save_checkpoint(const std::string& root, const RunConfig& rc, const ParamTable& table,
                            const ParamStore<T>& ps, const TrainerState& state,
                            const std::string& tokenizer_path) {
  return save_checkpoint<T>(root, rc, table, ps, Optimizer::full(table, false), state, tokenizer_path,
                            StepGroups{});
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory() && is_step_dir(e.path().filename().string())) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string latest_checkpoint(const std::string& root) {
  auto all = list_checkpoints(root);
  return all.empty() ? "" : all.back();
}

void prune_checkpoints(const std::string& root, int64_t keep) {
  auto all = list_checkpoints(root);
  std::error_code ec;
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i], ec);
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 4 && n.substr(n.size() - 4) == ".tmp") fs::remove_all(e.path(), ec);
  }
}

RunConfig read_checkpoint_config(const std::string& dir) {
  UM_CHECK(fs::is_directory(dir), "checkpoint", dir, " is not a checkpoint directory");
  for (const char* f : {"config.json", "ultramoe.json", "trainer_state.json"})
    UM_CHECK(fs::exists(dir + "/" + f), "checkpoint", dir, " is missing ", f);
  UM_CHECK(SafetensorsSet::exists(dir, "model"), "checkpoint", dir,
           " is missing model.safetensors (or model.safetensors.index.json)");
  const json run = read_json_file(dir + "/ultramoe.json", "checkpoint");
  RunConfig rc = parse_run_config(run);
  json hf = read_json_file(dir + "/config.json", "checkpoint");
  const ModelConfig from_hf = parse_model_config(hf, "config.json");
  const json a = model_config_to_json(from_hf), b = model_config_to_json(rc.model);
  for (auto it = b.begin(); it != b.end(); ++it)
    UM_CHECK(a.contains(it.key()) && a[it.key()] == it.value(), "checkpoint", dir,
             ": config.json and ultramoe.json disagree on ", it.key(), " (",
             a.contains(it.key()) ? a[it.key()].dump() : "missing", " vs ", it.value().dump(), ")");
  return rc;
}

TrainerState read_trainer_state(const std::string& dir) {
  return TrainerState::from_json(read_json_file(dir + "/trainer_state.json", "checkpoint"), dir);
}

template <class T>
void load_checkpoint(const std::string& dir, const ParamTable& table, ParamStore<T>& ps,
                     const Optimizer* optimizer) {
  const SafetensorsSet model(dir, "model");
  const std::string& mdesc = model.describe();
  size_t expected = table.params.size() + table.buffers.size();
  for (const ParamInfo& p : table.params) {
    UM_CHECK(model.has(p.name), "checkpoint", mdesc, ": missing tensor ", p.name);
    UM_CHECK(model.entry(p.name).dtype == DType::f32, "checkpoint", dir, ": tensor ", p.name,
             " is ", dtype_name(model.entry(p.name).dtype), ", expected F32");
    UM_CHECK(model.entry(p.name).shape == p.shape, "checkpoint", "tensor ", p.name, ": expected ",
             shape_str(p.shape), ", file has ", shape_str(model.entry(p.name).shape));
    model.read_into<T>(p.name, ps.w.data() + p.offset, p.shape);
  }
  for (const BufferInfo& b : table.buffers) {
    UM_CHECK(model.has(b.name), "checkpoint", mdesc, ": missing tensor ", b.name);
    model.read_into<T>(b.name, ps.buf.data() + b.offset, {b.numel});
  }
  if (model.tensors().size() != expected) {  // extra tensors: other ranks' experts, or foreign ones
    const ParamTable full = build_param_table(read_checkpoint_config(dir).model);
    for (const auto& [name, file] : model.tensors())
      UM_CHECK(full.find(name) || full.find_buffer(name), "checkpoint", mdesc,
               ": unexpected tensor ", name, " (not part of this model)");
  }
  if (!optimizer) return;
  if (!SafetensorsSet::exists(dir, "optimizer")) {
    // an imported checkpoint (`ultramoe import`): no Adam update yet, so zero moments are exact
    UM_CHECK(read_trainer_state(dir).adam_step == 0, "checkpoint", dir,
             " has no optimizer.safetensors but its trainer_state.json counts Adam updates");
    std::fill(ps.m.data(), ps.m.data() + ps.m.size(), T(0));
    std::fill(ps.v.data(), ps.v.data() + ps.v.size(), T(0));
    return;
  }
  const SafetensorsSet opt(dir, "optimizer");
  std::vector<T> m, v;
  for (const ParamInfo& p : table.params) {
    m.resize(p.numel);
    v.resize(p.numel);
    opt.read_into<T>(p.name + ".exp_avg", m.data(), p.shape);
    opt.read_into<T>(p.name + ".exp_avg_sq", v.data(), p.shape);
    for (const DecayRun& r : optimizer->runs) {  // keep the elements this rank's optimizer owns
      const int64_t s = std::max(r.begin, p.offset), e = std::min(r.end, p.offset + p.numel);
      for (int64_t i = s; i < e; ++i) {
        ps.m[optimizer->moment_index(i)] = m[i - p.offset];
        ps.v[optimizer->moment_index(i)] = v[i - p.offset];
      }
    }
  }
}

#define UM_INSTANTIATE(T)                                                                          \
  template std::string save_checkpoint<T>(const std::string&, const RunConfig&, const ParamTable&,       \
                                          const ParamStore<T>&, const Optimizer&, const TrainerState&,   \
                                          const std::string&, const StepGroups&);                        \
  template std::string save_checkpoint<T>(const std::string&, const RunConfig&, const ParamTable&,       \
                                          const ParamStore<T>&, const TrainerState&, const std::string&); \
  template void load_checkpoint<T>(const std::string&, const ParamTable&, ParamStore<T>&, const Optimizer*);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um

namespace um {

OpenedCheckpoint open_checkpoint(const std::string& dir) {
  OpenedCheckpoint c;
  c.dir = dir;
  c.rc = read_checkpoint_config(dir);
  c.table = build_param_table(c.rc.model);
  c.ps = ParamStore<float>(c.table);
  load_checkpoint(dir, c.table, c.ps, nullptr);
  c.state = read_trainer_state(dir);
  if (fs::exists(dir + "/tokenizer.model")) c.tokenizer_path = dir + "/tokenizer.model";
  return c;
}

}  // namespace um
