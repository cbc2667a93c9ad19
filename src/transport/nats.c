/*
 * nats.c - the `nats://` destination: NATS JetStream through nats.c.
 *
 *   nats://[user:pass@]host:port[,host:port]?stream=NAME&subject=TEMPLATE&...
 *
 * A batch is published asynchronously (js_PublishMsgAsync, at most
 * max_pending acks outstanding), then the driver waits for the acks.  Each
 * message's result comes from its own ack, delivered on nats.c's thread to
 * ack_handler, which finds the message by its Nats-Msg-Id header (= the
 * outbox message id) in the open batches' id tables.  A message is OK only
 * when JetStream acked it (a duplicate ack counts: the stream already holds
 * it).  When no ack of a batch arrives for ack_timeout, what is
 * unacknowledged is taken back with js_PublishAsyncGetPendingList and
 * reported retriable; acks that arrive after that are ignored (the retry
 * is dropped by the stream's duplicate window).
 *
 * Pipelining (publish_begin / publish_end, see internal.h): the relay may
 * begin the next batch before it waits for the acks of the one before, so
 * its claim and completion overlap with JetStream's acks.  Up to
 * OUTBOX_PIPELINE_DEPTH batches are open, each with its own tables;
 * publish() is begin + end.
 *
 * Order: at most one message per aggregate is unacknowledged at a time,
 * across the open batches.  A batch is published in waves: each wave sends
 * every message whose previous message of its aggregate (in this batch or
 * the open one before) is confirmed, so messages of different aggregates
 * stay many in flight while those of one aggregate follow one another; the
 * acks a waiting message needs wake the relay thread (ack_handler does not
 * wake it for the others).  When a message is not confirmed, the later
 * messages of its aggregate in the open batches are not sent at all.
 * Without this a dropped connection could reorder an aggregate: nats.c
 * keeps what is published while it is reconnecting and sends it on the new
 * connection, so a message published just after the drop was noticed could
 * be stored while the one before it was lost with the old connection; and a
 * restarting server may refuse one publication and take the next.  A batch
 * also stops publishing as soon as the connection is seen down or a
 * disconnect was counted since it (or the open batch before it) began.
 * After a reconnect, the first batch begun with nothing open waits until
 * the stream answers js_GetStreamInfo again: a restarting server refuses
 * publications while it recovers its streams.  Callbacks use the state
 * until nats.c's closed callback, which close waits for.
 *
 * Size: a message whose payload alone exceeds the server's max_payload, or
 * that nats.c refuses as too large with its headers (NATS_MAX_PAYLOAD), is
 * rejected at once (OUTBOX_EREJECTED: Failed, not retried), as is one over
 * the stream's max_msg_size (its ack says so).  Start-up logs a
 * max_payload smaller than this process's OUTBOX_LIMIT_MESSAGE_BYTES.
 *
 * Start-up checks: the subject template (outbox__route_new), the stream
 * (js_GetStreamInfo; created with create_stream=NAME), and that the
 * stream's subjects cover the template, so a wrong subject is a start-up
 * error and not a stream of failed messages.  Connection secrets (password,
 * token, creds) never reach errors or logs: only the hosts are shown.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* What the settings (URL query and --to-opt) are read into.  The table is
 * in every build, so help and docs describe the driver where nats.c is
 * absent too. */
typedef struct nats_config {
    char *subject;
    char *stream;
    char *create_stream;
    int64_t max_pending;
    int64_t ack_timeout_ms;
    int64_t connect_timeout_ms;
    int64_t ping_interval_ms;
    int64_t max_pings_out;
    char *token;
    char *creds;
    char *ca_file;
    int tls;
} nats_config;

#define NATS_FIELD(f) offsetof(nats_config, f)

