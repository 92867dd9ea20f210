/* test_images.c: PNG/JPEG decoding against PIL's pixels (tools/make_format_fixtures.py), PNG
 * round trips, and refusal of damaged or oversized files.
 *
 * PNG pixels must match exactly (lossless). JPEG pixels may differ by up to 2 levels: PIL and
 * pbw use the same libjpeg, but builds may differ in IDCT/upsampling SIMD paths, and our CMYK
 * to RGB conversion rounds (v*k+127)/255 where PIL truncates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "formats/pbw_file.h"
#include "formats/pbw_image.h"
#include "formats/pbw_npy.h"
#include "pbw_test.h"

#define FIX "tests/fixtures/formats/"

static void compare_with_pil(const char *file, const char *npy, int tol) {
    pbw_image im;
    pbw_npy want;
    pbw_err err;
    CHECK_MSG(pbw_image_read(file, &im, &err) == 0, "%s", err.msg);
    CHECK_MSG(pbw_npy_read(npy, &want, &err) == 0, "%s", err.msg);
    if (!im.data || !want.data) goto done;
    CHECK_MSG(want.ndim == 3 && want.shape[0] == im.h && want.shape[1] == im.w &&
                  want.shape[2] == im.c,
              "%s: %dx%dx%d, PIL gives %lldx%lldx%lld", file, im.h, im.w, im.c,
              (long long)want.shape[0], (long long)want.shape[1], (long long)want.shape[2]);
    if (want.numel != (int64_t)im.w * im.h * im.c) goto done;
    int worst = 0;
    for (int64_t i = 0; i < want.numel; i++) {
        int d = abs((int)im.data[i] - (int)want.data[i]);
        if (d > worst) worst = d;
    }
    CHECK_MSG(worst <= tol, "%s: worst difference %d > %d", file, worst, tol);
done:
    pbw_image_free(&im);
    pbw_npy_free(&want);
}

PBW_TEST(images_png_read) {
    compare_with_pil(FIX "img_rgb.png", FIX "img_rgb_png.npy", 0);
    compare_with_pil(FIX "img_rgba.png", FIX "img_rgba_png.npy", 0);
    compare_with_pil(FIX "img_palette.png", FIX "img_palette_png.npy", 0);
    compare_with_pil(FIX "img_gray16.png", FIX "img_gray16_png.npy", 0);
    compare_with_pil(FIX "img_interlaced.png", FIX "img_interlaced_png.npy", 0);
}

PBW_TEST(images_jpeg_read) {
    compare_with_pil(FIX "img_rgb.jpg", FIX "img_rgb_jpg.npy", 2);
    compare_with_pil(FIX "img_cmyk.jpg", FIX "img_cmyk_jpg.npy", 2);
    pbw_image im;
    pbw_err err;
    CHECK_MSG(pbw_image_read(FIX "img_gray.jpg", &im, &err) == 0, "%s", err.msg);
    CHECK(im.c == 3 && im.w == 24 && im.h == 16);
    pbw_npy want;
    CHECK(pbw_npy_read(FIX "img_gray_jpg.npy", &want, &err) == 0);
    /* PIL keeps one gray channel (shape h x w); we replicate it to RGB */
    if (im.data && want.data && want.numel == 24 * 16) {
        int worst = 0;
        for (int i = 0; i < 24 * 16; i++)
            for (int ch = 0; ch < 3; ch++) {
                int d = abs((int)im.data[3 * i + ch] - (int)want.data[i]);
                if (d > worst) worst = d;
            }
        CHECK_MSG(worst <= 2, "gray jpeg: worst difference %d", worst);
    }
    pbw_npy_free(&want);
    pbw_image_free(&im);
}

