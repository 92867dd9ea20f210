// pbw_cuda_paint.cu: CLIP's crops on the GPU, and the Adam update of queued steps (see
// pbw_cuda_paint.h). The bicubic taps are
// bit-equal to the CPU's (pbw_cuda_resample.cuh).
//
// A block of the tiled forward takes CROP_ROWS output rows of one crop unit (image b, crop k)
// and all three channels: it computes the taps of the R output columns and its rows once, in
// shared memory (the one-thread-per-output kernels recomputed 8 tap sets, in double, plus a
// chain of 64-bit divisions, for every output element), and its threads walk the rows'
// outputs in order, so the writes are coalesced. The forward adds each output's terms in the
// same order and with the same products as the per-element kernel, so it gives the same bits.
// The backward (below, before crops_bwd_cols_kernel) gives each crop its own slice of scratch,
// summed into gx crop by crop by a second kernel: no atomics, so the same bits every run.
// Without its scratch (out of memory, or more than 256 MiB for one crop) the per-element
// kernel adds by atomics.
#include <cmath>

#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_resample.cuh"
#include "cuda/pbw_cuda_paint.h"

// Where output element i (unit u = b*n + k, channel, pixel oy, ox of R x R) reads: the offset
// of its crop's top-left corner in x (B,3,H,W), the crop's side and the output pixel.
struct crop_site {
    int64_t base;
    int ch, sd, oy, ox;
};

__device__ __forceinline__ crop_site crop_site_of(int64_t i, int64_t H, int64_t W,
                                                  const int *__restrict__ crops, int n, int R) {
    const int64_t RR = (int64_t)R * R, p = i % RR, uc = i / RR;
    const int64_t u = uc / 3, b = u / n;
    const int k = (int)(u % n), ch = (int)(uc % 3);
    const int cy = crops[3 * k], cx = crops[3 * k + 1];
    return {(b * 3 + ch) * H * W + (int64_t)cy * W + cx, ch, crops[3 * k + 2], (int)(p / R),
            (int)(p % R)};
}

// Where output (unit u, channel ch, pixel oy, ox) is stored: (B*n,3,R,R) for P = 0, else
// cut into P x P patches, (B*n, (R/P)^2, 3*P*P) (patch-major, then channel, row, column: the
// vectors CLIP's patch embedding multiplies). pass is laid out alike.
// The index is u * 3 R^2 + ch * crop_ch_stride + crop_row_off(oy) + crop_col_off(ox); the
// tiled kernels keep the row and column offsets of their tile in shared memory.
__device__ __forceinline__ int crop_row_off(int oy, int R, int P) {
    return P ? (oy / P) * (R / P) * 3 * P * P + (oy % P) * P : oy * R;
}
__device__ __forceinline__ int crop_col_off(int ox, int P) {
    return P ? (ox / P) * 3 * P * P + ox % P : ox;
}
__device__ __forceinline__ int crop_ch_stride(int R, int P) { return P ? P * P : R * R; }
__device__ __forceinline__ int64_t crop_index(int64_t u, int ch, int oy, int ox, int R, int P) {
    return u * 3 * (int64_t)R * R + (int64_t)ch * crop_ch_stride(R, P) + crop_row_off(oy, R, P) +
           crop_col_off(ox, P);
}

// Element i of the logical (B*n,3,R,R) order: its index in the layout of P.
__device__ __forceinline__ int64_t crop_index_of(int64_t i, int R, int P) {
    if (!P) return i;
    const int64_t RR = (int64_t)R * R, uc = i / RR, p = i % RR;
    return crop_index(uc / 3, (int)(uc % 3), (int)(p / R), (int)(p % R), R, P);
}

__device__ __forceinline__ void crop_put(float *o, int64_t i, float v) { o[i] = v; }
template <typename H> __device__ __forceinline__ void crop_put(H *o, int64_t i, float v) {
    o[i] = pbw_to_half<H>(v);
}

template <typename T>
__global__ static void crops_fwd_kernel(const float *__restrict__ x, int64_t B, int64_t H,
                                        int64_t W, const int *__restrict__ crops, int n, int R,
                                        int P, pbw_cuda_norm3 norm, T *__restrict__ out,
                                        uint8_t *__restrict__ pass) {
    pbw_pdl_wait();
    const int64_t RR = (int64_t)R * R, total = B * n * 3 * RR;
    PBW_GRID_STRIDE(e, total) {
        const int64_t i = crop_index_of(e, R, P);
        const crop_site c = crop_site_of(e, H, W, crops, n, R);
        const int ch = c.ch, sd = c.sd, oy = c.oy, ox = c.ox;
        const float *xp = x + c.base;
        float v;
        if (sd == R) {
            v = xp[(int64_t)oy * W + ox] * 0.5f + 0.5f;
        } else {
            int iy[4], ix[4];
            float wy[4], wx[4];
            pbw_dev_bicubic_taps(oy, sd, R, iy, wy);
            pbw_dev_bicubic_taps(ox, sd, R, ix, wx);
            v = 0.0f;
            for (int j = 0; j < 4; j++) {
                const float *row = xp + (int64_t)iy[j] * W;
                float r = 0.0f;
                for (int q = 0; q < 4; q++) r += wx[q] * (row[ix[q]] * 0.5f + 0.5f);
                v += wy[j] * r;
            }
        }
        if (pass) pass[i] = v >= 0.0f && v <= 1.0f;
        v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        crop_put(out, i, (v - norm.mean[ch]) / norm.std[ch]);
    }
}

