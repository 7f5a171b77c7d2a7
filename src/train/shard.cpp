// Token shards, SHA-256 and atomic file replacement (see shard.h for the format).
#include "train/shard.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <vector>

#include "core/error.h"

namespace um {

// The ids are stored little-endian and read in place from the mapping.
static_assert(std::endian::native == std::endian::little, "shards assume a little-endian host");

static std::string errno_text() { return std::strerror(errno); }

Sha256 sha256(std::string_view bytes) {
  Sha256 digest{};
  unsigned int n = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest.data(), &n, EVP_sha256(), nullptr) != 1 ||
      n != digest.size())
    fail("data", "OpenSSL SHA-256 failed");
  return digest;
}

std::string to_hex(const Sha256& digest) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : digest) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

std::string read_file(const std::string& path, const char* origin) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  UM_CHECK(fd >= 0, origin, path, ": cannot open: ", errno_text());
  struct stat st{};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(origin, path, S_ISDIR(st.st_mode) ? ": is a directory, expected a file"
                                           : ": cannot stat");
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string why = errno_text();
      ::close(fd);
      fail(origin, path, ": read failed: ", why);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Atomic replacement

AtomicFile::AtomicFile(std::string path, const char* origin)
    : path_(std::move(path)), origin_(origin) {
  // the pid keeps two processes preparing the same directory off each other's temporaries
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  UM_CHECK(fd_ >= 0, origin_, "cannot write ", path_, ": ", errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  UM_CHECK(fd_ >= 0, origin_, "write to ", path_, " after commit");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    UM_CHECK(w > 0, origin_, "cannot write ", path_, ": ", errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  UM_CHECK(fd_ >= 0, origin_, "commit of ", path_, " twice");
  UM_CHECK(::fsync(fd_) == 0, origin_, "cannot fsync ", tmp_, ": ", errno_text());
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0 || ::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(tmp_.c_str());
    fail(origin_, "cannot replace ", path_, ": ", why);
  }
  // the rename is durable only once the directory entry is
  const std::string parent = std::filesystem::path(path_).parent_path().string();
  int dfd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes, const char* origin) {
  AtomicFile f(path, origin);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

// ---------------------------------------------------------------------------------------------
// Writing

int shard_token_width(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

template <class T>
static void put(uint8_t* dst, T v) {
  std::memcpy(dst, &v, sizeof v);
}
template <class T>
static T get(const uint8_t* src) {
  T v;
  std::memcpy(&v, src, sizeof v);
  return v;
}

void write_shard(const std::string& path, std::span<const int32_t> ids, int64_t vocab_size,
                 const Sha256& tokenizer_sha256) {
  UM_CHECK(vocab_size > 0 && vocab_size <= std::numeric_limits<int32_t>::max(), "shard", path,
           ": vocabulary size ", vocab_size, " out of range");
  const int width = shard_token_width(vocab_size);
  uint8_t header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put<uint32_t>(header + 8, kShardVersion);
  put<uint32_t>(header + 12, static_cast<uint32_t>(width));
  put<uint64_t>(header + 16, ids.size());
  put<uint64_t>(header + 24, static_cast<uint64_t>(vocab_size));
  std::memcpy(header + 32, tokenizer_sha256.data(), 32);

  AtomicFile f(path, "shard");
  f.write(header, sizeof header);
  // converted and written in blocks so a large shard never needs a second full copy
  constexpr size_t kBlock = 1 << 20;
  std::vector<uint8_t> buf(kBlock * width);
  for (size_t begin = 0; begin < ids.size(); begin += kBlock) {
    size_t n = std::min(kBlock, ids.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      int32_t id = ids[begin + i];
      UM_CHECK(id >= 0 && id < vocab_size, "shard", path, ": token ", id, " at position ",
               begin + i, " is outside the vocabulary [0, ", vocab_size, ")");
      if (width == 2) put<uint16_t>(buf.data() + 2 * i, static_cast<uint16_t>(id));
      else put<uint32_t>(buf.data() + 4 * i, static_cast<uint32_t>(id));
    }
    f.write(buf.data(), n * width);
  }
  f.commit();
}

// ---------------------------------------------------------------------------------------------
// Reading

Shard::Shard(const std::string& path, const std::optional<Sha256>& expected_tokenizer,
             const std::string& tokenizer_name)
    : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  UM_CHECK(fd >= 0, "shard", path, ": cannot open: ", errno_text());
  // the descriptor is only needed until the mapping exists
  std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* p) { ::close(*p); });
  struct stat st{};
  UM_CHECK(::fstat(fd, &st) == 0, "shard", path, ": cannot stat: ", errno_text());
  UM_CHECK(S_ISREG(st.st_mode), "shard", path, ": not a regular file");
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);

  uint8_t header[kShardHeaderBytes] = {};
  const size_t got = static_cast<size_t>(
      std::max<ssize_t>(0, ::pread(fd, header, sizeof header, 0)));
  UM_CHECK(got >= 8 && std::memcmp(header, kShardMagic, 8) == 0, "shard", path,
           ": not an ultramoe token shard (bad magic)");
  UM_CHECK(got == sizeof header, "shard", path, ": truncated: expected at least ",
           kShardHeaderBytes, " bytes of header, file has ", file_bytes);

  const uint32_t version = get<uint32_t>(header + 8);
  UM_CHECK(version == kShardVersion, "shard", path, ": unsupported version ", version,
           " (this build reads version ", kShardVersion, ")");
  const uint32_t width = get<uint32_t>(header + 12);
  UM_CHECK(width == 2 || width == 4, "shard", path, ": token width ", width,
           " is not 2 or 4 bytes");
  const uint64_t n_tokens = get<uint64_t>(header + 16);
  const uint64_t vocab = get<uint64_t>(header + 24);
  UM_CHECK(vocab > 0 && vocab <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max()),
           "shard", path, ": vocabulary size ", vocab, " out of range");
  UM_CHECK(width == 4 || vocab <= 65536, "shard", path, ": vocabulary size ", vocab,
           " does not fit token width 2");
  std::memcpy(tokenizer_sha256_.data(), header + 32, 32);

  UM_CHECK(n_tokens <= (std::numeric_limits<uint64_t>::max() - kShardHeaderBytes) / width,
           "shard", path, ": token count ", n_tokens, " out of range");
  const uint64_t expected_bytes = kShardHeaderBytes + n_tokens * width;
  UM_CHECK(file_bytes >= expected_bytes, "shard", path, ": truncated: expected ", expected_bytes,
           " bytes, file has ", file_bytes);
  UM_CHECK(file_bytes == expected_bytes, "shard", path, ": trailing data: expected ",
           expected_bytes, " bytes, file has ", file_bytes);

  if (expected_tokenizer && *expected_tokenizer != tokenizer_sha256_)
    fail("shard", path, ": tokenizer mismatch: the shard was written with tokenizer sha256 ",
         to_hex(tokenizer_sha256_), ", ", tokenizer_name, " has ", to_hex(*expected_tokenizer));

  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  UM_CHECK(map != MAP_FAILED, "shard", path, ": cannot mmap: ", errno_text());
  map_ = static_cast<const uint8_t*>(map);
  map_bytes_ = file_bytes;
  ids_ = map_ + kShardHeaderBytes;
  n_tokens_ = static_cast<int64_t>(n_tokens);
  vocab_size_ = static_cast<int64_t>(vocab);
  width_ = static_cast<int>(width);

  // One sequential pass at open (memory bandwidth, ~1 s per GB) so nothing downstream can index
  // an embedding row that does not exist. A u16 shard with V = 65536 cannot hold a bad id.
  const bool may_be_bad = width == 4 || vocab < 65536;
  if (may_be_bad) {
    ::madvise(map, file_bytes, MADV_SEQUENTIAL);
    for (int64_t i = 0; i < n_tokens_; ++i) {
      const uint32_t id = width == 2 ? get<uint16_t>(ids_ + 2 * i) : get<uint32_t>(ids_ + 4 * i);
      if (id >= vocab) {
        release();
        fail("shard", path, ": token ", id, " at position ", i, " is >= the vocabulary size ",
             vocab);
      }
    }
    // training reads windows in a random order
    ::madvise(map, file_bytes, MADV_RANDOM);
  }
}

