"""The CUDA backend (run_cuda.cu, `make cuda`).

Everywhere (CI has no GPU): `make test` compiles and links a CUDA build (./run_cuda_build);
its CPU path must give the CPU build's logits exactly, and --device cuda must fail cleanly
where no GPU is visible; the CPU-only build must refuse --device cuda cleanly.

On a machine with a GPU (HLA_RUN pointing at a `make cuda` build, as tests/cuda_device.sh
does on the lent H100): every fla fixture through --device cuda, prompt path and
--one-by-one, against fla with the CPU's bounds; greedy continuations equal to fla's; each
weight dtype against fla's fp32 logits with a tolerance stated per dtype; and CPU against
CUDA logits on random models of the paper's 340M shape.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import REPO, RUN, assert_clean_error, export, fixture_names, run_tool
from paper_shape_check import random_checkpoint
from test_fla_fixtures import TOL, expected, tolerance

CUDA_BUILD = REPO / "run_cuda_build"
HAS_GPU = shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
gpu = pytest.mark.skipif(not HAS_GPU, reason="no GPU on this machine (run tests/cuda_device.sh on one)")

# max |logit - fla fp32 logit| with --device cuda per weight dtype (the CPU's bounds, test_dtypes.py);
# the prompt path multiplies fp16 weights with activations rounded to fp16 on the tensor cores, the
# one-token path with fp32 activations; bf16 weights take x rounded to bf16 on both paths, as on the
# CPU, and q8 weights x rounded to int16 per group of 64 (the prompt's int8 tensor-core products sum
# each group exactly, as the one-token GEMV does), so those two differ where x's rounding flips
# (bf16 measured 2.4e-7 .. 6.8e-3 on the H200, as on the CPU): how far apart the two may be
PROMPT_VS_DECODE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1.5e-2, "q8": 1e-3}
DTYPE_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1, "q8": 2.5e-1}


def logits(binary, model, tokens, tmp_path, *flags, env=None):
    out = tmp_path / "logits.f32"
    r = subprocess.run([str(binary), str(model), "--tokens", ",".join(map(str, tokens)), "--logits", str(out), *flags],
                       capture_output=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1)


# ---------------------------------------------------------------------------- everywhere

@pytest.mark.skipif(not CUDA_BUILD.exists(), reason="make test builds ./run_cuda_build first")
def test_cuda_build_cpu_path_equals_cpu_build(exported, tmp_path):
    e = expected("gated_deltanet_hybrid_6_1")
    a = logits(RUN, exported("gated_deltanet_hybrid_6_1"), e["tokens_long"], tmp_path)
    b = logits(CUDA_BUILD, exported("gated_deltanet_hybrid_6_1"), e["tokens_long"], tmp_path)
    assert np.array_equal(a, b)


@pytest.mark.skipif(not CUDA_BUILD.exists(), reason="make test builds ./run_cuda_build first")
def test_device_cuda_without_visible_gpu_fails_cleanly(exported):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([str(CUDA_BUILD), str(exported("transformer")), "--tokens", "1,2,3", "-n", "2", "--device", "cuda"],
                       capture_output=True, env=env, timeout=60)
    assert_clean_error(r, "no CUDA device")


@pytest.mark.skipif(HAS_GPU, reason="on the GPU machine HLA_RUN is a CUDA build")
def test_cpu_build_refuses_device_cuda(exported):
    r = run_tool(exported("transformer"), "--tokens", "1,2,3", "-n", "2", "--device", "cuda", check=False)
    assert_clean_error(r, "make cuda")


def test_unknown_device_is_a_clean_error(exported):
    r = run_tool(exported("transformer"), "--tokens", "1,2,3", "--device", "tpu", check=False)
    assert_clean_error(r, "tpu")


# ---------------------------------------------------------------------------- on a GPU

@gpu
@pytest.mark.parametrize("name", fixture_names())
@pytest.mark.parametrize("path", ["batched", "one_by_one"])
def test_cuda_matches_fla(name, path, exported, tmp_path):
    e = expected(name)
    flags = ["--device", "cuda"] + (["--one-by-one"] if path == "one_by_one" else [])
    ours = logits(RUN, exported(name), e["tokens_long"], tmp_path, *flags)
    fla_gap = float(np.abs(e["logits_long_recurrent"] - e["logits_long_decode"]).max())
    tol = tolerance(name) + (fla_gap if tolerance(name) > TOL else 0.0)
    for ref in ("logits_long_decode", "logits_long_recurrent"):
        diff = float(np.abs(ours - e[ref]).max())
        print(f"cuda {name} {path} vs fla {ref}: max|diff| {diff:.2e} (bound {tol:.1e})")
        assert diff <= tol, (ref, diff, tol)
    short = logits(RUN, exported(name), e["tokens_short"], tmp_path, *flags)
    diff = float(np.abs(short - e["logits_short"]).max())
    print(f"cuda {name} {path} short prompt: max|diff| {diff:.2e}")
    assert diff <= tolerance(name)


@gpu
@pytest.mark.parametrize("name", fixture_names())
def test_cuda_greedy_continuation_equals_fla(name, exported):
    e = expected(name)
    r = run_tool(exported(name), "--tokens", ",".join(map(str, e["tokens_short"])), "-t", "0",
                 "-n", len(e["greedy_ids"]), "--ids", "--quiet", "--device", "cuda")
    assert [int(x) for x in r.stdout.split()] == e["greedy_ids"].tolist()


@gpu
@pytest.mark.parametrize("dtype", list(DTYPE_TOL))
@pytest.mark.parametrize("name", ["gated_deltanet_gva", "gla_gqa_conv_clamp", "transformer", "hgrn2_pure", "retnet_pure"])
def test_cuda_weight_dtype_against_fla_fp32(name, dtype, exported, tmp_path):
    e = expected(name)
    got = {}
    for mode in ([], ["--one-by-one"]):
        got[bool(mode)] = logits(RUN, exported(name, dtype), e["tokens_long"], tmp_path, "--device", "cuda", *mode)
    for one_by_one, lg in got.items():
        diff = float(np.abs(lg - e["logits_long_decode"]).max())
        print(f"cuda {name} {dtype} {'one-by-one' if one_by_one else 'prompt'}: max|diff| from fla fp32 {diff:.2e}")
        assert diff <= DTYPE_TOL[dtype]
    gap = float(np.abs(got[False] - got[True]).max())
    print(f"cuda {name} {dtype}: prompt vs one-by-one {gap:.2e}")
    assert gap <= PROMPT_VS_DECODE[dtype]


@gpu
def test_cuda_q8_prompt_widened_to_bf16(exported, tmp_path):
    """HLA_CUDA_Q8_MMA=0: a q8 prompt's products as GPUs before compute capability 8.0 run them
    (the matrix widened to bf16, x rounded to bf16, cuBLAS): within the q8 bound of fla, and of
    the one-token path by what x's bf16 rounding costs (1.9e-2 .. 4.6e-2 measured on the H200)."""
    name = "gated_deltanet_gva"
    e = expected(name)
    widened = logits(RUN, exported(name, "q8"), e["tokens_long"], tmp_path, "--device", "cuda",
                     env=dict(os.environ, HLA_CUDA_Q8_MMA="0"))
    one_by_one = logits(RUN, exported(name, "q8"), e["tokens_long"], tmp_path, "--device", "cuda", "--one-by-one")
    gap = float(np.abs(widened - one_by_one).max())
    print(f"cuda {name} q8 widened prompt vs one-by-one {gap:.2e}")
    assert float(np.abs(widened - e["logits_long_decode"]).max()) <= DTYPE_TOL["q8"]
    assert 0 < gap <= 6e-2  # (0: the variable did not reach the path)


