/*
 * test_store_mysql.c - the MariaDB/MySQL caller-side API on a real server
 * (tests/support/mariadb.h): enqueue inside the caller's transaction
 * (commit publishes, rollback leaves nothing), autocommit mode refused,
 * a duplicate id leaves the transaction usable, inbox duplicate detection,
 * idempotent schema init, the stored procedure for other languages, and
 * the server version check (unit-tested without a server).
 */
#include "internal.h"
#include "test.h"

#ifndef OUTBOX_HAVE_MARIADB
int main(void)
{
    fprintf(stderr, "skipped: this build has no MariaDB/MySQL store (MariaDB Connector/C not "
                    "found)\n");
    return 77;
}
#else

#include "store/my.h"
#include "support/mariadb.h"
#include "support/store.h"

static myh_server server;

/* Runs without a server: versions, MariaDB's and MySQL's spellings. */
TEST(version_check)
{
    outbox_error err = {0};
    long v;
    int mariadb;
    ASSERT(outbox__my_parse_version("10.11.6-MariaDB-0+deb12u1", &v, &mariadb));
    ASSERT_EQ(v, 101106);
    ASSERT_EQ(mariadb, 1);
    ASSERT(outbox__my_parse_version("5.5.5-10.6.12-MariaDB-log", &v, &mariadb));
    ASSERT_EQ(v, 100612);
    ASSERT(outbox__my_parse_version("8.0.36", &v, &mariadb));
    ASSERT_EQ(v, 80036);
    ASSERT_EQ(mariadb, 0);
    ASSERT(!outbox__my_parse_version("garbage", &v, &mariadb));
    ASSERT_OK(outbox__my_check_version("10.6.0-MariaDB", &err), &err);
    ASSERT_OK(outbox__my_check_version("8.0.11", &err), &err);
    ASSERT_EQ(outbox__my_check_version("10.5.21-MariaDB", &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "MariaDB 10.5.21");
    ASSERT_CONTAINS(err.message, "10.6 or later");
    ASSERT_EQ(outbox__my_check_version("5.7.44", &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "MySQL 5.7.44");
    ASSERT_CONTAINS(err.message, "8.0 or later");
    ASSERT_EQ(outbox__my_check_version(NULL, &err), OUTBOX_ECONFIG);
}

static int64_t count_rows(MYSQL *c, const char *table)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM `%s`", table);
    return myh_count(c, sql);
}

TEST(schema_init_idempotent)
{
    MYSQL *c = myh_connect(&server);
    outbox_error err = {0};
    ASSERT_OK(outbox_schema_init_mysql(c, NULL, &err), &err);
    ASSERT_OK(outbox_schema_init_mysql(c, NULL, &err), &err);
    ASSERT_EQ(myh_count(c, "SELECT v FROM outbox_meta WHERE k = 'schema_version'"),
              outbox__my_schema_version());
    myh_exec(c, "START TRANSACTION");
    ASSERT_EQ(outbox_schema_init_mysql(c, NULL, &err), OUTBOX_EINVAL);
    myh_exec(c, "ROLLBACK");
    ASSERT_EQ(outbox_schema_init_mysql(c, "bad-prefix", &err), OUTBOX_ECONFIG);
    mysql_close(c);
}

TEST(enqueue_in_caller_transaction)
{
    MYSQL *c = myh_connect(&server);
    outbox_error err = {0};
    outbox_msg *m = NULL, *m2 = NULL;
    myh_exec(c, "DELETE FROM outbox");
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "o-1", "{\"total\":12}", &err), &err);
    ASSERT_OK(outbox_msg_new(&m2, "OrderPlaced", "Order", "o-2", "{\"total\":13}", &err), &err);

    /* Autocommit mode: refused, nothing written. */
    ASSERT_EQ(outbox_enqueue_mysql(c, m, &err), OUTBOX_ENOTXN);
    ASSERT_CONTAINS(err.message, "autocommit");
    ASSERT_EQ(count_rows(c, "outbox"), 0);

    /* Rolled back: nothing. */
    myh_exec(c, "START TRANSACTION");
    ASSERT_OK(outbox_enqueue_mysql(c, m, &err), &err);
    myh_exec(c, "ROLLBACK");
    ASSERT_EQ(count_rows(c, "outbox"), 0);

    /* Committed: there, once; a duplicate id leaves the transaction usable. */
    myh_exec(c, "START TRANSACTION");
    ASSERT_OK(outbox_enqueue_mysql(c, m, &err), &err);
    ASSERT_EQ(outbox_enqueue_mysql(c, m, &err), OUTBOX_EEXISTS);
    ASSERT_OK(outbox_enqueue_mysql(c, m2, &err), &err);
    myh_exec(c, "COMMIT");
    ASSERT_EQ(count_rows(c, "outbox"), 2);

    /* autocommit off counts as a transaction (the insert opens one). */
    myh_exec(c, "SET autocommit = 0");
    outbox_msg_free(m);
    m = NULL;
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "o-1", "{\"total\":14}", &err), &err);
    ASSERT_OK(outbox_enqueue_mysql(c, m, &err), &err);
    myh_exec(c, "ROLLBACK");
    myh_exec(c, "SET autocommit = 1");
    ASSERT_EQ(count_rows(c, "outbox"), 2);
    outbox_msg_free(m);
    outbox_msg_free(m2);
    mysql_close(c);
}

