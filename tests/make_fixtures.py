"""Make the fla fixtures: tiny random-weight fla models and fla's own logits.

Runs on the GPU machine (PyTorch + Triton + transformers, no fla install):
fla's pure-Python source is carried in .fla/ (pip download --no-deps
flash-linear-attention fla-core, unzipped), and tests/fla_shim/ gives a small
PyTorch stand-in for flash_attn. Every model is built with fla's own config and
model classes and run by fla itself, in fp32 with TF32 off (Triton's fp32 dots
forced to IEEE), so its logits are the truth our C engine is checked against.

Per case it writes tests/fixtures/<case>/:
  config.json          fla's config, as config.save_pretrained writes it
  model.safetensors    the state dict (bf16 for the 24-layer hybrids, fp32 otherwise:
                       the weights are rounded to that dtype BEFORE fla runs them)
  expected.safetensors tokens_long [80];
                       logits_long (fla's default full-prompt forward: chunked kernels,
                         absent where fla refuses fp32, i.e. its chunked delta rule);
                       logits_long_recurrent (the same forward with every linear layer
                         switched to fla's exact fused_recurrent kernel);
                       logits_long_decode (fla's cached decode, one token at a time);
                       tokens_short [20], logits_short, greedy_ids [12] (greedy
                       continuation of tokens_short through fla's cache)

Usage (device): python3 tests/make_fixtures.py OUTDIR [--jobs N] [case-substring ...]
"""
import json
import os
import sys
import traceback

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fla_shim"))
sys.path.insert(0, os.path.join(ROOT, ".fla"))

import torch  # noqa: E402
import triton  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# fla autotunes every Triton kernel for every new shape, which takes minutes per
# tiny model. Timing does not matter here: keep the first config of each list.
_autotune = triton.autotune
triton.autotune = lambda configs, key, **kw: _autotune(configs[:1], key, **kw)

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

import fla  # noqa: E402
from fla.models import (DeltaNetConfig, DeltaNetForCausalLM, GatedDeltaNetConfig,  # noqa: E402
                        GatedDeltaNetForCausalLM, GLAConfig, GLAForCausalLM, HGRN2Config,
                        HGRN2ForCausalLM, HGRNConfig, HGRNForCausalLM, RetNetConfig,
                        RetNetForCausalLM, TransformerConfig, TransformerForCausalLM)

CLASSES = {
    "transformer": (TransformerConfig, TransformerForCausalLM),
    "hgrn": (HGRNConfig, HGRNForCausalLM),
    "hgrn2": (HGRN2Config, HGRN2ForCausalLM),
    "gla": (GLAConfig, GLAForCausalLM),
    "retnet": (RetNetConfig, RetNetForCausalLM),
    "delta_net": (DeltaNetConfig, DeltaNetForCausalLM),
    "gated_deltanet": (GatedDeltaNetConfig, GatedDeltaNetForCausalLM),
}

VOCAB = 128
LONG, SHORT, GREEDY = 80, 20, 12  # LONG > 64: fla switches to its chunked kernels there

# 24-layer hybrids at hidden 32: the paper's four layouts, exactly
# (full attention as the last layer of each block of N layers).
LAYOUTS = {
    "24_1": [23],
    "12_1": [11, 23],
    "6_1": [5, 11, 17, 23],
    "3_1": list(range(2, 24, 3)),
}
SMALL = dict(hidden_size=32, intermediate_size=32)
# The linear layer settings of each kind inside the 24-layer hybrids (and its pure twin).
HYBRID_KIND = {
    "hgrn": dict(expand_ratio=1),
    "hgrn2": dict(expand_ratio=16),
    "gla": dict(num_heads=2, expand_k=1.0, expand_v=1.0),
    "retnet": dict(num_heads=2, expand_k=1.0, expand_v=1.0),
    "delta_net": dict(num_heads=2, expand_k=1.0, expand_v=1.0),
    "gated_deltanet": dict(num_heads=2, head_dim=16, expand_v=1.0),
}
ATTN = dict(num_heads=2, num_kv_heads=1, qkv_bias=False, window_size=None, rope_theta=10000.0)