@gpu
def test_cuda_fp16_prompt_past_fp16_range(tmp_path):
    """fp16 weights: a prompt's GEMM inputs are rounded to fp16 for the tensor cores, whose range
    ends at 65504. The Transformer fixture with its first MLP's gate and up scaled 400x (its
    down product's input ~1e5): the GPU's prompt scales such an input by a power of two first
    (f16_rescale_kernel) and stays with the CPU, which multiplies fp32 inputs (on the H200: 6.2e-4 of
    the largest logit as a prompt, 4.8e-7 one token at a time; the build before gave NaN)."""
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "big"
    shutil.copytree(REPO / "tests" / "fixtures" / "transformer", d)
    t = load_file(d / "model.safetensors")
    for name in ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"):
        t[name] = t[name] * np.float32(400)
    save_file(t, d / "model.safetensors")
    model = tmp_path / "big.fp16.bin"
    export(d, model, "--dtype", "fp16")
    tokens = expected("transformer")["tokens_long"]
    cpu = logits(RUN, model, tokens, tmp_path)
    for flags in ([], ["--one-by-one"]):
        gpu_logits = logits(RUN, model, tokens, tmp_path, "--device", "cuda", *flags)
        rel = float(np.abs(gpu_logits - cpu).max() / np.abs(cpu).max())
        print(f"fp16, activations past 65504, {'one-by-one' if flags else 'prompt'}: max|cuda - cpu| / max|cpu| = {rel:.2e}")
        assert np.isfinite(gpu_logits).all() and rel <= 1e-2


