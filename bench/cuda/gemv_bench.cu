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
   `gemv_bench persist`: the chain with a real data flow, as run_cuda.cu runs it and as one
   persistent kernel (below).
   Results: bench/cuda/gemv_experiments_h200.log. */
#include "../../run_cuda.cu"
#include <vector>

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

/* `gemv_bench persist` (2026-12-03, twenty-first session): a persistent-kernel ("megakernel") form of the
   decode products, measured against run_cuda.cu's and not used by it (gemv log section 32). The same 24
   layers x 4 bf16 products as `chain`, with a real data flow (each product's input is the one before's
   output: in_proj on h with its RMSNorm, o_proj on the first 2048 of its output with a group norm over
   256 gated by the next 2048, gate_up with GLU on o_proj's output, down on that; fresh buffers per
   layer, random weights), run two ways, their outputs compared:
     ref:     run_cuda.cu's matmul per product, one graph of programmatic dependents (as decode);
     persist: ONE persistent kernel, one block of 16 warps per SM, walking all 96 products. Block b owns a
              contiguous range of every product's rows, its warp w the rows w, w + 16, ... of it. Each
              warp streams its rows in pieces of <= 4 KB through its own ring of PERSIST_SLOTS pieces in
              shared memory, copied by the bulk-copy engine (cp.async.bulk, lane 0 asking, completion on
              the slot's mbarrier), summed in gemv_kernel's order (the same numbers bit for bit). Between
              products: a per-product arrival counter (thread 0: fence, atomicAdd, then a spin on
              ld.acquire until every block arrived), then the prologue. mode 1 ("cross"): a warp's ring is
              refilled across product boundaries, the next product's weights requested as soon as a slot
              frees, before its input exists; mode 0 waits for the input first; modes 2, 4, 8 leave out the
              wait between products, the dot products or the prologue, to measure the parts (their outputs
              are wrong by design).
   Measured (H200): persist 42-43 us a layer against ref's 34.2; its parts: streaming alone 24.9 (97% of
   the read kernel's 4.6 TB/s), + dot products 26.4, + prologue 33.6, + the wait between products 43.1. */
