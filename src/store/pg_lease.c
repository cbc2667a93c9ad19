/*
 * pg_lease.c - several relays on one PostgreSQL outbox: relay membership,
 * partition leases (advisory locks) and their rebalancing, the relay's
 * note, and the wake-up (the waiting flag, the "asleep" lock, LISTEN/NOTIFY).
 * The design is in docs/POSTGRES.md ("Several relays", "Wake-up").
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How often (at most) a relay rebalances its partitions between batches. */
#define REBALANCE_MS 500

/* ------------------------------------------------------------------------
 * Relays and partitions
 * ---------------------------------------------------------------------- */

/* Deletes the rows of relays whose session ended (killed, crashed, lost):
 * a relay holds its membership lock, keyed by its row id, for as long as
 * its session lives, and takes it in the transaction that inserts the row,
 * so a row without the lock is of a relay that is gone.  Also ends the
 * wake-up requests of dead relays, so that enqueuers stop notifying. */
static int delete_dead_relays(pg_store *st, outbox_error *err)
{
    char sql[768];
    snprintf(sql, sizeof sql,
             "DELETE FROM %s.relays r WHERE NOT EXISTS"
             " (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
             " AND l.objsubid = 2 AND l.classid = %ld::oid"
             " AND l.objid = (r.id & 2147483647)::oid"
             " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
             st->qschema, (long)st->member_key);
    return outbox__pg_store_exec(st, sql, "deleting the rows of stopped relays", err);
}

/* Writes st->waiting into this relay's row.  Asynchronous commit: a flag
 * lost in a crash costs nothing (the session, and with it the relay's
 * membership, is gone too).  In the same round trip, waiting takes the
 * shared "asleep" advisory lock and awake releases it (see "Wake-up" in
 * docs/POSTGRES.md).  The lock is taken after the flag is written; the
 * relay claims once more after idle(1) either way.  If the lock is held
 * exclusively (an enqueuer's probe at that instant) it is tried again a
 * few times; without it the relay waits on its flag and the fallback
 * poll. */
static int set_waiting(pg_store *st, outbox_error *err)
{
    char sql[640], lock[96];
    PGresult *res;
    ExecStatusType status;
    int attempt, code = OUTBOX_OK;

    lock[0] = '\0';
    if (st->waiting && !st->sleep_held)
        snprintf(lock, sizeof lock, "; SELECT pg_try_advisory_lock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
    else if (!st->waiting && st->sleep_held)
        snprintf(lock, sizeof lock, "; SELECT pg_advisory_unlock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
    snprintf(sql, sizeof sql,
             "BEGIN; SET LOCAL synchronous_commit TO off;"
             " UPDATE %s.relays SET waiting = %s WHERE id = %lld AND waiting <> %s; COMMIT%s",
             st->qschema, st->waiting ? "true" : "false", (long long)st->member_id,
             st->waiting ? "true" : "false", lock);
    res = outbox__pg_store_query(st, sql, 0, NULL);
    status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res,
                                     st->waiting ? "setting the relay's waiting flag"
                                                 : "clearing the relay's waiting flag",
                                     err);
        PQclear(res);
        outbox__pg_store_rollback(st);
        return code;
    }
    if (lock[0])
        st->sleep_held = st->waiting && status == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                         PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    for (attempt = 0; st->waiting && !st->sleep_held && attempt < 3; attempt++) {
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
        res = outbox__pg_store_query(st, sql, 0, NULL);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = outbox__pg_store_fail(st, res, "taking the relay's asleep lock", err);
            PQclear(res);
            return code;
        }
        st->sleep_held = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
    }
    if (st->waiting && !st->sleep_held)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "relay %s: the asleep lock is held exclusively by another session; "
                    "waiting on the flag and the fallback poll",
                    st->owner);
    return OUTBOX_OK;
}

/* Releases the "asleep" lock after a notification woke the relay: the
 * enqueuer that sent it cleared the flags it could lock, and the relay
 * takes the lock again with its next idle(1).  Only outside a
 * transaction; a failure leaves it for idle(0) or the next wake-up. */
static void release_sleep_lock(pg_store *st)
{
    char sql[96];
    PGresult *res;

    if (!st->sleep_held || !st->conn || PQtransactionStatus(st->conn) != PQTRANS_IDLE) return;
    snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock_shared((%ld)::integer, 0)",
             (long)st->sleep_key);
    res = outbox__pg_store_query(st, sql, 0, NULL);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        st->sleep_held = 0;
    else
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: releasing the asleep lock failed",
                    st->owner);
    PQclear(res);
}

