// cpp/device/fuzz/device_fuzz.cpp: a mutation fuzzer for what reaches the C++ device from outside
// (the reply frame checks, the bundle manifest, .npy inputs, broker URLs). Random mutations of valid
// inputs with a fixed seed; every input must give a clear error or a result that holds together.
// An exception escaping the library, a sanitizer report, a hang or accepted garbage is a bug.
//
//   edgerun_device_fuzz reply|bundle|npy|url|all SEED ITERATIONS WORKDIR
//   edgerun_device_fuzz erg SEED ITERATIONS WORKDIR FILE.erg   (the core's .erg loader and engine)
//   edgerun_device_fuzz known 0 0 WORKDIR     (the inputs found so far, each with the error it must give)
//
// The inputs found so far live in device_fuzz_known.cpp; the builders both use, in fuzz_inputs.h.
// Built only on request (target edgerun_device_fuzz, EXCLUDE_FROM_ALL); best under
// -fsanitize=address,undefined. tests/integration/test_cpp_device_fuzz.py runs it.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <functional>
#include <random>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_bundle.h"
#include "device_exits.h"
#include "device_front.h"
#include "device_npy.h"
#include "device_reply.h"
#include "device_url.h"
#include "edgerun/crc32.h"
#include "edgerun/wire.h"
#include "fuzz_inputs.h"

using json = nlohmann::json;
using namespace edgerun_device;
namespace wire = edgerun::wire;

namespace edgerun_fuzz {

std::mt19937_64 rng;
long failures = 0;
long accepted = 0;

uint64_t rnd(uint64_t n) { return n == 0 ? 0 : rng() % n; }

void bug(const std::string& what, const std::string& input) {
  ++failures;
  std::string one_line = input.substr(0, 600);
  for (char& c : one_line) if (uint8_t(c) < 0x20 || uint8_t(c) >= 0x7f) c = '.';  // one printable line
  std::fprintf(stderr, "BUG: %s\n  input: %s\n", what.c_str(), one_line.c_str());
}

const uint64_t kInteresting[] = {0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000u,
                                 0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull, 0x8000000000000000ull,
                                 0xffffffffffffffffull};

// Byte-level mutations: flips, interesting values, inserts, deletes, truncation, duplication.
void mutate_bytes(std::vector<uint8_t>* b, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    switch (rnd(8)) {
      case 0: if (!b->empty()) (*b)[rnd(b->size())] ^= uint8_t(1u << rnd(8)); break;
      case 1: if (!b->empty()) (*b)[rnd(b->size())] = uint8_t(rng()); break;
      case 2: {  // an interesting little-endian integer of 1, 2, 4 or 8 bytes
        const size_t w = size_t(1) << rnd(4);
        if (b->size() < w) break;
        const size_t at = rnd(b->size() - w + 1);
        const uint64_t v = kInteresting[rnd(sizeof(kInteresting) / sizeof(kInteresting[0]))];
        for (size_t i = 0; i < w; ++i) (*b)[at + i] = uint8_t(v >> (8 * i));
        break;
      }
      case 3: b->insert(b->begin() + long(rnd(b->size() + 1)), uint8_t(rng())); break;
      case 4: if (!b->empty()) b->erase(b->begin() + long(rnd(b->size()))); break;
      case 5: b->resize(rnd(b->size() + 1)); break;
      case 6: {  // duplicate a chunk
        if (b->empty()) break;
        const size_t a = rnd(b->size()), n = rnd(std::min<size_t>(64, b->size() - a) + 1);
        std::vector<uint8_t> chunk(b->begin() + long(a), b->begin() + long(a + n));
        b->insert(b->begin() + long(rnd(b->size() + 1)), chunk.begin(), chunk.end());
        break;
      }
      default: if (!b->empty()) (*b)[rnd(b->size())] = "0123456789-,()[]{}:'\"eE.\\"[rnd(25)]; break;
    }
  }
}

