/* Shared by the CPU decode kernels (cpu_native_*.c), which kernels/cpu_native.py
 * compiles together with the machine's C compiler (-O3 -march=native -pthread)
 * into one library called through ctypes.
 *
 * Why C: a decode step of the default model on a 2-core box was half per-op
 * overhead (~45 ATen ops per layer at a few us each), and torch's int8 product
 * (_weight_int8pack_mm) wants bf16 activations, which AVX2 machines convert in
 * software (bench/results/cpu_decode_profile.md). Here one call does what many
 * ops did: cpu_native_gemv.c the RMSNorm or SiLU(gate)*up in front of an int8
 * product (inputs in 16-bit fixed point per row) and the bias and residual add after it;
 * cpu_native_gguf.c the GGUF block products of quantization 'gguf';
 * cpu_native_attn.c one sequence's decode attention; cpu_native_layer.c a whole
 * Llama layer of a decode step; cpu_native_pool.c the worker threads of the
 * int8 and GGUF products and the attention.
 *
 * Tensors are float32 and contiguous unless said otherwise; sizes are int64.
 * Entry points (si_*) return 0, or -1 when scratch memory could not be had.
 */
#ifndef SI_CPU_NATIVE_H
#define SI_CPU_NATIVE_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

enum { PRO_NONE = 0, PRO_RMSNORM = 1, PRO_SILU_MUL = 2 };

#ifdef __AVX2__
static inline float hsum(__m256 s) { /* the sum of the 8 lanes */
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
#endif

void exp_inplace(float *x, int64_t n);

/* fn(ctx, i) for every 0 <= i < n, on up to nthreads threads (the caller's among
 * them), returning when all are done; items may run in any order and on any of
 * the threads. See cpu_native_pool.c. */
typedef void (*si_task)(void *ctx, int64_t i);
void pool_for(int64_t n, si_task fn, void *ctx, int nthreads);

/* y[m, n] = prologue(x[m]) . q[n] * scale[n] (+ bias[n]) (+ residual[m, n]); see cpu_native_gemv.c */
int gemv_rows(const float *x, int64_t M, int64_t K, int64_t x_stride, int mode, const float *norm_w, float eps,
              const int8_t *q, const float *scale, const float *bias, int64_t N, const float *residual, float *y,
              int nthreads);

/* one sequence's one-token attention in one layer; see cpu_native_attn.c */
int attend_one(const float *q, int64_t Hq, int64_t Hkv, int64_t D, float *k_slot, float *v_slot, int64_t cap,
               const float *k_new, const float *v_new, int64_t row, int64_t fill, const float *cosv,
               const float *sinv, const float *q_cos, const float *q_sin, float scale, float *out, int nthreads);
#endif
