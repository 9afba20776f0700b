// edgerun/exits.h: early-exit criteria, pure functions on float arrays.
//
// An exit head's output decides whether the device may answer by itself:
//   max_prob     softmax(logits).max()        exits when score >= threshold
//   entropy      -sum p log p of softmax (nats) exits when score <= threshold
//   consistency  RMS distance between this exit's output and the previous
//                exit's (action consistency, DeeR-VLA)  exits when score <= threshold
// Thresholds are calibrated at export time (exporters/exits.py) and stored in
// the bundle's manifest per named budget. No allocation, no Python.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgerun/status.h"

namespace edgerun {
namespace exits {

// Never renumber; only add (the id is not on the wire, but tests pin it).
enum class Criterion : uint8_t { kMaxProb = 0, kEntropy = 1, kConsistency = 2 };

// Parses "max_prob" | "entropy" | "consistency" (kInvalidArgument otherwise).
Result<Criterion> parse_criterion(const char* name);
const char* criterion_name(Criterion c);

// Highest softmax probability of n logits (numerically stable). n >= 1, finite.
Result<float> max_prob(const float* logits, size_t n);

// Softmax entropy in nats of n logits; 0 (sure) .. log(n) (uniform).
Result<float> entropy(const float* logits, size_t n);

// sqrt(mean((a - b)^2)) over n values: how far two successive exits disagree.
Result<float> consistency(const float* a, const float* b, size_t n);

// One score per row of a (batch, n) row-major array into out[batch].
// prev (same shape) is required for kConsistency and ignored otherwise.
Status scores(Criterion c, const float* x, const float* prev, size_t batch, size_t n, float* out);

// Whether a score passes a threshold: >= for kMaxProb, <= for the others.
bool passes(Criterion c, float score, float threshold);

// True when every row of the batch passes (the device exits a batch as one).
Status all_pass(Criterion c, const float* x, const float* prev, size_t batch, size_t n, float threshold,
                bool* out, float* worst_score);

}  // namespace exits
}  // namespace edgerun
