"""Does hla.c agree with fla on YOUR checkpoint? A sanity check for researchers.

Runs the same tokens through fla (the library the checkpoint was trained with) and through
./run on the exported file, and compares:
  1. the logits of every prompt position: fla's exact fp32 recurrent kernels (every linear
     layer switched to `fused_recurrent`; fla's default chunked kernels are not exact in fp32)
     against ./run's prompt path and its --one-by-one (decode) path;
  2. the greedy continuation: fla's cached decode against ./run -t 0.
It prints one line per comparison and exits 0 if every max |logit difference| is within
--tol (relative to the largest |logit|; by default from the export's weight type: fp32 1e-3,
fp16 5e-3, bf16 0.1, q8 0.25, a few times what the random O(1)-weight fixtures reach: fp32
below 2e-5, fp16 9.4e-4, bf16 3.6e-2, q8 0.135) and, for an fp32 export, the continuations
match; 1 otherwise. (Rounded weights may flip a near-tie between the top two tokens, so
there a different continuation is reported, not failed.)

Needs: PyTorch with a CUDA GPU (fla's kernels are Triton), transformers, and fla
(`pip install flash-linear-attention`); where `flash_attn` is missing, tests/fla_shim's
PyTorch stand-in is used. Not needed by ./run or export.py.

Usage:
  python3 compare_fla.py CHECKPOINT_DIR MODEL.bin [-i TEXT | --tokens 1,415,2936] [-n 16]
                         [--run ./run] [-z tokenizer.bin] [--tol T] [--device cuda]
  (--device cuda: ./run's GPU path, a `make cuda` build; the default prompt is a short text)
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_args(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        sys.exit(0)
    if len(argv) < 2:
        fail("usage: python3 compare_fla.py CHECKPOINT_DIR MODEL.bin [options] (--help)")
    opts = dict(ckpt=argv[0], model=argv[1], text="The capital of France is Paris. The capital of Italy is",
                tokens=None, n=16, run=os.path.join(ROOT, "run"), tokenizer=os.path.join(ROOT, "tokenizer.bin"),
                tol=None, device=None)
    flags = {"-i": "text", "--tokens": "tokens", "-n": "n", "--run": "run", "-z": "tokenizer", "--tol": "tol",
             "--device": "device"}
    rest = argv[2:]
    while rest:
        a = rest.pop(0)
        if a not in flags or not rest:
            fail(f"unknown argument or missing value: {a} (python3 compare_fla.py --help)")
        opts[flags[a]] = rest.pop(0)
    try:
        opts["n"] = int(opts["n"])
        opts["tol"] = None if opts["tol"] is None else float(opts["tol"])
        if opts["tokens"] is not None:
            opts["tokens"] = [int(t) for t in opts["tokens"].split(",")]
    except ValueError as e:
        fail(f"bad number: {e}")
    if not os.path.isfile(os.path.join(opts["ckpt"], "config.json")):
        fail(f"{opts['ckpt']}: no config.json (expected a Hugging Face checkpoint directory)")
    for key, what in (("model", "weight file (export.py's output)"), ("run", "./run binary (make build)")):
        if not os.path.isfile(opts[key]):
            fail(f"{opts[key]}: no such {what}")
    return opts


DTYPE_NAMES = ["fp32", "fp16", "bf16", "q8"]
DEFAULT_TOL = {"fp32": 1e-3, "fp16": 5e-3, "bf16": 0.1, "q8": 0.25}


def export_dtype(path):
    """the weight type export.py gave the matrices: the widest code in the tensor table (README's
    weight file format: norms and gates stay fp32, the matrices take the export's type)"""
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256 or head[:4] != b"HLAM":
            fail(f"{path}: not an hla.c model file (export.py's output)")
        n_tensors, n_layers = struct.unpack_from("<I", head, 12)[0], struct.unpack_from("<I", head, 20)[0]
        if not 0 < n_tensors < 1 << 20 or not 0 < n_layers < 1 << 16:
            fail(f"{path}: implausible header ({n_tensors} tensors, {n_layers} layers)")
        f.seek(256 + (n_layers + 7) // 8 * 8)
        table = f.read(128 * n_tensors)
    if len(table) != 128 * n_tensors:
        fail(f"{path}: truncated tensor table")
    codes = [struct.unpack_from("<I", table, 128 * i + 64)[0] for i in range(n_tensors)]
    if max(codes) >= len(DTYPE_NAMES):
        fail(f"{path}: unknown weight type code {max(codes)}")
    return DTYPE_NAMES[max(codes)]


def run_tool(opts, *args):
    cmd = [opts["run"], opts["model"], *map(str, args)] + (["--device", opts["device"]] if opts["device"] else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'exit ' + str(r.returncode)}")
    return r.stdout


def our_logits(opts, tokens, *flags):
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        run_tool(opts, "--tokens", ",".join(map(str, tokens)), "--logits", out, "--quiet", *flags)
        return np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1)


def load_fla():
    """fla and its model classes, registered with transformers' Auto classes by importing fla"""
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # Triton's fp32 dots in IEEE fp32, not TF32
    try:
        import torch
    except ImportError:
        fail("compare_fla.py needs PyTorch, transformers and fla (pip install torch transformers flash-linear-attention)")
    try:  # fla autotunes each Triton kernel for every new shape (minutes); one forward needs no tuning
        import triton
        _autotune = triton.autotune
        triton.autotune = lambda configs, key, **kw: _autotune(configs[:1], key, **kw)
    except ImportError:
        pass
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(ROOT, "tests", "fla_shim"))  # a PyTorch stand-in
    try:
        import fla  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(ROOT, ".fla"))  # fla's source beside the repo (the test machines)
        try:
            import fla  # noqa: F401
        except ImportError:
            fail("compare_fla.py needs fla: pip install flash-linear-attention")
    if not torch.cuda.is_available():
        fail("fla's kernels need a CUDA GPU (Triton); none is visible")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def adapt_state(state, expected):
    """A checkpoint's tensors (name -> array) renamed and split to the names and shapes of the fla
    model at hand (expected: name -> shape), for the checkpoint quirks export.py reads too: fla
    before 2025-02-09 kept the MLP's gate and up projections in one gate_proj [2I, H] (gate rows
    first), and GLA/RetNet name their output norm g_norm or g_norm_swish_gate by fuse_norm. A
    tensor whose shape still differs from the model's is refused with its name and both shapes."""
    state = dict(state)
    for name in list(state):
        if name.endswith("mlp.gate_proj.weight") and name in expected:
            up = name[:-len("gate_proj.weight")] + "up_proj.weight"
            rows = expected[name][0]
            if up in expected and up not in state and tuple(state[name].shape) == (2 * rows, *expected[name][1:]):
                fused = state.pop(name)
                state[name], state[up] = fused[:rows], fused[rows:]
        for a, b in (("g_norm.weight", "g_norm_swish_gate.weight"), ("g_norm_swish_gate.weight", "g_norm.weight")):
            if name.endswith(a) and name not in expected:
                other = name[:-len(a)] + b
                if other in expected and other not in state:
                    state[other] = state.pop(name)
    for name, t in state.items():
        if name in expected and tuple(t.shape) != tuple(expected[name]):
            fail(f"tensor {name}: {tuple(t.shape)} in the checkpoint, {tuple(expected[name])} in fla's model")
    return state


