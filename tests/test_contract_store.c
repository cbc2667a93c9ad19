/*
 * test_contract_store.c - the same cases against every store driver,
 * through the internal store interface (src/internal.h): ordering
 * (guarantee 4), claim and complete, leases, retry/drop/purge, and rows
 * written around the table's checks (quarantined, never blocking other
 * aggregates).
 *
 * A store is one line in `stores` below: its name, a function that makes
 * the URL of a fresh, empty outbox (starting the server the first time),
 * a hook that writes a bad row with the store's own SQL, and the store's
 * answers where stores differ on purpose (an exclusive lease or shared
 * partitions; writers that can commit out of seq order).  SQLite always
 * runs; PostgreSQL when built and a server can be started here
 * (tests/support/pg.h).
 */
#include "internal.h"
#include "support/chaos.h"
#include "support/store.h"
#include "test.h"

#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#endif
#ifdef OUTBOX_HAVE_MARIADB
#include "support/mariadb.h"
#endif

#include <sqlite3.h>
#include <strings.h>

typedef struct store_driver {
    const char *name;
    /* NULL when the store runs here, else why not (the cases are skipped). */
    const char *(*unavailable)(void);
    /* Writes the URL of a fresh, empty outbox named after the case. */
    void (*new_url)(char *url, size_t len, const char *case_name);
    /* Writes a pending row with a blank type (the library refuses it) for
     * aggregate agg, going around the table's checks; returns its seq. */
    int64_t (*insert_bad_row)(const char *url, const char *agg);
    /* Enqueues m1 and then m2 in two transactions of its own, commits m2's
     * first, and calls between(user) between the two commits; NULL when
     * the store's writers commit in seq order (SQLite: one writer). */
    void (*commit_out_of_order)(const char *url, outbox_msg *m1, outbox_msg *m2,
                                void (*between)(void *user), void *user);
    int exclusive_lease; /* 1: one holder per outbox; 0: relays share partitions */
} store_driver;

/* ------------------------------------------------------------------------
 * SQLite
 * ---------------------------------------------------------------------- */

static void sqlite_new_url(char *url, size_t len, const char *case_name)
{
    char name[128];
    snprintf(name, sizeof name, "contract-%s.db", case_name);
    snprintf(url, len, "sqlite:%s", test_path(name));
}

/* The INSERT triggers are the table's checks: dropped for the one row and
 * put back, as a writer that went around them (or an older schema) would
 * have left it. */
static int64_t sqlite_insert_bad_row(const char *url, const char *agg)
{
    sqlite3 *db = ch_db_open(url + strlen("sqlite:"));
    sqlite3_stmt *s = NULL;
    char *triggers[8], sql[1200];
    int n = 0;
    int64_t seq;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                                 " AND tbl_name = 'outbox' AND name LIKE '%insert'",
                                 -1, &s, NULL),
              SQLITE_OK);
    char names[8][128];
    while (n < 8 && sqlite3_step(s) == SQLITE_ROW) {
        snprintf(names[n], sizeof names[n], "%s", (const char *)sqlite3_column_text(s, 0));
        triggers[n++] = strdup((const char *)sqlite3_column_text(s, 1));
    }
    sqlite3_finalize(s);
    ch_db_exec(db, "BEGIN IMMEDIATE");
    for (int i = 0; i < n; i++) {
        snprintf(sql, sizeof sql, "DROP TRIGGER %s", names[i]);
        ch_db_exec(db, sql);
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers)"
             " VALUES ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72', 1700000000000000, '  ', '%s',"
             " '{}', '{}')",
             agg);
    ch_db_exec(db, sql);
    seq = sqlite3_last_insert_rowid(db);
    for (int i = 0; i < n; i++) {
        ch_db_exec(db, triggers[i]);
        free(triggers[i]);
    }
    ch_db_exec(db, "COMMIT");
    sqlite3_close(db);
    return seq;
}

/* ------------------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;

static const char *pg_unavailable(void)
{
    return pgh_available();
}

static void pg_new_url(char *url, size_t len, const char *case_name)
{
    if (!pg.pid) pgh_start(&pg);
    snprintf(url, len, "%s?schema=c_%s", pg.url, case_name);
}

/* The schema named in url's "schema=" parameter. */
static const char *pg_schema(const char *url)
{
    const char *s = strstr(url, "schema=");
    if (!s) TEST_FAIL_("no schema in %s", url);
    return s + strlen("schema=");
}

/* The checks are CHECK constraints: dropped for the one row and added
 * back NOT VALID (old rows are not judged), in one transaction. */
