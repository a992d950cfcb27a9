#!/usr/bin/env python3
"""export.py: a Hugging Face fla checkpoint directory -> one hla.c weight file.

    python3 export.py HF_DIR OUT.bin [--dtype fp32|fp16|bf16|q8] [--check]
    python3 export.py --tokenizer tokenizer.json tokenizer.bin

Reads config.json (fla model_type, the hybrid `attn` spec) and model.safetensors or a
sharded model.safetensors.index.json (fp32/fp16/bf16), checks every tensor's name and
shape against what the config implies, and writes the flat, memory-mappable file that
run.c reads (format: README.md, "Weight file format"). Only numpy is needed: the
safetensors format (8-byte header length, JSON header, raw data) is read directly.
Anything the engine cannot run exactly is refused with one line naming the key.
"""
import json
import math
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    raise SystemExit("error: export.py needs numpy (pip install numpy)")

MAGIC = b"HLAM"
VERSION = 1
HEADER_BYTES = 256
ENTRY_BYTES = 128
NAME_BYTES = 64
ALIGN = 64
Q8_GROUP = 64

DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2, "q8": 3}
# layer kinds, as stored in the per-layer table
KINDS = {"attention": 0, "hgrn": 1, "hgrn2": 2, "gla": 3, "retnet": 4, "delta_net": 5, "gated_deltanet": 6}
# elementwise maps on q/k (GLA/RetNet feature_map, DeltaNet qk_activation)
FEATURE_MAPS = {None: 0, "identity": 0, "silu": 1, "swish": 1, "relu": 2, "elu": 3, "sigmoid": 4}
# flags
F_SHORT_CONV, F_LOWER_BOUND, F_OUTPUT_GATE, F_BETA, F_NEG_EIGVAL, F_QK_L2, F_QK_SUM = (1 << i for i in range(7))


class ExportError(Exception):
    pass


def fail(where, msg):
    raise ExportError(f"{where}: {msg}")


# ----------------------------------------------------------------------------
# safetensors reading (the documented format; no torch)

ST_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2), "F64": (np.float64, 8)}


class SafeTensors:
    """All tensors of one checkpoint (one file or shards), read lazily via np.memmap."""

    def __init__(self, hf_dir):
        self.where = {}  # name -> (path, dtype, shape, start, end)
        single = os.path.join(hf_dir, "model.safetensors")
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            idx = load_json(index)
            wm = idx.get("weight_map") if isinstance(idx, dict) else None
            if not isinstance(wm, dict) or not wm:
                fail(index, "no weight_map")
            shards = sorted(set(wm.values()))
            for s in shards:
                if not isinstance(s, str) or os.path.basename(s) != s:
                    fail(index, f"bad shard name {s!r}")
                path = os.path.join(hf_dir, s)
                if not os.path.exists(path):
                    fail(index, f"names shard {s} which is missing")
                self._read_header(path)
            for name, s in wm.items():
                if name not in self.where or self.where[name][0] != os.path.join(hf_dir, s):
                    fail(index, f"tensor {name} is not in shard {s}")
        elif os.path.exists(single):
            self._read_header(single)
        else:
            fail(hf_dir, "no model.safetensors or model.safetensors.index.json")

    def _read_header(self, path):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                fail(path, "truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or 8 + n > size:
                fail(path, f"safetensors header length {n} does not fit the file ({size} bytes)")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                fail(path, f"safetensors header is not valid JSON ({e.__class__.__name__})")
        if not isinstance(header, dict):
            fail(path, "safetensors header is not a JSON object")
        data_bytes = size - 8 - n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
                fail(path, f"tensor {name}: malformed header entry")
            dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if dt not in ST_DTYPES:
                fail(path, f"tensor {name}: dtype {dt} not supported (need F32, F16 or BF16)")
            if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                    or not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) for o in offs)):
                fail(path, f"tensor {name}: malformed shape or data_offsets")
            start, end = offs
            if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * ST_DTYPES[dt][1]:
                fail(path, f"tensor {name}: data_offsets {offs} do not match shape {shape} {dt} "
                           f"and the file's {data_bytes} data bytes")
            if name in self.where:
                fail(path, f"tensor {name} appears twice")
            self.where[name] = (path, dt, tuple(shape), 8 + n + start, 8 + n + end)

    def names(self):
        return set(self.where)

    def shape(self, name):
        return self.where[name][2]

    def get(self, name):
        """The tensor as float32 numpy array."""
        path, dt, shape, start, end = self.where[name]
        npdt, _ = ST_DTYPES[dt]
        count = math.prod(shape)
        a = np.memmap(path, dtype=npdt, mode="r", offset=start, shape=(count,)) if count else np.zeros(0, npdt)
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32).reshape(shape)


def load_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        fail(path, "missing")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(path, f"not valid JSON ({e.__class__.__name__}: {e})")
    except OSError as e:
        fail(path, f"cannot read ({e.strerror})")


# ----------------------------------------------------------------------------
# config.json -> header fields

