/*
 * my_lease.c - the MariaDB/MySQL store's relays and partition leases, and
 * its wake-up by polling.  See "Several relays" and "Wake-up" in
 * docs/MARIADB.md.
 *
 * A relay registers a row in <prefix>_relays and holds the named lock
 * (GET_LOCK) of that row on its session: the server frees it the moment
 * the session ends, so a relay whose connection dropped is seen as gone at
 * once (IS_FREE_LOCK) and its partitions are free for the others.  The
 * leases themselves are rows of <prefix>_lease (owner, expires_at): a
 * claim locks the rows of the partitions it reads in its own transaction,
 * and a relay taking a partition over skips locked rows, so a partition
 * never changes hands while its batch is out.
 */
#include "internal.h"

#include "my.h"

#ifdef OUTBOX_HAVE_MARIADB

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Appends the SQL expression of the named lock of relay row `id_sql`. */
static void lock_name(outbox_buf *b, const char *prefix, const char *id_sql)
{
    outbox__buf_printf(b,
                       "CONCAT('outbox.', LEFT(SHA1(CONCAT(DATABASE(), '.', '%s')), 20), '.', %s)",
                       prefix, id_sql);
}

static int exec_sql(my_store *st, const char *what, outbox_error *err)
{
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory %s", what);
    return outbox__my_exec(st->conn, st->sql.data, what, err);
}

/* Writes this relay's heartbeat (and note when it changed). */
static void heartbeat_sql(my_store *st)
{
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "UPDATE ");
    outbox__my_table(&st->sql, st->prefix, "relays");
    outbox__buf_printf(&st->sql, " SET heartbeat_at = %lld", (long long)outbox__now_us());
    if (st->note_dirty) {
        outbox__buf_puts(&st->sql, ", note = ");
        outbox__my_append_text(&st->sql, st->note, strlen(st->note));
    }
    outbox__buf_printf(&st->sql, " WHERE id = %lld", (long long)st->member_id);
}

/* Registers this relay (a row and its named lock) and deletes the rows of
 * relays whose session is gone. */
int outbox__my_register_member(my_store *st, outbox_error *err)
{
    char host[256], id[32];
    int64_t got = 0;
    int code;

    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "INSERT INTO ");
    outbox__my_table(&st->sql, st->prefix, "relays");
    outbox__buf_puts(&st->sql, " (name, host, pid, started_at, heartbeat_at, note) VALUES (");
    outbox__my_append_text(&st->sql, st->owner, strlen(st->owner));
    outbox__buf_puts(&st->sql, ", ");
    outbox__my_append_text(&st->sql, host, strlen(host));
    outbox__buf_printf(&st->sql, ", %d, %lld, %lld, ", (int)getpid(), (long long)outbox__now_us(),
                       (long long)outbox__now_us());
    outbox__my_append_text(&st->sql, st->note, strlen(st->note));
    outbox__buf_puts(&st->sql, ")");
    code = exec_sql(st, "registering the relay", err);
    if (code != OUTBOX_OK) return code;
    st->member_id = (int64_t)mysql_insert_id(st->conn);
    st->note_dirty = 0;
    snprintf(id, sizeof id, "%lld", (long long)st->member_id);
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT GET_LOCK(");
    lock_name(&st->sql, st->prefix, id);
    outbox__buf_puts(&st->sql, ", 0)");
    code = outbox__my_query_i64(st->conn, st->sql.data, "locking the relay's row", &got, err);
    if (code != OUTBOX_OK) return code;
    if (got != 1)
        return outbox__error(err, OUTBOX_ESTORE, "cannot take the named lock of relay row %s", id);
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "DELETE FROM ");
    outbox__my_table(&st->sql, st->prefix, "relays");
    outbox__buf_puts(&st->sql, " WHERE IS_FREE_LOCK(");
    lock_name(&st->sql, st->prefix, "id");
    outbox__buf_puts(&st->sql, ") = 1");
    code = exec_sql(st, "removing relays that are gone", err);
    st->next_rebalance_us = 0;
    return code;
}

/* Takes this relay's share of the partitions, ceil(P / live relays) (all
 * it can get when take_all), and renews what it keeps, at most every
 * ttl / 3 unless forced.  Partitions whose lease row is locked (a claim
 * of their holder is out) are skipped: they change hands only between
 * batches. */
