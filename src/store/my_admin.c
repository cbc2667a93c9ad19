/*
 * my_admin.c - the MariaDB/MySQL store's operator commands: status, list,
 * get, retry, drop, purge, inbox purge.  Each runs in a transaction of its
 * own (after dropping an open claim), as the PostgreSQL store's do.
 */
#include "internal.h"

#include "my.h"

#ifdef OUTBOX_HAVE_MARIADB

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns of a shown row, in the order row_to_msg reads them. */
#define ROW_COLUMNS                                                                                \
    "seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers, status,"          \
    " attempts, available_at, sent_at, last_error"

static int row_to_msg(MYSQL_ROW row, outbox_msg **out, outbox_error *err)
{
    outbox_msg *m = NULL;
    int code = outbox__msg_from_row_lenient(&m, outbox__my_i64(row[0]), row[1] ? row[1] : "",
                                            outbox__my_i64(row[2]), row[3] ? row[3] : "",
                                            row[4] ? row[4] : "", row[5] ? row[5] : "",
                                            row[6] ? row[6] : "", row[7] ? row[7] : "{}", err);
    if (code != OUTBOX_OK) return code;
    m->status = outbox__status_parse(row[8] ? row[8] : "");
    m->attempts = (int)outbox__my_i64(row[9]);
    m->available_at = outbox__my_i64(row[10]);
    m->sent_at = outbox__my_i64(row[11]);
    if (row[12]) {
        m->last_error = outbox__strdup(row[12]);
        if (!m->last_error) {
            outbox_msg_free(m);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a message");
        }
    }
    *out = m;
    return OUTBOX_OK;
}

/* need_schema and no claim open. */
static int admin_begin(my_store *st, outbox_error *err)
{
    int code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    return OUTBOX_OK;
}

int outbox__my_status(void *state, outbox_status *out, outbox_error *err)
{
    my_store *st = state;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int64_t now = outbox__now_us();
    int code;

    memset(out, 0, sizeof *out);
    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    out->schema_version = outbox__my_schema_version();
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(
        &st->sql,
        "SELECT COALESCE(SUM(status = 'pending'), 0),"
        " COALESCE(SUM(status = 'pending' AND (attempts = 0 OR available_at <= %lld)),"
        " 0), COALESCE(SUM(status = 'pending' AND attempts > 0), 0),"
        " COALESCE(SUM(status = 'sent'), 0), COALESCE(SUM(status = 'failed'), 0),"
        " COALESCE((SELECT occurred_at FROM ",
        (long long)now);
    /* The head of the queue, one probe of the (status, seq) key. */
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_puts(&st->sql, " WHERE status = 'pending' ORDER BY seq LIMIT 1), 0),"
                               " COALESCE(MIN(CASE WHEN status = 'pending' AND attempts > 0 THEN"
                               " available_at END), 0) FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    res = outbox__my_query(st->conn, st->sql.data, "reading the outbox status", &code, err);
    if (!res) return code;
    if ((row = mysql_fetch_row(res)) != NULL) {
        out->pending = outbox__my_i64(row[0]);
        out->pending_due = outbox__my_i64(row[1]);
        out->retrying = outbox__my_i64(row[2]);
        out->sent = outbox__my_i64(row[3]);
        out->failed = outbox__my_i64(row[4]);
        out->oldest_pending_us = outbox__my_i64(row[5]);
        out->next_due_us = outbox__my_i64(row[6]);
    }
    mysql_free_result(res);

    /* Held behind a Failed message of their aggregate. */
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT COUNT(*), COUNT(DISTINCT o.aggregate_id) FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_puts(&st->sql, " o JOIN (SELECT aggregate_id, MIN(seq) AS seq FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_puts(&st->sql, " WHERE blocking = 1 AND status = 'failed' GROUP BY aggregate_id)"
                               " f ON f.aggregate_id = o.aggregate_id AND o.seq > f.seq"
                               " WHERE o.status = 'pending'");
    res = outbox__my_query(st->conn, st->sql.data, "counting the messages held back", &code, err);
    if (!res) return code;
    if ((row = mysql_fetch_row(res)) != NULL) {
        out->blocked = outbox__my_i64(row[0]);
        out->aggregates_blocked = outbox__my_i64(row[1]);
    }
    mysql_free_result(res);
    out->blocked_counted = 1;

    /* The relays holding partitions: "name@host:pid[n]" each. */
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT r.name, COALESCE(r.host, ''), COALESCE(r.pid, 0),"
                               " COUNT(l.part), MAX(l.expires_at), COALESCE(r.note, '') FROM ");
    outbox__my_table(&st->sql, st->prefix, "relays");
    outbox__buf_puts(&st->sql, " r JOIN ");
    outbox__my_table(&st->sql, st->prefix, "lease");
    outbox__buf_printf(&st->sql,
                       " l ON l.owner = r.id AND l.expires_at > %lld GROUP BY r.id, r.name, r.host,"
                       " r.pid, r.note ORDER BY r.id",
                       (long long)now);
    res = outbox__my_query(st->conn, st->sql.data, "reading the relays", &code, err);
    if (!res) return code;
    {
        size_t used = 0;
        int rows = 0;
        while ((row = mysql_fetch_row(res)) != NULL) {
            int64_t expires = outbox__my_i64(row[4]);
            int w = snprintf(out->lease_owner + used, sizeof out->lease_owner - used,
                             "%s%s@%s:%s[%s]", used ? " " : "", row[0], row[1], row[2], row[3]);
            if (w > 0 && used + (size_t)w < sizeof out->lease_owner) used += (size_t)w;
            if (expires > out->lease_expires_us) out->lease_expires_us = expires;
            if (rows == 0) {
                snprintf(out->lease_host, sizeof out->lease_host, "%s", row[1]);
                out->lease_pid = outbox__my_i64(row[2]);
                snprintf(out->relay_note, sizeof out->relay_note, "%s", row[5]);
            }
            rows++;
        }
        if (rows > 1) {
            out->lease_host[0] = '\0';
            out->lease_pid = 0;
        }
    }
    mysql_free_result(res);
    return OUTBOX_OK;
}

