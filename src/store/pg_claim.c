/*
 * pg_claim.c - the PostgreSQL relay's hot path: claim and complete, plain
 * and pipelined (and ahead and behind: sent without waiting), with their
 * prepared statements, the claim floor, and the quarantine of rows that
 * cannot be published.  The design is in
 * docs/POSTGRES.md ("Claim and complete", "Claim floor").
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How often (at most) a relay refreshes its claim floor (see "Claim floor"
 * in docs/POSTGRES.md). */
#define FLOOR_REFRESH_MS 200

/* ------------------------------------------------------------------------
 * Claim and complete
 * ---------------------------------------------------------------------- */

/* The claim's columns and its due, partition, floor and ordering
 * conditions, shared by the claim and the pipelined claim ($5, $6: the
 * floor's requeue epoch and the floor, see "Claim floor" in
 * docs/POSTGRES.md). */
#define CLAIM_SELECT_WHERE                                                                         \
    "SELECT seq, id, " US_OR_NULL(                                                                 \
        "occurred_at") ", type, aggregate_type, aggregate_id,"                                     \
                       " payload::text, headers::text, attempts,"                                  \
                       " CASE WHEN NOT " IN_YEARS(                                                 \
                           "occurred_at") " THEN occurred_at::text END"                            \
                                          " FROM {s}.outbox o"                                     \
                                          " WHERE o.status = 'pending' AND o.partition = "         \
                                          "ANY($1::smallint[])"                                    \
                                          " AND o.seq >= CASE WHEN (SELECT value FROM {s}.meta "   \
                                          "WHERE key = 'requeue_epoch') ="                         \
                                          " $5::text THEN $6::bigint ELSE 0 END"                   \
                                          " AND (o.attempts = 0 OR o.available_at <= "             \
                                          "'epoch'::timestamptz + $2::bigint * interval"           \
                                          " '1 microsecond')"
/* The ordering rule: no earlier message of the row's aggregate waits in
 * backoff (or is Failed, when that blocks).  Only rows in outbox_blocking
 * (Failed, or retried) can block, so when it holds none (a drain without
 * failures) one look at it (an InitPlan, once per claim) stands in for the
 * probe per row: 63 instead of 1,086 buffer hits for a claim of 512.  The
 * look is a scalar subquery in the index's order, not an EXISTS: without
 * table statistics PostgreSQL answered the EXISTS with a scan of the whole
 * table (37 ms for 30,000 rows), the ordered LIMIT 1 takes the index. */
#define CLAIM_NOT_BLOCKED                                                                          \
    " AND ((SELECT 1 FROM {s}.outbox b WHERE b.status = 'failed' OR b.attempts > 0"                \
    "  ORDER BY left(b.aggregate_id, 256), b.seq LIMIT 1) IS NULL"                                 \
    "  OR NOT EXISTS (SELECT 1 FROM {s}.outbox p"                                                  \
    "  WHERE left(p.aggregate_id, 256) = left(o.aggregate_id, 256)"                                \
    "  AND p.aggregate_id = o.aggregate_id AND p.seq < o.seq"                                      \
    "  AND (p.status = 'failed' OR p.attempts > 0)"                                                \
    "  AND ((p.status = 'pending' AND p.available_at > 'epoch'::timestamptz + $2::bigint *"        \
    " interval '1 microsecond') OR (p.status = 'failed' AND $3::boolean))))"

static const char claim_tmpl[] =
    CLAIM_SELECT_WHERE CLAIM_NOT_BLOCKED " ORDER BY o.seq LIMIT $4 FOR UPDATE OF o SKIP LOCKED";

/* Pipelined claim: the same selection as a plain read, from the stretches
 * of seqs between the seqs in flight ($7: their lows, $8: their highs;
 * outbox__stretches_between), each an index range of its own with the
 * batch's limit, then the lowest of them.  Rows in flight are still
 * pending: reading around them, rather than over them with a filter,
 * keeps a claim's work independent of the window (a drain has two
 * stretches: below the window and above it).  No row locks: the relay's
 * partition advisory locks keep the rows its own, and it gives none up
 * while a batch is out (see rebalance in pg_lease.c). */
static const char claim_pipelined_tmpl[] =
    "SELECT c.* FROM unnest($7::bigint[], $8::bigint[]) AS r(lo, hi) CROSS JOIN LATERAL "
    "(" CLAIM_SELECT_WHERE " AND o.seq BETWEEN r.lo AND r.hi" CLAIM_NOT_BLOCKED
    " ORDER BY o.seq LIMIT $4) c ORDER BY c.seq LIMIT $4";

/* The same for at most two stretches ($7..$8 and $9..$10), what a drain
 * has: the two ordered index ranges are merged (Merge Append) instead of
 * sorted, which spares the server the copy of every row's columns into a
 * sort (about a fifth of the claim's server time, docs/BENCHMARKS.md). */
#define CLAIM_STRETCH(lo, hi)                                                                      \
    "(" CLAIM_SELECT_WHERE " AND o.seq BETWEEN " lo " AND " hi CLAIM_NOT_BLOCKED                   \
    " ORDER BY o.seq LIMIT $4)"
static const char claim_pipelined2_tmpl[] =
    CLAIM_STRETCH("$7", "$8") " UNION ALL " CLAIM_STRETCH("$9", "$10") " ORDER BY 1 LIMIT $4";

enum { P_CLAIM, P_DELETE, P_MARK, P_RETRY, P_FAIL, P_CLAIM_PIPELINED, P_CLAIM_PIPELINED2, P_COUNT };

