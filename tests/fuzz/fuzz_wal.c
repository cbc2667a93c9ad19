/*
 * fuzz_wal.c - the content of a WAL message with the outbox's prefix
 * (docs/WAL.md, encoding v1: "v1" and seven netstrings), as WAL capture
 * reads it from the replication stream: outbox__pg_wal_decode and
 * outbox__pg_wal_message.  Any role that can call pg_logical_emit_message
 * can put such content on the WAL, so it is untrusted input.
 *
 * Input: the content, as is (NUL bytes included).
 *
 * Beyond memory errors it checks that every decoded field lies inside the
 * content, in order, and that a message built from it carries the same id,
 * type and aggregate id, the fields' bytes.
 */
#include "fuzz.h"
#include "internal.h"
#include "store/pg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *content = (const char *)data;
    outbox_pg_wal_fields fl;
    outbox_error err = {0, ""};
    outbox_msg *m = NULL;
    int f, code;

    code = outbox__pg_wal_decode(content, size, &fl, &err);
    if (code == OUTBOX_OK) {
        const char *end = content;
        for (f = 0; f < WAL_F_COUNT; f++) {
            if (fl.at[f] < end || fl.len[f] > size || fl.at[f] + fl.len[f] > content + size)
                abort();
            end = fl.at[f] + fl.len[f];
        }
    } else if (err.message[0] == '\0') {
        abort(); /* a refusal says why */
    }
    code = outbox__pg_wal_message(content, size, -1, &m, &err);
    if (code == OUTBOX_OK) {
        if (m == NULL || outbox__pg_wal_decode(content, size, &fl, &err) != OUTBOX_OK) abort();
        if (strlen(outbox_msg_type(m)) != fl.len[WAL_F_TYPE] ||
            memcmp(outbox_msg_type(m), fl.at[WAL_F_TYPE], fl.len[WAL_F_TYPE]) != 0 ||
            strlen(outbox_msg_aggregate_id(m)) != fl.len[WAL_F_AGG_ID] ||
            memcmp(outbox_msg_aggregate_id(m), fl.at[WAL_F_AGG_ID], fl.len[WAL_F_AGG_ID]) != 0 ||
            outbox_msg_seq(m) != -1)
            abort();
        outbox_msg_free(m);
    } else if (m != NULL || err.message[0] == '\0') {
        abort();
    }
    return 0;
}
