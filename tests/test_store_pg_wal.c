/*
 * test_store_pg_wal.c - the PostgreSQL store's WAL capture (capture=wal,
 * docs/WAL.md): the decoder of the encoding v1 (no server), then against a
 * real server with wal_level=logical:
 *
 *   - messages emitted by interleaved transactions are published in commit
 *     order; rolled-back transactions and other prefixes publish nothing;
 *     the slot's flush position moves past what was published;
 *   - a message the destination rejects parks its aggregate in the table
 *     (Failed), the later ones of that aggregate queue behind it (pending),
 *     other aggregates go on; a retry keeps its aggregate's later messages
 *     in memory behind it; `retry` then publishes the parked ones in order;
 *   - content with our prefix that cannot be decoded is kept as Failed;
 *   - two relays on one slot: the second refuses without --wait-lease,
 *     stands by with it, and continues when the first is SIGKILLed, with
 *     nothing lost;
 *   - (fault-point builds) the stream lost while messages are held in
 *     memory, and its first reconnect failing (fault point
 *     wal_stream_start): the slot is never confirmed past them, and they
 *     are all published once the destination takes them.
 */
#include "test.h"

#include "store/pg.h"

#ifndef OUTBOX_HAVE_LIBPQ
#define NO_PG 1
#endif

#ifndef NO_PG
#include "relay_thread.h"
#include "support/chaos.h"
#include "support/pg.h"

#include <pthread.h>
#include <signal.h>
#endif

/* ------------------------------------------------------------------------
 * Decoder
 * ---------------------------------------------------------------------- */

static const char good[] = "v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,12:order.placed,5:order,"
                           "4:o-17,16:1796584439171504,2:{},13:{\"total\": 12},";

static int decode(const char *content, outbox_error *err)
{
    outbox_pg_wal_fields f;
    return outbox__pg_wal_decode(content, strlen(content), &f, err);
}

TEST(decode_good)
{
    outbox_pg_wal_fields f;
    outbox_error err;
    outbox_msg *m = NULL;

    ASSERT_OK(outbox__pg_wal_decode(good, strlen(good), &f, &err), &err);
    ASSERT_EQ(f.len[WAL_F_ID], 36);
    ASSERT(memcmp(f.at[WAL_F_TYPE], "order.placed", 12) == 0);
    ASSERT_EQ(f.len[WAL_F_HEADERS], 2);
    ASSERT(memcmp(f.at[WAL_F_PAYLOAD], "{\"total\": 12}", 13) == 0);

    ASSERT_OK(outbox__pg_wal_message(good, strlen(good), -7, &m, &err), &err);
    ASSERT_STREQ(outbox_msg_id(m), "0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f");
    ASSERT_STREQ(outbox_msg_type(m), "order.placed");
    ASSERT_STREQ(outbox_msg_aggregate_type(m), "order");
    ASSERT_STREQ(outbox_msg_aggregate_id(m), "o-17");
    ASSERT_STREQ(outbox_msg_payload(m), "{\"total\": 12}");
    ASSERT_EQ(outbox_msg_occurred_at(m), 1796584439171504LL);
    ASSERT_EQ(outbox_msg_seq(m), -7);
    outbox_msg_free(m);

    /* An empty aggregate type and headers with a value. */
    const char *h = "v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,1:t,0:,1:a,1:0,"
                    "24:{\"correlation_id\": \"c1\"},2:[],";
    ASSERT_OK(outbox__pg_wal_message(h, strlen(h), -1, &m, &err), &err);
    ASSERT_STREQ(outbox_msg_aggregate_type(m), "");
    ASSERT_STREQ(outbox_msg_header(m, "correlation_id"), "c1");
    outbox_msg_free(m);
}

