/*
 * bench_redis.c - how fast the relay drains an outbox into Redis Streams,
 * next to the raw rate of pipelined XADD measured in the same run: the
 * ceiling.
 *
 * One redis-server is started on a free loopback port with appendonly yes
 * + appendfsync always (the settings docs/REDIS.md asks for: every reply
 * is fsynced), its AOF in a temp dir (tests/support/redis.h), and stopped
 * at exit.  Every case writes N messages of the same bytes (PAYLOAD_BYTES
 * JSON payloads over A aggregates, the driver's eight fields) to a stream
 * of its own:
 *
 *   ceiling            hiredis alone: XADD of N messages, pipelined in
 *                      batches of B with up to W messages written before
 *                      their replies are read (the relay's window); no
 *                      database, no de-duplication
 *   sqlite -> redis    outbox_relay_new("sqlite:COPY", "redis://...&
 *                      window_messages=W", once, batch B) +
 *                      outbox_relay_run over N pending messages (filled
 *                      once through the public enqueue API, copied before
 *                      the run), pipelined; each message is the driver's
 *                      script (GET, XADD, SET PX)
 *   postgres -> redis  the same from the PostgreSQL store on a cluster
 *                      started by tests/support/pg.h (rows inserted
 *                      server-side), when the PostgreSQL binaries are
 *                      installed; the ceiling is measured again just
 *                      before it and its ratio is to that one; then the
 *                      same relay with window_messages=2B (two batches
 *                      open, the window before publish_room), for
 *                      comparison in the same run
 *
 * Each case runs in a forked child (bench_common.h): peak RSS and CPU time
 * from wait4().  A figure is printed only after the parent checked that
 * the stream holds exactly N entries and the outbox has no unsent row.
 * Between cases the server's keys are flushed.  Exit status: 0, 1 on a
 * failed case, 2 on bad usage, 77 when redis-server or hiredis is missing.
 *
 * Usage: bench_redis [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES] [--no-pg]
 */
#ifndef OUTBOX_HAVE_HIREDIS
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "bench_redis: skipped: this build has no Redis destination (hiredis not "
                    "found at configure time)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/redis.h"
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#endif

#include "bench_outbox.h" /* bench_common.h, and the PostgreSQL fill and check */

enum { PAYLOAD_BYTES = 300, FILL_TXN_ROWS = 50000 };

static long long n_msgs = 200000;
static unsigned batch = 512;
static long long window = 4096;
static unsigned aggregates = 1000;
static rh_server redis;
static int failures;

/* In a child: the parent's exit handlers must not stop its servers or
 * remove its directories. */
static void disarm_parent_handlers(void)
{
    ch_forget_all();
    test_dir_forget();
#ifdef OUTBOX_HAVE_LIBPQ
    pgh_forget();
#endif
}

static void print_row(const char *name, const bench_result *res, double ceiling)
{
    double rate = (double)res->count / res->seconds;
    char ratio[16] = "-";
    if (ceiling > 0) snprintf(ratio, sizeof ratio, "%.2f", rate / ceiling);
    printf("%-32s %9lld %8.2f %10.0f %8s %6.1f MiB %6.2f+%.2f s\n", name, res->count, res->seconds,
           rate, ratio, (double)res->maxrss_kib / 1024.0, res->user_seconds, res->sys_seconds);
    fflush(stdout);
}

/* The entries in stream (0: none), then every key is dropped. */
static long long stream_len_and_flush(const char *stream)
{
    redisContext *c = rh_connect(&redis);
    redisReply *r = redisCommand(c, "XLEN %s", stream);
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    r = redisCommand(c, "FLUSHALL");
    if (r) freeReplyObject(r);
    redisFree(c);
    return n;
}

/* ------------------------------------------------------------------------
 * The ceiling: pipelined XADD
 * ---------------------------------------------------------------------- */

