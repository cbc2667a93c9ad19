/*
 * kafka.c - the `kafka://` destination, through librdkafka.
 *
 *   kafka://broker[,broker]?topic=TEMPLATE&kafka.<librdkafka setting>=VALUE
 *
 * An idempotent producer (enable.idempotence=true, acks=all): the key is
 * the aggregate id, so one aggregate stays in one partition, where the
 * idempotent producer keeps order across its internal retries.  Headers
 * follow the CloudEvents Kafka binding (ce_specversion, ce_id, ce_source,
 * ce_type, ce_time, ce_subject, content-type; message headers as ce_<ext>;
 * traceparent/tracestate also under their W3C names).
 *
 * publish_begin() produces a batch; publish_end() polls until every
 * message's delivery report arrived or ack_timeout passed since it began
 * (publish() is the two).  The relay pipelines through a window:
 * publish_room() lets it begin another batch while the messages produced
 * without a report, with that batch, stay within window_messages and their
 * bytes below window_bytes (up to OUTBOX_PIPELINE_MAX_DEPTH batches), so
 * throughput is the window over the cluster's round trip, not two batches
 * over it.  Each report decides its message: OK, retriable, or rejected
 * for good (too large, invalid, not authorised); only an OK report makes
 * a message sent.  A report is matched to its batch and message by an
 * opaque (batch generation, index), so a late report of an ended batch is
 * ignored.  When a produce call fails, later messages of the same
 * aggregate in the open batches are not produced.
 *
 * Order with many messages of a key in flight (guarantee 4: no message of
 * an aggregate first appears in the topic before an earlier one).  The
 * idempotent producer keeps each partition in produce order across its own
 * retries, so the only danger is a message that fails while later ones of
 * its partition are written: a gap the relay's retry would fill behind
 * them.  Three causes, three answers:
 *   - librdkafka's message timeout: message.timeout.ms is infinite and
 *     cannot be set (INTRODUCTION.md, "Message timeout considerations").
 *   - An error librdkafka does not retry (POLICY_VIOLATION, say): on its
 *     own it fails that request's messages and bumps the epoch to carry on
 *     with the later ones.  enable.gapless.guarantee=true (forced, like
 *     idempotence) makes any such failure a fatal error instead
 *     (ERR__GAPLESS_GUARANTEE: the producer stops, nothing later is sent).
 *     It is marked experimental and does not cover timeouts, which the
 *     first point rules out; a fatal error is handled anyway (below), so
 *     its cost is a rebuild where a gap would have been.
 *   - Our own deadline: a report still missing ack_timeout after its batch
 *     began is handled like a fatal error.
 * A fatal error (rd_kafka_fatal_error: gapless, fenced, broken idempotence
 * state; test builds: the fault point kafka_fatal raises one with
 * rd_kafka_test_fatal_error) serves the reports already queued (a message
 * the broker refused for good stays rejected), then fails what is
 * unconfirmed in every open batch as retriable and purges the producer:
 * what it wrote is a prefix of each partition's produce order.  The
 * producer is rebuilt before the next batch, once the relay has ended the
 * open ones, and the relay re-sends the unconfirmed messages in order.  A
 * request the old producer sent before the purge may still be written
 * after the new producer's first writes; it holds only messages whose
 * predecessors that producer wrote before them, so no first appearance
 * moves ahead of an earlier message's.  (librdkafka's mock cluster checks
 * sequence numbers only for transactional producers, so tests there keep
 * one request in flight per broker: a real broker refuses a request sent
 * behind a failed one with OUT_OF_ORDER_SEQUENCE_NUMBER, the mock appends
 * it.)

 * Topics: the producer keeps a handle for each topic it has produced to
 * (up to KAFKA_TOPICS_MAX; more are produced to by name), and asks the
 * cluster for a topic's metadata when it makes its handle, waiting up to
 * a second.  librdkafka, told of a topic after its brokers are up, looks
 * its partitions up only at its next once-a-second scan: the first batch
 * of every topic waited about a second for it (docs/BENCHMARKS.md).
 *
 * Size: a message over message.max.bytes (librdkafka refuses it when
 * produced) or over the topic's limit (the broker's report) is rejected
 * for good, not retried.  Start-up logs a message.max.bytes smaller than
 * this process's OUTBOX_LIMIT_MESSAGE_BYTES (librdkafka's default, 1000000,
 * is).
 *
 * Settings: any kafka.<name>=<value> goes to rd_kafka_conf_set (a bad one is
 * ECONFIG at start-up; values are never echoed, so secrets such as
 * sasl.password stay out of errors).  librdkafka's own logs go through
 * outbox__log, never to stderr.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* What the settings (URL query and --to-opt) are read into; kafka.<name>
 * settings are passed on as they come.  The table is in every build, so
 * help and docs describe the driver where librdkafka is absent too. */
