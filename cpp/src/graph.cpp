// Validating loader for the .erg engine graph file (layout: ERG.md).
// Every count, offset and id is checked before use: a bad file is a Status.
#include "edgerun/graph.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace edgerun {

namespace {

template <typename T>
T rd(const uint8_t* p) {  // the file is little-endian; so are all supported hosts
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

Status corrupt(const std::string& what) {
  return Status(StatusCode::kFileCorrupt,
                "engine graph file is corrupt: " + what +
                    "; re-create it with the exporter (edgerun export) or restore the bundle");
}

// True when [off, off + bytes) lies inside [0, size), without overflow.
bool in_range(uint64_t off, uint64_t bytes, uint64_t size) {
  return off <= size && bytes <= size - off;
}

struct Header {
  uint32_t version, header_bytes, tensor_bytes, node_bytes;
  uint32_t n_tensors, n_nodes, n_inputs, n_outputs, n_ids;
  uint64_t file_bytes, tensors_off, nodes_off, ids_off, strings_off, strings_bytes;
  uint64_t weights_off, weights_bytes;
};

Header read_header(const uint8_t* b) {
  Header h;
  h.version = rd<uint32_t>(b + 4);
  h.header_bytes = rd<uint32_t>(b + 8);
  h.tensor_bytes = rd<uint32_t>(b + 12);
  h.node_bytes = rd<uint32_t>(b + 16);
  h.n_tensors = rd<uint32_t>(b + 20);
  h.n_nodes = rd<uint32_t>(b + 24);
  h.n_inputs = rd<uint32_t>(b + 28);
  h.n_outputs = rd<uint32_t>(b + 32);
  h.n_ids = rd<uint32_t>(b + 36);
  h.file_bytes = rd<uint64_t>(b + 40);
  h.tensors_off = rd<uint64_t>(b + 48);
  h.nodes_off = rd<uint64_t>(b + 56);
  h.ids_off = rd<uint64_t>(b + 64);
  h.strings_off = rd<uint64_t>(b + 72);
  h.strings_bytes = rd<uint64_t>(b + 80);
  h.weights_off = rd<uint64_t>(b + 88);
  h.weights_bytes = rd<uint64_t>(b + 96);
  return h;
}

Status check_sections(const Header& h, uint64_t size) {
  if (h.header_bytes < kErgHeaderBytes || h.tensor_bytes < kErgTensorBytes ||
      h.node_bytes < kErgNodeBytes)
    return corrupt("header or record sizes are smaller than the format defines");
  if (h.file_bytes != size)
    return corrupt("file is " + std::to_string(size) + " bytes but its header says " +
                   std::to_string(h.file_bytes) + " (truncated or padded)");
  if (!in_range(h.tensors_off, uint64_t(h.n_tensors) * h.tensor_bytes, size))
    return corrupt("tensor table lies outside the file");
  if (!in_range(h.nodes_off, uint64_t(h.n_nodes) * h.node_bytes, size))
    return corrupt("node table lies outside the file");
  if (!in_range(h.ids_off, uint64_t(h.n_ids) * 4, size))
    return corrupt("id table lies outside the file");
  if (!in_range(h.strings_off, h.strings_bytes, size))
    return corrupt("string table lies outside the file");
  if (!in_range(h.weights_off, h.weights_bytes, size) || h.weights_off % kErgWeightAlign != 0)
    return corrupt("weights blob lies outside the file or is not 64-byte aligned");
  if (uint64_t(h.n_inputs) + h.n_outputs > h.n_ids)
    return corrupt("graph input/output lists exceed the id table");
  if (h.n_inputs == 0 || h.n_outputs == 0) return corrupt("graph has no inputs or no outputs");
  return Status::Ok();
}

Result<std::string> read_name(const uint8_t* base, const Header& h, uint32_t off, uint32_t len) {
  if (!in_range(off, len, h.strings_bytes)) return corrupt("a name lies outside the string table");
  return std::string(reinterpret_cast<const char*>(base + h.strings_off + off), len);
}

Status parse_tensor(const uint8_t* base, const Header& h, uint32_t i, TensorInfo* t) {
  const uint8_t* r = base + h.tensors_off + uint64_t(i) * h.tensor_bytes;
  ER_ASSIGN_OR_RETURN(t->name, read_name(base, h, rd<uint32_t>(r), rd<uint32_t>(r + 4)));
  const std::string where = "tensor #" + std::to_string(i) + " '" + t->name + "'";
  const uint8_t dt = r[8];
  if (dt < uint8_t(DType::kFloat32) || dt > uint8_t(DType::kInt4))
    return corrupt(where + " has an unknown dtype");
  if (dt != uint8_t(DType::kFloat32) && h.version < 2)
    return corrupt(where + " is quantized in a version-1 file");
  if (r[9] > uint8_t(TensorKind::kInput)) return corrupt(where + " has an unknown kind");
  t->dtype = DType(dt);
  t->kind = TensorKind(r[9]);
  t->ndim = r[10];
  t->group = rd<uint32_t>(r + 12);
  if (t->ndim > kErgMaxDims) return corrupt(where + " has more than 6 dims");
  int64_t n = 1;
  for (uint32_t d = 0; d < kErgMaxDims; ++d) {
    t->dims[d] = d < t->ndim ? rd<int64_t>(r + 32 + 8 * d) : 1;
    bool dyn_ok = d == 0 && t->dims[d] == -1 && t->kind != TensorKind::kWeight;
    if (!dyn_ok && (t->dims[d] < 1 || t->dims[d] > (int64_t(1) << 31)))
      return corrupt(where + " has an invalid dim " + std::to_string(t->dims[d]));
    // Checked before the product: dims up to 2^31 each wrapped n past 2^63 to a small number, and a
    // 4-element weight then stood for 2^64 + 4 (found by fuzzing under ASan).
    if (t->dims[d] > 0 && n > (int64_t(1) << 40) / t->dims[d]) return corrupt(where + " is impossibly large");
    if (t->dims[d] > 0) n *= t->dims[d];
  }
  uint64_t off = rd<uint64_t>(r + 16);
  t->data_bytes = rd<uint64_t>(r + 24);
  t->data = nullptr;
  t->qdata = nullptr;
  const bool quant = t->dtype != DType::kFloat32;
  if (quant && (t->kind != TensorKind::kWeight || t->ndim < 2))
    return corrupt(where + " is quantized but not a weight of rank >= 2");
  if (t->dtype == DType::kInt4 ? (t->group < 2 || t->group % 2 || t->group > 4096) : t->group != 0)
    return corrupt(where + " has an invalid quantization group size " + std::to_string(t->group));
  if (t->kind == TensorKind::kWeight) {
    const uint64_t want = quant ? uint64_t(t->rows() * t->row_bytes()) : uint64_t(n) * 4;
    if (t->data_bytes != want || !in_range(off, t->data_bytes, h.weights_bytes) ||
        off % kErgWeightAlign != 0)
      return corrupt(where + " has weight data outside the blob, misaligned or of the wrong size");
    const uint8_t* p = base + h.weights_off + off;
    if (quant) t->qdata = p;
    else t->data = reinterpret_cast<const float*>(p);
  }
  return Status::Ok();
}

Status parse_node(const uint8_t* base, const Header& h, const uint32_t* ids, uint32_t i,
                  NodeInfo* nd) {
  const uint8_t* r = base + h.nodes_off + uint64_t(i) * h.node_bytes;
  nd->op = OpCode(rd<uint32_t>(r));
  ER_ASSIGN_OR_RETURN(nd->name, read_name(base, h, rd<uint32_t>(r + 4), rd<uint32_t>(r + 8)));
  uint32_t at = rd<uint32_t>(r + 12), ni = rd<uint32_t>(r + 16), no = rd<uint32_t>(r + 20);
  if (!in_range(at, uint64_t(ni) + no, h.n_ids) || no == 0)
    return corrupt("node '" + nd->name + "' has an input/output list outside the id table");
  nd->inputs.assign(ids + at, ids + at + ni);
  nd->outputs.assign(ids + at + ni, ids + at + ni + no);
  for (uint32_t k = 0; k < kErgNumIAttrs; ++k) nd->iattr[k] = rd<int64_t>(r + 24 + 8 * k);
  for (uint32_t k = 0; k < kErgNumFAttrs; ++k)
    nd->fattr[k] = rd<float>(r + 24 + 8 * kErgNumIAttrs + 4 * k);
  return Status::Ok();
}

}  // namespace

// ============================================================================
// Names, sizes
// ============================================================================
const char* op_name(OpCode op) {
  switch (op) {
    case OpCode::kConv: return "Conv";
    case OpCode::kGemm: return "Gemm";
    case OpCode::kAdd: return "Add";
    case OpCode::kSub: return "Sub";
    case OpCode::kMul: return "Mul";
    case OpCode::kDiv: return "Div";
    case OpCode::kRelu: return "Relu";
    case OpCode::kClip: return "Clip";
    case OpCode::kSigmoid: return "Sigmoid";
    case OpCode::kHardSigmoid: return "HardSigmoid";
    case OpCode::kHardSwish: return "HardSwish";
    case OpCode::kSilu: return "Silu";
    case OpCode::kMaxPool: return "MaxPool";
    case OpCode::kAveragePool: return "AveragePool";
    case OpCode::kGlobalAveragePool: return "GlobalAveragePool";
    case OpCode::kReduceMean: return "ReduceMean";
    case OpCode::kConcat: return "Concat";
    case OpCode::kReshape: return "Reshape";
    case OpCode::kChannelAffine: return "ChannelAffine";
    case OpCode::kPad: return "Pad";
    case OpCode::kLeakyRelu: return "LeakyRelu";
    case OpCode::kGelu: return "Gelu";
    case OpCode::kResize: return "Resize";
    case OpCode::kTranspose: return "Transpose";
    case OpCode::kSlice: return "Slice";
    case OpCode::kSoftmax: return "Softmax";
    case OpCode::kTanh: return "Tanh";
    case OpCode::kElu: return "Elu";
    case OpCode::kSoftplus: return "Softplus";
    case OpCode::kMish: return "Mish";
    case OpCode::kPRelu: return "PRelu";
    case OpCode::kLayerNorm: return "LayerNorm";
    case OpCode::kMatMul: return "MatMul";
    case OpCode::kResizeLinear: return "ResizeLinear";
    case OpCode::kExpand: return "Expand";
  }
  return "Unknown";
}

int64_t TensorInfo::row_k() const {
  int64_t k = 1;
  for (uint32_t d = 1; d < ndim; ++d) k *= dims[d];
  return k;
}

int64_t TensorInfo::row_bytes() const {
  if (dtype == DType::kInt8) return row_k();
  if (dtype == DType::kInt4) return groups() * int64_t(group) / 2;
  return row_k() * 4;
}

int64_t TensorInfo::numel(int64_t batch) const {
  int64_t n = 1;
  for (uint32_t d = 0; d < ndim; ++d) n *= dims[d] == -1 ? batch : dims[d];
  return n;
}

// ============================================================================
// Graph
// ============================================================================
Graph::~Graph() { release(); }

Graph::Graph(Graph&& o) noexcept { *this = std::move(o); }

Graph& Graph::operator=(Graph&& o) noexcept {
  if (this != &o) {
    release();
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    version_ = o.version_;
    weight_bytes_ = o.weight_bytes_;
    tensors_ = std::move(o.tensors_);
    nodes_ = std::move(o.nodes_);
    inputs_ = std::move(o.inputs_);
    outputs_ = std::move(o.outputs_);
  }
  return *this;
}

void Graph::release() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

Result<Graph> Graph::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status(StatusCode::kFileNotFound,
                  "cannot open engine graph file '" + path + "'; check the bundle path");
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < int64_t(kErgHeaderBytes)) {
    ::close(fd);
    return corrupt("'" + path + "' is shorter than the 128-byte header");
  }
  void* m = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED)
    return Status(StatusCode::kOutOfMemory, "cannot mmap engine graph file '" + path + "'");
  Graph g;
  g.map_ = m;
  g.map_bytes_ = uint64_t(st.st_size);
  Status s = g.parse(static_cast<const uint8_t*>(m), g.map_bytes_);
  if (!s.ok()) return Status(s.code(), s.message() + " (file '" + path + "')");
  return g;
}

