// codec "tsq": threshold splitting + token-wise adaptive bit quantization.
//
// Mirrors the Python reference edgerun/codec.py operation for operation (same
// double-precision arithmetic, same exact fp16 rounding), so both encoders
// write the same bytes. Layouts: CODEC.md.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "edgerun/codec.h"
#include "edgerun/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// The frame's checksum held, so the sender wrote it this short: say so, as malformed() does.
Status truncated(const std::string& what) {
  return Status(StatusCode::kFrameTruncated,
                "tsq payload is truncated: " + what + "; drop this frame (sender bug or corruption)");
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
struct Scratch {
  Rows rows;
  std::vector<uint32_t> sparse;  // flat indices of the split-off values, in order
  std::vector<float> row;        // one gathered row (position layout)
  std::vector<uint8_t> q;        // one row's q values
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Row `row`'s values in order: in place for the channel layout (a channel's map is
// contiguous), gathered into buf (row_len floats) for the position layout.
const float* row_values(const Geometry& g, const float* x, uint64_t row, float* buf) {
  if (g.layout == kLayoutChannel) return x + row * g.p;
  for (uint64_t k = 0; k < g.row_len; ++k) buf[k] = x[g.flat(row, k)];
  return buf;
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

// ---------------------------------------------------------------- dense values -> q
// q = min(max(nearbyint((double(v) - m) / s), 0), maxq) for |v| <= tau, 0 for the split-off
// values: the reference's operations (IEEE double division, round half to even), so every
// path writes the same q. m <= every dense v, so the quotient is >= 0 (and <= ~2^8).
double round_half_even(double y) {  // y >= 0; nearbyint in the default rounding mode, inline
  constexpr double kTwo52 = 4503599627370496.0;
  return y < kTwo52 ? (y + kTwo52) - kTwo52 : y;
}

void quantize_row_scalar(const float* v, uint64_t n, float tau, double m, double s, double maxq,
                         uint8_t* q) {
  for (uint64_t k = 0; k < n; ++k) {
    const double y = std::min(std::max(round_half_even((static_cast<double>(v[k]) - m) / s), 0.0), maxq);
    q[k] = std::fabs(v[k]) > tau ? 0 : static_cast<uint8_t>(y);
  }
}

#if defined(__x86_64__)
// Four values per step: the division is most of the encoder's time (~4 cycles each, scalar).
__attribute__((target("avx2"))) void quantize_row_avx2(const float* v, uint64_t n, float tau, double m,
                                                       double s, double maxq, uint8_t* q) {
  const __m256d vm = _mm256_set1_pd(m), vs = _mm256_set1_pd(s), vmax = _mm256_set1_pd(maxq);
  const __m256d zero = _mm256_setzero_pd();
  const __m128 vtau = _mm_set1_ps(tau), abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  uint64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const __m128 f = _mm_loadu_ps(v + k);
    const __m128i split = _mm_castps_si128(_mm_cmp_ps(_mm_and_ps(f, abs_mask), vtau, _CMP_GT_OQ));
    __m256d y = _mm256_div_pd(_mm256_sub_pd(_mm256_cvtps_pd(f), vm), vs);
    y = _mm256_round_pd(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    y = _mm256_min_pd(_mm256_max_pd(y, zero), vmax);
    __m128i qi = _mm_andnot_si128(split, _mm256_cvttpd_epi32(y));
    qi = _mm_packus_epi16(_mm_packus_epi32(qi, qi), qi);
    const int32_t four = _mm_cvtsi128_si32(qi);
    std::memcpy(q + k, &four, 4);
  }
  quantize_row_scalar(v + k, n - k, tau, m, s, maxq, q + k);
}
#endif

void quantize_row(const float* v, uint64_t n, float tau, double m, double s, double maxq, uint8_t* q) {
#if defined(__x86_64__)
  if (kernels::has_avx2_fma()) return quantize_row_avx2(v, n, tau, m, s, maxq, q);
#endif
  quantize_row_scalar(v, n, tau, m, s, maxq, q);
}

// LSB-first bit stream into a zeroed buffer, 32 bits at a time.
struct BitWriter {
  uint8_t* d;
  uint64_t acc = 0;
  int fill = 0;
  void put(uint32_t q, int b) {
    acc |= static_cast<uint64_t>(q) << fill;
    fill += b;
    if (fill >= 32) {
      put_u32(d, static_cast<uint32_t>(acc));
      d += 4, acc >>= 32, fill -= 32;
    }
  }
  uint8_t* finish() {
    for (; fill > 0; fill -= 8, acc >>= 8) *d++ = static_cast<uint8_t>(acc);
    return d;
  }
};

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
  Scratch& sc = scratch();
  sc.sparse.resize(g.numel);
  // Plain pointers into the thread_local scratch: in the Python extension every use of a
  // thread_local reference inside a loop was a __tls_get_addr call (12 % of the encoder).
  uint32_t* const sp = sc.sparse.data();
  for (uint64_t f = 0; f < g.numel; ++f) {  // branch-free: the split-off values are few
    const float a = std::fabs(x[f]);
    n_bad += !(a <= FLT_MAX);  // NaN or Inf
    sp[n_sparse] = static_cast<uint32_t>(f);
    n_sparse += a > p.tau;
  }
  if (n_bad)
    return Status(StatusCode::kFrameNonFinite, "the activation holds " + std::to_string(n_bad) +
                  " NaN/Inf value(s); it is not sent. Check the model input and the front half");
  Rows& r = sc.rows;
  r.reset(g.n_rows);
  sc.row.resize(g.layout == kLayoutChannel ? 0 : g.row_len);
  float* const bufp = sc.row.data();
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const float* v = row_values(g, x, row, bufp);
    // Four independent min / max chains in registers (a float's min / max is exact; which
    // of +0 / -0 wins changes no byte: m = half_down(lo) is +0 for both, span too).
    float l0 = INFINITY, l1 = INFINITY, l2 = INFINITY, l3 = INFINITY;
    float h0 = -INFINITY, h1 = -INFINITY, h2 = -INFINITY, h3 = -INFINITY;
    const auto see = [tau = p.tau](float x, float& lo, float& hi) {
      const bool dense = !(std::fabs(x) > tau);
      lo = dense && x < lo ? x : lo;
      hi = dense && x > hi ? x : hi;
    };
    uint64_t k = 0;
    for (; k + 4 <= g.row_len; k += 4)
      see(v[k], l0, h0), see(v[k + 1], l1, h1), see(v[k + 2], l2, h2), see(v[k + 3], l3, h3);
    for (; k < g.row_len; ++k) see(v[k], l0, h0);
    float lo = std::min(std::min(l0, l1), std::min(l2, l3));
    float hi = std::max(std::max(h0, h1), std::max(h2, h3));
    if (lo > hi) lo = hi = 0.0f;  // every value split off
    r.lo[row] = lo, r.hi[row] = hi;
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
  for (uint64_t i = 0; i < n_sparse; ++i) {
    const uint32_t i32 = sp[i];
    const uint16_t i16 = static_cast<uint16_t>(i32);
    std::memcpy(w, iw == 2 ? static_cast<const void*>(&i16) : static_cast<const void*>(&i32), iw);
    std::memcpy(vals, &x[i32], 4);
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
  BitWriter bits{w};  // LSB-first stream, rows back to back
  sc.q.resize(g.row_len);
  uint8_t* const qp = sc.q.data();
  for (uint64_t row = 0; row < g.n_rows; ++row) {
    const uint8_t b = r.code[row];
    if (b < 1 || b > 8) continue;
    quantize_row(row_values(g, x, row, bufp), g.row_len, p.tau, r.m[row], r.step[row],
                 static_cast<double>((1u << b) - 1), qp);
    for (uint64_t k = 0; k < g.row_len; ++k) bits.put(qp[k], b);
  }
  ER_ASSERT(bits.finish() == d + size);
  return Status::Ok();
}

Status tsq_decode(const uint8_t* d, size_t len, const uint32_t* dims, uint32_t ndim, const TsqParams& p,
                  float* out) {
  ER_ASSIGN_OR_RETURN(const Geometry g, geometry(dims, ndim, p.layout));
  if (len < kHeaderSize)
    return truncated(std::to_string(len) + " bytes, under its 16-byte header");
  if (d[0] != kTsqVersion)
    return Status(StatusCode::kVersionUnsupported, "tsq payload version " + std::to_string(d[0]) + " is not supported (reads 1)");
  const uint32_t iw = g.numel <= 65536 ? 2 : 4, n_sparse = get_u32(d + 12);
  if (d[1] != g.layout || d[2] != iw || d[3] != 0 || get_u32(d + 4) != g.n_rows || get_u32(d + 8) != g.row_len)
    return malformed("header does not match the tensor's shape and params");
  if (n_sparse > g.numel) return malformed("more split values than elements");
  const uint64_t code_bytes = (g.n_rows + 1) / 2;
  if (len < kHeaderSize + code_bytes) return truncated("it ends in its row codes");
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
  if (len < want) return truncated(std::to_string(len) + " bytes, its header needs " + std::to_string(want));
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
