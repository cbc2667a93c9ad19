/*
 * proxy.c - the chaos run's HTTP proxy: the unreliable network between the
 * CampusCafe services.
 *
 * One libmicrohttpd listener per target service (127.0.0.1, ephemeral
 * port), thread per connection.  Each POST is forwarded with its headers
 * and body through libcurl to http://127.0.0.1:<upstream><path>, and the
 * upstream's status and body are answered back.  A seeded generator picks
 * a fault for a fraction of the POSTs (fault_rate):
 *   drop           answer 503 without forwarding (the request was lost);
 *   lose response  forward, then answer 503 (the work was done, the sender
 *                  cannot know it);
 *   duplicate      forward twice, answer the first result (the network
 *                  resent the request).
 * The rate can be set to 0 for the settle phase.  A forward that gets no
 * answer (the service is down) is answered 502, so the sender retries.
 * Other methods (GET /stats) are forwarded without faults.
 */
#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "cafe.h"
#include "proc.h"

#include <curl/curl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PROXY_MAX_BODY (1024 * 1024)
#define PROXY_MAX_TARGETS 8

typedef struct proxy_target {
    struct cafe_proxy *proxy;
    struct MHD_Daemon *daemon;
    unsigned upstream;
    unsigned port;
} proxy_target;

struct cafe_proxy {
    proxy_target targets[PROXY_MAX_TARGETS];
    int n;
    pthread_mutex_t lock; /* rng, rate and counters */
    uint64_t rng;
    double rate;
    cafe_proxy_stats stats;
};

typedef struct request {
    char *body;
    size_t len;
    int too_big;
} request;

static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    struct curl_slist **list = cls;
    static const char *const skip[] = {
        "host", "content-length", "connection", "transfer-encoding", "expect", "keep-alive"};
    char line[8192];
    struct curl_slist *grown;
    (void)kind;
    for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
        if (strcasecmp(key, skip[i]) == 0) return MHD_YES;
    if (!value || !*value)
        snprintf(line, sizeof line, "%s;", key); /* curl: empty value */
    else
        snprintf(line, sizeof line, "%s: %s", key, value);
    grown = curl_slist_append(*list, line);
    if (grown) *list = grown;
    return MHD_YES;
}

/* Forwards once; returns the upstream status (0: no answer) and its body
 * into *out (caller frees). */
static long forward(const proxy_target *t, struct MHD_Connection *conn, const char *method,
                    const char *url, const request *req, cafe_body *out)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    char target[512];
    long status = 0;

    out->data = NULL;
    out->len = 0;
    out->limit = PROXY_MAX_BODY;
    out->keep_start = 0;
    if (!h) return 0;
    snprintf(target, sizeof target, "http://127.0.0.1:%u%s", t->upstream, url);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, add_header, &hdrs);
    hdrs = curl_slist_append(hdrs, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, target);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, cafe_body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)req->len);
    }
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return status;
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *body,
                              size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result r;
    if (!resp) return MHD_NO;
    if (len) MHD_add_response_header(resp, "Content-Type", "application/json");
    r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Draws the fault for one POST: -1 none, else CAFE_FAULT_*. */
static int pick_fault(struct cafe_proxy *p)
{
    int fault = -1;
    pthread_mutex_lock(&p->lock);
    p->stats.requests++;
    if (p->rate > 0 && cafe_harness_rand01(&p->rng) < p->rate) {
        fault = (int)(cafe_harness_rand(&p->rng) % CAFE_FAULT_KINDS);
        p->stats.faults[fault]++;
    }
    pthread_mutex_unlock(&p->lock);
    return fault;
}

