/* Forward, backward and Hessian-vector products (hvp: the backward's steps on value and tangent
 * lanes) of a stack of softmax self-attention layers (see softmax_attention.py for the math and
 * notation), in the design of linear_attention.cpp: templated on the real type R
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


/* ---- Hessian-vector products: forward-over-reverse on (value, tangent) pairs ----
 * The gradient's steps above, run again on tangents: one tangent per direction (tP, tQc), each its
 * own array of tile entries beside the value's, so that every step stays a vector operation over the
 * tile's prompts. A pass computes the values once and shares them among its directions (up to
 * HVP_DIRECTIONS); the tangents of dP and dQc, summed over prompts in double, are the products.
 * Layer 0's input, the prompt, is a constant: its tangents are skipped (a null tangent).
 * The softmax's tangent per query column: ta = a (ts - sum_j a[j] ts[j]); the column's maximum,
 * subtracted before the exponential, shifts every score alike and has no tangent. */

/* A value array of ``count`` tile entries followed by one tangent array of the same size per
 * direction; a null ``t`` is a constant (every tangent zero). */
template <class V> struct DualArray {
    V *v, *t;
    size_t stride;
    V *at(int k) const { return t ? t + k * stride : nullptr; }
    /* The part from entry ``offset`` on (a layer's), constant when ``constant``. */
    DualArray part(size_t offset, bool constant = false) const {
        return {v + offset, constant || !t ? nullptr : t + offset, stride};
    }
};
template <class V> DualArray<V> carve(V *&memory, size_t count, int directions) {
    DualArray<V> a{memory, memory + count, count};
    memory += count * (1 + directions);
    return a;
}

/* The directions of one pass: direction k's tangent of layer l's P at P(k, l), of its Qc at Q(k, l). */
template <class R> struct Directions {
    int count;
    const R *tP, *tQc;
    int D, r, L;
    const R *P(int k, int l) const { return tP + ((size_t)k * L + l) * D * D; }
    const R *Q(int k, int l) const { return tQc + ((size_t)k * L + l) * r * r; }
};

/* The sum of a tile entry over its prompts, in double and in lane order (rounded once, at the end). */
template <class V> inline double lane_total(const V &v) {
    double total = 0.0;
    for (size_t b = 0; b < sizeof(V) / sizeof(v[0]); b++) total += v[b];
    return total;
}

/* Direction k's tangent of Qc X, columns ``from`` to N1-1: tQc X + Qc tX (tZ null: a constant input). */
template <class R, class V = Lanes<R>>
void project_tangent(const Layout &s, const R *Qc, const R *tQc, const V *Z, const V *tZ, int from, V *__restrict__ out) {
    for (int a = 0; a < s.r; a++)
        for (int t = from; t < s.N1; t++) {
            V acc = {};
            for (int c = 0; c < s.r; c++) acc += tQc[a * s.r + c] * Z[s.at(c, t)];
            if (tZ)
                for (int c = 0; c < s.r; c++) acc += Qc[a * s.r + c] * tZ[s.at(c, t)];
            out[(size_t)a * s.N1 + t] = acc;
        }
}

/* The tangent ta of query column i's weights a, from the scores' tangent
 * ts[j] = tX[:, j] . QX[:, i] + X[:, j] . tQX[:, i]. */
template <class V>
void column_weights_tangent(const Layout &s, const V *Z, const V *tZ, const V *QX, const V *tQX, int i, const V *a,
                            V *__restrict__ ta) {
    const int N1 = s.N1;
    V dot = {};
    for (int j = 0; j < N1; j++) {
        V acc = {};
        for (int c = 0; c < s.r; c++) acc += Z[s.at(c, j)] * tQX[(size_t)c * N1 + i];
        if (tZ)
            for (int c = 0; c < s.r; c++) acc += tZ[s.at(c, j)] * QX[(size_t)c * N1 + i];
        ta[j] = acc;
        dot += a[j] * acc;
    }
    for (int j = 0; j < N1; j++) ta[j] = a[j] * (ta[j] - dot);
}

