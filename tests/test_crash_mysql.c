/*
 * test_crash_mysql.c - guarantees 2 (at least once) and 4 (per-aggregate
 * order) with the MariaDB/MySQL store, under crashes of the relay, of the
 * database, and with several relays sharing one outbox.
 *
 * A producer thread enqueues through outbox_enqueue_mysql in transactions
 * of 1-50 messages over many aggregates, each payload carrying its
 * aggregate's enqueue counter (the payloads of tests/support/chaos, so
 * ch_check_file judges the output); `outbox relay --to file:OUT`
 * publishes.
 *
 *   1. kill sweep: 20,000 messages, the relay SIGKILLed at random moments
 *      at least 30 times and restarted, then `relay --once` drains the rest;
 *   2. database crash: 20,000 messages enqueued, then during the drain
 *      mariadbd is SIGKILLed and restarted; the relay must reconnect;
 *   3. three relays draining 20,000 messages while the producer writes,
 *      one of them SIGKILLed and restarted again and again.
 *
 * Each run checks: lost 0, per-aggregate order violations 0, nothing left
 * pending or failed.  Duplicates are allowed and printed.
 * OUTBOX_TEST_SCALE (default 1) scales message and kill counts down.
 */
#ifndef OUTBOX_HAVE_MARIADB
#include <stdio.h>
int main(void)
{
    fprintf(stderr,
            "skipped: this build has no MariaDB/MySQL store (MariaDB Connector/C not found)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/mariadb.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

static myh_server server;
static uint64_t rng;

/* ------------------------------------------------------------------------
 * Producer on MariaDB (fills a ch_producer so ch_check_file can judge)
 * ---------------------------------------------------------------------- */

/* Appends a committed message id to its aggregate's list. */
static void agg_push(ch_agg *a, const char *id)
{
    if (a->count == a->cap) {
        int cap = a->cap ? a->cap * 2 : 16;
        char(*ids)[37] = realloc(a->ids, (size_t)cap * sizeof *ids);
        if (!ids) TEST_FAIL_("out of memory");
        a->ids = ids;
        a->cap = cap;
    }
    snprintf(a->ids[a->count++], 37, "%s", id);
}

/* The transactions and payloads of chaos.c's producer, through
 * outbox_enqueue_mysql; a failed COMMIT ends it with an error (the server
 * is not crashed while it runs). */
static void *producer_main(void *arg)
{
    ch_producer *p = arg;
    uint64_t prng = p->seed;
    outbox_error err;
    outbox_msg **batch = calloc((size_t)p->max_txn, sizeof *batch);
    int *batch_agg = calloc((size_t)p->max_txn, sizeof *batch_agg);
    MYSQL *c = myh_connect(&server);
    memset(&err, 0, sizeof err);
    if (!batch || !batch_agg) {
        snprintf(p->error, sizeof p->error, "out of memory");
        goto out;
    }
    while (p->committed < p->total) {
        int k = (int)ch_rand_range(&prng, 1, p->max_txn), i, ok = 1;
        if (k > p->total - p->committed) k = p->total - p->committed;
        myh_exec(c, "START TRANSACTION");
        for (i = 0; i < k; i++) {
            int agg = (int)ch_rand_range(&prng, 0, p->aggregates - 1);
            int n = p->aggs[agg].count;
            char agg_id[32], payload[128];
            for (int j = 0; j < i; j++)
                if (batch_agg[j] == agg) n++;
            snprintf(agg_id, sizeof agg_id, "a%d", agg);
            snprintf(payload, sizeof payload, "{\"agg\":\"%s\",\"n\":%d,\"txn\":%d}", agg_id, n,
                     p->transactions);
            batch[i] = NULL;
            batch_agg[i] = agg;
            if (outbox_msg_new(&batch[i], "Tick", "Agg", agg_id, payload, &err) != OUTBOX_OK ||
                outbox_enqueue_mysql(c, batch[i], &err) != OUTBOX_OK) {
                snprintf(p->error, sizeof p->error, "enqueue: %d %s", err.code, err.message);
                ok = 0;
                i++;
                break;
            }
        }
        if (ok && mysql_query(c, "COMMIT") == 0) {
            for (int j = 0; j < i; j++)
                agg_push(&p->aggs[batch_agg[j]], outbox_msg_id(batch[j]));
            p->committed += i;
            p->transactions++;
        } else {
            if (ok) snprintf(p->error, sizeof p->error, "commit: %s", mysql_error(c));
            mysql_query(c, "ROLLBACK");
            ok = 0;
        }
        for (int j = 0; j < i; j++)
            outbox_msg_free(batch[j]);
        if (!ok) goto out;
        if (p->pause_us) usleep((useconds_t)p->pause_us);
    }
out:
    mysql_close(c);
    free(batch);
    free(batch_agg);
    atomic_store(&p->done, 1);
    return NULL;
}

static void producer_start(ch_producer *p, int total, int aggregates, int pause_us)
{
    memset(p, 0, sizeof *p);
    p->total = total;
    p->aggregates = aggregates;
    p->max_txn = 50;
    p->pause_us = pause_us;
    p->seed = ch_rand(&rng);
    p->aggs = calloc((size_t)aggregates, sizeof *p->aggs);
    if (!p->aggs) TEST_FAIL_("out of memory");
    atomic_store(&p->done, 0);
    if (pthread_create(&p->thread, NULL, producer_main, p) != 0)
        TEST_FAIL_("pthread_create failed");
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
    MYSQL *c = myh_connect(&server);
    myh_exec(c, "DELETE FROM outbox");
    mysql_close(c);
}

static int64_t outbox_count(const char *status)
{
    MYSQL *c = myh_connect(&server);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM outbox WHERE status = '%s'", status);
    int64_t n = myh_count(c, sql);
    mysql_close(c);
    return n;
}

/* Pending count, or -1 while the server does not answer. */
static int64_t pending_or_down(void)
{
    MYSQL *c = mysql_init(NULL);
    unsigned int timeout = 2;
    int64_t n = -1;
    if (!c) return -1;
    mysql_options(c, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    if (mysql_real_connect(c, "127.0.0.1", "outbox", "outbox-test-pw", "outbox_test",
                           (unsigned int)server.port, NULL, 0) &&
        mysql_query(c, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0) {
        MYSQL_RES *r = mysql_store_result(c);
        MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
        if (row && row[0]) n = strtoll(row[0], NULL, 10);
        if (r) mysql_free_result(r);
    }
    mysql_close(c);
    return n;
}

static void stop_server(void *s)
{
    myh_kill(s);
}

static void start_server(void *s)
{
    myh_start_server(s);
}

static void check_run(const char *label, const char *out, ch_producer *pp, int max_torn)
{
    ch_report r;
    ch_check_file(out, pp, &r);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, pp->total);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT(r.torn <= max_torn);
    ASSERT_EQ(outbox_count("pending"), 0);
    ASSERT_EQ(outbox_count("failed"), 0);
}

static void free_producer(ch_producer *pp)
{
    ch_producer_free(pp);
}

/* ------------------------------------------------------------------------ */

/* 1. SIGKILL the relay at random moments while the producer writes. */
TEST(kill_sweep)
{
    char out[CH_PATH], errp[CH_PATH];
    ch_path(out, "kill.jsonl");
    ch_path(errp, "kill-relay.err");
    reset_outbox();

    int min_kills = test_scaled(30, 5);
    ch_producer pp;
    producer_start(&pp, test_scaled(20000, 1000), 1000, 0);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 256);
    int kills = 0, lives = 0;
    int64_t started = ch_now_ms();
    /* As test_crash_pg: stop killing after 90 s once the kills are there;
     * the final drain takes what a slow producer commits after. */
    while ((kills < min_kills || !ch_producer_done(&pp)) &&
           (kills < min_kills || ch_now_ms() - started < 90000)) {
        lives++;
        kills += ch_relay_kill_life(c.argv, errp, &rng);
        if (ch_now_ms() - started > 150000)
            TEST_FAIL_("kill sweep: only %d of %d kills in 150 s", kills, min_kills);
    }
    ch_producer_join(&pp);
    fprintf(stderr,
            "kill sweep: %d messages in %d transactions, %d relay lives, %d kills, %.1f s\n",
            pp.committed, pp.transactions, lives, kills, (double)(ch_now_ms() - started) / 1000.0);

    relay_cmd_init(&c, out, 1, 256);
    int code = ch_run(c.argv, NULL, NULL, errp, 120000);
    if (code != 0) {
        ch_dump("final relay stderr", errp);
        TEST_FAIL_("final relay --once exited %d", code);
    }
    char label[64];
    snprintf(label, sizeof label, "mariadb SIGKILL x%d", kills);
    check_run(label, out, &pp, kills);
    free_producer(&pp);
}

/* 2. Crash (SIGKILL) and restart mariadbd during a drain. */
TEST(database_restarts)
{
    char out[CH_PATH], errp[CH_PATH];
    ch_path(out, "restart.jsonl");
    ch_path(errp, "restart-relay.err");
    reset_outbox();

    ch_producer pp;
    int64_t t_fill = ch_now_ms();
    /* Enough that the drain outlasts several restarts at any scale: with
     * the claim's plan fixed, a small backlog drains in well under a
     * second. */
    producer_start(&pp, test_scaled(20000, 20000), 500, 0);
    ch_producer_join(&pp);
    fprintf(stderr, "database restarts: %d messages enqueued in %.1f s\n", pp.committed,
            (double)(ch_now_ms() - t_fill) / 1000.0);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 64);
    pid_t pid = ch_spawn(c.argv, NULL, NULL, errp);
    ch_restarts r = {.pending = pending_or_down,
                     .stop = stop_server,
                     .start = start_server,
                     .server = &server,
                     .at_least = 1,
                     .during_drain = 1,
                     .max = 5};
    ch_restart_during_drain(&r, "database restarts", pid, &rng, errp);
    ch_restarts_finish(&r, pid, errp);
    char label[64];
    snprintf(label, sizeof label, "mariadb crash x%d", r.done);
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

    int min_kills = test_scaled(15, 3);
    ch_producer pp;
    producer_start(&pp, test_scaled(20000, 1000), 1000, 0);

    relay_cmd c;
    relay_cmd_init(&c, out, 0, 128);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = ch_spawn(c.argv, NULL, NULL, errs[i]);
    int kills = 0;
    int64_t started = ch_now_ms();
    while (kills < min_kills || !ch_producer_done(&pp)) {
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
    ch_producer_join(&pp);
    ch_wait_pending_zero(pending_or_down, 120000, errs[1]);
    ch_relays_stop(pids, 3, errs);
    fprintf(stderr, "three relays: %d messages, %d kills of one relay, %.1f s\n", pp.committed,
            kills, (double)(ch_now_ms() - started) / 1000.0);
    char label[64];
    snprintf(label, sizeof label, "mariadb 3 relays, SIGKILL x%d", kills);
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
    myh_start(&server);
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

#endif /* OUTBOX_HAVE_MARIADB */
