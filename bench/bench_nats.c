/*
 * bench_nats.c - how fast the relay drains an outbox into NATS JetStream
 * (and Kafka), next to the raw publish rate of the broker client measured
 * in the same run: the ceiling.
 *
 * One nats-server -js (file storage, R1) is started on a free loopback port
 * with its store in a temp dir (tests/support/nats.h), and stopped at exit.
 * Every case publishes N messages of the same bytes (PAYLOAD_BYTES JSON
 * payloads over A aggregates, the relay's CloudEvents headers and
 * Nats-Msg-Id) to its own stream, with the same window of pending acks W:
 *
 *   ceiling          nats.c alone: js_PublishMsgAsync of N messages with
 *                    PublishAsync.MaxPending = W, then
 *                    js_PublishAsyncComplete; no database
 *   sqlite -> nats   outbox_relay_new("sqlite:COPY", "nats://...
 *                    &max_pending=W", once, batch B) + outbox_relay_run over
 *                    N pending messages (filled once through the public
 *                    enqueue API, copied before the run): the relay
 *                    pipelines (claims and records the next batch while a
 *                    batch's acks are outstanding; its default, see
 *                    src/relay/relay.c)
 *   ... (serial)     the same with OUTBOX_RELAY_PIPELINE=0: the serial loop
 *                    (claim, publish, wait for every ack, record), for the
 *                    comparison in the same run (--no-serial leaves it out)
 *   postgres -> nats the same from the PostgreSQL store, on a cluster started
 *                    by tests/support/pg.h (rows inserted server-side), when
 *                    the PostgreSQL binaries are installed; the ceiling is
 *                    measured again just before it ("again"), and the
 *                    PostgreSQL rows' ratios are to that one, and right
 *                    after it ("after", once the deleted rows are vacuumed):
 *                    a line per round gives the relay's ratio to the mean
 *                    of the two and to the first ceiling; with
 *                    --pg-rounds K the fill, the ceilings and the relay run
 *                    K times, and the medians over the rounds follow
 *   postgres (wal)   with --pg-wal, WAL capture (docs/WAL.md) on the same
 *   -> nats          cluster: N messages emitted to the WAL with no relay
 *                    running (SELECT bench_outbox.emit(...) server-side, the
 *                    same type, aggregates and payloads, 10 to a committed
 *                    transaction) on a replication slot made for the case,
 *                    then the relay on ?capture=wal, once, between a
 *                    ceiling right before it ("before") and one right after
 *                    it ("after"), and its ratio to their mean; then the
 *                    same to discard:.  The slot is dropped after each run
 *   store alone      the same relay runs from SQLite and from PostgreSQL to
 *                    discard: (the claim and completion work without a
 *                    broker): pipelining the next claim with a batch's acks
 *                    can at best overlap the two, so the slower of "store
 *                    alone" and the ceiling bounds the relay
 *   kafka ceiling,   with librdkafka's mock cluster (3 brokers, 8
 *   sqlite -> kafka, partitions, in this process, real Kafka protocol over
 *   postgres -> kafka loopback): a raw idempotent producer (acks=all) of N
 *                    messages, with the kafka:// destination's producer
 *                    settings and the same headers as the relay sends,
 *                    then the relay from a SQLite copy and from
 *                    PostgreSQL to kafka:// through a publish window of
 *                    --kafka-window messages (window_messages), and from
 *                    SQLite through a window of two batches (what the
 *                    relay had before the window): peak RSS shows the
 *                    window's memory.  The raw producer runs again right
 *                    after the SQLite relay ("again") and after the
 *                    PostgreSQL one ("after"): each relay is set against
 *                    the ceiling before it and the one after; under each
 *                    PostgreSQL -> Kafka row, the server's CPU per message
 *                    (its processes, bench_pg_cpu) when it started the server
 *
 * Each case runs in a forked child (bench_common.h): peak RSS and CPU time
 * from wait4().  A figure is printed only after the parent checked the
 * result: the stream (topic) holds exactly N messages and the outbox has no
 * unsent row left.  Exit status: 0, 1 on a failed case, 2 on bad usage, 77
 * when nats-server or the NATS client library is missing.
 *
 * --fresh-server starts every case on a newly started nats-server with an
 * empty store, so that no case runs on a server that stored and deleted the
 * streams of the cases before it.
 *
 * Usage: bench_nats [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES]
 *                   [--no-pg] [--no-kafka] [--no-serial] [--pg-rounds K]
 *                   [--fresh-server] [--kafka-only] [--kafka-window M] [--pg-wal]
 */
#ifndef OUTBOX_HAVE_NATS
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "bench_nats: skipped: this build has no NATS destination (nats.c not "
                    "found at configure time)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/nats.h"
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#include <pwd.h>
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#endif

#include "bench_outbox.h"

#include <ctype.h>
#include <sys/stat.h>

#include "outbox.h"

enum { PAYLOAD_BYTES = 300 };

static long long n_msgs = 200000;
static unsigned batch = 512;
static long long window = 4096;
static unsigned aggregates = 1000;
static nh_server nats;

/* ------------------------------------------------------------------------
 * Children
 * ---------------------------------------------------------------------- */

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