static const char *const hot_tmpl[P_COUNT] = {
    [P_CLAIM] = claim_tmpl,
    [P_DELETE] = "DELETE FROM {s}.outbox WHERE seq = ANY($1::bigint[])",
    [P_MARK] = "UPDATE {s}.outbox SET status = 'sent', sent_at = 'epoch'::timestamptz +"
               " $2::bigint * interval '1 microsecond' WHERE seq = ANY($1::bigint[])",
    [P_RETRY] = "UPDATE {s}.outbox o SET attempts = o.attempts + 1, available_at ="
                " 'epoch'::timestamptz + u.at * interval '1 microsecond', last_error = u.err"
                " FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(seq, at, err)"
                " WHERE o.seq = u.seq",
    [P_FAIL] = "UPDATE {s}.outbox o SET attempts = o.attempts + 1, status = 'failed',"
               " last_error = u.err FROM unnest($1::bigint[], $2::text[]) AS u(seq, err)"
               " WHERE o.seq = u.seq",
    [P_CLAIM_PIPELINED] = claim_pipelined_tmpl,
    [P_CLAIM_PIPELINED2] = claim_pipelined2_tmpl,
};

static const char *const hot_name[P_COUNT] = {
    "outbox_claim",           "outbox_delete", "outbox_mark",
    "outbox_retry",           "outbox_fail",   "outbox_claim_pipelined",
    "outbox_claim_pipelined2"};

/* Prepares the relay's statements on this connection, and pins the
 * claim's plan: the walk of outbox_pending in seq order that stops at the
 * batch size, with one outbox_blocking probe per row it returns (when that
 * index holds any row: CLAIM_NOT_BLOCKED).  Without
 * table statistics (a new table, a bulk load, before autovacuum's first
 * ANALYZE) PostgreSQL estimates a handful of pending rows and prefers a
 * bitmap scan of all of them, a probe per row and a sort: 30,000 pending
 * took 108 ms per claim of 100 instead of about 1 ms.  With statistics and
 * a few hundred failed rows it compared every row it read with all of them
 * (a materialized inner side), 3 ms instead of 0.4.  None of the
 * statements a relay's connection runs needs a sort, a bitmap scan or a
 * materialized inner side to be fast, so the session does without them
 * (the planner still sorts where nothing else can give the order). */
static int prepare_hot(pg_store *st, outbox_error *err)
{
    int i, code;
    if (st->prepared) return OUTBOX_OK;
    /* No JIT either: a plan that must sort anyway (the pipelined claim's
     * few rows) carries enable_sort's penalty in its cost, which is far
     * above jit_above_cost, and compiling it took 1.6 s a claim. */
    code = outbox__pg_store_exec(st,
                                 "SET enable_sort = off; SET enable_bitmapscan = off;"
                                 " SET enable_material = off; SET jit = off",
                                 "configuring the relay's session", err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < P_COUNT; i++) {
        PGresult *res;
        outbox__pg_expand(&st->sql, hot_tmpl[i], st->qschema, st->schema, 0);
        if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory preparing");
        res = outbox__pg_store_prepare(st, hot_name[i], st->sql.data);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            code = outbox__pg_store_fail(st, res, "preparing the relay's statements", err);
            PQclear(res);
            return code;
        }
        PQclear(res);
    }
    st->prepared = 1;
    return OUTBOX_OK;
}

/* Ends an open claim transaction (the relay dropped its batch). */
void outbox__pg_end_claim(pg_store *st)
{
    if (st->in_txn) {
        outbox__pg_store_rollback(st);
        st->in_txn = 0;
    }
}

/* Opens the relay's transaction for a claim or its outcomes; it does not
 * wait for its WAL flush at commit (see claim).  Rolls back on failure. */
static int begin_async(pg_store *st, const char *what, outbox_error *err)
{
    int code = outbox__pg_store_exec(st, "BEGIN; SET LOCAL synchronous_commit = off", what, err);
    if (code != OUTBOX_OK) {
        outbox__pg_store_rollback(st);
        return code;
    }
    st->in_txn = 1;
    return OUTBOX_OK;
}

/* A one-row query of the floor refresh; NULL after logging why the floor is
 * turned off for this session, or (connection lost) with err filled. */
static PGresult *floor_query(pg_store *st, const char *sql, const char *param, int *code,
                             outbox_error *err)
{
    const char *params[1] = {param};
    PGresult *res = outbox__pg_store_query(st, sql, param ? 1 : 0, params);
    char msg[300];

    *code = OUTBOX_OK;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) return res;
    if (PQstatus(st->conn) != CONNECTION_OK) {
        *code = outbox__pg_store_fail(st, res, "refreshing the claim floor", err);
    } else {
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "%s: claims scan the pending index from its start (the claim floor needs "
                    "to read the outbox's seq sequence and pg_locks: %s)",
                    st->shown, outbox__pg_message(PQresultErrorMessage(res), msg, sizeof msg));
        st->floor_off = 1;
        st->floor = 0;
    }
    PQclear(res);
    return NULL;
}

/* Refreshes the claim floor when it is due (see "Claim floor" in
 * docs/POSTGRES.md); runs between transactions.  Fails only when the
 * connection is lost. */
