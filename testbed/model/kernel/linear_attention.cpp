/* Forward, backward and Hessian-vector products of a stack of linear self-attention layers (see
 * testbed/linear_attention.py for the math and notation).
 *
 * One algorithm over a real type R (float or double: the extern "C" entry points come in both,
 * suffixed _f32 and _f64), with prompts stored batch-innermost (Z[i][t][b] at ((i * N1) + t) * W + b),
 * W prompts at a time: every step is a product of small matrices in each prompt, run by ``product``,
 * which keeps a block of outputs for one vector of prompts in registers.
 *  - the training step: lanes_forward, lanes_backward.
 *  - second derivatives: dual_tile runs the same steps on (value, tangent) pairs, a tangent per
 *    direction in (P, Q) (and in the covariates, for a feature map's: la_hvp_features), each tangent
 *    its own lane array; the tangents of the gradient are exactly the Hessian-vector products
 *    (forward-over-reverse differentiation).
 * No size is fixed: every buffer is allocated from the sizes passed in.
 * Sizes: D = d+1 rows, N1 = n+1 columns, r key rows (Q acts on Z[:r]), L layers.
 * P: (L, D, D), Qc: (L, r, r), row-major.
 */
#include <cstdlib>
#include <cstring>

namespace {

template <class E> inline void zero(E *o, size_t count) { std::memset(o, 0, sizeof(E) * count); }

/* Zeroed, cache-line aligned scratch space (unaligned vector loads were measured to cost up to 50%). */
template <class E> E *allocate(size_t count) {
    const size_t bytes = (sizeof(E) * count + 63) / 64 * 64;
    void *memory = std::aligned_alloc(64, bytes ? bytes : 64);
    if (memory) std::memset(memory, 0, bytes);
    return (E *)memory;
}

/* A run of W prompts' worth of one (D, N1) prompt layout; W is the tile width. */
template <class E> struct Layout {
    int W, D, N1, r, n, L;
    E *at(E *Z, int i, int t) const { return Z + ((size_t)i * N1 + t) * W; }
    const E *at(const E *Z, int i, int t) const { return Z + ((size_t)i * N1 + t) * W; }
    size_t size() const { return (size_t)D * N1 * W; }
    size_t mat() const { return (size_t)D * r * W; }
};

/* The real-valued path: every step of the stack is a product of small matrices in each lane, run by one
 * register-blocked routine.
 *
 * One factor of a product over the lanes: element (i, j) of a matrix that either varies over the tile's
 * prompts (lanes: W values at p + (i si + j sj) W) or is shared by them (one value, scale p[i si + j sj]). */
template <class E> struct Operand {
    const E *p;
    int si, sj;
    bool shared;
    E scale;
};
template <class E> Operand<E> lanes(const E *p, int si, int sj) { return {p, si, sj, false, E(1)}; }
template <class E> Operand<E> shared(const E *p, int si, int sj, E scale = E(1)) {
    return {p, si, sj, true, scale};
}

/* Where a product goes: element (i, k) at p + (i si + k sk) W, starting from zero (init null) or from
 * the element at the same place in init (p itself: added to). */
template <class E> struct Target {
    E *p;
    int si, sk;
    const E *init;
};
template <class E> Target<E> set(E *p, int si, int sk) { return {p, si, sk, nullptr}; }
template <class E> Target<E> added(E *p, int si, int sk) { return {p, si, sk, p}; }
template <class E> Target<E> added_to(const E *init, E *p, int si, int sk) { return {p, si, sk, init}; }

/* The real-valued product, register-blocked: an IB x KB block of outputs for one vector of lanes stays
 * in registers while j runs, so each step loads IB + KB vectors for IB KB multiply-adds. */
template <class R> struct Lanes {
    static constexpr int width = 64 / sizeof(R);  // one AVX-512 register
    typedef R Vector __attribute__((vector_size(64)));
};
template <class R> inline typename Lanes<R>::Vector load(const R *p) {
    typename Lanes<R>::Vector v;
    std::memcpy(&v, __builtin_assume_aligned(p, 64), sizeof v);
    return v;
}
template <class R> inline void store(R *p, const typename Lanes<R>::Vector &v) {
    std::memcpy(__builtin_assume_aligned(p, 64), &v, sizeof v);
}

template <class R, int IB, int KB, bool AS, bool BS>
void product_block(int W, int i0, int k0, int J, const Operand<R> &A, const Operand<R> &B, const Target<R> &out) {
    using V = typename Lanes<R>::Vector;
    constexpr int VL = Lanes<R>::width;
    for (int l = 0; l < W; l += VL) {
        V c[IB][KB];
#pragma GCC unroll 8
        for (int ii = 0; ii < IB; ii++)
#pragma GCC unroll 8
            for (int kk = 0; kk < KB; kk++)
                c[ii][kk] = out.init ? load(out.init + ((size_t)(i0 + ii) * out.si + (size_t)(k0 + kk) * out.sk) * W + l)
                                     : V{};
        for (int j = 0; j < J; j++) {
            V a[IB], b[KB];
#pragma GCC unroll 8
            for (int ii = 0; ii < IB; ii++) {
                const size_t at = (size_t)(i0 + ii) * A.si + (size_t)j * A.sj;
                if constexpr (AS) a[ii] = V{} + A.scale * A.p[at];
                else a[ii] = load(A.p + at * W + l);
            }
#pragma GCC unroll 8
            for (int kk = 0; kk < KB; kk++) {
                const size_t at = (size_t)j * B.si + (size_t)(k0 + kk) * B.sj;
                if constexpr (BS) b[kk] = V{} + B.scale * B.p[at];
                else b[kk] = load(B.p + at * W + l);
            }
#pragma GCC unroll 8
            for (int ii = 0; ii < IB; ii++)
#pragma GCC unroll 8
                for (int kk = 0; kk < KB; kk++) c[ii][kk] += a[ii] * b[kk];
        }
#pragma GCC unroll 8
        for (int ii = 0; ii < IB; ii++)
#pragma GCC unroll 8
            for (int kk = 0; kk < KB; kk++)
                store(out.p + ((size_t)(i0 + ii) * out.si + (size_t)(k0 + kk) * out.sk) * W + l, c[ii][kk]);
    }
}

/* Output blocks of up to BLOCK_I x BLOCK_K: BLOCK_I BLOCK_K accumulators and BLOCK_I + BLOCK_K
 * factors of the 32 vector registers. */
constexpr int BLOCK_I = 5, BLOCK_K = 5;  // measured against 4x4, 3x4, 4x3, 2x8, 6x4, 3x6, 5x4, 6x5, 8x3, 6x3, 7x4

/* Columns k0.. of rows i0..i0+IB-1, in blocks of KB columns, then of fewer for the rest. */
template <class R, int IB, int KB, bool AS, bool BS>
void product_row(int W, int i0, int k0, int J, int K, const Operand<R> &A, const Operand<R> &B, const Target<R> &out) {
    for (; k0 + KB <= K; k0 += KB) product_block<R, IB, KB, AS, BS>(W, i0, k0, J, A, B, out);
    if constexpr (KB > 1)
        if (k0 < K) product_row<R, IB, KB - 1, AS, BS>(W, i0, k0, J, K, A, B, out);
}

/* Rows i0.. in blocks of IB rows, then of fewer for the rest. */
template <class R, int IB, bool AS, bool BS>
void product_rows(int W, int i0, int I, int J, int K, const Operand<R> &A, const Operand<R> &B, const Target<R> &out) {
    for (; i0 + IB <= I; i0 += IB) product_row<R, IB, BLOCK_K, AS, BS>(W, i0, 0, J, K, A, B, out);
    if constexpr (IB > 1)
        if (i0 < I) product_rows<R, IB - 1, AS, BS>(W, i0, I, J, K, A, B, out);
}

template <class R, bool AS, bool BS>
void product_blocks(int W, int I, int J, int K, const Operand<R> &A, const Operand<R> &B, const Target<R> &out) {
    product_rows<R, BLOCK_I, AS, BS>(W, 0, I, J, K, A, B, out);
}

/* out(i, k) (= or +=) sum_{j < J} A(i, j) B(j, k) for i < I, k < K in every lane (W a multiple of the
 * vector width), each element's terms added in order of j: the same values as the loops it replaces,
 * however the work is blocked. */
template <class R>
void product(int W, int I, int J, int K, const Operand<R> &A, const Operand<R> &B, const Target<R> &out) {
    if (A.shared) product_blocks<R, true, false>(W, I, J, K, A, B, out);
    else if (B.shared) product_blocks<R, false, true>(W, I, J, K, A, B, out);
    else product_blocks<R, false, false>(W, I, J, K, A, B, out);
}

/* What the backward pass reads: each layer's input Z (L layouts), then S, PS and K of each hidden
 * layer (3 (L-1) matrices of D x r). */
template <class E> size_t saved_size(const Layout<E> &s) { return s.L * s.size() + 3 * (s.L - 1) * s.mat(); }

/* Last layer, entry (D-1, N1-1) only: v = p C (n x W), sv = v Xc^T (r x W), kv = sv Qc / n (r x W). */
template <class R>
void lanes_last_layer(const Layout<R> &s, const R *Z, const R *p, const R *Qc, R *v, R *sv, R *kv) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n;
    product(W, 1, D, n, shared(p, 0, 1), lanes(Z, N1, 1), set(v, 0, 1));                   /* v = p C */
    product(W, 1, n, r, lanes(v, 0, 1), lanes(Z, 1, N1), set(sv, 0, 1));                   /* sv = v Xc^T */
    product(W, 1, r, r, lanes(sv, 0, 1), shared(Qc, r, 1, R(1) / n), set(kv, 0, 1));       /* kv = sv Qc / n */
}

