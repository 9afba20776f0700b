// cpp/device/src/device_front.cpp: front half + REQUEST frame (see device_front.h).
#include "device_front.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "edgerun/wire.h"

namespace edgerun_device {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + (s[i] < 0 ? std::string("None") : std::to_string(s[i]));
  return out + (s.size() == 1 ? ",)" : ")");
}

bool matches(const std::vector<int64_t>& spec, const std::vector<int64_t>& shape) {
  if (spec.size() != shape.size()) return false;
  for (size_t i = 0; i < spec.size(); ++i)
    if (spec[i] >= 0 && spec[i] != shape[i]) return false;
  return true;
}

bool finite(const Array& a) {
  for (float v : a.data)
    if (!std::isfinite(v)) return false;
  return true;
}

// A crossing tensor with NaN / Inf is not sent (a finite input beyond the model's range can overflow
// in the front half), as edgerun/device_checks.py check_finite_cut.
Err nonfinite_cut(const std::string& name) {
  return fail(kExitUsage, "the front half turned this input into NaN or Inf at the cut ('" + name +
                          "'), so nothing was sent: the input is far outside the range the model was "
                          "trained on (scale it as the model expects)");
}

// A Tensor's shape and values are separate vectors (edgerun/device.h), so a caller can give a shape its
// values do not fill: the engine reads as many values as the shape says, past the end of the data.
Err check_count(const std::string& name, const Array& a) {
  size_t numel = 1;
  for (int64_t d : a.shape) {
    if (d < 0)
      return fail(kExitUsage, "input '" + name + "' has a dim of " + std::to_string(d) + ": give the "
                              "number of samples first, then the model's dims");
    if (d > 0 && numel > std::numeric_limits<size_t>::max() / size_t(d)) numel = std::numeric_limits<size_t>::max();
    else numel *= size_t(d);
  }
  if (numel != a.data.size())
    return fail(kExitUsage, "input '" + name + "' has shape " + shape_str(a.shape) + " but " +
                            std::to_string(a.data.size()) + " values" +
                            (numel == std::numeric_limits<size_t>::max() ? "" : " (the shape holds " +
                                                                                    std::to_string(numel) + ")") +
                            ": give as many float32 values as the shape holds, in C order, batch first");
  return Err::Ok();
}

}  // namespace

Err Front::load(const DeviceBundle& b, int32_t max_batch, int32_t threads, const std::string& codec,
                bool with_engine) {
  b_ = &b;
  if (with_engine) {
    Err e = load_engine(max_batch, threads);
    if (!e.ok()) return e;
  }
  return load_codec(codec);
}

Err Front::load_engine(int32_t max_batch, int32_t threads) {
  const DeviceBundle& b = *b_;
  auto r = edgerun::Engine::load(b.front_path, max_batch, threads);
  if (!r.ok())
    return fail(kExitBundle, "bundle " + b.dir + ": the native engine refused front.erg (" + r.status().message() +
                             "); re-export the bundle with the edgerun this device was built from");
  engine_ = r.take();
  for (size_t i = 0; i < engine_->num_inputs(); ++i) {
    const std::string& name = engine_->input_info(i).name;
    bool known = false;
    for (const Spec& s : b.inputs) known = known || s.name == name;
    if (!known) return fail(kExitBundle, "bundle " + b.dir + ": front.erg takes '" + name + "', not a model input");
    engine_inputs_.push_back(name);
  }
  for (const Spec& c : b.cut) {
    int src = 0;
    bool found = false;
    for (size_t i = 0; i < engine_->num_outputs() && !found; ++i)
      if (engine_->output_info(i).name == c.name) { src = int(i); found = true; }
    for (size_t i = 0; i < b.inputs.size() && !found; ++i)  // a model input passing through the cut
      if (b.inputs[i].name == c.name) { src = -1 - int(i); found = true; }
    if (!found) return fail(kExitBundle, "bundle " + b.dir + ": front.erg does not give cut tensor '" + c.name + "'");
    cut_source_.push_back(src);
  }
  return Err::Ok();
}

Err Front::load_codec(const std::string& codec) {
  const DeviceBundle& b = *b_;
  tsq_ = b.codec_id == "tsq" && codec != "none";
  if (!codec.empty() && codec != "none" && codec != b.codec_id)
    return fail(kExitUsage, "--codec " + codec + ": this bundle was calibrated for '" + b.codec_id +
                            "'; use that or none (raw float32 on the wire)");
  if (tsq_) {
    for (const Spec& c : b.cut) {
      const std::vector<uint8_t>& raw = b.codec_params.at(c.name);
      auto p = edgerun::codec::tsq_parse_params(raw.data(), raw.size());
      if (!p.ok()) return fail(kExitBundle, "bundle " + b.dir + ": tsq params of '" + c.name + "': " +
                                                p.status().message() + "; re-export the bundle");
      params_.push_back(p.value());
    }
  }
  cut_.resize(b.cut.size());
  coded_.resize(b.cut.size());
  return Err::Ok();
}

