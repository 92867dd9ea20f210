/* pbw_pickle.c: a pickle reader that builds values and executes nothing (see pbw_pickle.h).
 *
 * Opcodes follow CPython's Lib/pickle.py and pickletools docs; only the binary opcodes of
 * protocols 2-5 that checkpoints use are understood, any other opcode is an error. */
#include "pbw_pickle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Caps for hostile input. A 1.7 GB CLIP checkpoint pickle holds a few thousand values; these
 * are orders of magnitude above real files and keep the worst case to a few hundred MB. */
#define PK_MAX_OBJECTS (1u << 22)
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS 4096
#define PK_MAX_MEMO (1u << 22)
#define PK_MAX_GLOBAL_NAME 256
#define PK_MAX_COPIED ((size_t)1 << 24)

const char *pk_type_name(pk_type t) {
    static const char *names[] = {"None",  "bool",  "int",   "int",    "float",   "str",   "bytes",
                                  "tuple", "list",  "dict",  "global", "storage", "tensor",
                                  "object"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

int pk_is_str(const pk_value *v, const char *s) {
    return v && v->type == PK_STR && v->u.s.len == strlen(s) && memcmp(v->u.s.p, s, v->u.s.len) == 0;
}

void pk_vm_init(pk_vm *vm, pk_persistent_load_fn fn, void *ctx, pbw_err *err) {
    memset(vm, 0, sizeof *vm);
    vm->persistent_load = fn;
    vm->ctx = ctx;
    vm->err = err;
}

void pk_vm_free(pk_vm *vm) {
    for (size_t i = 0; i < vm->nobjs; i++) {
        pk_value *v = vm->objs[i];
        if (v->type == PK_TUPLE || v->type == PK_LIST || v->type == PK_DICT ||
            v->type == PK_OBJECT)
            free(v->u.seq.v);
        free(v);
    }
    free(vm->objs);
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
    memset(vm, 0, sizeof *vm);
}

/* Grows a pointer-sized array so that index `need - 1` fits, up to max elements. */
static int grow_array(void **arr, size_t *cap, size_t need, size_t elem, size_t max) {
    if (need <= *cap) return 0;
    if (need > max) return -1;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) ncap *= 2;
    if (ncap > max) ncap = max;
    void *p = realloc(*arr, ncap * elem);
    if (!p) return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

pk_value *pk_new(pk_vm *vm, pk_type t, size_t extra) {
    if (vm->nobjs >= PK_MAX_OBJECTS) {
        pbw_err_set(vm->err, "pickle: more than %u objects", PK_MAX_OBJECTS);
        return NULL;
    }
    if (grow_array((void **)&vm->objs, &vm->cap_objs, vm->nobjs + 1, sizeof *vm->objs,
                   PK_MAX_OBJECTS)) {
        pbw_err_set(vm->err, "out of memory");
        return NULL;
    }
    pk_value *v = calloc(1, sizeof *v + extra);
    if (!v) {
        pbw_err_set(vm->err, "out of memory");
        return NULL;
    }
    v->type = t;
    vm->objs[vm->nobjs++] = v;
    return v;
}

static int seq_push(pk_vm *vm, pk_value *seq, pk_value *item) {
    /* a list can hold at most what the object cap allows (each item is an object or a repeat
     * of one, and repeats cost an input byte each) */
    if (grow_array((void **)&seq->u.seq.v, &seq->u.seq.cap, seq->u.seq.n + 1, sizeof(pk_value *),
                   (size_t)PK_MAX_OBJECTS * 4))
        return pbw_err_set(vm->err, "pickle: container too large or out of memory");
    seq->u.seq.v[seq->u.seq.n++] = item;
    return 0;
}

/* ---- the machine ---- */

typedef struct {
    pk_vm *vm;
    const unsigned char *buf;
    size_t len, pos, op_pos;
} pk_run;

static int fail(pk_run *r, const char *what) {
    return pbw_err_set(r->vm->err, "pickle: %s at byte %zu", what, r->op_pos);
}

static int need(pk_run *r, size_t n) {
    if (n > r->len - r->pos) return fail(r, "truncated data");
    return 0;
}

static uint64_t read_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int push(pk_run *r, pk_value *v) {
    pk_vm *vm = r->vm;
    if (!v) return -1;
    if (grow_array((void **)&vm->stack, &vm->cap_stack, vm->nstack + 1, sizeof *vm->stack,
                   PK_MAX_STACK))
        return fail(r, "stack too deep");
    vm->stack[vm->nstack++] = v;
    return 0;
}

static size_t stack_floor(pk_vm *vm) { return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0; }

static pk_value *pop(pk_run *r) {
    pk_vm *vm = r->vm;
    if (vm->nstack <= stack_floor(vm)) {
        fail(r, "stack underflow");
        return NULL;
    }
    return vm->stack[--vm->nstack];
}

static pk_value *top(pk_run *r) {
    pk_vm *vm = r->vm;
    if (vm->nstack <= stack_floor(vm)) {
        fail(r, "stack underflow");
        return NULL;
    }
    return vm->stack[vm->nstack - 1];
}

/* Pops the items above the last mark and the mark: items are stack[*first .. nstack). The
 * caller must consume them before pushing (they stay in the stack array). */
static int pop_mark(pk_run *r, size_t *first, size_t *count) {
    pk_vm *vm = r->vm;
    if (vm->nmarks == 0) return fail(r, "no mark on the stack");
    size_t m = vm->marks[--vm->nmarks];
    *first = m;
    *count = vm->nstack - m;
    vm->nstack = m;
    return 0;
}

/* The stack from index `first` on; NULL while the stack was never allocated (an empty slice
 * then: pointer arithmetic on NULL is undefined even with a zero offset). */
static pk_value **stack_from(pk_vm *vm, size_t first) {
    return vm->stack ? vm->stack + first : NULL;
}

static pk_value *new_seq(pk_run *r, pk_type t, pk_value **items, size_t n) {
    pk_value *v = pk_new(r->vm, t, 0);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++)
        if (seq_push(r->vm, v, items[i])) return NULL;
    return v;
}

static pk_value *new_str(pk_run *r, pk_type t, const unsigned char *p, size_t n) {
    pk_value *v = pk_new(r->vm, t, t == PK_STR ? n + 1 : 0);
    if (!v) return NULL;
    if (t == PK_STR) {
        char *copy = (char *)(v + 1);
        memcpy(copy, p, n);
        copy[n] = 0;
        v->u.s.p = copy;
    } else {
        v->u.s.p = (const char *)p;
    }
    v->u.s.len = n;
    return v;
}

static pk_value *new_int(pk_run *r, int64_t i) {
    pk_value *v = pk_new(r->vm, PK_INT, 0);
    if (v) v->u.i = i;
    return v;
}

/* LONG1 / LONG4 payload: little-endian two's complement. */
static pk_value *new_long(pk_run *r, const unsigned char *p, size_t n) {
    if (n > 8) return new_str(r, PK_BIGINT, p, n);
    uint64_t u = n ? read_le(p, (int)n) : 0;
    if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    return new_int(r, (int64_t)u);
}

static int memo_put(pk_run *r, uint64_t idx) {
    pk_vm *vm = r->vm;
    pk_value *v = top(r);
    if (!v) return -1;
    if (idx >= PK_MAX_MEMO) return fail(r, "memo index too large");
    size_t old = vm->cap_memo;
    if (grow_array((void **)&vm->memo, &vm->cap_memo, (size_t)idx + 1, sizeof *vm->memo,
                   PK_MAX_MEMO))
        return fail(r, "out of memory for the memo");
    if (vm->cap_memo > old) memset(vm->memo + old, 0, (vm->cap_memo - old) * sizeof *vm->memo);
    if (!vm->memo[idx]) vm->nmemo++;
    vm->memo[idx] = v;
    return 0;
}

static int memo_get(pk_run *r, uint64_t idx) {
    pk_vm *vm = r->vm;
    if (idx >= vm->cap_memo || !vm->memo[idx]) return fail(r, "memo key not found");
    return push(r, vm->memo[idx]);
}

static const struct {
    const char *module, *name;
    pk_global g;
    pbw_dtype dtype;
} allowed_globals[] = {
    {"collections", "OrderedDict", PKG_ORDERED_DICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", PKG_REBUILD_TENSOR_V2, 0},
    {"torch._utils", "_rebuild_tensor", PKG_REBUILD_TENSOR, 0},
    {"torch._utils", "_rebuild_parameter", PKG_REBUILD_PARAMETER, 0},
    {"torch._utils", "_rebuild_parameter_with_state", PKG_REBUILD_PARAMETER_WITH_STATE, 0},
    {"torch._tensor", "_rebuild_from_type_v2", PKG_REBUILD_FROM_TYPE_V2, 0},
    {"torch", "Tensor", PKG_TENSOR_TYPE, 0},
    {"torch._tensor", "Tensor", PKG_TENSOR_TYPE, 0},
    {"torch.nn.parameter", "Parameter", PKG_TENSOR_TYPE, 0},
    {"torch", "Size", PKG_TORCH_SIZE, 0},
    {"argparse", "Namespace", PKG_ATTR_CLASS, 0},
    {"torch", "FloatStorage", PKG_STORAGE_TYPE, PBW_F32},
    {"torch", "HalfStorage", PKG_STORAGE_TYPE, PBW_F16},
    {"torch", "BFloat16Storage", PKG_STORAGE_TYPE, PBW_BF16},
    {"torch", "DoubleStorage", PKG_STORAGE_TYPE, PBW_F64},
    {"torch", "LongStorage", PKG_STORAGE_TYPE, PBW_I64},
    {"torch", "IntStorage", PKG_STORAGE_TYPE, PBW_I32},
    {"torch", "ShortStorage", PKG_STORAGE_TYPE, PBW_I16},
    {"torch", "CharStorage", PKG_STORAGE_TYPE, PBW_I8},
    {"torch", "ByteStorage", PKG_STORAGE_TYPE, PBW_U8},
    {"torch", "BoolStorage", PKG_STORAGE_TYPE, PBW_BOOL},
};

/* Prints a name from the file safely into a message (non-printable bytes as '?'). */
static void printable(char *dst, size_t cap, const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[k] = 0;
}

static int push_global(pk_run *r, const char *mod, size_t mlen, const char *name, size_t nlen) {
    for (size_t i = 0; i < sizeof allowed_globals / sizeof allowed_globals[0]; i++) {
        if (strlen(allowed_globals[i].module) == mlen &&
            memcmp(allowed_globals[i].module, mod, mlen) == 0 &&
            strlen(allowed_globals[i].name) == nlen &&
            memcmp(allowed_globals[i].name, name, nlen) == 0) {
            pk_value *v = pk_new(r->vm, PK_GLOBAL, 0);
            if (!v) return -1;
            v->u.glob.g = allowed_globals[i].g;
            v->u.glob.dtype = allowed_globals[i].dtype;
            return push(r, v);
        }
    }
    if ((mlen == 9 || (mlen > 10 && mod[9] == '.')) && memcmp(mod, "__torch__", 9) == 0) {
        pk_value *v = pk_new(r->vm, PK_GLOBAL, 0);
        if (!v) return -1;
        v->u.glob.g = PKG_ATTR_CLASS;
        return push(r, v);
    }
    char m[PK_MAX_GLOBAL_NAME + 1], n[PK_MAX_GLOBAL_NAME + 1];
    printable(m, sizeof m, mod, mlen);
    printable(n, sizeof n, name, nlen);
    return pbw_err_set(r->vm->err,
                       "unsupported pickle global '%s.%s' (pbw loads only tensors, dicts, lists "
                       "and scalars; nothing is executed)",
                       m, n);
}

/* Reads a '\n'-terminated line for GLOBAL. */
static int read_line(pk_run *r, const char **s, size_t *n) {
    const unsigned char *p = r->buf + r->pos;
    size_t avail = r->len - r->pos, max = avail < PK_MAX_GLOBAL_NAME + 1 ? avail : PK_MAX_GLOBAL_NAME + 1;
    const unsigned char *nl = memchr(p, '\n', max);
    if (!nl) return fail(r, "GLOBAL name missing or too long");
    *s = (const char *)p;
    *n = (size_t)(nl - p);
    r->pos += *n + 1;
    return 0;
}

static int get_int(const pk_value *v, int64_t *out) {
    if (!v || (v->type != PK_INT && v->type != PK_BOOL)) return -1;
    *out = v->u.i;
    return 0;
}

/* Fills a tensor from (storage, offset, size, stride). Sizes and strides are checked here;
 * the bounds against the storage are checked by the torch reader once its bytes are known. */
static pk_value *make_tensor(pk_run *r, pk_value **a, size_t n) {
    if (n < 4) {
        fail(r, "_rebuild_tensor with too few arguments");
        return NULL;
    }
    if (a[0]->type != PK_STORAGE) {
        fail(r, "_rebuild_tensor: first argument is not a storage");
        return NULL;
    }
    pk_value *size = a[2], *stride = a[3];
    int64_t off;
    if (get_int(a[1], &off) || off < 0) {
        fail(r, "_rebuild_tensor: bad storage offset");
        return NULL;
    }
    if ((size->type != PK_TUPLE && size->type != PK_LIST) ||
        (stride->type != PK_TUPLE && stride->type != PK_LIST) ||
        size->u.seq.n != stride->u.seq.n) {
        fail(r, "_rebuild_tensor: size and stride must be tuples of one length");
        return NULL;
    }
    if (size->u.seq.n > PK_MAX_DIMS) {
        fail(r, "tensor with more than 8 dimensions");
        return NULL;
    }
    pk_value *t = pk_new(r->vm, PK_TENSOR, 0);
    if (!t) return NULL;
    t->u.tensor.storage = a[0];
    t->u.tensor.offset = off;
    t->u.tensor.ndim = (int)size->u.seq.n;
    for (size_t i = 0; i < size->u.seq.n; i++) {
        int64_t d, s;
        if (get_int(size->u.seq.v[i], &d) || get_int(stride->u.seq.v[i], &s) || d < 0 || s < 0) {
            fail(r, "_rebuild_tensor: sizes and strides must be non-negative integers");
            return NULL;
        }
        t->u.tensor.shape[i] = d;
        t->u.tensor.stride[i] = s;
    }
    return t;
}

/* A dict from a list of 2-item lists or tuples. Copies are counted against a budget so that a
 * short pickle cannot copy one long list over and over. */
static pk_value *dict_from_pairs(pk_run *r, pk_value *list) {
    pk_vm *vm = r->vm;
    if (list->u.seq.n > PK_MAX_COPIED - vm->ncopied) {
        fail(r, "too many items copied by OrderedDict()");
        return NULL;
    }
    vm->ncopied += list->u.seq.n;
    pk_value *d = pk_new(vm, PK_DICT, 0);
    if (!d) return NULL;
    for (size_t i = 0; i < list->u.seq.n; i++) {
        pk_value *pair = list->u.seq.v[i];
        if ((pair->type != PK_LIST && pair->type != PK_TUPLE) || pair->u.seq.n != 2) {
            fail(r, "OrderedDict() item is not a (key, value) pair");
            return NULL;
        }
        if (seq_push(vm, d, pair->u.seq.v[0]) || seq_push(vm, d, pair->u.seq.v[1])) return NULL;
    }
    return d;
}

/* Applies an allowed callable to its argument tuple (REDUCE) or class to args (NEWOBJ). */
static pk_value *call(pk_run *r, pk_value *fn, pk_value *args) {
    if (fn->type != PK_GLOBAL) {
        fail(r, "REDUCE of a value that is not a callable global");
        return NULL;
    }
    if (args->type != PK_TUPLE) {
        fail(r, "REDUCE arguments are not a tuple");
        return NULL;
    }
    pk_value **a = args->u.seq.v;
    size_t n = args->u.seq.n;
    switch (fn->u.glob.g) {
    case PKG_ORDERED_DICT:
        /* OrderedDict() or, in Python 2 era files, OrderedDict([[key, value], ...]) */
        if (n == 0) return pk_new(r->vm, PK_DICT, 0);
        if (n == 1 && a[0]->type == PK_LIST) return dict_from_pairs(r, a[0]);
        break;
    case PKG_REBUILD_TENSOR_V2:
    case PKG_REBUILD_TENSOR:
        return make_tensor(r, a, n);
    case PKG_REBUILD_PARAMETER:
    case PKG_REBUILD_PARAMETER_WITH_STATE:
        if (n < 1 || a[0]->type != PK_TENSOR) break;
        return a[0];
    case PKG_REBUILD_FROM_TYPE_V2:
        /* (func, type, args, state): only plain tensors and parameters; state is dropped */
        if (n != 4 || a[0]->type != PK_GLOBAL || a[1]->type != PK_GLOBAL ||
            a[1]->u.glob.g != PKG_TENSOR_TYPE || a[2]->type != PK_TUPLE ||
            (a[0]->u.glob.g != PKG_REBUILD_TENSOR_V2 && a[0]->u.glob.g != PKG_REBUILD_TENSOR &&
             a[0]->u.glob.g != PKG_REBUILD_PARAMETER &&
             a[0]->u.glob.g != PKG_REBUILD_PARAMETER_WITH_STATE))
            break;
        return call(r, a[0], a[2]); /* a[0] is not _rebuild_from_type_v2: depth 1 */
    case PKG_TORCH_SIZE:
        /* the tuple itself, not a copy: copies would let a few bytes allocate a lot */
        if (n != 1 || (a[0]->type != PK_TUPLE && a[0]->type != PK_LIST)) break;
        return a[0];
    case PKG_TENSOR_TYPE:
    case PKG_STORAGE_TYPE:
    case PKG_ATTR_CLASS:
        break;
    }
    fail(r, "unsupported call of an allowed pickle global");
    return NULL;
}

int pk_vm_run(pk_vm *vm, const unsigned char *buf, size_t len, size_t *consumed,
              pk_value **result) {
    pk_run run = {vm, buf, len, 0, 0};
    pk_run *r = &run;
    vm->nstack = vm->nmarks = vm->nmemo = 0;
    if (vm->memo) memset(vm->memo, 0, vm->cap_memo * sizeof *vm->memo);
    *result = NULL;
    for (;;) {
        r->op_pos = r->pos;
        if (r->pos >= r->len) return fail(r, "no STOP opcode before the end of the data");
        unsigned char op = buf[r->pos++];
        const unsigned char *p = buf + r->pos;
        pk_value *v, *a, *b;
        size_t first = 0, count = 0;
        uint64_t n;
        switch (op) {
        case 0x80: /* PROTO */
            if (need(r, 1)) return -1;
            if (p[0] < 2 || p[0] > 5) return fail(r, "unsupported pickle protocol");
            r->pos++;
            break;
        case 0x95: /* FRAME: a length hint; the data is all in memory already */
            if (need(r, 8)) return -1;
            r->pos += 8;
            break;
        case '.': /* STOP */
            if (!(v = pop(r))) return -1;
            *result = v;
            *consumed = r->pos;
            return 0;
        case '(': /* MARK */
            if (vm->nmarks >= PK_MAX_MARKS) return fail(r, "marks nested too deep");
            if (grow_array((void **)&vm->marks, &vm->cap_marks, vm->nmarks + 1,
                           sizeof *vm->marks, PK_MAX_MARKS))
                return fail(r, "out of memory");
            vm->marks[vm->nmarks++] = vm->nstack;
            break;
        case '0': /* POP */
            if (vm->nstack > stack_floor(vm)) vm->nstack--;
            else if (pop_mark(r, &first, &count)) return -1;
            break;
        case '1': /* POP_MARK */
            if (pop_mark(r, &first, &count)) return -1;
            break;
        case '2': /* DUP */
            if (!(v = top(r)) || push(r, v)) return -1;
            break;
        case 'N':
            if (push(r, pk_new(vm, PK_NONE, 0))) return -1;
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            if (!(v = pk_new(vm, PK_BOOL, 0))) return -1;
            v->u.i = op == 0x88;
            if (push(r, v)) return -1;
            break;
        case 'J': /* BININT */
            if (need(r, 4)) return -1;
            r->pos += 4;
            if (push(r, new_int(r, (int32_t)(uint32_t)read_le(p, 4)))) return -1;
            break;
        case 'K': /* BININT1 */
            if (need(r, 1)) return -1;
            r->pos += 1;
            if (push(r, new_int(r, p[0]))) return -1;
            break;
        case 'M': /* BININT2 */
            if (need(r, 2)) return -1;
            r->pos += 2;
            if (push(r, new_int(r, (int64_t)read_le(p, 2)))) return -1;
            break;
        case 0x8a: /* LONG1 */
        case 0x8b: /* LONG4 */
        {
            int w = op == 0x8a ? 1 : 4;
            if (need(r, (size_t)w)) return -1;
            n = read_le(p, w);
            r->pos += (size_t)w;
            if (op == 0x8b && (int32_t)(uint32_t)n < 0) return fail(r, "negative LONG4 length");
            if (need(r, n)) return -1;
            if (push(r, new_long(r, buf + r->pos, (size_t)n))) return -1;
            r->pos += (size_t)n;
            break;
        }
        case 'G': /* BINFLOAT, big-endian IEEE double */
        {
            if (need(r, 8)) return -1;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = (u << 8) | p[i];
            r->pos += 8;
            if (!(v = pk_new(vm, PK_FLOAT, 0))) return -1;
            memcpy(&v->u.f, &u, 8);
            if (push(r, v)) return -1;
            break;
        }
        case 0x8c: /* SHORT_BINUNICODE */
        case 'X':  /* BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
        case 'U':  /* SHORT_BINSTRING (Python 2 str) */
        case 'T':  /* BINSTRING */
        case 'C':  /* SHORT_BINBYTES */
        case 'B':  /* BINBYTES */
        case 0x8e: /* BINBYTES8 */
        {
            int w = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
            if (need(r, (size_t)w)) return -1;
            n = read_le(p, w);
            r->pos += (size_t)w;
            if (op == 'T' && (int32_t)(uint32_t)n < 0) return fail(r, "negative BINSTRING length");
            if (need(r, n)) return -1; /* also bounds the length by the input size */
            pk_type t = (op == 'C' || op == 'B' || op == 0x8e) ? PK_BYTES : PK_STR;
            if (push(r, new_str(r, t, buf + r->pos, (size_t)n))) return -1;
            r->pos += (size_t)n;
            break;
        }
        case ')': /* EMPTY_TUPLE */
            if (push(r, pk_new(vm, PK_TUPLE, 0))) return -1;
            break;
        case 't': /* TUPLE */
        case 'l': /* LIST */
        case 0x91: /* FROZENSET (as a list) */
            if (pop_mark(r, &first, &count)) return -1;
            if (push(r, new_seq(r, op == 't' ? PK_TUPLE : PK_LIST, stack_from(vm, first), count)))
                return -1;
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            count = (size_t)(op - 0x84);
            if (vm->nstack - stack_floor(vm) < count) return fail(r, "stack underflow");
            vm->nstack -= count;
            if (push(r, new_seq(r, PK_TUPLE, stack_from(vm, vm->nstack), count))) return -1;
            break;
        case ']': /* EMPTY_LIST */
        case 0x8f: /* EMPTY_SET (as a list) */
            if (push(r, pk_new(vm, PK_LIST, 0))) return -1;
            break;
        case '}': /* EMPTY_DICT */
            if (push(r, pk_new(vm, PK_DICT, 0))) return -1;
            break;
        case 'a': /* APPEND */
            if (!(v = pop(r)) || !(a = top(r))) return -1;
            if (a->type != PK_LIST) return fail(r, "APPEND to a value that is not a list");
            if (seq_push(vm, a, v)) return -1;
            break;
        case 'e':  /* APPENDS */
        case 0x90: /* ADDITEMS */
            if (pop_mark(r, &first, &count) || !(a = top(r))) return -1;
            if (a->type != PK_LIST) return fail(r, "APPENDS to a value that is not a list");
            for (size_t i = 0; i < count; i++)
                if (seq_push(vm, a, vm->stack[first + i])) return -1;
            break;
        case 'd': /* DICT */
            if (pop_mark(r, &first, &count)) return -1;
            if (count % 2) return fail(r, "DICT with an odd number of items");
            if (push(r, new_seq(r, PK_DICT, stack_from(vm, first), count))) return -1;
            break;
        case 's': /* SETITEM */
            if (!(b = pop(r)) || !(a = pop(r)) || !(v = top(r))) return -1;
            if (v->type != PK_DICT) return fail(r, "SETITEM on a value that is not a dict");
            if (seq_push(vm, v, a) || seq_push(vm, v, b)) return -1;
            break;
        case 'u': /* SETITEMS */
            if (pop_mark(r, &first, &count) || !(v = top(r))) return -1;
            if (v->type != PK_DICT) return fail(r, "SETITEMS on a value that is not a dict");
            if (count % 2) return fail(r, "SETITEMS with an odd number of items");
            for (size_t i = 0; i < count; i++)
                if (seq_push(vm, v, vm->stack[first + i])) return -1;
            break;
        case 'q': /* BINPUT */
            if (need(r, 1)) return -1;
            r->pos += 1;
            if (memo_put(r, p[0])) return -1;
            break;
        case 'r': /* LONG_BINPUT */
            if (need(r, 4)) return -1;
            r->pos += 4;
            if (memo_put(r, read_le(p, 4))) return -1;
            break;
        case 0x94: /* MEMOIZE */
            if (memo_put(r, vm->nmemo)) return -1;
            break;
        case 'h': /* BINGET */
            if (need(r, 1)) return -1;
            r->pos += 1;
            if (memo_get(r, p[0])) return -1;
            break;
        case 'j': /* LONG_BINGET */
            if (need(r, 4)) return -1;
            r->pos += 4;
            if (memo_get(r, read_le(p, 4))) return -1;
            break;
        case 'c': /* GLOBAL module\nname\n */
        {
            const char *m = NULL, *nm = NULL;
            size_t ml = 0, nl = 0;
            if (read_line(r, &m, &ml) || read_line(r, &nm, &nl)) return -1;
            if (push_global(r, m, ml, nm, nl)) return -1;
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if (!(b = pop(r)) || !(a = pop(r))) return -1;
            if (a->type != PK_STR || b->type != PK_STR) return fail(r, "STACK_GLOBAL of non-strings");
            if (push_global(r, a->u.s.p, a->u.s.len, b->u.s.p, b->u.s.len)) return -1;
            break;
        case 'R': /* REDUCE */
            if (!(b = pop(r)) || !(a = pop(r))) return -1;
            if (push(r, call(r, a, b))) return -1;
            break;
        case 0x81: /* NEWOBJ cls args: OrderedDict() or a TorchScript object */
            if (!(b = pop(r)) || !(a = pop(r))) return -1;
            if (a->type == PK_GLOBAL && a->u.glob.g == PKG_ATTR_CLASS && b->type == PK_TUPLE &&
                b->u.seq.n == 0) {
                if (push(r, pk_new(vm, PK_OBJECT, 0))) return -1;
                break;
            }
            if (a->type != PK_GLOBAL || a->u.glob.g != PKG_ORDERED_DICT)
                return fail(r, "NEWOBJ of an unsupported class");
            if (push(r, call(r, a, b))) return -1;
            break;
        case 'b': /* BUILD: fills TorchScript objects; any other state is dropped */
            if (!(b = pop(r)) || !(a = top(r))) return -1;
            if (a->type == PK_OBJECT && b->type == PK_DICT) {
                if (b->u.seq.n > PK_MAX_COPIED - vm->ncopied)
                    return fail(r, "too many items copied by BUILD");
                vm->ncopied += b->u.seq.n;
                for (size_t i = 0; i < b->u.seq.n; i++)
                    if (seq_push(vm, a, b->u.seq.v[i])) return -1;
            }
            break;
        case 'Q': /* BINPERSID */
            if (!(a = pop(r))) return -1;
            if (!vm->persistent_load) return fail(r, "persistent id in a plain pickle");
            v = NULL;
            if (vm->persistent_load(vm->ctx, vm, a, &v, vm->err)) return -1;
            if (push(r, v)) return -1;
            break;
        default: {
            char msg[64];
            snprintf(msg, sizeof msg, "unsupported opcode 0x%02x", op);
            return fail(r, msg);
        }
        }
    }
}