static int floor_refresh(pg_store *st, outbox_error *err)
{
    char table[200];
    PGresult *res;
    int64_t now = outbox__monotonic_us(), settled = -1, last, lowest;
    int code;

    if (st->floor_off || now < st->floor_next_us) return OUTBOX_OK;
    st->floor_next_us = now + (int64_t)FLOOR_REFRESH_MS * 1000;
    snprintf(table, sizeof table, "%s.outbox", st->qschema);
    if (st->wait_xacts) {
        res = floor_query(st,
                          "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks"
                          " WHERE virtualtransaction = ANY($1::text[]))",
                          st->wait_xacts, &code, err);
        if (!res) return code;
        if (strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
            settled = st->wait_seq;
            outbox__free(st->wait_xacts);
            st->wait_xacts = NULL;
        }
        PQclear(res);
        if (settled < 0) return OUTBOX_OK; /* still running: next time */
    }
    /* L first, then the transactions that may still commit rows up to L. */
    res = floor_query(st,
                      "SELECT coalesce(pg_catalog.pg_sequence_last_value("
                      "pg_catalog.pg_get_serial_sequence($1, 'seq')::regclass), 0)",
                      table, &code, err);
    if (!res) return code;
    last = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    res = floor_query(st,
                      "SELECT coalesce(pg_catalog.array_agg(virtualtransaction)::text, '')"
                      " FROM pg_catalog.pg_locks WHERE locktype = 'relation'"
                      " AND database = (SELECT oid FROM pg_catalog.pg_database"
                      "  WHERE datname = pg_catalog.current_database())"
                      " AND relation = $1::regclass"
                      /* readers, SELECT FOR UPDATE, (auto)vacuum and analyze:
                       * a writer holds RowExclusiveLock besides */
                      " AND mode NOT IN ('AccessShareLock', 'RowShareLock',"
                      " 'ShareUpdateExclusiveLock')"
                      " AND pid IS DISTINCT FROM pg_catalog.pg_backend_pid()",
                      table, &code, err);
    if (!res) return code;
    if (PQgetvalue(res, 0, 0)[0] == '\0') {
        settled = last;
    } else {
        st->wait_xacts = outbox__strdup(PQgetvalue(res, 0, 0)); /* none: try again next time */
        st->wait_seq = last;
    }
    PQclear(res);
    if (settled < 0) return OUTBOX_OK;
    /* M and the epoch, in a snapshot taken after the writers above ended. */
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT (SELECT min(seq) FROM %s.outbox WHERE status = 'pending'),"
                       " (SELECT value FROM %s.meta WHERE key = 'requeue_epoch')",
                       st->qschema, st->qschema);
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    res = floor_query(st, st->sql.data, NULL, &code, err);
    if (!res) return code;
    lowest = PQgetisnull(res, 0, 0) ? INT64_MAX : outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    if (PQgetisnull(res, 0, 1) || PQgetlength(res, 0, 1) >= (int)sizeof st->floor_epoch) {
        st->floor = 0; /* no epoch to check against: no floor */
    } else {
        snprintf(st->floor_epoch, sizeof st->floor_epoch, "%s", PQgetvalue(res, 0, 1));
        st->floor = lowest < settled + 1 ? lowest : settled + 1;
    }
    PQclear(res);
    return OUTBOX_OK;
}

/* Appends s to b as an element of a PostgreSQL array literal. */
static void array_text(outbox_buf *b, const char *s)
{
    outbox__buf_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') outbox__buf_append(b, "\\", 1);
        outbox__buf_append(b, s, 1);
    }
    outbox__buf_append(b, "\"", 1);
}

/* A claimed row the relay cannot publish (see quarantine). */
typedef struct bad_row {
    int64_t seq;
    char id[40];
    char error[512];
} bad_row;

/* Marks the rows in bad Failed (attempts + 1, last_error = why) in a
 * statement of its own, outside any claim transaction, and logs each at
 * error level.  If the statement fails, each row is tried alone; a row that
 * still cannot be marked is the claim's error. */
static int quarantine(pg_store *st, const bad_row *bad, size_t n, outbox_error *err)
{
    outbox_buf seqs, errors;
    const char *params[2];
    PGresult *res;
    size_t i, from, to;
    int code = OUTBOX_OK, one_by_one = 0;

    outbox__buf_init(&seqs);
    outbox__buf_init(&errors);
    for (from = 0; from < n; from = to) {
        to = one_by_one ? from + 1 : n;
        outbox__buf_reset(&seqs);
        outbox__buf_reset(&errors);
        outbox__buf_puts(&seqs, "{");
        outbox__buf_puts(&errors, "{");
        for (i = from; i < to; i++) {
            outbox__buf_printf(&seqs, "%s%lld", i > from ? "," : "", (long long)bad[i].seq);
            if (i > from) outbox__buf_puts(&errors, ",");
            array_text(&errors, bad[i].error);
        }
        outbox__buf_puts(&seqs, "}");
        outbox__buf_puts(&errors, "}");
        if (seqs.oom || errors.oom) {
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory quarantining messages");
            break;
        }
        params[0] = seqs.data;
        params[1] = errors.data;
        outbox__buf_reset(&st->sql);
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox o SET status = 'failed', attempts = o.attempts + 1,"
                           " last_error = u.err FROM unnest($1::bigint[], $2::text[]) AS u(seq,"
                           " err) WHERE o.seq = u.seq AND o.status = 'pending'",
                           st->qschema);
        res = outbox__pg_store_query(st, st->sql.data, 2, params);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            for (i = from; i < to; i++)
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "quarantined stored message seq %lld (id %s), which cannot be "
                            "published: %s; it is Failed now, and the later messages of its "
                            "aggregate wait behind it until it is retried or dropped",
                            (long long)bad[i].seq, bad[i].id, bad[i].error);
            PQclear(res);
            continue;
        }
        if (PQstatus(st->conn) != CONNECTION_OK || one_by_one) {
            char what[200];
            snprintf(what, sizeof what,
                     "marking stored message seq %lld (id %s) Failed, which cannot be "
                     "published (%.80s)",
                     (long long)bad[from].seq, bad[from].id, bad[from].error);
            code = outbox__pg_store_fail(st, res, what, err);
            PQclear(res);
            if (one_by_one)
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "%s; delete or repair that row by hand: it holds up the claim",
                            err ? err->message : what);
            break;
        }
        PQclear(res);
        one_by_one = 1;
        to = from; /* again, row by row */
    }
    outbox__buf_free(&seqs);
    outbox__buf_free(&errors);
    return code;
}

/* Rounds of quarantine one claim goes through before it returns (empty):
 * each round marks at least one row, and the next claim goes on. */
#define QUARANTINE_ROUNDS 8

