"""StreamingLLM perplexity from the engine equals a deliberately naive reference.

The reference is written from the paper, independent of the engine's model and
cache code: one token at a time, physical eviction from Python lists, and every
cached (pre-RoPE) key re-rotated at positions arange(len) at every step, as the
original mit-han-lab implementation did.
"""

import math

import torch
import torch.nn.functional as F

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.eval.ppl import stream_nll
from swiftinfer_core.model.loader import read_args, read_state_dict


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):  # x [N, H, D], pos [N]
    d = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * freqs[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None].float(), torch.cat([ang.sin()] * 2, -1)[:, None].float()
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def naive_streaming_nll(model_dir, ids, sinks, window):
    a, w = read_args(model_dir), read_state_dict(model_dir)
    hq, hkv, d = a.num_heads, a.num_kv_heads, a.head_dim
    keys = [[] for _ in range(a.num_layers)]
    vals = [[] for _ in range(a.num_layers)]
    nll = []
    for t in range(len(ids) - 1):
        x = w["model.embed_tokens.weight"][ids[t]]
        for i in range(a.num_layers):
            p = f"model.layers.{i}."
            h = _rms(x, w[p + "input_layernorm.weight"], a.rms_eps)
            q = (w[p + "self_attn.q_proj.weight"] @ h).view(hq, d)
            k = (w[p + "self_attn.k_proj.weight"] @ h).view(hkv, d)
            v = (w[p + "self_attn.v_proj.weight"] @ h).view(hkv, d)
            if len(keys[i]) == sinks + window:  # full: evict the oldest non-sink token
                del keys[i][sinks]
                del vals[i][sinks]
            keys[i].append(k)
            vals[i].append(v)
            n = len(keys[i])
            kr = _rope(torch.stack(keys[i]), torch.arange(n), a.rope_theta)  # re-rotate everything
            qr = _rope(q[None], torch.tensor([n - 1]), a.rope_theta)[0]
            kr = kr.repeat_interleave(hq // hkv, dim=1)
            vv = torch.stack(vals[i]).repeat_interleave(hq // hkv, dim=1)
            att = torch.softmax(torch.einsum("hd,nhd->hn", qr, kr) / math.sqrt(d), -1)
            o = torch.einsum("hn,nhd->hd", att, vv).reshape(-1)
            x = x + w[p + "self_attn.o_proj.weight"] @ o
            h = _rms(x, w[p + "post_attention_layernorm.weight"], a.rms_eps)
            x = x + w[p + "mlp.down_proj.weight"] @ (F.silu(w[p + "mlp.gate_proj.weight"] @ h) * (w[p + "mlp.up_proj.weight"] @ h))
        logits = w["model.embed_tokens.weight"] @ _rms(x, w["model.norm.weight"], a.rms_eps)
        nll.append(F.cross_entropy(logits[None], torch.tensor([ids[t + 1]])).item())
    return nll


def test_streaming_ppl_matches_naive_reference(base_model, model_dir, shakespeare_ids):
    sinks, window = 4, 40
    ids = shakespeare_ids[:160]
    with torch.inference_mode():
        ref = naive_streaming_nll(model_dir, ids, sinks, window)
    cfg = EngineConfig(device="cpu", sink_tokens=sinks, window=window, max_sessions=1)
    ours = stream_nll(base_model, cfg, ids, StreamLayout(sinks, window), chunk=64).nll
    ppl_ref, ppl_ours = math.exp(sum(ref) / len(ref)), math.exp(sum(ours) / len(ours))
    assert abs(ppl_ours - ppl_ref) / ppl_ref < 0.005, (ppl_ours, ppl_ref)
    assert max(abs(x - y) for x, y in zip(ours, ref)) < 1e-2
