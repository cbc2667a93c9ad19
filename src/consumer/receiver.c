/*
 * receiver.c - a webhook receiver for consumers written in C, on
 * libmicrohttpd: it accepts the POSTs of an http(s) destination, verifies
 * them (Standard Webhooks signature and timestamp), rebuilds the message
 * from the CloudEvents binary-mode headers and the body, and applies it
 * exactly once with the inbox:
 *
 *   BEGIN IMMEDIATE; outbox_inbox_record_sqlite(consumer, id);
 *     first time: handler(db, msg) -> COMMIT -> 204
 *     duplicate:  ROLLBACK -> 204 (the handler does not run)
 *   handler or database error: ROLLBACK -> 500 (the sender retries)
 *
 * So a 2xx always means "committed" (guarantee 6 over HTTP).  Requests that
 * cannot be right get 4xx and change nothing: 400 malformed, 401 unsigned,
 * bad signature or stale timestamp, 405 not POST, 413 body too large (from
 * Content-Length before the body is read, or while reading), 431 too many
 * headers.  Slow and idle clients are cut by MHD's connection timeout, the
 * connection count and the per-connection memory (header bytes) are
 * bounded.
 *
 * One MHD thread serves every connection (event-driven), so the receiver's
 * one SQLite connection is only ever used by that thread.
 *
 * HTTPS: with tls_cert_file and tls_key_file (PEM) the daemon serves TLS
 * (MHD_USE_TLS, libmicrohttpd built with GnuTLS); both files are read at
 * start-up and kept in memory until the receiver is freed.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_MHD

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define COMPONENT "receiver"

struct outbox_webhook_receiver {
    struct MHD_Daemon *daemon;
    sqlite3 *db;
    unsigned port;
    char *secret;
    char *consumer;
    char *tls_cert; /* PEM texts, NULL without TLS */
    char *tls_key;
    int64_t tolerance_s;
    size_t max_body_bytes;
    unsigned max_headers;
    outbox_webhook_handler_fn handler;
    void *handler_user;
    _Atomic uint64_t applied, duplicates, rejected, failed;
};

typedef struct request_ctx {
    outbox_buf body;
    int too_big;
} request_ctx;

