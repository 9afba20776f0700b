// cpp/device/src/device_bundle.cpp: bundle loading for the C++ device (see device_bundle.h).
#include "device_bundle.h"

#include <openssl/evp.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

namespace edgerun_device {
namespace {

using json = nlohmann::json;

constexpr int kAcceptedVersion = 1;  // edgerun/bundle.py ACCEPTED_VERSIONS
constexpr int64_t kMaxDim = 2147483647;  // edgerun/bundle.py MAX_DIM

// A manifest file name must name a file inside the bundle (edgerun/bundle.py _check_file_name): not
// empty, not absolute, no '..' part, no backslash, and not a symlink out of the directory. The hashes
// prove only that the named file has the recorded bytes, so "../other/x.erg" would load a file from
// elsewhere as part of the bundle. "" when fine, else why not.
std::string bad_file_name(const std::string& dir, const std::string& name) {
  if (name.empty()) return "an empty name";
  if (name[0] == '/' || name.find('\\') != std::string::npos || name.find('\0') != std::string::npos ||
      (name.size() >= 2 && name[1] == ':'))
    return "an absolute path";
  size_t a = 0;
  while (a <= name.size()) {
    size_t z = name.find('/', a);
    if (z == std::string::npos) z = name.size();
    if (name.compare(a, z - a, "..") == 0 && z - a == 2) return "a path with '..'";
    a = z + 1;
  }
  char* root = ::realpath(dir.c_str(), nullptr);
  char* target = ::realpath((dir + "/" + name).c_str(), nullptr);
  std::string why;
  if (root != nullptr && target != nullptr) {
    const std::string r = std::string(root) + "/", t = target;
    if (t.compare(0, r.size(), r) != 0) why = "a path that leads outside the bundle (to " + t + ")";
  }
  std::free(root);
  std::free(target);
  return why;
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A folder directly inside `dir` that holds a manifest.json ("" when none).
std::string bundle_inside(const std::string& dir) {
  std::string found;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name, path = dir + "/" + name;
      struct stat st {};
      if (name != "." && name != ".." && is_dir(path) && ::stat((path + "/manifest.json").c_str(), &st) == 0) {
        found = path;
        break;
      }
    }
    ::closedir(d);
  }
  return found;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

Err bad(const std::string& dir, const std::string& why) {
  return fail(kExitBundle, "bundle " + dir + ": " + why);
}

Err read_specs(const std::string& dir, const json& arr, const char* what, std::vector<Spec>* out) {
  if (!arr.is_array() || arr.empty()) return bad(dir, std::string("manifest.json has no ") + what);
  for (const json& t : arr) {
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("shape") ||
        !t["shape"].is_array() || !t.contains("dtype") || !t["dtype"].is_string())
      return bad(dir, std::string("manifest.json: an entry of ") + what + " lacks name / shape / dtype; re-export it");
    Spec s;
    s.name = t["name"].get<std::string>();
    s.dtype = t["dtype"].get<std::string>();
    for (const json& d : t["shape"]) {
      // As edgerun/bundle.py: a size in 1..2^31-1 (what the engines and the wire hold) or null.
      if (d.is_null()) s.shape.push_back(-1);
      else if (d.is_number_integer() && d >= 1 && d <= kMaxDim) s.shape.push_back(d.get<int64_t>());
      else return bad(dir, std::string("manifest.json: a dim of ") + what + " is " + d.dump() +
                               ", not a size in 1..2147483647 or null; re-export it");
    }
    out->push_back(std::move(s));
  }
  return Err::Ok();
}

// The deepest nesting of [ and { in a JSON text, outside strings. nlohmann copies and prints documents
// recursively, so a manifest nested 100000 deep would overflow the stack (hashing it copies and dumps).
size_t json_depth(const std::string& text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

constexpr size_t kMaxManifestDepth = 64;  // a real manifest nests about 6 deep

std::vector<uint8_t> from_hex(const std::string& h, bool* ok) {
  std::vector<uint8_t> out;
  *ok = h.size() % 2 == 0;
  auto nib = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  for (size_t i = 0; *ok && i < h.size(); i += 2) {  // strictly two hex digits a byte (sscanf took " f", "-1")
    const int hi = nib(h[i]), lo = nib(h[i + 1]);
    *ok = hi >= 0 && lo >= 0;
    out.push_back(uint8_t(hi * 16 + lo));
  }
  return out;
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) { s += hex[md[i] >> 4]; s += hex[md[i] & 15]; }
  return s;
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    if (f.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), size_t(f.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) { s += hex[md[i] >> 4]; s += hex[md[i] & 15]; }
  return s;
}

Err load_bundle(const std::string& dir, DeviceBundle* out) {
  out->dir = dir;
  if (!is_dir(dir)) {
    if (ends_with(dir, ".tar.gz") || ends_with(dir, ".tgz") || ends_with(dir, ".tar"))
      return bad(dir, "an archive; extract it first (mkdir b && tar -xf " + dir +
                          " -C b) and give the directory inside it");
    struct stat st {};
    const bool exists = ::stat(dir.c_str(), &st) == 0;
    if (exists && ends_with(dir, "manifest.json"))
      return bad(dir, "the manifest, not the bundle: give the directory that holds it");
    if (exists)
      return bad(dir, "a file, not a directory: give the directory of an exported bundle (`edgerun export`)");
    if (errno == ELOOP)
      return bad(dir, "a loop of symbolic links: point the link at the bundle's directory");
    return bad(dir, "no such directory: give the path of an exported bundle (`edgerun export`)");
  }
  std::ifstream f(dir + "/manifest.json", std::ios::binary);
  if (!f) {  // the folder an archive was extracted into (tar -xf b.tar.gz -C dir) holds the bundle's folder
    const std::string inner = bundle_inside(dir);
    if (!inner.empty()) return bad(dir, "no manifest.json here, but " + inner + " has one: give that directory");
    return bad(dir, "no manifest.json: not an edgerun bundle (export one with `edgerun export`)");
  }
  std::stringstream ss;
  ss << f.rdbuf();
  if (json_depth(ss.str()) > kMaxManifestDepth)
    return bad(dir, "manifest.json nests deeper than " + std::to_string(kMaxManifestDepth) +
                    " levels: it is damaged or not a manifest; export or copy the bundle again");
  json m = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object())
    return bad(dir, "manifest.json is not a JSON object: the bundle is damaged; export or copy it again");
  const json fmt = m.value("format", json());
  if (fmt != "edgerun-bundle") {
    std::string f_s = fmt.is_string() ? fmt.get<std::string>() : fmt.dump();
    return bad(dir, "format " + f_s + " is not a model bundle (\"edgerun-bundle\"); the C++ device runs "
                    "split models only (a split LLM or a tool index needs the Python device)");
  }
  const json ver = m.value("format_version", json());
  if (!ver.is_number_integer() || ver.get<int64_t>() != kAcceptedVersion)
    return bad(dir, "format_version " + ver.dump() + " is not one this device accepts (1): re-export the "
                    "bundle with the edgerun this device was built from, or rebuild the device");
  for (const char* k : {"model_id", "split", "inputs", "outputs", "files", "bundle_hash"})
    if (!m.contains(k)) return bad(dir, std::string("manifest.json lacks \"") + k + "\": re-export it");
  if (!m["bundle_hash"].is_string() || m["bundle_hash"].get<std::string>().size() != 64)
    return bad(dir, "manifest.json: bundle_hash is not 64 hex characters; re-export it");
  // The bundle hash is the sha256 of the canonical JSON of the manifest without it: sorted keys, no
  // spaces, ASCII only (edgerun/bundle.py compute_bundle_hash). nlohmann's objects are sorted maps and
  // it prints numbers as Python's json does (shortest round trip), so the bytes are the same.
  out->hash = m["bundle_hash"].get<std::string>();
  json body = m;
  body.erase("bundle_hash");
  const std::string canon = body.dump(-1, ' ', /*ensure_ascii=*/true);
  if (sha256_hex(canon.data(), canon.size()) != out->hash)
    return bad(dir, "manifest.json does not match its bundle_hash: it was edited or damaged; "
                    "copy the bundle again (or re-export it)");
  bool ok = false;
  std::vector<uint8_t> h = from_hex(out->hash, &ok);
  if (!ok) return bad(dir, "manifest.json: bundle_hash is not hex; re-export it");
  std::copy(h.begin(), h.begin() + 16, out->hash16);
  out->topic_id = out->hash.substr(0, 32);
  if (!m["model_id"].is_string() || m["model_id"].get<std::string>().empty())
    return bad(dir, "manifest.json: model_id is empty; re-export the bundle with a model name");
  out->model_id = m["model_id"].get<std::string>();
  // Types first, as edgerun/bundle.py checks them: nothing below may throw on a wrong JSON type.
  if (!m["split"].is_object()) return bad(dir, "manifest.json: 'split' is not an object; re-export it");
  for (const char* k : {"native", "codec"})  // "exits" that is no object: no exits, as edgerun/exits.py has_exits
    if (m.contains(k) && !m[k].is_object()) return bad(dir, std::string("manifest.json: '") + k + "' is not an object; re-export it");
  if (!m["files"].is_object()) return bad(dir, "manifest.json: 'files' is not an object; re-export it");
  for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
    const std::string why = bad_file_name(dir, it.key());
    if (!why.empty())
      return bad(dir, "manifest.json names the file '" + it.key() + "', " + why + "; a bundle's files must lie inside "
                      "its directory. Do not use this bundle: re-export it, or get it again from its source");
    const json& rec = it.value();
    if (!rec.is_object() || !rec.contains("bytes") || !rec["bytes"].is_number_integer() || !rec.contains("sha256") ||
        !rec["sha256"].is_string())
      return bad(dir, "manifest.json: the entry of file '" + it.key() + "' lacks bytes / sha256; re-export it");
  }
  Err e = read_specs(dir, m["inputs"], "inputs", &out->inputs);
  if (e.ok()) e = read_specs(dir, m["outputs"], "outputs", &out->outputs);
  if (e.ok()) e = read_specs(dir, m["split"].value("tensors", json()), "split.tensors", &out->cut);
  if (!e.ok()) return e;
  for (const auto* list : {&out->inputs, &out->cut})
    for (const Spec& s : *list)
      if (s.dtype != "float32")
        return bad(dir, "tensor '" + s.name + "' is " + s.dtype + "; the C++ device handles float32 inputs "
                        "and crossing tensors only (use the Python device, edgerun/device.py)");
  const json native = m.value("native", json::object());
  const json native_ok = native.value("ok", json(false)), reason = native.value("reason", json("?"));
  if (!native_ok.is_boolean())
    return bad(dir, "manifest.json: 'native.ok' is " + native_ok.dump() + ", not true or false; re-export it");
  if (!native_ok.get<bool>())
    return bad(dir, "the native engine cannot run this front half (" +
                    (reason.is_string() ? reason.get<std::string>() : reason.dump()) +
                    "); the C++ device has no onnxruntime: use the Python device with --engine ort, "
                    "or re-export with a cut the native engine covers");
  const json codec = m.value("codec", json{{"id", "none"}});
  if (!codec.value("id", json("none")).is_string())
    return bad(dir, "manifest.json: 'codec.id' is not a string (none, tsq); re-export it");
  out->codec_id = codec.value("id", std::string("none"));
  if (out->codec_id == "tsq") {
    const json params = codec.value("params", json::object());
    if (!params.is_object()) return bad(dir, "manifest.json: 'codec.params' is not an object; re-export it");
    for (const Spec& s : out->cut) {
      if (!params.contains(s.name) || !params[s.name].is_string())
        return bad(dir, "codec tsq has no params for cut tensor '" + s.name + "'; re-export the bundle");
      out->codec_params[s.name] = from_hex(params[s.name].get<std::string>(), &ok);
      if (!ok) return bad(dir, "codec tsq params of '" + s.name + "' are not hex; re-export the bundle");
    }
  } else if (out->codec_id != "none") {
    return bad(dir, "codec '" + out->codec_id + "' is unknown to this device: rebuild it from a newer edgerun");
  }
  const json ex = m.value("exits", json::object());
  out->has_exits = ex.is_object() && ex.contains("points") && ex["points"].is_array() && !ex["points"].empty();
  if (out->has_exits) out->exits = ex;
  // front.erg: present, the recorded size and sha256 (a device copy from `edgerun pack` keeps it).
  const json files = m["files"];
  if (!files.is_object() || !files.contains("front.erg"))
    return bad(dir, "manifest.json lists no front.erg; re-export the bundle");
  out->files = files;
  out->front_path = dir + "/front.erg";
  struct stat st {};
  if (::stat(out->front_path.c_str(), &st) != 0)
    return bad(dir, "front.erg is missing (a server's copy?): copy the whole bundle, or "
                    "`edgerun pack BUNDLE --for device` and extract that");
  const json rec = files["front.erg"];
  if (!rec.is_object() || rec.value("bytes", int64_t(-1)) != int64_t(st.st_size) ||
      sha256_file(out->front_path) != rec.value("sha256", std::string()))
    return bad(dir, "front.erg does not match the sha256 the manifest records: the file is damaged or "
                    "was replaced; copy the bundle again");
  return Err::Ok();
}

}  // namespace edgerun_device
