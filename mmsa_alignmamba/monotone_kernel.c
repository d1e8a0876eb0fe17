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

/* One sample's chain: its valid lengths, the log-probabilities of its three moves, where it may
 * end. W slots per frame: the full lattice (starts NULL, W = T_l, slot k = word k) or the banded
 * one (slot k of frame t = word starts[t] + k; starts moves by 0..2 a frame). */
typedef struct {
    const unsigned char *word_mask;
    const long *starts;
    long T_l, W, n_m, n_l;
    float stay, move, jump;
    int reachable;
} chain_t;

static chain_t chain_of(const unsigned char *frame_mask, const unsigned char *word_mask, const long *starts,
                        long T_m, long T_l, long W, float skip) {
    chain_t c = {word_mask, starts, T_l, W, 0, 0, 0.f, 0.f, 0.f, 0};
    for (long t = 0; t < T_m; ++t)
        c.n_m += frame_mask[t] != 0;
    for (long j = 0; j < T_l; ++j)
        c.n_l += word_mask[j] != 0;
    c.n_m = c.n_m > 1 ? c.n_m : 1;
    c.n_l = c.n_l > 1 ? c.n_l : 1;
    /* the chance to move on: the expected moves over the frames cover the words */
    float advance = (float)(c.n_l - 1) / (float)(c.n_m - 1 > 1 ? c.n_m - 1 : 1) / (1.f + skip);
    advance = advance < 1e-4f ? 1e-4f : (advance > 0.95f ? 0.95f : advance);
    c.stay = log1pf(-advance), c.move = logf(advance * (1.f - skip)), c.jump = logf(advance * skip);
    c.reachable = c.n_l - 1 <= 2 * (c.n_m - 1) + 1;
    return c;
}

static inline long band_start(const chain_t *c, long t) { return c->starts ? c->starts[t] : 0; }

/* alpha[0]: the chain starts in the first word or (skip) the second. */
static void first_row(const chain_t *c, float skip, const float *e, float *alpha) {
    const long lo = band_start(c, 0);
    for (long k = 0; k < c->W; ++k) {
        long j = lo + k;
        float start = j == 0 ? logf(1.f - skip) : (j == 1 ? logf(skip) : NEG);
        alpha[k] = slot_valid(c->word_mask, c->T_l, lo, k) ? start + e[k] : NEG;
    }
}

/* alpha[t] from alpha[t-1] (prev) and e[t]; mid: a W-slot work row with two NEG borders a side. */
static void forward_row(const chain_t *c, long t, const float *prev, const float *e, float *mid, float *alpha) {
    /* locals, not c->...: the stores to alpha could alias them, which would keep the loop scalar */
    const long W = c->W, T_l = c->T_l, lo = band_start(c, t), d = lo - band_start(c, t - 1); /* slot k here is k + d there */
    const float stay = c->stay, move = c->move, jump = c->jump;
    const unsigned char *word_mask = c->word_mask;
    for (long k = 0; k < W; ++k)
        mid[k] = prev[k];
#pragma omp simd
    for (long k = 0; k < W; ++k)
        alpha[k] = slot_valid(word_mask, T_l, lo, k) ? lse3(mid[k + d] + stay, mid[k + d - 1] + move, mid[k + d - 2] + jump) + e[k] : NEG;
}

/* beta[t] (in beta) from beta[t+1] (also in beta) and e[t+1]; ahead: a work row like mid. */
static void backward_row(const chain_t *c, long t, const float *e_next, float *ahead, float *beta) {
    const long W = c->W, T_l = c->T_l, lo_next = band_start(c, t + 1), d = lo_next - band_start(c, t); /* slot k here is k - d there */
    const float stay = c->stay, move = c->move, jump = c->jump;
    const unsigned char *word_mask = c->word_mask;
    for (long k = 0; k < W; ++k) /* ahead[k] = beta[t+1][k] + e[t+1][k] */
        ahead[k] = slot_valid(word_mask, T_l, lo_next, k) ? beta[k] + e_next[k] : NEG;
#pragma omp simd
    for (long k = 0; k < W; ++k)
        beta[k] = lse3(ahead[k - d] + stay, ahead[k - d + 1] + move, ahead[k - d + 2] + jump);
}

/* The end: the last word, or anywhere where the last word cannot be reached; returns log_lik. */
static float end_row(const chain_t *c, const float *final, float *end) {
    const long lo_end = band_start(c, c->n_m - 1);
    float total = NEG;
    for (long k = 0; k < c->W; ++k) {
        end[k] = (c->reachable ? lo_end + k == c->n_l - 1 : slot_valid(c->word_mask, c->T_l, lo_end, k)) ? 0.f : NEG;
        total = lse2(total, final[k] + end[k]);
    }
    return total;
}

