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
 * state's decay, N exps a channel and step, through the inline exp_decay instead).
 *
 * Layouts (row-major): xz (batch, L, 2 dim), x then z, as in_proj produces it; the block's
 * parameters as PyTorch holds them: conv_w (dim, K), conv_b (dim) or NULL, xproj_w (R + 2N, dim),
 * dtproj_w (dim, R), dt_bias, D (dim), A_log (dim, N); y (batch, L, dim). The kernel turns conv_w,
 * dtproj_w and A = -exp(A_log) channel-last once per call (a few thousand floats), so that a
 * step's loops over channels are contiguous; doing it here saves a Python call a handful of
 * tensor operators.
 *
 * Threads: OpenMP, on the runtime PyTorch runs on (the library is linked against PyTorch's), so
 * its idle workers take the work instead of spinning beside ours. With at least as many samples
 * as threads, each thread takes whole samples. With fewer (a single sample at serving time), the
 * lines split in two phases that need one barrier between them, not one a step: the first four
 * lines depend on no state, so the threads share out the steps; the recurrence and the read-out
 * are independent per channel, so they share out blocks of channels. (Splitting channels within
 * a step instead needs a barrier every step, since x_proj reads every channel; on the 2-core
 * machine that measured slower than one thread.) Either way every number is computed by the same
 * code, and channel blocks start at multiples of CHANNEL_ALIGN, so each channel meets the same
 * vector instructions: the output does not depend on the thread count.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHANNEL_ALIGN 16 /* floats: the widest vector (AVX-512) */

typedef struct {
    const float *xz, *conv_w_t, *conv_b, *xproj_w, *dtproj_w_t, *dt_bias, *A_t, *D;
    long L, dim, K, R, N, P;
    float *y;
} Problem;

static inline float silu(float v) { return v / (1.f + expf(-v)); }

/* exp(v) for the decay exp(dt A) (v <= 0 in Mamba, where A < 0): 2^k p(r) with r = v - k ln 2 in
 * [-ln2/2, ln2/2] and a degree-6 Taylor polynomial (within 2 ulp of expf). v is clamped to
 * [-87, 88], where 2^k stays a normal float: below, 1.6e-38 stands for a decay that is 0 to
 * float32's eye; above (a growing state, A > 0), 1.6e38 for what would overflow. Inline, so the
 * state loop stays one vector loop with no call per vector: a fifth faster than libmvec's expf. */
static inline float exp_decay(float v) {
    v = v < -87.f ? -87.f : (v > 88.f ? 88.f : v);
    float k = __builtin_roundf(v * 1.44269504088896341f);
    float r = v - k * 0.693145751953125f - k * 1.428606765330187045e-06f;   /* ln 2 in two parts */
    float p = 1.f + r * (1.f + r * (0.5f + r * (0.166666671633720f + r * (0.0416664853692055f
                  + r * (0.00833336077630520f + r * 0.00139304355252534f)))));
    union { float f; int i; } two_k = {.i = ((int)k + 127) << 23};
    return p * two_k.f;
}

/* softplus, with PyTorch's threshold of 20 */
static inline float softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }

/* The state one step on, h = exp(dt A) h + (dt x) B_l, for `count` channels: h and A_t are N rows
 * `stride` floats apart, dt and x `count` long; for both the inference kernel and the training scan. */
static void state_step(float *h, const float *A_t, const float *dt, const float *x, const float *B_l, long N,
                       long stride, long count) {
    for (long n = 0; n < N; ++n) {
        const float *A_n = A_t + n * stride, b_n = B_l[n];
        float *h_n = h + n * stride;
#pragma omp simd
        for (long c = 0; c < count; ++c)
            h_n[c] = exp_decay(dt[c] * A_n[c]) * h_n[c] + dt[c] * x[c] * b_n;
    }
}