static atomic_llong ceiling_errors; /* counted on nats.c's thread */

static void ceiling_err_handler(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)pae;
    (void)closure;
    atomic_fetch_add(&ceiling_errors, 1);
}

/* Child: the ceiling.  The same messages the relay builds (subject,
 * payload, Nats-Msg-Id and the CloudEvents headers), published with nats.c
 * alone. */
static void run_nats_ceiling(void *arg, bench_report *r)
{
    const char *subject = arg;
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    natsStatus s;
    char payload[PAYLOAD_BYTES + 1], id[48], agg[32];
    double t0 = bench_now();
    long long i;

    s = natsOptions_Create(&o);
    if (s == NATS_OK) s = natsOptions_SetURL(o, nats.url);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK) {
        bench_fail(r, "connect %s: %s", nats.url, natsStatus_GetText(s));
        goto out;
    }
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = window;
    /* A full window waits as long as the relay's does (its default
     * ack_timeout), not nats.c's 200 ms, which a server pausing on its
     * writes can exceed. */
    jo.PublishAsync.StallWait = 5000;
    jo.PublishAsync.ErrHandler = ceiling_err_handler;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK) {
        bench_fail(r, "JetStream context: %s", natsStatus_GetText(s));
        goto out;
    }
    for (i = 0; i < n_msgs; i++) {
        natsMsg *m = NULL;
        unsigned a = (unsigned)(i % aggregates);
        bench_payload(payload, PAYLOAD_BYTES, i, a);
        snprintf(id, sizeof id, "0190a5c8-0000-7000-8000-%012lld", i);
        snprintf(agg, sizeof agg, "order-%06u", a);
        s = natsMsg_Create(&m, subject, NULL, payload, PAYLOAD_BYTES);
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-specversion", "1.0");
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-id", id);
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-source", "/outbox");
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-type", "OrderPlaced");
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-subject", agg);
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-time", "2026-11-28T02:00:00.000000Z");
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "content-type", "application/json");
        if (s == NATS_OK) s = natsMsgHeader_Set(m, "ce-aggregatetype", "Order");
        if (s == NATS_OK) s = js_PublishMsgAsync(js, &m, NULL);
        natsMsg_Destroy(m); /* NULL when the library took it */
        if (s != NATS_OK) {
            bench_fail(r, "js_PublishMsgAsync of message %lld: %s", i, natsStatus_GetText(s));
            goto out;
        }
    }
    jsPubOptions_Init(&po);
    po.MaxWait = 120000;
    s = js_PublishAsyncComplete(js, &po);
    if (s != NATS_OK) {
        bench_fail(r, "js_PublishAsyncComplete: %s", natsStatus_GetText(s));
        goto out;
    }
    r->seconds = bench_now() - t0;
    r->count = n_msgs;
    if (atomic_load(&ceiling_errors)) {
        bench_fail(r, "%lld publish errors", (long long)atomic_load(&ceiling_errors));
        goto out;
    }
    r->ok = 1;
out:
    t0 = bench_now();
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    r->teardown_seconds = bench_now() - t0;
}

/* ------------------------------------------------------------------------
 * Results
 * ---------------------------------------------------------------------- */

static double nats_ceiling_rate;
static int failures;

/* The parent never calls nats.c itself: a child forked from a process
 * where the library started its threads (timers, connection callbacks)
 * would have none of them.  Stream set-up and checks run in children. */
static void child_stream_create(void *arg, bench_report *r)
{
    const char *const *names = arg; /* stream, subjects */
    nh_stream_create(&nats, names[0], names[1]);
    r->ok = 1;
}

static void child_stream_count(void *arg, bench_report *r)
{
    const char *stream = arg;
    jsCtx *js = NULL;
    natsConnection *nc;
    r->count = nh_stream_count(&nats, stream);
    nc = nh_connect(&nats, &js);
    js_DeleteStream(js, stream, NULL, NULL); /* frees the disk for the next case */
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    r->ok = 1;
}

/* --fresh-server: every case starts on a newly started nats-server with an
 * empty store directory (same port), so no case runs on a server that has
 * already stored and deleted the streams of the cases before it. */
static int fresh_server;

static void server_renew(void)
{
    char log[CH_PATH];
    const char *rm[] = {"/bin/rm", "-rf", nats.dir, NULL};
    nh_server_stop(&nats);
    ch_path(log, "rm.log");
    if (ch_run(rm, NULL, NULL, log, 60000) != 0 || mkdir(nats.dir, 0755) != 0)
        TEST_FAIL_("cannot empty the nats-server store %s", nats.dir);
    nh_server_start(&nats);
}

static int stream_create(const char *stream, const char *subjects)
{
    const char *names[2] = {stream, subjects};
    bench_result res;
    if (fresh_server) server_renew();
    return bench_run_child("stream create", child_stream_create, (void *)names,
                           disarm_parent_handlers, &res);
}

/* The stream must hold exactly n_msgs messages; deleted afterwards. */
static int check_stream(const char *what, const char *stream)
{
    bench_result res;
    if (bench_run_child("stream check", child_stream_count, (void *)stream, disarm_parent_handlers,
                        &res))
        return -1;
    if (res.count != n_msgs) {
        fprintf(stderr, "bench_nats: %s: stream %s holds %lld messages, expected %lld\n", what,
                stream, res.count, n_msgs);
        return -1;
    }
    return 0;
}

