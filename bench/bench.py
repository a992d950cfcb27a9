"""make bench: prefill and decode speed at the paper's shapes, against the machine's rooflines.

For each size (340M: tests/paper_shapes/, 1.3B: tests/paper_shapes_1.3B/ when present; fla's
own tensor names and shapes, recorded with its model classes), random weights are written
once per model into bench/models/<size>/ (git-ignored) and exported in each dtype (the
random safetensors are deleted once every dtype is exported). Each run warms up (the file
into the page cache, the thread pool), then ./run measures, from its stats line:
  prefill: a prompt of P tokens (-n 1): prompt tokens / seconds of the prompt, the best of
           --reps such runs;
  decode: BOS then D+1 greedy tokens: D forward passes / their seconds (./run's line counts
          the D+1 tokens sampled; the bench divides the D forwards by the same time); the
          best of --reps such runs (default 3: the dev VM shares its host).
Prints, per run:
  BENCH model=<name>-<size> dtype=<t> threads=<n> prompt_tokens=<p> prefill_tok_s=<x> decode_tok_s=<y> weight_bytes=<b>
then the machine's read bandwidth (bench/bandwidth, measured before and after, the best
used) and fp32 FMA peak (bench/fma), the fraction of each roofline reached (also paired: each
prefill rep between two short FMA probes and each decode rep between two short bandwidth
probes, judged against the higher probe beside it, the row's closest rep reported as
paired_prefill_fraction and paired_decode_fraction):
  decode: tokens/s x bytes one token moves (the weights but the embedding table, of which one
          row; the recurrent state read and written; the KV cache up to the step's position,
          the mean over the decoded tokens) / bandwidth;
  prefill: tokens/s x matrix FLOPs per prompt token (2 per weight, attention scores and
           values at the mean position; not the recurrences) / FMA peak; prefill_kernel=amx
           where bf16 and q8 prompts run on AMX tiles (./run --info), avx512_bf16 or vnni
           where they run on the vdpbf16ps / vpdpwssd tiles instead, vector otherwise (the
           fp32 FMA peak bounds only the last: the others can pass 1);
and, with --llama2c DIR, karpathy/llama2.c's run (fp32, OpenMP) and runq (int8) on a
random Transformer of the same shape (bench/llama2c.py), then the issue's ratios. For those,
decode is measured again in turns (each rep: llama2.c's run, its runq, our Transformer in
each dtype; TURNS lines), so that both sides see the same minutes of a shared host.

Usage: python3 bench/bench.py [--threads N] [--sizes 340M,1.3B] [--shapes SIZE=DIR]
         [--prompt P] [--decode D] [--reps R] [--dtypes fp32,bf16,q8] [--llama2c DIR] [--llama2c-sizes 340M]
         [--llama2c-prompt P] [--context C] [--kv-dtype T] [--create-only] [model-substring ...]
  --create-only: write the cached models (one-time: minutes per model at 1.3B) and exit
  --context C: decode after a C-token prompt instead of from BOS (its state saved once with
               --save-state, loaded by each rep; rows named <model>-<size>-ctx<C>; the KV
               cache it reads is in the roofline's bytes); not part of `make bench`
  --kv-dtype T: every run with ./run --kv-dtype T (fp32 or bf16: the attention layers' KV cache;
               the roofline counts its bytes in that type); rows named <model>-<size>-kv<T>
"""
import functools
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KV_FLAGS = []  # --kv-dtype T, passed to every ./run (also bench_cuda.py's)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
import export  # noqa: E402  (the .bin header layout)
import llama2c  # noqa: E402
from paper_shape_check import random_checkpoint  # noqa: E402

WORK = REPO / "bench" / "models"
MODELS = ["transformer", "gated_deltanet_hybrid_6_1", "hgrn2_hybrid_6_1"]
DTYPES = ["fp32", "bf16", "q8"]
# size: (shapes directory, prompt tokens for prefill, decode tokens)
SIZES = {"340M": ("tests/paper_shapes", 512, 32), "1.3B": ("tests/paper_shapes_1.3B", 128, 16)}
TARGETS = {"q8_vs_llama2c_fp32": 3.5, "bf16_vs_llama2c_fp32": 1.9, "fp32_vs_llama2c_fp32": 1.0,
           "decode_roofline": 0.95, "decode_roofline_paired": 0.95, "prefill_fma_peak": 0.50,
           "prefill_fma_peak_paired": 0.50}

