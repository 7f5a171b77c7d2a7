// The feed-forward blocks (design.md 1.5): the dense SwiGLU MLP (first_k_dense_replace layers and
// the shared experts) and the MoE block, decomposed Megatron-style:
//   route (z, s, top-k, gates) -> [capacity] -> permute -> dispatch -> experts (grouped GEMM)
//   -> combine-dispatch back -> unpermute with the gates
// plus the balance statistics of design.md 1.6. One routing plan (indices, gates, permutation) is
// the only thing that flows from the router to dispatch, experts and combine, and only the two
// dispatch stages communicate. With expert parallelism (an EP group of size ep > 1) each rank
// holds E/ep experts; dispatch is an all_to_all_v of token rows inside the EP group (design.md 4),
// overlapped with the shared experts. With ep = 1 dispatch is the identity.
// Precision: token rows and expert activations are T; the router (z, scores, gates, balance
// statistics) runs in acc_t<T> on an f32 copy of x and the f32 master router weights (design.md
// 1.5). Host syncs: one per MoE layer forward (MoeActs::read_back: the expert offsets that size
// the grouped GEMMs, the loads and the statistics), plus the count exchange of EP dispatch.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/ctx.h"
#include "model/config.h"
#include "model/params.h"
#include "model/recompute.h"
#include "model/weights.h"
#include "ops/router.h"

