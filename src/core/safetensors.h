// safetensors files (the Hugging Face format): 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the raw little-endian data. Offsets are relative to
// the end of the header. The format is a few lines of code, so we read and write it ourselves.
// Files are memory-mapped for reading: opening a checkpoint of any size costs its header, and a
// tensor's pages are read when the tensor is. A directory may hold one file NAME.safetensors or
// shards tied by NAME.safetensors.index.json (the Hugging Face layout): SafetensorsSet opens
// either and finds tensors by name.
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

  // Reads and validates the header and the file length; the data stays in the file (mmap).
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  const Entry& entry(const std::string& name) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const void* data(const std::string& name) const;

  // Copies tensor `name` into dst, converting F32/F64/BF16/integers to T. Checks the shape.
  template <class T>
  void read_into(const std::string& name, T* dst, const Shape& expected) const;
  template <class T>
  std::vector<T> read(const std::string& name) const;  // any shape, converted

 private:
  void parse_header();
  void release();

  std::string path_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  const char* map_ = nullptr;  // the whole file, read-only
  uint64_t map_bytes_ = 0;
  uint64_t data_start_ = 0;
};

// NAME.safetensors in a directory, or its shards listed by NAME.safetensors.index.json
// ({"metadata": {...}, "weight_map": {tensor: file}}). Every listed file is opened (headers
// only) and every tensor of the index must be in the file it names.
class SafetensorsSet {
 public:
  SafetensorsSet(const std::string& dir, const std::string& name = "model");
  static bool exists(const std::string& dir, const std::string& name = "model");

  bool sharded() const { return sharded_; }
  bool has(const std::string& tensor) const { return where_.count(tensor) > 0; }
  const SafetensorsFile& file_of(const std::string& tensor) const;
  const SafetensorsFile::Entry& entry(const std::string& tensor) const { return file_of(tensor).entry(tensor); }
  const std::map<std::string, size_t>& tensors() const { return where_; }  // name -> file index
  const std::vector<SafetensorsFile>& files() const { return files_; }
  template <class T>
  void read_into(const std::string& tensor, T* dst, const Shape& expected) const {
    file_of(tensor).read_into<T>(tensor, dst, expected);
  }
  const std::string& describe() const { return describe_; }  // for errors: the file or the index

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
  bool sharded_ = false;
  std::string describe_;
};

// Shard file names in the Hugging Face spelling: "model-00002-of-00005.safetensors".
std::string shard_file_name(const std::string& name, int index, int count);
// Writes NAME.safetensors.index.json: metadata.total_size and weight_map (tensor -> file).
// fsync when `sync`.
void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size, bool sync);

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
