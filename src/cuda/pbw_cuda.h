/* pbw_cuda.h: the CUDA backend's runtime (compiled when nvcc is found; PBW_HAVE_CUDA).
 *
 * One device per process (chosen by pbw_cuda_init), one stream, one cuBLAS and one cuDNN handle.
 * Every op kernel is enqueued on that stream and returns at once; host code sees results
 * through pbw_cuda_d2h (which waits) or pbw_cuda_sync. Kernel launch failures are sticky:
 * pbw_cuda_error() returns the first one (NULL when none), and the core turns it into a context
 * error at its next synchronization point (pbw_backward, reading a tensor back).
 *
 * A build with CUDA still runs on a machine without a GPU: pbw_cuda_device_count then returns
 * 0 and pbw uses the CPU. The kernels of the ops live in src/cuda/pbw_cuda_<family>.cu and are
 * declared in pbw_cuda_kernels.h with the same arguments as their CPU twins (src/cpu).
 */
#ifndef PBW_CUDA_H
#define PBW_CUDA_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver or no GPU (never an error). */
int pbw_cuda_device_count(void);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf; -1 if dev is not usable. */
int pbw_cuda_describe(int dev, char *buf, size_t len, pbw_err *err);
/* Runs a small kernel on dev and checks its result against the CPU: proves the toolkit,
 * driver and card work together. */
int pbw_cuda_selftest(int dev, pbw_err *err);

/* Selects dev for this process and creates the stream and library handles (idempotent for the
 * same dev; another dev after the first is an error). */
int pbw_cuda_init(int dev, pbw_err *err);
/* The device chosen by pbw_cuda_init, or -1. */
int pbw_cuda_current(void);

/* Math of matrix products and convolutions (the elementwise kernels are always fp32):
 *   PBW_PREC_FP32  plain fp32 (no TF32): the reference for parity checks
 *   PBW_PREC_TF32  fp32 storage, TF32 tensor cores
 *   PBW_PREC_BF16  fp32 storage, bf16 tensor-core products with fp32 accumulation
 *   PBW_PREC_FP16  fp16 tensor-core products with fp32 accumulation */
typedef enum pbw_precision { PBW_PREC_FP32 = 0, PBW_PREC_TF32, PBW_PREC_BF16, PBW_PREC_FP16 } pbw_precision;
void pbw_cuda_set_precision(pbw_precision p);
pbw_precision pbw_cuda_precision(void);
/* "fp32" | "tf32" | "bf16" | "fp16" -> 0 and *p, else -1. */
int pbw_precision_parse(const char *s, pbw_precision *p);
const char *pbw_precision_name(pbw_precision p);

/* Device memory. pbw_cuda_malloc returns NULL when out of memory (never aborts);
 * pbw_cuda_free waits for the stream first (a queued kernel may still use the memory). */
void *pbw_cuda_malloc(size_t bytes);
void pbw_cuda_free(void *p);
/* Host to device and device to device copies and memsets are enqueued on the stream (the
 * host buffer of an upload may be reused at once: uploads are staged). Device to host waits
 * for the stream. Each returns 0, or -1 with the sticky error set. */
int pbw_cuda_h2d(void *dst, const void *src, size_t bytes);
int pbw_cuda_d2h(void *dst, const void *src, size_t bytes);
/* n read-backs with one wait: each src[i] (bytes[i]) into dst[i], queued together into pinned
 * staging on the current stream, then copied out once the lanes are done. 0, or -1 with the
 * error set (refused while recording a graph). */
int pbw_cuda_d2h_gather(int n, void *const *dst, const void *const *src, const size_t *bytes);
int pbw_cuda_d2d(void *dst, const void *src, size_t bytes);
int pbw_cuda_memset0(void *dst, size_t bytes);
/* A recorded graph's memset nodes (this one's, a library's) become zero-fill kernel nodes as
 * the graph is captured: a memset node holds up the kernel after it (PBW_CUDA_COPY_KERNELS,
 * docs/cuda.md). How many were replaced so far: */
long pbw_cuda_graph_memsets_replaced(void);
/* Waits for the stream; -1 (err set) when a kernel failed since the last check. */
int pbw_cuda_sync(pbw_err *err);

/* Pinned host memory that kernels may read and write (mapped, through the unified address
 * space); NULL without a device or memory. Freeing waits for the lanes. */
void *pbw_cuda_host_alloc(size_t bytes);
void pbw_cuda_host_free(void *p);
/* A point in lane 0's stream: _record marks the work queued so far (not while recording a
 * graph), _wait blocks until that work is done (-1 when it or an earlier kernel failed: the
 * sticky error is set). */
typedef struct pbw_cuda_mark pbw_cuda_mark;
pbw_cuda_mark *pbw_cuda_mark_new(void);
int pbw_cuda_mark_record(pbw_cuda_mark *m);
int pbw_cuda_mark_wait(pbw_cuda_mark *m);
void pbw_cuda_mark_free(pbw_cuda_mark *m);
/* Starts (on != 0) or stops the CUDA profiler's collection (cudaProfilerStart/Stop): what a
 * profiler run with collection off at start (Nsight Compute's --profile-from-start off) sees. */
