/*
 * test_store_sqlite.c - the SQLite store: schema, URLs, the public enqueue
 * and inbox functions on a caller's connection, and every op of the
 * outbox__store_sqlite driver (outcomes, lease, admin; the ordering rule is
 * in the store contract suite, test_contract_store).
 * Also what an operator meets: rows the relay cannot decode (quarantined),
 * the table refusing what the library refuses, a schema newer than the
 * build (refused by every entry point) or without a version record (init
 * says how to repair), relays sharing a name, drop and status.
 *
 * Each case uses its own database file under the test directory.  The
 * driver is reached through outbox__store_open, as the relay and CLI do.
 */
#include "internal.h"
#include "test.h"
#include "support/tmp.h"
#include "support/store.h"

#include <sqlite3.h>

#include <signal.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* The schema version this build creates. */
#define SCHEMA 2

static char url_buf[8][700];
static int url_next;

/* "sqlite:<test dir>/name" in a rotating buffer. */
static const char *url_of(const char *name)
{
    char *b = url_buf[url_next++ & 7];
    snprintf(b, 700, "sqlite:%s", test_path(name));
    return b;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Opens a store on a fresh, initialised database. */
static void open_store(outbox_store *st, const char *name)
{
    outbox_error err_buf = {0}, *err = &err_buf;
    int from = -1, to = -1;
    ASSERT_OK(outbox__store_open(st, url_of(name), err), err);
    ASSERT_OK(st->ops->init(st->state, &from, &to, err), err);
    ASSERT_EQ(from, 0);
    ASSERT_EQ(to, SCHEMA);
}

static sqlite3 *open_db(const char *name)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(test_path(name), &db) != SQLITE_OK) TEST_FAIL_("sqlite3_open %s", name);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        TEST_FAIL_("exec failed");
    }
}

static int64_t query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        TEST_FAIL_("prepare %s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static outbox_msg *make_msg(const char *type, const char *agg_id, const char *payload)
{
    outbox_msg *m = NULL;
    outbox_error err_buf = {0}, *err = &err_buf;
    ASSERT_OK(outbox_msg_new(&m, type, "Order", agg_id, payload, err), err);
    return m;
}

/* ---------------------------------------------------------------------- */

TEST(init_idempotent_and_newer_refused)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    int from = -1, to = -1;
    sqlite3 *db;

    open_store(&st, "init.db");
    ASSERT_OK(st.ops->init(st.state, &from, &to, err), err);
    ASSERT_EQ(from, SCHEMA);
    ASSERT_EQ(to, SCHEMA);
    ASSERT_OK(st.ops->check_schema(st.state, err), err);

    db = open_db("init.db");
    ASSERT_EQ(query_int(db, "SELECT value FROM outbox_meta WHERE key='schema_version'"), SCHEMA);
    ASSERT_EQ(query_int(db, "PRAGMA user_version"), 0); /* the application's, untouched */
    {
        sqlite3_stmt *s = NULL;
        ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
        ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
        ASSERT_STREQ((const char *)sqlite3_column_text(s, 0), "wal");
        sqlite3_finalize(s);
    }
    /* The public function on a caller's connection is idempotent too. */
    ASSERT_OK(outbox_schema_init_sqlite(db, err), err);
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_schema_init_sqlite(db, err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err->message, "no transaction open");
    exec_ok(db, "ROLLBACK");

    exec_ok(db, "UPDATE outbox_meta SET value='99' WHERE key='schema_version'");
    ASSERT_EQ(st.ops->init(st.state, &from, &to, err), OUTBOX_ESCHEMANEWER);
    ASSERT_CONTAINS(err->message, "is version 99, newer than this build's 2: upgrade outbox");
    ASSERT_EQ(from, 99);
    ASSERT_EQ(st.ops->check_schema(st.state, err), OUTBOX_ESCHEMANEWER);
    ASSERT_EQ(outbox_schema_init_sqlite(db, err), OUTBOX_ESCHEMANEWER);
    /* Refusing left the version alone. */
    ASSERT_EQ(query_int(db, "SELECT value FROM outbox_meta WHERE key='schema_version'"), 99);
    sqlite3_close(db);
    outbox__store_close(&st);
}

TEST(url_errors)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700];

    ASSERT_EQ(outbox__store_open(&st, "", err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox__store_open(&st, NULL, err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox__store_open(&st, "sqlite:", err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "no database path");
    ASSERT_EQ(outbox__store_open(&st, "sqlite://", err), OUTBOX_EBADURL);
    ASSERT_EQ(outbox__store_open(&st, "sqlite:a.db?mode=ro", err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "query string");
    ASSERT_EQ(outbox__store_open(&st, "app.db", err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "sqlite:");
    ASSERT_EQ(outbox__store_open(&st, "oracle://u:hunter2@h/db", err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "sqlite");
    ASSERT(strstr(err->message, "hunter2") == NULL);
    /* mysql:// is a store now: not built, or a server that is not there;
     * the password never shows either way. */
#ifndef OUTBOX_HAVE_MARIADB
    ASSERT_EQ(outbox__store_open(&st, "mysql://u:hunter2@h/db", err), OUTBOX_ENOTBUILT);
#else
    ASSERT_EQ(outbox__store_open(&st, "mysql://u:hunter2@127.0.0.1:1/db", err), OUTBOX_EIO);
#endif
    ASSERT(strstr(err->message, "hunter2") == NULL);
#ifndef OUTBOX_HAVE_LIBPQ
    ASSERT_EQ(outbox__store_open(&st, "postgres://u:hunter2@h/db", err), OUTBOX_ENOTBUILT);
    ASSERT_CONTAINS(err->message, "libpq");
    ASSERT(strstr(err->message, "hunter2") == NULL);
    ASSERT_EQ(outbox__store_open(&st, "postgresql://h/db", err), OUTBOX_ENOTBUILT);
    ASSERT(st.ops == NULL && st.state == NULL);
#else
    /* Built with libpq: an unreachable server is a runtime error, and the
     * password still never shows (test_store_pg covers the driver). */
    {
        int rc =
            outbox__store_open(&st, "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2", err);
        if (rc == OUTBOX_OK) {
            rc = st.ops->check_schema(st.state, err);
            outbox__store_close(&st);
        }
        ASSERT(rc != OUTBOX_OK);
        ASSERT(strstr(err->message, "hunter2") == NULL);
    }
#endif

    /* sqlite:///abs/path is the absolute path. */
    snprintf(url, sizeof url, "sqlite://%s", test_path("triple.db"));
    ASSERT(url[9] == '/');
    ASSERT_OK(outbox__store_open(&st, url, err), err);
    ASSERT_OK(st.ops->init(st.state, NULL, NULL, err), err);
    ASSERT(file_exists(test_path("triple.db")));
    outbox__store_close(&st);
    outbox__store_close(&st); /* harmless twice */

    /* A file that is not a database. */
    {
        FILE *f = fopen(test_path("junk.db"), "w");
        ASSERT(f != NULL);
        fputs("this is not a database, just some text that is long enough......"
              "................................................................",
              f);
        fclose(f);
        ASSERT_NE(outbox__store_open(&st, url_of("junk.db"), err), OUTBOX_OK);
        ASSERT_CONTAINS(err->message, "not a SQLite database");
    }
}

TEST(missing_file_not_created)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    const char *path = test_path("typo.db");
    sh_batch b = {NULL, 0};
    outbox_claim_params p = {10, outbox__now_us(), 1, 0, NULL};
    outbox_status status;
    int changed;

    ASSERT_OK(outbox__store_open(&st, url_of("typo.db"), err), err);
    ASSERT(!file_exists(path));
    ASSERT_EQ(st.ops->check_schema(st.state, err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err->message, "no outbox database at");
    ASSERT_CONTAINS(err->message, path);
    ASSERT_CONTAINS(err->message, "outbox init --store sqlite:");
    ASSERT_EQ(st.ops->claim(st.state, &p, &b.msgs, &b.n, err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(st.ops->changed(st.state, &changed, err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(st.ops->status(st.state, &status, err), OUTBOX_ENOSCHEMA);
    ASSERT_EQ(st.ops->lease_acquire(st.state, "r1", 1000, err), OUTBOX_ENOSCHEMA);
    ASSERT(st.ops->wake_path(st.state) == NULL);
    ASSERT(!file_exists(path));

    ASSERT_OK(st.ops->init(st.state, NULL, NULL, err), err);
    ASSERT(file_exists(path));
    ASSERT_OK(st.ops->check_schema(st.state, err), err);
    ASSERT_CONTAINS(st.ops->wake_path(st.state), "typo.db");
    outbox__store_close(&st);

    /* An existing file without the tables: ENOSCHEMA, and ops name init. */
    {
        sqlite3 *db = open_db("empty.db");
        exec_ok(db, "CREATE TABLE business (x)");
        sqlite3_close(db);
    }
    ASSERT_OK(outbox__store_open(&st, url_of("empty.db"), err), err);
    ASSERT_EQ(st.ops->check_schema(st.state, err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err->message, "outbox init");
    ASSERT_EQ(st.ops->claim(st.state, &p, &b.msgs, &b.n, err), OUTBOX_ENOSCHEMA);
    outbox__store_close(&st);
}

TEST(enqueue_in_transaction)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sqlite3 *db;
    outbox_msg *m, *m2, *m3;
    sh_batch b;

    open_store(&st, "enq.db");
    db = open_db("enq.db");
    exec_ok(db, "CREATE TABLE orders (id TEXT)");

    m = make_msg("OrderPlaced", "order-1", "{\"total\":12.5,\"items\":[1,2]}");
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "c-42", err), err);
    ASSERT_OK(outbox_msg_set_occurred_at(m, 1700000000123456LL, err), err);

    /* No transaction: refused, nothing written. */
    ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err->message, "open transaction");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 0);

    /* Rolled back: nothing. */
    exec_ok(db, "BEGIN");
    exec_ok(db, "INSERT INTO orders VALUES ('order-1')");
    ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
    exec_ok(db, "ROLLBACK");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 0);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 0);
    sh_batch_free(&b);

    /* Committed: claimable with every field equal. */
    exec_ok(db, "BEGIN");
    exec_ok(db, "INSERT INTO orders VALUES ('order-1')");
    ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
    /* The same id again: EEXISTS, and the transaction stays usable. */
    ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EEXISTS);
    ASSERT_CONTAINS(err->message, m->id);
    ASSERT(!sqlite3_get_autocommit(db));
    m2 = make_msg("OrderPaid", "order-1", NULL);
    ASSERT_OK(outbox_enqueue_sqlite(db, m2, err), err);
    exec_ok(db, "COMMIT");

    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, m->id);
    ASSERT_STREQ(outbox_msg_type(b.msgs[0]), "OrderPlaced");
    ASSERT_STREQ(outbox_msg_aggregate_type(b.msgs[0]), "Order");
    ASSERT_STREQ(outbox_msg_aggregate_id(b.msgs[0]), "order-1");
    ASSERT_STREQ(outbox_msg_payload(b.msgs[0]), "{\"total\":12.5,\"items\":[1,2]}");
    ASSERT_STREQ(outbox_msg_headers_json(b.msgs[0]), outbox_msg_headers_json(m));
    ASSERT_STREQ(outbox_msg_header(b.msgs[0], "correlation_id"), "c-42");
    ASSERT_EQ(outbox_msg_occurred_at(b.msgs[0]), 1700000000123456LL);
    ASSERT_EQ(outbox_msg_attempts(b.msgs[0]), 0);
    ASSERT_GE(outbox_msg_seq(b.msgs[0]), 1);
    ASSERT_STREQ(b.msgs[1]->id, m2->id);
    ASSERT_STREQ(outbox_msg_payload(b.msgs[1]), "{}");
    ASSERT(outbox_msg_seq(b.msgs[1]) > outbox_msg_seq(b.msgs[0]));
    sh_batch_free(&b);

    /* The driver's own enqueue: EEXISTS for a duplicate, nothing left open. */
    ASSERT_EQ(st.ops->enqueue(st.state, m, err), OUTBOX_EEXISTS);
    m3 = make_msg("OrderShipped", "order-1", "[1]");
    ASSERT_OK(st.ops->enqueue(st.state, m3, err), err);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 3);

    /* Without the schema: ENOSCHEMA on the caller's connection. */
    {
        sqlite3 *bare = open_db("bare.db");
        exec_ok(bare, "BEGIN");
        ASSERT_EQ(outbox_enqueue_sqlite(bare, m, err), OUTBOX_ENOSCHEMA);
        ASSERT_CONTAINS(err->message, "outbox init");
        exec_ok(bare, "ROLLBACK");
        ASSERT_EQ(sqlite3_close(bare), SQLITE_OK); /* no statement left behind */
    }
    /* A row the table's CHECKs refuse maps to the field's code, and the
     * caller's transaction stays usable (the message model validates first,
     * so the CHECK is reached here only by bypassing it). */
    {
        outbox_msg *m4 = make_msg("OrderNoted", "order-2", NULL);
        char *saved = m4->payload;
        char bad[] = "{not json";
        exec_ok(db, "BEGIN");
        m4->payload = bad;
        ASSERT_EQ(outbox_enqueue_sqlite(db, m4, err), OUTBOX_EBADPAYLOAD);
        ASSERT_CONTAINS(err->message, "payload");
        m4->payload = saved;
        ASSERT_OK(outbox_enqueue_sqlite(db, m4, err), err);
        exec_ok(db, "COMMIT");
        ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 4);
        outbox_msg_free(m4);
    }
    /* Too big: refused before the insert. */
    {
        size_t old = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 32);
        exec_ok(db, "BEGIN");
        ASSERT_EQ(outbox_enqueue_sqlite(db, m2, err), OUTBOX_ETOOBIG);
        exec_ok(db, "ROLLBACK");
        outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, old);
    }
    ASSERT_EQ(outbox_enqueue_sqlite(NULL, m, err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_enqueue_sqlite(db, NULL, err), OUTBOX_EINVAL);

    outbox_msg_free(m);
    outbox_msg_free(m2);
    outbox_msg_free(m3);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
    outbox__store_close(&st);
}

