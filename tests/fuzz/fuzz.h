/*
 * fuzz.h - what the libFuzzer targets share: the entry point's prototype
 * and one way to cut an input into fields.
 *
 * An input is a list of fields separated by NUL bytes, the one byte a C
 * string cannot hold: every field can hold any other byte, and a seed is
 * written with printf '%s\0%s'.  Missing fields are "" (the strings the
 * library parses are never NULL where it reads untrusted text).  Targets
 * must stay deterministic: no clock, no randomness that changes what the
 * code under test does, no files, no sockets.
 */
#ifndef OUTBOX_FUZZ_H
#define OUTBOX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { FUZZ_MAX_FIELDS = 16 };

/* data[0..size) cut at NUL bytes into at most max fields (the last one
 * keeps any further NULs as its own; its length is in last_len).  The
 * strings point into one allocation: free it with fuzz_fields_free. */
typedef struct fuzz_fields {
    char *block;
    const char *field[FUZZ_MAX_FIELDS];
    size_t count;    /* fields present in the input */
    size_t last_len; /* bytes of field[max - 1] when present, NULs included */
} fuzz_fields;

static inline int fuzz_fields_split(fuzz_fields *f, const uint8_t *data, size_t size, size_t max)
{
    size_t i, start = 0;
    memset(f, 0, sizeof *f);
    if (max > FUZZ_MAX_FIELDS) max = FUZZ_MAX_FIELDS;
    f->block = malloc(size + 1);
    if (f->block == NULL) return -1;
    if (size) memcpy(f->block, data, size);
    f->block[size] = '\0';
    for (i = 0; i < max; i++)
        f->field[i] = "";
    for (i = 0; f->count < max; i++) {
        if (f->count + 1 == max) {
            f->field[f->count++] = f->block + start;
            f->last_len = size - start;
            break;
        }
        if (i == size || f->block[i] == '\0') {
            f->field[f->count++] = f->block + start;
            start = i + 1;
            if (i == size) break;
        }
    }
    return 0;
}

static inline void fuzz_fields_free(fuzz_fields *f)
{
    free(f->block);
    f->block = NULL;
}

#endif /* OUTBOX_FUZZ_H */
