/*
 * bench_pg_enqueue.c - what adding the outbox message costs a PostgreSQL
 * business transaction, for every way of adding it, in one run:
 *
 *   transactions  realistic: insert an order, insert its 3 order lines,
 *                 update 3 stock rows (of 10,000; in sku order, so two
 *                 transactions never deadlock); one-row: insert an order
 *   message       none (the baseline); a direct prepared INSERT INTO
 *                 <schema>.outbox; SELECT <schema>.enqueue(...);
 *                 outbox_enqueue_commit_pg (the message and the COMMIT in
 *                 one round trip); SELECT <schema>.emit(...) (to the WAL);
 *                 outbox_emit_commit_pg
 *
 * Every message is the same OrderPlaced with a 300-byte JSON payload, made
 * by outbox_msg_new (a client-side UUIDv7 id, which every variant passes,
 * so the SQL functions do the work of the INSERT they wrap and no more);
 * the business statements are prepared.  C connections (threads, default 8)
 * run each case for T seconds (after a 1 s warm-up) and R rounds go
 * through all the cases in turn, so that load from elsewhere spreads over
 * all of them.  Reported: the median throughput of the rounds, its cost
 * against the baseline of the same transaction, and p50/p99 of the
 * transactions' latencies (BEGIN sent to COMMIT answered) over all rounds,
 * and the CPU time per transaction (median of the rounds) of the client
 * threads and of their backends (from /proc/<pid>/schedstat; the WAL
 * writer and the checkpointer are not counted), which load from elsewhere
 * disturbs less than the rates.
 *
 * The server is a fresh cluster started by tests/support/pg.h: fsync on,
 * wal_level=logical, shared_buffers 64MB.  No relay runs and no slot
 * exists (a slot would keep the emitted WAL; decoding is the relay's cost,
 * not the producer's).
 *
 * With --unix, every connection goes through the server's Unix socket
 * instead of TCP on 127.0.0.1 (an application on the database host).
 * Usage: bench_pg_enqueue [--seconds T] [--rounds R] [--clients C] [--unix]
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "bench_pg_enqueue: this build has no PostgreSQL store (libpq not found)\n");
    return 2;
}
#else

#include "bench_common.h"
#include "outbox.h"
#include "support/pg.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>

enum { MAX_CLIENTS = 64, MAX_ROUNDS = 15, PAYLOAD_BYTES = 300, STOCK_ROWS = 10000 };

typedef enum message_kind {
    MSG_NONE,
    MSG_INSERT,
    MSG_ENQUEUE_SQL,
    MSG_ENQUEUE_COMMIT,
    MSG_EMIT_SQL,
    MSG_EMIT_COMMIT,
    MSG_KINDS
} message_kind;

static const char *const message_name[MSG_KINDS] = {
    "no message (baseline)",      "+ direct INSERT",        "+ SELECT outbox.enqueue()",
    "+ outbox_enqueue_commit_pg", "+ SELECT outbox.emit()", "+ outbox_emit_commit_pg",
};

/* The same seven parameters for all three statements (the order of the
 * library's own INSERT): id, occurred_at (unix us), type, aggregate_type,
 * aggregate_id, payload, headers. */
static const char insert_sql[] =
    "INSERT INTO outbox.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
    " $3, $4, $5, $6::jsonb, $7::jsonb)";
static const char enqueue_sql[] =
    "SELECT outbox.enqueue($3, $5, $6::jsonb, $7::jsonb, $4, $1::uuid,"
    " 'epoch'::timestamptz + $2::bigint * interval '1 microsecond')";
static const char emit_sql[] = "SELECT outbox.emit($3, $5, $6::jsonb, $7::jsonb, $4, $1::uuid,"
                               " 'epoch'::timestamptz + $2::bigint * interval '1 microsecond')";

typedef struct bench_case {
    int realistic; /* else one row */
    message_kind kind;
} bench_case;

typedef struct worker {
    const char *conninfo;
    bench_case bc;
    int index;
    double seconds;
    atomic_int *stop;
    long long txns;
    double *lat_us; /* latencies of the measured transactions */
    size_t lat_n, lat_cap;
    double client_cpu_s, server_cpu_s; /* this thread's and its backend's, measured part */
    char error[700];
} worker;