TEST(foreign_writer_checks)
{
    outbox_store st;
    sqlite3 *db;
    const char *ins = "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers)"
                      " VALUES ('00000000-0000-7000-8000-000000000001', 1, 'T', 'a', ";
    char sql[512];

    open_store(&st, "foreign.db");
    outbox__store_close(&st);
    db = open_db("foreign.db");
    snprintf(sql, sizeof sql, "%s'not json', '{}')", ins);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_CONSTRAINT);
    ASSERT_CONTAINS(sqlite3_errmsg(db), "payload");
    snprintf(sql, sizeof sql, "%s'{}', '[]')", ins);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_CONSTRAINT);
    snprintf(sql, sizeof sql, "%s'{}', 'nope')", ins);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_CONSTRAINT);
    ASSERT_EQ(sqlite3_exec(db,
                           "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload)"
                           " VALUES ('short', 1, 'T', 'a', '{}')",
                           NULL, NULL, NULL),
              SQLITE_CONSTRAINT);
    ASSERT_EQ(sqlite3_exec(db,
                           "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload)"
                           " VALUES ('00000000-0000-7000-8000-000000000001', 1, '', 'a', '{}')",
                           NULL, NULL, NULL),
              SQLITE_CONSTRAINT);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 0);
    /* A valid foreign row is accepted with the defaults. */
    snprintf(sql, sizeof sql, "%s'{\"ok\":true}', '{\"k\":\"v\"}')", ins);
    ASSERT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status='pending' AND attempts=0"),
              1);
    sqlite3_close(db);
}