PAPER = REPO / "tests" / "paper_shapes"
# This random RetNet hybrid is ill-conditioned: on the CPU alone, summing in another order
# (make BLAS=1 against our own kernel) moves its logits by 2.5e-3 of the largest; GatedDeltaNet's
# by 3e-6. So its fp32 bound is twice that, the others' 1e-4.
FP32_REL = {"retnet_hybrid_6_1": 5e-3}
# where both devices round x before the products, a value next to a rounding step lands on
# either side of it, and its step (bf16: 2^-8 of the value; q8: 2^-15 of its group's largest)
# travels on through the layers. Measured on the H200 (2026-12-02, bench/cuda/test_cuda_h200.log),
# each GPU path against the same path on the CPU: bf16 4.8e-3 (HGRN2) to 5.7e-2 (GLA) one token at
# a time, 5.8e-3 to 6.6e-2 (RetNet) as a prompt; q8 one token at a time 9.5e-5 (Transformer) to
# 2.2e-3 (RetNet) and 5.2e-3 (GLA); q8 prompt 9.2e-5 (HGRN2) to 2.7e-3 (RetNet) since its products
# are exact per group on the int8 tensor cores (bench/cuda/q8_mma_h200.log). (Against the CPU's
# prompt path for both, as this test had it:
# q8 one token 1.0e-4 to 1.6e-3 with the CPU's fp32 batch kernel, 5.2e-3 / 5.6e-3 (GLA / RetNet)
# with its AMX one, whose exact group sums flip elsewhere.)
STEP_REL = {"bf16": 1e-1, "q8": 1e-2}


def random_paper_model(name, dtype, tmp_path):
    """fla's 340M tensor shapes (tests/paper_shapes) filled with random numbers (fp32), exported."""
    d = tmp_path / name
    random_checkpoint(PAPER / name, d, np.random.default_rng(1), np.float32)
    out = tmp_path / f"{name}.{dtype}.bin"
    export(d, out, "--dtype", dtype)
    shutil.rmtree(d)
    return out


