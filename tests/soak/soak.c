/*
 * soak.c - a long mixed run (`make soak`, not in CI): every kind of
 * trouble the crash tests make one at a time, at once, for SOAK_MINUTES
 * (default 30), with the long-lived relays' memory, descriptors and
 * threads sampled for growth.
 *
 * Three outboxes, three relay processes (the `outbox` binary of the build,
 * an AddressSanitizer build under `make soak`):
 *
 *   pg    PostgreSQL -> nats:// (JetStream).  Long-lived: it rides out
 *         nats-server kill -9 + restart (every SOAK_NATS_EVERY s, default
 *         240) and PostgreSQL `pg_ctl stop -m immediate` + restart (every
 *         SOAK_PG_EVERY s, default 360).
 *   hook  SQLite -> http:// (a scripted receiver in this process).
 *         Long-lived.  The receiver refuses (400) the first delivery of
 *         about one message in 200, which makes it Failed and holds its
 *         aggregate; `outbox retry --all` runs every 20 s and the message
 *         and those behind it go through.
 *   kill  SQLite -> file:, SIGKILLed every 5-60 s and started again.
 *
 * Producers (tests/support/chaos.h) keep committing into the three
 * outboxes (the PostgreSQL one pauses while its server restarts).  Every
 * 10 s the resident set (VmRSS), open descriptors and threads of the two
 * long-lived relays go to soak.csv (copied to the working directory at the
 * end of the load).
 *
 * At the end the producers stop, the relays drain everything (Failed ones
 * retried), stop with SIGTERM (exit 0: LeakSanitizer finds nothing) and
 * what each destination holds is checked against what was committed:
 * lost 0, per-aggregate order violations 0, and duplicates 0 in the
 * JetStream stream (its de-duplication window) .  Growth is judged between
 * the mean of the samples in the run's second tenth (after warm-up) and the
 * mean of its last tenth: resident set <= SOAK_RSS_GROWTH_MB (default 32),
 * descriptors <= 4, threads <= 2.
 */
#if !defined(OUTBOX_HAVE_LIBPQ) || !defined(OUTBOX_HAVE_NATS)
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "soak: this build lacks the PostgreSQL store or the NATS destination\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/nats.h"
#include "support/pg.h"
#include "support/webhook.h"

#include <dirent.h>
#include <signal.h>

static pgh_server pg;
static nh_server nats;
static uint64_t rng;

static int64_t env_int(const char *name, int64_t def)
{
    const char *v = getenv(name);
    return v && *v ? strtoll(v, NULL, 10) : def;
}

/* ------------------------------------------------------------------------
 * The webhook receiver: 400 for the first delivery of one message in 200
 * (by id), 204 for everything else; accepted deliveries are kept as lines
 * for ch_check_file.
 * ---------------------------------------------------------------------- */

typedef struct hook_state {
    pthread_mutex_t mu;
    FILE *accepted; /* {"id","subject","data"} per 2xx delivery */
    char (*refused)[37];
    size_t nrefused, cap;
    int64_t refusals;
} hook_state;

static int refused_before(hook_state *h, const char *id)
{
    for (size_t i = 0; i < h->nrefused; i++)
        if (strcmp(h->refused[i], id) == 0) return 1;
    return 0;
}

static void hook_script(void *user, const sv_request *rq, int n, sv_action *act)
{
    hook_state *h = user;
    char id[64], agg[64];
    (void)n;
    sv_header(rq->head, "webhook-id", id, sizeof id);
    sv_header(rq->head, "ce-subject", agg, sizeof agg);
    pthread_mutex_lock(&h->mu);
    /* The last hex digits of a UUIDv7 are random: "00" and "01" pick about
     * one message in 128, "00" alone one in 256. */
    size_t len = strlen(id);
    int pick = len == 36 && strcmp(id + 34, "00") == 0;
    if (pick && !refused_before(h, id)) {
        if (h->nrefused == h->cap) {
            h->cap = h->cap ? h->cap * 2 : 64;
            h->refused = realloc(h->refused, h->cap * sizeof *h->refused);
            if (!h->refused) abort();
        }
        memcpy(h->refused[h->nrefused], id, 36); /* pick: len == 36 */
        h->refused[h->nrefused++][36] = '\0';
        h->refusals++;
        act->status = 400;
        snprintf(act->body, sizeof act->body, "{\"error\":\"refused once by the soak\"}");
    } else {
        act->status = 204;
        fprintf(h->accepted, "{\"id\":\"%s\",\"subject\":\"%s\",\"data\":%.*s}\n", id, agg,
                (int)rq->body_len, rq->body);
        fflush(h->accepted);
    }
    pthread_mutex_unlock(&h->mu);
}