/* Forward through every layer, filling ``saved`` (saved_size elements); yhat has W entries. */
template <class R>
bool lanes_forward(const Layout<R> &s, const R *P, const R *Qc, R *saved, R *yhat) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    R *work = allocate<R>((size_t)(n + 2 * r) * W);
    if (!work) return false;
    R *v = work, *sv = v + (size_t)n * W, *kv = sv + (size_t)r * W;
    R *Zs = saved, *mats = saved + L * s.size();
    for (int l = 0; l < L - 1; l++) {
        const R *Z = Zs + l * s.size(), *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        R *S = mats + 3 * l * s.mat(), *PS = S + s.mat(), *Km = PS + s.mat();
        product(W, D, n, r, lanes(Z, N1, 1), lanes(Z, 1, N1), set(S, r, 1));               /* S = C X^T */
        product(W, D, D, r, shared(Pl, D, 1), lanes(S, r, 1), set(PS, r, 1));              /* PS = P S */
        product(W, D, r, r, lanes(PS, r, 1), shared(Ql, r, 1, R(1) / n), set(Km, r, 1));   /* K = PS Qc / n */
        product(W, D, r, N1, lanes(Km, r, 1), lanes(Z, N1, 1), added_to(Z, Zs + (l + 1) * s.size(), N1, 1));
    }
    const R *Z = Zs + (size_t)(L - 1) * s.size();
    lanes_last_layer(s, Z, P + (L - 1) * D * D + (D - 1) * D, Qc + (L - 1) * r * r, v, sv, kv);
    const R *zq = s.at(Z, D - 1, N1 - 1);
    for (int b = 0; b < W; b++) yhat[b] = -zq[b];
    for (int m = 0; m < r; m++) {
        const R *km = kv + (size_t)m * W, *q = s.at(Z, m, N1 - 1);
        for (int b = 0; b < W; b++) yhat[b] += -km[b] * q[b];
    }
    std::free(work);
    return true;
}

/* totals[e] += sum over the lanes of sums[e][:] for e < count: a running sum in double, in lane order,
 * carried across the sub-tiles of a tile (see add_totals): the gradient sums up to 1e5 prompts. */
template <class R> void add_lane_sums(int W, int count, const R *sums, double *totals) {
    for (int e = 0; e < count; e++)
        for (int b = 0; b < W; b++) totals[e] += sums[(size_t)e * W + b];
}

/* dP and dQc += a tile's totals (lanes_backward's order: dP (L, D, D), then dQc (L, r, r)), each
 * rounded to R and scaled by 1/n but for the last layer's P;
 * then the totals start again from zero. */
template <class R> void add_totals(int D, int r, int n, int L, double *totals, R *dP, R *dQc) {
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r, last = (size_t)(L - 1) * D * D;
    for (size_t e = 0; e < nP; e++) dP[e] += (e < last ? R(1) / n : R(1)) * (R)totals[e];
    for (size_t e = 0; e < nQ; e++) dQc[e] += R(1) / n * (R)totals[nP + e];
    std::memset(totals, 0, sizeof(double) * (nP + nQ));
}

/* Backward from gy = dLoss/dyhat, each step a register-blocked product; the sums of dP and dQc over
 * the lanes go to totals (see add_totals). dZ ends holding dLoss/dZ0 when input_grad is set; without
 * it the first layer's share of dZ, which no parameter gradient reads, is skipped. */