/* The read-out y_l = sum_n C_l[n] h[n] + D x (D may be NULL), for `count` channels (h as in state_step). */
static void read_out(float *y_l, const float *h, const float *C_l, const float *D, const float *x, long N,
                     long stride, long count) {
#pragma omp simd
    for (long c = 0; c < count; ++c)
        y_l[c] = D ? D[c] * x[c] : 0.f;
    for (long n = 0; n < N; ++n) {
        const float *h_n = h + n * stride, c_n = C_l[n];
#pragma omp simd
        for (long c = 0; c < count; ++c)
            y_l[c] += h_n[c] * c_n;
    }
}

/* Sample b, step l, the lines before the recurrence: x (dim), dt (dim) and proj = [dt_low, B_l, C_l] (P). */
static void step_inputs(const Problem *p, long b, long l, float *x, float *dt, float *proj) {
    const long dim = p->dim;
    const float *xz_l = p->xz + (b * p->L + l) * 2 * dim;
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
    const float *dt_low = proj;
    memcpy(dt, p->dt_bias, sizeof(float) * dim);
    for (long r = 0; r < p->R; ++r) {
        const float *row = p->dtproj_w_t + r * dim, v = dt_low[r];
#pragma omp simd
        for (long c = 0; c < dim; ++c)
            dt[c] += row[c] * v;
    }
#pragma omp simd
    for (long c = 0; c < dim; ++c)
        dt[c] = softplus(dt[c]);
}

/* Sample b, step l, the recurrence and the gated read-out for channels [c0, c1), from that step's
 * x, dt (dim) and proj (P); h: the sample's state (N x dim). */
static void step_scan(const Problem *p, long b, long l, float *h, const float *x, const float *dt,
                      const float *proj, long c0, long c1) {
    const long dim = p->dim, count = c1 - c0;
    const float *B_l = proj + p->R, *C_l = B_l + p->N, *z_l = p->xz + (b * p->L + l) * 2 * dim + dim + c0;
    float *y_l = p->y + (b * p->L + l) * dim + c0;
    state_step(h + c0, p->A_t + c0, dt + c0, x + c0, B_l, p->N, dim, count);
    read_out(y_l, h + c0, C_l, p->D ? p->D + c0 : NULL, x + c0, p->N, dim, count);
#pragma omp simd
    for (long c = 0; c < count; ++c)
        y_l[c] *= silu(z_l[c]);
}

/* Whole samples a thread: its state h (N x dim) and one step's x, dt (dim), proj (P) in cache. */
static int by_sample(const Problem *p, long batch, int threads) {
    const long dim = p->dim, N = p->N;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *h = malloc(sizeof(float) * ((N + 2) * dim + p->P));
        failed = h == NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b) {
            if (failed)
                continue;
            float *x = h + N * dim, *dt = x + dim, *proj = dt + dim;
            memset(h, 0, sizeof(float) * N * dim);
            for (long l = 0; l < p->L; ++l) {
                step_inputs(p, b, l, x, dt, proj);
                step_scan(p, b, l, h, x, dt, proj, 0, dim);
            }
        }
        free(h);
    }
    return failed;
}

/* Fewer samples than threads: every step's inputs first (threads share the steps), then the
 * recurrence over blocks of channels (threads share sample x block); one barrier between. */
