/* pbw_records.c: the record list every checkpoint reader fills, and format detection.
 * Readers live in pbw_safetensors.c and pbw_torch.c; this file only owns memory and names. */
#include "pbw_records.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbw_file.h"

void pbw_records_free(pbw_records *r) {
    if (!r) return;
    for (size_t i = 0; i < r->count; i++) free(r->items[i].name);
    for (size_t i = 0; i < r->nscalars; i++) free(r->scalars[i].name);
    for (size_t i = 0; i < r->nblocks; i++) free(r->blocks[i]);
    free(r->items);
    free(r->scalars);
    free(r->blocks);
    pbw_file_unmap(r->map, r->map_len);
    memset(r, 0, sizeof *r);
}

const pbw_record *pbw_records_find(const pbw_records *r, const char *name) {
    for (size_t i = 0; i < r->count; i++)
        if (strcmp(r->items[i].name, name) == 0) return &r->items[i];
    return NULL;
}

int pbw_record_to_f32(const pbw_record *rec, float *dst, pbw_err *err) {
    if (rec->numel == 0) return 0;
    if (!rec->data || rec->nbytes != (size_t)rec->numel * pbw_dtype_size(rec->dtype))
        return pbw_err_set(err, "tensor '%s': data size does not match its shape", rec->name);
    if (pbw_convert_to_f32(rec->dtype, rec->data, (size_t)rec->numel, dst))
        return pbw_err_set(err, "tensor '%s': cannot convert %s to float32", rec->name,
                           pbw_dtype_name(rec->dtype));
    return 0;
}

/* Grows *items (of elem bytes each) so that one more fits. */
static int grow(void **items, size_t *cap, size_t count, size_t elem, pbw_err *err) {
    if (count < *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 16, bytes;
    if (pbw_mul_overflow(ncap, elem, &bytes)) return pbw_err_set(err, "too many records");
    void *p = realloc(*items, bytes);
    if (!p) return pbw_err_set(err, "out of memory");
    *items = p;
    *cap = ncap;
    return 0;
}

pbw_record *pbw_records_push(pbw_records *r, const char *name, pbw_err *err) {
    if (grow((void **)&r->items, &r->cap_items, r->count, sizeof *r->items, err)) return NULL;
    char *copy = strdup(name);
    if (!copy) {
        pbw_err_set(err, "out of memory");
        return NULL;
    }
    pbw_record *rec = &r->items[r->count++];
    memset(rec, 0, sizeof *rec);
    rec->name = copy;
    return rec;
}

int pbw_records_push_scalar(pbw_records *r, const char *name, int is_float, double value,
                            pbw_err *err) {
    if (grow((void **)&r->scalars, &r->cap_scalars, r->nscalars, sizeof *r->scalars, err))
        return -1;
    char *copy = strdup(name);
    if (!copy) return pbw_err_set(err, "out of memory");
    pbw_scalar *s = &r->scalars[r->nscalars++];
    s->name = copy;
    s->is_float = is_float;
    s->value = value;
    return 0;
}

int pbw_records_own(pbw_records *r, void *block, pbw_err *err) {
    if (grow((void **)&r->blocks, &r->cap_blocks, r->nblocks, sizeof *r->blocks, err)) {
        free(block);
        return -1;
    }
    r->blocks[r->nblocks++] = block;
    return 0;
}

int pbw_records_align(pbw_records *r, pbw_record *rec, pbw_err *err) {
    size_t es = pbw_dtype_size(rec->dtype);
    if (!rec->data || es == 0 || (uintptr_t)rec->data % es == 0) return 0;
    void *copy = malloc(rec->nbytes);
    if (!copy) return pbw_err_set(err, "out of memory copying tensor '%s'", rec->name);
    memcpy(copy, rec->data, rec->nbytes);
    if (pbw_records_own(r, copy, err)) return -1;
    rec->data = copy;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int pbw_records_check_unique(const pbw_records *r, pbw_err *err) {
    size_t n = r->count + r->nscalars;
    if (n < 2) return 0;
    char **names = malloc(n * sizeof *names);
    if (!names) return pbw_err_set(err, "out of memory");
    for (size_t i = 0; i < r->count; i++) names[i] = r->items[i].name;
    for (size_t i = 0; i < r->nscalars; i++) names[r->count + i] = r->scalars[i].name;
    qsort(names, n, sizeof *names, cmp_str_ptr);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            rc = pbw_err_set(err, "the name '%.200s' occurs twice", names[i]);
    free(names);
    return rc;
}

int pbw_load_checkpoint(const char *path, pbw_records *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return pbw_err_set(err, "cannot open checkpoint '%s'", path);
    unsigned char head[16] = {0};
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n >= 4 && memcmp(head, "PK\x03\x04", 4) == 0) return pbw_torch_load(path, out, err);
    if (n >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5)
        return pbw_torch_load(path, out, err);
    if (n >= 9 && head[8] == '{') return pbw_safetensors_load(path, out, err);
    return pbw_err_set(err,
                       "'%s' is not a checkpoint pbw knows (expected safetensors, a PyTorch zip "
                       "or a legacy PyTorch file)",
                       path);
}
