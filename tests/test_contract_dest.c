/*
 * test_contract_dest.c - the same cases against every destination that
 * runs here, through the public relay API (outbox_relay_new with the
 * destination's URL, a SQLite outbox in the test's directory):
 *
 * - confirm before sent: a relay killed between publishing a batch and
 *   recording it (fault point after_publish) has recorded nothing as sent;
 *   the next relay publishes again, and in the end nothing is lost, every
 *   aggregate's first publications are in order, and the duplicates are the
 *   republished batch.
 * - per-aggregate order under failure, and outcome mapping: a message the
 *   destination rejects is Failed with the destination's reason, and holds
 *   its aggregate's later messages (nothing of that aggregate is published
 *   after it) while the other aggregates are delivered; a message that
 *   fails with a retriable error is retried (pending, attempts counted, the
 *   error kept) and delivered by the next relay, in order.
 *
 * Fault points are read once per process, so each relay runs in a child:
 * this program started again with --relay-child (OUTBOX_FAULT in its
 * environment).  A destination is one line in `dests`: name, start, URL,
 * read-back (what it holds, as JSON lines for ch_check_file), stop, and how
 * it is made to reject or fail one message (a fault point of the driver, or
 * the server's own answers), NULL when it cannot be here.
 */
#include "support/chaos.h"
#include "test.h"

#ifdef OUTBOX_HAVE_NATS
#include "support/nats.h"
#endif
#include "support/webhook.h"
#ifdef OUTBOX_HAVE_RABBITMQ
#include "support/rabbitmq.h"
#endif
#ifdef OUTBOX_HAVE_HIREDIS
#include "support/redis.h"
#endif

#include <jansson.h>
#ifdef OUTBOX_HAVE_RDKAFKA
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#endif

enum { FAIL_NONE = 0, FAIL_REJECT = 1, FAIL_RETRY = 2 };

typedef struct dest dest;
struct dest {
    const char *name;
    /* Starts what the destination needs (server, file); NULL: nothing.
     * Returns why it cannot run here, or NULL. */
    const char *(*start)(dest *d);
    /* The destination URL for the relay. */
    void (*url)(dest *d, char *out, size_t len);
    /* Writes what the destination holds into path as JSON lines
     * {"id", "subject", "data"}; NULL: nothing to read back (discard:). */
    void (*read_back)(dest *d, const char *path);
    void (*stop)(dest *d);
    /* Arranges that the third message published fails as `mode` says;
     * returns the OUTBOX_FAULT value for the relay ("" when the
     * destination itself does it), or NULL when it cannot here. */
    const char *(*fail)(dest *d, int mode);

    /* State of the running destination. */
    char path[CH_PATH]; /* file: the file; stdout: the relay's stdout */
    sv_server http;
    int mode; /* http: the FAIL_* mode the server plays */
#ifdef OUTBOX_HAVE_NATS
    nh_server nats;
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
    rd_kafka_t *kafka_rk; /* kafka: the handle that owns the mock cluster */
    rd_kafka_mock_cluster_t *kafka_mc;
#endif
    int stream_serial; /* nats: a fresh stream per case; kafka: a topic;
                          redis: a stream */
    int dedups;        /* drops a republished message by its id (JetStream) */
#ifdef OUTBOX_HAVE_RABBITMQ
    rmh_server amqp; /* amqp: a fresh queue per case, read into path */
#endif
    /* Part of a rejected message's last_error (NULL: "400" for http,
     * "file_reject" otherwise). */
    const char *reject_text;
#ifdef OUTBOX_HAVE_HIREDIS
    rh_server redis; /* redis: a fresh stream per case */
#endif
};

static int case_serial;

/* ------------------------------------------------------------------------
 * file: and stdout:
 * ---------------------------------------------------------------------- */

static const char *file_start(dest *d)
{
    char name[64];
    snprintf(name, sizeof name, "%s-%d.jsonl", d->name, ++case_serial);
    ch_path(d->path, name);
    return NULL;
}

static void file_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "file:%s", d->path);
}

static void stdout_url(dest *d, char *out, size_t len)
{
    (void)d;
    snprintf(out, len, "stdout:");
}

static void discard_url(dest *d, char *out, size_t len)
{
    (void)d;
    snprintf(out, len, "discard:");
}

/* The file is CloudEvents JSON lines already. */
static void file_read_back(dest *d, const char *path)
{
    ch_concat(path, (const char *const[]){d->path, NULL});
}

