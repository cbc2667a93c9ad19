/*
 * test_inbox_e2e.c - guarantee 6: exactly-once effect with the inbox, end to
 * end through a relay with a callback destination.
 *
 * The consumer has its own SQLite database.  For each delivery it opens a
 * transaction, records the message id with outbox_inbox_record_sqlite,
 * applies the effect (counter + 1, one row in `applied`) unless the id is a
 * duplicate, and commits.  Redelivery is forced three ways:
 *   - for some messages the callback reports a retriable error AFTER its
 *     commit (the effect happened, the relay does not know);
 *   - for others it reports the error after rolling back (nothing happened);
 *   - one message is delivered three times by hand.
 * Each message must be applied exactly once (counter == messages, no id
 * twice in `applied`, inbox rows == messages), in per-aggregate order
 * (guarantee 4 for the callback destination), and the outbox must end empty.
 */
#include "support/chaos.h"

enum { MESSAGES = 400, AGGREGATES = 12 };

typedef struct consumer {
    sqlite3 *db;
    int deliveries, duplicates, fail_after_commit, fail_before_commit;
    int next_n[AGGREGATES]; /* next n expected to be applied, per aggregate */
    int order_errors;
    char failed_once[MESSAGES + 8][37];
    int nfailed;
    char problem[256];
} consumer;

static int failed_before(consumer *c, const char *id)
{
    for (int i = 0; i < c->nfailed; i++)
        if (strcmp(c->failed_once[i], id) == 0) return 1;
    if (c->nfailed < MESSAGES + 8) memcpy(c->failed_once[c->nfailed++], id, 37);
    return 0;
}

static unsigned id_hash(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h;
}

static int fail(outbox_error *err, const char *why)
{
    if (err) {
        err->code = OUTBOX_EPUBLISH;
        snprintf(err->message, sizeof err->message, "consumer: %.400s", why);
    }
    return OUTBOX_EPUBLISH;
}

static int sql(sqlite3 *db, const char *text)
{
    return sqlite3_exec(db, text, NULL, NULL, NULL);
}

/* The destination: one consumer transaction per delivery. */
static int consume(void *user, const outbox_msg *msg, outbox_error *err)
{
    consumer *c = user;
    outbox_error ierr;
    const char *id = outbox_msg_id(msg);
    unsigned h = id_hash(id);
    c->deliveries++;

    if (sql(c->db, "BEGIN IMMEDIATE") != SQLITE_OK) return fail(err, "BEGIN failed");
    int rc = outbox_inbox_record_sqlite(c->db, "billing", id, &ierr);
    if (rc == OUTBOX_OK) {
        /* The effect, in the same transaction as the inbox entry. */
        json_t *doc = json_loads(outbox_msg_payload(msg), 0, NULL);
        int agg = atoi(outbox_msg_aggregate_id(msg) + 1);
        int n = (int)json_integer_value(json_object_get(doc, "n"));
        json_decref(doc);
        sqlite3_stmt *st = NULL;
        if (sql(c->db, "UPDATE effects SET v = v + 1 WHERE k = 'counter'") != SQLITE_OK ||
            sqlite3_prepare_v2(c->db, "INSERT INTO applied (id, agg, n) VALUES (?1, ?2, ?3)", -1,
                               &st, NULL) != SQLITE_OK) {
            sqlite3_finalize(st);
            sql(c->db, "ROLLBACK");
            return fail(err, "effect failed");
        }
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, agg);
        sqlite3_bind_int(st, 3, n);
        int step = sqlite3_step(st);
        sqlite3_finalize(st);
        if (step != SQLITE_DONE) {
            sql(c->db, "ROLLBACK");
            return fail(err, "insert failed");
        }
        /* Some first deliveries fail before commit: nothing happened. */
        if (h % 7 == 1 && !failed_before(c, id)) {
            c->fail_before_commit++;
            sql(c->db, "ROLLBACK");
            return fail(err, "forced failure before commit");
        }
        if (agg >= 0 && agg < AGGREGATES && c->next_n[agg] == n) {
            c->next_n[agg]++;
        } else {
            c->order_errors++;
            if (!c->problem[0])
                snprintf(c->problem, sizeof c->problem, "a%d applied n=%d, expected n=%d", agg, n,
                         agg >= 0 && agg < AGGREGATES ? c->next_n[agg] : -1);
        }
    } else if (rc == OUTBOX_DUPLICATE) {
        c->duplicates++;
    } else {
        sql(c->db, "ROLLBACK");
        return fail(err, ierr.message);
    }
    if (sql(c->db, "COMMIT") != SQLITE_OK) {
        sql(c->db, "ROLLBACK");
        return fail(err, "COMMIT failed");
    }
    /* Some first deliveries fail after commit: applied, but the relay is
     * told to retry. */
    if (rc == OUTBOX_OK && h % 4 == 0 && !failed_before(c, id)) {
        c->fail_after_commit++;
        return fail(err, "forced failure after commit");
    }
    return OUTBOX_OK;
}

static consumer cons;

