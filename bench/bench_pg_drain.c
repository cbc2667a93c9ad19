/*
 * bench_pg_drain.c - the PostgreSQL store side by side with plain SQL, in
 * one run on one machine:
 *
 *   drain     N pending messages (filled server-side with generate_series,
 *             ~300-byte jsonb payloads over 1000 aggregates, then VACUUM
 *             ANALYZE and CHECKPOINT; with --no-analyze a new table every
 *             time, never analysed, autovacuum off) drained by
 *               baseline  a loop of `DELETE FROM outbox WHERE seq IN (SELECT
 *                         seq ... WHERE status = 'pending' ORDER BY seq LIMIT
 *                         B FOR UPDATE SKIP LOCKED) RETURNING <all columns>`
 *                         in autocommit, nothing else
 *               relay     outbox_relay_new(URL, "discard:", once, batch B)
 *               relay +monitor (with --listen) the same with outbox_monitor
 *                         on 127.0.0.1 and /metrics scraped every 100 ms,
 *                         interleaved with plain relay drains (--repeat
 *                         pairs, medians): what monitoring costs the drain
 *   latency   commit-to-publish at a steady offered load (4 connections,
 *             10 messages per transaction, paced), the relay in a thread with a
 *             publish callback; latency = publish time - the time COMMIT
 *             returned to the producer (0 when the relay was faster than
 *             the client); percentiles from all samples, sorted (exact)
 *   enqueue   transactions/s of "insert a business row" vs "insert a
 *             business row + outbox_enqueue_pg" with 1 and C connections,
 *             each for T seconds: with no relay running; with a relay
 *             draining to discard: in a thread (enqueuers notify only to
 *             wake it while it waits, one per wait); and with an extra
 *             trigger that NOTIFYs in every transaction (what version 1 of
 *             the schema did: NOTIFY serialises the commits of notifying
 *             transactions in PostgreSQL).  Next to them, "business row +
 *             SELECT 1": the same transaction with one more statement
 *             that does nothing, i.e. the round trip any per-call enqueue
 *             API adds, as a floor for the outbox's cost.  And "business
 *             row + outbox_enqueue_commit_pg" (BEGIN / INSERT / the
 *             message and the COMMIT in one round trip), with no relay and
 *             with a relay draining.  Every case runs
 *             R times (--repeat), interleaved; the medians are shown, with
 *             the CPU time per transaction of the benchmark process
 *             (client) and of the server's processes (when the benchmark
 *             started the server), which the other load on the machine
 *             disturbs less than the rates
 *
 * With --capture wal, WAL capture (docs/WAL.md) next to the table, in the
 * same run:
 *   drain     N messages emitted to the WAL with no relay running (the
 *             slot exists, so the server keeps them): SELECT
 *             bench_outbox.emit(...) with the table fill's type, aggregates
 *             and payloads, --wal-txn M (default 10) to a committed
 *             transaction, server-side in a DO block, then CHECKPOINT;
 *             drained by the relay on ?capture=wal, once, to discard:
 *             (reading the slot up to the WAL's end as it was when it
 *             began); it must publish exactly N; the ratio to the table
 *             relay's drain time above
 *   latency   the latency case with outbox_emit_pg instead of enqueue and
 *             the relay on ?capture=wal, next to the table case, at --rate
 *             and at --low-rate (default 100 msg/s) with --low-txn
 *             messages to a transaction (default 1), for at least
 *             max(--seconds, 2000 * --low-txn / --low-rate) s, so that
 *             p99 rests on 2000 commits: table, wal, table, wal
 * Each WAL case makes its own replication slot and publication
 * (outbox_store_wal_setup) and drops them after (outbox_store_wal_drop);
 * the server needs wal_level = logical (the cluster of tests/support/pg.h
 * runs with it).
 *
 * The server: --conninfo/--url of an existing one (the outbox schema
 * "bench_outbox" is dropped and recreated there), or by default a fresh
 * cluster started by tests/support/pg.h (fsync on, shared_buffers 64MB),
 * reached over TCP on 127.0.0.1, or with --unix through its Unix socket
 * (a relay on the database host).
 *
 * Usage: bench_pg_drain [-n N] [-b BATCH] [--rate R] [--seconds T]
 *                       [--clients C] [--repeat R] [--url URL] [--skip-latency]
 *                       [--skip-enqueue] [--skip-drain] [--listen]
 *                       [--capture wal] [--low-rate R2] [--low-txn M2]
 *                       [--wal-txn M] [--unix]
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "bench_pg_drain: this build has no PostgreSQL store (libpq not found)\n");
    return 2;
}
#else

#include "bench_outbox.h"
#include "support/pg.h"
#include "test.h"

#include "outbox.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>

static long long n_msgs = 1000000;
static int batch = 1000;
static int rate = 2000;
static int seconds = 5;
static int clients = 8;
static int repeat = 1;
static pid_t server_pid; /* postmaster of the cluster this program started, or 0 */
static char url[600];
static char conninfo[600];
static int capture_wal;    /* --capture wal: the WAL cases too */
static int low_rate = 100; /* --low-rate: the second latency rate */
static int wal_txn = 10;   /* --wal-txn: messages per emitting transaction in the fill */
static char wal_url[700];  /* url with capture=wal */
static int wal_slot_made;  /* a slot of ours exists (dropped at exit on a server not ours) */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static PGconn *connect_db(void)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) TEST_FAIL_("connect: %s", PQerrorMessage(c));
    return c;
}

