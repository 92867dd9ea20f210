/* pbw_ops_internal.h: helpers shared by the op front-ends (not part of the public API). */
#ifndef PBW_OPS_INTERNAL_H
#define PBW_OPS_INTERNAL_H

#include "pbw_ops.h"

/* Kernel dispatch: PBW_KERNEL(ctx, unary_forward, args...) calls pbw_cuda_unary_forward(args...)
 * on a CUDA context and pbw_cpu_unary_forward(args...) otherwise. The two take the same
 * arguments (device pointers on CUDA). pbw_on_cuda(ctx) for front-ends whose paths differ. */
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_elementwise.h"
#include "cuda/pbw_cuda_nn.h"
#define pbw_on_cuda(ctx) (pbw_ctx_device(ctx) == PBW_DEV_CUDA)
#define PBW_KERNEL(ctx, name, ...) \
    (pbw_on_cuda(ctx) ? pbw_cuda_##name(__VA_ARGS__) : pbw_cpu_##name(__VA_ARGS__))
#else
#define pbw_on_cuda(ctx) 0
#define PBW_KERNEL(ctx, name, ...) pbw_cpu_##name(__VA_ARGS__)
#endif

/* Fails the context unless every tensor is non-NULL, float32 and on the context's device.
 * Returns 0 when the op may run. NULL inputs mean an earlier op failed: no new message. */
int pbw_op_begin(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts);
/* The same checks for an op that reads half_only inputs as they are (pbw_op_begin first writes
 * their fp32 values); those held as NHWC halves (half_nhwc) are written back all the same. */
int pbw_op_begin_half(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts);
/* The same for an op that reads NHWC halves (half_nhwc) as they are; other half_only inputs are
 * written back. */
int pbw_op_begin_nhwc(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts);
/* 1 when an op with inputs in[] keeps its output in half precision alone: half activations on
 * (pbw_ctx_set_half_activations), a CUDA context multiplying on half operands, and no
 * gradient recorded. */
int pbw_half_out(pbw_ctx *ctx, pbw_tensor *const *in, int n);
/* 1 when an op whose backward does not read its output keeps that output in half precision
 * alone with gradients too: half activations on a CUDA context (CLIP's blocks: the layer norms,
 * QuickGELU and attention, whose outputs only products read, as halves; the products, whose
 * outputs attention and QuickGELU read as halves, forward and backward). A half_only tensor's
 * fp32 values are written for any op that reads them (pbw_op_begin), or by a backward that
 * needs them; pbw_linear, which reads the halves, writes them where its weight's gradient will
 * need them. PBW_CUDA_HALF_ACTS_GRAD=0 keeps the fp32 values with gradients. */
int pbw_half_out_grad(pbw_ctx *ctx);
/* Room for t's gradient held in bf16 alone (pbw_tensor.grad_half), where the backward asking
 * writes that gradient whole (beta 0, from pbw_grad_out) and the op that made t reads it so
 * (grad_half_wanted); NULL otherwise or when out of memory (the fp32 gradient serves then). */
void *pbw_grad_half_room(pbw_ctx *ctx, const pbw_tensor *t, float beta);

/* The tensor's shape right-aligned in 5 slots (leading ones). */
void pbw_shape5(const pbw_tensor *t, int64_t *s5);
/* Element strides of a tensor of shape t seen in a 5-D index space `shape5` in which t
 * broadcasts: 0 where t has size 1 (or no dim), the row-major stride otherwise. */
void pbw_strides5(const pbw_tensor *t, const int64_t *shape5, int64_t *st);
/* Dense row-major strides of a 5-D shape. */
void pbw_dense_strides5(const int64_t *shape5, int64_t *st);
/* Normalizes a possibly negative axis; -1 when out of range. */
int pbw_axis(int axis, int ndim);

/* For a backward whose gradient for t is n's output's gradient unchanged, t of the output's
 * element count seen through the 5-D index space `shape` (output strides sy, t's st): t's
 * gradient += it. The output's buffer itself when t's gradient is still unset and may_take
 * (pbw_grad_pass), a copy when unset otherwise, an add when it holds values. 1 when t took the
 * buffer. */
int pbw_grad_pass_to(pbw_ctx *ctx, pbw_tensor *t, pbw_node *n, const int64_t *shape,
                     const int64_t *sy, const int64_t *st, int may_take);

#endif
