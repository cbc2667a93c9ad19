/*
 * webhook_harness.h - helpers of the HTTP destination tests (test_http,
 * test_crash_http):
 *
 * - A scripted webhook server on 127.0.0.1 (raw sockets, a thread per
 *   connection, keep-alive) that records every request (request line,
 *   headers, body, arrival time) and answers as a script function decides:
 *   a status with optional Retry-After and body, after a delay, or by
 *   resetting the connection, or by hanging until stopped.  It also counts
 *   requests in flight per aggregate (the ce-subject header) and keeps the
 *   maximum, to check "one request in flight per aggregate".
 * - A relay running in a thread of the test, and enqueue helpers.
 *
 * Everything is static inline; include after test.h.
 */
#ifndef OUTBOX_WEBHOOK_HARNESS_H
#define OUTBOX_WEBHOOK_HARNESS_H

#include "test.h"

#include <outbox.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

static inline int64_t wh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void wh_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A free loopback port (bound then closed: a small race, fine in tests). */
static inline unsigned wh_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        TEST_FAIL_("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

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
 * out; "" when absent. */
static inline const char *sv_header(const char *head, const char *name, char *out, size_t len)
{
    size_t n = strlen(name);
    const char *p = strstr(head, "\r\n");
    out[0] = '\0';
    while (p && p[2]) {
        const char *line = p + 2, *end = strstr(line, "\r\n");
        if (!end) end = line + strlen(line);
        if ((size_t)(end - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            size_t k;
            while (*v == ' ')
                v++;
            k = (size_t)(end - v);
            if (k >= len) k = len - 1;
            memcpy(out, v, k);
            out[k] = '\0';
            return out;
        }
        p = *end ? end : NULL;
    }
    return out;
}

static inline int sv_agg_slot(sv_server *s, const char *agg)
{
    for (int i = 0; i < s->nagg; i++)
        if (strcmp(s->agg_names[i], agg) == 0) return i;
    if (s->nagg == 256) return 255;
    snprintf(s->agg_names[s->nagg], 64, "%s", agg);
    s->agg_counts[s->nagg] = 0;
    return s->nagg++;
}

static inline int sv_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* End of the head ("\r\n\r\n") in buf[0..len), or NULL. */
static inline char *sv_find_blank(char *buf, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++)
        if (buf[i] == '\r' && memcmp(buf + i, "\r\n\r\n", 4) == 0) return buf + i;
    return NULL;
}

typedef struct sv_conn {
    sv_server *s;
    int fd;
    int slot;
} sv_conn;

static inline void *sv_conn_main(void *arg)
{
    sv_conn *c = arg;
    sv_server *s = c->s;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        char *hdr_end;
        size_t head_len, body_len = 0, need;
        char value[64];
        /* Read a full head. */
        while (!(buf && (hdr_end = sv_find_blank(buf, len)) != NULL)) {
            ssize_t r;
            if (!buf || atomic_load(&s->stop)) goto out;
            if (len + 4096 > cap) {
                char *nb = realloc(buf, cap *= 2);
                if (!nb) goto out;
                buf = nb;
            }
            r = recv(c->fd, buf + len, cap - len - 1, 0);
            if (r <= 0) goto out;
            len += (size_t)r;
        }
        head_len = (size_t)(hdr_end - buf);
        buf[head_len] = '\0';
        body_len = (size_t)atol(sv_header(buf, "content-length", value, sizeof value));
        need = head_len + 4 + body_len;
        while (len < need) {
            ssize_t r;
            if (need + 1 > cap) {
                char *nb = realloc(buf, cap = need + 1);
                if (!nb) goto out;
                buf = nb;
            }
            r = recv(c->fd, buf + len, cap - len - 1, 0);
            if (r <= 0) goto out;
            len += (size_t)r;
        }
        sv_request rq;
        rq.head = strndup(buf, head_len);
        rq.body = strndup(buf + head_len + 4, body_len);
        rq.body_len = body_len;
        rq.at_ms = wh_now_ms();
        rq.status = 0;
        memmove(buf, buf + need, len - need);
        len -= need;

        char agg[64];
        sv_header(rq.head, "ce-subject", agg, sizeof agg);
        sv_action act;
        memset(&act, 0, sizeof act);
        act.status = 200;
        pthread_mutex_lock(&s->mu);
        int n = s->nreqs;
        int slot = sv_agg_slot(s, agg);
        if (++s->agg_counts[slot] > s->max_agg_in_flight)
            s->max_agg_in_flight = s->agg_counts[slot];
        if (++s->in_flight > s->max_in_flight) s->max_in_flight = s->in_flight;
        if (s->script) s->script(s->user, &rq, n, &act);
        rq.status = act.reset || act.hang ? 0 : act.status;
        if (s->nreqs == s->capreqs) {
            s->capreqs = s->capreqs ? s->capreqs * 2 : 256;
            s->reqs = realloc(s->reqs, (size_t)s->capreqs * sizeof *s->reqs);
            if (!s->reqs) TEST_FAIL_("out of memory");
        }
        s->reqs[s->nreqs++] = rq;
        pthread_mutex_unlock(&s->mu);

        if (act.delay_ms > 0) wh_sleep_ms(act.delay_ms);
        while (act.hang && !atomic_load(&s->stop))
            wh_sleep_ms(10);
        pthread_mutex_lock(&s->mu);
        s->agg_counts[slot]--;
        s->in_flight--;
        pthread_mutex_unlock(&s->mu);
        if (act.hang || act.reset) {
            if (act.reset) {
                struct linger lg = {1, 0}; /* RST */
                setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            }
            goto out;
        }
        char resp[512];
        int k = snprintf(resp, sizeof resp,
                         "HTTP/1.1 %d X\r\ncontent-length: %zu\r\ncontent-type: text/plain\r\n"
                         "%s%s%s\r\n%s",
                         act.status, strlen(act.body), act.retry_after[0] ? "retry-after: " : "",
                         act.retry_after, act.retry_after[0] ? "\r\n" : "", act.body);
        if (sv_write_all(c->fd, resp, (size_t)k) != 0) goto out;
    }
out:
    free(buf);
    pthread_mutex_lock(&s->mu);
    close(c->fd);
    s->conn_fds[c->slot] = -1;
    s->live_threads--;
    pthread_mutex_unlock(&s->mu);
    free(c);
    return NULL;
}

