// pbw_cuda_attention.cu: scaled dot-product attention on the GPU (see pbw_cuda_nn.h), with the
// strided geometry of pbw_cpu_attention_* (src/cpu/pbw_cpu_nn.c).
//
// Three paths each way, the first that fits is taken (on half activations without weights kept,
// a tensor-core forward comes first: see "Tensor cores" below):
//
// 1. Tiled (CLIP's shapes; head size a multiple of 4, 16-byte aligned rows). One block per
//    (batch, head) stages the head in shared memory with cp.async and computes every product as
//    register tiles: a thread owns TM x TN outputs whose rows and columns interleave with its
//    neighbours', and reads its operands as float4. A 64-long dot product per output, as the
//    generic kernels do, reads two shared floats per FMA; a 7 x 7 tile reads 14 float4 per 196
//    FMA. Shared memory returns one float per lane per cycle per SM (a quarter of the FMA rate),
//    so that ratio, not the FMA count, is what set the speed.
//    Forward (S <= 80): 64 threads, an 8 x 8 grid of them; scores, the softmax (each row is
//    spread over 8 lanes of one warp, reduced with shuffles) and P V; P goes to global memory
//    for the backward and to shared memory (over Q when T rows are one pass) for P V.
//    Backward (any S, T, D that fit): 256 threads, two halves of 128 working on different
//    products at once: dP = dO V^T beside dV = P^T dO, then dS by rows, then dQ = dS K beside
//    dK = dS^T Q. Each block owns its head's rows of every gradient, so no atomics.
// 2. Fused, one query row per warp (any D; K and V of a head fit the default 48 KB forward,
//    the head's operands the opt-in limit backward).
// 3. cuBLAS strided batched GEMMs (pbw_cuda_gemm_batched, one call per batch item when the
//    batch and head strides do not compose) around a masked softmax / dS kernel, the backward's
//    dP/dS in the caller's scratch (B*H*T*S floats), as the CPU does per head.
//
// Backward: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)) scale, dQ = dS K, dK = dS^T Q.
// Every output element is summed by one thread in increasing order of its reduction index:
// results do not depend on the launch, and the errors against the CPU are those of fp32 sums
// in another order (tests/test_cuda_nn.c).
#include <cmath>
#include <type_traits>

#include "cpu/pbw_cpu.h"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_nn.h"

static const int WARPS = 8; // 256 threads a block, one query row per warp at a time
static const size_t FUSED_SMEM_MAX = 48 * 1024; // the default per-block limit, no opt-in

// Shared floats of the fused forward: K padded to D+1 columns (lanes read different keys of
// the same column: no bank conflicts), V, and per warp its query row and its scores.
static size_t fused_smem_bytes(const pbw_attn_geom *g) {
    return sizeof(float) *
           (size_t)(g->S * (g->D + 1) + g->S * g->D + WARPS * (g->D + g->S));
}

__global__ static void attention_fwd_fused_kernel(pbw_attn_geom g, const float *q, const float *k,
                                                  const float *v, float *p, float *o,
                                                  int64_t rows_per_block) {
    pbw_pdl_wait();
    extern __shared__ float sm[];
    const int64_t H = g.H, T = g.T, S = g.S, D = g.D, Dp = D + 1;
    float *Ks = sm, *Vs = Ks + S * Dp, *wb = Vs + S * D;
    int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
    const float *qh = q + b * g.q[0] + h * g.q[1], *kh = k + b * g.k[0] + h * g.k[1];
    const float *vh = v + b * g.v[0] + h * g.v[1];
    float *oh = o + b * g.o[0] + h * g.o[1], *ph = p + bh * T * S;
    for (int64_t i = threadIdx.x; i < S * D; i += blockDim.x) {
        int64_t s = i / D, d = i % D;
        Ks[s * Dp + d] = kh[s * g.k[2] + d];
        Vs[s * D + d] = vh[s * g.v[2] + d];
    }
    __syncthreads();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *qs = wb + warp * (D + S), *sc = qs + D;
    int64_t t0 = (int64_t)blockIdx.y * rows_per_block;
    int64_t t1 = t0 + rows_per_block < T ? t0 + rows_per_block : T;
    for (int64_t t = t0 + warp; t < t1; t += WARPS) {
        for (int64_t d = lane; d < D; d += 32) qs[d] = qh[t * g.q[2] + d];
        __syncwarp();
        int64_t n = g.causal ? (t + 1 < S ? t + 1 : S) : S;
        float mx = -INFINITY;
        for (int64_t s = lane; s < n; s += 32) {
            const float *kr = Ks + s * Dp;
            float acc = 0.0f;
            for (int64_t d = 0; d < D; d++) acc = fmaf(qs[d], kr[d], acc);
            acc *= g.scale;
            sc[s] = acc;
            mx = fmaxf(mx, acc);
        }
        mx = pbw_warp_max(mx);
        float sum = 0.0f;
        for (int64_t s = lane; s < n; s += 32) { // the same lane owns sc[s] in every loop
            float e = expf(sc[s] - mx);
            sc[s] = e;
            sum += e;
        }
        float inv = 1.0f / pbw_warp_sum(sum);
        for (int64_t s = lane; s < S; s += 32) {
            float pv = s < n ? sc[s] * inv : 0.0f;
            sc[s] = pv;
            ph[t * S + s] = pv;
        }
        __syncwarp();
        for (int64_t d = lane; d < D; d += 32) {
            float acc = 0.0f;
            for (int64_t s = 0; s < n; s++) acc = fmaf(sc[s], Vs[s * D + d], acc);
            oh[t * g.o[2] + d] = acc;
        }
        __syncwarp(); // qs and sc are rewritten for the next row
    }
}

// Shared floats of the fused backward: K and V padded (lanes read different keys), Q, dO, dS.
static size_t fused_bwd_smem_bytes(const pbw_attn_geom *g) {
    return sizeof(float) *
           (size_t)(2 * g->S * (g->D + 1) + 2 * g->T * g->D + g->T * g->S);
}

__global__ static void attention_bwd_fused_kernel(pbw_attn_geom g, const float *q, const float *k,
                                                  const float *v, const float *p, const float *go,
                                                  float *gq, float *gk, float *gv) {
    pbw_pdl_wait();
    extern __shared__ float sm[];
    const int64_t H = g.H, T = g.T, S = g.S, D = g.D, Dp = D + 1;
    float *Ks = sm, *Vs = Ks + S * Dp, *Qs = Vs + S * Dp, *Os = Qs + T * D, *dSs = Os + T * D;
    int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
    const float *qh = q + b * g.q[0] + h * g.q[1], *kh = k + b * g.k[0] + h * g.k[1];
    const float *vh = v + b * g.v[0] + h * g.v[1], *goh = go + b * g.o[0] + h * g.o[1];
    const float *ph = p + bh * T * S;
    for (int64_t i = threadIdx.x; i < S * D; i += blockDim.x) {
        int64_t s = i / D, d = i % D;
        Ks[s * Dp + d] = kh[s * g.k[2] + d];
        Vs[s * Dp + d] = vh[s * g.v[2] + d];
    }
    for (int64_t i = threadIdx.x; i < T * D; i += blockDim.x) {
        int64_t t = i / D, d = i % D;
        Qs[i] = qh[t * g.q[2] + d];
        Os[i] = goh[t * g.o[2] + d];
    }
    __syncthreads();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (gq || gk)
        for (int64_t t = warp; t < T; t += WARPS) { // one query row per warp: dS row, dQ row
            const float *pr = ph + t * S, *orow = Os + t * D;
            float *dr = dSs + t * S, dot = 0.0f;
            for (int64_t s = lane; s < S; s += 32) { // dP = dO V^T
                const float *vr = Vs + s * Dp;
                float acc = 0.0f;
                for (int64_t d = 0; d < D; d++) acc = fmaf(orow[d], vr[d], acc);
                dr[s] = acc;
                dot = fmaf(pr[s], acc, dot);
            }
            dot = pbw_warp_sum(dot);
            for (int64_t s = lane; s < S; s += 32) dr[s] = pr[s] * (dr[s] - dot) * g.scale;
            __syncwarp();
            if (gq) {
                float *gqr = gq + b * g.q[0] + h * g.q[1] + t * g.q[2];
                for (int64_t d = lane; d < D; d += 32) { // dQ += dS K
                    float acc = 0.0f;
                    for (int64_t s = 0; s < S; s++) acc = fmaf(dr[s], Ks[s * Dp + d], acc);
                    gqr[d] += acc;
                }
            }
        }
    __syncthreads(); // every dS row is in shared memory
    for (int64_t s = warp; s < S; s += WARPS) { // one key row per warp: dK, dV rows
        int64_t t0 = g.causal ? s : 0; // rows t < s gave key s no weight
        for (int64_t d = lane; d < D; d += 32) {
            if (gv) { // dV += P^T dO
                float acc = 0.0f;
                for (int64_t t = t0; t < T; t++) acc = fmaf(ph[t * S + s], Os[t * D + d], acc);
                gv[b * g.v[0] + h * g.v[1] + s * g.v[2] + d] += acc;
            }
            if (gk) { // dK += dS^T Q
                float acc = 0.0f;
                for (int64_t t = t0; t < T; t++) acc = fmaf(dSs[t * S + s], Qs[t * D + d], acc);
                gk[b * g.k[0] + h * g.k[1] + s * g.k[2] + d] += acc;
            }
        }
    }
}

// The most dynamic shared memory a block may opt in to on this device (48 KB if unknown).
static size_t smem_optin_max(void) {
    static int v = -1;
    if (v < 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
                cudaSuccess || v < (int)FUSED_SMEM_MAX) {
            cudaGetLastError();
            v = (int)FUSED_SMEM_MAX;
        }
    }
    return (size_t)v;
}

// ---- tiled path ----

// Thread-tile coordinates in a grid of (threads / GJ) x GJ: j takes lane bits 0, 2, 3 (and 4
// when GJ = 16), i the others and the warp. Operand A's rows follow i and B's follow j, so lanes
// n and n^1 read the same A address and lanes n and n^2 the same B address (pairs that shared
// memory can serve with one fetch, on the GPUs that pack uniform loads), and a row's GJ lanes
// are in one warp (the forward's shuffles).
template <int GJ>
__device__ __forceinline__ void tile_coords(int tid, int *i, int *j) {
    static_assert(GJ == 8 || GJ == 16, "lane layouts for 8 or 16 columns");
    int lane = tid & 31, w = tid >> 5;
    *j = (lane & 1) | ((lane >> 2) & (GJ / 2 - 1)) << 1;
    int hi = GJ == 8 ? lane >> 4 : 0; // lane bits above j's
    *i = ((lane >> 1) & 1) | hi << 1 | w * (32 / GJ);
}