void pbw_cuda_profiler(int on);
/* First failure since pbw_cuda_clear_error, or NULL. */
const char *pbw_cuda_error(void);
void pbw_cuda_clear_error(void);
/* Records a failure (first one wins); used by the kernels' launch checks. */
void pbw_cuda_fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* Bytes of device memory in use by pbw_cuda_malloc now and at most (since the last reset). */
size_t pbw_cuda_mem_used(void);
size_t pbw_cuda_mem_peak(void);
void pbw_cuda_mem_reset_peak(void);

/* Products on half-precision operands: 1 when the precision is bf16 or fp16 and
 * PBW_CUDA_HALF_GEMM is not 0. Then layer norm and QuickGELU also write a half copy of their
 * output (pbw_tensor.half), and pbw_linear multiplies it with a cached half copy of its weight
 * when the weight is a constant moved by pbw_arena_to_device (registered here with
 * pbw_cuda_weights_block; its half copies are dropped when the block is freed). In bf16 the
 * input gradient of such a product reads the same copy too (pbw_cuda_linear_backward_half;
 * PBW_CUDA_HALF_BACKWARD=0 keeps it on fp32 operands). */
int pbw_cuda_half_gemm(void);
/* A product's input gradient written in bf16 alone (pbw_tensor.grad_half) where the op before
 * the product reads it so: the layer norms' backward, and QuickGELU's under half activations
 * (which then also takes the hardware's approximate exponential and division): 1 unless
 * PBW_CUDA_HALF_GX is "0" (read at each call). */
int pbw_cuda_half_gx(void);
/* Half activations (pbw_ctx_set_half_activations) take effect: pbw_cuda_half_gemm() and
 * PBW_CUDA_HALF_ACTS is not 0. */
int pbw_cuda_half_acts(void);
/* pbw_cuda_half_acts() with gradients too: 1 unless PBW_CUDA_HALF_ACTS_GRAD is 0 (read at each
 * call). */
int pbw_cuda_half_acts_grad(void);
/* The generator's fused ops run fused (pbw_sg_modconv scales its input while staging it,
 * pbw_sg_modconv_act and pbw_sg_blur_act activate their output as they write it): 1 unless
 * PBW_CUDA_MODCONV is 0 (then each runs the ops it stands for). */
int pbw_cuda_modconv(void);
/* With gradients too, pbw_sg_modconv and pbw_sg_modconv_act run as one op whose forward
 * modulates while staging and activates while copying back, and whose backward stages the
 * activation's gradient and copies back the modulation's (pbw_cuda_sg_modconv_backward), and
 * pbw_sg_blur_act as one op whose backward forms the activation's gradient as the blur loads it
 * (pbw_cuda_sg_blur_act_backward): pbw_cuda_modconv() and PBW_CUDA_MODCONV_GRAD is not 0. */
int pbw_cuda_modconv_grad(void);
/* The generator's convolutions keep their outputs as NHWC halves (pbw_tensor.half_nhwc), with
 * the activation applied there when they have one: the blur after an upsampling convolution
 * reads and writes NHWC halves, the next convolution stages them directly, and ToRGB
 * (pbw_sg_pointwise) reads them: pbw_cuda_modconv() and PBW_CUDA_NHWC is not 0. */
int pbw_cuda_nhwc(void);
/* A modulated convolution's backward leaves its style's sums over pixels as partials for the
 * op that made the style to finish with others' in one kernel (pbw_linear_multi's styles made
 * ahead: pbw_tensor.grad_parts): 1 unless PBW_CUDA_STYLE_PARTS is 0. */
int pbw_cuda_style_parts_on(void);
void pbw_cuda_weights_block(const void *p, size_t bytes);
int pbw_cuda_is_weight(const void *p, size_t bytes);

/* Lanes: work that does not depend on other work queued beside it (LPIPS's term beside CLIP's)
 * runs on a second stream, so that the GPU fills with both where either alone leaves it idle.
 * Every launch, copy and library call goes to the current lane's stream; each lane has its own
 * library workspaces and scratch (pbw_cuda_lane() indexes them), so two lanes never share
 * temporaries. pbw_cuda_lane_wait(w, o) makes lane w wait for the work queued on lane o so far
 * (made on first use; 1), or does nothing (0: PBW_CUDA_LANES=0, no device) or fails (-1);
 * pbw_cuda_lane_set makes a lane current without waiting. A read-back or pbw_cuda_sync waits
 * for every lane. A recorded pass begins and ends on lane 0, with every other lane's work
 * waited for by lane 0 (the graph then holds both branches). Core code reaches this through
 * pbw_lane_fork/_main/_join (pbw_tensor.h), which also order the backward. */