template <class R>
bool lanes_backward(const Layout<R> &s, const R *saved, const R *P, const R *Qc, const R *gy, R *dZ,
                    double *totals, bool input_grad) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    const size_t size = s.size(), mat = s.mat();
    R *work = allocate<R>(4 * mat + (size_t)(2 * n + 4 * r + 1 + D * D) * W + size);
    if (!work) return false;
    const R *Zs = saved, *mats = saved + L * size;
    R *dK = work, *SQ = dK + mat, *T = SQ + mat, *dS = T + mat, *v = dS + mat, *dv = v + (size_t)n * W;
    R *sv = dv + (size_t)n * W, *kv = sv + (size_t)r * W, *dk = kv + (size_t)r * W, *u = dk + (size_t)r * W;
    R *g = u + (size_t)r * W, *sums = g + W, *G = sums + (size_t)D * D * W;
    double *dP = totals, *dQc = totals + (size_t)L * D * D;
    zero(dZ, size);

    /* Last layer, entry (D-1, N1-1) only. */
    const R *Z = Zs + (size_t)(L - 1) * size;
    const R *p = P + (L - 1) * D * D + (D - 1) * D, *Q = Qc + (L - 1) * r * r;
    lanes_last_layer(s, Z, p, Q, v, sv, kv);
    for (int b = 0; b < W; b++) g[b] = -gy[b];
    for (int b = 0; b < W; b++) s.at(dZ, D - 1, N1 - 1)[b] = g[b];
    for (int m = 0; m < r; m++) {
        R *o = s.at(dZ, m, N1 - 1), *dkm = dk + (size_t)m * W;
        const R *km = kv + (size_t)m * W, *q = s.at(Z, m, N1 - 1);
        for (int b = 0; b < W; b++) {
            o[b] += g[b] * km[b];
            dkm[b] = g[b] * q[b];
        }
    }
    product(W, r, 1, r, lanes(sv, 1, 0), lanes(dk, 0, 1), set(sums, r, 1));                /* sv dk^T */
    add_lane_sums(W, r * r, sums, dQc + (L - 1) * r * r);
    product(W, 1, r, r, lanes(dk, 0, 1), shared(Q, 1, r, R(1) / n), set(u, 0, 1));          /* u = dk Qc^T / n */
    product(W, 1, r, n, lanes(u, 0, 1), lanes(Z, N1, 1), set(dv, 0, 1));                    /* dv = u Xc */
    product(W, r, 1, n, lanes(u, 1, 0), lanes(v, 0, 1), added(dZ, N1, 1));                  /* dZ[:r, :n] += u v */
    product(W, 1, n, D, lanes(dv, 0, 1), lanes(Z, 1, N1), set(sums, 0, 1));                  /* dv C^T */
    add_lane_sums(W, D, sums, dP + (L - 1) * D * D + (D - 1) * D);
    product(W, D, 1, n, shared(p, 1, 0), lanes(dv, 0, 1), added(dZ, N1, 1));                /* dZ[:, :n] += p^T dv */

    /* Hidden layers, last to first. G holds d Z_{l+1}; dZ becomes d Z_l. */
    for (int l = L - 2; l >= 0; l--) {
        Z = Zs + (size_t)l * size;
        const R *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        const R *S = mats + 3 * l * mat, *PS = S + mat, *Km = PS + mat;
        std::memcpy(G, dZ, sizeof(R) * size);
        product(W, D, N1, r, lanes(G, N1, 1), lanes(Z, 1, N1), set(dK, r, 1));              /* dK = G X^T */
        product(W, D, r, r, lanes(S, r, 1), shared(Ql, r, 1), set(SQ, r, 1));              /* SQ = S Qc */
        product(W, D, r, D, lanes(dK, r, 1), lanes(SQ, 1, r), set(sums, D, 1));             /* dK SQ^T */
        add_lane_sums(W, D * D, sums, dP + l * D * D);
        product(W, r, D, r, lanes(PS, 1, r), lanes(dK, r, 1), set(sums, r, 1));             /* PS^T dK */
        add_lane_sums(W, r * r, sums, dQc + l * r * r);
        if (l == 0 && !input_grad) break;
        product(W, D, D, r, shared(Pl, 1, D), lanes(dK, r, 1), set(T, r, 1));               /* T = P^T dK */
        product(W, D, r, r, lanes(T, r, 1), shared(Ql, 1, r, R(1) / n), set(dS, r, 1));    /* dS = T Qc^T / n */
        product(W, r, D, N1, lanes(Km, 1, r), lanes(G, N1, 1), added(dZ, N1, 1));           /* dZ[:r] += K^T G */
        product(W, D, r, n, lanes(dS, r, 1), lanes(Z, N1, 1), added(dZ, N1, 1));            /* dZ[:, :n] += dS Xc */
        product(W, r, D, n, lanes(dS, 1, r), lanes(Z, N1, 1), added(dZ, N1, 1));            /* dZ[:r, :n] += dS^T C */
    }
    std::free(work);
    return true;
}

/* Training prompts are taken TILE at a time: the gradient's sums over prompts are rounded to R once
 * per tile (its summation order). Each tile is computed in sub-tiles of LANE_WIDTH prompts, so that a
 * sub-tile's saved layers stay in cache; the running sums in double carry over between them. */
constexpr int TILE = 64;

int tiles(int B) { return (B + TILE - 1) / TILE; }

constexpr int LANE_WIDTH = 16;  // one float32 vector, two of float64: measured best for both at W = 16, 32, 64
static_assert(TILE % LANE_WIDTH == 0 && LANE_WIDTH % Lanes<double>::width == 0 && LANE_WIDTH % Lanes<float>::width == 0,
              "sub-tiles split a tile into whole vectors");

/* Copy prompts b0..b0+count-1 of Z (B, D, N1) into a tile (D, N1, W); pad with zeros. */
template <class R> void gather(const R *Z, int b0, int count, int D, int N1, int W, R *tile) {
    std::memset(tile, 0, sizeof(R) * D * N1 * W);
    for (int c = 0; c < count; c++) {
        const R *src = Z + (size_t)(b0 + c) * D * N1;
        for (int e = 0; e < D * N1; e++) tile[(size_t)e * W + c] = src[e];
    }
}

/* The prompts b0..b0+count-1 as a tile (D, N1, W), read from their covariates x (B, N1, D-1) and
 * labels y (B, N1) as the model's prompt(x, y) lays them out: rows x^T, then the labels with the
 * query's hidden (0). The same entries as gather from that prompt, without building it. y null: a
 * row of zeros (a tangent of the covariates alone: the labels are constants). */
