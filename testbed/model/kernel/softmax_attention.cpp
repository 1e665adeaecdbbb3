/* Forward and backward of a stack of softmax self-attention layers (see softmax_attention.py for
 * the math and notation), in the design of linear_attention.cpp: templated on the real type R
 * (float or double: the extern "C" entry points come in both, suffixed _f32 and _f64), prompts
 * processed in tiles of TILE prompts stored batch-innermost (Z[i][t][b] at ((i * N1) + t) * TILE + b).
 *
 * One entry of a tile, across its TILE prompts, is a Lanes<R> value (a GCC/Clang vector of TILE
 * reals, one hardware vector): every operation below is one vector operation over the tile's
 * prompts, and a sum kept in a local Lanes stays in a register (accumulating into memory instead
 * was measured 1.8x slower: each step waits for the previous store).
 *
 * Per prompt, layer l with input Z (D, N1), X = Z[:r] the rows Q acts on:
 *   S = X^T Qc X (N1, N1; S[j][i]: key j, query i),  A = softmax of S over the keys j,
 *   V = Z[:, :n] A[:n] / n (the mask M drops the query's key row),  Z <- Z + P V.
 * The last layer computes only entry (D-1, N1-1), the one the prediction reads.
 * No size is fixed: every buffer is allocated from the sizes passed in.
 * Sizes: D = d+1 rows, N1 = n+1 columns, r key rows (Q acts on Z[:r]), L layers.
 * P: (L, D, D), Qc: (L, r, r), row-major.
 */
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

/* A tile is one hardware vector: wider generic vectors were measured 3.5x slower (their compares
 * and selects, the softmax's maximum and the exponential's range, fall back to scalar code). */
#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64;
#else
constexpr int VECTOR_BYTES = 32;
#endif
template <class R> constexpr int TILE = VECTOR_BYTES / sizeof(R);

typedef float FloatLanes __attribute__((vector_size(VECTOR_BYTES)));
typedef double DoubleLanes __attribute__((vector_size(VECTOR_BYTES)));
typedef int32_t Int32Lanes __attribute__((vector_size(VECTOR_BYTES)));
typedef int64_t Int64Lanes __attribute__((vector_size(VECTOR_BYTES)));
template <class R> struct LanesOf;
template <> struct LanesOf<float> { using type = FloatLanes; };
template <> struct LanesOf<double> { using type = DoubleLanes; };
template <class R> using Lanes = typename LanesOf<R>::type;

/* Zeroed, cache-line aligned scratch space of ``count`` tile entries. */
template <class V> V *allocate(size_t count) {
    const size_t bytes = sizeof(V) * (count ? count : 1);
    void *memory = std::aligned_alloc(64, bytes);
    if (memory) std::memset(memory, 0, bytes);
    return (V *)memory;
}

/* exp(x) for x <= 0 (a score minus its column's maximum) on every lane: the C library's exp does
 * not vectorize. x = k ln 2 + f, with k rounded to the nearest integer by adding and subtracting
 * 1.5 * 2^23 (2^52 in double), so |f| <= ln 2 / 2; exp(f) by its Taylor polynomial (degree 7 in
 * float, 13 in double: the truncation is below half an ulp), times 2^k built in the exponent bits.
 * Below the smallest normal number the result is flushed to 0: such a weight, beside the maximum's
 * 1, is beneath float rounding anyway. */
inline FloatLanes exp_nonpositive(FloatLanes x) {
    const FloatLanes clamped = x < -87.0f ? -87.0f : x;
    const FloatLanes k = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const FloatLanes f = (clamped - k * 0.693359375f) + k * 2.12194440e-4f;
    FloatLanes p = f * (1.0f / 5040) + 1.0f / 720;
    p = p * f + 1.0f / 120;
    p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const FloatLanes scale = (FloatLanes)((__builtin_convertvector(k, Int32Lanes) + 127) << 23);
    return x < -87.0f ? 0.0f : p * scale;
}

inline DoubleLanes exp_nonpositive(DoubleLanes x) {
    const DoubleLanes clamped = x < -708.0 ? -708.0 : x;
    const DoubleLanes k = (clamped * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
    const DoubleLanes f = (clamped - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    DoubleLanes p = f * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
    p = p * f + 1.0 / 39916800.0;
    p = p * f + 1.0 / 3628800.0;
    p = p * f + 1.0 / 362880.0;
    p = p * f + 1.0 / 40320.0;
    p = p * f + 1.0 / 5040.0;
    p = p * f + 1.0 / 720.0;
    p = p * f + 1.0 / 120.0;
    p = p * f + 1.0 / 24.0;
    p = p * f + 1.0 / 6.0;
    p = p * f + 0.5;
    p = p * f + 1.0;
    p = p * f + 1.0;
    const DoubleLanes scale = (DoubleLanes)((__builtin_convertvector(k, Int64Lanes) + 1023) << 52);
    return x < -708.0 ? 0.0 : p * scale;
}

/* Sum over the tile's prompts, in double and in a fixed order (a gradient entry is a sum over up
 * to 1e5 prompts). */
template <class V> inline auto tile_sum(const V &v) {
    using R = decltype(v[0] + 0);
    double total = 0.0;
    for (int b = 0; b < TILE<R>; b++) total += v[b];
    return (R)total;
}

/* Sizes of one tile's layout, counted in tile entries. */
struct Layout {
    int D, N1, r, n, L;
    size_t at(int i, int t) const { return (size_t)i * N1 + t; }
    size_t prompt() const { return (size_t)D * N1; }
    size_t weights() const { return (size_t)N1 * N1; }
    /* What the backward pass reads: each layer's input Z, then each hidden layer's weights A
     * (column i of the query at i * N1) and values V. */
    size_t saved() const { return L * prompt() + (size_t)(L - 1) * (weights() + prompt()); }
    /* Scratch space of a pass: the largest need, last_backward's or hidden_backward's. */
    size_t scratch() const { return (size_t)r * N1 + 4 * (size_t)N1 + D + 4 + r + (size_t)r * r; }
};

/* out[a * N1 + t] = sum_c Qc[a][c] X[c][t]: Qc X for every column t of the tile. */
template <class R, class V = Lanes<R>> void project(const Layout &s, const R *Qc, const V *Z, V *__restrict__ out) {
    for (int a = 0; a < s.r; a++)
        for (int t = 0; t < s.N1; t++) {
            V acc = {};
            for (int c = 0; c < s.r; c++) acc += Qc[a * s.r + c] * Z[s.at(c, t)];
            out[(size_t)a * s.N1 + t] = acc;
        }
}

/* The weights of query column i: a[j] = softmax over j <= n of S[j][i] = X[:, j] . QX[:, i]. */
template <class V> void column_weights(const Layout &s, const V *Z, const V *QX, int i, V *__restrict__ a) {
    const int N1 = s.N1;
    V top;
    for (int j = 0; j < N1; j++) {
        V acc = {};
        for (int c = 0; c < s.r; c++) acc += Z[s.at(c, j)] * QX[(size_t)c * N1 + i];
        a[j] = acc;
        top = j == 0 ? acc : (acc > top ? acc : top);  /* the maximum: exp never overflows */
    }
    V total = {};
    for (int j = 0; j < N1; j++) {
        a[j] = exp_nonpositive(a[j] - top);
        total += a[j];
    }
    const V inverse = 1 / total;
    for (int j = 0; j < N1; j++) a[j] *= inverse;
}

/* One hidden layer: A (N1, N1) and V (D, N1) of input Z, and Zn = Z + P V. */
template <class R, class V = Lanes<R>>
void hidden_forward(const Layout &s, const V *Z, const R *P, const R *Qc, V *A, V *values, V *Zn, V *work) {
    const int D = s.D, N1 = s.N1, n = s.n;
    V *QX = work;
    const R inv_n = R(1) / n;
    project(s, Qc, Z, QX);
    for (int i = 0; i < N1; i++) {
        V *a = A + (size_t)i * N1;
        column_weights(s, Z, QX, i, a);
        for (int k = 0; k < D; k++) {  /* V[k][i] = sum_{j < n} Z[k][j] a[j] / n */
            V acc = {};
            for (int j = 0; j < n; j++) acc += Z[s.at(k, j)] * a[j];
            values[s.at(k, i)] = acc * inv_n;
        }
    }
    for (int k = 0; k < D; k++)
        for (int t = 0; t < N1; t++) {
            V acc = Z[s.at(k, t)];
            for (int m = 0; m < D; m++) acc += P[k * D + m] * values[s.at(m, t)];
            Zn[s.at(k, t)] = acc;
        }
}

/* The last layer's query column: Qc x_q (stored as column N1-1 of a QX buffer), its weights a (N1)
 * and the values v = p C (n), with p the last row of P. */
template <class R, class V = Lanes<R>>
void last_forward(const Layout &s, const V *Z, const R *p, const R *Qc, V *QX, V *a, V *v) {
    const int N1 = s.N1;
    for (int c = 0; c < s.r; c++) {
        V acc = {};
        for (int e = 0; e < s.r; e++) acc += Qc[c * s.r + e] * Z[s.at(e, N1 - 1)];
        QX[(size_t)c * N1 + N1 - 1] = acc;
    }
    column_weights(s, Z, QX, N1 - 1, a);
    for (int j = 0; j < s.n; j++) {
        V acc = {};
        for (int k = 0; k < s.D; k++) acc += p[k] * Z[s.at(k, j)];
        v[j] = acc;
    }
}

/* Forward through every layer, filling ``saved`` (Layout::saved entries) from its first prompt. */
template <class R, class V = Lanes<R>> V tile_forward(const Layout &s, const R *P, const R *Qc, V *saved, V *work) {
    const int D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    V *Zs = saved, *As = saved + L * s.prompt(), *values = As + (L - 1) * s.weights();
    for (int l = 0; l < L - 1; l++)
        hidden_forward(s, Zs + l * s.prompt(), P + l * D * D, Qc + l * r * r, As + l * s.weights(),
                       values + l * s.prompt(), Zs + (l + 1) * s.prompt(), work);
    const V *Z = Zs + (L - 1) * s.prompt();
    V *QX = work, *a = QX + (size_t)r * N1, *v = a + N1;
    last_forward(s, Z, P + (L - 1) * D * D + (D - 1) * D, Qc + (L - 1) * r * r, QX, a, v);
    V u = {};
    for (int j = 0; j < n; j++) u += v[j] * a[j];
    return -(Z[s.at(D - 1, N1 - 1)] + u / R(n));
}

/* The softmax's backward for one column: ds[j] = a[j] (da[j] - sum_j' a[j'] da[j']), where da is
 * zero on the query's key row j = n (the mask drops it). */
template <class V> void softmax_backward(int n, const V *a, const V *da, V *__restrict__ ds) {
    V dot = {};
    for (int j = 0; j < n; j++) dot += a[j] * da[j];
    for (int j = 0; j < n; j++) ds[j] = a[j] * (da[j] - dot);
    ds[n] = -a[n] * dot;
}

/* The scores' backward for query column i, given ds[j] = dS[j][i]: y = X ds (r entries) is
 * accumulated into the per-prompt dQc (dQ[c][e] += y[c] X[e][i]); with ``input_grad``, dZ[:r] gets
 * dX: dX[:, j] += QX[:, i] ds[j] and dX[:, i] += Qc^T y. */
template <class R, class V = Lanes<R>>
void scores_backward(const Layout &s, const V *Z, const V *QX, const R *Qc, int i, const V *ds, V *y, V *dQ,
                     V *dZ, bool input_grad) {
    const int N1 = s.N1, r = s.r;
    for (int c = 0; c < r; c++) {
        V acc = {};
        for (int j = 0; j < N1; j++) acc += Z[s.at(c, j)] * ds[j];
        y[c] = acc;
    }
    for (int c = 0; c < r; c++)
        for (int e = 0; e < r; e++) dQ[c * r + e] += y[c] * Z[s.at(e, i)];
    if (!input_grad) return;
    for (int c = 0; c < r; c++) {
        const V q = QX[(size_t)c * N1 + i];
        for (int j = 0; j < N1; j++) dZ[s.at(c, j)] += q * ds[j];
    }
    for (int e = 0; e < r; e++) {
        V acc = dZ[s.at(e, i)];
        for (int c = 0; c < r; c++) acc += Qc[c * r + e] * y[c];
        dZ[s.at(e, i)] = acc;
    }
}

/* Add the tile's per-prompt sums to ``out`` (count entries). */
template <class R, class V> void add_tile_sums(int count, const V *per_prompt, R *out) {
    for (int e = 0; e < count; e++) out[e] += tile_sum(per_prompt[e]);
}

/* Backward of the last layer from g = dLoss/dyhat: dZ gets dLoss/dZ_{L-1}. */
template <class R, class V = Lanes<R>>
void last_backward(const Layout &s, const V *Z, const R *P, const R *Qc, const V &g, V *dZ, R *dP, R *dQc, V *work) {
    const int D = s.D, N1 = s.N1, r = s.r, n = s.n;
    const R *p = P + (D - 1) * D;
    V *QX = work, *a = QX + (size_t)r * N1, *v = a + N1, *da = v + N1, *ds = da + N1, *y = ds + N1;
    V *dQ = y + r;
    last_forward(s, Z, p, Qc, QX, a, v);
    const R inv_n = R(1) / n;
    const V du = -g;
    std::memset((void *)dZ, 0, sizeof(V) * s.prompt());
    std::memset((void *)dQ, 0, sizeof(V) * r * r);
    dZ[s.at(D - 1, N1 - 1)] = du;
    for (int k = 0; k < D; k++) {  /* dp[k] = sum over prompts of du sum_{j<n} Z[k][j] a[j] / n */
        V acc = {};
        for (int j = 0; j < n; j++) acc += Z[s.at(k, j)] * a[j];
        dP[(D - 1) * D + k] += tile_sum(acc * du * inv_n);
    }
    for (int j = 0; j < n; j++) {  /* dv[j] = du a[j] / n goes to dZ[:, j] = p dv[j]; da[j] = du v[j] / n */
        const V dv = du * a[j] * inv_n;
        da[j] = du * v[j] * inv_n;
        for (int k = 0; k < D; k++) dZ[s.at(k, j)] += p[k] * dv;
    }
    softmax_backward(n, a, da, ds);
    scores_backward(s, Z, QX, Qc, N1 - 1, ds, y, dQ, dZ, true);
    add_tile_sums(r * r, dQ, dQc);
}

/* Backward of a hidden layer: G holds dLoss/dZ_{l+1}; dZ gets dLoss/dZ_l unless ``input_grad`` is
 * off (the first layer, when no gradient for the prompts is asked for: dP and dQc come out the same). */
template <class R, class V = Lanes<R>>
void hidden_backward(const Layout &s, const V *Z, const V *A, const V *values, const R *P, const R *Qc, const V *G,
                     V *dZ, R *dP, R *dQc, V *work, bool input_grad) {
    const int D = s.D, N1 = s.N1, r = s.r, n = s.n;
    V *QX = work, *da = QX + (size_t)r * N1, *ds = da + N1, *dv = ds + N1, *y = dv + D, *dQ = y + r;
    const R inv_n = R(1) / n;
    for (int k = 0; k < D; k++)  /* dP[k][m] = sum over prompts of sum_i G[k][i] V[m][i] */
        for (int m = 0; m < D; m++) {
            V acc = {};
            for (int i = 0; i < N1; i++) acc += G[s.at(k, i)] * values[s.at(m, i)];
            dP[k * D + m] += tile_sum(acc);
        }
    if (input_grad) std::memcpy((void *)dZ, G, sizeof(V) * s.prompt());  /* the residual */
    project(s, Qc, Z, QX);
    std::memset((void *)dQ, 0, sizeof(V) * r * r);
    for (int i = 0; i < N1; i++) {
        const V *a = A + (size_t)i * N1;
        for (int m = 0; m < D; m++) {  /* dv = P^T G[:, i] */
            V acc = {};
            for (int k = 0; k < D; k++) acc += P[k * D + m] * G[s.at(k, i)];
            dv[m] = acc;
        }
        for (int j = 0; j < n; j++) {  /* da[j] = Z[:, j] . dv / n */
            V acc = {};
            for (int k = 0; k < D; k++) acc += Z[s.at(k, j)] * dv[k];
            da[j] = acc * inv_n;
        }
        if (input_grad)
            for (int j = 0; j < n; j++) {  /* dZ[:, j] += dv a[j] / n, j < n */
                const V weight = a[j] * inv_n;
                for (int k = 0; k < D; k++) dZ[s.at(k, j)] += dv[k] * weight;
            }
        softmax_backward(n, a, da, ds);
        scores_backward(s, Z, QX, Qc, i, ds, y, dQ, dZ, input_grad);
    }
    add_tile_sums(r * r, dQ, dQc);
}

/* Backward from g = dLoss/dyhat; dP and dQc are accumulated into. dZ and G are working space (a
 * prompt each); dZ ends holding dLoss/dZ0 when input_grad is set. */
template <class R, class V = Lanes<R>>
void tile_backward(const Layout &s, const V *saved, const R *P, const R *Qc, const V &g, V *dZ, V *G, R *dP,
                   R *dQc, V *work, bool input_grad) {
    const int D = s.D, r = s.r, L = s.L;
    const V *Zs = saved, *As = saved + L * s.prompt(), *values = As + (L - 1) * s.weights();
    last_backward(s, Zs + (L - 1) * s.prompt(), P + (L - 1) * D * D, Qc + (L - 1) * r * r, g, dZ,
                  dP + (L - 1) * D * D, dQc + (L - 1) * r * r, work);
    for (int l = L - 2; l >= 0; l--) {
        std::memcpy((void *)G, dZ, sizeof(V) * s.prompt());
        hidden_backward(s, Zs + l * s.prompt(), As + l * s.weights(), values + l * s.prompt(), P + l * D * D,
                        Qc + l * r * r, G, dZ, dP + l * D * D, dQc + l * r * r, work, l > 0 || input_grad);
    }
}

template <class R> int tiles(int B) { return (B + TILE<R> - 1) / TILE<R>; }

/* Copy prompts b0..b0+count-1 of Z (B, D, N1) into a tile; pad with zeros. */
template <class R, class V = Lanes<R>> void gather(const R *Z, int b0, int count, const Layout &s, V *tile) {
    const size_t entries = s.prompt();
    std::memset((void *)tile, 0, sizeof(V) * entries);
    for (int c = 0; c < count; c++) {
        const R *src = Z + (size_t)(b0 + c) * entries;
        for (size_t e = 0; e < entries; e++) tile[e][c] = src[e];
    }
}

/* Copy a tile back to prompts b0..b0+count-1 of Z (B, D, N1): gather's inverse. */
template <class R, class V = Lanes<R>> void scatter(const V *tile, int b0, int count, const Layout &s, R *Z) {
    const size_t entries = s.prompt();
    for (int c = 0; c < count; c++) {
        R *dst = Z + (size_t)(b0 + c) * entries;
        for (size_t e = 0; e < entries; e++) dst[e] = tile[e][c];
    }
}

/* Predictions of B prompts; ``saved`` (sa_saved_size reals) keeps what the backward pass reads, or
 * is null when no backward pass follows (one tile's worth is then reused). */
template <class R, class V = Lanes<R>>
int forward(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *P, const R *Qc, R *saved, R *yhat) {
    const Layout s{D, N1, r, n, L};
    V *work = allocate<V>(s.scratch() + (saved ? 0 : s.saved()));
    if (!work) return 1;
    V *own = work + s.scratch();
    for (int t = 0; t < tiles<R>(B); t++) {
        const int b0 = t * TILE<R>, count = B - b0 < TILE<R> ? B - b0 : TILE<R>;
        V *tile_saved = saved ? (V *)saved + (size_t)t * s.saved() : own;
        gather(Z0, b0, count, s, tile_saved);
        const V y = tile_forward(s, P, Qc, tile_saved, work);
        for (int c = 0; c < count; c++) yhat[b0 + c] = y[c];
    }
    std::free(work);
    return 0;
}

template <class R, class V = Lanes<R>>
int backward(int B, int D, int N1, int r, int n, int L, const R *saved, const R *P, const R *Qc, const R *gy,
             R *dZ, R *dP, R *dQc) {
    const Layout s{D, N1, r, n, L};
    V *work = allocate<V>(s.scratch() + 2 * s.prompt());
    if (!work) return 1;
    V *tile = work + s.scratch(), *G = tile + s.prompt();
    std::memset(dP, 0, sizeof(R) * L * D * D);
    std::memset(dQc, 0, sizeof(R) * L * r * r);
    for (int t = 0; t < tiles<R>(B); t++) {
        const int b0 = t * TILE<R>, count = B - b0 < TILE<R> ? B - b0 : TILE<R>;
        V g = {};  /* padded prompts carry no gradient */
        for (int c = 0; c < count; c++) g[c] = gy[b0 + c];
        tile_backward(s, (const V *)saved + (size_t)t * s.saved(), P, Qc, g, tile, G, dP, dQc, work, true);
        scatter(tile, b0, count, s, dZ);
    }
    std::free(work);
    return 0;
}

/* The mean squared error of B prompts and its gradient in one pass: each tile's backward pass runs
 * right after its forward pass, while its intermediate values are still in cache. dZ may be null
 * (no gradient for the prompts). */
template <class R, class V = Lanes<R>>
int loss_grad(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target, const R *P, const R *Qc,
              R *loss, R *dZ, R *dP, R *dQc) {
    const Layout s{D, N1, r, n, L};
    V *work = allocate<V>(s.scratch() + s.saved() + 2 * s.prompt());
    if (!work) return 1;
    V *saved = work + s.scratch(), *tile = saved + s.saved(), *G = tile + s.prompt();
    std::memset(dP, 0, sizeof(R) * L * D * D);
    std::memset(dQc, 0, sizeof(R) * L * r * r);
    double total = 0.0;
    for (int t = 0; t < tiles<R>(B); t++) {
        const int b0 = t * TILE<R>, count = B - b0 < TILE<R> ? B - b0 : TILE<R>;
        gather(Z0, b0, count, s, saved);
        const V y = tile_forward(s, P, Qc, saved, work);
        V g = {};  /* padded prompts carry no gradient */
        for (int c = 0; c < count; c++) {
            const R error = y[c] - target[b0 + c];
            total += (double)error * error;
            g[c] = R(2) * error / B;
        }
        tile_backward(s, saved, P, Qc, g, tile, G, dP, dQc, work, dZ != nullptr);
        if (dZ) scatter(tile, b0, count, s, dZ);
    }
    *loss = (R)(total / B);
    std::free(work);
    return 0;
}

/* Reals of the ``saved`` buffer of a forward pass whose backward pass follows. */
template <class R> size_t saved_size(int B, int D, int N1, int r, int L) {
    return (size_t)tiles<R>(B) * Layout{D, N1, r, 0, L}.saved() * TILE<R>;
}

}  // namespace

/* The entry points, once per real type (R, suffix). */
#define ENTRY_POINTS(R, suffix)                                                                          \
    size_t sa_saved_size_##suffix(int B, int D, int N1, int r, int L) {                                  \
        return saved_size<R>(B, D, N1, r, L);                                                            \
    }                                                                                                    \
    int sa_forward_##suffix(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *P, const R *Qc, \
                            R *saved, R *yhat) {                                                         \
        return forward(B, D, N1, r, n, L, Z0, P, Qc, saved, yhat);                                       \
    }                                                                                                    \
    int sa_backward_##suffix(int B, int D, int N1, int r, int n, int L, const R *saved, const R *P,      \
                             const R *Qc, const R *gy, R *dZ, R *dP, R *dQc) {                           \
        return backward(B, D, N1, r, n, L, saved, P, Qc, gy, dZ, dP, dQc);                               \
    }                                                                                                    \
    int sa_loss_grad_##suffix(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target,    \
                              const R *P, const R *Qc, R *loss, R *dZ, R *dP, R *dQc) {                  \
        return loss_grad(B, D, N1, r, n, L, Z0, target, P, Qc, loss, dZ, dP, dQc);                       \
    }

extern "C" {

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)

}  // extern "C"