int outbox__my_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                    outbox_error *err)
{
    my_store *st = state;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int code;

    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT " ROW_COLUMNS " FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    if (p && p->status >= 0)
        outbox__buf_printf(&st->sql, " WHERE status = '%s'", outbox__status_name(p->status));
    outbox__buf_puts(&st->sql, " ORDER BY seq");
    if (p && p->limit > 0) outbox__buf_printf(&st->sql, " LIMIT %lld", (long long)p->limit);
    if (mysql_real_query(st->conn, st->sql.data, st->sql.len) != 0)
        return outbox__my_fail(st->conn, "listing messages", err);
    res = mysql_use_result(st->conn);
    if (!res) return outbox__my_fail(st->conn, "listing messages", err);
    while ((row = mysql_fetch_row(res)) != NULL) {
        outbox_msg *m = NULL;
        code = row_to_msg(row, &m, err);
        if (code == OUTBOX_OK) {
            code = fn(user, m);
            outbox_msg_free(m);
            if (code != OUTBOX_OK)
                outbox__error(err, code, "listing stopped by the caller (%s)",
                              outbox__error_name(code));
        }
        if (code != OUTBOX_OK) break;
    }
    if (code == OUTBOX_OK && mysql_errno(st->conn))
        code = outbox__my_fail(st->conn, "listing messages", err);
    mysql_free_result(res);
    return code;
}

int outbox__my_get(void *state, const char *id, outbox_msg **msg, outbox_error *err)
{
    my_store *st = state;
    MYSQL_RES *res;
    MYSQL_ROW row;
    char key[37];
    int code;

    *msg = NULL;
    code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT " ROW_COLUMNS " FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_printf(&st->sql, " WHERE id = '%s'", key);
    res = outbox__my_query(st->conn, st->sql.data, "reading a message", &code, err);
    if (!res) return code;
    row = mysql_fetch_row(res);
    if (!row)
        code = outbox__error(err, OUTBOX_ENOTFOUND, "no message with id %s in the outbox", key);
    else
        code = row_to_msg(row, msg, err);
    mysql_free_result(res);
    return code;
}