#define PBW_CUDA_LANES 2
int pbw_cuda_lanes_on(void);
int pbw_cuda_lane(void);
void pbw_cuda_lane_set(int lane);
int pbw_cuda_lane_wait(int waiter, int on);
long pbw_cuda_lane_waits(void); /* waits queued so far in this process (tests) */
/* A grow-only device buffer a lane, reused in stream order (a workspace, staging). */
typedef struct pbw_lane_buffer {
    void *p[PBW_CUDA_LANES];
    size_t size[PBW_CUDA_LANES];
} pbw_lane_buffer;
/* At least `bytes` of the current lane's buffer in b, counted as pbw's memory
 * (pbw_cuda_mem_used). Growing frees the old one once the kernels queued before have run and
 * takes `min` bytes, or bytes + bytes / 4 beyond it (bytes alone when that does not fit). NULL
 * where it cannot grow: while a graph is recorded, or out of GPU memory. `what` names the buffer
 * for a caller with no other path: the recording is then refused ("<what> grew"), or the
 * failure recorded; NULL for a caller that has one (nothing recorded). */
void *pbw_cuda_lane_buffer(pbw_lane_buffer *b, size_t bytes, size_t min, const char *what);

/* CUDA graphs of a fixed-shape pass (the Adam step): between pbw_cuda_capture_begin and
 * pbw_cuda_capture_end every launch, copy and memset on the stream is recorded instead of run.
 * Uploads are staged in pinned memory the graph owns: those from a host range registered with
 * pbw_cuda_graph_input after pbw_cuda_capture_begin (before the upload) are read again from
 * that range at each launch, every other upload replays the bytes it had. Read-backs, waits,
 * frees and library workspaces that grow cannot be recorded: capture_end then returns NULL
 * (why says what broke it), clears the error, and the caller runs the pass directly. A graph
 * reuses the device addresses it recorded: the memory of the pass must stay allocated (and
 * untouched by other work) while it is used. Recording may begin while work queued before
 * still runs (it waits for nothing); the graph's launches come after that work. */
typedef struct pbw_cuda_graph pbw_cuda_graph;
void pbw_cuda_graph_input(const void *host, size_t bytes);
int pbw_cuda_capture_begin(void);
pbw_cuda_graph *pbw_cuda_capture_end(char *why, size_t why_len);
int pbw_cuda_capturing(void);
/* Whether the last recording was refused because device memory or a library workspace had to
 * grow: the pass run directly afterwards leaves them grown, so recording a repeat of it may
 * succeed. */
int pbw_cuda_capture_grew(void);
int pbw_cuda_graph_launch(pbw_cuda_graph *g);
void pbw_cuda_graph_free(pbw_cuda_graph *g);
/* Launches g without waiting for anything, each registered host range k (in the order of
 * pbw_cuda_graph_input, k < n) read this time from pinned[k] instead (pinned memory of the
 * same layout, pbw_cuda_host_alloc, left as it is until this launch's copies ran; NULL: the
 * staging as the last launch left it). Launches queued before keep their own sources, so
 * several may be in flight, each with its own inputs. 0, or -1 with the error set. */
int pbw_cuda_graph_launch_from(pbw_cuda_graph *g, int n, const void *const *pinned);
/* Whether every registered input's copy was found in g's recording (launch_from needs it). */
int pbw_cuda_graph_inputs_found(const pbw_cuda_graph *g);
/* Graph launches so far in this process (tests check that a pass was replayed). */
long pbw_cuda_graph_launches(void);

/* Symmetric eigendecomposition in double on the GPU (pbw_cuda_linalg.cu: cuSOLVER's syevd,
 * libcusolver opened at run time): C (n,n) row-major, symmetric (its upper triangle is read),
 * in; eigenvector j into column j of B (B[i*n + j]; B may be C), eigenvalues ascending in w, as
 * LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', ...) gives them. Returns 0, or -1 (nothing usable:
 * no GPU or no libcusolver, or the solver failed; B may be half-written) and the caller uses
 * LAPACK. Waits for the stream. */
int pbw_cuda_eigh_available(void);
int pbw_cuda_eigh(int n, const double *C, double *B, double *w);

/* PBW_PROFILE=gpu (pbw_cuda_trace.cu): device time per op from CUPTI's activity records, with no
 * synchronization at op boundaries. pbw_cuda_trace_on loads libcupti and starts tracing (1), or
 * says why it cannot (0); _op books the launches that follow to `op` (NULL: to none); _clear
 * forgets what was traced; _report prints busy time against wall time, time per op and the top
 * kernels, each multiplied by `scale`, then clears. */
int pbw_cuda_trace_on(void);
void pbw_cuda_trace_op(const char *op, int backward);
void pbw_cuda_trace_clear(void);
void pbw_cuda_trace_report(FILE *f, double scale);

#ifdef __cplusplus
}
#endif
#endif
