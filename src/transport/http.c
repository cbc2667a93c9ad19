/*
 * http.c - the http:// and https:// destinations: one webhook POST per
 * message with libcurl's multi interface.
 *
 * Each request: body = the payload, content-type application/json,
 * CloudEvents HTTP binary-mode headers (ce-specversion, ce-id, ce-source,
 * ce-type, ce-subject = aggregate id, ce-time, ce-aggregatetype, and each
 * message header as a ce-<extension> named as in structured mode), values
 * percent-encoded as that binding asks (space, '"', '%' and bytes outside
 * printable ASCII); traceparent/tracestate also as plain W3C headers; the
 * Standard Webhooks headers webhook-id (= message id), webhook-timestamp
 * and, with a secret, webhook-signature; idempotency-key = message id.
 *
 * Concurrency (guarantee 4): up to max_in_flight requests run at once over
 * connections the multi handle keeps between batches, but never two of the
 * same aggregate: the batch's messages of one aggregate form a chain and
 * the next starts only after the previous one got its 2xx.  When one fails,
 * the rest of its chain are not sent and get OUTBOX_EPUBLISH "held back".
 *
 * Outcomes: 2xx confirmed; timeouts, connection errors, TLS failures, 3xx,
 * 408, 429 and 5xx retriable (OUTBOX_EPUBLISH; Retry-After in seconds or as
 * an HTTP date becomes retry_after_ms; when every message of a batch fails
 * so, the relay takes it as the destination's outage and charges no
 * attempt); any other 4xx OUTBOX_EREJECTED with the status and the first
 * 200 bytes of the response body.
 *
 * Stop: the relay's stop calls the interrupt entry (async-signal-safe: an
 * atomic flag and one byte down a self-pipe).  curl_multi_poll watches that
 * pipe too, so a publish waiting on a slow or hanging destination returns
 * at once: requests still running are abandoned, and they and the messages
 * not started yet get OUTBOX_ESTOPPED, which the stopping relay leaves
 * pending as they were (not an attempt: like a crash mid-request, the
 * receiver's webhook-id dedup covers a request that did arrive); ones that
 * already got their 2xx keep it.  The flag stays set: the relay does not
 * publish again after a stop.
 *
 * Settings: --to-opt only, the URL's own query string belongs to the
 * target; the property table http_props says what each does.  With
 * endpoint.<TYPE>=URL (repeatable) one relay serves several subscribers,
 * each receiving the event types it consumes (the same secret and TLS
 * settings).  The ordering rule above holds across endpoints: an
 * aggregate's chain spans them.
 * The URLs are only ever shown redacted; the secret never.  A secret
 * without the "whsec_" prefix is taken as the base64 of the key (as the
 * Standard Webhooks libraries do), with a warning: it is most often a
 * plain password that the receiver would use differently.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* What the settings are read into.  The table is in every build, so help
 * and docs describe the driver where libcurl is absent too. */
typedef struct http_config {
    char *secret_file;
    char *secret_env;
    int64_t connect_timeout_ms;
    int64_t timeout_ms;
    int64_t max_in_flight;
    char *ca_file;
    int insecure;
} http_config;

#define HTTP_FIELD(f) offsetof(http_config, f)