template <class R> void gather_xy(const R *x, const R *y, int b0, int count, int D, int N1, int W, R *tile) {
    if (count < W) std::memset(tile, 0, sizeof(R) * D * N1 * W);  /* padded prompts stay 0 */
    const int d = D - 1;
    const size_t prompt = (size_t)N1 * d;
    const R *xb = x + (size_t)b0 * prompt;
    /* One tile row (entry e, all prompts) at a time: a contiguous store of strided loads. */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < N1; j++) {
            R *row = tile + ((size_t)i * N1 + j) * W;
            for (int c = 0; c < count; c++) row[c] = xb[c * prompt + (size_t)j * d + i];
        }
    if (!y) {
        zero(tile + (size_t)d * N1 * W, (size_t)N1 * W);
        return;
    }
    const R *yb = y + (size_t)b0 * N1;
    for (int j = 0; j < N1; j++) {
        R *row = tile + ((size_t)d * N1 + j) * W;
        for (int c = 0; c < count; c++) row[c] = j < N1 - 1 ? yb[(size_t)c * N1 + j] : R(0);
    }
}

/* The covariate rows (the first D-1) of a tile (D, N1, W) back to prompts b0..b0+count-1 of x
 * (B, N1, D-1): gather_xy's inverse for x. */
template <class R> void scatter_x(const R *tile, int b0, int count, int D, int N1, int W, R *x) {
    const int d = D - 1;
    const size_t prompt = (size_t)N1 * d;
    R *xb = x + (size_t)b0 * prompt;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < N1; j++) {
            const R *row = tile + ((size_t)i * N1 + j) * W;
            for (int c = 0; c < count; c++) xb[c * prompt + (size_t)j * d + i] = row[c];
        }
}

/* Copy a tile (D, N1, W) back to prompts b0..b0+count-1 of Z (B, D, N1): gather's inverse. */
template <class R> void scatter(const R *tile, int b0, int count, int D, int N1, int W, R *Z) {
    for (int c = 0; c < count; c++) {
        R *dst = Z + (size_t)(b0 + c) * D * N1;
        for (int e = 0; e < D * N1; e++) dst[e] = tile[(size_t)e * W + c];
    }
}

/* The prompts of B in sub-tile c of tile t (W wide), from prompt b0: count, at most W (0 past B). */
inline int sub_tile(int B, int t, int c, int W, int &b0) {
    b0 = t * TILE + c * W;
    return B - b0 < 0 ? 0 : B - b0 < W ? B - b0 : W;
}

/* Hessian-vector products for a few directions on the real-valued path: forward-over-reverse on
 * (value, tangent) pairs held as separate lane arrays, so that every step is a register-blocked
 * product over prompts (the training step's vectorization) rather than a loop over dual numbers.
 * The values are computed once and shared by the directions; each direction adds a tangent pass.
 *
 * A factor of a dual product: its value and, for direction k, its tangent at tangent + k stride
 * (tangent null: a constant, tangent zero). */
template <class R> struct DualOperand {
    Operand<R> value;
    const R *tangent;
    size_t stride;
    Operand<R> at(int k) const { return {tangent + k * stride, value.si, value.sj, value.shared, value.scale}; }
};
template <class R> DualOperand<R> dual_lanes(const R *p, const R *t, size_t stride, int si, int sj) {
    return {lanes(p, si, sj), t, stride};
}
template <class R>
DualOperand<R> dual_shared(const R *p, const R *t, size_t stride, int si, int sj, R scale = R(1)) {
    return {shared(p, si, sj, scale), t, stride};
}

/* Where a dual product goes: the value's target, and direction k's tangent at tangent + k stride
 * (added to the tangent at init + k stride when the value's target is added to; init null: set). */
template <class R> struct DualTarget {
    Target<R> value;
    R *tangent;
    const R *init;
    size_t stride;
    Target<R> at(int k) const {
        return {tangent + k * stride, value.si, value.sk, init ? init + k * stride : nullptr};
    }
};
template <class R> DualTarget<R> dual_set(R *p, R *t, size_t stride, int si, int sk) {
    return {set(p, si, sk), t, nullptr, stride};
}
template <class R> DualTarget<R> dual_added(R *p, R *t, size_t stride, int si, int sk) {
    return {added(p, si, sk), t, t, stride};
}

/* Direction k's tangent of A B (A' B + A B'), into target (set, or added to its init). */
template <class R>
void tangent_product(int W, int k, int I, int J, int K, const DualOperand<R> &A, const DualOperand<R> &B,
                     Target<R> target) {
    if (A.tangent) {
        product(W, I, J, K, A.at(k), B.value, target);
        target.init = target.p;
    }
    if (B.tangent) product(W, I, J, K, A.value, B.at(k), target);
}

/* out = A B (or out += A B) in value and in each of ``directions`` tangents; A or B has a tangent. */
template <class R>
void dual_product(int W, int directions, int I, int J, int K, const DualOperand<R> &A, const DualOperand<R> &B,
                  const DualTarget<R> &out) {
    product(W, I, J, K, A.value, B.value, out.value);
    for (int k = 0; k < directions; k++) tangent_product(W, k, I, J, K, A, B, out.at(k));
}

/* totals[k stride + e] += the sum over the lanes of direction k's tangent of (A B)[e] (e < I K, the
 * product laid out in ``sums`` by its target): the Hessian's rows need no value of dP and dQc. */
template <class R>
void tangent_sums(int W, int directions, int I, int J, int K, const DualOperand<R> &A, const DualOperand<R> &B,
                  const Target<R> &sums, double *totals, size_t stride) {
    for (int k = 0; k < directions; k++) {
        tangent_product(W, k, I, J, K, A, B, sums);
        add_lane_sums(W, I * K, sums.p, totals + k * stride);
    }
}

/* A value array of ``count`` elements followed by one tangent array of the same size per direction. */
template <class R> struct DualArray {
    R *v, *t;
    size_t stride;
};
template <class R> DualArray<R> carve(R *&memory, size_t count, int directions) {
    DualArray<R> a{memory, memory + count, count};
    memory += count * (1 + directions);
    return a;
}

/* Sizes of the sub-tile's dual working arrays, in elements of value (each also has its tangents). */
template <class R> size_t dual_work_size(const Layout<R> &s) {
    return saved_size(s) + 2 * s.size() + 4 * s.mat() + (size_t)(2 * s.n + 4 * s.r + 2) * s.W;
}

/* A feature map's side of a sub-tile's HVPs (la_hvp_features), from its first prompt on: the tangent of
 * the covariates (the features) in direction k at tx + k stride, and out, dLoss/dx at dx and its
 * tangent in direction k at tdx + k stride; each (count, N1, D-1) as x is laid out. */
