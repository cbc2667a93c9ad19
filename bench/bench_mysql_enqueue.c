/*
 * bench_mysql_enqueue.c - what an outbox message costs the business
 * transaction on MariaDB/MySQL: transactions/s of the same transaction
 * with and without outbox_enqueue_mysql, on C connections at once (8 by
 * default), on a mariadbd this program starts (tests/support/mariadb.h:
 * innodb_flush_log_at_trx_commit=1, so every COMMIT is flushed).  Not a
 * test: it prints figures.
 *
 * The business transaction (issue 18's "order + 3 lines + 3 stock
 * updates"), statement by statement as an application sends it:
 *
 *   START TRANSACTION
 *   INSERT INTO bench_order (customer, total, created_at) VALUES (...)
 *   INSERT INTO bench_order_line (order_id, product_id, qty, price) x 3
 *   UPDATE bench_stock SET qty = qty - N WHERE product_id = P       x 3
 *   [outbox_enqueue_mysql: OrderPlaced, aggregate the new order's id,
 *    a ~300-byte payload]
 *   COMMIT
 *
 * The three products are drawn from 10,000 and updated in ascending order
 * (no deadlock between two orders); a lock wait timeout or deadlock,
 * should one come, rolls back and counts, and the transaction is not
 * counted.  Cases, each for T seconds, interleaved R times (medians
 * shown):
 *
 *   business            the transaction alone
 *   + enqueue           with the message, no relay running (the outbox
 *                       table grows meanwhile, and is emptied after the
 *                       case)
 *   + enqueue, relay    with the message while a relay drains the outbox
 *                       to discard: in a thread of this process (as in
 *                       production: the claims and deletes share the
 *                       server and the machine)
 *
 * The cost is 1 - (rate with the message) / (rate without), per round and
 * as the median; issue 18's target is <= 20%.
 *
 * Usage: bench_mysql_enqueue [--clients C] [--seconds T] [--repeat R]
 */
#include "internal.h"

#ifndef OUTBOX_HAVE_MARIADB
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "this build has no MariaDB/MySQL store (MariaDB Connector/C not found)\n");
    return 77;
}
#else

#include "support/mariadb.h"
#include "test.h"

#include <mysqld_error.h>
#include <pthread.h>
#include <time.h>

enum { PRODUCTS = 10000, MAX_CLIENTS = 64, PAYLOAD_PAD = 240 };
enum { CASE_BUSINESS, CASE_ENQUEUE, CASE_ENQUEUE_RELAY, CASE_COUNT };

static const char *const case_name[CASE_COUNT] = {"business transaction",
                                                  "+ outbox_enqueue_mysql, no relay",
                                                  "+ outbox_enqueue_mysql, relay draining"};

static myh_server server;
static int clients = 8;
static double seconds = 10;
static int repeat = 3;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct worker {
    int with_message;
    double until;
    unsigned seed;
    long txns;
    long retries; /* rolled back on a deadlock or lock wait timeout */
    pthread_t th;
} worker;

/* Runs sql; 0, or the server's error number for the two errors that a
 * transaction retries (deadlock, lock wait timeout); fails otherwise. */
