/* pbw_rng.c: MT19937 and numpy's legacy double and Gaussian draws (see pbw_rng.h).
 *
 * Written from the MT19937 paper's definition (Matsumoto and Nishimura 1998) and numpy's
 * documented legacy algorithms; constants are the generator's published parameters. */
#include "pbw_rng.h"

#include <math.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void pbw_rng_seed(pbw_rng *r, uint32_t seed) {
    r->mt[0] = seed;
    for (int i = 1; i < PBW_RNG_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->pos = PBW_RNG_N;
    r->has_gauss = 0;
    r->gauss = 0;
}

/* Regenerates all 624 words (the "twist"). */
static void mt_twist(pbw_rng *r) {
    uint32_t *mt = r->mt;
    int k;
    for (k = 0; k < PBW_RNG_N - MT_M; k++) {
        uint32_t y = (mt[k] & MT_UPPER) | (mt[k + 1] & MT_LOWER);
        mt[k] = mt[k + MT_M] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    for (; k < PBW_RNG_N - 1; k++) {
        uint32_t y = (mt[k] & MT_UPPER) | (mt[k + 1] & MT_LOWER);
        mt[k] = mt[k + (MT_M - PBW_RNG_N)] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    uint32_t y = (mt[PBW_RNG_N - 1] & MT_UPPER) | (mt[0] & MT_LOWER);
    mt[PBW_RNG_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    r->pos = 0;
}

uint32_t pbw_rng_u32(pbw_rng *r) {
    if (r->pos >= PBW_RNG_N) mt_twist(r);
    uint32_t y = r->mt[r->pos++];
    /* tempering */
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double pbw_rng_uniform(pbw_rng *r) {
    int32_t a = (int32_t)(pbw_rng_u32(r) >> 5), b = (int32_t)(pbw_rng_u32(r) >> 6);
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

double pbw_rng_normal(pbw_rng *r) {
    if (r->has_gauss) {
        r->has_gauss = 0;
        double g = r->gauss;
        r->gauss = 0;
        return g;
    }
    double x1, x2, r2;
    do {
        x1 = 2.0 * pbw_rng_uniform(r) - 1.0;
        x2 = 2.0 * pbw_rng_uniform(r) - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    /* the same expression, evaluated in the same order, as numpy's legacy_gauss */
    double f = sqrt(-2.0 * log(r2) / r2);
    r->gauss = f * x1;
    r->has_gauss = 1;
    return f * x2;
}

void pbw_rng_normal_f32(pbw_rng *r, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)pbw_rng_normal(r);
}

int pbw_seedbank_z(int64_t first, int64_t count, int dim, float *out) {
    if (first < 0 || count < 0 || dim <= 0 || dim % 2) return -1;
    pbw_rng r;
    pbw_rng_seed(&r, 1);
    for (int64_t i = 0; i < first * dim; i++) (void)pbw_rng_normal(&r);
    pbw_rng_normal_f32(&r, out, count * dim);
    return 0;
}