@gpu
@pytest.mark.parametrize("name", ["transformer"] + [f"{k}_hybrid_6_1" for k in ("hgrn", "hgrn2", "gla", "retnet", "delta_net", "gated_deltanet")])
def test_cpu_and_cuda_agree_at_paper_shape(name, tmp_path):
    """every kind in the paper's 6:1 hybrid at 340M (the Transformer pure), each GPU path (prompt,
    one token at a time) against the same path on the CPU: with fp32 weights equal to fp32
    rounding; with bf16 and q8 weights both devices round each product's input x first (bf16: to
    bf16 on every path; q8: to int16 per group of 64 on every path), a step function, so they
    agree up to values that flip to the next step where the norms before round differently.
    All relative to the largest logit."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(3, 32000, 40).tolist()
    rels = {}
    for dtype in ("fp32", "bf16", "q8"):
        model = random_paper_model(name, dtype, tmp_path)
        for flags in ([], ["--one-by-one"]):
            cpu = logits(RUN, model, tokens, tmp_path, *flags)
            gpu_logits = logits(RUN, model, tokens, tmp_path, "--device", "cuda", *flags)
            rels[dtype, bool(flags)] = rel = float(np.abs(gpu_logits - cpu).max() / np.abs(cpu).max())
            print(f"{name} {dtype} {'one-by-one' if flags else 'prompt'}: max|cuda - cpu| / max|cpu| = {rel:.2e}")
        model.unlink()
    for (dtype, one_by_one), rel in rels.items():
        if dtype != "fp32":  # x's rounding steps flip where the norms before it round differently
            assert rel <= max(FP32_REL.get(name, 0), STEP_REL[dtype]), (dtype, one_by_one, rel)
        else:
            assert rel <= FP32_REL.get(name, 1e-4), (dtype, one_by_one, rel)


@gpu
@pytest.mark.parametrize("kv", ["fp32", "bf16"])
def test_cpu_and_cuda_agree_over_a_long_context(kv, exported, tmp_path):
    """20,000 tokens through the GQA Transformer fixture (4 query heads on 2 key/value heads of
    16): decoded one at a time, each token's keys spread over 64 blocks of the attention kernel
    (up to 313 keys a block, several rounds a warp); as a prompt with --ctx 70000, where the
    scores of a 1024-token batch would not fit the GPU's 1 GB buffer, so the same kernel takes
    every key of a query in one block (up to 20,000). Both against the CPU's prompt path, with
    the KV cache in fp32 and in bf16 (the same rounded values on both devices, but where fp32
    rounding puts a value on the other side of a bf16 step: rare, so the median token agrees
    to fp32 rounding)."""
    tokens = np.random.default_rng(3).integers(0, 128, 20000).tolist()
    model = exported("transformer")
    cpu = logits(RUN, model, tokens, tmp_path, "--ctx", "20000", "--kv-dtype", kv)
    for flags in (["--one-by-one", "--ctx", "20000"], ["--ctx", "70000"]):
        gpu_logits = logits(RUN, model, tokens, tmp_path, "--device", "cuda", "--kv-dtype", kv, *flags)
        rel = np.abs(gpu_logits - cpu).max(axis=1) / np.abs(cpu).max()
        print(f"transformer 20000 tokens, {kv} cache, {' '.join(flags)}: max|cuda - cpu| / max|cpu| = {rel.max():.2e} "
              f"(median token {np.median(rel):.2e})")
        assert rel.max() <= (1e-4 if kv == "fp32" else 1e-2) and np.median(rel) <= 1e-4, (flags, rel.max())


DEMO = REPO / "models" / "shakespeare_gdn.bin"
DEMO_PROMPT = ",".join((REPO / "models" / "shakespeare_val.ids").read_text().split()[:20])  # 20 validation token ids


@gpu
@pytest.mark.parametrize("options", [["-t", "0.8", "-p", "0.9"], ["-t", "1.2", "-k", "40", "-p", "0.95"],
                                     ["-t", "0.7", "--min-p", "0.05", "--repeat-penalty", "1.3"], ["-t", "0", "--repeat-penalty", "1.5"]])
def test_gpu_sampler_picks_the_cpu_samplers_tokens(options):
    """--device cuda samples on the GPU (a bisection on probability values, no sort) from the
    logits it keeps there; with the same seed it must pick the tokens run.c's sampler picks
    from the CPU's logits (the trained demo model: 32000 tokens, peaked distributions)"""
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = [run_tool(DEMO, "--tokens", DEMO_PROMPT, "-n", 150, "-s", seed, *options, "--ids", "--quiet",
                                 "--device", device).stdout.split() for seed in (1, 2, 3)]
    for cpu, cuda in zip(runs["cpu"], runs["cuda"]):
        same = next((i for i, (a, b) in enumerate(zip(cpu, cuda)) if a != b), len(cpu))
        print(f"{' '.join(options)}: {same} of {len(cpu)} tokens equal")
        assert cpu == cuda


