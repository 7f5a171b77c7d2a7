// safetensors files (the Hugging Face format): 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the raw little-endian data. Offsets are relative to
// the end of the header. The format is a few lines of code, so we read and write it ourselves.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace um {

class SafetensorsFile {
 public:
  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t begin = 0, end = 0;  // byte range in the data area
  };

  // Reads and validates the header and the file length; data is read into memory.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  const Entry& entry(const std::string& name) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const void* data(const std::string& name) const;

  // Copies tensor `name` into dst, converting F32/F64/BF16 to T. Checks the shape.
  template <class T>
  void read_into(const std::string& name, T* dst, const Shape& expected) const;
  template <class T>
  std::vector<T> read(const std::string& name) const;  // any shape, converted

 private:
  std::string path_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<char> bytes_;
  uint64_t data_start_ = 0;
};

class SafetensorsWriter {
 public:
  // The pointer must stay valid until write().
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Writes the file (not atomically: callers write into a temporary directory and rename).
  // fsync when `sync`.
  void write(const std::string& path, bool sync) const;

 private:
  struct Item {
    std::string name;
    DType dtype;
    Shape shape;
    const void* data;
  };
  std::vector<Item> items_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace um