static const char *file_fail(dest *d, int mode)
{
    (void)d;
    return mode == FAIL_REJECT ? "file_reject:error:3" : "file_message:error:3";
}

/* ------------------------------------------------------------------------
 * http: (the webhook receiver of tests/support)
 * ---------------------------------------------------------------------- */

static void http_script(void *user, const sv_request *rq, int n, sv_action *act)
{
    dest *d = user;
    (void)rq;
    if (n != 2 || d->mode == FAIL_NONE) return;
    act->status = d->mode == FAIL_REJECT ? 400 : 503;
    snprintf(act->body, sizeof act->body, "%s", d->mode == FAIL_REJECT ? "bad event" : "busy");
}

static const char *http_start(dest *d)
{
    d->mode = FAIL_NONE;
    sv_start(&d->http, 0, http_script, d);
    return NULL;
}

static void http_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "http://127.0.0.1:%u/events", d->http.port);
}

/* Requests answered 2xx, in arrival order: the CloudEvent from the body
 * (structured mode) or from the ce-* headers and the body (binary mode). */
static void http_read_back(dest *d, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) TEST_FAIL_("cannot write %s", path);
    pthread_mutex_lock(&d->http.mu);
    for (int i = 0; i < d->http.nreqs; i++) {
        const sv_request *rq = &d->http.reqs[i];
        json_error_t je;
        json_t *body = json_loadb(rq->body, rq->body_len, 0, &je), *o;
        char id[128], subject[128];
        if (rq->status < 200 || rq->status > 299) {
            json_decref(body);
            continue;
        }
        if (body && json_object_get(body, "specversion")) {
            o = body;
        } else {
            o = json_object();
            json_object_set_new(o, "id", json_string(sv_header(rq->head, "ce-id", id, sizeof id)));
            json_object_set_new(
                o, "subject",
                json_string(sv_header(rq->head, "ce-subject", subject, sizeof subject)));
            json_object_set_new(o, "data", body ? body : json_null());
        }
        char *text = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", text ? text : "");
        free(text);
        json_decref(o);
    }
    pthread_mutex_unlock(&d->http.mu);
    fclose(f);
}

static void http_stop(dest *d)
{
    sv_stop(&d->http);
}

static const char *http_fail(dest *d, int mode)
{
    d->mode = mode;
    return "";
}

/* ------------------------------------------------------------------------
 * nats:// (nats-server of tests/support)
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_NATS
static const char *nats_start(dest *d)
{
    char stream[32], subjects[64];
    if (access(NH_SERVER_BIN, X_OK) != 0) return NH_SERVER_BIN " not found";
    if (d->nats.pid <= 0) nh_server_start(&d->nats);
    d->stream_serial = ++case_serial;
    snprintf(stream, sizeof stream, "C%d", d->stream_serial);
    snprintf(subjects, sizeof subjects, "c%d.>", d->stream_serial);
    nh_stream_create(&d->nats, stream, subjects);
    return NULL;
}

static void nats_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "%s?stream=C%d&subject=c%d.{aggregate_type}.{type}", d->nats.url,
             d->stream_serial, d->stream_serial);
}

static void nats_read_back(dest *d, const char *path)
{
    char stream[32], filter[64];
    snprintf(stream, sizeof stream, "C%d", d->stream_serial);
    snprintf(filter, sizeof filter, "c%d.>", d->stream_serial);
    nh_stream_dump(&d->nats, stream, filter, path);
}

/* An acknowledgement lost on the way back is the retriable failure. */
static const char *nats_fail(dest *d, int mode)
{
    (void)d;
    return mode == FAIL_RETRY ? "nats_ack_lost:error:3" : mode == FAIL_NONE ? "" : NULL;
}
#endif

