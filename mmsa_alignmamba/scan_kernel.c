/* Selective-scan forward for inference on CPU: the state stays in cache, never in memory.
 *
 * For each batch element b, channel d and state index n:
 *     h_l = exp(dt_l A) h_{l-1} + (dt_l u_l) B_l,        y_l = sum_n C_l h_l
 * Inputs are time-major, the layout Mamba's projections produce: dt, dtu (= dt * u) and y are
 * (batch, L, dim); B and C are (batch, L, n); A is (n, dim), transposed so that the innermost
 * loop runs over contiguous channels. The innermost loop is written for the compiler to
 * vectorise, exp included (glibc's libmvec with -ffast-math -fopenmp-simd); no state tensor
 * of (L, dim, n) is ever written, which is what the PyTorch scan spends its time on.
 *
 * The caller hands out disjoint (batch, channel) blocks to threads; every output element is
 * computed by one fixed sequence of operations, so the result does not depend on the split.
 */

#include <math.h>

#define CHANNEL_BLOCK 256 /* channels per pass: the block's state, n * 256 floats, stays in L1/L2 */

void selective_scan_fwd(const float *dt, const float *dtu, const float *A, const float *B, const float *C,
                        long L, long dim, long n, long b0, long b1, long d0, long d1, float *y) {
    float h[n * CHANNEL_BLOCK];
    for (long bi = b0; bi < b1; ++bi) {
        for (long c0 = d0; c0 < d1; c0 += CHANNEL_BLOCK) {
            long w = d1 - c0 < CHANNEL_BLOCK ? d1 - c0 : CHANNEL_BLOCK;
            for (long i = 0; i < n * w; ++i)
                h[i] = 0.f;
            for (long l = 0; l < L; ++l) {
                long row = (bi * L + l) * dim + c0;
                const float *dt_l = dt + row, *dtu_l = dtu + row;
                const float *B_l = B + (bi * L + l) * n, *C_l = C + (bi * L + l) * n;
                float *y_l = y + row;
                for (long j = 0; j < w; ++j)
                    y_l[j] = 0.f;
                for (long k = 0; k < n; ++k) {
                    const float *A_k = A + k * dim + c0;
                    float *h_k = h + k * w, b_k = B_l[k], c_k = C_l[k];
#pragma omp simd
                    for (long j = 0; j < w; ++j) {
                        h_k[j] = expf(dt_l[j] * A_k[j]) * h_k[j] + dtu_l[j] * b_k;
                        y_l[j] += h_k[j] * c_k;
                    }
                }
            }
        }
    }
}