/* --no-analyze: every fill starts from a new table that has never been
 * analysed and that autovacuum leaves alone, as after a fresh init, a bulk
 * load or a restore, when the claim's plan has no statistics to go by. */
static int no_analyze;

static void fill(PGconn *c, long long n)
{
    char sql[1024];
    double t0 = now_s();
    if (no_analyze) {
        outbox_error err;
        pgh_exec(c, "DROP SCHEMA bench_outbox CASCADE");
        if (outbox_schema_init_pg(c, "bench_outbox", &err) != OUTBOX_OK)
            TEST_FAIL_("%s", err.message);
        pgh_exec(c, "ALTER TABLE bench_outbox.outbox SET (autovacuum_enabled = false)");
    } else {
        pgh_exec(c, "DELETE FROM bench_outbox.outbox");
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO bench_outbox.outbox (id, type, aggregate_type, aggregate_id, payload)"
             " SELECT bench_outbox.uuid_v7(), 'Tick', 'Agg', 'a' || (i %% 1000),"
             " jsonb_build_object('n', i, 'pad', repeat('x', 270)) FROM generate_series(1, %lld) i",
             n);
    pgh_exec(c, sql);
    if (!no_analyze) pgh_exec(c, "VACUUM ANALYZE bench_outbox.outbox");
    /* The fill's dirty pages are written now, not inside the timed drain. */
    pgh_exec(c, "CHECKPOINT");
    printf("  fill %lld rows: %.1f s%s\n", n, now_s() - t0,
           no_analyze ? " (new table, no ANALYZE, no autovacuum)" : "");
}

static double baseline(PGconn *c)
{
    char sql[1024];
    long long total = 0;
    snprintf(sql, sizeof sql,
             "DELETE FROM bench_outbox.outbox WHERE seq IN (SELECT seq FROM bench_outbox.outbox"
             " WHERE status = 'pending' ORDER BY seq LIMIT %d FOR UPDATE SKIP LOCKED)"
             " RETURNING seq, id, occurred_at, type, aggregate_type, aggregate_id, payload::text,"
             " headers::text, attempts",
             batch);
    double t0 = now_s();
    for (;;) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) TEST_FAIL_("baseline: %s", PQerrorMessage(c));
        int rows = PQntuples(r);
        PQclear(r);
        total += rows;
        if (rows == 0) break;
    }
    double dt = now_s() - t0;
    if (total != n_msgs) TEST_FAIL_("baseline drained %lld of %lld", total, n_msgs);
    return dt;
}

static double self_cpu_s(void);

/* --capture wal: the CPU a drain costs, which the machine's load does not
 * move as it moves the drain's time: this process's (the relay, in a
 * thread of it; nothing else runs meanwhile) and the server's, by process
 * (bench_pg_cpu, bench_outbox.h). */
typedef struct drain_cpu {
    double relay_s;  /* this process, user+sys */
    double server_s; /* the server's processes, user+sys */
    double top_s;    /* the busiest server process (the walsender, or the relay's backend) */
} drain_cpu;

static bench_pg_cpu cpu_watch;
static double cpu_watch_self0;
static drain_cpu last_drain; /* of the last relay_drain, with --capture wal */

static void cpu_watch_start(void)
{
    cpu_watch_self0 = self_cpu_s();
    if (bench_pg_cpu_start(&cpu_watch, (long)server_pid) != 0) {
        fprintf(stderr, "bench_pg_drain: cannot sample the server's CPU\n");
        exit(1);
    }
}

static void cpu_watch_stop(drain_cpu *out)
{
    out->server_s = bench_pg_cpu_stop(&cpu_watch, &out->top_s);
    out->relay_s = self_cpu_s() - cpu_watch_self0 - cpu_watch.own_s;
}

/* The relay from store_url to discard:, once; monitored: with the monitor
 * serving it and /metrics scraped every 100 ms (--listen). */
static double relay_drain(const char *store_url, int monitored)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    outbox_relay_stats st;
    bench_monitor mon;
    char why[512];
    long scrapes;
    outbox_relay_options_init(&o);
    o.once = 1;
    o.batch_size = (unsigned)batch;
    int watched = capture_wal && server_pid > 0;
    if (watched) cpu_watch_start();
    double t0 = now_s();
    if (outbox_relay_new(&r, store_url, "discard:", &o, &err) != OUTBOX_OK)
        TEST_FAIL_("relay: %s", err.message);
    if (monitored && bench_monitor_start(&mon, r, 100, why, sizeof why) != 0) TEST_FAIL_("%s", why);
    if (outbox_relay_run(r, &err) != OUTBOX_OK) TEST_FAIL_("relay: %s", err.message);
    double dt = now_s() - t0;
    if (watched) cpu_watch_stop(&last_drain);
    if (monitored) {
        if ((scrapes = bench_monitor_stop(&mon)) < 0) TEST_FAIL_("a scrape of /metrics failed");
        printf("  (%ld scrapes of /metrics during the drain)\n", scrapes);
    }
    outbox_relay_get_stats(r, &st);
    outbox_relay_free(r);
    if ((long long)st.published != n_msgs)
        TEST_FAIL_("relay published %llu of %lld", (unsigned long long)st.published, n_msgs);
    return dt;
}

