/*
 * pg_admin.c - the PostgreSQL store's operator commands: status (counts,
 * held-back messages, the relays holding partitions), list, get, retry,
 * drop, purge and inbox purge.  The design is in docs/POSTGRES.md.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"
#include "pg_wal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Operator commands
 * ---------------------------------------------------------------------- */

#define FULL_COLUMNS                                                                               \
    "seq, id, " US("occurred_at") ", type, aggregate_type, aggregate_id, payload::text,"           \
                                  " headers::text, attempts, status, " US(                         \
                                      "available_at") ", last_error, "                             \
                                                      "coalesce(" US("sent_at") ", 0)"

/* A row of FULL_COLUMNS as stored (lenient: for showing, whatever it
 * holds; times outside the years 1970 to 9999 are clamped into them). */
static int full_row_msg(PGresult *res, int row, outbox_msg **out, outbox_error *err)
{
    outbox_msg *m = NULL;
    int code = outbox__msg_from_row_lenient(
        &m, outbox__pg_parse_i64(PQgetvalue(res, row, 0)), PQgetvalue(res, row, 1),
        outbox__pg_parse_i64(PQgetvalue(res, row, 2)), PQgetvalue(res, row, 3),
        PQgetvalue(res, row, 4), PQgetvalue(res, row, 5), PQgetvalue(res, row, 6),
        PQgetvalue(res, row, 7), err);
    if (code != OUTBOX_OK) return code;
    m->attempts = (int)outbox__pg_parse_i64(PQgetvalue(res, row, 8));
    m->status = outbox__status_parse(PQgetvalue(res, row, 9));
    m->available_at = outbox__pg_parse_i64(PQgetvalue(res, row, 10));
    if (!PQgetisnull(res, row, 11)) {
        m->last_error = outbox__strdup(PQgetvalue(res, row, 11));
        if (!m->last_error) {
            outbox_msg_free(m);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a message");
        }
    }
    m->sent_at = outbox__pg_parse_i64(PQgetvalue(res, row, 12));
    *out = m;
    return OUTBOX_OK;
}

/* 1 when pid is not a running process of this host (a relay killed with
 * -9 whose session PostgreSQL has not closed yet). */
