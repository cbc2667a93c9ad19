/*
 * test_crash.c - guarantees 2 (at least once) and 4 (per-aggregate order)
 * under crashes of the real relay process.
 *
 * A producer thread enqueues messages through the library in transactions
 * of 1-50 messages over many aggregates, each payload carrying its
 * aggregate's enqueue counter, while `outbox relay --to file:OUT` drains:
 *
 *   1. kill sweep: the relay is SIGKILLed at random moments (seeded; the
 *      seed is printed, OUTBOX_TEST_SEED replays it) at least 50 times and
 *      restarted each time, then `relay --once` drains the rest;
 *      SIGTERM sweep: the same with SIGTERM, each relay must exit 0;
 *   2. crash sweep: for every named fault point, relays with
 *      OUTBOX_FAULT=point:crash:... are restarted until one drains the
 *      outbox and exits 0;
 *   3. error sweep: one relay with OUTBOX_FAULT=point:error:pX per point
 *      must ride the injected errors out and deliver everything.
 *
 * After each run the file is checked: nothing lost, no per-aggregate
 * first-publication order violation, only torn lines that a kill can leave
 * (at most one per kill), no pending or failed message left.  Duplicates
 * are allowed (at least once) and printed.  OUTBOX_TEST_SCALE (default 1,
 * 0.5 in AddressSanitizer builds) scales the message counts, e.g. 0.1 for
 * a quick run.
 */
#include "support/chaos.h"

#include <signal.h>

static uint64_t rng;
static double scale = 1.0;
static int slow = 1; /* sanitized builds start processes several times slower */

typedef struct row {
    char point[32];
    char action[8];
    int restarts; /* kills by the test or by the fault */
    ch_report r;
    int64_t pending, failed;
} row;

static row rows[32];
static int nrows;

static int scaled(int n)
{
    int v = (int)(n * scale);
    return v < 100 ? 100 : v;
}

/* argv for `outbox relay` on db -> out, plus extra arguments. */
typedef struct relay_cmd {
    char store[700], to[700], batch[16];
    const char *argv[32];
} relay_cmd;

static void relay_cmd_init(relay_cmd *c, const char *db, const char *out, int once, int batch,
                           const char *const *extra)
{
    int i = 0;
    snprintf(c->store, sizeof c->store, "sqlite:%s", db);
    snprintf(c->to, sizeof c->to, "file:%s", out);
    snprintf(c->batch, sizeof c->batch, "%d", batch);
    c->argv[i++] = test_outbox_bin();
    c->argv[i++] = "relay";
    c->argv[i++] = "--store";
    c->argv[i++] = c->store;
    c->argv[i++] = "--to";
    c->argv[i++] = c->to;
    c->argv[i++] = "--batch";
    c->argv[i++] = c->batch;
    /* A dead relay's lease is taken over at once; the short TTL only bounds
     * the damage if that detection does not work (the test then fails on
     * the refusals it counts). */
    c->argv[i++] = "--lease-ttl";
    c->argv[i++] = "2s";
    if (once) c->argv[i++] = "--once";
    for (int j = 0; extra && extra[j] && i < 31; j++)
        c->argv[i++] = extra[j];
    c->argv[i] = NULL;
}

/* Final checks common to every run; records a table row. */
static void finish_run(const char *point, const char *action, int restarts, const char *db,
                       const char *out, const ch_producer *p, int max_torn)
{
    row *w = &rows[nrows++];
    snprintf(w->point, sizeof w->point, "%s", point);
    snprintf(w->action, sizeof w->action, "%s", action);
    w->restarts = restarts;
    ch_check_file(out, p, &w->r);
    w->pending = ch_outbox_count(db, "pending");
    w->failed = ch_outbox_count(db, "failed");
    char label[80];
    snprintf(label, sizeof label, "%s:%s (%d restarts)", point, action, restarts);
    ch_report_print(label, &w->r);
    ASSERT_EQ(w->r.expected, p->total);
    ASSERT_EQ(w->r.foreign, 0);
    ASSERT_EQ(w->r.lost, 0);
    ASSERT_EQ(w->r.violations, 0);
    ASSERT(w->r.torn <= max_torn);
    ASSERT_EQ(w->pending, 0);
    ASSERT_EQ(w->failed, 0);
}