static const outbox_prop nats_props[] = {
    {"subject", OUTBOX_PROP_STRING, NATS_FIELD(subject), "outbox.{aggregate_type}.{type}", NULL,
     "TEMPLATE",
     "The subject of each message, made of {type}, {aggregate_type} and {aggregate_id}; the "
     "stream's subjects must cover it."},
    {"stream", OUTBOX_PROP_STRING, NATS_FIELD(stream), NULL, NULL, "NAME",
     "The JetStream stream that stores the messages (required, or create_stream); it must "
     "exist."},
    {"create_stream", OUTBOX_PROP_STRING, NATS_FIELD(create_stream), NULL, NULL, "NAME",
     "The stream to use, created (file storage, covering the subject) when it does not exist."},
    {"max_pending", OUTBOX_PROP_INT, NATS_FIELD(max_pending), "4096", "1..1000000", NULL,
     "Publications waiting for their ack at once."},
    {"ack_timeout", OUTBOX_PROP_DURATION, NATS_FIELD(ack_timeout_ms), "5s", "1ms..", NULL,
     "How long a batch waits for JetStream's acks; what is unacknowledged then is retried."},
    {"connect_timeout", OUTBOX_PROP_DURATION, NATS_FIELD(connect_timeout_ms), "5s", "1ms..", NULL,
     "How long connecting to a server may take."},
    /* nats.c's default, 2 minutes and 2 pings, lets a connection whose
     * server vanished without closing it (a dead host, a silent network)
     * hold the relay for up to 6 minutes. */
    {"ping_interval", OUTBOX_PROP_DURATION, NATS_FIELD(ping_interval_ms), "10s", "100ms..1h", NULL,
     "How often the client pings the server; a connection whose pings go unanswered "
     "max_pings_out + 1 times in a row is taken as dead and reconnected (by default within "
     "30 s)."},
    {"max_pings_out", OUTBOX_PROP_INT, NATS_FIELD(max_pings_out), "2", "1..100", NULL,
     "Pings that may go unanswered before the connection is taken as dead."},
    {"token", OUTBOX_PROP_SECRET, NATS_FIELD(token), NULL, NULL, "TOKEN",
     "An authentication token (user:password in the URL is the other way)."},
    {"creds", OUTBOX_PROP_SECRET_FILE, NATS_FIELD(creds), NULL, NULL, NULL,
     "A .creds file with the user JWT and nkey seed, as nsc writes it."},
    {"ca_file", OUTBOX_PROP_PATH, NATS_FIELD(ca_file), NULL, NULL, NULL,
     "A PEM file of the CA certificates to trust; implies tls=true."},
    {"tls", OUTBOX_PROP_BOOL, NATS_FIELD(tls), "false", NULL, NULL, "true: connect with TLS."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_NATS

#include <nats/nats.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMPONENT "transport.nats"
/* After a reconnect, "no responders" may only mean JetStream is still
 * starting: it is retriable for this long. */
#define RECONNECT_GRACE_US 10000000

/* One batch between publish_begin and publish_end.  The relay thread owns
 * every field but done, results, outstanding and accepting, which
 * ack_handler updates under mu. */
typedef struct nats_batch {
    outbox_msg *const *msgs; /* NULL: the slot is free */
    outbox_publish_result *results;
    size_t n;
    int accepting;          /* acks are applied to it */
    int stalled;            /* 1: the ack window stayed full or acks stopped; 2: connection lost */
    int disconnects0;       /* disconnect count when it (or the batch it follows) began */
    size_t outstanding;     /* published, result not final */
    unsigned char *done;    /* per message: 1 once its result is final */
    unsigned char *started; /* per message: published, or given its result */
    unsigned char *wanted;  /* per message: a later message waits for its result */
    long *prev;             /* per message: the previous message of its aggregate (PREV_*) */
    outbox_aggindex ids;    /* message id -> its index */
    outbox_aggindex aggs;   /* aggregate id -> index of the aggregate's last message */
    size_t cap;             /* room in the per-message arrays */
} nats_batch;

/* prev[i]: >= 0, index of the previous message of the aggregate in the same
 * batch; PREV_NONE, none open; PREV_FAILED, it was in the batch before,
 * which ended without it confirmed; <= PREV_OLDER(0), PREV_OLDER(j) is
 * message j of the batch before, still open. */
#define PREV_NONE (-1L)
#define PREV_FAILED (-2L)
#define PREV_OLDER(j) (-3L - (long)(j))
#define PREV_OLDER_INDEX(p) ((size_t)(-3L - (p)))

typedef struct nats_state {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    outbox_route *route;
    char *source;
    char *stream;
    char hosts[256]; /* for messages: no credentials */
    int64_t ack_timeout_ms;
    outbox_buf subject;

    atomic_int disconnects;
    atomic_int closing;
    int verified_disconnects;       /* disconnects when the stream was last seen */
    int closed;                     /* the closed callback ran (under mu) */
    int published;                  /* js_PublishMsgAsync succeeded once (nats.c 3.4's
                                       js_PublishAsyncGetPendingList needs that) */
    _Atomic int64_t reconnected_us; /* monotonic time of the last reconnect */
    int replicated;                 /* the stream has replicas: "no responders" is an election */

    /* The open batches, oldest first from `first`; shared with ack_handler
     * under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    nats_batch batches[OUTBOX_PIPELINE_DEPTH];
    int first;   /* slot of the oldest open batch */
    int count;   /* open batches */
    size_t acks; /* results delivered by ack_handler, ever */
} nats_state;

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* The k-th open batch, oldest first. */
static nats_batch *batch_at(nats_state *st, int k)
{
    return &st->batches[(st->first + k) % OUTBOX_PIPELINE_DEPTH];
}

/* Index of the message with this id in batch b, or (size_t)-1. */
static size_t lookup(const nats_batch *b, const char *id)
{
    uint32_t i;
    if (b->msgs == NULL || !outbox__aggindex_lookup(&b->ids, id, &i)) return (size_t)-1;
    return i;
}

/* Sizes and fills batch b for msgs[0..n): id and aggregate indexes, flags,
 * and each message's previous message of its aggregate, in b or in the
 * open batch `older` (NULL: none).  -1 when out of memory (b's indexes
 * emptied). */
static int batch_prepare(nats_batch *b, const nats_batch *older, outbox_msg *const *msgs, size_t n)
{
    size_t i;
    outbox__aggindex_reset(&b->ids);
    outbox__aggindex_reset(&b->aggs);
    if (outbox__aggindex_reserve(&b->ids, n) != OUTBOX_OK ||
        outbox__aggindex_reserve(&b->aggs, n) != OUTBOX_OK)
        return -1;
    if (n > b->cap) {
        unsigned char *d = outbox__realloc(b->done, n);
        if (d == NULL) return -1;
        b->done = d;
        d = outbox__realloc(b->started, n);
        if (d == NULL) return -1;
        b->started = d;
        d = outbox__realloc(b->wanted, n);
        if (d == NULL) return -1;
        b->wanted = d;
        long *p = outbox__realloc(b->prev, n * sizeof *p);
        if (p == NULL) return -1;
        b->prev = p;
        b->cap = n;
    }
    memset(b->done, 0, n);
    memset(b->started, 0, n);
    memset(b->wanted, 0, n);
    b->msgs = msgs;
    b->n = n;
    for (i = 0; i < n; i++) {
        const char *agg = msgs[i]->aggregate_id;
        uint32_t prev;
        /* An id given twice stays with its first message. */
        if (outbox__aggindex_insert(&b->ids, msgs[i]->id, (uint32_t)i, &prev))
            outbox__aggindex_insert(&b->ids, msgs[i]->id, prev, NULL);
        if (outbox__aggindex_insert(&b->aggs, agg, (uint32_t)i, &prev))
            b->prev[i] = (long)prev;
        else if (older != NULL && outbox__aggindex_lookup(&older->aggs, agg, &prev))
            b->prev[i] = PREV_OLDER(prev);
        else
            b->prev[i] = PREV_NONE;
    }
    return 0;
}

static void set_result(outbox_publish_result *r, int code, const char *fmt, ...)
    OUTBOX__PRINTF(3, 4);
static void set_result(outbox_publish_result *r, int code, const char *fmt, ...)
{
    va_list ap;
    r->code = code;
    r->retry_after_ms = 0;
    if (fmt == NULL) {
        r->error[0] = '\0';
        return;
    }
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
}

/* Does the stream subject filter cover every subject of pattern (where a
 * '*' token of pattern stands for any one token)? */
static int filter_covers(const char *filter, const char *pattern)
{
    for (;;) {
        size_t fl = strcspn(filter, "."), pl = strcspn(pattern, ".");
        if (fl == 1 && filter[0] == '>') return *pattern != '\0';
        if (*pattern == '\0' || *filter == '\0') return *pattern == '\0' && *filter == '\0';
        if (!(fl == 1 && filter[0] == '*') &&
            (fl != pl || memcmp(filter, pattern, fl) != 0 || (pl == 1 && pattern[0] == '*')))
            return 0;
        filter += fl;
        pattern += pl;
        if ((*filter == '.') != (*pattern == '.')) return 0;
        if (*filter == '.') filter++;
        if (*pattern == '.') pattern++;
    }
}

/* The template with every token that holds a placeholder turned into '*':
 * "outbox.{aggregate_type}.{type}" -> "outbox.*.*".  Rendered values have
 * '.' replaced, so a token stays one token. */
static void template_pattern(const char *tmpl, outbox_buf *b)
{
    outbox__buf_reset(b);
    while (*tmpl) {
        size_t len = strcspn(tmpl, ".");
        if (memchr(tmpl, '{', len) != NULL)
            outbox__buf_append(b, "*", 1);
        else
            outbox__buf_append(b, tmpl, len);
        tmpl += len;
        if (*tmpl == '.') {
            outbox__buf_append(b, ".", 1);
            tmpl++;
        }
    }
    outbox__buf_append(b, "", 0);
}

static const char *status_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && *t ? t : natsStatus_GetText(s);
}

/* ------------------------------------------------------------------------
 * Connection callbacks (nats.c's threads)
 * ---------------------------------------------------------------------- */

static void on_disconnected(natsConnection *nc, void *closure)
{
    nats_state *st = closure;
    (void)nc;
    if (atomic_load(&st->closing)) return;
    atomic_fetch_add(&st->disconnects, 1);
    outbox__log(OUTBOX_LOG_WARN, COMPONENT, "disconnected from %s; reconnecting", st->hosts);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    nats_state *st = closure;
    (void)nc;
    atomic_store(&st->reconnected_us, outbox__monotonic_us());
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "reconnected to %s", st->hosts);
}

