// pbw_cuda_nn.cu: batched GEMM (cuBLAS), layer norm, batch norm, softmax, the cosine of rows, the
// bias broadcast of pbw_linear and embedding gathers on the GPU (see pbw_cuda_nn.h). Attention:
// pbw_cuda_attention.cu.
//
// Precision: pbw_cuda_gemm_batched keeps fp32 operands and lets cuBLAS multiply them on tensor
// cores in the precision's type (compute_type). pbw_linear's forward reads half operands where
// they exist (a half copy of its input, a cached one of its constant weight), and in bf16 its
// input gradient rounds gy to bf16 to multiply it with the same cached weight (fp32 sums and
// output; not in fp16, whose range would lose small gradients; PBW_CUDA_HALF_BACKWARD=0: off).
//
// Row kernels (layer norm, softmax) give each row to one warp, accumulate in fp32 and reduce with
// shuffles; the CPU accumulates some of these sums in double, so results differ in the last
// bits. Column reductions (weight and bias gradients) use a fixed order: deterministic.
#include <cublasLt.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/pbw_cache.h"
#include "cpu/pbw_cpu.h"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_nn.h"

// Warp-per-row launches: 8 rows (warps) a block of 256 threads.
static const int ROWS_PER_BLOCK = 8;
static inline unsigned row_blocks(int64_t R) {
    return (unsigned)((R + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
}

// ---------------- GEMM ----------------

static cublasComputeType_t compute_type(void) {
    switch (pbw_cuda_precision()) {
    case PBW_PREC_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case PBW_PREC_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    case PBW_PREC_FP16: return CUBLAS_COMPUTE_32F_FAST_16F;
    default: return CUBLAS_COMPUTE_32F_PEDANTIC; // plain fp32 whatever the handle's math mode
    }
}

// C (M,N,ldc) *= beta for batch matrices (beta 0: set to 0, as BLAS does for K = 0).
__global__ static void scale_matrix_kernel(float *C, int64_t M, int64_t N, int64_t ldc,
                                           int64_t sc, int64_t batch, float beta) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, batch * M * N) {
        int64_t j = i % N, r = (i / N) % M, b = i / (M * N);
        float *c = C + b * sc + r * ldc + j;
        *c = beta == 0.0f ? 0.0f : *c * beta;
    }
}

// One cuBLAS call on row-major operands: row-major C (M,N) is column-major C^T (N,M), and
// C^T = op(B)^T op(A)^T, so B goes first with the same transpose flags.
static void gemm_call(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                      int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch) {
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
        ldc > INT_MAX || batch > INT_MAX) {
        pbw_cuda_fail("gemm_batched: sizes (%lld,%lld,%lld) x %lld exceed cuBLAS's int range",
                      (long long)M, (long long)N, (long long)K, (long long)batch);
        return;
    }
    PBW_CUBLAS_OK(cublasGemmStridedBatchedEx(
        pbw_cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N,
        (int)M, (int)K, &alpha, B, CUDA_R_32F, (int)ldb, (long long)sb, A, CUDA_R_32F, (int)lda,
        (long long)sa, &beta, C, CUDA_R_32F, (int)ldc, (long long)sc, (int)batch, compute_type(),
        CUBLAS_GEMM_DEFAULT));
}

extern "C" void pbw_cuda_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                                      float alpha, const float *A, int64_t lda, int64_t stride_a,
                                      const float *B, int64_t ldb, int64_t stride_b, float beta,
                                      float *C, int64_t ldc, int64_t stride_c, int64_t batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    if (K <= 0) { // C = beta C, once per item applied (stride_c 0: applied batch times)
        int64_t reps = stride_c == 0 ? batch : 1, items = stride_c == 0 ? 1 : batch;
        for (int64_t r = 0; r < reps; r++) {
            pbw_launch(scale_matrix_kernel, pbw_grid(items * M * N), 256, 0, C, M, N, ldc, stride_c,
                       items, beta);
            PBW_CUDA_LAUNCHED("gemm_batched (K = 0)");
        }
        return;
    }
    // Shared B and items of A and C that follow each other row after row: one tall product,
    // as on the CPU.
    if (batch > 1 && stride_b == 0 && !trans_a && stride_a == M * lda && stride_c != 0 &&
        stride_c == M * ldc) {
        gemm_call(0, trans_b, M * batch, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
        return;
    }
    if (batch > 1 && stride_c == 0) {
        // Every item updates the same C in turn (the CPU loops). With beta 1 that is a sum over
        // the items, which is one product with K*batch when the items of op(A) and op(B) are
        // stacked along their reduction dimension: A^T and B stored (K,.) one after the other.
        if (beta == 1.0f && trans_a && !trans_b && stride_a == K * lda && stride_b == K * ldb) {
            gemm_call(1, 0, M, N, K * batch, alpha, A, lda, 0, B, ldb, 0, 1.0f, C, ldc, 0, 1);
            return;
        }
        for (int64_t i = 0; i < batch; i++) // the CPU's order, each item with beta
            gemm_call(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, 0,
                      B + i * stride_b, ldb, 0, beta, C, ldc, 0, 1);
        return;
    }
    gemm_call(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
              stride_c, batch);
}

// ---------------- linear with its bias (and residual) in the product's epilogue (cuBLASLt) ----
// y = x W^T + b (+ r) in one kernel: the bias is added as the product's tiles are stored, and a
// residual r is read as the product's C (beta = 1), instead of a pass that fills y with the bias,
// a product that reads y back and an add. In column-major terms y^T (O,R) = W (O,I) x^T (I,R):
// A = W stored (I,O) transposed, B = x stored (I,R). A plan (descriptors and an algorithm) is
// kept per shape, precision, pointer alignment, operand and output types and bias; shapes the
// library has no algorithm for fall back to the two-pass path.
//
// The algorithm is measured, as cuDNN's are (pbw_cuda_conv.cu): the first product of a plan
// times each of the heuristic's first LT_CANDIDATES candidates on its own operands, writing a
// temporary output, and keeps the fastest. Run alone, the heuristic's first pick was 10-11%
// slower summed over CLIP's products at the edit's shapes (H100, bench/lt_candidates.cu: a
// CMA-ES pass's out_proj + residual 64 -> 44 us, fc2 + residual 121 -> 104 us); inside a
// generation, where a product reads what the last kernel left in L2, the products' GPU time
// fell by less, 24.2 -> 23.7 ms (CUPTI, bench/profile_cuda.sh). In fp32, the parity
// reference, the heuristic's first pick serves, so that every process sums alike;
// PBW_CUBLASLT_HEURISTIC=1 takes it in every precision, =0 measures fp32 too. A product first
// met while a CUDA graph records takes the heuristic's pick (measuring waits for the GPU).
// Measured picks are kept on disk (pbw_cache.h: cublaslt-<GPU>-<version>.txt, a line per plan
// key and its algorithm, which cuBLASLt documents as serializable for the same library version)
// and read back by later processes instead of measuring again; a cached algorithm is checked
// with cublasLtMatmulAlgoCheck (and its workspace against ours) before use, and measured afresh
// when that fails. PBW_CUBLASLT_CACHE=0 neither reads nor writes the file; PBW_CUBLASLT_LOG=1
// prints each measurement on stderr.

namespace {
// What a plan is made for; also the key of a choice on disk.
struct lt_key {
    int64_t R, O, I;
    int prec, align, half; // half: operands in the precision's half type (else float32)
    int bias, outh;        // a bias epilogue; C and D in the half type (else float32)
    int grad;              // the input gradient gx (R,I) = gy (R,O) W (O,I) (else y = x W^T)
    bool operator==(const lt_key &o) const {
        return R == o.R && O == o.O && I == o.I && prec == o.prec && align == o.align &&
               half == o.half && bias == o.bias && outh == o.outh && grad == o.grad;
    }
};

struct lt_plan {
    lt_key k;
    int ok;
    const void *bias_ptr; // the bias pointer the descriptor holds
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};
const int LT_PLANS = 64;
const size_t LT_WS_BYTES = (size_t)32 << 20;
cublasLtHandle_t g_lt;
pbw_lane_buffer g_lt_ws; // one workspace a GPU lane (lt_ws)
lt_plan g_lt_plans[LT_PLANS];
int g_lt_nplans, g_lt_evict, g_lt_broken;
long g_lt_half_calls;

// The current GPU lane's cuBLASLt workspace, made on the lane's first product; NULL when out
// of memory (or while a graph is recorded: the caller's other path serves).
void *lt_ws() { return pbw_cuda_lane_buffer(&g_lt_ws, LT_WS_BYTES, LT_WS_BYTES, nullptr); }

int align_of(const void *p) { // largest power of two dividing the address, at most 256
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 4 && (u & (uintptr_t)(a - 1))) a >>= 1;
    return a;
}

