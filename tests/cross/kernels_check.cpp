// Cross-architecture check of the int8 kernels (and the frame checksum): runs conv2d_s8 (1x1 and 3x3,
// fused ReLU6, odd shapes) and the int4/int8 dequantization on fixed pseudo-random
// data and prints the kernel path and an FNV-1a hash of every output's bytes.
// The int8 paths promise bit-identical outputs (exact int32 sums, one fixed
// epilogue order), so the hashes must be equal on x86 (AVX-512 VNNI / AVX2 /
// portable) and on aarch64 (NEON / portable, run under qemu-aarch64).
// Built and run by tests/runtime/test_cross_neon.py; no Python in here.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "edgerun/crc32.h"
#include "edgerun/kernels.h"

using namespace edgerun;
using namespace edgerun::kernels;

namespace {

uint64_t fnv(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

struct Rng {  // xorshift64*: the same stream on every platform
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint64_t next() {
    s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(next() >> 40) / float(1 << 24); }
};

// One int8 conv case: weights int8 per row, scales, row sums; output hash.
uint64_t conv_case(int64_t cin, int64_t cout, int64_t h, int64_t w, int64_t k, int64_t stride,
                   Rng& rng) {
  ConvParams p{};
  p.cin = cin; p.h = h; p.w = w; p.cout = cout;
  p.kh = p.kw = k; p.sh = p.sw = stride; p.dh = p.dw = 1;
  p.pt = p.pl = k / 2; p.group = 1;
  p.oh = (h + 2 * p.pt - k) / stride + 1;
  p.ow = (w + 2 * p.pl - k) / stride + 1;
  p.act = Act::kClip; p.lo = 0.f; p.hi = 6.f;
  const int64_t K = cin * k * k, kp = s8_row_bytes(K);
  std::vector<int8_t> wq(size_t(cout * kp), 0);
  std::vector<float> scale(static_cast<size_t>(cout)), bias(static_cast<size_t>(cout));
  std::vector<int32_t> wsum(static_cast<size_t>(cout), 0);
  for (int64_t r = 0; r < cout; ++r) {
    for (int64_t j = 0; j < K; ++j) {
      wq[size_t(r * kp + j)] = int8_t(int(rng.next() % 255) - 127);
      wsum[size_t(r)] += wq[size_t(r * kp + j)];
    }
    scale[size_t(r)] = rng.uniform(1e-3f, 2e-2f);
    bias[size_t(r)] = rng.uniform(-1.f, 1.f);
  }
  std::vector<float> x(size_t(cin * h * w));
  for (float& v : x) v = rng.uniform(-3.f, 5.f);
  x[3] = 0.f;  // a constant-ish pixel column and exact zeros
  const S8Weights sw{wq.data(), cout, K, kp, scale.data(), wsum.data()};
  std::vector<float> y(size_t(cout * p.oh * p.ow));
  std::vector<float> scratch(conv2d_s8_scratch_floats(p, 1));
  conv2d_s8(p, 1, x.data(), sw, bias.data(), y.data(), scratch.data(), 1);
  return fnv(y.data(), y.size() * sizeof(float));
}

uint64_t dequant_case(DType dt, int64_t rows, int64_t k, int64_t group, Rng& rng) {
  const int64_t row_bytes = dt == DType::kInt8 ? k : (k + 1) / 2;
  const int64_t groups = dt == DType::kInt8 ? 1 : (k + group - 1) / group;
  std::vector<uint8_t> data(size_t(rows * row_bytes));
  for (uint8_t& b : data) b = uint8_t(rng.next());
  std::vector<float> scales(size_t(rows * groups));
  for (float& s : scales) s = rng.uniform(1e-3f, 1e-1f);
  const QuantWeight q{dt, rows, k, group, row_bytes, data.data(), scales.data()};
  std::vector<float> out(size_t(rows * k));
  dequantize_rows(q, 0, rows, out.data(), false);
  return fnv(out.data(), out.size() * sizeof(float));
}

// The frame checksum on every length 0..299 and a frame-sized buffer, chained: the
// hardware paths (PCLMULQDQ on x86-64, crc32x on aarch64) and the tables must agree.
uint32_t crc_case(Rng& rng) {
  std::vector<uint8_t> buf(62800);
  for (auto& b : buf) b = uint8_t(rng.next() >> 56);
  uint32_t c = 0;
  for (size_t n = 0; n < 300; ++n) c = crc32(buf.data() + n % 7, n, c);
  return crc32(buf.data(), buf.size(), c);
}

}  // namespace

int main() {
  Rng rng;
  std::printf("path %s\n", qgemm_path());
  std::printf("crcpath %s\n", crc32_path());
  std::printf("conv1x1 %016llx\n", (unsigned long long)conv_case(48, 37, 9, 13, 1, 1, rng));
  std::printf("conv1x1b %016llx\n", (unsigned long long)conv_case(64, 96, 14, 14, 1, 1, rng));
  std::printf("conv3x3s2 %016llx\n", (unsigned long long)conv_case(16, 21, 11, 17, 3, 2, rng));
  std::printf("dequant8 %016llx\n", (unsigned long long)dequant_case(DType::kInt8, 7, 45, 0, rng));
  std::printf("dequant4 %016llx\n", (unsigned long long)dequant_case(DType::kInt4, 7, 45, 16, rng));
  std::printf("crc32 %08x\n", crc_case(rng));
  return 0;
}
