// edgerun/planner.h: static memory plan for activations.
//
// Each activation buffer has a lifetime [first, last] in node order; buffers
// whose lifetimes overlap never share bytes. Offsets are assigned greedily,
// largest buffer first, at the lowest offset that fits (a classic "greedy by
// size" plan), all within one arena allocated once at load.
#pragma once

#include <cstdint>
#include <vector>

namespace edgerun {

// ============================================================================
// Plan
// ============================================================================
struct BufferUse {
  uint64_t bytes;  // size at max_batch
  int32_t  first;  // index of the producing node
  int32_t  last;   // index of the last reading node (n_nodes for graph outputs)
};

struct MemoryPlan {
  std::vector<uint64_t> offsets;      // one per BufferUse, multiples of `align`
  uint64_t              arena_bytes;  // total arena size
  uint64_t              naive_bytes;  // sum of all buffers (what no reuse would cost)
};

MemoryPlan plan_memory(const std::vector<BufferUse>& uses, uint64_t align = 64);

}  // namespace edgerun