// acc[a][b] = sum over k < K of A(a, k) B(b, k), A's row a at A + ao[a] and B's row b at
// B + bo[b] (rows 16-byte aligned, K a multiple of 4), k increasing; K = 0 gives zeros.
template <int TM, int TN>
__device__ __forceinline__ void tile_nt(float (&acc)[TM][TN], const float *A, const int (&ao)[TM],
                                        const float *B, const int (&bo)[TN], int K) {
#pragma unroll
    for (int a = 0; a < TM; a++)
#pragma unroll
        for (int b = 0; b < TN; b++) acc[a][b] = 0.0f;
    for (int k = 0; k < K; k += 4) {
        float4 av[TM];
#pragma unroll
        for (int a = 0; a < TM; a++) av[a] = *reinterpret_cast<const float4 *>(A + ao[a] + k);
#pragma unroll
        for (int b = 0; b < TN; b++) {
            float4 bv = *reinterpret_cast<const float4 *>(B + bo[b] + k);
#pragma unroll
            for (int a = 0; a < TM; a++) {
                float c = acc[a][b];
                c = fmaf(av[a].x, bv.x, c);
                c = fmaf(av[a].y, bv.y, c);
                c = fmaf(av[a].z, bv.z, c);
                acc[a][b] = fmaf(av[a].w, bv.w, c);
            }
        }
    }
}

__device__ __forceinline__ float f4_get(const float4 &v, int u) {
    return u == 0 ? v.x : u == 1 ? v.y : u == 2 ? v.z : v.w; // u is a constant once unrolled
}

// acc[a][c] (4 columns) = sum over k < K of A(a, k) B(k, bo[c] .. bo[c] + 3), A's row a at
// A + ao[a], B's rows ldb floats apart (16-byte aligned, K a multiple of 4), k increasing.
template <int TM, int NC>
__device__ __forceinline__ void tile_nn(float4 (&acc)[TM][NC], const float *A, const int (&ao)[TM],
                                        const float *B, int ldb, const int (&bo)[NC], int K) {
#pragma unroll
    for (int a = 0; a < TM; a++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[a][c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int k = 0; k < K; k += 4) {
        float4 bv[4][NC]; // B's 4 rows first, then A a row at a time: fewer live registers
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int c = 0; c < NC; c++)
                bv[u][c] = *reinterpret_cast<const float4 *>(B + (k + u) * ldb + bo[c]);
#pragma unroll
        for (int a = 0; a < TM; a++) {
            float4 av = *reinterpret_cast<const float4 *>(A + ao[a] + k);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float x = f4_get(av, u);
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    acc[a][c].x = fmaf(x, bv[u][c].x, acc[a][c].x);
                    acc[a][c].y = fmaf(x, bv[u][c].y, acc[a][c].y);
                    acc[a][c].z = fmaf(x, bv[u][c].z, acc[a][c].z);
                    acc[a][c].w = fmaf(x, bv[u][c].w, acc[a][c].w);
                }
            }
        }
    }
}

