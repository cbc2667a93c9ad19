/*
 * test_nats.c - the nats:// destination against a real nats-server -js
 * started by the test on 127.0.0.1 and a free port.
 *
 *   contract      fields, subject and CloudEvents NATS-binding headers read
 *                 back from the stream with a JetStream consumer
 *   dedup         the same message id published twice: the stream holds one
 *   config        stream missing, create_stream, bad subject templates, a
 *                 subject the stream does not cover, unknown option, bad
 *                 credentials: clear start-up errors (password not shown)
 *   stream_deleted the stream removed after start-up: the message fails for
 *                 good with the reason, its aggregate's next one waits
 *   oversized     a server with max_payload 4096: a message over it (payload
 *                 alone, or with its headers) fails at once with the
 *                 reason, its aggregate's next one waits, start-up warns
 *   creds         creds=FILE (JWT + nkey seed) against a nats-server in
 *                 operator mode with JetStream: delivered with the good
 *                 user; an untrusted user, garbage or missing creds, no
 *                 creds: start-up errors; no seed or JWT in errors or log
 *   restart       nats-server SIGKILLed and restarted 10 times during a
 *                 drain: lost 0, duplicates in the stream 0, order
 *                 violations 0
 *
 * OUTBOX_TEST_SCALE scales the message count of the restart test.
 */
#include "test.h"

#ifndef OUTBOX_HAVE_NATS
int main(void)
{
    SKIP("this build has no NATS destination (nats.c not found)");
}
#else

#include "log_capture.h"
#include "relay_thread.h"
#include "support/chaos.h"
#include "support/nats.h"
#include "tls_certs.h"
#ifdef OUTBOX_HAVE_CRYPTO
#include "nats_jwt.h"
#endif

static nh_server server;

/* Enqueues one message in its own transaction; returns its id in id_out. */
static void enqueue_one(const char *db_path, const char *id, const char *type, const char *agg_type,
                        const char *agg_id, const char *payload, const char *headers_json,
                        char id_out[37])
{
    sqlite3 *db = ch_db_open(db_path);
    outbox_msg *m = NULL;
    outbox_error err;
    memset(&err, 0, sizeof err);
    ASSERT_OK(outbox_msg_new(&m, type, agg_type, agg_id, payload, &err), &err);
    if (id) ASSERT_OK(outbox_msg_set_id(m, id, &err), &err);
    if (headers_json) ASSERT_OK(outbox_msg_set_headers_json(m, headers_json, &err), &err);
    ch_db_exec(db, "BEGIN");
    ASSERT_OK(outbox_enqueue_sqlite(db, m, &err), &err);
    ch_db_exec(db, "COMMIT");
    if (id_out) snprintf(id_out, 37, "%s", outbox_msg_id(m));
    outbox_msg_free(m);
    sqlite3_close(db);
}

typedef struct collected {
    int count;
    char subject[8][128];
    char id[8][40];
    char payload[8][256];
    char hdr[8][16][160]; /* "key=value" */
    int nhdr[8];
} collected;

static void collect(void *user, natsMsg *m)
{
    collected *c = user;
    const char **keys = NULL;
    int nkeys = 0, i;
    if (c->count >= 8) TEST_FAIL_("more messages than expected in the stream");
    int k = c->count++;
    snprintf(c->subject[k], sizeof c->subject[k], "%s", natsMsg_GetSubject(m));
    snprintf(c->payload[k], sizeof c->payload[k], "%.*s", natsMsg_GetDataLength(m),
             natsMsg_GetData(m));
    const char *id = nh_header(m, "Nats-Msg-Id");
    snprintf(c->id[k], sizeof c->id[k], "%s", id ? id : "");
    if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK) {
        for (i = 0; i < nkeys && c->nhdr[k] < 16; i++)
            snprintf(c->hdr[k][c->nhdr[k]++], 160, "%s=%s", keys[i], nh_header(m, keys[i]));
        free((void *)keys);
    }
}

static const char *hdr(const collected *c, int k, const char *key)
{
    size_t n = strlen(key);
    for (int i = 0; i < c->nhdr[k]; i++)
        if (strncmp(c->hdr[k][i], key, n) == 0 && c->hdr[k][i][n] == '=')
            return c->hdr[k][i] + n + 1;
    return NULL;
}

