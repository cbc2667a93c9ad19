/*
 * test_bad_input.c - guarantee 7: bad input is refused, not stored.
 *
 * Every kind of bad input is tried through the library inside an open
 * transaction on a real outbox: invalid JSON payloads, headers that are not
 * an object, non-string header values, control characters in header names
 * and values, bad traceparent/tracestate, oversized messages, malformed ids,
 * bad type and aggregate fields, a duplicate id.  Each must fail with its
 * documented code and a message naming the field; the transaction must stay
 * usable (a good message enqueued after all the failures commits) and the
 * outbox must hold exactly that one row afterwards.  An enqueue outside a
 * transaction is OUTBOX_ENOTXN and writes nothing.  Bad URLs are refused at
 * start-up (library and CLI) without echoing a password.
 */
#include "support/chaos.h"

static char dbpath[CH_PATH];
static sqlite3 *db;

static void open_outbox(void)
{
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    ch_path(dbpath, "bad.db");
    db = ch_db_open(dbpath);
    ASSERT_OK(outbox_schema_init_sqlite(db, err), err);
}

static int64_t rows(void)
{
    return ch_db_count(db, "SELECT count(*) FROM outbox");
}

static void expect(int rc, const outbox_error *err, int code, const char *names, const char *what)
{
    fprintf(stderr, "  %-44s -> %d %s: %s\n", what, rc, outbox_strerror(rc),
            rc ? err->message : "");
    if (rc != code)
        TEST_FAIL_("%s: expected %d (%s), got %d (%s): %s", what, code, outbox_strerror(code), rc,
                   outbox_strerror(rc), err->message);
    ASSERT_EQ(err->code, code);
    ASSERT_CONTAINS(err->message, names);
}

/* Creates a message (which must fail with code), or, if creation succeeds
 * against the expectation, enqueues it so that the row count shows it. */
static void new_fails(const char *type, const char *agg_type, const char *agg_id,
                      const char *payload, int code, const char *names, const char *what)
{
    outbox_error err_storage, *err = &err_storage;
    outbox_msg *m = (outbox_msg *)1;
    memset(err, 0, sizeof *err);
    int rc = outbox_msg_new(&m, type, agg_type, agg_id, payload, err);
    if (rc == OUTBOX_OK) {
        outbox_error e2;
        outbox_enqueue_sqlite(db, m, &e2);
        outbox_msg_free(m);
    } else {
        ASSERT(m == NULL);
    }
    expect(rc, err, code, names, what);
}

static outbox_msg *good(void)
{
    outbox_error err_storage, *err = &err_storage;
    outbox_msg *m = NULL;
    memset(err, 0, sizeof *err);
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "o-1", "{\"total\":12.5}", err), err);
    return m;
}

/* Applies one header (or a headers object when name is NULL) to a good
 * message; must fail with code and keep the previous headers. */
static void header_fails(const char *name, const char *value, int code, const char *names,
                         const char *what)
{
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    outbox_msg *m = good();
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "c-1", err), err);
    int rc = name ? outbox_msg_set_header(m, name, value, err)
                  : outbox_msg_set_headers_json(m, value, err);
    expect(rc, err, code, names, what);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{\"correlation_id\":\"c-1\"}");
    ASSERT_EQ(outbox_msg_header_count(m), 1);
    outbox_msg_free(m);
}

static void id_fails(const char *id, const char *what)
{
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    outbox_msg *m = good();
    char before[37];
    snprintf(before, sizeof before, "%s", outbox_msg_id(m));
    expect(outbox_msg_set_id(m, id, err), err, OUTBOX_EBADID, "id", what);
    ASSERT_STREQ(outbox_msg_id(m), before);
    outbox_msg_free(m);
}

