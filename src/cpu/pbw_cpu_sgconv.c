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
#include "cpu/pbw_cpu_threads.h"

#include <stdlib.h>
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
/* Below this many multiply-adds (about a millisecond) a convolution runs on one thread: a
 * parallel region's fork and barrier cost more than they save, and much more on a machine
 * whose cores are shared (a waiting thread may wait a whole time slice). */
#define SMALL_MACS 4e6

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

int pbw_cpu_sgconv_threads(void) { return pbw_cpu_max_threads(); }

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
    if ((double)N * g->O * K * P < SMALL_MACS) nthreads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t it = 0; it < items; it++) {
        int tid = pbw_cpu_thread_id();
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

/* ---------- Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions with padding 1 ----------
 *
 * Each 2x2 block of outputs ("tile") is A^T [ sum_c (G g_oc G^T) .* (B^T d_c B) ] A, with d_c
 * the 4x4 input patch of channel c around the tile and g_oc the 3x3 weight: 16 products per
 * tile and (o,c) instead of 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural
 * Networks", 2016). The sum over c is 16 independent GEMMs, one per position xi of the 4x4
 * transformed tile: M_xi (O x tiles) = U_xi (O x C) V_xi (C x tiles), on the same micro-kernel
 * as the direct convolution. The transforms of F(2,3) have entries 0, +-1 and +-1/2 only, so
 * its rounding error stays that of a direct convolution (unlike larger Winograd tiles).
 *
 * A work item is WT consecutive tiles in raster order (across tile rows when rows are short).
 * Its V (16 x C x WT, all channels) is transformed first; then for each xi the GEMM runs over
 * all of C with M_xi kept in L2, so that U_xi streams once per item and M once per K block.
 */
#define WT 128  /* tiles per work item (a multiple of NR) */

size_t pbw_cpu_sgconv_wino_packed_floats(int O, int C) {
    return 16 * pbw_cpu_sgconv_packed_floats(O, C);
}

void pbw_cpu_sgconv_wino_pack(float *dst, const float *w, int O, int C) {
    /* U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], in double, one (O,C) matrix
     * per position xi, each packed like a direct weight with K = C */
    static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    const size_t per = pbw_cpu_sgconv_packed_floats(O, C);
    float *u = malloc((size_t)O * C * sizeof(float));
    if (!u) return; /* the caller checked sizes; a failed malloc here leaves dst unset */
    for (int xi = 0; xi < 16; xi++) {
        int a = xi / 4, b = xi % 4;
        for (int64_t oc = 0; oc < (int64_t)O * C; oc++) {
            const float *g = w + oc * 9;
            double s = 0;
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) s += G[a][i] * g[i * 3 + j] * G[b][j];
            u[oc] = (float)s;
        }
        pbw_cpu_sgconv_pack_weight(dst + per * xi, u, O, C);
    }
    free(u);
}

size_t pbw_cpu_sgconv_wino_scratch_floats(int C, int O, int W, int nthreads) {
    size_t rows = 4 * (size_t)(W + 4);   /* the row-transformed input of one tile row */
    size_t per = 16 * (size_t)C * WT + 16 * (size_t)((O + MR - 1) / MR) * MR * WT + rows + 32;
    per = (per + 15) / 16 * 16;
    return per * (size_t)(nthreads > 0 ? nthreads : 1);
}

/* V = B^T d B for tiles t0 .. t0+nt-1 (raster order over TW tiles per row) and all C channels,
 * into 16 blocks (C x ntp each, panel layout: panel q holds C x NR, k-major). rt: scratch for
 * 4 row-transformed input rows of width W+4. */
static void wino_input(float *v, const float *xs, int C, int H, int W, int TW, int64_t t0, int nt,
                       int ntp, float *rt) {
    const size_t blk = (size_t)C * ntp;
    const int RW = W + 4; /* rt columns: input column x at index x + 1 (x from -1 .. W+2) */
    /* zero the padding columns of the panels past nt */
    for (int t = nt; t < ntp; t++)
        for (int xi = 0; xi < 16; xi++)
            for (int c = 0; c < C; c++)
                v[xi * blk + (size_t)(t / NR) * C * NR + (size_t)c * NR + t % NR] = 0.0f;
    for (int j0 = 0; j0 < nt;) {
        /* a run of tiles in one tile row */
        int64_t t = t0 + j0;
        int ty = (int)(t / TW), tx0 = (int)(t % TW), len = TW - tx0 < nt - j0 ? TW - tx0 : nt - j0;
        int xlo = 2 * tx0 - 1, xhi = 2 * (tx0 + len) + 2; /* input columns [xlo, xhi) */
        for (int c = 0; c < C; c++) {
            const float *plane = xs + (int64_t)c * H * W;
            /* B^T d over the 4 input rows, for every needed column */
            const float *row[4];
            for (int i = 0; i < 4; i++) {
                int y = 2 * ty - 1 + i;
                row[i] = y >= 0 && y < H ? plane + (int64_t)y * W : NULL;
            }
            float *r0 = rt, *r1 = rt + RW, *r2 = rt + 2 * RW, *r3 = rt + 3 * RW;
            for (int x = xlo; x < xhi; x++) {
                int in = x >= 0 && x < W;
                float d0 = in && row[0] ? row[0][x] : 0.0f, d1 = in && row[1] ? row[1][x] : 0.0f;
                float d2 = in && row[2] ? row[2][x] : 0.0f, d3 = in && row[3] ? row[3][x] : 0.0f;
                r0[x + 1] = d0 - d2;
                r1[x + 1] = d1 + d2;
                r2[x + 1] = d2 - d1;
                r3[x + 1] = d1 - d3;
            }
            /* (B^T d) B per tile: columns 2tx-1 .. 2tx+2, i.e. indices 2tx .. 2tx+3 */
            const float *rr[4] = {r0, r1, r2, r3};
            for (int i = 0; i < 4; i++) {
                const float *r = rr[i];
                float *d0 = v + (size_t)(4 * i) * blk, *d1 = d0 + blk, *d2 = d1 + blk, *d3 = d2 + blk;
                for (int k = 0; k < len; k++) {
                    int j = j0 + k, tx = tx0 + k;
                    size_t off = (size_t)(j / NR) * C * NR + (size_t)c * NR + j % NR;
                    const float *q = r + 2 * tx;
                    d0[off] = q[0] - q[2];
                    d1[off] = q[1] + q[2];
                    d2[off] = q[2] - q[1];
                    d3[off] = q[1] - q[3];
                }
            }
        }
        j0 += len;
    }
}

