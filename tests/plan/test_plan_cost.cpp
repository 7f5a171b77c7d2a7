// Cost primitives of the planner against hand-computed values: GEMM roofline and efficiency curve,
// attention FLOPs, ring collectives, all-to-all volumes (flat and hierarchical), expected remote
// nodes, the 1F1B bubble fraction and the micro-batches in flight.
#include <gtest/gtest.h>

#include <cmath>

#include "plan/cost.h"
#include "plan_fixtures.h"

namespace um::plan {
namespace {

TEST(PlanCost, GemmEfficiencyInterpolatesInLogFlops) {
  Hardware hw = testing::ideal_hardware();
  hw.gemm_efficiency = {{1e9, 0.2}, {1e11, 0.6}};
  EXPECT_DOUBLE_EQ(gemm_efficiency(hw, 1e8), 0.2);   // clamped below
  EXPECT_DOUBLE_EQ(gemm_efficiency(hw, 1e12), 0.6);  // clamped above
  EXPECT_NEAR(gemm_efficiency(hw, 1e10), 0.4, 1e-12);
  EXPECT_NEAR(gemm_efficiency(hw, std::pow(10.0, 9.5)), 0.3, 1e-12);
}

TEST(PlanCost, GemmTimeIsComputeOrMemoryBound) {
  Hardware hw = testing::ideal_hardware();
  // 2 * 1024^3 FLOPs at 0.5 * 1e12
  EXPECT_NEAR(gemm_time(hw, 1024, 1024, 1024, 4), 2.0 * 1024 * 1024 * 1024 / 5e11, 1e-15);
  hw.memory_bandwidth = 1e9;
  // m=n=1024, k=1: 2 MFLOP (4 us) but (1024 + 1024 + 1024^2) * 4 bytes at 1 GB/s
  EXPECT_NEAR(gemm_time(hw, 1024, 1024, 1, 4), (2048.0 + 1024 * 1024) * 4 / 1e9, 1e-15);
  EXPECT_EQ(gemm_time(hw, 0, 10, 10, 4), 0);
}

TEST(PlanCost, AttentionFlopsCountCausalPairs) {
  // T=4: 10 (query, key) pairs; 2 (d_qk + d_v) = 8 FLOPs each
  EXPECT_DOUBLE_EQ(attention_forward_flops(1, 4, 1, 2, 2), 80);
  EXPECT_DOUBLE_EQ(attention_forward_flops(3, 4, 2, 2, 2), 480);
}

TEST(PlanCost, GroupSpanPlacesGroupsOnNodes) {
  GroupSpan tp8 = group_span(8, 1, 8);
  EXPECT_FALSE(tp8.crosses_nodes());
  GroupSpan ep32 = group_span(32, 1, 8);
  EXPECT_EQ(ep32.per_node, 8);
  EXPECT_EQ(ep32.nodes(), 4);
  GroupSpan dp4 = group_span(4, 8, 8);  // stride of a full node: every member on its own node
  EXPECT_EQ(dp4.per_node, 1);
  EXPECT_TRUE(dp4.crosses_nodes());
  GroupSpan mixed = group_span(8, 2, 8);  // 4 per node, 2 nodes
  EXPECT_EQ(mixed.per_node, 4);
  EXPECT_EQ(mixed.nodes(), 2);
}

TEST(PlanCost, RingCollectives) {
  const Link link{1e9, 1e-6};
  EXPECT_NEAR(ring_all_gather_time(link, 4, 1e6), 3 * (1e-6 + 1e-3), 1e-15);
  EXPECT_NEAR(ring_reduce_scatter_time(link, 4, 1e6), 3 * (1e-6 + 1e-3), 1e-15);
  EXPECT_NEAR(ring_all_reduce_time(link, 4, 4e6), 2 * 3 * (1e-6 + 1e6 / 1e9), 1e-15);
  EXPECT_EQ(ring_all_reduce_time(link, 1, 4e6), 0);
  EXPECT_NEAR(p2p_time(link, 1e6), 1e-6 + 1e-3, 1e-15);
}

TEST(PlanCost, AllToAllFlatVolumes) {
  const Hardware hw = testing::ideal_hardware();
  const GroupSpan g = group_span(32, 1, 8);  // 4 nodes x 8
  const AllToAll a = all_to_all_flat(hw, g, 32e6);
  EXPECT_NEAR(a.intra_bytes, 32e6 * 7 / 32, 1e-6);   // the 7 other devices of the node
  EXPECT_NEAR(a.inter_bytes, 32e6 * 24 / 32, 1e-6);  // the 24 devices of the 3 other nodes
  const double expected = std::max(a.intra_bytes / 1e11, a.inter_bytes / 1e10) + 1e-6 + 1e-5;
  EXPECT_NEAR(a.time, expected, 1e-15);
  const AllToAll in_node = all_to_all_flat(hw, group_span(8, 1, 8), 8e6);
  EXPECT_EQ(in_node.inter_bytes, 0);
  EXPECT_NEAR(in_node.time, 8e6 * 7 / 8 / 1e11 + 1e-6, 1e-15);
}

TEST(PlanCost, AllToAllHierarchicalSendsATokenOncePerNode) {
  const Hardware hw = testing::ideal_hardware();
  const GroupSpan g = group_span(32, 1, 8);
  // 1000 tokens of 4 KB, top-8: 32 MB of pairs; 2.7 remote nodes per token (Pangu's group, below)
  const AllToAll a = all_to_all_hierarchical(hw, g, 32e6, 4e6, 2.7);
  EXPECT_NEAR(a.inter_bytes, 4e6 * 2.7, 1e-6);
  EXPECT_NEAR(a.intra_bytes, 32e6 * 7 / 8, 1e-6);
  const AllToAll flat = all_to_all_flat(hw, g, 32e6);
  EXPECT_LT(a.inter_bytes, flat.inter_bytes);  // 10.8 MB instead of 24 MB across nodes
  // inside one node the two algorithms coincide
  const GroupSpan node = group_span(8, 1, 8);
  EXPECT_EQ(all_to_all_hierarchical(hw, node, 8e6, 1e6, 0).time, all_to_all_flat(hw, node, 8e6).time);
}

TEST(PlanCost, ExpectedRemoteNodes) {
  // Pangu's expert group: 256 experts on 4 nodes (64 each), top-8
  double miss = 1;
  for (int i = 0; i < 8; ++i) miss *= (192.0 - i) / (256.0 - i);
  EXPECT_NEAR(expected_remote_nodes(256, 8, 4, 0), 3 * (1 - miss), 1e-12);
  EXPECT_NEAR(expected_remote_nodes(256, 8, 4, 0), 2.71, 0.005);
  EXPECT_EQ(expected_remote_nodes(256, 8, 1, 0), 0);
  EXPECT_NEAR(expected_remote_nodes(8, 8, 4, 0), 3.0, 1e-12);  // every expert chosen: every node
  // DeepSeek-V3: 8 nodes, node-limited to M = 4 of them: 4 * 7/8 remote
  EXPECT_NEAR(expected_remote_nodes(256, 8, 8, 4), 3.5, 1e-12);
}

TEST(PlanCost, BubbleFraction) {
  EXPECT_DOUBLE_EQ(bubble_fraction(16, 2, 64), 15.0 / (128 + 15));
  EXPECT_DOUBLE_EQ(bubble_fraction(4, 1, 8), 3.0 / 11);
  EXPECT_EQ(bubble_fraction(1, 1, 8), 0);
  EXPECT_LT(bubble_fraction(8, 4, 32), bubble_fraction(8, 2, 32));  // more virtual stages, less idle
}

TEST(PlanCost, InFlightChunks) {
  EXPECT_EQ(in_flight_chunks(4, 1, 8, 0), 4);  // 1F1B: stage s holds p - s micro-batches
  EXPECT_EQ(in_flight_chunks(4, 1, 8, 3), 1);
  EXPECT_EQ(in_flight_chunks(4, 1, 2, 0), 2);  // fewer micro-batches than stages
  EXPECT_EQ(in_flight_chunks(4, 2, 8, 0), 2 * 3 + 4 + 1);
  // Korthikanti et al.: stage 0 holds L (1 + (p-1)/(p v)) layers; L = 16, p = 4, v = 2: 22
  const int L = 16, p = 4, v = 2;
  EXPECT_EQ(in_flight_chunks(p, v, 8, 0) * L / (p * v), L + L * (p - 1) / (p * v));
  EXPECT_EQ(in_flight_chunks(4, 2, 1, 0), 2);  // capped by m v
}

}  // namespace
}  // namespace um::plan