typedef struct kafka_config {
    char *topic;
    int64_t ack_timeout_ms;
    int64_t window_messages;
    int64_t window_bytes;
} kafka_config;

static const outbox_prop kafka_props[] = {
    {"topic", OUTBOX_PROP_STRING, offsetof(kafka_config, topic), "outbox.{aggregate_type}", NULL,
     "TEMPLATE",
     "The topic of each message, made of {type}, {aggregate_type} and {aggregate_id}; the key "
     "is the aggregate id, so an aggregate stays in one partition."},
    {"ack_timeout", OUTBOX_PROP_DURATION, offsetof(kafka_config, ack_timeout_ms), "30s", "1ms..",
     NULL,
     "How long a batch waits for the brokers' acks; what is unacknowledged then is retried, on a "
     "new producer (librdkafka's own message.timeout.ms is infinite)."},
    {"window_messages", OUTBOX_PROP_INT, offsetof(kafka_config, window_messages), "20000",
     "1..10000000", NULL,
     "The publish window: the relay begins another batch only while the messages produced "
     "without a delivery report, plus that batch, stay within this many (and at most 64 batches "
     "are open: 32768 messages with batches of 512)."},
    {"window_bytes", OUTBOX_PROP_SIZE, offsetof(kafka_config, window_bytes), "32m", "1..", NULL,
     "The publish window in bytes (keys and payloads produced without a delivery report): "
     "another batch is begun only while fewer are out."},
    {"kafka.<name>", OUTBOX_PROP_STRING, 0, NULL, NULL, "VALUE",
     "Any librdkafka producer setting (e.g. kafka.security.protocol=ssl), refused at start-up "
     "when librdkafka refuses it; values are never shown.  enable.idempotence and "
     "enable.gapless.guarantee stay true; message.timeout.ms cannot be set (ack_timeout is the "
     "deadline)."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_RDKAFKA

#include <librdkafka/rdkafka.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COMPONENT "transport.kafka"

/* One batch between publish_begin and publish_end. */
typedef struct kafka_batch {
    uint32_t gen; /* tags its reports: (gen << 32) | (index + 1) */
    outbox_msg *const *msgs;
    outbox_publish_result *results; /* NULL: the slot is free */
    unsigned char *done;            /* per message: result final */
    unsigned char *failed;          /* per message: not produced */
    size_t cap;
    size_t n;
    size_t nfailed;
    size_t outstanding; /* produced, no report yet */
    int64_t deadline;   /* monotonic us: ack_timeout after it began */
} kafka_batch;

/* A topic of the current producer (see "Topics" above). */
enum { KAFKA_TOPICS_MAX = 32, KAFKA_METADATA_WAIT_MS = 1000 };
typedef struct kafka_topic {
    char *name;
    rd_kafka_topic_t *rkt;
} kafka_topic;

typedef struct kafka_state {
    rd_kafka_conf_t *conf; /* template: duplicated for each producer */
    rd_kafka_t *rk;
    kafka_topic topics[KAFKA_TOPICS_MAX];
    int ntopics;
    int last_topic; /* the index used last: consecutive messages share it */
    outbox_route *route;
    char *source;
    char brokers[256];
    int64_t ack_timeout_ms;
    const char *rebuild; /* why a new producer is made first, or NULL */
    outbox_buf topic;

    /* The open batches, oldest first from `first` (reports are served on
     * the calling thread, inside rd_kafka_poll). */
    kafka_batch batches[OUTBOX_PIPELINE_MAX_DEPTH];
    int first;
    int count;
    uint32_t gen; /* of the last batch begun */

    /* The window (publish_room): produced, no report yet. */
    int64_t window_messages, window_bytes;
    size_t unconfirmed;
    size_t unconfirmed_bytes;
} kafka_state;

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

/* Errors a retry cannot fix. */
static int permanent_error(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return 1;
    default:
        return 0;
    }
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka_state *st = opaque;
    uintptr_t tag = (uintptr_t)m->_private;
    uint32_t gen = (uint32_t)(tag >> 32);
    size_t i = (size_t)(tag & 0xffffffffu);
    kafka_batch *b = NULL;
    outbox_publish_result *r;
    uint32_t k;
    (void)rk;

    /* The open batches' generations are consecutive, oldest first. */
    if (st->count > 0) {
        k = gen - st->batches[st->first].gen;
        if (k < (uint32_t)st->count) {
            kafka_batch *c = &st->batches[(st->first + (int)k) % OUTBOX_PIPELINE_MAX_DEPTH];
            if (c->results != NULL && c->gen == gen) b = c;
        }
    }
    if (b == NULL || i == 0 || i > b->n) return; /* a late report */
    i--;
    if (b->done[i]) return;
    r = &b->results[i];
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        set_result(r, OUTBOX_OK, NULL);
    else if (permanent_error(m->err))
        set_result(r, OUTBOX_EREJECTED, "Kafka refused the message on topic %s: %s",
                   m->rkt ? rd_kafka_topic_name(m->rkt) : "?", rd_kafka_err2str(m->err));
    else
        set_result(r, OUTBOX_EPUBLISH, "Kafka delivery to %s failed: %s",
                   m->rkt ? rd_kafka_topic_name(m->rkt) : "?", rd_kafka_err2str(m->err));
    b->done[i] = 1;
    b->outstanding--;
    st->unconfirmed--;
    st->unconfirmed_bytes -= m->len + m->key_len;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int lv = level <= 3   ? OUTBOX_LOG_ERROR
             : level <= 4 ? OUTBOX_LOG_WARN
             : level <= 6 ? OUTBOX_LOG_INFO
                          : OUTBOX_LOG_DEBUG;
    (void)rk;
    outbox__log(lv, COMPONENT, "librdkafka %s: %s", fac, buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    outbox__log(err == RD_KAFKA_RESP_ERR__FATAL ? OUTBOX_LOG_ERROR : OUTBOX_LOG_WARN, COMPONENT,
                "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int looks_secret(const char *name)
{
    return strstr(name, "password") != NULL || strstr(name, "secret") != NULL ||
           strstr(name, "key") != NULL || strstr(name, "token") != NULL ||
           strstr(name, "jaas") != NULL;
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, outbox_error *err)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) == RD_KAFKA_CONF_OK)
        return OUTBOX_OK;
    if (looks_secret(name))
        return outbox__error(err, OUTBOX_ECONFIG,
                             "kafka destination: librdkafka refused setting kafka.%s; check "
                             "its name and value",
                             name);
    return outbox__error(err, OUTBOX_ECONFIG, "kafka destination: setting kafka.%s: %s", name,
                         errstr);
}

/* Creates the producer from the configuration template. */
static int make_producer(kafka_state *st, outbox_error *err)
{
    char errstr[512];
    rd_kafka_conf_t *c = rd_kafka_conf_dup(st->conf);
    if (c == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory creating a producer");
    rd_kafka_conf_set_opaque(c, st);
    st->rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof errstr);
    if (st->rk == NULL) {
        rd_kafka_conf_destroy(c);
        return outbox__error(err, OUTBOX_ECONFIG, "kafka destination: cannot create producer: %s",
                             errstr);
    }
    return OUTBOX_OK;
}

/* The handle of topic name on the current producer, made (and its
 * metadata asked for) on first use; NULL when there is no room for
 * another: produce by name then. */
static rd_kafka_topic_t *topic_handle(kafka_state *st, const char *name)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e;
    kafka_topic *t;
    int k, wait_ms;

    if (st->last_topic < st->ntopics && strcmp(st->topics[st->last_topic].name, name) == 0)
        return st->topics[st->last_topic].rkt;
    for (k = 0; k < st->ntopics; k++)
        if (strcmp(st->topics[k].name, name) == 0) {
            st->last_topic = k;
            return st->topics[k].rkt;
        }
    if (st->ntopics == KAFKA_TOPICS_MAX) return NULL;
    t = &st->topics[st->ntopics];
    t->name = outbox__strdup(name);
    t->rkt = t->name ? rd_kafka_topic_new(st->rk, name, NULL) : NULL;
    if (t->rkt == NULL) {
        outbox__free(t->name);
        t->name = NULL;
        return NULL;
    }
    st->last_topic = st->ntopics++;
    wait_ms = st->ack_timeout_ms < KAFKA_METADATA_WAIT_MS ? (int)st->ack_timeout_ms
                                                          : KAFKA_METADATA_WAIT_MS;
    e = rd_kafka_metadata(st->rk, 0, t->rkt, &md, wait_ms);
    if (md) rd_kafka_metadata_destroy(md);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "no metadata for topic %s yet (%s): librdkafka asks again by itself", name,
                    rd_kafka_err2str(e));
    return t->rkt;
}

