/*
 * test_crash_http.c - guarantees 2, 4 and 6 over HTTP under crashes of the
 * real relay process.
 *
 * A producer thread (tests/support/chaos.h) commits 100,000 messages over 1,000
 * aggregates (OUTBOX_TEST_SCALE scales the count and the kills down) while
 * `outbox relay --to http://127.0.0.1:PORT/ --to-opt secret_env=...` drains
 * them into the library's webhook receiver, running in this process with
 * the inbox: its handler appends (id, aggregate, n) to a table in the same
 * transaction as the inbox entry.  The relay is SIGKILLed at random moments
 * (seeded; OUTBOX_TEST_SEED replays) at least 50 times and restarted, then
 * `relay --once` drains the rest.
 *
 * Checked on the consumer's table: lost 0 (every committed id applied),
 * applied twice 0 (the inbox turned every re-delivery into a 2xx without
 * running the handler), per-aggregate order violations 0 (n applied after
 * n-1).  Re-deliveries seen by the receiver are printed.
 */
#include "support/chaos.h"
#include "support/webhook.h"

#include <sys/stat.h>

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SECRET_ENV "OUTBOX_TEST_HTTP_SECRET"

static int apply_handler(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    static const char sql[] = "INSERT INTO applied(id, agg, n) VALUES (?, ?, ?)";
    sqlite3_stmt **st = user;
    json_error_t jerr;
    json_t *o = json_loads(outbox_msg_payload(msg), 0, &jerr);
    int rc;
    (void)err;
    if (*st == NULL && sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        json_decref(o);
        return OUTBOX_ESTORE;
    }
    sqlite3_reset(*st);
    sqlite3_bind_text(*st, 1, outbox_msg_id(msg), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(*st, 2, outbox_msg_aggregate_id(msg), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(*st, 3, o ? json_integer_value(json_object_get(o, "n")) : -1);
    rc = sqlite3_step(*st);
    json_decref(o);
    return rc == SQLITE_DONE ? OUTBOX_OK : OUTBOX_ESTORE;
}

typedef struct report {
    int64_t expected, applied, foreign, lost, twice, violations;
    char first_problem[300];
} report;

static void check_consumer(const char *cdb, const ch_producer *p, report *r)
{
    memset(r, 0, sizeof *r);
    int64_t **first = calloc((size_t)p->aggregates, sizeof *first);
    for (int a = 0; a < p->aggregates; a++) {
        r->expected += p->aggs[a].count;
        first[a] = malloc(((size_t)p->aggs[a].count + 1) * sizeof **first);
        for (int n = 0; n < p->aggs[a].count; n++)
            first[a][n] = -1;
    }
    sqlite3 *db = ch_db_open(cdb);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id, agg, n FROM applied ORDER BY seq", -1, &st, NULL) !=
        SQLITE_OK)
        TEST_FAIL_("prepare: %s", sqlite3_errmsg(db));
    int64_t row = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *agg = (const char *)sqlite3_column_text(st, 1);
        int64_t n = sqlite3_column_int64(st, 2);
        int a = agg && agg[0] == 'a' ? atoi(agg + 1) : -1;
        r->applied++;
        if (a < 0 || a >= p->aggregates || n < 0 || n >= p->aggs[a].count ||
            strcmp(p->aggs[a].ids[n], id) != 0) {
            r->foreign++;
            if (!r->first_problem[0])
                snprintf(r->first_problem, sizeof r->first_problem, "unexpected %s", id);
        } else if (first[a][n] >= 0) {
            r->twice++;
            if (!r->first_problem[0])
                snprintf(r->first_problem, sizeof r->first_problem, "applied twice: %s", id);
        } else {
            first[a][n] = row;
        }
        row++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    for (int a = 0; a < p->aggregates; a++) {
        for (int n = 0; n < p->aggs[a].count; n++) {
            if (first[a][n] < 0) {
                r->lost++;
                if (!r->first_problem[0])
                    snprintf(r->first_problem, sizeof r->first_problem, "lost %s (a%d n=%d)",
                             p->aggs[a].ids[n], a, n);
            } else if (n > 0 && first[a][n - 1] >= 0 && first[a][n] < first[a][n - 1]) {
                r->violations++;
                if (!r->first_problem[0])
                    snprintf(r->first_problem, sizeof r->first_problem,
                             "order: a%d n=%d applied before n-1", a, n);
            }
        }
        free(first[a]);
    }
    free(first);
}

TEST(kill_sweep_http)
{
    char db[CH_PATH], cdb[CH_PATH], errp[CH_PATH], store[700], to[200];
    uint64_t rng = ch_seed();
    int total = test_scaled(100000, 2000);
    int min_kills = test_scaled(50, 8);
    sqlite3_stmt *insert = NULL;
    outbox_error err;

    memset(&err, 0, sizeof err);
    fprintf(stderr, "seed %llu (OUTBOX_TEST_SEED replays), %d messages, >= %d kills\n",
            (unsigned long long)rng, total, min_kills);
    ch_path(db, "outbox.db");
    ch_path(cdb, "consumer.db");
    ch_path(errp, "relay.err");
    ch_init_store(db);

    /* The consumer: WAL and synchronous=NORMAL (durable against a process
     * crash, which is what is tested here), its table, the receiver. */
    sqlite3 *c = ch_db_open(cdb);
    ch_db_exec(c, "PRAGMA journal_mode=WAL");
    ch_db_exec(c, "CREATE TABLE applied(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, agg TEXT,"
                  " n INTEGER)");
    sqlite3_close(c);
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *rcv = NULL;
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = SECRET;
    ro.db_path = cdb;
    ro.consumer = "crash-test";
    ro.handler = apply_handler;
    ro.handler_user = &insert;
    ro.init_sql = "PRAGMA synchronous=NORMAL";
    int rc = outbox_webhook_receiver_new(&rcv, &ro, &err);
    if (rc == OUTBOX_ENOTBUILT) SKIP("%s", err.message);
    ASSERT_OK(rc, &err);

    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(to, sizeof to, "http://127.0.0.1:%u/events", outbox_webhook_receiver_port(rcv));
    const char *argv[] = {test_outbox_bin(),
                          "relay",
                          "--store",
                          store,
                          "--to",
                          to,
                          "--to-opt",
                          "secret_env=" SECRET_ENV,
                          "--to-opt",
                          "max_in_flight=16",
                          "--batch",
                          "256",
                          "--lease-ttl",
                          "2s",
                          NULL,
                          NULL};
    const char *env[] = {SECRET_ENV "=" SECRET, NULL};

    ch_producer p;
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = total;
    p.aggregates = 1000;
    p.max_txn = 50;
    p.pause_us = 200;
    p.seed = ch_rand(&rng);
    ch_producer_start(&p);

    int kills = 0, lives = 0;
    int64_t started = ch_now_ms();
    while (kills < min_kills || !ch_producer_done(&p)) {
        pid_t pid = ch_spawn(argv, env, NULL, errp);
        lives++;
        if (kills < min_kills) {
            ch_sleep_ms(ch_rand_range(&rng, 20, 400));
        } else {
            /* Enough kills: let this relay work until the producer is done
             * (bounds the run time on slow builds), then kill it too. */
            while (!ch_producer_done(&p) && ch_alive(pid))
                ch_sleep_ms(20);
            ch_sleep_ms(ch_rand_range(&rng, 0, 200));
        }
        if (ch_alive(pid) && ch_kill9(pid) == 137) {
            kills++;
            continue;
        }
        int code = ch_wait_or_die(pid, 1000, "relay");
        ch_dump("relay stderr", errp);
        TEST_FAIL_("relay exited %d on its own", code);
    }
    ch_producer_join(&p);
    int64_t kill_ms = ch_now_ms() - started;

    /* Drain what is left. */
    argv[14] = "--once";
    int64_t pending = -1;
    for (int round = 0; round < 50; round++) {
        int code = ch_run(argv, env, NULL, errp, 170000);
        if (code != 0) {
            ch_dump("final relay stderr", errp);
            TEST_FAIL_("relay --once exited %d", code);
        }
        pending = ch_outbox_count(db, "pending");
        if (pending == 0) break;
        ch_sleep_ms(200);
    }
    int64_t total_ms = ch_now_ms() - started;

    outbox_webhook_receiver_stats stats;
    outbox_webhook_receiver_get_stats(rcv, &stats);
    /* Nothing is sending any more: the handler's statement can go before
     * the receiver closes its connection. */
    if (insert) sqlite3_finalize(insert);
    outbox_webhook_receiver_free(rcv);

    report r;
    check_consumer(cdb, &p, &r);
    fprintf(stderr,
            "http kill sweep: %d messages in %d transactions, %d relay lives, %d kills, kill "
            "phase %.1f s, total %.1f s\n"
            "receiver: applied %llu, re-deliveries acknowledged as duplicates %llu, rejected "
            "%llu, failed %llu\n"
            "consumer: expected %lld, applied %lld, foreign %lld, lost %lld, applied twice %lld, "
            "order violations %lld%s%s\n",
            p.committed, p.transactions, lives, kills, kill_ms / 1000.0, total_ms / 1000.0,
            (unsigned long long)stats.applied, (unsigned long long)stats.duplicates,
            (unsigned long long)stats.rejected, (unsigned long long)stats.failed,
            (long long)r.expected, (long long)r.applied, (long long)r.foreign, (long long)r.lost,
            (long long)r.twice, (long long)r.violations, r.first_problem[0] ? "; first: " : "",
            r.first_problem);
    ASSERT_EQ(pending, 0);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);
    ASSERT_EQ(r.expected, total);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.twice, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT_EQ(stats.rejected, 0);
    ASSERT_GE(kills, min_kills);
    ch_producer_free(&p);
}

int main(void)
{
    struct stat sb;
    if (stat(test_outbox_bin(), &sb) != 0) SKIP("outbox binary not found (set OUTBOX_BIN)");
    RUN(kill_sweep_http);
    return 0;
}
