"""Bad input never crashes: one clear `error:` line naming the file, a non-zero exit,
no signal, no Python traceback, and no partial output file."""
import json
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES, assert_clean_error, export, run_tool

GOOD = "gated_deltanet_hybrid_6_1"


# ---- the weight file ---------------------------------------------------------

@pytest.fixture(scope="module")
def good_bin(exported):
    return exported(GOOD).read_bytes()


def patched(data, offset, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def corruptions(good):
    n_tensors = struct.unpack_from("<I", good, 12)[0]
    n_layers = struct.unpack_from("<i", good, 20)[0]
    table = 256 + (n_layers + 7) // 8 * 8
    return {
        "empty": b"",
        "truncated_header": good[:100],
        "truncated_table": good[:table + 50],
        "truncated_data": good[:len(good) // 2],
        "truncated_last_byte": good[:-1],
        "wrong_magic": b"GGUF" + good[4:],
        "wrong_version": patched(good, 4, "<I", 99),
        "header_bytes_past_end": patched(good, 8, "<I", 0xFFFFFF00),
        "absurd_n_tensors": patched(good, 12, "<I", 0xFFFFFFFF),
        "zero_dim": patched(good, 16, "<i", 0),
        "negative_layers": patched(good, 20, "<i", -5),
        "absurd_vocab": patched(good, 24, "<i", 1 << 30),
        "absurd_hidden": patched(good, 28, "<i", -1),
        "bad_layer_kind": patched(good, 256, "<B", 200),
        "tensor_offset_past_end": patched(good, table + 64 + 8 + 32, "<Q", 1 << 40),
        "tensor_size_lies": patched(good, table + 64 + 8 + 40, "<Q", 12),
        "tensor_bad_dtype": patched(good, table + 64, "<I", 9),
        "tensor_name_unterminated": good[:table] + b"x" * 64 + good[table + 64:],
        "tensor_shape_wrong": patched(good, table + 64 + 8, "<Q", 7),
        "last_tensor_missing": patched(good, 12, "<I", n_tensors - 1),
    }


@pytest.mark.parametrize("case", sorted(corruptions(b"\0\0\0\0\0\0\0\0\0\0\0\0\1" + b"\0" * 4096)))
def test_corrupt_model_file_fails_cleanly(case, good_bin, tmp_path):
    path = tmp_path / f"{case}.bin"
    path.write_bytes(corruptions(good_bin)[case])
    r = run_tool(path, "--tokens", "1,2,3", "-n", 2, "--ids", check=False)
    assert_clean_error(r, str(path))


def test_missing_model_file(tmp_path):
    assert_clean_error(run_tool(tmp_path / "nope.bin", "--info", check=False), "nope.bin")


def test_directory_as_model_file(tmp_path):
    assert_clean_error(run_tool(tmp_path, "--info", check=False))


@pytest.mark.parametrize("tokens", ["1,2,128", "1,-1", "5,99999999999", "1,,2", "abc", "1;2"])
def test_bad_prompt_token_ids(tokens, exported):
    r = run_tool(exported(GOOD), "--tokens", tokens, "-n", 1, "--ids", check=False)
    assert_clean_error(r)


def test_missing_tokenizer_for_text_prompt(exported, tmp_path):
    r = run_tool(exported(GOOD), "-z", tmp_path / "none.bin", "-i", "hello", check=False)
    assert_clean_error(r, "none.bin")


def test_context_overflow_is_refused_not_a_crash(exported):
    # full-attention layers hold --ctx positions; asking for more is an error, not garbage
    r = run_tool(exported("transformer"), "--tokens", ",".join(["5"] * 20), "--ctx", 10, "--logits", "/dev/null",
                 check=False)
    assert_clean_error(r, "context")


def overflowing_model(tmp_path):
    """A fixture whose head's weights are finite but so large (3e38) that its logits are +-inf
    (export.py accepts them: only non-finite weights are refused)."""
    d = tmp_path / "overflow"
    d.mkdir()
    shutil.copy(FIXTURES / "gated_deltanet_gva" / "config.json", d / "config.json")
    w = load_file(str(FIXTURES / "gated_deltanet_gva" / "model.safetensors"))
    w["lm_head.weight"][:] = np.float32(3e38)
    save_file(w, str(d / "model.safetensors"))
    export(d, tmp_path / "overflow.bin")
    return tmp_path / "overflow.bin"


@pytest.mark.parametrize("options", [["-t", "0"], ["-t", "1"], ["-t", "1", "-p", "1"], ["-t", "0.8", "-k", "5", "--min-p", "0.1"]])
def test_logits_that_are_not_finite_stop_generation_with_an_error(options, tmp_path):
    """Greedy or sampled, infinite or NaN logits are an error, not a token (the sampler's
    candidates were empty and it read before its array)"""
    r = run_tool(overflowing_model(tmp_path), "--tokens", "1,2,3", "-n", 5, "--ids", *options, check=False)
    assert_clean_error(r, "not finite")
    assert r.stdout == b""


def test_bad_option_values(exported):
    for args in (["-n", "-3"], ["-t", "abc"], ["-p", "2"], ["-T", "0"], ["--ctx", "0"], ["--kv-dtype", "fp16"]):
        assert_clean_error(run_tool(exported(GOOD), "--tokens", "1", *args, check=False))


def test_help_prints_usage_and_succeeds_and_no_model_is_an_error():
    for flag in ("-h", "--help"):
        r = run_tool(flag)
        assert r.stdout.startswith(b"usage: run MODEL.bin") and b"--kv-dtype" in r.stdout and r.stderr == b""
    r = run_tool(check=False)
    assert r.returncode == 1 and r.stderr.startswith(b"usage: run MODEL.bin") and r.stdout == b""


def test_two_texts_or_a_bad_prompt_file_are_refused(exported, tmp_path):
    """one text to run: two of -i, -f, --tokens, --tokens-file, --ppl were taken one over the
    other, silently (and -f was read only by --tokenize)"""
    text = tmp_path / "p.txt"
    text.write_text("abc")
    for args in (["-i", "x", "--tokens", "1"], ["-f", text, "-i", "x"], ["--tokens", "1", "--ppl", text],
                 ["--tokens-file", text, "--tokens", "1"]):
        assert_clean_error(run_tool(exported(GOOD), *args, check=False), "give one text")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a\0b")
    assert_clean_error(run_tool(exported(GOOD), "-f", nul, check=False), "nul.txt")
    assert_clean_error(run_tool(exported(GOOD), "-f", tmp_path / "missing.txt", check=False), "missing.txt")


# ---- export.py on broken checkpoint directories --------------------------------

def copy_fixture(tmp_path, name="gated_deltanet_gva"):  # fp32 weights: numpy can edit them
    d = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / name, d)
    (d / "expected.safetensors").unlink()
    return d


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None and k.startswith("-"):
            cfg.pop(k[1:], None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def edit_tensors(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def broken(kind, d):
    st = d / "model.safetensors"
    if kind == "missing_dir":
        shutil.rmtree(d)
    elif kind == "missing_config":
        (d / "config.json").unlink()
    elif kind == "config_not_json":
        (d / "config.json").write_text("{not json")
    elif kind == "config_not_object":
        (d / "config.json").write_text("[1, 2]")
    elif kind == "unknown_model_type":
        edit_config(d, model_type="mamba2")
    elif kind == "missing_model_type":
        edit_config(d, **{"-model_type": None})
    elif kind == "attnres":
        edit_config(d, attnres_block_size=2)
    elif kind == "powlu":
        edit_config(d, hidden_act="powlu")
    elif kind == "attn_layer_out_of_range":
        edit_config(d, attn={"layers": [1, 99], "num_heads": 2})
    elif kind == "hidden_size_string":
        edit_config(d, hidden_size="32")
    elif kind == "missing_safetensors":
        st.unlink()
    elif kind == "truncated_safetensors":
        st.write_bytes(st.read_bytes()[:1000])
    elif kind == "safetensors_header_too_long":
        b = bytearray(st.read_bytes())
        struct.pack_into("<Q", b, 0, 1 << 50)
        st.write_bytes(bytes(b))
    elif kind == "safetensors_header_garbage":
        b = bytearray(st.read_bytes())
        b[8:20] = b"\xff" * 12
        st.write_bytes(bytes(b))
    elif kind == "safetensors_offsets_lie":
        raw = st.read_bytes()
        n = struct.unpack_from("<Q", raw)[0]
        h = json.loads(raw[8:8 + n])
        name = next(k for k in h if k != "__metadata__")
        h[name]["data_offsets"][1] += 10 ** 9
        hb = json.dumps(h).encode()
        st.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    elif kind == "wrong_shape":
        edit_tensors(d, lambda t: t.__setitem__("model.layers.0.attn.q_proj.weight", np.zeros((3, 3), np.float32)))
    elif kind == "missing_tensor":
        edit_tensors(d, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    elif kind == "unexpected_tensor":
        edit_tensors(d, lambda t: t.__setitem__("model.layers.0.attn.mystery", np.zeros(4, np.float32)))
    elif kind == "int_dtype_tensor":
        edit_tensors(d, lambda t: t.__setitem__("model.norm.weight", np.zeros(64, np.int32)))
    elif kind == "nan_weights":
        edit_tensors(d, lambda t: t.__setitem__("model.norm.weight", np.full(64, np.nan, np.float32)))
    elif kind == "index_names_missing_shard":
        t = load_file(str(st))
        st.unlink()
        names = sorted(t)
        save_file({k: t[k] for k in names[:10]}, str(d / "model-00001-of-00002.safetensors"))
        wm = {k: ("model-00001-of-00002.safetensors" if i < 10 else "model-00002-of-00002.safetensors")
              for i, k in enumerate(names)}
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    elif kind == "index_not_json":
        (d / "model.safetensors.index.json").write_text("nope")
    return d


BROKEN = ["missing_dir", "missing_config", "config_not_json", "config_not_object", "unknown_model_type",
          "missing_model_type", "attnres", "powlu", "attn_layer_out_of_range", "hidden_size_string",
          "missing_safetensors", "truncated_safetensors", "safetensors_header_too_long",
          "safetensors_header_garbage", "safetensors_offsets_lie", "wrong_shape", "missing_tensor",
          "unexpected_tensor", "int_dtype_tensor", "nan_weights", "index_names_missing_shard", "index_not_json"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoint_dir_fails_cleanly_without_output(kind, tmp_path):
    d = broken(kind, copy_fixture(tmp_path))
    out = tmp_path / "out.bin"
    r = export(d, out, check=False)
    assert_clean_error(r)
    assert not out.exists() and not (tmp_path / "out.bin.tmp").exists()


def test_unknown_model_type_names_the_key(tmp_path):
    d = broken("unknown_model_type", copy_fixture(tmp_path))
    r = export(d, tmp_path / "o.bin", check=False)
    assert_clean_error(r, "model_type")
