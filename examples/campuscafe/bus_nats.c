/*
 * bus_nats.c - CampusCafe's NATS JetStream bus (--bus nats://host:port).
 *
 * Producing side: every service's relay (in-process or `outbox relay`)
 * publishes its outbox to the stream CAMPUSCAFE with the library's nats://
 * destination, subject "campuscafe.<EventType>".  cafe_nats_destination
 * makes sure the stream exists (file storage, so a nats-server restart
 * keeps it; the default two-minute duplicate window drops a relay's
 * re-publications, which carry the same Nats-Msg-Id) and writes the URL.
 *
 * Consuming side: one durable pull consumer per service,
 * "campuscafe-<service>", created explicitly (js_AddConsumer) so that it
 * outlives the process: a restarted service resumes where its consumer's
 * ack floor is.  nats-server 2.9 has one filter subject per consumer, so
 * the consumer reads "campuscafe.>" and acks the types the service does
 * not handle without touching its database; reading one subject keeps the
 * stream order for the types it does handle.
 *
 * One thread per consumer fetches one message at a time and, on the
 * consumer's own SQLite connection:
 *
 *   BEGIN IMMEDIATE; outbox_inbox_record_sqlite(service, id);
 *     first time: handler(db, msg) -> COMMIT -> ack
 *     duplicate:  COMMIT -> ack (the handler does not run)
 *   handler or database error: ROLLBACK -> nak with a short delay
 *   malformed message (cannot be rebuilt): term (never redelivered), logged
 *
 * The ack is sent only after COMMIT.  A crash or a lost ack between the
 * two leaves the message unacked: JetStream redelivers it after AckWait
 * (5 s), and the inbox turns the redelivery into a duplicate.  A dropped
 * connection is re-established by nats.c (forever, every 250 ms); fetches
 * fail meanwhile and are retried, so nothing is lost across a nats-server
 * restart.
 *
 * The message handed to the handler is rebuilt from the headers the
 * nats:// destination writes: ce-id (or Nats-Msg-Id), ce-type, ce-subject
 * (the aggregate id), ce-aggregatetype, ce-time, and every other ce-<ext>
 * header as a message header named <ext> -- exactly as the library's
 * webhook receiver does, so a handler sees the same message on both buses
 * (e.g. the correlation_id header arrives as "correlationid").
 *
 * For harnesses: cafe_nats_backlog counts what the consumers have not
 * acked yet (a run has not settled while a killed service's messages wait
 * out their AckWait), and cafe_nats_reset deletes the stream so that a run
 * with fresh databases does not receive a previous run's leftovers.
 *
 * Diagnostics go to stderr prefixed "campuscafe <service>: nats:"; URLs
 * are shown without their user information (passwords never printed).
 *
 * Crash test hook: with CAFE_NATS_KILL_AFTER_COMMIT=N in the environment,
 * the process SIGKILLs itself right after the COMMIT of the N-th message
 * it applies, before acking it -- the window the inbox exists for
 * (tests/test_campuscafe_nats.sh).  Unset, nothing changes.
 */
#include "bus_nats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef OUTBOX_HAVE_NATS

#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define STREAM_NAME "CAMPUSCAFE"
#define STREAM_SUBJECTS "campuscafe.>"
#define SUBJECT_TEMPLATE "campuscafe.{type}"
#define ACK_WAIT_MS 5000 /* redelivery of an unacked message */
#define NAK_DELAY_MS 250 /* redelivery after a handler/database failure */
/* One message per fetch: nats.c 3.4.x's natsSubscription_Fetch can return
 * more messages than its array holds (a heap overflow) when messages from
 * an earlier fetch are still queued on the subscription and the batch is
 * larger than one; with a batch of one that path cannot be taken. */
#define FETCH_BATCH 1
#define FETCH_WAIT_MS 500   /* also the longest wait for a stop request */
#define RETRY_SLEEP_MS 200  /* after a failed fetch (connection down...) */
#define SETUP_WAIT_MS 10000 /* JetStream may still be starting */
#define BUSY_TIMEOUT_MS 5000

