/* CPU decode kernels (kernels/cpu_native.py compiles this with the machine's C
 * compiler, -O3 -march=native -fopenmp, and calls it through ctypes).
 *
 * Why C: a decode step of the default model on a 2-core box was half per-op
 * overhead (~45 ATen ops per layer at a few us each) and torch's int8 product
 * (_weight_int8pack_mm) wants bf16 activations, which AVX2 machines convert
 * in software (bench/results/cpu_decode_profile.md). Here one call does what
 * several ops did: the RMSNorm or SiLU(gate)*up in front of a product, the
 * int8 matrix-vector product with float32 activations, scales, bias and the
 * residual add after it; and one call per layer does the decode attention.
 *
 * All tensors are float32 and contiguous unless said otherwise; int64 sizes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

enum { PRO_NONE = 0, PRO_RMSNORM = 1, PRO_SILU_MUL = 2 };

#ifdef __AVX2__
static float hsum(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

static inline __m256 widen(__m128i b) { /* the low 8 int8 of b -> 8 float32 */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
#endif

/* x [K] . q [K] (int8), float32 accumulation, 32 weights per step in 4 chains.
 * One row at a time: reading 4 rows together measured slower (10 -> 16 ms per
 * token of the default model's layers, one thread). */
static float dot_i8(const float *x, const int8_t *q, int64_t K) {
    int64_t k = 0;
    float acc = 0.f;
#ifdef __AVX2__
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(q + k));
        __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), widen(lo), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), widen(_mm_srli_si128(lo, 8)), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), widen(hi), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), widen(_mm_srli_si128(hi, 8)), a3);
    }
    acc = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < K; k++) acc += x[k] * (float)q[k];
    return acc;
}

/* e^x in place for n floats (softmax weights, SiLU). AVX2: Cephes' expf, 8 at a
 * time (range reduction by ln 2 in two parts, degree-5 polynomial, 2^n through the
 * exponent bits; relative error ~2e-7; x below -87.3 gives ~1e-38 instead of 0,
 * which a softmax or a SiLU cannot tell from 0). A scalar expf per element was a
 * third of the full-window attention (2048 keys x 9 heads x 30 layers per token). */
static void exp_inplace(float *x, int64_t n) {
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
void si_gemv_i8(const float *x, int64_t M, int64_t K, int64_t x_stride, int mode, const float *norm_w, float eps,
                const int8_t *q, const float *scale, const float *bias, int64_t N,
                const float *residual, float *y, int nthreads) {
    float *xb = (float *)malloc((size_t)(M * K) * sizeof(float));
    if (!xb) return;
    for (int64_t m = 0; m < M; m++) prologue(x + m * x_stride, K, mode, norm_w, eps, xb + m * K);
    const int64_t BLOCK = 16;
    int64_t nblocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t n1 = (b + 1) * BLOCK < N ? (b + 1) * BLOCK : N;
        for (int64_t m = 0; m < M; m++) {
            for (int64_t n = b * BLOCK; n < n1; n++) {
                float v = dot_i8(xb + m * K, q + n * K, K) * scale[n];
                if (bias) v += bias[n];
                if (residual) v += residual[m * N + n];
                y[m * N + n] = v;
            }
        }
    }
    free(xb);
}

/* x*cos + roll(x, D/2)*sin for one head row: (x1*c - x2*s, x2*c + x1*s) with the
 * signs folded into sin = (-s, s), as kernels/torch_decode.py's _rotate. */
static void rotate(const float *x, const float *c, const float *s, int64_t D, float *out) {
    int64_t h = D / 2;
    for (int64_t d = 0; d < h; d++) out[d] = x[d] * c[d] + x[d + h] * s[d];
    for (int64_t d = h; d < D; d++) out[d] = x[d] * c[d] + x[d - h] * s[d];
}

#ifdef __AVX2__
/* lane i = the sum of the 8 lanes of a[i]: 8 dot products finished at once */
static inline __m256 hsum8(const __m256 *a) {
    __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}
#endif

/* sc[g * fill + j] = scale * qr[g] . rotate(k[j]) for keys j0 <= j < j1 (kr: scratch
 * [8, D]). AVX2 with D % 8 == 0: 8 keys at a time, their sums finished together. */
