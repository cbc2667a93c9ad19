/*
 * test_relay.c - the relay against the real SQLite store: delivery of
 * committed messages only, field fidelity, per-aggregate order under random
 * failures, retry/backoff/Failed, requeue, on_sent mark, stop, in-process
 * wake-up, the lease, and the file destination (incl. torn-line repair).
 *
 * Most cases use the callback destination, which records every call.
 */
#include "internal.h"
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
    if (r->reject_id[0] && strcmp(r->reject_id, outbox_msg_id(m)) == 0) {
        result = r->reject_code;
        outbox__error(err, result, "destination says no to %s", outbox_msg_id(m));
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

typedef struct runner {
    pthread_t thread;
    outbox_relay *relay;
    int rc;
    outbox_error err;
} runner;

static void *runner_main(void *arg)
{
    runner *r = arg;
    r->rc = outbox_relay_run(r->relay, &r->err);
    return NULL;
}

static void runner_start(runner *r, outbox_relay *relay)
{
    memset(r, 0, sizeof *r);
    r->relay = relay;
    r->rc = -999;
    if (pthread_create(&r->thread, NULL, runner_main, r) != 0) TEST_FAIL_("pthread_create");
}

static int runner_stop(runner *r)
{
    outbox_relay_stop(r->relay);
    pthread_join(r->thread, NULL);
    outbox_relay_free(r->relay);
    r->relay = NULL;
    return r->rc;
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

typedef struct poison_wait {
    const char *path;
    const char *id;
    recorder *rec;
    const char *must_ok[2];
} poison_wait;

static int poison_settled(void *arg)
{
    poison_wait *w = arg;
    outbox_msg *m = store_get(w->path, w->id);
    int done = m && m->status == OUTBOX_STATUS_FAILED;
    size_t i;
    outbox_msg_free(m);
    for (i = 0; i < 2; i++)
        if (w->must_ok[i] && rec_ok_count(w->rec, w->must_ok[i]) == 0) done = 0;
    return done;
}

static int id_ok(void *arg)
{
    poison_wait *w = arg;
    return rec_ok_count(w->rec, w->id) > 0;
}

static void poison_case(int failed_blocks)
{
    const char *path = test_path(failed_blocks ? "poison1.db" : "poison0.db");
    sqlite3 *db = open_db(path);
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_relay_options o;
    recorder rec;
    char p1[37], p2[37], q1[37], q2[37];
    int64_t times[8];
    int ntimes = 0;
    unsigned cap;
    size_t i;
    runner run;
    poison_wait w;
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

    outbox_relay_options_init(&o);
    o.max_attempts = 4;
    o.backoff_base_ms = 40;
    o.backoff_max_ms = 1000;
    o.poll_interval_ms = 600000; /* retries must be driven by their due time */
    o.failed_blocks_aggregate = failed_blocks;
    runner_start(&run, new_relay(path, &rec, &o));
    w.path = path;
    w.id = p1;
    w.rec = &rec;
    w.must_ok[0] = q1;
    w.must_ok[1] = q2;
    ASSERT(wait_for(poison_settled, &w, 10000));

    m = store_get(path, p1);
    ASSERT(m != NULL);
    ASSERT_EQ(m->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(m->attempts, 4);
    ASSERT(m->last_error != NULL);
    ASSERT_CONTAINS(m->last_error, "attempt 4/4");
    ASSERT_CONTAINS(m->last_error, "destination says no");
    outbox_msg_free(m);

    /* Attempts and their spacing: within the growing cap 40, 80, 160 ms
     * (plus scheduling slack); full jitter makes exact growth random. */
    pthread_mutex_lock(&rec.lock);
    for (i = 0; i < rec.n; i++)
        if (strcmp(rec.calls[i].id, p1) == 0 && ntimes < 8) times[ntimes++] = rec.calls[i].at_us;
    pthread_mutex_unlock(&rec.lock);
    ASSERT_EQ(ntimes, 4);
    for (i = 1, cap = 40; i < (size_t)ntimes; i++, cap *= 2) {
        int64_t gap_ms = (times[i] - times[i - 1]) / 1000;
        ASSERT(gap_ms >= 0);
        ASSERT(gap_ms <= (int64_t)cap + 250);
    }

    /* Other aggregate unaffected; P2 held or not by the option. */
    ASSERT_EQ(rec_ok_count(&rec, q1), 1);
    ASSERT_EQ(rec_ok_count(&rec, q2), 1);
    if (failed_blocks) {
        outbox__sleep_us(100000);
        ASSERT_EQ(rec_ok_count(&rec, p2), 0);
        m = store_get(path, p2);
        ASSERT(m != NULL && m->status == OUTBOX_STATUS_PENDING);
        outbox_msg_free(m);
    } else {
        w.id = p2;
        ASSERT(wait_for(id_ok, &w, 5000));
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
    w.id = p1;
    ASSERT(wait_for(id_ok, &w, 5000));
    w.id = p2;
    ASSERT(wait_for(id_ok, &w, 5000));
    ASSERT_EQ(rec_ok_count(&rec, p2), 1);
    if (failed_blocks) {
        /* P2 published after P1 was confirmed. */
        int64_t t1 = 0, t2 = 0;
        pthread_mutex_lock(&rec.lock);
        for (i = 0; i < rec.n; i++) {
            if (rec.calls[i].result != OUTBOX_OK) continue;
            if (strcmp(rec.calls[i].id, p1) == 0) t1 = (int64_t)i + 1;
            if (strcmp(rec.calls[i].id, p2) == 0) t2 = (int64_t)i + 1;
        }
        pthread_mutex_unlock(&rec.lock);
        ASSERT(t1 > 0 && t2 > t1);
    }

    ASSERT_OK(runner_stop(&run), errp(&run.err));
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
    runner run;
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
    runner first, second;
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
    runner run;
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

static void log_stderr(void *user, int level, const char *component, const char *message)
{
    (void)user;
    fprintf(stderr, "   [%s %s] %s\n", outbox_log_level_name(level), component, message);
}

int main(void)
{
    if (getenv("OUTBOX_TEST_LOG")) outbox_log_set(log_stderr, NULL, OUTBOX_LOG_DEBUG);
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
    return 0;
}