template <class R> struct InputTangents {
    const R *tx;
    R *dx, *tdx;
    size_t stride;
};

/* The tangents of one sub-tile's loss gradient in (P, Qc), summed over its prompts into totals
 * (direction k's dP at k (nP + nQ), then its dQc), for W prompts already in saved's first layout.
 * inputs null: the prompts are constants (no feature map), and layer 0's tangents and the gradient
 * in the prompts are skipped. */
template <class R>
void dual_tile(const Layout<R> &s, int directions, int count, int B, const R *target, const R *P, const R *Qc,
               const R *tP, const R *tQc, R *memory, R *sums, double *totals,
               const InputTangents<R> *inputs = nullptr) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    const size_t size = s.size(), mat = s.mat(), nP = (size_t)L * D * D, nQ = (size_t)L * r * r;
    const size_t per_direction = nP + nQ;
    const DualArray<R> saved = carve(memory, saved_size(s), directions), dZ = carve(memory, size, directions),
                       G = carve(memory, size, directions), dK = carve(memory, mat, directions),
                       SQ = carve(memory, mat, directions), T = carve(memory, mat, directions),
                       dS = carve(memory, mat, directions), v = carve(memory, (size_t)n * W, directions),
                       dv = carve(memory, (size_t)n * W, directions), sv = carve(memory, (size_t)r * W, directions),
                       kv = carve(memory, (size_t)r * W, directions), dk = carve(memory, (size_t)r * W, directions),
                       u = carve(memory, (size_t)r * W, directions), g = carve(memory, (size_t)2 * W, directions);
    /* Layer l's input Z, then its S, PS and K, in value and tangents; layer 0's input is constant
     * without inputs. */
    auto Zv = [&](int l) { return saved.v + (size_t)l * size; };
    auto Zt = [&](int l) { return l || inputs ? saved.t + (size_t)l * size : nullptr; };
    auto mats = [&](const R *base, int l) { return base + (size_t)L * size + 3 * (size_t)l * mat; };
    const size_t st = saved.stride;
    if (inputs)
        for (int k = 0; k < directions; k++)
            gather_xy(inputs->tx + k * inputs->stride, (const R *)nullptr, 0, count, D, N1, W, saved.t + k * st);

    for (int l = 0; l < L - 1; l++) {
        const R *Z = Zv(l), *tZ = Zt(l), *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        R *S = (R *)mats(saved.v, l), *PS = S + mat, *Km = PS + mat;
        R *tS = (R *)mats(saved.t, l), *tPS = tS + mat, *tKm = tPS + mat;
        if (tZ) dual_product(W, directions, D, n, r, dual_lanes(Z, tZ, st, N1, 1), dual_lanes(Z, tZ, st, 1, N1),
                             dual_set(S, tS, st, r, 1));                                           /* S = C X^T */
        else product(W, D, n, r, lanes(Z, N1, 1), lanes(Z, 1, N1), set(S, r, 1));
        dual_product(W, directions, D, D, r, dual_shared(Pl, tP + l * D * D, nP, D, 1),
                     dual_lanes(S, tZ ? tS : nullptr, st, r, 1), dual_set(PS, tPS, st, r, 1));    /* PS = P S */
        dual_product(W, directions, D, r, r, dual_lanes(PS, tPS, st, r, 1),
                     dual_shared(Ql, tQc + l * r * r, nQ, r, 1, R(1) / n), dual_set(Km, tKm, st, r, 1)); /* K = PS Qc / n */
        dual_product(W, directions, D, r, N1, dual_lanes(Km, tKm, st, r, 1), dual_lanes(Z, tZ, st, N1, 1),
                     DualTarget<R>{added_to(Z, Zv(l + 1), N1, 1), Zt(l + 1), tZ, st});     /* Z' = Z + K X */
    }
    /* Last layer, entry (D-1, N1-1) only: v = p C, sv = v Xc^T, kv = sv Qc / n; yhat = -(z + kv . q). */
    const R *Z = Zv(L - 1), *tZ = Zt(L - 1);
    const R *p = P + (L - 1) * D * D + (D - 1) * D, *Q = Qc + (L - 1) * r * r;
    const R *tp = tP + (L - 1) * D * D + (D - 1) * D, *tQ = tQc + (L - 1) * r * r;
    dual_product(W, directions, 1, D, n, dual_shared(p, tp, nP, 0, 1), dual_lanes(Z, tZ, st, N1, 1),
                 dual_set(v.v, v.t, v.stride, 0, 1));
    dual_product(W, directions, 1, n, r, dual_lanes(v.v, v.t, v.stride, 0, 1), dual_lanes(Z, tZ, st, 1, N1),
                 dual_set(sv.v, sv.t, sv.stride, 0, 1));
    dual_product(W, directions, 1, r, r, dual_lanes(sv.v, sv.t, sv.stride, 0, 1),
                 dual_shared(Q, tQ, nQ, r, 1, R(1) / n), dual_set(kv.v, kv.t, kv.stride, 0, 1));
    /* The loss's gradient in yhat: g = -2 (yhat - target) / B, its tangent -2 yhat' / B (0 when padded). */
    const int D1 = D - 1, last = N1 - 1;
    for (int k = -1; k < directions; k++) {
        const size_t off = k < 0 ? 0 : (size_t)k * st;
        const R *z = (k < 0 ? saved.v : saved.t) + off + (size_t)(L - 1) * size;
        const R *kvk = k < 0 ? kv.v : kv.t + (size_t)k * kv.stride;
        R *gk = k < 0 ? g.v : g.t + (size_t)k * g.stride;
        for (int b = 0; b < W; b++) {
            R yhat = -z[((size_t)D1 * N1 + last) * W + b];
            for (int m = 0; m < r; m++) {
                const R q = Z[((size_t)m * N1 + last) * W + b], km = kv.v[(size_t)m * W + b];
                yhat -= k < 0 ? km * q : kvk[(size_t)m * W + b] * q + km * z[((size_t)m * N1 + last) * W + b];
            }
            const R error = b >= count ? R(0) : k < 0 ? yhat - target[b] : yhat;
            gk[b] = -(R(2) * error / B);  /* d/d(z + kv . q) of the loss */
        }
    }
    /* Backward, last layer: dZ[D-1, N1-1] = g, dZ[:r, N1-1] = g kv, dk = g q. */
    for (int k = -1; k < directions; k++) {
        R *o = k < 0 ? dZ.v : dZ.t + (size_t)k * dZ.stride, *dkk = k < 0 ? dk.v : dk.t + (size_t)k * dk.stride;
        const R *gk = k < 0 ? g.v : g.t + (size_t)k * g.stride, *kvk = k < 0 ? kv.v : kv.t + (size_t)k * kv.stride;
        const R *z = k < 0 ? nullptr : saved.t + (size_t)k * st + (size_t)(L - 1) * size;
        zero(o, size);
        for (int b = 0; b < W; b++) o[((size_t)D1 * N1 + last) * W + b] = gk[b];
        for (int m = 0; m < r; m++)
            for (int b = 0; b < W; b++) {
                const size_t at = ((size_t)m * N1 + last) * W + b, e = (size_t)m * W + b;
                const R q = Z[at];
                if (k < 0) {
                    o[at] += g.v[b] * kv.v[e];
                    dkk[e] = g.v[b] * q;
                } else {
                    o[at] += gk[b] * kv.v[e] + g.v[b] * kvk[e];
                    dkk[e] = gk[b] * q + g.v[b] * z[at];
                }
            }
    }
    double *tdP = totals, *tdQ = totals + nP;
    tangent_sums(W, directions, r, 1, r, dual_lanes(sv.v, sv.t, sv.stride, 1, 0), dual_lanes(dk.v, dk.t, dk.stride, 0, 1),
                 set(sums, r, 1), tdQ + (L - 1) * r * r, per_direction);                            /* sv dk^T */
    dual_product(W, directions, 1, r, r, dual_lanes(dk.v, dk.t, dk.stride, 0, 1), dual_shared(Q, tQ, nQ, 1, r, R(1) / n),
                 dual_set(u.v, u.t, u.stride, 0, 1));                                              /* u = dk Qc^T / n */
    dual_product(W, directions, 1, r, n, dual_lanes(u.v, u.t, u.stride, 0, 1), dual_lanes(Z, tZ, st, N1, 1),
                 dual_set(dv.v, dv.t, dv.stride, 0, 1));                                           /* dv = u Xc */
    dual_product(W, directions, r, 1, n, dual_lanes(u.v, u.t, u.stride, 1, 0), dual_lanes(v.v, v.t, v.stride, 0, 1),
                 dual_added(dZ.v, dZ.t, dZ.stride, N1, 1));                                        /* dZ[:r, :n] += u v */
    tangent_sums(W, directions, 1, n, D, dual_lanes(dv.v, dv.t, dv.stride, 0, 1), dual_lanes(Z, tZ, st, 1, N1),
                 set(sums, 0, 1), tdP + (L - 1) * D * D + (D - 1) * D, per_direction);             /* dv C^T */
    dual_product(W, directions, D, 1, n, dual_shared(p, tp, nP, 1, 0), dual_lanes(dv.v, dv.t, dv.stride, 0, 1),
                 dual_added(dZ.v, dZ.t, dZ.stride, N1, 1));                                        /* dZ[:, :n] += p^T dv */

    /* Hidden layers, last to first. G holds d Z_{l+1}; dZ becomes d Z_l (not needed below layer 0). */
    for (int l = L - 2; l >= 0; l--) {
        const R *Zl = Zv(l), *tZl = Zt(l), *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        const R *tPl = tP + l * D * D, *tQl = tQc + l * r * r;
        const R *S = mats(saved.v, l), *PS = S + mat, *Km = PS + mat;
        const R *tS = tZl ? mats(saved.t, l) : nullptr, *tPS = mats(saved.t, l) + mat, *tKm = tPS + mat;
        std::memcpy(G.v, dZ.v, sizeof(R) * size * (1 + directions));
        dual_product(W, directions, D, N1, r, dual_lanes(G.v, G.t, G.stride, N1, 1), dual_lanes(Zl, tZl, st, 1, N1),
                     dual_set(dK.v, dK.t, dK.stride, r, 1));                                       /* dK = G X^T */
        dual_product(W, directions, D, r, r, dual_lanes(S, tS, st, r, 1), dual_shared(Ql, tQl, nQ, r, 1),
                     dual_set(SQ.v, SQ.t, SQ.stride, r, 1));                                       /* SQ = S Qc */
        tangent_sums(W, directions, D, r, D, dual_lanes(dK.v, dK.t, dK.stride, r, 1),
                     dual_lanes(SQ.v, SQ.t, SQ.stride, 1, r), set(sums, D, 1), tdP + l * D * D, per_direction); /* dK SQ^T */
        tangent_sums(W, directions, r, D, r, dual_lanes(PS, tPS, st, 1, r), dual_lanes(dK.v, dK.t, dK.stride, r, 1),
                     set(sums, r, 1), tdQ + l * r * r, per_direction);                             /* PS^T dK */
        if (l == 0 && !inputs) break;
        dual_product(W, directions, D, D, r, dual_shared(Pl, tPl, nP, 1, D), dual_lanes(dK.v, dK.t, dK.stride, r, 1),
                     dual_set(T.v, T.t, T.stride, r, 1));                                          /* T = P^T dK */
        dual_product(W, directions, D, r, r, dual_lanes(T.v, T.t, T.stride, r, 1), dual_shared(Ql, tQl, nQ, 1, r, R(1) / n),
                     dual_set(dS.v, dS.t, dS.stride, r, 1));                                       /* dS = T Qc^T / n */
        dual_product(W, directions, r, D, N1, dual_lanes(Km, tKm, st, 1, r), dual_lanes(G.v, G.t, G.stride, N1, 1),
                     dual_added(dZ.v, dZ.t, dZ.stride, N1, 1));                                    /* dZ[:r] += K^T G */
        dual_product(W, directions, D, r, n, dual_lanes(dS.v, dS.t, dS.stride, r, 1), dual_lanes(Zl, tZl, st, N1, 1),
                     dual_added(dZ.v, dZ.t, dZ.stride, N1, 1));                                    /* dZ[:, :n] += dS Xc */
        dual_product(W, directions, r, D, n, dual_lanes(dS.v, dS.t, dS.stride, 1, r), dual_lanes(Zl, tZl, st, N1, 1),
                     dual_added(dZ.v, dZ.t, dZ.stride, N1, 1));                                    /* dZ[:r, :n] += dS^T C */
    }
    if (!inputs) return;
    scatter_x(dZ.v, 0, count, D, N1, W, inputs->dx);
    for (int k = 0; k < directions; k++)
        scatter_x(dZ.t + k * dZ.stride, 0, count, D, N1, W, inputs->tdx + k * inputs->stride);
}

