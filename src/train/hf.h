// Hugging Face interop (design.md 6): `ultramoe export` writes a checkpoint as a DeepSeek-V3 folder
// that transformers loads (config.json, sharded safetensors tied by model.safetensors.index.json,
// the MTP modules with their embedding and head copies, and a tokenizer folder); `ultramoe
// import` reads such a folder — DeepSeek-V3 or DeepSeek-V2 style configs, BF16 or F32, one file
// or shards — into a checkpoint that eval, sample and train --resume accept.
//
// Conventions that differ between the two sides:
//   - RoPE: the model rotates pairs (j, j + d/2) ("rotate-half"); DeepSeek files lay the rope
//     rows out as interleaved pairs (2j, 2j+1). Export permutes the rope rows of q_b_proj
//     (q_proj) and kv_a_proj_with_mqa into the interleaved order and writes rope_interleave
//     true; import undoes it (rope_interleave false: no permutation).
//   - Routing: DeepSeek-V3 always routes with sigmoid scores plus e_score_correction_bias over
//     n_group groups ranked by their two best scores; a greedy model exports as one group.
//   - Sandwich norm (DSSN), MoGE, softmax scoring and the learned router scale have no
//     DeepSeek-V3 spelling: such checkpoints are refused, naming every reason.
// Tensors are streamed: read from memory-mapped files one at a time, written shard by shard, so
// neither direction holds the whole model in memory.
// Not here: the checkpoint format itself (checkpoint.h), the tokenizer (tokenizer.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/json_reader.h"
#include "model/config.h"
#include "train/tokenizer.h"

namespace um {

// Why the model cannot be written as DeepSeek-V3 (empty: it can).
std::vector<std::string> deepseek_v3_blockers(const ModelConfig& c);

// The config.json of the exported folder. use_bias: whether the model routes with the aux-free
// bias (when it does not, the bias is exported as zeros, which DeepSeek-V3 then adds harmlessly).
json deepseek_v3_config(const ModelConfig& c, DType dtype);

// The model config that an HF config.json describes (model_type deepseek_v3, deepseek_v2, or
// ultramoe). Keys the model cannot honour (YaRN rope scaling, V2's group-limited greedy, a MoE
// layer frequency other than 1, ...) are errors naming the key. ultramoe-only keys (init, DSSN
// constants) get their defaults.
ModelConfig model_config_from_hf(const json& hf, const std::string& where);

// True when the file stores rope rows interleaved (DeepSeek-V3 rope_interleave, default true;
// DeepSeek-V2 always).
bool hf_rope_interleaved(const json& hf);

// For a tensor whose rows carry RoPE dimensions (q_b_proj, q_proj, kv_a_proj_with_mqa), the row
// order of the interleaved file: file row r holds model row perm[r]. Empty for other tensors.
std::vector<int64_t> rope_row_permutation(const std::string& name, const ModelConfig& c);

// The tokenizer as a Hugging Face tokenizer.json (a BPE model with byte fallback whose merges are
// the SentencePiece pieces ordered by score, spaces as U+2581, no dummy prefix), so that
// AutoTokenizer encodes text to the same ids.
std::string hf_tokenizer_json(const Tokenizer& tok);

struct ExportOptions {
  std::string ckpt;                       // a checkpoint directory
  std::string out;                        // the folder to create (must not exist)
  DType dtype = DType::f32;               // f32 or bf16 (the aux-free bias stays f32)
  uint64_t max_shard_bytes = 5000000000;  // per safetensors shard
};
// Returns a summary (files, tensors, bytes).
json export_hf(const ExportOptions& o);

struct ImportOptions {
  std::string hf;      // the HF folder
  std::string out;     // the checkpoint directory to create (must not exist)
  std::string config;  // optional run config: train/data/parallel sections and ultramoe-only
                       // model keys; its model geometry must agree with config.json
  uint64_t max_shard_bytes = 5000000000;
};
json import_hf(const ImportOptions& o);

// "5GB", "200MB", "64KB", "1000" (bytes); decimal units as Hugging Face spells them.
uint64_t parse_byte_size(const std::string& s, const std::string& where);

}  // namespace um
