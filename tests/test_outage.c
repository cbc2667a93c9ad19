/*
 * test_outage.c - local destinations failing as an operator meets them:
 * a full disk under file:, and stdout: into a pipe whose reader is gone.
 *
 *   file_full_disk    the fault points file_write (ENOSPC after half the
 *                     batch, three times) and file_fsync (EIO, twice) fail
 *                     five batches in a row with --max-attempts 2: nothing
 *                     goes Failed, no attempt is charged, the file holds only
 *                     whole JSON lines, each message exactly once, in order;
 *                     the outage is logged once each way.
 *   stdout_closed     stdout: into a pipe whose reader is closed: nothing is
 *                     recorded sent (the process survives SIGPIPE).
 *   stdout_head       the reader takes 100 bytes and exits, as `| head -1`
 *                     does: the batch it left in the pipe is not confirmed.
 *   stdout_drained    a reader that reads everything: all confirmed, every
 *                     line received.
 *   file_message_faults  the per-message fault points of file: through the
 *                     CLI: file_reject fails a message at once, file_message
 *                     charges one attempt while the rest of the batch goes.
 *
 * The stdout cases run the relay in a forked child whose fd 1 is the pipe.
 * Needs a build with OUTBOX_FAULT_INJECTION (the fault points are parsed
 * once per process, so OUTBOX_FAULT is set before anything runs).
 */
#include "test.h"

#if !defined(OUTBOX_FAULT_INJECTION)
int main(void)
{
    SKIP("needs a build with OUTBOX_FAULT_INJECTION");
}
#else

#include "support/chaos.h"
#include "internal.h"
#include "log_capture.h"
#include "relay_thread.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>

/* A fresh SQLite outbox at path, opened. */
static sqlite3 *open_db(const char *path)
{
    sqlite3 *db = ch_db_open(path);
    outbox_error err;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_schema_init_sqlite(db, &err), &err);
    return db;
}

/* Enqueues n messages over `aggs` aggregates (message k in aggregate k %
 * aggs) in one transaction; ids[k] receives message k's id. */
static void enqueue_many(sqlite3 *db, int n, int aggs, char (*ids)[37])
{
    outbox_error err;
    int k;
    memset(&err, 0, sizeof err);
    ch_db_exec(db, "BEGIN");
    for (k = 0; k < n; k++) {
        outbox_msg *m = NULL;
        char agg[16], payload[256];
        snprintf(agg, sizeof agg, "a%d", k % aggs);
        snprintf(payload, sizeof payload, "{\"k\":%d,\"pad\":\"%0200d\"}", k, k);
        ASSERT_OK(outbox_msg_new(&m, "Step", "Order", agg, payload, &err), &err);
        ASSERT_OK(outbox_enqueue_sqlite(db, m, &err), &err);
        if (ids) snprintf(ids[k], 37, "%s", outbox_msg_id(m));
        outbox_msg_free(m);
    }
    ch_db_exec(db, "COMMIT");
}

static int64_t count_rows(sqlite3 *db, const char *where)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox WHERE %s", where);
    return ch_db_count(db, sql);
}

static void relay_options(outbox_relay_options *o)
{
    outbox_relay_options_init(o);
    o->max_attempts = 2;
    o->backoff_base_ms = 10;
    o->backoff_max_ms = 40;
    o->poll_interval_ms = 50;
}

/* ------------------------------------------------------------------------
 * file: on a full disk
 * ---------------------------------------------------------------------- */

