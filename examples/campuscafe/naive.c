/*
 * naive.c - the chapter's "before": services that write their database and
 * send events directly, with no outbox and no inbox.
 *
 * Sender: one libcurl POST per event to its consumer's URL with the same
 * wire format as the library's webhook destination (body = payload;
 * CloudEvents ce-* headers; webhook-id/-timestamp/-signature;
 * idempotency-key), so the chaos proxy treats both modes alike.  It makes a
 * "reasonable" effort: up to 3 attempts, 1 s timeout each, a short pause in
 * between.  A lost response therefore becomes a duplicate delivery, and a
 * crash between the database write and the send loses the event.
 *
 * Consumers apply each delivery in its own transaction (no inbox, so a
 * duplicate is applied twice), answer, and hand their follow-up events to a
 * background sender whose queue lives in memory only.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ATTEMPTS 3
#define TIMEOUT_MS 1000L
#define PAUSE_US 200000

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *user)
{
    (void)ptr;
    (void)user;
    return size * nmemb;
}

/* Appends "name: value"; returns 0 or -1 when out of memory. */
static int add_header(struct curl_slist **list, const char *name, const char *value)
{
    char line[1024];
    struct curl_slist *l;
    snprintf(line, sizeof line, "%s: %s", name, value);
    if ((l = curl_slist_append(*list, line)) == NULL) return -1;
    *list = l;
    return 0;
}

/* CloudEvents extension name of a message header: lower-case letters and
 * digits only (correlation_id -> correlationid), as the library does. */
static void extension_name(const char *header, char *out, size_t len)
{
    size_t o = 0;
    for (; *header && o + 1 < len; header++) {
        char c = *header;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) out[o++] = c;
    }
    out[o] = '\0';
}

static struct curl_slist *build_headers(cafe_service *svc, const outbox_msg *msg, outbox_error *err)
{
    struct curl_slist *list = NULL;
    char time_text[32], ts[32], source[64], sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE], name[80];
    const char *payload = outbox_msg_payload(msg);
    int64_t now = cafe_now_us() / 1000000;
    size_t i;
    int bad = 0;

    outbox_time_format(outbox_msg_occurred_at(msg), time_text);
    snprintf(ts, sizeof ts, "%lld", (long long)now);
    snprintf(source, sizeof source, "/campuscafe/%s", svc->def->name);
    bad |= add_header(&list, "Content-Type", "application/json");
    bad |= add_header(&list, "Expect", "");
    bad |= add_header(&list, "ce-specversion", "1.0");
    bad |= add_header(&list, "ce-id", outbox_msg_id(msg));
    bad |= add_header(&list, "ce-source", source);
    bad |= add_header(&list, "ce-type", outbox_msg_type(msg));
    bad |= add_header(&list, "ce-subject", outbox_msg_aggregate_id(msg));
    bad |= add_header(&list, "ce-time", time_text);
    bad |= add_header(&list, "ce-aggregatetype", outbox_msg_aggregate_type(msg));
    for (i = 0; i < outbox_msg_header_count(msg); i++) {
        char hname[96];
        extension_name(outbox_msg_header_name(msg, i), name, sizeof name);
        if (!name[0]) continue;
        snprintf(hname, sizeof hname, "ce-%s", name);
        bad |= add_header(&list, hname, outbox_msg_header_value(msg, i));
    }
    bad |= add_header(&list, "webhook-id", outbox_msg_id(msg));
    bad |= add_header(&list, "webhook-timestamp", ts);
    bad |= add_header(&list, "idempotency-key", outbox_msg_id(msg));
    if (svc->cfg.secret[0]) {
        if (outbox_webhook_sign(svc->cfg.secret, outbox_msg_id(msg), now, payload, strlen(payload),
                                sig, err) != OUTBOX_OK) {
            curl_slist_free_all(list);
            return NULL;
        }
        bad |= add_header(&list, "webhook-signature", sig);
    }
    if (bad) {
        curl_slist_free_all(list);
        cafe_error(err, OUTBOX_ENOMEM, "out of memory building headers");
        return NULL;
        return NULL;
    }
    return list;
}

