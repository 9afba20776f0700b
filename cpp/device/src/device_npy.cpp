// cpp/device/src/device_npy.cpp: the .npy reader (see device_npy.h). The header is a Python dict
// literal written by numpy: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 8, 8), }
#include "device_npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

namespace edgerun_device {
namespace {

Err bad(const std::string& path, const std::string& why) {
  return fail(kExitUsage, "input " + path + ": " + why);
}

// The text after `'key':` in the header dict, or "" when absent.
std::string field(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t c = header.find(':', k);
  return c == std::string::npos ? "" : header.substr(c + 1);
}

}  // namespace

Err read_npy(const std::string& path, Array* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return bad(path, "cannot be read: give a .npy file (numpy.save)");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string buf = ss.str();
  if (buf.size() < 10 || std::memcmp(buf.data(), "\x93NUMPY", 6) != 0)
    return bad(path, "not a .npy file: write the input with numpy.save(path, x)");
  const uint8_t major = uint8_t(buf[6]);
  size_t hlen = 0, start = 0;
  if (major == 1) {
    hlen = uint8_t(buf[8]) | (size_t(uint8_t(buf[9])) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (buf.size() < 12) return bad(path, "truncated .npy header");
    for (int i = 0; i < 4; ++i) hlen |= size_t(uint8_t(buf[8 + i])) << (8 * i);
    start = 12;
  } else {
    return bad(path, ".npy format version " + std::to_string(major) + " is not 1-3");
  }
  if (buf.size() < start + hlen) return bad(path, "truncated .npy header");
  const std::string header = buf.substr(start, hlen);
  const std::string descr = field(header, "descr");
  const size_t d0 = descr.find_first_not_of(' ');
  if (d0 == std::string::npos || (descr.compare(d0, 5, "'<f4'") != 0 && descr.compare(d0, 5, "'=f4'") != 0))
    return bad(path, "dtype " + descr.substr(0, descr.find(',')) +
                         " is not float32: save it with numpy.save(path, x.astype(numpy.float32))");
  const std::string order = field(header, "fortran_order");
  const size_t o = order.find_first_not_of(' ');
  if (o == std::string::npos || order.compare(o, 5, "False") != 0)
    return bad(path, "stored in Fortran order: save numpy.ascontiguousarray(x)");
  std::string shape = field(header, "shape");
  size_t open = shape.find('('), close = open == std::string::npos ? open : shape.find(')', open);
  if (open == std::string::npos || close == std::string::npos)
    return bad(path, "the .npy header has no shape");
  // Dims: decimal integers (numpy writes no other), each at most 2^31 - 1 as a bundle's; the element
  // count is bounded by the file's own data bytes, so no product can overflow or allocate past the file.
  std::stringstream dims(shape.substr(open + 1, close - open - 1));
  std::string tok;
  out->shape.clear();
  const size_t data_bytes = buf.size() - start - hlen;
  size_t numel = 1;
  bool zero = false;
  bool ended = false;  // an empty item ends the tuple: "(2, 3, )", never "(2, , 3)"
  while (std::getline(dims, tok, ',')) {
    const size_t a = tok.find_first_not_of(" "), z = tok.find_last_not_of(" ");
    if (a == std::string::npos) { ended = true; continue; }
    if (ended) return bad(path, "the .npy header's shape " + shape.substr(open, close - open + 1) + " has an empty item");
    tok = tok.substr(a, z - a + 1);
    if (tok.size() > 10 || tok.find_first_not_of("0123456789") != std::string::npos)
      return bad(path, "the .npy header's shape holds '" + tok.substr(0, 24) + "', not a dim in 0..2147483647");
    const int64_t d = std::stoll(tok);
    if (d > 2147483647) return bad(path, "the .npy header's shape holds " + tok + ", over 2147483647");
    out->shape.push_back(d);
    if (d == 0) zero = true;
    else if (!zero) numel = numel > data_bytes / size_t(d) ? data_bytes + 1 : numel * size_t(d);  // capped
  }
  if (out->shape.empty()) return bad(path, "a scalar: the input needs its batch dimension first (x[None])");
  if (out->shape.size() > 8) return bad(path, "has " + std::to_string(out->shape.size()) + " dims (at most 8)");
  if (zero) numel = 0;
  if (numel > data_bytes / sizeof(float) || data_bytes != numel * sizeof(float))
    return bad(path, "holds " + std::to_string(data_bytes) + " data bytes, its shape " + shape.substr(open, close - open + 1) +
                         " says more or fewer: the file is damaged");
  const size_t bytes = numel * sizeof(float);
  out->data.resize(numel);
  if (bytes > 0) std::memcpy(out->data.data(), buf.data() + start + hlen, bytes);  // data() may be null
  return Err::Ok();
}

}  // namespace edgerun_device