static int by_phase(const Problem *p, long batch, int threads) {
    const long dim = p->dim, N = p->N, L = p->L, P = p->P;
    const long groups = (dim + CHANNEL_ALIGN - 1) / CHANNEL_ALIGN;
    long blocks = (threads + batch - 1) / batch;
    blocks = blocks < groups ? blocks : groups;
    float *inputs = malloc(sizeof(float) * batch * L * (2 * dim + P)); /* per step: x, dt, proj */
    if (inputs == NULL)
        return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#pragma omp for schedule(static)
        for (long at = 0; at < batch * L; ++at) {
            float *x = inputs + at * (2 * dim + P);
            step_inputs(p, at / L, at % L, x, x + dim, x + 2 * dim);
        }
        float *h = malloc(sizeof(float) * N * dim);
        failed = h == NULL;
#pragma omp for schedule(static)
        for (long item = 0; item < batch * blocks; ++item) {
            if (failed)
                continue;
            const long b = item / blocks, block = item % blocks;
            const long c0 = block * groups / blocks * CHANNEL_ALIGN, end = (block + 1) * groups / blocks * CHANNEL_ALIGN;
            const long c1 = end < dim ? end : dim; /* the last block stops at dim */
            memset(h, 0, sizeof(float) * N * dim);
            for (long l = 0; l < L; ++l) {
                const float *x = inputs + (b * L + l) * (2 * dim + P);
                step_scan(p, b, l, h, x, x + dim, x + 2 * dim, c0, c1);
            }
        }
        free(h);
    }
    free(inputs);
    return failed;
}

/* Returns 0, or 1 when a workspace cannot be allocated. */
int mamba_inner_fwd(const float *xz, const float *conv_w, const float *conv_b, const float *xproj_w,
                    const float *dtproj_w, const float *dt_bias, const float *A_log, const float *D,
                    long L, long dim, long K, long R, long N, long batch, int threads, float *y) {
    float *layouts = malloc(sizeof(float) * (K + R + N) * dim); /* conv_w_t (K, dim), dtproj_w_t (R, dim), A_t (N, dim) */
    if (layouts == NULL)
        return 1;
    float *conv_w_t = layouts, *dtproj_w_t = conv_w_t + K * dim, *A_t = dtproj_w_t + R * dim;
    for (long c = 0; c < dim; ++c) {
        for (long j = 0; j < K; ++j)
            conv_w_t[j * dim + c] = conv_w[c * K + j];
        for (long r = 0; r < R; ++r)
            dtproj_w_t[r * dim + c] = dtproj_w[c * R + r];
        for (long n = 0; n < N; ++n)
            A_t[n * dim + c] = -expf(A_log[c * N + n]);
    }
    Problem p = {xz, conv_w_t, conv_b, xproj_w, dtproj_w_t, dt_bias, A_t, D, L, dim, K, R, N, R + 2 * N, y};
    const int failed = threads > batch ? by_phase(&p, batch, threads) : by_sample(&p, batch, threads);
    free(layouts);
    return failed;
}

/* ---------------------------------------------------------------------------------------------
 * The selective scan alone, for training: forward and backward of mamba.selective_scan,
 *     dt_l = softplus(delta_l + bias) (or delta_l + bias),  h_l = exp(dt_l A) h_{l-1} + dt_l u_l B_l,
 *     y_l  = sum_n C_l[n] h_l[n] + D u_l,                   out_l = y_l SiLU(z_l) (or y_l),
 * with its gradient with respect to every input. The forward keeps the state only every `check`
 * steps (checkpoints); the backward rebuilds each stretch of `check` states from its checkpoint,
 * then runs the adjoint recurrence g_l = C_l dy_l + exp(dt_{l+1} A) g_{l+1} back through it.
 *
 * Layouts (row-major, time before channels so a step's vectors are contiguous): u, delta, z, y,
 * out and their gradients (batch, L, dim); B, C and theirs (batch, L, N); A_t (N, dim); D, bias
 * (dim), NULL when absent (as z); checkpoints (batch, ceil(L / check), N, dim). Gradients of the
 * parameters shared by all samples (A, D, bias) come per sample, (batch, N, dim) and (batch, dim),
 * for the caller to sum in sample order: the numbers do not depend on the thread count.
 * --------------------------------------------------------------------------------------------- */

typedef struct {
    const float *u, *delta, *A_t, *B, *C, *D, *z, *bias;
    long L, dim, N;
    int use_softplus;
} Scan;

static inline float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

