"""The sanity tools: perplexity (against fla's own cross-entropy), KL against a reference
export, state save/restore, --verbose, sampling options."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES, REPO, run_tool


def ids_file(tmp_path, ids):
    p = tmp_path / "ids.txt"
    p.write_text(" ".join(map(str, ids)))
    return p


def parse(out):
    return dict(kv.split("=") for kv in out.split() if "=" in kv)


@pytest.mark.parametrize("name", ["gated_deltanet_hybrid_6_1", "hgrn_pure", "transformer", "retnet_gqa"])
def test_perplexity_equals_exp_of_fla_cross_entropy(name, exported, tmp_path):
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    tokens, logits = e["tokens_long"], e["logits_long_decode"].astype(np.float64)
    # fla's mean cross-entropy of tokens 1..79 given the ones before (one window of 80)
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    nll = log_z[:-1] - logits[np.arange(len(tokens) - 1), tokens[1:]]
    fla_ppl = float(np.exp(nll.mean()))
    out = run_tool(exported(name), "--tokens-file", ids_file(tmp_path, tokens), "-n", 0, "--ctx", 80).stdout.decode()
    got = parse(out)
    assert int(got["tokens"]) == 79
    assert abs(float(got["ppl"]) - fla_ppl) <= 1e-4 * fla_ppl, (got["ppl"], fla_ppl)


def test_perplexity_windows_restart_from_empty_state(exported, tmp_path):
    e = load_file(str(FIXTURES / "transformer" / "expected.safetensors"))
    ids = ids_file(tmp_path, e["tokens_long"])
    whole = parse(run_tool(exported("transformer"), "--tokens-file", ids, "-n", 0, "--ctx", 80).stdout.decode())
    halves = parse(run_tool(exported("transformer"), "--tokens-file", ids, "-n", 0, "--ctx", 40).stdout.decode())
    assert int(whole["tokens"]) == 79 and int(halves["tokens"]) == 78
    assert whole["ppl"] != halves["ppl"]


def test_kl_against_reference(exported, tmp_path):
    e = load_file(str(FIXTURES / "gated_deltanet_gva" / "expected.safetensors"))
    ids = ids_file(tmp_path, e["tokens_long"])
    fp32 = exported("gated_deltanet_gva")
    same = parse(run_tool(fp32, "--tokens-file", ids, "-n", 0, "--kl-ref", fp32).stdout.decode())
    assert abs(float(same["mean_kl"])) < 1e-9
    kl = {}
    for dt in ("fp16", "bf16", "q8"):
        kl[dt] = float(parse(run_tool(exported("gated_deltanet_gva", dt), "--tokens-file", ids, "-n", 0,
                                      "--kl-ref", fp32).stdout.decode())["mean_kl"])
    # our KL from both models' logits, computed independently here
    a = tmp_path / "a.f32"
    b = tmp_path / "b.f32"
    run_tool(fp32, "--tokens", ",".join(map(str, e["tokens_long"])), "--logits", a)
    run_tool(exported("gated_deltanet_gva", "q8"), "--tokens", ",".join(map(str, e["tokens_long"])), "--logits", b)
    p = np.fromfile(a, np.float32).reshape(80, -1)[:-1].astype(np.float64)
    q = np.fromfile(b, np.float32).reshape(80, -1)[:-1].astype(np.float64)
    lp = p - np.log(np.exp(p).sum(1, keepdims=True))
    lq = q - np.log(np.exp(q).sum(1, keepdims=True))
    want = float((np.exp(lp) * (lp - lq)).sum(1).mean())
    assert abs(kl["q8"] - want) <= 1e-6 + 1e-4 * want
    assert 0 < kl["fp16"] < kl["bf16"] < kl["q8"]


@pytest.mark.parametrize("name", ["gated_deltanet_hybrid_6_1", "hgrn_conv", "transformer_swa_bias_tied",
                                  "retnet_gqa", "gla_gqa_conv_clamp", "hgrn2_conv_4heads", "delta_net_gate_4heads"])
def test_restored_state_continues_exactly_like_the_uninterrupted_run(name, exported, tmp_path):
    e = load_file(str(FIXTURES / name / "expected.safetensors"))
    toks = [int(t) for t in e["tokens_long"][:40]]
    model = exported(name)
    whole = run_tool(model, "--tokens", ",".join(map(str, toks)), "-n", 12, "-t", 0, "--ids", "--quiet").stdout
    state = tmp_path / "s.bin"
    run_tool(model, "--tokens", ",".join(map(str, toks[:25])), "--save-state", state, "-n", 0, "--quiet")
    cont = run_tool(model, "--load-state", state, "--tokens", ",".join(map(str, toks[25:])), "-n", 12, "-t", 0,
                    "--ids", "--quiet").stdout
    assert cont.split() == whole.split()
    # and with nothing more to feed: the saved logits continue the prompt
    run_tool(model, "--tokens", ",".join(map(str, toks)), "--save-state", state, "-n", 0, "--quiet")
    cont = run_tool(model, "--load-state", state, "-n", 12, "-t", 0, "--ids", "--quiet").stdout
    assert cont.split() == whole.split()


def test_state_file_size_constant_for_linear_layers_growing_for_attention(exported, tmp_path):
    sizes = {}
    for name in ("gated_deltanet_pure", "transformer"):
        for n in (10, 30):
            p = tmp_path / f"{name}{n}.bin"
            run_tool(exported(name), "--tokens", ",".join(["7"] * n), "--save-state", p, "-n", 0, "--quiet")
            sizes[name, n] = p.stat().st_size
    assert sizes["gated_deltanet_pure", 10] == sizes["gated_deltanet_pure", 30]
    # transformer fixture: 2 layers x (k + v) x 2 kv heads x 16 dims x 4 bytes per token
    assert sizes["transformer", 30] - sizes["transformer", 10] == 20 * 2 * 2 * 2 * 16 * 4


def test_bad_state_files_are_refused(exported, tmp_path):
    state = tmp_path / "s.bin"
    run_tool(exported("transformer"), "--tokens", "1,2,3", "--save-state", state, "-n", 0, "--quiet")
    other = run_tool(exported("hgrn_pure"), "--load-state", state, "-n", 1, "--ids", check=False)
    assert other.returncode == 1 and b"different model" in other.stderr
    short = tmp_path / "short.bin"
    short.write_bytes(state.read_bytes()[:-5])
    r = run_tool(exported("transformer"), "--load-state", short, "-n", 1, "--ids", check=False)
    assert r.returncode == 1 and b"truncated" in r.stderr


def test_verbose_prints_per_layer_state_norms(exported):
    r = run_tool(exported("gated_deltanet_hybrid_6_1"), "--tokens", "1,2,3", "-n", 2, "--ids", "--quiet", "--verbose")
    lines = [l for l in r.stderr.decode().splitlines() if l.startswith("pos")]
    assert len(lines) == 2 and lines[0].count(" N:") == 20 and lines[0].count(" A:") == 4


def test_sampling_is_reproducible_with_a_seed_and_options_change_it(exported):
    m = exported("transformer")
    runs = [run_tool(m, "--tokens", "1,2", "-n", 30, "-s", 7, *extra, "--ids", "--quiet").stdout
            for extra in ([], [], ["-k", "3"], ["--min-p", "0.2"], ["--repeat-penalty", "1.5"], ["-t", "0"])]
    assert runs[0] == runs[1]
    assert len({r for r in runs}) >= 4


def test_survives_a_closed_pipe(exported):
    import subprocess
    from conftest import RUN
    # --ctx 40000: the ids of a full context (~200 KB) overflow the pipe's buffer, so ./run is still
    # writing when head has gone (with the model's own 256 positions it could finish first: a race)
    p = subprocess.run(f"'{RUN}' '{exported('transformer')}' --tokens 1,2 -n 100000 --ctx 40000 --ids --quiet | head -c 10",
                       shell=True, capture_output=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout) == 10 and p.stderr == b""


def test_generation_stops_at_a_full_context_with_a_note(exported):
    r = run_tool(exported("transformer"), "--tokens", "1,2,3", "-n", 50, "--ctx", 10, "--ids")
    assert len(r.stdout.split()) == 8 and b"context of 10 tokens is full" in r.stderr


def test_top_p_and_top_k_draw_only_from_their_cut(tmp_path):
    """The sampler sorts only the tokens that can be in the top-p nucleus (p >= (1 - top_p) /
    (vocab - 1)); every draw must still come from the nucleus (and the top k) computed here
    from the logits of the same step, with temperature 1."""
    from conftest import REPO
    model = REPO / "models" / "shakespeare_gdn.bin"
    prompt = "1,415,2936,29901"
    out = tmp_path / "l.f32"
    run_tool(model, "--tokens", prompt, "--logits", out)
    logits = np.fromfile(out, np.float32).reshape(4, -1)[-1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    for top_p, top_k in ((0.5, 0), (0.9, 0), (0.95, 5)):
        ranked = order[:top_k] if top_k else order
        nucleus = set(ranked[: int(np.searchsorted(np.cumsum(p[ranked]), top_p, side="right")) + 1].tolist())
        drawn = set()
        for seed in range(1, 121):
            extra = ["-k", top_k] if top_k else []
            r = run_tool(model, "--tokens", prompt, "-n", 1, "-t", 1, "-p", top_p, "-s", seed, *extra, "--ids", "--quiet")
            drawn.add(int(r.stdout.split()[0]))
        assert drawn <= nucleus, (top_p, top_k, sorted(drawn - nucleus))
        mass = sum(p[i] for i in nucleus)
        likely = {i for i in nucleus if p[i] / mass >= 0.05}  # each drawn by one of 120 seeds but for odds ~0.2%
        assert likely <= drawn, (top_p, top_k, sorted(likely - drawn))


def test_prompt_from_a_file_equals_the_same_text_given_with_i(tmp_path):
    """-f FILE: the prompt's text read from a file, as it is (a trailing newline included)"""
    demo, tok = REPO / "models" / "shakespeare_gdn.bin", REPO / "tokenizer.bin"
    text = "ROMEO:\nWhat light"
    f = tmp_path / "prompt.txt"
    f.write_text(text)
    a = run_tool(demo, "-z", tok, "-f", f, "-n", 8, "-t", 0, "--ids", "--quiet").stdout
    b = run_tool(demo, "-z", tok, "-i", text, "-n", 8, "-t", 0, "--ids", "--quiet").stdout
    assert a == b and len(a.split()) == 8
