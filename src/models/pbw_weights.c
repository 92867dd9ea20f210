/* pbw_weights.c: checked copies of checkpoint records into model tensors. */
#include "pbw_weights.h"

#include <stdio.h>
#include <string.h>

static const pbw_record *lookup(const pbw_records *r, const char *prefix, const char *name,
                                char *full, size_t len) {
    snprintf(full, len, "%s%s", prefix ? prefix : "", name);
    return pbw_records_find(r, full);
}

static void shape_str(int nd, const int64_t *s, char *buf, size_t len) {
    size_t o = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < nd && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ",%lld" : "%lld", (long long)s[i]);
    if (o < len) snprintf(buf + o, len - o, ")");
}

static pbw_tensor *copy_checked(pbw_arena *a, const pbw_record *rec, const char *full, int ndim,
                                const int64_t *shape, pbw_err *err) {
    int ok = rec->ndim == ndim && ndim <= PBW_MAX_DIMS;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] != -1 && shape[i] != rec->shape[i]) ok = 0;
    if (!ok) {
        char want[96], have[96];
        shape_str(ndim, shape, want, sizeof want);
        shape_str(rec->ndim, rec->shape, have, sizeof have);
        pbw_err_set(err, "tensor '%s' has shape %s but the model needs %s", full, have, want);
        return NULL;
    }
    pbw_tensor *t = pbw_tensor_new_in(a, rec->ndim, rec->shape, err);
    if (!t) return NULL;
    if (pbw_record_to_f32(rec, t->data, err) != 0) {
        pbw_err_prefix(err, "tensor '%s': ", full);
        return NULL;
    }
    return t;
}

pbw_tensor *pbw_weight_get(pbw_arena *a, const pbw_records *r, const char *prefix,
                           const char *name, int ndim, const int64_t *shape, pbw_err *err) {
    char full[512];
    const pbw_record *rec = lookup(r, prefix, name, full, sizeof full);
    if (!rec) {
        pbw_err_set(err, "tensor '%s' is missing from the checkpoint", full);
        return NULL;
    }
    return copy_checked(a, rec, full, ndim, shape, err);
}

pbw_tensor *pbw_weight_get_opt(pbw_arena *a, const pbw_records *r, const char *prefix,
                               const char *name, int ndim, const int64_t *shape, pbw_err *err,
                               int *failed) {
    char full[512];
    const pbw_record *rec = lookup(r, prefix, name, full, sizeof full);
    if (!rec) return NULL;
    pbw_tensor *t = copy_checked(a, rec, full, ndim, shape, err);
    if (!t) *failed = 1;
    return t;
}

int pbw_weight_shape(const pbw_records *r, const char *prefix, const char *name, int *ndim,
                     int64_t *shape) {
    char full[512];
    const pbw_record *rec = lookup(r, prefix, name, full, sizeof full);
    if (!rec) return -1;
    *ndim = rec->ndim;
    memcpy(shape, rec->shape, (size_t)rec->ndim * sizeof(int64_t));
    return 0;
}