/* Checks, inside the open transaction, that every id names a Failed
 * message (locking them); fills in the canonical ids as a SQL list. */
static int lock_failed_ids(my_store *st, const char *const *ids, size_t n, outbox_buf *list,
                           const char *verb, outbox_error *err)
{
    size_t i;
    int code;
    for (i = 0; i < n; i++) {
        char key[37];
        MYSQL_RES *res;
        MYSQL_ROW row;
        code = outbox__uuid_canonical(ids[i], key, "message id", err);
        if (code != OUTBOX_OK) return code;
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "SELECT status FROM ");
        outbox__my_table(&st->sql, st->prefix, NULL);
        outbox__buf_printf(&st->sql, " WHERE id = '%s' FOR UPDATE", key);
        res = outbox__my_query(st->conn, st->sql.data, "reading a message", &code, err);
        if (!res) return code;
        row = mysql_fetch_row(res);
        if (!row)
            code = outbox__error(err, OUTBOX_ENOTFOUND,
                                 "no message with id %s in the outbox: nothing was %s", key, verb);
        else if (strcmp(row[0], "failed") != 0)
            code = outbox__error(err, OUTBOX_EINVAL,
                                 "message %s is %s, not failed: only failed messages can be %s; "
                                 "nothing was %s",
                                 key, row[0], verb, verb);
        mysql_free_result(res);
        if (code != OUTBOX_OK) return code;
        outbox__buf_printf(list, "%s'%s'", i ? "," : "", key);
    }
    return OUTBOX_OK;
}

/* Runs st->sql in the open transaction; *count += affected rows. */
static int exec_count(my_store *st, const char *what, int64_t *count, outbox_error *err)
{
    int64_t n = 0;
    int code = outbox__my_exec_count(st->conn, st->sql.data, what, &n, err);
    if (code == OUTBOX_OK) *count += n;
    return code;
}

int outbox__my_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                     outbox_error *err)
{
    my_store *st = state;
    outbox_buf list;
    int64_t total = 0;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "retry: give message ids or ask for all failed messages");
    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&list);
    code = outbox__my_exec(st->conn, "START TRANSACTION", "starting the retry", err);
    if (code == OUTBOX_OK && !all) code = lock_failed_ids(st, ids, n, &list, "requeued", err);
    if (code == OUTBOX_OK) {
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "UPDATE ");
        outbox__my_table(&st->sql, st->prefix, NULL);
        outbox__buf_printf(&st->sql,
                           " SET status = 'pending', attempts = 0, available_at = %lld"
                           " WHERE status = 'failed'",
                           (long long)outbox__now_us());
        if (!all) outbox__buf_printf(&st->sql, " AND id IN (%s)", list.data);
        code = exec_count(st, "requeueing failed messages", &total, err);
    }
    if (code == OUTBOX_OK) {
        /* Tells polling relays that older rows are pending again. */
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "INSERT INTO ");
        outbox__my_table(&st->sql, st->prefix, "meta");
        outbox__buf_puts(&st->sql, " (k, v) VALUES ('requeue_epoch', '1') ON DUPLICATE KEY"
                                   " UPDATE v = CAST(v AS SIGNED) + 1");
        code = outbox__my_exec(st->conn, st->sql.data, "requeueing failed messages", err);
    }
    if (code == OUTBOX_OK) code = outbox__my_exec(st->conn, "COMMIT", "committing the retry", err);
    if (code != OUTBOX_OK)
        outbox__my_rollback(st->conn);
    else if (count)
        *count = total;
    outbox__buf_free(&list);
    return code;
}