TEST(contract)
{
    char db[CH_PATH], to[256], id1[37], id2[37], t[32];
    collected c;
    ch_new_store(db, "contract.db");
    nh_stream_create(&server, "CONTRACT", "outbox.>");
    enqueue_one(db, NULL, "OrderPlaced", "Order", "o-1", "{\"total\":42,\"x\":[1,2]}",
                "{\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\","
                "\"Tenant-Id\":\"t 7\"}",
                id1);
    enqueue_one(db, NULL, "Order.Shipped", "", "o-1", "[]", NULL, id2);
    snprintf(to, sizeof to, "%s?stream=CONTRACT", server.url);
    ch_drain_once(db, to);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);

    memset(&c, 0, sizeof c);
    ASSERT_EQ(nh_stream_read(&server, "CONTRACT", "outbox.>", collect, &c), 2);
    ASSERT_STREQ(c.subject[0], "outbox.Order.OrderPlaced");
    ASSERT_STREQ(c.id[0], id1);
    ASSERT_STREQ(c.payload[0], "{\"total\":42,\"x\":[1,2]}");
    ASSERT_STREQ(hdr(&c, 0, "ce-specversion"), "1.0");
    ASSERT_STREQ(hdr(&c, 0, "ce-id"), id1);
    ASSERT_STREQ(hdr(&c, 0, "ce-type"), "OrderPlaced");
    ASSERT_STREQ(hdr(&c, 0, "ce-source"), "/outbox");
    ASSERT_STREQ(hdr(&c, 0, "ce-subject"), "o-1");
    ASSERT_STREQ(hdr(&c, 0, "ce-aggregatetype"), "Order");
    ASSERT_STREQ(hdr(&c, 0, "content-type"), "application/json");
    ASSERT_STREQ(hdr(&c, 0, "ce-traceparent"),
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ASSERT_STREQ(hdr(&c, 0, "traceparent"), /* W3C name too, for tracing libraries */
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ASSERT_STREQ(hdr(&c, 0, "ce-tenantid"), "t 7");
    const char *time_hdr = hdr(&c, 0, "ce-time");
    ASSERT(time_hdr != NULL);
    ASSERT_EQ(strlen(time_hdr), 27);
    ASSERT_EQ(time_hdr[26], 'Z');
    snprintf(t, sizeof t, "%.4s", time_hdr);
    ASSERT(atoi(t) >= 2024);

    /* Empty aggregate type renders "none"; '.' in the type becomes '_'. */
    ASSERT_STREQ(c.subject[1], "outbox.none.Order_Shipped");
    ASSERT_STREQ(c.id[1], id2);
    ASSERT_STREQ(c.payload[1], "[]");
    ASSERT(hdr(&c, 1, "ce-aggregatetype") == NULL);
    ASSERT_STREQ(hdr(&c, 1, "ce-type"), "Order.Shipped");

    /* A custom template with {aggregate_id}. */
    nh_stream_create(&server, "BYAGG", "agg.>");
    enqueue_one(db, NULL, "Paid", "Invoice", "inv 9", "{}", NULL, id1);
    snprintf(to, sizeof to, "%s?stream=BYAGG&subject=agg.{aggregate_type}.{aggregate_id}",
             server.url);
    ch_drain_once(db, to);
    memset(&c, 0, sizeof c);
    ASSERT_EQ(nh_stream_read(&server, "BYAGG", "agg.>", collect, &c), 1);
    ASSERT_STREQ(c.subject[0], "agg.Invoice.inv_9");
}

TEST(dedup)
{
    char db[CH_PATH], to[256];
    const char *id = "0190f2a4-1111-7000-8000-00000000abcd";
    ch_new_store(db, "dedup.db");
    nh_stream_create(&server, "DEDUP", "dedup.>");
    snprintf(to, sizeof to, "%s?stream=DEDUP&subject=dedup.{type}", server.url);
    enqueue_one(db, id, "Once", "A", "a1", "{\"n\":1}", NULL, NULL);
    ch_drain_once(db, to);
    ASSERT_EQ(nh_stream_count(&server, "DEDUP"), 1);
    /* The same id again (a relay that crashed before recording the send). */
    enqueue_one(db, id, "Once", "A", "a1", "{\"n\":1}", NULL, NULL);
    ch_drain_once(db, to);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0); /* the duplicate ack counts as confirmed */
    ASSERT_EQ(nh_stream_count(&server, "DEDUP"), 1);
    /* A different id is a new message. */
    enqueue_one(db, NULL, "Once", "A", "a1", "{\"n\":2}", NULL, NULL);
    ch_drain_once(db, to);
    ASSERT_EQ(nh_stream_count(&server, "DEDUP"), 2);
}

static void expect_error(const char *db, const char *to, int code, const char *needle)
{
    outbox_relay *r = NULL;
    outbox_error err;
    int rc = ch_relay_new(&r, db, to, 1, &err);
    if (rc != code) {
        outbox_relay_free(r);
        TEST_FAIL_("%s: expected %d, got %d (%s)", to, code, rc, err.message);
    }
    ASSERT(r == NULL);
    ASSERT_CONTAINS(err.message, needle);
    fprintf(stderr, "   %s -> %s\n", to, err.message);
}

