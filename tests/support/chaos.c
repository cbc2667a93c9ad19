/*
 * chaos.c - what the tests that break things on purpose share (see
 * chaos.h): the producer, the checker, store queries on the SQLite file.
 */
#include "support/chaos.h"

#include "support/proc.h"
#include "support/tmp.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <time.h>
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"

#include <libpq-fe.h>
#endif

uint64_t ch_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

int64_t ch_rand_range(uint64_t *state, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(ch_rand(state) % (uint64_t)(hi - lo + 1));
}

uint64_t ch_seed(void)
{
    const char *s = getenv("OUTBOX_TEST_SEED");
    if (s && *s) return strtoull(s, NULL, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^
           ((uint64_t)getpid() << 32);
}

void ch_relays_stop(const pid_t *pids, int n, char (*errs)[CH_PATH])
{
    ch_sleep_ms(1000);
    for (int i = 0; i < n; i++) {
        kill(pids[i], SIGTERM);
        int code = ch_wait_or_die(pids[i], 20000, "relay");
        if (code != 0) {
            ch_dump("relay stderr", errs[i]);
            TEST_FAIL_("relay %d exited %d after SIGTERM", i, code);
        }
    }
}

int ch_relay_kill_life(const char *const *argv, const char *err_path, uint64_t *rng)
{
    pid_t pid = ch_spawn(argv, NULL, NULL, err_path);
    ch_sleep_ms(ch_rand_range(rng, 50, 800));
    if (!ch_alive(pid)) {
        int code = ch_wait_or_die(pid, 1000, "relay");
        ch_dump("relay stderr", err_path);
        TEST_FAIL_("relay exited %d on its own", code);
    }
    return ch_kill9(pid) == 137;
}

void ch_init_store(const char *db_path)
{
    char store[700];
    snprintf(store, sizeof store, "sqlite:%s", db_path);
    const char *argv[] = {test_outbox_bin(), "init", "--store", store, NULL};
    const char *errp = test_path("init.err");
    int code = ch_run(argv, NULL, NULL, errp, 30000);
    if (code != 0) {
        ch_dump("outbox init stderr", errp);
        TEST_FAIL_("outbox init --store %s exited %d", store, code);
    }
}

/* ------------------------------------------------------------------------
 * Store queries (straight on the SQLite file)
 * ---------------------------------------------------------------------- */

sqlite3 *ch_db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        TEST_FAIL_("sqlite3_open(%s): %s", path, db ? sqlite3_errmsg(db) : "no memory");
    sqlite3_busy_timeout(db, 30000);
    return db;
}

int64_t ch_db_count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        TEST_FAIL_("prepare %s: %s", sql, sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) TEST_FAIL_("step %s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

void ch_db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        char copy[512];
        snprintf(copy, sizeof copy, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        TEST_FAIL_("%s: %s", sql, copy);
    }
}

int64_t ch_outbox_count(const char *db_path, const char *status)
{
    sqlite3 *db = ch_db_open(db_path);
    char sql[256];
    if (status)
        snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox WHERE status = '%s'", status);
    else
        snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox");
    int64_t n = ch_db_count(db, sql);
    sqlite3_close(db);
    return n;
}

int64_t ch_check_sent(sqlite3 *db, int (*has)(void *user, const char *id), void *user,
                      const char *where)
{
    sqlite3_stmt *st = NULL;
    int64_t sent = 0;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT id FROM outbox WHERE status = 'sent'", -1, &st, NULL),
              SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        if (has && !has(user, id)) TEST_FAIL_("message %s marked sent but not %s", id, where);
        sent++;
    }
    sqlite3_finalize(st);
    return sent;
}

