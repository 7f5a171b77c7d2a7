// A parallel layout (design.md 5) and the workload it runs: how N devices split one training step
// into tensor (tp), pipeline (pp, vpp virtual stages), data (dp) and expert (ep, etp or
// tp_extend_ep) parallel groups, the micro-batch, recomputation and ZeRO-1. This file parses
// `tp=8,pp=16,vpp=2,ep=4,mbs=2` strings and rejects impossible layouts with errors naming the
// offending value; it predicts nothing (see plan/simulate.h).
//
// Rank order is Megatron-Core's default (tp fastest, then dp, then pp): TP groups are adjacent
// devices, an expert group is adjacent devices of the tp x dp plane, pipeline stages are far apart.
// Expert sharding follows Megatron-Core "MoE parallel folding": the etp x ep expert group lives
// inside the tp x dp devices of one stage; etp (expert tensor parallel) defaults to tp.
// tp_extend_ep is MindSpeed's --moe-tp-extend-ep (used by Pangu): experts are not split, the tp
// ranks hold different whole experts, so E is spread over tp x ep devices.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "plan/plan_model.h"

namespace um::plan {

enum class Recompute : uint8_t {
  none,
  selective,  // norms, SwiGLU activations, MLA up-projections (design.md 2; Megatron-Core
              // --recompute-modules layernorm moe_act mla_up_proj)
  full,       // the whole layer from its input
};
const char* recompute_name(Recompute r);

// EP all-to-all algorithm: flat (one message per token-expert pair) or hierarchical (a token
// crosses the inter-node network once per destination node, then fans out inside the node;
// design.md 4 / Pangu's inter-node all-gather + intra-node all-to-all, DeepSeek-V3's dispatch).
enum class Dispatch : uint8_t { flat, hierarchical };
const char* dispatch_name(Dispatch d);

// How much of the EP all-to-all the schedule hides (a property of the engine, not the layout):
// none; shared = behind the shared-expert MLP (design.md 4, Megatron-Core --moe-shared-expert-overlap);
// full = behind the compute of another micro-batch (DeepSeek-V3 DualPipe, design.md 4's later
// two-micro-batch overlap).
enum class EpOverlap : uint8_t { none, shared, full };
const char* ep_overlap_name(EpOverlap o);

struct Layout {
  int tp = 1, pp = 1, vpp = 1, ep = 1;
  int etp = 0;           // expert tensor parallel; 0 = same as tp (Megatron-Core default)
  int dp = 0;            // 0 = follows from the device count
  int mbs = 1;           // sequences per micro-batch
  bool tp_extend_ep = false;
  int zero = 1;          // 1: optimizer state sharded over data-parallel ranks (ZeRO-1)
  Recompute recompute = Recompute::none;
  std::optional<Dispatch> dispatch;  // unset: whichever is faster

  int expert_tp() const { return tp_extend_ep ? 1 : (etp > 0 ? etp : tp); }
  // Devices that together hold all routed experts of one MoE layer.
  int expert_group() const { return tp_extend_ep ? tp * ep : ep * expert_tp(); }
  // Devices an all-to-all spans and their rank stride.
  int a2a_size() const { return tp_extend_ep ? tp * ep : ep; }
  int a2a_stride() const { return tp_extend_ep ? 1 : expert_tp(); }
  // Data-parallel replicas of each expert shard (ZeRO and gradient reduction group of experts).
  int expert_dp() const { return tp * dp / expert_group(); }
};

struct Workload {
  int64_t devices = 0;
  int64_t seq_len = 0;       // T tokens per sequence
  int64_t global_batch = 0;  // B sequences per optimizer step
  EpOverlap ep_overlap = EpOverlap::shared;
  double moe_imbalance = 1.0;  // max/mean routed tokens per device; the slowest device paces EP
};

// "tp=8,pp=16,vpp=2,ep=4,mbs=2,etp=1,tp_extend_ep=1,recompute=selective,zero=1,dispatch=hier,dp=48"
Layout parse_layout(const std::string& spec);
std::string layout_string(const Layout& l);

// Micro-batches per pipeline per step: B / (dp * mbs).
int64_t micro_batches(const Workload& w, const Layout& l);

// Fills l.dp from the device count and throws [plan] errors for impossible layouts.
void check_layout(const PlanModel& m, const Workload& w, Layout& l);
void check_workload(const Workload& w);

}  // namespace um::plan
