// The parameters of one decoder layer (design.md 1.2), as offsets into the parameter table: shared by
// the training model (model.cpp) and the inference decoder (infer/decoder.cpp), which read the
// same tensors.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/ffn.h"
#include "model/mla.h"
#include "model/params.h"

namespace um {

struct LayerParams {
  int index = 0;
  bool moe = false;
  // Without sandwich norm only in_norm and pre_ffn_norm exist (HF's post_attention_layernorm).
  int64_t in_norm = -1, post_attn_norm = -1, pre_ffn_norm = -1, post_ffn_norm = -1;
  MlaParams attn;
  MlpParams dense;   // dense layers (layer < first_k_dense_replace)
  MoeParams moe_p;   // MoE layers

  // Layer `layer` of the table: main layers 0..L-1, then the MTP modules' layers.
  static LayerParams resolve(const ParamTable& t, const ModelConfig& c, int layer);
};

}  // namespace um