static void destroy_producer(kafka_state *st)
{
    int k;
    if (st->rk == NULL) return;
    for (k = 0; k < st->ntopics; k++) {
        rd_kafka_topic_destroy(st->topics[k].rkt);
        outbox__free(st->topics[k].name);
        st->topics[k].rkt = NULL;
        st->topics[k].name = NULL;
    }
    st->ntopics = 0;
    st->last_topic = 0;
    rd_kafka_purge(st->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (k = 0; k < st->count; k++) /* reports of purged messages are ignored */
        st->batches[(st->first + k) % OUTBOX_PIPELINE_MAX_DEPTH].results = NULL;
    st->count = 0;
    st->unconfirmed = 0;
    st->unconfirmed_bytes = 0;
    rd_kafka_flush(st->rk, 1000);
    rd_kafka_destroy(st->rk);
    st->rk = NULL;
}

static void kafka_close(void *state);

static int kafka_open(void **state, const char *url, const outbox_transport_config *cfg,
                      outbox_error *err)
{
    kafka_state *st = NULL;
    outbox_url u;
    kafka_config c;
    const char *tmpl;
    int rc, parsed = 0;
    size_t i;

    *state = NULL;
    memset(&u, 0, sizeof u);
    memset(&c, 0, sizeof c);
    rc = outbox__url_parse(&u, url, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    parsed = 1;
    rc = outbox__props_parse(kafka_props, "kafka destination", &u, &c, err);
    if (rc != OUTBOX_OK) goto fail;

    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the kafka destination");
        goto fail;
    }
    outbox__buf_init(&st->topic);
    if (u.hosts == NULL || u.hosts[0] == '\0') {
        rc = outbox__error(err, OUTBOX_EBADURL,
                           "kafka destination has no broker; use kafka://host:9092?topic=NAME");
        goto fail;
    }
    snprintf(st->brokers, sizeof st->brokers, "%s", u.hosts);
    tmpl = c.topic;
    rc = outbox__route_new(&st->route, tmpl, OUTBOX_ROUTE_KAFKA_TOPIC, err);
    if (rc != OUTBOX_OK) goto fail;
    st->ack_timeout_ms = c.ack_timeout_ms;
    st->window_messages = c.window_messages;
    st->window_bytes = c.window_bytes;
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    st->conf = rd_kafka_conf_new();
    if (st->source == NULL || st->conf == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the kafka destination");
        goto fail;
    }
    rd_kafka_conf_set_dr_msg_cb(st->conf, dr_cb);
    rd_kafka_conf_set_log_cb(st->conf, log_cb);
    rd_kafka_conf_set_error_cb(st->conf, error_cb);
    if ((rc = conf_set(st->conf, "bootstrap.servers", u.hosts, err)) != OUTBOX_OK ||
        (rc = conf_set(st->conf, "enable.idempotence", "true", err)) != OUTBOX_OK ||
        (rc = conf_set(st->conf, "enable.gapless.guarantee", "true", err)) != OUTBOX_OK ||
        (rc = conf_set(st->conf, "acks", "all", err)) != OUTBOX_OK ||
        (rc = conf_set(st->conf, "message.timeout.ms", "0", err)) != OUTBOX_OK ||
        (rc = conf_set(st->conf, "linger.ms", "5", err)) != OUTBOX_OK)
        goto fail;
    for (i = 0; i < u.param_count; i++) {
        outbox_url_param *p = &u.params[i];
        if (strncmp(p->key, "kafka.", 6) != 0) continue;
        if ((strcmp(p->key + 6, "enable.idempotence") == 0 ||
             strcmp(p->key + 6, "enable.gapless.guarantee") == 0) &&
            strcmp(p->value, "true") != 0) {
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "kafka destination: kafka.%s must stay true (per-aggregate order "
                               "depends on it)",
                               p->key + 6);
            goto fail;
        }
        if (strcmp(p->key + 6, "message.timeout.ms") == 0 ||
            strcmp(p->key + 6, "delivery.timeout.ms") == 0) {
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "kafka destination: kafka.%s cannot be set (a message librdkafka "
                               "times out leaves a gap in its aggregate's order); use ack_timeout",
                               p->key + 6);
            goto fail;
        }
        rc = conf_set(st->conf, p->key + 6, p->value, err);
        if (rc != OUTBOX_OK) goto fail;
    }
    rc = make_producer(st, err);
    if (rc != OUTBOX_OK) goto fail;
    {
        char value[32];
        size_t value_len = sizeof value, limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
        long long max_bytes;
        if (rd_kafka_conf_get(st->conf, "message.max.bytes", value, &value_len) ==
                RD_KAFKA_CONF_OK &&
            (max_bytes = atoll(value)) > 0 &&
            (unsigned long long)limit > (unsigned long long)max_bytes)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "the producer for %s sends messages of at most %lld bytes "
                        "(message.max.bytes), less than the %zu bytes this process lets a "
                        "message have (OUTBOX_LIMIT_MESSAGE_BYTES): a larger message fails at "
                        "once as rejected; raise kafka.message.max.bytes (and the topic's "
                        "max.message.bytes) or lower the limit",
                        st->brokers, max_bytes, limit);
    }

    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "producer for %s: topic %s, ack timeout %lld ms, window %lld messages / %lld "
                "bytes",
                st->brokers, tmpl, (long long)st->ack_timeout_ms, (long long)st->window_messages,
                (long long)st->window_bytes);
    outbox__props_free(kafka_props, &c);
    outbox__url_free(&u);
    *state = st;
    return OUTBOX_OK;

