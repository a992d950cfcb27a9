/* hla.c: inference for hybrid linear-attention language models, in one C file.

   The models are those of "A Systematic Analysis of Hybrid Linear Attention"
   (arXiv 2507.06457), trained with flash-linear-attention (fla): a stack of layers,
   each either a recurrent linear-attention layer with a fixed-size state (HGRN, HGRN2,
   GLA, RetNet, DeltaNet, GatedDeltaNet) or softmax attention with RoPE and a KV cache.

   Read it top to bottom: the file format and config; the weights; the run state
   (recurrent states, conv caches, KV caches); the building blocks; one function per
   layer kind, each with its recurrence written above it; forward; the tokenizer; the
   sampler; the modes (generate, logits, info); the command line.

   Every number this file computes is checked against fla itself (tests/). */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef HLA_FUZZ // fuzz harnesses (tests/fuzz/) include this file and catch fatal() here
#include <setjmp.h>
static jmp_buf fuzz_fatal_jump;
#endif

// Every bad input ends here: one line naming the file and what is wrong, exit code 1.
static void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
#ifdef HLA_FUZZ
    (void)fmt;
    va_end(ap);
    longjmp(fuzz_fatal_jump, 1);
#else
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
#endif
}

static void *xcalloc(size_t n, size_t size) {
    void *p = (n && size) ? calloc(n, size) : calloc(1, 1);
    if (!p) fatal("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

// ----------------------------------------------------------------------------
// File format and config
//
// A weight file is: a 256-byte header (magic "HLAM", version, sizes, the config),
// one byte per layer naming its kind (padded to 8), a table of tensors (128 bytes
// each: name, dtype, shape, offset, size), then the tensors, each 64-byte aligned.
// All integers little-endian; offsets and sizes 64-bit. export.py writes it; the
// README documents it. We validate all of it against the file size first.

#define MODEL_MAGIC "HLAM"
#define MODEL_VERSION 1u
#define HEADER_BYTES 256
#define Q8_GROUP 64

enum { KIND_ATTENTION, KIND_HGRN, KIND_HGRN2, KIND_GLA, KIND_RETNET, KIND_DELTA_NET, KIND_GATED_DELTANET, N_KINDS };
static const char *kind_names[N_KINDS] = {"attention", "hgrn", "hgrn2", "gla", "retnet", "delta_net", "gated_deltanet"};
static const char kind_letters[N_KINDS] = {'A', 'H', '2', 'G', 'R', 'D', 'N'};

enum { DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q8, N_DTYPES };

// config flags
#define FLAG_SHORT_CONV  (1 << 0) // q/k/v (or i/f) short convolutions
#define FLAG_LOWER_BOUND (1 << 1) // HGRN/HGRN2 per-layer forget-gate lower bounds
#define FLAG_OUTPUT_GATE (1 << 2) // GLA/RetNet use_output_gate, DeltaNet/GDN use_gate
#define FLAG_BETA        (1 << 3) // DeltaNet use_beta (GDN always)
#define FLAG_NEG_EIGVAL  (1 << 4) // beta in (0, 2)
#define FLAG_QK_L2       (1 << 5) // DeltaNet/GDN: L2-normalise q and k
#define FLAG_QK_SUM      (1 << 6) // DeltaNet qk_norm='sum'

// elementwise maps on q and k (GLA/RetNet feature_map, DeltaNet qk_activation)
enum { FMAP_IDENTITY, FMAP_SILU, FMAP_RELU, FMAP_ELU_P1, FMAP_SIGMOID, N_FMAPS };

typedef struct {
    char magic[4];
    uint32_t version, header_bytes, n_tensors;
    int32_t dim, n_layers, vocab_size, hidden_dim, max_pos, tie_embeddings;
    float norm_eps, out_norm_eps;  // block norms; HGRN2's output norm (1e-5), else = norm_eps
    int32_t flags, conv_size, feature_map;
    int32_t lin_q_heads, lin_k_heads, lin_v_heads, lin_head_k_dim, lin_head_v_dim;
    float clamp_min;               // GLA: lower clamp of the log decay (-inf: none)
    int32_t gate_low_rank;         // GLA: rank of the gk projection (16)
    float gate_normalizer;         // GLA: log decay = logsigmoid(.) / 16
    int32_t attn_heads, attn_kv_heads, attn_head_dim, attn_qkv_bias, attn_window;
    float rope_theta;
    int32_t bos_id, eos_id;
} Config;                          // the header after the magic, exactly as stored

typedef struct {
    char name[64];
    uint32_t dtype, ndim;
    uint64_t shape[4];
    uint64_t offset, nbytes;
    uint8_t pad[8];
} TensorEntry;                     // 128 bytes in the file

// ----------------------------------------------------------------------------
// Weights

typedef struct {
    const void *data;     // rows x cols, row-major, in dtype
    const float *scales;  // q8 only: one scale per group of 64 along each row
    int dtype, rows, cols;
} Matrix;

typedef struct {
    int kind;
    const float *attn_norm, *mlp_norm;
    // attention and the linear kinds share the names fla gives them
    Matrix q_proj, k_proj, v_proj, o_proj, g_proj;
    Matrix i_proj, f_proj;              // HGRN, HGRN2
    Matrix a_proj, b_proj;              // GatedDeltaNet (a), DeltaNet/GDN (b: beta)
    Matrix gk_proj0, gk_proj1;          // GLA low-rank decay projection
    const float *gk_bias;
    const float *q_bias, *k_bias, *v_bias; // attention with qkv_bias
    const float *conv_w[3];             // short convolutions [C][K], in fla's order
    int conv_channels[3];
    const float *out_norm;              // g_norm / o_norm
    const float *A_log, *dt_bias;       // GatedDeltaNet decay
    float *lower_bound;                 // HGRN/HGRN2: [dim], computed at load
    float *log_lower_bound, *log1m_lower_bound; // log(lb), log(1 - lb): the forget gate's constants (one block)
    Matrix mlp_gate, mlp_up, mlp_down;
} LayerWeights;

typedef struct {
    Config c;
    const char *path;
    uint8_t *kinds;          // per layer
    Matrix embeddings, lm_head;
    const float *final_norm;
    LayerWeights *layers;
    float *rope_inv_freq_attn, *rope_inv_freq_retnet;
    float *retnet_gammas;    // [lin_q_heads][head_k_dim]: RetNet head h's decay 1 - 2^(-5-h) in every column
    void *map;               // the mmapped file
    size_t map_bytes;
    const TensorEntry *table;
    uint64_t weight_bytes, n_params;
} Model;

// floats of recurrent state in one layer of a linear kind (the layout is in the run state below)
static size_t linear_state_floats(const Config *c, int kind) {
    switch (kind) {
    case KIND_HGRN: return (size_t)c->lin_head_v_dim;
    case KIND_GLA: return (size_t)c->lin_k_heads * c->lin_head_v_dim * c->lin_head_k_dim; // one per kv head
    case KIND_HGRN2: case KIND_RETNET: return (size_t)c->lin_q_heads * c->lin_head_v_dim * c->lin_head_k_dim;
    case KIND_DELTA_NET: case KIND_GATED_DELTANET: return (size_t)c->lin_v_heads * c->lin_head_v_dim * c->lin_head_k_dim;
    default: return 0;
    }
}

// run_cuda.cu includes the lines above for these types (HLA_TYPES_ONLY), and the run state's
// below; the CPU program follows
#ifndef HLA_TYPES_ONLY
_Static_assert(sizeof(Config) <= HEADER_BYTES, "header");
_Static_assert(sizeof(TensorEntry) == 128, "tensor entry");

static int n_threads = 1;
static int verbose = 0;     // --verbose: per-layer state norms after every forward

static int checked_dim(const char *path, const char *what, int v, int lo, int hi) {
    if (v < lo || v > hi) fatal("%s: header field %s = %d is out of range [%d, %d]", path, what, v, lo, hi);
    return v;
}

static const TensorEntry *find_tensor(const Model *m, const char *name) {
    for (uint32_t i = 0; i < m->c.n_tensors; i++)
        if (strncmp(m->table[i].name, name, sizeof m->table[i].name) == 0) return &m->table[i];
    return NULL;
}

// Look a tensor up by name and check its shape: a misnamed or misshaped tensor fails
// loudly instead of silently shifting every pointer after it.
static const TensorEntry *get_tensor(const Model *m, const char *name, int ndim, uint64_t d0, uint64_t d1) {
    const TensorEntry *t = find_tensor(m, name);
    if (!t) fatal("%s: missing tensor %s", m->path, name);
    if ((int)t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        fatal("%s: tensor %s has shape [%llu x %llu], expected [%llu x %llu]", m->path, name,
              (unsigned long long)t->shape[0], (unsigned long long)(t->ndim > 1 ? t->shape[1] : 1),
              (unsigned long long)d0, (unsigned long long)(ndim > 1 ? d1 : 1));
    return t;
}

static const float *get_vector(const Model *m, const char *name, uint64_t n) {
    const TensorEntry *t = get_tensor(m, name, 1, n, 1);
    if (t->dtype != DTYPE_F32) fatal("%s: tensor %s must be fp32", m->path, name);
    return (const float *)((const uint8_t *)m->map + t->offset);
}

static const float *get_conv(const Model *m, const char *name, int channels, int K) {
    const TensorEntry *t = get_tensor(m, name, 2, (uint64_t)channels, (uint64_t)K);
    if (t->dtype != DTYPE_F32) fatal("%s: tensor %s must be fp32", m->path, name);
    return (const float *)((const uint8_t *)m->map + t->offset);
}

static Matrix get_matrix(const Model *m, const char *name, int rows, int cols) {
    const TensorEntry *t = get_tensor(m, name, 2, (uint64_t)rows, (uint64_t)cols);
    Matrix w = {(const uint8_t *)m->map + t->offset, NULL, (int)t->dtype, rows, cols};
    if (t->dtype == DTYPE_Q8) w.scales = (const float *)((const uint8_t *)w.data + (size_t)rows * cols);
    return w;
}

static const char *layer_name(char *buf, int layer, const char *suffix) {
    snprintf(buf, 64, "layers.%d.%s", layer, suffix);
    return buf;
}

static uint64_t dtype_bytes(int dtype, uint64_t rows, uint64_t cols) {
    uint64_t n = rows * cols;
    switch (dtype) {
    case DTYPE_F32: return 4 * n;
    case DTYPE_F16: case DTYPE_BF16: return 2 * n;
    default: return n + 4 * (n / Q8_GROUP);
    }
}

static void load_model(Model *m, const char *path) {
    memset(m, 0, sizeof *m);
    m->path = path;
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatal("%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) fatal("%s: not a regular file", path);
    uint64_t size = (uint64_t)st.st_size;
    if (size < HEADER_BYTES) fatal("%s: too small to be a model file (%llu bytes)", path, (unsigned long long)size);
    m->map_bytes = (size_t)size;
    m->map = mmap(NULL, m->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->map == MAP_FAILED) fatal("%s: mmap failed (%s)", path, strerror(errno));
#ifdef MADV_HUGEPAGE
    // a hint: weights read from disk come into the page cache as 2 MB folios, each mapped by one
    // TLB entry, where the kernel and file system can (Linux 6.x, ext4 / xfs large folios). Zen 5
    // VM, 340M q8 file read cold: 376 of its 379 MiB mapped that way, 292 MiB without the hint.
    madvise(m->map, m->map_bytes, MADV_HUGEPAGE);
#endif
    Config *c = &m->c;
    memcpy(c, m->map, sizeof *c);
    if (memcmp(c->magic, MODEL_MAGIC, 4) != 0) fatal("%s: not an hla.c model file (bad magic)", path);
    if (c->version != MODEL_VERSION)
        fatal("%s: model file version %u, this run reads version %u (re-export it)", path, c->version, MODEL_VERSION);

    // the config: every size within reason before any arithmetic with it
    checked_dim(path, "dim", c->dim, 1, 1 << 16);
    checked_dim(path, "n_layers", c->n_layers, 1, 1024);
    checked_dim(path, "vocab_size", c->vocab_size, 1, 1 << 22);
    checked_dim(path, "hidden_dim", c->hidden_dim, 1, 1 << 20);
    checked_dim(path, "max_pos", c->max_pos, 1, 1 << 24);
    if (!(c->norm_eps > 0 && c->norm_eps < 1) || !(c->out_norm_eps > 0 && c->out_norm_eps < 1))
        fatal("%s: header field norm_eps out of range", path);
    uint64_t table_off = HEADER_BYTES + ((uint64_t)c->n_layers + 7) / 8 * 8;
    if (c->n_tensors < 1 || c->n_tensors > 100000) fatal("%s: header field n_tensors = %u is absurd", path, c->n_tensors);
    if (c->header_bytes % 64 || c->header_bytes < table_off + (uint64_t)c->n_tensors * sizeof(TensorEntry) ||
        c->header_bytes > size)
        fatal("%s: header field header_bytes = %u does not fit the file (%llu bytes)", path, c->header_bytes,
              (unsigned long long)size);
    m->kinds = (uint8_t *)m->map + HEADER_BYTES;
    int has_attn = 0, has_linear = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (m->kinds[l] >= N_KINDS) fatal("%s: layer %d has unknown kind %d", path, l, m->kinds[l]);
        if (m->kinds[l] == KIND_ATTENTION) has_attn = 1; else has_linear = 1;
    }
    // fields of a layer kind the model does not have are not used: zero them, so that no
    // size computed from them (buffer sizes below) can come from garbage
    if (!has_attn) c->attn_heads = c->attn_kv_heads = c->attn_head_dim = c->attn_window = c->attn_qkv_bias = 0;
    if (!has_linear) {
        c->lin_q_heads = c->lin_k_heads = c->lin_v_heads = c->lin_head_k_dim = c->lin_head_v_dim = 0;
        c->flags = c->conv_size = c->feature_map = c->gate_low_rank = 0;
    }
    if (!(c->flags & FLAG_SHORT_CONV)) c->conv_size = 0;
    if (!memchr(m->kinds, KIND_GLA, (size_t)c->n_layers)) c->gate_low_rank = 0;
    if (has_attn) {
        checked_dim(path, "attn_heads", c->attn_heads, 1, 4096);
        checked_dim(path, "attn_kv_heads", c->attn_kv_heads, 1, c->attn_heads);
        checked_dim(path, "attn_head_dim", c->attn_head_dim, 2, 4096);
        if (c->attn_heads % c->attn_kv_heads || c->attn_head_dim % 2)
            fatal("%s: attention heads %d / kv heads %d / head dim %d are inconsistent", path, c->attn_heads,
                  c->attn_kv_heads, c->attn_head_dim);
        checked_dim(path, "attn_window", c->attn_window, 0, 1 << 24);
        if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) fatal("%s: header field rope_theta out of range", path);
    }
    if (has_linear) {
        checked_dim(path, "lin_q_heads", c->lin_q_heads, 1, 4096);
        checked_dim(path, "lin_k_heads", c->lin_k_heads, 1, 4096);
        checked_dim(path, "lin_v_heads", c->lin_v_heads, 1, 4096);
        checked_dim(path, "lin_head_k_dim", c->lin_head_k_dim, 1, 1 << 16);
        checked_dim(path, "lin_head_v_dim", c->lin_head_v_dim, 1, 1 << 16);
        checked_dim(path, "feature_map", c->feature_map, 0, N_FMAPS - 1);
        if (c->flags & FLAG_SHORT_CONV) checked_dim(path, "conv_size", c->conv_size, 1, 64);
        if ((uint64_t)c->lin_q_heads * c->lin_head_k_dim > (1u << 20) ||
            (uint64_t)c->lin_v_heads * c->lin_head_v_dim > (1u << 20) ||
            (uint64_t)c->lin_q_heads * c->lin_head_v_dim > (1u << 20))
            fatal("%s: linear-attention dims are absurd", path);
    }

    // the tensor table: names terminated, dtypes known, data inside the file, sizes = shapes
    m->table = (const TensorEntry *)((uint8_t *)m->map + table_off);
    for (uint32_t i = 0; i < c->n_tensors; i++) {
        const TensorEntry *t = &m->table[i];
        if (memchr(t->name, 0, sizeof t->name) == NULL) fatal("%s: tensor %u has an unterminated name", path, i);
        if (t->dtype >= N_DTYPES || t->ndim < 1 || t->ndim > 2)
            fatal("%s: tensor %s has bad dtype %u or ndim %u", path, t->name, t->dtype, t->ndim);
        uint64_t rows = t->shape[0], cols = t->ndim == 2 ? t->shape[1] : 1;
        if (rows == 0 || cols == 0 || rows > (1u << 24) || cols > (1u << 24))
            fatal("%s: tensor %s has absurd shape", path, t->name);
        if (t->dtype == DTYPE_Q8 && (t->ndim != 2 || cols % Q8_GROUP))
            fatal("%s: q8 tensor %s must be a matrix with rows of a multiple of %d", path, t->name, Q8_GROUP);
        if (t->nbytes != dtype_bytes((int)t->dtype, rows, cols))
            fatal("%s: tensor %s is %llu bytes, its shape needs %llu", path, t->name, (unsigned long long)t->nbytes,
                  (unsigned long long)dtype_bytes((int)t->dtype, rows, cols));
        if (t->offset % 64 || t->offset < c->header_bytes || t->offset > size || t->nbytes > size - t->offset)
            fatal("%s: tensor %s lies outside the file (truncated?)", path, t->name);
        m->weight_bytes += t->nbytes;
        m->n_params += rows * cols;
    }

    // map the tensors by name, checking each shape against the config
    int D = c->dim, L = c->n_layers, V = c->vocab_size;
    char name[64];
    m->embeddings = get_matrix(m, "embeddings", V, D);
    m->lm_head = c->tie_embeddings ? m->embeddings : get_matrix(m, "lm_head", V, D);
    m->final_norm = get_vector(m, "norm", (uint64_t)D);
    m->layers = xcalloc((size_t)L, sizeof(LayerWeights));
    const float *lower_bounds = NULL;
    if ((c->flags & FLAG_LOWER_BOUND)) {
        const TensorEntry *t = get_tensor(m, "lower_bounds", 2, (uint64_t)L, (uint64_t)D);
        lower_bounds = (const float *)((const uint8_t *)m->map + t->offset);
    }
    int K = c->conv_size, conv = (c->flags & FLAG_SHORT_CONV) != 0;
    int nq = c->lin_q_heads, nk = c->lin_k_heads, nv = c->lin_v_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim;
    for (int l = 0; l < L; l++) {
        LayerWeights *w = &m->layers[l];
        w->kind = m->kinds[l];
        w->attn_norm = get_vector(m, layer_name(name, l, "attn_norm"), (uint64_t)D);
        w->mlp_norm = get_vector(m, layer_name(name, l, "mlp_norm"), (uint64_t)D);
        w->mlp_gate = get_matrix(m, layer_name(name, l, "mlp.gate_proj"), c->hidden_dim, D);
        w->mlp_up = get_matrix(m, layer_name(name, l, "mlp.up_proj"), c->hidden_dim, D);
        w->mlp_down = get_matrix(m, layer_name(name, l, "mlp.down_proj"), D, c->hidden_dim);
#define MAT(field, nm, r, cc) w->field = get_matrix(m, layer_name(name, l, "attn." nm ".weight"), (r), (cc))
#define VEC(field, nm, n) w->field = get_vector(m, layer_name(name, l, "attn." nm), (uint64_t)(n))
#define CONV(i, nm, ch) (w->conv_channels[i] = (ch), w->conv_w[i] = get_conv(m, layer_name(name, l, "attn." nm ".weight"), (ch), K))
        switch (w->kind) {
        case KIND_ATTENTION: {
            int hd = c->attn_head_dim, qd = c->attn_heads * hd, kvd = c->attn_kv_heads * hd;
            MAT(q_proj, "q_proj", qd, D); MAT(k_proj, "k_proj", kvd, D); MAT(v_proj, "v_proj", kvd, D);
            MAT(o_proj, "o_proj", D, qd);
            if (c->attn_qkv_bias) { VEC(q_bias, "q_proj.bias", qd); VEC(k_bias, "k_proj.bias", kvd); VEC(v_bias, "v_proj.bias", kvd); }
            break;
        }
        case KIND_HGRN: { // heads = 1, dk = dv = I
            int I = dv;
            MAT(i_proj, "i_proj", I, D); MAT(f_proj, "f_proj", I, D); MAT(g_proj, "g_proj", I, D);
            if (conv) { CONV(0, "i_conv1d", I); CONV(1, "f_conv1d", I); }
            VEC(out_norm, "g_norm.weight", I); MAT(o_proj, "o_proj", D, I);
            break;
        }
        case KIND_HGRN2: {
            int F = nq * dk, Dv = nq * dv;
            MAT(q_proj, "q_proj", F, D); MAT(f_proj, "f_proj", F, D); MAT(i_proj, "i_proj", Dv, D);
            if (conv) { CONV(0, "q_conv1d", F); CONV(1, "f_conv1d", F); CONV(2, "i_conv1d", Dv); }
            VEC(out_norm, "g_norm.weight", Dv); MAT(o_proj, "o_proj", D, Dv);
            break;
        }
        case KIND_GLA: case KIND_RETNET:
            MAT(q_proj, "q_proj", nq * dk, D); MAT(k_proj, "k_proj", nk * dk, D); MAT(v_proj, "v_proj", nk * dv, D);
            if (c->flags & FLAG_OUTPUT_GATE) MAT(g_proj, "g_proj", nq * dv, D);
            if (w->kind == KIND_GLA) {
                if (conv) { CONV(0, "q_conv1d", nq * dk); CONV(1, "k_conv1d", nk * dk); CONV(2, "v_conv1d", nk * dv); }
                checked_dim(path, "gate_low_rank", c->gate_low_rank, 1, 4096);
                MAT(gk_proj0, "gk_proj.0", c->gate_low_rank, D); MAT(gk_proj1, "gk_proj.1", nk * dk, c->gate_low_rank);
                VEC(gk_bias, "gk_proj.1.bias", nk * dk);
                if (!(c->gate_normalizer > 0)) fatal("%s: header field gate_normalizer must be positive", path);
            }
            VEC(out_norm, "g_norm.weight", dv); MAT(o_proj, "o_proj", D, nq * dv);
            if (nq % nk) fatal("%s: lin_k_heads %d must divide lin_q_heads %d", path, nk, nq);
            break;
        case KIND_DELTA_NET: case KIND_GATED_DELTANET:
            if (nv % nq) fatal("%s: lin_q_heads %d must divide lin_v_heads %d", path, nq, nv);
            MAT(q_proj, "q_proj", nq * dk, D); MAT(k_proj, "k_proj", nq * dk, D); MAT(v_proj, "v_proj", nv * dv, D);
            if (w->kind == KIND_GATED_DELTANET) {
                MAT(a_proj, "a_proj", nv, D); VEC(A_log, "A_log", nv); VEC(dt_bias, "dt_bias", nv);
            }
            if (c->flags & FLAG_BETA) MAT(b_proj, "b_proj", nv, D);
            if (conv) { CONV(0, "q_conv1d", nq * dk); CONV(1, "k_conv1d", nq * dk); CONV(2, "v_conv1d", nv * dv); }
            if (c->flags & FLAG_OUTPUT_GATE) MAT(g_proj, "g_proj", nv * dv, D);
            VEC(out_norm, "o_norm.weight", dv); MAT(o_proj, "o_proj", D, nv * dv);
            break;
        }
#undef MAT
#undef VEC
#undef CONV
        if ((w->kind == KIND_HGRN || w->kind == KIND_HGRN2) && lower_bounds) {
            if ((w->kind == KIND_HGRN ? dv : nq * dk) != D) fatal("%s: lower bounds need a forget dim equal to dim", path);
            w->lower_bound = xcalloc((size_t)D, sizeof(float));
        }
    }

    /* HGRN/HGRN2 lower bounds, once per model: over the LAYERS, for each channel,
         s = softmax(P, dim=0);  lb[l] = s[1] + ... + s[l]   (lb[0] = 0, never used)
       so deeper layers get forget gates bounded further away from 0. */
    if (lower_bounds) {
        for (int d = 0; d < D; d++) {
            float mx = -INFINITY, sum = 0, cum = 0;
            for (int l = 0; l < L; l++) mx = fmaxf(mx, lower_bounds[(size_t)l * D + d]);
            float *s = xcalloc((size_t)L, sizeof(float));
            for (int l = 0; l < L; l++) { s[l] = expf(lower_bounds[(size_t)l * D + d] - mx); sum += s[l]; }
            for (int l = 0; l < L; l++) {
                s[l] /= sum;
                cum += s[l];
                if (m->layers[l].lower_bound) m->layers[l].lower_bound[d] = cum - s[0];
            }
            free(s);
        }
        for (int l = 0; l < L; l++) {
            LayerWeights *w = &m->layers[l];
            if (!w->lower_bound) continue;
            w->log_lower_bound = xcalloc(2 * (size_t)D, sizeof(float));
            w->log1m_lower_bound = w->log_lower_bound + D;
            for (int d = 0; d < D; d++) {
                w->log_lower_bound[d] = logf(w->lower_bound[d]);
                w->log1m_lower_bound[d] = log1pf(-w->lower_bound[d]);
            }
        }
    }

    /* RoPE frequencies, fla's RotaryEmbedding (GPT-NeoX "rotate half"):
         inv_freq[i] = 1 / theta^(2i / head_dim),  i = 0 .. head_dim/2 - 1 */
    if (has_attn) {
        m->rope_inv_freq_attn = xcalloc((size_t)c->attn_head_dim / 2, sizeof(float));
        for (int i = 0; i < c->attn_head_dim / 2; i++)
            m->rope_inv_freq_attn[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->attn_head_dim);
    }
    for (int l = 0; l < L; l++)
        if (m->kinds[l] == KIND_RETNET) { // RetNet rotates its q/k heads with base 10000
            if (dk % 2) fatal("%s: RetNet head_k_dim %d must be even", path, dk);
            m->rope_inv_freq_retnet = xcalloc((size_t)dk / 2, sizeof(float));
            for (int i = 0; i < dk / 2; i++) m->rope_inv_freq_retnet[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)dk);
            m->retnet_gammas = xcalloc((size_t)c->lin_q_heads * dk, sizeof(float)); // (a vector per head: sweep_dot_simd512)
            for (int h = 0; h < c->lin_q_heads; h++)
                for (int i = 0; i < dk; i++) m->retnet_gammas[(size_t)h * dk + i] = 1.0f - exp2f(-5.0f - (float)h);
            break;
        }
}

// ----------------------------------------------------------------------------
// Run state: what a sequence carries from token to token
//
// A linear-attention layer keeps a fixed-size state however long the text gets:
// a vector (HGRN) or one matrix per head (the others), plus the last K-1 inputs of
// each short convolution. An attention layer keeps every past key and value (or the
// last window of them): its cache grows with the text. --info prints both.

#define MAX_BATCH 128 // prompt tokens processed together
#define KEY_BLOCK 64  // cache rows a decoded token's attention takes at a time (attention_keys)

#endif // HLA_TYPES_ONLY: run_cuda.cu copies the state to and from these (--save-state, --load-state)
#define REPEAT_WINDOW 64 // the last tokens the sampler's repetition penalty looks at (run_cuda.cu's too)
typedef struct {
    float *state;          // HGRN: [I]; matrix kinds: [heads][dv][dk] (row = value channel)
    float *conv_cache[3];  // [channels][K-1], oldest first
    void *key_cache, *value_cache;  // attention: [capacity][kv_dim], post-RoPE keys; fp32 or bf16 (RunState.kv_dtype)
} LayerState;

typedef struct Gpu Gpu;     // run_cuda.cu's state of the same sequence (--device cuda)

typedef struct {
    LayerState *layers;
    Gpu *gpu;               // non-NULL: forward() runs on the GPU (run_cuda.cu)
    int logits_on_gpu;      // generating there: the logits stay on the GPU for its sampler
    int max_batch;          // tokens per forward: MAX_BATCH, or the GPU's
    int pos;                // tokens seen so far
    int last_token;         // the last token fed (-1: none)
    int kv_capacity;        // rows of each attention layer's cache: the context, or window + MAX_BATCH
                            // (a batch writes its keys before its queries read the window)
    int ctx;                // the longest sequence a full-attention model may reach
    int kv_dtype;           // the attention caches' values: DTYPE_F32, or DTYPE_BF16 (--kv-dtype bf16)
    // activations for up to MAX_BATCH tokens
    float *x, *xb, *xb2;    // residual stream and normed input, [B][dim]
    float *q, *k, *v, *g, *f, *a, *b, *o, *low_rank; // projections, [B][proj]
    float *hb, *hb2;        // MLP, [B][hidden_dim]
    float *att;             // attention's scratch, att_floats per thread (scores of a query, or attention_keys' ranges)
    size_t att_floats;
    float *logits;          // [B][vocab]
    size_t proj;            // row length of q/k/v/g/f/o
} RunState;
#ifndef HLA_TYPES_ONLY

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }


static void alloc_run_state(RunState *s, const Model *m, int ctx, int kv_dtype) {
    const Config *c = &m->c;
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->kv_dtype = kv_dtype;
    s->max_batch = MAX_BATCH;
    s->last_token = -1;
    s->kv_capacity = c->attn_window > 0 && c->attn_window + MAX_BATCH < ctx ? c->attn_window + MAX_BATCH : ctx;
    size_t B = MAX_BATCH;
    s->proj = max3((size_t)c->dim, (size_t)c->hidden_dim, 0);
    s->proj = max3(s->proj, (size_t)c->lin_q_heads * c->lin_head_k_dim, (size_t)c->lin_v_heads * c->lin_head_v_dim);
    s->proj = max3(s->proj, (size_t)c->lin_q_heads * c->lin_head_v_dim, (size_t)c->attn_heads * c->attn_head_dim);
    s->x = xcalloc(B * c->dim, sizeof(float));
    s->xb = xcalloc(B * c->dim, sizeof(float));
    s->xb2 = xcalloc(B * c->dim, sizeof(float));
    float **bufs[] = {&s->q, &s->k, &s->v, &s->g, &s->f, &s->a, &s->b, &s->o};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) *bufs[i] = xcalloc(B * s->proj, sizeof(float));
    s->low_rank = xcalloc(B * (size_t)(c->gate_low_rank > 0 ? c->gate_low_rank : 1), sizeof(float));
    s->hb = xcalloc(B * c->hidden_dim, sizeof(float));
    s->hb2 = xcalloc(B * c->hidden_dim, sizeof(float));
    s->logits = xcalloc(B * c->vocab_size, sizeof(float));
    s->layers = xcalloc((size_t)c->n_layers, sizeof(LayerState));
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        LayerState *ls = &s->layers[l];
        if (w->kind == KIND_ATTENTION) {
            size_t kv_dim = (size_t)c->attn_kv_heads * c->attn_head_dim;
            ls->key_cache = xcalloc((size_t)s->kv_capacity * kv_dim, dtype_bytes(kv_dtype, 1, 1));
            ls->value_cache = xcalloc((size_t)s->kv_capacity * kv_dim, dtype_bytes(kv_dtype, 1, 1));
            size_t ranges = (size_t)c->attn_heads * (KEY_BLOCK + 2 + c->attn_head_dim); // attention_keys' use
            s->att_floats = (size_t)s->kv_capacity > ranges ? (size_t)s->kv_capacity : ranges;
            s->att = s->att ? s->att : xcalloc((size_t)n_threads * s->att_floats, sizeof(float)); // per thread
            continue;
        }
        ls->state = xcalloc(linear_state_floats(c, w->kind), sizeof(float));
        for (int i = 0; i < 3; i++)
            if (w->conv_w[i]) ls->conv_cache[i] = xcalloc((size_t)w->conv_channels[i] * (c->conv_size - 1) + 1, sizeof(float));
    }
}

#ifdef USE_CUDA
/* run_cuda.cu (make cuda): the same forward pass on an NVIDIA GPU, chosen with --device cuda.
   The GPU keeps its own copy of the weights, states and caches; forward() hands it the step. */
Gpu *cuda_init(const Model *m, int ctx, int kv_dtype, int quiet);
void cuda_forward(Gpu *g, const int *tokens, int T, int pos, int all_logits, float *logits);
void cuda_reset(Gpu *g);
int cuda_max_batch(void);
int cuda_can_sample(const Gpu *g);
void cuda_sample_begin(Gpu *g, const int *recent, int n_recent);
void cuda_sample_queue(Gpu *g, float temperature, float topp, float minp, float repeat_penalty, int topk, float coin);
int cuda_sample_next(Gpu *g);
void cuda_forward_sampled(Gpu *g);
int cuda_can_run_ahead(const Gpu *g);
void cuda_state_to_host(Gpu *g, RunState *s);
void cuda_state_from_host(Gpu *g, RunState *s);
#endif

// back to an empty sequence: zero states, conv caches and position (KV rows are overwritten as they fill)
static void reset_run_state(RunState *s, const Model *m) {
    const Config *c = &m->c;
#ifdef USE_CUDA
    if (s->gpu) cuda_reset(s->gpu);
#endif
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        LayerState *ls = &s->layers[l];
        if (ls->state) memset(ls->state, 0, linear_state_floats(c, w->kind) * sizeof(float));
        for (int i = 0; i < 3; i++)
            if (ls->conv_cache[i]) memset(ls->conv_cache[i], 0, (size_t)w->conv_channels[i] * (c->conv_size - 1) * sizeof(float));
    }
    s->pos = 0;
    s->last_token = -1;
}

// ----------------------------------------------------------------------------
// Building blocks

static float silu(float x) { return x / (1.0f + expf(-x)); }
static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// log(sigmoid(x)), computed without overflow (the formula in fla's kernels)
static float logsigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static float logaddexp(float a, float b) { float mx = fmaxf(a, b); return mx + log1pf(expf(-fabsf(a - b))); }

static float apply_feature_map(int fmap, float x) {
    switch (fmap) {
    case FMAP_SILU: return silu(x);
    case FMAP_RELU: return x > 0 ? x : 0;
    case FMAP_ELU_P1: return x > 0 ? x + 1.0f : expf(x);
    case FMAP_SIGMOID: return sigmoid(x);
    default: return x;
    }
}

static float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
// fp32 -> bf16, rounded to nearest even (as torch and CUDA's __float2bfloat16 round); NaN stays NaN
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
// two 16-bit values in one 32-bit lane, the first in the low half (as a pair lies in memory):
// how the bf16 and int16 pair-product tiles (VDPBF16PS, VPDPWSSD, AMX) take their operands
static uint32_t pair16(uint16_t lo, uint16_t hi) { return lo | (uint32_t)hi << 16; }
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(man & 1024)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 1023) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// one row of a weight matrix as fp32 (the weights stay in their dtype in the file)
static void matrix_row(const Matrix *w, int r, float *out) {
    size_t base = (size_t)r * w->cols;
    switch (w->dtype) {
    case DTYPE_F32: memcpy(out, (const float *)w->data + base, sizeof(float) * w->cols); break;
    case DTYPE_F16: for (int j = 0; j < w->cols; j++) out[j] = f16_to_f32(((const uint16_t *)w->data)[base + j]); break;
    case DTYPE_BF16: for (int j = 0; j < w->cols; j++) out[j] = bf16_to_f32(((const uint16_t *)w->data)[base + j]); break;
    case DTYPE_Q8: {
        const int8_t *q = (const int8_t *)w->data + base;
        const float *scale = w->scales + base / Q8_GROUP;
        for (int g = 0; g < w->cols; g += Q8_GROUP) // a group at a time (the compiler vectorizes this form)
            for (int j = g; j < g + Q8_GROUP; j++) out[j] = (float)q[j] * scale[g / Q8_GROUP];
        break;
    }
    }
}

static float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* q8 weights times a token in int16. The token is cut into the weights' groups of 64 and each
   group rounded to int16 with a scale of its own (x[i] ~ x_scale[g] * x_q[i], |x_q| <= 32767).
   A group's 64 products are then integers, summed exactly in int32 (|w_q8 * x_q| * 64 < 2^31),
   and only the group's sum is scaled:
       W[r] . x  ~  sum over groups g of  w_scale[r][g] * x_scale[g] * sum_{i in g} w_q8[r][i] * x_q[i]
   Integer multiply-adds (AVX-512 VNNI's vpdpwssd: 32 products per instruction) ran 1.6x the
   fp32 widening kernel's rate in cache on the dev VM. The rounding of x, 2^-16 of its group's
   largest value, is far below the weights' own 2^-8. (int8 for x too, as llama.cpp's Q8_0 and
   llama2.c's runq do, ran 2.4x in cache but only 7-14% faster decode here, and doubled the
   mean KL from fp32 on the random 340M models: not taken.) A prompt batch multiplies the same
   rounded x (AMX and VNNI batches: the same integer group sums; other batches: x_scale[g] * x_q[i]
   as floats), so it equals its tokens one by one up to fp32 rounding. A group that is not
   finite gets a NaN scale: the products it enters come out NaN. */
typedef struct {
    int16_t *q;   // [n]: x_q
    float *scale; // [n / Q8_GROUP]: x_scale
} QuantizedX;

static void quantize_x(QuantizedX *xq, const float *x, int n) { // n % Q8_GROUP == 0
    for (int g = 0; g < n / Q8_GROUP; g++) {
        const float *xg = x + (size_t)g * Q8_GROUP;
        float max = 0.0f;
        int finite = 1;
        for (int i = 0; i < Q8_GROUP; i++) {
            float a = fabsf(xg[i]);
            finite &= a <= FLT_MAX; // false for inf and NaN
            if (a > max) max = a;
        }
        float inv = finite && max > 0.0f ? 32767.0f / max : 0.0f;
        xq->scale[g] = finite ? max / 32767.0f : NAN;
        for (int i = 0; i < Q8_GROUP; i++) { // |v| <= 32767: adding 1.5 * 2^23 rounds it half to even
            float v = xg[i] * inv;
            v = v > 32767.0f ? 32767.0f : v < -32767.0f ? -32767.0f : v;
            xq->q[(size_t)g * Q8_GROUP + i] = (int16_t)(finite ? (int)((v + 12582912.0f) - 12582912.0f) : 0);
        }
    }
}

// the rounded token as floats, for a prompt batch's fp32 products
static void dequantize_x(float *out, const QuantizedX *xq, int n) {
    for (int i = 0; i < n; i++) out[i] = xq->scale[i / Q8_GROUP] * (float)xq->q[i];
}

static float dot_q8_x16(const int8_t *w, const float *w_scale, const QuantizedX *x, int n) { // n % Q8_GROUP == 0
    float s = 0.0f;
    for (int g = 0; g < n / Q8_GROUP; g++) {
        int32_t sum = 0;
        for (int i = g * Q8_GROUP; i < (g + 1) * Q8_GROUP; i++) sum += w[i] * x->q[i];
        s += (float)sum * (w_scale[g] * x->scale[g]);
    }
    return s;
}

/* The same dot products, with a weight row still in its file dtype: the plain loops,
   and AVX2/FMA and AVX-512 versions next to them (chosen at build time; -march=native
   picks the widest the machine has).
   x86 AVX2 reads 8 weights at a time and widens them to fp32 in registers. */
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__) // (AVX-512 builds use the kernels below)
static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define SIMD_DOT 1
static float dot_simd(const float *a, const float *b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
static float dot_bf16(const uint16_t *w, const float *x, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0; // 4 chains hide FMA latency
    int i = 0;
#define BF16X8(off) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i + (off)))), 16))
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(BF16X8(0), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(BF16X8(8), _mm256_loadu_ps(x + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(BF16X8(16), _mm256_loadu_ps(x + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(BF16X8(24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(BF16X8(0), _mm256_loadu_ps(x + i), acc0);
#undef BF16X8
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}
#ifdef __F16C__
#define SIMD_F16 1
static float dot_f16(const uint16_t *w, const float *x, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
#define F16X8(off) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + (off))))
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(F16X8(0), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(F16X8(8), _mm256_loadu_ps(x + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(F16X8(16), _mm256_loadu_ps(x + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(F16X8(24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(F16X8(0), _mm256_loadu_ps(x + i), acc0);
#undef F16X8
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) s += f16_to_f32(w[i]) * x[i];
    return s;
}
#endif
static float dot_q8_x16_avx2(const int8_t *w, const float *w_scale, const QuantizedX *x, int n) { // n % 64 == 0
    __m256 total = _mm256_setzero_ps();
    for (int g = 0; g < n; g += Q8_GROUP) { // 4 x 16 products: int16 pairs summed into int32 lanes (exact)
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < Q8_GROUP; k += 16)
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + g + k))),
                                                          _mm256_loadu_si256((const __m256i *)(x->q + g + k))));
        total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(w_scale[g / Q8_GROUP] * x->scale[g / Q8_GROUP]), total);
    }
    return hsum256(total);
}
#endif

/* AVX-512 (where the build targets it, e.g. -march=native on a recent Xeon): the same
   kernels 16 weights at a time: half the instructions per weight for the widening that
   bf16/fp16/q8 rows need, which keeps each core's loads streaming. */
#ifdef __AVX512F__
#define SIMD_AVX512 1
/* Software prefetch of the weight stream, PREFETCH_BYTES ahead of the loads. One core keeps
   only so many cache-line misses in flight, and a narrow (bf16, q8) row is consumed faster
   than the hardware prefetcher ramps up, so without this one thread reads 7-11 GB/s of the
   ~17 GB/s a core can pull; with it, 340M decode on 2 cores went from 24 to 34 tok/s (bf16)
   and 31 to 59 (q8). Rows are contiguous and a thread takes a chunk of 256 KB of them at a
   time (matmul_rows), so reading past a row's end prefetches the chunk's next row; a prefetch
   never faults. 3 KB into L2 (T1) was the best of 1-4 KB x T0/T1 measured on the dev VM for
   bf16; q8 rows, with more arithmetic per byte, gained again from 3 to 12 KB (mean of 6 runs
   57.7 -> 59.7 tok/s; 24 KB: no better). fp32 rows (wide loads, which the hardware prefetcher
   keeps up with) measured no faster with it, so dot_simd512 goes without (nor with an L3
   prefetch 8-16 KB ahead: 18.1 -> 16.1-16.9 tok/s). bf16 and fp16 rows also ask L3 (T2) for
   the line PREFETCH_BYTES_L3 ahead, so that the L2 prefetch finds it nearer: 340M Transformer
   bf16, 2 threads, means of 6 alternating runs 28.9 -> 31.0 tok/s (16 KB: 30.5), one thread
   15.2 -> 16.8 (16 KB); 1.3B GatedDeltaNet bf16 8.48 -> 8.98 (means of 4); 340M Transformer
   fp16 31.9 -> 34.0 (means of 5). */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 3072
#endif
#ifndef PREFETCH_BYTES_Q8
#define PREFETCH_BYTES_Q8 12288
#endif
#ifndef PREFETCH_BYTES_L3
#define PREFETCH_BYTES_L3 8192
#endif
#define PREFETCH_AHEAD(p, bytes) _mm_prefetch((const char *)(p) + (bytes), _MM_HINT_T1)
#define PREFETCH_AHEAD_L3(p, bytes) _mm_prefetch((const char *)(p) + (bytes), _MM_HINT_T2)
static float dot_simd512(const float *a, const float *b, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
/* The recurrences' passes over a state row two at a time: each sweep updates the row a, stores
   it and sums its dot product with q as dot_simd512 does (the same accumulators in the same
   order, so the same numbers bit for bit as an update pass and then a dot_f32 pass). How:
     SWEEP_SCALE  a *= c                     (the delta rule's decay; q = k)
     SWEEP_AXPY   a += c k                   (the delta rule's update)
     SWEEP_DECAY  a = g a + k c              (HGRN2, GLA, RetNet: g a row of decays, c = v) */
enum { SWEEP_SCALE, SWEEP_AXPY, SWEEP_DECAY };
// the 16 floats of the row at o: updated, stored, and their products with q added into acc
static inline __m512 sweep_piece(int how, float *a, float c, const float *g, const float *k, const float *q, int o, __m512 acc) {
    __m512 v = _mm512_loadu_ps(a + o), cv = _mm512_set1_ps(c);
    if (how == SWEEP_SCALE) v = _mm512_mul_ps(v, cv);
    else if (how == SWEEP_AXPY) v = _mm512_fmadd_ps(cv, _mm512_loadu_ps(k + o), v);
    else v = _mm512_fmadd_ps(_mm512_loadu_ps(g + o), v, _mm512_mul_ps(_mm512_loadu_ps(k + o), cv));
    _mm512_storeu_ps(a + o, v);
    return _mm512_fmadd_ps(v, _mm512_loadu_ps(q + o), acc);
}
static inline float sweep_dot_simd512(int how, float *a, float c, const float *g, const float *k, const float *q, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = sweep_piece(how, a, c, g, k, q, i, acc0);
        acc1 = sweep_piece(how, a, c, g, k, q, i + 16, acc1);
        acc2 = sweep_piece(how, a, c, g, k, q, i + 32, acc2);
        acc3 = sweep_piece(how, a, c, g, k, q, i + 48, acc3);
    }
    for (; i + 16 <= n; i += 16) acc0 = sweep_piece(how, a, c, g, k, q, i, acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) {
        if (how == SWEEP_SCALE) a[i] *= c;
        else if (how == SWEEP_AXPY) a[i] += c * k[i];
        else a[i] = g[i] * a[i] + k[i] * c;
        s += a[i] * q[i];
    }
    return s;
}
// bf16 and fp16 rows: 16 weights widened to fp32 per step (bf16: a 16-bit shift; fp16: vcvtph2ps)
#define DOT16_512(name, WIDEN, scalar)                                                                   \
    static float name(const uint16_t *w, const float *x, int n) {                                     \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;                     \
        int i = 0;                                                                                     \
        for (; i + 64 <= n; i += 64) {                                                                 \
            PREFETCH_AHEAD(w + i, PREFETCH_BYTES);                                                     \
            PREFETCH_AHEAD(w + i + 32, PREFETCH_BYTES);                                                \
            PREFETCH_AHEAD_L3(w + i, PREFETCH_BYTES_L3);                                               \
            PREFETCH_AHEAD_L3(w + i + 32, PREFETCH_BYTES_L3);                                          \
            acc0 = _mm512_fmadd_ps(WIDEN(w + i), _mm512_loadu_ps(x + i), acc0);                        \
            acc1 = _mm512_fmadd_ps(WIDEN(w + i + 16), _mm512_loadu_ps(x + i + 16), acc1);              \
            acc2 = _mm512_fmadd_ps(WIDEN(w + i + 32), _mm512_loadu_ps(x + i + 32), acc2);              \
            acc3 = _mm512_fmadd_ps(WIDEN(w + i + 48), _mm512_loadu_ps(x + i + 48), acc3);              \
        }                                                                                              \
        for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(WIDEN(w + i), _mm512_loadu_ps(x + i), acc0); \
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3))); \
        for (; i < n; i++) s += scalar(w[i]) * x[i];                                                   \
        return s;                                                                                      \
    }
#define BF16X16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define F16X16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
DOT16_512(dot_bf16_512, BF16X16, bf16_to_f32)
DOT16_512(dot_f16_512, F16X16, f16_to_f32)
/* bf16 rows, 32 weights per 64-byte load with no widening instruction: in each 32-bit lane
   the even weight is the low half (a shift left by 16 makes it an fp32) and the odd one the
   high half (masking the low half off makes it an fp32). x is first put in that order once
   per matrix (bf16_pair_order): per 32 values, the 16 even ones, then the 16 odd ones. */
static void bf16_pair_order(float *xp, const float *x, int n) { // n % 32 == 0
    for (int b = 0; b < n; b += 32)
        for (int k = 0; k < 16; k++) { xp[b + k] = x[b + 2 * k]; xp[b + 16 + k] = x[b + 2 * k + 1]; }
}
static float dot_bf16_pairs_512(const uint16_t *w, const float *xp, int n) { // n % 32 == 0
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        PREFETCH_AHEAD(w + i, PREFETCH_BYTES);
        PREFETCH_AHEAD(w + i + 32, PREFETCH_BYTES);
        PREFETCH_AHEAD_L3(w + i, PREFETCH_BYTES_L3);
        PREFETCH_AHEAD_L3(w + i + 32, PREFETCH_BYTES_L3);
        __m512i v0 = _mm512_loadu_si512(w + i), v1 = _mm512_loadu_si512(w + i + 32);
        acc0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_loadu_ps(xp + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, high)), _mm512_loadu_ps(xp + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), _mm512_loadu_ps(xp + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, high)), _mm512_loadu_ps(xp + i + 48), acc3);
    }
    for (; i < n; i += 32) {
        __m512i v0 = _mm512_loadu_si512(w + i);
        acc0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_loadu_ps(xp + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, high)), _mm512_loadu_ps(xp + i + 16), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}
#ifdef __AVX512BW__
#define SIMD_Q8_512 1
// quantize_x a group of 64 at a time: the same bits (vcvtps2dq rounds half to even, as the
// plain loop's 1.5 * 2^23 trick does)
static void quantize_x_512(QuantizedX *xq, const float *x, int n) { // n % Q8_GROUP == 0
    const __m512 top = _mm512_set1_ps(32767.0f), bottom = _mm512_set1_ps(-32767.0f), fmax = _mm512_set1_ps(FLT_MAX);
    for (int g = 0; g < n / Q8_GROUP; g++) {
        const float *xg = x + (size_t)g * Q8_GROUP;
        __m512 v[4], max = _mm512_setzero_ps();
        __mmask16 finite = 0xffff;
        for (int i = 0; i < 4; i++) {
            v[i] = _mm512_loadu_ps(xg + 16 * i);
            __m512 a = _mm512_abs_ps(v[i]);
            finite &= _mm512_cmp_ps_mask(a, fmax, _CMP_LE_OQ); // false for inf and NaN
            max = _mm512_max_ps(max, a);
        }
        float m = _mm512_reduce_max_ps(max);
        int ok = finite == 0xffff;
        __m512 inv = _mm512_set1_ps(ok && m > 0.0f ? 32767.0f / m : 0.0f);
        xq->scale[g] = ok ? m / 32767.0f : NAN;
        for (int i = 0; i < 4; i++) {
            __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v[i], inv), bottom), top));
            _mm256_storeu_si256((__m256i *)(xq->q + (size_t)g * Q8_GROUP + 16 * i), ok ? _mm512_cvtsepi32_epi16(q) : _mm256_setzero_si256());
        }
    }
}
static float dot_q8_x16_512(const int8_t *w, const float *w_scale, const QuantizedX *x, int n) { // n % 64 == 0
    __m512 total = _mm512_setzero_ps();
    for (int g = 0; g < n; g += Q8_GROUP) { // a group: 2 x 32 weights widened to int16, times x's int16
        PREFETCH_AHEAD(w + g, PREFETCH_BYTES_Q8);
        __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + g)));
        __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + g + 32)));
        __m512i x0 = _mm512_loadu_si512(x->q + g), x1 = _mm512_loadu_si512(x->q + g + 32), sum;
#ifdef __AVX512VNNI__ // pairs of products added into int32 lanes in one instruction
        sum = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), w0, x0), w1, x1);
#else
        sum = _mm512_add_epi32(_mm512_madd_epi16(w0, x0), _mm512_madd_epi16(w1, x1));
#endif
        total = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(w_scale[g / Q8_GROUP] * x->scale[g / Q8_GROUP]), total);
    }
    return _mm512_reduce_add_ps(total);
}
#endif
#endif

