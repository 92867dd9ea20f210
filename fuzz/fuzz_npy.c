/* fuzz_npy.c: libFuzzer target for pbw_npy_parse (run by make fuzz). */
#include <stdint.h>

#include "formats/pbw_npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pbw_npy a;
    pbw_err err;
    if (pbw_npy_parse(data, size, &a, &err) == 0) {
        volatile float s = 0;
        for (int64_t i = 0; i < a.numel; i++) s += a.data[i];
        pbw_npy_free(&a);
    }
    return 0;
}
