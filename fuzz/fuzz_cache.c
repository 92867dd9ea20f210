/* fuzz_cache.c: libFuzzer target for pbw_cache_parse_line (the GPU libraries' choice files; run
 * by make fuzz). A line that parses must print back to a line that parses to the same fields. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096) return 0;
    const int n = data[0] % 24; /* the files' lines hold 16 and 22 fields */
    char *line = malloc(size);
    if (!line) return 0;
    memcpy(line, data + 1, size - 1);
    line[size - 1] = 0;
    uint64_t v[24], w[24];
    if (pbw_cache_parse_line(line, "v1", v, n) == 0) {
        char out[24 * 24 + 8];
        int k = snprintf(out, sizeof out, "v1");
        for (int i = 0; i < n; i++)
            k += snprintf(out + k, sizeof out - (size_t)k, i % 2 ? " 0x%" PRIx64 : " %" PRIu64, v[i]);
        snprintf(out + k, sizeof out - (size_t)k, "\n");
        if (pbw_cache_parse_line(out, "v1", w, n) != 0 || memcmp(v, w, (size_t)n * sizeof *v))
            abort();
    }
    free(line);
    return 0;
}
