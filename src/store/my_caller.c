/*
 * my_caller.c - the public MariaDB/MySQL functions on the caller's
 * connection (outbox.h): schema init, enqueue and inbox record inside the
 * caller's open transaction, inbox purge.  The connection is borrowed: the
 * library never begins, commits or closes it.  Autocommit mode without an
 * open transaction is refused: the message would commit alone, not with
 * the business change.  The design is in docs/MARIADB.md.
 */
#include "internal.h"

#include "my.h"

#ifdef OUTBOX_HAVE_MARIADB

#include <mysqld_error.h>
#include <stdio.h>
#include <string.h>

/* The server status flags of conn's last answer. */
static unsigned int server_status(MYSQL *conn)
{
    unsigned int status = 0;
    if (mariadb_get_infov(conn, MARIADB_CONNECTION_SERVER_STATUS, &status) != 0) return 0;
    return status;
}

/* OUTBOX_OK when a transaction is open on conn, or autocommit is off (the
 * next statement opens one); OUTBOX_ENOTXN naming fn otherwise. */
static int require_txn(MYSQL *conn, const char *fn, outbox_error *err)
{
    unsigned int s = server_status(conn);
    if ((s & SERVER_STATUS_IN_TRANS) || !(s & SERVER_STATUS_AUTOCOMMIT)) return OUTBOX_OK;
    return outbox__error(err, OUTBOX_ENOTXN,
                         "%s needs an open transaction (START TRANSACTION ... COMMIT, or "
                         "autocommit off): in autocommit mode the message would commit on its "
                         "own, not with your business change",
                         fn);
}

/* OUTBOX_OK when no transaction is open on conn (EINVAL naming fn). */
static int require_no_txn(MYSQL *conn, const char *fn, outbox_error *err)
{
    if (!(server_status(conn) & SERVER_STATUS_IN_TRANS)) return OUTBOX_OK;
    return outbox__error(err, OUTBOX_EINVAL,
                         "%s runs in a transaction of its own: call it with no transaction "
                         "open (COMMIT or ROLLBACK first)",
                         fn);
}

static int check_prefix(const char **prefix, outbox_error *err)
{
    if (!*prefix) *prefix = MY_DEFAULT_PREFIX;
    if (!outbox__my_valid_prefix(*prefix)) return outbox__my_prefix_error(*prefix, err);
    return OUTBOX_OK;
}

int outbox_schema_init_mysql(MYSQL *conn, const char *prefix, outbox_error *err)
{
    int from, to, code;
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_schema_init_mysql: conn is NULL");
    code = check_prefix(&prefix, err);
    if (code == OUTBOX_OK) code = outbox__my_check_version(mysql_get_server_info(conn), err);
    if (code == OUTBOX_OK) code = require_no_txn(conn, "outbox_schema_init_mysql", err);
    if (code != OUTBOX_OK) return code;
    return outbox__my_migrate(conn, prefix, 0, &from, &to, err);
}

int outbox_enqueue_mysql_prefix(MYSQL *conn, const char *prefix, const outbox_msg *msg,
                                outbox_error *err)
{
    outbox_buf b;
    int code;

    if (!conn || !msg)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_enqueue_mysql: %s is NULL",
                             conn ? "msg" : "conn");
    code = check_prefix(&prefix, err);
    if (code == OUTBOX_OK) code = require_txn(conn, "outbox_enqueue_mysql", err);
    if (code == OUTBOX_OK) code = outbox__msg_check_size(msg, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&b);
    outbox__my_insert_sql(&b, prefix, msg);
    if (b.oom) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory enqueuing message %s", msg->id);
    }
    if (mysql_real_query(conn, b.data, b.len) != 0) {
        if (mysql_errno(conn) == ER_DUP_ENTRY && strstr(mysql_error(conn), "_id'"))
            code = outbox__error(err, OUTBOX_EEXISTS,
                                 "a message with id %s is already in the outbox: give each "
                                 "message its own id",
                                 msg->id);
        else
            code = outbox__my_fail(conn, "inserting into the outbox", err);
    }
    outbox__buf_free(&b);
    return code;
}

int outbox_enqueue_mysql(MYSQL *conn, const outbox_msg *msg, outbox_error *err)
{
    return outbox_enqueue_mysql_prefix(conn, MY_DEFAULT_PREFIX, msg, err);
}

