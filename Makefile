# hla.c: `make run` builds and talks; `make test` installs the test deps, builds, runs every test.
CC ?= gcc
CFLAGS ?= -O3 -march=native -Wall -Wextra
LDLIBS = -lm -lpthread
# make BLAS=1 ...: prompt batches through OpenBLAS sgemm (apt-get install libopenblas-dev)
ifeq ($(BLAS),1)
CFLAGS += -DUSE_OPENBLAS -I/usr/include/x86_64-linux-gnu
LDLIBS += -lopenblas
endif
# the default model: a 12-layer GatedDeltaNet hybrid trained with fla on Shakespeare (models/MODEL_CARD.md)
MODEL ?= models/shakespeare_gdn.bin
PROMPT ?= ROMEO:
PYTHON ?= python3

.PHONY: run build cuda test-neon test-blas test test-deps asan paper-shapes bench bench-cuda gemv-bench fuzz clean

run: build
	./run $(MODEL) -z tokenizer.bin -i "$(PROMPT)" -n 200 -t 0.8 -p 0.9

# the binary only, without running it
build: run.c
	$(CC) $(CFLAGS) -o run run.c $(LDLIBS)

# make cuda: ./run with the GPU backend (run_cuda.cu) compiled in; `./run MODEL --device cuda`.
# Needs nvcc and the CUDA runtime + cuBLAS; run.c alone still builds without them.
NVCC ?= nvcc
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
CUDA_ARCH ?= -arch=sm_90
CUDA_BIN ?= run
NVCCFLAGS ?=
cuda: run.c run_cuda.cu
	$(CC) $(CFLAGS) -DUSE_CUDA -c -o $(CUDA_BIN).c.o run.c
	$(NVCC) -O3 $(CUDA_ARCH) $(NVCCFLAGS) -c -o $(CUDA_BIN).cu.o run_cuda.cu
	$(CC) -o $(CUDA_BIN) $(CUDA_BIN).c.o $(CUDA_BIN).cu.o -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ $(LDLIBS)
	rm -f $(CUDA_BIN).c.o $(CUDA_BIN).cu.o

run_asan: run.c
	$(CC) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wall -Wextra \
	    -o $@ run.c $(LDLIBS)

test-deps:
	$(PYTHON) -m pip install -q --disable-pip-version-check numpy safetensors tokenizers sentencepiece pytest

# every test on the normal build (and on a CUDA build, which CI can compile but not run on
# a GPU: tests/test_cuda.py), then the C-facing tests again under ASan + UBSan, then the fla
# fixtures through an aarch64 (NEON) build under qemu where the cross tools are installed,
# and through the OpenBLAS build where OpenBLAS is installed
test: test-deps build
	$(MAKE) cuda CUDA_BIN=run_cuda_build
	$(MAKE) gemv-bench
	$(PYTHON) -m pytest -q tests
	$(MAKE) asan
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then $(MAKE) test-neon; \
	else echo "test-neon skipped (no aarch64 cross compiler / qemu: apt-get install gcc-aarch64-linux-gnu qemu-user)"; fi
	@if echo 'int main(void) { return 0; }' | $(CC) -x c - -lopenblas -o /dev/null 2>/dev/null; then $(MAKE) test-blas; \
	else echo "test-blas skipped (no OpenBLAS: apt-get install libopenblas-dev)"; fi

asan: run_asan
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 HLA_RUN=$(CURDIR)/run_asan \
	    $(PYTHON) -m pytest -q tests/test_fla_fixtures.py tests/test_bad_inputs.py tests/test_tokenizer.py tests/test_export_quirks.py tests/test_dtypes.py tests/test_tools.py tests/test_kv_cache.py

# the paper's 340M shape for every kind, random weights (~0.7 GB of disk at a time, a few minutes)
paper-shapes: build test-deps
	$(PYTHON) tests/paper_shape_check.py

# speed against the memory and FMA rooflines at the paper's 340M and 1.3B shapes (tests/paper_shapes/,
# tests/paper_shapes_1.3B/), random weights cached in bench/models/ (~9 GB at 340M, ~27 GB at 1.3B);
# LLAMA2C=DIR also runs karpathy/llama2.c (a checkout outside this repo) on the same Transformer shape;
# BENCH_ARGS: more options of bench/bench.py (e.g. --sizes 340M)
LLAMA2C ?=
BENCH_ARGS ?=
bench/bandwidth: bench/bandwidth.c
	$(CC) -O2 -march=native -o $@ bench/bandwidth.c -lpthread

bench/fma: bench/fma.c
	$(CC) -O2 -march=native -o $@ bench/fma.c -lpthread

bench: build test-deps bench/bandwidth bench/fma
	$(PYTHON) bench/bench.py $(if $(LLAMA2C),--llama2c $(LLAMA2C)) $(BENCH_ARGS)

# the NEON kernels, on an x86 machine: an aarch64 build run through qemu against the fla fixtures
# (apt-get install gcc-aarch64-linux-gnu qemu-user)
test-neon: test-deps
	aarch64-linux-gnu-gcc -O3 -march=armv8.2-a+fp16 -static -Wall -Wextra -o run_arm64 run.c $(LDLIBS)
	printf '#!/bin/sh\nexec qemu-aarch64 $(CURDIR)/run_arm64 "$$@"\n' > run_arm64.sh && chmod +x run_arm64.sh
	HLA_RUN=$(CURDIR)/run_arm64.sh $(PYTHON) -m pytest -q tests/test_fla_fixtures.py tests/test_dtypes.py tests/test_kv_cache.py

# the OpenBLAS build (make BLAS=1: prompt batches through sgemm) against the fla fixtures
test-blas: test-deps
	$(CC) $(CFLAGS) -DUSE_OPENBLAS -I/usr/include/x86_64-linux-gnu -o run_blas run.c $(LDLIBS) -lopenblas
	HLA_RUN=$(CURDIR)/run_blas $(PYTHON) -m pytest -q tests/test_fla_fixtures.py tests/test_dtypes.py

# on the GPU machine, after `make cuda`: decode and prompt speed at the paper's shapes
bench-cuda: test-deps
	$(PYTHON) bench/bench_cuda.py

# the decode GEMV alone against a plain streaming read (bench/cuda/gemv_bench.cu; make test builds it)
gemv-bench: bench/cuda/gemv_bench
bench/cuda/gemv_bench: bench/cuda/gemv_bench.cu run_cuda.cu run.c
	$(NVCC) -O3 $(CUDA_ARCH) $(NVCCFLAGS) -o $@ bench/cuda/gemv_bench.cu -lcublas

# libFuzzer harnesses (clang): each runs FUZZ_SECONDS; results in tests/FUZZING.md
FUZZ_SECONDS ?= 60
fuzz:
	tests/fuzz/run_fuzz.sh $(FUZZ_SECONDS)

clean:
	rm -f run run_asan run_blas run_cuda_build run_arm64 run_arm64.sh bench/bandwidth bench/fma bench/cuda/gemv_bench