fail:
    outbox__props_free(kafka_props, &c);
    if (parsed) outbox__url_free(&u);
    kafka_close(st);
    return rc;
}

static const char *const ce_reserved[] = {
    "specversion",     "id",         "source", "type",         "subject", "time",
    "datacontenttype", "dataschema", "data",   "aggregatetype"};

static const char *const w3c_trace[] = {"traceparent", "tracestate"};

static rd_kafka_headers_t *make_headers(const kafka_state *st, const outbox_msg *m)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(8 + m->header_count);
    char t[32], ext[64], key[80];
    size_t i, j;
    if (h == NULL) return NULL;
    outbox_time_format(m->occurred_at, t);
    rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
    rd_kafka_header_add(h, "ce_id", -1, m->id, -1);
    rd_kafka_header_add(h, "ce_source", -1, st->source, -1);
    rd_kafka_header_add(h, "ce_type", -1, m->type, -1);
    rd_kafka_header_add(h, "ce_time", -1, t, -1);
    rd_kafka_header_add(h, "ce_subject", -1, m->aggregate_id, -1);
    rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
    if (m->aggregate_type[0] != '\0')
        rd_kafka_header_add(h, "ce_aggregatetype", -1, m->aggregate_type, -1);
    for (i = 0; i < m->header_count; i++) {
        const void *v;
        size_t vlen;
        int taken;
        outbox__cloudevent_ext_name(m->header_names[i], ext, sizeof ext);
        if (ext[0] == '\0') continue;
        do {
            taken = 0;
            for (j = 0; j < sizeof ce_reserved / sizeof ce_reserved[0]; j++)
                if (strcmp(ce_reserved[j], ext) == 0) taken = 1;
            snprintf(key, sizeof key, "ce_%s", ext);
            if (!taken && rd_kafka_header_get_last(h, key, &v, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR)
                taken = 1;
            if (taken) {
                size_t len = strlen(ext);
                if (len + 2 > sizeof ext) break;
                memmove(ext + 1, ext, len + 1);
                ext[0] = 'x';
            }
        } while (taken);
        if (!taken) rd_kafka_header_add(h, key, -1, m->header_values[i], -1);
    }
    /* W3C trace context also under its own names, where tracing libraries
     * look for it (as the http destination sends it). */
    for (i = 0; i < sizeof w3c_trace / sizeof w3c_trace[0]; i++)
        if (outbox_msg_header(m, w3c_trace[i]))
            rd_kafka_header_add(h, w3c_trace[i], -1, outbox_msg_header(m, w3c_trace[i]), -1);
    return h;
}

