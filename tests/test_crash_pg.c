/*
 * test_crash_pg.c - guarantees 2 (at least once) and 4 (per-aggregate
 * order) with the PostgreSQL store, under crashes of the relay, of the
 * database, and with several relays sharing one outbox.
 *
 * A producer thread enqueues through outbox_enqueue_pg in transactions of
 * 1-50 messages over many aggregates, each payload carrying its
 * aggregate's enqueue counter; `outbox relay --to file:OUT` publishes.
 * The file transport appends one write per batch with O_APPEND, so the
 * lines of several relays sharing OUT are in publication order.
 *
 *   1. kill sweep: 100,000 messages, the relay SIGKILLed at random moments
 *      at least 50 times and restarted, then `relay --once` drains the rest;
 *   2. database restarts: 50,000 messages enqueued, then during the drain
 *      PostgreSQL is stopped with `pg_ctl stop -m immediate` and restarted
 *      10 times; the relay must reconnect by itself;
 *   3. three relays draining 30,000 messages while the producer writes, one of them
 *      SIGKILLed and restarted again and again.
 *
 * Each run checks: lost 0, per-aggregate order violations 0, nothing left
 * pending or failed.  Duplicates are allowed and printed.
 * OUTBOX_TEST_SCALE (default 1) scales message and kill counts down.
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skipped: this build has no PostgreSQL store (libpq not found)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/pg.h"

#include <signal.h>

static pgh_server server;
static uint64_t rng;

/* ------------------------------------------------------------------------
 * Producer on PostgreSQL (fills a ch_producer so ch_check_file can judge)
 * ---------------------------------------------------------------------- */

typedef struct pg_producer {
    ch_producer p; /* aggregates, aggs, committed, transactions, total, ... */
    char conninfo[512];
} pg_producer;

/* async_commit: synchronous_commit=off, only for runs where the database
 * itself is not crashed.  The producer is tests/support/chaos.h's. */
static void producer_start(pg_producer *pp, int total, int aggregates, int pause_us,
                           int async_commit)
{
    memset(pp, 0, sizeof *pp);
    snprintf(pp->conninfo, sizeof pp->conninfo, "%s", server.conninfo);
    pp->p.pg_conninfo = pp->conninfo;
    pp->p.pg_async_commit = async_commit;
    pp->p.total = total;
    pp->p.aggregates = aggregates;
    pp->p.max_txn = 50;
    pp->p.pause_us = pause_us;
    pp->p.seed = ch_rand(&rng);
    ch_producer_start(&pp->p);
}

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

typedef struct relay_cmd {
    char to[700], batch[16];
    const char *argv[24];
} relay_cmd;

static void relay_cmd_init(relay_cmd *c, const char *out, int once, int batch)
{
    int i = 0;
    snprintf(c->to, sizeof c->to, "file:%s", out);
    snprintf(c->batch, sizeof c->batch, "%d", batch);
    c->argv[i++] = test_outbox_bin();
    c->argv[i++] = "relay";
    c->argv[i++] = "--store";
    c->argv[i++] = server.url;
    c->argv[i++] = "--to";
    c->argv[i++] = c->to;
    c->argv[i++] = "--batch";
    c->argv[i++] = c->batch;
    c->argv[i++] = "--lease-ttl";
    c->argv[i++] = "2s";
    if (once) c->argv[i++] = "--once";
    c->argv[i] = NULL;
}

static void reset_outbox(void)
{
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

static int64_t outbox_count(const char *status)
{
    return pgh_outbox_count(&server, status);
}

/* Pending count, or -1 while the server does not answer. */
static int64_t pending_or_down(void)
{
    PGconn *c = PQconnectdb(server.conninfo);
    int64_t n = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'pending'");
        if (PQresultStatus(r) == PGRES_TUPLES_OK) n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
    }
    PQfinish(c);
    return n;
}

static void stop_server(void *s)
{
    pgh_stop_immediate(s);
}

static void start_server(void *s)
{
    pgh_start_server(s);
}

static void check_run(const char *label, const char *out, pg_producer *pp, int max_torn)
{
    ch_report r;
    ch_check_file(out, &pp->p, &r);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, pp->p.total);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT(r.torn <= max_torn);
    ASSERT_EQ(outbox_count("pending"), 0);
    ASSERT_EQ(outbox_count("failed"), 0);
}

static void free_producer(pg_producer *pp)
{
    ch_producer_free(&pp->p);
}

/* ------------------------------------------------------------------------ */