Err Front::check_inputs(const std::map<std::string, Array>& inputs, int64_t* batch) const {
  *batch = -1;
  for (const Spec& s : b_->inputs) {
    auto it = inputs.find(s.name);
    if (it == inputs.end()) return fail(kExitUsage, "no input for '" + s.name + "': give --input " + s.name + "=FILE.npy");
    const Array& a = it->second;
    if (!matches(s.shape, a.shape))
      return fail(kExitUsage, "input '" + s.name + "' has shape " + shape_str(a.shape) + ", the bundle expects " +
                              shape_str(s.shape) + " (None = batch size; a single sample needs x[None])");
    Err e = check_count(s.name, a);
    if (!e.ok()) return e;
    if (*batch >= 0 && a.shape[0] != *batch)
      return fail(kExitUsage, "inputs hold different numbers of samples: give every input the same batch size on axis 0");
    *batch = a.shape[0];
    for (size_t i = 0; i < a.data.size(); ++i)
      if (!std::isfinite(a.data[i]))
        return fail(kExitUsage, "input '" + s.name + "' holds NaN or Inf (flat index " + std::to_string(i) +
                                "): the answer would be garbage, so nothing was sent");
  }
  if (inputs.size() != b_->inputs.size())
    return fail(kExitUsage, "more inputs given than the bundle takes (" + std::to_string(b_->inputs.size()) + ")");
  if (*batch == 0) return fail(kExitUsage, "an empty batch (0 samples): give at least one sample, batch first");
  return Err::Ok();
}

Err Front::run(const std::map<std::string, Array>& inputs, int64_t batch) {
  const int64_t limit = engine_->max_batch();
  for (size_t c = 0; c < cut_.size(); ++c) { cut_[c].data.clear(); cut_[c].shape.clear(); }
  std::vector<edgerun::InputView> views(engine_inputs_.size());
  std::vector<std::vector<int64_t>> dims(engine_inputs_.size());
  for (int64_t lo = 0; lo < batch; lo += limit) {
    const int64_t n = std::min(limit, batch - lo);
    for (size_t i = 0; i < engine_inputs_.size(); ++i) {
      const Array& a = inputs.at(engine_inputs_[i]);
      const size_t per = a.data.size() / size_t(a.shape[0]);
      dims[i] = a.shape;
      dims[i][0] = n;
      views[i] = {a.data.data() + size_t(lo) * per, dims[i].data(), uint32_t(dims[i].size())};
    }
    edgerun::Status st = engine_->run(views.data(), views.size(), int32_t(n));
    if (!st.ok()) return fail(kExitUsage, "the front half refused the input: " + st.message());
    for (size_t c = 0; c < cut_.size(); ++c) {
      if (cut_source_[c] < 0) continue;
      std::vector<int64_t> shape = engine_->output_shape(size_t(cut_source_[c]), int32_t(n));
      size_t numel = 1;
      for (int64_t d : shape) numel *= size_t(d);
      const float* p = engine_->output_data(size_t(cut_source_[c]));
      cut_[c].data.insert(cut_[c].data.end(), p, p + numel);
      if (cut_[c].shape.empty()) cut_[c].shape = shape;
      else cut_[c].shape[0] += n;
    }
  }
  for (size_t c = 0; c < cut_.size(); ++c) {
    if (cut_source_[c] < 0) cut_[c] = inputs.at(b_->inputs[size_t(-1 - cut_source_[c])].name);
    if (!tsq_ && !finite(cut_[c])) return nonfinite_cut(b_->cut[c].name);  // tsq refuses NaN / Inf itself
  }
  return Err::Ok();
}

Err Front::set_cut(const std::map<std::string, const Array*>& by_name) {
  for (size_t c = 0; c < cut_.size(); ++c) {
    auto it = by_name.find(b_->cut[c].name);
    if (it == by_name.end()) return fail(kExitInternal, "no tensor for cut tensor '" + b_->cut[c].name + "'");
    cut_[c] = *it->second;
    if (!tsq_ && !finite(cut_[c])) return nonfinite_cut(b_->cut[c].name);  // tsq refuses NaN / Inf itself
  }
  return Err::Ok();
}

Err Front::encode(uint64_t request_id, std::vector<uint8_t>* frame) {
  namespace wire = edgerun::wire;
  wire::FrameHeader h;
  h.kind = uint8_t(wire::Kind::kRequest);
  h.request_id = request_id;
  h.seq = 0;
  std::memcpy(h.bundle_hash, b_->hash16, wire::kBundleHashSize);
  std::vector<wire::TensorView> views(cut_.size());
  for (size_t c = 0; c < cut_.size(); ++c) {
    wire::TensorView& v = views[c];
    v.dtype = uint8_t(wire::DType::kFloat32);
    v.ndim = uint8_t(cut_[c].shape.size());
    for (size_t d = 0; d < cut_[c].shape.size(); ++d) v.dims[d] = uint32_t(cut_[c].shape[d]);
    if (tsq_) {
      edgerun::Status st = edgerun::codec::tsq_encode(cut_[c].data.data(), v.dims, v.ndim, params_[c], &coded_[c]);
      if (!st.ok())
        return fail(kExitUsage, "cannot code the cut tensor '" + b_->cut[c].name + "': " + st.message() +
                                " (NaN or Inf at the cut: the input is far outside the model's range); nothing was sent");
      const std::vector<uint8_t>& raw = b_->codec_params.at(b_->cut[c].name);
      v.codec = uint8_t(wire::Codec::kTsq);
      v.params = raw.data();
      v.params_len = uint32_t(raw.size());
      v.payload = coded_[c].data();
      v.payload_len = coded_[c].size();
    } else {
      v.codec = uint8_t(wire::Codec::kRaw);
      v.payload = reinterpret_cast<const uint8_t*>(cut_[c].data.data());
      v.payload_len = cut_[c].data.size() * sizeof(float);
    }
  }
  frame->resize(wire::encoded_size(0, views.data(), uint32_t(views.size())));
  size_t written = 0;
  edgerun::Status st = wire::encode_into(h, nullptr, 0, views.data(), uint32_t(views.size()), frame->data(),
                                         frame->size(), &written);
  if (!st.ok()) return fail(kExitInternal, "encoding the request frame failed: " + st.message());
  frame->resize(written);
  return Err::Ok();
}

}  // namespace edgerun_device