created_s = 0.0  # seconds spent writing random weights and exporting (one-time)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def source_key(shapes_dir):
    """The recorded shapes a cached model was made from (a changed shapes.json remakes it)."""
    h = hashlib.sha256()
    for f in ["config.json", "shapes.json"]:
        h.update((shapes_dir / f).read_bytes())
    return h.hexdigest()[:16]


def usable(model, key):
    """A cached export is used if it was made from these shapes and ./run still reads it."""
    stamp = model.with_suffix(".src")
    return (model.exists() and stamp.exists() and stamp.read_text() == key and
            subprocess.run([str(REPO / "run"), str(model), "--info"], capture_output=True).returncode == 0)


def exported(size, shapes_dir, name, dtypes):
    """The model's export in each dtype, made once; the random safetensors go once all exist."""
    global created_s
    d = WORK / size
    key = source_key(shapes_dir / name)
    out = {t: d / f"{name}.{t}.bin" for t in dtypes}
    missing = [t for t in dtypes if not usable(out[t], key)]
    if missing:
        t0 = time.time()
        log(f"[bench] creating {size} {name} ({', '.join(missing)}): random weights, then export.py")
        stamp = d / name / "source_key"
        if (d / name).exists() and not (stamp.exists() and stamp.read_text() == key):
            shutil.rmtree(d / name)  # random weights of other shapes
        ckpt = d / name
        if not (ckpt / "model.safetensors").exists():
            random_checkpoint(shapes_dir / name, ckpt, np.random.default_rng(0))
        stamp.write_text(key)
        for t in missing:
            subprocess.run([sys.executable, str(REPO / "export.py"), str(ckpt), str(out[t]), "--dtype", t],
                           check=True, capture_output=True)
            out[t].with_suffix(".src").write_text(key)
        os.sync()  # the new files on disk before anything is timed (run AG's 1.3B rows ran beside their writeback)
        created_s += time.time() - t0
    if all(usable(d / f"{name}.{t}.bin", key) for t in DTYPES) and (d / name).exists():
        shutil.rmtree(d / name)
    return out


