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
 */
#include "test.h"

#ifndef OUTBOX_HAVE_NATS
int main(void)
{
    SKIP("this build has no NATS destination (nats.c not found)");
}
#else

#include "nats_harness.h"

static nh_server server;

TEST(kill_sweep)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH], store[700], to[256];
    uint64_t rng = ch_seed();
    int want_kills = test_scaled(50, 5);
    ch_producer p;
    ch_report r;

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

    int64_t in_stream = nh_stream_dump(&server, "CRASH", "outbox.>", out);
    ch_check_file(out, &p, &r);
    char label[96];
    snprintf(label, sizeof label, "nats (SIGKILL x%d): stream holds %lld", kills,
             (long long)in_stream);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, p.total);
    ASSERT_EQ(r.torn, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.duplicates, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT_GE(kills, want_kills);
    ch_producer_free(&p);
}

int main(void)
{
    nh_require_server();
    memset(&server, 0, sizeof server);
    nh_server_start(&server);
    RUN(kill_sweep);
    nh_server_stop(&server);
    nats_Close();
    return 0;
}

#endif /* OUTBOX_HAVE_NATS */
