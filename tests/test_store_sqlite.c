/*
 * test_store_sqlite.c - the SQLite store: schema, URLs, the public enqueue
 * and inbox functions on a caller's connection, and every op of the
 * outbox__store_sqlite driver (claim ordering, outcomes, lease, admin).
 *
 * Each case uses its own database file under the test directory.  The
 * driver is reached through outbox__store_open, as the relay and CLI do.
 */
#include "internal.h"
#include "test.h"

#include <sqlite3.h>

#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

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
    ASSERT_EQ(to, 1);
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

/* Enqueues one message through the driver; returns its id in id_out. */
static void put(outbox_store *st, const char *agg_id, char id_out[37])
{
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_msg *m = make_msg("OrderPlaced", agg_id, "{\"n\":1}");
    ASSERT_OK(st->ops->enqueue(st->state, m, err), err);
    if (id_out) memcpy(id_out, m->id, 37);
    outbox_msg_free(m);
}

typedef struct batch {
    outbox_msg **msgs;
    size_t n;
} batch;

static batch claim(outbox_store *st, int64_t now, int failed_blocks)
{
    outbox_error err_buf = {0}, *err = &err_buf;
    outbox_claim_params p = {100, now, failed_blocks, 0};
    batch b = {NULL, 0};
    ASSERT_OK(st->ops->claim(st->state, &p, &b.msgs, &b.n, err), err);
    return b;
}

static void batch_free(batch *b)
{
    size_t i;
    for (i = 0; i < b->n; i++) outbox_msg_free(b->msgs[i]);
    free(b->msgs);
    b->msgs = NULL;
    b->n = 0;
}

static int complete_one(outbox_store *st, const outbox_msg *m, int outcome, int64_t available_at,
                        int on_sent, outbox_error *err)
{
    outbox_completion c = {m, outcome, available_at, "boom"};
    outbox_complete_params p = {on_sent, outbox__now_us(), NULL, 0};
    return st->ops->complete(st->state, &c, 1, &p, err);
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
    ASSERT_EQ(from, 1);
    ASSERT_EQ(to, 1);
    ASSERT_OK(st.ops->check_schema(st.state, err), err);

    db = open_db("init.db");
    ASSERT_EQ(query_int(db, "SELECT value FROM outbox_meta WHERE key='schema_version'"), 1);
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
    ASSERT_CONTAINS(err->message, "99");
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
    ASSERT_EQ(outbox__store_open(&st, "mysql://u:hunter2@h/db", err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err->message, "sqlite");
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
        int rc = outbox__store_open(&st, "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2",
                                    err);
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
    batch b = {NULL, 0};
    outbox_claim_params p = {10, outbox__now_us(), 1, 0};
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
    batch b;

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
    b = claim(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 0);
    batch_free(&b);

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

    b = claim(&st, outbox__now_us(), 1);
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
    batch_free(&b);

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
    batch b;
    int64_t max_seq;
    char id[37];

    open_store(&st, "seq.db");
    put(&st, "a", NULL);
    put(&st, "b", NULL);
    put(&st, "c", id);
    b = claim(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 3);
    max_seq = b.msgs[2]->seq;
    ASSERT_STREQ(b.msgs[2]->id, id);
    /* Delete the max row (sent, on_sent delete), then enqueue again. */
    ASSERT_OK(complete_one(&st, b.msgs[2], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    batch_free(&b);
    put(&st, "d", id);
    b = claim(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 3);
    ASSERT_STREQ(b.msgs[2]->id, id);
    ASSERT(b.msgs[2]->seq > max_seq);
    batch_free(&b);
    outbox__store_close(&st);
}

TEST(claim_ordering_rule)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char a1[37], a2[37], b1[37], a3[37];
    batch b;
    int64_t now = outbox__now_us(), later = now + 60 * 1000000LL, due;
    outbox_completion c[4];
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, now, NULL, 0};
    int i;

    open_store(&st, "order.db");
    put(&st, "A", a1);
    put(&st, "A", a2);
    put(&st, "B", b1);
    put(&st, "A", a3);
    b = claim(&st, now, 1);
    ASSERT_EQ(b.n, 4);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_STREQ(b.msgs[1]->id, a2);
    ASSERT_STREQ(b.msgs[2]->id, b1);
    ASSERT_STREQ(b.msgs[3]->id, a3);
    ASSERT_OK(st.ops->next_due(st.state, &due, err), err);
    ASSERT_EQ(due, 0);

    /* a1 goes into backoff; the rest of the batch was held back. */
    for (i = 0; i < 4; i++) {
        c[i].msg = b.msgs[i];
        c[i].outcome = i == 0 ? OUTBOX_OUTCOME_RETRY : OUTBOX_OUTCOME_UNSENT;
        c[i].available_at = later;
        c[i].error = "destination down";
    }
    ASSERT_OK(st.ops->complete(st.state, c, 4, &p, err), err);
    batch_free(&b);

    ASSERT_OK(st.ops->next_due(st.state, &due, err), err);
    ASSERT_EQ(due, later);

    /* While a1 waits, only B's message is claimable. */
    b = claim(&st, now + 1000, 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, b1);
    batch_free(&b);

    /* When a1 is due, everything comes back in order, a1 first. */
    b = claim(&st, later, 1);
    ASSERT_EQ(b.n, 4);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_EQ(b.msgs[0]->attempts, 1);
    ASSERT_STREQ(b.msgs[1]->id, a2);
    ASSERT_EQ(b.msgs[1]->attempts, 0);
    batch_free(&b);

    /* Batch size is respected. */
    {
        outbox_claim_params cp = {2, later, 1, 0};
        ASSERT_OK(st.ops->claim(st.state, &cp, &b.msgs, &b.n, err), err);
        ASSERT_EQ(b.n, 2);
        ASSERT_STREQ(b.msgs[0]->id, a1);
        batch_free(&b);
    }
    outbox__store_close(&st);
}

TEST(failed_blocks_option)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char a1[37], a2[37], b1[37];
    batch b;
    int64_t now = outbox__now_us();

    open_store(&st, "failed.db");
    put(&st, "A", a1);
    put(&st, "A", a2);
    put(&st, "B", b1);
    b = claim(&st, now, 1);
    ASSERT_EQ(b.n, 3);
    ASSERT_OK(complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    batch_free(&b);

    b = claim(&st, now, 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, b1);
    batch_free(&b);

    b = claim(&st, now, 0);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a2);
    ASSERT_STREQ(b.msgs[1]->id, b1);
    batch_free(&b);
    outbox__store_close(&st);
}

