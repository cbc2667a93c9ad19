/*
 * test_store_pg.c - the store contract on a real PostgreSQL server (started
 * by tests/support/pg.h): schema and URLs, enqueue in the caller's transaction
 * (commit, rollback, no transaction, duplicates), the SQL functions with
 * good and bad input, injection attempts, the store's own URL settings in
 * both URL forms beside libpq's, claim order and the ordering
 * rule, outcomes, out-of-order commits, inbox, NOTIFY only to wake a
 * waiting relay (one per wait, none while it is busy, concurrent enqueuers
 * never wait for each other, stale flags of dead relays cleared, a relay
 * woken through the socket long before its poll, the "asleep" advisory
 * lock held exactly while the store waits), the upgrade from schema
 * version 2 to 3 (rows kept; a flag without the lock notifies nobody; a
 * role that may only insert into the outbox still wakes the relay) and
 * on to 5, the claim floor (never above a row an open transaction may
 * still commit; a requeue below it is claimed at once and in order; a role
 * that cannot read the sequence claims without it), partition leases
 * shared by two relays (and counted in their relays' metrics),
 * reconnecting after the connection is killed, a statement cut by
 * query_timeout (reported, reconnected, its completion not recorded), and
 * outbox_enqueue_commit_pg (0, 1, 3 and 2000 messages committed with the business row; refused
 * outside a transaction and for NULL arguments; a duplicate id, a row the table refuses and a
 * failing COMMIT commit nothing; a dropped connection).
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skipped: this build has no PostgreSQL store (libpq not found)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/pg.h"
#include "test.h"

#include "internal.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>

static pgh_server server;
static char url[700];

static void capture_log(void *user, int level, const char *component, const char *message)
{
    outbox_buf *b = user;
    (void)level;
    (void)component;
    outbox__buf_puts(b, message);
    outbox__buf_puts(b, "\n");
}

static outbox_msg *make_msg(const char *agg, const char *payload)
{
    outbox_msg *m = NULL;
    outbox_error err;
    ASSERT_OK(outbox_msg_new(&m, "Tick", "Agg", agg, payload, &err), &err);
    return m;
}

static void open_store(outbox_store *s, const char *u)
{
    outbox_error err;
    ASSERT_OK(outbox__store_open(s, u, &err), &err);
}

/* Enqueues one message through the store (its own transaction). */
static void store_enqueue(outbox_store *s, const char *agg, int n)
{
    char payload[64];
    outbox_error err;
    snprintf(payload, sizeof payload, "{\"n\":%d}", n);
    outbox_msg *m = make_msg(agg, payload);
    ASSERT_OK(s->ops->enqueue(s->state, m, &err), &err);
    outbox_msg_free(m);
}

static size_t claim(outbox_store *s, outbox_msg ***msgs, int failed_blocks)
{
    outbox_claim_params p = {100, outbox__now_us(), failed_blocks, 0, NULL};
    outbox_error err;
    size_t n = 0;
    ASSERT_OK(s->ops->claim(s->state, &p, msgs, &n, &err), &err);
    return n;
}

static void free_msgs(outbox_msg **m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(m[i]);
    free(m);
}

/* Completes all of msgs with one outcome. */
/* Records one outcome for all of msgs: with complete, or with
 * complete_pipelined when in_flight >= 0 (another batch out: 1). */
static void complete_outcome(outbox_store *s, outbox_msg **msgs, size_t n, int outcome,
                             int64_t available_at, const char *error, int on_sent, int in_flight)
{
    outbox_completion *c = calloc(n ? n : 1, sizeof *c);
    outbox_complete_params p = {on_sent, outbox__now_us(), NULL, 10000};
    outbox_error err;
    for (size_t i = 0; i < n; i++) {
        c[i].msg = msgs[i];
        c[i].outcome = outcome;
        c[i].available_at = available_at;
        c[i].error = error;
    }
    if (in_flight >= 0)
        ASSERT_OK(s->ops->complete_pipelined(s->state, c, n, &p, in_flight, &err), &err);
    else
        ASSERT_OK(s->ops->complete(s->state, c, n, &p, &err), &err);
    free(c);
}

static void complete_all(outbox_store *s, outbox_msg **msgs, size_t n, int outcome,
                         int64_t available_at, const char *error, int on_sent)
{
    complete_outcome(s, msgs, n, outcome, available_at, error, on_sent, -1);
}

static int64_t count_rows(PGconn *c, const char *schema, const char *where)
{
    char sql[300];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.outbox%s%s", schema, where ? " WHERE " : "",
             where ? where : "");
    return pgh_count(c, sql);
}

/* ------------------------------------------------------------------------ */

TEST(init_and_schema)
{
    outbox_store s;
    outbox_error err;
    int from = -1, to = -1;

    open_store(&s, url);
    ASSERT_EQ(s.ops->check_schema(s.state, &err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err.message, "outbox init");
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    ASSERT_EQ(from, 0);
    ASSERT_EQ(to, 9);
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    ASSERT_EQ(from, 9);
    ASSERT_OK(s.ops->check_schema(s.state, &err), &err);
    outbox__store_close(&s);

    /* The public init on a borrowed connection, another schema. */
    PGconn *c = pgh_connect(&server);
    ASSERT_OK(outbox_schema_init_pg(c, "other_schema", &err), &err);
    ASSERT_OK(outbox_schema_init_pg(c, "other_schema", &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT value::int FROM other_schema.meta WHERE key = 'partitions'"),
              32);
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_schema_init_pg(c, "other_schema", &err), OUTBOX_EINVAL);
    pgh_exec(c, "ROLLBACK");

    /* A version 1 schema (no waiting flag) is upgraded to 9. */
    pgh_exec(c, "ALTER TABLE other_schema.relays DROP COLUMN waiting");
    pgh_exec(c, "DROP FUNCTION other_schema.wake_relays()");
    pgh_exec(c, "UPDATE other_schema.meta SET value = '1' WHERE key = 'schema_version'");
    ASSERT_OK(outbox_schema_init_pg(c, "other_schema", &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT value::int FROM other_schema.meta WHERE key = 'schema_version'"),
              9);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                           " 'other_schema' AND table_name = 'relays' AND column_name = 'waiting'"),
              1);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_proc WHERE proname = 'wake_relays'"
                           " AND pronamespace = 'other_schema'::regnamespace AND prosecdef"),
              1);

    /* Newer schema. */
    pgh_exec(c, "UPDATE other_schema.meta SET value = '99' WHERE key = 'schema_version'");
    ASSERT_EQ(outbox_schema_init_pg(c, "other_schema", &err), OUTBOX_ESCHEMANEWER);
    char u2[800];
    snprintf(u2, sizeof u2, "%s?schema=other_schema", server.url);
    open_store(&s, u2);
    ASSERT_EQ(s.ops->check_schema(s.state, &err), OUTBOX_ESCHEMANEWER);
    outbox__store_close(&s);
    pgh_exec(c, "DROP SCHEMA other_schema CASCADE");
    PQfinish(c);
}

/* Notifications that reach listener within tries * 10 ms. */
static int count_notes(PGconn *listener, int tries);

/* One transaction with one message through outbox_enqueue_pg_schema. */
static void enqueue_one(PGconn *c, const char *schema, const char *agg)
{
    outbox_error err;
    outbox_msg *m = make_msg(agg, "{}");
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg_schema(c, schema, m, &err), &err);
    pgh_exec(c, "COMMIT");
    outbox_msg_free(m);
}

/* A version 2 schema (every enqueuing statement reads the relays table in
 * a SECURITY DEFINER trigger) is upgraded in place, keeping its rows;
 * afterwards the trigger notifies only while a relay holds the "asleep"
 * lock and its flag is set, also for a role that may only insert into the
 * outbox (no rights on relays). */
TEST(upgrade_v2_to_v3)
{
    outbox_error err;
    PGconn *c = pgh_connect(&server);
    PGconn *relay = pgh_connect(&server);
    PGconn *listener = pgh_connect(&server);

    pgh_exec(c, "DROP SCHEMA IF EXISTS v2_schema CASCADE");
    ASSERT_OK(outbox_schema_init_pg(c, "v2_schema", &err), &err);
    /* Back to version 2 exactly as it was released. */
    pgh_exec(c, "CREATE OR REPLACE FUNCTION \"v2_schema\".notify_enqueue() RETURNS trigger"
                " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$\n"
                "BEGIN\n"
                " UPDATE \"v2_schema\".relays SET waiting = false WHERE id IN"
                "  (SELECT id FROM \"v2_schema\".relays WHERE waiting FOR UPDATE SKIP LOCKED);\n"
                " IF FOUND THEN PERFORM pg_notify('v2_schema', ''); END IF;\n"
                " RETURN NULL;\n"
                "END $fn$;");
    pgh_exec(c, "DROP FUNCTION v2_schema.wake_relays()");
    pgh_exec(c, "UPDATE v2_schema.meta SET value = '2' WHERE key = 'schema_version'");
    enqueue_one(c, "v2_schema", "before-upgrade");
    pgh_exec(listener, "LISTEN v2_schema");
    /* Version 2 reads the flag: a flag alone is enough to notify. */
    pgh_exec(relay, "INSERT INTO v2_schema.relays (name, waiting) VALUES ('fake', true)");
    enqueue_one(c, "v2_schema", "v2-flag");
    ASSERT_EQ(count_notes(listener, 30), 1);

    ASSERT_OK(outbox_schema_init_pg(c, "v2_schema", &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT value::int FROM v2_schema.meta WHERE key = 'schema_version'"),
              9);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM v2_schema.outbox"), 2);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_proc WHERE proname = 'notify_enqueue'"
                           " AND pronamespace = 'v2_schema'::regnamespace AND NOT prosecdef"),
              1);

    /* Version 3: a flag without the lock (no relay asleep) costs no
     * notification; flag and lock: one. */
    pgh_exec(relay, "UPDATE v2_schema.relays SET waiting = true");
    enqueue_one(c, "v2_schema", "v3-flag-only");
    ASSERT_EQ(count_notes(listener, 30), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM v2_schema.relays WHERE waiting"), 1);
    pgh_exec(relay, "SELECT pg_advisory_lock_shared(hashtext('outbox.sleep:v2_schema'), 0)");
    enqueue_one(c, "v2_schema", "v3-asleep");
    ASSERT_EQ(count_notes(listener, 30), 1);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM v2_schema.relays WHERE waiting"), 0);
    enqueue_one(c, "v2_schema", "v3-flag-used");
    ASSERT_EQ(count_notes(listener, 30), 0);

    /* A role that may only insert into the outbox: enqueues with and
     * without a relay asleep, and the wake-up still reaches the relay. */
    pgh_exec(c, "DROP ROLE IF EXISTS outbox_writer_only");
    pgh_exec(c, "CREATE ROLE outbox_writer_only");
    pgh_exec(c, "GRANT USAGE ON SCHEMA v2_schema TO outbox_writer_only");
    /* outbox_enqueue_pg reads back seq (RETURNING) and checks id. */
    pgh_exec(c, "GRANT INSERT, SELECT (seq, id) ON v2_schema.outbox TO outbox_writer_only");
    PGconn *w = pgh_connect(&server);
    pgh_exec(w, "SET ROLE outbox_writer_only");
    {
        PGresult *r = PQexec(w, "SELECT count(*) FROM v2_schema.relays");
        ASSERT_EQ(PQresultStatus(r), PGRES_FATAL_ERROR); /* no rights on relays */
        PQclear(r);
    }
    pgh_exec(relay, "UPDATE v2_schema.relays SET waiting = true");
    enqueue_one(w, "v2_schema", "writer-asleep");
    ASSERT_EQ(count_notes(listener, 30), 1);
    pgh_exec(relay, "SELECT pg_advisory_unlock_shared(hashtext('outbox.sleep:v2_schema'), 0)");
    pgh_exec(relay, "UPDATE v2_schema.relays SET waiting = true");
    enqueue_one(w, "v2_schema", "writer-awake");
    ASSERT_EQ(count_notes(listener, 30), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM v2_schema.outbox"), 7);
    PQfinish(w);

    pgh_exec(c, "DROP SCHEMA v2_schema CASCADE");
    pgh_exec(c, "DROP ROLE outbox_writer_only");
    PQfinish(listener);
    PQfinish(relay);
    PQfinish(c);
}

TEST(urls)
{
    outbox_store s;
    outbox_error err;
    char u[900];

    /* postgresql:// and keyword strings. */
    snprintf(u, sizeof u, "postgresql://postgres@127.0.0.1:%d/postgres", server.port);
    open_store(&s, u);
    ASSERT_OK(s.ops->check_schema(s.state, &err), &err);
    outbox__store_close(&s);
    snprintf(u, sizeof u, "postgres:host=127.0.0.1 port=%d user=postgres schema=outbox",
             server.port);
    open_store(&s, u);
    ASSERT_OK(s.ops->check_schema(s.state, &err), &err);
    outbox__store_close(&s);

    /* Passwords never appear in errors (nothing listens on port 1). */
    ASSERT_NE(outbox__store_open(&s, "postgres://bob:s3cretpw@127.0.0.1:1/db", &err), OUTBOX_OK);
    ASSERT(strstr(err.message, "s3cretpw") == NULL);
    ASSERT_CONTAINS(err.message, "127.0.0.1");
    ASSERT_NE(outbox__store_open(&s, "postgres:host=127.0.0.1 port=1 password=s3cretpw", &err),
              OUTBOX_OK);
    ASSERT(strstr(err.message, "s3cretpw") == NULL);

    /* Injection attempts in the schema name are refused before any SQL. */
    const char *bad[] = {"x%22%3Bdrop", "a\";DROP TABLE outbox.outbox;--", "a b", "1abc", "sch'ema",
                         "a;b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(u, sizeof u, "%s?schema=%s", server.url, bad[i]);
        ASSERT_EQ(outbox__store_open(&s, u, &err), OUTBOX_ECONFIG);
        ASSERT_CONTAINS(err.message, "schema name");
    }
    snprintf(u, sizeof u, "postgres:host=127.0.0.1 port=%d schema='x;drop'", server.port);
    ASSERT_EQ(outbox__store_open(&s, u, &err), OUTBOX_ECONFIG);
    PGconn *c = pgh_connect(&server);
    ASSERT_EQ(outbox_schema_init_pg(c, "x\"; DROP SCHEMA outbox CASCADE; --", &err),
              OUTBOX_ECONFIG);
    outbox_msg *m = make_msg("a", "{}");
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_enqueue_pg_schema(c, "outbox; DROP", m, &err), OUTBOX_ECONFIG);
    pgh_exec(c, "ROLLBACK");
    outbox_msg_free(m);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'outbox'"
                           " AND tablename = 'outbox'"),
              1);
    PQfinish(c);

    /* Bad parameters. */
    snprintf(u, sizeof u, "%s?partitions=0", server.url);
    ASSERT_EQ(outbox__store_open(&s, u, &err), OUTBOX_ECONFIG);
    snprintf(u, sizeof u, "postgres:host=127.0.0.1 nonsense");
    ASSERT_EQ(outbox__store_open(&s, u, &err), OUTBOX_EBADURL);
}

