// Counter-based prompt stream: Philox4x32-10 (Salmon, Moraes, Dror & Shaw, SC'11; the Random123
// definition), standard normals by Box-Muller and Gamma(k) variates by Marsaglia & Tsang (2000).
//
// Every output depends only on (key, its index), so whole arrays fill in vectorized passes, and the
// torch fallback in sampling.py computes the very same numbers: the float32 log, exp and sin/cos
// below are the Cephes polynomials written as plain arithmetic (one float32 rounding per operation;
// compiled with -ffp-contract=off, so no fused multiply-add changes a rounding), the same operations
// in the same order as the fallback's tensor ops.
//
// Counter layout, block (c0, c1, c2, c3): c0, c1 = the low and high words of a 64-bit index,
// c2 = the attempt (gamma's rejection), c3 = the stream (0: normals, 1: gamma, 2: gamma's boost),
// key = the 64-bit key.

#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace {

constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments

// The words ride in 64-bit lanes whose high halves are left unmasked until the end (only the low
// halves enter a product, a xor never carries down): the vectorized rounds then need no packing
// of 32-bit lanes into 64-bit products and back, 1.7x faster than 32-bit words, the same words.
inline void philox(uint32_t& w0, uint32_t& w1, uint32_t& w2, uint32_t& w3, uint32_t k0, uint32_t k1) {
    uint64_t c0 = w0, c1 = w1, c2 = w2, c3 = w3;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += W0; k1 += W1; }
        const uint64_t p0 = (c0 & 0xFFFFFFFFu) * M0, p1 = (c2 & 0xFFFFFFFFu) * M1;
        const uint64_t n0 = (p1 >> 32) ^ c1 ^ k0, n2 = (p0 >> 32) ^ c3 ^ k1;
        c1 = p1; c3 = p0; c0 = n0; c2 = n2;
    }
    w0 = uint32_t(c0); w1 = uint32_t(c1); w2 = uint32_t(c2); w3 = uint32_t(c3);
}

inline float bits_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t float_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

// A uniform in (0, 1) from the top 23 bits of w: (k + 1/2) 2^-23, exact in float32.
inline float uniform(uint32_t w) { return (float(int32_t(w >> 9)) + 0.5f) * 1.1920928955078125e-7f; }

// Cephes logf for normal x > 0 (garbage elsewhere, never used: callers mask).
inline float log_f(float x) {
    const int32_t bits = float_bits(x);
    int32_t e = ((bits >> 23) & 0xff) - 126;
    const float m = bits_float((bits & 0x7fffff) | 0x3f000000);  // x = m 2^e, m in [1/2, 1)
    const bool low = m < 0.707106781186547524f;
    e -= low ? 1 : 0;
    const float f = (low ? m + m : m) - 1.0f;
    const float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    const float fe = float(e);
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    return (f + y) + fe * 0.693359375f;
}

// Cephes expf for x <= 0, down to the subnormals (e^-103); below, 0.
inline float exp_f(float x) {
    // floor by truncation (floorf does not vectorize without -fno-trapping-math); exact here
    const float r = x * 1.44269504088896341f + 0.5f, t = float(int32_t(r));
    const float fx = t > r ? t - 1.0f : t;
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    const float z = x * x;
    float y = 1.9875691500e-4f;
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = (y * z + x) + 1.0f;
    // y 2^n, subnormal results included (as torch's pow gives them): below 2^-126 in two
    // exact-then-rounded steps, 2^(n+64) then 2^-64; n below -190 gives 0
    int32_t n = int32_t(fx);
    n = n < -190 ? -190 : n;
    const bool tiny = n < -126;
    const float scaled = y * bits_float(((tiny ? n + 64 : n) + 127) << 23);
    return tiny ? scaled * 5.421010862427522e-20f : scaled;  // 2^-64
}

// cos and sin of the angle 2 pi (a + 2^21 + 1/2) / 2^24 for a = the top 24 bits of w: the quadrant
// from the integer bits (exact), the Cephes polynomials on the rest, within [-pi/4, pi/4].
inline void cos_sin(uint32_t w, float& cos_out, float& sin_out) {
    const int32_t b = int32_t(((w >> 8) + (1u << 21)) & 0xffffffu);
    const int32_t q = b >> 22;
    const float phi = (float((b & 0x3fffff) - (1 << 21)) + 0.5f) * 3.7450702829239286e-7f;  // 2 pi / 2^24
    const float z = phi * phi;
    float s = -1.9515295891e-4f;
    s = s * z + 8.3321608736e-3f;
    s = s * z - 1.6666654611e-1f;
    s = s * z * phi + phi;
    float c = 2.443315711809948e-5f;
    c = c * z - 1.388731625493765e-3f;
    c = c * z + 4.166664568298827e-2f;
    c = (c * z * z - 0.5f * z) + 1.0f;
    const bool odd = q & 1;
    const float cos_q = odd ? s : c, sin_q = odd ? c : s;
    cos_out = (q == 1 || q == 2) ? -cos_q : cos_q;
    sin_out = (q >= 2) ? -sin_q : sin_q;
}