int outbox__my_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err)
{
    my_store *st = state;
    int64_t total = 0;
    int code;

    if (count) *count = 0;
    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "DELETE FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_printf(&st->sql, " WHERE status = 'sent' AND sent_at < %lld", (long long)before_us);
    code = exec_count(st, "purging sent messages", &total, err);
    if (code == OUTBOX_OK) {
        /* The order rows of aggregates with no message left. */
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "DELETE a FROM ");
        outbox__my_table(&st->sql, st->prefix, "aggregate");
        outbox__buf_puts(&st->sql, " a WHERE NOT EXISTS (SELECT 1 FROM ");
        outbox__my_table(&st->sql, st->prefix, NULL);
        outbox__buf_puts(&st->sql, " o WHERE o.aggregate_id = a.aggregate_id)");
        code = outbox__my_exec(st->conn, st->sql.data, "purging aggregate rows", err);
    }
    if (code == OUTBOX_OK && count) *count = total;
    return code;
}

/* archive with every Failed message the drop deletes. */
static int archive_rows(my_store *st, const char *where, outbox_drop_archive_fn archive, void *user,
                        outbox_error *err)
{
    MYSQL_RES *res;
    MYSQL_ROW row;
    outbox_msg **msgs = NULL;
    size_t n = 0, i;
    int code;

    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT " ROW_COLUMNS " FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_printf(&st->sql, " WHERE %s ORDER BY seq", where);
    res = outbox__my_query(st->conn, st->sql.data, "reading the messages to drop", &code, err);
    if (!res) return code;
    msgs = outbox__calloc((size_t)mysql_num_rows(res) + 1, sizeof *msgs);
    if (!msgs) code = outbox__error(err, OUTBOX_ENOMEM, "out of memory archiving messages");
    while (code == OUTBOX_OK && (row = mysql_fetch_row(res)) != NULL) {
        code = row_to_msg(row, &msgs[n], err);
        if (code == OUTBOX_OK) n++;
    }
    mysql_free_result(res);
    if (code == OUTBOX_OK && n > 0) code = archive(user, msgs, n, err);
    for (i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    outbox__free(msgs);
    return code;
}

int outbox__my_drop(void *state, const char *const *ids, size_t n, int all,
                    outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err)
{
    my_store *st = state;
    outbox_buf list, where;
    int64_t total = 0;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "drop: give message ids or ask for all failed messages");
    code = admin_begin(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&list);
    outbox__buf_init(&where);
    code = outbox__my_exec(st->conn, "START TRANSACTION", "starting the drop", err);
    if (code == OUTBOX_OK && !all) code = lock_failed_ids(st, ids, n, &list, "dropped", err);
    outbox__buf_puts(&where, "status = 'failed'");
    if (!all) outbox__buf_printf(&where, " AND id IN (%s)", list.data);
    if (code == OUTBOX_OK && where.oom)
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
    if (code == OUTBOX_OK && archive) code = archive_rows(st, where.data, archive, user, err);
    if (code == OUTBOX_OK) {
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "DELETE FROM ");
        outbox__my_table(&st->sql, st->prefix, NULL);
        outbox__buf_printf(&st->sql, " WHERE %s", where.data);
        code = exec_count(st, "dropping failed messages", &total, err);
    }
    if (code == OUTBOX_OK) code = outbox__my_exec(st->conn, "COMMIT", "committing the drop", err);
    if (code != OUTBOX_OK)
        outbox__my_rollback(st->conn);
    else if (count)
        *count = total;
    outbox__buf_free(&list);
    outbox__buf_free(&where);
    return code;
}

int outbox__my_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                           int64_t *count, outbox_error *err)
{
    my_store *st = state;
    int code = admin_begin(st, err);
    if (count) *count = 0;
    if (code != OUTBOX_OK) return code;
    return outbox_inbox_purge_mysql(st->conn, st->prefix, retention_ms, redelivery_horizon_ms,
                                    count, err);
}

#else

/* Without Connector/C this file only keeps the translation unit non-empty. */
typedef int outbox__my_admin_not_built;

#endif /* OUTBOX_HAVE_MARIADB */
