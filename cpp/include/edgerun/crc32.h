// edgerun/crc32.h: CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320).
//
// Bit-for-bit the same as zlib's crc32() and Python's zlib.crc32(), so a frame
// checksummed on the device verifies on the server with the standard library.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgerun {

// ============================================================================
// Checksum
// ============================================================================

// CRC-32 of data[0, n). Pass a previous result as `crc` to continue a running
// checksum over several buffers (crc32(b, nb, crc32(a, na)) == crc32(a ++ b)).
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

// Which implementation crc32 runs here: "pclmul" (x86-64 carry-less multiply),
// "arm-crc" (aarch64 CRC32 instructions) or "table" (portable slicing-by-8, also
// under EDGERUN_FORCE_PORTABLE).
const char* crc32_path();

namespace wire {
using ::edgerun::crc32;  // the wire format's checksum, also reachable as wire::crc32
}  // namespace wire

}  // namespace edgerun
