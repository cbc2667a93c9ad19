/*
 * test_kafka.c - the kafka:// destination against librdkafka's mock
 * cluster (rdkafka_mock.h: the real Kafka protocol over TCP, 3 brokers, in
 * this process).  No Kafka broker is packaged for Debian; see docs/KAFKA.md
 * for pointing the relay at a real cluster.
 *
 *   contract        key, value, topic and CloudEvents Kafka-binding headers
 *                   consumed back and compared
 *   config          unknown kafka.* setting, bad topic template, unknown
 *                   option, kafka.message.timeout.ms: ECONFIG at start-up,
 *                   secrets not echoed
 *   produce_errors  Produce requests failing with injected errors (retriable
 *                   ones, and a disconnect) during a drain
 *   brokers_down    brokers set down/up and partition leaders moved during
 *                   a drain
 *   rejected        a Produce refused for good (message too large): the
 *                   message fails, later ones of its aggregate wait
 *   oversized       a message over kafka.message.max.bytes fails at once
 *                   with the reason; start-up warns about the limit
 *   fatal_rebuild   a fatal producer error (fault point kafka_fatal, test
 *                   builds only) mid-drain: producer rebuilt, lost 0,
 *                   order violations 0
 *   timeout_gap     a message unconfirmed at its batch's deadline (leader
 *                   down) while the next of its aggregate is in the next
 *                   batch: once the broker is back, the topic has the
 *                   second only after the first
 *   deep_window     a drain of 50,000 messages over 1,000 keys through a
 *                   publish window of many batches, with Produce errors
 *                   librdkafka does not retry (POLICY_VIOLATION: a fatal
 *                   gapless-guarantee error, producer rebuilt), retriable
 *                   ones, brokers down and slow Produce responses (request
 *                   and ack timeouts); the window held more than two
 *                   batches
 *
 * The drains check: lost 0, per-key (aggregate) order violations 0,
 * nothing pending or failed; duplicates are printed (at least once).
 * OUTBOX_TEST_SCALE scales the message counts.
 */
#include "test.h"

#ifndef OUTBOX_HAVE_RDKAFKA
int main(void)
{
    SKIP("this build has no Kafka destination (librdkafka not found)");
}
#else

#include "internal.h"
#include "support/chaos.h"
#include "log_capture.h"
#include "relay_thread.h"

#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <librdkafka/rdkafka_mock.h>

#define PARTITIONS 6

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mc;
static char bootstraps[512];

static void mock_start(void)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!mock_rk) TEST_FAIL_("rd_kafka_new: %s", errstr);
    mc = rd_kafka_mock_cluster_new(mock_rk, 3);
    if (!mc) TEST_FAIL_("rd_kafka_mock_cluster_new failed");
    snprintf(bootstraps, sizeof bootstraps, "%s", rd_kafka_mock_cluster_bootstraps(mc));
}

static void topic_create(const char *topic)
{
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topic, PARTITIONS, 3);
    if (e) TEST_FAIL_("mock topic %s: %s", topic, rd_kafka_err2str(e));
}

/* ------------------------------------------------------------------------
 * Consuming a topic back
 * ---------------------------------------------------------------------- */

typedef void (*msg_fn)(void *user, const rd_kafka_message_t *m);

static const char *header(const rd_kafka_message_t *m, const char *name, char *buf, size_t len)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t vlen;
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR) return NULL;
    if (rd_kafka_header_get_last(h, name, &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR) return NULL;
    snprintf(buf, len, "%.*s", (int)vlen, (const char *)v);
    return buf;
}

/* Reads every partition of topic from the start up to its high watermark;
 * partition by partition, so per-key order is stream order.  Returns the
 * number of messages. */