def cfg_get(cfg, key, default, types, where):
    v = cfg.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) and bool not in types:
        fail(where, f"config key {key} = {v!r} has the wrong type")
    if not isinstance(v, types):
        fail(where, f"config key {key} = {v!r} has the wrong type")
    return v


def require(cond, where, key, value, why):
    if not cond:
        fail(where, f"config key {key} = {value!r}: {why}")


def parse_attn_spec(cfg, n_layers, where):
    """The hybrid `attn` entry: None, a dict, or (fla >= 0.5.2) a list of dicts."""
    attn = cfg.get("attn")
    if attn is None:
        return [], None
    specs = [attn] if isinstance(attn, dict) else attn
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        fail(where, "config key attn must be null, a dict or a list of dicts")
    layers, settings = [], None
    for s in specs:
        ls = s.get("layers")
        if not isinstance(ls, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ls):
            fail(where, f"config key attn.layers = {ls!r} must be a list of layer indices")
        for i in ls:
            require(0 <= i < n_layers and i not in layers, where, "attn.layers", ls,
                    f"indices must be unique and in [0, {n_layers})")
        layers += ls
        heads = s.get("num_heads")
        require(isinstance(heads, int) and heads > 0, where, "attn.num_heads", heads, "must be a positive int")
        kv = s.get("num_kv_heads") or heads
        require(isinstance(kv, int) and kv > 0 and heads % kv == 0, where, "attn.num_kv_heads", kv,
                "must divide num_heads")
        window = s.get("window_size")
        require(window is None or (isinstance(window, int) and window > 0), where, "attn.window_size", window,
                "must be null or a positive int")
        theta = s.get("rope_theta", 10000.0)
        theta = 10000.0 if theta is None else theta
        require(isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0, where,
                "attn.rope_theta", theta, "must be positive")
        bias = s.get("qkv_bias", False)
        require(isinstance(bias, bool), where, "attn.qkv_bias", bias, "must be a bool")
        # an `attn.qk_norm` key is ignored: fla's hybrid blocks never pass it to Attention
        this = dict(heads=heads, kv_heads=kv, window=window or 0, theta=float(theta), bias=bias)
        if settings is not None and this != settings:
            fail(where, "config key attn: specs with different settings per layer are not supported")
        settings = this
    return sorted(layers), settings


def check_common(cfg, where):
    for key in ("attnres_block_size",):
        require(cfg.get(key) is None, where, key, cfg.get(key), "Attention Residuals are not supported")
    require(not cfg.get("norm_first", False), where, "norm_first", cfg.get("norm_first"),
            "the legacy norm_first block is not supported")
    act = cfg.get("hidden_act", "swish")
    require(act in ("swish", "silu"), where, "hidden_act", act, "only swish/silu is supported")
    ea = cfg.get("elementwise_affine", True)
    require(ea in (True, None), where, "elementwise_affine", ea, "norms without weights are not supported")


def fmap(where, key, v):
    require(v in FEATURE_MAPS, where, key, v, f"supported: {sorted(k for k in FEATURE_MAPS if k)}")
    return FEATURE_MAPS[v]


# ----------------------------------------------------------------------------
# the tensor table: per layer kind, fla's parameter names -> our names and shapes

def linear_tensors(kind, i, c):
    """(fla name suffix, our name, shape, is_matrix) for layer i's linear mixer, from config c."""
    p = f"model.layers.{i}.attn."
    H, K = c["dim"], c["conv_size"]
    conv = c["flags"] & F_SHORT_CONV
    t = []

    def add(name, shape, matrix=False, ours=None):
        t.append((p + name, f"layers.{i}.attn.{ours or name}", shape, matrix))

    if kind == "hgrn":
        I = c["lin_v_dim"]
        add("i_proj.weight", (I, H), True)
        add("f_proj.weight", (I, H), True)
        add("g_proj.weight", (I, H), True)
        if conv:
            add("i_conv1d.weight", (I, 1, K))
            add("f_conv1d.weight", (I, 1, K))
        add("g_norm.weight", (I,))
        add("o_proj.weight", (H, I), True)
    elif kind == "hgrn2":
        F, dk, dv, nh = c["lin_k_heads"] * c["lin_head_k_dim"], c["lin_head_k_dim"], c["lin_head_v_dim"], c["lin_k_heads"]
        add("q_proj.weight", (F, H), True)
        add("f_proj.weight", (F, H), True)
        add("i_proj.weight", (nh * dv, H), True)
        if conv:
            add("q_conv1d.weight", (F, 1, K))
            add("f_conv1d.weight", (F, 1, K))
            add("i_conv1d.weight", (nh * dv, 1, K))
        add("g_norm.weight", (nh * dv,))
        add("o_proj.weight", (H, nh * dv), True)
    elif kind in ("gla", "retnet"):
        nq, nk, dk, dv = c["lin_q_heads"], c["lin_k_heads"], c["lin_head_k_dim"], c["lin_head_v_dim"]
        add("q_proj.weight", (nq * dk, H), True)
        add("k_proj.weight", (nk * dk, H), True)
        add("v_proj.weight", (nk * dv, H), True)
        if c["flags"] & F_OUTPUT_GATE:
            add("g_proj.weight", (nq * dv, H), True)
        if kind == "gla":
            if conv:
                add("q_conv1d.weight", (nq * dk, 1, K))
                add("k_conv1d.weight", (nk * dk, 1, K))
                add("v_conv1d.weight", (nk * dv, 1, K))
            add("gk_proj.0.weight", (c["gate_low_rank"], H), True)
            add("gk_proj.1.weight", (nk * dk, c["gate_low_rank"]), True)
            add("gk_proj.1.bias", (nk * dk,))
        add("g_norm.weight", (dv,))
        add("o_proj.weight", (H, nq * dv), True)
    elif kind in ("delta_net", "gated_deltanet"):
        nq, nv, dk, dv = c["lin_q_heads"], c["lin_v_heads"], c["lin_head_k_dim"], c["lin_head_v_dim"]
        add("q_proj.weight", (nq * dk, H), True)
        add("k_proj.weight", (nq * dk, H), True)
        add("v_proj.weight", (nv * dv, H), True)
        if kind == "gated_deltanet":
            add("a_proj.weight", (nv, H), True)
        if c["flags"] & F_BETA:
            add("b_proj.weight", (nv, H), True)
        if kind == "gated_deltanet":
            add("A_log", (nv,))
            add("dt_bias", (nv,))
        if conv:
            add("q_conv1d.weight", (nq * dk, 1, K))
            add("k_conv1d.weight", (nq * dk, 1, K))
            add("v_conv1d.weight", (nv * dv, 1, K))
        if c["flags"] & F_OUTPUT_GATE:
            add("g_proj.weight", (nv * dv, H), True)
        add("o_norm.weight", (dv,))
        add("o_proj.weight", (H, nv * dv), True)
    return t


