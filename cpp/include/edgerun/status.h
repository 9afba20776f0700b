// edgerun/status.h: errors as values for the device runtime.
//
// The runtime never throws. A function that can fail returns Status or
// Result<T>; callers propagate with ER_RETURN_IF_ERROR / ER_ASSIGN_OR_RETURN.
// Only the binding edge (cpp/bindings/module.cpp) turns a Status into a
// Python exception. A broken invariant (a bug in edgerun, not bad input)
// aborts loudly with ER_ASSERT.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

namespace edgerun {

// ============================================================================
// Status codes, in numbered groups. Never renumber; only add.
// ============================================================================
enum class StatusCode : uint32_t {
  kOk = 0,

  // 0x01xx: the caller's input is wrong (tell the user what to do)
  kInvalidArgument = 0x0100,
  kShapeMismatch = 0x0101,
  kDtypeMismatch = 0x0102,
  kBatchTooLarge = 0x0103,

  // 0x02xx: a file (bundle, engine graph) is wrong or corrupted
  kFileNotFound = 0x0200,
  kFileCorrupt = 0x0201,
  kVersionUnsupported = 0x0202,
  kUnsupportedOp = 0x0203,

  // 0x03xx: a wire frame is wrong
  kFrameTruncated = 0x0300,
  kFrameBadMagic = 0x0301,
  kFrameBadVersion = 0x0302,
  kFrameBadChecksum = 0x0303,
  kFrameTooLarge = 0x0304,
  kFrameMalformed = 0x0305,
  kFrameNonFinite = 0x0306,
  kFrameUnsupportedCodec = 0x0307,
  kFrameWrongBundle = 0x0308,

  // 0x04xx: resources
  kOutOfMemory = 0x0400,

  // 0x0Fxx: a bug in edgerun
  kInternal = 0x0F00,
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() { return value_; }
  const T& value() const { return value_; }
  T&& take() { return std::move(value_); }

 private:
  Status status_;
  T value_{};
};

}  // namespace edgerun

// ============================================================================
// Macros
// ============================================================================
#define ER_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    ::edgerun::Status _er_status = (expr);       \
    if (!_er_status.ok()) return _er_status;     \
  } while (0)

#define ER_CONCAT_INNER(a, b) a##b
#define ER_CONCAT(a, b) ER_CONCAT_INNER(a, b)
#define ER_ASSIGN_OR_RETURN(lhs, expr)                                  \
  auto ER_CONCAT(_er_result_, __LINE__) = (expr);                       \
  if (!ER_CONCAT(_er_result_, __LINE__).ok())                           \
    return ER_CONCAT(_er_result_, __LINE__).status();                   \
  lhs = ER_CONCAT(_er_result_, __LINE__).take()

#define ER_ASSERT(cond)                                                              \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "edgerun: internal invariant failed at %s:%d: %s\n",      \
                   __FILE__, __LINE__, #cond);                                       \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)