/* The procedure any language can call; the table's checks refuse what the
 * library refuses. */
TEST(procedure_and_checks)
{
    MYSQL *c = myh_connect(&server);
    myh_exec(c, "DELETE FROM outbox");
    myh_exec(c, "START TRANSACTION");
    myh_exec(c, "CALL outbox_enqueue('OrderPlaced', 'o-9', '{\"x\":1}', NULL, 'Order', NULL,"
                " @id)");
    myh_exec(c, "COMMIT");
    ASSERT_EQ(myh_count(c, "SELECT COUNT(*) FROM outbox WHERE id = @id"), 1);
    /* Autocommit: the procedure refuses too. */
    ASSERT(mysql_query(c, "CALL outbox_enqueue('T', 'a', '{}', NULL, NULL, NULL, @id)") != 0);
    ASSERT_CONTAINS(mysql_error(c), "no transaction");
    /* A blank type and a payload that is not JSON are refused by the table. */
    ASSERT(mysql_query(c, "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload,"
                          " headers, available_at) VALUES ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f73',"
                          " 0, '  ', 'a', '{}', '{}', 0)") != 0);
    ASSERT(mysql_query(c, "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload,"
                          " headers, available_at) VALUES ('0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f74',"
                          " 0, 'T', 'a', 'not json', '{}', 0)") != 0);
    ASSERT_EQ(count_rows(c, "outbox"), 1);
    mysql_close(c);
}

TEST(inbox_duplicates)
{
    MYSQL *c = myh_connect(&server);
    outbox_error err = {0};
    const char *id = "0190a5b8-7e3a-7c4d-9f1e-2b3c4d5e6f75";
    int64_t purged = -1;
    ASSERT_EQ(outbox_inbox_record_mysql(c, NULL, "billing", id, &err), OUTBOX_ENOTXN);
    myh_exec(c, "START TRANSACTION");
    ASSERT_OK(outbox_inbox_record_mysql(c, NULL, "billing", id, &err), &err);
    ASSERT_EQ(outbox_inbox_record_mysql(c, NULL, "billing", id, &err), OUTBOX_DUPLICATE);
    ASSERT_OK(outbox_inbox_record_mysql(c, NULL, "shipping", id, &err), &err);
    ASSERT_EQ(outbox_inbox_record_mysql(c, NULL, "billing", "not-a-uuid", &err), OUTBOX_EBADID);
    ASSERT_EQ(outbox_inbox_record_mysql(c, NULL, "", id, &err), OUTBOX_EINVAL);
    myh_exec(c, "COMMIT");
    myh_exec(c, "START TRANSACTION");
    ASSERT_EQ(outbox_inbox_record_mysql(c, NULL, "billing", id, &err), OUTBOX_DUPLICATE);
    myh_exec(c, "COMMIT");
    ASSERT_OK(outbox_inbox_purge_mysql(c, NULL, 0, 1, &purged, &err), &err);
    ASSERT_EQ(purged, 2);
    mysql_close(c);
}

/* The driver through the store API: enqueue, status, a password never shown. */
TEST(driver_status)
{
    outbox_store st;
    outbox_status s;
    outbox_error err = {0};
    char id[37];
    MYSQL *c = myh_connect(&server);
    myh_exec(c, "DELETE FROM outbox");
    mysql_close(c);
    sh_store_open(&st, server.url);
    sh_put(&st, "A", id);
    ASSERT_OK(st.ops->status(st.state, &s, &err), &err);
    ASSERT_EQ(s.pending, 1);
    outbox__store_close(&st);
    {
        char bad[600];
        snprintf(bad, sizeof bad, "%s?table_prefix=no-such", server.url);
        ASSERT_EQ(outbox__store_open(&st, bad, &err), OUTBOX_ECONFIG);
        ASSERT(strstr(err.message, "outbox-test-pw") == NULL);
    }
}

int main(void)
{
    RUN(version_check);
    myh_start(&server);
    RUN(schema_init_idempotent);
    RUN(enqueue_in_caller_transaction);
    RUN(procedure_and_checks);
    RUN(inbox_duplicates);
    RUN(driver_status);
    return 0;
}

#endif /* OUTBOX_HAVE_MARIADB */