struct cafe_nats_consumer {
    char *service;
    char *durable;
    char **types;    /* NULL-terminated copy */
    char where[256]; /* nats://hosts, without user information */
    outbox_webhook_handler_fn handler;
    void *user;

    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    sqlite3 *db;

    pthread_t thread;
    int thread_started;
    atomic_int stop;
    /* nats.c calls the connection callbacks on a thread of its own, also
     * after natsConnection_Close: free waits for the closed callback (the
     * last one) before freeing what they use. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int locks;       /* mu and cond initialised */
    int closed;      /* the closed callback ran (under mu) */
    long kill_after; /* CAFE_NATS_KILL_AFTER_COMMIT; 0: off */
    long applied;
};

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static int set_error(outbox_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int set_error(outbox_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    if (err != NULL) {
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void say(const char *service, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void say(const char *service, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "campuscafe %s: nats: %s\n", service ? service : "", line);
}

static void sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *status_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && *t ? t : natsStatus_GetText(s);
}

/* Checks nats_url ("nats://[user[:pass]@]host:port[,host:port]" with no
 * query) and writes its hosts, without user information, into where. */
static int check_url(const char *nats_url, char *where, size_t where_len, outbox_error *err)
{
    const char *hosts, *at;
    size_t len;
    if (nats_url == NULL || strncmp(nats_url, "nats://", 7) != 0 || nats_url[7] == '\0')
        return set_error(err, OUTBOX_EBADURL,
                         "--bus: \"%s\" is not a NATS URL; use --bus nats://127.0.0.1:4222",
                         nats_url && strchr(nats_url, '@') == NULL ? nats_url : "(hidden)");
    hosts = nats_url + 7;
    at = strrchr(hosts, '@');
    if (at != NULL) hosts = at + 1;
    len = strcspn(hosts, "?/");
    if (len == 0 || hosts[len] != '\0')
        return set_error(err, OUTBOX_EBADURL,
                         "--bus nats://%.*s: give only the server(s), e.g. "
                         "nats://127.0.0.1:4222 (no path or query)",
                         (int)len, hosts);
    snprintf(where, where_len, "nats://%s", hosts);
    return OUTBOX_OK;
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    cafe_nats_consumer *c = closure;
    (void)nc;
    if (atomic_load(&c->stop)) return;
    say(c->service, "disconnected from %s; reconnecting", c->where);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    cafe_nats_consumer *c = closure;
    (void)nc;
    say(c->service, "reconnected to %s", c->where);
}

static void on_closed(natsConnection *nc, void *closure)
{
    cafe_nats_consumer *c = closure;
    (void)nc;
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

/* Connects to nats_url with endless reconnects; callbacks get closure
 * (NULL: none).  The options are returned for the caller to destroy. */
static int connect_nats(natsOptions **opts_out, natsConnection **nc_out, const char *nats_url,
                        const char *where, const char *name, cafe_nats_consumer *closure,
                        outbox_error *err)
{
    natsOptions *opts = NULL;
    natsStatus s;

    *opts_out = NULL;
    *nc_out = NULL;
    s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, nats_url);
    if (s == NATS_OK) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 2000);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts, true);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK && closure != NULL)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, closure);
    if (s == NATS_OK && closure != NULL)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, closure);
    if (s == NATS_OK && closure != NULL) s = natsOptions_SetClosedCB(opts, on_closed, closure);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        return set_error(err, OUTBOX_EBADURL, "--bus %s: cannot use this NATS URL: %s", where,
                         natsStatus_GetText(s));
    }
    s = natsConnection_Connect(nc_out, opts);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        *nc_out = NULL;
        if (s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED)
            return set_error(err, OUTBOX_ECONFIG,
                             "--bus %s: the server refused the credentials; check the user and "
                             "password in the URL",
                             where);
        return set_error(err, OUTBOX_EPUBLISH,
                         "--bus %s: cannot connect: %s; check that nats-server -js runs there",
                         where, natsStatus_GetText(s));
    }
    *opts_out = opts;
    return OUTBOX_OK;
}