#define PERSIST_WARPS 16
#define PERSIST_PIECE 4096
#ifndef PERSIST_SLOTS
#define PERSIST_SLOTS 3
#endif
#define PERSIST_XS_BYTES 22528 // x of up to 5632 columns in xs_index's layout: gemv_x_bytes(DTYPE_BF16, 704), checked in main
struct PersistOp { const uint8_t *w, *w_up; int rows, cols; Prologue p; const float *x; float *out; };
__device__ static unsigned smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ static bool mbar_try(uint64_t *bar, unsigned parity) {
    unsigned ok;
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(ok) : "r"(smem_u32(bar)), "r"(parity) : "memory");
    return ok;
}
__device__ static int ld_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ static void persist_range(const PersistOp &op, int *u0, int *u1) {
    *u0 = (int)((long long)op.rows * blockIdx.x / gridDim.x);
    *u1 = (int)((long long)op.rows * (blockIdx.x + 1) / gridDim.x);
}
// where a warp is in its stream of pieces: product, row, part (GLU: 0 the gate's row, 1 the up's), piece of the row
struct PersistCursor { int op, row, part, piece; };
// the warp's first piece in products i, i + 1, ... (op = n_ops: none left)
__device__ static PersistCursor persist_first(const PersistOp *ops, int n_ops, int i) {
    for (; i < n_ops; i++) {
        int u0, u1;
        persist_range(ops[i], &u0, &u1);
        if (u0 + (int)(threadIdx.x >> 5) < u1) return {i, u0 + (int)(threadIdx.x >> 5), 0, 0};
    }
    return {n_ops, 0, 0, 0};
}
__device__ static int persist_pieces(const PersistOp &op) { return (op.cols * 2 + PERSIST_PIECE - 1) / PERSIST_PIECE; }
__device__ static void persist_advance(const PersistOp *ops, int n_ops, PersistCursor &c) {
    const PersistOp &op = ops[c.op];
    if (++c.piece < persist_pieces(op)) return;
    c.piece = 0;
    if (op.w_up && c.part == 0) { c.part = 1; return; }
    c.part = 0;
    c.row += PERSIST_WARPS;
    int u0, u1;
    persist_range(op, &u0, &u1);
    if (c.row >= u1) c = persist_first(ops, n_ops, c.op + 1);
}
__device__ static int persist_piece_bytes(const PersistOp &op, const PersistCursor &c) {
    return min(PERSIST_PIECE, op.cols * 2 - c.piece * PERSIST_PIECE);
}
__global__ void __launch_bounds__(PERSIST_WARPS * 32, 1) persist_kernel(const PersistOp *ops, int n_ops, int *done, int mode) {
    // mode: 1 cross; for measuring the parts alone, 2 no barrier between products, 4 no dot products, 8 no prologue
    int cross = mode & 1;
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ __align__(8) uint64_t full[PERSIST_WARPS][PERSIST_SLOTS];
    float *xs = (float *)smem;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint8_t *ring = smem + PERSIST_XS_BYTES + (size_t)warp * PERSIST_SLOTS * PERSIST_PIECE;
    uint64_t *bars = full[warp];
    // the warp's producer (lane 0 asks; every lane keeps the cursor) and consumer cursors
    PersistCursor pc = persist_first(ops, n_ops, 0), cc = pc;
    int issued = 0, consumed = 0;
    auto issue = [&](int limit_op) { // the piece at pc into the next slot, if pc is at a product <= limit_op
        if (pc.op >= n_ops || pc.op > limit_op) return false;
        const PersistOp &op = ops[pc.op];
        int bytes = persist_piece_bytes(op, pc), slot = issued % PERSIST_SLOTS;
        const uint8_t *src = (pc.part ? op.w_up : op.w) + (size_t)pc.row * op.cols * 2 + (size_t)pc.piece * PERSIST_PIECE;
        if (lane == 0) {
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bars[slot])), "r"(bytes) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(smem_u32(ring + slot * PERSIST_PIECE)), "l"(src), "r"(bytes), "r"(smem_u32(&bars[slot])) : "memory");
        }
        issued++;
        persist_advance(ops, n_ops, pc);
        return true;
    };
    if (lane == 0) {
        for (int s = 0; s < PERSIST_SLOTS; s++) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bars[s])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    while (issued < PERSIST_SLOTS && issue(cross ? n_ops : 0)) {}
    float s = 0.0f, gate = 0.0f;
    for (int i = 0; i < n_ops; i++) {
        const PersistOp &op = ops[i];
        if (i > 0 && !(mode & 2)) {
            __syncthreads(); // every warp's outputs of product i - 1 are written
            if (threadIdx.x == 0) {
                __threadfence();
                atomicAdd(&done[i - 1], 1);
                while (ld_acquire(&done[i - 1]) < (int)gridDim.x) {}
            }
            __syncthreads();
        }
        while (issued - consumed < PERSIST_SLOTS && issue(i)) {} // (cross = 0: product i's first pieces now)
        if (!(mode & 8)) prologue_row(xs, op.x, op.p.gate, op.p, op.cols, 8);
        __syncthreads();
        while (cc.op == i) {
            int slot = consumed % PERSIST_SLOTS, n = persist_piece_bytes(op, cc) / 16, base = cc.piece * (PERSIST_PIECE / 16);
            while (!mbar_try(&bars[slot], (consumed / PERSIST_SLOTS) & 1)) {}
            const int4 *piece = (const int4 *)(ring + slot * PERSIST_PIECE);
            if (!(mode & 4))
                for (int j = lane; j < n; j += 32) s += chunk_dot<DTYPE_BF16>(piece[j], (const float4 *)xs + ((base + j) / 32) * 64 + (base + j) % 32);
            __syncwarp(); // the slot is read: it may be refilled
            consumed++;
            issue(cross ? n_ops : i);
            if (cc.piece == persist_pieces(op) - 1) { // the end of a row
                float y = warp_sum(s);
                s = 0.0f;
                if (op.w_up && cc.part == 0) gate = y;
                else if (lane == 0) op.out[cc.row] = op.w_up ? silu(gate) * y : y;
            }
            persist_advance(ops, n_ops, cc);
        }
    }
}

