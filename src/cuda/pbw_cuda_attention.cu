// pbw_cuda_attention.cu: scaled dot-product attention on the GPU (see pbw_cuda_nn.h), with the
// strided geometry of pbw_cpu_attention_* (src/cpu/pbw_cpu_nn.c).
//
// Forward: when one head's K and V fit in shared memory (CLIP: S <= 77, D = 64), one fused
// kernel per (batch*head, block of queries) computes the scores, the softmax and P V without
// a trip through global memory but for P itself, which the backward needs. Otherwise scores
// and P V are cuBLAS strided batched GEMMs (pbw_cuda_gemm_batched, one call per batch item when
// the batch and head strides do not compose) around a masked softmax kernel.
//
// Backward: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)) scale, dQ = dS K, dK = dS^T Q.
// When a head's K, V, Q, dO and dS fit in a block's shared memory (CLIP: ~100 KB at T = S = 77,
// D = 64, above the default 48 KB, so the kernel opts in), one fused kernel per (batch*head)
// does it all: each block owns its head's rows of every gradient, so no atomics. Otherwise
// cuBLAS GEMMs with dP/dS in the caller's scratch (B*H*T*S floats), as the CPU does per head.
#include <cmath>

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

// Softmax over each row of p (B*H*T rows of S scores, already scaled), keys s > t excluded when
// causal (their weight 0), as the CPU.
__global__ static void attention_softmax_kernel(float *p, int64_t R, int64_t T, int64_t S,
                                                int causal) {
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

extern "C" void pbw_cuda_attention_fwd(const pbw_attn_geom *g, const float *q, const float *k,
                                       const float *v, float *p, float *o, float *scratch) {
    (void)scratch; // only the backward needs scratch
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D, BH = B * H;
    if (BH <= 0 || T <= 0 || D <= 0) return;
    if (fused_smem_bytes(g) <= FUSED_SMEM_MAX && BH <= 0x7fffffff) {
        // enough blocks to fill the GPU (~2 per SM of an H100) when B*H alone is small
        int64_t chunks = (264 + BH - 1) / BH, max_chunks = (T + WARPS - 1) / WARPS;
        if (chunks > max_chunks) chunks = max_chunks;
        if (chunks < 1) chunks = 1;
        int64_t rows = (T + chunks - 1) / chunks;
        chunks = (T + rows - 1) / rows;
        attention_fwd_fused_kernel<<<dim3((unsigned)BH, (unsigned)chunks), 32 * WARPS,
                                     fused_smem_bytes(g), pbw_stream()>>>(*g, q, k, v, p, o,
                                                                         rows);
        PBW_CUDA_LAUNCHED("attention_fwd");
        return;
    }
    const int64_t TS = T * S;
    head_op qo = {q, g->q[0], g->q[1], g->q[2]}, ko = {k, g->k[0], g->k[1], g->k[2]};
    head_op vo = {v, g->v[0], g->v[1], g->v[2]}, oo = {o, g->o[0], g->o[1], g->o[2]};
    head_op po = {p, H * TS, TS, S};
    head_gemm(g, 0, 1, T, S, D, g->scale, qo, ko, 0.0f, po); // scale q k^T
    attention_softmax_kernel<<<(unsigned)((BH * T + WARPS - 1) / WARPS), 32 * WARPS, 0,
                               pbw_stream()>>>(p, BH * T, T, S, g->causal);
    PBW_CUDA_LAUNCHED("attention_fwd (softmax)");
    head_gemm(g, 0, 0, T, D, S, 1.0f, po, vo, 0.0f, oo); // p v
}

extern "C" void pbw_cuda_attention_bwd(const pbw_attn_geom *g, const float *q, const float *k,
                                       const float *v, const float *p, const float *go, float *gq,
                                       float *gk, float *gv, float *scratch) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D, BH = B * H, TS = T * S;
    if (BH <= 0 || T <= 0 || S <= 0 || D <= 0 || (!gq && !gk && !gv)) return;
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
        attention_bwd_fused_kernel<<<(unsigned)BH, 32 * WARPS, fused, pbw_stream()>>>(
            *g, q, k, v, p, go, gq, gk, gv);
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
    attention_dscores_kernel<<<(unsigned)((BH * T + WARPS - 1) / WARPS), 32 * WARPS, 0,
                               pbw_stream()>>>(p, scratch, BH * T, S, g->scale);
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