__global__ static void crops_bwd_kernel(const float *__restrict__ gy,
                                        const uint8_t *__restrict__ pass, int64_t B, int64_t H,
                                        int64_t W, const int *__restrict__ crops, int n, int R,
                                        int P, pbw_cuda_norm3 norm, float *__restrict__ gx) {
    pbw_pdl_wait();
    const int64_t RR = (int64_t)R * R, total = B * n * 3 * RR;
    PBW_GRID_STRIDE(e, total) {
        const int64_t i = crop_index_of(e, R, P);
        if (!pass[i]) continue;
        const crop_site c = crop_site_of(e, H, W, crops, n, R);
        const int sd = c.sd, oy = c.oy, ox = c.ox;
        const float g = gy[i] / norm.std[c.ch] * 0.5f;
        float *gp = gx + c.base;
        if (sd == R) {
            atomicAdd(gp + (int64_t)oy * W + ox, g);
            continue;
        }
        int iy[4], ix[4];
        float wy[4], wx[4];
        pbw_dev_bicubic_taps(oy, sd, R, iy, wy);
        pbw_dev_bicubic_taps(ox, sd, R, ix, wx);
        for (int j = 0; j < 4; j++)
            for (int q = 0; q < 4; q++) atomicAdd(gp + (int64_t)iy[j] * W + ix[q], g * wy[j] * wx[q]);
    }
}

// ---------- tiled kernels ----------

const int CROP_THREADS = 256;
const int CROP_ROWS = 16;             // output rows per block (the backward may use fewer)
const size_t CROP_SMEM = 48 * 1024;   // shared memory without opting in

// The taps of output o of an axis resized from sd to R samples, packed for shared memory.
static __device__ __forceinline__ void crop_taps4(int o, int sd, int R, int4 *pi, float4 *pw) {
    int ix[4];
    float w[4];
    pbw_dev_bicubic_taps(o, sd, R, ix, w);
    *pi = make_int4(ix[0], ix[1], ix[2], ix[3]);
    *pw = make_float4(w[0], w[1], w[2], w[3]);
}

// #{j < n: key(t[j]) < v}, key the first tap index (.x, last = 0) or the last (.w, last = 1),
// for t nondecreasing in key (the taps' first and last indices are).
static __device__ __forceinline__ int count_below(const int4 *t, int n, int v, int last) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if ((last ? t[mid].w : t[mid].x) < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// The tiled kernels' tables at the start of dynamic shared memory: column taps xi/xw (R) for the
// crop's output columns, then row taps yi/yw (rows) for the block's output rows, 16 bytes an
// entry, then the output's column and row offsets xo (R) and yo (rows) (crop_col_off,
// crop_row_off); crop_taps_bytes is their size, crop_tables lays them out, rest is what follows
// (16-byte aligned).
static __host__ __device__ __forceinline__ size_t crop_taps_bytes(int R, int rows) {
    return ((size_t)2 * R + 2 * (size_t)rows) * 16 + ((size_t)R + rows + 3) / 4 * 16;
}
struct crop_tabs {
    int4 *xi;
    float4 *xw;
    int4 *yi;
    float4 *yw;
    int *xo, *yo;
    float *rest;
};
static __device__ __forceinline__ crop_tabs crop_tables(int4 *smem, int R, int rows) {
    crop_tabs t;
    t.xi = smem;
    t.xw = (float4 *)(t.xi + R);
    t.yi = (int4 *)(t.xw + R);
    t.yw = (float4 *)(t.yi + rows);
    t.xo = (int *)(t.yw + rows);
    t.yo = t.xo + R;
    t.rest = (float *)((int4 *)t.xo + (R + rows + 3) / 4);
    return t;
}

// Fills the tile's output offsets (rows from oy0) and waits for them.
static __device__ __forceinline__ void crop_offsets(const crop_tabs &t, int R, int P, int oy0,
                                                    int rows) {
    for (int o = threadIdx.x; o < R + rows; o += blockDim.x) {
        if (o < R) t.xo[o] = crop_col_off(o, P);
        else t.yo[o - R] = crop_row_off(oy0 + (o - R), R, P);
    }
    __syncthreads();
}

// The forward's output value before the clamp from the taps of its row and column: the
// per-element kernel's arithmetic, term for term. Row sum j is the column pass of input row
// iy[j] at output column ox; hsum() forms one from the row's four tap values, and the forward
// kernel below either calls it for every output or keeps each input row's once in shared memory
// (the same value).
static __device__ __forceinline__ float crop_hsum4(const float (&x)[4], float4 vx) {
    const float wx[4] = {vx.x, vx.y, vx.z, vx.w};
    float r = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; q++) r += wx[q] * (x[q] * 0.5f + 0.5f);
    return r;
}
static __device__ __forceinline__ float crop_hsum(const float *row, int4 qx, float4 vx) {
    const float x[4] = {row[qx.x], row[qx.y], row[qx.z], row[qx.w]};
    return crop_hsum4(x, vx);
}

