/* GGUF block products for quantization 'gguf' (model/gguf_linear.py, model/gguf_blocks.py):
 * y[m, n] = sum_g s[n, g] * (q[n, g, :] . x[m, g, :]) + o[n, g] * sum(x[m, g, :])
 * for W [N, K] in groups of 32 inputs, read from the compact blocks as stored:
 *   qtype 0, Q8_0: q int8 [N, K], s = d (f16 [N, G]), o = 0;
 *   qtype 1, Q4_0: q nibbles uint8 [N, K/2] (byte j of a group: input j low, j + 16 high),
 *                  s = d, o = -8 d;
 *   qtype 2, Q4_1: the same nibbles, s = d, o = m (f16 [N, G]).
 * Every row's codes are widened to float32 one group at a time and multiplied
 * with each of the M rows of x in float32, no fixed point: the float32 sums of
 * gguf_matmul in another order. With AVX2 and FMA: the group's 32 codes become 4
 * vectors of 8 floats (nibbles masked apart), 4 FMAs with x give 8 lane sums that
 * are scaled by s into the row's 8 lane accumulators (one horizontal sum per row
 * and x row, not per group); o * sum(x_g) is added in scalar. Without: plain
 * loops. Blocks of 16 rows of W are split over nthreads pool threads (cpu_native_pool.c); f16 through F16C
 * where the machine has it. (Plain loops measured ~2 ns a weight on the
 * project's AVX2 box, one thread: GCC does not vectorise a float sum unasked.) */
#include "cpu_native.h"

#ifdef __F16C__
static inline float f16(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 113;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
#endif

enum { GG = 32, MAX_M = 64 };

/* One product's operands, shared by the threads of pool_for (cpu_native_pool.c). */
typedef struct {
    const float *x, *xsum;
    const uint8_t *qs;
    const uint16_t *d, *mins;
    float *y;
    int64_t M, K, G, N, row_bytes;
    int qtype;
} GgufJob;

enum { ROWS_PER_ITEM = 16 };

/* y[:, n] for weight row n: each output is computed by one thread, whichever. */
static void gguf_row(const GgufJob *j, int64_t n) {
    const float *x = j->x, *xsum = j->xsum;
    const uint16_t *d = j->d, *mins = j->mins;
    const int64_t M = j->M, K = j->K, G = j->G, N = j->N;
    const int qtype = j->qtype;
    float *y = j->y;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc[MAX_M];
    float off[MAX_M];
    for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_ps(), off[m] = 0.f;
    const uint8_t *row = j->qs + n * j->row_bytes;
    const __m128i mask = _mm_set1_epi8(0x0f);
    for (int64_t g = 0; g < G; g++) {
        __m256 w0, w1, w2, w3;
        if (qtype == 0) {
            const __m128i *q = (const __m128i *)(row + g * GG);
            __m128i a = _mm_loadu_si128(q), b = _mm_loadu_si128(q + 1);
            w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
            w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
            w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
        } else {
            __m128i b = _mm_loadu_si128((const __m128i *)(row + g * (GG / 2)));
            __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
            w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));  /* inputs 0..7 */
            w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));  /* 8..15 */
            w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));  /* 16..23 */
            w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));  /* 24..31 */
        }
        const float s = f16(d[n * G + g]);
        const float o = qtype == 0 ? 0.f : (qtype == 1 ? -8.f * s : f16(mins[n * G + g]));
        const __m256 sv = _mm256_set1_ps(s);
        for (int64_t m = 0; m < M; m++) {
            const float *xg = x + m * K + g * GG;
            __m256 p = _mm256_mul_ps(w0, _mm256_loadu_ps(xg));
            p = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), p);
            p = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xg + 16), p);
            p = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xg + 24), p);
            acc[m] = _mm256_fmadd_ps(sv, p, acc[m]);
            off[m] += o * xsum[m * G + g];
        }
    }
    for (int64_t m = 0; m < M; m++) y[m * N + n] = hsum(acc[m]) + off[m];
#else
    float acc[MAX_M];
    for (int64_t m = 0; m < M; m++) acc[m] = 0.f;
    const uint8_t *row = j->qs + n * j->row_bytes;
    for (int64_t g = 0; g < G; g++) {
        float w[GG];
        if (qtype == 0) {
            const int8_t *q = (const int8_t *)row + g * GG;
            for (int j = 0; j < GG; j++) w[j] = (float)q[j];
        } else {
            const uint8_t *q = row + g * (GG / 2);
            for (int j = 0; j < GG / 2; j++) {
                w[j] = (float)(q[j] & 0x0f);
                w[j + GG / 2] = (float)(q[j] >> 4);
            }
        }
        const float s = f16(d[n * G + g]);
        const float o = qtype == 0 ? 0.f : (qtype == 1 ? -8.f * s : f16(mins[n * G + g]));
        for (int64_t m = 0; m < M; m++) {
            const float *xg = x + m * K + g * GG;
            float dot = 0.f;
            for (int j = 0; j < GG; j++) dot += w[j] * xg[j];
            acc[m] += s * dot + o * xsum[m * G + g];
        }
    }
    for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m];
#endif
}

static void gguf_item(void *ctx, int64_t i) {
    const GgufJob *j = (const GgufJob *)ctx;
    const int64_t n1 = (i + 1) * ROWS_PER_ITEM < j->N ? (i + 1) * ROWS_PER_ITEM : j->N;
    for (int64_t n = i * ROWS_PER_ITEM; n < n1; n++) gguf_row(j, n);
}

int si_gemv_gguf(const float *x, int64_t M, int64_t K, int qtype, const uint8_t *qs, const uint16_t *d,
                 const uint16_t *mins, float *y, int64_t N, int nthreads) {
    if (M > MAX_M || K % GG) return -1;
    const int64_t G = K / GG;
    /* sum of each group of each x row, once */
    float *xsum = malloc(sizeof(float) * (size_t)(M * G));
    if (!xsum) return -1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float s = 0.f;
            for (int j = 0; j < GG; j++) s += x[m * K + g * GG + j];
            xsum[m * G + g] = s;
        }
    GgufJob job = {.x = x, .xsum = xsum, .qs = qs, .d = d, .mins = mins, .y = y, .M = M, .K = K, .G = G, .N = N,
                   .row_bytes = qtype == 0 ? K : K / 2, .qtype = qtype};
    pool_for((N + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM, gguf_item, &job, nthreads);
    free(xsum);
    return 0;
}
