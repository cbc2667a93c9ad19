/*
 * test_netfault.c - the relay across a failing network: a fault proxy
 * (tests/support/faultproxy.h) sits between the relay and a server and
 * switches, mid-drain, through stall, reset, halfopen, drip and blackhole,
 * back to pass after each:
 *
 *   nats      SQLite -> nats:// (the proxy before nats-server)
 *   webhook   SQLite -> http:// (the proxy before the webhook receiver)
 *   pg        postgres:// store (the proxy before PostgreSQL) -> file:
 *   pg_wal    the same with capture=wal (the replication stream and the
 *             table connection through the proxy): stall, reset, blackhole
 *
 * For each mode but drip the relay must notice within its configured
 * timeouts (the time from the switch to its log line is bounded by twice
 * the timeout plus slack), and for every mode it must drain once the proxy
 * passes again (within a deadline: a stuck relay fails the test with a
 * message).  At the end everything committed is at the destination: lost
 * 0, per-aggregate order violations 0 (and, for JetStream, duplicates in
 * the stream 0).  The timeouts are set short through the drivers' own
 * settings (ping_interval, timeout, keepalives_idle, ...); their defaults
 * and what they bound are in docs/RELIABILITY.md.
 *
 * OUTBOX_TEST_SCALE scales the messages (a few thousand per destination).
 */
#include "test.h"

#include "log_capture.h"
#include "relay_thread.h"
#include "support/chaos.h"
#include "support/faultproxy.h"
#ifdef OUTBOX_HAVE_NATS
#include "support/nats.h"
#endif
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#endif
#include "support/webhook.h"

/* One destination's run through the modes. */
typedef struct nf_run {
    const char *name;
    fp_proxy *proxy;
    ch_producer producer;
    int chunk;                 /* messages committed before and during each fault */
    int64_t detect_bound_ms;   /* twice the configured timeout, plus slack */
    const char *detect_line;   /* a log line that says the relay noticed */
    const char *detect_alt[2]; /* others (NULL: none) */
    int64_t (*pending)(void);  /* messages not yet published */
    const fp_mode *modes;      /* the faults to go through (NULL: all of all_modes) */
    int nmodes;
    relay_thread relay;
    int64_t noticed_ms[FP_MODE_COUNT]; /* -1: not measured */
    int64_t recovered_ms[FP_MODE_COUNT];
} nf_run;

static const fp_mode all_modes[] = {FP_STALL, FP_RESET, FP_HALFOPEN, FP_DRIP, FP_BLACKHOLE};
enum { NMODES = sizeof all_modes / sizeof all_modes[0] };

/* Generous under a loaded CI machine, but finite: a relay that waits for
 * ever fails here. */
#define RECOVERY_DEADLINE_MS 90000

static void relay_options(outbox_relay_options *o)
{
    outbox_relay_options_init(o);
    o->max_attempts = 1000; /* timeouts inside a batch charge attempts: never Failed here */
    o->backoff_base_ms = 10;
    o->backoff_max_ms = 200;
    o->poll_interval_ms = 200;
    o->batch_size = 64;
}

static void start_relay(nf_run *run, const char *store, const char *to,
                        const char *const *dest_options)
{
    outbox_relay_options o;
    outbox_error err;
    memset(&err, 0, sizeof err);
    relay_options(&o);
    o.destination_options = dest_options;
    memset(&run->relay, 0, sizeof run->relay);
    ASSERT_OK(outbox_relay_new(&run->relay.relay, store, to, &o, &err), &err);
    if (relay_thread_start(&run->relay) != 0) TEST_FAIL_("pthread_create");
}

static void stop_relay(nf_run *run)
{
    ASSERT_OK(relay_thread_stop(&run->relay), &run->relay.err);
    outbox_relay_free(run->relay.relay);
}

static void dump_log(void)
{
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "---- captured log ----\n%s----\n", log_text);
    pthread_mutex_unlock(&log_mu);
}

/* Waits until nothing is pending; returns the time it took, or fails the
 * test after RECOVERY_DEADLINE_MS. */
static int64_t wait_drained(nf_run *run, const char *when)
{
    int64_t t0 = ch_now_ms();
    for (;;) {
        int64_t n = run->pending();
        if (n == 0) return ch_now_ms() - t0;
        if (ch_now_ms() - t0 > RECOVERY_DEADLINE_MS) {
            dump_log();
            TEST_FAIL_("%s: %lld messages still pending %d s %s: the relay is stuck", run->name,
                       (long long)n, RECOVERY_DEADLINE_MS / 1000, when);
        }
        ch_sleep_ms(20);
    }
}

