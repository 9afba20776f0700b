// Greedy-by-size static memory planner (see planner.h).
#include "edgerun/planner.h"

#include <algorithm>
#include <numeric>

namespace edgerun {

MemoryPlan plan_memory(const std::vector<BufferUse>& uses, uint64_t align) {
  MemoryPlan plan;
  plan.offsets.assign(uses.size(), 0);
  plan.arena_bytes = 0;
  plan.naive_bytes = 0;
  std::vector<size_t> order(uses.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return uses[a].bytes > uses[b].bytes; });
  std::vector<size_t> placed;
  std::vector<std::pair<uint64_t, uint64_t>> busy;  // [begin, end) taken by live-overlapping buffers
  for (size_t i : order) {
    const BufferUse& u = uses[i];
    const uint64_t size = (u.bytes + align - 1) / align * align;
    plan.naive_bytes += size;
    busy.clear();
    for (size_t j : placed)
      if (uses[j].first <= u.last && u.first <= uses[j].last)
        busy.emplace_back(plan.offsets[j], plan.offsets[j] + (uses[j].bytes + align - 1) / align * align);
    std::sort(busy.begin(), busy.end());
    // Lowest gap that fits (busy intervals may overlap each other).
    uint64_t offset = 0;
    for (const auto& b : busy) {
      if (b.first >= offset + size) break;
      offset = std::max(offset, b.second);
    }
    plan.offsets[i] = offset;
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
    placed.push_back(i);
  }
  return plan;
}

}  // namespace edgerun
