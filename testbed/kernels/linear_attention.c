/* Forward and backward of a stack of linear self-attention layers (see linear_attention.py for
 * the math and notation), for float32 prompts stored batch-innermost: Z[i][t][b] at
 * ((i * N1) + t) * B + b. Every inner loop runs over the batch, so it vectorizes without
 * reassociating any sum: results do not depend on the vector width for a given compiler.
 *
 * The public functions take prompts in torch's layout (B, D, N1) and work through the batch in
 * tiles of TILE prompts, transposed into that layout so that a tile's working set stays in the
 * L1/L2 caches. Sizes: D = d+1 rows, N1 = n+1 columns, r key rows (Q acts on Z[:r]), L layers.
 * P: (L, D, D), Qc: (L, r, r), row-major. The saved buffer holds each tile's layer inputs:
 * la_saved_size() floats.
 */
#include <stdlib.h>
#include <string.h>

#define AT(Z, i, t) ((Z) + ((size_t)(i) * N1 + (t)) * B)

/* out[i][k][:] = sum_{t < T} X[i][t][:] * Y[k][t][:]  for i < I, k < K */
static void gram(int B, int N1, int T, int I, int K, const float *X, const float *Y, float *out) {
    for (int i = 0; i < I; i++)
        for (int k = 0; k < K; k++) {
            float *o = out + ((size_t)i * K + k) * B;
            memset(o, 0, sizeof(float) * B);
            for (int t = 0; t < T; t++) {
                const float *x = AT(X, i, t), *y = AT(Y, k, t);
                for (int b = 0; b < B; b++) o[b] += x[b] * y[b];
            }
        }
}

/* out[i][k][:] = sum_j M[i][j] * S[j][k][:]  (M: I x J shared, S: J x K per prompt) */
static void left_mul(int B, int I, int J, int K, const float *M, int m_stride_i, int m_stride_j,
                     const float *S, float *out) {
    for (int i = 0; i < I; i++)
        for (int k = 0; k < K; k++) {
            float *o = out + ((size_t)i * K + k) * B;
            memset(o, 0, sizeof(float) * B);
            for (int j = 0; j < J; j++) {
                const float m = M[i * m_stride_i + j * m_stride_j];
                const float *s = S + ((size_t)j * K + k) * B;
                for (int b = 0; b < B; b++) o[b] += m * s[b];
            }
        }
}

/* out[i][m][:] = scale * sum_k S[i][k][:] * M[k][m]  (M: K x Mn shared, index via strides) */
static void right_mul(int B, int I, int K, int Mn, const float *S, const float *M, int m_stride_k,
                      int m_stride_m, float scale, float *out) {
    for (int i = 0; i < I; i++)
        for (int m = 0; m < Mn; m++) {
            float *o = out + ((size_t)i * Mn + m) * B;
            memset(o, 0, sizeof(float) * B);
            for (int k = 0; k < K; k++) {
                const float c = scale * M[k * m_stride_k + m * m_stride_m];
                const float *s = S + ((size_t)i * K + k) * B;
                for (int b = 0; b < B; b++) o[b] += c * s[b];
            }
        }
}

/* sum over the batch of a per-prompt vector; a fixed left-to-right order */
static float batch_sum(int B, const float *v) {
    double acc = 0.0;
    for (int b = 0; b < B; b++) acc += v[b];
    return (float)acc;
}

/* One hidden layer: S, PS = P S, K = PS Qc / n for input Z. */
static void layer_kernel(int B, int D, int N1, int r, int n, const float *Z, const float *P,
                         const float *Qc, float *S, float *PS, float *K) {
    gram(B, N1, n, D, r, Z, Z, S);
    left_mul(B, D, D, r, P, D, 1, S, PS);
    right_mul(B, D, r, r, PS, Qc, r, 1, 1.0f / n, K);
}