/* The plain claim (a transaction left open until complete), or the
 * pipelined one (a plain read without the seqs in exclude).  Rows that
 * cannot be decoded are quarantined (see quarantine) and the claim reads
 * again, so that the rest of their aggregates is held back as behind any
 * Failed message while every other aggregate flows. */
/* A claim's statement parameters (claim_setup). */
typedef struct claim_args {
    const char *params[10];
    char now[32], limit[32], floor[32];
    char range[4][32]; /* a pipelined claim's two stretches */
    int which;         /* its statement (P_CLAIM, P_CLAIM_PIPELINED*) */
    int nparams;
    int none; /* the session holds no partition: nothing to read */
} claim_args;

/* Everything a claim does before its read: the session (kept as it is
 * while a pipelined batch is out: keep), the hot statements, the floor,
 * and the parameters, the pipelined ones from st->between. */
static int claim_setup(pg_store *st, const outbox_claim_params *p, int pipelined, int keep,
                       claim_args *a, outbox_error *err)
{
    int i, code, any = 0;

    a->none = 0;
    if (!p || p->batch_size == 0)
        return outbox__error(err, OUTBOX_EINVAL, "claim: batch_size is 0");
    if (keep && (!st->conn || PQstatus(st->conn) != CONNECTION_OK))
        /* A new session would not hold the partitions the batch in flight
         * came from: the relay finishes that batch first. */
        return outbox__error(err, OUTBOX_EIO,
                             "claiming messages: the PostgreSQL connection was lost while a "
                             "batch was in flight; reconnecting once it is finished");
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    if (keep) {
        /* A batch is in flight: take, never release (see rebalance); a
         * --once relay took every partition at the start. */
        if (st->owner[0] && !p->once) code = outbox__pg_rebalance_in_flight(st, err);
        if (code != OUTBOX_OK) return code;
    } else if (st->owner[0] && p->once) {
        code = outbox__pg_take_all_for_once(st, err);
        if (code != OUTBOX_OK) return code;
    } else if (st->owner[0]) {
        code = outbox__pg_maybe_rebalance(st, 0, err);
        if (code != OUTBOX_OK) return code;
    }
    code = prepare_hot(st, err);
    if (code != OUTBOX_OK) return code;
    code = floor_refresh(st, err);
    if (code != OUTBOX_OK) return code;

    /* Partitions to claim from: the held ones, or all for a store used
     * without a lease (the CLI's one-off commands, tests). */
    outbox__buf_reset(&st->a1);
    outbox__buf_puts(&st->a1, "{");
    for (i = 0; i < st->partitions; i++) {
        if (st->owner[0] && !st->held[i]) continue;
        outbox__buf_printf(&st->a1, "%s%d", any ? "," : "", i);
        any = 1;
    }
    outbox__buf_puts(&st->a1, "}");
    if (st->a1.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    if (!any) {
        a->none = 1; /* holds no partition right now */
        return OUTBOX_OK;
    }
    snprintf(a->now, sizeof a->now, "%lld", (long long)p->now_us);
    snprintf(a->limit, sizeof a->limit, "%zu", p->batch_size);
    a->params[0] = st->a1.data;
    a->params[1] = a->now;
    a->params[2] = p->failed_blocks_aggregate ? "true" : "false";
    a->params[3] = a->limit;
    snprintf(a->floor, sizeof a->floor, "%lld", (long long)st->floor);
    a->params[4] = st->floor_epoch;
    a->params[5] = a->floor;
    a->which = P_CLAIM;
    a->nparams = 6;

    if (pipelined && st->between.count <= 2) {
        size_t k;
        /* Two stretches, the missing ones empty (1..0). */
        for (k = 0; k < 2; k++) {
            int have = k < st->between.count;
            snprintf(a->range[2 * k], sizeof a->range[0], "%lld",
                     have ? (long long)st->between.r[k].lo : 1LL);
            snprintf(a->range[2 * k + 1], sizeof a->range[0], "%lld",
                     have ? (long long)st->between.r[k].hi : 0LL);
            a->params[6 + 2 * k] = a->range[2 * k];
            a->params[7 + 2 * k] = a->range[2 * k + 1];
        }
        a->which = P_CLAIM_PIPELINED2;
        a->nparams = 10;
    } else if (pipelined) {
        size_t k, his;
        /* Both array literals in a2, the second after the first's NUL. */
        outbox__buf_reset(&st->a2);
        outbox__buf_puts(&st->a2, "{");
        for (k = 0; k < st->between.count; k++)
            outbox__buf_printf(&st->a2, "%s%lld", k ? "," : "", (long long)st->between.r[k].lo);
        outbox__buf_append(&st->a2, "}", 2);
        his = st->a2.len;
        outbox__buf_puts(&st->a2, "{");
        for (k = 0; k < st->between.count; k++)
            outbox__buf_printf(&st->a2, "%s%lld", k ? "," : "", (long long)st->between.r[k].hi);
        outbox__buf_puts(&st->a2, "}");
        if (st->a2.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
        a->params[6] = st->a2.data;
        a->params[7] = st->a2.data + his;
        a->which = P_CLAIM_PIPELINED;
        a->nparams = 8;
    }
    return OUTBOX_OK;
}

static void free_claimed(outbox_msg **arr, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++)
        outbox_msg_free(arr[i]);
    outbox__free(arr);
}

/* The messages of a claim's result (rows > 0); rows that do not decode go
 * to *bad (allocated for all rows), not into *arr. */
static int claim_rows(PGresult *res, outbox_msg ***out, size_t *count, bad_row **out_bad,
                      size_t *nbad, outbox_error *err)
{
    int i, rows = PQntuples(res), code;
    outbox_msg **arr = outbox__calloc((size_t)rows, sizeof *arr);
    bad_row *bad = NULL;

    *out = NULL;
    *count = 0;
    *out_bad = NULL;
    *nbad = 0;
    if (!arr) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming %d messages", rows);
    for (i = 0; i < rows; i++) {
        outbox_error why;
        int64_t seq = outbox__pg_parse_i64(PQgetvalue(res, i, 0));
        if (PQgetisnull(res, i, 2)) {
            code = outbox__error(&why, OUTBOX_EINVAL,
                                 "stored message seq %lld: occurred_at %.40s is outside the "
                                 "years 1970 to 9999",
                                 (long long)seq, PQgetvalue(res, i, 9));
        } else {
            code = outbox__msg_from_row(&arr[*count], seq, PQgetvalue(res, i, 1),
                                        outbox__pg_parse_i64(PQgetvalue(res, i, 2)),
                                        PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
                                        PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
                                        PQgetvalue(res, i, 7), &why);
            if (code == OUTBOX_ENOMEM) {
                if (err) *err = why;
                goto fail;
            }
        }
        if (code != OUTBOX_OK) {
            if (!bad) bad = outbox__calloc((size_t)rows, sizeof *bad);
            if (!bad) {
                code = outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
                goto fail;
            }
            bad[*nbad].seq = seq;
            snprintf(bad[*nbad].id, sizeof bad[*nbad].id, "%.36s", PQgetvalue(res, i, 1));
            snprintf(bad[*nbad].error, sizeof bad[*nbad].error, "%s", why.message);
            (*nbad)++;
            continue;
        }
        arr[*count]->attempts = (int)outbox__pg_parse_i64(PQgetvalue(res, i, 8));
        arr[*count]->status = OUTBOX_STATUS_PENDING;
        (*count)++;
    }
    *out = arr;
    *out_bad = bad;
    return OUTBOX_OK;

fail:
    free_claimed(arr, *count);
    outbox__free(bad);
    *count = 0;
    *nbad = 0;
    return code;
}

/* Quarantines what claim_rows found (see quarantine) and counts it. */
static int claim_quarantine(pg_store *st, const outbox_claim_params *p, bad_row *bad, size_t nbad,
                            outbox_error *err)
{
    int code;
    outbox__pg_end_claim(st);
    code = quarantine(st, bad, nbad, err);
    if (code == OUTBOX_OK && p->quarantined) *p->quarantined += nbad;
    outbox__free(bad);
    return code;
}

/* The claim's read, after st->between is set for a pipelined one. */
static int claim_read(pg_store *st, const outbox_claim_params *p, int pipelined, int keep,
                      outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    claim_args a;
    outbox_msg **arr = NULL;
    bad_row *bad = NULL;
    PGresult *res = NULL;
    size_t count = 0, nbad = 0;
    int code, round;

    *msgs = NULL;
    *n = 0;
    code = claim_setup(st, p, pipelined, keep, &a, err);
    if (code != OUTBOX_OK || a.none) return code;
    for (round = 0;; round++) {
        if (pipelined) {
            res = outbox__pg_store_query_prepared(st, hot_name[a.which], a.nparams, a.params);
        } else {
            /* Outcomes need not be durable: a completion lost in a database
             * crash only makes its messages be published again (at least
             * once), so the claim transaction does not wait for its WAL
             * flush. */
            code = begin_async(st, "starting the claim transaction", err);
            if (code != OUTBOX_OK) return code;
            res = outbox__pg_store_query_prepared(st, hot_name[a.which], a.nparams, a.params);
        }
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = outbox__pg_store_fail(st, res, "claiming messages", err);
            PQclear(res);
            outbox__pg_end_claim(st);
            return code;
        }
        if (PQntuples(res) == 0) {
            PQclear(res);
            outbox__pg_end_claim(st); /* nothing locked: end the transaction now */
            return OUTBOX_OK;
        }
        code = claim_rows(res, &arr, &count, &bad, &nbad, err);
        PQclear(res);
        if (code != OUTBOX_OK) {
            outbox__pg_end_claim(st);
            return code;
        }
        if (nbad == 0) {
            *msgs = arr;
            *n = count;
            return OUTBOX_OK; /* a plain claim's transaction stays open until complete */
        }
        /* Read again once they are Failed: later rows of their aggregates
         * may be in this batch. */
        free_claimed(arr, count);
        arr = NULL;
        count = 0;
        code = claim_quarantine(st, p, bad, nbad, err);
        if (code != OUTBOX_OK || round + 1 >= QUARANTINE_ROUNDS) return code;
    }
}

