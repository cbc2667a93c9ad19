/*
 * test_store_pg_emit.c - emitting messages to the WAL on a real PostgreSQL
 * (wal_level=logical, started by tests/support/pg.h), read back through a
 * test_decoding slot: <schema>.emit and outbox_emit_pg /
 * outbox_emit_commit_pg write exactly one transactional message per call
 * with prefix outbox:<schema> in the version-1 encoding (decoded here by
 * the test's own netstring reader), nothing when the transaction rolls
 * back, and no outbox row; every check of enqueue refuses the same input in
 * emit with the same SQLSTATE and text (emit in place of enqueue); the C
 * API refuses calls outside a transaction as outbox_enqueue_pg does; the C
 * API and the SQL function write the same bytes for the same message.
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skipped: this build has no PostgreSQL store (libpq not found)\n");
    return 77;
}
#else

#include "support/pg.h"
#include "test.h"

#include "internal.h"

#include <stdlib.h>
#include <string.h>

static pgh_server server;

#define SLOT "emit_test"
#define MAX_MSGS 8

/* The logical decoding messages of the transactions committed since the
 * last call, as test_decoding shows them (all with prefix outbox:outbox,
 * transactional): their contents in out (malloc'd), their count returned. */
static int take_messages(PGconn *c, char *out[MAX_MSGS])
{
    static const char head[] = "message: transactional: 1 prefix: outbox:outbox, sz: ";
    PGresult *r = PQexec(c, "SELECT data FROM pg_logical_slot_get_changes('" SLOT "', NULL,"
                            " NULL) WHERE data LIKE 'message:%'");
    int i, n;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        TEST_FAIL_("reading the slot: %s", PQresultErrorMessage(r));
    n = PQntuples(r);
    if (n > MAX_MSGS) TEST_FAIL_("%d messages on the WAL, more than expected", n);
    for (i = 0; i < n; i++) {
        const char *data = PQgetvalue(r, i, 0), *content;
        if (strncmp(data, head, sizeof head - 1) != 0)
            TEST_FAIL_("not an outbox message: %.200s", data);
        content = strstr(data, " content:");
        ASSERT(content != NULL);
        content += strlen(" content:");
        ASSERT_EQ(strtoll(data + sizeof head - 1, NULL, 10), (long long)strlen(content));
        out[i] = strdup(content);
        ASSERT(out[i] != NULL);
    }
    PQclear(r);
    return n;
}

static void free_messages(char *msgs[], int n)
{
    for (int i = 0; i < n; i++)
        free(msgs[i]);
}

/* Decodes a version-1 content (docs/WAL.md) into its seven fields, failing
 * the test on anything else: "v1", netstrings with decimal lengths without
 * leading zeros, each closed by ',', nothing after the seventh. */
static void decode(const char *content, char fields[7][1024])
{
    const char *p = content;
    if (strncmp(p, "v1", 2) != 0) TEST_FAIL_("content does not start with v1: %.80s", content);
    p += 2;
    for (int f = 0; f < 7; f++) {
        size_t len = 0, digits = 0;
        while (p[digits] >= '0' && p[digits] <= '9')
            len = len * 10 + (size_t)(p[digits++] - '0');
        if (digits == 0 || (digits > 1 && p[0] == '0') || p[digits] != ':')
            TEST_FAIL_("field %d: bad netstring length in %.80s", f + 1, content);
        p += digits + 1;
        if (strlen(p) < len + 1 || p[len] != ',')
            TEST_FAIL_("field %d: netstring of %zu bytes not closed by ',' in %.80s", f + 1, len,
                       content);
        if (len >= 1024) TEST_FAIL_("field %d: %zu bytes, too long for this test", f + 1, len);
        memcpy(fields[f], p, len);
        fields[f][len] = '\0';
        p += len + 1;
    }
    if (*p) TEST_FAIL_("bytes after the seventh netstring: %.80s", p);
}

static int64_t outbox_rows(PGconn *c)
{
    return pgh_count(c, "SELECT count(*) FROM outbox.outbox");
}

/* One SQL statement's error: SQLSTATE into state, primary message into
 * message; fails the test when it succeeds. */
static void sql_error(PGconn *c, const char *sql, char state[6], char *message, size_t len)
{
    PGresult *r = PQexec(c, sql);
    const char *s, *m;
    if (PQresultStatus(r) != PGRES_FATAL_ERROR)
        TEST_FAIL_("expected an error from %s, got %s", sql, PQresStatus(PQresultStatus(r)));
    s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    snprintf(state, 6, "%s", s ? s : "");
    snprintf(message, len, "%s", m ? m : "");
    PQclear(r);
}