/* ------------------------------------------------------------------------
 * WAL capture (--capture wal): the slot of each case
 * ---------------------------------------------------------------------- */

/* On a server this program did not start, a slot left behind by a run
 * that failed midway would keep WAL until the disk fills: dropped at exit
 * (a relay still streaming from it makes the drop give up after 10 s). */
static void drop_slot_at_exit(void)
{
    if (wal_slot_made) (void)bench_pg_wal_slot(wal_url, 0, NULL);
}

static void slot_create(void)
{
    if (bench_pg_wal_slot(wal_url, 1, NULL)) TEST_FAIL_("cannot create the replication slot");
    wal_slot_made = 1;
}

/* Drops the slot; returns the lag it had (WAL not confirmed by the relay,
 * and any written since). */
static long long slot_drop(void)
{
    long long lag = 0;
    wal_slot_made = 0;
    if (bench_pg_wal_slot(wal_url, 0, &lag)) TEST_FAIL_("cannot drop the replication slot");
    return lag;
}

/* The catch-up drain: N messages emitted with no relay running (the
 * table fill's type, aggregates and payloads), then the relay on
 * ?capture=wal, once, to discard:.  table_s: the table relay's drain time
 * in this run. */
static void wal_drain(PGconn *c, double table_s, double baseline_s)
{
    long long wal_bytes, lag;
    drain_cpu table_cpu = last_drain; /* of the table relay's drain before this */
    pgh_exec(c, "DELETE FROM bench_outbox.outbox");
    pgh_exec(c, "VACUUM bench_outbox.outbox");
    slot_create();
    double tf = bench_pg_emit_fill(c, n_msgs, wal_txn,
                                   "'Tick', 'a' || (i % 1000),"
                                   " jsonb_build_object('n', i, 'pad', repeat('x', 270)), '{}',"
                                   " 'Agg'",
                                   &wal_bytes);
    printf("  fill: %lld messages emitted to the WAL (SELECT bench_outbox.emit(...), %d per"
           " transaction): %.1f s, %.0f MB of WAL\n",
           n_msgs, wal_txn, tf, wal_bytes / 1e6);
    fflush(stdout);
    double tw = relay_drain(wal_url, 0);
    lag = slot_drop();
    printf("  relay (wal) -> discard:                              %.2f s, %.0f msg/s"
           " (%.2fx the baseline's time)\n",
           tw, n_msgs / tw, tw / baseline_s);
    printf("  wal drain: %.2fx the table relay's rate (target >= 1.3x: %s); the slot lagged %lld"
           " bytes when dropped\n",
           table_s / tw, table_s / tw >= 1.3 ? "met" : "MISSED", lag);
    if (server_pid > 0) {
        /* Per message, in microseconds: what the load does not move. */
        double per = 1e6 / (double)n_msgs;
        printf("  CPU per message (us): relay table %.2f, wal %.2f; server table %.2f (busiest"
               " process %.2f), wal %.2f (busiest, the walsender: %.2f)\n",
               table_cpu.relay_s * per, last_drain.relay_s * per, table_cpu.server_s * per,
               table_cpu.top_s * per, last_drain.server_s * per, last_drain.top_s * per);
    }
    fflush(stdout);
}

/* ------------------------------------------------------------------------
 * Latency
 * ---------------------------------------------------------------------- */

static int64_t *lat;       /* per message: publish time, then the latency */
static int64_t *committed; /* per message: when its COMMIT returned */
static atomic_long lat_n;
static long lat_cap;

/* Payloads are {"i": INDEX}: the callback notes when message INDEX was
 * published; latencies are computed after the run. */
static int record_latency(void *user, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    (void)err;
    const char *p = strstr(outbox_msg_payload(msg), "\"i\":");
    long i = p ? strtol(p + 4, NULL, 10) : -1;
    if (i >= 0 && i < lat_cap && lat[i] == 0) {
        lat[i] = wall_us();
        atomic_fetch_add(&lat_n, 1);
    }
    return OUTBOX_OK;
}

