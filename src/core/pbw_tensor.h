/* pbw_tensor.h: float32 tensors, the compute context and the gradient tape.
 *
 * A tensor is a shape (up to 5 dims, row-major, NCHW for images) and a float32 buffer. Weights
 * may be stored as fp16/bf16 (dtype != PBW_F32, bytes in `raw`); CPU ops take float32 and
 * pbw_tensor_to_f32 converts. Tensors made by ops live in the context's activation arena and die
 * at pbw_ctx_reset; weights live in an arena owned by their model.
 *
 * Gradients: a tensor asks for its gradient with requires_grad = 1 (the latent being painted,
 * say). Every op whose inputs ask for a gradient records a node on the context's tape; ops on
 * tensors that need no gradient record nothing, so painting computes no weight gradients.
 *
 *     pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
 *     pbw_tensor *w = pbw_tensor_new(ctx, 2, (int64_t[]){1, 512});
 *     w->requires_grad = 1;  ...fill w->data...
 *     pbw_tensor *loss = model_forward(ctx, w);          // any chain of pbw_* ops
 *     if (pbw_ctx_failed(ctx)) puts(pbw_ctx_error(ctx));  // errors are sticky, see below
 *     pbw_backward(ctx, loss);                            // w->grad now holds d loss / d w
 *     pbw_ctx_reset(ctx);                                 // frees activations, grads, tape
 *
 * Errors: an op that gets a bad argument (shape mismatch, NULL input, out of memory) records a
 * message in the context and returns NULL; every op given a NULL input returns NULL at once.
 * A caller checks pbw_ctx_failed once after a forward pass instead of after every op.
 */
#ifndef PBW_TENSOR_H
#define PBW_TENSOR_H

#include <stdint.h>
#include <stdio.h>

#include "pbw_arena.h"
#include "pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_MAX_DIMS 5

typedef enum pbw_device { PBW_DEV_CPU = 0, PBW_DEV_CUDA = 1 } pbw_device;

#define PBW_GRAD_ADDS 8 /* pbw_tensor.grad_adds */

