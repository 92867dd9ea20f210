/* fuzz_safetensors.c: libFuzzer target for pbw_safetensors_parse (run by make fuzz). */
#include <stdint.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pbw_records r;
    pbw_err err;
    if (pbw_safetensors_parse(data, size, &r, &err) == 0) {
        fuzz_touch_records(&r);
        pbw_records_free(&r);
    }
    return 0;
}
