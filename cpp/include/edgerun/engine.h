// edgerun/engine.h: the native engine that runs a front half (.erg): fp32
// activations, fp32 / int8 / int4 Conv and Gemm weights.
//
// load() mmaps and validates the graph, resolves every node to a kernel with
// precomputed parameters, plans activation memory for max_batch and
// allocates the arena and all scratch once. run() then allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edgerun/graph.h"
#include "edgerun/kernels.h"

namespace edgerun {

// ============================================================================
// Run-time views
// ============================================================================
struct InputView {
  const float*   data;
  const int64_t* dims;
  uint32_t       ndim;
};

// One resolved node: the kernel to call and its precomputed parameters.
struct Step {
  OpCode              op;
  uint32_t            node;     // index into Graph::nodes()
  kernels::ConvParams conv;     // kConv
  kernels::PoolParams pool;     // kMaxPool / kAveragePool
  int64_t             k = 0;    // kGemm: K;  kConcat: axis
  int64_t             n = 0;    // kGemm: N
  int64_t             m = 0;    // kMatMul: M (rows of each product)
  uint32_t            mask = 0; // kReduceMean: reduced axes
  // kTranspose / kSlice: the input element stride of each output dim, and the input
  // element the first output reads.
  int64_t             strides[kErgMaxDims] = {};
  int64_t             offset = 0;
  Act                 act = Act::kNone;
  float               p0 = 0.f, p1 = 0.f;
  // Quantized Conv/Gemm weights: the int8 GEMM (s8) for int8 non-depthwise Conv,
  // else dequantized per run into the engine's dequant buffer (qw).
  Precision           prec = Precision::kFp32;
  kernels::QuantWeight qw{};
  bool                use_s8 = false;
  bool                act_f32 = false; // Conv iattr 11 = 1: int8 weights, fp32 activations
                                       // (dequantized per run; never the int8 GEMM)
  const float*        wdeq = nullptr;  // quantized depthwise Conv: fp32 copy made at load
  const float*        wsmall = nullptr;  // fp32 1x1 Conv on a small plane: packed weights
                                         // for kernels::pointwise_small (made at load)
  const float*        wpack = nullptr;  // other fp32 GEMM convs: weights in [K][8] panels
                                        // (kernels::conv2d_pack_weights, made at load)
  const float*        bpack = nullptr;  // fp32 Gemm, constant B, > 2 rows: B in the GEMM's
                                        // strips (kernels::sgemm_pack_b, made at load)
  bool                s2_direct = false; // 3x3 stride-2 stem: kernels::conv_s2_small (chosen at load)
  kernels::S8Weights  s8{};
  // Fused chain (engine_fuse.cpp): 1x1 Conv -> depthwise Conv -> 1x1 Conv run by
  // row strips whose two inner tensors stay in cache. fuse = 1 on the chain's first
  // step (it runs all three), 2 on the two steps it covers (skipped by run()).
  uint8_t             fuse = 0;
  int64_t             strip_rows = 0;  // head: depthwise output rows per strip
  // Residual Add (+ its Relu) fused into the epilogue of the conv producing one of its inputs
  // (engine_fuse_add.cpp). run_at >= 0: this step runs at step run_at instead (the conv, or
  // its chain's head: run by the Add; the fused Relu: nothing left to run). runs >= 0 (the
  // Add): runs step `runs` here. res (the conv writing the sum): the skip tensor, added after
  // its own epilogue, then res_act (kNone or kRelu).
  int32_t             run_at = -1;
  int32_t             runs = -1;
  uint32_t            res = kErgNoTensor;
  Act                 res_act = Act::kNone;
};

struct AlignedFree {
  void operator()(float* p) const;
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;

// ============================================================================
// Engine
// ============================================================================
class Engine {
 public:
  // kFileNotFound / kFileCorrupt / kVersionUnsupported / kUnsupportedOp / kInvalidArgument.
  static Result<std::unique_ptr<Engine>> load(const std::string& path, int32_t max_batch,
                                              int32_t threads);

  // Runs the graph; outputs stay valid until the next run. kBatchTooLarge, kShapeMismatch.
  Status run(const InputView* inputs, size_t n_inputs, int32_t batch);

  // ---- introspection -------------------------------------------------------
  size_t              num_inputs() const { return graph_.inputs().size(); }
  size_t              num_outputs() const { return graph_.outputs().size(); }
  const TensorInfo&   input_info(size_t i) const { return graph_.tensors()[graph_.inputs()[i]]; }
  const TensorInfo&   output_info(size_t i) const { return graph_.tensors()[graph_.outputs()[i]]; }
  const float*        output_data(size_t i) const { return ptr_[graph_.outputs()[i]]; }
  std::vector<int64_t> output_shape(size_t i, int32_t batch) const;