// The row pass: the output value from the column sums of its 4 row taps, qo bytes past col
// (qo the taps' offsets (iy - iy_lo) R in bytes, made once per output row: formed per output,
// they cost 8 of its ~60 instructions; now an addition a tap).
static __device__ __forceinline__ float crop_vsum(const float *col, int4 qo, float4 vy) {
    const int o[4] = {qo.x, qo.y, qo.z, qo.w};
    const float wy[4] = {vy.x, vy.y, vy.z, vy.w};
    const char *cb = reinterpret_cast<const char *>(col);
    float v = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) v += wy[j] * *reinterpret_cast<const float *>(cb + o[j]);
    return v;
}

// norm.std[ch] without indexing the parameter array (which puts it in local memory)
static __device__ __forceinline__ float std_of(const pbw_cuda_norm3 &norm, int ch) {
    return ch == 0 ? norm.std[0] : ch == 1 ? norm.std[1] : norm.std[2];
}

// a / s as the division rounds it, from y = __frcp_rn(s) made once: the product a y, its
// remainder exact by an FMA, and one correction step give the correctly rounded quotient
// (Markstein's theorem) wherever nothing under- or overflows, as with a crop's values (|a| <= 1)
// and CLIP's stds (~0.27). The division's bits without its per-call reciprocal refinement,
// range check and slow-path branch (10 instructions and a branch an output in the SASS).
static __device__ __forceinline__ float div_by(float a, float s, float y) {
    const float q = __fmul_rn(a, y);
    return __fmaf_rn(__fmaf_rn(-s, q, a), y, q);
}

// One channel's normalization: mean, std and the std's reciprocal for div_by.
struct crop_norm {
    float m, s, y;
};
static __device__ __forceinline__ crop_norm crop_norm_of(const pbw_cuda_norm3 &norm, int ch) {
    const float s = std_of(norm, ch);
    return {ch == 0 ? norm.mean[0] : ch == 1 ? norm.mean[1] : norm.mean[2], s, __frcp_rn(s)};
}

// Stores output value v (before the clamp) at o, and whether the clamp passed it at p (if any).
template <typename T>
static __device__ __forceinline__ void crop_store(float v, const crop_norm &cn, T *o,
                                                  uint8_t *p) {
    if (p) *p = v >= 0.0f && v <= 1.0f;
    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    crop_put(o, 0, div_by(v - cn.m, cn.s, cn.y));
}

// Calls f(l, ox) for this thread's share of a rows x R grid (l < rows, ox < R): the elements
// threadIdx.x, + CROP_THREADS, ... in row-major order, stepped without a division per element.
template <class F> static __device__ __forceinline__ void for_tile(int rows, int R, F &&f) {
    const int dl = CROP_THREADS / R, dox = CROP_THREADS - dl * R;
    int l = threadIdx.x / R, ox = threadIdx.x - l * R;
    while (l < rows) {
        f(l, ox);
        l += dl;
        ox += dox;
        if (ox >= R) ox -= R, l++;
    }
}

