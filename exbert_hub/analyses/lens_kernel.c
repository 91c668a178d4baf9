/*
 * The fused logit-lens kernel (exbert_hub.analyses.lens_kernel builds it on first use, on x86-64 CPUs with AMX).
 *
 * For rows x (bfloat16) of hidden states and the output head W (bfloat16, packed for AMX), the logits x . W^T
 * are made 32 rows x 32 tokens at a time in AMX tiles (float32 sums) and reduced while still in the cache, one
 * group of GROUP tokens at a time, so the [rows, vocab] logits never exist:
 *   - a running max m, the sum s of exp(b - m) and the error sum e of exp(b - m) expm1(delta) of every row
 *     (delta: the row's error bound for the group, from the caller);
 *   - a min-heap of the M tokens of largest upper bound b + delta (the candidates the caller rescores in float32).
 * Groups far below the row's running max (every logit < m - FAR) add only their bound GROUP exp(delta - FAR)
 * to e, unless they gave the heap a token (then they are summed: the caller swaps the heap tokens' terms for
 * exact ones).
 * The products of one group go into one buffer while the rows of the group before are reduced from the other,
 * one row after every second 32-input step of the tiles (measured about 5% faster than reducing after the group's
 * tiles; the two kinds of work still mostly add up).
 * lens_rescore: the float32 logits of the heap tokens, and sum_i |x_i| |w_ji| of each (their rounding bound).
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>

#define GROUP 128
#define NV (GROUP / 16)
#define FAR 24.0f
#define FAR_EXP 3.7751346e-11f /* exp(-FAR), rounded up */
#define ROW_CHUNK 512 /* rows whose bfloat16 inputs (and one group's logits) stay in L2 while the head streams past */
#define MAX_THREADS 64

typedef struct { float m, s, e; } rowstate;

/* exp(x) for x <= 0 (-inf -> 0): Cody-Waite reduction, degree-6 polynomial (a few ulp), scalef */
static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* the heap is full (size m, smallest bound at 0): replace its root by (u, b, t) and sift down */
static inline void heap_replace(float *ub, float *bv, int32_t *id, int m, float u, float b, int32_t t) {
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, c = i;
        float cu = u;
        if (l < m && ub[l] < cu) { c = l; cu = ub[l]; }
        if (r < m && ub[r] < cu) { c = r; cu = ub[r]; }
        if (c == i) break;
        ub[i] = ub[c]; bv[i] = bv[c]; id[i] = id[c];
        i = c;
    }
    ub[i] = u; bv[i] = b; id[i] = t;
}

/* one group's GROUP logits of one row into the row's state and heap */
static inline void group_update(const float *vals, int g, float dg, float em1g, rowstate *st,
                                float *ub, float *bv, int32_t *id, int M) {
    __m512 v[NV];
    for (int k = 0; k < NV; k++) v[k] = _mm512_loadu_ps(vals + 16 * k);
    __m512 mx = _mm512_max_ps(_mm512_max_ps(_mm512_max_ps(v[0], v[1]), _mm512_max_ps(v[2], v[3])),
                              _mm512_max_ps(_mm512_max_ps(v[4], v[5]), _mm512_max_ps(v[6], v[7])));
    int pushed = 0;
    if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(ub[0] - dg), _CMP_GT_OQ)) {
        for (int k = 0; k < NV; k++) {
            __mmask16 mk = _mm512_cmp_ps_mask(v[k], _mm512_set1_ps(ub[0] - dg), _CMP_GT_OQ);
            while (mk) {
                int l = __builtin_ctz(mk);
                mk &= mk - 1;
                float b = vals[16 * k + l], u = b + dg;
                if (u > ub[0]) { heap_replace(ub, bv, id, M, u, b, g * GROUP + 16 * k + l); pushed = 1; }
            }
        }
    }
    float mi = st->m;
    if (!pushed && mi != -INFINITY && !_mm512_cmp_ps_mask(mx, _mm512_set1_ps(mi - FAR), _CMP_GT_OQ)) {
        st->e += GROUP * FAR_EXP * (em1g + 1.0f); /* GROUP exp(dg - FAR), exp(dg) = expm1(dg) + 1 */
        return;
    }
    float gm = _mm512_reduce_max_ps(mx);
    if (gm == -INFINITY) return; /* padding tokens only */
    __m512 vg = _mm512_set1_ps(gm), acc = _mm512_setzero_ps();
    for (int k = 0; k < NV; k++) acc = _mm512_add_ps(acc, exp_neg(_mm512_sub_ps(v[k], vg)));
    float gs = _mm512_reduce_add_ps(acc), w = gs * em1g;
    if (gm > mi) {
        float f = expf(mi - gm);
        st->s = st->s * f + gs; st->e = st->e * f + w; st->m = gm;
    } else {
        float f = expf(gm - mi);
        st->s += gs * f; st->e += w * f;
    }
}