/* ------------------------------------------------------------------------
 * Sampling /proc
 * ---------------------------------------------------------------------- */

typedef struct sample {
    int64_t rss_kb, fds, threads;
} sample;

static int sample_pid(pid_t pid, sample *s)
{
    char path[64], line[256];
    memset(s, 0, sizeof *s);
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) s->rss_kb = strtoll(line + 6, NULL, 10);
        if (strncmp(line, "Threads:", 8) == 0) s->threads = strtoll(line + 8, NULL, 10);
    }
    fclose(f);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') s->fds++;
    closedir(d);
    return 0;
}

typedef struct series {
    sample *v;
    size_t n, cap;
} series;

static void series_add(series *s, const sample *x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) abort();
    }
    s->v[s->n++] = *x;
}

/* Mean of the samples in [from, to) of the series' length (fractions). */
static sample series_mean(const series *s, double from, double to)
{
    size_t a = (size_t)(from * (double)s->n), b = (size_t)(to * (double)s->n);
    sample m = {0, 0, 0};
    if (b <= a) b = a + 1;
    if (b > s->n) b = s->n;
    for (size_t i = a; i < b; i++) {
        m.rss_kb += s->v[i].rss_kb;
        m.fds += s->v[i].fds;
        m.threads += s->v[i].threads;
    }
    if (b > a) {
        m.rss_kb /= (int64_t)(b - a);
        m.fds /= (int64_t)(b - a);
        m.threads /= (int64_t)(b - a);
    }
    return m;
}

static int judge_growth(const char *who, const series *s)
{
    int64_t max_rss_kb = env_int("SOAK_RSS_GROWTH_MB", 32) * 1024;
    sample early = series_mean(s, 0.1, 0.2), late = series_mean(s, 0.9, 1.0);
    int64_t peak = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].rss_kb > peak) peak = s->v[i].rss_kb;
    int ok = late.rss_kb - early.rss_kb <= max_rss_kb && late.fds - early.fds <= 4 &&
             late.threads - early.threads <= 2;
    fprintf(stderr, "soak: %s relay, RSS KiB by tenth of the run:", who);
    for (int t = 0; t < 10; t++)
        fprintf(stderr, " %lld", (long long)series_mean(s, t / 10.0, (t + 1) / 10.0).rss_kb);
    fprintf(stderr, "\n");
    fprintf(stderr,
            "soak: %s relay, %zu samples: RSS %lld -> %lld KiB (peak %lld, bound +%lld), fds "
            "%lld -> %lld (bound +4), threads %lld -> %lld (bound +2): %s\n",
            who, s->n, (long long)early.rss_kb, (long long)late.rss_kb, (long long)peak,
            (long long)max_rss_kb, (long long)early.fds, (long long)late.fds,
            (long long)early.threads, (long long)late.threads, ok ? "ok" : "GROWTH");
    return ok;
}

/* ------------------------------------------------------------------------
 * Pieces of the run
 * ---------------------------------------------------------------------- */

static void cli_or_fail(const char *const *argv, const char *what)
{
    char errp[CH_PATH];
    ch_path(errp, "cli.err");
    int code = ch_run(argv, NULL, NULL, errp, 120000);
    if (code != 0) {
        ch_dump(what, errp);
        TEST_FAIL_("%s exited %d", what, code);
    }
}

static int64_t pg_pending(void)
{
    return pgh_outbox_count(&pg, "pending");
}