/* NEON (aarch64): the same kernels, 4 lanes per register, 16 weights per step. */
#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SIMD_NEON 1
static float dot_neon(const float *a, const float *b, int n) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        acc2 = vfmaq_f32(acc2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        acc3 = vfmaq_f32(acc3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
// 8 bf16 / fp16 weights per load, widened to two fp32 registers (bf16: a 16-bit shift left)
static float dot_16bit_neon(const uint16_t *w, const float *x, int n, int is_bf16) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16x8_t h = vld1q_u16(w + i);
        float32x4_t lo, hi;
        if (is_bf16) {
            lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
            hi = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
        } else {
            float16x8_t f = vreinterpretq_f16_u16(h);
            lo = vcvt_f32_f16(vget_low_f16(f));
            hi = vcvt_high_f32_f16(f);
        }
        acc0 = vfmaq_f32(acc0, lo, vld1q_f32(x + i));
        acc1 = vfmaq_f32(acc1, hi, vld1q_f32(x + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) s += (is_bf16 ? bf16_to_f32(w[i]) : f16_to_f32(w[i])) * x[i];
    return s;
}
static float dot_q8_x16_neon(const int8_t *w, const float *w_scale, const QuantizedX *x, int n) { // n % 64 == 0
    float32x4_t total = vdupq_n_f32(0.0f);
    for (int g = 0; g < n; g += Q8_GROUP) {
        int32x4_t sum0 = vdupq_n_s32(0), sum1 = sum0;
        for (int k = 0; k < Q8_GROUP; k += 16) { // 16 weights widened to int16, products added into int32 lanes
            int8x16_t a = vld1q_s8(w + g + k);
            int16x8_t lo = vmovl_s8(vget_low_s8(a)), hi = vmovl_high_s8(a);
            int16x8_t x0 = vld1q_s16(x->q + g + k), x1 = vld1q_s16(x->q + g + k + 8);
            sum0 = vmlal_s16(sum0, vget_low_s16(lo), vget_low_s16(x0));
            sum1 = vmlal_high_s16(sum1, lo, x0);
            sum0 = vmlal_s16(sum0, vget_low_s16(hi), vget_low_s16(x1));
            sum1 = vmlal_high_s16(sum1, hi, x1);
        }
        total = vfmaq_n_f32(total, vcvtq_f32_s32(vaddq_s32(sum0, sum1)), w_scale[g / Q8_GROUP] * x->scale[g / Q8_GROUP]);
    }
    return vaddvq_f32(total);
}
#endif

// n values of a row in their dtype (fp32, fp16, bf16) times x, without converting the row first
static float dot_typed(const void *row, int dtype, const float *x, int n) {
    switch (dtype) {
#ifdef SIMD_AVX512
    case DTYPE_F32: return dot_simd512(row, x, n);
    case DTYPE_BF16: return dot_bf16_512(row, x, n);
    case DTYPE_F16: return dot_f16_512(row, x, n);
#elif defined(SIMD_NEON)
    case DTYPE_F32: return dot_neon(row, x, n);
    case DTYPE_BF16: return dot_16bit_neon(row, x, n, 1);
    case DTYPE_F16: return dot_16bit_neon(row, x, n, 0);
#elif defined(SIMD_DOT)
    case DTYPE_F32: return dot_simd(row, x, n);
    case DTYPE_BF16: return dot_bf16(row, x, n);
#ifdef SIMD_F16
    case DTYPE_F16: return dot_f16(row, x, n);
#endif
#else
    case DTYPE_F32: return dot(row, x, n);
#endif
    default: {
        float s = 0.0f;
        for (int j = 0; j < n; j++) {
            uint16_t h = ((const uint16_t *)row)[j];
            s += (dtype == DTYPE_F16 ? f16_to_f32(h) : bf16_to_f32(h)) * x[j];
        }
        return s;
    }
    }
}

// one weight row times one token (q8 rows: dot_row_q8)
static float dot_row(const Matrix *w, int r, const float *x) {
    return dot_typed((const char *)w->data + dtype_bytes(w->dtype, (uint64_t)r, (uint64_t)w->cols), w->dtype, x, w->cols);
}

// one q8 weight row times a token in int16 (quantize_x)
static float dot_row_q8(const Matrix *w, int r, const QuantizedX *x) {
    size_t base = (size_t)r * w->cols;
    const int8_t *q = (const int8_t *)w->data + base;
    const float *scale = w->scales + base / Q8_GROUP;
    (void)dot_q8_x16; // the plain loop: the fallback, and what the kernels compute
#if defined(SIMD_Q8_512)
    return dot_q8_x16_512(q, scale, x, w->cols);
#elif defined(SIMD_NEON)
    return dot_q8_x16_neon(q, scale, x, w->cols);
#elif defined(SIMD_DOT)
    return dot_q8_x16_avx2(q, scale, x, w->cols);
#else
    return dot_q8_x16(q, scale, x, w->cols);
#endif
}

// one token rounded for q8 products: the widest kernel the build has
static void quantize_token(QuantizedX *xq, const float *x, int n) {
    (void)quantize_x; // the plain loop: the fallback, and what the kernel computes
#if defined(SIMD_Q8_512)
    quantize_x_512(xq, x, n);
#else
    quantize_x(xq, x, n);
#endif
}

// the fp32 dot products of the recurrences and of attention: the widest kernel the build has
static float dot_f32(const float *a, const float *b, int n) {
    (void)dot; // the plain loop: the fallback, and what the kernels compute
#if defined(SIMD_AVX512)
    return dot_simd512(a, b, n);
#elif defined(SIMD_NEON)
    return dot_neon(a, b, n);
#elif defined(SIMD_DOT)
    return dot_simd(a, b, n);
#else
    return dot(a, b, n);
#endif
}

/* A small pool of worker threads, started once: run_parallel(fn, arg) calls
   fn(arg, i, n) on n threads (the caller is thread 0) and returns when all are done.
   A token makes ~200 such calls, so waking the workers must cost microseconds, not a
   system call each: they spin on a generation counter for a while, then yield the CPU
   for a while (so that on a busy machine the thread we wait for gets to run), and only
   then sleep on a condition variable. The caller waits for them the same way.
   After a one-token product a worker, while it spins, asks for the IDLE_PREFETCH_BYTES that
   follow the product's last in the file (pool.prefetch_from, set by matmuls; a prefetch past
   the end of the mapping is dropped by the CPU, it does not fault): a token's products
   read the file front to back, and between two of them the main thread's norms, roundings
   and calls leave memory idle (the worker waited 4% of its samples in a q8 decode; decode
   A/B interleaved, 256 KB ahead: 340M Transformer q8 +1.9-4.1%, bf16 +1.6%, 1.3B
   GatedDeltaNet q8 +1.9%, 340M GatedDeltaNet q8 +0.8%, means of 4-8; bench/RESULTS.md). */
#include <sched.h>
#include <stdatomic.h>
#define POOL_SPINS 2000   // pause instructions before yielding
#define POOL_YIELDS 2000  // sched_yield calls before sleeping
#define IDLE_PREFETCH_BYTES (256 << 10) // asked for by the workers after a one-token product
typedef void (*ParallelFn)(void *arg, int thread, int n_threads);
static struct {
    pthread_t threads[64];
    int started;
    pthread_mutex_t mu;
    pthread_cond_t start;
    ParallelFn fn;
    void *arg;
    atomic_ulong generation;
    atomic_int pending;
    _Atomic(const char *) prefetch_from; // where the workers' asking starts after this call (NULL: none)
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .start = PTHREAD_COND_INITIALIZER};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *pool_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    unsigned long seen = 0, g;
    for (;;) {
        for (long spins = 0; (g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen; spins++) {
            if (spins < POOL_SPINS) { cpu_relax(); continue; }
            if (spins < POOL_SPINS + POOL_YIELDS) { sched_yield(); continue; }
            pthread_mutex_lock(&pool.mu);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.start, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = g;
        pool.fn(pool.arg, id, n_threads);
        // this worker's share of the bytes to ask for (read before the call is reported done)
        const char *p = atomic_load_explicit(&pool.prefetch_from, memory_order_relaxed), *end = p;
        if (p) {
            p += (size_t)IDLE_PREFETCH_BYTES / (n_threads - 1) * (id - 1);
            end = p + (size_t)IDLE_PREFETCH_BYTES / (n_threads - 1);
        }
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
        for (; p < end && atomic_load_explicit(&pool.generation, memory_order_relaxed) == seen; p += 64) __builtin_prefetch(p, 0, 2);
    }
    return NULL;
}

static void run_parallel(ParallelFn fn, void *arg) {
    if (n_threads <= 1) { fn(arg, 0, 1); return; }
    for (; pool.started < n_threads - 1; pool.started++)
        if (pthread_create(&pool.threads[pool.started], NULL, pool_worker, (void *)(intptr_t)(pool.started + 1)) != 0)
            fatal("cannot start thread %d", pool.started + 1);
    pool.fn = fn;
    pool.arg = arg;
    atomic_store_explicit(&pool.pending, n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool.mu); // also wakes the workers that went to sleep
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.start);
    pthread_mutex_unlock(&pool.mu);
    fn(arg, 0, n_threads);
    for (long spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spins++)
        if (spins < POOL_SPINS) cpu_relax();
        else sched_yield();
}

/* A prompt batch is a matrix product, out[t][r] = W[r] . x[t] for T tokens, bound by
   arithmetic. Register tiling: x is packed once per matrix, k-major in groups of TILE_TOKENS
   tokens (xp[k][t]: one group's tokens at one k are 2 vectors), and W is read TILE_ROWS rows
   at a time as they are (converted to fp32 first if the file's dtype is not). For each k,
   the 2 vectors of x times each row's W[r][k] (a broadcast) add into TILE_ROWS x 2 vector
   accumulators that stay in registers for the whole row: 2 + TILE_ROWS loads per
   2 * TILE_ROWS FMAs, so the FMA units, not the loads, set the pace. Each accumulator holds
   one row's outputs for the group's tokens, stored down a column of out. (The 4x4
   dot-product tiling this replaced re-read x from L2 for every 4 rows and summed across
   lanes at the end of each: 24% of the FMA peak on the 340M Transformer's 512-token prompt.)
   Written with GCC/Clang vector types: one vfloat is one AVX-512, AVX2 or NEON register,
   whichever the build targets; the compiler writes the SIMD code. */
#if defined(__AVX512F__)
#define VEC_FLOATS 16
#define TILE_ROWS 12 // 24 accumulators of the 32 vector registers
#elif defined(__AVX__)
#define VEC_FLOATS 8
#define TILE_ROWS 6  // 12 of 16
#else
#define VEC_FLOATS 4 // SSE2, NEON
#define TILE_ROWS 6
#endif
#define TILE_TOKENS (2 * VEC_FLOATS)
typedef float vfloat __attribute__((vector_size(VEC_FLOATS * sizeof(float))));
static vfloat vload(const float *p) { vfloat v; memcpy(&v, p, sizeof v); return v; }
static void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }
typedef int32_t vint __attribute__((vector_size(VEC_FLOATS * sizeof(int32_t))));
static vfloat vselect(vint mask, vfloat a, vfloat b) { return (vfloat)((mask & (vint)a) | (~mask & (vint)b)); }

/* expf for a vector (softmax, silu), as Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2,
   e^r by its degree-7 Taylor-like polynomial, times 2^n written into the exponent bits.
   Within 2 ulp of expf; x is clamped to [-87.3, 88.3] (normal results only). */
static vfloat vexp(vfloat x) {
    vfloat lo = (vfloat){0} - 87.33654f, hi = (vfloat){0} + 88.37626f;
    x = vselect(x < lo, lo, vselect(x > hi, hi, x));
    vfloat t = x * 1.44269504088896341f + 12582912.0f; // 1.5 * 2^23 + n: n = round(x / ln2) in the low bits
    vfloat n = t - 12582912.0f;
    vint ni = (vint)t - 0x4B400000;
    vfloat r = x - n * 0.693359375f + n * 2.12194440e-4f; // x - n ln2, ln2 in two parts
    vfloat p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (vfloat)((ni + 127) << 23);
}

/* log(1 + e^-z) for z >= 0, a vector at a time (the gates' logsigmoid and logaddexp):
   e = vexp(-z), u = 1 + e in (1, 2], log1p(e) = log(u) e / (u - 1) (exact where u rounds to
   1: then e), and log(u) as Cephes' logf: u = m 2^n with m < sqrt(2), log(m) = log(1 + x) by
   its polynomial in x = m - 1. Within a few ulp of log1pf(expf(-z)). */
static vfloat vlog1p_exp_neg(vfloat z) {
    vfloat e = vexp(-z), u = 1.0f + e;
    vint big = u > 1.41421356f;
    vfloat zero = {0}, m = vselect(big, u * 0.5f, u), n = vselect(big, zero + 1.0f, zero);
    vfloat x = m - 1.0f, x2 = x * x;
    vfloat y = ((((((((7.0376836292E-2f * x - 1.1514610310E-1f) * x + 1.1676998740E-1f) * x - 1.2420140846E-1f) * x +
                    1.4249322787E-1f) * x - 1.6668057665E-1f) * x + 2.0000714765E-1f) * x - 2.4999993993E-1f) * x +
               3.3333331174E-1f) * x * x2;
    vfloat log_u = x + (y - 2.12194440e-4f * n - 0.5f * x2) + 0.693359375f * n;
    vfloat d = u - 1.0f;
    return vselect(d == zero, e, log_u * (e / vselect(d == zero, zero + 1.0f, d)));
}
static vfloat vabs(vfloat x) { return (vfloat)((vint)x & 0x7fffffff); }
static vfloat vmax(vfloat a, vfloat b) { return vselect(a > b, a, b); }
// logsigmoid(x) = min(x, 0) - log(1 + e^-|x|) and logaddexp(a, b) = max(a, b) + log(1 + e^-|a - b|), as below
static vfloat vlogsigmoid(vfloat x) { vfloat zero = {0}; return vselect(x < zero, x, zero) - vlog1p_exp_neg(vabs(x)); }
static vfloat vlogaddexp(vfloat a, vfloat b) { return vmax(a, b) + vlog1p_exp_neg(vabs(a - b)); }
static vfloat vsilu(vfloat x) { return x / (1.0f + vexp(-x)); }

// x [T][cols] -> per group of TILE_TOKENS tokens, [cols][TILE_TOKENS] (tokens past T: 0);
// 64 columns at a time, each token's read in order (a column of x walked down would touch
// a new cache line per token, all of them in one L1 set when rows are 4 KB apart)
static void pack_tokens(float *xp, const float *x, int T, int cols) {
    for (int t0 = 0; t0 < T; t0 += TILE_TOKENS)
        for (int k0 = 0; k0 < cols; k0 += 64)
            for (int t = 0; t < TILE_TOKENS; t++)
                for (int k = k0; k < cols && k < k0 + 64; k++)
                    xp[(size_t)t0 * cols + (size_t)k * TILE_TOKENS + t] = t0 + t < T ? x[(size_t)(t0 + t) * cols + k] : 0.0f;
}

static float *packed_tokens(const float *x, int T, int cols) {
    float *xp = xcalloc((size_t)(T + TILE_TOKENS - 1) / TILE_TOKENS * TILE_TOKENS * cols, sizeof(float));
    pack_tokens(xp, x, T, cols);
    return xp;
}

// a kernel the environment turns off with NAME=0 (tests and comparisons); read once, into *cached
static inline int switched_on(const char *name, int *cached) { // (inline: builds without those kernels do not use it)
    if (*cached < 0) {
        const char *env = getenv(name);
        *cached = !(env && !strcmp(env, "0"));
    }
    return *cached;
}

// a tile's sums into out: token t's n outputs at a time. (Row by row, down the columns of out,
// the nt lines fell in one L1 set whenever out's rows were a multiple of 4 KB apart, and each
// row's pass missed on all of them: a 4096 x 1024 product of 128 tokens 13% slower than with
// 4104 rows.)
static void store_tile(float *out, int out_stride, vfloat (*acc)[2], int n, int nt) {
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < n; i++) out[(size_t)t * out_stride + i] = t < VEC_FLOATS ? acc[i][0][t] : acc[i][1][t - VEC_FLOATS];
}

// out[t0 + t][r] for the n rows w[0..n) (n <= TILE_ROWS) and the nt real tokens of one packed group
static void rows_times_tokens(float *out, int out_stride, const float *const w[TILE_ROWS], const float *xp, int cols, int n, int nt) {
    vfloat acc[TILE_ROWS][2];
    for (int i = 0; i < TILE_ROWS; i++) acc[i][0] = acc[i][1] = (vfloat){0};
    for (int k = 0; k < cols; k++) {
        vfloat x0 = vload(xp + (size_t)k * TILE_TOKENS), x1 = vload(xp + (size_t)k * TILE_TOKENS + VEC_FLOATS);
        for (int i = 0; i < TILE_ROWS; i++) {
            acc[i][0] += x0 * w[i][k];
            acc[i][1] += x1 * w[i][k];
        }
    }
    store_tile(out, out_stride, acc, n, nt);
}

/* bf16 rows where the CPU has AVX512-BF16 and AMX's tiles (below) are not in use (AMD's Zen 4
   and Zen 5, or HLA_AMX=0): VDPBF16PS takes 16 lanes of bf16 pairs and adds both products of a
   lane into its fp32 sum,
     acc[t] += w[2p+1] x_t[2p+1] + w[2p] x_t[2p]        (each product exact in fp32; two rounded adds)
   so the register tile above takes one weight pair of a row (broadcast) times a pair of x for each
   of its 32 tokens per instruction: half the instructions per weight, and the rows are used as
   they lie in the file instead of converted to fp32 first. Measured on the Zen 5 VM, one core:
   434 GFLOP/s of these products against 239 of fp32 FMAs; on the Intel VM it ran at half the FMA
   rate, but there AMX takes bf16 batches. xp: the group's x as bf16 pairs, pair-major
   (xp[p][t] = x_t[2p] | x_t[2p+1] << 16, pair_tokens). HLA_BF16_TILE=0 converts the rows to fp32
   for the fp32 tile instead (tests compare the two). */
#if defined(__AVX512BF16__) && defined(__AVX512F__) && !defined(USE_OPENBLAS) // (with OpenBLAS, sgemm takes the batches)
#define SIMD_BF16_TILE 1
static void bf16_rows_times_tokens(float *out, int out_stride, const uint16_t *const w[TILE_ROWS], const uint32_t *xp, int cols, int n, int nt) {
    vfloat acc[TILE_ROWS][2];
    for (int i = 0; i < TILE_ROWS; i++) acc[i][0] = acc[i][1] = (vfloat){0};
    for (int p = 0; p < cols / 2; p++) {
        __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp + (size_t)p * TILE_TOKENS), x1 = (__m512bh)_mm512_loadu_si512(xp + (size_t)p * TILE_TOKENS + 16);
        for (int i = 0; i < TILE_ROWS; i++) {
            uint32_t pair;
            memcpy(&pair, w[i] + 2 * p, sizeof pair);
            __m512bh wp = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[i][0] = (vfloat)_mm512_dpbf16_ps((__m512)acc[i][0], wp, x0);
            acc[i][1] = (vfloat)_mm512_dpbf16_ps((__m512)acc[i][1], wp, x1);
        }
    }
    store_tile(out, out_stride, acc, n, nt);
}
static int bf16_tile_on(void) {
    static int on = -1;
    return switched_on("HLA_BF16_TILE", &on);
}
// T tokens of x (already rounded to bf16 values) as the tile's bf16 pairs: per group of
// TILE_TOKENS tokens [cols / 2][TILE_TOKENS], tokens past T zero
static uint32_t *pair_tokens(const float *x, int T, int cols) {
    uint32_t *pairs = xcalloc((size_t)(T + TILE_TOKENS - 1) / TILE_TOKENS * TILE_TOKENS * cols / 2, sizeof(uint32_t));
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * cols;
        uint32_t *group = pairs + (size_t)(t / TILE_TOKENS) * TILE_TOKENS * cols / 2 + t % TILE_TOKENS;
        for (int p = 0; p < cols / 2; p++) group[(size_t)p * TILE_TOKENS] = pair16(f32_to_bf16(xt[2 * p]), f32_to_bf16(xt[2 * p + 1]));
    }
    return pairs;
}
#endif

/* q8 rows where the CPU has AVX-512 VNNI and AMX's tiles are not in use: the sum one token's
   q8 kernel computes (quantize_x's int16 x, each group of 64 summed exactly in int32, then scaled),
     out[t][r] = sum over groups g of (w_scale[r][g] * x_scale[t][g]) * sum_{i in g} w_q8[r][i] x_q[t][i]
   for Q8_TILE_ROWS rows x 32 tokens at a time: VPDPWSSD adds a lane's two int16 products into its
   int32 sum, so a row's weight pair (widened to int16 once per chunk, broadcast) times 16 tokens'
   pairs of x_q is one instruction; at a group's end each sum is scaled into fp32 as dot_q8_x16
   does. 6 rows: 12 int32 and 12 fp32 accumulators. (Without it a batch multiplies the rows
   converted to fp32 by x_q's values as floats: the same products, rounded in another order.)
   HLA_Q8_TILE=0 takes that path instead. */
#if defined(__AVX512VNNI__) && defined(__AVX512F__) && !defined(USE_OPENBLAS) // (with OpenBLAS, sgemm takes the batches)
#define SIMD_Q8_TILE 1
#define Q8_TILE_ROWS 6
typedef struct {
    int32_t *pairs; // per group of TILE_TOKENS tokens: [cols / 2][TILE_TOKENS] pairs (x_q[2p], x_q[2p+1]) as int16s
    float *scale;   // per group of TILE_TOKENS tokens: [cols / Q8_GROUP][TILE_TOKENS] x_scale
} Q8Tokens;
// out[t0 + t][r] for the n <= Q8_TILE_ROWS rows w (int16 pairs) with scales ws, the nt real tokens of one group
static void q8_rows_times_tokens(float *out, int out_stride, const int32_t *const w[Q8_TILE_ROWS], const float *const ws[Q8_TILE_ROWS],
                                 const int32_t *xp, const float *xs, int cols, int n, int nt) {
    vfloat acc[Q8_TILE_ROWS][2];
    for (int i = 0; i < Q8_TILE_ROWS; i++) acc[i][0] = acc[i][1] = (vfloat){0};
    for (int g = 0; g < cols / Q8_GROUP; g++) {
        __m512i sum[Q8_TILE_ROWS][2];
        for (int i = 0; i < Q8_TILE_ROWS; i++) sum[i][0] = sum[i][1] = _mm512_setzero_si512();
        for (int p = g * Q8_GROUP / 2; p < (g + 1) * Q8_GROUP / 2; p++) {
            __m512i x0 = _mm512_loadu_si512(xp + (size_t)p * TILE_TOKENS), x1 = _mm512_loadu_si512(xp + (size_t)p * TILE_TOKENS + 16);
            for (int i = 0; i < Q8_TILE_ROWS; i++) {
                __m512i wp = _mm512_set1_epi32(w[i][p]);
                sum[i][0] = _mm512_dpwssd_epi32(sum[i][0], wp, x0);
                sum[i][1] = _mm512_dpwssd_epi32(sum[i][1], wp, x1);
            }
        }
        __m512 s0 = _mm512_loadu_ps(xs + (size_t)g * TILE_TOKENS), s1 = _mm512_loadu_ps(xs + (size_t)g * TILE_TOKENS + 16);
        for (int i = 0; i < Q8_TILE_ROWS; i++) {
            __m512 w_scale = _mm512_set1_ps(ws[i][g]);
            acc[i][0] = (vfloat)_mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][0]), _mm512_mul_ps(w_scale, s0), (__m512)acc[i][0]);
            acc[i][1] = (vfloat)_mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][1]), _mm512_mul_ps(w_scale, s1), (__m512)acc[i][1]);
        }
    }
    store_tile(out, out_stride, acc, n, nt);
}
static int q8_tile_on(void) {
    static int on = -1;
    return switched_on("HLA_Q8_TILE", &on);
}
// T tokens rounded as quantize_x rounds one (xq: a token's buffers) into the tile's layout
static Q8Tokens q8_pair_tokens(QuantizedX *xq, const float *x, int T, int cols) {
    size_t groups = (size_t)(T + TILE_TOKENS - 1) / TILE_TOKENS, G = (size_t)cols / Q8_GROUP;
    Q8Tokens q = {xcalloc(groups * TILE_TOKENS * cols / 2, sizeof(int32_t)), xcalloc(groups * TILE_TOKENS * G, sizeof(float))};
    for (int t = 0; t < T; t++) {
        quantize_token(xq, x + (size_t)t * cols, cols);
        int32_t *pairs = q.pairs + (size_t)(t / TILE_TOKENS) * TILE_TOKENS * cols / 2 + t % TILE_TOKENS;
        float *scale = q.scale + (size_t)(t / TILE_TOKENS) * TILE_TOKENS * G + t % TILE_TOKENS;
        for (int p = 0; p < cols / 2; p++) pairs[(size_t)p * TILE_TOKENS] = (int32_t)pair16((uint16_t)xq->q[2 * p], (uint16_t)xq->q[2 * p + 1]);
        for (size_t g = 0; g < G; g++) scale[g * TILE_TOKENS] = xq->scale[g];
    }
    return q;
}
#endif

/* bf16 weights multiply x rounded to bf16 too, on every path (one token and a batch, CPU and
   GPU), as fla's bf16 models, llama.cpp's bf16 and the GPU's tensor cores do: each product of
   two bf16 values is then exact in fp32, and only the order of the fp32 sums differs between
   the kernels below. The rounding of x, 2^-9 of each value, is that of the weights themselves.
   Where the CPU has AMX (Intel's tile unit, Sapphire Rapids on), bf16 and q8 batches go through
   its tiles: TDPBF16PS multiplies a tile of 16 weight rows x 32 bf16 columns by one of 32 columns
   x 16 tokens into 16 x 16 fp32 sums in one instruction (q8: TDPBSSD / TDPBSUD, 64 int8 columns,
   int32 sums, below). Measured on the dev VM's Xeon, one core: AMX bf16 2,310 GFLOP/s, AVX-512
   fp32 FMA 180, AVX512-BF16's vdpbf16ps 89 (half the FMA's rate there, so that one is not used).
   Linux hands out the tiles' 8 KB of state only on request (arch_prctl); HLA_AMX=0 turns them
   off, and `./run MODEL --info` says whether they are in use. */
#define AMX_ROWS 32 // a chunk of weight rows: two A tiles, one above the other; tokens go 32 at a time too (two B tiles)
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__) && defined(__linux__) && defined(__x86_64__)
#define SIMD_AMX 1
#include <sys/syscall.h>
/* Every tile 16 rows of 64 bytes (palette 1): byte 0 the palette, 16 + 2i tile i's bytes per
   row (16 bits), 48 + i its rows, all else 0. Written once by amx_ready (the main thread, before
   any worker uses a tile), loaded by each thread before its first tile instruction. (Built on the
   stack instead, GCC 12 dropped the zeroing of half of it as dead stores, and ldtilecfg faults on
   nonzero bytes of unused tiles.) */
static uint8_t amx_tile_config[64];
static int amx_ready(void) { // (first called from the main thread, in matmuls)
    static int ready = -1;
    if (ready < 0) {
        int env_on = -1;
        ready = switched_on("HLA_AMX", &env_on) && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        amx_tile_config[0] = 1;
        for (int i = 0; i < 8; i++) { amx_tile_config[16 + 2 * i] = 64; amx_tile_config[48 + i] = 16; }
    }
    return ready;
}
static void amx_configure(void) { _tile_loadconfig(amx_tile_config); }
/* x [T][cols] in B tiles (x_amx): per 16 tokens and 32 columns ks, one tile of 16 x 16 pairs,
   pair [kp][t] = (x[t][32 ks + 2 kp], x[t][32 ks + 2 kp + 1]) in bf16; tokens past T are 0 up to a
   multiple of 32. The weights need no such packing: 16 rows of 32 bf16 columns, as they lie in
   the file, are an A tile. (amx_pack_tokens, after the q8 layout below, fills both.) */
// token t into its B tiles (bf16 pairs)
static void amx_pack_token_bf16(uint32_t *xv, const float *x, int t, int cols) {
    int ks_n = cols / 32;
    for (int p = 0; p < cols / 2; p++) {
        uint32_t pair = pair16(f32_to_bf16(x[(size_t)t * cols + 2 * p]), f32_to_bf16(x[(size_t)t * cols + 2 * p + 1]));
        xv[(((size_t)(t / 16) * ks_n + p / 16) * 16 + p % 16) * 16 + t % 16] = pair;
    }
}
/* Tiles leave their sums rows x tokens (c[row][token], `tokens` floats a row, 32 rows); token t0 + t's
   n <= 32 outputs are column t, read 16 rows at a time by one gather (2x faster than element by
   element: amx_rows_times_tokens 680 -> 734-856 GFLOP/s on the 340M shapes) into out's row t0 + t. */
static void amx_store_token_rows(float *out, int out_stride, const float *c, int tokens, int n, int t0, int T) {
    const __m512i down_a_column = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                     _mm512_set1_epi32(tokens));
    __mmask16 rows0 = n >= 16 ? 0xffff : (1u << n) - 1, rows1 = n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0;
    for (int t = 0; t < tokens && t0 + t < T; t++) {
        float *o = out + (size_t)(t0 + t) * out_stride;
        _mm512_mask_storeu_ps(o, rows0, _mm512_i32gather_ps(down_a_column, c + t, 4));
        _mm512_mask_storeu_ps(o + 16, rows1, _mm512_i32gather_ps(down_a_column, c + 16 * tokens + t, 4));
    }
}
/* out[t][r0 + i] for the n <= 32 rows at w (bf16, `cols` apart; a whole 32 of them readable) and
   all T tokens: per 32 tokens, 2 x 2 tiles of sums */
static void amx_rows_times_tokens(float *out, int out_stride, const uint16_t *w, const uint32_t *xv, int cols, int n, int T) {
    float c[32][32] __attribute__((aligned(64)));
    int ks_n = cols / 32;
    for (int t0 = 0; t0 < T; t0 += 32) {
        const uint32_t *x0 = xv + (size_t)(t0 / 16) * ks_n * 256, *x1 = x0 + (size_t)ks_n * 256;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ks = 0; ks < ks_n; ks++) {
            _tile_loadd(4, w + 32 * ks, cols * 2);                     // rows 0 .. 15
            _tile_loadd(5, w + (size_t)16 * cols + 32 * ks, cols * 2); // rows 16 .. 31
            _tile_loadd(6, x0 + (size_t)ks * 256, 64);                 // tokens t0 .. t0 + 15
            _tile_loadd(7, x1 + (size_t)ks * 256, 64);                 // t0 + 16 .. t0 + 31
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, &c[0][0], 128);
        _tile_stored(1, &c[0][16], 128);
        _tile_stored(2, &c[16][0], 128);
        _tile_stored(3, &c[16][16], 128);
        amx_store_token_rows(out, out_stride, &c[0][0], 32, n, t0, T);
    }
}

/* q8 batches on AMX's int8 tiles. A q8 product sums each group of 64 weight x input products
   exactly in int32 and scales the sum once (quantize_x, above); the tiles multiply int8 by
   int8, so each int16 x_q is split into bytes, x_q = 256 hi + lo (hi signed, lo 0..255), and a
   group is two tile products, TDPBSSD on hi and TDPBSUD on lo: the same integers as one token's
   kernels. Per group, the 32 rows x 16 tokens of sums leave the tiles and are scaled by
   w_scale[r][g] * x_scale[t][g] into fp32 sums, as one token's are. The weights are A tiles as
   they lie in the file (16 rows of one group: 64 bytes each); x is packed once into B tiles. */
