/* Forward, backward and Hessian-vector products of a stack of linear self-attention layers (see
 * testbed/linear_attention.py for the math and notation).
 *
 * One algorithm over a real type R (float or double: the extern "C" entry points come in both,
 * suffixed _f32 and _f64), with prompts stored batch-innermost (Z[i][t][b] at ((i * N1) + t) * W + b):
 *  - for the training step (lanes_forward, lanes_backward) in real numbers, W prompts at a time:
 *    every step is a product of small matrices in each prompt, run by ``product``, which keeps a
 *    block of outputs for one vector of prompts in registers.
 *  - for second derivatives (tile_forward, tile_backward) in Dual<R, K>: a value with K tangents,
 *    one prompt at a time (W = 1), the inner loops vectorized over the tangents. Running the
 *    gradient computation on duals whose tangents are K directions in (P, Q) gives exactly the K
 *    Hessian-vector products (forward-over-reverse differentiation).
 * No size is fixed: every buffer is allocated from the sizes passed in.
 * Sizes: D = d+1 rows, N1 = n+1 columns, r key rows (Q acts on Z[:r]), L layers.
 * P: (L, D, D), Qc: (L, r, r), row-major.
 */
#include <cstdlib>
#include <cstring>

namespace {

template <class R, int K> struct Dual {
    R v;
    R t[K];
};

/* The real type under an element: R itself, or the value type of a dual. */
template <class E> struct RealOf { using type = E; };
template <class R, int K> struct RealOf<Dual<R, K>> { using type = R; };
template <class E> using Real = typename RealOf<E>::type;

/* Dual operations: o += a * b, o += a, c * a. */
template <class R, int K> inline void acc(Dual<R, K> &o, const Dual<R, K> &a, const Dual<R, K> &b) {
    o.v += a.v * b.v;
    for (int k = 0; k < K; k++) o.t[k] += a.t[k] * b.v + a.v * b.t[k];
}
template <class R, int K> inline void add(Dual<R, K> &o, const Dual<R, K> &a) {
    o.v += a.v;
    for (int k = 0; k < K; k++) o.t[k] += a.t[k];
}
template <class R, int K> inline Dual<R, K> scaled(R c, const Dual<R, K> &a) {
    Dual<R, K> r;
    r.v = c * a.v;
    for (int k = 0; k < K; k++) r.t[k] = c * a.t[k];
    return r;
}

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
 * register-blocked routine (duals keep the loops below: their tangents are the vectorized dimension).
 *
 * One factor of a product over the lanes: element (i, j) of a matrix that either varies over the tile's
 * prompts (lanes: W values at p + (i si + j sj) W) or is shared by them (one value, scale p[i si + j sj]). */
template <class E> struct Operand {
    const E *p;
    int si, sj;
    bool shared;
    Real<E> scale;
};
template <class E> Operand<E> lanes(const E *p, int si, int sj) { return {p, si, sj, false, Real<E>(1)}; }
template <class E> Operand<E> shared(const E *p, int si, int sj, Real<E> scale = Real<E>(1)) {
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

/* out[i][k][:] = sum_{t < T} X[i][t][:] * Y[k][t][:]  for i < I, k < K */
template <class E>
void gram(const Layout<E> &s, int T, int I, int Kc, const E *X, const E *Y, E *__restrict__ out) {
    const int W = s.W;
    for (int i = 0; i < I; i++)
        for (int k = 0; k < Kc; k++) {
            E *o = out + ((size_t)i * Kc + k) * W;
            zero(o, W);
            for (int t = 0; t < T; t++) {
                const E *x = s.at(X, i, t), *y = s.at(Y, k, t);
                for (int b = 0; b < W; b++) acc(o[b], x[b], y[b]);
            }
        }
}

/* out[i][k][:] = sum_j M(i, j) * S[j][k][:], M shared by the tile, indexed through strides */
template <class E>
void left_mul(int W, int I, int J, int Kc, const E *M, int si, int sj, const E *S, E *__restrict__ out) {
    for (int i = 0; i < I; i++)
        for (int k = 0; k < Kc; k++) {
            E *o = out + ((size_t)i * Kc + k) * W;
            zero(o, W);
            for (int j = 0; j < J; j++) {
                const E m = M[i * si + j * sj];  // a copy: stores to o cannot alias it
                const E *x = S + ((size_t)j * Kc + k) * W;
                for (int b = 0; b < W; b++) acc(o[b], m, x[b]);
            }
        }
}

/* out[i][m][:] = scale * sum_k S[i][k][:] * M(k, m) */
template <class E>
void right_mul(int W, int I, int Kc, int Mn, const E *S, const E *M, int sk, int sm, Real<E> scale,
               E *__restrict__ out) {
    for (int i = 0; i < I; i++)
        for (int m = 0; m < Mn; m++) {
            E *o = out + ((size_t)i * Mn + m) * W;
            zero(o, W);
            for (int k = 0; k < Kc; k++) {
                const E c = scaled(scale, M[k * sk + m * sm]);
                const E *x = S + ((size_t)i * Kc + k) * W;
                for (int b = 0; b < W; b++) acc(o[b], c, x[b]);
            }
        }
}

/* Sum over the tile of a per-prompt vector. */
template <class R, int K> inline Dual<R, K> tile_sum(int W, const Dual<R, K> *v) {
    Dual<R, K> total;
    zero(&total, 1);
    for (int b = 0; b < W; b++) add(total, v[b]);
    return total;
}

/* One hidden layer: S, PS = P S, K = PS Qc / n for input Z. */
template <class E>
void layer_kernel(const Layout<E> &s, const E *Z, const E *P, const E *Qc, E *S, E *PS, E *Km) {
    gram(s, s.n, s.D, s.r, Z, Z, S);
    left_mul(s.W, s.D, s.D, s.r, P, s.D, 1, S, PS);
    right_mul(s.W, s.D, s.r, s.r, PS, Qc, s.r, 1, Real<E>(1) / s.n, Km);
}

/* Last layer: v = p C (n x W), sv = v Xc^T (r x W), kv = sv Qc / n (r x W). */
template <class E>
void last_layer(const Layout<E> &s, const E *Z, const E *p, const E *Qc, E *v, E *sv, E *kv) {
    const int W = s.W;
    for (int t = 0; t < s.n; t++) {
        E *o = v + (size_t)t * W;
        zero(o, W);
        for (int j = 0; j < s.D; j++) {
            const E pj = p[j];
            const E *z = s.at(Z, j, t);
            for (int b = 0; b < W; b++) acc(o[b], pj, z[b]);
        }
    }
    for (int k = 0; k < s.r; k++) {
        E *o = sv + (size_t)k * W;
        zero(o, W);
        for (int t = 0; t < s.n; t++) {
            const E *z = s.at(Z, k, t), *vt = v + (size_t)t * W;
            for (int b = 0; b < W; b++) acc(o[b], vt[b], z[b]);
        }
    }
    right_mul(W, 1, s.r, s.r, sv, Qc, s.r, 1, Real<E>(1) / s.n, kv);
}

/* What the backward pass reads: each layer's input Z (L layouts), then S, PS and K of each hidden
 * layer (3 (L-1) matrices of D x r). */
template <class E> size_t saved_size(const Layout<E> &s) { return s.L * s.size() + 3 * (s.L - 1) * s.mat(); }

/* The real-valued path of tile_forward: the same steps, each a register-blocked product. */
template <class R>
void lanes_last_layer(const Layout<R> &s, const R *Z, const R *p, const R *Qc, R *v, R *sv, R *kv) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n;
    product(W, 1, D, n, shared(p, 0, 1), lanes(Z, N1, 1), set(v, 0, 1));                   /* v = p C */
    product(W, 1, n, r, lanes(v, 0, 1), lanes(Z, 1, N1), set(sv, 0, 1));                   /* sv = v Xc^T */
    product(W, 1, r, r, lanes(sv, 0, 1), shared(Qc, r, 1, R(1) / n), set(kv, 0, 1));       /* kv = sv Qc / n */
}

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
 * rounded to R and scaled by 1/n but for the last layer's P, as tile_backward adds its tile sums;
 * then the totals start again from zero. */
template <class R> void add_totals(int D, int r, int n, int L, double *totals, R *dP, R *dQc) {
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r, last = (size_t)(L - 1) * D * D;
    for (size_t e = 0; e < nP; e++) dP[e] += (e < last ? R(1) / n : R(1)) * (R)totals[e];
    for (size_t e = 0; e < nQ; e++) dQc[e] += R(1) / n * (R)totals[nP + e];
    std::memset(totals, 0, sizeof(double) * (nP + nQ));
}

/* The real-valued path of tile_backward: the same steps, each a register-blocked product; the sums of
 * dP and dQc over the lanes go to totals (see add_totals). */
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

/* Forward through every layer, filling ``saved`` (saved_size elements); yhat has W entries. */
template <class E>
bool tile_forward(const Layout<E> &s, const E *P, const E *Qc, E *saved, E *yhat) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, L = s.L;
    E *work = allocate<E>((size_t)(s.n + 2 * r) * W);
    if (!work) return false;
    E *v = work, *sv = v + (size_t)s.n * W, *kv = sv + (size_t)r * W;
    E *Zs = saved, *mats = saved + L * s.size();
    const size_t size = s.size();
    for (int l = 0; l < L - 1; l++) {
        const E *Z = Zs + l * size;
        E *Zn = Zs + (l + 1) * size;
        E *S = mats + 3 * l * s.mat(), *PS = S + s.mat(), *Km = PS + s.mat();
        layer_kernel(s, Z, P + l * D * D, Qc + l * r * r, S, PS, Km);
        std::memcpy(Zn, Z, sizeof(E) * size);
        for (int i = 0; i < D; i++)
            for (int k = 0; k < r; k++) {
                const E *kk = Km + ((size_t)i * r + k) * W;
                for (int t = 0; t < N1; t++) {
                    E *o = s.at(Zn, i, t);
                    const E *z = s.at(Z, k, t);
                    for (int b = 0; b < W; b++) acc(o[b], kk[b], z[b]);
                }
            }
    }
    const E *Z = Zs + (size_t)(L - 1) * size;
    last_layer(s, Z, P + (L - 1) * D * D + (D - 1) * D, Qc + (L - 1) * r * r, v, sv, kv);
    const E *zq = s.at(Z, D - 1, N1 - 1);
    for (int b = 0; b < W; b++) yhat[b] = scaled(Real<E>(-1), zq[b]);
    for (int m = 0; m < r; m++) {
        const E *km = kv + (size_t)m * W, *q = s.at(Z, m, N1 - 1);
        for (int b = 0; b < W; b++) acc(yhat[b], scaled(Real<E>(-1), km[b]), q[b]);
    }
    std::free(work);
    return true;
}