static void producer_setup(ch_producer *p, const char *db, const char *conninfo, int aggregates,
                           int pause_us)
{
    memset(p, 0, sizeof *p);
    p->db_path = db;
    p->pg_conninfo = conninfo;
    p->total = 0;
    p->aggregates = aggregates;
    p->max_txn = 20;
    p->pause_us = pause_us;
    p->seed = ch_rand(&rng);
}

/* Keeps a producer going in chunks (a joined producer restarts where it
 * stopped); *running says whether its thread is to be joined. */
static void producer_keep_going(ch_producer *p, int *running, int chunk)
{
    if (*running && !ch_producer_done(p)) return;
    if (*running) ch_producer_join(p);
    p->total += chunk;
    ch_producer_start(p);
    *running = 1;
}

static void producer_finish(ch_producer *p, int *running)
{
    if (*running) ch_producer_join(p);
    *running = 0;
}

static pid_t relay_start(const char *store, const char *to, const char *errp)
{
    const char *argv[] = {test_outbox_bin(),
                          "relay",
                          "--store",
                          store,
                          "--to",
                          to,
                          "--batch",
                          "256",
                          "--lease-ttl",
                          "3s",
                          "--backoff-base",
                          "50ms",
                          "--backoff-max",
                          "2s",
                          "--max-attempts",
                          "1000000",
                          NULL};
    return ch_spawn(argv, NULL, NULL, errp);
}

static void must_live(pid_t pid, const char *who, const char *errp)
{
    if (ch_alive(pid)) return;
    int code = ch_wait_or_die(pid, 1000, who);
    ch_dump(who, errp);
    TEST_FAIL_("the %s relay exited %d on its own", who, code);
}

