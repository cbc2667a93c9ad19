/*
 * test_http.c - the http(s) webhook destination and the webhook receiver,
 * against real servers on 127.0.0.1 free ports: the scripted server of
 * tests/support/webhook.h (chosen statuses, delays, resets, hangs) and the
 * library's own receiver (libmicrohttpd + inbox).
 *
 * Covers: Standard Webhooks signing (the specification's test vector) and
 * every verification failure; start-up configuration errors; the request
 * contract (method, body, CloudEvents and webhook headers, signature);
 * receiver end to end with a failing handler and a duplicate; receiver down
 * then back (the destination's outage: nothing charged, logged once each
 * way); 5xx then recovery; 410/400 -> Failed with a useful last error;
 * Retry-After (seconds and HTTP date); timeouts and connection resets; one
 * request in flight per aggregate; requests the receiver must refuse
 * without applying anything; a stop during hanging requests (returns at
 * once, nothing confirmed); and TLS for real: a CA and a 127.0.0.1
 * certificate made with the openssl command, the receiver serving HTTPS,
 * https:// with ca_file= (delivered), with the system CAs only and to a
 * certificate for another host name (never sent: an outage logged with the
 * certificate problem, no attempt charged), and with insecure=true
 * (delivered, WARN logged).
 */
#include "support/chaos.h"
#include "support/webhook.h"
#include "tls_certs.h"

#include "internal.h"
#include "log_capture.h"

#include <jansson.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SECRET_ENV "OUTBOX_TEST_HTTP_SECRET"

static void relay_opts(outbox_relay_options *o, const char *const *dest_opts)
{
    outbox_relay_options_init(o);
    o->backoff_base_ms = 20;
    o->backoff_max_ms = 200;
    o->max_attempts = 1000;
    o->poll_interval_ms = 50;
    o->destination_options = dest_opts;
}

static int body_n(const char *body, char *agg, size_t agg_len)
{
    json_error_t e;
    json_t *o = json_loads(body, 0, &e);
    int n = -1;
    if (o) {
        n = (int)json_integer_value(json_object_get(o, "n"));
        const char *a = json_string_value(json_object_get(o, "agg"));
        snprintf(agg, agg_len, "%s", a ? a : "");
        json_decref(o);
    }
    return n;
}

/* ------------------------------------------------------------------------
 * Signing and verification
 * ---------------------------------------------------------------------- */

TEST(sign_vector)
{
    /* The Standard Webhooks specification's example. */
    const char *body = "{\"test\": 2432232314}";
    const char *id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    char sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    outbox_error err;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_webhook_sign(SECRET, id, 1614265330, body, strlen(body), sig, &err), &err);
    ASSERT_STREQ(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* The prefix is optional. */
    ASSERT_OK(outbox_webhook_sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id, 1614265330, body,
                                  strlen(body), sig, &err),
              &err);
    ASSERT_STREQ(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    ASSERT_OK(outbox_webhook_verify(SECRET, id, "1614265330",
                                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", body,
                                    strlen(body), 0, 1614265330, &err),
              &err);
}

TEST(verify_failures)
{
    const char *body = "{\"a\":1}";
    const char *id = "0190b0c2-0000-7000-8000-000000000001";
    char sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE], two[200], ts[32];
    outbox_error err;
    int64_t now = 1700000000;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_webhook_sign(SECRET, id, now, body, strlen(body), sig, &err), &err);
    snprintf(ts, sizeof ts, "%lld", (long long)now);

    /* Several entries: any match passes. */
    snprintf(two, sizeof two, "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= %s v2,xyz", sig);
    ASSERT_OK(outbox_webhook_verify(SECRET, id, ts, two, body, strlen(body), 0, now, &err), &err);
    /* Within tolerance both ways; beyond it stale. */
    ASSERT_OK(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 0, now + 300, &err),
              &err);
    ASSERT_OK(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 0, now - 300, &err),
              &err);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 0, now + 301, &err),
              OUTBOX_ESTALE);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 0, now - 301, &err),
              OUTBOX_ESTALE);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 10, now + 11, &err),
              OUTBOX_ESTALE);
    /* A tolerance near INT64_MAX is no overflow (found by fuzz_webhook_verify). */
    ASSERT_OK(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), INT64_MAX, now, &err),
              &err);
    /* Altered body, id, timestamp or secret. */
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, sig, "{\"a\":2}", 7, 0, now, &err),
              OUTBOX_EBADSIGNATURE);
    ASSERT_CONTAINS(err.message, "webhook-signature");
    ASSERT_EQ(outbox_webhook_verify(SECRET, "other", ts, sig, body, strlen(body), 0, now, &err),
              OUTBOX_EBADSIGNATURE);
    snprintf(ts, sizeof ts, "%lld", (long long)now + 1);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, sig, body, strlen(body), 0, now, &err),
              OUTBOX_EBADSIGNATURE);
    snprintf(ts, sizeof ts, "%lld", (long long)now);
    ASSERT_EQ(outbox_webhook_verify("whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==", id, ts, sig,
                                    body, strlen(body), 0, now, &err),
              OUTBOX_EBADSIGNATURE);
    /* Truncated signature. */
    char cut[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    snprintf(cut, sizeof cut, "%.20s", sig);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, cut, body, strlen(body), 0, now, &err),
              OUTBOX_EBADSIGNATURE);
    /* Missing headers, malformed timestamp, malformed secret. */
    ASSERT_EQ(outbox_webhook_verify(SECRET, NULL, ts, sig, body, strlen(body), 0, now, &err),
              OUTBOX_ENOSIGNATURE);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, NULL, sig, body, strlen(body), 0, now, &err),
              OUTBOX_ENOSIGNATURE);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, ts, "", body, strlen(body), 0, now, &err),
              OUTBOX_ENOSIGNATURE);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, "17e8", sig, body, strlen(body), 0, now, &err),
              OUTBOX_EBADTIMESTAMP);
    ASSERT_EQ(outbox_webhook_verify(SECRET, id, "-5", sig, body, strlen(body), 0, now, &err),
              OUTBOX_EBADTIMESTAMP);
    ASSERT_EQ(
        outbox_webhook_verify("whsec_not base64!", id, ts, sig, body, strlen(body), 0, now, &err),
        OUTBOX_ECONFIG);
    ASSERT(strstr(err.message, "not base64") == NULL); /* the secret is never shown */
    ASSERT(outbox_strerror(OUTBOX_ESTALE) != outbox_strerror(OUTBOX_EBADSIGNATURE));
}

/* ------------------------------------------------------------------------
 * Start-up configuration
 * ---------------------------------------------------------------------- */

static int config_rc(const char *db, const char *url, const char *const *dest_opts,
                     outbox_error *err)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    char store[700];
    int rc;
    relay_opts(&o, dest_opts);
    snprintf(store, sizeof store, "sqlite:%s", db);
    memset(err, 0, sizeof *err);
    rc = outbox_relay_new(&r, store, url, &o, err);
    outbox_relay_free(r);
    return rc;
}

