"""bench/llama2c.py writes checkpoints llama2.c's run.c and runq.c can read.

llama2.c itself is not in this repository, so these readers mirror its loaders'
pointer arithmetic (run.c memory_map_weights, runq.c read_checkpoint +
init_quantized_tensors): every tensor must sit where they look for it, the files must end
exactly where they stop reading, and the int8 file must hold the fp32 file's weights.
"""
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import llama2c  # noqa: E402

C = dict(dim=128, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, seq_len=16)


def read_v0(path):
    """run.c read_checkpoint + memory_map_weights."""
    buf = Path(path).read_bytes()
    D, H, L, nh, nkv, V, S = struct.unpack("7i", buf[:28])
    shared = V > 0
    V = abs(V)
    hs = D // nh
    f = np.frombuffer(buf, np.float32, offset=28)
    p, w = 0, {}

    def take(name, n, shape):
        nonlocal p
        w[name] = f[p:p + n].reshape(shape)
        p += n

    take("tok", V * D, (V, D))
    take("rms_att", L * D, (L, D))
    take("wq", L * D * nh * hs, (L, D, D))
    take("wk", L * D * nkv * hs, (L, nkv * hs, D))
    take("wv", L * D * nkv * hs, (L, nkv * hs, D))
    take("wo", L * nh * hs * D, (L, D, D))
    take("rms_ffn", L * D, (L, D))
    take("w1", L * D * H, (L, H, D))
    take("w2", L * H * D, (L, D, H))
    take("w3", L * D * H, (L, H, D))
    take("rms_final", D, (D,))
    p += S * hs // 2 * 2  # the unused RoPE tables
    if not shared:
        take("wcls", V * D, (V, D))
    return (D, H, L, nh, nkv, V, S), shared, w, 28 + 4 * p, len(buf)


def read_v2(path):
    """runq.c read_checkpoint + memory_map_weights, dequantized."""
    buf = Path(path).read_bytes()
    magic, version = struct.unpack("Ii", buf[:8])
    D, H, L, nh, nkv, V, S = struct.unpack("7i", buf[8:36])
    shared, gs = struct.unpack("<Bi", buf[36:41])
    hs = D // nh
    p, w = 256, {}

    def floats(n):
        nonlocal p
        a = np.frombuffer(buf, np.float32, count=n, offset=p)
        p += 4 * n
        return a

    w["rms_att"], w["rms_ffn"], w["rms_final"] = floats(L * D), floats(L * D), floats(D)

    def quant(name, n, size, shape):
        nonlocal p
        out = []
        for _ in range(n):
            q = np.frombuffer(buf, np.int8, count=size, offset=p).astype(np.float32)
            p += size
            s = floats(size // gs)
            out.append((q.reshape(-1, gs) * s[:, None]).reshape(shape))
        w[name] = np.stack(out) if n > 1 else out[0]

    quant("tok", 1, V * D, (V, D))
    quant("wq", L, D * nh * hs, (D, D))
    quant("wk", L, D * nkv * hs, (nkv * hs, D))
    quant("wv", L, D * nkv * hs, (nkv * hs, D))
    quant("wo", L, nh * hs * D, (D, D))
    quant("w1", L, D * H, (H, D))
    quant("w2", L, H * D, (D, H))
    quant("w3", L, D * H, (H, D))
    if not shared:
        quant("wcls", 1, D * V, (V, D))
    return (magic, version, gs), (D, H, L, nh, nkv, V, S), shared, w, p, len(buf)


def test_llama2c_formats_round_trip(tmp_path):
    llama2c.write_v0(tmp_path / "m.bin", C, seed=3)
    llama2c.write_v2(tmp_path / "q.bin", C, seed=3)
    dims0, shared0, w0, end0, size0 = read_v0(tmp_path / "m.bin")
    head, dims2, shared2, w2, end2, size2 = read_v2(tmp_path / "q.bin")
    want = tuple(C[k] for k in ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"])
    assert dims0 == want and dims2 == want
    assert head == (0x616B3432, 2, 64)
    assert not shared0 and not shared2
    # the readers stop exactly at the end of each file, whose size the bench predicts
    assert end0 == size0 == llama2c.file_bytes(C, 0)
    assert end2 == size2 == llama2c.file_bytes(C, 2)
    for k in ["rms_att", "rms_ffn", "rms_final"]:
        assert np.all(w0[k] == 1) and np.all(w2[k].ravel() == 1)
    # the same weights in both files, the int8 ones within half a quantization step
    for k in ["tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls"]:
        a, b = w0[k], w2[k]
        assert a.shape == b.shape, k
        step = np.abs(a.reshape(-1, 64)).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(a.reshape(-1, 64) - b.reshape(-1, 64)) <= step / 2 * 1.001 + 1e-9), k
        assert 0.015 < a.std() < 0.025, k  # normal(0, 0.02), not zeros or garbage
    # the classifier's BOS row is zero (greedy decoding never emits BOS, so llama2.c never stops early)
    assert np.all(w0["wcls"][1] == 0) and np.all(w2["wcls"][1] == 0)
    assert np.any(w0["wcls"][0] != 0) and np.any(w0["wcls"][2] != 0)
    # different layers hold different weights
    assert not np.array_equal(w0["wq"][0], w0["wq"][1])


def test_paper_transformer_config():
    c = llama2c.config_from_shapes(Path(__file__).resolve().parent / "paper_shapes" / "transformer")
    assert c == dict(dim=1024, hidden_dim=2816, n_layers=24, n_heads=16, n_kv_heads=16, vocab_size=32000,
                     seq_len=2048)
    # fla's parameter count of the 340M Transformer: the same matrices plus 49 norms
    assert llama2c.n_matrix_params(c) + (2 * 24 + 1) * 1024 == 373867520