static int process_gone(const char *host, int64_t pid)
{
    char here[256];
    outbox__pg_host_name(here, sizeof here);
    if (pid <= 0 || strcmp(host, here) != 0) return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Describes the relay instances holding partitions, each as
 * "name@host:pid[0-10,12]" ("name@host:pid#<relays.id>" when one process
 * runs two of a name; " (gone)" after one whose process is gone),
 * so that relays sharing a name are told apart; fills lease_pid and
 * lease_host when one instance holds them all, the notes of the holders
 * (prefixed by the instance when there are several), and the expiry from
 * the latest heartbeat. */
static void describe_holders(pg_store *st, outbox_status *out)
{
    PGresult *res;
    outbox_buf b, notes;
    int i, rows, instances = 0, noted = 0;

    outbox__buf_init(&b);
    outbox__buf_init(&notes);
    outbox__buf_printf(
        &b,
        "WITH held AS (SELECT pid, classid::bigint AS cls, objid::bigint AS obj"
        " FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database"
        "  WHERE datname = current_database())"
        " AND classid IN (%ld::oid, %ld::oid))"
        " SELECT r.id, r.name, coalesce(r.host, ''), coalesce(r.pid, 0), p.obj, " US(
            "r.heartbeat_at") ", coalesce(r.note, '') FROM %s.relays r"
                              " JOIN held m ON m.cls = %ld AND m.obj = (r.id & 2147483647)"
                              "  AND m.pid = r.backend_pid"
                              " JOIN held p ON p.cls = %ld AND p.pid = r.backend_pid"
                              " ORDER BY r.id, p.obj",
        (long)st->member_key, (long)st->part_key, st->qschema, (long)st->member_key,
        (long)st->part_key);
    if (b.oom) goto out;
    res = outbox__pg_store_query(st, b.data, 0, NULL);
    outbox__buf_reset(&b);
    rows = PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) : 0;
    for (i = 0; i < rows; i++)
        if (i == 0 || strcmp(PQgetvalue(res, i, 0), PQgetvalue(res, i - 1, 0)) != 0) instances++;
    for (i = 0; i < rows;) {
        const char *id = PQgetvalue(res, i, 0), *name = PQgetvalue(res, i, 1);
        const char *host = PQgetvalue(res, i, 2), *note = PQgetvalue(res, i, 6);
        int64_t pid = outbox__pg_parse_i64(PQgetvalue(res, i, 3));
        int64_t hb = outbox__pg_parse_i64(PQgetvalue(res, i, 5)) + st->ttl_ms * 1000;
        int gone = process_gone(host, pid), j = i;

        if (hb > out->lease_expires_us) out->lease_expires_us = hb;
        outbox__buf_printf(&b, "%s%s@%s:%lld", b.len ? " " : "", name, host, (long long)pid);
        for (j = 0; j < rows; j++) /* one process with two instances of a name */
            if (strcmp(PQgetvalue(res, j, 0), id) != 0 &&
                strcmp(PQgetvalue(res, j, 1), name) == 0 &&
                strcmp(PQgetvalue(res, j, 2), host) == 0 &&
                outbox__pg_parse_i64(PQgetvalue(res, j, 3)) == pid)
                break;
        if (j < rows) outbox__buf_printf(&b, "#%s", id);
        outbox__buf_puts(&b, "[");
        j = i;
        while (j < rows && strcmp(PQgetvalue(res, j, 0), id) == 0) {
            int64_t first = outbox__pg_parse_i64(PQgetvalue(res, j, 4)), last = first;
            while (j + 1 < rows && strcmp(PQgetvalue(res, j + 1, 0), id) == 0 &&
                   outbox__pg_parse_i64(PQgetvalue(res, j + 1, 4)) == last + 1)
                last = outbox__pg_parse_i64(PQgetvalue(res, ++j, 4));
            if (first == last)
                outbox__buf_printf(&b, "%lld", (long long)first);
            else
                outbox__buf_printf(&b, "%lld-%lld", (long long)first, (long long)last);
            if (++j < rows && strcmp(PQgetvalue(res, j, 0), id) == 0) outbox__buf_puts(&b, ",");
        }
        outbox__buf_puts(&b, gone ? "] (gone)" : "]");
        if (gone) out->lease_holder_gone = 1;
        if (instances == 1) {
            out->lease_pid = pid;
            snprintf(out->lease_host, sizeof out->lease_host, "%s", host);
        }
        if (*note) {
            if (instances > 1)
                outbox__buf_printf(&notes, "%s%s@%s:%lld: ", noted ? "; " : "", name, host,
                                   (long long)pid);
            outbox__buf_puts(&notes, note);
            noted = 1;
        }
        i = j;
    }
    PQclear(res);
    if (b.data && !b.oom) snprintf(out->lease_owner, sizeof out->lease_owner, "%s", b.data);
    if (notes.data && !notes.oom)
        snprintf(out->relay_note, sizeof out->relay_note, "%s", notes.data);
    if (out->lease_owner[0] && out->lease_expires_us == 0) out->lease_expires_us = outbox__now_us();
out:
    outbox__buf_free(&b);
    outbox__buf_free(&notes);
}

/* The status's counts, each from the index that holds its rows: pending
 * from outbox_pending and sent from outbox_sent_at (index-only scans where
 * the table's pages are all-visible, as autovacuum leaves most of them;
 * without that the planner reads the table), the retried and Failed ones
 * from outbox_blocking (few), the oldest from the head of the queue.  One
 * snapshot: the caller's REPEATABLE READ transaction.  (One scan of the
 * whole table computing them all read every row and evaluated seven
 * filters on each: about five times the CPU of a plain count.) */