// 16 bytes global -> shared without a trip through registers (sm_80+), in commit groups.
__device__ __forceinline__ void cp16(float *dst, const float *src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_commit(void) {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp4(float *dst, const float *src) { // any float alignment
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}
template <int N>
__device__ __forceinline__ void cp_wait(void) { // this thread's groups but the last N landed
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Issues the copy of rows x (4 C) floats, src rows ld floats apart, to dst rows lds apart, one
// float4 per thread of nt in turn.
__device__ __forceinline__ void stage_rows(float *dst, int lds, const float *src, int64_t ld,
                                           int rows, int C, int tid, int nt) {
    const int dr = nt / C, dc = nt % C;
    int r = tid / C, c = tid % C; // x = r C + c, stepped without dividing
    for (int x = tid; x < rows * C; x += nt) {
        cp16(dst + r * lds + 4 * c, src + r * ld + 4 * c);
        r += dr;
        c += dc;
        if (c >= C) {
            c -= C;
            r++;
        }
    }
}

// The same from rows of the half type H (4 C values, 16-byte aligned rows, C even), converted
// to float on the way: plain loads and stores (cp.async copies bytes, it cannot convert), eight
// values a load.
template <typename H>
__device__ __forceinline__ void stage_rows(float *dst, int lds, const H *src, int64_t ld,
                                           int rows, int C, int tid, int nt) {
    const int C8 = C / 2;
    for (int x = tid; x < rows * C8; x += nt) {
        const int r = x / C8, c = x % C8;
        float f[8];
        pbw_unpack_half<H, 8>(*reinterpret_cast<const uint4 *>(src + r * ld + 8 * c), f);
        float *d = dst + r * lds + 8 * c;
        *reinterpret_cast<float4 *>(d) = make_float4(f[0], f[1], f[2], f[3]);
        *reinterpret_cast<float4 *>(d + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
}

// Four outputs at o: float4, or four half values in one 8-byte store.
__device__ __forceinline__ void store4(float *o, const float4 &v) {
    *reinterpret_cast<float4 *>(o) = v;
}
template <typename H> __device__ __forceinline__ void store4(H *o, const float4 &v) {
    *reinterpret_cast<uint2 *>(o) = pbw_pack_half4<H>(v);
}

// dst(r, c) = 0 for r < rows, c < cols, rows lds floats apart.
__device__ __forceinline__ void zero_rows(float *dst, int lds, int rows, int cols, int tid, int nt) {
    for (int x = tid; x < rows * cols; x += nt) dst[(x / cols) * lds + x % cols] = 0.0f;
}

__host__ __device__ static inline int round4(int64_t n) { return (int)((n + 3) & ~(int64_t)3); }
// A row stride (floats) for n4 floats (a multiple of 4) that is 4 mod 8: lanes reading float4
// at one column of 8 consecutive rows then hit 8 different groups of 4 banks.
__host__ __device__ static inline int pad_stride(int64_t n4) { return (int)(n4 % 8 ? n4 : n4 + 4); }

// The forward's shared tiles (offsets and strides in floats): K (S, dp), V (s4, D) with rows
// S.. zero (P V runs k to s4), Q (T, dp) and P (min(T, rb), sp), P over Q when rb >= T.
struct fwd_layout {
    int dp, sp, s4, k, v, q, p;
    int64_t total;
};

static fwd_layout fwd_layout_of(const pbw_attn_geom *g, int rb) {
    fwd_layout l;
    l.dp = pad_stride(g->D);
    l.s4 = round4(g->S);
    l.sp = pad_stride(l.s4);
    int64_t v = g->S * l.dp, q = v + l.s4 * g->D, qend = q + g->T * l.dp;
    int64_t p = g->T <= rb ? q : qend, pend = p + (g->T < rb ? g->T : rb) * l.sp;
    l.k = 0;
    l.v = (int)v;
    l.q = (int)q;
    l.p = (int)p;
    l.total = qend > pend ? qend : pend;
    return l;
}

static const int FWD_THREADS = 64; // an 8 x 8 grid of tiles

// One block per (batch, head): rows of TM x 8 queries at a time, all S <= 8 TN keys at once.
// In/Out: float, or the half type (half activations: no backward follows, p is NULL and the
// weights are not stored).
template <int TM, int TN, typename In, typename Out>
__global__ static void __launch_bounds__(FWD_THREADS)
    attention_fwd_tiled_kernel(pbw_attn_geom g, fwd_layout l, const In *q, const In *k,
                               const In *v, float *p, Out *o) {
    pbw_pdl_wait();
    extern __shared__ float4 smem_f4[];
    float *sm = reinterpret_cast<float *>(smem_f4);
    const int T = (int)g.T, S = (int)g.S, D = (int)g.D, C = D / 4, RB = 8 * TM;
    float *Ks = sm + l.k, *Vs = sm + l.v, *Qs = sm + l.q, *Ps = sm + l.p;
    const int tid = threadIdx.x;
    const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H;
    const In *qh = q + b * g.q[0] + h * g.q[1], *kh = k + b * g.k[0] + h * g.k[1];
    const In *vh = v + b * g.v[0] + h * g.v[1];
    Out *oh = o + b * g.o[0] + h * g.o[1];
    float *ph = p ? p + bh * T * S : nullptr;
    stage_rows(Ks, l.dp, kh, g.k[2], S, C, tid, FWD_THREADS);
    stage_rows(Qs, l.dp, qh, g.q[2], T, C, tid, FWD_THREADS);
    cp_commit();
    stage_rows(Vs, D, vh, g.v[2], S, C, tid, FWD_THREADS); // lands while the scores run
    cp_commit();
    for (int x = S * D + tid; x < l.s4 * D; x += FWD_THREADS) Vs[x] = 0.0f;
    cp_wait<1>();
    __syncthreads();
    int i, j;
    tile_coords<8>(tid, &i, &j);
    for (int tb = 0; tb < T; tb += RB) {
        // scores of queries tb + i + 8a and keys j + 8b (rows past T or S read the last one)
        int qo[TM], ko[TN];
#pragma unroll
        for (int a = 0; a < TM; a++) qo[a] = min(tb + i + 8 * a, T - 1) * l.dp;
#pragma unroll
        for (int c = 0; c < TN; c++) ko[c] = min(j + 8 * c, S - 1) * l.dp;
        float sc[TM][TN];
        tile_nt<TM, TN>(sc, Qs, qo, Ks, ko, tb + i < T ? D : 0);
        // softmax of each row over its 8 lanes (lane bits 0, 2, 3); every lane takes part
#pragma unroll
        for (int a = 0; a < TM; a++) {
            int t = tb + i + 8 * a, n = g.causal ? min(t + 1, S) : S; // n >= 1: mx is finite
            float mx = -INFINITY, sum = 0.0f;
#pragma unroll
            for (int c = 0; c < TN; c++) {
                sc[a][c] = j + 8 * c < n ? sc[a][c] * g.scale : -INFINITY;
                mx = fmaxf(mx, sc[a][c]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
#pragma unroll
            for (int c = 0; c < TN; c++) { // exp(-inf) = 0 for the keys left out
                sc[a][c] = expf(sc[a][c] - mx);
                sum += sc[a][c];
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 4);
            sum += __shfl_xor_sync(0xffffffffu, sum, 8);
            float inv = 1.0f / sum;
#pragma unroll
            for (int c = 0; c < TN; c++) sc[a][c] *= inv;
        }
        __syncthreads(); // Q (under P when one pass) and the last pass's P are read
#pragma unroll
        for (int a = 0; a < TM; a++) {
            int t = tb + i + 8 * a;
            if (t >= T) continue;
#pragma unroll
            for (int c = 0; c < TN; c++) {
                int s = j + 8 * c; // s < 8 TN, and 8 TN >= s4
                if (ph && s < S) ph[(int64_t)t * S + s] = sc[a][c];
                if (s < l.s4) Ps[(t - tb) * l.sp + s] = sc[a][c]; // 0 past S
            }
        }
        cp_wait<0>(); // V
        __syncthreads();
        // o rows tb + i + 8a = P V, float4 columns cb + j + 8c
        int rows_end = min(T, tb + RB);
        int s_end = g.causal ? round4(min(S, rows_end)) : l.s4; // causal: P is 0 past the rows
        int po[TM];
#pragma unroll
        for (int a = 0; a < TM; a++) po[a] = (min(tb + i + 8 * a, T - 1) - tb) * l.sp;
        for (int cb = 0; cb < C; cb += 16) {
            int vo[2];
#pragma unroll
            for (int c = 0; c < 2; c++) vo[c] = min(cb + j + 8 * c, C - 1) * 4;
            float4 acc[TM][2];
            tile_nn<TM, 2>(acc, Ps, po, Vs, D, vo, tb + i < T ? s_end : 0);
#pragma unroll
            for (int a = 0; a < TM; a++) {
                int t = tb + i + 8 * a;
                if (t >= T) continue;
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    int col = cb + j + 8 * c;
                    if (col < C) store4(oh + t * g.o[2] + 4 * col, acc[a][c]);
                }
            }
        }
    }
}

// The backward's shared tiles: K (s4, dp) and Q (t4, D) and dO (t4, dp) with the rows past S
// or T zero (the products run k to s4 or t4), V (S, dp), P^T (S, tp) with columns T.. zero,
// later dS^T in place, and dP (T, sp) with columns S.. zero, later dS in place (first, P as it
// lies in global memory, T S floats, on its way to P^T).
struct bwd_layout {
    int dp, sp, tp, s4, t4, k, v, q, o, pt, ds;
    int64_t total;
};

static bwd_layout bwd_layout_of(const pbw_attn_geom *g) {
    bwd_layout l;
    l.dp = pad_stride(g->D);
    l.s4 = round4(g->S);
    l.t4 = round4(g->T);
    l.sp = pad_stride(l.s4);
    l.tp = pad_stride(l.t4);
    int64_t v = (int64_t)l.s4 * l.dp, q = v + g->S * l.dp, o = q + (int64_t)l.t4 * g->D;
    int64_t pt = o + (int64_t)l.t4 * l.dp, ds = pt + g->S * l.tp;
    l.k = 0;
    l.v = (int)v;
    l.q = (int)q;
    l.o = (int)o;
    l.pt = (int)pt;
    l.ds = (int)ds;
    l.total = ds + g->T * l.sp;
    return l;
}

static const int BWD_THREADS = 256; // two halves of 128, each an 8 x 16 grid of tiles
static const int BWD_TM = 7, BWD_TN = 4; // 56 rows x 64 columns (16 float4) a pass

// gh(r, 4 col .. 4 col + 3) += acc[a] (add), or = acc[a], for the rows r = r0 + 8a < R, rows
// ld floats apart, when col < C.
__device__ __forceinline__ void add_rows(float *gh, int64_t ld, const float4 (&acc)[BWD_TM][1],
                                         int r0, int R, int col, int C, bool add) {
    if (col >= C) return;
    float4 x[BWD_TM]; // every load issued before the first store: one memory latency, not 7
#pragma unroll
    for (int a = 0; a < BWD_TM; a++)
        if (r0 + 8 * a < R)
            x[a] = add ? *reinterpret_cast<const float4 *>(gh + (r0 + 8 * a) * ld + 4 * col)
                       : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int a = 0; a < BWD_TM; a++) {
        if (r0 + 8 * a >= R) continue;
        x[a].x += acc[a][0].x;
        x[a].y += acc[a][0].y;
        x[a].z += acc[a][0].z;
        x[a].w += acc[a][0].w;
        *reinterpret_cast<float4 *>(gh + (r0 + 8 * a) * ld + 4 * col) = x[a];
    }
}

// (R, 4 C) += A (R, K) B (K, 4 C) (add; else =) by one half: A's rows lda floats apart, B's ldb.
__device__ __forceinline__ void half_nn(float *gh, int64_t ld, const float *A, int lda,
                                        const float *B, int ldb, int R, int K, int C, int i,
                                        int j, bool add) {
    for (int rb = 0; rb < R; rb += 8 * BWD_TM)
        for (int cb = 0; cb < C; cb += 16) {
            int ao[BWD_TM], bo[1] = {min(cb + j, C - 1) * 4};
#pragma unroll
            for (int a = 0; a < BWD_TM; a++) ao[a] = min(rb + i + 8 * a, R - 1) * lda;
            float4 acc[BWD_TM][1];
            tile_nn<BWD_TM, 1>(acc, A, ao, B, ldb, bo, rb + i < R ? K : 0);
            add_rows(gh, ld, acc, rb + i, R, cb + j, C, add);
        }
}

__global__ static void __launch_bounds__(BWD_THREADS, 3)
    attention_bwd_tiled_kernel(pbw_attn_geom g, bwd_layout l, const float *q, const float *k,
                               const float *v, const float *p, const float *go, float *gq,
                               float *gk, float *gv, bool add) {
    pbw_pdl_wait();
    extern __shared__ float4 smem_f4[];
    float *sm = reinterpret_cast<float *>(smem_f4);
    const int T = (int)g.T, S = (int)g.S, D = (int)g.D, C = D / 4;
    float *Ks = sm + l.k, *Vs = sm + l.v, *Qs = sm + l.q, *Os = sm + l.o;
    float *PT = sm + l.pt, *dSs = sm + l.ds;
    const int tid = threadIdx.x, half = tid >> 7;
    const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H;
    const int64_t qo = b * g.q[0] + h * g.q[1], ko = b * g.k[0] + h * g.k[1];
    const int64_t vo = b * g.v[0] + h * g.v[1], oo = b * g.o[0] + h * g.o[1];
    const float *ph = p + bh * T * S;
    stage_rows(Ks, l.dp, k + ko, g.k[2], S, C, tid, BWD_THREADS);
    stage_rows(Vs, l.dp, v + vo, g.v[2], S, C, tid, BWD_THREADS);
    stage_rows(Qs, D, q + qo, g.q[2], T, C, tid, BWD_THREADS);
    stage_rows(Os, l.dp, go + oo, g.o[2], T, C, tid, BWD_THREADS);
    for (int x = tid; x < T * S; x += BWD_THREADS) cp4(dSs + x, ph + x); // P as it lies, for now
    cp_commit();
    zero_rows(Ks + S * l.dp, l.dp, l.s4 - S, D, tid, BWD_THREADS);
    zero_rows(Qs + T * D, D, l.t4 - T, D, tid, BWD_THREADS);
    zero_rows(Os + T * l.dp, l.dp, l.t4 - T, D, tid, BWD_THREADS);
    zero_rows(PT + T, l.tp, S, l.t4 - T, tid, BWD_THREADS);
    cp_wait<0>();
    __syncthreads();
    {
        const int dr = BWD_THREADS / S, dc = BWD_THREADS % S;
        int t = tid / S, s = tid % S; // x = t S + s
        for (int x = tid; x < T * S; x += BWD_THREADS) {
            PT[s * l.tp + t] = dSs[x];
            t += dr;
            s += dc;
            if (s >= S) {
                s -= S;
                t++;
            }
        }
    }
    __syncthreads(); // dSs is free again
    int i, j;
    tile_coords<16>(tid & 127, &i, &j);
    const bool dscores = gq || gk;
    if (half == 0) {
        if (dscores) // dP = dO V^T, into dSs with the columns S.. s4 zero
            for (int tb = 0; tb < T; tb += 8 * BWD_TM)
                for (int sb = 0; sb < l.s4; sb += 16 * BWD_TN) {
                    int ao[BWD_TM], bo[BWD_TN];
#pragma unroll
                    for (int a = 0; a < BWD_TM; a++) ao[a] = min(tb + i + 8 * a, T - 1) * l.dp;
#pragma unroll
                    for (int c = 0; c < BWD_TN; c++) bo[c] = min(sb + j + 16 * c, S - 1) * l.dp;
                    float acc[BWD_TM][BWD_TN];
                    tile_nt<BWD_TM, BWD_TN>(acc, Os, ao, Vs, bo, tb + i < T ? D : 0);
#pragma unroll
                    for (int a = 0; a < BWD_TM; a++) {
                        int t = tb + i + 8 * a;
                        if (t >= T) continue;
#pragma unroll
                        for (int c = 0; c < BWD_TN; c++) {
                            int s = sb + j + 16 * c;
                            if (s < l.s4) dSs[t * l.sp + s] = s < S ? acc[a][c] : 0.0f;
                        }
                    }
                }
    } else if (gv) { // dV += P^T dO
        half_nn(gv + vo, g.v[2], PT, l.tp, Os, l.dp, S, l.t4, C, i, j, add);
    }
    if (!dscores) return; // no barrier follows
    __syncthreads();
    // dS = P (dP - rowsum(P dP)) scale, a warp per row, in dSs and (as dS^T) over P^T
    const int warp = tid >> 5, lane = tid & 31;
    for (int t = warp; t < T; t += BWD_THREADS / 32) {
        float *dr = dSs + t * l.sp, dot = 0.0f;
        for (int s = lane; s < S; s += 32) dot = fmaf(PT[s * l.tp + t], dr[s], dot);
        dot = pbw_warp_sum(dot);
        for (int s = lane; s < S; s += 32) { // each element read and rewritten by one lane
            float x = PT[s * l.tp + t] * (dr[s] - dot) * g.scale;
            dr[s] = x;
            PT[s * l.tp + t] = x;
        }
    }
    __syncthreads();
    if (half == 0) {
        if (gq) half_nn(gq + qo, g.q[2], dSs, l.sp, Ks, l.dp, T, l.s4, C, i, j, add); // dQ += dS K
    } else if (gk) {
        half_nn(gk + ko, g.k[2], PT, l.tp, Qs, D, S, l.t4, C, i, j, add); // dK += dS^T Q
    }
}

// Whether the tiled kernels can read and write these operands as float4 (16-byte aligned rows).
// Lets kernel f take `bytes` of dynamic shared memory (an opt-in above 48 KB), asking once for
// the largest shared-memory carveout so that several blocks share an SM. *opted is f's limit.
template <typename F>
static bool smem_allow(F *f, size_t bytes, size_t *opted) {
    if (*opted == 0) {
        if (cudaFuncSetAttribute(f, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared) != cudaSuccess)
            cudaGetLastError(); // a hint only
        *opted = FUSED_SMEM_MAX;
    }
    if (bytes <= *opted) return true;
    if (cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) !=
        cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    *opted = bytes;
    return true;
}

// The tiled forward for S <= 8 TN; false (nothing launched) when it does not fit.
template <int TM, int TN, typename In, typename Out>
static bool fwd_tiled_launch(const pbw_attn_geom *g, const In *q, const In *k, const In *v,
                             float *p, Out *o) {
    static size_t opted = 0;
    fwd_layout l = fwd_layout_of(g, 8 * TM);
    size_t bytes = sizeof(float) * (size_t)l.total;
    if (bytes > smem_optin_max() ||
        !smem_allow(attention_fwd_tiled_kernel<TM, TN, In, Out>, bytes, &opted))
        return false;
    pbw_launch(attention_fwd_tiled_kernel<TM, TN, In, Out>, (unsigned)(g->B * g->H), FWD_THREADS,
               bytes, *g, l, q, k, v, p, o);
    PBW_CUDA_LAUNCHED("attention_fwd");
    return true;
}

// Rows of 16-byte groups: 4 floats, or 8 values of a half type.
template <typename T> static bool vec4_ok(const T *ptr, const int64_t *st) {
    const int64_t n = 16 / (int64_t)sizeof(T);
    return ptr == NULL ||
           ((uintptr_t)ptr % 16 == 0 && st[0] % n == 0 && st[1] % n == 0 && st[2] % n == 0);
}

// ---- Tensor cores: the forward on half activations (no weights kept) ----
//
// mma.sync m16n8k16 with half operands and fp32 accumulators (sm_80+). One block per
// (batch, head) stages K and V (rows past S zero) and Q (rows past T zero) in shared memory
// with 16-byte stores, as they lie in memory; a B fragment of Q K^T is one 32-bit load, those
// of P V come transposed by ldmatrix (V transposed on its way into shared memory cost 8-way
// bank conflicts on 2-byte stores: 4.46 against 4.19 ms of a CMA generation on an H100).
// Each warp owns 16 query rows at a time. Its scores, 16 x 16 KT, stay in the accumulator
// registers; the softmax runs on them (a row lies in the 4 lanes of a quad:
// two shuffles), and the C fragments of two adjacent 8-key tiles are the A fragment of
// 16 keys of P V (FlashAttention-2's register reuse), rounded to the half type. The row sums
// of the rounded-before-sum weights divide the output at the end. Fragment layouts: PTX ISA,
// "Matrix Fragments for mma.m16n8k16": with g = lane / 4 and c = 2 (lane % 4), A holds
// (g, c..c+1), (g+8, c..), (g, c+8..), (g+8, c+8..); B (k = c..c+1, n = g), (k = c+8.., n = g);
// C (g, c..c+1), (g+8, c..c+1).
static const int MMA_D = 64;      // head size (CLIP: 64)
static const int MMA_THREADS = 128; // 4 warps
static const int MMA_KT_MAX = 5;  // keys up to 80 (16 KT)

template <typename H> __device__ __forceinline__ uint32_t ld32(const H *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

// Four 8x8 tiles of 16-bit values from shared memory, transposed: lanes 8 i .. 8 i + 7 give the
// row addresses of tile i, and r[i] holds, in lane l, its rows 2 (l % 4) and 2 (l % 4) + 1 of
// column l / 4, which is the B fragment of mma.m16n8k16 for a row-major (k, n) tile.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// Shared halves of the tensor-core forward: K and V (S16, LDK), Q (T16, LDK), rows as in
// memory. The stride (36 32-bit words) puts the 8 rows of a fragment or ldmatrix load in 8
// different groups of 4 banks.
static const int MMA_LDK = MMA_D + 8;
static size_t mma_smem_bytes(int64_t T, int kt) {
    const int64_t s16 = 16 * kt, t16 = (T + 15) / 16 * 16;
    return 2 * (size_t)(2 * s16 * MMA_LDK + t16 * MMA_LDK);
}

// c (16 x 16 KT, as 2 KT tiles of 16 x 8) = A B^T for a 16-row tile A (16, MMA_D) and B
// (16 KT, MMA_D), halves in shared memory with rows MMA_LDK apart: the scores Q K^T of the
// forward, dO V^T of the backward.
template <int KT, typename H>
__device__ __forceinline__ void mma_rows_abt(float (&c)[2 * KT][4], const H *A, const H *B,
                                             int gr, int c2) {
    constexpr int LD = MMA_LDK;
#pragma unroll
    for (int n = 0; n < 2 * KT; n++) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
#pragma unroll
    for (int kd = 0; kd < MMA_D; kd += 16) {
        const uint32_t a[4] = {ld32(A + gr * LD + kd + c2), ld32(A + (gr + 8) * LD + kd + c2),
                               ld32(A + gr * LD + kd + c2 + 8),
                               ld32(A + (gr + 8) * LD + kd + c2 + 8)};
#pragma unroll
        for (int n = 0; n < 2 * KT; n++) {
            const H *br = B + (8 * n + gr) * LD + kd + c2;
            mma_16816<H>(c[n], a, ld32(br), ld32(br + 8));
        }
    }
}

// Eight values of a row as eight halves of H in one 16-byte word: read as they are, or (fp32,
// the forward that keeps the weights for a backward) two 16-byte loads rounded.
template <typename H> __device__ __forceinline__ uint4 load_half8(const H *x) {
    return *reinterpret_cast<const uint4 *>(x);
}
template <typename H> __device__ __forceinline__ uint4 load_half8(const float *x) {
    const float4 a = *reinterpret_cast<const float4 *>(x), b = *reinterpret_cast<const float4 *>(x + 4);
    const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    return pbw_pack_half<H, 8, uint4>(f);
}

// Two adjacent outputs of a row: as halves of H (packed), or fp32.
template <typename H> __device__ __forceinline__ void store2(H *o, float a, float b) {
    *reinterpret_cast<uint32_t *>(o) = mma_pack<H>(a, b);
}
__device__ __forceinline__ void store2(float *o, float a, float b) {
    *reinterpret_cast<float2 *>(o) = make_float2(a, b);
}

// Half outputs of a warp's 16 x 64 accumulator tile leave through 16 rows of shared memory the
// warp alone uses: stage_tile16 stores the mma fragments (a lane's rows gr and gr + 8, columns
// 8 n + c2 and + 1) as halves into rows st (ld apart), rows gr scaled by s0 and gr + 8 by s1;
// after a __syncwarp, copy_tile16 reads them back 16 bytes a lane, 4 rows at a time, and hands
// out(r, c, word) each row r < rows, columns c .. c + 7. A warp's global stores are then 4 rows
// x 128 bytes, where the fragments' 4-byte stores half-filled every 32-byte sector they wrote.
template <int C8, typename H>
__device__ __forceinline__ void stage_tile16(H *st, int ld, int gr, int c2,
                                             const float (&acc)[C8][4], float s0 = 1.0f,
                                             float s1 = 1.0f) {
#pragma unroll
    for (int n = 0; n < C8; n++) {
        store2(st + gr * ld + 8 * n + c2, acc[n][0] * s0, acc[n][1] * s0);
        store2(st + (gr + 8) * ld + 8 * n + c2, acc[n][2] * s1, acc[n][3] * s1);
    }
}
template <typename H, class Out>
__device__ __forceinline__ void copy_tile16(const H *st, int ld, int lane, int rows, Out &&out) {
#pragma unroll
    for (int it = 0; it < 4; it++) {
        const int r = 4 * it + lane / 8, c = 8 * (lane % 8);
        if (r < rows) out(r, c, *reinterpret_cast<const uint4 *>(st + r * ld + c));
    }
}

// One (batch, head) bh from its staged halves Qs, Ks, Vs (as the kernels below stage them): the
// scores, the softmax and P V of each of the block's warps' 16-row tiles, and the stores.
// Half outputs, where o (and o2) are 16-byte aligned with strides of 8 halves, leave through
// the warp's own 16 rows of Qs, which the scores read for the last time (no other warp reads
// them), as stage_tile16 and copy_tile16 lay out (Nsight Compute, a CMA generation's launch).
template <int KT, typename H, typename Out>
__device__ __forceinline__ void mma_fwd_head(const pbw_attn_geom &g, H *Qs, const H *Ks,
                                             const H *Vs, Out *o, float *p, H *o2, int64_t bh,
                                             int tid) {
    constexpr int LDK = MMA_LDK, C8 = MMA_D / 8;
    constexpr bool half_out = std::is_same<Out, H>::value;
    const int T = (int)g.T, S = (int)g.S, T16 = (T + 15) / 16 * 16;
    const int64_t b = bh / g.H, h = bh % g.H;
    Out *oh = o + b * g.o[0] + h * g.o[1];
    const bool wide = half_out && (((uintptr_t)o | (uintptr_t)o2) & 15) == 0 &&
                      ((g.o[0] | g.o[1] | g.o[2]) & 7) == 0;
    const int lane = tid % 32, gr = lane / 4, c2 = 2 * (lane % 4);
    const float sl2 = g.scale * 1.4426950408889634f; // exp(x) = exp2(x log2 e)
    for (int mt = tid / 32; mt < T16 / 16; mt += MMA_THREADS / 32) {
        float sc[2 * KT][4];
        mma_rows_abt<KT>(sc, Qs + mt * 16 * LDK, Ks, gr, c2);
        // softmax of rows t0 (sc[.][0..1]) and t1 = t0 + 8 (sc[.][2..3]); keys past S (or past
        // the row, causal) are left out; every row keeps key 0, so the maxima are finite
        const int t0 = 16 * mt + gr, t1 = t0 + 8;
        const int n0 = g.causal ? min(t0 + 1, S) : S, n1 = g.causal ? min(t1 + 1, S) : S;
        float m0 = -INFINITY, m1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2 * KT; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int s = 8 * n + c2 + e;
                sc[n][e] = s < n0 ? sc[n][e] * sl2 : -INFINITY;
                sc[n][2 + e] = s < n1 ? sc[n][2 + e] * sl2 : -INFINITY;
                m0 = fmaxf(m0, sc[n][e]);
                m1 = fmaxf(m1, sc[n][2 + e]);
            }
        m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 1));
        m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 2));
        m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 1));
        m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 2));
        float acc[C8][4];
