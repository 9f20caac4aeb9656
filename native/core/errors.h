// C++ exceptions that the binding layer turns into JS errors with stable codes.
// Kernels never throw for bad input: ops/ validates first. These carry validation failures out.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace peft {

enum class ErrKind { Peft, Type, Range };

struct PeftException : std::runtime_error {
  std::string code;
  ErrKind kind;
  PeftException(ErrKind k, std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)), kind(k) {}
};

[[noreturn]] inline void fail(const char* code, const std::string& msg) { throw PeftException(ErrKind::Peft, code, msg); }
[[noreturn]] inline void fail_type(const std::string& msg) { throw PeftException(ErrKind::Type, "ERR_INVALID_ARG_TYPE", msg); }
[[noreturn]] inline void fail_range(const std::string& msg) { throw PeftException(ErrKind::Range, "ERR_OUT_OF_RANGE", msg); }

// Builds a message from streamable parts: fail("ERR_SHAPE", cat("linear: x has ", k, " features"))
template <typename... Ts>
std::string cat(const Ts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace peft
