/*
 * bench_outbox.h - filling and checking the outboxes the broker benchmarks
 * drain (bench_nats, bench_amqp): N pending messages of the same bytes
 * (bench_payload JSON over A aggregates "order-NNNNNN", type OrderPlaced,
 * aggregate type Order) in a SQLite file through the public enqueue API,
 * or in a PostgreSQL outbox (schema bench_outbox) inserted server-side;
 * what is left in them after a relay ran; the relay run once in a child
 * (bench_common.h) and the table the results are printed in.  For WAL
 * capture: the replication slot made and dropped, and messages emitted to
 * the WAL server-side.
 *
 * Static, like bench_common.h: each program takes what it uses.
 */
#ifndef OUTBOX_BENCH_OUTBOX_H
#define OUTBOX_BENCH_OUTBOX_H

#include "bench_common.h"

#include "outbox.h"
#include <sqlite3.h>
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#include <pthread.h>
#include <stdatomic.h>
#endif

enum { BENCH_FILL_TXN_ROWS = 50000 };

static inline int bench_sql_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "bench: %s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Fills path with n pending messages of payload_bytes through the public
 * API; 0, or -1 (printed). */
static inline int bench_sqlite_fill(const char *path, long long n, unsigned aggregates,
                                    size_t payload_bytes)
{
    sqlite3 *db = NULL;
    outbox_error err = {0};
    char payload[4096], agg[32];
    double t0 = bench_now();
    long long i;
    int rc = -1;

    if (payload_bytes >= sizeof payload) return -1;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench: cannot open %s\n", path);
        goto out;
    }
    if (bench_sql_exec(db, "PRAGMA journal_mode=WAL") ||
        bench_sql_exec(db, "PRAGMA synchronous=NORMAL"))
        goto out;
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) {
        fprintf(stderr, "bench: outbox_schema_init_sqlite: %s\n", err.message);
        goto out;
    }
    for (i = 0; i < n; i++) {
        outbox_msg *m = NULL;
        unsigned a = (unsigned)(i % aggregates);
        int erc;
        if (i % BENCH_FILL_TXN_ROWS == 0 && bench_sql_exec(db, "BEGIN IMMEDIATE")) goto out;
        bench_payload(payload, payload_bytes, i, a);
        snprintf(agg, sizeof agg, "order-%06u", a);
        erc = outbox_msg_new(&m, "OrderPlaced", "Order", agg, payload, &err);
        if (erc == OUTBOX_OK) erc = outbox_enqueue_sqlite(db, m, &err);
        outbox_msg_free(m);
        if (erc != OUTBOX_OK) {
            fprintf(stderr, "bench: enqueue: %s\n", err.message);
            goto out;
        }
        if (((i + 1) % BENCH_FILL_TXN_ROWS == 0 || i + 1 == n) && bench_sql_exec(db, "COMMIT"))
            goto out;
    }
    if (bench_sql_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)")) goto out;
    printf("fill: %lld messages into SQLite in %.1f s\n", n, bench_now() - t0);
    rc = 0;
out:
    sqlite3_close(db);
    return rc;
}

/* Rows left in the outbox of path (-1 on error). */
static inline long long bench_sqlite_left(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long left = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM outbox", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        left = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return left;
}

