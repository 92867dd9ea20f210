/* pbw_cache.c: the choice files of pbw_cache.h. */
#include "core/pbw_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int pbw_cache_path(const char *kind, const char *gpu, size_t version, char *out, size_t n) {
    if (!kind || !gpu || !out || n == 0) return -1;
    const char *d = getenv("PBW_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    char dir[3072];
    int k;
    if (d && *d) k = snprintf(dir, sizeof dir, "%s", d);
    else if (x && *x) k = snprintf(dir, sizeof dir, "%s/pbw", x);
    else if (h && *h) k = snprintf(dir, sizeof dir, "%s/.cache/pbw", h);
    else return -1;
    if (k < 0 || (size_t)k >= sizeof dir) return -1;
    char name[256];
    size_t j = 0;
    for (const char *c = gpu; *c && j + 1 < sizeof name; c++) {
        const char ch = *c;
        const int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        name[j++] = keep ? ch : '_';
    }
    name[j] = 0;
    k = snprintf(out, n, "%s/%s-%s-%zu.txt", dir, kind, name, version);
    return k < 0 || (size_t)k >= n ? -1 : 0;
}

/* The folders of path, outermost first. 0; -1 when one cannot be made. */
static int make_folders(const char *path) {
    char d[4096];
    int k = snprintf(d, sizeof d, "%s", path);
    if (k < 0 || (size_t)k >= sizeof d) return -1;
    for (char *q = d + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            if (mkdir(d, 0755) != 0 && errno != EEXIST) return -1;
            *q = '/';
        }
    return 0;
}

int pbw_cache_append(const char *path, const char *line) {
    if (!path || !line || make_folders(path)) return -1;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return -1;
    size_t len = strlen(line);
    ssize_t w = write(fd, line, len);
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

/* One field at *p: decimal, or 0x and hex digits; at most 64 bits. The end in *end. */
static int parse_field(const char *p, uint64_t *v, const char **end) {
    uint64_t x = 0;
    int digits = 0;
    if (p[0] == '0' && p[1] == 'x') {
        for (p += 2; digits < 17; p++, digits++) {
            const char c = *p;
            int d = c >= '0' && c <= '9' ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0) break;
            if (digits == 16) return -1; /* more than 64 bits */
            x = x << 4 | (uint64_t)d;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++, digits++) {
            const uint64_t d = (uint64_t)(*p - '0');
            if (x > (UINT64_MAX - d) / 10) return -1;
            x = x * 10 + d;
        }
    }
    if (digits == 0) return -1;
    *v = x;
    *end = p;
    return 0;
}

int pbw_cache_parse_line(const char *line, const char *tag, uint64_t *v, int n) {
    if (!line || !tag || (n > 0 && !v) || n < 0) return -1;
    size_t t = strlen(tag);
    if (strncmp(line, tag, t) != 0) return -1;
    const char *p = line + t;
    for (int i = 0; i < n; i++) {
        if (*p != ' ') return -1;
        if (parse_field(p + 1, &v[i], &p)) return -1;
    }
    return p[0] == '\n' && p[1] == 0 ? 0 : -1;
}

int pbw_cache_format_line(char *out, size_t n_out, const char *tag, const uint64_t *v, int n,
                          int hex_from) {
    if (!out || !tag || (n > 0 && !v) || n < 0) return -1;
    int k = snprintf(out, n_out, "%s", tag);
    for (int i = 0; i < n && k >= 0 && (size_t)k < n_out; i++)
        k += snprintf(out + k, n_out - (size_t)k, i >= hex_from ? " 0x%llx" : " %llu",
                      (unsigned long long)v[i]);
    if (k < 0 || (size_t)k + 2 > n_out) return -1;
    out[k] = '\n';
    out[k + 1] = 0;
    return 0;
}

int pbw_cache_write_file(const char *path, const void *data, size_t n) {
    if (!path || (!data && n) || make_folders(path)) return -1;
    char tmp[4160];
    int k = snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    if (k < 0 || (size_t)k >= sizeof tmp) return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)data + done, n - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    int ok = close(fd) == 0 && done == n;
    if (ok && rename(tmp, path) == 0) return 0;
    unlink(tmp);
    return -1;
}

void *pbw_cache_read_file(const char *path, size_t max, size_t *n) {
    *n = 0;
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int ok = 0;
    for (;;) {
        if (len == cap) {
            if (cap > max) break; /* more than max bytes */
            size_t want = cap ? 2 * cap : 65536;
            if (want > max + 1) want = max + 1;
            char *b = realloc(buf, want + 1);
            if (!b) break;
            buf = b, cap = want;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) {
            ok = !ferror(f) && len <= max;
            break;
        }
    }
    fclose(f);
    if (!ok) {
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    *n = len;
    return buf;
}
