/*
 * my_claim.c - the MariaDB/MySQL store's claim and complete, next_due, and
 * the quarantine of rows that cannot be published.  See "Claim and
 * complete" and "Ordering" in docs/MARIADB.md.
 *
 * A claim is one round trip of three statements: START TRANSACTION, a
 * locking read of this relay's lease rows (SELECT ... FOR UPDATE), and the
 * read of the batch within those partitions, with the ordering rule
 * (guarantee 4) as a NOT EXISTS over the `blocking` index (retried or
 * failed rows: few).  The transaction stays open while the batch is
 * published; complete records every outcome and COMMITs in one more round
 * trip.  The lease rows stay locked meanwhile, so no other relay takes a
 * partition over while its batch is out.
 */
#include "internal.h"

#include "my.h"

#ifdef OUTBOX_HAVE_MARIADB

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void outbox__my_end_claim(my_store *st)
{
    if (st->in_txn && st->conn) outbox__my_rollback(st->conn);
    st->in_txn = 0;
}

/* Appends "(p1,p2,...)" of the partitions held. */
static void held_list(my_store *st, outbox_buf *b)
{
    int p, first = 1;
    outbox__buf_puts(b, "(");
    for (p = 0; p < st->partitions; p++)
        if (st->held[p]) {
            outbox__buf_printf(b, "%s%d", first ? "" : ",", p);
            first = 0;
        }
    outbox__buf_puts(b, ")");
}

/* The claim's statements (see the top of the file). */
static void claim_sql(my_store *st, const outbox_claim_params *p, int leased)
{
    long long now = (long long)p->now_us;
    outbox_buf *b = &st->sql;

    outbox__buf_reset(b);
    outbox__buf_puts(b, "START TRANSACTION; ");
    if (leased) {
        outbox__buf_puts(b, "SELECT part FROM ");
        outbox__my_table(b, st->prefix, "lease");
        outbox__buf_printf(b, " WHERE owner = %lld AND part IN ", (long long)st->member_id);
        held_list(st, b);
        outbox__buf_puts(b, " FOR UPDATE; ");
    }
    outbox__buf_puts(b, "SELECT o.seq, o.id, o.occurred_at, o.type, o.aggregate_type,"
                        " o.aggregate_id, o.payload, o.headers, o.attempts, o.available_at FROM ");
    outbox__my_table(b, st->prefix, NULL);
    outbox__buf_printf(b, " o FORCE INDEX (`%s_pending`) WHERE o.status = 'pending'", st->prefix);
    if (leased) {
        outbox__buf_puts(b, " AND o.part IN ");
        held_list(st, b);
    }
    outbox__buf_printf(b, " AND (o.attempts = 0 OR o.available_at <= %lld) AND NOT EXISTS (", now);
    outbox__buf_puts(b, "SELECT 1 FROM ");
    outbox__my_table(b, st->prefix, NULL);
    outbox__buf_printf(b,
                       " x FORCE INDEX (`%s_blocking`) WHERE x.blocking = 1"
                       " AND x.aggregate_id = o.aggregate_id AND x.seq < o.seq"
                       " AND ((x.status = 'pending' AND x.available_at > %lld)"
                       " OR (x.status = 'failed' AND %d)))"
                       " ORDER BY o.seq LIMIT %zu",
                       st->prefix, now, p->failed_blocks_aggregate ? 1 : 0, p->batch_size);
    /* Leased: the locked lease rows keep every row of those partitions
     * this relay's until it commits, so the batch is a plain read.  Row
     * locks with SKIP LOCKED would break the order: InnoDB locks each row
     * a scan passes before the partition filter lets it go, so another
     * relay's claim briefly holds rows of ours, and SKIP LOCKED would then
     * pass over an aggregate's first message and take its second (see
     * "Claim and complete" in docs/MARIADB.md).  Without a lease (tools,
     * one claimer) the rows are locked as the only guard. */
    if (!leased) outbox__buf_puts(b, " FOR UPDATE SKIP LOCKED");
}

/* A claimed row the relay cannot publish. */
typedef struct bad_row {
    int64_t seq;
    char id[40];
    char error[512];
} bad_row;

/* Marks bad rows Failed (attempts + 1, last_error = why), outside any
 * claim transaction, and logs each at error level. */
