/* pbw_cpu_elementwise.c: unary and broadcasting binary kernels, strided accumulation. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "pbw_cpu.h"
#include "pbw_cpu_math.h"

#define PAR_MIN 32768 /* below this many elements threads cost more than they save */

/* pbw_expf (vectorizable, within ~1 ulp of expf) keeps these loops SIMD */
static inline float sigmoidf_(float x) { return 1.0f / (1.0f + pbw_expf(-x)); }

void pbw_cpu_unary_forward(pbw_unary_op op, float p0, float p1, const float *x, float *y,
                           int64_t n) {
#define UNARY_LOOP(expr)                                                                      \
    _Pragma("omp parallel for schedule(static) if (n > PAR_MIN)") for (int64_t i = 0; i < n;  \
                                                                       i++) {                 \
        float v = x[i];                                                                       \
        y[i] = (expr);                                                                        \
    }
    switch (op) {
    case PBW_UN_AFFINE: UNARY_LOOP(v * p0 + p1); break;
    case PBW_UN_RELU: UNARY_LOOP(v > 0 ? v : 0.0f); break;
    case PBW_UN_LEAKY_RELU: UNARY_LOOP(v > 0 ? v : v * p0); break;
    case PBW_UN_GELU: UNARY_LOOP(0.5f * v * (1.0f + erff(v * 0.70710678118654752f))); break;
    case PBW_UN_QUICK_GELU: UNARY_LOOP(v * sigmoidf_(1.702f * v)); break;
    case PBW_UN_SIGMOID: UNARY_LOOP(sigmoidf_(v)); break;
    case PBW_UN_TANH: UNARY_LOOP(tanhf(v)); break;
    case PBW_UN_SQRT: UNARY_LOOP(sqrtf(v)); break;
    case PBW_UN_RSQRT: UNARY_LOOP(1.0f / sqrtf(v)); break;
    case PBW_UN_EXP: UNARY_LOOP(expf(v)); break;
    case PBW_UN_ABS: UNARY_LOOP(fabsf(v)); break;
    case PBW_UN_SQUARE: UNARY_LOOP(v * v); break;
    case PBW_UN_CLAMP: UNARY_LOOP(v < p0 ? p0 : (v > p1 ? p1 : v)); break;
    }
#undef UNARY_LOOP
}

void pbw_cpu_unary_backward(pbw_unary_op op, float p0, float p1, const float *x, const float *y,
                            const float *gy, float *gx, int64_t n, int add) {
#define GRAD_LOOP(expr)                                                                       \
    _Pragma("omp parallel for schedule(static) if (n > PAR_MIN)") for (int64_t i = 0; i < n;  \
                                                                       i++) {                 \
        float v = x[i], o = y[i], g = gy[i];                                                  \
        (void)v;                                                                              \
        (void)o;                                                                              \
        gx[i] = add ? gx[i] + (expr) : (expr);                                                \
    }
    switch (op) {
    case PBW_UN_AFFINE: GRAD_LOOP(g * p0); break;
    case PBW_UN_RELU: GRAD_LOOP(v > 0 ? g : 0.0f); break;
    case PBW_UN_LEAKY_RELU: GRAD_LOOP(v > 0 ? g : g * p0); break;
    case PBW_UN_GELU:
        GRAD_LOOP(g * (0.5f * (1.0f + erff(v * 0.70710678118654752f)) +
                       v * 0.39894228040143268f * expf(-0.5f * v * v)));
        break;
    case PBW_UN_QUICK_GELU: {
        /* d/dv v*s(av) = s + a v s (1 - s), s computed once */
#define QG_GRAD(v, g) ((g) * (sigmoidf_(1.702f * (v)) * (1.0f + 1.702f * (v) * (1.0f - sigmoidf_(1.702f * (v))))))
        GRAD_LOOP(QG_GRAD(v, g));
#undef QG_GRAD
        break;
    }
    case PBW_UN_SIGMOID: GRAD_LOOP(g * o * (1.0f - o)); break;
    case PBW_UN_TANH: GRAD_LOOP(g * (1.0f - o * o)); break;
    case PBW_UN_SQRT: GRAD_LOOP(g * 0.5f / o); break;
    case PBW_UN_RSQRT: GRAD_LOOP(g * -0.5f * o * o * o); break;
    case PBW_UN_EXP: GRAD_LOOP(g * o); break;
    case PBW_UN_ABS: GRAD_LOOP(v > 0 ? g : (v < 0 ? -g : 0.0f)); break;
    case PBW_UN_SQUARE: GRAD_LOOP(2.0f * v * g); break;
    case PBW_UN_CLAMP: GRAD_LOOP(v >= p0 && v <= p1 ? g : 0.0f); break;
    }
#undef GRAD_LOOP
}

static inline float bin_apply(pbw_binary_op op, float a, float b) {
    switch (op) {
    case PBW_BIN_ADD: return a + b;
    case PBW_BIN_SUB: return a - b;
    case PBW_BIN_MUL: return a * b;
    case PBW_BIN_DIV: return a / b;
    }
    return 0;
}

static int64_t total(const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < 5; d++) n *= shape[d];
    return n;
}

/* The index of the first four dims of shape at flattened (row-major) outer index o, and its
 * offset with strides st: the strided loops below walk the outer dims flattened and the fifth
 * as a plain strided loop. */
