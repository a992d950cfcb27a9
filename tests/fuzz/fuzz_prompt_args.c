/* libFuzzer harness: the command-line value parsers parse_token_list (--tokens),
   parse_int and parse_float, on arbitrary NUL-terminated strings. The first input
   byte picks the parser and, for parse_int/parse_float, one of the ranges main
   uses; the rest is the string (cut at its first NUL, as argv would be).
   Checks: a parsed list re-serialised and parsed again gives the same ids, and
   has at most (commas + 1) ids; parse_int/parse_float results lie in range. */
#include "fuzz_common.h"

static const struct { long lo, hi; } int_ranges[] = {{0, 1 << 30}, {1, 64}, {1, 1 << 24}, {0, 0x7fffffffL}, {LONG_MIN, LONG_MAX}};
static const struct { float lo, hi; } float_ranges[] = {{0, 100}, {0, 1}, {0.01f, 100}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned sel = data[0];
    char *s = malloc(size); // data[1..] plus a NUL
    FZ_CHECK(s, "oom");
    memcpy(s, data + 1, size - 1);
    s[size - 1] = 0;
    static char *again;
    again = NULL;
    if (setjmp(fuzz_fatal_jump)) { fz_free_all(); return 0; } // refused: fine (frees the list too)
    unsigned which = sel % 3;
    if (which == 0) {
        int n;
        int *ids = parse_token_list(s, &n);
        size_t commas = 0;
        for (const char *p = s; *p; p++) commas += *p == ',';
        FZ_CHECK(n >= 1 && (size_t)n <= commas + 1, "%d ids from %zu commas", n, commas);
        again = malloc((size_t)n * 12 + 1);
        FZ_CHECK(again, "oom");
        char *w = again;
        for (int i = 0; i < n; i++) w += sprintf(w, i ? ",%d" : "%d", ids[i]);
        int n2;
        int *ids2 = parse_token_list(again, &n2);
        FZ_CHECK(n2 == n && memcmp(ids, ids2, (size_t)n * sizeof(int)) == 0, "re-parsing '%s' differs", again);
        free(ids2);
        free(ids);
        free(again);
    } else if (which == 1) {
        unsigned r = (sel / 3) % (sizeof int_ranges / sizeof *int_ranges);
        long v = parse_int("-n", s, int_ranges[r].lo, int_ranges[r].hi);
        FZ_CHECK(v >= int_ranges[r].lo && v <= int_ranges[r].hi, "parse_int gave %ld", v);
    } else {
        unsigned r = (sel / 3) % (sizeof float_ranges / sizeof *float_ranges);
        float v = parse_float("-t", s, float_ranges[r].lo, float_ranges[r].hi);
        FZ_CHECK(isfinite(v) && v >= float_ranges[r].lo && v <= float_ranges[r].hi, "parse_float gave %g", v);
    }
    free(s);
    FZ_CHECK(fz_live() == 0, "leaked %zu blocks", fz_live());
    return 0;
}