// Grid (B*n units, ceil(R / CROP_ROWS)). Dynamic shared memory: column taps sxi/sxw (R) and
// row taps syi/syw (CROP_ROWS), 16 bytes each, then hs (nycap, R) floats: per channel, the
// column pass (crop_hsum) of every input row the block's output rows read, ny of them (rows
// iy_lo ..), each once; the row pass then reads 4 of them per output. A block whose rows read
// more than nycap input rows (not with CLIP's crops) sums each output from x directly.
template <typename T>
__global__ static void __launch_bounds__(CROP_THREADS, 4)
    crops_fwd_tile_kernel(const float *__restrict__ x, int64_t H, int64_t W,
                          const int *__restrict__ crops, int n, int R, int P, int nycap,
                          pbw_cuda_norm3 norm, T *__restrict__ out,
                          uint8_t *__restrict__ pass) {
    pbw_pdl_wait();
    extern __shared__ int4 crop_smem[];
    const crop_tabs tab = crop_tables(crop_smem, R, CROP_ROWS);
    int4 *sxi = tab.xi, *syi = tab.yi;
    float4 *sxw = tab.xw, *syw = tab.yw;
    float *hs = tab.rest;
    const int64_t u = blockIdx.x, b = u / n;
    const int k = (int)(u % n), tid = threadIdx.x;
    const int cy = crops[3 * k], cx = crops[3 * k + 1], sd = crops[3 * k + 2];
    const int oy0 = blockIdx.y * CROP_ROWS, rows = min(CROP_ROWS, R - oy0);
    const int64_t HW = H * W, ob = u * 3 * (int64_t)R * R;
    const int chs = crop_ch_stride(R, P);
    const float *xb = x + b * 3 * HW + (int64_t)cy * W + cx;
    // output value v of channel ch at offset off (its row's and column's) of the channel's plane
    auto put = [&](float v, const crop_norm &cn, int ch, int off) {
        const int64_t i = ob + ch * chs + off;
        crop_store(v, cn, out + i, pass ? pass + i : nullptr);
    };
    crop_offsets(tab, R, P, oy0, rows);
    if (sd == R) { // a plain copy (uniform over the block)
        for_tile(rows, R, [&](int ly, int ox) {
#pragma unroll
            for (int ch = 0; ch < 3; ch++)
                put(xb[ch * HW + (int64_t)(oy0 + ly) * W + ox] * 0.5f + 0.5f,
                    crop_norm_of(norm, ch), ch, tab.yo[ly] + tab.xo[ox]);
        });
        return;
    }
    for (int o = tid; o < R + rows; o += CROP_THREADS) {
        if (o < R) crop_taps4(o, sd, R, &sxi[o], &sxw[o]);
        else crop_taps4(oy0 + (o - R), sd, R, &syi[o - R], &syw[o - R]);
    }
    __syncthreads();
    // taps are consecutive clamped indices, nondecreasing in the output: the rows read span
    // syi[0].x .. syi[rows - 1].w
    const int iy_lo = syi[0].x, ny = syi[rows - 1].w - iy_lo + 1;
    if (ny > nycap) { // uniform over the block
        for_tile(rows, R, [&](int ly, int ox) {
            const int4 qy = syi[ly], qx = sxi[ox];
            const float4 vy = syw[ly], vx = sxw[ox];
            const int iy[4] = {qy.x, qy.y, qy.z, qy.w};
            const float wy[4] = {vy.x, vy.y, vy.z, vy.w};
            for (int ch = 0; ch < 3; ch++) {
                const float *xp = xb + ch * HW;
                float v = 0.0f;
                for (int j = 0; j < 4; j++) v += wy[j] * crop_hsum(xp + (int64_t)iy[j] * W, qx, vx);
                put(v, crop_norm_of(norm, ch), ch, tab.yo[ly] + tab.xo[ox]);
            }
        });
        return;
    }
    // the row taps as byte offsets into hs, once every thread has read iy_lo (the loops below
    // synchronize before they read them)
    __syncthreads();
    const int rb = R * (int)sizeof(float);
    for (int o = tid; o < rows; o += CROP_THREADS) {
        const int4 q = syi[o];
        syi[o] = make_int4((q.x - iy_lo) * rb, (q.y - iy_lo) * rb, (q.z - iy_lo) * rb,
                           (q.w - iy_lo) * rb);
    }
    // A thread an output column where they fit in the block: its taps and offset are read
    // once, not per element (for_tile below steps a thread across columns). The kernel is
    // bound by its arithmetic (Nsight Compute: SM 77%, DRAM 10%); CUPTI on an H100, a CMA
    // generation's crops 1.37 -> 0.96 ms, an Adam step's 0.043 -> 0.035 ms.
    // Where no tap of a warp's columns is clamped (all but the crop's first and last columns),
    // its four loads of a row are consecutive, addressed from one pointer; the row sums are
    // those of crop_hsum. The outputs' addresses step from the channel's plane. Nsight Compute,
    // H200: an Adam step's crops 25.1 us, a CMA batch's 209 us before these and the division
    // (div_by); SM 52% and 72%.
    if (R <= CROP_THREADS) {
        const int ox = tid;
        int4 qx = make_int4(0, 0, 0, 0);
        float4 vx = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        int xo = 0;
        if (ox < R) qx = sxi[ox], vx = sxw[ox], xo = tab.xo[ox];
        const bool unclamped = __all_sync(0xffffffffu, ox >= R || qx.w - qx.x == 3);
        for (int ch = 0; ch < 3; ch++) {
            const float *xp = xb + ch * HW + (int64_t)iy_lo * W;
            if (ox < R && unclamped) {
                const float *r = xp + qx.x;
                for (int l = 0; l < ny; l++, r += W) {
                    const float v4[4] = {r[0], r[1], r[2], r[3]};
                    hs[l * R + ox] = crop_hsum4(v4, vx);
                }
            } else if (ox < R) {
                for (int l = 0; l < ny; l++) hs[l * R + ox] = crop_hsum(xp + (int64_t)l * W, qx, vx);
            }
            __syncthreads();
            if (ox < R) {
                const crop_norm cn = crop_norm_of(norm, ch);
                const int64_t i0 = ob + ch * chs + xo;
                T *o = out + i0;
                if (pass) {
                    uint8_t *p = pass + i0;
                    for (int ly = 0; ly < rows; ly++)
                        crop_store(crop_vsum(hs + ox, syi[ly], syw[ly]), cn, o + tab.yo[ly],
                                   p + tab.yo[ly]);
                } else {
                    for (int ly = 0; ly < rows; ly++)
                        crop_store(crop_vsum(hs + ox, syi[ly], syw[ly]), cn, o + tab.yo[ly],
                                   (uint8_t *)nullptr);
                }
            }
            __syncthreads(); // hs is read before the next channel overwrites it
        }
        return;
    }
    for (int ch = 0; ch < 3; ch++) {
        const float *xp = xb + ch * HW + (int64_t)iy_lo * W;
        for_tile(ny, R, [&](int l, int ox) {
            hs[l * R + ox] = crop_hsum(xp + (int64_t)l * W, sxi[ox], sxw[ox]);
        });
        __syncthreads();
        const crop_norm cn = crop_norm_of(norm, ch);
        for_tile(rows, R, [&](int ly, int ox) {
            put(crop_vsum(hs + ox, syi[ly], syw[ly]), cn, ch, tab.yo[ly] + tab.xo[ox]);
        });
        __syncthreads(); // hs is read before the next channel overwrites it
    }
}

