/* The alignment model's forward-backward over a left-to-right chain of words, on CPU, one
 * sample at a time with the recursion's state in cache.
 *
 * What alignment._forward_backward computes, for each sample (T_m frames, T_l words, n_m valid
 * frames, n_l valid words, e[t][j] = log p(frame t | word j), impossible on padded words):
 *     alpha[0][j] = start[j] + e[0][j]          start: log(1-skip) at word 0, log(skip) at word 1
 *     alpha[t][j] = lse(alpha[t-1][j] + stay, alpha[t-1][j-1] + move, alpha[t-1][j-2] + jump)
 *                   + e[t][j]                   (a padded frame carries alpha[t-1])
 *     log_lik     = lse_j(alpha[n_m-1][j] + end[j])
 *     beta[t][j]  = lse(beta[t+1][j] + e[t+1][j] + stay, beta[t+1][j+1] + e[t+1][j+1] + move,
 *                       beta[t+1][j+2] + e[t+1][j+2] + jump),   beta[n_m-1] = end
 *     post[t][j]  = alpha[t][j] + beta[t][j] - log_lik          (impossible on padded frames)
 * lse is log-sum-exp. The TorchScript version runs a dozen tensor operators per frame on (B, T_l)
 * rows, so at serving time it costs ~40 us a frame, nearly all of it operator overhead; here a
 * frame is one pass over a row of T_l floats.
 *
 * Impossible is a finite sentinel (NEG) inside the kernel: it is compiled with -ffast-math (for
 * vectorised expf / logf), under which the compiler may assume no infinities. Sums involving NEG
 * stay near NEG (|NEG| swamps any finite log-probability), and the output turns every value
 * below NEG / 10 into -inf, which is what the tensor version gives there.
 *
 * Layouts (row-major): emit (batch, T_m, T_l) float32; frame_mask (batch, T_m), word_mask
 * (batch, T_l), bytes, nonzero = valid; log_lik (batch); post (batch, T_m, T_l), which holds alpha
 * between the two passes. Threads: whole samples each (OpenMP, on PyTorch's runtime), so the
 * numbers do not depend on the thread count.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NEG (-1e30f)
#define IMPOSSIBLE_BELOW (-1e29f)

static inline float lse3(float a, float b, float c) {
    float m = a > b ? a : b;
    m = m > c ? m : c;
    return m + logf(expf(a - m) + expf(b - m) + expf(c - m));
}

static inline float lse2(float a, float b) {
    float m = a > b ? a : b;
    return m + logf(expf(a - m) + expf(b - m));
}

/* One sample. row: 2 + T_l + 2 floats of workspace (NEG borders for the shifted reads), then T_l
 * for the log-probability of ending in each word. */
static void one_sample(const float *emit, const unsigned char *frame_mask, const unsigned char *word_mask,
                       long T_m, long T_l, float skip, float *log_lik, float *post, float *row) {
    long n_m = 0, n_l = 0;
    for (long t = 0; t < T_m; ++t)
        n_m += frame_mask[t] != 0;
    for (long j = 0; j < T_l; ++j)
        n_l += word_mask[j] != 0;
    n_m = n_m > 1 ? n_m : 1;
    n_l = n_l > 1 ? n_l : 1;
    /* the chance to move on: the expected moves over the frames cover the words */
    float advance = (float)(n_l - 1) / (float)(n_m - 1 > 1 ? n_m - 1 : 1) / (1.f + skip);
    advance = advance < 1e-4f ? 1e-4f : (advance > 0.95f ? 0.95f : advance);
    const float stay = log1pf(-advance), move = logf(advance * (1.f - skip)), jump = logf(advance * skip);
    float *mid = row + 2; /* mid[-2], mid[-1], mid[T_l], mid[T_l + 1] stay NEG */
    row[0] = row[1] = mid[T_l] = mid[T_l + 1] = NEG;

    /* forward: alpha[t] into post[t] */
    for (long j = 0; j < T_l; ++j) {
        float start = j == 0 ? logf(1.f - skip) : (j == 1 ? logf(skip) : NEG);
        post[j] = word_mask[j] ? start + emit[j] : NEG;
    }
    for (long t = 1; t < T_m; ++t) {
        const float *prev = post + (t - 1) * T_l, *e = emit + t * T_l;
        float *alpha = post + t * T_l;
        if (!frame_mask[t]) { /* padding carries the previous frame's */
            for (long j = 0; j < T_l; ++j)
                alpha[j] = prev[j];
            continue;
        }
        for (long j = 0; j < T_l; ++j)
            mid[j] = prev[j];
#pragma omp simd
        for (long j = 0; j < T_l; ++j)
            alpha[j] = word_mask[j] ? lse3(mid[j] + stay, mid[j - 1] + move, mid[j - 2] + jump) + e[j] : NEG;
    }

    /* the end: the last word, or anywhere where the last word cannot be reached */
    const int reachable = n_l - 1 <= 2 * (n_m - 1) + 1;
    float *end = row + T_l + 4;
    for (long j = 0; j < T_l; ++j)
        end[j] = (reachable ? j == n_l - 1 : word_mask[j] != 0) ? 0.f : NEG;
    const float *final = post + (n_m - 1) * T_l;
    float total = NEG;
    for (long j = 0; j < T_l; ++j)
        total = lse2(total, final[j] + end[j]);
    *log_lik = total;

    /* backward: beta[t] in mid, combined with alpha[t] into post[t] on the way */
    for (long j = 0; j < T_l; ++j) /* beta at the last padded frame */
        mid[j] = n_m - 1 == T_m - 1 ? end[j] : NEG;
    for (long t = T_m - 1; t >= 0; --t) {
        if (t < T_m - 1) {
            if (t < n_m - 1) {
                const float *e = emit + (t + 1) * T_l;
                for (long j = 0; j < T_l; ++j) /* ahead[j] = beta[t+1][j] + e[t+1][j], in place */
                    mid[j] = word_mask[j] ? mid[j] + e[j] : NEG;
#pragma omp simd
                for (long j = 0; j < T_l; ++j) /* reads j + 1, j + 2 before they are overwritten */
                    mid[j] = lse3(mid[j] + stay, mid[j + 1] + move, mid[j + 2] + jump);
            } else if (t == n_m - 1) {
                memcpy(mid, end, sizeof(float) * T_l);
            }
        }
        float *out = post + t * T_l;
        for (long j = 0; j < T_l; ++j) {
            float v = out[j] + mid[j] - total;
            out[j] = frame_mask[t] && v > IMPOSSIBLE_BELOW ? v : -INFINITY;
        }
    }
    if (!(total > IMPOSSIBLE_BELOW))
        *log_lik = -INFINITY;
}

/* Returns 0, or 1 when a workspace cannot be allocated. */
int monotone_forward_backward(const float *emit, const unsigned char *frame_mask, const unsigned char *word_mask,
                              long batch, long T_m, long T_l, float skip, int threads, float *log_lik, float *post) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *row = malloc(sizeof(float) * (2 * T_l + 4));
        failed = row == NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b)
            if (!failed)
                one_sample(emit + b * T_m * T_l, frame_mask + b * T_m, word_mask + b * T_l, T_m, T_l, skip,
                           log_lik + b, post + b * T_m * T_l, row);
        free(row);
    }
    return failed;
}