TEST(seq_not_reused)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sh_batch b;
    int64_t max_seq;
    char id[37];

    open_store(&st, "seq.db");
    sh_put(&st, "a", NULL);
    sh_put(&st, "b", NULL);
    sh_put(&st, "c", id);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 3);
    max_seq = b.msgs[2]->seq;
    ASSERT_STREQ(b.msgs[2]->id, id);
    /* Delete the max row (sent, on_sent delete), then enqueue again. */
    ASSERT_OK(sh_complete_one(&st, b.msgs[2], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    sh_batch_free(&b);
    sh_put(&st, "d", id);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 3);
    ASSERT_STREQ(b.msgs[2]->id, id);
    ASSERT(b.msgs[2]->seq > max_seq);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

TEST(complete_outcomes)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char ids[4][37];
    sh_batch b;
    outbox_msg *got = NULL;
    int64_t count, t0;
    sqlite3 *db;
    int i;

    open_store(&st, "outcomes.db");
    for (i = 0; i < 4; i++)
        sh_put(&st, "agg", ids[i]);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 4);

    /* SENT with delete: gone. */
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    ASSERT_EQ(st.ops->get(st.state, ids[0], &got, err), OUTBOX_ENOTFOUND);
    ASSERT_CONTAINS(err->message, ids[0]);

    /* SENT with mark: kept as sent with sent_at. */
    t0 = outbox__now_us();
    ASSERT_OK(sh_complete_one(&st, b.msgs[1], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK, err),
              err);
    ASSERT_OK(st.ops->get(st.state, ids[1], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_SENT);
    ASSERT_GE(got->sent_at, t0);
    outbox_msg_free(got);

    /* RETRY: attempts+1, available_at, last_error. */
    ASSERT_OK(sh_complete_one(&st, b.msgs[2], OUTBOX_OUTCOME_RETRY, 777, 0, err), err);
    ASSERT_OK(st.ops->get(st.state, ids[2], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_EQ(got->available_at, 777);
    ASSERT_STREQ(got->last_error, "boom");
    outbox_msg_free(got);

    /* FAILED: attempts+1, failed, last_error. */
    ASSERT_OK(sh_complete_one(&st, b.msgs[3], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(st.ops->get(st.state, ids[3], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_STREQ(got->last_error, "boom");
    outbox_msg_free(got);

    /* Purge: only sent rows older than the cut-off. */
    ASSERT_OK(st.ops->purge(st.state, t0 - 1, &count, err), err);
    ASSERT_EQ(count, 0);
    ASSERT_OK(st.ops->purge(st.state, outbox__now_us() + 1, &count, err), err);
    ASSERT_EQ(count, 1);
    ASSERT_EQ(st.ops->get(st.state, ids[1], &got, err), OUTBOX_ENOTFOUND);
    ASSERT_OK(st.ops->get(st.state, ids[3], &got, err), err); /* failed one stays */
    outbox_msg_free(got);

    /* A lease owner that does not hold the lease: ELEASELOST, nothing recorded. */
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-a", 10000, err), err);
    {
        outbox_completion c = {b.msgs[2], OUTBOX_OUTCOME_SENT, 0, NULL};
        outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), "relay-b", 10000};
        ASSERT_EQ(st.ops->complete(st.state, &c, 1, &p, err), OUTBOX_ELEASELOST);
        ASSERT_OK(st.ops->get(st.state, ids[2], &got, err), err);
        outbox_msg_free(got);
        /* The holder can, and its lease is extended in the same transaction. */
        p.lease_owner = "relay-a";
        p.lease_ttl_ms = 3600 * 1000;
        ASSERT_OK(st.ops->complete(st.state, &c, 1, &p, err), err);
        ASSERT_EQ(st.ops->get(st.state, ids[2], &got, err), OUTBOX_ENOTFOUND);
    }
    db = open_db("outcomes.db");
    ASSERT(query_int(db, "SELECT expires_at FROM outbox_lease") > outbox__now_us() + 3000000000LL);
    sqlite3_close(db);
    sh_batch_free(&b);

    /* A mixed batch in one call: two sent (marked), one retry, one unsent. */
    {
        char more[4][37];
        outbox_completion c[4];
        outbox_complete_params p = {OUTBOX_ON_SENT_MARK, outbox__now_us(), "relay-a", 10000};
        for (i = 0; i < 4; i++)
            sh_put(&st, i == 2 ? "other" : "mixed", more[i]);
        b = sh_claim_due(&st, outbox__now_us(), 0);
        ASSERT_EQ(b.n, 4);
        for (i = 0; i < 4; i++) {
            ASSERT_STREQ(b.msgs[i]->id, more[i]);
            c[i].msg = b.msgs[i];
            c[i].available_at = 4242;
            c[i].error = "mixed";
        }
        c[0].outcome = OUTBOX_OUTCOME_SENT;
        c[1].outcome = OUTBOX_OUTCOME_RETRY;
        c[2].outcome = OUTBOX_OUTCOME_SENT;
        c[3].outcome = OUTBOX_OUTCOME_UNSENT;
        /* An unknown outcome anywhere refuses the whole call. */
        c[3].outcome = 99;
        ASSERT_EQ(st.ops->complete(st.state, c, 4, &p, err), OUTBOX_EINVAL);
        ASSERT_OK(st.ops->get(st.state, more[0], &got, err), err);
        ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
        outbox_msg_free(got);
        c[3].outcome = OUTBOX_OUTCOME_UNSENT;
        ASSERT_OK(st.ops->complete(st.state, c, 4, &p, err), err);
        for (i = 0; i < 4; i++) {
            ASSERT_OK(st.ops->get(st.state, more[i], &got, err), err);
            ASSERT_EQ(got->status, i == 0 || i == 2 ? OUTBOX_STATUS_SENT : OUTBOX_STATUS_PENDING);
            ASSERT_EQ(got->attempts, i == 1 ? 1 : 0);
            ASSERT_EQ(got->available_at, i == 1 ? 4242 : 0);
            if (i == 1)
                ASSERT_STREQ(got->last_error, "mixed");
            else
                ASSERT(got->last_error == NULL);
            if (i == 0 || i == 2) ASSERT_EQ(got->sent_at, p.now_us);
            outbox_msg_free(got);
        }
        sh_batch_free(&b);
        /* Nothing to do is fine. */
        ASSERT_OK(st.ops->complete(st.state, NULL, 0, &p, err), err);
    }
    outbox__store_close(&st);
}

#ifdef OUTBOX_FAULT_INJECTION
/* Child side of fault_during_mark_sent, run in a fresh process (the fault
 * configuration is read once per process): completes two claimed messages
 * with the fault point set to fail; exits 0 when that returned EFAULT. */
static int fault_child(void)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_completion c[2];
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 0};
    sh_batch b;
    int rc;

    if (outbox__store_open(&st, url_of("fault.db"), err) != OUTBOX_OK) return 10;
    b = sh_claim_due(&st, outbox__now_us(), 1);
    if (b.n != 2) return 11;
    memset(c, 0, sizeof c);
    c[0].msg = b.msgs[0];
    c[1].msg = b.msgs[1];
    c[0].outcome = c[1].outcome = OUTBOX_OUTCOME_SENT;
    rc = st.ops->complete(st.state, c, 2, &p, err);
    sh_batch_free(&b);
    outbox__store_close(&st);
    if (rc != OUTBOX_EFAULT) {
        fprintf(stderr, "complete returned %d: %s\n", rc, err->message);
        return 12;
    }
    return 0;
}

/* The fault point between the first written row and COMMIT rolls back. */
TEST(fault_during_mark_sent)
{
    outbox_store st;
    pid_t pid;
    int status = 0;
    sqlite3 *db;

    open_store(&st, "fault.db");
    sh_put(&st, "x", NULL);
    sh_put(&st, "y", NULL);
    outbox__store_close(&st);

    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        char *args[] = {(char *)"test_store_sqlite", (char *)"--fault-child", (char *)test_dir(),
                        NULL};
        setenv("OUTBOX_FAULT", "during_mark_sent:error", 1);
        execv("/proc/self/exe", args);
        _exit(13);
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    db = open_db("fault.db");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 2);
    sqlite3_close(db);
}
#endif

TEST(lease)
{
    outbox_store st, other;
    outbox_error err_buf = {0}, *err = &err_buf;
    pid_t pid;
    int status = 0;

    open_store(&st, "lease.db");
    ASSERT_OK(outbox__store_open(&other, url_of("lease.db"), err), err);

    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err);
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err); /* again: ours */
    /* A second relay (this process is alive) is refused. */
    ASSERT_EQ(other.ops->lease_acquire(other.state, "relay-2", 30000, err), OUTBOX_ELEASED);
    ASSERT_CONTAINS(err->message, "another relay holds this outbox (name relay-1, pid ");
    /* The CLI says what to do; the relay logs this while it stands by. */
    ASSERT(strstr(err->message, "--wait-lease") == NULL);
    ASSERT_OK(st.ops->lease_renew(st.state, "relay-1", 30000, err), err);
    ASSERT_EQ(other.ops->lease_renew(other.state, "relay-2", 30000, err), OUTBOX_ELEASELOST);

    {
        outbox_status s;
        ASSERT_OK(st.ops->status(st.state, &s, err), err);
        ASSERT_STREQ(s.lease_owner, "relay-1");
    }

    /* An expired lease is taken over; the old owner's renew is then lost. */
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", -1000, err), err);
    ASSERT_OK(other.ops->lease_acquire(other.state, "relay-2", 30000, err), err);
    ASSERT_EQ(st.ops->lease_renew(st.state, "relay-1", 30000, err), OUTBOX_ELEASELOST);
    ASSERT_OK(st.ops->lease_release(st.state, "relay-1", err), err); /* not ours: no-op */
    ASSERT_EQ(st.ops->lease_acquire(st.state, "relay-1", 30000, err), OUTBOX_ELEASED);
    ASSERT_OK(other.ops->lease_release(other.state, "relay-2", err), err);
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err);
    ASSERT_OK(st.ops->lease_release(st.state, "relay-1", err), err);

    /* A child takes the lease and dies: its lease is free once the pid is
     * gone, although it has not expired.  (No connection is carried across
     * fork: SQLite forbids it.) */
    outbox__store_close(&other);
    outbox__store_close(&st);
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        outbox_store child;
        outbox_error cerr_buf = {0}, *cerr = &cerr_buf;
        int rc;
        if (outbox__store_open(&child, url_of("lease.db"), cerr) != OUTBOX_OK) _exit(10);
        rc = child.ops->lease_acquire(child.state, "relay-child", 600000, cerr);
        outbox__store_close(&child);
        _exit(rc == OUTBOX_OK ? 0 : 11);
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    {
        sqlite3 *db = open_db("lease.db");
        ASSERT_EQ(query_int(db, "SELECT pid FROM outbox_lease"), pid);
        sqlite3_close(db);
    }
    ASSERT_OK(outbox__store_open(&other, url_of("lease.db"), err), err);
    ASSERT_OK(other.ops->lease_acquire(other.state, "relay-2", 30000, err), err);
    outbox__store_close(&other);
    outbox__store_close(&st);
}

static int warned;
static void capture_log(void *user, int level, const char *component, const char *message)
{
    (void)user;
    (void)message;
    if (level == OUTBOX_LOG_WARN && strcmp(component, "inbox") == 0) warned++;
}

TEST(inbox)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sqlite3 *db;
    const char *id = "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70";
    const char *upper = "0190A5B8-7E3A-7C4D-9F1E-2B3C4D5E6F70";
    int64_t purged = -1;

    open_store(&st, "inbox.db");
    outbox__store_close(&st);
    db = open_db("inbox.db");

    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", id, err), OUTBOX_ENOTXN);
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", id, err), OUTBOX_OK);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", id, err), OUTBOX_DUPLICATE);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", upper, err), OUTBOX_DUPLICATE);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "shipping", upper, err), OUTBOX_OK);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "", id, err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "bad\nname", id, err), OUTBOX_EINVAL);
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", "not-a-uuid", err), OUTBOX_EBADID);
    exec_ok(db, "COMMIT");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox_inbox"), 2);
    ASSERT_EQ(
        query_int(db, "SELECT count(*) FROM outbox_inbox WHERE message_id = lower(message_id)"), 2);

    /* A rolled-back record does not count. */
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "audit", id, err), OUTBOX_OK);
    exec_ok(db, "ROLLBACK");
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "audit", id, err), OUTBOX_OK);
    exec_ok(db, "COMMIT");

    /* Purge: only entries older than the retention; warn when retention is
     * shorter than the redelivery horizon. */
    exec_ok(db, "UPDATE outbox_inbox SET received_at = received_at - 7200000000"
                " WHERE consumer = 'billing'");
    outbox_log_set(capture_log, NULL, OUTBOX_LOG_DEBUG);
    warned = 0;
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_inbox_purge_sqlite(db, 3600000, 0, &purged, err), OUTBOX_EINVAL);
    exec_ok(db, "ROLLBACK");
    ASSERT_OK(outbox_inbox_purge_sqlite(db, 3600000, 1000, &purged, err), err);
    ASSERT_EQ(purged, 1);
    ASSERT_EQ(warned, 0);
    ASSERT_OK(outbox_inbox_purge_sqlite(db, 60000, 3600000, &purged, err), err);
    ASSERT_EQ(warned, 1);
    ASSERT_EQ(purged, 0); /* the rest is recent */
    if (outbox_redelivery_horizon_ms(NULL) > 60000) {
        ASSERT_OK(outbox_inbox_purge_sqlite(db, 60000, 0, NULL, err), err);
        ASSERT_EQ(warned, 2);
    }
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox_inbox"), 2);
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_sqlite(db, "billing", id, err), OUTBOX_OK); /* purged */
    exec_ok(db, "COMMIT");
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