typedef struct {
    int8_t *bytes; // per 16 tokens and group g: the hi tile, then the lo tile, each [16 quads][16 tokens][4]
    float *scale;  // [groups][T rounded up to 16]: x_scale of each token and group
    int T16;       // T rounded up to 16 (tokens past T: 0, scale 0)
} AmxQ8Tokens;
// token t into its hi and lo tiles (xq: scratch for its int16 values)
static void amx_pack_token_q8(AmxQ8Tokens *xt, QuantizedX *xq, const float *x, int t, int cols) {
    int G = cols / Q8_GROUP;
    quantize_token(xq, x + (size_t)t * cols, cols);
    for (int g = 0; g < G; g++) {
        xt->scale[(size_t)g * xt->T16 + t] = xq->scale[g];
        int8_t *hi = xt->bytes + ((size_t)(t / 16) * G + g) * 2048, *lo = hi + 1024;
        for (int k = 0; k < Q8_GROUP; k++) {
            int v = xq->q[g * Q8_GROUP + k], at = (k / 4) * 64 + (t % 16) * 4 + k % 4;
            hi[at] = (int8_t)(v >> 8); // (arithmetic shift: v = 256 hi + lo)
            lo[at] = (int8_t)(uint8_t)(v & 0xff);
        }
    }
}
// a batch's x into B tiles once per call, its tokens shared among the threads
typedef struct { const float *x; int T, cols; uint32_t *bf16; AmxQ8Tokens *q8; } AmxPackJob;
static void amx_pack_share(void *arg, int thread, int nt) {
    AmxPackJob *j = arg;
    QuantizedX xq = {0};
    if (j->q8) xq = (QuantizedX){xcalloc((size_t)j->cols, sizeof(int16_t)), xcalloc((size_t)j->cols / Q8_GROUP, sizeof(float))};
    for (int t = thread; t < j->T; t += nt) {
        if (j->bf16) amx_pack_token_bf16(j->bf16, j->x, t, j->cols);
        if (j->q8) amx_pack_token_q8(j->q8, &xq, j->x, t, j->cols);
    }
    free(xq.q);
    free(xq.scale);
}
// the bf16 tiles (returned) if bf16, and q8's into *job->q8 if it is set
static uint32_t *amx_pack_tokens(AmxPackJob *job, int bf16) {
    int T = job->T, cols = job->cols;
    if (bf16) job->bf16 = xcalloc((size_t)(T + 31) / 32 * 2 * (cols / 32) * 256, sizeof(uint32_t));
    if (job->q8) {
        job->q8->T16 = (T + 15) / 16 * 16;
        job->q8->bytes = xcalloc((size_t)job->q8->T16 * cols * 2, 1);
        job->q8->scale = xcalloc((size_t)(cols / Q8_GROUP) * job->q8->T16, sizeof(float));
    }
    run_parallel(amx_pack_share, job);
    return job->bf16;
}
// out[t][r0 + i] for the n <= 32 q8 rows at w (their scales w_scale, `cols / 64` a row; a whole
// 32 readable) and all T tokens
static void amx_q8_rows_times_tokens(float *out, int out_stride, const int8_t *w, const float *w_scale, const AmxQ8Tokens *xt,
                                     int cols, int n, int T) {
    int32_t c[4][16][16] __attribute__((aligned(64))); // hi rows 0-15, hi 16-31, lo 0-15, lo 16-31
    __m512 acc[32];
    int G = cols / Q8_GROUP;
    for (int t0 = 0; t0 < T; t0 += 16) {
        for (int r = 0; r < 32; r++) acc[r] = _mm512_setzero_ps();
        for (int g = 0; g < G; g++) {
            const int8_t *x_tiles = xt->bytes + ((size_t)(t0 / 16) * G + g) * 2048;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            _tile_loadd(4, w + (size_t)g * Q8_GROUP, cols);                       // rows 0 .. 15
            _tile_loadd(5, w + (size_t)16 * cols + (size_t)g * Q8_GROUP, cols); // rows 16 .. 31
            _tile_loadd(6, x_tiles, 64);                                         // hi
            _tile_loadd(7, x_tiles + 1024, 64);                                  // lo
            _tile_dpbssd(0, 4, 6);
            _tile_dpbssd(1, 5, 6);
            _tile_dpbsud(2, 4, 7);
            _tile_dpbsud(3, 5, 7);
            _tile_stored(0, c[0], 64);
            _tile_stored(1, c[1], 64);
            _tile_stored(2, c[2], 64);
            _tile_stored(3, c[3], 64);
            __m512 x_scale = _mm512_loadu_ps(xt->scale + (size_t)g * xt->T16 + t0);
            for (int r = 0; r < 32; r++) { // row r's 16 tokens: 256 hi + lo, exact in int32
                __m512i sum = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(c[r / 16][r % 16]), 8), _mm512_load_si512(c[2 + r / 16][r % 16]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(_mm512_set1_ps(w_scale[(size_t)r * G + g]), x_scale), acc[r]);
            }
        }
        float a[32][16] __attribute__((aligned(64)));
        for (int r = 0; r < 32; r++) _mm512_store_ps(a[r], acc[r]);
        amx_store_token_rows(out, out_stride, &a[0][0], 16, n, t0, T);
    }
}
#endif

/* matmul: out[t][r] = sum_j W[r][j] * x[t][j] for T tokens. THE hot spot: nearly all
   of a token's time is spent here, reading the weights. Rows are shared among the threads
   in chunks (matmul_rows). One token: each row is dotted straight from its dtype. Several
   tokens (a prompt batch): TILE_ROWS rows, converted to fp32 once, times all T tokens
   (above). */
#define ROW_PAD_FLOATS 16 // rows apart by 4 KB x 2^n share one L1 set: 64 bytes more between copied rows
#define MAX_MATMULS 6     // matrices sharing one input in one call (a linear layer's projections)
typedef struct {
    int n, T;
    float *out[MAX_MATMULS];
    const Matrix *w[MAX_MATMULS];
    const float *x;
    const float *x_bf16;   // bf16 weights: x rounded to bf16 values
    const float *x_pairs;  // one token, bf16 weights: the rounded x in bf16 pair order
    const QuantizedX *x_q8; // one token, q8 weights: x in int16 (quantize_x)
    const float *x_packed; // a batch: x packed by pack_tokens
    const float *x_packed_q8; // ... and for q8 weights, the rounded x packed
    const float *x_packed_bf16; // ... and for bf16 weights
    const uint32_t *x_pairs_packed; // ... and as bf16 pairs for bf16_rows_times_tokens
    const void *x_q8_tokens; // a batch, q8 weights, VNNI: x rounded into q8_rows_times_tokens' layout (a Q8Tokens)
    const uint32_t *x_amx; // a batch, bf16 weights, AMX: x in B tiles (amx_pack_tokens)
    const void *x_amx_q8;  // a batch, q8 weights, AMX: x in int8 B tiles (an AmxQ8Tokens)
    int chunk_rows[MAX_MATMULS], first_chunk[MAX_MATMULS + 1]; // matrix i's rows: chunks first_chunk[i].. of chunk_rows[i]
    atomic_int next_chunk; // the next chunk nobody has taken
} MatmulJob;
#define CHUNK_ROWS (4 * TILE_ROWS)     // a batch's chunk
#define DECODE_CHUNK_BYTES (256 << 10) // one token's: 256 KB of weights (little of it prefetched for nothing)

/* Each thread takes a chunk of rows of a matrix at a time, as long as some are left (on a
   shared machine one core can fall behind: equal shares made the other wait). One token:
   each row dotted straight from its dtype. A batch: TILE_ROWS rows (as fp32) at a time times
   every group of tokens. */
static void matmul_rows(void *arg, int thread, int nt) {
    MatmulJob *j = arg;
    (void)thread, (void)nt;
    int cols = j->w[0]->cols;
    size_t stride = (size_t)cols + ROW_PAD_FLOATS;
    float *rows = NULL; // narrow weights as fp32, a chunk's rows
    uint8_t *amx_rows = NULL; // AMX: a last chunk's rows (and q8 scales), padded with zeros
    for (int c; (c = atomic_fetch_add_explicit(&j->next_chunk, 1, memory_order_relaxed)) < j->first_chunk[j->n];) {
        int m = 0;
        while (c >= j->first_chunk[m + 1]) m++;
        const Matrix *w = j->w[m];
        int r0 = (c - j->first_chunk[m]) * j->chunk_rows[m], r1 = r0 + j->chunk_rows[m] < w->rows ? r0 + j->chunk_rows[m] : w->rows;
        if (j->T == 1) {
#ifdef SIMD_AVX512
            if (j->x_pairs && w->dtype == DTYPE_BF16) {
                for (int r = r0; r < r1; r++) j->out[m][r] = dot_bf16_pairs_512((const uint16_t *)w->data + (size_t)r * w->cols, j->x_pairs, w->cols);
                continue;
            }
#endif
            if (w->dtype == DTYPE_Q8)
                for (int r = r0; r < r1; r++) j->out[m][r] = dot_row_q8(w, r, j->x_q8);
            else
                for (int r = r0; r < r1; r++) j->out[m][r] = dot_row(w, r, w->dtype == DTYPE_BF16 ? j->x_bf16 : j->x);
            continue;
        }
#ifdef SIMD_AMX
        if ((j->x_amx && w->dtype == DTYPE_BF16) || (j->x_amx_q8 && w->dtype == DTYPE_Q8)) { // (chunks of AMX_ROWS rows)
            size_t row_bytes = w->dtype == DTYPE_Q8 ? (size_t)cols : 2 * (size_t)cols, G = (size_t)cols / Q8_GROUP;
            size_t chunk_bytes = AMX_ROWS * (2 * (size_t)cols + sizeof(float) * G); // (bf16 rows, or q8 rows and scales)
            if (!amx_rows) {
                amx_rows = xcalloc(chunk_bytes, 1);
                amx_configure();
            }
            const uint8_t *wr = (const uint8_t *)w->data + (size_t)r0 * row_bytes;
            const float *scales = w->dtype == DTYPE_Q8 ? w->scales + (size_t)r0 * G : NULL;
            if (r1 - r0 < AMX_ROWS) { // the last chunk: its rows and zeros (tiles read 32 rows)
                memset(amx_rows, 0, chunk_bytes);
                memcpy(amx_rows, wr, row_bytes * (size_t)(r1 - r0));
                wr = amx_rows;
                if (scales) scales = memcpy(amx_rows + AMX_ROWS * row_bytes, scales, sizeof(float) * G * (size_t)(r1 - r0));
            }
            if (w->dtype == DTYPE_Q8)
                amx_q8_rows_times_tokens(j->out[m] + r0, w->rows, (const int8_t *)wr, scales, j->x_amx_q8, cols, r1 - r0, j->T);
            else
                amx_rows_times_tokens(j->out[m] + r0, w->rows, (const uint16_t *)wr, j->x_amx, cols, r1 - r0, j->T);
            continue;
        }
#endif
        const uint32_t *pairs = w->dtype == DTYPE_BF16 ? j->x_pairs_packed : NULL; // (bf16_rows_times_tokens)
        const void *q8_tokens = w->dtype == DTYPE_Q8 ? j->x_q8_tokens : NULL;     // (q8_rows_times_tokens)
        if (w->dtype != DTYPE_F32 && !pairs && !rows && !(rows = malloc(sizeof(float) * CHUNK_ROWS * stride))) fatal("out of memory");
        if (q8_tokens) // the chunk's rows widened to int16 pairs (cols / 2 int32 of each row's stride)
            for (int r = r0; r < r1; r++) {
                const int8_t *wq = (const int8_t *)w->data + (size_t)r * cols;
                int32_t *row = (int32_t *)(rows + (size_t)(r - r0) * stride);
                for (int p = 0; p < cols / 2; p++) row[p] = (int32_t)pair16((uint16_t)wq[2 * p], (uint16_t)wq[2 * p + 1]);
            }
        else if (w->dtype != DTYPE_F32 && !pairs)
            for (int r = r0; r < r1; r++) matrix_row(w, r, rows + (size_t)(r - r0) * stride);
        // token groups outside, the chunk's row tiles inside: a group's packed x (cols x TILE_TOKENS
        // floats) stays in L2 for the chunk's tiles; tiles outside streamed all of x from L3 for
        // every tile (bench/RESULTS.md, eighth session: +10-35% on the 340M products of 512 tokens)
        const float *xp = w->dtype == DTYPE_Q8 ? j->x_packed_q8 : w->dtype == DTYPE_BF16 ? j->x_packed_bf16 : j->x_packed;
        int tile_rows = TILE_ROWS;
#ifdef SIMD_Q8_TILE
        if (q8_tokens) tile_rows = Q8_TILE_ROWS;
#endif
        for (int t0 = 0; t0 < j->T; t0 += TILE_TOKENS)
            for (int r = r0; r < r1; r += tile_rows) {
                int n = r1 - r < tile_rows ? r1 - r : tile_rows, nt = j->T - t0 < TILE_TOKENS ? j->T - t0 : TILE_TOKENS;
                const void *wr[TILE_ROWS];
                for (int i = 0; i < tile_rows; i++) {
                    int ri = r + (i < n ? i : n - 1); // past the end: repeat the last row, results dropped
                    wr[i] = pairs ? (const void *)((const uint16_t *)w->data + (size_t)ri * cols)
                            : w->dtype == DTYPE_F32 ? (const void *)((const float *)w->data + (size_t)ri * cols) : rows + (size_t)(ri - r0) * stride;
                }
                float *o = j->out[m] + (size_t)t0 * w->rows + r;
#ifdef SIMD_Q8_TILE
                if (q8_tokens) {
                    const Q8Tokens *q = q8_tokens;
                    const float *ws[Q8_TILE_ROWS]; // the rows' group scales, past the end as wr repeats the last
                    for (int i = 0; i < Q8_TILE_ROWS; i++) ws[i] = w->scales + (size_t)(r + (i < n ? i : n - 1)) * (cols / Q8_GROUP);
                    q8_rows_times_tokens(o, w->rows, (const int32_t *const *)wr, ws, q->pairs + (size_t)t0 * cols / 2,
                                         q->scale + (size_t)t0 * (cols / Q8_GROUP), cols, n, nt);
                    continue;
                }
#endif
#ifdef SIMD_BF16_TILE
                if (pairs) {
                    bf16_rows_times_tokens(o, w->rows, (const uint16_t *const *)wr, pairs + (size_t)t0 * cols / 2, cols, n, nt);
                    continue;
                }
#endif
                rows_times_tokens(o, w->rows, (const float *const *)wr, xp + (size_t)t0 * cols, cols, n, nt);
            }
    }
    free(rows);
#ifdef SIMD_AMX
    if (amx_rows) _tile_release();
#endif
    free(amx_rows);
}

#ifdef USE_OPENBLAS
/* With OpenBLAS (make BLAS=1), a prompt batch is sgemms: out[T][rows] = x[T][cols] W^T, in
   blocks of BLOCK_ROWS rows that our threads take as they free up, OpenBLAS itself on one
   thread (set in main). Left to split one sgemm over its own threads, OpenBLAS summed some
   outputs differently with 3 threads than with 1 or 2; fixed blocks give the same logits for
   any -T. Weights in another dtype are converted to fp32 a block at a time first. */
#include <cblas.h>
#undef I // complex.h, pulled in by cblas.h, defines I
typedef struct { float *out; const float *x; const Matrix *w; int T; atomic_int next; } BlasJob;
#define BLOCK_ROWS 256
static void blas_blocks(void *arg, int thread, int nt) {
    BlasJob *j = arg;
    const Matrix *w = j->w;
    float *block = NULL; // this thread's rows as fp32 (other dtypes)
    (void)thread, (void)nt;
    for (int r0; (r0 = BLOCK_ROWS * atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < w->rows;) {
        int n = w->rows - r0 < BLOCK_ROWS ? w->rows - r0 : BLOCK_ROWS;
        const float *rows = (const float *)w->data + (size_t)r0 * w->cols;
        if (w->dtype != DTYPE_F32) {
            if (!block) block = xcalloc((size_t)BLOCK_ROWS * w->cols, sizeof(float));
            for (int r = 0; r < n; r++) matrix_row(w, r0 + r, block + (size_t)r * w->cols);
            rows = block;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->T, n, w->cols, 1.0f, j->x, w->cols, rows, w->cols, 0.0f,
                    j->out + r0, w->rows);
    }
    free(block);
}
static void matmul_blas(float *out, const float *x, const Matrix *w, int T) {
    BlasJob j = {.out = out, .x = x, .w = w, .T = T};
    run_parallel(blas_blocks, &j);
}
#endif

/* out_i = W_i x for n matrices W_i that share the input x [T][cols] (a layer's projections;
   those without data, which this layer lacks, are skipped): x is packed (or put in bf16 pair
   order, or rounded to int16 for q8 weights) once, and all the rows go out in one parallel call. */
static void matmuls(const float *x, int T, int n, float *const out[], const Matrix *const w[]) {
    if (n > MAX_MATMULS) fatal("internal: %d matrices in one matmuls call", n);
    MatmulJob j = {.T = T, .x = x};
    size_t work = 0;
    int bf16 = 0, q8 = 0, other = 0, amx_bf16 = 0, amx_q8 = 0;
    for (int i = 0; i < n; i++) {
        if (!w[i]->data) continue; // a projection this layer does not have
        j.out[j.n] = out[i];
        j.w[j.n++] = w[i];
        work += (size_t)w[i]->rows * w[i]->cols * T;
        bf16 |= w[i]->dtype == DTYPE_BF16;
        q8 |= w[i]->dtype == DTYPE_Q8;
        other |= w[i]->dtype != DTYPE_Q8 && w[i]->dtype != DTYPE_BF16;
    }
    if (!j.n) return;
    int cols = j.w[0]->cols;
#ifdef SIMD_AMX
    if (T > 1 && (bf16 || q8) && amx_ready()) {
        amx_bf16 = bf16 && cols % 32 == 0;
        amx_q8 = q8; // (cols % 64 == 0: checked at load)
    }
#endif
    for (int i = 0; i < j.n; i++) {
        size_t row_bytes = dtype_bytes(j.w[i]->dtype, 1, (uint64_t)cols);
        j.chunk_rows[i] = (amx_bf16 && j.w[i]->dtype == DTYPE_BF16) || (amx_q8 && j.w[i]->dtype == DTYPE_Q8) ? AMX_ROWS
                          : T > 1 || row_bytes * CHUNK_ROWS >= DECODE_CHUNK_BYTES ? CHUNK_ROWS : (int)(DECODE_CHUNK_BYTES / row_bytes);
        j.first_chunk[i + 1] = j.first_chunk[i] + (j.w[i]->rows + j.chunk_rows[i] - 1) / j.chunk_rows[i];
    }
    float *pairs = NULL, *x_bf16 = NULL; // (buffers per call: nothing outlives the run state)
    uint32_t *x_amx = NULL;
    if (bf16 && (T == 1 || !amx_bf16)) { // (AMX packs its own)
        x_bf16 = xcalloc((size_t)T * cols, sizeof(float));
        for (size_t i = 0; i < (size_t)T * cols; i++) x_bf16[i] = bf16_to_f32(f32_to_bf16(x[i]));
        j.x_bf16 = x_bf16;
    }
#ifdef SIMD_AMX
    AmxQ8Tokens x_amx_q8 = {0};
    if (amx_bf16 || amx_q8) {
        AmxPackJob pack = {.x = x, .T = T, .cols = cols, .q8 = amx_q8 ? &x_amx_q8 : NULL};
        j.x_amx = x_amx = amx_pack_tokens(&pack, amx_bf16);
        j.x_amx_q8 = pack.q8;
    }
#endif
#ifdef SIMD_AVX512
    if (T == 1 && bf16 && cols % 32 == 0) { // once per input, for all threads
        pairs = xcalloc((size_t)cols, sizeof(float));
        bf16_pair_order(pairs, x_bf16, cols);
        j.x_pairs = pairs;
    }
#endif
    QuantizedX xq = {0};
    float *rounded = NULL; // a batch for q8 weights: each token's x rounded as for one token, as floats
    int q8_tile = 0;       // ... or in q8_rows_times_tokens' layout
#ifdef SIMD_Q8_TILE
    q8_tile = T > 1 && q8 && !amx_q8 && q8_tile_on();
    Q8Tokens q8_tokens = {0};
#endif
    if (q8 && (T == 1 || !amx_q8)) { // (AMX rounds and packs its own)
        xq.q = xcalloc((size_t)cols, sizeof(int16_t));
        xq.scale = xcalloc((size_t)cols / Q8_GROUP, sizeof(float));
        if (T == 1) quantize_token(&xq, x, cols);
#ifdef SIMD_Q8_TILE
        else if (q8_tile) {
            q8_tokens = q8_pair_tokens(&xq, x, T, cols);
            j.x_q8_tokens = &q8_tokens;
        }
#endif
        else {
            rounded = xcalloc((size_t)T * cols, sizeof(float));
            for (int t = 0; t < T; t++) {
                quantize_token(&xq, x + (size_t)t * cols, cols);
                dequantize_x(rounded + (size_t)t * cols, &xq, cols);
            }
        }
        j.x_q8 = &xq;
    }
    float *packed = NULL, *packed_q8 = NULL, *packed_bf16 = NULL;
    uint32_t *packed_pairs = NULL;
    int blas = 0;
#ifdef USE_OPENBLAS
    blas = T > 1 && !amx_bf16 && !amx_q8;
    for (int i = 0; blas && i < j.n; i++)
        matmul_blas(j.out[i], j.w[i]->dtype == DTYPE_Q8 ? rounded : j.w[i]->dtype == DTYPE_BF16 ? x_bf16 : x, j.w[i], T);
#endif
    if (T > 1 && !blas) { // x packed once for all threads and matrices
        if (other) j.x_packed = packed = packed_tokens(x, T, cols);
        if (q8 && !amx_q8 && !q8_tile) j.x_packed_q8 = packed_q8 = packed_tokens(rounded, T, cols);
        int bf16_tile = 0; // bf16 products through bf16_rows_times_tokens, on x in pairs
#ifdef SIMD_BF16_TILE
        bf16_tile = bf16 && !amx_bf16 && cols % 2 == 0 && bf16_tile_on();
        if (bf16_tile) j.x_pairs_packed = packed_pairs = pair_tokens(x_bf16, T, cols);
#endif
        if (bf16 && !amx_bf16 && !bf16_tile) j.x_packed_bf16 = packed_bf16 = packed_tokens(x_bf16, T, cols);
    }
    const char *last = NULL; // one token: where the call's reading ends in the file (dtype_bytes: q8 scales included)
    for (int i = 0; T == 1 && i < j.n; i++) {
        const char *e = (const char *)j.w[i]->data + dtype_bytes(j.w[i]->dtype, (uint64_t)j.w[i]->rows, (uint64_t)j.w[i]->cols);
        last = e > last ? e : last;
    }
    atomic_store_explicit(&pool.prefetch_from, last, memory_order_relaxed);
    if (!blas && work < (1u << 15)) matmul_rows(&j, 0, 1); // too small to share
    else if (!blas) run_parallel(matmul_rows, &j);
    atomic_store_explicit(&pool.prefetch_from, NULL, memory_order_relaxed);
    free(packed);
    free(packed_q8);
    free(packed_bf16);
    free(packed_pairs);
    free(x_bf16);
    free(x_amx);
#ifdef SIMD_AMX
    free(x_amx_q8.bytes);
    free(x_amx_q8.scale);
#endif
    free(rounded);
#ifdef SIMD_Q8_TILE
    free(q8_tokens.pairs);
    free(q8_tokens.scale);
#endif
    free(xq.q);
    free(xq.scale);
    free(pairs);
}

static void matmul(float *out, const float *x, const Matrix *w, int T) { matmuls(x, T, 1, &out, &w); }

/* RMSNorm: y = x / sqrt(mean(x^2) + eps) * w   (eps inside the root, added to the mean) */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

/* fla's FusedRMSNormGated: y = RMSNorm(x) * silu(gate); without a gate, plain RMSNorm */
static void gated_rmsnorm(float *out, const float *x, const float *gate, const float *w, int n, float eps) {
    rmsnorm(out, x, w, n, eps);
    if (gate) for (int i = 0; i < n; i++) out[i] *= silu(gate[i]);
}

/* L2 normalisation of q and k (fla's l2norm): x / sqrt(sum(x^2) + 1e-6)   (eps added to the SUM) */
static void l2norm(float *x, int n) {
    float r = 1.0f / sqrtf(dot_f32(x, x, n) + 1e-6f);
    for (int i = 0; i < n; i++) x[i] *= r;
}

/* Short causal depthwise convolution over time, for each channel c:
     y_t[c] = sum_{j=0}^{K-1} w[c][j] * x_{t-(K-1)+j}[c]     (w[c][K-1] weighs the current token)
   then silu if asked. x is [T][channels] (row stride `stride`), transformed in place;
   the cache holds each channel's K-1 previous raw inputs, oldest first. The channels are
   independent: the threads take a share of them each, walking all T tokens. */
typedef struct { float *x; int T; size_t stride; int channels; float *cache; const float *w; int K, use_silu; } ConvJob;

static void conv_channel(const ConvJob *j, int c) {
    int K = j->K;
    float *hist = j->cache + (size_t)c * (K - 1);
    const float *wc = j->w + (size_t)c * K;
    for (int t = 0; t < j->T; t++) {
        float *xtc = j->x + (size_t)t * j->stride + c;
        float y = wc[K - 1] * *xtc;
        for (int i = 0; i < K - 1; i++) y += wc[i] * hist[i];
        for (int i = 0; i + 1 < K - 1; i++) hist[i] = hist[i + 1];
        if (K > 1) hist[K - 2] = *xtc;
        *xtc = j->use_silu ? silu(y) : y;
    }
}
/* The same for VEC_FLOATS neighbouring channels at once, their weights and histories held as
   vectors (one token's channels are adjacent in x; walking one channel down the tokens
   touched a new cache line per token, all in one L1 set when rows are 4 KB apart), silu by
   vexp. A channel is always in the same kind of block, so a prompt and its tokens one by one
   agree. (GatedDeltaNet 340M, 512-token prompt: the convolutions were 4.3% of its time.) */
static void conv_block(const ConvJob *j, int c0) {
    int K = j->K;
    vfloat w[64], hist[64]; // K <= 64 (load_model)
    for (int i = 0; i < K; i++)
        for (int l = 0; l < VEC_FLOATS; l++) w[i][l] = j->w[(size_t)(c0 + l) * K + i];
    for (int i = 0; i < K - 1; i++)
        for (int l = 0; l < VEC_FLOATS; l++) hist[i][l] = j->cache[(size_t)(c0 + l) * (K - 1) + i];
    for (int t = 0; t < j->T; t++) {
        float *xt = j->x + (size_t)t * j->stride + c0;
        vfloat x = vload(xt), y = w[K - 1] * x;
        for (int i = 0; i < K - 1; i++) y += w[i] * hist[i];
        for (int i = 0; i + 1 < K - 1; i++) hist[i] = hist[i + 1];
        if (K > 1) hist[K - 2] = x;
        vstore(xt, j->use_silu ? vsilu(y) : y);
    }
    for (int i = 0; i < K - 1; i++)
        for (int l = 0; l < VEC_FLOATS; l++) j->cache[(size_t)(c0 + l) * (K - 1) + i] = hist[i][l];
}
// the threads take whole blocks of VEC_FLOATS channels, then a share of the channels past them
static void short_conv_channels(void *arg, int thread, int nt) {
    const ConvJob *j = arg;
    int blocks = j->channels / VEC_FLOATS, rest = j->channels - blocks * VEC_FLOATS;
    for (int b = (int)((long)blocks * thread / nt); b < (int)((long)blocks * (thread + 1) / nt); b++) conv_block(j, b * VEC_FLOATS);
    for (int c = blocks * VEC_FLOATS + rest * thread / nt; c < blocks * VEC_FLOATS + rest * (thread + 1) / nt; c++) conv_channel(j, c);
}

static void short_conv(float *x, int T, size_t stride, int channels, float *cache, const float *w, int K, int use_silu) {
    ConvJob job = {x, T, stride, channels, cache, w, K, use_silu};
    if ((long)T * channels < (1L << 14)) short_conv_channels(&job, 0, 1);
    else run_parallel(short_conv_channels, &job);
}

/* RoPE, GPT-NeoX "rotate half" as fla applies it, on each head of x at position pos:
     out[i] = x[i] cos(p f_i) - x[i+d/2] sin(p f_i),  out[i+d/2] = x[i] sin(p f_i) + x[i+d/2] cos(p f_i) */
static void rope(float *x, int n_heads, int head_dim, int pos, const float *inv_freq) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            float x1 = xh[i], x2 = xh[i + half];
            xh[i] = x1 * c - x2 * s;
            xh[i + half] = x1 * s + x2 * c;
        }
    }
}