/* Directions per pass of hvp_lanes: the values are shared by a pass's directions, and 8 directions'
 * working arrays still fit in the L2 cache (a full Hessian, L=3, d=5, 1000 prompts: 4 per pass 130 ms,
 * 6: 98, 8: 96, 12: 92; the dual numbers it replaces, 128 tangents a prompt: 153). */
constexpr int LANES_DIRECTIONS = 8;

/* Hessian-vector products for ``directions`` (a few) at once on the real-valued path: LANE_WIDTH prompts
 * at a time, the tangents' sums over all prompts carried in double and rounded once. tx (directions,
 * B, N1, D-1), the covariates' tangents, and dx, tdx: see InputTangents (all null without). */
template <class R>
int hvp_lanes(int B, int D, int N1, int r, int n, int L, const R *x, const R *y, const R *target, const R *P,
              const R *Qc, int directions, const R *tP, const R *tQc, R *HP, R *HQc, const R *tx = nullptr,
              R *dx = nullptr, R *tdx = nullptr) {
    const Layout<R> s{LANE_WIDTH, D, N1, r, n, L};
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r;
    R *memory = allocate<R>(dual_work_size(s) * (1 + directions) + (size_t)D * D * s.W);
    double *totals = allocate<double>((nP + nQ) * directions);
    if (!memory || !totals) return std::free(memory), std::free(totals), 1;
    R *sums = memory + dual_work_size(s) * (1 + directions);
    for (int b0 = 0; b0 < B; b0 += s.W) {
        const int count = B - b0 < s.W ? B - b0 : s.W;
        gather_xy(x, y, b0, count, D, N1, s.W, memory);  /* saved's first layout: the carve starts with it */
        const size_t at = (size_t)b0 * N1 * (D - 1);
        const InputTangents<R> inputs{tx ? tx + at : nullptr, tx ? dx + at : nullptr, tx ? tdx + at : nullptr,
                                      (size_t)B * N1 * (D - 1)};
        dual_tile(s, directions, count, B, target + b0, P, Qc, tP, tQc, memory, sums, totals, tx ? &inputs : nullptr);
    }
    const size_t last = (size_t)(L - 1) * D * D;
    for (int k = 0; k < directions; k++) {
        const double *t = totals + k * (nP + nQ);
        for (size_t e = 0; e < nP; e++) HP[k * nP + e] = (R)((e < last ? 1.0 / n : 1.0) * t[e]);
        for (size_t e = 0; e < nQ; e++) HQc[k * nQ + e] = (R)(t[nP + e] / n);
    }
    std::free(memory);
    std::free(totals);
    return 0;
}

