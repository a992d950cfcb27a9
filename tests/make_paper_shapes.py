"""Record fla's own parameter names, shapes and counts at the paper's 340M (or 1.3B) shape.

Runs where fla's source is importable (the GPU machine, like make_fixtures.py; no GPU work
is done: models are built on the meta device). For each kind, pure and 6:1 hybrid, at
hidden 1024, 24 layers, vocab 32000, it writes tests/paper_shapes/<case>/config.json and
shapes.json ({name: shape}, fla's state dict) plus fla's parameter count.
tests/paper_shape_check.py then fills those shapes with random numbers, exports them with
export.py and checks ./run --info against fla's count (make paper-shapes).

--size 1.3B: hidden 2048, 24 layers, vocab 32000 (spec/checkpoints.md); GatedDeltaNet with
8 heads of 256 as in the released 1.3B checkpoints; the other kinds keep fla's 340M
example head settings (their 1.3B ones are not published; RetNet 8 heads, as fla caps
head_k_dim at 256), attention 16 heads of 128.
These feed the benchmarks (make bench, make bench-cuda), not the 340M --info check.

Usage: python3 tests/make_paper_shapes.py OUTDIR [--size 340M|1.3B]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fla_shim"))
sys.path.insert(0, os.path.join(ROOT, ".fla"))

import torch  # noqa: E402

from make_fixtures import CLASSES  # noqa: E402  (fla's config and model classes)

BASE = dict(hidden_size=1024, num_hidden_layers=24, vocab_size=32000, max_position_embeddings=2048,
            fuse_cross_entropy=False)
# fla's own example 340M configs (spec/checkpoints.md); GDN as in the released checkpoints
KIND = {
    "hgrn": dict(expand_ratio=1),
    "hgrn2": dict(expand_ratio=128),
    "gla": dict(num_heads=4, expand_k=0.5, expand_v=1.0),
    "retnet": dict(num_heads=4, expand_k=1.0, expand_v=2.0),
    "delta_net": dict(num_heads=8),
    "gated_deltanet": dict(num_heads=4, head_dim=256, expand_v=1.0),
}
ATTN = dict(layers=[5, 11, 17, 23], num_heads=16, num_kv_heads=16, qkv_bias=False, window_size=None,
            rope_theta=10000.0)


def main():
    out = sys.argv[1]
    size = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--size" else "340M"
    base, kinds = dict(BASE), dict(KIND)
    if size == "1.3B":
        base["hidden_size"] = 2048
        kinds["gated_deltanet"] = dict(num_heads=8, head_dim=256, expand_v=1.0)
        kinds["retnet"] = dict(num_heads=8, expand_k=1.0, expand_v=2.0)  # fla allows head_k_dim <= 256
    elif size != "340M":
        sys.exit(f"unknown size {size}")
    cases = [("transformer", "transformer", dict(num_heads=16))]
    for k, kw in kinds.items():
        cases.append((f"{k}_pure", k, kw))
        cases.append((f"{k}_hybrid_6_1", k, dict(kw, attn=ATTN)))
    for name, mt, kw in cases:
        cfg_cls, model_cls = CLASSES[mt]
        config = cfg_cls(**base, **kw)
        with torch.device("meta"):
            model = model_cls(config)
        sd = model.state_dict()
        n_params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        config.save_pretrained(d)
        with open(os.path.join(d, "shapes.json"), "w") as f:
            json.dump(dict(n_params=n_params, shapes={k: list(v.shape) for k, v in sd.items()}), f)
        print(f"{name}: {n_params} parameters, {len(sd)} tensors", flush=True)


if __name__ == "__main__":
    main()
