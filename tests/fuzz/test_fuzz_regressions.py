"""Builds each libFuzzer harness in tests/fuzz/ and runs it once over its seed corpus
and its regressions folder (`./harness corpus/<h> regressions/<h> -runs=0`): every
input must be handled (exit 0). Skipped when clang is not installed.
A crash the fuzzers found goes into regressions/<h>/ once run.c is fixed, so this
keeps it fixed."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HARNESSES = ["fuzz_model_header", "fuzz_tokenizer_load", "fuzz_tokenizer_encode", "fuzz_prompt_args"]
CLANG = shutil.which(os.environ.get("CLANG", "clang")) or shutil.which("clang-14")
CFLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-DHLA_FUZZ",
          "-Wno-unused-function"]


def _supports_libfuzzer():
    if not CLANG:
        return False
    r = subprocess.run([CLANG, "-fsanitize=fuzzer", "-x", "c", "-", "-o", os.devnull],
                       input=b"#include <stdint.h>\n#include <stddef.h>\n"
                             b"int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n",
                       capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _supports_libfuzzer(), reason="clang with libFuzzer not installed")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-build")


@pytest.mark.parametrize("harness", HARNESSES)
def test_corpus_and_regressions(harness, build_dir):
    exe = str(build_dir / harness)
    subprocess.run([CLANG, *CFLAGS, f'-DHLA_TOKENIZER_DEFAULT="{ROOT}/tokenizer.bin"', "-o", exe,
                    os.path.join(HERE, harness + ".c"), "-lm", "-lpthread"], check=True, capture_output=True)
    dirs = [os.path.join(HERE, "corpus", harness)]
    reg = os.path.join(HERE, "regressions", harness)
    if os.path.isdir(reg) and any(not f.startswith(".") for f in os.listdir(reg)):
        dirs.append(reg)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1", HLA_TOKENIZER=os.path.join(ROOT, "tokenizer.bin"))
    r = subprocess.run([exe, *dirs, "-runs=0", "-rss_limit_mb=2048", "-timeout=20"], capture_output=True,
                       text=True, env=env, timeout=120, cwd=str(build_dir))
    assert r.returncode == 0, f"{harness} failed on its corpus/regressions:\n{r.stderr[-4000:]}"
