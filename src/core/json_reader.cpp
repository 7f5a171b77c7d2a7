#include "core/json_reader.h"

#include <fstream>
#include <sstream>

namespace um {

void apply_override(json& config, const std::string& assignment) {
  auto eq = assignment.find('=');
  UM_CHECK(eq != std::string::npos && eq > 0, "config", "--set expects KEY=VALUE, got '",
           assignment, "'");
  std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  json* node = &config;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    UM_CHECK(!part.empty(), "config", "--set: malformed key '", key, "'");
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return;
    }
    if (!node->contains(part)) (*node)[part] = json::object();
    node = &(*node)[part];
    UM_CHECK(node->is_object(), "config", "--set ", key, ": ", part, " is not a section");
    start = dot + 1;
  }
}

json read_json_file(const std::string& path, const std::string& origin) {
  std::ifstream f(path);
  UM_CHECK(f.good(), origin, "cannot open ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail(origin, path, " is not valid JSON: ", e.what());
  }
}

}  // namespace um