TEST(file_full_disk)
{
    enum { N = 40, AGGS = 4 };
    const char *path = test_path("disk.db");
    char out[600], dest[700], store[700], ids[N][37];
    sqlite3 *db = open_db(path);
    outbox_error err;
    outbox_relay_options o;
    outbox_relay_stats stats;
    relay_thread run;
    char *text, *line, *save = NULL;
    int seen[N], next[AGGS], lines = 0, k;
    int64_t end;

    memset(&err, 0, sizeof err);
    snprintf(out, sizeof out, "%s", test_path("disk.jsonl"));
    snprintf(dest, sizeof dest, "file:%s", out);
    snprintf(store, sizeof store, "sqlite:%s", path);
    enqueue_many(db, N, AGGS, ids);
    relay_options(&o);
    memset(&run, 0, sizeof run);
    ASSERT_OK(outbox_relay_new(&run.relay, store, dest, &o, &err), &err);
    if (relay_thread_start(&run) != 0) TEST_FAIL_("pthread_create");
    end = outbox__monotonic_us() + 10000000;
    while (count_rows(db, "1") > 0 && outbox__monotonic_us() < end)
        outbox__sleep_us(5000);
    ASSERT_OK(relay_thread_stop(&run), &run.err);
    outbox_relay_get_stats(run.relay, &stats);
    outbox_relay_free(run.relay);

    /* Everything delivered, nothing Failed, no attempt charged. */
    ASSERT_EQ(count_rows(db, "1"), 0);
    ASSERT_EQ(stats.published, N);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_EQ(stats.retried, 0);
    /* Five whole batches failed: one error per aggregate each. */
    ASSERT_EQ(stats.publish_errors, 5 * AGGS);
    ASSERT_EQ(log_count("is down: injected fault file_write: write to"), 1);
    ASSERT_EQ(log_count("No space left on device; backing off, no attempts are charged"), 1);
    ASSERT_EQ(log_count("is back after"), 1);

    /* Only whole JSON lines, each message once, in order per aggregate: the
     * half-written batches were cut off, the fsync-failed ones too. */
    text = test_read_file(out, NULL);
    ASSERT(text != NULL);
    memset(seen, 0, sizeof seen);
    memset(next, 0, sizeof next);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *ev = json_loads(line, 0, &jerr);
        if (ev == NULL) TEST_FAIL_("not a JSON line: %.80s", line);
        int kk = (int)json_integer_value(json_object_get(json_object_get(ev, "data"), "k"));
        ASSERT(kk >= 0 && kk < N);
        ASSERT_STREQ(json_string_value(json_object_get(ev, "id")), ids[kk]);
        ASSERT_EQ(seen[kk], 0);
        seen[kk] = 1;
        ASSERT_EQ(kk, next[kk % AGGS] * AGGS + kk % AGGS);
        next[kk % AGGS]++;
        json_decref(ev);
        lines++;
    }
    ASSERT_EQ(lines, N);
    free(text);
    for (k = 0; k < N; k++)
        ASSERT_EQ(seen[k], 1);
    sqlite3_close(db);
}

/* ------------------------------------------------------------------------
 * stdout: into a pipe
 * ---------------------------------------------------------------------- */

/* In a child process: fd 1 becomes wfd (rfd, the pipe's other end, is
 * closed when >= 0), a relay to stdout: runs (until
 * nothing is due with once, else for 600 ms), and the exit code says what
 * happened: 0 run OK, 1 run failed, 2 could not start.  The stats go to
 * stats_fd.  SIGPIPE keeps its default action: the library must not die
 * of it. */
static pid_t relay_child(const char *db_path, int rfd, int wfd, int once, int stats_fd)
{
    pid_t pid = fork();
    if (pid < 0) TEST_FAIL_("fork: %s", strerror(errno));
    if (pid == 0) {
        char store[700];
        outbox_relay_options o;
        outbox_relay_stats stats;
        outbox_error err;
        relay_thread run;
        signal(SIGPIPE, SIG_DFL);
        if (rfd >= 0) close(rfd); /* the reader is the parent alone */
        if (dup2(wfd, STDOUT_FILENO) < 0) _exit(2);
        close(wfd);
        memset(&err, 0, sizeof err);
        snprintf(store, sizeof store, "sqlite:%s", db_path);
        relay_options(&o);
        o.once = once;
        memset(&run, 0, sizeof run);
        if (outbox_relay_new(&run.relay, store, "stdout:", &o, &err) != OUTBOX_OK) _exit(2);
        if (relay_thread_start(&run) != 0) _exit(2);
        if (!once) outbox__sleep_us(600000);
        if (once)
            relay_thread_join(&run);
        else
            relay_thread_stop(&run);
        outbox_relay_get_stats(run.relay, &stats);
        if (write(stats_fd, &stats, sizeof stats) != (ssize_t)sizeof stats) _exit(2);
        outbox_relay_free(run.relay);
        close(STDOUT_FILENO);
        _exit(run.rc == OUTBOX_OK ? 0 : 1); /* _exit: not the parent's atexit handlers */
    }
    return pid;
}