static const outbox_prop http_props[] = {
    {"secret_file", OUTBOX_PROP_SECRET_FILE, HTTP_FIELD(secret_file), NULL, NULL, NULL,
     "A file holding the Standard Webhooks secret (whsec_ + base64) that signs every request "
     "(webhook-signature).  Without a secret, requests are not signed."},
    {"secret_env", OUTBOX_PROP_STRING, HTTP_FIELD(secret_env), NULL, NULL, "NAME",
     "The environment variable holding that secret, instead of secret_file."},
    {"connect_timeout", OUTBOX_PROP_DURATION, HTTP_FIELD(connect_timeout_ms), "5s", "1ms..1h", NULL,
     "How long opening a connection may take."},
    {"timeout", OUTBOX_PROP_DURATION, HTTP_FIELD(timeout_ms), "30s", "1ms..1h", NULL,
     "How long a whole request may take; a request that takes longer is retried."},
    {"max_in_flight", OUTBOX_PROP_INT, HTTP_FIELD(max_in_flight), "16", "1..1024", NULL,
     "Requests running at once (never two of one aggregate)."},
    {"ca_file", OUTBOX_PROP_PATH, HTTP_FIELD(ca_file), NULL, NULL, NULL,
     "A PEM bundle of the CA certificates to trust, instead of the system's."},
    {"insecure", OUTBOX_PROP_BOOL, HTTP_FIELD(insecure), "false", NULL, NULL,
     "true: TLS certificates are not verified (local testing only; logged as a warning)."},
    {"endpoint.<TYPE>", OUTBOX_PROP_STRING, 0, NULL, NULL, "URL",
     "Messages of event type TYPE are POSTed to this http(s) URL instead of the destination's "
     "(one per type)."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_CURL

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define COMPONENT "transport.http"
#define EXCERPT_MAX 200
#define MAX_ENDPOINTS 64

/* An event type routed to a URL of its own (endpoint.<TYPE>=URL). */
typedef struct endpoint {
    char *type;
    char *url;
} endpoint;

typedef struct request {
    CURL *easy;
    struct curl_slist *headers;
    size_t index; /* message index in the batch */
    int busy;
    char excerpt[EXCERPT_MAX + 1];
    size_t excerpt_len;
    int64_t retry_after_ms;
    char errbuf[CURL_ERROR_SIZE];
} request;

enum { PHASE_WAITING = 0, PHASE_RUNNING = 1, PHASE_DONE = 2 };

typedef struct http_state {
    char *url;
    char shown[512];
    char *source;
    unsigned char key[OUTBOX_WEBHOOK_KEY_MAX];
    size_t key_len;
    int sign;
    long connect_timeout_ms;
    long timeout_ms;
    unsigned max_in_flight;
    char *ca_file;
    int insecure;
    endpoint *endpoints;
    size_t endpoint_count;

    CURLM *multi;
    int pipe_rd, pipe_wr; /* interrupt self-pipe, -1 when not open */
    atomic_int interrupted;
    request *reqs; /* max_in_flight slots, easy handles reused across batches */

    /* Per-batch scratch, grown as needed. */
    size_t cap;
    long *next_same; /* next message of the same aggregate in the batch, or -1 */
    char *has_prev;
    char *phase;
    size_t *ready;        /* FIFO of indexes that may start */
    outbox_aggindex aggs; /* aggregate id -> index of its last message (keys borrowed
                             from the batch being published) */
    outbox_buf line;
} http_state;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ------------------------------------------------------------------------
 * Settings
 * ---------------------------------------------------------------------- */

/* Reads the first line-ish content of a secret file (at most 4 KiB). */
static int read_secret_file(const char *path, char *out, size_t out_len, outbox_error *err)
{
    FILE *f = fopen(path, "rb");
    size_t n;
    if (f == NULL)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "cannot read secret_file=%s: %s; give a readable file holding "
                             "the whsec_ secret",
                             path, strerror(errno));
    n = fread(out, 1, out_len - 1, f);
    fclose(f);
    out[n] = '\0';
    if (n == out_len - 1)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "secret_file=%s is too large to be a webhook secret", path);
    return OUTBOX_OK;
}

/* 0 when url is an http(s) URL with a host (what curl will accept). */
static int check_http_url(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL, *scheme = NULL;
    int ok = u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host && *host && scheme &&
             (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0);
    curl_free(host);
    curl_free(scheme);
    curl_url_cleanup(u);
    return ok ? 0 : -1;
}

/* endpoint.<TYPE>=URL: routes one event type to a URL of its own. */
static int add_endpoint(http_state *st, const char *type, size_t type_len, const char *url,
                        outbox_error *err)
{
    char shown[256];
    endpoint *e;
    size_t i;

    outbox__url_redact(url, shown, sizeof shown);
    if (type_len == 0 || type_len > outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 0))
        return outbox__error(err, OUTBOX_ECONFIG,
                             "endpoint.<TYPE>=URL needs an event type of 1 to %zu bytes after "
                             "\"endpoint.\", e.g. endpoint.OrderPlaced=https://host/hook",
                             outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 0));
    for (i = 0; i < st->endpoint_count; i++)
        if (strlen(st->endpoints[i].type) == type_len &&
            memcmp(st->endpoints[i].type, type, type_len) == 0)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "endpoint.%.*s is given twice; keep one URL per event type",
                                 (int)type_len, type);
    if (st->endpoint_count == MAX_ENDPOINTS)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "more than %d endpoint.<TYPE> settings; route the rest through the "
                             "destination URL",
                             MAX_ENDPOINTS);
    if (check_http_url(url) != 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "endpoint.%.*s=%s is not a valid http(s) URL; use e.g. "
                             "https://hooks.example.com/outbox",
                             (int)type_len, type, shown);
    if (st->endpoints == NULL) {
        st->endpoints = outbox__calloc(MAX_ENDPOINTS, sizeof *st->endpoints);
        if (st->endpoints == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    }
    e = &st->endpoints[st->endpoint_count];
    e->type = outbox__strndup(type, type_len);
    e->url = outbox__strdup(url);
    if (e->type == NULL || e->url == NULL) {
        outbox__free(e->type);
        outbox__free(e->url);
        e->type = e->url = NULL;
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    }
    st->endpoint_count++;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "event type %.*s goes to %s", (int)type_len, type,
                shown);
    return OUTBOX_OK;
}