// Input rows a tile of `rows` output rows reads when crops have sides <= sdm: i0 - 1 of the
// first to i0 + 2 of the last, i0 = floor((o + 0.5) * sd / R - 0.5) (the float rounding of
// sd / R and the floors add at most 2); the kernel checks and falls back when over.
static int crops_fwd_nycap(int R, int rows, int sdm) {
    return (int)ceil((double)(rows - 1) * sdm / R) + 6;
}

// The ordered backward, in two kernels. A crop is resized the same way along both axes (it is
// square), so one set of tables serves both. From the taps of the R outputs (consecutive
// clamped indices, nondecreasing in the output): for each of the sd crop samples c, the
// outputs that read it, [cr[2c], cr[2c+1]), and their weights on it, wc[c][j] for output
// cr[2c] + j (the taps of an output that land on c, summed: two of them only where the clamp
// folds them at a border); a sample read by more than CROP_KMAX outputs (a crop enlarged more
// than about twice) has its weights found from the taps as it is summed instead.
//
// crops_bwd_cols_kernel: a block takes CROP_CW crop columns of one crop unit and channel. It
// sums the adjoint of the column pass into shared memory, tt[oy][l] = sum_j wc[c][j] g[oy][cr
// [2c] + j] for column c = c0 + l (g = pass ? gy / std * 0.5 : 0, as the per-element
// kernel's), for all R output rows, a band of rows at a time, the band's g loaded once into gb;
// then the adjoint of the row pass, for every crop row iy sum_j wc[iy][j] tt[cr[2iy] + j][l],
// into its own columns of the unit's (sd, sd) slice of part (rows sdm floats apart): no other
// block writes there, so no atomics and no second pass over partial rows.
// crops_bwd_sum_kernel then adds, for each image pixel, the slices that hold it, crop by crop.
// Measured on an H200, an Adam step's 32 crops of 224 from 256 px (CUPTI): 181 us with the
// earlier design (blocks of 16 output rows, whose partial crop rows a search-and-sum kernel
// added: 122 + 59 us); this one with the taps' comparisons in its inner loops 195 us (179 +
// 16), its g loaded band by band 145, with the weight tables 102, with the band's loads all
// in flight 87 (72 + 15). Nsight Compute: bound by issuing instructions (0.49 a cycle a
// scheduler, 75% theoretical occupancy), not by memory (DRAM 7%).
const int CROP_CW = 32;   // crop columns a block of crops_bwd_cols_kernel: a warp's lanes
const int CROP_KMAX = 6;  // tabled weights a crop sample
const int CROP_GB = 4096; // floats of gb, the band of g (at least R)
const int CROP_BWD_THREADS = 512;
// The band's loads a thread issues before it stores them. A warp took 4 rows of 64 outputs at
// a time, most of them past the ~36 outputs that 32 crop columns read (CUPTI, H200: 66 us with
// its divisions, Nsight Compute 73 us, 32.2 M instructions issued).
const int CROP_BWD_LOADS = 4;

// Shared memory of crops_bwd_cols_kernel (floats and ints alike 4 bytes; the taps first, for
// their 16-byte alignment): taps xi, xw (R, 32 bytes an entry), cr (2 sdm), wc (sdm, CROP_KMAX),
// row and column offsets of the output's layout (R each), tt (R, CROP_CW), gb (max(CROP_GB,
// R)).
static size_t crops_bwd_smem(int R, int sdm) {
    return (size_t)R * 32 + ((size_t)sdm * (2 + CROP_KMAX) + 2 * (size_t)R +
                             (size_t)R * CROP_CW + (size_t)(R > CROP_GB ? R : CROP_GB)) * 4;
}

// The sum of w * v over the taps q of one output that equal c.
static __device__ __forceinline__ float tap_term(int4 q, float4 w, int c, float v) {
    float s = 0.0f;
    if (q.x == c) s += w.x * v;
    if (q.y == c) s += w.y * v;
    if (q.z == c) s += w.z * v;
    if (q.w == c) s += w.w * v;
    return s;
}

// sum_j w_j v[j] over the outputs o0 + j (j < cnt) that read sample c: from the weights wc (cnt
// <= CROP_KMAX), else from the taps. v is indexed from o0.
static __device__ __forceinline__ float adjoint_sum(const float *wcc, int cnt, int o0, int c,
                                                    const int4 *xi, const float4 *xw,
                                                    const float *v, int vstride) {
    float s = 0.0f;
    if (cnt <= CROP_KMAX) {
#pragma unroll
        for (int j = 0; j < CROP_KMAX; j++)
            if (j < cnt) s += wcc[j] * v[j * vstride];
    } else {
        for (int j = 0; j < cnt; j++) s += tap_term(xi[o0 + j], xw[o0 + j], c, v[j * vstride]);
    }
    return s;
}

