/*
 * test_crash_redis.c - guarantees 2 and 4 through the redis:// destination
 * while the real relay process is SIGKILLed and redis-server crashes once.
 *
 * kill_sweep: a redis-server with appendonly yes + appendfsync always is
 * started on a free port.  A producer thread enqueues 20,000 messages
 * (OUTBOX_TEST_SCALE scales it) over 500 aggregates while `outbox relay
 * --to redis://...` drains them and is SIGKILLed at random moments
 * (seeded, OUTBOX_TEST_SEED replays) at least 30 times (scaled, never
 * below 5) and restarted; halfway, redis-server itself is SIGKILLed under
 * a running relay and restarted on its AOF.  Then `relay --once` drains
 * the rest and the stream is read back in order: lost 0 (every committed
 * id is in the stream), duplicates in the stream 0 (a republished message
 * is dropped by the driver's script, which remembers ids), per-aggregate
 * order violations 0, nothing pending or failed in the outbox.
 *
 * durability_warning: a server without AOF is reported at start-up (a
 * warning naming appendonly), and with require_fsync=true the relay
 * refuses to start.
 */
#include "test.h"

#ifndef OUTBOX_HAVE_HIREDIS
int main(void)
{
    SKIP("this build has no Redis destination (hiredis not found)");
}
#else

#include "support/chaos.h"
#include "support/redis.h"

static rh_server server;

TEST(kill_sweep)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH], store[700], to[256];
    uint64_t rng = ch_seed();
    int want_kills = test_scaled(30, 5), server_killed = 0;
    ch_producer p;
    ch_report r;

    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays)\n", (unsigned long long)rng);
    ch_path(db, "crash.db");
    ch_path(out, "stream.jsonl");
    ch_path(errp, "relay.err");
    ch_init_store(db);

    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = test_scaled(20000, 1000);
    p.aggregates = 500;
    p.max_txn = 50;
    p.pause_us = 200;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);

    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(to, sizeof to, "%s?stream=crash", server.url);
    const char *argv[] = {test_outbox_bin(), "relay", "--store",     store, "--to", to,
                          "--batch",         "512",   "--lease-ttl", "2s",  NULL};
    int kills = 0, lives = 0;
    int64_t started = ch_now_ms();
    /* As test_crash_nats: kill until both the kill count is reached and
     * the producer is done, but stop killing after 60 s (slow sanitizer
     * builds); the final drain takes the rest. */
    while ((kills < want_kills || !ch_producer_done(&p)) &&
           (kills < want_kills || ch_now_ms() - started < 60000)) {
        pid_t pid = ch_spawn(argv, NULL, NULL, errp);
        lives++;
        ch_sleep_ms(ch_rand_range(&rng, 5, 300));
        if (!server_killed && kills >= want_kills / 2 && ch_alive(pid)) {
            /* The server crashes under a running relay, and comes back on
             * its AOF: what it confirmed must be there. */
            ch_sleep_ms(200);
            rh_server_kill(&server);
            ch_sleep_ms(ch_rand_range(&rng, 50, 500));
            rh_server_start(&server);
            server_killed = 1;
            fprintf(stderr, "redis-server SIGKILLed and restarted after %d relay kills\n", kills);
            ch_sleep_ms(ch_rand_range(&rng, 100, 600));
        }
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
    ASSERT(server_killed);
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

    int64_t in_stream = rh_stream_dump(&server, "crash", out);
    ch_check_file(out, &p, &r);
    char label[160];
    snprintf(label, sizeof label, "redis (SIGKILL x%d, redis-server x1): stream holds %lld", kills,
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

/* A server that cannot keep what it confirms: warned about, or refused. */
TEST(durability_warning)
{
    rh_server weak;
    char db[CH_PATH], store[700], to[256], errp[CH_PATH];
    memset(&weak, 0, sizeof weak);
    weak.no_aof = 1;
    rh_server_start(&weak);
    ch_path(db, "weak.db");
    ch_path(errp, "weak.err");
    ch_init_store(db);
    snprintf(store, sizeof store, "sqlite:%s", db);

    snprintf(to, sizeof to, "%s?stream=weak", weak.url);
    const char *warn[] = {test_outbox_bin(), "relay", "--store", store, "--to", to, "--once", NULL};
    ASSERT_EQ(ch_run(warn, NULL, NULL, errp, 60000), 0);
    char *text = test_read_file(errp, NULL);
    ASSERT(text != NULL && strstr(text, "appendonly no") != NULL);
    ASSERT(strstr(text, "appendfsync always") != NULL);
    free(text);

    snprintf(to, sizeof to, "%s?stream=weak&require_fsync=true", weak.url);
    const char *refuse[] = {test_outbox_bin(), "relay", "--store", store, "--to", to,
                            "--once",          NULL};
    unlink(errp);
    ASSERT(ch_run(refuse, NULL, NULL, errp, 60000) != 0);
    text = test_read_file(errp, NULL);
    ASSERT(text != NULL && strstr(text, "require_fsync=true") != NULL);
    free(text);

    /* The server with AOF passes require_fsync. */
    snprintf(to, sizeof to, "%s?stream=weak&require_fsync=true", server.url);
    const char *strict[] = {test_outbox_bin(), "relay", "--store", store, "--to", to,
                            "--once",          NULL};
    ASSERT_EQ(ch_run(strict, NULL, NULL, errp, 60000), 0);
    rh_server_stop(&weak);
}

int main(void)
{
    rh_require_server();
    memset(&server, 0, sizeof server);
    rh_server_start(&server);
    RUN(durability_warning);
    RUN(kill_sweep);
    rh_server_stop(&server);
    return 0;
}

#endif /* OUTBOX_HAVE_HIREDIS */