/* Does b hold a message of aggregate agg, among its first upto, that was
 * not produced? */
static int agg_failed(const kafka_batch *b, size_t upto, const char *agg)
{
    size_t i;
    if (b->nfailed == 0) return 0;
    for (i = 0; i < upto; i++)
        if (b->failed[i] && strcmp(b->msgs[i]->aggregate_id, agg) == 0) return 1;
    return 0;
}

/* The k-th open batch, oldest first. */
static kafka_batch *batch_at(kafka_state *st, int k)
{
    return &st->batches[(st->first + k) % OUTBOX_PIPELINE_MAX_DEPTH];
}

/* Does an open batch before the k-th hold a message of aggregate agg that
 * was not produced? */
static int agg_failed_before(kafka_state *st, int k, const char *agg)
{
    int j;
    for (j = 0; j < k; j++) {
        const kafka_batch *c = batch_at(st, j);
        if (agg_failed(c, c->n, agg)) return 1;
    }
    return 0;
}

/* The window (publish_room in internal.h): another batch of up to next
 * messages while the unconfirmed messages, with it, stay within
 * window_messages and the unconfirmed bytes below window_bytes (so they
 * exceed it by one batch at most).  One batch is always allowed. */
static int kafka_publish_room(void *state, int open, size_t next)
{
    kafka_state *st = state;
    if (open != st->count || st->count >= OUTBOX_PIPELINE_MAX_DEPTH) return 0;
    if (st->count == 0) return 1;
    if (st->rebuild != NULL) return 0; /* the next batch waits for a new producer */
    return (int64_t)(st->unconfirmed + next) <= st->window_messages &&
           (int64_t)st->unconfirmed_bytes < st->window_bytes;
}