void pbw_cpu_sgconv_wino_forward(float *out, const float *x, const float *upack, int C, int H,
                                 int W, int O, int N, int accumulate, float *scratch,
                                 int nthreads) {
    const int TH = (H + 1) / 2, TW = (W + 1) / 2;
    const int64_t T = (int64_t)TH * TW, chunks = (T + WT - 1) / WT, items = (int64_t)N * chunks;
    const int OP = (O + MR - 1) / MR;
    const size_t per = pbw_cpu_sgconv_wino_scratch_floats(C, O, W, 1);
    const size_t upm = pbw_cpu_sgconv_packed_floats(O, C); /* one packed U_xi */
    kernel_fn kern = pick_kernel();
    if (nthreads < 1) nthreads = 1;
    if (items < nthreads) nthreads = (int)items;
    if ((double)N * O * C * H * W * 4 < SMALL_MACS) nthreads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t it = 0; it < items; it++) {
        int tid = pbw_cpu_thread_id();
        float *v = scratch + per * (size_t)tid;   /* 16 x (C x WT) */
        float *m = v + 16 * (size_t)C * WT;       /* 16 x (OP*MR x WT) */
        float *rt = m + 16 * (size_t)OP * MR * WT;
        const int n = (int)(it / chunks);
        const int64_t t0 = (it % chunks) * WT;
        const int nt = (int)(T - t0 < WT ? T - t0 : WT), ntp = (nt + NR - 1) / NR * NR;
        const size_t vblk = (size_t)C * ntp, mblk = (size_t)OP * MR * ntp;
        wino_input(v, x + (int64_t)n * C * H * W, C, H, W, TW, t0, nt, ntp, rt);
        for (int xi = 0; xi < 16; xi++) {
            const float *vb = v + vblk * xi, *ub = upack + upm * xi;
            float *mb = m + mblk * xi;
            for (int c0 = 0; c0 < C; c0 += KC) {
                int kc = C - c0 < KC ? C - c0 : KC;
                for (int q = 0; q < ntp / NR; q++)
                    for (int p = 0; p < OP; p++)
                        kern(kc, ub + ((int64_t)p * C + c0) * MR,
                             vb + (size_t)q * C * NR + (size_t)c0 * NR,
                             mb + (size_t)p * MR * ntp + q * NR, ntp, c0 > 0);
            }
        }
        /* Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1] */
        float *on = out + (int64_t)n * O * H * W;
        for (int o = 0; o < O; o++) {
            float *plane = on + (int64_t)o * H * W;
            const float *mo = m + (size_t)o * ntp;
            for (int j = 0; j < nt; j++) {
                float mm[16];
                for (int xi = 0; xi < 16; xi++) mm[xi] = mo[mblk * xi + j];
                float r0[4], r1[4];
                for (int k = 0; k < 4; k++) {
                    r0[k] = mm[k] + mm[4 + k] + mm[8 + k];
                    r1[k] = mm[4 + k] - mm[8 + k] - mm[12 + k];
                }
                float y[2][2] = {{r0[0] + r0[1] + r0[2], r0[1] - r0[2] - r0[3]},
                                 {r1[0] + r1[1] + r1[2], r1[1] - r1[2] - r1[3]}};
                int64_t t = t0 + j;
                int oy = 2 * (int)(t / TW), ox = 2 * (int)(t % TW);
                for (int i = 0; i < 2 && oy + i < H; i++)
                    for (int k = 0; k < 2 && ox + k < W; k++) {
                        float *d = plane + (int64_t)(oy + i) * W + ox + k;
                        *d = accumulate ? *d + y[i][k] : y[i][k];
                    }
            }
        }
    }
}
