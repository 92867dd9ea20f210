/* fuzz_common.h: shared by the fuzz targets: touch every byte a reader hands out, so that a
 * record pointing outside its buffer shows up under ASan. */
#ifndef PBW_FUZZ_COMMON_H
#define PBW_FUZZ_COMMON_H

#include <stdlib.h>

#include "formats/pbw_records.h"

static void fuzz_touch_records(const pbw_records *r) {
    pbw_err err;
    for (size_t i = 0; i < r->count; i++) {
        const pbw_record *rec = &r->items[i];
        float *dst = malloc((size_t)rec->numel * sizeof(float) + 1);
        if (!dst) continue;
        pbw_record_to_f32(rec, dst, &err);
        free(dst);
    }
    (void)pbw_records_find(r, "a");
}

#endif