@gpu
@pytest.mark.parametrize("options", [["-t", "0"], ["-t", "1.0", "-s", "7"], ["-t", "0.8", "-s", "3", "--ctx", "40", "--repeat-penalty", "1.2"]])
def test_gpu_generation_queued_ahead_prints_what_one_step_at_a_time_does(options):
    """On the GPU the sampled token stays there as the next step's input, and run.c queues step
    i + 1 and token i + 1's sampling before it reads token i back; with --verbose it reads each
    token back before the next step. Both must print the same text, to where they stop (the
    demo's context of 256 tokens, or --ctx 40); greedy, the CPU's text too. (Sampled, the CPU's
    text may part from the GPU's where a draw lands on a top-p cut the two devices' sums put
    apart: see the next test; test_gpu_sampler_picks_the_cpu_samplers_tokens compares them.)"""
    run = lambda *more: run_tool(DEMO, "-i", "ROMEO:", "-n", 300, *options, "--quiet", *more)
    ahead, stepwise = run("--device", "cuda"), run("--device", "cuda", "--verbose")
    print(f"{' '.join(options)}: {len(ahead.stdout)} bytes of text")
    assert ahead.stdout == stepwise.stdout and len(ahead.stdout) > 50
    assert b"context of" in ahead.stderr and b"context of" in stepwise.stderr
    if options == ["-t", "0"]:
        assert run("--device", "cpu").stdout == ahead.stdout


@gpu
@pytest.mark.parametrize("options", [["-t", "1.0", "-p", "0.9"], ["-t", "1.3", "-k", "200", "-p", "0.98"], ["-t", "0.9", "--min-p", "0.02"]])
def test_gpu_samplers_sort_and_bisections_pick_the_same_tokens(options):
    """Few candidates (the demo's peaked distributions) are sorted and walked as run.c walks them;
    HLA_CUDA_SAMPLE_SORT=0 takes the bisections instead (what many candidates take). From the
    same logits both must pick the same tokens (how far each agrees with the CPU is printed:
    the two devices' logits differ in the last bits)."""
    def ids(device, env=None):
        return [run_tool(DEMO, "-i", "ROMEO:", "-n", 120, "-s", seed, *options, "--ids", "--quiet", "--device", device,
                         env=env).stdout.split() for seed in (1, 2, 3, 4)]
    sort, bisect = ids("cuda"), ids("cuda", env={**os.environ, "HLA_CUDA_SAMPLE_SORT": "0"})
    cpu = ids("cpu")
    for a, b, c in zip(sort, bisect, cpu):
        same_cpu = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), len(a))
        print(f"{' '.join(options)}: sort == bisections: {a == b}; {same_cpu} of {len(a)} tokens equal to the CPU's")
    assert sort == bisect