/* Queues message i's XADD (the driver's fields and sizes). */
static void append_xadd(redisContext *c, long long i)
{
    char payload[PAYLOAD_BYTES + 1], id[40], agg[32], when[32];
    unsigned a = (unsigned)(i % aggregates);
    bench_payload(payload, PAYLOAD_BYTES, i, a);
    snprintf(agg, sizeof agg, "order-%06u", a);
    snprintf(id, sizeof id, "01900000-0000-7000-8000-%012lld", i);
    outbox_time_format(1700000000000000LL + i, when);
    const char *argv[] = {"XADD",    "raw",          "*",       "id",          id,
                          "type",    "OrderPlaced",  "source",  "/outbox",     "aggregate_type",
                          "Order",   "aggregate_id", agg,       "occurred_at", when,
                          "headers", "{}",           "payload", payload};
    redisAppendCommandArgv(c, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
}

/* Reads the replies of messages [from, to). */
static int read_replies(redisContext *c, long long from, long long to, bench_report *r)
{
    for (long long i = from; i < to; i++) {
        void *reply = NULL;
        if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
            bench_fail(r, "XADD %lld: %s", i, c->errstr);
            return -1;
        }
        if (((redisReply *)reply)->type != REDIS_REPLY_STRING) {
            bench_fail(r, "XADD %lld: %s", i, ((redisReply *)reply)->str);
            freeReplyObject(reply);
            return -1;
        }
        freeReplyObject(reply);
    }
    return 0;
}

/* Child: N pipelined XADDs in batches of B, up to W (and at least two
 * batches) written before their replies are read. */
static void run_ceiling(void *arg, bench_report *r)
{
    redisContext *c = rh_connect(&redis);
    long long sent = 0, read = 0;
    double t0 = bench_now();
    (void)arg;
    while (read < n_msgs) {
        int done = 0;
        long long upto = sent + batch < n_msgs ? sent + batch : n_msgs;
        for (; sent < upto; sent++)
            append_xadd(c, sent);
        while (!done)
            if (redisBufferWrite(c, &done) != REDIS_OK) {
                bench_fail(r, "write: %s", c->errstr);
                return;
            }
        /* The window is full: read the oldest batch. */
        if (sent - read > (window > 2 * (long long)batch ? window : 2 * (long long)batch) -
                              (long long)batch ||
            sent == n_msgs) {
            long long to = sent == n_msgs ? n_msgs : read + batch;
            if (read_replies(c, read, to, r)) return;
            read = to;
        }
    }
    r->seconds = bench_now() - t0;
    r->count = n_msgs;
    redisFree(c);
    r->ok = 1;
}

static int ceiling_case(const char *name, double *rate)
{
    bench_result res;
    long long n;
    if (bench_run_child(name, run_ceiling, NULL, disarm_parent_handlers, &res)) return -1;
    if ((n = stream_len_and_flush("raw")) != n_msgs) {
        fprintf(stderr, "bench_redis: %s: the stream holds %lld of %lld\n", name, n, n_msgs);
        return -1;
    }
    print_row(name, &res, 0);
    *rate = (double)res.count / res.seconds;
    return 0;
}

/* ------------------------------------------------------------------------
 * The relay
 * ---------------------------------------------------------------------- */

/* Runs the relay from c->store_url into stream `stream` with a window of
 * window_messages, checks the stream.  0 or -1. */
static int relay_run(const char *name, bench_relay_case *c, long long window_messages,
                     const char *stream, bench_result *res)
{
    long long n;
    snprintf(c->to_url, sizeof c->to_url, "%s?stream=%s&window_messages=%lld", redis.url, stream,
             window_messages);
    c->batch = batch;
    c->expect = n_msgs;
    if (bench_run_child(name, bench_run_relay, c, disarm_parent_handlers, res)) return -1;
    if ((n = stream_len_and_flush(stream)) != n_msgs) {
        fprintf(stderr, "bench_redis: %s: the stream holds %lld of %lld\n", name, n, n_msgs);
        return -1;
    }
    return 0;
}

/* Fills the SQLite outbox at path with n_msgs messages (public API). */
static int sqlite_fill(const char *path)
{
    sqlite3 *db = ch_db_open(path);
    outbox_error err = {0};
    char payload[PAYLOAD_BYTES + 1], agg[32];
    int rc = 0;
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) rc = -1;
    for (long long i = 0; rc == 0 && i < n_msgs; i++) {
        outbox_msg *m = NULL;
        unsigned a = (unsigned)(i % aggregates);
        if (i % FILL_TXN_ROWS == 0) sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        bench_payload(payload, PAYLOAD_BYTES, i, a);
        snprintf(agg, sizeof agg, "order-%06u", a);
        if (outbox_msg_new(&m, "OrderPlaced", "Order", agg, payload, &err) != OUTBOX_OK ||
            outbox_enqueue_sqlite(db, m, &err) != OUTBOX_OK)
            rc = -1;
        outbox_msg_free(m);
        if ((i + 1) % FILL_TXN_ROWS == 0 || i + 1 == n_msgs)
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    if (rc) fprintf(stderr, "bench_redis: fill: %s\n", err.message);
    sqlite3_close(db);
    return rc;
}