static const char status_tmpl[] =
    "SELECT (SELECT count(*) FROM {s}.outbox WHERE status = 'pending'),"
    " (SELECT count(*) FROM {s}.outbox WHERE status = 'pending' AND attempts > 0"
    "  AND available_at > now()),"
    " (SELECT count(*) FROM {s}.outbox WHERE status = 'pending' AND attempts > 0),"
    " (SELECT count(*) FROM {s}.outbox WHERE status = 'sent'),"
    " (SELECT count(*) FROM {s}.outbox WHERE status = 'failed'),"
    " coalesce((SELECT " US(
        "occurred_at") " FROM {s}.outbox WHERE status = 'pending'"
                       "  ORDER BY seq LIMIT 1), 0),"
                       " coalesce((SELECT " US(
                           "min(available_at)") " FROM {s}.outbox"
                                                "  WHERE status = 'pending' AND attempts > 0), 0)";

int outbox__pg_status(void *state, outbox_status *out, outbox_error *err)
{
    pg_store *st = state;
    PGresult *res;
    int code;

    memset(out, 0, sizeof *out);
    code = outbox__pg_check_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    out->schema_version = outbox__pg_schema_version();
    code = outbox__pg_store_exec(st, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                                 "reading the outbox status", err);
    if (code != OUTBOX_OK) return code;
    /* No parallel workers (they took every core of the server beside the
     * relay's claims, about 1.6 times the CPU for the same numbers) and no
     * JIT (past a couple of million rows a scan's cost passes
     * jit_above_cost, and compiling costs more than it saves). */
    code = outbox__pg_store_exec(st,
                                 "SET LOCAL max_parallel_workers_per_gather = 0;"
                                 " SET LOCAL jit = off",
                                 "reading the outbox status", err);
    if (code != OUTBOX_OK) goto out;
    outbox__pg_expand(&st->sql, status_tmpl, st->qschema, st->schema, 0);
    if (st->sql.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory reading the outbox status");
        goto out;
    }
    res = outbox__pg_store_query(st, st->sql.data, 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "reading the outbox status", err);
        PQclear(res);
        goto out;
    }
    out->pending = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    out->pending_due = out->pending - outbox__pg_parse_i64(PQgetvalue(res, 0, 1));
    out->retrying = outbox__pg_parse_i64(PQgetvalue(res, 0, 2));
    out->sent = outbox__pg_parse_i64(PQgetvalue(res, 0, 3));
    out->failed = outbox__pg_parse_i64(PQgetvalue(res, 0, 4));
    out->oldest_pending_us = outbox__pg_parse_i64(PQgetvalue(res, 0, 5));
    out->next_due_us = outbox__pg_parse_i64(PQgetvalue(res, 0, 6));
    PQclear(res);
    /* Held behind a Failed message: driven by the few failed rows (the
     * outbox_blocking index); nothing to join when there are none. */
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT count(*), count(DISTINCT o.aggregate_id) FROM %s.outbox o"
                       " JOIN (SELECT aggregate_id, min(seq) AS seq FROM %s.outbox"
                       "  WHERE status = 'failed' GROUP BY aggregate_id) f"
                       " ON f.aggregate_id = o.aggregate_id AND o.seq > f.seq"
                       " WHERE o.status = 'pending'",
                       st->qschema, st->qschema);
    res = outbox__pg_store_query(st, st->sql.data, 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "counting the messages held behind failed ones", err);
        PQclear(res);
        goto out;
    }
    out->blocked = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    out->aggregates_blocked = outbox__pg_parse_i64(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (st->ttl_ms == 0) st->ttl_ms = 10000;
    describe_holders(st, out);
    code = outbox__pg_wal_status(st, out, err);
out:
    outbox__pg_store_rollback(st);
    return code;
}