// The alignment every one of a product's operands has (NULLs left out): the smallest of their
// align_of, which is that of their addresses or'ed together.
int align_of_all(const void *a, const void *b, const void *c, const void *d = nullptr) {
    return align_of((const void *)((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d));
}

void lt_destroy(lt_plan *pl) {
    if (pl->op) cublasLtMatmulDescDestroy(pl->op);
    if (pl->a) cublasLtMatrixLayoutDestroy(pl->a);
    if (pl->b) cublasLtMatrixLayoutDestroy(pl->b);
    if (pl->c) cublasLtMatrixLayoutDestroy(pl->c);
    pl->op = nullptr;
    pl->a = pl->b = pl->c = nullptr;
    pl->ok = 0;
}

// One product of plan pl with algorithm algo: D = op(A) B, plus C read with beta 1 where C is
// given (D may be C), else D written (beta 0).
cublasStatus_t lt_matmul(const lt_plan *pl, const cublasLtMatmulAlgo_t *algo, const void *A,
                         const void *B, const void *C, void *D) {
    const float one = 1.0f, zero = 0.0f;
    return cublasLtMatmul(g_lt, pl->op, &one, A, pl->a, B, pl->b, C ? &one : &zero, C ? C : D,
                          pl->c, D, pl->c, algo, lt_ws(), LT_WS_BYTES, pbw_stream());
}

// The same with the plan's own algorithm; a failure is reported (the sticky error ends the
// pass), named by what.
void lt_run(const lt_plan *pl, const void *A, const void *B, const void *C, void *D,
            const char *what) {
    const cublasStatus_t st = lt_matmul(pl, &pl->algo, A, B, C, D);
    if (st != CUBLAS_STATUS_SUCCESS)
        pbw_cuda_fail("%s (cuBLASLt, %lld x %lld x %lld): status %d", what, (long long)pl->k.R,
                      (long long)pl->k.O, (long long)pl->k.I, (int)st);
}

// The operands of a plan's first product, which its measurement runs on.
struct lt_call {
    const void *A, *B, *C; // C: the residual read with beta 1, or NULL (beta 0)
};

const int LT_CANDIDATES = 8;
long g_lt_measured, g_lt_cache_hits;

// PBW_CUBLASLT_LOG=1: each measured candidate's time on stderr.
bool log_choices_lt() {
    static int v = -1;
    if (v < 0) v = pbw_env_set("PBW_CUBLASLT_LOG");
    return v != 0;
}

bool lt_measure(int prec) {
    if (pbw_env_set("PBW_CUBLASLT_HEURISTIC")) return false;
    if (pbw_env_zero("PBW_CUBLASLT_HEURISTIC")) return true;
    return prec != PBW_PREC_FP32;
}

// ---- measured choices on disk (see above) ----
struct lt_cached {
    lt_key k;
    cublasLtMatmulAlgo_t algo;
};
std::vector<lt_cached> g_lt_cache;
int g_lt_cache_state; // 0: not read yet, 1: read (path set), -1: off or no place for it
char g_lt_cache_path[4096];
const int LT_KEY_FIELDS = 9, LT_LINE_FIELDS = 17; // the key's 9, then the algorithm's 8 words

void lt_cache_open() {
    if (g_lt_cache_state) return;
    g_lt_cache_state = pbw_cuda_cache_read<LT_LINE_FIELDS>(
        "cublaslt", cublasLtGetVersion(), "PBW_CUBLASLT_CACHE", "v2", g_lt_cache_path,
        sizeof g_lt_cache_path, [](const uint64_t *v) {
            bool fits = true;
            for (int i = 0; i < LT_KEY_FIELDS; i++) fits = fits && v[i] <= INT_MAX;
            if (!fits) return;
            lt_cached c;
            c.k = lt_key{(int64_t)v[0], (int64_t)v[1], (int64_t)v[2], (int)v[3], (int)v[4],
                         (int)v[5],     (int)v[6],     (int)v[7],     (int)v[8]};
            for (int i = 0; i < 8; i++) c.algo.data[i] = v[LT_KEY_FIELDS + i];
            g_lt_cache.push_back(c);
        });
}

// The newest cached algorithm of pl's key, if cuBLASLt accepts it for pl's descriptors.
bool lt_cache_find(const lt_plan *pl, cublasLtMatmulAlgo_t *algo) {
    lt_cache_open();
    for (size_t i = g_lt_cache.size(); i-- > 0;) {
        const lt_cached &c = g_lt_cache[i];
        if (!(c.k == pl->k)) continue;
        cublasLtMatmulHeuristicResult_t chk;
        if (cublasLtMatmulAlgoCheck(g_lt, pl->op, pl->a, pl->b, pl->c, pl->c, &c.algo, &chk) !=
                CUBLAS_STATUS_SUCCESS ||
            chk.workspaceSize > LT_WS_BYTES)
            return false;
        *algo = c.algo;
        return true;
    }
    return false;
}

void lt_cache_add(const lt_plan *pl) {
    lt_cache_open();
    if (g_lt_cache_state != 1) return;
    const lt_cached c{pl->k, pl->algo};
    g_lt_cache.push_back(c);
    const lt_key &k = c.k;
    const uint64_t v[LT_LINE_FIELDS] = {
        (uint64_t)k.R,    (uint64_t)k.O,     (uint64_t)k.I,    (uint64_t)k.prec,
        (uint64_t)k.align, (uint64_t)k.half, (uint64_t)k.bias, (uint64_t)k.outh,
        (uint64_t)k.grad, c.algo.data[0],    c.algo.data[1],   c.algo.data[2],
        c.algo.data[3],   c.algo.data[4],    c.algo.data[5],   c.algo.data[6],
        c.algo.data[7]};
    char line[512];
    if (pbw_cache_format_line(line, sizeof line, "v2", v, LT_LINE_FIELDS, 8) == 0)
        pbw_cache_append(g_lt_cache_path, line); // a cache not written is only slower next time
}

// The index of the fastest of the n candidates on the call's operands (each run once to warm
// up, then timed three times, its best time counted), the output written to a temporary (never
// to the call's D, which may be its C); -1 when none could be timed.
int lt_fastest(const lt_plan *pl, const cublasLtMatmulHeuristicResult_t *res, int n,
               const lt_call &k) {
    const size_t bytes =
        (size_t)(pl->k.R * (pl->k.grad ? pl->k.I : pl->k.O)) * (pl->k.outh ? 2 : 4);
    void *tmp = pbw_cuda_malloc(bytes);
    int best = -1;
    float best_ms = 0;
    for (int c = 0; c < n && tmp; c++) {
        if (res[c].workspaceSize > LT_WS_BYTES) continue;
        const float t = pbw_cuda_best_of_three([&] {
            return lt_matmul(pl, &res[c].algo, k.A, k.B, k.C, tmp) == CUBLAS_STATUS_SUCCESS;
        });
        if (t < 0) continue; // a candidate that failed to run is passed over
        if (log_choices_lt())
            std::fprintf(stderr, "pbw cublaslt %lld x %lld x %lld%s%s%s: candidate %d %.1f us\n",
                         (long long)pl->k.R, (long long)pl->k.O, (long long)pl->k.I,
                         pl->k.grad ? " input-gradient" : "", pl->k.half ? " half" : "",
                         pl->k.outh ? " half-out" : "", c, 1e3 * t);
        if (best < 0 || t < best_ms) {
            best = c;
            best_ms = t;
        }
    }
    pbw_cuda_free(tmp);
    cudaGetLastError();
    return best;
}

// Points the plan's bias epilogue at bias (a host call only when the pointer changes).
bool lt_set_bias(lt_plan *pl, const void *bias) {
    if (pl->bias_ptr == bias) return true;
    if (cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                       sizeof bias) != CUBLAS_STATUS_SUCCESS)
        return false;
    pl->bias_ptr = bias;
    return true;
}

// The plan's descriptors: y^T (O,R) = A^T B with A = W stored (I,O), B = x stored (I,R); for
// the input gradient gx^T (I,R) = A B with A = W stored (I,O), B = gy stored (O,R).
bool lt_describe(lt_plan *pl) {
    const cublasOperation_t tA = pl->k.grad ? CUBLAS_OP_N : CUBLAS_OP_T, tB = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = pl->k.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const cudaDataType_t ht = pl->k.prec == PBW_PREC_FP16 ? CUDA_R_16F : CUDA_R_16BF;
    const cudaDataType_t in = pl->k.half ? ht : CUDA_R_32F, out = pl->k.outh ? ht : CUDA_R_32F;
    const cublasComputeType_t ct = pl->k.half ? CUBLAS_COMPUTE_32F : compute_type();
    if (cublasLtMatmulDescCreate(&pl->op, ct, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS)
        return false;
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    const uint64_t R = (uint64_t)pl->k.R, O = (uint64_t)pl->k.O, I = (uint64_t)pl->k.I;
    const uint64_t kb = pl->k.grad ? O : I, mc = pl->k.grad ? I : O; // B's rows, C's rows
    return !cublasLtMatrixLayoutCreate(&pl->a, in, I, O, (int64_t)I) &&
           !cublasLtMatrixLayoutCreate(&pl->b, in, kb, R, (int64_t)kb) &&
           !cublasLtMatrixLayoutCreate(&pl->c, out, mc, R, (int64_t)mc);
}

// The plan's algorithm (see above): from the file, measured, or the heuristic's first. The
// bias pointer must be set on pl->op already (the measurement runs the epilogue).
bool lt_choose(lt_plan *pl, const lt_call &k) {
    const bool want = lt_measure(pl->k.prec), measure = want && !pbw_cuda_capturing();
    if (want && lt_cache_find(pl, &pl->algo)) {
        g_lt_cache_hits++;
        return pl->ok = 1;
    }
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return false;
    size_t ws = LT_WS_BYTES;
    uint32_t al = (uint32_t)pl->k.align;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulHeuristicResult_t res[LT_CANDIDATES];
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, pl->op, pl->a, pl->b, pl->c, pl->c,
                                                       pref, measure ? LT_CANDIDATES : 1, res,
                                                       &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found < 1) return false;
    int pick = 0;
    bool measured = measure && found == 1; // one candidate: nothing to compare
    if (measure && found > 1) {
        int f = lt_fastest(pl, res, found, k);
        if (f >= 0) {
            pick = f;
            measured = true;
            g_lt_measured++;
        }
    }
    pl->algo = res[pick].algo;
    pl->ok = 1;
    if (measured) lt_cache_add(pl);
    return true;
}

// The plan of key, made (and its algorithm chosen on the call's operands) when new; NULL where
// cuBLASLt has none. The bias pointer is the descriptor's when given.
lt_plan *lt_plan_of(const lt_key &key, const void *bias, const lt_call &call) {
    lt_plan *pl = nullptr;
    for (int i = 0; i < g_lt_nplans && !pl; i++)
        if (g_lt_plans[i].k == key) pl = &g_lt_plans[i];
    if (!pl) {
        if (g_lt_nplans < LT_PLANS) {
            pl = &g_lt_plans[g_lt_nplans++];
        } else { // full (many shapes in one process): the plans made longest ago go first
            pl = &g_lt_plans[g_lt_evict];
            g_lt_evict = (g_lt_evict + 1) % LT_PLANS;
            lt_destroy(pl);
        }
        *pl = lt_plan{key, 0, nullptr, nullptr, nullptr, nullptr, nullptr, {}};
        // the bias pointer is set before choosing: a measurement runs the epilogue
        if (lt_describe(pl) && (!key.bias || lt_set_bias(pl, bias))) lt_choose(pl, call);
    }
    if (!pl->ok || (key.bias && !lt_set_bias(pl, bias))) return nullptr;
    return pl;
}

// cuBLASLt's handle and the lane's workspace; false where either cannot be had.
bool lt_ready() {
    if (g_lt_broken) return false;
    if (!g_lt && cublasLtCreate(&g_lt) != CUBLAS_STATUS_SUCCESS) {
        g_lt_broken = 1;
        return false;
    }
    return lt_ws() != nullptr;
}
} // namespace

