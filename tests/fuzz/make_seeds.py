#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus/<harness>/).

Models: tiny valid weight files (dim 8, vocab 16) for every layer kind and the
features the header can switch on, written with export.py's own writer, plus a few
truncated copies. Tokenizers: small hand-made valid tokenizer files (all 256 byte
tokens, a few pieces, merges and the three special tokens). Text: a few strings.
Run from anywhere: python3 tests/fuzz/make_seeds.py"""
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
import export as ex  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def model(path, kinds, flags=0, conv=4, dtype="fp32", tie=0, fmap=0, qkv_bias=0, window=0, lb=False, seed=0,
          nq=2, nk=2, nv=2, dk=4, dv=4, heads=2, kv_heads=1, hd=4, D=8, V=16, I=16):
    rng = np.random.default_rng(seed)
    c = dict(dim=D, n_layers=len(kinds), vocab=V, hidden_dim=I, max_pos=64, tie=tie, norm_eps=1e-6,
             out_norm_eps=1e-5 if "hgrn2" in kinds else 1e-6, flags=flags | (ex.F_LOWER_BOUND if lb else 0),
             conv_size=conv, feature_map=fmap, lin_q_heads=nq, lin_k_heads=nk, lin_v_heads=nv, lin_head_k_dim=dk,
             lin_head_v_dim=dv, lin_v_dim=dv, clamp_min=float("-inf"), gate_low_rank=2, gate_normalizer=16.0,
             attn_heads=heads, attn_kv_heads=kv_heads, attn_head_dim=hd, attn_qkv_bias=qkv_bias, attn_window=window,
             rope_theta=10000.0, bos_id=1, eos_id=2, model_type=kinds[0])
    t = [("embeddings", (V, D), True)]
    if lb:
        t.append(("lower_bounds", (len(kinds), D), False))
    for i, k in enumerate(kinds):
        t.append((f"layers.{i}.attn_norm", (D,), False))
        ts = ex.attention_tensors(i, c) if k == "attention" else ex.linear_tensors(k, i, c)
        for _, ours, shape, matrix in ts:
            if len(shape) == 3:
                shape = (shape[0], shape[2])
            t.append((ours, shape, matrix))
        t.append((f"layers.{i}.mlp_norm", (D,), False))
        t += [(f"layers.{i}.mlp.gate_proj", (I, D), True), (f"layers.{i}.mlp.up_proj", (I, D), True),
              (f"layers.{i}.mlp.down_proj", (D, I), True)]
    t.append(("norm", (D,), False))
    if not tie:
        t.append(("lm_head", (V, D), True))
    tensors = [(n, (rng.standard_normal(s) * 0.5).astype(np.float32), m) for n, s, m in t]
    ex.write_model(path, c, kinds, tensors, dtype, progress=False)


def models():
    d = os.path.join(CORPUS, "fuzz_model_header")
    os.makedirs(d, exist_ok=True)
    C = ex.F_SHORT_CONV
    specs = {
        "transformer": dict(kinds=["attention"] * 2),
        "transformer_swa_bias_tied_fp16": dict(kinds=["attention"], window=2, qkv_bias=1, tie=1, dtype="fp16"),
        "hgrn_conv_lb": dict(kinds=["hgrn", "hgrn"], flags=C, dv=8, lb=True),
        "hgrn2_conv": dict(kinds=["hgrn2", "attention"], flags=C, nk=2, dk=4, conv=3),
        "gla_conv_gate_bf16": dict(kinds=["gla"], flags=C | ex.F_OUTPUT_GATE, nk=1, fmap=1, dtype="bf16"),
        "retnet_gate": dict(kinds=["retnet", "attention"], flags=ex.F_OUTPUT_GATE, nk=1, dv=8),
        "delta_net": dict(kinds=["delta_net"], flags=C | ex.F_BETA | ex.F_QK_L2 | ex.F_OUTPUT_GATE, fmap=1),
        "delta_net_sum": dict(kinds=["delta_net"], flags=ex.F_QK_SUM, fmap=2),
        "gated_deltanet_gva": dict(kinds=["gated_deltanet", "attention"], nv=4,
                                   flags=C | ex.F_BETA | ex.F_QK_L2 | ex.F_OUTPUT_GATE | ex.F_NEG_EIGVAL),
        "gated_deltanet_q8": dict(kinds=["gated_deltanet"], flags=ex.F_BETA | ex.F_QK_L2, D=64, V=4, I=64,
                                  nq=1, nv=1, dk=4, dv=4, dtype="q8"),
    }
    for name, kw in specs.items():
        model(os.path.join(d, name + ".bin"), **kw)
    # truncated and header-only copies
    data = open(os.path.join(d, "transformer.bin"), "rb").read()
    for n in (256, 512, len(data) // 2, len(data) - 1):
        open(os.path.join(d, f"transformer_trunc{n}.bin"), "wb").write(data[:n])


def tokenizer_bytes(pieces, merges, specials=("<unk>", "<s>", "</s>"), max_len=16):
    """vocab: specials, then the 256 byte tokens, then the normal pieces (str, ' ' for U+2581)"""
    toks = [(s.encode(), 2) for s in specials] + [(bytes([b]), 1) for b in range(256)]
    toks += [(p.encode(), 0) for p in pieces]
    ids = {t: i for i, (t, k) in enumerate(toks) if k == 0}
    out = b"HLAT" + struct.pack("<7I", 1, len(toks), len(merges), 1, 2, 0, max_len)
    for data, kind in toks:
        out += struct.pack("<IB", len(data), kind) + data
    for l, r in merges:
        out += struct.pack("<3I", ids[l.encode()], ids[r.encode()], ids[(l + r).encode()])
    return out


def tokenizers():
    d = os.path.join(CORPUS, "fuzz_tokenizer_load")
    os.makedirs(d, exist_ok=True)
    pieces = [" ", "a", "b", "c", "h", "e", "l", "o", "ab", " a", "he", "ll", "hell", "hello", " hello", "é", "é!"]
    pieces.remove("é!")
    merges = [("a", "b"), (" ", "a"), ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (" ", "hello")]
    full = tokenizer_bytes(pieces, merges)
    open(os.path.join(d, "small.bin"), "wb").write(full)
    open(os.path.join(d, "bytes_only.bin"), "wb").write(tokenizer_bytes([], []))
    open(os.path.join(d, "no_space_piece.bin"), "wb").write(tokenizer_bytes(["a", "b", "ab"], [("a", "b")]))
    open(os.path.join(d, "long_specials.bin"), "wb").write(
        tokenizer_bytes(["x"], [], specials=("<unk>", "<s>", "</s>", "<|im_start|>", "<|im")))
    for n in (31, 32, 40, len(full) - 12, len(full) - 1):
        open(os.path.join(d, f"small_trunc{n}.bin"), "wb").write(full[:n])
    # the real tokenizer's first 4 KiB (header + the start of its vocab)
    real = os.path.join(ROOT, "tokenizer.bin")
    if os.path.exists(real):
        open(os.path.join(d, "real_head4k.bin"), "wb").write(open(real, "rb").read()[:4096])


def texts():
    d = os.path.join(CORPUS, "fuzz_tokenizer_encode")
    os.makedirs(d, exist_ok=True)
    samples = {
        "ascii": b"The capital of France is Paris.",
        "lead_space": b"  hello world\n\tTabs and\r\nnewlines  ",
        "shakespeare": b"ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
        "specials": b"<s>Hello</s><unk> <s><s>x</s",
        "utf8": "naïve café — 日本語 ☃ 🎉 ▁x ∑".encode(),
        "invalid_utf8": b"\xff\xfe\xc3(\xe2\x82\xf0\x9f\x98abc\x80\xed\xa0\x80",
        "nul": b"a\x00b\x00\x00",
        "empty": b"",
        "digits": b"1234567890 3.14159 -42",
        "code": b"int main(void) { return 0; } // <s>\n",
    }
    for k, v in samples.items():
        open(os.path.join(d, k), "wb").write(v)
    d = os.path.join(CORPUS, "fuzz_prompt_args")
    os.makedirs(d, exist_ok=True)
    # first byte: which parser (see fuzz_prompt_args.c), then the string
    samples = {
        "list": b"\x001,415,2936", "list_spaces": b"\x00 1 , 2 ,3  ", "list_neg": b"\x00-1,+2,2147483647,-2147483648",
        "list_big": b"\x009999999999999999999,1", "list_bad": b"\x001,,2", "list_trailing": b"\x001,2,",
        "int": b"\x01" + b"256", "int_range": b"\x02" + b"-5", "int_hex": b"\x03" + b"0x10",
        "float": b"\x04" + b"0.9", "float_exp": b"\x05" + b"1e-3", "float_nan": b"\x06" + b"nan",
        "float_inf": b"\x04" + b"inf", "float_hex": b"\x05" + b"0x1p-2",
    }
    for k, v in samples.items():
        open(os.path.join(d, k), "wb").write(v)


if __name__ == "__main__":
    models()
    tokenizers()
    texts()
