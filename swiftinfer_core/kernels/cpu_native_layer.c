/* A whole Llama layer of a decode step in one call (see cpu_native.h): the chain of
 * model/cpu_decode.py, which otherwise crossed from Python to C five times per
 * layer (~100 us of Python per layer against ~400 us of work, one thread).
 *
 *   qkv = rmsnorm(h) @ Wqkv^T + bqkv      [B, (Hq + 2 Hkv) D]
 *   o   = attention per sequence          [B, Hq D] (writes the token's K/V)
 *   h  += o @ Wo^T
 *   gu  = rmsnorm(h) @ W13^T              [B, 2 I]
 *   h  += (silu(gu[:I]) * gu[I:]) @ W2^T
 */
#include "cpu_native.h"

/* h [B, hidden] is the residual stream, updated in place. Weights int8 row-major
 * with float32 scales per output row: wqkv [(Hq + 2 Hkv) D, hidden] (bias bqkv or
 * NULL), wo [hidden, Hq D], w13 [2 I, hidden] (gate rows, then up rows),
 * w2 [hidden, I]. k_layer, v_layer [slots, Hkv, cap, D]: this layer's cache.
 * Sequence b attends in slot[b] (< 0: a padding row, zero attention, no write)
 * after writing its K/V at row[b], over rows < fill[b], with the rotation tables
 * cosv[b], sinv[b] [fill[b], D] and qcos[b], qsin[b] [D] (kernels/torch_decode.py). */
int si_decode_layer(float *h, int64_t B, int64_t hidden, float eps, const float *attn_norm, const int8_t *wqkv,
                    const float *sqkv, const float *bqkv, const int8_t *wo, const float *so, const float *mlp_norm,
                    const int8_t *w13, const float *s13, int64_t inter, const int8_t *w2, const float *s2, int64_t Hq,
                    int64_t Hkv, int64_t D, float *k_layer, float *v_layer, int64_t cap, const int64_t *slot,
                    const int64_t *row, const int64_t *fill, const float *const *cosv, const float *const *sinv,
                    const float *const *qcos, const float *const *qsin, float scale, int nthreads) {
    int64_t nqkv = (Hq + 2 * Hkv) * D, nq = Hq * D, nkv = Hkv * D;
    float *buf = (float *)malloc((size_t)(B * (nqkv + nq + 2 * inter)) * sizeof(float));
    if (!buf) return -1;
    float *qkv = buf, *o = qkv + B * nqkv, *gu = o + B * nq;
    int rc = gemv_rows(h, B, hidden, hidden, PRO_RMSNORM, attn_norm, eps, wqkv, sqkv, bqkv, nqkv, NULL, qkv, nthreads);
    for (int64_t b = 0; b < B && rc == 0; b++) {
        if (slot[b] < 0) {
            memset(o + b * nq, 0, (size_t)nq * sizeof(float));
            continue;
        }
        const float *x = qkv + b * nqkv;
        int64_t off = slot[b] * Hkv * cap * D;
        rc = attend_one(x, Hq, Hkv, D, k_layer + off, v_layer + off, cap, x + nq, x + nq + nkv, row[b], fill[b],
                        cosv[b], sinv[b], qcos[b], qsin[b], scale, o + b * nq, nthreads);
    }
    if (rc == 0) rc = gemv_rows(o, B, nq, nq, PRO_NONE, NULL, 0.f, wo, so, NULL, hidden, h, h, nthreads);
    if (rc == 0)
        rc = gemv_rows(h, B, hidden, hidden, PRO_RMSNORM, mlp_norm, eps, w13, s13, NULL, 2 * inter, NULL, gu, nthreads);
    if (rc == 0) rc = gemv_rows(gu, B, inter, 2 * inter, PRO_SILU_MUL, NULL, 0.f, w2, s2, NULL, hidden, h, h, nthreads);
    free(buf);
    return rc;
}
