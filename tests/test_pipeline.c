/*
 * test_pipeline.c - the relay's pipelined path (claim and record batch N+1
 * while batch N's JetStream acks are outstanding) against a real
 * nats-server -js, with acks dropped on purpose.
 *
 *   lost_acks    OUTBOX_FAULT=nats_ack_lost:pX drops positive acks at
 *                random (seeded) while few aggregates spread over many
 *                small batches, so a failed message's aggregate usually
 *                has later messages in the next batch, already begun.
 *                Then: lost 0, nothing pending or failed once drained, the
 *                stream's first publications in per-aggregate order, and no
 *                later message of an aggregate recorded sent before an
 *                earlier one (sent_at with on_sent=mark); the relay's log
 *                shows pipelined batches that held messages back behind a
 *                failure, and no acked message among them (the destination
 *                did not publish them).
 *   stop         outbox_relay_stop from another thread mid-drain: every
 *                message marked sent is in the stream (nothing recorded
 *                that was not acked); a second relay drains the rest.
 *   serial       with OUTBOX_RELAY_PIPELINE=0 the relay runs its serial
 *                loop: the same drain, no pipelined batch in the log.
 *   deep_claim   the SQLite store's pipelined claim with 64 batches in
 *                flight (a publish window's depth), over rows that retries
 *                and a Failed row leave gaps between: every claim returns
 *                exactly the rows of the plain read without the seqs in
 *                flight (checked against that read in SQL), none of them in
 *                flight, and no message ahead of an earlier pending message
 *                of its aggregate that is neither in flight nor before it in
 *                the claim; also once a retry below the window falls due
 *                (the seqs in flight then come unsorted).
 *   lost_acks_pg lost_acks from the PostgreSQL store (pipelined claims rely
 *                on the partition advisory locks, see src/store/pg_lease.c), on a
 *                server started by tests/support/pg.h; left out with a
 *                message when the PostgreSQL binaries are not installed.
 *
 * OUTBOX_TEST_SCALE scales the message counts; OUTBOX_TEST_SEED replays.
 */
#include "test.h"

#if !defined(OUTBOX_HAVE_NATS) || !defined(OUTBOX_FAULT_INJECTION)
int main(void)
{
    SKIP("needs the NATS destination and a build with OUTBOX_FAULT_INJECTION");
}
#else

#include "support/chaos.h"
#include "support/nats.h"
#include "support/store.h"
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#include "relay_thread.h"
#endif

#include <pthread.h>
#include <stdatomic.h>

static nh_server server;

/* ------------------------------------------------------------------------
 * Log capture: counts the relay's per-batch debug lines.
 * ---------------------------------------------------------------------- */

static atomic_long log_pipelined;      /* batches begun while one was in flight */
static atomic_long log_carried;        /* acked messages held behind the batch before */
static atomic_long log_held_pipelined; /* held back in batches begun while one was in flight */
static atomic_long log_injected;       /* acks dropped by the fault point */

static void count_log(void *user, int level, const char *component, const char *message)
{
    const char *p;
    (void)user;
    (void)level;
    (void)component;
    if (strstr(message, "fault point nats_ack_lost") != NULL) atomic_fetch_add(&log_injected, 1);
    if (strncmp(message, "batch of ", 9) != 0) return;
    if (strstr(message, "(pipelined)") != NULL) {
        atomic_fetch_add(&log_pipelined, 1);
        p = strstr(message, " failed, ");
        if (p != NULL) atomic_fetch_add(&log_held_pipelined, strtol(p + 9, NULL, 10));
    }
    p = strstr(message, "held back (");
    if (p != NULL) atomic_fetch_add(&log_carried, strtol(p + 11, NULL, 10));
}

static void reset_log_counts(void)
{
    atomic_store(&log_pipelined, 0);
    atomic_store(&log_carried, 0);
    atomic_store(&log_held_pipelined, 0);
    atomic_store(&log_injected, 0);
}

/* ------------------------------------------------------------------------
 * Outbox fill and read-back
 * ---------------------------------------------------------------------- */

/* Enqueues total messages round-robin over `aggregates` aggregates, 100 per
 * transaction. */