/* ------------------------------------------------------------------------
 * kafka:// (librdkafka's mock cluster, in this process: the relay child
 * reaches it over TCP; it lives until the end of main)
 *
 * No fail(): a Produce request failed by the mock (push_request_errors)
 * fails every message it carries, not the third one; and with one message
 * per request, an error librdkafka does not retry (POLICY_VIOLATION) leaves
 * the message retriable for the relay while librdkafka writes the next one
 * of its aggregate behind it: an order violation (test_kafka covers
 * rejection and broker errors in its own drains).
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_RDKAFKA
enum { KAFKA_PARTITIONS = 4 };

static const char *kafka_start(dest *d)
{
    char errstr[256], topic[32];
    rd_kafka_resp_err_t e;
    if (!d->kafka_mc) {
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
        d->kafka_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
        if (!d->kafka_rk) TEST_FAIL_("rd_kafka_new: %s", errstr);
        d->kafka_mc = rd_kafka_mock_cluster_new(d->kafka_rk, 3);
        if (!d->kafka_mc) TEST_FAIL_("rd_kafka_mock_cluster_new failed");
    }
    d->stream_serial = ++case_serial;
    snprintf(topic, sizeof topic, "k%d", d->stream_serial);
    e = rd_kafka_mock_topic_create(d->kafka_mc, topic, KAFKA_PARTITIONS, 3);
    if (e) TEST_FAIL_("mock topic %s: %s", topic, rd_kafka_err2str(e));
    return NULL;
}

static void kafka_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "kafka://%s?topic=k%d", rd_kafka_mock_cluster_bootstraps(d->kafka_mc),
             d->stream_serial);
}

/* One Kafka message as {"id": ce_id, "subject": key, "data": value}. */
static void kafka_line(FILE *f, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    const void *v = NULL;
    size_t vlen = 0;
    json_error_t je;
    json_t *o = json_object(), *data = json_loadb(m->payload, m->len, 0, &je);
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, "ce_id", &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR)
        vlen = 0;
    json_object_set_new(o, "id", json_stringn(v ? v : "", vlen));
    json_object_set_new(o, "subject", json_stringn(m->key ? m->key : "", m->key ? m->key_len : 0));
    json_object_set_new(o, "data", data ? data : json_null());
    char *text = json_dumps(o, JSON_COMPACT);
    fprintf(f, "%s\n", text ? text : "");
    free(text);
    json_decref(o);
}

/* The topic, partition by partition from the start to its high watermark
 * (one aggregate is one key, so one partition: its order is the log's). */
static void kafka_read_back(dest *d, const char *path)
{
    char errstr[256], topic[32];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    FILE *f = fopen(path, "w");
    if (!f) TEST_FAIL_("cannot write %s", path);
    snprintf(topic, sizeof topic, "k%d", d->stream_serial);
    if (rd_kafka_conf_set(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(d->kafka_mc),
                          errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "group.id", "contract", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr))
        TEST_FAIL_("consumer conf: %s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) TEST_FAIL_("consumer: %s", errstr);
    for (int p = 0; p < KAFKA_PARTITIONS; p++) {
        int64_t lo = 0, hi = 0, next, deadline = ch_now_ms() + 30000;
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 5000)) != 0) {
            if (ch_now_ms() > deadline)
                TEST_FAIL_("watermarks %s/%d: %s", topic, p, rd_kafka_err2str(e));
            ch_sleep_ms(100);
        }
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
        rd_kafka_assign(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        for (next = lo; next < hi;) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
            if (ch_now_ms() > deadline)
                TEST_FAIL_("reading %s/%d: stuck at offset %lld of %lld", topic, p, (long long)next,
                           (long long)hi);
            if (!m) continue;
            if (!m->err && m->partition == p) {
                kafka_line(f, m);
                next = m->offset + 1;
            }
            rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(rk, NULL);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    fclose(f);
}
#endif

/* ------------------------------------------------------------------------
 * amqp:// (rabbitmq-server of tests/support): one broker, a quorum queue
 * per case bound to exchange "contract" for its own routing keys.  Reading
 * consumes, so what was read is kept in d->path and read back whole.
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_RABBITMQ
static const char *amqp_start(dest *d)
{
    char queue[32], binding[32], name[64];
    const char *why = rmh_available();
    if (why) return why;
    if (d->amqp.pid <= 0) rmh_start(&d->amqp);
    d->stream_serial = ++case_serial;
    snprintf(queue, sizeof queue, "q%d", d->stream_serial);
    snprintf(binding, sizeof binding, "q%d.#", d->stream_serial);
    rmh_declare(&d->amqp, "contract", queue, binding);
    snprintf(name, sizeof name, "amqp-%d.jsonl", d->stream_serial);
    ch_path(d->path, name);
    return NULL;
}

static void amqp_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "%s?exchange=contract&routing_key=q%d.{aggregate_type}.{type}", d->amqp.url,
             d->stream_serial);
}

static void amqp_read_back(dest *d, const char *path)
{
    char queue[32];
    snprintf(queue, sizeof queue, "q%d", d->stream_serial);
    rmh_queue_drain(&d->amqp, queue, d->path);
    ch_concat(path, (const char *const[]){d->path, NULL});
}

/* Rejected: a routing key no queue is bound for (the broker returns it);
 * retriable: a confirm lost on the way back. */