PBW_TEST(images_png_roundtrip) {
    char path[] = "/tmp/pbw_test_png_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    for (int c = 3; c <= 4; c++) {
        pbw_image im = {37, 19, c, malloc(37 * 19 * (size_t)c)};
        for (int i = 0; i < 37 * 19 * c; i++) im.data[i] = (uint8_t)(i * 7 + i / 5);
        pbw_err err;
        CHECK_MSG(pbw_image_write_png(path, &im, &err) == 0, "%s", err.msg);
        pbw_image back;
        CHECK_MSG(pbw_image_read(path, &back, &err) == 0, "%s", err.msg);
        CHECK(back.w == 37 && back.h == 19 && back.c == c);
        if (back.data) CHECK(memcmp(back.data, im.data, 37 * 19 * (size_t)c) == 0);
        pbw_image_free(&back);
        pbw_image_free(&im);
    }
    pbw_image bad = {0, 0, 3, NULL};
    pbw_err err;
    CHECK(pbw_image_write_png(path, &bad, &err) != 0);
    unlink(path);
}

typedef int (*decode_fn)(const void *, size_t, pbw_image *, pbw_err *);

static void check_damage(const char *path, decode_fn decode) {
    void *full;
    size_t len;
    pbw_err err;
    CHECK(pbw_file_read(path, 1 << 20, &full, &len, &err) == 0);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        unsigned char *b = malloc(cut ? cut : 1); /* exact size so ASan sees overreads */
        memcpy(b, full, cut);
        pbw_image im;
        if (decode(b, cut, &im, &err) == 0) {
            accepted++;
            pbw_image_free(&im);
        }
        free(b);
    }
    CHECK_MSG(accepted == 0, "%s: %d truncated copies accepted", path, accepted);
    unsigned char *b = full;
    for (size_t i = 0; i < len; i++) { /* flipped bytes: no crash, no leak */
        unsigned char keep = b[i];
        b[i] ^= 0xff;
        pbw_image im;
        if (decode(b, len, &im, &err) == 0) pbw_image_free(&im);
        b[i] = keep;
    }
    free(full);
}

PBW_TEST(images_damaged_files) {
    check_damage(FIX "img_rgb.png", pbw_image_decode_png);
    check_damage(FIX "img_palette.png", pbw_image_decode_png);
    check_damage(FIX "img_interlaced.png", pbw_image_decode_png);
    check_damage(FIX "img_rgb.jpg", pbw_image_decode_jpeg);
    check_damage(FIX "img_cmyk.jpg", pbw_image_decode_jpeg);
    pbw_image im;
    pbw_err err;
    CHECK(pbw_image_decode_png("not a png at all", 16, &im, &err) != 0);
    CHECK(pbw_image_decode_jpeg("\xff\xd8\xff", 3, &im, &err) != 0);
    CHECK(pbw_image_read(FIX "state.safetensors", &im, &err) != 0 && strstr(err.msg, "PNG or JPEG"));
}

static void be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

PBW_TEST(images_oversized_refused) {
    /* a PNG whose IHDR (with a valid CRC) claims 20000 x 20000 pixels */
    unsigned char png[8 + 25] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char *c = png + 8;
    be32(c, 13);
    memcpy(c + 4, "IHDR", 4);
    be32(c + 8, 20000);
    be32(c + 12, 20000);
    c[16] = 8; /* depth */
    c[17] = 2; /* RGB */
    be32(c + 21, (uint32_t)crc32(0, c + 4, 17));
    pbw_image im;
    pbw_err err;
    CHECK(pbw_image_decode_png(png, sizeof png, &im, &err) != 0 && im.data == NULL);
    /* a JPEG whose SOF claims 60000 x 60000 */
    void *buf;
    size_t len;
    CHECK(pbw_file_read(FIX "img_rgb.jpg", 1 << 20, &buf, &len, &err) == 0);
    unsigned char *b = buf;
    int patched = 0;
    for (size_t i = 0; i + 9 < len; i++)
        if (b[i] == 0xff && (b[i + 1] == 0xc0 || b[i + 1] == 0xc2)) {
            b[i + 5] = 0xea, b[i + 6] = 0x60, b[i + 7] = 0xea, b[i + 8] = 0x60;
            patched = 1;
            break;
        }
    CHECK(patched);
    CHECK(pbw_image_decode_jpeg(b, len, &im, &err) != 0 && strstr(err.msg, "larger than"));
    free(buf);
}
