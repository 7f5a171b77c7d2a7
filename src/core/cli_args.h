// Command-line arguments of a subcommand: `--name value`, `--name=value`, boolean `--flag`, and
// repeated options (`--set a=1 --set b=2`). Every option must be declared by the subcommand;
// an unknown or malformed one is an error naming it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace um {

class CliArgs {
 public:
  struct Spec {
    std::string name;     // without the leading --
    bool takes_value;
    bool repeated = false;
  };

  // args: the words after the subcommand name. specs: the options it accepts.
  CliArgs(const std::string& command, const std::vector<std::string>& args,
          const std::vector<Spec>& specs);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& fallback) const;
  std::string require(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  double get_double(const std::string& name, double fallback) const;
  long long get_int(const std::string& name, long long fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::string command_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

}  // namespace um
