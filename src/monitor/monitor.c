/*
 * monitor.c - the relay monitor: an HTTP server (libmicrohttpd, one
 * internal thread, bound to the given address only) serving /metrics,
 * /healthz, /readyz, the console page at / and its JSON API under /api/,
 * and a refresh thread of its own.
 *
 * The relays are never asked anything that makes their loop wait: their
 * numbers come from outbox_relay_get_metrics.  What needs a query (pending,
 * failed, blocked, the oldest age, the lease) comes from store handles of
 * the monitor's own, queried by the refresh thread at most once per
 * refresh interval and cached; a request reads the cache and never
 * triggers that query, so a slow store slows neither the relay nor a
 * scrape.  The counts may read every pending row (a scan in the server:
 * MariaDB, or PostgreSQL where the pages are not all-visible), which takes
 * a while on a large backlog: the next refresh then waits
 * REFRESH_BUSY_FACTOR times as long as the last counts took, if that is
 * longer than the interval, so the counts keep the store (and this thread)
 * busy at most 1/51 of the time: the 2% a monitored relay may cost,
 * whatever the backlog.  The refresh thread also keeps the console's
 * history: a ring of MONITOR_HISTORY_POINTS points, one every
 * MONITOR_HISTORY_INTERVAL_S.
 *
 * Safety: a non-loopback address is refused unless allow_public is set,
 * and on a loopback address a request must name the host as an IP address
 * or localhost (Host header), so a web page that rebinds its own DNS name
 * to 127.0.0.1 cannot read the API from a browser on the same machine.
 * Retry and drop (POST only) need the admin token as a bearer token,
 * compared in constant time; without a token configured the console is
 * read-only.  No cookies.  Request bodies are refused past a small limit.
 * Stored text reaches responses only JSON-escaped (jansson) or escaped as a
 * metric label, and never a header.
 */
#include "monitor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define COMPONENT "monitor"

/* After store counts that took d, the next refresh waits at least this times d. */
#define REFRESH_BUSY_FACTOR 50

/* Request bodies larger than this are refused (the API takes none). */
#define MONITOR_MAX_BODY 1024

void outbox_monitor_options_init(outbox_monitor_options *opts)
{
    if (opts == NULL) return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->refresh_ms = 5000;
}

/* ------------------------------------------------------------------------
 * Shared helpers (monitor.h)
 * ---------------------------------------------------------------------- */

/* The relays' metrics first, outside the lock (reading them never waits
 * for a relay), then the views and rates under it. */
