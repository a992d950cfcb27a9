#!/usr/bin/env python3
"""train_demo.py: train the default demo model (a small GatedDeltaNet hybrid on
tinyshakespeare) with fla itself, and measure fla's own validation loss.

STATUS (2026-11-22): not yet run to completion. On the lent H100 (Triton 3.6.0) fla 0.6.0
refuses the GatedDeltaNet backward pass on Hopper ("Triton >= 3.4.0 and < 3.7.1 on Hopper
GPUs produces incorrect results for gated chunk_bwd_dqkwg", fla #640): carry Triton >= 3.7.1
or tilelang as wheels first. No model trained by it is shipped yet.

Three steps, two machines:

  here (no torch):   python3 train/train_demo.py prep
      Tokenizes /work/shared/data/tinyshakespeare.txt with `./run --tokenize` (so the
      ids are exactly our tokenizer's), writes the token stream (without the BOS that
      --tokenize puts first) as int32 to .train_data/tinyshakespeare.int32 (git-ignored,
      carried to the GPU machine), and writes the validation ids, BOS first, to
      models/shakespeare_val.ids (one line, whitespace-separated).

  GPU machine:       python3 train/train_demo.py sweep --out $OUT
      Same environment as tests/make_fixtures.py: fla's pure-Python source in .fla/,
      tests/fla_shim/ as flash_attn, TRITON_F32_DEFAULT=ieee, every Triton autotuner cut
      to its first config. Trains a few settings in parallel worker processes (one GPU,
      tiny models) until a wall-clock deadline, keeps each worker's best checkpoint by the
      dev loss, picks the best worker by the dev loss, rounds its weights to fp16 values,
      saves the Hugging Face checkpoint (config.json + model.safetensors, fp32 tensors
      holding fp16 values, tied lm_head dropped) as $OUT/shakespeare_gdn_hf.tar.gz.part*
      (15 MB pieces: `cat shakespeare_gdn_hf.tar.gz.part* | tar xz`), and
      then computes fla's validation loss in fp32 (below) into $OUT/shakespeare_fla_eval.json.

  here:              python3 export.py CKPT_DIR models/shakespeare_gdn.bin --dtype fp16

Splits (by tokens, of the stream without BOS): train = first 85%, dev = next 5% (early
stopping and the choice among the settings), val = last 10% (never used for any choice).

fla's validation loss, the definition `./run --ppl` implements: S = [BOS] + val ids;
consecutive non-overlapping windows of CTX=256 tokens (the last may be shorter); each
window is scored from an empty state; positions 1..len-1 of a window are predicted from
the ones before; mean CE = summed NLL / number of predicted tokens; ppl = exp(mean CE).
fla runs it in fp32 (TF32 off, Triton fp32 dots in IEEE) with every linear-attention
layer switched to its exact fused_recurrent kernel (the chunked GDN kernel is not exact
in fp32), on the fp16-rounded weights.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".train_data", "tinyshakespeare.int32")
VAL_IDS = os.path.join(ROOT, "models", "shakespeare_val.ids")
TEXT = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt")
CTX = 256
BOS = 1
DEVICE = os.environ.get("HLA_TRAIN_DEVICE", "cuda")  # "cpu" only for a plumbing test under TRITON_INTERPRET=1
VOCAB = 32000
TRAIN_FRAC, DEV_FRAC = 0.85, 0.90  # stream[:85%] train, [85%:90%] dev, [90%:] val

# The settings trained side by side (same GDN head shape everywhere, so the Triton kernels
# are the same; head_dim 128: see setup_gdn_training). hidden 128 keeps the fp16 file under
# 16 MB (32000x128 embeddings, tied; 12 layers: 15.5 MB). Full attention is the last layer
# of each block of 3 (the 3_1 layout of tests/make_fixtures.py, in the paper's range).
BASE = dict(hidden=128, layers=6, attn_layers=[2, 5], gdn_heads=1, head_dim=128, expand_v=2.0,
            attn_heads=4, attn_kv_heads=2, hidden_ratio=4, dropout=0.2, lr=2e-3, min_lr_frac=0.1,
            wd=0.1, batch=32, warmup=100, seed=1234)
SPECS = [
    dict(BASE, name="L6_d0.2", dropout=0.2),
    dict(BASE, name="L6_d0.35", dropout=0.35),
    dict(BASE, name="L9_d0.3", layers=9, attn_layers=[2, 5, 8], dropout=0.3, lr=1.5e-3),
    dict(BASE, name="L12_d0.3", layers=12, attn_layers=[2, 5, 8, 11], dropout=0.3, lr=1.5e-3),
]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def split(stream):
    n = len(stream)
    a, b = int(TRAIN_FRAC * n), int(DEV_FRAC * n)
    return stream[:a], stream[a:b], stream[b:]


# ----------------------------------------------------------------------------
# prep (here, numpy only)

def cmd_prep(args):
    import numpy as np
    out = subprocess.run([os.path.join(ROOT, "run"), "--tokenize", "-z", os.path.join(ROOT, "tokenizer.bin"),
                          "-f", args.text], check=True, capture_output=True, text=True).stdout
    ids = np.array([int(t) for t in out.split()], dtype=np.int32)
    assert ids[0] == BOS and ids.max() < VOCAB and ids.min() >= 0, "unexpected tokenizer output"
    stream = ids[1:]
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    stream.tofile(DATA)
    tr, dev, val = split(stream)
    os.makedirs(os.path.dirname(VAL_IDS), exist_ok=True)
    with open(VAL_IDS, "w") as f:
        f.write(" ".join(str(int(t)) for t in np.concatenate([[BOS], val])) + "\n")
    print(f"{len(stream)} tokens (without BOS): train {len(tr)}, dev {len(dev)}, val {len(val)}; "
          f"wrote {DATA} and {VAL_IDS} ({len(val) + 1} ids, BOS first)")


# ----------------------------------------------------------------------------
# fla on the GPU machine

def setup_fla():
    """Import fla the way tests/make_fixtures.py does; cut every autotuner to one config."""
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
    sys.path.insert(0, os.path.join(ROOT, "tests", "fla_shim"))
    sys.path.insert(0, os.path.join(ROOT, ".fla"))
    import gc

    import torch
    import triton
    _autotune = triton.autotune
    triton.autotune = lambda configs, key, **kw: _autotune(configs[:1], key, **kw)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import fla  # noqa: F401
    from triton.runtime.autotuner import Autotuner
    # fla's own fla_cache_autotune bypasses triton.autotune: cut those autotuners too
    cut = 0
    for o in gc.get_objects():
        if isinstance(o, Autotuner) and len(o.configs) > 1:
            o.configs = o.configs[:1]
            cut += 1
    return cut


def make_model(spec):
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    config = GatedDeltaNetConfig(
        vocab_size=VOCAB, hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
        num_heads=spec["gdn_heads"], head_dim=spec["head_dim"], expand_v=spec["expand_v"],
        hidden_ratio=spec["hidden_ratio"], max_position_embeddings=CTX, tie_word_embeddings=True,
        fuse_cross_entropy=False, bos_token_id=BOS, eos_token_id=2,
        attn=dict(layers=list(spec["attn_layers"]), num_heads=spec["attn_heads"],
                  num_kv_heads=spec["attn_kv_heads"], qkv_bias=False, window_size=None, rope_theta=10000.0))
    model = GatedDeltaNetForCausalLM(config)
    if model.lm_head.weight is not model.model.embeddings.weight:  # tie by hand if transformers did not
        model.lm_head.weight = model.model.embeddings.weight
    return config, model


def load_stream(device):
    import numpy as np
    import torch
    stream = np.fromfile(DATA, dtype=np.int32)
    tr, dev, val = split(stream)
    with open(VAL_IDS) as f:
        val_ids = [int(t) for t in f.read().split()]
    assert val_ids == [BOS] + val.tolist(), "models/shakespeare_val.ids does not match .train_data"
    t = lambda a: torch.from_numpy(a.astype(np.int64)).to(device)  # noqa: E731
    return t(tr), t(dev), val_ids


def windows(seq, ctx):
    """BOS + seq cut into consecutive windows of ctx tokens (the last may be shorter)."""
    return [seq[i:i + ctx] for i in range(0, len(seq), ctx)]


def score_windows(model, wins, batch, autocast):
    """Summed NLL (float64) of each window: positions 1..len-1 predicted from the ones before."""
    import torch
    import torch.nn.functional as F
    out = [None] * len(wins)
    by_len = {}
    for i, w in enumerate(wins):
        by_len.setdefault(len(w), []).append(i)
    with torch.no_grad():
        for L, idx in sorted(by_len.items(), reverse=True):
            if L < 2:
                for i in idx:
                    out[i] = 0.0
                continue
            for j in range(0, len(idx), batch):
                part = idx[j:j + batch]
                x = torch.stack([wins[i] for i in part])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = model(input_ids=x).logits
                lp = F.log_softmax(logits.float(), dim=-1)
                nll = -lp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
                for k, i in enumerate(part):
                    out[i] = float(nll[k].double().sum())
    return out


def set_modes(model, mode):
    mods = [m for m in model.modules() if isinstance(getattr(m, "mode", None), str)]
    saved = [m.mode for m in mods]
    for m in mods:
        m.mode = mode
    return mods, saved


def fla_eval_fp32(model, val_ids, ctx, device, max_windows=None, batch=32):
    """fla's validation loss in fp32, the definition `./run --ppl` implements."""
    import torch
    model.float().eval()
    set_modes(model, "fused_recurrent")
    S = torch.tensor(val_ids, dtype=torch.long, device=device)
    wins = windows(S, ctx)
    if max_windows:
        wins = wins[:max_windows]
    nll = score_windows(model, wins, batch, autocast=False)
    n = sum(len(w) - 1 for w in wins if len(w) > 1)
    mean = math.fsum(nll) / n
    return dict(mean_ce=mean, ppl=math.exp(mean), n_predicted=n, n_windows=len(wins), window_nll=nll)