/* The last callback nats.c makes for a connection: close waits for it
 * before freeing the state the callbacks use. */
static void on_closed(natsConnection *nc, void *closure)
{
    nats_state *st = closure;
    (void)nc;
    pthread_mutex_lock(&st->mu);
    st->closed = 1;
    pthread_cond_broadcast(&st->cond);
    pthread_mutex_unlock(&st->mu);
}

/* Classifies a negative ack: retriable unless the stream refused the
 * message for good (too big) or no stream listens on its subject (outside
 * the grace period after a reconnect). */
static void ack_error(nats_state *st, outbox_publish_result *r, const outbox_msg *m, natsMsg *msg,
                      const jsPubAckErr *pae)
{
    const char *subj = natsMsg_GetSubject(msg);
    int64_t since = outbox__monotonic_us() - atomic_load(&st->reconnected_us);
    if (pae->Err == NATS_NO_RESPONDERS) {
        if (st->replicated)
            /* A replicated stream checked at start-up: nobody answers while
             * its replicas elect a new leader (the old one died). */
            set_result(r, OUTBOX_EPUBLISH,
                       "no JetStream stream answered on subject %s (stream %s may be electing a "
                       "leader)",
                       subj ? subj : "?", st->stream);
        else if (atomic_load(&st->disconnects) > 0 && since < RECONNECT_GRACE_US)
            set_result(r, OUTBOX_EPUBLISH,
                       "no JetStream stream answered on subject %s just after a reconnect "
                       "(JetStream may still be starting)",
                       subj ? subj : "?");
        else
            set_result(r, OUTBOX_EREJECTED,
                       "no JetStream stream listens on subject %s; add the subject to the "
                       "stream or change the subject template",
                       subj ? subj : "?");
        return;
    }
    if (pae->ErrCode == JSStreamMessageExceedsMaximumErr) {
        set_result(r, OUTBOX_EREJECTED, "JetStream refused message %s: %s (error %d)", m->id,
                   pae->ErrText ? pae->ErrText : "message too large", (int)pae->ErrCode);
        return;
    }
    if (pae->ErrCode != 0)
        set_result(r, OUTBOX_EPUBLISH, "JetStream error %d: %s", (int)pae->ErrCode,
                   pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
    else
        set_result(r, OUTBOX_EPUBLISH, "JetStream publish failed: %s",
                   pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
}

static void ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    nats_state *st = closure;
    const char *id = NULL;
    int k, lost = 0;
    (void)js;

    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK) id = NULL;
    /* Tests: a positive ack that never arrived (the message is retried;
     * JetStream's duplicate window drops the second copy). */
    if (pa != NULL && pae == NULL && OUTBOX_FAULT("nats_ack_lost") != 0) lost = 1;
    pthread_mutex_lock(&st->mu);
    for (k = 0; id != NULL && k < st->count; k++) {
        nats_batch *b = batch_at(st, k);
        size_t i;
        if (!b->accepting) continue;
        i = lookup(b, id);
        if (i == (size_t)-1) continue;
        if (!b->done[i]) {
            if (lost)
                set_result(&b->results[i], OUTBOX_EPUBLISH,
                           "injected fault nats_ack_lost: the ack was dropped");
            else if (pa != NULL && pae == NULL)
                set_result(&b->results[i], OUTBOX_OK, NULL);
            else if (pae != NULL)
                ack_error(st, &b->results[i], b->msgs[i], msg, pae);
            else
                set_result(&b->results[i], OUTBOX_EPUBLISH, "JetStream sent an empty ack");
            b->done[i] = 1;
            st->acks++;
            if (b->outstanding > 0) b->outstanding--;
            /* The relay thread waits for the acks a later message needs, and
             * for the batch's last one: waking it for every ack costs more
             * than the publication. */
            if (b->wanted[i] || b->outstanding == 0) pthread_cond_broadcast(&st->cond);
        }
        break;
    }
    pthread_mutex_unlock(&st->mu);
    natsMsg_Destroy(msg);
}