json random_scalar() {
  switch (rnd(14)) {
    case 0: return nullptr;
    case 1: return bool(rnd(2));
    case 2: return int64_t(rnd(5)) - 2;
    case 3: return int64_t(0x7fffffffffffffffll);
    case 4: return uint64_t(0xffffffffffffffffull);
    case 5: return int64_t(1) << rnd(63);
    case 6: return 1e308;
    case 7: return -0.5;
    case 8: return "";
    case 9: return "../../../../etc/passwd";
    case 10: return "front.erg";
    case 11: return json::array({1, nullptr, "x"});
    case 12: return json::object({{"a", 1}});
    default: return std::string(rnd(40), char('a' + rnd(26)));
  }
}

// Replaces, deletes or adds one node of a JSON document, anywhere in it.
void mutate_json(json* j) {
  json* node = j;
  for (int depth = 0; depth < 6 && (node->is_object() || node->is_array()) && !node->empty() && rnd(3); ++depth) {
    auto it = node->begin();
    std::advance(it, long(rnd(node->size())));
    node = &*it;
  }
  switch (rnd(4)) {
    case 0: *node = random_scalar(); break;
    case 1:
      if (node->is_object() && !node->empty()) { auto it = node->begin(); std::advance(it, long(rnd(node->size()))); node->erase(it.key()); }
      else if (node->is_array() && !node->empty()) node->erase(rnd(node->size()));
      else *node = random_scalar();
      break;
    case 2:
      if (node->is_object()) (*node)[std::string(1, char('a' + rnd(26)))] = random_scalar();
      else if (node->is_array()) node->push_back(random_scalar());
      else *node = random_scalar();
      break;
    default:
      if (node->is_number_integer()) *node = int64_t(uint64_t(node->get<int64_t>()) * (1 + rnd(1u << 20)) + 1);
      else *node = random_scalar();
  }
}

// ---------------------------------------------------------------------------------------------- reply

DeviceBundle reply_bundle() {
  DeviceBundle b;
  b.dir = "fuzz";
  b.topic_id = "00112233445566778899aabbccddeeff";
  for (int i = 0; i < 16; ++i) b.hash16[i] = uint8_t(i * 17);
  b.outputs = {Spec{"logits", {-1, 3}, "float32"}, Spec{"ids", {-1}, "int64"}, Spec{"mask", {-1, 2, -1}, "uint8"}};
  return b;
}

std::vector<uint8_t> make_frame(const DeviceBundle& b, uint8_t kind, uint64_t id, const std::string& meta,
                                int64_t batch) {
  static std::vector<float> f(64, 0.5f);
  static std::vector<int64_t> ids(64, 7);
  static std::vector<uint8_t> mask(256, 1);
  wire::FrameHeader h;
  h.kind = kind;
  h.request_id = id;
  std::memcpy(h.bundle_hash, b.hash16, 16);
  wire::TensorView v[3];
  v[0].dtype = 1; v[0].ndim = 2; v[0].dims[0] = uint32_t(batch); v[0].dims[1] = 3;
  v[0].payload = reinterpret_cast<const uint8_t*>(f.data()); v[0].payload_len = uint64_t(batch) * 12;
  v[1].dtype = 6; v[1].ndim = 1; v[1].dims[0] = uint32_t(batch);
  v[1].payload = reinterpret_cast<const uint8_t*>(ids.data()); v[1].payload_len = uint64_t(batch) * 8;
  v[2].dtype = 4; v[2].ndim = 3; v[2].dims[0] = uint32_t(batch); v[2].dims[1] = 2; v[2].dims[2] = 5;
  v[2].payload = mask.data(); v[2].payload_len = uint64_t(batch) * 10;
  const uint32_t n = kind == uint8_t(wire::Kind::kReply) ? 3 : 0;
  std::vector<uint8_t> out(wire::encoded_size(uint32_t(meta.size()), v, n));
  size_t written = 0;
  auto st = wire::encode_into(h, reinterpret_cast<const uint8_t*>(meta.data()), uint32_t(meta.size()), v, n,
                              out.data(), out.size(), &written);
  if (!st.ok()) return {};
  out.resize(written);
  return out;
}