/* The URL a message goes to: its type's endpoint, else the destination's. */
static const char *url_for(const http_state *st, const outbox_msg *m)
{
    size_t i;
    for (i = 0; i < st->endpoint_count; i++)
        if (strcmp(st->endpoints[i].type, m->type) == 0) return st->endpoints[i].url;
    return st->url;
}

/* The signing key from secret_file or secret_env (at most one; none: the
 * requests are not signed). */
static int load_secret(http_state *st, const char *secret_file, const char *secret_env,
                       outbox_error *err)
{
    int rc;

    if (secret_file && secret_env)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "give either secret_file or secret_env, not both");
    if (secret_file || secret_env) {
        char text[4096];
        char what[300];
        if (secret_file) {
            rc = read_secret_file(secret_file, text, sizeof text, err);
            if (rc != OUTBOX_OK) return rc;
            snprintf(what, sizeof what, "the content of secret_file=%s", secret_file);
        } else {
            const char *e = getenv(secret_env);
            if (e == NULL || *e == '\0')
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "secret_env=%s: the environment variable is not set or "
                                     "empty; export it with the whsec_ secret",
                                     secret_env);
            if (strlen(e) >= sizeof text)
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "secret_env=%s is too long to be a webhook secret",
                                     secret_env);
            strcpy(text, e);
            snprintf(what, sizeof what, "the value of environment variable %s", secret_env);
        }
        rc = outbox__webhook_key_decode(text, what, st->key, &st->key_len, err);
        if (rc == OUTBOX_OK && strncmp(text, "whsec_", 6) != 0)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "the webhook secret in %s has no \"whsec_\" prefix: it is used as the "
                        "base64 of the signing key, as with the prefix; a receiver that takes "
                        "it as a plain password will reject every signature (Standard "
                        "Webhooks secrets are \"whsec_\" + base64)",
                        what);
        memset(text, 0, sizeof text);
        if (rc != OUTBOX_OK) return rc;
        st->sign = 1;
    }
    return OUTBOX_OK;
}