struct collected {
    int n;
    char ids[8][37];
    int statuses[8];
};

static int collect(void *user, const outbox_msg *m)
{
    struct collected *c = user;
    if (c->n < 8) {
        memcpy(c->ids[c->n], m->id, 37);
        c->statuses[c->n] = m->status;
    }
    c->n++;
    return 0;
}

TEST(admin_status_list_get_retry)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char ids[5][37];
    char upper[37];
    sh_batch b;
    outbox_status s;
    outbox_list_params lp;
    struct collected col;
    outbox_msg *got = NULL;
    int64_t count, now = outbox__now_us(), later = now + 3600 * 1000000LL;
    int i, changed;

    open_store(&st, "admin.db");
    ASSERT_OK(st.ops->changed(st.state, &changed, err), err);
    ASSERT_EQ(changed, 1); /* first call */
    ASSERT_OK(st.ops->changed(st.state, &changed, err), err);
    ASSERT_EQ(changed, 0);
    {
        /* A commit by another connection is seen. */
        sqlite3 *db = open_db("admin.db");
        exec_ok(db, "CREATE TABLE other_stuff (x)");
        sqlite3_close(db);
        ASSERT_OK(st.ops->changed(st.state, &changed, err), err);
        ASSERT_EQ(changed, 1);
    }

    for (i = 0; i < 5; i++)
        sh_put(&st, i < 3 ? "A" : "B", ids[i]);
    b = sh_claim_due(&st, now, 1);
    ASSERT_EQ(b.n, 5);
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[3], OUTBOX_OUTCOME_RETRY, later, 0, err), err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[4], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK, err),
              err);

    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.schema_version, SCHEMA);
    ASSERT_EQ(s.pending, 3);
    ASSERT_EQ(s.pending_due, 2);
    ASSERT_EQ(s.retrying, 1);
    ASSERT_EQ(s.sent, 1);
    ASSERT_EQ(s.failed, 1);
    ASSERT_EQ(s.oldest_pending_us, b.msgs[1]->occurred_at);
    ASSERT_EQ(s.next_due_us, later);
    ASSERT_STREQ(s.lease_owner, "");

    memset(&col, 0, sizeof col);
    lp.size = sizeof lp;
    lp.status = -1;
    lp.limit = 0;
    ASSERT_OK(st.ops->list(st.state, &lp, collect, &col, err), err);
    ASSERT_EQ(col.n, 5);
    for (i = 0; i < 5; i++)
        ASSERT_STREQ(col.ids[i], ids[i]);
    ASSERT_EQ(col.statuses[0], OUTBOX_STATUS_FAILED);
    ASSERT_EQ(col.statuses[4], OUTBOX_STATUS_SENT);
    memset(&col, 0, sizeof col);
    lp.status = OUTBOX_STATUS_PENDING;
    lp.limit = 2;
    ASSERT_OK(st.ops->list(st.state, &lp, collect, &col, err), err);
    ASSERT_EQ(col.n, 2);
    ASSERT_STREQ(col.ids[0], ids[1]);
    ASSERT_STREQ(col.ids[1], ids[2]);
    memset(&col, 0, sizeof col);
    lp.status = OUTBOX_STATUS_FAILED;
    lp.limit = 0;
    ASSERT_OK(st.ops->list(st.state, &lp, collect, &col, err), err);
    ASSERT_EQ(col.n, 1);
    ASSERT_STREQ(col.ids[0], ids[0]);

    /* get is case-insensitive on the id. */
    for (i = 0; i < 37; i++)
        upper[i] = (ids[3][i] >= 'a' && ids[3][i] <= 'f') ? (char)(ids[3][i] - 32) : ids[3][i];
    ASSERT_OK(st.ops->get(st.state, upper, &got, err), err);
    ASSERT_STREQ(got->id, ids[3]);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_EQ(got->available_at, later);
    outbox_msg_free(got);
    ASSERT_EQ(st.ops->get(st.state, "00000000-0000-7000-8000-00000000abcd", &got, err),
              OUTBOX_ENOTFOUND);
    ASSERT_EQ(st.ops->get(st.state, "nope", &got, err), OUTBOX_EBADID);

    /* retry: all or nothing. */
    {
        const char *bad[] = {ids[0], ids[1]};
        const char *missing[] = {ids[0], "00000000-0000-7000-8000-00000000abcd"};
        const char *good[] = {ids[0]};
        ASSERT_EQ(st.ops->retry(st.state, bad, 2, 0, &count, err), OUTBOX_EINVAL);
        ASSERT_CONTAINS(err->message, "is pending, not failed");
        ASSERT_EQ(st.ops->retry(st.state, missing, 2, 0, &count, err), OUTBOX_ENOTFOUND);
        ASSERT_CONTAINS(err->message, "00000000-0000-7000-8000-00000000abcd");
        ASSERT_OK(st.ops->get(st.state, ids[0], &got, err), err);
        ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED); /* untouched by the refusals */
        outbox_msg_free(got);
        ASSERT_OK(st.ops->retry(st.state, good, 1, 0, &count, err), err);
        ASSERT_EQ(count, 1);
        ASSERT_OK(st.ops->get(st.state, ids[0], &got, err), err);
        ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
        ASSERT_EQ(got->attempts, 0);
        ASSERT_STREQ(got->last_error, "boom"); /* kept for the operator */
        outbox_msg_free(got);
    }
    /* The requeued message is claimable again, first of its aggregate. */
    sh_batch_free(&b);
    b = sh_claim_due(&st, now, 1);
    ASSERT(b.n >= 1);
    ASSERT_STREQ(b.msgs[0]->id, ids[0]);
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[1], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(st.ops->retry(st.state, NULL, 0, 1, &count, err), err);
    ASSERT_EQ(count, 2);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 0);
    ASSERT_EQ(s.pending, 4);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

/* ---------------------------------------------------------------------- */

/* The last log line of a level and component, and how many there were. */
static struct {
    int level;
    const char *component;
    int count;
    char last[1024];
} logged;

static void capture_component(void *user, int level, const char *component, const char *message)
{
    (void)user;
    if (level != logged.level || strcmp(component, logged.component) != 0) return;
    logged.count++;
    snprintf(logged.last, sizeof logged.last, "%s", message);
}

static void capture_start(int level, const char *component)
{
    memset(logged.last, 0, sizeof logged.last);
    logged.level = level;
    logged.component = component;
    logged.count = 0;
    outbox_log_set(capture_component, NULL, OUTBOX_LOG_DEBUG);
}

/* Inserts a row as a writer that went around the table's checks would (or
 * as an older schema let in): the INSERT triggers are dropped for it and
 * put back.  Returns the row's seq. */
static int64_t insert_unchecked(sqlite3 *db, const char *id, const char *type,
                                const char *aggregate_id, const char *headers)
{
    char *triggers[4], sql[1024];
    sqlite3_stmt *s = NULL;
    int64_t seq;
    int n = 0, i;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                                 " AND tbl_name = 'outbox' AND name LIKE '%insert'",
                                 -1, &s, NULL),
              SQLITE_OK);
    while (n < 4 && sqlite3_step(s) == SQLITE_ROW) {
        snprintf(sql, sizeof sql, "DROP TRIGGER %s", (const char *)sqlite3_column_text(s, 0));
        triggers[n++] = strdup((const char *)sqlite3_column_text(s, 1));
        sqlite3_finalize(s);
        exec_ok(db, sql);
        ASSERT_EQ(sqlite3_prepare_v2(db,
                                     "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                                     " AND tbl_name = 'outbox' AND name LIKE '%insert'",
                                     -1, &s, NULL),
                  SQLITE_OK);
    }
    sqlite3_finalize(s);
    snprintf(sql, sizeof sql,
             "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers)"
             " VALUES ('%s', 1700000000000000, '%s', '%s', '{}', '%s')",
             id, type, aggregate_id, headers);
    exec_ok(db, sql);
    seq = sqlite3_last_insert_rowid(db);
    for (i = 0; i < n; i++) {
        exec_ok(db, triggers[i]);
        free(triggers[i]);
    }
    return seq;
}

/* A stored row the relay cannot decode is quarantined: Failed with the
 * reason, logged, its aggregate held as behind any Failed message, every
 * other aggregate flowing; never a claim error.  list and get read rows as
 * stored, so a bad row never makes them fail. */