CASES = []  # (name, model_type, config kwargs, weight dtype)
for kind, kw in HYBRID_KIND.items():
    CASES.append((f"{kind}_pure", kind, dict(SMALL, num_hidden_layers=3, attn=None, **kw), "fp32"))
    for layout, layers in LAYOUTS.items():
        attn = dict(ATTN, layers=layers)
        if kind == "gated_deltanet" and layout == "6_1":
            attn.update(window_size=8, qkv_bias=True, rope_theta=500000.0)  # sliding window case
        CASES.append((f"{kind}_hybrid_{layout}", kind, dict(SMALL, num_hidden_layers=24, attn=attn, **kw), "bf16"))

WIDE = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2)
# Non-default head counts and the optional features of each kind, at hidden 64.
CASES += [
    ("transformer", "transformer", dict(WIDE, num_heads=4, num_kv_heads=2), "fp32"),
    # head dim 6: attention over rows that are not a whole number of 16-byte vectors (the CPU's
    # SIMD tails, the GPU attention kernel's one-float-a-lane instantiation)
    ("transformer_hd6_gqa", "transformer",
     dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_heads=8, num_kv_heads=2), "fp32"),
    ("transformer_swa_bias_tied", "transformer",
     dict(WIDE, num_hidden_layers=3, num_heads=4, num_kv_heads=1, window_size=8, qkv_bias=True,
          rope_theta=1000.0, tie_word_embeddings=True), "fp32"),
    ("hgrn_conv", "hgrn", dict(WIDE, use_short_conv=True, conv_size=4, expand_ratio=1), "fp32"),
    ("hgrn_nolb", "hgrn", dict(WIDE, use_lower_bound=False, expand_ratio=2), "fp32"),
    ("hgrn2_conv_4heads", "hgrn2", dict(WIDE, expand_ratio=16, use_short_conv=True, conv_size=3), "fp32"),
    ("gla_gqa_conv_clamp", "gla",
     dict(WIDE, num_heads=4, num_kv_heads=2, expand_k=1.0, expand_v=1.0, use_short_conv=True,
          clamp_min=-0.05), "fp32"),
    ("gla_relu_nogate_unfused", "gla",
     dict(WIDE, num_heads=2, expand_k=0.5, expand_v=1.0, feature_map="relu", use_output_gate=False,
          fuse_norm=False), "fp32"),
    ("retnet_gqa", "retnet", dict(WIDE, num_heads=4, num_kv_heads=2, expand_k=1.0, expand_v=2.0), "fp32"),
    ("delta_net_gate_4heads", "delta_net", dict(WIDE, num_heads=4, use_gate=True), "fp32"),
    ("delta_net_relu_nobeta_noconv", "delta_net",
     dict(WIDE, num_heads=2, qk_activation="relu", use_beta=False, use_short_conv=False), "fp32"),
    ("gated_deltanet_gva", "gated_deltanet",
     dict(WIDE, num_heads=2, num_v_heads=4, head_dim=16, expand_v=2.0), "fp32"),
    ("gated_deltanet_nogate_negeig_noconv", "gated_deltanet",
     dict(WIDE, num_heads=4, head_dim=16, expand_v=1.0, use_gate=False, allow_neg_eigval=True,
          use_short_conv=False), "fp32"),
]