/* 1. SIGKILL the relay at random moments while the producer writes. */
TEST(kill_sweep)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH];
    ch_path(db, "kill.db");
    ch_path(out, "kill.jsonl");
    ch_path(errp, "kill-relay.err");
    ch_init_store(db);

    ch_producer p;
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = scaled(100000);
    p.aggregates = 1000;
    p.max_txn = 50;
    p.pause_us = 200;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);

    relay_cmd c;
    relay_cmd_init(&c, db, out, 0, 256, NULL);
    int kills = 0, refusals = 0, lives = 0;
    int64_t started = ch_now_ms();
    while (kills < 50 || !ch_producer_done(&p)) {
        if (ch_now_ms() - started > 240000)
            TEST_FAIL_("kill sweep took over 4 minutes (%d kills, producer at %d of %d)", kills,
                       p.committed, p.total);
        pid_t pid = ch_spawn(c.argv, NULL, NULL, errp);
        lives++;
        ch_sleep_ms(ch_rand_range(&rng, 2, 100));
        if (ch_alive(pid)) {
            int code = ch_kill9(pid);
            if (code == 137) {
                kills++;
                continue;
            }
            fprintf(stderr, "relay exited %d just before the kill\n", code);
            if (code == 1)
                refusals++;
            else {
                ch_dump("relay stderr", errp);
                TEST_FAIL_("relay exited %d on its own", code);
            }
        } else {
            int code = ch_wait_or_die(pid, 1000, "relay");
            if (code != 1) {
                ch_dump("relay stderr", errp);
                TEST_FAIL_("relay exited %d on its own", code);
            }
            refusals++;
        }
    }
    ch_producer_join(&p);
    fprintf(stderr,
            "kill sweep: %d messages in %d transactions (%d retried), %d relay lives, "
            "%d kills, %d lease refusals, %.1f s\n",
            p.committed, p.transactions, p.rollbacks, lives, kills, refusals,
            (double)(ch_now_ms() - started) / 1000.0);

    relay_cmd_init(&c, db, out, 1, 256, NULL);
    int code = ch_run(c.argv, NULL, NULL, errp, 180000);
    if (code != 0) {
        ch_dump("final relay stderr", errp);
        TEST_FAIL_("final relay --once exited %d", code);
    }
    finish_run("(SIGKILL)", "kill", kills, db, out, &p, kills);
    /* A dead relay's lease is free at once: no refusal after a kill. */
    ASSERT_EQ(refusals, 0);
    ch_producer_free(&p);
}

/* 1b. SIGTERM the relay at random moments: each must exit 0 promptly,
 * having published or abandoned its batch without tearing a line. */
TEST(term_sweep)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH];
    ch_path(db, "term.db");
    ch_path(out, "term.jsonl");
    ch_path(errp, "term-relay.err");
    ch_init_store(db);

    ch_producer p;
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = scaled(10000);
    p.aggregates = 200;
    p.max_txn = 50;
    p.pause_us = 200;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);

    relay_cmd c;
    relay_cmd_init(&c, db, out, 0, 64, NULL);
    int terms = 0, early = 0;
    int64_t started = ch_now_ms(), slowest = 0;
    while (terms < 40 || !ch_producer_done(&p)) {
        if (ch_now_ms() - started > 120000) TEST_FAIL_("term sweep took over 2 minutes");
        pid_t pid = ch_spawn(c.argv, NULL, NULL, errp);
        ch_sleep_ms(ch_rand_range(&rng, 1, 150 * slow));
        int64_t t0 = ch_now_ms();
        kill(pid, SIGTERM);
        int code = ch_wait(pid, 10000);
        if (code == -1) {
            ch_kill9(pid);
            ch_dump("relay stderr", errp);
            TEST_FAIL_("relay did not exit within 10 s of SIGTERM (stop %d)", terms + early + 1);
        }
        if (ch_now_ms() - t0 > slowest) slowest = ch_now_ms() - t0;
        if (code == 128 + SIGTERM) {
            /* Killed by the default action: the signal came before the
             * relay installed its handler (start-up). */
            early++;
            continue;
        }
        if (code != 0) {
            ch_dump("relay stderr", errp);
            TEST_FAIL_("relay exited %d after SIGTERM, expected 0", code);
        }
        terms++;
    }
    ch_producer_join(&p);
    fprintf(stderr,
            "term sweep: %d clean stops, %d stops during start-up (default action), "
            "slowest exit %lld ms\n",
            terms, early, (long long)slowest);

    relay_cmd_init(&c, db, out, 1, 256, NULL);
    int code = ch_run(c.argv, NULL, NULL, errp, 180000);
    if (code != 0) {
        ch_dump("final relay stderr", errp);
        TEST_FAIL_("final relay --once exited %d", code);
    }
    finish_run("(SIGTERM)", "term", terms + early, db, out, &p, early);
    ch_producer_free(&p);
}

