"""fla's own speed on the same GPU, the reference for make bench-cuda.

A model of the paper's 1.3B (or 340M) shape built with fla's config and model classes
(tests/paper_shapes*/<case>/config.json), random weights in bf16, batch 1:
  prefill: one forward over a prompt of P tokens (fla's default chunked kernels; the
           attention layers through PyTorch's scaled_dot_product_attention standing in for
           flash_attn, which the GPU machine lacks), median of 5 after warm-up;
  decode:  fla's eager loop, one model() call per token with fla's cache (what
           transformers' generate does per step), median step time of D steps.
Needs fla's source in .fla/ (as tests/make_fixtures.py). Prints one line:
  FLA model=<case>-<size> dtype=bf16 prompt_tokens=<P> prefill_tok_s=<x> decode_tok_s=<y>

Usage (GPU machine): python3 bench/fla_reference.py [--size 1.3B] [--prompt 2048] [--decode 64] [case]
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fla_shim"))
sys.path.insert(0, os.path.join(ROOT, ".fla"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import flash_attn  # noqa: E402  (tests/fla_shim: plain PyTorch)

_shim = flash_attn.flash_attn_func


def sdpa_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
    """flash_attn_func on PyTorch's fused attention where the masks agree (no window; causal
    only for a square prompt or a single query), else the shim"""
    if tuple(window_size) != (-1, -1) or (causal and q.shape[1] not in (1, k.shape[1])):
        return _shim(q, k, v, dropout_p, softmax_scale, causal, window_size, **kw)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal and q.shape[1] > 1, scale=softmax_scale,
                                       enable_gqa=q.shape[2] != k.shape[2])
    return o.transpose(1, 2)


flash_attn.flash_attn_func = sdpa_attn_func

from fla.models import (DeltaNetConfig, DeltaNetForCausalLM, GatedDeltaNetConfig,  # noqa: E402
                        GatedDeltaNetForCausalLM, GLAConfig, GLAForCausalLM, HGRN2Config,
                        HGRN2ForCausalLM, HGRNConfig, HGRNForCausalLM, RetNetConfig,
                        RetNetForCausalLM, TransformerConfig, TransformerForCausalLM)

CLASSES = {"transformer": (TransformerConfig, TransformerForCausalLM), "hgrn": (HGRNConfig, HGRNForCausalLM),
           "hgrn2": (HGRN2Config, HGRN2ForCausalLM), "gla": (GLAConfig, GLAForCausalLM),
           "retnet": (RetNetConfig, RetNetForCausalLM), "delta_net": (DeltaNetConfig, DeltaNetForCausalLM),
           "gated_deltanet": (GatedDeltaNetConfig, GatedDeltaNetForCausalLM)}


def main():
    args = sys.argv[1:]
    size, prompt, decode, case = "1.3B", 2048, 64, "gated_deltanet_hybrid_6_1"
    while args:
        a = args.pop(0)
        if a == "--size":
            size = args.pop(0)
        elif a == "--prompt":
            prompt = int(args.pop(0))
        elif a == "--decode":
            decode = int(args.pop(0))
        else:
            case = a
    shapes = os.path.join(ROOT, "tests", "paper_shapes" if size == "340M" else f"paper_shapes_{size}", case)
    cfg = json.load(open(os.path.join(shapes, "config.json")))
    cfg_cls, model_cls = CLASSES[cfg["model_type"]]
    config = cfg_cls(**{k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "architectures")})
    torch.manual_seed(0)
    model = model_cls(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(3, config.vocab_size, (1, prompt), device="cuda")

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, out

    with torch.no_grad():
        for _ in range(2):  # warm-up: Triton compiles and autotunes here
            model(ids)
        prefill = sorted(timed(lambda: model(ids))[0] for _ in range(5))[2]
        out = model(ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(decode):
            dt, out = timed(lambda: model(nxt, past_key_values=cache, use_cache=True))
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            steps.append(dt)
        step = sorted(steps[4:])[len(steps[4:]) // 2]
    print(f"FLA model={case}-{size} dtype=bf16 prompt_tokens={prompt} prefill_tok_s={prompt / prefill:.0f} "
          f"decode_tok_s={1 / step:.1f}", flush=True)


if __name__ == "__main__":
    main()