def torch_chunk_gdr(q, k, v, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
                    use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, state_v_first=True, cu_seqlens=None,
                    use_gate_in_kernel=False, A_log=None, dt_bias=None, scale=None, chunk_size=64, **kw):
    """fla's chunk_gated_delta_rule (as GatedDeltaNet calls it: no cache, no varlen) in plain
    PyTorch, fp32, chunked WY form, differentiable by autograd. The training fallback where fla
    refuses its Triton backward (Hopper + Triton in [3.4, 3.7.1), fla #640) and its gradients
    fail the check below. Matches fla's naive recurrent reference (values and all gradients)."""
    import torch
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        return _torch_chunk_gdr(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                                use_beta_sigmoid_in_kernel, allow_neg_eigval, cu_seqlens, use_gate_in_kernel,
                                A_log, dt_bias, scale, chunk_size)


def _torch_chunk_gdr(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                     use_beta_sigmoid_in_kernel, allow_neg_eigval, cu_seqlens, use_gate_in_kernel, A_log, dt_bias,
                     scale, chunk_size):
    import torch
    import torch.nn.functional as F
    assert cu_seqlens is None and initial_state is None and not output_final_state
    dt = v.dtype
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    assert HV == H
    q, k, v = q.float(), k.float(), v.float()
    g, beta = g.float(), beta.float()
    if use_gate_in_kernel:
        g = -A_log.float().exp() * F.softplus(g + (dt_bias.float() if dt_bias is not None else 0.0))
    if use_beta_sigmoid_in_kernel:
        beta = beta.sigmoid()
    if allow_neg_eigval:
        beta = beta * 2
    if use_qk_l2norm_in_kernel:
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    pad = (C - T % C) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    N = (T + pad) // C
    # [B, H, N, C, D]
    r = lambda x: x.transpose(1, 2).reshape(B, H, N, C, -1)  # noqa: E731
    q, k, v = r(q) * scale, r(k), r(v)
    g = g.transpose(1, 2).reshape(B, H, N, C)
    beta = beta.transpose(1, 2).reshape(B, H, N, C, 1)
    gam = g.cumsum(-1)                                        # within-chunk cumulative log decay
    diff = gam[..., :, None] - gam[..., None, :]
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    L = torch.where(lower, diff, torch.full_like(diff, -math.inf)).exp()   # exp(gam_i - gam_j), i >= j
    kb = k * beta
    M = (kb @ k.transpose(-1, -2)) * L
    M = M.masked_fill(~lower.tril(-1), 0.0)                 # strictly lower
    eye = torch.eye(C, device=q.device, dtype=q.dtype)
    Tm = torch.linalg.solve_triangular(eye + M, eye.expand_as(M), upper=False, unitriangular=True)
    u = Tm @ (v * beta)
    w = Tm @ (kb * gam.exp()[..., None])
    Aqk = (q @ k.transpose(-1, -2)) * L                      # i >= j (with the diagonal)
    qd = q * gam.exp()[..., None]
    kd = k * (gam[..., -1:] - gam).exp()[..., None]
    S = q.new_zeros(B, H, K, V)
    outs = []
    for n in range(N):
        v_new = u[:, :, n] - w[:, :, n] @ S
        outs.append(qd[:, :, n] @ S + Aqk[:, :, n] @ v_new)
        S = S * gam[:, :, n, -1, None, None].exp() + kd[:, :, n].transpose(-1, -2) @ v_new
    o = torch.stack(outs, 2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(dt), None


def setup_gdn_training(spec, device):
    """fla 0.6 refuses the backward of its chunked GDN kernel on Hopper with Triton in
    [3.4, 3.7.1) (fla #640: a Triton miscompile at block width 64; widths 32 and 128 were
    reported correct). Lift that guard, then CHECK fla's gradients at this model's head shape
    against the PyTorch reference above; train with fla's Triton kernels only if they agree,
    else with the PyTorch op (forward-only calls, the dev evals, stay on fla's kernels)."""
    import torch
    import fla.layers.gated_deltanet as gdn_layer
    import fla.ops.common.chunk_o as chunk_o
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    info = dict(guard=bool(chunk_o.IS_NVIDIA_HOPPER and chunk_o.TRITON_ABOVE_3_4_0
                           and not chunk_o.TRITON_ABOVE_3_7_1))
    chunk_o.TRITON_ABOVE_3_7_1 = True
    torch.manual_seed(0)
    B, T, H, K = 4, CTX, spec["gdn_heads"], spec["head_dim"]
    V = int(K * spec["expand_v"])
    bf = dict(device=device, dtype=torch.bfloat16)
    xs = [torch.randn(B, T, H, K, **bf), torch.randn(B, T, H, K, **bf), torch.randn(B, T, H, V, **bf),
          torch.randn(B, T, H, **bf), torch.randn(B, T, H, **bf),
          torch.log(torch.rand(H, device=device) * 15 + 1), torch.randn(H, device=device) - 4]
    do = torch.randn(B, T, H, V, **bf)
    kw = dict(use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, use_gate_in_kernel=True,
              state_v_first=True)

    def grads(fn, inputs):
        inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
        q, k, v, a, b, A_log, dt_bias = inputs
        o, _ = fn(q=q, k=k, v=v, g=a, beta=b, A_log=A_log, dt_bias=dt_bias, **kw)
        return [o.float()] + [x.float() for x in torch.autograd.grad(o, inputs, do.to(o.dtype))]

    use_fla = False
    try:
        got = grads(chunk_gated_delta_rule, xs)
        ref = grads(torch_chunk_gdr, [x.float() for x in xs])
        names = ["o", "dq", "dk", "dv", "da", "db", "dA_log", "ddt_bias"]
        info["rel_err"] = {n: float((x - y).norm() / y.norm().clamp_min(1e-12)) for n, x, y in zip(names, got, ref)}
        use_fla = all(math.isfinite(e) and e < 0.05 for e in info["rel_err"].values())
    except Exception:
        info["error"] = traceback.format_exc()[-1500:]
    info["train_op"] = "fla triton chunk" if use_fla else "pytorch chunk (fla kernels failed the check)"
    if not use_fla:
        fla_op = gdn_layer.chunk_gated_delta_rule

        def chunk_op(*a, **k):
            if not torch.is_grad_enabled():
                try:
                    return fla_op(*a, **k)
                except Exception:
                    pass
            return torch_chunk_gdr(*a, **k)
        gdn_layer.chunk_gated_delta_rule = chunk_op
    return info


def sdpa_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
    """flash_attn_func on PyTorch's SDPA, for training speed (no cache: Tq == Tk, no window)."""
    import torch.nn.functional as F
    assert window_size[0] < 0 and q.shape[1] == k.shape[1]
    g = q.shape[2] // k.shape[2]
    k, v = k.to(q.dtype), v.to(q.dtype)
    if g > 1:
        k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, scale=softmax_scale)
    return o.transpose(1, 2)