typedef struct pbw_tensor {
    int ndim;
    int64_t shape[PBW_MAX_DIMS];
    int64_t numel;
    float *data;          /* numel floats (NULL when dtype != PBW_F32) */
    float *grad;          /* numel floats once backward reached it, else NULL. After a backward
                           * only the gradients of leaves (tensors made outside the recorded ops)
                           * are theirs alone: an op's output may share its buffer with an input
                           * (pbw_grad_pass) or hold it in grad_half */
    void *raw;            /* fp16/bf16 storage when dtype != PBW_F32 */
    pbw_dtype dtype;
    pbw_device device;
    int requires_grad;
    struct pbw_tensor *arena_next; /* next tensor of the same weight arena (pbw_tensor_new_in) */
    void *half; /* CUDA, bf16/fp16 precision: a half copy of data in that type, written by the op
                 * that made the tensor when its output feeds products (layer norm, QuickGELU;
                 * under half activations also linear and attention), read by the ops that take
                 * half operands; NULL otherwise */
    int half_only; /* half holds the values and data (allocated) is not written yet: an output
                    * made under pbw_ctx_set_half_activations. pbw_tensor_sync_f32 writes data;
                    * ops that do not read halves call it through pbw_op_begin. */
    int half_nhwc; /* half is laid out (N,H,W,C) (a 4-D tensor; half_only too): read only by the
                    * ops that take NHWC halves (pbw_op_begin_nhwc: StyleGAN2's upsampling
                    * convolution, blur and the convolution after them, pbw_cuda_nhwc); for any
                    * other op pbw_tensor_sync_f32 writes data and drops the half copy */
    int grad_unset; /* grad is allocated but holds no values yet, not even zeros: its first
                     * producer writes it (pbw_grad_out); pbw_grad zeroes it first */
    int grad_half_wanted; /* CUDA: the op that made this tensor reads its gradient as a bf16
                           * copy (a product's input gradient, pbw_cuda_linear_backward_half):
                           * a first producer that writes the gradient whole may write that
                           * copy alone (grad_half) */
    void *grad_half; /* that copy, holding the gradient's values while grad is not written;
                      * pbw_grad_sync writes grad from it (pbw_grad, pbw_grad_out, pbw_backward
                      * and pbw_grad_host do before anything else reads or adds to grad; a
                      * backward leaves it so where only the product read it: code reading
                      * such a tensor's grad directly calls pbw_grad_sync first) */
    int grad_half_copy_wanted; /* CUDA: the op that made this tensor reads its gradient as a
                                * bf16 copy, and the gradient may feed others in fp32 too (a
                                * residual): the op that completes the gradient (grad_last) may
                                * write that copy beside it (grad_half_copy) */
    void *grad_half_copy; /* that copy, the rounding of grad's values as they are: any op that
                           * writes or adds to grad drops it (pbw_grad, pbw_grad_out) */
    struct pbw_node *grad_last; /* the last backward to reach this tensor's gradient (its first
                                 * consumer in the forward; set by pbw_backward) */
    int grad_parts_ok; /* CUDA: the op that made this tensor finishes partial sums of its
                        * gradient that its consumers leave (a style's sums over pixels,
                        * StyleGAN2's modulated convolutions), several in one kernel */
    struct pbw_grad_parts *grad_parts; /* those left so far: pbw_grad_sync adds them into grad
                                        * (and pbw_grad_sync_many, several tensors' at once) */
    int grad_addend_ok; /* CUDA: the op that made this tensor reads its gradient plus one more
                         * buffer of the same size as it reads the gradient (node
                         * reads_grad_addend), so a gradient handed over whole (a side lane's
                         * handle, pbw_lane_fork) may be left there instead of added */
    const float *grad_addend; /* that buffer, not yet added into grad: pbw_grad_sync adds it */
    int grad_leaf; /* set by pbw_backward: no recorded op made this tensor (an input, the
                    * latent), so its gradient is read only through pbw_grad_sync's callers */
    int n_grad_adds; /* CUDA: buffers a leaf's gradient is still to add, in order (pbw_grad_defer:
                      * a side lane's handles of it); pbw_grad_sync adds them in one kernel, and
                      * pbw_backward does before it returns */
    const float *grad_adds[PBW_GRAD_ADDS];
} pbw_tensor;

typedef struct pbw_ctx pbw_ctx;
typedef struct pbw_node pbw_node;

/* Backward of one recorded op: reads node->out->grad, adds into the inputs' grads. */
typedef void (*pbw_backward_fn)(pbw_ctx *ctx, pbw_node *node);

#define PBW_NODE_MAX_IN 4
struct pbw_node {
    pbw_backward_fn backward;
    const char *op;                     /* op name, for error messages and profiling */
    pbw_tensor *out;
    pbw_tensor *in[PBW_NODE_MAX_IN];
    int nin;
    void *saved;                        /* op-specific parameters, in the activation arena */
    unsigned writes; /* bit i: the backward writes all of in[i]'s gradient through
                      * pbw_grad_out (set by the op after pbw_tape_push) */
    int reads_grad_half; /* the backward reads out->grad_half when set (else pbw_backward
                          * writes out->grad from it first) */
    int reads_grad_addend; /* the backward reads out->grad plus out->grad_addend when set (else
                            * pbw_backward adds it in first); it leaves the addend recorded, so
                            * that a later read of out's gradient (pbw_grad_host) adds it */
    int lane_mark;       /* a lane's fork, switch or join (pbw_lane_fork; out NULL), not an op */
    pbw_node *prev;
};

/* --- devices --- */
/* "cpu", "cuda", "cuda:N" or "auto" -> device and index. auto picks a CUDA device that passes
 * its self-test, else the CPU; *why (may be NULL) gets a line saying what was chosen and why. */
