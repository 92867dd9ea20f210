/* pbw_cpu_sgconv.c: direct convolution for frozen, pre-packed weights (StyleGAN2's styled
 * convolutions), on a register-blocked GEMM micro-kernel of our own, threaded by OpenMP only.
 *
 * Why not im2col + OpenBLAS here: StyleGAN2's convolutions are wide (up to 512 channels, 3x3)
 * on maps up to 256x256+, and what limits im2col + sgemm on a small machine is not the GEMM
 * but everything around it: a column buffer written and read once per output tile, and two
 * thread pools (OpenMP for im2col, OpenBLAS for the GEMM) that spin-wait against each other on
 * few cores. Here the weight is packed once when the model loads, each thread packs the input
 * patches of its own output tile straight into the micro-kernel's panel layout, K-block by
 * K-block so that the panel stays in L2, and all threads are OpenMP's.
 *
 * GEMM shape per output tile: C (O x NT) = A (O x K) B (K x NT) with K = C*KH*KW, A the packed
 * weight (panels of MR rows, all K), B the patches (panels of NR columns, one K block at a
 * time). The micro-kernel computes an MR x NR block of C in 12 AVX2 registers. Output columns
 * can be scattered with a row/column step and offset, which is how the four phases of a
 * stride-2 transposed convolution write their interleaved outputs.
 */
#include "cpu/pbw_cpu_stylegan.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SG_X86 1
#endif

#define MR 6
#define NR 16
#define KC 256
#define NT 192 /* output columns per tile (a multiple of NR) */

/* ---------- packing of the weight ---------- */

size_t pbw_cpu_sgconv_packed_floats(int O, int64_t K) {
    return (size_t)((O + MR - 1) / MR) * MR * (size_t)K;
}

void pbw_cpu_sgconv_pack_weight(float *dst, const float *w, int O, int64_t K) {
    const int np = (O + MR - 1) / MR;
    for (int p = 0; p < np; p++)
        for (int64_t k = 0; k < K; k++)
            for (int r = 0; r < MR; r++) {
                int o = p * MR + r;
                dst[((int64_t)p * K + k) * MR + r] = o < O ? w[(int64_t)o * K + k] : 0.0f;
            }
}

/* ---------- micro-kernel ---------- */

/* c (MR x NR, row stride ldc) = (acc ? c : 0) + a (kc x MR, k-major) * b (kc x NR, k-major) */
static void kernel_generic(int kc, const float *a, const float *b, float *c, int ldc, int acc) {
    float t[MR][NR];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) t[r][j] = acc ? c[r * ldc + j] : 0.0f;
    for (int k = 0; k < kc; k++)
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++) t[r][j] += a[k * MR + r] * b[k * NR + j];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) c[r * ldc + j] = t[r][j];
}

#ifdef SG_X86
__attribute__((target("avx2,fma"))) static void kernel_avx2(int kc, const float *a,
                                                              const float *b, float *c, int ldc,
                                                              int acc) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (acc) {
        c00 = _mm256_loadu_ps(c + 0 * ldc), c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc), c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 =
            _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), av;
        av = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);
        a += MR;
        b += NR;
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}
#endif

typedef void (*kernel_fn)(int, const float *, const float *, float *, int, int);

static kernel_fn pick_kernel(void) {
#ifdef SG_X86
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (have) return kernel_avx2;
#endif
    return kernel_generic;
}

/* ---------- patches ---------- */

/* A run of consecutive output columns of a tile that lie in one output row and one NR-wide
 * panel: panel columns j0 .. j0+len-1 are outputs (oy, ox .. ox+len-1). */
typedef struct seg {
    int j0, len, oy, ox;
} seg;

/* Splits the tile's columns (positions p0 .. p0+nt-1 of a row-major OH x OW grid) into runs;
 * pstart[q] .. pstart[q+1]-1 are the runs of panel q. Returns the number of runs. */
static int make_segs(seg *sg, int *pstart, int64_t p0, int nt, int ntp, int OW) {
    int ns = 0;
    for (int q = 0; q < ntp / NR; q++) {
        pstart[q] = ns;
        int j = q * NR, jend = q * NR + NR < nt ? q * NR + NR : nt;
        while (j < jend) {
            int64_t p = p0 + j;
            int oy = (int)(p / OW), ox = (int)(p % OW);
            int len = OW - ox < jend - j ? OW - ox : jend - j;
            sg[ns++] = (seg){j - q * NR, len, oy, ox};
            j += len;
        }
    }
    pstart[ntp / NR] = ns;
    return ns;
}

/* Packs rows k0 .. k0+kc-1 of the patch matrix of the tile into bp: panel q holds kc x NR
 * floats, k-major; columns past the tile's end are zero. */