def add_dropout(model, p):
    """Dropout on the embeddings and on each mixer/MLP output (the residual branches)."""
    import torch.nn.functional as F

    def hook(mod, inp, out):
        if not mod.training or p <= 0:
            return out
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)
    model.model.embeddings.register_forward_hook(hook)
    for blk in model.model.layers:
        blk.attn.register_forward_hook(hook)
        blk.mlp.register_forward_hook(hook)


# ----------------------------------------------------------------------------
# one worker: train one setting until the deadline, keep the best checkpoint by dev loss

def cmd_train(args):
    spec = json.loads(args.spec)
    deadline = args.deadline
    os.makedirs(args.workdir, exist_ok=True)
    summary_path = os.path.join(args.workdir, "summary.json")
    summary = dict(spec=spec, status="starting")

    def save_summary():
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=1)

    save_summary()
    cut = setup_fla()
    import torch
    import torch.nn.functional as F
    import fla.layers.attn as fla_attn
    fla_attn.flash_attn_func = sdpa_flash_attn_func
    device = DEVICE
    gdn_info = setup_gdn_training(spec, device)
    summary["gdn_training"] = gdn_info
    log(f"[{spec['name']}] GDN training op: {json.dumps(gdn_info)}")
    torch.manual_seed(spec["seed"])
    train, dev, _ = load_stream(device)
    config, model = make_model(spec)
    model = model.to(device)
    add_dropout(model, spec["dropout"])
    nparams = sum(p.numel() for p in model.parameters())
    log(f"[{spec['name']}] autotuners cut: {cut}; params {nparams} "
        f"(non-embedding {nparams - VOCAB * spec['hidden']}); train {len(train)} dev {len(dev)} tokens")
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=spec["wd"]), dict(params=no_decay, weight_decay=0.0)],
                            lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8)
    params = [p for g in opt.param_groups for p in g["params"]]

    dev_wins = windows(torch.cat([torch.tensor([BOS], device=device), dev]), CTX)
    dev_wins = [w for w in dev_wins if len(w) == CTX]
    gen = torch.Generator(device="cpu").manual_seed(spec["seed"] + 1)
    starts = torch.randint(0, len(train) - CTX, (64,), generator=gen)
    train_wins = [train[s:s + CTX] for s in starts.tolist()]  # a fixed sample, scored without dropout
    ar = torch.arange(CTX + 1, device=device)

    mode = "autocast"
    fwd_model = model
    model16, pairs = None, None

    def to_bf16_copy():
        nonlocal model16, pairs, fwd_model, mode
        import copy
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        pairs = list(zip([p for _, p in model.named_parameters()], [p for _, p in model16.named_parameters()]))
        fwd_model, mode = model16, "bf16_copy"

    def step_loss(x, y):
        if mode == "autocast":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=x, use_cache=False).logits
        else:
            for p32, p16 in pairs:
                p16.data.copy_(p32.data)
            logits = model16(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if mode != "autocast":
            for p32, p16 in pairs:
                p32.grad = None if p16.grad is None else p16.grad.float()
                p16.grad = None
        return loss.detach()

    def evaluate():
        fwd_model.eval()
        if mode != "autocast":
            for p32, p16 in pairs:
                p16.data.copy_(p32.data)
        d = score_windows(fwd_model, dev_wins, 64, autocast=(mode == "autocast"))
        t = score_windows(fwd_model, train_wins, 64, autocast=(mode == "autocast"))
        fwd_model.train()
        return math.fsum(d) / (len(dev_wins) * (CTX - 1)), math.fsum(t) / (len(train_wins) * (CTX - 1))

    best = dict(dev=float("inf"))
    best_state = None
    history, recent = [], []
    step, t_first, last_eval = 0, None, 0.0
    t0 = time.time()
    model.train()
    summary["status"] = "training"
    try:
        while time.time() < deadline:
            if t_first is None or step < spec["warmup"]:
                lr = spec["lr"] * min(1.0, (step + 1) / spec["warmup"])
            else:
                frac = min(1.0, (time.time() - t_first) / max(1.0, deadline - t_first))
                lo = spec["lr"] * spec["min_lr_frac"]
                lr = lo + (spec["lr"] - lo) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, len(train) - CTX - 1, (spec["batch"],), device=device)
            xy = train[idx[:, None] + ar]
            try:
                loss = step_loss(xy[:, :-1], xy[:, 1:])
            except Exception:
                if step == 0 and mode == "autocast":
                    log(f"[{spec['name']}] autocast training step failed; switching to a bf16 copy:")
                    traceback.print_exc()
                    opt.zero_grad(set_to_none=True)
                    to_bf16_copy()
                    summary["autocast_error"] = traceback.format_exc()[-2000:]
                    continue
                raise
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            recent.append(loss)
            if step == 1:
                t_first = time.time()
                log(f"[{spec['name']}] first step done after {t_first - t0:.1f}s ({mode}), loss {float(loss):.3f}")
            now = time.time()
            if now - last_eval >= args.eval_every or now >= deadline:
                tl = float(torch.stack(recent).mean()) if recent else float("nan")
                recent = []
                dl, te = evaluate()
                last_eval = time.time()
                row = dict(step=step, t=round(last_eval - t0, 1), lr=lr, train_loss=tl, train_eval=te, dev=dl)
                history.append(row)
                if dl < best["dev"]:
                    best = dict(row)
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                log(f"[{spec['name']}] step {step} t {row['t']}s lr {lr:.2e} train {tl:.4f} "
                    f"train_eval {te:.4f} dev {dl:.4f} best {best['dev']:.4f}@{best['step']}")
                summary.update(status="training", steps=step, best=best, history=history, mode=mode)
                save_summary()
                # far past the best for a long time: stop, leave the GPU to the others
                if dl > best["dev"] + 0.5 and last_eval - t0 - best["t"] > 60:
                    log(f"[{spec['name']}] stopping early: dev {dl:.4f} >> best {best['dev']:.4f}")
                    break
        summary["status"] = "done"
    except Exception:
        traceback.print_exc()
        summary["status"] = "error"
        summary["error"] = traceback.format_exc()[-3000:]
    if best_state is not None:
        torch.save({k: v.cpu() for k, v in best_state.items()}, os.path.join(args.workdir, "best.pt"))
    elapsed = time.time() - t0
    summary.update(steps=step, best=best, history=history, mode=mode, params=nparams, elapsed_s=round(elapsed, 1),
                   train_seconds=round(time.time() - t_first, 1) if t_first else 0,
                   tokens_seen=step * spec["batch"] * CTX, has_checkpoint=best_state is not None)
    save_summary()
    log(f"[{spec['name']}] finished: {summary['status']}, {step} steps, best dev {best['dev']:.4f}")