static void softmax(float *x, int n) {
    float mx = x[0], sum = 0.0f;
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx; // not fmaxf: a libm call per element here
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

// the same, a vector at a time (the max and the sum in VEC_FLOATS lanes, exp by vexp; the last n % VEC_FLOATS as above)
static void softmax_simd(float *x, int n) {
    int nv = n / VEC_FLOATS * VEC_FLOATS;
    vfloat vmx = (vfloat){0} + x[0], vsum = {0};
    for (int i = 0; i < nv; i += VEC_FLOATS) { vfloat v = vload(x + i); vmx = vselect(v > vmx, v, vmx); }
    float mx = x[0], sum = 0.0f;
    for (int l = 0; l < VEC_FLOATS; l++) mx = vmx[l] > mx ? vmx[l] : mx;
    for (int i = nv; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < nv; i += VEC_FLOATS) { vfloat e = vexp(vload(x + i) - mx); vstore(x + i, e); vsum += e; }
    for (int l = 0; l < VEC_FLOATS; l++) sum += vsum[l];
    for (int i = nv; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static void add_bias(float *x, const float *bias, int T, size_t stride, int n) {
    if (!bias) return;
    for (int t = 0; t < T; t++) for (int i = 0; i < n; i++) x[(size_t)t * stride + i] += bias[i];
}

// ----------------------------------------------------------------------------
// The layer kinds. Each takes the attn-normed input xb [T][dim] of T consecutive
// tokens starting at position pos, updates its state, and writes out [T][dim].
// Projections of all T tokens are matrix products; the recurrence then runs token by
// token, exactly as in fla's fused_recurrent kernels (fp32 state).

/* Softmax attention with RoPE, GQA and an optional sliding window (fla's Attention):
     q, k = RoPE(W_q x, p), RoPE(W_k x, p);  v = W_v x;  append k, v to the cache
     o_a = sum_{j in window} softmax_j(q_a . k_j / sqrt(d)) v_j    (query head a uses kv head a / (Hq/Hkv))
   The window keeps the current token and W-1 before it. All T keys of a batch go into the
   cache (a ring) first; then every (token, head) pair attends, spread over the threads (a
   prompt's by heads and blocks of queries, one decoded token's by ranges of its keys). */
typedef struct { const Model *m; LayerState *ls; RunState *s; int T, pos; } AttentionJob;

// the first key a query at position p sees (its window: p - W + 1 .. p)
static int first_key(const Config *c, int p) { return c->attn_window > 0 && p - c->attn_window + 1 > 0 ? p - c->attn_window + 1 : 0; }

/* The cache holds fp32 keys and values, or with --kv-dtype bf16 half the bytes: each rounded to
   bf16 (to nearest even) as it is appended, widened back to fp32 as attention reads it. A decoded
   token's attention reads the whole cache, so at long contexts it is memory-bound and bf16 nearly
   halves it (and the cache's memory). fla's bf16 models keep bf16 caches too. */
static char *kv_at(const RunState *s, void *cache, int p, size_t kvd, size_t offset) { // cache row p (a ring), from offset
    return (char *)cache + ((size_t)(p % s->kv_capacity) * kvd + offset) * dtype_bytes(s->kv_dtype, 1, 1);
}
static void kv_store(const RunState *s, void *cache, int p, size_t kvd, const float *x) {
    char *row = kv_at(s, cache, p, kvd, 0);
    if (s->kv_dtype == DTYPE_BF16) for (size_t i = 0; i < kvd; i++) ((uint16_t *)row)[i] = f32_to_bf16(x[i]);
    else memcpy(row, x, kvd * sizeof(float));
}
static void kv_load(const RunState *s, float *out, void *cache, int p, size_t kvd, size_t offset, size_t n) {
    const char *row = kv_at(s, cache, p, kvd, offset);
    if (s->kv_dtype == DTYPE_BF16) for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(((const uint16_t *)row)[i]);
    else memcpy(out, row, n * sizeof(float));
}
// acc += w * v, v n values of a cache row (the compiler vectorizes both loops)
static void kv_axpy(float *acc, float w, const char *v, int kv_dtype, int n) {
    if (kv_dtype == DTYPE_BF16) for (int e = 0; e < n; e++) acc[e] += w * bf16_to_f32(((const uint16_t *)v)[e]);
    else for (int e = 0; e < n; e++) acc[e] += w * ((const float *)v)[e];
}

static void attention_heads(void *arg, int thread, int nt) {
    AttentionJob *j = arg;
    const Config *c = &j->m->c;
    int hd = c->attn_head_dim, nq = c->attn_heads, group = nq / c->attn_kv_heads;
    size_t qd = (size_t)nq * hd, kvd = (size_t)c->attn_kv_heads * hd;
    float scale = 1.0f / sqrtf((float)hd), *att = j->s->att + (size_t)thread * j->s->att_floats;
    for (int task = thread; task < j->T * nq; task += nt) {
        int t = task / nq, h = task % nq, p = j->pos + t, kvh = h / group;
        int first = first_key(c, p);
        int n = p - first + 1;
        const float *qh = j->s->q + (size_t)t * qd + (size_t)h * hd;
        for (int i = 0; i < n; i++)
            att[i] = dot_typed(kv_at(j->s, j->ls->key_cache, first + i, kvd, (size_t)kvh * hd), j->s->kv_dtype, qh, hd) * scale;
        softmax_simd(att, n);
        float *oh = j->s->o + (size_t)t * qd + (size_t)h * hd;
        memset(oh, 0, hd * sizeof(float));
        for (int i = 0; i < n; i++) kv_axpy(oh, att[i], kv_at(j->s, j->ls->value_cache, first + i, kvd, (size_t)kvh * hd), j->s->kv_dtype, hd);
    }
}

/* The same for one decoded token, its keys shared among the threads instead of its heads. A
   head's key is hd floats of a cache row of kvd, so one head walking down the keys touches a
   new 4 KB page almost every key, where the hardware prefetcher stops: at 2000 keys that
   made attention most of a token's time (340M Transformer q8: 12 tokens/s against 52 at the
   start; 21 so, 24 with the prefetch below). Here each thread takes a range of the cache's
   rows and walks them in memory order, every head of a row at once, KEY_BLOCK rows at a time:
   the block's scores, then per head an online softmax (running max m, sum l, weighted values
   acc, as in flash attention) over the block's values. attention_merge then combines them:
     o_a = sum_r acc_{r,a} e^(m_{r,a} - M_a) / sum_r l_{r,a} e^(m_{r,a} - M_a),  M_a = max_r m_{r,a}
   The same sums as attention_heads in another order (fp32 rounding apart). Per thread, s->att
   holds [heads][KEY_BLOCK] scores, then m [heads], l [heads] and acc [heads][hd].
   The rows ATT_PREFETCH_ROWS ahead are asked of L2 while a row is used, as the weights' are:
   2000 keys, 340M Transformer q8, means of 3 interleaved: 1, 2, 4, 8 rows ahead 22.8, 23.4,
   23.4, 23.2 tokens/s, only a row's first 8 lines 20.0, into L1 20.9 (none: 20.8, another set). */
_Static_assert(KEY_BLOCK % VEC_FLOATS == 0, "attention_keys: whole vectors of scores");
#define ATT_PREFETCH_ROWS 4
static void prefetch_bytes(const char *p, size_t n) { // a prefetch never faults
    for (size_t i = 0; i < n; i += 64) __builtin_prefetch(p + i, 0, 2);
}
static void attention_keys(void *arg, int thread, int nt) {
    AttentionJob *j = arg;
    const Config *c = &j->m->c;
    int hd = c->attn_head_dim, nq = c->attn_heads, group = nq / c->attn_kv_heads, kv_dtype = j->s->kv_dtype;
    size_t kvd = (size_t)c->attn_kv_heads * hd, row_bytes = dtype_bytes(kv_dtype, kvd, 1), head_bytes = dtype_bytes(kv_dtype, (uint64_t)hd, 1);
    void *keys = j->ls->key_cache, *values = j->ls->value_cache;
    int p = j->pos, first = first_key(c, p), per = (p - first + 1 + nt - 1) / nt;
    int lo = first + thread * per, hi = lo + per < p + 1 ? lo + per : p + 1;
    float *scores = j->s->att + (size_t)thread * j->s->att_floats, *m = scores + (size_t)nq * KEY_BLOCK, *l = m + nq, *acc = l + nq;
    float scale = 1.0f / sqrtf((float)hd);
    for (int a = 0; a < nq; a++) m[a] = -INFINITY, l[a] = 0.0f;
    memset(acc, 0, sizeof(float) * nq * hd);
    for (int i0 = lo; i0 < hi; i0 += KEY_BLOCK) {
        int nb = hi - i0 < KEY_BLOCK ? hi - i0 : KEY_BLOCK;
        for (int i = 0; i < nb; i++) { // scores[a][i] = q_a . k_(i0 + i) / sqrt(d)
            const char *key_row = kv_at(j->s, keys, i0 + i, kvd, 0);
            int ahead = i + ATT_PREFETCH_ROWS; // the stream: a block's key rows, its value rows, the next block's key rows
            prefetch_bytes(ahead < nb ? kv_at(j->s, keys, i0 + ahead, kvd, 0) : kv_at(j->s, values, i0 + ahead - nb, kvd, 0), row_bytes);
            for (int a = 0; a < nq; a++)
                scores[a * KEY_BLOCK + i] = dot_typed(key_row + (a / group) * head_bytes, kv_dtype, j->s->q + (size_t)a * hd, hd) * scale;
        }
        for (int a = 0; a < nq; a++) { // the online softmax: rescale what came before to the new max
            float *sa = scores + a * KEY_BLOCK, mx = m[a];
            for (int i = 0; i < nb; i++) mx = sa[i] > mx ? sa[i] : mx;
            float rescale = expf(m[a] - mx); // 0 for the first block (m = -inf)
            for (int e = 0; e < hd; e++) acc[a * hd + e] *= rescale;
            l[a] *= rescale;
            for (int i = 0; i < nb; i += VEC_FLOATS) vstore(sa + i, vexp(vload(sa + i) - mx)); // KEY_BLOCK % VEC_FLOATS == 0
            for (int i = 0; i < nb; i++) l[a] += sa[i];
            m[a] = mx;
        }
        for (int i = 0; i < nb; i++) { // acc_a += e^(s - m) v_(i0 + i)
            const char *value_row = kv_at(j->s, values, i0 + i, kvd, 0);
            int ahead = i + ATT_PREFETCH_ROWS;
            if (ahead < nb) prefetch_bytes(kv_at(j->s, values, i0 + ahead, kvd, 0), row_bytes);
            else if (i0 + ahead < hi) prefetch_bytes(kv_at(j->s, keys, i0 + ahead, kvd, 0), row_bytes);
            for (int a = 0; a < nq; a++)
                kv_axpy(acc + (size_t)a * hd, scores[a * KEY_BLOCK + i], value_row + (a / group) * head_bytes, kv_dtype, hd);
        }
    }
}

// range r's m [heads], then l [heads], then acc [heads][hd] (after its scores)
static const float *range_m(const RunState *s, int nq, int r) { return s->att + (size_t)r * s->att_floats + (size_t)nq * KEY_BLOCK; }
static void attention_merge(const Config *c, RunState *s, int n_ranges) {
    int hd = c->attn_head_dim, nq = c->attn_heads;
    for (int a = 0; a < nq; a++) {
        float M = -INFINITY, L = 0.0f, *o = s->o + (size_t)a * hd;
        for (int r = 0; r < n_ranges; r++) {
            float m = range_m(s, nq, r)[a];
            M = m > M ? m : M;
        }
        memset(o, 0, sizeof(float) * hd);
        for (int r = 0; r < n_ranges; r++) {
            const float *m = range_m(s, nq, r), *l = m + nq, *acc = l + nq;
            if (m[a] == -INFINITY) continue; // an empty range
            float w = expf(m[a] - M);
            L += l[a] * w;
            for (int e = 0; e < hd; e++) o[e] += acc[(size_t)a * hd + e] * w;
        }
        for (int e = 0; e < hd; e++) o[e] /= L;
    }
}

/* The same for a prompt batch, TILE_TOKENS queries of one head at a time, as two matrix
   products on matmul's register tiles: scores = Q K^T (the block's keys as rows: a query's
   scores come out of registers 12 keys at a time, instead of one dot product and one sum
   across lanes per key), the mask and softmax per query exactly as above, then O = P V (the
   queries' probability rows as rows, V packed head-dim-major). Needs head_dim % TILE_TOKENS
   == 0; the plain loop above handles the rest (and one token). */

/* One block of queries t0..t0+nt-1 of head h; k_head: K of the keys v_first.. as fp32 [v_keys][hd],
   v_packed: their V as [hd / TILE_TOKENS][v_keys][TILE_TOKENS], both made once for all of the head's blocks */
static void attention_block(const AttentionJob *j, int h, int t0, int nt, float *scores, float *packed, float *o_tile,
                            const float *k_head, const float *v_packed, int v_first, int v_keys) {
    const Config *c = &j->m->c;
    int hd = c->attn_head_dim;
    size_t qd = (size_t)c->attn_heads * hd;
    int p0 = j->pos + t0, first = first_key(c, p0);
    int n = p0 + nt - first; // keys any query of the block sees: first .. p0 + nt - 1
    for (int d = 0; d < hd; d++) // the block's queries, [hd][TILE_TOKENS]
        for (int t = 0; t < TILE_TOKENS; t++) packed[d * TILE_TOKENS + t] = t < nt ? j->s->q[(size_t)(t0 + t) * qd + (size_t)h * hd + d] : 0.0f;
    for (int i0 = 0; i0 < n; i0 += TILE_ROWS) { // scores[t][i] = q_t . k_(first + i)
        int ni = n - i0 < TILE_ROWS ? n - i0 : TILE_ROWS;
        const float *keys[TILE_ROWS];
        for (int i = 0; i < TILE_ROWS; i++)
            keys[i] = k_head + (size_t)(first - v_first + i0 + (i < ni ? i : ni - 1)) * hd;
        rows_times_tokens(scores + i0, n, keys, packed, hd, ni, nt);
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < nt; t++) { // each query's keys: its window up to itself; the rest get probability 0
        int p = p0 + t, lo = first_key(c, p); // (>= first: the block's first query sees the furthest back)
        float *row = scores + (size_t)t * n;
        for (int i = lo - first; i <= p - first; i++) row[i] *= scale;
        softmax_simd(row + (lo - first), p - lo + 1);
        for (int i = 0; i < lo - first; i++) row[i] = 0.0f;
        for (int i = p - first + 1; i < n; i++) row[i] = 0.0f;
    }
    for (int t = 0; t < nt; t += TILE_ROWS) { // o_tile[d][t] = sum_i P[t][i] V[i][d]
        int nr = nt - t < TILE_ROWS ? nt - t : TILE_ROWS;
        const float *probs[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) probs[r] = scores + (size_t)(t + (r < nr ? r : nr - 1)) * n;
        for (int g = 0; g < hd / TILE_TOKENS; g++)
            rows_times_tokens(o_tile + (size_t)g * TILE_TOKENS * TILE_TOKENS + t, TILE_TOKENS, probs,
                              v_packed + ((size_t)g * v_keys + (first - v_first)) * TILE_TOKENS, n, nr, TILE_TOKENS);
    }
    for (int t = 0; t < nt; t++)
        for (int d = 0; d < hd; d++) j->s->o[(size_t)(t0 + t) * qd + (size_t)h * hd + d] = o_tile[d * TILE_TOKENS + t];
}

static void attention_blocks(void *arg, int thread, int nt) {
    const AttentionJob *j = arg;
    const Config *c = &j->m->c;
    int hd = c->attn_head_dim, n_max = j->pos + j->T, group = c->attn_heads / c->attn_kv_heads;
    size_t kvd = (size_t)c->attn_kv_heads * hd;
    int v_first = first_key(c, j->pos), v_keys = n_max - v_first; // the keys any query of the batch sees
    float *scores = malloc(sizeof(float) * TILE_TOKENS * n_max), *packed = malloc(sizeof(float) * hd * TILE_TOKENS),
          *o_tile = malloc(sizeof(float) * hd * TILE_TOKENS), *v_packed = malloc(sizeof(float) * hd * v_keys),
          *k_head = malloc(sizeof(float) * hd * v_keys);
    if (!scores || !packed || !o_tile || !v_packed || !k_head) fatal("out of memory");
    for (int h = thread; h < c->attn_heads; h += nt) { // a head at a time: its K and V as fp32 once for all its blocks
        size_t offset = (size_t)(h / group) * hd;
        for (int i = 0; i < v_keys; i++) {
            kv_load(j->s, k_head + (size_t)i * hd, j->ls->key_cache, v_first + i, kvd, offset, hd);
            for (int g = 0; g < hd / TILE_TOKENS; g++)
                kv_load(j->s, v_packed + ((size_t)g * v_keys + i) * TILE_TOKENS, j->ls->value_cache, v_first + i, kvd,
                        offset + (size_t)g * TILE_TOKENS, TILE_TOKENS);
        }
        for (int t0 = 0; t0 < j->T; t0 += TILE_TOKENS)
            attention_block(j, h, t0, j->T - t0 < TILE_TOKENS ? j->T - t0 : TILE_TOKENS, scores, packed, o_tile, k_head, v_packed,
                            v_first, v_keys);
    }
    free(scores);
    free(packed);
    free(o_tile);
    free(v_packed);
    free(k_head);
}

// RoPE on the batch's queries and keys, and the keys and values into the cache, tokens t = thread, thread + nt, ...
// A prompt's keys and values are the first writes into the cache's zero pages: ~1,000 page faults a layer
// for 128 tokens of the 340M Transformer, which the threads now share (its 512-token fp32 prompt: 427 -> 453
// tokens/s, means of 8 in turns, system time 0.21-0.26 -> 0.17-0.23 s; bench/RESULTS.md)
static void rope_and_cache(void *arg, int thread, int nt) {
    AttentionJob *j = arg;
    const Config *c = &j->m->c;
    int hd = c->attn_head_dim, nq = c->attn_heads, nkv = c->attn_kv_heads;
    size_t qd = (size_t)nq * hd, kvd = (size_t)nkv * hd;
    for (int t = thread; t < j->T; t += nt) {
        int p = j->pos + t;
        rope(j->s->q + (size_t)t * qd, nq, hd, p, j->m->rope_inv_freq_attn);
        rope(j->s->k + (size_t)t * kvd, nkv, hd, p, j->m->rope_inv_freq_attn);
        kv_store(j->s, j->ls->key_cache, p, kvd, j->s->k + (size_t)t * kvd);
        kv_store(j->s, j->ls->value_cache, p, kvd, j->s->v + (size_t)t * kvd);
    }
}

static void attention_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, int pos, float *out) {
    const Config *c = &m->c;
    int hd = c->attn_head_dim, nq = c->attn_heads, nkv = c->attn_kv_heads;
    size_t qd = (size_t)nq * hd, kvd = (size_t)nkv * hd;
    matmuls(s->xb, T, 3, (float *[]){s->q, s->k, s->v}, (const Matrix *[]){&w->q_proj, &w->k_proj, &w->v_proj});
    add_bias(s->q, w->q_bias, T, qd, (int)qd); // matmul rows are packed per token: stride = rows
    add_bias(s->k, w->k_bias, T, kvd, (int)kvd);
    add_bias(s->v, w->v_bias, T, kvd, (int)kvd);
    AttentionJob job = {m, ls, s, T, pos};
    if (T > 1) run_parallel(rope_and_cache, &job);
    else rope_and_cache(&job, 0, 1);
    ParallelFn heads = T == 1 ? attention_keys : hd % TILE_TOKENS == 0 ? attention_blocks : attention_heads;
    // else too little to share: a prompt's scores, or (one token) 64 KB of the cache's keys and values
    int shared = T == 1 ? (long)(pos + 1) * kvd >= 8192 : (long)T * nq * (pos + T) >= 4096;
    if (shared) run_parallel(heads, &job);
    else heads(&job, 0, 1);
    if (T == 1) attention_merge(c, s, shared ? n_threads : 1);
    matmul(out, s->o, &w->o_proj, T);
}

/* HGRN's and HGRN2's forget gate for channel d: g = lb + (1 - lb) sigmoid(f), in log space as fla,
   log g = logaddexp(log lb, log(1 - lb) + logsigmoid(f)) (layer 0: no lower bound) */
static float log_forget_gate(const LayerWeights *w, int layer, int d, float f) {
    float log_g = logsigmoid(f);
    if (w->lower_bound && layer > 0) log_g = logaddexp(w->log_lower_bound[d], w->log1m_lower_bound[d] + log_g);
    return log_g;
}
// the same for VEC_FLOATS channels from d
static vfloat vlog_forget_gate(const LayerWeights *w, int layer, int d, vfloat f) {
    vfloat log_g = vlogsigmoid(f);
    if (w->lower_bound && layer > 0) log_g = vlogaddexp(vload(w->log_lower_bound + d), vload(w->log1m_lower_bound + d) + log_g);
    return log_g;
}

// a share of a linear layer's state rows (or channels, or tokens) for one batch of T tokens (run_parallel)
typedef struct { const Model *m; const LayerWeights *w; LayerState *ls; RunState *s; int T, layer; } RowsJob;

/* A thread's share of the n_rows state rows over T tokens. Each row's tokens must go in order, but a
   token's q, k and gates are the same for every row of its head: so the rows go in groups of
   STATE_ROWS_AT_ONCE, each group token by token, and those vectors come from L2 once per group
   instead of once per row (row by row, a 512-token prompt streamed them from L2 for every row,
   ~1 MB each), while the group's independent rows overlap in the core. Each row's arithmetic is
   unchanged (logits bit for bit the same). 340M fp32 512-token prompt, one thread, the
   recurrence's share of the samples: HGRN2 13.9% -> 8.0%, GatedDeltaNet 18.8% -> 12.8%,
   RetNet 28.0% -> 22.0% (bench/RESULTS.md, tenth session). */
#define STATE_ROWS_AT_ONCE 16
#define FOR_STATE_ROWS(row, t, n_rows, thread, nt, T)                                                    \
    for (int row##_end = (int)((long)(n_rows) * ((thread) + 1) / (nt)), row##_group = (int)((long)(n_rows) * (thread) / (nt)); \
         row##_group < row##_end; row##_group += STATE_ROWS_AT_ONCE)                                    \
        for (int t = 0; t < (T); t++)                                                                    \
            for (int row = row##_group; row < row##_end && row < row##_group + STATE_ROWS_AT_ONCE; row++)

/* HGRN: a gated vector recurrence, one value per channel (I = expand dim):
     f = sigmoid(W_f x) lifted by the layer's lower bound lb:  g = lb + (1 - lb) * sigmoid(W_f x)
     h_t = g * h_{t-1} + (1 - g) * silu(W_i x)
     out = W_o ( RMSNorm(h_t) * silu(W_g x) )
   (fla computes g in log space: log g = logaddexp(log lb, log(1-lb) + logsigmoid(f)).) */
// a share of the channels, each walked over all T tokens (channel d's state is h[d] alone)
static void hgrn_channels(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const LayerWeights *w = jb->w;
    const RunState *s = jb->s;
    int I = jb->m->c.lin_head_v_dim;
    float *h = jb->ls->state;
    int step = I % VEC_FLOATS ? 1 : VEC_FLOATS, n = I / step; // the threads take whole vectors
    for (int b = (int)((long)n * thread / nt); b < (int)((long)n * (thread + 1) / nt); b++) {
        int d = b * step;
        if (step == 1) {
            for (int t = 0; t < jb->T; t++) {
                size_t i = (size_t)t * I + d;
                float g = expf(log_forget_gate(w, jb->layer, d, s->f[i]));
                h[d] = g * h[d] + silu(s->q[i]) * (1.0f - g);  // h_t = g h_{t-1} + (1-g) silu(i)
                s->o[i] = h[d];
            }
            continue;
        }
        vfloat hv = vload(h + d); // the same for VEC_FLOATS channels at a time
        for (int t = 0; t < jb->T; t++) {
            size_t i = (size_t)t * I + d;
            vfloat g = vexp(vlog_forget_gate(w, jb->layer, d, vload(s->f + i))), x = vload(s->q + i);
            hv = g * hv + vsilu(x) * (1.0f - g);
            vstore(s->o + i, hv);
        }
        vstore(h + d, hv);
    }
}

static void hgrn_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, int layer, float *out) {
    const Config *c = &m->c;
    int I = c->lin_head_v_dim;
    float *i_in = s->q, *f_in = s->f, *gate = s->g;
    matmuls(s->xb, T, 3, (float *[]){i_in, f_in, gate}, (const Matrix *[]){&w->i_proj, &w->f_proj, &w->g_proj});
    if (w->conv_w[0]) {
        short_conv(i_in, T, I, I, ls->conv_cache[0], w->conv_w[0], c->conv_size, 0);
        short_conv(f_in, T, I, I, ls->conv_cache[1], w->conv_w[1], c->conv_size, 0);
    }
    RowsJob job = {m, w, ls, s, T, layer};
    if ((long)T * I < (1L << 14)) hgrn_channels(&job, 0, 1);
    else run_parallel(hgrn_channels, &job);
    for (int t = 0; t < T; t++) gated_rmsnorm(s->o + (size_t)t * I, s->o + (size_t)t * I, gate + (size_t)t * I, w->out_norm, I, c->norm_eps);
    matmul(out, s->o, &w->o_proj, T);
}

/* HGRN2: HGRN with an outer-product (matrix) state per head; the input gate is tied
   to the forget gate and plays the key:
     q = silu(W_q x), g = lb + (1-lb) sigmoid(W_f x) (per key channel), k = 1 - g, v = W_i x
     S_t = diag(g) S_{t-1} + k v^T          (S: dk x dv per head)
     o_t = S_t^T (q / sqrt(dk))
     out = W_o RMSNorm_dim(o)               (over all heads at once; eps 1e-5; no output gate) */

/* HGRN2's gates for T tokens x F key channels (element i = t F + d), a share per thread:
     g = lb + (1 - lb) sigmoid(f), in log space as fla: log g = logaddexp(log lb, log(1 - lb) + logsigmoid(f))
     decay = g, k = 1 - g, q = silu(q) / sqrt(dk) */
static void hgrn2_gates(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const LayerWeights *w = jb->w;
    RunState *s = jb->s;
    int F = jb->m->c.lin_q_heads * jb->m->c.lin_head_k_dim;
    float scale = 1.0f / sqrtf((float)jb->m->c.lin_head_k_dim);
    size_t n = (size_t)jb->T * F, step = F % VEC_FLOATS ? 1 : VEC_FLOATS; // the threads take whole vectors
    for (size_t b = n / step * thread / nt; b < n / step * (thread + 1) / nt; b++) {
        size_t i = b * step;
        int d = (int)(i % F);
        if (step == 1) {
            s->a[i] = expf(log_forget_gate(w, jb->layer, d, s->f[i]));
            s->k[i] = 1.0f - s->a[i];
            s->q[i] = silu(s->q[i]) * scale;
            continue;
        }
        vfloat a = vexp(vlog_forget_gate(w, jb->layer, d, vload(s->f + i))), q = vload(s->q + i); // the same, a vector at a time
        vstore(s->a + i, a);
        vstore(s->k + i, 1.0f - a);
        vstore(s->q + i, vsilu(q) * scale);
    }
}

static void hgrn2_rows(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const Config *c = &jb->m->c;
    int nh = c->lin_q_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim, F = nh * dk, Dv = nh * dv, n_rows = nh * dv;
    const RunState *s = jb->s;
    FOR_STATE_ROWS(row, t, n_rows, thread, nt, jb->T) {
        int h = row / dv, j = row % dv; // head h, row j of its S^T: value channel j
        float *Sj = jb->ls->state + (size_t)h * dv * dk + (size_t)j * dk;
        const float *qh = s->q + (size_t)t * F + (size_t)h * dk, *kh = s->k + (size_t)t * F + (size_t)h * dk;
        const float *gh = s->a + (size_t)t * F + (size_t)h * dk;
        float vj = s->v[(size_t)t * Dv + (size_t)h * dv + j], *oj = s->o + (size_t)t * Dv + (size_t)h * dv + j;
#ifdef SIMD_AVX512 // the two lines below in one sweep, the same numbers bit for bit
        *oj = sweep_dot_simd512(SWEEP_DECAY, Sj, vj, gh, kh, qh, dk);
#else
        for (int i = 0; i < dk; i++) Sj[i] = gh[i] * Sj[i] + kh[i] * vj;      // S = diag(g) S + k v^T
        *oj = dot_f32(Sj, qh, dk);                                            // o = S^T q
#endif
    }
}

static void hgrn2_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, int layer, float *out) {
    const Config *c = &m->c;
    int nh = c->lin_q_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim;
    int F = nh * dk, Dv = nh * dv;
    float *q = s->q, *f = s->f, *v = s->v;
    matmuls(s->xb, T, 3, (float *[]){q, f, v}, (const Matrix *[]){&w->q_proj, &w->f_proj, &w->i_proj});
    if (w->conv_w[0]) {
        short_conv(q, T, F, F, ls->conv_cache[0], w->conv_w[0], c->conv_size, 0);
        short_conv(f, T, F, F, ls->conv_cache[1], w->conv_w[1], c->conv_size, 0);
        short_conv(v, T, Dv, Dv, ls->conv_cache[2], w->conv_w[2], c->conv_size, 0);
    }
    // the gates, every (token, key channel) on its own: shared among the threads
    RowsJob job = {m, w, ls, s, T, layer};
    if ((long)T * F < (1L << 14)) hgrn2_gates(&job, 0, 1);
    else run_parallel(hgrn2_gates, &job);
    // the rows of every head's state are independent: the threads take disjoint rows for all T tokens
    if ((long)nh * dv * dk * T < (1L << 16)) hgrn2_rows(&job, 0, 1); // too little to share
    else run_parallel(hgrn2_rows, &job);
    for (int t = 0; t < T; t++) rmsnorm(s->o + (size_t)t * Dv, s->o + (size_t)t * Dv, w->out_norm, Dv, c->out_norm_eps);
    matmul(out, s->o, &w->o_proj, T);
}

/* GLA, gated linear attention: a data-dependent decay per key channel,
     q, k, v = W_q x, W_k x, W_v x   (short convs + silu if enabled; feature map on q, k)
     log a = logsigmoid(W_gk1 W_gk0 x + b) / 16   (clamped below at clamp_min if set)
     S_t = diag(a) S_{t-1} + k v^T                 (one S per kv head; GQA shares it)
     o_t = S_t^T (q / sqrt(dk))
     out = W_o ( RMSNorm_dv(o) * silu(W_g x) )     (per head, shared norm weight) */
static void gla_rows(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const Config *c = &jb->m->c;
    const RunState *s = jb->s;
    int nq = c->lin_q_heads, nk = c->lin_k_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim, group = nq / nk;
    int Dq = nq * dk, Dk = nk * dk, Dv = nk * dv, Do = nq * dv, n_rows = nk * dv;
    FOR_STATE_ROWS(row, t, n_rows, thread, nt, jb->T) {
        int j = row / dv, e = row % dv; // kv head j, row e of its S^T: value channel e
        float *Se = jb->ls->state + (size_t)j * dv * dk + (size_t)e * dk;
        const float *kh = s->k + (size_t)t * Dk + (size_t)j * dk, *ah = s->f + (size_t)t * Dk + (size_t)j * dk;
        float ve = s->v[(size_t)t * Dv + (size_t)j * dv + e];
        int h = j * group;
#ifdef SIMD_AVX512 // the update and the first head's o in one sweep, the same numbers bit for bit
        s->o[(size_t)t * Do + (size_t)h * dv + e] = sweep_dot_simd512(SWEEP_DECAY, Se, ve, ah, kh, s->q + (size_t)t * Dq + (size_t)h * dk, dk);
        h++;
#else
        for (int i = 0; i < dk; i++) Se[i] = ah[i] * Se[i] + kh[i] * ve;     // S = diag(a) S + k v^T
#endif
        for (; h < (j + 1) * group; h++)                                      // o = S^T q, each query head of the group
            s->o[(size_t)t * Do + (size_t)h * dv + e] = dot_f32(Se, s->q + (size_t)t * Dq + (size_t)h * dk, dk);
    }
}

// the gates and feature maps of a share of the T tokens: log a = logsigmoid(gk + b) / normalizer,
// a = exp(max(log a, clamp_min)); k = phi(k); q = phi(q) / sqrt(dk)
static void gla_gates(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const Config *c = &jb->m->c;
    const LayerWeights *w = jb->w;
    RunState *s = jb->s;
    int dk = c->lin_head_k_dim, Dq = c->lin_q_heads * dk, Dk = c->lin_k_heads * dk;
    float scale = 1.0f / sqrtf((float)dk);
    for (int t = (int)((long)jb->T * thread / nt); t < (int)((long)jb->T * (thread + 1) / nt); t++) {
        float *qt = s->q + (size_t)t * Dq, *kt = s->k + (size_t)t * Dk, *gk = s->f + (size_t)t * Dk;
        int d = 0;
        for (; d + VEC_FLOATS <= Dk; d += VEC_FLOATS) { // the loop below, VEC_FLOATS channels at a time
            vfloat log_a = vlogsigmoid(vload(gk + d) + vload(w->gk_bias + d)) / c->gate_normalizer;
            vstore(gk + d, vexp(vmax(log_a, (vfloat){0} + c->clamp_min)));
        }
        for (; d < Dk; d++) gk[d] = expf(fmaxf(logsigmoid(gk[d] + w->gk_bias[d]) / c->gate_normalizer, c->clamp_min));
        for (d = 0; d < Dk; d++) kt[d] = apply_feature_map(c->feature_map, kt[d]);
        for (int d = 0; d < Dq; d++) qt[d] = apply_feature_map(c->feature_map, qt[d]) * scale;
    }
}

static void gla_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, float *out) {
    const Config *c = &m->c;
    int nq = c->lin_q_heads, nk = c->lin_k_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim;
    int Dq = nq * dk, Dk = nk * dk, Dv = nk * dv, Do = nq * dv;
    matmuls(s->xb, T, 5, (float *[]){s->q, s->k, s->v, s->low_rank, s->g},
            (const Matrix *[]){&w->q_proj, &w->k_proj, &w->v_proj, &w->gk_proj0, &w->g_proj});
    if (w->conv_w[0]) {
        short_conv(s->q, T, Dq, Dq, ls->conv_cache[0], w->conv_w[0], c->conv_size, 1);
        short_conv(s->k, T, Dk, Dk, ls->conv_cache[1], w->conv_w[1], c->conv_size, 1);
        short_conv(s->v, T, Dv, Dv, ls->conv_cache[2], w->conv_w[2], c->conv_size, 1);
    }
    matmul(s->f, s->low_rank, &w->gk_proj1, T);
    RowsJob job = {.m = m, .w = w, .ls = ls, .s = s, .T = T};
    if ((long)T * Dk < (1L << 14)) gla_gates(&job, 0, 1); // the gates: tokens shared among the threads
    else run_parallel(gla_gates, &job);
    // the state rows over the threads, all T tokens each
    if ((long)nk * dv * dk * T < (1L << 16)) gla_rows(&job, 0, 1);
    else run_parallel(gla_rows, &job);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nq; h++) {
            float *oh = s->o + (size_t)t * Do + (size_t)h * dv;
            gated_rmsnorm(oh, oh, w->g_proj.data ? s->g + (size_t)t * Do + (size_t)h * dv : NULL, w->out_norm, dv, c->norm_eps);
        }
    matmul(out, s->o, &w->o_proj, T);
}