/* Makes sure the stream exists (creates it when missing), retrying while
 * JetStream is still starting. */
static int ensure_stream(jsCtx *js, const char *where, outbox_error *err)
{
    int64_t deadline = now_ms() + SETUP_WAIT_MS;
    for (;;) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetStreamInfo(&si, js, STREAM_NAME, NULL, &jerr);
        if (s == NATS_OK) {
            jsStreamInfo_Destroy(si);
            return OUTBOX_OK;
        }
        if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
            jsStreamConfig sc;
            const char *subjects[1] = {STREAM_SUBJECTS};
            jsStreamConfig_Init(&sc);
            sc.Name = STREAM_NAME;
            sc.Subjects = subjects;
            sc.SubjectsLen = 1;
            sc.Storage = js_FileStorage;
            jerr = 0;
            s = js_AddStream(&si, js, &sc, NULL, &jerr);
            if (si) jsStreamInfo_Destroy(si);
            /* Another service may have created it at the same moment. */
            if (s == NATS_OK || jerr == JSStreamNameExistErr) continue;
            if (now_ms() > deadline)
                return set_error(err, OUTBOX_ECONFIG,
                                 "--bus %s: cannot create stream %s (subjects %s): %s (error "
                                 "%d); check that no other stream covers these subjects",
                                 where, STREAM_NAME, STREAM_SUBJECTS, status_text(s), (int)jerr);
        } else if (now_ms() > deadline) {
            return set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot look up stream %s: %s%s",
                             where, STREAM_NAME, status_text(s),
                             s == NATS_NO_RESPONDERS ? " (start nats-server with -js)" : "");
        }
        sleep_ms(RETRY_SLEEP_MS);
    }
}

/* ------------------------------------------------------------------------
 * One-call sessions (destination, backlog, reset)
 * ---------------------------------------------------------------------- */

typedef struct session {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    char where[256]; /* the URL as shown in messages (no secrets) */
} session;

/* Checks nats_url and connects with a JetStream context for one call;
 * session_close undoes it (also after a failed open). */
static int session_open(session *ss, const char *nats_url, const char *name, outbox_error *err)
{
    int rc;
    memset(ss, 0, sizeof *ss);
    rc = check_url(nats_url, ss->where, sizeof ss->where, err);
    if (rc != OUTBOX_OK) return rc;
    rc = connect_nats(&ss->opts, &ss->nc, nats_url, ss->where, name, NULL, err);
    if (rc != OUTBOX_OK) return rc;
    if (natsConnection_JetStream(&ss->js, ss->nc, NULL) != NATS_OK)
        return set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot use JetStream", ss->where);
    return OUTBOX_OK;
}

static void session_close(session *ss)
{
    if (ss->js) jsCtx_Destroy(ss->js);
    if (ss->nc) {
        natsConnection_Close(ss->nc);
        natsConnection_Destroy(ss->nc);
    }
    if (ss->opts) natsOptions_Destroy(ss->opts);
    memset(ss, 0, sizeof *ss);
}

/* ------------------------------------------------------------------------
 * Destination
 * ---------------------------------------------------------------------- */

/* See bus_nats.h.  Connects once to create the stream when missing. */
int cafe_nats_destination(char *buf, size_t size, const char *nats_url, outbox_error *err)
{
    session ss;
    int rc, n;

    if (buf == NULL || size == 0)
        return set_error(err, OUTBOX_EINVAL, "cafe_nats_destination: no buffer given");
    buf[0] = '\0';
    rc = session_open(&ss, nats_url, "campuscafe-setup", err);
    if (rc == OUTBOX_OK) rc = ensure_stream(ss.js, ss.where, err);
    if (rc == OUTBOX_OK) {
        n = snprintf(buf, size, "%s?stream=%s&subject=%s", nats_url, STREAM_NAME, SUBJECT_TEMPLATE);
        if (n < 0 || (size_t)n >= size) {
            buf[0] = '\0';
            rc = set_error(err, OUTBOX_EINVAL,
                           "--bus %s: the destination URL does not fit in %zu bytes", ss.where,
                           size);
        }
    }
    session_close(&ss);
    return rc;
}