__global__ static void __launch_bounds__(CROP_BWD_THREADS, 3)
    crops_bwd_cols_kernel(const float *__restrict__ gy, const uint8_t *__restrict__ pass,
                          const int *__restrict__ crops, int n, int k0, int kc, int R, int P,
                          int sdm, pbw_cuda_norm3 norm, float *__restrict__ part) {
    pbw_pdl_wait();
    extern __shared__ int4 crop_smem[];
    int4 *xi = crop_smem;
    float4 *xw = reinterpret_cast<float4 *>(xi + R);
    int *cr = reinterpret_cast<int *>(xw + R);
    float *wc = reinterpret_cast<float *>(cr + 2 * sdm);
    int *roff = reinterpret_cast<int *>(wc + (size_t)sdm * CROP_KMAX), *coff = roff + R;
    float *tt = reinterpret_cast<float *>(coff + R), *gb = tt + R * CROP_CW;
    const int gcap = R > CROP_GB ? R : CROP_GB;
    const int64_t uc = blockIdx.x, bk = uc / 3, b = bk / kc; // part's unit, its image
    const int ch = (int)(uc % 3), k = k0 + (int)(bk % kc), tid = threadIdx.x;
    const int lane = tid % 32, warp = tid / 32, nwarp = CROP_BWD_THREADS / 32;
    const int64_t u = b * n + k; // the crop unit of gy
    const int sd = crops[3 * k + 2], c0 = blockIdx.y * CROP_CW;
    if (c0 >= sd) return; // uniform over the block: this crop is narrower than the widest
    const int ncol = min(CROP_CW, sd - c0);
    const int64_t ob = u * 3 * (int64_t)R * R + (int64_t)ch * crop_ch_stride(R, P);
    float *pc = part + uc * (int64_t)sdm * sdm + c0;
    const float sc = std_of(norm, ch), ysc = __frcp_rn(sc);
    for (int o = tid; o < R; o += CROP_BWD_THREADS) {
        roff[o] = crop_row_off(o, R, P);
        coff[o] = crop_col_off(o, P);
        if (sd != R) crop_taps4(o, sd, R, &xi[o], &xw[o]);
    }
    __syncthreads();
    auto g_of = [&](int64_t i) { // both loads issued before either is used
        const float v = gy[i];
        return pass[i] ? div_by(v, sc, ysc) * 0.5f : 0.0f;
    };
    if (sd == R) { // a plain copy: the crop's gradient is g itself
        for (int iy = warp; iy < R; iy += nwarp)
            if (lane < ncol) pc[(int64_t)iy * sdm + lane] = g_of(ob + roff[iy] + coff[c0 + lane]);
        return;
    }
    for (int c = tid; c < sd; c += CROP_BWD_THREADS) {
        const int o0 = count_below(xi, R, c, 1), o1 = count_below(xi, R, c + 1, 0);
        cr[2 * c] = o0;
        cr[2 * c + 1] = o1;
        if (o1 - o0 <= CROP_KMAX)
            for (int j = 0; j < o1 - o0; j++)
                wc[c * CROP_KMAX + j] = tap_term(xi[o0 + j], xw[o0 + j], c, 1.0f);
    }
    __syncthreads();
    // the column pass's adjoint: a warp an output row, its lanes the block's columns
    const int c = c0 + lane, olo = cr[2 * c0], no = cr[2 * (c0 + ncol - 1) + 1] - olo;
    const int band = no > 0 ? min(R, gcap / no) : R;
    const int co0 = lane < ncol ? cr[2 * c] : 0, cnt = lane < ncol ? cr[2 * c + 1] - co0 : 0;
    for (int r0 = 0; r0 < R; r0 += band) {
        const int nr = min(band, R - r0);
        // the band's nr x no values of g, row-major, CROP_BWD_LOADS of a thread's in flight
        // together; a thread steps through its elements without divisions
        if (no > 0) {
            const int dr = CROP_BWD_THREADS / no, dq = CROP_BWD_THREADS - dr * no;
            int r = tid / no, q = tid - r * no;
            while (r < nr) {
                float v[CROP_BWD_LOADS];
                int at[CROP_BWD_LOADS];
#pragma unroll
                for (int t = 0; t < CROP_BWD_LOADS; t++) {
                    const bool in = r < nr;
                    at[t] = in ? r * no + q : -1;
                    v[t] = in ? g_of(ob + roff[r0 + r] + coff[olo + q]) : 0.0f;
                    r += dr;
                    q += dq;
                    if (q >= no) q -= no, r++;
                }
#pragma unroll
                for (int t = 0; t < CROP_BWD_LOADS; t++)
                    if (at[t] >= 0) gb[at[t]] = v[t];
            }
        }
        __syncthreads();
        for (int r = warp; r < nr; r += nwarp)
            tt[(r0 + r) * CROP_CW + lane] =
                adjoint_sum(wc + c * CROP_KMAX, cnt, co0, c, xi, xw, gb + r * no + co0 - olo, 1);
        __syncthreads(); // gb is read before the next band overwrites it
    }
    // the row pass's adjoint, into this block's columns of the slice
    if (lane < ncol)
        for (int iy = warp; iy < sd; iy += nwarp) {
            const int o0 = cr[2 * iy];
            pc[(int64_t)iy * sdm + lane] = adjoint_sum(wc + iy * CROP_KMAX, cr[2 * iy + 1] - o0,
                                                       o0, iy, xi, xw, tt + o0 * CROP_CW + lane,
                                                       CROP_CW);
        }
}