/* Reads the --to-opt settings (http_props) into st, then the secret. */
static int apply_options(http_state *st, const outbox_transport_config *cfg, outbox_error *err)
{
    const char *scheme = strncasecmp(st->url, "https:", 6) == 0 ? "https" : "http";
    char what[32];
    http_config c;
    outbox_url u;
    size_t i;
    int rc;

    memset(&c, 0, sizeof c);
    snprintf(what, sizeof what, "%s destination", scheme);
    rc = outbox__props_options(&u, scheme, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    rc = outbox__props_parse(http_props, what, &u, &c, err);
    for (i = 0; rc == OUTBOX_OK && i < u.param_count; i++)
        if (strncmp(u.params[i].key, "endpoint.", 9) == 0)
            rc = add_endpoint(st, u.params[i].key + 9, strlen(u.params[i].key + 9),
                              u.params[i].value, err);
    if (rc == OUTBOX_OK) {
        st->connect_timeout_ms = (long)c.connect_timeout_ms;
        st->timeout_ms = (long)c.timeout_ms;
        st->max_in_flight = (unsigned)c.max_in_flight;
        st->insecure = c.insecure;
        st->ca_file = c.ca_file;
        c.ca_file = NULL;
        rc = load_secret(st, c.secret_file, c.secret_env, err);
    }
    outbox__props_free(http_props, &c);
    outbox__url_free(&u);
    return rc;
}

/* ------------------------------------------------------------------------
 * Open / close
 * ---------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    request *rq = user;
    size_t n = size * nmemb, room = EXCERPT_MAX - rq->excerpt_len;
    if (room > 0) {
        size_t k = n < room ? n : room;
        memcpy(rq->excerpt + rq->excerpt_len, data, k);
        rq->excerpt_len += k;
        rq->excerpt[rq->excerpt_len] = '\0';
    }
    return n;
}

/* Retry-After: delay-seconds or an HTTP date. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *user)
{
    request *rq = user;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        char value[128];
        size_t len = n - (sizeof name - 1);
        const char *v = data + sizeof name - 1;
        while (len > 0 && (*v == ' ' || *v == '\t'))
            v++, len--;
        while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
            len--;
        if (len > 0 && len < sizeof value) {
            char *end = NULL;
            long long secs;
            memcpy(value, v, len);
            value[len] = '\0';
            secs = strtoll(value, &end, 10);
            if (end != value && *end == '\0') {
                if (secs > 0) rq->retry_after_ms = (secs > 86400 ? 86400 : secs) * 1000;
            } else {
                time_t when = curl_getdate(value, NULL);
                if (when != (time_t)-1) {
                    int64_t ms = (int64_t)when * 1000 - outbox__now_us() / 1000;
                    if (ms > 86400000) ms = 86400000;
                    if (ms > 0) rq->retry_after_ms = ms;
                }
            }
        }
    }
    return n;
}

static int setup_easy(http_state *st, request *rq, outbox_error *err)
{
    CURL *e = curl_easy_init();
    CURLcode c = CURLE_OK;
    if (e == NULL) return outbox__error(err, OUTBOX_ENOMEM, "cannot create a curl handle");
    rq->easy = e;
#define SET(opt, val)                                                                              \
    if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, st->url);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, st->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, st->timeout_ms);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, rq);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, rq);
    SET(CURLOPT_ERRORBUFFER, rq->errbuf);
    SET(CURLOPT_PRIVATE, rq);
    SET(CURLOPT_USERAGENT, "outbox/" OUTBOX_VERSION_STRING);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (st->ca_file) SET(CURLOPT_CAINFO, st->ca_file);
    if (st->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
#undef SET
    if (c != CURLE_OK)
        return outbox__error(err, OUTBOX_ECONFIG, "cannot configure libcurl for %s: %s", st->shown,
                             curl_easy_strerror(c));
    return OUTBOX_OK;
}

static void http_close(void *state)
{
    http_state *st = state;
    size_t i;
    if (st == NULL) return;
    for (i = 0; st->reqs && i < st->max_in_flight; i++) {
        request *rq = &st->reqs[i];
        if (rq->easy) {
            if (rq->busy && st->multi) curl_multi_remove_handle(st->multi, rq->easy);
            curl_easy_cleanup(rq->easy);
        }
        curl_slist_free_all(rq->headers);
    }
    if (st->multi) curl_multi_cleanup(st->multi);
    if (st->pipe_rd >= 0) close(st->pipe_rd);
    if (st->pipe_wr >= 0) close(st->pipe_wr);
    outbox__free(st->reqs);
    outbox__free(st->next_same);
    outbox__free(st->has_prev);
    outbox__free(st->phase);
    outbox__free(st->ready);
    outbox__aggindex_free(&st->aggs);
    outbox__buf_free(&st->line);
    memset(st->key, 0, sizeof st->key);
    outbox__free(st->url);
    outbox__free(st->source);
    outbox__free(st->ca_file);
    for (i = 0; i < st->endpoint_count; i++) {
        outbox__free(st->endpoints[i].type);
        outbox__free(st->endpoints[i].url);
    }
    outbox__free(st->endpoints);
    outbox__free(st);
}

static int http_open(void **state, const char *url, const outbox_transport_config *cfg,
                     outbox_error *err)
{
    http_state *st;
    CURLU *u = NULL;
    char *host = NULL;
    unsigned i;
    int rc;

    *state = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return outbox__error(err, OUTBOX_EINTERNAL, "libcurl failed to initialise: %s",
                             curl_easy_strerror(curl_init_rc));

    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    st->pipe_rd = st->pipe_wr = -1;
    atomic_init(&st->interrupted, 0);
    outbox__buf_init(&st->line);
    outbox__url_redact(url, st->shown, sizeof st->shown);

    u = curl_url();
    if (u == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
        goto fail;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host == NULL || !*host) {
        rc = outbox__error(err, OUTBOX_EBADURL,
                           "destination URL \"%s\" is not a valid http(s) URL; use e.g. "
                           "https://hooks.example.com/outbox",
                           st->shown);
        goto fail;
    }
    st->url = outbox__strdup(url);
    st->source = outbox__strdup(cfg->source && cfg->source[0] ? cfg->source : "/outbox");
    if (st->url == NULL || st->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
        goto fail;
    }
    rc = apply_options(st, cfg, err);
    if (rc != OUTBOX_OK) goto fail;

    st->multi = curl_multi_init();
    st->reqs = outbox__calloc(st->max_in_flight, sizeof *st->reqs);
    if (st->multi == NULL || st->reqs == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
        goto fail;
    }
    {
        int fds[2];
        if (pipe(fds) != 0) {
            rc = outbox__error(err, OUTBOX_EIO, "cannot create the http destination's pipe: %s",
                               strerror(errno));
            goto fail;
        }
        st->pipe_rd = fds[0];
        st->pipe_wr = fds[1];
        if (fcntl(fds[0], F_SETFL, O_NONBLOCK) != 0 || fcntl(fds[1], F_SETFL, O_NONBLOCK) != 0 ||
            fcntl(fds[0], F_SETFD, FD_CLOEXEC) != 0 || fcntl(fds[1], F_SETFD, FD_CLOEXEC) != 0) {
            rc = outbox__error(err, OUTBOX_EIO, "cannot set up the http destination's pipe: %s",
                               strerror(errno));
            goto fail;
        }
    }
    curl_multi_setopt(st->multi, CURLMOPT_MAXCONNECTS, (long)st->max_in_flight);
    for (i = 0; i < st->max_in_flight; i++) {
        rc = setup_easy(st, &st->reqs[i], err);
        if (rc != OUTBOX_OK) goto fail;
    }

    if (st->insecure)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "insecure=true: TLS certificates of %s are NOT verified; anyone on the "
                    "path can read and forge these webhooks; use it for local testing only",
                    st->shown);
    if (!st->sign)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "webhooks to %s are not signed (no secret_file or secret_env)", st->shown);
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "destination %s: up to %u requests in flight, connect timeout %ld ms, "
                "timeout %ld ms",
                st->shown, st->max_in_flight, st->connect_timeout_ms, st->timeout_ms);
    curl_free(host);
    curl_url_cleanup(u);
    *state = st;
    return OUTBOX_OK;

fail:
    curl_free(host);
    curl_url_cleanup(u);
    http_close(st);
    return rc;
}

/* ------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------- */

static const char *const reserved[] = {
    "specversion",     "id",         "source", "type",        "subject",      "time",
    "datacontenttype", "dataschema", "data",   "data_base64", "aggregatetype"};

/* Appends v percent-encoded as the CloudEvents HTTP binding asks. */
static void put_encoded(outbox_buf *b, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)v;
    for (; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7F || *p == '"' || *p == '%') {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            outbox__buf_append(b, esc, 3);
        } else {
            outbox__buf_append(b, (const char *)p, 1);
        }
    }
}