void Shard::release() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
  map_ = nullptr;
  ids_ = nullptr;
  map_bytes_ = 0;
}

Shard::~Shard() { release(); }

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    ids_ = std::exchange(o.ids_, nullptr);
    n_tokens_ = std::exchange(o.n_tokens_, 0);
    vocab_size_ = o.vocab_size_;
    width_ = o.width_;
    tokenizer_sha256_ = o.tokenizer_sha256_;
  }
  return *this;
}

int32_t Shard::operator[](int64_t i) const {
  UM_CHECK(i >= 0 && i < n_tokens_, "shard", path_, ": index ", i, " outside [0, ", n_tokens_,
           ")");
  return width_ == 2 ? get<uint16_t>(ids_ + 2 * i)
                     : static_cast<int32_t>(get<uint32_t>(ids_ + 4 * i));
}

void Shard::copy(int64_t begin, int64_t count, int32_t* out) const {
  UM_CHECK(begin >= 0 && count >= 0 && begin <= n_tokens_ - count, "shard", path_, ": range [",
           begin, ", ", begin + count, ") outside [0, ", n_tokens_, ")");
  if (width_ == 2) {
    const uint8_t* p = ids_ + 2 * begin;
    for (int64_t i = 0; i < count; ++i) out[i] = get<uint16_t>(p + 2 * i);
  } else {
    std::memcpy(out, ids_ + 4 * begin, static_cast<size_t>(count) * 4);
  }
}

}  // namespace um