@gpu
@pytest.mark.parametrize("vocab", [52000, 60000])
def test_gpu_sampler_with_a_large_vocabulary(vocab, tmp_path):
    """The sort's keys share the block's shared memory with the probabilities: at 52,000 tokens
    fewer of them fit (the sort path still runs), at 60,000 not even the probabilities (run.c
    samples). A GatedDeltaNet fixture with its embeddings and head widened to `vocab` random
    rows (2-60 tokens above min-p 0.05): the sort path and the bisections pick the same tokens
    (the CPU's are printed beside them)."""
    d = tmp_path / "wide"
    d.mkdir()
    cfg = json.loads((REPO / "tests" / "fixtures" / "gated_deltanet_gva" / "config.json").read_text())
    cfg["vocab_size"] = vocab
    (d / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(REPO / "tests" / "fixtures" / "gated_deltanet_gva" / "model.safetensors"))
    rng = np.random.default_rng(5)
    for name in ("model.embeddings.weight", "lm_head.weight"):
        w[name] = (rng.standard_normal((vocab, cfg["hidden_size"])) * (0.5 if name == "lm_head.weight" else 1.0)).astype(np.float32)
    save_file(w, str(d / "model.safetensors"))
    model = tmp_path / "wide.bin"
    export(d, model)
    def ids(device, env=None):
        return [run_tool(model, "--tokens", "1,2,3", "-n", 40, "-s", seed, "-t", "1.0", "--min-p", "0.05", "-p", "0.95", "--ids",
                         "--quiet", "--device", device, env=env).stdout.split() for seed in (1, 2, 3)]
    sort, bisect, cpu = ids("cuda"), ids("cuda", env={**os.environ, "HLA_CUDA_SAMPLE_SORT": "0"}), ids("cpu")
    print(f"vocab {vocab}: sort == bisections: {sort == bisect}; sort == cpu: {sort == cpu}; {len(set(sum(sort, [])))} distinct tokens")
    assert sort == bisect and len(set(sum(sort, []))) >= 10


@gpu
@pytest.mark.parametrize("options", [["-t", "0"], ["-t", "1"], ["-t", "1", "-p", "1"], ["-t", "0.8", "-k", "5", "--min-p", "0.1"]])
def test_gpu_logits_that_are_not_finite_stop_generation_with_an_error(options, tmp_path):
    """As on the CPU (test_bad_inputs.py): the GPU's sampler hands run.c no token, which it
    refuses; the step it may have queued after it gets token 0, not a row past the embeddings"""
    from test_bad_inputs import overflowing_model
    r = run_tool(overflowing_model(tmp_path), "--tokens", "1,2,3", "-n", 5, "--ids", "--device", "cuda", *options, check=False)
    assert_clean_error(r, "not finite")
    assert r.stdout == b""


@gpu
def test_gpu_sampler_over_the_whole_vocabulary_draws_as_the_cpu_does():
    """-t 1 -p 1: the draw may land anywhere in the tail of 32000 probabilities, where the CPU's
    sequential float sum over the sorted list and the GPU's block sums differ by more than a
    tail token's probability, and the two devices' logits differ in the last bits anyway; so
    here one draw per seed (the first token), and most must agree"""
    draws = {device: [run_tool(DEMO, "--tokens", DEMO_PROMPT, "-n", 1, "-s", seed, "-t", "1", "-p", "1", "--ids", "--quiet",
                               "--device", device).stdout.split()[0] for seed in range(1, 41)] for device in ("cpu", "cuda")}
    agree = sum(a == b for a, b in zip(draws["cpu"], draws["cuda"]))
    print(f"-t 1 -p 1: {agree} of 40 first draws equal; {len(set(draws['cuda']))} distinct tokens")
    assert agree >= 36 and len(set(draws["cuda"])) >= 5


@gpu
@pytest.mark.parametrize("name", ["gated_deltanet_hybrid_6_1", "transformer_swa_bias_tied", "hgrn_conv", "gla_gqa_conv_clamp",
                                  "retnet_gqa", "hgrn2_conv_4heads", "delta_net_gate_4heads"])