static int add_header(http_state *st, struct curl_slist **list, const char *name, const char *value,
                      int encode)
{
    struct curl_slist *l;
    outbox__buf_reset(&st->line);
    outbox__buf_puts(&st->line, name);
    outbox__buf_append(&st->line, ": ", 2);
    if (encode)
        put_encoded(&st->line, value);
    else
        outbox__buf_puts(&st->line, value);
    if (st->line.oom) return -1;
    l = curl_slist_append(*list, st->line.data);
    if (l == NULL) return -1;
    *list = l;
    return 0;
}

static int name_used(char (*names)[80], size_t n, const char *name)
{
    size_t i;
    for (i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(reserved[i], name) == 0) return 1;
    for (i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return 1;
    return 0;
}

static int build_headers(http_state *st, const outbox_msg *m, struct curl_slist **out)
{
    struct curl_slist *l = NULL;
    char time_text[32], ts[32], sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    char(*names)[80] = NULL;
    int64_t now_s = outbox__now_us() / 1000000;
    size_t i, used = 0;
    const char *tp = NULL, *tstate = NULL;
    int bad = 0;

    outbox_time_format(m->occurred_at, time_text);
    snprintf(ts, sizeof ts, "%lld", (long long)now_s);
    bad |= add_header(st, &l, "content-type", "application/json", 0);
    bad |= add_header(st, &l, "ce-specversion", "1.0", 0);
    bad |= add_header(st, &l, "ce-id", m->id, 0);
    bad |= add_header(st, &l, "ce-source", st->source, 1);
    bad |= add_header(st, &l, "ce-type", m->type, 1);
    bad |= add_header(st, &l, "ce-subject", m->aggregate_id, 1);
    bad |= add_header(st, &l, "ce-time", time_text, 0);
    if (m->aggregate_type && m->aggregate_type[0])
        bad |= add_header(st, &l, "ce-aggregatetype", m->aggregate_type, 1);
    if (m->header_count > 0) {
        names = outbox__malloc(m->header_count * sizeof *names);
        if (names == NULL) bad = 1;
    }
    for (i = 0; !bad && i < m->header_count; i++) {
        char hname[96];
        size_t n;
        outbox__cloudevent_ext_name(m->header_names[i], names[used], 64);
        if (!names[used][0]) continue;
        n = strlen(names[used]);
        while (name_used(names, used, names[used]) && n + 1 < sizeof names[used]) {
            memmove(names[used] + 1, names[used], n + 1);
            names[used][0] = 'x';
            n++;
        }
        snprintf(hname, sizeof hname, "ce-%s", names[used]);
        bad |= add_header(st, &l, hname, m->header_values[i], 1);
        used++;
        if (strcmp(m->header_names[i], "traceparent") == 0) tp = m->header_values[i];
        if (strcmp(m->header_names[i], "tracestate") == 0) tstate = m->header_values[i];
    }
    outbox__free(names);
    if (tp) bad |= add_header(st, &l, "traceparent", tp, 0);
    if (tstate) bad |= add_header(st, &l, "tracestate", tstate, 0);
    bad |= add_header(st, &l, "webhook-id", m->id, 0);
    bad |= add_header(st, &l, "webhook-timestamp", ts, 0);
    bad |= add_header(st, &l, "idempotency-key", m->id, 0);
    if (!bad && st->sign) {
        const char *body = m->payload ? m->payload : "";
        if (outbox__webhook_sign_key(st->key, st->key_len, m->id, now_s, body, strlen(body), sig) !=
            OUTBOX_OK)
            bad = 1;
        else
            bad |= add_header(st, &l, "webhook-signature", sig, 0);
        memset(sig, 0, sizeof sig);
    }
    bad |= add_header(st, &l, "expect", "", 0); /* no 100-continue round trip */
    if (bad) {
        curl_slist_free_all(l);
        return OUTBOX_ENOMEM;
    }
    *out = l;
    return OUTBOX_OK;
}

/* Grows the per-batch scratch to n messages (the aggregate index is
 * emptied): 0, or -1 when out of memory. */
static int ensure_scratch(http_state *st, size_t n)
{
    outbox__aggindex_reset(&st->aggs);
    if (outbox__aggindex_reserve(&st->aggs, n) != OUTBOX_OK) return -1;
    if (n <= st->cap) return 0;
    outbox__free(st->next_same);
    outbox__free(st->has_prev);
    outbox__free(st->phase);
    outbox__free(st->ready);
    st->next_same = outbox__malloc(n * sizeof *st->next_same);
    st->has_prev = outbox__malloc(n);
    st->phase = outbox__malloc(n);
    st->ready = outbox__malloc(n * sizeof *st->ready);
    st->cap = n;
    if (!st->next_same || !st->has_prev || !st->phase || !st->ready) {
        st->cap = 0;
        return -1;
    }
    return 0;
}

/* Links the messages of each aggregate into chains in batch order (the
 * index is empty, with room for n: ensure_scratch). */
static void link_chains(http_state *st, outbox_msg *const *msgs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t prev;
        st->next_same[i] = -1;
        st->has_prev[i] = 0;
        st->phase[i] = PHASE_WAITING;
        if (outbox__aggindex_insert(&st->aggs, msgs[i]->aggregate_id, (uint32_t)i, &prev)) {
            st->next_same[prev] = (long)i;
            st->has_prev[i] = 1;
        }
    }
}

