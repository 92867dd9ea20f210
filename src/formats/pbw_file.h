/* pbw_file.h: whole-file reads, read-only maps and atomic writes.
 *
 *     void *buf; size_t len; pbw_err err;
 *     if (pbw_file_read("config.json", 1 << 20, &buf, &len, &err)) { puts(err.msg); return 1; }
 *     ...; free(buf);
 *
 *     if (pbw_file_write_atomic("out.bin", data, n, &err)) puts(err.msg);   // all or nothing
 *
 *     pbw_file_tmp t;                       // streaming writers (PNG, safetensors)
 *     if (pbw_file_tmp_open(&t, "out.png", &err)) return -1;
 *     fwrite(..., t.fp);                    // on a write error: pbw_file_tmp_abort(&t)
 *     if (pbw_file_tmp_commit(&t, &err)) return -1;   // fsync + rename; removes the temp on failure
 *
 * Atomic writes go to "<path>.tmp.XXXXXX" in the same directory, are flushed and fsync'd,
 * then renamed over <path>; on any failure the temporary file is removed and <path> is left as
 * it was. New files get mode 0644 (the temporary is created 0600 by mkstemp).
 * Every function returns 0 on success, -1 with a message naming the path on failure.
 */
#ifndef PBW_FILE_H
#define PBW_FILE_H

#include <stdio.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the whole regular file at path into a malloc'd buffer (*data, freed by the caller with
 * free()); *len is its size. A NUL byte is stored after the data (not counted in *len), so text
 * files can be used as C strings. Fails if the file is larger than max_len bytes. */
int pbw_file_read(const char *path, size_t max_len, void **data, size_t *len, pbw_err *err);

/* Maps the whole file read-only (private). *data is NULL and *len 0 for an empty file. Release
 * with pbw_file_unmap(*data, *len). */
int pbw_file_map(const char *path, void **data, size_t *len, pbw_err *err);
void pbw_file_unmap(void *data, size_t len);

/* Writes len bytes to path atomically (see above). */
int pbw_file_write_atomic(const char *path, const void *data, size_t len, pbw_err *err);

/* A temporary file that becomes `path` on commit. fp is an ordinary stdio stream. */
typedef struct pbw_file_tmp {
    FILE *fp;
    char *path;     /* final name */
    char *tmp_path; /* temporary name */
} pbw_file_tmp;

int pbw_file_tmp_open(pbw_file_tmp *t, const char *path, pbw_err *err);
/* Flushes, fsyncs, closes and renames. On failure the temporary is removed. Either way t is
 * released and must not be used again. */
int pbw_file_tmp_commit(pbw_file_tmp *t, pbw_err *err);
/* Closes and removes the temporary; path is untouched. Safe on a zeroed or released t. */
void pbw_file_tmp_abort(pbw_file_tmp *t);

#ifdef __cplusplus
}
#endif
#endif