namespace um {

// SwiGLU MLP: y = (silu(x Wg^T) * x Wu^T) Wd^T. gate_up is the offset of gate_proj, which the
// parameter table places right before up_proj, so [gate; up] is one (2F, D) matrix.
struct MlpParams {
  int64_t gate_up = -1, down = -1, width = 0;
  static MlpParams resolve(const ParamTable& t, const std::string& prefix, int64_t width);
};

template <class T>
struct MlpActs {
  T* gu = nullptr;  // (N, 2F)
  T* h = nullptr;   // (N, F)
  void alloc(Arena& a, int64_t N, int64_t F, const Recompute& rc = {}, SharedSlots* slots = nullptr);
};

// y (N, D) = MLP(x), written or added.
template <class T>
void mlp_forward(T* y, bool accumulate, MlpActs<T>& a, const T* x, const WeightPtrs<T>& W,
                 const MlpParams& p, int64_t N, int64_t D, const Ctx& ctx);
// dx (N, D) written or added from dy. With rc.experts the activations are recomputed first.
template <class T>
void mlp_backward(T* dx, bool accumulate, const T* dy, const MlpActs<T>& a, const T* x,
                  const WeightPtrs<T>& W, const MlpParams& p, int64_t N, int64_t D, Arena& scratch,
                  const Ctx& ctx, const Recompute& rc = {});

struct MoeParams {
  int64_t router = -1, router_scale = -1;  // mlp.gate.weight (E, D), mlp.router_scale (E)
  int64_t experts = -1;                    // gate_proj of the first local expert
  int64_t bias = -1;                       // e_score_correction_bias, in the buffer array
  MlpParams shared;                        // width 0 = no shared experts
  static MoeParams resolve(const ParamTable& t, const ModelConfig& c, int layer);
};

class Comm;

// The groups a MoE layer communicates in (all null in one process).
struct MoeComms {
  Comm* ep = nullptr;    // the EP group: ep ranks holding E/ep experts each; null = all local
  Comm* pool = nullptr;  // the ranks sharing a balance pool (ep_group, global); null = local
  // Hierarchical dispatch for EP groups spread over nodes (Pangu): the ranks of this EP group on
  // this node (intra) and those with the same local index on the group's other nodes (inter).
  // Null: flat all_to_all_v over the whole group.
  Comm* intra = nullptr;
  Comm* inter = nullptr;
};

// How one MoE forward routes and which loss terms it carries (design.md 1.5, 1.6).
struct MoeOptions {
  TopkSpec spec;
  bool use_bias = false;         // aux-free bias in the selection
  double capacity_factor = 0;    // 0 = dropless
  int64_t pool_rows = 0;         // rows per balance pool in this micro-batch (on this rank)
  double balance_coef = 0;       // alpha / (pools in the step); 0 = no balance loss
  double z_coef = 0;             // beta_z / (tokens this layer sees in the step); 0 = off
  MoeComms comms;
  int layer = -1;                // for error messages
  Recompute recompute;           // experts: SwiGLU activations rebuilt in the backward
};

// Statistics of one MoE forward (one layer, one micro-batch).
struct MoeStats {
  std::vector<int64_t> load;   // (E) tokens per expert, biased selection before drops
  int64_t tokens = 0;          // rows routed
  int64_t dropped = 0;         // capacity-dropped (token, expert) pairs
  double balance = 0;          // sum over this micro-batch's pools of sum_i f_i P_i (local terms)
  double z_sum = 0;            // sum over rows of logsumexp(z)^2
  double entropy_sum = 0;      // sum over rows of the entropy of s'
  double margin_min = std::numeric_limits<double>::infinity();  // smallest selection margin
  void reset(int64_t E);
};

template <class T>
struct MoeActs {
  using A = acc_t<T>;
  A* z = nullptr;            // (N, E) router logits
  A* s = nullptr;            // (N, E) scores
  int32_t* idx = nullptr;    // (N, K) selected experts
  A* gate = nullptr;         // (N, K)
  A* margin = nullptr;       // (N)
  uint8_t* keep = nullptr;   // (N, K) capacity mode
  int32_t* offsets = nullptr;   // (E + 1)
  int32_t* row_pair = nullptr;  // (N*K)
  int32_t* pair_row = nullptr;  // (N*K)
  int64_t rows = 0;             // R, kept pairs
  T* xp = nullptr;           // (R, D) permuted inputs
  T* gu = nullptr;           // (R, 2F)
  T* h = nullptr;            // (R, F)
  T* yp = nullptr;           // (R, D)
  A* fpool = nullptr;        // (pools, E) f_i(S) of this micro-batch's pools
  int64_t* load = nullptr;   // (E) tokens per expert (device)
  double* stats = nullptr;   // (4) moe_router_stats
  MlpActs<T> shared;
  // What the host reads back once per layer forward: offsets, load and stats are one contiguous
  // device block; on the CPU the host views are the block itself.
  std::byte* readback = nullptr;
  size_t readback_bytes = 0;
  std::vector<std::byte> readback_host;
  const int32_t* offsets_h = nullptr;
  const int64_t* load_h = nullptr;
  const double* stats_h = nullptr;
  void read_back(const Ctx& ctx);
  // expert parallelism: rows received for the local experts, expert-major
  int64_t ep = 1, max_recv = 0;    // group size; buffer rows (ep * N * min(K, E/ep))
  int64_t recv_rows = 0;
  T* xe = nullptr;                 // (recv, D) inputs of the local experts
  T* ye = nullptr;                 // (recv, D) their outputs
  int32_t* perm = nullptr;         // (recv) expert-major row -> row of the received buffer
  std::vector<int32_t> perm_h;     // host staging of perm
  std::vector<int32_t> local_offsets;  // (E/ep + 1) over xe (host)
  std::vector<int64_t> counts;     // (4 ep) rows sent/received per peer and their offsets (host)
  std::vector<int64_t> xcounts;    // (2 E + 4 ep) the count exchange's host scratch
  std::vector<int64_t> el;         // (4 ep) counts and offsets in elements (host)
  int64_t peers = 1;               // peers of the last dispatch (ep flat, ranks per node hierarchical)
  // hierarchical dispatch (CPU only): pairs of all the group's nodes' tokens that go to this
  // node's experts
  int64_t nodes = 1;               // nodes the EP group spans (1: flat)
  int64_t hier_rows = 0;           // H pairs handled on this rank for this node
  T* hx = nullptr;                 // (H, D) their inputs, sorted by node-local expert
  T* hy = nullptr;                 // (H, D) their expert outputs
  int32_t* hpair = nullptr;        // (H) (source rank in inter, token, slot) as (s*N + t)*K + k
  std::vector<int32_t> hoffsets;   // (experts on this node + 1) over hx
  std::vector<int32_t> hcursor;    // (experts on this node) host scratch
  A* ggate = nullptr;              // (nodes * N * K) gates of every gathered token
  int64_t& send_rows_of(int64_t q) { return counts[q]; }
  int64_t& send_off_of(int64_t q) { return counts[ep + q]; }
  int64_t& recv_rows_of(int64_t q) { return counts[2 * ep + q]; }
  int64_t& recv_off_of(int64_t q) { return counts[3 * ep + q]; }
  void alloc(Arena& a, const ModelConfig& c, int64_t N, int64_t max_pools, int64_t ep_size,
             int64_t n_nodes = 1, const Recompute& rc = {}, SharedSlots* slots = nullptr);
};

// y (N, D) = MoE(x), written. Dispatch temporaries come from `scratch`.
template <class T>
void moe_forward(T* y, MoeActs<T>& a, MoeStats& st, const T* x, const WeightPtrs<T>& W,
                 const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                 Arena& scratch, const Ctx& ctx);

// dx (N, D) written from dy; gradients accumulate into W.g.
template <class T>
void moe_backward(T* dx, const T* dy, MoeActs<T>& a, const T* x, const WeightPtrs<T>& W,
                  const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                  Arena& scratch, const Ctx& ctx);

// Capacity of one expert (design.md 1.5, 1.10): ceil(cf * tokens * K / E - 1e-9), in double.
int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t K, int64_t E);

}  // namespace um