typedef struct batch {
    outbox_msg *const *msgs;
    outbox_publish_result *results;
    size_t n, done, head, tail;
} batch;

static void set_result(outbox_publish_result *r, int code, int64_t retry_after_ms,
                       const char *error)
{
    r->code = code;
    r->retry_after_ms = retry_after_ms;
    snprintf(r->error, sizeof r->error, "%s", error ? error : "");
}

/* Records message i's outcome and releases or holds back its successor. */
static void finish(http_state *st, batch *b, size_t i, int code, int64_t retry_after_ms,
                   const char *error)
{
    long j;
    set_result(&b->results[i], code, retry_after_ms, error);
    st->phase[i] = PHASE_DONE;
    b->done++;
    j = st->next_same[i];
    if (j < 0) return;
    if (code == OUTBOX_OK) {
        st->ready[b->tail++] = (size_t)j;
        return;
    }
    while (j >= 0) {
        char why[160];
        snprintf(why, sizeof why, "held back behind %s of the same aggregate, which failed",
                 b->msgs[i]->id);
        set_result(&b->results[j], OUTBOX_EPUBLISH, 0, why);
        st->phase[j] = PHASE_DONE;
        b->done++;
        j = st->next_same[j];
    }
}

static request *free_request(http_state *st)
{
    unsigned i;
    for (i = 0; i < st->max_in_flight; i++)
        if (!st->reqs[i].busy) return &st->reqs[i];
    return NULL;
}