/* This process's identity in relays: the host name, "unknown" when none. */
void outbox__pg_host_name(char *out, size_t len)
{
    if (gethostname(out, len) != 0) snprintf(out, len, "unknown");
    out[len - 1] = '\0';
}

/* Inserts this relay's row (its identity: name, host, pid, start time, and
 * the note it last set) and takes its membership lock (session level) in
 * the same transaction, so that no other relay ever sees the row without
 * the lock; then deletes the rows of relays that are gone. */
int outbox__pg_register_member(pg_store *st, outbox_error *err)
{
    char host[256], pid[32], sql[512];
    const char *params[4];
    PGresult *res;
    int code;

    outbox__pg_host_name(host, sizeof host);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    params[0] = st->owner;
    params[1] = host;
    params[2] = pid;
    params[3] = st->note[0] ? st->note : NULL;
    code = outbox__pg_store_exec(st, "BEGIN", "registering the relay", err);
    if (code != OUTBOX_OK) return code;
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.relays (name, host, pid, backend_pid, note) VALUES ($1, $2,"
             " $3::integer, pg_backend_pid(), $4) RETURNING id",
             st->qschema);
    res = outbox__pg_store_query(st, sql, 4, params);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "registering the relay", err);
        PQclear(res);
        outbox__pg_store_rollback(st);
        return code;
    }
    st->member_id = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%ld, %ld); COMMIT", (long)st->member_key,
             (long)(st->member_id & 0x7fffffff));
    code = outbox__pg_store_exec(st, sql, "taking the relay membership lock", err);
    if (code != OUTBOX_OK) {
        outbox__pg_store_rollback(st);
        st->member_id = 0;
        return code;
    }
    code = delete_dead_relays(st, err);
    if (code != OUTBOX_OK) return code;
    /* Only now (the membership lock held, so the row counts as live): a
     * relay that reconnected while it waited waits on. */
    if (st->waiting) {
        code = set_waiting(st, err);
        if (code != OUTBOX_OK) return code;
    }
    st->note_dirty = 0;
    st->next_rebalance_us = 0;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "relay %s registered on %s (schema %s) as %s@%s:%s, relays.id %lld", st->owner,
                st->shown, st->schema, st->owner, host, pid, (long long)st->member_id);
    return OUTBOX_OK;
}

/* Records this relay's heartbeat, and its note when lease_note changed it
 * during a claim transaction.  No transaction may be open. */
static int write_heartbeat(pg_store *st, outbox_error *err)
{
    const char *params[1];
    PGresult *res;
    int code = OUTBOX_OK;

    params[0] = st->note[0] ? st->note : NULL;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "UPDATE %s.relays SET heartbeat_at = now()%s WHERE id = %lld",
                       st->qschema, st->note_dirty ? ", note = $1" : "", (long long)st->member_id);
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    res = outbox__pg_store_query(st, st->sql.data, st->note_dirty ? 1 : 0, params);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = outbox__pg_store_fail(st, res, "recording the relay heartbeat", err);
    else
        st->note_dirty = 0;
    PQclear(res);
    return code;
}

/* Takes this relay's share of the partitions (all free ones when greedy)
 * and releases what it holds beyond it; with a batch in flight (in_flight)
 * it only takes, and notes in release_wanted that it holds too many (a
 * partition released then could be claimed by another relay while its
 * messages are still out here).  Called with no transaction open. */