static inline void *sv_accept_main(void *arg)
{
    sv_server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->listen_fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        pthread_mutex_lock(&s->mu);
        int slot = -1;
        for (int i = 0; i < SV_MAX_CONN; i++)
            if (s->conn_fds[i] < 0) {
                slot = i;
                break;
            }
        if (slot < 0) {
            pthread_mutex_unlock(&s->mu);
            close(fd);
            continue;
        }
        s->conn_fds[slot] = fd;
        s->live_threads++;
        pthread_mutex_unlock(&s->mu);
        sv_conn *c = malloc(sizeof *c);
        pthread_t t;
        c->s = s;
        c->fd = fd;
        c->slot = slot;
        if (pthread_create(&t, NULL, sv_conn_main, c) != 0) TEST_FAIL_("pthread_create");
        pthread_detach(t);
    }
    return NULL;
}

/* Starts a scripted server on 127.0.0.1 (port 0: any free one). */
static inline void sv_start(sv_server *s, unsigned port, sv_script_fn script, void *user)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int one = 1;
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    for (int i = 0; i < SV_MAX_CONN; i++)
        s->conn_fds[i] = -1;
    s->script = script;
    s->user = user;
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->listen_fd, 64) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &alen) != 0)
        TEST_FAIL_("scripted server: bind/listen: %s", strerror(errno));
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->acceptor, NULL, sv_accept_main, s) != 0) TEST_FAIL_("pthread_create");
}

/* Stops accepting, cuts every connection, waits for their threads, and
 * frees the recorded requests. */