static void *relay_thread(void *arg)
{
    outbox_relay *r = arg;
    outbox_error err;
    if (outbox_relay_run(r, &err) != OUTBOX_OK) fprintf(stderr, "relay: %s\n", err.message);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

enum { LAT_THREADS = 4, LAT_PER_TXN = 10 };
/* --low-txn: messages per transaction at --low-rate (see latency_wal) */
static int low_txn = 1;

typedef struct pacer {
    int index;
    int emit; /* outbox_emit_pg (WAL capture) instead of enqueue */
    int per_txn;
    long txns;
    double t0;
    double txn_rate;
    pthread_t th;
} pacer;

/* One producer connection: txns transactions of per_txn messages,
 * paced at txn_rate per second. */
static void *pacer_main(void *arg)
{
    pacer *p = arg;
    PGconn *c = connect_db();
    outbox_error err;
    for (long i = 0; i < p->txns; i++) {
        double due =
            p->t0 + (double)i / p->txn_rate + (double)p->index / (p->txn_rate * LAT_THREADS);
        double left = due - now_s();
        if (left > 0) usleep((useconds_t)(left * 1e6));
        long first = ((long)p->index * p->txns + i) * p->per_txn;
        PQclear(PQexec(c, "BEGIN"));
        for (int k = 0; k < p->per_txn; k++) {
            char agg[32], payload[48];
            snprintf(agg, sizeof agg, "a%d-%ld", p->index, (i * p->per_txn + k) % 100);
            snprintf(payload, sizeof payload, "{\"i\":%ld}", first + k);
            outbox_msg *m = NULL;
            if (outbox_msg_new(&m, "Tick", "Agg", agg, payload, &err) != OUTBOX_OK ||
                (p->emit ? outbox_emit_pg(c, "bench_outbox", m, &err)
                         : outbox_enqueue_pg_schema(c, "bench_outbox", m, &err)) != OUTBOX_OK)
                TEST_FAIL_("%s: %s", p->emit ? "emit" : "enqueue", err.message);
            outbox_msg_free(m);
        }
        PQclear(PQexec(c, "COMMIT"));
        int64_t done = wall_us();
        for (int k = 0; k < p->per_txn; k++)
            committed[first + k] = done;
    }
    PQfinish(c);
    return NULL;
}

typedef struct lat_result {
    double p50_ms, p99_ms;
} lat_result;

/* The latency case at msg_rate for secs seconds, per_txn messages to a
 * transaction: messages written with enqueue and the relay on url, or
 * (wal) emitted to the WAL and the relay on wal_url, on a slot of its own.
 * label: what the line says of it. */
static lat_result latency(int wal, int msg_rate, int per_txn, int secs, const char *label)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    pthread_t th;
    pacer pacers[LAT_THREADS];
    lat_result res;
    long total_txns = (long)msg_rate * secs / per_txn;
    long total = total_txns * per_txn;
    lat_cap = total;
    lat = calloc((size_t)total, sizeof *lat);
    committed = calloc((size_t)total, sizeof *committed);
    if (!lat || !committed) TEST_FAIL_("out of memory");
    atomic_store(&lat_n, 0);
    outbox_relay_options_init(&o);
    o.publish = record_latency;
    if (wal) slot_create();
    if (outbox_relay_new(&r, wal ? wal_url : url, NULL, &o, &err) != OUTBOX_OK)
        TEST_FAIL_("relay: %s", err.message);
    pthread_create(&th, NULL, relay_thread, r);
    usleep(300000);

    double t0 = now_s() + 0.05;
    for (int i = 0; i < LAT_THREADS; i++) {
        pacers[i].index = i;
        pacers[i].emit = wal;
        pacers[i].per_txn = per_txn;
        pacers[i].txns = total_txns / LAT_THREADS;
        pacers[i].t0 = t0;
        pacers[i].txn_rate = (double)msg_rate / per_txn / LAT_THREADS;
        pthread_create(&pacers[i].th, NULL, pacer_main, &pacers[i]);
    }
    for (int i = 0; i < LAT_THREADS; i++)
        pthread_join(pacers[i].th, NULL);
    total = (total_txns / LAT_THREADS) * LAT_THREADS * per_txn;
    double offered = total / (now_s() - t0);
    for (int i = 0; i < 500 && atomic_load(&lat_n) < total; i++)
        usleep(10000);
    outbox_relay_stop(r);
    pthread_join(th, NULL);
    outbox_relay_free(r);
    if (wal) (void)slot_drop();
    long n = 0;
    for (long i = 0; i < total; i++) {
        if (lat[i] == 0 || committed[i] == 0) continue;
        /* The relay can see the commit before the client hears of it. */
        lat[n++] = lat[i] > committed[i] ? lat[i] - committed[i] : 0;
    }
    if (n < total)
        fprintf(stderr, "latency: %ld of %ld messages not published in time\n", total - n, total);
    if (n < 1) TEST_FAIL_("no latency samples");
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
#define PCT(p) (lat[(long)((n - 1) * (p))] / 1000.0)
    printf("  latency%s, %.0f msg/s offered (%d connections, %d messages per transaction), %ld"
           " samples: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
           label, offered, LAT_THREADS, per_txn, n, PCT(0.5), PCT(0.9), PCT(0.99), PCT(0.999),
           lat[n - 1] / 1000.0);
    fflush(stdout);
    res.p50_ms = PCT(0.5);
    res.p99_ms = PCT(0.99);
    free(lat);
    free(committed);
    return res;
}