static int quarantine(my_store *st, const bad_row *bad, size_t n, outbox_error *err)
{
    size_t i;
    int code = OUTBOX_OK;
    for (i = 0; i < n && code == OUTBOX_OK; i++) {
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "UPDATE ");
        outbox__my_table(&st->sql, st->prefix, NULL);
        outbox__buf_puts(&st->sql,
                         " SET status = 'failed', attempts = attempts + 1, last_error = ");
        outbox__my_append_text(&st->sql, bad[i].error, strlen(bad[i].error));
        outbox__buf_printf(&st->sql, " WHERE seq = %lld AND status = 'pending'",
                           (long long)bad[i].seq);
        code = outbox__my_exec(st->conn, st->sql.data, "quarantining a stored message", err);
        if (code == OUTBOX_OK)
            outbox__log(OUTBOX_LOG_ERROR, MY_COMPONENT,
                        "quarantined stored message seq %lld (id %s), which cannot be "
                        "published: %s; it is Failed now, and the later messages of its "
                        "aggregate wait behind it until it is retried or dropped",
                        (long long)bad[i].seq, bad[i].id, bad[i].error);
    }
    return code;
}

static void free_msgs(outbox_msg **msgs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    outbox__free(msgs);
}

int outbox__my_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                     outbox_error *err)
{
    my_store *st = state;
    int attempt, code;

    *msgs = NULL;
    *n = 0;
    if (p->batch_size == 0) return OUTBOX_OK;
    code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    if (st->member_id) {
        code = outbox__my_rebalance(st, 0, p->once, err);
        if (code != OUTBOX_OK) return code;
        if (st->held_count == 0) return OUTBOX_OK;
    }
    for (attempt = 0; attempt < 8; attempt++) {
        int leased = st->member_id != 0, restart = 0;
        MYSQL_RES *res;
        MYSQL_ROW row;
        outbox_msg **out = NULL;
        bad_row *bad = NULL;
        size_t got = 0, nbad = 0;

        claim_sql(st, p, leased);
        if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
        if (mysql_real_query(st->conn, st->sql.data, st->sql.len) != 0)
            return outbox__my_fail(st->conn, "claiming messages", err);
        st->in_txn = 1;
        /* START TRANSACTION's answer. */
        if (mysql_next_result(st->conn) != 0) goto fail;
        if (leased) {
            unsigned char seen[MY_MAX_PARTITIONS];
            int count = 0;
            res = mysql_store_result(st->conn);
            if (!res) goto fail;
            memset(seen, 0, sizeof seen);
            while ((row = mysql_fetch_row(res)) != NULL) {
                int part = (int)outbox__my_i64(row[0]);
                if (part >= 0 && part < MY_MAX_PARTITIONS) seen[part] = 1;
                count++;
            }
            mysql_free_result(res);
            if (count != st->held_count) {
                /* Taken over since the last rebalance: claim again from
                 * what is still ours (the rows read below are let go). */
                memcpy(st->held, seen, MY_MAX_PARTITIONS);
                st->held_count = count;
                restart = 1;
            }
            if (mysql_next_result(st->conn) != 0) goto fail;
        }
        res = mysql_store_result(st->conn);
        if (!res) goto fail;
        if (!restart && mysql_num_rows(res) > 0) {
            size_t rows = (size_t)mysql_num_rows(res);
            out = outbox__calloc(rows, sizeof *out);
            bad = outbox__calloc(rows, sizeof *bad);
            if (!out || !bad) {
                outbox__free(out);
                outbox__free(bad);
                mysql_free_result(res);
                outbox__my_end_claim(st);
                return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
            }
            while ((row = mysql_fetch_row(res)) != NULL) {
                outbox_error e = {0};
                outbox_msg *m = NULL;
                int64_t seq = outbox__my_i64(row[0]);
                int rc = outbox__msg_from_row(&m, seq, row[1], outbox__my_i64(row[2]), row[3],
                                              row[4], row[5], row[6], row[7], &e);
                if (rc == OUTBOX_ENOMEM) {
                    mysql_free_result(res);
                    free_msgs(out, got);
                    outbox__free(bad);
                    outbox__my_end_claim(st);
                    return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
                }
                if (rc != OUTBOX_OK) {
                    bad[nbad].seq = seq;
                    snprintf(bad[nbad].id, sizeof bad[nbad].id, "%.36s", row[1] ? row[1] : "");
                    snprintf(bad[nbad].error, sizeof bad[nbad].error, "%s", e.message);
                    nbad++;
                    continue;
                }
                m->status = OUTBOX_STATUS_PENDING;
                m->attempts = (int)outbox__my_i64(row[8]);
                m->available_at = outbox__my_i64(row[9]);
                out[got++] = m;
            }
        }
        mysql_free_result(res);
        if (restart || nbad > 0) {
            free_msgs(out, got);
            outbox__my_end_claim(st);
            if (nbad > 0) {
                code = quarantine(st, bad, nbad, err);
                if (code == OUTBOX_OK && p->quarantined) *p->quarantined += nbad;
            }
            outbox__free(bad);
            if (code != OUTBOX_OK) return code;
            if (leased && st->held_count == 0) return OUTBOX_OK;
            continue;
        }
        outbox__free(bad);
        if (got == 0) {
            outbox__free(out);
            outbox__my_end_claim(st);
            return OUTBOX_OK;
        }
        *msgs = out;
        *n = got;
        return OUTBOX_OK;

    fail:
        code = outbox__my_fail(st->conn, "claiming messages", err);
        outbox__my_end_claim(st);
        return code;
    }
    return OUTBOX_OK;
}