void ch_expect_failed_error(const char *db_path, const char *expect)
{
    sqlite3 *h = ch_db_open(db_path);
    sqlite3_stmt *q = NULL;
    ASSERT_EQ(
        sqlite3_prepare_v2(h, "SELECT last_error FROM outbox WHERE status='failed'", -1, &q, NULL),
        SQLITE_OK);
    ASSERT_EQ(sqlite3_step(q), SQLITE_ROW);
    ASSERT_CONTAINS((const char *)sqlite3_column_text(q, 0), expect);
    fprintf(stderr, "   failed with: %s\n", (const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    sqlite3_close(h);
}

/* ------------------------------------------------------------------------
 * Producer
 * ---------------------------------------------------------------------- */
static void ch_agg_push(ch_agg *a, const char *id)
{
    if (a->count == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        char(*ids)[37] = realloc(a->ids, (size_t)cap * sizeof *ids);
        if (!ids) TEST_FAIL_("out of memory");
        a->ids = ids;
        a->cap = cap;
    }
    memcpy(a->ids[a->count++], id, 37);
}

/* Makes message i of the producer's current transaction into batch[i]: a
 * random aggregate (batch_agg[i]) and a payload carrying that aggregate's
 * next counter, counting the messages of this transaction already given to
 * it, so the checker can find order violations.  Returns outbox_msg_new's
 * code. */
static int ch_producer_msg(ch_producer *p, uint64_t *rng, outbox_msg **batch, int *batch_agg, int i,
                           outbox_error *err)
{
    int agg = (int)ch_rand_range(rng, 0, p->aggregates - 1);
    int n = p->aggs[agg].count;
    char agg_id[32], payload[128];
    for (int j = 0; j < i; j++)
        if (batch_agg[j] == agg) n++;
    snprintf(agg_id, sizeof agg_id, "a%d", agg);
    snprintf(payload, sizeof payload, "{\"agg\":\"%s\",\"n\":%d,\"txn\":%d}", agg_id, n,
             p->transactions);
    batch[i] = NULL;
    batch_agg[i] = agg;
    return outbox_msg_new(&batch[i], "Tick", "Agg", agg_id, payload, err);
}

static void *ch_producer_main(void *arg)
{
    ch_producer *p = arg;
    uint64_t rng = p->seed;
    sqlite3 *db = NULL;
    outbox_error err;
    memset(&err, 0, sizeof err);
    outbox_msg **batch = calloc((size_t)p->max_txn, sizeof *batch);
    int *batch_agg = calloc((size_t)p->max_txn, sizeof *batch_agg);
    if (!batch || !batch_agg) {
        snprintf(p->error, sizeof p->error, "out of memory");
        goto out;
    }
    if (sqlite3_open(p->db_path, &db) != SQLITE_OK) {
        snprintf(p->error, sizeof p->error, "open %s failed", p->db_path);
        goto out;
    }
    sqlite3_busy_timeout(db, 60000);
    /* Like the store's own connections: WAL, no fsync per commit.  Only
     * processes are killed here, never the machine. */
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", NULL, NULL, NULL);

    while (p->committed < p->total) {
        int k = (int)ch_rand_range(&rng, 1, p->max_txn);
        if (k > p->total - p->committed) k = p->total - p->committed;
        int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            /* busy despite the timeout: try again */
            p->rollbacks++;
            continue;
        }
        /* n is the aggregate's count plus the messages of this transaction
         * already given to it. */
        int i, ok = 1;
        for (i = 0; i < k; i++) {
            if (ch_producer_msg(p, &rng, batch, batch_agg, i, &err) != OUTBOX_OK ||
                outbox_enqueue_sqlite(db, batch[i], &err) != OUTBOX_OK) {
                snprintf(p->error, sizeof p->error, "enqueue: %d %s", err.code, err.message);
                ok = 0;
                i++;
                break;
            }
        }
        if (ok && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) {
            for (int j = 0; j < i; j++)
                ch_agg_push(&p->aggs[batch_agg[j]], outbox_msg_id(batch[j]));
            p->committed += i;
            p->transactions++;
        } else {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            p->rollbacks++;
        }
        for (int j = 0; j < i; j++)
            outbox_msg_free(batch[j]);
        if (!ok) goto out;
        if (p->pause_us) usleep((useconds_t)p->pause_us);
    }
out:
    sqlite3_close(db);
    free(batch);
    free(batch_agg);
    atomic_store(&p->done, 1);
    return NULL;
}

#ifdef OUTBOX_HAVE_LIBPQ
/* The producer on PostgreSQL (p->pg_conninfo): the same transactions and
 * payloads through outbox_enqueue_pg; a failed COMMIT ends it with an
 * error (the server is not expected to go away while it runs). */
static void *ch_pg_producer_main(void *arg)
{
    ch_producer *p = arg;
    uint64_t rng = p->seed;
    outbox_error err;
    memset(&err, 0, sizeof err);
    outbox_msg **batch = calloc((size_t)p->max_txn, sizeof *batch);
    int *batch_agg = calloc((size_t)p->max_txn, sizeof *batch_agg);
    PGconn *c = PQconnectdb(p->pg_conninfo);
    if (!batch || !batch_agg) {
        snprintf(p->error, sizeof p->error, "out of memory");
        goto out;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(p->error, sizeof p->error, "connect: %s", PQerrorMessage(c));
        goto out;
    }
    if (p->pg_async_commit) PQclear(PQexec(c, "SET synchronous_commit = off"));
    while (p->committed < p->total) {
        int k = (int)ch_rand_range(&rng, 1, p->max_txn), i, ok = 1;
        if (k > p->total - p->committed) k = p->total - p->committed;
        PQclear(PQexec(c, "BEGIN"));
        for (i = 0; i < k; i++) {
            if (ch_producer_msg(p, &rng, batch, batch_agg, i, &err) != OUTBOX_OK ||
                (p->pg_emit ? pgh_emit(c, "outbox", batch[i], err.message, sizeof err.message) != 0
                            : outbox_enqueue_pg(c, batch[i], &err) != OUTBOX_OK)) {
                snprintf(p->error, sizeof p->error, "enqueue: %d %s", err.code, err.message);
                ok = 0;
                i++;
                break;
            }
        }
        PGresult *res = ok ? PQexec(c, "COMMIT") : NULL;
        if (ok && PQresultStatus(res) == PGRES_COMMAND_OK) {
            for (int j = 0; j < i; j++)
                ch_agg_push(&p->aggs[batch_agg[j]], outbox_msg_id(batch[j]));
            p->committed += i;
            p->transactions++;
        } else {
            if (ok) snprintf(p->error, sizeof p->error, "commit: %s", PQerrorMessage(c));
            PQclear(PQexec(c, "ROLLBACK"));
            ok = 0;
        }
        PQclear(res);
        for (int j = 0; j < i; j++)
            outbox_msg_free(batch[j]);
        if (!ok) goto out;
        if (p->pause_us) usleep((useconds_t)p->pause_us);
    }
out:
    PQfinish(c);
    free(batch);
    free(batch_agg);
    atomic_store(&p->done, 1);
    return NULL;
}
#endif

void ch_producer_start(ch_producer *p)
{
    void *(*main_fn)(void *) = ch_producer_main;
    if (p->pg_conninfo) {
#ifdef OUTBOX_HAVE_LIBPQ
        main_fn = ch_pg_producer_main;
#else
        TEST_FAIL_("a PostgreSQL producer in a build without libpq");
#endif
    }
    if (!p->aggs) {
        p->aggs = calloc((size_t)p->aggregates, sizeof *p->aggs);
        if (!p->aggs) TEST_FAIL_("out of memory");
        p->committed = p->transactions = p->rollbacks = 0;
    }
    p->error[0] = '\0';
    atomic_store(&p->done, 0);
    if (pthread_create(&p->thread, NULL, main_fn, p) != 0) TEST_FAIL_("pthread_create failed");
}

int ch_producer_done(ch_producer *p)
{
    return atomic_load(&p->done);
}

void ch_producer_join(ch_producer *p)
{
    pthread_join(p->thread, NULL);
    if (p->error[0]) TEST_FAIL_("producer: %s", p->error);
}

void ch_produce(ch_producer *p, int more)
{
    p->total = p->committed + more;
    ch_producer_start(p);
    ch_producer_join(p);
}

void ch_producer_free(ch_producer *p)
{
    for (int i = 0; p->aggs && i < p->aggregates; i++)
        free(p->aggs[i].ids);
    free(p->aggs);
    p->aggs = NULL;
}

/* ------------------------------------------------------------------------
 * Checker
 * ---------------------------------------------------------------------- */

static void ch_note(ch_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ch_note(ch_report *r, const char *fmt, ...)
{
    if (r->first_problem[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->first_problem, sizeof r->first_problem, fmt, ap);
    va_end(ap);
}

void ch_check_file(const char *path, const ch_producer *p, ch_report *r)
{
    memset(r, 0, sizeof *r);
    int64_t **first = calloc((size_t)p->aggregates, sizeof *first);
    if (!first) TEST_FAIL_("out of memory");
    for (int a = 0; a < p->aggregates; a++) {
        r->expected += p->aggs[a].count;
        first[a] = malloc(((size_t)p->aggs[a].count + 1) * sizeof **first);
        if (!first[a]) TEST_FAIL_("out of memory");
        for (int n = 0; n < p->aggs[a].count; n++)
            first[a][n] = -1;
    }

    size_t len = 0;
    char *text = test_read_file(path, &len);
    if (!text) text = calloc(1, 1);
    char *line = text, *end = text + len;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(end - line);
        int64_t lineno = r->lines++;
        json_error_t jerr;
        json_t *obj = n ? json_loadb(line, n, 0, &jerr) : NULL;
        const char *id = NULL, *subject = NULL, *agg_in_data = NULL;
        json_int_t num = -1;
        if (!obj || !json_is_object(obj)) {
            r->torn++;
        } else {
            r->published++;
            json_t *data = json_object_get(obj, "data");
            id = json_string_value(json_object_get(obj, "id"));
            subject = json_string_value(json_object_get(obj, "subject"));
            agg_in_data = json_string_value(json_object_get(data, "agg"));
            json_t *jn = json_object_get(data, "n");
            if (json_is_integer(jn)) num = json_integer_value(jn);
            int agg = -1;
            if (subject && subject[0] == 'a') agg = atoi(subject + 1);
            if (!id || !subject || !agg_in_data || strcmp(subject, agg_in_data) != 0 || agg < 0 ||
                agg >= p->aggregates || num < 0 || num >= p->aggs[agg].count ||
                strcmp(p->aggs[agg].ids[num], id) != 0) {
                r->foreign++;
                ch_note(r, "unexpected publication %s at line %lld", id ? id : "(no id)",
                        (long long)lineno + 1);
            } else if (first[agg][num] < 0) {
                first[agg][num] = lineno;
            } else {
                r->duplicates++;
            }
        }
        json_decref(obj);
        line += n + 1;
    }
    free(text);

    for (int a = 0; a < p->aggregates; a++) {
        for (int n = 0; n < p->aggs[a].count; n++) {
            if (first[a][n] < 0) {
                r->lost++;
                ch_note(r, "lost %s (a%d n=%d)", p->aggs[a].ids[n], a, n);
            } else if (n > 0 && first[a][n - 1] >= 0 && first[a][n] < first[a][n - 1]) {
                r->violations++;
                ch_note(r, "order: %s (a%d n=%d) first published before n-1", p->aggs[a].ids[n], a,
                        n);
            }
        }
        free(first[a]);
    }
    free(first);
}

void ch_concat(const char *out, const char *const *files)
{
    FILE *o = fopen(out, "wb");
    if (!o) TEST_FAIL_("cannot write %s", out);
    for (size_t i = 0; files[i]; i++) {
        size_t len = 0;
        char *text = test_read_file(files[i], &len);
        if (!text) continue;
        if (len && fwrite(text, 1, len, o) != len) TEST_FAIL_("write %s failed", out);
        if (len && text[len - 1] != '\n') fputc('\n', o);
        free(text);
    }
    fclose(o);
}

void ch_wait_drained(const char *db_path, pid_t pid, int64_t timeout_ms, const char *err_path)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    for (;;) {
        int64_t pending = ch_outbox_count(db_path, "pending");
        if (pending == 0) return;
        if (pid > 0 && !ch_alive(pid)) {
            int code = ch_wait_or_die(pid, 1000, "relay");
            if (err_path) ch_dump("relay stderr", err_path);
            TEST_FAIL_("relay %d exited %d with %lld messages pending", (int)pid, code,
                       (long long)pending);
        }
        if (ch_now_ms() > deadline) {
            if (err_path) ch_dump("relay stderr", err_path);
            TEST_FAIL_("%lld messages still pending after %lld ms", (long long)pending,
                       (long long)timeout_ms);
        }
        ch_sleep_ms(20);
    }
}

void ch_report_print(const char *label, const ch_report *r)
{
    fprintf(stderr,
            "%s: expected %lld, lines %lld, published %lld, torn %lld, foreign %lld, lost %lld, "
            "duplicates %lld, order violations %lld%s%s\n",
            label, (long long)r->expected, (long long)r->lines, (long long)r->published,
            (long long)r->torn, (long long)r->foreign, (long long)r->lost, (long long)r->duplicates,
            (long long)r->violations, r->first_problem[0] ? "; first problem: " : "",
            r->first_problem);
}

void ch_new_store(char *path, const char *name)
{
    sqlite3 *db;
    outbox_error err;
    ch_path(path, name);
    db = ch_db_open(path);
    ASSERT_OK(outbox_schema_init_sqlite(db, &err), &err);
    sqlite3_close(db);
}

void ch_sweep_relay_options(outbox_relay_options *o)
{
    outbox_relay_options_init(o);
    o->once = 1;
    o->on_sent = OUTBOX_ON_SENT_MARK;
    o->backoff_base_ms = 1;
    o->backoff_max_ms = 5;
    o->max_attempts = 1000;
    o->lease_ttl_ms = 2000;
    o->batch_size = 4;
}

int ch_relay_new(outbox_relay **out, const char *db_path, const char *to, int once,
                 outbox_error *err)
{
    char store[700];
    outbox_relay_options o;
    outbox_relay_options_init(&o);
    o.once = once;
    o.backoff_base_ms = 50;
    o.backoff_max_ms = 1000;
    o.max_attempts = 1000;
    o.poll_interval_ms = 200;
    snprintf(store, sizeof store, "sqlite:%s", db_path);
    memset(err, 0, sizeof *err);
    return outbox_relay_new(out, store, to, &o, err);
}

void ch_drain_once(const char *db_path, const char *to)
{
    outbox_relay *r = NULL;
    outbox_error err;
    ASSERT_OK(ch_relay_new(&r, db_path, to, 1, &err), &err);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
}

/* ------------------------------------------------------------------------
 * Database restarts under a draining relay
 * ---------------------------------------------------------------------- */

void ch_wait_pending_zero(int64_t (*pending)(void), int64_t timeout_ms, const char *err_path)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    for (;;) {
        int64_t n = pending();
        if (n == 0) return;
        if (ch_now_ms() > deadline) {
            ch_dump("relay stderr", err_path);
            TEST_FAIL_("%lld messages still pending after %lld ms", (long long)n,
                       (long long)timeout_ms);
        }
        ch_sleep_ms(50);
    }
}

