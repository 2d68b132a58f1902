/* One-token decode attention over a StreamingLLM cache slot (see cpu_native.h and
 * kernels/torch_decode.py, whose torch-op path computes the same). */
#include "cpu_native.h"
#include <stdatomic.h>

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
typedef struct { /* attend_one's operands, shared by the threads of pool_for; an item is a kv head */
    const float *q, *cosv, *sinv, *q_cos, *q_sin;
    const float *k_slot, *v_slot;
    float *out, scale;
    int64_t G, D, cap, fill;
    atomic_int failed;
} AttnJob;

static void attn_item(void *ctx, int64_t h) {
    AttnJob *j = (AttnJob *)ctx;
    int64_t G = j->G, D = j->D, fill = j->fill;
    float *buf = (float *)malloc((size_t)(G * fill + G * D + 8 * D) * sizeof(float));
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *sc = buf, *qr = buf + G * fill, *kr = qr + G * D;
    for (int64_t g = 0; g < G; g++) rotate(j->q + (h * G + g) * D, j->q_cos, j->q_sin, D, qr + g * D);
    const float *kh = j->k_slot + h * j->cap * D, *vh = j->v_slot + h * j->cap * D;
    scores(kh, j->cosv, j->sinv, 0, fill, D, qr, G, j->scale, sc, fill, kr);
    for (int64_t g = 0; g < G; g++) {
        float *s = sc + g * fill, mx = -INFINITY, sum = 0.f;
        for (int64_t t = 0; t < fill; t++) mx = s[t] > mx ? s[t] : mx;
        for (int64_t t = 0; t < fill; t++) s[t] -= mx;
        exp_inplace(s, fill);
        for (int64_t t = 0; t < fill; t++) sum += s[t];
        weighted_sum(s, vh, fill, D, 1.0f / sum, j->out + (h * G + g) * D);
    }
    free(buf);
}

/* One sequence's one-token attention in one layer (CpuAttention's decode path).
 * q [Hq, D] pre-RoPE; k_new, v_new [Hkv, D]; k_slot, v_slot: the slot's cache
 * [Hkv, cap, D] (pre-RoPE keys). Writes the new K/V to row `row`, then attends
 * over rows 0..fill-1 with row j's key rotated by cos/sin [fill, D] and the query
 * by q_cos/q_sin [D]; query head i reads kv head i / (Hq / Hkv). out [Hq, D].
 * The kv heads are split over nthreads (cpu_native_pool.c). */
int attend_one(const float *q, int64_t Hq, int64_t Hkv, int64_t D, float *k_slot, float *v_slot, int64_t cap,
               const float *k_new, const float *v_new, int64_t row, int64_t fill, const float *cosv,
               const float *sinv, const float *q_cos, const float *q_sin, float scale, float *out, int nthreads) {
    for (int64_t h = 0; h < Hkv; h++) {
        memcpy(k_slot + (h * cap + row) * D, k_new + h * D, (size_t)D * sizeof(float));
        memcpy(v_slot + (h * cap + row) * D, v_new + h * D, (size_t)D * sizeof(float));
    }
    AttnJob job = {q, cosv, sinv, q_cos, q_sin, k_slot, v_slot, out, scale, Hq / Hkv, D, cap, fill, 0};
    pool_for(Hkv, attn_item, &job, nthreads);
    return atomic_load(&job.failed) ? -1 : 0;
}

int si_attn_decode(const float *q, int64_t Hq, int64_t Hkv, int64_t D, float *k_slot, float *v_slot, int64_t cap,
                   const float *k_new, const float *v_new, int64_t row, int64_t fill, const float *cosv,
                   const float *sinv, const float *q_cos, const float *q_sin, float scale, float *out, int nthreads) {
    return attend_one(q, Hq, Hkv, D, k_slot, v_slot, cap, k_new, v_new, row, fill, cosv, sinv, q_cos, q_sin, scale,
                      out, nthreads);
}
