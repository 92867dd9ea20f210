/* pbw_test.h: a tiny test framework. Each test file defines tests with PBW_TEST(name); the
 * runner (tests/test_main.c) runs all of them, or those whose name contains argv[1], and prints
 * "N passed, N failed" as its last line. A test fails if any CHECK fails; checks print the file,
 * line and the values compared.
 *
 * Tests find shared data at ../shared relative to the repository root; the runner is started
 * from the root (make test does that). */
#ifndef PBW_TEST_H
#define PBW_TEST_H

#include <math.h>
#include <stdio.h>

typedef void (*pbw_test_fn)(void);
void pbw_test_register(const char *name, pbw_test_fn fn);
extern int pbw_test_failures; /* failures in the current test */

#define PBW_TEST(name)                                                                        \
    static void test_##name(void);                                                           \
    __attribute__((constructor)) static void register_##name(void) {                          \
        pbw_test_register(#name, test_##name);                                                \
    }                                                                                         \
    static void test_##name(void)

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);        \
            pbw_test_failures++;                                                              \
        }                                                                                     \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            pbw_test_failures++;                                                              \
        }                                                                                     \
    } while (0)

/* |a-b| <= tol, printing both values on failure. */
#define CHECK_NEAR(a, b, tol)                                                                 \
    do {                                                                                      \
        double _a = (double)(a), _b = (double)(b), _t = (double)(tol);                        \
        if (!(fabs(_a - _b) <= _t)) {                                                         \
            fprintf(stderr, "  %s:%d: |%s - %s| = |%.9g - %.9g| = %.3g > %.3g\n", __FILE__,   \
                    __LINE__, #a, #b, _a, _b, fabs(_a - _b), _t);                             \
            pbw_test_failures++;                                                              \
        }                                                                                     \
    } while (0)

/* An environment variable set for one test and put back as it was after (tests share a
 * process): pbw_test_env_set saves the old value (NULL: unset) in *saved, to free with
 * pbw_test_env_restore. */
#include <stdlib.h>
#include <string.h>
static inline void pbw_test_env_set(const char *name, const char *value, char **saved) {
    const char *old = getenv(name);
    *saved = old ? strdup(old) : NULL;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
}
static inline void pbw_test_env_restore(const char *name, char *saved) {
    if (saved) setenv(name, saved, 1);
    else unsetenv(name);
    free(saved);
}

/* A cache folder of the test's own: a new folder made from tmpl ("/tmp/pbw_NAME_XXXXXX",
 * mkdtemp(3), rewritten in place) becomes PBW_CACHE_DIR, its old value saved in *saved;
 * pbw_test_cache_dir_end puts that back and removes the folder. Each returns 0, or -1 on
 * failure. */
static inline int pbw_test_cache_dir_begin(char *tmpl, char **saved) {
    *saved = NULL;
    if (!mkdtemp(tmpl)) return -1;
    pbw_test_env_set("PBW_CACHE_DIR", tmpl, saved);
    return 0;
}
static inline int pbw_test_cache_dir_end(const char *dir, char *saved) {
    pbw_test_env_restore("PBW_CACHE_DIR", saved);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The files matching pattern (glob(3): "DIR/cublaslt-*.txt"): how many, and the first one's path
 * in path (n bytes; "" when none). For tests that look into a cache folder. */
#include <glob.h>
static inline int pbw_test_files(const char *pattern, char *path, size_t n) {
    glob_t g;
    int count = 0;
    if (n) path[0] = 0;
    if (glob(pattern, 0, NULL, &g) == 0) {
        count = (int)g.gl_pathc;
        if (count && n) snprintf(path, n, "%s", g.gl_pathv[0]);
    }
    globfree(&g);
    return count;
}

/* Runs fn(arg) with stderr written to a temporary file, then puts what it wrote into text (at
 * most len - 1 bytes, NUL-terminated; the file is removed). Returns fn's result, or -1 with text
 * empty and fn not run when no temporary file could be made. (tests/test_main.c) */
int pbw_test_capture_stderr(int (*fn)(void *arg), void *arg, char *text, size_t len);

/* Path to shared data relative to the repository root. */
#define PBW_SHARED(p) "../shared/" p

#endif
