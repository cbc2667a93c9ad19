/*
 * test_crash_pg_wal.c - guarantees 2 (at least once) and 4 (order) with
 * WAL capture (capture=wal, docs/WAL.md) under crashes of the relay and of
 * the database.
 *
 * Four producer threads write messages to the WAL (pg_logical_emit_message
 * with the encoding v1, as <schema>.emit does) in transactions of 1-50
 * messages over 1,000 aggregates each, every payload carrying its
 * aggregate's counter; `outbox relay --store ...?capture=wal --to
 * file:OUT` publishes.
 *
 *   1. 100,000 messages (25,000 per producer), the relay SIGKILLed at
 *      random moments at least 50 times and restarted while they write;
 *   2. then, with a relay draining what is left, PostgreSQL is stopped
 *      with `pg_ctl stop -m immediate` and restarted twice; the relay must
 *      reconnect by itself and resume from the slot's confirmed position.
 *
 * Checked per producer: lost 0, per-aggregate order violations 0 (the WAL
 * is in commit order, so each producer's messages come in its commit
 * order); duplicates (replays after a kill, absorbed by de-duplication at a
 * real destination) are counted and printed.  Nothing may be left in the
 * table.  OUTBOX_TEST_SCALE (default 1) scales message and kill counts.
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

#define PRODUCERS 4

static pgh_server server;
static uint64_t rng;
static char wal_url[700];

static void relay_argv(const char **argv, char *to, size_t to_len, const char *out)
{
    int i = 0;
    snprintf(to, to_len, "file:%s", out);
    argv[i++] = test_outbox_bin();
    argv[i++] = "relay";
    argv[i++] = "--store";
    argv[i++] = wal_url;
    argv[i++] = "--to";
    argv[i++] = to;
    argv[i++] = "--batch";
    argv[i++] = "256";
    argv[i++] = "--lease-ttl";
    argv[i++] = "2s";
    /* A killed relay's walsender may hold the slot for a moment. */
    argv[i++] = "--wait-lease";
    argv[i] = NULL;
}

/* How often needle is in the file at path. */
static int occurrences(const char *path, const char *needle)
{
    size_t len = 0;
    char *text = test_read_file(path, &len);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(text);
    return n;
}

/* Checks out against every producer; *lost: their sum.  A relay killed
 * inside its write(2) leaves a partial line (never confirmed, so
 * published again): at most max_torn of them. */
static void check_all(const char *out, ch_producer *p, int print, int max_torn, int64_t *lost)
{
    int64_t own = 0, lines = 0;
    *lost = 0;
    for (int i = 0; i < PRODUCERS; i++) {
        ch_report r;
        char label[32];
        ch_check_file(out, &p[i], &r);
        *lost += r.lost;
        lines = r.published;
        own += r.published - r.foreign;
        if (!print) continue;
        snprintf(label, sizeof label, "producer %d", i + 1);
        ch_report_print(label, &r);
        ASSERT_EQ(r.expected, p[i].total);
        ASSERT_EQ(r.lost, 0);
        ASSERT_EQ(r.violations, 0);
        ASSERT(r.torn <= max_torn);
    }
    /* Every line is some producer's message. */
    if (print) ASSERT_EQ(own, lines);
}

static int64_t table_rows(void)
{
    PGconn *c = pgh_connect(&server);
    int64_t n = pgh_count(c, "SELECT count(*) FROM outbox.outbox");
    PQfinish(c);
    return n;
}

TEST(kills_and_restarts)
{
    char out[CH_PATH], errp[CH_PATH], drain_err[CH_PATH], to[CH_PATH + 8];
    const char *argv[16];
    ch_producer p[PRODUCERS];
    int min_kills = test_scaled(50, 5), kills = 0, lives = 0;
    int per_producer = test_scaled(25000, 250);
    int64_t started = ch_now_ms(), lost = 0;

    ch_path(out, "wal.jsonl");
    ch_path(errp, "wal-relay.err");
    ch_path(drain_err, "wal-drain.err");
    relay_argv(argv, to, sizeof to, out);
    memset(p, 0, sizeof p);
    for (int i = 0; i < PRODUCERS; i++) {
        p[i].pg_conninfo = server.conninfo;
        p[i].pg_emit = 1;
        p[i].total = per_producer;
        p[i].aggregates = 1000;
        p[i].max_txn = 50;
        p[i].seed = ch_rand(&rng);
        ch_producer_start(&p[i]);
    }

    /* 1. Kill the relay at random moments while the producers write (and
     * after, until the kill count is reached). */
    for (;;) {
        int done = 1;
        for (int i = 0; i < PRODUCERS; i++)
            done = done && ch_producer_done(&p[i]);
        if (kills >= min_kills && (done || ch_now_ms() - started > 90000)) break;
        lives++;
        kills += ch_relay_kill_life(argv, errp, &rng);
        if (ch_now_ms() - started > 200000)
            TEST_FAIL_("only %d of %d kills in 200 s", kills, min_kills);
    }
    for (int i = 0; i < PRODUCERS; i++)
        ch_producer_join(&p[i]);
    fprintf(stderr, "kills: %d messages from %d producers, %d relay lives, %d kills, %.1f s\n",
            PRODUCERS * per_producer, PRODUCERS, lives, kills,
            (double)(ch_now_ms() - started) / 1000.0);

    /* 2. A relay drains the rest while PostgreSQL crashes twice. */
    pid_t relay = ch_spawn(argv, NULL, NULL, drain_err);
    ASSERT(ch_wait_file_contains(drain_err, "streaming slot", 30000));
    for (int restart = 1; restart <= 2; restart++) {
        ch_sleep_ms(ch_rand_range(&rng, 100, 600));
        pgh_stop_immediate(&server);
        ch_sleep_ms(200);
        pgh_start_server(&server);
        int64_t deadline = ch_now_ms() + 60000;
        while (occurrences(drain_err, "streaming slot outbox_outbox again") < restart) {
            if (!ch_alive(relay)) {
                ch_dump("relay stderr", drain_err);
                TEST_FAIL_("the relay exited after database restart %d", restart);
            }
            if (ch_now_ms() > deadline) {
                ch_dump("relay stderr", drain_err);
                TEST_FAIL_("the relay did not stream again within 60 s of restart %d", restart);
            }
            ch_sleep_ms(50);
        }
        fprintf(stderr, "database restart %d: the relay streams again\n", restart);
    }
    int64_t deadline = ch_now_ms() + 180000;
    for (;;) {
        check_all(out, p, 0, kills, &lost);
        if (lost == 0 || ch_now_ms() > deadline) break;
        ch_sleep_ms(1000);
    }
    ch_relays_stop(&relay, 1, &drain_err);
    check_all(out, p, 1, kills, &lost);
    ASSERT_EQ(table_rows(), 0);
    fprintf(stderr, "kills and restarts: %.1f s\n", (double)(ch_now_ms() - started) / 1000.0);
    for (int i = 0; i < PRODUCERS; i++)
        ch_producer_free(&p[i]);
}

int main(void)
{
    uint64_t seed = ch_seed();
    rng = seed;
    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays it)\n", (unsigned long long)seed);
    if (access(test_outbox_bin(), X_OK) != 0 && !getenv("OUTBOX_BIN"))
        SKIP("the outbox binary was not found: run through ctest (OUTBOX_BIN)");
    pgh_start(&server);
    snprintf(wal_url, sizeof wal_url, "%s?capture=wal", server.url);
    pgh_init_wal(&server);
    RUN(kills_and_restarts);
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
