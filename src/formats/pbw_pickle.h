/* pbw_pickle.h (internal to src/formats): a pickle reader that executes nothing.
 *
 * It runs the opcodes of pickle protocols 2 to 5 that PyTorch checkpoints use and builds plain
 * values: None, bool, int, float, str, bytes, tuple, list, dict (ordered), and three torch
 * values: a "global" marker for the allowed globals, a storage and a tensor. Any other global
 * is refused when the GLOBAL opcode names it, so no object of an unknown class is ever built;
 * the allowed globals are only recognised, never called. They are:
 *
 *   collections.OrderedDict                      -> a dict (also OrderedDict([[k, v], ...]))
 *   torch._utils._rebuild_tensor_v2, _rebuild_tensor
 *                                                -> a tensor (storage, offset, size, stride)
 *   torch._utils._rebuild_parameter, _rebuild_parameter_with_state
 *                                                -> the tensor it wraps
 *   torch._tensor._rebuild_from_type_v2          -> only with type torch.Tensor or
 *   torch.Tensor, torch.nn.parameter.Parameter      torch.nn.parameter.Parameter (state ignored)
 *   torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage
 *                                                -> storage types in persistent ids
 *   torch.Size                                   -> a tuple
 *   __torch__.* (TorchScript classes, e.g. in OpenAI's CLIP files), argparse.Namespace
 *   (the `args` of training checkpoints)         -> an object: NEWOBJ with no arguments makes
 *                                                   an empty attribute bag and BUILD fills it
 *                                                   from a dict; no code of the class is run
 *                                                   (TorchScript classes are not Python code,
 *                                                   Namespace has no custom state handling)
 *
 * BUILD on anything but such an object is accepted and its state ignored: a state dict's
 * `_metadata` is dropped that way. Persistent ids (BINPERSID) go to a callback that the torch reader uses
 * to create storages.
 *
 * Memory: every value belongs to the pk_vm and is freed by pk_vm_free, whatever happened, so
 * error paths need no cleanup. Caps (objects, stack, marks, memo) bound memory on hostile
 * input, and nothing recurses on the nesting of values.
 */
#ifndef PBW_PICKLE_H
#define PBW_PICKLE_H

#include "../core/pbw_common.h"

#define PK_MAX_DIMS 8

typedef enum pk_type {
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_BIGINT, /* an int that does not fit int64: raw little-endian two's complement bytes */
    PK_FLOAT,
    PK_STR,
    PK_BYTES,
    PK_TUPLE,
    PK_LIST,
    PK_DICT,
    PK_GLOBAL,
    PK_STORAGE,
    PK_TENSOR,
    PK_OBJECT, /* a TorchScript module: its attributes, kept like a dict's items */
} pk_type;

typedef enum pk_global {
    PKG_ORDERED_DICT,
    PKG_REBUILD_TENSOR_V2,
    PKG_REBUILD_TENSOR,
    PKG_REBUILD_PARAMETER,
    PKG_REBUILD_PARAMETER_WITH_STATE,
    PKG_REBUILD_FROM_TYPE_V2,
    PKG_TENSOR_TYPE,
    PKG_STORAGE_TYPE,
    PKG_TORCH_SIZE,
    PKG_ATTR_CLASS, /* a class whose instances we keep as attribute dicts */
} pk_global;

typedef struct pk_value pk_value;
struct pk_value {
    pk_type type;
    union {
        int64_t i; /* PK_BOOL, PK_INT */
        double f;  /* PK_FLOAT */
        struct {   /* PK_STR (own NUL-terminated copy), PK_BYTES, PK_BIGINT (into the input) */
            const char *p;
            size_t len;
        } s;
        struct { /* PK_TUPLE, PK_LIST; PK_DICT and PK_OBJECT keep key, value, key, value, ... */
            pk_value **v;
            size_t n, cap;
        } seq;
        struct {
            pk_global g;
            pbw_dtype dtype; /* PKG_STORAGE_TYPE */
        } glob;
        struct {
            pbw_dtype dtype;
            const char *key;             /* own copy */
            int64_t numel;               /* elements available in data (set when resolved) */
            const unsigned char *data;   /* set by the torch reader once the bytes are known */
            int resolved;
        } storage;
        struct {
            pk_value *storage; /* PK_STORAGE */
            int64_t offset;
            int ndim;
            int64_t shape[PK_MAX_DIMS], stride[PK_MAX_DIMS];
        } tensor;
    } u;
};

typedef struct pk_vm pk_vm;

/* Turns a persistent id into a value (*out), or fails with err set. */
typedef int (*pk_persistent_load_fn)(void *ctx, pk_vm *vm, pk_value *pid, pk_value **out,
                                     pbw_err *err);

struct pk_vm {
    pk_value **objs; /* every value allocated, for pk_vm_free */
    size_t nobjs, cap_objs;
    pk_value **stack;
    size_t nstack, cap_stack;
    size_t *marks;
    size_t nmarks, cap_marks;
    pk_value **memo;
    size_t cap_memo, nmemo;
    size_t ncopied; /* container items copied by calls, capped */
    pk_persistent_load_fn persistent_load;
    void *ctx;
    pbw_err *err;
};

void pk_vm_init(pk_vm *vm, pk_persistent_load_fn fn, void *ctx, pbw_err *err);
/* Runs one pickle from buf[0..len) up to its STOP. *consumed is the number of bytes used, so
 * that several pickles in a row can be read. *result stays owned by the vm. Values made by
 * earlier runs stay valid; the stack and memo start empty for each run. */
int pk_vm_run(pk_vm *vm, const unsigned char *buf, size_t len, size_t *consumed,
              pk_value **result);
/* A new value owned by the vm, zeroed, with `extra` bytes after it (for string copies). */
pk_value *pk_new(pk_vm *vm, pk_type t, size_t extra);
void pk_vm_free(pk_vm *vm);

/* "str", "tuple", ... for messages. */
const char *pk_type_name(pk_type t);
/* 1 if v is a str equal to s. */
int pk_is_str(const pk_value *v, const char *s);

#endif