static void scores(const float *kh, const float *cosv, const float *sinv, int64_t j0, int64_t j1, int64_t D,
                   const float *qr, int64_t G, float scale, float *sc, int64_t fill, float *kr) {
    int64_t j = j0;
#ifdef __AVX2__
    if (D % 8 == 0) {
        for (; j + 8 <= j1; j += 8) {
            for (int64_t jj = 0; jj < 8; jj++) rotate(kh + (j + jj) * D, cosv + (j + jj) * D, sinv + (j + jj) * D, D, kr + jj * D);
            for (int64_t g = 0; g < G; g++) {
                __m256 acc[8];
                for (int jj = 0; jj < 8; jj++) acc[jj] = _mm256_setzero_ps();
                for (int64_t d = 0; d < D; d += 8) {
                    __m256 qv = _mm256_loadu_ps(qr + g * D + d);
                    for (int jj = 0; jj < 8; jj++) acc[jj] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + jj * D + d), acc[jj]);
                }
                _mm256_storeu_ps(sc + g * fill + j, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));
            }
        }
    }
#endif
    for (; j < j1; j++) {
        rotate(kh + j * D, cosv + j * D, sinv + j * D, D, kr);
        for (int64_t g = 0; g < G; g++) {
            float acc = 0.f;
            for (int64_t d = 0; d < D; d++) acc += qr[g * D + d] * kr[d];
            sc[g * fill + j] = acc * scale;
        }
    }
}

/* o [D] = inv * sum_j p[j] v[j] over j < n (v [n, D]). AVX2 with D % 8 == 0 and D <= 128:
 * the D outputs stay in registers while the rows stream by. */
static void weighted_sum(const float *p, const float *v, int64_t n, int64_t D, float inv, float *o) {
#ifdef __AVX2__
    if (D % 8 == 0 && D <= 128) {
        __m256 acc[16];
        int64_t nv = D / 8;
        for (int64_t i = 0; i < nv; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            __m256 pj = _mm256_set1_ps(p[j]);
            for (int64_t i = 0; i < nv; i++) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * D + 8 * i), acc[i]);
        }
        for (int64_t i = 0; i < nv; i++) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(acc[i], _mm256_set1_ps(inv)));
        return;
    }
#endif
    for (int64_t d = 0; d < D; d++) o[d] = 0.f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < D; d++) o[d] += p[j] * v[j * D + d];
    for (int64_t d = 0; d < D; d++) o[d] *= inv;
}

/* One sequence's one-token attention in one layer (CpuAttention's decode path).
 * q [Hq, D] pre-RoPE; k_new, v_new [Hkv, D]; k_slot, v_slot: the slot's cache
 * [Hkv, cap, D] (pre-RoPE keys). Writes the new K/V to row `row`, then attends
 * over rows 0..fill-1 with row j's key rotated by cos/sin [fill, D] and the query
 * by q_cos/q_sin [D]; query head i reads kv head i / (Hq / Hkv). out [Hq, D]. */
void si_attn_decode(const float *q, int64_t Hq, int64_t Hkv, int64_t D, float *k_slot, float *v_slot, int64_t cap,
                    const float *k_new, const float *v_new, int64_t row, int64_t fill,
                    const float *cosv, const float *sinv, const float *q_cos, const float *q_sin, float scale,
                    float *out, int nthreads) {
    int64_t G = Hq / Hkv;
    for (int64_t h = 0; h < Hkv; h++) {
        memcpy(k_slot + (h * cap + row) * D, k_new + h * D, (size_t)D * sizeof(float));
        memcpy(v_slot + (h * cap + row) * D, v_new + h * D, (size_t)D * sizeof(float));
    }
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t h = 0; h < Hkv; h++) {
        float *buf = (float *)malloc((size_t)(G * fill + G * D + 8 * D) * sizeof(float));
        if (!buf) continue;
        float *sc = buf, *qr = buf + G * fill, *kr = qr + G * D;
        for (int64_t g = 0; g < G; g++) rotate(q + (h * G + g) * D, q_cos, q_sin, D, qr + g * D);
        const float *kh = k_slot + h * cap * D, *vh = v_slot + h * cap * D;
        scores(kh, cosv, sinv, 0, fill, D, qr, G, scale, sc, fill, kr);
        for (int64_t g = 0; g < G; g++) {
            float *s = sc + g * fill, mx = -INFINITY, sum = 0.f;
            for (int64_t j = 0; j < fill; j++) mx = s[j] > mx ? s[j] : mx;
            for (int64_t j = 0; j < fill; j++) s[j] -= mx;
            exp_inplace(s, fill);
            for (int64_t j = 0; j < fill; j++) sum += s[j];
            float *o = out + (h * G + g) * D, inv = 1.0f / sum;
            weighted_sum(s, vh, fill, D, inv, o);
        }
        free(buf);
    }
}