TEST(config_errors)
{
    char db[CH_PATH], to[512];
    ch_new_store(db, "config.db");
    nh_stream_create(&server, "CFG", "cfg.>");

    snprintf(to, sizeof to, "%s?stream=NOPE", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "does not exist");
    snprintf(to, sizeof to, "%s", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "stream");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=cfg..{type}", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "subject");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=cfg.{type}%%20x", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "subject");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=cfg.{nope}", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "nope");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=other.{type}", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "not covered by stream");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=cfg.{type}&bogus=1", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "bogus");
    snprintf(to, sizeof to, "%s?stream=CFG&subject=cfg.{type}&ack_timeout=soon", server.url);
    expect_error(db, to, OUTBOX_ECONFIG, "ack_timeout");
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=CFG", ch_free_port());
    expect_error(db, to, OUTBOX_EPUBLISH, "cannot connect");

    /* create_stream makes the stream with subjects covering the template. */
    snprintf(to, sizeof to, "%s?create_stream=MADE&subject=made.{aggregate_type}.{type}",
             server.url);
    ASSERT_EQ(nh_stream_count(&server, "MADE"), -1);
    char id[37];
    enqueue_one(db, NULL, "T", "A", "a", "{}", NULL, id);
    ch_drain_once(db, to);
    ASSERT_EQ(nh_stream_count(&server, "MADE"), 1);

    /* Bad credentials against a server that requires them. */
    nh_server auth;
    memset(&auth, 0, sizeof auth);
    snprintf(auth.user, sizeof auth.user, "relay");
    snprintf(auth.pass, sizeof auth.pass, "s3cret-pw");
    nh_server_start(&auth);
    nh_stream_create(&auth, "AUTH", "outbox.>");
    snprintf(to, sizeof to, "nats://relay:wrong-pw-123@127.0.0.1:%d?stream=AUTH", auth.port);
    {
        outbox_relay *r = NULL;
        outbox_error err;
        int rc = ch_relay_new(&r, db, to, 1, &err);
        ASSERT_EQ(rc, OUTBOX_ECONFIG);
        ASSERT_CONTAINS(err.message, "credentials");
        ASSERT(strstr(err.message, "wrong-pw-123") == NULL);
        fprintf(stderr, "   (bad password) -> %s\n", err.message);
    }
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=AUTH", auth.port);
    expect_error(db, to, OUTBOX_ECONFIG, "credentials");
    snprintf(to, sizeof to, "nats://relay:s3cret-pw@127.0.0.1:%d?stream=AUTH", auth.port);
    enqueue_one(db, NULL, "T", "A", "a", "{}", NULL, id);
    ch_drain_once(db, to);
    ASSERT_EQ(nh_stream_count(&auth, "AUTH"), 1);
    nh_server_stop(&auth);

    /* Token authentication: token= (as a --to-opt style option too). */
    nh_server tok;
    memset(&tok, 0, sizeof tok);
    snprintf(tok.token, sizeof tok.token, "tok-9f8e7d");
    nh_server_start(&tok);
    nh_stream_create(&tok, "TOK", "outbox.>");
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=TOK&token=bad-token-555", tok.port);
    {
        outbox_relay *r = NULL;
        outbox_error err;
        ASSERT_EQ(ch_relay_new(&r, db, to, 1, &err), OUTBOX_ECONFIG);
        ASSERT_CONTAINS(err.message, "credentials");
        ASSERT(strstr(err.message, "bad-token-555") == NULL);
    }
    {
        outbox_relay *r = NULL;
        outbox_error err;
        char store[700];
        const char *opts[] = {"token=tok-9f8e7d", NULL};
        outbox_relay_options o;
        outbox_relay_options_init(&o);
        o.once = 1;
        o.destination_options = opts;
        snprintf(store, sizeof store, "sqlite:%s", db);
        snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=TOK", tok.port);
        enqueue_one(db, NULL, "T", "A", "a", "{}", NULL, id);
        memset(&err, 0, sizeof err);
        ASSERT_OK(outbox_relay_new(&r, store, to, &o, &err), &err);
        ASSERT_OK(outbox_relay_run(r, &err), &err);
        outbox_relay_free(r);
    }
    ASSERT_EQ(nh_stream_count(&tok, "TOK"), 1);
    nh_server_stop(&tok);
}

/* TLS: a server that requires it is reached with tls=true and the CA in
 * ca_file=; without the CA, or without tls=true, start-up fails with the
 * reason, and no message is marked sent. */