Status Graph::parse(const uint8_t* base, uint64_t size) {
  if (std::memcmp(base, kErgMagic, 4) != 0)
    return corrupt("bad magic (not an edgerun engine graph file)");
  Header h = read_header(base);
  if (h.version == 0 || h.version > kErgVersion)
    return Status(StatusCode::kVersionUnsupported,
                  "engine graph format version " + std::to_string(h.version) +
                      " is not supported by this runtime (supports 1.." +
                      std::to_string(kErgVersion) + "); upgrade edgerun or re-export");
  version_ = h.version;
  ER_RETURN_IF_ERROR(check_sections(h, size));
  weight_bytes_ = h.weights_bytes;
  if (h.ids_off % 4 != 0) return corrupt("id table is misaligned");
  const uint32_t* ids = reinterpret_cast<const uint32_t*>(base + h.ids_off);
  tensors_.resize(h.n_tensors);
  for (uint32_t i = 0; i < h.n_tensors; ++i)
    ER_RETURN_IF_ERROR(parse_tensor(base, h, i, &tensors_[i]));
  inputs_.assign(ids, ids + h.n_inputs);
  outputs_.assign(ids + h.n_inputs, ids + h.n_inputs + h.n_outputs);
  nodes_.resize(h.n_nodes);
  for (uint32_t i = 0; i < h.n_nodes; ++i)
    ER_RETURN_IF_ERROR(parse_node(base, h, ids, i, &nodes_[i]));
  // Topology: ids in range, inputs defined before use, each activation produced once.
  std::vector<uint8_t> defined(h.n_tensors, 0);
  for (uint32_t t = 0; t < h.n_tensors; ++t)
    defined[t] = tensors_[t].kind == TensorKind::kWeight;
  for (uint32_t id : inputs_) {
    if (id >= h.n_tensors || tensors_[id].kind != TensorKind::kInput)
      return corrupt("a graph input id is out of range or not an input tensor");
    defined[id] = 1;
  }
  for (const NodeInfo& nd : nodes_) {
    for (uint32_t id : nd.inputs) {
      if (id == kErgNoTensor) continue;
      if (id >= h.n_tensors || !defined[id])
        return corrupt("node '" + nd.name + "' reads a tensor that is out of range or not yet computed");
    }
    for (uint32_t id : nd.outputs) {
      if (id >= h.n_tensors || defined[id] || tensors_[id].kind != TensorKind::kActivation)
        return corrupt("node '" + nd.name + "' writes a tensor that is out of range, "
                       "already defined or not an activation");
      defined[id] = 1;
    }
  }
  for (uint32_t id : outputs_)
    if (id >= h.n_tensors || !defined[id] || tensors_[id].kind == TensorKind::kWeight)
      return corrupt("a graph output id is out of range, never computed or a weight");
  return Status::Ok();
}

}  // namespace edgerun
