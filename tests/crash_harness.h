/*
 * crash_harness.h - shared helpers of the tests that break things on purpose
 * (test_crash, test_lease, test_inbox_e2e).
 *
 * - Processes: start the real `outbox` binary with fork/execv, extra
 *   environment and stdout/stderr sent to files; wait with a deadline; kill.
 * - A producer that enqueues messages through the library (into a SQLite
 *   file, or a PostgreSQL outbox) in transactions of 1-50 messages over
 *   many aggregates, each payload carrying the
 *   per-aggregate enqueue counter: {"agg":"a17","n":42}.  It remembers every
 *   committed id by (aggregate, n).
 * - A checker that reads a relay's file destination (CloudEvents JSON, one
 *   object per line) and computes lost ids, per-aggregate first-publication
 *   order violations, duplicates and torn (unparseable) lines.
 * - Store queries straight on the SQLite file (counts per status).
 *
 * Everything is static inline so each test takes only what it uses.
 */
#ifndef OUTBOX_CRASH_HARNESS_H
#define OUTBOX_CRASH_HARNESS_H

#include "test.h"

#include <outbox.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdatomic.h>
#ifdef OUTBOX_HAVE_LIBPQ
#include <libpq-fe.h>
#endif
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * Time and randomness
 * ---------------------------------------------------------------------- */

static inline int64_t ch_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void ch_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* xorshift64*: small, seedable, good enough to pick delays and aggregates. */
static inline uint64_t ch_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [lo, hi]. */
static inline int64_t ch_rand_range(uint64_t *state, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(ch_rand(state) % (uint64_t)(hi - lo + 1));
}