static int64_t consume_all(const char *topic, msg_fn fn, void *user)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int64_t total = 0;
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "group.id", "outbox-test", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr))
        TEST_FAIL_("consumer conf: %s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) TEST_FAIL_("consumer: %s", errstr);
    for (int p = 0; p < PARTITIONS; p++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
        for (int tries = 0; tries < 50; tries++) {
            e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 5000);
            if (!e) break;
            ch_sleep_ms(100);
        }
        if (e) TEST_FAIL_("watermarks %s/%d: %s", topic, p, rd_kafka_err2str(e));
        if (hi <= lo) continue;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
        rd_kafka_assign(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        int64_t next = lo, deadline = ch_now_ms() + 60000;
        while (next < hi) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
            if (ch_now_ms() > deadline)
                TEST_FAIL_("reading %s/%d: stuck at offset %lld of %lld", topic, p, (long long)next,
                           (long long)hi);
            if (!m) continue;
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    fprintf(stderr, "consume: %s\n", rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                continue;
            }
            if (m->partition == p) {
                fn(user, m);
                total++;
                next = m->offset + 1;
            }
            rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(rk, NULL);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return total;
}

/* Writes {"id": ce_id, "subject": key, "data": value} lines for ch_check_file. */
static void line_writer(void *user, const rd_kafka_message_t *m)
{
    FILE *f = user;
    char id[64];
    json_error_t je;
    json_t *o = json_object();
    json_t *data = json_loadb(m->payload, m->len, 0, &je);
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)m->key_len, m->key ? (const char *)m->key : "");
    json_object_set_new(o, "id", json_string(header(m, "ce_id", id, sizeof id) ? id : ""));
    json_object_set_new(o, "subject", json_string(key));
    json_object_set_new(o, "data", data ? data : json_null());
    char *text = json_dumps(o, JSON_COMPACT);
    fprintf(f, "%s\n", text);
    free(text);
    json_decref(o);
}

/* ------------------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------------- */

typedef struct seen {
    int count;
    char topic[4][64], key[4][64], value[4][128];
    char h[4][11][2][128];
} seen;

static void collect(void *user, const rd_kafka_message_t *m)
{
    seen *s = user;
    static const char *const names[11] = {
        "ce_specversion", "ce_id",       "ce_source",    "ce_type",
        "ce_time",        "ce_subject",  "content-type", "ce_aggregatetype",
        "ce_traceparent", "ce_tenantid", "traceparent"};
    if (s->count >= 4) TEST_FAIL_("more messages than expected");
    int k = s->count++;
    snprintf(s->topic[k], 64, "%s", rd_kafka_topic_name(m->rkt));
    snprintf(s->key[k], 64, "%.*s", (int)m->key_len, (const char *)m->key);
    snprintf(s->value[k], 128, "%.*s", (int)m->len, (const char *)m->payload);
    for (int i = 0; i < 11; i++) {
        snprintf(s->h[k][i][0], 128, "%s", names[i]);
        if (!header(m, names[i], s->h[k][i][1], 128)) snprintf(s->h[k][i][1], 128, "(absent)");
    }
}

static const char *hv(const seen *s, int k, const char *name)
{
    for (int i = 0; i < 11; i++)
        if (strcmp(s->h[k][i][0], name) == 0) return s->h[k][i][1];
    return NULL;
}

static void enqueue(const char *db_path, const char *type, const char *agg_type, const char *agg_id,
                    const char *payload, const char *headers, char id[37])
{
    sqlite3 *db = ch_db_open(db_path);
    outbox_msg *m = NULL;
    outbox_error err;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_msg_new(&m, type, agg_type, agg_id, payload, &err), &err);
    if (headers) ASSERT_OK(outbox_msg_set_headers_json(m, headers, &err), &err);
    ch_db_exec(db, "BEGIN");
    ASSERT_OK(outbox_enqueue_sqlite(db, m, &err), &err);
    ch_db_exec(db, "COMMIT");
    snprintf(id, 37, "%s", outbox_msg_id(m));
    outbox_msg_free(m);
    sqlite3_close(db);
}