/* ------------------------------------------------------------------------ */

TEST(sql_emit_to_wal)
{
    PGconn *c = pgh_connect(&server);
    char *msgs[MAX_MSGS], f[7][1024];
    int n;

    pgh_exec(c, "CREATE TABLE emit_biz (id int PRIMARY KEY)");
    pgh_exec(c, "DELETE FROM outbox.outbox");
    (void)take_messages(c, msgs); /* nothing yet: the slot is new */

    /* Committed with the business row: one message, every field given. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "INSERT INTO emit_biz VALUES (1)");
    PGresult *r = PQexec(c, "SELECT outbox.emit('OrderPlaced', 'o-17', '{\"total\":12}',"
                            " '{\"correlation_id\":\"c-1\"}', 'Order',"
                            " '0190D2A4-0000-7000-8000-000000000001',"
                            " '2026-12-06 10:00:00.123456+00')");
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
    ASSERT_STREQ(PQgetvalue(r, 0, 0), "0190d2a4-0000-7000-8000-000000000001");
    PQclear(r);
    pgh_exec(c, "COMMIT");
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(msgs[0], "v136:0190d2a4-0000-7000-8000-000000000001,11:OrderPlaced,5:Order,"
                          "4:o-17,16:1796551200123456,25:{\"correlation_id\": \"c-1\"},"
                          "13:{\"total\": 12},");
    decode(msgs[0], f);
    ASSERT_STREQ(f[1], "OrderPlaced");
    free_messages(msgs, n);
    ASSERT_EQ(outbox_rows(c), 0); /* the WAL only */

    /* The defaults: a new UUIDv7 (returned), no aggregate type, no
     * headers, now(). */
    pgh_exec(c, "BEGIN");
    r = PQexec(c, "SELECT outbox.emit('T', 'a-1', '[1, \"x\"]'),"
                  " (extract(epoch FROM now()) * 1000000)::bigint");
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
    char id[64], now_us[32];
    snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
    snprintf(now_us, sizeof now_us, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    pgh_exec(c, "COMMIT");
    ASSERT(outbox_uuid_valid(id));
    ASSERT_EQ(id[14], '7');
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    decode(msgs[0], f);
    ASSERT_STREQ(f[0], id);
    ASSERT_STREQ(f[1], "T");
    ASSERT_STREQ(f[2], "");
    ASSERT_STREQ(f[3], "a-1");
    ASSERT_STREQ(f[4], now_us);
    ASSERT_STREQ(f[5], "{}");
    ASSERT_STREQ(f[6], "[1, \"x\"]");
    free_messages(msgs, n);

    /* Rolled back: nothing on the WAL, also when several were emitted. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "INSERT INTO emit_biz VALUES (2)");
    pgh_exec(c, "SELECT outbox.emit('T', 'a-2', '{}')");
    pgh_exec(c, "SELECT outbox.emit('T', 'a-3', '{}')");
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(take_messages(c, msgs), 0);

    /* A failed statement after the emit: the transaction can only roll
     * back, and emits nothing. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "SELECT outbox.emit('T', 'a-4', '{}')");
    PQclear(PQexec(c, "INSERT INTO emit_biz VALUES (1)")); /* duplicate key */
    PQclear(PQexec(c, "COMMIT"));                          /* answers ROLLBACK */
    ASSERT_EQ(take_messages(c, msgs), 0);

    /* Several in one transaction: in call order, one transaction. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "SELECT outbox.emit('First', 'a', '{}')");
    pgh_exec(c, "SELECT outbox.emit('Second', 'a', '{}')");
    pgh_exec(c, "COMMIT");
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 2);
    decode(msgs[0], f);
    ASSERT_STREQ(f[1], "First");
    decode(msgs[1], f);
    ASSERT_STREQ(f[1], "Second");
    free_messages(msgs, n);

    /* Outside a transaction block the statement is its own transaction,
     * as with enqueue: the message commits alone. */
    pgh_exec(c, "SELECT outbox.emit('Alone', 'a', '{}')");
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    free_messages(msgs, n);

    /* Another schema: its own prefix. */
    pgh_exec(c, "SELECT shop_outbox.emit('T', 'a', '{}')");
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_logical_slot_get_changes('" SLOT
                           "', NULL, NULL) WHERE data LIKE 'message: transactional: 1 prefix:"
                           " outbox:shop_outbox, %'"),
              1);

    ASSERT_EQ(outbox_rows(c), 0);
    pgh_exec(c, "DROP TABLE emit_biz");
    PQfinish(c);
}