// Half copies of constant weights (pbw_cuda_is_weight), made on first use and dropped when
// their block is freed (pbw_cuda_free calls pbw_cuda_nn_forget_weights).
namespace {
struct half_weight {
    const float *w;
    size_t n;
    int prec;
    void *h;
};
std::vector<half_weight> g_half_w;

template <typename H> __global__ static void to_half_kernel(H *out, const float *x, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) out[i] = pbw_to_half<H>(x[i]);
}

const void *half_weight_of(const float *w, size_t n) {
    const int prec = (int)pbw_cuda_precision();
    for (const half_weight &e : g_half_w)
        if (e.w == w && e.n == n && e.prec == prec) return e.h;
    if (!pbw_cuda_is_weight(w, n * sizeof(float))) return nullptr;
    void *h = pbw_cuda_malloc(n * 2);
    if (!h) return nullptr;
    pbw_half_type(prec, [&](auto t) {
        using H = decltype(t);
        pbw_launch(to_half_kernel<H>, pbw_grid((int64_t)n), 256, 0, (H *)h, w, (int64_t)n);
    });
    PBW_CUDA_LAUNCHED("half weight");
    g_half_w.push_back({w, n, prec, h});
    return h;
}
} // namespace

const void *pbw_cuda_half_weight(const float *w, size_t n) { return half_weight_of(w, n); }

void pbw_cuda_nn_forget_weights(const void *p, size_t bytes) {
    std::vector<void *> drop;
    const char *lo = (const char *)p, *hi = lo + bytes;
    for (size_t i = g_half_w.size(); i-- > 0;) {
        const char *c = (const char *)g_half_w[i].w;
        if (c >= lo && c < hi) {
            drop.push_back(g_half_w[i].h);
            g_half_w.erase(g_half_w.begin() + (long)i);
        }
    }
    for (void *h : drop) pbw_cuda_free(h);
}

extern "C" long pbw_cuda_linear_half_calls(void) { return g_lt_half_calls; }

extern "C" long pbw_cuda_linear_lt_measured(void) { return g_lt_measured; }

extern "C" long pbw_cuda_linear_lt_forget(void) {
    for (int i = 0; i < g_lt_nplans; i++) lt_destroy(&g_lt_plans[i]);
    g_lt_nplans = g_lt_evict = 0;
    g_lt_cache.clear();
    g_lt_cache_state = 0;
    long hits = g_lt_cache_hits;
    g_lt_cache_hits = 0;
    return hits;
}

// ---------------- one-row products ----------------
// A product of one row (StyleGAN2's styles: a latent (1, 512) times each layer's affine map,
// forward and for the latent's gradient) is a matrix-vector product bound by reading w and by
// its launch; cuBLAS(Lt)'s matrix-vector kernels took 3.3-4.1 us each on an H200 for 512 x 512,
// about twice what reading its 1 MB needs. These read w once in 16-byte words where they can,
// sum in fp32 in a fixed order (the same bits every run) and are taken under the half
// precisions only: fp32 keeps cuBLAS's sums, the parity reference's.

// Row o of y = x w^T (+ b) by one warp (every lane returns the sum).
__device__ __forceinline__ float rowvec_row(const float *__restrict__ x,
                                            const float *__restrict__ wr, int I, bool vec4,
                                            int lane) {
    float s = 0.0f;
    if (vec4) {
        for (int i = 4 * lane; i < I; i += 128) {
            const float4 a = *reinterpret_cast<const float4 *>(wr + i);
            const float4 v = *reinterpret_cast<const float4 *>(x + i);
            s = fmaf(a.x, v.x, s);
            s = fmaf(a.y, v.y, s);
            s = fmaf(a.z, v.z, s);
            s = fmaf(a.w, v.w, s);
        }
    } else {
        for (int i = lane; i < I; i += 32) s = fmaf(wr[i], x[i], s);
    }
    return pbw_warp_sum(s);
}