int outbox__pg_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                    outbox_error *err)
{
    pg_store *st = state;
    PGresult *res;
    outbox_msg *m = NULL;
    int status = p ? p->status : -1, i, code;
    int64_t limit = p && p->limit > 0 ? p->limit : -1;

    if (!fn) return outbox__error(err, OUTBOX_EINVAL, "list: callback is NULL");
    if (status != -1 && status != OUTBOX_STATUS_PENDING && status != OUTBOX_STATUS_SENT &&
        status != OUTBOX_STATUS_FAILED)
        return outbox__error(err, OUTBOX_EINVAL,
                             "list: unknown status %d: use pending, sent or failed", status);
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "SELECT " FULL_COLUMNS " FROM %s.outbox", st->qschema);
    if (status != -1)
        outbox__buf_printf(&st->sql, " WHERE status = '%s'", outbox__status_name(status));
    outbox__buf_puts(&st->sql, " ORDER BY seq");
    if (limit > 0) outbox__buf_printf(&st->sql, " LIMIT %lld", (long long)limit);
    res = PQexec(st->conn, st->sql.data);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(st->conn, res, "listing messages", err);
        PQclear(res);
        return code;
    }
    for (i = 0; i < PQntuples(res); i++) {
        int stop;
        code = full_row_msg(res, i, &m, err);
        if (code != OUTBOX_OK) break;
        stop = fn(user, m);
        outbox_msg_free(m);
        m = NULL;
        if (stop) break;
    }
    PQclear(res);
    return code;
}

int outbox__pg_get(void *state, const char *id, outbox_msg **msg, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    char key[37];
    PGresult *res;
    int code;

    *msg = NULL;
    code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE id = $1::uuid",
                       st->qschema);
    params[0] = key;
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        code = outbox__pg_fail(st->conn, res, "reading a message", err);
    else if (PQntuples(res) == 0)
        code = outbox__error(err, OUTBOX_ENOTFOUND,
                             "no message with id %s in the outbox (sent messages are deleted "
                             "unless the relay runs with on_sent=mark)",
                             key);
    else
        code = full_row_msg(res, 0, msg, err);
    PQclear(res);
    return code;
}

/* 1 when res failed on one of the table's CHECK constraints. */
static int check_violation(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state && strcmp(state, "23514") == 0;
}

/* retry --all when some failed row breaks the table's checks (written
 * before schema version 5, or quarantined by the claim): requeues the
 * others, one savepoint each, and logs each row left Failed.  Runs in the
 * open transaction. */
static int retry_each(pg_store *st, int64_t *total, outbox_error *err)
{
    PGresult *res, *one;
    char sql[512], seq[32];
    const char *params[1];
    int i, code = OUTBOX_OK;

    snprintf(sql, sizeof sql,
             "SELECT seq, id FROM %s.outbox WHERE status = 'failed' ORDER BY seq FOR UPDATE",
             st->qschema);
    res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(st->conn, res, "requeueing failed messages", err);
        PQclear(res);
        return code;
    }
    snprintf(sql, sizeof sql,
             "UPDATE %s.outbox SET status = 'pending', attempts = 0, available_at = now()"
             " WHERE seq = $1::bigint AND status = 'failed'",
             st->qschema);
    for (i = 0; i < PQntuples(res) && code == OUTBOX_OK; i++) {
        snprintf(seq, sizeof seq, "%s", PQgetvalue(res, i, 0));
        params[0] = seq;
        code = outbox__pg_exec(st->conn, "SAVEPOINT outbox_retry_one", "requeueing failed messages",
                               err);
        if (code != OUTBOX_OK) break;
        one = PQexecParams(st->conn, sql, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(one) == PGRES_COMMAND_OK) {
            *total += outbox__pg_parse_i64(PQcmdTuples(one));
            code = outbox__pg_exec(st->conn, "RELEASE SAVEPOINT outbox_retry_one",
                                   "requeueing failed messages", err);
        } else if (check_violation(one)) {
            char why[300];
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "message %s (seq %s) stays failed: the table refuses it as pending (%s); "
                        "drop it (`outbox drop`)",
                        PQgetvalue(res, i, 1), seq,
                        outbox__pg_error_text(st->conn, one, why, sizeof why));
            code = outbox__pg_exec(st->conn, "ROLLBACK TO SAVEPOINT outbox_retry_one",
                                   "requeueing failed messages", err);
        } else {
            code = outbox__pg_fail(st->conn, one, "requeueing failed messages", err);
        }
        PQclear(one);
    }
    PQclear(res);
    return code;
}

