/* pbw_arena.h: bump allocators with one lifetime each.
 *
 * pbw keeps three lifetimes apart: weights (live as long as a model), per-step activations
 * (reset after every optimization step) and per-op scratch. An arena hands out 64-byte aligned
 * blocks by bumping a pointer; nothing is freed one by one. When a chunk is full a new one is
 * chained; on reset the chunks are merged into one big enough for the whole previous use (the
 * largest `used` seen, also when pbw_arena_release freed the chunks a block had needed), so a
 * loop that does the same work every step stops calling malloc after its first step.
 *
 *     pbw_arena a; pbw_arena_init(&a, 1 << 20);
 *     float *x = pbw_arena_alloc(&a, 1000 * sizeof(float));   // NULL only when out of memory
 *     pbw_arena_reset(&a);                                     // x is invalid now
 *     pbw_arena_free(&a);
 */
#ifndef PBW_ARENA_H
#define PBW_ARENA_H

#include <stddef.h>

typedef struct pbw_arena_chunk pbw_arena_chunk;

typedef struct pbw_arena_hook pbw_arena_hook;

typedef struct pbw_arena {
    pbw_arena_chunk *head;  /* current chunk; older ones chained behind it */
    size_t min_chunk;       /* smallest chunk to allocate */
    size_t used;            /* bytes handed out since the last reset */
    size_t peak;            /* largest `used` seen */
    /* Where chunks come from: NULL means the heap; a device arena passes its device's
     * allocator (the arena never touches the memory it hands out). */
    void *(*mem_alloc)(size_t bytes);
    void (*mem_free)(void *p);
    void *tensors;          /* tensors made in this arena by pbw_tensor_new_in (pbw_tensor.c) */
    int huge_pages;         /* 1: heap chunks of 4 MiB or more asked for 2 MiB pages (a
                               model's weights: written once, whole; 0 by default) */
    pbw_arena_hook *hooks;  /* run by pbw_arena_free */
} pbw_arena;

void pbw_arena_init(pbw_arena *a, size_t min_chunk);
/* An arena whose chunks come from mem_alloc / mem_free (device memory, say). */
void pbw_arena_init_with(pbw_arena *a, size_t min_chunk, void *(*mem_alloc)(size_t),
                         void (*mem_free)(void *));
/* fn(p) runs when the arena is freed (releasing memory the arena's tensors point to). */
int pbw_arena_on_free(pbw_arena *a, void (*fn)(void *), void *p);
/* 64-byte aligned block of `bytes` bytes, uninitialized; NULL when malloc fails. */
void *pbw_arena_alloc(pbw_arena *a, size_t bytes);
/* Same, zero-filled. */
void *pbw_arena_calloc(pbw_arena *a, size_t bytes);
void pbw_arena_reset(pbw_arena *a);
/* Whether pbw_arena_reset keeps the memory held (one chunk holding the peak use), where it
 * otherwise replaces the chunks by one: blocks handed out before the reset then stay valid
 * memory, to be handed out again. */
int pbw_arena_reset_keeps(const pbw_arena *a);
/* A position in the arena, to free back to: everything allocated after it goes at once. */
typedef struct pbw_arena_mark {
    const void *chunk; /* the chunk current at the mark (NULL: none yet) */
    size_t off, used;
} pbw_arena_mark;
pbw_arena_mark pbw_arena_mark_get(const pbw_arena *a);
/* Frees every block handed out since m: chunks made since are released, the current one is
 * cut back. Returns the number of chunks released, or -1 (nothing done) when m is not a
 * position of this arena's current life (a reset came between). */
int pbw_arena_release(pbw_arena *a, pbw_arena_mark m);
/* Bytes of the chunks held now. */
size_t pbw_arena_held(const pbw_arena *a);
/* Number of chunks held now (1 in the steady state of a repeated workload). */
int pbw_arena_chunks(const pbw_arena *a);
void pbw_arena_free(pbw_arena *a);

#endif
