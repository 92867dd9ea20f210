/* pbw_torch.c: PyTorch checkpoints (torch.save) without Python.
 *
 * Two container formats:
 *  - zip (torch >= 1.6): "<prefix>/data.pkl" is the pickle, "<prefix>/data/<key>" holds the raw
 *    little-endian bytes of storage <key>, "<prefix>/byteorder" (newer files) says "little".
 *    Persistent ids are ('storage', storage_type, key, location, numel). Entries are read with
 *    libzip into heap blocks owned by the records.
 *  - legacy (_use_new_zipfile_serialization=False): five things in a row: a pickled magic
 *    number, a pickled protocol version (1001), a pickled dict of system info, the main pickle
 *    (persistent ids ('storage', storage_type, key, location, numel, view_metadata)), a pickled
 *    list of storage keys, then for each key in that order an int64 element count and the raw
 *    bytes. Records point into the mmap of the file (or a copy where misaligned).
 *
 * The pickle is run by pbw_pickle.c, which executes nothing. The resulting object is flattened
 * into records: dict keys and list indices joined with '.', tensors as records, ints and floats
 * as scalars, anything else (str, None, bool, bytes) ignored. A file whose object is a single
 * tensor gives one record named "". TorchScript archives (torch.jit.save, e.g. OpenAI's CLIP
 * files) load too: their modules become attribute dicts, so parameters get their state_dict
 * names ("visual.conv1.weight"); constants.pkl and the code are not read. Non-contiguous tensors (e.g. saved from `.t()`) are copied
 * into contiguous order.
 *
 * Not supported (refused with a message): storage views (view_metadata, PyTorch < 0.4),
 * big-endian files, the pre-1.0 tar format, quantized/sparse tensors, and any pickle global
 * outside the list in pbw_pickle.h. */
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#include "pbw_file.h"
#include "pbw_pickle.h"
#include "pbw_records.h"

#define TORCH_MAX_DEPTH 64         /* nesting of dicts/lists in names */
#define TORCH_MAX_VISITS (1u << 20) /* flatten steps: shared sub-objects must not explode */
#define TORCH_MAX_PICKLE (1u << 30) /* size of data.pkl */
#define TORCH_MAX_NAME 4096

typedef struct {
    pk_vm vm;
    pbw_records *out;
    pbw_err *err;
    int legacy;
    /* storages by key: open addressing, cap a power of two */
    pk_value **table;
    size_t table_cap, nstorages;
    /* zip */
    zip_t *za;
    const char *prefix;
    size_t prefix_len;
    size_t read_budget; /* bytes we may still decompress */
    size_t copy_budget; /* bytes we may still allocate for non-contiguous copies */
    size_t visits;
} torch_ctx;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static pk_value *storage_find(torch_ctx *c, const char *key) {
    if (!c->table_cap) return NULL;
    for (size_t i = hash_str(key) & (c->table_cap - 1);; i = (i + 1) & (c->table_cap - 1)) {
        pk_value *v = c->table[i];
        if (!v) return NULL;
        if (strcmp(v->u.storage.key, key) == 0) return v;
    }
}

static int storage_insert(torch_ctx *c, pk_value *s) {
    if ((c->nstorages + 1) * 2 > c->table_cap) {
        size_t ncap = c->table_cap ? c->table_cap * 2 : 64;
        pk_value **t = calloc(ncap, sizeof *t);
        if (!t) return pbw_err_set(c->err, "out of memory");
        for (size_t k = 0; k < c->table_cap; k++) {
            pk_value *v = c->table[k];
            if (!v) continue;
            size_t i = hash_str(v->u.storage.key) & (ncap - 1);
            while (t[i]) i = (i + 1) & (ncap - 1);
            t[i] = v;
        }
        free(c->table);
        c->table = t;
        c->table_cap = ncap;
    }
    size_t i = hash_str(s->u.storage.key) & (c->table_cap - 1);
    while (c->table[i]) i = (i + 1) & (c->table_cap - 1);
    c->table[i] = s;
    c->nstorages++;
    return 0;
}

