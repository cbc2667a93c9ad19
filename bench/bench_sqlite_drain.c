/*
 * bench_sqlite_drain.c - how fast the relay drains a SQLite outbox, next to
 * a baseline that does the same database work with no relay logic.
 *
 * A source database with N pending messages (300-byte JSON payloads spread
 * over A aggregates) is filled once through the public API
 * (outbox_schema_init_sqlite + outbox_enqueue_sqlite in large transactions),
 * checkpointed, and copied with a plain file copy before every run, so each
 * run starts from the same bytes.  Each run is a forked child process: the
 * parent reads its peak RSS from wait4() and the child reports the elapsed
 * CLOCK_MONOTONIC time of its work through a pipe.  Cases:
 *
 *   baseline      SELECT all columns of the next B pending rows in seq
 *                 order, then DELETE them by seq with one prepared statement
 *                 in one transaction per batch (WAL, synchronous=NORMAL,
 *                 the settings the store uses); nothing else
 *   relay/discard outbox_relay_new("sqlite:COPY", "discard:", once=1,
 *                 batch_size=B) + outbox_relay_run
 *   relay/file    the same to "file:PATH" (one fsync per batch)
 *   relay/discard +monitor (with --listen) relay/discard with outbox_monitor
 *                 serving it on 127.0.0.1 and a thread scraping /metrics
 *                 every 100 ms: what monitoring costs the drain
 *
 * and baseline + relay/discard again at N/10, to show that peak memory does
 * not grow with N.  After each run the parent checks the result (no rows left
 * in the outbox; for file: exactly N lines), so a broken run reports an
 * error instead of a figure.  With -r R every case runs R times, interleaved,
 * and the table shows the median time and the largest peak RSS.
 *
 * Usage: bench_sqlite_drain [-n N] [-b BATCH] [-a AGGREGATES] [-r REPEAT]
 *                           [--dir DIR] [--keep] [--baseline-pragmas SQL] [--listen]
 *
 * --baseline-pragmas runs extra SQL in the baseline only (for instance
 * "PRAGMA mmap_size=1000000000"), to see what a SQLite setting would give
 * the relay before changing the store.
 */
#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"

enum { PAYLOAD_BYTES = 300, FILL_TXN_ROWS = 50000, MAX_REPEAT = 25 };

enum { CASE_NOOP, CASE_BASELINE, CASE_DISCARD, CASE_FILE, CASE_MONITORED };

static const char *case_names[] = {"noop", "baseline",
                                   "relay -> discard:", "relay -> file:", "discard: +monitor"};

typedef struct config {
    long long n;
    unsigned batch;
    unsigned aggregates;
    int repeat;
    int keep;
    char dir[512];
    const char *baseline_pragmas; /* extra SQL run by the baseline after open */
    int listen;                   /* also run relay -> discard: with the monitor scraped */
} config;

/* What a child sends back to the parent. */
typedef struct child_report {
    int ok;
    double seconds;
    long long count; /* messages handled, as the child saw it */
    char message[512];
} child_report;

typedef struct run_result {
    double seconds;
    double user_seconds; /* CPU time of the child, from wait4() */
    double sys_seconds;
    long long count;
    long maxrss_kib;
    long voluntary_switches;   /* waits: I/O, locks */
    long involuntary_switches; /* preempted: another process wanted the CPU */
} run_result;

static void stderr_logger(void *user, int level, const char *component, const char *message)
{
    (void)user;
    fprintf(stderr, "[%s] %s: %s\n", outbox_log_level_name(level), component, message);
}