/* softmax_backward's tangent: tds[j] = ta[j] (da[j] - dot) + a[j] (tda[j] - tdot), with da and tda
 * zero on the query's key row j = n. */
template <class V> void softmax_backward_tangent(int n, const V *a, const V *ta, const V *da, const V *tda, V *__restrict__ tds) {
    V dot = {}, tdot = {};
    for (int j = 0; j < n; j++) {
        dot += a[j] * da[j];
        tdot += ta[j] * da[j] + a[j] * tda[j];
    }
    for (int j = 0; j < n; j++) tds[j] = ta[j] * (da[j] - dot) + a[j] * (tda[j] - tdot);
    tds[n] = -(ta[n] * dot + a[n] * tdot);
}

/* scores_backward's tangent for query column i, from its values ds and y and their tangents: ty
 * (r entries, written), tdQ (added to) and, with ``input_grad``, tdZ (added to). */
template <class R, class V = Lanes<R>>
void scores_backward_tangent(const Layout &s, const V *Z, const V *tZ, const V *QX, const V *tQX, const R *Qc,
                             const R *tQc, int i, const V *ds, const V *tds, const V *y, V *ty, V *tdQ, V *tdZ,
                             bool input_grad) {
    const int N1 = s.N1, r = s.r;
    for (int c = 0; c < r; c++) {
        V acc = {};
        for (int j = 0; j < N1; j++) acc += Z[s.at(c, j)] * tds[j];
        if (tZ)
            for (int j = 0; j < N1; j++) acc += tZ[s.at(c, j)] * ds[j];
        ty[c] = acc;
    }
    for (int c = 0; c < r; c++)
        for (int e = 0; e < r; e++)
            tdQ[c * r + e] += ty[c] * Z[s.at(e, i)] + (tZ ? y[c] * tZ[s.at(e, i)] : V{});
    if (!input_grad) return;
    for (int c = 0; c < r; c++) {
        const V q = QX[(size_t)c * N1 + i], tq = tQX[(size_t)c * N1 + i];
        for (int j = 0; j < N1; j++) tdZ[s.at(c, j)] += tq * ds[j] + q * tds[j];
    }
    for (int e = 0; e < r; e++) {
        V acc = tdZ[s.at(e, i)];
        for (int c = 0; c < r; c++) acc += tQc[c * r + e] * y[c] + Qc[c * r + e] * ty[c];
        tdZ[s.at(e, i)] = acc;
    }
}

/* Working space of a pass, in tile entries: each layer's input Z, each hidden layer's weights A (values
 * only: their tangents are recomputed a column at a time) and values V, the backward pass's G and dZ,
 * QX, the last layer's weights a, values v and loss gradient g (these with tangents), then one query
 * column's scratch (its values, then one direction's tangents) and each direction's per-prompt dQc.
 * dQ takes what scores_backward adds to the values' dQc: never read (only tangents are products). */
template <class V> struct HvpWork {
    DualArray<V> Zs, values, G, dZ, QX, a, v, g;
    V *A, *dv, *da, *ds, *y, *dQ, *ta, *tdv, *tda, *tds, *ty, *tdQ;
};

/* Hands out consecutive pieces of ``base``; with a null base it only counts (``used``). */
template <class V> struct Carver {
    V *base;
    size_t used = 0;
    V *take(size_t count) {
        V *piece = base ? base + used : nullptr;
        used += count;
        return piece;
    }
    DualArray<V> dual(size_t count, int directions) {
        V *value = take(count);
        return {value, take(count * directions), count};
    }
};