static const char *amqp_fail(dest *d, int mode)
{
    (void)d;
    return mode == FAIL_REJECT  ? "amqp_unroutable:error:3"
           : mode == FAIL_RETRY ? "amqp_ack_lost:error:3"
                                : "";
}
#endif

/* ------------------------------------------------------------------------
 * redis:// (redis-server of tests/support, with AOF)
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_HIREDIS
static const char *redis_start(dest *d)
{
    const char *why = rh_available();
    if (why) return why;
    if (d->redis.pid <= 0) rh_server_start(&d->redis);
    d->stream_serial = ++case_serial;
    return NULL;
}

static void redis_url(dest *d, char *out, size_t len)
{
    snprintf(out, len, "%s?stream=r%d", d->redis.url, d->stream_serial);
}

static void redis_read_back(dest *d, const char *path)
{
    char stream[32];
    snprintf(stream, sizeof stream, "r%d", d->stream_serial);
    rh_stream_dump(&d->redis, stream, path);
}

/* The driver's fault points: a message refused, a confirmation lost. */
static const char *redis_fail(dest *d, int mode)
{
    (void)d;
    return mode == FAIL_REJECT  ? "redis_reject:error:3"
           : mode == FAIL_RETRY ? "redis_reply_lost:error:3"
                                : "";
}
#endif

/* ------------------------------------------------------------------------
 * The destinations
 * ---------------------------------------------------------------------- */

static dest dests[] = {
    {.name = "file",
     .start = file_start,
     .url = file_url,
     .read_back = file_read_back,
     .fail = file_fail},
    {.name = "stdout", .start = file_start, .url = stdout_url, .read_back = file_read_back},
    {.name = "discard", .url = discard_url},
    {.name = "http",
     .start = http_start,
     .url = http_url,
     .read_back = http_read_back,
     .stop = http_stop,
     .fail = http_fail},
#ifdef OUTBOX_HAVE_NATS
    {.name = "nats",
     .start = nats_start,
     .url = nats_url,
     .read_back = nats_read_back,
     .fail = nats_fail,
     .dedups = 1},
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
    {.name = "kafka", .start = kafka_start, .url = kafka_url, .read_back = kafka_read_back},
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
    {.name = "amqp",
     .start = amqp_start,
     .url = amqp_url,
     .read_back = amqp_read_back,
     .fail = amqp_fail,
     .reject_text = "unroutable"},
#endif
#ifdef OUTBOX_HAVE_HIREDIS
    {.name = "redis",
     .start = redis_start,
     .url = redis_url,
     .read_back = redis_read_back,
     .fail = redis_fail,
     .reject_text = "redis_reject",
     .dedups = 1},
#endif
};

/* ------------------------------------------------------------------------
 * The relay, in a child
 * ---------------------------------------------------------------------- */

/* --relay-child DIR DB URL: one --once relay through the public API. */
static int relay_child(const char *dir, const char *db, const char *url)
{
    outbox_relay *r = NULL;
    outbox_error err;
    int rc;
    test_dir_adopt(dir);
    if (getenv("CONTRACT_HOLD_RETRIES") && strcmp(getenv("CONTRACT_HOLD_RETRIES"), "1") == 0) {
        /* A retry due in an hour: the run cannot publish it again before it
         * ends, however slowly it goes (what it recorded is checked). */
        char store[700];
        outbox_relay_options o;
        outbox_relay_options_init(&o);
        o.once = 1;
        o.backoff_base_ms = o.backoff_max_ms = 3600 * 1000;
        o.max_attempts = 1000;
        o.poll_interval_ms = 200;
        snprintf(store, sizeof store, "sqlite:%s", db);
        memset(&err, 0, sizeof err);
        rc = outbox_relay_new(&r, store, url, &o, &err);
    } else {
        rc = ch_relay_new(&r, db, url, 1, &err);
    }
    if (rc == OUTBOX_OK) rc = outbox_relay_run(r, &err);
    outbox_relay_free(r);
    if (rc != OUTBOX_OK) fprintf(stderr, "relay: %d %s\n", rc, err.message);
    return rc == OUTBOX_OK ? 0 : 1;
}

