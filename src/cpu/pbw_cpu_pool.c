/* pbw_cpu_pool.c: max pooling kernels (see pbw_cpu_pool.h). Planes are independent, so both
 * kernels split the planes over OpenMP threads; the backward's scatter stays inside one plane
 * and needs no atomics. */
#include "pbw_cpu_pool.h"

#include <math.h>
#include <stddef.h>

void pbw_cpu_max_pool2d_forward(float *out, int32_t *idx, const float *x,
                                const pbw_cpu_pool_geom *g) {
    const int64_t hw = (int64_t)g->H * g->W, ohw = (int64_t)g->OH * g->OW;
#pragma omp parallel for schedule(static) if (g->planes * ohw > 4096)
    for (int64_t p = 0; p < g->planes; p++) {
        const float *xp = x + p * hw;
        float *op = out + p * ohw;
        int32_t *ip = idx ? idx + p * ohw : NULL;
        for (int oy = 0; oy < g->OH; oy++) {
            int y0 = oy * g->sh - g->ph, y1 = y0 + g->KH;
            if (y0 < 0) y0 = 0;
            if (y1 > g->H) y1 = g->H;
            for (int ox = 0; ox < g->OW; ox++) {
                int x0 = ox * g->sw - g->pw, x1 = x0 + g->KW;
                if (x0 < 0) x0 = 0;
                if (x1 > g->W) x1 = g->W;
                /* start from the window's first real element so that a window of -inf (or the
                 * all-NaN case) still names an element inside the plane */
                int64_t best = (int64_t)y0 * g->W + x0;
                float m = -INFINITY;
                for (int y = y0; y < y1; y++) {
                    const float *row = xp + (int64_t)y * g->W;
                    for (int xx = x0; xx < x1; xx++) {
                        float v = row[xx];
                        if (v > m || isnan(v)) { /* PyTorch's test, NaN included */
                            m = v;
                            best = (int64_t)y * g->W + xx;
                        }
                    }
                }
                op[(int64_t)oy * g->OW + ox] = m;
                if (ip) ip[(int64_t)oy * g->OW + ox] = (int32_t)best;
            }
        }
    }
}

void pbw_cpu_max_pool2d_backward(float *dx, const float *dout, const int32_t *idx,
                                 const pbw_cpu_pool_geom *g) {
    const int64_t hw = (int64_t)g->H * g->W, ohw = (int64_t)g->OH * g->OW;
#pragma omp parallel for schedule(static) if (g->planes * ohw > 4096)
    for (int64_t p = 0; p < g->planes; p++) {
        float *dp = dx + p * hw;
        const float *gp = dout + p * ohw;
        const int32_t *ip = idx + p * ohw;
        for (int64_t o = 0; o < ohw; o++) dp[ip[o]] += gp[o];
    }
}