/* Opens the store at u and checks, through c, that its session has the
 * application_name the URL gave libpq. */
static void open_store_as(outbox_store *s, const char *u, PGconn *c, const char *app)
{
    const char *params[1] = {app};
    PGresult *r;
    open_store(s, u);
    r = PQexecParams(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", 1,
                     NULL, params, NULL, NULL, 0);
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
    ASSERT_STREQ(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
}

/* The store's own settings (schema, partitions) are read with its
 * property table from both URL forms, checked and reported alike; every
 * other parameter reaches libpq unchanged. */
TEST(url_settings)
{
    static const struct {
        const char *uri, *keywords; /* the same setting in each form */
        int code;
        const char *says;
    } bad[] = {
        {"partitions=0", "partitions=0", OUTBOX_ECONFIG,
         "partitions=0 is out of range: give from 1 to 1024; partitions: How many"},
        {"partitions=1025", "partitions = 1025", OUTBOX_ECONFIG, "from 1 to 1024"},
        {"partitions=x", "partitions='x'", OUTBOX_ECONFIG,
         "partitions=x is not a whole number from 1 to 1024"},
        {"schema=a%20b", "schema='a b'", OUTBOX_ECONFIG, "schema name 'a b' is not accepted"},
        {"schema=", "schema=''", OUTBOX_ECONFIG, "schema name '' is not accepted"},
        {"schema=a123456789b123456789c123456789d123456789e123456789f123456789xyzw",
         "schema=a123456789b123456789c123456789d123456789e123456789f123456789xyzw", OUTBOX_ECONFIG,
         "use 1 to 63 letters"},
        {"schema=a&schema=b", "schema=a schema=b", OUTBOX_EBADURL,
         "setting \"schema\" is given twice"},
        {"partiton=8", "partiton=8", OUTBOX_EBADURL, "schema=NAME, partitions=N"},
        {"query_timeout=0s", "query_timeout=0s", OUTBOX_ECONFIG,
         "query_timeout=0s is out of range: give from 1s to 1d; query_timeout: How long the relay "
         "waits"},
        {"query_timeout=soon", "query_timeout=soon", OUTBOX_ECONFIG,
         "query_timeout=soon is not a duration"},
    };
    outbox_store s;
    outbox_error err;
    outbox_buf logs;
    char u[900];
    int from = -1, to = -1;
    PGconn *c = pgh_connect(&server);

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(u, sizeof u, "%s?sslmode=disable&%s", server.url, bad[i].uri);
        ASSERT_EQ(outbox__store_open(&s, u, &err), bad[i].code);
        ASSERT_CONTAINS(err.message, bad[i].says);
        snprintf(u, sizeof u, "postgres:host=127.0.0.1 port=%d sslmode=disable %s", server.port,
                 bad[i].keywords);
        ASSERT_EQ(outbox__store_open(&s, u, &err), bad[i].code);
        ASSERT_CONTAINS(err.message, bad[i].says);
    }
    /* The URL in those messages is redacted. */
    ASSERT_EQ(outbox__store_open(&s, "postgres://bob:s3cretpw@127.0.0.1:1/db?partitions=0", &err),
              OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "store URL 'postgres://bob:***@127.0.0.1:1/db?partitions=0'");
    ASSERT_EQ(
        outbox__store_open(&s, "postgres:host=127.0.0.1 password=s3cretpw partitions=0", &err),
        OUTBOX_ECONFIG);
    ASSERT(strstr(err.message, "s3cretpw") == NULL);

    /* libpq's parameters reach libpq beside the store's own, which a URI
     * percent-decodes and a keyword string unquotes, as libpq does. */
    snprintf(u, sizeof u,
             "%s?sslmode=disable&application_name=outbox%%20uri&schema=url%%5Fsettings"
             "&connect_timeout=5&partitions=8",
             server.url);
    open_store_as(&s, u, c, "outbox uri");
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    ASSERT_EQ(from, 0);
    outbox__store_close(&s);
    ASSERT_EQ(pgh_count(c, "SELECT value::int FROM url_settings.meta WHERE key = 'partitions'"), 8);

    /* Only a partition count the URL gives is compared with the schema's:
     * the default is not a request. */
    outbox__buf_init(&logs);
    outbox_log_set(capture_log, &logs, OUTBOX_LOG_INFO);
    snprintf(u, sizeof u,
             "postgres:host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable "
             "application_name='outbox kw' schema='url_settings' connect_timeout=5",
             server.port);
    open_store_as(&s, u, c, "outbox kw");
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    ASSERT_EQ(from, 9);
    outbox__store_close(&s);
    ASSERT(logs.data == NULL || strstr(logs.data, "not applied") == NULL);
    snprintf(u, sizeof u,
             "postgres:host=127.0.0.1 port=%d user=postgres dbname=postgres schema=url_settings "
             "partitions=16",
             server.port);
    open_store(&s, u);
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    outbox__store_close(&s);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_CONTAINS(logs.data,
                    "partitions=16 is not applied: the outbox schema url_settings has 8");
    outbox__buf_free(&logs);

    pgh_exec(c, "DROP SCHEMA url_settings CASCADE");
    PQfinish(c);
}

TEST(enqueue_transactions)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    outbox_msg *m = make_msg("order-1", "{\"a\":1}");
    int64_t before = count_rows(c, "outbox", NULL);

    /* No transaction. */
    ASSERT_EQ(outbox_enqueue_pg(c, m, &err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "transaction");
    /* Rollback: nothing. */
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(count_rows(c, "outbox", NULL), before);
    /* Commit: one row with our fields. */
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
    /* Duplicate id: EEXISTS and the transaction stays usable. */
    ASSERT_EQ(outbox_enqueue_pg(c, m, &err), OUTBOX_EEXISTS);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);
    /* Missing schema: ENOSCHEMA, transaction still usable. */
    ASSERT_EQ(outbox_enqueue_pg_schema(c, "nope", m, &err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);
    pgh_exec(c, "COMMIT");
    ASSERT_EQ(count_rows(c, "outbox", NULL), before + 1);
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox.outbox WHERE id = '%s' AND type = 'Tick' AND"
             " aggregate_type = 'Agg' AND aggregate_id = 'order-1' AND payload = '{\"a\":1}'"
             " AND status = 'pending' AND attempts = 0",
             outbox_msg_id(m));
    ASSERT_EQ(pgh_count(c, sql), 1);
    /* Occurred_at keeps microseconds. */
    snprintf(sql, sizeof sql,
             "SELECT (extract(epoch FROM occurred_at) * 1000000)::bigint FROM outbox.outbox"
             " WHERE id = '%s'",
             outbox_msg_id(m));
    ASSERT_EQ(pgh_count(c, sql), outbox_msg_occurred_at(m));
    outbox_msg_free(m);

    /* The prepared statement is prepared once per connection. */
    m = make_msg("order-2", "{}");
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
    pgh_exec(c, "COMMIT");
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_prepared_statements"
                           " WHERE name = 'outbox_enqueue.outbox'"),
              1);
    outbox_msg_free(m);
    /* A failed transaction is reported as such. */
    m = make_msg("order-3", "{}");
    pgh_exec(c, "BEGIN");
    PQclear(PQexec(c, "SELECT nonsense_column FROM nowhere"));
    ASSERT_EQ(outbox_enqueue_pg(c, m, &err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "ROLLBACK");
    pgh_exec(c, "ROLLBACK");
    outbox_msg_free(m);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * outbox_enqueue_commit_pg: the messages and the COMMIT in one pipeline
 * ---------------------------------------------------------------------- */

/* Starts a transaction on c with the business row (id, note). */
static void begin_business(PGconn *c, int id, const char *note)
{
    char sql[200];
    pgh_exec(c, "BEGIN");
    snprintf(sql, sizeof sql, "INSERT INTO commit_biz (id, note) VALUES (%d, '%s')", id, note);
    pgh_exec(c, sql);
}

static int64_t business_rows(PGconn *c, int id)
{
    char sql[100];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM commit_biz WHERE id = %d", id);
    return pgh_count(c, sql);
}

static int64_t outbox_rows_with_id(PGconn *c, const outbox_msg *m)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox.outbox WHERE id = '%s'",
             outbox_msg_id(m));
    return pgh_count(c, sql);
}

TEST(enqueue_commit)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    outbox_msg *m[4];
    char sql[400];
    int64_t before;

    pgh_exec(c, "DROP TABLE IF EXISTS commit_biz");
    pgh_exec(c, "CREATE TABLE commit_biz (id int PRIMARY KEY, note text NOT NULL)");
    pgh_exec(c, "DELETE FROM outbox.outbox");
    for (int i = 0; i < 4; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "agg-%d", i);
        m[i] = make_msg(agg, "{\"k\":1}");
    }