static void fill(const char *db_path, int total, int aggregates)
{
    sqlite3 *db = ch_db_open(db_path);
    outbox_error err;
    char agg[32], payload[64];
    int i;
    memset(&err, 0, sizeof err);
    for (i = 0; i < total; i++) {
        outbox_msg *m = NULL;
        if (i % 100 == 0) ch_db_exec(db, "BEGIN");
        snprintf(agg, sizeof agg, "agg-%d", i % aggregates);
        snprintf(payload, sizeof payload, "{\"n\":%d}", i);
        ASSERT_OK(outbox_msg_new(&m, "Ticked", "Clock", agg, payload, &err), &err);
        ASSERT_OK(outbox_enqueue_sqlite(db, m, &err), &err);
        outbox_msg_free(m);
        if (i % 100 == 99 || i == total - 1) ch_db_exec(db, "COMMIT");
    }
    sqlite3_close(db);
}

typedef struct row {
    char id[40];
    int64_t seq;
    int agg;    /* aggregate number */
    int status; /* 0 pending, 1 sent, 2 failed */
    int64_t sent_at;
    int seen; /* times in the stream */
} row;

typedef struct table {
    row *rows;
    int n;
    int aggregates;
    int64_t *last_first_seq; /* per aggregate: seq of the last first publication */
    int64_t violations;      /* first publications out of per-aggregate order */
    int64_t foreign;         /* stream messages with an unknown id */
} table;

static int row_by_id(const void *a, const void *b)
{
    return strcmp(((const row *)a)->id, ((const row *)b)->id);
}

/* Where the outbox is: a SQLite file, or (conn set) PostgreSQL's outbox
 * schema. */
typedef struct where {
    const char *db_path;
    void *conn; /* PGconn * */
} where;

static void table_init(table *t, int aggregates)
{
    memset(t, 0, sizeof *t);
    t->aggregates = aggregates;
    t->rows = calloc(1024, sizeof *t->rows);
    t->last_first_seq = calloc((size_t)aggregates, sizeof *t->last_first_seq);
    ASSERT(t->rows != NULL && t->last_first_seq != NULL);
}