static int64_t pg_insert_bad_row(const char *url, const char *agg)
{
    PGconn *c = pgh_connect(&pg);
    const char *schema = pg_schema(url);
    char sql[2048];
    int64_t seq;
    pgh_exec(c, "BEGIN");
    snprintf(sql, sizeof sql,
             "CREATE TEMP TABLE saved_checks ON COMMIT DROP AS SELECT conname,"
             " pg_get_constraintdef(oid) AS def FROM pg_constraint"
             " WHERE conrelid = '%s.outbox'::regclass AND contype = 'c'"
             " AND conname LIKE 'outbox\\_%%\\_valid'",
             schema);
    pgh_exec(c, sql);
    snprintf(sql, sizeof sql,
             "DO $$ DECLARE r record; BEGIN FOR r IN SELECT * FROM saved_checks LOOP"
             " EXECUTE format('ALTER TABLE %s.outbox DROP CONSTRAINT %%I', r.conname);"
             " END LOOP; END $$",
             schema);
    pgh_exec(c, sql);
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.outbox (id, type, aggregate_type, aggregate_id, payload, headers,"
             " occurred_at, available_at) VALUES ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72', '  ',"
             " 'Order', '%s', '{}', '{}', now(), now())",
             schema, agg);
    pgh_exec(c, sql);
    snprintf(sql, sizeof sql, "SELECT max(seq) FROM %s.outbox", schema);
    seq = pgh_count(c, sql);
    snprintf(sql, sizeof sql,
             "DO $$ DECLARE r record; BEGIN FOR r IN SELECT * FROM saved_checks LOOP"
             " EXECUTE format('ALTER TABLE %s.outbox ADD CONSTRAINT %%I %%s NOT VALID',"
             " r.conname, r.def); END LOOP; END $$",
             schema);
    pgh_exec(c, sql);
    pgh_exec(c, "COMMIT");
    PQfinish(c);
    return seq;
}

/* Two sessions: m1 takes the lower seq, m2 commits first. */
static void pg_commit_out_of_order(const char *url, outbox_msg *m1, outbox_msg *m2,
                                   void (*between)(void *user), void *user)
{
    PGconn *t1 = pgh_connect(&pg), *t2 = pgh_connect(&pg);
    outbox_error err;
    char sql[200];
    snprintf(sql, sizeof sql, "SET search_path = %s", pg_schema(url));
    pgh_exec(t1, sql);
    pgh_exec(t2, sql);
    pgh_exec(t1, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg_schema(t1, pg_schema(url), m1, &err), &err); /* lower seq */
    pgh_exec(t2, "BEGIN");
    ASSERT_OK(outbox_enqueue_pg_schema(t2, pg_schema(url), m2, &err), &err);
    pgh_exec(t2, "COMMIT");
    between(user);
    pgh_exec(t1, "COMMIT"); /* commits after a later seq was published */
    PQfinish(t1);
    PQfinish(t2);
}
#endif

/* ------------------------------------------------------------------------
 * MariaDB
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_MARIADB
static myh_server my;

static const char *my_unavailable(void)
{
    return myh_available();
}

static void my_new_url(char *url, size_t len, const char *case_name)
{
    if (!my.pid) myh_start(&my);
    snprintf(url, len, "%s?table_prefix=c_%s", my.url, case_name);
}

/* The table prefix named in url's "table_prefix=" parameter. */
static const char *my_prefix(const char *url)
{
    const char *s = strstr(url, "table_prefix=");
    if (!s) TEST_FAIL_("no table_prefix in %s", url);
    return s + strlen("table_prefix=");
}

/* The checks are CHECK constraints: switched off for the one statement's
 * session (MariaDB's check_constraint_checks). */
static int64_t my_insert_bad_row(const char *url, const char *agg)
{
    MYSQL *c = myh_connect(&my);
    char sql[1024];
    int64_t seq;
    myh_exec(c, "SET SESSION check_constraint_checks = 0");
    snprintf(sql, sizeof sql,
             "INSERT INTO `%s` (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
             " headers, available_at) VALUES ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72',"
             " 1700000000000000, '  ', 'Order', '%s', '{}', '{}', 0)",
             my_prefix(url), agg);
    myh_exec(c, sql);
    seq = myh_count(c, "SELECT LAST_INSERT_ID()");
    mysql_close(c);
    return seq;
}

/* Two connections: m1 takes the lower seq, m2 commits first. */
static void my_commit_out_of_order(const char *url, outbox_msg *m1, outbox_msg *m2,
                                   void (*between)(void *user), void *user)
{
    MYSQL *t1 = myh_connect(&my), *t2 = myh_connect(&my);
    outbox_error err;
    myh_exec(t1, "START TRANSACTION");
    ASSERT_OK(outbox_enqueue_mysql_prefix(t1, my_prefix(url), m1, &err), &err); /* lower seq */
    myh_exec(t2, "START TRANSACTION");
    ASSERT_OK(outbox_enqueue_mysql_prefix(t2, my_prefix(url), m2, &err), &err);
    myh_exec(t2, "COMMIT");
    between(user);
    myh_exec(t1, "COMMIT"); /* commits after a later seq was published */
    mysql_close(t1);
    mysql_close(t2);
}
#endif

/* ------------------------------------------------------------------------
 * The stores
 * ---------------------------------------------------------------------- */

static const store_driver stores[] = {
    {"sqlite", NULL, sqlite_new_url, sqlite_insert_bad_row, NULL, 1},
#ifdef OUTBOX_HAVE_LIBPQ
    {"postgres", pg_unavailable, pg_new_url, pg_insert_bad_row, pg_commit_out_of_order, 0},
#endif
#ifdef OUTBOX_HAVE_MARIADB
    {"mariadb", my_unavailable, my_new_url, my_insert_bad_row, my_commit_out_of_order, 0},
#endif
};

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* Opens a store on a fresh outbox and creates its schema. */
static void open_fresh(const store_driver *d, outbox_store *st, char *url, size_t len,
                       const char *case_name)
{
    outbox_error err = {0};
    int from = -1, to = -1;
    d->new_url(url, len, case_name);
    sh_store_open(st, url);
    ASSERT_OK(st->ops->init(st->state, &from, &to, &err), &err);
    ASSERT_EQ(from, 0);
    ASSERT(to > 0);
}