def load_checkpoint(torch, ckpt):
    """the checkpoint as fla's model in fp32 on the GPU; refuses one whose weights do not fill the model"""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(ckpt)
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for f in files:
        path = os.path.join(ckpt, f)
        if not os.path.isfile(path):
            fail(f"{ckpt}: no {f}")
        state.update(load_file(path))
    model = AutoModelForCausalLM.from_config(config)
    state = adapt_state(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        fail(f"{ckpt}: fla's {config.model_type} model has weights the checkpoint lacks: {', '.join(missing[:5])}"
             f"{' ...' if len(missing) > 5 else ''} (a different fla version?)")
    if config.tie_word_embeddings:
        model.tie_weights()
    if unexpected:
        print(f"note: tensors fla's model does not use (left out): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    return model.cuda().float().eval()


def fla_prompt_logits(torch, model, tokens):
    """fla's forward over the prompt with every linear layer on its exact fused_recurrent kernel"""
    modes = [m for m in model.modules() if isinstance(getattr(m, "mode", None), str)]
    saved = [m.mode for m in modes]
    for m in modes:
        m.mode = "fused_recurrent"
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([tokens], device="cuda")).logits[0].float().cpu().numpy()
    finally:
        for m, mode in zip(modes, saved):
            m.mode = mode


def fla_greedy(torch, model, tokens, n):
    """fla's greedy continuation through its cache (the prompt in one forward, then a token at a time)"""
    out_ids = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens], device="cuda"), use_cache=True)
        for _ in range(n):
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


