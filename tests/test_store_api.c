/*
 * test_store_api.c - the public store handle (outbox.h, "Store handle"),
 * through outbox.h alone, on SQLite and on PostgreSQL when built (a server
 * started by tests/support/pg.c): open by URL and its errors, init and the
 * schema check, enqueue, get, list, status (also into a caller's smaller
 * struct), retry and drop (all or nothing, the archive callback and its
 * error), purge and inbox purge, each with its argument errors.  Messages
 * are made Failed the way production does it: a relay whose destination
 * rejects them.  Also: option structs that carry their size (an older,
 * shorter struct still works; size 0 is refused).
 */
#include "test.h"

#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#endif

#include <stddef.h>
#include <string.h>

/* The relay's in-process destination: rejects type "Bad", accepts the rest. */
static int reject_bad(void *user, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    if (strcmp(outbox_msg_type(msg), "Bad") == 0) {
        snprintf(err->message, sizeof err->message, "refused by the test destination");
        return OUTBOX_EREJECTED;
    }
    return OUTBOX_OK;
}

/* Runs a relay once over url: "Bad" messages go Failed at once, the others
 * are kept as sent (OUTBOX_ON_SENT_MARK). */
static void relay_once(const char *url)
{
    outbox_relay_options opts;
    outbox_relay *relay = NULL;
    outbox_error err = {0, ""};
    outbox_relay_options_init(&opts);
    opts.once = 1;
    opts.max_attempts = 1;
    opts.on_sent = OUTBOX_ON_SENT_MARK;
    opts.publish = reject_bad;
    ASSERT_OK(outbox_relay_new(&relay, url, NULL, &opts, &err), &err);
    ASSERT_OK(outbox_relay_run(relay, &err), &err);
    outbox_relay_free(relay);
}

static void enqueue(outbox_store *store, const char *id, const char *type, const char *agg)
{
    outbox_msg *msg = NULL;
    outbox_error err = {0, ""};
    ASSERT_OK(outbox_msg_new(&msg, type, "Thing", agg, "{\"n\":1}", &err), &err);
    ASSERT_OK(outbox_msg_set_id(msg, id, &err), &err);
    ASSERT_OK(outbox_store_enqueue(store, msg, &err), &err);
    ASSERT_EQ(outbox_store_enqueue(store, msg, &err), OUTBOX_EEXISTS);
    outbox_msg_free(msg);
}

/* The status of id, or -1 when it is not in the store. */
static int status_of(outbox_store *store, const char *id)
{
    outbox_msg *msg = NULL;
    outbox_error err = {0, ""};
    int rc = outbox_store_get(store, id, &msg, &err), status;
    if (rc == OUTBOX_ENOTFOUND) {
        ASSERT(msg == NULL);
        return -1;
    }
    ASSERT_OK(rc, &err);
    status = outbox_msg_status(msg);
    outbox_msg_free(msg);
    return status;
}

typedef struct collected {
    size_t count;
    char ids[8][37];
    int stop_after; /* 0: never stop */
} collected;

static int collect(void *user, const outbox_msg *msg)
{
    collected *c = user;
    if (c->count < 8) snprintf(c->ids[c->count], 37, "%s", outbox_msg_id(msg));
    c->count++;
    return c->stop_after > 0 && c->count >= (size_t)c->stop_after;
}

static size_t list_count(outbox_store *store, int status, int64_t limit)
{
    outbox_list_params p;
    outbox_list_params_init(&p);
    p.status = status;
    p.limit = limit;
    collected c;
    outbox_error err = {0, ""};
    memset(&c, 0, sizeof c);
    ASSERT_OK(outbox_store_list(store, &p, collect, &c, &err), &err);
    return c.count;
}

typedef struct archive {
    int fail;        /* return this error instead of archiving */
    size_t calls, n; /* what the callback was given */
    char first[37];
} archive;