TEST(refused_inside_a_transaction)
{
    open_outbox();
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    int64_t before = rows();
    ch_db_exec(db, "BEGIN");

    /* Payloads. */
    new_fails("T", "", "a", "{\"a\":", OUTBOX_EBADPAYLOAD, "payload", "truncated JSON payload");
    new_fails("T", "", "a", "not json", OUTBOX_EBADPAYLOAD, "payload", "bare word payload");
    new_fails("T", "", "a", "{} {}", OUTBOX_EBADPAYLOAD, "payload", "trailing data in payload");
    new_fails("T", "", "a", "", OUTBOX_EBADPAYLOAD, "payload", "empty payload");
    new_fails("T", "", "a", "{'a':1}", OUTBOX_EBADPAYLOAD, "payload", "single-quoted payload");
    new_fails("T", "", "a", "{\"a\":NaN}", OUTBOX_EBADPAYLOAD, "payload", "NaN in payload");

    /* Type and aggregate fields. */
    new_fails("", "", "a", "{}", OUTBOX_EBADTYPE, "type", "empty type");
    new_fails(NULL, "", "a", "{}", OUTBOX_EBADTYPE, "type", "NULL type");
    new_fails("Order\nPlaced", "", "a", "{}", OUTBOX_EBADTYPE, "type", "newline in type");
    new_fails("T", "", "", "{}", OUTBOX_EBADAGGREGATE, "aggregate_id", "empty aggregate id");
    new_fails("T", "", "a\tb", "{}", OUTBOX_EBADAGGREGATE, "aggregate_id", "tab in aggregate id");
    new_fails("T", "Ord\x01", "a", "{}", OUTBOX_EBADAGGREGATE, "aggregate_type",
              "control char in aggregate type");
    char longfield[400];
    memset(longfield, 'x', sizeof longfield - 1);
    longfield[sizeof longfield - 1] = '\0';
    new_fails(longfield, "", "a", "{}", OUTBOX_EBADTYPE, "type", "399-byte type (limit 256)");
    new_fails("T", "", longfield, "{}", OUTBOX_EBADAGGREGATE, "aggregate_id",
              "399-byte aggregate id (limit 256)");

    /* Headers. */
    header_fails(NULL, "[1,2]", OUTBOX_EBADHEADERS, "header", "headers as an array");
    header_fails(NULL, "\"text\"", OUTBOX_EBADHEADERS, "header", "headers as a string");
    header_fails(NULL, "{\"a\":", OUTBOX_EBADHEADERS, "header", "headers not JSON");
    header_fails(NULL, "{\"retries\":3}", OUTBOX_EBADHEADERS, "retries", "number header value");
    header_fails(NULL, "{\"nested\":{\"a\":\"b\"}}", OUTBOX_EBADHEADERS, "nested",
                 "object header value");
    header_fails(NULL, "{\"gone\":null}", OUTBOX_EBADHEADERS, "gone", "null header value");
    header_fails("", "v", OUTBOX_EBADHEADERS, "header name", "empty header name");
    header_fails("bad\nname", "v", OUTBOX_EBADHEADERCHAR, "header name", "newline in header name");
    header_fails("note", "line1\r\nline2", OUTBOX_EBADHEADERCHAR, "note", "CRLF in header value");
    header_fails("note", "a\x7f", OUTBOX_EBADHEADERCHAR, "note", "DEL in header value");
    header_fails(NULL, "{\"x\\u0001y\":\"v\"}", OUTBOX_EBADHEADERCHAR, "header name",
                 "\\u0001 in header name (JSON)");
    header_fails(NULL, "{\"note\":\"a\\u001bb\"}", OUTBOX_EBADHEADERCHAR, "note",
                 "\\u001b in header value (JSON)");
    header_fails("traceparent", "00-abc", OUTBOX_EBADTRACEPARENT, "traceparent",
                 "short traceparent");
    header_fails("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                 OUTBOX_EBADTRACEPARENT, "traceparent", "all-zero trace id");
    header_fails("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                 OUTBOX_EBADTRACEPARENT, "traceparent", "all-zero parent id");
    header_fails("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                 OUTBOX_EBADTRACEPARENT, "traceparent", "upper-case traceparent");
    header_fails("traceparent", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                 OUTBOX_EBADTRACEPARENT, "traceparent", "wrong separators");
    header_fails(NULL, "{\"traceparent\":\"garbage\"}", OUTBOX_EBADTRACEPARENT, "traceparent",
                 "bad traceparent in a headers object");

    /* Ids. */
    id_fails("not-a-uuid", "word as id");
    id_fails("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2", "35-char id");
    id_fails("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2bb", "37-char id");
    id_fails("0190a1b2c3d47e5f8a6b7c8d9e0f1a2b", "id without dashes");
    id_fails("{0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b}", "braced id");
    id_fails("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2g", "non-hex id");
    id_fails("0190a1b2-c3d4-7e5f-8a6b7-c8d9e0f1a2b", "misplaced dash");
    id_fails("", "empty id");
    id_fails(NULL, "NULL id");

    /* Oversized: at creation, by a header, and at enqueue after the limit
     * was lowered below an existing message. */
    size_t old_limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 1000);
    char big[2100];
    memset(big, ' ', sizeof big);
    big[0] = '"';
    memset(big + 1, 'y', 2000);
    big[2001] = '"';
    big[2002] = '\0';
    new_fails("T", "", "a", big, OUTBOX_ETOOBIG, "limit", "2 KB payload, limit 1000");
    {
        outbox_msg *m = good();
        char value[1000];
        memset(value, 'v', sizeof value - 1);
        value[sizeof value - 1] = '\0';
        ASSERT_OK(outbox_msg_set_header(m, "small", "1", err), err);
        int rc = outbox_msg_set_header(m, "huge", value, err);
        if (rc == OUTBOX_OK) rc = outbox_enqueue_sqlite(db, m, err);
        expect(rc, err, OUTBOX_ETOOBIG, "limit", "999-byte header, limit 1000");
        outbox_msg_free(m);
    }
    outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, old_limit);
    {
        outbox_msg *m = NULL;
        ASSERT_OK(outbox_msg_new(&m, "T", "", "a", big, err), err);
        outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 1000);
        expect(outbox_enqueue_sqlite(db, m, err), err, OUTBOX_ETOOBIG, "limit",
               "enqueue after the limit was lowered");
        outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, old_limit);
        outbox_msg_free(m);
    }
    ASSERT_EQ(outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0), old_limit);

    /* Arguments. */
    {
        outbox_msg *m = good();
        ASSERT(outbox_enqueue_sqlite(NULL, m, err) == OUTBOX_EINVAL);
        ASSERT(outbox_enqueue_sqlite(db, NULL, err) == OUTBOX_EINVAL);
        outbox_msg_free(m);
    }

    /* Nothing of the above was written; the transaction is still usable. */
    ASSERT_EQ(rows(), before);
    outbox_msg *ok = good();
    ASSERT_OK(outbox_msg_set_id(ok, "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B", err), err);
    ASSERT_STREQ(outbox_msg_id(ok), "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b");
    ASSERT_OK(outbox_msg_set_header(ok, "traceparent",
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", err),
              err);
    ASSERT_OK(outbox_enqueue_sqlite(db, ok, err), err);

    /* A second enqueue of the same id is refused; the first stays. */
    expect(outbox_enqueue_sqlite(db, ok, err), err, OUTBOX_EEXISTS,
           "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", "duplicate id in one transaction");
    ASSERT(!sqlite3_get_autocommit(db));
    ch_db_exec(db, "COMMIT");
    ASSERT_EQ(rows(), before + 1);
    ASSERT_EQ(ch_db_count(db, "SELECT count(*) FROM outbox WHERE id = "
                              "'0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b' AND status = 'pending'"),
              1);

    /* And across transactions. */
    ch_db_exec(db, "BEGIN");
    expect(outbox_enqueue_sqlite(db, ok, err), err, OUTBOX_EEXISTS,
           "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", "duplicate id in a later transaction");
    ch_db_exec(db, "COMMIT");
    ASSERT_EQ(rows(), before + 1);
    outbox_msg_free(ok);
    sqlite3_close(db);
    db = NULL;
}