/* See bus_nats.h. */
int cafe_nats_backlog(const char *nats_url, int64_t *out, outbox_error *err)
{
    session ss;
    jsConsumerInfoList *list = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    int64_t total = 0;
    int rc, i;

    if (out == NULL) return set_error(err, OUTBOX_EINVAL, "cafe_nats_backlog: out is NULL");
    *out = -1;
    rc = session_open(&ss, nats_url, "campuscafe-backlog", err);
    if (rc != OUTBOX_OK) goto out;
    s = js_Consumers(&list, ss.js, STREAM_NAME, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        *out = 0;
        goto out;
    }
    if (s != NATS_OK) {
        rc = set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot list the consumers of %s: %s",
                       ss.where, STREAM_NAME, status_text(s));
        goto out;
    }
    for (i = 0; list != NULL && i < list->Count; i++) {
        const jsConsumerInfo *ci = list->List[i];
        if (ci == NULL || ci->Name == NULL || strncmp(ci->Name, "campuscafe-", 11) != 0) continue;
        total += (int64_t)ci->NumPending + ci->NumAckPending;
    }
    *out = total;
out:
    if (list) jsConsumerInfoList_Destroy(list);
    session_close(&ss);
    return rc;
}

/* See bus_nats.h. */
int cafe_nats_reset(const char *nats_url, outbox_error *err)
{
    session ss;
    jsErrCode jerr = 0;
    natsStatus s;
    int rc;

    rc = session_open(&ss, nats_url, "campuscafe-reset", err);
    if (rc == OUTBOX_OK) {
        s = js_DeleteStream(ss.js, STREAM_NAME, NULL, &jerr);
        if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
            rc = set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot delete stream %s: %s (error %d)",
                           ss.where, STREAM_NAME, status_text(s), (int)jerr);
    }
    session_close(&ss);
    return rc;
}

/* ------------------------------------------------------------------------
 * Rebuilding the message
 * ---------------------------------------------------------------------- */

static const char *header(natsMsg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK) return NULL;
    return v;
}

/* The event type of m: ce-type, else the last token of the subject. */
static const char *event_type(natsMsg *m)
{
    const char *t = header(m, "ce-type"), *subj;
    if (t != NULL) return t;
    subj = natsMsg_GetSubject(m);
    if (subj == NULL) return NULL;
    t = strrchr(subj, '.');
    return t ? t + 1 : subj;
}

static const char *const standard_attrs[] = {"specversion",   "id",         "source",
                                             "type",          "subject",    "time",
                                             "aggregatetype", "dataschema", "datacontenttype"};

/* Builds the outbox message from a JetStream message; OUTBOX_OK or an
 * error with err filled (the message can never be applied). */