void ch_restart_during_drain(ch_restarts *r, const char *label, pid_t pid, uint64_t *rng,
                             const char *err_path)
{
    /* Restarts begin once the relay is draining: a relay that cannot reach
     * its database at start-up exits (a configuration check), which is not
     * what these tests are about.  Sanitized builds start slowly. */
    int64_t deadline = ch_now_ms() + 60000, first = r->pending();
    while (r->pending() >= first) {
        if (!ch_alive(pid) || ch_now_ms() > deadline) {
            ch_dump("relay stderr", err_path);
            TEST_FAIL_("the relay did not start draining");
        }
        ch_sleep_ms(20);
    }
    int64_t started = ch_now_ms();
    r->done = r->pending_seen = 0;
    while (r->done < r->at_least || (r->pending_seen < r->during_drain && r->done < r->max)) {
        ch_sleep_ms(ch_rand_range(rng, 20, 200));
        int64_t pending = r->pending();
        int64_t t0 = ch_now_ms();
        r->stop(r->server);
        int64_t t1 = ch_now_ms();
        ch_sleep_ms(ch_rand_range(rng, 0, 300));
        int64_t t2 = ch_now_ms();
        r->start(r->server);
        if (getenv("OUTBOX_TEST_VERBOSE"))
            fprintf(stderr, "%s: restart %d: %lld pending, stop %lld ms, start %lld ms\n", label,
                    r->done + 1, (long long)pending, (long long)(t1 - t0),
                    (long long)(ch_now_ms() - t2));
        r->done++;
        if (pending > 0) r->pending_seen++;
        if (!ch_alive(pid)) {
            ch_dump("relay stderr", err_path);
            TEST_FAIL_("the relay exited after a database restart");
        }
    }
    fprintf(stderr, "%s: %d (%d while messages were pending), %.1f s\n", label, r->done,
            r->pending_seen, (double)(ch_now_ms() - started) / 1000.0);
}