/* Backward from gy = dLoss/dyhat; dP and dQc are accumulated into. dZ is working space that ends
 * holding dLoss/dZ0 when input_grad is set; without it the first layer's share of dZ, a third of
 * the backward pass that no parameter gradient reads, is skipped (dP and dQc come out the same). */
template <class E>
bool tile_backward(const Layout<E> &s, const E *saved, const E *P, const E *Qc, const E *gy, E *dZ, E *dP, E *dQc,
                   bool input_grad) {
    const int W = s.W, D = s.D, N1 = s.N1, r = s.r, n = s.n, L = s.L;
    const size_t size = s.size(), mat = s.mat();
    E *work = allocate<E>(4 * mat + (size_t)(2 * n + 6 * r) * W + size);
    if (!work) return false;
    const E *Zs = saved, *mats = saved + L * size;
    E *dK = work, *SQ = dK + mat, *T = SQ + mat;
    E *dS = T + mat, *v = dS + mat, *dv = v + (size_t)n * W, *sv = dv + (size_t)n * W;
    E *kv = sv + (size_t)r * W, *g = kv + (size_t)r * W, *dk = g + (size_t)r * W;
    E *u = dk + (size_t)r * W, *tmp = u + (size_t)r * W, *G = tmp + (size_t)r * W;
    zero(dZ, size);

    /* Last layer, entry (D-1, N1-1) only. */
    const E *Z = Zs + (size_t)(L - 1) * size;
    const E *p = P + (L - 1) * D * D + (D - 1) * D, *Q = Qc + (L - 1) * r * r;
    last_layer(s, Z, p, Q, v, sv, kv);
    for (int b = 0; b < W; b++) g[b] = scaled(Real<E>(-1), gy[b]);
    for (int b = 0; b < W; b++) s.at(dZ, D - 1, N1 - 1)[b] = g[b];
    for (int m = 0; m < r; m++) {
        E *o = s.at(dZ, m, N1 - 1), *dkm = dk + (size_t)m * W;
        const E *km = kv + (size_t)m * W, *q = s.at(Z, m, N1 - 1);
        zero(dkm, W);
        for (int b = 0; b < W; b++) {
            acc(o[b], g[b], km[b]);
            acc(dkm[b], g[b], q[b]);
        }
    }
    for (int k = 0; k < r; k++)
        for (int m = 0; m < r; m++) {
            const E *sk = sv + (size_t)k * W, *dkm = dk + (size_t)m * W;
            zero(tmp, W);
            for (int b = 0; b < W; b++) acc(tmp[b], sk[b], dkm[b]);
            add(dQc[(L - 1) * r * r + k * r + m], scaled(Real<E>(1) / n, tile_sum(W, tmp)));
        }
    right_mul(W, 1, r, r, dk, Q, 1, r, Real<E>(1) / n, u); /* u = dk Qc^T / n */
    for (int t = 0; t < n; t++) {
        E *o = dv + (size_t)t * W;
        zero(o, W);
        for (int k = 0; k < r; k++) {
            const E *uk = u + (size_t)k * W, *z = s.at(Z, k, t);
            for (int b = 0; b < W; b++) acc(o[b], uk[b], z[b]);
        }
    }
    for (int k = 0; k < r; k++)
        for (int t = 0; t < n; t++) {
            E *o = s.at(dZ, k, t);
            const E *uk = u + (size_t)k * W, *vt = v + (size_t)t * W;
            for (int b = 0; b < W; b++) acc(o[b], uk[b], vt[b]);
        }
    for (int j = 0; j < D; j++) {
        zero(tmp, W);
        for (int t = 0; t < n; t++) {
            const E *dvt = dv + (size_t)t * W, *z = s.at(Z, j, t);
            for (int b = 0; b < W; b++) acc(tmp[b], dvt[b], z[b]);
        }
        add(dP[(L - 1) * D * D + (D - 1) * D + j], tile_sum(W, tmp));
        const E pj = p[j];
        for (int t = 0; t < n; t++) {
            E *o = s.at(dZ, j, t);
            const E *dvt = dv + (size_t)t * W;
            for (int b = 0; b < W; b++) acc(o[b], pj, dvt[b]);
        }
    }

    /* Hidden layers, last to first. G holds d Z_{l+1}; dZ becomes d Z_l. */
    for (int l = L - 2; l >= 0; l--) {
        Z = Zs + (size_t)l * size;
        const E *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        const E *S = mats + 3 * l * mat, *PS = S + mat, *Km = PS + mat;
        std::memcpy(G, dZ, sizeof(E) * size);
        gram(s, N1, D, r, G, Z, dK);                     /* dK = G X^T */
        right_mul(W, D, r, r, S, Ql, r, 1, Real<E>(1), SQ);     /* SQ = S Qc */
        for (int i = 0; i < D; i++)                       /* dP = sum dK SQ^T / n */
            for (int j = 0; j < D; j++) {
                zero(tmp, W);
                for (int k = 0; k < r; k++) {
                    const E *a = dK + ((size_t)i * r + k) * W, *c = SQ + ((size_t)j * r + k) * W;
                    for (int b = 0; b < W; b++) acc(tmp[b], a[b], c[b]);
                }
                add(dP[l * D * D + i * D + j], scaled(Real<E>(1) / n, tile_sum(W, tmp)));
            }
        for (int k = 0; k < r; k++)                       /* dQc = sum PS^T dK / n */
            for (int m = 0; m < r; m++) {
                zero(tmp, W);
                for (int i = 0; i < D; i++) {
                    const E *a = PS + ((size_t)i * r + k) * W, *c = dK + ((size_t)i * r + m) * W;
                    for (int b = 0; b < W; b++) acc(tmp[b], a[b], c[b]);
                }
                add(dQc[l * r * r + k * r + m], scaled(Real<E>(1) / n, tile_sum(W, tmp)));
            }
        if (l == 0 && !input_grad) break;
        left_mul(W, D, D, r, Pl, 1, D, dK, T);             /* T = P^T dK */
        right_mul(W, D, r, r, T, Ql, 1, r, Real<E>(1) / n, dS);  /* dS = T Qc^T / n */
        for (int k = 0; k < r; k++)                        /* dZ[:r] += K^T G */
            for (int i = 0; i < D; i++) {
                const E *kk = Km + ((size_t)i * r + k) * W;
                for (int t = 0; t < N1; t++) {
                    E *o = s.at(dZ, k, t);
                    const E *gg = s.at(G, i, t);
                    for (int b = 0; b < W; b++) acc(o[b], kk[b], gg[b]);
                }
            }
        for (int i = 0; i < D; i++)                        /* dZ[:, :n] += dS Xc */
            for (int k = 0; k < r; k++) {
                const E *ds = dS + ((size_t)i * r + k) * W;
                for (int t = 0; t < n; t++) {
                    E *o = s.at(dZ, i, t);
                    const E *z = s.at(Z, k, t);
                    for (int b = 0; b < W; b++) acc(o[b], ds[b], z[b]);
                }
            }
        for (int k = 0; k < r; k++)                        /* dZ[:r, :n] += dS^T C */
            for (int i = 0; i < D; i++) {
                const E *ds = dS + ((size_t)i * r + k) * W;
                for (int t = 0; t < n; t++) {
                    E *o = s.at(dZ, k, t);
                    const E *z = s.at(Z, i, t);
                    for (int b = 0; b < W; b++) acc(o[b], ds[b], z[b]);
                }
            }
    }
    std::free(work);
    return true;
}

