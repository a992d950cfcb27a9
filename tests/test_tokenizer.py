"""Tokenizer tests: export.py --tokenizer and run --tokenize / --detokenize.

Paths: HLA_RUN (default <repo>/run), HLA_EXPORT (default <repo>/export.py),
HLA_SHARED (default <repo>/../shared); <repo> is this file's folder's parent.

Reference behaviour: the released checkpoints' tokenizer is the older HF
serialisation of Mistral-7B-v0.1's tokenizer (normalizer Prepend("▁") +
Replace(" ", "▁"), no pre-tokenizer), which agrees with sentencepiece on
tokenizer.model except that HF splits <unk>, <s>, </s> out of the text. We build
it with the `tokenizers` library from tokenizer.json (see legacy_reference()).
The newer Metaspace serialisation in tokenizer.json differs for text starting
with spaces, and is NOT the reference.

Round trips (c) use the binary's --detokenize mode.
"""
import copy
import json
import os
import random
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import assert_clean_error

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
RUN = os.environ.get("HLA_RUN", str(REPO / "run"))
EXPORT = os.environ.get("HLA_EXPORT", str(REPO / "export.py"))
SHARED = Path(os.environ.get("HLA_SHARED", str(REPO.parent / "shared")))
TOK_DIR = SHARED / "tokenizer" / "mistral-7b-v0.1"
TOK_JSON = TOK_DIR / "tokenizer.json"
REF_IDS = TOK_DIR / "map-gdn-reference-ids.json"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
BOS = 1
SPECIALS = ("<unk>", "<s>", "</s>")


# --- helpers ---------------------------------------------------------------------

