/* The MLP feature map of the model (testbed/model/transformer.py, FeatureMap) fused with the prompt
 * layout the linear-attention kernel reads, forward and backward.
 *
 * The feature map is a ReLU MLP applied to every token's covariates: x (B, N1, d) -> (B, N1, out).
 * Its matrices are tiny (d = 5, hidden 30) and the tokens many (B * N1 = 42,000), so BLAS spends
 * its time on the skinny shapes; here tokens are processed in chunks of T stored feature-major
 * (a[k][t]), so every inner loop is a vectorized pass over the chunk's tokens.
 *  - fm_prompt writes the prompt Z0 (B, D, N1), D = out + 1: the features of every token in rows
 *    0..out-1, the labels in row out, the query's label hidden (0).
 *  - fm_backward takes dLoss/dZ0 (B, D, N1) and returns the gradient of every weight and bias. It
 *    recomputes the chunk's activations instead of storing them (cheaper than the memory traffic).
 *  - Hessian-vector products (forward-over-reverse, a tangent per direction in the weights and biases,
 *    one direction at a time in each chunk): fm_tangents writes the features F (B, N1, out) and their
 *    tangents; fm_gradient_tangents takes dLoss/dF and its tangents (from the attention kernel's
 *    la_hvp_features) and returns the tangents of the weights' gradient. ReLU's second derivative is
 *    zero: the MLP's second-order terms are one layer's tangent times another's value.
 * Sums over tokens are taken in chunks of T, V lanes wide, each chunk's total added in double: a
 * fixed order, like the attention kernel's sums over prompts.
 * Layers: sizes[0..layers] (sizes[0] = d, sizes[layers] = out); W[l] (sizes[l+1], sizes[l]) and
 * b[l] (sizes[l+1]), row-major as in nn.Linear. Entry points come in float (_f32) and double (_f64).
 */
#include <cstdlib>
#include <cstring>