static void table_add(table *t, const char *id, int64_t seq, const char *agg, const char *status,
                      int64_t sent_at)
{
    row *r;
    if (t->n >= 1024 && (t->n & (t->n - 1)) == 0) {
        t->rows = realloc(t->rows, (size_t)t->n * 2 * sizeof *t->rows);
        ASSERT(t->rows != NULL);
    }
    r = &t->rows[t->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->seq = seq;
    r->agg = atoi(agg + 4);
    r->status = strcmp(status, "sent") == 0 ? 1 : strcmp(status, "failed") == 0 ? 2 : 0;
    r->sent_at = sent_at;
    ASSERT(r->agg >= 0 && r->agg < t->aggregates);
}

/* Reads every row of the outbox (on_sent=mark keeps them), sorted by id. */
static void load_table(const where *w, table *t, int aggregates)
{
    table_init(t, aggregates);
#ifdef OUTBOX_HAVE_LIBPQ
    if (w->conn != NULL) {
        PGresult *res = PQexec(w->conn, "SELECT id, seq, aggregate_id, status,"
                                        " coalesce((extract(epoch FROM sent_at) * 1000000)"
                                        "::bigint, 0) FROM outbox.outbox");
        int i;
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            TEST_FAIL_("reading the outbox: %s", PQerrorMessage(w->conn));
        for (i = 0; i < PQntuples(res); i++)
            table_add(t, PQgetvalue(res, i, 0), atoll(PQgetvalue(res, i, 1)), PQgetvalue(res, i, 2),
                      PQgetvalue(res, i, 3), atoll(PQgetvalue(res, i, 4)));
        PQclear(res);
    } else
#endif
    {
        sqlite3 *db = ch_db_open(w->db_path);
        sqlite3_stmt *s = NULL;
        ASSERT_EQ(sqlite3_prepare_v2(db,
                                     "SELECT id, seq, aggregate_id, status, coalesce(sent_at, 0)"
                                     " FROM outbox",
                                     -1, &s, NULL),
                  SQLITE_OK);
        while (sqlite3_step(s) == SQLITE_ROW)
            table_add(t, (const char *)sqlite3_column_text(s, 0), sqlite3_column_int64(s, 1),
                      (const char *)sqlite3_column_text(s, 2),
                      (const char *)sqlite3_column_text(s, 3), sqlite3_column_int64(s, 4));
        sqlite3_finalize(s);
        sqlite3_close(db);
    }
    qsort(t->rows, (size_t)t->n, sizeof *t->rows, row_by_id);
}

static void table_free(table *t)
{
    free(t->rows);
    free(t->last_first_seq);
}

/* Stream reader: counts each id, checks first publications' order. */
static void see(void *user, natsMsg *m)
{
    table *t = user;
    row key, *r;
    const char *id = nh_header(m, "Nats-Msg-Id");
    snprintf(key.id, sizeof key.id, "%s", id ? id : "");
    r = bsearch(&key, t->rows, (size_t)t->n, sizeof *t->rows, row_by_id);
    if (r == NULL) {
        t->foreign++;
        return;
    }
    if (r->seen++ > 0) return;
    if (r->seq < t->last_first_seq[r->agg]) t->violations++;
    t->last_first_seq[r->agg] = r->seq;
}

static int row_by_agg_seq(const void *a, const void *b)
{
    const row *x = a, *y = b;
    if (x->agg != y->agg) return x->agg < y->agg ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Per aggregate in seq order, sent_at must not go down: a later message
 * recorded sent before an earlier one would be a violation. */
static int64_t sent_order_violations(const where *w, int aggregates)
{
    table t;
    int64_t bad = 0;
    int i;
    load_table(w, &t, aggregates);
    qsort(t.rows, (size_t)t.n, sizeof *t.rows, row_by_agg_seq);
    for (i = 1; i < t.n; i++) {
        const row *a = &t.rows[i - 1], *b = &t.rows[i];
        if (a->agg != b->agg || a->status != 1 || b->status != 1) continue;
        if (b->sent_at < a->sent_at) bad++;
    }
    table_free(&t);
    return bad;
}

/* Also: sent rows that are not in the stream (recorded without an ack). */
static void check_stream(const where *w, const char *stream, const char *filter, int aggregates,
                         int drained, table *t)
{
    int64_t in_stream, lost = 0, dups = 0, unacked_sent = 0;
    int i;
    load_table(w, t, aggregates);
    in_stream = nh_stream_read(&server, stream, filter, see, t);
    for (i = 0; i < t->n; i++) {
        if (t->rows[i].seen == 0) lost++;
        if (t->rows[i].seen > 1) dups++;
        if (t->rows[i].status == 1 && t->rows[i].seen == 0) unacked_sent++;
    }
    fprintf(stderr,
            "%s: %d messages, %lld in the stream, lost %lld, duplicates %lld, foreign %lld, "
            "order violations %lld, sent but not in the stream %lld\n",
            stream, t->n, (long long)in_stream, (long long)lost, (long long)dups,
            (long long)t->foreign, (long long)t->violations, (long long)unacked_sent);
    ASSERT_EQ(unacked_sent, 0);
    ASSERT_EQ(t->foreign, 0);
    ASSERT_EQ(dups, 0);
    ASSERT_EQ(t->violations, 0);
    if (drained) ASSERT_EQ(lost, 0);
}

static int run_relay(const char *store_url, const char *to, int once, outbox_relay **keep,
                     outbox_relay_stats *stats)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    int rc;
    outbox_relay_options_init(&o);
    o.once = once;
    o.batch_size = 64;
    o.backoff_base_ms = 1;
    o.backoff_max_ms = 5;
    o.max_attempts = 100000;
    o.on_sent = OUTBOX_ON_SENT_MARK;
    o.poll_interval_ms = 100;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_relay_new(&r, store_url, to, &o, &err), &err);
    if (keep != NULL) {
        *keep = r;
        return 0;
    }
    rc = outbox_relay_run(r, &err);
    if (rc != OUTBOX_OK) TEST_FAIL_("relay run: %s", err.message);
    if (stats) {
        outbox_relay_stats st;
        outbox_relay_get_stats(r, &st);
        stats->published += st.published;
        stats->retried += st.retried;
        stats->failed += st.failed;
        stats->batches += st.batches;
        stats->publish_errors += st.publish_errors;
    }
    outbox_relay_free(r);
    return rc;
}

static int64_t count_status(const where *w, const char *status)
{
#ifdef OUTBOX_HAVE_LIBPQ
    if (w->conn != NULL) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox.outbox WHERE status = '%s'", status);
        return pgh_count(w->conn, sql);
    }
#endif
    return ch_outbox_count(w->db_path, status);
}

/* Runs --once relays until nothing is pending (retries fall due in ms). */
static void drain(const where *w, const char *store_url, const char *to, outbox_relay_stats *stats)
{
    int runs;
    for (runs = 0; runs < 500 && count_status(w, "pending") > 0; runs++) {
        run_relay(store_url, to, 1, NULL, stats);
        ch_sleep_ms(6);
    }
    ASSERT_EQ(count_status(w, "pending"), 0);
    ASSERT_EQ(count_status(w, "failed"), 0);
}