def legacy_reference():
    """The released checkpoints' tokenizer, rebuilt from tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    d = copy.deepcopy(json.loads(TOK_JSON.read_text(encoding="utf-8")))
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    d["pre_tokenizer"] = None
    return tokenizers.Tokenizer.from_str(json.dumps(d))


def run_cmd(args, **kw):
    return subprocess.run([RUN] + [str(a) if not isinstance(a, bytes) else a for a in args],
                          capture_output=True, timeout=60, **kw)


def tokenize(tok_bin, text):
    """ids from `run --tokenize -z tok_bin -i text` (text: str or bytes)"""
    r = run_cmd(["--tokenize", "-z", tok_bin, "-i", text])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = r.stdout.decode()
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    return [int(x) for x in out.split()]


def tokenize_file(tok_bin, path):
    r = run_cmd(["--tokenize", "-z", tok_bin, "-f", path])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return [int(x) for x in r.stdout.split()]


def detokenize(tok_bin, ids):
    """raw bytes from `run --detokenize -z tok_bin ID...`"""
    r = run_cmd(["--detokenize", "-z", tok_bin] + [str(i) for i in ids])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


@pytest.fixture(scope="session")
def tok_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer.bin"
    r = subprocess.run(["python3", EXPORT, "--tokenizer", str(TOK_JSON), str(out)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert out.exists() and not Path(str(out) + ".tmp").exists()
    return out


@pytest.fixture(scope="session")
def ref():
    return legacy_reference()


# --- the strings compared against the reference ----------------------------------

def shakespeare_lines():
    lines = SHAKESPEARE.read_text(encoding="utf-8").split("\n")
    picked = [l for l in lines[::397] if l][:100]
    chunks = ["\n".join(lines[i:i + 6]) for i in range(1000, 30000, 2900)]  # multi-line, blank lines
    return picked + chunks


HANDWRITTEN = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "a", "A", "hello", " hello", "  hello",
    "   hello", "hello ", "hello  ", "hello world", "hello  world", "hello   world",
    "hello\tworld", "hello\nworld", "hello\r\nworld", "\thello", "\nhello", " \thello",
    "trailing tab\t", "ends with newline\n", "two\n\nparagraphs", "    indented code",
    "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK",
    "0", "1", "42", "1234567890", "3.14159", "-17", "1,000,000", "2024-01-31", "12:30pm",
    "v1.2.3", "0x1F", "1e-9", "100%", "$5.99", "#hashtag", "@user", "a+b=c", "x^2 + y^2 = z^2",
    "!!!", "???", "...", "…", "--", "—", "–", "“quoted”", "‘single’", "\"double\"", "'single'",
    "(parens) [brackets] {braces}", "<html><body>hi</body></html>", "a & b | c ~ d",
    "def f(x):\n    return x * 2\n", "int main(void) { return 0; }",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}", "SELECT * FROM t WHERE id = 1;",
    "import numpy as np", "path/to/file.txt", "C:\\Windows\\System32", "https://example.com/a?b=c&d=e",
    "user@example.com", "#include <stdio.h>", "    if x:\n        pass", "a_b_c", "camelCaseName",
    "snake_case_name", "kebab-case-name", "Ünïcödé", "café", "naïve", "résumé", "Straße",
    "Ørsted", "Ångström", "Łódź", "Dvořák", "São Paulo", "Français", "español", "niño",
    "Привет, мир", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "你好，世界", "中文字符测试", "日本語のテキスト", "カタカナ", "한국어 텍스트", "繁體中文",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "I ❤ NY", "☃", "★☆", "♠♥♦♣", "→←↑↓",
    "∀x∈ℝ: x²≥0", "∑∫∂√∞", "½ ¼ ¾", "©®™", "°C", "µs", "Ω", "ﬁ ligature", "ｆｕｌｌｗｉｄｔｈ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝕏", "𐍈", "𓀀", "\U0010FFFD", "\uE000", "\uFFFD", "\u200b", "\u200d",
    "\u00a0non-breaking", "a\u00a0b", "\u3000ideographic space", "e\u0301", "a\u0300\u0301\u0302",
    "\u202eRTL override", "\x01\x02\x03", "\x7f", "bell\x07", "\x1b[31mred\x1b[0m",
    "\u2581", "a\u2581b", "\u2581\u2581x", " \u2581 ",
    "<s>", "</s>", "<unk>", "<s>hello", "hello</s>", "a<s>b", "a <s> b", "<s></s>", "<<s>>",
    "<s", "s>", "</s", "<unk", "< s >", "x<unk>y", "  <s>  ", "\n<s>\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", " " * 40, "\n" * 20, "ab" * 50, "-" * 80,
    "=" * 33, "the the the the the", "xXxXxX", "Mississippi", "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
]


def random_strings(n, seed=1234):
    rng = random.Random(seed)
    atoms = ["the", "of", " ", "  ", "\t", "\n", "a", "Z", "7", "42", ".", ",", "!", "é", "ß",
             "中", "文", "😀", "👍🏽", "𝔘", "\u0301", "\u00a0", "\uE000", "ǅ", "Ω", "<s>", "</s>",
             "<", ">", "\u2581", "ing", "tion", "qu", "x", "_", "(", ")", "{", "}", "'", "\"",
             "Ä", "ø", "й", "ה", "ع", "क", "ก", "한", "カ", "\U0001F600", "\U0010FFFD", "\x7f"]
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(atoms) for _ in range(rng.randint(1, 25))))
    return out


ALL_STRINGS = HANDWRITTEN + shakespeare_lines() + random_strings(60)


def roundtrips(s):
    """texts that decode back to themselves: no special tokens (they decode to
    nothing) and no literal U+2581 (it is a space to the tokenizer)"""
    return not any(sp in s for sp in SPECIALS) and "\u2581" not in s


# --- (a) the released checkpoint's recorded ids ---------------------------------

def test_reference_prompts_match_released_checkpoint_ids(tok_bin):
    ref = json.loads(REF_IDS.read_text(encoding="utf-8"))
    assert len(ref["prompts"]) == 12
    for p in ref["prompts"]:
        assert tokenize(tok_bin, p["text"]) == p["ids"], p["index"]
        # 'text' is ids[1:] decoded with tokenizer.model
        assert detokenize(tok_bin, p["ids"]).decode() == p["text"], p["index"]


def test_reference_continuations_reencode_to_the_same_ids(tok_bin):
    ref = json.loads(REF_IDS.read_text(encoding="utf-8"))
    assert ref["model_continuations"]
    for c in ref["model_continuations"]:
        ids = c["prompt_ids"][1:] + c["greedy_ids"]
        text = detokenize(tok_bin, ids)
        assert tokenize(tok_bin, text) == [BOS] + ids, c["index"]
        assert detokenize(tok_bin, c["greedy_ids"]).decode() == c["text"], c["index"]


# --- (b) many strings against the reference library ------------------------------

def test_string_set_is_diverse_enough():
    assert len(ALL_STRINGS) >= 250
    assert "" in ALL_STRINGS


@pytest.mark.parametrize("i", range(len(ALL_STRINGS)))
def test_tokenize_matches_released_tokenizer(tok_bin, ref, i):
    s = ALL_STRINGS[i]
    assert tokenize(tok_bin, s) == ref.encode(s).ids, repr(s)


def test_leading_spaces_follow_released_tokenizer_not_metaspace(tok_bin):
    # the checkpoints' tokenizer (and sentencepiece) keep the space in front of
    # a leading space: " hello" -> "▁" "▁hell" "o", "  " -> "▁▁▁"
    assert tokenize(tok_bin, " hello") == [1, 28705, 6312, 28709]
    assert tokenize(tok_bin, "  ") == [1, 2287]


def test_special_tokens_are_split_out_like_hf(tok_bin):
    assert tokenize(tok_bin, "a<s>b") == [1, 264, 1, 287]
    assert tokenize(tok_bin, "<unk></s>") == [1, 0, 2]


def test_sentencepiece_agrees_where_no_special_tokens():
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(TOK_DIR / "tokenizer.model"))
    ref = legacy_reference()
    for s in ALL_STRINGS:
        if not any(x in s for x in SPECIALS):
            assert [BOS] + sp.encode(s) == ref.encode(s).ids, repr(s)


def test_whole_tinyshakespeare_matches_and_is_fast(tok_bin, ref):
    t0 = time.time()
    ids = tokenize_file(tok_bin, SHAKESPEARE)
    elapsed = time.time() - t0
    assert ids == ref.encode(SHAKESPEARE.read_text(encoding="utf-8")).ids
    assert elapsed < 2.0, f"tokenizing 1.1 MB took {elapsed:.2f} s"


def test_nul_bytes_in_a_file_are_byte_tokens(tok_bin, ref, tmp_path):
    f = tmp_path / "nul.txt"
    f.write_bytes(b"a\x00b\x00\x00 c")
    assert tokenize_file(tok_bin, f) == ref.encode("a\x00b\x00\x00 c").ids


# --- invalid UTF-8: each invalid byte is its own byte-fallback token -------------

INVALID_UTF8 = [b"\xff", b"a\xffb", b"\xfe\xff", b"\xc3", b"\xc3(", b"abc\xe2\x96", b"\xe2\x96 x",
                b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98", b"\x80\x80 hi",
                b"caf\xe9", b"ok \xf8\x88\x80\x80\x80 ok", b"\xef\xbb\xbfBOM"]


def expected_for_bytes(ref, data):
    """reference ids for bytes: each invalid byte stands in for a private-use
    character (not in the vocab, so it becomes 3 byte tokens), then the 3 byte
    tokens are replaced by the invalid byte's own byte token"""
    text, marks = [], []
    i = 0
    while i < len(data):
        for n in (1, 2, 3, 4):
            try:
                ch = data[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            text.append(ch)
            i += n
            break
        else:
            text.append("\uE000")
            marks.append(data[i])
            i += 1
    ids = ref.encode("".join(text)).ids
    pu = [3 + 0xEE, 3 + 0x80, 3 + 0x80]
    out, k = [], 0
    while k < len(ids):
        if ids[k:k + 3] == pu:
            out.append(3 + marks.pop(0))
            k += 3
        else:
            out.append(ids[k])
            k += 1
    assert not marks
    return out


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_bytes_become_byte_tokens_and_decode_to_replacement(tok_bin, ref, data):
    ids = tokenize(tok_bin, data)
    assert ids == expected_for_bytes(ref, data)
    assert detokenize(tok_bin, ids) == data.decode("utf-8", "replace").encode()


# --- (c) decode round trip ---------------------------------------------------------

@pytest.mark.parametrize("i", [i for i, s in enumerate(ALL_STRINGS) if roundtrips(s)])
def test_detokenize_gives_back_the_text(tok_bin, i):
    s = ALL_STRINGS[i]
    assert detokenize(tok_bin, tokenize(tok_bin, s)).decode("utf-8") == s


def test_detokenize_never_emits_invalid_utf8(tok_bin):
    rng = random.Random(5)
    for _ in range(30):
        ids = [rng.choice([rng.randrange(3, 259), rng.randrange(3, 32000)]) for _ in range(20)]
        out = detokenize(tok_bin, ids)
        out.decode("utf-8")  # raises if invalid
    # an incomplete character at the end becomes one U+FFFD
    assert detokenize(tok_bin, [3 + 0xE2, 3 + 0x96]) == "\ufffd".encode()
    assert detokenize(tok_bin, [3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80]) == "😀".encode()


# --- (d) bad tokenizer files ----------------------------------------------------------

def patched(good, offset, fmt, value):
    b = bytearray(good)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def token_offsets(good):
    """file offset of each token record"""
    vocab = struct.unpack_from("<I", good, 8)[0]
    offs, p = [], 32
    for _ in range(vocab):
        offs.append(p)
        p += 5 + struct.unpack_from("<I", good, p)[0]
    return offs, p


def bad_tokenizer_files(good):
    offs, merges_at = token_offsets(good)
    n_merges = struct.unpack_from("<I", good, 12)[0]
    vocab = struct.unpack_from("<I", good, 8)[0]
    last_merge = merges_at + 12 * (n_merges - 1)
    cases = {
        "empty": b"",
        "truncated_in_magic": good[:3],
        "truncated_in_header": good[:20],
        "header_only": good[:32],
        "truncated_in_token_length": good[:offs[100] + 2],
        "truncated_in_piece": good[:offs[20000] + 7],
        "truncated_before_merges": good[:merges_at],
        "truncated_in_merges": good[:len(good) - 5],
        "trailing_garbage": good + b"\0" * 12 + b"x",
        "wrong_magic": b"GGUF" + good[4:],
        "wrong_version": patched(good, 4, "<I", 2),
        "vocab_size_zero": patched(good, 8, "<I", 0),
        "vocab_size_absurd": patched(good, 8, "<I", 0xFFFFFFFF),
        "vocab_size_too_big": patched(good, 8, "<I", (1 << 20) + 1),
        "vocab_size_lies": patched(good, 8, "<I", 1 << 20),
        "n_merges_absurd": patched(good, 12, "<I", 0xFFFFFFFF),
        "bos_out_of_range": patched(good, 16, "<I", vocab),
        "eos_negative": patched(good, 20, "<i", -1),
        "max_len_zero": patched(good, 28, "<I", 0),
        "piece_longer_than_max": patched(good, offs[500], "<I", 26),
        "piece_length_huge": patched(good, offs[500], "<I", 0xFFFFFFFF),
        # with n_merges = 0 the cheap up-front size checks pass and the per-token ones must catch these
        "no_merges_truncated_in_last_length": patched(good, 12, "<I", 0)[:offs[-1] + 2],
        "no_merges_truncated_in_last_piece": patched(good, 12, "<I", 0)[:offs[-1] + 6],
        "piece_runs_past_end": patched(patched(patched(good, 12, "<I", 0), 28, "<I", 65536),
                                       offs[31000], "<I", 60000)[:offs[31000] + 5 + 100],
        "piece_empty": patched(good, offs[1000], "<I", 0),
        "bad_kind": patched(good, offs[1000] + 4, "<B", 7),
        "merge_left_out_of_range": patched(good, last_merge, "<I", vocab),
        "merge_right_out_of_range": patched(good, last_merge + 4, "<I", 0xFFFFFFFF),
        "merge_result_out_of_range": patched(good, last_merge + 8, "<I", vocab + 5),
        "merge_result_not_concatenation": patched(good, last_merge + 8, "<I", 500),
        "merge_repeated": good[:last_merge] + good[merges_at:merges_at + 12],
    }
    return cases


@pytest.fixture(scope="session")
def bad_files(tok_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {}
    for name, data in bad_tokenizer_files(tok_bin.read_bytes()).items():
        f = d / f"{name}.bin"
        f.write_bytes(data)
        files[name] = f
    files["missing"] = d / "does_not_exist.bin"
    files["directory"] = d
    return files


BAD_CASES = ["missing", "directory", "empty", "truncated_in_magic", "truncated_in_header",
             "header_only", "truncated_in_token_length", "truncated_in_piece",
             "truncated_before_merges", "truncated_in_merges", "trailing_garbage", "wrong_magic",
             "wrong_version", "vocab_size_zero", "vocab_size_absurd", "vocab_size_too_big",
             "vocab_size_lies", "n_merges_absurd", "bos_out_of_range", "eos_negative",
             "max_len_zero", "piece_longer_than_max", "piece_length_huge", "piece_runs_past_end",
             "no_merges_truncated_in_last_length", "no_merges_truncated_in_last_piece",
             "piece_empty", "bad_kind", "merge_left_out_of_range", "merge_right_out_of_range",
             "merge_result_out_of_range", "merge_result_not_concatenation", "merge_repeated"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_tokenizer_bin_fails_with_one_error_line(bad_files, case):
    f = bad_files[case]
    r = run_cmd(["--tokenize", "-z", f, "-i", "hello world"])
    assert_clean_error(r, f)
    assert r.stdout == b""


def test_bad_case_list_is_complete(tok_bin):
    assert set(bad_tokenizer_files(tok_bin.read_bytes())) | {"missing", "directory"} == set(BAD_CASES)


# --- bad tokenizer.json for the exporter ---------------------------------------------

def good_json():
    return json.loads(TOK_JSON.read_text(encoding="utf-8"))


def exporter_bad_inputs():
    not_bpe = good_json(); not_bpe["model"]["type"] = "WordPiece"
    unknown_merge = good_json(); unknown_merge["model"]["merges"].append("nosuchpiece ▁the")
    no_model = {"version": "1.0"}
    bad_merge = good_json(); bad_merge["model"]["merges"][5] = "a b c"
    gap = good_json(); del gap["model"]["vocab"]["▁the"]
    bytelevel = good_json(); bytelevel["pre_tokenizer"] = {"type": "ByteLevel"}
    return {
        "missing": None,
        "not_json": b"{ this is not json",
        "not_utf8": b"\xff\xfe{}",
        "empty": b"",
        "json_list": b"[1, 2, 3]",
        "no_model": json.dumps(no_model).encode(),
        "not_bpe": json.dumps(not_bpe).encode(),
        "merge_unknown_piece": json.dumps(unknown_merge).encode(),
        "merge_malformed": json.dumps(bad_merge).encode(),
        "vocab_gap": json.dumps(gap).encode(),
        "byte_level_pretokenizer": json.dumps(bytelevel).encode(),
    }


@pytest.mark.parametrize("case", list(exporter_bad_inputs()))
def test_export_bad_tokenizer_json_fails_with_one_error_line(tmp_path, case):
    data = exporter_bad_inputs()[case]
    src = tmp_path / "tokenizer.json"
    if data is not None:
        src.write_bytes(data)
    out = tmp_path / "tokenizer.bin"
    r = subprocess.run(["python3", EXPORT, "--tokenizer", str(src), str(out)],
                       capture_output=True, timeout=120)
    assert_clean_error(r, src)
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_export_is_deterministic(tok_bin, tmp_path):
    out = tmp_path / "again.bin"
    r = subprocess.run(["python3", EXPORT, "--tokenizer", str(TOK_JSON), str(out)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0
    assert out.read_bytes() == tok_bin.read_bytes()
    assert out.read_bytes()[:8] == b"HLAT" + struct.pack("<I", 1)


def test_export_accepts_old_serialisation_and_pair_merges(tok_bin, tmp_path):
    # checkpoint dirs ship the old serialisation (Prepend+Replace normalizer, no
    # pre-tokenizer) and newer tokenizers write merges as [left, right] pairs:
    # both must give the same tokenizer.bin
    d = good_json()
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    d["pre_tokenizer"] = None
    d["model"]["merges"] = [m.split(" ") for m in d["model"]["merges"]]
    src, out = tmp_path / "tokenizer.json", tmp_path / "old.bin"
    src.write_text(json.dumps(d), encoding="utf-8")
    r = subprocess.run(["python3", EXPORT, "--tokenizer", str(src), str(out)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert out.read_bytes() == tok_bin.read_bytes()