int outbox__monitor_snapshot(outbox_monitor *m, monitor_snapshot *s)
{
    size_t i;
    s->relays = outbox__calloc(m->n, sizeof *s->relays);
    s->views = outbox__calloc(m->n, sizeof *s->views);
    s->rates = outbox__calloc(m->n, sizeof *s->rates);
    if (s->relays == NULL || s->views == NULL || s->rates == NULL) {
        outbox__monitor_snapshot_release(s);
        return -1;
    }
    for (i = 0; i < m->n; i++) {
        s->relays[i].size = sizeof s->relays[i];
        outbox_relay_get_metrics(m->relays[i], &s->relays[i]);
    }
    pthread_mutex_lock(&m->lock);
    memcpy(s->views, m->views, m->n * sizeof *s->views);
    memcpy(s->rates, m->rates, m->n * sizeof *s->rates);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void outbox__monitor_snapshot_release(monitor_snapshot *s)
{
    outbox__free(s->relays);
    outbox__free(s->views);
    outbox__free(s->rates);
    memset(s, 0, sizeof *s);
}

outbox_store *outbox__monitor_api_store(outbox_monitor *m, size_t i, outbox_error *err)
{
    if (m->api_stores[i] == NULL && outbox_store_open(outbox__relay_store_url(m->relays[i]),
                                                      &m->api_stores[i], err) != OUTBOX_OK)
        m->api_stores[i] = NULL;
    return m->api_stores[i];
}

void outbox__monitor_api_store_reset(outbox_monitor *m, size_t i)
{
    outbox_store_close(m->api_stores[i]);
    m->api_stores[i] = NULL;
}

double outbox__monitor_quantile(const double *le, const uint64_t *counts, double q)
{
    uint64_t total = 0, below = 0;
    double rank;
    size_t i;

    for (i = 0; i < OUTBOX_HISTOGRAM_BUCKETS; i++)
        total += counts[i];
    if (total == 0) return -1;
    rank = q * (double)total;
    for (i = 0; i < OUTBOX_HISTOGRAM_BUCKETS; i++) {
        if ((double)(below + counts[i]) >= rank && counts[i] > 0) {
            double lower = i == 0 ? 0.0 : le[i - 1];
            if (isinf(le[i])) return lower; /* the highest finite bound */
            return lower + (le[i] - lower) * (rank - (double)below) / (double)counts[i];
        }
        below += counts[i];
    }
    return le[OUTBOX_HISTOGRAM_BUCKETS - 2];
}

/* ------------------------------------------------------------------------
 * Refresh thread: store counts and history
 * ---------------------------------------------------------------------- */

/* Queries every relay's store (outside the lock), then publishes the
 * results under it.  Returns the time the counts took (microseconds),
 * opening a store left out: that happens once, the counts every time. */
static int64_t refresh_views(outbox_monitor *m)
{
    int64_t counting = 0;
    size_t i;
    for (i = 0; i < m->n; i++) {
        monitor_view v;
        outbox_error e = {0, ""};
        int rc = OUTBOX_OK;

        memset(&v, 0, sizeof v);
        if (m->refresh_stores[i] == NULL)
            rc =
                outbox_store_open(outbox__relay_store_url(m->relays[i]), &m->refresh_stores[i], &e);
        if (rc == OUTBOX_OK) {
            int64_t start = outbox__monotonic_us();
            rc = outbox_store_status(m->refresh_stores[i], &v.status, sizeof v.status, &e);
            counting += outbox__monotonic_us() - start;
        }
        v.queried = 1;
        v.ok = rc == OUTBOX_OK;
        v.refreshed_us = outbox__now_us();
        if (rc != OUTBOX_OK) {
            snprintf(v.error, sizeof v.error, "%s", e.message[0] ? e.message : outbox_strerror(rc));
            outbox_store_close(m->refresh_stores[i]); /* reopened next time */
            m->refresh_stores[i] = NULL;
        }
        pthread_mutex_lock(&m->lock);
        if (v.ok)
            m->views[i] = v;
        else {
            /* Keep the last counts, say why they are old. */
            m->views[i].queried = 1;
            m->views[i].ok = 0;
            memcpy(m->views[i].error, v.error, sizeof v.error);
        }
        pthread_mutex_unlock(&m->lock);
    }
    return counting;
}

/* One history point: the first relay's store counts, every relay's
 * published total, and the rates and commit-to-publish quantiles over
 * the interval since the last sample. */
static void sample_history(outbox_monitor *m)
{
    monitor_snapshot snap;
    outbox_relay_metrics *all;
    uint64_t commit[OUTBOX_HISTOGRAM_BUCKETS] = {0}, published = 0, published_delta = 0;
    int64_t now = outbox__monotonic_us();
    double dt = m->last_sample_us > 0 ? (double)(now - m->last_sample_us) / 1e6 : 0.0;
    monitor_point p;
    size_t i, k;

    if (outbox__monitor_snapshot(m, &snap) != 0) return;
    all = snap.relays;
    memset(&p, 0, sizeof p);
    pthread_mutex_lock(&m->lock);
    for (i = 0; i < m->n; i++) {
        uint64_t delta[OUTBOX_HISTOGRAM_BUCKETS];
        const outbox_histogram *h = &all[i].commit_to_publish;
        monitor_rate *rate = &m->rates[i];
        uint64_t d = all[i].published - m->last_published[i];

        for (k = 0; k < OUTBOX_HISTOGRAM_BUCKETS; k++) {
            delta[k] = m->last_sample_us > 0 ? h->counts[k] - m->last_commit[i][k] : 0;
            commit[k] += delta[k];
            m->last_commit[i][k] = h->counts[k];
        }
        rate->publish_rate = dt > 0 ? (double)d / dt : 0.0;
        rate->p50 = outbox__monitor_quantile(h->le, delta, 0.5);
        rate->p99 = outbox__monitor_quantile(h->le, delta, 0.99);
        rate->has_quantiles = rate->p50 >= 0;
        if (m->last_sample_us > 0) published_delta += d;
        m->last_published[i] = all[i].published;
        published += all[i].published;
    }
    p.t_us = outbox__now_us();
    p.published_total = published;
    p.publish_rate = dt > 0 ? (double)published_delta / dt : 0.0;
    p.p50 = outbox__monitor_quantile(all[0].commit_to_publish.le, commit, 0.5);
    p.p99 = outbox__monitor_quantile(all[0].commit_to_publish.le, commit, 0.99);
    p.has_quantiles = p.p50 >= 0;
    if (m->views[0].queried && m->views[0].refreshed_us > 0) {
        const outbox_status *st = &m->views[0].status;
        p.has_pending = 1;
        p.pending = st->pending;
        if (st->pending > 0 && st->oldest_pending_us > 0) {
            int64_t age = m->views[0].refreshed_us - st->oldest_pending_us;
            p.has_oldest = 1;
            p.oldest_age_s = age > 0 ? (double)age / 1e6 : 0.0;
        }
    }
    m->history[(m->history_first + m->history_count) % MONITOR_HISTORY_POINTS] = p;
    if (m->history_count < MONITOR_HISTORY_POINTS)
        m->history_count++;
    else
        m->history_first = (m->history_first + 1) % MONITOR_HISTORY_POINTS;
    pthread_mutex_unlock(&m->lock);
    m->last_sample_us = now;
    outbox__monitor_snapshot_release(&snap);
}

static void *refresh_main(void *arg)
{
    outbox_monitor *m = arg;
    int64_t next_refresh = 0, next_sample = 0;

#ifdef __linux__
    /* The counts must not take CPU from the relay: on Linux a thread has a
     * nice value of its own, and this one runs at the lowest.  On a busy
     * machine the numbers come later (the refresh timestamp says how old
     * they are).  A store whose counts run in a server (PostgreSQL,
     * MariaDB) keeps its own priority there. */
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
#endif
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        int64_t now = outbox__monotonic_us(), until;
        struct timespec ts;

        if (now >= next_refresh) {
            int64_t took, counting, wait;
            pthread_mutex_unlock(&m->lock);
            counting = refresh_views(m);
            pthread_mutex_lock(&m->lock);
            took = outbox__monotonic_us() - now;
            wait = (int64_t)m->refresh_ms * 1000;
            if (counting * REFRESH_BUSY_FACTOR > wait) wait = counting * REFRESH_BUSY_FACTOR;
            next_refresh = now + took + wait;
            continue;
        }
        if (now >= next_sample) {
            pthread_mutex_unlock(&m->lock);
            sample_history(m);
            pthread_mutex_lock(&m->lock);
            next_sample = (next_sample > 0 ? next_sample : now) +
                          (int64_t)MONITOR_HISTORY_INTERVAL_S * 1000000;
            if (next_sample < now) next_sample = now; /* fell behind: no burst */
            continue;
        }
        until = next_refresh < next_sample ? next_refresh : next_sample;
        ts.tv_sec = (time_t)(until / 1000000);
        ts.tv_nsec = (long)(until % 1000000) * 1000;
        pthread_cond_timedwait(&m->wake, &m->lock, &ts);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

#ifdef OUTBOX_HAVE_MHD

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* ------------------------------------------------------------------------
 * Listening address
 * ---------------------------------------------------------------------- */

/* Parses "ADDR:PORT", "[V6]:PORT" or "localhost:PORT" into addr.  Refuses
 * an address that is not loopback unless allow_public. */
static int parse_listen(const char *text, int allow_public, struct sockaddr_storage *addr,
                        int *ipv6, outbox_error *err)
{
    char host[128];
    const char *port_text;
    char *end;
    unsigned long port;
    int loopback;

    memset(addr, 0, sizeof *addr);
    if (text == NULL || text[0] == '\0')
        return outbox__error(err, OUTBOX_ECONFIG,
                             "no listen address: give ADDR:PORT, e.g. 127.0.0.1:9464");
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "listen address '%.100s' is malformed; write an IPv6 address as "
                                 "[::1]:9464",
                                 text);
        snprintf(host, sizeof host, "%.*s", (int)(close - text - 1), text + 1);
        port_text = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon == NULL || (size_t)(colon - text) >= sizeof host || strchr(text, ':') != colon)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "listen address '%.100s' is not ADDR:PORT, e.g. 127.0.0.1:9464 "
                                 "or [::1]:9464",
                                 text);
        snprintf(host, sizeof host, "%.*s", (int)(colon - text), text);
        port_text = colon + 1;
    }
    port = strtoul(port_text, &end, 10);
    if (port_text[0] < '0' || port_text[0] > '9' || *end != '\0' || port > 65535)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "listen address '%.100s' has no valid port; use 0..65535 (0: any "
                             "free port)",
                             text);

    if (text[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "listen address '%.100s': '%s' is not an IPv6 address", text,
                                 host);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        *ipv6 = 1;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
        if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "listen address '%.100s': '%s' is not an IPv4 address (or "
                                 "localhost); IPv6 is written [::1]:PORT",
                                 text, host);
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
        *ipv6 = 0;
    }
    if (!loopback && !allow_public)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "--listen %.100s is not a loopback address: pass --listen-public to "
                             "serve metrics on it",
                             text);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------- */