/* ------------------------------------------------------------------------
 * Open
 * ---------------------------------------------------------------------- */

/* Checks the stream exists (or creates it) and covers the subject template. */
static int check_stream(nats_state *st, const char *create, const char *tmpl, outbox_error *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    outbox_buf pattern;
    natsStatus s;
    int rc = OUTBOX_OK, i, covered = 0;

    outbox__buf_init(&pattern);
    template_pattern(tmpl, &pattern);
    if (pattern.oom) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory checking the NATS stream");
        goto out;
    }
    s = js_GetStreamInfo(&si, st->js, st->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig sc;
        const char *subjects[1];
        if (create == NULL) {
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "nats destination: JetStream stream \"%s\" does not exist on %s; "
                               "create it (nats stream add) or use create_stream=%s",
                               st->stream, st->hosts, st->stream);
            goto out;
        }
        jsStreamConfig_Init(&sc);
        subjects[0] = pattern.data;
        sc.Name = st->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        jerr = 0;
        s = js_AddStream(&si, st->js, &sc, NULL, &jerr);
        if (s != NATS_OK) {
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "nats destination: cannot create stream \"%s\" for subjects %s on "
                               "%s: %s (error %d); check that no other stream covers them",
                               st->stream, pattern.data, st->hosts, status_text(s), (int)jerr);
            goto out;
        }
        outbox__log(OUTBOX_LOG_INFO, COMPONENT, "created stream %s (subjects %s, file storage)",
                    st->stream, pattern.data);
    } else if (s != NATS_OK) {
        rc = outbox__error(
            err, s == NATS_NO_RESPONDERS ? OUTBOX_ECONFIG : OUTBOX_EPUBLISH,
            "nats destination: cannot look up stream \"%s\" on %s: %s%s", st->stream, st->hosts,
            status_text(s),
            s == NATS_NO_RESPONDERS ? " (is JetStream enabled? start nats-server -js)" : "");
        goto out;
    }
    st->replicated = si->Config && si->Config->Replicas > 1;
    for (i = 0; si->Config && i < si->Config->SubjectsLen; i++)
        if (filter_covers(si->Config->Subjects[i], pattern.data)) covered = 1;
    if (si->Config && si->Config->SubjectsLen == 0 && strchr(pattern.data, '*') == NULL &&
        strcmp(pattern.data, st->stream) == 0)
        covered = 1; /* a stream without subjects listens on its own name */
    if (!covered) {
        outbox_buf list;
        outbox__buf_init(&list);
        for (i = 0; si->Config && i < si->Config->SubjectsLen; i++) {
            if (i) outbox__buf_puts(&list, ", ");
            outbox__buf_puts(&list, si->Config->Subjects[i]);
        }
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination: subject template \"%s\" (subjects %s) is not "
                           "covered by stream \"%s\" (subjects: %s); change subject= or add %s "
                           "to the stream's subjects",
                           tmpl, pattern.data, st->stream, list.data ? list.data : "none",
                           pattern.data);
        outbox__buf_free(&list);
        goto out;
    }
out:
    if (si) jsStreamInfo_Destroy(si);
    outbox__buf_free(&pattern);
    return rc;
}

/* Fills st->opts from the parsed URL and settings. */
static int set_options(nats_state *st, const outbox_url *u, const nats_config *c, outbox_error *err)
{
    const char *token = c->token, *creds = c->creds, *ca = c->ca_file;
    const char **servers = NULL;
    char *hosts = NULL, *save = NULL, *h;
    int count = 0, rc = OUTBOX_OK, secure = c->tls || ca != NULL;
    natsStatus s;

    hosts = outbox__strdup(u->hosts);
    servers = outbox__calloc(strlen(u->hosts) / 2 + 2, sizeof *servers);
    if (hosts == NULL || servers == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the nats destination");
        goto out;
    }
    for (h = strtok_r(hosts, ",", &save); h != NULL; h = strtok_r(NULL, ",", &save)) {
        size_t len = strlen(h) + 16;
        char *url = outbox__malloc(len);
        if (url == NULL) {
            rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the nats destination");
            goto out;
        }
        snprintf(url, len, "%s://%s%s", secure ? "tls" : "nats", h, strchr(h, ':') ? "" : ":4222");
        servers[count++] = url;
    }
    if (count == 0) {
        rc = outbox__error(err, OUTBOX_EBADURL,
                           "nats destination has no server; use nats://host:port?stream=NAME");
        goto out;
    }

    s = natsOptions_Create(&st->opts);
    if (s == NATS_OK) s = natsOptions_SetServers(st->opts, servers, count);
    if (s == NATS_OK && u->user != NULL)
        s = natsOptions_SetUserInfo(st->opts, u->user, u->password ? u->password : "");
    if (s == NATS_OK && token != NULL) s = natsOptions_SetToken(st->opts, token);
    if (s == NATS_OK) s = natsOptions_SetName(st->opts, "outbox-relay");
    if (s == NATS_OK) s = natsOptions_SetTimeout(st->opts, c->connect_timeout_ms);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(st->opts, true);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(st->opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(st->opts, 250);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(st->opts, c->ping_interval_ms);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(st->opts, (int)c->max_pings_out);

    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(st->opts, on_disconnected, st);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(st->opts, on_reconnected, st);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(st->opts, on_closed, st);
    /* Publications go through nats.c's write buffer and flusher thread (not
     * SendAsap: a write per message costs the relay more system time than
     * the rest of its work).  What the buffer holds when a connection drops
     * is lost or sent after the reconnect; either way it is unacknowledged
     * until an ack says otherwise, and with at most one unacknowledged
     * message per aggregate (see "Order" above) no aggregate is reordered. */
    if (s != NATS_OK) {
        rc = outbox__error(err, OUTBOX_ECONFIG, "nats destination: cannot set options: %s",
                           natsStatus_GetText(s));
        goto out;
    }
    if (secure && natsOptions_SetSecure(st->opts, true) != NATS_OK) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination: tls=true but nats.c was built without TLS");
        goto out;
    }
    if (ca != NULL && natsOptions_LoadCATrustedCertificates(st->opts, ca) != NATS_OK) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination: cannot load ca_file \"%s\"; give a readable PEM "
                           "file",
                           ca);
        goto out;
    }
    /* nats.c reads the creds file only when it connects: outbox__props_parse
     * has said already if it cannot be read. */
    if (creds != NULL &&
        natsOptions_SetUserCredentialsFromFiles(st->opts, creds, NULL) != NATS_OK) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination: cannot use creds file \"%s\"; give a readable "
                           ".creds file",
                           creds);
        goto out;
    }
