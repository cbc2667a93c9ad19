/*
 * webhook.c - the webhook receiver of the HTTP destination tests (see
 * webhook.h).
 */
#include "support/webhook.h"

#include "support/chaos.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

const char *sv_header(const char *head, const char *name, char *out, size_t len)
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

static int sv_agg_slot(sv_server *s, const char *agg)
{
    for (int i = 0; i < s->nagg; i++)
        if (strcmp(s->agg_names[i], agg) == 0) return i;
    if (s->nagg == 256) return 255;
    snprintf(s->agg_names[s->nagg], 64, "%s", agg);
    s->agg_counts[s->nagg] = 0;
    return s->nagg++;
}

int sv_write_all(int fd, const char *p, size_t n)
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
static char *sv_find_blank(char *buf, size_t len)
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

static void *sv_conn_main(void *arg)
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
        rq.at_ms = ch_now_ms();
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

        if (act.delay_ms > 0) ch_sleep_ms(act.delay_ms);
        while (act.hang && !atomic_load(&s->stop))
            ch_sleep_ms(10);
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

static void *sv_accept_main(void *arg)
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

void sv_start(sv_server *s, unsigned port, sv_script_fn script, void *user)
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

void sv_stop(sv_server *s)
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
        ch_sleep_ms(5);
    }
    for (int i = 0; i < s->nreqs; i++) {
        free(s->reqs[i].head);
        free(s->reqs[i].body);
    }
    free(s->reqs);
    pthread_mutex_destroy(&s->mu);
}

int sv_count(sv_server *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->nreqs;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ------------------------------------------------------------------------
 * Store helpers and a relay in a thread
 * ---------------------------------------------------------------------- */

int64_t wh_db_count(const char *path, const char *sql)
{
    sqlite3 *db = ch_db_open(path);
    int64_t v = ch_db_count(db, sql);
    sqlite3_close(db);
    return v;
}

void wh_store_init(const char *path)
{
    outbox_error err;
    sqlite3 *db = ch_db_open(path);
    memset(&err, 0, sizeof err);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    ASSERT_OK(outbox_schema_init_sqlite(db, &err), &err);
    sqlite3_close(db);
}

void wh_enqueue(sqlite3 *db, const char *type, const char *agg_type, const char *agg,
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

void wh_relay_start(wh_relay *r, const char *db_path, const char *url,
                    const outbox_relay_options *opts)
{
    char store[700];
    memset(r, 0, sizeof *r);
    snprintf(store, sizeof store, "sqlite:%s", db_path);
    ASSERT_OK(outbox_relay_new(&r->relay, store, url, opts, &r->err), &r->err);
    if (relay_thread_start(r) != 0) TEST_FAIL_("pthread_create");
}

void wh_relay_stop(wh_relay *r)
{
    int rc = relay_thread_stop(r);
    outbox_relay_free(r->relay);
    if (rc != OUTBOX_OK) TEST_FAIL_("relay run: %d %s", rc, r->err.message);
}

void wh_wait_count(const char *db_path, const char *sql, int64_t want, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms, v = -1;
    while (ch_now_ms() < deadline) {
        v = wh_db_count(db_path, sql);
        if (v == want) return;
        ch_sleep_ms(20);
    }
    TEST_FAIL_("%s: %lld after %lld ms, expected %lld", sql, (long long)v, (long long)timeout_ms,
               (long long)want);
}
