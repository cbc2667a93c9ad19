/*
 * test_crash_nats.c - guarantees 2 and 4 through the nats:// destination
 * while the real relay process is SIGKILLed.
 *
 * A nats-server -js is started on a free port with a stream whose duplicate
 * window (10 minutes) outlasts the test.  A producer thread enqueues 100,000
 * messages (OUTBOX_TEST_SCALE scales it) over 1000 aggregates while
 * `outbox relay --to nats://...` drains them and is SIGKILLed at random
 * moments (seeded, OUTBOX_TEST_SEED replays) at least 50 times (scaled,
 * never below 5) and restarted; then `relay --once` drains the rest.
 *
 * The stream is then read back in order: lost 0 (every committed id is in
 * the stream), duplicates in the stream 0 (a message published again after
 * a kill is dropped by JetStream thanks to Nats-Msg-Id), per-aggregate
 * order violations 0, nothing pending or failed in the outbox.
 *
 * pg_three_relays: the same checks with the PostgreSQL store (a server
 * started by tests/support/pg.h; left out with a message when the
 * PostgreSQL binaries are not installed) and THREE `outbox relay` processes
 * sharing the outbox by leasing hash partitions, pipelining (the claim of
 * batch N+1 is a plain read under the partition advisory locks while batch
 * N's acks are outstanding).  A producer enqueues 30,000 messages (scaled)
 * over 500 aggregates; once a third of them are pending the three relays
 * start and drain while it goes on writing; one of them, picked at random,
 * is SIGKILLed and restarted at least 20 times (scaled, never below 5);
 * the survivors drain the rest.  The relays log at debug level and their
 * logs must show pipelined batches, so the test fails if pipelining
 * silently stopped being used.  With OUTBOX_RELAY_PIPELINE=0 in the
 * environment the relays run their serial loop (and must log no pipelined
 * batch).
 */
#include "test.h"

#ifndef OUTBOX_HAVE_NATS
int main(void)
{
    SKIP("this build has no NATS destination (nats.c not found)");
}
#else

#include "support/chaos.h"
#include "support/nats.h"
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#include <pwd.h>
#endif

static nh_server server;

/* Reads the stream back into out and checks it against the producer's
 * record: every committed message exactly once (Nats-Msg-Id), in
 * per-aggregate order, nothing torn or foreign; and that the relays were
 * killed at least want_kills times. */
static void check_stream_once(const char *what, const char *stream, const char *subjects,
                              const char *out, ch_producer *p, int kills, int want_kills)
{
    ch_report r;
    char label[160];
    int64_t in_stream = nh_stream_dump(&server, stream, subjects, out);
    ch_check_file(out, p, &r);
    snprintf(label, sizeof label, "%s (SIGKILL x%d): stream holds %lld", what, kills,
             (long long)in_stream);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, p->total);
    ASSERT_EQ(r.torn, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.duplicates, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT_GE(kills, want_kills);
}