/* ------------------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------------- */

/* Drains an outbox of `total` messages over `aggregates` aggregates into
 * `stream` while acks are dropped, and checks everything (see the top). */
static void lost_acks_case(const where *w, const char *store_url, const char *stream,
                           const char *prefix, int total, int aggregates)
{
    char to[256], subjects[64];
    outbox_relay_stats stats;
    table t;

    snprintf(subjects, sizeof subjects, "%s.>", prefix);
    nh_stream_create(&server, stream, subjects);
    snprintf(to, sizeof to, "%s?stream=%s&subject=%s.{type}", server.url, stream, prefix);
    memset(&stats, 0, sizeof stats);
    reset_log_counts();
    drain(w, store_url, to, &stats);
    fprintf(stderr,
            "%s: %d messages, %llu published, %llu retried, %llu batches; %ld acks "
            "dropped, %ld pipelined batches, %ld messages held back in them, %ld acked "
            "messages held behind a failure\n",
            stream, total, (unsigned long long)stats.published, (unsigned long long)stats.retried,
            (unsigned long long)stats.batches, atomic_load(&log_injected),
            atomic_load(&log_pipelined), atomic_load(&log_held_pipelined),
            atomic_load(&log_carried));
    ASSERT_EQ((int64_t)stats.published, (int64_t)total);
    ASSERT_EQ(sent_order_violations(w, aggregates), 0);
    check_stream(w, stream, subjects, aggregates, 1, &t);
    table_free(&t);
    /* The case under test happened: dropped acks, pipelined batches, and
     * messages held back in them behind a failure; none of those was
     * published at all (the destination keeps at most one unacknowledged
     * message per aggregate across the open batches, so none was acked). */
    ASSERT_GE(atomic_load(&log_injected), 5);
    ASSERT_GE((int64_t)stats.retried, 5);
    /* Every failed publication is counted on the pipelined path too: the
     * charged ones (retried) and those of batches that failed whole. */
    ASSERT_GE((int64_t)stats.publish_errors, (int64_t)stats.retried);
    ASSERT_GE(atomic_load(&log_pipelined), 10);
    ASSERT_GE(atomic_load(&log_held_pipelined), 1);
    ASSERT_EQ(atomic_load(&log_carried), 0);
}

TEST(lost_acks)
{
    char db[CH_PATH], store[700];
    int total = test_scaled(12000, 2000), aggregates = 8;
    where w = {db, NULL};
    ch_new_store(db, "lost_acks.db");
    fill(db, total, aggregates);
    snprintf(store, sizeof store, "sqlite:%s", db);
    lost_acks_case(&w, store, "PIPE", "pipe", total, aggregates);
}

TEST(stop)
{
    char db[CH_PATH], to[256], store[700];
    int total = test_scaled(40000, 4000), aggregates = 50;
    where w = {db, NULL};
    int64_t sent_at_stop;
    outbox_relay_stats stats;
    relay_thread x;
    table t;

    ch_new_store(db, "stop.db");
    nh_stream_create(&server, "STOP", "stop.>");
    fill(db, total, aggregates);
    snprintf(to, sizeof to, "%s?stream=STOP&subject=stop.{type}", server.url);
    snprintf(store, sizeof store, "sqlite:%s", db);
    memset(&x, 0, sizeof x);
    run_relay(store, to, 0, &x.relay, NULL);
    ASSERT_EQ(relay_thread_start(&x), 0);
    ch_sleep_ms(150);
    if (relay_thread_stop(&x) != OUTBOX_OK) TEST_FAIL_("relay run: %s", x.err.message);
    outbox_relay_free(x.relay);
    sent_at_stop = ch_outbox_count(db, "sent");
    fprintf(stderr, "stop: %lld of %d sent when the relay stopped\n", (long long)sent_at_stop,
            total);
    ASSERT(sent_at_stop > 0);
    ASSERT(sent_at_stop < total); /* stopped mid-drain, or the check proves little */
    check_stream(&w, "STOP", "stop.>", aggregates, 0, &t);
    table_free(&t);

    memset(&stats, 0, sizeof stats);
    drain(&w, store, to, &stats);
    ASSERT_EQ(sent_order_violations(&w, aggregates), 0);
    check_stream(&w, "STOP", "stop.>", aggregates, 1, &t);
    table_free(&t);
}