/* Last layer quantities: v = p C (n x B), s = v Xc^T (r x B), kv = s Qc / n (r x B). */
static void last_layer(int B, int D, int N1, int r, int n, const float *Z, const float *p,
                       const float *Qc, float *v, float *s, float *kv) {
    for (int t = 0; t < n; t++) {
        float *o = v + (size_t)t * B;
        memset(o, 0, sizeof(float) * B);
        for (int j = 0; j < D; j++) {
            const float *z = AT(Z, j, t);
            for (int b = 0; b < B; b++) o[b] += p[j] * z[b];
        }
    }
    for (int k = 0; k < r; k++) {
        float *o = s + (size_t)k * B;
        memset(o, 0, sizeof(float) * B);
        for (int t = 0; t < n; t++) {
            const float *z = AT(Z, k, t), *vt = v + (size_t)t * B;
            for (int b = 0; b < B; b++) o[b] += vt[b] * z[b];
        }
    }
    right_mul(B, 1, r, r, s, Qc, r, 1, 1.0f / n, kv);
}

static int tile_forward(int B, int D, int N1, int r, int n, int L, const float *Z0, const float *P,
                        const float *Qc, float *Zs, float *yhat) {
    float *S = malloc(sizeof(float) * 3 * D * r * B + sizeof(float) * (n + 2 * r) * B);
    if (!S) return 1;
    float *PS = S + (size_t)D * r * B, *K = PS + (size_t)D * r * B, *v = K + (size_t)D * r * B;
    float *s = v + (size_t)n * B, *kv = s + (size_t)r * B;
    const size_t size = (size_t)D * N1 * B;
    memcpy(Zs, Z0, sizeof(float) * size);
    for (int l = 0; l < L - 1; l++) {
        const float *Z = Zs + l * size;
        float *Zn = Zs + (l + 1) * size;
        layer_kernel(B, D, N1, r, n, Z, P + l * D * D, Qc + l * r * r, S, PS, K);
        memcpy(Zn, Z, sizeof(float) * size);
        for (int i = 0; i < D; i++)
            for (int k = 0; k < r; k++) {
                const float *kk = K + ((size_t)i * r + k) * B;
                for (int t = 0; t < N1; t++) {
                    float *o = AT(Zn, i, t);
                    const float *z = AT(Z, k, t);
                    for (int b = 0; b < B; b++) o[b] += kk[b] * z[b];
                }
            }
    }
    const float *Z = Zs + (size_t)(L - 1) * size;
    last_layer(B, D, N1, r, n, Z, P + (L - 1) * D * D + (D - 1) * D, Qc + (L - 1) * r * r, v, s, kv);
    const float *zq = AT(Z, D - 1, N1 - 1);
    for (int b = 0; b < B; b++) yhat[b] = zq[b];
    for (int m = 0; m < r; m++) {
        const float *km = kv + (size_t)m * B, *q = AT(Z, m, N1 - 1);
        for (int b = 0; b < B; b++) yhat[b] += km[b] * q[b];
    }
    for (int b = 0; b < B; b++) yhat[b] = -yhat[b];
    free(S);
    return 0;
}