/* --capture wal: table and WAL at --rate, then at --low-rate, with issue
 * 17's targets for the WAL.  The messages of one transaction share its
 * commit and arrive together, so a p99 rests on the number of
 * transactions, not of messages: the low rate runs 2000 transactions of
 * --low-txn messages (default 1: at 100 msg/s a commit every 10 ms; with
 * 10 to a transaction, 2000 samples were 200 commits and the p99 was the
 * third worst of them). */
static void latency_wal(void)
{
    long low_secs = (2000L * low_txn + low_rate - 1) / low_rate;
    if (low_secs < seconds) low_secs = seconds;
    (void)latency(0, rate, LAT_PER_TXN, seconds, " (table)");
    lat_result hi = latency(1, rate, LAT_PER_TXN, seconds, " (wal)");
    (void)latency(0, low_rate, low_txn, (int)low_secs, " (table)");
    lat_result lo = latency(1, low_rate, low_txn, (int)low_secs, " (wal)");
    printf("  wal latency targets: at %d msg/s p50 %.2f ms (<= 1 ms: %s), p99 %.2f ms (<= 3 ms:"
           " %s); at %d msg/s p99 %.2f ms (<= 2 ms: %s)\n",
           rate, hi.p50_ms, hi.p50_ms <= 1.0 ? "met" : "MISSED", hi.p99_ms,
           hi.p99_ms <= 3.0 ? "met" : "MISSED", low_rate, lo.p99_ms,
           lo.p99_ms <= 2.0 ? "met" : "MISSED");
    fflush(stdout);
}

/* ------------------------------------------------------------------------
 * Enqueue cost
 * ---------------------------------------------------------------------- */

static atomic_long txn_total; /* committed by all workers */

enum { BIZ_ONLY, BIZ_SELECT1, BIZ_OUTBOX, BIZ_OUTBOX_COMMIT };

typedef struct worker {
    int mode;
    double until;
    long txns;
    double backend_cpu_s; /* CPU of this worker's backend while it ran */
    pthread_t th;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    PGconn *c = connect_db();
    outbox_error err;
    const char *params[2] = {"customer-1", "12.50"};
    PGresult *r =
        PQprepare(c, "biz", "INSERT INTO bench_orders (customer, total) VALUES ($1, $2)", 2, NULL);
    PQclear(r);
    long backend = PQbackendPID(c);
    double cpu0 = server_pid > 0 ? bench_proc_cpu_s(backend) : 0;
    long i = 0;
    while (now_s() < w->until) {
        PQclear(PQexec(c, "BEGIN"));
        r = PQexecPrepared(c, "biz", 2, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) TEST_FAIL_("insert: %s", PQerrorMessage(c));
        PQclear(r);
        if (w->mode == BIZ_OUTBOX_COMMIT) {
            /* The message and the COMMIT in one round trip. */
            char agg[32];
            snprintf(agg, sizeof agg, "o-%ld", i);
            outbox_msg *m = NULL;
            outbox_msg_new(&m, "OrderPlaced", "Order", agg, "{\"total\":12.5}", &err);
            const outbox_msg *one[1] = {m};
            if (outbox_enqueue_commit_pg(c, "bench_outbox", one, 1, &err) != OUTBOX_OK)
                TEST_FAIL_("enqueue+commit: %s", err.message);
            outbox_msg_free(m);
            w->txns++;
            atomic_fetch_add(&txn_total, 1);
            i++;
            continue;
        }
        if (w->mode == BIZ_SELECT1) {
            r = PQexec(c, "SELECT 1");
            if (PQresultStatus(r) != PGRES_TUPLES_OK) TEST_FAIL_("select: %s", PQerrorMessage(c));
            PQclear(r);
        } else if (w->mode == BIZ_OUTBOX) {
            char agg[32];
            snprintf(agg, sizeof agg, "o-%ld", i);
            outbox_msg *m = NULL;
            outbox_msg_new(&m, "OrderPlaced", "Order", agg, "{\"total\":12.5}", &err);
            if (outbox_enqueue_pg_schema(c, "bench_outbox", m, &err) != OUTBOX_OK)
                TEST_FAIL_("enqueue: %s", err.message);
            outbox_msg_free(m);
        }
        r = PQexec(c, "COMMIT");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) TEST_FAIL_("commit: %s", PQerrorMessage(c));
        PQclear(r);
        w->txns++;
        atomic_fetch_add(&txn_total, 1);
        i++;
    }
    w->backend_cpu_s = server_pid > 0 ? bench_proc_cpu_s(backend) - cpu0 : 0;
    PQfinish(c);
    return NULL;
}

/* A relay draining bench_outbox to discard: while enqueue_rate runs. */
static void *drain_thread(void *arg)
{
    outbox_error err;
    if (outbox_relay_run(arg, &err) != OUTBOX_OK) fprintf(stderr, "relay: %s\n", err.message);
    return NULL;
}

/* CPU seconds of the postmaster and its children (WAL writer,
 * checkpointer, the relay's backend, ...) by pid; 0 without a server of
 * our own.  Backends that exit in between (the workers') are measured by
 * their workers. */