#ifdef OUTBOX_FAULT_INJECTION
    /* main() arms pg_enqueue_before_commit for its first time: the
     * INSERTs ran in the pipeline, the COMMIT was not sent.  The
     * transaction is still open with them; the caller's ROLLBACK leaves
     * nothing. */
    begin_business(c, 90, "fault");
    ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, (const outbox_msg *const *)m, 2, &err),
              OUTBOX_EFAULT);
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox"), 2); /* seen inside */
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(business_rows(c, 90), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox"), 0);
#endif

    /* NULL arguments: refused, nothing sent, the transaction untouched. */
    begin_business(c, 99, "null args");
    ASSERT_EQ(outbox_enqueue_commit_pg(NULL, NULL, (const outbox_msg *const *)m, 1, &err),
              OUTBOX_EINVAL);
    ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, NULL, 1, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "msgs");
    {
        const outbox_msg *holes[3] = {m[0], NULL, m[1]};
        ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, holes, 3, &err), OUTBOX_EINVAL);
        ASSERT_CONTAINS(err.message, "msgs[1]");
    }
    ASSERT_EQ(outbox_enqueue_commit_pg(c, "bad name;", (const outbox_msg *const *)m, 1, &err),
              OUTBOX_ECONFIG);
    /* A missing schema: refused before the pipeline, transaction usable. */
    ASSERT_EQ(outbox_enqueue_commit_pg(c, "nope", (const outbox_msg *const *)m, 1, &err),
              OUTBOX_ENOSCHEMA);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INTRANS);
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(business_rows(c, 99), 0);

    /* Outside a transaction: refused, nothing inserted (in autocommit the
     * INSERT alone would have committed). */
    before = count_rows(c, "outbox", NULL);
    ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, (const outbox_msg *const *)m, 1, &err),
              OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "open transaction");
    ASSERT_EQ(count_rows(c, "outbox", NULL), before);
    ASSERT_EQ(outbox_rows_with_id(c, m[0]), 0);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);

    /* A transaction that already failed: refused, told to roll back. */
    pgh_exec(c, "BEGIN");
    PQclear(PQexec(c, "SELECT nonsense_column FROM nowhere"));
    ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, (const outbox_msg *const *)m, 1, &err),
              OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "ROLLBACK");
    pgh_exec(c, "ROLLBACK");

    /* 0 messages: just the COMMIT. */
    begin_business(c, 1, "zero");
    ASSERT_OK(outbox_enqueue_commit_pg(c, NULL, NULL, 0, &err), &err);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);
    ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    ASSERT_EQ(business_rows(c, 1), 1);
    ASSERT_EQ(count_rows(c, "outbox", NULL), before);

    /* 1 message: committed with the business row, with its fields. */
    begin_business(c, 2, "one");
    ASSERT_OK(outbox_enqueue_commit_pg(c, NULL, (const outbox_msg *const *)m, 1, &err), &err);
    ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);
    ASSERT_EQ(business_rows(c, 2), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox.outbox WHERE id = '%s' AND type = 'Tick' AND"
             " aggregate_type = 'Agg' AND aggregate_id = 'agg-0' AND payload = '{\"k\":1}'"
             " AND headers = '{}' AND status = 'pending' AND attempts = 0 AND"
             " (extract(epoch FROM occurred_at) * 1000000)::bigint = %lld",
             outbox_msg_id(m[0]), (long long)outbox_msg_occurred_at(m[0]));
    ASSERT_EQ(pgh_count(c, sql), 1);

    /* 3 messages: all committed, in array order (seq). */
    begin_business(c, 3, "three");
    ASSERT_OK(outbox_enqueue_commit_pg(c, "outbox", (const outbox_msg *const *)m + 1, 3, &err),
              &err);
    ASSERT_EQ(business_rows(c, 3), 1);
    ASSERT_EQ(count_rows(c, "outbox", NULL), before + 4);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(aggregate_id, ',' ORDER BY seq) = 'agg-1,agg-2,agg-3'"
             " FROM outbox.outbox WHERE id IN ('%s', '%s', '%s')",
             outbox_msg_id(m[1]), outbox_msg_id(m[2]), outbox_msg_id(m[3]));
    {
        PGresult *r = PQexec(c, sql);
        ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
        ASSERT_STREQ(PQgetvalue(r, 0, 0), "t");
        PQclear(r);
    }
    /* Its statement is prepared once per connection, next to
     * outbox_enqueue_pg's. */
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_prepared_statements"
                           " WHERE name = 'outbox_enqueue_commit.outbox'"),
              1);

    /* A duplicate id (already committed): the pipeline stops at that
     * INSERT, COMMIT does not run, the transaction is left failed; after
     * the caller's ROLLBACK neither the business row nor the other
     * message is there, and the connection works. */
    {
        outbox_msg *fresh = make_msg("agg-fresh", "{}");
        const outbox_msg *dup[2] = {fresh, m[0]};
        begin_business(c, 4, "duplicate");
        ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, dup, 2, &err), OUTBOX_EEXISTS);
        ASSERT_CONTAINS(err.message, "message 2 of 2");
        ASSERT_CONTAINS(err.message, outbox_msg_id(m[0]));
        ASSERT_CONTAINS(err.message, "ROLLBACK");
        ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
        ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INERROR);
        pgh_exec(c, "ROLLBACK");
        ASSERT_EQ(business_rows(c, 4), 0);
        ASSERT_EQ(outbox_rows_with_id(c, fresh), 0);

        /* The same id twice in one call. */
        const outbox_msg *twice[2] = {fresh, fresh};
        begin_business(c, 5, "twice");
        ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, twice, 2, &err), OUTBOX_EEXISTS);
        ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INERROR);
        pgh_exec(c, "ROLLBACK");
        ASSERT_EQ(business_rows(c, 5), 0);
        ASSERT_EQ(outbox_rows_with_id(c, fresh), 0);

        /* Still usable: the same transaction again, without the duplicate. */
        begin_business(c, 4, "duplicate, retried");
        ASSERT_OK(outbox_enqueue_commit_pg(c, NULL, dup, 1, &err), &err);
        ASSERT_EQ(business_rows(c, 4), 1);
        ASSERT_EQ(outbox_rows_with_id(c, fresh), 1);
        outbox_msg_free(fresh);
    }

    /* A row the table refuses in the middle of three (a constraint the
     * test adds): message 2 of 3 is named, nothing is committed. */
    {
        outbox_msg *a = make_msg("ok-1", "{}"), *p = make_msg("poison", "{}"),
                   *b = make_msg("ok-2", "{}");
        const outbox_msg *three[3] = {a, p, b};
        pgh_exec(c, "ALTER TABLE outbox.outbox ADD CONSTRAINT test_poison"
                    " CHECK (aggregate_id <> 'poison')");
        begin_business(c, 6, "poison");
        ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, three, 3, &err), OUTBOX_ESTORE);
        ASSERT_CONTAINS(err.message, "message 2 of 3");
        ASSERT_CONTAINS(err.message, "23514");
        ASSERT_EQ(PQtransactionStatus(c), PQTRANS_INERROR);
        pgh_exec(c, "ROLLBACK");
        pgh_exec(c, "ALTER TABLE outbox.outbox DROP CONSTRAINT test_poison");
        ASSERT_EQ(business_rows(c, 6), 0);
        ASSERT_EQ(outbox_rows_with_id(c, a) + outbox_rows_with_id(c, p) + outbox_rows_with_id(c, b),
                  0);
        outbox_msg_free(a);
        outbox_msg_free(p);
        outbox_msg_free(b);
    }

    /* The COMMIT itself fails (a deferred constraint trigger): reported
     * as such, the server rolled everything back. */
    {
        outbox_msg *x = make_msg("at-commit", "{}");
        const outbox_msg *one[1] = {x};
        pgh_exec(c, "CREATE FUNCTION commit_biz_refuse() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$");
        pgh_exec(c, "CREATE CONSTRAINT TRIGGER commit_biz_refuse AFTER INSERT ON commit_biz"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.note = 'refuse')"
                    " EXECUTE FUNCTION commit_biz_refuse()");
        begin_business(c, 7, "refuse");
        ASSERT_EQ(outbox_enqueue_commit_pg(c, NULL, one, 1, &err), OUTBOX_ESTORE);
        ASSERT_CONTAINS(err.message, "COMMIT failed");
        ASSERT_CONTAINS(err.message, "refused at commit");
        ASSERT_EQ(PQtransactionStatus(c), PQTRANS_IDLE);
        ASSERT_EQ(PQpipelineStatus(c), PQ_PIPELINE_OFF);
        ASSERT_EQ(business_rows(c, 7), 0);
        ASSERT_EQ(outbox_rows_with_id(c, x), 0);

        /* The session ends during COMMIT (the deferred trigger terminates
         * its own backend): the outcome is reported as unknown. */
        PGconn *d = pgh_connect(&server);
        pgh_exec(c, "CREATE FUNCTION commit_biz_die() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid());"
                    " PERFORM pg_sleep(1); RETURN NULL; END $$");
        pgh_exec(c, "CREATE CONSTRAINT TRIGGER commit_biz_die AFTER INSERT ON commit_biz"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.note = 'die')"
                    " EXECUTE FUNCTION commit_biz_die()");
        begin_business(d, 7, "die");
        ASSERT_EQ(outbox_enqueue_commit_pg(d, NULL, one, 1, &err), OUTBOX_EIO);
        ASSERT_CONTAINS(err.message, "during COMMIT");
        ASSERT_CONTAINS(err.message, "unknown");
        ASSERT_EQ(PQpipelineStatus(d), PQ_PIPELINE_OFF);
        ASSERT_EQ(business_rows(c, 7), 0); /* here it had not committed */
        PQfinish(d);
        pgh_exec(c, "DROP TRIGGER commit_biz_die ON commit_biz");
        pgh_exec(c, "DROP FUNCTION commit_biz_die()");
        outbox_msg_free(x);
    }

    /* Many messages in one pipeline (more than libpq's output buffer). */
    {
        enum { MANY = 2000 };
        outbox_msg **many = calloc(MANY, sizeof *many);
        ASSERT(many != NULL);
        for (int i = 0; i < MANY; i++) {
            char agg[24];
            snprintf(agg, sizeof agg, "many-%d", i % 50);
            many[i] = make_msg(agg, "{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}");
        }
        before = count_rows(c, "outbox", NULL);
        begin_business(c, 8, "many");
        ASSERT_OK(outbox_enqueue_commit_pg(c, NULL, (const outbox_msg *const *)many, MANY, &err),
                  &err);
        ASSERT_EQ(count_rows(c, "outbox", NULL), before + MANY);
        ASSERT_EQ(business_rows(c, 8), 1);
        for (int i = 0; i < MANY; i++)
            outbox_msg_free(many[i]);
        free(many);
    }

    /* The connection dies under the call: OUTBOX_EIO, the business row is
     * not committed, and after PQreset the connection works (out of
     * pipeline mode). */
    {
        PGconn *victim = pgh_connect(&server);
        outbox_msg *y = make_msg("lost", "{}");
        const outbox_msg *one[1] = {y};
        /* Prepared beforehand, so the call goes straight to the pipeline. */
        begin_business(victim, 9, "warm-up");
        ASSERT_OK(outbox_enqueue_commit_pg(victim, NULL, NULL, 0, &err), &err);
        {
            outbox_msg *w = make_msg("warm", "{}");
            const outbox_msg *wone[1] = {w};
            begin_business(victim, 10, "warm-up 2");
            ASSERT_OK(outbox_enqueue_commit_pg(victim, NULL, wone, 1, &err), &err);
            outbox_msg_free(w);
        }
        begin_business(victim, 11, "lost");
        snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", PQbackendPID(victim));
        pgh_exec(c, sql);
        snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d",
                 PQbackendPID(victim));
        for (int i = 0; i < 200 && pgh_count(c, sql) > 0; i++)
            usleep(10000);
        ASSERT_EQ(pgh_count(c, sql), 0);
        ASSERT_EQ(outbox_enqueue_commit_pg(victim, NULL, one, 1, &err), OUTBOX_EIO);
        ASSERT_CONTAINS(err.message, "connection");
        ASSERT_EQ(business_rows(c, 11), 0);
        ASSERT_EQ(outbox_rows_with_id(c, y), 0);
        PQreset(victim);
        ASSERT_EQ(PQstatus(victim), CONNECTION_OK);
        ASSERT_EQ(PQpipelineStatus(victim), PQ_PIPELINE_OFF);
        begin_business(victim, 11, "after reset");
        ASSERT_OK(outbox_enqueue_commit_pg(victim, NULL, one, 1, &err), &err);
        ASSERT_EQ(business_rows(c, 11), 1);
        ASSERT_EQ(outbox_rows_with_id(c, y), 1);

        /* The socket breaks on the client's side: the COMMIT may or may
         * not have reached the server as far as the client can tell, and
         * the error says so. */
        outbox_msg *z = make_msg("broken", "{}");
        const outbox_msg *zone[1] = {z};
        begin_business(victim, 12, "broken socket");
        ASSERT_EQ(shutdown(PQsocket(victim), SHUT_RDWR), 0);
        ASSERT_EQ(outbox_enqueue_commit_pg(victim, NULL, zone, 1, &err), OUTBOX_EIO);
        ASSERT_CONTAINS(err.message, "unknown");
        PQreset(victim);
        ASSERT_EQ(PQstatus(victim), CONNECTION_OK);
        ASSERT_EQ(PQpipelineStatus(victim), PQ_PIPELINE_OFF);
        ASSERT_EQ(business_rows(c, 12), 0); /* here: the server never saw the COMMIT */
        ASSERT_EQ(outbox_rows_with_id(c, z), 0);
        outbox_msg_free(z);
        outbox_msg_free(y);
        PQfinish(victim);
    }

    /* A role that may only insert (no SELECT on the outbox): its INSERT
     * returns nothing, so that is enough. */
    {
        outbox_msg *v = make_msg("insert-only", "{}");
        const outbox_msg *one[1] = {v};
        pgh_exec(c, "DROP ROLE IF EXISTS outbox_insert_only");
        pgh_exec(c, "CREATE ROLE outbox_insert_only");
        pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO outbox_insert_only");
        pgh_exec(c, "GRANT INSERT ON outbox.outbox, commit_biz TO outbox_insert_only");
        PGconn *w = pgh_connect(&server);
        pgh_exec(w, "SET ROLE outbox_insert_only");
        begin_business(w, 13, "insert only");
        ASSERT_OK(outbox_enqueue_commit_pg(w, NULL, one, 1, &err), &err);
        ASSERT_EQ(business_rows(c, 13), 1);
        ASSERT_EQ(outbox_rows_with_id(c, v), 1);
        PQfinish(w);
        pgh_exec(c, "DROP OWNED BY outbox_insert_only");
        pgh_exec(c, "DROP ROLE outbox_insert_only");
        outbox_msg_free(v);
    }

    for (int i = 0; i < 4; i++)
        outbox_msg_free(m[i]);
    pgh_exec(c, "DROP TABLE commit_biz");
    pgh_exec(c, "DROP FUNCTION commit_biz_refuse()");
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

/* Calls outbox.enqueue with sql and expects an error with SQLSTATE state
 * and nothing inserted. */
static void expect_sql_error(PGconn *c, const char *sql, const char *state, const char *words)
{
    int64_t before = count_rows(c, "outbox", NULL);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_FATAL_ERROR)
        TEST_FAIL_("expected an error from %s, got %s", sql, PQresStatus(PQresultStatus(r)));
    const char *got = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state && (!got || strcmp(got, state) != 0))
        TEST_FAIL_("%s: SQLSTATE %s, expected %s (%s)", sql, got ? got : "-", state,
                   PQresultErrorMessage(r));
    if (words) ASSERT_CONTAINS(PQresultErrorMessage(r), words);
    PQclear(r);
    ASSERT_EQ(count_rows(c, "outbox", NULL), before);
}