static int rebuild(natsMsg *m, outbox_msg **out, outbox_error *err)
{
    const char *id = header(m, "ce-id"), *nid = header(m, "Nats-Msg-Id");
    const char *type = event_type(m), *subject = header(m, "ce-subject");
    const char *atype = header(m, "ce-aggregatetype"), *time_text = header(m, "ce-time");
    const char **keys = NULL;
    outbox_msg *msg = NULL;
    char *payload = NULL;
    int count = 0, i, rc;
    int64_t at = 0;

    *out = NULL;
    if (id == NULL) id = nid;
    if (id == NULL || type == NULL || subject == NULL) {
        rc = set_error(err, OUTBOX_EBADHEADERS, "message on %s lacks the %s header",
                       natsMsg_GetSubject(m) ? natsMsg_GetSubject(m) : "?",
                       id == NULL     ? "ce-id (or Nats-Msg-Id)"
                       : type == NULL ? "ce-type"
                                      : "ce-subject");
        goto out;
    }
    if (nid != NULL && strcmp(nid, id) != 0) {
        rc = set_error(err, OUTBOX_EBADHEADERS, "message %s: Nats-Msg-Id %s differs from ce-id", id,
                       nid);
        goto out;
    }
    if (time_text != NULL && outbox_time_parse(time_text, &at) != 0) {
        rc = set_error(err, OUTBOX_EBADHEADERS,
                       "message %s: ce-time \"%s\" is not an RFC 3339 UTC time", id, time_text);
        goto out;
    }
    if (natsMsg_GetDataLength(m) > 0) {
        int len = natsMsg_GetDataLength(m);
        payload = malloc((size_t)len + 1);
        if (payload == NULL) {
            rc = set_error(err, OUTBOX_ENOMEM, "out of memory reading message %s", id);
            goto out;
        }
        memcpy(payload, natsMsg_GetData(m), (size_t)len);
        payload[len] = '\0';
    }
    rc = outbox_msg_new(&msg, type, atype, subject, payload, err);
    if (rc == OUTBOX_OK) rc = outbox_msg_set_id(msg, id, err);
    if (rc == OUTBOX_OK && at != 0) rc = outbox_msg_set_occurred_at(msg, at, err);
    if (rc != OUTBOX_OK) goto out;

    if (natsMsgHeader_Keys(m, &keys, &count) != NATS_OK) {
        keys = NULL;
        count = 0;
    }
    for (i = 0; i < count; i++) {
        char name[80];
        size_t n, j;
        int standard = 0;
        const char *key = keys[i], *value;
        if (key == NULL || strncasecmp(key, "ce-", 3) != 0) continue;
        n = strlen(key + 3);
        if (n == 0 || n >= sizeof name) continue;
        for (j = 0; j < n; j++) {
            char ch = key[3 + j];
            name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        name[n] = '\0';
        for (j = 0; j < sizeof standard_attrs / sizeof standard_attrs[0]; j++)
            if (strcmp(name, standard_attrs[j]) == 0) standard = 1;
        if (standard) continue;
        value = header(m, key);
        rc = outbox_msg_set_header(msg, name, value ? value : "", err);
        if (rc != OUTBOX_OK) goto out;
    }
    *out = msg;
    msg = NULL;
    rc = OUTBOX_OK;
out:
    free((void *)keys);
    free(payload);
    outbox_msg_free(msg);
    return rc;
}

/* ------------------------------------------------------------------------
 * Consumer
 * ---------------------------------------------------------------------- */

static int wanted(const cafe_nats_consumer *c, const char *type)
{
    size_t i;
    for (i = 0; c->types[i] != NULL; i++)
        if (strcmp(c->types[i], type) == 0) return 1;
    return 0;
}

static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Applies msg once through the inbox.  OUTBOX_OK (committed, applied),
 * OUTBOX_DUPLICATE (committed, not applied) or an error (rolled back). */
static int apply(cafe_nats_consumer *c, const outbox_msg *msg, outbox_error *err)
{
    int rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return set_error(err, rc == SQLITE_BUSY ? OUTBOX_EBUSY : OUTBOX_ESTORE,
                         "BEGIN IMMEDIATE: %s", sqlite3_errmsg(c->db));
    /* A duplicate wrote nothing: its COMMIT below only ends the transaction. */
    rc = outbox_inbox_record_sqlite(c->db, c->service, outbox_msg_id(msg), err);
    if (rc == OUTBOX_OK) {
        rc = c->handler(c->user, c->db, msg, err);
        if (rc > 0) rc = set_error(err, OUTBOX_EINTERNAL, "handler returned %d", rc);
        if (rc < 0 && err != NULL && err->message[0] == '\0')
            set_error(err, rc, "handler failed: %s", outbox_strerror(rc));
    }
    if (rc != OUTBOX_OK && rc != OUTBOX_DUPLICATE) {
        rollback(c->db);
        return rc;
    }
    if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int code = sqlite3_errcode(c->db) == SQLITE_BUSY ? OUTBOX_EBUSY : OUTBOX_ESTORE;
        set_error(err, code, "COMMIT: %s", sqlite3_errmsg(c->db));
        rollback(c->db);
        return code;
    }
    return rc;
}