static int rebalance(pg_store *st, int greedy, int in_flight, outbox_error *err)
{
    char sql[512];
    PGresult *res;
    unsigned char *taken = NULL;
    int live, share, i, start, code = OUTBOX_OK;
    int before = st->held_count;

    if (st->partitions < 1) {
        code = outbox__pg_check_schema(st, err);
        if (code != OUTBOX_OK) return code;
    }
    taken = outbox__calloc(MAX_PARTITIONS, 1);
    if (!taken) return outbox__error(err, OUTBOX_ENOMEM, "out of memory rebalancing");
    snprintf(sql, sizeof sql,
             "SELECT classid::bigint, objid::bigint, pid = pg_backend_pid() FROM pg_locks"
             " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
             " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
             " AND classid IN (%ld::oid, %ld::oid)",
             (long)st->member_key, (long)st->part_key);
    res = outbox__pg_store_query(st, sql, 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "reading the partition leases", err);
        PQclear(res);
        goto out;
    }
    live = 0;
    for (i = 0; i < PQntuples(res); i++) {
        int64_t cls = outbox__pg_parse_i64(PQgetvalue(res, i, 0));
        int64_t obj = outbox__pg_parse_i64(PQgetvalue(res, i, 1));
        if (cls == st->member_key)
            live++;
        else if (obj >= 0 && obj < st->partitions && PQgetvalue(res, i, 2)[0] != 't')
            taken[obj] = 1;
    }
    PQclear(res);
    if (live < 1) live = 1;
    if (live < st->live_seen) {
        code = delete_dead_relays(st, err);
        if (code != OUTBOX_OK) goto out;
    }
    st->live_seen = live;
    share = greedy ? st->partitions : (st->partitions + live - 1) / live;

    /* Release the extras (highest first). */
    st->release_wanted = in_flight && st->held_count > share;
    for (i = st->partitions - 1; i >= 0 && !in_flight && st->held_count > share; i--) {
        if (!st->held[i]) continue;
        snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(%ld, %d)", (long)st->part_key, i);
        code = outbox__pg_store_exec(st, sql, "releasing a partition", err);
        if (code != OUTBOX_OK) goto out;
        st->held[i] = 0;
        st->held_count--;
    }
    /* Take free ones, starting at a place that depends on the relay so
     * that relays starting together do not all race for partition 0. */
    start = (int)((uint64_t)st->member_id * 7919u % (uint64_t)st->partitions);
    for (i = 0; i < st->partitions && st->held_count < share; i++) {
        int p = (start + i) % st->partitions;
        if (st->held[p] || taken[p]) continue;
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%ld, %d)", (long)st->part_key, p);
        res = outbox__pg_store_query(st, sql, 0, NULL);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = outbox__pg_store_fail(st, res, "taking a partition", err);
            PQclear(res);
            goto out;
        }
        if (PQgetvalue(res, 0, 0)[0] == 't') {
            st->held[p] = 1;
            st->held_count++;
        }
        PQclear(res);
    }
    code = write_heartbeat(st, err);
    if (code != OUTBOX_OK) goto out;
    if (st->held_count != before)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s holds %d of %d partitions (%d live relays)", st->owner,
                    st->held_count, st->partitions, live);
out:
    outbox__free(taken);
    return code;
}

/* Rebalances when it is due (force: now); at once when a rebalance with a
 * batch in flight found partitions to release. */
static int rebalance_when_due(pg_store *st, int force, int in_flight, outbox_error *err)
{
    int64_t now = outbox__monotonic_us();
    int code;
    if (!st->owner[0]) return OUTBOX_OK;
    if (!force && !(st->release_wanted && !in_flight) && now < st->next_rebalance_us)
        return OUTBOX_OK;
    code = rebalance(st, 0, in_flight, err);
    if (code == OUTBOX_OK) {
        int64_t step =
            st->ttl_ms > 0 && st->ttl_ms / 3 < REBALANCE_MS ? st->ttl_ms / 3 : REBALANCE_MS;
        st->next_rebalance_us = now + step * 1000;
    }
    return code;
}

int outbox__pg_maybe_rebalance(pg_store *st, int force, outbox_error *err)
{
    return rebalance_when_due(st, force, 0, err);
}

/* Between the batches of a pipelined relay, with some still out: the
 * heartbeat, the partitions of relays that left, and release_wanted, which
 * tells the relay to empty its window (rebalance_wanted). */
int outbox__pg_rebalance_in_flight(pg_store *st, outbox_error *err)
{
    return rebalance_when_due(st, 0, 1, err);
}

/* A --once relay drains everything it can: it takes every free partition,
 * and partitions still locked (by a live relay, or by the session of one
 * that just died and that PostgreSQL has not closed yet) are waited for, once,
 * up to the lease TTL.  What a live relay keeps is left to it, with a
 * warning, rather than letting --once exit 0 with part of the outbox unread. */
int outbox__pg_take_all_for_once(pg_store *st, outbox_error *err)
{
    int64_t deadline;
    int code;
    if (st->held_count == st->partitions) return OUTBOX_OK;
    code = rebalance(st, 1, 0, err);
    if (code != OUTBOX_OK || st->held_count == st->partitions || st->once_waited) return code;
    st->once_waited = 1;
    deadline = outbox__monotonic_us() + (st->ttl_ms > 0 ? st->ttl_ms : 10000) * 1000;
    while (st->held_count < st->partitions && outbox__monotonic_us() < deadline) {
        outbox__sleep_us(50000);
        code = rebalance(st, 1, 0, err);
        if (code != OUTBOX_OK) return code;
    }
    if (st->held_count < st->partitions)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "relay %s: %d of %d partitions are held by other live relays; their "
                    "messages are left to them",
                    st->owner, st->partitions - st->held_count, st->partitions);
    return OUTBOX_OK;
}