/* Sets opts to the documented defaults. */
void outbox_webhook_receiver_options_init(outbox_webhook_receiver_options *opts)
{
    if (opts == NULL) return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->bind_address = "127.0.0.1";
    opts->tolerance_s = OUTBOX_WEBHOOK_TOLERANCE_S;
    opts->max_body_bytes = 1024 * 1024;
    opts->max_headers = 64;
    opts->connection_timeout_s = 10;
    opts->connection_limit = 64;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *resp;
    enum MHD_Result r;
    resp = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL) return MHD_NO;
    MHD_add_response_header(resp, "content-type", "text/plain; charset=utf-8");
    r = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result reject(outbox_webhook_receiver *r, struct MHD_Connection *c, unsigned status,
                              const char *text)
{
    atomic_fetch_add(&r->rejected, 1);
    outbox__log(OUTBOX_LOG_WARN, COMPONENT, "rejected a request with %u: %s", status, text);
    return reply(c, status, text);
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes a header value into a new string; NULL when malformed or
 * when it decodes to a control character, or (*oom set) out of memory. */
static char *decode_value(const char *v, int *oom)
{
    char *out = outbox__malloc(strlen(v) + 1), *o = out;
    if (out == NULL) {
        *oom = 1;
        return NULL;
    }
    while (*v) {
        if (*v == '%') {
            int hi = hex_value(v[1]), lo = hi >= 0 ? hex_value(v[2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                outbox__free(out);
                return NULL;
            }
            *o++ = (char)(hi * 16 + lo);
            v += 3;
        } else {
            *o++ = *v++;
        }
    }
    *o = '\0';
    return out;
}

/* The value of request header name (case-insensitive; the first one when
 * repeated), or NULL. */
static const char *header_value(const outbox_receiver_request *rq, const char *name)
{
    size_t i;
    for (i = 0; i < rq->header_count; i++)
        if (rq->headers[i].name != NULL && strcasecmp(rq->headers[i].name, name) == 0)
            return rq->headers[i].value;
    return NULL;
}

static const char *const standard_attrs[] = {"specversion",   "id",         "source",
                                             "type",          "subject",    "time",
                                             "aggregatetype", "dataschema", "datacontenttype"};

/* A ce-<extension> header becomes a message header named <extension>:
 * OUTBOX_OK (also for any other header), or an error in err. */
static int take_extension(outbox_msg *msg, const char *key, const char *value, outbox_error *err)
{
    char name[80];
    size_t i, n;
    char *decoded;
    int oom = 0, rc;
    if (key == NULL || strncasecmp(key, "ce-", 3) != 0) return OUTBOX_OK;
    n = strlen(key + 3);
    if (n == 0 || n >= sizeof name)
        return outbox__error(err, OUTBOX_EBADHEADERS, "header %.80s: bad extension name", key);
    for (i = 0; i < n; i++) {
        char ch = key[3 + i];
        name[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    name[n] = '\0';
    for (i = 0; i < sizeof standard_attrs / sizeof standard_attrs[0]; i++)
        if (strcmp(name, standard_attrs[i]) == 0) return OUTBOX_OK;
    decoded = decode_value(value ? value : "", &oom);
    if (decoded == NULL)
        return oom ? outbox__error(err, OUTBOX_ENOMEM, "out of memory reading header %.80s", key)
                   : outbox__error(err, OUTBOX_EBADHEADERCHAR,
                                   "header %.80s: malformed percent-encoding", key);
    rc = outbox_msg_set_header(msg, name, decoded, err);
    outbox__free(decoded);
    return rc;
}

/* What a refusal to build or verify answers: out of memory is the
 * receiver's trouble (503: the sender retries), anything else the
 * request's (4xx: retrying cannot help). */
static unsigned refusal_status(int rc, unsigned request_status)
{
    return rc == OUTBOX_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE : request_status;
}

/* Builds the message from the request: 0, or the HTTP status to answer
 * with why filled. */
static unsigned build_message(const outbox_receiver_request *rq, outbox_msg **out, char *why,
                              size_t why_len)
{
    const char *id = header_value(rq, "ce-id");
    const char *wid = header_value(rq, "webhook-id");
    const char *type = header_value(rq, "ce-type");
    const char *subject = header_value(rq, "ce-subject");
    const char *atype = header_value(rq, "ce-aggregatetype");
    const char *time_text = header_value(rq, "ce-time");
    char *type_d = NULL, *subject_d = NULL, *atype_d = NULL;
    outbox_msg *msg = NULL;
    outbox_error err;
    int64_t at = 0;
    unsigned status = MHD_HTTP_BAD_REQUEST;
    int rc, oom = 0;
    size_t i;

    memset(&err, 0, sizeof err);
    *out = NULL;
    if (id == NULL) id = wid;
    if (id == NULL || type == NULL || subject == NULL) {
        snprintf(why, why_len, "missing header: %s",
                 id == NULL     ? "ce-id (or webhook-id)"
                 : type == NULL ? "ce-type"
                                : "ce-subject");
        goto out;
    }
    if (wid != NULL && strcmp(wid, id) != 0) {
        snprintf(why, why_len, "webhook-id and ce-id differ");
        goto out;
    }
    if (time_text != NULL && outbox_time_parse(time_text, &at) != 0) {
        snprintf(why, why_len, "ce-time is not an RFC 3339 UTC time");
        goto out;
    }
    type_d = decode_value(type, &oom);
    subject_d = decode_value(subject, &oom);
    atype_d = atype ? decode_value(atype, &oom) : NULL;
    if (type_d == NULL || subject_d == NULL || (atype != NULL && atype_d == NULL)) {
        if (oom) status = MHD_HTTP_SERVICE_UNAVAILABLE;
        snprintf(why, why_len, "%s",
                 oom ? "out of memory reading the request"
                     : "malformed percent-encoding in ce-type, ce-subject or ce-aggregatetype");
        goto out;
    }
    if (rq->body[0] == '\0') {
        snprintf(why, why_len, "empty body: the payload must be JSON");
        goto out;
    }
    rc = outbox_msg_new(&msg, type_d, atype_d, subject_d, rq->body, &err);
    if (rc == OUTBOX_OK) rc = outbox_msg_set_id(msg, id, &err);
    if (rc == OUTBOX_OK && at != 0) rc = outbox_msg_set_occurred_at(msg, at, &err);
    for (i = 0; rc == OUTBOX_OK && i < rq->header_count; i++)
        rc = take_extension(msg, rq->headers[i].name, rq->headers[i].value, &err);
    if (rc != OUTBOX_OK) {
        status = refusal_status(rc, MHD_HTTP_BAD_REQUEST);
        snprintf(why, why_len, "%s", err.message);
        goto out;
    }
    *out = msg;
    msg = NULL;
    status = 0;
out:
    outbox_msg_free(msg);
    outbox__free(type_d);
    outbox__free(subject_d);
    outbox__free(atype_d);
    return status;
}

static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Applies msg once through the inbox; the HTTP status to answer. */
static unsigned apply(outbox_webhook_receiver *r, const outbox_msg *msg, char *why, size_t why_len)
{
    outbox_error err;
    int rc;

    memset(&err, 0, sizeof err);
    rc = sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, why_len, "database busy: %s", sqlite3_errmsg(r->db));
        return rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? MHD_HTTP_SERVICE_UNAVAILABLE
                                                        : MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    rc = outbox_inbox_record_sqlite(r->db, r->consumer, msg->id, &err);
    if (rc == OUTBOX_DUPLICATE) {
        rollback(r->db);
        atomic_fetch_add(&r->duplicates, 1);
        snprintf(why, why_len, "duplicate");
        return MHD_HTTP_NO_CONTENT;
    }
    if (rc != OUTBOX_OK) {
        rollback(r->db);
        snprintf(why, why_len, "inbox: %s", err.message);
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    rc = r->handler(r->handler_user, r->db, msg, &err);
    if (rc != OUTBOX_OK) {
        rollback(r->db);
        snprintf(why, why_len, "handler failed: %s",
                 err.message[0] ? err.message : outbox_strerror(rc));
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (OUTBOX_FAULT("receiver_before_commit") != 0 ||
        sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(why, why_len, "commit failed: %s", sqlite3_errmsg(r->db));
        rollback(r->db);
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    atomic_fetch_add(&r->applied, 1);
    why[0] = '\0';
    return MHD_HTTP_NO_CONTENT;
}

/* See internal.h. */
unsigned outbox__receiver_handle(outbox_webhook_receiver *r, const outbox_receiver_request *rq,
                                 char *why, size_t why_len)
{
    outbox_msg *msg = NULL;
    unsigned status;

    why[0] = '\0';
    if (strcmp(rq->method, "POST") != 0) {
        snprintf(why, why_len, "only POST is accepted");
        return MHD_HTTP_METHOD_NOT_ALLOWED;
    }
    if (memchr(rq->body, '\0', rq->body_len) != NULL) {
        snprintf(why, why_len, "NUL byte in the body");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (r->secret != NULL) {
        outbox_error err;
        int rc;
        memset(&err, 0, sizeof err);
        rc = outbox_webhook_verify(
            r->secret, header_value(rq, "webhook-id"), header_value(rq, "webhook-timestamp"),
            header_value(rq, "webhook-signature"), rq->body, rq->body_len, r->tolerance_s, 0, &err);
        if (rc != OUTBOX_OK) {
            snprintf(why, why_len, "%s", err.message);
            return rc == OUTBOX_EBADTIMESTAMP ? MHD_HTTP_BAD_REQUEST
                   : rc == OUTBOX_ENOTBUILT   ? MHD_HTTP_INTERNAL_SERVER_ERROR
                                              : refusal_status(rc, MHD_HTTP_UNAUTHORIZED);
        }
    }
    status = build_message(rq, &msg, why, why_len);
    if (status != 0) return status;
    status = apply(r, msg, why, why_len);
    outbox_msg_free(msg);
    return status;
}

/* Headers being collected from MHD into a request (at most cap). */
typedef struct header_collect {
    outbox_receiver_request *rq;
    outbox_receiver_header *headers;
    size_t cap;
} header_collect;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    header_collect *hc = cls;
    (void)kind;
    if (hc->rq->header_count >= hc->cap) return MHD_NO;
    hc->headers[hc->rq->header_count].name = key;
    hc->headers[hc->rq->header_count].value = value;
    hc->rq->header_count++;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    outbox_webhook_receiver *r = cls;
    request_ctx *ctx = *con_cls;
    outbox_receiver_request rq;
    outbox_receiver_header *headers;
    header_collect hc;
    char why[600];
    unsigned status;
    int count;
    (void)url;
    (void)version;

    if (ctx == NULL) {
        const char *len_text;
        ctx = outbox__calloc(1, sizeof *ctx);
        if (ctx == NULL) return MHD_NO;
        outbox__buf_init(&ctx->body);
        *con_cls = ctx;
        count = MHD_get_connection_values(c, MHD_HEADER_KIND, NULL, NULL);
        if (count < 0 || (unsigned)count > r->max_headers)
            return reject(r, c, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers");
        if (strcmp(method, "POST") != 0)
            return reject(r, c, MHD_HTTP_METHOD_NOT_ALLOWED, "only POST is accepted");
        len_text = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "content-length");
        if (len_text && strtoull(len_text, NULL, 10) > r->max_body_bytes)
            return reject(r, c, MHD_HTTP_CONTENT_TOO_LARGE, "body larger than the limit");
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!ctx->too_big) {
            if (ctx->body.len + *upload_data_size > r->max_body_bytes) {
                ctx->too_big = 1;
                outbox__buf_free(&ctx->body);
                outbox__buf_init(&ctx->body);
            } else {
                outbox__buf_append(&ctx->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (ctx->too_big) return reject(r, c, MHD_HTTP_CONTENT_TOO_LARGE, "body larger than the limit");
    count = MHD_get_connection_values(c, MHD_HEADER_KIND, NULL, NULL);
    headers = outbox__calloc(count > 0 ? (size_t)count : 1, sizeof *headers);
    if (ctx->body.oom || headers == NULL) {
        outbox__free(headers);
        atomic_fetch_add(&r->failed, 1);
        return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    memset(&rq, 0, sizeof rq);
    rq.method = method;
    rq.headers = headers;
    rq.body = ctx->body.data ? ctx->body.data : "";
    rq.body_len = ctx->body.len;
    hc.rq = &rq;
    hc.headers = headers;
    hc.cap = count > 0 ? (size_t)count : 0;
    MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, &hc);

    status = outbox__receiver_handle(r, &rq, why, sizeof why);
    outbox__free(headers);
    if (status >= 500) {
        atomic_fetch_add(&r->failed, 1);
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "request not applied (%u): %s", status, why);
    } else if (status >= 400) {
        return reject(r, c, status, why);
    }
    return reply(c, status, status >= 300 ? why : "");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request_ctx *ctx = *con_cls;
    (void)cls;
    (void)c;
    (void)toe;
    if (ctx == NULL) return;
    outbox__buf_free(&ctx->body);
    outbox__free(ctx);
    *con_cls = NULL;
}

/* Reads a whole PEM file (at most 1 MiB) into a NUL-terminated string. */
static int read_pem(const char *path, const char *setting, char **out, outbox_error *err)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t n = 0, cap = 0;
    int rc = OUTBOX_OK;

    *out = NULL;
    if (f == NULL)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "webhook receiver: cannot read %s %s: %s; give a readable PEM file",
                             setting, path, strerror(errno));
    for (;;) {
        size_t got;
        if (cap - n < 4096) {
            char *more;
            cap = cap ? cap * 2 : 8192;
            if (cap > 1024 * 1024 + 8192) {
                rc = outbox__error(err, OUTBOX_ECONFIG,
                                   "webhook receiver: %s %s is larger than 1 MiB; is it a PEM "
                                   "file?",
                                   setting, path);
                goto out;
            }
            more = outbox__realloc(text, cap);
            if (more == NULL) {
                rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
                goto out;
            }
            text = more;
        }
        got = fread(text + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f) || n == 0 || strstr(text, "-----BEGIN ") == NULL) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "webhook receiver: %s %s is empty or not PEM (no \"-----BEGIN\" "
                           "line)",
                           setting, path);
        goto out;
    }
    text[n] = '\0';
    *out = text;
    text = NULL;
out:
    fclose(f);
    if (text) memset(text, 0, cap);
    outbox__free(text);
    return rc;
}

/* Starts a receiver (see outbox.h). */
int outbox_webhook_receiver_new(outbox_webhook_receiver **out,
                                const outbox_webhook_receiver_options *opts, outbox_error *err)
{
    outbox_webhook_receiver *r = NULL;
    outbox_webhook_receiver_options copy;
    struct sockaddr_in addr;
    const union MHD_DaemonInfo *info;
    const char *bind_address;
    int rc;

    if (out == NULL || opts == NULL)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_webhook_receiver_new: NULL argument");
    *out = NULL;
    /* Only the caller's size is read: fields past it keep their defaults. */
    outbox_webhook_receiver_options_init(&copy);
    rc = outbox__options_copy(&copy, sizeof copy, opts, opts->size,
                              offsetof(outbox_webhook_receiver_options, tls_cert_file),
                              "outbox_webhook_receiver_new", "outbox_webhook_receiver_options_init",
                              err);
    if (rc != OUTBOX_OK) return rc;
    opts = &copy;
    if (opts->db_path == NULL || opts->consumer == NULL || opts->consumer[0] == '\0' ||
        opts->handler == NULL)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "webhook receiver: db_path, consumer and handler are required");
    bind_address = opts->bind_address && opts->bind_address[0] ? opts->bind_address : "127.0.0.1";
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opts->port);
    if (opts->port > 65535 || inet_pton(AF_INET, bind_address, &addr.sin_addr) != 1)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "webhook receiver: bind_address \"%.64s\" / port %u is not an IPv4 "
                             "address and a port up to 65535",
                             bind_address, opts->port);

    r = outbox__calloc(1, sizeof *r);
    if (r == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    r->consumer = outbox__strdup(opts->consumer);
    r->secret = opts->secret ? outbox__strdup(opts->secret) : NULL;
    if (r->consumer == NULL || (opts->secret && r->secret == NULL)) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
        goto fail;
    }
    if (r->secret) {
        unsigned char key[OUTBOX_WEBHOOK_KEY_MAX];
        size_t key_len;
        rc = outbox__webhook_key_decode(r->secret, "the receiver's secret", key, &key_len, err);
        memset(key, 0, sizeof key);
        if (rc != OUTBOX_OK) goto fail;
        if (strncmp(r->secret, "whsec_", 6) != 0)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "the receiver's secret has no \"whsec_\" prefix: it is used as the "
                        "base64 of the signing key, as with the prefix; a sender that takes "
                        "it as a plain password will not match (Standard Webhooks secrets "
                        "are \"whsec_\" + base64)");
    } else {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "no secret: unsigned webhooks are accepted (use this for testing only)");
    }
    r->tolerance_s = opts->tolerance_s > 0 ? opts->tolerance_s : OUTBOX_WEBHOOK_TOLERANCE_S;
    r->max_body_bytes = opts->max_body_bytes ? opts->max_body_bytes : 1024 * 1024;
    r->max_headers = opts->max_headers ? opts->max_headers : 64;
    r->handler = opts->handler;
    r->handler_user = opts->handler_user;

    if ((opts->tls_cert_file != NULL) != (opts->tls_key_file != NULL)) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "webhook receiver: give both tls_cert_file and tls_key_file for "
                           "HTTPS, or neither for HTTP");
        goto fail;
    }
    if (opts->tls_cert_file != NULL) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            rc = outbox__error(err, OUTBOX_ENOTBUILT,
                               "webhook receiver: this libmicrohttpd has no TLS support; "
                               "leave tls_cert_file/tls_key_file unset or use a TLS proxy");
            goto fail;
        }
        rc = read_pem(opts->tls_cert_file, "tls_cert_file", &r->tls_cert, err);
        if (rc == OUTBOX_OK) rc = read_pem(opts->tls_key_file, "tls_key_file", &r->tls_key, err);
        if (rc != OUTBOX_OK) goto fail;
    }

    if (sqlite3_open_v2(opts->db_path, &r->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        rc = outbox__error(err, OUTBOX_ESTORE, "webhook receiver: cannot open db_path %s: %s",
                           opts->db_path, r->db ? sqlite3_errmsg(r->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(r->db, 5000);
    if (opts->init_sql && sqlite3_exec(r->db, opts->init_sql, NULL, NULL, NULL) != SQLITE_OK) {
        rc = outbox__error(err, OUTBOX_ECONFIG, "webhook receiver: init_sql failed: %s",
                           sqlite3_errmsg(r->db));
        goto fail;
    }
    rc = outbox_schema_init_sqlite(r->db, err);
    if (rc != OUTBOX_OK) goto fail;

    r->daemon = MHD_start_daemon(
        MHD_USE_AUTO_INTERNAL_THREAD | (r->tls_cert ? MHD_USE_TLS : 0), 0, NULL, NULL, on_request,
        r, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, (void *)r, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)(opts->connection_timeout_s ? opts->connection_timeout_s : 10),
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)(opts->connection_limit ? opts->connection_limit : 64),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
        /* Without TLS the key/cert pair below ends the list (MHD_OPTION_END). */
        r->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, r->tls_cert,
        MHD_OPTION_HTTPS_MEM_KEY, r->tls_key, MHD_OPTION_END);
    if (r->daemon == NULL) {
        if (r->tls_cert)
            rc = outbox__error(err, OUTBOX_EIO,
                               "webhook receiver: cannot serve HTTPS on %s:%u (port in use, or "
                               "tls_cert_file/tls_key_file not a matching PEM certificate and "
                               "unencrypted key?)",
                               bind_address, opts->port);
        else
            rc = outbox__error(err, OUTBOX_EIO,
                               "webhook receiver: cannot listen on %s:%u (port in use, or not "
                               "allowed?)",
                               bind_address, opts->port);
        goto fail;
    }
    info = MHD_get_daemon_info(r->daemon, MHD_DAEMON_INFO_BIND_PORT);
    r->port = info ? info->port : opts->port;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "listening on %s:%u (%s) for consumer %s", bind_address,
                r->port, r->tls_cert ? "https" : "http", r->consumer);
    *out = r;
    return OUTBOX_OK;

fail:
    outbox_webhook_receiver_free(r);
    return rc;
}