typedef struct request_ctx {
    size_t body_bytes;
} request_ctx;

/* The Host header names an IP address or localhost (any port); a request
 * without one (HTTP/1.0) is let through. */
static int host_allowed(const char *host)
{
    char name[64];
    const char *end;
    unsigned char addr[16];

    if (host == NULL) return 1;
    if (host[0] == '[') {
        end = strchr(host, ']');
        if (end == NULL || (size_t)(end - host - 1) >= sizeof name) return 0;
        snprintf(name, sizeof name, "%.*s", (int)(end - host - 1), host + 1);
        return inet_pton(AF_INET6, name, addr) == 1;
    }
    end = strchr(host, ':');
    if (end == NULL) end = host + strlen(host);
    if ((size_t)(end - host) >= sizeof name) return 0;
    snprintf(name, sizeof name, "%.*s", (int)(end - host), host);
    return strcasecmp(name, "localhost") == 0 || inet_pton(AF_INET, name, addr) == 1;
}

/* "Bearer <token>" against the configured token, in time independent of
 * where they differ. */
static int token_matches(const char *token, const char *header)
{
    const char *given;
    size_t glen, tlen, i;
    unsigned diff;

    if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0) return 0;
    given = header + 7;
    while (*given == ' ')
        given++;
    glen = strlen(given);
    tlen = strlen(token);
    diff = glen != tlen;
    for (i = 0; i < tlen; i++)
        diff |=
            (unsigned)(unsigned char)token[i] ^ (unsigned)(unsigned char)(i < glen ? given[i] : 0);
    return diff == 0;
}