int pbw_device_parse(const char *s, pbw_device *dev, int *index, char *why, size_t why_len,
                     pbw_err *err);
/* Makes `index` the process's CUDA device (see pbw_cuda_init); -1 with err on a build or
 * machine without it. No-op for the CPU. */
int pbw_device_init(pbw_device dev, int index, pbw_err *err);
const char *pbw_device_name(pbw_device dev);

/* --- context --- */
/* A CUDA context uses the device chosen by pbw_device_init (device 0 if none was). Its tensors'
 * data and grad live in device memory; headers, tape nodes and saved op parameters in host
 * memory. */
pbw_ctx *pbw_ctx_new(pbw_device dev, pbw_err *err);
void pbw_ctx_free(pbw_ctx *ctx);
/* Frees every activation, gradient and tape node made since the last reset; clears the error.
 * Gradients of tensors outside the arena (leaves) are reset to NULL. */
void pbw_ctx_reset(pbw_ctx *ctx);
/* Whether pbw_ctx_reset keeps the device memory of the activations (CUDA; 1 on the CPU): work
 * still queued on the GPU may then read and write it after the reset (ops queued later reuse it
 * in stream order); else the reset frees it (waiting for that work) and takes one chunk. */
int pbw_ctx_reset_keeps_device_memory(const pbw_ctx *ctx);
/* Ops record on the tape only while enabled (default on). Returns the previous value. */
int pbw_ctx_set_grad(pbw_ctx *ctx, int enabled);
/* Half-precision activations (default off), like an autocast region: on a CUDA context whose
 * precision multiplies in bf16/fp16, the ops that feed products (layer norm, linear, QuickGELU,
 * attention) keep an output that records no gradient in that half type alone (half_only), and
 * the ops that read halves take it as it is; any other op, and reading the tensor back, first
 * writes its fp32 values (pbw_tensor_sync_f32). Models turn it on where every product runs on
 * half operands anyway (CLIP's transformer blocks): it halves the bytes the elementwise ops
 * move. No effect on the CPU, in fp32/tf32, or on ops that record gradients. Returns the
 * previous value. */
int pbw_ctx_set_half_activations(pbw_ctx *ctx, int on);
int pbw_ctx_half_activations(const pbw_ctx *ctx);
/* Writes t's fp32 values from its half copy when t is half_only; 0, or -1 with the context
 * failed. */
int pbw_tensor_sync_f32(pbw_ctx *ctx, pbw_tensor *t);
/* Allocates t->half (numel half values, device memory) and sets t->half_only = only; NULL, the
 * context failed, when out of memory. For the op that writes t. */
void *pbw_tensor_half_alloc(pbw_ctx *ctx, pbw_tensor *t, int only);
/* Forgets the half copy pbw_tensor_half_alloc made when no kernel wrote it (the fp32 path
 * serves instead): half NULL, half_only and half_nhwc 0. */
