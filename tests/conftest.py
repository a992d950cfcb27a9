"""Shared paths and helpers for the tests. `make test` builds ./run first."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = os.environ.get("HLA_RUN", str(REPO / "run"))
EXPORT = str(REPO / "export.py")
FIXTURES = REPO / "tests" / "fixtures"


def run_tool(*args, check=True, timeout=300, **kw):
    r = subprocess.run([RUN] + [str(a) for a in args], capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"run {' '.join(map(str, args))} failed: {r.stderr.decode(errors='replace')}")
    return r


def export(*args, check=True):
    r = subprocess.run([sys.executable, EXPORT] + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"export.py {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def assert_clean_error(r, mention=None):
    """Failed cleanly: an exit code > 0 (not a signal), exactly one `error:` line on stderr and
    it is the last line (export.py may print what it found first), no traceback, no sanitizer
    report; `mention` (e.g. the file's name) appears in it."""
    err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode > 0, (r.returncode, err)
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), err
    assert "Traceback" not in err and "Sanitizer" not in err
    if mention is not None:
        assert str(mention) in errors[0], errors[0]


def fixture_names():
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.safetensors").exists())


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """fixture name (, dtype) -> path of its export, made once per session."""
    out = tmp_path_factory.mktemp("exported")
    cache = {}

    def get(name, dtype="fp32"):
        if (name, dtype) not in cache:
            path = out / f"{name}.{dtype}.bin"
            export(FIXTURES / name, path, "--dtype", dtype)
            cache[name, dtype] = path
        return cache[name, dtype]
    return get
