// Internal: the engine's environment knobs (EDGERUN_NO_AVX512, EDGERUN_SPIN_US, ...), parsed
// one way everywhere. The callers decide when a knob is read (once per process or per engine
// load); these only parse. A bad value never throws (knobs are read deep in kernel dispatch):
// it warns once per variable on stderr. Header-only so that parallel.cpp still builds alone
// (tests/runtime/test_parallel.py's ThreadSanitizer build).
#pragma once

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <set>
#include <string>

namespace edgerun {
namespace env_detail {

inline bool same_nocase(const char* a, const char* b) {
  for (; *a != '\0' && *b != '\0'; ++a, ++b)
    if (std::tolower(static_cast<unsigned char>(*a)) != std::tolower(static_cast<unsigned char>(*b)))
      return false;
  return *a == *b;
}

inline bool one_of(const char* v, std::initializer_list<const char*> words) {
  for (const char* w : words)
    if (same_nocase(v, w)) return true;
  return false;
}

// True the first time a variable is warned about (some knobs are read on every run).
inline bool first_warning(const char* name) {
  static std::mutex mu;
  static std::set<std::string> warned;
  std::lock_guard<std::mutex> lock(mu);
  return warned.insert(name).second;
}

}  // namespace env_detail

// A boolean knob. Unset, empty, "0", "false", "no", "off" (any case): false; "1", "true",
// "yes", "on": true; any other value: true, with a warning naming the accepted values.
inline bool env_flag(const char* name) {
  using env_detail::one_of;
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0' || one_of(v, {"0", "false", "no", "off"})) return false;
  if (one_of(v, {"1", "true", "yes", "on"})) return true;
  if (env_detail::first_warning(name))
    std::fprintf(stderr,
                 "edgerun: warning: %s=%s is not a recognised value (accepted: 1/true/yes/on, "
                 "0/false/no/off, or unset); treating it as on\n",
                 name, v);
  return true;
}

// A non-negative integer knob (microseconds, KiB). Unset or empty: `fallback`; a value that is
// not a non-negative decimal integer (digits only) or does not fit a long: `fallback`, with a
// warning naming the variable, the value and the default.
inline long env_count(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  bool ok = true;
  for (const char* c = v; *c != '\0'; ++c) ok = ok && std::isdigit(static_cast<unsigned char>(*c));
  long n = 0;
  if (ok) {
    errno = 0;
    n = std::strtol(v, nullptr, 10);
    ok = errno == 0;
  }
  if (ok) return n;
  if (env_detail::first_warning(name))
    std::fprintf(stderr,
                 "edgerun: warning: %s=%s is not a non-negative integer; using the default %ld\n",
                 name, v, fallback);
  return fallback;
}

}  // namespace edgerun
