#include "plan/cost.h"

#include <algorithm>
#include <cmath>

namespace um::plan {

double gemm_time(const Hardware& hw, double m, double n, double k, int elem_bytes, double efficiency_factor) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const double flops = 2.0 * m * n * k;
  const double compute = flops / (hw.peak_flops * gemm_efficiency(hw, flops) * efficiency_factor);
  const double bytes = (m * k + k * n + m * n) * elem_bytes;
  return std::max(compute, bytes / hw.memory_bandwidth);
}

double attention_forward_flops(double seqs, double seq_len, double heads, double d_qk, double d_v) {
  const double pairs = seq_len * (seq_len + 1.0) / 2.0;
  return 2.0 * seqs * heads * pairs * (d_qk + d_v);
}

double attention_time(const Hardware& hw, double flops) {
  return flops / (hw.peak_flops * hw.attention_efficiency);
}

double memory_pass_time(const Hardware& hw, double bytes, double exps) {
  const double bandwidth = hw.elementwise_bandwidth > 0 ? hw.elementwise_bandwidth : hw.memory_bandwidth;
  return std::max(bytes / bandwidth, exps * hw.exp_element_s);
}

GroupSpan group_span(int size, int stride, int devices_per_node) {
  GroupSpan g;
  g.size = std::max(size, 1);
  const int fit = std::max(devices_per_node / std::max(stride, 1), 1);
  g.per_node = std::min(g.size, fit);
  if (g.size % g.per_node != 0) g.per_node = 1;  // ragged placement: treat every member as remote
  return g;
}

const Link& group_link(const Hardware& hw, const GroupSpan& g) {
  return g.crosses_nodes() ? hw.inter_node : hw.intra_node;
}

double ring_all_gather_time(const Link& link, int n, double shard_bytes) {
  if (n <= 1) return 0;
  return (n - 1) * (link.latency + shard_bytes / link.bandwidth);
}

double ring_reduce_scatter_time(const Link& link, int n, double shard_bytes) {
  return ring_all_gather_time(link, n, shard_bytes);
}

double ring_all_reduce_time(const Link& link, int n, double bytes) {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) * (link.latency + bytes / n / link.bandwidth);
}

double p2p_time(const Link& link, double bytes) { return link.latency + bytes / link.bandwidth; }

namespace {

double concurrent_links_time(const Hardware& hw, double intra_bytes, double inter_bytes) {
  double t = std::max(intra_bytes / hw.intra_node.bandwidth, inter_bytes / hw.inter_node.bandwidth);
  if (intra_bytes > 0) t += hw.intra_node.latency;
  if (inter_bytes > 0) t += hw.inter_node.latency;
  return t;
}

}  // namespace

AllToAll all_to_all_flat(const Hardware& hw, const GroupSpan& g, double send_bytes) {
  AllToAll a;
  if (g.size <= 1) return a;
  a.intra_bytes = send_bytes * (g.per_node - 1) / g.size;
  a.inter_bytes = send_bytes * (g.size - g.per_node) / g.size;
  a.time = concurrent_links_time(hw, a.intra_bytes, a.inter_bytes);
  return a;
}

AllToAll all_to_all_hierarchical(const Hardware& hw, const GroupSpan& g, double send_bytes,
                                 double token_bytes, double remote_nodes_per_token) {
  if (!g.crosses_nodes()) return all_to_all_flat(hw, g, send_bytes);
  AllToAll a;
  a.inter_bytes = token_bytes * remote_nodes_per_token;
  a.intra_bytes = send_bytes * (g.per_node - 1) / g.per_node;
  a.time = concurrent_links_time(hw, a.intra_bytes, a.inter_bytes);
  return a;
}

double expected_remote_nodes(int64_t experts, int64_t top_k, int nodes, int64_t node_limit) {
  if (nodes <= 1 || experts <= 0) return 0;
  const double per_node = static_cast<double>(experts) / nodes;
  double miss = 1.0;  // P(a given node holds none of the K experts)
  for (int64_t i = 0; i < top_k; ++i)
    miss *= std::max(0.0, (experts - per_node - i) / static_cast<double>(experts - i));
  double remote = (nodes - 1) * (1.0 - miss);
  if (node_limit > 0) remote = std::min(remote, static_cast<double>(node_limit) * (nodes - 1) / nodes);
  return remote;
}

double bubble_fraction(int pp, int vpp, int64_t micro_batches) {
  if (pp <= 1) return 0;
  return (pp - 1.0) / (static_cast<double>(micro_batches) * vpp + pp - 1.0);
}

int64_t in_flight_chunks(int pp, int vpp, int64_t micro_batches, int stage) {
  if (vpp <= 1) return std::min<int64_t>(micro_batches, pp - stage);
  const int64_t warmup = 2LL * (pp - stage - 1) + static_cast<int64_t>(vpp - 1) * pp;
  return std::min<int64_t>(micro_batches * vpp, warmup + 1);
}

}  // namespace um::plan