/* Appends "seq1,seq2,..." of the completions with outcome. */
static size_t seq_list(outbox_buf *b, const outbox_completion *c, size_t n, int outcome)
{
    size_t i, count = 0;
    for (i = 0; i < n; i++)
        if (c[i].outcome == outcome) {
            outbox__buf_printf(b, "%s%lld", count ? "," : "", (long long)c[i].msg->seq);
            count++;
        }
    return count;
}

int outbox__my_complete(void *state, const outbox_completion *c, size_t n,
                        const outbox_complete_params *p, outbox_error *err)
{
    my_store *st = state;
    outbox_buf *b = &st->sql;
    size_t i, mark;
    int code;

    for (i = 0; i < n; i++)
        if (c[i].outcome < OUTBOX_OUTCOME_SENT || c[i].outcome > OUTBOX_OUTCOME_UNSENT || !c[i].msg)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "complete: unknown outcome %d for message %zu of the batch",
                                 c[i].outcome, i);
    code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(b);
    if (!st->in_txn) outbox__buf_puts(b, "START TRANSACTION; ");
    mark = b->len;
    outbox__buf_puts(b, p->on_sent == OUTBOX_ON_SENT_MARK ? "UPDATE " : "DELETE FROM ");
    outbox__my_table(b, st->prefix, NULL);
    if (p->on_sent == OUTBOX_ON_SENT_MARK)
        outbox__buf_printf(b, " SET status = 'sent', sent_at = %lld", (long long)p->now_us);
    outbox__buf_puts(b, " WHERE seq IN (");
    if (seq_list(b, c, n, OUTBOX_OUTCOME_SENT) == 0)
        b->len = mark; /* none sent */
    else
        outbox__buf_puts(b, "); ");
    if (b->data) b->data[b->len] = '\0';
    for (i = 0; i < n; i++) {
        const char *why = c[i].error ? c[i].error : "";
        if (c[i].outcome != OUTBOX_OUTCOME_RETRY && c[i].outcome != OUTBOX_OUTCOME_FAILED) continue;
        outbox__buf_puts(b, "UPDATE ");
        outbox__my_table(b, st->prefix, NULL);
        outbox__buf_puts(b, " SET attempts = attempts + 1, ");
        if (c[i].outcome == OUTBOX_OUTCOME_RETRY)
            outbox__buf_printf(b, "available_at = %lld, ", (long long)c[i].available_at);
        else
            outbox__buf_puts(b, "status = 'failed', ");
        outbox__buf_puts(b, "last_error = ");
        outbox__my_append_text(b, why, strlen(why));
        outbox__buf_printf(b, " WHERE seq = %lld; ", (long long)c[i].msg->seq);
    }
    outbox__buf_puts(b, "COMMIT");
    if (b->oom) {
        outbox__my_end_claim(st);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
    }
    st->in_txn = 1;
    code = outbox__my_exec(st->conn, b->data, "recording the batch's outcomes", err);
    if (code != OUTBOX_OK) {
        outbox__my_end_claim(st);
        return code;
    }
    st->in_txn = 0;
    return OUTBOX_OK;
}

int outbox__my_next_due(void *state, int64_t *due_us, outbox_error *err)
{
    my_store *st = state;
    int code = outbox__my_need_schema(st, err);
    *due_us = 0;
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT MIN(available_at) FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_puts(&st->sql, " WHERE blocking = 1 AND status = 'pending' AND attempts > 0");
    return outbox__my_query_i64(st->conn, st->sql.data, "reading the next retry time", due_us, err);
}

#else

/* Without Connector/C this file only keeps the translation unit non-empty. */
typedef int outbox__my_claim_not_built;

#endif /* OUTBOX_HAVE_MARIADB */
