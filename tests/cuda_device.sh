#!/bin/bash
# The GPU half of the tests, for the lent GPU machine (CI has no GPU): build ./run with CUDA
# (make cuda) and run tests/test_cuda.py against it; the log goes to $OUT/test_cuda.log.
# Extra arguments go to pytest (e.g. -k "not paper_shape"; or -n 8 with pytest-xdist carried in
# .whl: `pip download --no-deps -d .whl pytest einops iniconfig pluggy packaging pytest-xdist
# execnet`; 2 minutes instead of 8). -rP puts each passed test's printed gaps in the log, with
# or without xdist.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hla_cuda}
mkdir -p "$OUT"
if [ -d .whl ]; then # wheels carried from the dev machine (pytest, einops), see tests/make_fixtures.py
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site
fi
nvidia-smi -L
make cuda >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
HLA_RUN=$PWD/run PYTHONUNBUFFERED=1 python3 -m pytest -q -rP -p no:cacheprovider tests/test_cuda.py "$@" 2>&1 | tee "$OUT/test_cuda.log"
