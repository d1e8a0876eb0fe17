/* The inside of a Mamba block for inference on CPU, one time step at a time, in cache.
 *
 * What Mamba.forward computes between in_proj and out_proj, for each sample and step l:
 *     x_l  = SiLU(causal depthwise conv of x over steps l-K+1..l + conv bias)     (dim)
 *     [dt_low, B_l, C_l] = x_proj x_l                                              (R + 2N)
 *     dt_l = softplus(dt_proj dt_low + dt bias)                                    (dim)
 *     h_l  = exp(dt_l A) h_{l-1} + (dt_l x_l) B_l                                  (N, dim)
 *     y_l  = (sum_n C_l[n] h_l[n] + D x_l) SiLU(z_l)                               (dim)
 * The PyTorch path runs each line as a separate operator over the whole sequence and writes
 * (L, dim, N) state tensors to memory; here a step's vectors and the state (N x dim floats)
 * stay in cache, and only y is written. Every loop over channels is contiguous and written for
 * the compiler to vectorise (glibc's vector expf and log1pf with -ffast-math -fopenmp-simd; the
 * state's decay, N exps a channel and step, through the inline exp_nonpositive instead).
 *
 * Layouts (row-major): xz (batch, L, 2 dim), x then z, as in_proj produces it; conv_w_t (K, dim);
 * conv_b (dim) or NULL; xproj_w (R + 2N, dim); dtproj_w_t (R, dim); dt_bias, D (dim);
 * A_t (N, dim); y (batch, L, dim).
 *
 * Threads: OpenMP, on the runtime PyTorch runs on (the library is linked against PyTorch's), so
 * its idle workers take the work instead of spinning beside ours. Each thread takes whole
 * samples, so the numbers do not depend on the thread count. Splitting one sample's channels
 * across threads instead needs a barrier every step (x_proj reads every channel); on the 2-core
 * machine that measured slower than one thread at every width tried (d_model 32 to 256).
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *xz, *conv_w_t, *conv_b, *xproj_w, *dtproj_w_t, *dt_bias, *A_t, *D;
    long L, dim, K, R, N, P;
    float *y;
} Problem;

/* A thread's workspace: state h (N x dim), step vectors x and dt (dim), proj (P). */
typedef struct {
    float *h, *x, *dt, *proj;
} Workspace;

static inline float silu(float v) { return v / (1.f + expf(-v)); }

/* exp(v) for v <= 0, the decay exp(dt A): 2^k p(r) with r = v - k ln 2 in [-ln2/2, ln2/2] and a
 * degree-6 Taylor polynomial (within 2 ulp of expf); 0 below -87 would be subnormal, -87 gives
 * 1.6e-38 instead. Inline, so the state loop stays one vector loop with no call per vector: a
 * fifth faster than libmvec's expf there. */
static inline float exp_nonpositive(float v) {
    v = v < -87.f ? -87.f : v;
    float k = __builtin_roundf(v * 1.44269504088896341f);
    float r = v - k * 0.693145751953125f - k * 1.428606765330187045e-06f;   /* ln 2 in two parts */
    float p = 1.f + r * (1.f + r * (0.5f + r * (0.166666671633720f + r * (0.0416664853692055f
                  + r * (0.00833336077630520f + r * 0.00139304355252534f)))));
    union { float f; int i; } two_k = {.i = ((int)k + 127) << 23};
    return p * two_k.f;
}

/* Sample b, step l: every line of the recursion above. */
static void step(const Problem *p, long b, long l, Workspace *w) {
    const long dim = p->dim;
    const float *xz_l = p->xz + (b * p->L + l) * 2 * dim, *z_l = xz_l + dim;
    float *x = w->x, *dt = w->dt, *proj = w->proj, *y_l = p->y + (b * p->L + l) * dim;
    for (long c = 0; c < dim; ++c)
        x[c] = p->conv_b ? p->conv_b[c] : 0.f;
    for (long j = (l >= p->K - 1 ? 0 : p->K - 1 - l); j < p->K; ++j) { /* steps before 0 are zeros */
        const float *x_src = xz_l + (j - (p->K - 1)) * 2 * dim, *cw = p->conv_w_t + j * dim;
#pragma omp simd
        for (long c = 0; c < dim; ++c)
            x[c] += cw[c] * x_src[c];
    }
#pragma omp simd
    for (long c = 0; c < dim; ++c)
        x[c] = silu(x[c]);
    for (long j = 0; j < p->P; ++j) {
        const float *row = p->xproj_w + j * dim;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (long c = 0; c < dim; ++c)
            acc += row[c] * x[c];
        proj[j] = acc;
    }
    const float *dt_low = proj, *B_l = proj + p->R, *C_l = proj + p->R + p->N;
    memcpy(dt, p->dt_bias, sizeof(float) * dim);
    for (long r = 0; r < p->R; ++r) {
        const float *row = p->dtproj_w_t + r * dim, v = dt_low[r];
#pragma omp simd
        for (long c = 0; c < dim; ++c)
            dt[c] += row[c] * v;
    }
#pragma omp simd
    for (long c = 0; c < dim; ++c) /* softplus, with PyTorch's threshold of 20 */
        dt[c] = dt[c] > 20.f ? dt[c] : log1pf(expf(dt[c]));
#pragma omp simd
    for (long c = 0; c < dim; ++c)
        y_l[c] = p->D[c] * x[c];
    for (long n = 0; n < p->N; ++n) {
        const float *A_n = p->A_t + n * dim;
        float *h_n = w->h + n * dim, b_n = B_l[n], c_n = C_l[n];
#pragma omp simd
        for (long c = 0; c < dim; ++c) {
            h_n[c] = exp_nonpositive(dt[c] * A_n[c]) * h_n[c] + dt[c] * x[c] * b_n;
            y_l[c] += h_n[c] * c_n;
        }
    }
#pragma omp simd
    for (long c = 0; c < dim; ++c)
        y_l[c] *= silu(z_l[c]);
}

/* Returns 0, or 1 when a workspace cannot be allocated. */
int mamba_inner_fwd(const float *xz, const float *conv_w_t, const float *conv_b, const float *xproj_w,
                    const float *dtproj_w_t, const float *dt_bias, const float *A_t, const float *D,
                    long L, long dim, long K, long R, long N, long batch, int threads, float *y) {
    Problem p = {xz, conv_w_t, conv_b, xproj_w, dtproj_w_t, dt_bias, A_t, D, L, dim, K, R, N, R + 2 * N, y};
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Workspace w;
        float *all = malloc(sizeof(float) * ((N + 2) * dim + p.P));
        failed = all == NULL;
        if (!failed) {
            w.h = all;
            w.x = w.h + N * dim;
            w.dt = w.x + dim;
            w.proj = w.dt + dim;
        }
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b) {
            if (failed)
                continue;
            memset(w.h, 0, sizeof(float) * N * dim);
            for (long l = 0; l < L; ++l)
                step(&p, b, l, &w);
        }
        free(all);
    }
    return failed;
}
