/* pbw_gif.c: animated GIF writer over giflib; see pbw_gif.h. */
#include "formats/pbw_gif.h"

#include <gif_lib.h>
#include <stdlib.h>
#include <string.h>

#include "formats/pbw_file.h"

struct pbw_gif {
    pbw_file_tmp tmp;
    GifFileType *gf;
    int w, h, delay_cs, frames;
    int write_failed;
    uint8_t *r, *g, *b, *idx; /* planes and indices of one frame */
};

static int write_fn(GifFileType *gf, const GifByteType *buf, int len) {
    pbw_gif *g = gf->UserData;
    if (fwrite(buf, 1, (size_t)len, g->tmp.fp) != (size_t)len) {
        g->write_failed = 1;
        return 0;
    }
    return len;
}

static void release(pbw_gif *g) {
    free(g->r);
    free(g->g);
    free(g->b);
    free(g->idx);
    free(g);
}

void pbw_gif_abort(pbw_gif *g) {
    if (!g) return;
    if (g->gf) EGifCloseFile(g->gf, NULL); /* writes only the trailer into the doomed file */
    pbw_file_tmp_abort(&g->tmp);
    release(g);
}

int pbw_gif_open(pbw_gif **out, const char *path, int w, int h, int delay_cs, pbw_err *err) {
    *out = NULL;
    if (w < 1 || h < 1 || w > 65535 || h > 65535)
        return pbw_err_set(err, "%s: a GIF frame of %dx%d is not possible", path, w, h);
    pbw_gif *g = calloc(1, sizeof *g);
    if (!g) return pbw_err_set(err, "%s: out of memory", path);
    g->w = w;
    g->h = h;
    g->delay_cs = delay_cs < 0 ? 0 : (delay_cs > 65535 ? 65535 : delay_cs);
    size_t n = (size_t)w * h;
    g->r = malloc(n), g->g = malloc(n), g->b = malloc(n), g->idx = malloc(n);
    if (!g->r || !g->g || !g->b || !g->idx) {
        release(g);
        return pbw_err_set(err, "%s: out of memory", path);
    }
    if (pbw_file_tmp_open(&g->tmp, path, err)) {
        release(g);
        return -1;
    }
    int e = 0;
    g->gf = EGifOpen(g, write_fn, &e);
    if (!g->gf) {
        pbw_err_set(err, "%s: giflib: %s", path, GifErrorString(e));
        pbw_file_tmp_abort(&g->tmp);
        release(g);
        return -1;
    }
    EGifSetGifVersion(g->gf, true);
    /* no global palette: every frame carries its own */
    unsigned char loop[3] = {1, 0, 0}; /* sub-block 1: loop count 0 = forever */
    if (EGifPutScreenDesc(g->gf, w, h, 8, 0, NULL) == GIF_ERROR ||
        EGifPutExtensionLeader(g->gf, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
        EGifPutExtensionBlock(g->gf, 11, "NETSCAPE2.0") == GIF_ERROR ||
        EGifPutExtensionBlock(g->gf, 3, loop) == GIF_ERROR ||
        EGifPutExtensionTrailer(g->gf) == GIF_ERROR || g->write_failed) {
        pbw_err_set(err, "%s: writing the GIF header failed", path);
        pbw_gif_abort(g);
        return -1;
    }
    *out = g;
    return 0;
}

int pbw_gif_add(pbw_gif *g, const uint8_t *rgb, pbw_err *err) {
    const size_t n = (size_t)g->w * g->h;
    for (size_t i = 0; i < n; i++) {
        g->r[i] = rgb[3 * i];
        g->g[i] = rgb[3 * i + 1];
        g->b[i] = rgb[3 * i + 2];
    }
    GifColorType pal[256];
    memset(pal, 0, sizeof pal);
    int ncolors = 256;
    if (GifQuantizeBuffer((unsigned)g->w, (unsigned)g->h, &ncolors, g->r, g->g, g->b, g->idx,
                          pal) == GIF_ERROR)
        return pbw_err_set(err, "%s: color quantization failed", g->tmp.path);
    ColorMapObject *map = GifMakeMapObject(256, pal);
    if (!map) return pbw_err_set(err, "%s: out of memory", g->tmp.path);
    GraphicsControlBlock gcb = {.DisposalMode = DISPOSE_DO_NOT,
                                .UserInputFlag = false,
                                .DelayTime = g->delay_cs,
                                .TransparentColor = NO_TRANSPARENT_COLOR};
    GifByteType ext[4];
    size_t elen = EGifGCBToExtension(&gcb, ext);
    int bad = EGifPutExtension(g->gf, GRAPHICS_EXT_FUNC_CODE, (int)elen, ext) == GIF_ERROR ||
              EGifPutImageDesc(g->gf, 0, 0, g->w, g->h, false, map) == GIF_ERROR;
    for (int y = 0; y < g->h && !bad; y++)
        bad = EGifPutLine(g->gf, g->idx + (size_t)y * g->w, g->w) == GIF_ERROR;
    GifFreeMapObject(map);
    if (bad || g->write_failed) return pbw_err_set(err, "%s: writing frame %d failed", g->tmp.path, g->frames);
    g->frames++;
    return 0;
}

int pbw_gif_frames(const pbw_gif *g) { return g->frames; }

int pbw_gif_close(pbw_gif *g, pbw_err *err) {
    int e = 0;
    int bad = EGifCloseFile(g->gf, &e) == GIF_ERROR || g->write_failed;
    g->gf = NULL;
    if (bad) {
        pbw_err_set(err, "%s: finishing the GIF failed", g->tmp.path);
        pbw_file_tmp_abort(&g->tmp);
        release(g);
        return -1;
    }
    int rc = pbw_file_tmp_commit(&g->tmp, err);
    release(g);
    return rc;
}
