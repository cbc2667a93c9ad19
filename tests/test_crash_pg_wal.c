/*
 * test_crash_pg_wal.c - guarantees 2 (at least once) and 4 (order) with
 * WAL capture (capture=wal, docs/WAL.md) under crashes of the relay and of
 * the database, to two destinations: `file:` (to_file) and JetStream
 * (to_jetstream).
 *
 * Four producer threads write messages to the WAL (pg_logical_emit_message
 * with the encoding v1, as <schema>.emit does) in transactions of 1-50
 * messages over 1,000 aggregates each, every payload carrying its
 * aggregate's counter; `outbox relay --store ...?capture=wal --to ...`
 * publishes.  Each leg runs the same two phases:
 *
 *   1. 100,000 messages (25,000 per producer), the relay SIGKILLed at
 *      random moments at least 50 times and restarted while they write;
 *   2. then, with a relay draining what is left, PostgreSQL is stopped
 *      with `pg_ctl stop -m immediate` and restarted twice; the relay must
 *      reconnect by itself and resume from the slot's confirmed position.
 *
 * Checked per producer: lost 0, per-aggregate order violations 0 (the WAL
 * is in commit order, so each producer's messages come in its commit
 * order); every message published is some producer's; nothing is left in
 * the table.  Each kill replays from the slot's confirmed position:
 * `file:` keeps the replays (duplicates are counted and printed; a relay
 * killed inside its write(2) may leave a torn line), while JetStream drops
 * them by Nats-Msg-Id, so the stream, read back in stream order, must hold
 * every message exactly once: duplicates 0, torn 0.  The JetStream leg
 * starts a nats-server -js whose stream keeps a 10-minute duplicate window
 * (tests/support/nats.c), longer than the whole test; it is left out, with
 * a message, in a build without the NATS destination or on a machine
 * without nats-server.  OUTBOX_TEST_SCALE (default 1) scales message and
 * kill counts.
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
#ifdef OUTBOX_HAVE_NATS
#include "support/nats.h"
#endif

#define PRODUCERS 4

static pgh_server server;
static uint64_t rng;
static char wal_url[700];

/* A leg's destination: all that differs between the legs. */
typedef struct wal_dest {
    const char *name; /* labels the output and names the leg's files */
    int dedup;        /* de-duplicates by id: duplicates and torn lines must be 0 */
    /* The relay's --to; out: the leg's output file. */
    void (*to)(char *to, size_t to_len, const char *out);
    /* Committed messages not yet at the destination (<= 0: all there),
     * polled while the last relay drains. */
    int64_t (*missing)(const struct wal_dest *d, const char *out, ch_producer *p);
    /* NULL, or writes what the destination holds into out as lines for
     * ch_check_file, once the relay has stopped. */
    void (*collect)(const char *out);
} wal_dest;

