/* bench_util.h: the clocks and helpers the benchmark programs share (header only). */
#ifndef PBW_BENCH_UTIL_H
#define PBW_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Seconds on clock clk. */
static inline double bench_clock(clockid_t clk) {
    struct timespec t;
    clock_gettime(clk, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Wall seconds (monotonic). */
static inline double bench_now(void) { return bench_clock(CLOCK_MONOTONIC); }

/* CPU seconds of the whole process (every thread, user + system). */
static inline double bench_cpu_time(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
           (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

/* The first core's clock from /proc/cpuinfo in GHz (2.0 when unknown). */
static inline double bench_cpu_ghz(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    double mhz = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "cpu MHz", 7)) {
            char *c = strchr(line, ':');
            if (c) mhz = atof(c + 1);
            break;
        }
    if (f) fclose(f);
    return mhz > 0 ? mhz / 1e3 : 2.0;
}

/* qsort comparison of doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