/* The ceiling into a new stream (subjects "<prefix>.>"), checked. */
static int ceiling_run(const char *name, const char *stream, const char *prefix, bench_result *res)
{
    char subjects[32], subject[64];
    snprintf(subjects, sizeof subjects, "%s.>", prefix);
    snprintf(subject, sizeof subject, "%s.Order.OrderPlaced", prefix);
    if (stream_create(stream, subjects)) return -1;
    if (bench_run_child(name, run_nats_ceiling, subject, disarm_parent_handlers, res)) return -1;
    return check_stream(name, stream);
}

/* ------------------------------------------------------------------------
 * SQLite
 * ---------------------------------------------------------------------- */

/* ------------------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;
static double pg_ceiling_rate; /* measured again before the PostgreSQL cases */

/* One PostgreSQL -> JetStream case into a new stream (subjects
 * "<prefix>.>"), checked: the stream holds every message and no row is
 * left unsent.  0 or -1. */
static int pg_nats_run(PGconn *conn, bench_relay_case *c, const char *name, const char *stream,
                       const char *prefix, bench_result *res)
{
    char subjects[32];
    long long left;
    snprintf(subjects, sizeof subjects, "%s.>", prefix);
    if (stream_create(stream, subjects)) return -1;
    snprintf(c->to_url, sizeof c->to_url,
             "%s?stream=%s&subject=%s.{aggregate_type}.{type}&max_pending=%lld", nats.url, stream,
             prefix, window);
    if (bench_run_child(name, bench_run_relay, c, disarm_parent_handlers, res)) return -1;
    left = bench_pg_left(conn);
    if (check_stream(name, stream)) return -1;
    if (left != 0) {
        fprintf(stderr, "bench_nats: %s: %lld unsent rows left\n", name, left);
        return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v). */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The relay case c bracketed by ceilings: the ceiling right before it (row
 * before_row; pg_ceiling_rate), the relay (row relay_row, its ratio to that
 * ceiling), then VACUUM and CHECKPOINT (the relay's work on the server
 * written back, as the fill's is before the first) and the ceiling again.
 * Streams BENCH_RAW_<TAG>, BENCH_<TAG> and BENCH_RAW_<TAG>A, subjects
 * raw<tag>.>, <tag>.> and raw<tag>a.> (TAG: tag upper-cased).
 * *relay_rate and *by_mean (the relay's ratio to the mean of the two
 * ceilings) are filled.  0, or -1. */
static int pg_bracketed(PGconn *conn, bench_relay_case *c, const char *tag, const char *before_row,
                        const char *relay_row, double *relay_rate, double *by_mean)
{
    char stream[32], prefix[32], upper[16];
    bench_result res;
    size_t i;

    for (i = 0; tag[i] && i + 1 < sizeof upper; i++)
        upper[i] = (char)toupper((unsigned char)tag[i]);
    upper[i] = '\0';
    snprintf(stream, sizeof stream, "BENCH_RAW_%s", upper);
    snprintf(prefix, sizeof prefix, "raw%s", tag);
    if (ceiling_run(before_row, stream, prefix, &res)) return -1;
    bench_print_row(before_row, &res, 0);
    pg_ceiling_rate = (double)res.count / res.seconds;

    snprintf(stream, sizeof stream, "BENCH_%s", upper);
    if (pg_nats_run(conn, c, relay_row, stream, tag, &res)) return -1;
    bench_print_row(relay_row, &res, pg_ceiling_rate);
    *relay_rate = (double)res.count / res.seconds;

    pgh_exec(conn, "VACUUM bench_outbox.outbox");
    pgh_exec(conn, "CHECKPOINT");
    snprintf(stream, sizeof stream, "BENCH_RAW_%sA", upper);
    snprintf(prefix, sizeof prefix, "raw%sa", tag);
    if (ceiling_run("nats raw async publish (after)", stream, prefix, &res)) return -1;
    bench_print_row("nats raw async publish (after)", &res, 0);
    *by_mean = *relay_rate / ((pg_ceiling_rate + (double)res.count / res.seconds) / 2);
    return 0;
}

static void pg_case(int no_serial, int pg_rounds)
{
    int round;
    bench_result res;
    bench_relay_case c = {0};
    PGconn *conn;
    long long left;
    double relay_rate, by_mean[20], by_first[20];

    c.batch = batch;
    c.expect = n_msgs;

    const char *why = pgh_available();
    if (why != NULL) {
        printf("%-34s skipped: %s\n", "postgres -> nats (relay)", why);
        return;
    }
    pgh_start(&pg);
    conn = pgh_connect(&pg);
    if (bench_pg_schema_new(conn)) exit(1);
    {
        PGresult *v = PQexec(conn, "SELECT current_setting('server_version'),"
                                   " current_setting('shared_buffers')");
        if (PQresultStatus(v) == PGRES_TUPLES_OK)
            printf("PostgreSQL %s, shared_buffers %s (tests/support/pg.h)\n", PQgetvalue(v, 0, 0),
                   PQgetvalue(v, 0, 1));
        PQclear(v);
    }
    snprintf(c.store_url, sizeof c.store_url, "%s?schema=bench_outbox", pg.url);
    /* --pg-rounds K: the fill, the ceiling again and the relay, K times, so
     * each relay run has a ceiling measured just before it. */
    for (round = 0; round < pg_rounds; round++) {
        bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
        /* The ceiling again, right before the PostgreSQL cases: this machine's
         * speed drifts over the minutes the SQLite cases and the fill take, so
         * their ratios are to this one (the first is printed above); and
         * once more right after it: the relay's ratio to the mean of the
         * two brackets its run. */
        if (pg_bracketed(conn, &c, "pg", "nats raw async publish (again)",
                         "postgres -> nats (relay)", &relay_rate, &by_mean[round])) {
            failures++;
            goto out;
        }
        by_first[round] = nats_ceiling_rate > 0 ? relay_rate / nats_ceiling_rate : 0;
        printf("  round %d: postgres -> nats / mean of the ceilings before and after it %.2f,"
               " / first ceiling %.2f\n",
               round + 1, by_mean[round], by_first[round]);
    }
    if (pg_rounds > 1)
        printf("  postgres -> nats over %d rounds: median %.2f of the ceilings around it,"
               " median %.2f of the first ceiling\n",
               pg_rounds, median(by_mean, pg_rounds), median(by_first, pg_rounds));

    if (!no_serial) {
        bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
        c.serial = 1;
        if (pg_nats_run(conn, &c, "postgres -> nats (serial)", "BENCH_PGS", "pgs", &res)) {
            failures++;
            goto out;
        }
        c.serial = 0;
        bench_print_row("postgres -> nats (serial relay)", &res, pg_ceiling_rate);
    }

    /* The store side alone: what pipelining could at best overlap with. */
    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    snprintf(c.to_url, sizeof c.to_url, "discard:");
    if (bench_run_child("postgres -> discard", bench_run_relay, &c, disarm_parent_handlers, &res)) {
        failures++;
        goto out;
    }
    left = bench_pg_left(conn);
    if (left != 0) {
        fprintf(stderr, "bench_nats: postgres -> discard: %lld unsent rows left\n", left);
        failures++;
        goto out;
    }
    bench_print_row("postgres -> discard: (store alone)", &res, pg_ceiling_rate);
out:
    PQfinish(conn);
}

/* --pg-wal: WAL capture.  N messages emitted to the WAL with no relay
 * running (bench_pg_fill's type, aggregates and payloads, WAL_TXN_MSGS to
 * a committed transaction) on a replication slot made for the case; the
 * relay on ?capture=wal, once, bracketed by ceilings as the table's rounds
 * are; then the same to discard: (the store alone).  Every run must
 * publish exactly N, send nothing to the table, and the stream hold
 * exactly N.  The slot is dropped after each run. */
enum { WAL_TXN_MSGS = 10 };

/* Makes the slot of store_url and emits n_msgs to the WAL. */
static void pg_wal_fill(PGconn *conn, const char *store_url)
{
    char args[512];
    long long wal_bytes;
    double secs;
    if (bench_pg_wal_slot(store_url, 1, NULL)) TEST_FAIL_("cannot create the replication slot");
    snprintf(args, sizeof args,
             "'OrderPlaced', 'order-' || lpad((i %% %u)::text, 6, '0'),"
             " jsonb_build_object('n', i, 'pad', repeat('x', %d - 18 - length(i::text))), '{}',"
             " 'Order'",
             aggregates, PAYLOAD_BYTES);
    secs = bench_pg_emit_fill(conn, n_msgs, WAL_TXN_MSGS, args, &wal_bytes);
    printf("fill: %lld messages emitted to the WAL (SELECT bench_outbox.emit(...), %d per"
           " transaction) in %.1f s, %.0f MB of WAL\n",
           n_msgs, WAL_TXN_MSGS, secs, wal_bytes / 1e6);
}

static void pg_wal_case(void)
{
    bench_relay_case c = {0};
    bench_result res;
    PGconn *conn;
    long long lag = 0;
    double relay_rate, by_mean;
    const char *why = pgh_available();

    if (why != NULL) {
        printf("%-34s skipped: %s\n", "postgres (wal) -> nats (relay)", why);
        return;
    }
    if (pg.url[0] == '\0') pgh_start(&pg);
    conn = pgh_connect(&pg);
    if (bench_pg_schema_new(conn)) exit(1);
    c.batch = batch;
    c.expect = n_msgs;
    snprintf(c.store_url, sizeof c.store_url, "%s?schema=bench_outbox&capture=wal", pg.url);

    pg_wal_fill(conn, c.store_url);
    if (pg_bracketed(conn, &c, "pgw", "nats raw async publish (before)",
                     "postgres (wal) -> nats (relay)", &relay_rate, &by_mean) ||
        bench_pg_wal_slot(c.store_url, 0, &lag)) {
        failures++;
        goto out;
    }
    printf("  postgres (wal) -> nats / mean of the ceilings before and after it %.2f"
           " (target >= 0.85: %s), / first ceiling %.2f; the slot lagged %lld bytes when"
           " dropped\n",
           by_mean, by_mean >= 0.85 ? "met" : "MISSED",
           nats_ceiling_rate > 0 ? relay_rate / nats_ceiling_rate : 0, lag);

    pg_wal_fill(conn, c.store_url);
    snprintf(c.to_url, sizeof c.to_url, "discard:");
    if (bench_run_child("postgres (wal) -> discard", bench_run_relay, &c, disarm_parent_handlers,
                        &res) ||
        bench_pg_wal_slot(c.store_url, 0, NULL)) {
        failures++;
        goto out;
    }
    if (bench_pg_left(conn) != 0) {
        fprintf(stderr, "bench_nats: postgres (wal) -> discard: rows went to the table\n");
        failures++;
        goto out;
    }
    bench_print_row("postgres (wal) -> discard: (alone)", &res, pg_ceiling_rate);
out:
    PQfinish(conn);
}

/* The server's CPU during the last pg_relay_to, seconds (its busiest
 * process: the relay's claims), or -1 when the server is not ours. */
static double pg_server_s = -1, pg_server_top_s;

/* Prints pg_server_s per message of res, under its row. */
static void pg_server_line(const bench_result *res)
{
    if (pg_server_s >= 0 && res->count > 0)
        printf("  PostgreSQL server: %.2f us of CPU per message (%.2f s; its busiest process "
               "%.2f s)\n",
               pg_server_s * 1e6 / (double)res->count, pg_server_s, pg_server_top_s);
}

/* The relay from a freshly filled PostgreSQL outbox to to_url (the server
 * started when pg_case did not run), checked for no unsent row left.  0 or
 * -1. */
static int pg_relay_to(const char *name, const char *to_url, bench_result *res)
{
    bench_pg_cpu watch;
    int watched;
    static int started;
    bench_relay_case c;
    PGconn *conn;
    long long left;
    int rc = -1;
    const char *why = pgh_available();

    if (why != NULL) {
        printf("%-34s skipped: %s\n", name, why);
        return 0;
    }
    if (!started && pg.url[0] == '\0') pgh_start(&pg);
    started = 1;
    conn = pgh_connect(&pg);
    if (bench_pg_schema_new(conn)) exit(1);
    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    memset(&c, 0, sizeof c);
    c.batch = batch;
    c.expect = n_msgs;
    snprintf(c.store_url, sizeof c.store_url, "%s?schema=bench_outbox", pg.url);
    snprintf(c.to_url, sizeof c.to_url, "%s", to_url);
    watched = bench_pg_cpu_start(&watch, (long)pg.pid) == 0;
    pg_server_s = -1;
    if (bench_run_child(name, bench_run_relay, &c, disarm_parent_handlers, res) == 0) {
        if (watched) pg_server_s = bench_pg_cpu_stop(&watch, &pg_server_top_s);
        watched = 0;
        left = bench_pg_left(conn);
        if (left == 0)
            rc = 0;
        else
            fprintf(stderr, "bench_nats: %s: %lld unsent rows left\n", name, left);
    }
    if (watched) (void)bench_pg_cpu_stop(&watch, NULL);
    PQfinish(conn);
    return rc;
}
#endif

/* ------------------------------------------------------------------------
 * Kafka (librdkafka mock cluster)
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_RDKAFKA
enum { KAFKA_PARTITIONS = 8 };
static long long kafka_window = 20000; /* --kafka-window: the destination's window_messages */

static char kafka_bootstraps[256];

/* The producer settings of the raw case are the kafka:// destination's own
 * (src/transport/kafka.c, kafka_open): idempotent, gapless, acks=all, no
 * message timeout, linger.ms 5, so that the ceiling and the relay build
 * the same requests. */
static int kafka_conf(rd_kafka_conf_t *conf, char *errstr, size_t len)
{
    const char *kv[][2] = {{"bootstrap.servers", kafka_bootstraps},
                           {"enable.idempotence", "true"},
                           {"enable.gapless.guarantee", "true"},
                           {"acks", "all"},
                           {"message.timeout.ms", "0"},
                           {"linger.ms", "5"},
                           {"log_level", "3"}};
    size_t i;
    for (i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], errstr, len) != RD_KAFKA_CONF_OK) return -1;
    return 0;
}