static int claim(pg_store *st, const outbox_claim_params *p, int pipelined, const int64_t *exclude,
                 size_t exclude_count, outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    *msgs = NULL;
    *n = 0;
    if (pipelined && outbox__stretches_between(&st->between, exclude, exclude_count) != 0)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    /* A pipelined batch is still out: keep every partition held. */
    return claim_read(st, p, pipelined, pipelined && exclude_count > 0, msgs, n, err);
}

int outbox__pg_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                     outbox_error *err)
{
    return claim(state, p, 0, NULL, 0, msgs, n, err);
}

int outbox__pg_claim_pipelined(void *state, const outbox_claim_params *p, const int64_t *exclude,
                               size_t exclude_count, outbox_msg ***msgs, size_t *n,
                               outbox_error *err)
{
    return claim(state, p, 1, exclude, exclude_count, msgs, n, err);
}

/* Claim ahead: the pipelined claim's statement is sent and left to run
 * while the relay publishes; the next statement on the connection (the
 * oldest batch's outcomes, usually) reads its result first
 * (outbox__pg_store_settle), and claim_ahead_end turns it into messages.
 * One connection: the session that holds the partitions reads them, and
 * the server runs the claim while this process does the producer's
 * work.  A result with rows to quarantine is dropped, the rows are
 * quarantined and the claim is made again, as claim_pipelined would. */