/* Produces a batch without waiting for its reports (publish_begin in
 * internal.h).  A message whose aggregate had a message that could not be
 * produced, in this batch or an open one before, is not produced. */
static int kafka_publish_begin(void *state, outbox_msg *const *msgs, size_t n,
                               outbox_publish_result *results)
{
    kafka_state *st = state;
    kafka_batch *b;
    size_t i;
    outbox_error e;

    if (st->count >= OUTBOX_PIPELINE_MAX_DEPTH || n > 0xffffffffu - 1) return OUTBOX_EINVAL;
    if (st->rebuild != NULL || st->rk == NULL) {
        /* After a fatal error or a deadline: a new producer, once nothing
         * is open (the open batches' unconfirmed messages have failed
         * already). */
        if (st->count > 0) return OUTBOX_EPUBLISH;
        destroy_producer(st);
        e.code = 0;
        e.message[0] = '\0';
        if (make_producer(st, &e) != OUTBOX_OK) {
            outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "cannot rebuild the producer: %s", e.message);
            if (n > 0)
                set_result(&results[0], OUTBOX_EPUBLISH, "cannot rebuild the Kafka producer: %s",
                           e.message);
            return OUTBOX_EPUBLISH;
        }
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "producer rebuilt after %s", st->rebuild);
        st->rebuild = NULL;
    }
    b = batch_at(st, st->count);
    if (n > b->cap) {
        unsigned char *d = outbox__realloc(b->done, n);
        if (d == NULL) return OUTBOX_ENOMEM;
        b->done = d;
        d = outbox__realloc(b->failed, n);
        if (d == NULL) return OUTBOX_ENOMEM;
        b->failed = d;
        b->cap = n;
    }
    memset(b->done, 0, n);
    memset(b->failed, 0, n);
    b->gen = ++st->gen;
    b->msgs = msgs;
    b->results = results;
    b->n = n;
    b->nfailed = 0;
    b->outstanding = 0;
    st->count++;
    /* Every result is set by its report, its failed produce call, or
     * publish_end (a reset, or no report by then): no message is written
     * here, as it would be for each message of every batch. */
    for (i = 0; i < n; i++) {
        results[i].code = OUTBOX_EPUBLISH;
        results[i].retry_after_ms = 0;
        results[i].error[0] = '\0';
    }

    b->deadline = outbox__monotonic_us() + st->ack_timeout_ms * 1000;
    for (i = 0; i < n; i++) {
        const outbox_msg *m = msgs[i];
        rd_kafka_headers_t *h;
        rd_kafka_topic_t *rkt;
        rd_kafka_resp_err_t perr;
        outbox_error rerr;
        size_t key_len, value_len;

        if (agg_failed(b, i, m->aggregate_id) ||
            agg_failed_before(st, st->count - 1, m->aggregate_id)) {
            set_result(&results[i], OUTBOX_EPUBLISH,
                       "not sent: an earlier message of its aggregate could not be produced");
            goto not_sent;
        }
        rerr.code = 0;
        rerr.message[0] = '\0';
        if (outbox__route_render(st->route, m, &st->topic, &rerr) != OUTBOX_OK) {
            set_result(&results[i], OUTBOX_EREJECTED, "%s", rerr.message);
            goto not_sent;
        }
        h = make_headers(st, m);
        if (h == NULL) {
            set_result(&results[i], OUTBOX_ENOMEM, "out of memory for Kafka headers");
            goto not_sent;
        }
        key_len = strlen(m->aggregate_id);
        value_len = strlen(m->payload);
        rkt = topic_handle(st, st->topic.data);
        for (;;) {
            void *tag = (void *)(((uintptr_t)b->gen << 32) | (uintptr_t)(i + 1));
            if (rkt != NULL)
                perr = rd_kafka_producev(
                    st->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_KEY(m->aggregate_id, key_len),
                    RD_KAFKA_V_VALUE(m->payload, value_len), RD_KAFKA_V_HEADERS(h),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(tag),
                    RD_KAFKA_V_END);
            else
                perr = rd_kafka_producev(st->rk, RD_KAFKA_V_TOPIC(st->topic.data),
                                         RD_KAFKA_V_KEY(m->aggregate_id, key_len),
                                         RD_KAFKA_V_VALUE(m->payload, value_len),
                                         RD_KAFKA_V_HEADERS(h),
                                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                         RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
            if (perr != RD_KAFKA_RESP_ERR__QUEUE_FULL || outbox__monotonic_us() >= b->deadline)
                break;
            rd_kafka_poll(st->rk, 10);
        }
        if (perr != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_destroy(h);
            if (permanent_error(perr))
                set_result(&results[i], OUTBOX_EREJECTED, "Kafka refused the message for %s: %s",
                           st->topic.data, rd_kafka_err2str(perr));
            else
                set_result(&results[i], OUTBOX_EPUBLISH, "producing to %s failed: %s",
                           st->topic.data, rd_kafka_err2str(perr));
            goto not_sent;
        }
        b->outstanding++;
        st->unconfirmed++;
        st->unconfirmed_bytes += value_len + key_len;
        continue;
    not_sent:
        b->done[i] = 1;
        b->failed[i] = 1;
        b->nfailed++;
    }
    /* The reports that came in meanwhile, once per batch rather than after
     * every message (a full queue is polled above). */
    rd_kafka_poll(st->rk, 0);
    return OUTBOX_OK;
}