/* The status of message id (-1 when absent). */
static int status_of(outbox_store *st, const char *id)
{
    outbox_error err = {0};
    outbox_msg *m = NULL;
    int s;
    if (st->ops->get(st->state, id, &m, &err) == OUTBOX_ENOTFOUND) return -1;
    ASSERT(m != NULL);
    s = m->status;
    outbox_msg_free(m);
    return s;
}

/* ------------------------------------------------------------------------
 * Ordering (guarantee 4)
 * ---------------------------------------------------------------------- */

/* Per-aggregate order across claims: a message in backoff holds its
 * aggregate's later ones, other aggregates flow, and when it is due it
 * comes first again.  (Moved from test_store_sqlite.) */
static void claim_ordering_rule(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], a1[37], a2[37], b1[37], a3[37];
    sh_batch b;
    int64_t now = outbox__now_us(), later = now + 60 * 1000000LL, due;
    outbox_completion c[4];
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, now, NULL, 0};
    int i;

    open_fresh(d, &st, url, sizeof url, "order");
    sh_put(&st, "A", a1);
    sh_put(&st, "A", a2);
    sh_put(&st, "B", b1);
    sh_put(&st, "A", a3);
    b = sh_claim_due(&st, now, 1);
    ASSERT_EQ(b.n, 4);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_STREQ(b.msgs[1]->id, a2);
    ASSERT_STREQ(b.msgs[2]->id, b1);
    ASSERT_STREQ(b.msgs[3]->id, a3);
    for (i = 1; i < 4; i++)
        ASSERT(b.msgs[i]->seq > b.msgs[i - 1]->seq);
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
    sh_batch_free(&b);

    ASSERT_OK(st.ops->next_due(st.state, &due, err), err);
    ASSERT_EQ(due, later);

    /* While a1 waits, only B's message is claimable. */
    b = sh_claim_due(&st, now + 1000, 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, b1);
    sh_batch_free(&b);

    /* When a1 is due, everything comes back in order, a1 first. */
    b = sh_claim_due(&st, later, 1);
    ASSERT_EQ(b.n, 4);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_EQ(b.msgs[0]->attempts, 1);
    ASSERT_STREQ(b.msgs[1]->id, a2);
    ASSERT_EQ(b.msgs[1]->attempts, 0);
    sh_batch_free(&b);

    /* Batch size is respected. */
    b = sh_claim_at(&st, later, 2, 1);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

/* A Failed message holds its aggregate back when the relay asks for it,
 * and not otherwise.  (Moved from test_store_sqlite.) */
static void failed_blocks_option(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], a1[37], a2[37], b1[37];
    sh_batch b;
    int64_t now = outbox__now_us();

    open_fresh(d, &st, url, sizeof url, "failed");
    sh_put(&st, "A", a1);
    sh_put(&st, "A", a2);
    sh_put(&st, "B", b1);
    b = sh_claim_due(&st, now, 1);
    ASSERT_EQ(b.n, 3);
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    sh_batch_free(&b);

    b = sh_claim_due(&st, now, 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, b1);
    sh_batch_free(&b);

    b = sh_claim_due(&st, now, 0);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a2);
    ASSERT_STREQ(b.msgs[1]->id, b1);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

typedef struct out_of_order_ctx {
    outbox_store *st;
    const outbox_msg *m2;
} out_of_order_ctx;

/* Between the commits: only the committed, later message is claimable. */
static void publish_committed(void *user)
{
    out_of_order_ctx *x = user;
    outbox_error err = {0};
    sh_batch b = sh_claim_due(x->st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, outbox_msg_id(x->m2));
    ASSERT_OK(
        sh_complete_one(x->st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, &err),
        &err);
    sh_batch_free(&b);
}

/* A message that commits after a later seq was published is still
 * published.  (Moved from test_store_pg.) */
static void out_of_order_commits(const store_driver *d)
{
    outbox_store st;
    outbox_error err = {0};
    char url[700];
    outbox_msg *m1 = NULL, *m2 = NULL;
    out_of_order_ctx x;
    sh_batch b;

    if (!d->commit_out_of_order) {
        fprintf(stderr, "   %s: writers commit in seq order (nothing to check)\n", d->name);
        return;
    }
    open_fresh(d, &st, url, sizeof url, "ooo");
    ASSERT_OK(outbox_msg_new(&m1, "Tick", "Agg", "x", "{\"t\":1}", &err), &err);
    ASSERT_OK(outbox_msg_new(&m2, "Tick", "Agg", "y", "{\"t\":2}", &err), &err);
    x.st = &st;
    x.m2 = m2;
    d->commit_out_of_order(url, m1, m2, publish_committed, &x);

    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, outbox_msg_id(m1));
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE, &err),
              &err);
    sh_batch_free(&b);
    outbox_msg_free(m1);
    outbox_msg_free(m2);
    outbox__store_close(&st);
}

/* ------------------------------------------------------------------------
 * Claim and complete
 * ---------------------------------------------------------------------- */

/* Records one claim's outcomes in one call, as the relay does (a store may
 * keep the claim open until then): msgs[i] gets `outcome`, the others are
 * left unsent. */