static long long kafka_delivered, kafka_errors;

static void kafka_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err)
        kafka_errors++;
    else
        kafka_delivered++;
}

/* Child: the raw idempotent producer, same key, payload and headers as the
 * relay sends for the filled rows (CloudEvents attributes, aggregate type
 * "Order" as ce_aggregatetype, no message headers). */
static void run_kafka_ceiling(void *arg, bench_report *r)
{
    const char *topic = arg;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    char errstr[512], payload[PAYLOAD_BYTES + 1], id[48], agg[32];
    double t0 = bench_now(), cpu0 = bench_thread_cpu();
    long long i;

    if (kafka_conf(conf, errstr, sizeof errstr)) {
        bench_fail(r, "kafka conf: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        bench_fail(r, "rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return;
    }
    for (i = 0; i < n_msgs; i++) {
        unsigned a = (unsigned)(i % aggregates);
        rd_kafka_headers_t *h = rd_kafka_headers_new(8);
        rd_kafka_resp_err_t e;
        bench_payload(payload, PAYLOAD_BYTES, i, a);
        snprintf(id, sizeof id, "0190a5c8-0000-7000-8000-%012lld", i);
        snprintf(agg, sizeof agg, "order-%06u", a);
        rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
        rd_kafka_header_add(h, "ce_id", -1, id, -1);
        rd_kafka_header_add(h, "ce_source", -1, "/outbox", -1);
        rd_kafka_header_add(h, "ce_type", -1, "OrderPlaced", -1);
        rd_kafka_header_add(h, "ce_subject", -1, agg, -1);
        rd_kafka_header_add(h, "ce_time", -1, "2026-11-28T02:00:00.000000Z", -1);
        rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
        rd_kafka_header_add(h, "ce_aggregatetype", -1, "Order", -1);
        for (;;) {
            e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(agg, strlen(agg)),
                                  RD_KAFKA_V_VALUE(payload, PAYLOAD_BYTES),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                                  RD_KAFKA_V_END);
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            rd_kafka_poll(rk, 10);
        }
        if (e) {
            rd_kafka_headers_destroy(h);
            bench_fail(r, "produce %lld: %s", i, rd_kafka_err2str(e));
            goto out;
        }
        rd_kafka_poll(rk, 0);
    }
    if (rd_kafka_flush(rk, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        bench_fail(r, "%s", "flush timed out");
        goto out;
    }
    r->seconds = bench_now() - t0;
    r->thread_cpu_seconds = bench_thread_cpu() - cpu0;
    r->count = kafka_delivered;
    if (kafka_errors || kafka_delivered != n_msgs) {
        bench_fail(r, "%lld delivered, %lld errors", kafka_delivered, kafka_errors);
        goto out;
    }
    r->ok = 1;
out:
    t0 = bench_now();
    rd_kafka_destroy(rk);
    r->teardown_seconds = bench_now() - t0;
}

/* Messages in topic: the sum of its partitions' high watermarks (the
 * topics start empty; the mock cluster drops old message sets of a large
 * partition, which moves the low watermark, so it is not subtracted). */
static long long kafka_topic_count(const char *topic)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    char errstr[512];
    long long total = 0;
    int p;
    if (kafka_conf(conf, errstr, sizeof errstr) ||
        !(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr))) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "bench_nats: kafka: %s\n", errstr);
        return -1;
    }
    for (p = 0; p < KAFKA_PARTITIONS; p++) {
        int64_t lo = 0, hi = 0;
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000)) {
            total = -1;
            break;
        }
        total += hi;
    }
    rd_kafka_destroy(rk);
    return total;
}