static void handle(cafe_nats_consumer *c, natsMsg *m)
{
    outbox_error err;
    outbox_msg *msg = NULL;
    const char *type = event_type(m);
    natsStatus s;
    int rc;

    memset(&err, 0, sizeof err);
    if (type == NULL || !wanted(c, type)) {
        natsMsg_Ack(m, NULL); /* another service's event */
        return;
    }
    rc = rebuild(m, &msg, &err);
    if (rc != OUTBOX_OK) {
        say(c->service, "dropping a malformed %s message: %s", type, err.message);
        natsMsg_Term(m, NULL);
        return;
    }
    rc = apply(c, msg, &err);
    if (rc == OUTBOX_OK && c->kill_after > 0 && ++c->applied == c->kill_after) {
        say(c->service, "%s %s committed; CAFE_NATS_KILL_AFTER_COMMIT: SIGKILL before the ack",
            type, outbox_msg_id(msg));
        kill(getpid(), SIGKILL);
    }
    if (rc == OUTBOX_DUPLICATE)
        say(c->service, "%s %s was already applied (redelivery); acked, not applied again", type,
            outbox_msg_id(msg));
    if (rc == OUTBOX_OK || rc == OUTBOX_DUPLICATE) {
        s = natsMsg_Ack(m, NULL);
        if (s != NATS_OK)
            say(c->service,
                "%s %s committed but its ack failed (%s); the redelivery will be a duplicate", type,
                outbox_msg_id(msg), natsStatus_GetText(s));
    } else {
        say(c->service, "%s %s not applied (%s); it will be redelivered", type, outbox_msg_id(msg),
            err.message);
        natsMsg_NakWithDelay(m, NAK_DELAY_MS, NULL);
    }
    outbox_msg_free(msg);
}

static void *consume(void *arg)
{
    cafe_nats_consumer *c = arg;
    int64_t last_complaint = 0;

    while (!atomic_load(&c->stop)) {
        natsMsgList list;
        jsErrCode jerr = 0;
        natsStatus s;
        int i;

        memset(&list, 0, sizeof list);
        s = natsSubscription_Fetch(&list, c->sub, FETCH_BATCH, FETCH_WAIT_MS, &jerr);
        if (s == NATS_TIMEOUT) continue;
        if (s != NATS_OK) {
            /* Connection down, server restarting, JetStream recovering:
             * the messages stay in the stream; try again shortly. */
            if (!atomic_load(&c->stop) && now_ms() - last_complaint > 5000) {
                say(c->service, "fetch from %s failed: %s (error %d); retrying", c->where,
                    natsStatus_GetText(s), (int)jerr);
                last_complaint = now_ms();
            }
            natsMsgList_Destroy(&list);
            sleep_ms(RETRY_SLEEP_MS);
            continue;
        }
        for (i = 0; i < list.Count; i++) {
            if (atomic_load(&c->stop)) break; /* unacked: redelivered after AckWait */
            handle(c, list.Msgs[i]);
        }
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

/* Creates the durable consumer when missing (retrying while JetStream is
 * still starting). */
static int ensure_consumer(cafe_nats_consumer *c, outbox_error *err)
{
    int64_t deadline = now_ms() + SETUP_WAIT_MS;
    for (;;) {
        jsConsumerInfo *ci = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetConsumerInfo(&ci, c->js, STREAM_NAME, c->durable, NULL, &jerr);
        if (s == NATS_OK) {
            jsConsumerInfo_Destroy(ci);
            return OUTBOX_OK;
        }
        if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
            jsConsumerConfig cc;
            jsConsumerConfig_Init(&cc);
            cc.Durable = c->durable;
            cc.AckPolicy = js_AckExplicit;
            cc.AckWait = (int64_t)ACK_WAIT_MS * 1000000; /* nanoseconds */
            cc.DeliverPolicy = js_DeliverAll;
            cc.FilterSubject = STREAM_SUBJECTS;
            cc.MaxAckPending = 1000;
            jerr = 0;
            s = js_AddConsumer(&ci, c->js, STREAM_NAME, &cc, NULL, &jerr);
            if (ci) jsConsumerInfo_Destroy(ci);
            if (s == NATS_OK) return OUTBOX_OK;
            if (now_ms() > deadline)
                return set_error(err, OUTBOX_ECONFIG,
                                 "--bus %s: cannot create the durable consumer %s on stream "
                                 "%s: %s (error %d)",
                                 c->where, c->durable, STREAM_NAME, status_text(s), (int)jerr);
        } else if (now_ms() > deadline) {
            return set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot look up the consumer %s: %s",
                             c->where, c->durable, status_text(s));
        }
        sleep_ms(RETRY_SLEEP_MS);
    }
}