TEST(complete_outcomes)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char ids[4][37];
    batch b;
    outbox_msg *got = NULL;
    int64_t count, t0;
    sqlite3 *db;
    int i;

    open_store(&st, "outcomes.db");
    for (i = 0; i < 4; i++) put(&st, "agg", ids[i]);
    b = claim(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 4);

    /* SENT with delete: gone. */
    ASSERT_OK(complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, err),
              err);
    ASSERT_EQ(st.ops->get(st.state, ids[0], &got, err), OUTBOX_ENOTFOUND);
    ASSERT_CONTAINS(err->message, ids[0]);

    /* SENT with mark: kept as sent with sent_at. */
    t0 = outbox__now_us();
    ASSERT_OK(complete_one(&st, b.msgs[1], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK, err),
              err);
    ASSERT_OK(st.ops->get(st.state, ids[1], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_SENT);
    ASSERT_GE(got->sent_at, t0);
    outbox_msg_free(got);

    /* RETRY: attempts+1, available_at, last_error. */
    ASSERT_OK(complete_one(&st, b.msgs[2], OUTBOX_OUTCOME_RETRY, 777, 0, err), err);
    ASSERT_OK(st.ops->get(st.state, ids[2], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_EQ(got->available_at, 777);
    ASSERT_STREQ(got->last_error, "boom");
    outbox_msg_free(got);

    /* FAILED: attempts+1, failed, last_error. */
    ASSERT_OK(complete_one(&st, b.msgs[3], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
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
    batch_free(&b);

    /* A mixed batch in one call: two sent (marked), one retry, one unsent. */
    {
        char more[4][37];
        outbox_completion c[4];
        outbox_complete_params p = {OUTBOX_ON_SENT_MARK, outbox__now_us(), "relay-a", 10000};
        for (i = 0; i < 4; i++) put(&st, i == 2 ? "other" : "mixed", more[i]);
        b = claim(&st, outbox__now_us(), 0);
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
            if (i == 1) ASSERT_STREQ(got->last_error, "mixed");
            else ASSERT(got->last_error == NULL);
            if (i == 0 || i == 2) ASSERT_EQ(got->sent_at, p.now_us);
            outbox_msg_free(got);
        }
        batch_free(&b);
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
    batch b;
    int rc;

    if (outbox__store_open(&st, url_of("fault.db"), err) != OUTBOX_OK) return 10;
    b = claim(&st, outbox__now_us(), 1);
    if (b.n != 2) return 11;
    memset(c, 0, sizeof c);
    c[0].msg = b.msgs[0];
    c[1].msg = b.msgs[1];
    c[0].outcome = c[1].outcome = OUTBOX_OUTCOME_SENT;
    rc = st.ops->complete(st.state, c, 2, &p, err);
    batch_free(&b);
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
    put(&st, "x", NULL);
    put(&st, "y", NULL);
    outbox__store_close(&st);

    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        char *args[] = {(char *)"test_store_sqlite", (char *)"--fault-child",
                        (char *)test_dir(), NULL};
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
    ASSERT_CONTAINS(err->message, "another relay holds this outbox (owner relay-1, pid ");
    ASSERT_CONTAINS(err->message, "--wait-lease");
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
    ASSERT_EQ(query_int(db, "SELECT count(*) FROM outbox_inbox WHERE message_id = lower(message_id)"),
              2);

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
    batch b;
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

    for (i = 0; i < 5; i++) put(&st, i < 3 ? "A" : "B", ids[i]);
    b = claim(&st, now, 1);
    ASSERT_EQ(b.n, 5);
    ASSERT_OK(complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(complete_one(&st, b.msgs[3], OUTBOX_OUTCOME_RETRY, later, 0, err), err);
    ASSERT_OK(complete_one(&st, b.msgs[4], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK, err),
              err);

    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.schema_version, 1);
    ASSERT_EQ(s.pending, 3);
    ASSERT_EQ(s.pending_due, 2);
    ASSERT_EQ(s.retrying, 1);
    ASSERT_EQ(s.sent, 1);
    ASSERT_EQ(s.failed, 1);
    ASSERT_EQ(s.oldest_pending_us, b.msgs[1]->occurred_at);
    ASSERT_EQ(s.next_due_us, later);
    ASSERT_STREQ(s.lease_owner, "");

    memset(&col, 0, sizeof col);
    lp.status = -1;
    lp.limit = 0;
    ASSERT_OK(st.ops->list(st.state, &lp, collect, &col, err), err);
    ASSERT_EQ(col.n, 5);
    for (i = 0; i < 5; i++) ASSERT_STREQ(col.ids[i], ids[i]);
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
    batch_free(&b);
    b = claim(&st, now, 1);
    ASSERT(b.n >= 1);
    ASSERT_STREQ(b.msgs[0]->id, ids[0]);
    ASSERT_OK(complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(complete_one(&st, b.msgs[1], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    ASSERT_OK(st.ops->retry(st.state, NULL, 0, 1, &count, err), err);
    ASSERT_EQ(count, 2);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 0);
    ASSERT_EQ(s.pending, 4);
    batch_free(&b);
    outbox__store_close(&st);
}

int main(int argc, char **argv)
{
#ifdef OUTBOX_FAULT_INJECTION
    if (argc == 3 && strcmp(argv[1], "--fault-child") == 0) {
        /* Share the parent's test directory, and leave it to the parent. */
        snprintf(test_dir_path_, sizeof test_dir_path_, "%s", argv[2]);
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
    RUN(claim_ordering_rule);
    RUN(failed_blocks_option);
    RUN(complete_outcomes);
#ifdef OUTBOX_FAULT_INJECTION
    RUN(fault_during_mark_sent);
#endif
    RUN(lease);
    RUN(inbox);
    RUN(admin_status_list_get_retry);
    fprintf(stderr, "all store tests passed\n");
    return 0;
}