/* Starts message i on a free request; 0, or -1 after finishing it. */
static int start(http_state *st, batch *b, size_t i)
{
    request *rq = free_request(st);
    const outbox_msg *m = b->msgs[i];
    const char *body = m->payload ? m->payload : "";
    CURLMcode mc;

    if (rq == NULL) return -1; /* cannot happen: callers count slots */
    curl_slist_free_all(rq->headers);
    rq->headers = NULL;
    if (build_headers(st, m, &rq->headers) != OUTBOX_OK) {
        finish(st, b, i, OUTBOX_ENOMEM, 0, "out of memory building the request");
        return -1;
    }
    rq->index = i;
    rq->excerpt_len = 0;
    rq->excerpt[0] = '\0';
    rq->retry_after_ms = 0;
    rq->errbuf[0] = '\0';
    curl_easy_setopt(rq->easy, CURLOPT_URL, url_for(st, m));
    curl_easy_setopt(rq->easy, CURLOPT_HTTPHEADER, rq->headers);
    curl_easy_setopt(rq->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(rq->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    mc = curl_multi_add_handle(st->multi, rq->easy);
    if (mc != CURLM_OK) {
        char why[200];
        snprintf(why, sizeof why, "cannot start the request: %s", curl_multi_strerror(mc));
        finish(st, b, i, OUTBOX_EPUBLISH, 0, why);
        return -1;
    }
    rq->busy = 1;
    st->phase[i] = PHASE_RUNNING;
    return 0;
}

/* Makes the body excerpt printable on one line. */
static void clean_excerpt(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F) *s = ' ';
}

/* Maps a finished transfer to its outcome. */
static void complete(http_state *st, batch *b, request *rq, CURLcode cc)
{
    char why[256];
    long status = 0;
    size_t i = rq->index;

    rq->busy = 0;
    curl_multi_remove_handle(st->multi, rq->easy);
    if (cc != CURLE_OK) {
        snprintf(why, sizeof why, "%s: %.200s",
                 cc == CURLE_OPERATION_TIMEDOUT ? "timed out" : "request failed",
                 rq->errbuf[0] ? rq->errbuf : curl_easy_strerror(cc));
        finish(st, b, i, OUTBOX_EPUBLISH, 0, why);
        return;
    }
    curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &status);
    clean_excerpt(rq->excerpt);
    if (status >= 200 && status < 300) {
        finish(st, b, i, OUTBOX_OK, 0, NULL);
        return;
    }
    snprintf(why, sizeof why, "HTTP %ld: %.200s", status, rq->excerpt);
    if (status >= 400 && status < 500 && status != 408 && status != 429)
        finish(st, b, i, OUTBOX_EREJECTED, 0, why);
    else
        finish(st, b, i, OUTBOX_EPUBLISH, rq->retry_after_ms, why);
}