def randomize(model, gen):
    """Replace fla's tiny init by O(1) random weights so that every term matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log") or name.endswith("dt_bias"):
                continue  # fla's own init (log-uniform decays, inverse-softplus dt)
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("lower_bounds"):
                p.copy_(r)
            elif "embeddings" in name:
                p.copy_(r)
            elif p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.2 * r)
            elif p.ndim == 1:  # biases
                p.copy_(0.2 * r)
            elif p.ndim == 3:  # short conv [C, 1, K]
                p.copy_(0.5 * r)
            else:
                p.copy_(r / p.shape[-1] ** 0.5)


@torch.no_grad()
def make_case(name, model_type, kwargs, dtype, outdir):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    cfg_cls, model_cls = CLASSES[model_type]
    config = cfg_cls(vocab_size=VOCAB, max_position_embeddings=256, fuse_cross_entropy=False, **kwargs)
    model = model_cls(config)
    randomize(model, gen)
    if dtype == "bf16":  # round the weights to bf16 values; fla still runs in fp32
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    model = model.cuda().float().eval()

    tokens_long = torch.randint(0, VOCAB, (LONG,), generator=gen)
    tokens_short = torch.randint(0, VOCAB, (SHORT,), generator=gen)
    ids = tokens_long[None].cuda()
    extra = {}
    try:  # fla's default prompt path: chunked kernels for more than 64 tokens
        extra["logits_long"] = model(input_ids=ids).logits[0].float().cpu().contiguous()
    except Exception as e:  # fla 0.6's chunked delta rule refuses fp32
        chunk_error = f"{type(e).__name__}: {e}"
    # the same prompt with fla's exact recurrent kernels in every linear layer
    modes = [m for m in model.modules() if isinstance(getattr(m, "mode", None), str)]
    saved = [m.mode for m in modes]
    for m in modes:
        m.mode = "fused_recurrent"
    logits_long_recurrent = model(input_ids=ids).logits[0].float().cpu()
    for m, mode in zip(modes, saved):
        m.mode = mode
    # fla's cached decode: one token at a time, each step with the cache of the previous ones
    cache, steps = None, []
    for t in range(LONG):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits[0, -1].float().cpu())
    logits_long_decode = torch.stack(steps)
    ids = tokens_short[None].cuda()
    logits_short = model(input_ids=ids).logits[0].float().cpu()
    out = model(input_ids=ids, use_cache=True)  # prefill, then greedy decode through the cache
    cache, greedy = out.past_key_values, []
    nxt = out.logits[0, -1].argmax()
    for _ in range(GREEDY):
        greedy.append(int(nxt))
        out = model(input_ids=nxt.view(1, 1), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[0, -1].argmax()

    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    config.save_pretrained(d)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype == "bf16":
        sd = {k: v.bfloat16() for k, v in sd.items()}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    save_file({
        "tokens_long": tokens_long.int(), "logits_long_recurrent": logits_long_recurrent.contiguous(),
        "logits_long_decode": logits_long_decode.contiguous(),
        "tokens_short": tokens_short.int(), "logits_short": logits_short.contiguous(),
        "greedy_ids": torch.tensor(greedy, dtype=torch.int32), **extra,
    }, os.path.join(d, "expected.safetensors"))
    row = dict(case=name, model_type=model_type, weights=dtype, layers=config.num_hidden_layers,
               logit_absmax=logits_long_decode.abs().max().item(),
               fla_recurrent_prompt_vs_decode=(logits_long_recurrent - logits_long_decode).abs().max().item())
    if "logits_long" in extra:
        row["fla_chunk_prompt_vs_decode"] = (extra["logits_long"] - logits_long_decode).abs().max().item()
    else:
        row["fla_chunk_prompt"] = chunk_error
    return row


def main():
    """OUTDIR [--jobs N] [case-substring ...]: N worker processes (Triton compiles
    and autotunes on the CPU, so cases run in parallel), one manifest at the end."""
    args = sys.argv[1:]
    outdir = args.pop(0)
    os.makedirs(outdir, exist_ok=True)
    if args[:1] == ["--shard"]:
        k, n = int(args[1]), int(args[2])
        only = args[3:]
        rows, failed = [], []
        for i, (name, mt, kw, dt) in enumerate(CASES):
            if i % n != k or (only and not any(s in name for s in only)):
                continue
            try:
                rows.append(make_case(name, mt, kw, dt, outdir))
                print("ok  ", json.dumps(rows[-1]), flush=True)
            except Exception:
                failed.append(name)
                print("FAIL", name, flush=True)
                traceback.print_exc()
        with open(os.path.join(outdir, f"shard{k}.json"), "w") as f:
            json.dump(dict(cases=rows, failed=failed), f)
        return
    jobs = 1
    if args[:1] == ["--jobs"]:
        jobs, args = int(args[1]), args[2:]
    import subprocess
    procs = [subprocess.Popen([sys.executable, __file__, outdir, "--shard", str(k), str(jobs)] + args)
             for k in range(jobs)]
    for p in procs:
        p.wait()
    rows, failed = [], []
    for k in range(jobs):
        path = os.path.join(outdir, f"shard{k}.json")
        if os.path.exists(path):
            part = json.load(open(path))
            rows += part["cases"]
            failed += part["failed"]
            os.remove(path)
        else:
            failed.append(f"shard{k} died")
    rows.sort(key=lambda r: r["case"])
    manifest = dict(fla_version=getattr(fla, "__version__", "?"), torch=torch.__version__,
                    gpu=torch.cuda.get_device_name(0), triton_f32=os.environ["TRITON_F32_DEFAULT"],
                    cases=rows, failed=failed)
    with open(os.path.join(outdir, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(rows)} made, {len(failed)} failed: {failed}")


if __name__ == "__main__":
    main()