static void pack_patches(float *bp, const float *xs, const pbw_cpu_sgconv_geom *g, int64_t k0,
                         int kc, const seg *sg, const int *pstart, int ntp) {
    const int KK = g->KH * g->KW, W = g->W, sw = g->sw;
    for (int q = 0; q < ntp / NR; q++) {
        float *dst = bp + (int64_t)q * kc * NR;
        const seg *s0 = sg + pstart[q], *s1 = sg + pstart[q + 1];
        int filled = s1 > s0 ? s1[-1].j0 + s1[-1].len : 0; /* columns past it stay zero */
        for (int kk = 0; kk < kc; kk++) {
            int64_t k = k0 + kk;
            int c = (int)(k / KK), t = (int)(k % KK), ky = t / g->KW, kx = t % g->KW;
            const float *plane = xs + (int64_t)c * g->H * W;
            float *d = dst + (int64_t)kk * NR;
            for (const seg *sp = s0; sp < s1; sp++) {
                float *dd = d + sp->j0;
                int iy = sp->oy * g->sh - g->ph + ky;
                if (iy < 0 || iy >= g->H) {
                    memset(dd, 0, (size_t)sp->len * sizeof(float));
                    continue;
                }
                const float *row = plane + (int64_t)iy * W;
                int ix0 = sp->ox * sw - g->pw + kx; /* input column of the run's first output */
                /* outputs i of the run read row[ix0 + i*sw]: in range for i in [lo, hi) */
                int lo = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;
                int hi = ix0 >= W ? 0
                         : ix0 + (sp->len - 1) * sw < W ? sp->len : (W - 1 - ix0) / sw + 1;
                if (hi < lo) hi = lo;
                if (lo > sp->len) lo = hi = sp->len;
                for (int i = 0; i < lo; i++) dd[i] = 0.0f;
                if (sw == 1) {
                    memcpy(dd + lo, row + ix0 + lo, (size_t)(hi - lo) * sizeof(float));
                } else {
                    for (int i = lo; i < hi; i++) dd[i] = row[ix0 + i * sw];
                }
                for (int i = hi; i < sp->len; i++) dd[i] = 0.0f;
            }
            for (int j = filled; j < NR; j++) d[j] = 0.0f;
        }
    }
}

/* ---------- the convolution ---------- */

static int64_t tiles_per_sample(const pbw_cpu_sgconv_geom *g) {
    int64_t P = (int64_t)g->OH * g->OW;
    return (P + NT - 1) / NT;
}

static int o_panels(const pbw_cpu_sgconv_geom *g) { return (g->O + MR - 1) / MR; }

size_t pbw_cpu_sgconv_scratch_floats(const pbw_cpu_sgconv_geom *g, int nthreads) {
    /* B panels, the C tile, column coordinates, runs (4 ints each) and panel starts */
    size_t per = (size_t)KC * NT + (size_t)o_panels(g) * MR * NT + 2 * NT + 4 * NT + NT / NR + 16;
    per = (per + 15) / 16 * 16;
    return per * (size_t)(nthreads > 0 ? nthreads : 1);
}

int pbw_cpu_sgconv_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void pbw_cpu_sgconv_forward(float *out, const float *x, const float *wpack,
                            const pbw_cpu_sgconv_geom *g, int N, int accumulate, float *scratch,
                            int nthreads) {
    const int64_t K = (int64_t)g->C * g->KH * g->KW, P = (int64_t)g->OH * g->OW;
    const int64_t tps = tiles_per_sample(g), items = (int64_t)N * tps;
    const int OP = o_panels(g);
    const size_t per = pbw_cpu_sgconv_scratch_floats(g, 1);
    kernel_fn kern = pick_kernel();
    if (nthreads < 1) nthreads = 1;
    if (items < nthreads) nthreads = (int)items;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t it = 0; it < items; it++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *bp = scratch + per * (size_t)tid;           /* KC x NT, 64-byte aligned */
        float *ct = bp + (size_t)KC * NT;                  /* OP*MR x NT */
        int *oy = (int *)(ct + (size_t)OP * MR * NT), *ox = oy + NT;
        seg *sg = (seg *)(ox + NT);
        int *pstart = (int *)(sg + NT);
        const int n = (int)(it / tps);
        const int64_t p0 = (it % tps) * NT;
        const int nt = (int)(P - p0 < NT ? P - p0 : NT), ntp = (nt + NR - 1) / NR * NR;
        for (int j = 0; j < nt; j++) {
            oy[j] = (int)((p0 + j) / g->OW);
            ox[j] = (int)((p0 + j) % g->OW);
        }
        make_segs(sg, pstart, p0, nt, ntp, g->OW);
        const float *xs = x + (int64_t)n * g->C * g->H * g->W;
        if (K == 0) /* no taps (a phase of a transposed 1x1 convolution): zeros */
            memset(ct, 0, (size_t)OP * MR * NT * sizeof(float));
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int kc = (int)(K - k0 < KC ? K - k0 : KC);
            pack_patches(bp, xs, g, k0, kc, sg, pstart, ntp);
            for (int q = 0; q < ntp / NR; q++)
                for (int p = 0; p < OP; p++)
                    kern(kc, wpack + ((int64_t)p * K + k0) * MR, bp + (int64_t)q * kc * NR,
                         ct + (int64_t)p * MR * NT + q * NR, NT, k0 > 0);
        }
        /* scatter the tile into the output (step/offset placement for transposed phases) */
        float *on = out + (int64_t)n * g->O * g->out_cstride;
        for (int o = 0; o < g->O; o++) {
            const float *src = ct + (int64_t)o * NT;
            float *dst = on + (int64_t)o * g->out_cstride;
            if (g->out_step == 1 && g->out_y0 == 0 && g->out_x0 == 0 && g->out_rstride == g->OW) {
                if (accumulate)
                    for (int j = 0; j < nt; j++) dst[p0 + j] += src[j];
                else
                    memcpy(dst + p0, src, (size_t)nt * sizeof(float));
            } else {
                for (int j = 0; j < nt; j++) {
                    int64_t idx = (int64_t)(oy[j] * g->out_step + g->out_y0) * g->out_rstride +
                                  ox[j] * g->out_step + g->out_x0;
                    dst[idx] = accumulate ? dst[idx] + src[j] : src[j];
                }
            }
        }
    }
}
