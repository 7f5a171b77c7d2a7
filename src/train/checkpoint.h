// Checkpoints (design.md 6): a directory checkpoints/step_NNNNNNN/ with
//   model.safetensors      fp32 weights by HF name, (out, in) layout, plus the aux-free biases;
//                          or, written by an expert-parallel run, one shard per EP rank
//                          (model-0000q-of-0000N.safetensors) tied by model.safetensors.index.json
//   config.json            flat HF-style model config
//   ultramoe.json          the full resolved run config
//   tokenizer.model        the SentencePiece model the data was encoded with (when known)
//   optimizer.safetensors  <param>.exp_avg, <param>.exp_avg_sq (fp32), metadata adam_step
//                          (sharded like the weights)
//   trainer_state.json     step, data position, spike-detector windows, counters
// Written into step_NNNNNNN.tmp/, every file and the directory fsync'ed, renamed, the parent
// fsync'ed: a crash mid-write never damages an earlier checkpoint. Loading checks every name,
// shape, dtype and file length and that config.json agrees with ultramoe.json, and says exactly
// what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "model/params.h"
#include "model/weights.h"
#include "parallel/groups.h"
#include "train/optimizer.h"
#include "train/run_config.h"

namespace um {

struct TrainerState {
  int64_t step = 0;        // optimizer steps done (the checkpoint holds the state after them)
  int64_t adam_step = 0;   // applied updates (skipped steps excluded)
  json data = json::object();      // data position (informational; windows are a function of the step)
  json spikes = json::object();    // spike-detector windows and counters (train/spikes.h)
  json counters = json::object();  // skipped steps, tokens seen, last expert load
  json to_json() const;
  static TrainerState from_json(const json& j, const std::string& where);
};

std::string checkpoint_name(int64_t step);  // "step_0000012"

// Writes root/step_NNNNNNN atomically and returns its path. An existing complete checkpoint of
// the same step is replaced only after the new one is complete.
// Distributed (g.world): collective. Under ZeRO-1 the moment shards are all-gathered; then the
// ranks of EP group 0 (which hold every expert once) each write one shard: their experts and a
// share of the replicated tensors. Nothing is gathered to rank 0, which writes the index and the
// small files and renames the directory into place. Shards are found by name, so the checkpoint
// loads on any layout. An error on any rank fails the call on every rank.
template <class T>
std::string save_checkpoint(const std::string& root, const RunConfig& rc, const ParamTable& table,
                            const ParamStore<T>& ps, const Optimizer& opt, const TrainerState& state,
                            const std::string& tokenizer_path, const StepGroups& g);
// Single process, no ZeRO.
template <class T>
std::string save_checkpoint(const std::string& root, const RunConfig& rc, const ParamTable& table,
                            const ParamStore<T>& ps, const TrainerState& state,
                            const std::string& tokenizer_path);

// Complete checkpoints under root, oldest first (".tmp" directories are ignored).
std::vector<std::string> list_checkpoints(const std::string& root);
std::string latest_checkpoint(const std::string& root);  // "" when there is none
// Deletes all but the newest `keep` complete checkpoints, and stale .tmp directories.
void prune_checkpoints(const std::string& root, int64_t keep);

// The run config of a checkpoint (ultramoe.json), checked against config.json.
RunConfig read_checkpoint_config(const std::string& dir);
TrainerState read_trainer_state(const std::string& dir);

// Loads weights and buffers (and the Adam moments of the optimizer's elements when `opt` is
// given), checking every tensor. Works for any layout: tensors are found by name.
template <class T>
void load_checkpoint(const std::string& dir, const ParamTable& table, ParamStore<T>& ps,
                     const Optimizer* opt);

// The flat HF-style config.json of a model (design.md 1.10).
json hf_config_json(const ModelConfig& c);

}  // namespace um

namespace um {

// A checkpoint opened for inference or inspection: config, weights (f32), trainer state.
struct OpenedCheckpoint {
  std::string dir;
  RunConfig rc;
  ParamTable table;
  ParamStore<float> ps;
  TrainerState state;
  std::string tokenizer_path;  // dir/tokenizer.model, or "" when the checkpoint has none
};
OpenedCheckpoint open_checkpoint(const std::string& dir);

}  // namespace um