const char* kMetas[] = {
    R"({"server_us": 1234, "worker": "w1"})", R"({"server_us": -1})", R"({"server_us": "12"})",
    R"({"server_us": 1e400})", R"({"server_us": null, "worker": 5})", R"({"code": 5, "message": ["x"]})",
    R"({"code": "bad_hash", "message": null})", R"({"code": {"a": 1}})", R"({"server_us": 18446744073709551615})",
    R"({"server_us": -0.0, "worker": {"x": []}})", R"({"worker": "\u0000"})", R"({"server_us": 1, "server_us": 2})",
    R"({"code": "wrong_bundle", "message": "m"})", R"({"server_us": [1]})", R"({})", "",
    R"({"code": "stopping", "message": "this server is stopping"})", R"({"code": ["stopping"]})"};

// A well-formed frame of random tensors: any count, dtype, rank and dims whose payload fits, so the
// checks past the wire decoder (count, dtype, rank, batch, dims) see every combination.
std::vector<uint8_t> random_frame(const DeviceBundle& b, uint64_t id, int64_t batch) {
  static std::vector<uint8_t> bytes(1 << 16, 0x3f);
  wire::FrameHeader h;
  h.kind = uint8_t(wire::Kind::kReply);
  h.request_id = id;
  std::memcpy(h.bundle_hash, b.hash16, 16);
  wire::TensorView v[wire::kMaxTensors];
  const uint32_t n = rnd(4) ? uint32_t(b.outputs.size()) : uint32_t(rnd(wire::kMaxTensors + 1));
  for (uint32_t i = 0; i < n; ++i) {
    const Spec* s = i < b.outputs.size() && rnd(2) ? &b.outputs[i] : nullptr;
    v[i].dtype = s && rnd(2) ? (s->dtype == "float32" ? 1 : s->dtype == "int64" ? 6 : 4) : uint8_t(1 + rnd(6));
    v[i].ndim = s && rnd(2) ? uint8_t(s->shape.size()) : uint8_t(rnd(wire::kMaxDims + 1));
    uint64_t numel = 1;
    for (uint32_t d = 0; d < v[i].ndim; ++d) {
      uint32_t dim = d == 0 && rnd(2) ? uint32_t(batch) : s && d < s->shape.size() && s->shape[d] > 0 && rnd(2)
                                                              ? uint32_t(s->shape[d]) : uint32_t(rnd(6));
      if (rnd(50) == 0) dim = 0xffffffffu;  // too large for any payload: the wire must refuse it
      v[i].dims[d] = dim;
      numel *= dim;
    }
    const uint64_t len = numel * wire::dtype_size(v[i].dtype);
    v[i].payload = bytes.data();
    v[i].payload_len = len <= bytes.size() ? len : rnd(bytes.size());
  }
  const std::string meta = kMetas[rnd(sizeof(kMetas) / sizeof(kMetas[0]))];
  std::vector<uint8_t> out(wire::encoded_size(uint32_t(meta.size()), v, n));
  size_t written = 0;
  if (out.size() > (64u << 20)) return {};
  auto st = wire::encode_into(h, reinterpret_cast<const uint8_t*>(meta.data()), uint32_t(meta.size()), v, n,
                              out.data(), out.size(), &written);
  if (!st.ok()) return {};
  out.resize(written);
  return out;
}

void fix_crc(std::vector<uint8_t>* b) {
  if (b->size() < 4) return;
  const uint32_t c = edgerun::crc32(b->data(), b->size() - 4);
  for (int i = 0; i < 4; ++i) (*b)[b->size() - 4 + size_t(i)] = uint8_t(c >> (8 * i));
}

std::string hex_of(const std::vector<uint8_t>& b) {
  static const char* h = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < b.size() && i < 200; ++i) { s += h[b[i] >> 4]; s += h[b[i] & 15]; }
  return s;
}