#pragma unroll
        for (int n = 0; n < C8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
        float l0 = 0.0f, l1 = 0.0f;
#pragma unroll
        for (int j = 0; j < KT; j++) {
            uint32_t a[4];
#pragma unroll
            for (int u = 0; u < 2; u++) { // keys 16 j + 8 u ..
                float *s = sc[2 * j + u];
                // the weights as the product will see them: rounded, and summed so
                const uint32_t p0 = mma_pack<H>(exp2f(s[0] - m0), exp2f(s[1] - m0));
                const uint32_t p1 = mma_pack<H>(exp2f(s[2] - m1), exp2f(s[3] - m1));
                float f0[2], f1[2];
                pbw_unpack_half<H, 2>(p0, f0);
                pbw_unpack_half<H, 2>(p1, f1);
                l0 += f0[0] + f0[1];
                l1 += f1[0] + f1[1];
                a[2 * u] = p0;
                a[2 * u + 1] = p1;
            }
            // V's B fragments for columns 8 n .. 8 n + 15: tiles (keys 16 j, + 8) x (8 n, + 8)
            const H *vrow = Vs + (16 * j + 8 * (lane / 8 % 2) + lane % 8) * LDK + 8 * (lane / 16);
#pragma unroll
            for (int n = 0; n < C8; n += 2) {
                uint32_t b[4];
                ldsm_x4_trans(b, vrow + 8 * n);
                mma_16816<H>(acc[n], a, b[0], b[1]);
                mma_16816<H>(acc[n + 1], a, b[2], b[3]);
            }
        }
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float i0 = 1.0f / l0, i1 = 1.0f / l1;
        H *hh = o2 ? o2 + b * g.o[0] + h * g.o[1] : nullptr;
        if (wide) {
            H *qs = Qs + mt * 16 * LDK;
            stage_tile16(qs, LDK, gr, c2, acc, i0, i1);
            __syncwarp();
            copy_tile16(qs, LDK, lane, T - 16 * mt, [&](int r, int c, uint4 w) {
                const int64_t t = 16 * mt + r;
                *reinterpret_cast<uint4 *>(oh + t * g.o[2] + c) = w;
                if (hh) *reinterpret_cast<uint4 *>(hh + t * g.o[2] + c) = w;
            });
        } else {
#pragma unroll
            for (int n = 0; n < C8; n++) {
                const int64_t c0 = t0 * g.o[2] + 8 * n + c2, c1 = t1 * g.o[2] + 8 * n + c2;
                const float a0 = acc[n][0] * i0, a1 = acc[n][1] * i0;
                const float a2 = acc[n][2] * i1, a3 = acc[n][3] * i1;
                if (t0 < T) store2(oh + c0, a0, a1);
                if (t1 < T) store2(oh + c1, a2, a3);
                if (hh && t0 < T) store2(hh + c0, a0, a1);
                if (hh && t1 < T) store2(hh + c1, a2, a3);
            }
        }
        if (p) { // the weights, exp(s - m) / l in fp32 (0 where left out)
            float *pr = p + bh * T * S;
            // a lane's two columns as one 8-byte store where S is even (a warp's store then
            // fills each row's 32-byte sector; 4-byte stores left each half empty, and their
            // count held the kernel up: Nsight Compute, an Adam step's launch)
            const bool pairs = S % 2 == 0 && ((uintptr_t)p & 7) == 0;
#pragma unroll
            for (int n = 0; n < 2 * KT; n++) {
                const int sx = 8 * n + c2;
                if (pairs && sx + 1 < S) {
                    if (t0 < T)
                        *reinterpret_cast<float2 *>(pr + t0 * S + sx) =
                            make_float2(exp2f(sc[n][0] - m0) * i0, exp2f(sc[n][1] - m0) * i0);
                    if (t1 < T)
                        *reinterpret_cast<float2 *>(pr + t1 * S + sx) =
                            make_float2(exp2f(sc[n][2] - m1) * i1, exp2f(sc[n][3] - m1) * i1);
                    continue;
                }
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (sx + e >= S) continue;
                    if (t0 < T) pr[t0 * S + sx + e] = exp2f(sc[n][e] - m0) * i0;
                    if (t1 < T) pr[t1 * S + sx + e] = exp2f(sc[n][2 + e] - m1) * i1;
                }
            }
        }
    }
}