static void report_fail(child_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report_fail(child_report *r, const char *fmt, ...)
{
    va_list ap;
    r->ok = 0;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

static int exec_sql(sqlite3 *db, const char *sql, child_report *r)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(r->message, sizeof r->message, "%s: %s", sql, msg ? msg : "?");
        r->ok = 0;
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int open_db(sqlite3 **db, const char *path, child_report *r)
{
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        report_fail(r, "cannot open %s", path);
        return -1;
    }
    sqlite3_busy_timeout(*db, 5000);
    if (exec_sql(*db, "PRAGMA journal_mode=WAL", r) ||
        exec_sql(*db, "PRAGMA synchronous=NORMAL", r))
        return -1;
    return 0;
}

/* Child: fills path with n messages through the public enqueue API. */
static void fill_database(const config *cfg, const char *path, long long n, child_report *r)
{
    sqlite3 *db = NULL;
    outbox_error err = {0};
    char payload[PAYLOAD_BYTES + 1];
    char aggregate_id[32];
    double t0;
    long long i;

    unlink(path);
    if (open_db(&db, path, r)) goto out;
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) {
        report_fail(r, "outbox_schema_init_sqlite: %s", err.message);
        goto out;
    }
    t0 = bench_now();
    for (i = 0; i < n; i++) {
        outbox_msg *msg = NULL;
        unsigned aggregate = (unsigned)(i % cfg->aggregates);
        int rc;

        if (i % FILL_TXN_ROWS == 0 && exec_sql(db, "BEGIN IMMEDIATE", r)) goto out;
        bench_payload(payload, PAYLOAD_BYTES, i, aggregate);
        snprintf(aggregate_id, sizeof aggregate_id, "order-%06u", aggregate);
        rc = outbox_msg_new(&msg, "OrderPlaced", "Order", aggregate_id, payload, &err);
        if (rc == OUTBOX_OK) rc = outbox_enqueue_sqlite(db, msg, &err);
        outbox_msg_free(msg);
        if (rc != OUTBOX_OK) {
            report_fail(r, "enqueue: %s", err.message);
            goto out;
        }
        if ((i + 1) % FILL_TXN_ROWS == 0 || i + 1 == n)
            if (exec_sql(db, "COMMIT", r)) goto out;
    }
    r->seconds = bench_now() - t0;
    r->count = n;
    if (exec_sql(db, "PRAGMA wal_checkpoint(TRUNCATE)", r)) goto out;
    r->ok = 1;
out:
    sqlite3_close(db);
}

/* The declared columns of the outbox table as "a,b,c", and whether the
 * status column holds text ('pending') or a number (OUTBOX_STATUS_PENDING). */