template <class V> HvpWork<V> carve_hvp_work(const Layout &s, int directions, Carver<V> &c) {
    const size_t column = s.N1 > s.D ? s.N1 : s.D;  /* dv: n entries in the last layer, D in a hidden one */
    HvpWork<V> w;
    w.Zs = c.dual((size_t)s.L * s.prompt(), directions);  /* first: gather_xy writes the prompt there */
    w.values = c.dual((size_t)(s.L - 1) * s.prompt(), directions);
    w.G = c.dual(s.prompt(), directions);
    w.dZ = c.dual(s.prompt(), directions);
    w.QX = c.dual((size_t)s.r * s.N1, directions);
    w.a = c.dual(s.N1, directions);
    w.v = c.dual(s.n, directions);
    w.g = c.dual(1, directions);
    w.A = c.take((size_t)(s.L - 1) * s.weights());
    w.dv = c.take(column), w.da = c.take(s.N1), w.ds = c.take(s.N1), w.y = c.take(s.r);
    w.dQ = c.take((size_t)s.r * s.r);
    w.ta = c.take(s.N1), w.tdv = c.take(column), w.tda = c.take(s.N1), w.tds = c.take(s.N1), w.ty = c.take(s.r);
    w.tdQ = c.take((size_t)s.r * s.r * directions);
    return w;
}

/* A hidden layer forward in value and tangents: its weights A (values), V and the next layer's input Zn. */
template <class R, class V = Lanes<R>>
void hidden_forward_dual(const Layout &s, const Directions<R> &dir, int l, const DualArray<V> &Z, const DualArray<V> &Zn,
                         const R *P, const R *Qc, V *A, const DualArray<V> &values, const HvpWork<V> &w) {
    const int D = s.D, N1 = s.N1, n = s.n;
    const R inv_n = R(1) / n;
    hidden_forward(s, Z.v, P, Qc, A, values.v, Zn.v, w.QX.v);
    for (int k = 0; k < dir.count; k++) {
        const V *tZ = Z.at(k);
        V *tQX = w.QX.at(k), *tvalues = values.at(k), *tZn = Zn.at(k);
        project_tangent(s, Qc, dir.Q(k, l), Z.v, tZ, 0, tQX);
        for (int i = 0; i < N1; i++) {  /* tV[m][i] = sum_{j < n} (tZ[m][j] a[j] + Z[m][j] ta[j]) / n */
            const V *a = A + (size_t)i * N1;
            column_weights_tangent(s, Z.v, tZ, w.QX.v, tQX, i, a, w.ta);
            for (int m = 0; m < D; m++) {
                V acc = {};
                for (int j = 0; j < n; j++) acc += Z.v[s.at(m, j)] * w.ta[j];
                if (tZ)
                    for (int j = 0; j < n; j++) acc += tZ[s.at(m, j)] * a[j];
                tvalues[s.at(m, i)] = acc * inv_n;
            }
        }
        const R *tP = dir.P(k, l);
        for (int m = 0; m < D; m++)  /* tZn = tZ + tP V + P tV */
            for (int t = 0; t < N1; t++) {
                V acc = tZ ? tZ[s.at(m, t)] : V{};
                for (int q = 0; q < D; q++)
                    acc += tP[m * D + q] * values.v[s.at(q, t)] + P[m * D + q] * tvalues[s.at(q, t)];
                tZn[s.at(m, t)] = acc;
            }
    }
}

/* The last layer forward in value and tangents (its query column's weights a, values v), then the
 * loss's gradient in the prediction g = 2 (yhat - target) / B and its tangents (0 where ``valid`` is 0:
 * padding). */