// y (O) = x (I) w^T (+ b): a warp a row of w.
__global__ static void rowvec_fwd_kernel(const float *__restrict__ x, const float *__restrict__ w,
                                         const float *__restrict__ b, float *__restrict__ y,
                                         int O, int I, bool vec4) {
    pbw_pdl_wait();
    const int o = (int)((blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
    if (o >= O) return; // the whole warp
    const float s = rowvec_row(x, w + (int64_t)o * I, I, vec4, lane);
    if (lane == 0) y[o] = b ? s + b[o] : s;
}

// n maps' rows in one grid: map k's rows are the warps from row0[k] to row0[k + 1].
struct rowvec_jobs {
    const float *w[PBW_CUDA_ROWVEC_MULTI], *b[PBW_CUDA_ROWVEC_MULTI];
    float *y[PBW_CUDA_ROWVEC_MULTI];
    const float *gy[PBW_CUDA_ROWVEC_MULTI];
    int row0[PBW_CUDA_ROWVEC_MULTI + 1];
    unsigned vec4; // bit k: map k's rows load 16-byte words
    int n;
};

__global__ static void rowvec_multi_fwd_kernel(const float *__restrict__ x, rowvec_jobs j, int I) {
    pbw_pdl_wait();
    const int g = (int)((blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
    if (g >= j.row0[j.n]) return; // the whole warp
    int k = 0;
    while (g >= j.row0[k + 1]) k++;
    const int o = g - j.row0[k];
    const float s = rowvec_row(x, j.w[k] + (int64_t)o * I, I, (j.vec4 >> k) & 1u, lane);
    if (lane == 0) j.y[k][o] = j.b[k] ? s + j.b[k][o] : s;
}

// gx (I) = beta gx + gy (O) w (O, I): a block RV_COLS columns by RV_GROUPS groups of rows (a
// warp's loads 4 rows of 32 bytes, whole sectors), each group's partial in shared memory, then
// summed by halving in a fixed order. At I = 512 that is 64 blocks, where 32 columns a block
// (16 blocks, 32 sequential loads a thread) took 5.1 us on an H200.
const int RV_COLS = 8, RV_GROUPS = 64;

// The block's columns of gy (O) w (O, I), into part[0][tx] (every thread of the block calls
// it): thread (tx, ty) sums rows ty, ty + RV_GROUPS, ... of column i, then the groups are
// halved together in a fixed order.
static __device__ __forceinline__ void rowvec_col_sums(const float *__restrict__ gy,
                                                       const float *__restrict__ w, int O, int I,
                                                       float (&part)[RV_GROUPS][RV_COLS]) {
    const int tx = threadIdx.x % RV_COLS, ty = threadIdx.x / RV_COLS;
    const int i = blockIdx.x * RV_COLS + tx;
    float s = 0.0f;
    if (i < I && gy)
#pragma unroll 4
        for (int o = ty; o < O; o += RV_GROUPS) s = fmaf(gy[o], w[(int64_t)o * I + i], s);
    part[ty][tx] = s;
#pragma unroll
    for (int h = RV_GROUPS / 2; h > 0; h /= 2) {
        __syncthreads();
        if (ty < h) part[ty][tx] += part[ty + h][tx];
    }
}

__global__ static void __launch_bounds__(RV_COLS *RV_GROUPS)
    rowvec_bwd_kernel(const float *__restrict__ gy, const float *__restrict__ w,
                      float *__restrict__ gx, float beta, int O, int I) {
    pbw_pdl_wait();
    __shared__ float part[RV_GROUPS][RV_COLS];
    rowvec_col_sums(gy, w, O, I, part);
    const int tx = threadIdx.x % RV_COLS, i = blockIdx.x * RV_COLS + tx;
    if (threadIdx.x < RV_COLS && i < I) gx[i] = beta != 0.0f ? gx[i] + part[0][tx] : part[0][tx];
}

// Map blockIdx.y's share of gx: part[k I + i] = gy[k] w[k] as rowvec_bwd_kernel sums it.
__global__ static void __launch_bounds__(RV_COLS *RV_GROUPS)
    rowvec_multi_bwd_kernel(rowvec_jobs j, float *__restrict__ part_out, int I) {
    pbw_pdl_wait();
    __shared__ float part[RV_GROUPS][RV_COLS];
    const int k = blockIdx.y;
    rowvec_col_sums(j.gy[k], j.w[k], j.row0[k + 1] - j.row0[k], I, part);
    const int tx = threadIdx.x % RV_COLS, i = blockIdx.x * RV_COLS + tx;
    if (threadIdx.x < RV_COLS && i < I) part_out[(int64_t)k * I + i] = part[0][tx];
}

// gx = beta gx + the maps' shares in k order (the same sums every run).
__global__ static void rowvec_multi_sum_kernel(const float *__restrict__ part, float *gx,
                                               float beta, int n, int I) {
    pbw_pdl_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= I) return;
    float s = beta != 0.0f ? gx[i] : 0.0f;
    for (int k = 0; k < n; k++) s += part[(int64_t)k * I + i];
    gx[i] = s;
}

static long g_rowvec_calls = 0;
extern "C" long pbw_cuda_rowvec_calls(void) { return g_rowvec_calls; }

static bool rowvec_taken(int64_t O, int64_t I) {
    const pbw_precision p = pbw_cuda_precision();
    static int env = -1;
    if (env < 0) env = !pbw_env_zero("PBW_CUDA_ROWVEC");
    return env && (p == PBW_PREC_BF16 || p == PBW_PREC_FP16) && O > 0 && I > 0 &&
           O <= INT_MAX / 32 && I <= INT_MAX;
}

extern "C" int pbw_cuda_rowvec_backward(const float *gy, const float *w, float *gx, float beta,
                                        int64_t O, int64_t I) {
    if (!rowvec_taken(O, I)) return -1;
    pbw_launch(rowvec_bwd_kernel, (unsigned)((I + RV_COLS - 1) / RV_COLS), RV_COLS * RV_GROUPS, 0,
               gy, w, gx, beta, (int)O, (int)I);
    PBW_CUDA_LAUNCHED("linear backward (one row)");
    g_rowvec_calls++;
    return 0;
}

extern "C" int pbw_cuda_rowvec_multi_ok(int n, const int64_t *O, int64_t I) {
    if (n < 1 || n > PBW_CUDA_ROWVEC_MULTI) return 0;
    int64_t rows = 0;
    for (int k = 0; k < n; k++) {
        if (!rowvec_taken(O[k], I) || rows + O[k] > INT_MAX / 32) return 0;
        rows += O[k];
    }
    return 1;
}

// The jobs of n maps of one row of I, or false where the one-row kernels are not taken.
static bool rowvec_jobs_of(int n, const float *x, const float *const *w, const int64_t *O,
                           int64_t I, rowvec_jobs *j) {
    if (!pbw_cuda_rowvec_multi_ok(n, O, I)) return false;
    *j = rowvec_jobs{};
    j->n = n;
    int64_t rows = 0;
    for (int k = 0; k < n; k++) {
        j->w[k] = w[k];
        j->row0[k] = (int)rows;
        rows += O[k];
        if (I % 4 == 0 && (!x || align_of(x) >= 16) && align_of(w[k]) >= 16) j->vec4 |= 1u << k;
    }
    j->row0[n] = (int)rows;
    return true;
}

extern "C" int pbw_cuda_rowvec_multi_forward(int n, const float *x, const float *const *w,
                                             const float *const *b, float *const *y,
                                             const int64_t *O, int64_t I) {
    rowvec_jobs j;
    if (!rowvec_jobs_of(n, x, w, O, I, &j)) return -1;
    for (int k = 0; k < n; k++) {
        j.b[k] = b ? b[k] : nullptr;
        j.y[k] = y[k];
    }
    const int64_t rows = j.row0[n];
    pbw_launch(rowvec_multi_fwd_kernel, (unsigned)((rows * 32 + 255) / 256), 256, 0, x, j,
               (int)I);
    PBW_CUDA_LAUNCHED("linear (one row, n maps)");
    g_rowvec_calls++;
    return 0;
}

extern "C" int pbw_cuda_rowvec_multi_backward(int n, const float *const *gy,
                                              const float *const *w, const int64_t *O, float *gx,
                                              float beta, int64_t I, float *scratch) {
    rowvec_jobs j;
    if (!scratch || !rowvec_jobs_of(n, nullptr, w, O, I, &j)) return -1;
    for (int k = 0; k < n; k++) j.gy[k] = gy[k];
    pbw_launch(rowvec_multi_bwd_kernel, dim3((unsigned)((I + RV_COLS - 1) / RV_COLS), (unsigned)n),
               RV_COLS * RV_GROUPS, 0, j, scratch, (int)I);
    PBW_CUDA_LAUNCHED("linear backward (one row, n maps)");
    pbw_launch(rowvec_multi_sum_kernel, (unsigned)((I + 255) / 256), 256, 0, (const float *)scratch,
               gx, beta, n, (int)I);
    PBW_CUDA_LAUNCHED("linear backward (one row, n maps' sum)");
    g_rowvec_calls++;
    return 0;
}

extern "C" int pbw_cuda_linear_lt(const float *x, const void *xh, const float *w, const float *b,
                                  const float *r, float *y, void *yh, const void *rh, int64_t R,
                                  int64_t O, int64_t I) {
    if (g_lt_broken || R <= 0 || O <= 0 || I <= 0 || R > INT_MAX || O > INT_MAX || I > INT_MAX ||
        (yh && r) || (rh && !yh))
        return -1;
    // one fp32 row, written (no residual, no half output): the matrix-vector kernel above
    // (cuBLASLt's handle and workspace not needed)
    if (R == 1 && x && y && !yh && !r && !rh && rowvec_taken(O, I)) {
        const bool vec4 = I % 4 == 0 && align_of(x) >= 16 && align_of(w) >= 16;
        pbw_launch(rowvec_fwd_kernel, (unsigned)((O * 32 + 255) / 256), 256, 0, x, w, b, y,
                   (int)O, (int)I, vec4);
        PBW_CUDA_LAUNCHED("linear (one row)");
        g_rowvec_calls++;
        return 0;
    }
    if (!lt_ready()) return -1;
    // half operands: x's half copy (made by the op that wrote x) and the weight's
    const void *wh = xh && pbw_cuda_half_gemm() ? half_weight_of(w, (size_t)(O * I)) : nullptr;
    const int half = wh != nullptr;
    if ((yh || !x) && !half) return -1; // a half output only from half operands
    // the bias is read as a vector of D's type (a cached half copy for a half D), 16-byte
    // aligned as cuBLASLt requires
    const void *bias = yh && b ? half_weight_of(b, (size_t)O) : (const void *)b;
    if (b && (!bias || align_of(bias) < 16)) return -1;
    const void *A = half ? wh : (const void *)w, *B = half ? xh : (const void *)x;
    void *D = yh ? yh : (void *)y;
    const void *res = rh ? rh : (const void *)r; // C: the residual in D's type
    const int al = align_of_all(A, B, D, res), hasb = b != nullptr;
    const lt_key key{R, O, I, (int)pbw_cuda_precision(), al, half, hasb, yh != nullptr, 0};
    lt_plan *pl = lt_plan_of(key, bias, lt_call{A, B, res});
    if (!pl) return -1;
    g_lt_half_calls += half;
    lt_run(pl, A, B, res, D, "linear"); // a failure is reported: the sticky error ends the pass
    return 0;
}

// ---------------- input gradient of linear on bf16 operands ----------------
// gx (R,I) += gy (R,O) W (O,I): gy is rounded to bf16 into a scratch buffer of this module (the
// pass that does it also adds gy into the residual's gradient), or comes in bf16 already, then
// one product (a cuBLASLt plan, half_input_gradient) reads it and the weight's cached bf16 copy
// and accumulates in fp32, into gx or rounded into a bf16 gx. In column-major terms
// gx^T (I,R) += W^T (I,O) gy^T (O,R): A = W stored (I,O), B = gy stored (O,R), both untransposed.

namespace {
const int64_t HALF_BWD_MIN_ROWS = 64;
long g_half_bwd_calls;
pbw_lane_buffer g_gyh; // gy in bf16, one a GPU lane

// At least `bytes` of the current lane's scratch, reused in stream order; NULL when it would
// have to grow while a graph is recorded or when out of memory (the fp32 path serves then).
void *gyh_get(size_t bytes) { return pbw_cuda_lane_buffer(&g_gyh, bytes, 0, nullptr); }
} // namespace

// gyh = bf16(gy), and gr += gy (add) or gr = gy (!add) when gr is given: one read of gy.
__global__ static void gy_to_bf16_kernel(const float *gy, __nv_bfloat16 *gyh, float *gr,
                                         int add, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) {
        const float v = gy[i];
        gyh[i] = pbw_to_half<__nv_bfloat16>(v);
        if (gr) gr[i] = add ? gr[i] + v : v;
    }
}

// The same four values at a time (n4 = n / 4; gy, gr 16-byte aligned).
__global__ static void gy_to_bf16_kernel4(const float4 *gy, uint2 *gyh, float4 *gr, int add,
                                          int64_t n4) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        const float4 v = gy[i];
        gyh[i] = pbw_pack_half4<__nv_bfloat16>(v);
        if (gr) {
            float4 r = v;
            if (add) {
                const float4 o = gr[i];
                r.x += o.x, r.y += o.y, r.z += o.z, r.w += o.w;
            }
            gr[i] = r;
        }
    }
}

extern "C" long pbw_cuda_linear_half_backward_calls(void) { return g_half_bwd_calls; }

// Whether the bf16 input gradient applies to this product (the conditions of
// pbw_cuda_linear_backward_half), and w's cached bf16 copy then (made on first use).
static const void *half_backward_weight(const float *w, int64_t R, int64_t O, int64_t I) {
    // the switch is read at each call (not cached as the others are) so tests can turn it off
    // few rows (the generator's style products: one row a sample) are matrix-vector products,
    // bound by reading w, where the conversion pass would only add a launch
    if (pbw_cuda_precision() != PBW_PREC_BF16 || !pbw_cuda_half_gemm() || R < HALF_BWD_MIN_ROWS ||
        pbw_env_zero("PBW_CUDA_HALF_BACKWARD") || O <= 0 || I <= 0 || R > INT_MAX ||
        O > INT_MAX || I > INT_MAX)
        return nullptr;
    return half_weight_of(w, (size_t)(O * I));
}

extern "C" int pbw_cuda_linear_backward_half_ok(const float *w, int64_t R, int64_t O, int64_t I) {
    return half_backward_weight(w, R, O, I) != nullptr;
}

