// Loading a golden file of the PyTorch reference (tests/reference, tests/golden) into the C++
// model: the config, the initial parameters by HF name, the token batches.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/model.h"
#include "train/run_config.h"

namespace um::test {

struct Golden {
  std::string name;
  json meta;
  RunConfig rc;
  std::unique_ptr<SafetensorsFile> st;
  ParamTable table;
  int64_t S = 0, B = 0, T = 0;
  std::vector<int32_t> tokens;  // (S, B, T+1)

  explicit Golden(const std::string& n) : name(n) {
    const std::string base = std::string(ULTRAMOE_SOURCE_DIR) + "/tests/golden/" + n;
    meta = read_json_file(base + ".json");
    rc = parse_run_config(meta["config"]);
    st = std::make_unique<SafetensorsFile>(base + ".safetensors");
    table = build_param_table(rc.model);
    const auto& e = st->entry("tokens");
    S = e.shape[0], B = e.shape[1], T = e.shape[2] - 1;
    tokens = st->read<int32_t>("tokens");
  }
  const int32_t* batch(int64_t step) const { return tokens.data() + (step - 1) * B * (T + 1); }

  template <class T_>
  void load(ParamStore<T_>& ps, const std::string& prefix = "") const {
    for (const ParamInfo& p : table.params)
      st->read_into<T_>(prefix + "param." + p.name, ps.w.data() + p.offset, p.shape);
    for (const BufferInfo& b : table.buffers)
      st->read_into<T_>(prefix + "buffer." + b.name, ps.buf.data() + b.offset, {b.numel});
  }
  std::vector<double> tensor(const std::string& n) const { return st->read<double>(n); }
};

inline double rel_error(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-300); }

// max |a - b| / max |b| over the tensor (or the absolute error when b is all zero)
template <class T>
double normwise(const std::vector<T>& a, const std::vector<double>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    d = std::max(d, std::fabs(double(a[i]) - b[i]));
    m = std::max(m, std::fabs(b[i]));
  }
  return m > 0 ? d / m : d;
}

}  // namespace um::test