// a value in [-1, 1) from the element's index and a seed (a hash: the same numbers on every run)
__device__ static float hashed_uniform(size_t i, unsigned seed) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    return (h & 0xffffff) / 8388608.0f - 1.0f;
}
__global__ void fill_bf16_kernel(__nv_bfloat16 *w, size_t n, float scale, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        w[i] = __float2bfloat16(scale * hashed_uniform(i, seed));
}
__global__ void fill_f32_kernel(float *x, size_t n, float base, float scale, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = base + scale * hashed_uniform(i, seed);
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
    if (argc > 1 && !strcmp(argv[1], "persist")) {
        const int L = 24, D = 2048, PROJ = 8204, FF = 5632, SET = 2048 + 8208 + 2048 + 5632; // floats of a layer's activations
        size_t in_b = (size_t)PROJ * D * 2, o_b = (size_t)D * D * 2, ff_b = (size_t)FF * D * 2, layer_bytes = in_b + o_b + 3 * ff_b;
        uint8_t *wbuf;
        CUDA_CHECK(cudaMalloc(&wbuf, layer_bytes * L));
        fill_bf16_kernel<<<1024, 256>>>((__nv_bfloat16 *)wbuf, layer_bytes * L / 2, sqrtf(3.0f / D), 1u); // (down: a little smaller than 1/sqrt(5632) asks)
        float *act[2], *nw1, *nw2, *nwg;
        for (int a = 0; a < 2; a++) CUDA_CHECK(cudaMalloc(&act[a], (size_t)(L + 1) * SET * 4));
        CUDA_CHECK(cudaMalloc(&nw1, D * 4)); CUDA_CHECK(cudaMalloc(&nw2, D * 4)); CUDA_CHECK(cudaMalloc(&nwg, 256 * 4));
        fill_f32_kernel<<<8, 256>>>(nw1, D, 1.0f, 0.1f, 2u); fill_f32_kernel<<<8, 256>>>(nw2, D, 1.0f, 0.1f, 3u); fill_f32_kernel<<<1, 256>>>(nwg, 256, 1.0f, 0.1f, 4u);
        PersistOp ops_host[2][4 * L];
        for (int a = 0; a < 2; a++) {
            CUDA_CHECK(cudaMemset(act[a], 0, (size_t)(L + 1) * SET * 4));
            fill_f32_kernel<<<8, 256>>>(act[a], D, 0.0f, 1.0f, 5u); // h of layer 0, the same in both sets
            for (int l = 0; l < L; l++) {
                float *h = act[a] + (size_t)l * SET, *A = h + 2048, *h2 = A + 8208, *Gb = h2 + 2048, *h_next = h + SET;
                uint8_t *w = wbuf + l * layer_bytes;
                Prologue none = {NORM_NONE};
                ops_host[a][4 * l + 0] = {w, nullptr, PROJ, D, rms(nw1, 1e-6f), h, A};
                ops_host[a][4 * l + 1] = {w + in_b, nullptr, D, D, group_norm(nwg, A + 2048, 256, 1e-6f), A, h2};
                ops_host[a][4 * l + 2] = {w + in_b + o_b, w + in_b + o_b + ff_b, FF, D, rms(nw2, 1e-6f), h2, Gb};
                ops_host[a][4 * l + 3] = {w + in_b + o_b + 2 * ff_b, nullptr, D, FF, none, Gb, h_next};
                for (int k = 0; k < 4; k++) ops_host[a][4 * l + k].p.round_bf16 = 1;
            }
        }
        // ref: run_cuda.cu's matmul per product, one graph of programmatic dependents
        gp->dependent_now = 1;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK(cudaStreamBeginCapture(gp->stream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < 4 * L; i++) {
            const PersistOp &o = ops_host[0][i];
            Prologue p = o.p;
            p.round_bf16 = 0; // (gemv_kernel sets it for bf16)
            GemvJob jobs[2] = {{{o.w, nullptr, DTYPE_BF16, o.rows, o.cols}, o.out, o.w_up ? OUT_GLU : OUT_STORE},
                               {{o.w_up, nullptr, DTYPE_BF16, o.rows, o.cols}, o.out, OUT_STORE}};
            matmul(gp, o.x, o.cols, p, 1, jobs, o.w_up ? 2 : 1);
        }
        CUDA_CHECK(cudaStreamEndCapture(gp->stream, &g));
        CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
        PersistOp *ops_dev;
        int *done;
        CUDA_CHECK(cudaMalloc(&ops_dev, sizeof(ops_host[1])));
        CUDA_CHECK(cudaMemcpy(ops_dev, ops_host[1], sizeof(ops_host[1]), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMalloc(&done, 4 * L * sizeof(int)));
        if (gemv_x_bytes(DTYPE_BF16, 704) != PERSIST_XS_BYTES) fatal("gemv_bench: PERSIST_XS_BYTES is not gemv_x_bytes(DTYPE_BF16, 704)");
        size_t smem = PERSIST_XS_BYTES + (size_t)PERSIST_WARPS * PERSIST_SLOTS * PERSIST_PIECE;
        CUDA_CHECK(cudaFuncSetAttribute(persist_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        cudaFuncAttributes fa;
        CUDA_CHECK(cudaFuncGetAttributes(&fa, persist_kernel));
        auto persist = [&](int mode) {
            CUDA_CHECK(cudaMemsetAsync(done, 0, 4 * L * sizeof(int), gp->stream));
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(gp->n_sms);
            cfg.blockDim = dim3(PERSIST_WARPS * 32);
            cfg.dynamicSmemBytes = smem;
            cfg.stream = gp->stream;
            cudaLaunchAttribute attr;
            attr.id = cudaLaunchAttributeCooperative; // every block resident at once (they wait on each other)
            attr.val.cooperative = 1;
            cfg.attrs = &attr;
            cfg.numAttrs = 1;
            CUDA_CHECK(cudaLaunchKernelEx(&cfg, persist_kernel, (const PersistOp *)ops_dev, 4 * L, done, mode));
        };
        CUDA_CHECK(cudaGraphLaunch(ge, gp->stream));
        persist(1);
        CUDA_CHECK(cudaStreamSynchronize(gp->stream));
        std::vector<float> r((size_t)(L + 1) * SET), q((size_t)(L + 1) * SET);
        CUDA_CHECK(cudaMemcpy(r.data(), act[0], r.size() * 4, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(q.data(), act[1], q.size() * 4, cudaMemcpyDeviceToHost));
        const char *names[4] = {"in_proj", "o_proj", "gate_up", "down"};
        size_t start[4] = {2048, 2048 + 8208, 2048 + 8208 + 2048, SET}, len[4] = {(size_t)PROJ, 2048, (size_t)FF, 2048}; // A, h2, G, the next h
        for (int k = 0; k < 4; k++) {
            double md = 0, mr = 0;
            for (int l = 0; l < L; l++)
                for (size_t i = l * (size_t)SET + start[k]; i < l * (size_t)SET + start[k] + len[k]; i++) { md = fmax(md, fabs(r[i] - q[i])); mr = fmax(mr, fabs(r[i])); }
            printf("persist vs matmul, %-8s outputs of 24 layers: max|diff| %.3g, max|ref| %.3g\n", names[k], md, mr);
            double d0 = 0;
            for (size_t i = start[k]; i < start[k] + len[k]; i++) d0 = fmax(d0, fabs(r[i] - q[i]));
            printf("   layer 0 only: max|diff| %.3g; first values ref %.6g %.6g, persist %.6g %.6g\n", d0, r[start[k]], r[start[k] + 1], q[start[k]], q[start[k] + 1]);
        }
        printf("persist kernel: %d registers, %zu B dynamic + %zu B static shared memory, %d blocks x %d threads, %d slots of %d KB a warp\n",
               fa.numRegs, smem, fa.sharedSizeBytes, gp->n_sms, PERSIST_WARPS * 32, PERSIST_SLOTS, PERSIST_PIECE / 1024);
        float rd = best_ms(gp, 8, [&] { launch(gp, read_kernel, dim3(gp->n_sms * 8), dim3(256), 0, (const int4 *)wbuf, layer_bytes * L / 16, y); });
        printf("read kernel over the same weights: %.1f us a layer (%.0f GB/s)\n", rd * 1e3 / L, layer_bytes * L / (rd * 1e-3) / 1e9);
        for (int round = 0; round < 2; round++) {
            float ref = best_ms(gp, 8, [&] { CUDA_CHECK(cudaGraphLaunch(ge, gp->stream)); });
            printf("round %d, us a layer (GB/s): matmul graph+pdl %.1f (%.0f)", round, ref * 1e3 / L, layer_bytes * L / (ref * 1e-3) / 1e9);
            int modes[] = {1, 0, 3, 11, 15, 7, 13};
            const char *what[] = {"cross", "no-cross", "cross, no barrier", "cross, no barrier or prologue", "stream only", "no dots", "no dots or prologue"};
            for (int m = 0; m < 7; m++) {
                float t = best_ms(gp, 8, [&] { persist(modes[m]); });
                printf("   %s %.1f (%.0f)", what[m], t * 1e3 / L, layer_bytes * L / (t * 1e-3) / 1e9);
            }
            printf("\n");
        }
        return 0;
    }
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
