/*
 * my_conn.c - the MariaDB/MySQL driver's connection: Connector/C errors
 * mapped to outbox codes, the store URL and its settings (my_props), the
 * server version check, connecting and reconnecting, open and close, and
 * the ops tables the relay and the CLI use (`outbox__store_mysql`, and
 * `outbox__store_mariadb` for the other scheme).  The design is in
 * docs/MARIADB.md.
 *
 * A store URL is mysql://USER:PASSWORD@HOST:PORT/DATABASE?KEY=VALUE (or
 * mariadb://...): the database the URL names holds the outbox's tables;
 * every query parameter is one of my_props.
 */
#include "internal.h"

#include "my.h"

#include <stddef.h>
#include <stdint.h>

#define MY_TEXT_(x) #x
#define MY_TEXT(x) MY_TEXT_(x)

/* The store's settings, as outbox__props_parse reads them. */
typedef struct my_config {
    char *table_prefix;
    int64_t partitions;
    char *socket;
    int tls;
    char *tls_ca;
    char *tls_cert;
    char *tls_key;
    int64_t connect_timeout_ms;
    int64_t query_timeout_ms;
} my_config;

static const outbox_prop my_props[] = {
    {"table_prefix", OUTBOX_PROP_STRING, offsetof(my_config, table_prefix), MY_DEFAULT_PREFIX, NULL,
     "NAME",
     "The outbox's tables in the URL's database: NAME (the messages), NAME_inbox, NAME_meta, "
     "NAME_relays, NAME_lease, NAME_aggregate, and the procedure NAME_enqueue: 1 to 40 letters, "
     "digits and underscores, starting with a letter or underscore."},
    {"partitions", OUTBOX_PROP_INT, offsetof(my_config, partitions), MY_TEXT(MY_DEFAULT_PARTITIONS),
     "1.." MY_TEXT(MY_MAX_PARTITIONS), NULL,
     "How many hash partitions of the aggregate ids the relays share (each leases its part).  "
     "Fixed when init creates the tables: on existing ones it is not applied, and init says "
     "so."},
    {"socket", OUTBOX_PROP_STRING, offsetof(my_config, socket), NULL, NULL, "PATH",
     "Connect through this unix socket instead of TCP (the host is then ignored)."},
    {"tls", OUTBOX_PROP_BOOL, offsetof(my_config, tls), "false", NULL, NULL,
     "Require TLS and verify the server's certificate (against tls_ca when given)."},
    {"tls_ca", OUTBOX_PROP_PATH, offsetof(my_config, tls_ca), NULL, NULL, NULL,
     "PEM file of the certificate authorities to verify the server with (implies tls)."},
    {"tls_cert", OUTBOX_PROP_PATH, offsetof(my_config, tls_cert), NULL, NULL, NULL,
     "PEM client certificate, for servers that require one (with tls_key)."},
    {"tls_key", OUTBOX_PROP_SECRET_FILE, offsetof(my_config, tls_key), NULL, NULL, NULL,
     "PEM private key of tls_cert."},
    {"connect_timeout", OUTBOX_PROP_DURATION, offsetof(my_config, connect_timeout_ms), "10s",
     "1s..10m", NULL, "How long a connection attempt may take."},
    /* Connector/C waits for the server without a limit unless told: a
     * server (or a proxy) that keeps TCP up but never answers would hold
     * the relay for ever. */
    {"query_timeout", OUTBOX_PROP_DURATION, offsetof(my_config, query_timeout_ms), "30s", "1s..1d",
     NULL,
     "How long the relay waits for MariaDB/MySQL to answer (whole seconds: Connector/C's read "
     "and write timeouts, which bound each wait for the server's next bytes).  When it passes, the "
     "connection is closed and opened again (a batch not yet recorded is published again); "
     "raise it if statements legitimately take longer."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_MARIADB

#include <errmsg.h>
#include <mysqld_error.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* The errors after which the session is gone. */
static int lost_errno(unsigned int e)
{
    return e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST || e == CR_CONN_HOST_ERROR ||
           e == CR_CONNECTION_ERROR || e == 1927 /* ER_CONNECTION_KILLED */ ||
           e == 4031 /* idle client timed out */ || e == ER_SERVER_SHUTDOWN ||
           e == 2055 /* CR_SERVER_LOST_EXTENDED */ || e == 2026 /* CR_SSL_CONNECTION_ERROR */;
}

int outbox__my_fail(MYSQL *conn, const char *what, outbox_error *err)
{
    unsigned int e = conn ? mysql_errno(conn) : CR_SERVER_GONE_ERROR;
    const char *msg = conn ? mysql_error(conn) : "no connection";
    int code = OUTBOX_ESTORE;

    if (lost_errno(e))
        return outbox__error(err, OUTBOX_EIO, "%s: the MariaDB/MySQL connection was lost: %s (%u)",
                             what, msg, e);
    switch (e) {
    case ER_NO_SUCH_TABLE:
    case ER_SP_DOES_NOT_EXIST:
    case ER_BAD_DB_ERROR:
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "%s: %s: the outbox tables are missing; run `outbox init --store "
                             "mysql://...` or call outbox_schema_init_mysql",
                             what, msg);
    case ER_DUP_ENTRY:
        code = OUTBOX_EEXISTS;
        break;
    case ER_LOCK_DEADLOCK:
    case ER_LOCK_WAIT_TIMEOUT:
    case 3572 /* ER_LOCK_NOWAIT */:
        code = OUTBOX_EBUSY;
        break;
    case ER_TOO_MANY_USER_CONNECTIONS:
    case ER_CON_COUNT_ERROR:
        code = OUTBOX_EIO;
        break;
    default:
        break;
    }
    return outbox__error(err, code, "%s: %s (error %u)", what, msg, e);
}

/* Discards every result of the last statement(s). */
static void drain_results(MYSQL *conn)
{
    do {
        MYSQL_RES *r = mysql_store_result(conn);
        if (r) mysql_free_result(r);
    } while (mysql_next_result(conn) == 0);
}

int outbox__my_exec_count(MYSQL *conn, const char *sql, const char *what, int64_t *affected,
                          outbox_error *err)
{
    int status;
    if (affected) *affected = 0;
    if (mysql_real_query(conn, sql, strlen(sql)) != 0) return outbox__my_fail(conn, what, err);
    do {
        MYSQL_RES *r = mysql_store_result(conn);
        if (r)
            mysql_free_result(r);
        else if (mysql_field_count(conn) != 0)
            return outbox__my_fail(conn, what, err);
        else if (affected)
            *affected += (int64_t)mysql_affected_rows(conn);
        status = mysql_next_result(conn);
        if (status > 0) return outbox__my_fail(conn, what, err);
    } while (status == 0);
    return OUTBOX_OK;
}

int outbox__my_exec(MYSQL *conn, const char *sql, const char *what, outbox_error *err)
{
    return outbox__my_exec_count(conn, sql, what, NULL, err);
}

MYSQL_RES *outbox__my_query(MYSQL *conn, const char *sql, const char *what, int *code,
                            outbox_error *err)
{
    MYSQL_RES *res;
    *code = OUTBOX_OK;
    if (mysql_real_query(conn, sql, strlen(sql)) != 0) {
        *code = outbox__my_fail(conn, what, err);
        return NULL;
    }
    res = mysql_store_result(conn);
    if (!res) {
        *code = mysql_errno(conn) ? outbox__my_fail(conn, what, err)
                                  : outbox__error(err, OUTBOX_ESTORE, "%s: no result", what);
        drain_results(conn);
    }
    return res;
}

int outbox__my_query_i64(MYSQL *conn, const char *sql, const char *what, int64_t *out,
                         outbox_error *err)
{
    int code;
    MYSQL_RES *res = outbox__my_query(conn, sql, what, &code, err);
    MYSQL_ROW row;
    *out = 0;
    if (!res) return code;
    row = mysql_fetch_row(res);
    if (row && row[0]) *out = outbox__my_i64(row[0]);
    mysql_free_result(res);
    return OUTBOX_OK;
}

void outbox__my_rollback(MYSQL *conn)
{
    if (conn && (conn->server_status & SERVER_STATUS_IN_TRANS)) {
        if (mysql_real_query(conn, "ROLLBACK", 8) == 0) drain_results(conn);
    }
}

int64_t outbox__my_i64(const char *s)
{
    return s && *s ? strtoll(s, NULL, 10) : 0;
}

void outbox__my_append_text(outbox_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char chunk[512];
    size_t i, o = 0;
    if (n == 0) {
        outbox__buf_puts(b, "''");
        return;
    }
    outbox__buf_puts(b, "_utf8mb4 X'");
    for (i = 0; i < n; i++) {
        chunk[o++] = hex[(unsigned char)s[i] >> 4];
        chunk[o++] = hex[(unsigned char)s[i] & 15];
        if (o == sizeof chunk) {
            outbox__buf_append(b, chunk, o);
            o = 0;
        }
    }
    outbox__buf_append(b, chunk, o);
    outbox__buf_puts(b, "'");
}

void outbox__my_table(outbox_buf *b, const char *prefix, const char *suffix)
{
    if (suffix)
        outbox__buf_printf(b, "`%s_%s`", prefix, suffix);
    else
        outbox__buf_printf(b, "`%s`", prefix);
}

/* ------------------------------------------------------------------------
 * The driver: URL, connection
 * ---------------------------------------------------------------------- */

static int read_settings(my_store *st, const char *url, outbox_error *err)
{
    outbox_url u;
    my_config c;
    char what[600];
    int code;

    memset(&c, 0, sizeof c);
    code = outbox__url_parse(&u, url, NULL, err);
    if (code != OUTBOX_OK) return code;
    snprintf(what, sizeof what, "store URL '%s'", st->shown);
    code = outbox__props_parse(my_props, what, &u, &c, err);
    if (code == OUTBOX_OK && !outbox__my_valid_prefix(c.table_prefix))
        code = outbox__my_prefix_error(c.table_prefix, err);
    if (code == OUTBOX_OK && (!u.path || !*u.path || strchr(u.path, '/')))
        code = outbox__error(err, OUTBOX_EBADURL,
                             "store URL '%s' names no database: write "
                             "mysql://USER:PASSWORD@HOST:PORT/DATABASE",
                             st->shown);
    if (code == OUTBOX_OK) {
        const char *hosts = u.hosts && *u.hosts ? u.hosts : "localhost";
        const char *colon = strrchr(hosts, ':');
        if (strchr(hosts, ',')) {
            code = outbox__error(err, OUTBOX_EBADURL,
                                 "store URL '%s' names several hosts: give one", st->shown);
            goto out;
        }
        if (colon && !strchr(colon, ']')) {
            char *end;
            long port = strtol(colon + 1, &end, 10);
            if (*end || port < 1 || port > 65535) {
                code =
                    outbox__error(err, OUTBOX_EBADURL, "store URL '%s' has a bad port", st->shown);
                goto out;
            }
            st->port = (unsigned int)port;
            st->host = outbox__strndup(hosts, (size_t)(colon - hosts));
        } else {
            st->host = outbox__strdup(hosts);
        }
        snprintf(st->prefix, sizeof st->prefix, "%s", c.table_prefix);
        st->url_partitions = outbox__url_param(&u, "partitions") ? (int)c.partitions : 0;
        st->database = outbox__strdup(u.path);
        st->user = u.user ? outbox__strdup(u.user) : NULL;
        st->password = u.password ? outbox__strdup(u.password) : NULL;
        st->socket = c.socket ? outbox__strdup(c.socket) : NULL;
        st->tls = c.tls || c.tls_ca != NULL;
        st->tls_ca = c.tls_ca ? outbox__strdup(c.tls_ca) : NULL;
        st->tls_cert = c.tls_cert ? outbox__strdup(c.tls_cert) : NULL;
        st->tls_key = c.tls_key ? outbox__strdup(c.tls_key) : NULL;
        st->connect_timeout_ms = c.connect_timeout_ms;
        st->query_timeout_ms = c.query_timeout_ms;
        if (!st->host || !st->database || (u.user && !st->user) || (u.password && !st->password) ||
            (c.socket && !st->socket))
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
out:
    outbox__props_free(my_props, &c);
    outbox__url_free(&u);
    return code;
}

static void forget_connection_state(my_store *st)
{
    st->in_txn = 0;
    st->schema_ok = 0;
    st->member_id = 0;
    if (st->held) memset(st->held, 0, MY_MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
}

/* Makes sure st->conn is up: connects (or reconnects after a loss, logging
 * it), checks the server version and sets up the session. */
int outbox__my_need_conn(my_store *st, outbox_error *err)
{
    unsigned int timeout;
    int code;

    if (st->conn && !lost_errno(mysql_errno(st->conn))) return OUTBOX_OK;
    if (st->conn) {
        outbox__log(OUTBOX_LOG_WARN, MY_COMPONENT,
                    "connection to %s lost (%s); reconnecting; an unrecorded batch will be "
                    "published again",
                    st->shown, mysql_error(st->conn));
        mysql_close(st->conn);
        st->conn = NULL;
        forget_connection_state(st);
    }
    st->conn = mysql_init(NULL);
    if (!st->conn)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to MariaDB/MySQL");
    timeout = (unsigned int)((st->connect_timeout_ms + 999) / 1000);
    mysql_options(st->conn, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    /* Seconds; a read or write that waits longer fails with the
     * connection closed (CR_SERVER_LOST), as a reset one would. */
    timeout = (unsigned int)((st->query_timeout_ms + 999) / 1000);
    mysql_options(st->conn, MYSQL_OPT_READ_TIMEOUT, &timeout);
    mysql_options(st->conn, MYSQL_OPT_WRITE_TIMEOUT, &timeout);
    mysql_options(st->conn, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (st->tls) {
        my_bool verify = 1;
        mysql_ssl_set(st->conn, st->tls_key, st->tls_cert, st->tls_ca, NULL, NULL);
        mysql_options(st->conn, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
    }
    if (!mysql_real_connect(st->conn, st->socket ? NULL : st->host, st->user, st->password,
                            st->database, st->port, st->socket, CLIENT_MULTI_STATEMENTS)) {
        code = outbox__error(err, OUTBOX_EIO, "cannot connect to MariaDB/MySQL at %s: %s (%u)",
                             st->shown, mysql_error(st->conn), mysql_errno(st->conn));
        if (mysql_errno(st->conn) == ER_BAD_DB_ERROR || mysql_errno(st->conn) == 1045)
            code =
                outbox__error(err, OUTBOX_ECONFIG, "cannot connect to MariaDB/MySQL at %s: %s (%u)",
                              st->shown, mysql_error(st->conn), mysql_errno(st->conn));
        goto fail;
    }
    forget_connection_state(st);
    code = outbox__my_check_version(mysql_get_server_info(st->conn), err);
    if (code != OUTBOX_OK) goto fail;
    /* Read committed: the claim's locking read sees the latest commits and
     * takes no gap locks; times are compared as unix microseconds. */
    code = outbox__my_exec(st->conn,
                           "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;"
                           " SET SESSION innodb_lock_wait_timeout = 10, SESSION autocommit = 1",
                           "setting up the store connection", err);
    if (code != OUTBOX_OK) goto fail;
    if (st->had_conn) outbox__log(OUTBOX_LOG_INFO, MY_COMPONENT, "reconnected to %s", st->shown);
    st->had_conn = 1;
    if (st->owner[0]) {
        code = outbox__my_check_schema(st, err);
        if (code == OUTBOX_OK) code = outbox__my_register_member(st, err);
        if (code != OUTBOX_OK) goto fail;
    }
    return OUTBOX_OK;

fail:
    mysql_close(st->conn);
    st->conn = NULL;
    forget_connection_state(st);
    return code;
}

static void my_close(void *state)
{
    my_store *st = state;
    if (!st) return;
    if (st->conn) mysql_close(st->conn);
    outbox__free(st->host);
    outbox__free(st->user);
    if (st->password) {
        memset(st->password, 0, strlen(st->password));
        outbox__free(st->password);
    }
    outbox__free(st->database);
    outbox__free(st->socket);
    outbox__free(st->tls_ca);
    outbox__free(st->tls_cert);
    outbox__free(st->tls_key);
    outbox__free(st->held);
    outbox__buf_free(&st->sql);
    outbox__free(st);
}

/* mysql://... or mariadb://... */
static int my_open(void **state, const char *url, outbox_error *err)
{
    my_store *st;
    int code;

    *state = NULL;
    if (strncasecmp(url, "mysql://", 8) != 0 && strncasecmp(url, "mariadb://", 10) != 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "store URL is not a mysql:// or mariadb:// URL: write "
                             "mysql://USER:PASSWORD@HOST:PORT/DATABASE");
    st = outbox__calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    outbox__buf_init(&st->sql);
    st->held = outbox__calloc(MY_MAX_PARTITIONS, 1);
    if (!st->held) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
        goto fail;
    }
    outbox__url_redact(url, st->shown, sizeof st->shown);
    code = read_settings(st, url, err);
    if (code != OUTBOX_OK) goto fail;
    snprintf(st->wake_key, sizeof st->wake_key, "mysql://%s:%u/%s/%s%s%s",
             st->socket ? "" : st->host, st->port ? st->port : 3306, st->database, st->prefix,
             st->socket ? "@" : "", st->socket ? st->socket : "");
    code = outbox__my_need_conn(st, err);
    if (code != OUTBOX_OK) goto fail;
    *state = st;
    return OUTBOX_OK;

fail:
    my_close(st);
    return code;
}

static int my_init(void *state, int *from_version, int *to_version, outbox_error *err)
{
    my_store *st = state;
    int code = outbox__my_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    code =
        outbox__my_migrate(st->conn, st->prefix, st->url_partitions, from_version, to_version, err);
    st->partitions = 0;
    st->schema_ok = 0;
    return code;
}

static int my_check_schema(void *state, outbox_error *err)
{
    return outbox__my_check_schema(state, err);
}

static int my_enqueue(void *state, const outbox_msg *msg, outbox_error *err)
{
    my_store *st = state;
    int code;

    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "enqueue: msg is NULL");
    code = outbox__my_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__my_end_claim(st);
    code = outbox__my_exec(st->conn, "START TRANSACTION", "starting the enqueue transaction", err);
    if (code != OUTBOX_OK) return code;
    code = outbox_enqueue_mysql_prefix(st->conn, st->prefix, msg, err);
    if (code == OUTBOX_OK)
        code = outbox__my_exec(st->conn, "COMMIT", "committing the enqueue", err);
    if (code != OUTBOX_OK) {
        outbox__my_rollback(st->conn);
        return code;
    }
    outbox__wake_notify(st->wake_key);
    return OUTBOX_OK;
}

#define MY_ENTRY(f) f

#else

#define MY_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_MARIADB */

/* The MariaDB/MySQL store driver, as mysql:// and as mariadb://: one
 * driver, two descriptions for help. */
/* clang-format off */
#define MY_STORE_OPS(scheme_, usage_, doc_)                                                        \
    {                                                                                              \
        .version = 7,                                                                              \
        .scheme = scheme_,                                                                         \
        .open = MY_ENTRY(my_open),                                                                 \
        .close = MY_ENTRY(my_close),                                                               \
        .init = MY_ENTRY(my_init),                                                                 \
        .check_schema = MY_ENTRY(my_check_schema),                                                 \
        .enqueue = MY_ENTRY(my_enqueue),                                                           \
        .lease_acquire = MY_ENTRY(outbox__my_lease_acquire),                                       \
        .lease_renew = MY_ENTRY(outbox__my_lease_renew),                                           \
        .lease_release = MY_ENTRY(outbox__my_lease_release),                                       \
        .claim = MY_ENTRY(outbox__my_claim),                                                       \
        .complete = MY_ENTRY(outbox__my_complete),                                                 \
        .changed = MY_ENTRY(outbox__my_changed),                                                   \
        .next_due = MY_ENTRY(outbox__my_next_due),                                                 \
        .wake_path = MY_ENTRY(outbox__my_wake_path),                                               \
        .status = MY_ENTRY(outbox__my_status),                                                     \
        .list = MY_ENTRY(outbox__my_list),                                                         \
        .get = MY_ENTRY(outbox__my_get),                                                           \
        .retry = MY_ENTRY(outbox__my_retry),                                                       \
        .purge = MY_ENTRY(outbox__my_purge),                                                       \
        .inbox_purge = MY_ENTRY(outbox__my_inbox_purge),                                           \
        .drop = MY_ENTRY(outbox__my_drop),                                                         \
        .lease_note = MY_ENTRY(outbox__my_lease_note),                                             \
        .partitions_held = MY_ENTRY(outbox__my_partitions_held),                                   \
        .usage = usage_,                                                                           \
        .doc = doc_,                                                                               \
        .props = my_props,                                                                         \
    }
/* clang-format on */

const outbox_store_ops outbox__store_mysql = MY_STORE_OPS(
    "mysql", "mysql://USER:PASSWORD@HOST:PORT/DATABASE",
    "MariaDB 10.6+ or MySQL 8.0+ (MariaDB Connector/C): the outbox's tables live in the "
    "database the URL names.  Relays share it by partitions; see docs/MARIADB.md.");

const outbox_store_ops outbox__store_mariadb = MY_STORE_OPS(
    "mariadb", "mariadb://USER:PASSWORD@HOST:PORT/DATABASE", "The same store as mysql://.");