/* A work row of W slots with two NEG borders each side, at row + offset. */
static float *bordered(float *row, long offset, long W) {
    float *mid = row + offset + 2;
    mid[-2] = mid[-1] = mid[W] = mid[W + 1] = NEG;
    return mid;
}

/* One sample's log_lik and posteriors. row: 3 W + 8 floats of workspace. */
static void one_sample(const float *emit, const unsigned char *frame_mask, const chain_t *c, long T_m, float skip,
                       float *log_lik, float *post, float *row) {
    const long W = c->W, n_m = c->n_m;
    float *mid = bordered(row, 0, W), *ahead = bordered(row, W + 4, W), *end = row + 2 * W + 8;

    /* forward: alpha[t] into post[t] */
    first_row(c, skip, emit, post);
    for (long t = 1; t < T_m; ++t) {
        if (!frame_mask[t]) { /* padding carries the previous frame's */
            memcpy(post + t * W, post + (t - 1) * W, sizeof(float) * W);
            continue;
        }
        forward_row(c, t, post + (t - 1) * W, emit + t * W, mid, post + t * W);
    }
    const float total = end_row(c, post + (n_m - 1) * W, end);
    *log_lik = total;

    /* backward: beta[t] in mid, combined with alpha[t] into post[t] on the way */
    for (long k = 0; k < W; ++k) /* beta at the last padded frame */
        mid[k] = n_m - 1 == T_m - 1 ? end[k] : NEG;
    for (long t = T_m - 1; t >= 0; --t) {
        if (t < n_m - 1)
            backward_row(c, t, emit + (t + 1) * W, ahead, mid);
        else if (t == n_m - 1 && t < T_m - 1)
            memcpy(mid, end, sizeof(float) * W);
        float *out = post + t * W;
        for (long k = 0; k < W; ++k) {
            float v = out[k] + mid[k] - total;
            out[k] = frame_mask[t] && v > IMPOSSIBLE_BELOW ? v : -INFINITY;
        }
    }
    if (!(total > IMPOSSIBLE_BELOW))
        *log_lik = -INFINITY;
}

/* One sample's log_lik and each frame's most probable word (its posterior's argmax, the lowest
 * word on ties; -1 on padding), without the (T_m, W) posteriors: the backward pass keeps beta only
 * every K = ceil(sqrt(n_m)) frames, and each stretch of K frames recomputes its betas from the
 * next kept one while the forward pass goes through it: O(sqrt(T_m) W) floats of work instead of
 * O(T_m W), for one more forward and backward pass. The frames must be a prefix (the aligner's grid is). */
static void one_sample_best(const float *emit, const chain_t *c, long T_m, float skip, float *log_lik, long *best,
                            float *row) { /* row: (4 + n_m / K + 2 + K) W + 8 floats */
    const long W = c->W, n_m = c->n_m;
    long K = 1;
    while (K * K < n_m)
        ++K;
    float *mid = bordered(row, 0, W), *ahead = bordered(row, W + 4, W), *end = row + 2 * W + 8;
    float *alpha = end + W, *kept = alpha + W, *stretch = kept + (n_m / K + 1) * W; /* kept[c]: beta at (c+1) K */

    /* the forward pass's end first: log_lik and the end row */
    first_row(c, skip, emit, alpha);
    for (long t = 1; t < n_m; ++t) {
        forward_row(c, t, alpha, emit + t * W, mid, ahead);
        memcpy(alpha, ahead, sizeof(float) * W);
    }
    const float total = end_row(c, alpha, end);
    *log_lik = total > IMPOSSIBLE_BELOW ? total : -INFINITY;

    /* backward, keeping beta at frames K, 2K, ... */
    memcpy(mid, end, sizeof(float) * W);
    for (long t = n_m - 2; t >= 0; --t) {
        backward_row(c, t, emit + (t + 1) * W, ahead, mid);
        if (t > 0 && t % K == 0)
            memcpy(kept + (t / K - 1) * W, mid, sizeof(float) * W);
    }

    /* forward again, stretch by stretch, each with its betas recomputed from the next kept one */
    for (long s = 0; s * K < n_m; ++s) {
        const long first = s * K, last = (s + 1) * K < n_m ? (s + 1) * K - 1 : n_m - 1;
        if (last == n_m - 1) { /* beta at the last frame: the end */
            memcpy(mid, end, sizeof(float) * W);
        } else { /* from beta at last + 1: a kept one, or the end */
            memcpy(mid, last + 1 == n_m - 1 ? end : kept + s * W, sizeof(float) * W);
            backward_row(c, last, emit + (last + 1) * W, ahead, mid);
        }
        memcpy(stretch + (last - first) * W, mid, sizeof(float) * W);
        for (long t = last - 1; t >= first; --t) {
            backward_row(c, t, emit + (t + 1) * W, ahead, mid);
            memcpy(stretch + (t - first) * W, mid, sizeof(float) * W);
        }
        for (long t = first; t <= last; ++t) {
            if (t == 0) {
                first_row(c, skip, emit, alpha);
            } else {
                forward_row(c, t, alpha, emit + t * W, mid, ahead);
                memcpy(alpha, ahead, sizeof(float) * W);
            }
            const float *beta = stretch + (t - first) * W;
            long arg = 0;
            float top = -INFINITY;
            for (long k = 0; k < W; ++k) { /* the posterior's expression, so the same numbers as one_sample's */
                float v = alpha[k] + beta[k] - total;
                v = v > IMPOSSIBLE_BELOW ? v : -INFINITY;
                if (v > top)
                    top = v, arg = k;
            }
            best[t] = band_start(c, t) + arg;
        }
    }
    for (long t = n_m; t < T_m; ++t)
        best[t] = -1;
}