/* Runs one relay from db to d to its end; returns its exit code (137 when
 * a crash fault point killed it). */
static int hold_retries; /* run_relay: the child's retries wait an hour */

static int run_relay(dest *d, const char *db, const char *fault)
{
    char url[700], fault_env[200], err_path[CH_PATH];
    const char *argv[] = {"/proc/self/exe", "--relay-child", test_dir(), db, url, NULL};
    const char *env[] = {fault_env, hold_retries ? "CONTRACT_HOLD_RETRIES=1" : NULL, NULL};
    int code;
    d->url(d, url, sizeof url);
    snprintf(fault_env, sizeof fault_env, "OUTBOX_FAULT=%s", fault ? fault : "");
    ch_path(err_path, "relay.err");
    code = ch_wait_or_die(
        ch_spawn(argv, env, strcmp(d->name, "stdout") == 0 ? d->path : NULL, err_path), 60000,
        "relay");
    if (code != 0 && code != 137) ch_dump("relay stderr", err_path);
    return code;
}

/* A fresh outbox with `total` messages over `aggregates` aggregates. */
static void produce(ch_producer *p, char *db, const dest *d, const char *name, int total,
                    int aggregates)
{
    char file[128];
    memset(p, 0, sizeof *p);
    snprintf(file, sizeof file, "%s-%s", d->name, name);
    ch_new_store(db, file);
    p->db_path = db;
    p->aggregates = aggregates;
    p->max_txn = 10;
    p->seed = ch_seed();
    ch_produce(p, total);
}

static void check(dest *d, const ch_producer *p, ch_report *r)
{
    char lines[CH_PATH];
    ch_path(lines, "read-back.jsonl");
    d->read_back(d, lines);
    ch_check_file(lines, p, r);
    ch_report_print(d->name, r);
    ASSERT_EQ(r->torn, 0);
    ASSERT_EQ(r->foreign, 0);
    ASSERT_EQ(r->violations, 0);
}

/* ------------------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------------- */

static void confirm_before_sent(dest *d)
{
    char db[CH_PATH];
    ch_producer p;
    ch_report r;
    int total = test_scaled(300, 60);

    produce(&p, db, d, "confirm.db", total, 8);
    /* Killed after publishing its first batch, before recording it. */
    ASSERT_EQ(run_relay(d, db, "after_publish:crash:1"), 137);
    ASSERT_EQ(ch_outbox_count(db, "pending"), total);
    ASSERT_EQ(ch_outbox_count(db, NULL), total);
    if (d->read_back) {
        check(d, &p, &r);
        ASSERT(r.published > 0); /* the batch went out */
    }
    ASSERT_EQ(run_relay(d, db, NULL), 0);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 0);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);
    if (d->read_back) {
        check(d, &p, &r);
        ASSERT_EQ(r.lost, 0);
        /* The first batch was published again, unless the destination
         * dropped it by id. */
        if (d->dedups)
            ASSERT_EQ(r.duplicates, 0);
        else
            ASSERT(r.duplicates > 0);
    }
    ch_producer_free(&p);
}

/* The aggregate of the one Failed message ("" when none). */
static void failed_aggregate(const char *db_path, char *out, size_t len)
{
    sqlite3 *db = ch_db_open(db_path);
    sqlite3_stmt *s = NULL;
    out[0] = '\0';
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT aggregate_id FROM outbox WHERE status = 'failed'", -1,
                                 &s, NULL),
              SQLITE_OK);
    if (sqlite3_step(s) == SQLITE_ROW)
        snprintf(out, len, "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    sqlite3_close(db);
}

static void rejected_holds_aggregate(dest *d)
{
    char db[CH_PATH], agg[64], sql[256];
    const char *fault = d->fail ? d->fail(d, FAIL_REJECT) : NULL;
    ch_producer p;
    ch_report r;
    sqlite3 *h;
    int total = test_scaled(200, 60);

    if (!fault) {
        fprintf(stderr, "   %s: cannot be made to reject a message here\n", d->name);
        return;
    }
    produce(&p, db, d, "reject.db", total, 4);
    ASSERT_EQ(run_relay(d, db, fault), 0);
    /* Failed with the destination's reason, once. */
    ASSERT_EQ(ch_outbox_count(db, "failed"), 1);
    ch_expect_failed_error(db, d->reject_text                 ? d->reject_text
                               : strcmp(d->name, "http") == 0 ? "400"
                                                              : "file_reject");
    failed_aggregate(db, agg, sizeof agg);
    /* Its aggregate's later messages are held, every other one is sent. */
    h = ch_db_open(db);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE status = 'pending' AND aggregate_id <> '%s'", agg);
    ASSERT_EQ(ch_db_count(h, sql), 0);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE status = 'pending' AND aggregate_id = '%s'"
             " AND seq < (SELECT seq FROM outbox WHERE status = 'failed')",
             agg);
    ASSERT_EQ(ch_db_count(h, sql), 0);
    sqlite3_close(h);
    /* Nothing of it was published after the rejected message. */
    check(d, &p, &r);
    ASSERT_EQ(r.duplicates, 0);
    ASSERT_EQ(r.lost, ch_outbox_count(db, "pending") + 1);
    if (d->fail) d->fail(d, FAIL_NONE);
    ch_producer_free(&p);
}