/* Removes a SQLite file with its -wal and -shm. */
static inline void bench_remove_db(const char *path)
{
    char p[700];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

#ifdef OUTBOX_HAVE_LIBPQ
/* Inserts n pending rows into bench_outbox.outbox server-side (emptied
 * first): payloads of payload_bytes as jsonb text ({"n": i, "pad":
 * "x..."}). */
static inline void bench_pg_fill(PGconn *conn, long long n, unsigned aggregates, int payload_bytes)
{
    char sql[1024];
    double t0 = bench_now();
    pgh_exec(conn, "DELETE FROM bench_outbox.outbox");
    snprintf(sql, sizeof sql,
             "INSERT INTO bench_outbox.outbox (id, type, aggregate_type, aggregate_id, payload)"
             " SELECT bench_outbox.uuid_v7(), 'OrderPlaced', 'Order',"
             " 'order-' || lpad((i %% %u)::text, 6, '0'),"
             " jsonb_build_object('n', i, 'pad', repeat('x', %d - 18 - length(i::text)))"
             " FROM generate_series(0, %lld) i",
             aggregates, payload_bytes, n - 1);
    pgh_exec(conn, sql);
    pgh_exec(conn, "VACUUM ANALYZE bench_outbox.outbox");
    pgh_exec(conn, "CHECKPOINT"); /* the fill's write-back, before the timed run */
    printf("fill: %lld messages into PostgreSQL in %.1f s (payload %lld bytes as jsonb text)\n", n,
           bench_now() - t0,
           (long long)pgh_count(conn, "SELECT length(payload::text) FROM bench_outbox.outbox"
                                      " LIMIT 1"));
}

/* Rows of bench_outbox.outbox not sent. */
static inline long long bench_pg_left(PGconn *conn)
{
    return (long long)pgh_count(conn, "SELECT count(*) FROM bench_outbox.outbox"
                                      " WHERE status <> 'sent'");
}

/* Drops the schema bench_outbox (with its rows) and creates it again.  0,
 * or -1 (printed). */
static inline int bench_pg_schema_new(PGconn *conn)
{
    outbox_error err = {0};
    pgh_exec(conn, "DROP SCHEMA IF EXISTS bench_outbox CASCADE");
    if (outbox_schema_init_pg(conn, "bench_outbox", &err) == OUTBOX_OK) return 0;
    fprintf(stderr, "bench: outbox_schema_init_pg: %s\n", err.message);
    return -1;
}

/* WAL capture (bench_pg_drain --capture wal, bench_nats --pg-wal). */

/* Creates (create = 1) or drops (0) the replication slot and the
 * publication a capture=wal relay on store_url reads (default names
 * outbox_<schema>).  A drop right after a relay stopped can find its
 * walsender still exiting (OUTBOX_EBUSY): it is tried again for up to
 * 10 s.  *lag_bytes (may be NULL) gets the slot's lag as found (a drop:
 * before it).  0, or -1 (printed). */
static inline int bench_pg_wal_slot(const char *store_url, int create, long long *lag_bytes)
{
    outbox_store *store = NULL;
    outbox_wal_slot slot;
    outbox_error err = {0};
    int code, tries = 0;

    memset(&slot, 0, sizeof slot);
    if (outbox_store_open(store_url, &store, &err) != OUTBOX_OK) {
        fprintf(stderr, "bench: %s: %s\n", store_url, err.message);
        return -1;
    }
    for (;;) {
        code = create ? outbox_store_wal_setup(store, NULL, NULL, &slot, sizeof slot, &err)
                      : outbox_store_wal_drop(store, NULL, NULL, &slot, sizeof slot, &err);
        if (code != OUTBOX_EBUSY || ++tries > 100) break;
        usleep(100000);
    }
    outbox_store_close(store);
    if (code != OUTBOX_OK) {
        fprintf(stderr, "bench: %s the replication slot: %s\n", create ? "creating" : "dropping",
                err.message);
        return -1;
    }
    if (lag_bytes) *lag_bytes = (long long)slot.lag_bytes;
    return 0;
}

/* Emits n messages to the WAL server-side, per_txn to a committed
 * transaction: SELECT bench_outbox.emit(<args>) for i from 0 to n - 1,
 * args being emit's arguments as SQL over i, in a DO block that commits
 * as it goes (synchronous_commit off for the fill only).  A slot must
 * exist before, or nothing keeps the messages.  Then a CHECKPOINT, so that
 * the fill's write-back stays out of the timed run.  Returns the seconds
 * it took; *wal_bytes gets the WAL it wrote. */
static inline double bench_pg_emit_fill(PGconn *conn, long long n, int per_txn, const char *args,
                                        long long *wal_bytes)
{
    static const char wal_pos[] = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint";
    char sql[2048];
    double t0 = bench_now();
    long long start = (long long)pgh_count(conn, wal_pos);
    pgh_exec(conn, "SET synchronous_commit = off");
    snprintf(sql, sizeof sql,
             "DO $$ BEGIN FOR k IN 0..%lld LOOP PERFORM bench_outbox.emit(%s)"
             " FROM generate_series(k::bigint * %d, least((k::bigint + 1) * %d, %lld) - 1) i;"
             " COMMIT; END LOOP; END $$",
             (n - 1) / per_txn, args, per_txn, per_txn, n);
    pgh_exec(conn, sql);
    pgh_exec(conn, "RESET synchronous_commit");
    pgh_exec(conn, "CHECKPOINT");
    *wal_bytes = (long long)pgh_count(conn, wal_pos) - start;
    return bench_now() - t0;
}

/* CPU seconds (user + system) of process pid from /proc; 0 when gone. */
static inline double bench_proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    size_t n;
    char *q;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    if (!(f = fopen(path, "r"))) return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    q = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!q || sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The CPU a case costs the PostgreSQL server this program started, which
 * the machine's load moves less than the case's time: its processes'.
 * A relay's backends are born and end within the case, so a thread samples
 * the postmaster's children every 10 ms and keeps each one's last figure
 * (what a process uses in its last 10 ms is missed). */
#define BENCH_PG_CPU_MAX 256
typedef struct bench_pg_cpu {
    pthread_t th;
    atomic_int stop;
    long server; /* the postmaster */
    int n;
    long pid[BENCH_PG_CPU_MAX];
    double first[BENCH_PG_CPU_MAX], last[BENCH_PG_CPU_MAX];
    double own_s; /* the sampling thread's own CPU */
} bench_pg_cpu;

static inline void bench_pg_cpu_sample(bench_pg_cpu *w, int initial)
{
    char path[96];
    long child;
    FILE *f;
    int i;
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", w->server, w->server);
    if (!(f = fopen(path, "r"))) return;
    while (fscanf(f, "%ld", &child) == 1) {
        double cpu = bench_proc_cpu_s(child);
        for (i = 0; i < w->n && w->pid[i] != child; i++)
            ;
        if (i == w->n) {
            if (i == BENCH_PG_CPU_MAX) continue;
            w->n++;
            w->pid[i] = child;
            w->first[i] = initial ? cpu : 0; /* born since: from 0 */
            w->last[i] = 0;
        }
        if (cpu > w->last[i]) w->last[i] = cpu;
    }
    fclose(f);
}

static inline void *bench_pg_cpu_main(void *arg)
{
    bench_pg_cpu *w = arg;
    struct timespec ts;
    while (!atomic_load(&w->stop)) {
        usleep(10000);
        bench_pg_cpu_sample(w, 0);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    w->own_s = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    return NULL;
}

/* Starts sampling server's processes; 0, or -1 (no server of our own, or
 * no thread: nothing to stop). */
static inline int bench_pg_cpu_start(bench_pg_cpu *w, long server)
{
    memset(w, 0, sizeof *w);
    if (server <= 0) return -1;
    w->server = server;
    bench_pg_cpu_sample(w, 1);
    return pthread_create(&w->th, NULL, bench_pg_cpu_main, w) == 0 ? 0 : -1;
}

/* Stops it: the server's CPU seconds since the start, and in *top_s (when
 * not NULL) the busiest process's. */
static inline double bench_pg_cpu_stop(bench_pg_cpu *w, double *top_s)
{
    double total = 0, top = 0;
    int i;
    atomic_store(&w->stop, 1);
    pthread_join(w->th, NULL);
    bench_pg_cpu_sample(w, 0);
    for (i = 0; i < w->n; i++) {
        double d = w->last[i] - w->first[i];
        total += d;
        if (d > top) top = d;
    }
    if (top_s) *top_s = top;
    return total;
}
#endif

/* ------------------------------------------------------------------------
 * The relay in a child, and the result table
 * ---------------------------------------------------------------------- */

typedef struct bench_relay_case {
    char store_url[700];
    char to_url[700];
    int serial; /* OUTBOX_RELAY_PIPELINE=0: the relay's serial loop */
    unsigned batch;
    long long expect; /* messages it must publish */
} bench_relay_case;

/* Child: the relay, once, from store_url to to_url. */
static inline void bench_run_relay(void *arg, bench_report *r)
{
    const bench_relay_case *c = arg;
    outbox_relay *relay = NULL;
    outbox_relay_options opts;
    outbox_relay_stats stats;
    outbox_error err = {0};
    double t0 = bench_now(), cpu0 = bench_thread_cpu();

    outbox_relay_options_init(&opts);
    opts.once = 1;
    opts.batch_size = c->batch;
    setenv("OUTBOX_RELAY_PIPELINE", c->serial ? "0" : "1", 1);
    if (outbox_relay_new(&relay, c->store_url, c->to_url, &opts, &err) != OUTBOX_OK) {
        bench_fail(r, "outbox_relay_new: %s", err.message);
        goto out;
    }
    if (outbox_relay_run(relay, &err) != OUTBOX_OK) {
        bench_fail(r, "outbox_relay_run: %s", err.message);
        goto out;
    }
    /* Every message is confirmed and recorded when run returns: the time
     * stops here, as the ceilings' stop at their last confirm. */
    r->seconds = bench_now() - t0;
    r->thread_cpu_seconds = bench_thread_cpu() - cpu0;
    outbox_relay_get_stats(relay, &stats);
    t0 = bench_now();
    outbox_relay_free(relay);
    relay = NULL;
    r->teardown_seconds = bench_now() - t0;
    r->count = (long long)stats.published;
    if (stats.retried || stats.failed) {
        bench_fail(r, "relay retried %llu, failed %llu", (unsigned long long)stats.retried,
                   (unsigned long long)stats.failed);
        goto out;
    }
    if (r->count != c->expect) {
        bench_fail(r, "relay published %lld of %lld", r->count, c->expect);
        goto out;
    }
    r->ok = 1;
out:
    outbox_relay_free(relay);
}

static inline void bench_print_header(void)
{
    printf("%-34s %9s %8s %10s %8s %10s %13s %7s\n", "case", "messages", "seconds", "msg/s",
           "/ceiling", "peak RSS", "CPU user+sys", "close");
}

static inline void bench_print_row(const char *name, const bench_result *res, double ceiling)
{
    double rate = (double)res->count / res->seconds;
    char ratio[16] = "-";
    if (ceiling > 0) snprintf(ratio, sizeof ratio, "%.2f", rate / ceiling);
    printf("%-34s %9lld %8.2f %10.0f %8s %6.1f MiB %6.2f+%.2f s %5.2f s\n", name, res->count,
           res->seconds, rate, ratio, (double)res->maxrss_kib / 1024.0, res->user_seconds,
           res->sys_seconds, res->teardown_seconds);
    fflush(stdout);
}

/* Copies the filled database to copy, runs the relay (batch, expect) from
 * it to to_url in a child, checks that it is empty afterwards.  0, or -1 (printed). */
static inline int bench_sqlite_relay_case(const char *name, const char *master, const char *copy,
                                          const char *to_url, int serial, unsigned batch,
                                          long long expect, void (*in_child)(void),
                                          bench_result *res)
{
    bench_relay_case c;
    long long left;
    c.serial = serial;
    c.batch = batch;
    c.expect = expect;
    bench_remove_db(copy);
    if (bench_copy_file(master, copy)) return -1;
    snprintf(c.store_url, sizeof c.store_url, "sqlite:%s", copy);
    snprintf(c.to_url, sizeof c.to_url, "%s", to_url);
    if (bench_run_child(name, bench_run_relay, &c, in_child, res)) return -1;
    left = bench_sqlite_left(copy);
    bench_remove_db(copy);
    if (left != 0) {
        fprintf(stderr, "bench: %s: %lld rows left in the outbox\n", name, left);
        return -1;
    }
    return 0;
}

#endif /* OUTBOX_BENCH_OUTBOX_H */