namespace {

constexpr int T = 128;  // tokens per chunk
constexpr int V = 16;   // lanes of a sum over tokens
static_assert(T % (4 * V) == 0, "a chunk is a whole number of four-block runs");

template <class R> R *allocate(size_t count) {
    const size_t bytes = (sizeof(R) * count + 63) / 64 * 64;
    void *memory = std::aligned_alloc(64, bytes ? bytes : 64);
    if (memory) std::memset(memory, 0, bytes);
    return (R *)memory;
}

/* The network's shape and parameters. */
template <class R> struct Net {
    int layers;
    const int *sizes;
    const R *const *W;
    const R *const *b;
    int widest() const {
        int m = 0;
        for (int l = 0; l <= layers; l++) m = sizes[l] > m ? sizes[l] : m;
        return m;
    }
    size_t activations() const {  // elements of every layer's chunk of activations, input included
        size_t total = 0;
        for (int l = 0; l <= layers; l++) total += (size_t)sizes[l] * T;
        return total;
    }
};

/* A chunk of count <= T tokens starting at token m0 = p * N1 + i (prompt p, column i). */
struct Chunk {
    size_t p;
    int i, count;
};

/* a[k][t] = x[m0 + t][k] for the chunk's tokens, 0 for the padding. */
template <class R> void gather_inputs(const R *x, int d, size_t m0, int count, R *a) {
    std::memset(a, 0, sizeof(R) * d * T);
    const R *xs = x + m0 * d;
    for (int t = 0; t < count; t++)
        for (int k = 0; k < d; k++) a[k * T + t] = xs[(size_t)t * d + k];
}

/* V values of R in a vector register (GCC/Clang vector extension): the sums below stay in
 * registers (written as loops over V, the compiler vectorized across k instead). */
template <class R> using Vec __attribute__((vector_size(V * sizeof(R)))) = R;
template <class R> inline Vec<R> load(const R *p) {
    Vec<R> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class R> inline void store(R *p, Vec<R> v) { std::memcpy(p, &v, sizeof v); }

/* o[j][:] = b[j] + sum_k W[j][k] a[k][:], then the ReLU unless it is the last layer. NaN passes
 * the ReLU as in torch (a diverged run must stay visible). Four V-wide blocks of tokens at a time:
 * four independent sums, so the adds do not wait on each other's latency. */
template <class R> void linear(int in, int out, const R *W, const R *b, const R *a, R *o, bool relu) {
    for (int t0 = 0; t0 < T; t0 += 4 * V)
        for (int j = 0; j < out; j++) {
            Vec<R> s0 = Vec<R>{} + b[j], s1 = s0, s2 = s0, s3 = s0;
            for (int k = 0; k < in; k++) {
                const R w = W[(size_t)j * in + k];
                const R *ak = a + (size_t)k * T + t0;
                s0 += w * load(ak), s1 += w * load(ak + V), s2 += w * load(ak + 2 * V), s3 += w * load(ak + 3 * V);
            }
            if (relu) {
                s0 = s0 < 0 ? Vec<R>{} : s0, s1 = s1 < 0 ? Vec<R>{} : s1;
                s2 = s2 < 0 ? Vec<R>{} : s2, s3 = s3 < 0 ? Vec<R>{} : s3;
            }
            R *oj = o + (size_t)j * T + t0;
            store<R>(oj, s0), store<R>(oj + V, s1), store<R>(oj + 2 * V, s2), store<R>(oj + 3 * V, s3);
        }
}

/* Every layer's activations of the chunk: acts holds layer 0 (the inputs, already gathered), then
 * each layer's output in turn. Returns the last layer's. */
template <class R> R *run_layers(const Net<R> &net, R *acts) {
    R *a = acts;
    for (int l = 0; l < net.layers; l++) {
        R *o = a + (size_t)net.sizes[l] * T;
        linear(net.sizes[l], net.sizes[l + 1], net.W[l], net.b[l], a, o, l + 1 < net.layers);
        a = o;
    }
    return a;
}

/* Visit the chunk's tokens in order: f(t, prompt, column). */
template <class F> void each_token(size_t p, int i, int count, int N1, F f) {
    for (int t = 0; t < count; t++) {
        f(t, p, i);
        if (++i == N1) i = 0, p++;
    }
}

/* lanes[s] += sum over the chunk's tokens t = s (mod V) of u[t] v[t] (u = null: of v[t]): a sum over
 * tokens kept V lanes wide, each chunk's share added in double. */
template <class R> void accumulate(const R *u, const R *v, double *lanes) {
    Vec<R> c0{}, c1{}, c2{}, c3{};  // four independent sums (see linear)
    for (int t = 0; t < T; t += 4 * V) {
        if (u) {
            c0 += load(u + t) * load(v + t), c1 += load(u + t + V) * load(v + t + V);
            c2 += load(u + t + 2 * V) * load(v + t + 2 * V), c3 += load(u + t + 3 * V) * load(v + t + 3 * V);
        } else {
            c0 += load(v + t), c1 += load(v + t + V), c2 += load(v + t + 2 * V), c3 += load(v + t + 3 * V);
        }
    }
    const Vec<R> chunk = (c0 + c1) + (c2 + c3);
    for (int s = 0; s < V; s++) lanes[s] += chunk[s];
}

/* gin[k][:] = (a[k][:] > 0) sum_j W[j][k] g[j][:]: the gradient at the ReLU output a of the layer
 * below, given the gradient g at this layer's output. */
template <class R> void backward_linear(int in, int out, const R *W, const R *g, const R *a, R *gin) {
    for (int t0 = 0; t0 < T; t0 += 4 * V)
        for (int k = 0; k < in; k++) {
            Vec<R> s0{}, s1{}, s2{}, s3{};  // four independent sums (see linear)
            for (int j = 0; j < out; j++) {
                const R w = W[(size_t)j * in + k];
                const R *gj = g + (size_t)j * T + t0;
                s0 += w * load(gj), s1 += w * load(gj + V), s2 += w * load(gj + 2 * V), s3 += w * load(gj + 3 * V);
            }
            const R *ak = a + (size_t)k * T + t0;
            R *gk = gin + (size_t)k * T + t0;
            store<R>(gk, load(ak) > 0 ? s0 : Vec<R>{}), store<R>(gk + V, load(ak + V) > 0 ? s1 : Vec<R>{});
            store<R>(gk + 2 * V, load(ak + 2 * V) > 0 ? s2 : Vec<R>{});
            store<R>(gk + 3 * V, load(ak + 3 * V) > 0 ? s3 : Vec<R>{});
        }
}

/* o[j][:] = tb[j] + sum_k tW[j][k] a[k][:] + sum_k W[j][k] ta[k][:] (ta null: without), the tangent
 * of a layer's output, then through the ReLU (zero where its output a_out is not > 0) when a_out is
 * set. */
template <class R>
void tangent_linear(int in, int out, const R *tW, const R *tb, const R *a, const R *W, const R *ta, const R *a_out,
                    R *o) {
    for (int t0 = 0; t0 < T; t0 += 4 * V)
        for (int j = 0; j < out; j++) {
            Vec<R> s0 = Vec<R>{} + tb[j], s1 = s0, s2 = s0, s3 = s0;
            for (int k = 0; k < in; k++) {
                const R w = tW[(size_t)j * in + k];
                const R *ak = a + (size_t)k * T + t0;
                s0 += w * load(ak), s1 += w * load(ak + V), s2 += w * load(ak + 2 * V), s3 += w * load(ak + 3 * V);
            }
            if (ta)
                for (int k = 0; k < in; k++) {
                    const R w = W[(size_t)j * in + k];
                    const R *ak = ta + (size_t)k * T + t0;
                    s0 += w * load(ak), s1 += w * load(ak + V), s2 += w * load(ak + 2 * V), s3 += w * load(ak + 3 * V);
                }
            R *oj = o + (size_t)j * T + t0;
            if (a_out) {
                const R *m = a_out + (size_t)j * T + t0;
                s0 = load(m) > 0 ? s0 : Vec<R>{}, s1 = load(m + V) > 0 ? s1 : Vec<R>{};
                s2 = load(m + 2 * V) > 0 ? s2 : Vec<R>{}, s3 = load(m + 3 * V) > 0 ? s3 : Vec<R>{};
            }
            store<R>(oj, s0), store<R>(oj + V, s1), store<R>(oj + 2 * V, s2), store<R>(oj + 3 * V, s3);
        }
}

/* gin[k][:] = (a[k][:] > 0) sum_j (W[j][k] tg[j][:] + tW[j][k] g[j][:]): the tangent of the gradient
 * at the layer's input, from the gradient g at its output and its tangent tg. */
template <class R>
void tangent_backward_linear(int in, int out, const R *W, const R *tW, const R *g, const R *tg, const R *a, R *gin) {
    for (int t0 = 0; t0 < T; t0 += 4 * V)
        for (int k = 0; k < in; k++) {
            Vec<R> s0{}, s1{}, s2{}, s3{};
            for (int j = 0; j < out; j++) {
                const R w = W[(size_t)j * in + k], tw = tW[(size_t)j * in + k];
                const R *gj = tg + (size_t)j * T + t0, *hj = g + (size_t)j * T + t0;
                s0 += w * load(gj) + tw * load(hj), s1 += w * load(gj + V) + tw * load(hj + V);
                s2 += w * load(gj + 2 * V) + tw * load(hj + 2 * V), s3 += w * load(gj + 3 * V) + tw * load(hj + 3 * V);
            }
            const R *ak = a + (size_t)k * T + t0;
            R *gk = gin + (size_t)k * T + t0;
            store<R>(gk, load(ak) > 0 ? s0 : Vec<R>{}), store<R>(gk + V, load(ak + V) > 0 ? s1 : Vec<R>{});
            store<R>(gk + 2 * V, load(ak + 2 * V) > 0 ? s2 : Vec<R>{});
            store<R>(gk + 3 * V, load(ak + 3 * V) > 0 ? s3 : Vec<R>{});
        }
}

double lane_sum(const double *lanes) {
    double total = 0.0;
    for (int s = 0; s < V; s++) total += lanes[s];
    return total;
}

template <class R>
int prompt(int B, int N1, const Net<R> &net, const R *x, const R *y, R *Z) {
    const int d = net.sizes[0], out = net.sizes[net.layers], D = out + 1;
    R *acts = allocate<R>(net.activations());
    if (!acts) return 1;
    const size_t tokens = (size_t)B * N1;
    for (size_t m0 = 0; m0 < tokens; m0 += T) {
        const int count = tokens - m0 < (size_t)T ? (int)(tokens - m0) : T;
        gather_inputs(x, d, m0, count, acts);
        const R *f = run_layers(net, acts);
        each_token(m0 / N1, (int)(m0 % N1), count, N1, [&](int t, size_t p, int i) {
            R *column = Z + p * D * N1 + i;
            for (int k = 0; k < out; k++) column[(size_t)k * N1] = f[(size_t)k * T + t];
        });
    }
    std::free(acts);
    for (size_t p = 0; p < (size_t)B; p++) {  // labels; the query's is hidden
        R *labels = Z + (p * D + out) * N1;
        std::memcpy(labels, y + p * N1, sizeof(R) * (N1 - 1));
        labels[N1 - 1] = 0;
    }
    return 0;
}

template <class R>
int backward(int B, int N1, const Net<R> &net, const R *x, const R *dZ, R *const *dW, R *const *db) {
    const int d = net.sizes[0], out = net.sizes[net.layers], D = out + 1, L = net.layers;
    size_t parameters = 0;
    for (int l = 0; l < L; l++) parameters += (size_t)net.sizes[l + 1] * (net.sizes[l] + 1);
    R *acts = allocate<R>(net.activations());
    R *g = allocate<R>((size_t)net.widest() * T), *gin = allocate<R>((size_t)net.widest() * T);
    double *total = allocate<double>(parameters * V);  // per layer: dW (out, in), then db (out), V lanes each
    if (!acts || !g || !gin || !total) {
        std::free(acts), std::free(g), std::free(gin), std::free(total);
        return 1;
    }
    const size_t tokens = (size_t)B * N1;
    for (size_t m0 = 0; m0 < tokens; m0 += T) {
        const int count = tokens - m0 < (size_t)T ? (int)(tokens - m0) : T;
        gather_inputs(x, d, m0, count, acts);
        run_layers(net, acts);
        std::memset(g, 0, sizeof(R) * out * T);  // the padding's gradient stays 0
        each_token(m0 / N1, (int)(m0 % N1), count, N1, [&](int t, size_t p, int i) {
            const R *column = dZ + p * D * N1 + i;
            for (int k = 0; k < out; k++) g[(size_t)k * T + t] = column[(size_t)k * N1];
        });
        double *layer_total = total + parameters * V;
        for (int l = L - 1; l >= 0; l--) {
            const int in = net.sizes[l], o = net.sizes[l + 1];
            const R *a = acts;
            for (int k = 0; k < l; k++) a += (size_t)net.sizes[k] * T;
            layer_total -= (size_t)o * (in + 1) * V;
            for (int j = 0; j < o; j++) {
                const R *gj = g + (size_t)j * T;
                for (int k = 0; k < in; k++) accumulate(gj, a + (size_t)k * T, layer_total + ((size_t)j * in + k) * V);
                accumulate<R>(nullptr, gj, layer_total + ((size_t)o * in + j) * V);
            }
            if (l == 0) break;
            backward_linear(in, o, net.W[l], g, a, gin);
            R *swap = g;
            g = gin, gin = swap;
        }
    }
    const double *layer_total = total;
    for (int l = 0; l < L; l++) {
        const size_t weights = (size_t)net.sizes[l + 1] * net.sizes[l];
        for (size_t e = 0; e < weights; e++) dW[l][e] = (R)lane_sum(layer_total + e * V);
        for (int j = 0; j < net.sizes[l + 1]; j++) db[l][j] = (R)lane_sum(layer_total + (weights + j) * V);
        layer_total += (weights + net.sizes[l + 1]) * V;
    }
    std::free(acts), std::free(g), std::free(gin), std::free(total);
    return 0;
}

/* Direction k's tangents of layer l's weight and bias in t (directions, parameters): each layer's
 * weight (out, in), then its bias, as the model flattens them. */
template <class R> struct LayerTangents {
    const R *t;
    size_t parameters;
    const int *sizes;
    const R *weight(int k, int l) const {
        const R *p = t + k * parameters;
        for (int i = 0; i < l; i++) p += (size_t)sizes[i + 1] * (sizes[i] + 1);
        return p;
    }
    const R *bias(int k, int l) const { return weight(k, l) + (size_t)sizes[l + 1] * sizes[l]; }
};

template <class R> size_t parameter_count(const Net<R> &net) {
    size_t parameters = 0;
    for (int l = 0; l < net.layers; l++) parameters += (size_t)net.sizes[l + 1] * (net.sizes[l] + 1);
    return parameters;
}

/* rows[m0 + t][k] = a[k][t] for the chunk's count tokens: gather_inputs' inverse. */
template <class R> void scatter_rows(const R *a, int width, size_t m0, int count, R *rows) {
    R *rs = rows + m0 * width;
    for (int t = 0; t < count; t++)
        for (int k = 0; k < width; k++) rs[(size_t)t * width + k] = a[k * T + t];
}

/* Direction k's tangent of every layer's output in one chunk: tacts laid out as acts (layer 0, the
 * inputs, has none: its slot is unused), from the chunk's values in acts. Returns the features'. */
template <class R> R *run_tangents(const Net<R> &net, const LayerTangents<R> &tangents, int k, const R *acts, R *tacts) {
    const R *a = acts, *ta = nullptr;
    R *to = tacts;
    for (int l = 0; l < net.layers; l++) {
        const size_t below = (size_t)net.sizes[l] * T;
        const bool hidden = l + 1 < net.layers;
        to += below;
        tangent_linear(net.sizes[l], net.sizes[l + 1], tangents.weight(k, l), tangents.bias(k, l), a, net.W[l], ta,
                       hidden ? a + below : nullptr, to);
        a += below, ta = to;
    }
    return to;
}

template <class R>
int tangents(int B, int N1, const Net<R> &net, const R *x, int directions, const R *t, R *F, R *tF) {
    const int d = net.sizes[0], out = net.sizes[net.layers];
    const LayerTangents<R> layer_tangents{t, parameter_count(net), net.sizes};
    R *acts = allocate<R>(2 * net.activations());
    if (!acts) return 1;
    R *tacts = acts + net.activations();
    const size_t tokens = (size_t)B * N1;
    for (size_t m0 = 0; m0 < tokens; m0 += T) {
        const int count = tokens - m0 < (size_t)T ? (int)(tokens - m0) : T;
        gather_inputs(x, d, m0, count, acts);
        scatter_rows(run_layers(net, acts), out, m0, count, F);
        for (int k = 0; k < directions; k++)
            scatter_rows(run_tangents(net, layer_tangents, k, acts, tacts), out, m0, count, tF + k * tokens * out);
    }
    std::free(acts);
    return 0;
}

template <class R>
int gradient_tangents(int B, int N1, const Net<R> &net, const R *x, int directions, const R *t, const R *dF,
                      const R *tdF, R *H) {
    const int d = net.sizes[0], out = net.sizes[net.layers], L = net.layers;
    const size_t parameters = parameter_count(net), tokens = (size_t)B * N1, widest = (size_t)net.widest() * T;
    const LayerTangents<R> layer_tangents{t, parameters, net.sizes};
    R *acts = allocate<R>(2 * net.activations() + (size_t)(L + 2) * widest);
    double *total = allocate<double>(parameters * V * directions);  // per direction, as fm_backward's
    if (!acts || !total) return std::free(acts), std::free(total), 1;
    R *tacts = acts + net.activations(), *g = tacts + net.activations(), *tg = g + (size_t)L * widest;
    R *tgin = tg + widest;
    for (size_t m0 = 0; m0 < tokens; m0 += T) {
        const int count = tokens - m0 < (size_t)T ? (int)(tokens - m0) : T;
        gather_inputs(x, d, m0, count, acts);
        run_layers(net, acts);
        /* The gradient at every layer's output (g + l widest), shared by the directions. */
        gather_inputs(dF, out, m0, count, g + (size_t)(L - 1) * widest);
        const R *input = acts + net.activations() - (size_t)out * T;
        for (int l = L - 1; l > 0; l--) {
            input -= (size_t)net.sizes[l] * T;
            backward_linear(net.sizes[l], net.sizes[l + 1], net.W[l], g + (size_t)l * widest, input,
                            g + (size_t)(l - 1) * widest);
        }
        for (int k = 0; k < directions; k++) {
            run_tangents(net, layer_tangents, k, acts, tacts);
            gather_inputs(tdF + k * tokens * out, out, m0, count, tg);
            const R *a = acts + net.activations() - (size_t)out * T, *ta = tacts + net.activations() - (size_t)out * T;
            double *layer_total = total + parameters * V * (k + 1);
            for (int l = L - 1; l >= 0; l--) {
                const int in = net.sizes[l], o = net.sizes[l + 1];
                a -= (size_t)in * T, ta -= (size_t)in * T;
                const R *gl = g + (size_t)l * widest;
                layer_total -= (size_t)o * (in + 1) * V;
                for (int j = 0; j < o; j++) {
                    const R *tgj = tg + (size_t)j * T, *gj = gl + (size_t)j * T;
                    for (int i = 0; i < in; i++) {
                        double *lanes = layer_total + ((size_t)j * in + i) * V;
                        accumulate(tgj, a + (size_t)i * T, lanes);
                        if (l > 0) accumulate(gj, ta + (size_t)i * T, lanes);  /* the inputs are data */
                    }
                    accumulate<R>(nullptr, tgj, layer_total + ((size_t)o * in + j) * V);
                }
                if (l == 0) break;
                tangent_backward_linear(in, o, net.W[l], layer_tangents.weight(k, l), gl, tg, a, tgin);
                R *swap = tg;
                tg = tgin, tgin = swap;
            }
        }
    }
    for (size_t e = 0; e < parameters * directions; e++) H[e] = (R)lane_sum(total + e * V);
    std::free(acts), std::free(total);
    return 0;
}

}  // namespace

#define ENTRY_POINTS(R, suffix)                                                                       \
    int fm_prompt_##suffix(int B, int N1, int layers, const int *sizes, const R *const *W,            \
                           const R *const *b, const R *x, const R *y, R *Z) {                         \
        return prompt(B, N1, Net<R>{layers, sizes, W, b}, x, y, Z);                                   \
    }                                                                                                 \
    int fm_backward_##suffix(int B, int N1, int layers, const int *sizes, const R *const *W,          \
                             const R *const *b, const R *x, const R *dZ, R *const *dW,                \
                             R *const *db) {                                                          \
        return backward(B, N1, Net<R>{layers, sizes, W, b}, x, dZ, dW, db);                           \
    }                                                                                                 \
    int fm_tangents_##suffix(int B, int N1, int layers, const int *sizes, const R *const *W,          \
                             const R *const *b, const R *x, int directions, const R *t, R *F,         \
                             R *tF) {                                                                 \
        return tangents(B, N1, Net<R>{layers, sizes, W, b}, x, directions, t, F, tF);                 \
    }                                                                                                 \
    int fm_gradient_tangents_##suffix(int B, int N1, int layers, const int *sizes,                    \
                                      const R *const *W, const R *const *b, const R *x,               \
                                      int directions, const R *t, const R *dF, const R *tdF, R *H) {  \
        return gradient_tangents(B, N1, Net<R>{layers, sizes, W, b}, x, directions, t, dF, tdF, H);   \
    }

extern "C" {
ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)
}  // extern "C"
