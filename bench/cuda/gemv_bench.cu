/* make gemv-bench (on the GPU machine: bench/cuda/gemv_bench): run_cuda.cu's decode GEMV (matmul
   with T = 1, prologue and epilogue included) on the 1.3B GatedDeltaNet 6:1 shapes, against a
   kernel that only streams the same bytes (the bandwidth such a launch can reach). Each shape
   has 24 copies of its matrices (more than the 50 MB L2), taken in turn, 96 launches per
   timing, best of 4: launched one by one, captured in a graph, and in a graph as programmatic
   dependents (as in a decode step). Weights and x are zeros: only the time is of interest.
   `gemv_bench chain`: instead, 24 layers of a 1.3B GatedDeltaNet layer's four products in turn
   (in_proj, o_proj 2048x2048 with its group norm over heads of 256, gate_up, down: 111 MB a layer;
   120 MB with a 2048x4096 o_proj before 2026-12-01's fifth session), as one graph of dependents, with the
   HLA_CUDA_GEMV_BLOCKS setting of run_cuda.cu; GEMV_Q8=1: the same layer with q8 weights.
   GEMV_ONLY=text: only the single shapes whose name contains text (e.g. "q8", "rms").
   Results: bench/cuda/gemv_experiments_h200.log. */
#include "../../run_cuda.cu"

__global__ void read_kernel(const int4 *w, size_t n, float *out) {
    wait_for_inputs();
    int s = 0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        int4 a = __ldg(w + i), b = __ldg(w + i + stride), c = __ldg(w + i + 2 * stride), d = __ldg(w + i + 3 * stride);
        s ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) { int4 a = __ldg(w + i); s ^= a.x ^ a.y ^ a.z ^ a.w; }
    if (s == 0x12345678) out[0] = 1.0f;
}

struct Shape { const char *name; int rows, cols, glu, norm, dtype, group = 0, gated = 1; }; // group: NORM_GROUP's (gated: with silu(gate))

static int env_int(const char *name) { const char *v = getenv(name); return v ? atoi(v) : 0; }

static float *x, *y, *y2, *normw, *gate, *scales; // inputs and outputs, zeros: only the time is of interest

static size_t shape_bytes(const Shape &s) {
    size_t esize = s.dtype == DTYPE_F32 ? 4 : s.dtype == DTYPE_Q8 ? 1 : 2;
    return (size_t)s.rows * s.cols * esize * (s.glu ? 2 : 1);
}

// one product of the shape with the matrices at w (GLU: the up matrix in the second half), as a decode step's
static void product(Gpu *gp, const Shape &s, uint8_t *w) {
    GemvJob jobs[2] = {{{w, scales, s.dtype, s.rows, s.cols}, y, s.glu ? OUT_GLU : OUT_STORE},
                       {{w + shape_bytes(s) / 2, scales, s.dtype, s.rows, s.cols}, y2, OUT_STORE}};
    Prologue p = s.norm == NORM_RMS ? rms(normw, 1e-6f) : s.norm == NORM_GROUP ? group_norm(normw, s.gated ? gate : nullptr, s.group, 1e-6f) : Prologue{NORM_NONE};
    matmul(gp, x, s.cols, p, 1, jobs, s.glu ? 2 : 1);
}

