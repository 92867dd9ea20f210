/* fuzz_png.c: libFuzzer target for pbw_image_decode_png (run by make fuzz). */
#include <stdint.h>

#include "formats/pbw_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pbw_image im;
    pbw_err err;
    if (pbw_image_decode_png(data, size, &im, &err) == 0) {
        volatile unsigned s = 0;
        for (size_t i = 0; i < (size_t)im.w * (size_t)im.h * (size_t)im.c; i++) s += im.data[i];
        pbw_image_free(&im);
    }
    return 0;
}