static int no_pg_kafka; /* --no-pg */

/* The producing thread's CPU per message (the raw producer's main thread,
 * the relay's thread): what bounds both rates, whatever the load. */
static void kafka_thread_line(const bench_result *res)
{
    if (res->thread_cpu_seconds > 0 && res->count > 0)
        printf("  producing thread: %.2f us of CPU per message (%.2f s)\n",
               res->thread_cpu_seconds * 1e6 / (double)res->count, res->thread_cpu_seconds);
}

/* Prints the row of a case whose topic must hold exactly n_msgs messages;
 * its rate, or 0 (counted as a failure) when the topic does not. */
static double kafka_check_row(const char *name, const char *topic, bench_result *res,
                              double ceiling)
{
    long long got = kafka_topic_count(topic);
    if (got != n_msgs) {
        fprintf(stderr, "bench_nats: %s: topic holds %lld, expected %lld\n", name, got, n_msgs);
        failures++;
        return 0;
    }
    bench_print_row(name, res, ceiling);
    kafka_thread_line(res);
    return (double)res->count / res->seconds;
}

/* The raw producer into topic (empty), as the row name; its rate, or 0
 * (counted as a failure). */
static double kafka_ceiling(const char *name, const char *topic)
{
    bench_result res;
    if (bench_run_child(name, run_kafka_ceiling, (void *)topic, disarm_parent_handlers, &res)) {
        failures++;
        return 0;
    }
    return kafka_check_row(name, topic, &res, 0);
}

