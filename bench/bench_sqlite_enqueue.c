/*
 * bench_sqlite_enqueue.c - what the outbox costs on the write path.
 *
 * Compares transactions per second of an application that inserts a
 * business row ("an order") with the same application that also enqueues an
 * OrderPlaced message in the same transaction (outbox_msg_new +
 * outbox_enqueue_sqlite, 300-byte JSON payload), at 1 and at 10 rows per
 * transaction.  Both variants build the same JSON text, use the same SQLite
 * settings as the store (WAL, synchronous=NORMAL unless --synchronous says
 * otherwise) and start from a fresh database with the outbox schema in
 * place; the only difference is the enqueue.  Each case runs R times,
 * interleaved, and the median is reported.  After each run the row counts
 * are checked (N orders; N or 0 outbox messages).
 *
 * Usage: bench_sqlite_enqueue [-n ROWS] [-r REPEAT] [--synchronous MODE]
 *                             [--dir DIR]
 */
#include "outbox.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { PAYLOAD_BYTES = 300, MAX_REPEAT = 25, NCASES = 4 };

typedef struct config {
    long long rows;
    int repeat;
    char synchronous[16];
    char dir[512];
} config;

typedef struct bench_case {
    const char *name;
    int rows_per_txn;
    int with_outbox;
    double seconds[MAX_REPEAT];
    double cpu_seconds[MAX_REPEAT]; /* user + system time of the process */
    int runs;
} bench_case;

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void stderr_logger(void *user, int level, const char *component, const char *message)
{
    (void)user;
    fprintf(stderr, "[%s] %s: %s\n", outbox_log_level_name(level), component, message);
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "bench_sqlite_enqueue: %s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* The order as JSON, exactly PAYLOAD_BYTES long; also the business row's
 * details column, so both variants do the same formatting work. */
static void make_payload(char out[PAYLOAD_BYTES + 1], long long i)
{
    int len =
        snprintf(out, PAYLOAD_BYTES + 1,
                 "{\"order_id\":\"o-%010lld\",\"customer\":\"c-%06lld\",\"amount_cents\":%lld,"
                 "\"currency\":\"EUR\",\"note\":\"",
                 i, i % 10000, 100 + (i * 37) % 99900);
    while (len < PAYLOAD_BYTES - 2) {
        out[len] = (char)('a' + (i + len) % 26);
        len++;
    }
    out[len++] = '"';
    out[len++] = '}';
    out[len] = '\0';
}

static long long count_rows(sqlite3 *db, const char *table)
{
    sqlite3_stmt *st = NULL;
    char sql[128];
    long long n = -1;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* Runs one case on a fresh database; *seconds gets the elapsed time of the
 * transactions only, *cpu the process CPU time spent in them.  Returns 0,
 * or -1 with the reason printed. */
static int run_case(const config *cfg, const bench_case *bc, double *seconds, double *cpu)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    outbox_error err = {0};
    char path[600], sql[64], payload[PAYLOAD_BYTES + 1], ref[32];
    long long i, orders, messages;
    double t0, c0;
    int rc = -1;

    snprintf(path, sizeof path, "%s/enqueue.db", cfg->dir);
    unlink(path);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench_sqlite_enqueue: cannot open %s\n", path);
        goto out;
    }
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", cfg->synchronous);
    if (exec_sql(db, "PRAGMA journal_mode=WAL") || exec_sql(db, sql)) goto out;
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) {
        fprintf(stderr, "bench_sqlite_enqueue: schema: %s\n", err.message);
        goto out;
    }
    if (exec_sql(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, "
                     "customer TEXT NOT NULL, total_cents INTEGER NOT NULL, "
                     "created_at INTEGER NOT NULL, details TEXT NOT NULL)"))
        goto out;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO orders(ref, customer, total_cents, created_at, details) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &ins, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_sqlite_enqueue: prepare: %s\n", sqlite3_errmsg(db));
        goto out;
    }

    c0 = cpu_seconds();
    t0 = monotonic_seconds();
    for (i = 0; i < cfg->rows; i++) {
        if (i % bc->rows_per_txn == 0 && exec_sql(db, "BEGIN IMMEDIATE")) goto out;
        snprintf(ref, sizeof ref, "o-%010lld", i);
        make_payload(payload, i);
        sqlite3_bind_text(ins, 1, ref, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, ref + 2, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, 100 + (i * 37) % 99900);
        sqlite3_bind_int64(ins, 4, (sqlite3_int64)i);
        sqlite3_bind_text(ins, 5, payload, PAYLOAD_BYTES, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fprintf(stderr, "bench_sqlite_enqueue: insert: %s\n", sqlite3_errmsg(db));
            goto out;
        }
        sqlite3_reset(ins);
        if (bc->with_outbox) {
            outbox_msg *msg = NULL;
            int erc = outbox_msg_new(&msg, "OrderPlaced", "Order", ref, payload, &err);
            if (erc == OUTBOX_OK) erc = outbox_enqueue_sqlite(db, msg, &err);
            outbox_msg_free(msg);
            if (erc != OUTBOX_OK) {
                fprintf(stderr, "bench_sqlite_enqueue: enqueue: %s\n", err.message);
                goto out;
            }
        }
        if (((i + 1) % bc->rows_per_txn == 0 || i + 1 == cfg->rows) && exec_sql(db, "COMMIT"))
            goto out;
    }
    *seconds = monotonic_seconds() - t0;
    *cpu = cpu_seconds() - c0;

    orders = count_rows(db, "orders");
    messages = count_rows(db, "outbox");
    if (orders != cfg->rows || messages != (bc->with_outbox ? cfg->rows : 0)) {
        fprintf(stderr, "bench_sqlite_enqueue: %s: %lld orders and %lld messages, expected %lld\n",
                bc->name, orders, messages, cfg->rows);
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(ins);
    if (db && !sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    unlink(path);
    {
        char p[640];
        snprintf(p, sizeof p, "%s-wal", path);
        unlink(p);
        snprintf(p, sizeof p, "%s-shm", path);
        unlink(p);
    }
    return rc;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *values, int runs)
{
    double s[MAX_REPEAT];
    memcpy(s, values, sizeof s);
    qsort(s, (size_t)runs, sizeof s[0], compare_double);
    return runs % 2 ? s[runs / 2] : (s[runs / 2 - 1] + s[runs / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_sqlite_enqueue [-n ROWS] [-r REPEAT] [--synchronous MODE] [--dir DIR]\n"
            "  -n ROWS             business rows per case (default 100000)\n"
            "  -r REPEAT           runs per case, median reported (default 3, max %d)\n"
            "  --synchronous MODE  PRAGMA synchronous: OFF, NORMAL (default), FULL\n"
            "  --dir DIR           directory for the database (default $TMPDIR or /tmp)\n",
            MAX_REPEAT);
}

static int parse_args(int argc, char **argv, config *cfg)
{
    const char *tmp = getenv("TMPDIR");
    int i;
    memset(cfg, 0, sizeof *cfg);
    cfg->rows = 100000;
    cfg->repeat = 3;
    snprintf(cfg->synchronous, sizeof cfg->synchronous, "NORMAL");
    snprintf(cfg->dir, sizeof cfg->dir, "%s", tmp && *tmp ? tmp : "/tmp");
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        long long x;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        }
        if (!v) goto bad;
        i++;
        if (strcmp(a, "--dir") == 0) {
            if (strlen(v) >= sizeof cfg->dir - 64) goto bad;
            snprintf(cfg->dir, sizeof cfg->dir, "%s", v);
            continue;
        }
        if (strcmp(a, "--synchronous") == 0) {
            if (strcmp(v, "OFF") && strcmp(v, "NORMAL") && strcmp(v, "FULL")) goto bad;
            snprintf(cfg->synchronous, sizeof cfg->synchronous, "%s", v);
            continue;
        }
        errno = 0;
        x = strtoll(v, &end, 10);
        if (errno || !end || *end || x <= 0) goto bad;
        if (strcmp(a, "-n") == 0)
            cfg->rows = x;
        else if (strcmp(a, "-r") == 0 && x <= MAX_REPEAT)
            cfg->repeat = (int)x;
        else
            goto bad;
        continue;
    bad:
        fprintf(stderr, "bench_sqlite_enqueue: bad or missing value for %s\n", a);
        usage();
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    config cfg;
    bench_case cases[NCASES] = {
        {"business row", 1, 0, {0}, {0}, 0},
        {"row + enqueue", 1, 1, {0}, {0}, 0},
        {"business row", 10, 0, {0}, {0}, 0},
        {"row + enqueue", 10, 1, {0}, {0}, 0},
    };
    int rep, k;

    if (parse_args(argc, argv, &cfg)) return 2;
    outbox_log_set(stderr_logger, NULL, OUTBOX_LOG_WARN);
    printf("bench_sqlite_enqueue: liboutbox %s, SQLite %s, %lld rows per case, WAL, "
           "synchronous=%s, payload=%d bytes, runs per case=%d\n",
           outbox_version(), sqlite3_libversion(), cfg.rows, cfg.synchronous, PAYLOAD_BYTES,
           cfg.repeat);
    for (rep = 0; rep < cfg.repeat; rep++) {
        for (k = 0; k < NCASES; k++) {
            double s = 0, c = 0;
            if (run_case(&cfg, &cases[k], &s, &c)) return 1;
            cases[k].cpu_seconds[cases[k].runs] = c;
            cases[k].seconds[cases[k].runs++] = s;
            fprintf(stderr, "  run %d/%d %-14s %2d/txn %7.2f s (CPU %.2f s)\n", rep + 1, cfg.repeat,
                    cases[k].name, cases[k].rows_per_txn, s, c);
        }
    }
    printf("\n%-14s %8s %8s %9s %10s %9s %10s %11s\n", "case", "rows/txn", "txns", "seconds",
           "txn/s", "us/row", "overhead", "CPU us/row");
    for (k = 0; k < NCASES; k++) {
        const bench_case *bc = &cases[k];
        double med = median(bc->seconds, bc->runs);
        long long txns = (cfg.rows + bc->rows_per_txn - 1) / bc->rows_per_txn;
        char overhead[32] = "-";
        if (bc->with_outbox)
            snprintf(overhead, sizeof overhead, "%+.0f%%",
                     (med / median(cases[k - 1].seconds, cases[k - 1].runs) - 1.0) * 100.0);
        printf("%-14s %8d %8lld %9.2f %10.0f %9.2f %10s %11.2f\n", bc->name, bc->rows_per_txn, txns,
               med, (double)txns / med, med * 1e6 / (double)cfg.rows, overhead,
               median(bc->cpu_seconds, bc->runs) * 1e6 / (double)cfg.rows);
    }
    printf("(seconds: median of %d runs; overhead: extra time of row + enqueue over the "
           "business row alone at the same rows/txn; CPU: user + system time of the process, "
           "the rest of the elapsed time is spent waiting: on the disk, or for a CPU when "
           "the machine is busy)\n",
           cfg.repeat);
    return 0;
}