def attention_tensors(i, c):
    p = f"model.layers.{i}.attn."
    H, hd, nq, nkv = c["dim"], c["attn_head_dim"], c["attn_heads"], c["attn_kv_heads"]
    t = [(p + "q_proj.weight", f"layers.{i}.attn.q_proj.weight", (nq * hd, H), True),
         (p + "k_proj.weight", f"layers.{i}.attn.k_proj.weight", (nkv * hd, H), True),
         (p + "v_proj.weight", f"layers.{i}.attn.v_proj.weight", (nkv * hd, H), True)]
    if c["attn_qkv_bias"]:
        t += [(p + "q_proj.bias", f"layers.{i}.attn.q_proj.bias", (nq * hd,), False),
              (p + "k_proj.bias", f"layers.{i}.attn.k_proj.bias", (nkv * hd,), False),
              (p + "v_proj.bias", f"layers.{i}.attn.v_proj.bias", (nkv * hd,), False)]
    t.append((p + "o_proj.weight", f"layers.{i}.attn.o_proj.weight", (H, nq * hd), True))
    return t


# ----------------------------------------------------------------------------
# config -> c (the header fields)

def read_config(hf_dir, st):
    where = os.path.join(hf_dir, "config.json")
    cfg = load_json(where)
    if not isinstance(cfg, dict):
        fail(where, "not a JSON object")
    mt = cfg.get("model_type")
    if mt not in KINDS or mt == "attention":
        if mt != "transformer":
            fail(where, f"config key model_type = {mt!r}: not one of transformer, "
                        "hgrn, hgrn2, gla, retnet, delta_net, gated_deltanet")
    check_common(cfg, where)
    H = cfg_get(cfg, "hidden_size", None, int, where)
    L = cfg_get(cfg, "num_hidden_layers", None, int, where)
    V = cfg_get(cfg, "vocab_size", 32000, int, where)
    for key, v in (("hidden_size", H), ("num_hidden_layers", L), ("vocab_size", V)):
        require(isinstance(v, int) and 0 < v < (1 << 24), where, key, v, "must be a positive int")
    eps = cfg_get(cfg, "norm_eps", 1e-6, (int, float), where)
    require(0 < eps < 1, where, "norm_eps", eps, "must be in (0, 1)")
    c = dict(model_type=mt, dim=H, n_layers=L, vocab=V, norm_eps=float(eps), out_norm_eps=float(eps),
             max_pos=cfg_get(cfg, "max_position_embeddings", 2048, int, where) or 2048,
             tie=bool(cfg.get("tie_word_embeddings", False)), flags=0, conv_size=0, feature_map=0,
             lin_q_heads=0, lin_k_heads=0, lin_v_heads=0, lin_head_k_dim=0, lin_head_v_dim=0, lin_v_dim=0,
             clamp_min=-math.inf, gate_low_rank=0, gate_normalizer=0.0,
             attn_heads=0, attn_kv_heads=0, attn_head_dim=0, attn_qkv_bias=0, attn_window=0, rope_theta=10000.0)
    if mt == "transformer":
        require(not cfg.get("qk_norm", False), where, "qk_norm", cfg.get("qk_norm"), "q/k norms are not supported")
        spec = dict(layers=list(range(L)), num_heads=cfg.get("num_heads", 32), num_kv_heads=cfg.get("num_kv_heads"),
                    qkv_bias=cfg.get("qkv_bias", False), window_size=cfg.get("window_size"),
                    rope_theta=cfg.get("rope_theta", 10000.0))
        attn_layers, a = parse_attn_spec({"attn": spec}, L, where)
    else:
        attn_layers, a = parse_attn_spec(cfg, L, where)
    if a:
        require(H % a["heads"] == 0, where, "attn.num_heads", a["heads"], f"must divide hidden_size {H}")
        c.update(attn_heads=a["heads"], attn_kv_heads=a["kv_heads"], attn_head_dim=H // a["heads"],
                 attn_qkv_bias=int(a["bias"]), attn_window=a["window"], rope_theta=a["theta"])
        require(c["attn_head_dim"] % 2 == 0, where, "attn.num_heads", a["heads"], "head_dim must be even for RoPE")
    kinds = ["attention" if i in attn_layers else mt for i in range(L)]

    conv = bool(cfg.get("use_short_conv", False))
    K = cfg_get(cfg, "conv_size", 4, int, where)
    require(1 <= K <= 64, where, "conv_size", K, "must be in 1..64")

    def heads_dim(total, n, key):
        require(isinstance(n, int) and n > 0 and total % n == 0, where, key, n, f"must divide {total}")
        return total // n

    if mt == "hgrn":
        er = cfg.get("expand_ratio", 1) or 1
        I = int(H * er)
        lb = bool(cfg.get("use_lower_bound", True))
        require(not lb or I == H, where, "expand_ratio", er, "must be 1 with use_lower_bound")
        c.update(lin_v_dim=I, lin_q_heads=1, lin_k_heads=1, lin_v_heads=1, lin_head_k_dim=I, lin_head_v_dim=I,
                 flags=(F_SHORT_CONV if conv else 0) | (F_LOWER_BOUND if lb else 0))
    elif mt == "hgrn2":
        dk = cfg.get("expand_ratio")
        if dk is None:
            nh = cfg.get("num_heads")
            dk = heads_dim(H, nh, "num_heads")
        require(isinstance(dk, int) and dk > 0, where, "expand_ratio", dk, "must be a positive int")
        name = f"model.layers.{kinds.index(mt)}.attn.q_proj.weight" if mt in kinds else None
        F = st.shape(name)[0] if name and name in st.names() else H
        nh = heads_dim(F, dk, "expand_ratio")
        dv = heads_dim(H, nh, "num_heads")
        lb = bool(cfg.get("use_lower_bound", True))
        require(not lb or F == H, where, "expand_ratio", dk, "use_lower_bound needs num_heads*expand_ratio == hidden_size")
        c.update(lin_q_heads=nh, lin_k_heads=nh, lin_v_heads=nh, lin_head_k_dim=dk, lin_head_v_dim=dv,
                 flags=(F_SHORT_CONV if conv else 0) | (F_LOWER_BOUND if lb else 0), out_norm_eps=1e-5)
    elif mt in ("gla", "retnet"):
        nq = cfg.get("num_heads", 4 if mt == "gla" else 8)
        nk = cfg.get("num_kv_heads") or nq
        require(isinstance(nk, int) and isinstance(nq, int) and nk > 0 and nq % nk == 0, where, "num_kv_heads", nk,
                "must divide num_heads")
        ek, ev = cfg.get("expand_k", 0.5 if mt == "gla" else 1.0), cfg.get("expand_v", 1.0 if mt == "gla" else 2.0)
        dk = heads_dim(int(H * ek), nq, "num_heads")
        dv = heads_dim(int(H * ev), nq, "num_heads")
        gate = bool(cfg.get("use_output_gate", True))
        c.update(lin_q_heads=nq, lin_k_heads=nk, lin_v_heads=nk, lin_head_k_dim=dk, lin_head_v_dim=dv,
                 feature_map=fmap(where, "feature_map", cfg.get("feature_map")),
                 flags=(F_OUTPUT_GATE if gate else 0))
        if mt == "gla":
            cm = cfg.get("clamp_min")
            require(cm is None or isinstance(cm, (int, float)), where, "clamp_min", cm, "must be a number or null")
            c.update(clamp_min=-math.inf if cm is None else float(cm), gate_low_rank=16, gate_normalizer=16.0)
            c["flags"] |= F_SHORT_CONV if conv else 0
        # RetNet: fla's block never passes use_short_conv to the layer, so it has no conv.
    elif mt == "delta_net":
        nh = cfg.get("num_heads", 16)
        dk = heads_dim(int(H * cfg.get("expand_k", 1.0)), nh, "num_heads")
        dv = heads_dim(int(H * cfg.get("expand_v", 1.0)), nh, "num_heads")
        qkn = cfg.get("qk_norm", "l2")
        require(qkn in ("l2", "sum"), where, "qk_norm", qkn, "supported: l2, sum")
        act = cfg.get("qk_activation", "silu")
        require(act in ("silu", "relu", "elu", "identity"), where, "qk_activation", act,
                "supported: silu, relu, elu, identity")
        flags = ((F_SHORT_CONV if conv else 0) | (F_OUTPUT_GATE if cfg.get("use_gate", False) else 0)
                 | (F_BETA if cfg.get("use_beta", True) else 0) | (F_QK_L2 if qkn == "l2" else F_QK_SUM)
                 | (F_NEG_EIGVAL if cfg.get("allow_neg_eigval", False) else 0))
        c.update(lin_q_heads=nh, lin_k_heads=nh, lin_v_heads=nh, lin_head_k_dim=dk, lin_head_v_dim=dv,
                 feature_map=FEATURE_MAPS[act], flags=flags)
    elif mt == "gated_deltanet":
        nh = cfg.get("num_heads", 6)
        nv = cfg.get("num_v_heads") or nh
        require(isinstance(nv, int) and isinstance(nh, int) and nh > 0 and nv % nh == 0, where, "num_v_heads", nv,
                "must be a multiple of num_heads")
        dk = cfg_get(cfg, "head_dim", 256, int, where)
        ev = cfg.get("expand_v", 2.0)
        dv = dk * ev
        require(float(dv).is_integer() and dv > 0, where, "expand_v", ev, "head_dim*expand_v must be an integer")
        oga = cfg.get("output_gate_activation", "swish")
        require(oga in ("swish", "silu"), where, "output_gate_activation", oga, "only swish/silu is supported")
        flags = ((F_SHORT_CONV if conv else 0) | (F_OUTPUT_GATE if cfg.get("use_gate", True) else 0) | F_BETA
                 | F_QK_L2 | (F_NEG_EIGVAL if cfg.get("allow_neg_eigval", False) else 0))
        c.update(lin_q_heads=nh, lin_k_heads=nh, lin_v_heads=nv, lin_head_k_dim=dk, lin_head_v_dim=int(dv),
                 feature_map=FEATURE_MAPS["silu"], flags=flags)
    if c["flags"] & F_SHORT_CONV:
        c["conv_size"] = K
    return cfg, c, kinds


