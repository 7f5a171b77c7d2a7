// Model FLOPs per token and MFU (design.md 7). Forward + backward, recomputation not counted:
//   F = 6 N_mm + 6 H (d_qk + d_v) n L_att
// N_mm: matmul parameters one token passes through (every layer's attention projections, the
// router, shared experts and K routed experts or the dense FFN, the LM head; per MTP depth its
// eh_proj, its layer and the LM head again; the embedding lookup excluded). n = (T+1)/2 keys on
// average under the causal mask (document masks deliberately ignored so MFU does not depend on
// the data); L_att = num_hidden_layers + MTP depth.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace um {

struct FlopsPerToken {
  double matmul_params = 0;  // N_mm
  double attention = 0;      // 6 H (d_qk + d_v) n L_att
  double total = 0;          // F
  std::string formula;       // the formula with the numbers, printed at start
};

FlopsPerToken flops_per_token(const ModelConfig& c, int64_t seq_len);

// This CPU's FP32 peak: cores x clock x 32 FLOP/cycle (Zen 4 / AVX-512: 2 FMA pipes x 8 fp32
// lanes x 2 FLOP). The clock is measured: a chain of dependent integer adds retires one add per
// cycle on x86-64, so adds per second is the running (boost) frequency, which virtual machines
// often misreport in /proc/cpuinfo. Elsewhere the largest "cpu MHz" of /proc/cpuinfo is used.
// ULTRAMOE_CPU_GHZ overrides both.
struct CpuPeak {
  int cores = 1;
  double ghz = 0;
  double flops = 0;  // FLOP/s
  std::string source;
};
CpuPeak cpu_peak(int cores);
double measure_cpu_ghz();  // 0 where the measurement is not available

}  // namespace um
