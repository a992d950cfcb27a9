"""Random-weight checkpoints in karpathy/llama2.c's two formats, and running its binaries.

llama2.c (https://github.com/karpathy/llama2.c) is not part of this repository: get it
outside the repo (git clone https://github.com/karpathy/llama2.c /some/dir) and pass that
directory to `bench/bench.py --llama2c DIR`; its `run.c` (fp32) and `runq.c` (int8) are built
there as `run_openmp` and `runq_openmp` with `gcc -Ofast -fopenmp -march=native` (own names: a
`make run` there builds `run` without OpenMP, one thread, which once went into a comparison). This file only writes files in
its formats, with numpy, as its export.py would:

- version 0 ("legacy", read by run.c): a header of 7 int32 (dim, hidden_dim, n_layers,
  n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier is
  not shared with the embedding), then fp32: token embedding [V, D], attention rmsnorm
  [L, D], wq [L, D, D], wk [L, kv, D], wv [L, kv, D], wo [L, D, D], ffn rmsnorm [L, D],
  w1 [L, H, D], w2 [L, D, H], w3 [L, H, D], final rmsnorm [D], two unused RoPE tables
  [seq_len * head_size / 2] each, then the classifier [V, D] (when not shared);
- version 2 (read by runq.c, export.py's version2_export): a 256-byte header (uint32 magic
  "ak42", int32 version 2, the 7 int32 with a positive vocab_size, uint8 shared_classifier,
  int32 group_size, zeros), the rmsnorm weights in fp32 (attention [L, D], ffn [L, D],
  final [D]), then each matrix in Q8_0 (int8 values, then one fp32 scale per group of 64
  values): embedding, wq of every layer, wk..., wv..., wo..., w1..., w2..., w3..., classifier.

Weights: normal(0, 0.02), norms 1, and the classifier's row 1 (BOS) zero: llama2.c stops
generating at BOS, and with a zero row that logit is 0, below the largest of 32000 random
logits, so greedy decoding never stops early. Both files of a seed hold the same weights
(the int8 one quantized).
"""
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np

GROUP = 64
MAGIC = 0x616B3432  # "ak42"


def config_from_shapes(shapes_dir):
    """llama2.c's config for a Transformer recorded by tests/make_paper_shapes.py."""
    cfg = __import__("json").loads((Path(shapes_dir) / "config.json").read_text())
    shapes = __import__("json").loads((Path(shapes_dir) / "shapes.json").read_text())["shapes"]
    if cfg["model_type"] != "transformer":
        raise ValueError(f"{shapes_dir}: llama2.c runs only a Transformer, not {cfg['model_type']}")
    D = cfg["hidden_size"]
    heads = cfg["num_heads"]
    kv_dim = shapes["model.layers.0.attn.k_proj.weight"][0]
    if cfg.get("qkv_bias") or cfg.get("window_size") or cfg.get("qk_norm") or cfg.get("tie_word_embeddings"):
        raise ValueError(f"{shapes_dir}: has features llama2.c lacks (qkv bias, window, qk_norm, tied embeddings)")
    return dict(dim=D, hidden_dim=shapes["model.layers.0.mlp.gate_proj.weight"][0], n_layers=cfg["num_hidden_layers"],
                n_heads=heads, n_kv_heads=kv_dim // (D // heads), vocab_size=cfg["vocab_size"],
                seq_len=cfg.get("max_position_embeddings") or 2048)