/* See cafe.h. */
int cafe_naive_post(cafe_service *svc, const outbox_msg *msg, outbox_error *err)
{
    int target = cafe_event_target(outbox_msg_type(msg));
    const char *url = target >= 0 ? svc->cfg.peer_url[target] : NULL;
    const char *payload = outbox_msg_payload(msg);
    struct curl_slist *headers = NULL;
    CURL *curl = NULL;
    char why[CURL_ERROR_SIZE] = "";
    long status = 0;
    int attempt, rc = OUTBOX_EPUBLISH;

    if (url == NULL) {
        cafe_error(err, OUTBOX_ECONFIG, "no URL for %s events", outbox_msg_type(msg));
        return OUTBOX_ECONFIG;
    }
    if ((curl = curl_easy_init()) == NULL) {
        cafe_error(err, OUTBOX_ENOMEM, "cannot create a curl handle");
    }
    for (attempt = 1; attempt <= ATTEMPTS; attempt++) {
        CURLcode cc;
        /* Fresh headers each attempt: a new timestamp, as a real retry has. */
        curl_slist_free_all(headers);
        if ((headers = build_headers(svc, msg, err)) == NULL) {
            rc = err->code;
            goto out;
        }
        curl_easy_reset(curl);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
        cc = curl_easy_perform(curl);
        status = 0;
        if (cc == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (cc == CURLE_OK && status >= 200 && status < 300) {
            rc = OUTBOX_OK;
            goto out;
        }
        if (cc != CURLE_OK)
            snprintf(why, sizeof why, "%s", curl_easy_strerror(cc));
        else
            snprintf(why, sizeof why, "HTTP %ld", status);
        if (attempt < ATTEMPTS) usleep(PAUSE_US);
    }
    cafe_error(err, rc, "%s %s: gave up after %d attempts (last: %s)", outbox_msg_type(msg),
               outbox_msg_id(msg), ATTEMPTS, why);
out:
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    return rc;
}

/* ------------------------------------------------------------------------
 * Background sender of a consumer's follow-up events
 * ---------------------------------------------------------------------- */

typedef struct queued {
    outbox_msg *msg;
    struct queued *next;
} queued;

struct cafe_naive_sender {
    cafe_service *svc;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    queued *head, *tail;
    int stopping;
};

static void *sender_thread(void *arg)
{
    cafe_naive_sender *s = arg;
    for (;;) {
        queued *q;
        outbox_error err;
        pthread_mutex_lock(&s->lock);
        while (!s->stopping && s->head == NULL)
            pthread_cond_wait(&s->cond, &s->lock);
        if (s->stopping) {
            pthread_mutex_unlock(&s->lock);
            return NULL;
        }
        q = s->head;
        s->head = q->next;
        if (s->head == NULL) s->tail = NULL;
        pthread_mutex_unlock(&s->lock);
        memset(&err, 0, sizeof err);
        if (cafe_naive_post(s->svc, q->msg, &err) != OUTBOX_OK)
            cafe_log(s->svc, "event lost: %s", err.message);
        outbox_msg_free(q->msg);
        free(q);
    }
}

/* See cafe.h. */
int cafe_naive_sender_start(cafe_naive_sender **out, cafe_service *svc, outbox_error *err)
{
    cafe_naive_sender *s = calloc(1, sizeof *s);
    *out = NULL;
    if (s == NULL) {
        return cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    }
    s->svc = svc;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, sender_thread, s) != 0) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        free(s);
        return cafe_error(err, OUTBOX_ENOMEM, "cannot start the sender thread");
    }
    *out = s;
    return OUTBOX_OK;
}

