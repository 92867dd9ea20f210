/* cmd_generate.c: `pbw generate` makes a whole StyleGAN2 image match words: Paint by Word's
 * loop on z (or w) without a mask or reconstruction loss. Options, progress, history and log
 * are shared with `pbw edit` (cmd_edit.c, app_paint_main). */
#include "app/pbw_app.h"

int cmd_generate(int argc, char **argv) { return app_paint_main(argc, argv, 0); }