/* dt of sample b, step l, into dt (dim) */
static void scan_dt(const Scan *s, long b, long l, float *dt) {
    const float *delta_l = s->delta + (b * s->L + l) * s->dim;
#pragma omp simd
    for (long c = 0; c < s->dim; ++c) {
        float v = delta_l[c] + (s->bias ? s->bias[c] : 0.f);
        dt[c] = s->use_softplus ? softplus(v) : v;
    }
}

/* h (N x dim) one step on at sample b, step l */
static void scan_state_step(const Scan *s, long b, long l, const float *dt, float *h) {
    const long at = b * s->L + l;
    state_step(h, s->A_t, dt, s->u + at * s->dim, s->B + at * s->N, s->N, s->dim, s->dim);
}

int selective_scan_fwd(const float *u, const float *delta, const float *A_t, const float *B, const float *C,
                       const float *D, const float *z, const float *bias, int use_softplus, long batch, long L,
                       long dim, long N, long check, int threads, float *y, float *out, float *checkpoints) {
    Scan s = {u, delta, A_t, B, C, D, z, bias, L, dim, N, use_softplus};
    const long stretches = (L + check - 1) / check;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *h = malloc(sizeof(float) * (N + 1) * dim), *dt = h ? h + N * dim : NULL;
        failed = h == NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b) {
            if (failed)
                continue;
            memset(h, 0, sizeof(float) * N * dim);
            for (long l = 0; l < L; ++l) {
                if (l % check == 0)
                    memcpy(checkpoints + (b * stretches + l / check) * N * dim, h, sizeof(float) * N * dim);
                scan_dt(&s, b, l, dt);
                scan_state_step(&s, b, l, dt, h);
                float *y_l = y + (b * L + l) * dim, *out_l = out + (b * L + l) * dim;
                read_out(y_l, h, C + (b * L + l) * N, D, u + (b * L + l) * dim, N, dim, dim);
                const float *z_l = z ? z + (b * L + l) * dim : NULL;
#pragma omp simd
                for (long c = 0; c < dim; ++c)
                    out_l[c] = z_l ? y_l[c] * silu(z_l[c]) : y_l[c];
            }
        }
        free(h);
    }
    return failed;
}

