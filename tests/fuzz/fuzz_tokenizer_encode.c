/* libFuzzer harness: tokenizer_encode of arbitrary bytes with the real tokenizer.bin
   (loaded once), decoded back with decode_stream into a memory FILE.
   Checks: ids in range; BOS first with add_bos, and the same ids after it as
   without; the decoded text is valid UTF-8 and equals tokenizer_decode's; and for
   input that is valid UTF-8 with no special token text (<s> </s> <unk>) and no
   U+2581, decode(encode(x)) == x exactly (encode prepends a space, decode drops
   the leading space of the first token after BOS: they cancel).
   Also decodes the input read as a list of 16-bit ids: the output must be UTF-8.
   The tokenizer: $HLA_TOKENIZER, else HLA_TOKENIZER_DEFAULT (set by run_fuzz.sh to
   the repository's tokenizer.bin), else tokenizer.bin / ../../tokenizer.bin. */
#include "fuzz_common.h"
#include "utf8_check.h"

#ifndef HLA_TOKENIZER_DEFAULT
#define HLA_TOKENIZER_DEFAULT "tokenizer.bin"
#endif

static Tokenizer tok;
static size_t live_after_load;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    const char *cands[] = {getenv("HLA_TOKENIZER"), HLA_TOKENIZER_DEFAULT, "tokenizer.bin", "../../tokenizer.bin",
                           "../tokenizer.bin"};
    const char *path = NULL;
    for (size_t i = 0; i < sizeof cands / sizeof *cands && !path; i++)
        if (cands[i] && *cands[i] && access(cands[i], R_OK) == 0) path = cands[i];
    if (!path) { fprintf(stderr, "fuzz_tokenizer_encode: no tokenizer.bin (set HLA_TOKENIZER)\n"); exit(1); }
    if (setjmp(fuzz_fatal_jump)) { fprintf(stderr, "fuzz_tokenizer_encode: %s does not load\n", path); exit(1); }
    tokenizer_load(&tok, path);
    live_after_load = fz_live();
    return 0;
}

// decode ids (a BOS in front of them is implied, as in run's --detokenize) with decode_stream
static char *decode_ids(const int *ids, int n, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    FZ_CHECK(f, "open_memstream");
    DecodeStream ds; decode_init(&ds);
    int prev = tok.bos_id;
    for (int i = 0; i < n; i++) { decode_stream(&tok, prev, ids[i], &ds, f); prev = ids[i]; }
    decode_flush(&ds, f);
    fclose(f);
    return buf; // libc's malloc: (free)(buf)
}

static int contains(const uint8_t *d, size_t n, const char *needle) {
    return memmem(d, n, needle, strlen(needle)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (setjmp(fuzz_fatal_jump)) FZ_CHECK(0, "fatal() while encoding/decoding %zu bytes with the real tokenizer", size);
    int cap = (int)size + 3; // documented as enough
    int *with = malloc((size_t)cap * sizeof(int)), *without = malloc((size_t)cap * sizeof(int));
    FZ_CHECK(with && without, "oom");
    int nw = tokenizer_encode(&tok, (const char *)data, size, 1, with, cap);
    int no = tokenizer_encode(&tok, (const char *)data, size, 0, without, cap);
    FZ_CHECK(nw == no + 1 && with[0] == tok.bos_id, "add_bos: %d ids vs %d without", nw, no);
    FZ_CHECK(memcmp(with + 1, without, (size_t)no * sizeof(int)) == 0, "ids after BOS differ from the ids without BOS");
    for (int i = 0; i < no; i++) FZ_CHECK(without[i] >= 0 && without[i] < tok.vocab_size, "id %d out of range", without[i]);
    FZ_CHECK(size == 0 ? no == 0 : no >= 1, "%zu bytes gave %d ids", size, no);

    size_t len;
    char *text = decode_ids(without, no, &len);
    FZ_CHECK(utf8_valid((const unsigned char *)text, len), "decoded text is not valid UTF-8");
    size_t len2;
    char *text2 = tokenizer_decode(&tok, without, no, &len2);
    FZ_CHECK(len2 == len && memcmp(text, text2, len) == 0, "decode_stream and tokenizer_decode disagree");
    free(text2);
    if (utf8_valid(data, size) && !contains(data, size, "<s>") && !contains(data, size, "</s>") &&
        !contains(data, size, "<unk>") && !contains(data, size, "\xE2\x96\x81"))
        FZ_CHECK(len == size && memcmp(text, data, size) == 0, "round trip: %zu bytes in, %zu bytes out", size, len);
    (free)(text);

    // the input as arbitrary ids: any id sequence decodes to valid UTF-8
    int n16 = (int)(size / 2);
    for (int i = 0; i < n16 && i < cap; i++) with[i] = (int)(data[2 * i] | data[2 * i + 1] << 8) % (tok.vocab_size + 2) - 1;
    text = decode_ids(with, n16 < cap ? n16 : cap, &len);
    FZ_CHECK(utf8_valid((const unsigned char *)text, len), "decoded ids are not valid UTF-8");
    (free)(text);
    free(with);
    free(without);
    FZ_CHECK(fz_live() == live_after_load, "encode/decode leaked %zu blocks", fz_live() - live_after_load);
    return 0;
}