template <class R, class V = Lanes<R>>
void last_forward_dual(const Layout &s, const Directions<R> &dir, const DualArray<V> &Z, const R *P, const R *Qc,
                       const V &target, const V &valid, int B, const HvpWork<V> &w) {
    const int D = s.D, N1 = s.N1, n = s.n, L = s.L;
    const R *p = P + (D - 1) * D;
    last_forward(s, Z.v, p, Qc, w.QX.v, w.a.v, w.v.v);
    V u = {};
    for (int j = 0; j < n; j++) u += w.v.v[j] * w.a.v[j];
    const V yhat = -(Z.v[s.at(D - 1, N1 - 1)] + u / R(n));
    w.g.v[0] = R(2) * (yhat - target) * valid / R(B);
    for (int k = 0; k < dir.count; k++) {
        const V *tZ = Z.at(k);
        V *tQX = w.QX.at(k), *ta = w.a.at(k), *tv = w.v.at(k);
        const R *tp = dir.P(k, L - 1) + (D - 1) * D;
        project_tangent(s, Qc, dir.Q(k, L - 1), Z.v, tZ, N1 - 1, tQX);
        column_weights_tangent(s, Z.v, tZ, w.QX.v, tQX, N1 - 1, w.a.v, ta);
        V tu = {};
        for (int j = 0; j < n; j++) {  /* tv = tp C + p tC */
            V acc = {};
            for (int m = 0; m < D; m++) acc += tp[m] * Z.v[s.at(m, j)];
            if (tZ)
                for (int m = 0; m < D; m++) acc += p[m] * tZ[s.at(m, j)];
            tv[j] = acc;
            tu += acc * w.a.v[j] + w.v.v[j] * ta[j];
        }
        const V tyhat = -((tZ ? tZ[s.at(D - 1, N1 - 1)] : V{}) + tu / R(n));
        w.g.at(k)[0] = R(2) * tyhat * valid / R(B);
    }
}

/* last_backward in value and tangents: dZ gets dLoss/dZ_{L-1} (with ``input_grad``), totals the
 * tangents of the last layer's dP and dQc (direction k's at k stride). */
template <class R, class V = Lanes<R>>
void last_backward_dual(const Layout &s, const Directions<R> &dir, const DualArray<V> &Z, const R *P, const R *Qc,
                        const HvpWork<V> &w, double *totals, size_t stride, bool input_grad) {
    const int D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    const R *p = P + (D - 1) * D;
    const R inv_n = R(1) / n;
    const V *a = w.a.v, *v = w.v.v;
    const V du = -w.g.v[0];
    std::memset((void *)w.dZ.v, 0, sizeof(V) * s.prompt());
    w.dZ.v[s.at(D - 1, N1 - 1)] = du;
    for (int j = 0; j < n; j++) {
        w.dv[j] = du * a[j] * inv_n;
        w.da[j] = du * v[j] * inv_n;
        for (int m = 0; m < D; m++) w.dZ.v[s.at(m, j)] += p[m] * w.dv[j];
    }
    softmax_backward(n, a, w.da, w.ds);
    scores_backward(s, Z.v, w.QX.v, Qc, N1 - 1, w.ds, w.y, w.dQ, w.dZ.v, input_grad);
    for (int k = 0; k < dir.count; k++) {
        const V *tZ = Z.at(k), *ta = w.a.at(k), *tv = w.v.at(k), *tQX = w.QX.at(k);
        const R *tp = dir.P(k, L - 1) + (D - 1) * D, *tQ = dir.Q(k, L - 1);
        double *tdP = totals + k * stride + (size_t)(L - 1) * D * D, *tdQc = totals + k * stride + (size_t)L * D * D;
        V *tdZ = w.dZ.at(k), *tdQ = w.tdQ + (size_t)k * r * r;
        const V tdu = -w.g.at(k)[0];
        std::memset((void *)tdZ, 0, sizeof(V) * s.prompt());
        std::memset((void *)tdQ, 0, sizeof(V) * r * r);
        tdZ[s.at(D - 1, N1 - 1)] = tdu;
        for (int m = 0; m < D; m++) {  /* dp[m] = du sum_{j<n} Z[m][j] a[j] / n, in tangent */
            V acc = {}, tacc = {};
            for (int j = 0; j < n; j++) {
                acc += Z.v[s.at(m, j)] * a[j];
                tacc += Z.v[s.at(m, j)] * ta[j] + (tZ ? tZ[s.at(m, j)] * a[j] : V{});
            }
            tdP[(D - 1) * D + m] += lane_total((tdu * acc + du * tacc) * inv_n);
        }
        for (int j = 0; j < n; j++) {
            w.tdv[j] = (tdu * a[j] + du * ta[j]) * inv_n;
            w.tda[j] = (tdu * v[j] + du * tv[j]) * inv_n;
            for (int m = 0; m < D; m++) tdZ[s.at(m, j)] += tp[m] * w.dv[j] + p[m] * w.tdv[j];
        }
        softmax_backward_tangent(n, a, ta, w.da, w.tda, w.tds);
        scores_backward_tangent(s, Z.v, tZ, w.QX.v, tQX, Qc, tQ, N1 - 1, w.ds, w.tds, w.y, w.ty, tdQ, tdZ,
                                input_grad);
        for (int e = 0; e < r * r; e++) tdQc[(size_t)(L - 1) * r * r + e] += lane_total(tdQ[e]);
    }
}