/* ---- zip entries ---- */

/* Reads entry `name` into a heap block owned by c->out; *len is its size. */
static int zip_read_entry(torch_ctx *c, const char *name, unsigned char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    zip_int64_t idx = zip_name_locate(c->za, name, 0);
    if (idx < 0) return pbw_err_set(c->err, "zip entry '%.300s' not found", name);
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(c->za, (zip_uint64_t)idx, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
        return pbw_err_set(c->err, "zip entry '%.300s': %s", name, zip_strerror(c->za));
    if (st.size > c->read_budget)
        return pbw_err_set(c->err, "zip entry '%.300s' claims %llu bytes, more than the file can hold",
                           name, (unsigned long long)st.size);
    size_t n = (size_t)st.size;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) return pbw_err_set(c->err, "out of memory reading '%.300s' (%zu bytes)", name, n);
    zip_file_t *zf = zip_fopen_index(c->za, (zip_uint64_t)idx, 0);
    if (!zf) {
        free(buf);
        return pbw_err_set(c->err, "zip entry '%.300s': %s", name, zip_strerror(c->za));
    }
    size_t got = 0;
    while (got < n) {
        zip_int64_t r = zip_fread(zf, buf + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    /* reading one byte more checks the end (libzip verifies the CRC there) */
    unsigned char extra;
    zip_int64_t tail = got == n ? zip_fread(zf, &extra, 1) : -1;
    int bad = got != n || tail != 0;
    char msg[200];
    snprintf(msg, sizeof msg, "%s", zip_file_strerror(zf));
    zip_fclose(zf);
    if (bad) {
        free(buf);
        return pbw_err_set(c->err, "zip entry '%.300s' is damaged (%s)", name, msg);
    }
    c->read_budget -= n;
    if (pbw_records_own(c->out, buf, c->err)) return -1;
    *data = buf;
    *len = n;
    return 0;
}

/* ---- persistent ids: storages ---- */

static int persistent_load(void *ctx, pk_vm *vm, pk_value *pid, pk_value **out, pbw_err *err) {
    torch_ctx *c = ctx;
    if (pid->type != PK_TUPLE || pid->u.seq.n < 5 || !pk_is_str(pid->u.seq.v[0], "storage"))
        return pbw_err_set(err, "unsupported persistent id (expected a ('storage', ...) tuple)");
    pk_value **a = pid->u.seq.v;
    if (a[1]->type != PK_GLOBAL || a[1]->u.glob.g != PKG_STORAGE_TYPE)
        return pbw_err_set(err, "persistent id: second item is not a storage type");
    if (a[2]->type != PK_STR || a[2]->u.s.len == 0 || strlen(a[2]->u.s.p) != a[2]->u.s.len ||
        a[2]->u.s.len > 256)
        return pbw_err_set(err, "persistent id: bad storage key");
    if (c->legacy && pid->u.seq.n >= 6 && a[5]->type != PK_NONE)
        return pbw_err_set(err, "storage views (files from PyTorch < 0.4) are not supported");
    pbw_dtype dt = a[1]->u.glob.dtype;
    const char *key = a[2]->u.s.p;
    pk_value *s = storage_find(c, key);
    if (s) {
        if (s->u.storage.dtype != dt)
            return pbw_err_set(err, "storage '%s' is used with two element types", key);
        *out = s;
        return 0;
    }
    size_t klen = strlen(key);
    s = pk_new(vm, PK_STORAGE, klen + 1);
    if (!s) return -1;
    memcpy((char *)(s + 1), key, klen + 1);
    s->u.storage.key = (const char *)(s + 1);
    s->u.storage.dtype = dt;
    if (storage_insert(c, s)) return -1;
    if (!c->legacy) {
        /* "<prefix>/data/<key>" */
        char name[TORCH_MAX_NAME];
        snprintf(name, sizeof name, "%.*s/data/%s", (int)c->prefix_len, c->prefix, key);
        unsigned char *data;
        size_t len;
        if (zip_read_entry(c, name, &data, &len)) return -1;
        s->u.storage.data = data;
        s->u.storage.numel = (int64_t)(len / pbw_dtype_size(dt));
        s->u.storage.resolved = 1;
    }
    *out = s;
    return 0;
}

/* ---- tensors ---- */

/* Makes record rec from tensor t, checking it lies inside its storage; copies non-contiguous
 * tensors into C order. */
static int tensor_to_record(torch_ctx *c, const pk_value *t, pbw_record *rec) {
    const pk_value *s = t->u.tensor.storage;
    if (!s->u.storage.resolved)
        return pbw_err_set(c->err, "tensor '%.200s': storage '%s' has no data in the file",
                           rec->name, s->u.storage.key);
    pbw_dtype dt = s->u.storage.dtype;
    size_t es = pbw_dtype_size(dt);
    int nd = t->u.tensor.ndim;
    const int64_t *shape = t->u.tensor.shape, *stride = t->u.tensor.stride;
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        if (shape[i] != 0 && numel > INT64_MAX / shape[i])
            return pbw_err_set(c->err, "tensor '%.200s': too many elements", rec->name);
        numel *= shape[i];
    }
    rec->dtype = dt;
    rec->ndim = nd;
    for (int i = 0; i < nd; i++) rec->shape[i] = shape[i];
    rec->numel = numel;
    if (numel == 0) return 0;
    /* last element reachable: offset + sum (shape-1)*stride, all non-negative */
    uint64_t last = (uint64_t)t->u.tensor.offset;
    int contiguous = 1;
    int64_t expect = 1;
    for (int i = nd - 1; i >= 0; i--) {
        uint64_t span = (uint64_t)(shape[i] - 1);
        if (stride[i] != 0 && span > (UINT64_MAX / 2 - last) / (uint64_t)stride[i])
            return pbw_err_set(c->err, "tensor '%.200s': strides out of range", rec->name);
        last += span * (uint64_t)stride[i];
        if (shape[i] != 1 && stride[i] != expect) contiguous = 0;
        expect *= shape[i];
    }
    if (last >= (uint64_t)s->u.storage.numel)
        return pbw_err_set(c->err,
                           "tensor '%.200s' reaches element %llu of storage '%s' which has %lld",
                           rec->name, (unsigned long long)last, s->u.storage.key,
                           (long long)s->u.storage.numel);
    size_t nbytes;
    if (pbw_mul_overflow((size_t)numel, es, &nbytes))
        return pbw_err_set(c->err, "tensor '%.200s': too many elements", rec->name);
    rec->nbytes = nbytes;
    const unsigned char *base = s->u.storage.data;
    if (contiguous) {
        rec->data = base + (size_t)t->u.tensor.offset * es;
        return 0;
    }
    if (nbytes > c->copy_budget)
        return pbw_err_set(c->err, "tensor '%.200s': non-contiguous copy of %zu bytes is too large",
                           rec->name, nbytes);
    c->copy_budget -= nbytes;
    unsigned char *dst = malloc(nbytes);
    if (!dst) return pbw_err_set(c->err, "out of memory copying tensor '%.200s'", rec->name);
    int64_t idx[PK_MAX_DIMS] = {0};
    int64_t src = t->u.tensor.offset;
    for (int64_t k = 0; k < numel; k++) {
        memcpy(dst + (size_t)k * es, base + (size_t)src * es, es);
        for (int i = nd - 1; i >= 0; i--) { /* odometer over the index */
            if (++idx[i] < shape[i]) {
                src += stride[i];
                break;
            }
            src -= (idx[i] - 1) * stride[i];
            idx[i] = 0;
        }
    }
    if (pbw_records_own(c->out, dst, c->err)) return -1;
    rec->data = dst;
    return 0;
}

/* ---- flattening ---- */

typedef struct {
    char *p;
    size_t len, cap;
} namebuf;

/* Appends ".part" (or "part" at the root) to the name; fails if too long. */
static int name_push(torch_ctx *c, namebuf *nb, const char *part, size_t n) {
    size_t add = n + (nb->len ? 1 : 0);
    if (nb->len + add + 1 > TORCH_MAX_NAME)
        return pbw_err_set(c->err, "a name is longer than %d bytes", TORCH_MAX_NAME);
    if (nb->len + add + 1 > nb->cap) {
        nb->cap = TORCH_MAX_NAME + 1;
        char *q = realloc(nb->p, nb->cap);
        if (!q) return pbw_err_set(c->err, "out of memory");
        nb->p = q;
    }
    if (nb->len) nb->p[nb->len++] = '.';
    memcpy(nb->p + nb->len, part, n);
    nb->len += n;
    nb->p[nb->len] = 0;
    return 0;
}

static int flatten(torch_ctx *c, const pk_value *v, namebuf *nb, int depth);

static int flatten_child(torch_ctx *c, const pk_value *key, const pk_value *v, namebuf *nb,
                         int depth) {
    char tmp[32];
    const char *part;
    size_t n;
    if (key->type == PK_STR) {
        part = key->u.s.p;
        n = key->u.s.len;
        if (strlen(part) != n) return pbw_err_set(c->err, "a key contains a NUL byte");
    } else if (key->type == PK_INT) {
        n = (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)key->u.i);
        part = tmp;
    } else {
        return 0; /* other keys cannot form a name: skip the entry */
    }
    size_t saved = nb->len;
    if (name_push(c, nb, part, n)) return -1;
    int rc = flatten(c, v, nb, depth + 1);
    nb->len = saved;
    if (nb->p) nb->p[saved] = 0;
    return rc;
}