static unsigned run(MYSQL *c, const char *sql)
{
    unsigned e;
    if (mysql_query(c, sql) == 0) {
        MYSQL_RES *r = mysql_store_result(c);
        if (r != NULL) mysql_free_result(r);
        return 0;
    }
    e = mysql_errno(c);
    if (e == ER_LOCK_DEADLOCK || e == ER_LOCK_WAIT_TIMEOUT) return e;
    TEST_FAIL_("%s: %s", sql, mysql_error(c));
    return e;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* One business transaction (see the top); 0 when committed, else a
 * retriable error after the rollback. */
static unsigned order_txn(MYSQL *c, worker *w, long n)
{
    char sql[512], agg[32], payload[PAYLOAD_PAD + 64];
    int product[3], qty[3];
    unsigned e;
    outbox_error err;
    unsigned long long order_id;

    for (int i = 0; i < 3; i++) {
        product[i] = (int)(rand_r(&w->seed) % PRODUCTS) + 1;
        qty[i] = (int)(rand_r(&w->seed) % 3) + 1;
    }
    if (product[1] == product[0]) product[1] = product[0] % PRODUCTS + 1;
    while (product[2] == product[0] || product[2] == product[1])
        product[2] = product[2] % PRODUCTS + 1;
    qsort(product, 3, sizeof product[0], cmp_int);

    if ((e = run(c, "START TRANSACTION")) != 0) goto rollback;
    snprintf(sql, sizeof sql,
             "INSERT INTO bench_order (customer, total, created_at) VALUES ('customer-%u', 37.50,"
             " NOW(6))",
             w->seed % 5000);
    if ((e = run(c, sql)) != 0) goto rollback;
    order_id = (unsigned long long)mysql_insert_id(c);
    for (int i = 0; i < 3; i++) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO bench_order_line (order_id, product_id, qty, price) VALUES"
                 " (%llu, %d, %d, 12.50)",
                 order_id, product[i], qty[i]);
        if ((e = run(c, sql)) != 0) goto rollback;
    }
    for (int i = 0; i < 3; i++) {
        snprintf(sql, sizeof sql,
                 "UPDATE bench_stock SET qty = qty - %d WHERE product_id = %d AND qty >= %d",
                 qty[i], product[i], qty[i]);
        if ((e = run(c, sql)) != 0) goto rollback;
    }
    if (w->with_message) {
        outbox_msg *m = NULL;
        snprintf(agg, sizeof agg, "order-%llu", order_id);
        snprintf(payload, sizeof payload,
                 "{\"order\":%llu,\"lines\":[[%d,%d],[%d,%d],[%d,%d]],\"n\":%ld,\"pad\":\"%0*d\"}",
                 order_id, product[0], qty[0], product[1], qty[1], product[2], qty[2], n,
                 PAYLOAD_PAD - 90, 0);
        if (outbox_msg_new(&m, "OrderPlaced", "Order", agg, payload, &err) != OUTBOX_OK)
            TEST_FAIL_("outbox_msg_new: %s", err.message);
        if (outbox_enqueue_mysql(c, m, &err) != OUTBOX_OK) {
            e = mysql_errno(c);
            outbox_msg_free(m);
            if (e == ER_LOCK_DEADLOCK || e == ER_LOCK_WAIT_TIMEOUT) goto rollback;
            TEST_FAIL_("outbox_enqueue_mysql: %s", err.message);
        }
        outbox_msg_free(m);
    }
    if ((e = run(c, "COMMIT")) != 0) goto rollback;
    return 0;
rollback:
    mysql_query(c, "ROLLBACK");
    return e;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    MYSQL *c;
    long n = 0;
    mysql_thread_init();
    c = myh_connect(&server);
    while (now_s() < w->until) {
        if (order_txn(c, w, n++) == 0)
            w->txns++;
        else
            w->retries++;
    }
    mysql_close(c);
    mysql_thread_end();
    return NULL;
}

/* Transactions/s of `clients` workers for `seconds`; *retries: rolled back. */
static double rate(int with_message, long *retries)
{
    worker w[MAX_CLIENTS];
    long total = 0;
    double t0 = now_s();
    *retries = 0;
    for (int i = 0; i < clients; i++) {
        w[i].with_message = with_message;
        w[i].until = t0 + seconds;
        w[i].seed = (unsigned)(i * 7919 + (int)(t0 * 1000));
        w[i].txns = w[i].retries = 0;
        pthread_create(&w[i].th, NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < clients; i++) {
        pthread_join(w[i].th, NULL);
        total += w[i].txns;
        *retries += w[i].retries;
    }
    return (double)total / (now_s() - t0);
}

static void *relay_main(void *arg)
{
    outbox_relay *r = arg;
    outbox_error err;
    mysql_thread_init();
    if (outbox_relay_run(r, &err) != OUTBOX_OK) TEST_FAIL_("relay: %s", err.message);
    mysql_thread_end();
    return NULL;
}

/* rate() with the message while a relay drains to discard:; *published:
 * what the relay published meanwhile. */
static double rate_with_relay(long *retries, unsigned long long *published)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_relay_stats st;
    outbox_error err;
    pthread_t th;
    double res;
    outbox_relay_options_init(&o);
    if (outbox_relay_new(&r, server.url, "discard:", &o, &err) != OUTBOX_OK)
        TEST_FAIL_("relay: %s", err.message);
    pthread_create(&th, NULL, relay_main, r);
    res = rate(1, retries);
    outbox_relay_stop(r);
    pthread_join(th, NULL);
    outbox_relay_get_stats(r, &st);
    *published = st.published;
    outbox_relay_free(r);
    return res;
}

/* Empties the outbox between cases: each case starts from the same table,
 * and the relay case drains only what it enqueues. */
