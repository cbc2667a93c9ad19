/*
 * demo.c - `campuscafe demo`: the whole CampusCafe flow, live.
 *
 * Starts the four services (order, inventory, payment, notification), each
 * its own process with its own SQLite database, in outbox mode, in a fresh
 * temporary directory with a shared webhook secret.  A few concurrent
 * clients place orders (random customers and items; the stock is sized so
 * that some orders run out of it, and payment declines a fraction), while
 * a progress line shows how far the orders got and each outbox's backlog
 * (from every service's GET /stats).  When everything settled the services
 * are stopped and the summary and the consistency check are read from the
 * four databases (read-only): every order in an end state, stock conserved,
 * reserved stock only for completed orders, no payment without an order,
 * each order's stock request and payment applied exactly once.
 *
 * Exit: 0 all checks passed, 1 a check failed or the run broke, 2 usage.
 */
#include "cafe.h"
#include "proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <curl/curl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

typedef struct demo_options {
    unsigned orders;
    unsigned clients;
    const char *bus;
    const char *relay;
    unsigned long seed;
    int keep;
    int timeout_s;
    int pace_ms;
} demo_options;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: campuscafe demo [--orders N] [--clients N]\n"
               "                       [--bus webhook|nats://HOST:PORT|amqp://HOST:PORT]\n"
               "                       [--relay inproc|process] [--seed N] [--pace MS] [--timeout "
               "SECONDS]\n"
               "                       [--keep]\n"
               "  Starts the four services in outbox mode, places N orders (default 40), shows\n"
               "  the progress, then checks the four databases for consistency.  Each client\n"
               "  pauses about MS (default 250) between its orders.\n");
}

static int parse_uint(const char *opt, const char *v, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long n;
    if (!v) {
        fprintf(stderr, "campuscafe demo: %s needs a value\n", opt);
        return -1;
    }
    n = strtoul(v, &end, 10);
    if (*v == '-' || *end || end == v || n > max) {
        fprintf(stderr, "campuscafe demo: %s must be a whole number 0..%lu, not \"%s\"\n", opt, max,
                v);
        return -1;
    }
    *out = n;
    return 0;
}