static int complete_just(outbox_store *st, const sh_batch *b, size_t i, int outcome,
                         int64_t available_at, int on_sent, outbox_error *err)
{
    outbox_completion c[16];
    outbox_complete_params p = {on_sent, outbox__now_us(), NULL, 0};
    ASSERT(b->n <= 16 && i < b->n);
    memset(c, 0, sizeof c);
    for (size_t k = 0; k < b->n; k++) {
        c[k].msg = b->msgs[k];
        c[k].outcome = k == i ? outcome : OUTBOX_OUTCOME_UNSENT;
        c[k].available_at = available_at;
        c[k].error = "boom";
    }
    return st->ops->complete(st->state, c, b->n, &p, err);
}

/* Claims, records msgs[i]'s outcome (the rest unsent) and frees the claim. */
static void claim_and_complete(outbox_store *st, size_t want, size_t i, int outcome,
                               int64_t available_at, int on_sent)
{
    outbox_error err = {0};
    sh_batch b = sh_claim_due(st, outbox__now_us(), 0);
    ASSERT_EQ(b.n, want);
    ASSERT_OK(complete_just(st, &b, i, outcome, available_at, on_sent, &err), &err);
    sh_batch_free(&b);
}

/* Each outcome's effect: sent (deleted or marked with sent_at), retry
 * (attempts + 1, available_at, last_error), failed (attempts + 1, reason),
 * unsent (nothing changes). */