def _tensors(c, seed):
    """(name, array) in version-0 order, one layer's matrix at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    D, H, L, V = c["dim"], c["hidden_dim"], c["n_layers"], c["vocab_size"]
    kv = D * c["n_kv_heads"] // c["n_heads"]

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    yield "tok_embeddings", rand(V, D)
    for name, shape in [("wq", (D, D)), ("wk", (kv, D)), ("wv", (kv, D)), ("wo", (D, D)),
                        ("w1", (H, D)), ("w2", (D, H)), ("w3", (H, D))]:
        for layer in range(L):
            yield f"{name}.{layer}", rand(*shape)
    cls = rand(V, D)
    cls[1] = 0  # BOS: see the module docstring
    yield "output", cls


def write_v0(path, c, seed=0):
    """fp32 legacy format (llama2.c run.c), streamed a matrix at a time; returns the bytes of weights."""
    D, L = c["dim"], c["n_layers"]
    head_size = D // c["n_heads"]
    ones = np.ones(L * D, np.float32).tobytes()
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("7i", D, c["hidden_dim"], L, c["n_heads"], c["n_kv_heads"], -c["vocab_size"], c["seq_len"]))
        for name, w in _tensors(c, seed):
            if name == "w1.0":
                f.write(ones)  # rms_ffn_weight, between wo and w1
            elif name == "output":
                f.write(np.ones(D, np.float32).tobytes())  # rms_final_weight
                f.write(np.zeros(c["seq_len"] * head_size, np.float32).tobytes())  # freq_cis_real + _imag
            f.write(w.tobytes())
            if name == "tok_embeddings":
                f.write(ones)  # rms_att_weight
    os.replace(tmp, path)
    return weight_bytes(c, 0)


def quantize_q80(w):
    """llama2.c export.py quantize_q80: symmetric int8 per group of 64; a zero group gets scale 0."""
    g = w.reshape(-1, GROUP).astype(np.float32)
    scale = np.abs(g).max(axis=1) / np.float32(127.0)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.round(g / safe[:, None]).astype(np.int8)
    return q, scale.astype(np.float32)


def write_v2(path, c, seed=0):
    """int8 version-2 format (llama2.c runq.c); returns the bytes of weights written."""
    D, L = c["dim"], c["n_layers"]
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("I", MAGIC))
        f.write(struct.pack("i", 2))
        f.write(struct.pack("7i", D, c["hidden_dim"], L, c["n_heads"], c["n_kv_heads"], c["vocab_size"], c["seq_len"]))
        f.write(struct.pack("B", 0))  # the classifier is not shared
        f.write(struct.pack("i", GROUP))
        f.write(b"\0" * (256 - f.tell()))
        f.write(np.ones(2 * L * D + D, np.float32).tobytes())  # rms_att, rms_ffn, rms_final
        for _, w in _tensors(c, seed):
            q, s = quantize_q80(w)
            f.write(q.tobytes())
            f.write(s.tobytes())
    os.replace(tmp, path)
    return weight_bytes(c, 2)


def n_matrix_params(c):
    D, H, L, V = c["dim"], c["hidden_dim"], c["n_layers"], c["vocab_size"]
    kv = D * c["n_kv_heads"] // c["n_heads"]
    return 2 * V * D + L * (2 * D * D + 2 * kv * D + 3 * H * D)


def weight_bytes(c, version):
    """Bytes of weights in the file (matrices + norms; not the header, not the unused RoPE tables)."""
    norms = 4 * (2 * c["n_layers"] * c["dim"] + c["dim"])
    n = n_matrix_params(c)
    return norms + (4 * n if version == 0 else n + 4 * (n // GROUP))


def file_bytes(c, version):
    """Exact size of the file each writer produces (llama2.c's reader maps exactly this much)."""
    if version == 0:
        return 28 + weight_bytes(c, 0) + 4 * c["seq_len"] * (c["dim"] // c["n_heads"])
    return 256 + weight_bytes(c, 2)


def read_bytes_per_token(c, version):
    """Weight bytes one decode step reads: all but the embedding table, of which it reads one row
    (runq.c dequantizes its int8 embedding to fp32 at load and then reads a row of that)."""
    V, D = c["vocab_size"], c["dim"]
    emb = 4 * V * D if version == 0 else V * D + 4 * (V * D // GROUP)
    return weight_bytes(c, version) - emb


def build(llama2c_dir):
    """Build llama2.c's run and runq with OpenMP in its own directory (outside this repo) as
    run_openmp and runq_openmp, if missing or older than their source."""
    d = Path(llama2c_dir)
    for prog in ["run", "runq"]:
        src, out = d / f"{prog}.c", d / f"{prog}_openmp"
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["gcc", "-Ofast", "-fopenmp", "-march=native", src.name, "-lm", "-o", out.name], cwd=d, check=True)
    return d


def achieved(llama2c_dir, prog, checkpoint, threads, steps, prompt=""):
    """llama2.c's own "achieved tok/s": steps - 1 forward passes after the first, timed by it."""
    d = Path(llama2c_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([str(d / f"{prog}_openmp"), str(checkpoint), "-z", str(d / "tokenizer.bin"), "-t", "0", "-n", str(steps),
                        "-i", prompt], capture_output=True, text=True, env=env, check=True)
    m = re.search(r"achieved tok/s: ([\d.]+)", r.stderr)
    if not m:
        raise RuntimeError(f"{prog}: no 'achieved tok/s' line in its output: {r.stderr[-500:]}")
    return float(m.group(1))