/* RetNet (fla's MultiScaleRetention): a fixed decay per head, rotary q/k:
     q, k = RoPE(phi(W_q x), p), RoPE(phi(W_k x), p);  v = W_v x
     gamma_h = 1 - 2^(-5-h)                         (h = query head index)
     S_t = gamma_h S_{t-1} + k v^T
     o_t = S_t^T (q / sqrt(dk))
     out = W_o ( RMSNorm_dv(o) * silu(W_g x) ) */
static void retnet_rows(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const Config *c = &jb->m->c;
    const RunState *s = jb->s;
    int nq = c->lin_q_heads, nk = c->lin_k_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim, group = nq / nk;
    int Dq = nq * dk, Dk = nk * dk, Dv = nk * dv, Do = nq * dv, n_rows = nq * dv;
    float scale = 1.0f / sqrtf((float)dk);
    const float *gammas = jb->m->retnet_gammas;
    FOR_STATE_ROWS(row, t, n_rows, thread, nt, jb->T) {
        int h = row / dv, e = row % dv; // query head h, row e of its S^T: value channel e
        float *Se = jb->ls->state + (size_t)h * dv * dk + (size_t)e * dk;
        const float *kh = s->k + (size_t)t * Dk + (size_t)(h / group) * dk, *qh = s->q + (size_t)t * Dq + (size_t)h * dk;
        float ve = s->v[(size_t)t * Dv + (size_t)(h / group) * dv + e], *oe = s->o + (size_t)t * Do + (size_t)h * dv + e;
#ifdef SIMD_AVX512 // the two lines below in one sweep, the same numbers bit for bit
        *oe = sweep_dot_simd512(SWEEP_DECAY, Se, ve, gammas + (size_t)h * dk, kh, qh, dk) * scale;
#else
        float gamma = gammas[(size_t)h * dk];
        for (int i = 0; i < dk; i++) Se[i] = gamma * Se[i] + kh[i] * ve;     // S = gamma S + k v^T
        *oe = dot_f32(Se, qh, dk) * scale;                                    // o = S^T q / sqrt(dk)
#endif
    }
}

static void retnet_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, int pos, float *out) {
    const Config *c = &m->c;
    int nq = c->lin_q_heads, nk = c->lin_k_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim;
    int Dq = nq * dk, Dk = nk * dk, Do = nq * dv;
    matmuls(s->xb, T, 4, (float *[]){s->q, s->k, s->v, s->g}, (const Matrix *[]){&w->q_proj, &w->k_proj, &w->v_proj, &w->g_proj});
    for (int t = 0; t < T; t++) {
        float *qt = s->q + (size_t)t * Dq, *kt = s->k + (size_t)t * Dk;
        for (int d = 0; d < Dq; d++) qt[d] = apply_feature_map(c->feature_map, qt[d]);
        for (int d = 0; d < Dk; d++) kt[d] = apply_feature_map(c->feature_map, kt[d]);
        rope(qt, nq, dk, pos + t, m->rope_inv_freq_retnet);
        rope(kt, nk, dk, pos + t, m->rope_inv_freq_retnet);
    }
    RowsJob job = {.m = m, .w = w, .ls = ls, .s = s, .T = T}; // the state rows over the threads, all T tokens each
    if ((long)nq * dv * dk * T < (1L << 16)) retnet_rows(&job, 0, 1);
    else run_parallel(retnet_rows, &job);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nq; h++) {
            float *oh = s->o + (size_t)t * Do + (size_t)h * dv;
            gated_rmsnorm(oh, oh, w->g_proj.data ? s->g + (size_t)t * Do + (size_t)h * dv : NULL, w->out_norm, dv, c->norm_eps);
        }
    matmul(out, s->o, &w->o_proj, T);
}

/* DeltaNet and GatedDeltaNet: the delta rule. The state is corrected toward the new
   value instead of only accumulating (with alpha = 1 for DeltaNet):
     q, k, v = silu(conv(W x)) ...;  k^ = L2N(k), q^ = L2N(q) / sqrt(dk)
     beta = sigmoid(W_b x)  (x2 if allow_neg_eigval);  GDN: alpha = exp(-exp(A_log) softplus(W_a x + dt_bias))
     S  = alpha S_{t-1}                             (decay first)
     u  = v - S^T k^                                (what the memory gets wrong about k)
     S_t = S + k^ (beta u)^T                        (i.e. S_t = alpha (I - beta k^ k^T) S_{t-1} + beta k^ v^T)
     o_t = S_t^T q^
     out = W_o ( RMSNorm_dv(o) [* silu(W_g x)] )   (per value head; GVA: value head j uses q/k head j / (Hv/Hqk)) */
static void delta_rows(void *arg, int thread, int nt) {
    RowsJob *jb = arg;
    const Config *c = &jb->m->c;
    const LayerWeights *w = jb->w;
    RunState *s = jb->s;
    int gated = w->kind == KIND_GATED_DELTANET;
    int nq = c->lin_q_heads, nv = c->lin_v_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim, group = nv / nq;
    int Dk = nq * dk, Dv = nv * dv, n_rows = nv * dv;
    FOR_STATE_ROWS(row, t, n_rows, thread, nt, jb->T) {
        int j = row / dv, e = row % dv; // value head j, row e of its S^T: value channel e
        float *Se = jb->ls->state + (size_t)j * dv * dk + (size_t)e * dk;
        const float *qh = s->q + (size_t)t * Dk + (size_t)(j / group) * dk, *kh = s->k + (size_t)t * Dk + (size_t)(j / group) * dk;
        float beta = s->b[(size_t)t * nv + j], alpha = s->a[(size_t)t * nv + j]; // (delta_layer)
        float ve = s->v[(size_t)t * Dv + (size_t)j * dv + e], *oe = s->o + (size_t)t * Dv + (size_t)j * dv + e;
#ifdef SIMD_AVX512 // the four lines below in two sweeps over the row, the same numbers bit for bit
        float u = ve - (gated ? sweep_dot_simd512(SWEEP_SCALE, Se, alpha, NULL, kh, kh, dk) : dot_f32(Se, kh, dk));
        *oe = sweep_dot_simd512(SWEEP_AXPY, Se, beta * u, NULL, kh, qh, dk);
#else
        if (gated) for (int i = 0; i < dk; i++) Se[i] *= alpha;           // S = alpha S
        float u = ve - dot_f32(Se, kh, dk);                               // u = v - S^T k
        for (int i = 0; i < dk; i++) Se[i] += beta * u * kh[i];          // S += k (beta u)^T
        *oe = dot_f32(Se, qh, dk);                                        // o = S^T q
#endif
    }
}

static void delta_layer(const Model *m, const LayerWeights *w, LayerState *ls, RunState *s, int T, float *out) {
    const Config *c = &m->c;
    int nq = c->lin_q_heads, nv = c->lin_v_heads, dk = c->lin_head_k_dim, dv = c->lin_head_v_dim;
    int Dk = nq * dk, Dv = nv * dv;
    int silu_qk = c->feature_map == FMAP_SILU;
    matmuls(s->xb, T, 6, (float *[]){s->q, s->k, s->v, s->b, s->a, s->g},
            (const Matrix *[]){&w->q_proj, &w->k_proj, &w->v_proj, &w->b_proj, &w->a_proj, &w->g_proj}); // (those it has)
    if (w->conv_w[0]) {
        short_conv(s->q, T, Dk, Dk, ls->conv_cache[0], w->conv_w[0], c->conv_size, silu_qk);
        short_conv(s->k, T, Dk, Dk, ls->conv_cache[1], w->conv_w[1], c->conv_size, silu_qk);
        short_conv(s->v, T, Dv, Dv, ls->conv_cache[2], w->conv_w[2], c->conv_size, 1);
    } else {
        for (size_t i = 0; i < (size_t)T * Dk; i++) if (silu_qk) { s->q[i] = silu(s->q[i]); s->k[i] = silu(s->k[i]); }
        for (size_t i = 0; i < (size_t)T * Dv; i++) s->v[i] = silu(s->v[i]);
    }
    float scale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < T; t++) {
        float *qt = s->q + (size_t)t * Dk, *kt = s->k + (size_t)t * Dk;
        for (int h = 0; h < nq; h++) {
            float *qh = qt + (size_t)h * dk, *kh = kt + (size_t)h * dk;
            if (!silu_qk)
                for (int i = 0; i < dk; i++) { qh[i] = apply_feature_map(c->feature_map, qh[i]); kh[i] = apply_feature_map(c->feature_map, kh[i]); }
            if (c->flags & FLAG_QK_SUM) {
                float sq = 0, sk = 0;
                for (int i = 0; i < dk; i++) { sq += qh[i]; sk += kh[i]; }
                for (int i = 0; i < dk; i++) { qh[i] /= sq; kh[i] /= sk; }
            } else if (c->flags & FLAG_QK_L2) {
                l2norm(qh, dk);
                l2norm(kh, dk);
            }
            for (int i = 0; i < dk; i++) qh[i] *= scale;
        }
    }
    // the gates, once per token and value head (all the rows of a head share them), in place:
    // beta = sigmoid(b) (x2 where the eigenvalues may be negative; 1 without b_proj) and,
    // gated, alpha = exp(-exp(A_log) softplus(a + dt_bias))
    for (int t = 0; t < T; t++)
        for (int j = 0; j < nv; j++) {
            float *bj = s->b + (size_t)t * nv + j, *aj = s->a + (size_t)t * nv + j;
            float beta = w->b_proj.data ? sigmoid(*bj) : 1.0f;
            *bj = c->flags & FLAG_NEG_EIGVAL ? 2.0f * beta : beta;
            *aj = w->kind == KIND_GATED_DELTANET ? expf(-expf(w->A_log[j]) * softplus(*aj + w->dt_bias[j])) : 1.0f;
        }
    // the recurrence: every (value head, row) is independent of the others, so the threads
    // take disjoint rows and walk all T tokens; then the per-head output norms
    RowsJob job = {.m = m, .w = w, .ls = ls, .s = s, .T = T};
    if ((long)nv * dv * dk * T < (1L << 16)) delta_rows(&job, 0, 1); // too little to share
    else run_parallel(delta_rows, &job);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < nv; j++) {
            float *oj = s->o + (size_t)t * Dv + (size_t)j * dv;
            gated_rmsnorm(oj, oj, w->g_proj.data ? s->g + (size_t)t * Dv + (size_t)j * dv : NULL, w->out_norm, dv, c->norm_eps);
        }
    matmul(out, s->o, &w->o_proj, T);
}

/* fla's GatedMLP (SwiGLU): out = W_down ( silu(W_gate x) * (W_up x) ) */
typedef struct { float *gate; const float *up; size_t n; } GluJob;
static void glu_share(void *arg, int thread, int nt) { // gate = silu(gate) * up, a thread's share
    GluJob *g = arg;
    size_t i = g->n * thread / nt / VEC_FLOATS * VEC_FLOATS, end = thread == nt - 1 ? g->n : g->n * (thread + 1) / nt / VEC_FLOATS * VEC_FLOATS;
    for (; i + VEC_FLOATS <= end; i += VEC_FLOATS) { // silu(x) = x / (1 + e^-x), a vector at a time
        vfloat x = vload(g->gate + i);
        vstore(g->gate + i, vsilu(x) * vload(g->up + i));
    }
    for (; i < end; i++) g->gate[i] = silu(g->gate[i]) * g->up[i];
}

static void mlp(const LayerWeights *w, RunState *s, int T, int hidden_dim, float *out) {
    matmuls(s->xb, T, 2, (float *[]){s->hb, s->hb2}, (const Matrix *[]){&w->mlp_gate, &w->mlp_up});
    GluJob glu = {s->hb, s->hb2, (size_t)T * hidden_dim};
    if (T == 1) glu_share(&glu, 0, 1); // one token's: too little to share; a prompt's: on every thread
    else run_parallel(glu_share, &glu);
    matmul(out, s->hb, &w->mlp_down, T);
}

// --verbose, for teaching and debugging: how big each layer's memory is after a step
static void print_state_norms(const Model *m, const RunState *s) {
    fprintf(stderr, "pos %5d |", s->pos);
    for (int l = 0; l < m->c.n_layers; l++) {
        const LayerState *ls = &s->layers[l];
        if (!ls->state) { fprintf(stderr, " A:%d", s->pos < s->kv_capacity ? s->pos : s->kv_capacity); continue; }
        size_t n = linear_state_floats(&m->c, m->kinds[l]);
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)ls->state[i] * ls->state[i];
        fprintf(stderr, " %c:%.3g", kind_letters[m->kinds[l]], sqrt(ss));
    }
    fputc('\n', stderr);
}

// ----------------------------------------------------------------------------
// Forward: T tokens at positions pos..pos+T-1 (T <= s->max_batch). Pre-norm blocks:
//   h = E[token];  per layer: h += mixer(RMSNorm(h));  h += MLP(RMSNorm(h))
//   logits = W_lm RMSNorm(h)
// Writes logits of the last token (or of all T if all_logits) to s->logits.

static void forward(const Model *m, RunState *s, const int *tokens, int T, int all_logits) {
    const Config *c = &m->c;
    int D = c->dim, pos = s->pos;
#ifdef USE_CUDA
    if (s->gpu) {
        cuda_forward(s->gpu, tokens, T, pos, all_logits, s->logits_on_gpu ? NULL : s->logits);
        s->pos += T;
        s->last_token = tokens[T - 1];
        if (verbose) { cuda_state_to_host(s->gpu, s); print_state_norms(m, s); }
        return;
    }
#endif
    for (int t = 0; t < T; t++) matrix_row(&m->embeddings, tokens[t], s->x + (size_t)t * D);
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        LayerState *ls = &s->layers[l];
        for (int t = 0; t < T; t++) rmsnorm(s->xb + (size_t)t * D, s->x + (size_t)t * D, w->attn_norm, D, c->norm_eps);
        switch (w->kind) {
        case KIND_ATTENTION: attention_layer(m, w, ls, s, T, pos, s->xb2); break;
        case KIND_HGRN: hgrn_layer(m, w, ls, s, T, l, s->xb2); break;
        case KIND_HGRN2: hgrn2_layer(m, w, ls, s, T, l, s->xb2); break;
        case KIND_GLA: gla_layer(m, w, ls, s, T, s->xb2); break;
        case KIND_RETNET: retnet_layer(m, w, ls, s, T, pos, s->xb2); break;
        default: delta_layer(m, w, ls, s, T, s->xb2); break;
        }
        for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->xb2[i];
        for (int t = 0; t < T; t++) rmsnorm(s->xb + (size_t)t * D, s->x + (size_t)t * D, w->mlp_norm, D, c->norm_eps);
        mlp(w, s, T, c->hidden_dim, s->xb2);
        for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->xb2[i];
    }
    int first = all_logits ? 0 : T - 1, n = T - first;
    for (int t = first; t < T; t++) rmsnorm(s->xb + (size_t)(t - first) * D, s->x + (size_t)t * D, m->final_norm, D, c->norm_eps);
    matmul(s->logits, s->xb, &m->lm_head, n);
    s->pos += T;
    s->last_token = tokens[T - 1];
    if (verbose) print_state_norms(m, s);
}

// ----------------------------------------------------------------------------
// Tokenizer: SentencePiece-style BPE with byte fallback (Mistral-7B-v0.1 32k)
//
// needs <stdio.h> <stdlib.h> <string.h> <stdint.h> and fatal() from run.c.
//
// The file tokenizer.bin is written by export.py --tokenizer (FORMAT.md):
//   "HLAT", u32 version, u32 vocab_size, u32 n_merges, u32 bos, eos, unk,
//   u32 max_token_len; vocab_size x {u32 len, u8 kind, len bytes};
//   n_merges x {u32 left, u32 right, u32 merged} in merge-rank order.
// Pieces store SentencePiece's "\u2581" as a plain space; byte-fallback tokens
// <0xXX> store their single raw byte.
//
// Which behaviour we implement. Checkpoint dirs ship one of two serialisations
// of the same tokenizer.model: the old one (normalizer Prepend("\u2581") +
// Replace(" ","\u2581"), no pre-tokenizer) and the newer one (Metaspace,
// prepend_scheme "first"). They differ when the text starts with a space:
// " hello" is [28705 6312 28709] with the old one and sentencepiece, and
// [6312 28709] with the Metaspace one; "  " is [2287] vs [259]. The released
// checkpoints ship the old serialisation, and it agrees with sentencepiece on
// tokenizer.model on everything we tried (tinyshakespeare, ~330 test strings),
// so that is what we implement. (The 12 reference prompts recorded from a
// released checkpoint start with no space, so all three agree on them.) Like HF (and
// unlike sentencepiece) we split the added/special tokens <unk> <s> </s> out of
// the text first; each remaining non-empty piece of text is then encoded on
// its own:
//   1. prepend a space and treat U+2581 in the text as a space,
//   2. one symbol per UTF-8 character if it is a piece, else one byte token
//      per byte; an invalid UTF-8 byte is its own byte token,
//   3. BPE: repeatedly merge the adjacent pair of lowest merge rank (leftmost
//      first on ties), exactly as HF tokenizers' BPE does; a heap of candidate
//      pairs over a linked list of symbols makes this O(n log n).
// ----------------------------------------------------------------------------

#define TOK_MAGIC "HLAT"
#define TOK_VERSION 1u
#define TOK_MAX_VOCAB (1 << 20)
enum { TOK_NORMAL = 0, TOK_BYTE = 1, TOK_SPECIAL = 2 };

typedef struct { uint64_t key; int rank; int merged; } MergeSlot; // rank < 0: empty
typedef struct { uint64_t hash; int id; } PieceSlot;              // id < 0: empty

typedef struct {
    int vocab_size, n_merges;
    int bos_id, eos_id, unk_id, max_token_len;
    char **pieces;          // NUL-terminated piece bytes, one per id
    int *piece_len;         // piece length in bytes (a piece may contain NUL)
    unsigned char *kind;    // TOK_NORMAL / TOK_BYTE / TOK_SPECIAL
    int byte_id[256];       // byte value -> id of its <0xXX> token
    int *special_ids;       // ids of TOK_SPECIAL tokens, matched in the text
    int n_special;
    unsigned char special_first[256]; // 1 if some special token starts with this byte
    PieceSlot *piece_table; // normal piece bytes -> id (open addressing)
    size_t piece_mask;
    MergeSlot *merge_table; // (left,right) -> (rank, merged id)
    size_t merge_mask;
    char *piece_store;      // backing memory of pieces[]
} Tokenizer;

// --- small helpers -----------------------------------------------------------

static uint32_t read_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t hash_bytes(const char *s, size_t n) { // FNV-1a, 64 bit
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h;
}

static uint64_t hash_u64(uint64_t x) { // splitmix64 finaliser
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t table_size_for(size_t n) { // power of two, at most half full
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

static void *tok_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) fatal("out of memory (tokenizer, %zu x %zu bytes)", n, size);
    return p;
}

// piece bytes -> id of the normal piece, or -1
static int piece_lookup(const Tokenizer *t, const char *s, size_t n) {
    uint64_t h = hash_bytes(s, n);
    for (size_t i = h & t->piece_mask;; i = (i + 1) & t->piece_mask) {
        const PieceSlot *e = &t->piece_table[i];
        if (e->id < 0) return -1;
        if (e->hash == h && (size_t)t->piece_len[e->id] == n && memcmp(t->pieces[e->id], s, n) == 0)
            return e->id;
    }
}

// (left, right) -> merge slot, or NULL if the pair never merges
static const MergeSlot *merge_lookup(const Tokenizer *t, int left, int right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const MergeSlot *e = &t->merge_table[i];
        if (e->rank < 0) return NULL;
        if (e->key == key) return e;
    }
}

// --- loading -------------------------------------------------------------------

// read a whole file into memory; works for pipes too, refuses absurd sizes
static unsigned char *read_whole_file(const char *path, size_t *size_out) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open tokenizer file", path);
    size_t cap = 1 << 20, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) fatal("out of memory reading %s", path);
    for (;;) {
        if (len == cap) {
            if (cap >= ((size_t)1 << 30)) fatal("%s: too large for a tokenizer file", path);
            cap *= 2;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) fatal("out of memory reading %s", path);
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) fatal("%s: read error", path);
    *size_out = len;
    return buf;
}

