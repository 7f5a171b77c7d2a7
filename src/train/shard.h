// Token shards (design.md 3): a 64-byte header then the token ids, little-endian, memory-mapped for
// reading. Also the two file utilities the data directory needs: SHA-256 (OpenSSL EVP) and
// atomic file replacement (tmp file + fsync + rename + fsync of the directory).
// Not here: what the tokens mean (tokenizer.h), how they are cut into windows (windows.h).
//
// Header, all integers little-endian:
//   offset  size  field
//        0     8  magic "UMOETOK\0"
//        8     4  u32 version (1)
//       12     4  u32 token width in bytes: 2 when vocab_size <= 65536, else 4
//       16     8  u64 token count N
//       24     8  u64 vocab size V (every id is < V)
//       32    32  SHA-256 of the tokenizer model file the ids were made with
//       64  N*w  the ids
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace um {

using Sha256 = std::array<uint8_t, 32>;

Sha256 sha256(std::string_view bytes);
std::string to_hex(const Sha256& digest);

// Reads a whole file; errors ([origin] PATH: reason) name the file.
std::string read_file(const std::string& path, const char* origin);

// Replaces `path` atomically: the bytes go to a temporary file in the same directory, which is
// fsynced and renamed over `path`, then the directory is fsynced. A crash leaves either the old
// file or the new one, never a mixture. Unfinished temporaries are removed on error.
class AtomicFile {
 public:
  AtomicFile(std::string path, const char* origin);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void commit();

 private:
  std::string path_, tmp_, origin_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, std::string_view bytes, const char* origin);

inline constexpr char kShardMagic[8] = {'U', 'M', 'O', 'E', 'T', 'O', 'K', '\0'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 64;

// Bytes per id for a vocabulary: 2 while every id fits in a u16.
int shard_token_width(int64_t vocab_size);

// Writes `ids` (each in [0, vocab_size)) as a shard, atomically.
void write_shard(const std::string& path, std::span<const int32_t> ids, int64_t vocab_size,
                 const Sha256& tokenizer_sha256);

// A read-only, memory-mapped shard. Opening validates the magic, version, width, the file length
// against the header, every id against the vocabulary size, and (when given) the tokenizer hash,
// so everything after open may trust the data. Move-only.
class Shard {
 public:
  // expected_tokenizer: the SHA-256 of the tokenizer model the shard must have been written with;
  // tokenizer_name names that model in the error.
  explicit Shard(const std::string& path, const std::optional<Sha256>& expected_tokenizer = {},
                 const std::string& tokenizer_name = "the tokenizer");
  ~Shard();
  Shard(Shard&& other) noexcept;
  Shard& operator=(Shard&& other) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return n_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  int width() const { return width_; }
  const Sha256& tokenizer_sha256() const { return tokenizer_sha256_; }

  int32_t operator[](int64_t i) const;
  // out[0..count) = ids [begin, begin + count); the range must lie inside the shard.
  void copy(int64_t begin, int64_t count, int32_t* out) const;

 private:
  void release();

  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint8_t* ids_ = nullptr;
  int64_t n_tokens_ = 0;
  int64_t vocab_size_ = 0;
  int width_ = 0;
  Sha256 tokenizer_sha256_{};
};

}  // namespace um
