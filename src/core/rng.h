// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11). A stream is keyed by
// (seed, stream id); element i of a stream is a pure function of (key, i). So the values a tensor
// gets never depend on thread count, rank count, or which other tensors were drawn before it.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace um {

// 64-bit FNV-1a, then a SplitMix64 finaliser: a stable stream id for a name.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

class Philox {
 public:
  using Block = std::array<uint32_t, 4>;

  Philox(uint64_t seed, uint64_t stream) {
    // The 64-bit key comes from the seed; the stream id occupies the upper counter words, so
    // distinct streams never share a counter value.
    key_ = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
    stream_ = stream;
  }
  Philox(uint64_t seed, std::string_view name) : Philox(seed, hash_name(name)) {}

  // Four independent 32-bit words for counter value i.
  Block block(uint64_t i) const {
    Block ctr = {static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                 static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32)};
    std::array<uint32_t, 2> key = key_;
    for (int round = 0; round < 10; ++round) {
      ctr = single_round(ctr, key);
      key[0] += 0x9E3779B9u;
      key[1] += 0xBB67AE85u;
    }
    return ctr;
  }

  // Uniform in [0, 1) with 53 random bits, element i.
  double uniform(uint64_t i) const {
    Block b = block(i);
    return to_unit(b[0], b[1]);
  }

  // Standard normal, element i (Box-Muller on block i/2; even i takes the cosine branch).
  double normal(uint64_t i) const {
    Block b = block(i >> 1);
    double u1 = 1.0 - to_unit(b[0], b[1]);  // (0, 1]: log is finite
    double u2 = to_unit(b[2], b[3]);
    double r = std::sqrt(-2.0 * std::log(u1));
    double t = 2.0 * M_PI * u2;
    return (i & 1) ? r * std::sin(t) : r * std::cos(t);
  }

  // Uniform integer in [0, n), element i (rejection-free 64-bit multiply-shift; bias < 2^-32 for
  // the n we use).
  uint64_t below(uint64_t i, uint64_t n) const {
    Block b = block(i);
    uint64_t x = (static_cast<uint64_t>(b[0]) << 32) | b[1];
    return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
  }

 private:
  static double to_unit(uint32_t hi, uint32_t lo) {
    uint64_t x = ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
    return static_cast<double>(x) * 0x1.0p-53;
  }
  static Block single_round(const Block& c, const std::array<uint32_t, 2>& k) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    return {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
            static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
  }

  std::array<uint32_t, 2> key_{};
  uint64_t stream_ = 0;
};

}  // namespace um