/* Gives up on the producer: what is unconfirmed in every open batch fails
 * with error (retriable), nothing more of it is sent (its queued and
 * in-flight messages are purged; their reports are ignored), and a new
 * producer is made before the next batch.  why names the cause for the log. */
static void reset_producer(kafka_state *st, const char *why, const char *error)
{
    size_t i;
    int k;

    for (k = 0; k < st->count; k++) {
        kafka_batch *c = batch_at(st, k);
        for (i = 0; i < c->n; i++)
            if (!c->done[i]) {
                set_result(&c->results[i], OUTBOX_EPUBLISH, "%s", error);
                c->done[i] = 1;
            }
        c->outstanding = 0;
    }
    st->unconfirmed = 0;
    st->unconfirmed_bytes = 0;
    rd_kafka_purge(st->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    st->rebuild = why;
}

/* When the producer has raised a fatal error: resets it (reset_producer).
 * 1 when it had. */
static int check_fatal(kafka_state *st)
{
    char fatal[512], error[sizeof fatal + 32];

    if (st->rebuild != NULL) return 1;
    if (rd_kafka_fatal_error(st->rk, fatal, sizeof fatal) == RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
    /* The reports librdkafka queued with the error (the broker's own
     * verdict, e.g. a message too large for good) are served first; what
     * is still unconfirmed after them is retried. */
    rd_kafka_poll(st->rk, 50);
    while (rd_kafka_poll(st->rk, 0) > 0)
        ;
    outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                "fatal producer error: %s; unconfirmed messages will be retried on a new "
                "producer",
                fatal);
    snprintf(error, sizeof error, "fatal producer error: %s", fatal);
    reset_producer(st, "a fatal error", error);
    return 1;
}

/* Waits for the oldest open batch's delivery reports (publish_end in
 * internal.h), until ack_timeout after it began.  A fatal producer error,
 * or a report still missing at the deadline, resets the producer
 * (reset_producer): the next message of an aggregate is then never written
 * behind one that was not. */
static int kafka_publish_end(void *state, outbox_msg *const *msgs, size_t n,
                             outbox_publish_result *results)
{
    kafka_state *st = state;
    kafka_batch *b;
    size_t i;

    if (st->count == 0) return OUTBOX_EINVAL;
    b = batch_at(st, 0);
    if (b->msgs != msgs || b->n != n || b->results != results) return OUTBOX_EINVAL;

    if (OUTBOX_FAULT("kafka_fatal") != 0)
        rd_kafka_test_fatal_error(st->rk, RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
                                  "injected fault kafka_fatal");
    while (b->outstanding > 0 && !check_fatal(st)) {
        int64_t left_ms = (b->deadline - outbox__monotonic_us()) / 1000;
        if (left_ms <= 0) break;
        rd_kafka_poll(st->rk, (int)(left_ms < 100 ? left_ms : 100));
    }
    /* Also when nothing was outstanding: the batch's produce calls may
     * have failed on the fatal error itself. */
    check_fatal(st);
    if (b->outstanding > 0) {
        char error[128];
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "%zu of %zu messages without a delivery report within %lld ms; they and the "
                    "unconfirmed ones of the next batch will be retried on a new producer",
                    b->outstanding, n, (long long)st->ack_timeout_ms);
        snprintf(error, sizeof error, "no delivery report from Kafka within %lld ms",
                 (long long)st->ack_timeout_ms);
        reset_producer(st, "a batch's ack timeout", error);
    }
    for (i = 0; i < n; i++) /* none, unless a report went missing without a reset */
        if (!b->done[i])
            set_result(&results[i], OUTBOX_EPUBLISH, "no delivery report from Kafka within %lld ms",
                       (long long)st->ack_timeout_ms);
    b->results = NULL; /* its late reports are ignored */
    b->msgs = NULL;
    b->n = 0;
    b->outstanding = 0;
    st->first = (st->first + 1) % OUTBOX_PIPELINE_MAX_DEPTH;
    st->count--;
    return OUTBOX_OK;
}

