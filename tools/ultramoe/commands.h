// The subcommands of the ultramoe CLI. Each lives in its own cmd_<name>.cpp and is listed once
// in main.cpp. A subcommand gets the words after its name and returns the exit status; errors
// are thrown as um::Error and printed by main as `ultramoe: error: ...`.
#pragma once

#include <string>
#include <vector>

namespace um::cli {

using Args = std::vector<std::string>;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Args& args);
};

// True when args ask for help; prints `usage` then.
bool wants_help(const Args& args, const char* usage);

int cmd_bench(const Args& args);
int cmd_data(const Args& args);
int cmd_eval(const Args& args);
int cmd_export(const Args& args);
int cmd_import(const Args& args);
int cmd_inspect(const Args& args);
int cmd_plan(const Args& args);
int cmd_sample(const Args& args);
int cmd_train(const Args& args);

}  // namespace um::cli