TEST(undecodable_rows_quarantined)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sqlite3 *db;
    char a1[37], a3[37], b1[37], c2[37], got_id[64];
    int64_t bad_id_seq, bad_header_seq, blank_type_seq;
    const char *bad_header_id = "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f71";
    outbox_msg *got = NULL;
    struct collected col;
    outbox_list_params lp = {sizeof lp, -1, 0};
    outbox_status s;
    sh_batch b;

    open_store(&st, "quarantine.db");
    db = open_db("quarantine.db");
    sh_put(&st, "A", a1);
    bad_id_seq = insert_unchecked(db, "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx", "T", "A", "{}");
    sh_put(&st, "A", a3);
    sh_put(&st, "B", b1);
    bad_header_seq = insert_unchecked(db, bad_header_id, "T", "C", "{\"k\":\"x\\u0001\"}");
    sh_put(&st, "C", c2);
    blank_type_seq = insert_unchecked(db, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72", "  ", "D", "{}");

    capture_start(OUTBOX_LOG_ERROR, "store.sqlite");
    b = sh_claim_due(&st, outbox__now_us(), 1);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_STREQ(b.msgs[1]->id, b1);
    ASSERT_EQ(logged.count, 3);
    ASSERT_CONTAINS(logged.last, "seq ");
    ASSERT_CONTAINS(logged.last, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed' AND attempts = 1"
                            " AND last_error LIKE 'stored message seq %'"),
              3);
    {
        char sql[200];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM outbox WHERE seq = %lld"
                 " AND last_error LIKE '%%NOT-A-UUID%%'",
                 (long long)bad_id_seq);
        ASSERT_EQ(query_int(db, sql), 1);
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM outbox WHERE seq = %lld AND last_error LIKE '%%control%%'",
                 (long long)bad_header_seq);
        ASSERT_EQ(query_int(db, sql), 1);
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM outbox WHERE seq = %lld AND last_error LIKE '%%type%%'",
                 (long long)blank_type_seq);
        ASSERT_EQ(query_int(db, sql), 1);
    }
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[1], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    sh_batch_free(&b);

    /* A and C are held behind their quarantined rows; status counts them. */
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 0);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 3);
    ASSERT_EQ(s.blocked, 2);
    ASSERT_EQ(s.aggregates_blocked, 2);
    /* When Failed does not block, they flow. */
    b = sh_claim_due(&st, outbox__now_us(), 0);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a3);
    ASSERT_STREQ(b.msgs[1]->id, c2);
    sh_batch_free(&b);

    /* list shows every row, the bad ones as stored; get reads one too. */
    memset(&col, 0, sizeof col);
    ASSERT_OK(st.ops->list(st.state, &lp, collect, &col, err), err);
    ASSERT_EQ(col.n, 5);
    /* (outbox__msg_from_row_lenient lower-cases a-f even in an id that is
     * not a UUID, so compare without case.) */
    ASSERT_EQ(strcasecmp(col.ids[0], "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx"), 0);
    ASSERT_EQ(col.statuses[0], OUTBOX_STATUS_FAILED);
    ASSERT_OK(st.ops->get(st.state, bad_header_id, &got, err), err);
    ASSERT_STREQ(outbox_msg_headers_json(got), "{\"k\":\"x\\u0001\"}");
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_CONTAINS(got->last_error, "stored message seq");
    snprintf(got_id, sizeof got_id, "%s", got->id);
    ASSERT_STREQ(got_id, bad_header_id);
    outbox_msg_free(got);
    ASSERT_EQ(st.ops->get(st.state, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f7f", &got, err),
              OUTBOX_ENOTFOUND);
    ASSERT_CONTAINS(err->message, "--on-sent mark");
    sqlite3_close(db);
    outbox__store_close(&st);
}

/* What the relay's callback destination saw: per aggregate gN, the
 * payload counters in publication order. */
static struct {
    int count[10];
    int next_ok[10]; /* 1 while every counter came in order */
    int total;
} seen;

static int see(void *user, const outbox_msg *m, outbox_error *err)
{
    int agg = outbox_msg_aggregate_id(m)[1] - '0', n = -1;
    (void)user;
    (void)err;
    sscanf(outbox_msg_payload(m), "{\"n\":%d}", &n);
    if (n != seen.count[agg]) seen.next_ok[agg] = 0;
    seen.count[agg]++;
    seen.total++;
    return OUTBOX_OK;
}

/* The relay drains every aggregate around rows it cannot decode: each is
 * quarantined, and only the messages after it in its own aggregate wait. */
TEST(relay_drains_around_undecodable_rows)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_status s;
    sqlite3 *db;
    int i, per_agg[10] = {0};

    open_store(&st, "relaydrain.db");
    db = open_db("relaydrain.db");
    for (i = 0; i < 200; i++) {
        char agg[8], payload[32];
        outbox_msg *m;
        if (i == 100) {
            insert_unchecked(db, "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx", "T", "g3", "{}");
            insert_unchecked(db, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f71", "T", "g7",
                             "{\"trace\":\"\\u001b[31m\"}");
        }
        snprintf(agg, sizeof agg, "g%d", i % 10);
        snprintf(payload, sizeof payload, "{\"n\":%d}", per_agg[i % 10]++);
        m = make_msg("Tick", agg, payload);
        ASSERT_OK(st.ops->enqueue(st.state, m, err), err);
        outbox_msg_free(m);
    }
    sqlite3_close(db);

    memset(&seen, 0, sizeof seen);
    for (i = 0; i < 10; i++)
        seen.next_ok[i] = 1;
    outbox_relay_options_init(&o);
    o.once = 1;
    o.batch_size = 16;
    o.publish = see;
    ASSERT_OK(outbox_relay_new(&r, url_of("relaydrain.db"), NULL, &o, err), err);
    ASSERT_OK(outbox_relay_run(r, err), err);
    {
        outbox_relay_stats rs;
        outbox_relay_get_stats(r, &rs);
        ASSERT_EQ(rs.quarantined, 2); /* the two rows set Failed, counted for --once */
        ASSERT_EQ(rs.published, 180);
    }
    outbox_relay_free(r);

    ASSERT_EQ(seen.total, 180);
    for (i = 0; i < 10; i++) {
        ASSERT_EQ(seen.next_ok[i], 1);
        ASSERT_EQ(seen.count[i], i == 3 || i == 7 ? 10 : 20);
    }
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 2);
    ASSERT_EQ(s.pending, 20);
    ASSERT_EQ(s.blocked, 20);
    ASSERT_EQ(s.aggregates_blocked, 2);
    outbox__store_close(&st);
}

/* A batch that holds only bad rows is read again, so the relay gets the
 * good messages behind them in the same claim (plain and pipelined). */
TEST(quarantine_reads_again)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_claim_params p = {1, outbox__now_us(), 1, 0, NULL};
    sqlite3 *db;
    char y1[37], y2[37];
    sh_batch b = {NULL, 0};
    int64_t in_flight;

    open_store(&st, "reread.db");
    db = open_db("reread.db");
    insert_unchecked(db, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f81", "T", "X", "{\"n\":1}");
    insert_unchecked(db, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f82", " ", "Z", "{}");
    sh_put(&st, "Y", y1);
    sh_put(&st, "Y", y2);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);

    ASSERT_OK(st.ops->claim(st.state, &p, &b.msgs, &b.n, err), err);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, y1);
    in_flight = b.msgs[0]->seq;
    sh_batch_free(&b);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed'"), 2);

    /* Pipelined: y1 is in flight, a new bad row comes before y2. */
    insert_unchecked(db, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f83", "T", "W", "{\"x\":null}");
    exec_ok(db, "UPDATE outbox SET seq = 0 WHERE id = '0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f83'");
    ASSERT_OK(st.ops->claim_pipelined(st.state, &p, &in_flight, 1, &b.msgs, &b.n, err), err);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, y2);
    sh_batch_free(&b);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed'"), 3);
    sqlite3_close(db);
    outbox__store_close(&st);
}

/* What the library refuses, the table refuses, for writers in any language,
 * with a message naming the field; outbox_enqueue_sqlite maps each to its
 * code and the caller's transaction stays usable. */
