// edgerun/graph.h: the engine graph file (".erg") and its validating loader.
//
// The converter (exporters/erg.py) writes the file; Graph::open mmaps it and
// checks every count, offset and id before anything else reads it, so a
// truncated or corrupted file is a kFileCorrupt Status, never a crash.
// Layout and evolution rules: cpp/include/edgerun/ERG.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "edgerun/status.h"

namespace edgerun {

// ============================================================================
// Format constants (never renumber; only add)
// ============================================================================
constexpr char     kErgMagic[4]       = {'E', 'R', 'G', 'N'};
constexpr uint32_t kErgVersion        = 2;  // 2: quantized (int8/int4) weights
constexpr uint32_t kErgHeaderBytes    = 128;
constexpr uint32_t kErgTensorBytes    = 96;
constexpr uint32_t kErgNodeBytes      = 176;
constexpr uint32_t kErgMaxDims        = 6;
constexpr uint32_t kErgNumIAttrs      = 16;
constexpr uint32_t kErgNumFAttrs      = 4;
constexpr uint32_t kErgWeightAlign    = 64;
constexpr uint32_t kErgNoTensor       = 0xFFFFFFFFu;  // an absent optional input

// kInt8: symmetric per output channel, one byte per value, scales in a separate
// f32 tensor [rows]. kInt4: group-wise along K, two values per byte (low nibble
// first), rows padded to a whole number of groups, scales f32 [rows, groups].
enum class DType : uint8_t { kFloat32 = 1, kInt8 = 2, kInt4 = 3 };

// Weight precision of a Conv/Gemm node (its "prec" attribute slot).
enum class Precision : int64_t { kFp32 = 0, kInt8 = 1, kInt4 = 2 };

enum class TensorKind : uint8_t {
  kActivation = 0,  // lives in the arena (or aliases another tensor)
  kWeight     = 1,  // lives in the weights blob, used in place from the mmap
  kInput      = 2,  // supplied by the caller at run time
};

// Op codes: a fixed numbered enum. Attribute slots per op are listed in ERG.md.
enum class OpCode : uint32_t {
  kConv              = 1,
  kGemm              = 2,
  kAdd               = 3,
  kSub               = 4,
  kMul               = 5,
  kDiv               = 6,
  kRelu              = 7,
  kClip              = 8,
  kSigmoid           = 9,
  kHardSigmoid       = 10,
  kHardSwish         = 11,
  kSilu              = 12,
  kMaxPool           = 13,
  kAveragePool       = 14,
  kGlobalAveragePool = 15,
  kReduceMean        = 16,
  kConcat            = 17,
  kReshape           = 18,  // also Flatten / Identity / Squeeze / Unsqueeze
  kChannelAffine     = 19,  // standalone BatchNormalization: x * scale[c] + shift[c]
  kPad               = 20,
  kLeakyRelu         = 21,  // x >= 0 ? x : alpha * x
  kGelu              = 22,  // exact (erf) or tanh approximation
  kResize            = 23,  // nearest, integer scale factors on H and W
  kTranspose         = 24,  // a permutation that keeps the batch dim first
  kSlice             = 25,  // static starts and positive steps, off the batch dim
  kSoftmax           = 26,  // along one non-batch axis
  kTanh              = 27,
  kElu               = 28,  // x > 0 ? x : alpha * (exp(x) - 1)
  kSoftplus          = 29,  // log(1 + exp(x))
  kMish              = 30,  // x * tanh(softplus(x))
  kPRelu             = 31,  // x >= 0 ? x : slope * x, slope broadcast (a binary op)
  kLayerNorm         = 32,  // over the trailing dims from axis, then * scale + bias
  kMatMul            = 33,  // two activations: [..., M, K] x [..., K, N], same leading dims
  kResizeLinear      = 34,  // bilinear on H and W, any scale, 4 coordinate modes
  kExpand            = 35,  // a constant [1, ...] copied to every sample of the batch
};

// Fused activation codes (Conv, Gemm, ChannelAffine iattr slot "act").
enum class Act : int64_t { kNone = 0, kRelu = 1, kClip = 2 };

const char* op_name(OpCode op);  // "Conv", ... or "Unknown"

// ============================================================================
// Parsed, validated views of the file (pointers into the mmap)
// ============================================================================
struct TensorInfo {
  std::string name;
  DType       dtype;
  TensorKind  kind;
  uint32_t    ndim;
  int64_t     dims[kErgMaxDims];  // dims[0] == -1: the batch dim, set per run
  const float* data;              // f32 weights only; 64-byte aligned in the mmap
  const uint8_t* qdata;           // int8 / int4 weights only (raw bytes in the mmap)
  uint64_t    data_bytes;
  uint32_t    group;              // int4: group size along K (even, >= 2); else 0

  // Quantized weights are 2-D in effect: rows = dims[0], k = product of the rest.
  int64_t rows() const { return dims[0]; }
  int64_t row_k() const;
  int64_t groups() const { return group ? (row_k() + group - 1) / group : 1; }
  // Bytes of one stored row: k (int8) or groups * group / 2 (int4).
  int64_t row_bytes() const;

  int64_t numel(int64_t batch) const;  // elements at this batch
  bool    batched() const { return ndim > 0 && dims[0] == -1; }
};

struct NodeInfo {
  std::string           name;
  OpCode                op;
  std::vector<uint32_t> inputs;   // tensor ids (kErgNoTensor = absent optional)
  std::vector<uint32_t> outputs;  // tensor ids
  int64_t               iattr[kErgNumIAttrs];
  float                 fattr[kErgNumFAttrs];
};

// ============================================================================
// Graph: an opened, validated .erg file
// ============================================================================
class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(const Graph&)            = delete;
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;

  // mmaps `path` and validates it. kFileNotFound / kFileCorrupt / kVersionUnsupported.
  static Result<Graph> open(const std::string& path);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::vector<NodeInfo>&   nodes() const { return nodes_; }
  const std::vector<uint32_t>&   inputs() const { return inputs_; }
  const std::vector<uint32_t>&   outputs() const { return outputs_; }
  uint64_t                       weight_bytes() const { return weight_bytes_; }
  uint32_t                       version() const { return version_; }

 private:
  Status parse(const uint8_t* base, uint64_t size);
  void   release();

  void*                   map_ = nullptr;
  uint64_t                map_bytes_ = 0;
  uint32_t                version_ = 0;
  uint64_t                weight_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<NodeInfo>   nodes_;
  std::vector<uint32_t>   inputs_;
  std::vector<uint32_t>   outputs_;
};

}  // namespace edgerun