TEST(sql_functions)
{
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");

    /* Good input, positional and named. */
    PGresult *r = PQexec(c, "SELECT outbox.enqueue('OrderPlaced', 'o-1', '{\"total\":5}',"
                            " '{\"correlation_id\":\"c-1\"}', 'Order')");
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
    char id[64];
    snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    ASSERT(outbox_uuid_valid(id));
    ASSERT_EQ(id[14], '7'); /* UUIDv7 */
    pgh_exec(c, "SELECT outbox.enqueue(type => 'T', aggregate_id => 'o-2', payload => '[1,2]',"
                " id => '0190a0a0-0000-7000-8000-000000000001')");
    ASSERT_EQ(count_rows(c, "outbox", "id = '0190a0a0-0000-7000-8000-000000000001'"), 1);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 2);

    /* Bad input: clear error, nothing inserted. */
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '[1]')", "22023",
                     "headers must be a JSON object");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"k\":1}')", "22023",
                     "must be a string");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"k\":\"a\\nb\"}')", "22023",
                     "control characters");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"\":\"v\"}')", "22023",
                     "non-empty");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"traceparent\":\"zz\"}')",
                     "22023", "traceparent");
    expect_sql_error(c, "SELECT outbox.enqueue('', 'a', '{}')", "22023", "type");
    expect_sql_error(c, "SELECT outbox.enqueue(E'T\\x01', 'a', '{}')", "22023", "type");
    expect_sql_error(c, "SELECT outbox.enqueue('T', NULL, '{}')", "22023", "aggregate_id");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', NULL)", "22023", "payload");
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', 'not json')", "22P02", NULL);
    expect_sql_error(c, "SELECT outbox.enqueue('T', 'a', '{}', '{}', repeat('x', 300))", "22023",
                     "aggregate_type");
    expect_sql_error(c,
                     "SELECT outbox.enqueue('T', 'a', jsonb_build_object('s', repeat('x',"
                     " 1100000)))",
                     "54000", "limit");
    /* Duplicate id. */
    expect_sql_error(c,
                     "SELECT outbox.enqueue('T', 'a', '{}', id =>"
                     " '0190a0a0-0000-7000-8000-000000000001')",
                     "23505", NULL);

    /* Injection in header values: stored verbatim, nothing executed. */
    pgh_exec(c, "SELECT outbox.enqueue('T', 'inj', '{}', '{\"x\":\"a''; DROP TABLE"
                " outbox.outbox; --\", \"y\":\"q\\\"uote; semi\"}')");
    ASSERT_EQ(count_rows(c, "outbox", "headers->>'x' = 'a''; DROP TABLE outbox.outbox; --'"), 1);
    ASSERT_EQ(count_rows(c, "outbox", "headers->>'y' = 'q\"uote; semi'"), 1);

    /* The library's enqueue with such headers, through the relay path. */
    outbox_msg *m = make_msg("inj2", "{}");
    outbox_error err;
    ASSERT_OK(outbox_msg_set_header(m, "evil", "x'); DELETE FROM outbox.outbox; --", &err), &err);
    pgh_exec(c, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
    pgh_exec(c, "COMMIT");
    ASSERT_EQ(count_rows(c, "outbox", "headers->>'evil' = 'x''); DELETE FROM outbox.outbox; --'"),
              1);
    outbox_msg_free(m);

    /* inbox_record. */
    ASSERT_EQ(
        pgh_count(c,
                  "SELECT outbox.inbox_record('svc', '0190a0a0-0000-7000-8000-0000000000aa')::int"),
        1);
    ASSERT_EQ(
        pgh_count(c,
                  "SELECT outbox.inbox_record('svc', '0190a0a0-0000-7000-8000-0000000000aa')::int"),
        0);
    expect_sql_error(c, "SELECT outbox.inbox_record('', '0190a0a0-0000-7000-8000-0000000000aa')",
                     "22023", "consumer");
    pgh_exec(c, "DELETE FROM outbox.outbox; DELETE FROM outbox.inbox");
    PQfinish(c);
}

TEST(inbox)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    const char *id = "0190A0A0-0000-7000-8000-0000000000BB";
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", id, &err), OUTBOX_ENOTXN);
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", id, &err), OUTBOX_OK);
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", id, &err), OUTBOX_DUPLICATE);
    ASSERT_EQ(outbox_inbox_record_pg(c, "other", id, &err), OUTBOX_OK);
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", "not-a-uuid", &err), OUTBOX_EBADID);
    ASSERT_EQ(outbox_inbox_record_pg(c, "a\nb", id, &err), OUTBOX_EINVAL);
    pgh_exec(c, "ROLLBACK");
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", id, &err), OUTBOX_OK); /* rolled back before */
    pgh_exec(c, "COMMIT");
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", id, &err), OUTBOX_DUPLICATE);
    pgh_exec(c, "COMMIT");
    pgh_exec(c, "DELETE FROM outbox.inbox");
    PQfinish(c);
}

/* outbox_inbox_purge_pg: deletes only entries older than the retention (by
 * the server's clock), refuses inside a transaction and a negative
 * retention, and warns when the retention is shorter than the horizon. */
TEST(inbox_purge)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    outbox_buf logs;
    int64_t purged = -1;
    const char *ids[] = {"0190A0A0-0000-7000-8000-0000000000C1",
                         "0190A0A0-0000-7000-8000-0000000000C2",
                         "0190A0A0-0000-7000-8000-0000000000C3"};
    pgh_exec(c, "BEGIN");
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(outbox_inbox_record_pg(c, "svc", ids[i], &err), OUTBOX_OK);
    pgh_exec(c, "COMMIT");
    /* Two entries received 10 and 3 days ago, one just now. */
    pgh_exec(c, "UPDATE outbox.inbox SET received_at = now() - interval '10 days'"
                " WHERE message_id = '0190a0a0-0000-7000-8000-0000000000c1'");
    pgh_exec(c, "UPDATE outbox.inbox SET received_at = now() - interval '3 days'"
                " WHERE message_id = '0190a0a0-0000-7000-8000-0000000000c2'");

    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_inbox_purge_pg(c, NULL, 1000, 0, &purged, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "no transaction open");
    pgh_exec(c, "ROLLBACK");
    ASSERT_EQ(outbox_inbox_purge_pg(c, NULL, -1, 0, &purged, &err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_inbox_purge_pg(c, "bad;name", 1000, 0, &purged, &err), OUTBOX_ECONFIG);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.inbox"), 3);

    outbox__buf_init(&logs);
    outbox_log_set(capture_log, &logs, OUTBOX_LOG_INFO);
    /* 7 days: longer than the default horizon, no warning; one entry goes. */
    ASSERT_OK(outbox_inbox_purge_pg(c, NULL, INT64_C(7) * 86400 * 1000, 0, &purged, &err), &err);
    ASSERT_EQ(purged, 1);
    ASSERT(logs.data == NULL || strstr(logs.data, "redelivery horizon") == NULL);
    /* 1 day, against a 2-day horizon: warned, and the 3-day entry goes. */
    ASSERT_OK(outbox_inbox_purge_pg(c, NULL, INT64_C(86400) * 1000, INT64_C(2) * 86400 * 1000,
                                    &purged, &err),
              &err);
    ASSERT_EQ(purged, 1);
    ASSERT(logs.data != NULL && strstr(logs.data, "redelivery horizon") != NULL);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    outbox__buf_free(&logs);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.inbox"), 1);
    pgh_exec(c, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_pg(c, "svc", ids[2], &err), OUTBOX_DUPLICATE);
    pgh_exec(c, "COMMIT");

    /* The store's inbox_purge (what `outbox purge --inbox-older-than` uses). */
    {
        outbox_store st;
        open_store(&st, url);
        ASSERT(st.ops->version >= 3 && st.ops->inbox_purge != NULL);
        pgh_exec(c, "UPDATE outbox.inbox SET received_at = now() - interval '40 days'");
        ASSERT_OK(st.ops->inbox_purge(st.state, INT64_C(30) * 86400 * 1000, 0, &purged, &err),
                  &err);
        ASSERT_EQ(purged, 1);
        outbox__store_close(&st);
    }
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.inbox"), 0);
    PQfinish(c);
}

TEST(claim_order_and_outcomes)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL;
    size_t n;
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, url);

    /* a: 0 1 2, b: 0 1 */
    store_enqueue(&s, "a", 0);
    store_enqueue(&s, "b", 0);
    store_enqueue(&s, "a", 1);
    store_enqueue(&s, "a", 2);
    store_enqueue(&s, "b", 1);

    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 5);
    for (size_t i = 1; i < n; i++)
        ASSERT(msgs[i]->seq > msgs[i - 1]->seq);
    ASSERT_STREQ(msgs[0]->aggregate_id, "a");
    ASSERT_STREQ(msgs[0]->payload, "{\"n\": 0}"); /* jsonb renders with a space */

    /* a0 retry (due in an hour), others unsent except b0 sent. */
    outbox_completion cs[5];
    memset(cs, 0, sizeof cs);
    for (size_t i = 0; i < n; i++) {
        cs[i].msg = msgs[i];
        cs[i].outcome = OUTBOX_OUTCOME_UNSENT;
    }
    cs[0].outcome = OUTBOX_OUTCOME_RETRY;
    cs[0].available_at = outbox__now_us() + 3600 * 1000000LL;
    cs[0].error = "broker said \"no\"; {braces}, back\\slash";
    cs[1].outcome = OUTBOX_OUTCOME_SENT;
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), "x", 10000};
    ASSERT_OK(s.ops->complete(s.state, cs, n, &cp, &err), &err);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox",
                         "last_error = 'broker said \"no\"; {braces}, back\\slash'"
                         " AND attempts = 1"),
              1);

    /* a is held back behind a0; b1 goes. */
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(msgs[0]->aggregate_id, "b");
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_MARK);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'sent' AND sent_at IS NOT NULL"), 1);

    int64_t due = 0;
    ASSERT_OK(s.ops->next_due(s.state, &due, &err), &err);
    ASSERT(due > outbox__now_us() + 3000LL * 1000000);

    /* Make a0 due: it comes first, then fails for good. */
    pgh_exec(c, "UPDATE outbox.outbox SET available_at = now() - interval '1 second'"
                " WHERE attempts > 0");
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(msgs[0]->attempts, 1);
    outbox_completion one[3];
    memset(one, 0, sizeof one);
    for (size_t i = 0; i < n; i++) {
        one[i].msg = msgs[i];
        one[i].outcome = OUTBOX_OUTCOME_UNSENT;
    }
    one[0].outcome = OUTBOX_OUTCOME_FAILED;
    one[0].error = "rejected";
    ASSERT_OK(s.ops->complete(s.state, one, n, &cp, &err), &err);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'failed' AND attempts = 2"), 1);

    /* Failed blocks its aggregate when asked, not otherwise. */
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 0);
    free_msgs(msgs, n);
    n = claim(&s, &msgs, 0);
    ASSERT_EQ(n, 2);
    free_msgs(msgs, n); /* dropped: the next claim rolls back */
    n = claim(&s, &msgs, 0);
    ASSERT_EQ(n, 2);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);

    /* Status, list, get, retry, purge. */
    outbox_status st;
    ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
    ASSERT_EQ(st.pending, 0);
    ASSERT_EQ(st.failed, 1);
    ASSERT_EQ(st.sent, 1);
    ASSERT_EQ(st.schema_version, 9);
    char failed_id[64];
    snprintf(failed_id, sizeof failed_id, "%s", "");
    {
        PGresult *r = PQexec(c, "SELECT id FROM outbox.outbox WHERE status = 'failed'");
        snprintf(failed_id, sizeof failed_id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    outbox_msg *got = NULL;
    ASSERT_OK(s.ops->get(s.state, failed_id, &got, &err), &err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_STREQ(got->last_error, "rejected");
    outbox_msg_free(got);
    ASSERT_EQ(s.ops->get(s.state, "0190a0a0-0000-7000-8000-00000000ffff", &got, &err),
              OUTBOX_ENOTFOUND);
    int64_t count = 0;
    const char *ids[] = {failed_id};
    ASSERT_OK(s.ops->retry(s.state, ids, 1, 0, &count, &err), &err);
    ASSERT_EQ(count, 1);
    ASSERT_OK(s.ops->purge(s.state, outbox__now_us() + 1000000, &count, &err), &err);
    ASSERT_EQ(count, 1);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 1);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);

    outbox__store_close(&s);
    PQfinish(c);
}

/* The pipelined claim leaves out the seqs in flight: a consecutive run
 * (excluded by its range alone) and a list with gaps, where the rows in
 * the gaps are claimed. */
