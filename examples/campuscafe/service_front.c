/*
 * service_front.c - a service's event endpoint: GET /stats answered here,
 * POST /events handed unchanged to the library's webhook receiver on its
 * private loopback port (outbox mode), so the sender sees the receiver's
 * answer, or applied by the naive receiver (naive mode).
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "service.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------
 * Event endpoint front: GET /stats, POST /events
 * ---------------------------------------------------------------------- */

static void stats_answer(cafe_service *svc, cafe_response *res)
{
    sqlite3 *rdb = NULL;
    json_t *obj;

    if (sqlite3_open_v2(svc->db_path, &rdb, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(rdb);
        cafe_respond_error(res, 503, "cannot open %s", svc->db_path);
        return;
    }
    sqlite3_busy_timeout(rdb, 2000);
    obj = json_object();
    json_object_set_new(obj, "service", json_string(svc->def->name));
    json_object_set_new(obj, "mode", json_string(svc->cfg.naive ? "naive" : "outbox"));
    json_object_set_new(obj, "outbox_pending", json_integer(cafe_outbox_pending(rdb)));
    if (svc->def->stats) svc->def->stats(svc, rdb, obj);
    sqlite3_close(rdb);
    cafe_respond_json(res, 200, obj);
}

/* GET /stats; see cafe.h. */
void cafe_stats_answer(cafe_service *svc, cafe_response *res)
{
    stats_answer(svc, res);
}

typedef struct forward_headers {
    struct curl_slist *list;
    int oom;
} forward_headers;

static void add_forward_header(void *user, const char *name, const char *value)
{
    forward_headers *fh = user;
    char line[8192];
    struct curl_slist *l;
    if (!strcasecmp(name, "host") || !strcasecmp(name, "content-length") ||
        !strcasecmp(name, "connection") || !strcasecmp(name, "transfer-encoding") ||
        !strcasecmp(name, "expect"))
        return;
    snprintf(line, sizeof line, "%s: %s", name, value ? value : "");
    l = curl_slist_append(fh->list, line);
    if (!l)
        fh->oom = 1;
    else
        fh->list = l;
}

/* Hands the request to the library receiver and relays its answer. */
static void forward_event(cafe_front *f, const cafe_request *req, cafe_response *res)
{
    forward_headers fh = {NULL, 0};
    cafe_body body = {NULL, 0, 65536, 1}; /* the receiver's answer: its start is enough */
    char url[64];
    long status = 0;
    CURLcode cc;

    cafe_request_headers(req, add_forward_header, &fh);
    if (!fh.oom) fh.list = curl_slist_append(fh.list, "Expect:");
    if (fh.oom || !fh.list) {
        curl_slist_free_all(fh.list);
        cafe_respond_error(res, 503, "out of memory");
        return;
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%u/events", f->receiver_port);
    curl_easy_reset(f->curl);
    curl_easy_setopt(f->curl, CURLOPT_URL, url);
    curl_easy_setopt(f->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(f->curl, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(f->curl, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
    curl_easy_setopt(f->curl, CURLOPT_HTTPHEADER, fh.list);
    curl_easy_setopt(f->curl, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(f->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, cafe_body_write);
    curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, &body);
    cc = curl_easy_perform(f->curl);
    if (cc == CURLE_OK) curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(fh.list);
    if (cc != CURLE_OK || status < 100) {
        free(body.data);
        cafe_respond_error(res, 503, "inbox receiver unavailable: %s", curl_easy_strerror(cc));
        return;
    }
    res->status = (unsigned)status;
    res->body = body.data;
}

void cafe_front_route(void *user, const cafe_request *req, cafe_response *res)
{
    cafe_front *f = user;
    if (strcmp(req->method, "GET") == 0 && strcmp(req->url, "/stats") == 0) {
        stats_answer(f->svc, res);
        return;
    }
    if (strcmp(req->method, "POST") != 0 || strcmp(req->url, "/events") != 0) {
        cafe_respond_error(res, 404, "no such endpoint: use POST /events or GET /stats");
        return;
    }
    if (req->too_big) {
        cafe_respond_error(res, 413, "event body too large");
        return;
    }
    if (f->svc->cfg.naive)
        cafe_naive_receive(f->svc, req, res);
    else if (f->receiver_port)
        forward_event(f, req, res);
    else
        cafe_respond_error(res, 404, "this service takes events from the NATS bus, not HTTP");
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