/* Waits for the child; fails the test unless it exited with `want`. */
static void child_exit(pid_t pid, int want, int stats_rd, outbox_relay_stats *stats)
{
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) TEST_FAIL_("waitpid: %s", strerror(errno));
    if (WIFSIGNALED(status)) TEST_FAIL_("the relay process died of signal %d", WTERMSIG(status));
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), want);
    ASSERT_EQ(read(stats_rd, stats, sizeof *stats), (ssize_t)sizeof *stats);
}

static void stats_pipe(int fds[2])
{
    if (pipe(fds) != 0) TEST_FAIL_("pipe: %s", strerror(errno));
}

TEST(stdout_closed)
{
    const char *path = test_path("closed.db");
    sqlite3 *db = open_db(path);
    outbox_relay_stats stats;
    int p[2], sp[2];
    pid_t pid;

    enqueue_many(db, 20, 5, NULL);
    stats_pipe(sp);
    if (pipe(p) != 0) TEST_FAIL_("pipe");
    close(p[0]); /* nobody will ever read */
    pid = relay_child(path, -1, p[1], 0, sp[1]);
    close(p[1]);
    child_exit(pid, 0, sp[0], &stats);
    fprintf(stderr, "   closed pipe: %llu publish errors, %llu published\n",
            (unsigned long long)stats.publish_errors, (unsigned long long)stats.published);
    ASSERT_EQ(stats.published, 0);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_GE(stats.publish_errors, 2 * 5);
    ASSERT_EQ(count_rows(db, "status = 'pending' AND attempts = 0"), 20);
    close(sp[0]);
    close(sp[1]);
    sqlite3_close(db);
}

TEST(stdout_head)
{
    const char *path = test_path("head.db");
    sqlite3 *db = open_db(path);
    outbox_relay_stats stats;
    char buf[100];
    int p[2], sp[2];
    size_t got = 0;
    pid_t pid;

    enqueue_many(db, 50, 5, NULL); /* about 20 KB of lines: more than the reader takes */
    stats_pipe(sp);
    if (pipe(p) != 0) TEST_FAIL_("pipe");
    pid = relay_child(path, p[0], p[1], 0, sp[1]);
    close(p[1]);
    while (got < sizeof buf) {
        ssize_t r = read(p[0], buf + got, sizeof buf - got);
        if (r <= 0) TEST_FAIL_("the relay wrote nothing");
        got += (size_t)r;
    }
    close(p[0]); /* exits after its first line, like head -1 */
    child_exit(pid, 0, sp[0], &stats);
    ASSERT_EQ(stats.published, 0);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_GE(stats.publish_errors, 1);
    ASSERT_EQ(count_rows(db, "status = 'pending' AND attempts = 0"), 50);
    close(sp[0]);
    close(sp[1]);
    sqlite3_close(db);
}

TEST(stdout_drained)
{
    const char *path = test_path("drained.db");
    sqlite3 *db = open_db(path);
    outbox_relay_stats stats;
    char buf[4096];
    int p[2], sp[2], lines = 0;
    pid_t pid;

    enqueue_many(db, 300, 7, NULL);
    stats_pipe(sp);
    if (pipe(p) != 0) TEST_FAIL_("pipe");
    pid = relay_child(path, p[0], p[1], 1, sp[1]);
    close(p[1]);
    for (;;) {
        ssize_t r = read(p[0], buf, sizeof buf), i;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (i = 0; i < r; i++)
            if (buf[i] == '\n') lines++;
        outbox__sleep_us(200); /* a reader slower than the writer */
    }
    close(p[0]);
    child_exit(pid, 0, sp[0], &stats);
    ASSERT_EQ(lines, 300);
    ASSERT_EQ(stats.published, 300);
    ASSERT_EQ(stats.publish_errors, 0);
    ASSERT_EQ(count_rows(db, "1"), 0);
    close(sp[0]);
    close(sp[1]);
    sqlite3_close(db);
}

