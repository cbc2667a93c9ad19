/*
 * webhook.h - the webhook receiver of the HTTP destination tests
 * (tests/support; test_http, test_crash_http, the destination contract
 * suite):
 *
 * - A scripted webhook server on 127.0.0.1 (raw sockets, a thread per
 *   connection, keep-alive) that records every request (request line,
 *   headers, body, arrival time) and answers as a script function decides:
 *   a status with optional Retry-After and body, after a delay, or by
 *   resetting the connection, or by hanging until stopped.  It also counts
 *   requests in flight per aggregate (the ce-subject header) and keeps the
 *   maximum, to check "one request in flight per aggregate".
 * - A relay from a SQLite outbox running in a thread of the test, and
 *   enqueue helpers.
 */
#ifndef OUTBOX_TEST_SUPPORT_WEBHOOK_H
#define OUTBOX_TEST_SUPPORT_WEBHOOK_H

#include "relay_thread.h"

#include <outbox.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------
 * Scripted server
 * ---------------------------------------------------------------------- */

typedef struct sv_request {
    char *head; /* request line and headers, "\r\n"-separated */
    char *body;
    size_t body_len;
    int64_t at_ms; /* arrival (monotonic) */
    int status;    /* what was answered (0: reset or hang) */
} sv_request;

typedef struct sv_action {
    int status;           /* e.g. 200; 0 with reset/hang */
    int delay_ms;         /* before answering */
    int reset;            /* close the connection without an answer */
    int hang;             /* never answer (until the server stops) */
    char retry_after[64]; /* Retry-After value, "" for none */
    char body[256];
} sv_action;

/* Decides the answer to request number `n` (0-based, arrival order). */
typedef void (*sv_script_fn)(void *user, const sv_request *rq, int n, sv_action *act);

#define SV_MAX_CONN 64

typedef struct sv_server {
    int listen_fd;
    unsigned port;
    pthread_t acceptor;
    atomic_int stop;
    sv_script_fn script;
    void *user;

    pthread_mutex_t mu;
    sv_request *reqs;
    int nreqs, capreqs;
    int conn_fds[SV_MAX_CONN];
    int live_threads;
    int in_flight, max_in_flight;
    /* per-aggregate in-flight counts: a small linear table */
    char agg_names[256][64];
    int agg_counts[256];
    int nagg;
    int max_agg_in_flight;
} sv_server;

/* Value of header `name` in a request head (case-insensitive), copied into
 * out; "" when absent.  Returns out. */
const char *sv_header(const char *head, const char *name, char *out, size_t len);

/* Starts a scripted server on 127.0.0.1 (port 0: any free one). */
void sv_start(sv_server *s, unsigned port, sv_script_fn script, void *user);

/* Stops accepting, cuts every connection, waits for their threads, and
 * frees the recorded requests. */
void sv_stop(sv_server *s);

/* Sends all of p[0..n) on fd; 0, or -1 on an error. */
int sv_write_all(int fd, const char *p, size_t n);

/* Requests received so far. */
int sv_count(sv_server *s);

/* ------------------------------------------------------------------------
 * Store helpers and a relay in a thread
 * ---------------------------------------------------------------------- */

/* One-number query on the database at path; fails the test on an error. */
int64_t wh_db_count(const char *path, const char *sql);

/* Creates a fresh outbox database at path (WAL). */
void wh_store_init(const char *path);

/* Enqueues one message in its own transaction; copies its id into id_out
 * (37 bytes) when not NULL. */
void wh_enqueue(sqlite3 *db, const char *type, const char *agg_type, const char *agg,
                const char *payload, const char *headers_json, char *id_out);

/* A relay run in a thread: relay, rc and err as in relay_thread.h. */
typedef relay_thread wh_relay;

/* Creates the relay from the SQLite outbox at db_path to url (failing the
 * test on error) and runs it in a thread. */
void wh_relay_start(wh_relay *r, const char *db_path, const char *url,
                    const outbox_relay_options *opts);

/* Stops and frees the relay; fails the test when run() returned an error. */
void wh_relay_stop(wh_relay *r);

/* Waits until the SQL count reaches want (fails after timeout_ms). */
void wh_wait_count(const char *db_path, const char *sql, int64_t want, int64_t timeout_ms);

#endif /* OUTBOX_TEST_SUPPORT_WEBHOOK_H */