void tokenizer_load(Tokenizer *t, const char *path) {
    memset(t, 0, sizeof(*t));
    size_t size;
    unsigned char *data = read_whole_file(path, &size);
    const unsigned char *p = data, *end = data + size;

    // header: 4 bytes magic + 7 u32
    if (size < 32) fatal("%s: not a tokenizer file (only %zu bytes)", path, size);
    if (memcmp(p, TOK_MAGIC, 4) != 0) fatal("%s: not a tokenizer file (bad magic)", path);
    uint32_t version = read_u32le(p + 4);
    if (version != TOK_VERSION)
        fatal("%s: tokenizer format version %u, this build reads version %u", path, version, TOK_VERSION);
    uint32_t vocab = read_u32le(p + 8), n_merges = read_u32le(p + 12);
    uint32_t bos = read_u32le(p + 16), eos = read_u32le(p + 20), unk = read_u32le(p + 24);
    uint32_t max_len = read_u32le(p + 28);
    p += 32;
    if (vocab < 1 || vocab > TOK_MAX_VOCAB) fatal("%s: vocab size %u out of range", path, vocab);
    if (bos >= vocab || eos >= vocab || unk >= vocab)
        fatal("%s: bos/eos/unk id (%u/%u/%u) out of range for vocab %u", path, bos, eos, unk, vocab);
    if (max_len < 1 || max_len > 65536) fatal("%s: max token length %u out of range", path, max_len);
    // each token takes at least 5 bytes, each merge 12: reject lying counts early
    if ((size_t)(end - p) / 5 < vocab) fatal("%s: truncated (vocab of %u tokens does not fit)", path, vocab);
    if ((size_t)(end - p) / 12 < n_merges) fatal("%s: truncated (%u merges do not fit)", path, n_merges);
    t->vocab_size = (int)vocab;
    t->n_merges = (int)n_merges;
    t->bos_id = (int)bos; t->eos_id = (int)eos; t->unk_id = (int)unk;
    t->max_token_len = (int)max_len;

    // tokens: u32 len, u8 kind, len bytes; copied NUL-terminated into piece_store
    t->pieces = tok_calloc(vocab, sizeof(char *));
    t->piece_len = tok_calloc(vocab, sizeof(int));
    t->kind = tok_calloc(vocab, 1);
    t->piece_store = tok_calloc(size + vocab, 1); // pieces come from the file, so this is enough
    t->special_ids = tok_calloc(vocab, sizeof(int));
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    char *store = t->piece_store;
    for (uint32_t i = 0; i < vocab; i++) {
        if (end - p < 5) fatal("%s: truncated in token %u", path, i);
        uint32_t len = read_u32le(p);
        unsigned char kind = p[4];
        p += 5;
        if (len > max_len) fatal("%s: token %u has length %u > max %u", path, i, len, max_len);
        if ((size_t)(end - p) < len) fatal("%s: token %u runs past the end of the file", path, i);
        if (kind > TOK_SPECIAL) fatal("%s: token %u has unknown kind %u", path, i, kind);
        if (len == 0) fatal("%s: token %u is empty", path, i);
        if (kind == TOK_BYTE) {
            if (len != 1) fatal("%s: byte token %u must be 1 byte long", path, i);
            if (t->byte_id[p[0]] >= 0) fatal("%s: byte 0x%02X has two tokens", path, p[0]);
            t->byte_id[p[0]] = (int)i;
        }
        if (kind == TOK_SPECIAL) { // >= 2 bytes keeps max_ids = text_bytes + 3 a true bound
            if (len < 2) fatal("%s: special token %u must be at least 2 bytes long", path, i);
            t->special_ids[t->n_special++] = (int)i;
            t->special_first[p[0]] = 1;
        }
        memcpy(store, p, len);
        store[len] = '\0';
        t->pieces[i] = store;
        t->piece_len[i] = (int)len;
        t->kind[i] = kind;
        store += len + 1;
        p += len;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) fatal("%s: no byte-fallback token for byte 0x%02X", path, b);
    if ((size_t)(end - p) != (size_t)n_merges * 12)
        fatal("%s: merge table is %zu bytes, expected %zu", path, (size_t)(end - p), (size_t)n_merges * 12);

    // piece lookup table over the normal pieces
    t->piece_mask = table_size_for(vocab) - 1;
    t->piece_table = tok_calloc(t->piece_mask + 1, sizeof(PieceSlot));
    for (size_t i = 0; i <= t->piece_mask; i++) t->piece_table[i].id = -1;
    for (int id = 0; id < t->vocab_size; id++) {
        if (t->kind[id] != TOK_NORMAL) continue;
        if (piece_lookup(t, t->pieces[id], (size_t)t->piece_len[id]) >= 0)
            fatal("%s: token %d duplicates an earlier piece", path, id);
        uint64_t h = hash_bytes(t->pieces[id], (size_t)t->piece_len[id]);
        size_t i = h & t->piece_mask;
        while (t->piece_table[i].id >= 0) i = (i + 1) & t->piece_mask;
        t->piece_table[i].hash = h;
        t->piece_table[i].id = id;
    }

    // merge table: rank r = position in the file; merged piece must be left+right
    t->merge_mask = table_size_for(n_merges) - 1;
    t->merge_table = tok_calloc(t->merge_mask + 1, sizeof(MergeSlot));
    for (size_t i = 0; i <= t->merge_mask; i++) t->merge_table[i].rank = -1;
    for (uint32_t r = 0; r < n_merges; r++, p += 12) {
        uint32_t l = read_u32le(p), rt = read_u32le(p + 4), m = read_u32le(p + 8);
        if (l >= vocab || rt >= vocab || m >= vocab)
            fatal("%s: merge %u has a token id out of range", path, r);
        if (t->kind[l] != TOK_NORMAL || t->kind[rt] != TOK_NORMAL || t->kind[m] != TOK_NORMAL)
            fatal("%s: merge %u involves a byte or special token", path, r);
        if (t->piece_len[m] != t->piece_len[l] + t->piece_len[rt] ||
            memcmp(t->pieces[m], t->pieces[l], (size_t)t->piece_len[l]) != 0 ||
            memcmp(t->pieces[m] + t->piece_len[l], t->pieces[rt], (size_t)t->piece_len[rt]) != 0)
            fatal("%s: merge %u: token %u is not token %u + token %u", path, r, m, l, rt);
        if (merge_lookup(t, (int)l, (int)rt)) fatal("%s: merge %u repeats an earlier pair", path, r);
        uint64_t key = (uint64_t)l << 32 | rt;
        size_t i = hash_u64(key) & t->merge_mask;
        while (t->merge_table[i].rank >= 0) i = (i + 1) & t->merge_mask;
        t->merge_table[i].key = key;
        t->merge_table[i].rank = (int)r;
        t->merge_table[i].merged = (int)m;
    }
    free(data);
}

void tokenizer_free(Tokenizer *t) {
    free(t->pieces); free(t->piece_len); free(t->kind); free(t->piece_store);
    free(t->special_ids); free(t->piece_table); free(t->merge_table);
    memset(t, 0, sizeof(*t));
}

// text of a token: the piece with "\u2581" shown as " ", a byte token's raw byte
// (may be non-printable or part of a UTF-8 character), "<s>" etc. for special
// tokens; NULL for an id out of range
const char *tokenizer_piece(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    return t->pieces[id];
}

// --- encoding ------------------------------------------------------------------

// length of the valid UTF-8 character at s[0..n), or 0 if s[0] does not start one
static size_t utf8_char_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len; unsigned char lo = 0x80, hi = 0xBF; // allowed range of the 2nd byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++) if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

// min-heap of candidate merges; a candidate is one uint64 (rank << 32 | pos of
// the left symbol), so the smallest is the lowest rank, leftmost on ties
typedef uint64_t MergeCand;

static void heap_sift_down(MergeCand *h, int n, int i) {
    MergeCand x = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= x) break;
        h[i] = h[c]; i = c;
    }
    h[i] = x;
}

static void heap_push(MergeCand *h, int *n, MergeCand c) {
    int i = (*n)++;
    while (i > 0 && c < h[(i - 1) / 2]) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = c;
}

static MergeCand heap_pop(MergeCand *h, int *n) {
    MergeCand top = h[0];
    h[0] = h[--(*n)];
    heap_sift_down(h, *n, 0);
    return top;
}

// scratch space for encoding one piece of text: a doubly linked list of symbols
typedef struct { int *id, *prev, *next; MergeCand *heap; } EncodeScratch;

// push the pair (pos, next[pos]) as a merge candidate if the two symbols merge
static void push_pair(const Tokenizer *t, EncodeScratch *w, int *nheap, int pos) {
    if (pos < 0 || w->next[pos] < 0) return;
    const MergeSlot *m = merge_lookup(t, w->id[pos], w->id[w->next[pos]]);
    if (m) heap_push(w->heap, nheap, (MergeCand)m->rank << 32 | (uint32_t)pos);
}

static void emit_id(int id, int *ids, int *n_ids, int max_ids) {
    if (*n_ids >= max_ids) fatal("tokenizer_encode: text needs more than %d tokens", max_ids);
    ids[(*n_ids)++] = id;
}

// BPE on symbols [a, b): pop the lowest-rank (leftmost on ties) candidate; skip
// it if it is stale (left symbol merged away, or its right neighbour changed);
// otherwise merge the right symbol into the left one (the right one is marked
// dead with id -1) and queue the two pairs the merged symbol now forms
static void bpe_merge_run(const Tokenizer *t, EncodeScratch *w, int a, int b) {
    for (int i = a; i < b; i++) { w->prev[i] = i - 1; w->next[i] = i + 1 < b ? i + 1 : -1; }
    w->prev[a] = -1;
    int nheap = 0;
    for (int i = a; i + 1 < b; i++) { // all initial pairs, then heapify in O(n)
        const MergeSlot *m = merge_lookup(t, w->id[i], w->id[i + 1]);
        if (m) w->heap[nheap++] = (MergeCand)m->rank << 32 | (uint32_t)i;
    }
    for (int i = nheap / 2 - 1; i >= 0; i--) heap_sift_down(w->heap, nheap, i);
    while (nheap > 0) {
        MergeCand c = heap_pop(w->heap, &nheap);
        int left = (int)(uint32_t)c, right = w->next[left];
        if (w->id[left] < 0 || right < 0) continue;
        const MergeSlot *m = merge_lookup(t, w->id[left], w->id[right]);
        if (!m || m->rank != (int)(c >> 32)) continue;
        w->id[left] = m->merged;
        w->id[right] = -1;
        w->next[left] = w->next[right];
        if (w->next[right] >= 0) w->prev[w->next[right]] = left;
        push_pair(t, w, &nheap, w->prev[left]);
        push_pair(t, w, &nheap, left);
    }
}

// encode one piece of text that contains no special token (steps 1-3 above)
static void encode_plain(const Tokenizer *t, const unsigned char *s, size_t n, EncodeScratch *w,
                         int *ids, int *n_ids, int max_ids) {
    if (n == 0) return; // HF's Prepend leaves empty text empty
    // 1+2. initial symbols: a space, then one per character (or per byte)
    int nsym = 0;
    int space = piece_lookup(t, " ", 1);
    w->id[nsym++] = space >= 0 ? space : t->byte_id[' '];
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len(s + i, n - i);
        if (len == 0) { w->id[nsym++] = t->byte_id[s[i]]; i++; continue; } // invalid byte
        int id = (len == 3 && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81)
                 ? space : piece_lookup(t, (const char *)s + i, len); // U+2581 is a space
        if (id >= 0) w->id[nsym++] = id;
        else for (size_t k = 0; k < len; k++) w->id[nsym++] = t->byte_id[s[i + k]];
        i += len;
    }

    // 3. BPE. Merges only ever join normal pieces (tokenizer_load checks this), so
    // a byte token (e.g. every "\n") is a wall no merge crosses, and merging each
    // run between walls on its own gives exactly the same result as one big pass
    // (and keeps the heap small and in cache)
    for (int a = 0; a < nsym;) {
        if (t->kind[w->id[a]] == TOK_BYTE) { a++; continue; }
        int b = a + 1;
        while (b < nsym && t->kind[w->id[b]] != TOK_BYTE) b++;
        bpe_merge_run(t, w, a, b);
        a = b;
    }
    for (int i = 0; i < nsym; i++)
        if (w->id[i] >= 0) emit_id(w->id[i], ids, n_ids, max_ids);
}

// id of the special token at s[0..n) (longest one if several), or -1
static int match_special(const Tokenizer *t, const unsigned char *s, size_t n) {
    if (!t->special_first[s[0]]) return -1;
    int best = -1;
    for (int k = 0; k < t->n_special; k++) {
        int id = t->special_ids[k];
        size_t len = (size_t)t->piece_len[id];
        if (len <= n && memcmp(s, t->pieces[id], len) == 0 && (best < 0 || len > (size_t)t->piece_len[best]))
            best = id;
    }
    return best;
}

// encode text_bytes bytes of text (any bytes, NUL included) into ids[];
// returns the number of ids; max_ids = text_bytes + 3 is enough (each byte gives
// at most one token, plus BOS and the prepended space; special tokens are >= 2 bytes)
int tokenizer_encode(const Tokenizer *t, const char *text, size_t text_bytes, int add_bos,
                     int *ids, int max_ids) {
    const unsigned char *s = (const unsigned char *)text;
    int n_ids = 0;
    if (add_bos) emit_id(t->bos_id, ids, &n_ids, max_ids);
    if (text_bytes > (size_t)INT32_MAX / 4) fatal("tokenizer_encode: text too long (%zu bytes)", text_bytes);
    // each plain piece of text gives at most (bytes + 1) symbols and 3x that many heap entries
    size_t cap = text_bytes + 1;
    EncodeScratch w = { tok_calloc(cap, sizeof(int)), tok_calloc(cap, sizeof(int)),
                        tok_calloc(cap, sizeof(int)), tok_calloc(3 * cap, sizeof(MergeCand)) };
    // split the special tokens out of the text (leftmost, then longest, match),
    // and encode the plain text between them
    size_t start = 0;
    for (size_t i = 0; i < text_bytes;) {
        int sp = match_special(t, s + i, text_bytes - i);
        if (sp < 0) { i++; continue; }
        encode_plain(t, s + start, i - start, &w, ids, &n_ids, max_ids);
        emit_id(sp, ids, &n_ids, max_ids);
        i += (size_t)t->piece_len[sp];
        start = i;
    }
    encode_plain(t, s + start, text_bytes - start, &w, ids, &n_ids, max_ids);
    free(w.id); free(w.prev); free(w.next); free(w.heap);
    return n_ids;
}

// --- decoding ------------------------------------------------------------------
// Tokens are turned back into bytes (byte-fallback tokens give their raw byte)
// and the bytes are checked as UTF-8 across token boundaries: an incomplete
// character is held back until it completes, and each maximal invalid
// subsequence becomes U+FFFD (as Python's bytes.decode("utf-8", "replace")),
// so the output is always valid UTF-8. Special tokens (<s>, </s>, <unk>)
// print nothing, and the leading space of a token right after BOS is dropped
// (HF's Strip decoder; we apply it after every BOS, HF only at the start).

typedef struct {
    unsigned char pend[4]; // bytes of an incomplete UTF-8 character
    int npend, need;       // bytes held, continuation bytes still needed
    unsigned char lo, hi;  // allowed range of the next continuation byte
} DecodeStream;

typedef struct { FILE *f; char *mem; size_t len, cap; } DecodeSink; // FILE or growing string

static void sink_put(DecodeSink *o, const void *b, size_t n) {
    if (o->f) { fwrite(b, 1, n, o->f); return; }
    if (o->len + n + 1 > o->cap) {
        while (o->len + n + 1 > o->cap) o->cap = o->cap ? 2 * o->cap : 64;
        char *m = realloc(o->mem, o->cap);
        if (!m) fatal("out of memory (decode)");
        o->mem = m;
    }
    memcpy(o->mem + o->len, b, n);
    o->len += n;
    o->mem[o->len] = '\0';
}

static const char utf8_replacement[3] = { (char)0xEF, (char)0xBF, (char)0xBD }; // U+FFFD

void decode_init(DecodeStream *s) { memset(s, 0, sizeof(*s)); }

static void decode_byte(DecodeStream *s, unsigned char c, DecodeSink *o) {
    if (s->need > 0) {
        if (c >= s->lo && c <= s->hi) { // continues the character
            s->pend[s->npend++] = c;
            s->lo = 0x80; s->hi = 0xBF;
            if (--s->need == 0) { sink_put(o, s->pend, (size_t)s->npend); s->npend = 0; }
            return;
        }
        sink_put(o, utf8_replacement, 3); // broken character, then look at c afresh
        s->npend = 0; s->need = 0;
    }
    s->lo = 0x80; s->hi = 0xBF;
    if (c < 0x80) { sink_put(o, &c, 1); return; }
    if (c >= 0xC2 && c <= 0xDF) s->need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { s->need = 2; if (c == 0xE0) s->lo = 0xA0; if (c == 0xED) s->hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { s->need = 3; if (c == 0xF0) s->lo = 0x90; if (c == 0xF4) s->hi = 0x8F; }
    else { sink_put(o, utf8_replacement, 3); return; } // never valid as a first byte
    s->pend[0] = c; s->npend = 1;
}

static void decode_token(const Tokenizer *t, int prev_id, int id, DecodeStream *s, DecodeSink *o) {
    if (id < 0 || id >= t->vocab_size || t->kind[id] == TOK_SPECIAL) return;
    const unsigned char *p = (const unsigned char *)t->pieces[id];
    int len = t->piece_len[id];
    if (prev_id == t->bos_id && t->kind[id] == TOK_NORMAL && p[0] == ' ') { p++; len--; }
    for (int i = 0; i < len; i++) decode_byte(s, p[i], o);
}

static void decode_flush_sink(DecodeStream *s, DecodeSink *o) {
    if (s->need > 0) sink_put(o, utf8_replacement, 3); // text ended inside a character
    s->npend = 0; s->need = 0;
}

// write the text of token id (that followed prev_id) to out
void decode_stream(const Tokenizer *t, int prev_id, int id, DecodeStream *s, FILE *out) {
    DecodeSink o = { out, NULL, 0, 0 };
    decode_token(t, prev_id, id, s, &o);
}

// at the end of the text: write U+FFFD if a character was left incomplete
void decode_flush(DecodeStream *s, FILE *out) {
    DecodeSink o = { out, NULL, 0, 0 };
    decode_flush_sink(s, &o);
}

// decode a whole id array into a malloc'd NUL-terminated string (caller frees);
// the first token is treated as following BOS; *len_out (if not NULL) gets the length
char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, size_t *len_out) {
    DecodeStream s; decode_init(&s);
    DecodeSink o = { NULL, NULL, 0, 0 };
    sink_put(&o, "", 0);
    for (int i = 0; i < n; i++) decode_token(t, i > 0 ? ids[i - 1] : t->bos_id, ids[i], &s, &o);
    decode_flush_sink(&s, &o);
    if (len_out) *len_out = o.len;
    return o.mem;
}

// ----------------------------------------------------------------------------
// Sampler: temperature, top-k, top-p (nucleus), min-p, repetition penalty; greedy at t=0

typedef struct { float prob; int index; } ProbIndex;

typedef struct {
    float temperature, topp, minp, repeat_penalty;
    int topk;
    unsigned long long rng;
    ProbIndex *probindex; // 2 x vocab_size: the candidates, then sort_by_prob's scratch
} Sampler;

static unsigned int random_u32(unsigned long long *state) { // xorshift*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned int)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

/* The candidates by probability, largest first, ties by the lower id (they arrive in id order;
   the GPU's sampler breaks ties the same way): a stable radix sort on the probabilities' bits
   (for p >= 0 their order is the values'), 8 bits a pass from the lowest, passes where every
   candidate has the same byte skipped. (qsort took ~5 ms for the 32,000 tokens of -p 1.) */
static uint32_t prob_key(float p, int shift) {
    uint32_t bits;
    memcpy(&bits, &p, 4);
    return ((0x7fffffffu - (bits & 0x7fffffffu)) >> shift) & 255; // descending; -0 as 0
}
static void sort_by_prob(ProbIndex *a, ProbIndex *scratch, int m) {
    ProbIndex *from = a, *to = scratch;
    for (int shift = 0; shift < 32 && m > 1; shift += 8) {
        int start[257] = {0};
        for (int i = 0; i < m; i++) start[prob_key(from[i].prob, shift) + 1]++;
        if (start[prob_key(from[0].prob, shift) + 1] == m) continue;
        for (int b = 0; b < 256; b++) start[b + 1] += start[b];
        for (int i = 0; i < m; i++) to[start[prob_key(from[i].prob, shift)]++] = from[i];
        ProbIndex *t = from;
        from = to;
        to = t;
    }
    if (from != a) memcpy(a, from, sizeof(ProbIndex) * (size_t)m);
}

#define LOGITS_NOT_FINITE "the logits are not finite (NaN or inf): the model's numbers overflowed"

// logits -> token. `recent` holds the last n_recent tokens for the repetition penalty.
static int sample(Sampler *sp, float *logits, int n, const int *recent, int n_recent) {
    if (sp->repeat_penalty != 1.0f) // CTRL-style: divide positive logits, multiply negative ones
        for (int i = 0; i < n_recent; i++) {
            float *l = &logits[recent[i]];
            *l = *l > 0 ? *l / sp->repeat_penalty : *l * sp->repeat_penalty;
        }
    if (sp->temperature == 0.0f) {
        int best = argmax(logits, n);
        if (!isfinite(logits[best])) fatal("sampling: " LOGITS_NOT_FINITE);
        return best;
    }
    for (int i = 0; i < n; i++) logits[i] /= sp->temperature;
    softmax(logits, n);
    // candidates: all tokens sorted by probability, then cut by top-k, min-p and top-p.
    // With top-p, tokens below (1 - top_p) / (n - 1) are left out of the sort first (as
    // llama2.c does): together they hold less than 1 - top_p, so the walk reaches top_p
    // before them; if rounding says otherwise, the sort is redone with every token.
    float pmax = 0;
    for (int i = 0; i < n; i++) pmax = fmaxf(pmax, logits[i]);
    float cutoff = sp->topp < 1.0f ? (1.0f - sp->topp) / (float)(n - 1) : 0.0f;
    int m, last;
    for (;;) {
        m = 0;
        for (int i = 0; i < n; i++)
            if (logits[i] >= sp->minp * pmax && logits[i] >= cutoff) sp->probindex[m++] = (ProbIndex){logits[i], i};
        sort_by_prob(sp->probindex, sp->probindex + n, m);
        if (sp->topk > 0 && sp->topk < m) m = sp->topk;
        float cum = 0;
        last = -1;
        for (int i = 0; i < m && last < 0; i++) {
            cum += sp->probindex[i].prob;
            if (sp->topp < 1.0f && cum > sp->topp) last = i;
        }
        if (last >= 0 || cutoff == 0.0f || (sp->topk > 0 && sp->topk <= m)) break; // (top-k cut inside the candidates: as without the cutoff)
        cutoff = 0.0f;
    }
    if (m == 0) fatal("sampling: " LOGITS_NOT_FINITE);
    if (last < 0) last = m - 1;
    float total = 0;
    for (int i = 0; i <= last; i++) total += sp->probindex[i].prob;
    float r = random_f32(&sp->rng) * total, acc = 0;
    for (int i = 0; i <= last; i++) {
        acc += sp->probindex[i].prob;
        if (r < acc) return sp->probindex[i].index;
    }
    return sp->probindex[last].index;
}

// ----------------------------------------------------------------------------
// Modes

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Feed tokens through the model: in batches of MAX_BATCH, or one at a time (the decode
// path). If logits_out, the logits of every token are written there ([n][vocab]).
static void feed(const Model *m, RunState *s, const int *tokens, int n, int one_by_one, float *logits_out) {
    int V = m->c.vocab_size;
    for (int i = 0; i < n;) {
        int T = one_by_one ? 1 : (n - i < s->max_batch ? n - i : s->max_batch);
        if (s->pos + T > s->ctx)
            fatal("%s: the text needs %d positions but the context holds %d (raise --ctx; max_position_embeddings is %d)",
                  m->path, s->pos + T, s->ctx, m->c.max_pos);
        forward(m, s, tokens + i, T, logits_out != NULL);
        if (logits_out) memcpy(logits_out + (size_t)i * V, s->logits, sizeof(float) * (size_t)T * V);
        i += T;
    }
}

static void check_tokens(const Model *m, const int *tokens, int n) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->c.vocab_size)
            fatal("token id %d at prompt position %d is out of range [0, %d) of %s", tokens[i], i, m->c.vocab_size, m->path);
}

static void write_logits(const Model *m, RunState *s, const int *tokens, int n, int one_by_one, const char *path) {
    float *all = xcalloc((size_t)n * m->c.vocab_size, sizeof(float));
    feed(m, s, tokens, n, one_by_one, all);
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot open for writing (%s)", path, strerror(errno));
    if (fwrite(all, sizeof(float), (size_t)n * m->c.vocab_size, f) != (size_t)n * m->c.vocab_size || fclose(f) != 0)
        fatal("%s: write failed", path);
    free(all);
}

// peak resident memory of this process in MB (Linux: VmHWM), or -1 where unknown
static double peak_memory_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atof(line + 6);
    if (f) fclose(f);
    return kb < 0 ? -1 : kb * 1024.0 / 1e6;
}

#ifdef USE_CUDA
// queue the next token's sampling on the GPU (run.c's sampler there, with run.c's random draw)
static void gpu_sample_queue(RunState *s, Sampler *sp) {
    cuda_sample_queue(s->gpu, sp->temperature, sp->topp, sp->minp, sp->repeat_penalty, sp->topk,
                      sp->temperature == 0.0f ? 0.0f : random_f32(&sp->rng));
}
#endif

static void generate(const Model *m, RunState *s, const Tokenizer *tok, Sampler *sp, const int *prompt, int n_prompt,
                     int steps, int one_by_one, int print_ids, int quiet) {
    int V = m->c.vocab_size;
#ifdef USE_CUDA
    s->logits_on_gpu = s->gpu && cuda_can_sample(s->gpu);
#endif
    double t0 = now_seconds();
    feed(m, s, prompt, n_prompt, one_by_one, NULL);
    double t1 = now_seconds();
    int *recent = xcalloc((size_t)steps + n_prompt + 1, sizeof(int));
    memcpy(recent, prompt, sizeof(int) * n_prompt);
    int n_recent = n_prompt, prev = s->last_token, generated = 0;
    int fed_ahead = 0; // (GPU) the step after this token is queued already, fed with it on the device
    DecodeStream ds;
    decode_init(&ds);
#ifdef USE_CUDA
    /* The same sampler on the GPU, with the same random draws, and the token stays there as the
       next step's input: token i is read back only once step i + 1 (fed with it there) is queued,
       and token i + 1's sampling right after, so the GPU works while we print. Stopping at EOS
       then leaves one step run for nothing (generation's state is not kept). Not with --verbose
       (it reads the state after each step) or HLA_CUDA_TIMING. */
    int ahead = s->logits_on_gpu && !verbose && cuda_can_run_ahead(s->gpu);
    if (s->logits_on_gpu) cuda_sample_begin(s->gpu, recent, n_recent);
#endif
    for (int i = 0; i < steps; i++) {
        int window = n_recent < REPEAT_WINDOW ? n_recent : REPEAT_WINDOW, next;
#ifdef USE_CUDA
        if (s->logits_on_gpu) {
            if (!fed_ahead) gpu_sample_queue(s, sp); // (else queued in the turn before)
            fed_ahead = ahead && i + 1 < steps && s->pos + 1 <= s->ctx;
            if (fed_ahead) {
                cuda_forward_sampled(s->gpu);
                s->pos += 1;
            }
            next = cuda_sample_next(s->gpu);
            if (next < 0 || next >= V) fatal("sampling on the GPU: " LOGITS_NOT_FINITE);
            if (fed_ahead) {
                s->last_token = next;
                gpu_sample_queue(s, sp);
            }
        } else
#endif
            next = sample(sp, s->logits, V, recent + n_recent - window, window);
        recent[n_recent++] = next;
        generated++;
        if (print_ids) printf(i ? " %d" : "%d", next);
        else if (tok && next < tok->vocab_size) decode_stream(tok, prev, next, &ds, stdout);
        if (fflush(stdout) != 0) exit(0); // the reader went away (run | head): stop quietly
        if (tok && next == tok->eos_id && !print_ids) break;
        prev = next;
        if (fed_ahead) continue;
        if (i + 1 < steps) {
            if (s->pos + 1 > s->ctx) { fprintf(stderr, "\n[context of %d tokens is full: stopping]\n", s->ctx); break; }
            forward(m, s, &next, 1, 0);
        }
    }
    if (!print_ids) decode_flush(&ds, stdout);
    if (steps > 0) printf("\n");
    fflush(stdout);
    double t2 = now_seconds();
    if (!quiet)
        fprintf(stderr, "prompt: %d tokens, %.1f tok/s | generated: %d tokens, %.1f tok/s | %d threads | peak memory %.1f MB\n",
                n_prompt, n_prompt / (t1 - t0 + 1e-9), generated, generated / (t2 - t1 + 1e-9), n_threads, peak_memory_mb());
    free(recent);
}

/* Perplexity: the tokens (BOS first) are cut into consecutive windows of ctx tokens; each
   window starts from an empty state and predicts its tokens 1..len-1 from the ones before.
   ppl = exp(mean NLL); the error is the delta-method standard error of that mean.
   With a reference model (--kl-ref, e.g. the fp32 export of a q8 file) both run side by
   side and we also report the mean KL(reference || this) of the next-token distributions. */