void fuzz_reply(long iters) {
  const DeviceBundle b = reply_bundle();
  for (long it = 0; it < iters; ++it) {
    const uint64_t id = 1 + rnd(1000);
    const int64_t batch = 1 + int64_t(rnd(4));
    const uint8_t kind = uint8_t(rnd(4) ? 2 : 1 + rnd(3));
    std::string meta = kMetas[rnd(sizeof(kMetas) / sizeof(kMetas[0]))];
    std::vector<uint8_t> buf = rnd(3) ? make_frame(b, kind, rnd(8) ? id : id + 1, meta, rnd(8) ? batch : batch + 1)
                                      : random_frame(b, id, batch);
    if (rnd(4)) {
      mutate_bytes(&buf, 1 + int(rnd(4)));
      if (rnd(4)) fix_crc(&buf);  // past the checksum: the checks behind it
    }
    const std::string shown = hex_of(buf);
    Reply r;
    Err e;
    if (!guarded("check_reply", shown, [&] { e = check_reply(b, buf, id, batch, &r); })) continue;
    bool stopping = false;  // a reply the device reads before check_reply: is it a `stopping` refusal?
    if (!guarded("is_stopping", shown, [&] { stopping = is_stopping(b.hash16, buf); })) continue;
    if (stopping && e.code != kExitServerError) bug("is_stopping: true for a reply that is no ERROR frame", shown);
    if (!e.ok()) {
      if (e.code != kExitBadReply && e.code != kExitServerError) bug("check_reply: exit code " + std::to_string(e.code), shown);
      if (e.message.empty()) bug("check_reply: an error with no message", shown);
      continue;
    }
    ++accepted;  // it must be this request's answer, as the model gives it
    if (!(r.request_id == id && std::isfinite(r.server_ms) && r.server_ms >= 0 && r.outputs.size() == b.outputs.size()))
      bug("check_reply accepted a reply that does not hold together", shown);
    for (const Spec& s : b.outputs) {
      const json& o = r.outputs[s.name];
      size_t n = 1;
      for (const json& d : o["shape"]) n *= d.get<size_t>();
      if (o["dtype"] != s.dtype || o["shape"].size() != s.shape.size() || o["shape"][0] != batch || o["data"].size() != n)
        bug("check_reply accepted output '" + s.name + "' as " + o["shape"].dump(), shown);
    }
  }
}

// ---------------------------------------------------------------------------------------------- bundle

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

json base_manifest(const std::string& front_bytes, const std::string& exit_bytes, bool exits, bool tsq) {
  json files = {{"front.erg", {{"bytes", front_bytes.size()}, {"sha256", sha256_hex(front_bytes.data(), front_bytes.size())}}},
                {"exit0.erg", {{"bytes", exit_bytes.size()}, {"sha256", sha256_hex(exit_bytes.data(), exit_bytes.size())}}}};
  json m = {{"format", "edgerun-bundle"}, {"format_version", 1}, {"model_id", "fuzz"},
            {"inputs", {{{"name", "x"}, {"shape", {nullptr, 1, 8, 8}}, {"dtype", "float32"}}}},
            {"outputs", {{{"name", "y"}, {"shape", {nullptr, 10}}, {"dtype", "float32"}}}},
            {"split", {{"tensors", {{{"name", "cut"}, {"shape", {nullptr, 4, 4, 4}}, {"dtype", "float32"}}}}}},
            {"native", {{"ok", true}, {"reason", ""}}}, {"files", files}};
  if (tsq) m["codec"] = {{"id", "tsq"}, {"params", {{"cut", "0102030405060708"}}}};
  if (exits)
    m["exits"] = {{"criterion", "max_prob"}, {"default_budget", "fast"},
                  {"budgets", {{"fast", {{"thresholds", {0.9}}}}}},
                  {"points", {{{"erg", "exit0.erg"}, {"tensor", "cut"}, {"head", "h"}, {"input", "x"},
                               {"compute_fraction", 0.5}}}},
                  {"cut_tensors", {"cut"}}};
  return m;
}

std::string sealed(json m) {
  m.erase("bundle_hash");
  const std::string canon = m.dump(-1, ' ', true);
  m["bundle_hash"] = sha256_hex(canon.data(), canon.size());
  return m.dump(rnd(2) ? -1 : 1);
}