# ----------------------------------------------------------------------------
# gather tensors in file order, with the quirks of 2025 checkpoints

def gather(st, c, kinds, where):
    """Returns [(our name, float32 array, is_matrix)] in file order. Checks names and shapes."""
    names = st.names()
    used = set()
    out = []

    def take(fla, ours, shape, matrix):
        if fla not in names:
            fail(where, f"missing tensor {fla}")
        got = st.shape(fla)
        if tuple(got) != tuple(shape):
            fail(where, f"tensor {fla} has shape {list(got)}, expected {list(shape)}")
        used.add(fla)
        out.append((ours, st.get(fla).reshape(shape[0], -1) if len(shape) == 3 else st.get(fla), matrix))

    H, V, L = c["dim"], c["vocab"], c["n_layers"]
    take("model.embeddings.weight", "embeddings", (V, H), True)
    if c["model_type"] in ("hgrn", "hgrn2") and c["flags"] & F_LOWER_BOUND:
        take("model.lower_bounds", "lower_bounds", (L, H), False)
    ffn = None
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}."
        take(p + "attn_norm.weight", f"layers.{i}.attn_norm", (H,), False)
        if kind == "attention":
            ts = attention_tensors(i, c)
        else:
            ts = linear_tensors(kind, i, c)
        for fla, ours, shape, matrix in ts:
            if kind in ("gla", "retnet") and fla.endswith("g_norm.weight") and fla not in names:
                alt = fla.replace("g_norm.weight", "g_norm_swish_gate.weight")  # fuse_norm=True name
                fla = alt if alt in names else fla
            take(fla, ours, shape, matrix)
        take(p + "mlp_norm.weight", f"layers.{i}.mlp_norm", (H,), False)
        gp, up, dp = p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"
        if dp not in names:
            fail(where, f"missing tensor {dp}")
        I = st.shape(dp)[-1]
        ffn = ffn or I
        if I != ffn:
            fail(where, f"tensor {dp}: MLP sizes differ between layers ({I} vs {ffn})")
        if up in names:
            take(gp, f"layers.{i}.mlp.gate_proj", (I, H), True)
            take(up, f"layers.{i}.mlp.up_proj", (I, H), True)
        else:  # fla before 2025-02-09: one gate_proj [2I, H], gate rows first, then up rows
            if gp not in names or tuple(st.shape(gp)) != (2 * I, H):
                fail(where, f"tensor {gp} must be [{I}, {H}] with {up}, or the fused [{2 * I}, {H}]")
            fused = st.get(gp)
            used.add(gp)
            out.append((f"layers.{i}.mlp.gate_proj", fused[:I], True))
            out.append((f"layers.{i}.mlp.up_proj", fused[I:], True))
        take(dp, f"layers.{i}.mlp.down_proj", (H, I), True)
        # leftovers of old fla versions that the math never used
        for unused in ("attn.D", "attn.q_conv1d.weight"):
            if p + unused in names and (unused == "attn.D" and kind == "gated_deltanet"
                                        or unused == "attn.q_conv1d.weight" and kind == "hgrn"):
                used.add(p + unused)
    take("model.norm.weight", "norm", (H,), False)
    if "lm_head.weight" in names:
        take("lm_head.weight", "lm_head", (V, H), True)
        c["tie"] = False
    elif not c["tie"]:
        fail(where, "missing tensor lm_head.weight (and tie_word_embeddings is false)")
    extra = sorted(names - used)
    if extra:
        fail(where, f"unexpected tensor {extra[0]} ({len(extra)} unexpected in all): "
                    "a feature this exporter does not know")
    c["hidden_dim"] = ffn
    return out


