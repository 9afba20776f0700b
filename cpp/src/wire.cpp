// Wire frame v1: encoder and validating decoder (layout in WIRE.md).
//
// Every length read from the network is checked against the bytes that are
// actually left before it is used, so a hostile frame can neither make us read
// out of bounds nor allocate: decode never allocates at all.
#include "edgerun/wire.h"

#include <cstdint>
#include <cstring>
#include <string>

namespace edgerun {
namespace wire {
namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "wire.cpp copies payloads as host-order values; the format is little-endian"
#endif

// ---- little-endian field access (byte-wise: no alignment assumptions) -------
uint64_t rd(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void wr(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

Status fail(StatusCode code, const std::string& msg) { return Status(code, msg); }

// ---- UTF-8 (strict, like Python's decoder: no overlongs, no surrogates) ----
bool is_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return false;
    if (n - i < len) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return false;
    i += len;
  }
  return true;
}

// ---- JSON (RFC 8259) validator: accepts exactly what Python's json.loads
// accepts with NaN/Infinity refused, so both sides agree on every meta. ------
class JsonCheck {
 public:
  JsonCheck(const uint8_t* s, size_t n) : s_(s), n_(n) {}
  bool object_document() {
    ws();
    if (i_ >= n_ || s_[i_] != '{') return false;
    if (!value(0)) return false;
    ws();
    return i_ == n_;
  }