// In, Out: H (half activations), or float (with gradients: q, k, v rounded to H as staged, o
// in fp32, and the softmax weights written to p, (B*H, T, S) fp32, for the backward; o2, when
// not NULL, gets o's half copy too, laid out as o, for the product that reads it).
template <int KT, typename H, typename In, typename Out>
__global__ static void __launch_bounds__(MMA_THREADS)
    attention_fwd_mma_kernel(pbw_attn_geom g, const In *q, const In *k, const In *v, Out *o,
                             float *p, H *o2) {
    pbw_pdl_wait();
    constexpr int D = MMA_D, S16 = 16 * KT, LDK = MMA_LDK, C8 = D / 8;
    extern __shared__ uint4 smem_u4[];
    H *Ks = reinterpret_cast<H *>(smem_u4), *Vs = Ks + S16 * LDK, *Qs = Vs + S16 * LDK;
    const int T = (int)g.T, S = (int)g.S, T16 = (T + 15) / 16 * 16, tid = threadIdx.x;
    const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H;
    const In *qh = q + b * g.q[0] + h * g.q[1], *kh = k + b * g.k[0] + h * g.k[1];
    const In *vh = v + b * g.v[0] + h * g.v[1];
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // Every load of K, V and Q is issued before the first store to shared memory: the stores
    // could alias the loads' generic addresses, so the compiler would not move a load above
    // one, and each load's latency would be paid alone. S16 C8 = 128 KT: KT loads each a thread.
    static_assert(S16 * C8 == KT * MMA_THREADS, "a thread stages KT 16-byte pieces of K and V");
    uint4 kv[KT], vv[KT], qv[MMA_KT_MAX];
#pragma unroll
    for (int u = 0; u < KT; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        kv[u] = r < S ? load_half8<H>(kh + r * g.k[2] + c) : zero;
        vv[u] = r < S ? load_half8<H>(vh + r * g.v[2] + c) : zero;
    }
    const int qn = T16 * C8 / MMA_THREADS; // T16 / 16 pieces of Q a thread
#pragma unroll
    for (int u = 0; u < MMA_KT_MAX; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        qv[u] = u < qn && r < T ? load_half8<H>(qh + r * g.q[2] + c) : zero;
    }
#pragma unroll
    for (int u = 0; u < KT; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        *reinterpret_cast<uint4 *>(Ks + r * LDK + c) = kv[u];
        *reinterpret_cast<uint4 *>(Vs + r * LDK + c) = vv[u];
    }
#pragma unroll
    for (int u = 0; u < MMA_KT_MAX; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        if (u < qn) *reinterpret_cast<uint4 *>(Qs + r * LDK + c) = qv[u];
    }
    for (int x = tid + MMA_KT_MAX * MMA_THREADS; x < T16 * C8; x += MMA_THREADS) { // T > 80
        const int r = x / C8, c = 8 * (x % C8);
        *reinterpret_cast<uint4 *>(Qs + r * LDK + c) =
            r < T ? load_half8<H>(qh + r * g.q[2] + c) : zero;
    }
    __syncthreads();
    mma_fwd_head<KT, H, Out>(g, Qs, Ks, Vs, o, p, o2, bh, tid);
}

// 16 bytes global -> shared by cp.async, or 16 zero bytes where !in (src then is not read).
__device__ __forceinline__ void cp16_or_zero(void *dst, const void *src, bool in) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(in ? 16 : 0)
                 : "memory");
}

// Issues the copies of head bh's K, V (rows past S zero) and Q (rows past T zero) into one stage
// laid out as attention_fwd_mma_kernel's shared memory.
template <int KT, typename H>
__device__ __forceinline__ void mma_fwd_stage(const pbw_attn_geom &g, const H *q, const H *k,
                                              const H *v, H *Ks, int64_t bh, int tid) {
    constexpr int S16 = 16 * KT, LDK = MMA_LDK, C8 = MMA_D / 8;
    H *Vs = Ks + S16 * LDK, *Qs = Vs + S16 * LDK;
    const int T = (int)g.T, S = (int)g.S, T16 = (T + 15) / 16 * 16;
    const int64_t b = bh / g.H, h = bh % g.H;
    const H *qh = q + b * g.q[0] + h * g.q[1], *kh = k + b * g.k[0] + h * g.k[1];
    const H *vh = v + b * g.v[0] + h * g.v[1];
#pragma unroll
    for (int u = 0; u < KT; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8), rr = r < S ? r : 0;
        cp16_or_zero(Ks + r * LDK + c, kh + rr * g.k[2] + c, r < S);
        cp16_or_zero(Vs + r * LDK + c, vh + rr * g.v[2] + c, r < S);
    }
    for (int x = tid; x < T16 * C8; x += MMA_THREADS) {
        const int r = x / C8, c = 8 * (x % C8), rr = r < T ? r : 0;
        cp16_or_zero(Qs + r * LDK + c, qh + rr * g.q[2] + c, r < T);
    }
}

// The same heads on half operands by a grid that stays resident: a block takes heads
// blockIdx.x, + gridDim.x, ... and copies the next one's K, V and Q into its second stage of
// shared memory (cp.async) while it computes the current one, so no block waits for its
// operands alone and no last partial wave of blocks is left (one block a head, 116 registers,
// ran 10.2 waves of 4 blocks an SM for ViT-B/32's 448 crops x 12 heads on 132 SMs). The same
// arithmetic: the same bits (cuda_attention_half).
template <int KT, typename H, typename Out>
__global__ static void __launch_bounds__(MMA_THREADS)
    attention_fwd_mma_pipe_kernel(pbw_attn_geom g, const H *q, const H *k, const H *v, Out *o,
                                  float *p, H *o2) {
    pbw_pdl_wait();
    constexpr int S16 = 16 * KT, LDK = MMA_LDK;
    extern __shared__ uint4 smem_u4[];
    const int T16 = ((int)g.T + 15) / 16 * 16, stage = (2 * S16 + T16) * LDK, tid = threadIdx.x;
    H *base = reinterpret_cast<H *>(smem_u4);
    const int64_t BH = g.B * g.H;
    int64_t bh = blockIdx.x;
    if (bh < BH) mma_fwd_stage<KT, H>(g, q, k, v, base, bh, tid);
    cp_commit();
    for (int it = 0; bh < BH; bh += gridDim.x, it++) {
        H *cur = base + (it & 1) * stage;
        const int64_t next = bh + gridDim.x;
        if (next < BH) mma_fwd_stage<KT, H>(g, q, k, v, base + ((it + 1) & 1) * stage, next, tid);
        cp_commit(); // (empty at the last head)
        cp_wait<1>(); // this head's copies have landed, the next one's may still run
        __syncthreads();
        mma_fwd_head<KT, H, Out>(g, cur + 2 * S16 * LDK, cur, cur + S16 * LDK, o, p, o2, bh, tid);
        __syncthreads(); // the stage is read before the copies of the head after next overwrite it
    }
}

// ---------- the backward on tensor cores (bf16/fp16 precision) ----------
// A block of 4 warps per (sample, head), head size 64, T and S up to 64. Q, dO, K and V (fp32)
// and P are staged as halves, the rows past T or S zero. Then, a warp per 16 query rows:
// dP = dO V^T in registers, dS = P (dP - rowsum(P dP)) scale (stored as halves for the second
// part), dQ = dS K with dS's registers as A fragments. A warp per 16 key rows: dK = dS^T Q and
// dV = P^T dO, the transposed A operands read by ldmatrix.trans from dS and P as stored.
// Operands are rounded to the half type as the precision's products are; sums are fp32.
static const int BMMA_MAX = 64; // T and S at most
static size_t bwd_mma_smem_bytes(int64_t T, int kt) {
    const int64_t s16 = 16 * kt, t16 = (T + 15) / 16 * 16, ldp = s16 + 8;
    return 2 * (size_t)(2 * t16 * MMA_LDK + 2 * s16 * MMA_LDK + 2 * t16 * ldp);
}

// Rows r0 and r0 + 8 (when below R) of a C fragment pair into g (rows ld floats apart): added
// or written.
__device__ __forceinline__ void store_c(float *g, int64_t ld, int r0, int R, int col,
                                        const float (&c)[4], bool add) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + 8 * h;
        if (r >= R) continue;
        float2 *d = reinterpret_cast<float2 *>(g + r * ld + col);
        float2 v = make_float2(c[2 * h], c[2 * h + 1]);
        if (add) {
            const float2 o = *d;
            v.x += o.x;
            v.y += o.y;
        }
        *d = v;
    }
}

// The same written as halves of H (the gradient a product reads in the half type, rounded as
// a conversion pass would round the fp32 values; never added to).
template <typename H>
__device__ __forceinline__ void store_c(H *g, int64_t ld, int r0, int R, int col,
                                        const float (&c)[4], bool) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + 8 * h;
        if (r < R)
            *reinterpret_cast<uint32_t *>(g + r * ld + col) = mma_pack<H>(c[2 * h], c[2 * h + 1]);
    }
}

// Rows 0 .. 16 n - 1 of two (rows, 64) operands a and b, fp32 or halves H (rows lda, ldb
// elements apart; zero from row R) into halves at as and bs (rows MMA_LDK apart); n <= 4, by
// MMA_THREADS threads.
template <typename H, typename A, typename B>
__device__ __forceinline__ void stage_pair(H *as, H *bs, const A *a, int64_t lda, const B *b,
                                           int64_t ldb, int R, int n, int tid) {
    constexpr int C8 = MMA_D / 8, U = BMMA_MAX * C8 / MMA_THREADS;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 ha[U], hb[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        const bool in = u < n && r < R;
        ha[u] = in ? load_half8<H>(a + r * lda + c) : zero;
        hb[u] = in ? load_half8<H>(b + r * ldb + c) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (u >= n) break;
        const int x = tid + u * MMA_THREADS, r = x / C8, c = 8 * (x % C8);
        *reinterpret_cast<uint4 *>(as + r * MMA_LDK + c) = ha[u];
        *reinterpret_cast<uint4 *>(bs + r * MMA_LDK + c) = hb[u];
    }
}

