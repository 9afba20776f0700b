// edgerun/tools.h: the device's tool selector (dynamic tool selection for an LLM agent).
//
// The exporter embeds every tool of an agent's catalog once (exporters/tools.py) and stores
// the embeddings as int8 rows with one fp32 scale each (row t ~ scale[t] * e[t, :]). At run
// time the device embeds the query and keeps only the tools it needs:
//   score[t] = scale[t] * sum_d e[t, d] * q[d]        (cosine: rows and query are unit length)
//   kept     = the k_max best tools whose score >= max(floor, best - margin), best first
// so the request to the server's LLM carries a few tool schemas instead of the catalog.
// The rule's parameters (floor, margin, k_max) are calibrated on labelled queries at export.
// No allocation but the caller's buffers, no Python.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgerun/status.h"

namespace edgerun {
namespace tools {

struct Rule {
  float floor = -1.0f;   // a tool scoring below this is never kept (a query may keep none)
  float margin = 2.0f;   // keep tools within this of the best score
  uint32_t k_max = 1;    // keep at most this many (>= 1)
};

// scores[t] for t < n_tools; emb is [n_tools, dim] row-major. The query must be finite.
Status scores(const int8_t* emb, const float* scale, size_t n_tools, size_t dim, const float* query,
              float* scores_out);

// The kept tools' indices, best first (ties: lower index first), into idx_out (room for k_max);
// *n_kept gets their count (0..k_max). Scores must be finite.
Status select(const float* scores, size_t n_tools, const Rule& rule, uint32_t* idx_out, size_t* n_kept);

}  // namespace tools
}  // namespace edgerun
