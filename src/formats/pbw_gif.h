/* pbw_gif.h: animated GIF writing (giflib), frame by frame, atomically: the history of a
 * painting run (`pbw edit --history run.gif`).
 *
 *     pbw_gif *gif; pbw_err err;
 *     if (pbw_gif_open(&gif, "run.gif", 256, 256, 10, &err)) { puts(err.msg); return 1; }
 *     for (...) if (pbw_gif_add(gif, rgb, &err)) ...;    // rgb: w*h*3 bytes, top row first
 *     if (pbw_gif_close(gif, &err)) ...;                   // renames over run.gif; frees
 *     // or pbw_gif_abort(gif): removes the temporary file, leaves run.gif as it was
 *
 * Each frame gets its own 256-color palette (giflib's median-cut GifQuantizeBuffer), a delay of
 * delay_cs hundredths of a second, and the file loops forever (NETSCAPE2.0 extension). Frames
 * stream to "<path>.tmp.XXXXXX" as they come (memory does not grow with the run's length) and
 * the file appears under its name only at pbw_gif_close (pbw_file.h's atomic writes).
 * Ownership: pbw_gif_close and pbw_gif_abort free the writer, whatever they return.
 */
#ifndef PBW_GIF_H
#define PBW_GIF_H

#include <stdint.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_gif pbw_gif;

int pbw_gif_open(pbw_gif **out, const char *path, int w, int h, int delay_cs, pbw_err *err);
int pbw_gif_add(pbw_gif *g, const uint8_t *rgb, pbw_err *err);
int pbw_gif_frames(const pbw_gif *g);
int pbw_gif_close(pbw_gif *g, pbw_err *err);
void pbw_gif_abort(pbw_gif *g);

#ifdef __cplusplus
}
#endif
#endif