// In: float, or H where the forward kept q, k and v as halves alone (the same values staged).
// G: float, or H for gradients written (not added) in the half type alone.
template <int KT, typename H, typename In, typename G>
__global__ static void __launch_bounds__(MMA_THREADS)
    attention_bwd_mma_kernel(pbw_attn_geom g, const In *q, const In *k, const In *v,
                             const float *p, const float *go, G *gq, G *gk, G *gv, bool add) {
    pbw_pdl_wait();
    constexpr int D = MMA_D, LD = MMA_LDK, S16 = 16 * KT, LDP = S16 + 8, C8 = D / 8;
    extern __shared__ uint4 smem_u4[];
    const int T = (int)g.T, S = (int)g.S, T16 = (T + 15) / 16 * 16, tid = threadIdx.x;
    H *Qs = reinterpret_cast<H *>(smem_u4), *dOs = Qs + T16 * LD, *Ks = dOs + T16 * LD;
    H *Vs = Ks + S16 * LD, *Ps = Vs + S16 * LD, *dSs = Ps + T16 * LDP;
    const int64_t bh = blockIdx.x, b = bh / g.H, h = bh % g.H;
    const int64_t qo = b * g.q[0] + h * g.q[1], ko = b * g.k[0] + h * g.k[1];
    const int64_t vo = b * g.v[0] + h * g.v[1], oo = b * g.o[0] + h * g.o[1];
    // Staged in three rounds, each round's loads all issued before its first store (a store to
    // shared memory could alias a load's generic address, so the compiler would not move a
    // load above it): 16-row pieces of Q and dO (a thread: 8 floats of a row each), of K and V,
    // then pairs of P.
    stage_pair(Qs, dOs, q + qo, g.q[2], go + oo, g.o[2], T, T16 / 16, tid);
    stage_pair(Ks, Vs, k + ko, g.k[2], v + vo, g.v[2], S, KT, tid);
    {
        const float *ph = p + bh * T * S;
        constexpr int NP = S16 / 2 * BMMA_MAX / MMA_THREADS; // pairs a thread at most
        float2 pv[NP];
        const int np = T16 * (S16 / 2) / MMA_THREADS;
        // a pair in one 8-byte load where S is even (then s + 1 < S wherever s < S)
        const bool pairs = S % 2 == 0 && ((uintptr_t)p & 7) == 0;
#pragma unroll
        for (int u = 0; u < NP; u++) {
            const int x = tid + u * MMA_THREADS, t = x / (S16 / 2), s = 2 * (x % (S16 / 2));
            const bool in = u < np && t < T && s < S;
            if (pairs) {
                pv[u] = in ? *reinterpret_cast<const float2 *>(ph + t * S + s)
                           : make_float2(0.0f, 0.0f);
            } else {
                pv[u].x = in ? ph[t * S + s] : 0.0f;
                pv[u].y = in && s + 1 < S ? ph[t * S + s + 1] : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < NP; u++) {
            const int x = tid + u * MMA_THREADS, t = x / (S16 / 2), s = 2 * (x % (S16 / 2));
            if (u < np) *reinterpret_cast<uint32_t *>(Ps + t * LDP + s) = mma_pack<H>(pv[u].x, pv[u].y);
        }
    }
    __syncthreads();
    const int warp = tid / 32, lane = tid % 32, gr = lane / 4, c2 = 2 * (lane % 4);
    // B fragments of a row-major (k, n) operand: this lane's row address within a 16-row chunk
    const int brow = (8 * (lane / 8 % 2) + lane % 8) * LD + 8 * (lane / 16);
    for (int mt = warp; mt < T16 / 16; mt += MMA_THREADS / 32) {
        float ds[2 * KT][4]; // dP, then dS
        mma_rows_abt<KT>(ds, dOs + mt * 16 * LD, Vs, gr, c2);
        const int t0 = 16 * mt + gr, t1 = t0 + 8;
        float pv[2 * KT][4], d0 = 0.0f, d1 = 0.0f;
#pragma unroll
        for (int n = 0; n < 2 * KT; n++) {
            float f[2];
            pbw_unpack_half<H, 2>(ld32(Ps + t0 * LDP + 8 * n + c2), f);
            pv[n][0] = f[0];
            pv[n][1] = f[1];
            pbw_unpack_half<H, 2>(ld32(Ps + t1 * LDP + 8 * n + c2), f);
            pv[n][2] = f[0];
            pv[n][3] = f[1];
            d0 = fmaf(pv[n][0], ds[n][0], fmaf(pv[n][1], ds[n][1], d0));
            d1 = fmaf(pv[n][2], ds[n][2], fmaf(pv[n][3], ds[n][3], d1));
        }
        d0 += __shfl_xor_sync(0xffffffffu, d0, 1);
        d0 += __shfl_xor_sync(0xffffffffu, d0, 2);
        d1 += __shfl_xor_sync(0xffffffffu, d1, 1);
        d1 += __shfl_xor_sync(0xffffffffu, d1, 2);
#pragma unroll
        for (int n = 0; n < 2 * KT; n++) {
            ds[n][0] = pv[n][0] * (ds[n][0] - d0) * g.scale;
            ds[n][1] = pv[n][1] * (ds[n][1] - d0) * g.scale;
            ds[n][2] = pv[n][2] * (ds[n][2] - d1) * g.scale;
            ds[n][3] = pv[n][3] * (ds[n][3] - d1) * g.scale;
            *reinterpret_cast<uint32_t *>(dSs + t0 * LDP + 8 * n + c2) = mma_pack<H>(ds[n][0], ds[n][1]);
            *reinterpret_cast<uint32_t *>(dSs + t1 * LDP + 8 * n + c2) = mma_pack<H>(ds[n][2], ds[n][3]);
        }
        if (!gq) continue;
        float acc[C8][4]; // dQ = dS K
#pragma unroll
        for (int n = 0; n < C8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
        for (int j = 0; j < KT; j++) {
            const uint32_t a[4] = {mma_pack<H>(ds[2 * j][0], ds[2 * j][1]),
                                   mma_pack<H>(ds[2 * j][2], ds[2 * j][3]),
                                   mma_pack<H>(ds[2 * j + 1][0], ds[2 * j + 1][1]),
                                   mma_pack<H>(ds[2 * j + 1][2], ds[2 * j + 1][3])};
#pragma unroll
            for (int n = 0; n < C8; n += 2) {
                uint32_t bf[4];
                ldsm_x4_trans(bf, Ks + 16 * j * LD + brow + 8 * n);
                mma_16816<H>(acc[n], a, bf[0], bf[1]);
                mma_16816<H>(acc[n + 1], a, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int n = 0; n < C8; n++) store_c(gq + qo, g.q[2], t0, T, 8 * n + c2, acc[n], add);
    }
    if (!gk && !gv) return;
    // dK and dV written (not added) as halves whose rows take 16-byte stores: staged first
    constexpr bool half_g = std::is_same<G, H>::value;
    const bool wide = half_g && !add && (((uintptr_t)gk | (uintptr_t)gv) & 15) == 0 &&
                      ((ko | vo | g.k[2] | g.v[2]) & 7) == 0;
    __syncthreads(); // dS complete
    // A fragments of dS^T and P^T (rows s, k = t) from (t, s) storage: tile i of ldmatrix has
    // rows t + 8 (i / 2), columns s + 8 (i % 2)
    const int arow = (lane % 8 + 8 * (lane / 16)) * LDP + 8 * (lane / 8 % 2);
    for (int ms = warp; ms < S16 / 16; ms += MMA_THREADS / 32) {
        float ak[C8][4], av[C8][4];
#pragma unroll
        for (int n = 0; n < C8; n++) {
            ak[n][0] = ak[n][1] = ak[n][2] = ak[n][3] = 0.0f;
            av[n][0] = av[n][1] = av[n][2] = av[n][3] = 0.0f;
        }
        for (int kt = 0; kt < T16 / 16; kt++) {
            uint32_t as[4], ap[4];
            ldsm_x4_trans(as, dSs + 16 * kt * LDP + 16 * ms + arow);
            ldsm_x4_trans(ap, Ps + 16 * kt * LDP + 16 * ms + arow);
#pragma unroll
            for (int n = 0; n < C8; n += 2) {
                uint32_t bf[4];
                ldsm_x4_trans(bf, Qs + 16 * kt * LD + brow + 8 * n); // dK += dS^T Q
                mma_16816<H>(ak[n], as, bf[0], bf[1]);
                mma_16816<H>(ak[n + 1], as, bf[2], bf[3]);
                ldsm_x4_trans(bf, dOs + 16 * kt * LD + brow + 8 * n); // dV += P^T dO
                mma_16816<H>(av[n], ap, bf[0], bf[1]);
                mma_16816<H>(av[n + 1], ap, bf[2], bf[3]);
            }
        }
        const int s0 = 16 * ms + gr;
        if (wide) { // through the warp's own rows of Ks and Vs, free since dQ: 16-byte stores
            H *kt_ = Ks + 16 * ms * LD, *vt_ = Vs + 16 * ms * LD;
            stage_tile16(kt_, LD, gr, c2, ak);
            stage_tile16(vt_, LD, gr, c2, av);
            __syncwarp();
            const int rows = S - 16 * ms;
            if (gk)
                copy_tile16(kt_, LD, lane, rows, [&](int r, int c, uint4 w) {
                    *reinterpret_cast<uint4 *>(gk + ko + (16 * ms + r) * g.k[2] + c) = w;
                });
            if (gv)
                copy_tile16(vt_, LD, lane, rows, [&](int r, int c, uint4 w) {
                    *reinterpret_cast<uint4 *>(gv + vo + (16 * ms + r) * g.v[2] + c) = w;
                });
            continue;
        }
#pragma unroll
        for (int n = 0; n < C8; n++) {
            if (gk) store_c(gk + ko, g.k[2], s0, S, 8 * n + c2, ak[n], add);
            if (gv) store_c(gv + vo, g.v[2], s0, S, 8 * n + c2, av[n], add);
        }
    }
}

static long g_bwd_mma_calls = 0;
extern "C" long pbw_cuda_attention_bwd_mma_calls(void) { return g_bwd_mma_calls; }

template <int KT, typename H, typename In, typename G>
static bool bwd_mma_launch(const pbw_attn_geom *g, const In *q, const In *k, const In *v,
                           const float *p, const float *go, G *gq, G *gk, G *gv, bool add) {
    static size_t opted = 0;
    const size_t bytes = bwd_mma_smem_bytes(g->T, KT);
    if (bytes > smem_optin_max() ||
        !smem_allow(attention_bwd_mma_kernel<KT, H, In, G>, bytes, &opted))
        return false;
    pbw_launch(attention_bwd_mma_kernel<KT, H, In, G>, (unsigned)(g->B * g->H), MMA_THREADS,
               bytes, *g, q, k, v, p, go, gq, gk, gv, add);
    PBW_CUDA_LAUNCHED("attention_bwd (tensor cores)");
    g_bwd_mma_calls++;
    return true;
}

// The tensor-core backward where the precision multiplies on halves, for head size 64, T and S
// up to 64, on 16-byte aligned rows; false (nothing launched) otherwise. q, k, v: fp32, or
// with half_in the precision's halves; gq, gk, gv: fp32, or with half_out (half_in, written)
// the precision's halves.
static bool bwd_mma(const pbw_attn_geom *g, const void *q, const void *k, const void *v,
                    bool half_in, const float *p, const float *go, void *gq, void *gk, void *gv,
                    bool half_out, bool add) {
    const int kt = (int)((g->S + 15) / 16);
    if (!pbw_cuda_half_gemm() || g->B * g->H > 0x7fffffff || g->T > BMMA_MAX || g->S < 1 ||
        g->S > BMMA_MAX || g->D != MMA_D || !vec4_ok(go, g->o) || (half_out && (!half_in || add)))
        return false;
    bool ok = false;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        auto run = [&](auto *qt, auto *kt_, auto *vt, auto *gqt, auto *gkt, auto *gvt) {
            if (!vec4_ok(qt, g->q) || !vec4_ok(kt_, g->k) || !vec4_ok(vt, g->v) ||
                !vec4_ok(gqt, g->q) || !vec4_ok(gkt, g->k) || !vec4_ok(gvt, g->v))
                return;
            switch (kt) {
            case 1: ok = bwd_mma_launch<1, H>(g, qt, kt_, vt, p, go, gqt, gkt, gvt, add); break;
            case 2: ok = bwd_mma_launch<2, H>(g, qt, kt_, vt, p, go, gqt, gkt, gvt, add); break;
            case 3: ok = bwd_mma_launch<3, H>(g, qt, kt_, vt, p, go, gqt, gkt, gvt, add); break;
            default: ok = bwd_mma_launch<4, H>(g, qt, kt_, vt, p, go, gqt, gkt, gvt, add); break;
            }
        };
        float *fq = (float *)gq, *fk = (float *)gk, *fv = (float *)gv;
        if (half_out)
            run((const H *)q, (const H *)k, (const H *)v, (H *)gq, (H *)gk, (H *)gv);
        else if (half_in) run((const H *)q, (const H *)k, (const H *)v, fq, fk, fv);
        else run((const float *)q, (const float *)k, (const float *)v, fq, fk, fv);
    });
    return ok;
}

static long g_mma_calls = 0;
extern "C" long pbw_cuda_attention_mma_calls(void) { return g_mma_calls; }

static long g_pipe_calls = 0;
extern "C" long pbw_cuda_attention_pipe_calls(void) { return g_pipe_calls; }

// The resident, double-buffered forward (attention_fwd_mma_pipe_kernel) where the operands are
// halves already and there are more heads than blocks fit on the GPU at once: a grid of that
// many blocks; false (nothing launched) otherwise. PBW_CUDA_ATTN_PIPE=0: a block a head.
// H200, CUPTI, a CMA generation (448 crops x 12 heads a launch): 49.8 -> 45.3 us a launch.
template <int KT, typename H, typename In, typename Out>
static bool fwd_mma_pipe_launch(const pbw_attn_geom *g, const In *q, const In *k, const In *v,
                                Out *o, float *p, H *o2) {
    if constexpr (!std::is_same<In, H>::value) {
        return false;
    } else {
        const bool off = pbw_env_zero("PBW_CUDA_ATTN_PIPE"); // read each time: tests switch it
        static size_t opted = 0;
        static int resident = -1; // blocks an SM
        const size_t bytes = 2 * mma_smem_bytes(g->T, KT);
        auto kern = attention_fwd_mma_pipe_kernel<KT, H, Out>;
        if (off || bytes > smem_optin_max() || !smem_allow(kern, bytes, &opted)) return false;
        if (resident < 0) {
            int dev = 0, sms = 0, per = 0;
            if (cudaGetDevice(&dev) != cudaSuccess ||
                cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
                cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kern, MMA_THREADS, bytes) !=
                    cudaSuccess) {
                cudaGetLastError();
                per = sms = 0;
            }
            resident = per * sms;
        }
        // no more heads than blocks: a block a head without the second stage (an Adam step's
        // 32 crops x 12 heads: 11.1 us a launch here against 10.3 us)
        const int64_t BH = g->B * g->H;
        if (BH <= resident) return false;
        pbw_launch(kern, (unsigned)resident, MMA_THREADS, bytes, *g, q, k, v, o, p, o2);
        g_pipe_calls++;
        return true;
    }
}

template <int KT, typename H, typename In, typename Out>
static bool fwd_mma_launch(const pbw_attn_geom *g, const In *q, const In *k, const In *v, Out *o,
                           float *p, H *o2) {
    if (fwd_mma_pipe_launch<KT, H>(g, q, k, v, o, p, o2)) {
        PBW_CUDA_LAUNCHED("attention_fwd (tensor cores)");
        g_mma_calls++;
        return true;
    }
    static size_t opted = 0;
    const size_t bytes = mma_smem_bytes(g->T, KT);
    if (bytes > smem_optin_max() ||
        !smem_allow(attention_fwd_mma_kernel<KT, H, In, Out>, bytes, &opted))
        return false;
    pbw_launch(attention_fwd_mma_kernel<KT, H, In, Out>, (unsigned)(g->B * g->H), MMA_THREADS,
               bytes, *g, q, k, v, o, p, o2);
    PBW_CUDA_LAUNCHED("attention_fwd (tensor cores)");
    g_mma_calls++;
    return true;
}

// The tensor-core forward for head size 64 and S <= 80 on 16-byte aligned rows; false
// (nothing launched) otherwise. (The build's targets are sm_80 and sm_90.)
template <typename H, typename In, typename Out>
static bool fwd_mma(const pbw_attn_geom *g, const In *q, const In *k, const In *v, Out *o,
                    float *p = nullptr, H *o2 = nullptr) {
    const int64_t BH = g->B * g->H, LIM = 1 << 12; // keeps every in-head index an int
    const int kt = (int)((g->S + 15) / 16);
    if (BH > 0x7fffffff || g->T > LIM || g->S < 1 || kt > MMA_KT_MAX || g->D != MMA_D ||
        !vec4_ok(q, g->q) || !vec4_ok(k, g->k) || !vec4_ok(v, g->v) ||
        !vec4_ok(o, g->o))
        return false;
    switch (kt) {
    case 1: return fwd_mma_launch<1, H>(g, q, k, v, o, p, o2);
    case 2: return fwd_mma_launch<2, H>(g, q, k, v, o, p, o2);
    case 3: return fwd_mma_launch<3, H>(g, q, k, v, o, p, o2);
    case 4: return fwd_mma_launch<4, H>(g, q, k, v, o, p, o2); // ViT-B/32: 50 tokens
    default: return fwd_mma_launch<5, H>(g, q, k, v, o, p, o2); // text: 77 tokens
    }
}

template <typename In, typename Out>
static bool fwd_tiled(const pbw_attn_geom *g, const In *q, const In *k, const In *v, float *p,
                      Out *o) {
    const int64_t BH = g->B * g->H, LIM = 1 << 14; // keeps every in-head index an int
    if (BH > 0x7fffffff || g->T > LIM || g->S > 80 || g->D > LIM || g->D % 4 ||
        !vec4_ok(q, g->q) || !vec4_ok(k, g->k) || !vec4_ok(v, g->v) || !vec4_ok(o, g->o))
        return false;
    if (g->S <= 56) return fwd_tiled_launch<7, 7>(g, q, k, v, p, o); // ViT: 50 tokens
    return fwd_tiled_launch<5, 10>(g, q, k, v, p, o);                // text: 77 tokens
}

static bool bwd_tiled(const pbw_attn_geom *g, const float *q, const float *k, const float *v,
                      const float *p, const float *go, float *gq, float *gk, float *gv,
                      bool add) {
    const int64_t BH = g->B * g->H, LIM = 1 << 14;
    if (BH > 0x7fffffff || g->T > LIM || g->S > LIM || g->D > LIM || g->D % 4 ||
        !vec4_ok(q, g->q) || !vec4_ok(k, g->k) || !vec4_ok(v, g->v) || !vec4_ok(go, g->o) ||
        !vec4_ok(gq, g->q) || !vec4_ok(gk, g->k) || !vec4_ok(gv, g->v))
        return false;
    static size_t opted = 0;
    bwd_layout l = bwd_layout_of(g);
    size_t bytes = sizeof(float) * (size_t)l.total;
    if (bytes > smem_optin_max() || !smem_allow(attention_bwd_tiled_kernel, bytes, &opted))
        return false;
    pbw_launch(attention_bwd_tiled_kernel, (unsigned)BH, BWD_THREADS, bytes, *g, l, q, k, v, p, go,
               gq, gk, gv, add);
    PBW_CUDA_LAUNCHED("attention_bwd");
    return true;
}

// Softmax over each row of p (B*H*T rows of S scores, already scaled), keys s > t excluded when
// causal (their weight 0), as the CPU.
__global__ static void attention_softmax_kernel(float *p, int64_t R, int64_t T, int64_t S,
                                                int causal) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    int64_t t = r % T, n = causal ? (t + 1 < S ? t + 1 : S) : S;
    float *pr = p + r * S, mx = -INFINITY, sum = 0.0f;
    for (int64_t s = lane; s < n; s += 32) mx = fmaxf(mx, pr[s]);
    mx = pbw_warp_max(mx);
    for (int64_t s = lane; s < n; s += 32) {
        float e = expf(pr[s] - mx);
        pr[s] = e;
        sum += e;
    }
    float inv = 1.0f / pbw_warp_sum(sum);
    for (int64_t s = lane; s < S; s += 32) pr[s] = s < n ? pr[s] * inv : 0.0f;
}

