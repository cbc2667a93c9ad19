/*
 * bench_http.c - SQLite outbox -> relay -> webhook receiver on loopback,
 * next to the same receiver driven by a plain load generator (the ceiling).
 *
 * The receiver is the library's (libmicrohttpd, signature check, inbox and
 * a handler inserting one row, one transaction per message; consumer
 * database in WAL with synchronous=NORMAL).  Cases, each with a fresh
 * consumer database:
 *
 *   relay drain    N messages (~60-byte JSON payloads over A aggregates)
 *                  committed beforehand; the relay (in process, batch 512,
 *                  max_in_flight C, signed) drains them; messages/s
 *   relay live     a producer commits messages at half the drain rate for
 *                  a few seconds while the relay runs; latency from the
 *                  enqueue to the handler's insert: p50 / p99
 *   load ceiling   C concurrent keep-alive connections (libcurl multi)
 *                  POST N pre-signed requests to the receiver, no outbox;
 *                  requests/s and request latency p50 / p99
 *
 * After every case the consumer table is checked (exactly the expected
 * number of rows), so a broken run reports an error instead of a figure.
 *
 * Usage: bench_http [-n N] [-a AGGREGATES] [-c CONCURRENCY] [--dir DIR]
 */
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(OUTBOX_HAVE_CURL) && defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CRYPTO)