static void complete_outcomes(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], ids[4][37];
    sh_batch b;
    outbox_msg *got = NULL;
    int64_t t0, later = outbox__now_us() + 3600 * 1000000LL;
    int i;

    open_fresh(d, &st, url, sizeof url, "outcomes");
    for (i = 0; i < 4; i++) {
        char agg[8];
        snprintf(agg, sizeof agg, "agg%d", i);
        sh_put(&st, agg, ids[i]);
    }

    /* SENT with delete: gone. */
    claim_and_complete(&st, 4, 0, OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_DELETE);
    ASSERT_EQ(st.ops->get(st.state, ids[0], &got, err), OUTBOX_ENOTFOUND);
    ASSERT_CONTAINS(err->message, ids[0]);

    /* SENT with mark: kept as sent with sent_at. */
    t0 = outbox__now_us();
    claim_and_complete(&st, 3, 0, OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK);
    ASSERT_OK(st.ops->get(st.state, ids[1], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_SENT);
    ASSERT_GE(got->sent_at, t0);
    outbox_msg_free(got);

    /* RETRY: attempts+1, available_at, last_error. */
    claim_and_complete(&st, 2, 0, OUTBOX_OUTCOME_RETRY, later, 0);
    ASSERT_OK(st.ops->get(st.state, ids[2], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_EQ(got->available_at, later);
    ASSERT_STREQ(got->last_error, "boom");
    outbox_msg_free(got);

    /* FAILED: attempts+1, failed, last_error. */
    claim_and_complete(&st, 1, 0, OUTBOX_OUTCOME_FAILED, 0, 0);
    ASSERT_OK(st.ops->get(st.state, ids[3], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(got->attempts, 1);
    ASSERT_STREQ(got->last_error, "boom");
    outbox_msg_free(got);

    /* A retried message that fails when due again counts its attempts. */
    b = sh_claim_due(&st, later, 0);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, ids[2]);
    ASSERT_EQ(b.msgs[0]->attempts, 1);
    ASSERT_OK(complete_just(&st, &b, 0, OUTBOX_OUTCOME_FAILED, 0, 0, err), err);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->get(st.state, ids[2], &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(got->attempts, 2);
    outbox_msg_free(got);

    /* A mixed batch in one call: sent (marked) and unsent. */
    {
        char more[2][37];
        outbox_completion c[2];
        outbox_complete_params p = {OUTBOX_ON_SENT_MARK, outbox__now_us(), NULL, 0};
        sh_put(&st, "mixed", more[0]);
        sh_put(&st, "other", more[1]);
        b = sh_claim_due(&st, outbox__now_us(), 1);
        ASSERT_EQ(b.n, 2);
        memset(c, 0, sizeof c);
        c[0].msg = b.msgs[0];
        c[0].outcome = OUTBOX_OUTCOME_SENT;
        c[1].msg = b.msgs[1];
        /* An unknown outcome anywhere refuses the whole call. */
        c[1].outcome = 99;
        ASSERT_EQ(st.ops->complete(st.state, c, 2, &p, err), OUTBOX_EINVAL);
        ASSERT_CONTAINS(err->message, "unknown outcome");
        c[1].outcome = OUTBOX_OUTCOME_UNSENT;
        ASSERT_OK(st.ops->complete(st.state, c, 2, &p, err), err);
        ASSERT_EQ(status_of(&st, more[0]), OUTBOX_STATUS_SENT);
        ASSERT_EQ(status_of(&st, more[1]), OUTBOX_STATUS_PENDING);
        sh_batch_free(&b);
    }
    outbox__store_close(&st);
}

/* The sent messages of one call are written by runs of consecutive seqs
 * (SQLite: a range of the primary key each, or one statement over all of
 * them past a few runs): whatever the pattern of outcomes, exactly the
 * sent ones are deleted or marked, and a retried or unsent one between
 * them stays as it was.  Two patterns, in both on_sent modes: 3 runs with a
 * retry and an unsent message between them; 20 runs (every other one sent). */
static void complete_runs(const store_driver *d)
{
    enum { N = 40 };
    outbox_store st;
    outbox_error err = {0};
    char url[700], ids[N][37];
    int64_t later = outbox__now_us() + 3600 * 1000000LL;
    int pattern, on_sent;

    for (pattern = 0; pattern < 2; pattern++)
        for (on_sent = OUTBOX_ON_SENT_DELETE; on_sent <= OUTBOX_ON_SENT_MARK; on_sent++) {
            char name[32];
            outbox_completion c[N];
            outbox_complete_params p = {on_sent, outbox__now_us(), NULL, 0};
            sh_batch b;
            int i, sent = 0;

            snprintf(name, sizeof name, "runs%d%d", pattern, on_sent);
            open_fresh(d, &st, url, sizeof url, name);
            for (i = 0; i < N; i++) {
                char agg[16];
                snprintf(agg, sizeof agg, "runs-%d", i);
                sh_put(&st, agg, ids[i]);
            }
            b = sh_claim_due(&st, outbox__now_us(), 0);
            ASSERT_EQ(b.n, N);
            memset(c, 0, sizeof c);
            for (i = 0; i < N; i++) {
                c[i].msg = b.msgs[i];
                c[i].available_at = later;
                c[i].error = "boom";
                if (pattern == 0)
                    c[i].outcome = i == 12   ? OUTBOX_OUTCOME_RETRY
                                   : i == 25 ? OUTBOX_OUTCOME_UNSENT
                                             : OUTBOX_OUTCOME_SENT;
                else
                    c[i].outcome = i % 2 ? OUTBOX_OUTCOME_RETRY : OUTBOX_OUTCOME_SENT;
            }
            ASSERT_OK(st.ops->complete(st.state, c, N, &p, &err), &err);
            for (i = 0; i < N; i++) {
                outbox_msg *got = NULL;
                int rc = st.ops->get(st.state, b.msgs[i]->id, &got, &err);
                if (c[i].outcome == OUTBOX_OUTCOME_SENT) {
                    sent++;
                    if (on_sent == OUTBOX_ON_SENT_DELETE) {
                        ASSERT_EQ(rc, OUTBOX_ENOTFOUND);
                        continue;
                    }
                    ASSERT_OK(rc, &err);
                    ASSERT_EQ(got->status, OUTBOX_STATUS_SENT);
                } else {
                    ASSERT_OK(rc, &err);
                    ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
                    ASSERT_EQ(got->attempts, c[i].outcome == OUTBOX_OUTCOME_RETRY ? 1 : 0);
                }
                outbox_msg_free(got);
            }
            ASSERT_EQ(sent, pattern == 0 ? N - 2 : N / 2);
            sh_batch_free(&b);
            outbox__store_close(&st);
        }
}

/* ------------------------------------------------------------------------
 * Leases
 * ---------------------------------------------------------------------- */

static void leases(const store_driver *d)
{
    outbox_store st, other;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700];

    open_fresh(d, &st, url, sizeof url, "lease");
    sh_store_open(&other, url);

    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err);
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err); /* again: ours */
    ASSERT_OK(st.ops->lease_renew(st.state, "relay-1", 30000, err), err);
    if (d->exclusive_lease) {
        outbox_status s;
        /* A second relay is refused and told who holds the outbox. */
        ASSERT_EQ(other.ops->lease_acquire(other.state, "relay-2", 30000, err), OUTBOX_ELEASED);
        ASSERT_CONTAINS(err->message, "relay-1");
        ASSERT_EQ(other.ops->lease_renew(other.state, "relay-2", 30000, err), OUTBOX_ELEASELOST);
        ASSERT_OK(st.ops->status(st.state, &s, err), err);
        ASSERT_STREQ(s.lease_owner, "relay-1");

        /* An expired lease is taken over; the old owner's renew is then lost. */
        ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", -1000, err), err);
        ASSERT_OK(other.ops->lease_acquire(other.state, "relay-2", 30000, err), err);
        ASSERT_EQ(st.ops->lease_renew(st.state, "relay-1", 30000, err), OUTBOX_ELEASELOST);
        ASSERT_OK(st.ops->lease_release(st.state, "relay-1", err), err); /* not ours: no-op */
        ASSERT_EQ(st.ops->lease_acquire(st.state, "relay-1", 30000, err), OUTBOX_ELEASED);
        ASSERT_OK(other.ops->lease_release(other.state, "relay-2", err), err);
    } else {
        /* Relays share the outbox's partitions: a second one is let in. */
        ASSERT_OK(other.ops->lease_acquire(other.state, "relay-2", 30000, err), err);
        ASSERT_OK(other.ops->lease_renew(other.state, "relay-2", 30000, err), err);
        ASSERT_OK(other.ops->lease_release(other.state, "relay-2", err), err);
    }
    /* Released, the lease can be taken again. */
    ASSERT_OK(st.ops->lease_release(st.state, "relay-1", err), err);
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-1", 30000, err), err);
    ASSERT_OK(st.ops->lease_release(st.state, "relay-1", err), err);
    outbox__store_close(&other);
    outbox__store_close(&st);
}

/* ------------------------------------------------------------------------
 * Retry, drop, purge
 * ---------------------------------------------------------------------- */

/* Fails every pending message (failed messages do not block here). */
static void fail_all(outbox_store *st)
{
    outbox_error err = {0};
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 0};
    outbox_completion c[16];
    sh_batch b = sh_claim_due(st, outbox__now_us(), 0);
    ASSERT(b.n <= 16);
    memset(c, 0, sizeof c);
    for (size_t i = 0; i < b.n; i++) {
        c[i].msg = b.msgs[i];
        c[i].outcome = OUTBOX_OUTCOME_FAILED;
        c[i].error = "rejected";
    }
    ASSERT_OK(st->ops->complete(st->state, c, b.n, &p, &err), &err);
    sh_batch_free(&b);
}

