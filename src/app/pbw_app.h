/* pbw_app.h: the pbw program's commands and their shared argument helpers. Each command is a
 * function `int cmd_NAME(int argc, char **argv)` in src/app/cmd_NAME.c that prints its own
 * --help, reports errors naming the bad argument or file, and returns the exit status. */
#ifndef PBW_APP_H
#define PBW_APP_H

#include <stdint.h>

int cmd_clip(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_smoke(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_version(int argc, char **argv);

/* True when argv holds -h or --help. */
int app_wants_help(int argc, char **argv);
/* Parses a whole decimal integer in [lo, hi]; prints "pbw CMD: bad value for OPT" and
 * returns -1 otherwise. */
int app_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int app_parse_float(const char *cmd, const char *opt, const char *s, double *out);
/* Value of option argv[*i] (advancing *i), or NULL after printing that it is missing. */
const char *app_value(const char *cmd, int argc, char **argv, int *i);

#endif