/* One batch, begun and ended. */
static int kafka_publish(void *state, outbox_msg *const *msgs, size_t n,
                         outbox_publish_result *results)
{
    int rc;
    if (n == 0) return OUTBOX_OK;
    rc = kafka_publish_begin(state, msgs, n, results);
    if (rc != OUTBOX_OK) return rc;
    return kafka_publish_end(state, msgs, n, results);
}

static void kafka_close(void *state)
{
    kafka_state *st = state;
    int k;
    if (st == NULL) return;
    destroy_producer(st);
    if (st->conf) rd_kafka_conf_destroy(st->conf);
    outbox__route_free(st->route);
    outbox__buf_free(&st->topic);
    for (k = 0; k < OUTBOX_PIPELINE_MAX_DEPTH; k++) {
        outbox__free(st->batches[k].done);
        outbox__free(st->batches[k].failed);
    }
    outbox__free(st->source);
    outbox__free(st);
}

#define KAFKA_ENTRY(f) f

#else

#define KAFKA_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_RDKAFKA */

/* The Kafka destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_kafka = {
    .version = 5,
    .scheme = "kafka",
    .open = KAFKA_ENTRY(kafka_open),
    .publish = KAFKA_ENTRY(kafka_publish),
    .close = KAFKA_ENTRY(kafka_close),
    .reopen = NULL,
    .publish_begin = KAFKA_ENTRY(kafka_publish_begin),
    .publish_end = KAFKA_ENTRY(kafka_publish_end),
    .interrupt = NULL,
    .usage = "kafka://HOST:9092?topic=T",
    .doc = "Kafka, through an idempotent producer (acks=all): the brokers' ack confirms a "
           "message.  Several brokers: kafka://HOST1:9092,HOST2:9092.",
    .props = kafka_props,
    .publish_room = KAFKA_ENTRY(kafka_publish_room),
};