/* Has the relay logged one of run's detect lines? */
static int noticed(const nf_run *run)
{
    int i;
    if (log_has_line(run->detect_line, NULL)) return 1;
    for (i = 0; i < 2; i++)
        if (run->detect_alt[i] && log_has_line(run->detect_alt[i], NULL)) return 1;
    return 0;
}

/* One fault: messages in flight when it starts and committed while it
 * lasts; the relay must notice it (all modes but drip) and drain after. */
static void one_fault(nf_run *run, fp_mode mode)
{
    int64_t t0, seen;
    fp_counters c;

    ch_produce(&run->producer, run->chunk);
    /* Switch while the relay is working on them. */
    for (t0 = ch_now_ms(); run->pending() > run->chunk / 2 && ch_now_ms() - t0 < 10000;)
        ch_sleep_ms(1);
    log_reset();
    t0 = ch_now_ms();
    fp_set_mode(run->proxy, mode);
    ch_produce(&run->producer, run->chunk);
    run->noticed_ms[mode] = -1;
    if (mode != FP_DRIP) {
        while (!noticed(run) && ch_now_ms() - t0 < run->detect_bound_ms)
            ch_sleep_ms(10);
        if (ch_now_ms() - t0 >= run->detect_bound_ms) {
            dump_log();
            TEST_FAIL_("%s/%s: the relay did not notice within %lld ms (no \"%s\" in its log)",
                       run->name, fp_mode_name(mode), (long long)run->detect_bound_ms,
                       run->detect_line);
        }
        seen = ch_now_ms() - t0;
        run->noticed_ms[mode] = seen;
        ch_sleep_ms(300); /* it stays broken a little longer */
    } else {
        ch_sleep_ms(3000);
    }
    fp_set_mode(run->proxy, FP_PASS);
    run->recovered_ms[mode] = wait_drained(run, "after the proxy passed again");
    fp_counters_get(run->proxy, &c);
    fprintf(stderr,
            "   %s %-9s noticed %6lld ms (bound %lld), drained %6lld ms after pass; proxy: %lld "
            "connections, %lld resets, %lld open, %lld B up, %lld B down, %lld B discarded\n",
            run->name, fp_mode_name(mode), (long long)run->noticed_ms[mode],
            (long long)run->detect_bound_ms, (long long)run->recovered_ms[mode],
            (long long)c.accepted, (long long)c.resets, (long long)c.open, (long long)c.bytes_up,
            (long long)c.bytes_down, (long long)c.discarded);
}

/* The producer (into db_path, or pg_conninfo), the relay from store to to
 * (with dest_options, NULL-terminated, or NULL), and every mode in turn;
 * the relay is stopped at the end. */
static void run_modes(nf_run *run, const char *db_path, const char *pg_conninfo, const char *store,
                      const char *to, const char *const *dest_options)
{
    uint64_t rng = ch_seed();
    int k, emit = run->producer.pg_emit;
    if (run->modes == NULL) {
        run->modes = all_modes;
        run->nmodes = NMODES;
    }
    memset(&run->producer, 0, sizeof run->producer);
    run->producer.pg_emit = emit;
    run->producer.db_path = db_path;
    run->producer.pg_conninfo = pg_conninfo;
    run->producer.aggregates = 50;
    run->producer.max_txn = 20;
    run->producer.seed = ch_rand(&rng);
    run->chunk = test_scaled(3000, 300) / (2 * run->nmodes + 1);
    fp_set_drip(run->proxy, 256, 100);
    start_relay(run, store, to, dest_options);
    for (k = 0; k < run->nmodes; k++)
        one_fault(run, run->modes[k]);
    ch_produce(&run->producer, run->chunk); /* and a last drain on a healthy network */
    wait_drained(run, "on a healthy network at the end");
    stop_relay(run);
}

static void check(const nf_run *run, const char *path, int dedup)
{
    ch_report r;
    char label[200];
    ch_check_file(path, &run->producer, &r);
    snprintf(label, sizeof label, "%s through the fault proxy", run->name);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, run->producer.committed);
    ASSERT_EQ(r.torn, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.violations, 0);
    if (dedup) ASSERT_EQ(r.duplicates, 0);
}