# ----------------------------------------------------------------------------
# writing

def encode_tensor(arr, matrix, dtype):
    """-> (dtype code, bytes). Only matrices take the requested dtype; the rest stays fp32."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ExportError("non-finite values")
    if not matrix or dtype == "fp32":
        return DTYPES["fp32"], a.tobytes()
    if dtype == "fp16":
        if np.abs(a).max(initial=0) > 65504:
            raise ExportError("values too large for fp16")
        return DTYPES["fp16"], a.astype(np.float16).tobytes()
    if dtype == "bf16":  # round to nearest even
        u = a.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return DTYPES["bf16"], u.astype(np.uint16).tobytes()
    # q8: int8 with one fp32 scale per group of 64 along each row; data then scales
    rows, cols = a.shape
    if cols % Q8_GROUP:
        return DTYPES["fp32"], a.tobytes()  # cannot group: keep exact
    g = a.reshape(rows, cols // Q8_GROUP, Q8_GROUP)
    scale = np.abs(g).max(axis=2) / 127.0
    q = np.round(g / np.where(scale == 0, 1, scale)[:, :, None]).clip(-127, 127).astype(np.int8)
    return DTYPES["q8"], q.tobytes() + scale.astype(np.float32).tobytes()


HEADER_FIELDS = [  # (name, struct code): the fixed header after magic and version, in order
    ("header_bytes", "I"), ("n_tensors", "I"), ("dim", "i"), ("n_layers", "i"), ("vocab", "i"), ("hidden_dim", "i"),
    ("max_pos", "i"), ("tie", "i"), ("norm_eps", "f"), ("out_norm_eps", "f"),
    ("flags", "i"), ("conv_size", "i"), ("feature_map", "i"),
    ("lin_q_heads", "i"), ("lin_k_heads", "i"), ("lin_v_heads", "i"), ("lin_head_k_dim", "i"), ("lin_head_v_dim", "i"),
    ("clamp_min", "f"), ("gate_low_rank", "i"), ("gate_normalizer", "f"),
    ("attn_heads", "i"), ("attn_kv_heads", "i"), ("attn_head_dim", "i"), ("attn_qkv_bias", "i"), ("attn_window", "i"),
    ("rope_theta", "f"), ("bos_id", "i"), ("eos_id", "i"),
]


def write_model(out_path, c, kinds, tensors, dtype, progress=True):
    n = len(tensors)
    table_off = HEADER_BYTES + ((c["n_layers"] + 7) // 8) * 8
    data_off = table_off + n * ENTRY_BYTES
    data_off = (data_off + ALIGN - 1) // ALIGN * ALIGN
    c = dict(c, header_bytes=data_off, n_tensors=n)
    head = MAGIC + struct.pack("<I", VERSION) + b"".join(
        struct.pack("<" + code, c[name]) for name, code in HEADER_FIELDS)
    head = head.ljust(HEADER_BYTES, b"\0")
    layer_table = bytes(KINDS[k] for k in kinds).ljust(table_off - HEADER_BYTES, b"\0")
    tmp = out_path + ".tmp"
    entries, offset, total = [], data_off, 0
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * data_off)  # header and table are written last, once offsets are known
            for k, (name, arr, matrix) in enumerate(tensors):
                try:
                    code, blob = encode_tensor(arr, matrix, dtype)
                except ExportError as e:
                    raise ExportError(f"{name}: {e}")
                shape = list(arr.shape) + [1] * (4 - arr.ndim)
                entries.append(struct.pack("<64sII4QQQ8x", name.encode(), code, arr.ndim, *shape, offset, len(blob)))
                f.write(blob)
                pad = (-len(blob)) % ALIGN
                f.write(b"\0" * pad)
                offset += len(blob) + pad
                total += len(blob)
                if progress and sys.stderr.isatty():
                    done = (k + 1) / n
                    print(f"\r[{'#' * int(30 * done):<30}] {k + 1}/{n} tensors", end="", file=sys.stderr)
            if progress and sys.stderr.isatty():
                print(file=sys.stderr)
            f.seek(0)
            f.write(head + layer_table + b"".join(entries))
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return offset


def layout_string(kinds, mt):
    attn = [i for i, k in enumerate(kinds) if k == "attention"]
    L = len(kinds)
    if mt == "transformer":
        return f"transformer, {L} layers"
    if not attn:
        return f"{mt}, {L} layers, pure (no full attention)"
    # the paper names a layout by its block size: one full-attention layer per N layers is "N:1"
    ratio = f" ({L // len(attn)}:1)" if L % len(attn) == 0 else ""
    return f"{mt}, {L} layers, full attention at {attn}{ratio}"


def export_model(hf_dir, out_path, dtype, check):
    if not os.path.isdir(hf_dir):
        fail(hf_dir, "not a directory")
    st = SafeTensors(hf_dir)
    cfg, c, kinds = read_config(hf_dir, st)
    tensors = gather(st, c, kinds, hf_dir)
    for key, default in (("bos_token_id", 1), ("eos_token_id", 2)):
        v = cfg.get(key, default)
        c[key.replace("_token", "")] = v if isinstance(v, int) else -1
    n_params = sum(a.size for _, a, _ in tensors)
    print(f"{layout_string(kinds, c['model_type'])}; hidden {c['dim']}, vocab {c['vocab']}, "
          f"{n_params / 1e6:.2f}M parameters", file=sys.stderr)
    try:
        size = write_model(out_path, c, kinds, tensors, dtype)
    except ExportError as e:
        fail(hf_dir, f"tensor {e}")
    print(f"wrote {out_path}: {size / 1e6:.1f} MB, weights {dtype}", file=sys.stderr)
    if check:
        import subprocess
        run = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run")
        r = subprocess.run([run, out_path, "--info"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(out_path, f"--check: ./run could not load it: {r.stderr.strip()}")
        print(f"--check: {out_path} loads in ./run", file=sys.stderr)


# ----------------------------------------------------------------------------
# tokenizer.json -> tokenizer.bin

TOKENIZER_MAGIC = b"HLAT"
TOKENIZER_VERSION = 1
KIND_NORMAL, KIND_BYTE, KIND_SPECIAL = 0, 1, 2
SPACE_MARK = "\u2581"  # SentencePiece's "▁"

# the two serialisations of the same SentencePiece behaviour that we accept
_LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": SPACE_MARK},
    {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}]}


def _fail(path, msg):
    raise SystemExit(f"error: {path}: {msg}")


def _check_pretokenization(path, tj):
    """Accept the old (normalizer Prepend+Replace, no pre-tokenizer) and the new
    (no normalizer, Metaspace) serialisation; both come from the same
    tokenizer.model and run.c implements the SentencePiece behaviour for both."""
    norm, pre = tj.get("normalizer"), tj.get("pre_tokenizer")
    if norm is None and isinstance(pre, dict) and pre.get("type") == "Metaspace":
        if pre.get("replacement") != SPACE_MARK or pre.get("split", False):
            _fail(path, "unsupported Metaspace pre_tokenizer settings")
        if pre.get("prepend_scheme", "always") not in ("first", "always"):
            _fail(path, "unsupported Metaspace prepend_scheme")
        return
    if norm == _LEGACY_NORMALIZER and pre is None:
        return
    _fail(path, "unsupported normalizer/pre_tokenizer (expected SentencePiece-style "
                "Metaspace or Prepend+Replace)")


def _parse_merge(path, m, i):
    if isinstance(m, str):
        parts = m.split(" ")
    elif isinstance(m, list):
        parts = m
    else:
        parts = None
    if not parts or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        _fail(path, f"merge #{i} is malformed: {m!r:.60}")
    return parts[0], parts[1]


def _byte_of(piece):
    """'<0x41>' -> 0x41, anything else -> None"""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def export_tokenizer(json_path, out_path):
    json_path, out_path = str(json_path), str(out_path)
    # --- read and check the JSON ---------------------------------------
    try:
        with open(json_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        _fail(json_path, f"cannot read: {e.strerror or e}")
    try:
        tj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _fail(json_path, f"not valid JSON: {(str(e).splitlines() or ['?'])[0]}")
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        _fail(json_path, "no 'model' object (not a tokenizer.json?)")
    model = tj["model"]
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        _fail(json_path, f"model type {model.get('type')!r} is not BPE")
    if not model.get("byte_fallback", False):
        _fail(json_path, "BPE model without byte_fallback is not supported")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        _fail(json_path, "continuing_subword_prefix/end_of_word_suffix not supported")
    if model.get("dropout"):
        _fail(json_path, "BPE dropout not supported")
    _check_pretokenization(json_path, tj)

    vocab = model.get("vocab")
    merges = model.get("merges")
    if not isinstance(vocab, dict) or not vocab:
        _fail(json_path, "model.vocab missing or empty")
    if not isinstance(merges, list):
        _fail(json_path, "model.merges is not a list")

    # --- id -> piece table, vocab plus added tokens --------------------
    pieces = {}
    for piece, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < (1 << 20):
            _fail(json_path, f"vocab id {i!r} of {piece!r:.40} out of range")
        if i in pieces:
            _fail(json_path, f"vocab id {i} used twice")
        pieces[i] = piece
    special = set()
    added = tj.get("added_tokens") or []
    if not isinstance(added, list):
        _fail(json_path, "added_tokens is not a list")
    for a in added:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str) \
                or not isinstance(a.get("id"), int) or not 0 <= a["id"] < (1 << 20):
            _fail(json_path, f"malformed added token {a!r:.60}")
        i, content = a["id"], a["content"]
        if pieces.get(i, content) != content:
            _fail(json_path, f"added token {content!r} id {i} clashes with vocab")
        if not content:
            _fail(json_path, f"added token id {i} is empty")
        pieces[i] = content
        special.add(i)
    vocab_size = max(pieces) + 1
    if len(pieces) != vocab_size:
        missing = next(i for i in range(vocab_size) if i not in pieces)
        _fail(json_path, f"vocab ids are not contiguous (id {missing} missing)")
    id_of = {p: i for i, p in pieces.items()}

    def special_id(name):
        i = id_of.get(name)
        if i is None:
            _fail(json_path, f"token {name!r} not found")
        return i
    unk_name = model.get("unk_token") or "<unk>"
    bos_id, eos_id, unk_id = special_id("<s>"), special_id("</s>"), special_id(unk_name)

    # --- encode pieces as bytes ----------------------------------------
    blobs, kinds = [], []
    byte_ids = {}
    seen = {}
    for i in range(vocab_size):
        p = pieces[i]
        b = _byte_of(p)
        if i in special:
            kind, data = KIND_SPECIAL, p.encode("utf-8")
        elif b is not None:
            if b in byte_ids:
                _fail(json_path, f"byte token {p} appears twice")
            byte_ids[b] = i
            kind, data = KIND_BYTE, bytes([b])
        else:
            if " " in p:
                _fail(json_path, f"piece {p!r:.40} contains a literal space")
            kind, data = KIND_NORMAL, p.replace(SPACE_MARK, " ").encode("utf-8")
            if not data:
                _fail(json_path, f"piece id {i} is empty")
            if data in seen:
                _fail(json_path, f"pieces {seen[data]} and {i} are identical")
            seen[data] = i
        blobs.append(data)
        kinds.append(kind)
    if len(byte_ids) != 256:
        _fail(json_path, f"byte_fallback needs all 256 <0xXX> tokens, found {len(byte_ids)}")
    max_len = max(len(b) for b in blobs)

    # --- merges, in rank order; as in HF, a repeated pair keeps its last rank
    triples = {}
    for r, m in enumerate(merges):
        a, b = _parse_merge(json_path, m, r)
        ia, ib, im = id_of.get(a), id_of.get(b), id_of.get(a + b)
        if ia is None or ib is None:
            _fail(json_path, f"merge #{r} {a!r:.30} {b!r:.30} references an unknown piece")
        if im is None:
            _fail(json_path, f"merge #{r} result {a + b!r:.40} is not in the vocab")
        if kinds[ia] != KIND_NORMAL or kinds[ib] != KIND_NORMAL or kinds[im] != KIND_NORMAL:
            _fail(json_path, f"merge #{r} {a!r:.30} {b!r:.30} involves a byte or special token")
        triples.pop((ia, ib), None)
        triples[(ia, ib)] = im
    import numpy as np
    merge_arr = np.array([(a, b, m) for (a, b), m in triples.items()],
                         dtype="<u4").reshape(-1, 3)

    # --- write to a temporary file, then rename -------------------------
    out = bytearray()
    out += TOKENIZER_MAGIC
    out += struct.pack("<7I", TOKENIZER_VERSION, vocab_size, len(merge_arr), bos_id, eos_id, unk_id, max_len)
    for data, kind in zip(blobs, kinds):
        out += struct.pack("<IB", len(data), kind)
        out += data
    out += merge_arr.tobytes()
    tmp = out_path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(out)
        os.replace(tmp, out_path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _fail(out_path, f"cannot write: {e.strerror or e}")
    return {"vocab_size": vocab_size, "n_merges": len(merge_arr), "bos": bos_id,
            "eos": eos_id, "unk": unk_id, "max_token_len": max_len}


def main(argv):
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if args[0] == "--tokenizer":
        if len(args) != 3:
            raise SystemExit("error: usage: export.py --tokenizer tokenizer.json tokenizer.bin")
        export_tokenizer(args[1], args[2])
        return 0
    dtype, check, pos = "fp32", False, []
    while args:
        a = args.pop(0)
        if a == "--dtype":
            if not args or args[0] not in DTYPES:
                raise SystemExit(f"error: --dtype must be one of {', '.join(DTYPES)}")
            dtype = args.pop(0)
        elif a == "--check":
            check = True
        elif a.startswith("-"):
            raise SystemExit(f"error: unknown option {a}")
        else:
            pos.append(a)
    if len(pos) != 2:
        raise SystemExit("error: usage: export.py HF_DIR OUT.bin [--dtype fp32|fp16|bf16|q8] [--check]")
    try:
        export_model(pos[0], pos[1], dtype, check)
    except ExportError as e:
        raise SystemExit(f"error: {e}")
    except OSError as e:
        raise SystemExit(f"error: {e.filename or pos[0]}: {e.strerror}")
    except MemoryError:
        raise SystemExit(f"error: {pos[0]}: out of memory")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