/* Every input enqueue refuses, emit refuses with the same SQLSTATE and the
 * same text (emit in place of enqueue), emitting nothing. */
TEST(sql_emit_validation)
{
    static const char *const args[] = {
        "'', 'a', '{}'",
        "'  ', 'a', '{}'",
        "E'T\\x01', 'a', '{}'",
        "repeat('t', 257), 'a', '{}'",
        "NULL, 'a', '{}'",
        "'T', NULL, '{}'",
        "'T', '', '{}'",
        "'T', '   ', '{}'",
        "'T', E'a\\x7f', '{}'",
        "'T', repeat('a', 257), '{}'",
        "'T', 'a', NULL",
        "'T', 'a', 'not json'",
        "'T', 'a', '{}', '[1]'",
        "'T', 'a', '{}', '\"s\"'",
        "'T', 'a', '{}', '{\"k\":1}'",
        "'T', 'a', '{}', '{\"k\":\"a\\nb\"}'",
        "'T', 'a', '{}', '{\"\":\"v\"}'",
        "'T', 'a', '{}', '{\"traceparent\":\"zz\"}'",
        "'T', 'a', '{}', '{\"TraceParent\":\"00-00000000000000000000000000000000-"
        "b7ad6b7169203331-01\"}'",
        "'T', 'a', '{}', '{}', repeat('x', 300)",
        "'T', 'a', '{}', '{}', E'x\\x01'",
        "'T', 'a', '{}', id => '00000000-0000-0000-0000-000000000000'",
        "'T', 'a', '{}', occurred_at => 'infinity'",
        "'T', 'a', '{}', occurred_at => '1969-12-31 23:59:59+00'",
        "'T', 'a', jsonb_build_object('s', repeat('x', 1100000))",
    };
    PGconn *c = pgh_connect(&server);
    char sql[400], enq_state[6], emit_state[6], enq_msg[600], emit_msg[600], want[600];
    char *msgs[MAX_MSGS];

    pgh_exec(c, "DELETE FROM outbox.outbox");
    (void)take_messages(c, msgs);
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT outbox.enqueue(%s)", args[i]);
        sql_error(c, sql, enq_state, enq_msg, sizeof enq_msg);
        snprintf(sql, sizeof sql, "SELECT outbox.emit(%s)", args[i]);
        sql_error(c, sql, emit_state, emit_msg, sizeof emit_msg);
        ASSERT_STREQ(emit_state, enq_state);
        if (strncmp(enq_msg, "outbox.enqueue: ", 16) == 0) {
            snprintf(want, sizeof want, "outbox.emit: %s", enq_msg + 16);
            ASSERT_STREQ(emit_msg, want);
        } else {
            ASSERT_STREQ(enq_state, "22P02"); /* PostgreSQL's own: not JSON */
            ASSERT_STREQ(emit_msg, enq_msg);
        }
    }
    ASSERT_EQ(take_messages(c, msgs), 0);
    ASSERT_EQ(outbox_rows(c), 0);
    PQfinish(c);
}

static outbox_msg *make_msg(const char *type, const char *agg, const char *payload)
{
    outbox_msg *m = NULL;
    outbox_error err;
    ASSERT_OK(outbox_msg_new(&m, type, "Order", agg, payload, &err), &err);
    return m;
}

/* The 1,048,576-byte limit at its edge, where the one expression enqueue and
 * emit test first (schema version 9) and validate_message must agree: type
 * T, aggregate a, no aggregate type, headers {} (2 bytes) and a payload
 * whose text is a JSON string of 1,048,570 x's (1,048,572 bytes) is at the
 * limit; one x more is over. */
TEST(sql_size_limit_edge)
{
    static const char *const fns[] = {"enqueue", "emit"};
    PGconn *c = pgh_connect(&server);
    char sql[200], state[6], msg[600], *msgs[MAX_MSGS];
    int n;

    pgh_exec(c, "DELETE FROM outbox.outbox");
    (void)take_messages(c, msgs);
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT outbox.%s('T', 'a', to_jsonb(repeat('x', 1048570)))",
                 fns[i]);
        pgh_exec(c, sql);
        snprintf(sql, sizeof sql, "SELECT outbox.%s('T', 'a', to_jsonb(repeat('x', 1048571)))",
                 fns[i]);
        sql_error(c, sql, state, msg, sizeof msg);
        ASSERT_STREQ(state, "54000");
        ASSERT_CONTAINS(msg, "is 1048577 bytes, over the 1048576-byte limit");
    }
    ASSERT_EQ(outbox_rows(c), 1);
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    ASSERT(strlen(msgs[0]) > 1048570);
    free_messages(msgs, n);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