static void retriable_is_retried(dest *d)
{
    char db[CH_PATH];
    const char *fault = d->fail ? d->fail(d, FAIL_RETRY) : NULL;
    ch_producer p;
    ch_report r;
    sqlite3 *h;
    int total = test_scaled(200, 60);

    if (!fault) {
        fprintf(stderr, "   %s: cannot be made to fail a message here\n", d->name);
        return;
    }
    produce(&p, db, d, "retry.db", total, 4);
    hold_retries = 1;
    ASSERT_EQ(run_relay(d, db, fault), 0);
    hold_retries = 0;
    /* Retried, not failed: pending with an attempt and the error. */
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);
    h = ch_db_open(db);
    ASSERT_EQ(ch_db_count(h, "SELECT count(*) FROM outbox WHERE status = 'pending'"
                             " AND attempts = 1 AND last_error IS NOT NULL"),
              1);
    /* The hour passes: the retry is due now. */
    ASSERT_EQ(sqlite3_exec(h, "UPDATE outbox SET available_at = 0 WHERE status = 'pending'", NULL,
                           NULL, NULL),
              SQLITE_OK);
    sqlite3_close(h);
    if (d->fail) d->fail(d, FAIL_NONE);
    /* The next relay delivers it and what it held, in order. */
    ASSERT_EQ(run_relay(d, db, NULL), 0);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 0);
    check(d, &p, &r);
    ASSERT_EQ(r.lost, 0);
    ch_producer_free(&p);
}

typedef struct contract_case {
    const char *name;
    void (*run)(dest *d);
} contract_case;

static const contract_case cases[] = {
    {"confirm_before_sent", confirm_before_sent},
    {"rejected_holds_aggregate", rejected_holds_aggregate},
    {"retriable_is_retried", retriable_is_retried},
};

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--relay-child") == 0)
        return relay_child(argv[2], argv[3], argv[4]);
#ifndef OUTBOX_FAULT_INJECTION
    SKIP("this build has no fault points (configure with -DOUTBOX_FAULT_INJECTION=ON)");
#endif
    for (size_t i = 0; i < sizeof dests / sizeof dests[0]; i++) {
        dest *d = &dests[i];
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            const char *why = d->start ? d->start(d) : NULL;
            if (why) {
                fprintf(stderr, "== %s: left out: %s\n", d->name, why);
                break;
            }
            fprintf(stderr, "-- %s: %s\n", d->name, cases[k].name);
            cases[k].run(d);
            if (d->stop) d->stop(d);
        }
    }
#ifdef OUTBOX_HAVE_NATS
    for (size_t i = 0; i < sizeof dests / sizeof dests[0]; i++)
        if (dests[i].nats.pid > 0) nh_server_stop(&dests[i].nats);
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
    for (size_t i = 0; i < sizeof dests / sizeof dests[0]; i++)
        if (dests[i].amqp.pid > 0) rmh_stop(&dests[i].amqp);
#endif
#ifdef OUTBOX_HAVE_HIREDIS
    for (size_t i = 0; i < sizeof dests / sizeof dests[0]; i++)
        if (dests[i].redis.pid > 0) rh_server_stop(&dests[i].redis);
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
    for (size_t i = 0; i < sizeof dests / sizeof dests[0]; i++) {
        if (dests[i].kafka_mc) rd_kafka_mock_cluster_destroy(dests[i].kafka_mc);
        if (dests[i].kafka_rk) rd_kafka_destroy(dests[i].kafka_rk);
    }
#endif
    fprintf(stderr, "all destination contract cases passed\n");
    return 0;
}