typedef struct {
    int64_t i[4];
} outer_ix;
static inline outer_ix outer_index(const int64_t *shape, int64_t o) {
    outer_ix x;
    x.i[3] = o % shape[3];
    o /= shape[3];
    x.i[2] = o % shape[2];
    o /= shape[2];
    x.i[1] = o % shape[1];
    x.i[0] = o / shape[1];
    return x;
}
static inline int64_t outer_at(const outer_ix *x, const int64_t *st) {
    return x->i[0] * st[0] + x->i[1] * st[1] + x->i[2] * st[2] + x->i[3] * st[3];
}

/* Loops over the first four dims (flattened, in parallel when safe) and runs the innermost
 * one as a plain strided loop. */
void pbw_cpu_binary_forward(pbw_binary_op op, const int64_t *shape, const float *a,
                            const int64_t *sa, const float *b, const int64_t *sb, float *y,
                            const int64_t *sy) {
    int64_t outer = shape[0] * shape[1] * shape[2] * shape[3], n4 = shape[4];
    int par = total(shape) > PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
        const outer_ix ix = outer_index(shape, o);
        const float *pa = a + outer_at(&ix, sa);
        const float *pb = b + outer_at(&ix, sb);
        float *py = y + outer_at(&ix, sy);
        int64_t xa = sa[4], xb = sb[4], xy = sy[4];
        if (xa == 1 && xb == 1 && xy == 1) {
            for (int64_t i = 0; i < n4; i++) py[i] = bin_apply(op, pa[i], pb[i]);
        } else if (xa == 1 && xb == 0 && xy == 1) {
            float bv = pb[0];
            for (int64_t i = 0; i < n4; i++) py[i] = bin_apply(op, pa[i], bv);
        } else {
            for (int64_t i = 0; i < n4; i++) py[i * xy] = bin_apply(op, pa[i * xa], pb[i * xb]);
        }
    }
}

/* Parallel over the outer index only when no two outer indices write the same element of
 * `out` (its strides over the first four dims are all nonzero for dims of size > 1). */
static int outer_disjoint(const int64_t *shape, const int64_t *s) {
    for (int d = 0; d < 4; d++)
        if (shape[d] > 1 && s[d] == 0) return 0;
    return 1;
}

void pbw_cpu_accumulate(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                        const int64_t *sy, float s) {
    int64_t outer = shape[0] * shape[1] * shape[2] * shape[3], n4 = shape[4];
    int par = total(shape) > PAR_MIN && outer_disjoint(shape, sy);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
        const outer_ix ix = outer_index(shape, o);
        const float *px = x + outer_at(&ix, sx);
        float *py = y + outer_at(&ix, sy);
        if (sy[4] == 0) {
            double acc = 0; /* a reduced inner row: sum in double, add once */
            for (int64_t i = 0; i < n4; i++) acc += px[i * sx[4]];
            py[0] += (float)(s * acc);
        } else {
            for (int64_t i = 0; i < n4; i++) py[i * sy[4]] += s * px[i * sx[4]];
        }
    }
}

void pbw_cpu_binary_backward(pbw_binary_op op, const int64_t *shape, const float *a,
                             const int64_t *sa, const float *b, const int64_t *sb,
                             const float *gy, const int64_t *sy, float *ga, float *gb) {
    int64_t outer = shape[0] * shape[1] * shape[2] * shape[3], n4 = shape[4];
    /* Each gradient is written by its own pass so that each can be parallel when it is not a
     * reduction over the outer dims. */
    for (int which = 0; which < 2; which++) {
        float *g = which == 0 ? ga : gb;
        const int64_t *sg = which == 0 ? sa : sb;
        if (!g) continue;
        if ((op == PBW_BIN_ADD || (op == PBW_BIN_SUB && which == 0))) {
            pbw_cpu_accumulate(shape, gy, sy, g, sg, 1.0f);
            continue;
        }
        if (op == PBW_BIN_SUB) {
            pbw_cpu_accumulate(shape, gy, sy, g, sg, -1.0f);
            continue;
        }
        int par = total(shape) > PAR_MIN && outer_disjoint(shape, sg);
#pragma omp parallel for schedule(static) if (par)
        for (int64_t o = 0; o < outer; o++) {
            const outer_ix ix = outer_index(shape, o);
            const float *pa = a + outer_at(&ix, sa);
            const float *pb = b + outer_at(&ix, sb);
            const float *pg = gy + outer_at(&ix, sy);
            float *pout = g + outer_at(&ix, sg);
            int64_t xa = sa[4], xb = sb[4], xy = sy[4], xg = sg[4];
            for (int64_t i = 0; i < n4; i++) {
                float av = pa[i * xa], bv = pb[i * xb], gv = pg[i * xy], d;
                if (op == PBW_BIN_MUL)
                    d = which == 0 ? gv * bv : gv * av;
                else /* DIV */
                    d = which == 0 ? gv / bv : -gv * av / (bv * bv);
                pout[i * xg] += d;
            }
        }
    }
}

void pbw_cpu_copy_strided(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                          const int64_t *sy) {
    int64_t outer = shape[0] * shape[1] * shape[2] * shape[3], n4 = shape[4];
    int par = total(shape) > PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
        const outer_ix ix = outer_index(shape, o);
        const float *px = x + outer_at(&ix, sx);
        float *py = y + outer_at(&ix, sy);
        if (sx[4] == 1 && sy[4] == 1)
            memcpy(py, px, (size_t)n4 * sizeof(float));
        else
            for (int64_t i = 0; i < n4; i++) py[i * sy[4]] = px[i * sx[4]];
    }
}