static void empty_outbox(MYSQL *c)
{
    myh_exec(c, "DELETE FROM outbox");
    myh_exec(c, "DELETE FROM outbox_aggregate");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void setup(MYSQL *c)
{
    outbox_error err;
    char *sql, *p;
    if (outbox_schema_init_mysql(c, NULL, &err) != OUTBOX_OK) TEST_FAIL_("%s", err.message);
    myh_exec(c, "DROP TABLE IF EXISTS bench_order_line, bench_order, bench_stock");
    myh_exec(c, "CREATE TABLE bench_order (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                " customer VARCHAR(64) NOT NULL, total DECIMAL(12,2) NOT NULL,"
                " created_at DATETIME(6) NOT NULL) ENGINE=InnoDB");
    myh_exec(c, "CREATE TABLE bench_order_line (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                " order_id BIGINT NOT NULL, product_id INT NOT NULL, qty INT NOT NULL,"
                " price DECIMAL(12,2) NOT NULL, KEY (order_id)) ENGINE=InnoDB");
    myh_exec(c, "CREATE TABLE bench_stock (product_id INT PRIMARY KEY, qty INT NOT NULL)"
                " ENGINE=InnoDB");
    sql = malloc((size_t)PRODUCTS * 32 + 64);
    if (sql == NULL) TEST_FAIL_("out of memory");
    p = sql + sprintf(sql, "INSERT INTO bench_stock (product_id, qty) VALUES ");
    for (int i = 1; i <= PRODUCTS; i++)
        p += sprintf(p, "%s(%d, 1000000000)", i > 1 ? "," : "", i);
    myh_exec(c, sql);
    free(sql);
}

int main(int argc, char **argv)
{
    double rates[CASE_COUNT][64], cost[2][64];
    long retries[CASE_COUNT] = {0};
    unsigned long long published = 0;
    MYSQL *c;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--clients") == 0 && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_mysql_enqueue [--clients C] [--seconds T] [--repeat R]\n");
            return 2;
        }
    }
    if (clients < 1 || clients > MAX_CLIENTS || seconds <= 0 || repeat < 1 || repeat > 64) {
        fprintf(stderr, "bench_mysql_enqueue: --clients 1-%d, --seconds > 0, --repeat 1-64\n",
                MAX_CLIENTS);
        return 2;
    }
    mysql_library_init(0, NULL, NULL);
    myh_start(&server);
    c = myh_connect(&server);
    setup(c);
    printf("mysql enqueue cost: %s, %d connections, %.0f s per case, %d rounds (medians); "
           "order + 3 lines + 3 stock updates per transaction\n",
           mysql_get_server_info(c), clients, seconds, repeat);
    for (int k = 0; k < repeat; k++) {
        long rt;
        rates[CASE_BUSINESS][k] = rate(0, &rt);
        retries[CASE_BUSINESS] += rt;
        rates[CASE_ENQUEUE][k] = rate(1, &rt);
        retries[CASE_ENQUEUE] += rt;
        empty_outbox(c);
        rates[CASE_ENQUEUE_RELAY][k] = rate_with_relay(&rt, &published);
        retries[CASE_ENQUEUE_RELAY] += rt;
        empty_outbox(c);
        cost[0][k] = 1 - rates[CASE_ENQUEUE][k] / rates[CASE_BUSINESS][k];
        cost[1][k] = 1 - rates[CASE_ENQUEUE_RELAY][k] / rates[CASE_BUSINESS][k];
        printf("  round %d: %.0f / %.0f / %.0f txn/s; cost %.1f%% (no relay), %.1f%% (relay "
               "draining, %llu published)\n",
               k + 1, rates[CASE_BUSINESS][k], rates[CASE_ENQUEUE][k], rates[CASE_ENQUEUE_RELAY][k],
               100 * cost[0][k], 100 * cost[1][k], published);
    }
    for (int i = 0; i < CASE_COUNT; i++)
        printf("  %-40s %8.0f txn/s (median)%s\n", case_name[i], median(rates[i], repeat),
               retries[i] ? "" : ", no retried transaction");
    printf("  cost of the message: %.1f%% with no relay, %.1f%% with a relay draining (medians "
           "of the rounds)\n",
           100 * median(cost[0], repeat), 100 * median(cost[1], repeat));
    for (int i = 0; i < CASE_COUNT; i++)
        if (retries[i])
            printf("  %s: %ld transactions rolled back (deadlock or lock wait) and not counted\n",
                   case_name[i], retries[i]);
    mysql_close(c);
    return 0;
}

#endif /* OUTBOX_HAVE_MARIADB */