def compare(opts, tokens, ref, fla_continuation):
    """./run against fla's prompt logits `ref` [tokens][vocab] and its greedy continuation;
    prints a line per comparison, returns whether all passed"""
    import numpy as np
    dtype = export_dtype(opts["model"])
    tol = opts["tol"] if opts["tol"] is not None else DEFAULT_TOL[dtype]
    scale = float(np.abs(ref).max())
    ok = True
    for label, flags in (("prompt path", ()), ("--one-by-one", ("--one-by-one",))):
        ours = our_logits(opts, tokens, *flags)
        if ours.shape != ref.shape:
            fail(f"logits of shape {ours.shape} from ./run, {ref.shape} from fla (a different vocabulary?)")
        diff = float(np.abs(ours - ref).max())
        agree = int((ours.argmax(-1) == ref.argmax(-1)).sum())
        good = diff <= tol * scale
        ok &= good
        print(f"logits, fla fused_recurrent fp32 vs hla.c {label} ({dtype} weights): max|diff| {diff:.3g} = "
              f"{diff / scale:.3g} of max|logit| {scale:.3g} (tol {tol:g}); argmax equal at {agree}/{len(tokens)} "
              f"positions: {'ok' if good else 'FAIL'}")
    if fla_continuation:
        n = len(fla_continuation)
        out = run_tool(opts, "--tokens", ",".join(map(str, tokens)), "-n", n, "-t", "0", "--ids", "--quiet")
        ours = [int(t) for t in out.split()]
        same = ours == fla_continuation
        ok &= same or dtype != "fp32"
        print(f"greedy continuation, {n} tokens: {'identical' if same else 'DIFFERENT'}"
              f"{'' if same else f' (fla {fla_continuation}, hla.c {ours})'}"
              f"{'' if same or dtype == 'fp32' else ' (reported, not failed: ' + dtype + ' weights)'}")
    return ok


def main():
    opts = parse_args(sys.argv[1:])
    export_dtype(opts["model"])  # (a file that is not an export fails here, before fla loads)
    torch = load_fla()
    if opts["tokens"] is None:
        if not os.path.isfile(opts["tokenizer"]):
            fail(f"{opts['tokenizer']}: no tokenizer.bin (-z FILE, or --tokens IDS)")
        r = subprocess.run([opts["run"], "--tokenize", "-z", opts["tokenizer"], "-i", opts["text"]], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"tokenizing the prompt: {r.stderr.strip()}")
        opts["tokens"] = [int(t) for t in r.stdout.split()]
    tokens = opts["tokens"]
    model = load_checkpoint(torch, opts["ckpt"])
    print(f"{model.config.model_type}, {model.config.num_hidden_layers} layers; {len(tokens)} prompt tokens")
    ref = fla_prompt_logits(torch, model, tokens)
    fla_continuation = fla_greedy(torch, model, tokens, opts["n"]) if opts["n"] > 0 else []
    sys.exit(0 if compare(opts, tokens, ref, fla_continuation) else 1)


if __name__ == "__main__":
    main()
