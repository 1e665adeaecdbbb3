/* Gradient clipping and the Adam/AdamW and SGD updates in one call each, with the arithmetic of the torch
 * tensor operations they replace (torch 2.13 on an AVX-512 CPU), element for element and rounding
 * for rounding, so that every result is the same bits:
 *   - the 2-norm (torch._foreach_norm, linalg.vector_norm): of one element its absolute value; else
 *     squares summed in 256-bit lanes (8 floats or 4 doubles, plain products and sums), the lanes
 *     folded left to right, then the remainder: in float a group of four plain products added in
 *     order, the rest fused multiply-adds;
 *   - element-wise operations (lerp, addcmul, add with alpha) use a fused multiply-add where ATen's
 *     vectorized loop does, and ATen's scalar remainder is compiled to the same fused operation;
 *   - the square root is MKL's vector function that torch calls (not always correctly rounded);
 *   - Python scalars are rounded to the element type first, as TensorIterator casts them.
 * Built with -ffp-contract=off: every fused multiply-add here is an explicit std::fma. */
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename T> constexpr int64_t LANES = 32 / sizeof(T);  // a 256-bit vector
template <typename T> constexpr int64_t PLAIN_REMAINDER = sizeof(T) == 4 ? 4 : 0;
constexpr int64_t MAX_TENSORS = 64;  // the per-tensor norms are kept on the stack (optimizer.py's too)

// linalg.vector_norm(x, 2) of n contiguous elements.
template <typename T>
T norm(const T* x, int64_t n) {
    if (n == 1) return std::abs(x[0]);  // torch's norm of one element: no square to overflow or underflow
    T lane[LANES<T>] = {};
    int64_t i = 0;
    for (; i + LANES<T> <= n; i += LANES<T>)
        for (int64_t j = 0; j < LANES<T>; j++) lane[j] = lane[j] + x[i + j] * x[i + j];
    T sum = lane[0];
    for (int64_t j = 1; j < LANES<T>; j++) sum = sum + lane[j];
    if (n - i >= PLAIN_REMAINDER<T> && PLAIN_REMAINDER<T> > 0) {
        for (int64_t end = i + PLAIN_REMAINDER<T>; i < end; i++) sum = sum + x[i] * x[i];
    }
    for (; i < n; i++) sum = std::fma(x[i], x[i], sum);
    return std::sqrt(sum);
}

// clamp(coef, max=1): NaN stays NaN.
template <typename T>
T clamp_to_one(T coef) {
    return std::isnan(coef) ? coef : (coef < T(1) ? coef : T(1));
}

/* The global norm of the gradients (the norm of their norms); with clip, the gradients scaled in
 * place by clamp(max_norm / (norm + 1e-6), max=1), the reciprocal taken first as torch does. */
template <typename T>
double clip(T** grads, const int64_t* sizes, int64_t count, int clip_them, double max_norm) {
    T norms[MAX_TENSORS];
    for (int64_t k = 0; k < count; k++) norms[k] = norm(grads[k], sizes[k]);
    T total = norm(norms, count);
    if (clip_them) {
        T coef = clamp_to_one((T(1) / (total + T(1e-6))) * T(max_norm));
        for (int64_t k = 0; k < count; k++)
            for (int64_t i = 0; i < sizes[k]; i++) grads[k][i] = grads[k][i] * coef;
    }
    return double(total);
}

// MKL's vmsSqrt/vmdSqrt, as torch calls them: high accuracy, denormals kept, errors ignored.
template <typename T> using VectorSqrt = void (*)(int32_t n, const T* in, T* out, int64_t mode);
constexpr int64_t MKL_MODE = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

struct AdamOptions {
    double lr, beta1, beta2, weight_decay, eps;
    int decoupled;
};

// The step counter (float or double) incremented as fill_(counter + 1) with the sum in double.
inline double increment(void* step, int step_is_double) {
    if (step_is_double) return *static_cast<double*>(step) = *static_cast<double*>(step) + 1.0;
    float* counter = static_cast<float*>(step);
    *counter = float(double(*counter) + 1.0);
    return *counter;
}

