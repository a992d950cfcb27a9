"""What 2025 checkpoints contain, beyond what fla writes today (spec/checkpoints.md):
each quirk, applied to a fla fixture, must export to exactly the same weight file."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES, export, run_tool


def ckpt(tmp_path, name):
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    (d / "expected.safetensors").unlink()
    return d


def export_bytes(d, tmp_path, *flags):
    out = tmp_path / (d.name + ".bin")
    export(d, out, *flags)
    return out.read_bytes()


def rewrite(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def test_old_fused_mlp_gate_proj_is_split_into_gate_and_up(tmp_path):
    d = ckpt(tmp_path, "gated_deltanet_gva")
    want = export_bytes(d, tmp_path)

    def fuse(t):  # fla before 2025-02-09: one gate_proj [2I, H], gate rows then up rows
        for i in range(2):
            p = f"model.layers.{i}.mlp."
            t[p + "gate_proj.weight"] = np.concatenate([t[p + "gate_proj.weight"], t.pop(p + "up_proj.weight")])
    rewrite(d, fuse)
    assert export_bytes(d, tmp_path) == want


def test_leftover_gated_deltanet_D_is_ignored(tmp_path):
    d = ckpt(tmp_path, "gated_deltanet_gva")
    want = export_bytes(d, tmp_path)
    rewrite(d, lambda t: [t.__setitem__(f"model.layers.{i}.attn.D", np.zeros(2, np.float32)) for i in range(2)])
    assert export_bytes(d, tmp_path) == want


def test_unused_hgrn_q_conv1d_is_ignored(tmp_path):
    d = ckpt(tmp_path, "hgrn_conv")
    want = export_bytes(d, tmp_path)
    rewrite(d, lambda t: [t.__setitem__(f"model.layers.{i}.attn.q_conv1d.weight", np.ones((64, 1, 4), np.float32))
                          for i in range(2)])
    assert export_bytes(d, tmp_path) == want


def test_sharded_checkpoint_with_index(tmp_path):
    d = ckpt(tmp_path, "delta_net_gate_4heads")
    want = export_bytes(d, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: t[k] for k in keys}, str(d / shard))
    wm = {k: s for s, keys in shards.items() for k in keys}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    assert export_bytes(d, tmp_path) == want


def test_fp16_checkpoint_exports_to_fp32_values(tmp_path):
    d = ckpt(tmp_path, "retnet_gqa")
    rewrite(d, lambda t: [t.__setitem__(k, v.astype(np.float16)) for k, v in list(t.items())])
    fp16 = export_bytes(d, tmp_path)
    rewrite(d, lambda t: [t.__setitem__(k, v.astype(np.float32)) for k, v in list(t.items())])
    assert export_bytes(d, tmp_path) == fp16


def test_gla_unfused_norm_name_and_fused_name_are_both_read():
    # fuse_norm=False saves attn.g_norm.weight, the default attn.g_norm_swish_gate.weight
    assert "g_norm.weight" in " ".join(load_file(str(FIXTURES / "gla_relu_nogate_unfused" / "model.safetensors")))
    assert "g_norm_swish_gate" in " ".join(load_file(str(FIXTURES / "gla_gqa_conv_clamp" / "model.safetensors")))


@pytest.mark.parametrize("name,key,value", [
    ("gla_gqa_conv_clamp", "feature_map", "hedgehog"),
    ("gated_deltanet_gva", "output_gate_activation", "sigmoid"),
    ("delta_net_gate_4heads", "qk_activation", "softmax"),
    ("transformer", "qk_norm", True),
])
def test_features_the_engine_cannot_run_are_refused_by_name(tmp_path, name, key, value):
    d = ckpt(tmp_path, name)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    r = export(d, tmp_path / "o.bin", check=False)
    assert r.returncode == 1 and key in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def test_export_prints_kind_layout_and_ratio(tmp_path):
    r = export(FIXTURES / "hgrn2_hybrid_6_1", tmp_path / "o.bin")
    assert "hgrn2, 24 layers, full attention at [5, 11, 17, 23] (6:1)" in r.stderr


def test_info_reports_layers_params_state_and_kv(exported):
    out = run_tool(exported("gated_deltanet_hybrid_6_1"), "--info").stdout.decode()
    assert "NNNNNANNNNNANNNNNANNNNNA" in out
    # 20 GDN layers x 2 heads x 16 x 16 fp32 state; 4 attention layers x 2 (k, v) x 1 kv head x 16 x 4 bytes
    assert f"recurrent state: {20 * 2 * 16 * 16 * 4} bytes" in out
    assert f"kv cache: {4 * 2 * 16 * 4} bytes per token" in out


def test_info_shows_state_shapes_per_kind(exported):
    out = run_tool(exported("gated_deltanet_gva"), "--info").stdout.decode()
    assert "gated_deltanet state per layer: S [4 heads x 16 x 32] fp32, plus 4-tap short-conv caches" in out
    out = run_tool(exported("transformer"), "--info").stdout.decode()
    assert "attention per layer: K and V [tokens x 2 kv heads x 16] fp32" in out
    assert "pure Transformer, same size" in out


def test_export_check_loads_the_written_file(tmp_path):
    r = export(FIXTURES / "hgrn_pure", tmp_path / "o.bin", "--check")
    assert "--check:" in r.stderr and "loads" in r.stderr

