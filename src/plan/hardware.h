// Hardware descriptions for the planner (design.md 5): what one device (an accelerator, or one CPU
// core for the CPU backend) computes, holds and moves, read strictly from configs/hardware/*.json.
// This is data plus the two lookups the cost model needs (GEMM efficiency, bytes per element);
// it is not a device query and it predicts nothing by itself (see plan/cost.h).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/json_reader.h"

namespace um::plan {

// Training precision of the backend (design.md 2): bf16 compute with fp32 master weights on
// accelerators, plain fp32 on CPU. It fixes the bytes of every stored tensor.
enum class Precision : uint8_t { bf16, fp32 };
const char* precision_name(Precision p);

struct Link {
  double bandwidth = 0;  // achievable bytes/s one device sends in one direction
  double latency = 0;    // seconds per collective step (one message round)
};

struct Hardware {
  std::string name;
  Precision precision = Precision::bf16;
  double peak_flops = 0;             // dense FLOP/s per device at `precision`, no sparsity
  double memory_bytes = 0;           // device memory
  double memory_bandwidth = 0;       // bytes/s
  double memory_reserved_bytes = 0;  // unavailable to the model: runtime, communicators, fragmentation
  int devices_per_node = 1;
  Link intra_node, inter_node;
  // (FLOPs of one GEMM, achieved fraction of peak), sorted by FLOPs; interpolated in log(FLOPs).
  std::vector<std::pair<double, double>> gemm_efficiency;
  double grouped_gemm_factor = 1.0;  // grouped GEMM efficiency / plain GEMM efficiency, same size
  double attention_efficiency = 0;   // fused causal attention forward, fraction of peak
  // Backward time / forward time of attention. 2.5 by default: FlashAttention-2 (Dao 2023,
  // arXiv 2307.08691, section 3.1) runs five matmuls in backward to the forward's two.
  double attention_backward_ratio = 2.5;
  double op_overhead_s = 0;          // fixed cost of launching one op (kernel or parallel region)
  // Element-wise ops (norms, residuals, permutes, RoPE, the optimizer) move bytes at this rate;
  // below memory_bandwidth where the engine's loops do not stream at full speed. 0 in the file:
  // memory_bandwidth.
  double elementwise_bandwidth = 0;
  // Seconds per exponential in element-wise code (SwiGLU's sigmoid, router scores, the
  // cross-entropy softmax); a pass costs max(bytes / bandwidth, exps x this). Negligible on
  // accelerators, where special-function units keep these passes memory-bound.
  double exp_element_s = 0;
  // Seconds per logit of the fused LM-head cross entropy beyond its three GEMMs (forward and
  // backward together); 0: priced as memory passes and exponentials like the other element-wise ops.
  double cross_entropy_logit_s = 0;
  std::vector<std::string> sources;  // where the numbers come from
};

// Parses one hardware object; `path` prefixes key names in errors ([plan] hardware.peak_flops: ...).
Hardware parse_hardware(const json& j, const std::string& path = "hardware");
Hardware read_hardware_file(const std::string& file);

// Achieved fraction of peak for one GEMM of `flops` FLOPs: piecewise linear in log(flops)
// between the calibration points, constant beyond the first and last.
double gemm_efficiency(const Hardware& hw, double flops);

// Bytes of one stored activation or weight element at the backend's precision.
int element_bytes(Precision p);

}  // namespace um::plan
