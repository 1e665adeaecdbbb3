/* The masked CRC-32C (Castagnoli) of TensorBoard's record framing, as tensorboard's
 * masked_crc32c computes it in pure Python (about 5 us for a scalar's 40-byte record, three records
 * a training step): the same table-driven CRC, then the rotation by 15 bits and the added constant
 * of TFRecord's masking. */
#include <cstddef>
#include <cstdint>

namespace {

constexpr uint32_t POLYNOMIAL = 0x82F63B78u;  // CRC-32C, reflected
constexpr uint32_t MASK_DELTA = 0xA282EAD8u;

struct Table {
    uint32_t entry[256];
    constexpr Table() : entry() {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t crc = i;
            for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (crc & 1u ? POLYNOMIAL : 0u);
            entry[i] = crc;
        }
    }
};

constexpr Table TABLE;

}  // namespace

extern "C" {

uint32_t masked_crc32c(const unsigned char *data, size_t length) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < length; i++) crc = TABLE.entry[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    crc ^= 0xFFFFFFFFu;
    return ((crc >> 15) | (crc << 17)) + MASK_DELTA;
}

}  // extern "C"