TEST(enqueue_needs_a_transaction)
{
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    db = ch_db_open(dbpath);
    int64_t before = rows();
    outbox_msg *m = good();
    ASSERT(sqlite3_get_autocommit(db));
    expect(outbox_enqueue_sqlite(db, m, err), err, OUTBOX_ENOTXN, "transaction",
           "enqueue with no transaction open");
    ASSERT_EQ(rows(), before);
    ASSERT(sqlite3_get_autocommit(db)); /* the library did not open one */

    /* The inbox has the same rule. */
    int rc = outbox_inbox_record_sqlite(db, "billing", outbox_msg_id(m), err);
    expect(rc, err, OUTBOX_ENOTXN, "transaction", "inbox record with no transaction open");
    ASSERT_EQ(ch_db_count(db, "SELECT count(*) FROM outbox_inbox"), 0);

    /* The same message inside a transaction that rolls back: not visible. */
    ch_db_exec(db, "BEGIN");
    ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
    ASSERT_EQ(rows(), before + 1);
    ch_db_exec(db, "ROLLBACK");
    ASSERT_EQ(rows(), before);
    outbox_msg_free(m);
    sqlite3_close(db);
    db = NULL;
}

TEST(bad_urls_refused_at_start)
{
    outbox_error err_storage, *err = &err_storage;
    char store[700];
    snprintf(store, sizeof store, "sqlite:%s", dbpath);
    struct {
        const char *store, *to;
        const char *what;
    } cases[] = {
        {"nosuch://user:s3cret@host/db", "stdout:", "unknown store scheme"},
        {"", "stdout:", "empty store URL"},
        {"sqlite", "stdout:", "store URL without a scheme"},
        {store, "nosuch://user:s3cret@host/x", "unknown destination scheme"},
        {store, "", "empty destination URL"},
        {store, "file:", "file destination without a path"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        outbox_relay *relay = (outbox_relay *)1;
        memset(err, 0, sizeof *err);
        int rc = outbox_relay_new(&relay, cases[i].store, cases[i].to, NULL, err);
        fprintf(stderr, "  %-44s -> %d %s: %s\n", cases[i].what, rc, outbox_strerror(rc),
                err->message);
        if (rc == OUTBOX_OK) {
            outbox_relay_free(relay);
            TEST_FAIL_("%s: accepted", cases[i].what);
        }
        ASSERT(rc == OUTBOX_EBADURL || rc == OUTBOX_ENOTBUILT || rc == OUTBOX_ECONFIG);
        ASSERT(relay == NULL);
        ASSERT(err->message[0] != '\0');
        ASSERT(strstr(err->message, "s3cret") == NULL);
    }

    /* A CloudEvents source that is not UTF-8 would make every event invalid
     * JSON: refused at start (found by fuzz_cloudevents). */
    {
        outbox_relay *relay = (outbox_relay *)1;
        outbox_relay_options o;
        outbox_relay_options_init(&o);
        o.source = "/shop/\xff\xfe";
        memset(err, 0, sizeof *err);
        ASSERT_EQ(outbox_relay_new(&relay, store, "discard:", &o, err), OUTBOX_ECONFIG);
        ASSERT(relay == NULL);
        ASSERT_CONTAINS(err->message, "source");
    }

    /* The CLI: exit 2, a one-line reason, no password. */
    const char *errp = test_path("url.err");
    const char *argv[] = {
        test_outbox_bin(), "relay", "--store", store, "--to", "nosuch://user:s3cret@host/x",
        "--once",          NULL};
    int code = ch_run(argv, NULL, NULL, errp, 30000);
    char *text = test_read_file(errp, NULL);
    fprintf(stderr, "  CLI bad --to: exit %d: %s", code, text ? text : "(none)\n");
    ASSERT_EQ(code, 2);
    ASSERT(text && text[0]);
    ASSERT(strstr(text, "s3cret") == NULL);
    free(text);

    const char *argv2[] = {
        test_outbox_bin(), "relay",  "--store", "nosuch://user:s3cret@h/db", "--to",
        "stdout:",         "--once", NULL};
    code = ch_run(argv2, NULL, NULL, errp, 30000);
    text = test_read_file(errp, NULL);
    fprintf(stderr, "  CLI bad --store: exit %d: %s", code, text ? text : "(none)\n");
    ASSERT_EQ(code, 2);
    ASSERT(text && text[0]);
    ASSERT(strstr(text, "s3cret") == NULL);
    free(text);

    /* Nothing was published or written by any of them. */
    db = ch_db_open(dbpath);
    ASSERT_EQ(ch_db_count(db, "SELECT count(*) FROM outbox WHERE status = 'pending'"), 1);
    sqlite3_close(db);
    db = NULL;
}

int main(void)
{
    RUN(refused_inside_a_transaction);
    RUN(enqueue_needs_a_transaction);
    RUN(bad_urls_refused_at_start);
    return 0;
}