static void count_forward(struct cafe_proxy *p, long status)
{
    pthread_mutex_lock(&p->lock);
    p->stats.forwarded++;
    if (status == 0) p->stats.upstream_errors++;
    pthread_mutex_unlock(&p->lock);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    proxy_target *t = cls;
    request *req = *con_cls;
    cafe_body first = {NULL, 0, PROXY_MAX_BODY, 0}, second = {NULL, 0, PROXY_MAX_BODY, 0};
    static const char unavailable[] = "{\"error\":\"chaos proxy: injected fault\"}";
    static const char bad_gateway[] = "{\"error\":\"chaos proxy: upstream did not answer\"}";
    enum MHD_Result r;
    long status;
    int fault = -1;
    (void)version;

    if (!req) {
        req = calloc(1, sizeof *req);
        if (!req) return MHD_NO;
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_size) {
        if (req->len + *upload_size > PROXY_MAX_BODY) {
            req->too_big = 1;
        } else if (!req->too_big) {
            char *grown = realloc(req->body, req->len + *upload_size + 1);
            if (!grown) return MHD_NO;
            memcpy(grown + req->len, upload_data, *upload_size);
            req->body = grown;
            req->len += *upload_size;
            req->body[req->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->too_big) return answer(conn, 413, "", 0);

    if (strcmp(method, "POST") == 0) fault = pick_fault(t->proxy);
    if (fault == CAFE_FAULT_DROP) return answer(conn, 503, unavailable, sizeof unavailable - 1);

    status = forward(t, conn, method, url, req, &first);
    count_forward(t->proxy, status);
    if (fault == CAFE_FAULT_DUPLICATE) {
        long again = forward(t, conn, method, url, req, &second);
        count_forward(t->proxy, again);
        free(second.data);
    }
    if (fault == CAFE_FAULT_LOSE_RESPONSE)
        r = answer(conn, 503, unavailable, sizeof unavailable - 1);
    else if (status == 0)
        r = answer(conn, 502, bad_gateway, sizeof bad_gateway - 1);
    else
        r = answer(conn, (unsigned)status, first.data ? first.data : "", first.len);
    free(first.data);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request *req = *con_cls;
    (void)cls;
    (void)conn;
    (void)toe;
    if (req) {
        free(req->body);
        free(req);
        *con_cls = NULL;
    }
}

int cafe_proxy_new(cafe_proxy **out, const unsigned *upstream_ports, int n, uint64_t seed,
                   double fault_rate)
{
    struct cafe_proxy *p;
    *out = NULL;
    if (n < 1 || n > PROXY_MAX_TARGETS) return -1;
    p = calloc(1, sizeof *p);
    if (!p) return -1;
    pthread_mutex_init(&p->lock, NULL);
    p->rng = seed ^ 0x70726f7879ULL; /* independent of the services' draws */
    p->rate = fault_rate;
    for (int i = 0; i < n; i++) {
        proxy_target *t = &p->targets[i];
        struct sockaddr_in sa;
        const union MHD_DaemonInfo *info;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        t->proxy = p;
        t->upstream = upstream_ports[i];
        t->daemon = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0,
            NULL, NULL, on_request, t, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
        if (!t->daemon) {
            fprintf(stderr, "campuscafe: the chaos proxy cannot listen on 127.0.0.1\n");
            cafe_proxy_free(p);
            return -1;
        }
        p->n++;
        info = MHD_get_daemon_info(t->daemon, MHD_DAEMON_INFO_BIND_PORT);
        t->port = info ? info->port : 0;
    }
    *out = p;
    return 0;
}

unsigned cafe_proxy_port(const cafe_proxy *p, int i)
{
    return i >= 0 && i < p->n ? p->targets[i].port : 0;
}

void cafe_proxy_set_fault_rate(cafe_proxy *p, double rate)
{
    pthread_mutex_lock(&p->lock);
    p->rate = rate;
    pthread_mutex_unlock(&p->lock);
}

void cafe_proxy_get_stats(cafe_proxy *p, cafe_proxy_stats *stats)
{
    pthread_mutex_lock(&p->lock);
    *stats = p->stats;
    pthread_mutex_unlock(&p->lock);
}

void cafe_proxy_free(cafe_proxy *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++)
        MHD_stop_daemon(p->targets[i].daemon);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
