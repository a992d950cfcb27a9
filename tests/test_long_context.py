"""Long context on the CPU: a hybrid (GatedDeltaNet 12:1, two full-attention layers) takes a
32,768-token prompt and generates; its memory is what --info predicts (recurrent state
constant, KV cache only for the attention layers). Timing is printed, not asserted
(speed lives in benchmarks)."""
import re
import time

import numpy as np
import pytest

from conftest import run_tool

N = 32768


def peak_rss_bytes(args):
    """Peak resident memory of one run, as the tool reports it (VmHWM, its own address space)."""
    t0 = time.time()
    r = run_tool(*args, timeout=900)
    mb = float(re.search(r"peak memory ([\d.]+) MB", r.stderr.decode()).group(1))
    return mb * 1e6, r, time.time() - t0


def test_32k_prompt_plus_generation_with_predicted_memory(exported, tmp_path):
    model = exported("gated_deltanet_hybrid_12_1")
    info = run_tool(model, "--info").stdout.decode()
    kv_per_token = int(re.search(r"kv cache: (\d+) bytes per token", info).group(1))
    state = int(re.search(r"recurrent state: (\d+) bytes", info).group(1))
    ids = np.random.default_rng(0).integers(0, 128, N)
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids)))
    small_rss, _, _ = peak_rss_bytes([model, "--tokens", "1,2,3", "-n", 8, "--ids", "--ctx", 64])
    big_rss, r, secs = peak_rss_bytes([model, "--tokens-file", f, "-n", 16, "-t", 0, "--ids", "--ctx", N + 16])
    out = r.stdout.split()
    assert len(out) == 16 and all(0 <= int(x) < 128 for x in out)
    predicted = kv_per_token * (N + 16)          # the KV cache; the recurrent state does not grow
    grown = big_rss - small_rss
    print(f"peak RSS: short run {small_rss / 1e6:.1f} MB, 32K run {big_rss / 1e6:.1f} MB")
    print(f"32K prompt + 16 tokens: {secs:.1f} s; RSS grew {grown / 1e6:.1f} MB, KV cache predicted "
          f"{predicted / 1e6:.1f} MB, recurrent state {state} B; {r.stderr.decode().strip()}")
    # the prompt's ids (4 B each, read as text) and attention scores ride on top; nothing else grows
    assert grown <= predicted + 3 * 4 * N + 8 * 2**20


@pytest.mark.parametrize("name", ["transformer", "transformer_swa_bias_tied", "transformer_hd6_gqa", "gated_deltanet_hybrid_12_1"])
def test_long_context_decoded_one_at_a_time_equals_the_prompt_path(name, exported, tmp_path):
    """3000 tokens: as a prompt (attention as matrix products) and --one-by-one, where a decoded
    token's keys are split between 2 threads (-T 2) and walked 64 cache rows at a time with an
    online softmax, the ranges merged after (attention_keys; with a sliding window of 8, the cache
    a ring of 136 rows that wraps inside a thread's range): the same logits to fp32 rounding
    (the hybrid's GatedDeltaNet layers alone put 2.7e-5 between its two paths: measured so with
    the attention before attention_keys too)"""
    tokens = np.random.default_rng(1).integers(0, 128, 3000).tolist()
    model = exported(name)
    got = []
    for flags in ([], ["--one-by-one"]):
        out = tmp_path / "logits.f32"
        run_tool(model, "--tokens", ",".join(map(str, tokens)), "--logits", out, "--ctx", 3000, "-T", 2, *flags)
        got.append(np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1))
    rel = float(np.abs(got[0] - got[1]).max() / np.abs(got[0]).max())
    print(f"{name}: 3000 tokens, prompt path vs one by one: max|diff| / max|logit| = {rel:.2e}")
    assert rel <= (1e-4 if name.startswith("gated_deltanet") else 1e-5)