/* Seed from OUTBOX_TEST_SEED when set (to replay a run), else from the clock. */
static inline uint64_t ch_seed(void)
{
    const char *s = getenv("OUTBOX_TEST_SEED");
    if (s && *s) return strtoull(s, NULL, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
}

/* ------------------------------------------------------------------------
 * Processes
 * ---------------------------------------------------------------------- */

/* Children not yet reaped, SIGKILLed at exit so that a failing test leaves
 * no relay running behind it. */
static pid_t ch_children[512];

static inline void ch_forget(pid_t pid)
{
    for (size_t i = 0; i < sizeof ch_children / sizeof ch_children[0]; i++)
        if (ch_children[i] == pid) ch_children[i] = 0;
}

static inline void ch_kill_children(void)
{
    for (size_t i = 0; i < sizeof ch_children / sizeof ch_children[0]; i++) {
        if (ch_children[i] > 0) {
            kill(ch_children[i], SIGKILL);
            kill(ch_children[i], SIGCONT);
            waitpid(ch_children[i], NULL, 0);
            ch_children[i] = 0;
        }
    }
}

/* On SIGTERM/SIGINT (a ctest timeout, ^C): kill the children, then die of
 * the same signal.  Only async-signal-safe calls. */
static inline void ch_on_signal(int sig)
{
    for (size_t i = 0; i < sizeof ch_children / sizeof ch_children[0]; i++)
        if (ch_children[i] > 0) kill(ch_children[i], SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline void ch_remember(pid_t pid)
{
    static int registered;
    if (!registered) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = ch_on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        atexit(ch_kill_children);
        registered = 1;
    }
    for (size_t i = 0; i < sizeof ch_children / sizeof ch_children[0]; i++) {
        if (ch_children[i] == 0) {
            ch_children[i] = pid;
            return;
        }
    }
}

/* Starts argv[0] (argv NULL-terminated) with extra "NAME=VALUE" entries in
 * env (NULL-terminated, may be NULL; "NAME=" with an empty value unsets),
 * stdout appended to out_path and stderr to err_path (NULL: /dev/null). */
static inline pid_t ch_spawn(const char *const *argv, const char *const *env,
                             const char *out_path, const char *err_path)
{
    /* posix_spawn (vfork-like) rather than fork: forking a process whose
     * producer thread is busy copies its page tables each time and stalls
     * that thread, badly so under AddressSanitizer. */
    extern char **environ;
    size_t n = 0, extra = 0, k = 0;
    while (environ[n]) n++;
    while (env && env[extra]) extra++;
    char **envp = calloc(n + extra + 1, sizeof *envp);
    if (!envp) TEST_FAIL_("out of memory");
    for (size_t i = 0; i < n; i++) {
        int overridden = 0;
        for (size_t j = 0; j < extra; j++) {
            const char *eq = strchr(env[j], '=');
            size_t len = eq ? (size_t)(eq - env[j]) + 1 : strlen(env[j]);
            if (strncmp(environ[i], env[j], len) == 0) overridden = 1;
        }
        if (!overridden) envp[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++) {
        const char *eq = strchr(env[j], '=');
        if (eq && eq[1]) envp[k++] = (char *)env[j]; /* "NAME=" only unsets */
    }
    envp[k] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null",
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_path ? err_path : "/dev/null",
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    if (rc != 0) TEST_FAIL_("cannot start %s: %s", argv[0], strerror(rc));
    ch_remember(pid);
    return pid;
}

/* Exit code of a wait status: the code, or 128+signal. */
static inline int ch_exit_code(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

/* Waits up to timeout_ms for pid.  Returns its exit code (128+signal when
 * killed), or -1 on timeout (the process is left running). */
static inline int ch_wait(pid_t pid, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    int64_t nap = 1;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            ch_forget(pid);
            return ch_exit_code(status);
        }
        if (r < 0 && errno != EINTR) TEST_FAIL_("waitpid(%d): %s", (int)pid, strerror(errno));
        if (ch_now_ms() >= deadline) return -1;
        ch_sleep_ms(nap);
        if (nap < 20) nap *= 2;
    }
}

/* Like ch_wait, but a timeout SIGKILLs the process and fails the test. */
static inline int ch_wait_or_die(pid_t pid, int64_t timeout_ms, const char *what)
{
    int code = ch_wait(pid, timeout_ms);
    if (code == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ch_forget(pid);
        TEST_FAIL_("%s (pid %d) did not exit within %lld ms", what, (int)pid,
                   (long long)timeout_ms);
    }
    return code;
}

/* SIGKILLs pid and reaps it; returns its exit code (137 when the kill hit,
 * something else when it had exited by itself just before). */
static inline int ch_kill9(pid_t pid)
{
    int status = 0;
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ch_forget(pid);
    return ch_exit_code(status);
}

/* Non-zero while pid has not exited (does not reap). */
static inline int ch_alive(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return 0;
    return info.si_pid == 0;
}

/* Runs argv to completion (timeout fails the test) and returns its exit
 * code; stderr (and stdout when out_path is NULL) goes to err_path, which
 * is truncated first. */
static inline int ch_run(const char *const *argv, const char *const *env,
                         const char *out_path, const char *err_path, int64_t timeout_ms)
{
    if (err_path) {
        FILE *f = fopen(err_path, "w");
        if (f) fclose(f);
    }
    pid_t pid = ch_spawn(argv, env, out_path ? out_path : err_path, err_path);
    return ch_wait_or_die(pid, timeout_ms, argv[1] ? argv[1] : argv[0]);
}

/* Prints a file's content to stderr (for failure diagnostics). */
static inline void ch_dump(const char *title, const char *path)
{
    char *text = test_read_file(path, NULL);
    fprintf(stderr, "---- %s (%s)\n%s%s----\n", title, path, text ? text : "(absent)\n",
            text && *text && text[strlen(text) - 1] != '\n' ? "\n" : "");
    free(text);
}

/* Copies test_path(name) into out (CH_PATH bytes): test_path's buffers
 * rotate, so paths kept across calls must be copied. */
enum { CH_PATH = 600 };
static inline char *ch_path(char *out, const char *name)
{
    snprintf(out, CH_PATH, "%s", test_path(name));
    return out;
}

/* Stops n running relay processes with SIGTERM; each must exit 0 within
 * 20 s (errs[i]: its stderr file, shown when it does not).  Waits a second
 * first, so that a relay restarted just before has installed its signal
 * handlers. */
static inline void ch_relays_stop(const pid_t *pids, int n, char (*errs)[CH_PATH])
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

/* `outbox init --store sqlite:DB`, which must exit 0. */
static inline void ch_init_store(const char *db_path)
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

static inline sqlite3 *ch_db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        TEST_FAIL_("sqlite3_open(%s): %s", path, db ? sqlite3_errmsg(db) : "no memory");
    sqlite3_busy_timeout(db, 30000);
    return db;
}

/* Result of a one-number query; fails the test on an SQL error. */
static inline int64_t ch_db_count(sqlite3 *db, const char *sql)
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

static inline void ch_db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        char copy[512];
        snprintf(copy, sizeof copy, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        TEST_FAIL_("%s: %s", sql, copy);
    }
}

