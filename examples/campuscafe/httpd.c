/*
 * httpd.c - a very small JSON HTTP server on libmicrohttpd, for the order
 * API, the event endpoints' front (GET /stats, POST /events) and the naive
 * receivers.
 *
 * It collects the request body up to a limit (past it the body is read and
 * dropped, and the route sees too_big = 1), then calls one route function
 * with method, path, body and header access; the route fills a status and a
 * JSON text.  Bound to 127.0.0.1 only.  threaded = one thread per
 * connection, for handlers that block (the naive order API sends events
 * synchronously); otherwise one thread serves every connection in turn.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct cafe_httpd {
    struct MHD_Daemon *daemon;
    cafe_route_fn route;
    void *user;
    size_t max_body;
};

typedef struct conn_state {
    char *body;
    size_t len;
    int too_big;
} conn_state;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    cafe_httpd *h = cls;
    conn_state *cs = *con_cls;
    cafe_request req;
    cafe_response res;
    struct MHD_Response *response;
    enum MHD_Result ret;
    (void)version;

    if (cs == NULL) {
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "content-length");
        if ((cs = calloc(1, sizeof *cs)) == NULL) return MHD_NO;
        if (cl && strtoull(cl, NULL, 10) > h->max_body) cs->too_big = 1;
        *con_cls = cs;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        if (!cs->too_big && cs->len + n > h->max_body) cs->too_big = 1;
        if (!cs->too_big) {
            char *p = realloc(cs->body, cs->len + n + 1);
            if (p == NULL) return MHD_NO;
            memcpy(p + cs->len, upload_data, n);
            cs->len += n;
            p[cs->len] = '\0';
            cs->body = p;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    memset(&req, 0, sizeof req);
    memset(&res, 0, sizeof res);
    req.method = method;
    req.url = url;
    req.too_big = cs->too_big;
    req.body = cs->too_big || !cs->body ? "" : cs->body;
    req.body_len = cs->too_big ? 0 : cs->len;
    req.conn = conn;
    res.status = 500;
    h->route(h->user, &req, &res);

    if (res.body) {
        response =
            MHD_create_response_from_buffer(strlen(res.body), res.body, MHD_RESPMEM_MUST_FREE);
        if (response == NULL) {
            free(res.body);
            return MHD_NO;
        }
        MHD_add_response_header(response, "Content-Type", "application/json");
    } else {
        response = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (response == NULL) return MHD_NO;
    }
    ret = MHD_queue_response(conn, res.status, response);
    MHD_destroy_response(response);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    conn_state *cs = *con_cls;
    (void)cls;
    (void)conn;
    (void)toe;
    if (cs) {
        free(cs->body);
        free(cs);
        *con_cls = NULL;
    }
}

/* See cafe.h. */
int cafe_httpd_start(cafe_httpd **out, unsigned port, int threaded, size_t max_body,
                     cafe_route_fn route, void *user, outbox_error *err)
{
    cafe_httpd *h;
    struct sockaddr_in addr;
    unsigned flags;

    *out = NULL;
    if ((h = calloc(1, sizeof *h)) == NULL) {
        return cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    }
    h->route = route;
    h->user = user;
    h->max_body = max_body;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    flags = threaded
                ? MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL
                : MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    h->daemon =
        MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                         (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)256, MHD_OPTION_END);
    if (h->daemon == NULL) {
        free(h);
        return cafe_error(err, OUTBOX_ECONFIG,
                          "cannot listen on 127.0.0.1:%u (port in use?); pick another port", port);
    }
    *out = h;
    return OUTBOX_OK;
}

/* See cafe.h. */
void cafe_httpd_free(cafe_httpd *h)
{
    if (h == NULL) return;
    MHD_stop_daemon(h->daemon);
    free(h);
}

/* See cafe.h. */
const char *cafe_request_header(const cafe_request *req, const char *name)
{
    return MHD_lookup_connection_value((struct MHD_Connection *)req->conn, MHD_HEADER_KIND, name);
}

typedef struct header_walk {
    void (*fn)(void *user, const char *name, const char *value);
    void *user;
} header_walk;

static enum MHD_Result walk_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    header_walk *w = cls;
    (void)kind;
    if (key) w->fn(w->user, key, value ? value : "");
    return MHD_YES;
}

/* See cafe.h. */
void cafe_request_headers(const cafe_request *req,
                          void (*fn)(void *user, const char *name, const char *value), void *user)
{
    header_walk w = {fn, user};
    MHD_get_connection_values((struct MHD_Connection *)req->conn, MHD_HEADER_KIND, walk_header, &w);
}

/* See cafe.h. */
void cafe_respond_json(cafe_response *res, unsigned status, json_t *obj)
{
    res->status = status;
    free(res->body);
    res->body = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
}

/* See cafe.h. */
void cafe_respond_error(cafe_response *res, unsigned status, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cafe_respond_json(res, status, json_pack("{s:s}", "error", text));
}

/* See cafe.h. */
size_t cafe_body_write(char *ptr, size_t size, size_t nmemb, void *user)
{
    cafe_body *b = user;
    size_t n = size * nmemb;
    char *grown;
    if (b->len + n > b->limit) return b->keep_start ? n : 0;
    grown = realloc(b->data, b->len + n + 1);
    if (!grown) return 0;
    memcpy(grown + b->len, ptr, n);
    b->data = grown;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