// gx = beta_x gx + gyh wh on bf16 operands, or gxh = gyh wh rounded to bf16 where gxh is given
// (the input gradient held in bf16 alone for the op that reads it so: pbw_tensor.grad_half),
// through a cuBLASLt plan whose algorithm is measured as the forward's are (cuBLAS's own pick
// for the bf16 output of CLIP's qkv and fc1 products, 1600 x 768 x 2304 and x 3072, took 12.1
// us against 10.4 us for the fp32 output on an H200); cuBLAS's product where no plan serves.
static void half_input_gradient(const void *gyh, const void *wh, float *gx, float beta_x,
                                void *gxh, int64_t R, int64_t O, int64_t I) {
    const float one = 1.0f, zero = 0.0f;
    g_half_bwd_calls++;
    void *D = gxh ? gxh : (void *)gx;
    const void *C = !gxh && beta_x != 0.0f ? (const void *)gx : nullptr; // read with beta 1
    if (lt_ready() && R <= INT_MAX && O <= INT_MAX && I <= INT_MAX) {
        const lt_key key{R, O, I, PBW_PREC_BF16, align_of_all(wh, gyh, D), 1, 0, gxh != nullptr,
                         1};
        const lt_plan *pl = lt_plan_of(key, nullptr, lt_call{wh, gyh, C});
        if (pl) {
            lt_run(pl, wh, gyh, C, D, "linear backward");
            return;
        }
    }
    PBW_CUBLAS_OK(cublasGemmEx(pbw_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, (int)I, (int)R, (int)O,
                               &one, wh, CUDA_R_16BF, (int)I, gyh, CUDA_R_16BF, (int)O,
                               gxh ? &zero : &beta_x, gxh ? gxh : (void *)gx,
                               gxh ? CUDA_R_16BF : CUDA_R_32F, (int)I, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

extern "C" int pbw_cuda_linear_backward_half(const float *gy, const float *w, float *gx,
                                             float beta_x, void *gxh, float *gr, float beta_r,
                                             int64_t R, int64_t O, int64_t I) {
    const void *wh = half_backward_weight(w, R, O, I);
    const int64_t n = R * O;
    __nv_bfloat16 *gyh = wh ? (__nv_bfloat16 *)gyh_get((size_t)n * sizeof(__nv_bfloat16)) : nullptr;
    if (!gyh) return -1;
    if (n % 4 == 0 && ((uintptr_t)gy | (uintptr_t)gr) % 16 == 0) {
        pbw_launch(gy_to_bf16_kernel4, pbw_grid(n / 4), 256, 0, (const float4 *)gy, (uint2 *)gyh,
                   (float4 *)gr, beta_r != 0.0f, n / 4);
    } else {
        pbw_launch(gy_to_bf16_kernel, pbw_grid(n), 256, 0, gy, gyh, gr, beta_r != 0.0f, n);
    }
    PBW_CUDA_LAUNCHED("linear backward (gy to bf16)");
    half_input_gradient(gyh, wh, gx, beta_x, gxh, R, O, I);
    return 0;
}

extern "C" int pbw_cuda_linear_backward_half_gy(const void *gyh, const float *w, float *gx,
                                                float beta_x, void *gxh, int64_t R, int64_t O,
                                                int64_t I) {
    const void *wh = half_backward_weight(w, R, O, I);
    if (!wh) return -1;
    half_input_gradient(gyh, wh, gx, beta_x, gxh, R, O, I);
    return 0;
}

// ---------------- bias rows (pbw_linear) ----------------

__global__ static void bias_rows_forward_kernel(const float *b, float *y, int64_t R, int64_t O) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, R * O) y[i] = b[i % O];
}

extern "C" void pbw_cuda_bias_rows_forward(const float *b, float *y, int64_t R, int64_t O) {
    if (R * O <= 0) return;
    pbw_launch(bias_rows_forward_kernel, pbw_grid(R * O), 256, 0, b, y, R, O);
    PBW_CUDA_LAUNCHED("bias_rows_forward");
}

// Column sums over rows, 32 columns a block: thread (tx, ty) sums rows ty, ty+16, ... of
// column tx (coalesced across tx), then the 16 partial sums add in shared memory in a fixed
// order. With x/mean/rstd given it also sums g * xhat (layer norm's weight gradient).
static const int COL_TY = 16;

__global__ static void column_sums_kernel(const float *gy, const float *x, const float *mean,
                                          const float *rstd, float *gw, float *gb, int64_t R,
                                          int64_t D) {
    pbw_pdl_wait();
    __shared__ float sw[COL_TY][33], sb[COL_TY][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t i = (int64_t)blockIdx.x * 32 + tx;
    float aw = 0.0f, ab = 0.0f;
    if (i < D)
        for (int64_t r = ty; r < R; r += COL_TY) {
            float g = gy[r * D + i];
            ab += g;
            if (gw) aw = fmaf(g, (x[r * D + i] - mean[r]) * rstd[r], aw);
        }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && i < D) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < COL_TY; k++) {
            tw += sw[k][tx];
            tb += sb[k][tx];
        }
        if (gw) gw[i] += tw;
        if (gb) gb[i] += tb;
    }
}

static void column_sums(const float *gy, const float *x, const float *mean, const float *rstd,
                        float *gw, float *gb, int64_t R, int64_t D, const char *name) {
    if ((!gw && !gb) || D <= 0) return;
    pbw_launch(column_sums_kernel, (unsigned)((D + 31) / 32), dim3(32, COL_TY), 0, gy, x, mean,
               rstd, gw, gb, R, D);
    PBW_CUDA_LAUNCHED(name);
}

extern "C" void pbw_cuda_bias_rows_backward(const float *gy, float *gb, int64_t R, int64_t O) {
    column_sums(gy, nullptr, nullptr, nullptr, nullptr, gb, R, O, "bias_rows_backward");
}

// ---------------- layer norm ----------------

// One warp a row: mean, then the variance in a second pass (as on the CPU: no cancellation in
// E[x^2] - m^2), then y; with yh also y in the half type H (the operand of the products that
// follow), the same float values each rounded once more to nearest. y may be NULL (half
// activations: yh alone).
template <typename H>
__global__ static void layer_norm_forward_kernel(const float *x, const float *w, const float *b,
                                                 float *y, H *yh, float *mean, float *rstd,
                                                 int64_t R, int64_t D, float eps) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float *xr = x + r * D;
    float *yr = y ? y + r * D : nullptr;
    H *hr = yh ? yh + r * D : nullptr;
    float s = 0.0f;
    for (int64_t i = lane; i < D; i += 32) s += xr[i];
    float m = pbw_warp_sum(s) / (float)D;
    float s2 = 0.0f;
    for (int64_t i = lane; i < D; i += 32) {
        float d = xr[i] - m;
        s2 = fmaf(d, d, s2);
    }
    float rs = 1.0f / sqrtf(pbw_warp_sum(s2) / (float)D + eps);
    for (int64_t i = lane; i < D; i += 32) {
        float v = (xr[i] - m) * rs;
        v = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
        if (yr) yr[i] = v;
        if (yh) hr[i] = pbw_to_half<H>(v);
    }
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

// Four values of a row as a float4: fp32, or the half type H (an 8-byte load).
template <typename H> __device__ __forceinline__ float4 ln_load4(const float *x, int64_t i) {
    return *reinterpret_cast<const float4 *>(x + i);
}
template <typename H> __device__ __forceinline__ float4 ln_load4(const H *x, int64_t i) {
    float f[4];
    pbw_unpack_half<H, 4>(*reinterpret_cast<const uint2 *>(x + i), f);
    return make_float4(f[0], f[1], f[2], f[3]);
}

// The same for rows of V*128 floats (CLIP: 512 = 4*128, 768 = 6*128), 16-byte aligned: each
// lane keeps its V float4 of the row in registers (the row is read once, every load in flight
// at once) and writes float4 and four half values a store. X: float, or H (a residual stream
// kept in the half type: pbw_cuda_layer_norm_forward_hx).
template <int V, typename H, typename X>
__global__ static void layer_norm_forward_vec_kernel(const X *x, const float *w,
                                                     const float *b, float *y, H *yh,
                                                     float *mean, float *rstd, int64_t R,
                                                     float eps) {
    pbw_pdl_wait();
    const int64_t D = 128 * V;
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    float4 xv[V];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
        xv[j] = ln_load4<H>(x + r * D, 4 * (int64_t)(lane + 32 * j));
        s += xv[j].x + xv[j].y + xv[j].z + xv[j].w;
    }
    const float m = pbw_warp_sum(s) / (float)D;
    float s2 = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
        const float d0 = xv[j].x - m, d1 = xv[j].y - m, d2 = xv[j].z - m, d3 = xv[j].w - m;
        s2 = fmaf(d0, d0, s2);
        s2 = fmaf(d1, d1, s2);
        s2 = fmaf(d2, d2, s2);
        s2 = fmaf(d3, d3, s2);
    }
    const float rs = 1.0f / sqrtf(pbw_warp_sum(s2) / (float)D + eps);
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int k = lane + 32 * j;
        const float4 wv = w ? ((const float4 *)w)[k] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
        const float4 bv = b ? ((const float4 *)b)[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 v = make_float4((xv[j].x - m) * rs * wv.x + bv.x,
                                     (xv[j].y - m) * rs * wv.y + bv.y,
                                     (xv[j].z - m) * rs * wv.z + bv.z,
                                     (xv[j].w - m) * rs * wv.w + bv.w);
        if (y) ((float4 *)(y + r * D))[k] = v;
        if (yh) *reinterpret_cast<uint2 *>(yh + r * D + 4 * k) = pbw_pack_half4<H>(v);
    }
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

static bool aligned(const void *p, uintptr_t n) { return ((uintptr_t)p & (n - 1)) == 0; }

template <typename H, typename X>
static bool layer_norm_forward_vec(const X *x, const float *w, const float *b, float *y, H *yh,
                                   float *mean, float *rstd, int64_t R, int64_t D, float eps) {
    if (D % 128 || !aligned(x, 16 * sizeof(X) / 4) || !aligned(w, 16) || !aligned(b, 16) ||
        !aligned(y, 16) || !aligned(yh, 8))
        return false;
    dim3 gr(row_blocks(R)), bl(32 * ROWS_PER_BLOCK);
    switch (D / 128) {
    case 4: // CLIP text: 512
        pbw_launch(layer_norm_forward_vec_kernel<4, H, X>, gr, bl, 0, x, w, b, y, yh, mean, rstd, R,
                   eps);
        return true;
    case 6: // CLIP ViT-B: 768
        pbw_launch(layer_norm_forward_vec_kernel<6, H, X>, gr, bl, 0, x, w, b, y, yh, mean, rstd, R,
                   eps);
        return true;
    case 8: // ViT-L: 1024
        pbw_launch(layer_norm_forward_vec_kernel<8, H, X>, gr, bl, 0, x, w, b, y, yh, mean, rstd, R,
                   eps);
        return true;
    default: return false;
    }
}

extern "C" void pbw_cuda_layer_norm_forward_half(const float *x, const float *w, const float *b,
                                                 float *y, void *yh, float *mean, float *rstd,
                                                 int64_t R, int64_t D, float eps) {
    if (R <= 0 || D <= 0) return;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) { // H: yh's type (unused without yh)
        using H = decltype(t);
        if (!layer_norm_forward_vec(x, w, b, y, (H *)yh, mean, rstd, R, D, eps))
            pbw_launch(layer_norm_forward_kernel<H>, row_blocks(R), 32 * ROWS_PER_BLOCK, 0, x, w, b,
                       y, (H *)yh, mean, rstd, R, D, eps);
    });
    PBW_CUDA_LAUNCHED("layer_norm_forward");
}

extern "C" int pbw_cuda_layer_norm_forward_hx(const void *xh, const float *w, const float *b,
                                              void *yh, float *mean, float *rstd, int64_t R,
                                              int64_t D, float eps) {
    if (R <= 0 || D <= 0) return 0;
    bool ok = false;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        ok = layer_norm_forward_vec((const H *)xh, w, b, (float *)nullptr, (H *)yh, mean, rstd, R,
                                    D, eps);
    });
    if (!ok) return -1;
    PBW_CUDA_LAUNCHED("layer_norm_forward");
    return 0;
}

