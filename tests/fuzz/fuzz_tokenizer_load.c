/* libFuzzer harness: tokenizer_load on arbitrary bytes; if the file loads, encode
   the input itself as text and decode every id, checking the output is UTF-8. */
#include "fuzz_common.h"
#include "utf8_check.h"

static Tokenizer t;    // static: survives the longjmp
static int stage;      // 0: loading, 1: using a loaded tokenizer
static unsigned long long n_leaky_fatal, n_runs;

static void report_at_exit(void) {
    if (n_leaky_fatal)
        fprintf(stderr, "fuzz_tokenizer_load: %llu of %llu inputs hit fatal() with memory that tokenizer_free cannot reach "
                "(tokenizer_load's file buffer, tokenizer_encode's scratch); freed by the harness\n", n_leaky_fatal, n_runs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) { (void)argc; (void)argv; atexit(report_at_exit); return 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_input_path(data, size);
    n_runs++;
    stage = 0;
    if (setjmp(fuzz_fatal_jump)) {
        FZ_CHECK(stage == 0, "fatal() while encoding with a tokenizer that loaded (max_ids = bytes + 3 too small?)");
        tokenizer_free(&t); // must cope with a partly filled struct (tokenizer_load zeroes it first)
        if (fz_live()) n_leaky_fatal++;
        fz_free_all();
        return 0;
    }
    tokenizer_load(&t, path);
    FZ_CHECK(fz_live() == 7, "a loaded tokenizer should hold exactly its 7 arrays, holds %zu blocks", fz_live());
    stage = 1;
    // encode the file's own bytes as text (max_ids = n + 3 is documented as enough)
    int *ids = malloc((size + 3) * sizeof(int));
    FZ_CHECK(ids, "oom");
    int n = tokenizer_encode(&t, (const char *)data, size, 1, ids, (int)size + 3);
    FZ_CHECK(n >= 1 && n <= (int)size + 3 && ids[0] == t.bos_id, "encode returned %d ids", n);
    for (int i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < t.vocab_size, "id %d out of range", ids[i]);
    size_t len;
    char *text = tokenizer_decode(&t, ids + 1, n - 1, &len);
    FZ_CHECK(text && utf8_valid((const unsigned char *)text, len), "decoded text is not valid UTF-8");
    free(text);
    free(ids);
    // the documented bound max_ids = bytes + 3 with the shortest special token between
    // plain characters: "x<sp>x<sp>...x"
    if (t.n_special > 0) {
        int sp = t.special_ids[0];
        for (int k = 1; k < t.n_special; k++) if (t.piece_len[t.special_ids[k]] < t.piece_len[sp]) sp = t.special_ids[k];
        size_t pl = (size_t)t.piece_len[sp], plen = 0;
        char *probe = malloc(8 * (pl + 1) + 1);
        FZ_CHECK(probe, "oom");
        for (int k = 0; k < 8; k++) { probe[plen++] = 'x'; memcpy(probe + plen, t.pieces[sp], pl); plen += pl; }
        probe[plen++] = 'x';
        int *pids = malloc((plen + 3) * sizeof(int));
        FZ_CHECK(pids, "oom");
        n = tokenizer_encode(&t, probe, plen, 1, pids, (int)plen + 3);
        FZ_CHECK(n >= 1 && n <= (int)plen + 3, "encode returned %d ids", n);
        free(pids);
        free(probe);
    }
    // every token through the streaming decoder, each after the previous one
    char *buf = NULL; size_t blen = 0;
    FILE *f = open_memstream(&buf, &blen);
    FZ_CHECK(f, "open_memstream");
    DecodeStream ds; decode_init(&ds);
    for (int id = 0, prev = t.bos_id; id < t.vocab_size; prev = id, id++) decode_stream(&t, prev, id, &ds, f);
    decode_stream(&t, 0, -1, &ds, f);            // out of range: nothing
    decode_stream(&t, 0, t.vocab_size, &ds, f);  // out of range: nothing
    decode_flush(&ds, f);
    fclose(f);
    FZ_CHECK(utf8_valid((const unsigned char *)buf, blen), "streamed text is not valid UTF-8");
    (free)(buf); // open_memstream's buffer comes from libc's malloc, not run.c's
    tokenizer_free(&t);
    FZ_CHECK(fz_live() == 0, "tokenizer_free left %zu blocks", fz_live());
    return 0;
}
