/* pbw_cache.h: small text files of choices that a later process reads back instead of choosing
 * again (cuDNN's measured convolution algorithms, src/cuda/pbw_cuda_conv.cu). Not a general
 * key-value store: a file holds lines of one kind for one GPU model and one library version,
 * and a line is a tag and a fixed number of unsigned fields.
 *
 *     char path[4096];
 *     if (pbw_cache_path("cudnn", "NVIDIA H100 80GB HBM3", 91400, path, sizeof path) == 0) {
 *         uint64_t v[3];
 *         // ... for each line of the file:
 *         if (pbw_cache_parse_line(line, "v1", v, 3) == 0) use(v);
 *         // ... a new choice:
 *         char line[64];
 *         const uint64_t w[3] = {12800, 768, 0x1f};
 *         if (pbw_cache_format_line(line, sizeof line, "v1", w, 3, 2) == 0)
 *             pbw_cache_append(path, line); // "v1 12800 768 0x1f\n"
 *     }
 *
 * The folder is $PBW_CACHE_DIR, else $XDG_CACHE_HOME/pbw, else $HOME/.cache/pbw. A file that
 * cannot be read or written only makes the next process slower; callers check what a line says
 * (cuDNN's workspace query of an algorithm) before they trust it.
 */
#ifndef PBW_CACHE_H
#define PBW_CACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The path "<folder>/<kind>-<gpu>-<version>.txt" in out (n bytes), the GPU's name with every
 * character but letters and digits made '_'. 0; -1 when no folder is known (none of the
 * variables is set) or the path does not fit. */
int pbw_cache_path(const char *kind, const char *gpu, size_t version, char *out, size_t n);

/* Appends one line to the file, making its folders first. One write of the whole line, so the
 * lines of processes appending at once are not interleaved. 0; -1 when it could not. */
int pbw_cache_append(const char *path, const char *line);

/* A whole file (a library's serialized plan): written to a temporary file beside path, then
 * renamed over it, so that a reader never sees half of it; folders made first. 0; -1 when it
 * could not (nothing left behind). */
int pbw_cache_write_file(const char *path, const void *data, size_t n);

/* The whole file at path, at most max bytes, with a 0 byte after its end (malloc'd; the
 * caller frees it) and its length in *n; NULL when it does not exist, cannot be read or is
 * larger than max. */
void *pbw_cache_read_file(const char *path, size_t max, size_t *n);

/* Reads line as tag followed by exactly n fields, each a decimal number or 0x and hexadecimal
 * digits (at most 64 bits), separated by single spaces, then "\n" and the end: a last line
 * without its newline may have been cut short by a failed write, and a cut field would still
 * read as a number. 0 with the fields in v; -1 (v partly written) for anything else. */
int pbw_cache_parse_line(const char *line, const char *tag, uint64_t *v, int n);

/* Writes the line pbw_cache_parse_line reads: tag, the n fields (decimal, those from hex_from
 * on as 0x and hexadecimal digits), "\n". 0; -1 when it does not fit in out (n_out bytes). */
int pbw_cache_format_line(char *out, size_t n_out, const char *tag, const uint64_t *v, int n,
                          int hex_from);

#ifdef __cplusplus
}
#endif

#endif