static int flatten(torch_ctx *c, const pk_value *v, namebuf *nb, int depth) {
    if (++c->visits > TORCH_MAX_VISITS)
        return pbw_err_set(c->err, "the object has too many (or too often shared) parts");
    if (depth > TORCH_MAX_DEPTH)
        return pbw_err_set(c->err, "containers nested deeper than %d levels", TORCH_MAX_DEPTH);
    const char *name = nb->p ? nb->p : "";
    switch (v->type) {
    case PK_DICT:
    case PK_OBJECT:
        for (size_t i = 0; i + 1 < v->u.seq.n; i += 2)
            if (flatten_child(c, v->u.seq.v[i], v->u.seq.v[i + 1], nb, depth)) return -1;
        return 0;
    case PK_LIST:
    case PK_TUPLE:
        for (size_t i = 0; i < v->u.seq.n; i++) {
            pk_value key = {.type = PK_INT, .u.i = (int64_t)i};
            if (flatten_child(c, &key, v->u.seq.v[i], nb, depth)) return -1;
        }
        return 0;
    case PK_TENSOR: {
        pbw_record *rec = pbw_records_push(c->out, name, c->err);
        if (!rec) return -1;
        return tensor_to_record(c, v, rec);
    }
    case PK_INT:
        return pbw_records_push_scalar(c->out, name, 0, (double)v->u.i, c->err);
    case PK_FLOAT:
        return pbw_records_push_scalar(c->out, name, 1, v->u.f, c->err);
    default:
        return 0; /* None, bool, str, bytes, big ints, globals, bare storages */
    }
}

