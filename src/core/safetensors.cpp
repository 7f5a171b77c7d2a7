#include "core/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

namespace um {

using json = nlohmann::json;

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  UM_CHECK(f.good(), "safetensors", "cannot open ", path);
  const auto size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  UM_CHECK(size >= 8, "safetensors", path, ": truncated (", size, " bytes, no header)");
  bytes_.resize(size);
  f.read(bytes_.data(), static_cast<std::streamsize>(size));
  UM_CHECK(f.good(), "safetensors", path, ": read error");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes_[i]);
  UM_CHECK(n <= size - 8, "safetensors", path, ": header length ", n, " exceeds the file (",
           size, " bytes); truncated or not a safetensors file");
  data_start_ = 8 + n;
  json h = json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<std::ptrdiff_t>(n),
                       nullptr, false);
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
    en.dtype = dtype_from_name(e["dtype"].get<std::string>());
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
  return bytes_.data() + data_start_ + entry(name).begin;
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

}  // namespace um