static int tile_backward(int B, int D, int N1, int r, int n, int L, const float *Zs, const float *P,
                         const float *Qc, const float *gy, float *dZ, float *dP, float *dQc) {
    const size_t size = (size_t)D * N1 * B, mat = (size_t)D * r * B;
    float *work = malloc(sizeof(float) * (7 * mat + (size_t)(2 * n + 6 * r) * B + size));
    if (!work) return 1;
    float *S = work, *PS = S + mat, *K = PS + mat, *dK = K + mat, *SQ = dK + mat, *T = SQ + mat;
    float *dS = T + mat, *v = dS + mat, *dv = v + (size_t)n * B, *s = dv + (size_t)n * B;
    float *kv = s + (size_t)r * B, *g = kv + (size_t)r * B, *dk = g + (size_t)r * B;
    float *u = dk + (size_t)r * B, *tmp = u + (size_t)r * B, *G = tmp + (size_t)r * B;
    memset(dZ, 0, sizeof(float) * size);

    /* Last layer, entry (D-1, N1-1) only. */
    const float *Z = Zs + (size_t)(L - 1) * size;
    const float *p = P + (L - 1) * D * D + (D - 1) * D, *Q = Qc + (L - 1) * r * r;
    last_layer(B, D, N1, r, n, Z, p, Q, v, s, kv);
    for (int b = 0; b < B; b++) g[b] = -gy[b];
    for (int b = 0; b < B; b++) AT(dZ, D - 1, N1 - 1)[b] = g[b];
    for (int m = 0; m < r; m++) {
        float *o = AT(dZ, m, N1 - 1), *dkm = dk + (size_t)m * B;
        const float *km = kv + (size_t)m * B, *q = AT(Z, m, N1 - 1);
        for (int b = 0; b < B; b++) { o[b] += g[b] * km[b]; dkm[b] = g[b] * q[b]; }
    }
    for (int k = 0; k < r; k++)
        for (int m = 0; m < r; m++) {
            const float *sk = s + (size_t)k * B, *dkm = dk + (size_t)m * B;
            for (int b = 0; b < B; b++) tmp[b] = sk[b] * dkm[b];
            dQc[(L - 1) * r * r + k * r + m] += batch_sum(B, tmp) / n;
        }
    right_mul(B, 1, r, r, dk, Q, 1, r, 1.0f / n, u); /* u = dk Qc^T / n */
    for (int t = 0; t < n; t++) {
        float *o = dv + (size_t)t * B;
        memset(o, 0, sizeof(float) * B);
        for (int k = 0; k < r; k++) {
            const float *uk = u + (size_t)k * B, *z = AT(Z, k, t);
            for (int b = 0; b < B; b++) o[b] += uk[b] * z[b];
        }
    }
    for (int k = 0; k < r; k++)
        for (int t = 0; t < n; t++) {
            float *o = AT(dZ, k, t);
            const float *uk = u + (size_t)k * B, *vt = v + (size_t)t * B;
            for (int b = 0; b < B; b++) o[b] += uk[b] * vt[b];
        }
    for (int j = 0; j < D; j++) {
        memset(tmp, 0, sizeof(float) * B);
        for (int t = 0; t < n; t++) {
            const float *dvt = dv + (size_t)t * B, *z = AT(Z, j, t);
            for (int b = 0; b < B; b++) tmp[b] += dvt[b] * z[b];
        }
        dP[(L - 1) * D * D + (D - 1) * D + j] += batch_sum(B, tmp);
        for (int t = 0; t < n; t++) {
            float *o = AT(dZ, j, t);
            const float *dvt = dv + (size_t)t * B;
            for (int b = 0; b < B; b++) o[b] += p[j] * dvt[b];
        }
    }

    /* Hidden layers, last to first. G holds d Z_{l+1}; dZ becomes d Z_l. */
    for (int l = L - 2; l >= 0; l--) {
        Z = Zs + (size_t)l * size;
        const float *Pl = P + l * D * D, *Ql = Qc + l * r * r;
        memcpy(G, dZ, sizeof(float) * size);
        layer_kernel(B, D, N1, r, n, Z, Pl, Ql, S, PS, K);
        gram(B, N1, N1, D, r, G, Z, dK);                 /* dK = G X^T */
        right_mul(B, D, r, r, S, Ql, r, 1, 1.0f, SQ);      /* SQ = S Qc */
        for (int i = 0; i < D; i++)                       /* dP = sum_b dK SQ^T / n */
            for (int j = 0; j < D; j++) {
                memset(tmp, 0, sizeof(float) * B);
                for (int k = 0; k < r; k++) {
                    const float *a = dK + ((size_t)i * r + k) * B, *c = SQ + ((size_t)j * r + k) * B;
                    for (int b = 0; b < B; b++) tmp[b] += a[b] * c[b];
                }
                dP[l * D * D + i * D + j] += batch_sum(B, tmp) / n;
            }
        for (int k = 0; k < r; k++)                       /* dQc = sum_b PS^T dK / n */
            for (int m = 0; m < r; m++) {
                memset(tmp, 0, sizeof(float) * B);
                for (int i = 0; i < D; i++) {
                    const float *a = PS + ((size_t)i * r + k) * B, *c = dK + ((size_t)i * r + m) * B;
                    for (int b = 0; b < B; b++) tmp[b] += a[b] * c[b];
                }
                dQc[l * r * r + k * r + m] += batch_sum(B, tmp) / n;
            }
        left_mul(B, D, D, r, Pl, 1, D, dK, T);             /* T = P^T dK */
        right_mul(B, D, r, r, T, Ql, 1, r, 1.0f / n, dS);  /* dS = T Qc^T / n */
        for (int k = 0; k < r; k++)                        /* dZ[:r] += K^T G */
            for (int i = 0; i < D; i++) {
                const float *kk = K + ((size_t)i * r + k) * B;
                for (int t = 0; t < N1; t++) {
                    float *o = AT(dZ, k, t);
                    const float *gg = AT(G, i, t);
                    for (int b = 0; b < B; b++) o[b] += kk[b] * gg[b];
                }
            }
        for (int i = 0; i < D; i++)                        /* dZ[:, :n] += dS Xc */
            for (int k = 0; k < r; k++) {
                const float *ds = dS + ((size_t)i * r + k) * B;
                for (int t = 0; t < n; t++) {
                    float *o = AT(dZ, i, t);
                    const float *z = AT(Z, k, t);
                    for (int b = 0; b < B; b++) o[b] += ds[b] * z[b];
                }
            }
        for (int k = 0; k < r; k++)                        /* dZ[:r, :n] += dS^T C */
            for (int i = 0; i < D; i++) {
                const float *ds = dS + ((size_t)i * r + k) * B;
                for (int t = 0; t < n; t++) {
                    float *o = AT(dZ, k, t);
                    const float *z = AT(Z, i, t);
                    for (int b = 0; b < B; b++) o[b] += ds[b] * z[b];
                }
            }
    }
    free(work);
    return 0;
}

