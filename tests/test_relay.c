/*
 * test_relay.c - the relay against the real SQLite store: delivery of
 * committed messages only, field fidelity, per-aggregate order under random
 * failures, retry/backoff/Failed, requeue, on_sent mark, stop, in-process
 * wake-up, the lease, and the file destination (incl. torn-line repair).
 *
 * Most cases use the callback destination, which records every call.
 */
#include "internal.h"
#include "log_capture.h"
#include "relay_thread.h"
#include "test.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

typedef struct call {
    char id[37];
    char type[64];
    char aggregate_type[64];
    char aggregate_id[64];
    char *payload;
    char *headers;
    int64_t occurred_at;
    int64_t at_us; /* monotonic time of the call */
    int result;
} call;

/* What the publish callback records and how it answers. */
typedef struct recorder {
    pthread_mutex_t lock;
    call *calls;
    size_t n, cap;
    double fail_rate;   /* random retriable failures */
    uint64_t rng;       /* seeded */
    char reject_id[37]; /* this id gets reject_code */
    int reject_code;
    int reject_times; /* > 0: only that many times */
    int fail_all;     /* every call fails with fail_all_code (a destination outage) */
    int fail_all_code;
} recorder;

static void rec_init(recorder *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->rng = 12345;
}

static void rec_free(recorder *r)
{
    size_t i;
    for (i = 0; i < r->n; i++) {
        free(r->calls[i].payload);
        free(r->calls[i].headers);
    }
    free(r->calls);
    pthread_mutex_destroy(&r->lock);
}

static size_t rec_count(recorder *r)
{
    size_t n;
    pthread_mutex_lock(&r->lock);
    n = r->n;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Number of successful calls for id. */
static int rec_ok_count(recorder *r, const char *id)
{
    size_t i;
    int k = 0;
    pthread_mutex_lock(&r->lock);
    for (i = 0; i < r->n; i++)
        if (strcmp(r->calls[i].id, id) == 0 && r->calls[i].result == OUTBOX_OK) k++;
    pthread_mutex_unlock(&r->lock);
    return k;
}

static double rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0;
}

static int record_publish(void *user, const outbox_msg *m, outbox_error *err)
{
    recorder *r = user;
    call *c;
    int result = OUTBOX_OK;

    pthread_mutex_lock(&r->lock);
    if (r->fail_all) {
        result = r->fail_all_code;
        outbox__error(err, result, "the broker is unreachable");
    } else if (r->reject_id[0] && strcmp(r->reject_id, outbox_msg_id(m)) == 0) {
        result = r->reject_code;
        outbox__error(err, result, "destination says no to %s", outbox_msg_id(m));
        if (r->reject_times > 0 && --r->reject_times == 0) r->reject_id[0] = '\0';
    } else if (r->fail_rate > 0 && rnd(&r->rng) < r->fail_rate) {
        result = OUTBOX_EPUBLISH;
        outbox__error(err, result, "random failure");
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->calls = realloc(r->calls, r->cap * sizeof *r->calls);
        if (!r->calls) TEST_FAIL_("out of memory");
    }
    c = &r->calls[r->n++];
    memset(c, 0, sizeof *c);
    snprintf(c->id, sizeof c->id, "%s", outbox_msg_id(m));
    snprintf(c->type, sizeof c->type, "%s", outbox_msg_type(m));
    snprintf(c->aggregate_type, sizeof c->aggregate_type, "%s", outbox_msg_aggregate_type(m));
    snprintf(c->aggregate_id, sizeof c->aggregate_id, "%s", outbox_msg_aggregate_id(m));
    c->payload = strdup(outbox_msg_payload(m));
    c->headers = strdup(outbox_msg_headers_json(m));
    c->occurred_at = outbox_msg_occurred_at(m);
    c->at_us = outbox__monotonic_us();
    c->result = result;
    pthread_mutex_unlock(&r->lock);
    return result;
}

/* Keeps ASSERT_OK's NULL check meaningful for addresses of locals. */
static outbox_error *errp(outbox_error *e)
{
    return e;
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    if (sqlite3_open(path, &db) != SQLITE_OK) TEST_FAIL_("cannot open %s", path);
    sqlite3_busy_timeout(db, 5000);
    ASSERT_OK(outbox_schema_init_sqlite(db, err), err);
    return db;
}

static void exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) TEST_FAIL_("%s: %s", sql, msg);
}

/* Enqueues one message in the open transaction; copies its id to id_out. */
static void enqueue(sqlite3 *db, const char *type, const char *agg, const char *payload,
                    char id_out[37])
{
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_msg *m = NULL;
    ASSERT_OK(outbox_msg_new(&m, type, "Order", agg, payload, err), err);
    ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
    if (id_out) snprintf(id_out, 37, "%s", outbox_msg_id(m));
    outbox_msg_free(m);
}

static const char *store_url(const char *db_path)
{
    static char url[700];
    snprintf(url, sizeof url, "sqlite:%s", db_path);
    return url;
}

static outbox_relay *new_relay(const char *db_path, recorder *rec, outbox_relay_options *o)
{
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay *relay = NULL;
    o->publish = record_publish;
    o->publish_user = rec;
    ASSERT_OK(outbox_relay_new(&relay, store_url(db_path), NULL, o, err), err);
    return relay;
}

static void run_once(const char *db_path, recorder *rec, outbox_relay_options *o)
{
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay *relay;
    o->once = 1;
    relay = new_relay(db_path, rec, o);
    ASSERT_OK(outbox_relay_run(relay, err), err);
    outbox_relay_free(relay);
}