/* See bus_nats.h. */
int cafe_nats_consumer_start(cafe_nats_consumer **out, const char *nats_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err)
{
    cafe_nats_consumer *c = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus s;
    size_t ntypes = 0, i, len;
    int rc = OUTBOX_OK;
    char name[128];

    if (out != NULL) *out = NULL;
    if (out == NULL || service == NULL || service[0] == '\0' || types == NULL || types[0] == NULL ||
        db_path == NULL || handler == NULL)
        return set_error(err, OUTBOX_EINVAL,
                         "cafe_nats_consumer_start: out, service, types (at least one), "
                         "db_path and handler are required");
    len = strlen(service);
    if (len > 64 || strcspn(service, ".*> \t\r\n") != len)
        return set_error(err, OUTBOX_EINVAL,
                         "service name \"%.64s\" cannot name a NATS consumer; use letters, "
                         "digits, '-' or '_' (at most 64)",
                         service);
    while (types[ntypes] != NULL)
        ntypes++;

    c = calloc(1, sizeof *c);
    if (c == NULL) return set_error(err, OUTBOX_ENOMEM, "out of memory starting the consumer");
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return set_error(err, OUTBOX_ENOMEM, "cannot create a mutex for the consumer");
    }
    if (pthread_cond_init(&c->cond, NULL) != 0) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return set_error(err, OUTBOX_ENOMEM, "cannot create a condition for the consumer");
    }
    c->locks = 1;
    c->handler = handler;
    c->user = user;
    if (getenv("CAFE_NATS_KILL_AFTER_COMMIT") != NULL)
        c->kill_after = strtol(getenv("CAFE_NATS_KILL_AFTER_COMMIT"), NULL, 10);
    c->service = strdup(service);
    c->durable = malloc(len + sizeof "campuscafe-");
    c->types = calloc(ntypes + 1, sizeof *c->types);
    if (c->service == NULL || c->durable == NULL || c->types == NULL) {
        rc = set_error(err, OUTBOX_ENOMEM, "out of memory starting the consumer");
        goto fail;
    }
    snprintf(c->durable, len + sizeof "campuscafe-", "campuscafe-%s", service);
    for (i = 0; i < ntypes; i++) {
        c->types[i] = strdup(types[i]);
        if (c->types[i] == NULL) {
            rc = set_error(err, OUTBOX_ENOMEM, "out of memory starting the consumer");
            goto fail;
        }
    }
    rc = check_url(nats_url, c->where, sizeof c->where, err);
    if (rc != OUTBOX_OK) goto fail;

    /* The database first: a wrong path is the likelier mistake. */
    if (sqlite3_open_v2(db_path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        rc = set_error(err, OUTBOX_ESTORE, "--dir: cannot open %s: %s", db_path,
                       c->db ? sqlite3_errmsg(c->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    rc = outbox_schema_init_sqlite(c->db, err);
    if (rc != OUTBOX_OK) goto fail;

    snprintf(name, sizeof name, "campuscafe-%s", service);
    rc = connect_nats(&c->opts, &c->nc, nats_url, c->where, name, c, err);
    if (rc != OUTBOX_OK) goto fail;
    if (natsConnection_JetStream(&c->js, c->nc, NULL) != NATS_OK) {
        rc = set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot use JetStream", c->where);
        goto fail;
    }
    rc = ensure_stream(c->js, c->where, err);
    if (rc == OUTBOX_OK) rc = ensure_consumer(c, err);
    if (rc != OUTBOX_OK) goto fail;

    /* Bind to the durable consumer (never created or deleted by the
     * subscription itself, so it survives this process). */
    jsSubOptions_Init(&so);
    so.Stream = STREAM_NAME;
    so.Consumer = c->durable;
    s = js_PullSubscribe(&c->sub, c->js, STREAM_SUBJECTS, c->durable, NULL, &so, &jerr);
    if (s != NATS_OK) {
        rc = set_error(err, OUTBOX_EPUBLISH,
                       "--bus %s: cannot subscribe to consumer %s: %s (error %d)", c->where,
                       c->durable, status_text(s), (int)jerr);
        goto fail;
    }
    if (pthread_create(&c->thread, NULL, consume, c) != 0) {
        rc = set_error(err, OUTBOX_ENOMEM, "cannot start the NATS consumer thread");
        goto fail;
    }
    c->thread_started = 1;
    *out = c;
    return OUTBOX_OK;

fail:
    cafe_nats_consumer_free(c);
    return rc;
}

/* See bus_nats.h. */
void cafe_nats_consumer_free(cafe_nats_consumer *c)
{
    size_t i;
    if (c == NULL) return;
    atomic_store(&c->stop, 1);
    if (c->thread_started) pthread_join(c->thread, NULL);
    /* Destroy, not unsubscribe: the durable consumer stays on the server. */
    if (c->sub) natsSubscription_Destroy(c->sub);
    if (c->js) jsCtx_Destroy(c->js);
    if (c->nc) {
        struct timespec until;
        natsConnection_Close(c->nc);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        pthread_mutex_lock(&c->mu);
        while (!c->closed)
            if (pthread_cond_timedwait(&c->cond, &c->mu, &until) != 0) break;
        pthread_mutex_unlock(&c->mu);
        natsConnection_Destroy(c->nc);
    }
    if (c->opts) natsOptions_Destroy(c->opts);
    if (c->db) sqlite3_close(c->db);
    if (c->locks) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cond);
    }
    if (c->types) {
        for (i = 0; c->types[i] != NULL; i++)
            free(c->types[i]);
        free(c->types);
    }
    free(c->durable);
    free(c->service);
    free(c);
}

#else /* !OUTBOX_HAVE_NATS */

static int not_built(outbox_error *err)
{
    if (err != NULL) {
        err->code = OUTBOX_ENOTBUILT;
        snprintf(err->message, sizeof err->message, "--bus nats:// needs a build with nats.c");
    }
    return OUTBOX_ENOTBUILT;
}

/* Without nats.c: OUTBOX_ENOTBUILT. */
int cafe_nats_destination(char *buf, size_t size, const char *nats_url, outbox_error *err)
{
    (void)nats_url;
    if (buf != NULL && size > 0) buf[0] = '\0';
    return not_built(err);
}

/* Without nats.c: OUTBOX_ENOTBUILT, *out NULL. */
int cafe_nats_consumer_start(cafe_nats_consumer **out, const char *nats_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err)
{
    (void)nats_url;
    (void)service;
    (void)types;
    (void)db_path;
    (void)handler;
    (void)user;
    if (out != NULL) *out = NULL;
    return not_built(err);
}

/* Without nats.c: OUTBOX_ENOTBUILT, *out -1. */
int cafe_nats_backlog(const char *nats_url, int64_t *out, outbox_error *err)
{
    (void)nats_url;
    if (out != NULL) *out = -1;
    return not_built(err);
}

/* Without nats.c: OUTBOX_ENOTBUILT. */
int cafe_nats_reset(const char *nats_url, outbox_error *err)
{
    (void)nats_url;
    return not_built(err);
}

/* Without nats.c nothing is ever started. */
void cafe_nats_consumer_free(cafe_nats_consumer *c)
{
    (void)c;
}

#endif /* OUTBOX_HAVE_NATS */
