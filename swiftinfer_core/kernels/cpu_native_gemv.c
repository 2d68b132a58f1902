/* The int8 matrix-vector product of a decode step (see cpu_native.h).
 *
 * The input row is rounded to 16-bit fixed point with one scale per row,
 * x ~ xq * sx with sx = max|x| / 32767 (error at most sx / 2 per element: ~1e-5
 * of the row's largest value, where bf16 keeps ~4e-3 of each value), so that the
 * products are integer: int8 weights widened to int16 once per 16 (vpmovsxbw)
 * and multiplied-and-paired with vpmaddwd into int32 sums, ~9 instructions per 32
 * weights against ~20 for widening them to float32 (default model's layers, one
 * thread, cold weights: 7.0 ms against 9.4; torch's bf16 int8 op 20 ms). Sums
 * are exact in int32 over chunks of SUM_CHUNK inputs (512 * 32767 * 127 < 2^31,
 * whatever the values) and added up in float32 across chunks. */
#include "cpu_native.h"

enum { SUM_CHUNK = 512 };

/* Rows ahead of the one being multiplied whose bytes are asked for early: 10.5 ->
 * 9.5 ms for the default model's layers (one thread, weights cold in memory);
 * 2 to 32 rows ahead measured alike. */
enum { PREFETCH_ROWS = 4 };

static inline void prefetch_row(const int8_t *row, int64_t K) {
#ifdef __AVX2__
    for (int64_t o = 0; o < K; o += 64) _mm_prefetch((const char *)row + o, _MM_HINT_T0);
#else
    (void)row, (void)K;
#endif
}

/* x [K] float32 -> xq [K] int16 with x ~ xq * (returned scale); 0 for an all-zero row. */
static float quantize_row16(const float *x, int64_t K, int16_t *xq) {
    float m = 0.f;
    for (int64_t k = 0; k < K; k++) m = fabsf(x[k]) > m ? fabsf(x[k]) : m;
    float sx = m / 32767.f, inv = m > 0.f ? 32767.f / m : 0.f;
    for (int64_t k = 0; k < K; k++) {
        float v = nearbyintf(x[k] * inv);
        xq[k] = (int16_t)(v > 32767.f ? 32767.f : (v < -32767.f ? -32767.f : v));
    }
    return sx;
}

#ifdef __AVX2__
static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#endif

/* sum_k x[k] q[k] for k < K <= SUM_CHUNK, exact in int32 */
static int32_t dot16_chunk(const int16_t *x, const int8_t *q, int64_t K) {
    int64_t k = 0;
    int32_t acc = 0;
#ifdef __AVX2__
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (; k + 32 <= K; k += 32) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(q + k));
        __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b)), w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)(x + k))));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(x + k + 16))));
    }
    acc = hsum_i32(_mm256_add_epi32(a0, a1));
#endif
    for (; k < K; k++) acc += (int32_t)x[k] * q[k];
    return acc;
}

/* out[r] = sum_k x[r * xs + k] q[k] for 4 input rows: each 16 weights widened once, used 4 times
 * (decode batches and small prefill chunks: one row at a time would widen every weight M times). */
static void dot16x4_chunk(const int16_t *x, int64_t xs, const int8_t *q, int64_t K, int32_t *out) {
    int64_t k = 0;
    int32_t acc[4] = {0, 0, 0, 0};
#ifdef __AVX2__
    __m256i a[4];
    for (int r = 0; r < 4; r++) a[r] = _mm256_setzero_si256();
    for (; k + 16 <= K; k += 16) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + k)));
        for (int r = 0; r < 4; r++) a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)(x + r * xs + k))));
    }
    for (int r = 0; r < 4; r++) acc[r] = hsum_i32(a[r]);
#endif
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) acc[r] += (int32_t)x[r * xs + k] * q[k];
    for (int r = 0; r < 4; r++) out[r] = acc[r];
}

/* x . q over any K: exact int32 chunks added in float32 */
static float dot16(const int16_t *x, const int8_t *q, int64_t K) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; k += SUM_CHUNK) acc += (float)dot16_chunk(x + k, q + k, K - k < SUM_CHUNK ? K - k : SUM_CHUNK);
    return acc;
}

static void dot16x4(const int16_t *x, int64_t xs, const int8_t *q, int64_t K, float *out) {
    for (int r = 0; r < 4; r++) out[r] = 0.f;
    for (int64_t k = 0; k < K; k += SUM_CHUNK) {
        int32_t c[4];
        dot16x4_chunk(x + k, xs, q + k, K - k < SUM_CHUNK ? K - k : SUM_CHUNK, c);
        for (int r = 0; r < 4; r++) out[r] += (float)c[r];
    }
}

/* e^x in place for n floats (softmax weights, SiLU). AVX2: Cephes' expf, 8 at a
 * time (range reduction by ln 2 in two parts, degree-5 polynomial, 2^n through the
 * exponent bits; relative error ~2e-7; x below -87.3 gives ~1e-38 instead of 0,
 * which a softmax or a SiLU cannot tell from 0). A scalar expf per element was a
 * third of the full-window attention (2048 keys x 9 heads x 30 layers per token). */