TEST(serial)
{
    char db[CH_PATH], to[256], store[700];
    int total = test_scaled(3000, 600), aggregates = 8;
    where w = {db, NULL};
    outbox_relay_stats stats;
    table t;

    ch_new_store(db, "serial.db");
    nh_stream_create(&server, "SERIAL", "serial.>");
    fill(db, total, aggregates);
    snprintf(to, sizeof to, "%s?stream=SERIAL&subject=serial.{type}", server.url);
    memset(&stats, 0, sizeof stats);
    reset_log_counts();
    snprintf(store, sizeof store, "sqlite:%s", db);
    setenv("OUTBOX_RELAY_PIPELINE", "0", 1);
    drain(&w, store, to, &stats);
    unsetenv("OUTBOX_RELAY_PIPELINE");
    ASSERT_EQ((int64_t)stats.published, (int64_t)total);
    ASSERT_EQ(atomic_load(&log_pipelined), 0);
    ASSERT_EQ(atomic_load(&log_carried), 0);
    ASSERT_EQ(sent_order_violations(&w, aggregates), 0);
    check_stream(&w, "SERIAL", "serial.>", aggregates, 1, &t);
    table_free(&t);
}

/* The pipelined claim as it read before the stretches between the seqs
 * in flight (NOT IN a JSON array of them): the reference for deep_claim. */
#define REFERENCE_CLAIM                                                                            \
    "SELECT seq FROM outbox o WHERE o.status = 'pending' AND o.available_at <= ?1"                 \
    " AND o.seq NOT IN (SELECT value FROM json_each(?3))"                                          \
    " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.aggregate_id = o.aggregate_id"                \
    "  AND p.seq < o.seq AND (p.status = 'failed' OR p.attempts > 0)"                              \
    "  AND ((p.status = 'pending' AND p.available_at > ?1) OR p.status = 'failed'))"               \
    " ORDER BY o.seq LIMIT ?2"

/* Is seq among the first n of seqs? */
static int has_seq(const int64_t *seqs, size_t n, int64_t seq)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (seqs[i] == seq) return 1;
    return 0;
}

/* One pipelined claim of up to batch with the seqs in flight[0..*nflight),
 * checked (see deep_claim); its seqs join the ones in flight.  Returns how
 * many it claimed. */
static size_t deep_claim_step(outbox_store *s, sqlite3 *db, int64_t now, size_t batch,
                              int64_t *flight, size_t *nflight)
{
    outbox_claim_params p = {.batch_size = batch, .now_us = now, .failed_blocks_aggregate = 1};
    outbox_error err;
    outbox_msg **msgs = NULL;
    sqlite3_stmt *ref = NULL, *earlier = NULL;
    outbox_buf json;
    size_t n = 0, i;

    memset(&err, 0, sizeof err);
    ASSERT_OK(s->ops->claim_pipelined(s->state, &p, flight, *nflight, &msgs, &n, &err), &err);
    outbox__buf_init(&json);
    outbox__buf_puts(&json, "[");
    for (i = 0; i < *nflight; i++)
        outbox__buf_printf(&json, i ? ",%lld" : "%lld", (long long)flight[i]);
    outbox__buf_puts(&json, "]");
    ASSERT(!json.oom);
    ASSERT_EQ(sqlite3_prepare_v2(db, REFERENCE_CLAIM, -1, &ref, NULL), SQLITE_OK);
    sqlite3_bind_int64(ref, 1, now);
    sqlite3_bind_int64(ref, 2, (int64_t)batch);
    sqlite3_bind_text(ref, 3, json.data, (int)json.len, SQLITE_STATIC);
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT seq FROM outbox WHERE status = 'pending'"
                                 " AND aggregate_id = ?1 AND seq < ?2",
                                 -1, &earlier, NULL),
              SQLITE_OK);
    for (i = 0; i < n; i++) {
        ASSERT_EQ(sqlite3_step(ref), SQLITE_ROW);
        ASSERT_EQ(msgs[i]->seq, sqlite3_column_int64(ref, 0));
        ASSERT(!has_seq(flight, *nflight, msgs[i]->seq));
        if (i > 0) ASSERT(msgs[i]->seq > msgs[i - 1]->seq);
        /* Guarantee 4: what comes before it in its aggregate is out
         * already, or goes out ahead of it in this batch. */
        sqlite3_bind_text(earlier, 1, msgs[i]->aggregate_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(earlier, 2, msgs[i]->seq);
        while (sqlite3_step(earlier) == SQLITE_ROW) {
            int64_t e = sqlite3_column_int64(earlier, 0);
            size_t j;
            int ahead = has_seq(flight, *nflight, e);
            for (j = 0; j < i && !ahead; j++)
                ahead = msgs[j]->seq == e;
            ASSERT(ahead);
        }
        sqlite3_reset(earlier);
    }
    ASSERT_EQ(sqlite3_step(ref), SQLITE_DONE); /* nothing more than it returned */
    sqlite3_finalize(ref);
    sqlite3_finalize(earlier);
    outbox__buf_free(&json);
    for (i = 0; i < n; i++)
        flight[(*nflight)++] = msgs[i]->seq;
    sh_free_msgs(msgs, n);
    return n;
}