TEST(config_errors)
{
    char db[600];
    outbox_error err;
    snprintf(db, sizeof db, "%s", test_path("config.db"));
    wh_store_init(db);

    const char *unknown[] = {"max_inflight=4", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", unknown, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "max_inflight");
    ASSERT_CONTAINS(err.message, "max_in_flight=N");

    const char *noenv[] = {"secret_env=OUTBOX_TEST_NO_SUCH_VARIABLE", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", noenv, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "OUTBOX_TEST_NO_SUCH_VARIABLE");

    setenv("OUTBOX_TEST_BAD_SECRET", "whsec_%%%%hunter2", 1);
    const char *badsecret[] = {"secret_env=OUTBOX_TEST_BAD_SECRET", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", badsecret, &err), OUTBOX_ECONFIG);
    ASSERT(strstr(err.message, "hunter2") == NULL);

    const char *nofile[] = {"secret_file=/nonexistent/secret", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", nofile, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "secret_file=/nonexistent/secret");

    const char *both[] = {"secret_file=/x", "secret_env=Y", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", both, &err), OUTBOX_ECONFIG);

    const char *badtimeout[] = {"timeout=soon", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", badtimeout, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "timeout=soon");

    const char *badn[] = {"max_in_flight=0", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", badn, &err), OUTBOX_ECONFIG);

    /* endpoint.<TYPE>=URL: a type, a valid http(s) URL, once per type. */
    const char *ep_notype[] = {"endpoint.=http://127.0.0.1:9/x", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", ep_notype, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "endpoint.<TYPE>=URL");
    const char *ep_badurl[] = {"endpoint.OrderPlaced=ftp://user:pw-s3cret@host/x", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", ep_badurl, &err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err.message, "endpoint.OrderPlaced");
    ASSERT(strstr(err.message, "pw-s3cret") == NULL);
    const char *ep_twice[] = {"endpoint.A=http://127.0.0.1:9/a", "endpoint.A=http://127.0.0.1:9/b",
                              NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", ep_twice, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "endpoint.A is given twice");

    ASSERT_EQ(config_rc(db, "http://", NULL, &err), OUTBOX_EBADURL);
    ASSERT_EQ(config_rc(db, "http://user:pw-s3cret@[::1/x", NULL, &err), OUTBOX_EBADURL);
    ASSERT(strstr(err.message, "pw-s3cret") == NULL);

    /* insecure=true is logged loudly at start. */
    log_reset();
    const char *insecure[] = {"insecure=true", "ca_file=/etc/ssl/certs/ca-certificates.crt", NULL};
    ASSERT_EQ(config_rc(db, "https://127.0.0.1:9/x", insecure, &err), OUTBOX_OK);
    ASSERT_CONTAINS(log_text, "warn transport.http insecure=true");

    /* A secret file works, and the secret stays out of the logs. */
    FILE *f = fopen(test_path("secret"), "w");
    fprintf(f, "%s\n", SECRET);
    fclose(f);
    char opt[700];
    snprintf(opt, sizeof opt, "secret_file=%s", test_path("secret"));
    const char *file_opts[] = {opt, NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x?token=abc", file_opts, &err), OUTBOX_OK);
    ASSERT(strstr(log_text, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == NULL);
    ASSERT_EQ(log_count("no \"whsec_\" prefix"), 0);

    /* A secret without the whsec_ prefix works (base64 of the key, as the
     * reference libraries take it) but is warned about, without showing it
     * (the receiver's: receiver_bare_secret). */
    log_reset();
    setenv("OUTBOX_TEST_BARE_SECRET", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1);
    const char *bare[] = {"secret_env=OUTBOX_TEST_BARE_SECRET", NULL};
    ASSERT_EQ(config_rc(db, "http://127.0.0.1:9/x", bare, &err), OUTBOX_OK);
    ASSERT_EQ(log_count("warn transport.http the webhook secret in the value of environment "
                        "variable OUTBOX_TEST_BARE_SECRET has no \"whsec_\" prefix"),
              1);
    ASSERT(strstr(log_text, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == NULL);
}

/* ------------------------------------------------------------------------
 * The request contract
 * ---------------------------------------------------------------------- */

TEST(contract)
{
    char db[600], ids[3][37], v[512], v2[512], v3[512];
    sv_server s;
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    outbox_error err;
    char store[700], url[200];
    const char *dest_opts[] = {"secret_env=" SECRET_ENV, "max_in_flight=4", NULL};
    const char *payloads[3] = {"{\"total\":42,\"note\":\"a b%\"}", "[1,2,3]",
                               "{\"unicode\":\"caf\\u00e9 \xc3\xa9\"}"};

    memset(&err, 0, sizeof err);
    snprintf(db, sizeof db, "%s", test_path("contract.db"));
    wh_store_init(db);
    sqlite3 *h = ch_db_open(db);
    wh_enqueue(h, "OrderPlaced", "Order", "o-1", payloads[0],
               "{\"correlation_id\":\"c-1\",\"traceparent\":"
               "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}",
               ids[0]);
    wh_enqueue(h, "Order Shipped", "", "o 2", payloads[1], "{\"x-Note\":\"50% \\\"off\\\"\"}",
               ids[1]);
    wh_enqueue(h, "OrderPlaced", "Order", "o-1", payloads[2], NULL, ids[2]);
    sqlite3_close(h);

    sv_start(&s, 0, NULL, NULL);
    log_reset();
    relay_opts(&o, dest_opts);
    o.once = 1;
    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/hook?target=1", s.port);
    ASSERT_OK(outbox_relay_new(&relay, store, url, &o, &err), &err);
    ASSERT_OK(outbox_relay_run(relay, &err), &err);
    outbox_relay_free(relay);
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox"), 0);
    ASSERT_EQ(sv_count(&s), 3);

    for (int i = 0; i < 3; i++) {
        sv_request *rq = NULL;
        for (int k = 0; k < 3; k++)
            if (strcmp(sv_header(s.reqs[k].head, "webhook-id", v, sizeof v), ids[i]) == 0)
                rq = &s.reqs[k];
        ASSERT(rq != NULL);
        ASSERT(strncmp(rq->head, "POST /hook?target=1 HTTP/1.1\r\n", 30) == 0);
        ASSERT_STREQ(rq->body, payloads[i]);
        ASSERT_STREQ(sv_header(rq->head, "content-type", v, sizeof v), "application/json");
        ASSERT_STREQ(sv_header(rq->head, "ce-specversion", v, sizeof v), "1.0");
        ASSERT_STREQ(sv_header(rq->head, "ce-id", v, sizeof v), ids[i]);
        ASSERT_STREQ(sv_header(rq->head, "idempotency-key", v, sizeof v), ids[i]);
        ASSERT_STREQ(sv_header(rq->head, "ce-source", v, sizeof v), "/outbox");
        ASSERT(strlen(sv_header(rq->head, "ce-time", v, sizeof v)) == 27 && v[26] == 'Z');
        ASSERT_STREQ(sv_header(rq->head, "expect", v, sizeof v), "");
        /* Signature over id.timestamp.body verifies with the secret. */
        sv_header(rq->head, "webhook-timestamp", v2, sizeof v2);
        sv_header(rq->head, "webhook-signature", v3, sizeof v3);
        ASSERT_OK(outbox_webhook_verify(SECRET, ids[i], v2, v3, rq->body, rq->body_len, 0, 0, &err),
                  &err);
        if (i == 0) {
            ASSERT_STREQ(sv_header(rq->head, "ce-type", v, sizeof v), "OrderPlaced");
            ASSERT_STREQ(sv_header(rq->head, "ce-subject", v, sizeof v), "o-1");
            ASSERT_STREQ(sv_header(rq->head, "ce-aggregatetype", v, sizeof v), "Order");
            ASSERT_STREQ(sv_header(rq->head, "ce-correlationid", v, sizeof v), "c-1");
            ASSERT_STREQ(sv_header(rq->head, "ce-traceparent", v, sizeof v),
                         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            ASSERT_STREQ(sv_header(rq->head, "traceparent", v, sizeof v),
                         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        } else if (i == 1) {
            /* Percent-encoded as the CloudEvents HTTP binding asks. */
            ASSERT_STREQ(sv_header(rq->head, "ce-type", v, sizeof v), "Order%20Shipped");
            ASSERT_STREQ(sv_header(rq->head, "ce-subject", v, sizeof v), "o%202");
            ASSERT_STREQ(sv_header(rq->head, "ce-aggregatetype", v, sizeof v), "");
            ASSERT_STREQ(sv_header(rq->head, "ce-xnote", v, sizeof v), "50%25%20%22off%22");
        }
    }
    /* Order within aggregate o-1. */
    ASSERT(strcmp(sv_header(s.reqs[0].head, "ce-subject", v, sizeof v), "o-1") != 0 ||
           strcmp(sv_header(s.reqs[0].head, "webhook-id", v2, sizeof v2), ids[0]) == 0);
    ASSERT(strstr(log_text, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == NULL);
    sv_stop(&s);
}

/* ------------------------------------------------------------------------
 * The receiver, end to end
 * ---------------------------------------------------------------------- */

typedef struct consumer {
    int fail_left; /* the handler fails this many times for fail_agg/fail_n */
    char fail_agg[16];
    int fail_n;
    atomic_int calls;
} consumer;

static int apply_handler(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    consumer *c = user;
    char agg[64];
    int n = body_n(outbox_msg_payload(msg), agg, sizeof agg);
    sqlite3_stmt *st = NULL;
    int rc;
    atomic_fetch_add(&c->calls, 1);
    if (c->fail_left > 0 && strcmp(agg, c->fail_agg) == 0 && n == c->fail_n) {
        c->fail_left--;
        /* Written, then rolled back by the receiver. */
        sqlite3_exec(db, "INSERT INTO applied(id, agg, n) VALUES ('x', 'x', -1)", NULL, NULL, NULL);
        return outbox__error(err, OUTBOX_EIO, "handler failed on purpose");
    }
    if (sqlite3_prepare_v2(db, "INSERT INTO applied(id, agg, n, type) VALUES (?, ?, ?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        return outbox__error(err, OUTBOX_ESTORE, "prepare: %s", sqlite3_errmsg(db));
    sqlite3_bind_text(st, 1, outbox_msg_id(msg), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, outbox_msg_aggregate_id(msg), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, n);
    sqlite3_bind_text(st, 4, outbox_msg_type(msg), -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return outbox__error(err, OUTBOX_ESTORE, "insert failed");
    return OUTBOX_OK;
}

static void consumer_db(const char *path)
{
    sqlite3 *db = ch_db_open(path);
    ASSERT_EQ(sqlite3_exec(db,
                           "PRAGMA journal_mode=WAL;"
                           "CREATE TABLE applied(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT,"
                           " agg TEXT, n INTEGER, type TEXT)",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
}

static outbox_webhook_receiver *start_receiver(const char *cdb, unsigned port, consumer *c)
{
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *r = NULL;
    outbox_error err;
    memset(&err, 0, sizeof err);
    outbox_webhook_receiver_options_init(&ro);
    ro.port = port;
    ro.secret = SECRET;
    ro.db_path = cdb;
    ro.consumer = "orders-test";
    ro.handler = apply_handler;
    ro.handler_user = c;
    ro.max_body_bytes = 4096;
    ro.max_headers = 24;
    ASSERT_OK(outbox_webhook_receiver_new(&r, &ro, &err), &err);
    return r;
}

/* The receiver warns about a secret without the whsec_ prefix too. */
TEST(receiver_bare_secret)
{
    char cdb[600];
    consumer c;
    outbox_error err;
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *rcv = NULL;
    memset(&c, 0, sizeof c);
    memset(&err, 0, sizeof err);
    snprintf(cdb, sizeof cdb, "%s", test_path("bare-consumer.db"));
    consumer_db(cdb);
    log_reset();
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    ro.db_path = cdb;
    ro.consumer = "bare";
    ro.handler = apply_handler;
    ro.handler_user = &c;
    ASSERT_OK(outbox_webhook_receiver_new(&rcv, &ro, &err), &err);
    outbox_webhook_receiver_free(rcv);
    ASSERT_EQ(log_count("the receiver's secret has no \"whsec_\" prefix"), 1);
    ASSERT(strstr(log_text, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == NULL);
}

/* Every aggregate's n runs 0, 1, 2, ... in application order: nothing lost,
 * nothing applied twice, no order violation. */
static void check_applied(const char *cdb, int aggs, int per_agg)
{
    sqlite3 *db = ch_db_open(cdb);
    sqlite3_stmt *st = NULL;
    int next[64] = {0};
    int64_t total = 0;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT agg, n FROM applied ORDER BY seq", -1, &st, NULL),
              SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int a = atoi((const char *)sqlite3_column_text(st, 0) + 1);
        int n = sqlite3_column_int(st, 1);
        ASSERT(a >= 0 && a < aggs);
        if (n != next[a]) TEST_FAIL_("aggregate a%d: applied n=%d, expected n=%d", a, n, next[a]);
        next[a]++;
        total++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    ASSERT_EQ(total, (int64_t)aggs * per_agg);
}

/* Enqueues per_agg messages for each of aggs aggregates, round robin, of
 * type "Tick" (or, with alternate, "Tick" for even n and "Tock" for odd). */
static void enqueue_typed(const char *db, int aggs, int per_agg, int alternate)
{
    sqlite3 *h = ch_db_open(db);
    for (int n = 0; n < per_agg; n++)
        for (int a = 0; a < aggs; a++) {
            char agg[16], payload[64];
            snprintf(agg, sizeof agg, "a%d", a);
            snprintf(payload, sizeof payload, "{\"agg\":\"%s\",\"n\":%d}", agg, n);
            wh_enqueue(h, alternate && n % 2 ? "Tock" : "Tick", "Agg", agg, payload,
                       "{\"correlation_id\":\"k\"}", NULL);
        }
    sqlite3_close(h);
}

static void enqueue_aggs(const char *db, int aggs, int per_agg)
{
    enqueue_typed(db, aggs, per_agg, 0);
}

TEST(receiver_end_to_end)
{
    char db[600], cdb[600], url[200];
    consumer c;
    wh_relay r;
    outbox_relay_options o;
    outbox_error err;
    const char *dest_opts[] = {"secret_env=" SECRET_ENV, NULL};

    memset(&c, 0, sizeof c);
    memset(&err, 0, sizeof err);
    c.fail_left = 2;
    snprintf(c.fail_agg, sizeof c.fail_agg, "a1");
    c.fail_n = 3;
    snprintf(db, sizeof db, "%s", test_path("e2e.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("e2e-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    outbox_webhook_receiver *rcv = start_receiver(cdb, 0, &c);
    ASSERT(outbox_webhook_receiver_port(rcv) > 0);
    enqueue_aggs(db, 3, 8);

    snprintf(url, sizeof url, "http://127.0.0.1:%u/events", outbox_webhook_receiver_port(rcv));
    relay_opts(&o, dest_opts);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);
    check_applied(cdb, 3, 8);
    ASSERT_EQ(c.fail_left, 0);
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied WHERE n = -1"), 0);
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied WHERE type <> 'Tick'"), 0);

    /* A re-publication of a delivered message is acknowledged, not applied. */
    {
        outbox_transport t;
        outbox_transport_config cfg;
        outbox_publish_result res;
        outbox_msg *m = NULL;
        char id[64];
        sqlite3 *h = ch_db_open(cdb);
        sqlite3_stmt *st = NULL;
        ASSERT_EQ(
            sqlite3_prepare_v2(h, "SELECT id FROM applied WHERE agg='a0' AND n=0", -1, &st, NULL),
            SQLITE_OK);
        ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
        snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        sqlite3_close(h);
        memset(&cfg, 0, sizeof cfg);
        cfg.source = "/test";
        cfg.options = dest_opts;
        ASSERT_OK(outbox__transport_open(&t, url, &cfg, &err), &err);
        ASSERT_OK(outbox_msg_new(&m, "Tick", "Agg", "a0", "{\"agg\":\"a0\",\"n\":0}", &err), &err);
        ASSERT_OK(outbox_msg_set_id(m, id, &err), &err);
        outbox_webhook_receiver_stats before, after;
        outbox_webhook_receiver_get_stats(rcv, &before);
        ASSERT_OK(t.ops->publish(t.state, &m, 1, &res), &err);
        ASSERT_EQ(res.code, OUTBOX_OK);
        outbox_webhook_receiver_get_stats(rcv, &after);
        ASSERT_EQ(after.duplicates, before.duplicates + 1);
        ASSERT_EQ(after.applied, before.applied);
        outbox_msg_free(m);
        outbox__transport_close(&t);
    }
    check_applied(cdb, 3, 8);
    outbox_webhook_receiver_free(rcv);
}

TEST(receiver_down_then_back)
{
    char db[600], cdb[600], url[200];
    consumer c;
    wh_relay r;
    outbox_relay_options o;
    const char *dest_opts[] = {"secret_env=" SECRET_ENV, "connect_timeout=1s", NULL};
    unsigned port = ch_free_port();
    int per_agg = test_scaled(20, 5);

    memset(&c, 0, sizeof c);
    snprintf(db, sizeof db, "%s", test_path("down.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("down-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    enqueue_aggs(db, 4, per_agg);

    snprintf(url, sizeof url, "http://127.0.0.1:%u/", port);
    relay_opts(&o, dest_opts);
    o.max_attempts = 2; /* an outage must not turn anything Failed */
    log_reset();
    wh_relay_start(&r, db, url, &o);
    ch_sleep_ms(1500); /* connection refused, again and again */
    /* The destination's outage: no attempt charged, the relay backs off the
     * whole destination and says so once. */
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status='pending' AND "
                              "attempts = 0 AND last_error IS NULL"),
              4 * per_agg);
    ASSERT_EQ(log_count("no attempts are charged"), 1);
    ASSERT(log_wait("is down: request failed", "backing off", 1));
    outbox_webhook_receiver *rcv = start_receiver(cdb, port, &c);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 60000);
    ASSERT(log_wait("is back after", NULL, 5000));
    outbox_relay_stats stats;
    outbox_relay_get_stats(r.relay, &stats);
    ASSERT_EQ(stats.failed, 0);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_GE(stats.publish_errors, 4 * 2);
    wh_relay_stop(&r);
    check_applied(cdb, 4, per_agg);
    outbox_webhook_receiver_free(rcv);
}

/* ------------------------------------------------------------------------
 * Scripted failures
 * ---------------------------------------------------------------------- */

typedef struct script_cfg {
    int fail_first; /* the first N requests get fail_status */
    int fail_status;
    char retry_after[64];
    int delay_ms;
    int hang_first, reset_second;
    int64_t http_date_secs; /* > 0: the first request of "b" gets 503 + this date */
} script_cfg;

static void script(void *user, const sv_request *rq, int n, sv_action *act)
{
    script_cfg *c = user;
    char subject[64];
    sv_header(rq->head, "ce-subject", subject, sizeof subject);
    act->delay_ms = c->delay_ms;
    if (strcmp(subject, "gone") == 0) {
        act->status = 410;
        snprintf(act->body, sizeof act->body, "gone for good:\nendpoint removed");
        return;
    }
    if (strcmp(subject, "bad") == 0) {
        act->status = 400;
        snprintf(act->body, sizeof act->body, "bad payload field x");
        return;
    }
    if (c->hang_first && n == 0) {
        act->hang = 1;
        return;
    }
    if (c->reset_second && n == 1) {
        act->reset = 1;
        return;
    }
    if (n < c->fail_first) {
        act->status = c->fail_status;
        snprintf(act->retry_after, sizeof act->retry_after, "%s", c->retry_after);
        snprintf(act->body, sizeof act->body, "try later");
        return;
    }
    if (c->http_date_secs > 0 && strcmp(subject, "b") == 0) {
        time_t when = time(NULL) + c->http_date_secs;
        struct tm tm;
        gmtime_r(&when, &tm);
        strftime(act->retry_after, sizeof act->retry_after, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        act->status = 503;
        c->http_date_secs = 0;
        return;
    }
    act->status = 200;
}

/* Per aggregate, the n of requests answered 2xx must run 0, 1, 2 ... and
 * cover per_agg messages (first publications in order, none lost). */
static void check_scripted_order(sv_server *s, int aggs, int per_agg)
{
    int next[64] = {0};
    for (int i = 0; i < s->nreqs; i++) {
        char agg[32];
        if (s->reqs[i].status < 200 || s->reqs[i].status > 299) continue;
        int n = body_n(s->reqs[i].body, agg, sizeof agg);
        int a = atoi(agg + 1);
        ASSERT(a >= 0 && a < aggs);
        if (n < next[a]) continue; /* a re-publication */
        if (n != next[a]) TEST_FAIL_("aggregate %s: n=%d confirmed before n=%d", agg, n, next[a]);
        next[a]++;
    }
    for (int a = 0; a < aggs; a++)
        ASSERT_EQ(next[a], per_agg);
}

TEST(errors_then_recovery)
{
    char db[600], url[200];
    sv_server s;
    script_cfg sc;
    wh_relay r;
    outbox_relay_options o;
    const char *dest_opts[] = {"max_in_flight=8", NULL};

    memset(&sc, 0, sizeof sc);
    sc.fail_first = 25;
    sc.fail_status = 500;
    snprintf(db, sizeof db, "%s", test_path("5xx.db"));
    wh_store_init(db);
    enqueue_aggs(db, 5, 10);
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, dest_opts);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);
    ASSERT_GE(sv_count(&s), 50 + 25);
    check_scripted_order(&s, 5, 10);
    ASSERT_EQ(s.max_agg_in_flight, 1);
    sv_stop(&s);
}

static void always_ok(void *user, const sv_request *rq, int n, sv_action *act)
{
    (void)user, (void)rq, (void)n;
    act->status = 200;
}

/* endpoint.<TYPE>=URL sends each type to its own server, the rest to the
 * destination URL; an aggregate's messages keep their order across servers
 * (each aggregate alternates Tick and Tock). */
TEST(endpoints_by_type)
{
    char db[600], url[200], ep[220];
    sv_server main_sv, tock_sv;
    wh_relay r;
    outbox_relay_options o;
    const int aggs = 4, per_agg = 10;

    snprintf(db, sizeof db, "%s", test_path("endpoints.db"));
    wh_store_init(db);
    enqueue_typed(db, aggs, per_agg, 1);
    sv_start(&main_sv, 0, always_ok, NULL);
    sv_start(&tock_sv, 0, always_ok, NULL);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/all", main_sv.port);
    snprintf(ep, sizeof ep, "endpoint.Tock=http://127.0.0.1:%u/tock", tock_sv.port);
    const char *dest_opts[] = {ep, "max_in_flight=8", NULL};
    relay_opts(&o, dest_opts);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);

    ASSERT_EQ(sv_count(&main_sv), aggs * per_agg / 2);
    ASSERT_EQ(sv_count(&tock_sv), aggs * per_agg / 2);
    for (int i = 0; i < main_sv.nreqs; i++) {
        char type[32];
        sv_header(main_sv.reqs[i].head, "ce-type", type, sizeof type);
        ASSERT_STREQ(type, "Tick");
        ASSERT(strncmp(main_sv.reqs[i].head, "POST /all ", 10) == 0);
    }
    for (int i = 0; i < tock_sv.nreqs; i++) {
        char type[32];
        sv_header(tock_sv.reqs[i].head, "ce-type", type, sizeof type);
        ASSERT_STREQ(type, "Tock");
        ASSERT(strncmp(tock_sv.reqs[i].head, "POST /tock ", 11) == 0);
    }
    /* Each (aggregate, n) arrived once, and n never before n-1 (a request
     * of an aggregate starts only after the previous one got its 2xx). */
    {
        int64_t at[8][16];
        sv_server *both[2] = {&main_sv, &tock_sv};
        for (int a = 0; a < aggs; a++)
            for (int n = 0; n < per_agg; n++)
                at[a][n] = -1;
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < both[k]->nreqs; i++) {
                char agg[32];
                int n = body_n(both[k]->reqs[i].body, agg, sizeof agg);
                int a = atoi(agg + 1);
                ASSERT(a >= 0 && a < aggs && n >= 0 && n < per_agg);
                ASSERT_EQ(at[a][n], -1);
                at[a][n] = both[k]->reqs[i].at_ms;
            }
        for (int a = 0; a < aggs; a++)
            for (int n = 1; n < per_agg; n++)
                if (at[a][n] < at[a][n - 1])
                    TEST_FAIL_("aggregate a%d: n=%d arrived before n=%d", a, n, n - 1);
    }
    sv_stop(&main_sv);
    sv_stop(&tock_sv);
}

TEST(permanent_failures)
{
    char db[600], url[200], gone_id[37], bad_id[37], sql[300];
    sv_server s;
    script_cfg sc;
    wh_relay r;
    outbox_relay_options o;

    memset(&sc, 0, sizeof sc);
    snprintf(db, sizeof db, "%s", test_path("4xx.db"));
    wh_store_init(db);
    sqlite3 *h = ch_db_open(db);
    wh_enqueue(h, "Tick", "", "gone", "{}", NULL, gone_id);
    wh_enqueue(h, "Tick", "", "bad", "{}", NULL, bad_id);
    wh_enqueue(h, "Tick", "", "a0", "{\"agg\":\"a0\",\"n\":0}", NULL, NULL);
    sqlite3_close(h);
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, NULL);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status='pending'", 0, 30000);
    wh_relay_stop(&r);
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status='failed'"), 2);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE id='%s' AND status='failed' AND attempts=1 AND "
             "last_error LIKE '%%HTTP 410: gone for good: endpoint removed%%'",
             gone_id);
    ASSERT_EQ(wh_db_count(db, sql), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE id='%s' AND status='failed' AND "
             "last_error LIKE '%%HTTP 400: bad payload field x%%'",
             bad_id);
    ASSERT_EQ(wh_db_count(db, sql), 1);
    ASSERT_EQ(sv_count(&s), 3); /* a permanent failure is not retried */
    sv_stop(&s);
}

TEST(retry_after)
{
    char db[600], url[200];
    sv_server s;
    script_cfg sc;
    wh_relay r;
    outbox_relay_options o;

    memset(&sc, 0, sizeof sc);
    sc.fail_first = 1;
    sc.fail_status = 429;
    snprintf(sc.retry_after, sizeof sc.retry_after, "2");
    sc.http_date_secs = 3;
    snprintf(db, sizeof db, "%s", test_path("retryafter.db"));
    wh_store_init(db);
    sqlite3 *h = ch_db_open(db);
    wh_enqueue(h, "Tick", "", "a", "{\"agg\":\"a\",\"n\":0}", NULL, NULL);
    sqlite3_close(h);
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, NULL);
    o.backoff_base_ms = 10;
    o.backoff_max_ms = 10;
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    /* Then an HTTP-date Retry-After on a 503. */
    h = ch_db_open(db);
    wh_enqueue(h, "Tick", "", "b", "{\"agg\":\"b\",\"n\":0}", NULL, NULL);
    sqlite3_close(h);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);

    ASSERT_EQ(sv_count(&s), 4);
    ASSERT_EQ(s.reqs[0].status, 429);
    int64_t gap1 = s.reqs[1].at_ms - s.reqs[0].at_ms;
    int64_t gap2 = s.reqs[3].at_ms - s.reqs[2].at_ms;
    fprintf(stderr, "retry-after 2 s: next try after %lld ms; HTTP date +3 s: after %lld ms\n",
            (long long)gap1, (long long)gap2);
    ASSERT_EQ(s.reqs[2].status, 503);
    ASSERT_GE(gap1, 1900);
    ASSERT_GE(gap2, 1900); /* the date has one-second resolution */
    sv_stop(&s);
}

TEST(timeout_and_reset)
{
    char db[600], url[200];
    sv_server s;
    script_cfg sc;
    wh_relay r;
    outbox_relay_options o;
    const char *dest_opts[] = {"timeout=400ms", NULL};

    memset(&sc, 0, sizeof sc);
    sc.hang_first = 1;
    sc.reset_second = 1;
    snprintf(db, sizeof db, "%s", test_path("hang.db"));
    wh_store_init(db);
    enqueue_aggs(db, 1, 4);
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, dest_opts);
    int64_t t0 = ch_now_ms();
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);
    ASSERT(ch_now_ms() - t0 < 10000);
    ASSERT_EQ(s.reqs[0].status, 0);
    ASSERT_EQ(s.reqs[1].status, 0);
    check_scripted_order(&s, 1, 4);
    sv_stop(&s);
}

TEST(one_in_flight_per_aggregate)
{
    char db[600], url[200];
    sv_server s;
    script_cfg sc;
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    outbox_error err;
    char store[700];
    const char *dest_opts[] = {"max_in_flight=8", NULL};

    memset(&sc, 0, sizeof sc);
    memset(&err, 0, sizeof err);
    sc.delay_ms = 20;
    snprintf(db, sizeof db, "%s", test_path("inflight.db"));
    wh_store_init(db);
    enqueue_aggs(db, 6, 8); /* interleaved: a0 a1 ... a5 a0 a1 ... */
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, dest_opts);
    o.once = 1;
    snprintf(store, sizeof store, "sqlite:%s", db);
    int64_t t0 = ch_now_ms();
    ASSERT_OK(outbox_relay_new(&relay, store, url, &o, &err), &err);
    ASSERT_OK(outbox_relay_run(relay, &err), &err);
    outbox_relay_free(relay);
    int64_t took = ch_now_ms() - t0;
    fprintf(stderr,
            "48 requests of 20 ms over 6 aggregates: %lld ms, max in flight %d, "
            "max per aggregate %d\n",
            (long long)took, s.max_in_flight, s.max_agg_in_flight);
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox"), 0);
    ASSERT_EQ(s.max_agg_in_flight, 1);
    ASSERT_GE(s.max_in_flight, 2);
    ASSERT_GE(s.max_in_flight, 6); /* every aggregate ran in parallel */
    check_scripted_order(&s, 6, 8);
    sv_stop(&s);
}

/* ------------------------------------------------------------------------
 * Requests the receiver refuses
 * ---------------------------------------------------------------------- */

/* Sends raw bytes and returns the status code of the answer (0 when the
 * connection closed without one). */
static int raw_request(unsigned port, const char *data, size_t len)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char buf[1024];
    size_t got = 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        TEST_FAIL_("connect: %s", strerror(errno));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sv_write_all(fd, data, len);
    while (got < sizeof buf - 1) {
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
        buf[got] = '\0';
        if (strstr(buf, "\r\n")) break;
    }
    close(fd);
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.1 ", 9) != 0) return 0;
    return atoi(buf + 9);
}

static int signed_request(unsigned port, const char *id, int64_t ts, const char *body,
                          const char *sig_override, const char *extra_headers)
{
    char sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE], req[16384];
    outbox_error err;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_webhook_sign(SECRET, id, ts, body, strlen(body), sig, &err), &err);
    int n = snprintf(
        req, sizeof req,
        "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "ce-specversion: 1.0\r\nce-id: %s\r\nce-type: Tick\r\nce-subject: a0\r\n"
        "ce-source: /t\r\nce-time: 2026-01-02T03:04:05.678901Z\r\n"
        "webhook-id: %s\r\nwebhook-timestamp: %lld\r\n%s%s%s%s"
        "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
        id, id, (long long)ts, sig_override ? "" : "webhook-signature: ", sig_override ? "" : sig,
        sig_override ? "" : "\r\n", extra_headers ? extra_headers : "", strlen(body), body);
    if (sig_override && *sig_override) {
        /* put the given signature line in */
        char with[16384];
        snprintf(with, sizeof with, "%.*swebhook-signature: %s\r\n%s",
                 (int)(strstr(req, "Content-Length") - req), req, sig_override,
                 strstr(req, "Content-Length"));
        return raw_request(port, with, strlen(with));
    }
    ASSERT(n > 0 && (size_t)n < sizeof req);
    return raw_request(port, req, (size_t)n);
}

TEST(receiver_rejects)
{
    char cdb[600], big[3000], pad[4096];
    consumer c;
    int64_t now = time(NULL);
    const char *id1 = "0190b0c2-0000-7000-8000-000000000001";
    const char *id2 = "0190b0c2-0000-7000-8000-000000000002";

    memset(&c, 0, sizeof c);
    snprintf(cdb, sizeof cdb, "%s", test_path("rejects-consumer.db"));
    consumer_db(cdb);
    outbox_webhook_receiver *rcv = start_receiver(cdb, 0, &c);
    unsigned port = outbox_webhook_receiver_port(rcv);

    /* Bad signature, stale or future timestamp, unsigned, malformed timestamp. */
    ASSERT_EQ(signed_request(port, id2, now, "{\"agg\":\"a0\",\"n\":0}",
                             "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", NULL),
              401);
    ASSERT_EQ(signed_request(port, id2, now - 1000, "{\"agg\":\"a0\",\"n\":0}", NULL, NULL), 401);
    ASSERT_EQ(signed_request(port, id2, now + 1000, "{\"agg\":\"a0\",\"n\":0}", NULL, NULL), 401);
    ASSERT_EQ(signed_request(port, id2, now, "{\"agg\":\"a0\",\"n\":0}", "", NULL), 401);
    /* Signed but malformed: payload not JSON, id not a UUID. */
    ASSERT_EQ(signed_request(port, id2, now, "{not json", NULL, NULL), 400);
    ASSERT_EQ(signed_request(port, "not-a-uuid", now, "{\"agg\":\"a0\",\"n\":0}", NULL, NULL), 400);
    /* Oversized body (limit 4096). */
    memset(big, ' ', sizeof big);
    big[0] = '[';
    big[sizeof big - 2] = ']';
    big[sizeof big - 1] = '\0';
    char bigger[9000];
    snprintf(bigger, sizeof bigger, "%s%s%s", big, big, big);
    bigger[strlen(bigger) - 1] = ']';
    ASSERT_EQ(signed_request(port, id2, now, bigger, NULL, NULL), 413);
    /* Too many headers (limit 24). */
    pad[0] = '\0';
    for (int i = 0; i < 30; i++)
        snprintf(pad + strlen(pad), sizeof pad - strlen(pad), "x-pad-%d: %d\r\n", i, i);
    ASSERT_EQ(signed_request(port, id2, now, "{\"agg\":\"a0\",\"n\":0}", NULL, pad), 431);
    /* Not POST; garbage. */
    const char *get = "GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(raw_request(port, get, strlen(get)), 405);
    const char *garbage = "\x16\x03\x01 hello there\r\n\r\n";
    int g = raw_request(port, garbage, strlen(garbage));
    ASSERT(g == 400 || g == 0);
    /* None of it applied. */
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied"), 0);
    ASSERT_EQ(c.calls, 0);

    /* A correct one is applied (the limits above were not too tight). */
    ASSERT_EQ(signed_request(port, id1, now, "{\"agg\":\"a0\",\"n\":0}", NULL, NULL), 204);
    ASSERT_EQ(signed_request(port, id1, now, "{\"agg\":\"a0\",\"n\":0}", NULL, NULL), 204);
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied"), 1);
    ASSERT_EQ(c.calls, 1);
    outbox_webhook_receiver_stats stats;
    outbox_webhook_receiver_get_stats(rcv, &stats);
    ASSERT_EQ(stats.applied, 1);
    ASSERT_EQ(stats.duplicates, 1);
    ASSERT_GE(stats.rejected, 9);
    outbox_webhook_receiver_free(rcv);
}

/* A client that sends half a request and stalls neither blocks other
 * clients nor keeps its connection: it is cut after connection_timeout_s. */
TEST(receiver_slow_client)
{
    char cdb[600];
    consumer c;
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *rcv = NULL;
    outbox_error err;
    int64_t now = time(NULL);
    struct sockaddr_in a;

    memset(&c, 0, sizeof c);
    memset(&err, 0, sizeof err);
    snprintf(cdb, sizeof cdb, "%s", test_path("slow-consumer.db"));
    consumer_db(cdb);
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = SECRET;
    ro.db_path = cdb;
    ro.consumer = "slow";
    ro.handler = apply_handler;
    ro.handler_user = &c;
    ro.connection_timeout_s = 1;
    ASSERT_OK(outbox_webhook_receiver_new(&rcv, &ro, &err), &err);
    unsigned port = outbox_webhook_receiver_port(rcv);

    int slow[8];
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    for (int i = 0; i < 8; i++) {
        slow[i] = socket(AF_INET, SOCK_STREAM, 0);
        ASSERT_EQ(connect(slow[i], (struct sockaddr *)&a, sizeof a), 0);
        const char *half = "POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n";
        sv_write_all(slow[i], half, strlen(half));
    }
    /* Others are served meanwhile. */
    ASSERT_EQ(signed_request(port, "0190b0c2-0000-7000-8000-0000000000aa", now,
                             "{\"agg\":\"a0\",\"n\":0}", NULL, NULL),
              204);
    /* The stalled ones are cut. */
    ch_sleep_ms(2500);
    for (int i = 0; i < 8; i++) {
        char buf[256];
        struct timeval tv = {3, 0};
        setsockopt(slow[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ssize_t r = recv(slow[i], buf, sizeof buf, 0);
        /* Closed (0 or reset), or answered; still open after 5.5 s fails. */
        if (r < 0 && errno != ECONNRESET)
            TEST_FAIL_("stalled connection %d still open: %s", i, strerror(errno));
        ASSERT(r <= 0 || strncmp(buf, "HTTP/1.1 ", 9) == 0);
        close(slow[i]);
    }
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied"), 1);
    outbox_webhook_receiver_free(rcv);
}

/* ------------------------------------------------------------------------
 * TLS: a CA and a server certificate for 127.0.0.1 made at test time, the
 * receiver serving HTTPS with them
 * ---------------------------------------------------------------------- */

static outbox_webhook_receiver *start_tls_receiver_with(const char *cdb, consumer *c,
                                                        const char *cert, const char *key,
                                                        outbox_error *err)
{
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *r = NULL;
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = SECRET;
    ro.db_path = cdb;
    ro.consumer = "orders-tls";
    ro.handler = apply_handler;
    ro.handler_user = c;
    ro.tls_cert_file = cert;
    ro.tls_key_file = key;
    memset(err, 0, sizeof *err);
    if (outbox_webhook_receiver_new(&r, &ro, err) != OUTBOX_OK) return NULL;
    return r;
}

static outbox_webhook_receiver *start_tls_receiver(const char *cdb, consumer *c, outbox_error *err)
{
    return start_tls_receiver_with(cdb, c, tls_cert, tls_key, err);
}

/* Plain HTTP to the HTTPS receiver must not be applied; checks the
 * receiver really speaks TLS. */
static int plain_http_status(unsigned port)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    return raw_request(port, req, sizeof req - 1);
}

TEST(tls_receiver_options)
{
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *r = NULL;
    outbox_error err;
    consumer c;
    memset(&c, 0, sizeof c);
    memset(&err, 0, sizeof err);
    outbox_webhook_receiver_options_init(&ro);
    ro.db_path = ":memory:";
    ro.consumer = "tls-opts";
    ro.handler = apply_handler;
    ro.handler_user = &c;
    ro.secret = SECRET;
    ro.tls_cert_file = tls_cert;
    ASSERT_EQ(outbox_webhook_receiver_new(&r, &ro, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "tls_key_file");
    ro.tls_key_file = test_path("no-such.key");
    ASSERT_EQ(outbox_webhook_receiver_new(&r, &ro, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "no-such.key");
    ro.tls_key_file = tls_ca; /* a certificate, not a key */
    ASSERT(outbox_webhook_receiver_new(&r, &ro, &err) != OUTBOX_OK);
    ASSERT(r == NULL);

    /* The sender refuses an unreadable ca_file at start-up. */
    char db[600];
    snprintf(db, sizeof db, "%s", test_path("tlsconf.db"));
    wh_store_init(db);
    const char *noca[] = {"ca_file=/nonexistent/ca.pem", NULL};
    ASSERT_EQ(config_rc(db, "https://127.0.0.1:9/x", noca, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "ca_file=/nonexistent/ca.pem");
}

/* https:// with ca_file= delivers, verified, to the HTTPS receiver. */
TEST(tls_verified)
{
    char db[600], cdb[600], url[200], ca_opt[700];
    consumer c;
    outbox_error err;
    outbox_relay_options o;
    wh_relay r;
    int per_agg = test_scaled(20, 3);

    memset(&c, 0, sizeof c);
    snprintf(db, sizeof db, "%s", test_path("tls-ok.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("tls-ok-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    outbox_webhook_receiver *rcv = start_tls_receiver(cdb, &c, &err);
    if (rcv == NULL) TEST_FAIL_("HTTPS receiver: %s", err.message);
    unsigned port = outbox_webhook_receiver_port(rcv);
    /* It speaks TLS only: a plain HTTP request gets no HTTP answer. */
    ASSERT(plain_http_status(port) <= 0);

    enqueue_aggs(db, 4, per_agg);
    snprintf(url, sizeof url, "https://127.0.0.1:%u/hook", port);
    snprintf(ca_opt, sizeof ca_opt, "ca_file=%s", tls_ca);
    const char *dest_opts[] = {ca_opt, "secret_env=" SECRET_ENV, NULL};
    relay_opts(&o, dest_opts);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 60000);
    wh_relay_stop(&r);
    check_applied(cdb, 4, per_agg);
    fprintf(stderr, "https with ca_file: %d messages delivered and verified\n", 4 * per_agg);
    outbox_webhook_receiver_free(rcv);
}

/* Default verification (system CAs) does not trust the test CA: nothing is
 * sent, the relay reports the destination down with the certificate
 * problem and charges no attempt, and the receiver applies nothing. */
TEST(tls_untrusted)
{
    char db[600], cdb[600], url[200];
    consumer c;
    outbox_error err;
    outbox_relay_options o;
    wh_relay r;
    const int msgs = 6;

    memset(&c, 0, sizeof c);
    snprintf(db, sizeof db, "%s", test_path("tls-bad.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("tls-bad-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    outbox_webhook_receiver *rcv = start_tls_receiver(cdb, &c, &err);
    if (rcv == NULL) TEST_FAIL_("HTTPS receiver: %s", err.message);
    enqueue_aggs(db, msgs, 1);
    snprintf(url, sizeof url, "https://127.0.0.1:%u/hook", outbox_webhook_receiver_port(rcv));
    const char *dest_opts[] = {"secret_env=" SECRET_ENV, NULL};
    relay_opts(&o, dest_opts);
    log_reset();
    wh_relay_start(&r, db, url, &o);
    /* A TLS failure is the destination's outage: logged with the
     * certificate problem, no attempt charged, retried as a whole. */
    ASSERT(log_wait("is down:", "certificate", 60000));
    ch_sleep_ms(300);
    log_print_line("https without the CA", "is down:");
    wh_relay_stop(&r);
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status='pending' AND "
                              "attempts = 0 AND last_error IS NULL"),
              msgs);
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied"), 0);
    outbox_webhook_receiver_free(rcv);
}

/* A certificate from the trusted CA but for another host name: never
 * sent, the host name problem as last_error. */
TEST(tls_wrong_host)
{
    char db[600], cdb[600], url[200], ca_opt[700];
    consumer c;
    outbox_error err;
    outbox_relay_options o;
    wh_relay r;
    const int msgs = 3;

    memset(&c, 0, sizeof c);
    snprintf(db, sizeof db, "%s", test_path("tls-host.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("tls-host-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    outbox_webhook_receiver *rcv =
        start_tls_receiver_with(cdb, &c, tls_other_cert, tls_other_key, &err);
    if (rcv == NULL) TEST_FAIL_("HTTPS receiver: %s", err.message);
    enqueue_aggs(db, msgs, 1);
    snprintf(url, sizeof url, "https://127.0.0.1:%u/hook", outbox_webhook_receiver_port(rcv));
    snprintf(ca_opt, sizeof ca_opt, "ca_file=%s", tls_ca);
    const char *dest_opts[] = {ca_opt, NULL};
    relay_opts(&o, dest_opts);
    log_reset();
    wh_relay_start(&r, db, url, &o);
    ASSERT(log_wait("is down:", "subject name", 30000) ||
           log_wait("is down:", "does not match", 1));
    log_print_line("https, certificate for another host", "is down:");
    wh_relay_stop(&r);
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status='pending' AND "
                              "attempts = 0 AND last_error IS NULL"),
              msgs);
    ASSERT_EQ(wh_db_count(cdb, "SELECT count(*) FROM applied"), 0);
    outbox_webhook_receiver_free(rcv);
}

/* insecure=true delivers without verifying, and says so at WARN. */
TEST(tls_insecure)
{
    char db[600], cdb[600], url[200];
    consumer c;
    outbox_error err;
    outbox_relay_options o;
    wh_relay r;
    int per_agg = test_scaled(10, 2);

    memset(&c, 0, sizeof c);
    snprintf(db, sizeof db, "%s", test_path("tls-insecure.db"));
    snprintf(cdb, sizeof cdb, "%s", test_path("tls-insecure-consumer.db"));
    wh_store_init(db);
    consumer_db(cdb);
    outbox_webhook_receiver *rcv = start_tls_receiver(cdb, &c, &err);
    if (rcv == NULL) TEST_FAIL_("HTTPS receiver: %s", err.message);
    enqueue_aggs(db, 3, per_agg);
    snprintf(url, sizeof url, "https://127.0.0.1:%u/hook", outbox_webhook_receiver_port(rcv));
    const char *dest_opts[] = {"insecure=true", "secret_env=" SECRET_ENV, NULL};
    relay_opts(&o, dest_opts);
    log_reset();
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 60000);
    wh_relay_stop(&r);
    check_applied(cdb, 3, per_agg);
    pthread_mutex_lock(&log_mu);
    ASSERT_CONTAINS(log_text, "warn transport.http insecure=true");
    ASSERT_CONTAINS(log_text, "NOT verified");
    pthread_mutex_unlock(&log_mu);
    outbox_webhook_receiver_free(rcv);
}

/* ------------------------------------------------------------------------
 * Stop during a hanging request
 * ---------------------------------------------------------------------- */

static void hang_all(void *user, const sv_request *rq, int n, sv_action *act)
{
    (void)user;
    (void)rq;
    (void)n;
    act->hang = 1;
}

/* With timeout=30s and a destination that never answers, stop returns
 * within about a second and nothing is marked sent. */
TEST(stop_interrupts_hang)
{
    char db[600], url[200];
    sv_server s;
    wh_relay r;
    outbox_relay_options o;
    const char *dest_opts[] = {"timeout=30s", NULL};
    const int msgs = 5;

    snprintf(db, sizeof db, "%s", test_path("stop.db"));
    wh_store_init(db);
    enqueue_aggs(db, msgs, 1);
    sv_start(&s, 0, hang_all, NULL);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, dest_opts);
    wh_relay_start(&r, db, url, &o);
    int64_t deadline = ch_now_ms() + 10000;
    while (sv_count(&s) < msgs && ch_now_ms() < deadline)
        ch_sleep_ms(10);
    ASSERT_EQ(sv_count(&s), msgs); /* all in flight, hanging */
    ch_sleep_ms(200);
    log_reset();
    int64_t t0 = ch_now_ms();
    outbox_relay_stop(r.relay);
    pthread_join(r.thread, NULL);
    int64_t took = ch_now_ms() - t0;
    outbox_relay_free(r.relay);
    if (r.rc != OUTBOX_OK) TEST_FAIL_("relay run: %d %s", r.rc, r.err.message);
    fprintf(stderr, "stop during %d hanging requests (timeout 30 s): returned in %lld ms\n", msgs,
            (long long)took);
    ASSERT(took < 1000);
    pthread_mutex_lock(&log_mu);
    ASSERT_CONTAINS(log_text, "stopping: 5 requests");
    pthread_mutex_unlock(&log_mu);
    /* Left as they were: pending, no attempt counted, no error recorded. */
    ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status='pending' AND "
                              "attempts = 0 AND last_error IS NULL"),
              msgs);
    sv_stop(&s);

    /* The messages go out later, to a destination that answers. */
    script_cfg sc;
    memset(&sc, 0, sizeof sc);
    sv_start(&s, 0, script, &sc);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", s.port);
    relay_opts(&o, NULL);
    wh_relay_start(&r, db, url, &o);
    wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    wh_relay_stop(&r);
    ASSERT_EQ(sv_count(&s), msgs);
    sv_stop(&s);
}

int main(void)
{
    outbox_error err;
    outbox_webhook_receiver *r = NULL;
    outbox_webhook_receiver_options ro;
    memset(&err, 0, sizeof err);
    outbox_webhook_receiver_options_init(&ro);
    ro.db_path = ":memory:";
    ro.consumer = "probe";
    ro.handler = apply_handler;
    ro.secret = SECRET;
    int rc = outbox_webhook_receiver_new(&r, &ro, &err);
    outbox_webhook_receiver_free(r);
    if (rc == OUTBOX_ENOTBUILT) SKIP("%s", err.message);
    char sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    if (outbox_webhook_sign(SECRET, "x", 1, "", 0, sig, &err) == OUTBOX_ENOTBUILT)
        SKIP("%s", err.message);
    wh_store_init(test_path("probe.db"));
    if (config_rc(test_path("probe.db"), "http://127.0.0.1:9/", NULL, &err) == OUTBOX_ENOTBUILT)
        SKIP("%s", err.message);

    setenv(SECRET_ENV, SECRET, 1);
    log_capture_install(OUTBOX_LOG_INFO);
    RUN(sign_vector);
    RUN(verify_failures);
    RUN(config_errors);
    RUN(contract);
    RUN(receiver_end_to_end);
    RUN(receiver_bare_secret);
    RUN(receiver_rejects);
    RUN(receiver_slow_client);
    RUN(receiver_down_then_back);
    RUN(errors_then_recovery);
    RUN(permanent_failures);
    RUN(retry_after);
    RUN(timeout_and_reset);
    RUN(one_in_flight_per_aggregate);
    RUN(endpoints_by_type);
    RUN(stop_interrupts_hang);
    if (make_certs() != 0) {
        fprintf(stderr, "TLS tests skipped: the openssl command is not installed\n");
    } else {
        ro.tls_cert_file = tls_cert;
        ro.tls_key_file = tls_key;
        rc = outbox_webhook_receiver_new(&r, &ro, &err);
        outbox_webhook_receiver_free(r);
        r = NULL;
        if (rc == OUTBOX_ENOTBUILT) {
            fprintf(stderr, "TLS tests skipped: %s\n", err.message);
        } else {
            ASSERT_OK(rc, &err);
            RUN(tls_receiver_options);
            RUN(tls_verified);
            RUN(tls_untrusted);
            RUN(tls_wrong_host);
            RUN(tls_insecure);
        }
    }
    fprintf(stderr, "all http tests passed\n");
    return 0;
}