static int http_publish(void *state, outbox_msg *const *msgs, size_t n,
                        outbox_publish_result *results)
{
    http_state *st = state;
    batch b;
    unsigned in_flight = 0, abandoned = 0;
    size_t i;

    if (n == 0) return OUTBOX_OK;
    if (ensure_scratch(st, n) != 0) return OUTBOX_ENOMEM;
    memset(&b, 0, sizeof b);
    b.msgs = msgs;
    b.results = results;
    b.n = n;
    link_chains(st, msgs, n);
    for (i = 0; i < n; i++) {
        set_result(&results[i], OUTBOX_EPUBLISH, 0, "not attempted");
        if (!st->has_prev[i]) st->ready[b.tail++] = i;
    }

    while (b.done < n) {
        int running = 0, queued = 0;
        CURLMsg *cm;
        CURLMcode mc;
        int progressed = 0;

        if (atomic_load(&st->interrupted)) break;
        while (in_flight < st->max_in_flight && b.head < b.tail) {
            size_t k = st->ready[b.head++];
            if (st->phase[k] != PHASE_WAITING) continue;
            if (start(st, &b, k) == 0) in_flight++;
        }
        if (in_flight == 0) break; /* everything left was finished by start() */

        mc = curl_multi_perform(st->multi, &running);
        if (mc != CURLM_OK) {
            outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "curl_multi_perform: %s",
                        curl_multi_strerror(mc));
            break;
        }
        while ((cm = curl_multi_info_read(st->multi, &queued)) != NULL) {
            request *rq = NULL;
            char *priv = NULL;
            if (cm->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, &priv);
            rq = (request *)(void *)priv;
            if (rq == NULL || !rq->busy) continue;
            complete(st, &b, rq, cm->data.result);
            in_flight--;
            progressed = 1;
        }
        if (!progressed) {
            struct curl_waitfd wake;
            wake.fd = st->pipe_rd;
            wake.events = CURL_WAIT_POLLIN;
            wake.revents = 0;
            mc = curl_multi_poll(st->multi, &wake, 1, 1000, NULL);
            if (mc != CURLM_OK) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "curl_multi_poll: %s",
                            curl_multi_strerror(mc));
                break;
            }
        }
    }

    /* On a stop or a multi failure: abandon what is still running. */
    for (i = 0; i < st->max_in_flight; i++) {
        request *rq = &st->reqs[i];
        if (rq->busy) {
            curl_multi_remove_handle(st->multi, rq->easy);
            rq->busy = 0;
            abandoned++;
            set_result(&results[rq->index], OUTBOX_EPUBLISH, 0, "request abandoned");
        }
    }
    if (atomic_load(&st->interrupted) && b.done < n) {
        for (i = 0; i < n; i++)
            if (st->phase[i] != PHASE_DONE)
                set_result(&results[i], OUTBOX_ESTOPPED, 0,
                           "interrupted: the relay stopped before the destination answered");
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "stopping: %u requests to %s abandoned in flight and %zu messages not sent; "
                    "they stay pending",
                    abandoned, st->shown, n - b.done);
    }
    return OUTBOX_OK;
}

/* Async-signal-safe (see "Stop" at the top): an atomic store and write(2);
 * state must be an open http(s) destination. */
static void http_interrupt(void *state)
{
    http_state *st = state;
    int saved_errno = errno;
    ssize_t w;
    atomic_store(&st->interrupted, 1);
    w = write(st->pipe_wr, "i", 1);
    (void)w; /* a full pipe already wakes the poll */
    errno = saved_errno;
}

#define HTTP_ENTRY(f) f

#else /* !OUTBOX_HAVE_CURL */

#define HTTP_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_CURL */

/* The http:// destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_http = {
    .version = 4,
    .scheme = "http",
    .open = HTTP_ENTRY(http_open),
    .publish = HTTP_ENTRY(http_publish),
    .close = HTTP_ENTRY(http_close),
    .reopen = NULL,
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = HTTP_ENTRY(http_interrupt),
    .usage = "http://HOST/PATH",
    .doc = "Webhook: one POST per message (CloudEvents binary mode, Standard Webhooks "
           "headers); a 2xx answer confirms it.  Settings are given with --to-opt only: the "
           "URL's query is the target's.",
    .props = http_props,
};

/* The https:// destination driver: the same code; TLS verified by default. */
const outbox_transport_ops outbox__transport_https = {
    .version = 4,
    .scheme = "https",
    .open = HTTP_ENTRY(http_open),
    .publish = HTTP_ENTRY(http_publish),
    .close = HTTP_ENTRY(http_close),
    .reopen = NULL,
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = HTTP_ENTRY(http_interrupt),
    .usage = "https://HOST/PATH",
    .doc = "Webhook over TLS, as http:// (certificates verified unless insecure=true).",
    .props = http_props,
};
