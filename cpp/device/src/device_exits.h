// cpp/device/src/device_exits.h: early exits on the C++ device, as edgerun/exits.py runs them: the
// segments exit<i>.erg of the manifest's exits entry (docs/BUNDLE.md) run in order, each giving the
// next point tensor and its head's output; after each the criterion of edgerun/exits.h (the core's,
// the very code the Python device calls) decides, under the chosen budget's thresholds, whether the
// device answers there. The last segment ends at the cut: its point tensor (with the model inputs
// passing through the cut) goes to the server, its head is the deepest local answer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "device_bundle.h"
#include "device_npy.h"
#include "edgerun/engine.h"
#include "edgerun/exits.h"

namespace edgerun_device {

// What the segments produced for one batch (edgerun/exits.py Step).
struct Step {
  int                exited = -1;           // the exit that answered on confidence, or -1
  std::string        reason;                // "confident: max_prob 0.982 >= 0.972"
  std::vector<Array> heads;                 // one per segment run
  Array              point;                 // the last point tensor (when every segment ran)
  double             compute_fraction = 1;  // front compute spent, as a fraction of the front half
  int deepest() const { return int(heads.size()) - 1; }
};

class Exits {
 public:
  // Loads the segments (checked against their sha256) and the budget: "" = the manifest's default,
  // "off" = no confident exits. kExitBundle for a malformed entry or a missing / altered segment,
  // kExitUsage for an unknown budget (the message lists the bundle's).
  Err load(const DeviceBundle& b, const std::string& budget, int32_t max_batch, int32_t threads);

  // Runs segments until an exit is confident or the cut is reached (every segment when
  // confident_exits is false: --dump-frame).
  Err run(const std::map<std::string, Array>& inputs, int64_t batch, Step* step, bool confident_exits = true);

  // The cut tensors by name after a run that reached the cut: the last point tensor, and the model
  // inputs passing through the cut as they came.
  std::map<std::string, const Array*> cut(const Step& step, const std::map<std::string, Array>& inputs) const;

  const std::string& budget() const { return budget_; }
  int32_t max_batch() const { return max_batch_; }

 private:
  struct Point {
    std::string                      input, tensor, head;
    double                           compute_fraction = 1;
    bool                             has_threshold = false;
    double                           threshold = 0;  // as the manifest has it (the criterion takes a float)
    std::unique_ptr<edgerun::Engine> engine;
    std::vector<int>                 feeds;  // per engine input: -1 the previous point tensor, else a model input
    size_t                           tensor_out = 0, head_out = 0;
    int64_t                          head_size = 1;  // the head's values a sample (-1: known at run time only)
  };
  const DeviceBundle*         b_ = nullptr;
  edgerun::exits::Criterion   crit_ = edgerun::exits::Criterion::kMaxProb;
  std::string                 crit_name_, budget_;
  std::vector<Point>          points_;
  std::vector<std::string>    cut_names_;
  int32_t                     max_batch_ = 8;
};

}  // namespace edgerun_device