/* hidden_backward of layer l in value and tangents: G holds dLoss/dZ_{l+1} (value and tangents); dZ
 * gets dLoss/dZ_l with ``input_grad``; totals the tangents of the layer's dP and dQc. */
template <class R, class V = Lanes<R>>
void hidden_backward_dual(const Layout &s, const Directions<R> &dir, int l, const DualArray<V> &Z, const V *A,
                          const DualArray<V> &values, const R *P, const R *Qc, const HvpWork<V> &w, double *totals,
                          size_t stride, bool input_grad) {
    const int D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    const R inv_n = R(1) / n;
    const DualArray<V> &G = w.G, &dZ = w.dZ;
    for (int k = 0; k < dir.count; k++) {  /* dP[m][q] = sum_i G[m][i] V[q][i], in tangent */
        const V *tG = G.at(k), *tvalues = values.at(k);
        double *tdP = totals + k * stride + (size_t)l * D * D;
        for (int m = 0; m < D; m++)
            for (int q = 0; q < D; q++) {
                V acc = {};
                for (int i = 0; i < N1; i++)
                    acc += tG[s.at(m, i)] * values.v[s.at(q, i)] + G.v[s.at(m, i)] * tvalues[s.at(q, i)];
                tdP[m * D + q] += lane_total(acc);
            }
        std::memset((void *)(w.tdQ + (size_t)k * r * r), 0, sizeof(V) * r * r);
        project_tangent(s, Qc, dir.Q(k, l), Z.v, Z.at(k), 0, w.QX.at(k));
    }
    if (input_grad) std::memcpy((void *)dZ.v, G.v, sizeof(V) * s.prompt() * (1 + dir.count));  /* the residual */
    project(s, Qc, Z.v, w.QX.v);
    for (int i = 0; i < N1; i++) {
        const V *a = A + (size_t)i * N1;
        for (int m = 0; m < D; m++) {  /* dv = P^T G[:, i] */
            V acc = {};
            for (int q = 0; q < D; q++) acc += P[q * D + m] * G.v[s.at(q, i)];
            w.dv[m] = acc;
        }
        for (int j = 0; j < n; j++) {  /* da[j] = Z[:, j] . dv / n */
            V acc = {};
            for (int m = 0; m < D; m++) acc += Z.v[s.at(m, j)] * w.dv[m];
            w.da[j] = acc * inv_n;
        }
        if (input_grad)
            for (int j = 0; j < n; j++)
                for (int m = 0; m < D; m++) dZ.v[s.at(m, j)] += w.dv[m] * (a[j] * inv_n);
        softmax_backward(n, a, w.da, w.ds);
        scores_backward(s, Z.v, w.QX.v, Qc, i, w.ds, w.y, w.dQ, dZ.v, input_grad);
        for (int k = 0; k < dir.count; k++) {
            const V *tZ = Z.at(k), *tG = G.at(k), *tQX = w.QX.at(k);
            const R *tP = dir.P(k, l);
            V *tdZ = dZ.at(k);
            column_weights_tangent(s, Z.v, tZ, w.QX.v, tQX, i, a, w.ta);
            for (int m = 0; m < D; m++) {  /* tdv = tP^T G + P^T tG */
                V acc = {};
                for (int q = 0; q < D; q++) acc += tP[q * D + m] * G.v[s.at(q, i)] + P[q * D + m] * tG[s.at(q, i)];
                w.tdv[m] = acc;
            }
            for (int j = 0; j < n; j++) {  /* tda[j] = (tZ[:, j] . dv + Z[:, j] . tdv) / n */
                V acc = {};
                for (int m = 0; m < D; m++) acc += Z.v[s.at(m, j)] * w.tdv[m];
                if (tZ)
                    for (int m = 0; m < D; m++) acc += tZ[s.at(m, j)] * w.dv[m];
                w.tda[j] = acc * inv_n;
            }
            if (input_grad)
                for (int j = 0; j < n; j++)
                    for (int m = 0; m < D; m++) tdZ[s.at(m, j)] += (w.tdv[m] * a[j] + w.dv[m] * w.ta[j]) * inv_n;
            softmax_backward_tangent(n, a, w.ta, w.da, w.tda, w.tds);
            scores_backward_tangent(s, Z.v, tZ, w.QX.v, tQX, Qc, dir.Q(k, l), i, w.ds, w.tds, w.y, w.ty,
                                    w.tdQ + (size_t)k * r * r, tdZ, input_grad);
        }
    }
    for (int k = 0; k < dir.count; k++) {
        double *tdQc = totals + k * stride + (size_t)L * D * D + (size_t)l * r * r;
        for (int e = 0; e < r * r; e++) tdQc[e] += lane_total(w.tdQ[(size_t)k * r * r + e]);
    }
}