TEST(soak)
{
    int64_t minutes = env_int("SOAK_MINUTES", 30);
    int64_t nats_every = env_int("SOAK_NATS_EVERY", 240) * 1000;
    int64_t pg_every = env_int("SOAK_PG_EVERY", 360) * 1000;
    char db_hook[CH_PATH], db_kill[CH_PATH], out_kill[CH_PATH], out_hook[CH_PATH],
        out_nats[CH_PATH], csv[CH_PATH];
    char err_pg[CH_PATH], err_hook[CH_PATH], err_kill[CH_PATH];
    char store_hook[700], store_kill[700], to_nats[256], to_hook[128], to_kill[700];
    hook_state hook;
    sv_server sv;
    ch_producer p_pg, p_hook, p_kill;
    int run_pg = 0, run_hook = 0, run_kill = 0;
    series s_pg = {0}, s_hook = {0};
    int kills = 0, nats_restarts = 0, pg_restarts = 0, retries_run = 0;

    rng = ch_seed();
    fprintf(stderr, "soak: %lld minutes, seed %llu (OUTBOX_TEST_SEED replays)\n",
            (long long)minutes, (unsigned long long)rng);
    ch_path(db_hook, "hook.db");
    ch_path(db_kill, "kill.db");
    ch_path(out_kill, "kill.jsonl");
    ch_path(out_hook, "hook.jsonl");
    ch_path(out_nats, "nats.jsonl");
    ch_path(csv, "soak.csv");
    ch_path(err_pg, "relay-pg.err");
    ch_path(err_hook, "relay-hook.err");
    ch_path(err_kill, "relay-kill.err");

    pgh_start(&pg);
    memset(&nats, 0, sizeof nats);
    nh_server_start(&nats);
    nh_stream_create(&nats, "SOAK", "soak.>");
    {
        const char *argv[] = {test_outbox_bin(), "init", "--store", pg.url, NULL};
        cli_or_fail(argv, "outbox init (PostgreSQL)");
    }
    ch_init_store(db_hook);
    ch_init_store(db_kill);

    memset(&hook, 0, sizeof hook);
    pthread_mutex_init(&hook.mu, NULL);
    hook.accepted = fopen(out_hook, "w");
    if (!hook.accepted) TEST_FAIL_("cannot write %s", out_hook);
    sv_start(&sv, 0, hook_script, &hook);

    snprintf(store_hook, sizeof store_hook, "sqlite:%s", db_hook);
    snprintf(store_kill, sizeof store_kill, "sqlite:%s", db_kill);
    snprintf(to_nats, sizeof to_nats, "%s?stream=SOAK&subject=soak.{type}", nats.url);
    snprintf(to_hook, sizeof to_hook, "http://127.0.0.1:%u/hook", sv.port);
    snprintf(to_kill, sizeof to_kill, "file:%s", out_kill);

    /* About 100 + 150 + 150 messages a second in all: a steady load, not a
     * benchmark, that keeps every relay busy for the whole run. */
    producer_setup(&p_pg, NULL, pg.conninfo, 300, 100000);
    producer_setup(&p_hook, db_hook, NULL, 300, 60000);
    producer_setup(&p_kill, db_kill, NULL, 300, 60000);

    pid_t r_pg = relay_start(pg.url, to_nats, err_pg);
    pid_t r_hook = relay_start(store_hook, to_hook, err_hook);
    pid_t r_kill = relay_start(store_kill, to_kill, err_kill);

    FILE *fcsv = fopen(csv, "w");
    if (!fcsv) TEST_FAIL_("cannot write %s", csv);
    fprintf(fcsv, "seconds,relay,rss_kb,fds,threads\n");

    int64_t start = ch_now_ms(), end = start + minutes * 60000;
    int64_t next_sample = start, next_retry = start + 20000, next_nats = start + nats_every,
            next_pg = start + pg_every, next_kill = start + ch_rand_range(&rng, 5000, 60000),
            next_report = start + 60000;
    while (ch_now_ms() < end) {
        int64_t now = ch_now_ms();
        producer_keep_going(&p_pg, &run_pg, 2000);
        producer_keep_going(&p_hook, &run_hook, 2000);
        producer_keep_going(&p_kill, &run_kill, 2000);
        must_live(r_pg, "pg", err_pg);
        must_live(r_hook, "hook", err_hook);
        if (now >= next_sample) {
            sample a, b;
            double t = (double)(now - start) / 1000.0;
            if (sample_pid(r_pg, &a) == 0) {
                series_add(&s_pg, &a);
                fprintf(fcsv, "%.0f,pg,%lld,%lld,%lld\n", t, (long long)a.rss_kb, (long long)a.fds,
                        (long long)a.threads);
            }
            if (sample_pid(r_hook, &b) == 0) {
                series_add(&s_hook, &b);
                fprintf(fcsv, "%.0f,hook,%lld,%lld,%lld\n", t, (long long)b.rss_kb,
                        (long long)b.fds, (long long)b.threads);
            }
            fflush(fcsv);
            next_sample += 10000;
        }
        if (now >= next_retry) {
            const char *argv[] = {test_outbox_bin(), "retry", "--store", store_hook, "--all", NULL};
            cli_or_fail(argv, "outbox retry --all");
            retries_run++;
            next_retry = now + 20000;
        }
        if (now >= next_kill) {
            if (ch_alive(r_kill) && ch_kill9(r_kill) == 137) kills++;
            r_kill = relay_start(store_kill, to_kill, err_kill);
            next_kill = now + ch_rand_range(&rng, 5000, 60000);
        }
        if (now >= next_nats) {
            nh_server_kill(&nats);
            ch_sleep_ms(ch_rand_range(&rng, 500, 5000));
            nh_server_start(&nats);
            nats_restarts++;
            next_nats = now + nats_every;
        }
        if (now >= next_pg) {
            producer_finish(&p_pg, &run_pg); /* it has no reconnect of its own */
            pgh_stop_immediate(&pg);
            ch_sleep_ms(ch_rand_range(&rng, 500, 5000));
            pgh_start_server(&pg);
            pg_restarts++;
            next_pg = now + pg_every;
        }
        if (now >= next_report) {
            fprintf(stderr,
                    "soak: %3.0f min: committed pg %d hook %d kill %d; kills %d, nats restarts "
                    "%d, pg restarts %d, refusals %lld\n",
                    (double)(now - start) / 60000.0, p_pg.committed, p_hook.committed,
                    p_kill.committed, kills, nats_restarts, pg_restarts, (long long)hook.refusals);
            next_report += 60000;
        }
        ch_sleep_ms(200);
    }
    fclose(fcsv);
    /* The samples outlive the test directory: soak.csv where it runs. */
    {
        const char *argv[] = {"cp", csv, "soak.csv", NULL};
        ch_run(argv, NULL, NULL, NULL, 10000);
    }

    /* Drain: producers stop, Failed messages are retried until none is
     * left, every outbox empties. */
    producer_finish(&p_pg, &run_pg);
    producer_finish(&p_hook, &run_hook);
    producer_finish(&p_kill, &run_kill);
    int64_t drain_start = ch_now_ms();
    for (;;) {
        int64_t a = pg_pending(), b = ch_outbox_count(db_hook, "pending"),
                c = ch_outbox_count(db_kill, "pending"), f = ch_outbox_count(db_hook, "failed");
        if (a == 0 && b == 0 && c == 0 && f == 0) break;
        if (f > 0) {
            const char *argv[] = {test_outbox_bin(), "retry", "--store", store_hook, "--all", NULL};
            cli_or_fail(argv, "outbox retry --all");
            retries_run++;
        }
        if (!ch_alive(r_kill)) r_kill = relay_start(store_kill, to_kill, err_kill);
        must_live(r_pg, "pg", err_pg);
        must_live(r_hook, "hook", err_hook);
        if (ch_now_ms() - drain_start > 300000)
            TEST_FAIL_("not drained 5 minutes after the load stopped: pending %lld/%lld/%lld, "
                       "failed %lld",
                       (long long)a, (long long)b, (long long)c, (long long)f);
        ch_sleep_ms(500);
    }
    pid_t pids[3] = {r_pg, r_hook, r_kill};
    char errs[3][CH_PATH];
    memcpy(errs[0], err_pg, CH_PATH);
    memcpy(errs[1], err_hook, CH_PATH);
    memcpy(errs[2], err_kill, CH_PATH);
    ch_relays_stop(pids, 3, errs);
    sv_stop(&sv);
    fclose(hook.accepted);

    ch_report r_nats, r_webhook, r_kill_report;
    int64_t in_stream = nh_stream_dump(&nats, "SOAK", "soak.>", out_nats);
    ch_check_file(out_nats, &p_pg, &r_nats);
    ch_check_file(out_hook, &p_hook, &r_webhook);
    ch_check_file(out_kill, &p_kill, &r_kill_report);
    fprintf(stderr,
            "soak: %lld minutes: %d relay kills, %d nats-server kill -9 + restarts, %d "
            "PostgreSQL immediate stops + restarts, %lld first deliveries refused (Failed), %d "
            "retry --all runs; JetStream stream holds %lld\n",
            (long long)minutes, kills, nats_restarts, pg_restarts, (long long)hook.refusals,
            retries_run, (long long)in_stream);
    ch_report_print("soak: pg -> nats", &r_nats);
    ch_report_print("soak: sqlite -> webhook (2xx deliveries)", &r_webhook);
    ch_report_print("soak: sqlite -> file (relay killed)", &r_kill_report);
    int grow_ok = judge_growth("pg -> nats", &s_pg);
    grow_ok &= judge_growth("sqlite -> webhook", &s_hook);

    ASSERT_EQ(r_nats.lost, 0);
    ASSERT_EQ(r_nats.duplicates, 0);
    ASSERT_EQ(r_nats.violations, 0);
    ASSERT_EQ(r_webhook.lost, 0);
    ASSERT_EQ(r_webhook.violations, 0);
    ASSERT_EQ(r_webhook.foreign, 0);
    ASSERT_EQ(r_kill_report.lost, 0);
    ASSERT_EQ(r_kill_report.violations, 0);
    ASSERT_EQ(r_kill_report.torn, 0);
    ASSERT(grow_ok);
    ch_producer_free(&p_pg);
    ch_producer_free(&p_hook);
    ch_producer_free(&p_kill);
    free(s_pg.v);
    free(s_hook.v);
    free(hook.refused);
}

int main(void)
{
    nh_require_server();
    if (pgh_available() != NULL) {
        fprintf(stderr, "soak: %s\n", pgh_available());
        return 77;
    }
    RUN(soak);
    nh_server_stop(&nats);
    nats_Close();
    return 0;
}
#endif