# ----------------------------------------------------------------------------
# the sweep driver: workers in parallel, then the chosen checkpoint and fla's fp32 eval

def worker_argv(spec, deadline, workdir, eval_every):
    return [sys.executable, "-W", "ignore", os.path.abspath(__file__), "train", "--spec", json.dumps(spec),
            "--deadline", str(deadline), "--workdir", workdir, "--eval-every", str(eval_every)]


def last_line(path):
    try:
        with open(path, "rb") as f:
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln[:2].isdigit() or "Error" in ln]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def cmd_sweep(args):
    t0 = time.time()
    out = args.out
    work = args.workdir
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    deadline = t0 + args.train_seconds
    specs = [s for s in SPECS if not args.only or s["name"] in args.only]
    procs = []
    for spec in specs:
        wd = os.path.join(work, spec["name"])
        os.makedirs(wd, exist_ok=True)
        lf = open(os.path.join(wd, "log.txt"), "w")
        procs.append((spec, wd, lf, subprocess.Popen(worker_argv(spec, deadline, wd, args.eval_every),
                                                     stdout=lf, stderr=subprocess.STDOUT)))
        log(f"started worker {spec['name']}: {json.dumps(spec)}")

    # meanwhile: compile fla's fp32 eval kernels (and check the eval path) on a fresh model
    with open(VAL_IDS) as f:
        val_ids = [int(t) for t in f.read().split()]
    try:
        cut = setup_fla()
        import torch
        import fla
        import transformers
        import triton
        device = DEVICE
        gpu = torch.cuda.get_device_name(0) if device == "cuda" else device
        env = dict(fla_version=fla.__version__, torch=torch.__version__, transformers=transformers.__version__,
                   triton=triton.__version__, gpu=gpu, triton_f32_default=os.environ.get("TRITON_F32_DEFAULT"),
                   autotuners_cut=cut)
        log("env", json.dumps(env))
        torch.manual_seed(0)
        _, warm = make_model(specs[0])
        warm = warm.to(device)
        tw = time.time()
        r = fla_eval_fp32(warm, val_ids[:CTX + 17], CTX, device)  # a full window and a short one
        log(f"fp32 eval path warmed in {time.time() - tw:.1f}s: random model mean CE {r['mean_ce']:.4f} "
            f"(ln V = {math.log(VOCAB):.4f})")
        del warm
        if device == "cuda":
            torch.cuda.empty_cache()
    except Exception:
        traceback.print_exc()
        env = dict(error="setup failed")

    # wait for the workers, printing their progress
    hard = deadline + args.grace
    while any(p.poll() is None for *_, p in procs):
        if time.time() > hard:
            for spec, _, _, p in procs:
                if p.poll() is None:
                    log(f"killing worker {spec['name']} (past the grace period)")
                    p.kill()
            break
        time.sleep(min(20.0, max(1.0, hard - time.time())))
        for spec, wd, _, p in procs:
            log(f"  {spec['name']}: {'running' if p.poll() is None else 'exit ' + str(p.returncode)} | "
                f"{last_line(os.path.join(wd, 'log.txt'))}")
    for *_, lf, p in procs:
        p.wait()
        lf.close()
    # all logs in one file that comes back
    summaries = []
    with open(os.path.join(out, "train_logs.txt"), "w") as f:
        for spec, wd, _, p in procs:
            f.write(f"===== {spec['name']} (exit {p.returncode})\n")
            with open(os.path.join(wd, "log.txt"), errors="replace") as g:
                f.write(g.read())
            try:
                with open(os.path.join(wd, "summary.json")) as g:
                    s = json.load(g)
            except Exception:
                s = dict(spec=spec, status="no summary")
            s["workdir"] = wd
            summaries.append(s)
    table = [dict(name=s["spec"]["name"], status=s.get("status"), steps=s.get("steps"),
                  best=s.get("best"), mode=s.get("mode"), params=s.get("params"),
                  has_checkpoint=s.get("has_checkpoint"),
                  gdn_training={k: v for k, v in (s.get("gdn_training") or {}).items() if k != "error"}) for s in summaries]
    log("sweep:\n" + "\n".join(json.dumps(t) for t in table))
    ok = [s for s in summaries if s.get("has_checkpoint") and os.path.exists(os.path.join(s["workdir"], "best.pt"))]
    if not ok:
        log("no worker left a checkpoint")
        with open(os.path.join(out, "shakespeare_fla_eval.json"), "w") as f:
            json.dump(dict(status="no checkpoint", sweep=table, env=env), f, indent=1)
        return 1
    chosen = min(ok, key=lambda s: s["best"]["dev"])
    spec = chosen["spec"]
    log(f"chosen: {spec['name']} (dev {chosen['best']['dev']:.4f} at step {chosen['best']['step']})")

    import torch
    from safetensors.torch import save_file
    device = DEVICE
    config, model = make_model(spec)
    state = torch.load(os.path.join(chosen["workdir"], "best.pt"), map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the weights are fp16 values from here on
    ckpt = os.path.join(work, "shakespeare_gdn_hf")
    os.makedirs(ckpt, exist_ok=True)
    config.save_pretrained(ckpt)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    sd.pop("lm_head.weight", None)  # tied to model.embeddings.weight
    save_file(sd, os.path.join(ckpt, "model.safetensors"), metadata={"format": "pt"})
    tgz = os.path.join(work, "shakespeare_gdn_hf.tar.gz")
    subprocess.run(["tar", "czf", tgz, "-C", work, "shakespeare_gdn_hf"], check=True)
    # the GPU machine hands back files of at most 16 MiB: cut the archive into parts
    # (here: cat shakespeare_gdn_hf.tar.gz.part* | tar xz)
    with open(tgz, "rb") as f:
        k = 0
        while True:
            chunk = f.read(15_000_000)
            if not chunk:
                break
            with open(os.path.join(out, f"shakespeare_gdn_hf.tar.gz.part{k}"), "wb") as g:
                g.write(chunk)
            k += 1
    log(f"saved {ckpt} and $OUT/shakespeare_gdn_hf.tar.gz.part0..{k - 1} "
        f"({os.path.getsize(tgz)} bytes, {sum(v.numel() for v in sd.values())} params)")

    result = dict(
        status="checkpoint saved, eval pending",
        model=spec["name"], spec=spec, params=sum(v.numel() for v in sd.values()),
        val_ids_file="models/shakespeare_val.ids", ctx=CTX,
        split=dict(train="first 85% of the token stream (without BOS)", dev="next 5% (early stopping, choice)",
                   val="last 10%", tokens=dict(train=None, dev=None, val=len(val_ids) - 1)),
        steps=chosen.get("steps"), step_at_best=chosen["best"]["step"], train_seconds=chosen.get("train_seconds"),
        tokens_seen_at_best=chosen["best"]["step"] * spec["batch"] * CTX,
        final_train_loss=chosen["best"]["train_loss"],
        final_train_loss_note="mean training loss (dropout on, bf16 autocast) over the steps since the "
                              "evaluation before the kept checkpoint",
        train_eval_loss=chosen["best"]["train_eval"],
        train_eval_note="64 fixed random 256-token train windows, no dropout, bf16, at the kept checkpoint",
        dev_loss=chosen["best"]["dev"], mode=chosen.get("mode"), gdn_training=chosen.get("gdn_training"),
        env=env, sweep=table,
        history=chosen.get("history"))
    try:
        import numpy as np
        tr, dv, _ = split(np.fromfile(DATA, dtype=np.int32))
        result["split"]["tokens"].update(train=len(tr), dev=len(dv))
    except Exception:
        pass

    def write():
        with open(os.path.join(out, "shakespeare_fla_eval.json"), "w") as f:
            json.dump(result, f, indent=1)
    write()

    te = time.time()
    try:
        model = model.to(device)
        r = fla_eval_fp32(model, val_ids, CTX, device)
        result.update(status="ok", fla_val=dict(
            mean_ce=r["mean_ce"], ppl=r["ppl"], n_predicted=r["n_predicted"], n_windows=r["n_windows"],
            definition="S=[BOS]+val ids; non-overlapping windows of 256 (last shorter), each from an empty "
                       "state; positions 1..len-1 predicted; mean CE = sum NLL / n predicted; ppl = exp(mean CE)",
            precision="fp32 weights holding fp16 values, fp32 compute, TF32 off, TRITON_F32_DEFAULT=ieee, "
                      "linear layers in fused_recurrent mode, attention by tests/fla_shim (fp32)",
            window_nll=r["window_nll"]))
        log(f"fla fp32 val: mean CE {r['mean_ce']:.8f} ppl {r['ppl']:.6f} over {r['n_predicted']} predicted "
            f"tokens in {r['n_windows']} windows ({time.time() - te:.1f}s)")
    except Exception:
        traceback.print_exc()
        result.update(status="eval failed", eval_error=traceback.format_exc()[-3000:])
    result["wall_s"] = round(time.time() - t0, 1)
    write()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--text", default=TEXT)
    p = sub.add_parser("sweep")
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", default="/tmp/hla_train")
    p.add_argument("--train-seconds", type=float, default=420.0, help="wall clock from the start to stop training")
    p.add_argument("--grace", type=float, default=45.0, help="then seconds for the workers to save")
    p.add_argument("--eval-every", type=float, default=6.0)
    p.add_argument("--only", nargs="*", help="setting names to train (default: all)")
    p = sub.add_parser("train")
    p.add_argument("--spec", required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--eval-every", type=float, default=6.0)
    args = ap.parse_args(argv)
    return {"prep": cmd_prep, "sweep": cmd_sweep, "train": cmd_train}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