static char current_db[CH_PATH];

static int64_t sqlite_pending(void)
{
    return ch_outbox_count(current_db, "pending");
}

/* ------------------------------------------------------------------------
 * nats://
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_NATS
TEST(nats)
{
    static nf_run run;
    nh_server server;
    char to[512], store[700], out[CH_PATH];

    memset(&server, 0, sizeof server);
    nh_server_start(&server);
    nh_stream_create(&server, "NETFAULT", "netfault.>");
    memset(&run, 0, sizeof run);
    run.name = "nats";
    run.proxy = fp_start(server.port);
    /* Pings every 500 ms, 2 unanswered: a dead connection within 1.5 s. */
    run.detect_bound_ms = 2 * 1500 + 5000;
    run.detect_line = "disconnected from";
    run.pending = sqlite_pending;
    ch_new_store(current_db, "nats.db");
    snprintf(store, sizeof store, "sqlite:%s", current_db);
    snprintf(to, sizeof to,
             "nats://127.0.0.1:%d?stream=NETFAULT&subject=netfault.{type}&ping_interval=500ms&"
             "max_pings_out=2&ack_timeout=1s&connect_timeout=1s",
             fp_port(run.proxy));
    run_modes(&run, current_db, NULL, store, to, NULL);
    fp_stop(run.proxy);
    ch_path(out, "nats-stream.jsonl");
    nh_stream_dump(&server, "NETFAULT", "netfault.>", out);
    check(&run, out, 1);
    ch_producer_free(&run.producer);
    nh_server_stop(&server);
}
#endif

/* ------------------------------------------------------------------------
 * http://
 * ---------------------------------------------------------------------- */

static void answer_ok(void *user, const sv_request *rq, int n, sv_action *act)
{
    (void)user;
    (void)rq;
    (void)n;
    act->status = 200;
}

/* Writes the requests the receiver got as lines for ch_check_file. */
static void requests_to_file(sv_server *sv, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) TEST_FAIL_("cannot write %s", path);
    pthread_mutex_lock(&sv->mu);
    for (int i = 0; i < sv->nreqs; i++) {
        char id[80], subject[80];
        json_error_t je;
        json_t *o = json_object(), *data;
        char *text;
        sv_header(sv->reqs[i].head, "webhook-id", id, sizeof id);
        sv_header(sv->reqs[i].head, "ce-subject", subject, sizeof subject);
        data = json_loadb(sv->reqs[i].body ? sv->reqs[i].body : "", sv->reqs[i].body_len, 0, &je);
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "subject", json_string(subject));
        json_object_set_new(o, "data", data ? data : json_null());
        text = json_dumps(o, JSON_COMPACT);
        if (!text) TEST_FAIL_("out of memory");
        fprintf(f, "%s\n", text);
        free(text);
        json_decref(o);
    }
    pthread_mutex_unlock(&sv->mu);
    fclose(f);
}

TEST(webhook)
{
    static nf_run run;
    static sv_server sv;
    char to[512], store[700], out[CH_PATH];

    sv_start(&sv, 0, answer_ok, NULL);
    memset(&run, 0, sizeof run);
    run.name = "webhook";
    run.proxy = fp_start((int)sv.port);
    /* Requests time out after 1 s, connecting after 1 s. */
    run.detect_bound_ms = 2 * 1000 + 5000;
    run.detect_line = "is down:";
    run.pending = sqlite_pending;
    ch_new_store(current_db, "webhook.db");
    snprintf(store, sizeof store, "sqlite:%s", current_db);
    snprintf(to, sizeof to, "http://127.0.0.1:%d/hook", fp_port(run.proxy));
    {
        /* The timeouts go as destination options (the URL's query is the
         * receiver's). */
        const char *opts[] = {"timeout=1s", "connect_timeout=1s", NULL};
        run_modes(&run, current_db, NULL, store, to, opts);
    }
    fp_stop(run.proxy);
    ch_path(out, "webhook-requests.jsonl");
    requests_to_file(&sv, out);
    check(&run, out, 0);
    ch_producer_free(&run.producer);
    sv_stop(&sv);
}

