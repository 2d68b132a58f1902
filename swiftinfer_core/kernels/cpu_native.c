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

/* The product's input row: x itself, RMSNorm(x) * w, or silu(x[:K]) * x[K:2K]. */
static void prologue(const float *x, int64_t K, int mode, const float *w, float eps, float *out) {
    if (mode == PRO_RMSNORM) {
        double ss = 0.0;
        for (int64_t k = 0; k < K; k++) ss += (double)x[k] * x[k];
        float r = 1.0f / sqrtf((float)(ss / (double)K) + eps);
        for (int64_t k = 0; k < K; k++) out[k] = (x[k] * r) * w[k];
    } else if (mode == PRO_SILU_MUL) {
        for (int64_t k = 0; k < K; k++) {
            float g = x[k];
            out[k] = g / (1.0f + expf(-g)) * x[K + k];
        }
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
        float *buf = (float *)malloc((size_t)(G * fill + G * D + D) * sizeof(float));
        if (!buf) continue;
        float *sc = buf, *qr = buf + G * fill, *kr = qr + G * D;
        for (int64_t g = 0; g < G; g++) rotate(q + (h * G + g) * D, q_cos, q_sin, D, qr + g * D);
        const float *kh = k_slot + h * cap * D, *vh = v_slot + h * cap * D;
        for (int64_t j = 0; j < fill; j++) {
            rotate(kh + j * D, cosv + j * D, sinv + j * D, D, kr);
            for (int64_t g = 0; g < G; g++) {
                const float *qg = qr + g * D;
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t d = 0; d < D; d++) acc += qg[d] * kr[d];
                sc[g * fill + j] = acc * scale;
            }
        }
        for (int64_t g = 0; g < G; g++) {
            float *s = sc + g * fill, mx = -INFINITY, sum = 0.f;
            for (int64_t j = 0; j < fill; j++) mx = s[j] > mx ? s[j] : mx;
            for (int64_t j = 0; j < fill; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            float *o = out + (h * G + g) * D;
            for (int64_t d = 0; d < D; d++) o[d] = 0.f;
            for (int64_t j = 0; j < fill; j++) {
                float p = s[j] / sum;
                const float *vj = vh + j * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] += p * vj[d];
            }
        }
        free(buf);
    }
}
