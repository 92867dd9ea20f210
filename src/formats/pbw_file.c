/* pbw_file.c: whole-file reads, read-only maps and atomic writes (see pbw_file.h). POSIX only. */
#include "pbw_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int open_regular(const char *path, int *fd_out, size_t *size, pbw_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pbw_err_set(err, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return pbw_err_set(err, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pbw_err_set(err, "'%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return pbw_err_set(err, "'%s' is too large", path);
    }
    *fd_out = fd;
    *size = (size_t)st.st_size;
    return 0;
}

int pbw_file_read(const char *path, size_t max_len, void **data, size_t *len, pbw_err *err) {
    *data = NULL;
    *len = 0;
    int fd = -1;
    size_t size = 0;
    if (open_regular(path, &fd, &size, err)) return -1;
    if (size > max_len) {
        close(fd);
        return pbw_err_set(err, "'%s' is %zu bytes, more than the %zu allowed", path, size, max_len);
    }
    unsigned char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return pbw_err_set(err, "out of memory reading '%s' (%zu bytes)", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(buf);
            close(fd);
            return pbw_err_set(err, "cannot read '%s': %s", path, e ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = 0;
    *data = buf;
    *len = size;
    return 0;
}

int pbw_file_map(const char *path, void **data, size_t *len, pbw_err *err) {
    *data = NULL;
    *len = 0;
    int fd = -1;
    size_t size = 0;
    if (open_regular(path, &fd, &size, err)) return -1;
    if (size == 0) {
        close(fd);
        return 0;
    }
    void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return pbw_err_set(err, "cannot map '%s': %s", path, strerror(e));
    *data = p;
    *len = size;
    return 0;
}

void pbw_file_unmap(void *data, size_t len) {
    if (data && len) munmap(data, len);
}

/* Makes the rename durable: fsync of the directory holding path (best effort). */
static void sync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

int pbw_file_tmp_open(pbw_file_tmp *t, const char *path, pbw_err *err) {
    memset(t, 0, sizeof *t);
    size_t n = strlen(path);
    t->path = strdup(path);
    t->tmp_path = malloc(n + sizeof ".tmp.XXXXXX");
    if (!t->path || !t->tmp_path) {
        pbw_file_tmp_abort(t);
        return pbw_err_set(err, "out of memory");
    }
    memcpy(t->tmp_path, path, n);
    memcpy(t->tmp_path + n, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(t->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(t->tmp_path);
        t->tmp_path = NULL; /* nothing to remove */
        pbw_file_tmp_abort(t);
        return pbw_err_set(err, "cannot create a temporary file for '%s': %s", path, strerror(e));
    }
    fchmod(fd, 0644);
    t->fp = fdopen(fd, "wb");
    if (!t->fp) {
        int e = errno;
        close(fd);
        pbw_file_tmp_abort(t);
        return pbw_err_set(err, "cannot open a stream for '%s': %s", path, strerror(e));
    }
    return 0;
}

void pbw_file_tmp_abort(pbw_file_tmp *t) {
    if (t->fp) fclose(t->fp);
    if (t->tmp_path) unlink(t->tmp_path);
    free(t->tmp_path);
    free(t->path);
    memset(t, 0, sizeof *t);
}

int pbw_file_tmp_commit(pbw_file_tmp *t, pbw_err *err) {
    if (!t->fp) return pbw_err_set(err, "internal: commit of a closed temporary file");
    int bad = ferror(t->fp) != 0;
    int e = bad ? EIO : 0;
    if (!bad && fflush(t->fp) != 0) bad = 1, e = errno;
    if (!bad && fsync(fileno(t->fp)) != 0) bad = 1, e = errno;
    if (fclose(t->fp) != 0 && !bad) bad = 1, e = errno;
    t->fp = NULL;
    if (!bad && rename(t->tmp_path, t->path) != 0) bad = 1, e = errno;
    if (bad) {
        pbw_err_set(err, "cannot write '%s': %s", t->path, strerror(e));
        pbw_file_tmp_abort(t);
        return -1;
    }
    sync_parent_dir(t->path);
    free(t->tmp_path);
    free(t->path);
    memset(t, 0, sizeof *t);
    return 0;
}

int pbw_file_write_atomic(const char *path, const void *data, size_t len, pbw_err *err) {
    pbw_file_tmp t;
    if (pbw_file_tmp_open(&t, path, err)) return -1;
    if (len && fwrite(data, 1, len, t.fp) != len) {
        int e = errno;
        pbw_file_tmp_abort(&t);
        return pbw_err_set(err, "cannot write '%s': %s", path, strerror(e));
    }
    return pbw_file_tmp_commit(&t, err);
}
