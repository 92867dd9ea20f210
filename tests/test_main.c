/* test_main.c: runs every registered test (or those whose name contains argv[1]) and prints
 * "N passed, N failed" last. Exit status is nonzero when any test failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pbw_test.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#endif

typedef struct {
    const char *name;
    pbw_test_fn fn;
} test_entry;

static test_entry *tests;
static int ntests, cap;
int pbw_test_failures;

void pbw_test_register(const char *name, pbw_test_fn fn) {
    if (ntests == cap) {
        cap = cap ? cap * 2 : 64;
        tests = realloc(tests, (size_t)cap * sizeof *tests);
        if (!tests) abort();
    }
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    ntests++;
}

int pbw_test_capture_stderr(int (*fn)(void *arg), void *arg, char *text, size_t len) {
    if (len) text[0] = 0;
    char path[] = "/tmp/pbw_test_stderr_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    int rc = fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    FILE *f = fopen(path, "r");
    size_t got = f && len ? fread(text, 1, len - 1, f) : 0;
    if (len) text[got] = 0;
    if (f) fclose(f);
    remove(path);
    return rc;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const test_entry *)a)->name, ((const test_entry *)b)->name);
}

/* Tests named cuda_* need a working CUDA device. Without one they are skipped (and counted),
 * unless PBW_REQUIRE_CUDA=1 (make test-cuda), which turns a missing GPU into a failure. */
static int cuda_usable(void) {
#ifdef PBW_HAVE_CUDA
    return pbw_cuda_device_count() > 0;
#else
    return 0;
#endif
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    qsort(tests, (size_t)ntests, sizeof *tests, by_name);
    int passed = 0, failed = 0, skipped = 0;
    int have_cuda = cuda_usable();
    const char *req = getenv("PBW_REQUIRE_CUDA");
    if (req && *req == '1' && !have_cuda) {
        printf("FAIL no CUDA device (PBW_REQUIRE_CUDA=1)\n0 passed, 1 failed\n");
        return 1;
    }
    if (access(PBW_SHARED("data"), F_OK) != 0)
        printf("note: %s is missing: the tests that read the project's shared data (CLIP "
               "vocabulary and cases, LPIPS heads, seed bank) will fail; run from a checkout "
               "that has ../shared beside it\n", PBW_SHARED("data"));
    for (int i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        if (!have_cuda && !strncmp(tests[i].name, "cuda_", 5)) {
            skipped++;
            continue;
        }
        pbw_test_failures = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (pbw_test_failures) {
            printf("FAIL %s (%d checks failed)\n", tests[i].name, pbw_test_failures);
            failed++;
        } else {
            printf("ok   %s (%.0f ms)\n", tests[i].name, ms);
            passed++;
        }
        fflush(stdout);
    }
    free(tests);
    if (skipped) printf("skipped %d CUDA tests (no CUDA device)\n", skipped);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