#include <curl/curl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what, const outbox_error *err)
{
    fprintf(stderr, "bench_http: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Latencies recorded by the handler (us), when recording is on. */
static int64_t *lat;
static atomic_long nlat;
static long cap_lat;
static atomic_int record;

static int handler(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    sqlite3_stmt **st = user;
    (void)err;
    if (*st == NULL && sqlite3_prepare_v2(db, "INSERT INTO applied(id, agg) VALUES (?, ?)", -1, st,
                                          NULL) != SQLITE_OK)
        return OUTBOX_ESTORE;
    sqlite3_reset(*st);
    sqlite3_bind_text(*st, 1, outbox_msg_id(msg), -1, SQLITE_STATIC);
    sqlite3_bind_text(*st, 2, outbox_msg_aggregate_id(msg), -1, SQLITE_STATIC);
    if (sqlite3_step(*st) != SQLITE_DONE) return OUTBOX_ESTORE;
    if (atomic_load(&record)) {
        long i = atomic_fetch_add(&nlat, 1);
        if (i < cap_lat) lat[i] = now_us() - outbox_msg_occurred_at(msg);
    }
    return OUTBOX_OK;
}

typedef struct consumer {
    outbox_webhook_receiver *r;
    sqlite3_stmt *insert;
    char path[600];
} consumer;

static void consumer_start(consumer *c, const char *dir, const char *name)
{
    outbox_webhook_receiver_options ro;
    outbox_error err;
    sqlite3 *db = NULL;
    memset(&err, 0, sizeof err);
    snprintf(c->path, sizeof c->path, "%s/%s", dir, name);
    unlink(c->path);
    c->insert = NULL;
    if (sqlite3_open(c->path, &db) != SQLITE_OK ||
        sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; CREATE TABLE applied(seq INTEGER PRIMARY KEY "
                     "AUTOINCREMENT, id TEXT, agg TEXT)",
                     NULL, NULL, NULL) != SQLITE_OK)
        die("consumer database", NULL);
    sqlite3_close(db);
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = SECRET;
    ro.db_path = c->path;
    ro.consumer = "bench";
    ro.handler = handler;
    ro.handler_user = &c->insert;
    ro.init_sql = "PRAGMA synchronous=NORMAL";
    ro.connection_limit = 256;
    if (outbox_webhook_receiver_new(&c->r, &ro, &err) != OUTBOX_OK) die("receiver", &err);
}

static long long consumer_stop(consumer *c)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long n = -1;
    if (c->insert) sqlite3_finalize(c->insert);
    outbox_webhook_receiver_free(c->r);
    sqlite3_open(c->path, &db);
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM applied", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void enqueue_n(sqlite3 *db, long long from, long long n, long long aggs, int txn_rows)
{
    outbox_error err;
    memset(&err, 0, sizeof err);
    for (long long i = from; i < from + n;) {
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        for (int k = 0; k < txn_rows && i < from + n; k++, i++) {
            outbox_msg *m = NULL;
            char agg[32], payload[96];
            snprintf(agg, sizeof agg, "a%lld", i % aggs);
            snprintf(payload, sizeof payload, "{\"agg\":\"%s\",\"n\":%lld,\"item\":\"latte\"}", agg,
                     i / aggs);
            if (outbox_msg_new(&m, "Tick", "Agg", agg, payload, &err) != OUTBOX_OK ||
                outbox_enqueue_sqlite(db, m, &err) != OUTBOX_OK)
                die("enqueue", &err);
            outbox_msg_free(m);
        }
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die("commit", NULL);
    }
}

typedef struct relay_thread {
    outbox_relay *relay;
    pthread_t t;
    int rc;
    outbox_error err;
} relay_thread;

static void *relay_main(void *arg)
{
    relay_thread *r = arg;
    r->rc = outbox_relay_run(r->relay, &r->err);
    return NULL;
}

static void report_latency(const char *label, int64_t *v, long n)
{
    if (n <= 0) {
        printf("%-14s no samples\n", label);
        return;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_i64);
    printf("%-14s latency p50 %.2f ms, p99 %.2f ms, max %.2f ms (%ld samples)\n", label,
           v[n / 2] / 1000.0, v[(n * 99) / 100] / 1000.0, v[n - 1] / 1000.0, n);
}

/* ------------------------------------------------------------------------
 * Load ceiling: C concurrent requests with libcurl multi.
 * ---------------------------------------------------------------------- */

typedef struct slot {
    CURL *e;
    struct curl_slist *h;
    char body[128];
    int64_t t0;
} slot;

static size_t sink(char *d, size_t s, size_t n, void *u)
{
    (void)d, (void)u;
    return s * n;
}

static double load_ceiling(unsigned port, long long n, int conc, int64_t *lats)
{
    CURLM *m = curl_multi_init();
    slot *slots = calloc((size_t)conc, sizeof *slots);
    char url[100];
    long long started = 0, done = 0, bad = 0;
    int running = 0;
    outbox_error err;
    memset(&err, 0, sizeof err);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", port);

    int64_t t0 = now_us();
    for (;;) {
        for (int i = 0; i < conc && started < n; i++) {
            slot *s = &slots[i];
            if (s->t0 != 0) continue;
            char id[37], line[200], sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
            int64_t ts = now_us() / 1000000;
            outbox_uuid_v7(id);
            snprintf(s->body, sizeof s->body, "{\"agg\":\"a%lld\",\"n\":%lld,\"item\":\"latte\"}",
                     started % 10000, started / 10000);
            if (outbox_webhook_sign(SECRET, id, ts, s->body, strlen(s->body), sig, &err) != 0)
                die("sign", &err);
            if (!s->e) {
                s->e = curl_easy_init();
                curl_easy_setopt(s->e, CURLOPT_URL, url);
                curl_easy_setopt(s->e, CURLOPT_WRITEFUNCTION, sink);
                curl_easy_setopt(s->e, CURLOPT_PRIVATE, s);
            }
            curl_slist_free_all(s->h);
            s->h = NULL;
            s->h = curl_slist_append(s->h, "content-type: application/json");
            s->h = curl_slist_append(s->h, "expect:");
            s->h = curl_slist_append(s->h, "ce-specversion: 1.0");
            s->h = curl_slist_append(s->h, "ce-type: Tick");
            snprintf(line, sizeof line, "ce-subject: a%lld", started % 10000);
            s->h = curl_slist_append(s->h, line);
            snprintf(line, sizeof line, "ce-id: %s", id);
            s->h = curl_slist_append(s->h, line);
            snprintf(line, sizeof line, "webhook-id: %s", id);
            s->h = curl_slist_append(s->h, line);
            snprintf(line, sizeof line, "webhook-timestamp: %lld", (long long)ts);
            s->h = curl_slist_append(s->h, line);
            snprintf(line, sizeof line, "webhook-signature: %s", sig);
            s->h = curl_slist_append(s->h, line);
            curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, s->h);
            curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, s->body);
            s->t0 = now_us();
            curl_multi_add_handle(m, s->e);
            started++;
        }
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int q, progressed = 0;
        while ((msg = curl_multi_info_read(m, &q)) != NULL) {
            char *p = NULL;
            long status = 0;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &p);
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            slot *s = (slot *)(void *)p;
            if (msg->data.result != CURLE_OK || status != 204) bad++;
            lats[done++] = now_us() - s->t0;
            s->t0 = 0;
            curl_multi_remove_handle(m, msg->easy_handle);
            progressed = 1;
        }
        if (done >= n) break;
        if (!progressed) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    double secs = (now_us() - t0) / 1e6;
    for (int i = 0; i < conc; i++) {
        if (slots[i].e) curl_easy_cleanup(slots[i].e);
        curl_slist_free_all(slots[i].h);
    }
    free(slots);
    curl_multi_cleanup(m);
    if (bad) {
        fprintf(stderr, "bench_http: %lld load requests failed\n", bad);
        exit(1);
    }
    return n / secs;
}