template <class R>
int forward(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *P, const R *Qc, R *saved,
            R *yhat) {
    const Layout<R> s{LANE_WIDTH, D, N1, r, n, L};
    R *y = allocate<R>(s.W);
    if (!y) return 1;
    bool ok = true;
    for (int t = 0; t < tiles(B) && ok; t++)
        for (int c = 0, b0; c < TILE / s.W && ok; c++) {
            const int count = sub_tile(B, t, c, s.W, b0);
            R *tile_saved = saved + (size_t)(t * TILE / s.W + c) * saved_size(s);
            gather(Z0, b0, count, D, N1, s.W, tile_saved);
            ok = lanes_forward(s, P, Qc, tile_saved, y);
            std::memcpy(yhat + b0, y, sizeof(R) * count);
        }
    std::free(y);
    return ok ? 0 : 1;
}

template <class R>
int backward(int B, int D, int N1, int r, int n, int L, const R *saved, const R *P, const R *Qc,
             const R *gy, R *dZ, R *dP, R *dQc) {
    const Layout<R> s{LANE_WIDTH, D, N1, r, n, L};
    R *tile = allocate<R>(s.size() + s.W);
    double *totals = allocate<double>((size_t)L * (D * D + r * r));
    if (!tile || !totals) return std::free(tile), std::free(totals), 1;
    R *g = tile + s.size();
    std::memset(dP, 0, sizeof(R) * L * D * D);
    std::memset(dQc, 0, sizeof(R) * L * r * r);
    bool ok = true;
    for (int t = 0; t < tiles(B) && ok; t++) {
        for (int c = 0, b0; c < TILE / s.W && ok; c++) {
            const int count = sub_tile(B, t, c, s.W, b0);
            std::memset(g, 0, sizeof(R) * s.W);  /* padded prompts carry no gradient */
            std::memcpy(g, gy + b0, sizeof(R) * count);
            ok = lanes_backward(s, saved + (size_t)(t * TILE / s.W + c) * saved_size(s), P, Qc, g, tile, totals, true);
            scatter(tile, b0, count, D, N1, s.W, dZ);
        }
        add_totals(D, r, n, L, totals, dP, dQc);
    }
    std::free(tile);
    std::free(totals);
    return ok ? 0 : 1;
}

/* The mean squared error of B prompts and its gradient in one pass: each sub-tile's backward pass runs
 * right after its forward pass (the loss of a prompt depends on that prompt alone), while the
 * sub-tile's intermediate values are still in cache. dZ may be null (no gradient for the prompts).
 * target[b * target_stride] is prompt b's true query label. */
template <class R>
int loss_grad(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target, const R *P,
              const R *Qc, R *loss, R *dZ, R *dP, R *dQc, const R *x = nullptr, const R *y = nullptr,
              long target_stride = 1) {
    const Layout<R> s{LANE_WIDTH, D, N1, r, n, L};
    R *work = allocate<R>(saved_size(s) + s.size() + 2 * s.W);
    double *totals = allocate<double>((size_t)L * (D * D + r * r));
    if (!work || !totals) return std::free(work), std::free(totals), 1;
    R *saved = work, *tile = saved + saved_size(s), *yhat = tile + s.size(), *g = yhat + s.W;
    std::memset(dP, 0, sizeof(R) * L * D * D);
    std::memset(dQc, 0, sizeof(R) * L * r * r);
    double total = 0.0;
    bool ok = true;
    for (int t = 0; t < tiles(B) && ok; t++) {
        for (int c = 0, b0; c < TILE / s.W && ok; c++) {
            const int count = sub_tile(B, t, c, s.W, b0);
            if (Z0) gather(Z0, b0, count, D, N1, s.W, saved);
            else gather_xy(x, y, b0, count, D, N1, s.W, saved);
            ok = lanes_forward(s, P, Qc, saved, yhat);
            for (int k = 0; k < s.W; k++) {  /* padded prompts carry no gradient */
                const R error = k < count ? yhat[k] - target[(size_t)(b0 + k) * target_stride] : R(0);
                total += (double)error * error;
                g[k] = R(2) * error / B;
            }
            ok = ok && lanes_backward(s, saved, P, Qc, g, tile, totals, dZ != nullptr);
            if (dZ) scatter(tile, b0, count, D, N1, s.W, dZ);
        }
        add_totals(D, r, n, L, totals, dP, dQc);
    }
    *loss = (R)(total / B);
    std::free(work);
    std::free(totals);
    return ok ? 0 : 1;
}

