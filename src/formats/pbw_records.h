/* pbw_records.h: the plain record every checkpoint reader emits.
 *
 * A reader turns a file into a list of named tensors: name, element type, shape and a pointer
 * to the little-endian, C-contiguous data. Every size and offset is bounds-checked by the
 * reader before a record is emitted, so a consumer may read `nbytes` bytes from `data`.
 *
 *     pbw_records recs; pbw_err err;
 *     if (pbw_load_checkpoint("model.safetensors", &recs, &err)) { puts(err.msg); return 1; }
 *     const pbw_record *r = pbw_records_find(&recs, "visual.proj");
 *     float *w = malloc(r->numel * sizeof(float));
 *     pbw_record_to_f32(r, w, &err);
 *     pbw_records_free(&recs);            // data pointers are invalid after this
 *
 * Ownership: the pbw_records owns names, data (mmap or heap) and its backing store. Records
 * stay valid until pbw_records_free. `data` is aligned to the element size (readers copy data
 * that is not), and NULL when numel is 0. On failure a loader leaves *out zeroed (nothing to
 * free); pbw_records_free on a zeroed struct is a no-op. Names of nested containers are joined with '.', as
 * PyTorch's state_dict does ("g_ema.convs.0.conv.weight"); list items use their index.
 */
#ifndef PBW_RECORDS_H
#define PBW_RECORDS_H

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_RECORD_MAX_DIMS 8

typedef struct pbw_record {
    char *name;
    pbw_dtype dtype;
    int ndim;
    int64_t shape[PBW_RECORD_MAX_DIMS];
    int64_t numel;
    const void *data; /* numel * pbw_dtype_size(dtype) bytes, C order, little-endian */
    size_t nbytes;
} pbw_record;

/* A non-tensor scalar found in a checkpoint (e.g. an int or float at top level), kept so that
 * callers can read small metadata such as `latent_avg` shapes or `args.size`. */
typedef struct pbw_scalar {
    char *name;
    int is_float;
    double value;
} pbw_scalar;

typedef struct pbw_records {
    pbw_record *items;
    size_t count;
    pbw_scalar *scalars;
    size_t nscalars;
    /* backing storage, private to the readers */
    void *map;           /* mmap'd file or NULL */
    size_t map_len;
    void **blocks;       /* heap blocks to free */
    size_t nblocks, cap_blocks;
    size_t cap_items, cap_scalars;
} pbw_records;

void pbw_records_free(pbw_records *r);
const pbw_record *pbw_records_find(const pbw_records *r, const char *name);

/* Converts a record's data to float32 (numel floats at dst). */
int pbw_record_to_f32(const pbw_record *rec, float *dst, pbw_err *err);

/* Detects the format by content (safetensors header, zip magic, legacy pickle magic) and loads.
 * Fails with a message naming the path and what is wrong. */
int pbw_load_checkpoint(const char *path, pbw_records *out, pbw_err *err);

/* --- safetensors (pbw_safetensors.c) ---
 * The file is mmap'd; records point into the map. F32, F16, BF16 and the integer types are
 * accepted; the header is checked entirely (offsets inside the data section, no overlap of a
 * tensor with the header, sizes matching shapes, no duplicate names). */
int pbw_safetensors_load(const char *path, pbw_records *out, pbw_err *err);
/* Parses an in-memory file; records point into buf, which must outlive them. */
int pbw_safetensors_parse(const void *buf, size_t len, pbw_records *out, pbw_err *err);
/* Writes records as a safetensors file (atomically: temporary name, then rename). */
int pbw_safetensors_save(const char *path, const pbw_record *recs, size_t n, pbw_err *err);

/* --- PyTorch checkpoints (pbw_torch.c, pbw_pickle.c) ---
 * Both the zip format (torch.save since 1.6) and the legacy format (pickle + raw storages).
 * The pickle reader executes nothing: it knows dicts, OrderedDicts, lists, tuples, scalars,
 * strings, tensors and storages, plus TorchScript modules (torch.jit.save archives) and
 * argparse.Namespace, whose attributes it keeps like a dict's items; it refuses any other
 * global with a message naming it (the list is in pbw_pickle.h). A file holding one bare
 * tensor gives one record named "". Ints and floats become scalars; strings, None and bools
 * are skipped. Records from a legacy file point into its map, from a zip file into heap
 * copies of its entries; non-contiguous tensors are copied into C order. */
int pbw_torch_load(const char *path, pbw_records *out, pbw_err *err);
int pbw_torch_parse(const void *buf, size_t len, pbw_records *out, pbw_err *err);

/* --- helpers for readers (pbw_records.c) ---
 * A reader fills a zeroed pbw_records with these and calls pbw_records_free on failure, so a
 * caller never sees a half-built result. */

/* Appends a zeroed record named `name` (copied) and returns it, or NULL (err set) when out of
 * memory. The pointer is valid until the next append. */
pbw_record *pbw_records_push(pbw_records *r, const char *name, pbw_err *err);
int pbw_records_push_scalar(pbw_records *r, const char *name, int is_float, double value,
                            pbw_err *err);
/* Hands a malloc'd block to r, freed by pbw_records_free. On failure the block is freed here. */
int pbw_records_own(pbw_records *r, void *block, pbw_err *err);
/* Makes rec->data aligned to its element size, copying it into an owned block if it is not. */
int pbw_records_align(pbw_records *r, pbw_record *rec, pbw_err *err);
/* Fails naming the first name that occurs twice among records and scalars. */
int pbw_records_check_unique(const pbw_records *r, pbw_err *err);

#ifdef __cplusplus
}
#endif
#endif