// ds (R,S) = p * (ds - rowsum(p * ds)) * scale: the gradient of the scores from that of P.
__global__ static void attention_dscores_kernel(const float *p, float *ds, int64_t R, int64_t S,
                                                float scale) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float *pr = p + r * S;
    float *dr = ds + r * S, dot = 0.0f;
    for (int64_t s = lane; s < S; s += 32) dot = fmaf(pr[s], dr[s], dot);
    dot = pbw_warp_sum(dot);
    for (int64_t s = lane; s < S; s += 32) dr[s] = pr[s] * (dr[s] - dot) * scale;
}

// A per-head operand: element (r, c) of head h of batch b at base + b*s0 + h*s1 + r*ld + c.
struct head_op {
    const float *base;
    int64_t s0, s1, ld;
};

// The same product for every (batch, head): one strided batched GEMM over B*H items when the
// strides compose (s0 == H*s1 for all operands, as in (B,H,T,D) tensors), else one per batch
// item over its H heads (packed (B,T,3W) q, k, v).
static void head_gemm(const pbw_attn_geom *g, int ta, int tb, int64_t M, int64_t N, int64_t K,
                      float alpha, head_op a, head_op b, float beta, head_op c) {
    const int64_t B = g->B, H = g->H;
    if (H == 1) { // the batch stride alone
        pbw_cuda_gemm_batched(ta, tb, M, N, K, alpha, a.base, a.ld, a.s0, b.base, b.ld, b.s0,
                              beta, (float *)c.base, c.ld, c.s0, B);
        return;
    }
    if (a.s0 == H * a.s1 && b.s0 == H * b.s1 && c.s0 == H * c.s1) {
        pbw_cuda_gemm_batched(ta, tb, M, N, K, alpha, a.base, a.ld, a.s1, b.base, b.ld, b.s1,
                              beta, (float *)c.base, c.ld, c.s1, B * H);
        return;
    }
    for (int64_t i = 0; i < B; i++)
        pbw_cuda_gemm_batched(ta, tb, M, N, K, alpha, a.base + i * a.s0, a.ld, a.s1,
                              b.base + i * b.s0, b.ld, b.s1, beta, (float *)c.base + i * c.s0,
                              c.ld, c.s1, H);
}

