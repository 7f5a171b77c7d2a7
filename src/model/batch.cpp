#include "model/batch.h"

#include "core/error.h"

namespace um {

namespace {

// Number of EOS among x[a..b] inclusive, via a prefix count kept in caller-owned storage.
struct EosPrefix {
  std::vector<int32_t>& c;  // c[i] = EOS count in x[0..i)
  void build(const int32_t* x, int64_t n) {
    c.resize(n + 1);
    c[0] = 0;
    for (int64_t i = 0; i < n; ++i) c[i + 1] = c[i] + (x[i] == kEosId);
  }
  int32_t in(int64_t a, int64_t b) const { return c[b + 1] - c[a]; }
};

void resize(SeqRows& r, int64_t B, int64_t T) {
  r.B = B;
  r.T = T;
  r.ids.resize(B * T);
  r.pos.resize(B * T);
  r.seg_start.resize(B * T);
  r.targets.resize(B * T);
  r.n_valid = 0;
}

}  // namespace

void build_window_batch(WindowBatch& out, const int32_t* windows, int64_t B, int64_t T,
                        int64_t mtp_depth, int64_t vocab_size) {
  UM_CHECK(T >= 1, "batch", "sequence length must be >= 1, got ", T);
  for (int64_t i = 0; i < B * (T + 1); ++i)
    UM_CHECK(windows[i] >= 0 && windows[i] < vocab_size, "batch", "token id ", windows[i],
             " at sequence ", i / (T + 1), " position ", i % (T + 1),
             " is outside the vocabulary of ", vocab_size);
  resize(out.main, B, T);
  out.mtp.resize(mtp_depth);
  for (int64_t k = 1; k <= mtp_depth; ++k) resize(out.mtp[k - 1], B, std::max<int64_t>(T - k, 0));

  EosPrefix eos{out.eos_prefix};
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* x = windows + b * (T + 1);
    eos.build(x, T + 1);
    SeqRows& m = out.main;
    int32_t p = 0, start = 0;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t r = b * T + i;
      m.ids[r] = x[i];
      m.pos[r] = p;
      m.seg_start[r] = start;
      const bool valid = x[i] != kEosId && x[i + 1] != kPadId;
      m.targets[r] = valid ? x[i + 1] : kIgnore;
      m.n_valid += valid;
      if (x[i] == kEosId) {  // the next token opens a document
        p = 0;
        start = static_cast<int32_t>(i + 1);
      } else {
        ++p;
      }
    }
    for (int64_t k = 1; k <= mtp_depth; ++k) {
      SeqRows& d = out.mtp[k - 1];
      for (int64_t i = 0; i < T - k; ++i) {
        const int64_t r = b * (T - k) + i, src = b * T + i;
        d.ids[r] = x[i + k];
        d.pos[r] = m.pos[src];
        d.seg_start[r] = m.seg_start[src];
        const bool valid = eos.in(i, i + k) == 0 && x[i + k + 1] != kPadId;
        d.targets[r] = valid ? x[i + k + 1] : kIgnore;
        d.n_valid += valid;
      }
    }
  }
}

std::vector<int64_t> count_valid_targets(const int32_t* windows, int64_t B, int64_t T,
                                         int64_t mtp_depth) {
  std::vector<int64_t> n;
  std::vector<int32_t> storage;
  count_valid_targets(n, storage, windows, B, T, mtp_depth);
  return n;
}

void count_valid_targets(std::vector<int64_t>& n, std::vector<int32_t>& storage,
                         const int32_t* windows, int64_t B, int64_t T, int64_t mtp_depth) {
  n.assign(mtp_depth + 1, 0);
  EosPrefix eos{storage};
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* x = windows + b * (T + 1);
    eos.build(x, T + 1);
    for (int64_t i = 0; i < T; ++i) n[0] += x[i] != kEosId && x[i + 1] != kPadId;
    for (int64_t k = 1; k <= mtp_depth; ++k)
      for (int64_t i = 0; i < T - k; ++i) n[k] += eos.in(i, i + k) == 0 && x[i + k + 1] != kPadId;
  }
}

}  // namespace um