TEST(deep_claim)
{
    enum { BATCH = 16, DEPTH = OUTBOX_PIPELINE_MAX_DEPTH, TOTAL = 3000, AGGREGATES = 20 };
    char db_path[CH_PATH], url[700];
    int64_t *flight = calloc(TOTAL, sizeof *flight), now = outbox__now_us();
    size_t nflight = 0, got = 0;
    outbox_store s;
    sqlite3 *db;
    int k;

    ASSERT(flight != NULL);
    ch_new_store(db_path, "deep_claim.db");
    fill(db_path, TOTAL, AGGREGATES);
    db = ch_db_open(db_path);
    /* Gaps: agg-3 waits behind a retry, agg-7 behind a Failed row, and
     * agg-11 behind a retry that falls due mid-way. */
    ch_db_exec(db, "UPDATE outbox SET attempts = 1, available_at = 9000000000000000"
                   " WHERE seq = (SELECT min(seq) FROM outbox WHERE aggregate_id = 'agg-3')"
                   " OR seq = (SELECT min(seq) + 5 * 20 FROM outbox"
                   "  WHERE aggregate_id = 'agg-11')");
    ch_db_exec(db, "UPDATE outbox SET attempts = 1, status = 'failed'"
                   " WHERE seq = (SELECT min(seq) + 5 * 20 FROM outbox"
                   "  WHERE aggregate_id = 'agg-7')");
    snprintf(url, sizeof url, "sqlite:%s", db_path);
    sh_store_open(&s, url);
    for (k = 0; k < DEPTH; k++) {
        if (k == DEPTH / 2) /* the retry below the window falls due */
            ch_db_exec(db, "UPDATE outbox SET available_at = 0 WHERE aggregate_id = 'agg-11'"
                           " AND attempts = 1");
        got += deep_claim_step(&s, db, now, BATCH, flight, &nflight);
    }
    ASSERT_EQ(got, (size_t)DEPTH * BATCH); /* the window is full: 64 batches in flight */
    ASSERT(has_seq(flight, nflight,
                   ch_db_count(db, "SELECT seq FROM outbox WHERE aggregate_id = 'agg-11'"
                                   " AND attempts = 1")));
    ASSERT(!has_seq(flight, nflight,
                    ch_db_count(db, "SELECT min(seq) + 20 FROM outbox"
                                    " WHERE aggregate_id = 'agg-3'")));
    /* With nothing in flight, the same as the plain read. */
    nflight = 0;
    ASSERT_EQ(deep_claim_step(&s, db, now, BATCH, flight, &nflight), (size_t)BATCH);
    outbox__store_close(&s);
    sqlite3_close(db);
    free(flight);
}

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;

TEST(lost_acks_pg)
{
    char store[700];
    int total = test_scaled(12000, 2000), aggregates = 8, i;
    outbox_error err;
    PGconn *conn;
    where w = {NULL, NULL};

    if (pgh_available() != NULL) {
        fprintf(stderr, "lost_acks_pg: left out: no PostgreSQL server binaries (or no 'nobody' "
                        "user to run them as root)\n");
        return;
    }
    pgh_start(&pg);
    conn = pgh_connect(&pg);
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_schema_init_pg(conn, "outbox", &err), &err);
    for (i = 0; i < total; i++) {
        outbox_msg *m = NULL;
        char agg[32], payload[64];
        if (i % 100 == 0) pgh_exec(conn, "BEGIN");
        snprintf(agg, sizeof agg, "agg-%d", i % aggregates);
        snprintf(payload, sizeof payload, "{\"n\":%d}", i);
        ASSERT_OK(outbox_msg_new(&m, "Ticked", "Clock", agg, payload, &err), &err);
        ASSERT_OK(outbox_enqueue_pg(conn, m, &err), &err);
        outbox_msg_free(m);
        if (i % 100 == 99 || i == total - 1) pgh_exec(conn, "COMMIT");
    }
    w.conn = conn;
    snprintf(store, sizeof store, "%s", pg.url);
    lost_acks_case(&w, store, "PIPEPG", "pipepg", total, aggregates);
    PQfinish(conn);
}
#endif

