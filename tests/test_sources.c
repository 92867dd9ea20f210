/* test_sources.c: contracts of the sources themselves that no compiler checks.
 *
 * Every kernel of the CUDA backend may be launched with programmatic dependent launch
 * (pbw_launch in src/cuda/pbw_cuda_internal.cuh): it can then start before the kernel ahead of
 * it has finished, and is correct only if it waits (pbw_pdl_wait) before it touches global
 * memory. So every __global__ function under src/cuda must begin with that call. The scan reads
 * the sources with comments and literals blanked, from the repository root (make test). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbw_test.h"

/* s with comments, string and character literals replaced by spaces (newlines kept). */
static void blank_comments(char *s) {
    for (char *p = s; *p;) {
        if (p[0] == '/' && p[1] == '/') {
            while (*p && *p != '\n') *p++ = ' ';
        } else if (p[0] == '/' && p[1] == '*') {
            *p++ = ' ';
            *p++ = ' ';
            while (*p && !(p[0] == '*' && p[1] == '/')) {
                if (*p != '\n') *p = ' ';
                p++;
            }
            if (*p) {
                *p++ = ' ';
                *p++ = ' ';
            }
        } else if (*p == '"' || *p == '\'') {
            const char q = *p++;
            while (*p && *p != q && *p != '\n') {
                if (*p == '\\' && p[1]) *p++ = ' ';
                *p++ = ' ';
            }
            if (*p == q) p++;
        } else {
            p++;
        }
    }
}

static int ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* The number of __global__ functions defined in src whose body does not begin with
 * pbw_pdl_wait(); (declarations without a body are not counted); each is named on stderr
 * unless what is NULL. */
static int kernels_without_wait(const char *src, const char *what) {
    char *s = strdup(src);
    if (!s) return -1;
    blank_comments(s);
    int bad = 0;
    const char *kw = "__global__";
    for (char *p = strstr(s, kw); p; p = strstr(p + 1, kw)) {
        if ((p > s && ident_char(p[-1])) || ident_char(p[strlen(kw)])) continue;
        char *body = p + strlen(kw);
        while (*body && *body != '{' && *body != ';') body++;
        if (*body != '{') continue; /* a declaration */
        char *q = body + 1;
        while (*q == ' ' || *q == '\n' || *q == '\t' || *q == '\r') q++;
        if (strncmp(q, "pbw_pdl_wait();", 15) != 0 && !what) {
            bad++;
        } else if (strncmp(q, "pbw_pdl_wait();", 15) != 0) {
            int line = 1;
            for (const char *c = s; c < p; c++) line += *c == '\n';
            fprintf(stderr, "  %s:%d: a kernel that does not begin with pbw_pdl_wait();\n", what,
                    line);
            bad++;
        }
    }
    free(s);
    return bad;
}

PBW_TEST(sources_kernels_wait_first) {
    /* the scan itself: one kernel waits, one does not, one is declared, one sits in a comment */
    const char *sample = "template <int V> __global__ void a(float *x) {\n"
                         "    pbw_pdl_wait();\n    x[0] = 1;\n}\n"
                         "__global__ static void __launch_bounds__(256) b(float *x) { x[0] = 2; }\n"
                         "__global__ void c(float *x);\n"
                         "// __global__ void d() { }\n"
                         "/* __global__ void e() { } */ const char *f = \"__global__ g() {}\";\n";
    CHECK(kernels_without_wait(sample, NULL) == 1);
    CHECK(kernels_without_wait("__global__ void h() {\n  x = 1; pbw_pdl_wait();\n}", NULL) == 1);

    DIR *d = opendir("src/cuda");
    CHECK_MSG(d != NULL, "src/cuda: not found (run the tests from the repository root)");
    if (!d) return;
    int files = 0, bad = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 3, ".cu") != 0) continue;
        char path[512];
        snprintf(path, sizeof path, "src/cuda/%s", e->d_name);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "%s: cannot open", path);
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        const long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
        const size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
        fclose(f);
        CHECK_MSG(buf && got == (size_t)len, "%s: cannot read", path);
        if (!buf) continue;
        buf[got] = 0;
        const int k = kernels_without_wait(buf, path);
        CHECK(k >= 0);
        bad += k > 0 ? k : 0;
        files++;
        free(buf);
    }
    closedir(d);
    CHECK_MSG(files >= 8, "only %d .cu files under src/cuda", files);
    CHECK_MSG(bad == 0, "%d kernels launch unsafely with programmatic dependent launch", bad);
}
