"""make bench: decode and prefill speed at the paper's 340M shape against the memory roofline.

Random weights with fla's own tensor names and shapes (tests/paper_shapes/, recorded with
fla's model classes) are written once per model into bench/models/ (git-ignored; about
6 GB in all) and exported in each dtype. Each run warms up (the file into the page cache),
then feeds a prompt and decodes greedily; the speeds come from ./run's stats line.
Prints, per run:
  BENCH model=<name> dtype=<t> threads=<n> prompt_tokens=<p> prefill_tok_s=<x> decode_tok_s=<y> weight_bytes=<b>
then the machine's measured read bandwidth and the fraction of the decode roofline reached
(roofline tokens/s = read bandwidth / bytes of weights read per token).

Usage: python3 bench/bench.py [--threads N] [--prompt P] [--decode D] [model-substring ...]
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "models"
MODELS = ["transformer", "gated_deltanet_hybrid_6_1", "hgrn2_hybrid_6_1"]
DTYPES = ["fp32", "bf16", "q8"]


def make_checkpoint(name):
    d = WORK / name
    if (d / "model.safetensors").exists():
        return d
    src = REPO / "tests" / "paper_shapes" / name
    meta = json.loads((src / "shapes.json").read_text())
    rng = np.random.default_rng(0)
    tensors = {}
    for k, shape in meta["shapes"].items():
        if k.endswith("norm.weight") or "norm_swish_gate" in k:
            tensors[k] = np.ones(shape, np.float16)
        elif k.endswith("A_log"):
            tensors[k] = np.log(rng.uniform(1, 16, shape)).astype(np.float16)
        else:
            tensors[k] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text((src / "config.json").read_text())
    save_file(tensors, str(d / "model.safetensors"))
    return d


def exported(name, dtype):
    out = WORK / f"{name}.{dtype}.bin"
    if not out.exists():
        subprocess.run([sys.executable, str(REPO / "export.py"), str(make_checkpoint(name)), str(out), "--dtype", dtype],
                       check=True, capture_output=True)
    return out


def run(model, threads, prompt, decode):
    ids = ",".join(str(1 + (i * 7919) % 31999) for i in range(prompt))
    r = subprocess.run([str(REPO / "run"), str(model), "--tokens", ids, "-n", str(decode), "-t", "0", "--ids",
                        "-T", str(threads)], capture_output=True, text=True, check=True)
    m = re.search(r"prompt: \d+ tokens, ([\d.]+) tok/s \| generated: \d+ tokens, ([\d.]+) tok/s", r.stderr)
    return float(m.group(1)), float(m.group(2))


def weight_bytes(model):
    info = subprocess.run([str(REPO / "run"), str(model), "--info"], capture_output=True, text=True, check=True).stdout
    return int(round(float(re.search(r"weights ([\d.]+) MB", info).group(1)) * 1e6))


def main():
    args = sys.argv[1:]
    threads, prompt, decode = os.cpu_count() or 1, 256, 32
    only = []
    while args:
        a = args.pop(0)
        if a == "--threads":
            threads = int(args.pop(0))
        elif a == "--prompt":
            prompt = int(args.pop(0))
        elif a == "--decode":
            decode = int(args.pop(0))
        else:
            only.append(a)
    bw = subprocess.run([str(REPO / "bench" / "bandwidth"), str(threads)], capture_output=True, text=True,
                        check=True).stdout.strip()
    read_gbs = float(re.search(r"read_GB_s=([\d.]+)", bw).group(1))
    rows = []
    for name in MODELS:
        if only and not any(s in name for s in only):
            continue
        for dtype in DTYPES:
            model = exported(name, dtype)
            run(model, threads, 8, 2)  # warm-up: page cache, thread pool
            pre, dec = run(model, threads, prompt, decode)
            wb = weight_bytes(model)
            print(f"BENCH model={name}-340M dtype={dtype} threads={threads} prompt_tokens={prompt} "
                  f"prefill_tok_s={pre:.1f} decode_tok_s={dec:.2f} weight_bytes={wb}", flush=True)
            rows.append((name, dtype, dec, wb))
    print(bw)
    for name, dtype, dec, wb in rows:
        roof = read_gbs * 1e9 / wb
        print(f"ROOFLINE model={name}-340M dtype={dtype} decode_tok_s={dec:.2f} roofline_tok_s={roof:.2f} "
              f"fraction={dec / roof:.2f}")


if __name__ == "__main__":
    main()
