// Cost primitives of the planner: the time of one GEMM, one fused attention, one memory-bound
// pass, one collective over a group of devices, and the pipeline-schedule formulas (bubble,
// micro-batches in flight). Each is a formula with its source. Nothing here knows about layers,
// models or layouts; plan/simulate.cpp composes these into a training step.
#pragma once

#include <cstdint>

#include "plan/hardware.h"

namespace um::plan {

// A GEMM (m x k) @ (k x n): time = max(2mnk / (peak * eff), bytes / memory bandwidth) (roofline,
// Williams et al. 2009), with eff from the hardware's calibrated curve times `efficiency_factor`.
// Launch overhead is not included (see op_overhead_s).
double gemm_time(const Hardware& hw, double m, double n, double k, int elem_bytes,
                 double efficiency_factor = 1.0);

// Causal attention forward FLOPs: 2 (d_qk + d_v) per (query, key) pair and head, T(T+1)/2 pairs
// per sequence (the same n̄ as design.md 7).
double attention_forward_flops(double seqs, double seq_len, double heads, double d_qk, double d_v);
double attention_time(const Hardware& hw, double flops);

// An element-wise pass (norms, activations, permutes, optimizer): bytes moved at the
// element-wise bandwidth, or its exponentials, whichever takes longer (the loop streams while it
// computes).
double memory_pass_time(const Hardware& hw, double bytes, double exps = 0);

// Where a communication group sits: `size` devices at rank stride `stride`; per_node of them share
// a node. A group that crosses nodes runs at the inter-node link of each device.
struct GroupSpan {
  int size = 1;
  int per_node = 1;
  int nodes() const { return size / per_node; }
  bool crosses_nodes() const { return per_node < size; }
};
GroupSpan group_span(int size, int stride, int devices_per_node);
const Link& group_link(const Hardware& hw, const GroupSpan& g);

// Ring collectives (Thakur, Rabenseifner & Gropp 2005; NCCL's ring algorithms): n-1 steps, each
// paying one latency and moving one shard per device.
double ring_all_gather_time(const Link& link, int n, double shard_bytes);      // (n-1)(a + s/b)
double ring_reduce_scatter_time(const Link& link, int n, double shard_bytes);  // (n-1)(a + s/b)
double ring_all_reduce_time(const Link& link, int n, double bytes);            // 2(n-1)(a + bytes/(n b))
double p2p_time(const Link& link, double bytes);                               // a + bytes/b

// One EP all-to-all from one device's point of view. send_bytes: every (token, expert) pair it
// sends, destinations spread evenly over the group (balanced routing). Intra- and inter-node
// transfers use different links and run concurrently; an all-to-all posts all its messages at
// once and pays one latency per link it uses.
struct AllToAll {
  double intra_bytes = 0, inter_bytes = 0, time = 0;
};
AllToAll all_to_all_flat(const Hardware& hw, const GroupSpan& g, double send_bytes);
// Hierarchical: each token (token_bytes of them per device) crosses the inter-node network once
// per remote node that holds one of its experts, then the receiving device forwards the pairs to
// the other devices of its node over the intra-node link (design.md 4; DeepSeek-V3 section 3.2.2).
AllToAll all_to_all_hierarchical(const Hardware& hw, const GroupSpan& g, double send_bytes,
                                 double token_bytes, double remote_nodes_per_token);

// Expected number of remote nodes a token's K experts land on, with E experts spread evenly over
// `nodes` nodes and K distinct experts chosen uniformly: (nodes-1) (1 - C(E - E/nodes, K)/C(E, K)).
// node_limit > 0 caps the distinct nodes per token (DeepSeek-V3 node-limited routing, M = 4).
double expected_remote_nodes(int64_t experts, int64_t top_k, int nodes, int64_t node_limit);

// Pipeline bubble of 1F1B with v virtual stages per device (Narayanan et al. 2021, arXiv
// 2104.04473, section 2.2): idle fraction of the step = (p-1) / (m v + p - 1).
double bubble_fraction(int pp, int vpp, int64_t micro_batches);

// Model chunks whose activations stage `stage` holds at the peak of the 1F1B schedule:
// min(m, p - stage) without interleaving; with v > 1 Megatron-Core's warm-up count plus one,
// min(m v, 2 (p - stage - 1) + (v - 1) p + 1) (schedules.py, forward_backward_pipelining_with_
// interleaving). On stage 0 that is L (1 + (p-1)/(p v)) layers' worth (Korthikanti et al. 2022).
int64_t in_flight_chunks(int pp, int vpp, int64_t micro_batches, int stage);

}  // namespace um::plan