/* See cafe.h. */
void cafe_naive_sender_free(cafe_naive_sender *s)
{
    queued *q, *next;
    if (s == NULL) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    for (q = s->head; q; q = next) {
        next = q->next;
        outbox_msg_free(q->msg);
        free(q);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

/* See cafe.h. */
void cafe_naive_sender_push_pending(cafe_naive_sender *s, cafe_service *svc)
{
    size_t i;
    pthread_mutex_lock(&s->lock);
    for (i = 0; i < svc->npending; i++) {
        queued *q = calloc(1, sizeof *q);
        if (q == NULL) {
            outbox_msg_free(svc->pending[i]);
            continue;
        }
        q->msg = svc->pending[i];
        if (s->tail)
            s->tail->next = q;
        else
            s->head = q;
        s->tail = q;
    }
    svc->npending = 0;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* ------------------------------------------------------------------------
 * Naive receiver
 * ---------------------------------------------------------------------- */

/* Rebuilds the event from the request; NULL with why filled. */
static outbox_msg *request_message(const cafe_request *req, char *why, size_t why_len)
{
    const char *id = cafe_request_header(req, "ce-id");
    const char *type = cafe_request_header(req, "ce-type");
    const char *subject = cafe_request_header(req, "ce-subject");
    const char *atype = cafe_request_header(req, "ce-aggregatetype");
    const char *corr = cafe_request_header(req, "ce-correlationid");
    const char *cause = cafe_request_header(req, "ce-causationid");
    outbox_msg *msg = NULL;
    outbox_error err;

    memset(&err, 0, sizeof err);
    if (id == NULL) id = cafe_request_header(req, "webhook-id");
    if (id == NULL || type == NULL || subject == NULL) {
        snprintf(why, why_len, "missing header ce-id, ce-type or ce-subject");
        return NULL;
    }
    if (outbox_msg_new(&msg, type, atype, subject, req->body_len ? req->body : NULL, &err) !=
            OUTBOX_OK ||
        outbox_msg_set_id(msg, id, &err) != OUTBOX_OK ||
        (corr && outbox_msg_set_header(msg, "correlationid", corr, &err) != OUTBOX_OK) ||
        (cause && outbox_msg_set_header(msg, "causationid", cause, &err) != OUTBOX_OK)) {
        snprintf(why, why_len, "%s", err.message);
        outbox_msg_free(msg);
        return NULL;
    }
    return msg;
}

/* See cafe.h. */
void cafe_naive_receive(cafe_service *svc, const cafe_request *req, cafe_response *res)
{
    outbox_msg *msg;
    outbox_error err;
    char why[512];
    int rc;

    memset(&err, 0, sizeof err);
    if (svc->cfg.secret[0] &&
        outbox_webhook_verify(svc->cfg.secret, cafe_request_header(req, "webhook-id"),
                              cafe_request_header(req, "webhook-timestamp"),
                              cafe_request_header(req, "webhook-signature"), req->body,
                              req->body_len, 0, 0, &err) != OUTBOX_OK) {
        cafe_respond_error(res, 401, "%s", err.message);
        return;
    }
    if ((msg = request_message(req, why, sizeof why)) == NULL) {
        cafe_respond_error(res, 400, "%s", why);
        return;
    }
    pthread_mutex_lock(&svc->db_lock);
    if (sqlite3_exec(svc->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = cafe_error(&err, OUTBOX_EBUSY, "BEGIN: %s", sqlite3_errmsg(svc->db));
    } else {
        rc = svc->def->handle(svc, svc->db, msg, &err);
        if (rc == OUTBOX_OK && sqlite3_exec(svc->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            rc = cafe_error(&err, OUTBOX_ESTORE, "COMMIT: %s", sqlite3_errmsg(svc->db));
        }
        if (rc != OUTBOX_OK && !sqlite3_get_autocommit(svc->db))
            sqlite3_exec(svc->db, "ROLLBACK", NULL, NULL, NULL);
    }
    if (rc == OUTBOX_OK)
        cafe_naive_sender_push_pending(svc->sender, svc);
    else
        cafe_pending_clear(svc);
    pthread_mutex_unlock(&svc->db_lock);
    outbox_msg_free(msg);
    if (rc == OUTBOX_OK)
        cafe_respond_json(res, 204, NULL);
    else
        cafe_respond_error(res, 500, "%s", err.message);
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
