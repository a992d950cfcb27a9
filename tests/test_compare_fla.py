"""compare_fla.py, the checkpoint sanity check against fla. Its argument errors run anywhere; the
comparison itself needs PyTorch, fla and a CUDA GPU (the GPU machine, with fla's source in .fla/),
and is skipped elsewhere: there it must find the fixtures' exports in agreement with fla and must
fail when the export is of another model."""
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO, RUN, assert_clean_error

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