// gx (B,3,H,W) += the slices of part that hold each pixel, crop by crop (crops k0 .. k0 + kc,
// whose slices part holds): a thread a pixel of one image plane (grid.y = b * 3 + ch), the
// crops in shared memory.
__global__ static void crops_bwd_sum_kernel(const float *__restrict__ part,
                                            const int *__restrict__ crops, int k0, int kc,
                                            int sdm, int64_t H, int64_t W,
                                            float *__restrict__ gx) {
    pbw_pdl_wait();
    extern __shared__ int4 sum_smem[];
    int *scrop = reinterpret_cast<int *>(sum_smem);
    for (int i = threadIdx.x; i < 3 * kc; i += blockDim.x) scrop[i] = crops[3 * k0 + i];
    __syncthreads();
    const int64_t b = blockIdx.y / 3, p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int ch = (int)(blockIdx.y % 3);
    if (p >= H * W) return;
    const int x = (int)(p % W), y = (int)(p / W);
    const int64_t slice = (int64_t)sdm * sdm;
    const float *pb = part + (b * kc * 3 + ch) * slice;
    float s = 0.0f;
    for (int k0 = 0; k0 < kc; k0 += 8) { // eight crops' loads in flight, then added in order
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int k = k0 + j;
            v[j] = 0.0f;
            if (k >= kc) continue;
            const int iy = y - scrop[3 * k], c = x - scrop[3 * k + 1], sd = scrop[3 * k + 2];
            if (iy >= 0 && iy < sd && c >= 0 && c < sd)
                v[j] = pb[k * 3 * slice + (int64_t)iy * sdm + c];
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (k0 + j < kc) s += v[j];
    }
    gx[(b * 3 + ch) * H * W + p] += s;
}

template <typename T>
static void crops_forward(const float *x, int64_t B, int64_t H, int64_t W, const int *crops, int n,
                          int R, int P, pbw_cuda_norm3 norm, T *out, uint8_t *pass) {
    int64_t total = B * n * 3 * (int64_t)R * R;
    if (total <= 0) return;
    // crops lie inside the image (pbw_clip_crops checks), so their sides are <= min(H, W)
    const int sdm = (int)(H < W ? H : W);
    const size_t taps = crop_taps_bytes(R, CROP_ROWS);
    int nycap = 0;
    if (taps < CROP_SMEM) {
        const int64_t fit = (int64_t)((CROP_SMEM - taps) / ((size_t)R * sizeof(float)));
        const int want = crops_fwd_nycap(R, CROP_ROWS, sdm);
        nycap = (int)(fit < want ? fit : want);
    }
    const size_t smem = taps + (size_t)nycap * R * sizeof(float);
    if (B * n <= INT32_MAX && smem <= CROP_SMEM) {
        const dim3 grid((unsigned)(B * n), (unsigned)((R + CROP_ROWS - 1) / CROP_ROWS));
        pbw_launch(crops_fwd_tile_kernel<T>, grid, CROP_THREADS, smem, x, H, W, crops, n, R, P,
                   nycap, norm, out, pass);
    } else {
        pbw_launch(crops_fwd_kernel<T>, pbw_grid(total), 256, 0, x, B, H, W, crops, n, R, P, norm,
                   out, pass);
    }
    PBW_CUDA_LAUNCHED("clip_crops forward");
}

extern "C" void pbw_cuda_clip_crops_forward(const float *x, int64_t B, int64_t H, int64_t W,
                                            const int *crops, int n, int R, int P,
                                            pbw_cuda_norm3 norm, float *out, void *out_half,
                                            uint8_t *pass) {
    if (!out_half) {
        crops_forward(x, B, H, W, crops, n, R, P, norm, out, pass);
        return;
    }
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using Hf = decltype(t);
        crops_forward(x, B, H, W, crops, n, R, P, norm, (Hf *)out_half, pass);
    });
}

// Whether crops_bwd_cols_kernel's shared memory fits, asking for more than the 48 KB a kernel
// gets without (the first time a shape needs it).
static bool crops_bwd_fits(int R, int sdm) {
    static size_t opted = CROP_SMEM;
    const size_t need = crops_bwd_smem(R, sdm);
    if (need <= opted) return true;
    if (cudaFuncSetAttribute(crops_bwd_cols_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)need) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    opted = need;
    return true;
}

// The most scratch the ordered backward takes: 32 crops of 224 from 256 px take 25 MB, from
// 512 px 101 MB; beyond it the crops are taken a few at a time (1024 px: 21 a pass).
static const size_t CROPS_SCRATCH_MAX = (size_t)256 << 20;