int outbox__pg_claim_ahead(void *state, const outbox_claim_params *p, const int64_t *exclude,
                           size_t exclude_count, outbox_error *err)
{
    pg_store *st = state;
    claim_args a;
    int code;

    if (st->wal || st->capture_wal)
        return outbox__error(err, OUTBOX_ENOTBUILT,
                             "no claim ahead with capture=wal: messages come from the stream");
    if (st->ahead_out)
        return outbox__error(err, OUTBOX_EINVAL, "claim_ahead: the one before is still out");
    if (exclude_count == 0)
        return outbox__error(err, OUTBOX_EINVAL,
                             "claim_ahead: nothing in flight to claim ahead of");
    if (outbox__stretches_between(&st->between, exclude, exclude_count) != 0)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming ahead");
    code = claim_setup(st, p, 1, 1, &a, err);
    if (code != OUTBOX_OK) return code;
    if (a.none) {
        st->ahead_out = 2;
        return OUTBOX_OK;
    }
    if (!outbox__pg_store_send_prepared(st, hot_name[a.which], a.nparams, a.params))
        return outbox__pg_store_fail(st, NULL, "claiming messages ahead", err);
    st->ahead_out = 1;
    return OUTBOX_OK;
}

int outbox__pg_claim_ahead_end(void *state, int keep, const outbox_claim_params *p,
                               outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    pg_store *st = state;
    outbox_msg **arr = NULL;
    bad_row *bad = NULL;
    PGresult *res;
    size_t count = 0, nbad = 0;
    int out = st->ahead_out, code;

    *msgs = NULL;
    *n = 0;
    st->ahead_out = 0;
    if (out != 1) return OUTBOX_OK;
    outbox__pg_store_settle(st);
    res = st->ahead_res;
    st->ahead_res = NULL;
    if (!keep) {
        PQclear(res);
        return OUTBOX_OK;
    }
    if (!res && st->conn && PQstatus(st->conn) == CONNECTION_OK && !st->timed_out) {
        /* The connection was replaced in between: read again on the new one. */
        return claim_read(st, p, 1, 1, msgs, n, err);
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "claiming messages", err);
        PQclear(res);
        return code;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        return OUTBOX_OK;
    }
    code = claim_rows(res, &arr, &count, &bad, &nbad, err);
    PQclear(res);
    if (code != OUTBOX_OK) return code;
    if (nbad == 0) {
        *msgs = arr;
        *n = count;
        return OUTBOX_OK;
    }
    free_claimed(arr, count);
    code = claim_quarantine(st, p, bad, nbad, err);
    if (code != OUTBOX_OK) return code;
    return claim_read(st, p, 1, 1, msgs, n, err);
}

/* Runs a prepared hot statement with text parameters. */
static int run_hot(pg_store *st, int which, int nparams, const char *const *params,
                   const char *what, outbox_error *err)
{
    PGresult *res = outbox__pg_store_query_prepared(st, hot_name[which], nparams, params);
    int code = OUTBOX_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) code = outbox__pg_store_fail(st, res, what, err);
    PQclear(res);
    return code;
}

/* Appends to st->sql the head of the statement that records sent messages
 * (their WHERE follows): DELETE, or UPDATE to sent when p says mark. */
static void sent_statement(pg_store *st, const outbox_complete_params *p)
{
    if (p && p->on_sent == OUTBOX_ON_SENT_MARK)
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox SET status = 'sent', sent_at = 'epoch'::timestamptz"
                           " + %lld * interval '1 microsecond'",
                           st->qschema, (long long)(p->now_us ? p->now_us : outbox__now_us()));
    else
        outbox__buf_printf(&st->sql, "DELETE FROM %s.outbox", st->qschema);
}

/* complete()'s usual case, a batch sent whole whose seqs are consecutive,
 * in one round trip: its rows are exactly the seqs from the first to the
 * last (seqs are unique), deleted (or marked) by that range, one index
 * descent instead of one per seq, and the transaction (opened here when
 * pipelined) committed in the same query.  *taken = 0 when the batch is
 * not such a one: complete() records it statement by statement. */
static int complete_range(pg_store *st, const outbox_completion *c, size_t n,
                          const outbox_complete_params *p, int pipelined, int *taken,
                          outbox_error *err)
{
    int64_t lo, hi;
    size_t i;
    int code;

    *taken = 0;
    if (n == 0 || !st->conn || PQstatus(st->conn) != CONNECTION_OK) return OUTBOX_OK;
    if (!pipelined && (!st->in_txn || PQtransactionStatus(st->conn) != PQTRANS_INTRANS))
        return OUTBOX_OK; /* complete() says why */
    lo = c[0].msg->seq;
    for (i = 0; i < n; i++)
        if (c[i].outcome != OUTBOX_OUTCOME_SENT || c[i].msg->seq != lo + (int64_t)i)
            return OUTBOX_OK;
    hi = lo + (int64_t)n - 1;
    *taken = 1;
    if (pipelined) outbox__pg_end_claim(st);
    if (OUTBOX_FAULT("during_mark_sent") != 0) {
        outbox__pg_end_claim(st);
        return outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
    }
    outbox__buf_reset(&st->sql);
    if (pipelined) outbox__buf_puts(&st->sql, "BEGIN; SET LOCAL synchronous_commit = off; ");
    sent_statement(st, p);
    outbox__buf_printf(&st->sql, " WHERE seq BETWEEN %lld AND %lld; COMMIT", (long long)lo,
                       (long long)hi);
    if (st->sql.oom) {
        outbox__pg_end_claim(st);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
    }
    if (pipelined) st->in_txn = 1; /* a failure below rolls it back */
    code = outbox__pg_store_exec(st, st->sql.data,
                                 p && p->on_sent == OUTBOX_ON_SENT_MARK ? "marking messages sent"
                                                                        : "deleting sent messages",
                                 err);
    if (code != OUTBOX_OK) {
        outbox__pg_end_claim(st);
        return code;
    }
    st->in_txn = 0;
    return OUTBOX_OK;
}

