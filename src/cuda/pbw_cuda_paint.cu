// pbw_cuda_paint.cu: CLIP's crops on the GPU (see pbw_cuda_paint.h). The bicubic taps are
// bit-equal to the CPU's (pbw_cuda_resample.cuh).
//
// A block of the tiled kernels takes CROP_ROWS output rows of one crop unit (image b, crop k)
// and all three channels: it computes the taps of the R output columns and its rows once, in
// shared memory (the one-thread-per-output kernels recomputed 8 tap sets, in double, plus a
// chain of 64-bit divisions, for every output element), and its threads walk the rows'
// outputs in order, so the writes are coalesced. The forward adds each output's terms in the
// same order and with the same products as the per-element kernel, so it gives the same bits.
// The backward sums each block's share of the adjoint in shared memory, first along output
// columns, then along output rows, and stores it, the input rows its output rows reach, in a
// slice of scratch of its own; a second kernel adds, for each image pixel, the slices that hold
// it, crop by crop and block by block, into gx: no atomics, so the same bits every run. With
// atomics (one add per touched pixel and block) an Adam step's 32 crops of 224 from 256 px took
// 148 us on an H100; now 168 us (the tile kernel 122 us, its loops, not the atomics, setting
// its time; 146 us before the rows' tap ranges were found once a row instead of once an
// element). Without its scratch (out of memory, or more than 256 MiB of it) the tile kernel
// adds by atomics, as before; the per-element kernels (atomics) remain for shapes whose tiles
// do not fit in shared memory.
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
// iy[j] at output column ox; hsum() forms one, and the forward kernel below either calls it for
// every output or keeps each input row's once in shared memory (the same value).
static __device__ __forceinline__ float crop_hsum(const float *row, int4 qx, float4 vx) {
    const int ix[4] = {qx.x, qx.y, qx.z, qx.w};
    const float wx[4] = {vx.x, vx.y, vx.z, vx.w};
    float r = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; q++) r += wx[q] * (row[ix[q]] * 0.5f + 0.5f);
    return r;
}

// The row pass: the output value from the column sums col[(iy - iy_lo) R] of its 4 row taps.
static __device__ __forceinline__ float crop_vsum(const float *col, int R, int4 qy, float4 vy,
                                                  int iy_lo) {
    const int iy[4] = {qy.x, qy.y, qy.z, qy.w};
    const float wy[4] = {vy.x, vy.y, vy.z, vy.w};
    float v = 0.0f;
    for (int j = 0; j < 4; j++) v += wy[j] * col[(iy[j] - iy_lo) * R];
    return v;
}

