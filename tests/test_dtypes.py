"""Weights exported as fp16 / bf16 / q8 (matrices only; norms, gates, convs stay fp32)
against fla's fp32 logits, with a tolerance stated per type, and the SIMD fast paths
(one token: dots straight from the dtype) against the batched path (rows converted to fp32)."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES, run_tool

# max |logit - fla fp32 logit| on these random O(1)-weight models (logits up to ~4.5)
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1, "q8": 2.5e-1}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", ["gated_deltanet_gva", "gla_gqa_conv_clamp", "transformer"])
def test_weight_dtype_against_fla_fp32(name, dtype, exported, tmp_path):
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    toks = ",".join(map(str, e["tokens_long"]))
    got = {}
    for mode in ([], ["--one-by-one"]):
        out = tmp_path / "l.f32"
        run_tool(exported(name, dtype), "--tokens", toks, "--logits", out, *mode)
        got[bool(mode)] = np.fromfile(out, np.float32).reshape(len(e["tokens_long"]), -1)
    diff = float(np.abs(got[False] - e["logits_long_decode"]).max())
    print(f"{name} {dtype}: max|diff| from fla fp32 {diff:.2e}")
    assert diff <= TOLERANCE[dtype]
    # batched == one token at a time: to fp32 rounding, except that q8 rounds each product's input
    # to int16 per group of 64 (run.c's quantize_x), a step function: where the two paths' x
    # differ by fp32 rounding next to a step, they land on either side of it (measured 2-3e-4)
    assert float(np.abs(got[False] - got[True]).max()) <= (1e-3 if dtype == "q8" else 1e-4)


def test_q8_file_is_about_a_quarter_of_fp32(exported):
    a, b = exported("gated_deltanet_gva", "fp32").stat().st_size, exported("gated_deltanet_gva", "q8").stat().st_size
    assert b < 0.4 * a


@pytest.mark.parametrize("dtype", ["fp32", "q8"])
@pytest.mark.parametrize("name", ["gated_deltanet_gva", "transformer", "hgrn2_pure"])
def test_thread_count_does_not_change_the_logits(name, dtype, exported, tmp_path):
    """Rows, heads and state rows go to whichever thread is free, but each output is computed
    by one thread in one order: -T 1, 2 and 3 give the same bits. (The prompt path's products
    are shared among the threads at these sizes, 80 tokens x 64 wide; one token's are too small
    to share here, so --one-by-one is compared too but runs its products on one thread.)"""
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    toks = ",".join(map(str, e["tokens_long"]))
    for mode in ([], ["--one-by-one"]):
        got = []
        for threads in ("1", "2", "3"):
            out = tmp_path / f"l{threads}.f32"
            run_tool(exported(name, dtype), "--tokens", toks, "--logits", out, "-T", threads, *mode)
            got.append(np.fromfile(out, np.float32))
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2]), f"{name} {dtype} {mode}"
