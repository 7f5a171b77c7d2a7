// Strict reading of one JSON object section: every key is read through typed getters, and
// finish() rejects whatever was not read (unknown keys are errors, design.md 1.1). Errors name the
// full key path and the offending value:
//   [config] model.hidden_size: expected an integer, got "big"
#pragma once

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace um {

using json = nlohmann::json;

class JsonReader {
 public:
  JsonReader(const json& obj, std::string path, std::string origin = "config")
      : obj_(obj), path_(std::move(path)), origin_(std::move(origin)) {
    UM_CHECK(obj_.is_object(), origin_, path_, ": expected a JSON object, got ", obj_.dump());
  }

  bool has(const std::string& key) const { return obj_.contains(key) && !obj_[key].is_null(); }
  bool present(const std::string& key) const { return obj_.contains(key); }
  void skip(const std::string& key) { read_.insert(key); }
  std::string path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  const std::string& origin() const { return origin_; }

  template <class T>
  T get(const std::string& key) {
    UM_CHECK(obj_.contains(key), origin_, "missing required key ", path(key));
    read_.insert(key);
    return convert<T>(obj_[key], path(key));
  }

  template <class T>
  T opt(const std::string& key, T fallback) {
    read_.insert(key);
    if (!obj_.contains(key) || obj_[key].is_null()) return fallback;
    return convert<T>(obj_[key], path(key));
  }

  const json& raw(const std::string& key) {
    read_.insert(key);
    static const json null_value;
    return obj_.contains(key) ? obj_[key] : null_value;
  }

  // Rejects any key not read. `ignored` lists keys accepted and dropped (metadata).
  void finish(const std::vector<std::string>& ignored = {}) const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (read_.count(it.key())) continue;
      bool skip = false;
      for (const auto& k : ignored) skip |= k == it.key();
      UM_CHECK(skip, origin_, "unknown key ", path(it.key()));
    }
  }

  template <class T>
  T convert(const json& v, const std::string& where) const {
    if constexpr (std::is_same_v<T, bool>) {
      UM_CHECK(v.is_boolean(), origin_, where, ": expected true or false, got ", v.dump());
      return v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      bool integral = v.is_number_integer() ||
                      (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                       std::fabs(v.get<double>()) < 9.0e15);
      UM_CHECK(integral, origin_, where, ": expected an integer, got ", v.dump());
      return static_cast<T>(v.is_number_integer() ? v.get<int64_t>()
                                                  : static_cast<int64_t>(v.get<double>()));
    } else if constexpr (std::is_floating_point_v<T>) {
      UM_CHECK(v.is_number(), origin_, where, ": expected a number, got ", v.dump());
      return v.get<T>();
    } else if constexpr (std::is_same_v<T, std::string>) {
      UM_CHECK(v.is_string(), origin_, where, ": expected a string, got ", v.dump());
      return v.get<std::string>();
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      UM_CHECK(v.is_array(), origin_, where, ": expected a list of integers, got ", v.dump());
      std::vector<int64_t> out;
      for (size_t i = 0; i < v.size(); ++i) out.push_back(convert<int64_t>(v[i], where + "[" + std::to_string(i) + "]"));
      return out;
    } else {
      static_assert(sizeof(T) == 0, "unsupported type");
    }
  }

 private:
  const json& obj_;
  std::string path_;
  std::string origin_;
  std::set<std::string> read_;
};

// Applies `section.key=value` (value parsed as JSON when it parses, else taken as a string) to
// a config object; intermediate objects must exist or are created for known sections.
void apply_override(json& config, const std::string& assignment);

// Reads a JSON file; errors name the file and the parse position.
json read_json_file(const std::string& path, const std::string& origin = "config");

}  // namespace um