/* ------------------------------------------------------------------------
 * RabbitMQ and Redis Streams: the publish window of many batches
 *
 *   amqp_deep_window   a drain of 20,000 messages (scaled) over 1,000
 *                      aggregates from SQLite through amqp:// with relay
 *                      batches of 64 and max_unconfirmed 4096, so the
 *                      destination's window (publish_room) lets the relay
 *                      keep many batches open, while confirms are dropped
 *                      at random (amqp_ack_lost: the message is retried,
 *                      and the later messages of its aggregate in every
 *                      open batch are held back).  On the test's own
 *                      rabbitmq-server (tests/support/rabbitmq.h).  Then
 *                      the queue read back: lost 0, per-aggregate order of
 *                      first delivery 0 violations, nothing pending or
 *                      failed, and the relay's log shows more than two
 *                      batches open at once.
 *   redis_deep_window  the same through redis:// (window_messages 4096) on
 *                      a redis-server with AOF (tests/support/redis.h),
 *                      with replies dropped at random (redis_reply_lost:
 *                      the retry is a duplicate the script drops): the
 *                      stream read back has no message lost, none twice,
 *                      no order violation.
 * Each is left out with a message when its server is not installed.
 * ---------------------------------------------------------------------- */
#if defined(OUTBOX_HAVE_RABBITMQ) || defined(OUTBOX_HAVE_HIREDIS)

#include "internal.h" /* outbox__fault_set */

static atomic_int deep_window_max; /* "publish window: N batches open" */

static void deep_count_log(void *user, int level, const char *component, const char *message)
{
    (void)user;
    if (strncmp(message, "publish window: ", 16) == 0) {
        int open = atoi(message + 16);
        if (open > atomic_load(&deep_window_max)) atomic_store(&deep_window_max, open);
    }
    if (level >= OUTBOX_LOG_WARN && strstr(message, "injected fault") == NULL)
        fprintf(stderr, "[%s] %s\n", component, message);
}

/* Commits p->total messages over 1,000 aggregates into a fresh SQLite
 * outbox at ch_path(name), before any relay runs (a backlog to fill the
 * window with). */
static void deep_fill(ch_producer *p, char *db, const char *name)
{
    ch_path(db, name);
    ch_init_store(db);
    memset(p, 0, sizeof *p);
    p->db_path = db;
    p->total = test_scaled(20000, 2000);
    p->aggregates = 1000;
    p->max_txn = 100;
    p->seed = ch_seed();
    ch_producer_start(p);
    ch_producer_join(p);
}

/* Drains db to `to` with --once relays (batches of 64) while the fault
 * point `fault` fires with probability 0.01 (about 20 times at the smallest
 * scale, well above the 3 the checks ask for), until nothing is pending;
 * *dropped: how many times it fired. */
static void deep_drain(const char *db, const char *to, const char *fault, outbox_relay_stats *stats,
                       uint64_t *dropped)
{
    char store[700], spec[128];
    int runs;
    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(spec, sizeof spec, "%s:error:p0.01", fault);
    atomic_store(&deep_window_max, 0);
    outbox_log_set(deep_count_log, NULL, OUTBOX_LOG_DEBUG);
    memset(stats, 0, sizeof *stats);
    *dropped = 0;
    for (runs = 0; runs < 500 && ch_outbox_count(db, "pending") > 0; runs++) {
        outbox__fault_set(spec); /* fired counts from 0 */
        run_relay(store, to, 1, NULL, stats);
        *dropped += outbox__fault_fired();
        ch_sleep_ms(6);
    }
    outbox__fault_set("");
    outbox_log_set(count_log, NULL, OUTBOX_LOG_DEBUG);
    fprintf(stderr,
            "%llu published, %llu retried, %llu batches in %d relay runs; %llu faults %s; at "
            "most %d batches open\n",
            (unsigned long long)stats->published, (unsigned long long)stats->retried,
            (unsigned long long)stats->batches, runs, (unsigned long long)*dropped, fault,
            atomic_load(&deep_window_max));
    ASSERT_EQ(ch_outbox_count(db, "pending"), 0);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);
}