 private:
  bool at(char c) const { return i_ < n_ && s_[i_] == static_cast<uint8_t>(c); }
  bool eat(char c) { if (!at(c)) return false; ++i_; return true; }
  void ws() { while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_; }
  bool digit() const { return i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9'; }
  bool digits() { if (!digit()) return false; while (digit()) ++i_; return true; }
  bool hex() {
    if (i_ >= n_) return false;
    uint8_t c = s_[i_++];
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  bool literal(const char* w) {
    size_t k = std::strlen(w);
    if (n_ - i_ < k || std::memcmp(s_ + i_, w, k) != 0) return false;
    i_ += k;
    return true;
  }
  bool string() {
    if (!eat('"')) return false;
    while (i_ < n_) {
      uint8_t c = s_[i_++];
      if (c == '"') return true;
      if (c < 0x20) return false;  // control characters must be escaped
      if (c != '\\') continue;
      if (i_ >= n_) return false;
      uint8_t e = s_[i_++];
      if (e == 'u') { for (int k = 0; k < 4; ++k) if (!hex()) return false; continue; }
      if (!std::strchr("\"\\/bfnrt", e) || e == 0) return false;
    }
    return false;
  }
  bool number() {
    eat('-');
    if (eat('0')) {
    } else if (!digits()) {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (at('e') || at('E')) {
      ++i_;
      if (!eat('+')) eat('-');
      if (!digits()) return false;
    }
    return true;
  }
  bool members(int depth, char close, bool keyed) {
    ws();
    if (eat(close)) return true;
    for (;;) {
      ws();
      if (keyed) {
        if (!string()) return false;
        ws();
        if (!eat(':')) return false;
        ws();
      }
      if (!value(depth + 1)) return false;
      ws();
      if (eat(close)) return true;
      if (!eat(',')) return false;
    }
  }
  bool value(int depth) {
    if (i_ >= n_) return false;
    switch (s_[i_]) {
      case '{': if (depth >= kMaxMetaDepth) return false; ++i_; return members(depth, '}', true);
      case '[': if (depth >= kMaxMetaDepth) return false; ++i_; return members(depth, ']', false);
      case '"': return string();
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  const uint8_t* s_;
  size_t n_;
  size_t i_ = 0;
};

// prod(dims) * itemsize, or false when it does not fit in 64 bits (then it
// cannot equal any real payload length).
bool raw_size(const TensorView& t, size_t itemsize, uint64_t* out) {
  uint64_t prod = itemsize;
  for (uint32_t k = 0; k < t.ndim; ++k) if (t.dims[k] == 0) { *out = 0; return true; }
  for (uint32_t k = 0; k < t.ndim; ++k) {
    if (prod > UINT64_MAX / t.dims[k]) return false;
    prod *= t.dims[k];
  }
  *out = prod;
  return true;
}

// numpy's bound on any array, zero dims counted as 1 (it refuses np.empty((0, 2**32-1, 2**32-1, 2**32-1))):
// a tensor over it cannot be read into an array, and readers raised a bare ValueError, not a frame error.
bool fits_an_array(const TensorView& t, size_t itemsize) {
  uint64_t prod = itemsize;
  for (uint32_t k = 0; k < t.ndim; ++k) {
    const uint64_t d = t.dims[k] ? t.dims[k] : 1;
    if (prod > static_cast<uint64_t>(INT64_MAX) / d) return false;
    prod *= d;
  }
  return true;
}

// The checks a tensor must pass on both sides (encode and decode).
Status check_tensor(const TensorView& t, uint32_t i, StatusCode bad) {
  const std::string at = "tensor " + std::to_string(i) + ": ";
  if (t.codec != static_cast<uint8_t>(Codec::kRaw) && t.codec != static_cast<uint8_t>(Codec::kTsq))
    return fail(kUnsupportedCodec, at + "codec " + std::to_string(t.codec) +
                " is not supported by this edgerun (it knows 0 = raw, 1 = tsq); upgrade edgerun on this side");
  const size_t itemsize = dtype_size(t.dtype);
  if (itemsize == 0)
    return fail(bad, at + "unknown dtype code " + std::to_string(t.dtype) +
                " (known: 1 float32, 2 float16, 3 int8, 4 uint8, 5 int32, 6 int64)");
  if (!fits_an_array(t, itemsize))
    return fail(bad, at + "its dims (zeros counted as 1) make over 2**63 - 1 bytes, more than any array holds; "
                "the sender built a bad frame");
  if (t.codec == static_cast<uint8_t>(Codec::kTsq)) {
    // The codec validates its own params and payload when it decodes them.
    if (t.params_len == 0) return fail(bad, at + "tsq codec needs its parameters but params_len is 0");
    return Status::Ok();
  }
  if (t.params_len != 0)
    return fail(bad, at + "raw codec takes no parameters but params_len is " + std::to_string(t.params_len));
  uint64_t want = 0;
  if (!raw_size(t, itemsize, &want) || want != t.payload_len)
    return fail(bad, at + "payload is " + std::to_string(t.payload_len) +
                " bytes but its shape and dtype need prod(dims) * itemsize bytes; the sender built a bad frame");
  return Status::Ok();
}

// Parses tensor record i at buf[*pos, end); advances *pos past it.
Status decode_record(const uint8_t* buf, size_t* pos, size_t end, uint32_t i, TensorView* t) {
  const std::string at = "tensor record " + std::to_string(i);
  const Status cut = fail(StatusCode::kFrameTruncated,
                          at + " runs past the end of the frame: the frame was cut or its lengths are wrong; resend it");
  size_t p = *pos;
  if (end - p < kRecordHeadSize) return cut;
  t->codec = buf[p];
  t->dtype = buf[p + 1];
  t->ndim = buf[p + 2];
  const uint8_t reserved = buf[p + 3];
  t->params_len = static_cast<uint32_t>(rd(buf + p + 4, 4));
  p += kRecordHeadSize;
  if (t->ndim > kMaxDims)
    return fail(StatusCode::kFrameMalformed, at + " has " + std::to_string(t->ndim) + " dims (at most 8)");
  if (reserved != 0) return fail(StatusCode::kFrameMalformed, at + ": reserved byte is not zero");
  if (end - p < 4u * t->ndim) return cut;
  for (uint32_t k = 0; k < t->ndim; ++k, p += 4) t->dims[k] = static_cast<uint32_t>(rd(buf + p, 4));
  if (end - p < t->params_len) return cut;
  t->params = buf + p;
  p += t->params_len;
  if (end - p < 8) return cut;
  t->payload_len = rd(buf + p, 8);
  p += 8;
  if (t->payload_len > end - p) return cut;  // before any use of the length
  t->payload = buf + p;
  p += static_cast<size_t>(t->payload_len);
  ER_RETURN_IF_ERROR(check_tensor(*t, i, StatusCode::kFrameMalformed));
  *pos = p;
  return Status::Ok();
}

Status decode_header(const uint8_t* buf, size_t len, size_t max_bytes, DecodedFrame* f) {
  if (len < kMinFrameSize)
    return fail(StatusCode::kFrameTruncated, "frame is " + std::to_string(len) +
                " bytes, shorter than the 48-byte minimum of a wire frame: it was cut; resend it");
  if (len > max_bytes)
    return fail(StatusCode::kFrameTooLarge, "frame is " + std::to_string(len) + " bytes, over this side's limit of " +
                std::to_string(max_bytes) + " bytes: send smaller tensors or raise max_frame_bytes on the receiver");
  if (std::memcmp(buf, kMagic, 4) != 0)
    return fail(StatusCode::kFrameBadMagic,
                "not an edgerun wire frame (magic is not ERWF): check what publishes on this topic");
  f->version = static_cast<uint16_t>(rd(buf + 4, 2));
  if (f->version != kVersion)
    return fail(StatusCode::kFrameBadVersion, "wire frame version " + std::to_string(f->version) +
                " is not supported: this reader accepts version 1 only; upgrade edgerun so device and server speak the same version");
  const uint32_t want = static_cast<uint32_t>(rd(buf + len - kCrcSize, 4));
  if (crc32(buf, len - kCrcSize) != want)
    return fail(StatusCode::kFrameBadChecksum, "frame checksum mismatch: the frame was corrupted in transit; resend it");
  FrameHeader& h = f->header;
  h.kind = buf[6];
  h.flags = buf[7];
  h.request_id = rd(buf + 8, 8);
  h.seq = static_cast<uint32_t>(rd(buf + 16, 4));
  std::memcpy(h.bundle_hash, buf + 20, kBundleHashSize);
  if (h.kind < 1 || h.kind > 3)
    return fail(StatusCode::kFrameMalformed, "unknown frame kind " + std::to_string(h.kind) +
                " (known: 1 request, 2 reply, 3 error); upgrade edgerun on this side");
  if (h.flags != 0 || buf[41] != 0 || buf[42] != 0 || buf[43] != 0)
    return fail(StatusCode::kFrameMalformed, "reserved header bytes are not zero: the sender is not a v1 writer");
  return Status::Ok();
}

}  // namespace

size_t dtype_size(uint8_t dtype) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kInt8: return 1;
    case DType::kUInt8: return 1;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

const char* code_name(StatusCode code) {
  switch (static_cast<uint32_t>(code)) {
    case 0x0300: return "truncated";
    case 0x0301: return "bad_magic";
    case 0x0302: return "bad_version";
    case 0x0303: return "bad_checksum";
    case 0x0304: return "too_large";
    case 0x0305: return "malformed";
    case 0x0306: return "non_finite";
    case 0x0307: return "unsupported_codec";
    case 0x0308: return "wrong_bundle";
  }
  return "internal";
}

bool is_json_object(const uint8_t* data, size_t n) {
  if (n > 0 && data == nullptr) return false;
  return is_utf8(data, n) && JsonCheck(data, n).object_document();
}

size_t encoded_size(uint32_t meta_len, const TensorView* tensors, uint32_t n_tensors) {
  // Saturating: a size that does not fit is refused by encode_into's capacity check.
  size_t total = kMinFrameSize + meta_len;
  for (uint32_t i = 0; i < n_tensors; ++i) {
    const TensorView& t = tensors[i];
    const uint64_t rec = kRecordHeadSize + 4ull * t.ndim + t.params_len + 8ull;
    if (t.payload_len > SIZE_MAX - rec || total > SIZE_MAX - rec - t.payload_len) return SIZE_MAX;
    total += static_cast<size_t>(rec + t.payload_len);
  }
  return total;
}

Status encode_into(const FrameHeader& h, const uint8_t* meta, uint32_t meta_len,
                   const TensorView* tensors, uint32_t n_tensors,
                   uint8_t* out, size_t out_cap, size_t* written) {
  const StatusCode bad = StatusCode::kInvalidArgument;
  if (written == nullptr || (out == nullptr && out_cap > 0)) return fail(bad, "encode_into: null output pointer");
  if (h.kind < 1 || h.kind > 3) return fail(bad, "frame kind must be 1 request, 2 reply or 3 error, got " + std::to_string(h.kind));
  if (h.flags != 0) return fail(bad, "frame flags are reserved in v1 and must be 0");
  if (meta_len > 0 && !is_json_object(meta, meta_len))
    return fail(bad, "meta must be a UTF-8 JSON object (encode it compact with sorted keys)");
  if (n_tensors > kMaxTensors || (n_tensors > 0 && tensors == nullptr))
    return fail(bad, "a frame carries at most 16 tensors, got " + std::to_string(n_tensors));
  for (uint32_t i = 0; i < n_tensors; ++i) {
    const TensorView& t = tensors[i];
    if (t.ndim > kMaxDims) return fail(bad, "tensor " + std::to_string(i) + " has more than 8 dims");
    if ((t.payload == nullptr && t.payload_len > 0) || (t.params == nullptr && t.params_len > 0))
      return fail(bad, "tensor " + std::to_string(i) + ": null data pointer");
    ER_RETURN_IF_ERROR(check_tensor(t, i, bad));
  }
  const size_t size = encoded_size(meta_len, tensors, n_tensors);
  if (size > out_cap)
    return fail(bad, "output buffer holds " + std::to_string(out_cap) + " bytes but the frame needs " +
                std::to_string(size) + ": size it with encoded_size()");
  std::memcpy(out, kMagic, 4);
  wr(out + 4, kVersion, 2);
  out[6] = h.kind;
  out[7] = h.flags;
  wr(out + 8, h.request_id, 8);
  wr(out + 16, h.seq, 4);
  std::memcpy(out + 20, h.bundle_hash, kBundleHashSize);
  wr(out + 36, meta_len, 4);
  out[40] = static_cast<uint8_t>(n_tensors);
  out[41] = out[42] = out[43] = 0;
  size_t p = kHeaderSize;
  if (meta_len > 0) std::memcpy(out + p, meta, meta_len);
  p += meta_len;
  for (uint32_t i = 0; i < n_tensors; ++i) {
    const TensorView& t = tensors[i];
    out[p] = t.codec; out[p + 1] = t.dtype; out[p + 2] = t.ndim; out[p + 3] = 0;
    wr(out + p + 4, t.params_len, 4);
    p += kRecordHeadSize;
    for (uint32_t k = 0; k < t.ndim; ++k, p += 4) wr(out + p, t.dims[k], 4);
    if (t.params_len > 0) std::memcpy(out + p, t.params, t.params_len);
    p += t.params_len;
    wr(out + p, t.payload_len, 8);
    p += 8;
    if (t.payload_len > 0) std::memcpy(out + p, t.payload, static_cast<size_t>(t.payload_len));
    p += static_cast<size_t>(t.payload_len);
  }
  wr(out + p, crc32(out, p), 4);
  p += kCrcSize;
  ER_ASSERT(p == size);
  *written = size;
  return Status::Ok();
}

Result<DecodedFrame> decode(const uint8_t* buf, size_t len, size_t max_bytes) {
  DecodedFrame f;
  if (buf == nullptr && len > 0) return fail(StatusCode::kInvalidArgument, "decode: null buffer");
  ER_RETURN_IF_ERROR(decode_header(buf, len, max_bytes, &f));
  const size_t end = len - kCrcSize;
  size_t pos = kHeaderSize;
  f.meta_len = static_cast<uint32_t>(rd(buf + 36, 4));
  if (f.meta_len > end - pos)
    return fail(StatusCode::kFrameTruncated, "meta length " + std::to_string(f.meta_len) +
                " runs past the end of the frame: the frame was cut or its lengths are wrong; resend it");
  f.meta = buf + pos;
  if (f.meta_len > 0 && !is_json_object(f.meta, f.meta_len))
    return fail(StatusCode::kFrameMalformed, "frame meta is not a UTF-8 JSON object: the sender built a bad frame");
  pos += f.meta_len;
  f.n_tensors = buf[40];
  if (f.n_tensors > kMaxTensors)
    return fail(StatusCode::kFrameMalformed, "frame says it carries " + std::to_string(f.n_tensors) +
                " tensors; a frame carries at most 16");
  for (uint32_t i = 0; i < f.n_tensors; ++i) ER_RETURN_IF_ERROR(decode_record(buf, &pos, end, i, &f.tensors[i]));
  if (pos != end)
    return fail(StatusCode::kFrameMalformed, std::to_string(end - pos) +
                " trailing bytes after the last tensor: the sender built a bad frame");
  return f;
}

Status check_bundle(const DecodedFrame& frame, const uint8_t expected[kBundleHashSize]) {
  if (std::memcmp(frame.header.bundle_hash, expected, kBundleHashSize) == 0) return Status::Ok();
  static const char* hexd = "0123456789abcdef";
  std::string got, want;
  for (size_t i = 0; i < kBundleHashSize; ++i) {
    got += hexd[frame.header.bundle_hash[i] >> 4]; got += hexd[frame.header.bundle_hash[i] & 15];
    want += hexd[expected[i] >> 4]; want += hexd[expected[i] & 15];
  }
  return fail(kWrongBundle, "frame is for bundle " + got + " but this side serves bundle " + want +
              ": export and deploy the same bundle on device and server");
}

}  // namespace wire
}  // namespace edgerun