/* ------------------------------------------------------------------------
 * The per-message fault points of file: (for tests of Failed messages)
 * ---------------------------------------------------------------------- */

/* Runs `outbox relay --once` from db to file:out with OUTBOX_FAULT=fault. */
static void cli_relay(const char *db, const char *out, const char *fault)
{
    char store[700], dest[700], env_fault[128];
    const char *env[] = {env_fault, NULL};
    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(dest, sizeof dest, "file:%s", out);
    snprintf(env_fault, sizeof env_fault, "OUTBOX_FAULT=%s", fault);
    const char *argv[] = {
        test_outbox_bin(), "relay", "--store",        store, "--to",          dest, "--once",
        "--max-attempts",  "5",     "--backoff-base", "1h",  "--backoff-max", "1h", NULL};
    int code = ch_run(argv, env, NULL, test_path("cli.err"), 60000);
    if (code != 0 && code != 1) {
        ch_dump("outbox relay stderr", test_path("cli.err"));
        TEST_FAIL_("outbox relay exited %d", code);
    }
}

/* file_reject makes the destination refuse a message (Failed at once, its
 * aggregate's next message held, not written); file_message fails one
 * message while the others of its batch are written (one attempt charged,
 * retried later); the file holds only what was confirmed. */
TEST(file_message_faults)
{
    const char *path = test_path("faults.db"), *out = test_path("faults.jsonl");
    sqlite3 *db = open_db(path);
    char ids[4][37], sql[256];
    char *text;

    enqueue_many(db, 4, 2, ids); /* a0: ids 0, 2; a1: ids 1, 3 */
    cli_relay(path, out, "file_reject:error:1");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE id = '%s' AND status = 'failed' AND attempts = 1 "
             "AND last_error LIKE '%%injected fault file_reject%%'",
             ids[0]);
    ASSERT_EQ(ch_db_count(db, sql), 1);
    ASSERT_EQ(count_rows(db, "1"), 2); /* ids[0] Failed, ids[2] held behind it */
    text = test_read_file(out, NULL);
    ASSERT(text != NULL);
    ASSERT(strstr(text, ids[0]) == NULL && strstr(text, ids[2]) == NULL);
    ASSERT(strstr(text, ids[1]) != NULL && strstr(text, ids[3]) != NULL);
    free(text);

    ch_db_exec(db, "DELETE FROM outbox");
    enqueue_many(db, 4, 2, ids);
    cli_relay(path, out, "file_message:error:1");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE id = '%s' AND status = 'pending' AND attempts = 1 "
             "AND last_error LIKE '%%injected fault file_message%%'",
             ids[0]);
    ASSERT_EQ(ch_db_count(db, sql), 1);
    ASSERT_EQ(count_rows(db, "1"), 2); /* ids[0] waiting an hour, ids[2] behind it */
    sqlite3_close(db);
}

int main(void)
{
    /* Hits 1-3 of file_write and 1-2 of file_fsync fail: five batches. */
    setenv("OUTBOX_FAULT",
           "file_write:error:1,file_write:error:2,file_write:error:3,file_fsync:error:1,"
           "file_fsync:error:2",
           1);
    log_capture_install(OUTBOX_LOG_INFO);
    RUN(file_full_disk);
    RUN(stdout_closed);
    RUN(stdout_head);
    RUN(stdout_drained);
    RUN(file_message_faults);
    return 0;
}

#endif /* OUTBOX_FAULT_INJECTION */
