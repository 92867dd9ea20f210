/* pbw_image.h: PNG and JPEG reading, PNG writing, as 8-bit interleaved RGB or RGBA.
 *
 *     pbw_image im; pbw_err err;
 *     if (pbw_image_read("photo.jpg", &im, &err)) { puts(err.msg); return 1; }
 *     // im.w x im.h pixels of im.c (3 or 4) bytes, row-major, top row first
 *     pbw_image_write_png("out.png", &im, &err);       // atomic
 *     pbw_image_free(&im);
 *
 * Any PNG (palette, gray, 1-16 bits, interlaced, with or without alpha or tRNS) becomes RGB,
 * or RGBA when the file has alpha; 16-bit samples keep their high byte. JPEG grayscale, YCbCr,
 * CMYK and YCCK become RGB. Images larger than PBW_IMAGE_MAX_SIDE on a side or than
 * PBW_IMAGE_MAX_PIXELS in all are refused before anything is allocated; damaged or truncated
 * files are refused with a message (no partial image). On failure *out is zeroed.
 * im.data is malloc'd and owned by the pbw_image.
 */
#ifndef PBW_IMAGE_H
#define PBW_IMAGE_H

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_IMAGE_MAX_SIDE 16384
#define PBW_IMAGE_MAX_PIXELS (1u << 28)

typedef struct pbw_image {
    int w, h, c; /* c: 3 (RGB) or 4 (RGBA) */
    uint8_t *data;
} pbw_image;

/* Reads a PNG or JPEG file, chosen by its first bytes. */
int pbw_image_read(const char *path, pbw_image *out, pbw_err *err);
/* From memory (for fuzzing and embedded data); buf is not kept. */
int pbw_image_decode_png(const void *buf, size_t len, pbw_image *out, pbw_err *err);
int pbw_image_decode_jpeg(const void *buf, size_t len, pbw_image *out, pbw_err *err);
/* Writes an 8-bit RGB (c = 3) or RGBA (c = 4) PNG, atomically. */
int pbw_image_write_png(const char *path, const pbw_image *im, pbw_err *err);
void pbw_image_free(pbw_image *im);

#ifdef __cplusplus
}
#endif
#endif
