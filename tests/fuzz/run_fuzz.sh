#!/usr/bin/env bash
# Build the libFuzzer harnesses and run each for SECONDS (default 60), one after the
# other, on the seed corpus (tests/fuzz/corpus/<h>, read only) plus a scratch corpus
# outside git ($HLA_FUZZ_DIR/corpus/<h>, where new inputs go). Exits non-zero if a
# harness finds anything (crash, sanitizer report, failed harness check, timeout,
# OOM); reproducers go to $HLA_FUZZ_DIR/artifacts/<h>/<time>/, the log to
# $HLA_FUZZ_DIR/logs/<h>.log.
#   tests/fuzz/run_fuzz.sh [SECONDS_PER_HARNESS]
#   HARNESSES="fuzz_prompt_args" tests/fuzz/run_fuzz.sh 30   # a subset
#   KEEP_GOING=1 tests/fuzz/run_fuzz.sh 480   # -fork=1 -ignore_crashes=1: keep fuzzing after a finding
#   CC=clang HLA_FUZZ_DIR=/tmp/hla-fuzz                      # defaults
set -u
SECONDS_PER=${1:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${HLA_FUZZ_DIR:-/tmp/hla-fuzz}
CC=${CC:-clang}
command -v "$CC" >/dev/null || CC=clang-14
HARNESSES=${HARNESSES:-"fuzz_model_header fuzz_tokenizer_load fuzz_tokenizer_encode fuzz_prompt_args"}
CFLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DHLA_FUZZ -Wall -Wextra -Wno-unused-function"
EXTRA=()
[ "${KEEP_GOING:-0}" = 1 ] && EXTRA=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)

max_len() {
    case $1 in
        fuzz_model_header) echo 65536 ;;      # seeds are 4-20 KB tiny models
        fuzz_tokenizer_load) echo 16384 ;;    # seeds are hand-made 2-3 KB tokenizers
        fuzz_tokenizer_encode) echo 4096 ;;
        *) echo 1024 ;;
    esac
}

mkdir -p "$DIR/build" "$DIR/logs"
status=0
for h in $HARNESSES; do
    echo "== $h: build"
    $CC $CFLAGS -DHLA_TOKENIZER_DEFAULT="\"$ROOT/tokenizer.bin\"" -o "$DIR/build/$h" "$HERE/$h.c" -lm -lpthread || { status=1; continue; }
    art="$DIR/artifacts/$h/$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$DIR/corpus/$h" "$art"
    DICT=(); [ -f "$HERE/$h.dict" ] && DICT=(-dict="$HERE/$h.dict")
    echo "== $h: fuzz ${SECONDS_PER}s, -max_len=$(max_len "$h"), log $DIR/logs/$h.log"
    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
    HLA_TOKENIZER="$ROOT/tokenizer.bin" \
        "$DIR/build/$h" -max_total_time="$SECONDS_PER" -max_len="$(max_len "$h")" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 -artifact_prefix="$art/" "${EXTRA[@]}" "${DICT[@]}" \
        "$DIR/corpus/$h" "$HERE/corpus/$h" >"$DIR/logs/$h.log" 2>&1
    rc=$?
    grep -E "^stat::|DONE|Done [0-9]+ runs|^#[0-9]+: cov|ERROR|SUMMARY|FUZZ CHECK|runtime error" "$DIR/logs/$h.log" | tail -12
    found=$(ls -A "$art")
    if [ $rc -ne 0 ] || [ -n "$found" ]; then
        echo "== $h: FAILED (exit $rc); reproducer(s) in $art: $(echo $found)"
        status=1
    else
        rmdir "$art"
    fi
done
exit $status