// Crops a pass of the ordered backward: as many of the n as fit in CROPS_SCRATCH_MAX (each
// takes B * 3 slices of sdm^2 floats), or 0 when not even one does or the grids would not.
static int crops_bwd_chunk(int64_t B, int sdm, int n) {
    const int64_t per = B * 3 * (int64_t)sdm * sdm * (int64_t)sizeof(float);
    if (per <= 0 || B * 3 > 65535) return 0;
    const int64_t fit = (int64_t)CROPS_SCRATCH_MAX / per;
    int64_t kc = fit < n ? fit : n;
    if (kc > 4096) kc = 4096; // the sum kernel keeps a pass's crops in shared memory
    while (kc > 0 && B * kc * 3 > INT32_MAX) kc /= 2;
    return (int)kc;
}

extern "C" size_t pbw_cuda_clip_crops_backward_scratch_floats(int64_t B, int64_t H, int64_t W,
                                                              int n, int R) {
    const int sdm = (int)(H < W ? H : W);
    if (B * n <= 0 || !crops_bwd_fits(R, sdm)) return 0;
    const int kc = crops_bwd_chunk(B, sdm, n);
    return kc > 0 ? (size_t)(B * kc * 3) * (size_t)sdm * (size_t)sdm : 0;
}

extern "C" void pbw_cuda_clip_crops_backward(const float *gy, const uint8_t *pass, int64_t B,
                                             int64_t H, int64_t W, const int *crops, int n,
                                             int R, int P, pbw_cuda_norm3 norm, float *gx,
                                             float *scratch) {
    int64_t total = B * n * 3 * (int64_t)R * R;
    if (total <= 0) return;
    // crops lie inside the image (pbw_clip_crops checks), so their sides are <= min(H, W)
    const int sdm = (int)(H < W ? H : W);
    if (scratch && pbw_cuda_clip_crops_backward_scratch_floats(B, H, W, n, R) > 0) {
        const int kc = crops_bwd_chunk(B, sdm, n);
        for (int k0 = 0; k0 < n; k0 += kc) { // crop by crop in order: the same bits every run
            const int m = n - k0 < kc ? n - k0 : kc;
            const dim3 grid((unsigned)(B * m * 3), (unsigned)((sdm + CROP_CW - 1) / CROP_CW));
            pbw_launch(crops_bwd_cols_kernel, grid, CROP_BWD_THREADS, crops_bwd_smem(R, sdm), gy,
                       pass, crops, n, k0, m, R, P, sdm, norm, scratch);
            PBW_CUDA_LAUNCHED("clip_crops backward");
            const dim3 sgrid((unsigned)((H * W + 255) / 256), (unsigned)(B * 3));
            pbw_launch(crops_bwd_sum_kernel, sgrid, 256, (size_t)3 * m * sizeof(int), scratch,
                       crops, k0, m, sdm, H, W, gx);
        }
    } else {
        pbw_launch(crops_bwd_kernel, pbw_grid(total), 256, 0, gy, pass, B, H, W, crops, n, R, P,
                   norm, gx);
    }
    PBW_CUDA_LAUNCHED("clip_crops backward");
}

// ---------- the Adam update of queued steps ----------

// One block: every thread reads the step index before thread 0 moves it on. The update's
// arithmetic is pbw_adam_apply's, each rounding spelled out (no contraction into FMAs that the
// CPU code does not have; sqrtf and the divisions are the IEEE ones).
__global__ static void adam_queued_kernel(int n, float *__restrict__ param, float *__restrict__ m,
                                          float *__restrict__ v, const float *__restrict__ grad,
                                          const float *__restrict__ coef, const float *v0,
                                          const float *v1, const float *v2, const float *v3,
                                          int *counter, float *ring, int slots) {
    pbw_pdl_wait();
    const int k = *counter;
    const float *c = coef + 8 * (int64_t)k;
    const float b1 = c[0], omb1 = c[1], b2 = c[2], omb2 = c[3], bc2 = c[4], eps = c[5],
                neg = c[6], wd = c[7];
    float *slot = ring + (int64_t)(k % slots) * (8 + n);
    if (threadIdx.x == 0) {
        reinterpret_cast<int *>(slot)[0] = k;
        slot[1] = v0 ? *v0 : 0.0f;
        slot[2] = v1 ? *v1 : 0.0f;
        slot[3] = v2 ? *v2 : 0.0f;
        slot[4] = v3 ? *v3 : 0.0f;
        slot[5] = slot[6] = slot[7] = 0.0f;
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float p = param[i];
        slot[8 + i] = p;
        float g = grad[i];
        if (wd != 0.0f) g = __fmaf_rn(wd, p, g);
        const float mi = __fmaf_rn(omb1, g, __fmul_rn(m[i], b1));
        const float vi = __fmaf_rn(__fmul_rn(omb2, g), g, __fmul_rn(v[i], b2));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2), eps);
        param[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(neg, mi), denom));
    }
    __syncthreads(); // every thread has read k
    if (threadIdx.x == 0) *counter = k + 1;
}

extern "C" void pbw_cuda_adam_queued(int n, float *param, float *m, float *v, const float *grad,
                                     const float *coef, const float *const val[4], int *counter,
                                     float *ring, int slots) {
    if (n <= 0 || slots <= 0) return;
    pbw_launch(adam_queued_kernel, 1, n < 1024 ? (n + 31) / 32 * 32 : 1024, 0, n, param, m, v,
               grad, coef, val[0], val[1], val[2], val[3], counter, ring, slots);
    PBW_CUDA_LAUNCHED("adam update");
}
