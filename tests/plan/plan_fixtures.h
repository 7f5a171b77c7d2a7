// Shared fixtures of the planner tests: idealised hardware whose numbers make hand computation
// easy, and small model geometries. Not a test by itself.
#pragma once

#include <string>

#include "core/json_reader.h"
#include "model/config.h"
#include "plan/hardware.h"
#include "plan/plan_model.h"

namespace um::plan::testing {

inline std::string source_path(const std::string& rel) { return std::string(ULTRAMOE_SOURCE_DIR) + "/" + rel; }

inline PlanModel shipped_model(const std::string& rel) {
  return read_plan_model(read_json_file(source_path(rel)), rel);
}

// Efficiency 0.5 at every size, free memory traffic and launches: compute time is FLOPs / 0.5 peak.
inline Hardware ideal_hardware(Precision p = Precision::fp32) {
  Hardware hw;
  hw.name = "ideal";
  hw.precision = p;
  hw.peak_flops = 1e12;
  hw.memory_bytes = 1e15;
  hw.memory_bandwidth = 1e30;
  hw.devices_per_node = 8;
  hw.intra_node = {1e11, 1e-6};
  hw.inter_node = {1e10, 1e-5};
  hw.gemm_efficiency = {{1.0, 0.5}};
  hw.attention_efficiency = 0.5;
  return hw;
}

// A small MLA MoE model: 4 layers (1 dense), 8 experts top-2 plus one shared, 1 MTP layer.
inline ModelConfig small_moe_config() {
  const json j = json::parse(R"({
    "vocab_size": 1000, "hidden_size": 256, "num_hidden_layers": 4, "first_k_dense_replace": 1,
    "intermediate_size": 512, "moe_intermediate_size": 128, "n_routed_experts": 8,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "num_attention_heads": 4, "q_lora_rank": 64,
    "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
    "num_nextn_predict_layers": 1, "sandwich_norm": true})");
  return parse_model_config(j, "model");
}

inline PlanModel small_moe() { return plan_model_from_config(small_moe_config(), "small-moe"); }

// A dense MLA model with identical layers and no MTP.
inline PlanModel small_dense() {
  const json j = json::parse(R"({
    "vocab_size": 512, "hidden_size": 128, "num_hidden_layers": 8, "first_k_dense_replace": 8,
    "intermediate_size": 256, "num_attention_heads": 4, "q_lora_rank": 0, "kv_lora_rank": 32,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "sandwich_norm": false})");
  return plan_model_from_config(parse_model_config(j, "model"), "small-dense");
}

}  // namespace um::plan::testing
