// cpp/device/src/device_exits.cpp: early exits (see device_exits.h).
#include "device_exits.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>

namespace edgerun_device {
namespace {

using json = nlohmann::json;

Err bad(const DeviceBundle& b, const std::string& why) {
  return fail(kExitBundle, "bundle " + b.dir + ": " + why);
}

Array copy_out(const edgerun::Engine& e, size_t out, int32_t batch) {
  Array a;
  a.shape = e.output_shape(out, batch);
  size_t n = 1;
  for (int64_t d : a.shape) n *= size_t(d);
  const float* p = e.output_data(out);
  a.data.assign(p, p + n);
  return a;
}

}  // namespace

Err Exits::load(const DeviceBundle& b, const std::string& budget, int32_t max_batch, int32_t threads) {
  b_ = &b;
  max_batch_ = max_batch;
  const json& e = b.exits;
  // Every entry is type-checked before use: a wrong JSON type is a damaged bundle, never an exception.
  auto text = [](const json& j, const char* key, const char* dflt) {
    const json v = j.is_object() ? j.value(key, json(dflt)) : json(dflt);
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  crit_name_ = text(e, "criterion", "max_prob");
  auto c = edgerun::exits::parse_criterion(crit_name_.c_str());
  if (!c.ok()) return bad(b, "unknown exit criterion '" + crit_name_ + "'; rebuild this device from a newer edgerun");
  crit_ = c.value();
  const json& budgets = e.contains("budgets") && e["budgets"].is_object() ? e["budgets"] : json::object();
  budget_ = !budget.empty() ? budget : e.value("default_budget", json("off")).is_string()
                                           ? e.value("default_budget", std::string("off")) : "off";
  if (budget_ != "off" && !budgets.contains(budget_)) {
    std::string names;
    for (auto it = budgets.begin(); it != budgets.end(); ++it) names += (names.empty() ? "" : ", ") + it.key();
    return fail(kExitUsage, "--budget " + budget_ + ": this bundle has " + (names.empty() ? "none" : names) +
                            " (or off: answer on the device only on a deadline or an outage)");
  }
  const json& pts = e["points"];
  json thr = budget_ == "off" || !budgets[budget_].is_object() ? json() : budgets[budget_].value("thresholds", json());
  if (budget_ != "off" && !(thr.is_array() && thr.size() == pts.size()))
    return bad(b, "budget '" + budget_ + "' has no threshold per exit; re-export it");
  for (size_t i = 0; i < pts.size(); ++i) {
    const json& p = pts[i];
    Point pt;
    if (!p.is_object() || !p.value("erg", json()).is_string() || !p.value("tensor", json()).is_string() ||
        !p.value("head", json()).is_string() || !p.value("input", json()).is_string())
      return bad(b, "exit point " + std::to_string(i) + " has no native segment (" +
                    text(e, "native_reason", "erg missing") + "): use the Python device (--engine ort)");
    const std::string erg = p["erg"];
    pt.input = p["input"];
    pt.tensor = p["tensor"];
    pt.head = p["head"];
    const json frac = p.value("compute_fraction", json(1.0));
    if (!frac.is_number() || !(frac.get<double>() >= 0) || !std::isfinite(frac.get<double>()))
      return bad(b, "exit point " + std::to_string(i) + " has compute_fraction " + frac.dump() +
                    ", not a number >= 0 (a share of the front half's compute); re-export it");
    pt.compute_fraction = frac.get<double>();
    if (budget_ != "off" && !thr[i].is_null()) {
      if (!thr[i].is_number()) return bad(b, "a threshold of budget '" + budget_ + "' is not a number; re-export it");
      pt.has_threshold = true;
      pt.threshold = thr[i].get<double>();
    }
    const std::string path = b.dir + "/" + erg;
    struct stat st {};
    const json rec = b.files.value(erg, json());
    if (::stat(path.c_str(), &st) != 0)
      return bad(b, erg + " is missing: copy the whole bundle, or `edgerun pack BUNDLE --for device` and extract that");
    if (!rec.is_object() || rec.value("bytes", int64_t(-1)) != int64_t(st.st_size) ||
        sha256_file(path) != rec.value("sha256", std::string()))
      return bad(b, erg + " does not match the sha256 the manifest records: the file is damaged or was replaced");
    auto r = edgerun::Engine::load(path, max_batch, threads);
    if (!r.ok()) return bad(b, "the native engine refused " + erg + " (" + r.status().message() + "); re-export it");
    pt.engine = r.take();
    for (size_t j = 0; j < pt.engine->num_inputs(); ++j) {
      const std::string& name = pt.engine->input_info(j).name;
      int src = -2;
      if (i > 0 && name == pt.input) src = -1;
      for (size_t k = 0; k < b.inputs.size() && src == -2; ++k)
        if (b.inputs[k].name == name) src = int(k);
      if (src == -2) return bad(b, erg + " takes '" + name + "', neither the previous point nor a model input");
      pt.feeds.push_back(src);
    }
    bool t = false, h = false;
    for (size_t j = 0; j < pt.engine->num_outputs(); ++j) {
      if (pt.engine->output_info(j).name == pt.tensor) { pt.tensor_out = j; t = true; }
      if (pt.engine->output_info(j).name == pt.head) { pt.head_out = j; h = true; }
    }
    if (!t || !h) return bad(b, erg + " does not give '" + pt.tensor + "' and '" + pt.head + "'; re-export it");
    // The consistency criterion compares a head with the previous one, value by value: heads of other sizes
    // (a resealed manifest naming a feature map as a head) read past the smaller one.
    const edgerun::TensorInfo& hi = pt.engine->output_info(pt.head_out);
    for (uint32_t d = 1; d < hi.ndim; ++d)
      pt.head_size = hi.dims[d] > 0 && pt.head_size > 0 ? pt.head_size * hi.dims[d] : -1;
    if (crit_ == edgerun::exits::Criterion::kConsistency && i > 0 && pt.head_size > 0 &&
        points_.back().head_size > 0 && pt.head_size != points_.back().head_size)
      return bad(b, "exit " + std::to_string(i) + "'s head '" + pt.head + "' gives " +
                    std::to_string(pt.head_size) + " values a sample, exit " + std::to_string(i - 1) + "'s " +
                    std::to_string(points_.back().head_size) +
                    ": the consistency criterion compares heads of one size; re-export the bundle");
    points_.push_back(std::move(pt));
  }
  const json cuts = e.value("cut_tensors", json::array());
  for (const json& n : cuts)
    if (n.is_string()) cut_names_.push_back(n);
  for (const Spec& s : b.cut) {
    bool ok = s.name == points_.back().tensor;
    for (const Spec& in : b.inputs) ok = ok || in.name == s.name;
    if (!ok) return bad(b, "cut tensor '" + s.name + "' is neither the last exit point's nor a model input; re-export");
  }
  return Err::Ok();
}

Err Exits::run(const std::map<std::string, Array>& inputs, int64_t batch, Step* step, bool confident_exits) {
  if (batch > max_batch_)
    return fail(kExitUsage, "a batch of " + std::to_string(batch) + " is over --max-batch " +
                            std::to_string(max_batch_) + " for a bundle with exits: split the batch, or give a "
                            "larger --max-batch");
  *step = Step{};
  for (size_t i = 0; i < points_.size(); ++i) {
    Point& p = points_[i];
    std::vector<edgerun::InputView> views(p.feeds.size());
    for (size_t j = 0; j < p.feeds.size(); ++j) {
      const Array& a = p.feeds[j] < 0 ? step->point : inputs.at(b_->inputs[size_t(p.feeds[j])].name);
      views[j] = {a.data.data(), a.shape.data(), uint32_t(a.shape.size())};
    }
    edgerun::Status st = p.engine->run(views.data(), views.size(), int32_t(batch));
    if (!st.ok()) return fail(kExitUsage, "exit segment " + std::to_string(i) + " refused the input: " + st.message());
    step->point = copy_out(*p.engine, p.tensor_out, int32_t(batch));
    step->heads.push_back(copy_out(*p.engine, p.head_out, int32_t(batch)));
    step->compute_fraction = p.compute_fraction;
    const Array* prev = i > 0 ? &step->heads[i - 1] : nullptr;
    if (crit_ == edgerun::exits::Criterion::kConsistency && prev != nullptr &&
        prev->data.size() != step->heads.back().data.size())  // dims known at run time only (see load)
      return fail(kExitBundle, "bundle " + b_->dir + ": exit " + std::to_string(i) + "'s head and exit " +
                               std::to_string(i - 1) + "'s differ in size; the consistency criterion compares heads "
                               "of one size: re-export the bundle");
    if (!confident_exits || !p.has_threshold || (crit_ == edgerun::exits::Criterion::kConsistency && prev == nullptr)) continue;
    const Array& head = step->heads.back();
    bool ok = false;
    float worst = 0;
    st = edgerun::exits::all_pass(crit_, head.data.data(), prev ? prev->data.data() : nullptr, size_t(batch),
                                  head.data.size() / size_t(batch), float(p.threshold), &ok, &worst);
    if (!st.ok()) return fail(kExitUsage, "exit " + std::to_string(i) + ": " + st.message());
    if (ok) {
      char why[160];
      std::snprintf(why, sizeof(why), "confident: %s %.3g %s %.3g", crit_name_.c_str(), double(worst),
                    crit_ == edgerun::exits::Criterion::kMaxProb ? ">=" : "<=", p.threshold);
      step->exited = int(i);
      step->reason = why;
      step->point = Array{};
      return Err::Ok();
    }
  }
  return Err::Ok();
}

std::map<std::string, const Array*> Exits::cut(const Step& step, const std::map<std::string, Array>& inputs) const {
  std::map<std::string, const Array*> out;
  out[points_.back().tensor] = &step.point;
  for (const auto& kv : inputs)
    if (kv.first != points_.back().tensor) out[kv.first] = &kv.second;  // passing through: taken if in the cut
  return out;
}

}  // namespace edgerun_device