// the best of reps - 1 timings (the first is a warm-up) of what issue() puts on the stream, in ms
template <typename F> static float best_ms(Gpu *gp, int reps, F issue) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int rep = 0; rep < reps; rep++) {
        CUDA_CHECK(cudaEventRecord(e0, gp->stream));
        issue();
        CUDA_CHECK(cudaEventRecord(e1, gp->stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep && ms < best) best = ms;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    return best;
}

int main(int argc, char **argv) {
    Gpu gpv = {};
    Gpu *gp = &gpv;
    CUDA_CHECK(cudaStreamCreate(&gp->stream));
    CUDA_CHECK(cudaDeviceGetAttribute(&gp->n_sms, cudaDevAttrMultiProcessorCount, 0));
    gp->gemv_blocks_per_sm = env_int("HLA_CUDA_GEMV_BLOCKS");
    if (!gemv_reserve_smem(gp, 5632)) fatal("gemv_bench: the rings do not fit in shared memory");
    Shape shapes[] = {{"in_proj 8204x2048 rms", 8204, 2048, 0, NORM_RMS, DTYPE_BF16}, {"gate_up 2x5632x2048 rms", 5632, 2048, 1, NORM_RMS, DTYPE_BF16},
                      {"down 2048x5632", 2048, 5632, 0, NORM_NONE, DTYPE_BF16}, {"o_proj 2048x2048 group", 2048, 2048, 0, NORM_GROUP, DTYPE_BF16, 256},
                      {"o_proj 2048x4096 group", 2048, 4096, 0, NORM_GROUP, DTYPE_BF16, 512},
                      {"o_proj 2048x2048 group ungated", 2048, 2048, 0, NORM_GROUP, DTYPE_BF16, 256, 0},
                      {"o_proj 2048x2048 rms", 2048, 2048, 0, NORM_RMS, DTYPE_BF16}, {"o_proj 2048x2048 no-norm", 2048, 2048, 0, NORM_NONE, DTYPE_BF16},
                      {"o_proj 2048x2048 one group", 2048, 2048, 0, NORM_GROUP, DTYPE_BF16, 2048, 0}, // HGRN2's output norm
                      {"o_proj 2048x2048 one group gated", 2048, 2048, 0, NORM_GROUP, DTYPE_BF16, 2048},  // HGRN's
                      {"in_proj no-norm", 8204, 2048, 0, NORM_NONE, DTYPE_BF16}, {"o_proj no-norm", 2048, 4096, 0, NORM_NONE, DTYPE_BF16},
                      {"gate_up q8", 5632, 2048, 1, NORM_RMS, DTYPE_Q8}, {"down q8", 2048, 5632, 0, NORM_NONE, DTYPE_Q8},
                      {"in_proj q8", 8204, 2048, 0, NORM_RMS, DTYPE_Q8}, {"o_proj group q8", 2048, 2048, 0, NORM_GROUP, DTYPE_Q8, 256},
                      {"gate_up fp32", 5632, 2048, 1, NORM_RMS, DTYPE_F32}, {"down fp32", 2048, 5632, 0, NORM_NONE, DTYPE_F32}};
    CUDA_CHECK(cudaMalloc(&x, 8192 * 4)); CUDA_CHECK(cudaMalloc(&normw, 8192 * 4)); CUDA_CHECK(cudaMalloc(&gate, 8192 * 4));
    CUDA_CHECK(cudaMalloc(&y, 16384 * 4)); CUDA_CHECK(cudaMalloc(&y2, 16384 * 4));
    CUDA_CHECK(cudaMalloc(&scales, (size_t)8204 * 5632 / 64 * 4)); CUDA_CHECK(cudaMemset(scales, 0, (size_t)8204 * 5632 / 64 * 4)); // (the largest rows x cols / 64)
    CUDA_CHECK(cudaMemset(x, 0, 8192 * 4)); CUDA_CHECK(cudaMemset(normw, 0, 8192 * 4)); CUDA_CHECK(cudaMemset(gate, 0, 8192 * 4));

    const int NB = 24, ITER = 96;
    if (argc > 1 && !strcmp(argv[1], "chain")) {
        Shape layer[] = {shapes[0], shapes[3], shapes[1], shapes[2]};
        if (env_int("GEMV_Q8")) for (Shape &s : layer) s.dtype = DTYPE_Q8; // GEMV_Q8=1: the same layer in q8
        size_t layer_bytes = 0, off[4];
        for (int i = 0; i < 4; i++) { off[i] = layer_bytes; layer_bytes += shape_bytes(layer[i]); }
        uint8_t *buf;
        CUDA_CHECK(cudaMalloc(&buf, layer_bytes * NB));
        CUDA_CHECK(cudaMemset(buf, 0, layer_bytes * NB));
        gp->dependent_now = 1;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK(cudaStreamBeginCapture(gp->stream, cudaStreamCaptureModeThreadLocal));
        for (int l = 0; l < NB; l++)
            for (int i = 0; i < 4; i++) product(gp, layer[i], buf + l * layer_bytes + off[i]);
        CUDA_CHECK(cudaStreamEndCapture(gp->stream, &g));
        CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
        float best = best_ms(gp, 8, [&] { CUDA_CHECK(cudaGraphLaunch(ge, gp->stream)); });
        printf("chain%s warps=%d (x2 from 2048 columns) stages=%d unroll=%d blocks=%d: %.1f us a layer, %.0f GB/s\n", env_int("GEMV_Q8") ? " q8" : "", GEMV_WARPS, GEMV_STAGES, GEMV_UNROLL, gp->gemv_blocks_per_sm,
               best * 1e3 / NB, layer_bytes * NB / (best * 1e-3) / 1e9);
        return 0;
    }
    for (const Shape &s : shapes) {
        if (getenv("GEMV_ONLY") && !strstr(s.name, getenv("GEMV_ONLY"))) continue; // GEMV_ONLY=text: the shapes named with it
        size_t bytes = shape_bytes(s);
        uint8_t *buf;
        CUDA_CHECK(cudaMalloc(&buf, bytes * NB));
        CUDA_CHECK(cudaMemset(buf, 0, bytes * NB));
        for (int mode = 0; mode < 4; mode++) { // 0 gemv plain, 1 gemv graph+pdl, 2 read graph+pdl, 3 gemv graph
            int is_read = mode == 2, graph = mode >= 1;
            gp->dependent_now = mode == 1 || mode == 2;
            auto one = [&](int i) {
                uint8_t *w = buf + (size_t)(i % NB) * bytes;
                if (is_read) launch(gp, read_kernel, dim3(gp->n_sms * 8), dim3(256), 0, (const int4 *)w, bytes / 16, y);
                else product(gp, s, w);
            };
            cudaGraphExec_t ge = nullptr;
            if (graph) {
                cudaGraph_t g;
                CUDA_CHECK(cudaStreamBeginCapture(gp->stream, cudaStreamCaptureModeThreadLocal));
                for (int i = 0; i < ITER; i++) one(i);
                CUDA_CHECK(cudaStreamEndCapture(gp->stream, &g));
                CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
            }
            float best = best_ms(gp, 5, [&] {
                if (graph) CUDA_CHECK(cudaGraphLaunch(ge, gp->stream));
                else for (int i = 0; i < ITER; i++) one(i);
            });
            static const char *names[] = {"gemv plain", "gemv graph+pdl", "read graph+pdl", "gemv graph"};
            double us = best * 1e3 / ITER;
            printf("%-26s %-16s %6.1f MB %7.2f us %7.0f GB/s\n", s.name, names[mode], bytes / 1e6, us, bytes / us / 1e3);
        }
        CUDA_CHECK(cudaFree(buf));
    }
    return 0;
}