static int outbox_columns(sqlite3 *db, char *cols, size_t cols_len, int *status_is_text, int *ncols,
                          child_report *r)
{
    sqlite3_stmt *st = NULL;
    size_t used = 0;
    int rc = -1;

    *status_is_text = 1;
    *ncols = 0;
    cols[0] = '\0';
    if (sqlite3_prepare_v2(db, "SELECT name, type FROM pragma_table_info('outbox')", -1, &st,
                           NULL) != SQLITE_OK) {
        report_fail(r, "table_info: %s", sqlite3_errmsg(db));
        goto out;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 1);
        int w = snprintf(cols + used, cols_len - used, "%s%s", used ? "," : "", name);
        if (w < 0 || (size_t)w >= cols_len - used) {
            report_fail(r, "%s", "too many outbox columns");
            goto out;
        }
        used += (size_t)w;
        (*ncols)++;
        if (strcmp(name, "status") == 0)
            *status_is_text = !(type && (strstr(type, "INT") || strstr(type, "int")));
    }
    if (*ncols == 0) {
        report_fail(r, "%s", "no outbox table in the copied database");
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

/* Child: the baseline.  Reads every column of each row (as a consumer of
 * the row would) and deletes the batch by seq, one transaction per batch. */
static void run_baseline(const config *cfg, const char *path, child_report *r)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *sel = NULL, *del = NULL;
    char cols[2048], sql[2400];
    int64_t *seqs = NULL;
    int status_is_text, ncols;
    uint64_t checksum = 0;
    double t0 = bench_now();

    seqs = malloc(sizeof *seqs * cfg->batch);
    if (!seqs) {
        report_fail(r, "%s", "out of memory");
        goto out;
    }
    if (open_db(&db, path, r)) goto out;
    if (cfg->baseline_pragmas && exec_sql(db, cfg->baseline_pragmas, r)) goto out;
    if (outbox_columns(db, cols, sizeof cols, &status_is_text, &ncols, r)) goto out;
    /* The status is a literal, as in the store, so a partial index on
     * pending rows applies. */
    snprintf(sql, sizeof sql, "SELECT %s FROM outbox WHERE status=%s ORDER BY seq LIMIT ?1", cols,
             status_is_text ? "'pending'" : "0");
    if (sqlite3_prepare_v2(db, sql, -1, &sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "DELETE FROM outbox WHERE seq=?1", -1, &del, NULL) != SQLITE_OK) {
        report_fail(r, "prepare: %s", sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_int(sel, 1, (int)cfg->batch);
    for (;;) {
        size_t n = 0, i;
        int rc;
        while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
            int c;
            seqs[n++] = sqlite3_column_int64(sel, 0);
            for (c = 1; c < ncols; c++) {
                const unsigned char *t = sqlite3_column_text(sel, c);
                checksum += (uint64_t)sqlite3_column_bytes(sel, c) + (t ? t[0] : 0);
            }
        }
        sqlite3_reset(sel);
        if (rc != SQLITE_DONE) {
            report_fail(r, "select: %s", sqlite3_errmsg(db));
            goto out;
        }
        if (n == 0) break;
        if (exec_sql(db, "BEGIN IMMEDIATE", r)) goto out;
        for (i = 0; i < n; i++) {
            sqlite3_bind_int64(del, 1, seqs[i]);
            if (sqlite3_step(del) != SQLITE_DONE) {
                report_fail(r, "delete: %s", sqlite3_errmsg(db));
                goto out;
            }
            sqlite3_reset(del);
        }
        if (exec_sql(db, "COMMIT", r)) goto out;
        r->count += (long long)n;
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(del);
    sel = del = NULL;
    sqlite3_close(db);
    db = NULL;
    r->seconds = bench_now() - t0;
    r->ok = checksum > 0 || r->count == 0;
    if (!r->ok) report_fail(r, "%s", "baseline read no column data");
out:
    sqlite3_finalize(sel);
    sqlite3_finalize(del);
    sqlite3_close(db);
    free(seqs);
}

/* Child: the relay, once, from the copy to to_url. */
static void run_relay(const config *cfg, const char *path, const char *to_url, int monitored,
                      child_report *r)
{
    outbox_relay *relay = NULL;
    outbox_relay_options opts;
    outbox_relay_stats stats;
    outbox_error err = {0};
    bench_monitor mon;
    char store_url[600];
    long scrapes = 0;
    double t0 = bench_now();

    snprintf(store_url, sizeof store_url, "sqlite:%s", path);
    outbox_relay_options_init(&opts);
    opts.once = 1;
    opts.batch_size = cfg->batch;
    if (outbox_relay_new(&relay, store_url, to_url, &opts, &err) != OUTBOX_OK) {
        report_fail(r, "outbox_relay_new: %s", err.message);
        goto out;
    }
    if (monitored && bench_monitor_start(&mon, relay, 100, r->message, sizeof r->message) != 0)
        goto out;
    if (outbox_relay_run(relay, &err) != OUTBOX_OK) {
        report_fail(r, "outbox_relay_run: %s", err.message);
        if (monitored) bench_monitor_stop(&mon);
        goto out;
    }
    if (monitored && (scrapes = bench_monitor_stop(&mon)) < 0) {
        report_fail(r, "a scrape of /metrics failed");
        goto out;
    }
    if (monitored) fprintf(stderr, "  %ld scrapes of /metrics during the drain\n", scrapes);
    outbox_relay_get_stats(relay, &stats);
    outbox_relay_free(relay);
    relay = NULL;
    r->seconds = bench_now() - t0;
    r->count = (long long)stats.published;
    if (stats.retried || stats.failed) {
        snprintf(r->message, sizeof r->message, "relay retried %llu, failed %llu",
                 (unsigned long long)stats.retried, (unsigned long long)stats.failed);
        goto out;
    }
    r->ok = 1;
out:
    outbox_relay_free(relay);
}

/* Runs one case in a forked child; fills *res with the child's figures and
 * its peak RSS.  Returns 0, or -1 with the reason printed. */
static int run_child(int which, const config *cfg, const char *db_path, const char *out_path,
                     long long n, run_result *res)
{
    int fds[2];
    pid_t pid;
    child_report rep;
    struct rusage ru;
    int status;
    ssize_t got;

    memset(res, 0, sizeof *res);
    if (pipe(fds) != 0) {
        perror("pipe");
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        char url[600];
        close(fds[0]);
        memset(&rep, 0, sizeof rep);
        switch (which) {
        case CASE_NOOP:
            rep.ok = 1;
            break;
        case CASE_BASELINE:
            run_baseline(cfg, db_path, &rep);
            break;
        case CASE_DISCARD:
        case CASE_MONITORED:
            run_relay(cfg, db_path, "discard:", which == CASE_MONITORED, &rep);
            break;
        case CASE_FILE:
            snprintf(url, sizeof url, "file:%s", out_path);
            run_relay(cfg, db_path, url, 0, &rep);
            break;
        default:
            fill_database(cfg, db_path, n, &rep);
            break;
        }
        got = write(fds[1], &rep, sizeof rep);
        close(fds[1]);
        /* exit(), not _exit(): stdio was flushed before the fork, and
         * exit() lets a sanitizer build check the child for leaks. */
        exit(got != (ssize_t)sizeof rep ? 3 : rep.ok ? 0 : 1);
    }
    close(fds[1]);
    memset(&rep, 0, sizeof rep);
    got = read(fds[0], &rep, sizeof rep);
    close(fds[0]);
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("wait4");
            return -1;
        }
    }
    if (!WIFEXITED(status) || got != (ssize_t)sizeof rep || !rep.ok) {
        fprintf(stderr, "bench_sqlite_drain: %s failed (%s%d): %s\n",
                which >= 0 ? case_names[which] : "fill", WIFEXITED(status) ? "exit " : "signal ",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                got == (ssize_t)sizeof rep ? rep.message : "no report");
        return -1;
    }
    res->seconds = rep.seconds;
    res->count = rep.count;
    res->maxrss_kib = ru.ru_maxrss;
    res->user_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    res->sys_seconds = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    res->voluntary_switches = ru.ru_nvcsw;
    res->involuntary_switches = ru.ru_nivcsw;
    return 0;
}