void fuzz_bundle(long iters, const std::string& work) {
  const std::string dir = work + "/bundle";
  ::mkdir(dir.c_str(), 0755);
  const std::string front = "not an erg file", exit0 = "ERG?garbage";
  write_file(dir + "/front.erg", front);
  write_file(dir + "/exit0.erg", exit0);
  for (long it = 0; it < iters; ++it) {
    json m = base_manifest(front, exit0, rnd(2), rnd(2));
    std::string text;
    if (rnd(20) == 0) {  // a file entry that leads out of the bundle
      const char* names[] = {"../bundle/exit0.erg", "/etc/hostname", "./../bundle/front.erg", "", "a/../../x"};
      const std::string name = names[rnd(5)];
      m["files"][name] = m["files"]["exit0.erg"];
      if (rnd(2)) m["exits"] = base_manifest(front, exit0, true, false)["exits"], m["exits"]["points"][0]["erg"] = name;
    }
    if (rnd(5)) {
      for (int r = int(rnd(3)); r > 0; --r) mutate_json(&m);
      // Resealed (the hash is a checksum, not a signature: anyone editing a bundle can redo it).
      if (m.is_object() && rnd(8)) text = sealed(m);
      else guarded("dump", "", [&] { text = m.dump(); });
    } else {
      text = sealed(m);
      std::vector<uint8_t> raw(text.begin(), text.end());
      mutate_bytes(&raw, 1 + int(rnd(4)));
      text.assign(raw.begin(), raw.end());
    }
    write_file(dir + "/manifest.json", text);
    DeviceBundle b;
    Err e;
    if (!guarded("load_bundle", text, [&] { e = load_bundle(dir, &b); })) continue;
    if (!e.ok()) {
      if (e.code != kExitBundle || e.message.empty()) bug("load_bundle: exit code " + std::to_string(e.code), text);
      continue;
    }
    ++accepted;
    if (b.inputs.empty() || b.outputs.empty() || b.cut.empty() || b.front_path != dir + "/front.erg")
      bug("load_bundle accepted a bundle that does not hold together", text);
    for (const auto* list : {&b.inputs, &b.outputs, &b.cut})
      for (const Spec& s : *list)
        for (int64_t d : s.shape)
          if (d != -1 && (d < 1 || d > 2147483647)) bug("load_bundle accepted dim " + std::to_string(d), text);
    for (auto f = b.files.begin(); f != b.files.end(); ++f)
      if (f.key().empty() || f.key()[0] == '/' || f.key().find("..") != std::string::npos)
        bug("load_bundle accepted file name '" + f.key() + "'", text);
    // What the device does next with the manifest: the exits' entry, the codec.
    if (b.has_exits) {
      Exits x;
      if (guarded("Exits::load", text, [&] { e = x.load(b, rnd(3) ? "" : "fast", 2, 1); }) && e.ok())
        bug("Exits::load accepted a garbage segment", text);
    }
    Front f;
    if (guarded("Front::load", text, [&] { e = f.load(b, 2, 1, rnd(2) ? "" : "tsq", false); }) && !e.ok() &&
        e.code != kExitBundle && e.code != kExitUsage)
      bug("Front::load: exit code " + std::to_string(e.code), text);
  }
}

// ---------------------------------------------------------------------------------------------- npy

std::string npy_file(const std::string& header_dict, const std::string& data, int major) {
  std::string h = header_dict;
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY";
  out += char(major);
  out += '\0';
  if (major == 1) { out += char(h.size() & 0xff); out += char(h.size() >> 8); }
  else for (int i = 0; i < 4; ++i) out += char((h.size() >> (8 * i)) & 0xff);
  return out + h + data;
}

const char* kShapes[] = {"(2, 3)", "(4,)", "(1, 1, 8, 8)", "()", "(0, 3)", "(4611686018427387904,)",
                         "(4611686018427387904, 4)", "(9223372036854775807, 2)", "(3037000500, 3037000500)",
                         "(99999999999999999999,)", "(-1, 2)", "(abc, 2)", "(2 3)", "(,)", "( 2 , 3 , )", "(1e3,)",
                         "(0x10,)", "(2, -0)", "(1, 2, 3", "2, 3)", "(18446744073709551616,)", "(+4,)", "(4L,)"};

