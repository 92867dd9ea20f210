/* pbw_rng.h: a random generator that reproduces numpy.random.RandomState bit for bit.
 *
 * MT19937 seeded as numpy's legacy RandomState(int seed) seeds it (init_genrand), doubles as
 * numpy's legacy random_sample (53 bits from two 32-bit draws) and Gaussians as its legacy
 * standard_normal (polar Box-Muller, the second value of each pair cached for the next call).
 * So the k-th value drawn here equals the k-th value numpy draws, which lets "seed 30" name
 * the same picture as the reference's notebooks (DESIGN.md section 2, seed images):
 *
 *     pbw_rng r;
 *     pbw_rng_seed(&r, 1);
 *     double v = pbw_rng_normal(&r);       // == RandomState(1).standard_normal()
 *
 *     float z[2 * 512];
 *     pbw_seedbank_z(30, 2, 512, z);        // rows 30 and 31 of the seed bank
 *
 * Not for cryptography. The state is a plain struct (no allocation, nothing to free); one
 * generator must not be used by two threads at once.
 */
#ifndef PBW_RNG_H
#define PBW_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_RNG_N 624

typedef struct pbw_rng {
    uint32_t mt[PBW_RNG_N];
    int pos;
    int has_gauss;  /* a cached second Gaussian of the last pair */
    double gauss;
} pbw_rng;

/* numpy.random.RandomState(seed) (seed taken modulo 2^32, as numpy requires 0 <= seed < 2^32). */
void pbw_rng_seed(pbw_rng *r, uint32_t seed);
/* Next raw 32-bit output of MT19937. */
uint32_t pbw_rng_u32(pbw_rng *r);
/* Uniform in [0, 1) with 53 random bits: RandomState.random_sample(). */
double pbw_rng_uniform(pbw_rng *r);
/* Standard normal: RandomState.standard_normal() / randn(). */
double pbw_rng_normal(pbw_rng *r);
/* n standard normals as float32 (each rounded from the double numpy would return). */
void pbw_rng_normal_f32(pbw_rng *r, float *out, int64_t n);

/* The seed bank: row k is values k*dim .. k*dim+dim-1 of RandomState(1).standard_normal(...),
 * as float32. Writes rows first .. first+count-1 into out (count*dim floats). Drawing row k
 * costs k*dim Gaussians (about 10 ns each). dim must be even so rows start on a fresh
 * Box-Muller pair (512, every StyleGAN2's z size, is); returns -1 for odd dim or negative
 * arguments, 0 on success. */
int pbw_seedbank_z(int64_t first, int64_t count, int dim, float *out);

#ifdef __cplusplus
}
#endif
#endif
