/* pbw_image.c: PNG (libpng) and JPEG (libjpeg) decoding, PNG encoding (see pbw_image.h).
 *
 * Both libraries report errors by longjmp. Every object that must be released after a jump
 * lives in a struct reached through a pointer that does not change after setjmp, so there are
 * no clobbered locals; the jump lands in a single cleanup path. */
#include "pbw_image.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h> /* after stdio.h: it uses FILE */
#include <jerror.h>
#include <png.h>

#include "pbw_file.h"

#define IMAGE_MAX_FILE (1u << 30)

void pbw_image_free(pbw_image *im) {
    if (!im) return;
    free(im->data);
    memset(im, 0, sizeof *im);
}

static int check_dims(unsigned long w, unsigned long h, pbw_err *err) {
    if (w == 0 || h == 0) return pbw_err_set(err, "image has no pixels");
    if (w > PBW_IMAGE_MAX_SIDE || h > PBW_IMAGE_MAX_SIDE || (uint64_t)w * h > PBW_IMAGE_MAX_PIXELS)
        return pbw_err_set(err, "image of %lux%lu pixels is larger than allowed (%d per side, "
                                "%u in all)",
                           w, h, PBW_IMAGE_MAX_SIDE, PBW_IMAGE_MAX_PIXELS);
    return 0;
}

/* ---- PNG ---- */

typedef struct {
    const unsigned char *buf;
    size_t len, pos;
    pbw_err *err;
    png_structp png;
    png_infop info;
    unsigned char *data;
    png_bytep *rows;
} png_job;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_job *j = png_get_error_ptr(png);
    pbw_err_set(j->err, "PNG: %s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* warnings (e.g. bad ancillary chunks) do not stop decoding */
}

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    png_job *j = png_get_io_ptr(png);
    if (n > j->len - j->pos) png_error(png, "file truncated");
    memcpy(out, j->buf + j->pos, n);
    j->pos += n;
}