int outbox__pg_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    int code;
    if (!owner || !*owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is empty");
    snprintf(st->owner, sizeof st->owner, "%s", owner);
    st->ttl_ms = ttl_ms;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    if (st->member_id == 0) {
        code = outbox__pg_register_member(st, err);
        if (code != OUTBOX_OK) return code;
    }
    return outbox__pg_maybe_rebalance(st, 1, err);
}

int outbox__pg_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    int code;
    (void)owner;
    st->ttl_ms = ttl_ms;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    return outbox__pg_maybe_rebalance(st, 1, err);
}

int outbox__pg_lease_release(void *state, const char *owner, outbox_error *err)
{
    pg_store *st = state;
    char sql[256];
    int code;
    (void)owner;
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) {
        st->owner[0] = '\0';
        return OUTBOX_OK; /* a lost session holds nothing */
    }
    outbox__pg_end_claim(st);
    code = outbox__pg_store_exec(st, "SELECT pg_advisory_unlock_all()", "releasing the partitions",
                                 err);
    if (code == OUTBOX_OK) st->sleep_held = 0;
    if (code == OUTBOX_OK && st->member_id) {
        snprintf(sql, sizeof sql, "DELETE FROM %s.relays WHERE id = %lld", st->qschema,
                 (long long)st->member_id);
        code = outbox__pg_store_exec(st, sql, "unregistering the relay", err);
    }
    /* The session stays (prepared statements, LISTEN); the leases go. */
    st->member_id = 0;
    memset(st->held, 0, MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
    st->release_wanted = 0;
    st->owner[0] = '\0';
    return code;
}

/* held_count is kept by rebalance, the release and the connection's loss
 * (pg_conn.c), so it is what this session's advisory locks hold. */
int outbox__pg_partitions_held(void *state)
{
    const pg_store *st = state;
    return st->held_count;
}

/* release_wanted is set and cleared by rebalance, and cleared with the
 * leases. */
int outbox__pg_rebalance_wanted(void *state)
{
    const pg_store *st = state;
    return st->release_wanted;
}

/* Keeps note (one line, at most 255 bytes, cut on a character boundary) as
 * this relay instance's note in relays, shown by status.  Written at once
 * outside a claim transaction, else with the next heartbeat; kept across
 * reconnects. */
int outbox__pg_lease_note(void *state, const char *owner, const char *note, outbox_error *err)
{
    pg_store *st = state;
    size_t len, i;

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
    if (st->member_id == 0) return OUTBOX_OK; /* written when it registers */
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) return outbox__pg_need_conn(st, err);
    if (st->in_txn || PQtransactionStatus(st->conn) != PQTRANS_IDLE) return OUTBOX_OK;
    return write_heartbeat(st, err);
}

/* ------------------------------------------------------------------------
 * Wake-up
 * ---------------------------------------------------------------------- */

int outbox__pg_changed(void *state, int *changed, outbox_error *err)
{
    pg_store *st = state;
    PGnotify *note;
    int code, woken = 0;

    *changed = 0;
    if (!st->notified_first) {
        st->notified_first = 1;
        *changed = 1;
    }
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) {
        code = outbox__pg_need_conn(st, err);
        if (code != OUTBOX_OK) return code;
        *changed = 1; /* anything may have happened while away */
    }
    if (!PQconsumeInput(st->conn)) {
        char msg[300];
        return outbox__error(err, OUTBOX_EIO, "reading notifications from %s: %s", st->shown,
                             outbox__pg_message(PQerrorMessage(st->conn), msg, sizeof msg));
    }
    while ((note = PQnotifies(st->conn)) != NULL) {
        *changed = 1;
        PQfreemem(note);
        woken = 1;
    }
    if (woken) release_sleep_lock(st);
    return OUTBOX_OK;
}

const char *outbox__pg_wake_path(void *state)
{
    (void)state;
    return NULL;
}

/* Sets or clears this relay's waiting flag (see "Wake-up" in
 * docs/POSTGRES.md).  A store without a registered relay has no flag:
 * nothing to do. */
int outbox__pg_idle(void *state, int waiting, outbox_error *err)
{
    pg_store *st = state;
    int code;

    st->waiting = waiting != 0;
    code = outbox__pg_need_conn(st, err); /* a reconnect registers with the flag as asked */
    if (code != OUTBOX_OK) return code;
    if (st->member_id == 0) return OUTBOX_OK;
    outbox__pg_end_claim(st);
    return set_waiting(st, err);
}

/* The libpq socket: readable when a notification (or anything) arrives. */
int outbox__pg_wait_fd(void *state)
{
    pg_store *st = state;
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) return -1;
    return PQsocket(st->conn);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_lease_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