TEST(table_refuses_what_library_refuses)
{
#define ID "'0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70'"
    static const struct {
        const char *values; /* id, occurred_at, type, aggregate_type, aggregate_id */
        const char *headers;
        const char *says;
    } refused[] = {
        {"'NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx', 1, 'T', '', 'a'", "'{}'",
         "outbox: id is not a UUID (8-4-4-4-12 hex digits, not nil)"},
        {"'00000000-0000-0000-0000-000000000000', 1, 'T', '', 'a'", "'{}'",
         "outbox: id is not a UUID"},
        {ID ", -1, 'T', '', 'a'", "'{}'", "outbox: occurred_at is not Unix microseconds"},
        {ID ", 253402300800000000, 'T', '', 'a'", "'{}'", "outbox: occurred_at"},
        {ID ", 'soon', 'T', '', 'a'", "'{}'", "outbox: occurred_at"},
        {ID ", 1, ' ' || char(9), '', 'a'", "'{}'", "outbox: type is blank"},
        {ID ", 1, '', '', 'a'", "'{}'", "outbox: type is blank"},
        {ID ", 1, 'T' || char(10), '', 'a'", "'{}'",
         "outbox: type is blank, longer than 256 bytes or has a control character"},
        {ID ", 1, printf('%.257c', 'x'), '', 'a'", "'{}'", "outbox: type is blank, longer"},
        {ID ", 1, 'T', char(27), 'a'", "'{}'",
         "outbox: aggregate_type is longer than 256 bytes or has a control character"},
        {ID ", 1, 'T', '', ' '", "'{}'", "outbox: aggregate_id is blank"},
        {ID ", 1, 'T', '', 'a' || char(127)", "'{}'", "outbox: aggregate_id is blank, longer"},
        {ID ", 1, 'T', '', printf('%.300c', 'k')", "'{}'", "outbox: aggregate_id is blank"},
        {ID ", 1, 'T', '', 'a'", "'[]'", "CHECK constraint failed: json_valid(headers)"},
        {ID ", 1, 'T', '', 'a'", "'nope'", "CHECK constraint failed: json_valid(headers)"},
    };
#undef ID
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sqlite3 *db;
    char sql[1024];
    size_t i;

    open_store(&st, "checks.db");
    db = open_db("checks.db");
    for (i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO outbox (id, occurred_at, type, aggregate_type, aggregate_id,"
                 " payload, headers) VALUES (%s, '{}', %s)",
                 refused[i].values, refused[i].headers);
        if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_CONSTRAINT)
            TEST_FAIL_("accepted: %s", sql);
        if (strstr(sqlite3_errmsg(db), refused[i].says) == NULL)
            TEST_FAIL_("%s: said \"%s\", expected \"%s\"", sql, sqlite3_errmsg(db),
                       refused[i].says);
    }
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 0);

    /* An upper-case UUID and full headers are fine; an UPDATE of a checked
     * column is checked too, the relay's bookkeeping is not. */
    exec_ok(db, "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers)"
                " VALUES ('0190A5B8-7E3A-7C4D-9F1E-2B3C4D5E6F70', 1, 'T', 'a', '[1]',"
                " '{\"correlation_id\":\"c-1\",\"x\":\"\"}')");
    ASSERT_EQ(sqlite3_exec(db, "UPDATE outbox SET aggregate_id = ''", NULL, NULL, NULL),
              SQLITE_CONSTRAINT);
    ASSERT_CONTAINS(sqlite3_errmsg(db), "outbox: aggregate_id is blank");
    exec_ok(db, "UPDATE outbox SET status = 'failed', attempts = 3, last_error = 'x'");
    /* The operator's commands find an upper-case id by its canonical form. */
    {
        const char *ids[] = {"0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70"};
        outbox_msg *got = NULL;
        int64_t count = 0;
        ASSERT_OK(st.ops->get(st.state, ids[0], &got, err), err);
        ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
        outbox_msg_free(got);
        ASSERT_OK(st.ops->retry(st.state, ids, 1, 0, &count, err), err);
        ASSERT_EQ(count, 1);
    }

    /* The library's enqueue: each refusal maps to the field's code. */
    {
        outbox_msg *m = make_msg("T", "agg", "{}");
        char *type = m->type, *agg = m->aggregate_id, *aggtype = m->aggregate_type;
        char id[37];
        char blank[] = " ", control[] = "a\x01";
        memcpy(id, m->id, 37);
        exec_ok(db, "BEGIN");
        memcpy(m->id, "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx", 37);
        ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EBADID);
        ASSERT_CONTAINS(err->message, "outbox: id");
        memcpy(m->id, id, 37);
        m->occurred_at = -1;
        ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EINVAL);
        ASSERT_CONTAINS(err->message, "outbox: occurred_at");
        m->occurred_at = 1;
        m->type = blank;
        ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EBADTYPE);
        m->type = type;
        m->aggregate_type = control;
        ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EBADAGGREGATE);
        m->aggregate_type = aggtype;
        m->aggregate_id = blank;
        ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_EBADAGGREGATE);
        m->aggregate_id = agg;
        ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
        exec_ok(db, "COMMIT");
        outbox_msg_free(m);
    }
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 2);
    sqlite3_close(db);
    outbox__store_close(&st);
}

/* A database at schema version 1 (version 2 taken back: migrations only
 * add), with a row version 1 let in and a lease row of that version, is
 * upgraded in place; the bad row stays (the relay quarantines it) and the
 * new checks apply from then on. */
TEST(upgrade_from_version_1)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_status s;
    sqlite3 *db;
    int from = -1, to = -1;
    sh_batch b;

    open_store(&st, "v1.db");
    outbox__store_close(&st);
    db = open_db("v1.db");
    exec_ok(db, "DROP TRIGGER outbox_check_insert; DROP TRIGGER outbox_check_update;"
                "ALTER TABLE outbox_lease DROP COLUMN instance;"
                "ALTER TABLE outbox_lease DROP COLUMN note;"
                "UPDATE outbox_meta SET value = '1' WHERE key = 'schema_version';"
                "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload) VALUES"
                " ('NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx', 1, 'T', 'a', '{}'),"
                " ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70', 1, 'T', 'b', '{}');"
                "INSERT INTO outbox_lease VALUES ('relay', 'old', 1, 'elsewhere', 0, 0);");
    ASSERT_OK(outbox__store_open(&st, url_of("v1.db"), err), err);
    ASSERT_EQ(st.ops->check_schema(st.state, err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err->message, "older than 2");
    ASSERT_OK(st.ops->init(st.state, &from, &to, err), err);
    ASSERT_EQ(from, 1);
    ASSERT_EQ(to, SCHEMA);
    ASSERT_OK(st.ops->check_schema(st.state, err), err);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 2);
    ASSERT_EQ(sqlite3_exec(db,
                           "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload)"
                           " VALUES ('NOT-A-UUID-yyyyyyyyyyyyyyyyyyyyyyyyy', 1, 'T', 'a', '{}')",
                           NULL, NULL, NULL),
              SQLITE_CONSTRAINT);
    /* The expired version-1 lease is taken over. */
    ASSERT_OK(st.ops->lease_acquire(st.state, "new", 30000, err), err);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70");
    sh_batch_free(&b);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 1);
    ASSERT_STREQ(s.lease_owner, "new");
    sqlite3_close(db);
    outbox__store_close(&st);
}

/* Two relays with the same name, in one process through the C API, are two
 * holders: the second is refused, and cannot renew, release, note or
 * complete through the first one's lease. */
TEST(lease_same_name_not_shared)
{
    outbox_store a, b;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_status s;
    char id[37], pid_text[32];
    sh_batch got;

    open_store(&a, "samename.db");
    ASSERT_OK(outbox__store_open(&b, url_of("samename.db"), err), err);
    sh_put(&a, "A", id);

    ASSERT_OK(a.ops->lease_acquire(a.state, "same", 30000, err), err);
    ASSERT_EQ(b.ops->lease_acquire(b.state, "same", 30000, err), OUTBOX_ELEASED);
    snprintf(pid_text, sizeof pid_text, "pid %d on host ", (int)getpid());
    ASSERT_CONTAINS(err->message,
                    "another relay with the same name holds this outbox (name same, ");
    ASSERT_CONTAINS(err->message, pid_text);
    ASSERT_CONTAINS(err->message, "lease expires in 30s");
    ASSERT(strstr(err->message, "--wait-lease") == NULL);
    ASSERT_EQ(b.ops->lease_renew(b.state, "same", 30000, err), OUTBOX_ELEASELOST);
    got = sh_claim_due(&b, outbox__now_us(), 1);
    ASSERT_EQ(got.n, 1);
    {
        outbox_completion c = {got.msgs[0], OUTBOX_OUTCOME_SENT, 0, NULL};
        outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), "same", 30000};
        outbox_msg *m = NULL;
        ASSERT_EQ(b.ops->complete(b.state, &c, 1, &p, err), OUTBOX_ELEASELOST);
        ASSERT_OK(a.ops->get(a.state, id, &m, err), err); /* nothing recorded */
        outbox_msg_free(m);
    }
    sh_batch_free(&got);

    /* b's release and note leave a's lease alone. */
    ASSERT_OK(b.ops->lease_release(b.state, "same", err), err);
    ASSERT_OK(b.ops->lease_note(b.state, "same", "not the holder", err), err);
    ASSERT_OK(a.ops->lease_renew(a.state, "same", 30000, err), err);
    ASSERT_OK(a.ops->status(a.state, &s, err), err);
    ASSERT_STREQ(s.lease_owner, "same");
    ASSERT_STREQ(s.relay_note, "");
    ASSERT_OK(a.ops->lease_note(a.state, "same", "destination down since 12:00: refused", err),
              err);
    ASSERT_OK(b.ops->status(b.state, &s, err), err);
    ASSERT_STREQ(s.relay_note, "destination down since 12:00: refused");
    ASSERT_OK(a.ops->lease_note(a.state, "same", NULL, err), err);
    ASSERT_OK(b.ops->status(b.state, &s, err), err);
    ASSERT_STREQ(s.relay_note, "");

    /* Released, the lease is b's; a's renew is then lost. */
    ASSERT_OK(a.ops->lease_release(a.state, "same", err), err);
    ASSERT_OK(b.ops->lease_acquire(b.state, "same", 30000, err), err);
    ASSERT_EQ(a.ops->lease_renew(a.state, "same", 30000, err), OUTBOX_ELEASELOST);
    outbox__store_close(&a);
    outbox__store_close(&b);
}

static int archived_n;
static char archived[4][256];

static int archive_ok(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    size_t i;
    (void)user;
    (void)err;
    for (i = 0; i < n && i < 4; i++)
        snprintf(archived[i], sizeof archived[i], "%s %s %d %s", msgs[i]->id,
                 outbox__status_name(msgs[i]->status), msgs[i]->attempts,
                 msgs[i]->last_error ? msgs[i]->last_error : "-");
    archived_n += (int)n;
    return OUTBOX_OK;
}

static int archive_fails(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    (void)user;
    (void)msgs;
    (void)n;
    return outbox__error(err, OUTBOX_EIO, "archive disk full");
}

/* drop deletes Failed messages only, all or nothing, after handing every
 * one to the archive (read as stored, with its bookkeeping fields). */
