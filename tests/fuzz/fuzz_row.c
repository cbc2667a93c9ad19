/*
 * fuzz_row.c - stored-row decoding: what a store's claim hands the relay
 * (outbox__msg_from_row, strict: a bad row is quarantined) and what list,
 * show and drop show (outbox__msg_from_row_lenient), from columns as each
 * store reads them: SQLite gives seq and occurred_at as integers and
 * every text column as a string ("" for NULL); PostgreSQL gives every
 * column as text, the integers read by outbox__pg_parse_i64.
 *
 * Input: one byte choosing the store (even: SQLite, odd: PostgreSQL),
 * then seq and occurred_at (8 bytes each, little-endian, for SQLite; two
 * text fields for PostgreSQL), then id, type, aggregate_type,
 * aggregate_id, payload and headers_json, separated by NUL bytes.
 *
 * Beyond memory errors it checks that a row the strict decoder accepts is
 * a message enqueue would accept: the same headers, found by name.
 */
#include "fuzz.h"
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ
#include "store/pg.h"
#endif

static void check_msg(const outbox_msg *m)
{
    size_t i;
    if (strlen(m->id) != 36 || !outbox_uuid_valid(m->id)) abort();
    for (i = 0; i < m->header_count; i++) {
        const char *v = outbox_msg_header(m, m->header_names[i]);
        if (v == NULL || strcmp(v, m->header_values[i]) != 0) abort();
    }
    (void)outbox__msg_size(m);
}

static int64_t read_i64(const uint8_t *p)
{
    uint64_t raw = 0;
    int64_t v;
    size_t i;
    for (i = 0; i < 8; i++)
        raw |= (uint64_t)p[i] << (8 * i);
    memcpy(&v, &raw, sizeof v);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_fields f;
    outbox_msg *m = NULL;
    outbox_error err;
    int64_t seq, occurred_at;
    const char *const *col;

    if (size < 1 || size > 16384) return 0;
    if (data[0] & 1) {
#ifdef OUTBOX_HAVE_LIBPQ
        if (fuzz_fields_split(&f, data + 1, size - 1, 8) != 0) return 0;
        seq = outbox__pg_parse_i64(f.field[0]);
        occurred_at = outbox__pg_parse_i64(f.field[1]);
        col = &f.field[2];
#else
        return 0;
#endif
    } else {
        if (size < 17 || fuzz_fields_split(&f, data + 17, size - 17, 6) != 0) return 0;
        seq = read_i64(data + 1);
        occurred_at = read_i64(data + 9);
        col = &f.field[0];
    }

    if (outbox__msg_from_row(&m, seq, col[0], occurred_at, col[1], col[2], col[3], col[4], col[5],
                             &err) == OUTBOX_OK) {
        check_msg(m);
        outbox_msg_free(m);
    } else if (m != NULL) {
        abort();
    }
    m = NULL;
    if (outbox__msg_from_row_lenient(&m, seq, col[0], occurred_at, col[1], col[2], col[3], col[4],
                                     col[5], &err) != OUTBOX_OK)
        abort(); /* only memory may fail, and the fuzzer has enough */
    if (strlen(m->id) > 36) abort();
    outbox_msg_free(m);
    fuzz_fields_free(&f);
    return 0;
}