#define TILE 64

static int tiles(int B) { return (B + TILE - 1) / TILE; }

size_t la_saved_size(int B, int D, int N1, int L) { return (size_t)tiles(B) * L * D * N1 * TILE; }

/* Copy prompts b0..b0+count-1 of Z (B, D, N1) into tile (D, N1, TILE); pad with zeros. */
static void gather(const float *Z, int b0, int count, int D, int N1, float *tile) {
    memset(tile, 0, sizeof(float) * D * N1 * TILE);
    for (int c = 0; c < count; c++) {
        const float *src = Z + (size_t)(b0 + c) * D * N1;
        for (int e = 0; e < D * N1; e++) tile[(size_t)e * TILE + c] = src[e];
    }
}

int la_forward(int B, int D, int N1, int r, int n, int L, const float *Z0, const float *P,
               const float *Qc, float *saved, float *yhat) {
    const size_t per_tile = (size_t)L * D * N1 * TILE;
    float *tile = malloc(sizeof(float) * ((size_t)D * N1 * TILE + TILE));
    if (!tile) return 1;
    float *y = tile + (size_t)D * N1 * TILE;
    int status = 0;
    for (int t = 0; t < tiles(B) && !status; t++) {
        const int b0 = t * TILE, count = B - b0 < TILE ? B - b0 : TILE;
        gather(Z0, b0, count, D, N1, tile);
        status = tile_forward(TILE, D, N1, r, n, L, tile, P, Qc, saved + t * per_tile, y);
        memcpy(yhat + b0, y, sizeof(float) * count);
    }
    free(tile);
    return status;
}

int la_backward(int B, int D, int N1, int r, int n, int L, const float *saved, const float *P,
                const float *Qc, const float *gy, float *dZ, float *dP, float *dQc) {
    const size_t per_tile = (size_t)L * D * N1 * TILE;
    float *tile = malloc(sizeof(float) * ((size_t)D * N1 * TILE + TILE));
    if (!tile) return 1;
    float *g = tile + (size_t)D * N1 * TILE;
    memset(dP, 0, sizeof(float) * L * D * D);
    memset(dQc, 0, sizeof(float) * L * r * r);
    int status = 0;
    for (int t = 0; t < tiles(B) && !status; t++) {
        const int b0 = t * TILE, count = B - b0 < TILE ? B - b0 : TILE;
        memset(g, 0, sizeof(float) * TILE);  /* padded prompts carry no gradient */
        memcpy(g, gy + b0, sizeof(float) * count);
        status = tile_backward(TILE, D, N1, r, n, L, saved + t * per_tile, P, Qc, g, tile, dP, dQc);
        for (int c = 0; c < count; c++) {
            float *dst = dZ + (size_t)(b0 + c) * D * N1;
            for (int e = 0; e < D * N1; e++) dst[e] = tile[(size_t)e * TILE + c];
        }
    }
    free(tile);
    return status;
}
