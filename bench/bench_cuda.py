"""make bench-cuda: decode and prompt speed of `./run --device cuda` (a `make cuda` build) on the
GPU machine, at the paper's 340M and 1.3B shapes with random weights.

Models: fla's tensor shapes (tests/paper_shapes, tests/paper_shapes_1.3B, recorded with fla's
model classes) filled with random numbers, exported with export.py in each dtype (in parallel;
cached in bench/models/). Each run loads the model (its weights are copied to the GPU and the
decode step captured as a CUDA graph before the clock starts), feeds a prompt of P random
tokens and decodes D tokens greedily; speeds come from ./run's stats line. Prints, per run:
  BENCH model=<name> dtype=<t> threads=<n> prompt_tokens=<p> prefill_tok_s=<x> decode_tok_s=<y> weight_bytes=<b>
then the GPU's measured device-to-device copy bandwidth (bytes read + written, through PyTorch)
and per run the bytes one decode step must move, counted as make bench counts them
(bench.py's model_costs: every weight but the embedding table, of which one row, the
recurrent states read and written, and the KV cache's keys and values up to the step's
position, the mean over the decoded tokens), the achieved GB/s and its fraction of the copy
bandwidth.

Usage: python3 bench/bench_cuda.py [--prompt P] [--decode D] [--sizes 340M,1.3B] [--dtypes bf16,q8] [--kv-dtype T] [model-substring ...]
  --kv-dtype T: ./run --kv-dtype T (fp32, the default, or bf16: the attention layers' KV cache; the bytes a
                step moves count it in that type); rows named <model>-<size>-kv<T>
"""
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from paper_shape_check import random_checkpoint  # noqa: E402
sys.path.insert(0, str(REPO / "bench"))
import bench  # noqa: E402
from bench import model_costs  # noqa: E402  (the bytes a decode step moves, as make bench counts them)
WORK = REPO / "bench" / "models"
SHAPES = {"340M": REPO / "tests" / "paper_shapes", "1.3B": REPO / "tests" / "paper_shapes_1.3B"}
MODELS = ["gated_deltanet_hybrid_6_1", "hgrn2_hybrid_6_1", "transformer"]


def checkpoint(size, name):
    """fla's shapes at `size` with random weights (fp16 on disk), made once"""
    d = WORK / f"{name}-{size}"
    if not (d / "model.safetensors").exists():
        random_checkpoint(SHAPES[size] / name, d, np.random.default_rng(0))
    return d


def exported(job):
    size, name, dtype = job
    out = WORK / f"{name}-{size}.{dtype}.bin"
    if not out.exists():
        subprocess.run([sys.executable, str(REPO / "export.py"), str(checkpoint(size, name)), str(out), "--dtype", dtype],
                       check=True, capture_output=True)
    return out


def run(model, prompt, decode):
    ids = ",".join(str(1 + (i * 7919) % 31999) for i in range(prompt))
    r = subprocess.run([str(REPO / "run"), str(model), "--device", "cuda", "--tokens", ids, "-n", str(decode), "-t", "0",
                        "--ids", "--ctx", str(prompt + decode + 8), *bench.KV_FLAGS], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{model}: {r.stderr.strip()}")
    m = re.search(r"prompt: \d+ tokens, ([\d.]+) tok/s \| generated: \d+ tokens, ([\d.]+) tok/s", r.stderr)
    return float(m.group(1)), float(m.group(2))


def copy_bandwidth():
    """device-to-device copy of 2 GB through PyTorch, median of 20, bytes read + written"""
    import torch
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    a.random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * a.numel() / float(np.median(times)) / 1e9


def main():
    args = sys.argv[1:]
    prompt, decode, sizes, dtypes, only = 2048, 256, ["340M", "1.3B"], ["bf16", "fp16", "q8", "fp32"], []
    while args:
        a = args.pop(0)
        if a == "--prompt":
            prompt = int(args.pop(0))
        elif a == "--decode":
            decode = int(args.pop(0))
        elif a == "--sizes":
            sizes = args.pop(0).split(",")
        elif a == "--dtypes":
            dtypes = args.pop(0).split(",")
        elif a == "--kv-dtype":
            bench.KV_FLAGS[:] = ["--kv-dtype", args.pop(0)]
        else:
            only.append(a)
    jobs = [(s, n, t) for s in sizes if SHAPES[s].exists() for n in MODELS if not only or any(o in n for o in only) for t in dtypes]
    WORK.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for size, name in sorted({(s, n) for s, n, _ in jobs}):  # checkpoints first (one writer each)
            pool.submit(checkpoint, size, name)
    with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        models = list(pool.map(exported, jobs))
    copy_gbs = copy_bandwidth()
    rows = []
    for (size, name, dtype), model in zip(jobs, models):
        run(model, 16, 4)  # warm-up: page cache
        pre, dec = run(model, prompt, decode)
        weights, per_token, _ = model_costs(model, prompt, decode, prompt)  # decode steps from position `prompt`
        label = f"{name}-{size}" + (f"-kv{bench.KV_FLAGS[1]}" if bench.KV_FLAGS else "")
        print(f"BENCH model={label} dtype={dtype} threads=1 prompt_tokens={prompt} prefill_tok_s={pre:.1f} "
              f"decode_tok_s={dec:.2f} weight_bytes={weights}", flush=True)
        rows.append((label, dtype, dec, per_token))
    print(f"COPY_BANDWIDTH device_to_device_GB_s={copy_gbs:.0f} (bytes read + written)")
    for name, dtype, dec, per_token in rows:
        gbs = dec * per_token / 1e9
        print(f"ROOFLINE model={name} dtype={dtype} decode_tok_s={dec:.1f} bytes_per_token={per_token} "
              f"achieved_GB_s={gbs:.0f} limit_tok_s={copy_gbs * 1e9 / per_token:.0f} fraction={gbs / copy_gbs:.2f}")


if __name__ == "__main__":
    main()