TEST(tls)
{
    char db[CH_PATH], to[1024], id[37];
    nh_server tls;
    if (make_certs() != 0) {
        fprintf(stderr, "   skipped: the openssl command is not installed\n");
        return;
    }
    nh_server_start_tls(&tls, tls_cert, tls_key, tls_ca);
    nh_stream_create(&tls, "SEC", "outbox.>");
    ch_new_store(db, "tls.db");
    enqueue_one(db, NULL, "T", "A", "a", "{}", NULL, id);

    /* tls=true without the CA, then no tls=true at all (nats.c upgrades to
     * TLS when the server asks, and the certificate check still fails). */
    for (int k = 0; k < 2; k++) {
        outbox_relay *r = NULL;
        outbox_error err;
        snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=SEC%s", tls.port,
                 k == 0 ? "&tls=true" : "");
        ASSERT(ch_relay_new(&r, db, to, 1, &err) != OUTBOX_OK);
        fprintf(stderr, "   (%s) -> %s\n", k == 0 ? "tls=true, CA not trusted" : "no tls=true",
                err.message);
    }
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=SEC&ca_file=/nonexistent/ca.pem", tls.port);
    expect_error(db, to, OUTBOX_ECONFIG, "ca_file");
    ASSERT_EQ(nh_stream_count(&tls, "SEC"), 0);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);

    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=SEC&tls=true&ca_file=%s", tls.port, tls_ca);
    ch_drain_once(db, to);
    ASSERT_EQ(nh_stream_count(&tls, "SEC"), 1);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);
    nh_server_stop(&tls);
}

/* The stream disappears after start-up: JetStream has no responder for
 * the subject, which fails the message for good (with the reason) and holds
 * back the later messages of its aggregate. */
TEST(stream_deleted)
{
    char db[CH_PATH], to[256], id[37];
    outbox_relay *r = NULL;
    outbox_error err;
    ch_new_store(db, "deleted.db");
    nh_stream_create(&server, "GONE", "gone.>");
    enqueue_one(db, NULL, "T", "A", "g1", "{}", NULL, id);
    enqueue_one(db, NULL, "T", "A", "g1", "{}", NULL, id);
    snprintf(to, sizeof to, "%s?stream=GONE&subject=gone.{type}", server.url);
    ASSERT_OK(ch_relay_new(&r, db, to, 1, &err), &err);
    {
        jsCtx *js = NULL;
        jsErrCode jerr = 0;
        natsConnection *nc = nh_connect(&server, &js);
        ASSERT_EQ(js_DeleteStream(js, "GONE", NULL, &jerr), NATS_OK);
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
    }
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 1);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);
    ch_expect_failed_error(db, "no JetStream stream listens");
}

/* A message of an aggregate is published only after the previous one of
 * that aggregate in the batch was acked: when the first is refused (no
 * stream listens on its subject any more), the second is not sent at all
 * (it would otherwise be stored ahead of the first), while another
 * aggregate's message in the same batch goes through. */
TEST(one_unacked_per_aggregate)
{
    char db[CH_PATH], to[256], id[37];
    outbox_relay *r = NULL;
    outbox_error err;
    jsCtx *js = NULL;
    jsErrCode jerr = 0;
    natsConnection *nc;

    ch_new_store(db, "waves.db");
    nh_stream_create(&server, "HALF", "half.>");
    enqueue_one(db, NULL, "Bad", "A", "a", "{\"n\":0}", NULL, id);
    enqueue_one(db, NULL, "Ok", "A", "a", "{\"n\":1}", NULL, id);
    enqueue_one(db, NULL, "Ok", "A", "b", "{\"n\":0}", NULL, id);
    snprintf(to, sizeof to, "%s?stream=HALF&subject=half.{type}", server.url);
    ASSERT_OK(ch_relay_new(&r, db, to, 1, &err), &err);
    /* After start-up the stream stops listening on half.Bad. */
    nc = nh_connect(&server, &js);
    ASSERT_EQ(js_DeleteStream(js, "HALF", NULL, &jerr), NATS_OK);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nh_stream_create(&server, "HALF", "half.Ok");
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
    ASSERT_EQ(nh_stream_count(&server, "HALF"), 1); /* b only */
    ASSERT_EQ(ch_outbox_count(db, "failed"), 1);    /* a n=0 */
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);   /* a n=1, held back */
    ASSERT_EQ(ch_outbox_count(db, NULL), 2);
}