/* The training step of a block-sparse model from its parameters B (L, d, d) and A (L, d, d) themselves:
 * P_l = [[B_l, 0], [0, 1]] is built here entry for entry as the model's attention_matrices builds it
 * (B + 0, so -0.0 becomes +0.0; zeros; the constant 1), Qc is A, and the labels of the queries are
 * read with their stride (y[:, -1] needs no copy). dLoss/dB (the top-left d x d block of dP) goes to
 * gB and dLoss/dA (dQc) to gA, added to what they hold when add_B / add_A (as autograd adds to a
 * .grad: one rounding, the same as torch's add_), else written. */
template <class R>
int loss_grad_block_sparse(int B, int d, int N1, int n, int L, long target_stride, int add_B, int add_A,
                           const R *x, const R *y, const R *target, const R *Bw, const R *A, R *loss, R *gB,
                           R *gA) {
    const int D = d + 1;
    const size_t nP = (size_t)L * D * D, nA = (size_t)L * d * d;
    R *P = allocate<R>(2 * nP + nA);
    if (!P) return 1;
    R *dP = P + nP, *dA = dP + nP;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++)
                P[((size_t)l * D + i) * D + j] = i < d && j < d ? Bw[((size_t)l * d + i) * d + j] + R(0)
                                                                : R(i == d && j == d ? 1 : 0);
    const int status = loss_grad(B, D, N1, d, n, L, (const R *)nullptr, target, P, A, loss, (R *)nullptr, dP, dA,
                                 x, y, target_stride);
    if (status == 0) {
        for (int l = 0; l < L; l++)
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) {
                    const R v = dP[((size_t)l * D + i) * D + j];
                    R &out = gB[((size_t)l * d + i) * d + j];
                    out = add_B ? out + v : v;
                }
        for (size_t k = 0; k < nA; k++) gA[k] = add_A ? gA[k] + dA[k] : dA[k];
    }
    std::free(P);
    return status;
}

/* Hessian-vector products H v_k (k < directions) of the mean squared error, in (P, Qc)
 * coordinates: tP (directions, L, D, D) and tQc (directions, L, r, r) in, HP and HQc out.
 * The prompts as gather_xy reads them: covariates x (B, N1, D-1), labels y (B, N1); target: (B,) true
 * query labels. With tx (a feature map's x, moved by its weights): the covariates' tangents tx
 * (directions, B, N1, D-1) in, dLoss/dx (B, N1, D-1) to dx and its tangents (as tx) to tdx. */
template <class R>
int hvp(int B, int D, int N1, int r, int n, int L, const R *x, const R *y, const R *target, const R *P,
        const R *Qc, int directions, const R *tP, const R *tQc, R *HP, R *HQc, const R *tx = nullptr,
        R *dx = nullptr, R *tdx = nullptr) {
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r, nx = (size_t)B * N1 * (D - 1);
    for (int k0 = 0; k0 < directions; k0 += LANES_DIRECTIONS) {
        const int count = directions - k0 < LANES_DIRECTIONS ? directions - k0 : LANES_DIRECTIONS;
        const int status = hvp_lanes(B, D, N1, r, n, L, x, y, target, P, Qc, count, tP + k0 * nP, tQc + k0 * nQ,
                                     HP + k0 * nP, HQc + k0 * nQ, tx ? tx + k0 * nx : nullptr, dx,
                                     tx ? tdx + k0 * nx : nullptr);
        if (status) return status;
    }
    return 0;
}

}  // namespace

/* The entry points, once per real type (R, suffix); la_saved_size counts elements of either. */
#define ENTRY_POINTS(R, suffix)                                                                       \
    int la_forward_##suffix(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *P,       \
                            const R *Qc, R *saved, R *yhat) {                                         \
        return forward(B, D, N1, r, n, L, Z0, P, Qc, saved, yhat);                                    \
    }                                                                                                 \
    int la_backward_##suffix(int B, int D, int N1, int r, int n, int L, const R *saved, const R *P,   \
                             const R *Qc, const R *gy, R *dZ, R *dP, R *dQc) {                        \
        return backward(B, D, N1, r, n, L, saved, P, Qc, gy, dZ, dP, dQc);                            \
    }                                                                                                 \
    int la_loss_grad_##suffix(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target, \
                              const R *P, const R *Qc, R *loss, R *dZ, R *dP, R *dQc) {               \
        return loss_grad(B, D, N1, r, n, L, Z0, target, P, Qc, loss, dZ, dP, dQc);                    \
    }                                                                                                 \
    int la_loss_grad_xy_##suffix(int B, int D, int N1, int r, int n, int L, const R *x, const R *y,    \
                                 const R *target, const R *P, const R *Qc, R *loss, R *dP, R *dQc) {   \
        return loss_grad(B, D, N1, r, n, L, (const R *)nullptr, target, P, Qc, loss, (R *)nullptr, dP,  \
                         dQc, x, y);                                                                  \
    }                                                                                                 \
    int la_loss_grad_block_sparse_##suffix(int B, int d, int N1, int n, int L, long target_stride,     \
                                           int add_B, int add_A, const R *x, const R *y,              \
                                           const R *target, const R *Bw, const R *A, R *loss, R *gB,  \
                                           R *gA) {                                                   \
        return loss_grad_block_sparse(B, d, N1, n, L, target_stride, add_B, add_A, x, y, target, Bw, A,  \
                                      loss, gB, gA);                                                  \
    }                                                                                                 \
    int la_hvp_##suffix(int B, int D, int N1, int r, int n, int L, const R *x, const R *y,            \
                        const R *target, const R *P, const R *Qc, int directions, const R *tP,        \
                        const R *tQc, R *HP, R *HQc) {                                                \
        return hvp(B, D, N1, r, n, L, x, y, target, P, Qc, directions, tP, tQc, HP, HQc);             \
    }                                                                                                 \
    int la_hvp_features_##suffix(int B, int D, int N1, int r, int n, int L, const R *x, const R *y,   \
                                 const R *target, const R *P, const R *Qc, int directions,            \
                                 const R *tP, const R *tQc, const R *tx, R *HP, R *HQc, R *dx,        \
                                 R *tdx) {                                                            \
        return hvp(B, D, N1, r, n, L, x, y, target, P, Qc, directions, tP, tQc, HP, HQc, tx, dx, tdx);  \
    }

extern "C" {

size_t la_saved_size(int B, int D, int N1, int r, int L) {
    return (size_t)tiles(B) * saved_size(Layout<float>{TILE, D, N1, r, 0, L});
}

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)

}  // extern "C"
