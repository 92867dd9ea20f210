/* cmd_version.c: `pbw version` prints the version, the BLAS pbw runs on and the CUDA devices. */
#include <stdio.h>

#include "app/pbw_app.h"
#include "core/pbw_common.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#endif

char *openblas_get_config(void);
int openblas_get_num_threads(void);

#define PBW_VERSION "0.1.0"

int cmd_version(int argc, char **argv) {
    if (app_wants_help(argc, argv)) {
        printf("usage: pbw version\n\nPrints pbw's version, its BLAS and the CUDA devices it can use.\n");
        return 0;
    }
    printf("pbw %s\n", PBW_VERSION);
    printf("blas: %s (%d threads)\n", openblas_get_config(), openblas_get_num_threads());
#ifdef PBW_HAVE_CUDA
    int n = pbw_cuda_device_count();
    printf("cuda: built with CUDA; %d device%s\n", n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) {
        char d[256];
        pbw_err err;
        if (pbw_cuda_describe(i, d, sizeof d, &err) == 0) printf("  cuda:%d %s\n", i, d);
    }
#else
    printf("cuda: not built (nvcc was not found at build time)\n");
#endif
    return 0;
}