TEST(contract)
{
    char db[CH_PATH], to[700], id1[37], id2[37];
    seen s;
    ch_new_store(db, "contract.db");
    topic_create("outbox.Order");
    enqueue(db, "OrderPlaced", "Order", "o-1", "{\"total\":42}",
            "{\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\","
            "\"Tenant-Id\":\"t7\"}",
            id1);
    enqueue(db, "OrderShipped", "Order", "o-1", "[1,2]", NULL, id2);
    snprintf(to, sizeof to, "kafka://%s?topic=outbox.{aggregate_type}&kafka.compression.type=lz4",
             bootstraps);
    ch_drain_once(db, to);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);

    memset(&s, 0, sizeof s);
    ASSERT_EQ(consume_all("outbox.Order", collect, &s), 2);
    ASSERT_STREQ(s.topic[0], "outbox.Order");
    ASSERT_STREQ(s.key[0], "o-1");
    ASSERT_STREQ(s.value[0], "{\"total\":42}");
    ASSERT_STREQ(hv(&s, 0, "ce_specversion"), "1.0");
    ASSERT_STREQ(hv(&s, 0, "ce_id"), id1);
    ASSERT_STREQ(hv(&s, 0, "ce_source"), "/outbox");
    ASSERT_STREQ(hv(&s, 0, "ce_type"), "OrderPlaced");
    ASSERT_STREQ(hv(&s, 0, "ce_subject"), "o-1");
    ASSERT_STREQ(hv(&s, 0, "content-type"), "application/json");
    ASSERT_STREQ(hv(&s, 0, "ce_aggregatetype"), "Order");
    ASSERT_STREQ(hv(&s, 0, "ce_traceparent"),
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ASSERT_STREQ(hv(&s, 0, "traceparent"), /* W3C name too, for tracing libraries */
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ASSERT_STREQ(hv(&s, 0, "ce_tenantid"), "t7");
    ASSERT_EQ(strlen(hv(&s, 0, "ce_time")), 27);
    /* Same key, same partition: enqueue order kept. */
    ASSERT_STREQ(s.key[1], "o-1");
    ASSERT_STREQ(hv(&s, 1, "ce_id"), id2);
    ASSERT_STREQ(s.value[1], "[1,2]");
    ASSERT_STREQ(hv(&s, 1, "ce_tenantid"), "(absent)");
    ASSERT_STREQ(hv(&s, 1, "traceparent"), "(absent)");
}

static void expect_error(const char *db, const char *to, const char *needle, const char *hidden)
{
    outbox_relay *r = NULL;
    outbox_error err;
    int rc = ch_relay_new(&r, db, to, 1, &err);
    if (rc != OUTBOX_ECONFIG) {
        outbox_relay_free(r);
        TEST_FAIL_("%s: expected ECONFIG, got %d (%s)", to, rc, err.message);
    }
    ASSERT_CONTAINS(err.message, needle);
    if (hidden) ASSERT(strstr(err.message, hidden) == NULL);
    fprintf(stderr, "   -> %s\n", err.message);
}

TEST(config)
{
    char db[CH_PATH], to[900];
    ch_new_store(db, "config.db");
    snprintf(to, sizeof to, "kafka://%s?topic=t&kafka.no.such.setting=1", bootstraps);
    expect_error(db, to, "no.such.setting", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t&kafka.compression.type=zzz", bootstraps);
    expect_error(db, to, "compression.type", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=bad/topic", bootstraps);
    expect_error(db, to, "topic", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t.{nope}", bootstraps);
    expect_error(db, to, "nope", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t&colour=blue", bootstraps);
    expect_error(db, to, "colour", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t&kafka.enable.idempotence=false", bootstraps);
    expect_error(db, to, "idempotence", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t&kafka.message.timeout.ms=5000", bootstraps);
    expect_error(db, to, "ack_timeout", NULL);
    snprintf(to, sizeof to, "kafka://%s?topic=t&kafka.delivery.timeout.ms=5000", bootstraps);
    expect_error(db, to, "ack_timeout", NULL);
    snprintf(to, sizeof to,
             "kafka://%s?topic=t&kafka.sasl.password=hunter2xyz&kafka.security.protocol=nope",
             bootstraps);
    expect_error(db, to, "security.protocol", "hunter2xyz");
}

typedef void (*chaos_fn)(uint64_t *rng, int step);

/* Drains `total` messages over `aggs` aggregates into topic while chaos()
 * runs every 200-400 ms for `steps` steps; then checks the topic. */
/* Counts the relay's pipelined batches (debug lines "batch of N (pipelined): ...");
 * passes warnings and errors on to stderr as the default log does. */
static atomic_long pipelined_batches;
static atomic_long producers_rebuilt; /* "producer rebuilt after ..." (any cause) */
static atomic_long fatal_rebuilds;    /* "producer rebuilt after a fatal error" */
static atomic_int window_max;         /* "publish window: N batches open" */
static atomic_long claimed_ahead;     /* "claimed ahead: N messages" */
static atomic_long recorded_behind;   /* "batch of ...; recorded behind" */
static atomic_long implicit_acks;     /* librdkafka's "IMPLICITACK" debug lines */

static void count_pipelined(void *user, int level, const char *component, const char *message)
{
    (void)user;
    if (strncmp(message, "batch of ", 9) == 0 && strstr(message, "(pipelined)") != NULL)
        atomic_fetch_add(&pipelined_batches, 1);
    if (strncmp(message, "batch of ", 9) == 0 && strstr(message, "; recorded behind") != NULL)
        atomic_fetch_add(&recorded_behind, 1);
    if (strncmp(message, "claimed ahead: ", 15) == 0) atomic_fetch_add(&claimed_ahead, 1);
    if (strncmp(message, "producer rebuilt after ", 23) == 0) {
        atomic_fetch_add(&producers_rebuilt, 1);
        if (strcmp(message + 23, "a fatal error") == 0) atomic_fetch_add(&fatal_rebuilds, 1);
    }
    if (strncmp(message, "publish window: ", 16) == 0) {
        int open = atoi(message + 16);
        if (open > atomic_load(&window_max)) atomic_store(&window_max, open);
    }
    /* librdkafka's idempotence log (kafka.debug=eos in the chaos drains):
     * messages reported delivered because a later request of their
     * partition succeeded.  On the mock cluster that success proves
     * nothing (see chaos_drain_shaped), so a drain that loses messages
     * says whether this happened. */
    int implicit_ack = strstr(message, "IMPLICITACK") != NULL;
    if (implicit_ack) atomic_fetch_add(&implicit_acks, 1);
    if (implicit_ack || level >= OUTBOX_LOG_WARN) fprintf(stderr, "[%s] %s\n", component, message);
}

/* How a chaos drain's messages are written and sent. */
typedef struct drain_shape {
    int aggregates;
    int pause_us;      /* between the producer's transactions */
    const char *extra; /* appended to the destination URL, "" for none */
} drain_shape;

static const drain_shape shape_default = {100, 500, ""};

static void chaos_drain_shaped(const char *name, const char *topic, int total, int steps,
                               chaos_fn chaos, const char *ack_timeout, const drain_shape *shape)
{
    char db[CH_PATH], to[700], dump[CH_PATH], file[64];
    uint64_t rng = ch_seed();
    ch_producer p;
    relay_thread t;
    ch_report rep;

    fprintf(stderr, "   seed %llu, %d messages\n", (unsigned long long)rng, total);
    snprintf(file, sizeof file, "%s.db", name);
    ch_new_store(db, file);
    topic_create(topic);
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = total;
    p.aggregates = shape->aggregates;
    p.max_txn = 50;
    p.pause_us = shape->pause_us;
    p.seed = rng;
    ch_producer_start(&p);

    /* One Produce request in flight per broker connection: the mock cluster
     * checks the idempotent producer's sequence numbers only for a
     * transactional producer (rd_kafka_mock_validate_records), so it appends
     * a request sent after one it failed, which a broker refuses
     * (OUT_OF_ORDER_SEQUENCE_NUMBER).  librdkafka, rightly for a broker,
     * takes that success as proof that the failed request was written and
     * reports its messages delivered ("implicitly acked by subsequent batch
     * success"): on the mock they are lost, or appended after the later ones
     * when retried.  The default (5) works against a broker.  kafka.debug=eos
     * logs such acknowledgements (counted in count_pipelined). */
    snprintf(to, sizeof to,
             "kafka://%s?topic=%s&ack_timeout=%s&kafka.retry.backoff.ms=20"
             "&kafka.max.in.flight.requests.per.connection=1&kafka.debug=eos%s",
             bootstraps, topic, ack_timeout, shape->extra);
    atomic_store(&pipelined_batches, 0);
    atomic_store(&window_max, 0);
    atomic_store(&claimed_ahead, 0);
    atomic_store(&recorded_behind, 0);
    atomic_store(&producers_rebuilt, 0);
    atomic_store(&fatal_rebuilds, 0);
    atomic_store(&implicit_acks, 0);
    outbox_log_set(count_pipelined, NULL, OUTBOX_LOG_DEBUG);
    memset(&t, 0, sizeof t);
    ASSERT_OK(ch_relay_new(&t.relay, db, to, 0, &t.err), &t.err);
    if (relay_thread_start(&t) != 0) TEST_FAIL_("pthread_create");
    for (int i = 0; i < steps; i++) {
        ch_sleep_ms(ch_rand_range(&rng, 200, 400));
        chaos(&rng, i);
    }
    ch_producer_join(&p);
    ch_wait_drained(db, 0, 120000, NULL);
    relay_thread_stop(&t);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_OK(t.rc, &t.err);
    /* The relay pipelined (the next batch produced while the reports of the
     * one before were outstanding): this drain tests that path. */
    fprintf(stderr,
            "   %ld pipelined batches, at most %d open, %ld claimed ahead, %ld recorded behind, "
            "%ld producers rebuilt (%ld after a fatal error), %ld implicit acks\n",
            atomic_load(&pipelined_batches), atomic_load(&window_max), atomic_load(&claimed_ahead),
            atomic_load(&recorded_behind), atomic_load(&producers_rebuilt),
            atomic_load(&fatal_rebuilds), atomic_load(&implicit_acks));
    const char *pipe_env = getenv("OUTBOX_RELAY_PIPELINE");
    if (!(pipe_env && strcmp(pipe_env, "0") == 0)) ASSERT_GE(atomic_load(&pipelined_batches), 1);
    outbox_relay_stats stats;
    outbox_relay_get_stats(t.relay, &stats);
    outbox_relay_free(t.relay);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);

    snprintf(file, sizeof file, "%s.jsonl", name);
    ch_path(dump, file);
    FILE *f = fopen(dump, "w");
    if (!f) TEST_FAIL_("cannot write %s", dump);
    consume_all(topic, line_writer, f);
    fclose(f);
    ch_check_file(dump, &p, &rep);
    char label[128];
    snprintf(label, sizeof label, "   %s (relay: %llu published, %llu retried)", name,
             (unsigned long long)stats.published, (unsigned long long)stats.retried);
    ch_report_print(label, &rep);
    ASSERT_EQ(rep.lost, 0);
    ASSERT_EQ(rep.foreign, 0);
    ASSERT_EQ(rep.violations, 0);
    ch_producer_free(&p);
}

static void chaos_drain(const char *name, const char *topic, int total, int steps, chaos_fn chaos,
                        const char *ack_timeout)
{
    chaos_drain_shaped(name, topic, total, steps, chaos, ack_timeout, &shape_default);
}

/* A Produce request refused for good: the message fails (not retried) and
 * the later messages of its aggregate stay pending behind it. */
TEST(rejected)
{
    char db[CH_PATH], to[700], id[37];
    ch_new_store(db, "rejected.db");
    topic_create("rejected");
    for (int i = 0; i < 3; i++)
        enqueue(db, "T", "A", "agg-r", "{}", NULL, id);
    rd_kafka_mock_push_request_errors(mc, 0, 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    snprintf(to, sizeof to, "kafka://%s?topic=rejected&kafka.linger.ms=50", bootstraps);
    ch_drain_once(db, to);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 1);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 2);
    ch_expect_failed_error(db, "Kafka refused");
}

/* A message over the producer's message.max.bytes fails at once with the
 * reason, its aggregate's next one waits, another aggregate flows; start-up
 * says that message.max.bytes is below this process's message limit. */
TEST(oversized)
{
    char db[CH_PATH], to[700], big[37], id[37];
    static char payload[4000];
    outbox_relay *r = NULL;
    outbox_error err;
    outbox_relay_stats stats;

    ch_new_store(db, "oversized.db");
    topic_create("sized");
    snprintf(payload, sizeof payload, "{\"pad\":\"%03000d\"}", 0);
    enqueue(db, "Big", "A", "big", payload, NULL, big);
    enqueue(db, "Next", "A", "big", "{}", NULL, id);
    enqueue(db, "Ok", "A", "ok", "{}", NULL, id);
    snprintf(to, sizeof to, "kafka://%s?topic=sized&kafka.message.max.bytes=2000", bootstraps);
    log_reset();
    log_capture_install(OUTBOX_LOG_WARN);
    ASSERT_OK(ch_relay_new(&r, db, to, 1, &err), &err);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_get_stats(r, &stats);
    outbox_relay_free(r);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_EQ(stats.failed, 1);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_EQ(stats.published, 1);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 1);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);
    ch_expect_failed_error(db, "Kafka refused the message");
    ASSERT_EQ(log_count("sends messages of at most 2000 bytes (message.max.bytes), less than "
                        "the 1048576 bytes this process lets a message have"),
              1);
}

#ifdef OUTBOX_FAULT_INJECTION
/* A fatal producer error (injected with the kafka_fatal fault point on the
 * second batch of this drain): the producer is rebuilt and nothing is lost
 * or reordered. */
TEST(fatal_rebuild)
{
    char db[CH_PATH], to[700], dump[CH_PATH];
    ch_producer p;
    ch_report rep;
    outbox_relay_stats stats;

    /* The fault falls on the drain's second batch (and only there: the
     * other cases run without it, in any selection of cases). */
    outbox__fault_set("kafka_fatal:error:2");
    ch_new_store(db, "fatal.db");
    topic_create("fatal");
    atomic_store(&producers_rebuilt, 0);
    atomic_store(&fatal_rebuilds, 0);
    outbox_log_set(count_pipelined, NULL, OUTBOX_LOG_DEBUG);
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.aggregates = 20;
    p.max_txn = 50;
    p.seed = ch_seed();
    ch_produce(&p, 2000);
    /* A window of two batches (of 512): the fault, on the drain's second
     * batch, falls while the third is out.  One relay drains it all
     * (retried messages wait out their backoff), so the messages left
     * unconfirmed are published again through the producer it rebuilds
     * (deep_window covers fatal errors in a deep window).  A --once relay
     * may end before their backoff does, and the next one starts with a
     * new producer of its own, rebuilding nothing. */
    snprintf(to, sizeof to, "kafka://%s?topic=fatal&window_messages=1024", bootstraps);
    relay_thread t;
    memset(&t, 0, sizeof t);
    ASSERT_OK(ch_relay_new(&t.relay, db, to, 0, &t.err), &t.err);
    if (relay_thread_start(&t) != 0) TEST_FAIL_("pthread_create");
    ch_wait_drained(db, 0, 60000, NULL);
    relay_thread_stop(&t);
    ASSERT_OK(t.rc, &t.err);
    outbox_relay_get_stats(t.relay, &stats);
    outbox_relay_free(t.relay);
    uint64_t errors = stats.publish_errors;
    outbox__fault_set(NULL);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    /* The fault fired and the producer was rebuilt (what it had not
     * confirmed, if anything, failed: as retries, or, when a whole batch
     * was unconfirmed, as the destination's outage). */
    ASSERT_EQ(atomic_load(&fatal_rebuilds), 1);
    ch_path(dump, "fatal.jsonl");
    FILE *f = fopen(dump, "w");
    if (!f) TEST_FAIL_("cannot write %s", dump);
    consume_all("fatal", line_writer, f);
    fclose(f);
    ch_check_file(dump, &p, &rep);
    char label[128];
    snprintf(label, sizeof label,
             "   fatal error + rebuild (relay: %llu published, %llu retried, %llu publish errors)",
             (unsigned long long)stats.published, (unsigned long long)stats.retried,
             (unsigned long long)errors);
    ch_report_print(label, &rep);
    ASSERT_EQ(rep.lost, 0);
    ASSERT_EQ(rep.foreign, 0);
    ASSERT_EQ(rep.violations, 0);
    ch_producer_free(&p);
}
#endif /* OUTBOX_FAULT_INJECTION */

/* Appends each message's payload and a space to a text (one key: one
 * partition, so this is the key's log order). */
typedef struct payload_log {
    char text[4096];
    size_t len;
} payload_log;

static void append_payload(void *user, const rd_kafka_message_t *m)
{
    payload_log *l = user;
    int n = snprintf(l->text + l->len, sizeof l->text - l->len, "%.*s ", (int)m->len,
                     (const char *)m->payload);
    if (n < 0 || (size_t)n >= sizeof l->text - l->len) TEST_FAIL_("topic longer than expected");
    l->len += (size_t)n;
}

/* A message without a delivery report within ack_timeout (its partition's
 * leader is down) is retried by the relay; the next message of its
 * aggregate, produced later in the pipelined batch, must not reach the
 * topic before it.  librdkafka's own message.timeout.ms would drop the first
 * from its queue and, once the broker is back, write the second: a gap in
 * the partition that the relay's retry then fills too late (INTRODUCTION.md,
 * "Message timeout considerations").  The destination API directly, so the
 * timing is the test's: A1 begun at 0, A2 at 1.9 s, A1's batch ends at its
 * 2 s deadline, the broker is back at 3.1 s (librdkafka has timed out A1 by
 * 3 s, not A2 before 3.9 s); then A1 and A2 again, as the relay sends them. */
TEST(timeout_gap)
{
    char to[700];
    outbox_transport t;
    outbox_transport_config cfg;
    outbox_error err;
    outbox_msg *w = NULL, *a[2] = {NULL, NULL};
    outbox_publish_result rw, r1, r2, r[2];
    const outbox_transport_ops *pl;
    payload_log l;

    topic_create("gap");
    for (int p = 0; p < PARTITIONS; p++)
        ASSERT_EQ(rd_kafka_mock_partition_set_leader(mc, "gap", p, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
    snprintf(to, sizeof to,
             "kafka://%s?topic=gap&ack_timeout=2s&kafka.reconnect.backoff.max.ms=100", bootstraps);
    memset(&cfg, 0, sizeof cfg);
    cfg.source = "/test";
    ASSERT_OK(outbox__transport_open(&t, to, &cfg, &err), &err);
    pl = t.ops;
    ASSERT(pl->publish_begin != NULL && pl->publish_end != NULL);
    ASSERT_OK(outbox_msg_new(&w, "T", "A", "agg-gap", "\"w\"", &err), &err);
    ASSERT_OK(outbox_msg_new(&a[0], "T", "A", "agg-gap", "\"a1\"", &err), &err);
    ASSERT_OK(outbox_msg_new(&a[1], "T", "A", "agg-gap", "\"a2\"", &err), &err);
    ASSERT_EQ(t.ops->publish(t.state, &w, 1, &rw), OUTBOX_OK);
    ASSERT_EQ(rw.code, OUTBOX_OK);

    int64_t t0 = ch_now_ms();
    rd_kafka_mock_broker_set_down(mc, 1);
    ASSERT_EQ(pl->publish_begin(t.state, &a[0], 1, &r1), OUTBOX_OK);
    ch_sleep_ms(1900);
    ASSERT_EQ(pl->publish_begin(t.state, &a[1], 1, &r2), OUTBOX_OK);
    ASSERT_EQ(pl->publish_end(t.state, &a[0], 1, &r1), OUTBOX_OK);
    ASSERT_NE(r1.code, OUTBOX_OK);
    fprintf(stderr, "   a1: %s\n", r1.error);
    int64_t up = t0 + 3100 - ch_now_ms();
    if (up > 0) ch_sleep_ms(up);
    rd_kafka_mock_broker_set_up(mc, 1);
    ASSERT_EQ(pl->publish_end(t.state, &a[1], 1, &r2), OUTBOX_OK);
    fprintf(stderr, "   a2: %s\n", r2.code == OUTBOX_OK ? "confirmed" : r2.error);

    for (int tries = 0; tries < 50; tries++) {
        if (t.ops->publish(t.state, a, 2, r) == OUTBOX_OK && r[0].code == OUTBOX_OK &&
            r[1].code == OUTBOX_OK)
            break;
        ch_sleep_ms(200);
    }
    ASSERT_EQ(r[0].code, OUTBOX_OK);
    ASSERT_EQ(r[1].code, OUTBOX_OK);
    outbox__transport_close(&t);

    memset(&l, 0, sizeof l);
    consume_all("gap", append_payload, &l);
    fprintf(stderr, "   log: %s\n", l.text);
    const char *first1 = strstr(l.text, "\"a1\""), *first2 = strstr(l.text, "\"a2\"");
    ASSERT(first1 != NULL && first2 != NULL);
    ASSERT(first1 < first2);
    outbox_msg_free(w);
    outbox_msg_free(a[0]);
    outbox_msg_free(a[1]);
}

static void inject_errors(uint64_t *rng, int step)
{
    (void)rng;
    switch (step % 4) {
    case 0:
        rd_kafka_mock_push_request_errors(
            mc, 0 /* Produce */, 3, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
        break;
    case 1:
        rd_kafka_mock_push_request_errors(mc, 0, 2, RD_KAFKA_RESP_ERR__TRANSPORT,
                                          RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE);
        break;
    case 2:
        rd_kafka_mock_push_request_errors(mc, 0, 2,
                                          RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                                          RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR);
        break;
    default:
        rd_kafka_mock_push_request_errors(mc, 0, 1, RD_KAFKA_RESP_ERR__TRANSPORT);
        break;
    }
}

TEST(produce_errors)
{
    chaos_drain("produce_errors", "errors", test_scaled(20000, 500), 12, inject_errors, "10s");
}

static void brokers_chaos(uint64_t *rng, int step)
{
    if (step % 3 == 0) {
        int32_t b = (int32_t)ch_rand_range(rng, 1, 3);
        rd_kafka_mock_broker_set_down(mc, b);
        ch_sleep_ms(ch_rand_range(rng, 100, 2000));
        rd_kafka_mock_broker_set_up(mc, b);
    } else {
        for (int p = 0; p < PARTITIONS; p++)
            if (ch_rand_range(rng, 0, 1))
                rd_kafka_mock_partition_set_leader(mc, "moves", p,
                                                   (int32_t)ch_rand_range(rng, 1, 3));
    }
}

/* Produce errors librdkafka does not retry (with enable.gapless.guarantee
 * a fatal error: the producer is rebuilt and everything unconfirmed is
 * sent again, in order), retriable ones, a broker down for a while, and
 * Produce responses slower than request.timeout.ms (librdkafka retries)
 * or than ack_timeout (the relay's deadline: purge and rebuild). */
static void deep_chaos(uint64_t *rng, int step)
{
    int32_t b = (int32_t)ch_rand_range(rng, 1, 3);
    switch (step % 5) {
    case 0:
        rd_kafka_mock_push_request_errors(mc, 0, 1, RD_KAFKA_RESP_ERR_POLICY_VIOLATION);
        break;
    case 1:
        rd_kafka_mock_push_request_errors(mc, 0, 3, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                          RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                          RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
        break;
    case 2:
        rd_kafka_mock_broker_set_down(mc, b);
        ch_sleep_ms(ch_rand_range(rng, 100, 1500));
        rd_kafka_mock_broker_set_up(mc, b);
        break;
    case 3:
        rd_kafka_mock_broker_push_request_error_rtts(mc, b, 0, 2, RD_KAFKA_RESP_ERR_NO_ERROR, 1500,
                                                     RD_KAFKA_RESP_ERR_NO_ERROR, 1500);
        break;
    default:
        rd_kafka_mock_broker_push_request_error_rtts(mc, b, 0, 1, RD_KAFKA_RESP_ERR_NO_ERROR, 3000);
        break;
    }
}

TEST(deep_window)
{
    /* 1,000 keys, written faster than the relay drains them (a short pause
     * between transactions leaves SQLite's write lock to the relay's lease
     * and completions), so it has a backlog to fill its window with;
     * request.timeout.ms below the slow
     * responses' 1.5 s, ack_timeout below the slowest (3 s). */
    static const drain_shape deep = {
        1000, 200, "&window_messages=40000&window_bytes=16m&kafka.request.timeout.ms=1000"};
    chaos_drain_shaped("deep_window", "deep", test_scaled(50000, 5000), 15, deep_chaos, "2s",
                       &deep);
    ASSERT_GE(atomic_load(&window_max), 3); /* more than two batches open at once */
    /* The producer was rebuilt with batches open: after a fatal error (an
     * injected error librdkafka does not retry) or after a batch's ack
     * timeout (a response slower than ack_timeout), whichever came first. */
    ASSERT_GE(atomic_load(&producers_rebuilt), 1);
    /* The store read and recorded beside the relay's thread (SQLite's
     * reader and writer threads) while errors were injected. */
    ASSERT_GE(atomic_load(&claimed_ahead), 1);
    ASSERT_GE(atomic_load(&recorded_behind), 1);
}

TEST(brokers_down)
{
    /* A short ack_timeout: outages outlast it, so delivery reports time out
     * and the relay retries (not only librdkafka internally). */
    chaos_drain("brokers_down", "moves", test_scaled(20000, 500), 12, brokers_chaos, "1s");
}

int main(void)
{
    mock_start();
    RUN(contract);
#ifdef OUTBOX_FAULT_INJECTION
    RUN(fatal_rebuild);
#else
    fprintf(stderr, "-- fatal_rebuild skipped: needs a build with OUTBOX_FAULT_INJECTION\n");
#endif
    RUN(rejected);
    RUN(oversized);
    RUN(timeout_gap);
    RUN(config);
    RUN(produce_errors);
    RUN(brokers_down);
    RUN(deep_window);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mock_rk);
    return 0;
}

#endif /* OUTBOX_HAVE_RDKAFKA */