typedef struct server_snapshot {
    int n;
    long pid[256];
    double cpu[256];
} server_snapshot;

static void server_snap(server_snapshot *snap)
{
    char path[96];
    long child;
    snap->n = 0;
    if (server_pid <= 0) return;
    snap->pid[snap->n] = server_pid;
    snap->cpu[snap->n++] = bench_proc_cpu_s(server_pid);
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", (long)server_pid, (long)server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (snap->n < 256 && fscanf(f, "%ld", &child) == 1) {
        snap->pid[snap->n] = child;
        snap->cpu[snap->n++] = bench_proc_cpu_s(child);
    }
    fclose(f);
}

/* CPU used between two snapshots by the processes alive at both. */
static double server_cpu_between(const server_snapshot *a, const server_snapshot *b)
{
    double total = 0;
    for (int i = 0; i < b->n; i++)
        for (int j = 0; j < a->n; j++)
            if (a->pid[j] == b->pid[i]) total += b->cpu[i] - a->cpu[j];
    return total;
}

static double self_cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

typedef struct rate_result {
    double txn_s;
    double client_us; /* CPU per transaction */
    double server_us;
} rate_result;

static rate_result enqueue_rate(int nclients, int mode)
{
    worker w[64];
    rate_result res;
    static server_snapshot s0, s1;
    double c0 = self_cpu_s(), backends = 0;
    double t0 = now_s();
    long total = 0;
    server_snap(&s0);
    for (int i = 0; i < nclients; i++) {
        w[i].mode = mode;
        w[i].until = t0 + seconds;
        w[i].txns = 0;
        pthread_create(&w[i].th, NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < nclients; i++) {
        pthread_join(w[i].th, NULL);
        total += w[i].txns;
        backends += w[i].backend_cpu_s;
    }
    res.txn_s = total / (now_s() - t0);
    server_snap(&s1);
    res.client_us = total ? (self_cpu_s() - c0) * 1e6 / (double)total : 0;
    res.server_us = total ? (backends + server_cpu_between(&s0, &s1)) * 1e6 / (double)total : 0;
    return res;
}

/* Totals of the "relay draining" runs of one case. */
typedef struct relay_counts {
    long notes; /* notifications a LISTENing connection saw */
    long txns;  /* enqueuing transactions committed */
    unsigned long long published;
} relay_counts;

/* enqueue_rate with a relay draining bench_outbox to discard: in a thread
 * (c: the set-up connection, which empties the outbox afterwards). */
static rate_result relayed_rate(PGconn *c, int nclients, int mode, relay_counts *counts)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_relay_stats rs;
    outbox_error err;
    rate_result res;
    pthread_t th;

    outbox_relay_options_init(&o);
    o.batch_size = (unsigned)batch;
    if (outbox_relay_new(&r, url, "discard:", &o, &err) != OUTBOX_OK)
        TEST_FAIL_("relay: %s", err.message);
    pthread_create(&th, NULL, drain_thread, r);
    usleep(300000);
    PGconn *listener = connect_db();
    pgh_exec(listener, "LISTEN bench_outbox");
    atomic_store(&txn_total, 0);
    res = enqueue_rate(nclients, mode);
    counts->txns += atomic_load(&txn_total);
    for (int t = 0; t < 20; t++) {
        PGnotify *nt;
        PQconsumeInput(listener);
        while ((nt = PQnotifies(listener)) != NULL) {
            counts->notes++;
            PQfreemem(nt);
        }
        usleep(10000);
    }
    PQfinish(listener);
    outbox_relay_stop(r);
    pthread_join(th, NULL);
    outbox_relay_get_stats(r, &rs);
    outbox_relay_free(r);
    counts->published += rs.published;
    pgh_exec(c, "DELETE FROM bench_outbox.outbox");
    return res;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum {
    CASE_PLAIN,
    CASE_SELECT1,
    CASE_QUIET,
    CASE_RELAYED,
    CASE_NOISY,
    CASE_COMMIT_QUIET,
    CASE_COMMIT_RELAYED,
    CASE_COUNT
};

static const char *const case_name[CASE_COUNT] = {"business row",
                                                  "+ SELECT 1 (one more round trip)",
                                                  "+ outbox, no relay",
                                                  "+ outbox, relay draining",
                                                  "+ outbox, every transaction notifying",
                                                  "+ enqueue_commit_pg, no relay",
                                                  "+ enqueue_commit_pg, relay draining"};

int main(int argc, char **argv)
{
    static pgh_server server;
    int skip_latency = 0, skip_enqueue = 0, skip_drain = 0, listen = 0, unix_socket = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n_msgs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-b") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--skip-drain"))
            skip_drain = 1;
        else if (!strcmp(argv[i], "--url") && i + 1 < argc) {
            snprintf(url, sizeof url, "%s", argv[++i]);
        } else if (!strcmp(argv[i], "--skip-latency"))
            skip_latency = 1;
        else if (!strcmp(argv[i], "--skip-enqueue"))
            skip_enqueue = 1;
        else if (!strcmp(argv[i], "--no-analyze"))
            no_analyze = 1;
        else if (!strcmp(argv[i], "--listen"))
            listen = 1;
        else if (!strcmp(argv[i], "--unix"))
            unix_socket = 1;
        else if (!strcmp(argv[i], "--capture") && i + 1 < argc && !strcmp(argv[i + 1], "wal")) {
            capture_wal = 1;
            i++;
        } else if (!strcmp(argv[i], "--low-rate") && i + 1 < argc)
            low_rate = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--low-txn") && i + 1 < argc)
            low_txn = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--wal-txn") && i + 1 < argc)
            wal_txn = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_pg_drain [-n N] [-b BATCH] [--rate R] [--seconds T] "
                    "[--clients C] [--repeat R] [--url postgres://...] [--skip-latency]"
                    " [--skip-enqueue] [--skip-drain] [--no-analyze] [--listen]"
                    " [--capture wal] [--low-rate R2] [--low-txn M2] [--wal-txn M] [--unix]\n"
                    "  --capture wal   also WAL capture, next to the table: the catch-up drain of"
                    " N messages\n"
                    "                  emitted to the WAL (M per transaction, default 10), and"
                    " the latency\n"
                    "                  with outbox_emit_pg, at R and at R2 msg/s (default 100,"
                    " M2 messages\n"
                    "                  to a transaction, default 1); needs\n"
                    "                  wal_level = logical; makes and drops its replication slot\n"
                    "  --unix          every connection through the server's Unix socket instead of"
                    " TCP on\n"
                    "                  127.0.0.1 (the server this bench starts; not with --url)\n");
            return 2;
        }
    }
    if (clients < 1 || clients > 64 || batch < 1 || n_msgs < 1 || rate < 1 || seconds < 1 ||
        repeat < 1 || repeat > 64 || low_rate < 1 || low_txn < 1 || low_txn > 1000 || wal_txn < 1 ||
        wal_txn > 100000) {
        fprintf(stderr, "bench_pg_drain: out-of-range setting\n");
        return 2;
    }
    if (!url[0]) {
        pgh_start(&server);
        server_pid = server.pid;
        if (unix_socket)
            pgh_unix_url(&server, url, sizeof url);
        else
            snprintf(url, sizeof url, "%s", server.url);
    } else if (unix_socket) {
        fprintf(stderr,
                "bench_pg_drain: --unix is for the server this bench starts (without --url)\n");
        return 2;
    }
    snprintf(conninfo, sizeof conninfo, "%s", url);
    {
        char full[600];
        snprintf(full, sizeof full, "%.560s%sschema=bench_outbox", url,
                 strchr(url, '?') ? "&" : "?");
        snprintf(url, sizeof url, "%s", full);
        snprintf(wal_url, sizeof wal_url, "%s&capture=wal", url);
    }
    if (capture_wal && server_pid <= 0) atexit(drop_slot_at_exit);
    PGconn *c = connect_db();
    outbox_error err;
    pgh_exec(c, "DROP SCHEMA IF EXISTS bench_outbox CASCADE");
    if (outbox_schema_init_pg(c, "bench_outbox", &err) != OUTBOX_OK) TEST_FAIL_("%s", err.message);
    PGresult *v = PQexec(c, "SELECT version()");
    printf("server: %s\n", PQgetvalue(v, 0, 0));
    PQclear(v);
    const char *settings[] = {
        "shared_buffers",     "fsync", "synchronous_commit", "wal_level", "max_wal_size",
        "checkpoint_timeout", NULL};
    printf("settings:");
    for (int i = 0; settings[i]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SHOW %s", settings[i]);
        v = PQexec(c, sql);
        printf(" %s=%s", settings[i], PQgetvalue(v, 0, 0));
        PQclear(v);
    }
    printf("\n");
    printf("load average %.2f at start\n", bench_loadavg());

    if (!skip_drain) {
        printf("drain %lld messages, batch %d:\n", n_msgs, batch);
        fill(c, n_msgs);
        double tb = baseline(c);
        printf("  baseline (DELETE ... SKIP LOCKED LIMIT %d RETURNING): %.2f s, %.0f msg/s\n",
               batch, tb, n_msgs / tb);
        fill(c, n_msgs);
        double tr = relay_drain(url, 0);
        printf("  relay -> discard:                                    %.2f s, %.0f msg/s"
               " (%.2fx the baseline's time)\n",
               tr, n_msgs / tr, tr / tb);
        fflush(stdout);
        if (capture_wal) wal_drain(c, tr, tb);
        if (listen) {
            /* Pairs of drains, without and with the monitor, interleaved. */
            double plain_v[64], mon_v[64];
            for (int k = 0; k < repeat; k++) {
                fill(c, n_msgs);
                plain_v[k] = relay_drain(url, 0);
                fill(c, n_msgs);
                mon_v[k] = relay_drain(url, 1);
                printf("  pair %d/%d: relay %.2f s, relay +monitor %.2f s\n", k + 1, repeat,
                       plain_v[k], mon_v[k]);
                fflush(stdout);
            }
            double tp = median(plain_v, repeat), tm = median(mon_v, repeat);
            printf("  monitor: relay -> discard: with /metrics scraped every 100 ms: %.0f msg/s vs "
                   "%.0f msg/s without (medians of %d), throughput cost %.1f%% (target <= 2%%: "
                   "%s)\n",
                   n_msgs / tm, n_msgs / tp, repeat, (tm / tp - 1.0) * 100.0,
                   tm / tp - 1.0 <= 0.02 ? "met" : "MISSED");
            fflush(stdout);
        }
    }

    if (!skip_latency && capture_wal)
        latency_wal();
    else if (!skip_latency)
        (void)latency(0, rate, LAT_PER_TXN, seconds, "");
    fflush(stdout);

    if (!skip_enqueue) {
        pgh_exec(c, "DROP TABLE IF EXISTS bench_orders");
        pgh_exec(c, "CREATE TABLE bench_orders (id bigserial PRIMARY KEY, customer text,"
                    " total numeric, created_at timestamptz DEFAULT now())");
        int counts[2] = {1, clients};
        for (int k = 0; k < 2; k++) {
            static double rate_v[CASE_COUNT][64], cli_v[CASE_COUNT][64], srv_v[CASE_COUNT][64];
            relay_counts relayed[2] = {{0, 0, 0}, {0, 0, 0}};
            for (int rep = 0; rep < repeat; rep++) {
                rate_result rr[CASE_COUNT];
                rr[CASE_PLAIN] = enqueue_rate(counts[k], BIZ_ONLY);
                rr[CASE_SELECT1] = enqueue_rate(counts[k], BIZ_SELECT1);
                rr[CASE_QUIET] = enqueue_rate(counts[k], BIZ_OUTBOX);
                rr[CASE_COMMIT_QUIET] = enqueue_rate(counts[k], BIZ_OUTBOX_COMMIT);
                pgh_exec(c, "DELETE FROM bench_outbox.outbox");
                rr[CASE_RELAYED] = relayed_rate(c, counts[k], BIZ_OUTBOX, &relayed[0]);
                rr[CASE_COMMIT_RELAYED] =
                    relayed_rate(c, counts[k], BIZ_OUTBOX_COMMIT, &relayed[1]);

                pgh_exec(c,
                         "CREATE FUNCTION bench_notify_always() RETURNS trigger LANGUAGE plpgsql"
                         " AS $$ BEGIN PERFORM pg_notify('bench_outbox', ''); RETURN NULL; END $$");
                pgh_exec(c, "CREATE TRIGGER bench_notify_always AFTER INSERT ON bench_outbox.outbox"
                            " FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_always()");
                rr[CASE_NOISY] = enqueue_rate(counts[k], BIZ_OUTBOX);
                pgh_exec(c, "DROP TRIGGER bench_notify_always ON bench_outbox.outbox");
                pgh_exec(c, "DROP FUNCTION bench_notify_always()");
                pgh_exec(c, "DELETE FROM bench_outbox.outbox");
                pgh_exec(c, "VACUUM bench_outbox.outbox");
                for (int i = 0; i < CASE_COUNT; i++) {
                    rate_v[i][rep] = rr[i].txn_s;
                    cli_v[i][rep] = rr[i].client_us;
                    srv_v[i][rep] = rr[i].server_us;
                }
            }
            double plain = median(rate_v[CASE_PLAIN], repeat);
            double plain_cpu =
                median(cli_v[CASE_PLAIN], repeat) + median(srv_v[CASE_PLAIN], repeat);
            printf("  enqueue, %d connection(s), %d s per case, median of %d:\n", counts[k],
                   seconds, repeat);
            for (int i = 0; i < CASE_COUNT; i++) {
                double med = median(rate_v[i], repeat);
                double cu = median(cli_v[i], repeat), su = median(srv_v[i], repeat);
                printf("    %-38s %7.0f txn/s", case_name[i], med);
                if (i != CASE_PLAIN)
                    printf(" (costs %5.1f%%)", 100.0 * (1.0 - med / plain));
                else
                    printf("               ");
                if (server_pid > 0)
                    printf("  CPU/txn: client %6.1f us, server %6.1f us (%+.0f us)", cu, su,
                           cu + su - plain_cpu);
                else
                    printf("  CPU/txn: client %6.1f us", cu);
                if (i == CASE_RELAYED || i == CASE_COMMIT_RELAYED) {
                    const relay_counts *rc = &relayed[i == CASE_COMMIT_RELAYED];
                    printf("; %llu published, %ld of %ld transactions notified", rc->published,
                           rc->notes, rc->txns);
                }
                if (repeat > 1) {
                    printf(" [runs:");
                    for (int rep = 0; rep < repeat; rep++)
                        printf(" %.0f", rate_v[i][rep]);
                    printf("]");
                }
                printf("\n");
            }
            fflush(stdout);
        }
    }
    pgh_exec(c, "DROP SCHEMA IF EXISTS bench_outbox CASCADE");
    pgh_exec(c, "DROP TABLE IF EXISTS bench_orders");
    PQfinish(c);
    printf("load average %.2f at the end\n", bench_loadavg());
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