static void reply_init(monitor_reply *reply)
{
    memset(reply, 0, sizeof *reply);
    outbox__buf_init(&reply->body);
    reply->status = MHD_HTTP_OK;
    reply->content_type = "application/json";
}

static enum MHD_Result send_reply(struct MHD_Connection *c, monitor_reply *reply, int html)
{
    struct MHD_Response *resp;
    enum MHD_Result rc;
    const char *body = reply->body.data != NULL ? reply->body.data : "";
    size_t len = reply->body.data != NULL ? reply->body.len : 0;

    if (reply->body.oom) {
        outbox__buf_free(&reply->body);
        outbox__monitor_json_error(reply, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
        body = reply->body.data != NULL ? reply->body.data : "";
        len = reply->body.data != NULL ? reply->body.len : 0;
    }
    resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (reply->keep_body != NULL) {
        outbox__buf_reset(&reply->body);
        *reply->keep_body = reply->body;
        outbox__buf_init(&reply->body);
    } else {
        outbox__buf_free(&reply->body);
    }
    if (resp == NULL) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", reply->content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    if (html)
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'");
    if (reply->bearer_challenge) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (reply->allow) MHD_add_response_header(resp, "Allow", reply->allow);
    rc = MHD_queue_response(c, reply->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* The console's POSTs: the admin token first, then the action. */
static void message_action(outbox_monitor *m, struct MHD_Connection *c, const char *id,
                           const char *action, monitor_reply *reply)
{
    if (m->admin_token == NULL) {
        outbox__monitor_json_error(reply, MHD_HTTP_FORBIDDEN,
                                   "read-only: start the relay with --admin-token-file to allow "
                                   "retry and drop");
        return;
    }
    if (!token_matches(m->admin_token,
                       MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"))) {
        outbox__monitor_json_error(reply, MHD_HTTP_UNAUTHORIZED,
                                   "a valid admin token is required: send Authorization: Bearer "
                                   "<token>");
        reply->bearer_challenge = 1;
        return;
    }
    outbox__monitor_message_action(m, id, action, reply);
}

/* Splits "/api/messages/<id>/<action>"; 1 when path has that shape. */
static int message_path(const char *path, char *id, size_t id_len, const char **action)
{
    static const char prefix[] = "/api/messages/";
    const char *rest, *slash;
    if (strncmp(path, prefix, sizeof prefix - 1) != 0) return 0;
    rest = path + sizeof prefix - 1;
    slash = strchr(rest, '/');
    if (slash == NULL || slash == rest || (size_t)(slash - rest) >= id_len) return 0;
    if (strcmp(slash + 1, "retry") != 0 && strcmp(slash + 1, "drop") != 0) return 0;
    snprintf(id, id_len, "%.*s", (int)(slash - rest), rest);
    *action = slash + 1;
    return 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    outbox_monitor *m = cls;
    request_ctx *ctx = *con_cls;
    monitor_reply reply;
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int post = strcmp(method, "POST") == 0, html = 0;
    const char *action = NULL;
    char id[64];

    if (ctx == NULL) {
        const char *len_text = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        ctx = outbox__calloc(1, sizeof *ctx);
        if (ctx == NULL) return MHD_NO;
        *con_cls = ctx;
        if (len_text != NULL && strtoull(len_text, NULL, 10) > MONITOR_MAX_BODY) {
            reply_init(&reply);
            outbox__monitor_json_error(&reply, MHD_HTTP_CONTENT_TOO_LARGE,
                                       "request body too large");
            return send_reply(c, &reply, 0);
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        ctx->body_bytes += *upload_data_size; /* the API reads no body */
        *upload_data_size = 0;
        return MHD_YES;
    }

    reply_init(&reply);
    if (!m->public_listen &&
        !host_allowed(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host"))) {
        outbox__monitor_json_error(&reply, MHD_HTTP_FORBIDDEN,
                                   "the Host header must be an IP address or localhost");
    } else if (ctx->body_bytes > MONITOR_MAX_BODY) {
        outbox__monitor_json_error(&reply, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
    } else if (message_path(url, id, sizeof id, &action)) {
        if (post) {
            message_action(m, c, id, action, &reply);
        } else {
            outbox__monitor_json_error(&reply, MHD_HTTP_METHOD_NOT_ALLOWED,
                                       "use POST for retry and drop");
            reply.allow = "POST";
        }
    } else if (strcmp(url, "/") != 0 && strcmp(url, "/metrics") != 0 &&
               strcmp(url, "/healthz") != 0 && strcmp(url, "/readyz") != 0 &&
               strcmp(url, "/api/summary") != 0 && strcmp(url, "/api/history") != 0 &&
               strcmp(url, "/api/failed") != 0 && strcmp(url, "/api/blocked") != 0) {
        outbox__monitor_json_error(&reply, MHD_HTTP_NOT_FOUND, "no such page");
    } else if (!get) {
        outbox__monitor_json_error(&reply, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
        reply.allow = "GET, HEAD";
    } else if (strcmp(url, "/") == 0) {
        html = 1;
        reply.content_type = "text/html; charset=utf-8";
        outbox__buf_append(&reply.body, (const char *)outbox__console_html,
                           outbox__console_html_len);
    } else if (strcmp(url, "/metrics") == 0) {
        const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
        outbox__monitor_metrics(
            m, accept != NULL && strstr(accept, "application/openmetrics-text") != NULL, &reply);
    } else if (strcmp(url, "/healthz") == 0) {
        outbox__monitor_healthz(m, &reply);
    } else if (strcmp(url, "/readyz") == 0) {
        outbox__monitor_readyz(m, &reply);
    } else if (strcmp(url, "/api/summary") == 0) {
        outbox__monitor_summary(m, &reply);
    } else if (strcmp(url, "/api/history") == 0) {
        outbox__monitor_history(m, &reply);
    } else {
        const char *limit = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
        if (strcmp(url, "/api/failed") == 0)
            outbox__monitor_failed(m, limit, &reply);
        else
            outbox__monitor_blocked(m, limit, &reply);
    }
    return send_reply(c, &reply, html);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    outbox__free(*con_cls);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------------
 * Life cycle
 * ---------------------------------------------------------------------- */

int outbox_monitor_new(outbox_monitor **out, outbox_relay *const *relays, size_t n,
                       const outbox_monitor_options *opts, outbox_error *err)
{
    outbox_monitor_options o;
    outbox_monitor *m = NULL;
    struct sockaddr_storage addr;
    pthread_condattr_t cattr;
    const union MHD_DaemonInfo *info;
    int ipv6 = 0, rc;
    size_t i;

    if (out == NULL) return outbox__error(err, OUTBOX_EINVAL, "outbox_monitor_new: out is NULL");
    *out = NULL;
    if (relays == NULL || n == 0 || opts == NULL)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_monitor_new: give at least one relay and the options");
    for (i = 0; i < n; i++)
        if (relays[i] == NULL)
            return outbox__error(err, OUTBOX_EINVAL, "outbox_monitor_new: relay %zu is NULL", i);
    outbox_monitor_options_init(&o);
    rc = outbox__options_copy(&o, sizeof o, opts, opts->size,
                              offsetof(outbox_monitor_options, refresh_ms) + sizeof o.refresh_ms,
                              "outbox_monitor_new", "outbox_monitor_options_init", err);
    if (rc != OUTBOX_OK) return rc;
    if (o.refresh_ms < 100 || o.refresh_ms > 3600000)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "refresh interval %u ms is out of range; use 100ms to 1h (default "
                             "5s)",
                             o.refresh_ms);
    rc = parse_listen(o.listen, o.allow_public, &addr, &ipv6, err);
    if (rc != OUTBOX_OK) return rc;

    m = outbox__calloc(1, sizeof *m);
    if (m == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the monitor");
    m->n = n;
    m->refresh_ms = o.refresh_ms;
    m->public_listen = o.allow_public;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->wake, &cattr);
    pthread_condattr_destroy(&cattr);
    m->relays = outbox__calloc(n, sizeof *m->relays);
    m->views = outbox__calloc(n, sizeof *m->views);
    m->rates = outbox__calloc(n, sizeof *m->rates);
    m->refresh_stores = outbox__calloc(n, sizeof *m->refresh_stores);
    m->api_stores = outbox__calloc(n, sizeof *m->api_stores);
    m->last_published = outbox__calloc(n, sizeof *m->last_published);
    m->last_commit = outbox__calloc(n, sizeof *m->last_commit);
    if (o.admin_token != NULL && o.admin_token[0] != '\0')
        m->admin_token = outbox__strdup(o.admin_token);
    if (m->relays == NULL || m->views == NULL || m->rates == NULL || m->refresh_stores == NULL ||
        m->api_stores == NULL || m->last_published == NULL || m->last_commit == NULL ||
        (o.admin_token != NULL && o.admin_token[0] != '\0' && m->admin_token == NULL)) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the monitor");
        goto fail;
    }
    for (i = 0; i < n; i++)
        m->relays[i] = relays[i];

    if (pthread_create(&m->refresher, NULL, refresh_main, m) != 0) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "cannot start the monitor's refresh thread");
        goto fail;
    }
    m->refresher_started = 1;

    m->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | (ipv6 ? MHD_USE_IPv6 : 0), 0, NULL, NULL, on_request, m,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        (void *)m, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)32, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_END);
    if (m->daemon == NULL) {
        rc = outbox__error(err, OUTBOX_EIO,
                           "cannot listen on %.100s: the address is in use or not available "
                           "here; pick another port",
                           o.listen);
        goto fail;
    }
    info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    m->port = info != NULL ? info->port : 0;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "serving metrics for %zu relay%s on port %u%s", n,
                n == 1 ? "" : "s", m->port,
                m->admin_token ? " (retry and drop allowed with the admin token)" : " (read-only)");
    *out = m;
    return OUTBOX_OK;

fail:
    outbox_monitor_free(m);
    return rc;
}

void outbox_monitor_free(outbox_monitor *monitor)
{
    outbox_monitor *m = monitor;
    size_t i;
    if (m == NULL) return;
    if (m->daemon != NULL) MHD_stop_daemon(m->daemon);
    if (m->refresher_started) {
        pthread_mutex_lock(&m->lock);
        m->stopping = 1;
        pthread_cond_signal(&m->wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->refresher, NULL);
    }
    for (i = 0; i < m->n; i++) {
        if (m->refresh_stores != NULL) outbox_store_close(m->refresh_stores[i]);
        if (m->api_stores != NULL) outbox_store_close(m->api_stores[i]);
    }
    if (m->admin_token != NULL) {
        /* Not left in freed memory. */
        volatile char *p = m->admin_token;
        while (*p)
            *p++ = '\0';
        outbox__free(m->admin_token);
    }
    outbox__monitor_metrics_free(m);
    outbox__free(m->relays);
    outbox__free(m->views);
    outbox__free(m->rates);
    outbox__free(m->refresh_stores);
    outbox__free(m->api_stores);
    outbox__free(m->last_published);
    outbox__free(m->last_commit);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    outbox__free(m);
}

#else /* !OUTBOX_HAVE_MHD */

int outbox_monitor_new(outbox_monitor **out, outbox_relay *const *relays, size_t n,
                       const outbox_monitor_options *opts, outbox_error *err)
{
    (void)refresh_main;
    if (out != NULL) *out = NULL;
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "this build has no monitor: it needs libmicrohttpd (rebuild with it "
                         "installed)");
}

void outbox_monitor_free(outbox_monitor *monitor)
{
    (void)monitor;
}

#endif /* OUTBOX_HAVE_MHD */

unsigned outbox_monitor_port(const outbox_monitor *monitor)
{
    return monitor != NULL ? monitor->port : 0;
}