/* One tile's tangents of the loss gradient, added to totals (direction k's dP, then dQc, at k stride),
 * for the prompt already in w.Zs's first layout. */
template <class R, class V = Lanes<R>>
void hvp_tile(const Layout &s, const Directions<R> &dir, const HvpWork<V> &w, const R *P, const R *Qc,
              const V &target, const V &valid, int B, double *totals, size_t stride) {
    const int D = s.D, r = s.r, L = s.L;
    auto Z = [&](int l) { return w.Zs.part((size_t)l * s.prompt(), l == 0); };
    auto values = [&](int l) { return w.values.part((size_t)l * s.prompt()); };
    for (int l = 0; l < L - 1; l++)
        hidden_forward_dual(s, dir, l, Z(l), Z(l + 1), P + l * D * D, Qc + l * r * r, w.A + l * s.weights(),
                            values(l), w);
    const R *PL = P + (L - 1) * D * D, *QL = Qc + (L - 1) * r * r;
    last_forward_dual(s, dir, Z(L - 1), PL, QL, target, valid, B, w);
    last_backward_dual(s, dir, Z(L - 1), PL, QL, w, totals, stride, L > 1);
    for (int l = L - 2; l >= 0; l--) {
        std::memcpy((void *)w.G.v, w.dZ.v, sizeof(V) * s.prompt() * (1 + dir.count));
        hidden_backward_dual(s, dir, l, Z(l), w.A + l * s.weights(), values(l), P + l * D * D, Qc + l * r * r, w,
                             totals, stride, l > 0);
    }
}

/* Prompts b0..b0+count-1 as a tile, read from their covariates x (B, N1, D-1) and labels y (B, N1) as
 * the model's prompt(x, y) lays them out: rows x^T, then the labels with the query's hidden (0); padded
 * prompts are 0. */
