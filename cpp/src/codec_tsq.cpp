// codec "tsq": threshold splitting + token-wise adaptive bit quantization.
//
// Mirrors the Python reference edgerun/codec.py operation for operation (same
// double-precision arithmetic, same exact fp16 rounding), so both encoders
// write the same bytes. Layouts: CODEC.md.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "edgerun/codec.h"

namespace edgerun {
namespace codec {
namespace {

constexpr double kHalfMax = 65504.0;
constexpr size_t kHeaderSize = 16;
constexpr size_t kParamsSize = 16;

Status malformed(const std::string& what) {
  return Status(StatusCode::kFrameMalformed,
                "tsq payload is malformed: " + what + "; drop this frame (sender bug or corruption)");
}

// ---------------------------------------------------------------- exact fp16 rounding
double half_ulp(double a) {  // a > 0: the fp16 spacing in a's binade (subnormal floor 2^-24)
  int e = 0;
  std::frexp(a, &e);
  return std::ldexp(1.0, std::max(e - 1, -14) - 10);
}

double half_up(double v);

double half_down(double v) {  // largest fp16 <= v, for v >= -65504
  v = std::min(v, kHalfMax);
  const double a = std::fabs(v);
  const double u = half_ulp(a > 0 ? a : 1.0);
  return (v >= 0 ? std::floor(a / u) * u : -std::ceil(a / u) * u) + 0.0;
}

double half_up(double v) {  // smallest fp16 >= v (v >= 0); inf when none is finite
  const double u = half_ulp(v > 0 ? v : 1.0);
  const double r = std::ceil(v / u) * u + 0.0;
  return r > kHalfMax ? INFINITY : r;
}

uint16_t half_bits(double v) {  // v is exactly an fp16 value (finite)
  uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a == 0) return sign;
  int e = 0;
  std::frexp(a, &e);
  const int exp = e - 1;
  if (exp < -14) return sign | static_cast<uint16_t>(a / std::ldexp(1.0, -24));
  const uint16_t mant = static_cast<uint16_t>(a / std::ldexp(1.0, exp - 10)) - 1024;
  return sign | static_cast<uint16_t>((exp + 15) << 10) | mant;
}

float half_value(uint16_t h) {
  const int exp = (h >> 10) & 31, mant = h & 1023;
  float v;
  if (exp == 31) v = mant ? NAN : INFINITY;
  else if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else v = std::ldexp(static_cast<float>(mant + 1024), exp - 25);
  return (h & 0x8000) ? -v : v;
}

// ---------------------------------------------------------------- geometry
struct Geometry {
  uint8_t layout;
  uint64_t n_rows, row_len, c, p, numel;
  uint64_t flat(uint64_t r, uint64_t k) const {  // C-order index of row r, element k
    if (layout == kLayoutChannel) return r * p + k;
    return (r / p) * c * p + k * p + r % p;
  }
};

Result<Geometry> geometry(const uint32_t* dims, uint32_t ndim, uint8_t layout) {
  if (ndim < 1 || ndim > kMaxDims)
    return Status(StatusCode::kShapeMismatch, "tsq encodes tensors of 1..8 dims, got " + std::to_string(ndim));
  const uint64_t n = ndim >= 2 ? dims[0] : 1, c = ndim >= 2 ? dims[1] : dims[0];
  uint64_t p = 1;
  for (uint32_t i = 2; i < ndim; ++i) p *= dims[i];
  Geometry g{};
  g.c = c;
  g.p = p;
  g.numel = n * c * p;
  if (g.numel > UINT32_MAX) return Status(StatusCode::kShapeMismatch, "tsq tensor has over 2**32 - 1 values");
  if (layout == kLayoutChannel && p > 1) {
    g.layout = kLayoutChannel, g.n_rows = n * c, g.row_len = p;
  } else {
    g.layout = kLayoutPosition, g.n_rows = n * p, g.row_len = c;
  }
  return g;
}

void put_u32(uint8_t* d, uint32_t v) { std::memcpy(d, &v, 4); }  // little-endian hosts (checked in wire)
uint32_t get_u32(const uint8_t* d) { uint32_t v; std::memcpy(&v, d, 4); return v; }

// Per-row choice: the fewest allowed bits whose half-step is <= max_err.
struct Rows {
  std::vector<double> lo, hi, m, step;
  std::vector<uint8_t> code;
  void reset(uint64_t n) {  // assign() keeps the capacity: no allocation once warmed up
    lo.assign(n, INFINITY), hi.assign(n, -INFINITY), m.assign(n, 0.0), step.assign(n, 0.0), code.assign(n, 0);
  }
};

// Per-thread scratch reused across calls, so a device encoding the same cut shape
// request after request does no per-request heap allocation (only the first call,
// or a larger tensor, grows it). One encoder thread per cut is the expected use.
Rows& scratch_rows() {
  thread_local Rows rows;
  return rows;
}

void choose(const TsqParams& p, Rows* r) {
  const double max_err = p.max_err;
  for (size_t i = 0; i < r->lo.size(); ++i) {
    r->code[i] = kRowRaw;
    r->m[i] = 0.0;
    r->step[i] = 0.0;
    if (r->lo[i] < -kHalfMax) continue;
    const double m = half_down(r->lo[i]), span = r->hi[i] - m;
    r->m[i] = m;
    if (span <= max_err) { r->code[i] = 0; continue; }
    for (uint8_t j = 0; j < p.n_bits; ++j) {
      const double s = half_up(span / static_cast<double>((1u << p.bits[j]) - 1));
      if (s * 0.5 <= max_err) { r->code[i] = p.bits[j]; r->step[i] = s; break; }
    }
  }
}

}  // namespace

Result<TsqParams> tsq_parse_params(const uint8_t* d, size_t len) {
  if (len < kParamsSize) return malformed("params are " + std::to_string(len) + " bytes, need >= 16");
  if (d[0] != kTsqVersion)
    return Status(StatusCode::kVersionUnsupported, "tsq params version " + std::to_string(d[0]) +
                  " is not supported (reads 1); re-export the bundle or upgrade edgerun");
  TsqParams p;
  p.layout = d[1];
  p.n_bits = d[2];
  std::memcpy(&p.tau, d + 4, 4);
  std::memcpy(&p.max_err, d + 8, 4);
  std::memcpy(&p.budget, d + 12, 4);
  if (p.n_bits < 1 || p.n_bits > 8 || len != kParamsSize + p.n_bits) return malformed("params bit list length");
  if (p.layout > kLayoutChannel) return malformed("params layout " + std::to_string(p.layout));
  if (!(p.tau > 0) || !(p.max_err > 0) || std::isinf(p.max_err) || !(p.budget >= 0) || std::isinf(p.budget))
    return malformed("params tau/max_err/budget out of range");
  for (uint8_t i = 0; i < p.n_bits; ++i) {
    p.bits[i] = d[kParamsSize + i];
    if (p.bits[i] < 1 || p.bits[i] > 8 || (i > 0 && p.bits[i] <= p.bits[i - 1]))
      return malformed("params bits must be ascending distinct widths in 1..8");
  }
  return p;
}

Status tsq_encode(const float* x, const uint32_t* dims, uint32_t ndim, const TsqParams& p,
                  std::vector<uint8_t>* out) {
  ER_ASSIGN_OR_RETURN(const Geometry g, geometry(dims, ndim, p.layout));
  uint64_t n_sparse = 0, n_bad = 0;
  for (uint64_t f = 0; f < g.numel; ++f) {
    n_bad += !std::isfinite(x[f]);
    n_sparse += std::fabs(x[f]) > p.tau;
  }
  if (n_bad)
    return Status(StatusCode::kFrameNonFinite, "the activation holds " + std::to_string(n_bad) +
                  " NaN/Inf value(s); it is not sent. Check the model input and the front half");
  Rows& r = scratch_rows();
  r.reset(g.n_rows);
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    for (uint64_t k = 0; k < g.row_len; ++k) {
      const float v = x[g.flat(row, k)];
      if (std::fabs(v) > p.tau) continue;
      r.lo[row] = std::min(r.lo[row], static_cast<double>(v));
      r.hi[row] = std::max(r.hi[row], static_cast<double>(v));
    }
    if (r.lo[row] > r.hi[row]) r.lo[row] = r.hi[row] = 0.0;  // every value split off
  }
  choose(p, &r);
  uint64_t n_nonraw = 0, n_quant = 0, n_raw = 0, n_bits = 0;
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const uint8_t c = r.code[row];
    n_raw += c == kRowRaw;
    n_nonraw += c != kRowRaw;
    n_quant += c >= 1 && c <= 8;
    if (c >= 1 && c <= 8) n_bits += c * g.row_len;
  }
  const uint32_t iw = g.numel <= 65536 ? 2 : 4;
  const size_t size = kHeaderSize + (g.n_rows + 1) / 2 + 2 * (n_nonraw + n_quant) + (iw + 4) * n_sparse +
                      4 * n_raw * g.row_len + (n_bits + 7) / 8;
  out->assign(size, 0);
  uint8_t* d = out->data();
  d[0] = kTsqVersion, d[1] = g.layout, d[2] = static_cast<uint8_t>(iw), d[3] = 0;
  put_u32(d + 4, static_cast<uint32_t>(g.n_rows));
  put_u32(d + 8, static_cast<uint32_t>(g.row_len));
  put_u32(d + 12, static_cast<uint32_t>(n_sparse));
  uint8_t* w = d + kHeaderSize;
  for (uint64_t row = 0; row < g.n_rows; ++row) w[row / 2] |= r.code[row] << (4 * (row & 1));
  w += (g.n_rows + 1) / 2;
  for (uint64_t row = 0; row < g.n_rows; ++row)
    if (r.code[row] != kRowRaw) { const uint16_t h = half_bits(r.m[row]); std::memcpy(w, &h, 2); w += 2; }
  for (uint64_t row = 0; row < g.n_rows; ++row)
    if (r.code[row] >= 1 && r.code[row] <= 8) { const uint16_t h = half_bits(r.step[row]); std::memcpy(w, &h, 2); w += 2; }
  uint8_t* vals = w + iw * n_sparse;
  for (uint64_t f = 0; f < g.numel; ++f) {
    if (!(std::fabs(x[f]) > p.tau)) continue;
    const uint32_t i32 = static_cast<uint32_t>(f);
    const uint16_t i16 = static_cast<uint16_t>(f);
    std::memcpy(w, iw == 2 ? static_cast<const void*>(&i16) : static_cast<const void*>(&i32), iw);
    std::memcpy(vals, &x[f], 4);
    w += iw, vals += 4;
  }
  w = vals;
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    if (r.code[row] != kRowRaw) continue;
    for (uint64_t k = 0; k < g.row_len; ++k, w += 4) {
      const float v = x[g.flat(row, k)];
      const float keep = std::fabs(v) > p.tau ? 0.0f : v;
      std::memcpy(w, &keep, 4);
    }
  }
  uint64_t bitpos = 0;  // LSB-first stream, rows back to back
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const uint8_t b = r.code[row];
    if (b < 1 || b > 8) continue;
    const double m = r.m[row], s = r.step[row], maxq = static_cast<double>((1u << b) - 1);
    for (uint64_t k = 0; k < g.row_len; ++k, bitpos += b) {
      const float v = x[g.flat(row, k)];
      double q = 0.0;
      if (!(std::fabs(v) > p.tau)) q = std::min(std::max(std::nearbyint((static_cast<double>(v) - m) / s), 0.0), maxq);
      const uint32_t qi = static_cast<uint32_t>(q) << (bitpos & 7);
      w[bitpos >> 3] |= static_cast<uint8_t>(qi);
      if ((bitpos & 7) + b > 8) w[(bitpos >> 3) + 1] |= static_cast<uint8_t>(qi >> 8);
    }
  }
  ER_ASSERT(w + (n_bits + 7) / 8 == d + size);
  return Status::Ok();
}