static void relay_argv(const char **argv, const char *to)
{
    int i = 0;
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

typedef struct wal_totals {
    int64_t lost, duplicates, violations;
} wal_totals;

/* Checks out against every producer; returns the sums.  With verify set,
 * prints each producer's counts and fails the test unless nothing is lost
 * or out of order, every line is some producer's message and, when d
 * de-duplicates, nothing is there twice and no line is torn; otherwise at
 * most max_torn lines may be torn (a relay killed inside its write(2)
 * leaves a partial line, never confirmed, so published again). */
static wal_totals check_all(const wal_dest *d, const char *out, ch_producer *p, int max_torn,
                            int verify)
{
    wal_totals t = {0, 0, 0};
    int64_t own = 0, published = 0;
    for (int i = 0; i < PRODUCERS; i++) {
        ch_report r;
        char label[64];
        ch_check_file(out, &p[i], &r);
        t.lost += r.lost;
        t.duplicates += r.duplicates;
        t.violations += r.violations;
        published = r.published;
        own += r.published - r.foreign;
        if (!verify) continue;
        snprintf(label, sizeof label, "%s: producer %d", d->name, i + 1);
        ch_report_print(label, &r);
        ASSERT_EQ(r.expected, p[i].total);
        ASSERT_EQ(r.lost, 0);
        ASSERT_EQ(r.violations, 0);
        ASSERT(r.torn <= (d->dedup ? 0 : max_torn));
        if (d->dedup) ASSERT_EQ(r.duplicates, 0);
    }
    if (verify) ASSERT_EQ(own, published);
    return t;
}

static int64_t table_rows(void)
{
    PGconn *c = pgh_connect(&server);
    int64_t n = pgh_count(c, "SELECT count(*) FROM outbox.outbox");
    PQfinish(c);
    return n;
}

/* The leg: producers and relay kills, then two database crashes under the
 * relay that drains the rest, then d's checks. */
static void kills_and_restarts(const wal_dest *d, int per_producer)
{
    char out[CH_PATH], errp[CH_PATH], drain_err[CH_PATH], to[CH_PATH + 64], name[64];
    const char *argv[16];
    ch_producer p[PRODUCERS];
    int min_kills = test_scaled(50, 5), kills = 0, lives = 0;
    int64_t started = ch_now_ms();

    snprintf(name, sizeof name, "wal-%s.jsonl", d->name);
    ch_path(out, name);
    snprintf(name, sizeof name, "wal-%s-relay.err", d->name);
    ch_path(errp, name);
    snprintf(name, sizeof name, "wal-%s-drain.err", d->name);
    ch_path(drain_err, name);
    d->to(to, sizeof to, out);
    relay_argv(argv, to);
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
    fprintf(stderr, "%s kills: %d messages from %d producers, %d relay lives, %d kills, %.1f s\n",
            d->name, PRODUCERS * per_producer, PRODUCERS, lives, kills,
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
        fprintf(stderr, "%s: database restart %d: the relay streams again\n", d->name, restart);
    }
    int64_t deadline = ch_now_ms() + 180000;
    while (d->missing(d, out, p) > 0 && ch_now_ms() < deadline)
        ch_sleep_ms(1000);
    ch_relays_stop(&relay, 1, &drain_err);
    if (d->collect) d->collect(out);
    wal_totals t = check_all(d, out, p, kills, 1);
    ASSERT_EQ(table_rows(), 0);
    fprintf(stderr,
            "%s kills and restarts: %d kills, 2 database restarts, %d messages: lost %lld, "
            "duplicates %lld, order violations %lld, %.1f s\n",
            d->name, kills, PRODUCERS * per_producer, (long long)t.lost, (long long)t.duplicates,
            (long long)t.violations, (double)(ch_now_ms() - started) / 1000.0);
    for (int i = 0; i < PRODUCERS; i++)
        ch_producer_free(&p[i]);
}

/* ------------------------------------------------------------------------
 * file:
 * ---------------------------------------------------------------------- */

static void file_to(char *to, size_t to_len, const char *out)
{
    snprintf(to, to_len, "file:%s", out);
}

/* A line count first: the full check reads every line once a producer
 * (about 30 s a time under AddressSanitizer with 200,000 lines), so it runs
 * only once there are as many lines as committed messages. */
static int64_t file_missing(const wal_dest *d, const char *out, ch_producer *p)
{
    int64_t committed = 0, lines = occurrences(out, "\n");
    for (int i = 0; i < PRODUCERS; i++)
        committed += p[i].committed;
    if (lines < committed) return committed - lines;
    return check_all(d, out, p, 0, 0).lost;
}

TEST(to_file)
{
    static const wal_dest file = {.name = "file", .to = file_to, .missing = file_missing};
    kills_and_restarts(&file, test_scaled(25000, 250));
}

/* ------------------------------------------------------------------------
 * JetStream
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_NATS
#define STREAM "WALCRASH"

static nh_server nats;

static void stream_to(char *to, size_t to_len, const char *out)
{
    (void)out;
    snprintf(to, to_len, "%s?stream=" STREAM, nats.url);
}

static int64_t stream_missing(const wal_dest *d, const char *out, ch_producer *p)
{
    int64_t committed = 0, held = nh_stream_count(&nats, STREAM);
    (void)d;
    (void)out;
    for (int i = 0; i < PRODUCERS; i++)
        committed += p[i].committed;
    return committed - held;
}

static void stream_collect(const char *out)
{
    int64_t n = nh_stream_dump(&nats, STREAM, "outbox.>", out);
    fprintf(stderr, "jetstream: the stream holds %lld messages\n", (long long)n);
}
#endif

TEST(to_jetstream)
{
#ifdef OUTBOX_HAVE_NATS
    static const wal_dest stream = {.name = "jetstream",
                                    .dedup = 1,
                                    .to = stream_to,
                                    .missing = stream_missing,
                                    .collect = stream_collect};
    if (access(NH_SERVER_BIN, X_OK) != 0) {
        fprintf(stderr, "to_jetstream: left out: %s not found (install nats-server)\n",
                NH_SERVER_BIN);
        return;
    }
    memset(&nats, 0, sizeof nats);
    nh_server_start(&nats);
    /* Duplicate window 10 minutes: longer than the test, so that every
     * replay after a kill is dropped. */
    nh_stream_create(&nats, STREAM, "outbox.>");
    kills_and_restarts(&stream, test_scaled(25000, 250));
    nh_server_stop(&nats);
    nats_Close();
#else
    fprintf(stderr, "to_jetstream: left out: this build has no NATS destination (nats.c not "
                    "found)\n");
#endif
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
    RUN(to_file);
    RUN(to_jetstream);
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