/* Messages in the outbox table with the given status ("pending", "sent",
 * "failed"), or all rows when status is NULL. */
static inline int64_t ch_outbox_count(const char *db_path, const char *status)
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

/* Checks that the (first) Failed message's last_error contains `expect`,
 * and prints it; fails the test when there is no Failed message. */
static inline void ch_expect_failed_error(const char *db_path, const char *expect)
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

typedef struct ch_agg {
    int count;    /* committed messages of this aggregate: n runs 0..count-1 */
    int cap;
    char (*ids)[37];
} ch_agg;

typedef struct ch_producer {
    /* Settings. */
    const char *db_path;
    int total;        /* messages to commit */
    int aggregates;   /* aggregate ids a0 .. a<aggregates-1> */
    int max_txn;      /* 1..max_txn messages per transaction */
    int pause_us;     /* sleep between transactions (0: none) */
    uint64_t seed;
    const char *pg_conninfo; /* set: enqueue into this PostgreSQL outbox
                                (outbox_enqueue_pg) instead of db_path */
    int pg_async_commit;     /* with pg_conninfo: synchronous_commit=off,
                                only for runs where the database itself is
                                not crashed */

    /* Results (read after ch_producer_join). */
    ch_agg *aggs;
    int committed;
    int transactions;
    int rollbacks;
    char error[600];  /* "" unless the producer failed */

    atomic_int done;  /* set when the thread ends */
    pthread_t thread;
} ch_producer;

static inline void ch_agg_push(ch_agg *a, const char *id)
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
static inline int ch_producer_msg(ch_producer *p, uint64_t *rng, outbox_msg **batch,
                                  int *batch_agg, int i, outbox_error *err)
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

static inline void *ch_producer_main(void *arg)
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
            for (int j = 0; j < i; j++) ch_agg_push(&p->aggs[batch_agg[j]], outbox_msg_id(batch[j]));
            p->committed += i;
            p->transactions++;
        } else {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            p->rollbacks++;
        }
        for (int j = 0; j < i; j++) outbox_msg_free(batch[j]);
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
static inline void *ch_pg_producer_main(void *arg)
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
                outbox_enqueue_pg(c, batch[i], &err) != OUTBOX_OK) {
                snprintf(p->error, sizeof p->error, "enqueue: %d %s", err.code, err.message);
                ok = 0;
                i++;
                break;
            }
        }
        PGresult *res = ok ? PQexec(c, "COMMIT") : NULL;
        if (ok && PQresultStatus(res) == PGRES_COMMAND_OK) {
            for (int j = 0; j < i; j++) ch_agg_push(&p->aggs[batch_agg[j]], outbox_msg_id(batch[j]));
            p->committed += i;
            p->transactions++;
        } else {
            if (ok) snprintf(p->error, sizeof p->error, "commit: %s", PQerrorMessage(c));
            PQclear(PQexec(c, "ROLLBACK"));
            ok = 0;
        }
        PQclear(res);
        for (int j = 0; j < i; j++) outbox_msg_free(batch[j]);
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

/* Starts the producer thread; p's settings must be filled (db_path, or
 * pg_conninfo in builds with the PostgreSQL store).  Starting it again
 * after a join continues the same aggregates' counters up to the new
 * p->total. */
static inline void ch_producer_start(ch_producer *p)
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

static inline int ch_producer_done(ch_producer *p)
{
    return atomic_load(&p->done);
}

/* Joins the thread; fails the test when the producer reported an error. */
static inline void ch_producer_join(ch_producer *p)
{
    pthread_join(p->thread, NULL);
    if (p->error[0]) TEST_FAIL_("producer: %s", p->error);
}

/* Commits p->total - p->committed more messages, synchronously. */
static inline void ch_produce(ch_producer *p, int more)
{
    p->total = p->committed + more;
    ch_producer_start(p);
    ch_producer_join(p);
}