int outbox__pg_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                     outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    PGresult *res = NULL;
    int64_t total = 0;
    size_t i;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "retry: give message ids or ask for all failed messages");
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    code = outbox__pg_exec(st->conn, "BEGIN", "starting the retry transaction", err);
    if (code != OUTBOX_OK) return code;
    if (all) {
        outbox__buf_reset(&st->sql);
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox SET status = 'pending', attempts = 0,"
                           " available_at = now() WHERE status = 'failed'",
                           st->qschema);
        res = PQexec(st->conn, st->sql.data);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            total = outbox__pg_parse_i64(PQcmdTuples(res));
        } else if (check_violation(res)) {
            PQclear(res);
            res = NULL;
            outbox__pg_rollback(st->conn);
            code = outbox__pg_exec(st->conn, "BEGIN", "starting the retry transaction", err);
            if (code != OUTBOX_OK) return code;
            code = retry_each(st, &total, err);
            if (code != OUTBOX_OK) goto fail;
        } else {
            code = outbox__pg_fail(st->conn, res, "requeueing failed messages", err);
            goto fail;
        }
        PQclear(res);
        res = NULL;
    } else {
        for (i = 0; i < n; i++) {
            char key[37];
            const char *status;
            code = outbox__uuid_canonical(ids[i], key, "message id", err);
            if (code != OUTBOX_OK) goto fail;
            params[0] = key;
            outbox__buf_reset(&st->sql);
            outbox__buf_printf(&st->sql,
                               "SELECT status FROM %s.outbox WHERE id = $1::uuid FOR UPDATE",
                               st->qschema);
            res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
            if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                code = outbox__pg_fail(st->conn, res, "requeueing failed messages", err);
                goto fail;
            }
            if (PQntuples(res) == 0) {
                code =
                    outbox__error(err, OUTBOX_ENOTFOUND,
                                  "no message with id %s in the outbox: nothing was requeued", key);
                goto fail;
            }
            status = PQgetvalue(res, 0, 0);
            if (strcmp(status, "failed") != 0) {
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s is %s, not failed: only failed messages can be "
                                     "requeued; nothing was requeued",
                                     key, status);
                goto fail;
            }
            PQclear(res);
            outbox__buf_reset(&st->sql);
            outbox__buf_printf(&st->sql,
                               "UPDATE %s.outbox SET status = 'pending', attempts = 0,"
                               " available_at = now() WHERE id = $1::uuid AND status = 'failed'",
                               st->qschema);
            res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
            if (check_violation(res)) {
                char why[300];
                code =
                    outbox__error(err, OUTBOX_EINVAL,
                                  "message %s cannot be requeued: the table refuses it as "
                                  "pending (%s); nothing was requeued: drop it (`outbox drop "
                                  "%s`)",
                                  key, outbox__pg_error_text(st->conn, res, why, sizeof why), key);
                goto fail;
            }
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                code = outbox__pg_fail(st->conn, res, "requeueing failed messages", err);
                goto fail;
            }
            total += outbox__pg_parse_i64(PQcmdTuples(res));
            PQclear(res);
            res = NULL;
        }
    }
    code = outbox__pg_exec(st->conn, "COMMIT", "committing the retry", err);
    if (code != OUTBOX_OK) goto fail;
    if (count) *count = total;
    return OUTBOX_OK;

fail:
    PQclear(res);
    outbox__pg_rollback(st->conn);
    return code;
}

int outbox__pg_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    char before[32];
    PGresult *res;
    int code;

    if (count) *count = 0;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    snprintf(before, sizeof before, "%lld", (long long)before_us);
    params[0] = before;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "DELETE FROM %s.outbox WHERE status = 'sent' AND sent_at <"
                       " 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'",
                       st->qschema);
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = outbox__pg_fail(st->conn, res, "purging sent messages", err);
    else if (count)
        *count = outbox__pg_parse_i64(PQcmdTuples(res));
    PQclear(res);
    return code;
}

/* Appends id (checked, canonical) to the array literal b; EBADID. */
static int append_id(outbox_buf *b, const char *id, int first, outbox_error *err)
{
    char key[37];
    int code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_printf(b, "%s%s", first ? "" : ",", key);
    return OUTBOX_OK;
}

/* Deletes Failed messages (see the ops table's comment), archiving them
 * first through archive: one transaction, rows locked while archived. */