int outbox__my_rebalance(my_store *st, int force, int take_all, outbox_error *err)
{
    MYSQL_RES *res = NULL;
    MYSQL_ROW row;
    int64_t now_mono = outbox__monotonic_us(), now = outbox__now_us(), live = 1;
    int64_t ttl = st->ttl_ms > 0 ? st->ttl_ms : 10000;
    int64_t *live_ids = NULL;
    size_t live_n = 0, i;
    int code, share, mine = 0, p;
    unsigned char *free_part = NULL, *keep = NULL;

    if (!force && now_mono < st->next_rebalance_us) return OUTBOX_OK;
    if (st->member_id == 0 || st->partitions <= 0) return OUTBOX_OK;
    st->next_rebalance_us = now_mono + ttl * 1000 / 3;

    heartbeat_sql(st);
    code = exec_sql(st, "writing the relay's heartbeat", err);
    if (code != OUTBOX_OK) return code;
    st->note_dirty = 0;

    /* The live relays: those whose named lock is held. */
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT id FROM ");
    outbox__my_table(&st->sql, st->prefix, "relays");
    outbox__buf_puts(&st->sql, " WHERE IS_FREE_LOCK(");
    lock_name(&st->sql, st->prefix, "id");
    outbox__buf_puts(&st->sql, ") = 0");
    res = outbox__my_query(st->conn, st->sql.data, "counting the live relays", &code, err);
    if (!res) return code;
    live_ids = outbox__calloc((size_t)mysql_num_rows(res) + 1, sizeof *live_ids);
    free_part = outbox__calloc((size_t)st->partitions, 1);
    keep = outbox__calloc((size_t)st->partitions, 1);
    if (!live_ids || !free_part || !keep) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory sharing the partitions");
        mysql_free_result(res);
        goto out;
    }
    while ((row = mysql_fetch_row(res)) != NULL)
        live_ids[live_n++] = outbox__my_i64(row[0]);
    mysql_free_result(res);
    live = live_n > 0 ? (int64_t)live_n : 1;
    share = take_all ? st->partitions : (int)((st->partitions + live - 1) / live);

    code = outbox__my_exec(st->conn, "START TRANSACTION", "sharing the partitions", err);
    if (code != OUTBOX_OK) goto out;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT part, owner, expires_at FROM ");
    outbox__my_table(&st->sql, st->prefix, "lease");
    outbox__buf_puts(&st->sql, " ORDER BY part FOR UPDATE SKIP LOCKED");
    res = outbox__my_query(st->conn, st->sql.data, "reading the partition leases", &code, err);
    if (!res) goto rollback;
    while ((row = mysql_fetch_row(res)) != NULL) {
        int part = (int)outbox__my_i64(row[0]);
        int64_t owner = outbox__my_i64(row[1]), expires = outbox__my_i64(row[2]);
        int owner_live = 0;
        if (part < 0 || part >= st->partitions) continue;
        for (i = 0; i < live_n; i++)
            if (live_ids[i] == owner) owner_live = 1;
        if (row[1] && owner == st->member_id) {
            if (mine < share) {
                keep[part] = 1;
                mine++;
            }
        } else if (!row[1] || !owner_live || expires < now) {
            free_part[part] = 1;
        }
    }
    mysql_free_result(res);
    for (p = 0; p < st->partitions && mine < share; p++)
        if (free_part[p]) {
            keep[p] = 1;
            mine++;
        }
    /* Ours: renewed; the rest we had: let go. */
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "UPDATE ");
    outbox__my_table(&st->sql, st->prefix, "lease");
    outbox__buf_printf(&st->sql, " SET owner = NULL, expires_at = 0 WHERE owner = %lld",
                       (long long)st->member_id);
    if (mine > 0) {
        int first = 1;
        outbox__buf_puts(&st->sql, " AND part NOT IN (");
        for (p = 0; p < st->partitions; p++)
            if (keep[p]) {
                outbox__buf_printf(&st->sql, "%s%d", first ? "" : ",", p);
                first = 0;
            }
        outbox__buf_puts(&st->sql, ")");
    }
    code = exec_sql(st, "releasing partitions", err);
    if (code != OUTBOX_OK) goto rollback;
    if (mine > 0) {
        int first = 1;
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "UPDATE ");
        outbox__my_table(&st->sql, st->prefix, "lease");
        outbox__buf_printf(&st->sql, " SET owner = %lld, expires_at = %lld WHERE part IN (",
                           (long long)st->member_id, (long long)(now + ttl * 1000));
        for (p = 0; p < st->partitions; p++)
            if (keep[p]) {
                outbox__buf_printf(&st->sql, "%s%d", first ? "" : ",", p);
                first = 0;
            }
        outbox__buf_puts(&st->sql, ")");
        code = exec_sql(st, "taking partitions", err);
        if (code != OUTBOX_OK) goto rollback;
    }
    code = outbox__my_exec(st->conn, "COMMIT", "sharing the partitions", err);
    if (code != OUTBOX_OK) goto rollback;
    memset(st->held, 0, MY_MAX_PARTITIONS);
    memcpy(st->held, keep, (size_t)st->partitions);
    st->held_count = mine;
    goto out;

rollback:
    outbox__my_rollback(st->conn);
out:
    outbox__free(live_ids);
    outbox__free(free_part);
    outbox__free(keep);
    return code;
}

