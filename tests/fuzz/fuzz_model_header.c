/* libFuzzer harness: load_model (the weight-file parser) on arbitrary bytes, then,
   if the file loads, one forward pass over 2 tokens on a small context.
   Build: see run_fuzz.sh (clang -fsanitize=fuzzer,address,undefined -DHLA_FUZZ). */
#define FZ_MAX_ALLOC ((size_t)64 << 20)
#define FZ_MAX_TOTAL ((size_t)512 << 20)
#include "fuzz_common.h"

static Model m;        // static: survives the longjmp with its fields as load_model left them
static RunState s;
static int have_state;

static void free_run_state(RunState *st, const Model *mm) {
    float **bufs[] = {&st->x, &st->xb, &st->xb2, &st->q, &st->k, &st->v, &st->g, &st->f, &st->a, &st->b, &st->o,
                      &st->low_rank, &st->hb, &st->hb2, &st->att, &st->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) { free(*bufs[i]); *bufs[i] = NULL; }
    if (st->layers) {
        for (int l = 0; l < mm->c.n_layers; l++) {
            LayerState *ls = &st->layers[l];
            free(ls->state); free(ls->key_cache); free(ls->value_cache);
            for (int i = 0; i < 3; i++) free(ls->conv_cache[i]);
        }
        free(st->layers);
    }
    memset(st, 0, sizeof *st);
}

// what a partially or fully loaded Model holds: the mapping, layers[], lower bounds and their
// logs (one block: log1m_lower_bound points into log_lower_bound's), RoPE tables
static void free_model(Model *mm) {
    if (mm->layers) {
        for (int l = 0; l < mm->c.n_layers; l++) {
            free(mm->layers[l].lower_bound);
            free(mm->layers[l].log_lower_bound);
        }
        free(mm->layers);
    }
    free(mm->rope_inv_freq_attn);
    free(mm->rope_inv_freq_retnet);
    free(mm->retnet_gammas);
    if (mm->map && mm->map != MAP_FAILED) munmap(mm->map, mm->map_bytes);
    memset(mm, 0, sizeof *mm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_input_path(data, size);
    memset(&m, 0, sizeof m);
    have_state = 0;
    if (setjmp(fuzz_fatal_jump)) { // fatal(): a clean refusal; drop whatever was allocated
        if (have_state) free_run_state(&s, &m);
        free_model(&m);
        fz_free_all(); // anything else (none expected from load_model)
        return 0;
    }
    load_model(&m, path);
    const Config *c = &m.c;
    // bounded work: the file is at most -max_len bytes, so the weights are small; skip absurd shapes anyway
    if (m.n_params <= 5000000 && (uint64_t)c->n_layers * c->dim <= 1 << 20) {
        alloc_run_state(&s, &m, 8, size % 2 ? DTYPE_BF16 : DTYPE_F32); // both KV cache types
        have_state = 1;
        int tokens[2] = {0, c->vocab_size - 1};
        forward(&m, &s, tokens, 2, 1);           // the batched prompt path, all logits
        forward(&m, &s, tokens + 1, 1, 0);       // one more token: the decode path
        for (int i = 0; i < c->vocab_size; i++) (void)s.logits[i]; // readable
        free_run_state(&s, &m);
        have_state = 0;
    }
    free_model(&m);
    FZ_CHECK(fz_live() == 0, "load_model/alloc_run_state left %zu blocks that free_model/free_run_state do not know", fz_live());
    return 0;
}