static const char *const points[] = {"after_claim",      "after_publish",   "before_mark_sent",
                                     "during_mark_sent", "after_mark_sent", "file_after_write",
                                     "file_after_fsync"};
enum { NPOINTS = sizeof points / sizeof points[0] };

/* The files of one fault-point run (<kind>-<point>.db/.jsonl/.err), a fresh
 * outbox, and a producer of 10,000 messages (scaled) started on it. */
static void point_run_start(const char *kind, const char *point, char *db, char *out, char *errp,
                            ch_producer *p)
{
    char name[64];
    snprintf(name, sizeof name, "%s-%s.db", kind, point);
    ch_path(db, name);
    snprintf(name, sizeof name, "%s-%s.jsonl", kind, point);
    ch_path(out, name);
    snprintf(name, sizeof name, "%s-%s.err", kind, point);
    ch_path(errp, name);
    ch_init_store(db);

    memset(p, 0, sizeof *p);
    p->db_path = db;
    /* At least 5,000 even in a scaled-down run: with batches of 32 that is
     * over 150 hits of each point, so a sweep cannot end before its fault
     * fires (a drained outbox no longer reaches the points). */
    p->total = scaled(10000) < 5000 ? 5000 : scaled(10000);
    p->aggregates = 100;
    p->max_txn = 50;
    p->pause_us = 2000;
    p->seed = ch_rand(&rng);
    ch_producer_start(p);
}

/* 2. Relays that crash themselves at a fault point, restarted until drained. */
static void crash_point(const char *point)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH];
    ch_producer p;
    point_run_start("crash", point, db, out, errp, &p);

    relay_cmd c;
    /* Every point is hit once per batch: small batches mean many hits. */
    relay_cmd_init(&c, db, out, 1, 32, NULL);
    int crashes = 0, runs = 0;
    int64_t started = ch_now_ms();
    for (;;) {
        int producer_done = ch_producer_done(&p);
        char fault[96], seed[48];
        /* Alternate the two trigger modes: a probability per hit, and the
         * N-th hit of a fresh process. */
        if (runs % 2 == 0)
            snprintf(fault, sizeof fault, "OUTBOX_FAULT=%s:crash:p0.1", point);
        else
            snprintf(fault, sizeof fault, "OUTBOX_FAULT=%s:crash:%d", point,
                     (int)ch_rand_range(&rng, 1, 15));
        snprintf(seed, sizeof seed, "OUTBOX_FAULT_SEED=%llu",
                 (unsigned long long)(ch_rand(&rng) >> 1));
        const char *env[] = {fault, seed, NULL};
        runs++;
        int code = ch_wait_or_die(ch_spawn(c.argv, env, NULL, errp), 120000, "relay --once");
        if (code == 137) {
            crashes++;
        } else if (code == 0) {
            if (producer_done) break;
            ch_sleep_ms(5);
        } else {
            ch_dump("relay stderr", errp);
            TEST_FAIL_("%s: relay --once exited %d (expected 0 or a crash)", fault, code);
        }
        if (ch_now_ms() - started > 150000) TEST_FAIL_("%s: not drained after 150 s", point);
    }
    ch_producer_join(&p);
    fprintf(stderr, "%s:crash: %d runs, %d crashes, %.1f s\n", point, runs, crashes,
            (double)(ch_now_ms() - started) / 1000.0);
    finish_run(point, "crash", crashes, db, out, &p, crashes);
    /* Every point is on the relay's path: a sweep that never crashed did
     * not test anything. */
    ASSERT(crashes > 0);
    ch_producer_free(&p);
}