def table(model):
    """Header fields and tensor table of one of our .bin files."""
    with open(model, "rb") as f:
        head = f.read(export.HEADER_BYTES)
        fmt = "<" + "".join(code for _, code in export.HEADER_FIELDS)
        c = dict(zip([n for n, _ in export.HEADER_FIELDS], struct.unpack_from(fmt, head, 8)))
        c["kinds"] = list(f.read(c["n_layers"]))
        f.seek(export.HEADER_BYTES + (c["n_layers"] + 7) // 8 * 8)
        tensors = {}
        for _ in range(c["n_tensors"]):
            name, dtype, ndim, *rest = struct.unpack("<64sII4QQQ8x", f.read(export.ENTRY_BYTES))
            tensors[name.rstrip(b"\0").decode()] = dict(dtype=dtype, shape=rest[:ndim], nbytes=rest[5])
    return c, tensors


@functools.lru_cache(maxsize=None)
def run_info(model):
    """./run MODEL --info (with --kv-dtype as set), once per model"""
    return subprocess.run([str(REPO / "run"), str(model), "--info", *KV_FLAGS], capture_output=True, text=True, check=True).stdout


def state_and_kv_bytes(model):
    """the recurrent state's bytes and the KV cache's bytes per token of context, as ./run --info says"""
    out = run_info(model)
    state = re.search(r"recurrent state: (\d+) bytes", out)
    kv = re.search(r"kv cache: (\d+) bytes per token", out)
    return int(state.group(1)) if state else 0, int(kv.group(1)) if kv else 0


def kv_bytes_read(kv_per_token, first, n_steps, window=0):
    """the KV cache a decode step reads, the mean over n_steps steps from position first (a
    sliding window caps the keys a step sees)"""
    keys = sum(min(p + 1, window) if window else p + 1 for p in range(first, first + n_steps))
    return int(kv_per_token * keys / n_steps)


def model_costs(model, prompt, decode, first=1):
    """weight bytes, bytes one of `decode` decode steps from position `first` moves, matrix
    FLOPs per prompt token (also bench_cuda.py's)."""
    c, t = table(model)
    total = sum(x["nbytes"] for x in t.values())
    emb = t["embeddings"]
    state, kv = state_and_kv_bytes(model)
    per_token = (total - (0 if c["tie"] else emb["nbytes"]) + emb["nbytes"] // emb["shape"][0]
                 + 2 * state + kv_bytes_read(kv, first, decode, c["attn_window"]))
    flops = 0.0
    for name, x in t.items():
        if len(x["shape"]) == 2 and name not in ("embeddings", "lm_head"):
            flops += 2.0 * x["shape"][0] * x["shape"][1]
    V, D = c["vocab"], c["dim"]
    flops += 2.0 * V * D / prompt  # the LM head, once per prompt
    n_attn = sum(1 for k in c["kinds"] if k == export.KINDS["attention"])
    window = c["attn_window"] or prompt
    mean_ctx = sum(min(p + 1, window) for p in range(prompt)) / prompt
    flops += n_attn * 4.0 * c["attn_heads"] * c["attn_head_dim"] * mean_ctx  # q.k and p.v
    return total, per_token, flops


def batch_kernel(model, dtype):
    """which kernel ./run --info says a prompt batch of this dtype goes through"""
    info = run_info(model)
    if dtype in ("bf16", "q8") and "AMX tiles" in info:
        return "amx"
    if dtype == "bf16" and "AVX512-BF16 for bf16" in info:
        return "avx512_bf16"
    if dtype == "q8" and "VNNI for q8 prompt" in info:
        return "vnni"
    return "vector"


def ours(model, threads, tokens, steps, *flags):
    r = subprocess.run([str(REPO / "run"), str(model), "--tokens", ",".join(map(str, tokens)), "-n", str(steps),
                        "-t", "0", "--ids", "-T", str(threads), *KV_FLAGS, *flags], capture_output=True, text=True, check=True)
    m = re.search(r"prompt: \d+ tokens, ([\d.]+) tok/s \| generated: (\d+) tokens, ([\d.]+) tok/s", r.stderr)
    if not m:
        raise SystemExit(f"error: no stats line from ./run {model}: {r.stderr[-300:]}")
    return float(m.group(1)), int(m.group(2)), float(m.group(3))


def measure(model, threads, prompt, decode, vocab, reps, context=0):
    ours(model, threads, [1, 2, 3, 4], 2)  # warm-up: page cache, thread pool
    ids = [1] + [2 + (i * 7919) % (vocab - 2) for i in range(prompt - 1)]
    prefill_paired = paired_reps(lambda: ours(model, threads, ids, 1)[0], "fma", threads, reps)
    flags = []
    if context:  # decode after a context: its state (KV cache and all) saved once, loaded by every rep
        state = WORK / "context.state"
        ctx_ids = [1] + [2 + (i * 7919) % (vocab - 2) for i in range(context - 1)]
        flags = ["--ctx", str(context + decode + 8), "--load-state", str(state)]
        ours(model, threads, ctx_ids, 0, "--ctx", str(context + decode + 8), "--save-state", str(state))
    def decode_rate():
        _, gen, rate = ours(model, threads, [1], decode + 1, *flags)
        return rate * (gen - 1) / gen  # gen sampled tokens in that time, gen - 1 forward passes
    paired = paired_reps(decode_rate, "bandwidth", threads, reps)
    if context:
        state.unlink()
    return prefill_paired, paired


def paired_reps(rep, ceiling, threads, reps):
    """reps runs of rep() (a rate), each between two short probes of the ceiling: [(rate, higher probe beside it)]"""
    paired, before = [], probe(ceiling, threads)
    for _ in range(reps):
        rate = rep()
        after = probe(ceiling, threads)
        paired.append((rate, max(before, after)))
        before = after
    return paired


def closest(paired):
    """the (rate, probe) rep that came nearest its probe"""
    return max(paired, key=lambda p: p[0] / p[1])


def probe(name, threads):
    """a short reading of a ceiling taken beside each rep: read bandwidth in GB/s (1 GiB, best of 3 passes, 0.2-2 s)
    or the FMA peak in GFLOP/s (3 passes of 50 ms, ~0.4 s). This host's bandwidth moves by 2x and more from one minute to the
    next, its FMA peak by ~20%, so a rep is judged against its own minutes. (A 512 MiB buffer read 150 GB/s now and
    then on the Zen 5 VM, 128 MiB up to 500: some cache; 1 GiB did not.)"""
    args = ["--mb", "1024", "--reps", "3"] if name == "bandwidth" else ["--ms", "50", "--reps", "3"]
    out = subprocess.run([str(REPO / "bench" / name), str(threads), *args], capture_output=True, text=True,
                         check=True).stdout
    return float(re.search(r"read_GB_s=([\d.]+)" if name == "bandwidth" else r"fma_gflops=([\d.]+)", out).group(1))


def tool(name, threads):
    out = subprocess.run([str(REPO / "bench" / name), str(threads)], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out


def bench_line(model, dtype, threads, prompt, prefill, decode, wbytes):
    print(f"BENCH model={model} dtype={dtype} threads={threads} prompt_tokens={prompt} prefill_tok_s={prefill:.1f} "
          f"decode_tok_s={decode:.2f} weight_bytes={wbytes}", flush=True)


def main():
    global created_s
    t_start = time.time()
    args = sys.argv[1:]
    threads = os.cpu_count() or 1
    sizes, dtypes, only = list(SIZES), list(DTYPES), []
    shapes = {s: REPO / d for s, (d, _, _) in SIZES.items()}
    prompt_override = decode_override = None
    l2c_dir, l2c_sizes, l2c_prompt = None, ["340M"], 64
    reps, create_only, context = 3, False, 0
    while args:
        a = args.pop(0)
        if a == "--threads":
            threads = int(args.pop(0))
        elif a == "--sizes":
            sizes = args.pop(0).split(",")
        elif a == "--shapes":
            s, d = args.pop(0).split("=", 1)
            shapes[s] = Path(d).resolve()
        elif a == "--prompt":
            prompt_override = int(args.pop(0))
        elif a == "--decode":
            decode_override = int(args.pop(0))
        elif a == "--context":
            context = int(args.pop(0))
        elif a == "--kv-dtype":
            KV_FLAGS[:] = ["--kv-dtype", args.pop(0)]
        elif a == "--create-only":
            create_only = True
        elif a == "--reps":
            reps = int(args.pop(0))
            if reps < 1:
                raise SystemExit("error: --reps must be at least 1")
        elif a == "--dtypes":
            dtypes = args.pop(0).split(",")
        elif a == "--llama2c":
            l2c_dir = Path(args.pop(0)).resolve()
        elif a == "--llama2c-sizes":
            l2c_sizes = args.pop(0).split(",")
        elif a == "--llama2c-prompt":
            l2c_prompt = int(args.pop(0))
        elif a in ("-h", "--help"):
            print(__doc__)
            return
        elif a.startswith("-"):
            raise SystemExit(f"error: unknown option {a}\n{__doc__}")
        else:
            only.append(a)
    for s in sizes:
        if s not in shapes:
            raise SystemExit(f"error: unknown size {s} (give its shapes with --shapes {s}=DIR)")
    if l2c_dir:
        llama2c.build(l2c_dir)
    if create_only:  # make the cached models (one-time, slow), measure nothing
        for size in sizes:
            for name in MODELS:
                if (shapes[size] / name).is_dir() and (not only or any(s in name for s in only)):
                    exported(size, shapes[size], name, dtypes)
        log(f"[bench] models ready ({created_s:.0f} s)")
        return

    bw0 = tool("bandwidth", threads)
    peak_line = tool("fma", threads)
    print(bw0, flush=True)
    print(peak_line, flush=True)
    peak = float(re.search(r"fma_gflops=([\d.]+)", peak_line).group(1))

    rows, l2c_rows, side = [], [], {}  # side: our Transformer's decode in turns with llama2.c
    for size in sizes:
        sdir = shapes[size]
        if not sdir.is_dir():
            log(f"[bench] {size}: no shapes in {sdir}: skipped")
            continue
        _, prompt, decode = SIZES.get(size, (None, 128, 16))
        prompt = prompt_override or prompt
        decode = decode_override or decode
        for name in MODELS:
            if only and not any(s in name for s in only):
                continue
            if not (sdir / name).is_dir():
                log(f"[bench] {size}: no {name} in {sdir}: skipped")
                continue
            models = exported(size, sdir, name, dtypes)
            for dtype in dtypes:
                model = models[dtype]
                total, per_token, flops = model_costs(model, prompt, decode, context + 1)  # BOS or the context first
                vocab = table(model)[0]["vocab"]
                pre_paired, paired = measure(model, threads, prompt, decode, vocab, reps, context)
                pre, dec = max(r for r, _ in pre_paired), max(r for r, _ in paired)  # the best reps
                bench_line(f"{name}-{size}{f'-ctx{context}' if context else ''}{f'-kv{KV_FLAGS[1]}' if KV_FLAGS else ''}", dtype, threads, prompt, pre, dec, total)
                rows.append(dict(size=size, name=name, dtype=dtype, prompt=prompt, prefill=pre, pre_paired=pre_paired, decode=dec, paired=paired,
                                 per_token=per_token, flops=flops, kernel=batch_kernel(model, dtype)))
        if l2c_dir and size in l2c_sizes and (sdir / "transformer").is_dir():
            c = llama2c.config_from_shapes(sdir / "transformer")
            progs = {}
            for prog, version, dtype in [("run", 0, "fp32"), ("runq", 2, "q8")]:
                ckpt = WORK / size / f"llama2c-transformer.{dtype}.bin"
                if not ckpt.exists() or ckpt.stat().st_size != llama2c.file_bytes(c, version):
                    t0 = time.time()
                    log(f"[bench] creating {ckpt.name}")
                    ckpt.parent.mkdir(parents=True, exist_ok=True)
                    (llama2c.write_v0 if version == 0 else llama2c.write_v2)(ckpt, c)
                    created_s += time.time() - t0
                llama2c.achieved(l2c_dir, prog, ckpt, threads, 3)  # warm-up
                digits = "".join(str(i % 10) for i in range(l2c_prompt + 16))  # one token per digit
                pre = max(llama2c.achieved(l2c_dir, prog, ckpt, threads, l2c_prompt, digits) for _ in range(reps))
                progs[prog] = (version, dtype, ckpt, pre)
            # decode in turns: each rep runs llama2.c's run and runq and then our Transformer in
            # each dtype, so that the ratios compare the same minutes of a shared host (its
            # bandwidth moves by several GB/s within one bench); the best of the reps of each
            ours_t = exported(size, sdir, "transformer", dtypes)
            turns = {}
            for _ in range(reps):
                for prog, (_, _, ckpt, _) in progs.items():
                    turns[prog] = max(turns.get(prog, 0), llama2c.achieved(l2c_dir, prog, ckpt, threads, decode + 1))
                for dtype in dtypes:
                    _, gen, rate = ours(ours_t[dtype], threads, [1], decode + 1)
                    turns[dtype] = max(turns.get(dtype, 0), rate * (gen - 1) / gen)
            for prog, (version, dtype, _, pre) in progs.items():
                bench_line(f"llama2c-{prog}-{size}", dtype, threads, l2c_prompt, pre, turns[prog],
                           llama2c.weight_bytes(c, version))
                kv = kv_bytes_read(state_and_kv_bytes(ours_t[dtypes[0]])[1], 1, decode)  # its fp32 cache is ours
                l2c_rows.append(dict(size=size, prog=prog, dtype=dtype, prefill=pre, decode=turns[prog],
                                     per_token=llama2c.read_bytes_per_token(c, version) + kv))
            for dtype in dtypes:
                print(f"TURNS model=transformer-{size} dtype={dtype} decode_tok_s={turns[dtype]:.2f} "
                      f"(in turns with llama2.c)", flush=True)
                side[size, dtype] = turns[dtype]

    bw1 = tool("bandwidth", threads)
    print(bw1, flush=True)
    gbs = max(float(re.search(r"read_GB_s=([\d.]+)", b).group(1)) for b in (bw0, bw1))
    print(f"ROOFLINE read_GB_s={gbs:.2f} (best of the two measurements) fma_gflops={peak:.1f}")
    for r in rows:
        roof = gbs * 1e9 / r["per_token"]
        gflops = r["prefill"] * r["flops"] / 1e9
        r["roof_frac"], r["peak_frac"] = r["decode"] / roof, gflops / peak
        # each rep against the higher of the probes just before and just after it; the rep that came closest
        rate, probe_gbs = closest(r["paired"])
        r["paired_frac"], r["paired_gbs"] = rate * r["per_token"] / (probe_gbs * 1e9), probe_gbs
        pre_rate, probe_gflops = closest(r["pre_paired"])
        r["pre_paired_frac"], r["pre_paired_gflops"] = pre_rate * r["flops"] / 1e9 / probe_gflops, probe_gflops
        print(f"ROOFLINE model={r['name']}-{r['size']}{f'-ctx{context}' if context else ''}{f'-kv{KV_FLAGS[1]}' if KV_FLAGS else ''} dtype={r['dtype']} decode_tok_s={r['decode']:.2f} "
              f"read_bytes_per_token={r['per_token']} roofline_tok_s={roof:.2f} decode_fraction={r['roof_frac']:.2f} "
              f"paired_decode_fraction={r['paired_frac']:.2f} (rep {rate:.2f} tok/s, probes {probe_gbs:.1f} GB/s) "
              f"prefill_gflop_s={gflops:.1f} prefill_fraction_of_fma_peak={r['peak_frac']:.3f} "
              f"paired_prefill_fraction={r['pre_paired_frac']:.3f} (rep {pre_rate:.1f} tok/s, probes {probe_gflops:.0f} GFLOP/s) "
              f"prefill_kernel={r['kernel']}")
    for r in l2c_rows:
        roof = gbs * 1e9 / r["per_token"]
        print(f"ROOFLINE model=llama2c-{r['prog']}-{r['size']} dtype={r['dtype']} decode_tok_s={r['decode']:.2f} "
              f"read_bytes_per_token={r['per_token']} roofline_tok_s={roof:.2f} decode_fraction={r['decode'] / roof:.2f}"
              f" achieved_GB_s={r['decode'] * r['per_token'] / 1e9:.1f}")

    def summary(key, value, detail):
        target = TARGETS.get(key)
        met = "" if target is None else f" target={target} met={'yes' if value >= target else 'no'}"
        print(f"SUMMARY {key}={value:.3f}{met} ({detail})")

    for size in sizes:
        ref = {r["dtype"]: r for r in l2c_rows if r["size"] == size}
        mine = {r["dtype"]: r for r in rows if r["size"] == size and r["name"] == "transformer"}
        if "fp32" in ref:
            base = ref["fp32"]["decode"]
            for dtype in ["q8", "bf16", "fp32"]:
                if (size, dtype) in side:
                    summary(f"{dtype}_vs_llama2c_fp32", side[size, dtype] / base,
                            f"{size} Transformer decode in turns: ours {dtype} {side[size, dtype]:.2f} tok/s, "
                            f"llama2.c run fp32 {base:.2f} tok/s")
        if "q8" in ref and (size, "q8") in side:
            summary("q8_vs_llama2c_runq", side[size, "q8"] / ref["q8"]["decode"],
                    f"{size} Transformer decode in turns: ours q8 {side[size, 'q8']:.2f} tok/s, "
                    f"llama2.c runq {ref['q8']['decode']:.2f} tok/s")
        srows = [r for r in rows if r["size"] == size]
        if srows:
            worst = min(srows, key=lambda r: r["roof_frac"])
            best = max(srows, key=lambda r: r["roof_frac"])
            summary("decode_roofline", worst["roof_frac"],
                    f"{size}, lowest: {worst['name']} {worst['dtype']}; highest {best['roof_frac']:.2f}: "
                    f"{best['name']} {best['dtype']}; bandwidth {gbs:.1f} GB/s")
            worst = min(srows, key=lambda r: r["paired_frac"])
            best = max(srows, key=lambda r: r["paired_frac"])
            summary("decode_roofline_paired", worst["paired_frac"],
                    f"{size}, each row's closest rep against the bandwidth probed beside it; lowest: {worst['name']} "
                    f"{worst['dtype']} ({worst['paired_gbs']:.1f} GB/s); highest {best['paired_frac']:.2f}: "
                    f"{best['name']} {best['dtype']}")
        if size == "340M" and "fp32" in mine:
            r = mine["fp32"]
            summary("prefill_fma_peak", r["peak_frac"],
                    f"340M Transformer fp32, {r['prompt']}-token prompt: {r['prefill']:.1f} tok/s x "
                    f"{r['flops'] / 1e9:.3f} GFLOP/token = {r['prefill'] * r['flops'] / 1e9:.1f} GFLOP/s of "
                    f"{peak:.1f} peak")
            summary("prefill_fma_peak_paired", r["pre_paired_frac"],
                    f"340M Transformer fp32, the closest of its {len(r['pre_paired'])} prompt reps against the FMA peak "
                    f"probed beside it ({r['pre_paired_gflops']:.0f} GFLOP/s)")
    total = time.time() - t_start
    print(f"BENCH_TIME total_s={total:.0f} model_creation_s={created_s:.0f} measuring_s={total - created_s:.0f}")


if __name__ == "__main__":
    main()
