/*
 * pg_wal_decode.c - the content of an outbox message on the WAL (encoding
 * version 1, written by <schema>.emit and outbox_emit_pg): "v1" and seven
 * netstrings (id, type, aggregate_type, aggregate_id, occurred_at in unix
 * microseconds, headers JSON, payload JSON), decoded into a message for
 * the relay.  No libpq here: the capture mode (pg_wal_capture.c) calls it,
 * and the tests call it without a server.  The encoding is in docs/WAL.md.
 */
#include "internal.h"

#include "pg.h"

#include <string.h>

/* Longest decimal length a netstring may give: more digits than any
 * content the WAL can hold (1 GB) is refused before it can overflow. */
#define MAX_LENGTH_DIGITS 10

static const char *const field_name[WAL_F_COUNT] = {
    "id", "type", "aggregate_type", "aggregate_id", "occurred_at", "headers", "payload"};

int outbox__pg_wal_decode(const char *content, size_t len, outbox_pg_wal_fields *out,
                          outbox_error *err)
{
    size_t at = 2;
    int f;

    memset(out, 0, sizeof *out);
    if (len < 2 || content[0] != 'v')
        return outbox__error(err, OUTBOX_EINVAL, "content does not start with a version tag (v1)");
    /* "v1" then the first length's digits: the tag is the one character
     * after 'v' (a version 10 would need a delimiter). */
    if (content[1] != '1')
        return outbox__error(err, OUTBOX_EINVAL,
                             "content is encoding version %c; this relay reads v1 (upgrade the "
                             "relay)",
                             content[1]);
    for (f = 0; f < WAL_F_COUNT; f++) {
        size_t n = 0, digits = 0;
        while (at < len && content[at] >= '0' && content[at] <= '9' &&
               digits < MAX_LENGTH_DIGITS + 1) {
            n = n * 10 + (size_t)(content[at] - '0');
            at++;
            digits++;
        }
        if (digits == 0)
            return outbox__error(err, OUTBOX_EINVAL,
                                 at >= len ? "content ends before field %d (%s)"
                                           : "field %d (%s) does not start with a decimal length",
                                 f + 1, field_name[f]);
        if (digits > MAX_LENGTH_DIGITS || (digits > 1 && content[at - digits] == '0'))
            return outbox__error(err, OUTBOX_EINVAL, "field %d (%s) has a malformed length", f + 1,
                                 field_name[f]);
        if (at >= len || content[at] != ':')
            return outbox__error(err, OUTBOX_EINVAL, "field %d (%s): no ':' after its length",
                                 f + 1, field_name[f]);
        at++;
        if (n > len - at || len - at - n < 1)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "field %d (%s) is %zu bytes, longer than the %zu left", f + 1,
                                 field_name[f], n, len - at);
        if (content[at + n] != ',')
            return outbox__error(err, OUTBOX_EINVAL, "field %d (%s): no ',' after its %zu bytes",
                                 f + 1, field_name[f], n);
        if (memchr(content + at, '\0', n) != NULL)
            return outbox__error(err, OUTBOX_EINVAL, "field %d (%s) holds a NUL byte", f + 1,
                                 field_name[f]);
        out->at[f] = content + at;
        out->len[f] = n;
        at += n + 1;
    }
    if (at != len)
        return outbox__error(err, OUTBOX_EINVAL, "content has %zu bytes after the seventh field",
                             len - at);
    return OUTBOX_OK;
}

int outbox__pg_wal_message(const char *content, size_t len, int64_t seq, outbox_msg **out,
                           outbox_error *err)
{
    outbox_pg_wal_fields fl;
    /* The fields NUL-terminated for outbox__msg_from_row, which copies them
     * into the message: on the stack when they fit (a message of the
     * benchmarks' size does), saving an allocation per message. */
    char small[1024], *copy, *s[WAL_F_COUNT];
    size_t total = 0, at = 0;
    int64_t occurred = 0;
    int f, code;

    *out = NULL;
    code = outbox__pg_wal_decode(content, len, &fl, err);
    if (code != OUTBOX_OK) return code;
    if (fl.len[WAL_F_ID] != 36)
        return outbox__error(err, OUTBOX_EBADID, "id is %zu bytes, not a 36-character UUID",
                             fl.len[WAL_F_ID]);
    if (fl.len[WAL_F_OCCURRED] < 1 || fl.len[WAL_F_OCCURRED] > 18 ||
        strspn(fl.at[WAL_F_OCCURRED], "0123456789") < fl.len[WAL_F_OCCURRED])
        return outbox__error(err, OUTBOX_EINVAL,
                             "occurred_at is not a decimal count of unix microseconds");
    /* At most 18 digits (checked above): no overflow.  Was sscanf, which
     * cost more than the rest of the decoding. */
    for (at = 0; at < fl.len[WAL_F_OCCURRED]; at++)
        occurred = occurred * 10 + (fl.at[WAL_F_OCCURRED][at] - '0');
    at = 0;
    for (f = 0; f < WAL_F_COUNT; f++)
        total += fl.len[f] + 1;
    copy = total <= sizeof small ? small : outbox__malloc(total);
    if (!copy) return outbox__error(err, OUTBOX_ENOMEM, "out of memory decoding a WAL message");
    for (f = 0; f < WAL_F_COUNT; f++) {
        s[f] = copy + at;
        memcpy(s[f], fl.at[f], fl.len[f]);
        s[f][fl.len[f]] = '\0';
        at += fl.len[f] + 1;
    }
    code = outbox__msg_from_row(out, seq, s[WAL_F_ID], occurred, s[WAL_F_TYPE], s[WAL_F_AGG_TYPE],
                                s[WAL_F_AGG_ID], s[WAL_F_PAYLOAD], s[WAL_F_HEADERS], err);
    if (copy != small) outbox__free(copy);
    return code;
}