TEST(fault_crash_sweep)
{
    for (int i = 0; i < NPOINTS; i++)
        crash_point(points[i]);
}

/* 3. One relay rides out injected errors at a point and delivers all. */
static void error_point(const char *point)
{
    char db[CH_PATH], out[CH_PATH], errp[CH_PATH];
    ch_producer p;
    point_run_start("error", point, db, out, errp, &p);

    char fault[96], seed[48];
    snprintf(fault, sizeof fault, "OUTBOX_FAULT=%s:error:p0.1", point);
    snprintf(seed, sizeof seed, "OUTBOX_FAULT_SEED=%llu", (unsigned long long)(ch_rand(&rng) >> 1));
    const char *env[] = {fault, seed, NULL};
    const char *extra[] = {"--backoff-base", "5ms", "--backoff-max", "50ms", "--max-attempts",
                           "1000",           NULL};
    relay_cmd c;
    relay_cmd_init(&c, db, out, 0, 32, extra);
    pid_t pid = ch_spawn(c.argv, env, NULL, errp);
    int64_t started = ch_now_ms();
    for (;;) {
        if (!ch_alive(pid)) {
            int code = ch_wait_or_die(pid, 1000, "relay");
            ch_dump("relay stderr", errp);
            TEST_FAIL_("%s: the relay exited %d instead of riding the errors out", fault, code);
        }
        if (ch_producer_done(&p) && ch_outbox_count(db, "pending") == 0) break;
        if (ch_now_ms() - started > 150000) {
            ch_kill9(pid);
            TEST_FAIL_("%s: not drained after 150 s (%lld pending)", fault,
                       (long long)ch_outbox_count(db, "pending"));
        }
        ch_sleep_ms(50);
    }
    ch_producer_join(&p);
    kill(pid, SIGTERM);
    int code = ch_wait_or_die(pid, 20000, "relay after SIGTERM");
    if (code != 0) {
        ch_dump("relay stderr", errp);
        TEST_FAIL_("%s: relay exited %d after SIGTERM, expected 0", fault, code);
    }
    fprintf(stderr, "%s:error: %.1f s\n", point, (double)(ch_now_ms() - started) / 1000.0);
    finish_run(point, "error", 0, db, out, &p, 0);
    ch_producer_free(&p);
}

TEST(fault_error_sweep)
{
    for (int i = 0; i < NPOINTS; i++)
        error_point(points[i]);
}

static void print_table(void)
{
    fprintf(stderr, "\n%-18s %-6s %8s %8s %6s %10s %10s %5s %8s\n", "point", "action", "restarts",
            "messages", "lost", "violations", "duplicates", "torn", "pending");
    for (int i = 0; i < nrows; i++) {
        const row *w = &rows[i];
        fprintf(stderr, "%-18s %-6s %8d %8lld %6lld %10lld %10lld %5lld %8lld\n", w->point,
                w->action, w->restarts, (long long)w->r.expected, (long long)w->r.lost,
                (long long)w->r.violations, (long long)w->r.duplicates, (long long)w->r.torn,
                (long long)w->pending);
    }
}

int main(void)
{
    uint64_t seed = ch_seed();
    rng = seed;
    const char *s = getenv("OUTBOX_TEST_SCALE");
#if defined(__SANITIZE_ADDRESS__)
    /* Sanitized processes start and run several times slower: half the
     * volume keeps the run within a few minutes. */
    scale = 0.5;
    slow = 3;
#endif
    if (s && *s) scale = atof(s);
    if (scale <= 0) scale = 1.0;
    fprintf(stderr, "seed %llu (replay with OUTBOX_TEST_SEED=%llu), scale %.2f\n",
            (unsigned long long)seed, (unsigned long long)seed, scale);
    atexit(print_table);
    RUN(kill_sweep);
    RUN(term_sweep);
    RUN(fault_crash_sweep);
    RUN(fault_error_sweep);
    return 0;
}