static void runner_start(relay_thread *r, outbox_relay *relay)
{
    memset(r, 0, sizeof *r);
    r->relay = relay;
    if (relay_thread_start(r) != 0) TEST_FAIL_("pthread_create");
}

/* Stops the relay, frees it; run()'s result. */
static int runner_stop(relay_thread *r)
{
    int rc = relay_thread_stop(r);
    outbox_relay_free(r->relay);
    r->relay = NULL;
    return rc;
}

/* Reads one message's stored state through the store driver. */
static outbox_msg *store_get(const char *db_path, const char *id)
{
    outbox_store st;
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_msg *m = NULL;
    ASSERT_OK(outbox__store_open(&st, store_url(db_path), err), err);
    if (st.ops->get(st.state, id, &m, err) != OUTBOX_OK) m = NULL;
    outbox__store_close(&st);
    return m;
}

static int64_t count_rows(sqlite3 *db, const char *where)
{
    char sql[256];
    sqlite3_stmt *s = NULL;
    int64_t n = -1;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox WHERE %s", where);
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) TEST_FAIL_("%s", sql);
    if (sqlite3_step(s) == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

static void opts_fast(outbox_relay_options *o)
{
    outbox_relay_options_init(o);
    o->backoff_base_ms = 1;
    o->backoff_max_ms = 5;
    o->change_check_ms = 2;
    o->poll_interval_ms = 50;
}

/* Waits up to ms for cond(arg) to become true. */
static int wait_for(int (*cond)(void *), void *arg, int ms)
{
    int64_t end = outbox__monotonic_us() + (int64_t)ms * 1000;
    while (outbox__monotonic_us() < end) {
        if (cond(arg)) return 1;
        outbox__sleep_us(2000);
    }
    return cond(arg);
}

/* ------------------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------------- */

TEST(commit_published_once_rollback_never)
{
    const char *path = test_path("commit.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    recorder rec;
    outbox_msg *m = NULL;
    char ids[3][37], rolled[37];
    outbox_relay_stats stats;
    outbox_relay *relay;
    size_t i;

    rec_init(&rec);
    exec(db, "BEGIN");
    ASSERT_OK(
        outbox_msg_new(&m, "OrderPlaced", "Order", "o-1", "{\"total\":12.5,\"items\":[1,2]}", err),
        err);
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "c-77", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "traceparent",
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", err),
              err);
    ASSERT_OK(outbox_msg_set_occurred_at(m, 1700000000123456LL, err), err);
    ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
    snprintf(ids[0], 37, "%s", outbox_msg_id(m));
    enqueue(db, "OrderPaid", "o-1", "[1,\"two\",null]", ids[1]);
    enqueue(db, "OrderPlaced", "o-2", "\"just a string\"", ids[2]);
    exec(db, "COMMIT");
    exec(db, "BEGIN");
    enqueue(db, "OrderCancelled", "o-3", "{}", rolled);
    exec(db, "ROLLBACK");

    opts_fast(&o);
    o.once = 1;
    relay = new_relay(path, &rec, &o);
    ASSERT_OK(outbox_relay_run(relay, err), err);
    outbox_relay_get_stats(relay, &stats);
    ASSERT_EQ(stats.published, 3);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_GE(stats.batches, 1);
    /* A second run publishes nothing again. */
    ASSERT_OK(outbox_relay_run(relay, err), err);
    outbox_relay_free(relay);

    ASSERT_EQ(rec.n, 3);
    for (i = 0; i < 3; i++)
        ASSERT_STREQ(rec.calls[i].id, ids[i]);
    ASSERT_STREQ(rec.calls[0].type, "OrderPlaced");
    ASSERT_STREQ(rec.calls[0].aggregate_type, "Order");
    ASSERT_STREQ(rec.calls[0].aggregate_id, "o-1");
    ASSERT_STREQ(rec.calls[0].payload, outbox_msg_payload(m));
    ASSERT_STREQ(rec.calls[0].headers, outbox_msg_headers_json(m));
    ASSERT_CONTAINS(rec.calls[0].headers, "c-77");
    ASSERT_EQ(rec.calls[0].occurred_at, 1700000000123456LL);
    ASSERT_STREQ(rec.calls[1].payload, "[1,\"two\",null]");
    ASSERT_STREQ(rec.calls[2].payload, "\"just a string\"");
    ASSERT_STREQ(rec.calls[2].aggregate_id, "o-2");
    for (i = 0; i < rec.n; i++)
        ASSERT(strcmp(rec.calls[i].id, rolled) != 0);
    ASSERT_EQ(count_rows(db, "1"), 0); /* on_sent delete */

    outbox_msg_free(m);
    rec_free(&rec);
    sqlite3_close(db);
}

TEST(options_and_urls_checked_at_start)
{
    const char *path = test_path("opts.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    recorder rec;
    char bad_file[700];

    rec_init(&rec);
    outbox_relay_options_init(&o);
    o.batch_size = 0;
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "stdout:", &o, err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err->message, "batch_size");
    ASSERT(relay == NULL);

    outbox_relay_options_init(&o);
    o.lease_ttl_ms = 10;
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "stdout:", &o, err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err->message, "lease_ttl_ms");

    outbox_relay_options_init(&o);
    o.backoff_max_ms = 1;
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "stdout:", &o, err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err->message, "backoff_max_ms");

    outbox_relay_options_init(&o);
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), NULL, &o, err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err->message, "destination");
    o.publish = record_publish;
    o.publish_user = &rec;
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "stdout:", &o, err), OUTBOX_ECONFIG);

    outbox_relay_options_init(&o);
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "carrier-pigeon:x", &o, err),
              OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "file:");