out:
    while (count > 0)
        outbox__free((void *)servers[--count]);
    outbox__free(servers);
    outbox__free(hosts);
    return rc;
}

static void nats_close(void *state);

static int nats_open(void **state, const char *url, const outbox_transport_config *cfg,
                     outbox_error *err)
{
    nats_state *st = NULL;
    outbox_url u;
    nats_config c;
    const char *tmpl, *stream, *create;
    const char *creds;
    int rc = OUTBOX_OK, parsed = 0, locks = 0, attempt;
    jsOptions jo;
    natsStatus s;

    *state = NULL;
    memset(&u, 0, sizeof u);
    memset(&c, 0, sizeof c);
    rc = outbox__url_parse(&u, url, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    parsed = 1;
    rc = outbox__props_parse(nats_props, "nats destination", &u, &c, err);
    if (rc != OUTBOX_OK) goto fail;
    creds = c.creds;

    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the nats destination");
        goto fail;
    }
    outbox__buf_init(&st->subject);
    if (pthread_mutex_init(&st->mu, NULL) != 0 || pthread_cond_init(&st->cond, NULL) != 0) {
        pthread_mutex_destroy(&st->mu);
        rc = outbox__error(err, OUTBOX_ENOMEM, "cannot create a mutex for the nats destination");
        goto fail;
    }
    locks = 1;
    snprintf(st->hosts, sizeof st->hosts, "nats://%s", u.hosts);

    tmpl = c.subject;
    stream = c.stream;
    create = c.create_stream;
    st->ack_timeout_ms = c.ack_timeout_ms;
    if (stream != NULL && create != NULL && strcmp(stream, create) != 0) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination: stream=%s and create_stream=%s differ; give one "
                           "of them",
                           stream, create);
        goto fail;
    }
    if (stream == NULL) stream = create;
    if (stream == NULL || *stream == '\0') {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "nats destination needs a stream: add ?stream=NAME (an existing "
                           "JetStream stream) or ?create_stream=NAME");
        goto fail;
    }
    if (u.hosts == NULL || u.hosts[0] == '\0') {
        rc = outbox__error(err, OUTBOX_EBADURL,
                           "nats destination has no server; use nats://host:port?stream=NAME");
        goto fail;
    }
    rc = outbox__route_new(&st->route, tmpl, OUTBOX_ROUTE_NATS_SUBJECT, err);
    if (rc != OUTBOX_OK) goto fail;
    st->stream = outbox__strdup(stream);
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    if (st->stream == NULL || st->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the nats destination");
        goto fail;
    }
    rc = set_options(st, &u, &c, err);
    if (rc != OUTBOX_OK) goto fail;

    for (attempt = 1;; attempt++) {
        s = natsConnection_Connect(&st->nc, st->opts);
        /* nats.c 3.4.1 leaves the nonce's signature out of CONNECT when its
         * first byte is 0 (about 1 connection in 256 with creds), and the
         * server refuses it; the next nonce almost surely works. */
        if (s != NATS_CONNECTION_AUTH_FAILED || creds == NULL || attempt >= 3) break;
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "%s refused the credentials of creds file \"%s\" (attempt %d of 3); trying "
                    "again (nats.c may have sent the connection without its signature)",
                    st->hosts, creds, attempt);
    }
    if (s != NATS_OK) {
        if (s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED)
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "nats destination: %s refused the credentials (%s); check the "
                               "user/password in the URL, token= or creds= (and that the "
                               "server's operator trusts the creds' account)",
                               st->hosts, natsStatus_GetText(s));
        else if (creds != NULL && s == NATS_ERR)
            /* nats.c reports a creds file it cannot parse this way. */
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "nats destination: cannot use creds file \"%s\": %s; give a "
                               ".creds file with the user JWT and nkey seed (as nsc writes it)",
                               creds, status_text(s));
        else
            rc = outbox__error(err, OUTBOX_EPUBLISH,
                               "nats destination: cannot connect to %s: %s; check that "
                               "nats-server runs there",
                               st->hosts, status_text(s));
        goto fail;
    }
    jsOptions_Init(&jo);
    jo.Wait = st->ack_timeout_ms;
    jo.PublishAsync.MaxPending = c.max_pending;
    jo.PublishAsync.AckHandler = ack_handler;
    jo.PublishAsync.AckHandlerClosure = st;
    jo.PublishAsync.StallWait = st->ack_timeout_ms;
    s = natsConnection_JetStream(&st->js, st->nc, &jo);
    if (s != NATS_OK) {
        rc = outbox__error(err, OUTBOX_EPUBLISH, "nats destination: cannot use JetStream on %s: %s",
                           st->hosts, status_text(s));
        goto fail;
    }
    rc = check_stream(st, create, tmpl, err);
    if (rc != OUTBOX_OK) goto fail;
    {
        int64_t max_payload = natsConnection_GetMaxPayload(st->nc);
        size_t limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
        if (max_payload > 0 && (uint64_t)limit > (uint64_t)max_payload)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "%s accepts messages of at most %lld bytes (max_payload), less than "
                        "the %zu bytes this process lets a message have "
                        "(OUTBOX_LIMIT_MESSAGE_BYTES): a larger message fails at once as "
                        "rejected; raise max_payload on the server or lower the limit",
                        st->hosts, (long long)max_payload, limit);
    }

    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "connected to %s: stream %s, subject %s, max pending %lld, ack timeout %lld ms",
                st->hosts, st->stream, tmpl, (long long)c.max_pending,
                (long long)st->ack_timeout_ms);
    outbox__props_free(nats_props, &c);
    outbox__url_free(&u);
    *state = st;
    return OUTBOX_OK;

