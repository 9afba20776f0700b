// The tool selector (see tools.h): int8 embedding scores and the keep rule.
#include "edgerun/tools.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace edgerun {
namespace tools {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ER_TOOLS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ER_TOOLS_CLONES
#endif

constexpr size_t kLanes = 16;

// One row's dot product. kLanes independent partial sums (lane j sums d = j mod kLanes), so the
// compiler vectorizes it without reassociating a float reduction; every clone gives the same bits.
ER_TOOLS_CLONES float dot_row(const int8_t* row, const float* q, size_t dim) {
  float acc[kLanes] = {};
  size_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) acc[j] += static_cast<float>(row[d + j]) * q[d + j];
  }
  for (size_t j = 0; d < dim; ++d, ++j) acc[j] += static_cast<float>(row[d]) * q[d];
  for (size_t w = kLanes / 2; w > 0; w /= 2) {
    for (size_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

}  // namespace

Status scores(const int8_t* emb, const float* scale, size_t n_tools, size_t dim, const float* query,
              float* scores_out) {
  if (n_tools == 0 || dim == 0 || emb == nullptr || scale == nullptr || query == nullptr || scores_out == nullptr)
    return Status(StatusCode::kInvalidArgument, "tool scores: empty tool index or query; rebuild the tool index");
  for (size_t d = 0; d < dim; ++d) {
    if (!std::isfinite(query[d]))
      return Status(StatusCode::kInvalidArgument,
                    "tool scores: the query embedding has a non-finite value at " + std::to_string(d) +
                        "; the sentence encoder's output is broken (check the tool index's encoder)");
  }
  for (size_t t = 0; t < n_tools; ++t) scores_out[t] = scale[t] * dot_row(emb + t * dim, query, dim);
  return Status::Ok();
}

Status select(const float* scores, size_t n_tools, const Rule& rule, uint32_t* idx_out, size_t* n_kept) {
  if (scores == nullptr || idx_out == nullptr || n_kept == nullptr || n_tools == 0)
    return Status(StatusCode::kInvalidArgument, "tool select: no scores");
  if (rule.k_max == 0 || !std::isfinite(rule.floor) || !std::isfinite(rule.margin) || rule.margin < 0.0f)
    return Status(StatusCode::kInvalidArgument,
                  "tool select: the rule needs k_max >= 1 and a finite floor and margin >= 0; rebuild the tool index");
  if (n_tools > UINT32_MAX) return Status(StatusCode::kInvalidArgument, "tool select: more than 2^32 tools");
  *n_kept = 0;
  float best = scores[0];
  for (size_t t = 0; t < n_tools; ++t) {
    if (!std::isfinite(scores[t]))
      return Status(StatusCode::kInvalidArgument, "tool select: score " + std::to_string(t) + " is not finite");
    best = std::max(best, scores[t]);
  }
  const float cut = std::max(rule.floor, best - rule.margin);
  // Insertion into a best-first list of at most k_max: k_max is small (a few tools).
  const size_t k = std::min<size_t>(rule.k_max, n_tools);
  size_t n = 0;
  for (size_t t = 0; t < n_tools; ++t) {
    const float s = scores[t];
    if (s < cut) continue;
    if (n == k && s <= scores[idx_out[n - 1]]) continue;
    size_t pos = n < k ? n++ : k - 1;
    while (pos > 0 && scores[idx_out[pos - 1]] < s) {
      idx_out[pos] = idx_out[pos - 1];
      --pos;
    }
    idx_out[pos] = static_cast<uint32_t>(t);
  }
  *n_kept = n;
  return Status::Ok();
}

}  // namespace tools
}  // namespace edgerun
