"""compare_fla.py, the checkpoint sanity check against fla. Its argument errors, and its comparison
fed with fla's outputs stored in the fixtures, run anywhere; the whole tool, fla included, needs
PyTorch, fla and a CUDA GPU (the GPU machine, with fla's source in .fla/) and is skipped elsewhere:
there it must find the fixtures' exports in agreement with fla and must fail when the export is of
another model."""
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES, REPO, RUN, assert_clean_error

sys.path.insert(0, str(REPO))
import compare_fla  # noqa: E402  (imports nothing of fla or torch until main() runs)

TOOL = str(REPO / "compare_fla.py")


def compare(*args):
    return subprocess.run([sys.executable, TOOL] + [str(a) for a in args], capture_output=True, text=True, timeout=900)


def fla_on_gpu():
    probe = ("import os, sys; sys.path.insert(0, os.path.join(%r, '.fla')); sys.path.insert(0, os.path.join(%r, 'tests', 'fla_shim'));"
             "import torch, fla; assert torch.cuda.is_available()") % (str(REPO), str(REPO))
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_help():
    r = compare("--help")
    assert r.returncode == 0 and "CHECKPOINT_DIR MODEL.bin" in r.stdout


@pytest.mark.parametrize("args, mention", [
    ((), "usage"),
    (("/nonexistent", "x.bin"), "/nonexistent"),
    ((FIXTURES / "gated_deltanet_gva", "/nonexistent.bin"), "/nonexistent.bin"),
    ((FIXTURES / "gated_deltanet_gva", RUN, "--tol", "abc"), "abc"),
    ((FIXTURES / "gated_deltanet_gva", RUN, "--bogus", "1"), "--bogus"),
])
def test_bad_arguments(args, mention):
    assert_clean_error(compare(*args), mention)


def stored_fla(name):
    """fla's outputs kept in a fixture: the short prompt, its logits, fla's greedy continuation"""
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    return e["tokens_short"].tolist(), e["logits_short"], e["greedy_ids"].tolist()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "q8"])
def test_export_dtype(dtype, exported):
    assert compare_fla.export_dtype(exported("gated_deltanet_gva", dtype)) == dtype


@pytest.mark.parametrize("name, dtype", [("gated_deltanet_gva", "fp32"), ("retnet_hybrid_6_1", "fp32"),
                                         ("gated_deltanet_gva", "bf16"), ("gated_deltanet_gva", "q8")])
def test_compare_with_stored_fla_outputs(name, dtype, exported, capsys):
    tokens, logits, greedy = stored_fla(name)
    opts = dict(model=str(exported(name, dtype)), run=RUN, device=None, tol=None)
    assert compare_fla.compare(opts, tokens, logits, greedy), capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.count(": ok") == 2 and f"({dtype} weights)" in out


def test_compare_fails_where_it_should(exported, capsys):
    tokens, logits, greedy = stored_fla("gated_deltanet_gva")
    wrong = [(t + 1) % 128 for t in greedy]
    assert not compare_fla.compare(dict(model=str(exported("gated_deltanet_pure")), run=RUN, device=None, tol=None),
                                   tokens, logits, greedy)  # another model's export
    assert "FAIL" in capsys.readouterr().out
    fp32 = dict(model=str(exported("gated_deltanet_gva")), run=RUN, device=None, tol=None)
    assert not compare_fla.compare(fp32, tokens, logits, wrong)  # an fp32 export must continue as fla does
    assert "DIFFERENT" in capsys.readouterr().out
    bf16 = dict(fp32, model=str(exported("gated_deltanet_gva", "bf16")))
    assert compare_fla.compare(bf16, tokens, logits, wrong)  # rounded weights: reported, not failed
    assert "reported, not failed" in capsys.readouterr().out
    assert not compare_fla.compare(dict(bf16, tol=1e-9), tokens, logits, greedy)  # --tol wins over the default


def test_adapt_state_reads_old_checkpoints():
    import numpy as np
    I, H = 6, 4
    expected = {"model.layers.0.mlp.gate_proj.weight": (I, H), "model.layers.0.mlp.up_proj.weight": (I, H),
                "model.layers.0.attn.g_norm.weight": (H,), "model.layers.1.attn.g_norm_swish_gate.weight": (H,)}
    fused = np.arange(2 * I * H, dtype=np.float32).reshape(2 * I, H)
    old = {"model.layers.0.mlp.gate_proj.weight": fused,  # fla before 2025-02-09: gate rows, then up rows
           "model.layers.0.attn.g_norm_swish_gate.weight": np.ones(H),  # the other fuse_norm name, both ways
           "model.layers.1.attn.g_norm.weight": np.full(H, 2.0), "model.layers.0.attn.D": np.zeros(1)}
    new = compare_fla.adapt_state(old, expected)
    assert (new["model.layers.0.mlp.gate_proj.weight"] == fused[:I]).all()
    assert (new["model.layers.0.mlp.up_proj.weight"] == fused[I:]).all()
    assert (new["model.layers.0.attn.g_norm.weight"] == 1).all() and (new["model.layers.1.attn.g_norm_swish_gate.weight"] == 2).all()
    assert "model.layers.0.attn.D" in new  # (left for load_state_dict to report as unexpected)
    current = {k: np.zeros(v) for k, v in expected.items()}
    assert all(compare_fla.adapt_state(current, expected)[k].shape == v for k, v in expected.items())  # unchanged


def test_adapt_state_refuses_other_shapes():
    r = subprocess.run([sys.executable, "-c", "import sys, numpy as np; sys.path.insert(0, %r); import compare_fla; "
                        "compare_fla.adapt_state({'w': np.zeros((3, 4))}, {'w': (4, 4)})" % str(REPO)],
                       capture_output=True, text=True)
    assert_clean_error(r, "(3, 4) in the checkpoint, (4, 4) in fla's model")


needs_fla = pytest.mark.skipif(not fla_on_gpu(), reason="needs PyTorch, fla (.fla/) and a CUDA GPU")


@needs_fla
@pytest.mark.parametrize("name", ["gated_deltanet_gva", "transformer_swa_bias_tied", "retnet_hybrid_3_1"])
def test_agrees_with_fla(name, exported):
    r = compare(FIXTURES / name, exported(name), "--tokens", "1,17,42,99,3,64,5,77,120,8,33,2,90", "-n", "12", "--run", RUN)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": ok") == 2 and "identical" in r.stdout


@needs_fla
def test_fails_on_another_model(exported):
    r = compare(FIXTURES / "gated_deltanet_gva", exported("gated_deltanet_pure"), "--tokens", "1,17,42,99,3", "-n", "4", "--run", RUN)
    print(r.stdout, r.stderr)
    assert r.returncode == 1 and "FAIL" in r.stdout
