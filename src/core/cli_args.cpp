#include "core/cli_args.h"

#include <cstdlib>

#include "core/error.h"

namespace um {

CliArgs::CliArgs(const std::string& command, const std::vector<std::string>& args,
                 const std::vector<Spec>& specs)
    : command_(command) {
  auto find = [&](const std::string& name) -> const Spec* {
    for (const Spec& s : specs)
      if (s.name == name) return &s;
    return nullptr;
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const Spec* spec = find(name);
    UM_CHECK(spec != nullptr, command_, "unknown option --", name,
             " (see `ultramoe ", command_, " --help`)");
    if (spec->takes_value && !inline_value) {
      UM_CHECK(i + 1 < args.size(), command_, "option --", name, " needs a value");
      value = args[++i];
    }
    UM_CHECK(spec->takes_value || !inline_value, command_, "option --", name,
             " takes no value");
    UM_CHECK(spec->repeated || values_[name].empty(), command_, "option --", name,
             " given more than once");
    values_[name].push_back(value);
  }
}

std::optional<std::string> CliArgs::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::string CliArgs::get_or(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::string CliArgs::require(const std::string& name) const {
  auto v = get(name);
  UM_CHECK(v.has_value(), command_, "missing required option --", name);
  return *v;
}

std::vector<std::string> CliArgs::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

double CliArgs::get_double(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  double d = std::strtod(v->c_str(), &end);
  UM_CHECK(!v->empty() && end && *end == '\0', command_, "option --", name,
           " expects a number, got '", *v, "'");
  return d;
}

long long CliArgs::get_int(const std::string& name, long long fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  long long d = std::strtoll(v->c_str(), &end, 10);
  UM_CHECK(!v->empty() && end && *end == '\0', command_, "option --", name,
           " expects an integer, got '", *v, "'");
  return d;
}

}  // namespace um