TEST(claim_pipelined_excludes_in_flight)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL, **more = NULL;
    size_t n, m, i;
    int64_t seqs[8], ex[4];
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, url);
    ASSERT(s.ops->version >= 4 && s.ops->claim_pipelined != NULL);
    for (i = 0; i < 8; i++)
        store_enqueue(&s, "p", (int)i); /* one aggregate: in order */
    outbox_claim_params p = {3, outbox__now_us(), 1, 0, NULL};
    ASSERT_OK(s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err), &err);
    ASSERT_EQ(n, 3);
    for (i = 0; i < n; i++)
        seqs[i] = msgs[i]->seq;
    ASSERT_EQ(seqs[1], seqs[0] + 1);
    ASSERT_EQ(seqs[2], seqs[0] + 2);
    /* Consecutive in flight: the next three. */
    ASSERT_OK(s.ops->claim_pipelined(s.state, &p, seqs, 3, &more, &m, &err), &err);
    ASSERT_EQ(m, 3);
    for (i = 0; i < m; i++)
        ASSERT_EQ(more[i]->seq, seqs[0] + 3 + (int64_t)i);
    free_msgs(more, m);
    /* With gaps (the 2nd and 4th not in flight): those come first. */
    ex[0] = seqs[0];
    ex[1] = seqs[0] + 2;
    ex[2] = seqs[0] + 4;
    p.batch_size = 2;
    ASSERT_OK(s.ops->claim_pipelined(s.state, &p, ex, 3, &more, &m, &err), &err);
    ASSERT_EQ(m, 2);
    ASSERT_EQ(more[0]->seq, seqs[0] + 1);
    ASSERT_EQ(more[1]->seq, seqs[0] + 3);
    free_msgs(more, m);
    /* Out of order (not consecutive as given): looked up one by one. */
    ex[0] = seqs[0] + 1;
    ex[1] = seqs[0];
    ex[2] = seqs[0] + 2;
    ASSERT_OK(s.ops->claim_pipelined(s.state, &p, ex, 3, &more, &m, &err), &err);
    ASSERT_EQ(m, 2);
    ASSERT_EQ(more[0]->seq, seqs[0] + 3);
    free_msgs(more, m);
    free_msgs(msgs, n);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    outbox__store_close(&s);
    PQfinish(c);
}

/* The pipelined claim against a plain reference query (the seqs in flight
 * left out with = ANY, the same due and blocking rules), over a table with
 * due and not-due retries and Failed rows, for 200 claims with a window of
 * up to 2,000 seqs in flight: growing, partly completed, dropped, given
 * out of order.  What it reads is exactly what the reference reads. */
#define DEEP_REFERENCE                                                                             \
    "SELECT seq FROM outbox.outbox o WHERE o.status = 'pending'"                                   \
    " AND NOT (o.seq = ANY($2::bigint[]))"                                                         \
    " AND (o.attempts = 0 OR o.available_at <= 'epoch'::timestamptz + $1::bigint * interval"       \
    " '1 microsecond') AND NOT EXISTS (SELECT 1 FROM outbox.outbox p"                              \
    "  WHERE p.aggregate_id = o.aggregate_id AND p.seq < o.seq AND (p.status = 'failed'"           \
    "  OR (p.status = 'pending' AND p.attempts > 0 AND p.available_at >"                           \
    "  'epoch'::timestamptz + $1::bigint * interval '1 microsecond')))"                            \
    " ORDER BY o.seq LIMIT $3"

/* The pipelined claim of p with flight[] in flight, checked against
 * DEEP_REFERENCE on c: the same seqs in the same order.  Its messages in
 * *msgs, *n; arr is scratch. */
static void claim_as_reference(outbox_store *s, PGconn *c, const outbox_claim_params *p,
                               const int64_t *flight, size_t nflight, outbox_buf *arr,
                               outbox_msg ***msgs, size_t *n)
{
    outbox_error err;
    char now[32], limit[32];
    const char *params[3];
    PGresult *ref;
    size_t i;

    ASSERT_OK(s->ops->claim_pipelined(s->state, p, flight, nflight, msgs, n, &err), &err);
    outbox__buf_reset(arr);
    outbox__buf_puts(arr, "{");
    for (i = 0; i < nflight; i++)
        outbox__buf_printf(arr, i ? ",%lld" : "%lld", (long long)flight[i]);
    outbox__buf_puts(arr, "}");
    snprintf(now, sizeof now, "%lld", (long long)p->now_us);
    snprintf(limit, sizeof limit, "%zu", p->batch_size);
    params[0] = now;
    params[1] = arr->data;
    params[2] = limit;
    ref = PQexecParams(c, DEEP_REFERENCE, 3, NULL, params, NULL, NULL, 0);
    ASSERT_EQ(PQresultStatus(ref), PGRES_TUPLES_OK);
    ASSERT_EQ((size_t)PQntuples(ref), *n);
    for (i = 0; i < *n; i++)
        ASSERT_EQ((*msgs)[i]->seq, (int64_t)strtoll(PQgetvalue(ref, (int)i, 0), NULL, 10));
    PQclear(ref);
}

TEST(claim_pipelined_deep)
{
    outbox_store s;
    outbox_buf arr;
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    int64_t *flight = calloc(4000, sizeof *flight);
    size_t nflight = 0, step, i, claimed = 0;
    PGconn *c = pgh_connect(&server);
    ASSERT(flight != NULL);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    pgh_exec(c, "SELECT outbox.enqueue('Deep.Tested', 'd' || (g % 200), jsonb_build_object('n', g))"
                " FROM generate_series(1, 6000) g");
    pgh_exec(c, "UPDATE outbox.outbox SET attempts = 1, available_at = now() + interval '1 hour',"
                " last_error = 'later' WHERE seq % 997 = 0");
    pgh_exec(c, "UPDATE outbox.outbox SET attempts = 2, available_at = now() - interval '1 minute',"
                " last_error = 'due' WHERE seq % 89 = 0");
    pgh_exec(c, "UPDATE outbox.outbox SET status = 'failed', attempts = 3, last_error = 'no'"
                " WHERE seq % 1999 = 0");
    open_store(&s, url);
    outbox__buf_init(&arr);
    for (step = 0; step < 200; step++) {
        outbox_claim_params p = {1 + (size_t)(ch_rand(&rng) % 64), outbox__now_us(), 1, 0, NULL};
        outbox_msg **msgs = NULL;
        size_t n = 0;

        /* Sometimes out of order: the store must not rely on it. */
        if (nflight > 1 && ch_rand(&rng) % 4 == 0) {
            size_t a = ch_rand(&rng) % nflight, b = ch_rand(&rng) % nflight;
            int64_t t = flight[a];
            flight[a] = flight[b];
            flight[b] = t;
        }
        claim_as_reference(&s, c, &p, flight, nflight, &arr, &msgs, &n);
        for (i = 0; i < n; i++)
            flight[nflight++] = msgs[i]->seq;
        claimed += n;
        free_msgs(msgs, n);
        /* The oldest batches complete (deleted, as sent) or are dropped
         * (back to claimable); the window stays under 2,000. */
        while (nflight > 0 && (nflight > 2000 || ch_rand(&rng) % 3 == 0)) {
            size_t k = 1 + (size_t)(ch_rand(&rng) % (nflight < 100 ? nflight : 100));
            if (ch_rand(&rng) % 4 != 0) {
                outbox__buf_reset(&arr);
                outbox__buf_puts(&arr, "DELETE FROM outbox.outbox WHERE seq IN (");
                for (i = 0; i < k; i++)
                    outbox__buf_printf(&arr, i ? ",%lld" : "%lld", (long long)flight[i]);
                outbox__buf_puts(&arr, ")");
                pgh_exec(c, arr.data);
            }
            memmove(flight, flight + k, (nflight - k) * sizeof *flight);
            nflight -= k;
        }
    }
    fprintf(stderr, "claim_pipelined_deep: %zu claimed in 200 claims, as the reference read\n",
            claimed);
    ASSERT(claimed > 3000);
    /* A drain's window: one run of consecutive seqs in flight, i.e. two
     * stretches around it (the two-stretch statement), with due retries
     * and rows in backoff below and above it.  Read as the reference. */
    {
        PGresult *mm = PQexec(c, "SELECT min(seq), max(seq) FROM outbox.outbox");
        int64_t lo_seq, hi_seq;
        size_t below = 0;
        ASSERT_EQ(PQresultStatus(mm), PGRES_TUPLES_OK);
        lo_seq = strtoll(PQgetvalue(mm, 0, 0), NULL, 10);
        hi_seq = strtoll(PQgetvalue(mm, 0, 1), NULL, 10);
        PQclear(mm);
        ASSERT(hi_seq - lo_seq > 1000);
        for (step = 0; step < 60; step++) {
            outbox_claim_params p = {1 + (size_t)(ch_rand(&rng) % 600), outbox__now_us(), 1, 0,
                                     NULL};
            outbox_msg **msgs = NULL;
            size_t n = 0, run = 1 + (size_t)(ch_rand(&rng) % 1500);
            int64_t first = lo_seq + (int64_t)(ch_rand(&rng) % (uint64_t)(hi_seq - lo_seq));

            nflight = 0;
            if (step % 10 != 0) /* and sometimes nothing in flight: one stretch */
                for (i = 0; i < run && nflight < 4000; i++)
                    flight[nflight++] = first + (int64_t)i;
            claim_as_reference(&s, c, &p, flight, nflight, &arr, &msgs, &n);
            if (n > 0 && nflight > 0 && msgs[0]->seq < first) below++;
            free_msgs(msgs, n);
        }
        /* Some claims read the stretch below the run. */
        ASSERT(below > 0);
    }
    outbox__buf_free(&arr);
    free(flight);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    outbox__store_close(&s);
    PQfinish(c);
}

/* A pipelined claim (at most 3 messages), each completion SENT. */
static size_t claim_pipelined_sent(outbox_store *s, const outbox_claim_params *p,
                                   outbox_completion cs[3], outbox_msg ***msgs)
{
    outbox_error err;
    size_t n, i;
    ASSERT_OK(s->ops->claim_pipelined(s->state, p, NULL, 0, msgs, &n, &err), &err);
    ASSERT(n <= 3);
    memset(cs, 0, 3 * sizeof *cs);
    for (i = 0; i < n; i++) {
        cs[i].msg = (*msgs)[i];
        cs[i].outcome = OUTBOX_OUTCOME_SENT;
    }
    return n;
}

/* A batch sent whole with consecutive seqs is recorded by its range (in one
 * query with the commit); the rows around it stay, and a batch whose sent
 * seqs have a gap (a retry in the middle) keeps the row in the gap. */
TEST(complete_by_range)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL;
    outbox_completion cs[3];
    size_t n, i;
    int64_t first;
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, url);
    for (i = 0; i < 9; i++)
        store_enqueue(&s, i % 2 ? "r1" : "r2", (int)i);
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 10000};
    outbox_claim_params p = {3, outbox__now_us(), 1, 0, NULL};

    /* Pipelined, deleted: exactly the three. */
    n = claim_pipelined_sent(&s, &p, cs, &msgs);
    ASSERT_EQ(n, 3);
    first = msgs[0]->seq;
    ASSERT_OK(s.ops->complete_pipelined(s.state, cs, n, &cp, 0, &err), &err);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 6);
    {
        char where[80];
        snprintf(where, sizeof where, "seq < %lld", (long long)first + 3);
        ASSERT_EQ(count_rows(c, "outbox", where), 0);
    }

    /* Marked sent instead. */
    n = claim_pipelined_sent(&s, &p, cs, &msgs);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(msgs[0]->seq, first + 3);
    cp.on_sent = OUTBOX_ON_SENT_MARK;
    ASSERT_OK(s.ops->complete_pipelined(s.state, cs, n, &cp, 0, &err), &err);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'sent' AND sent_at IS NOT NULL"), 3);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'pending'"), 3);

    /* A gap: the middle one is retried, the two around it deleted. */
    n = claim_pipelined_sent(&s, &p, cs, &msgs);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(msgs[0]->seq, first + 6);
    cs[1].outcome = OUTBOX_OUTCOME_RETRY;
    cs[1].available_at = outbox__now_us() + 3600 * 1000000LL;
    cs[1].error = "later";
    cp.on_sent = OUTBOX_ON_SENT_DELETE;
    ASSERT_OK(s.ops->complete_pipelined(s.state, cs, n, &cp, 0, &err), &err);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'pending'"), 1);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'pending' AND attempts = 1"), 1);

    /* The plain claim's transaction: the range and the commit together. */
    pgh_exec(c, "DELETE FROM outbox.outbox WHERE status = 'pending'");
    store_enqueue(&s, "r3", 0);
    store_enqueue(&s, "r3", 1);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(msgs[1]->seq, msgs[0]->seq + 1);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'pending'"), 0);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'sent'"), 3);
    store_enqueue(&s, "r3", 2); /* the store's session is usable: no transaction left */
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 1);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", "status = 'pending'"), 0);

    pgh_exec(c, "DELETE FROM outbox.outbox");
    outbox__store_close(&s);
    PQfinish(c);
}

/* Lets the next claim refresh its floor (FLOOR_REFRESH_MS is 200). */
static void floor_due(void)
{
    outbox__sleep_us(250 * 1000);
}

/* The claim floor never passes a row that may still commit: x1's
 * transaction is open (and holds the lowest seq) while later rows are
 * published and deleted and the floor is refreshed; once it commits, x1
 * comes, and before the next message of its aggregate. */