TEST(kill_sweep)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH], store[700], to[256];
    uint64_t rng = ch_seed();
    int want_kills = test_scaled(50, 5);
    ch_producer p;

    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays)\n", (unsigned long long)rng);
    ch_path(db, "crash.db");
    ch_path(out, "stream.jsonl");
    ch_path(errp, "relay.err");
    ch_init_store(db);
    nh_stream_create(&server, "CRASH", "outbox.>");

    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = test_scaled(100000, 1000);
    p.aggregates = 1000;
    p.max_txn = 50;
    p.pause_us = 200;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);

    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(to, sizeof to, "%s?stream=CRASH", server.url);
    const char *argv[] = {test_outbox_bin(), "relay", "--store",     store, "--to", to,
                          "--batch",         "512",   "--lease-ttl", "2s",  NULL};
    int kills = 0, lives = 0;
    int64_t started = ch_now_ms();
    /* Kill until both the kill count is reached and the producer is done,
     * but stop killing after 60 s (slow sanitizer builds): the producer
     * then finishes on its own and the final drain takes the rest. */
    while ((kills < want_kills || !ch_producer_done(&p)) &&
           (kills < want_kills || ch_now_ms() - started < 60000)) {
        pid_t pid = ch_spawn(argv, NULL, NULL, errp);
        lives++;
        ch_sleep_ms(ch_rand_range(&rng, 5, 300));
        if (ch_alive(pid)) {
            int code = ch_kill9(pid);
            if (code == 137) {
                kills++;
                continue;
            }
            ch_dump("relay stderr", errp);
            TEST_FAIL_("relay exited %d just before the kill", code);
        }
        int code = ch_wait_or_die(pid, 1000, "relay");
        ch_dump("relay stderr", errp);
        TEST_FAIL_("relay exited %d on its own", code);
    }
    ch_producer_join(&p);
    int64_t pending = ch_outbox_count(db, "pending");
    fprintf(stderr,
            "kill sweep: %d messages in %d transactions, %d relay lives, %d kills, %lld pending "
            "after the last kill, %.1f s\n",
            p.committed, p.transactions, lives, kills, (long long)pending,
            (double)(ch_now_ms() - started) / 1000.0);

    const char *once[] = {test_outbox_bin(), "relay", "--store", store, "--to", to,
                          "--batch",         "512",   "--once",  NULL};
    int code = ch_run(once, NULL, NULL, errp, 120000);
    if (code != 0) {
        ch_dump("final relay stderr", errp);
        TEST_FAIL_("final relay --once exited %d", code);
    }
    ASSERT_EQ(ch_outbox_count(db, "pending"), 0);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);

    check_stream_once("nats", "CRASH", "outbox.>", out, &p, kills, want_kills);
    ch_producer_free(&p);
}

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;

static int64_t pg_outbox_count(const char *status)
{
    return pgh_outbox_count(&pg, status);
}