void pbw_tensor_half_drop(pbw_tensor *t);
pbw_device pbw_ctx_device(const pbw_ctx *ctx);
int pbw_ctx_failed(const pbw_ctx *ctx);
const char *pbw_ctx_error(const pbw_ctx *ctx);
/* Records the first error (printf-style) and returns NULL, for `return pbw_ctx_fail(...)`. */
void *pbw_ctx_fail(pbw_ctx *ctx, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Copies the context's error into err and returns -1 if the context failed, else 0. */
int pbw_ctx_check(const pbw_ctx *ctx, pbw_err *err);
/* Bytes of activation memory in use now and at most since creation. */
size_t pbw_ctx_mem_used(const pbw_ctx *ctx);
size_t pbw_ctx_mem_peak(const pbw_ctx *ctx);
pbw_arena *pbw_ctx_arena(pbw_ctx *ctx);

/* Scratch memory for an op's temporaries: a buffer of at least `bytes` in slot 0..7, valid until
 * the next request for the same slot. Grows, never shrinks; no malloc once warm. Device memory
 * on a CUDA context. */
#define PBW_SCRATCH_SLOTS 8
void *pbw_ctx_scratch(pbw_ctx *ctx, int slot, size_t bytes);
/* The same for an op that has another way when memory is short: NULL without failing the
 * context (the slot is then empty). */
void *pbw_ctx_scratch_opt(pbw_ctx *ctx, int slot, size_t bytes);

/* Activation memory of the context's device (device memory for a CUDA context) that lives
 * until pbw_ctx_reset: for op temporaries a backward reads. Fails the context when out of
 * memory. pbw_ctx_upload copies host bytes into such memory (the host buffer may be reused at
 * once). pbw_arena_alloc(pbw_ctx_arena(ctx)) stays host memory on every device. */
void *pbw_ctx_alloc(pbw_ctx *ctx, size_t bytes);
/* The same for an op that has another way when memory is short: NULL without failing. */
void *pbw_ctx_alloc_opt(pbw_ctx *ctx, size_t bytes);
void *pbw_ctx_upload(pbw_ctx *ctx, const void *src, size_t bytes);

/* Freeing a finished part of a forward pass that records no gradients (a CMA generation's
 * candidates, say): every activation made since the mark is freed except the tensors in
 * keep[], which move down to the mark (keep[i] is replaced by a new header; any other tensor
 * made since the mark is invalid afterwards). Does nothing, and returns 0, when a tape node
 * was recorded since the mark: gradients need the activations. -1 with the context failed on
 * error. Models call it between their blocks:
 *
 *     pbw_ctx_mark m = pbw_ctx_mark_get(ctx);
 *     x = block(ctx, x);
 *     pbw_ctx_release(ctx, m, 1, &x);
 */
typedef struct pbw_ctx_mark {
    pbw_arena_mark host, dev;
    const pbw_node *tape;
} pbw_ctx_mark;
pbw_ctx_mark pbw_ctx_mark_get(pbw_ctx *ctx);
int pbw_ctx_release(pbw_ctx *ctx, pbw_ctx_mark m, int n, pbw_tensor **keep);

/* --- lanes: independent work side by side on a GPU ---
 * On a CUDA context, pbw_lane_fork starts a side lane: the ops that follow run on a second
 * stream, after the work queued so far, until pbw_lane_main switches back (without waiting);
 * pbw_lane_join makes the main lane wait for the side lane. Work between main and join runs
 * beside the side lane's. A fork before the join (from the main lane) lets the side lane go on
 * after the main lane's work so far, with more inputs of its own. The tensors t[0..n-1] that
 * the side lane reads are replaced by handles of their own (views), whose gradients the
 * backward adds into the originals after the side lane's backward: the two lanes never write
 * one gradient buffer (without gradients, n may be 0). The backward runs each
 * lane's ops on its lane, in the reverse order. The side lane must not read what the main lane
 * writes after the fork, nor the main lane what the side lane writes before the join; neither
 * may free memory the other uses (pbw_ctx_release, a reset) before the join. On the CPU, or with
 * PBW_CUDA_LANES=0, nothing changes: fork returns 0 and the ops run in order. Returns 1 (forked),
 * 0, or -1 with the context failed.
 *
 *     pbw_tensor *side = img;
 *     pbw_lane_fork(ctx, 1, &side);
 *     pbw_tensor *a = term_a(ctx, side);   // lane 1
 *     pbw_lane_main(ctx);
 *     pbw_tensor *b = term_b(ctx, img);    // lane 0, beside it
 *     pbw_lane_join(ctx);
 *     pbw_tensor *loss = pbw_add(ctx, a, b);
 */
#define PBW_LANES 2
int pbw_lane_fork(pbw_ctx *ctx, int n, pbw_tensor **t);
void pbw_lane_main(pbw_ctx *ctx);
void pbw_lane_join(pbw_ctx *ctx);

/* --- tensors --- */
/* New float32 tensor in the activation arena, uninitialized. */
pbw_tensor *pbw_tensor_new(pbw_ctx *ctx, int ndim, const int64_t *shape);
pbw_tensor *pbw_tensor_zeros(pbw_ctx *ctx, int ndim, const int64_t *shape);
/* New float32 tensor in a caller's arena (for weights and other long-lived tensors). */
pbw_tensor *pbw_tensor_new_in(pbw_arena *a, int ndim, const int64_t *shape, pbw_err *err);
/* New float32 tensor in the context holding a copy of n = numel host floats (any device). */
pbw_tensor *pbw_tensor_from_host(pbw_ctx *ctx, const float *src, int ndim, const int64_t *shape);
/* Copies a tensor's data to / from numel host floats, on any device (reading waits for the
 * device). Return 0, or -1 with the context failed. */
int pbw_tensor_read(pbw_ctx *ctx, const pbw_tensor *t, float *dst);
int pbw_tensor_write(pbw_ctx *ctx, pbw_tensor *t, const float *src);
/* Host copy of a tensor's data in the context's host arena (t->data itself on the CPU);
 * NULL with the context failed on error. */
const float *pbw_tensor_host(pbw_ctx *ctx, const pbw_tensor *t);
/* Same for a gradient (t->grad must be set). */
const float *pbw_grad_host(pbw_ctx *ctx, const pbw_tensor *t);
/* Moves every float32 tensor made in weight arena `a` (pbw_tensor_new_in) to the context's
 * device, as PyTorch's module.to(device): their data pointers then point to device memory
 * owned by the arena (freed with it). Host code must read such tensors through
 * pbw_tensor_host. No-op on the CPU or for tensors already there. */
int pbw_arena_to_device(pbw_arena *a, pbw_ctx *ctx, pbw_err *err);
/* Wraps caller-owned data (not copied, not freed) in a tensor header in the activation arena.
 * On a CUDA context `data` must be device memory. */
pbw_tensor *pbw_tensor_wrap(pbw_ctx *ctx, float *data, int ndim, const int64_t *shape);
/* Copy with no gradient link. */
pbw_tensor *pbw_tensor_copy(pbw_ctx *ctx, const pbw_tensor *x);
/* float32 version of an fp16/bf16 weight (the same tensor if already float32). */
pbw_tensor *pbw_tensor_to_f32(pbw_ctx *ctx, pbw_tensor *x);
/* Fills `shape` and numel; returns -1 for a bad rank or a negative or overflowing size. */
int pbw_shape_set(pbw_tensor *t, int ndim, const int64_t *shape);
int pbw_shape_equal(const pbw_tensor *a, const pbw_tensor *b);
/* "(2,3,224,224)" into buf; returns buf. */
const char *pbw_shape_str(const pbw_tensor *t, char *buf, size_t len);

/* --- tape --- */
/* True when an op on these inputs must record a node (grad enabled and an input needs grad). */
int pbw_needs_grad(pbw_ctx *ctx, pbw_tensor *const *in, int nin);
/* Records a node whose output is `out`; marks out->requires_grad. saved_bytes of zeroed space
 * are reserved in node->saved. Returns NULL (and fails the context) when out of memory. */
pbw_node *pbw_tape_push(pbw_ctx *ctx, const char *op, pbw_backward_fn fn, pbw_tensor *out,
                        pbw_tensor *const *in, int nin, size_t saved_bytes);
/* The gradient buffer of t, allocated zeroed on first use; NULL when t needs no gradient (the
 * backward of an op skips that input then). */
float *pbw_grad(pbw_ctx *ctx, pbw_tensor *t);
/* For a backward that computes every element of t's gradient contribution at once (a product,
 * an elementwise map) and declared so in node->writes: the buffer, and *beta 0 when it holds
 * no values yet (write the contribution; the buffer is then set) or 1 (add it). pbw_backward
 * leaves a gradient unset, skipping its zeroing, when its first producer is such a backward
 * (PBW_GRAD_UNSET=0: never). */
float *pbw_grad_out(pbw_ctx *ctx, pbw_tensor *t, float *beta);
/* For a backward whose gradient for t is the output's own gradient, unchanged (a reshape, an
 * add's operand of the output's shape) and that declared so in node->writes: when t's gradient
 * is still unset, t takes the output's gradient buffer as its own (every consumer of the output
 * has run its backward, so nothing reads that buffer as the output's again) and 1 is returned:
 * nothing to copy. 0: the caller writes or adds the gradient itself (PBW_GRAD_ALIAS=0: never
 * shared). At most one input of a node may take the buffer. */
int pbw_grad_pass(pbw_ctx *ctx, pbw_tensor *t, const pbw_tensor *out);
/* Writes t's gradient buffer from its half copy (pbw_tensor.grad_half) and drops the copy, then
 * adds the buffer left for it (grad_addend) and the partial sums its consumers left
 * (pbw_tensor.grad_parts); no-op without any. 0, or -1 with ctx failed. */
int pbw_grad_sync(pbw_ctx *ctx, pbw_tensor *t);
/* For a backward whose gradient for t is the output's own gradient, whole (a reshape): when t's
 * gradient already holds values and the op that made t reads an addend (grad_addend_ok, CUDA),
 * out's gradient buffer is left as t's grad_addend, or where t is a leaf, appended to its
 * grad_adds, and 1 is returned; 0: the caller adds it (PBW_GRAD_ADDEND=0: never left). */
int pbw_grad_defer(pbw_ctx *ctx, pbw_tensor *t, const pbw_tensor *out);
/* Gradients left that way so far (tests). */
long pbw_grad_defers(void);
/* CUDA: partial sums a consumer's backward left for t's gradient (t->grad_parts_ok; p->dst is
 * t->grad), which pbw_grad_sync adds into it. 0, or -1 with ctx failed. */
struct pbw_cuda_style_parts;
int pbw_grad_parts_add(pbw_ctx *ctx, pbw_tensor *t, const struct pbw_cuda_style_parts *p);
/* pbw_grad_sync of n tensors, the partial sums (grad_parts) of all of them added by one
 * kernel. 0, or -1 with ctx failed. */
int pbw_grad_sync_many(pbw_ctx *ctx, int n, pbw_tensor *const *t);
/* Zeroes t's gradient buffer: for a backward that got beta 0 from pbw_grad_out but will add
 * after all (no kernel of the geometry writes). 0, or -1 with ctx failed. */
int pbw_grad_zero(pbw_ctx *ctx, pbw_tensor *t);
/* Bytes of gradient the last pbw_backward allocated unset that way (tests, profiles). */
size_t pbw_ctx_grad_unset_bytes(const pbw_ctx *ctx);
/* Runs the tape backward from `loss`. A loss with one element gets gradient 1; otherwise
 * `seed` (numel floats) is the gradient of the output, or NULL for all ones. */
int pbw_backward(pbw_ctx *ctx, pbw_tensor *loss, const float *seed, pbw_err *err);

/* --- profiler: with PBW_PROFILE=1 in the environment, time is summed per op name (forward:
 * from the op's start to the next op's start or pbw_profile_mark, gradients or not; backward:
 * per node; on CUDA the device is synchronized at each boundary). PBW_PROFILE=gpu on CUDA: no
 * synchronization; each op's device time comes from CUPTI (pbw_cuda_trace_*) and the host
 * times are what launching cost. pbw_profile_report prints
 * the table (times multiplied by `scale`, e.g.
 * 1/runs) and clears it. Global state, meant for benchmarks. */
int pbw_profile_enabled(void);
void pbw_profile_mark(void);
/* Called by every op as it begins (pbw_op_begin): books the previous op's forward time. */
void pbw_profile_op(const char *op);
void pbw_profile_report(FILE *f, double scale);
/* Forgets what was timed so far (a warm-up's first-call costs, say). */
void pbw_profile_clear(void);

#ifdef __cplusplus
}
#endif
#endif