void exp_inplace(float *x, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f);
    const __m256 c1 = _mm256_set1_ps(0.693359375f), c2 = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 p0 = _mm256_set1_ps(1.9875691500E-4f), p1 = _mm256_set1_ps(1.3981999507E-3f),
                 p2 = _mm256_set1_ps(8.3334519073E-3f), p3 = _mm256_set1_ps(4.1665795894E-2f),
                 p4 = _mm256_set1_ps(1.6666665459E-1f), p5 = _mm256_set1_ps(5.0000001201E-1f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_max_ps(_mm256_min_ps(_mm256_loadu_ps(x + i), hi), lo);
        __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(v, log2e, half));  /* n = round(x / ln 2) */
        v = _mm256_fnmadd_ps(fx, c2, _mm256_fnmadd_ps(fx, c1, v));     /* r = x - n ln 2 */
        __m256 y = _mm256_fmadd_ps(p0, v, p1);
        y = _mm256_fmadd_ps(y, v, p2);
        y = _mm256_fmadd_ps(y, v, p3);
        y = _mm256_fmadd_ps(y, v, p4);
        y = _mm256_fmadd_ps(y, v, p5);
        y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(v, v), v), one);
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
        _mm256_storeu_ps(x + i, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
    }
#endif
    for (; i < n; i++) x[i] = expf(x[i]);
}

/* The product's input row: x itself, RMSNorm(x) * w, or silu(x[:K]) * x[K:2K]. */
static void prologue(const float *x, int64_t K, int mode, const float *w, float eps, float *out) {
    if (mode == PRO_RMSNORM) {
        double ss = 0.0;
        for (int64_t k = 0; k < K; k++) ss += (double)x[k] * x[k];
        float r = 1.0f / sqrtf((float)(ss / (double)K) + eps);
        for (int64_t k = 0; k < K; k++) out[k] = (x[k] * r) * w[k];
    } else if (mode == PRO_SILU_MUL) {  /* silu(g) = g / (1 + e^-g) */
        for (int64_t k = 0; k < K; k++) out[k] = -x[k];
        exp_inplace(out, K);
        for (int64_t k = 0; k < K; k++) out[k] = x[k] / (1.0f + out[k]) * x[K + k];
    } else {
        memcpy(out, x, (size_t)K * sizeof(float));
    }
}

/* y[m, n] = prologue(x[m]) . q[n] * scale[n] (+ bias[n]) (+ residual[m, n]), m < M, n < N.
 * x rows are x_stride floats apart (K, or 2K for silu_mul); q [N, K] int8 row-major.
 * y may be residual (the residual stream updated in place). Rows of q are split
 * over nthreads; each block of q rows is read once for all M input rows. */
static inline void store(float v, int64_t m, int64_t n, int64_t N, const float *scale, const float *bias,
                         const float *residual, float *y) {
    v *= scale[n];
    if (bias) v += bias[n];
    if (residual) v += residual[m * N + n];
    y[m * N + n] = v;
}

/* One product's operands, shared by the threads of pool_for; each item is `rows` weight rows. */
typedef struct {
    const int16_t *xq;
    const float *sx, *scale, *bias, *residual;
    const int8_t *q;
    float *y;
    int64_t M, K, N, rows;
} GemvJob;

/* Weight rows [i * rows, (i + 1) * rows): each read from memory once (prefetched a few
 * rows ahead) for all M input rows, 4 at a time. */
static void gemv_item(void *ctx, int64_t i) {
    const GemvJob *j = (const GemvJob *)ctx;
    int64_t K = j->K, N = j->N, M4 = j->M - j->M % 4, n1 = (i + 1) * j->rows < N ? (i + 1) * j->rows : N;
    for (int64_t n = i * j->rows; n < n1; n++) {
        if (n + PREFETCH_ROWS < N) prefetch_row(j->q + (n + PREFETCH_ROWS) * K, K);
        for (int64_t m = 0; m < M4; m += 4) {
            float d[4];
            dot16x4(j->xq + m * K, K, j->q + n * K, K, d);
            for (int r = 0; r < 4; r++) store(d[r] * j->sx[m + r], m + r, n, N, j->scale, j->bias, j->residual, j->y);
        }
        for (int64_t m = M4; m < j->M; m++)
            store(dot16(j->xq + m * K, j->q + n * K, K) * j->sx[m], m, n, N, j->scale, j->bias, j->residual, j->y);
    }
}

/* The prologue and the rounding of x run on the calling thread (M x K, small); the
 * weight rows are split into items of 16 rows or more, ~8 per thread, over nthreads. */
int gemv_rows(const float *x, int64_t M, int64_t K, int64_t x_stride, int mode, const float *norm_w, float eps,
              const int8_t *q, const float *scale, const float *bias, int64_t N, const float *residual, float *y,
              int nthreads) {
    float *xb = (float *)malloc((size_t)(M * K) * sizeof(float) + (size_t)M * sizeof(float));
    int16_t *xq = (int16_t *)malloc((size_t)(M * K) * sizeof(int16_t) + 64);
    if (!xb || !xq) {
        free(xb);
        free(xq);
        return -1;
    }
    float *sx = xb + M * K;  /* [M] the rows' fixed-point scales */
    for (int64_t m = 0; m < M; m++) {
        prologue(x + m * x_stride, K, mode, norm_w, eps, xb + m * K);
        sx[m] = quantize_row16(xb + m * K, K, xq + m * K);
    }
    int64_t per = nthreads > 1 ? N / (8 * (int64_t)nthreads) : N, rows = (per < 16 ? 16 : per + 15) / 16 * 16;
    GemvJob job = {xq, sx, scale, bias, residual, q, y, M, K, N, rows};
    pool_for((N + rows - 1) / rows, gemv_item, &job, nthreads);
    free(xb);
    free(xq);
    return 0;
}

int si_gemv_i8(const float *x, int64_t M, int64_t K, int64_t x_stride, int mode, const float *norm_w, float eps,
               const int8_t *q, const float *scale, const float *bias, int64_t N, const float *residual, float *y,
               int nthreads) {
    return gemv_rows(x, M, K, x_stride, mode, norm_w, eps, q, scale, bias, N, residual, y, nthreads);
}