static int flatten_root(torch_ctx *c, const pk_value *root) {
    namebuf nb = {0};
    int rc = flatten(c, root, &nb, 0);
    free(nb.p);
    if (rc) return -1;
    return pbw_records_check_unique(c->out, c->err);
}

/* ---- zip format ---- */

static int load_zip(torch_ctx *c, const unsigned char *buf, size_t len) {
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(buf, len, 0, &ze);
    if (!src) {
        pbw_err_set(c->err, "zip: %s", zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return -1;
    }
    c->za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
    if (!c->za) {
        pbw_err_set(c->err, "not a readable zip file (%s)", zip_error_strerror(&ze));
        zip_source_free(src);
        zip_error_fini(&ze);
        return -1;
    }
    zip_error_fini(&ze);
    /* the pickle: "<prefix>/data.pkl" with a prefix without '/' */
    zip_int64_t n = zip_get_num_entries(c->za, 0);
    const char *pkl = NULL;
    for (zip_int64_t i = 0; i < n && !pkl; i++) {
        const char *nm = zip_get_name(c->za, (zip_uint64_t)i, 0);
        if (!nm) continue;
        const char *slash = strchr(nm, '/');
        if (slash && slash > nm && strcmp(slash, "/data.pkl") == 0) pkl = nm;
    }
    if (!pkl) return pbw_err_set(c->err, "zip file without '<name>/data.pkl': not a PyTorch checkpoint");
    c->prefix = pkl;
    c->prefix_len = (size_t)(strchr(pkl, '/') - pkl);
    if (c->prefix_len > 512) return pbw_err_set(c->err, "zip: archive name too long");
    char name[TORCH_MAX_NAME];
    snprintf(name, sizeof name, "%.*s/byteorder", (int)c->prefix_len, c->prefix);
    if (zip_name_locate(c->za, name, 0) >= 0) {
        unsigned char *bo;
        size_t bl;
        if (zip_read_entry(c, name, &bo, &bl)) return -1;
        if (!(bl == 6 && memcmp(bo, "little", 6) == 0))
            return pbw_err_set(c->err, "big-endian checkpoints are not supported");
    }
    unsigned char *pk;
    size_t pl;
    snprintf(name, sizeof name, "%.*s/data.pkl", (int)c->prefix_len, c->prefix);
    if (zip_read_entry(c, name, &pk, &pl)) return -1;
    if (pl > TORCH_MAX_PICKLE) return pbw_err_set(c->err, "data.pkl is too large");
    pk_value *root;
    size_t used;
    if (pk_vm_run(&c->vm, pk, pl, &used, &root)) return -1;
    return flatten_root(c, root);
}

/* ---- legacy format ---- */

static int load_legacy(torch_ctx *c, const unsigned char *buf, size_t len) {
    /* 0x1950a86a20f9469cfc6c, little-endian, as pickled by LONG1 */
    static const unsigned char magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    size_t pos = 0, used;
    pk_value *v;
    if (pk_vm_run(&c->vm, buf, len, &used, &v)) return -1;
    if (v->type != PK_BIGINT || v->u.s.len != 10 || memcmp(v->u.s.p, magic, 10) != 0)
        return pbw_err_set(c->err, "not a PyTorch file (wrong magic number)");
    pos += used;
    if (pk_vm_run(&c->vm, buf + pos, len - pos, &used, &v)) return -1;
    if (v->type != PK_INT || v->u.i != 1001)
        return pbw_err_set(c->err, "unsupported legacy protocol version");
    pos += used;
    if (pk_vm_run(&c->vm, buf + pos, len - pos, &used, &v)) return -1;
    if (v->type == PK_DICT)
        for (size_t i = 0; i + 1 < v->u.seq.n; i += 2)
            if (pk_is_str(v->u.seq.v[i], "little_endian") &&
                !(v->u.seq.v[i + 1]->type == PK_BOOL && v->u.seq.v[i + 1]->u.i))
                return pbw_err_set(c->err, "big-endian checkpoints are not supported");
    pos += used;
    pk_value *root;
    if (pk_vm_run(&c->vm, buf + pos, len - pos, &used, &root)) return -1;
    pos += used;
    pk_value *keys;
    if (pk_vm_run(&c->vm, buf + pos, len - pos, &used, &keys)) return -1;
    pos += used;
    if (keys->type != PK_LIST && keys->type != PK_TUPLE)
        return pbw_err_set(c->err, "storage key list is not a list");
    for (size_t i = 0; i < keys->u.seq.n; i++) {
        pk_value *k = keys->u.seq.v[i];
        pk_value *s = k->type == PK_STR ? storage_find(c, k->u.s.p) : NULL;
        if (!s) return pbw_err_set(c->err, "storage key list names an unknown storage");
        if (s->u.storage.resolved)
            return pbw_err_set(c->err, "storage '%s' is listed twice", s->u.storage.key);
        if (len - pos < 8) return pbw_err_set(c->err, "file truncated in storage data");
        uint64_t count = 0;
        for (int b = 7; b >= 0; b--) count = (count << 8) | buf[pos + (size_t)b];
        pos += 8;
        size_t es = pbw_dtype_size(s->u.storage.dtype);
        if (count > (len - pos) / es)
            return pbw_err_set(c->err, "storage '%s' of %llu elements runs past the end of the file",
                               s->u.storage.key, (unsigned long long)count);
        size_t nbytes = (size_t)count * es;
        const unsigned char *data = buf + pos;
        if (nbytes && (uintptr_t)data % es) { /* keep every record aligned */
            unsigned char *copy = malloc(nbytes);
            if (!copy) return pbw_err_set(c->err, "out of memory");
            memcpy(copy, data, nbytes);
            if (pbw_records_own(c->out, copy, c->err)) return -1;
            data = copy;
        }
        s->u.storage.data = data;
        s->u.storage.numel = (int64_t)count;
        s->u.storage.resolved = 1;
        pos += nbytes;
    }
    return flatten_root(c, root);
}

/* ---- entry points ---- */

/* *points_into_buf tells whether records may point into buf (legacy format). */
static int torch_parse(const unsigned char *buf, size_t len, pbw_records *out, pbw_err *err,
                       int *points_into_buf) {
    torch_ctx c;
    memset(&c, 0, sizeof c);
    c.out = out;
    c.err = err;
    /* torch never compresses; allow a generous ratio for archives someone re-zipped */
    c.read_budget = len > SIZE_MAX / 8 - (64u << 20) ? SIZE_MAX : len * 8 + (64u << 20);
    c.copy_budget = c.read_budget;
    pk_vm_init(&c.vm, persistent_load, &c, err);
    int rc;
    if (len >= 4 && memcmp(buf, "PK\x03\x04", 4) == 0) {
        rc = load_zip(&c, buf, len);
    } else if (len >= 2 && buf[0] == 0x80) {
        c.legacy = 1;
        rc = load_legacy(&c, buf, len);
    } else {
        rc = pbw_err_set(err, "not a PyTorch checkpoint (neither a zip file nor a pickle)");
    }
    if (c.za) zip_discard(c.za);
    *points_into_buf = c.legacy;
    pk_vm_free(&c.vm);
    free(c.table);
    return rc;
}

int pbw_torch_parse(const void *buf, size_t len, pbw_records *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    int into;
    if (torch_parse(buf, len, out, err, &into)) {
        pbw_records_free(out);
        return -1;
    }
    return 0;
}

int pbw_torch_load(const char *path, pbw_records *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    void *map;
    size_t len;
    if (pbw_file_map(path, &map, &len, err)) return -1;
    int into = 1;
    if (torch_parse(map, len, out, err, &into)) {
        pbw_records_free(out);
        pbw_file_unmap(map, len);
        return pbw_err_prefix(err, "'%s': ", path);
    }
    if (into) {
        out->map = map;
        out->map_len = len;
    } else {
        pbw_file_unmap(map, len); /* zip entries were copied to the heap */
    }
    return 0;
}
