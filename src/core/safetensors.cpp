#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace um {

using json = nlohmann::json;

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  UM_CHECK(fd >= 0, "safetensors", "cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("safetensors", "cannot stat ", path, ": ", std::strerror(err));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("safetensors", path, ": truncated (", size, " bytes, no header)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  UM_CHECK(map != MAP_FAILED, "safetensors", path, ": cannot mmap: ", std::strerror(err));
  map_ = static_cast<const char*>(map);
  map_bytes_ = size;
  try {
    parse_header();
  } catch (...) {
    release();
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() { release(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)), entries_(std::move(o.entries_)), metadata_(std::move(o.metadata_)),
      map_(o.map_), map_bytes_(o.map_bytes_), data_start_(o.data_start_) {
  o.map_ = nullptr;
  o.map_bytes_ = 0;
}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    entries_ = std::move(o.entries_);
    metadata_ = std::move(o.metadata_);
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    data_start_ = o.data_start_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
  }
  return *this;
}

void SafetensorsFile::release() {
  if (map_) ::munmap(const_cast<char*>(map_), map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

void SafetensorsFile::parse_header() {
  const std::string& path = path_;
  const uint64_t size = map_bytes_;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(map_[i]);
  UM_CHECK(n <= size - 8, "safetensors", path, ": header length ", n, " exceeds the file (",
           size, " bytes); truncated or not a safetensors file");
  data_start_ = 8 + n;
  json h = json::parse(map_ + 8, map_ + 8 + n, nullptr, false);
  UM_CHECK(!h.is_discarded() && h.is_object(), "safetensors", path, ": header is not a JSON object");
  const uint64_t data_size = size - data_start_;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const json& e = *it;
    UM_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
             "safetensors", path, ": malformed entry for ", it.key());
    Entry en;
    const std::string dt = e["dtype"].is_string() ? e["dtype"].get<std::string>() : e["dtype"].dump();
    bool known = false;
    for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64, DType::u8})
      if (dtype_name(t) == dt) en.dtype = t, known = true;
    UM_CHECK(known, "safetensors", path, ": tensor ", it.key(), " has dtype ", dt,
             ", which is not supported (F32, F64, BF16, I32, I64, U8)");
    for (const auto& d : e["shape"]) en.shape.push_back(d.get<int64_t>());
    en.begin = e["data_offsets"][0].get<uint64_t>();
    en.end = e["data_offsets"][1].get<uint64_t>();
    UM_CHECK(en.begin <= en.end && en.end <= data_size, "safetensors", path, ": tensor ", it.key(),
             " data [", en.begin, ", ", en.end, ") lies outside the ", data_size,
             " data bytes; the file is truncated");
    UM_CHECK(en.end - en.begin == static_cast<uint64_t>(numel_of(en.shape)) * dtype_size(en.dtype),
             "safetensors", path, ": tensor ", it.key(), " has ", en.end - en.begin,
             " bytes for shape ", shape_str(en.shape));
    entries_[it.key()] = en;
  }
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  UM_CHECK(it != entries_.end(), "safetensors", path_, ": no tensor named ", name);
  return it->second;
}

const void* SafetensorsFile::data(const std::string& name) const {
  return map_ + data_start_ + entry(name).begin;
}

template <class T>
void SafetensorsFile::read_into(const std::string& name, T* dst, const Shape& expected) const {
  const Entry& e = entry(name);
  UM_CHECK(e.shape == expected, "safetensors", path_, ": tensor ", name, ": expected ",
           shape_str(expected), ", file has ", shape_str(e.shape));
  const int64_t n = numel_of(e.shape);
  const char* src = static_cast<const char*>(data(name));
  for (int64_t i = 0; i < n; ++i) {
    switch (e.dtype) {
      case DType::f32: { float v; std::memcpy(&v, src + 4 * i, 4); dst[i] = static_cast<T>(v); break; }
      case DType::f64: { double v; std::memcpy(&v, src + 8 * i, 8); dst[i] = static_cast<T>(v); break; }
      case DType::bf16: { bf16 v; std::memcpy(&v.bits, src + 2 * i, 2); dst[i] = static_cast<T>(v.to_float()); break; }
      case DType::i32: { int32_t v; std::memcpy(&v, src + 4 * i, 4); dst[i] = static_cast<T>(v); break; }
      case DType::i64: { int64_t v; std::memcpy(&v, src + 8 * i, 8); dst[i] = static_cast<T>(v); break; }
      case DType::u8: dst[i] = static_cast<T>(static_cast<unsigned char>(src[i])); break;
    }
  }
}

template <class T>
std::vector<T> SafetensorsFile::read(const std::string& name) const {
  const Entry& e = entry(name);
  std::vector<T> v(static_cast<size_t>(numel_of(e.shape)));
  read_into<T>(name, v.data(), e.shape);
  return v;
}

