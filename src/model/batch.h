// What the model reads off a micro-batch of training windows (design.md 1.8): inputs, RoPE
// positions, the document mask and the targets of the main head and of every MTP depth.
//   windows: (B, T+1) token ids x_0..x_T
//   document = maximal run ending with EOS (the EOS belongs to the document it closes)
//   positions restart at 0 at x_0 and right after every EOS
//   main target of position i: x_{i+1}, valid iff x_i is not EOS and x_{i+1} is not PAD
//   MTP depth k, positions i < T-k: input x_{i+k}, target x_{i+k+1}, valid iff none of
//   x_i..x_{i+k} is EOS and x_{i+k+1} is not PAD; same positions and mask as the main rows i
#pragma once

#include <cstdint>
#include <vector>

namespace um {

constexpr int32_t kUnkId = 0, kBosId = 1, kEosId = 2, kPadId = 3;
constexpr int32_t kIgnore = -1;

struct SeqRows {                   // one stream of B sequences of T_rows tokens
  int64_t B = 0, T = 0;
  std::vector<int32_t> ids;        // (B*T) token fed to the embedding
  std::vector<int32_t> pos;        // (B*T) RoPE position
  std::vector<int32_t> seg_start;  // (B*T) first key this token may see (its document start)
  std::vector<int32_t> targets;    // (B*T) target id or kIgnore
  int64_t n_valid = 0;             // targets that count
  int64_t rows() const { return B * T; }
};

struct WindowBatch {
  SeqRows main;              // T rows per sequence
  std::vector<SeqRows> mtp;  // depth k = 1..D: T-k rows per sequence
  std::vector<int32_t> eos_prefix;  // scratch: EOS counts of one window's prefixes
};

// Fills `out` from windows (B, T+1); vectors are resized, so reusing `out` does not allocate
// after the first call. Ids must be < vocab_size (else an error naming the position).
void build_window_batch(WindowBatch& out, const int32_t* windows, int64_t B, int64_t T,
                        int64_t mtp_depth, int64_t vocab_size);

// Valid target counts of a batch, without building it: (main, per MTP depth). The first form
// writes into `counts` using `eos` as scratch (no allocation once they have grown).
void count_valid_targets(std::vector<int64_t>& counts, std::vector<int32_t>& eos,
                         const int32_t* windows, int64_t B, int64_t T, int64_t mtp_depth);
std::vector<int64_t> count_valid_targets(const int32_t* windows, int64_t B, int64_t T,
                                         int64_t mtp_depth);

}  // namespace um