static int png_decode(png_job *j, pbw_image *out) {
    if (setjmp(png_jmpbuf(j->png))) return -1;
    png_set_read_fn(j->png, j, png_read_mem);
    png_set_user_limits(j->png, PBW_IMAGE_MAX_SIDE, PBW_IMAGE_MAX_SIDE);
    png_read_info(j->png, j->info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(j->png, j->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (check_dims(w, h, j->err)) return -1;
    int alpha = (ctype & PNG_COLOR_MASK_ALPHA) || png_get_valid(j->png, j->info, PNG_INFO_tRNS);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(j->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(j->png);
    if (png_get_valid(j->png, j->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(j->png);
    if (depth == 16) png_set_strip_16(j->png);
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(j->png);
    png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);
    int c = alpha ? 4 : 3;
    if (png_get_rowbytes(j->png, j->info) != (size_t)w * (size_t)c)
        png_error(j->png, "unexpected row layout after conversion");
    j->data = malloc((size_t)w * h * (size_t)c);
    j->rows = malloc(h * sizeof *j->rows);
    if (!j->data || !j->rows) png_error(j->png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) j->rows[y] = j->data + (size_t)y * w * (size_t)c;
    png_read_image(j->png, j->rows);
    png_read_end(j->png, NULL);
    out->w = (int)w;
    out->h = (int)h;
    out->c = c;
    out->data = j->data;
    j->data = NULL;
    return 0;
}

int pbw_image_decode_png(const void *buf, size_t len, pbw_image *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    if (len < 8 || png_sig_cmp(buf, 0, 8)) return pbw_err_set(err, "not a PNG file");
    png_job j = {buf, len, 0, err, NULL, NULL, NULL, NULL};
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
    if (!j.png) return pbw_err_set(err, "PNG: out of memory");
    j.info = png_create_info_struct(j.png);
    int rc = j.info ? png_decode(&j, out) : pbw_err_set(err, "PNG: out of memory");
    png_destroy_read_struct(&j.png, j.info ? &j.info : NULL, NULL);
    free(j.data);
    free(j.rows);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr mgr; /* first: libjpeg hands us a pointer to it */
    jmp_buf jump;
    pbw_err *err;
} jpeg_err_ctx;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    jpeg_err_ctx jerr;
    struct jpeg_progress_mgr progress;
    unsigned char *data, *row;
    int created;
} jpeg_job;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err_ctx *e = (jpeg_err_ctx *)cinfo->err;
    char msg[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, msg);
    pbw_err_set(e->err, "JPEG: %s", msg);
    longjmp(e->jump, 1);
}

/* Warnings are ignored except a premature end of data: a truncated file is an error. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_on_error(cinfo);
}

/* Progressive files with very many scans cost time without bound; real ones have < 20. */
static void jpeg_on_progress(j_common_ptr cinfo) {
    if (cinfo->is_decompressor && ((j_decompress_ptr)cinfo)->input_scan_number > 200) {
        jpeg_err_ctx *e = (jpeg_err_ctx *)cinfo->err;
        pbw_err_set(e->err, "JPEG: too many scans");
        longjmp(e->jump, 1);
    }
}

static int jpeg_decode(jpeg_job *j, const unsigned char *buf, size_t len, pbw_image *out) {
    struct jpeg_decompress_struct *ci = &j->cinfo;
    if (setjmp(j->jerr.jump)) return -1;
    jpeg_create_decompress(ci);
    j->created = 1;
    j->progress.progress_monitor = jpeg_on_progress;
    ci->progress = &j->progress;
    ci->mem->max_memory_to_use = 1024L << 20;
    jpeg_mem_src(ci, buf, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    if (check_dims(ci->image_width, ci->image_height, j->jerr.err)) return -1;
    int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    ci->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(ci);
    size_t w = ci->output_width, h = ci->output_height, nc = (size_t)ci->output_components;
    if (nc != (cmyk ? 4u : 3u)) {
        pbw_err_set(j->jerr.err, "JPEG: unexpected number of components");
        return -1;
    }
    j->data = malloc(w * h * 3);
    j->row = malloc(w * nc);
    if (!j->data || !j->row) {
        pbw_err_set(j->jerr.err, "JPEG: out of memory");
        return -1;
    }
    while (ci->output_scanline < h) {
        unsigned char *dst = j->data + (size_t)ci->output_scanline * w * 3;
        JSAMPROW row = cmyk ? j->row : dst;
        if (jpeg_read_scanlines(ci, &row, 1) != 1) {
            pbw_err_set(j->jerr.err, "JPEG: truncated data");
            return -1;
        }
        if (cmyk) {
            /* Adobe writes CMYK inverted (0 = full ink); otherwise 255 = full ink */
            int inv = ci->saw_Adobe_marker;
            for (size_t x = 0; x < w; x++) {
                const unsigned char *p = j->row + 4 * x;
                unsigned k = inv ? p[3] : 255u - p[3];
                for (int ch = 0; ch < 3; ch++) {
                    unsigned v = inv ? p[ch] : 255u - p[ch];
                    dst[3 * x + (size_t)ch] = (unsigned char)((v * k + 127) / 255);
                }
            }
        }
    }
    jpeg_finish_decompress(ci);
    out->w = (int)w;
    out->h = (int)h;
    out->c = 3;
    out->data = j->data;
    j->data = NULL;
    return 0;
}

int pbw_image_decode_jpeg(const void *buf, size_t len, pbw_image *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    if (len < 3 || memcmp(buf, "\xff\xd8\xff", 3) != 0) return pbw_err_set(err, "not a JPEG file");
    jpeg_job *j = calloc(1, sizeof *j);
    if (!j) return pbw_err_set(err, "JPEG: out of memory");
    j->cinfo.err = jpeg_std_error(&j->jerr.mgr);
    j->jerr.mgr.error_exit = jpeg_on_error;
    j->jerr.mgr.emit_message = jpeg_on_message;
    j->jerr.err = err;
    int rc = jpeg_decode(j, buf, len, out);
    if (j->created) jpeg_destroy_decompress(&j->cinfo);
    free(j->data);
    free(j->row);
    free(j);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- files ---- */

int pbw_image_read(const char *path, pbw_image *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    void *buf;
    size_t len;
    if (pbw_file_read(path, IMAGE_MAX_FILE, &buf, &len, err)) return -1;
    int rc;
    if (len >= 8 && png_sig_cmp(buf, 0, 8) == 0) rc = pbw_image_decode_png(buf, len, out, err);
    else if (len >= 3 && memcmp(buf, "\xff\xd8\xff", 3) == 0)
        rc = pbw_image_decode_jpeg(buf, len, out, err);
    else rc = pbw_err_set(err, "not a PNG or JPEG file");
    free(buf);
    if (rc) return pbw_err_prefix(err, "'%s': ", path);
    return 0;
}

typedef struct {
    png_structp png;
    png_infop info;
    pbw_err *err;
} png_wjob;

static int png_encode(png_wjob *j, FILE *fp, const pbw_image *im) {
    if (setjmp(png_jmpbuf(j->png))) return -1;
    png_init_io(j->png, fp);
    png_set_IHDR(j->png, j->info, (png_uint_32)im->w, (png_uint_32)im->h, 8,
                 im->c == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(j->png, j->info);
    for (int y = 0; y < im->h; y++)
        png_write_row(j->png, im->data + (size_t)y * (size_t)im->w * (size_t)im->c);
    png_write_end(j->png, NULL);
    return 0;
}

int pbw_image_write_png(const char *path, const pbw_image *im, pbw_err *err) {
    if ((im->c != 3 && im->c != 4) || !im->data || im->w <= 0 || im->h <= 0 ||
        check_dims((unsigned long)im->w, (unsigned long)im->h, err))
        return pbw_err_set(err, "cannot write '%s': image must be RGB or RGBA with pixels", path);
    pbw_file_tmp t;
    if (pbw_file_tmp_open(&t, path, err)) return -1;
    png_wjob j = {NULL, NULL, err};
    j.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
    j.info = j.png ? png_create_info_struct(j.png) : NULL;
    int rc = j.info ? png_encode(&j, t.fp, im) : pbw_err_set(err, "PNG: out of memory");
    png_destroy_write_struct(&j.png, &j.info);
    if (rc) {
        pbw_file_tmp_abort(&t);
        return pbw_err_prefix(err, "cannot write '%s': ", path);
    }
    return pbw_file_tmp_commit(&t, err);
}