/* Whether all n floats are finite. A bit test, not isfinite(): under -ffast-math the compiler may
 * assume that no float is infinite or NaN and drop the check. */
static int all_finite(const float *x, long n) {
    unsigned bad = 0;
    for (long i = 0; i < n; ++i) {
        unsigned bits;
        memcpy(&bits, x + i, sizeof bits);
        bad |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

/* Each valid frame's most probable word from its posteriors (T_m, W), the lowest on ties; -1 on padding. */
static void argmax_rows(const float *post, const chain_t *c, long T_m, long *best) {
    for (long t = 0; t < T_m; ++t) {
        if (t >= c->n_m) {
            best[t] = -1;
            continue;
        }
        long arg = 0;
        float top = -INFINITY;
        for (long k = 0; k < c->W; ++k)
            if (post[t * c->W + k] > top)
                top = post[t * c->W + k], arg = k;
        best[t] = band_start(c, t) + arg;
    }
}

/* Returns 0; 1 when a workspace cannot be allocated; 2 when an emission is not finite (the caller
 * then runs the tensor version, which handles -inf). starts: (batch, T_m) longs, or NULL for the
 * full lattice (W = T_l); emit is (batch, T_m, W). With post (batch, T_m, W): the posteriors; with
 * post NULL: best (batch, T_m), each frame's most probable word: from a sample's posteriors in a
 * per-thread workspace when T_m W <= direct_cells (two passes over the lattice, the fastest),
 * else by one_sample_best (four passes, O(sqrt(T_m) W) floats). */
int monotone_forward_backward(const float *emit, const unsigned char *frame_mask, const unsigned char *word_mask,
                              const long *starts, long batch, long T_m, long T_l, long W, float skip, int threads,
                              long direct_cells, float *log_lik, float *post, long *best) {
    long K = 1;
    while (K * K < T_m)
        ++K;
    const int direct = post == NULL && T_m * W <= direct_cells;
    const long floats = post ? 3 * W + 8 : direct ? 3 * W + 8 + T_m * W
                                                  : (4 + (T_m / K + 2) + K) * W + 8; /* see one_sample_best */
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *row = malloc(sizeof(float) * floats);
        failed = row == NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b) {
            if (failed)
                continue;
            const float *e = emit + b * T_m * W;
            if (!all_finite(e, T_m * W)) {
                failed |= 2;
                continue;
            }
            const chain_t c = chain_of(frame_mask + b * T_m, word_mask + b * T_l, starts ? starts + b * T_m : NULL,
                                       T_m, T_l, W, skip);
            if (post) {
                one_sample(e, frame_mask + b * T_m, &c, T_m, skip, log_lik + b, post + b * T_m * W, row);
            } else if (direct) {
                float *lattice = row + 3 * W + 8;
                one_sample(e, frame_mask + b * T_m, &c, T_m, skip, log_lik + b, lattice, row);
                argmax_rows(lattice, &c, T_m, best + b * T_m);
            } else {
                one_sample_best(e, &c, T_m, skip, log_lik + b, best + b * T_m, row);
            }
        }
        free(row);
    }
    return failed;
}