static inline void sv_stop(sv_server *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->acceptor, NULL);
    close(s->listen_fd);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < SV_MAX_CONN; i++)
            if (s->conn_fds[i] >= 0) shutdown(s->conn_fds[i], SHUT_RDWR);
        int live = s->live_threads;
        pthread_mutex_unlock(&s->mu);
        if (live == 0) break;
        wh_sleep_ms(5);
    }
    for (int i = 0; i < s->nreqs; i++) {
        free(s->reqs[i].head);
        free(s->reqs[i].body);
    }
    free(s->reqs);
    pthread_mutex_destroy(&s->mu);
}

static inline int sv_count(sv_server *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->nreqs;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ------------------------------------------------------------------------
 * Store helpers and a relay in a thread
 * ---------------------------------------------------------------------- */

static inline sqlite3 *wh_db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) TEST_FAIL_("sqlite3_open %s", path);
    sqlite3_busy_timeout(db, 30000);
    return db;
}

static inline int64_t wh_db_count(const char *path, const char *sql)
{
    sqlite3 *db = wh_db_open(path);
    sqlite3_stmt *st = NULL;
    int64_t v;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        TEST_FAIL_("prepare %s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) != SQLITE_ROW) TEST_FAIL_("step %s: %s", sql, sqlite3_errmsg(db));
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Creates a fresh outbox database at path. */
static inline void wh_store_init(const char *path)
{
    outbox_error err;
    sqlite3 *db = wh_db_open(path);
    memset(&err, 0, sizeof err);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    ASSERT_OK(outbox_schema_init_sqlite(db, &err), &err);
    sqlite3_close(db);
}

/* Enqueues one message in its own transaction; copies its id into id_out
 * (37 bytes) when not NULL. */
static inline void wh_enqueue(sqlite3 *db, const char *type, const char *agg_type, const char *agg,
                              const char *payload, const char *headers_json, char *id_out)
{
    outbox_error err;
    outbox_msg *m = NULL;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_msg_new(&m, type, agg_type, agg, payload, &err), &err);
    if (headers_json) ASSERT_OK(outbox_msg_set_headers_json(m, headers_json, &err), &err);
    ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_OK(outbox_enqueue_sqlite(db, m, &err), &err);
    ASSERT_EQ(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    if (id_out) memcpy(id_out, outbox_msg_id(m), 37);
    outbox_msg_free(m);
}

typedef struct wh_relay {
    outbox_relay *relay;
    pthread_t thread;
    int rc;
    outbox_error err;
    atomic_int done;
} wh_relay;

static inline void *wh_relay_main(void *arg)
{
    wh_relay *r = arg;
    r->rc = outbox_relay_run(r->relay, &r->err);
    atomic_store(&r->done, 1);
    return NULL;
}

/* Creates the relay (failing the test on error) and runs it in a thread. */
static inline void wh_relay_start(wh_relay *r, const char *db_path, const char *url,
                                  const outbox_relay_options *opts)
{
    char store[700];
    memset(r, 0, sizeof *r);
    snprintf(store, sizeof store, "sqlite:%s", db_path);
    ASSERT_OK(outbox_relay_new(&r->relay, store, url, opts, &r->err), &r->err);
    if (pthread_create(&r->thread, NULL, wh_relay_main, r) != 0) TEST_FAIL_("pthread_create");
}

/* Stops and frees the relay; fails the test when run() returned an error. */
static inline void wh_relay_stop(wh_relay *r)
{
    outbox_relay_stop(r->relay);
    pthread_join(r->thread, NULL);
    outbox_relay_free(r->relay);
    if (r->rc != OUTBOX_OK) TEST_FAIL_("relay run: %d %s", r->rc, r->err.message);
}

/* Waits until the SQL count reaches want (fails after timeout_ms). */
static inline void wh_wait_count(const char *db_path, const char *sql, int64_t want,
                                 int64_t timeout_ms)
{
    int64_t deadline = wh_now_ms() + timeout_ms, v = -1;
    while (wh_now_ms() < deadline) {
        v = wh_db_count(db_path, sql);
        if (v == want) return;
        wh_sleep_ms(20);
    }
    TEST_FAIL_("%s: %lld after %lld ms, expected %lld", sql, (long long)v, (long long)timeout_ms,
               (long long)want);
}

#endif /* OUTBOX_WEBHOOK_HARNESS_H */