int outbox__pg_drop(void *state, const char *const *ids, size_t n, int all,
                    outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    outbox_buf list, seqs;
    outbox_msg **msgs = NULL;
    PGresult *res = NULL;
    size_t i, rows = 0, got = 0;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "drop: give message ids or ask for all failed messages");
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    outbox__buf_init(&list);
    outbox__buf_init(&seqs);
    outbox__buf_reset(&st->sql);
    if (all) {
        outbox__buf_printf(&st->sql,
                           "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE status = 'failed'"
                           " ORDER BY seq FOR UPDATE",
                           st->qschema);
    } else {
        outbox__buf_puts(&list, "{");
        for (i = 0; i < n; i++) {
            code = append_id(&list, ids[i], i == 0, err);
            if (code != OUTBOX_OK) goto out;
        }
        outbox__buf_puts(&list, "}");
        outbox__buf_printf(&st->sql,
                           "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE id = ANY($1::uuid[])"
                           " ORDER BY seq FOR UPDATE",
                           st->qschema);
    }
    if (st->sql.oom || list.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto out;
    }
    code = outbox__pg_exec(st->conn, "BEGIN", "starting the drop transaction", err);
    if (code != OUTBOX_OK) goto out;
    params[0] = list.data;
    res = PQexecParams(st->conn, st->sql.data, all ? 0 : 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(st->conn, res, "reading the messages to drop", err);
        goto fail;
    }
    rows = (size_t)PQntuples(res);
    if (!all) {
        /* All or nothing: every id is there and Failed. */
        for (i = 0; i < n; i++) {
            char key[37];
            size_t r;
            outbox__uuid_canonical(ids[i], key, "message id", NULL);
            for (r = 0; r < rows && strcmp(PQgetvalue(res, (int)r, 1), key) != 0; r++) {
            }
            if (r == rows) {
                code =
                    outbox__error(err, OUTBOX_ENOTFOUND,
                                  "no message with id %s in the outbox: nothing was dropped", key);
                goto fail;
            }
            if (strcmp(PQgetvalue(res, (int)r, 9), "failed") != 0) {
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s is %s, not failed: only failed messages can be "
                                     "dropped; nothing was dropped",
                                     key, PQgetvalue(res, (int)r, 9));
                goto fail;
            }
        }
    }
    if (rows == 0) goto commit;
    msgs = outbox__calloc(rows, sizeof *msgs);
    if (!msgs) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto fail;
    }
    outbox__buf_puts(&seqs, "{");
    for (got = 0; got < rows; got++) {
        code = full_row_msg(res, (int)got, &msgs[got], err);
        if (code != OUTBOX_OK) goto fail;
        outbox__buf_printf(&seqs, "%s%lld", got ? "," : "", (long long)msgs[got]->seq);
    }
    outbox__buf_puts(&seqs, "}");
    if (seqs.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto fail;
    }
    PQclear(res);
    res = NULL;
    if (archive) {
        code = archive(user, msgs, rows, err);
        if (code != OUTBOX_OK) goto fail; /* err is the callback's */
    }
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "DELETE FROM %s.outbox WHERE seq = ANY($1::bigint[]) AND status = 'failed'",
                       st->qschema);
    params[0] = seqs.data;
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        code = outbox__pg_fail(st->conn, res, "dropping failed messages", err);
        goto fail;
    }
    if (count) *count = outbox__pg_parse_i64(PQcmdTuples(res));
commit:
    PQclear(res);
    res = NULL;
    code = outbox__pg_exec(st->conn, "COMMIT", "committing the drop", err);
    if (code != OUTBOX_OK) {
        if (count) *count = 0;
        goto fail;
    }
    goto out;

fail:
    PQclear(res);
    outbox__pg_rollback(st->conn);
out:
    for (i = 0; i < got; i++)
        outbox_msg_free(msgs[i]);
    outbox__free(msgs);
    outbox__buf_free(&list);
    outbox__buf_free(&seqs);
    return code;
}

int outbox__pg_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                           int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    int code;

    if (count) *count = 0;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    return outbox_inbox_purge_pg(st->conn, st->schema, retention_ms, redelivery_horizon_ms, count,
                                 err);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_admin_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
