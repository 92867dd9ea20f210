/* pbw_arena.c: chunked bump allocator (see pbw_arena.h). */
#include "pbw_arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ALIGN 64
/* Heap chunks this large are mapped from the system and unmapped when freed: through malloc,
 * glibc's adaptive threshold kept freed chunks of up to 32 MiB on its heap, resident (the CPU
 * demo's peak resident memory was 10% higher for it). */
#define MAP_MIN ((size_t)1 << 20)
#define HUGE_MIN ((size_t)4 << 20)

struct pbw_arena_chunk {
    pbw_arena_chunk *next;
    size_t size;         /* usable bytes */
    size_t off;
    size_t mapped;       /* bytes mapped with mmap; 0: from mem_alloc or aligned_alloc */
    unsigned char *base; /* ALIGN-aligned */
};

struct pbw_arena_hook {
    void (*fn)(void *);
    void *p;
    pbw_arena_hook *next;
};

static pbw_arena_chunk *chunk_new(const pbw_arena *a, size_t size) {
    pbw_arena_chunk *c = malloc(sizeof *c);
    if (!c) return NULL;
    size_t bytes = (size + ALIGN - 1) / ALIGN * ALIGN;
    c->mapped = 0;
    if (a->mem_alloc) {
        c->base = a->mem_alloc(bytes);
    } else if (bytes >= MAP_MIN) { /* page-aligned */
        void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        c->base = m == MAP_FAILED ? NULL : m;
        c->mapped = c->base ? bytes : 0;
#ifdef MADV_HUGEPAGE
        /* a model's weights in 2 MiB pages where the system leaves that to madvise: ViT-B/32's
         * 600 MB otherwise fault in 4 KiB at a time, which took more of CLIP's load than
         * reading the file (advice only: failure changes nothing) */
        if (c->base && a->huge_pages && bytes >= HUGE_MIN)
            (void)madvise(c->base, bytes, MADV_HUGEPAGE);
#endif
    } else {
        c->base = aligned_alloc(ALIGN, bytes);
    }
    if (!c->base) {
        free(c);
        return NULL;
    }
    c->next = NULL;
    c->size = size;
    c->off = 0;
    return c;
}

void pbw_arena_init(pbw_arena *a, size_t min_chunk) {
    memset(a, 0, sizeof *a);
    a->min_chunk = min_chunk < 4096 ? 4096 : min_chunk;
}

void pbw_arena_init_with(pbw_arena *a, size_t min_chunk, void *(*mem_alloc)(size_t),
                         void (*mem_free)(void *)) {
    pbw_arena_init(a, min_chunk);
    a->mem_alloc = mem_alloc;
    a->mem_free = mem_free;
}

int pbw_arena_on_free(pbw_arena *a, void (*fn)(void *), void *p) {
    pbw_arena_hook *h = malloc(sizeof *h);
    if (!h) return -1;
    h->fn = fn;
    h->p = p;
    h->next = a->hooks;
    a->hooks = h;
    return 0;
}

void *pbw_arena_alloc(pbw_arena *a, size_t bytes) {
    size_t need = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    if (need < bytes) return NULL; /* overflow */
    if (need == 0) need = ALIGN;
    pbw_arena_chunk *c = a->head;
    if (!c || c->size - c->off < need) {
        size_t size = need > a->min_chunk ? need : a->min_chunk;
        /* grow geometrically so a long first step does not make thousands of chunks: by half
         * of what is held (the held memory grows 1.5x a chunk). Doubling the last chunk instead
         * held up to three times the need when a large chunk was just short (a step with
         * gradients after a step without). */
        const size_t held = pbw_arena_held(a);
        if (size < held / 2) size = held / 2;
        pbw_arena_chunk *n = chunk_new(a, size);
        if (!n) {
            n = chunk_new(a, need); /* the growth by half may have been too greedy */
            if (!n) return NULL;
        }
        n->next = c;
        a->head = n;
        c = n;
    }
    void *p = c->base + c->off;
    c->off += need;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void *pbw_arena_calloc(pbw_arena *a, size_t bytes) {
    void *p = pbw_arena_alloc(a, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

static void chunks_free(const pbw_arena *a, pbw_arena_chunk *c) {
    while (c) {
        pbw_arena_chunk *n = c->next;
        if (a->mem_free)
            a->mem_free(c->base);
        else if (c->mapped)
            munmap(c->base, c->mapped);
        else
            free(c->base);
        free(c);
        c = n;
    }
}

void pbw_arena_reset(pbw_arena *a) {
    if (!a->head) return;
    if (!pbw_arena_reset_keeps(a)) {
        /* several chunks were needed, or a release freed those a block needed: replace them
         * by one that holds the peak use (else each repeat of the work would allocate and
         * free the same chunks again; on a GPU each free waits for the device and breaks
         * the recording of a CUDA graph) */
        size_t total = a->peak > a->min_chunk ? a->peak : a->min_chunk;
        chunks_free(a, a->head);
        a->head = chunk_new(a, total); /* NULL is fine: the next alloc makes one */
    } else {
        a->head->off = 0;
    }
    a->used = 0;
}

int pbw_arena_reset_keeps(const pbw_arena *a) {
    return !a->head || (!a->head->next && a->head->size >= a->peak);
}

void pbw_arena_free(pbw_arena *a) {
    while (a->hooks) {
        pbw_arena_hook *h = a->hooks;
        a->hooks = h->next;
        h->fn(h->p);
        free(h);
    }
    chunks_free(a, a->head);
    a->head = NULL;
    a->used = 0;
    a->tensors = NULL;
}

size_t pbw_arena_held(const pbw_arena *a) {
    size_t n = 0;
    for (const pbw_arena_chunk *c = a->head; c; c = c->next) n += c->size;
    return n;
}

int pbw_arena_chunks(const pbw_arena *a) {
    int n = 0;
    for (const pbw_arena_chunk *c = a->head; c; c = c->next) n++;
    return n;
}

pbw_arena_mark pbw_arena_mark_get(const pbw_arena *a) {
    pbw_arena_mark m = {a->head, a->head ? a->head->off : 0, a->used};
    return m;
}

int pbw_arena_release(pbw_arena *a, pbw_arena_mark m) {
    /* m.chunk must still be in the chain (or NULL: the arena was empty at the mark) */
    if (m.chunk) {
        const pbw_arena_chunk *c = a->head;
        while (c && c != m.chunk) c = c->next;
        if (!c) return -1;
    }
    int n = 0;
    while (a->head && a->head != m.chunk) {
        pbw_arena_chunk *c = a->head;
        a->head = c->next;
        c->next = NULL;
        chunks_free(a, c);
        n++;
    }
    if (a->head) a->head->off = m.off;
    a->used = m.used;
    return n;
}
