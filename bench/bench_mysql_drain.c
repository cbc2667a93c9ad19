/*
 * bench_mysql_drain.c - the MariaDB/MySQL store's drain against the bare
 * claim loop, in the same run, on a mariadbd this program starts
 * (tests/support/mariadb.h).  Not a test: it prints figures.
 *
 *   bare    BEGIN; SELECT ... WHERE status = 'pending' ORDER BY seq LIMIT B
 *           FOR UPDATE SKIP LOCKED; DELETE ... WHERE seq IN (...); COMMIT
 *           until empty (the rows read as the store reads them);
 *   relay   outbox_relay_new(URL, "discard:", once, batch B): lease, claim
 *           with the ordering rule, decode, complete.
 *
 * Both drain the same N rows (1,000 aggregates, ~300-byte payloads),
 * filled the same way before each.  Usage:
 *   bench_mysql_drain [--count N] [--batch B] [--repeat R]
 * The enqueue-cost half of issue 18's benchmark (8 connections, a business
 * transaction with and without the message) is bench_mysql_enqueue.c.
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

#include <time.h>

static myh_server server;
static long long n_msgs = 1000000;
static int batch = 512;
static char url[700];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* n rows in multi-row INSERTs of 1,000 (the trigger runs for each). */
static void fill(MYSQL *c, long long n)
{
    double t0 = now_s();
    myh_exec(c, "DELETE FROM outbox");
    myh_exec(c, "DELETE FROM outbox_aggregate");
    for (long long done = 0; done < n;) {
        char *sql = malloc(1000 * 512 + 512), *p = sql;
        long long k = n - done < 1000 ? n - done : 1000;
        p += sprintf(p, "INSERT INTO outbox (id, occurred_at, type, aggregate_type, aggregate_id,"
                        " payload, headers, available_at) VALUES ");
        for (long long i = 0; i < k; i++)
            p += sprintf(p,
                         "%s(UUID(), 1700000000000000, 'Tick', 'Agg', 'a%lld',"
                         " '{\"n\":%lld,\"pad\":\"%0270d\"}', '{}', 1700000000000000)",
                         i ? "," : "", (done + i) % 1000, done + i, 0);
        myh_exec(c, "START TRANSACTION");
        myh_exec(c, sql);
        myh_exec(c, "COMMIT");
        free(sql);
        done += k;
    }
    myh_exec(c, "ANALYZE TABLE outbox");
    printf("  fill %lld rows: %.1f s\n", n, now_s() - t0);
}

static double bare(MYSQL *c)
{
    char sql[600];
    long long total = 0;
    double t0 = now_s();
    snprintf(sql, sizeof sql,
             "SELECT seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
             " attempts FROM outbox WHERE status = 'pending' ORDER BY seq LIMIT %d"
             " FOR UPDATE SKIP LOCKED",
             batch);
    for (;;) {
        myh_exec(c, "START TRANSACTION");
        if (mysql_query(c, sql) != 0) TEST_FAIL_("bare: %s", mysql_error(c));
        MYSQL_RES *r = mysql_store_result(c);
        MYSQL_ROW row;
        size_t rows = (size_t)mysql_num_rows(r), len = 0;
        char *del = malloc(64 + rows * 24);
        len = (size_t)sprintf(del, "DELETE FROM outbox WHERE seq IN (");
        for (size_t i = 0; (row = mysql_fetch_row(r)) != NULL; i++)
            len += (size_t)sprintf(del + len, "%s%s", i ? "," : "", row[0]);
        strcpy(del + len, ")");
        mysql_free_result(r);
        if (rows > 0) myh_exec(c, del);
        myh_exec(c, "COMMIT");
        free(del);
        total += (long long)rows;
        if (rows == 0) break;
    }
    double dt = now_s() - t0;
    if (total != n_msgs) TEST_FAIL_("bare loop drained %lld of %lld", total, n_msgs);
    return dt;
}

static double relay_drain(void)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    outbox_relay_stats st;
    outbox_relay_options_init(&o);
    o.once = 1;
    o.batch_size = (unsigned)batch;
    double t0 = now_s();
    if (outbox_relay_new(&r, url, "discard:", &o, &err) != OUTBOX_OK ||
        outbox_relay_run(r, &err) != OUTBOX_OK)
        TEST_FAIL_("relay: %s", err.message);
    double dt = now_s() - t0;
    outbox_relay_get_stats(r, &st);
    outbox_relay_free(r);
    if ((long long)st.published != n_msgs)
        TEST_FAIL_("relay published %llu of %lld", (unsigned long long)st.published, n_msgs);
    return dt;
}

int main(int argc, char **argv)
{
    int repeat = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--count") == 0)
            n_msgs = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--batch") == 0)
            batch = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--repeat") == 0)
            repeat = atoi(argv[i + 1]);
    }
    myh_start(&server);
    snprintf(url, sizeof url, "%s", server.url);
    MYSQL *c = myh_connect(&server);
    outbox_error err;
    if (outbox_schema_init_mysql(c, NULL, &err) != OUTBOX_OK) TEST_FAIL_("%s", err.message);
    printf("mysql drain: %lld messages, batch %d, %s\n", n_msgs, batch, mysql_get_server_info(c));
    for (int k = 0; k < repeat; k++) {
        fill(c, n_msgs);
        double tb = bare(c);
        fill(c, n_msgs);
        double tr = relay_drain();
        printf("  bare SKIP LOCKED + DELETE: %.2f s (%.0f msg/s)\n", tb, (double)n_msgs / tb);
        printf("  relay to discard:          %.2f s (%.0f msg/s) = %.2fx the bare loop\n", tr,
               (double)n_msgs / tr, tb / tr);
    }
    mysql_close(c);
    return 0;
}

#endif /* OUTBOX_HAVE_MARIADB */