/* The raw producer's rate moves by a third or more between runs minutes
 * apart on a 2-vCPU machine (docs/BENCHMARKS.md): a relay case is also
 * set against a raw run right after it. */
static void kafka_against_after(double rate, double before, double after)
{
    if (rate > 0 && before > 0 && after > 0)
        printf("  against the raw producer before and after it: %.2f and %.2f\n", rate / before,
               rate / after);
}

static void kafka_cases(const char *master, const char *copy)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mc = NULL;
    bench_result res;
    char errstr[512], to[700];
    double ceiling = 0, rate, after;
    const char *topics[] = {"bench.ceiling", "bench.relay",  "bench.relay2",   "bench.pg",
                            "bench.turn",    "bench.pgturn", "bench.ceiling2", "bench.ceiling3"};
    int i;

    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!mock_rk) {
        rd_kafka_conf_destroy(conf);
        printf("%-34s skipped: rd_kafka_new: %s\n", "kafka (mock cluster)", errstr);
        return;
    }
    mc = rd_kafka_mock_cluster_new(mock_rk, 3);
    if (!mc) {
        printf("%-34s skipped: no mock cluster\n", "kafka (mock cluster)");
        rd_kafka_destroy(mock_rk);
        return;
    }
    snprintf(kafka_bootstraps, sizeof kafka_bootstraps, "%s", rd_kafka_mock_cluster_bootstraps(mc));
    for (i = 0; i < (int)(sizeof topics / sizeof *topics); i++)
        if (rd_kafka_mock_topic_create(mc, topics[i], KAFKA_PARTITIONS, 3)) {
            fprintf(stderr, "bench_nats: mock topic %s failed\n", topics[i]);
            failures++;
            goto out;
        }
    ceiling = kafka_ceiling("kafka raw produce (ceiling, mock)", topics[0]);
    printf("  kafka publish window: %lld messages (window_messages), 32 MiB (window_bytes)\n",
           kafka_window);
    snprintf(to, sizeof to, "kafka://%s?topic=%s&window_messages=%lld", kafka_bootstraps, topics[1],
             kafka_window);
    rate = 0;
    if (bench_sqlite_relay_case("sqlite -> kafka", master, copy, to, 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0)
        rate = kafka_check_row("sqlite -> kafka (relay, mock)", topics[1], &res, ceiling);
    else
        failures++;
    after = kafka_ceiling("kafka raw produce (again)", topics[6]);
    kafka_against_after(rate, ceiling, after);
    /* The same with the store's work on the relay's thread, no claim ahead
     * and no complete behind (the relay's children inherit the variables):
     * what the store's own threads buy. */
    setenv("OUTBOX_RELAY_CLAIM_AHEAD", "0", 1);
    setenv("OUTBOX_RELAY_COMPLETE_BEHIND", "0", 1);
    snprintf(to, sizeof to, "kafka://%s?topic=%s&window_messages=%lld", kafka_bootstraps, topics[4],
             kafka_window);
    if (bench_sqlite_relay_case("sqlite -> kafka (store in turn)", master, copy, to, 0, batch,
                                n_msgs, disarm_parent_handlers, &res) == 0)
        kafka_check_row("sqlite -> kafka (store in turn)", topics[4], &res, ceiling);
    else
        failures++;
    unsetenv("OUTBOX_RELAY_CLAIM_AHEAD");
    unsetenv("OUTBOX_RELAY_COMPLETE_BEHIND");
    snprintf(to, sizeof to, "kafka://%s?topic=%s&window_messages=%u", kafka_bootstraps, topics[2],
             2 * batch);
    if (bench_sqlite_relay_case("sqlite -> kafka (2 batches)", master, copy, to, 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0)
        kafka_check_row("sqlite -> kafka (2-batch window)", topics[2], &res, ceiling);
    else
        failures++;
#ifdef OUTBOX_HAVE_LIBPQ
    if (!no_pg_kafka) {
        snprintf(to, sizeof to, "kafka://%s?topic=%s&window_messages=%lld", kafka_bootstraps,
                 topics[3], kafka_window);
        rate = 0;
        if (pg_relay_to("postgres -> kafka", to, &res) == 0) {
            rate = kafka_check_row("postgres -> kafka (relay, mock)", topics[3], &res, ceiling);
            pg_server_line(&res);
        } else
            failures++;
        kafka_against_after(rate, ceiling, kafka_ceiling("kafka raw produce (after)", topics[7]));
        setenv("OUTBOX_RELAY_CLAIM_AHEAD", "0", 1);
        setenv("OUTBOX_RELAY_COMPLETE_BEHIND", "0", 1);
        snprintf(to, sizeof to, "kafka://%s?topic=%s&window_messages=%lld", kafka_bootstraps,
                 topics[5], kafka_window);
        if (pg_relay_to("postgres -> kafka (store in turn)", to, &res) == 0) {
            kafka_check_row("postgres -> kafka (store in turn)", topics[5], &res, ceiling);
            pg_server_line(&res);
        } else
            failures++;
        unsetenv("OUTBOX_RELAY_CLAIM_AHEAD");
        unsetenv("OUTBOX_RELAY_COMPLETE_BEHIND");
    }
#endif
out:
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mock_rk);
}
#endif