static inline void ch_producer_free(ch_producer *p)
{
    for (int i = 0; p->aggs && i < p->aggregates; i++) free(p->aggs[i].ids);
    free(p->aggs);
    p->aggs = NULL;
}

/* ------------------------------------------------------------------------
 * Checker
 * ---------------------------------------------------------------------- */

typedef struct ch_report {
    int64_t expected;    /* ids committed */
    int64_t lines;       /* lines in the file */
    int64_t published;   /* lines that parsed */
    int64_t torn;        /* lines that did not parse */
    int64_t foreign;     /* parsed but not an id we committed, or wrong fields */
    int64_t lost;        /* committed ids never in the file */
    int64_t duplicates;  /* parsed lines beyond the first of each id */
    int64_t violations;  /* first(n) before first(n-1) within an aggregate */
    char first_problem[300];
} ch_report;

static inline void ch_note(ch_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void ch_note(ch_report *r, const char *fmt, ...)
{
    if (r->first_problem[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->first_problem, sizeof r->first_problem, fmt, ap);
    va_end(ap);
}

/* Reads the file destination at path and checks it against what p
 * committed.  Lines are CloudEvents objects with "id", "subject" (aggregate
 * id) and "data" {"agg":..., "n":...}. */
static inline void ch_check_file(const char *path, const ch_producer *p, ch_report *r)
{
    memset(r, 0, sizeof *r);
    int64_t **first = calloc((size_t)p->aggregates, sizeof *first);
    if (!first) TEST_FAIL_("out of memory");
    for (int a = 0; a < p->aggregates; a++) {
        r->expected += p->aggs[a].count;
        first[a] = malloc(((size_t)p->aggs[a].count + 1) * sizeof **first);
        if (!first[a]) TEST_FAIL_("out of memory");
        for (int n = 0; n < p->aggs[a].count; n++) first[a][n] = -1;
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
                ch_note(r, "order: %s (a%d n=%d) first published before n-1",
                        p->aggs[a].ids[n], a, n);
            }
        }
        free(first[a]);
    }
    free(first);
}

/* Concatenates files (NULL-terminated list, absent ones skipped) into out,
 * for checking the publications of successive relays as one stream. */
static inline void ch_concat(const char *out, const char *const *files)
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

/* Waits until the outbox at db_path has no pending message; fails the test
 * after timeout_ms or when pid (if > 0) exits meanwhile. */
static inline void ch_wait_drained(const char *db_path, pid_t pid, int64_t timeout_ms,
                                   const char *err_path)
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

static inline void ch_report_print(const char *label, const ch_report *r)
{
    fprintf(stderr,
            "%s: expected %lld, lines %lld, published %lld, torn %lld, foreign %lld, lost %lld, "
            "duplicates %lld, order violations %lld%s%s\n",
            label, (long long)r->expected, (long long)r->lines, (long long)r->published,
            (long long)r->torn, (long long)r->foreign, (long long)r->lost,
            (long long)r->duplicates, (long long)r->violations,
            r->first_problem[0] ? "; first problem: " : "", r->first_problem);
}

/* A fresh SQLite outbox at ch_path(name), its path written to path. */
static inline void ch_new_store(char *path, const char *name)
{
    sqlite3 *db;
    outbox_error err;
    ch_path(path, name);
    db = ch_db_open(path);
    ASSERT_OK(outbox_schema_init_sqlite(db, &err), &err);
    sqlite3_close(db);
}

/* outbox_relay_new from the SQLite outbox at db_path to `to`, with short
 * backoff and many attempts (tests drive failures on purpose); returns the
 * code, the relay in *out (or NULL). */
static inline int ch_relay_new(outbox_relay **out, const char *db_path, const char *to,
                               int once, outbox_error *err)
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

/* Runs a --once relay from db_path to `to` to the end. */
static inline void ch_drain_once(const char *db_path, const char *to)
{
    outbox_relay *r = NULL;
    outbox_error err;
    ASSERT_OK(ch_relay_new(&r, db_path, to, 1, &err), &err);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
}

#endif /* OUTBOX_CRASH_HARNESS_H */