static void retry_drop_purge(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], ids[4][37], sent[37];
    const char *unknown = "0190a0a0-0000-7000-8000-00000000ffff";
    outbox_msg *got = NULL;
    outbox_status s;
    int64_t count = -1, t0;
    sh_batch b;
    int i;

    open_fresh(d, &st, url, sizeof url, "admin");
    for (i = 0; i < 4; i++)
        sh_put(&st, i % 2 ? "B" : "A", ids[i]);
    fail_all(&st);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 4);
    ASSERT_EQ(s.pending, 0);

    /* retry by id: all or nothing when one id is unknown. */
    {
        const char *two[] = {ids[0], unknown};
        ASSERT_EQ(st.ops->retry(st.state, two, 2, 0, &count, err), OUTBOX_ENOTFOUND);
        ASSERT_EQ(status_of(&st, ids[0]), OUTBOX_STATUS_FAILED);
        ASSERT_OK(st.ops->retry(st.state, two, 1, 0, &count, err), err);
        ASSERT_EQ(count, 1);
        ASSERT_OK(st.ops->get(st.state, ids[0], &got, err), err);
        ASSERT_EQ(got->status, OUTBOX_STATUS_PENDING);
        ASSERT_EQ(got->attempts, 0);
        outbox_msg_free(got);
    }
    /* retry all. */
    ASSERT_OK(st.ops->retry(st.state, NULL, 0, 1, &count, err), err);
    ASSERT_EQ(count, 3);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.pending, 4);
    ASSERT_EQ(s.failed, 0);

    /* drop by id (all or nothing), then all. */
    fail_all(&st);
    if (st.ops->drop) {
        const char *two[] = {ids[1], unknown};
        ASSERT_EQ(st.ops->drop(st.state, two, 2, 0, NULL, NULL, &count, err), OUTBOX_ENOTFOUND);
        ASSERT_EQ(status_of(&st, ids[1]), OUTBOX_STATUS_FAILED);
        ASSERT_OK(st.ops->drop(st.state, two, 1, 0, NULL, NULL, &count, err), err);
        ASSERT_EQ(count, 1);
        ASSERT_EQ(status_of(&st, ids[1]), -1);
        ASSERT_OK(st.ops->drop(st.state, NULL, 0, 1, NULL, NULL, &count, err), err);
        ASSERT_EQ(count, 3);
        ASSERT_OK(st.ops->status(st.state, &s, err), err);
        ASSERT_EQ(s.failed, 0);
    } else {
        fprintf(stderr, "   %s: no drop (store ops version %d)\n", d->name, st.ops->version);
    }

    /* purge: only sent rows older than the cut-off. */
    sh_put(&st, "C", sent);
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 1);
    t0 = outbox__now_us();
    ASSERT_OK(sh_complete_one(&st, b.msgs[0], OUTBOX_OUTCOME_SENT, 0, OUTBOX_ON_SENT_MARK, err),
              err);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->purge(st.state, t0 - 1000000, &count, err), err);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(status_of(&st, sent), OUTBOX_STATUS_SENT);
    ASSERT_OK(st.ops->purge(st.state, outbox__now_us() + 1000000, &count, err), err);
    ASSERT_EQ(count, 1);
    ASSERT_EQ(status_of(&st, sent), -1);
    outbox__store_close(&st);
}

/* ------------------------------------------------------------------------
 * Bad rows
 * ---------------------------------------------------------------------- */

/* A row written around the table's checks is quarantined by the claim:
 * Failed with the reason (seq and field), never the claim's error; its
 * aggregate is held as behind any Failed message; other aggregates flow. */
static void bad_rows_quarantined(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], a1[37], a3[37], b1[37], seq_text[64];
    uint64_t quarantined = 0;
    outbox_claim_params p = {100, 0, 1, 0, &quarantined};
    outbox_msg *got = NULL;
    outbox_status s;
    int64_t bad_seq;
    sh_batch b;

    open_fresh(d, &st, url, sizeof url, "badrows");
    sh_put(&st, "A", a1);
    bad_seq = d->insert_bad_row(url, "A");
    sh_put(&st, "A", a3);
    sh_put(&st, "B", b1);

    p.now_us = outbox__now_us();
    ASSERT_OK(st.ops->claim(st.state, &p, &b.msgs, &b.n, err), err);
    ASSERT_EQ(quarantined, 1);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.msgs[0]->id, a1);
    ASSERT_STREQ(b.msgs[1]->id, b1);
    sh_complete_sent(&st, 0, b.msgs, b.n);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->get(st.state, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72", &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    ASSERT_EQ(got->attempts, 1);
    snprintf(seq_text, sizeof seq_text, "stored message seq %lld", (long long)bad_seq);
    ASSERT_CONTAINS(got->last_error, seq_text);
    ASSERT_CONTAINS(got->last_error, "type");
    outbox_msg_free(got);

    /* A is held behind its quarantined row; status counts it. */
    b = sh_claim_due(&st, outbox__now_us(), 1);
    ASSERT_EQ(b.n, 0);
    sh_batch_free(&b);
    ASSERT_OK(st.ops->status(st.state, &s, err), err);
    ASSERT_EQ(s.failed, 1);
    if (st.ops->version >= 5) {
        ASSERT_EQ(s.blocked, 1);
        ASSERT_EQ(s.aggregates_blocked, 1);
    }
    /* When Failed does not block, the rest of A flows. */
    b = sh_claim_due(&st, outbox__now_us(), 0);
    ASSERT_EQ(b.n, 1);
    ASSERT_STREQ(b.msgs[0]->id, a3);
    sh_batch_free(&b);
    outbox__store_close(&st);
}