/* Records outcomes: in the claim's transaction, or (pipelined) in one of
 * its own; in_flight: a pipelined batch is still out (no rebalancing). */
static int complete(pg_store *st, const outbox_completion *c, size_t n,
                    const outbox_complete_params *p, int pipelined, int in_flight,
                    outbox_error *err)
{
    const char *params[3];
    char now[32];
    size_t i, sent = 0, retry = 0, failed = 0;
    int code, taken;

    /* An outcome the store does not know refuses the whole call before
     * anything is written, as SQLite does; the claim stays as it was. */
    for (i = 0; i < n; i++) {
        if (!c[i].msg)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "recording outcomes: completion %zu has no message", i);
        if (c[i].outcome < OUTBOX_OUTCOME_SENT || c[i].outcome > OUTBOX_OUTCOME_UNSENT)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "recording outcomes: unknown outcome %d for message %s",
                                 c[i].outcome, c[i].msg->id);
    }
    code = complete_range(st, c, n, p, pipelined, &taken, err);
    if (taken) {
        if (code != OUTBOX_OK) return code;
        goto done;
    }
    if (pipelined) {
        /* A pipelined batch holds no transaction: open one for the outcomes
         * (on the session that holds the partitions; after a lost
         * connection nothing is recorded, as for a plain claim). */
        if (!st->conn || PQstatus(st->conn) != CONNECTION_OK)
            return outbox__error(err, OUTBOX_EIO,
                                 "recording outcomes: the PostgreSQL connection was lost; the "
                                 "batch was not recorded and will be published again");
        outbox__pg_end_claim(st);
        code = begin_async(st, "starting the completion transaction", err);
        if (code != OUTBOX_OK) return code;
    }
    if (!st->in_txn || !st->conn || PQstatus(st->conn) != CONNECTION_OK ||
        PQtransactionStatus(st->conn) != PQTRANS_INTRANS) {
        st->in_txn = 0;
        if (st->conn && PQstatus(st->conn) == CONNECTION_BAD)
            return outbox__error(err, OUTBOX_EIO,
                                 "recording outcomes: the PostgreSQL connection was lost; the "
                                 "batch was not recorded and will be published again");
        return outbox__error(err, OUTBOX_ESTORE,
                             "recording outcomes: no claim transaction is open (the batch was "
                             "released); it will be claimed again");
    }
    /* Sent */
    outbox__buf_reset(&st->a1);
    outbox__buf_puts(&st->a1, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_SENT) continue;
        outbox__buf_printf(&st->a1, "%s%lld", sent ? "," : "", (long long)c[i].msg->seq);
        sent++;
    }
    outbox__buf_puts(&st->a1, "}");
    if (st->a1.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (sent > 0) {
        params[0] = st->a1.data;
        if (p && p->on_sent == OUTBOX_ON_SENT_MARK) {
            snprintf(now, sizeof now, "%lld",
                     (long long)(p->now_us ? p->now_us : outbox__now_us()));
            params[1] = now;
            code = run_hot(st, P_MARK, 2, params, "marking messages sent", err);
        } else {
            code = run_hot(st, P_DELETE, 1, params, "deleting sent messages", err);
        }
        if (code != OUTBOX_OK) goto fail;
    }
    /* Retry */
    outbox__buf_reset(&st->a1);
    outbox__buf_reset(&st->a2);
    outbox__buf_reset(&st->a3);
    outbox__buf_puts(&st->a1, "{");
    outbox__buf_puts(&st->a2, "{");
    outbox__buf_puts(&st->a3, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_RETRY) continue;
        outbox__buf_printf(&st->a1, "%s%lld", retry ? "," : "", (long long)c[i].msg->seq);
        outbox__buf_printf(&st->a2, "%s%lld", retry ? "," : "", (long long)c[i].available_at);
        if (retry) outbox__buf_puts(&st->a3, ",");
        array_text(&st->a3, c[i].error ? c[i].error : "");
        retry++;
    }
    outbox__buf_puts(&st->a1, "}");
    outbox__buf_puts(&st->a2, "}");
    outbox__buf_puts(&st->a3, "}");
    if (st->a1.oom || st->a2.oom || st->a3.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (retry > 0) {
        params[0] = st->a1.data;
        params[1] = st->a2.data;
        params[2] = st->a3.data;
        code = run_hot(st, P_RETRY, 3, params, "rescheduling messages", err);
        if (code != OUTBOX_OK) goto fail;
    }
    /* Failed */
    outbox__buf_reset(&st->a1);
    outbox__buf_reset(&st->a3);
    outbox__buf_puts(&st->a1, "{");
    outbox__buf_puts(&st->a3, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_FAILED) continue;
        outbox__buf_printf(&st->a1, "%s%lld", failed ? "," : "", (long long)c[i].msg->seq);
        if (failed) outbox__buf_puts(&st->a3, ",");
        array_text(&st->a3, c[i].error ? c[i].error : "");
        failed++;
    }
    outbox__buf_puts(&st->a1, "}");
    outbox__buf_puts(&st->a3, "}");
    if (st->a1.oom || st->a3.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (failed > 0) {
        params[0] = st->a1.data;
        params[1] = st->a3.data;
        code = run_hot(st, P_FAIL, 2, params, "moving messages to failed", err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (sent + retry + failed > 0 && OUTBOX_FAULT("during_mark_sent") != 0) {
        code = outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
        goto fail;
    }
    code = outbox__pg_store_exec(st, "COMMIT", "committing message outcomes", err);
    st->in_txn = 0;
    if (code != OUTBOX_OK) goto fail;
done:
    /* Between batches: keep the share of partitions current (only taking
     * while a batch is in flight). */
    if (st->owner[0]) {
        outbox_error e;
        if ((pipelined && in_flight ? outbox__pg_rebalance_in_flight(st, &e)
                                    : outbox__pg_maybe_rebalance(st, 0, &e)) != OUTBOX_OK)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT, "relay %s: rebalancing failed: %s", st->owner,
                        e.message);
    }
    return OUTBOX_OK;

fail:
    outbox__pg_end_claim(st);
    return code;
}

int outbox__pg_complete(void *state, const outbox_completion *c, size_t n,
                        const outbox_complete_params *p, outbox_error *err)
{
    return complete(state, c, n, p, 0, 0, err);
}

int outbox__pg_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                  const outbox_complete_params *p, int in_flight, outbox_error *err)
{
    return complete(state, c, n, p, 1, in_flight, err);
}

