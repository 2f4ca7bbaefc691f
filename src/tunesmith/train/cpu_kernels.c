/* Fused element-wise kernels for LoRA training on a CPU: SwiGLU, RMSNorm, RoPE and causal softmax, forward and
 * backward, in bf16 (fp32 arithmetic inside) and fp32. Built at first use by train/cpu_kernels.py with the
 * system C compiler and called through ctypes; without a compiler the same steps run as PyTorch ops.
 *
 * Why: on a 2-core CPU these ops are bound by memory traffic, not arithmetic. PyTorch runs each as its own pass
 * over [tokens x width] tensors (SwiGLU's backward alone is five: silu, silu * up, grad * up, silu_backward,
 * silu * grad); here each is one pass that keeps the row in cache. Profiled in train/fused_layers.py's
 * docstring and docs/benchmarks.md.
 *
 * The file is read twice by the preprocessor (#include "cpu_kernels.c" below): once for fp32 (names ending _f32), once
 * for bf16 (names ending _bf16), so each kernel is written once. Sizes and strides are in elements; the last
 * dimension of every tensor is contiguous. Loops over rows run on OpenMP threads (the runtime torch loads).
 */
#ifndef TUNESMITH_KERNEL_BODY
#define TUNESMITH_KERNEL_BODY

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf16_load(bf16 value) {
    uint32_t bits = (uint32_t)value << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* Round to nearest even, as PyTorch rounds; NaN stays NaN (adding the rounding bias could turn it into inf). */
static inline bf16 bf16_store(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bf16)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (bf16)(bits >> 16);
}

static inline float f32_load(float value) { return value; }
static inline float f32_store(float value) { return value; }

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#define SCALAR float
#define LOAD f32_load
#define STORE f32_store
#define FN(name) name##_f32
#include "cpu_kernels.c"
#undef SCALAR
#undef LOAD
#undef STORE
#undef FN

#define SCALAR bf16
#define LOAD bf16_load
#define STORE bf16_store
#define FN(name) name##_bf16
#include "cpu_kernels.c"

#else /* the kernels, once per SCALAR */

/* out = silu(gate) * up. gate and up rows are ld_in apart (the two halves of a joined gate/up product: ld_in =
 * 2 * cols and up = gate + cols); out is [rows x cols]. */
void FN(swiglu_forward)(const SCALAR *gate, const SCALAR *up, int64_t ld_in, SCALAR *out, int64_t rows,
                        int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const SCALAR *g = gate + r * ld_in, *u = up + r * ld_in;
        SCALAR *o = out + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            float x = LOAD(g[c]);
            o[c] = STORE(x * sigmoid(x) * LOAD(u[c]));
        }
    }
}

/* From grad = d loss / d out ([rows x cols]): grad_gate = grad * up * silu'(gate), grad_up = grad * silu(gate),
 * both rows ld_grad apart (side by side in one joined gradient when ld_grad = 2 * cols). product, unless NULL,
 * gets silu(gate) * up again ([rows x cols]), which the LoRA down projection's A gradient reads. */
void FN(swiglu_backward)(const SCALAR *grad, const SCALAR *gate, const SCALAR *up, int64_t ld_in,
                         SCALAR *product, SCALAR *grad_gate, SCALAR *grad_up, int64_t ld_grad, int64_t rows,
                         int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const SCALAR *dy = grad + r * cols, *g = gate + r * ld_in, *u = up + r * ld_in;
        SCALAR *dg = grad_gate + r * ld_grad, *du = grad_up + r * ld_grad;
        /* The product is written by a second loop from this row of silu values: GCC 12 does not vectorize one
         * loop with three bf16 outputs, and the scalar loop took 10 ms instead of 3 on [1,992 x 1,536]. */
        float silu[cols];
        for (int64_t c = 0; c < cols; c++) {
            float x = LOAD(g[c]), s = sigmoid(x), d = LOAD(dy[c]);
            silu[c] = x * s;
            dg[c] = STORE(d * LOAD(u[c]) * s * (1.0f + x * (1.0f - s)));
            du[c] = STORE(d * silu[c]);
        }
        if (product) {
            SCALAR *p = product + r * cols;
            for (int64_t c = 0; c < cols; c++) p[c] = STORE(silu[c] * LOAD(u[c]));
        }
    }
}

/* One row of y = x * rstd * weight. Not inlined: the forward pass and the rebuild in backward (rms_norm_apply)
 * run this same machine code, so the rebuilt rows equal the forward's bit for bit. */
static void __attribute__((noinline)) FN(norm_row)(const SCALAR *x, float rstd, const SCALAR *weight, SCALAR *y,
                                                   int64_t cols) {
    for (int64_t c = 0; c < cols; c++) y[c] = STORE(LOAD(x[c]) * rstd * LOAD(weight[c]));
}

/* RMSNorm forward: rstd[r] = 1 / sqrt(mean(x[r]^2) + eps) (accumulated in fp32), y = x * rstd * weight. */
void FN(rms_norm_forward)(const SCALAR *x, const SCALAR *weight, float eps, float *rstd, SCALAR *y, int64_t rows,
                          int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const SCALAR *row = x + r * cols;
        float squares = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            float v = LOAD(row[c]);
            squares += v * v;
        }
        rstd[r] = 1.0f / sqrtf(squares / (float)cols + eps);
        FN(norm_row)(row, rstd[r], weight, y + r * cols, cols);
    }
}