/* ------------------------------------------------------------------------
 * Main
 * ---------------------------------------------------------------------- */

static int usage(void)
{
    fprintf(stderr, "usage: bench_nats [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES] [--no-pg] "
                    "[--no-kafka] [--no-serial] [--pg-rounds K] [--fresh-server] [--kafka-only] "
                    "[--kafka-window M] [--pg-wal]\n"
                    "  --pg-wal  also PostgreSQL -> JetStream with WAL capture (?capture=wal),"
                    " between ceilings,\n"
                    "            and to discard:; makes and drops its replication slot\n");
    return 2;
}

int main(int argc, char **argv)
{
    int no_pg = 0, no_kafka = 0, no_serial = 0, kafka_only = 0, pg_rounds = 1, pg_wal = 0, i;
    char master[CH_PATH], copy[CH_PATH], to[700];
    bench_result res;

    for (i = 1; i < argc; i++) {
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
        else if (!strcmp(argv[i], "--kafka-only"))
            kafka_only = 1;
#ifdef OUTBOX_HAVE_RDKAFKA
        else if (!strcmp(argv[i], "--kafka-window") && i + 1 < argc)
            kafka_window = atoll(argv[++i]);
#endif
        else if (!strcmp(argv[i], "--no-kafka"))
            no_kafka = 1;
        else if (!strcmp(argv[i], "--no-serial"))
            no_serial = 1;
        else if (!strcmp(argv[i], "--fresh-server"))
            fresh_server = 1;
        else if (!strcmp(argv[i], "--pg-wal"))
            pg_wal = 1;
        else if (!strcmp(argv[i], "--pg-rounds") && i + 1 < argc)
            pg_rounds = atoi(argv[++i]);
        else
            return usage();
    }
    if (n_msgs < 1 || batch < 1 || batch > 100000 || window < 1 || window > 1000000 ||
        aggregates < 1 || pg_rounds < 1 || pg_rounds > 20) {
        fprintf(stderr, "bench_nats: -n, -b (1-100000), -w (1-1000000), -a and --pg-rounds "
                        "(1-20) must be positive\n");
        return 2;
    }
    if (access(NH_SERVER_BIN, X_OK) != 0) {
        fprintf(stderr, "bench_nats: skipped: %s not found (install the nats-server package)\n",
                NH_SERVER_BIN);
        return 77;
    }
    printf("bench_nats: N=%lld, payload %d bytes, %u aggregates, relay batch %u, window %lld"
           " pending acks; load average %.2f at start\n",
           n_msgs, PAYLOAD_BYTES, aggregates, batch, window, bench_loadavg());

    nh_server_start(&nats);
    printf("nats-server -js on %s (file storage, R1, store in %s); nats.c %s\n", nats.url, nats.dir,
           NATS_VERSION_STRING);

    ch_path(master, "master.db");
    ch_path(copy, "copy.db");
    if (bench_sqlite_fill(master, n_msgs, aggregates, PAYLOAD_BYTES)) return 1;

    bench_print_header();
#ifdef OUTBOX_HAVE_RDKAFKA
    no_pg_kafka = no_pg;
#endif
    if (kafka_only) goto kafka; /* the Kafka cases alone */

    /* (1) the ceiling */
    if (ceiling_run("nats ceiling", "BENCH_RAW", "raw", &res) == 0) {
        nats_ceiling_rate = (double)res.count / res.seconds;
        bench_print_row("nats raw async publish (ceiling)", &res, 0);
    } else {
        failures++;
    }

    /* (2) SQLite -> JetStream */
    snprintf(to, sizeof to,
             "%s?stream=BENCH_SQ&subject=sq.{aggregate_type}.{type}&max_pending=%lld", nats.url,
             window);
    if (stream_create("BENCH_SQ", "sq.>") == 0 &&
        bench_sqlite_relay_case("sqlite -> nats", master, copy, to, 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0 &&
        check_stream("sqlite -> nats", "BENCH_SQ") == 0) {
        bench_print_row("sqlite -> nats (relay)", &res, nats_ceiling_rate);
    } else {
        failures++;
    }
    if (!no_serial) {
        snprintf(to, sizeof to,
                 "%s?stream=BENCH_SQS&subject=sqs.{aggregate_type}.{type}&max_pending=%lld",
                 nats.url, window);
        if (stream_create("BENCH_SQS", "sqs.>") == 0 &&
            bench_sqlite_relay_case("sqlite -> nats (serial)", master, copy, to, 1, batch, n_msgs,
                                    disarm_parent_handlers, &res) == 0 &&
            check_stream("sqlite -> nats (serial)", "BENCH_SQS") == 0)
            bench_print_row("sqlite -> nats (serial relay)", &res, nats_ceiling_rate);
        else
            failures++;
    }

    /* The SQLite side alone (the relay to discard:). */
    if (bench_sqlite_relay_case("sqlite -> discard", master, copy, "discard:", 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0)
        bench_print_row("sqlite -> discard: (store alone)", &res, nats_ceiling_rate);
    else
        failures++;

        /* (3) PostgreSQL -> JetStream */
#ifdef OUTBOX_HAVE_LIBPQ
    if (!no_pg) pg_case(no_serial, pg_rounds);
    if (!no_pg && pg_wal) pg_wal_case();
#else
    if (!no_pg)
        printf("%-34s skipped: this build has no PostgreSQL store\n", "postgres -> nats (relay)");
    (void)pg_wal;
#endif

kafka:
    /* (4) Kafka, mock cluster */
#ifdef OUTBOX_HAVE_RDKAFKA
    if (!no_kafka) kafka_cases(master, copy);
#else
    if (!no_kafka) printf("%-34s skipped: this build has no Kafka destination\n", "kafka");
#endif

    nh_server_stop(&nats);
    bench_remove_db(master);
    printf("load average %.2f at the end; %s\n", bench_loadavg(),
           failures ? "SOME CASES FAILED (no figure printed for them)" : "all results checked");
    return failures ? 1 : 0;
}

#endif /* OUTBOX_HAVE_NATS */