/* tiles 0-3 += (16 rows of x, 16 more: one 32-input tile each, 1 KB contiguous) x (W's tiles 6 and 7, loaded);
   x only streams past (its tiles are loaded without keeping them in L1, which W's tiles need) */
static inline void x_times_w(const uint16_t *a0, const uint16_t *a1) {
    _tile_stream_loadd(4, a0, 64);
    _tile_stream_loadd(5, a1, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

/* the permission to use AMX tiles (Linux asks each process to request it): 0 when granted */
int lens_amx_init(void) { return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */); }

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

typedef struct {
    const uint16_t *x, *xlo;
    const uint16_t *wp;
    const float *bias, *delta, *em1;
    rowstate *st;
    float *hub, *hb;
    int32_t *hid;
    float post;
    int n, dp, groups, heap, r0, r1;
} job;

/* group g's logits vals of row `row` (the scale and the bias applied first) into its state and heap */
static inline void reduce_row(const job *j, float *vals, int g, int64_t row) {
    const float *bs = j->bias ? j->bias + (int64_t)g * GROUP : 0;
    if (j->post != 1.0f || bs)
        for (int t = 0; t < GROUP; t++) vals[t] = vals[t] * j->post + (bs ? bs[t] : 0.0f);
    const int64_t at = (int64_t)g * j->n + row;
    const int M = j->heap;
    group_update(vals, g, j->delta[at], j->em1[at], j->st + row, j->hub + row * M, j->hb + row * M, j->hid + row * M, M);
}

static void *lens_worker(void *arg) {
    const job *j = (const job *)arg;
    const int dp = j->dp, chunks = dp / 32, pairs = dp / 2, G = j->groups;
    /* two groups' logits of ROW_CHUNK rows, one being made 32 x 32 at a time (the two 16-token blocks' W tiles
       stay in L1 while every row block of the chunk passes), the other being reduced row by row */
    float *buf = (float *)aligned_alloc(64, sizeof(float) * 2 * ROW_CHUNK * GROUP);
    if (!buf) return (void *)1;
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    for (int rc = j->r0; rc < j->r1; rc += ROW_CHUNK) {
        const int nrows = (rc + ROW_CHUNK < j->r1 ? rc + ROW_CHUNK : j->r1) - rc;
        for (int g = 0; g <= G; g++) {
            float *made = buf + (int64_t)(g & 1) * ROW_CHUNK * GROUP, *prev = buf + (int64_t)(~g & 1) * ROW_CHUNK * GROUP;
            int pend = g ? 0 : nrows; /* the next row of group g - 1 to reduce */
            for (int tp = 0; g < G && tp < GROUP / 32; tp++) {
                const uint16_t *b0 = j->wp + ((int64_t)g * (GROUP / 16) + 2 * tp) * pairs * 32;
                const uint16_t *b1 = b0 + (int64_t)pairs * 32;
                for (int r = 0; r < nrows; r += 32) { /* tiles 0-3: logits; 4-5: x (or its low halves); 6-7: W */
                    /* x in tiles: [rows / 16][dp / 32][16][32] */
                    const uint16_t *a0 = j->x + (int64_t)(rc + r) * dp, *a1 = a0 + (int64_t)16 * dp;
                    const uint16_t *l0 = j->xlo ? j->xlo + (int64_t)(rc + r) * dp : 0, *l1 = l0 ? l0 + (int64_t)16 * dp : 0;
                    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                    for (int kc = 0; kc < chunks; kc++) {
                        _tile_loadd(6, b0 + 512 * kc, 64);
                        _tile_loadd(7, b1 + 512 * kc, 64);
                        x_times_w(a0 + 512 * kc, a1 + 512 * kc);
                        if (l0) /* x's low halves, bfloat16(x - bfloat16(x)): x's rounding taken out */
                            x_times_w(l0 + 512 * kc, l1 + 512 * kc);
                        if ((kc & 1) && pend < nrows) {
                            reduce_row(j, prev + (int64_t)pend * GROUP, g - 1, rc + pend);
                            pend++;
                        }
                    }
                    float *o = made + (int64_t)r * GROUP + 32 * tp;
                    _tile_stored(0, o, GROUP * 4);
                    _tile_stored(1, o + 16, GROUP * 4);
                    _tile_stored(2, o + 16 * GROUP, GROUP * 4);
                    _tile_stored(3, o + 16 * GROUP + 16, GROUP * 4);
                }
            }
            for (; pend < nrows; pend++)
                reduce_row(j, prev + (int64_t)pend * GROUP, g - 1, rc + pend);
        }
    }
    free(buf);
    _tile_release();
    return 0;
}

/* fn on each of the used jobs (size bytes apart), jobs 1.. on threads of their own and job 0 here (a job whose
   thread cannot start runs here too); returns how many of them returned non-NULL (failed) */
static int run_jobs(void *(*fn)(void *), void *jobs, size_t size, int used) {
    pthread_t th[MAX_THREADS];
    int started = 1, failed = 0;
    for (; started < used; started++)
        if (pthread_create(&th[started], 0, fn, (char *)jobs + started * size)) break;
    for (int t = started; t < used; t++) failed += fn((char *)jobs + t * size) != 0;
    if (used) failed += fn(jobs) != 0;
    for (int t = 1; t < started; t++) {
        void *ret = 0;
        pthread_join(th[t], &ret);
        failed += ret != 0;
    }
    return failed;
}

static int split_rows(int blocks, int threads, int t, int *b0, int *b1) {
    int per = (blocks + threads - 1) / threads;
    *b0 = t * per;
    *b1 = (t + 1) * per < blocks ? (t + 1) * per : blocks;
    return *b0 < *b1;
}

/*
 * x, xlo (or NULL): bfloat16 [n / 16][dp / 32][16][32] (AMX tiles of 16 rows x 32 inputs), n a multiple of 32,
 * dp of 32; wp: the head packed for AMX, [groups * GROUP / 16][dp / 2][16][2] (16 tokens' consecutive pairs of
 * inputs); bias [groups * GROUP] or NULL; delta, em1: float32 [groups, n]; st: [n] {m = -inf, s = 0, e = 0};
 * hub, hb, hid: [n, heap] {-inf, -inf, -1}.
 * Returns the number of workers that failed (no memory for their buffer): 0 when every row was made.
 */
int lens_amx(const uint16_t *x, const uint16_t *xlo, int n, int dp, const uint16_t *wp, int groups,
              const float *bias, float post, const float *delta, const float *em1, float *st,
              float *hub, float *hb, int32_t *hid, int heap, int threads) {
    job jobs[MAX_THREADS];
    int used = 0, b0, b1;
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    for (int t = 0; t < threads && split_rows(n / 32, threads, t, &b0, &b1); t++, used++)
        jobs[t] = (job){x, xlo, wp, bias, delta, em1, (rowstate *)st, hub, hb, hid, post, n, dp, groups, heap,
                        b0 * 32, b1 * 32};
    /* rows whose buffer could not be allocated are left as they were */
    return run_jobs(lens_worker, jobs, sizeof jobs[0], used);
}

typedef struct {
    const float *x, *w;
    const int32_t *hid;
    float *out, *sabs;
    int d, heap, r0, r1;
} rjob;

static void *rescore_worker(void *arg) {
    const rjob *j = (const rjob *)arg;
    const int d = j->d;
    for (int i = j->r0; i < j->r1; i++) {
        const float *xi = j->x + (int64_t)i * d;
        for (int c = 0; c < j->heap; c++) {
            int64_t at = (int64_t)i * j->heap + c;
            int32_t t = j->hid[at];
            float acc = 0.0f, sa = 0.0f;
            if (t >= 0) {
                const float *wt = j->w + (int64_t)t * d;
                __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
                int k = 0;
                for (; k + 16 <= d; k += 16) {
                    __m512 xv = _mm512_loadu_ps(xi + k), wv = _mm512_loadu_ps(wt + k);
                    a = _mm512_fmadd_ps(xv, wv, a);
                    b = _mm512_fmadd_ps(_mm512_abs_ps(xv), _mm512_abs_ps(wv), b);
                }
                acc = _mm512_reduce_add_ps(a);
                sa = _mm512_reduce_add_ps(b);
                for (; k < d; k++) { acc += xi[k] * wt[k]; sa += fabsf(xi[k] * wt[k]); }
            }
            j->out[at] = acc;
            j->sabs[at] = sa;
        }
    }
    return 0;
}

/* x float32 [n, d], w float32 [vocab, d]: out[i, c] = x_i . w_hid[i, c], sabs[i, c] = sum |x_i| |w_hid[i, c]| */
void lens_rescore(const float *x, const float *w, int d, const int32_t *hid, int heap, int n, float *out,
                  float *sabs, int threads) {
    rjob jobs[MAX_THREADS];
    int used = 0, b0, b1;
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    for (int t = 0; t < threads && split_rows(n, threads, t, &b0, &b1); t++, used++)
        jobs[t] = (rjob){x, w, hid, out, sabs, d, heap, b0, b1};
    run_jobs(rescore_worker, jobs, sizeof jobs[0], used);
}