TEST(claim_floor_waits_for_open_writers)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL;
    size_t n;
    PGconn *t1 = pgh_connect(&server);
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, url);

    outbox_msg *x1 = make_msg("x", "{\"x\":1}");
    pgh_exec(t1, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg(t1, x1, &err), &err);
    for (int i = 0; i < 5; i++)
        store_enqueue(&s, "z", i);
    for (int round = 0; round < 3; round++) {
        floor_due();
        n = claim(&s, &msgs, 1);
        ASSERT_EQ(n, round == 0 ? 5 : 0);
        if (n) complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
        free_msgs(msgs, n);
        store_enqueue(&s, "z", 10 + round); /* more committed rows above x1 */
        n = claim(&s, &msgs, 1);
        ASSERT_EQ(n, 1);
        complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
        free_msgs(msgs, n);
    }
    pgh_exec(t1, "COMMIT");
    store_enqueue(&s, "x", 2);
    floor_due();
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(msgs[0]->id, outbox_msg_id(x1));
    ASSERT_STREQ(msgs[1]->aggregate_id, "x");
    ASSERT(msgs[1]->seq > msgs[0]->seq);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);

    outbox_msg_free(x1);
    outbox__store_close(&s);
    PQfinish(t1);
    PQfinish(c);
}

/* A failed message requeued below the claim floor (`outbox retry`) is
 * claimed at once, before the later message of its aggregate that it
 * blocked: the requeue renews the epoch the claim checks. */
TEST(claim_floor_and_requeue)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL;
    size_t n;
    char epoch[64], r1[64];
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, url);

    store_enqueue(&s, "r", 1);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 1);
    snprintf(r1, sizeof r1, "%s", msgs[0]->id);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_FAILED, 0, "rejected", OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    for (int i = 0; i < 3; i++)
        store_enqueue(&s, "q", i);
    floor_due(); /* the floor moves above r1 (failed, not pending) */
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 3);
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    store_enqueue(&s, "r", 2);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 0); /* r2 waits behind the failed r1 */
    free_msgs(msgs, n);

    {
        PGresult *r = PQexec(c, "SELECT value FROM outbox.meta WHERE key = 'requeue_epoch'");
        ASSERT_EQ(PQntuples(r), 1);
        snprintf(epoch, sizeof epoch, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    int64_t count = 0;
    const char *ids[] = {r1};
    ASSERT_OK(s.ops->retry(s.state, ids, 1, 0, &count, &err), &err);
    ASSERT_EQ(count, 1);
    {
        PGresult *r = PQexec(c, "SELECT value FROM outbox.meta WHERE key = 'requeue_epoch'");
        ASSERT(strcmp(PQgetvalue(r, 0, 0), epoch) != 0);
        PQclear(r);
    }
    n = claim(&s, &msgs, 1); /* no refresh in between */
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(msgs[0]->id, r1);
    ASSERT_EQ(msgs[0]->attempts, 0);
    ASSERT_STREQ(msgs[1]->aggregate_id, "r");
    complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);

    outbox__store_close(&s);
    PQfinish(c);
}

/* A role that cannot read the seq sequence claims without a floor: the
 * claims are the same, and the log says why once. */
TEST(claim_floor_without_rights)
{
    outbox_store s;
    outbox_msg **msgs = NULL;
    outbox_buf logs;
    size_t n;
    char u2[800];
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    pgh_exec(c, "DROP ROLE IF EXISTS outbox_no_seq");
    pgh_exec(c, "CREATE ROLE outbox_no_seq LOGIN");
    pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO outbox_no_seq");
    pgh_exec(c, "GRANT ALL ON ALL TABLES IN SCHEMA outbox TO outbox_no_seq");
    ASSERT(strchr(server.url, '@') != NULL);
    snprintf(u2, sizeof u2, "postgres://outbox_no_seq@%s", strchr(server.url, '@') + 1);
    outbox__buf_init(&logs);
    outbox_log_set(capture_log, &logs, OUTBOX_LOG_INFO);
    open_store(&s, u2);
    for (int i = 0; i < 4; i++)
        store_enqueue(&s, i % 2 ? "a" : "b", i);
    for (int round = 0; round < 2; round++) {
        floor_due();
        n = claim(&s, &msgs, 1);
        ASSERT_EQ(n, round == 0 ? 4 : 1);
        complete_all(&s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE);
        free_msgs(msgs, n);
        store_enqueue(&s, "a", 10);
    }
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_CONTAINS(logs.data, "claim floor");
    ASSERT(strstr(strstr(logs.data, "claim floor") + 1, "claim floor") == NULL); /* once */
    outbox__store_close(&s);
    outbox__buf_free(&logs);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 1);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    pgh_exec(c, "DROP OWNED BY outbox_no_seq");
    pgh_exec(c, "DROP ROLE outbox_no_seq");
    PQfinish(c);
}

TEST(skip_locked_and_notify)
{
    outbox_store a, b;
    outbox_error err;
    outbox_msg **ma = NULL, **mb = NULL;
    int changed = 0;
    open_store(&a, url);
    open_store(&b, url);
    PGconn *c0 = pgh_connect(&server);

    ASSERT_OK(a.ops->changed(a.state, &changed, &err), &err); /* first call: 1 */
    ASSERT_EQ(changed, 1);
    ASSERT_OK(a.ops->changed(a.state, &changed, &err), &err);
    ASSERT_EQ(changed, 0);

    /* One transaction of 11 rows while a relay waits (its flag set and the
     * shared "asleep" lock held by its session): one notification. */
    pgh_exec(c0, "INSERT INTO outbox.relays (name, waiting) VALUES ('fake-waiting', true)");
    pgh_exec(c0, "SELECT pg_advisory_lock_shared(hashtext('outbox.sleep:outbox'), 0)");
    PGconn *listener = pgh_connect(&server);
    pgh_exec(listener, "LISTEN outbox");
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "BEGIN");
    for (int i = 0; i < 10; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "k%d", i);
        outbox_msg *m = make_msg(agg, "{}");
        ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
        outbox_msg_free(m);
    }
    pgh_exec(c, "SELECT outbox.enqueue('T', 'k0', '{}')");
    pgh_exec(c, "COMMIT");
    int notes = 0;
    for (int tries = 0; tries < 50; tries++) {
        PGnotify *nt;
        PQconsumeInput(listener);
        while ((nt = PQnotifies(listener)) != NULL) {
            notes++;
            PQfreemem(nt);
        }
        usleep(10000);
    }
    ASSERT_EQ(notes, 1);
    pgh_exec(c0, "DELETE FROM outbox.relays WHERE name = 'fake-waiting'");
    pgh_exec(c0, "SELECT pg_advisory_unlock_shared(hashtext('outbox.sleep:outbox'), 0)");
    changed = 0;
    for (int tries = 0; tries < 100 && !changed; tries++) {
        ASSERT_OK(a.ops->changed(a.state, &changed, &err), &err);
        if (!changed) usleep(5000);
    }
    ASSERT_EQ(changed, 1);

    /* Two claimers without leases: disjoint sets. */
    outbox_claim_params p = {6, outbox__now_us(), 1, 0, NULL};
    size_t na = 0, nb = 0;
    ASSERT_OK(a.ops->claim(a.state, &p, &ma, &na, &err), &err);
    p.batch_size = 100;
    ASSERT_OK(b.ops->claim(b.state, &p, &mb, &nb, &err), &err);
    ASSERT_EQ(na, 6);
    ASSERT_EQ(nb, 5);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++)
            ASSERT(ma[i]->seq != mb[j]->seq);
    complete_all(&a, ma, na, OUTBOX_OUTCOME_SENT, 0, NULL, 0);
    complete_all(&b, mb, nb, OUTBOX_OUTCOME_SENT, 0, NULL, 0);
    free_msgs(ma, na);
    free_msgs(mb, nb);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);

    PQfinish(listener);
    PQfinish(c);
    PQfinish(c0);
    outbox__store_close(&a);
    outbox__store_close(&b);
}

/* One transaction: 10 rows through outbox_enqueue_pg and one through the
 * SQL function. */
static void enqueue_txn(PGconn *c, int base)
{
    outbox_error err;
    pgh_exec(c, "BEGIN");
    for (int i = 0; i < 10; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "w%d", base + i);
        outbox_msg *m = make_msg(agg, "{}");
        ASSERT_OK(outbox_enqueue_pg(c, m, &err), &err);
        outbox_msg_free(m);
    }
    pgh_exec(c, "SELECT outbox.enqueue('T', 'w0', '{}')");
    pgh_exec(c, "COMMIT");
}

/* Notifications that reach listener within tries * 10 ms. */
static int count_notes(PGconn *listener, int tries)
{
    int notes = 0;
    for (int t = 0; t < tries; t++) {
        PGnotify *nt;
        PQconsumeInput(listener);
        while ((nt = PQnotifies(listener)) != NULL) {
            notes++;
            PQfreemem(nt);
        }
        usleep(10000);
    }
    return notes;
}

/* Sessions holding the shared "asleep" lock of schema outbox. */
static int64_t sleepers(PGconn *c)
{
    return pgh_count(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND objsubid = 2 AND objid = 0 AND classid ="
                        " (hashtext('outbox.sleep:outbox')::bigint & 4294967295)::oid");
}

/* Waits until no waiting relay row belongs to a live session. */
static void wait_sessions_gone(PGconn *c)
{
    for (int tries = 0; tries < 500; tries++) {
        if (pgh_count(c, "SELECT count(*) FROM outbox.relays r JOIN pg_stat_activity a"
                         " ON a.pid = r.backend_pid WHERE r.waiting") == 0)
            return;
        usleep(10000);
    }
    TEST_FAIL_("a closed relay's session is still alive after 5 s");
}

TEST(notify_only_while_waiting)
{
    outbox_store a, b;
    outbox_error err;
    int changed = 0;
    open_store(&a, url);
    PGconn *listener = pgh_connect(&server);
    pgh_exec(listener, "LISTEN outbox");
    PGconn *c = pgh_connect(&server);

    /* No relay at all: enqueuing transactions notify nobody. */
    enqueue_txn(c, 0);
    ASSERT_EQ(count_notes(listener, 20), 0);

    /* A registered relay that is busy (not waiting): none either. */
    ASSERT_OK(a.ops->lease_acquire(a.state, "relay-n", 5000, &err), &err);
    ASSERT(a.ops->version >= 2 && a.ops->idle && a.ops->wait_fd);
    enqueue_txn(c, 100);
    ASSERT_EQ(count_notes(listener, 20), 0);

    /* Waiting: the first transaction (11 rows) takes the flag and
     * notifies once; the store's socket becomes readable.  Later ones find
     * no flag and do not notify. */
    ASSERT_OK(a.ops->idle(a.state, 1, &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 1);
    ASSERT_EQ(sleepers(c), 1);
    ASSERT_OK(a.ops->changed(a.state, &changed, &err), &err);
    int fd = a.ops->wait_fd(a.state);
    ASSERT(fd >= 0);
    enqueue_txn(c, 200);
    {
        struct pollfd pf;
        pf.fd = fd;
        pf.events = POLLIN;
        pf.revents = 0;
        ASSERT_EQ(poll(&pf, 1, 5000), 1);
    }
    changed = 0;
    ASSERT_OK(a.ops->changed(a.state, &changed, &err), &err);
    ASSERT_EQ(changed, 1);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 0);
    ASSERT_EQ(sleepers(c), 0); /* woken: the store let go of the asleep lock */
    enqueue_txn(c, 300);
    enqueue_txn(c, 400);
    ASSERT_EQ(count_notes(listener, 50), 1);

    /* Waiting again: one more. */
    ASSERT_OK(a.ops->idle(a.state, 1, &err), &err);
    enqueue_txn(c, 450);
    enqueue_txn(c, 460);
    ASSERT_EQ(count_notes(listener, 50), 1);

    /* Awake again (cleared by the relay): none. */
    ASSERT_OK(a.ops->idle(a.state, 1, &err), &err);
    ASSERT_EQ(sleepers(c), 1);
    ASSERT_OK(a.ops->idle(a.state, 0, &err), &err);
    ASSERT_EQ(sleepers(c), 0);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 0);
    enqueue_txn(c, 500);
    ASSERT_EQ(count_notes(listener, 20), 0);

    /* Two enqueuers at once while the relay waits: the second never waits
     * for the first (which holds the flag until it commits), and only the
     * first notifies. */
    ASSERT_OK(a.ops->idle(a.state, 1, &err), &err);
    PGconn *c2 = pgh_connect(&server);
    pgh_exec(c, "BEGIN");
    pgh_exec(c, "SELECT outbox.enqueue('T', 'x1', '{}')");
    pgh_exec(c2, "SET statement_timeout = '3s'");
    pgh_exec(c2, "BEGIN");
    pgh_exec(c2, "SELECT outbox.enqueue('T', 'x2', '{}')");
    pgh_exec(c2, "COMMIT");
    ASSERT_EQ(count_notes(listener, 20), 0);
    pgh_exec(c, "COMMIT");
    ASSERT_EQ(count_notes(listener, 50), 1);
    PQfinish(c2);

    /* A relay that dies while waiting leaves its flag behind; the next
     * relay to register clears it. */
    open_store(&b, url);
    ASSERT_OK(b.ops->lease_acquire(b.state, "relay-dies", 5000, &err), &err);
    ASSERT_OK(b.ops->idle(b.state, 1, &err), &err);
    outbox__store_close(&b); /* no lease release: like a SIGKILL */
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 1);
    wait_sessions_gone(c);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 1);
    open_store(&b, url);
    ASSERT_OK(b.ops->lease_acquire(b.state, "relay-next", 5000, &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting"), 0);
    enqueue_txn(c, 700);
    ASSERT_EQ(count_notes(listener, 20), 0);

    /* A waiting relay whose connection is killed waits on after it
     * reconnects. */
    ASSERT_OK(b.ops->idle(b.state, 1, &err), &err);
    pgh_exec(c, "SELECT pg_terminate_backend(backend_pid) FROM outbox.relays"
                " WHERE name = 'relay-next'");
    usleep(100000);
    int reconnected = 0;
    for (int tries = 0; tries < 50 && !reconnected; tries++) {
        reconnected = b.ops->changed(b.state, &changed, &err) == OUTBOX_OK &&
                      b.ops->lease_renew(b.state, "relay-next", 5000, &err) == OUTBOX_OK;
        if (!reconnected) usleep(20000);
    }
    ASSERT(reconnected);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays r JOIN pg_stat_activity a"
                           " ON a.pid = r.backend_pid WHERE r.waiting AND r.name = 'relay-next'"),
              1);

    ASSERT_OK(a.ops->lease_release(a.state, "relay-n", &err), &err);
    ASSERT_OK(b.ops->lease_release(b.state, "relay-next", &err), &err);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    pgh_exec(c, "DELETE FROM outbox.relays");
    PQfinish(listener);
    PQfinish(c);
    outbox__store_close(&a);
    outbox__store_close(&b);
}