void fuzz_npy(long iters, const std::string& work) {
  const std::string path = work + "/x.npy";
  for (long it = 0; it < iters; ++it) {
    const std::string shape = kShapes[rnd(sizeof(kShapes) / sizeof(kShapes[0]))];
    const char* descr = rnd(6) ? "'<f4'" : (rnd(2) ? "'>f4'" : "'<f8'");
    std::string dict = std::string("{'descr': ") + descr + ", 'fortran_order': " + (rnd(8) ? "False" : "True") +
                       ", 'shape': " + shape + ", }";
    std::string data(rnd(3) ? 24 : rnd(2) ? 0 : rnd(300), '\0');
    for (char& c : data) c = char(rng());
    std::string file = npy_file(dict, data, 1 + int(rnd(3)));
    if (rnd(2)) {
      std::vector<uint8_t> raw(file.begin(), file.end());
      mutate_bytes(&raw, 1 + int(rnd(3)));
      file.assign(raw.begin(), raw.end());
    }
    write_file(path, file);
    Array a;
    Err e;
    if (!guarded("read_npy", file, [&] { e = read_npy(path, &a); })) continue;
    if (!e.ok()) {
      if (e.code != kExitUsage || e.message.empty()) bug("read_npy: exit code " + std::to_string(e.code), file);
      continue;
    }
    ++accepted;
    long double n = 1;  // no wrap-around: a shape whose product overflows must not pass as 0 elements
    for (int64_t d : a.shape) {
      if (d < 0) bug("read_npy accepted a negative dim", file);
      n *= (long double)d;
    }
    if (a.shape.empty() || n != (long double)a.data.size() || a.data.size() * 4 > file.size())
      bug("read_npy accepted a shape its data does not fill", file);
  }
}

// ---------------------------------------------------------------------------------------------- url

const char* kUrls[] = {"mqtt://127.0.0.1:1883", "mqtts://u:p%40ss@broker.local:8883/?ca=/etc/hostname",
                       "tcp://[::1]:1884", "user@host", "ssl://h?ca=/etc/hostname&cert=/etc/hostname&key=/etc/hostname",
                       "mqtt://a:b@c@d:1", "host:65535", "mqtts://[fe80::1%25eth0]:1"};

void fuzz_url(long iters) {
  const char alphabet[] = "@:/?#[]%&=+ \t0123456789abcAZ.-_\x7f\xff";
  for (long it = 0; it < iters; ++it) {
    std::string u = kUrls[rnd(sizeof(kUrls) / sizeof(kUrls[0]))];
    for (int r = 1 + int(rnd(5)); r > 0; --r) {
      const size_t at = rnd(u.size() + 1);
      switch (rnd(4)) {
        case 0: u.insert(at, 1, alphabet[rnd(sizeof(alphabet) - 1)]); break;
        case 1: if (at < u.size()) u.erase(at, 1); break;
        case 2: if (at < u.size()) u[at] = alphabet[rnd(sizeof(alphabet) - 1)]; break;
        default: u.insert(at, rnd(2) ? "99999999999999999999" : "%", 1 + rnd(2)); break;
      }
    }
    BrokerUrl b;
    Err e;
    if (!guarded("redact_broker_url", u, [&] { (void)redact_broker_url(u); })) continue;
    if (!guarded("parse_broker_url", u, [&] { e = parse_broker_url(u, &b); })) continue;
    if (!e.ok()) {
      if (e.code != kExitUsage || e.message.empty()) bug("parse_broker_url: exit code " + std::to_string(e.code), u);
      continue;
    }
    ++accepted;
    if (b.host.empty() || b.port < 1 || b.port > 65535 || (!b.tls && (!b.ca.empty() || !b.cert.empty())))
      bug("parse_broker_url accepted " + b.host + " port " + std::to_string(b.port), u);
    if (b.has_user && !b.password.empty() && b.text.find(b.password) != std::string::npos && b.password != "***" &&
        b.text.find(":***@") == std::string::npos)
      bug("parse_broker_url: the password shows in the redacted URL", u);
  }
}