/* y = x * rstd * weight with rstd from rms_norm_forward: the norm's output rebuilt from what it kept. */
void FN(rms_norm_apply)(const SCALAR *x, const float *rstd, const SCALAR *weight, SCALAR *y, int64_t rows,
                        int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) FN(norm_row)(x + r * cols, rstd[r], weight, y + r * cols, cols);
}

/* RMSNorm backward for x (the weight is frozen): with gw = grad * weight,
 * grad_x = rstd * gw - x * rstd^3 * mean(gw * x). */
void FN(rms_norm_backward)(const SCALAR *grad, const SCALAR *x, const SCALAR *weight, const float *rstd,
                           SCALAR *grad_x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const SCALAR *dy = grad + r * cols, *row = x + r * cols;
        SCALAR *dx = grad_x + r * cols;
        float dot = 0.0f;
        for (int64_t c = 0; c < cols; c++) dot += LOAD(dy[c]) * LOAD(weight[c]) * LOAD(row[c]);
        float s = rstd[r], coef = dot * s * s * s / (float)cols;
        for (int64_t c = 0; c < cols; c++) dx[c] = STORE(s * LOAD(dy[c]) * LOAD(weight[c]) - LOAD(row[c]) * coef);
    }
}

/* Rotary embedding, rotate-half convention, of x [batch, seq, heads, dim] with cos, sin [batch or 1, seq, dim]:
 * out = scale * (x * cos + rotate_half(x) * sin), rotate_half(x) = [-x2, x1]. With transpose set it applies the
 * transposed map instead (the backward pass): out = scale * (x * cos + [x2 * sin2, -x1 * sin1]). Strides
 * (xs_*, cs_*, os_*) let x be a slice of the joined q/k/v product and out be written in any head layout. */
void FN(rope)(const SCALAR *x, int64_t xs_b, int64_t xs_s, int64_t xs_h, const SCALAR *cos, const SCALAR *sin,
              int64_t cs_b, int64_t cs_s, SCALAR *out, int64_t os_b, int64_t os_s, int64_t os_h, int64_t batch,
              int64_t seq, int64_t heads, int64_t dim, float scale, int transpose) {
    int64_t half = dim / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t s = 0; s < seq; s++) {
            const SCALAR *c = cos + b * cs_b + s * cs_s, *n = sin + b * cs_b + s * cs_s;
            for (int64_t h = 0; h < heads; h++) {
                const SCALAR *in = x + b * xs_b + s * xs_s + h * xs_h;
                SCALAR *o = out + b * os_b + s * os_s + h * os_h;
                /* Two loops over the halves, each with one output: GCC 12 vectorizes neither half when one
                 * loop writes both. In the transposed map the sine terms swap halves and sign. */
                const SCALAR *n1 = transpose ? n + half : n, *n2 = transpose ? n : n + half;
                float sign = transpose ? 1.0f : -1.0f;
                for (int64_t i = 0; i < half; i++)
                    o[i] = STORE(scale * (LOAD(in[i]) * LOAD(c[i]) + sign * LOAD(in[i + half]) * LOAD(n1[i])));
                for (int64_t i = 0; i < half; i++)
                    o[i + half] = STORE(scale * (LOAD(in[i + half]) * LOAD(c[i + half])
                                                 - sign * LOAD(in[i]) * LOAD(n2[i])));
            }
        }
    }
}

/* Causal softmax in place over scores [blocks x (groups * seq) x seq], query heads that share a key head
 * stacked along the rows: row r is query position r % seq and sees keys 0..r % seq. The keys it must not see
 * get probability 0 (the following matrix product reads them). */
void FN(causal_softmax)(SCALAR *scores, int64_t rows, int64_t seq) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        SCALAR *row = scores + r * seq;
        int64_t seen = r % seq + 1;
        float exps[seen];  /* fp32, as PyTorch's softmax keeps them: rounding to bf16 before the sum would lose bits */
        float top = LOAD(row[0]), total = 0.0f;
        for (int64_t c = 1; c < seen; c++) top = fmaxf(top, LOAD(row[c]));
        for (int64_t c = 0; c < seen; c++) {
            exps[c] = expf(LOAD(row[c]) - top);
            total += exps[c];
        }
        float inverse = 1.0f / total;
        for (int64_t c = 0; c < seen; c++) row[c] = STORE(exps[c] * inverse);
        for (int64_t c = seen; c < seq; c++) row[c] = STORE(0.0f);
    }
}

/* Its backward, in place over grad (d loss / d probs becomes d loss / d scores):
 * grad = probs * (grad - sum(grad * probs)) over the visible keys, 0 elsewhere. */
void FN(causal_softmax_backward)(SCALAR *grad, const SCALAR *probs, int64_t rows, int64_t seq) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        SCALAR *g = grad + r * seq;
        const SCALAR *p = probs + r * seq;
        int64_t seen = r % seq + 1;
        float dot = 0.0f;
        for (int64_t c = 0; c < seen; c++) dot += LOAD(g[c]) * LOAD(p[c]);
        for (int64_t c = 0; c < seen; c++) g[c] = STORE(LOAD(p[c]) * (LOAD(g[c]) - dot));
        for (int64_t c = seen; c < seq; c++) g[c] = STORE(0.0f);
    }
}

#endif