int outbox__my_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    my_store *st = state;
    int code;
    if (!owner || !*owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is empty");
    snprintf(st->owner, sizeof st->owner, "%s", owner);
    st->ttl_ms = ttl_ms;
    code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    if (st->member_id == 0) {
        code = outbox__my_register_member(st, err);
        if (code != OUTBOX_OK) return code;
    }
    return outbox__my_rebalance(st, 1, 0, err);
}

int outbox__my_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    my_store *st = state;
    int code;
    (void)owner;
    st->ttl_ms = ttl_ms;
    code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    return outbox__my_rebalance(st, 1, 0, err);
}

int outbox__my_lease_release(void *state, const char *owner, outbox_error *err)
{
    my_store *st = state;
    char id[32];
    int code = OUTBOX_OK;
    (void)owner;
    if (st->conn && st->member_id) {
        outbox__my_end_claim(st);
        outbox__buf_reset(&st->sql);
        outbox__buf_puts(&st->sql, "UPDATE ");
        outbox__my_table(&st->sql, st->prefix, "lease");
        outbox__buf_printf(&st->sql, " SET owner = NULL, expires_at = 0 WHERE owner = %lld;",
                           (long long)st->member_id);
        outbox__buf_puts(&st->sql, " DELETE FROM ");
        outbox__my_table(&st->sql, st->prefix, "relays");
        snprintf(id, sizeof id, "%lld", (long long)st->member_id);
        outbox__buf_printf(&st->sql, " WHERE id = %s; DO RELEASE_LOCK(", id);
        lock_name(&st->sql, st->prefix, id);
        outbox__buf_puts(&st->sql, ")");
        code = exec_sql(st, "releasing the partitions", err);
    }
    st->member_id = 0;
    memset(st->held, 0, MY_MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
    st->owner[0] = '\0';
    return code;
}

/* held_count is kept by the rebalance, the claim (when it finds leases
 * expired or taken), the release and the connection's loss (my_conn.c). */
int outbox__my_partitions_held(void *state)
{
    const my_store *st = state;
    return st->held_count;
}

/* Keeps note (one line, at most 255 bytes, cut on a character boundary)
 * for this relay's row; written at once outside a claim, else with the
 * next heartbeat. */
int outbox__my_lease_note(void *state, const char *owner, const char *note, outbox_error *err)
{
    my_store *st = state;
    size_t len, i;
    int code;

    (void)owner;
    if (!note) note = "";
    len = strlen(note);
    if (len >= sizeof st->note) {
        len = sizeof st->note - 1;
        while (len > 0 && ((unsigned char)note[len] & 0xc0) == 0x80)
            len--;
    }
    memcpy(st->note, note, len);
    st->note[len] = '\0';
    for (i = 0; i < len; i++)
        if ((unsigned char)st->note[i] < 0x20 || st->note[i] == 0x7f) st->note[i] = ' ';
    st->note_dirty = 1;
    if (st->member_id == 0 || !st->conn || st->in_txn) return OUTBOX_OK;
    heartbeat_sql(st);
    code = exec_sql(st, "writing the relay's note", err);
    if (code == OUTBOX_OK) st->note_dirty = 0;
    return code;
}

/* ------------------------------------------------------------------------
 * Wake-up: MySQL has no LISTEN/NOTIFY.  The relay asks `changed` every
 * change_check_ms while it waits; one primary-key probe (the highest seq)
 * and the requeue counter in meta say whether anything new committed.
 * Enqueues through the driver in the same process wake it at once
 * (wake_path).
 * ---------------------------------------------------------------------- */

int outbox__my_changed(void *state, int *changed, outbox_error *err)
{
    my_store *st = state;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int code;
    int64_t max_seq, epoch;

    *changed = 0;
    if (!st->notified_first) {
        st->notified_first = 1;
        *changed = 1;
    }
    if (!st->conn || st->in_txn) {
        *changed = 1;
        return OUTBOX_OK;
    }
    code = outbox__my_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "SELECT (SELECT MAX(seq) FROM ");
    outbox__my_table(&st->sql, st->prefix, NULL);
    outbox__buf_puts(&st->sql, "), (SELECT v FROM ");
    outbox__my_table(&st->sql, st->prefix, "meta");
    outbox__buf_puts(&st->sql, " WHERE k = 'requeue_epoch')");
    res = outbox__my_query(st->conn, st->sql.data, "checking for new messages", &code, err);
    if (!res) return code;
    row = mysql_fetch_row(res);
    max_seq = row ? outbox__my_i64(row[0]) : 0;
    epoch = row ? outbox__my_i64(row[1]) : 0;
    mysql_free_result(res);
    if (max_seq != st->last_max_seq || epoch != st->last_epoch) *changed = 1;
    st->last_max_seq = max_seq;
    st->last_epoch = epoch;
    return OUTBOX_OK;
}

const char *outbox__my_wake_path(void *state)
{
    my_store *st = state;
    return st->wake_key;
}

#else

/* Without Connector/C this file only keeps the translation unit non-empty. */
typedef int outbox__my_lease_not_built;

#endif /* OUTBOX_HAVE_MARIADB */