/* Complete behind: a wholly sent batch's DELETE (or UPDATE to sent) is
 * sent, in a transaction of its own, on a second connection (rec_conn)
 * without waiting, and read by complete_behind_end; the relay's session
 * meanwhile claims and publishes.  It needs no partition lock: the rows
 * are this relay's published messages, and the relay keeps them out of
 * its claims until the end (were another relay to hold them by then, the
 * statement would wait for its claim and find them gone).  A failure says
 * so at the end, and the connection is opened again for the next. */
int outbox__pg_complete_behind(void *state, const outbox_completion *c, size_t n,
                               const outbox_complete_params *p, int in_flight, outbox_error *err)
{
    pg_store *st = state;
    size_t i;
    int contiguous = 1, sent;

    (void)in_flight;
    if (st->wal || st->capture_wal)
        return outbox__error(err, OUTBOX_ENOTBUILT,
                             "no complete behind with capture=wal: its outcomes go with the "
                             "stream's position");
    if (st->rec_sent)
        return outbox__error(err, OUTBOX_EINVAL, "complete_behind: the one before is still out");
    if (!p || n == 0 || !c)
        return outbox__error(err, OUTBOX_EINVAL, "complete_behind: no outcomes to record");
    for (i = 0; i < n; i++) {
        if (!c[i].msg || c[i].outcome != OUTBOX_OUTCOME_SENT)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "complete_behind records wholly sent batches only");
        if (c[i].msg->seq != c[0].msg->seq + (int64_t)i) contiguous = 0;
    }
    if (OUTBOX_FAULT("during_mark_sent") != 0)
        return outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
    outbox__buf_reset(&st->sql);
    outbox__buf_puts(&st->sql, "BEGIN; SET LOCAL synchronous_commit = off; ");
    sent_statement(st, p);
    if (contiguous) {
        outbox__buf_printf(&st->sql, " WHERE seq BETWEEN %lld AND %lld", (long long)c[0].msg->seq,
                           (long long)c[n - 1].msg->seq);
    } else {
        outbox__buf_puts(&st->sql, " WHERE seq = ANY('{");
        for (i = 0; i < n; i++)
            outbox__buf_printf(&st->sql, "%s%lld", i ? "," : "", (long long)c[i].msg->seq);
        outbox__buf_puts(&st->sql, "}'::bigint[])");
    }
    outbox__buf_puts(&st->sql, "; COMMIT");
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
    if (!st->rec_conn || PQstatus(st->rec_conn) != CONNECTION_OK) {
        if (st->rec_conn) PQfinish(st->rec_conn);
        st->rec_conn = outbox__pg_connect_plain(st, err);
        if (!st->rec_conn) return err ? err->code : OUTBOX_EIO;
    }
    st->rec_deadline_us = outbox__monotonic_us() + st->query_timeout_ms * 1000;
    sent = outbox__pg_send_within(st->rec_conn, st->rec_deadline_us, st->sql.data);
    if (sent <= 0) {
        PQfinish(st->rec_conn);
        st->rec_conn = NULL;
        return outbox__error(err, OUTBOX_EIO,
                             "recording outcomes: could not send them to PostgreSQL at %s",
                             st->shown);
    }
    st->rec_sent = 1;
    return OUTBOX_OK;
}

int outbox__pg_complete_behind_end(void *state, outbox_error *err)
{
    pg_store *st = state;
    PGresult *res;
    int expired, code = OUTBOX_OK;

    if (!st->rec_sent) return OUTBOX_OK;
    st->rec_sent = 0;
    res = outbox__pg_collect_within(st->rec_conn, st->rec_deadline_us, &expired);
    if (expired) {
        code = outbox__pg_timeout_error(st, "recording outcomes", err);
    } else if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        code = outbox__pg_fail(st->rec_conn, res, "recording outcomes", err);
        if (code == OUTBOX_OK) code = OUTBOX_ESTORE;
    }
    PQclear(res);
    if (code != OUTBOX_OK) {
        PQfinish(st->rec_conn); /* a new one for the next: nothing is left half-done on it */
        st->rec_conn = NULL;
    }
    return code;
}

/* Runs a query returning one row, one column; *out = its int64 value (0
 * for NULL). */
static int scalar(pg_store *st, const char *sql, int64_t *out, const char *what, outbox_error *err)
{
    PGresult *res = outbox__pg_store_query(st, sql, 0, NULL);
    int code = OUTBOX_OK;
    *out = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        code = outbox__pg_store_fail(st, res, what, err);
    else
        *out = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    return code;
}

int outbox__pg_next_due(void *state, int64_t *due_us, outbox_error *err)
{
    pg_store *st = state;
    int code;
    *due_us = 0;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    if (st->in_txn) return OUTBOX_OK;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(
        &st->sql,
        "SELECT " US("min(available_at)") " FROM %s.outbox"
                                          " WHERE status = 'pending' AND attempts > 0",
        st->qschema);
    return scalar(st, st->sql.data, due_us, "finding the next due message", err);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_claim_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