def test_state_moves_between_cpu_and_gpu(name, exported, tmp_path):
    """--save-state / --load-state with --device cuda: a state saved on either device continues
    on either exactly like the uninterrupted run (greedy ids)"""
    e = expected(name)
    toks = [int(t) for t in e["tokens_long"][:40]]
    model = exported(name)
    whole = run_tool(model, "--tokens", ",".join(map(str, toks)), "-n", 12, "-t", 0, "--ids", "--quiet").stdout.split()
    for saver in ("cpu", "cuda"):
        state = tmp_path / f"{saver}.state"
        run_tool(model, "--tokens", ",".join(map(str, toks[:25])), "--save-state", state, "-n", 0, "--quiet", "--device", saver)
        for loader in ("cpu", "cuda"):
            cont = run_tool(model, "--load-state", state, "--tokens", ",".join(map(str, toks[25:])), "-n", 12, "-t", 0,
                            "--ids", "--quiet", "--device", loader).stdout.split()
            assert cont == whole, (saver, loader)


@gpu
def test_verbose_state_norms_on_the_gpu_equal_the_cpus(exported):
    def norms(device):
        r = run_tool(exported("gated_deltanet_hybrid_6_1"), "--tokens", "1,2,3", "-n", 3, "-t", 0, "--ids", "--quiet",
                     "--verbose", "--device", device)
        lines = [l for l in r.stderr.decode().splitlines() if l.startswith("pos")]
        return [[float(f.split(":")[1]) for f in l.split("|")[1].split()] for l in lines]
    cpu, cuda = norms("cpu"), norms("cuda")
    assert len(cpu) == len(cuda) == 3
    assert np.allclose(cpu, cuda, rtol=2e-3)


@gpu
@pytest.mark.parametrize("name", ["transformer", "transformer_swa_bias_tied", "transformer_hd6_gqa", "gated_deltanet_hybrid_6_1",
                                  "delta_net_hybrid_3_1"])
def test_cuda_bf16_kv_cache(name, exported, tmp_path):
    """--kv-dtype bf16 on the GPU (attention_prep_kernel rounding, attention_kernel widening; a
    prompt's rows widened once for the fp32 SGEMMs): against fla's fp32 logits with the CPU's
    bf16-cache bounds (test_kv_cache.py), and against the CPU's bf16 cache, which holds the same
    rounded values (but for a rare one rounded the other way after fp32 rounding differed)"""
    from test_kv_cache import kv_tolerance
    e = expected(name)
    model, toks = exported(name), e["tokens_long"]
    scale = float(np.abs(e["logits_long_decode"]).max())
    cpu = logits(RUN, model, toks, tmp_path, "--kv-dtype", "bf16")
    for mode in ([], ["--one-by-one"]):
        got = logits(RUN, model, toks, tmp_path, "--kv-dtype", "bf16", "--device", "cuda", *mode)
        diff, gap = (float(np.abs(got - ref).max()) / scale for ref in (e["logits_long_decode"], cpu))
        print(f"cuda {name} bf16 cache {' '.join(mode) or 'prompt'}: from fla fp32 {diff:.2e}, from the cpu's bf16 cache {gap:.2e} "
              f"(of max|logit|)")
        assert diff <= kv_tolerance(name) and gap <= 1e-2


@gpu
@pytest.mark.parametrize("name", ["transformer_swa_bias_tied", "gated_deltanet_hybrid_6_1"])
def test_bf16_kv_state_moves_between_cpu_and_gpu(name, exported, tmp_path):
    e = expected(name)
    toks = [int(t) for t in e["tokens_long"][:40]]
    model, kv = exported(name), ["--kv-dtype", "bf16"]
    whole = run_tool(model, "--tokens", ",".join(map(str, toks)), "-n", 12, "-t", 0, "--ids", "--quiet", *kv).stdout.split()
    for saver in ("cpu", "cuda"):
        state = tmp_path / f"{saver}.state"
        run_tool(model, "--tokens", ",".join(map(str, toks[:25])), "--save-state", state, "-n", 0, "--quiet", "--device", saver, *kv)
        for loader in ("cpu", "cuda"):
            cont = run_tool(model, "--load-state", state, "--tokens", ",".join(map(str, toks[25:])), "-n", 12, "-t", 0,
                            "--ids", "--quiet", "--device", loader, *kv).stdout.split()
            assert cont == whole, (saver, loader)