void ch_restarts_finish(const ch_restarts *r, pid_t pid, const char *err_path)
{
    ch_wait_pending_zero(r->pending, 120000, err_path);
    if (!ch_wait_file_contains(err_path, "reconnected", 60000)) {
        ch_dump("relay stderr", err_path);
        TEST_FAIL_("the relay did not log 'reconnected' within 60 s of the last restart");
    }
    kill(pid, SIGTERM);
    int code = ch_wait_or_die(pid, 20000, "relay");
    if (code != 0) {
        ch_dump("relay stderr", err_path);
        TEST_FAIL_("relay exited %d after SIGTERM", code);
    }
    ASSERT_GE(r->pending_seen, r->during_drain);
}

void ch_split_glued(const char *in, const char *out)
{
    static const char start[] = "{\"specversion\"";
    size_t len = 0;
    char *text = test_read_file(in, &len);
    FILE *o = fopen(out, "wb");
    if (!o) TEST_FAIL_("cannot write %s", out);
    for (size_t i = 0; text && i < len; i++) {
        if (i > 0 && text[i - 1] != '\n' && text[i] == '{' && len - i >= sizeof start - 1 &&
            memcmp(text + i, start, sizeof start - 1) == 0)
            fputc('\n', o);
        fputc(text[i], o);
    }
    fclose(o);
    free(text);
}
