"""A small stand-in for the `flash_attn` package, written on PyTorch.

fla's Attention layer imports flash_attn_func / flash_attn_varlen_func. The GPU
machine that makes our fixtures has no flash-attn build, so this module gives
the same semantics, in plain fp32 PyTorch:
  - q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D]; query head a uses kv head a // (Hq/Hkv)
  - causal mask aligned bottom-right (query i sits at absolute key position Tk-Tq+i)
  - window_size=(left, right): a query at position p sees keys in [p-left, p+right]
    (-1 means unbounded), intersected with the causal mask
  - softmax_scale defaults to D**-0.5
Only what fla calls is provided. Used only by tests/make_fixtures.py.
"""
import torch

__version__ = "0.0-hla-standin"


def _attend(q, k, v, causal, window_size, softmax_scale):
    # q [Tq, Hq, D], k/v [Tk, Hkv, D]
    Tq, Hq, D = q.shape
    Tk, Hkv, _ = k.shape
    group = Hq // Hkv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum('qhd,khd->hqk', q.float(), k.float()) * scale
    qpos = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    kpos = torch.arange(Tk, device=q.device)[None, :]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= kpos <= qpos
    left, right = window_size
    if left >= 0:
        allowed &= kpos >= qpos - left
    if right >= 0:
        allowed &= kpos <= qpos + right
    s = s.masked_fill(~allowed[None], float('-inf'))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum('hqk,khd->qhd', p, v.float())
    return o.to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), **kwargs):
    return torch.stack([_attend(q[b], k[b], v[b], causal, window_size, softmax_scale)
                        for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                           max_seqlen_k=None, dropout_p=0.0, softmax_scale=None,
                           causal=False, window_size=(-1, -1), **kwargs):
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        ks, ke = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        out[qs:qe] = _attend(q[qs:qe], k[ks:ke], v[ks:ke], causal, window_size, softmax_scale)
    return out