extern "C" size_t pbw_cuda_attention_scratch_floats(const pbw_attn_geom *g) {
    return (size_t)(g->B * g->H * g->T * g->S); // the backward's dP / dS
}

// The forward that keeps its weights, from q, k, v in fp32 or (half_in) the precision's halves:
// o in fp32 with its half copy oh (may be NULL), or with o NULL the halves alone.
static int fwd_keep(const pbw_attn_geom *g, const void *q, const void *k, const void *v,
                    bool half_in, float *p, float *o, void *oh) {
    if (g->S <= 0 || !pbw_cuda_half_gemm()) return -1;
    bool done = false;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        auto run = [&](auto *qt, auto *kt, auto *vt) {
            done = o ? fwd_mma<H>(g, qt, kt, vt, o, p, (H *)oh)
                     : fwd_mma<H>(g, qt, kt, vt, (H *)oh, p, (H *)nullptr);
        };
        if (half_in) run((const H *)q, (const H *)k, (const H *)v);
        else run((const float *)q, (const float *)k, (const float *)v);
    });
    return done ? 0 : -1;
}

extern "C" int pbw_cuda_attention_fwd_keep(const pbw_attn_geom *g, const float *q,
                                           const float *k, const float *v, float *p, float *o,
                                           void *oh) {
    return fwd_keep(g, q, k, v, false, p, o, oh);
}

extern "C" int pbw_cuda_attention_fwd_keep_h(const pbw_attn_geom *g, const void *q,
                                             const void *k, const void *v, float *p, float *o,
                                             void *oh) {
    return fwd_keep(g, q, k, v, true, p, o, oh);
}

extern "C" void pbw_cuda_attention_fwd(const pbw_attn_geom *g, const float *q, const float *k,
                                       const float *v, float *p, float *o, float *scratch) {
    (void)scratch; // only the backward needs scratch
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D, BH = B * H;
    if (BH <= 0 || T <= 0 || D <= 0) return;
    if (pbw_cuda_attention_fwd_keep(g, q, k, v, p, o, nullptr) == 0 ||
        (S > 0 && fwd_tiled(g, q, k, v, p, o)))
        return;
    if (fused_smem_bytes(g) <= FUSED_SMEM_MAX && BH <= 0x7fffffff) {
        // enough blocks to fill the GPU (~2 per SM of an H100) when B*H alone is small
        int64_t chunks = (264 + BH - 1) / BH, max_chunks = (T + WARPS - 1) / WARPS;
        if (chunks > max_chunks) chunks = max_chunks;
        if (chunks < 1) chunks = 1;
        int64_t rows = (T + chunks - 1) / chunks;
        chunks = (T + rows - 1) / rows;
        pbw_launch(attention_fwd_fused_kernel, dim3((unsigned)BH, (unsigned)chunks), 32 * WARPS,
                   fused_smem_bytes(g), *g, q, k, v, p, o, rows);
        PBW_CUDA_LAUNCHED("attention_fwd");
        return;
    }
    const int64_t TS = T * S;
    head_op qo = {q, g->q[0], g->q[1], g->q[2]}, ko = {k, g->k[0], g->k[1], g->k[2]};
    head_op vo = {v, g->v[0], g->v[1], g->v[2]}, oo = {o, g->o[0], g->o[1], g->o[2]};
    head_op po = {p, H * TS, TS, S};
    head_gemm(g, 0, 1, T, S, D, g->scale, qo, ko, 0.0f, po); // scale q k^T
    pbw_launch(attention_softmax_kernel, (unsigned)((BH * T + WARPS - 1) / WARPS), 32 * WARPS, 0, p,
               BH * T, T, S, g->causal);
    PBW_CUDA_LAUNCHED("attention_fwd (softmax)");
    head_gemm(g, 0, 0, T, D, S, 1.0f, po, vo, 0.0f, oo); // p v
}

extern "C" int pbw_cuda_attention_fwd_nograd(const pbw_attn_geom *g, const void *q,
                                             const void *k, const void *v, float *p, void *o,
                                             int half) {
    if (g->B * g->H <= 0 || g->T <= 0 || g->D <= 0) return 0;
    if (!half) {
        const float *qf = (const float *)q, *kf = (const float *)k, *vf = (const float *)v;
        if (g->S > 0 && fwd_tiled(g, qf, kf, vf, (float *)nullptr, (float *)o)) return 0;
        pbw_cuda_attention_fwd(g, qf, kf, vf, p, (float *)o, nullptr); // p as its scratch
        return 0;
    }
    if (g->S <= 0) return -1;
    bool done = false;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        const H *qh = (const H *)q, *kh = (const H *)k, *vh = (const H *)v;
        done = fwd_mma<H>(g, qh, kh, vh, (H *)o) || fwd_tiled(g, qh, kh, vh, (float *)nullptr, (H *)o);
    });
    return done ? 0 : -1;
}

// A backward with nothing to compute (no heads, queries, keys or head width): the entry points
// below return 0 for it without launching.
static bool bwd_empty(const pbw_attn_geom *g) {
    return g->B * g->H <= 0 || g->T <= 0 || g->S <= 0 || g->D <= 0;
}

extern "C" int pbw_cuda_attention_bwd_write(const pbw_attn_geom *g, const float *q,
                                            const float *k, const float *v, const float *p,
                                            const float *go, float *gq, float *gk, float *gv) {
    if (bwd_empty(g)) return 0;
    if (!gq || !gk || !gv) return -1;
    if (bwd_mma(g, q, k, v, false, p, go, gq, gk, gv, false, false)) return 0;
    return bwd_tiled(g, q, k, v, p, go, gq, gk, gv, false) ? 0 : -1;
}

extern "C" int pbw_cuda_attention_bwd_write_h(const pbw_attn_geom *g, const void *q,
                                              const void *k, const void *v, const float *p,
                                              const float *go, float *gq, float *gk, float *gv) {
    if (bwd_empty(g)) return 0;
    if (!gq || !gk || !gv) return -1;
    return bwd_mma(g, q, k, v, true, p, go, gq, gk, gv, false, false) ? 0 : -1;
}

static long g_bwd_add_h_calls = 0;
extern "C" long pbw_cuda_attention_bwd_add_h_calls(void) { return g_bwd_add_h_calls; }

extern "C" int pbw_cuda_attention_bwd_add_h(const pbw_attn_geom *g, const void *q,
                                            const void *k, const void *v, const float *p,
                                            const float *go, float *gq, float *gk, float *gv) {
    if (bwd_empty(g)) return 0;
    if (!gq || !gk || !gv || !bwd_mma(g, q, k, v, true, p, go, gq, gk, gv, false, true)) return -1;
    g_bwd_add_h_calls++;
    return 0;
}

static long g_bwd_half_out_calls = 0;
extern "C" long pbw_cuda_attention_bwd_half_out_calls(void) { return g_bwd_half_out_calls; }

extern "C" int pbw_cuda_attention_bwd_write_hh(const pbw_attn_geom *g, const void *q,
                                               const void *k, const void *v, const float *p,
                                               const float *go, void *gq, void *gk, void *gv) {
    if (bwd_empty(g)) return 0;
    if (!gq || !gk || !gv || pbw_cuda_precision() != PBW_PREC_BF16) return -1;
    if (!bwd_mma(g, q, k, v, true, p, go, gq, gk, gv, true, false)) return -1;
    g_bwd_half_out_calls++;
    return 0;
}

extern "C" void pbw_cuda_attention_bwd(const pbw_attn_geom *g, const float *q, const float *k,
                                       const float *v, const float *p, const float *go, float *gq,
                                       float *gk, float *gv, float *scratch) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D, BH = B * H, TS = T * S;
    if (BH <= 0 || T <= 0 || S <= 0 || D <= 0 || (!gq && !gk && !gv)) return;
    if (bwd_mma(g, q, k, v, false, p, go, gq, gk, gv, false, true) ||
        bwd_tiled(g, q, k, v, p, go, gq, gk, gv, true))
        return;
    size_t fused = fused_bwd_smem_bytes(g);
    if (fused <= smem_optin_max() && BH <= 0x7fffffff) {
        static size_t opted = FUSED_SMEM_MAX; // the kernel's current limit
        if (fused > opted) {
            if (cudaFuncSetAttribute(attention_bwd_fused_kernel,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)fused) != cudaSuccess) {
                cudaGetLastError();
                pbw_cuda_fail("attention_bwd: cannot use %zu bytes of shared memory", fused);
                return;
            }
            opted = fused;
        }
        pbw_launch(attention_bwd_fused_kernel, (unsigned)BH, 32 * WARPS, fused, *g, q, k, v, p, go,
                   gq, gk, gv);
        PBW_CUDA_LAUNCHED("attention_bwd");
        return;
    }
    head_op qo = {q, g->q[0], g->q[1], g->q[2]}, ko = {k, g->k[0], g->k[1], g->k[2]};
    head_op vo = {v, g->v[0], g->v[1], g->v[2]}, goo = {go, g->o[0], g->o[1], g->o[2]};
    head_op po = {p, H * TS, TS, S}, dso = {scratch, H * TS, TS, S};
    if (gv) { // dV += P^T dO
        head_op gvo = {gv, g->v[0], g->v[1], g->v[2]};
        head_gemm(g, 1, 0, S, D, T, 1.0f, po, goo, 1.0f, gvo);
    }
    if (!gq && !gk) return;
    head_gemm(g, 0, 1, T, S, D, 1.0f, goo, vo, 0.0f, dso); // dP = dO V^T
    pbw_launch(attention_dscores_kernel, (unsigned)((BH * T + WARPS - 1) / WARPS), 32 * WARPS, 0, p,
               scratch, BH * T, S, g->scale);
    PBW_CUDA_LAUNCHED("attention_bwd (scores)");
    if (gq) { // dQ += dS K
        head_op gqo = {gq, g->q[0], g->q[1], g->q[2]};
        head_gemm(g, 0, 0, T, D, S, 1.0f, dso, ko, 1.0f, gqo);
    }
    if (gk) { // dK += dS^T Q
        head_op gko = {gk, g->k[0], g->k[1], g->k[2]};
        head_gemm(g, 1, 0, S, D, T, 1.0f, dso, qo, 1.0f, gko);
    }
}
