"""The shipped default model (models/shakespeare_gdn.bin, trained with fla by
train/train_demo.py) against fla's own fp32 validation loss, stored by that script in
models/shakespeare_fla_eval.json (fla computed it on the same fp16-rounded weights and the
same validation ids, in windows of 256 tokens, each from an empty state)."""
import json

from conftest import REPO, run_tool


def test_validation_loss_equals_fla(tmp_path):
    fla = json.loads((REPO / "models" / "shakespeare_fla_eval.json").read_text())["fla_val"]
    out = run_tool(REPO / "models" / "shakespeare_gdn.bin", "--tokens-file", REPO / "models" / "shakespeare_val.ids",
                   "-n", 0, "--ctx", 256, timeout=600).stdout.decode()
    got = dict(kv.split("=") for kv in out.split() if "=" in kv)
    assert int(got["tokens"]) == fla["n_predicted"]
    print(f"ours mean NLL {got['mean_nll']}, fla {fla['mean_ce']:.8f}")
    assert abs(float(got["mean_nll"]) - fla["mean_ce"]) <= 1e-3 * fla["mean_ce"]
    assert abs(float(got["ppl"]) - fla["ppl"]) <= 1e-3 * fla["ppl"]


def test_make_run_prints_text():
    r = run_tool(REPO / "models" / "shakespeare_gdn.bin", "-z", REPO / "tokenizer.bin", "-i", "ROMEO:", "-n", 40,
                 "-s", 1, timeout=120)
    text = r.stdout.decode("utf-8")  # valid UTF-8, or this raises
    assert text.startswith("ROMEO:") and len(text) > 40