int main(int argc, char **argv)
{
    long long n = 200000, aggs = 10000;
    int conc = 16;
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[600], store[700], url[100], copt[64];
    outbox_error err;
    memset(&err, 0, sizeof err);

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-a") && i + 1 < argc)
            aggs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-c") && i + 1 < argc)
            conc = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(stderr,
                    "usage: bench_http [-n N] [-a AGGREGATES] [-c CONCURRENCY] [--dir DIR]\n");
            return 2;
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    setenv("BENCH_HTTP_SECRET", SECRET, 1);
    printf("bench_http: %lld messages over %lld aggregates, %d in flight, signed, loopback\n", n,
           aggs, conc);

    /* Outbox with n messages. */
    snprintf(path, sizeof path, "%s/bench_http_outbox.db", dir);
    unlink(path);
    sqlite3 *db = NULL;
    sqlite3_open(path, &db);
    sqlite3_busy_timeout(db, 30000);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) die("schema", &err);
    enqueue_n(db, 0, n, aggs, 10000);

    /* 1. Drain. */
    consumer c;
    consumer_start(&c, dir, "bench_http_consumer1.db");
    snprintf(store, sizeof store, "sqlite:%s", path);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", outbox_webhook_receiver_port(c.r));
    snprintf(copt, sizeof copt, "max_in_flight=%d", conc);
    const char *dopts[] = {"secret_env=BENCH_HTTP_SECRET", copt, NULL};
    outbox_relay_options o;
    outbox_relay_options_init(&o);
    o.once = 1;
    o.batch_size = 512;
    o.destination_options = dopts;
    outbox_relay *relay = NULL;
    if (outbox_relay_new(&relay, store, url, &o, &err) != OUTBOX_OK) die("relay", &err);
    int64_t t0 = now_us();
    if (outbox_relay_run(relay, &err) != OUTBOX_OK) die("relay run", &err);
    double drain_secs = (now_us() - t0) / 1e6;
    outbox_relay_free(relay);
    long long got = consumer_stop(&c);
    if (got != n) {
        fprintf(stderr, "bench_http: drain applied %lld of %lld\n", got, n);
        return 1;
    }
    double drain_rate = n / drain_secs;
    printf("%-14s %10.0f msg/s  (%lld in %.2f s)\n", "relay drain", drain_rate, n, drain_secs);

    /* 2. Live: half the drain rate for ~5 s, latency enqueue -> applied. */
    long long live_n = (long long)(drain_rate / 2 * 5);
    if (live_n < 1000) live_n = 1000;
    if (live_n > n) live_n = n;
    cap_lat = (long)live_n;
    lat = calloc((size_t)cap_lat, sizeof *lat);
    consumer_start(&c, dir, "bench_http_consumer2.db");
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", outbox_webhook_receiver_port(c.r));
    o.once = 0;
    relay_thread rt;
    memset(&rt, 0, sizeof rt);
    if (outbox_relay_new(&rt.relay, store, url, &o, &err) != OUTBOX_OK) die("relay", &err);
    pthread_create(&rt.t, NULL, relay_main, &rt);
    atomic_store(&record, 1);
    {
        double per_us = 1e6 / (drain_rate / 2);
        int64_t start = now_us();
        for (long long i = 0; i < live_n; i += 10) {
            int64_t due = start + (int64_t)(i * per_us);
            int64_t wait = due - now_us();
            if (wait > 0) usleep((useconds_t)wait);
            long long k = live_n - i < 10 ? live_n - i : 10;
            enqueue_n(db, n + i, k, aggs, (int)k); /* small transactions, like an app */
        }
    }
    while (atomic_load(&nlat) < live_n)
        usleep(10000);
    outbox_relay_stop(rt.relay);
    pthread_join(rt.t, NULL);
    outbox_relay_free(rt.relay);
    atomic_store(&record, 0);
    got = consumer_stop(&c);
    if (got != live_n) {
        fprintf(stderr, "bench_http: live applied %lld of %lld\n", got, live_n);
        return 1;
    }
    char label[64];
    snprintf(label, sizeof label, "relay live");
    printf("%-14s %10.0f msg/s offered (%lld messages)\n", label, drain_rate / 2, live_n);
    report_latency("relay live", lat, (long)atomic_load(&nlat));
    free(lat);
    sqlite3_close(db);

    /* 3. Ceiling: the same receiver driven directly. */
    int64_t *lats = calloc((size_t)n, sizeof *lats);
    consumer_start(&c, dir, "bench_http_consumer3.db");
    double rate = load_ceiling(outbox_webhook_receiver_port(c.r), n, conc, lats);
    got = consumer_stop(&c);
    if (got != n) {
        fprintf(stderr, "bench_http: load applied %lld of %lld\n", got, n);
        return 1;
    }
    printf("%-14s %10.0f req/s  (%d connections)\n", "load ceiling", rate, conc);
    report_latency("load ceiling", lats, (long)n);
    free(lats);
    unlink(path);
    return 0;
}

#else

int main(void)
{
    fprintf(stderr, "bench_http: not built with libcurl, libmicrohttpd and libcrypto\n");
    return 0;
}

#endif