typedef struct wake_seen {
    atomic_int published;
    atomic_llong first_us; /* monotonic time of the first publish */
} wake_seen;

static int wake_publish(void *user, const outbox_msg *msg, outbox_error *err)
{
    wake_seen *w = user;
    long long zero = 0;
    (void)msg;
    (void)err;
    atomic_compare_exchange_strong(&w->first_us, &zero, (long long)outbox__monotonic_us());
    atomic_fetch_add(&w->published, 1);
    return OUTBOX_OK;
}

static void *wake_relay_main(void *arg)
{
    outbox_error err;
    if (outbox_relay_run(arg, &err) != OUTBOX_OK) fprintf(stderr, "relay: %s\n", err.message);
    return NULL;
}

/* A relay with a 30 s fallback poll picks up a commit within a second:
 * the notification through the store's socket woke it.  While it idles,
 * its flag is set. */
TEST(relay_woken_by_notify)
{
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    wake_seen seen;
    pthread_t th;
    PGconn *c = pgh_connect(&server);

    atomic_init(&seen.published, 0);
    atomic_init(&seen.first_us, 0);
    outbox_relay_options_init(&o);
    o.publish = wake_publish;
    o.publish_user = &seen;
    o.poll_interval_ms = 30000;
    o.change_check_ms = 30000; /* only the socket can wake it in time */
    ASSERT_OK(outbox_relay_new(&r, url, NULL, &o, &err), &err);
    pthread_create(&th, NULL, wake_relay_main, r);
    int waiting = 0;
    for (int tries = 0; tries < 300 && !waiting; tries++) {
        waiting = pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting") == 1;
        if (!waiting) usleep(10000);
    }
    ASSERT(waiting);
    usleep(200000); /* well into its sleep */
    for (int round = 1; round <= 3; round++) {
        int64_t t0 = outbox__monotonic_us();
        atomic_store(&seen.first_us, 0);
        enqueue_txn(c, 1000 * round);
        while (atomic_load(&seen.published) < 11 * round && outbox__monotonic_us() - t0 < 5000000)
            usleep(1000);
        ASSERT_EQ(atomic_load(&seen.published), 11 * round);
        ASSERT(atomic_load(&seen.first_us) - t0 < 1000000);
        /* Idle again: the flag comes back. */
        waiting = 0;
        for (int tries = 0; tries < 300 && !waiting; tries++) {
            waiting = pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting") == 1;
            if (!waiting) usleep(10000);
        }
        ASSERT(waiting);
    }
    outbox_relay_stop(r);
    pthread_join(th, NULL);
    outbox_relay_free(r);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.relays"), 0);
    PQfinish(c);
}

/* Waits until n relay rows are flagged waiting; 0 after 5 s. */
static int wait_waiting(PGconn *c, int n)
{
    for (int tries = 0; tries < 500; tries++) {
        if (pgh_count(c, "SELECT count(*) FROM outbox.relays WHERE waiting") == n) return 1;
        usleep(10000);
    }
    return 0;
}

/* Two relays: a notification wakes both (the enqueuer clears both flags),
 * one of them finds nothing in its partitions; both must ask for the next
 * wake-up again, and every commit is published well before the 30 s
 * poll. */
TEST(two_relays_rearm)
{
    outbox_relay_options o;
    outbox_relay *r1 = NULL, *r2 = NULL;
    outbox_error err;
    wake_seen seen;
    pthread_t t1, t2;
    PGconn *c = pgh_connect(&server);
    int rounds = test_scaled(20, 5);

    atomic_init(&seen.published, 0);
    atomic_init(&seen.first_us, 0);
    outbox_relay_options_init(&o);
    o.publish = wake_publish;
    o.publish_user = &seen;
    o.poll_interval_ms = 30000;
    o.change_check_ms = 30000;
    ASSERT_OK(outbox_relay_new(&r1, url, NULL, &o, &err), &err);
    ASSERT_OK(outbox_relay_new(&r2, url, NULL, &o, &err), &err);
    pthread_create(&t1, NULL, wake_relay_main, r1);
    pthread_create(&t2, NULL, wake_relay_main, r2);
    ASSERT(wait_waiting(c, 2));
    for (int i = 0; i < rounds; i++) {
        char sql[128];
        int64_t t0 = outbox__monotonic_us();
        snprintf(sql, sizeof sql, "SELECT outbox.enqueue('T', 'rearm-%d', '{}')", i);
        pgh_exec(c, sql);
        while (atomic_load(&seen.published) < i + 1 && outbox__monotonic_us() - t0 < 5000000)
            usleep(1000);
        ASSERT_EQ(atomic_load(&seen.published), i + 1);
        ASSERT(outbox__monotonic_us() - t0 < 2000000);
        if (!wait_waiting(c, 2)) TEST_FAIL_("round %d: a relay did not ask to be woken again", i);
    }
    outbox_relay_stop(r1);
    outbox_relay_stop(r2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    outbox_relay_free(r1);
    outbox_relay_free(r2);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox"), 0);
    PQfinish(c);
}

/* The relay's metrics report the partitions its store handle holds: two
 * relays on an outbox of 8 partitions each own some, 8 between them, and
 * none once stopped. */
TEST(partitions_owned_metrics)
{
    outbox_relay_options o;
    outbox_relay *r[2] = {NULL, NULL};
    outbox_relay_metrics m[2];
    outbox_store s;
    outbox_error err;
    wake_seen seen;
    pthread_t th[2];
    char u[800];
    int from, to, i, shared = 0;
    int64_t deadline;
    PGconn *c = pgh_connect(&server);

    snprintf(u, sizeof u, "%s?schema=parts_owned&partitions=8", server.url);
    open_store(&s, u);
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    outbox__store_close(&s);

    atomic_init(&seen.published, 0);
    atomic_init(&seen.first_us, 0);
    outbox_relay_options_init(&o);
    o.publish = wake_publish;
    o.publish_user = &seen;
    o.poll_interval_ms = 100; /* idle relays claim, and so rebalance, often */
    for (i = 0; i < 2; i++) {
        ASSERT_OK(outbox_relay_new(&r[i], u, NULL, &o, &err), &err);
        pthread_create(&th[i], NULL, wake_relay_main, r[i]);
    }
    deadline = outbox__monotonic_us() + 15000000;
    while (!shared && outbox__monotonic_us() < deadline) {
        usleep(50000);
        for (i = 0; i < 2; i++) {
            memset(&m[i], 0, sizeof m[i]);
            m[i].size = sizeof m[i];
            ASSERT_EQ(outbox_relay_get_metrics(r[i], &m[i]), OUTBOX_OK);
        }
        shared = m[0].lease_held && m[1].lease_held && m[0].partitions_owned > 0 &&
                 m[1].partitions_owned > 0 && m[0].partitions_owned + m[1].partitions_owned == 8;
    }
    if (!shared)
        TEST_FAIL_("partitions owned: %lld and %lld, not 8 between them",
                   (long long)m[0].partitions_owned, (long long)m[1].partitions_owned);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM parts_owned.relays"), 2);
    for (i = 0; i < 2; i++) {
        outbox_relay_stop(r[i]);
        pthread_join(th[i], NULL);
        memset(&m[i], 0, sizeof m[i]);
        m[i].size = sizeof m[i];
        ASSERT_EQ(outbox_relay_get_metrics(r[i], &m[i]), OUTBOX_OK);
        ASSERT_EQ(m[i].lease_held, 0);
        ASSERT_EQ(m[i].partitions_owned, 0);
        outbox_relay_free(r[i]);
    }
    pgh_exec(c, "DROP SCHEMA parts_owned CASCADE");
    PQfinish(c);
}

TEST(partitions_shared)
{
    outbox_store a, b;
    outbox_error err;
    outbox_msg **ma = NULL, **mb = NULL;
    size_t na, nb;
    open_store(&a, url);
    open_store(&b, url);
    PGconn *c = pgh_connect(&server);

    ASSERT_OK(a.ops->lease_acquire(a.state, "relay-a", 2000, &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                           " AND objsubid = 2"),
              33); /* membership + 32 partitions */
    ASSERT_OK(b.ops->lease_acquire(b.state, "relay-b", 2000, &err), &err);
    /* a gives up its extra share at its next renew; b then takes it. */
    ASSERT_OK(a.ops->lease_renew(a.state, "relay-a", 2000, &err), &err);
    ASSERT_OK(b.ops->lease_renew(b.state, "relay-b", 2000, &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                           " AND objsubid = 2"),
              34);

    outbox_status st;
    ASSERT_OK(a.ops->status(a.state, &st, &err), &err);
    ASSERT_CONTAINS(st.lease_owner, "relay-a@");
    ASSERT_CONTAINS(st.lease_owner, "relay-b@");

    for (int i = 0; i < 200; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "g%d", i);
        store_enqueue(&a, agg, i);
    }
    outbox_claim_params p = {1000, outbox__now_us(), 1, 0, NULL};
    ASSERT_OK(a.ops->claim(a.state, &p, &ma, &na, &err), &err);
    ASSERT_OK(b.ops->claim(b.state, &p, &mb, &nb, &err), &err);
    ASSERT_EQ(na + nb, 200);
    ASSERT(na > 40 && nb > 40);
    /* No aggregate on both sides. */
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++)
            ASSERT(strcmp(ma[i]->aggregate_id, mb[j]->aggregate_id) != 0);
    complete_all(&a, ma, na, OUTBOX_OUTCOME_SENT, 0, NULL, 0);
    free_msgs(ma, na);
    /* b dies with its batch claimed: its session and locks go. */
    free_msgs(mb, nb);
    outbox__store_close(&b);
    usleep(200000);
    ASSERT_OK(a.ops->lease_renew(a.state, "relay-a", 2000, &err), &err);
    ASSERT_OK(a.ops->claim(a.state, &p, &ma, &na, &err), &err);
    ASSERT_EQ(na, nb); /* b's unrecorded batch, now a's */
    complete_all(&a, ma, na, OUTBOX_OUTCOME_SENT, 0, NULL, 0);
    free_msgs(ma, na);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);
    ASSERT_OK(a.ops->lease_release(a.state, "relay-a", &err), &err);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), 0);
    outbox__store_close(&a);
    PQfinish(c);
}

/* Records a pipelined batch as sent; in_flight: another batch is still out. */
static void complete_sent_pipelined(outbox_store *s, outbox_msg **msgs, size_t n, int in_flight)
{
    complete_outcome(s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, OUTBOX_ON_SENT_DELETE, in_flight);
}

/* A pipelined relay rebalances with batches out: it takes free partitions
 * (at its next rebalance) and keeps those it should give up until nothing
 * is in flight (rebalance_wanted tells the relay to empty its window), so
 * no partition whose messages are out here can be claimed by another
 * relay. */