template <class R, class V = Lanes<R>>
void gather_xy(const R *x, const R *y, int b0, int count, const Layout &s, V *tile) {
    const int d = s.D - 1, N1 = s.N1;
    std::memset((void *)tile, 0, sizeof(V) * s.prompt());
    for (int c = 0; c < count; c++) {
        const R *xc = x + (size_t)(b0 + c) * N1 * d, *yc = y + (size_t)(b0 + c) * N1;
        for (int j = 0; j < N1; j++)
            for (int i = 0; i < d; i++) tile[s.at(i, j)][c] = xc[(size_t)j * d + i];
        for (int j = 0; j < N1 - 1; j++) tile[s.at(d, j)][c] = yc[j];
    }
}

/* Directions per pass: the values are computed once a pass and shared by its directions, as in the
 * linear-attention kernel's hvp_lanes. */
constexpr int HVP_DIRECTIONS = 8;

/* Hessian-vector products for a pass of ``dir.count`` directions: HP and HQc (dir.count, L, ...) out. */
template <class R, class V = Lanes<R>>
int hvp_pass(int B, const Layout &s, const R *x, const R *y, const R *target, const R *P, const R *Qc,
             const Directions<R> &dir, R *HP, R *HQc) {
    const size_t nP = (size_t)s.L * s.D * s.D, nQ = (size_t)s.L * s.r * s.r, stride = nP + nQ;
    Carver<V> counter{nullptr};
    carve_hvp_work(s, dir.count, counter);
    V *memory = allocate<V>(counter.used);
    double *totals = allocate<double>(stride * dir.count);
    if (!memory || !totals) return std::free(memory), std::free(totals), 1;
    Carver<V> carver{memory};
    const HvpWork<V> w = carve_hvp_work(s, dir.count, carver);
    for (int t = 0; t < tiles<R>(B); t++) {
        const int b0 = t * TILE<R>, count = B - b0 < TILE<R> ? B - b0 : TILE<R>;
        gather_xy(x, y, b0, count, s, w.Zs.v);
        V truth = {}, valid = {};
        for (int c = 0; c < count; c++) {
            truth[c] = target[b0 + c];
            valid[c] = R(1);
        }
        hvp_tile(s, dir, w, P, Qc, truth, valid, B, totals, stride);
    }
    for (int k = 0; k < dir.count; k++) {
        for (size_t e = 0; e < nP; e++) HP[k * nP + e] = (R)totals[k * stride + e];
        for (size_t e = 0; e < nQ; e++) HQc[k * nQ + e] = (R)totals[k * stride + nP + e];
    }
    std::free(memory);
    std::free(totals);
    return 0;
}

/* Hessian-vector products H v_k (k < directions) of the mean squared error of B prompts, in (P, Qc)
 * coordinates: tP (directions, L, D, D) and tQc (directions, L, r, r) in, HP and HQc out; the prompts
 * as gather_xy reads them, target (B,) their true query labels. The arguments of la_hvp. */
template <class R>
int hvp(int B, int D, int N1, int r, int n, int L, const R *x, const R *y, const R *target, const R *P, const R *Qc,
        int directions, const R *tP, const R *tQc, R *HP, R *HQc) {
    const Layout s{D, N1, r, n, L};
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r;
    for (int k0 = 0; k0 < directions; k0 += HVP_DIRECTIONS) {
        const int count = directions - k0 < HVP_DIRECTIONS ? directions - k0 : HVP_DIRECTIONS;
        const Directions<R> dir{count, tP + k0 * nP, tQc + k0 * nQ, D, r, L};
        const int status = hvp_pass(B, s, x, y, target, P, Qc, dir, HP + k0 * nP, HQc + k0 * nQ);
        if (status) return status;
    }
    return 0;
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
    }                                                                                                    \
    int sa_hvp_##suffix(int B, int D, int N1, int r, int n, int L, const R *x, const R *y, const R *target, \
                        const R *P, const R *Qc, int directions, const R *tP, const R *tQc, R *HP, R *HQc) { \
        return hvp(B, D, N1, r, n, L, x, y, target, P, Qc, directions, tP, tQc, HP, HQc);                \
    }

extern "C" {

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)

}  // extern "C"