/* The bound port. */
unsigned outbox_webhook_receiver_port(const outbox_webhook_receiver *r)
{
    return r ? r->port : 0;
}

/* Copies the counters. */
void outbox_webhook_receiver_get_stats(outbox_webhook_receiver *r,
                                       outbox_webhook_receiver_stats *stats)
{
    if (r == NULL || stats == NULL) return;
    stats->applied = atomic_load(&r->applied);
    stats->duplicates = atomic_load(&r->duplicates);
    stats->rejected = atomic_load(&r->rejected);
    stats->failed = atomic_load(&r->failed);
}

/* Stops the daemon, then closes the database and frees r. */
void outbox_webhook_receiver_free(outbox_webhook_receiver *r)
{
    if (r == NULL) return;
    if (r->daemon) MHD_stop_daemon(r->daemon);
    if (r->db) sqlite3_close(r->db);
    if (r->secret) memset(r->secret, 0, strlen(r->secret));
    outbox__free(r->secret);
    outbox__free(r->consumer);
    outbox__free(r->tls_cert);
    if (r->tls_key) memset(r->tls_key, 0, strlen(r->tls_key));
    outbox__free(r->tls_key);
    outbox__free(r);
}

#else /* !OUTBOX_HAVE_MHD */

#include <stdlib.h>
#include <string.h>

struct outbox_webhook_receiver {
    int unused;
};

void outbox_webhook_receiver_options_init(outbox_webhook_receiver_options *opts)
{
    if (opts == NULL) return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->bind_address = "127.0.0.1";
    opts->tolerance_s = OUTBOX_WEBHOOK_TOLERANCE_S;
    opts->max_body_bytes = 1024 * 1024;
    opts->max_headers = 64;
    opts->connection_timeout_s = 10;
    opts->connection_limit = 64;
}

int outbox_webhook_receiver_new(outbox_webhook_receiver **out,
                                const outbox_webhook_receiver_options *opts, outbox_error *err)
{
    (void)opts;
    if (out) *out = NULL;
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "this build has no webhook receiver (not built with libmicrohttpd)");
}

unsigned outbox_webhook_receiver_port(const outbox_webhook_receiver *r)
{
    (void)r;
    return 0;
}

void outbox_webhook_receiver_get_stats(outbox_webhook_receiver *r,
                                       outbox_webhook_receiver_stats *stats)
{
    (void)r;
    if (stats) memset(stats, 0, sizeof *stats);
}

void outbox_webhook_receiver_free(outbox_webhook_receiver *r)
{
    (void)r;
}

#endif /* OUTBOX_HAVE_MHD */
