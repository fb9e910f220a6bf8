/* threads.c — the thread count shared by every kernel, and the SIMD path matmul uses.
 *
 * One OpenMP team serves all kernels; backends/cpu.py sets its size once at import from
 * MICROGPT_NUM_THREADS (default: every core). The matmul micro-kernel is chosen at run time
 * from what the CPU supports (AVX-512, else AVX2+FMA, else portable C); tests may force a
 * lesser path to check it on a machine that has a better one.
 */
#include <string.h>
#include <omp.h>
#include "microgpt.h"

static int forced_path = -1;       /* -1: best available; else 0 scalar, 1 avx2, 2 avx512 */
static const char* const PATH_NAMES[] = {"scalar", "avx2", "avx512"};

static int best_path(void) {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

/* Used by matmul.c: 0 scalar, 1 avx2, 2 avx512. */
int microgpt_simd_level(void) {
    return forced_path >= 0 ? forced_path : best_path();
}

void microgpt_set_num_threads(int threads) {
    omp_set_num_threads(threads < 1 ? 1 : threads);
}

int microgpt_get_num_threads(void) {
    return omp_get_max_threads();
}

const char* microgpt_simd_path(void) {
    return PATH_NAMES[microgpt_simd_level()];
}

int microgpt_set_simd_path(const char* name) {
    if (name == NULL || name[0] == '\0') { forced_path = -1; return 1; }
    for (int level = 0; level < 3; level++) {
        if (strcmp(name, PATH_NAMES[level]) == 0) {
            if (level > best_path()) return 0;
            forced_path = level;
            return 1;
        }
    }
    return 0;
}