static void remove_db(const char *path)
{
    char p[640];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

/* Parent: the outbox of path must be empty. */
static int verify_drained(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long left = -1;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM outbox", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        left = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "bench_sqlite_drain: verify %s: %s\n", path, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (left != 0) {
        if (left > 0) fprintf(stderr, "bench_sqlite_drain: %lld rows left in %s\n", left, path);
        return -1;
    }
    return 0;
}

/* Parent: path must hold exactly n newline-terminated lines, and the first
 * and last must be CloudEvents JSON objects with an id.  *bytes receives
 * the file's size. */
static int verify_file(const char *path, long long n, long long *bytes)
{
    static char buf[1 << 20];
    char first[4096] = "", last[4096] = "";
    size_t first_len = 0, last_len = 0;
    long long lines = 0;
    int fd = open(path, O_RDONLY), rc = -1, i;
    ssize_t got;

    *bytes = 0;
    if (fd < 0) {
        fprintf(stderr, "bench_sqlite_drain: open %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((got = read(fd, buf, sizeof buf)) > 0) {
        ssize_t k;
        *bytes += got;
        for (k = 0; k < got; k++) {
            if (buf[k] == '\n') {
                if (lines == 0) first[first_len] = '\0';
                last[last_len] = '\0';
                lines++;
                last_len = 0;
                continue;
            }
            if (lines == 0 && first_len < sizeof first - 1) first[first_len++] = buf[k];
            if (last_len < sizeof last - 1) last[last_len++] = buf[k];
        }
    }
    close(fd);
    if (got < 0 || last_len != 0) {
        fprintf(stderr, "bench_sqlite_drain: %s: read error or unterminated last line\n", path);
        return -1;
    }
    if (lines != n) {
        fprintf(stderr, "bench_sqlite_drain: %s has %lld lines, expected %lld\n", path, lines, n);
        return -1;
    }
    for (i = 0; i < 2 && n > 0; i++) {
        json_error_t jerr;
        json_t *ev = json_loads(i ? last : first, 0, &jerr);
        if (!ev || !json_is_string(json_object_get(ev, "id")) ||
            !json_is_object(json_object_get(ev, "data"))) {
            fprintf(stderr, "bench_sqlite_drain: %s: %s line is not a CloudEvent: %s\n", path,
                    i ? "last" : "first", ev ? "no id/data" : jerr.text);
            json_decref(ev);
            goto out;
        }
        json_decref(ev);
    }
    rc = 0;
out:
    return rc;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One row of the table: the median over runs, the largest peak RSS. */
typedef struct row {
    const char *name;
    long long n;
    int which;
    double seconds[MAX_REPEAT];
    long maxrss_kib;
    int runs;
} row;

static double row_median(const row *rw)
{
    double s[MAX_REPEAT];
    memcpy(s, rw->seconds, sizeof s);
    qsort(s, (size_t)rw->runs, sizeof s[0], compare_double);
    return rw->runs % 2 ? s[rw->runs / 2] : (s[rw->runs / 2 - 1] + s[rw->runs / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_sqlite_drain [-n N] [-b BATCH] [-a AGGREGATES] [-r REPEAT]\n"
            "                          [--dir DIR] [--keep] [--baseline-pragmas SQL] [--listen]\n"
            "  -n N           pending messages to drain (default 1000000)\n"
            "  -b BATCH       relay batch size and baseline LIMIT (default 512)\n"
            "  -a AGGREGATES  distinct aggregate ids (default 10000)\n"
            "  -r REPEAT      runs per case, median reported (default 3, max %d)\n"
            "  --dir DIR      work directory (default: a new one under $TMPDIR or /tmp)\n"
            "  --keep         keep the work directory\n"
            "  --baseline-pragmas SQL  extra SQL the baseline runs after opening (to\n"
            "                 try SQLite settings, e.g. \"PRAGMA mmap_size=1000000000\")\n"
            "  --listen       also drain to discard: with the monitor (outbox_monitor on\n"
            "                 127.0.0.1) scraped every 100 ms, interleaved with the plain\n"
            "                 runs, and report the throughput cost\n",
            MAX_REPEAT);
}

static int parse_args(int argc, char **argv, config *cfg)
{
    int i;
    memset(cfg, 0, sizeof *cfg);
    cfg->n = 1000000;
    cfg->batch = 512;
    cfg->aggregates = 10000;
    cfg->repeat = 3;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        long long x;
        if (strcmp(a, "--keep") == 0) {
            cfg->keep = 1;
            continue;
        }
        if (strcmp(a, "--listen") == 0) {
            cfg->listen = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        }
        if (!v) goto bad;
        i++;
        if (strcmp(a, "--baseline-pragmas") == 0) {
            cfg->baseline_pragmas = v;
            continue;
        }
        if (strcmp(a, "--dir") == 0) {
            if (strlen(v) >= sizeof cfg->dir - 64) goto bad;
            snprintf(cfg->dir, sizeof cfg->dir, "%s", v);
            continue;
        }
        errno = 0;
        x = strtoll(v, &end, 10);
        if (errno || !end || *end || x <= 0) goto bad;
        if (strcmp(a, "-n") == 0)
            cfg->n = x;
        else if (strcmp(a, "-b") == 0 && x <= 1000000)
            cfg->batch = (unsigned)x;
        else if (strcmp(a, "-a") == 0 && x <= 100000000)
            cfg->aggregates = (unsigned)x;
        else if (strcmp(a, "-r") == 0 && x <= MAX_REPEAT)
            cfg->repeat = (int)x;
        else
            goto bad;
        continue;
    bad:
        fprintf(stderr, "bench_sqlite_drain: bad or missing value for %s\n", a);
        usage();
        return -1;
    }
    return 0;
}

static void remove_work_dir(const config *cfg, int made_dir)
{
    const char *names[] = {"source.db", "source-small.db", "run.db", "events.jsonl"};
    char p[600];
    size_t i;
    if (cfg->keep) {
        printf("work directory kept: %s\n", cfg->dir);
        return;
    }
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", cfg->dir, names[i]);
        remove_db(p);
    }
    if (made_dir) rmdir(cfg->dir);
}

int main(int argc, char **argv)
{
    config cfg;
    char src_big[600], src_small[600], run_db[600], events[600];
    row rows[6];
    run_result res, floor_res;
    int made_dir = 0, rc = 1, rep, k, nrows = 5;
    long long small_n;
    double base_median_big = 0, base_median_small = 0;

    if (parse_args(argc, argv, &cfg)) return 2;
    outbox_log_set(stderr_logger, NULL, OUTBOX_LOG_WARN);
    if (!cfg.dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(cfg.dir, sizeof cfg.dir, "%s/outbox-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(cfg.dir)) {
            perror("bench_sqlite_drain: mkdtemp");
            return 1;
        }
        made_dir = 1;
    } else if (mkdir(cfg.dir, 0755) == 0) {
        made_dir = 1;
    } else if (errno != EEXIST) {
        fprintf(stderr, "bench_sqlite_drain: mkdir %s: %s\n", cfg.dir, strerror(errno));
        return 1;
    }
    snprintf(src_big, sizeof src_big, "%s/source.db", cfg.dir);
    snprintf(src_small, sizeof src_small, "%s/source-small.db", cfg.dir);
    snprintf(run_db, sizeof run_db, "%s/run.db", cfg.dir);
    snprintf(events, sizeof events, "%s/events.jsonl", cfg.dir);
    small_n = cfg.n / 10 > 0 ? cfg.n / 10 : 1;

    printf("bench_sqlite_drain: liboutbox %s, SQLite %s, N=%lld, batch=%u, aggregates=%u, "
           "payload=%d bytes, runs per case=%d\n",
           outbox_version(), sqlite3_libversion(), cfg.n, cfg.batch, cfg.aggregates, PAYLOAD_BYTES,
           cfg.repeat);
    printf("work directory: %s\n", cfg.dir);
    if (cfg.baseline_pragmas) printf("baseline also runs: %s\n", cfg.baseline_pragmas);

    /* Fill both sources through the public enqueue API. */
    if (run_child(-1, &cfg, src_big, NULL, cfg.n, &res)) goto out;
    printf("fill: %lld messages enqueued in %.2f s = %.0f msg/s (outbox_msg_new + "
           "outbox_enqueue_sqlite, %d per transaction), peak RSS %.1f MiB, "
           "process CPU: user %.2f s, sys %.2f s\n",
           res.count, res.seconds, (double)res.count / res.seconds, FILL_TXN_ROWS,
           (double)res.maxrss_kib / 1024.0, res.user_seconds, res.sys_seconds);
    if (run_child(-1, &cfg, src_small, NULL, small_n, &res)) goto out;
    if (run_child(CASE_NOOP, &cfg, NULL, NULL, 0, &floor_res)) goto out;

    rows[0] = (row){"baseline", cfg.n, CASE_BASELINE, {0}, 0, 0};
    rows[1] = (row){case_names[CASE_DISCARD], cfg.n, CASE_DISCARD, {0}, 0, 0};
    rows[2] = (row){case_names[CASE_FILE], cfg.n, CASE_FILE, {0}, 0, 0};
    rows[3] = (row){"baseline", small_n, CASE_BASELINE, {0}, 0, 0};
    rows[4] = (row){case_names[CASE_DISCARD], small_n, CASE_DISCARD, {0}, 0, 0};
    rows[5] = (row){case_names[CASE_MONITORED], cfg.n, CASE_MONITORED, {0}, 0, 0};
    if (cfg.listen) nrows = 6;

    for (rep = 0; rep < cfg.repeat; rep++) {
        for (k = 0; k < nrows; k++) {
            row *rw = &rows[k];
            const char *src = rw->n == cfg.n ? src_big : src_small;
            remove_db(run_db);
            unlink(events);
            if (bench_copy_file(src, run_db)) goto out;
            if (run_child(rw->which, &cfg, run_db, events, rw->n, &res)) goto out;
            if (res.count != rw->n) {
                fprintf(stderr, "bench_sqlite_drain: %s handled %lld messages, expected %lld\n",
                        rw->name, res.count, rw->n);
                goto out;
            }
            if (verify_drained(run_db)) goto out;
            if (rw->which == CASE_FILE) {
                long long bytes;
                if (verify_file(events, rw->n, &bytes)) goto out;
                fprintf(stderr, "  file: %lld lines, %.1f MB checked\n", rw->n,
                        (double)bytes / 1e6);
            }
            rw->seconds[rw->runs++] = res.seconds;
            if (res.maxrss_kib > rw->maxrss_kib) rw->maxrss_kib = res.maxrss_kib;
            fprintf(stderr,
                    "  run %d/%d %-18s N=%-8lld %7.2f s %9.0f msg/s %6.1f MiB"
                    "  (CPU: user %.2f s, sys %.2f s; context switches: %ld waits, "
                    "%ld preemptions)\n",
                    rep + 1, cfg.repeat, rw->name, rw->n, res.seconds, (double)rw->n / res.seconds,
                    (double)res.maxrss_kib / 1024.0, res.user_seconds, res.sys_seconds,
                    res.voluntary_switches, res.involuntary_switches);
        }
    }
    remove_db(run_db);
    unlink(events);

    base_median_big = row_median(&rows[0]);
    base_median_small = row_median(&rows[3]);
    printf("\n%-18s %9s %9s %10s %11s %13s\n", "case", "messages", "seconds", "msg/s", "x baseline",
           "peak RSS MiB");
    for (k = 0; k < nrows; k++) {
        const row *rw = &rows[k];
        double med = row_median(rw);
        double base = rw->n == cfg.n ? base_median_big : base_median_small;
        printf("%-18s %9lld %9.2f %10.0f %11.2f %13.1f\n", rw->name, rw->n, med,
               (double)rw->n / med, med / base, (double)rw->maxrss_kib / 1024.0);
    }
    printf("(seconds: median of %d runs; x baseline: time / baseline time at the same N; "
           "peak RSS: largest of the runs, an idle forked child is %.1f MiB)\n",
           cfg.repeat, (double)floor_res.maxrss_kib / 1024.0);
    printf("targets: relay -> discard: within 1.5x of baseline: %s (%.2fx); "
           ">= 150000 msg/s: %s (%.0f); peak RSS at N vs N/10: %.1f vs %.1f MiB\n",
           row_median(&rows[1]) / base_median_big <= 1.5 ? "met" : "MISSED",
           row_median(&rows[1]) / base_median_big,
           (double)cfg.n / row_median(&rows[1]) >= 150000 ? "met" : "MISSED",
           (double)cfg.n / row_median(&rows[1]), (double)rows[1].maxrss_kib / 1024.0,
           (double)rows[4].maxrss_kib / 1024.0);
    if (cfg.listen) {
        double cost = row_median(&rows[5]) / row_median(&rows[1]) - 1.0;
        printf("monitor: relay -> discard: with /metrics scraped every 100 ms: %.0f msg/s vs "
               "%.0f msg/s without, throughput cost %.1f%% (target <= 2%%: %s)\n",
               (double)cfg.n / row_median(&rows[5]), (double)cfg.n / row_median(&rows[1]),
               cost * 100.0, cost <= 0.02 ? "met" : "MISSED");
    }
    rc = 0;
out:
    remove_work_dir(&cfg, made_dir);
    return rc;
}