/* ------------------------------------------------------------------------
 * Claim ahead (version 8)
 * ---------------------------------------------------------------------- */

/* Completes every message of b as sent, pipelined, with in_flight as given. */
static void complete_sent_pipelined(outbox_store *st, const sh_batch *b, int in_flight)
{
    outbox_completion c[16];
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 10000};
    outbox_error err = {0};
    size_t i;
    ASSERT(b->n <= 16);
    for (i = 0; i < b->n; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].msg = b->msgs[i];
        c[i].outcome = OUTBOX_OUTCOME_SENT;
    }
    ASSERT_OK(st->ops->complete_pipelined(st->state, c, b->n, &cp, in_flight, &err), &err);
}

static size_t seqs_of(const sh_batch *b, int64_t *out)
{
    size_t i;
    for (i = 0; i < b->n; i++)
        out[i] = b->msgs[i]->seq;
    return b->n;
}

/* The claim started ahead returns what claim_pipelined would, with the
 * store used in between (the batch before it recorded); a discarded one
 * changes nothing; rows to quarantine are quarantined as by a claim. */
static void claim_ahead(const store_driver *d)
{
    outbox_store st;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], ids[9][37], c1[37], d1[37];
    uint64_t quarantined = 0;
    outbox_claim_params p = {3, 0, 1, 0, &quarantined};
    int64_t ex[16];
    size_t nex, i;
    sh_batch x, y, z;
    outbox_msg *got = NULL;

    open_fresh(d, &st, url, sizeof url, "ahead");
    if (!OUTBOX__HAS(st.ops, 8, claim_ahead)) {
        fprintf(stderr, "   (no claim ahead: nothing to check)\n");
        outbox__store_close(&st);
        return;
    }
    for (i = 0; i < 9; i++)
        sh_put(&st, i % 2 ? "B" : "A", ids[i]);

    /* Without a claim started, the end returns nothing. */
    ASSERT_OK(st.ops->claim_ahead_end(st.state, 1, &p, &y.msgs, &y.n, err), err);
    ASSERT_EQ(y.n, 0);

    p.now_us = outbox__now_us();
    ASSERT_OK(st.ops->claim_pipelined(st.state, &p, NULL, 0, &x.msgs, &x.n, err), err);
    ASSERT_EQ(x.n, 3);
    nex = seqs_of(&x, ex);
    ASSERT_OK(st.ops->claim_ahead(st.state, &p, ex, nex, err), err);
    /* The batch in flight is recorded while the next one is read. */
    complete_sent_pipelined(&st, &x, 1);
    ASSERT_OK(st.ops->claim_ahead_end(st.state, 1, &p, &y.msgs, &y.n, err), err);
    ASSERT_EQ(y.n, 3);
    for (i = 0; i < 3; i++)
        ASSERT_STREQ(y.msgs[i]->id, ids[3 + i]);
    sh_batch_free(&x);

    /* Discarded: nothing changes, the same rows come next. */
    nex = seqs_of(&y, ex);
    ASSERT_OK(st.ops->claim_ahead(st.state, &p, ex, nex, err), err);
    ASSERT_OK(st.ops->claim_ahead_end(st.state, 0, NULL, &z.msgs, &z.n, NULL), err);
    ASSERT_EQ(z.n, 0);
    ASSERT(z.msgs == NULL);
    ASSERT_OK(st.ops->claim_pipelined(st.state, &p, ex, nex, &z.msgs, &z.n, err), err);
    ASSERT_EQ(z.n, 3);
    for (i = 0; i < 3; i++)
        ASSERT_STREQ(z.msgs[i]->id, ids[6 + i]);
    complete_sent_pipelined(&st, &y, 1);
    sh_batch_free(&y);

    /* A row to quarantine in the batch read ahead: quarantined, counted,
     * and the rest claimed as a claim would. */
    sh_put(&st, "C", c1);
    (void)d->insert_bad_row(url, "C");
    sh_put(&st, "D", d1);
    nex = seqs_of(&z, ex);
    p.now_us = outbox__now_us();
    ASSERT_OK(st.ops->claim_ahead(st.state, &p, ex, nex, err), err);
    ASSERT_OK(st.ops->claim_ahead_end(st.state, 1, &p, &y.msgs, &y.n, err), err);
    ASSERT_EQ(quarantined, 1);
    ASSERT_EQ(y.n, 2);
    ASSERT_STREQ(y.msgs[0]->id, c1);
    ASSERT_STREQ(y.msgs[1]->id, d1);
    ASSERT_OK(st.ops->get(st.state, "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f72", &got, err), err);
    ASSERT_EQ(got->status, OUTBOX_STATUS_FAILED);
    outbox_msg_free(got);
    complete_sent_pipelined(&st, &z, 1);
    complete_sent_pipelined(&st, &y, 0);
    sh_batch_free(&z);
    sh_batch_free(&y);
    outbox__store_close(&st);
}