TEST(decode_bad)
{
    static const struct {
        const char *content, *expect;
    } cases[] = {
        {"", "version tag"},
        {"x1", "version tag"},
        {"v2"
         "36:",
         "version 2"},
        {"v9"
         "1:a,",
         "version 9"},
        {"v1", "ends before field 1"},
        {"v1a:b,", "decimal length"},
        {"v105:hello,", "malformed length"},
        {"v15hello,", "no ':'"},
        {"v15:hello;", "no ','"},
        {"v199:short,", "longer than"},
        {"v199999999999:x,", "malformed length"},
    };
    outbox_error err;
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err.message[0] = '\0';
        if (decode(cases[i].content, &err) == OUTBOX_OK)
            TEST_FAIL_("\"%s\" decoded", cases[i].content);
        ASSERT_CONTAINS(err.message, cases[i].expect);
    }
    /* Six fields, and bytes after the seventh. */
    ASSERT_EQ(decode("v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,1:t,0:,1:a,1:0,2:{},", &err),
              OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "field 7 (payload)");
    char longer[sizeof good + 8];
    snprintf(longer, sizeof longer, "%s1:x,", good);
    ASSERT_EQ(decode(longer, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "after the seventh field");
    /* A NUL inside a field. */
    char nul[sizeof good];
    memcpy(nul, good, sizeof good);
    nul[50] = '\0';
    outbox_pg_wal_fields f;
    ASSERT_EQ(outbox__pg_wal_decode(nul, sizeof good - 1, &f, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "NUL");

    /* Well-formed netstrings whose fields a message cannot hold. */
    outbox_msg *m = NULL;
    const char *bad_id = "v14:abcd,1:t,0:,1:a,1:0,2:{},2:{},";
    ASSERT(outbox__pg_wal_message(bad_id, strlen(bad_id), -1, &m, &err) != OUTBOX_OK);
    ASSERT_CONTAINS(err.message, "id");
    const char *bad_time = "v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,1:t,0:,1:a,2:-1,2:{},2:{},";
    ASSERT_EQ(outbox__pg_wal_message(bad_time, strlen(bad_time), -1, &m, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "occurred_at");
    const char *empty_agg = "v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,1:t,0:,0:,1:0,2:{},2:{},";
    ASSERT(outbox__pg_wal_message(empty_agg, strlen(empty_agg), -1, &m, &err) != OUTBOX_OK);
    const char *bad_headers = "v136:0190d2a4-7d3e-7b6c-9a1e-4f2b8c6d1e0f,1:t,0:,1:a,1:0,2:[],2:{},";
    ASSERT(outbox__pg_wal_message(bad_headers, strlen(bad_headers), -1, &m, &err) != OUTBOX_OK);
    ASSERT(m == NULL);
}

#ifndef NO_PG

static pgh_server server;
static char wal_url[700];

/* ------------------------------------------------------------------------
 * An in-process destination that records what it publishes
 * ---------------------------------------------------------------------- */

typedef struct sink {
    pthread_mutex_t lock;
    char ids[512][37];
    char aggs[512][16];
    int n;
    char reject_type[64]; /* a message of this type is rejected once */
    int rejected;
    char retry_type[64]; /* this one fails once with a retriable code */
    int retried;
    char hold_type[64]; /* this one fails retriably for as long as it is set */
    int held;           /* how often it did */
} sink;

static sink the_sink = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int sink_publish(void *user, const outbox_msg *m, outbox_error *err)
{
    sink *s = user;
    int rc = OUTBOX_OK;
    pthread_mutex_lock(&s->lock);
    if (!s->rejected && s->reject_type[0] && strcmp(outbox_msg_type(m), s->reject_type) == 0) {
        s->rejected = 1;
        snprintf(err->message, sizeof err->message, "refused by the test");
        rc = OUTBOX_EREJECTED;
    } else if (!s->retried && s->retry_type[0] && strcmp(outbox_msg_type(m), s->retry_type) == 0) {
        s->retried = 1;
        snprintf(err->message, sizeof err->message, "busy, says the test");
        rc = OUTBOX_EPUBLISH;
    } else if (s->hold_type[0] && strcmp(outbox_msg_type(m), s->hold_type) == 0) {
        s->held++;
        snprintf(err->message, sizeof err->message, "held back by the test");
        rc = OUTBOX_EPUBLISH;
    } else if (s->n < 512) {
        snprintf(s->ids[s->n], 37, "%s", outbox_msg_id(m));
        snprintf(s->aggs[s->n], 16, "%s", outbox_msg_aggregate_id(m));
        s->n++;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int sink_count(void)
{
    pthread_mutex_lock(&the_sink.lock);
    int n = the_sink.n;
    pthread_mutex_unlock(&the_sink.lock);
    return n;
}

static void sink_reset(void)
{
    pthread_mutex_lock(&the_sink.lock);
    the_sink.n = 0;
    the_sink.reject_type[0] = the_sink.retry_type[0] = the_sink.hold_type[0] = '\0';
    the_sink.rejected = the_sink.retried = the_sink.held = 0;
    pthread_mutex_unlock(&the_sink.lock);
}

static void wait_published(int n, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    while (sink_count() < n) {
        if (ch_now_ms() > deadline)
            TEST_FAIL_("%d of %d messages published after %lld ms", sink_count(), n,
                       (long long)timeout_ms);
        ch_sleep_ms(20);
    }
}

static void start_relay(relay_thread *t)
{
    outbox_relay_options o;
    outbox_error err;
    memset(t, 0, sizeof *t);
    outbox_relay_options_init(&o);
    o.publish = sink_publish;
    o.publish_user = &the_sink;
    o.backoff_base_ms = 50;
    o.backoff_max_ms = 200;
    o.poll_interval_ms = 100;
    ASSERT_OK(outbox_relay_new(&t->relay, wal_url, NULL, &o, &err), &err);
    ASSERT_EQ(relay_thread_start(t), 0);
}

static void stop_relay(relay_thread *t)
{
    ASSERT_EQ(relay_thread_stop(t), OUTBOX_OK);
    outbox_relay_free(t->relay);
}

/* Emits one message (type, aggregate) on c, in its open transaction;
 * its id into id. */
static void emit(PGconn *c, const char *type, const char *agg, char id[37])
{
    outbox_msg *m = NULL;
    outbox_error err;
    char why[300];
    ASSERT_OK(outbox_msg_new(&m, type, "T", agg, "{\"x\": 1}", &err), &err);
    snprintf(id, 37, "%s", outbox_msg_id(m));
    if (pgh_emit(c, "outbox", m, why, sizeof why) != 0) TEST_FAIL_("emit: %s", why);
    outbox_msg_free(m);
}

static int64_t count_sql(const char *sql)
{
    PGconn *c = pgh_connect(&server);
    int64_t n = pgh_count(c, sql);
    PQfinish(c);
    return n;
}

/* The WAL position function fn (pg_current_wal_lsn, ...) returns, as text. */
static void wal_position(PGconn *c, const char *fn, char lsn[64])
{
    char sql[80];
    snprintf(sql, sizeof sql, "SELECT %s()", fn);
    PGresult *res = PQexec(c, sql);
    ASSERT_EQ(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(lsn, 64, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* ------------------------------------------------------------------------ */

TEST(commit_order)
{
    PGconn *a = pgh_connect(&server), *b = pgh_connect(&server);
    char ids[8][37], rolled[37], lsn[64];

    sink_reset();
    relay_thread t;
    start_relay(&t);
    /* a: BEGIN a1 ... b: BEGIN b1 COMMIT ... a: a2 COMMIT: b1, a1, a2. */
    pgh_exec(a, "BEGIN");
    emit(a, "first", "agg-a", ids[1]);
    pgh_exec(b, "BEGIN");
    emit(b, "second", "agg-b", ids[0]);
    pgh_exec(b, "COMMIT");
    emit(a, "third", "agg-a", ids[2]);
    pgh_exec(a, "COMMIT");
    /* Rolled back: never published; another prefix: ignored. */
    pgh_exec(b, "BEGIN");
    emit(b, "rolled", "agg-b", rolled);
    pgh_exec(b, "ROLLBACK");
    pgh_exec(b, "SELECT pg_logical_emit_message(true, 'outbox:other', 'v1whatever')");
    pgh_exec(b, "SELECT pg_logical_emit_message(true, 'someone-else', 'hello')");
    /* Autocommit messages of two aggregates. */
    emit(b, "fourth", "agg-c", ids[3]);
    emit(a, "fifth", "agg-a", ids[4]);
    wal_position(a, "pg_current_wal_lsn", lsn);
    emit(b, "sixth", "agg-b", ids[5]);

    wait_published(6, 30000);
    ch_sleep_ms(300); /* nothing more comes */
    stop_relay(&t);
    ASSERT_EQ(sink_count(), 6);
    for (int i = 0; i < 6; i++)
        ASSERT_STREQ(the_sink.ids[i], ids[i]);
    /* Nothing went to the table; the slot confirmed past what was sent. */
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox"), 0);
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'"
             " AND confirmed_flush_lsn > '%s'::pg_lsn AND NOT active",
             lsn);
    ASSERT_EQ(count_sql(sql), 1);

    /* A restart publishes nothing again. */
    start_relay(&t);
    ch_sleep_ms(1000);
    stop_relay(&t);
    ASSERT_EQ(sink_count(), 6);
    PQfinish(a);
    PQfinish(b);
}

static void show_table(void)
{
    PGconn *c = pgh_connect(&server);
    PGresult *r = PQexec(c, "SELECT seq, id, type, aggregate_id, status, attempts, last_error"
                            " FROM outbox.outbox ORDER BY seq");
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, "  row %s %s %s %s %s %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
                PQgetvalue(r, i, 6));
    PQclear(r);
    PQfinish(c);
}

/* Position of id in what the sink published, -1 when absent. */
static int published_at(const char *id)
{
    for (int i = 0; i < sink_count(); i++)
        if (strcmp(the_sink.ids[i], id) == 0) return i;
    return -1;
}

TEST(rejected_parks_aggregate)
{
    PGconn *c = pgh_connect(&server);
    char x[4][37], y[3][37], z[3][37];
    outbox_store *store = NULL;
    outbox_error err;
    int64_t count = 0;

    sink_reset();
    snprintf(the_sink.reject_type, sizeof the_sink.reject_type, "x-bad");
    snprintf(the_sink.retry_type, sizeof the_sink.retry_type, "z-busy");
    relay_thread t;
    start_relay(&t);
    pgh_exec(c, "BEGIN");
    emit(c, "x-ok", "agg-x", x[0]);
    emit(c, "y", "agg-y", y[0]);
    emit(c, "z-busy", "agg-z", z[0]);
    emit(c, "x-bad", "agg-x", x[1]);
    emit(c, "z", "agg-z", z[1]);
    pgh_exec(c, "COMMIT");
    emit(c, "x-later", "agg-x", x[2]);
    emit(c, "y", "agg-y", y[1]);
    emit(c, "z", "agg-z", z[2]);
    emit(c, "x-later", "agg-x", x[3]);
    emit(c, "y", "agg-y", y[2]);
    /* x0, y0..2, z0..2 published (z0 after its retry, z1 and z2 behind
     * it); x1 Failed in the table, x2 and x3 pending behind it. */
    wait_published(7, 30000);
    int64_t deadline = ch_now_ms() + 10000;
    while (count_sql("SELECT count(*) FROM outbox.outbox") < 3 && ch_now_ms() < deadline)
        ch_sleep_ms(50);
    ch_sleep_ms(500);
    ASSERT_EQ(sink_count(), 7);
    ASSERT_EQ(published_at(x[1]), -1);
    ASSERT_EQ(published_at(x[2]), -1);
    ASSERT(published_at(x[0]) >= 0);
    for (int i = 0; i < 3; i++)
        ASSERT(published_at(y[i]) >= 0);
    ASSERT(published_at(z[0]) < published_at(z[1]));
    ASSERT(published_at(z[1]) < published_at(z[2]));
    ASSERT_EQ(the_sink.retried, 1);
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox.outbox WHERE id = '%s' AND status = 'failed'"
             " AND attempts = 1 AND last_error LIKE '%%refused by the test%%'",
             x[1]);
    if (count_sql("SELECT count(*) FROM outbox.outbox") != 3) show_table();
    ASSERT_EQ(count_sql(sql), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox.outbox WHERE status = 'pending' AND attempts = 0"
             " AND seq > (SELECT seq FROM outbox.outbox WHERE id = '%s')"
             " AND id IN ('%s', '%s')",
             x[1], x[2], x[3]);
    ASSERT_EQ(count_sql(sql), 2);
    snprintf(sql, sizeof sql,
             "SELECT ((SELECT seq FROM outbox.outbox WHERE id = '%s') <"
             " (SELECT seq FROM outbox.outbox WHERE id = '%s'))::int",
             x[2], x[3]);
    ASSERT_EQ(count_sql(sql), 1);

    /* `retry`: the relay publishes x1, x2, x3 from the table in order, and
     * the aggregate flows from the WAL again. */
    ASSERT_OK(outbox_store_open(wal_url, &store, &err), &err);
    ASSERT_OK(outbox_store_retry(store, NULL, 0, 1, &count, &err), &err);
    ASSERT_EQ(count, 1);
    outbox_store_close(store);
    wait_published(10, 30000);
    ASSERT(published_at(x[1]) < published_at(x[2]));
    ASSERT(published_at(x[2]) < published_at(x[3]));
    deadline = ch_now_ms() + 10000;
    while (count_sql("SELECT count(*) FROM outbox.outbox") > 0 && ch_now_ms() < deadline)
        ch_sleep_ms(50);
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox"), 0);
    char later[37];
    emit(c, "x-free", "agg-x", later);
    wait_published(11, 30000);
    ASSERT_STREQ(the_sink.ids[10], later);
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox"), 0);
    stop_relay(&t);
    PQfinish(c);
}

TEST(undecodable_is_failed)
{
    PGconn *c = pgh_connect(&server);
    char ok[37];

    sink_reset();
    relay_thread t;
    start_relay(&t);
    pgh_exec(c, "SELECT pg_logical_emit_message(true, 'outbox:outbox', 'v1garbage')");
    emit(c, "after", "agg-u", ok);
    wait_published(1, 30000);
    ASSERT_STREQ(the_sink.ids[0], ok);
    int64_t deadline = ch_now_ms() + 10000;
    while (count_sql("SELECT count(*) FROM outbox.outbox") < 1 && ch_now_ms() < deadline)
        ch_sleep_ms(50);
    stop_relay(&t);
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox WHERE status = 'failed'"
                        " AND type = 'outbox.undecodable' AND aggregate_id LIKE 'wal:%'"
                        " AND payload = to_jsonb('v1garbage'::text)"
                        " AND last_error LIKE '%cannot be decoded%'"),
              1);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

/* `relay --once` drains what was emitted before it started, then exits. */
TEST(once_drains)
{
    PGconn *c = pgh_connect(&server);
    char ids[3][37], out[CH_PATH], errp[CH_PATH], to[CH_PATH + 8];
    size_t len = 0;

    ch_path(out, "once.jsonl");
    ch_path(errp, "once.err");
    snprintf(to, sizeof to, "file:%s", out);
    for (int i = 0; i < 3; i++)
        emit(c, "once", "agg-once", ids[i]);
    const char *argv[] = {test_outbox_bin(), "relay", "--store", wal_url, "--to", to,
                          "--once",          NULL};
    int code = ch_run(argv, NULL, NULL, errp, 60000);
    if (code != 0) ch_dump("relay --once stderr", errp);
    ASSERT_EQ(code, 0);
    char *text = test_read_file(out, &len);
    ASSERT(text != NULL);
    const char *at = text;
    for (int i = 0; i < 3; i++) {
        at = strstr(at, ids[i]);
        if (!at) TEST_FAIL_("message %d of 3 is not in order in %s", i + 1, out);
    }
    free(text);
    PQfinish(c);
}

/* Two relay processes on one slot: without --wait-lease the second one
 * refuses; with it, it stands by and takes over when the first is killed. */
TEST(standby_takes_over)
{
    char out1[CH_PATH], out2[CH_PATH], err1[CH_PATH], err2[CH_PATH], err3[CH_PATH], all[CH_PATH];
    ch_path(out1, "standby-1.jsonl");
    ch_path(out2, "standby-2.jsonl");
    ch_path(all, "standby-all.jsonl");
    ch_path(err1, "standby-1.err");
    ch_path(err2, "standby-2.err");
    ch_path(err3, "standby-3.err");
    char to1[CH_PATH + 8], to2[CH_PATH + 8];
    snprintf(to1, sizeof to1, "file:%s", out1);
    snprintf(to2, sizeof to2, "file:%s", out2);
    const char *argv1[] = {test_outbox_bin(), "relay", "--store", wal_url, "--to", to1,
                           "--lease-ttl",     "2s",    NULL};
    const char *argv2[] = {test_outbox_bin(), "relay", "--store",      wal_url, "--to", to2,
                           "--lease-ttl",     "2s",    "--wait-lease", NULL};
    const char *argv3[] = {test_outbox_bin(), "relay", "--store", wal_url, "--to", to2,
                           "--lease-ttl",     "2s",    NULL};

    ch_producer p;
    memset(&p, 0, sizeof p);
    p.pg_conninfo = server.conninfo;
    p.pg_emit = 1;
    p.total = test_scaled(20000, 2000);
    p.aggregates = 100;
    p.max_txn = 20;
    p.pause_us = 200;
    p.seed = ch_seed();

    pid_t first = ch_spawn(argv1, NULL, NULL, err1);
    ASSERT(ch_wait_file_contains(err1, "streaming slot", 30000));
    int code = ch_run(argv3, NULL, NULL, err3, 30000);
    ASSERT(code != 0);
    ch_dump("second relay without --wait-lease", err3);
    ASSERT(ch_wait_file_contains(err3, "--wait-lease", 1000));
    pid_t second = ch_spawn(argv2, NULL, NULL, err2);
    ASSERT(ch_wait_file_contains(err2, "waiting for the lease", 30000));

    ch_producer_start(&p);
    ch_sleep_ms(1500);
    ASSERT_EQ(ch_kill9(first), 137);
    ASSERT(ch_wait_file_contains(err2, "streaming slot", 30000));
    ch_producer_join(&p);

    ch_report r;
    const char *files[] = {out1, out2, NULL};
    int64_t deadline = ch_now_ms() + 120000;
    for (;;) {
        ch_concat(all, files);
        ch_check_file(all, &p, &r);
        if (r.lost == 0 || ch_now_ms() > deadline) break;
        ch_sleep_ms(500);
    }
    ch_relays_stop(&second, 1, &err2);
    ch_report_print("standby", &r);
    ASSERT_EQ(r.expected, p.total);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox"), 0);
    ch_producer_free(&p);
}

#ifdef OUTBOX_FAULT_INJECTION

/* The slot's walsender pid, 0 while no stream is active. */
static int64_t walsender_pid(void)
{
    return count_sql("SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots"
                     " WHERE slot_name = 'outbox_outbox' AND active");
}

static int held_count(void)
{
    pthread_mutex_lock(&the_sink.lock);
    int n = the_sink.held;
    pthread_mutex_unlock(&the_sink.lock);
    return n;
}

/* The stream is lost while a transaction's messages are in memory, not
 * yet published, and the first reconnect fails.  Dropping the queue used
 * to leave the stream position at the lost stream's end, so the claims
 * made while the stream was down advanced the flush position over the
 * dropped messages: the stream restarted after them and the slot was
 * confirmed past them (lost).  The crash test caught it only when a
 * claim happened to fall into the reconnect pause; the failed reconnect
 * (fault point wal_stream_start) makes that certain. */
TEST(lost_stream_keeps_held_messages)
{
    PGconn *c = pgh_connect(&server);
    char held[3][37], other[2][37], lsn[64], sql[300];
    int64_t pid, deadline;
    relay_thread t;

    sink_reset();
    snprintf(the_sink.hold_type, sizeof the_sink.hold_type, "held");
    start_relay(&t);
    deadline = ch_now_ms() + 30000;
    while ((pid = walsender_pid()) == 0 && ch_now_ms() < deadline)
        ch_sleep_ms(20);
    ASSERT(pid != 0);

    /* One transaction: three held messages of one aggregate and one of
     * another, which is published; then one more transaction.  lsn: the
     * end of the held messages' records, before the commit's: a slot
     * confirmed past it would skip the transaction on its next start. */
    pgh_exec(c, "BEGIN");
    emit(c, "held", "agg-held", held[0]);
    emit(c, "free", "agg-free", other[0]);
    emit(c, "held", "agg-held", held[1]);
    emit(c, "held", "agg-held", held[2]);
    wal_position(c, "pg_current_wal_insert_lsn", lsn);
    pgh_exec(c, "COMMIT");
    emit(c, "free", "agg-free", other[1]);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'"
             " AND confirmed_flush_lsn > '%s'::pg_lsn",
             lsn);

    /* Both transactions are in memory: the held ones were tried, the
     * others published. */
    deadline = ch_now_ms() + 30000;
    while ((held_count() == 0 || published_at(other[1]) < 0) && ch_now_ms() < deadline)
        ch_sleep_ms(20);
    ASSERT(held_count() > 0);
    ASSERT(published_at(other[0]) >= 0 && published_at(other[1]) >= 0);
    ASSERT_EQ(count_sql(sql), 0);

    /* Lose the stream; its first restart fails. */
    outbox__fault_set("wal_stream_start:error");
    ASSERT_EQ(count_sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name ="
                        " 'outbox_outbox' AND pg_terminate_backend(active_pid)"),
              1);
    deadline = ch_now_ms() + 30000;
    while (ch_now_ms() < deadline) {
        int64_t now_pid = walsender_pid();
        ASSERT_EQ(count_sql(sql), 0);
        if (outbox__fault_fired() > 0 && now_pid != 0 && now_pid != pid) break;
        ch_sleep_ms(20);
    }
    ASSERT_EQ(outbox__fault_fired(), 1);
    ASSERT(walsender_pid() != pid);
    /* Streaming again: still not confirmed past them, while they wait
     * (a status update goes out within 200 ms of a move). */
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(count_sql(sql), 0);
        ch_sleep_ms(20);
    }
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(published_at(held[i]), -1);

    /* The destination takes them: all three, in order. */
    pthread_mutex_lock(&the_sink.lock);
    the_sink.hold_type[0] = '\0';
    pthread_mutex_unlock(&the_sink.lock);
    deadline = ch_now_ms() + 30000;
    while (published_at(held[2]) < 0 && ch_now_ms() < deadline)
        ch_sleep_ms(20);
    stop_relay(&t);
    outbox__fault_set(NULL);
    for (int i = 0; i < 3; i++)
        if (published_at(held[i]) < 0)
            TEST_FAIL_("held message %d of 3 was never published (lost with the stream)", i + 1);
    ASSERT(published_at(held[0]) < published_at(held[1]));
    ASSERT(published_at(held[1]) < published_at(held[2]));
    /* Confirmed now: the relay stopped with nothing in memory. */
    ASSERT_EQ(count_sql(sql), 1);
    ASSERT_EQ(count_sql("SELECT count(*) FROM outbox.outbox"), 0);
    PQfinish(c);
}