/* Occurrences of needle in the file at path (0 when absent). */
static int64_t count_in_file(const char *path, const char *needle)
{
    char *text = test_read_file(path, NULL);
    int64_t n = 0;
    for (const char *at = text; at && (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    free(text);
    return n;
}

/* Three relays from one PostgreSQL outbox to one stream; a random one is
 * SIGKILLed and restarted again and again while the producer writes. */
TEST(pg_three_relays)
{
    char out[CH_PATH], errs[3][CH_PATH], to[256];
    uint64_t rng = ch_seed();
    int want_kills = test_scaled(20, 5);
    const char *pipe_env = getenv("OUTBOX_RELAY_PIPELINE");
    int serial = pipe_env && strcmp(pipe_env, "0") == 0;
    ch_producer p;

    if (pgh_available() != NULL) {
        fprintf(stderr, "pg_three_relays: left out: no PostgreSQL server binaries (or no "
                        "'nobody' user to run them as root)\n");
        return;
    }
    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays)%s\n", (unsigned long long)rng,
            serial ? ", serial relays (OUTBOX_RELAY_PIPELINE=0)" : "");
    pgh_start(&pg);
    {
        const char *argv[] = {test_outbox_bin(), "init", "--store", pg.url, NULL};
        const char *errp = test_path("pg-init.err");
        int code = ch_run(argv, NULL, NULL, errp, 60000);
        if (code != 0) {
            ch_dump("outbox init stderr", errp);
            TEST_FAIL_("outbox init --store %s exited %d", pg.url, code);
        }
    }
    ch_path(out, "pg-stream.jsonl");
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "pg-relay-%d.err", i);
        ch_path(errs[i], name);
    }
    nh_stream_create(&server, "PGCRASH", "pgcrash.>");

    memset(&p, 0, sizeof p);
    p.pg_conninfo = pg.conninfo;
    p.pg_async_commit = 1; /* only the relays crash here, never the database */
    p.total = test_scaled(30000, 3000);
    p.aggregates = 500;
    p.max_txn = 50;
    p.pause_us = 0;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);
    /* The relays start on a backlog (a third of the messages), so that
     * their first batches are full and pipelined, and then keep up with
     * the producer while they are killed. */
    int64_t backlog = 0;
    while (!ch_producer_done(&p) && (backlog = pg_outbox_count("pending")) < p.total / 3)
        ch_sleep_ms(20);

    snprintf(to, sizeof to, "%s?stream=PGCRASH&subject=pgcrash.{type}", server.url);
    const char *argv[] = {
        test_outbox_bin(), "--log-level", "debug",       "relay", "--store", pg.url, "--to", to,
        "--batch",         "128",         "--lease-ttl", "2s",    NULL};
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = ch_spawn(argv, NULL, NULL, errs[i]);
    int kills = 0, lives = 3, by_relay[3] = {0, 0, 0};
    int64_t started = ch_now_ms();
    /* As kill_sweep: kill until both the kill count is reached and the
     * producer is done, but stop killing after 45 s (slow sanitizer
     * builds); the survivors then drain the rest. */
    while ((kills < want_kills || !ch_producer_done(&p)) &&
           (kills < want_kills || ch_now_ms() - started < 45000)) {
        ch_sleep_ms(ch_rand_range(&rng, 100, 600));
        for (int i = 0; i < 3; i++)
            if (!ch_alive(pids[i])) {
                int code = ch_wait_or_die(pids[i], 1000, "relay");
                ch_dump("relay stderr", errs[i]);
                TEST_FAIL_("relay %d exited %d on its own", i, code);
            }
        int victim = (int)ch_rand_range(&rng, 0, 2);
        int code = ch_kill9(pids[victim]);
        if (code != 137) {
            ch_dump("relay stderr", errs[victim]);
            TEST_FAIL_("relay %d exited %d just before the kill", victim, code);
        }
        kills++;
        by_relay[victim]++;
        pids[victim] = ch_spawn(argv, NULL, NULL, errs[victim]);
        lives++;
        if (ch_now_ms() - started > 150000) TEST_FAIL_("three-relay run took over 150 s");
    }
    ch_producer_join(&p);
    int64_t pending = pg_outbox_count("pending");
    int64_t t_killed = ch_now_ms();

    /* The surviving relays drain the rest. */
    for (;;) {
        int64_t n = pg_outbox_count("pending");
        if (n == 0) break;
        for (int i = 0; i < 3; i++)
            if (!ch_alive(pids[i])) {
                int code = ch_wait_or_die(pids[i], 1000, "relay");
                ch_dump("relay stderr", errs[i]);
                TEST_FAIL_("relay %d exited %d with %lld pending", i, code, (long long)n);
            }
        if (ch_now_ms() - t_killed > 120000) {
            for (int i = 0; i < 3; i++)
                ch_dump("relay stderr", errs[i]);
            TEST_FAIL_("%lld messages still pending 120 s after the last kill", (long long)n);
        }
        ch_sleep_ms(50);
    }
    double drain_s = (double)(ch_now_ms() - t_killed) / 1000.0;
    ch_relays_stop(pids, 3, errs);
    int64_t pipelined[3], most = 0;
    for (int i = 0; i < 3; i++) {
        pipelined[i] = count_in_file(errs[i], "(pipelined)");
        if (pipelined[i] > most) most = pipelined[i];
    }
    fprintf(stderr,
            "pg three relays: %d messages in %d transactions, relays started on %lld pending, "
            "%d relay lives, %d kills (%d/%d/%d), %lld pending after the last kill, drained "
            "%.1f s later, %.1f s in all; pipelined batches logged %lld/%lld/%lld\n",
            p.committed, p.transactions, (long long)backlog, lives, kills, by_relay[0], by_relay[1],
            by_relay[2], (long long)pending, drain_s, (double)(ch_now_ms() - started) / 1000.0,
            (long long)pipelined[0], (long long)pipelined[1], (long long)pipelined[2]);
    ASSERT_EQ(pg_outbox_count("pending"), 0);
    ASSERT_EQ(pg_outbox_count("failed"), 0);

    check_stream_once("nats from pg, 3 relays", "PGCRASH", "pgcrash.>", out, &p, kills, want_kills);
    /* The relays really pipelined (none did with OUTBOX_RELAY_PIPELINE=0). */
    if (serial)
        ASSERT_EQ(most, 0);
    else
        ASSERT_GE(most, 1);
    ch_producer_free(&p);
}
#endif

int main(void)
{
    nh_require_server();
    memset(&server, 0, sizeof server);
    nh_server_start(&server);
    RUN(kill_sweep);
#ifdef OUTBOX_HAVE_LIBPQ
    RUN(pg_three_relays);
#endif
    nh_server_stop(&server);
    nats_Close();
    return 0;
}

#endif /* OUTBOX_HAVE_NATS */