/* What the destination holds (read into out) against what p committed;
 * dedup: the destination drops republications (no duplicate allowed). */
static void deep_check(const char *label, const ch_producer *p, const char *out,
                       const outbox_relay_stats *stats, uint64_t dropped, int dedup)
{
    ch_report r;
    ch_check_file(out, p, &r);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, p->total);
    ASSERT_EQ(r.torn, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.violations, 0);
    if (dedup) ASSERT_EQ(r.duplicates, 0);
    ASSERT_GE((int64_t)dropped, 3);
    ASSERT_GE((int64_t)stats->retried, 3);
    ASSERT_GE(atomic_load(&deep_window_max), 3); /* more than two batches open at once */
}

#endif

#ifdef OUTBOX_HAVE_RABBITMQ

#include "support/rabbitmq.h"

TEST(amqp_deep_window)
{
    char db[CH_PATH], out[CH_PATH], to[256];
    const char *why = rmh_available();
    outbox_relay_stats stats;
    uint64_t dropped;
    rmh_server rmq;
    ch_producer p;

    if (why != NULL) {
        fprintf(stderr, "-- amqp_deep_window left out: %s\n", why);
        return;
    }
    memset(&rmq, 0, sizeof rmq);
    rmh_start(&rmq);
    rmh_declare(&rmq, "deep", "deep", "#");
    deep_fill(&p, db, "amqp_deep.db");
    snprintf(to, sizeof to, "%s?exchange=deep&max_unconfirmed=4096", rmq.url);
    deep_drain(db, to, "amqp_ack_lost", &stats, &dropped);
    ch_path(out, "amqp_deep.jsonl");
    fprintf(stderr, "amqp_deep_window: the queue held %lld\n",
            (long long)rmh_queue_drain(&rmq, "deep", out));
    /* RabbitMQ does not de-duplicate: a message whose confirm was dropped
     * is delivered twice (counted, not a failure). */
    deep_check("amqp deep window", &p, out, &stats, dropped, 0);
    ch_producer_free(&p);
    rmh_stop(&rmq);
}

#endif /* OUTBOX_HAVE_RABBITMQ */

#ifdef OUTBOX_HAVE_HIREDIS

#include "support/redis.h"

TEST(redis_deep_window)
{
    char db[CH_PATH], out[CH_PATH], to[256];
    const char *why = rh_available();
    outbox_relay_stats stats;
    uint64_t dropped;
    rh_server rs;
    ch_producer p;

    if (why != NULL) {
        fprintf(stderr, "-- redis_deep_window left out: %s\n", why);
        return;
    }
    memset(&rs, 0, sizeof rs);
    rh_server_start(&rs);
    deep_fill(&p, db, "redis_deep.db");
    snprintf(to, sizeof to, "%s?stream=deep&window_messages=4096", rs.url);
    deep_drain(db, to, "redis_reply_lost", &stats, &dropped);
    ch_path(out, "redis_deep.jsonl");
    fprintf(stderr, "redis_deep_window: the stream holds %lld\n",
            (long long)rh_stream_dump(&rs, "deep", out));
    deep_check("redis deep window", &p, out, &stats, dropped, 1); /* the script drops them */
    ch_producer_free(&p);
    rh_server_stop(&rs);
}

#endif /* OUTBOX_HAVE_HIREDIS */

int main(void)
{
    char seed[32];
    nh_require_server();
    /* Before anything reaches a fault point: the set-up is read once. */
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)ch_seed());
    fprintf(stderr, "seed %s (OUTBOX_TEST_SEED replays)\n", seed);
    setenv("OUTBOX_FAULT", "nats_ack_lost:error:p0.01", 1);
    setenv("OUTBOX_FAULT_SEED", seed, 1);
    unsetenv("OUTBOX_RELAY_PIPELINE"); /* on by default (see relay.c) */
    outbox_log_set(count_log, NULL, OUTBOX_LOG_DEBUG);
    memset(&server, 0, sizeof server);
    nh_server_start(&server);
    RUN(deep_claim);
    RUN(lost_acks);
    RUN(stop);
    RUN(serial);
#ifdef OUTBOX_HAVE_LIBPQ
    RUN(lost_acks_pg);
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
    RUN(amqp_deep_window);
#endif
#ifdef OUTBOX_HAVE_HIREDIS
    RUN(redis_deep_window);
#endif
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    nh_server_stop(&server);
    nats_Close();
    return 0;
}

#endif /* OUTBOX_HAVE_NATS && OUTBOX_FAULT_INJECTION */