  uint64_t arena_bytes() const { return arena_bytes_; }
  uint64_t naive_bytes() const { return naive_bytes_; }
  // Kernel scratch, the dequant buffer and fused-chain strips. Weights made at load are
  // not counted: dequantized depthwise filters are tiny, and the packed weights (1x1 convs
  // on small planes, the GEMM convs' panels, small Gemms' strips) replace the file's pages
  // (handed back with madvise; only row / column padding to the tile is extra), so
  // weight_bytes() still bounds the resident weights (whole EfficientNet-Lite0: RSS
  // growth after load + 5 runs 21.4 MB without them, 20.1 MB with; ResNet-50 / ViT fronts
  // with the GEMM packing: within 0.3 MiB of the build before it).
  uint64_t scratch_bytes() const {
    return (scratch_floats_ + deq_floats_ + fused_floats()) * sizeof(float);
  }
  size_t   fused_chains() const;  // how many 1x1 -> depthwise -> 1x1 chains run fused
  size_t   fused_adds() const;    // how many residual Adds run in a conv's epilogue
  uint64_t weight_bytes() const { return graph_.weight_bytes(); }
  int32_t  max_batch() const { return max_batch_; }
  int32_t  threads() const { return threads_; }
  size_t   num_nodes() const { return graph_.nodes().size(); }

  // ---- per-step timing (off by default: one clock read per step when on) ----
  // Each run() adds every step's wall time to step_ns(i); set_profiling(true)
  // also zeroes the totals.
  void set_profiling(bool on);
  size_t   num_steps() const { return steps_.size(); }
  const NodeInfo& step_node(size_t i) const { return graph_.nodes()[steps_[i].node]; }
  const char* step_kernel(size_t i) const;  // "conv-s8", "conv-dw", "conv", ... (what ran)
  uint64_t step_ns(size_t i) const { return i < step_ns_.size() ? step_ns_[i] : 0; }
  uint64_t profiled_runs() const { return profiled_runs_; }

 private:
  Engine() = default;
  Status resolve();                       // nodes -> steps (validates shapes/attrs)
  Status plan_and_allocate();             // liveness, arena, scratch, pointer table
  Status run_step(const Step& s, int32_t batch);
  void   prepare_quant();                 // int8 GEMM weights, dequant buffer size (quant_prepare.cpp)
  void   fuse_chains();                   // mark 1x1 -> depthwise -> 1x1 chains (engine_fuse.cpp)
  void   fuse_residual_adds();            // conv -> Add (-> Relu) into the conv (engine_fuse_add.cpp)
  void   pick_conv_kernels();             // Step::s2_direct, wsmall, wpack, bpack (engine.cpp)
  void   plan_fused_buffers();            // fused_strip_ / fused_share_ (engine_fuse.cpp)
  size_t fused_floats() const { return fused_share_ * size_t(threads_); }
  void   run_fused(size_t head, int32_t batch);
  // wdeq: the step's weights dequantized for this run (per-run dequantized steps), else null.
  // res: a fused residual Add's skip, laid out like y (ldy), else null.
  void   run_pointwise(const Step& s, const float* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                       float* scratch, int threads, const float* wdeq, const float* res = nullptr);
  const float* input(const Step& s, size_t i) const;  // i-th input of the step's node, or null

  Graph                     graph_;
  int32_t                   max_batch_ = 1;
  int32_t                   threads_ = 1;
  std::vector<Step>         steps_;
  std::vector<uint32_t>     root_;        // alias root per tensor (itself if not an alias)
  std::vector<const float*> ptr_;         // data pointer per tensor (inputs set per run)
  std::vector<const float*> concat_srcs_; // scratch pointer list for Concat
  std::vector<int64_t>      concat_inner_;
  FloatBuffer               arena_;
  FloatBuffer               scratch_;
  FloatBuffer               deq_;         // dequantized weights of the running step
  FloatBuffer               fused_;       // per thread: strip buffers + kernel scratch of fused chains
  size_t                    fused_strip_ = 0;  // floats of one thread's strip buffers
  size_t                    fused_share_ = 0;  // floats of one thread's share of fused_
  std::vector<uint8_t>      fused_inner_; // per tensor: 1 = inside a fused chain or a fused
                                          // residual Add (no arena bytes)
  std::vector<std::pair<uint32_t, uint32_t>> add_alias_;  // (tensor, tensor whose buffer it uses):
                                          // a fused Add's inputs/outputs written as one
  size_t                    deq_floats_ = 0;
  std::vector<std::vector<int8_t>>  owned_s8_;   // int8 rows re-padded to a multiple of 4
  std::vector<std::vector<int32_t>> owned_sum_;  // int8 row sums
  std::vector<std::vector<float>>   owned_f32_;  // weights made at load: dequantized, packed
  std::vector<uint64_t>     step_ns_;     // per-step time totals while profiling
  uint64_t                  profiled_runs_ = 0;
  bool                      profiling_ = false;
  uint64_t                  arena_bytes_ = 0;
  uint64_t                  naive_bytes_ = 0;
  size_t                    scratch_floats_ = 0;
};

}  // namespace edgerun