// ---------------------------------------------------------------------------------------------- erg
// A front half from a resealed bundle: mutated bytes of a real .erg file, loaded and (when the engine
// takes it) run on zeros. The engine must refuse it with a Status or run it inside its buffers.

void fuzz_erg(long iters, const std::string& work, const std::string& base_path) {
  std::ifstream in(base_path, std::ios::binary);
  const std::string base((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (base.empty()) { bug("erg: cannot read " + base_path, base_path); return; }
  const std::string path = work + "/fuzz.erg";
  for (long it = 0; it < iters; ++it) {
    std::vector<uint8_t> raw(base.begin(), base.end());
    if (rnd(3)) {
      // Mostly the head (tables, dims, offsets): where a loader trusts what it reads.
      for (int r = 1 + int(rnd(4)); r > 0; --r) {
        const size_t at = rnd(std::min<size_t>(raw.size(), rnd(2) ? 4096 : raw.size()));
        const size_t w = size_t(1) << rnd(4);
        const uint64_t v = kInteresting[rnd(sizeof(kInteresting) / sizeof(kInteresting[0]))];
        for (size_t i = 0; i < w && at + i < raw.size(); ++i) raw[at + i] = uint8_t(rnd(3) ? v >> (8 * i) : rng());
      }
    } else {
      mutate_bytes(&raw, 1 + int(rnd(4)));
    }
    write_file(path, std::string(raw.begin(), raw.end()));
    const std::string shown = "erg mutation " + std::to_string(it);
    guarded("Engine::load/run", shown, [&] {
      auto r = edgerun::Engine::load(path, 2, 1);
      if (!r.ok()) return;
      ++accepted;
      std::unique_ptr<edgerun::Engine> e = r.take();
      std::vector<std::vector<float>> data(e->num_inputs());
      std::vector<std::vector<int64_t>> dims(e->num_inputs());
      std::vector<edgerun::InputView> views(e->num_inputs());
      for (size_t i = 0; i < e->num_inputs(); ++i) {
        const auto& t = e->input_info(i);
        size_t n = 1;
        for (uint32_t d = 0; d < t.ndim; ++d) {
          dims[i].push_back(d == 0 && t.dims[d] < 0 ? 1 : t.dims[d]);
          n *= size_t(std::max<int64_t>(dims[i].back(), 0));
        }
        if (n > (16u << 20)) return;  // an input over 64 MB: not worth feeding here
        data[i].assign(n, 0.25f);
        views[i] = {data[i].data(), dims[i].data(), uint32_t(dims[i].size())};
      }
      (void)e->run(views.data(), views.size(), 1);
    });
  }
}

}  // namespace edgerun_fuzz

using namespace edgerun_fuzz;

int main(int argc, char** argv) {
  if (argc != 5 && !(argc == 6 && std::string(argv[1]) == "erg")) {
    std::fprintf(stderr, "usage: %s reply|bundle|npy|url|all|known SEED ITERATIONS WORKDIR\n       %s erg SEED ITERATIONS WORKDIR FILE.erg\n", argv[0], argv[0]);
    return 2;
  }
  const std::string what = argv[1], work = argv[4];
  const long iters = std::atol(argv[3]);
  rng.seed(std::strtoull(argv[2], nullptr, 10));
  ::mkdir(work.c_str(), 0755);
  if (what == "reply" || what == "all") fuzz_reply(iters);
  if (what == "bundle" || what == "all") fuzz_bundle(iters, work);
  if (what == "npy" || what == "all") fuzz_npy(iters, work);
  if (what == "url" || what == "all") fuzz_url(iters);
  if (what == "known") known(work);
  if (what == "erg") fuzz_erg(iters, work, argv[5]);
  std::printf("%s: %ld iterations, %ld bugs (%ld inputs accepted)\n", what.c_str(), iters, failures, accepted);
  return failures ? 1 : 0;
}