/* ------------------------------------------------------------------------
 * postgres:// store
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;

static int64_t pg_pending(void)
{
    return pgh_outbox_count(&pg, "pending");
}

/* One leg through the proxy before PostgreSQL, into the file out (named
 * out_name): keepalives after 1 s idle, every 1 s, 2 unanswered; sent data
 * unacknowledged for 2 s: a dead connection within about 2 s.  A statement
 * unanswered for 2 s (query_timeout): a server that keeps TCP up but never
 * answers (stall, blackhole) within 2 s too.  extra: more of the store
 * URL's query ("capture=wal&"). */
static void run_pg_leg(nf_run *run, const char *extra, char *out, const char *out_name)
{
    char store[700], to[700];

    run->proxy = fp_start(pg.port);
    run->detect_bound_ms = 2 * 2000 + 5000;
    snprintf(store, sizeof store,
             "postgres://postgres@127.0.0.1:%d/postgres?%skeepalives_idle=1s&"
             "keepalives_interval=1s&keepalives_count=2&tcp_user_timeout=2s&query_timeout=2s&"
             "connect_timeout=2",
             fp_port(run->proxy), extra);
    ch_path(out, out_name);
    snprintf(to, sizeof to, "file:%s", out);
    run_modes(run, NULL, pg.conninfo, store, to, NULL);
    fp_stop(run->proxy);
    check(run, out, 0);
    ch_producer_free(&run->producer);
}

TEST(pg)
{
    static nf_run run;
    char out[CH_PATH];

    if (pgh_available() != NULL) {
        fprintf(stderr, "pg: left out: %s\n", pgh_available());
        return;
    }
    pgh_start(&pg);
    {
        const char *argv[] = {test_outbox_bin(), "init", "--store", pg.url, NULL};
        if (ch_run(argv, NULL, NULL, test_path("pg-init.err"), 60000) != 0) {
            ch_dump("outbox init", test_path("pg-init.err"));
            TEST_FAIL_("outbox init failed");
        }
    }
    memset(&run, 0, sizeof run);
    run.name = "pg";
    run.detect_line = "store error";
    run.detect_alt[0] = "PostgreSQL connection was lost"; /* e.g. renewing the lease */
    run.detect_alt[1] = "(query_timeout)"; /* a statement unanswered: the connection closed */
    run.pending = pg_pending;
    run_pg_leg(&run, "", out, "pg-out.jsonl");
}

static nf_run wal_run;
static char wal_out[CH_PATH];

/* WAL capture: what the producer emitted and the file does not have yet
 * (the table holds only exceptions, none here). */
static int64_t wal_pending(void)
{
    ch_report r;
    ch_check_file(wal_out, &wal_run.producer, &r);
    return r.lost + pgh_outbox_count(&pg, "pending");
}

/* capture=wal through the proxy: the replication stream and the table
 * connection both go through it.  A silent stream is noticed by asking
 * for a keepalive at half of query_timeout and dropping it at the whole. */
TEST(pg_wal)
{
    static const fp_mode wal_modes[] = {FP_STALL, FP_RESET, FP_BLACKHOLE};

    if (pgh_available() != NULL) {
        fprintf(stderr, "pg_wal: left out: %s\n", pgh_available());
        return;
    }
    pgh_init_wal(&pg);
    memset(&wal_run, 0, sizeof wal_run);
    wal_run.name = "pg-wal";
    wal_run.modes = wal_modes;
    wal_run.nmodes = sizeof wal_modes / sizeof wal_modes[0];
    wal_run.detect_line = "replication stream of slot";
    wal_run.detect_alt[0] = "store error";
    wal_run.detect_alt[1] = "(query_timeout)";
    wal_run.pending = wal_pending;
    wal_run.producer.pg_emit = 1;
    run_pg_leg(&wal_run, "capture=wal&", wal_out, "pg-wal-out.jsonl");
}
#endif

int main(void)
{
    log_capture_install(OUTBOX_LOG_INFO);
#ifdef OUTBOX_HAVE_NATS
    if (access(NH_SERVER_BIN, X_OK) == 0)
        RUN(nats);
    else
        fprintf(stderr, "nats: left out: %s not found\n", NH_SERVER_BIN);
#endif
    RUN(webhook);
#ifdef OUTBOX_HAVE_LIBPQ
    RUN(pg);
    RUN(pg_wal);
#endif
#ifdef OUTBOX_HAVE_NATS
    nats_Close();
#endif
    return 0;
}
