// Non-owning tensor views: a pointer, a dtype, a shape with strides (in elements) and the device
// the pointer lives on. Views never allocate or free; buffers are owned by an Arena (activations),
// a ParamStore (weights, gradients, optimizer moments) or a file mapping (data shards).
// Ops take raw pointers and sizes; views are for the places that handle tensors by name
// (parameter tables, checkpoints, golden-file comparisons, debugging dumps).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace um {

using Shape = std::vector<int64_t>;

inline int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

inline std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  r += ')';
  return r;
}

struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};  // in elements

  static TensorView contiguous(void* data, DType dtype, const Shape& shape,
                               Device device = Device::cpu) {
    UM_CHECK(shape.size() <= kMaxDims, "tensor", "at most ", kMaxDims, " dims, got ",
             shape.size());
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    v.device = device;
    v.ndim = static_cast<int>(shape.size());
    int64_t s = 1;
    for (int i = v.ndim - 1; i >= 0; --i) {
      v.shape[i] = shape[i];
      v.stride[i] = s;
      s *= shape[i];
    }
    return v;
  }

  template <class T>
  static TensorView of(T* data, const Shape& shape, Device device = Device::cpu) {
    return contiguous(const_cast<std::remove_const_t<T>*>(data), dtype_of<std::remove_const_t<T>>(),
                      shape, device);
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  Shape dims() const { return Shape(shape.begin(), shape.begin() + ndim); }

  bool is_contiguous() const {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && stride[i] != s) return false;
      s *= shape[i];
    }
    return true;
  }

  template <class T>
  T* ptr() const {
    UM_CHECK(dtype == dtype_of<T>(), "tensor", "dtype is ", dtype_name(dtype), ", accessed as ",
             dtype_name(dtype_of<T>()));
    return static_cast<T*>(data);
  }
};

}  // namespace um