TEST(server_restarts)
{
    char db[CH_PATH], to[256], dump[CH_PATH];
    ch_producer p;
    relay_thread t;
    uint64_t rng = ch_seed();
    int restarts = 10, total = test_scaled(30000, 500);
    ch_report rep;

    fprintf(stderr, "   seed %llu, %d messages, %d restarts\n", (unsigned long long)rng, total,
            restarts);
    ch_new_store(db, "restart.db");
    nh_stream_create(&server, "RESTART", "rs.>");
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.total = total;
    p.aggregates = 50;
    p.max_txn = 50;
    p.pause_us = (int)(125000000LL / total); /* commits spread over ~5 s of restarts */
    p.seed = rng;
    ch_producer_start(&p);

    snprintf(to, sizeof to, "%s?stream=RESTART&subject=rs.{aggregate_type}.{type}&ack_timeout=2s",
             server.url);
    memset(&t, 0, sizeof t);
    ASSERT_OK(ch_relay_new(&t.relay, db, to, 0, &t.err), &t.err);
    if (relay_thread_start(&t) != 0) TEST_FAIL_("pthread_create");

    for (int i = 0; i < restarts; i++) {
        ch_sleep_ms(ch_rand_range(&rng, 100, 600));
        nh_server_kill(&server);
        ch_sleep_ms(ch_rand_range(&rng, 50, 500));
        nh_server_start(&server);
    }
    ch_producer_join(&p);
    ch_wait_drained(db, 0, 120000, NULL); /* from the last restart */
    relay_thread_stop(&t);
    ASSERT_OK(t.rc, &t.err);
    outbox_relay_stats stats;
    outbox_relay_get_stats(t.relay, &stats);
    outbox_relay_free(t.relay);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 0);

    ch_path(dump, "restart.jsonl");
    nh_stream_dump(&server, "RESTART", "rs.>", dump);
    ch_check_file(dump, &p, &rep);
    fprintf(stderr, "   relay: %llu published, %llu retried\n", (unsigned long long)stats.published,
            (unsigned long long)stats.retried);
    ch_report_print("   nats-server killed and restarted 10 times", &rep);
    ASSERT_EQ(rep.lost, 0);
    ASSERT_EQ(rep.foreign, 0);
    ASSERT_EQ(rep.torn, 0);
    ASSERT_EQ(rep.duplicates, 0); /* Nats-Msg-Id within the duplicate window */
    ASSERT_EQ(rep.violations, 0);
    ch_producer_free(&p);
}

static void log_to_stderr(void *user, int level, const char *component, const char *message)
{
    (void)user;
    fprintf(stderr, "   [%s] %s: %s\n", outbox_log_level_name(level), component, message);
}

/* ------------------------------------------------------------------------
 * creds=: JWT credentials against a nats-server in operator mode
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_CRYPTO

/* The secrets of a creds file that must never show: the seed (its first
 * 12 characters are enough to tell) and the JWT (whole, or its claims). */
typedef struct secrets {
    char seed[16];
    const char *jwt;
    char claims[48];
} secrets;

static void secrets_init(secrets *s, const char *seed_text, const char *jwt)
{
    const char *dot = strchr(jwt, '.');
    snprintf(s->seed, sizeof s->seed, "%.12s", seed_text);
    s->jwt = jwt;
    snprintf(s->claims, sizeof s->claims, "%.40s", dot ? dot + 1 : jwt);
}

static void assert_no_secret(const char *what, const char *text, const secrets *s)
{
    if (strstr(text, s->seed) != NULL || strstr(text, s->jwt) != NULL ||
        strstr(text, s->claims) != NULL)
        TEST_FAIL_("%s shows a secret of the creds file: %s", what, text);
}

/* outbox_relay_new with `to` must fail at start-up: returns the code, the
 * message in msg; no relay is left. */
static int start_fails(const char *db, const char *to, char *msg, size_t cap)
{
    outbox_relay *r = NULL;
    outbox_error err;
    int rc = ch_relay_new(&r, db, to, 1, &err);
    if (rc == OUTBOX_OK) {
        outbox_relay_free(r);
        TEST_FAIL_("%s: start-up succeeded, expected an error", to);
    }
    ASSERT(r == NULL);
    snprintf(msg, cap, "%s", err.message);
    return rc;
}

/* Runs a --once relay with the good creds to the end.  nats.c 3.4 drops
 * the nonce signature when it starts with a zero byte (see
 * NH_CREDS_ATTEMPTS): the destination tries three times itself, and a
 * start-up refused all the same is tried again here, with a note; any
 * other error fails the test. */