static int prepare(PGconn *c, const char *name, const char *sql, int nparams, char *error)
{
    PGresult *r = PQprepare(c, name, sql, nparams, NULL);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) snprintf(error, 700, "preparing %s: %s", name, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* Runs a statement that must succeed; 0 with w->error set otherwise. */
static int run(worker *w, PGresult *r, const char *what)
{
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) snprintf(w->error, sizeof w->error, "%s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* CPU seconds a thread or process has run: the first field of
 * /proc/<pid>/schedstat (nanoseconds); 0 when unreadable. */
static double schedstat_s(const char *path)
{
    unsigned long long ns = 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (fscanf(f, "%llu", &ns) != 1) ns = 0;
    fclose(f);
    return (double)ns / 1e9;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* One transaction of w's case; 0 with w->error on failure. */
static int transaction(worker *w, PGconn *c, unsigned *seed, long long i)
{
    char payload[PAYLOAD_BYTES + 1], customer[32], order_id[32], occurred[32], agg[48];
    char line_no[4], sku[3][16];
    long skus[3];
    const char *params[7];
    outbox_msg *m = NULL;
    outbox_error err;
    int ok = 1;

    snprintf(customer, sizeof customer, "c-%u", rand_r(seed) % 100000);
    if (!run(w, PQexec(c, "BEGIN"), "BEGIN")) return 0;
    params[0] = customer;
    PGresult *r = PQexecPrepared(c, "order", 1, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) return run(w, r, "inserting the order");
    snprintf(order_id, sizeof order_id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (w->bc.realistic) {
        skus[0] = 1 + rand_r(seed) % STOCK_ROWS;
        do
            skus[1] = 1 + rand_r(seed) % STOCK_ROWS;
        while (skus[1] == skus[0]);
        do
            skus[2] = 1 + rand_r(seed) % STOCK_ROWS;
        while (skus[2] == skus[0] || skus[2] == skus[1]);
        qsort(skus, 3, sizeof skus[0], cmp_long);
        for (int k = 0; k < 3 && ok; k++) {
            snprintf(line_no, sizeof line_no, "%d", k + 1);
            snprintf(sku[k], sizeof sku[k], "%ld", skus[k]);
            params[0] = order_id;
            params[1] = line_no;
            params[2] = sku[k];
            ok = run(w, PQexecPrepared(c, "line", 3, params, NULL, NULL, 0), "an order line");
        }
        for (int k = 0; k < 3 && ok; k++) {
            params[0] = sku[k];
            ok = run(w, PQexecPrepared(c, "stock", 1, params, NULL, NULL, 0), "a stock row");
        }
        if (!ok) return 0;
    }
    if (w->bc.kind == MSG_NONE) return run(w, PQexec(c, "COMMIT"), "COMMIT");

    snprintf(agg, sizeof agg, "o-%s", order_id);
    bench_payload(payload, PAYLOAD_BYTES, i, (unsigned)w->index);
    if (outbox_msg_new(&m, "OrderPlaced", "Order", agg, payload, &err) != OUTBOX_OK) {
        snprintf(w->error, sizeof w->error, "outbox_msg_new: %s", err.message);
        return 0;
    }
    snprintf(occurred, sizeof occurred, "%lld", (long long)outbox_msg_occurred_at(m));
    params[0] = outbox_msg_id(m);
    params[1] = occurred;
    params[2] = outbox_msg_type(m);
    params[3] = outbox_msg_aggregate_type(m);
    params[4] = outbox_msg_aggregate_id(m);
    params[5] = outbox_msg_payload(m);
    params[6] = outbox_msg_headers_json(m);
    const outbox_msg *one[] = {m};
    switch (w->bc.kind) {
    case MSG_INSERT:
        ok = run(w, PQexecPrepared(c, "insert", 7, params, NULL, NULL, 0), "the INSERT") &&
             run(w, PQexec(c, "COMMIT"), "COMMIT");
        break;
    case MSG_ENQUEUE_SQL:
        ok = run(w, PQexecPrepared(c, "enqueue", 7, params, NULL, NULL, 0), "enqueue") &&
             run(w, PQexec(c, "COMMIT"), "COMMIT");
        break;
    case MSG_EMIT_SQL:
        ok = run(w, PQexecPrepared(c, "emit", 7, params, NULL, NULL, 0), "emit") &&
             run(w, PQexec(c, "COMMIT"), "COMMIT");
        break;
    case MSG_ENQUEUE_COMMIT:
    case MSG_EMIT_COMMIT:
        if ((w->bc.kind == MSG_ENQUEUE_COMMIT ? outbox_enqueue_commit_pg : outbox_emit_commit_pg)(
                c, NULL, one, 1, &err) != OUTBOX_OK) {
            snprintf(w->error, sizeof w->error, "%s: %s", message_name[w->bc.kind], err.message);
            ok = 0;
        }
        break;
    default:
        break;
    }
    outbox_msg_free(m);
    return ok;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    PGconn *c = PQconnectdb(w->conninfo);
    unsigned seed = 7919u * (unsigned)(w->index + 1);
    double start, end, t0, client0 = 0, server0 = 0;
    char backend[64];
    long long i = 0;
    int measuring = 0;

    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(w->error, sizeof w->error, "connecting: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    if (!prepare(c, "order", "INSERT INTO orders (customer, total) VALUES ($1, 42.50) RETURNING id",
                 1, w->error) ||
        !prepare(c, "line",
                 "INSERT INTO order_lines (order_id, line, sku, qty) VALUES ($1, $2, $3, 1)", 3,
                 w->error) ||
        !prepare(c, "stock", "UPDATE stock SET qty = qty - 1 WHERE sku = $1", 1, w->error) ||
        !prepare(c, "insert", insert_sql, 7, w->error) ||
        !prepare(c, "enqueue", enqueue_sql, 7, w->error) ||
        !prepare(c, "emit", emit_sql, 7, w->error)) {
        PQfinish(c);
        return NULL;
    }
    snprintf(backend, sizeof backend, "/proc/%d/schedstat", PQbackendPID(c));
    start = bench_now();
    end = start + 1.0 + w->seconds;
    while (!atomic_load(w->stop)) {
        t0 = bench_now();
        if (t0 >= end) break;
        if (!measuring && t0 >= start + 1.0) {
            measuring = 1;
            client0 = thread_cpu_s();
            server0 = schedstat_s(backend);
        }
        if (!transaction(w, c, &seed, i++)) {
            PQclear(PQexec(c, "ROLLBACK"));
            atomic_store(w->stop, 1);
            break;
        }
        if (t0 < start + 1.0) continue; /* warm-up */
        w->txns++;
        if (w->lat_n == w->lat_cap) {
            size_t cap = w->lat_cap ? 2 * w->lat_cap : 4096;
            double *p = realloc(w->lat_us, cap * sizeof *p);
            if (!p) {
                snprintf(w->error, sizeof w->error, "out of memory");
                atomic_store(w->stop, 1);
                break;
            }
            w->lat_us = p;
            w->lat_cap = cap;
        }
        w->lat_us[w->lat_n++] = (bench_now() - t0) * 1e6;
    }
    if (measuring) {
        w->client_cpu_s = thread_cpu_s() - client0;
        w->server_cpu_s = schedstat_s(backend) - server0;
    }
    PQfinish(c);
    return NULL;
}

typedef struct case_result {
    double txn_s[MAX_ROUNDS];
    double client_us[MAX_ROUNDS], server_us[MAX_ROUNDS]; /* CPU per transaction */
    double *lat_us;                                      /* all rounds */
    size_t lat_n;
} case_result;

/* Runs one case with `clients` connections; appends its latencies to res.
 * Returns the throughput, or -1 with the reason printed. */
static double run_case(const char *conninfo, bench_case bc, int clients, double seconds, int round,
                       case_result *res)
{
    static worker w[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    atomic_int stop = 0;
    long long txns = 0;
    double client_s = 0, server_s = 0;
    size_t total = res->lat_n;
    int failed = 0;

    for (int k = 0; k < clients; k++) {
        memset(&w[k], 0, sizeof w[k]);
        w[k].conninfo = conninfo;
        w[k].bc = bc;
        w[k].index = k;
        w[k].seconds = seconds;
        w[k].stop = &stop;
        if (pthread_create(&th[k], NULL, worker_main, &w[k]) != 0) {
            fprintf(stderr, "bench_pg_enqueue: pthread_create failed\n");
            exit(1);
        }
    }
    for (int k = 0; k < clients; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < clients; k++) {
        if (w[k].error[0]) {
            fprintf(stderr, "bench_pg_enqueue: %s, %s: %s\n",
                    bc.realistic ? "realistic" : "one-row", message_name[bc.kind], w[k].error);
            failed = 1;
        }
        txns += w[k].txns;
        client_s += w[k].client_cpu_s;
        server_s += w[k].server_cpu_s;
        total += w[k].lat_n;
    }
    double *p = realloc(res->lat_us, (total ? total : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_pg_enqueue: out of memory\n");
        exit(1);
    }
    res->lat_us = p;
    for (int k = 0; k < clients; k++) {
        memcpy(res->lat_us + res->lat_n, w[k].lat_us, w[k].lat_n * sizeof *p);
        res->lat_n += w[k].lat_n;
        free(w[k].lat_us);
    }
    res->client_us[round] = txns ? client_s * 1e6 / (double)txns : 0;
    res->server_us[round] = txns ? server_s * 1e6 / (double)txns : 0;
    return failed ? -1 : (double)txns / seconds;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double percentile(const double *sorted, size_t n, double q)
{
    size_t k = (size_t)(q * (double)(n - 1) + 0.5);
    return n ? sorted[k < n ? k : n - 1] : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_pg_enqueue [--seconds T] [--rounds R] [--clients C] [--unix]\n"
                    "  --unix  every connection through the server's Unix socket (default: TCP "
                    "on 127.0.0.1)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static pgh_server server;
    static case_result results[2][MSG_KINDS];
    double seconds = 10;
    int rounds = 3, clients = 8, unix_socket = 0;
    char conninfo[700];
    outbox_error err;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--clients") == 0 && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (strcmp(argv[i], "--unix") == 0)
            unix_socket = 1;
        else
            usage();
    }
    if (seconds <= 0 || rounds < 1 || rounds > MAX_ROUNDS || clients < 1 || clients > MAX_CLIENTS)
        usage();

    pgh_start(&server);
    if (unix_socket)
        pgh_unix_url(&server, conninfo, sizeof conninfo);
    else
        snprintf(conninfo, sizeof conninfo, "%s", server.conninfo);
    PGconn *c = pgh_connect(&server);
    if (outbox_schema_init_pg(c, NULL, &err) != OUTBOX_OK) {
        fprintf(stderr, "bench_pg_enqueue: %s\n", err.message);
        return 1;
    }
    pgh_exec(c, "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " customer text NOT NULL, total numeric NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now())");
    pgh_exec(c, "CREATE TABLE order_lines (order_id bigint NOT NULL, line int NOT NULL,"
                " sku int NOT NULL, qty int NOT NULL, PRIMARY KEY (order_id, line))");
    pgh_exec(c, "CREATE TABLE stock (sku int PRIMARY KEY, qty bigint NOT NULL)");
    pgh_exec(c, "INSERT INTO stock SELECT g, 1000000000 FROM generate_series(1, 10000) g");
    pgh_exec(c, "VACUUM ANALYZE");
    pgh_exec(c, "CHECKPOINT");

    PGresult *r = PQexec(c, "SELECT current_setting('wal_level'), current_setting('fsync')");
    printf("bench_pg_enqueue: PostgreSQL %d, %d connections, %.0f s per case (+1 s warm-up), "
           "%d rounds; wal_level %s, fsync %s; %s\n",
           PQserverVersion(c), clients, seconds, rounds, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1),
           unix_socket ? "through the Unix socket" : "over TCP on 127.0.0.1");
    PQclear(r);
    fflush(stdout);
    for (int round = 0; round < rounds; round++) {
        for (int t = 0; t < 2; t++) {
            for (int k = 0; k < MSG_KINDS; k++) {
                bench_case bc = {t == 0, (message_kind)k};
                double rate = run_case(conninfo, bc, clients, seconds, round, &results[t][k]);
                if (rate < 0) return 1;
                results[t][k].txn_s[round] = rate;
                fprintf(stderr, "  round %d, %s, %s: %.0f txn/s\n", round + 1,
                        t == 0 ? "realistic" : "one-row", message_name[k], rate);
            }
            /* The outbox rows of the round go, so that every round starts
             * from the same table. */
            pgh_exec(c, "TRUNCATE outbox.outbox");
            pgh_exec(c, "CHECKPOINT");
        }
    }
    for (int t = 0; t < 2; t++) {
        double base = median(results[t][MSG_NONE].txn_s, rounds);
        printf("\n  %s transaction (median of %d rounds; latency over all of them):\n",
               t == 0 ? "realistic (order + 3 lines + 3 stock updates)" : "one-row (order)",
               rounds);
        printf("    %-30s %9s %8s %9s %9s %11s %11s   %s\n", "message", "txn/s", "cost", "p50 ms",
               "p99 ms", "client us", "backend us", "rounds (txn/s)");
        for (int k = 0; k < MSG_KINDS; k++) {
            case_result *res = &results[t][k];
            double med = median(res->txn_s, rounds);
            qsort(res->lat_us, res->lat_n, sizeof *res->lat_us, cmp_double);
            printf("    %-30s %9.0f ", message_name[k], med);
            if (k == MSG_NONE)
                printf("%8s", "-");
            else
                printf("%7.1f%%", 100.0 * (1.0 - med / base));
            printf(" %9.2f %9.2f %11.1f %11.1f  ", percentile(res->lat_us, res->lat_n, 0.50) / 1000,
                   percentile(res->lat_us, res->lat_n, 0.99) / 1000, median(res->client_us, rounds),
                   median(res->server_us, rounds));
            for (int round = 0; round < rounds; round++)
                printf(" %.0f", res->txn_s[round]);
            printf("\n");
            free(res->lat_us);
        }
    }
    PQfinish(c);
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