/* Non-empty, at most 255 bytes, no control characters. */
static int valid_consumer(const char *consumer)
{
    const unsigned char *p = (const unsigned char *)consumer;
    if (!p || !*p || strlen(consumer) > 255) return 0;
    for (; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

int outbox_inbox_record_mysql(MYSQL *conn, const char *prefix, const char *consumer,
                              const char *message_id, outbox_error *err)
{
    char id[37];
    outbox_buf b;
    int code;

    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_record_mysql: conn is NULL");
    code = check_prefix(&prefix, err);
    if (code == OUTBOX_OK) code = require_txn(conn, "outbox_inbox_record_mysql", err);
    if (code != OUTBOX_OK) return code;
    if (!valid_consumer(consumer))
        return outbox__error(err, OUTBOX_EINVAL,
                             "inbox consumer name must be 1 to 255 bytes of text without "
                             "control characters");
    code = outbox__uuid_canonical(message_id, id, "inbox message id", err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&b);
    outbox__buf_puts(&b, "INSERT INTO ");
    outbox__my_table(&b, prefix, "inbox");
    outbox__buf_puts(&b, " (consumer, message_id, received_at) VALUES (");
    outbox__my_append_text(&b, consumer, strlen(consumer));
    outbox__buf_printf(&b, ", '%s', %lld)", id, (long long)outbox__now_us());
    if (b.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording an inbox entry");
    } else if (mysql_real_query(conn, b.data, b.len) != 0) {
        /* A duplicate key rolls back that statement only (InnoDB): the
         * caller's transaction goes on. */
        if (mysql_errno(conn) == ER_DUP_ENTRY)
            code = OUTBOX_DUPLICATE;
        else
            code = outbox__my_fail(conn, "recording the inbox entry", err);
    }
    outbox__buf_free(&b);
    return code;
}

int outbox_inbox_purge_mysql(MYSQL *conn, const char *prefix, int64_t retention_ms,
                             int64_t redelivery_horizon_ms, int64_t *purged, outbox_error *err)
{
    outbox_buf b;
    int code;

    if (purged) *purged = 0;
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_purge_mysql: conn is NULL");
    code = check_prefix(&prefix, err);
    if (code == OUTBOX_OK) code = require_no_txn(conn, "outbox_inbox_purge_mysql", err);
    if (code == OUTBOX_OK)
        code = outbox__inbox_retention_check("outbox_inbox_purge_mysql", retention_ms,
                                             redelivery_horizon_ms, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&b);
    outbox__buf_puts(&b, "DELETE FROM ");
    outbox__my_table(&b, prefix, "inbox");
    outbox__buf_printf(&b, " WHERE received_at < %lld",
                       (long long)(outbox__now_us() - retention_ms * 1000));
    if (b.oom)
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory purging the inbox");
    else
        code = outbox__my_exec_count(conn, b.data, "purging the inbox", purged, err);
    outbox__buf_free(&b);
    return code;
}

#else

/* Without Connector/C the public functions answer "not built". */
#include <stdio.h>

static int not_built(const char *fn, outbox_error *err)
{
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "%s: this build has no MariaDB/MySQL store (not built with MariaDB "
                         "Connector/C)",
                         fn);
}

int outbox_schema_init_mysql(MYSQL *conn, const char *prefix, outbox_error *err)
{
    (void)conn;
    (void)prefix;
    return not_built("outbox_schema_init_mysql", err);
}

int outbox_enqueue_mysql_prefix(MYSQL *conn, const char *prefix, const outbox_msg *msg,
                                outbox_error *err)
{
    (void)conn;
    (void)prefix;
    (void)msg;
    return not_built("outbox_enqueue_mysql", err);
}

int outbox_enqueue_mysql(MYSQL *conn, const outbox_msg *msg, outbox_error *err)
{
    (void)conn;
    (void)msg;
    return not_built("outbox_enqueue_mysql", err);
}

int outbox_inbox_record_mysql(MYSQL *conn, const char *prefix, const char *consumer,
                              const char *message_id, outbox_error *err)
{
    (void)conn;
    (void)prefix;
    (void)consumer;
    (void)message_id;
    return not_built("outbox_inbox_record_mysql", err);
}

int outbox_inbox_purge_mysql(MYSQL *conn, const char *prefix, int64_t retention_ms,
                             int64_t redelivery_horizon_ms, int64_t *purged, outbox_error *err)
{
    (void)conn;
    (void)prefix;
    (void)retention_ms;
    (void)redelivery_horizon_ms;
    if (purged) *purged = 0;
    return not_built("outbox_inbox_purge_mysql", err);
}

#endif /* OUTBOX_HAVE_MARIADB */