static int archive_fn(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    archive *a = user;
    a->calls++;
    a->n = n;
    if (n > 0) snprintf(a->first, sizeof a->first, "%s", outbox_msg_id(msgs[0]));
    if (a->fail) {
        snprintf(err->message, sizeof err->message, "archive full");
        err->code = a->fail;
        return a->fail;
    }
    return OUTBOX_OK;
}

#define ID_BAD "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c01"
#define ID_OK1 "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c02"
#define ID_OK2 "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c03"
#define ID_UNKNOWN "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5cff"

/* Every call of the store handle on the store at url (no schema yet),
 * whose driver answers to scheme. */
static void store_api_contract(const char *url, const char *scheme)
{
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    outbox_msg *msg = NULL;
    outbox_status st;
    int from = -1, to = -1;
    int64_t count = -1;
    const char *ok1[] = {ID_OK1};
    const char *bad_and_unknown[] = {ID_BAD, ID_UNKNOWN};
    const char *bad_and_sent[] = {ID_BAD, ID_OK1};
    const char *bad_upper[] = {"0190B3C8-7D2A-7C3E-9A41-2F6D8E1B5C01"};
    archive arch;

    ASSERT_OK(outbox_store_open(url, &store, &err), &err);
    ASSERT_STREQ(outbox_store_scheme(store), scheme);

    /* Schema: missing, created, up to date. */
    ASSERT_EQ(outbox_store_check_schema(store, &err), OUTBOX_ENOSCHEMA);
    ASSERT_OK(outbox_store_init(store, &from, &to, &err), &err);
    ASSERT_EQ(from, 0);
    ASSERT(to > 0);
    ASSERT_OK(outbox_store_init(store, &from, NULL, &err), &err);
    ASSERT_EQ(from, to);
    ASSERT_OK(outbox_store_check_schema(store, &err), &err);

    enqueue(store, ID_BAD, "Bad", "a");
    enqueue(store, ID_OK1, "Ok", "b");
    enqueue(store, ID_OK2, "Ok", "c");
    ASSERT_EQ(outbox_store_enqueue(store, NULL, &err), OUTBOX_EINVAL);

    /* get: bookkeeping of a pending message; ids in either case; errors. */
    ASSERT_OK(outbox_store_get(store, ID_BAD, &msg, &err), &err);
    ASSERT_STREQ(outbox_msg_id(msg), ID_BAD);
    ASSERT_STREQ(outbox_msg_type(msg), "Bad");
    ASSERT_EQ(outbox_msg_status(msg), OUTBOX_STATUS_PENDING);
    ASSERT_STREQ(outbox_msg_status_name(outbox_msg_status(msg)), "pending");
    ASSERT_EQ(outbox_msg_attempts(msg), 0);
    ASSERT(outbox_msg_seq(msg) > 0);
    /* Due at once: 0 (SQLite) or the server's enqueue time (PostgreSQL). */
    ASSERT(outbox_msg_available_at(msg) <= outbox_msg_occurred_at(msg) + INT64_C(60000000));
    ASSERT_EQ(outbox_msg_sent_at(msg), 0);
    ASSERT(outbox_msg_last_error(msg) == NULL);
    outbox_msg_free(msg);
    msg = NULL;
    ASSERT_OK(outbox_store_get(store, bad_upper[0], &msg, &err), &err);
    ASSERT_STREQ(outbox_msg_id(msg), ID_BAD);
    outbox_msg_free(msg);
    msg = (outbox_msg *)&err; /* must be reset to NULL on failure */
    ASSERT_EQ(outbox_store_get(store, ID_UNKNOWN, &msg, &err), OUTBOX_ENOTFOUND);
    ASSERT(msg == NULL);
    ASSERT_EQ(outbox_store_get(store, "1234", &msg, &err), OUTBOX_EBADID);
    ASSERT_EQ(outbox_store_get(store, NULL, &msg, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_get(NULL, ID_BAD, &msg, &err), OUTBOX_EINVAL);

    /* list: seq order, status filter, limit, stopping early, bad params. */
    {
        outbox_list_params p;
        outbox_list_params_init(&p);
        collected c;
        memset(&c, 0, sizeof c);
        ASSERT_OK(outbox_store_list(store, &p, collect, &c, &err), &err);
        ASSERT_EQ(c.count, 3);
        ASSERT_STREQ(c.ids[0], ID_BAD);
        ASSERT_STREQ(c.ids[2], ID_OK2);
        memset(&c, 0, sizeof c);
        c.stop_after = 2;
        ASSERT_OK(outbox_store_list(store, &p, collect, &c, &err), &err);
        ASSERT_EQ(c.count, 2);
        p.status = 7;
        ASSERT_EQ(outbox_store_list(store, &p, collect, &c, &err), OUTBOX_EINVAL);
        p.status = -1;
        p.limit = -1;
        ASSERT_EQ(outbox_store_list(store, &p, collect, &c, &err), OUTBOX_EINVAL);
        ASSERT_EQ(outbox_store_list(store, &p, NULL, &c, &err), OUTBOX_EINVAL);
        /* NULL params: every message; a struct not filled by _init: refused. */
        memset(&c, 0, sizeof c);
        ASSERT_OK(outbox_store_list(store, NULL, collect, &c, &err), &err);
        ASSERT_EQ(c.count, 3);
        p.size = 0;
        p.limit = 0;
        ASSERT_EQ(outbox_store_list(store, &p, collect, &c, &err), OUTBOX_EINVAL);
        ASSERT_CONTAINS(err.message, "outbox_list_params_init");
    }
    ASSERT_EQ(list_count(store, -1, 2), 2);
    ASSERT_EQ(list_count(store, OUTBOX_STATUS_PENDING, 0), 3);
    ASSERT_EQ(list_count(store, OUTBOX_STATUS_FAILED, 0), 0);

    /* status: the whole struct, and a caller's older, smaller one. */
    ASSERT_OK(outbox_store_status(store, &st, sizeof st, &err), &err);
    ASSERT_EQ(st.schema_version, to);
    ASSERT_EQ(st.pending, 3);
    ASSERT_EQ(st.failed, 0);
    ASSERT_EQ(st.blocked_counted, 1);
    {
        unsigned char raw[sizeof(outbox_status) + 16];
        size_t small = offsetof(outbox_status, lease_owner);
        memset(raw, 0xab, sizeof raw);
        ASSERT_OK(outbox_store_status(store, (outbox_status *)raw, small, &err), &err);
        ASSERT_EQ(((outbox_status *)raw)->pending, 3);
        for (size_t i = small; i < sizeof raw; i++)
            ASSERT_EQ(raw[i], 0xab); /* nothing written past the caller's size */
    }
    ASSERT_EQ(outbox_store_status(store, &st, 0, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_status(store, NULL, sizeof st, &err), OUTBOX_EINVAL);

    /* retry and drop refuse what is not Failed, and bad arguments. */
    ASSERT_EQ(outbox_store_retry(store, ok1, 1, 0, &count, &err), OUTBOX_EINVAL);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(outbox_store_retry(store, ok1, 1, 1, &count, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_retry(store, NULL, 0, 0, &count, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_retry(store, NULL, 1, 0, &count, &err), OUTBOX_EINVAL);
    {
        const char *malformed[] = {"not-a-uuid"};
        ASSERT_EQ(outbox_store_retry(store, malformed, 1, 0, &count, &err), OUTBOX_EBADID);
        ASSERT_EQ(outbox_store_drop(store, malformed, 1, 0, NULL, NULL, &count, &err),
                  OUTBOX_EBADID);
    }
    ASSERT_EQ(status_of(store, ID_OK1), OUTBOX_STATUS_PENDING);

    /* The relay: Bad goes Failed, the others are sent (kept, marked). */
    relay_once(url);
    ASSERT_EQ(status_of(store, ID_BAD), OUTBOX_STATUS_FAILED);
    ASSERT_EQ(status_of(store, ID_OK1), OUTBOX_STATUS_SENT);
    ASSERT_OK(outbox_store_get(store, ID_BAD, &msg, &err), &err);
    ASSERT_EQ(outbox_msg_attempts(msg), 1);
    ASSERT_CONTAINS(outbox_msg_last_error(msg), "refused by the test destination");
    outbox_msg_free(msg);
    ASSERT_OK(outbox_store_get(store, ID_OK2, &msg, &err), &err);
    ASSERT(outbox_msg_sent_at(msg) > 0);
    ASSERT_STREQ(outbox_msg_status_name(outbox_msg_status(msg)), "sent");
    outbox_msg_free(msg);
    ASSERT_OK(outbox_store_status(store, &st, sizeof st, &err), &err);
    ASSERT_EQ(st.pending, 0);
    ASSERT_EQ(st.sent, 2);
    ASSERT_EQ(st.failed, 1);
    ASSERT_EQ(list_count(store, OUTBOX_STATUS_FAILED, 0), 1);
    ASSERT_EQ(list_count(store, OUTBOX_STATUS_SENT, 0), 2);

    /* retry of a sent message: refused, nothing changed. */
    ASSERT_EQ(outbox_store_retry(store, bad_and_sent, 2, 0, &count, &err), OUTBOX_EINVAL);
    ASSERT_EQ(status_of(store, ID_BAD), OUTBOX_STATUS_FAILED);

    /* drop is all or nothing: an unknown id, a message not Failed, an
     * archive that fails: nothing deleted. */
    memset(&arch, 0, sizeof arch);
    ASSERT_EQ(outbox_store_drop(store, bad_and_unknown, 2, 0, archive_fn, &arch, &count, &err),
              OUTBOX_ENOTFOUND);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(outbox_store_drop(store, bad_and_sent, 2, 0, archive_fn, &arch, &count, &err),
              OUTBOX_EINVAL);
    ASSERT_EQ(arch.calls, 0); /* refused before the archive saw anything */
    arch.fail = OUTBOX_EIO;
    ASSERT_EQ(outbox_store_drop(store, NULL, 0, 1, archive_fn, &arch, &count, &err), OUTBOX_EIO);
    ASSERT_CONTAINS(err.message, "archive full");
    ASSERT_EQ(arch.calls, 1);
    ASSERT_EQ(status_of(store, ID_BAD), OUTBOX_STATUS_FAILED);
    ASSERT_EQ(outbox_store_drop(store, NULL, 0, 0, NULL, NULL, &count, &err), OUTBOX_EINVAL);

    /* retry: Failed becomes pending with 0 attempts; ids in either case. */
    ASSERT_OK(outbox_store_retry(store, bad_upper, 1, 0, &count, &err), &err);
    ASSERT_EQ(count, 1);
    ASSERT_OK(outbox_store_get(store, ID_BAD, &msg, &err), &err);
    ASSERT_EQ(outbox_msg_status(msg), OUTBOX_STATUS_PENDING);
    ASSERT_EQ(outbox_msg_attempts(msg), 0);
    outbox_msg_free(msg);

    /* Failed again; dropped by id with the archive. */
    relay_once(url);
    ASSERT_EQ(status_of(store, ID_BAD), OUTBOX_STATUS_FAILED);
    memset(&arch, 0, sizeof arch);
    ASSERT_OK(outbox_store_drop(store, bad_upper, 1, 0, archive_fn, &arch, &count, &err), &err);
    ASSERT_EQ(count, 1);
    ASSERT_EQ(arch.calls, 1);
    ASSERT_EQ(arch.n, 1);
    ASSERT_STREQ(arch.first, ID_BAD);
    ASSERT_EQ(status_of(store, ID_BAD), -1);
    ASSERT_OK(outbox_store_drop(store, NULL, 0, 1, NULL, NULL, &count, &err), &err);
    ASSERT_EQ(count, 0);

    /* purge: only sent messages older than the age. */
    ASSERT_OK(outbox_store_purge(store, 3600 * 1000, &count, &err), &err);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(outbox_store_purge(store, -1, &count, &err), OUTBOX_EINVAL);
    ASSERT_OK(outbox_store_purge(store, 0, &count, &err), &err);
    ASSERT_EQ(count, 2);
    ASSERT_EQ(list_count(store, -1, 0), 0);

    /* inbox purge. */
    ASSERT_OK(outbox_store_inbox_purge(store, INT64_C(30) * 86400 * 1000, 0, &count, &err), &err);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(outbox_store_inbox_purge(store, -1, 0, &count, &err), OUTBOX_EINVAL);

    outbox_store_close(store);
    outbox_store_close(NULL);
}

TEST(open_errors)
{
    outbox_store *store = (outbox_store *)&store;
    outbox_error err = {0, ""};
    ASSERT_EQ(outbox_store_open("nosuch://host/db", &store, &err), OUTBOX_EBADURL);
    ASSERT(store == NULL);
    ASSERT_CONTAINS(err.message, "nosuch");
    ASSERT_EQ(outbox_store_open("no scheme", &store, &err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox_store_open("", &store, &err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox_store_open(NULL, &store, &err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox_store_open("sqlite:x.db", NULL, &err), OUTBOX_EINVAL);
#ifndef OUTBOX_HAVE_LIBPQ
    ASSERT_EQ(outbox_store_open("postgres://u@h/db", &store, &err), OUTBOX_ENOTBUILT);
#endif
    /* A password never reaches the message. */
    ASSERT_EQ(outbox_store_open("nosuch://u:hunter2@h/db", &store, &err), OUTBOX_EBADURL);
    ASSERT(strstr(err.message, "hunter2") == NULL);
    /* Every call refuses a NULL store. */
    ASSERT_EQ(outbox_store_init(NULL, NULL, NULL, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_check_schema(NULL, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_purge(NULL, 0, NULL, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_inbox_purge(NULL, 0, 0, NULL, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_store_drop(NULL, NULL, 0, 1, NULL, NULL, NULL, &err), OUTBOX_EINVAL);
    ASSERT_STREQ(outbox_store_scheme(NULL), "");
}

TEST(sqlite)
{
    char url[600];
    snprintf(url, sizeof url, "sqlite:%s", test_path("api.db"));
    store_api_contract(url, "sqlite");
}

#ifdef OUTBOX_HAVE_LIBPQ
TEST(postgres)
{
    static pgh_server server;
    pgh_start(&server);
    store_api_contract(server.url, "postgres");
}
#endif

TEST(public_utilities)
{
    char out[128];
    ASSERT_EQ(outbox_duration_parse_ms("30s"), 30000);
    ASSERT_EQ(outbox_duration_parse_ms("5m"), 300000);
    ASSERT_EQ(outbox_duration_parse_ms("250ms"), 250);
    ASSERT_EQ(outbox_duration_parse_ms("2"), 2000);
    ASSERT_EQ(outbox_duration_parse_ms("5x"), -1);
    ASSERT_EQ(outbox_duration_parse_ms(""), -1);
    ASSERT_EQ(outbox_duration_parse_ms(NULL), -1);
    outbox_url_redact("postgres://app:s3cret@db/x?sslpassword=p&x=1", out, sizeof out);
    ASSERT_STREQ(out, "postgres://app:***@db/x?sslpassword=***&x=1");
    ASSERT_EQ(outbox_msg_status_parse("failed"), OUTBOX_STATUS_FAILED);
    ASSERT_EQ(outbox_msg_status_parse("nope"), -1);
    ASSERT_EQ(outbox_msg_status_parse(NULL), -1);
    ASSERT_STREQ(outbox_msg_status_name(42), "unknown");
}

static int accept_all(void *user, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    (void)msg;
    (void)err;
    return OUTBOX_OK;
}

TEST(relay_options_size)
{
    outbox_relay_options opts;
    outbox_relay *relay = NULL;
    outbox_error err = {0, ""};
    outbox_store *store = NULL;
    char url[600];

    snprintf(url, sizeof url, "sqlite:%s", test_path("options.db"));
    ASSERT_OK(outbox_store_open(url, &store, &err), &err);
    ASSERT_OK(outbox_store_init(store, NULL, NULL, &err), &err);
    outbox_store_close(store);

    outbox_relay_options_init(&opts);
    ASSERT_EQ(opts.size, sizeof opts);

    /* A program compiled when the struct ended before destination_options:
     * what lies past its size is not read (here: garbage). */
    opts.publish = accept_all;
    opts.size = offsetof(outbox_relay_options, destination_options);
    memset(&opts.destination_options, 0x5a, sizeof opts.destination_options);
    ASSERT_OK(outbox_relay_new(&relay, url, NULL, &opts, &err), &err);
    outbox_relay_free(relay);
    relay = NULL;

    /* Not filled by outbox_relay_options_init: refused, saying what to do. */
    memset(&opts, 0, sizeof opts);
    opts.publish = accept_all;
    ASSERT_EQ(outbox_relay_new(&relay, url, NULL, &opts, &err), OUTBOX_EINVAL);
    ASSERT(relay == NULL);
    ASSERT_CONTAINS(err.message, "outbox_relay_options_init");
    outbox_relay_options_init(&opts);
    opts.publish = accept_all;
    opts.size = offsetof(outbox_relay_options, publish_user);
    ASSERT_EQ(outbox_relay_new(&relay, url, NULL, &opts, &err), OUTBOX_EINVAL);
}

#ifdef OUTBOX_HAVE_MHD
static int handle_nothing(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    (void)db;
    (void)msg;
    (void)err;
    return OUTBOX_OK;
}
#endif

TEST(receiver_options_size)
{
#ifdef OUTBOX_HAVE_MHD
    outbox_webhook_receiver_options opts;
    outbox_webhook_receiver *r = NULL;
    outbox_error err = {0, ""};

    outbox_webhook_receiver_options_init(&opts);
    ASSERT_EQ(opts.size, sizeof opts);
    opts.db_path = test_path("receiver.db");
    opts.consumer = "api-test";
    opts.handler = handle_nothing;

    /* An older, shorter struct: the TLS fields past it are not read. */
    opts.size = offsetof(outbox_webhook_receiver_options, tls_cert_file);
    memset(&opts.tls_cert_file, 0x5a, sizeof opts.tls_cert_file);
    memset(&opts.tls_key_file, 0x5a, sizeof opts.tls_key_file);
    ASSERT_OK(outbox_webhook_receiver_new(&r, &opts, &err), &err);
    ASSERT(outbox_webhook_receiver_port(r) > 0);
    outbox_webhook_receiver_free(r);
    r = NULL;

    opts.size = 0;
    ASSERT_EQ(outbox_webhook_receiver_new(&r, &opts, &err), OUTBOX_EINVAL);
    ASSERT(r == NULL);
    ASSERT_CONTAINS(err.message, "outbox_webhook_receiver_options_init");
#else
    fprintf(stderr, "   (no webhook receiver in this build)\n");
#endif
}

int main(void)
{
    RUN(open_errors);
    RUN(public_utilities);
    RUN(sqlite);
    RUN(relay_options_size);
    RUN(receiver_options_size);
#ifdef OUTBOX_HAVE_LIBPQ
    RUN(postgres);
#else
    fprintf(stderr, "   (no PostgreSQL store in this build)\n");
#endif
    fprintf(stderr, "all store API tests passed\n");
    return 0;
}