fail:
    outbox__props_free(nats_props, &c);
    if (parsed) outbox__url_free(&u);
    if (st != NULL) {
        if (!locks) {
            outbox__buf_free(&st->subject);
            outbox__free(st);
        } else {
            nats_close(st);
        }
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Publish
 * ---------------------------------------------------------------------- */

static const char *const ce_reserved[] = {
    "specversion",     "id",         "source", "type",         "subject", "time",
    "datacontenttype", "dataschema", "data",   "aggregatetype"};

static const char *const w3c_trace[] = {"traceparent", "tracestate"};

/* Builds the NATS message for m on subject: payload as data, CloudEvents
 * NATS binding headers, Nats-Msg-Id, traceparent/tracestate. */
static natsStatus build_msg(nats_state *st, natsMsg **out, const outbox_msg *m, const char *subject)
{
    natsMsg *msg = NULL;
    char time_text[32], ext[64], key[80];
    size_t i, j;
    natsStatus s;

    s = natsMsg_Create(&msg, subject, NULL, m->payload, (int)strlen(m->payload));
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "Nats-Msg-Id", m->id);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "ce-specversion", "1.0");
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "ce-id", m->id);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "ce-source", st->source);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "ce-type", m->type);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "ce-subject", m->aggregate_id);
    if (s == NATS_OK) {
        outbox_time_format(m->occurred_at, time_text);
        s = natsMsgHeader_Set(msg, "ce-time", time_text);
    }
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "content-type", "application/json");
    if (s == NATS_OK && m->aggregate_type[0] != '\0')
        s = natsMsgHeader_Set(msg, "ce-aggregatetype", m->aggregate_type);
    for (i = 0; s == NATS_OK && i < m->header_count; i++) {
        const char *v = NULL;
        int taken;
        outbox__cloudevent_ext_name(m->header_names[i], ext, sizeof ext);
        if (ext[0] == '\0') continue;
        do {
            taken = 0;
            for (j = 0; j < sizeof ce_reserved / sizeof ce_reserved[0]; j++)
                if (strcmp(ce_reserved[j], ext) == 0) taken = 1;
            snprintf(key, sizeof key, "ce-%s", ext);
            if (!taken && natsMsgHeader_Get(msg, key, &v) == NATS_OK) taken = 1;
            if (taken) {
                size_t len = strlen(ext);
                if (len + 2 > sizeof ext) break;
                memmove(ext + 1, ext, len + 1);
                ext[0] = 'x';
            }
        } while (taken);
        if (!taken) s = natsMsgHeader_Set(msg, key, m->header_values[i]);
    }
    /* W3C trace context also under its own names, where tracing libraries
     * look for it (as the http destination sends it). */
    for (i = 0; s == NATS_OK && i < sizeof w3c_trace / sizeof w3c_trace[0]; i++)
        if (outbox_msg_header(m, w3c_trace[i]))
            s = natsMsgHeader_Set(msg, w3c_trace[i], outbox_msg_header(m, w3c_trace[i]));
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return s;
    }
    *out = msg;
    return NATS_OK;
}

