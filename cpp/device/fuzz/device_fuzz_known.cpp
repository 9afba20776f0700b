// cpp/device/fuzz/device_fuzz_known.cpp: the inputs the device fuzzer found (and their neighbours), each
// with the error it must give (`edgerun_device_fuzz known 0 0 WORKDIR`; tests/integration/test_cpp_device_fuzz.py).
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "device_bundle.h"
#include "device_common.h"
#include "device_exits.h"
#include "device_npy.h"
#include "device_reply.h"
#include "fuzz_inputs.h"

namespace edgerun_fuzz {

using namespace edgerun_device;

namespace {

void expect(const char* name, const Err& e, Exit code, const std::string& words) {
  if (e.code != code || e.message.find(words) == std::string::npos)
    bug(std::string(name) + ": want exit " + std::to_string(code) + " saying '" + words + "', got exit " +
            std::to_string(e.code) + ": " + e.message, name);
}

}  // namespace

void known(const std::string& work) {
  {  // replies
    const DeviceBundle b = reply_bundle();
    struct Case { const char* name; uint8_t kind; const char* meta; Exit code; const char* words; } cases[] = {
        {"error code 5", 3, R"({"code": 5, "message": ["x"]})", kExitServerError, "(5): [\"x\"]"},
        {"error code null", 3, R"({"code": null, "message": null})", kExitServerError, "(null)"},
        {"error code object", 3, R"({"code": {"a": 1}})", kExitServerError, "refused"},
        {"error 1e400", 3, R"({"code": "x", "n": -1e400})", kExitBadReply, "meta"},
        {"server_us string", 2, R"({"server_us": "12"})", kExitBadReply, "server_us"},
        {"server_us 1e400", 2, R"({"server_us": 1e400})", kExitBadReply, "meta"},
        {"server_us -1", 2, R"({"server_us": -1})", kExitBadReply, "server_us"},
        {"worker 5", 2, R"({"server_us": 1, "worker": 5})", kExitOk, ""},
    };
    for (const Case& c : cases) {
      Reply r;
      Err e;
      const std::vector<uint8_t> buf = make_frame(b, c.kind, 9, c.meta, 2);
      if (guarded(c.name, c.meta, [&] { e = check_reply(b, buf, 9, 2, &r); })) expect(c.name, e, c.code, c.words);
    }
  }
  {  // .npy files
    struct Case { const char* name; const char* dict; size_t data; Exit code; const char* words; } cases[] = {
        {"npy dim abc", "{'descr': '<f4', 'fortran_order': False, 'shape': (abc, 2), }", 8, kExitUsage, "not a dim"},
        {"npy dim 1e20", "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8, kExitUsage, "not a dim"},
        {"npy dim 2^62 x 4", "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 0, kExitUsage, "not a dim"},
        {"npy dim 2^31", "{'descr': '<f4', 'fortran_order': False, 'shape': (2147483648,), }", 0, kExitUsage, "over 2147483647"},
        {"npy wraps", "{'descr': '<f4', 'fortran_order': False, 'shape': (65536, 65536, 65536, 65536), }", 0, kExitUsage, "data bytes"},
        {"npy short data", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20, kExitUsage, "data bytes"},
        {"npy empty item", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, , 3), }", 24, kExitUsage, "empty item"},
        {"npy 9 dims", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4, kExitUsage, "at most 8"},
        {"npy f8 then f4", "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': '<f4'}", 4, kExitUsage, "not float32"},
        {"npy empty batch", "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", 0, kExitOk, ""},
        {"npy trailing comma", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, ), }", 24, kExitOk, ""},
    };
    for (const Case& c : cases) {
      const std::string path = work + "/known.npy";
      write_file(path, npy_file(c.dict, std::string(c.data, '\0'), 1));
      Array a;
      Err e;
      if (guarded(c.name, c.dict, [&] { e = read_npy(path, &a); })) expect(c.name, e, c.code, c.words);
    }
  }
  {  // manifests (resealed: the hash is no defence against an edit)
    const std::string dir = work + "/known";
    ::mkdir(dir.c_str(), 0755);
    const std::string front = "not an erg file", exit0 = "ERG?garbage";
    write_file(dir + "/front.erg", front);
    write_file(dir + "/exit0.erg", exit0);
    ::unlink((dir + "/link.erg").c_str());
    if (::symlink("/etc/hostname", (dir + "/link.erg").c_str()) != 0) bug("symlink", dir);
    const json base = base_manifest(front, exit0, false, false), with_exits = base_manifest(front, exit0, true, false);
    const json rec = base["files"]["exit0.erg"];
    struct Case { const char* name; json m; Exit code; const char* words; bool exits; };
    auto edit = [](json m, const json::json_pointer& at, json v) { m[at] = std::move(v); return m; };
    using P = json::json_pointer;
    std::vector<Case> cases = {
        {"split 5", edit(base, P("/split"), 5), kExitBundle, "'split' is not an object", false},
        {"native ok yes", edit(base, P("/native/ok"), "yes"), kExitBundle, "'native.ok'", false},
        {"native reason 7", edit(edit(base, P("/native/ok"), false), P("/native/reason"), 7), kExitBundle, "(7)", false},
        {"native list", edit(base, P("/native"), json::array()), kExitBundle, "'native' is not an object", false},
        {"codec id 3", edit(base, P("/codec"), {{"id", 3}}), kExitBundle, "codec.id", false},
        {"codec string", edit(base, P("/codec"), "tsq"), kExitBundle, "'codec' is not an object", false},
        {"tsq params list", edit(base, P("/codec"), {{"id", "tsq"}, {"params", {1}}}), kExitBundle, "codec.params", false},
        {"tsq params -1", edit(base, P("/codec"), {{"id", "tsq"}, {"params", {{"cut", " 1-1"}}}}), kExitBundle, "not hex", false},
        {"files ..", edit(base, P("/files/..~1known~1exit0.erg"), rec), kExitBundle, "'..'", false},
        {"files absolute", edit(base, P("/files/~1etc~1hostname"), rec), kExitBundle, "absolute", false},
        {"files symlink", edit(base, P("/files/link.erg"), rec), kExitBundle, "outside the bundle", false},
        {"files bytes string", edit(base, P("/files/front.erg/bytes"), "15"), kExitBundle, "lacks bytes", false},
        {"files list", edit(base, P("/files"), json::array()), kExitBundle, "'files' is not an object", false},
        {"dim 0", edit(base, P("/inputs/0/shape/1"), 0), kExitBundle, "1..2147483647", false},
        {"dim 2^40", edit(base, P("/inputs/0/shape/1"), int64_t(1) << 40), kExitBundle, "1..2147483647", false},
        {"dim 2^64-1", edit(base, P("/outputs/0/shape/1"), uint64_t(0xffffffffffffffffull)), kExitBundle, "1..2147483647", false},
        {"exits list", edit(base, P("/exits"), json::array()), kExitOk, "", false},  // no exits, as in Python
        {"exit criterion 5", edit(with_exits, P("/exits/criterion"), 5), kExitBundle, "criterion '5'", true},
        {"exit fraction x", edit(with_exits, P("/exits/points/0/compute_fraction"), "x"), kExitBundle, "compute_fraction", true},
        {"exit budget 3", edit(with_exits, P("/exits/budgets/fast"), 3), kExitBundle, "no threshold", true},
        {"exit reason 5", edit(edit(with_exits, P("/exits/points/0/erg"), 1), P("/exits/native_reason"), 5), kExitBundle, "(5)", true},
        {"exit erg ..", edit(edit(with_exits, P("/exits/points/0/erg"), "../known/exit0.erg"), P("/files/..~1known~1exit0.erg"), rec),
         kExitBundle, "'..'", false},
    };
    for (const Case& c : cases) {
      write_file(dir + "/manifest.json", sealed(c.m));
      DeviceBundle b;
      Err e;
      if (!guarded(c.name, c.m.dump(), [&] { e = load_bundle(dir, &b); })) continue;
      if (c.exits && e.ok()) {
        Exits x;
        if (!guarded(c.name, c.m.dump(), [&] { e = x.load(b, "", 2, 1); })) continue;
      }
      expect(c.name, e, c.code, c.words);
    }
    // Nested 100000 deep: nlohmann copies and prints recursively (the hash check), a stack overflow.
    json deep = base;
    deep.erase("bundle_hash");
    std::string text = deep.dump();
    text.pop_back();
    text += ", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + ", \"bundle_hash\": \"" +
            std::string(64, 'a') + "\"}";
    write_file(dir + "/manifest.json", text);
    DeviceBundle b;
    Err e;
    if (guarded("deep manifest", "[[[...", [&] { e = load_bundle(dir, &b); }))
      expect("deep manifest", e, kExitBundle, "nests deeper than 64");
  }
}

}  // namespace edgerun_fuzz