TEST(drop_failed)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char ids[4][37];
    const char *missing = "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f99";
    sqlite3 *db;
    int64_t count = -1;
    sh_batch b;
    int i;

    open_store(&st, "drop.db");
    db = open_db("drop.db");
    for (i = 0; i < 4; i++)
        sh_put(&st, i < 3 ? "A" : "B", ids[i]);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 4);
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[3], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    sh_batch_free(&b);
    insert_unchecked(db, "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx", "T", "C", "{}");
    b = sh_claim_due(&st, outbox__now_us(), 1); /* quarantines the bad row */
    sh_batch_free(&b);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed'"), 3);

    {
        const char *pending[] = {ids[0], ids[1]};
        const char *unknown[] = {ids[0], missing};
        const char *one[] = {ids[0], ids[0]};
        ASSERT_EQ(st.ops->drop(st.state, NULL, 0, 0, NULL, NULL, &count, err), OUTBOX_EINVAL);
        ASSERT_EQ(st.ops->drop(st.state, pending, 2, 0, archive_ok, NULL, &count, err),
                  OUTBOX_EINVAL);
        ASSERT_CONTAINS(err->message, "is pending, not failed");
        ASSERT_CONTAINS(err->message, "nothing was dropped");
        ASSERT_EQ(st.ops->drop(st.state, unknown, 2, 0, archive_ok, NULL, &count, err),
                  OUTBOX_ENOTFOUND);
        ASSERT_CONTAINS(err->message, missing);
        ASSERT_EQ(archived_n, 0);
        ASSERT_EQ(st.ops->drop(st.state, one, 2, 0, archive_fails, NULL, &count, err), OUTBOX_EIO);
        ASSERT_CONTAINS(err->message, "archive disk full");
        ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 5);
        /* The same id twice is one message. */
        ASSERT_OK(st.ops->drop(st.state, one, 2, 0, archive_ok, NULL, &count, err), err);
        ASSERT_EQ(count, 1);
        ASSERT_EQ(archived_n, 1);
        ASSERT_CONTAINS(archived[0], ids[0]);
        ASSERT_CONTAINS(archived[0], " failed 1 boom");
        ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 4);
    }
    /* All Failed ones, the undecodable row included. */
    archived_n = 0;
    ASSERT_OK(st.ops->drop(st.state, NULL, 0, 1, archive_ok, NULL, &count, err), err);
    ASSERT_EQ(count, 2);
    ASSERT_EQ(archived_n, 2);
    ASSERT_CONTAINS(archived[0], ids[3]);
    ASSERT_EQ(strncasecmp(archived[1],
                          "NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx failed 1 stored message", 60),
              0);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed'"), 0);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 2);
    ASSERT_OK(st.ops->drop(st.state, NULL, 0, 1, NULL, NULL, &count, err), err);
    ASSERT_EQ(count, 0);
    sqlite3_close(db);
    outbox__store_close(&st);
}

/* status counts what Failed messages hold back, and names the lease holder
 * with its pid and host, saying when its process is gone. */
/* The oldest pending age is that of the head of the queue: a message
 * enqueued later with an older occurred_at counts once it is the head. */
TEST(status_oldest_is_head)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_status s;
    outbox_msg *m = NULL;
    int64_t now = outbox__now_us();
    sh_batch b;

    open_store(&st, "oldest.db");
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.oldest_pending_us, 0);
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "A", "{}", err), err);
    ASSERT_OK(outbox_msg_set_occurred_at(m, now - 10000000, err), err);
    ASSERT_OK(st.ops->enqueue(st.state, m, err), err);
    outbox_msg_free(m);
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "B", "{}", err), err);
    ASSERT_OK(outbox_msg_set_occurred_at(m, now - 86400000000LL, err), err);
    ASSERT_OK(st.ops->enqueue(st.state, m, err), err);
    outbox_msg_free(m);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.pending, 2);
    ASSERT_EQ(s.oldest_pending_us, now - 10000000);
    b = sh_claim_due(&st, now, 1);
    ASSERT_EQ(b.n, 2);
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, 0, err), err);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.pending, 1);
    ASSERT_EQ(s.oldest_pending_us, now - 86400000000LL);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

TEST(status_blocked_and_holder)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_status s;
    char host[256];
    pid_t pid;
    int status = 0, i;
    sh_batch b;

    open_store(&st, "status.db");
    for (i = 0; i < 7; i++)
        sh_put(&st, i < 3 ? "A" : i < 5 ? "B" : "C", NULL);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 7);
    /* A: fails first (2 behind it); B: its second fails (none behind); C:
     * retrying (not Failed: not counted). */
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(sh_complete_one(&st, b.msgs[4], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(
        sh_complete_one(&st, b.msgs[5], OUTBOX_OUTCOME_RETRY, outbox__now_us() + 60000000, 0, err),
        err);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 2);
    ASSERT_EQ(s.pending, 5);
    ASSERT_EQ(s.blocked, 2);
    ASSERT_EQ(s.aggregates_blocked, 1);
    ASSERT_STREQ(s.lease_owner, "");
    ASSERT_EQ(s.lease_pid, 0);

    /* A live holder: this process. */
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    ASSERT_OK(st.ops->lease_acquire(st.state, "me", 30000, err), err);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_STREQ(s.lease_owner, "me");
    ASSERT_EQ(s.lease_pid, getpid());
    ASSERT_STREQ(s.lease_host, host);
    ASSERT_EQ(s.lease_holder_gone, 0);
    ASSERT_OK(st.ops->lease_release(st.state, "me", err), err);
    outbox__store_close(&st);

    /* A holder that died without releasing: its lease has not expired, but
     * status says it is gone. */
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        outbox_store child;
        outbox_error cerr_buf = {0}, *cerr = &cerr_buf;
        if (outbox__store_open(&child, url_of("status.db"), cerr) != OUTBOX_OK) _exit(10);
        if (child.ops->lease_acquire(child.state, "gone", 600000, cerr) != OUTBOX_OK) _exit(11);
        _exit(0); /* no release */
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ASSERT_OK(outbox__store_open(&st, url_of("status.db"), err), err);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_STREQ(s.lease_owner, "gone");
    ASSERT_EQ(s.lease_pid, pid);
    ASSERT_EQ(s.lease_holder_gone, 1);
    outbox__store_close(&st);
}

/* A schema newer than this build is refused by every entry point that
 * touches the tables, with nothing written or deleted. */
TEST(newer_schema_refused_everywhere)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    const char *newer = "is version 3, newer than this build's 2: upgrade outbox";
    outbox_claim_params cp = {10, outbox__now_us(), 1, 0, NULL};
    outbox_complete_params pp = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), "r", 1000};
    outbox_list_params lp = {sizeof lp, -1, 0};
    outbox_status s;
    struct collected col;
    char id[37], failed_id[37];
    const char *ids[1];
    outbox_msg *m = NULL;
    int64_t count, due;
    sqlite3 *db;
    sh_batch first, b;

    open_store(&st, "newer.db");
    sh_put(&st, "A", id);
    sh_put(&st, "B", failed_id);
    first = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_OK(sh_complete_one(&st, first.msgs[1], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    outbox__store_close(&st);
    db = open_db("newer.db");
    exec_ok(db, "BEGIN;"
                " INSERT INTO outbox_inbox VALUES ('c', '0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70', 0);"
                " UPDATE outbox_meta SET value = '3' WHERE key = 'schema_version'; COMMIT");

#define REFUSED(call)                                                                              \
    do {                                                                                           \
        memset(err, 0, sizeof *err);                                                               \
        ASSERT_EQ((call), OUTBOX_ESCHEMANEWER);                                                    \
        ASSERT_CONTAINS(err->message, newer);                                                      \
    } while (0)

    ASSERT_OK(outbox__store_open(&st, url_of("newer.db"), err), err);
    m = make_msg("T", "A", "{}");
    REFUSED(st.ops->enqueue(st.state, m, err));
    REFUSED(st.ops->list(st.state, &lp, collect, &col, err));
    outbox__store_close(&st);
    /* Whichever call comes first on a connection, it is refused. */
    ASSERT_OK(outbox__store_open(&st, url_of("newer.db"), err), err);
    ids[0] = failed_id;
    REFUSED(st.ops->retry(st.state, ids, 1, 0, &count, err));
    REFUSED(st.ops->retry(st.state, NULL, 0, 1, &count, err));
    REFUSED(st.ops->drop(st.state, NULL, 0, 1, NULL, NULL, &count, err));
    REFUSED(st.ops->purge(st.state, INT64_MAX, &count, err));
    REFUSED(st.ops->inbox_purge(st.state, 0, 1, &count, err));
    {
        outbox_msg *got = NULL;
        REFUSED(st.ops->get(st.state, id, &got, err));
    }
    REFUSED(st.ops->status(st.state, &s, err));
    REFUSED(st.ops->check_schema(st.state, err));
    REFUSED(st.ops->lease_acquire(st.state, "r", 1000, err));
    REFUSED(st.ops->lease_renew(st.state, "r", 1000, err));
    REFUSED(st.ops->lease_release(st.state, "r", err));
    REFUSED(st.ops->lease_note(st.state, "r", "x", err));
    REFUSED(st.ops->claim(st.state, &cp, &b.msgs, &b.n, err));
    REFUSED(st.ops->claim_pipelined(st.state, &cp, NULL, 0, &b.msgs, &b.n, err));
    {
        outbox_completion c = {first.msgs[0], OUTBOX_OUTCOME_SENT, 0, NULL};
        REFUSED(st.ops->complete(st.state, &c, 1, &pp, err));
    }
    REFUSED(st.ops->next_due(st.state, &due, err));
    outbox__store_close(&st);

    /* The caller's connection: enqueue and inbox write nothing. */
    exec_ok(db, "BEGIN");
    REFUSED(outbox_enqueue_sqlite(db, m, err));
    REFUSED(outbox_inbox_record_sqlite(db, "c", "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f71", err));
    REFUSED(outbox_inbox_record_sqlite(db, "c", "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f70", err));
    exec_ok(db, "COMMIT");
    REFUSED(outbox_inbox_purge_sqlite(db, 0, 1, &count, err));
#undef REFUSED

    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 2);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox WHERE status = 'failed'"), 1);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox_inbox"), 1);
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox_lease"), 0);
    outbox_msg_free(m);
    sh_batch_free(&first);
    sqlite3_close(db);
}