TEST(c_emit)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    char *msgs[MAX_MSGS], f[7][1024], sql[1200], us[32];
    outbox_msg *m = make_msg("OrderPlaced", "o-1", "{\"b\":[1,2],  \"a\":\"x\"}");
    int n;

    pgh_exec(c, "DELETE FROM outbox.outbox");
    (void)take_messages(c, msgs);
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "c-9", &err), &err);
    ASSERT_OK(outbox_msg_set_header(m, "traceparent",
                                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                    &err),
              &err);

    /* Outside a transaction: refused as outbox_enqueue_pg refuses. */
    ASSERT_EQ(outbox_emit_pg(c, NULL, m, &err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "outbox_emit_pg needs an open transaction");
    ASSERT_EQ(outbox_enqueue_pg(c, m, &err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "outbox_enqueue_pg needs an open transaction");
    {
        const outbox_msg *one[] = {m};
        ASSERT_EQ(outbox_emit_commit_pg(c, NULL, one, 1, &err), OUTBOX_ENOTXN);
        ASSERT_CONTAINS(err.message, "open transaction");
    }
    ASSERT_EQ(take_messages(c, msgs), 0);

    /* Bad arguments, refused before anything is sent; the transaction
     * stays usable. */
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_emit_pg(NULL, NULL, m, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_emit_pg(c, NULL, NULL, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_emit_pg(c, "bad name;", m, &err), OUTBOX_ECONFIG);
    ASSERT_EQ(outbox_emit_pg(c, "nope", m, &err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);

    /* Emitted and committed: the fields as given (the payload too), the
     * headers as PostgreSQL prints a jsonb object. */
    ASSERT_OK(outbox_emit_pg(c, NULL, m, &err), &err);
    pgh_exec(c, "COMMIT");
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    decode(msgs[0], f);
    ASSERT_STREQ(f[0], outbox_msg_id(m));
    ASSERT_STREQ(f[1], "OrderPlaced");
    ASSERT_STREQ(f[2], "Order");
    ASSERT_STREQ(f[3], "o-1");
    snprintf(us, sizeof us, "%lld", (long long)outbox_msg_occurred_at(m));
    ASSERT_STREQ(f[4], us);
    ASSERT_STREQ(f[5], "{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"
                       "01\", \"correlation_id\": \"c-9\"}");
    ASSERT_STREQ(f[6], "{\"b\":[1,2],  \"a\":\"x\"}");
    free_messages(msgs, n);
    outbox_msg_free(m);

    /* A message whose payload is written as PostgreSQL prints jsonb, with
     * headers to sort and escape: the same bytes from the SQL function. */
    m = make_msg("OrderPlaced", "o-2", "{\"a\": \"x\", \"b\": [1, 2]}");
    ASSERT_OK(outbox_msg_set_header(m, "zz", "last", &err), &err);
    ASSERT_OK(outbox_msg_set_header(m, "note", "say \"hi\" \\ bye", &err), &err);
    ASSERT_OK(outbox_msg_set_header(m, "ab", "short", &err), &err);
    ASSERT_OK(outbox_msg_set_header(m, "aa", "shorter", &err), &err);
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_emit_pg(c, NULL, m, &err), &err);
    pgh_exec(c, "COMMIT");
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 1);
    decode(msgs[0], f);
    ASSERT_STREQ(f[5], "{\"aa\": \"shorter\", \"ab\": \"short\", \"zz\": \"last\", "
                       "\"note\": \"say \\\"hi\\\" \\\\ bye\"}");
    snprintf(sql, sizeof sql,
             "SELECT outbox.emit('%s', '%s', '%s', '%s', '%s', '%s',"
             " 'epoch'::timestamptz + %lld * interval '1 microsecond')",
             outbox_msg_type(m), outbox_msg_aggregate_id(m), outbox_msg_payload(m),
             outbox_msg_headers_json(m), outbox_msg_aggregate_type(m), outbox_msg_id(m),
             (long long)outbox_msg_occurred_at(m));
    pgh_exec(c, "BEGIN");
    pgh_exec(c, sql);
    pgh_exec(c, "COMMIT");
    char *again[MAX_MSGS];
    ASSERT_EQ(take_messages(c, again), 1);
    ASSERT_STREQ(again[0], msgs[0]);
    free_messages(again, 1);
    free_messages(msgs, n);

    /* Rolled back: nothing.  The statement is prepared once. */
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_emit_pg(c, "outbox", m, &err), &err);
    ASSERT_OK(outbox_emit_pg(c, "outbox", m, &err), &err);
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(take_messages(c, msgs), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_prepared_statements"
                           " WHERE name = 'outbox_emit.outbox'"),
              1);
    ASSERT_EQ(outbox_rows(c), 0);
    outbox_msg_free(m);
    PQfinish(c);
}

