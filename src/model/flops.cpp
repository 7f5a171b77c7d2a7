#include "model/flops.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace um {

namespace {

double attention_matmul_params(const ModelConfig& c) {
  const double D = double(c.hidden_size), H = double(c.num_attention_heads);
  const double dqk = double(c.qk_head_dim()), dv = double(c.v_head_dim);
  const double q = c.q_lora_rank > 0 ? D * c.q_lora_rank + c.q_lora_rank * H * dqk : D * H * dqk;
  return q + D * double(c.kv_lora_rank + c.qk_rope_head_dim) +
         double(c.kv_lora_rank) * H * double(c.qk_nope_head_dim + c.v_head_dim) + H * dv * D;
}

double ffn_matmul_params(const ModelConfig& c, int64_t layer) {
  const double D = double(c.hidden_size);
  if (!c.is_moe_layer(layer)) return 3.0 * D * double(c.intermediate_size);
  return D * double(c.n_routed_experts) + 3.0 * D * double(c.shared_width()) +
         double(c.num_experts_per_tok) * 3.0 * D * double(c.moe_intermediate_size);
}

}  // namespace

double measure_cpu_ghz() {
#if defined(__x86_64__)
  using clock = std::chrono::steady_clock;
  double best = 0;
  for (int rep = 0; rep < 10; ++rep) {  // best of 10: a busy machine only slows it down
    uint64_t x = 0;
    const int64_t blocks = 10000;  // 10M adds: ~3 ms at 3.5 GHz
    const auto t0 = clock::now();
    for (int64_t b = 0; b < blocks; ++b)
      asm volatile(".rept 1000\n\tadd $1, %0\n\t.endr" : "+r"(x));
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::max(best, double(blocks) * 1000.0 / s / 1e9);
  }
  return best;
#else
  return 0;
#endif
}

FlopsPerToken flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double D = double(c.hidden_size), V = double(c.vocab_size);
  const int64_t L = c.num_hidden_layers, depth = c.num_nextn_predict_layers;
  double n_mm = 0;
  for (int64_t l = 0; l < L + depth; ++l) n_mm += attention_matmul_params(c) + ffn_matmul_params(c, l);
  n_mm += V * D * double(1 + depth);  // LM head, once per MTP depth again
  n_mm += double(depth) * 2.0 * D * D;  // eh_proj
  const double n_bar = (double(seq_len) + 1.0) / 2.0;
  const double H = double(c.num_attention_heads);
  FlopsPerToken f;
  f.matmul_params = n_mm;
  f.attention = 6.0 * H * double(c.qk_head_dim() + c.v_head_dim) * n_bar * double(L + depth);
  f.total = 6.0 * n_mm + f.attention;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "F = 6*N_mm + 6*H*(d_qk+d_v)*n*L_att = 6*%.4g + 6*%lld*(%lld+%lld)*%.1f*%lld = %.4g FLOP/token",
                n_mm, (long long)c.num_attention_heads, (long long)c.qk_head_dim(),
                (long long)c.v_head_dim, n_bar, (long long)(L + depth), f.total);
  f.formula = buf;
  return f;
}

CpuPeak cpu_peak(int cores) {
  CpuPeak p;
  p.cores = cores;
  if (const char* env = std::getenv("ULTRAMOE_CPU_GHZ")) {
    p.ghz = std::atof(env);
    p.source = "ULTRAMOE_CPU_GHZ";
  }
  if (p.ghz <= 0) {
    p.ghz = measure_cpu_ghz();
    if (p.ghz > 0) p.source = "measured (dependent-add chain)";
  }
  if (p.ghz <= 0) {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("cpu MHz", 0) != 0) continue;
      const double mhz = std::atof(line.substr(line.find(':') + 1).c_str());
      if (mhz / 1e3 > p.ghz) p.ghz = mhz / 1e3;
      p.source = "/proc/cpuinfo cpu MHz";
    }
  }
  if (p.ghz <= 0) {
    p.ghz = 3.0;
    p.source = "assumed (no frequency reported)";
  }
  p.flops = double(cores) * p.ghz * 1e9 * 32.0;
  return p;
}

}  // namespace um