inline float radius(uint32_t w) { return __builtin_sqrtf(-2.0f * log_f(uniform(w))); }

// One Marsaglia-Tsang attempt for element i: its candidate in g, and whether it is accepted.
// Branch-free, so a loop of attempts vectorizes.
inline bool gamma_attempt(uint32_t k0, uint32_t k1, uint64_t i, uint32_t attempt, float d, float c, float& g) {
    uint32_t c0 = uint32_t(i), c1 = uint32_t(i >> 32), c2 = attempt, c3 = 1;
    philox(c0, c1, c2, c3, k0, k1);
    float cos_t, sin_t;
    cos_sin(c1, cos_t, sin_t);
    const float x = radius(c0) * cos_t;
    const float t = 1.0f + c * x;
    const float v = t * t * t;
    const float u = uniform(c2);
    const bool ok = (v > 0.0f) & (log_f(u) < ((0.5f * x * x + d) - d * v) + d * log_f(v));
    g = d * v;
    return ok;
}

// The boost's factor U^(1/k) of element i, U from the block (i, 0, stream 2): one per element,
// whichever attempt was accepted.
inline float boost_factor(uint32_t k0, uint32_t k1, uint64_t i, float inv_k) {
    uint32_t c0 = uint32_t(i), c1 = uint32_t(i >> 32), c2 = 0, c3 = 2;
    philox(c0, c1, c2, c3, k0, k1);
    return exp_f(log_f(uniform(c0)) * inv_k);
}

// The elements rejected on their first attempt (ok[i] == 0: a few percent) try their next attempts
// together: each pass runs one attempt of every element still rejected in a vectorized loop (the
// element index gathered from a list), then keeps the accepted candidates and the rest for the next.
void retry_rejected(uint32_t k0, uint32_t k1, int64_t count, float d, float c, const uint8_t* ok, float* out) {
    std::vector<int64_t> pending;
    for (int64_t i = 0; i < count; ++i)
        if (ok[i] == 0) pending.push_back(i);
    std::vector<float> candidate(pending.size());
    std::vector<uint8_t> accepted(pending.size());
    for (uint32_t attempt = 1; !pending.empty(); ++attempt) {
        const int64_t n = int64_t(pending.size());
        for (int64_t j = 0; j < n; ++j)
            accepted[j] = gamma_attempt(k0, k1, uint64_t(pending[j]), attempt, d, c, candidate[j]);
        int64_t still = 0;
        for (int64_t j = 0; j < n; ++j) {
            if (accepted[j]) out[pending[j]] = candidate[j];
            else pending[still++] = pending[j];
        }
        pending.resize(size_t(still));
    }
}

// D > 0: rows of D numbers (the common sizes, unrolled); D = 0: rows of d numbers. In chunks of
// rows: the squared norms row by row, then every row's factor (a division and a root) in one
// vectorized loop (within a row loop they ran one row at a time: 1.5x slower), then the rows scaled.
template <int D>
void directions(int64_t rows, const float* __restrict z, const float* __restrict s, float* __restrict out,
                int64_t d = D) {
    const int64_t n = D > 0 ? D : d;
    constexpr int64_t CHUNK = 256;
    float factor[CHUNK];
    for (int64_t first = 0; first < rows; first += CHUNK) {
        const int64_t m = rows - first < CHUNK ? rows - first : CHUNK;
        const float* zc = z + first * n;
        float* oc = out + first * n;
        for (int64_t r = 0; r < m; ++r) {
            const float* row = zc + r * n;
            float squares = row[0] * row[0];
            for (int64_t j = 1; j < n; ++j) squares = squares + row[j] * row[j];
            factor[r] = squares;
        }
        if (s != nullptr)
            for (int64_t r = 0; r < m; ++r) factor[r] = float(__builtin_sqrt(double(s[first + r] / factor[r])));
        else
            for (int64_t r = 0; r < m; ++r) factor[r] = float(__builtin_sqrt(double(1.0f / factor[r])));
        for (int64_t r = 0; r < m; ++r)
            for (int64_t j = 0; j < n; ++j) oc[r * n + j] = zc[r * n + j] * factor[r];
    }
}