static void drain_with_creds(const char *db, const char *to)
{
    outbox_relay *r = NULL;
    outbox_error err;
    int rc = OUTBOX_ECONFIG;
    for (int attempt = 0; attempt < NH_CREDS_ATTEMPTS && r == NULL; attempt++) {
        rc = ch_relay_new(&r, db, to, 1, &err);
        if (rc == OUTBOX_ECONFIG && strstr(err.message, "refused the credentials") != NULL)
            fprintf(stderr, "   note: good creds refused once (nats.c sent no nonce signature), "
                            "trying again\n");
        else if (rc != OUTBOX_OK)
            break;
    }
    if (rc != OUTBOX_OK) TEST_FAIL_("%s: %d %s", to, rc, err.message);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) TEST_FAIL_("cannot write %s", path);
}

/* creds=FILE against nats-server in operator mode (a memory resolver with
 * the account preloaded, JetStream enabled through the account's limits):
 * the good user's creds deliver every message, and the relay's errors and
 * log never show the seed or the JWT; a user of an account the operator
 * did not sign, an unreadable creds file, a missing one, and no creds at
 * all fail at start-up with the reason, nothing marked sent. */
TEST(creds)
{
    nj_key op, sys, acct, user, rogue_acct, rogue_user;
    char *op_jwt = NULL, *sys_jwt = NULL, *acct_jwt = NULL, *user_jwt = NULL, *rogue_jwt = NULL;
    char db[CH_PATH], good[CH_PATH], rogue[CH_PATH], garbage[CH_PATH], badseed[CH_PATH];
    char op_file[CH_PATH], conf[CH_PATH], to[2048], msg[1024], ids[6][37];
    char text[16384], seed_bad[64];
    secrets sec, rogue_sec;
    nh_server js;
    collected c;
    int rc, k, n = 6;

    if (nj_key_new(&op, NJ_OPERATOR) != 0) {
        fprintf(stderr, "   skipped: libcrypto here cannot make ed25519 keys\n");
        return;
    }
    if (nj_key_new(&sys, NJ_ACCOUNT) != 0 || nj_key_new(&acct, NJ_ACCOUNT) != 0 ||
        nj_key_new(&user, NJ_USER) != 0 || nj_key_new(&rogue_acct, NJ_ACCOUNT) != 0 ||
        nj_key_new(&rogue_user, NJ_USER) != 0)
        TEST_FAIL_("ed25519 key generation failed");
    ASSERT_EQ(op.public_key[0], 'O');
    ASSERT_EQ(acct.public_key[0], 'A');
    ASSERT_EQ(strlen(acct.public_key), 56);
    ASSERT(strncmp(user.seed_text, "SU", 2) == 0);
    ASSERT_EQ(strlen(user.seed_text), 58);

    op_jwt = nj_jwt(&op, op.public_key, "outbox-test-operator",
                    json_pack("{s:s, s:s, s:i}", "system_account", sys.public_key, "type",
                              "operator", "version", 2));
    sys_jwt = nj_jwt(&op, sys.public_key, "SYS", nj_account_claims(0));
    acct_jwt = nj_jwt(&op, acct.public_key, "APP", nj_account_claims(1));
    user_jwt = nj_jwt(&acct, user.public_key, "relay", nj_user_claims());
    /* Signed by an account key that the operator never signed. */
    rogue_jwt = nj_jwt(&rogue_acct, rogue_user.public_key, "relay", nj_user_claims());
    if (!op_jwt || !sys_jwt || !acct_jwt || !user_jwt || !rogue_jwt)
        TEST_FAIL_("cannot make the JWTs");
    secrets_init(&sec, user.seed_text, user_jwt);
    secrets_init(&rogue_sec, rogue_user.seed_text, rogue_jwt);

    ch_path(good, "good.creds");
    ch_path(rogue, "rogue.creds");
    ch_path(garbage, "garbage.creds");
    ch_path(badseed, "badseed.creds");
    ch_path(op_file, "operator.jwt");
    ch_path(conf, "operator.conf");
    ASSERT_EQ(nj_creds_write(good, user_jwt, user.seed_text), 0);
    ASSERT_EQ(nj_creds_write(rogue, rogue_jwt, rogue_user.seed_text), 0);
    write_text(garbage, "this is not a NATS credentials file\n");
    /* The good JWT with its seed one character off (checksum mismatch). */
    snprintf(seed_bad, sizeof seed_bad, "%s", user.seed_text);
    seed_bad[20] = seed_bad[20] == 'A' ? 'B' : 'A';
    ASSERT_EQ(nj_creds_write(badseed, user_jwt, seed_bad), 0);
    write_text(op_file, op_jwt);
    snprintf(text, sizeof text,
             "operator: \"%s\"\n"
             "system_account: %s\n"
             "resolver: MEMORY\n"
             "resolver_preload: {\n  %s: \"%s\"\n  %s: \"%s\"\n}\n",
             op_file, sys.public_key, sys.public_key, sys_jwt, acct.public_key, acct_jwt);
    write_text(conf, text);

    memset(&js, 0, sizeof js);
    snprintf(js.conf, sizeof js.conf, "%s", conf);
    snprintf(js.creds, sizeof js.creds, "%s", good);
    nh_server_start(&js);
    nh_stream_create(&js, "JWT", "outbox.>");

    /* 1. The good creds: every message delivered, no secret in the log. */
    ch_new_store(db, "creds.db");
    for (k = 0; k < n; k++)
        enqueue_one(db, NULL, "Signed", "User", "u-1", "{\"ok\":true}", NULL, ids[k]);
    log_reset();
    log_capture_install(OUTBOX_LOG_DEBUG);
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port, good);
    drain_with_creds(db, to);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);
    memset(&c, 0, sizeof c);
    ASSERT_EQ(nh_stream_read(&js, "JWT", "outbox.>", collect, &c), n);
    for (k = 0; k < n; k++) {
        ASSERT_STREQ(c.id[k], ids[k]);
        ASSERT_STREQ(c.subject[k], "outbox.User.Signed");
    }

    /* 2. Creds the server must refuse, or that cannot be used at all. */
    enqueue_one(db, NULL, "Held", "User", "u-9", "{}", NULL, ids[0]);
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port, rogue);
    rc = start_fails(db, to, msg, sizeof msg);
    fprintf(stderr, "   (user of an untrusted account) -> %s\n", msg);
    ASSERT_EQ(rc, OUTBOX_ECONFIG);
    ASSERT_CONTAINS(msg, "refused the credentials");
    assert_no_secret("error", msg, &rogue_sec);

    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port, garbage);
    rc = start_fails(db, to, msg, sizeof msg);
    fprintf(stderr, "   (garbage creds file) -> %d %s\n", rc, msg);
    ASSERT_EQ(rc, OUTBOX_ECONFIG);
    ASSERT_CONTAINS(msg, "cannot use creds file");
    ASSERT_CONTAINS(msg, "garbage.creds");
    assert_no_secret("error", msg, &sec);

    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port, badseed);
    rc = start_fails(db, to, msg, sizeof msg);
    fprintf(stderr, "   (creds file with a corrupted seed) -> %d %s\n", rc, msg);
    ASSERT_EQ(rc, OUTBOX_ECONFIG);
    ASSERT_CONTAINS(msg, "badseed.creds");
    assert_no_secret("error", msg, &sec);
    if (strstr(msg, seed_bad) != NULL) TEST_FAIL_("the error shows the (corrupted) seed: %s", msg);

    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port,
             test_path("missing.creds"));
    rc = start_fails(db, to, msg, sizeof msg);
    fprintf(stderr, "   (missing creds file) -> %d %s\n", rc, msg);
    ASSERT_EQ(rc, OUTBOX_ECONFIG);
    ASSERT_CONTAINS(msg, "cannot read creds file");
    ASSERT_CONTAINS(msg, "missing.creds");
    assert_no_secret("error", msg, &sec);

    /* 3. No credentials at all against the operator-mode server. */
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT", js.port);
    rc = start_fails(db, to, msg, sizeof msg);
    fprintf(stderr, "   (no creds) -> %s\n", msg);
    ASSERT_EQ(rc, OUTBOX_ECONFIG);
    ASSERT_CONTAINS(msg, "refused the credentials");
    assert_no_secret("error", msg, &sec);

    /* Nothing was marked sent by the failed start-ups. */
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);
    ASSERT_EQ(nh_stream_count(&js, "JWT"), n);
    /* ... and the held message goes with the good creds. */
    snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=JWT&creds=%s", js.port, good);
    drain_with_creds(db, to);
    ASSERT_EQ(ch_outbox_count(db, NULL), 0);
    ASSERT_EQ(nh_stream_count(&js, "JWT"), n + 1);

    /* The log: written (the connection line at least), no secret in it. */
    outbox_log_set(getenv("OUTBOX_TEST_VERBOSE") ? log_to_stderr : NULL, NULL, OUTBOX_LOG_DEBUG);
    pthread_mutex_lock(&log_mu);
    ASSERT_CONTAINS(log_text, "connected to nats://127.0.0.1");
    assert_no_secret("the log", log_text, &sec);
    assert_no_secret("the log", log_text, &rogue_sec);
    if (strstr(log_text, seed_bad) != NULL) TEST_FAIL_("the log shows the (corrupted) seed");
    pthread_mutex_unlock(&log_mu);

    nh_server_stop(&js);
    free(op_jwt);
    free(sys_jwt);
    free(acct_jwt);
    free(user_jwt);
    free(rogue_jwt);
    nj_key_free(&op);
    nj_key_free(&sys);
    nj_key_free(&acct);
    nj_key_free(&user);
    nj_key_free(&rogue_acct);
    nj_key_free(&rogue_user);
}