/* The outbox tables without a usable version record: init changes nothing
 * and says what it found and how to repair; following the advice works. */
TEST(unversioned_tables_explained)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    sqlite3 *db;
    outbox_msg *m = make_msg("T", "A", "{}");
    int from, to;
    const char *advice;
    char repair[400];

    open_store(&st, "unversioned.db");
    db = open_db("unversioned.db");

    /* No row: the library's enqueue writes nothing and points at init. */
    exec_ok(db, "DELETE FROM outbox_meta");
    exec_ok(db, "BEGIN");
    ASSERT_EQ(outbox_enqueue_sqlite(db, m, err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err->message, "missing or unreadable");
    ASSERT_CONTAINS(err->message, "outbox init");
    exec_ok(db, "COMMIT");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox"), 0);
    ASSERT_EQ(st.ops->check_schema(st.state, err), OUTBOX_ENOSCHEMA);
    ASSERT_CONTAINS(err->message, "missing or unreadable");

    ASSERT_EQ(st.ops->init(st.state, &from, &to, err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err->message, "has the outbox tables but no schema_version row in outbox_meta");
    ASSERT_CONTAINS(err->message, "look like version 2");
    ASSERT(strstr(err->message, "already exists") == NULL);
    advice = strstr(err->message, "\"INSERT");
    ASSERT(advice != NULL);
    snprintf(repair, sizeof repair, "%s", advice + 1);
    *strchr(repair, '"') = '\0';
    exec_ok(db, repair);
    ASSERT_OK(st.ops->init(st.state, &from, &to, err), err);
    ASSERT_EQ(from, SCHEMA);

    /* An unreadable value. */
    exec_ok(db, "UPDATE outbox_meta SET value = 'two' WHERE key = 'schema_version'");
    ASSERT_EQ(outbox_schema_init_sqlite(db, err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err->message, "schema_version 'two' in outbox_meta, not a version number");

    /* No outbox_meta at all: the advice creates it. */
    exec_ok(db, "DROP TABLE outbox_meta");
    ASSERT_EQ(st.ops->init(st.state, &from, &to, err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err->message, "no outbox_meta table");
    advice = strstr(err->message, "\"CREATE");
    ASSERT(advice != NULL);
    snprintf(repair, sizeof repair, "%s", advice + 1);
    *strchr(repair, '"') = '\0';
    exec_ok(db, repair);
    ASSERT_OK(st.ops->init(st.state, &from, &to, err), err);
    ASSERT_EQ(from, SCHEMA);
    outbox__store_close(&st);
    sqlite3_close(db);

    /* An application's own table named outbox. */
    db = open_db("theirs.db");
    exec_ok(db, "CREATE TABLE outbox (letter TEXT)");
    ASSERT_EQ(outbox_schema_init_sqlite(db, err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err->message, "that outbox did not make");
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_meta'"), 0);
    sqlite3_close(db);
    outbox_msg_free(m);
}

/* The claim ahead needs a second connection to the same database: an
 * in-memory one has none (ENOTBUILT: the relay claims in turn); a store
 * closed with a claim ahead still out waits for its reader and frees it. */
TEST(claim_ahead_memory_and_close)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_claim_params p = {2, 0, 1, 0, NULL};
    int64_t ex[1];
    sh_batch b;

    sh_store_open(&st, "sqlite::memory:");
    ASSERT_OK(st.ops->init(st.state, NULL, NULL, err), err);
    p.now_us = outbox__now_us();
    ex[0] = 1;
    ASSERT_EQ(st.ops->claim_ahead(st.state, &p, ex, 1, err), OUTBOX_ENOTBUILT);
    ASSERT_CONTAINS(err->message, "in-memory");
    outbox__store_close(&st);

    open_store(&st, "ahead-close.db");
    sh_put(&st, "A", NULL);
    sh_put(&st, "A", NULL);
    sh_put(&st, "B", NULL);
    b = sh_claim_at(&st, outbox__now_us(), 1, 1);
    ASSERT_EQ(b.n, 1);
    ex[0] = b.msgs[0]->seq;
    p.now_us = outbox__now_us();
    ASSERT_OK(st.ops->claim_ahead(st.state, &p, ex, 1, err), err);
    /* A second one before the end is refused. */
    ASSERT_EQ(st.ops->claim_ahead(st.state, &p, ex, 1, err), OUTBOX_EINVAL);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

/* Rows in the outbox as the database file holds them, without the WAL
 * (an immutable read-only connection ignores it): what checkpoints have
 * copied in so far. */
static int64_t rows_in_main_file(const char *name)
{
    char uri[800];
    sqlite3 *db = NULL;
    int64_t n;
    snprintf(uri, sizeof uri, "file:%s?immutable=1", test_path(name));
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK)
        TEST_FAIL_("open %s: %s", uri, db ? sqlite3_errmsg(db) : "?");
    n = query_int(db, "SELECT count(*) FROM outbox");
    sqlite3_close(db);
    return n;
}

/* The completes behind leave their checkpoints to the checkpoint thread
 * (the completing connection checkpoints itself only past 8,000 WAL
 * pages): a drain of 4,000 messages of about a page each writes about
 * 4,500 pages, and the deletions reach the database file without another
 * connection checkpointing. */
TEST(complete_behind_checkpoints)
{
    enum { N = 4000, BATCH = 200 };
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_claim_params p = {BATCH, 0, 1, 0, NULL};
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, 0, "relay-w", 30000};
    outbox_completion c[BATCH];
    char payload[3600];
    size_t i, drained = 0;
    int64_t left = -1;
    sqlite3 *db;
    sh_batch b;
    int waited;

    open_store(&st, "checkpoint.db");
    memset(payload, 'x', sizeof payload - 1);
    memcpy(payload, "{\"pad\":\"", 8);
    memcpy(payload + sizeof payload - 3, "\"}", 3);
    db = open_db("checkpoint.db");
    exec_ok(db, "BEGIN");
    for (i = 0; i < N; i++) {
        outbox_msg *m = make_msg("OrderPlaced", i % 2 ? "A" : "B", payload);
        ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
        outbox_msg_free(m);
    }
    exec_ok(db, "COMMIT");
    exec_ok(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(db);
    ASSERT_EQ(rows_in_main_file("checkpoint.db"), N);

    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-w", 30000, err), err);
    for (;;) {
        p.now_us = outbox__now_us();
        ASSERT_OK(st.ops->claim_pipelined(st.state, &p, NULL, 0, &b.msgs, &b.n, err), err);
        if (b.n == 0) break;
        for (i = 0; i < b.n; i++) {
            memset(&c[i], 0, sizeof c[i]);
            c[i].msg = b.msgs[i];
            c[i].outcome = OUTBOX_OUTCOME_SENT;
        }
        cp.now_us = outbox__now_us();
        ASSERT_OK(st.ops->complete_behind(st.state, c, b.n, &cp, 0, err), err);
        ASSERT_OK(st.ops->complete_behind_end(st.state, err), err);
        drained += b.n;
        sh_batch_free(&b);
    }
    ASSERT_EQ(drained, N);
    /* The last request may still be running; the pages after it (fewer
     * than 1,000) stay in the WAL. */
    for (waited = 0; waited < 10000; waited += 50) {
        left = rows_in_main_file("checkpoint.db");
        if (left < N / 2) break;
        usleep(50 * 1000);
    }
    if (left >= N / 2)
        TEST_FAIL_("the database file still holds %lld of %d rows: nothing checkpointed it",
                   (long long)left, N);
    outbox__store_close(&st);
}

int main(int argc, char **argv)
{
#ifdef OUTBOX_FAULT_INJECTION
    if (argc == 3 && strcmp(argv[1], "--fault-child") == 0) {
        /* Share the parent's test directory, and leave it to the parent. */
        test_dir_adopt(argv[2]);
        return fault_child();
    }
#endif
    (void)argc;
    (void)argv;
    RUN(init_idempotent_and_newer_refused);
    RUN(url_errors);
    RUN(missing_file_not_created);
    RUN(enqueue_in_transaction);
    RUN(foreign_writer_checks);
    RUN(seq_not_reused);
    RUN(complete_outcomes);
#ifdef OUTBOX_FAULT_INJECTION
    RUN(fault_during_mark_sent);
#endif
    RUN(lease);
    RUN(inbox);
    RUN(admin_status_list_get_retry);
    RUN(undecodable_rows_quarantined);
    RUN(quarantine_reads_again);
    RUN(relay_drains_around_undecodable_rows);
    RUN(table_refuses_what_library_refuses);
    RUN(upgrade_from_version_1);
    RUN(lease_same_name_not_shared);
    RUN(drop_failed);
    RUN(status_blocked_and_holder);
    RUN(status_oldest_is_head);
    RUN(claim_ahead_memory_and_close);
    RUN(complete_behind_checkpoints);
    RUN(newer_schema_refused_everywhere);
    RUN(unversioned_tables_explained);
    fprintf(stderr, "all store tests passed\n");
    return 0;
}