static int sqlite_case(const char *path, double ceiling)
{
    bench_relay_case c = {0};
    bench_result res;
    if (sqlite_fill(path)) return -1;
    snprintf(c.store_url, sizeof c.store_url, "sqlite:%s", path);
    if (relay_run("sqlite -> redis", &c, window, "sq", &res)) return -1;
    if (ch_outbox_count(path, NULL) != 0) {
        fprintf(stderr, "bench_redis: sqlite -> redis: rows left in the outbox\n");
        return -1;
    }
    print_row("sqlite -> redis (relay)", &res, ceiling);
    return 0;
}

#ifdef OUTBOX_HAVE_LIBPQ
/* The relay from the PostgreSQL outbox, checked and printed as `row`.
 * 0 or -1. */
static int pg_relay(PGconn *conn, const char *row, bench_relay_case *c, long long window_messages,
                    double rate)
{
    bench_result res;
    if (relay_run(row, c, window_messages, "pg", &res)) return -1;
    if (bench_pg_left(conn) != 0) {
        fprintf(stderr, "bench_redis: %s: unsent rows left\n", row);
        return -1;
    }
    print_row(row, &res, rate);
    return 0;
}

static int pg_case(void)
{
    static pgh_server pg;
    bench_relay_case c = {0};
    outbox_error err = {0};
    double rate;
    const char *why = pgh_available();
    if (why != NULL) {
        printf("%-32s skipped: %s\n", "postgres -> redis (relay)", why);
        return 0;
    }
    pgh_start(&pg);
    PGconn *conn = pgh_connect(&pg);
    if (outbox_schema_init_pg(conn, "bench_outbox", &err) != OUTBOX_OK)
        TEST_FAIL_("outbox_schema_init_pg: %s", err.message);
    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    if (ceiling_case("redis pipelined XADD (again)", &rate)) return -1;
    snprintf(c.store_url, sizeof c.store_url, "%s?schema=bench_outbox", pg.url);
    if (pg_relay(conn, "postgres -> redis (relay)", &c, window, rate)) return -1;
    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    if (pg_relay(conn, "postgres -> redis, 2 batches", &c, 2 * (long long)batch, rate)) return -1;
    PQfinish(conn);
    return 0;
}
#endif

int main(int argc, char **argv)
{
    int no_pg = 0;
    char db[CH_PATH];
    double ceiling = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n_msgs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-b") && i + 1 < argc)
            batch = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "-w") && i + 1 < argc)
            window = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-a") && i + 1 < argc)
            aggregates = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-pg"))
            no_pg = 1;
        else {
            fprintf(stderr,
                    "usage: bench_redis [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES] [--no-pg]\n");
            return 2;
        }
    }
    if (n_msgs < 1 || batch < 1 || batch > 100000 || window < 1 || window > 1000000 ||
        aggregates < 1) {
        fprintf(stderr, "bench_redis: -n, -b (1-100000), -w (1-1000000) and -a must be positive\n");
        return 2;
    }
    if (rh_available() != NULL) {
        fprintf(stderr, "bench_redis: skipped: %s (install the redis-server package)\n",
                rh_available());
        return 77;
    }
    printf("bench_redis: N=%lld, payload %d bytes, %u aggregates, batch %u, window %lld messages; "
           "load average %.2f at start\n",
           n_msgs, PAYLOAD_BYTES, aggregates, batch, window, bench_loadavg());
    rh_server_start(&redis);
    printf("redis-server on %s (appendonly yes, appendfsync always, AOF in %s)\n", redis.url,
           redis.dir);
    printf("%-32s %9s %8s %10s %8s %10s %13s\n", "case", "messages", "seconds", "msg/s", "/ceiling",
           "peak RSS", "CPU user+sys");

    if (ceiling_case("redis pipelined XADD (ceiling)", &ceiling)) failures++;
    ch_path(db, "bench.db");
    if (sqlite_case(db, ceiling)) failures++;
#ifdef OUTBOX_HAVE_LIBPQ
    if (!no_pg && pg_case()) failures++;
#else
    if (!no_pg) printf("%-32s skipped: this build has no PostgreSQL store\n", "postgres -> redis");
#endif
    rh_server_stop(&redis);
    printf("load average %.2f at the end; %s\n", bench_loadavg(),
           failures ? "SOME CASES FAILED (no figure printed for them)" : "all results checked");
    return failures ? 1 : 0;
}

#endif /* OUTBOX_HAVE_HIREDIS */