#endif /* OUTBOX_FAULT_INJECTION */

#endif /* NO_PG */

static void log_stderr(void *user, int level, const char *component, const char *message)
{
    (void)user;
    fprintf(stderr, "  [%s %s] %s\n", outbox_log_level_name(level), component, message);
}

int main(void)
{
    /* The library's log on stderr (OUTBOX_TEST_DEBUG=1: debug lines too). */
    outbox_log_set(log_stderr, NULL,
                   getenv("OUTBOX_TEST_DEBUG") ? OUTBOX_LOG_DEBUG : OUTBOX_LOG_INFO);
    RUN(decode_good);
    RUN(decode_bad);
#ifdef NO_PG
    fprintf(stderr, "skipped the server cases: this build has no PostgreSQL store\n");
    return 0;
#else
    if (pgh_available() != NULL) {
        fprintf(stderr, "skipped the server cases: %s\n", pgh_available());
        return 0;
    }
    pgh_start(&server);
    snprintf(wal_url, sizeof wal_url, "%s?capture=wal", server.url);
    pgh_init_wal(&server);
    RUN(commit_order);
    RUN(rejected_parks_aggregate);
    RUN(undecodable_is_failed);
    RUN(once_drains);
    RUN(standby_takes_over);
#ifdef OUTBOX_FAULT_INJECTION
    RUN(lost_stream_keeps_held_messages);
#else
    fprintf(stderr, "skipped lost_stream_keeps_held_messages: this build has no fault points\n");
#endif
    return 0;
#endif
}