extern "C" void pbw_cuda_layer_norm_forward(const float *x, const float *w, const float *b,
                                            float *y, float *mean, float *rstd, int64_t R,
                                            int64_t D, float eps) {
    pbw_cuda_layer_norm_forward_half(x, w, b, y, nullptr, mean, rstd, R, D, eps);
}

__global__ static void layer_norm_backward_kernel(const float *x, const float *w,
                                                  const float *mean, const float *rstd,
                                                  const float *gy, float *gx, int64_t R,
                                                  int64_t D) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float *xr = x + r * D, *gr = gy + r * D;
    float m = mean[r], rs = rstd[r], a = 0.0f, c = 0.0f; // sums of g*w and of g*w*xhat
    for (int64_t i = lane; i < D; i += 32) {
        float gw_ = gr[i] * (w ? w[i] : 1.0f);
        a += gw_;
        c = fmaf(gw_, (xr[i] - m) * rs, c);
    }
    float af = pbw_warp_sum(a) / (float)D, cf = pbw_warp_sum(c) / (float)D;
    for (int64_t i = lane; i < D; i += 32) {
        float xh = (xr[i] - m) * rs;
        float gw_ = gr[i] * (w ? w[i] : 1.0f);
        gx[r * D + i] += rs * (gw_ - af - xh * cf);
    }
}

// The same for rows of V*128 floats (CLIP: 768 = 6*128), 16-byte aligned: each lane keeps its
// V float4 of x, gy and w in registers, so a row is read once, with every load of the row in
// flight at once (the loop above keeps one or two: at CLIP's 1,600 rows a step that left it
// latency-bound at ~64 us a launch). gx's old values are loaded with them, before the row's
// sums, so that the row's second round trip to memory is its stores alone. gxh, when not NULL,
// gets gx's sums in bf16 too. G: gy's type, float or bf16 (written so by the product after the
// layer norm: pbw_tensor.grad_half).
template <int V, typename G>
__global__ static void layer_norm_backward_vec_kernel(const float *x, const float *w,
                                                      const float *mean, const float *rstd,
                                                      const G *gy, float *gx,
                                                      __nv_bfloat16 *gxh, int64_t R) {
    pbw_pdl_wait();
    const int64_t D = 128 * V;
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float4 *xr = (const float4 *)(x + r * D);
    const G *gr = gy + r * D;
    const float4 *wr = (const float4 *)w;
    float4 *go = (float4 *)(gx + r * D);
    float4 xh[V], gw_[V], ov[V];
    const float m = mean[r], rs = rstd[r];
    float a = 0.0f, c = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
        float4 xv = xr[lane + 32 * j], gv = pbw_load_four(gr, lane + 32 * j);
        ov[j] = go[lane + 32 * j];
        float4 wv = w ? wr[lane + 32 * j] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
        xh[j] = make_float4((xv.x - m) * rs, (xv.y - m) * rs, (xv.z - m) * rs, (xv.w - m) * rs);
        gw_[j] = make_float4(gv.x * wv.x, gv.y * wv.y, gv.z * wv.z, gv.w * wv.w);
        a += gw_[j].x + gw_[j].y + gw_[j].z + gw_[j].w;
        c = fmaf(gw_[j].x, xh[j].x, c);
        c = fmaf(gw_[j].y, xh[j].y, c);
        c = fmaf(gw_[j].z, xh[j].z, c);
        c = fmaf(gw_[j].w, xh[j].w, c);
    }
    const float af = pbw_warp_sum(a) / (float)D, cf = pbw_warp_sum(c) / (float)D;
#pragma unroll
    for (int j = 0; j < V; j++) {
        float4 o = ov[j];
        o.x += rs * (gw_[j].x - af - xh[j].x * cf);
        o.y += rs * (gw_[j].y - af - xh[j].y * cf);
        o.z += rs * (gw_[j].z - af - xh[j].z * cf);
        o.w += rs * (gw_[j].w - af - xh[j].w * cf);
        go[lane + 32 * j] = o;
        if (gxh)
            reinterpret_cast<uint2 *>(gxh + r * D)[lane + 32 * j] =
                pbw_pack_half4<__nv_bfloat16>(o);
    }
}

// Whether the row-vector backward takes rows of D values.
static bool layer_norm_backward_vec_ok(int64_t D) { return D > 0 && D % 128 == 0 && D <= 1024; }

// The row-vector backward (gx added to; gxh, when not NULL, its bf16 copy) from gy in floats,
// or in bf16 where gy_half; false, nothing launched, where it does not take the geometry.
static bool layer_norm_backward_vec(const float *x, const float *w, const float *mean,
                                    const float *rstd, const void *gy, bool gy_half, float *gx,
                                    __nv_bfloat16 *gxh, int64_t R, int64_t D) {
    if (!gx || !layer_norm_backward_vec_ok(D) || !aligned(x, 16) ||
        !aligned(gy, gy_half ? 8 : 16) || !aligned(gx, 16) || (w && !aligned(w, 16)) ||
        (gxh && !aligned(gxh, 8)))
        return false;
    dim3 gr(row_blocks(R)), bl(32 * ROWS_PER_BLOCK);
    switch ((int)(D / 128)) {
#define PBW_LN_BWD_CASE(v)                                                                         \
    case v:                                                                                        \
        if (gy_half)                                                                               \
            pbw_launch(layer_norm_backward_vec_kernel<v, __nv_bfloat16>, gr, bl, 0, x, w, mean,    \
                       rstd, (const __nv_bfloat16 *)gy, gx, gxh, R);                               \
        else                                                                                       \
            pbw_launch(layer_norm_backward_vec_kernel<v, float>, gr, bl, 0, x, w, mean, rstd,      \
                       (const float *)gy, gx, gxh, R);                                             \
        break;
        PBW_LN_BWD_CASE(1)
        PBW_LN_BWD_CASE(2)
        PBW_LN_BWD_CASE(3)
        PBW_LN_BWD_CASE(4)
        PBW_LN_BWD_CASE(5)
        PBW_LN_BWD_CASE(6)
        PBW_LN_BWD_CASE(7)
        PBW_LN_BWD_CASE(8)
#undef PBW_LN_BWD_CASE
    }
    PBW_CUDA_LAUNCHED("layer_norm_backward");
    return true;
}

extern "C" void pbw_cuda_layer_norm_backward(const float *x, const float *w, const float *mean,
                                             const float *rstd, const float *gy, float *gx,
                                             float *gw, float *gb, int64_t R, int64_t D) {
    if (R <= 0 || D <= 0) return;
    if (gx && !layer_norm_backward_vec(x, w, mean, rstd, gy, false, gx, nullptr, R, D)) {
        pbw_launch(layer_norm_backward_kernel, row_blocks(R), 32 * ROWS_PER_BLOCK, 0, x, w, mean,
                   rstd, gy, gx, R, D);
        PBW_CUDA_LAUNCHED("layer_norm_backward");
    }
    column_sums(gy, x, mean, rstd, gw, gb, R, D, "layer_norm_backward (weights)");
}

static long g_ln_copy_calls = 0;
extern "C" long pbw_cuda_layer_norm_backward_copy_calls(void) { return g_ln_copy_calls; }

extern "C" int pbw_cuda_layer_norm_backward_copy(const float *x, const float *w,
                                                 const float *mean, const float *rstd,
                                                 const float *gy, float *gx, void *gxh,
                                                 float *gw, float *gb, int64_t R, int64_t D) {
    if (R <= 0 || D <= 0 || !gxh ||
        !layer_norm_backward_vec(x, w, mean, rstd, gy, false, gx, (__nv_bfloat16 *)gxh, R, D))
        return -1;
    g_ln_copy_calls++;
    column_sums(gy, x, mean, rstd, gw, gb, R, D, "layer_norm_backward (weights)");
    return 0;
}

static long g_ln_gyh_calls = 0;
extern "C" long pbw_cuda_layer_norm_backward_gyh_calls(void) { return g_ln_gyh_calls; }

extern "C" int pbw_cuda_layer_norm_backward_gyh_ok(int64_t D) {
    return layer_norm_backward_vec_ok(D) && pbw_cuda_precision() == PBW_PREC_BF16;
}

extern "C" int pbw_cuda_layer_norm_backward_gyh(const float *x, const float *w, const float *mean,
                                                const float *rstd, const void *gyh, float *gx,
                                                void *gxh, int64_t R, int64_t D) {
    if (R <= 0 || !pbw_cuda_layer_norm_backward_gyh_ok(D) ||
        !layer_norm_backward_vec(x, w, mean, rstd, gyh, true, gx, (__nv_bfloat16 *)gxh, R, D))
        return -1;
    g_ln_gyh_calls++;
    if (gxh) g_ln_copy_calls++;
    return 0;
}

// ---------------- batch norm (given statistics) ----------------

__global__ static void batch_norm_rstd_kernel(const float *var, float *rstd, int64_t C,
                                              float eps) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(c, C) rstd[c] = 1.0f / sqrtf(var[c] + eps);
}

extern "C" void pbw_cuda_batch_norm_rstd(const float *var, float *rstd, int64_t C, float eps) {
    if (C <= 0) return;
    pbw_launch(batch_norm_rstd_kernel, pbw_grid(C), 256, 0, var, rstd, C, eps);
    PBW_CUDA_LAUNCHED("batch_norm_rstd");
}

__global__ static void batch_norm_forward_kernel(const float *x, const float *mean,
                                                 const float *rstd, const float *w,
                                                 const float *b, float *y, int64_t N, int64_t C,
                                                 int64_t S) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, N * C * S) {
        int64_t c = (i / S) % C;
        float sc = rstd[c] * (w ? w[c] : 1.0f);
        float sh = (b ? b[c] : 0.0f) - mean[c] * sc;
        y[i] = x[i] * sc + sh;
    }
}

extern "C" void pbw_cuda_batch_norm_forward(const float *x, const float *mean, const float *rstd,
                                            const float *w, const float *b, float *y, int64_t N,
                                            int64_t C, int64_t S) {
    if (N * C * S <= 0) return;
    pbw_launch(batch_norm_forward_kernel, pbw_grid(N * C * S), 256, 0, x, mean, rstd, w, b, y, N, C,
               S);
    PBW_CUDA_LAUNCHED("batch_norm_forward");
}