TEST(partitions_rebalanced_in_flight)
{
    outbox_store a, b;
    outbox_error err;
    outbox_msg **first = NULL, **second = NULL, **mb = NULL;
    size_t n1, n2, nb, i;
    int64_t seqs[20];
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&a, url);
    open_store(&b, url);
    ASSERT(OUTBOX__HAS(a.ops, 9, rebalance_wanted));
    ASSERT_OK(a.ops->lease_acquire(a.state, "relay-a", 2000, &err), &err);
    ASSERT_EQ(a.ops->partitions_held(a.state), 32);
    for (i = 0; i < 200; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "g%zu", i);
        store_enqueue(&a, agg, (int)i);
    }
    outbox_claim_params p = {10, outbox__now_us(), 1, 0, NULL};
    ASSERT_OK(a.ops->claim_pipelined(a.state, &p, NULL, 0, &first, &n1, &err), &err);
    ASSERT_EQ(n1, 10);
    for (i = 0; i < n1; i++)
        seqs[i] = first[i]->seq;

    /* b joins while a's batch is out: a keeps all 32 and asks for a
     * quiet moment, whatever it claims or records meanwhile. */
    ASSERT_OK(b.ops->lease_acquire(b.state, "relay-b", 2000, &err), &err);
    ASSERT_EQ(b.ops->partitions_held(b.state), 0);
    usleep(700000); /* a's next rebalance is due */
    ASSERT_OK(a.ops->claim_pipelined(a.state, &p, seqs, n1, &second, &n2, &err), &err);
    ASSERT_EQ(n2, 10);
    ASSERT_EQ(a.ops->partitions_held(a.state), 32);
    ASSERT(a.ops->rebalance_wanted(a.state));
    complete_sent_pipelined(&a, first, n1, 1);
    ASSERT_EQ(a.ops->partitions_held(a.state), 32);
    ASSERT(a.ops->rebalance_wanted(a.state));
    ASSERT_OK(b.ops->claim(b.state, &p, &mb, &nb, &err), &err);
    ASSERT_EQ(nb, 0); /* nothing for b yet */
    free(mb);
    /* Nothing in flight: a gives up its extra share at once, b takes it. */
    complete_sent_pipelined(&a, second, n2, 0);
    ASSERT_EQ(a.ops->partitions_held(a.state), 16);
    ASSERT(!a.ops->rebalance_wanted(a.state));
    ASSERT_OK(b.ops->lease_renew(b.state, "relay-b", 2000, &err), &err);
    ASSERT_EQ(b.ops->partitions_held(b.state), 16);
    free_msgs(first, n1);
    free_msgs(second, n2);

    /* b leaves while a has a batch out: a takes b's partitions without
     * waiting for its window to empty. */
    ASSERT_OK(a.ops->claim_pipelined(a.state, &p, NULL, 0, &first, &n1, &err), &err);
    ASSERT_EQ(n1, 10);
    for (i = 0; i < n1; i++)
        seqs[i] = first[i]->seq;
    outbox__store_close(&b);
    usleep(700000);
    ASSERT_OK(a.ops->claim_pipelined(a.state, &p, seqs, n1, &second, &n2, &err), &err);
    ASSERT_EQ(a.ops->partitions_held(a.state), 32);
    ASSERT(!a.ops->rebalance_wanted(a.state));
    complete_sent_pipelined(&a, first, n1, 1);
    complete_sent_pipelined(&a, second, n2, 0);
    free_msgs(first, n1);
    free_msgs(second, n2);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 200 - 30 - (int64_t)n2);
    ASSERT_OK(a.ops->lease_release(a.state, "relay-a", &err), &err);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    outbox__store_close(&a);
    PQfinish(c);
}

/* Completes msgs (claimed again after a reconnect) as sent, checks that
 * the outbox is empty and that the log, captured into logs until now, said
 * the connection was lost (lost: how) and reconnected. */
static void sent_after_reconnect(outbox_store *s, PGconn *c, outbox_msg **msgs, size_t n,
                                 const outbox_buf *logs, const char *lost)
{
    complete_all(s, msgs, n, OUTBOX_OUTCOME_SENT, 0, NULL, 0);
    free_msgs(msgs, n);
    ASSERT_EQ(count_rows(c, "outbox", NULL), 0);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_CONTAINS(logs->data, lost);
    ASSERT_CONTAINS(logs->data, "reconnected");
}

/* The session dies while a claim ahead is out (or as it is started): an
 * error, never a batch, and nothing recorded; after reconnecting, the
 * batch in flight and the one read ahead are claimed again. */
TEST(claim_ahead_connection_lost)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_claim_params p = {1, 0, 1, 0, NULL};
    outbox_msg **msgs = NULL, **next = NULL;
    size_t n = 0, m = 0;
    char first[37];
    int64_t ex[1];
    int rc;

    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, server.url);
    store_enqueue(&s, "ahead", 1);
    store_enqueue(&s, "ahead", 2);
    p.now_us = outbox__now_us();
    ASSERT_OK(s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err), &err);
    ASSERT_EQ(n, 1);
    snprintf(first, sizeof first, "%s", msgs[0]->id);
    ex[0] = msgs[0]->seq;
    pgh_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <>"
                " pg_backend_pid() AND datname = current_database() AND backend_type ="
                " 'client backend'");
    usleep(100000);
    rc = s.ops->claim_ahead(s.state, &p, ex, 1, &err);
    if (rc == OUTBOX_OK) rc = s.ops->claim_ahead_end(s.state, 1, &p, &next, &m, &err);
    ASSERT_EQ(rc, OUTBOX_EIO);
    ASSERT_EQ(m, 0);
    ASSERT(next == NULL);
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'pending'"), 2);
    free_msgs(msgs, n);

    /* Reconnected: the first message again, then the second read ahead. */
    p.batch_size = 1;
    p.now_us = outbox__now_us();
    rc = s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err);
    if (rc != OUTBOX_OK) rc = s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err);
    ASSERT_OK(rc, &err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(msgs[0]->id, first);
    ex[0] = msgs[0]->seq;
    ASSERT_OK(s.ops->claim_ahead(s.state, &p, ex, 1, &err), &err);
    ASSERT_OK(s.ops->claim_ahead_end(s.state, 1, &p, &next, &m, &err), &err);
    ASSERT_EQ(m, 1);
    ASSERT(next[0]->seq > ex[0]);
    free_msgs(next, m);
    free_msgs(msgs, n);
    outbox__store_close(&s);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

/* The outcomes recorded behind lose their connection: an error, nothing
 * recorded; the next batch recorded behind opens a new one. */
TEST(complete_behind_connection_lost)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_claim_params p = {2, 0, 1, 0, NULL};
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, 0, NULL, 10000};
    outbox_completion done[2];
    outbox_msg **msgs = NULL;
    size_t n = 0, i;
    int rc;

    pgh_exec(c, "DELETE FROM outbox.outbox");
    open_store(&s, server.url);
    for (i = 0; i < 6; i++)
        store_enqueue(&s, "behind", (int)i);
    for (int round = 0; round < 3; round++) {
        p.now_us = outbox__now_us();
        rc = s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err);
        if (rc != OUTBOX_OK) rc = s.ops->claim_pipelined(s.state, &p, NULL, 0, &msgs, &n, &err);
        ASSERT_OK(rc, &err);
        ASSERT_EQ(n, 2);
        for (i = 0; i < n; i++) {
            memset(&done[i], 0, sizeof done[i]);
            done[i].msg = msgs[i];
            done[i].outcome = OUTBOX_OUTCOME_SENT;
        }
        cp.now_us = outbox__now_us();
        if (round == 1) {
            /* Every session of the store, the recording one included. */
            pgh_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <>"
                        " pg_backend_pid() AND datname = current_database() AND backend_type ="
                        " 'client backend'");
            usleep(100000);
        }
        rc = s.ops->complete_behind(s.state, done, n, &cp, 0, &err);
        if (rc == OUTBOX_OK) rc = s.ops->complete_behind_end(s.state, &err);
        if (round == 1) {
            ASSERT_EQ(rc, OUTBOX_EIO);
            ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox"), 4);
        } else {
            ASSERT_OK(rc, &err);
        }
        free_msgs(msgs, n);
    }
    /* Rounds 0 and 2 recorded theirs; round 1's two are pending again. */
    ASSERT_EQ(pgh_count(c, "SELECT count(*) FROM outbox.outbox"), 2);
    outbox__store_close(&s);
    pgh_exec(c, "DELETE FROM outbox.outbox");
    PQfinish(c);
}

TEST(reconnect)
{
    outbox_store s;
    outbox_error err;
    outbox_msg **msgs = NULL;
    size_t n = 0;
    outbox_buf logs;
    outbox__buf_init(&logs);
    outbox_log_set(capture_log, &logs, OUTBOX_LOG_INFO);
    open_store(&s, url);
    PGconn *c = pgh_connect(&server);
    ASSERT_OK(s.ops->lease_acquire(s.state, "relay-r", 2000, &err), &err);
    store_enqueue(&s, "r", 0);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 1);
    /* Kill the store's session while the claim is open. */
    pgh_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <>"
                " pg_backend_pid() AND datname = current_database() AND backend_type ="
                " 'client backend'");
    outbox_completion one = {msgs[0], OUTBOX_OUTCOME_SENT, 0, NULL};
    outbox_complete_params cp = {0, outbox__now_us(), "relay-r", 2000};
    int rc = s.ops->complete(s.state, &one, 1, &cp, &err);
    ASSERT_NE(rc, OUTBOX_OK);
    free_msgs(msgs, n);
    /* The batch was not recorded: the message comes again after reconnecting. */
    outbox_claim_params p = {10, outbox__now_us(), 1, 0, NULL};
    rc = s.ops->claim(s.state, &p, &msgs, &n, &err);
    if (rc != OUTBOX_OK) rc = s.ops->claim(s.state, &p, &msgs, &n, &err);
    ASSERT_OK(rc, &err);
    ASSERT_EQ(n, 1);
    sent_after_reconnect(&s, c, msgs, n, &logs, "lost");
    outbox__buf_free(&logs);
    outbox__store_close(&s);
    PQfinish(c);
}

/* A statement the server does not answer within query_timeout: the
 * store gives up on it (EIO, saying so, the URL redacted), closes the
 * connection and opens a new one; a completion cut so is not recorded,
 * and its messages are claimed again. */
TEST(query_timeout)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_buf logs;
    int64_t t0, took;
    outbox_error err;
    char u[800];
    outbox_msg **msgs = NULL;
    size_t n = 0;

    outbox__buf_init(&logs);
    outbox_log_set(capture_log, &logs, OUTBOX_LOG_INFO);
    /* The server trusts loopback: the password is never asked for, only
     * kept out of every message. */
    snprintf(u, sizeof u, "postgres://postgres:hunter2@127.0.0.1:%d/postgres?query_timeout=1s",
             server.port);
    open_store(&s, u);
    store_enqueue(&s, "qt-1", 1);
    store_enqueue(&s, "qt-2", 2);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 2);
    /* Deleting takes 6 s: the sent outcome's statement gets no answer
     * (the bound below leaves a loaded machine 4 s of slack, and is still
     * under what waiting for the answer would take). */
    pgh_exec(c, "CREATE FUNCTION public.qt_sleep() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(6); RETURN NULL; END $$");
    pgh_exec(c, "CREATE TRIGGER qt_sleep BEFORE DELETE ON outbox.outbox"
                " FOR EACH STATEMENT EXECUTE FUNCTION public.qt_sleep()");
    {
        outbox_completion two[2] = {{msgs[0], OUTBOX_OUTCOME_SENT, 0, NULL},
                                    {msgs[1], OUTBOX_OUTCOME_RETRY, outbox__now_us(), "later"}};
        outbox_complete_params cp = {0, outbox__now_us(), NULL, 10000};
        t0 = outbox__monotonic_us();
        ASSERT_EQ(s.ops->complete(s.state, two, 2, &cp, &err), OUTBOX_EIO);
        took = (outbox__monotonic_us() - t0) / 1000;
    }
    ASSERT(took >= 900 && took < 5000);
    ASSERT_CONTAINS(err.message, "did not answer within 1 s (query_timeout)");
    ASSERT_CONTAINS(err.message, "raise query_timeout");
    ASSERT_CONTAINS(err.message, "postgres://postgres:***@127.0.0.1");
    ASSERT(strstr(err.message, "hunter2") == NULL);
    free_msgs(msgs, n);
    /* The old session finishes its statement, finds its client gone and
     * rolls back (DROP TRIGGER waits for it): nothing was recorded. */
    pgh_exec(c, "DROP TRIGGER qt_sleep ON outbox.outbox");
    pgh_exec(c, "DROP FUNCTION public.qt_sleep()");
    ASSERT_EQ(count_rows(c, "outbox", "attempts = 0 AND status = 'pending'"), 2);
    n = claim(&s, &msgs, 1);
    ASSERT_EQ(n, 2);
    sent_after_reconnect(&s, c, msgs, n, &logs, "lost (no answer within 1000 ms (query_timeout))");
    ASSERT(strstr(logs.data, "hunter2") == NULL);
    outbox__buf_free(&logs);
    outbox__store_close(&s);
    PQfinish(c);
}

int main(void)
{
#ifdef OUTBOX_FAULT_INJECTION
    /* The first outbox_enqueue_commit_pg that gets to its COMMIT fails
     * there (test enqueue_commit). */
    setenv("OUTBOX_FAULT", "pg_enqueue_before_commit:error:1", 1);
#endif
    pgh_start(&server);
    snprintf(url, sizeof url, "%s", server.url);
    RUN(init_and_schema);
    RUN(upgrade_v2_to_v3);
    RUN(urls);
    RUN(url_settings);
    RUN(enqueue_transactions);
    RUN(enqueue_commit);
    RUN(sql_functions);
    RUN(inbox);
    RUN(inbox_purge);
    RUN(claim_order_and_outcomes);
    RUN(claim_pipelined_excludes_in_flight);
    RUN(claim_pipelined_deep);
    RUN(complete_by_range);
    RUN(claim_floor_waits_for_open_writers);
    RUN(claim_floor_and_requeue);
    RUN(claim_floor_without_rights);
    RUN(skip_locked_and_notify);
    RUN(notify_only_while_waiting);
    RUN(relay_woken_by_notify);
    RUN(two_relays_rearm);
    RUN(partitions_owned_metrics);
    RUN(partitions_shared);
    RUN(partitions_rebalanced_in_flight);
    RUN(reconnect);
    RUN(claim_ahead_connection_lost);
    RUN(complete_behind_connection_lost);
    RUN(query_timeout);
    fprintf(stderr, "all PostgreSQL store tests passed\n");
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */
