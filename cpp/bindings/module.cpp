// The only file that includes pybind11: it exposes the device runtime to
// Python as edgerun._core and turns Status values into Python exceptions.
// Each area keeps its own section below; add to your section only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "edgerun/status.h"
#include "edgerun/wire.h"  // wire section

namespace py = pybind11;

namespace {

// Raised in Python as edgerun._core.CoreError(code, message); edgerun.errors
// maps the code groups onto the public error hierarchy.
py::object g_core_error;

[[noreturn]] void throw_status(const edgerun::Status& st) {
  py::object exc = g_core_error(static_cast<uint32_t>(st.code()), st.message());
  PyErr_SetObject(g_core_error.ptr(), exc.ptr());
  throw py::error_already_set();
}

#define THROW_IF_ERROR(expr)                      \
  do {                                            \
    ::edgerun::Status _st = (expr);               \
    if (!_st.ok()) throw_status(_st);             \
  } while (0)

// ==== wire: begin ====
// Maps a numpy dtype onto a wire dtype code (0 = not carried by frames).
uint8_t wire_dtype(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return 1;
  if (kind == 'f' && size == 2) return 2;
  if (kind == 'i' && size == 1) return 3;
  if (kind == 'u' && size == 1) return 4;
  if (kind == 'i' && size == 4) return 5;
  if (kind == 'i' && size == 8) return 6;
  return 0;
}

const char* wire_numpy_dtype(uint8_t code) {
  static const char* names[] = {"", "<f4", "<f2", "i1", "u1", "<i4", "<i8"};
  return code <= 6 ? names[code] : "";
}

edgerun::Status wire_view(const py::array& a, size_t i, edgerun::wire::TensorView* t) {
  using edgerun::Status;
  using edgerun::StatusCode;
  const std::string at = "tensor " + std::to_string(i) + ": ";
  t->dtype = wire_dtype(a.dtype());
  if (t->dtype == 0 || a.dtype().byteorder() == '>')
    return Status(StatusCode::kDtypeMismatch, at + "dtype " + py::str(a.dtype()).cast<std::string>() +
                  " cannot cross the wire; use float32, float16, int8, uint8, int32 or int64 (little-endian)");
  if (!(a.flags() & py::array::c_style))
    return Status(StatusCode::kInvalidArgument, at + "array is not C-contiguous; pass np.ascontiguousarray(x)");
  if (a.ndim() > static_cast<py::ssize_t>(edgerun::wire::kMaxDims))
    return Status(StatusCode::kShapeMismatch, at + "has " + std::to_string(a.ndim()) + " dims; frames carry at most 8");
  t->ndim = static_cast<uint8_t>(a.ndim());
  for (py::ssize_t k = 0; k < a.ndim(); ++k) {
    if (static_cast<uint64_t>(a.shape(k)) > UINT32_MAX)
      return Status(StatusCode::kShapeMismatch, at + "a dim exceeds 2**32 - 1");
    t->dims[k] = static_cast<uint32_t>(a.shape(k));
  }
  t->payload = static_cast<const uint8_t*>(a.data());
  t->payload_len = static_cast<uint64_t>(a.nbytes());
  return Status::Ok();
}

// A coded tensor crosses as (codec, dtype code, shape, params bytes, payload bytes).
edgerun::Status wire_coded_view(const py::tuple& t, size_t i, std::vector<std::string>* blobs,
                                edgerun::wire::TensorView* v) {
  using edgerun::Status;
  using edgerun::StatusCode;
  const std::string at = "tensor " + std::to_string(i) + ": ";
  if (t.size() != 5)
    return Status(StatusCode::kInvalidArgument, at + "a coded tensor is (codec, dtype, shape, params, payload)");
  v->codec = t[0].cast<uint8_t>();
  v->dtype = t[1].cast<uint8_t>();
  const auto shape = t[2].cast<std::vector<uint64_t>>();
  if (shape.size() > edgerun::wire::kMaxDims)
    return Status(StatusCode::kShapeMismatch, at + "has more than 8 dims");
  v->ndim = static_cast<uint8_t>(shape.size());
  for (size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] > UINT32_MAX) return Status(StatusCode::kShapeMismatch, at + "a dim exceeds 2**32 - 1");
    v->dims[k] = static_cast<uint32_t>(shape[k]);
  }
  blobs->push_back(t[3].cast<std::string>());
  blobs->push_back(t[4].cast<std::string>());
  const std::string& params = (*blobs)[blobs->size() - 2];
  const std::string& payload = blobs->back();
  v->params = reinterpret_cast<const uint8_t*>(params.data());
  v->params_len = static_cast<uint32_t>(params.size());
  v->payload = reinterpret_cast<const uint8_t*>(payload.data());
  v->payload_len = payload.size();
  return Status::Ok();
}

py::bytes wire_encode(int kind, uint64_t request_id, uint32_t seq, const py::bytes& bundle_hash,
                      const py::bytes& meta, const py::list& tensors) {
  namespace w = edgerun::wire;
  using edgerun::Status;
  using edgerun::StatusCode;
  const std::string hash = bundle_hash, meta_s = meta;
  if (hash.size() != w::kBundleHashSize)
    throw_status(Status(StatusCode::kInvalidArgument, "bundle_hash must be 16 bytes, got " + std::to_string(hash.size())));
  if (kind < 0 || kind > 255) throw_status(Status(StatusCode::kInvalidArgument, "frame kind must be 1, 2 or 3"));
  if (tensors.size() > w::kMaxTensors)
    throw_status(Status(StatusCode::kInvalidArgument, "a frame carries at most 16 tensors"));
  if (meta_s.size() > UINT32_MAX) throw_status(Status(StatusCode::kInvalidArgument, "meta is over 4 GiB"));
  w::FrameHeader h;
  h.kind = static_cast<uint8_t>(kind);
  h.request_id = request_id;
  h.seq = seq;
  std::memcpy(h.bundle_hash, hash.data(), w::kBundleHashSize);
  std::vector<py::array> keep;  // holds each array (and its data) alive while encoding
  std::vector<std::string> blobs;  // params + payload of coded tensors
  blobs.reserve(2 * w::kMaxTensors);
  w::TensorView views[w::kMaxTensors];
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (py::isinstance<py::tuple>(tensors[i])) {
      THROW_IF_ERROR(wire_coded_view(tensors[i].cast<py::tuple>(), i, &blobs, &views[i]));
      continue;
    }
    keep.push_back(py::array::ensure(tensors[i]));
    if (!keep.back()) throw_status(Status(StatusCode::kInvalidArgument, "tensor " + std::to_string(i) + " is not an array"));
    THROW_IF_ERROR(wire_view(keep.back(), i, &views[i]));
  }
  const auto n = static_cast<uint32_t>(tensors.size());
  const auto meta_len = static_cast<uint32_t>(meta_s.size());
  const size_t size = w::encoded_size(meta_len, views, n);
  if (size > static_cast<size_t>(PY_SSIZE_T_MAX))
    throw_status(Status(StatusCode::kInvalidArgument, "frame would be larger than this machine can hold"));
  PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (raw == nullptr) throw py::error_already_set();
  auto out = py::reinterpret_steal<py::bytes>(raw);
  size_t written = 0;
  auto* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(raw));
  THROW_IF_ERROR(w::encode_into(h, reinterpret_cast<const uint8_t*>(meta_s.data()), meta_len, views, n, dst, size,
                                &written));
  return out;
}

py::dict wire_decode(const py::buffer& buf, uint64_t max_bytes, const py::object& expect_hash) {
  namespace w = edgerun::wire;
  const py::buffer_info info = buf.request();
  if (info.ndim > 1 || (info.ndim == 1 && info.strides[0] != info.itemsize))
    throw_status(edgerun::Status(edgerun::StatusCode::kInvalidArgument, "frame buffer must be contiguous bytes"));
  const auto* data = static_cast<const uint8_t*>(info.ptr);
  const size_t len = static_cast<size_t>(info.size * info.itemsize);
  auto res = w::decode(data, len, static_cast<size_t>(std::min<uint64_t>(max_bytes, SIZE_MAX)));
  THROW_IF_ERROR(res.status());
  const w::DecodedFrame& f = res.value();
  if (!expect_hash.is_none()) {
    const std::string want = expect_hash.cast<py::bytes>();
    if (want.size() != w::kBundleHashSize)
      throw_status(edgerun::Status(edgerun::StatusCode::kInvalidArgument, "expect_hash must be 16 bytes"));
    THROW_IF_ERROR(w::check_bundle(f, reinterpret_cast<const uint8_t*>(want.data())));
  }
  py::list arrays;
  for (uint32_t i = 0; i < f.n_tensors; ++i) {
    const w::TensorView& t = f.tensors[i];
    std::vector<py::ssize_t> shape(t.dims, t.dims + t.ndim);
    if (t.codec != 0) {  // coded: hand the codec's bytes to Python as they are
      arrays.append(py::make_tuple(t.codec, t.dtype, py::tuple(py::cast(shape)),
                                   py::bytes(reinterpret_cast<const char*>(t.params), t.params_len),
                                   py::bytes(reinterpret_cast<const char*>(t.payload), t.payload_len)));
      continue;
    }
    py::array a(py::dtype(wire_numpy_dtype(t.dtype)), shape);
    if (t.payload_len > 0) std::memcpy(a.mutable_data(), t.payload, static_cast<size_t>(t.payload_len));
    arrays.append(a);
  }
  py::dict d;
  d["version"] = f.version;
  d["kind"] = f.header.kind;
  d["flags"] = f.header.flags;
  d["request_id"] = f.header.request_id;
  d["seq"] = f.header.seq;
  d["bundle_hash"] = py::bytes(reinterpret_cast<const char*>(f.header.bundle_hash), w::kBundleHashSize);
  d["meta"] = py::bytes(reinterpret_cast<const char*>(f.meta), f.meta_len);
  d["tensors"] = arrays;
  return d;
}

void bind_wire(py::module_& m) {
  m.def("encode_frame", &wire_encode, py::arg("kind"), py::arg("request_id"), py::arg("seq"),
        py::arg("bundle_hash"), py::arg("meta"), py::arg("tensors"),
        "Encode a wire frame v1 with the C++ encoder (the device's path). meta: JSON object bytes or b''.");
  m.def("decode_frame", &wire_decode, py::arg("buf"), py::arg("max_bytes"), py::arg("expect_hash") = py::none(),
        "Decode and validate a wire frame with the C++ decoder; tensors are copies.");
  m.def("crc32", [](const py::bytes& b, uint32_t crc) {
          char* p = nullptr;
          Py_ssize_t n = 0;
          if (PyBytes_AsStringAndSize(b.ptr(), &p, &n) != 0) throw py::error_already_set();
          return edgerun::wire::crc32(reinterpret_cast<const uint8_t*>(p), static_cast<size_t>(n), crc);
        }, py::arg("data"), py::arg("crc") = 0, "CRC-32 as the wire format computes it (== zlib.crc32).");
  m.def("wire_code_name", [](uint32_t code) { return std::string(edgerun::wire::code_name(static_cast<edgerun::StatusCode>(code))); },
        py::arg("code"), "Short name ('bad_checksum', ...) of a frame status code.");
  m.attr("WIRE_VERSION") = edgerun::wire::kVersion;
}
// ==== wire: end ====