/* CLOCK_REALTIME (for pthread_cond_timedwait) ms from now. */
static struct timespec deadline_after(int64_t ms)
{
    struct timespec t;
    int64_t at;
    clock_gettime(CLOCK_REALTIME, &t);
    at = (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000 + ms;
    t.tv_sec = (time_t)(at / 1000);
    t.tv_nsec = (long)(at % 1000) * 1000000L;
    return t;
}

/* Has CLOCK_REALTIME reached *t? */
static int passed(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Makes message i of b final without sending it. */
static void not_sent(nats_state *st, nats_batch *b, size_t i, int code, const char *why)
{
    pthread_mutex_lock(&st->mu);
    set_result(&b->results[i], code, "%s", why);
    b->done[i] = 1;
    pthread_mutex_unlock(&st->mu);
}

/* One wave of batch b (older: the open batch before it, or NULL): sends
 * every message not started yet whose previous message of its aggregate
 * is confirmed (or that has none); gives a result without sending to
 * those whose previous message failed, and to all when b is stalled.
 * Never waits.  Returns how many messages still wait for an ack; sets
 * *progressed when it started one. */
static size_t wave(nats_state *st, nats_batch *b, nats_batch *older, int *progressed)
{
    size_t i, waiting = 0;
    outbox_error rerr;
    int64_t max_payload = natsConnection_GetMaxPayload(st->nc); /* this server's (0: unknown) */

    for (i = 0; i < b->n; i++) {
        const outbox_msg *m = b->msgs[i];
        long p = b->prev[i];
        natsMsg *msg = NULL;
        natsStatus s;
        int held = 0;

        if (b->started[i]) continue;
        if (p == PREV_FAILED) {
            held = 1;
        } else if (p != PREV_NONE) {
            nats_batch *pb = p >= 0 ? b : older;
            size_t j = p >= 0 ? (size_t)p : PREV_OLDER_INDEX(p);
            int pdone, pok;
            pthread_mutex_lock(&st->mu);
            pdone = pb->done[j];
            pok = pb->results[j].code == OUTBOX_OK;
            if (!pdone) pb->wanted[j] = 1;
            pthread_mutex_unlock(&st->mu);
            if (!pdone && !b->stalled) {
                waiting++;
                continue;
            }
            held = !pdone || !pok;
        }
        b->started[i] = 1;
        *progressed = 1;
        if (!b->stalled && (atomic_load(&st->disconnects) != b->disconnects0 ||
                            natsConnection_Status(st->nc) != NATS_CONN_STATUS_CONNECTED))
            b->stalled = 2;
        if (b->stalled) {
            not_sent(st, b, i, OUTBOX_EPUBLISH,
                     b->stalled == 1 ? "not sent: JetStream acks stopped coming back"
                                     : "not sent: the connection to NATS dropped during the batch");
            continue;
        }
        if (held) {
            not_sent(st, b, i, OUTBOX_EPUBLISH,
                     "not sent: an earlier message of its aggregate was not confirmed");
            continue;
        }
        if (max_payload > 0 && strlen(m->payload) > (size_t)max_payload) {
            char why[200];
            snprintf(why, sizeof why,
                     "the payload is %zu bytes, more than the NATS server's max_payload of "
                     "%lld bytes",
                     strlen(m->payload), (long long)max_payload);
            not_sent(st, b, i, OUTBOX_EREJECTED, why);
            continue;
        }
        rerr.code = 0;
        rerr.message[0] = '\0';
        if (outbox__route_render(st->route, m, &st->subject, &rerr) != OUTBOX_OK) {
            not_sent(st, b, i, rerr.code == OUTBOX_ENOMEM ? OUTBOX_ENOMEM : OUTBOX_EREJECTED,
                     rerr.message);
            continue;
        }
        s = build_msg(st, &msg, m, st->subject.data);
        if (s == NATS_OK) {
            /* Counted first: the ack may arrive before the call returns. */
            pthread_mutex_lock(&st->mu);
            b->outstanding++;
            pthread_mutex_unlock(&st->mu);
            s = js_PublishMsgAsync(st->js, &msg, NULL);
            if (s == NATS_OK) st->published = 1;
            if (s != NATS_OK) {
                pthread_mutex_lock(&st->mu);
                b->outstanding--;
                pthread_mutex_unlock(&st->mu);
            }
        }
        if (s != NATS_OK) {
            char why[256];
            natsMsg_Destroy(msg); /* NULL when the library took it */
            snprintf(why, sizeof why, "JetStream publish to %s failed: %s",
                     st->subject.data ? st->subject.data : "?", status_text(s));
            /* The window stayed full for ack_timeout: acks are not coming
             * back, so the rest of the batch waits for the next attempt. */
            if (s == NATS_TIMEOUT) b->stalled = 1;
            if (s == NATS_MAX_PAYLOAD) {
                /* Payload and headers together over max_payload: never fits. */
                snprintf(why, sizeof why,
                         "the message with its headers is larger than the NATS server's "
                         "max_payload of %lld bytes (%s)",
                         (long long)max_payload, status_text(s));
                not_sent(st, b, i, OUTBOX_EREJECTED, why);
                continue;
            }
            not_sent(st, b, i, OUTBOX_EPUBLISH, why);
        }
    }
    return waiting;
}

/* Begins a batch (publish_begin in internal.h): prepares it and sends its
 * first wave.  A batch begun while another is open follows it: each
 * message waits for the previous message of its aggregate in either batch
 * (at most one unacknowledged message per aggregate across both), and it
 * inherits the open batch's stop conditions (a connection lost or acks
 * stalled since that one began). */
static int nats_publish_begin(void *state, outbox_msg *const *msgs, size_t n,
                              outbox_publish_result *results)
{
    nats_state *st = state;
    nats_batch *b, *older = NULL;
    size_t i;
    int progressed = 0;

    if (st->count >= OUTBOX_PIPELINE_DEPTH) return OUTBOX_EINVAL;
    if (st->count > 0) {
        older = batch_at(st, st->count - 1);
        wave(st, older, NULL, &progressed); /* what its last acks let go */
    }
    if (older == NULL && atomic_load(&st->disconnects) != st->verified_disconnects) {
        /* After a reconnect, publish only once the stream answers again: a
         * restarting server refuses publications while it recovers its
         * streams.  (With a batch open, the disconnect stalls this batch
         * below; the check runs once nothing is open.) */
        int seen = atomic_load(&st->disconnects);
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        jsOptions jo;
        natsStatus s;
        jsOptions_Init(&jo);
        jo.Wait = st->ack_timeout_ms;
        s = js_GetStreamInfo(&si, st->js, st->stream, &jo, &jerr);
        if (si) jsStreamInfo_Destroy(si);
        if (s != NATS_OK) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "stream %s not available yet after a reconnect to %s: %s", st->stream,
                        st->hosts, natsStatus_GetText(s));
            if (n > 0)
                set_result(&results[0], OUTBOX_EPUBLISH,
                           "stream %s not available yet after a reconnect to %s: %s", st->stream,
                           st->hosts, natsStatus_GetText(s));
            return OUTBOX_EPUBLISH;
        }
        st->verified_disconnects = seen;
    }

    b = batch_at(st, st->count);
    pthread_mutex_lock(&st->mu);
    if (batch_prepare(b, older, msgs, n) != 0) {
        b->msgs = NULL;
        b->n = 0;
        pthread_mutex_unlock(&st->mu);
        return OUTBOX_ENOMEM;
    }
    if (n > 0)
        set_result(&results[0], OUTBOX_EPUBLISH, "no ack from JetStream within %lld ms",
                   (long long)st->ack_timeout_ms);
    for (i = 1; i < n; i++)
        results[i] = results[0]; /* formatted once */
    b->results = results;
    b->outstanding = 0;
    b->stalled = older ? older->stalled : 0;
    b->disconnects0 = older ? older->disconnects0 : atomic_load(&st->disconnects);
    b->accepting = 1;
    st->count++;
    pthread_mutex_unlock(&st->mu);

    wave(st, b, older, &progressed);
    return OUTBOX_OK;
}

/* Ends the oldest open batch (publish_end in internal.h): sends its
 * remaining waves as acks come back (and the next open batch's, which
 * wait on the same acks), then waits for its last acks.  When no ack of
 * the batch arrives for ack_timeout, what is left is not sent and what is
 * unacknowledged stays retriable; nats.c's pending acks are then taken
 * back, those of the next open batch with them (it stops too). */