TEST(c_emit_commit)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    char *msgs[MAX_MSGS], f[7][1024];
    outbox_msg *m[3];
    const outbox_msg *const *all;
    int n;

    pgh_exec(c, "CREATE TABLE emit_commit_biz (id int PRIMARY KEY)");
    pgh_exec(c, "DELETE FROM outbox.outbox");
    (void)take_messages(c, msgs);
    m[0] = make_msg("First", "a", "{}");
    m[1] = make_msg("Second", "b", "{\"n\":2}");
    m[2] = make_msg("Third", "a", "[3]");
    all = (const outbox_msg *const *)m;

#ifdef OUTBOX_FAULT_INJECTION
    /* main() arms pg_enqueue_before_commit for its first time: the emits
     * ran, the COMMIT was not sent; the caller's ROLLBACK leaves nothing. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "INSERT INTO emit_commit_biz VALUES (90)");
    ASSERT_EQ(outbox_emit_commit_pg(c, NULL, all, 2, &err), OUTBOX_EFAULT);
    ASSERT_CONTAINS(err.message, "outbox_emit_commit_pg");
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(take_messages(c, msgs), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM emit_commit_biz"), 0);
#endif

    /* NULL arguments: refused, the transaction untouched. */
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_emit_commit_pg(NULL, NULL, all, 1, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_emit_commit_pg(c, NULL, NULL, 1, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "outbox_emit_commit_pg: msgs");
    ASSERT_EQ(outbox_emit_commit_pg(c, "nope", all, 1, &err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);

    /* Three messages with the business row, in one round trip. */
    pgh_exec(c, "INSERT INTO emit_commit_biz VALUES (1)");
    ASSERT_OK(outbox_emit_commit_pg(c, NULL, all, 3, &err), &err);
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM emit_commit_biz"), 1);
    n = take_messages(c, msgs);
    ASSERT_EQ(n, 3);
    for (int i = 0; i < 3; i++) {
        decode(msgs[i], f);
        ASSERT_STREQ(f[0], outbox_msg_id(m[i]));
        ASSERT_STREQ(f[1], outbox_msg_type(m[i]));
    }
    free_messages(msgs, n);

    /* None: just the COMMIT. */
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "INSERT INTO emit_commit_biz VALUES (2)");
    ASSERT_OK(outbox_emit_commit_pg(c, NULL, NULL, 0, &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM emit_commit_biz"), 2);
    ASSERT_EQ(take_messages(c, msgs), 0);

    /* A COMMIT that fails (a deferred constraint): rolled back, nothing on
     * the WAL. */
    pgh_exec(c, "CREATE TABLE emit_commit_ref (id int PRIMARY KEY)");
    pgh_exec(c, "CREATE TABLE emit_commit_child (ref int REFERENCES emit_commit_ref"
                " DEFERRABLE INITIALLY DEFERRED)");
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "INSERT INTO emit_commit_child VALUES (42)");
    ASSERT_NE(outbox_emit_commit_pg(c, NULL, all, 1, &err), OUTBOX_OK);
    ASSERT_CONTAINS(err.message, "COMMIT failed");
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);
    ASSERT_EQ(take_messages(c, msgs), 0);

    ASSERT_EQ(outbox_rows(c), 0);
    pgh_exec(c, "DROP TABLE emit_commit_child, emit_commit_ref, emit_commit_biz");
    for (int i = 0; i < 3; i++)
        outbox_msg_free(m[i]);
    PQfinish(c);
}

int main(void)
{
#ifdef OUTBOX_FAULT_INJECTION
    /* The first outbox_emit_commit_pg that gets to its COMMIT fails there
     * (test c_emit_commit). */
    setenv("OUTBOX_FAULT", "pg_enqueue_before_commit:error:1", 1);
#endif
    pgh_start(&server);
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    ASSERT_OK(outbox_schema_init_pg(c, NULL, &err), &err);
    ASSERT_OK(outbox_schema_init_pg(c, "shop_outbox", &err), &err);
    pgh_exec(c, "SELECT pg_create_logical_replication_slot('" SLOT "', 'test_decoding')");
    PQfinish(c);
    RUN(sql_emit_to_wal);
    RUN(sql_emit_validation);
    RUN(sql_size_limit_edge);
    RUN(c_emit);
    RUN(c_emit_commit);
    fprintf(stderr, "all PostgreSQL emit tests passed\n");
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