static int parse(int argc, char **argv, demo_options *o)
{
    unsigned long n;
    memset(o, 0, sizeof *o);
    o->orders = 40;
    o->clients = 4;
    o->seed = (unsigned long)time(NULL) % 100000;
    o->timeout_s = 60;
    o->pace_ms = 250;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--keep") == 0) {
            o->keep = 1;
        } else if (strcmp(a, "--orders") == 0) {
            if (parse_uint(a, v, 100000, &n) != 0 || n == 0) return -1;
            o->orders = (unsigned)n;
            i++;
        } else if (strcmp(a, "--clients") == 0) {
            if (parse_uint(a, v, 64, &n) != 0 || n == 0) return -1;
            o->clients = (unsigned)n;
            i++;
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_uint(a, v, 0xffffffffUL, &n) != 0) return -1;
            o->seed = n;
            i++;
        } else if (strcmp(a, "--pace") == 0) {
            if (parse_uint(a, v, 60000, &n) != 0) return -1;
            o->pace_ms = (int)n;
            i++;
        } else if (strcmp(a, "--timeout") == 0) {
            if (parse_uint(a, v, 3600, &n) != 0 || n == 0) return -1;
            o->timeout_s = (int)n;
            i++;
        } else if (strcmp(a, "--bus") == 0) {
            if (!v || (strcmp(v, "webhook") != 0 && strncmp(v, "nats://", 7) != 0 &&
                       strncmp(v, "amqp://", 7) != 0)) {
                fprintf(
                    stderr,
                    "campuscafe demo: --bus is webhook, nats://HOST:PORT or amqp://HOST:PORT\n");
                return -1;
            }
            o->bus = v;
            i++;
        } else if (strcmp(a, "--relay") == 0) {
            if (!v || (strcmp(v, "inproc") != 0 && strcmp(v, "process") != 0)) {
                fprintf(stderr, "campuscafe demo: --relay is inproc or process\n");
                return -1;
            }
            o->relay = v;
            i++;
        } else {
            fprintf(stderr, "campuscafe demo: unknown option \"%s\"\n", a);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* The state counters of cafe_harness_states, grouped for the display. */
enum {
    ST_PLACED,
    ST_STOCK_RESERVED,
    ST_PAID,
    ST_OUT_OF_STOCK,
    ST_PAYMENT_FAILED,
    ST_COMPLETED,
    ST_REJECTED,
    ST_CANCELLED
};

static void progress_line(const cafe_stats *s, unsigned total, double secs, char *buf, size_t size)
{
    const long *b = s->by_state;
    long reserved = b[ST_STOCK_RESERVED] + b[ST_PAID] + b[ST_PAYMENT_FAILED] + b[ST_COMPLETED] +
                    b[ST_CANCELLED];
    long paid = b[ST_PAID] + b[ST_COMPLETED];
    long ended = b[ST_COMPLETED] + b[ST_REJECTED] + b[ST_CANCELLED];
    char backlog[128];
    size_t o = 0;
    for (int i = 0; i < CAFE_H_SERVICES; i++) {
        if (s->pending[i] < 0)
            o += (size_t)snprintf(backlog + o, sizeof backlog - o, " %s -",
                                  cafe_harness_service_names[i]);
        else
            o += (size_t)snprintf(backlog + o, sizeof backlog - o, " %s %ld",
                                  cafe_harness_service_names[i], s->pending[i]);
        if (o >= sizeof backlog) o = sizeof backlog - 1;
    }
    snprintf(buf, size,
             "[%5.1fs] placed %ld/%u | reserved %ld | paid %ld | notified %ld (completed %ld,"
             " rejected %ld, cancelled %ld) | outbox backlog:%s",
             secs, s->orders, total, reserved, paid, ended, b[ST_COMPLETED], b[ST_REJECTED],
             b[ST_CANCELLED], backlog);
}

static int settled(const cafe_stats *s, unsigned answered)
{
    long ended = s->by_state[ST_COMPLETED] + s->by_state[ST_REJECTED] + s->by_state[ST_CANCELLED];
    if (s->orders < (long)answered || ended != s->orders) return 0;
    for (int i = 0; i < CAFE_H_SERVICES; i++)
        if (!s->up[i] || s->pending[i] != 0) return 0;
    return s->bus_backlog == 0;
}

/* Prints each item's stock from inventory.db (read-only). */
static void print_stock(const char *dir)
{
    char uri[PATH_MAX + 32];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(uri, sizeof uri, "file:%s/inventory.db?mode=ro", dir);
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db,
                           "SELECT s.item, s.initial, s.on_hand, (SELECT coalesce(sum(qty), 0)"
                           " FROM reservations r WHERE r.item = s.item AND r.status = 'reserved')"
                           " FROM stock s ORDER BY s.item",
                           -1, &st, NULL) == SQLITE_OK) {
        const char *sep = "";
        printf("  stock          ");
        while (sqlite3_step(st) == SQLITE_ROW) {
            printf("%s%s %lld -> %lld left (%lld sold)", sep,
                   (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1),
                   sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3));
            sep = ", ";
        }
        printf("\n");
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static int check(const char *what, long bad)
{
    printf("  [%s] %s", bad == 0 ? "ok" : "FAILED", what);
    if (bad != 0) printf(": %ld", bad);
    printf("\n");
    return bad == 0 ? 0 : 1;
}

