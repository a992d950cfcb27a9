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