/* Training prompts are taken TILE at a time: the gradient's sums over prompts are rounded to R once
 * per tile (its summation order). Each tile is computed in sub-tiles of LANE_WIDTH prompts, so that a
 * sub-tile's saved layers stay in cache; the running sums in double carry over between them. */
constexpr int TILE = 64;
constexpr int HVP_TILE = 16;

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
 * query's hidden (0). The same entries as gather from that prompt, without building it. */
template <class R> void gather_xy(const R *x, const R *y, int b0, int count, int D, int N1, int W, R *tile) {
    if (count < W) std::memset(tile, 0, sizeof(R) * D * N1 * W);  /* padded prompts stay 0 */
    const int d = D - 1;
    const size_t prompt = (size_t)N1 * d;
    const R *xb = x + (size_t)b0 * prompt, *yb = y + (size_t)b0 * N1;
    /* One tile row (entry e, all prompts) at a time: a contiguous store of strided loads. */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < N1; j++) {
            R *row = tile + ((size_t)i * N1 + j) * W;
            for (int c = 0; c < count; c++) row[c] = xb[c * prompt + (size_t)j * d + i];
        }
    for (int j = 0; j < N1; j++) {
        R *row = tile + ((size_t)d * N1 + j) * W;
        for (int c = 0; c < count; c++) row[c] = j < N1 - 1 ? yb[(size_t)c * N1 + j] : R(0);
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

/* Hessian-vector products of the mean squared error of B prompts for up to K directions at once,
 * W prompts at a time (W = 1 vectorizes over the K tangents; for K = 1, W > 1 over the prompts). */
template <class R, int K>
int hvp_chunk(int W, int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target,
              const R *P, const R *Qc, const R *tP, const R *tQc, int directions,
              R *HP, R *HQc) {
    using E = Dual<R, K>;
    const Layout<E> s{W, D, N1, r, n, L};
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r, prompt = (size_t)D * N1;
    E *buffer = allocate<E>(2 * (nP + nQ) + saved_size(s) + s.size() + 2 * (size_t)W);
    if (!buffer) return 1;
    E *dP_ = buffer, *dQ_ = dP_ + nP, *Pd = dQ_ + nQ, *Qd = Pd + nP, *Zs = Qd + nQ;
    E *dZ = Zs + saved_size(s), *yhat = dZ + s.size(), *gy = yhat + W;
    for (size_t e = 0; e < nP; e++) {  /* the tangents are the directions */
        Pd[e].v = P[e];
        for (int k = 0; k < directions; k++) Pd[e].t[k] = tP[(size_t)k * nP + e];
    }
    for (size_t e = 0; e < nQ; e++) {
        Qd[e].v = Qc[e];
        for (int k = 0; k < directions; k++) Qd[e].t[k] = tQc[(size_t)k * nQ + e];
    }
    bool ok = true;
    for (int b0 = 0; b0 < B && ok; b0 += W) {
        const int count = B - b0 < W ? B - b0 : W;
        zero(Zs, s.size());  /* padded prompts are zero: prediction 0, target 0, no gradient */
        for (int c = 0; c < count; c++)
            for (size_t e = 0; e < prompt; e++) Zs[e * W + c].v = Z0[(b0 + c) * prompt + e];
        ok = tile_forward(s, Pd, Qd, Zs, yhat);
        /* loss = mean (yhat - target)^2: gy = 2 (yhat - target) / B, tangents likewise */
        for (int c = 0; c < W; c++) {
            gy[c] = scaled(R(2) / B, yhat[c]);
            if (c < count) gy[c].v -= R(2) * target[b0 + c] / B;
        }
        ok = ok && tile_backward(s, Zs, Pd, Qd, gy, dZ, dP_, dQ_, false);
    }
    for (int k = 0; k < directions; k++) {
        for (size_t e = 0; e < nP; e++) HP[(size_t)k * nP + e] = dP_[e].t[k];
        for (size_t e = 0; e < nQ; e++) HQc[(size_t)k * nQ + e] = dQ_[e].t[k];
    }
    std::free(buffer);
    return ok ? 0 : 1;
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
 * sub-tile's intermediate values are still in cache. dZ may be null (no gradient for the prompts). */
template <class R>
int loss_grad(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target, const R *P,
              const R *Qc, R *loss, R *dZ, R *dP, R *dQc, const R *x = nullptr, const R *y = nullptr) {
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
                const R error = k < count ? yhat[k] - target[b0 + k] : R(0);
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

/* Hessian-vector products H v_k (k < directions) of the mean squared error, in (P, Qc)
 * coordinates: tP (directions, L, D, D) and tQc (directions, L, r, r) in, HP and HQc out.
 * Z0: (B, D, N1) prompts; target: (B,) true query labels. */
template <class R>
int hvp(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target, const R *P,
        const R *Qc, int directions, const R *tP, const R *tQc, R *HP, R *HQc) {
    const size_t nP = (size_t)L * D * D, nQ = (size_t)L * r * r;
    for (int k0 = 0; k0 < directions; k0 += 128) {
        const int count = directions - k0 < 128 ? directions - k0 : 128;
        const R *p = tP + k0 * nP, *q = tQc + k0 * nQ;
        R *hp = HP + k0 * nP, *hq = HQc + k0 * nQ;
        const int status =
            count == 1    ? hvp_chunk<R, 1>(HVP_TILE, B, D, N1, r, n, L, Z0, target, P, Qc, p, q, 1, hp, hq)
            : count <= 8  ? hvp_chunk<R, 8>(1, B, D, N1, r, n, L, Z0, target, P, Qc, p, q, count, hp, hq)
            : count <= 32 ? hvp_chunk<R, 32>(1, B, D, N1, r, n, L, Z0, target, P, Qc, p, q, count, hp, hq)
                          : hvp_chunk<R, 128>(1, B, D, N1, r, n, L, Z0, target, P, Qc, p, q, count, hp, hq);
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
    int la_hvp_##suffix(int B, int D, int N1, int r, int n, int L, const R *Z0, const R *target,      \
                        const R *P, const R *Qc, int directions, const R *tP, const R *tQc, R *HP,    \
                        R *HQc) {                                                                     \
        return hvp(B, D, N1, r, n, L, Z0, target, P, Qc, directions, tP, tQc, HP, HQc);               \
    }

extern "C" {

size_t la_saved_size(int B, int D, int N1, int r, int L) {
    return (size_t)tiles(B) * saved_size(Layout<float>{TILE, D, N1, r, 0, L});
}

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)

}  // extern "C"