int cafe_demo_main(int argc, char **argv)
{
    demo_options o;
    char dir[PATH_MAX - 128], secret[PATH_MAX], stock[160], api[64], line[512];
    cafe_cluster cluster;
    cafe_cluster_options co;
    cafe_client_options clo;
    cafe_clients *clients = NULL;
    cafe_counts counts;
    cafe_stats s;
    int tty = isatty(STDOUT_FILENO), rc = 1, failures = 0, started = 0, done_settle = 0;
    int64_t t0, last_print = 0, deadline = 0;
    unsigned answered = 0, refused = 0, abandoned = 0, retries = 0;

    struct sigaction sa;

    switch (parse(argc, argv, &o)) {
    case 1:
        return 0;
    case 0:
        break;
    default:
        return 2;
    }
    /* Ctrl-C stops the services too, instead of leaving them running. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    dir[0] = '\0';
    if (cafe_harness_tempdir(dir, sizeof dir, "campuscafe-demo") != 0) goto out;
    snprintf(secret, sizeof secret, "%s/webhook.secret", dir);
    if (cafe_harness_write_secret(secret) != 0) goto out;
    /* Enough lattes and espressos; croissants and muffins run out. */
    snprintf(stock, sizeof stock, "latte=%u,espresso=%u,croissant=%u,muffin=%u",
             o.orders * 4 / 5 + 4, o.orders * 4 / 5 + 4, o.orders * 3 / 10 + 2, o.orders / 7 + 1);

    printf(
        "CampusCafe demo: %u orders from %u clients; order, inventory, payment and notification\n"
        "each run as a process with its own SQLite database and outbox (%s bus, relay %s), seed "
        "%lu\n"
        "  directory %s\n",
        o.orders, o.clients, o.bus ? o.bus : "webhook", o.relay ? o.relay : "inproc", o.seed, dir);
    if (cafe_cluster_prepare(&cluster, dir) != 0) goto out;
    memset(&co, 0, sizeof co);
    co.dir = dir;
    co.bus = o.bus;
    co.relay = o.relay;
    co.secret_file = secret;
    co.stock = stock;
    co.seed = o.seed;
    if (cafe_cluster_start(&cluster, &co) != 0) goto out;
    started = 1;
    printf("  stock %s; payment declines about 20%%\n\n", stock);
    fflush(stdout);

    snprintf(api, sizeof api, "http://127.0.0.1:%u", cluster.api_port);
    memset(&clo, 0, sizeof clo);
    clo.orders = o.orders;
    clo.clients = o.clients;
    clo.seed = o.seed;
    clo.pace_ms = o.pace_ms;
    clo.retry_deadline_ms = 10000;
    clo.max_qty = 2;
    clo.api_url = api;
    if (cafe_clients_start(&clients, &clo) != 0) {
        fprintf(stderr, "campuscafe demo: cannot start the client threads\n");
        goto out;
    }
    t0 = cafe_harness_now_ms();
    for (;;) {
        int64_t now = cafe_harness_now_ms();
        int clients_done = cafe_clients_done(clients);
        cafe_clients_progress(clients, &answered, &refused, &abandoned, &retries);
        cafe_cluster_stats(&cluster, &s);
        progress_line(&s, o.orders, (double)(now - t0) / 1000.0, line, sizeof line);
        if (clients_done && !deadline) deadline = now + o.timeout_s * 1000LL;
        done_settle = clients_done && settled(&s, answered);
        if (tty) {
            printf("\r%s\033[K", line);
            fflush(stdout);
        } else if (now - last_print >= 1000 || done_settle) {
            printf("%s\n", line);
            fflush(stdout);
            last_print = now;
        }
        if (done_settle || (deadline && now > deadline)) break;
        if (interrupted) {
            fprintf(stderr, "\ncampuscafe demo: interrupted; stopping the services\n");
            goto out;
        }
        for (int i = 0; i < CAFE_H_SERVICES; i++) {
            if (cafe_proc_reap(&cluster.procs[i], 0)) {
                fprintf(stderr, "\ncampuscafe demo: the %s service exited unexpectedly\n",
                        cafe_harness_service_names[i]);
                cafe_cluster_print_log_tail(&cluster, i, 15);
                goto out;
            }
        }
        cafe_harness_sleep_ms(250);
    }
    if (tty) printf("\n");
    if (!done_settle)
        printf("\nThe run did not settle within %d s (see the services' logs in %s).\n",
               o.timeout_s, dir);
    cafe_clients_free(clients);
    clients = NULL;
    cafe_cluster_stop(&cluster);
    started = 0;

    if (cafe_harness_count(dir, &counts) != 0) {
        fprintf(stderr, "campuscafe demo: cannot read the databases: %s\n", counts.error);
        goto out;
    }
    printf("\nSummary (read from the four databases after the services stopped):\n");
    printf("  clients        %u orders accepted, %u refused, %u abandoned, %u retries\n", answered,
           refused, abandoned, retries);
    printf("  orders         %ld: completed %ld, rejected (out of stock) %ld, cancelled (payment"
           " declined) %ld\n",
           counts.orders, counts.by_state[ST_COMPLETED], counts.by_state[ST_REJECTED],
           counts.by_state[ST_CANCELLED]);
    printf("  payments       %ld    notifications %ld\n", counts.payments, counts.notifications);
    print_stock(dir);
    printf("\nConsistency check:\n");
    failures += check("every order reached an end state (orders stuck)", counts.stuck);
    failures += check("every accepted order is in the database (missing)",
                      counts.orders >= (long)answered ? 0 : (long)answered - counts.orders);
    failures += check("stock conserved per item: initial = on hand + reserved (items off)",
                      counts.stock_violations);
    failures += check("reserved stock belongs only to completed orders (rows off)",
                      counts.reserved_not_completed);
    failures += check("no payment without an order (payments off)", counts.payment_no_order);
    failures += check("stock requested and handled exactly once per order (orders off)",
                      counts.reserve_not_once);
    failures +=
        check("one payment per order that reached payment (orders off)", counts.payment_not_once);
    failures +=
        check("no stock reserved or payment taken for a missing order (ghosts)", counts.ghost);
    if (failures == 0) {
        printf("All checks passed.\n");
        rc = 0;
    } else {
        printf("%d check(s) FAILED; the databases are kept in %s\n", failures, dir);
        o.keep = 1;
    }
out:
    if (clients) {
        cafe_clients_stop(clients);
        cafe_clients_free(clients);
    }
    if (started) cafe_cluster_stop(&cluster);
    if (dir[0] && !o.keep)
        cafe_harness_rmtree(dir);
    else if (dir[0] && rc == 0)
        printf("(kept %s)\n", dir);
    curl_global_cleanup();
    return rc;
}

#else /* no libmicrohttpd/libcurl */

int cafe_demo_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "campuscafe demo: this build has no libmicrohttpd/libcurl\n");
    return 2;
}

#endif
