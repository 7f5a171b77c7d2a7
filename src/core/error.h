// The one error type of ultramoe. Every error names where it comes from and the offending value:
//   [checkpoint] tensor model.norm.weight: expected (64), file has (32)
// The CLI prints `ultramoe: error: <what()>` and exits non-zero. Not for programming errors that
// tests should catch (those are asserts); for anything a user's input can cause.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace um {

class Error : public std::runtime_error {
 public:
  Error(std::string origin, const std::string& message)
      : std::runtime_error("[" + origin + "] " + message), origin_(std::move(origin)) {}
  const std::string& origin() const noexcept { return origin_; }

 private:
  std::string origin_;
};

// Concatenates its arguments with operator<<.
template <class... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

template <class... Parts>
[[noreturn]] void fail(std::string_view origin, Parts&&... parts) {
  throw Error(std::string(origin), cat(std::forward<Parts>(parts)...));
}

}  // namespace um

// UM_CHECK(cond, "origin", "message parts", value, ...) throws um::Error when cond is false.
#define UM_CHECK(cond, origin, ...)                        \
  do {                                                     \
    if (!(cond)) ::um::fail((origin), __VA_ARGS__);        \
  } while (0)