/* A batch recorded behind: recorded as complete_pipelined records it, with
 * claims in between that exclude it; a lease taken over in between makes
 * its end ELEASELOST with nothing recorded, as complete would. */
static void complete_behind(const store_driver *d)
{
    outbox_store st, other;
    outbox_error err_buf = {0}, *err = &err_buf;
    char url[700], ids[4][37];
    outbox_claim_params p = {2, 0, 1, 0, NULL};
    outbox_completion c[2];
    outbox_complete_params cp = {OUTBOX_ON_SENT_DELETE, 0, "relay-b", 30000};
    int64_t ex[2];
    size_t i;
    sh_batch x, y;
    int rc;

    open_fresh(d, &st, url, sizeof url, "behind");
    if (!OUTBOX__HAS(st.ops, 8, complete_behind)) {
        fprintf(stderr, "   (no complete behind: nothing to check)\n");
        outbox__store_close(&st);
        return;
    }
    ASSERT_OK(st.ops->complete_behind_end(st.state, err), err); /* none out */
    for (i = 0; i < 4; i++)
        sh_put(&st, i % 2 ? "B" : "A", ids[i]);
    ASSERT_OK(st.ops->lease_acquire(st.state, "relay-b", 30000, err), err);

    p.now_us = outbox__now_us();
    ASSERT_OK(st.ops->claim_pipelined(st.state, &p, NULL, 0, &x.msgs, &x.n, err), err);
    ASSERT_EQ(x.n, 2);
    for (i = 0; i < 2; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].msg = x.msgs[i];
        c[i].outcome = OUTBOX_OUTCOME_SENT;
        ex[i] = x.msgs[i]->seq;
    }
    cp.now_us = outbox__now_us();
    ASSERT_OK(st.ops->complete_behind(st.state, c, 2, &cp, 0, err), err);
    ASSERT_EQ(st.ops->complete_behind(st.state, c, 2, &cp, 0, err),
              OUTBOX_EINVAL); /* one at a time */
    ASSERT_OK(st.ops->claim_pipelined(st.state, &p, ex, 2, &y.msgs, &y.n, err), err);
    ASSERT_EQ(y.n, 2);
    ASSERT_STREQ(y.msgs[0]->id, ids[2]);
    ASSERT_STREQ(y.msgs[1]->id, ids[3]);
    ASSERT_OK(st.ops->complete_behind_end(st.state, err), err);
    ASSERT_EQ(status_of(&st, ids[0]), -1);
    ASSERT_EQ(status_of(&st, ids[1]), -1);
    sh_batch_free(&x);

    /* The lease is taken over before the batch is recorded. */
    if (d->exclusive_lease) {
        sh_store_open(&other, url);
        ASSERT_OK(st.ops->lease_acquire(st.state, "relay-b", -1000, err), err);
        ASSERT_OK(other.ops->lease_acquire(other.state, "relay-c", 30000, err), err);
        for (i = 0; i < 2; i++) {
            memset(&c[i], 0, sizeof c[i]);
            c[i].msg = y.msgs[i];
            c[i].outcome = OUTBOX_OUTCOME_SENT;
        }
        cp.now_us = outbox__now_us();
        rc = st.ops->complete_behind(st.state, c, 2, &cp, 0, err);
        if (rc == OUTBOX_OK) rc = st.ops->complete_behind_end(st.state, err);
        ASSERT_EQ(rc, OUTBOX_ELEASELOST);
        ASSERT_EQ(status_of(&st, ids[2]), OUTBOX_STATUS_PENDING);
        ASSERT_EQ(status_of(&st, ids[3]), OUTBOX_STATUS_PENDING);
        ASSERT_OK(other.ops->lease_release(other.state, "relay-c", err), err);
        outbox__store_close(&other);
    }
    sh_batch_free(&y);
    outbox__store_close(&st);
}

/* ------------------------------------------------------------------------ */

typedef struct contract_case {
    const char *name;
    void (*run)(const store_driver *d);
} contract_case;

static const contract_case cases[] = {
    {"claim_ordering_rule", claim_ordering_rule},
    {"failed_blocks_option", failed_blocks_option},
    {"out_of_order_commits", out_of_order_commits},
    {"complete_outcomes", complete_outcomes},
    {"complete_runs", complete_runs},
    {"leases", leases},
    {"retry_drop_purge", retry_drop_purge},
    {"bad_rows_quarantined", bad_rows_quarantined},
    {"claim_ahead", claim_ahead},
    {"complete_behind", complete_behind},
};

int main(void)
{
    for (size_t i = 0; i < sizeof stores / sizeof stores[0]; i++) {
        const store_driver *d = &stores[i];
        const char *why = d->unavailable ? d->unavailable() : NULL;
        if (why) {
            fprintf(stderr, "== %s: left out: %s\n", d->name, why);
            continue;
        }
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            fprintf(stderr, "-- %s: %s\n", d->name, cases[k].name);
            cases[k].run(d);
        }
    }
    fprintf(stderr, "all store contract cases passed\n");
    return 0;
}
