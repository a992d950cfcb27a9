"""The paper's 340M shape, end to end: fla's own tensor names/shapes/parameter counts
(tests/paper_shapes/, made by make_paper_shapes.py with fla's model classes) filled with
random numbers, exported with export.py, loaded by ./run --info and run for a few tokens.
Checks: the parameter count equals fla's, the file loads, logits are finite, and
--info's recurrent-state and KV-cache bytes. ~0.7 GB per model on disk, one at a time.

Usage: python3 tests/paper_shape_check.py [WORKDIR] [case-substring ...]   (make paper-shapes)
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "tests" / "paper_shapes"


def random_checkpoint(case_dir, out_dir, rng, dtype=np.float16):
    """fla's recorded shapes (case_dir: config.json + shapes.json) filled with random numbers
    (norms 1, A_log as fla initialises it, the rest N(0, 0.02)) stored as `dtype` in
    out_dir/model.safetensors. Also used by the benchmarks and tests/test_cuda.py."""
    meta = json.loads((case_dir / "shapes.json").read_text())
    tensors = {}
    for name, shape in meta["shapes"].items():
        if name.endswith("norm.weight") or "norm_swish_gate" in name:
            a = np.ones(shape, dtype)
        elif name.endswith("A_log"):
            a = np.log(rng.uniform(1, 16, shape)).astype(dtype)
        else:
            a = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)
        tensors[name] = a
    cfg = json.loads((case_dir / "config.json").read_text())
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(case_dir / "config.json", out_dir / "config.json")
    save_file(tensors, str(out_dir / "model.safetensors"))
    return meta["n_params"], cfg


def expected_state_and_kv(cfg):
    """bytes of fp32 recurrent state (without conv caches) and of KV cache per token."""
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    attn = (cfg.get("attn") or {}).get("layers", []) if cfg["model_type"] != "transformer" else list(range(L))
    n_lin = L - len(attn)
    mt = cfg["model_type"]
    if mt == "hgrn":
        per = H * cfg.get("expand_ratio", 1)
    elif mt == "hgrn2":
        per = H * cfg["expand_ratio"]                                 # heads x dk x dv = H/dk x dk x dk... = H*dk
    elif mt in ("gla", "retnet"):
        heads = cfg["num_heads"]
        dk, dv = int(H * cfg["expand_k"]) // heads, int(H * cfg["expand_v"]) // heads
        per = heads * dk * dv
    elif mt == "delta_net":
        heads = cfg["num_heads"]
        per = heads * (int(H * cfg.get("expand_k", 1)) // heads) * (int(H * cfg.get("expand_v", 1)) // heads)
    elif mt == "gated_deltanet":
        hv = cfg.get("num_v_heads") or cfg["num_heads"]
        per = hv * cfg["head_dim"] * int(cfg["head_dim"] * cfg["expand_v"])
    else:
        per = 0
    a = cfg.get("attn") or {}
    heads = a.get("num_heads", cfg.get("num_heads"))
    kv = (a.get("num_kv_heads") or cfg.get("num_kv_heads") or heads) if attn else 0
    kv_bytes = len(attn) * 2 * kv * (H // heads) * 4 if attn else 0
    return n_lin * per * 4, kv_bytes


def main():
    args = sys.argv[1:]
    work = Path(args.pop(0)) if args and not args[0].isalpha() and "/" in args[0] else Path(tempfile.mkdtemp())
    only = args
    rng = np.random.default_rng(0)
    rows = []
    for case_dir in sorted(p for p in SHAPES.iterdir() if (p / "shapes.json").exists()):
        if only and not any(s in case_dir.name for s in only):
            continue
        ckpt, out = work / case_dir.name, work / f"{case_dir.name}.bin"
        n_fla, cfg = random_checkpoint(case_dir, ckpt, rng)
        subprocess.run([sys.executable, str(REPO / "export.py"), str(ckpt), str(out), "--dtype", "bf16"],
                       check=True, capture_output=True)
        shutil.rmtree(ckpt)
        info = subprocess.run([str(REPO / "run"), str(out), "--info"], check=True, capture_output=True,
                              text=True).stdout
        n_ours = int(info.split("parameters: ")[1].split()[0])
        state = int(info.split("recurrent state: ")[1].split()[0])
        kv = int(info.split("kv cache: ")[1].split()[0])
        want_state, want_kv = expected_state_and_kv(cfg)
        t0 = time.time()
        r = subprocess.run([str(REPO / "run"), str(out), "--tokens", "1,415,2936,349", "-n", "4", "-t", "0",
                            "--ids"], capture_output=True, text=True)
        ok = (n_ours == n_fla and state == want_state and kv == want_kv and r.returncode == 0
              and len(r.stdout.split()) == 4)
        rows.append((case_dir.name, n_fla, n_ours, state, kv, r.stderr.strip().splitlines()[-1] if r.stderr else "", ok))
        print(f"{'ok ' if ok else 'BAD'} {case_dir.name:28s} fla params {n_fla:>11,} ours {n_ours:>11,} "
              f"state {state:>9,} B (want {want_state:,}) kv/token {kv:>7,} B (want {want_kv:,}) "
              f"| {time.time() - t0:.1f}s {rows[-1][5]}", flush=True)
        out.unlink()
    bad = [r[0] for r in rows if not r[-1]]
    print(f"{len(rows) - len(bad)} ok, {len(bad)} bad {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