/* 1. SIGKILL the relay at random moments while the producer writes. */
TEST(kill_sweep)
{
    char out[CH_PATH], errp[CH_PATH];
    ch_path(out, "kill.jsonl");
    ch_path(errp, "kill-relay.err");
    reset_outbox();

    int min_kills = test_scaled(50, 5);
    pg_producer pp;
    producer_start(&pp, test_scaled(100000, 1000), 1000, 0, 1);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 256);
    int kills = 0, lives = 0;
    int64_t started = ch_now_ms();
    /* Kill until both the kill count is reached and the producer is done,
     * but stop killing after 90 s (a loaded machine or a sanitizer build
     * commits slowly): the producer then finishes on its own and the
     * final drain takes the rest, as in test_crash_nats. */
    while ((kills < min_kills || !ch_producer_done(&pp.p)) &&
           (kills < min_kills || ch_now_ms() - started < 90000)) {
        lives++;
        kills += ch_relay_kill_life(c.argv, errp, &rng);
        if (ch_now_ms() - started > 150000)
            TEST_FAIL_("kill sweep: only %d of %d kills in 150 s", kills, min_kills);
    }
    ch_producer_join(&pp.p);
    fprintf(
        stderr, "kill sweep: %d messages in %d transactions, %d relay lives, %d kills, %.1f s\n",
        pp.p.committed, pp.p.transactions, lives, kills, (double)(ch_now_ms() - started) / 1000.0);

    relay_cmd_init(&c, out, 1, 256);
    int code = ch_run(c.argv, NULL, NULL, errp, 120000);
    if (code != 0) {
        ch_dump("final relay stderr", errp);
        TEST_FAIL_("final relay --once exited %d", code);
    }
    char label[64];
    snprintf(label, sizeof label, "pg SIGKILL x%d", kills);
    check_run(label, out, &pp, kills);
    free_producer(&pp);
}

/* 2. Crash and restart PostgreSQL during a drain. */
TEST(database_restarts)
{
    char out[CH_PATH], errp[CH_PATH];
    ch_path(out, "restart.jsonl");
    ch_path(errp, "restart-relay.err");
    reset_outbox();

    pg_producer pp;
    int64_t t_fill = ch_now_ms();
    /* Enough that the drain outlasts several restarts at any scale: with
     * the claim's plan fixed, a small backlog drains in well under a
     * second. */
    producer_start(&pp, test_scaled(50000, 20000), 500, 0, 0);
    ch_producer_join(&pp.p);
    fprintf(stderr, "database restarts: %d messages enqueued in %.1f s\n", pp.p.committed,
            (double)(ch_now_ms() - t_fill) / 1000.0);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 64);
    pid_t pid = ch_spawn(c.argv, NULL, NULL, errp);
    ch_restarts r = {.pending = pending_or_down,
                     .stop = stop_server,
                     .start = start_server,
                     .server = &server,
                     .at_least = 10,
                     .during_drain = 3,
                     .max = 15};
    ch_restart_during_drain(&r, "database restarts", pid, &rng, errp);
    ch_restarts_finish(&r, pid, errp);
    char label[64];
    snprintf(label, sizeof label, "pg restarts x%d", r.done);
    check_run(label, out, &pp, 0);
    free_producer(&pp);
}

/* 3. Three relays; one is SIGKILLed and restarted again and again. */
TEST(three_relays)
{
    char out[CH_PATH], errs[3][CH_PATH];
    ch_path(out, "three.jsonl");
    ch_path(errs[0], "three-0.err");
    ch_path(errs[1], "three-1.err");
    ch_path(errs[2], "three-2.err");
    reset_outbox();

    int min_kills = test_scaled(30, 5);
    pg_producer pp;
    producer_start(&pp, test_scaled(30000, 1000), 1000, 0, 1);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 128);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = ch_spawn(c.argv, NULL, NULL, errs[i]);
    int kills = 0;
    int64_t started = ch_now_ms();
    while (kills < min_kills || !ch_producer_done(&pp.p)) {
        ch_sleep_ms(ch_rand_range(&rng, 200, 800));
        for (int i = 1; i < 3; i++)
            if (!ch_alive(pids[i])) {
                ch_dump("relay stderr", errs[i]);
                TEST_FAIL_("relay %d exited on its own", i);
            }
        if (ch_kill9(pids[0]) == 137) kills++;
        pids[0] = ch_spawn(c.argv, NULL, NULL, errs[0]);
        if (ch_now_ms() - started > 150000) TEST_FAIL_("three-relay run took over 150 s");
    }
    ch_producer_join(&pp.p);
    ch_wait_pending_zero(pending_or_down, 120000, errs[1]);
    ch_relays_stop(pids, 3, errs);
    fprintf(stderr, "three relays: %d messages, %d kills of one relay, %.1f s\n", pp.p.committed,
            kills, (double)(ch_now_ms() - started) / 1000.0);
    char label[64];
    snprintf(label, sizeof label, "pg 3 relays, SIGKILL x%d", kills);
    char split[CH_PATH];
    ch_path(split, "three-split.jsonl");
    ch_split_glued(out, split);
    check_run(label, split, &pp, kills);
    free_producer(&pp);
}

int main(void)
{
    uint64_t seed = ch_seed();
    rng = seed;
    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays it)\n", (unsigned long long)seed);
    if (access(test_outbox_bin(), X_OK) != 0 && !getenv("OUTBOX_BIN"))
        SKIP("the outbox binary was not found: run through ctest (OUTBOX_BIN)");
    pgh_start(&server);
    {
        const char *argv[] = {test_outbox_bin(), "init", "--store", server.url, NULL};
        const char *errp = test_path("init.err");
        int code = ch_run(argv, NULL, NULL, errp, 60000);
        if (code != 0) {
            ch_dump("outbox init stderr", errp);
            TEST_FAIL_("outbox init exited %d", code);
        }
    }
    RUN(kill_sweep);
    RUN(database_restarts);
    RUN(three_relays);
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