__global__ static void batch_norm_backward_x_kernel(const float *rstd, const float *w,
                                                    const float *gy, float *gx, int64_t N,
                                                    int64_t C, int64_t S) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, N * C * S) {
        int64_t c = (i / S) % C;
        gx[i] += gy[i] * (rstd[c] * (w ? w[c] : 1.0f));
    }
}

// One block per channel: sums over n and the S positions, then a fixed-order tree.
__global__ static void batch_norm_backward_w_kernel(const float *x, const float *mean,
                                                    const float *rstd, const float *gy,
                                                    float *gw, float *gb, int64_t N, int64_t C,
                                                    int64_t S) {
    pbw_pdl_wait();
    __shared__ float sw[256], sb[256];
    int64_t c = blockIdx.x;
    float m = mean[c], rs = rstd[c], aw = 0.0f, ab = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        const float *xp = x + (n * C + c) * S, *gp = gy + (n * C + c) * S;
        for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
            aw = fmaf(gp[i], (xp[i] - m) * rs, aw);
            ab += gp[i];
        }
    }
    sw[threadIdx.x] = aw;
    sb[threadIdx.x] = ab;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) {
            sw[threadIdx.x] += sw[threadIdx.x + h];
            sb[threadIdx.x] += sb[threadIdx.x + h];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (gw) gw[c] += sw[0];
        if (gb) gb[c] += sb[0];
    }
}

extern "C" void pbw_cuda_batch_norm_backward(const float *x, const float *mean,
                                             const float *rstd, const float *w, const float *gy,
                                             float *gx, float *gw, float *gb, int64_t N,
                                             int64_t C, int64_t S) {
    if (N * C * S <= 0) return;
    if (gx) {
        pbw_launch(batch_norm_backward_x_kernel, pbw_grid(N * C * S), 256, 0, rstd, w, gy, gx, N, C,
                   S);
        PBW_CUDA_LAUNCHED("batch_norm_backward");
    }
    if (gw || gb) {
        pbw_launch(batch_norm_backward_w_kernel, (unsigned)C, 256, 0, x, mean, rstd, gy, gw, gb, N,
                   C, S);
        PBW_CUDA_LAUNCHED("batch_norm_backward (weights)");
    }
}

// ---------------- softmax ----------------

__global__ static void softmax_forward_kernel(const float *x, float *y, int64_t R, int64_t D) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float mx = -INFINITY;
    for (int64_t i = lane; i < D; i += 32) mx = fmaxf(mx, xr[i]);
    mx = pbw_warp_max(mx);
    if (mx == -INFINITY) { // every entry masked: zeros, not NaN (as the CPU)
        for (int64_t i = lane; i < D; i += 32) yr[i] = 0.0f;
        return;
    }
    float s = 0.0f;
    for (int64_t i = lane; i < D; i += 32) {
        float e = expf(xr[i] - mx);
        yr[i] = e;
        s += e;
    }
    float inv = 1.0f / pbw_warp_sum(s);
    for (int64_t i = lane; i < D; i += 32) yr[i] *= inv; // each lane rereads what it wrote
}

extern "C" void pbw_cuda_softmax_forward(const float *x, float *y, int64_t R, int64_t D) {
    if (R <= 0 || D <= 0) return;
    pbw_launch(softmax_forward_kernel, row_blocks(R), 32 * ROWS_PER_BLOCK, 0, x, y, R, D);
    PBW_CUDA_LAUNCHED("softmax_forward");
}

__global__ static void softmax_backward_kernel(const float *y, const float *gy, float *gx,
                                               int64_t R, int64_t D) {
    pbw_pdl_wait();
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= R) return;
    const float *yr = y + r * D, *gr = gy + r * D;
    float dot = 0.0f;
    for (int64_t i = lane; i < D; i += 32) dot = fmaf(yr[i], gr[i], dot);
    dot = pbw_warp_sum(dot);
    for (int64_t i = lane; i < D; i += 32) gx[r * D + i] += yr[i] * (gr[i] - dot);
}

extern "C" void pbw_cuda_softmax_backward(const float *y, const float *gy, float *gx, int64_t R,
                                          int64_t D) {
    if (R <= 0 || D <= 0 || !gx) return;
    pbw_launch(softmax_backward_kernel, row_blocks(R), 32 * ROWS_PER_BLOCK, 0, y, gy, gx, R, D);
    PBW_CUDA_LAUNCHED("softmax_backward");
}

// ---------------- a ViT's class token and position embedding ----------------

__device__ __forceinline__ float vadd(float a, float b) { return a + b; }
__device__ __forceinline__ float4 vadd(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// V: float4 where rows are whole 16-byte words (W % 4 == 0, aligned), else float; W in V's.
template <typename V>
__global__ static void class_position_fwd_kernel(const V *x, const V *cls, const V *pos, V *y,
                                                 int64_t B, int64_t T, int64_t W) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, B * T * W) {
        const int64_t w = i % W, bt = i / W, b = bt / T, t = bt % T;
        y[i] = vadd(t ? x[(b * (T - 1) + t - 1) * W + w] : cls[w], pos[t * W + w]);
    }
}

template <typename V>
__global__ static void class_position_bwd_kernel(const V *gy, V *gx, int64_t B, int64_t T,
                                                 int64_t W, int add) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, B * (T - 1) * W) {
        const V g = gy[i + (i / W / (T - 1) + 1) * W]; // row t = r % (T-1) + 1 of r / (T-1)
        gx[i] = add ? vadd(gx[i], g) : g;
    }
}

extern "C" void pbw_cuda_class_position_forward(const float *x, const float *cls,
                                                const float *pos, float *y, int64_t B, int64_t T,
                                                int64_t W) {
    if (B * T * W == 0) return;
    if (W % 4 == 0 && aligned(x, 16) && aligned(cls, 16) && aligned(pos, 16) && aligned(y, 16))
        pbw_launch(class_position_fwd_kernel<float4>, pbw_grid(B * T * W / 4), 256, 0,
                   (const float4 *)x, (const float4 *)cls, (const float4 *)pos, (float4 *)y, B,
                   T, W / 4);
    else
        pbw_launch(class_position_fwd_kernel<float>, pbw_grid(B * T * W), 256, 0, x, cls, pos, y,
                   B, T, W);
    PBW_CUDA_LAUNCHED("class_position_forward");
}

extern "C" void pbw_cuda_class_position_backward(const float *gy, float *gx, int64_t B,
                                                 int64_t T, int64_t W, int add) {
    if (B * (T - 1) * W == 0 || !gx) return;
    if (W % 4 == 0 && aligned(gy, 16) && aligned(gx, 16))
        pbw_launch(class_position_bwd_kernel<float4>, pbw_grid(B * (T - 1) * W / 4), 256, 0,
                   (const float4 *)gy, (float4 *)gx, B, T, W / 4, add);
    else
        pbw_launch(class_position_bwd_kernel<float>, pbw_grid(B * (T - 1) * W), 256, 0, gy, gx, B,
                   T, W, add);
    PBW_CUDA_LAUNCHED("class_position_backward");
}

// ---------------- cosine of rows ----------------

// A block of COS_THREADS a row, the sums in double as the CPU's (only their order differs):
// with E = 512 a thread's four loads go out together, where a warp a row waited for 16 in turn
// (CUPTI on an H200, an Adam step's 32 rows: 4.7 us a launch that way).
static const int COS_THREADS = 128;

__global__ static void cosine_forward_kernel(const float *a, const float *b, int64_t b_stride,
                                             float *y, float *norms, int64_t E) {
    pbw_pdl_wait();
    __shared__ double part[3][COS_THREADS / 32];
    const int64_t r = blockIdx.x;
    const float *ar = a + r * E, *br = b + r * b_stride;
    double d = 0, sa = 0, sb = 0;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < E; i += COS_THREADS) {
        const double u = ar[i], v = br[i];
        d = fma(u, v, d);
        sa = fma(u, u, sa);
        sb = fma(v, v, sb);
    }
    for (int o = 16; o > 0; o >>= 1) {
        d += __shfl_xor_sync(0xffffffffu, d, o);
        sa += __shfl_xor_sync(0xffffffffu, sa, o);
        sb += __shfl_xor_sync(0xffffffffu, sb, o);
    }
    const int w = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) part[0][w] = d, part[1][w] = sa, part[2][w] = sb;
    __syncthreads();
    if (threadIdx.x) return;
    d = sa = sb = 0;
    for (int k = 0; k < COS_THREADS / 32; k++) d += part[0][k], sa += part[1][k], sb += part[2][k];
    const double na = 1.0 / sqrt(sa + 1e-30), nb = 1.0 / sqrt(sb + 1e-30);
    y[r] = (float)(d * na * nb);
    norms[2 * r] = (float)na;
    norms[2 * r + 1] = (float)nb;
}

extern "C" void pbw_cuda_cosine_forward(const float *a, const float *b, int64_t b_stride,
                                        float *y, float *norms, int64_t N, int64_t E) {
    if (N <= 0) return;
    pbw_launch(cosine_forward_kernel, (unsigned)N, COS_THREADS, 0, a, b, b_stride, y, norms, E);
    PBW_CUDA_LAUNCHED("cosine_forward");
}

// The first `elems` blocks take a thread an element (in turn) of a's gradient, and of b's where
// b has a row for each; where b is one row for all, the blocks after them take its columns, a
// thread a column adding the rows in order (the same sums every run, as the CPU's).
__global__ static void cosine_backward_kernel(const float *a, const float *b, int64_t b_stride,
                                              const float *y, const float *norms,
                                              const float *gy, float *ga, float *gb, int64_t N,
                                              int64_t E, unsigned elems) {
    pbw_pdl_wait();
    if (blockIdx.x < elems) {
        for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < N * E;
             k += (int64_t)elems * blockDim.x) {
            const int64_t r = k / E, i = k % E;
            const float na = norms[2 * r], nb = norms[2 * r + 1], g = gy[r], gab = g * na * nb;
            const float ai = a[k], bi = b[r * b_stride + i];
            if (ga) ga[k] += gab * bi - g * y[r] * na * na * ai;
            if (gb && b_stride) gb[k] += gab * ai - g * y[r] * nb * nb * bi;
        }
        return;
    }
    const int64_t i = (int64_t)(blockIdx.x - elems) * blockDim.x + threadIdx.x;
    if (i >= E) return;
    float acc = gb[i];
    const float bi = b[i];