Status tsq_decode(const uint8_t* d, size_t len, const uint32_t* dims, uint32_t ndim, const TsqParams& p,
                  float* out) {
  ER_ASSIGN_OR_RETURN(const Geometry g, geometry(dims, ndim, p.layout));
  if (len < kHeaderSize)
    return Status(StatusCode::kFrameTruncated, "tsq payload is " + std::to_string(len) + " bytes, under its 16-byte header");
  if (d[0] != kTsqVersion)
    return Status(StatusCode::kVersionUnsupported, "tsq payload version " + std::to_string(d[0]) + " is not supported (reads 1)");
  const uint32_t iw = g.numel <= 65536 ? 2 : 4, n_sparse = get_u32(d + 12);
  if (d[1] != g.layout || d[2] != iw || d[3] != 0 || get_u32(d + 4) != g.n_rows || get_u32(d + 8) != g.row_len)
    return malformed("header does not match the tensor's shape and params");
  if (n_sparse > g.numel) return malformed("more split values than elements");
  const uint64_t code_bytes = (g.n_rows + 1) / 2;
  if (len < kHeaderSize + code_bytes) return Status(StatusCode::kFrameTruncated, "tsq payload truncated in its row codes");
  const uint8_t* codes = d + kHeaderSize;
  bool allowed[16] = {};
  allowed[0] = allowed[kRowRaw] = true;
  for (uint8_t i = 0; i < p.n_bits; ++i) allowed[p.bits[i]] = true;
  if ((g.n_rows & 1) && (codes[code_bytes - 1] >> 4)) return malformed("padding nibble is not zero");
  uint64_t n_nonraw = 0, n_quant = 0, n_raw = 0, n_bits = 0;
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const uint8_t c = (codes[row / 2] >> (4 * (row & 1))) & 15;
    if (!allowed[c]) return malformed("row bit code " + std::to_string(c) + " is not an allowed width");
    n_raw += c == kRowRaw;
    n_nonraw += c != kRowRaw;
    if (c >= 1 && c <= 8) ++n_quant, n_bits += c * g.row_len;
  }
  const uint64_t want = kHeaderSize + code_bytes + 2 * (n_nonraw + n_quant) + uint64_t(iw + 4) * n_sparse +
                        4 * n_raw * g.row_len + (n_bits + 7) / 8;
  if (len < want) return Status(StatusCode::kFrameTruncated, "tsq payload is " + std::to_string(len) +
                                " bytes, its header needs " + std::to_string(want));
  if (len > want) return malformed(std::to_string(len - want) + " trailing bytes");
  const uint8_t* mins = codes + code_bytes;
  const uint8_t* steps = mins + 2 * n_nonraw;
  const uint8_t* idx = steps + 2 * n_quant;
  const uint8_t* vals = idx + iw * n_sparse;
  const uint8_t* raws = vals + 4 * n_sparse;
  const uint8_t* stream = raws + 4 * n_raw * g.row_len;
  uint64_t bitpos = 0;
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const uint8_t c = (codes[row / 2] >> (4 * (row & 1))) & 15;
    if (c == kRowRaw) {
      for (uint64_t k = 0; k < g.row_len; ++k, raws += 4) {
        float v;
        std::memcpy(&v, raws, 4);
        if (!std::isfinite(v)) return malformed("a raw value is not finite");
        out[g.flat(row, k)] = v;
      }
      continue;
    }
    uint16_t hm, hs = 0;
    std::memcpy(&hm, mins, 2), mins += 2;
    if (c != 0) std::memcpy(&hs, steps, 2), steps += 2;
    const float m = half_value(hm), s = half_value(hs);
    if (!std::isfinite(m) || !std::isfinite(s) || s < 0) return malformed("a row minimum or step is not finite");
    const uint32_t mask = (1u << c) - 1;
    for (uint64_t k = 0; k < g.row_len; ++k) {
      uint32_t q = 0;
      if (c != 0) {
        const uint64_t at = bitpos >> 3;
        uint32_t two = stream[at];
        if ((bitpos & 7) + c > 8) two |= uint32_t(stream[at + 1]) << 8;
        q = (two >> (bitpos & 7)) & mask;
        bitpos += c;
      }
      const float t = static_cast<float>(q) * s;
      out[g.flat(row, k)] = m + t;
    }
  }
  uint64_t prev = 0;
  for (uint32_t i = 0; i < n_sparse; ++i) {
    uint32_t f = 0;
    float v;
    std::memcpy(&f, idx + uint64_t(i) * iw, iw);  // little-endian: a u16 fills the low bytes
    std::memcpy(&v, vals + uint64_t(i) * 4, 4);
    if (f >= g.numel || (i > 0 && f <= prev)) return malformed("split indices out of range or not increasing");
    if (!std::isfinite(v)) return malformed("a split value is not finite");
    out[f] = v;
    prev = f;
  }
  return Status::Ok();
}

}  // namespace codec
}  // namespace edgerun
