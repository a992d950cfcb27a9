"""Weights exported as fp16 / bf16 / q8 (matrices only; norms, gates, convs stay fp32)
against fla's fp32 logits, with a tolerance stated per type, and the SIMD fast paths
(one token: dots straight from the dtype) against the batched path (rows converted to fp32)."""
import os

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
    # batched == one token at a time: to fp32 rounding, except that q8 and bf16 round each
    # product's input (q8: to int16 per group of 64, run.c's quantize_x; bf16: to bf16, as the
    # weights), a step function: where the two paths' x differ by fp32 rounding next to a step,
    # they land on either side of it. q8's small steps do that at most tokens (measured 2-3e-4);
    # bf16's are 2^-8 of a value, so rarer and larger (up to 6.8e-3, at 1-3 tokens of 80), and
    # its other tokens agree to fp32 rounding (median 2.4e-7)
    gap = np.abs(got[False] - got[True]).max(axis=1)
    assert float(gap.max()) <= {"q8": 1e-3, "bf16": 1.5e-2}.get(dtype, 1e-4)
    if dtype == "bf16":
        assert float(np.median(gap)) <= 1e-5


def test_q8_file_is_about_a_quarter_of_fp32(exported):
    a, b = exported("gated_deltanet_gva", "fp32").stat().st_size, exported("gated_deltanet_gva", "q8").stat().st_size
    assert b < 0.4 * a


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "q8"])
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


# the batch kernels that stand in for the fp32 tile where the CPU has them: (env turning them on,
# what `./run --info` says when they are in use)
FAST_BATCHES = {"amx": ({"HLA_AMX": "1"}, "AMX tiles"), "avx512_bf16": ({"HLA_AMX": "0", "HLA_BF16_TILE": "1"}, "AVX512-BF16 for bf16"),
                "avx512_vnni": ({"HLA_AMX": "0", "HLA_Q8_TILE": "1"}, "VNNI for q8 prompt")}


@pytest.mark.parametrize("kernel,dtype", [("amx", "bf16"), ("amx", "q8"), ("avx512_bf16", "bf16"), ("avx512_vnni", "q8")])
@pytest.mark.parametrize("name", ["gated_deltanet_gva", "gla_gqa_conv_clamp", "transformer", "hgrn2_conv_4heads"])
def test_fast_batch_kernels_against_the_fp32_tile(name, kernel, dtype, exported, tmp_path):
    """Where the build and the CPU have AMX (./run --info says so), a bf16 or q8 prompt batch goes
    through its tiles (run.c's amx_rows_times_tokens, amx_q8_rows_times_tokens); where AMX is not
    in use, a bf16 batch goes through bf16_rows_times_tokens (VDPBF16PS) where the CPU has
    AVX512-BF16, and a q8 batch through q8_rows_times_tokens (VPDPWSSD) where it has VNNI;
    HLA_AMX=0 HLA_BF16_TILE=0 HLA_Q8_TILE=0 takes the fp32 tile (rows converted) instead. bf16: all
    multiply x rounded to bf16 by the bf16 weights, each product exact, so the logits differ by the
    order of the fp32 sums, and where that moves an x across a bf16 rounding step downstream (at a
    few tokens, as between the batched and one-token paths above). q8: the tiles sum each group's
    integer products exactly, as one token's kernel does, the fp32 tile multiplies the same rounded
    x in fp32; where x's int16 rounding flips, they part by up to ~3.5e-4. Token counts: 80 (groups
    of 32 or 16 and a part), row counts down to 4 (a padded last chunk)."""
    model = exported(name, dtype)
    env, says = FAST_BATCHES[kernel]
    if says not in run_tool(model, "--info", env=dict(os.environ, **env)).stdout.decode():
        pytest.skip(f"no {kernel} batch kernel here (build or CPU)")
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    toks = ",".join(map(str, e["tokens_long"]))
    got = {}
    for which, run_env in (("fast", env), ("fp32 tile", {"HLA_AMX": "0", "HLA_BF16_TILE": "0", "HLA_Q8_TILE": "0"})):
        out = tmp_path / "l.f32"
        run_tool(model, "--tokens", toks, "--logits", out, env=dict(os.environ, **run_env))
        got[which] = np.fromfile(out, np.float32).reshape(len(e["tokens_long"]), -1)
    gap = np.abs(got["fast"] - got["fp32 tile"]).max(axis=1)
    print(f"{name} {dtype}: {kernel} vs the fp32 tile per token max {gap.max():.2e} median {np.median(gap):.2e}")
    if dtype == "bf16":
        assert float(np.median(gap)) <= 1e-5 and float(gap.max()) <= 1.5e-2
    else:
        assert float(gap.max()) <= 1e-3
    assert float(np.abs(got["fast"] - e["logits_long_decode"]).max()) <= TOLERANCE[dtype]