// _single_tensor_adam's update of one parameter of n elements (amsgrad off).
template <typename T>
void adam_one(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, double step, const AdamOptions& o,
              VectorSqrt<T> sqrt_function) {
    // the Python floats of torch's loop, computed as Python computes them (pow is the C library's)
    T step_size = T(-(o.lr / (1.0 - std::pow(o.beta1, step))));
    T bias_correction2_sqrt = T(std::pow(1.0 - std::pow(o.beta2, step), 0.5));
    T weight = T(1.0 - o.beta1), beta2 = T(o.beta2), addend = T(1.0 - o.beta2), eps = T(o.eps);
    T decay = T(o.weight_decay), shrink = T(1.0 - o.lr * o.weight_decay);
    bool small_weight = std::abs(weight) < T(0.5);
    for (int64_t i = 0; i < n; i++) {
        T g = grad[i];
        if (o.weight_decay != 0) {
            if (o.decoupled) param[i] = param[i] * shrink;
            else g = std::fma(param[i], decay, g);
        }
        T m = exp_avg[i], diff = g - m;
        exp_avg[i] = small_weight ? std::fma(weight, diff, m) : std::fma(weight - T(1), diff, g);
        exp_avg_sq[i] = std::fma(addend * g, g, exp_avg_sq[i] * beta2);
    }
    // torch's sqrt is MKL's (high accuracy, not always correctly rounded): the same call on the same array
    static thread_local std::vector<T> root;
    root.resize(n);
    sqrt_function(int32_t(n), exp_avg_sq, root.data(), MKL_MODE);
    for (int64_t i = 0; i < n; i++) {
        T denom = root[i] / bias_correction2_sqrt + eps;
        param[i] = param[i] + step_size * exp_avg[i] / denom;
    }
}

template <typename T>
int adam_update(T** params, T** grads, T** exp_avgs, T** exp_avg_sqs, void** steps, int step_is_double,
         const int64_t* sizes, int64_t count, double lr, double beta1, double beta2, double weight_decay,
         double eps, int decoupled, void* sqrt_function) {
    AdamOptions options{lr, beta1, beta2, weight_decay, eps, decoupled};
    for (int64_t k = 0; k < count; k++) {  // Python's lr / 0 raises: leave that to torch's path, untouched
        double next = (step_is_double ? *static_cast<double*>(steps[k]) : double(*static_cast<float*>(steps[k]))) + 1.0;
        if (!step_is_double) next = double(float(next));
        if (1.0 - std::pow(beta1, next) == 0.0) return 2;
    }
    for (int64_t k = 0; k < count; k++) {
        double step = increment(steps[k], step_is_double);
        adam_one(params[k], grads[k], exp_avgs[k], exp_avg_sqs[k], sizes[k], step, options,
                 reinterpret_cast<VectorSqrt<T>>(sqrt_function));
    }
    return 0;
}

/* _single_tensor_sgd's update on running momentum buffers (or none: momentum 0): the weight decay
 * and the steps along the buffers are torch's add with alpha, a fused multiply-add. */
template <typename T>
int sgd_update(T** params, T** grads, T** buffers, const int64_t* sizes, int64_t count, double lr,
               double weight_decay, double momentum, double dampening, int nesterov) {
    T decay = T(weight_decay), keep = T(momentum), inflow = T(1.0 - dampening), rate = T(-lr);
    for (int64_t k = 0; k < count; k++) {
        T* param = params[k];
        const T* grad = grads[k];
        for (int64_t i = 0; i < sizes[k]; i++) {
            T g = weight_decay != 0 ? std::fma(param[i], decay, grad[i]) : grad[i];
            if (momentum != 0) {
                T buffer = std::fma(g, inflow, buffers[k][i] * keep);
                buffers[k][i] = buffer;
                g = nesterov ? std::fma(buffer, keep, g) : buffer;
            }
            param[i] = std::fma(g, rate, param[i]);
        }
    }
    return 0;
}

}  // namespace

extern "C" {

#define ENTRY_POINTS(T, suffix)                                                                       \
    int clip_grad_norm_##suffix(T** grads, const int64_t* sizes, int64_t count, int clip_them,       \
                                double max_norm, double* total_norm) {                                \
        if (count > MAX_TENSORS) return 1;                                                            \
        *total_norm = clip(grads, sizes, count, clip_them, max_norm);                                 \
        return 0;                                                                                     \
    }                                                                                                 \
    int adam_step_##suffix(T** params, T** grads, T** exp_avgs, T** exp_avg_sqs, void** steps,        \
                           int step_is_double, const int64_t* sizes, int64_t count, double lr,        \
                           double beta1, double beta2, double weight_decay, double eps, int decoupled,   \
                           void* sqrt_function) {                                               \
        return adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, step_is_double, sizes, count, lr,   \
                    beta1, beta2, weight_decay, eps, decoupled, sqrt_function);                       \
    }                                                                                                 \
    int sgd_step_##suffix(T** params, T** grads, T** buffers, const int64_t* sizes, int64_t count,   \
                          double lr, double weight_decay, double momentum, double dampening,        \
                          int nesterov) {                                                            \
        return sgd_update(params, grads, buffers, sizes, count, lr, weight_decay, momentum, dampening, \
                          nesterov);                                                                 \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)

}  // extern "C"