#pragma unroll 8
    for (int64_t r = 0; r < N; r++) {
        const float na = norms[2 * r], nb = norms[2 * r + 1], g = gy[r];
        acc += g * na * nb * a[r * E + i] - g * y[r] * nb * nb * bi;
    }
    gb[i] = acc;
}

extern "C" void pbw_cuda_cosine_backward(const float *a, const float *b, int64_t b_stride,
                                         const float *y, const float *norms, const float *gy,
                                         float *ga, float *gb, int64_t N, int64_t E) {
    if (N <= 0 || E <= 0 || (!ga && !gb)) return;
    const unsigned elems = ga || (gb && b_stride) ? pbw_grid(N * E) : 0;
    const unsigned cols = gb && !b_stride ? pbw_grid(E) : 0;
    pbw_launch(cosine_backward_kernel, elems + cols, 256, 0, a, b, b_stride, y, norms, gy, ga,
               gb, N, E, elems);
    PBW_CUDA_LAUNCHED("cosine_backward");
}

// ---------------- embedding ----------------

__global__ static void embedding_forward_kernel(const float *table, const int32_t *ids, float *y,
                                                int64_t n, int64_t D) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n * D) y[i] = table[(int64_t)ids[i / D] * D + i % D];
}

extern "C" void pbw_cuda_embedding_forward(const float *table, const int32_t *ids, float *y,
                                           int64_t n, int64_t D) {
    if (n * D <= 0) return;
    pbw_launch(embedding_forward_kernel, pbw_grid(n * D), 256, 0, table, ids, y, n, D);
    PBW_CUDA_LAUNCHED("embedding_forward");
}

// The CPU adds the rows serially because ids may repeat; here repeated ids meet in atomicAdd,
// whose order (so the last bit of such rows) may differ between runs.
__global__ static void embedding_backward_kernel(const float *gy, const int32_t *ids, float *gt,
                                                 int64_t n, int64_t D) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n * D) atomicAdd(gt + (int64_t)ids[i / D] * D + i % D, gy[i]);
}

extern "C" void pbw_cuda_embedding_backward(const float *gy, const int32_t *ids, float *gt,
                                            int64_t n, int64_t D) {
    if (n * D <= 0 || !gt) return;
    pbw_launch(embedding_backward_kernel, pbw_grid(n * D), 256, 0, gy, ids, gt, n, D);
    PBW_CUDA_LAUNCHED("embedding_backward");
}

// ---------- LPIPS's weighted layer term ----------
// A block takes POS positions of one image with SL threads a position, each summing every
// SL-th channel; the slices' sums meet in shared memory, added in slice order. Wide maps (the
// first AlexNet layer's 63 x 63 at 256 px) take 32 positions of 8 slices (a warp reads 32
// consecutive positions of one channel: 128 bytes); small ones 8 positions of 32 slices, so
// that the 15 x 15 maps of 256 to 384 channels fill 29 blocks instead of 8, each thread summing
// 8 to 12 channels instead of 32 to 48 (an Adam step's five backward launches took 42 us
// each). The forward's block sums go to scratch (N, blocks) and one block per image adds them
// in order: no atomics, the same bits every run.

static const int LP_THREADS = 256, LP_WIDE = 1024; // positions from which maps count as wide

// The sum over the SL slices of position threadIdx.x's values v (every thread gets it).
template <int POS, int SL>
__device__ __forceinline__ float slices_sum(float v, float (*sh)[POS]) {
    sh[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int i = 0; i < SL; i++) t += sh[i][threadIdx.x];
    __syncthreads(); // sh is free again
    return t;
}

// Position s of image n (threadIdx.y's channels): den = |f| + eps, the weighted squared
// distance r over all channels, and with dot the sum of 2 w (f / den - ref) f.
template <int POS, int SL>
__device__ __forceinline__ void lpips_site(const float *fp, const float *rp, const float *w,
                                           int64_t C, int64_t S, float eps, bool valid,
                                           float (*sh)[POS], float *nrm, float *den, float *r,
                                           float *dot) {
    float ss = 0.0f;
    if (valid)
        for (int64_t c = threadIdx.y; c < C; c += SL) ss += fp[c * S] * fp[c * S];
    *nrm = sqrtf(slices_sum<POS, SL>(ss, sh));
    *den = *nrm + eps;
    float rp_ = 0.0f, a = 0.0f;
    if (valid)
        for (int64_t c = threadIdx.y; c < C; c += SL) {
            const float d = fp[c * S] / *den - rp[c * S];
            rp_ += w[c] * (d * d);
            if (dot) a += 2.0f * w[c] * d * fp[c * S];
        }
    *r = slices_sum<POS, SL>(rp_, sh);
    if (dot) *dot = slices_sum<POS, SL>(a, sh);
}

template <int POS, int SL>
__global__ static void __launch_bounds__(LP_THREADS)
    lpips_layer_partial_kernel(const float *f, const float *ref, const float *w, const float *k,
                               float *part, int64_t Nr, int64_t C, int64_t S, float eps) {
    pbw_pdl_wait();
    static_assert(POS * SL == LP_THREADS, "a block of LP_THREADS");
    __shared__ float sh[SL][POS];
    const int64_t n = blockIdx.y, s = (int64_t)blockIdx.x * POS + threadIdx.x;
    const bool valid = s < S;
    const int64_t sv = valid ? s : 0;
    float nrm, den, r;
    lpips_site<POS, SL>(f + n * C * S + sv, ref + (n % Nr) * C * S + sv, w, C, S, eps, valid,
                        sh, &nrm, &den, &r, nullptr);
    // the block's positions in order
    if (threadIdx.y == 0) sh[0][threadIdx.x] = valid ? k[s] * r : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        float v = 0.0f;
        for (int i = 0; i < POS; i++) v += sh[0][i];
        part[n * gridDim.x + blockIdx.x] = v;
    }
}

__global__ static void __launch_bounds__(256)
    lpips_layer_total_kernel(const float *part, float *out, int nb) {
    pbw_pdl_wait();
    __shared__ float sh[256];
    float v = 0.0f;
    for (int i = threadIdx.x; i < nb; i += 256) v += part[(int64_t)blockIdx.x * nb + i];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int h = 128; h > 0; h /= 2) {
        if ((int)threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

template <int POS, int SL>
__global__ static void __launch_bounds__(LP_THREADS)
    lpips_layer_backward_kernel(const float *f, const float *ref, const float *w, const float *k,
                                const float *gout, float *gf, int64_t Nr, int64_t C, int64_t S,
                                float eps) {
    pbw_pdl_wait();
    __shared__ float sh[SL][POS];
    const int64_t n = blockIdx.y, s = (int64_t)blockIdx.x * POS + threadIdx.x;
    const bool valid = s < S;
    const int64_t sv = valid ? s : 0;
    const float *fp = f + n * C * S + sv, *rp = ref + (n % Nr) * C * S + sv;
    float nrm, den, r, dot;
    lpips_site<POS, SL>(fp, rp, w, C, S, eps, valid, sh, &nrm, &den, &r, &dot);
    if (!valid) return;
    // d/df_j: a_j / den - f_j dot / (|f| den^2), a_c = 2 w_c (f_c / den - ref_c)
    const float g = gout[n] * k[s];
    const float t = nrm > 0.0f ? dot / (nrm * den * den) : 0.0f;
    float *gp = gf + n * C * S + s;
    for (int64_t c = threadIdx.y; c < C; c += SL) {
        const float a = 2.0f * w[c] * (fp[c * S] / den - rp[c * S]);
        gp[c * S] += g * (a / den - fp[c * S] * t);
    }
}

// Positions a block takes for a map of S positions (see above).
static int lp_positions(int64_t S) { return S >= LP_WIDE ? 32 : 8; }

extern "C" size_t pbw_cuda_lpips_layer_scratch_floats(int64_t N, int64_t S) {
    const int pos = lp_positions(S);
    return (size_t)N * (size_t)((S + pos - 1) / pos);
}

extern "C" void pbw_cuda_lpips_layer_forward(const float *f, const float *ref, const float *w,
                                             const float *k, float *out, int64_t N, int64_t Nr,
                                             int64_t C, int64_t S, float eps, float *scratch) {
    if (N <= 0) return;
    const int pos = lp_positions(S);
    const int64_t nb = (S + pos - 1) / pos;
    if (N > 65535 || nb > INT_MAX) {
        pbw_cuda_fail("lpips_layer: %lld images of %lld positions", (long long)N, (long long)S);
        return;
    }
    if (nb > 0) {
        const dim3 grid((unsigned)nb, (unsigned)N), block(pos, LP_THREADS / pos);
        if (pos == 32)
            pbw_launch(lpips_layer_partial_kernel<32, 8>, grid, block, 0, f, ref, w, k, scratch, Nr,
                       C, S, eps);
        else
            pbw_launch(lpips_layer_partial_kernel<8, 32>, grid, block, 0, f, ref, w, k, scratch, Nr,
                       C, S, eps);
        PBW_CUDA_LAUNCHED("lpips_layer forward");
    }
    pbw_launch(lpips_layer_total_kernel, (unsigned)N, 256, 0, scratch, out, (int)nb);
    PBW_CUDA_LAUNCHED("lpips_layer forward (sums)");
}

extern "C" void pbw_cuda_lpips_layer_backward(const float *f, const float *ref, const float *w,
                                              const float *k, const float *gout, float *gf,
                                              int64_t N, int64_t Nr, int64_t C, int64_t S,
                                              float eps) {
    const int pos = lp_positions(S);
    const int64_t nb = (S + pos - 1) / pos;
    if (N <= 0 || nb <= 0) return;
    if (N > 65535 || nb > INT_MAX) {
        pbw_cuda_fail("lpips_layer: %lld images of %lld positions", (long long)N, (long long)S);
        return;
    }
    const dim3 grid((unsigned)nb, (unsigned)N), block(pos, LP_THREADS / pos);
    if (pos == 32)
        pbw_launch(lpips_layer_backward_kernel<32, 8>, grid, block, 0, f, ref, w, k, gout, gf, Nr,
                   C, S, eps);
    else
        pbw_launch(lpips_layer_backward_kernel<8, 32>, grid, block, 0, f, ref, w, k, gout, gf, Nr,
                   C, S, eps);
    PBW_CUDA_LAUNCHED("lpips_layer backward");
}
