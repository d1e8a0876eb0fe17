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
 * the compiler to vectorise, exp included (glibc's libmvec with -ffast-math -fopenmp-simd).
 *
 * Layouts (row-major): xz (batch, L, 2 dim), x then z, as in_proj produces it; conv_w_t (K, dim);
 * conv_b (dim) or NULL; xproj_w (R + 2N, dim); dtproj_w_t (R, dim); dt_bias, D (dim);
 * A_t (N, dim); y (batch, L, dim).
 *
 * Threads: OpenMP, on the runtime PyTorch runs on (the library is linked against PyTorch's), so
 * its idle workers take the work instead of spinning beside ours. With at least as many samples
 * as threads, each thread takes whole samples. With fewer (batch 1 at serving time), the threads
 * share each sample's channels, in blocks of BLOCK, and meet once per step: x_proj needs every
 * channel of x_l. Either way x_proj's dot products are summed per block, then over blocks in
 * order, so every output is computed by the same operations whatever the thread count.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (no runtime beside PyTorch): one thread */
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define BLOCK 32 /* channels per block; the last block may be shorter */

typedef struct {
    const float *xz, *conv_w_t, *conv_b, *xproj_w, *dtproj_w_t, *dt_bias, *A_t, *D;
    long L, dim, K, R, N, P, blocks;
    float *y;
} Problem;

/* Per sample: state h (N x dim), step vectors x and dt (dim), the blocks' partial x_proj sums
 * for two steps (2 x blocks x P; alternate steps use alternate halves, so a thread may start
 * writing step l + 1's while another still reads step l's), and proj (P, per thread). */
typedef struct {
    float *h, *x, *dt, *partial;
} Shared;

static inline float silu(float v) { return v / (1.f + expf(-v)); }

static inline long block_end(const Problem *p, long k) { return (k + 1) * BLOCK < p->dim ? (k + 1) * BLOCK : p->dim; }

/* Step l, blocks [k0, k1): the conv and SiLU into x, and each block's x_proj partial sums. */
static void conv_and_project(const Problem *p, long b, long l, long k0, long k1, Shared *s) {
    const float *xz_b = p->xz + b * p->L * 2 * p->dim;
    float *partial = s->partial + (l & 1) * p->blocks * p->P;
    for (long k = k0; k < k1; ++k) {
        long c0 = k * BLOCK, c1 = block_end(p, k);
        float *x = s->x;
        for (long c = c0; c < c1; ++c)
            x[c] = p->conv_b ? p->conv_b[c] : 0.f;
        for (long j = (l >= p->K - 1 ? 0 : p->K - 1 - l); j < p->K; ++j) { /* steps before 0 are zeros */
            const float *x_src = xz_b + (l - (p->K - 1) + j) * 2 * p->dim, *w = p->conv_w_t + j * p->dim;
#pragma omp simd
            for (long c = c0; c < c1; ++c)
                x[c] += w[c] * x_src[c];
        }
#pragma omp simd
        for (long c = c0; c < c1; ++c)
            x[c] = silu(x[c]);
        for (long j = 0; j < p->P; ++j) {
            const float *w = p->xproj_w + j * p->dim;
            float acc = 0.f;
#pragma omp simd reduction(+ : acc)
            for (long c = c0; c < c1; ++c)
                acc += w[c] * x[c];
            partial[k * p->P + j] = acc;
        }
    }
}

/* Step l, blocks [k0, k1): dt, the scan step and the gated read-out, given every block's
 * partial sums of step l. */
static void scan_step(const Problem *p, long b, long l, long k0, long k1, Shared *s, float *proj) {
    const float *partial = s->partial + (l & 1) * p->blocks * p->P;
    for (long j = 0; j < p->P; ++j) { /* x_proj: the blocks' sums, in block order */
        float acc = 0.f;
        for (long k = 0; k < p->blocks; ++k)
            acc += partial[k * p->P + j];
        proj[j] = acc;
    }
    const float *dt_low = proj, *B_l = proj + p->R, *C_l = proj + p->R + p->N;
    const float *z_l = p->xz + (b * p->L + l) * 2 * p->dim + p->dim;
    const float *x = s->x;
    float *dt = s->dt, *y_l = p->y + (b * p->L + l) * p->dim;
    long c0 = k0 * BLOCK, c1 = k1 > k0 ? block_end(p, k1 - 1) : c0;
    memcpy(dt + c0, p->dt_bias + c0, sizeof(float) * (c1 - c0));
    for (long r = 0; r < p->R; ++r) {
        const float *w = p->dtproj_w_t + r * p->dim, v = dt_low[r];
#pragma omp simd
        for (long c = c0; c < c1; ++c)
            dt[c] += w[c] * v;
    }
#pragma omp simd
    for (long c = c0; c < c1; ++c) /* softplus, with PyTorch's threshold of 20 */
        dt[c] = dt[c] > 20.f ? dt[c] : log1pf(expf(dt[c]));
#pragma omp simd
    for (long c = c0; c < c1; ++c)
        y_l[c] = p->D[c] * x[c];
    for (long n = 0; n < p->N; ++n) {
        const float *A_n = p->A_t + n * p->dim;
        float *h_n = s->h + n * p->dim, b_n = B_l[n], c_n = C_l[n];
#pragma omp simd
        for (long c = c0; c < c1; ++c) {
            h_n[c] = expf(dt[c] * A_n[c]) * h_n[c] + dt[c] * x[c] * b_n;
            y_l[c] += h_n[c] * c_n;
        }
    }
#pragma omp simd
    for (long c = c0; c < c1; ++c)
        y_l[c] *= silu(z_l[c]);
}

static float *shared_alloc(const Problem *p, Shared *s) {
    float *all = malloc(sizeof(float) * (p->N * p->dim + 2 * p->dim + 2 * p->blocks * p->P));
    if (all != NULL) {
        s->h = all;
        s->x = s->h + p->N * p->dim;
        s->dt = s->x + p->dim;
        s->partial = s->dt + p->dim;
    }
    return all;
}

/* Returns 0, or 1 when a workspace cannot be allocated. */
int mamba_inner_fwd(const float *xz, const float *conv_w_t, const float *conv_b, const float *xproj_w,
                    const float *dtproj_w_t, const float *dt_bias, const float *A_t, const float *D,
                    long L, long dim, long K, long R, long N, long batch, int threads, float *y) {
    Problem p = {xz, conv_w_t, conv_b, xproj_w, dtproj_w_t, dt_bias, A_t, D,
                 L, dim, K, R, N, R + 2 * N, (dim + BLOCK - 1) / BLOCK, y};
    int failed = 0;
    if (batch >= threads || p.blocks == 1) { /* whole samples per thread */
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
            Shared s;
            float *all = shared_alloc(&p, &s), *proj = malloc(sizeof(float) * p.P);
            failed = all == NULL || proj == NULL;
#pragma omp for schedule(static)
            for (long b = 0; b < batch; ++b) {
                if (failed)
                    continue;
                memset(s.h, 0, sizeof(float) * p.N * p.dim);
                for (long l = 0; l < L; ++l) {
                    conv_and_project(&p, b, l, 0, p.blocks, &s);
                    scan_step(&p, b, l, 0, p.blocks, &s, proj);
                }
            }
            free(all);
            free(proj);
        }
        return failed;
    }
    /* fewer samples than threads: the threads share each sample's channel blocks */
    Shared s;
    float *all = shared_alloc(&p, &s);
    if (all == NULL)
        return 1;
    int team = threads < p.blocks ? threads : (int)p.blocks;
#pragma omp parallel num_threads(team) reduction(| : failed)
    {
        int t = omp_get_thread_num(), size = omp_get_num_threads();
        long k0 = p.blocks * t / size, k1 = p.blocks * (t + 1) / size;
        long c0 = k0 * BLOCK, c1 = k1 > k0 ? block_end(&p, k1 - 1) : c0;
        float *proj = malloc(sizeof(float) * p.P);
        failed = proj == NULL;
        for (long b = 0; b < batch; ++b) {
            for (long row = 0; row < p.N; ++row) /* this thread's part of the state */
                memset(s.h + row * p.dim + c0, 0, sizeof(float) * (c1 - c0));
            for (long l = 0; l < L; ++l) {
                conv_and_project(&p, b, l, k0, k1, &s);
#pragma omp barrier
                if (proj != NULL)
                    scan_step(&p, b, l, k0, k1, &s, proj);
            }
#pragma omp barrier
        }
        free(proj);
    }
    free(all);
    return failed;
}
