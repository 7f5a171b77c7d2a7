// The parameter table: every tensor of the model declared once — HF name, shape, init rule,
// whether weight decay applies, and where it lives in the flat buffer (design.md 1.3, 1.10, 6).
// Adding a tensor is one line in params.cpp.
//
// Flat layout: all replicated (non-expert) parameters first, in model order, then the routed
// experts this rank holds (layer by layer, expert by expert, each expert gate|up|down so that
// [gate; up] is one (2F, D) matrix). Gradients and Adam moments use the same offsets, so the
// optimizer, the gradient all-reduce and ZeRO sharding are loops over ranges.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace um {

enum class InitRule : uint8_t {
  matrix,     // normal(0, matrix std of the init method)
  embedding,  // normal(0, init_embedding_std)
  constant,   // every element = value (norm gains, router scale)
  zeros,
};

// What a tensor is, for parameter counts and the inspect breakdown.
enum class Component : uint8_t {
  embedding, attention, norm, router, shared_expert, routed_expert, dense_ffn, final_norm,
  lm_head, mtp_proj,  // MTP enorm/hnorm/eh_proj/shared_head.norm
};
const char* component_name(Component c);

struct ParamInfo {
  std::string name;
  Shape shape;
  InitRule init = InitRule::zeros;
  double value = 0;       // the constant for InitRule::constant
  bool decay = false;     // weight decay: 2-D weights only (design.md 2)
  Component component = Component::attention;
  int layer = -1;         // decoder layer (MTP layer k is L+k-1); -1 outside layers
  int expert = -1;        // global routed-expert index, -1 otherwise
  int64_t offset = 0;     // element offset in the flat buffer
  int64_t numel = 0;
  bool is_norm() const { return component == Component::norm || component == Component::final_norm ||
                                (component == Component::mtp_proj && shape.size() == 1); }
};

// Non-trainable state saved with the weights (aux-free biases).
struct BufferInfo {
  std::string name;
  int layer = -1;
  int64_t offset = 0;
  int64_t numel = 0;
};

struct ParamTable {
  std::vector<ParamInfo> params;
  std::vector<BufferInfo> buffers;
  int64_t n_elements = 0;           // flat parameter buffer size (padding included)
  int64_t n_replicated = 0;         // elements [0, n_replicated) are replicated on every rank
  int64_t n_buffer_elements = 0;
  int64_t first_expert = 0, n_local_experts = 0;  // routed experts this table holds

  const ParamInfo& at(const std::string& name) const;
  const ParamInfo* find(const std::string& name) const;
  const BufferInfo* find_buffer(const std::string& name) const;

  std::unordered_map<std::string, size_t> index;
  std::unordered_map<std::string, size_t> buffer_index;
};

// What one pipeline rank holds (design.md 4, pipeline parallelism): the input embedding, which
// decoder layers (main and MTP, by index), and the tail (final norm, LM head, MTP inputs and head
// norms). A tail rank also holds a copy of the embedding when the MTP modules or a tied head read
// it. Null: everything (no pipeline).
struct StageContents {
  bool embedding = true;
  std::vector<bool> layers;  // (n_layers_total)
  bool tail = true;
};

// The full table (all experts) when ep_size = 1, else the slice of EP rank ep_rank: experts
// [ep_rank*E/ep_size, (ep_rank+1)*E/ep_size). Names carry global expert indices.
// pad > 1 rounds the replicated region and the expert region each up to a multiple of pad
// elements (zeros that belong to no tensor), so they split into equal shards (ZeRO-1).
// stage: only the tensors of one pipeline rank (null: all).
ParamTable build_param_table(const ModelConfig& c, int ep_rank = 0, int ep_size = 1, int64_t pad = 1,
                             const StageContents* stage = nullptr);
// Whether the tail needs the embedding matrix (MTP inputs or a tied LM head).
bool tail_reads_embedding(const ModelConfig& c);

// The standard deviation of a weight matrix under the config's init method (design.md 1.3).
double matrix_init_std(const ModelConfig& c);

// Initial post-norm gains (design.md 1.2): c/sqrt(L) for DSSN, 1 for plain sandwich.
double post_norm_gain(const ModelConfig& c, double constant);

struct ParamCounts {
  int64_t total = 0;           // main model, LM head once if tied, MTP excluded
  int64_t active = 0;          // per token, input embedding excluded
  int64_t mtp = 0;             // MTP modules, without the shared embedding/head
  int64_t mtp_active = 0;
  int64_t embedding = 0, lm_head = 0;
  std::vector<std::pair<std::string, int64_t>> by_component;  // main model
};
ParamCounts count_params(const ModelConfig& c);

}  // namespace um