int selective_scan_bwd(const float *u, const float *delta, const float *A_t, const float *B, const float *C,
                       const float *D, const float *z, const float *bias, int use_softplus, long batch, long L,
                       long dim, long N, long check, int threads, const float *y, const float *checkpoints,
                       const float *dout,
                       float *du, float *ddelta, float *dA, float *dB, float *dC, float *dD, float *dz,
                       float *dbias) {
    Scan s = {u, delta, A_t, B, C, D, z, bias, L, dim, N, use_softplus};
    const long stretches = (L + check - 1) / check, state = N * dim;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* per thread: the stretch's states (check + 1 of them, the first its checkpoint) and dts,
         * the adjoint g, and a step's dy, dt-gradient and u-gradient */
        float *work = malloc(sizeof(float) * ((check + 1) * state + check * dim + state + 3 * dim));
        failed = work == NULL;
        float *hs = work, *dts = work ? hs + (check + 1) * state : NULL, *g = dts ? dts + check * dim : NULL;
        float *dy = g ? g + state : NULL, *ddt = dy ? dy + dim : NULL, *du_l = ddt ? ddt + dim : NULL;
#pragma omp for schedule(static)
        for (long b = 0; b < batch; ++b) {
            if (failed)
                continue;
            float *dA_b = dA + b * state, *dD_b = dD ? dD + b * dim : NULL, *dbias_b = dbias ? dbias + b * dim : NULL;
            memset(dA_b, 0, sizeof(float) * state);
            if (dD_b)
                memset(dD_b, 0, sizeof(float) * dim);
            if (dbias_b)
                memset(dbias_b, 0, sizeof(float) * dim);
            memset(g, 0, sizeof(float) * state);
            for (long k = stretches - 1; k >= 0; --k) {
                const long l0 = k * check, l1 = l0 + check < L ? l0 + check : L;
                memcpy(hs, checkpoints + (b * stretches + k) * state, sizeof(float) * state);
                for (long l = l0; l < l1; ++l) { /* rebuild the stretch: hs[i + 1] is the state after step l0 + i */
                    float *dt = dts + (l - l0) * dim, *h = hs + (l - l0 + 1) * state;
                    scan_dt(&s, b, l, dt);
                    memcpy(h, h - state, sizeof(float) * state);
                    scan_state_step(&s, b, l, dt, h);
                }
                for (long l = l1 - 1; l >= l0; --l) {
                    const float *dt = dts + (l - l0) * dim, *h = hs + (l - l0 + 1) * state, *h_prev = h - state;
                    const long at = b * L + l;
                    const float *u_l = u + at * dim, *B_l = B + at * N, *C_l = C + at * N;
                    const float *dout_l = dout + at * dim, *z_l = z ? z + at * dim : NULL, *y_l = y + at * dim;
                    if (z_l) { /* out = y SiLU(z): silu'(z) = s (1 + z (1 - s)) */
                        float *dz_l = dz + at * dim;
#pragma omp simd
                        for (long c = 0; c < dim; ++c) {
                            float sz = sigmoid(z_l[c]);
                            dz_l[c] = dout_l[c] * y_l[c] * sz * (1.f + z_l[c] * (1.f - sz));
                            dy[c] = dout_l[c] * z_l[c] * sz;
                        }
                    } else {
                        memcpy(dy, dout_l, sizeof(float) * dim);
                    }
#pragma omp simd
                    for (long c = 0; c < dim; ++c) {
                        du_l[c] = D ? D[c] * dy[c] : 0.f;
                        ddt[c] = 0.f;
                    }
                    if (dD_b) {
#pragma omp simd
                        for (long c = 0; c < dim; ++c)
                            dD_b[c] += dy[c] * u_l[c];
                    }
                    float *dB_l = dB + at * N, *dC_l = dC + at * N;
                    for (long n = 0; n < N; ++n) {
                        const float *A_n = A_t + n * dim, *h_n = h + n * dim, *hp_n = h_prev + n * dim;
                        const float b_n = B_l[n], c_n = C_l[n];
                        float *g_n = g + n * dim, *dA_n = dA_b + n * dim, dc = 0.f, db = 0.f;
#pragma omp simd reduction(+ : dc, db)
                        for (long c = 0; c < dim; ++c) {
                            dc += dy[c] * h_n[c];
                            float gc = g_n[c] + c_n * dy[c];           /* d out / d h_l */
                            float a = exp_decay(dt[c] * A_n[c]);
                            float q = gc * a * hp_n[c];                   /* d out / d (dt A) */
                            ddt[c] += q * A_n[c] + gc * u_l[c] * b_n;
                            du_l[c] += gc * dt[c] * b_n;
                            db += gc * dt[c] * u_l[c];
                            dA_n[c] += q * dt[c];
                            g_n[c] = gc * a;                              /* on to h_{l-1} */
                        }
                        dC_l[n] = dc;
                        dB_l[n] = db;
                    }
                    const float *delta_l = delta + at * dim;
                    float *ddelta_l = ddelta + at * dim;
#pragma omp simd
                    for (long c = 0; c < dim; ++c) { /* softplus' = sigmoid */
                        float v = delta_l[c] + (bias ? bias[c] : 0.f);
                        ddelta_l[c] = use_softplus ? ddt[c] * sigmoid(v) : ddt[c];
                    }
                    if (dbias_b) {
#pragma omp simd
                        for (long c = 0; c < dim; ++c)
                            dbias_b[c] += ddelta_l[c];
                    }
                    memcpy(du + at * dim, du_l, sizeof(float) * dim);
                }
            }
        }
        free(work);
    }
    return failed;
}