TEST(each_message_applied_once)
{
    outbox_error err_storage, *err = &err_storage;
    memset(err, 0, sizeof *err);
    char obx[CH_PATH], cdb[CH_PATH];
    ch_path(obx, "service.db");
    ch_path(cdb, "consumer.db");

    /* The producing service's outbox. */
    sqlite3 *pdb = ch_db_open(obx);
    ASSERT_OK(outbox_schema_init_sqlite(pdb, err), err);
    sqlite3_close(pdb);
    ch_producer p;
    memset(&p, 0, sizeof p);
    p.db_path = obx;
    p.aggregates = AGGREGATES;
    p.max_txn = 20;
    p.seed = 7;
    ch_produce(&p, MESSAGES);

    /* The consumer's own database: inbox tables plus its business table. */
    cons.db = ch_db_open(cdb);
    ASSERT_OK(outbox_schema_init_sqlite(cons.db, err), err);
    ch_db_exec(cons.db, "CREATE TABLE effects (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
                        "INSERT INTO effects VALUES ('counter', 0);"
                        "CREATE TABLE applied (id TEXT NOT NULL, agg INTEGER, n INTEGER);");

    outbox_relay_options opts;
    outbox_relay_options_init(&opts);
    opts.publish = consume;
    opts.publish_user = &cons;
    opts.once = 1;
    opts.batch_size = 16;
    opts.backoff_base_ms = 1;
    opts.backoff_max_ms = 5;
    opts.max_attempts = 50;
    char store[700];
    snprintf(store, sizeof store, "sqlite:%s", obx);

    int runs = 0;
    outbox_relay_stats total;
    memset(&total, 0, sizeof total);
    while (ch_outbox_count(obx, "pending") > 0) {
        ASSERT(runs++ < 500);
        outbox_relay *relay = NULL;
        ASSERT_OK(outbox_relay_new(&relay, store, NULL, &opts, err), err);
        int rc = outbox_relay_run(relay, err);
        outbox_relay_stats st;
        outbox_relay_get_stats(relay, &st);
        outbox_relay_free(relay);
        ASSERT_OK(rc, err);
        total.published += st.published;
        total.retried += st.retried;
        total.failed += st.failed;
        if (ch_outbox_count(obx, "pending") > 0) ch_sleep_ms(6);
    }
    fprintf(stderr,
            "%d relay runs: published %llu, retried %llu, failed %llu; consumer: %d deliveries, "
            "%d duplicates, %d failed after commit, %d failed before commit\n",
            runs, (unsigned long long)total.published, (unsigned long long)total.retried,
            (unsigned long long)total.failed, cons.deliveries, cons.duplicates,
            cons.fail_after_commit, cons.fail_before_commit);

    /* Redelivery happened, in both forms. */
    ASSERT(cons.fail_after_commit > 0);
    ASSERT(cons.fail_before_commit > 0);
    ASSERT_EQ(cons.duplicates, cons.fail_after_commit);
    ASSERT_EQ(cons.deliveries, MESSAGES + cons.fail_after_commit + cons.fail_before_commit);
    ASSERT_EQ(total.published, MESSAGES);
    ASSERT_EQ(total.retried, cons.fail_after_commit + cons.fail_before_commit);
    ASSERT_EQ(total.failed, 0);
    ASSERT_EQ(ch_outbox_count(obx, "failed"), 0);

    /* And yet each message was applied once, in order per aggregate. */
    if (cons.order_errors) fprintf(stderr, "order: %s\n", cons.problem);
    ASSERT_EQ(cons.order_errors, 0);
    for (int a = 0; a < AGGREGATES; a++)
        ASSERT_EQ(cons.next_n[a], p.aggs[a].count);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT v FROM effects WHERE k = 'counter'"), MESSAGES);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(*) FROM applied"), MESSAGES);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(DISTINCT id) FROM applied"), MESSAGES);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(*) FROM outbox_inbox"), MESSAGES);

    /* By hand: the same message three times. */
    outbox_msg *m = NULL;
    ASSERT_OK(outbox_msg_new(&m, "Tick", "Agg", "a0", "{\"agg\":\"a0\",\"n\":999}", err), err);
    ASSERT_OK(outbox_msg_set_id(m, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", err), err);
    cons.next_n[0] = 999;
    int deliveries = cons.deliveries, duplicates = cons.duplicates;
    for (int i = 0; i < 3; i++)
        consume(&cons, m, err);
    ASSERT_EQ(cons.deliveries, deliveries + 3);
    ASSERT_EQ(cons.duplicates, duplicates + 2);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT v FROM effects WHERE k = 'counter'"), MESSAGES + 1);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(*) FROM outbox_inbox"), MESSAGES + 1);
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(*) FROM applied WHERE id = "
                                   "'0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b'"),
              1);

    /* The inbox is per consumer: another consumer records the same id once. */
    ch_db_exec(cons.db, "BEGIN");
    ASSERT_EQ(outbox_inbox_record_sqlite(cons.db, "audit", outbox_msg_id(m), err), OUTBOX_OK);
    ASSERT_EQ(outbox_inbox_record_sqlite(cons.db, "audit", outbox_msg_id(m), err),
              OUTBOX_DUPLICATE);
    ASSERT_EQ(outbox_inbox_record_sqlite(cons.db, "billing", outbox_msg_id(m), err),
              OUTBOX_DUPLICATE);
    ch_db_exec(cons.db, "COMMIT");
    ASSERT_EQ(ch_db_count(cons.db, "SELECT count(*) FROM outbox_inbox"), MESSAGES + 2);

    /* A recorded id that rolls back is not recorded. */
    ch_db_exec(cons.db, "BEGIN");
    ASSERT_EQ(
        outbox_inbox_record_sqlite(cons.db, "audit", "0190a1b2-c3d4-7e5f-8a6b-000000000001", err),
        OUTBOX_OK);
    ch_db_exec(cons.db, "ROLLBACK");
    ch_db_exec(cons.db, "BEGIN");
    ASSERT_EQ(
        outbox_inbox_record_sqlite(cons.db, "audit", "0190a1b2-c3d4-7e5f-8a6b-000000000001", err),
        OUTBOX_OK);
    ch_db_exec(cons.db, "COMMIT");

    outbox_msg_free(m);
    sqlite3_close(cons.db);
    ch_producer_free(&p);
}

int main(void)
{
    RUN(each_message_applied_once);
    return 0;
}
