// Early-exit criteria (see exits.h): pure functions, errors as Status values.
#include "edgerun/exits.h"

#include <cmath>
#include <cstring>
#include <string>

namespace edgerun {
namespace exits {
namespace {

Status check(const float* x, size_t n, const char* what) {
  if (x == nullptr || n == 0)
    return Status(StatusCode::kInvalidArgument, std::string(what) + ": empty input; an exit head has >= 1 output");
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]))
      return Status(StatusCode::kInvalidArgument,
                    std::string(what) + ": non-finite value at index " + std::to_string(i) +
                        "; the exit head produced NaN/Inf (check the input and the bundle)");
  }
  return Status::Ok();
}

// Softmax statistics in one pass over exp(x - max): sum, and sum of e*(x - max).
void softmax_sums(const float* x, size_t n, double* sum, double* weighted, float* max_out) {
  float m = x[0];
  for (size_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  double s = 0.0, w = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - m;
    const double e = std::exp(d);
    s += e;
    w += e * d;
  }
  *sum = s;
  *weighted = w;
  *max_out = m;
}

}  // namespace

Result<Criterion> parse_criterion(const char* name) {
  const std::string s = name ? name : "";
  if (s == "max_prob") return Criterion::kMaxProb;
  if (s == "entropy") return Criterion::kEntropy;
  if (s == "consistency") return Criterion::kConsistency;
  return Status(StatusCode::kInvalidArgument,
                "unknown exit criterion '" + s + "'; use max_prob, entropy or consistency");
}

const char* criterion_name(Criterion c) {
  switch (c) {
    case Criterion::kMaxProb: return "max_prob";
    case Criterion::kEntropy: return "entropy";
    case Criterion::kConsistency: return "consistency";
  }
  return "unknown";
}

Result<float> max_prob(const float* logits, size_t n) {
  ER_RETURN_IF_ERROR(check(logits, n, "max_prob"));
  double sum = 0.0, weighted = 0.0;
  float m = 0.0f;
  softmax_sums(logits, n, &sum, &weighted, &m);
  return static_cast<float>(1.0 / sum);  // exp(max - max) / sum
}

Result<float> entropy(const float* logits, size_t n) {
  ER_RETURN_IF_ERROR(check(logits, n, "entropy"));
  double sum = 0.0, weighted = 0.0;
  float m = 0.0f;
  softmax_sums(logits, n, &sum, &weighted, &m);
  // H = -sum p_i log p_i with p_i = e_i / S, log p_i = d_i - log S  =>  H = log S - (sum e_i d_i) / S
  const double h = std::log(sum) - weighted / sum;
  return static_cast<float>(h < 0.0 ? 0.0 : h);
}

Result<float> consistency(const float* a, const float* b, size_t n) {
  ER_RETURN_IF_ERROR(check(a, n, "consistency (this exit)"));
  ER_RETURN_IF_ERROR(check(b, n, "consistency (previous exit)"));
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    acc += d * d;
  }
  return static_cast<float>(std::sqrt(acc / static_cast<double>(n)));
}

Status scores(Criterion c, const float* x, const float* prev, size_t batch, size_t n, float* out) {
  if (out == nullptr || batch == 0) return Status(StatusCode::kInvalidArgument, "exit scores: empty batch");
  if (c == Criterion::kConsistency && prev == nullptr)
    return Status(StatusCode::kInvalidArgument,
                  "the consistency criterion needs the previous exit's output; the first exit cannot use it");
  for (size_t r = 0; r < batch; ++r) {
    const float* row = x + r * n;
    Result<float> s = c == Criterion::kMaxProb   ? max_prob(row, n)
                      : c == Criterion::kEntropy ? entropy(row, n)
                                                 : consistency(row, prev + r * n, n);
    if (!s.ok()) return s.status();
    out[r] = s.value();
  }
  return Status::Ok();
}

bool passes(Criterion c, float score, float threshold) {
  return c == Criterion::kMaxProb ? score >= threshold : score <= threshold;
}

Status all_pass(Criterion c, const float* x, const float* prev, size_t batch, size_t n, float threshold,
                bool* out, float* worst_score) {
  ER_ASSERT(out != nullptr && worst_score != nullptr);
  *out = true;
  for (size_t r = 0; r < batch; ++r) {
    float s = 0.0f;
    ER_RETURN_IF_ERROR(scores(c, x + r * n, prev ? prev + r * n : nullptr, 1, n, &s));
    // The worst row decides: lowest max_prob, highest entropy / distance.
    const bool worse = r == 0 || (c == Criterion::kMaxProb ? s < *worst_score : s > *worst_score);
    if (worse) *worst_score = s;
    if (!passes(c, s, threshold)) *out = false;
  }
  return Status::Ok();
}

}  // namespace exits
}  // namespace edgerun