#else

TEST(creds)
{
    fprintf(stderr, "   skipped: this build has no libcrypto (the test signs its JWTs with it)\n");
}

#endif /* OUTBOX_HAVE_CRYPTO */

/* ------------------------------------------------------------------------
 * Oversized messages against a server with a small max_payload
 * ---------------------------------------------------------------------- */

/* A message larger than the server's max_payload fails at once as
 * rejected, with the reason (it used to be retried as if the failure were
 * temporary), whether its payload alone is too large or only with its
 * headers; its aggregate's next message waits behind it, other aggregates
 * flow; start-up says that the server's max_payload is below this
 * process's message limit. */
TEST(oversized)
{
    char db[CH_PATH], conf[CH_PATH], to[256], big_id[37], edge_id[37];
    static char payload[9000];
    nh_server small;
    outbox_relay *r = NULL;
    outbox_error err;
    outbox_relay_stats stats;

    memset(&small, 0, sizeof small);
    ch_path(conf, "small-payload.conf");
    {
        FILE *f = fopen(conf, "w");
        if (f == NULL || fputs("max_payload: 4096\n", f) < 0 || fclose(f) != 0)
            TEST_FAIL_("cannot write %s", conf);
    }
    snprintf(small.conf, sizeof small.conf, "%s", conf);
    nh_server_start(&small);
    nh_stream_create(&small, "SIZE", "size.>");

    ch_new_store(db, "oversized.db");
    snprintf(payload, sizeof payload, "{\"pad\":\"%08000d\"}", 0);
    enqueue_one(db, NULL, "Big", "A", "big", payload, NULL, big_id);
    enqueue_one(db, NULL, "Next", "A", "big", "{}", NULL, NULL);
    snprintf(payload, sizeof payload, "{\"pad\":\"%03950d\"}", 0); /* fits, not with headers */
    enqueue_one(db, NULL, "Edge", "A", "edge", payload, NULL, edge_id);
    enqueue_one(db, NULL, "Ok", "A", "ok", "{}", NULL, NULL);

    log_reset();
    log_capture_install(OUTBOX_LOG_WARN);
    snprintf(to, sizeof to, "%s?stream=SIZE&subject=size.{type}", small.url);
    ASSERT_OK(ch_relay_new(&r, db, to, 1, &err), &err);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_get_stats(r, &stats);
    outbox_relay_free(r);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    if (getenv("OUTBOX_TEST_VERBOSE")) outbox_log_set(log_to_stderr, NULL, OUTBOX_LOG_DEBUG);

    ASSERT_EQ(stats.failed, 2);
    ASSERT_EQ(stats.retried, 0);
    ASSERT_EQ(ch_outbox_count(db, "failed"), 2);
    ASSERT_EQ(ch_outbox_count(db, "pending"), 1);  /* Next, held behind Big */
    ASSERT_EQ(nh_stream_count(&small, "SIZE"), 1); /* Ok */
    {
        sqlite3 *h = ch_db_open(db);
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM outbox WHERE id = '%s' AND attempts = 1 AND last_error "
                 "LIKE '%%payload is 8010 bytes, more than the NATS server''s max_payload of "
                 "4096 bytes%%'",
                 big_id);
        ASSERT_EQ(ch_db_count(h, sql), 1);
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM outbox WHERE id = '%s' AND attempts = 1 AND last_error "
                 "LIKE '%%with its headers is larger than the NATS server''s max_payload%%'",
                 edge_id);
        ASSERT_EQ(ch_db_count(h, sql), 1);
        sqlite3_close(h);
    }
    ASSERT_EQ(log_count("accepts messages of at most 4096 bytes (max_payload), less than the "
                        "1048576 bytes this process lets a message have"),
              1);
    nh_server_stop(&small);
}

int main(void)
{
    if (getenv("OUTBOX_TEST_VERBOSE")) outbox_log_set(log_to_stderr, NULL, OUTBOX_LOG_DEBUG);
    nh_require_server();
    memset(&server, 0, sizeof server);
    nh_server_start(&server);
    RUN(contract);
    RUN(dedup);
    RUN(config_errors);
    RUN(tls);
    RUN(creds);
    RUN(stream_deleted);
    RUN(one_unacked_per_aggregate);
    RUN(oversized);
    RUN(server_restarts);
    nh_server_stop(&server);
    nats_Close();
    return 0;
}

#endif /* OUTBOX_HAVE_NATS */