template <int D>
void labels(int64_t batch, int64_t tokens, const float* __restrict x, const float* __restrict w,
            float* __restrict y, int64_t d = D) {
    const int64_t n = D > 0 ? D : d;
    for (int64_t b = 0; b < batch; ++b) {
        const float* wb = w + b * n;
        for (int64_t i = 0; i < tokens; ++i) {
            const float* xi = x + (b * tokens + i) * n;
            float sum = xi[0] * wb[0];
            for (int64_t j = 1; j < n; ++j) sum = sum + xi[j] * wb[j];
            y[b * tokens + i] = sum;
        }
    }
}

}  // namespace

extern "C" {

// Philox4x32-10 of one counter and key (its known-answer test).
int philox_block(const uint32_t* counter, const uint32_t* key, uint32_t* out) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    philox(c0, c1, c2, c3, key[0], key[1]);
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
    return 0;
}

// 4 * blocks standard normals: block i gives out[i], out[blocks + i], out[2 blocks + i],
// out[3 blocks + i] (two Box-Muller pairs), so each pass stores contiguously.
int philox_normal(uint64_t key, int64_t blocks, float* out) {
    const uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
    float* out1 = out + blocks; float* out2 = out1 + blocks; float* out3 = out2 + blocks;
    for (int64_t i = 0; i < blocks; ++i) {
        uint32_t c0 = uint32_t(uint64_t(i)), c1 = uint32_t(uint64_t(i) >> 32), c2 = 0, c3 = 0;
        philox(c0, c1, c2, c3, k0, k1);
        float cos_a, sin_a, cos_b, sin_b;
        cos_sin(c1, cos_a, sin_a);
        cos_sin(c3, cos_b, sin_b);
        const float r_a = radius(c0), r_b = radius(c2);
        out[i] = r_a * cos_a; out1[i] = r_a * sin_a; out2[i] = r_b * cos_b; out3[i] = r_b * sin_b;
    }
    return 0;
}

// count Gamma variates: out[i] is element i's first accepted attempt. d and c are Marsaglia-Tsang's
// for the shape alpha (k + 1 when boost: G(k) = G(k + 1) U^(1/k), inv_k = 1/k).
int philox_gamma(uint64_t key, int64_t count, float d, float c, float inv_k, int boost, float* out) {
    const uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
    try {
        // One vectorized pass over the first attempts, then passes over the rejected ones.
        std::vector<uint8_t> ok(size_t(count > 0 ? count : 0));
        for (int64_t i = 0; i < count; ++i)
            ok[i] = gamma_attempt(k0, k1, uint64_t(i), 0, d, c, out[i]);
        retry_rejected(k0, k1, count, d, c, ok.data(), out);
    } catch (const std::bad_alloc&) {
        return 1;
    }
    if (boost != 0)
        for (int64_t i = 0; i < count; ++i) out[i] = out[i] * boost_factor(k0, k1, uint64_t(i), inv_k);
    return 0;
}

// Directions of rows scaled: out[r] = z[r] * sqrt(s[r] / |z[r]|^2) for each of ``rows`` rows of d
// numbers (s[r] = 1 when s is null: a point on the unit sphere). The squared norm sums the row in
// order and the root is taken in double, as the torch path does, so both round alike.
int scaled_directions(int64_t rows, int64_t d, const float* z, const float* s, float* out) {
    switch (d) {  // a row length known at compile time lets the loop over rows vectorize
        case 2: directions<2>(rows, z, s, out); break;
        case 3: directions<3>(rows, z, s, out); break;
        case 4: directions<4>(rows, z, s, out); break;
        case 5: directions<5>(rows, z, s, out); break;
        case 8: directions<8>(rows, z, s, out); break;
        case 10: directions<10>(rows, z, s, out); break;
        case 20: directions<20>(rows, z, s, out); break;
        default: directions<0>(rows, z, s, out, d);
    }
    return 0;
}

// Labels of ``batch`` prompts: y[b, i] = sum_j x[b, i, j] w[b, j] over d features, for the
// ``tokens`` tokens of each prompt, summed in order of j (as the torch path does).
int linear_labels(int64_t batch, int64_t tokens, int64_t d, const float* x, const float* w, float* y) {
    switch (d) {
        case 2: labels<2>(batch, tokens, x, w, y); break;
        case 3: labels<3>(batch, tokens, x, w, y); break;
        case 4: labels<4>(batch, tokens, x, w, y); break;
        case 5: labels<5>(batch, tokens, x, w, y); break;
        case 8: labels<8>(batch, tokens, x, w, y); break;
        case 10: labels<10>(batch, tokens, x, w, y); break;
        case 20: labels<20>(batch, tokens, x, w, y); break;
        default: labels<0>(batch, tokens, x, w, y, d);
    }
    return 0;
}

}  // extern "C"