#ifndef OUTBOX_HAVE_NATS
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "nats://u:hunter2@h:4222", &o, err),
              OUTBOX_ENOTBUILT);
    ASSERT_CONTAINS(err->message, "this build has no");
#else
    /* Built with nats.c: nothing listens on port 1, a start-up failure. */
    ASSERT(outbox_relay_new(&relay, store_url(path), "nats://u:hunter2@127.0.0.1:1", &o, err) !=
           OUTBOX_OK);
#endif
    ASSERT(strstr(err->message, "hunter2") == NULL);
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), "file:", &o, err), OUTBOX_EBADURL);
    snprintf(bad_file, sizeof bad_file, "file:%s", test_path("no/such/dir/events.jsonl"));
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), bad_file, &o, err), OUTBOX_EIO);
    ASSERT_CONTAINS(err->message, "cannot open");
    ASSERT(relay == NULL);

    ASSERT_OK(outbox_relay_new(&relay, store_url(path), "discard:", NULL, err), err);
    outbox_relay_free(relay);
    outbox_relay_free(NULL);
    rec_free(&rec);
    sqlite3_close(db);
}

/* Per-aggregate order under random (seeded) failures with tiny backoff. */
TEST(per_aggregate_order_under_random_failures)
{
    enum { AGGS = 12, PER = 25 };
    const char *path = test_path("order.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o;
    recorder rec;
    static char ids[AGGS * PER][37];
    int agg_of[AGGS * PER], idx_of[AGGS * PER];
    int first_seen[AGGS * PER], ok_seen[AGGS * PER];
    int next_first[AGGS], next_ok[AGGS];
    int violations = 0, ok_violations = 0, rounds = 0;
    size_t i, k;
    int64_t end;

    rec_init(&rec);
    rec.fail_rate = 0.3;
    rec.rng = 20261128;
    /* Interleaved aggregates, several transactions. */
    for (k = 0; k < (size_t)(AGGS * PER); k++) {
        char agg[32];
        if (k % 40 == 0) exec(db, "BEGIN");
        agg_of[k] = (int)(k % AGGS);
        idx_of[k] = (int)(k / AGGS);
        snprintf(agg, sizeof agg, "agg-%d", agg_of[k]);
        enqueue(db, "Step", agg, "{\"n\":1}", ids[k]);
        if (k % 40 == 39 || k == AGGS * PER - 1) exec(db, "COMMIT");
    }

    opts_fast(&o);
    o.batch_size = 16;
    o.max_attempts = 1000;
    end = outbox__monotonic_us() + 60 * 1000000LL;
    while (count_rows(db, "1") > 0 && outbox__monotonic_us() < end) {
        run_once(path, &rec, &o);
        outbox__sleep_us(3000);
        rounds++;
    }
    ASSERT_EQ(count_rows(db, "1"), 0);

    memset(first_seen, 0, sizeof first_seen);
    memset(ok_seen, 0, sizeof ok_seen);
    memset(next_first, 0, sizeof next_first);
    memset(next_ok, 0, sizeof next_ok);
    for (i = 0; i < rec.n; i++) {
        size_t m;
        for (m = 0; m < (size_t)(AGGS * PER); m++)
            if (strcmp(ids[m], rec.calls[i].id) == 0) break;
        ASSERT(m < (size_t)(AGGS * PER));
        if (!first_seen[m]) {
            first_seen[m] = 1;
            if (idx_of[m] != next_first[agg_of[m]]) violations++;
            next_first[agg_of[m]] = idx_of[m] + 1;
        }
        if (rec.calls[i].result == OUTBOX_OK) {
            ASSERT_EQ(ok_seen[m], 0); /* confirmed once, never published again */
            ok_seen[m] = 1;
            if (idx_of[m] != next_ok[agg_of[m]]) ok_violations++;
            next_ok[agg_of[m]] = idx_of[m] + 1;
        }
    }
    for (k = 0; k < (size_t)(AGGS * PER); k++)
        ASSERT_EQ(ok_seen[k], 1);
    ASSERT_EQ(violations, 0);
    ASSERT_EQ(ok_violations, 0);
    ASSERT(rec.n > (size_t)(AGGS * PER)); /* failures did happen */
    fprintf(stderr, "   %zu calls for %d messages in %d runs\n", rec.n, AGGS * PER, rounds);
    rec_free(&rec);
    sqlite3_close(db);
}

/* A message that keeps failing while others in its batches succeed: each
 * failure spends an attempt (guarantee 5), the last one moves it to Failed
 * with its error, and its aggregate is held or not by the option.  Each
 * round is a --once run with a companion message of a fresh aggregate, so
 * the poison message never is alone in its batch (alone, its failure would
 * be the destination's outage: see outage_charges_nothing). */
static void poison_case(int failed_blocks)
{
    const char *path = test_path(failed_blocks ? "poison1.db" : "poison0.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    recorder rec;
    char p1[37], p2[37], q1[37], q2[37];
    int round;
    size_t i;
    outbox_msg *m;
    outbox_store st;
    int64_t count = 0;
    const char *ids_arg[1];

    rec_init(&rec);
    exec(db, "BEGIN");
    enqueue(db, "A", "P", "{}", p1);
    enqueue(db, "B", "Q", "{}", q1);
    enqueue(db, "C", "P", "{}", p2);
    enqueue(db, "D", "Q", "{}", q2);
    exec(db, "COMMIT");
    snprintf(rec.reject_id, sizeof rec.reject_id, "%s", p1);
    rec.reject_code = OUTBOX_EPUBLISH;

    /* A long backoff keeps p1 out of the claims that follow its failure in
     * the same run (alone, it would be an outage); the test then makes it
     * due by hand. */
    outbox_relay_options_init(&o);
    o.max_attempts = 4;
    o.backoff_base_ms = 600000;
    o.backoff_max_ms = 600000;
    o.failed_blocks_aggregate = failed_blocks;
    for (round = 1; round <= 4; round++) {
        char agg[16], sql[160];
        if (round > 1) {
            snprintf(agg, sizeof agg, "C-%d", round);
            exec(db, "BEGIN");
            enqueue(db, "Companion", agg, "{}", NULL);
            exec(db, "COMMIT");
            snprintf(sql, sizeof sql, "UPDATE outbox SET available_at = 0 WHERE id = '%s'", p1);
            exec(db, sql);
        }
        run_once(path, &rec, &o);
        m = store_get(path, p1);
        ASSERT(m != NULL);
        ASSERT_EQ(m->attempts, round);
        ASSERT_EQ(m->status, round < 4 ? OUTBOX_STATUS_PENDING : OUTBOX_STATUS_FAILED);
        outbox_msg_free(m);
    }

    m = store_get(path, p1);
    ASSERT(m != NULL);
    ASSERT(m->last_error != NULL);
    ASSERT_CONTAINS(m->last_error, "attempt 4/4");
    ASSERT_CONTAINS(m->last_error, "destination says no");
    outbox_msg_free(m);
    ASSERT_EQ(count_rows(db, "type = 'Companion'"), 0); /* every companion went out */

    /* Other aggregate unaffected; P2 held or not by the option. */
    ASSERT_EQ(rec_ok_count(&rec, q1), 1);
    ASSERT_EQ(rec_ok_count(&rec, q2), 1);
    run_once(path, &rec, &o);
    if (failed_blocks) {
        ASSERT_EQ(rec_ok_count(&rec, p2), 0);
        m = store_get(path, p2);
        ASSERT(m != NULL && m->status == OUTBOX_STATUS_PENDING);
        outbox_msg_free(m);
    } else {
        ASSERT_EQ(rec_ok_count(&rec, p2), 1);
    }

    /* Requeue through the store's retry op: the destination accepts now. */
    pthread_mutex_lock(&rec.lock);
    rec.reject_id[0] = '\0';
    pthread_mutex_unlock(&rec.lock);
    ASSERT_OK(outbox__store_open(&st, store_url(path), err), err);
    ids_arg[0] = p1;
    ASSERT_OK(st.ops->retry(st.state, ids_arg, 1, 0, &count, err), err);
    ASSERT_EQ(count, 1);
    outbox__store_close(&st);
    run_once(path, &rec, &o);
    ASSERT_EQ(rec_ok_count(&rec, p1), 1);
    ASSERT_EQ(rec_ok_count(&rec, p2), 1);
    if (failed_blocks) {
        /* P2 published after P1 was confirmed. */
        int64_t t1 = 0, t2 = 0;
        for (i = 0; i < rec.n; i++) {
            if (rec.calls[i].result != OUTBOX_OK) continue;
            if (strcmp(rec.calls[i].id, p1) == 0) t1 = (int64_t)i + 1;
            if (strcmp(rec.calls[i].id, p2) == 0) t2 = (int64_t)i + 1;
        }
        ASSERT(t1 > 0 && t2 > t1);
    }
    ASSERT_EQ(count_rows(db, "1"), 0);
    rec_free(&rec);
    sqlite3_close(db);
}

TEST(poison_message_failed_blocks_its_aggregate)
{
    poison_case(1);
}

TEST(poison_message_failed_does_not_block)
{
    poison_case(0);
}

TEST(rejected_fails_after_one_attempt)
{
    const char *path = test_path("reject.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o;
    recorder rec;
    char r1[37], ok1[37];
    outbox_msg *m;

    rec_init(&rec);
    exec(db, "BEGIN");
    enqueue(db, "A", "R", "{}", r1);
    enqueue(db, "B", "S", "{}", ok1);
    exec(db, "COMMIT");
    snprintf(rec.reject_id, sizeof rec.reject_id, "%s", r1);
    rec.reject_code = OUTBOX_EREJECTED;
    opts_fast(&o);
    run_once(path, &rec, &o);
    ASSERT_EQ(rec.n, 2);
    m = store_get(path, r1);
    ASSERT(m != NULL);
    ASSERT_EQ(m->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(m->attempts, 1);
    ASSERT_CONTAINS(m->last_error, "attempt 1/10");
    outbox_msg_free(m);
    ASSERT(store_get(path, ok1) == NULL); /* sent and deleted */
    run_once(path, &rec, &o);             /* Failed stays Failed */
    ASSERT_EQ(rec.n, 2);
    rec_free(&rec);
    sqlite3_close(db);
}

TEST(on_sent_mark_keeps_rows)
{
    const char *path = test_path("mark.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o;
    recorder rec;
    char id[37];
    outbox_msg *m;

    rec_init(&rec);
    exec(db, "BEGIN");
    enqueue(db, "A", "M", "{}", id);
    exec(db, "COMMIT");
    opts_fast(&o);
    o.on_sent = OUTBOX_ON_SENT_MARK;
    run_once(path, &rec, &o);
    ASSERT_EQ(rec.n, 1);
    m = store_get(path, id);
    ASSERT(m != NULL);
    ASSERT_EQ(m->status, OUTBOX_STATUS_SENT);
    ASSERT(m->sent_at > 0);
    outbox_msg_free(m);
    run_once(path, &rec, &o); /* sent rows are not published again */
    ASSERT_EQ(rec.n, 1);
    rec_free(&rec);
    sqlite3_close(db);
}

TEST(stop_from_another_thread_and_lease)
{
    const char *path = test_path("stop.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o, o2;
    outbox_relay *second;
    recorder rec;
    relay_thread run;
    int64_t t0;

    rec_init(&rec);
    outbox_relay_options_init(&o);
    o.name = "relay-one";
    runner_start(&run, new_relay(path, &rec, &o));
    outbox__sleep_us(300000);

    /* A second relay on the same outbox is refused while the first lives. */
    outbox_relay_options_init(&o2);
    o2.name = "relay-two";
    o2.once = 1;
    second = new_relay(path, &rec, &o2);
    ASSERT_EQ(outbox_relay_run(second, err), OUTBOX_ELEASED);
    ASSERT_CONTAINS(err->message, "relay-one");

    t0 = outbox__monotonic_us();
    ASSERT_OK(runner_stop(&run), errp(&run.err));
    ASSERT(outbox__monotonic_us() - t0 < 2000000);

    /* The lease was released: the second relay runs at once. */
    ASSERT_OK(outbox_relay_run(second, err), err);
    outbox_relay_free(second);
    rec_free(&rec);
    sqlite3_close(db);
}

static int one_call(void *arg);

TEST(wait_for_lease_stands_by)
{
    const char *path = test_path("standby.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o1, o2;
    recorder rec1, rec2;
    relay_thread first, second;
    char id[37];
    int64_t t0;

    rec_init(&rec1);
    rec_init(&rec2);
    outbox_relay_options_init(&o1);
    o1.name = "active";
    runner_start(&first, new_relay(path, &rec1, &o1));
    outbox__sleep_us(200000);

    /* Standing by, then stopped while still waiting: returns OK at once. */
    outbox_relay_options_init(&o2);
    o2.name = "standby";
    o2.wait_for_lease = 1;
    o2.lease_ttl_ms = 1000;
    runner_start(&second, new_relay(path, &rec2, &o2));
    outbox__sleep_us(300000);
    t0 = outbox__monotonic_us();
    ASSERT_OK(runner_stop(&second), errp(&second.err));
    ASSERT(outbox__monotonic_us() - t0 < 1500000);

    /* Standing by, and taking over once the active relay stops. */
    runner_start(&second, new_relay(path, &rec2, &o2));
    outbox__sleep_us(300000);
    ASSERT_OK(runner_stop(&first), errp(&first.err));
    outbox__sleep_us(700000); /* the stand-by retries every 500 ms */
    exec(db, "BEGIN");
    enqueue(db, "AfterTakeOver", "t-1", "{}", id);
    exec(db, "COMMIT");
    ASSERT(wait_for(one_call, &rec2, 5000));
    ASSERT_STREQ(rec2.calls[0].id, id);
    ASSERT_EQ(rec1.n, 0);
    ASSERT_OK(runner_stop(&second), errp(&second.err));
    rec_free(&rec1);
    rec_free(&rec2);
    sqlite3_close(db);
}

static int one_call(void *arg)
{
    return rec_count(arg) >= 1;
}

TEST(in_process_wake_up)
{
    const char *path = test_path("wake.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o;
    recorder rec;
    relay_thread run;
    char id[37];
    outbox_relay_stats stats;

    rec_init(&rec);
    outbox_relay_options_init(&o);
    o.poll_interval_ms = 600000;
    o.change_check_ms = 600000;
    o.lease_ttl_ms = 600000; /* no renewal tick either: only the wake-up can deliver */
    runner_start(&run, new_relay(path, &rec, &o));
    outbox__sleep_us(300000); /* let it claim nothing and go idle */
    outbox_relay_get_stats(run.relay, &stats);
    ASSERT_EQ(stats.batches, 0);

    exec(db, "BEGIN");
    enqueue(db, "Woken", "w-1", "{}", id);
    exec(db, "COMMIT");
    ASSERT(wait_for(one_call, &rec, 5000));
    ASSERT_STREQ(rec.calls[0].id, id);

    /* A rollback after a wake publishes nothing. */
    exec(db, "BEGIN");
    enqueue(db, "Never", "w-2", "{}", NULL);
    exec(db, "ROLLBACK");
    outbox__sleep_us(200000);
    ASSERT_EQ(rec_count(&rec), 1);

    ASSERT_OK(runner_stop(&run), errp(&run.err));
    rec_free(&rec);
    sqlite3_close(db);
}

TEST(file_destination_lines_and_torn_tail)
{
    const char *path = test_path("file.db");
    const char *out = test_path("events.jsonl");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    char dest[700], ids[3][37];
    char *text, *line, *save = NULL;
    FILE *f;
    int n = 0;

    /* A previous run crashed mid-line. */
    f = fopen(out, "w");
    ASSERT(f != NULL);
    fputs("{\"torn\":", f);
    fclose(f);

    exec(db, "BEGIN");
    enqueue(db, "OrderPlaced", "f-1", "{\"a\":[1,2,{\"b\":null}]}", ids[0]);
    enqueue(db, "OrderPaid", "f-1", "{\"paid\":true}", ids[1]);
    enqueue(db, "OrderPlaced", "f-2", "42", ids[2]);
    exec(db, "COMMIT");

    outbox_relay_options_init(&o);
    o.once = 1;
    o.source = "/test/relay";
    snprintf(dest, sizeof dest, "file://%s", out);
    ASSERT_OK(outbox_relay_new(&relay, store_url(path), dest, &o, err), err);
    ASSERT_OK(outbox_relay_run(relay, err), err);
    outbox_relay_free(relay);

    text = test_read_file(out, NULL);
    ASSERT(text != NULL);
    ASSERT(strncmp(text, "{\"torn\":\n", 9) == 0);
    for (line = strtok_r(text + 9, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *ev = json_loads(line, 0, &jerr), *data, *want;
        ASSERT(ev != NULL);
        ASSERT(n < 3);
        ASSERT_STREQ(json_string_value(json_object_get(ev, "id")), ids[n]);
        ASSERT_STREQ(json_string_value(json_object_get(ev, "specversion")), "1.0");
        ASSERT_STREQ(json_string_value(json_object_get(ev, "source")), "/test/relay");
        ASSERT_STREQ(json_string_value(json_object_get(ev, "subject")), n < 2 ? "f-1" : "f-2");
        ASSERT_STREQ(json_string_value(json_object_get(ev, "type")),
                     n == 1 ? "OrderPaid" : "OrderPlaced");
        data = json_object_get(ev, "data");
        want = json_loads(n == 0   ? "{\"a\":[1,2,{\"b\":null}]}"
                          : n == 1 ? "{\"paid\":true}"
                                   : "42",
                          JSON_DECODE_ANY, &jerr);
        ASSERT(data != NULL && want != NULL);
        ASSERT(json_equal(data, want));
        json_decref(want);
        json_decref(ev);
        n++;
    }
    ASSERT_EQ(n, 3);
    free(text);
    ASSERT_EQ(count_rows(db, "1"), 0);
    sqlite3_close(db);
}

TEST(transport_registry_direct)
{
    outbox_transport t;
    outbox_transport_config cfg = {"/x", NULL, NULL, NULL};
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_publish_result res[2];
    outbox_msg *m[2] = {NULL, NULL};

#ifndef OUTBOX_HAVE_RDKAFKA
    ASSERT_EQ(outbox__transport_open(&t, "kafka://broker:9092", &cfg, err), OUTBOX_ENOTBUILT);
#endif
#ifndef OUTBOX_HAVE_CURL
    ASSERT_EQ(outbox__transport_open(&t, "https://u:pw@x/hook", &cfg, err), OUTBOX_ENOTBUILT);
    ASSERT(strstr(err->message, "pw@") == NULL);
#endif
    ASSERT_EQ(outbox__transport_open(&t, "gopher://u:pw@x/hook", &cfg, err), OUTBOX_EBADURL);
    ASSERT(strstr(err->message, "pw@") == NULL);
    ASSERT_EQ(outbox__transport_open(&t, "nonsense", &cfg, err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox__transport_open(&t, "stdout:extra", &cfg, err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox__transport_open(&t, NULL, &cfg, err), OUTBOX_ECONFIG);

    ASSERT_OK(outbox__transport_open(&t, "discard:", &cfg, err), err);
    ASSERT_OK(outbox_msg_new(&m[0], "T", NULL, "a", "{}", err), err);
    ASSERT_OK(outbox_msg_new(&m[1], "T", NULL, "b", "{}", err), err);
    res[0].code = res[1].code = -1;
    ASSERT_OK(t.ops->publish(t.state, m, 2, res), err);
    ASSERT_EQ(res[0].code, OUTBOX_OK);
    ASSERT_EQ(res[1].code, OUTBOX_OK);
    outbox__transport_close(&t);
    outbox__transport_close(&t); /* harmless twice */
    outbox_msg_free(m[0]);
    outbox_msg_free(m[1]);
}

/* The callback driver holds back later messages of a failed aggregate. */
static int fail_first_a(void *user, const outbox_msg *m, outbox_error *err)
{
    int *calls = user;
    (*calls)++;
    if (strcmp(outbox_msg_type(m), "first") == 0)
        return outbox__error(err, OUTBOX_EPUBLISH, "nope");
    return OUTBOX_OK;
}

TEST(callback_holds_back_in_batch)
{
    outbox_transport t;
    int calls = 0;
    outbox_transport_config cfg = {"/x", fail_first_a, &calls, NULL};
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_publish_result res[3];
    outbox_msg *m[3];

    ASSERT_OK(outbox_msg_new(&m[0], "first", NULL, "A", "{}", err), err);
    ASSERT_OK(outbox_msg_new(&m[1], "second", NULL, "B", "{}", err), err);
    ASSERT_OK(outbox_msg_new(&m[2], "third", NULL, "A", "{}", err), err);
    ASSERT_OK(outbox__transport_open(&t, NULL, &cfg, err), err);
    ASSERT_OK(t.ops->publish(t.state, m, 3, res), err);
    ASSERT_EQ(calls, 2);
    ASSERT_EQ(res[0].code, OUTBOX_EPUBLISH);
    ASSERT_STREQ(res[0].error, "nope");
    ASSERT_EQ(res[1].code, OUTBOX_OK);
    ASSERT_EQ(res[2].code, OUTBOX_EPUBLISH);
    ASSERT_CONTAINS(res[2].error, "held back");
    outbox__transport_close(&t);
    outbox_msg_free(m[0]);
    outbox_msg_free(m[1]);
    outbox_msg_free(m[2]);
}

/* Guarantee 5: a destination that fails every message of its batches is
 * down; nothing is charged (with max_attempts 2 the old rule made every
 * message Failed), the relay backs off the whole destination (bounded,
 * growing pauses), logs once when it goes down and once when it is back,
 * counts the publish errors, and then delivers everything in order. */
static int all_gone(void *arg)
{
    return count_rows(arg, "1") == 0;
}

/* The note `outbox status` shows for the lease holder; *supported says
 * whether the store keeps notes at all. */
static const char *relay_note(const char *db_path, int *supported)
{
    static outbox_status st;
    outbox_store s;
    outbox_error err_ = {0, ""}, *err = &err_;
    memset(&st, 0, sizeof st);
    ASSERT_OK(outbox__store_open(&s, store_url(db_path), err), err);
    *supported = s.ops->version >= 5 && s.ops->lease_note != NULL;
    ASSERT_OK(s.ops->status(s.state, &st, err), err);
    outbox__store_close(&s);
    return st.relay_note;
}

TEST(outage_charges_nothing)
{
    const char *path = test_path("outage.db");
    sqlite3 *db = open_db(path);
    outbox_relay_options o;
    outbox_relay_stats stats;
    recorder rec;
    relay_thread run;
    char ids[6][37];
    size_t i, calls_down;
    int k, noted = 0;

    rec_init(&rec);
    exec(db, "BEGIN");
    for (k = 0; k < 6; k++) {
        char agg[8];
        snprintf(agg, sizeof agg, "o-%d", k % 3);
        enqueue(db, "Step", agg, "{}", ids[k]);
    }
    exec(db, "COMMIT");
    rec.fail_all = 1;
    rec.fail_all_code = OUTBOX_EPUBLISH;
    log_reset();

    outbox_relay_options_init(&o);
    o.max_attempts = 2;
    o.backoff_base_ms = 20;
    o.backoff_max_ms = 160;
    o.poll_interval_ms = 50;
    runner_start(&run, new_relay(path, &rec, &o));
    outbox__sleep_us(1200000);

    /* Down for 1.2 s: nothing charged, nothing Failed. */
    ASSERT_EQ(count_rows(db, "status = 'pending' AND attempts = 0 AND last_error IS NULL"), 6);
    calls_down = rec_count(&rec);
    outbox_relay_get_stats(run.relay, &stats);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_EQ(stats.published, 0);
    /* One round is one call per aggregate (the rest are held behind). */
    ASSERT_EQ(stats.publish_errors, calls_down);
    ASSERT_EQ(calls_down % 3, 0);
    /* Bounded pauses: 10-20, 20-40, 40-80, then 80-160 ms: 8 to 16 rounds
     * in 1.2 s, not hundreds (the poll interval is 50 ms). */
    ASSERT_GE(calls_down, 3 * 6);
    ASSERT(calls_down <= 3 * 20);
    ASSERT_EQ(log_count("is down: the broker is unreachable; backing off, no attempts are "
                        "charged"),
              1);
    ASSERT_EQ(log_count("is back"), 0);
    /* The store keeps the relay's note for `outbox status` (stores with
     * lease_note). */
    {
        const char *note = relay_note(path, &noted);
        if (noted) ASSERT_CONTAINS(note, "destination down since ");
    }

    /* Back: everything goes out, once, in order per aggregate. */
    pthread_mutex_lock(&rec.lock);
    rec.fail_all = 0;
    pthread_mutex_unlock(&rec.lock);
    ASSERT(wait_for(all_gone, db, 5000));
    ASSERT_EQ(log_count("is back after"), 1);
    if (noted) ASSERT_STREQ(relay_note(path, &noted), "");
    ASSERT_OK(runner_stop(&run), errp(&run.err));
    for (k = 0; k < 6; k++)
        ASSERT_EQ(rec_ok_count(&rec, ids[k]), 1);
    {
        int next[3] = {0, 0, 0};
        for (i = 0; i < rec.n; i++) {
            if (rec.calls[i].result != OUTBOX_OK) continue;
            int a = rec.calls[i].aggregate_id[2] - '0';
            for (k = 0; k < 6; k++)
                if (strcmp(rec.calls[i].id, ids[k]) == 0) break;
            ASSERT_EQ(k, next[a] * 3 + a);
            next[a]++;
        }
    }
    rec_free(&rec);
    sqlite3_close(db);
}

/* In once mode a destination that stays down ends the run after about
 * 10 s with an error naming the condition; still nothing is charged. */
TEST(outage_once_gives_up)
{
    const char *path = test_path("outage-once.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    outbox_relay_stats stats;
    outbox_relay *relay;
    recorder rec;
    int64_t t0, took_ms;
    int rc;

    rec_init(&rec);
    exec(db, "BEGIN");
    enqueue(db, "Step", "g-1", "{}", NULL);
    enqueue(db, "Step", "g-2", "{}", NULL);
    exec(db, "COMMIT");
    rec.fail_all = 1;
    rec.fail_all_code = OUTBOX_EIO;
    opts_fast(&o);
    o.max_attempts = 1;
    o.backoff_max_ms = 1000;
    o.once = 1;
    relay = new_relay(path, &rec, &o);
    t0 = outbox__monotonic_us();
    rc = outbox_relay_run(relay, err);
    took_ms = (outbox__monotonic_us() - t0) / 1000;
    outbox_relay_get_stats(relay, &stats);
    outbox_relay_free(relay);
    fprintf(stderr, "   gave up after %lld ms: %s\n", (long long)took_ms, err->message);
    ASSERT_EQ(rc, OUTBOX_EIO);
    ASSERT_CONTAINS(err->message, "is down: the broker is unreachable");
    ASSERT_CONTAINS(err->message, "no attempts were charged");
    ASSERT(took_ms >= 9000 && took_ms < 15000);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_GE(stats.publish_errors, 2 * 5);
    ASSERT_EQ(count_rows(db, "status = 'pending' AND attempts = 0"), 2);
    rec_free(&rec);
    sqlite3_close(db);
}

/* file:PATH?x=1 is refused at start-up (it used to create "PATH?x=1"). */
TEST(file_url_takes_no_settings)
{
    const char *path = test_path("fileurl.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay *relay = NULL;
    char dest[700];

    snprintf(dest, sizeof dest, "file:%s?x=1", test_path("o.jsonl"));
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), dest, NULL, err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err->message, "unknown file setting \"x\"");
    ASSERT_CONTAINS(err->message, "takes no settings");
    ASSERT(relay == NULL);
    ASSERT(access(test_path("o.jsonl?x=1"), F_OK) != 0);
    ASSERT(access(test_path("o.jsonl"), F_OK) != 0);
    snprintf(dest, sizeof dest, "file:%s?", test_path("o.jsonl"));
    ASSERT_EQ(outbox_relay_new(&relay, store_url(path), dest, NULL, err), OUTBOX_ECONFIG);
    sqlite3_close(db);
}

static int count_lines(const char *file)
{
    size_t len = 0, i;
    char *text = test_read_file(file, &len);
    int n = 0;
    if (text == NULL) return -1;
    for (i = 0; i < len; i++)
        if (text[i] == '\n') n++;
    free(text);
    return n;
}

typedef struct lines_wait {
    const char *file;
    int want;
} lines_wait;

static int has_lines(void *arg)
{
    lines_wait *w = arg;
    return count_lines(w->file) == w->want;
}

static int exists(void *arg)
{
    return access(arg, F_OK) == 0;
}

/* Log rotation: the output file is renamed, outbox_relay_reopen is called
 * (SIGHUP in the CLI), and the next batches go to a new file at the path;
 * the lines written before stay in the renamed one; none lost or doubled. */
TEST(reopen_after_rename)
{
    const char *path = test_path("reopen.db");
    char out[600], rotated[620], dest[700], ids[10][37];
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    relay_thread run;
    lines_wait w;
    int k;

    snprintf(out, sizeof out, "%s", test_path("rotate.jsonl"));
    snprintf(rotated, sizeof rotated, "%s.1", out);
    snprintf(dest, sizeof dest, "file:%s", out);
    opts_fast(&o);
    ASSERT_OK(outbox_relay_new(&relay, store_url(path), dest, &o, err), err);
    runner_start(&run, relay);
    exec(db, "BEGIN");
    for (k = 0; k < 5; k++)
        enqueue(db, "Before", "r-1", "{}", ids[k]);
    exec(db, "COMMIT");
    w.file = out;
    w.want = 5;
    ASSERT(wait_for(has_lines, &w, 5000));

    ASSERT_EQ(rename(out, rotated), 0);
    log_reset();
    outbox_relay_reopen(relay);
    ASSERT(log_wait("reopened", NULL, 5000)); /* logged once the new file is open */
    ASSERT(exists(out));                      /* a new, empty file */
    ASSERT_EQ(log_count("reopened"), 1);
    exec(db, "BEGIN");
    for (k = 5; k < 10; k++)
        enqueue(db, "After", "r-1", "{}", ids[k]);
    exec(db, "COMMIT");
    ASSERT(wait_for(has_lines, &w, 5000));
    ASSERT_OK(runner_stop(&run), errp(&run.err));

    ASSERT_EQ(count_lines(rotated), 5);
    ASSERT_EQ(count_lines(out), 5);
    {
        char *before = test_read_file(rotated, NULL), *after = test_read_file(out, NULL);
        ASSERT(before != NULL && after != NULL);
        for (k = 0; k < 10; k++) {
            ASSERT((strstr(before, ids[k]) != NULL) == (k < 5));
            ASSERT((strstr(after, ids[k]) != NULL) == (k >= 5));
        }
        free(before);
        free(after);
    }
    ASSERT_EQ(count_rows(db, "1"), 0);
    /* A destination without files says so, and goes on. */
    opts_fast(&o);
    o.once = 1;
    ASSERT_OK(outbox_relay_new(&relay, store_url(path), "discard:", &o, err), err);
    outbox_relay_reopen(relay);
    ASSERT_OK(outbox_relay_run(relay, err), err);
    outbox_relay_free(relay);
    ASSERT_EQ(log_count("has none"), 1);
    sqlite3_close(db);
}

int main(void)
{
    log_capture_install(OUTBOX_LOG_INFO);
    RUN(commit_published_once_rollback_never);
    RUN(options_and_urls_checked_at_start);
    RUN(transport_registry_direct);
    RUN(callback_holds_back_in_batch);
    RUN(rejected_fails_after_one_attempt);
    RUN(on_sent_mark_keeps_rows);
    RUN(file_destination_lines_and_torn_tail);
    RUN(stop_from_another_thread_and_lease);
    RUN(in_process_wake_up);
    RUN(wait_for_lease_stands_by);
    RUN(poison_message_failed_blocks_its_aggregate);
    RUN(poison_message_failed_does_not_block);
    RUN(per_aggregate_order_under_random_failures);
    RUN(outage_charges_nothing);
    RUN(outage_once_gives_up);
    RUN(file_url_takes_no_settings);
    RUN(reopen_after_rename);
    return 0;
}