static double log_softmax_at(const float *lg, int V, int index, double *log_z_out) {
    float mx = lg[0];
    for (int j = 1; j < V; j++) mx = fmaxf(mx, lg[j]);
    double z = 0;
    for (int j = 0; j < V; j++) z += exp((double)lg[j] - mx);
    *log_z_out = log(z) + mx;
    return (double)lg[index] - *log_z_out;
}

static void perplexity(const Model *m, RunState *s, const Model *ref, RunState *rs, const int *tokens, int n, int ctx,
                       double text_bytes) {
    int V = m->c.vocab_size, is_tty = isatty(2);
    double sum = 0, sum_sq = 0, kl_sum = 0;
    long count = 0;
    for (int w0 = 0; w0 < n; w0 += ctx) {
        int len = n - w0 < ctx ? n - w0 : ctx;
        reset_run_state(s, m);
        if (ref) reset_run_state(rs, ref);
        for (int i = 0; i < len - 1;) {        // feed tokens 0..len-2 of the window, in batches
            int T = len - 1 - i < s->max_batch ? len - 1 - i : s->max_batch;
            forward(m, s, tokens + w0 + i, T, 1);
            if (ref) forward(ref, rs, tokens + w0 + i, T, 1);
            for (int t = 0; t < T; t++) {
                const float *lg = s->logits + (size_t)t * V;
                double log_z, nll = -log_softmax_at(lg, V, tokens[w0 + i + t + 1], &log_z);
                sum += nll;
                sum_sq += nll * nll;
                count++;
                if (ref) { // KL(p_ref || p) = sum_j p_ref[j] (log p_ref[j] - log p[j])
                    const float *rl = rs->logits + (size_t)t * V;
                    double ref_log_z, kl = 0;
                    log_softmax_at(rl, V, 0, &ref_log_z);
                    for (int j = 0; j < V; j++) {
                        double lp_ref = rl[j] - ref_log_z, lp = lg[j] - log_z;
                        kl += exp(lp_ref) * (lp_ref - lp);
                    }
                    kl_sum += kl;
                }
            }
            i += T;
        }
        if (is_tty) fprintf(stderr, "\r[%-30.*s] %d/%d tokens", (int)(30.0 * (w0 + len) / n), "##############################", w0 + len, n);
    }
    if (is_tty) fputc('\n', stderr);
    if (count == 0) fatal("perplexity needs at least 2 tokens in a window");
    double mean = sum / count, var = sum_sq / count - mean * mean;
    double ppl = exp(mean), err = ppl * sqrt((var > 0 ? var : 0) / count);
    printf("ppl=%.6f \xc2\xb1 %.6f tokens=%ld mean_nll=%.8f", ppl, err, count, mean);
    if (text_bytes > 0) printf(" bits_per_byte=%.6f", sum / log(2.0) / text_bytes);
    if (ref) printf(" mean_kl=%.8f", kl_sum / count);
    printf("\n");
}

/* The sequence state, saved after a prompt and restored to continue it: position, last
   token and its logits, then per layer the recurrent state and conv caches (a constant
   size) or the KV rows in use, oldest first (growing with the position, up to the window).
   File: "HLAS", u32 version, u64 hash of the model config, i32 n_layers, dim, vocab, pos,
   last_token, kv_rows; then the floats. Checked against this model before use. */
#define STATE_MAGIC "HLAS"
#define STATE_VERSION 1u

typedef struct { char magic[4]; uint32_t version; uint64_t config_hash; int32_t n_layers, dim, vocab, pos, last_token, kv_rows; } StateHeader;

static size_t conv_cache_floats(const Model *m, int l, int i) {
    return (size_t)m->layers[l].conv_channels[i] * (m->c.conv_size - 1);
}

static void save_state(const Model *m, RunState *s, const char *path) {
#ifdef USE_CUDA
    if (s->gpu) cuda_state_to_host(s->gpu, s);
#endif
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot open for writing (%s)", path, strerror(errno));
    int rows = s->pos < s->kv_capacity ? s->pos : s->kv_capacity;
    StateHeader h = {{STATE_MAGIC[0], STATE_MAGIC[1], STATE_MAGIC[2], STATE_MAGIC[3]}, STATE_VERSION,
                     hash_bytes((const char *)&m->c, sizeof m->c), m->c.n_layers, m->c.dim, m->c.vocab_size, s->pos,
                     s->last_token, rows};
    int ok = fwrite(&h, sizeof h, 1, f) == 1 && fwrite(s->logits, sizeof(float), (size_t)m->c.vocab_size, f) == (size_t)m->c.vocab_size;
    size_t kv_dim = (size_t)m->c.attn_kv_heads * m->c.attn_head_dim;
    float *row = xcalloc(kv_dim ? kv_dim : 1, sizeof(float)); // a KV row as fp32, whatever the cache holds
    for (int l = 0; l < m->c.n_layers && ok; l++) {
        const LayerState *ls = &s->layers[l];
        if (ls->state) {
            size_t n = linear_state_floats(&m->c, m->kinds[l]);
            ok = fwrite(ls->state, sizeof(float), n, f) == n;
            for (int i = 0; i < 3 && ok; i++)
                if (ls->conv_cache[i]) ok = fwrite(ls->conv_cache[i], sizeof(float), conv_cache_floats(m, l, i), f) == conv_cache_floats(m, l, i);
        } else
            for (int p = s->pos - rows; p < s->pos && ok; p++) {
                kv_load(s, row, ls->key_cache, p, kv_dim, 0, kv_dim);
                ok = fwrite(row, sizeof(float), kv_dim, f) == kv_dim;
                kv_load(s, row, ls->value_cache, p, kv_dim, 0, kv_dim);
                ok = ok && fwrite(row, sizeof(float), kv_dim, f) == kv_dim;
            }
    }
    free(row);
    if (!ok || fclose(f) != 0) fatal("%s: write failed", path);
}

static void read_floats(FILE *f, float *dst, size_t n, const char *path) {
    if (fread(dst, sizeof(float), n, f) != n) fatal("%s: truncated state file", path);
}

static void load_state(const Model *m, RunState *s, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open (%s)", path, strerror(errno));
    StateHeader h;
    if (fread(&h, sizeof h, 1, f) != 1) fatal("%s: too small to be a state file", path);
    if (memcmp(h.magic, STATE_MAGIC, 4) != 0 || h.version != STATE_VERSION) fatal("%s: not an hla.c state file (version 1)", path);
    if (h.config_hash != hash_bytes((const char *)&m->c, sizeof m->c) || h.n_layers != m->c.n_layers ||
        h.dim != m->c.dim || h.vocab != m->c.vocab_size)
        fatal("%s: saved with a different model than %s", path, m->path);
    if (h.pos < 1 || h.pos > s->ctx || h.last_token < 0 || h.last_token >= m->c.vocab_size || h.kv_rows < 0 ||
        h.kv_rows > h.pos || h.kv_rows < (h.pos < s->kv_capacity ? h.pos : s->kv_capacity))
        fatal("%s: position %d / %d KV rows do not fit this run (context %d)", path, h.pos, h.kv_rows, s->ctx);
    read_floats(f, s->logits, (size_t)m->c.vocab_size, path);
    size_t kv_dim = (size_t)m->c.attn_kv_heads * m->c.attn_head_dim;
    float *row = xcalloc(kv_dim ? kv_dim : 1, sizeof(float));
    for (int l = 0; l < m->c.n_layers; l++) {
        LayerState *ls = &s->layers[l];
        if (ls->state) {
            read_floats(f, ls->state, linear_state_floats(&m->c, m->kinds[l]), path);
            for (int i = 0; i < 3; i++) if (ls->conv_cache[i]) read_floats(f, ls->conv_cache[i], conv_cache_floats(m, l, i), path);
        } else
            for (int p = h.pos - h.kv_rows; p < h.pos; p++) { // only the newest kv_capacity rows stay
                read_floats(f, row, kv_dim, path);
                kv_store(s, ls->key_cache, p, kv_dim, row); // (rounded to bf16 with --kv-dtype bf16)
                read_floats(f, row, kv_dim, path);
                kv_store(s, ls->value_cache, p, kv_dim, row);
            }
    }
    free(row);
    if (fgetc(f) != EOF) fatal("%s: trailing bytes after the state", path);
    fclose(f);
    s->pos = h.pos;
    s->last_token = h.last_token;
#ifdef USE_CUDA
    if (s->gpu) cuda_state_from_host(s->gpu, s);
#endif
}

static void print_info(const Model *m, int ctx, int kv_dtype) {
    const Config *c = &m->c;
    int L = c->n_layers;
    printf("model: %s\n", m->path);
    printf("layers: ");
    for (int l = 0; l < L; l++) putchar(kind_letters[m->kinds[l]]);
    printf("   (");
    for (int k = 0; k < N_KINDS; k++) {
        int n = 0;
        for (int l = 0; l < L; l++) n += m->kinds[l] == k;
        if (n) printf("%s%c=%s x%d", k && n < L ? " " : "", kind_letters[k], kind_names[k], n);
    }
    printf(")\n");
    printf("dim %d, mlp %d, vocab %d, max_position_embeddings %d, %s embeddings\n", c->dim, c->hidden_dim, c->vocab_size,
           c->max_pos, c->tie_embeddings ? "tied" : "untied");
    printf("parameters: %llu (%.2fM), weights %.1f MB\n", (unsigned long long)m->n_params, m->n_params / 1e6, m->weight_bytes / 1e6);
    size_t state_floats = 0, kv_per_token = 0, conv_floats = 0;
    for (int l = 0; l < L; l++) {
        const LayerWeights *w = &m->layers[l];
        if (w->kind == KIND_ATTENTION) kv_per_token += 2 * (size_t)c->attn_kv_heads * c->attn_head_dim;
        else {
            state_floats += linear_state_floats(c, w->kind);
            for (int i = 0; i < 3; i++) if (w->conv_w[i]) conv_floats += (size_t)w->conv_channels[i] * (c->conv_size - 1);
        }
    }
    size_t state_bytes = (state_floats + conv_floats) * 4, kv_bytes = dtype_bytes(kv_dtype, kv_per_token, 1);
    const char *kv_type = kv_dtype == DTYPE_BF16 ? "bf16" : "fp32";
    for (int k = 1; k < N_KINDS; k++) { // the shape of one layer's state, per kind present
        int present = 0;
        for (int l = 0; l < L; l++) present |= m->kinds[l] == k;
        if (!present) continue;
        int heads = k == KIND_GLA ? c->lin_k_heads : k == KIND_DELTA_NET || k == KIND_GATED_DELTANET ? c->lin_v_heads : c->lin_q_heads;
        if (k == KIND_HGRN) printf("%s state per layer: h [%d] fp32", kind_names[k], c->lin_head_v_dim);
        else printf("%s state per layer: S [%d heads x %d x %d] fp32", kind_names[k], heads, c->lin_head_k_dim, c->lin_head_v_dim);
        if (c->flags & FLAG_SHORT_CONV && k != KIND_RETNET) printf(", plus %d-tap short-conv caches", c->conv_size);
        printf("\n");
    }
    if (c->attn_heads && memchr(m->kinds, KIND_ATTENTION, (size_t)L))
        printf("attention per layer: K and V [tokens x %d kv heads x %d] %s%s\n", c->attn_kv_heads, c->attn_head_dim, kv_type,
               c->attn_window ? ", sliding window" : "");
    printf("recurrent state: %zu bytes (+ %zu bytes of conv caches), constant in the context length\n",
           state_floats * 4, conv_floats * 4);
    printf("kv cache: %zu bytes per token (%s)%s\n", kv_bytes, kv_type,
           c->attn_window ? " (sliding window: only the last window of tokens is kept)" : "");
    // the paper's argument in numbers: state + KV memory of this model vs a pure Transformer
    // of the same width and depth (every layer full multi-head attention, the same cache type)
    size_t transformer_per_token = dtype_bytes(kv_dtype, (uint64_t)L * 2 * c->dim, 1);
    printf("memory per sequence (KV %s) %14s %14s %14s\n", kv_type, "2K tokens", "32K tokens", "128K tokens");
    const int lens[3] = {2048, 32768, 131072};
    printf("  this model                 ");
    for (int i = 0; i < 3; i++) {
        size_t kept = c->attn_window && c->attn_window < lens[i] ? (size_t)c->attn_window : (size_t)lens[i];
        printf(" %11.1f MB", (state_bytes + kv_bytes * kept) / 1e6);
    }
    printf("\n  pure Transformer, same size");
    for (int i = 0; i < 3; i++) printf(" %11.1f MB", (double)transformer_per_token * lens[i] / 1e6);
    printf("\n");
    const char *simd = "plain C", *vnni = "", *amx = "";
#if defined(SIMD_AVX512)
    simd = "AVX-512";
#elif defined(SIMD_NEON)
    simd = "NEON";
#elif defined(SIMD_DOT)
    simd = "AVX2/FMA";
#endif
#ifdef __AVX512VNNI__
    vnni = " (VNNI for q8)";
#endif
    const char *bf16_tile = "", *q8_tile = ""; // the batch tiles that stand in where AMX is not in use
#ifdef SIMD_BF16_TILE
    if (bf16_tile_on()) bf16_tile = ", AVX512-BF16 for bf16 prompt batches";
#endif
#ifdef SIMD_Q8_TILE
    if (q8_tile_on()) q8_tile = ", VNNI for q8 prompt batches";
#endif
#ifdef SIMD_AMX
    amx = amx_ready() ? ", AMX tiles for bf16 and q8 prompt batches" : ", AMX built in but off (HLA_AMX=0, or the kernel did not grant it)";
    if (amx_ready()) bf16_tile = q8_tile = "";
#endif
    printf("cpu kernels: %s%s%s%s%s\n", simd, vnni, amx, bf16_tile, q8_tile);
    (void)ctx;
}

// ----------------------------------------------------------------------------
// Command line

static void usage(int status) { // status 0 (-h, --help): to stdout
    fprintf(status ? stderr : stdout,
            "usage: run MODEL.bin [options]\n"
            "  -z FILE        tokenizer.bin (default: tokenizer.bin)\n"
            "  -i TEXT        prompt text             -f FILE  prompt text from a file\n"
            "  --tokens IDS   prompt as comma-separated token ids (e.g. 1,415,2936)\n"
            "  -n N           tokens to generate (default 256)\n"
            "  -t T           temperature (default 1.0; 0 = greedy)\n"
            "  -p P           top-p (default 0.9)     -k K   top-k (default 0 = off)\n"
            "  --min-p P      min-p (default 0)       --repeat-penalty R (default 1 = off)\n"
            "  -s SEED        random seed (default: time)\n"
            "  -T N           threads (default: number of CPUs)\n"
            "  --device D     cpu (default) or cuda (a build made with `make cuda`)\n"
            "  --ctx N        context length for full-attention layers (default: max_position_embeddings)\n"
            "  --kv-dtype T   fp32 (default) or bf16: the attention layers' KV cache (bf16: half the memory)\n"
            "  --ppl FILE     perplexity of a text file, in windows of --ctx tokens\n"
            "  --kl-ref REF.bin  with --ppl: also the mean KL(REF || MODEL) of the next-token distributions\n"
            "  --save-state F   after the prompt, save the whole sequence state (states, conv and KV caches)\n"
            "  --load-state F   start from a saved state; the prompt (no BOS) continues it\n"
            "  --verbose        per-layer state norms at every step (stderr)\n"
            "  --tokens-file F  prompt (or, with -n 0, text to score) as whitespace-separated token ids\n"
            "  --logits FILE  write float32 logits of every prompt position, [n_prompt][vocab], and exit\n"
            "  --one-by-one   feed the prompt one token at a time (the decode path)\n"
            "  --ids          print generated token ids instead of text\n"
            "  --quiet        no stats line\n"
            "  --info         print the layer map, parameter count and state/KV sizes\n"
            "usage: run --tokenize -z tokenizer.bin (-i TEXT | -f FILE)\n"
            "usage: run --detokenize -z tokenizer.bin ID...\n");
    exit(status);
}

// --device cuda: this sequence's forward passes run on the GPU from here on
static void use_gpu(RunState *s, const Model *m, int quiet) {
#ifdef USE_CUDA
    s->gpu = cuda_init(m, s->ctx, s->kv_dtype, quiet);
    s->max_batch = cuda_max_batch();
    free(s->logits);
    s->logits = xcalloc((size_t)s->max_batch * m->c.vocab_size, sizeof(float));
#else
    (void)s; (void)m; (void)quiet;
    fatal("--device cuda: this run was built without CUDA (build it with `make cuda`)");
#endif
}

static char *read_text_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open (%s)", path, strerror(errno));
    size_t cap = 1 << 16, len = 0, got;
    char *buf = xcalloc(cap, 1);
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) fatal("out of memory reading %s", path);
            buf = bigger;
            cap *= 2;
        }
    }
    if (ferror(f)) fatal("%s: read error", path);
    fclose(f);
    buf[len < cap ? len : cap - 1] = len < cap ? 0 : buf[cap - 1];
    *n = len;
    return buf;
}

static int *parse_token_list(const char *s, int *n_out) {
    size_t n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    int *ids = xcalloc(n, sizeof(int));
    int k = 0;
    const char *p = s;
    while (1) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX) fatal("--tokens: '%s' is not a comma-separated list of ids", s);
        ids[k++] = (int)v;
        while (*end == ' ') end++;
        if (*end == 0) break;
        if (*end != ',') fatal("--tokens: '%s' is not a comma-separated list of ids", s);
        p = end + 1;
    }
    *n_out = k;
    return ids;
}

static long parse_int(const char *flag, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) fatal("%s: '%s' is not an integer in [%ld, %ld]", flag, v, lo, hi);
    return x;
}

static float parse_float(const char *flag, const char *v, float lo, float hi) {
    char *end;
    float x = strtof(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) fatal("%s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
    return x;
}

#ifndef HLA_FUZZ
int main(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = "tokenizer.bin", *prompt = NULL, *token_list = NULL, *logits_path = NULL;
    const char *text_file = NULL, *ppl_file = NULL, *tokens_file = NULL, *kl_ref_path = NULL;
    const char *save_state_path = NULL, *load_state_path = NULL;
    int steps = 256, one_by_one = 0, print_ids = 0, quiet = 0, info = 0, tokenize = 0, detokenize = 0, ctx = 0, gpu = 0;
    int kv_dtype = DTYPE_F32;
    float temperature = 1.0f, topp = 0.9f, minp = 0.0f, repeat_penalty = 1.0f;
    int topk = 0;
    unsigned long long seed = 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = cpus > 0 ? (int)(cpus < 64 ? cpus : 64) : 1;
    signal(SIGPIPE, SIG_IGN); // a closed pipe (run | head) ends us through a failed write, not a signal

    int first_id = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
#define NEXT() (has ? argv[++i] : (fatal("option %s needs a value", a), (char *)NULL))
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(0);
        else if (!strcmp(a, "-z")) tok_path = NEXT();
        else if (!strcmp(a, "-i")) prompt = NEXT();
        else if (!strcmp(a, "-f")) text_file = NEXT();
        else if (!strcmp(a, "--tokens")) token_list = NEXT();
        else if (!strcmp(a, "-n")) steps = (int)parse_int(a, NEXT(), 0, 1 << 30);
        else if (!strcmp(a, "-t")) temperature = parse_float(a, NEXT(), 0, 100);
        else if (!strcmp(a, "-p")) topp = parse_float(a, NEXT(), 0, 1);
        else if (!strcmp(a, "-k")) topk = (int)parse_int(a, NEXT(), 0, 1 << 30);
        else if (!strcmp(a, "--min-p")) minp = parse_float(a, NEXT(), 0, 1);
        else if (!strcmp(a, "--repeat-penalty")) repeat_penalty = parse_float(a, NEXT(), 0.01f, 100);
        else if (!strcmp(a, "-s")) seed = (unsigned long long)parse_int(a, NEXT(), 0, 0x7fffffffL);
        else if (!strcmp(a, "-T")) n_threads = (int)parse_int(a, NEXT(), 1, 64);
        else if (!strcmp(a, "--ctx")) ctx = (int)parse_int(a, NEXT(), 1, 1 << 24);
        else if (!strcmp(a, "--logits")) logits_path = NEXT();
        else if (!strcmp(a, "--ppl")) ppl_file = NEXT();
        else if (!strcmp(a, "--tokens-file")) tokens_file = NEXT();
        else if (!strcmp(a, "--kl-ref")) kl_ref_path = NEXT();
        else if (!strcmp(a, "--save-state")) save_state_path = NEXT();
        else if (!strcmp(a, "--load-state")) load_state_path = NEXT();
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--device")) {
            const char *d = NEXT();
            if (strcmp(d, "cpu") && strcmp(d, "cuda")) fatal("--device: unknown device '%s' (cpu or cuda)", d);
            gpu = !strcmp(d, "cuda");
        }
        else if (!strcmp(a, "--kv-dtype")) {
            const char *d = NEXT();
            if (strcmp(d, "fp32") && strcmp(d, "bf16")) fatal("--kv-dtype: unknown type '%s' (fp32 or bf16)", d);
            kv_dtype = !strcmp(d, "bf16") ? DTYPE_BF16 : DTYPE_F32;
        }
        else if (!strcmp(a, "--one-by-one")) one_by_one = 1;
        else if (!strcmp(a, "--ids")) print_ids = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--info")) info = 1;
        else if (!strcmp(a, "--tokenize")) tokenize = 1;
        else if (!strcmp(a, "--detokenize")) { detokenize = 1; }
        else if (detokenize && a[0] != '-') { first_id = i; break; }
        else if (a[0] == '-' || model_path) { fprintf(stderr, "error: unknown argument %s\n", a); usage(1); }
        else model_path = a;
#undef NEXT
    }

    if (tokenize || detokenize) { // tokenizer modes: no model needed
        Tokenizer t;
        tokenizer_load(&t, tok_path);
        if (tokenize) {
            if (!prompt == !text_file) usage(1);
            size_t n = prompt ? strlen(prompt) : 0;
            char *buf = text_file ? read_text_file(text_file, &n) : NULL;
            int *ids = xcalloc(n + 3, sizeof(int));
            int n_ids = tokenizer_encode(&t, buf ? buf : prompt, n, 1, ids, (int)(n + 3));
            for (int i = 0; i < n_ids; i++) printf(i ? " %d" : "%d", ids[i]);
            printf("\n");
            free(ids);
            free(buf);
        } else {
            int n = argc - first_id, prev = t.bos_id;
            DecodeStream ds;
            decode_init(&ds);
            for (int i = 0; i < n; i++) {
                int id = (int)parse_int("--detokenize", argv[first_id + i], 0, t.vocab_size - 1);
                if (i == 0 && id == t.bos_id) continue;
                decode_stream(&t, prev, id, &ds, stdout);
                prev = id;
            }
            decode_flush(&ds, stdout);
        }
        tokenizer_free(&t);
        return fflush(stdout) == 0 ? 0 : 1;
    }

    if (!model_path) usage(1);
    if (!!prompt + !!text_file + !!token_list + !!tokens_file + !!ppl_file > 1)
        fatal("give one text to run: -i, -f, --tokens, --tokens-file or --ppl");
    if (text_file) { // -f FILE: the prompt's text from a file
        size_t n;
        prompt = read_text_file(text_file, &n);
        if (strlen(prompt) != n) fatal("%s: a NUL byte in the prompt file", text_file);
    }
#ifdef USE_OPENBLAS
    openblas_set_num_threads(1); // our threads share the blocks of a product (matmul_blas)
#endif
    Model m;
    load_model(&m, model_path);
    if (info) { print_info(&m, ctx, kv_dtype); return 0; }
    if (ctx == 0) ctx = m.c.max_pos;

    Tokenizer tok, *tokp = NULL;
    int n_prompt = 0, *prompt_ids = NULL;
    double text_bytes = 0;
    if (token_list) {
        prompt_ids = parse_token_list(token_list, &n_prompt);
    } else if (tokens_file) {
        size_t n;
        char *text = read_text_file(tokens_file, &n);
        prompt_ids = xcalloc(n / 2 + 1, sizeof(int));
        for (char *p = text, *end; ; p = end) {
            while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
            if (!*p) break;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (size_t)n_prompt > n / 2)
                fatal("%s: not a list of token ids (at byte %ld)", tokens_file, (long)(p - text));
            prompt_ids[n_prompt++] = (int)v;
        }
        free(text);
    } else if (load_state_path && !prompt) { // continue the saved sequence with no new text
        prompt_ids = xcalloc(1, sizeof(int));
    } else if (ppl_file) {
        tokenizer_load(&tok, tok_path);
        tokp = &tok;
        size_t n;
        char *text = read_text_file(ppl_file, &n);
        if (n > (size_t)INT32_MAX / 2) fatal("%s: too large", ppl_file);
        prompt_ids = xcalloc(n + 3, sizeof(int));
        n_prompt = tokenizer_encode(&tok, text, n, 1, prompt_ids, (int)(n + 3));
        text_bytes = (double)n;
        free(text);
    } else {
        tokenizer_load(&tok, tok_path);
        tokp = &tok;
        const char *text = prompt ? prompt : "";
        size_t n = strlen(text);
        prompt_ids = xcalloc(n + 3, sizeof(int));
        n_prompt = tokenizer_encode(&tok, text, n, !load_state_path, prompt_ids, (int)(n + 3));
    }
    if (n_prompt < 1 && !load_state_path) fatal("the prompt is empty");
    check_tokens(&m, prompt_ids, n_prompt);
    if (!tokp && !print_ids && !logits_path && access(tok_path, R_OK) == 0) { // only to print text
        tokenizer_load(&tok, tok_path);
        tokp = &tok;
        if (tok.vocab_size > m.c.vocab_size) { tokenizer_free(&tok); tokp = NULL; } // not this model's: print ids
    }
    if (tokp && tokp->vocab_size > m.c.vocab_size)
        fatal("%s has %d tokens but %s has a vocab of %d: wrong tokenizer?", tok_path, tokp->vocab_size, model_path, m.c.vocab_size);
    if (!tokp) print_ids = 1;

    RunState s;
    if (ppl_file || (tokens_file && !logits_path && steps == 0)) { // score the text in windows of --ctx tokens
        alloc_run_state(&s, &m, ctx, kv_dtype);
        if (gpu) use_gpu(&s, &m, quiet);
        Model ref;
        RunState ref_state;
        if (kl_ref_path) {
            load_model(&ref, kl_ref_path);
            if (ref.c.vocab_size != m.c.vocab_size) fatal("%s: vocab %d differs from %s's %d", kl_ref_path, ref.c.vocab_size, model_path, m.c.vocab_size);
            alloc_run_state(&ref_state, &ref, ctx, kv_dtype);
            if (gpu) use_gpu(&ref_state, &ref, quiet);
        }
        perplexity(&m, &s, kl_ref_path ? &ref : NULL, &ref_state, prompt_ids, n_prompt, ctx, text_bytes);
        return 0;
    }
    alloc_run_state(&s, &m, ctx, kv_dtype);
    if (gpu) use_gpu(&s, &m, quiet);
    if (load_state_path) load_state(&m, &s, load_state_path);
    if (save_state_path) { // the prompt first, then the state; generation (if any) continues from it
        if (n_prompt < 1) fatal("--save-state needs a prompt");
        feed(&m, &s, prompt_ids, n_prompt, one_by_one, NULL);
        save_state(&m, &s, save_state_path);
        n_prompt = 0;
    }
    if (logits_path) {
        write_logits(&m, &s, prompt_ids, n_prompt, one_by_one, logits_path);
        return 0;
    }
    Sampler sp = {temperature, topp, minp, repeat_penalty, topk, seed ? seed : (unsigned long long)time(NULL), NULL};
    sp.probindex = xcalloc(2 * (size_t)m.c.vocab_size, sizeof(ProbIndex));
    if (tokp && prompt && !quiet && !print_ids) { fputs(prompt, stdout); fflush(stdout); }
    generate(&m, &s, tokp, &sp, prompt_ids, n_prompt, steps, one_by_one, print_ids, quiet);
    return 0;
}
#endif // HLA_FUZZ
#endif // HLA_TYPES_ONLY