template <typename T>
static __device__ __forceinline__ void crop_store(float v, int ch, const pbw_cuda_norm3 &norm,
                                                  int64_t i, T *out, uint8_t *pass) {
    if (pass) pass[i] = v >= 0.0f && v <= 1.0f;
    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    const float m = ch == 0 ? norm.mean[0] : ch == 1 ? norm.mean[1] : norm.mean[2];
    const float s = ch == 0 ? norm.std[0] : ch == 1 ? norm.std[1] : norm.std[2];
    crop_put(out, i, (v - m) / s);
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
    crop_offsets(tab, R, P, oy0, rows);
    if (sd == R) { // a plain copy (uniform over the block)
        for_tile(rows, R, [&](int ly, int ox) {
#pragma unroll
            for (int ch = 0; ch < 3; ch++)
                crop_store(xb[ch * HW + (int64_t)(oy0 + ly) * W + ox] * 0.5f + 0.5f, ch, norm,
                           ob + ch * chs + tab.yo[ly] + tab.xo[ox], out, pass);
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
                crop_store(v, ch, norm, ob + ch * chs + tab.yo[ly] + tab.xo[ox], out, pass);
            }
        });
        return;
    }
    // A thread an output column where they fit in the block: its taps and offset are read
    // once, not per element (for_tile below steps a thread across columns). The kernel is
    // bound by its arithmetic (Nsight Compute: SM 77%, DRAM 10%); CUPTI on an H100, a CMA
    // generation's crops 1.37 -> 0.96 ms, an Adam step's 0.043 -> 0.035 ms.
    if (R <= CROP_THREADS) {
        const int ox = tid;
        int4 qx = make_int4(0, 0, 0, 0);
        float4 vx = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        int xo = 0;
        if (ox < R) qx = sxi[ox], vx = sxw[ox], xo = tab.xo[ox];
        for (int ch = 0; ch < 3; ch++) {
            const float *xp = xb + ch * HW + (int64_t)iy_lo * W;
            if (ox < R)
                for (int l = 0; l < ny; l++) hs[l * R + ox] = crop_hsum(xp + (int64_t)l * W, qx, vx);
            __syncthreads();
            if (ox < R)
                for (int ly = 0; ly < rows; ly++)
                    crop_store(crop_vsum(hs + ox, R, syi[ly], syw[ly], iy_lo), ch, norm,
                               ob + ch * chs + tab.yo[ly] + xo, out, pass);
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
        for_tile(rows, R, [&](int ly, int ox) {
            crop_store(crop_vsum(hs + ox, R, syi[ly], syw[ly], iy_lo), ch, norm,
                       ob + ch * chs + tab.yo[ly] + tab.xo[ox], out, pass);
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

// The most input rows a backward tile of `rows` output rows stores (crops_fwd_nycap's bound).
static int crops_bwd_nycap(int R, int rows, int sdm) {
    const int c = crops_fwd_nycap(R, rows, sdm);
    return c > rows ? c : rows; // a plain copy's tile stores its own rows
}

// norm.std[ch] without indexing the parameter array (which puts it in local memory)
static __device__ __forceinline__ float std_of(const pbw_cuda_norm3 &norm, int ch) {
    return ch == 0 ? norm.std[0] : ch == 1 ? norm.std[1] : norm.std[2];
}

// Shared memory of the tiled backward for tiles of `rows` output rows and crops of side <= sdm:
// the taps (16-byte entries: sxi, sxw (R), syi, syw (rows)), then floats gt (rows, R) and
// tt (rows, sdm), then ints cr (sdm, 2) and rr (crops_bwd_nycap, 2).
static size_t crops_bwd_smem(int R, int rows, int sdm) {
    return crop_taps_bytes(R, rows) + ((size_t)rows * R + (size_t)rows * sdm) * sizeof(float) +
           ((size_t)sdm + (size_t)crops_bwd_nycap(R, rows, sdm)) * 2 * sizeof(int);
}

// Per channel: gt = the tile's gradient at the resize's output (pass ? gy / std * 0.5 : 0, as
// the per-element kernel's g); tt[r][c] = sum over the outputs ox of row r reading crop column
// c and their taps of wx * gt[r][ox]; then each crop pixel (iy, c) the tile's rows reach gets
// sum over those rows r and taps of wy * tt[r][c], stored at row iy - iy_lo of the block's
// slice of part (nycap rows of sd floats a channel; rng holds iy_lo and the rows stored). Rows
// past nycap (the bound crops_bwd_nycap never lets happen) are added to gx by atomics instead,
// and so is every row when part is NULL (no scratch: nycap 0, rng NULL).
// Outputs reading column c are those whose taps (consecutive clamped indices, nondecreasing in
// the output) span it: [cr[2c], cr[2c+1]); rows reading iy likewise, [rr[2l], rr[2l+1]) for
// l = iy - iy_lo, each found once by a search over the tile.
__global__ static void __launch_bounds__(CROP_THREADS)
    crops_bwd_tile_kernel(const float *__restrict__ gy, const uint8_t *__restrict__ pass,
                          int64_t H, int64_t W, const int *__restrict__ crops, int n, int R,
                          int P, int rows_max, int sdm, pbw_cuda_norm3 norm, int nycap,
                          float *__restrict__ part, int2 *__restrict__ rng,
                          float *__restrict__ gx) {
    pbw_pdl_wait();
    extern __shared__ int4 crop_smem[];
    const crop_tabs tab = crop_tables(crop_smem, R, rows_max);
    int4 *sxi = tab.xi, *syi = tab.yi;
    float4 *sxw = tab.xw, *syw = tab.yw;
    float *gt = tab.rest;
    float *tt = gt + (size_t)rows_max * R;
    int *cr = (int *)(tt + (size_t)rows_max * sdm), *rr = cr + 2 * sdm;
    const int64_t u = blockIdx.x, b = u / n;
    const int k = (int)(u % n), tid = threadIdx.x;
    const int cy = crops[3 * k], cx = crops[3 * k + 1], sd = crops[3 * k + 2];
    const int oy0 = blockIdx.y * rows_max, rows = min(rows_max, R - oy0);
    const int64_t HW = H * W, ob = u * 3 * (int64_t)R * R;
    const int chs = crop_ch_stride(R, P);
    float *gb = gx + b * 3 * HW + (int64_t)cy * W + cx;
    const int64_t slice = (int64_t)nycap * sdm, blk = u * gridDim.y + blockIdx.y;
    float *pb = part ? part + blk * 3 * (int64_t)nycap * sdm : nullptr;
    crop_offsets(tab, R, P, oy0, rows);
    if (sd == R) { // a plain copy: the block's output rows are the input rows it reaches
        if (tid == 0 && rng) rng[blk] = make_int2(oy0, rows);
        for (int e = tid; e < rows * R; e += CROP_THREADS) {
            const int ly = e / R, ox = e - ly * R;
            for (int ch = 0; ch < 3; ch++) {
                const int64_t i = ob + ch * chs + tab.yo[ly] + tab.xo[ox];
                const float g = pass[i] ? gy[i] / std_of(norm, ch) * 0.5f : 0.0f;
                if (pb) pb[ch * slice + e] = g;
                else if (g != 0.0f) atomicAdd(gb + ch * HW + (int64_t)(oy0 + ly) * W + ox, g);
            }
        }
        return;
    }
    for (int o = tid; o < R + rows; o += CROP_THREADS) {
        if (o < R) crop_taps4(o, sd, R, &sxi[o], &sxw[o]);
        else crop_taps4(oy0 + (o - R), sd, R, &syi[o - R], &syw[o - R]);
    }
    __syncthreads();
    for (int c = tid; c < sd; c += CROP_THREADS) {
        cr[2 * c] = count_below(sxi, R, c, 1);
        cr[2 * c + 1] = count_below(sxi, R, c + 1, 0);
    }
    const int iy_lo = syi[0].x, ny = syi[rows - 1].w - iy_lo + 1;
    if (tid == 0 && rng) rng[blk] = make_int2(iy_lo, min(ny, nycap));
    for (int l = tid; l < min(ny, nycap); l += CROP_THREADS) {
        rr[2 * l] = count_below(syi, rows, iy_lo + l, 1);
        rr[2 * l + 1] = count_below(syi, rows, iy_lo + l + 1, 0);
    }
    // (cr and rr are first read after the barrier below)
    for (int ch = 0; ch < 3; ch++) {
        const float sc = std_of(norm, ch);
        for (int e = tid; e < rows * R; e += CROP_THREADS) {
            const int ly = e / R;
            const int64_t i = ob + ch * chs + tab.yo[ly] + tab.xo[e - ly * R];
            gt[e] = pass[i] ? gy[i] / sc * 0.5f : 0.0f;
        }
        __syncthreads();
        for (int e = tid; e < rows * sd; e += CROP_THREADS) {
            const int r = e / sd, c = e - r * sd;
            const float *g = gt + (size_t)r * R;
            float s = 0.0f;
            for (int o = cr[2 * c]; o < cr[2 * c + 1]; o++) {
                const int4 q = sxi[o];
                const float4 w = sxw[o];
                const float go = g[o];
                if (q.x == c) s += w.x * go;
                if (q.y == c) s += w.y * go;
                if (q.z == c) s += w.z * go;
                if (q.w == c) s += w.w * go;
            }
            tt[(size_t)r * sd + c] = s;
        }
        __syncthreads(); // the next channel's gt is written only after its pass reads tt
        float *gc = gb + ch * HW, *pc = pb ? pb + ch * slice : nullptr;
        for (int e = tid; e < ny * sd; e += CROP_THREADS) {
            const int l = e / sd, c = e - l * sd, iy = iy_lo + l;
            const int r0 = l < nycap ? rr[2 * l] : count_below(syi, rows, iy, 1);
            const int r1 = l < nycap ? rr[2 * l + 1] : count_below(syi, rows, iy + 1, 0);
            float s = 0.0f;
            for (int r = r0; r < r1; r++) {
                const int4 q = syi[r];
                const float4 w = syw[r];
                const float t = tt[(size_t)r * sd + c];
                if (q.x == iy) s += w.x * t;
                if (q.y == iy) s += w.y * t;
                if (q.z == iy) s += w.z * t;
                if (q.w == iy) s += w.w * t;
            }
            if (l < nycap) pc[e] = s;
            else if (s != 0.0f) atomicAdd(gc + (int64_t)iy * W + c, s);
        }
    }
}

// gx (B,3,H,W) += the tile slices that hold each pixel: crop by crop, and in a crop the blocks
// (at most two; looked for around the block of the output rows that read the pixel's row) in
// order. A block takes pixels of one image plane (grid.y = b * 3 + ch), one thread a pixel,
// with the crops and the image's (iy_lo, rows) pairs in shared memory when they fit.
__global__ static void crops_bwd_sum_kernel(const float *__restrict__ part,
                                            const int2 *__restrict__ rng,
                                            const int *__restrict__ crops, int n, int nblk,
                                            int rows, int R, int nycap, int sdm, int64_t H,
                                            int64_t W, float *__restrict__ gx) {
    pbw_pdl_wait();
    extern __shared__ int4 sum_smem[];
    const int64_t b = blockIdx.y / 3;
    const int ch = (int)(blockIdx.y % 3);
    int *scrop = (int *)sum_smem;
    int2 *srng = (int2 *)(scrop + ((3 * n + 1) & ~1));
    for (int i = threadIdx.x; i < 3 * n; i += blockDim.x) scrop[i] = crops[i];
    for (int i = threadIdx.x; i < n * nblk; i += blockDim.x) srng[i] = rng[b * n * nblk + i];
    __syncthreads();
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= H * W) return;
    const int x = (int)(p % W), y = (int)(p / W);
    float s = 0.0f;
    for (int k = 0; k < n; k++) {
        const int cy = scrop[3 * k], cx = scrop[3 * k + 1], sd = scrop[3 * k + 2];
        if (y < cy || y >= cy + sd || x < cx || x >= cx + sd) continue;
        const int iy = y - cy, c = x - cx;
        // the output rows reading input row iy lie within 2.5 input rows of it (clamped taps
        // at the borders: within 2)
        const float up = (float)R / (float)sd;
        const int oy = max(0, (int)((iy + 0.5f) * up - 0.5f)), span = (int)(3.0f * up / rows) + 2;
        const int j0 = max(0, oy / rows - span), j1 = min(nblk, oy / rows + span + 1);
        for (int j = j0; j < j1; j++) {
            const int2 r = srng[k * nblk + j];
            if (iy >= r.x && iy < r.x + r.y)
                s += part[(((b * n + k) * nblk + j) * 3 + ch) * (int64_t)nycap * sdm +
                          (int64_t)(iy - r.x) * sd + c];
        }
    }
    gx[(b * 3 + ch) * H * W + p] += s;
}

// Shared memory of crops_bwd_sum_kernel.
static size_t crops_sum_smem(int n, int nblk) {
    return (size_t)((3 * n + 1) & ~1) * sizeof(int) + (size_t)n * nblk * 8;
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

// Floats of the backward's slices (an even count: the int2 table follows them).
static size_t crops_bwd_part_floats(int64_t blocks, int nycap, int sdm) {
    const size_t f = (size_t)(blocks * 3 * nycap * sdm);
    return f + (f & 1);
}

// The tiled backward's tile height for crops of side <= sdm, or 0 when no tile fits.
static int crops_bwd_rows(int R, int sdm) {
    int rows = CROP_ROWS;
    while (rows > 2 && crops_bwd_smem(R, rows, sdm) > CROP_SMEM) rows /= 2;
    return crops_bwd_smem(R, rows, sdm) <= CROP_SMEM ? rows : 0;
}

// The most scratch the ordered backward takes (32 crops of 224 need 33 MB from 256 px, 121 MB
// from 512 px, 440 MB from 1024 px): beyond it the atomics serve.
static const size_t CROPS_SCRATCH_MAX = (size_t)256 << 20;

extern "C" size_t pbw_cuda_clip_crops_backward_scratch_floats(int64_t B, int64_t H, int64_t W,
                                                              int n, int R) {
    const int sdm = (int)(H < W ? H : W), rows = crops_bwd_rows(R, sdm);
    if (B * n <= 0 || rows == 0 || B * n > INT32_MAX || B * 3 > 65535) return 0;
    const int nblk = (R + rows - 1) / rows;
    if (crops_sum_smem(n, nblk) > CROP_SMEM) return 0;
    const int64_t blocks = B * n * nblk;
    // the slices, then the blocks' (iy_lo, rows) pairs as ints, 8-byte aligned
    const size_t f = crops_bwd_part_floats(blocks, crops_bwd_nycap(R, rows, sdm), sdm) + 2 * blocks;
    return f * sizeof(float) <= CROPS_SCRATCH_MAX ? f : 0;
}

extern "C" void pbw_cuda_clip_crops_backward(const float *gy, const uint8_t *pass, int64_t B,
                                             int64_t H, int64_t W, const int *crops, int n,
                                             int R, int P, pbw_cuda_norm3 norm, float *gx,
                                             float *scratch) {
    int64_t total = B * n * 3 * (int64_t)R * R;
    if (total <= 0) return;
    // crops lie inside the image (pbw_clip_crops checks), so their sides are <= min(H, W)
    const int sdm = (int)(H < W ? H : W), rows = crops_bwd_rows(R, sdm);
    if (scratch && pbw_cuda_clip_crops_backward_scratch_floats(B, H, W, n, R) > 0) {
        const int nblk = (R + rows - 1) / rows, nycap = crops_bwd_nycap(R, rows, sdm);
        const int64_t blocks = B * n * nblk;
        float *part = scratch;
        int2 *rng = reinterpret_cast<int2 *>(scratch + crops_bwd_part_floats(blocks, nycap, sdm));
        const dim3 grid((unsigned)(B * n), (unsigned)nblk);
        pbw_launch(crops_bwd_tile_kernel, grid, CROP_THREADS, crops_bwd_smem(R, rows, sdm), gy,
                   pass, H, W, crops, n, R, P, rows, sdm, norm, nycap, part, rng, gx);
        PBW_CUDA_LAUNCHED("clip_crops backward");
        const dim3 sgrid((unsigned)((H * W + 255) / 256), (unsigned)(B * 3));
        pbw_launch(crops_bwd_sum_kernel, sgrid, 256, crops_sum_smem(n, nblk), part, rng, crops, n,
                   nblk, rows, R, nycap, sdm, H, W, gx);
    } else if (rows > 0 && B * n <= INT32_MAX) { // the tiles, adding by atomics
        const dim3 grid((unsigned)(B * n), (unsigned)((R + rows - 1) / rows));
        pbw_launch(crops_bwd_tile_kernel, grid, CROP_THREADS, crops_bwd_smem(R, rows, sdm), gy,
                   pass, H, W, crops, n, R, P, rows, sdm, norm, 0, nullptr, nullptr, gx);
    } else {
        pbw_launch(crops_bwd_kernel, pbw_grid(total), 256, 0, gy, pass, B, H, W, crops, n, R, P,
                   norm, gx);
    }
    PBW_CUDA_LAUNCHED("clip_crops backward");
}