template void SafetensorsFile::read_into<float>(const std::string&, float*, const Shape&) const;
template void SafetensorsFile::read_into<double>(const std::string&, double*, const Shape&) const;
template void SafetensorsFile::read_into<int32_t>(const std::string&, int32_t*, const Shape&) const;
template void SafetensorsFile::read_into<int64_t>(const std::string&, int64_t*, const Shape&) const;
template std::vector<float> SafetensorsFile::read<float>(const std::string&) const;
template std::vector<double> SafetensorsFile::read<double>(const std::string&) const;
template std::vector<int32_t> SafetensorsFile::read<int32_t>(const std::string&) const;
template std::vector<int64_t> SafetensorsFile::read<int64_t>(const std::string&) const;

void SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape,
                            const void* data) {
  items_.push_back({name, dtype, shape, data});
}

void SafetensorsWriter::write(const std::string& path, bool sync) const {
  json h = json::object();
  uint64_t at = 0;
  for (const Item& it : items_) {
    const uint64_t n = static_cast<uint64_t>(numel_of(it.shape)) * dtype_size(it.dtype);
    h[it.name] = {{"dtype", std::string(dtype_name(it.dtype))}, {"shape", it.shape},
                  {"data_offsets", {at, at + n}}};
    at += n;
  }
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  UM_CHECK(fd >= 0, "safetensors", "cannot create ", path, ": ", std::strerror(errno));
  auto put = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t k = ::write(fd, c, n);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        const int err = errno;
        ::close(fd);
        fail("safetensors", "writing ", path, " failed: ", std::strerror(err));
      }
      c += k;
      n -= static_cast<size_t>(k);
    }
  };
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(header.size() >> (8 * i));
  put(len, 8);
  put(header.data(), header.size());
  for (const Item& it : items_)
    put(it.data, static_cast<size_t>(numel_of(it.shape)) * dtype_size(it.dtype));
  if (sync && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("safetensors", "fsync of ", path, " failed: ", std::strerror(err));
  }
  UM_CHECK(::close(fd) == 0, "safetensors", "closing ", path, " failed: ", std::strerror(errno));
}

bool SafetensorsSet::exists(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  return fs::exists(dir + "/" + name + ".safetensors") || fs::exists(dir + "/" + name + ".safetensors.index.json");
}

SafetensorsSet::SafetensorsSet(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  const std::string single = dir + "/" + name + ".safetensors", index = single + ".index.json";
  if (!fs::exists(index)) {
    describe_ = single;
    files_.emplace_back(single);
    for (const auto& [t, e] : files_[0].entries()) where_[t] = 0;
    return;
  }
  UM_CHECK(!fs::exists(single), "safetensors", dir, " holds both ", name, ".safetensors and ", name,
           ".safetensors.index.json; keep one");
  sharded_ = true;
  describe_ = index;
  std::ifstream f(index);
  UM_CHECK(f.good(), "safetensors", "cannot open ", index);
  const json j = json::parse(f, nullptr, false);
  UM_CHECK(!j.is_discarded() && j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
           "safetensors", index, ": not an index (a JSON object with a weight_map object)");
  std::map<std::string, size_t> file_index;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    UM_CHECK(it->is_string(), "safetensors", index, ": weight_map[", it.key(), "] is not a file name");
    const std::string file = it->get<std::string>();
    UM_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
             "safetensors", index, ": weight_map[", it.key(), "] = \"", file, "\" is not a file name in ", dir);
    auto [at, added] = file_index.emplace(file, files_.size());
    if (added) {
      UM_CHECK(fs::exists(dir + "/" + file), "safetensors", index, " lists ", file, ", which is missing");
      files_.emplace_back(dir + "/" + file);
    }
    UM_CHECK(files_[at->second].has(it.key()), "safetensors", index, ": tensor ", it.key(), " is not in ", file);
    where_[it.key()] = at->second;
  }
}

const SafetensorsFile& SafetensorsSet::file_of(const std::string& tensor) const {
  auto it = where_.find(tensor);
  UM_CHECK(it != where_.end(), "safetensors", describe_, ": no tensor named ", tensor);
  return files_[it->second];
}

std::string shard_file_name(const std::string& name, int index, int count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%05d-of-%05d.safetensors", index, count);
  return name + buf;
}

void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size, bool sync) {
  json j = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  const std::string text = j.dump(2) + "\n";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  UM_CHECK(fd >= 0, "safetensors", "cannot create ", path, ": ", std::strerror(errno));
  const char* c = text.data();
  size_t n = text.size();
  while (n > 0) {
    const ssize_t k = ::write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const int err = errno;
      ::close(fd);
      fail("safetensors", "writing ", path, " failed: ", std::strerror(err));
    }
    c += k;
    n -= static_cast<size_t>(k);
  }
  if (sync && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("safetensors", "fsync of ", path, " failed: ", std::strerror(err));
  }
  UM_CHECK(::close(fd) == 0, "safetensors", "closing ", path, " failed: ", std::strerror(errno));
}

}  // namespace um
