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
 * Layouts (row-major): emit (batch, T_m, W) float32; frame_mask (batch, T_m), word_mask
 * (batch, T_l), bytes, nonzero = valid; starts (batch, T_m) int64 or NULL; log_lik (batch); post
 * (batch, T_m, W), which holds alpha between the two passes. W = T_l for the full lattice; the
 * banded one (alignment/band.py) keeps W words a frame, slot k of frame t being word starts[t] + k. Threads: whole samples each (OpenMP, on PyTorch's runtime), so the
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

/* The word of band slot k at a frame whose band starts at word lo; valid when it is a real word. */
static inline int slot_valid(const unsigned char *word_mask, long T_l, long lo, long k) {
    return lo + k < T_l && word_mask[lo + k];
}

/* One sample. W slots per frame: the full lattice (starts NULL, W = T_l, slot k = word k) or the
 * banded one (slot k of frame t = word starts[t] + k; starts moves by 0..2 a frame). row: 2 + W + 2
 * floats (NEG borders for the shifted reads), the same again for the backward's ahead row, then W
 * for the log-probability of ending in each slot. */
static void one_sample(const float *emit, const unsigned char *frame_mask, const unsigned char *word_mask,
                       const long *starts, long T_m, long T_l, long W, float skip, float *log_lik, float *post,
                       float *row) {
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
    float *mid = row + 2; /* mid[-2], mid[-1], mid[W], mid[W + 1] stay NEG */
    float *ahead = row + W + 6; /* the same borders */
    row[0] = row[1] = mid[W] = mid[W + 1] = NEG;
    ahead[-2] = ahead[-1] = ahead[W] = ahead[W + 1] = NEG;
#define START(t) (starts ? starts[t] : 0)

    /* forward: alpha[t] into post[t] */
    for (long k = 0; k < W; ++k) {
        long j = START(0) + k;
        float start = j == 0 ? logf(1.f - skip) : (j == 1 ? logf(skip) : NEG);
        post[k] = slot_valid(word_mask, T_l, START(0), k) ? start + emit[k] : NEG;
    }
    for (long t = 1; t < T_m; ++t) {
        const float *prev = post + (t - 1) * W, *e = emit + t * W;
        float *alpha = post + t * W;
        if (!frame_mask[t]) { /* padding carries the previous frame's */
            for (long k = 0; k < W; ++k)
                alpha[k] = prev[k];
            continue;
        }
        const long lo = START(t), d = lo - START(t - 1); /* slot k here is slot k + d of the previous frame */
        for (long k = 0; k < W; ++k)
            mid[k] = prev[k];
#pragma omp simd
        for (long k = 0; k < W; ++k)
            alpha[k] = slot_valid(word_mask, T_l, lo, k)
                       ? lse3(mid[k + d] + stay, mid[k + d - 1] + move, mid[k + d - 2] + jump) + e[k] : NEG;
    }

    /* the end: the last word, or anywhere where the last word cannot be reached */
    const int reachable = n_l - 1 <= 2 * (n_m - 1) + 1;
    const long lo_end = START(n_m - 1);
    float *end = row + 2 * W + 8;
    for (long k = 0; k < W; ++k)
        end[k] = (reachable ? lo_end + k == n_l - 1 : slot_valid(word_mask, T_l, lo_end, k)) ? 0.f : NEG;
    const float *final = post + (n_m - 1) * W;
    float total = NEG;
    for (long k = 0; k < W; ++k)
        total = lse2(total, final[k] + end[k]);
    *log_lik = total;

    /* backward: beta[t] in mid, combined with alpha[t] into post[t] on the way */
    for (long k = 0; k < W; ++k) /* beta at the last padded frame */
        mid[k] = n_m - 1 == T_m - 1 ? end[k] : NEG;
    for (long t = T_m - 1; t >= 0; --t) {
        if (t < T_m - 1) {
            if (t < n_m - 1) {
                const float *e = emit + (t + 1) * W;
                const long lo_next = START(t + 1), d = lo_next - START(t); /* slot k here is k - d there */
                for (long k = 0; k < W; ++k) /* ahead[k] = beta[t+1][k] + e[t+1][k] */
                    ahead[k] = slot_valid(word_mask, T_l, lo_next, k) ? mid[k] + e[k] : NEG;
#pragma omp simd
                for (long k = 0; k < W; ++k)
                    mid[k] = lse3(ahead[k - d] + stay, ahead[k - d + 1] + move, ahead[k - d + 2] + jump);
            } else if (t == n_m - 1) {
                memcpy(mid, end, sizeof(float) * W);
            }
        }
        float *out = post + t * W;
        for (long k = 0; k < W; ++k) {
            float v = out[k] + mid[k] - total;
            out[k] = frame_mask[t] && v > IMPOSSIBLE_BELOW ? v : -INFINITY;
        }
    }
#undef START
    if (!(total > IMPOSSIBLE_BELOW))
        *log_lik = -INFINITY;
}

/* Returns 0, or 1 when a workspace cannot be allocated. starts: (batch, T_m) longs, or NULL for the
 * full lattice (W = T_l); emit and post are (batch, T_m, W). */
int monotone_forward_backward(const float *emit, const unsigned char *frame_mask, const unsigned char *word_mask,
                              const long *starts, long batch, long T_m, long T_l, long W, float skip, int threads,
                              float *log_lik, float *post) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *row = malloc(sizeof(float) * (3 * W + 8));
        failed = row == NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b)
            if (!failed)
                one_sample(emit + b * T_m * W, frame_mask + b * T_m, word_mask + b * T_l,
                           starts ? starts + b * T_m : NULL, T_m, T_l, W, skip, log_lik + b, post + b * T_m * W, row);
        free(row);
    }
    return failed;
}