static int nats_publish_end(void *state, outbox_msg *const *msgs, size_t n,
                            outbox_publish_result *results)
{
    nats_state *st = state;
    nats_batch *b, *next;
    struct timespec deadline = {0, 0};
    size_t i, acks_seen, outstanding, done_before = (size_t)-1;
    int ignored = 0, timed_out = 0;

    if (st->count == 0) return OUTBOX_EINVAL;
    b = batch_at(st, 0);
    if (b->msgs != msgs || b->n != n || b->results != results) return OUTBOX_EINVAL;
    next = st->count > 1 ? batch_at(st, 1) : NULL;

    for (;;) {
        size_t waiting, finished = 0;
        int progressed = 0;

        pthread_mutex_lock(&st->mu);
        acks_seen = st->acks; /* before the waves: an ack during them is not missed */
        pthread_mutex_unlock(&st->mu);
        waiting = wave(st, b, NULL, &progressed);
        if (next != NULL) wave(st, next, b, &ignored);
        pthread_mutex_lock(&st->mu);
        outstanding = b->outstanding;
        for (i = 0; i < n; i++)
            finished += b->done[i];
        pthread_mutex_unlock(&st->mu);
        if (waiting == 0 && outstanding == 0) break;
        if (progressed) continue;
        if (finished != done_before) { /* progress: a fresh ack_timeout */
            deadline = deadline_after(st->ack_timeout_ms);
            done_before = finished;
        } else if (passed(&deadline)) {
            timed_out = 1;
            break;
        }
        /* ack_handler wakes this for the acks a waiting message needs and
         * for the batch's last ack (not for every ack). */
        pthread_mutex_lock(&st->mu);
        while (st->acks == acks_seen)
            if (pthread_cond_timedwait(&st->cond, &st->mu, &deadline) == ETIMEDOUT) break;
        pthread_mutex_unlock(&st->mu);
    }

    if (timed_out) {
        /* No ack of this batch for ack_timeout: what is left is not sent. */
        b->stalled = 1;
        wave(st, b, NULL, &ignored);
        pthread_mutex_lock(&st->mu);
        outstanding = b->outstanding;
        if (outstanding > 0) {
            /* Later acks are ignored: those messages stay retriable.  The
             * pending list is the connection's, so the next batch loses
             * its acks too and stops. */
            b->accepting = 0;
            if (next != NULL) {
                next->accepting = 0;
                next->stalled = 1;
                next->outstanding = 0;
            }
        }
        pthread_mutex_unlock(&st->mu);
        if (outstanding > 0) {
            natsMsgList pending;
            memset(&pending, 0, sizeof pending);
            if (js_PublishAsyncGetPendingList(&pending, st->js) == NATS_OK)
                natsMsgList_Destroy(&pending);
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "%zu of %zu messages not acked by JetStream within %lld ms "
                        "(connection %s); they will be retried",
                        outstanding, n, (long long)st->ack_timeout_ms,
                        natsConnection_Status(st->nc) == NATS_CONN_STATUS_CONNECTED ? "up"
                                                                                    : "down");
        }
    }

    pthread_mutex_lock(&st->mu);
    if (next != NULL) {
        /* The next batch no longer looks into this one. */
        for (i = 0; i < next->n; i++) {
            long p = next->prev[i];
            if (p <= PREV_OLDER(0)) {
                size_t j = PREV_OLDER_INDEX(p);
                next->prev[i] =
                    b->done[j] && b->results[j].code == OUTBOX_OK ? PREV_NONE : PREV_FAILED;
            }
        }
    }
    b->accepting = 0;
    b->results = NULL;
    b->msgs = NULL;
    b->n = 0;
    b->outstanding = 0;
    st->first = (st->first + 1) % OUTBOX_PIPELINE_DEPTH;
    st->count--;
    pthread_mutex_unlock(&st->mu);
    if (next != NULL) wave(st, next, NULL, &ignored); /* what this batch's last acks let go */
    return OUTBOX_OK;
}

/* One batch, begun and ended (the relay's synchronous path). */
static int nats_publish(void *state, outbox_msg *const *msgs, size_t n,
                        outbox_publish_result *results)
{
    int rc;
    if (n == 0) return OUTBOX_OK;
    rc = nats_publish_begin(state, msgs, n, results);
    if (rc != OUTBOX_OK) return rc;
    return nats_publish_end(state, msgs, n, results);
}

/* ------------------------------------------------------------------------
 * Close
 * ---------------------------------------------------------------------- */

static void nats_close(void *state)
{
    nats_state *st = state;
    int k;
    if (st == NULL) return;
    atomic_store(&st->closing, 1);
    if (st->js && st->published) {
        natsMsgList pending;
        memset(&pending, 0, sizeof pending);
        if (js_PublishAsyncGetPendingList(&pending, st->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
    }
    if (st->js) jsCtx_Destroy(st->js);
    if (st->nc) {
        struct timespec until;
        natsConnection_Close(st->nc);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        pthread_mutex_lock(&st->mu);
        while (!st->closed)
            if (pthread_cond_timedwait(&st->cond, &st->mu, &until) == ETIMEDOUT) break;
        pthread_mutex_unlock(&st->mu);
        natsConnection_Destroy(st->nc);
    }
    if (st->opts) natsOptions_Destroy(st->opts);
    outbox__route_free(st->route);
    outbox__buf_free(&st->subject);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cond);
    for (k = 0; k < OUTBOX_PIPELINE_DEPTH; k++) {
        nats_batch *b = &st->batches[k];
        outbox__aggindex_free(&b->ids);
        outbox__aggindex_free(&b->aggs);
        outbox__free(b->done);
        outbox__free(b->started);
        outbox__free(b->wanted);
        outbox__free(b->prev);
    }
    outbox__free(st->stream);
    outbox__free(st->source);
    outbox__free(st);
}

#define NATS_ENTRY(f) f

#else

#define NATS_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_NATS */

/* The NATS JetStream destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_nats = {
    .version = 4,
    .scheme = "nats",
    .open = NATS_ENTRY(nats_open),
    .publish = NATS_ENTRY(nats_publish),
    .close = NATS_ENTRY(nats_close),
    .reopen = NULL,
    .publish_begin = NATS_ENTRY(nats_publish_begin),
    .publish_end = NATS_ENTRY(nats_publish_end),
    .interrupt = NULL,
    .usage = "nats://HOST:4222?stream=S",
    .doc = "NATS JetStream: the stream's ack confirms a message (Nats-Msg-Id = its id).  "
           "Several servers: nats://HOST1:4222,HOST2:4222; user:password@ or token= or creds= "
           "to authenticate.",
    .props = nats_props,
};