// ==== codec: begin ====
}  // namespace
#include "edgerun/codec.h"
namespace {

edgerun::codec::TsqParams codec_params(const py::bytes& params) {
  const std::string s = params;
  auto r = edgerun::codec::tsq_parse_params(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  if (!r.ok()) throw_status(r.status());
  return r.value();
}

std::vector<uint32_t> codec_dims(const std::vector<int64_t>& shape) {
  std::vector<uint32_t> dims;
  for (int64_t d : shape) {
    if (d < 0 || d > UINT32_MAX)
      throw_status(edgerun::Status(edgerun::StatusCode::kShapeMismatch, "tsq shape has a dim outside 0..2**32-1"));
    dims.push_back(static_cast<uint32_t>(d));
  }
  return dims;
}

py::bytes codec_encode(const py::array_t<float, py::array::c_style | py::array::forcecast>& x, const py::bytes& params) {
  const auto p = codec_params(params);
  std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
  const auto dims = codec_dims(shape);
  std::vector<uint8_t> out;
  edgerun::Status st;
  {
    py::gil_scoped_release nogil;
    st = edgerun::codec::tsq_encode(x.data(), dims.data(), static_cast<uint32_t>(dims.size()), p, &out);
  }
  THROW_IF_ERROR(st);
  return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

py::array_t<float> codec_decode(const py::bytes& payload, const std::vector<int64_t>& shape, const py::bytes& params) {
  const auto p = codec_params(params);
  const auto dims = codec_dims(shape);
  if (dims.empty() || dims.size() > edgerun::codec::kMaxDims)
    throw_status(edgerun::Status(edgerun::StatusCode::kShapeMismatch, "tsq decodes tensors of 1..8 dims"));
  py::array_t<float> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  const std::string s = payload;
  THROW_IF_ERROR(edgerun::codec::tsq_decode(reinterpret_cast<const uint8_t*>(s.data()), s.size(), dims.data(),
                                            static_cast<uint32_t>(dims.size()), p, out.mutable_data()));
  return out;
}

void bind_codec(py::module_& m) {
  m.def("tsq_encode", &codec_encode, py::arg("x"), py::arg("params"),
        "Encode a float32 activation with the tsq codec (C++ encoder). params: TSQParams.to_bytes().");
  m.def("tsq_decode", &codec_decode, py::arg("payload"), py::arg("shape"), py::arg("params"),
        "Decode a tsq payload with the C++ decoder (validates every length, code and index).");
  m.attr("CODEC_TSQ") = edgerun::codec::kCodecTsq;
  m.attr("TSQ_VERSION") = edgerun::codec::kTsqVersion;
}
// ==== codec: end ====

// ==== exits: begin ====
}  // namespace
#include "edgerun/exits.h"
namespace {

using ExitArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// (batch, n) view of an exit head's output: 1-D arrays are one row.
std::pair<size_t, size_t> exit_rows(const ExitArray& x) {
  if (x.ndim() == 0 || x.size() == 0)
    throw_status(edgerun::Status(edgerun::StatusCode::kShapeMismatch, "exit output must be a non-empty array"));
  const size_t batch = x.ndim() == 1 ? 1 : static_cast<size_t>(x.shape(0));
  return {batch, static_cast<size_t>(x.size()) / batch};
}

edgerun::exits::Criterion criterion_or_throw(const std::string& name) {
  auto c = edgerun::exits::parse_criterion(name.c_str());
  if (!c.ok()) throw_status(c.status());
  return c.value();
}

// The previous exit's output (consistency), checked against x; keeps the array alive.
struct PrevOutput {
  ExitArray array;
  const float* data = nullptr;
};

PrevOutput prev_output(const ExitArray& x, const py::object& prev) {
  PrevOutput p;
  if (prev.is_none()) return p;
  p.array = prev.cast<ExitArray>();
  if (p.array.size() != x.size())
    throw_status(edgerun::Status(edgerun::StatusCode::kShapeMismatch,
                                 "consistency: this exit's and the previous exit's outputs differ in size"));
  p.data = p.array.data();
  return p;
}

py::array_t<float> exits_scores(const std::string& criterion, const ExitArray& x, const py::object& prev) {
  const auto c = criterion_or_throw(criterion);
  const auto [batch, n] = exit_rows(x);
  const PrevOutput p = prev_output(x, prev);
  py::array_t<float> out(static_cast<py::ssize_t>(batch));
  THROW_IF_ERROR(edgerun::exits::scores(c, x.data(), p.data, batch, n, out.mutable_data()));
  return out;
}

py::tuple exits_all_pass(const std::string& criterion, const ExitArray& x, const py::object& prev, float threshold) {
  const auto c = criterion_or_throw(criterion);
  const auto [batch, n] = exit_rows(x);
  const PrevOutput p = prev_output(x, prev);
  bool ok = false;
  float worst = 0.0f;
  THROW_IF_ERROR(edgerun::exits::all_pass(c, x.data(), p.data, batch, n, threshold, &ok, &worst));
  return py::make_tuple(ok, worst);
}

void bind_exits(py::module_& m) {
  m.def("exit_scores", &exits_scores, py::arg("criterion"), py::arg("x"), py::arg("prev") = py::none(),
        "One exit score per row of x (batch, n): max_prob, entropy (nats) or consistency (RMS distance to prev).");
  m.def("exit_all_pass", &exits_all_pass, py::arg("criterion"), py::arg("x"), py::arg("prev"), py::arg("threshold"),
        "(every row passes the threshold, the worst row's score).");
  m.def("exit_passes", [](const std::string& criterion, float score, float threshold) {
          return edgerun::exits::passes(criterion_or_throw(criterion), score, threshold);
        }, py::arg("criterion"), py::arg("score"), py::arg("threshold"),
        "Whether a score passes: >= for max_prob, <= for entropy and consistency.");
}
// ==== exits: end ====

// ==== engine: begin ====
}  // namespace
#include <cstring>

#include "edgerun/engine.h"
#include "edgerun/parallel.h"
namespace {

py::dict tensor_dict(const edgerun::TensorInfo& t) {
  py::list dims;
  for (uint32_t d = 0; d < t.ndim; ++d) dims.append(t.dims[d]);
  py::dict out;
  out["name"] = t.name;
  out["shape"] = py::tuple(dims);
  return out;
}

// Runs the engine on C-contiguous float32 arrays; returns copies of the outputs
// (the engine's own output buffers are reused by the next run).
py::list engine_run(edgerun::Engine& e, const std::vector<py::array>& arrays, int32_t batch) {
  std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> held;
  std::vector<std::vector<int64_t>> dims(arrays.size());
  std::vector<edgerun::InputView> views(arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) {
    held.emplace_back(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arrays[i]));
    if (!held.back()) throw py::type_error("engine inputs must be convertible to float32 arrays");
    for (py::ssize_t d = 0; d < held.back().ndim(); ++d) dims[i].push_back(held.back().shape(d));
    views[i] = {held.back().data(), dims[i].data(), uint32_t(dims[i].size())};
  }
  edgerun::Status st;
  {
    py::gil_scoped_release nogil;
    st = e.run(views.data(), views.size(), batch);
  }
  THROW_IF_ERROR(st);
  py::list outs;
  for (size_t i = 0; i < e.num_outputs(); ++i) {
    std::vector<int64_t> shape = e.output_shape(i, batch);
    py::array_t<float> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    std::memcpy(a.mutable_data(), e.output_data(i), sizeof(float) * size_t(a.size()));
    outs.append(a);
  }
  return outs;
}

void bind_engine(py::module_& m) {
  m.attr("ERG_VERSION") = edgerun::kErgVersion;
  m.def("gemm_path", &edgerun::kernels::gemm_path, "Which GEMM micro-kernel runs here.");
  m.def("pool_shares_taken_back", &edgerun::kernels::shares_taken_back,
        "Region shares the calling threads ran because no worker had started them (since start).");
  m.def("qgemm_path", &edgerun::kernels::qgemm_path, "Which int8 GEMM micro-kernel runs here.");
  py::class_<edgerun::Engine, std::unique_ptr<edgerun::Engine>>(m, "Engine")
      .def(py::init([](const std::string& path, int32_t max_batch, int32_t threads) {
             auto r = edgerun::Engine::load(path, max_batch, threads);
             if (!r.ok()) throw_status(r.status());
             return r.take();
           }),
           py::arg("path"), py::arg("max_batch") = 8, py::arg("threads") = 1)
      .def("run", &engine_run, py::arg("inputs"), py::arg("batch"))
      .def_property_readonly("inputs", [](const edgerun::Engine& e) {
        py::list l;
        for (size_t i = 0; i < e.num_inputs(); ++i) l.append(tensor_dict(e.input_info(i)));
        return l;
      })
      .def_property_readonly("outputs", [](const edgerun::Engine& e) {
        py::list l;
        for (size_t i = 0; i < e.num_outputs(); ++i) l.append(tensor_dict(e.output_info(i)));
        return l;
      })
      .def_property_readonly("arena_bytes", &edgerun::Engine::arena_bytes)
      .def_property_readonly("naive_bytes", &edgerun::Engine::naive_bytes)
      .def_property_readonly("scratch_bytes", &edgerun::Engine::scratch_bytes)
      .def_property_readonly("weight_bytes", &edgerun::Engine::weight_bytes)
      .def_property_readonly("max_batch", &edgerun::Engine::max_batch)
      .def_property_readonly("threads", &edgerun::Engine::threads)
      .def_property_readonly("num_nodes", &edgerun::Engine::num_nodes)
      .def("set_profiling", &edgerun::Engine::set_profiling, py::arg("on"))
      .def("step_times", [](const edgerun::Engine& e) {
        // [(node name, op, kernel, total ns over the profiled runs)], plus the run count.
        py::list l;
        for (size_t i = 0; i < e.num_steps(); ++i) {
          const edgerun::NodeInfo& nd = e.step_node(i);
          l.append(py::make_tuple(nd.name, edgerun::op_name(nd.op), e.step_kernel(i), e.step_ns(i)));
        }
        return py::make_tuple(l, e.profiled_runs());
      });
}
// ==== engine: end ====

}  // namespace

// ==== tools: begin ====
#include "edgerun/tools.h"

namespace {
using Int8Rows = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;
using FloatVec = py::array_t<float, py::array::c_style | py::array::forcecast>;

// (kept indices best first, every tool's score) for one query.
py::tuple tools_select(const py::array& emb_any, const FloatVec& scale, const FloatVec& query, float floor,
                       float margin, uint32_t k_max) {
  // No cast for the rows: int8 is the index's format, and forcecast wrapped 300.7 to 44 silently.
  if (!emb_any.dtype().is(py::dtype::of<int8_t>()))
    throw_status(edgerun::Status(edgerun::StatusCode::kDtypeMismatch,
                                 "tool_select: emb must be int8 rows (the tool index's format), not " +
                                     std::string(py::str(emb_any.dtype()))));
  const Int8Rows emb = Int8Rows::ensure(emb_any);  // same dtype: at most a contiguous copy
  if (emb.ndim() != 2 || scale.ndim() != 1 || query.ndim() != 1 || scale.shape(0) != emb.shape(0) ||
      query.shape(0) != emb.shape(1))
    throw_status(edgerun::Status(edgerun::StatusCode::kShapeMismatch,
                                 "tool_select: want emb [T, D] int8, scale [T], query [D]; rebuild the tool index"));
  const size_t n = static_cast<size_t>(emb.shape(0)), dim = static_cast<size_t>(emb.shape(1));
  py::array_t<float> scores(static_cast<py::ssize_t>(n));
  edgerun::tools::Rule rule;
  rule.floor = floor;
  rule.margin = margin;
  rule.k_max = k_max;
  std::vector<uint32_t> idx(std::max<size_t>(1, std::min<size_t>(k_max, n)));
  size_t kept = 0;
  edgerun::Status st;
  {
    py::gil_scoped_release nogil;  // a Status, not an exception, may leave this scope: raising needs the GIL
    st = edgerun::tools::scores(emb.data(), scale.data(), n, dim, query.data(), scores.mutable_data());
    if (st.ok()) st = edgerun::tools::select(scores.data(), n, rule, idx.data(), &kept);
  }
  THROW_IF_ERROR(st);
  py::array_t<uint32_t> out(static_cast<py::ssize_t>(kept));
  std::copy(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(kept), out.mutable_data());
  return py::make_tuple(out, scores);
}

void bind_tools(py::module_& m) {
  m.def("tool_select", &tools_select, py::arg("emb"), py::arg("scale"), py::arg("query"), py::arg("floor"),
        py::arg("margin"), py::arg("k_max"),
        "Score every tool (int8 rows x scale . query) and keep the k_max best within margin of the best and "
        "at or above floor: (kept indices best first, scores).");
}
}  // namespace
// ==== tools: end ====

PYBIND11_MODULE(_core, m) {
  m.doc() = "edgerun device runtime (native engine, wire frames)";
  g_core_error = py::reinterpret_steal<py::object>(
      PyErr_NewException("edgerun._core.CoreError", PyExc_RuntimeError, nullptr));
  m.attr("CoreError") = g_core_error;
  bind_wire(m);
  bind_codec(m);
  bind_exits(m);
  bind_engine(m);
  bind_tools(m);
}
