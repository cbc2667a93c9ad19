/*
 * my_schema.c - the MariaDB/MySQL store's schema: its tables, trigger and
 * stored procedure as append-only migrations, creating and upgrading them,
 * the table prefixes we accept, the server versions we accept, and the
 * version checks.  The design is in docs/MARIADB.md.
 *
 * The version parser and the prefix check are in every build (the unit
 * tests reach them without a server); the rest needs Connector/C.
 */
#include "internal.h"

#include "my.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int outbox__my_parse_version(const char *text, long *version, int *mariadb)
{
    const char *p = text;
    long major, minor, patch;
    char *end;

    *version = 0;
    *mariadb = 0;
    if (!p || !isdigit((unsigned char)*p)) return 0;
    /* Replication and proxies report MariaDB as "5.5.5-10.x.y-MariaDB". */
    if (strncmp(p, "5.5.5-", 6) == 0 && strstr(p, "MariaDB")) p += 6;
    major = strtol(p, &end, 10);
    if (*end != '.') return 0;
    minor = strtol(end + 1, &end, 10);
    patch = *end == '.' ? strtol(end + 1, &end, 10) : 0;
    if (major < 0 || minor < 0 || minor > 99 || patch < 0 || patch > 99) return 0;
    *version = major * 10000 + minor * 100 + patch;
    *mariadb = strstr(text, "MariaDB") != NULL || strstr(text, "mariadb") != NULL;
    return 1;
}

int outbox__my_check_version(const char *text, outbox_error *err)
{
    long v;
    int mariadb;
    if (!outbox__my_parse_version(text, &v, &mariadb))
        return outbox__error(err, OUTBOX_ECONFIG,
                             "cannot read the server version '%s': the MariaDB/MySQL store needs "
                             "MariaDB 10.6 or later or MySQL 8.0 or later",
                             text ? text : "(none)");
    if (mariadb && v < MY_MIN_MARIADB)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "the server is MariaDB %ld.%ld.%ld; the outbox needs MariaDB 10.6 or "
                             "later (FOR UPDATE SKIP LOCKED): upgrade the server",
                             v / 10000, v / 100 % 100, v % 100);
    if (!mariadb && v < MY_MIN_MYSQL)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "the server is MySQL %ld.%ld.%ld; the outbox needs MySQL 8.0 or "
                             "later (FOR UPDATE SKIP LOCKED): upgrade the server",
                             v / 10000, v / 100 % 100, v % 100);
    return OUTBOX_OK;
}

int outbox__my_valid_prefix(const char *s)
{
    size_t i, n = s ? strlen(s) : 0;
    if (n == 0 || n > 40) return 0;
    if (!isalpha((unsigned char)s[0]) && s[0] != '_') return 0;
    for (i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') return 0;
    return 1;
}

int outbox__my_prefix_error(const char *prefix, outbox_error *err)
{
    char shown[80];
    size_t i;
    snprintf(shown, sizeof shown, "%s", prefix ? prefix : "(null)");
    for (i = 0; shown[i]; i++)
        if ((unsigned char)shown[i] < 0x20 || shown[i] == 0x7f) shown[i] = '?';
    return outbox__error(err, OUTBOX_ECONFIG,
                         "table_prefix '%s' is not accepted: use 1 to 40 letters, digits and "
                         "underscores, starting with a letter or underscore (default outbox)",
                         shown);
}

#ifdef OUTBOX_HAVE_MARIADB

/* ------------------------------------------------------------------------
 * Schema
 *
 * Templates: {t} is the quoted outbox table (the prefix itself), {t:x} the
 * quoted table `<prefix>_x`, {n:x} the bare name <prefix>_x (constraint,
 * index, trigger and procedure names), {P} the partition count.  One
 * statement per entry: DDL commits on its own in MariaDB and MySQL, so
 * every statement is written to be run again after a crash half-way.
 * ---------------------------------------------------------------------- */

static const char *const meta_sql[] = {
    "CREATE TABLE IF NOT EXISTS {t:meta} (k VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,"
    " v VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL) ENGINE=InnoDB",
    NULL,
};

#define TEXT_COL "VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
#define NO_CNTRL(col) " NOT " col " REGEXP '[[:cntrl:]]'"

static const char *const migration_1[] = {
    "CREATE TABLE IF NOT EXISTS {t} ("
    " seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " id CHAR(36) CHARACTER SET ascii NOT NULL,"
    " occurred_at BIGINT NOT NULL,"
    " type " TEXT_COL " NOT NULL,"
    " aggregate_type " TEXT_COL " NOT NULL DEFAULT '',"
    " aggregate_id " TEXT_COL " NOT NULL,"
    " payload MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
    " headers TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
    " status VARCHAR(8) CHARACTER SET ascii NOT NULL DEFAULT 'pending',"
    " attempts INT NOT NULL DEFAULT 0,"
    " available_at BIGINT NOT NULL,"
    " last_error TEXT CHARACTER SET utf8mb4 NULL,"
    " sent_at BIGINT NULL,"
    " part SMALLINT AS (CRC32(aggregate_id) % {P}) STORED,"
    " blocking TINYINT AS (status = 'failed' OR attempts > 0) STORED,"
    " UNIQUE KEY {n:id} (id),"
    " KEY {n:pending} (status, seq),"
    " KEY {n:blocking} (blocking, aggregate_id, seq),"
    " KEY {n:sent_at} (status, sent_at),"
    " CONSTRAINT {n:status_valid} CHECK (status IN ('pending', 'sent', 'failed')),"
    " CONSTRAINT {n:id_valid} CHECK (status <> 'pending' OR (id REGEXP"
    "  '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"
    "  AND id <> '00000000-0000-0000-0000-000000000000')),"
    " CONSTRAINT {n:type_valid} CHECK (status <> 'pending' OR (LENGTH(type) BETWEEN 1 AND 256"
    "  AND type REGEXP '[^ \\t]' AND" NO_CNTRL(
        "type") ")),"
                " CONSTRAINT {n:aggregate_valid} CHECK (status <> 'pending' OR "
                "(LENGTH(aggregate_id)"
                "  BETWEEN 1 AND 256 AND aggregate_id REGEXP '[^ \\t]' AND" NO_CNTRL(
                    "aggregate_id") " AND"
                                    "  LENGTH(aggregate_type) <= 256 AND" NO_CNTRL(
                                        "aggregate_type") ")),"
                                                          " CONSTRAINT {n:payload_valid} CHECK "
                                                          "(status <> 'pending' OR "
                                                          "JSON_VALID(payload)),"
                                                          " CONSTRAINT {n:headers_valid} CHECK "
                                                          "(status <> 'pending' OR "
                                                          "(JSON_VALID(headers)"
                                                          "  AND JSON_TYPE(headers) = 'OBJECT')),"
                                                          " CONSTRAINT {n:times_valid} CHECK "
                                                          "(status <> 'pending' OR (occurred_at "
                                                          "BETWEEN 0 AND"
                                                          "  253402300799999999 AND available_at "
                                                          "BETWEEN 0 AND 253402300799999999))"
                                                          ") ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS {t:inbox} ("
    " consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
    " message_id CHAR(36) CHARACTER SET ascii NOT NULL,"
    " received_at BIGINT NOT NULL,"
    " PRIMARY KEY (consumer, message_id), KEY {n:inbox_received} (received_at)) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS {t:relays} ("
    " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " name VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,"
    " host VARCHAR(255) CHARACTER SET utf8mb4 NULL, pid INT NULL,"
    " started_at BIGINT NOT NULL, heartbeat_at BIGINT NOT NULL,"
    " note VARCHAR(255) CHARACTER SET utf8mb4 NULL) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS {t:lease} (part SMALLINT NOT NULL PRIMARY KEY,"
    " owner BIGINT NULL, expires_at BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
    /* One row per aggregate, locked by every insert until its transaction
     * ends: two messages of one aggregate commit in seq order (see
     * "Ordering" in docs/MARIADB.md).  A duplicate primary key takes a
     * record lock only, no gap lock: other aggregates never wait. */
    "CREATE TABLE IF NOT EXISTS {t:aggregate} (aggregate_id " TEXT_COL " NOT NULL PRIMARY KEY,"
    " n BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
    "DROP TRIGGER IF EXISTS {n:order}",
    "CREATE TRIGGER {n:order} BEFORE INSERT ON {t} FOR EACH ROW"
    " INSERT INTO {t:aggregate} (aggregate_id, n) VALUES (NEW.aggregate_id, 1)"
    " ON DUPLICATE KEY UPDATE n = n + 1",
    "DROP PROCEDURE IF EXISTS {n:enqueue}",
    "CREATE PROCEDURE {n:enqueue}(IN p_type " TEXT_COL ", IN p_aggregate_id " TEXT_COL ","
    " IN p_payload MEDIUMTEXT CHARACTER SET utf8mb4, IN p_headers TEXT CHARACTER SET utf8mb4,"
    " IN p_aggregate_type " TEXT_COL ", IN p_id CHAR(36) CHARACTER SET ascii,"
    " OUT p_new_id CHAR(36) CHARACTER SET ascii)"
    " MODIFIES SQL DATA"
    " BEGIN"
    "  DECLARE now_us BIGINT DEFAULT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED);"
    "  IF @@in_transaction = 0 AND @@autocommit = 1 THEN"
    "   SIGNAL SQLSTATE '25000' SET MESSAGE_TEXT = 'outbox enqueue: no transaction is open;"
    " START TRANSACTION first so the message commits with your business change';"
    "  END IF;"
    "  SET p_new_id = LOWER(COALESCE(p_id, UUID()));"
    "  INSERT INTO {t} (id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
    "   available_at) VALUES (p_new_id, now_us, p_type, COALESCE(p_aggregate_type, ''),"
    "   p_aggregate_id, p_payload, COALESCE(p_headers, '{}'), now_us);"
    " END",
};

typedef struct migration {
    const char *const *sql;
    size_t count;
} migration;

/* migrations[i] takes the schema from version i to i + 1.  Append only. */
static const migration migrations[] = {
    {migration_1, sizeof migration_1 / sizeof migration_1[0]},
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

int outbox__my_schema_version(void)
{
    return SCHEMA_VERSION;
}

void outbox__my_expand(outbox_buf *b, const char *tmpl, const char *prefix, int partitions)
{
    const char *p = tmpl;
    outbox__buf_reset(b);
    while (*p) {
        const char *open = strchr(p, '{');
        const char *close;
        if (!open) {
            outbox__buf_puts(b, p);
            break;
        }
        outbox__buf_append(b, p, (size_t)(open - p));
        close = strchr(open, '}');
        if (close && strncmp(open, "{t}", 3) == 0) {
            outbox__my_table(b, prefix, NULL);
        } else if (close && strncmp(open, "{t:", 3) == 0) {
            char suffix[64];
            snprintf(suffix, sizeof suffix, "%.*s", (int)(close - open - 3), open + 3);
            outbox__my_table(b, prefix, suffix);
        } else if (close && strncmp(open, "{n:", 3) == 0) {
            outbox__buf_printf(b, "`%s_%.*s`", prefix, (int)(close - open - 3), open + 3);
        } else if (close && strncmp(open, "{P}", 3) == 0) {
            outbox__buf_printf(b, "%d", partitions);
        } else {
            /* Not ours (a regular expression's {8}): kept. */
            outbox__buf_append(b, open, 1);
            p = open + 1;
            continue;
        }
        p = close + 1;
    }
}

/* The version (0: no schema, -1: unreadable) and partition count in meta. */
int outbox__my_read_version(MYSQL *conn, const char *prefix, int *version, int *partitions,
                            outbox_error *err)
{
    outbox_buf b;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int code = OUTBOX_OK;

    *version = 0;
    *partitions = 0;
    outbox__buf_init(&b);
    outbox__buf_puts(&b, "SELECT k, v FROM ");
    outbox__my_table(&b, prefix, "meta");
    outbox__buf_puts(&b, " WHERE k IN ('schema_version', 'partitions')");
    if (b.oom) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading the schema version");
    }
    if (mysql_real_query(conn, b.data, b.len) != 0) {
        if (mysql_errno(conn) == 1146 /* ER_NO_SUCH_TABLE */) {
            outbox__buf_free(&b);
            return OUTBOX_OK;
        }
        outbox__buf_free(&b);
        return outbox__my_fail(conn, "reading the outbox schema version", err);
    }
    outbox__buf_free(&b);
    res = mysql_store_result(conn);
    if (!res) return outbox__my_fail(conn, "reading the outbox schema version", err);
    while ((row = mysql_fetch_row(res)) != NULL) {
        if (!row[0] || !row[1]) continue;
        if (strcmp(row[0], "schema_version") == 0) {
            char *end;
            long v = strtol(row[1], &end, 10);
            *version = (*end || v < 1 || v > 100000) ? -1 : (int)v;
        } else {
            *partitions = (int)strtol(row[1], NULL, 10);
        }
    }
    mysql_free_result(res);
    return code;
}

/* Runs one template. */
static int run_template(MYSQL *conn, outbox_buf *b, const char *tmpl, const char *prefix,
                        int partitions, outbox_error *err)
{
    outbox__my_expand(b, tmpl, prefix, partitions);
    if (b->oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the schema");
    return outbox__my_exec(conn, b->data, "creating the outbox schema", err);
}

/* Creates or upgrades the schema, serialised against other inits by a
 * named lock (DDL cannot share one transaction).  A schema at this build's
 * version is only read. */
int outbox__my_migrate(MYSQL *conn, const char *prefix, int requested, int *from, int *to,
                       outbox_error *err)
{
    outbox_buf b;
    char lock[200];
    int64_t got = 0;
    int version = 0, parts = 0, code, i;
    size_t k;

    *from = *to = 0;
    code = outbox__my_read_version(conn, prefix, &version, &parts, err);
    if (code != OUTBOX_OK) return code;
    if (version == SCHEMA_VERSION) {
        *from = *to = version;
        if (requested > 0 && parts != requested)
            outbox__log(OUTBOX_LOG_WARN, MY_COMPONENT,
                        "partitions=%d not applied: the outbox %s already has %d partitions "
                        "(fixed when it was created)",
                        requested, prefix, parts);
        return OUTBOX_OK;
    }
    if (version > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox %s is schema version %d, newer than this build's %d "
                             "(liboutbox %s): upgrade outbox; nothing was written",
                             prefix, version, SCHEMA_VERSION, outbox_version());
    outbox__buf_init(&b);
    snprintf(lock, sizeof lock, "SELECT GET_LOCK(CONCAT('outbox.init:', DATABASE(), '.%s'), 60)",
             prefix);
    code = outbox__my_query_i64(conn, lock, "waiting for another init", &got, err);
    if (code == OUTBOX_OK && got != 1)
        code =
            outbox__error(err, OUTBOX_EBUSY,
                          "another outbox init on %s has run for over a minute: try again", prefix);
    if (code != OUTBOX_OK) goto out;
    /* Read again under the lock: another init may have finished. */
    code = outbox__my_read_version(conn, prefix, &version, &parts, err);
    if (code != OUTBOX_OK) goto unlock;
    *from = version < 0 ? 0 : version;
    if (version <= 0) parts = requested > 0 ? requested : MY_DEFAULT_PARTITIONS;
    for (k = 0; meta_sql[k] && code == OUTBOX_OK; k++)
        code = run_template(conn, &b, meta_sql[k], prefix, parts, err);
    for (i = version < 0 ? 0 : version; i < SCHEMA_VERSION && code == OUTBOX_OK; i++) {
        for (k = 0; k < migrations[i].count && code == OUTBOX_OK; k++)
            code = run_template(conn, &b, migrations[i].sql[k], prefix, parts, err);
    }
    if (code != OUTBOX_OK) goto unlock;
    /* The partition leases, one row each. */
    outbox__buf_reset(&b);
    outbox__buf_puts(&b, "INSERT IGNORE INTO ");
    outbox__my_table(&b, prefix, "lease");
    outbox__buf_puts(&b, " (part) VALUES ");
    for (i = 0; i < parts; i++)
        outbox__buf_printf(&b, "%s(%d)", i ? "," : "", i);
    if (b.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the schema");
        goto unlock;
    }
    code = outbox__my_exec(conn, b.data, "creating the partition leases", err);
    if (code != OUTBOX_OK) goto unlock;
    outbox__buf_reset(&b);
    outbox__buf_puts(&b, "REPLACE INTO ");
    outbox__my_table(&b, prefix, "meta");
    outbox__buf_printf(&b, " (k, v) VALUES ('schema_version', '%d'), ('partitions', '%d')",
                       SCHEMA_VERSION, parts);
    code = outbox__my_exec(conn, b.data, "recording the schema version", err);
    if (code == OUTBOX_OK) *to = SCHEMA_VERSION;
    if (code == OUTBOX_OK && requested > 0 && *from > 0 && requested != parts)
        outbox__log(OUTBOX_LOG_WARN, MY_COMPONENT,
                    "partitions=%d not applied: the outbox %s already has %d partitions", requested,
                    prefix, parts);
unlock:
    snprintf(lock, sizeof lock, "SELECT RELEASE_LOCK(CONCAT('outbox.init:', DATABASE(), '.%s'))",
             prefix);
    (void)mysql_real_query(conn, lock, strlen(lock));
    {
        MYSQL_RES *r = mysql_store_result(conn);
        if (r) mysql_free_result(r);
    }
out:
    outbox__buf_free(&b);
    return code;
}

int outbox__my_check_schema(my_store *st, outbox_error *err)
{
    int version = 0, parts = 0;
    int code = outbox__my_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    code = outbox__my_read_version(st->conn, st->prefix, &version, &parts, err);
    if (code != OUTBOX_OK) return code;
    if (version < 0)
        return outbox__error(err, OUTBOX_ESTORE,
                             "the outbox %s at %s has an unreadable schema_version in %s_meta",
                             st->prefix, st->shown, st->prefix);
    if (version == 0)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no outbox tables %s at %s: run `outbox init --store %s`", st->prefix,
                             st->shown, st->shown);
    if (version > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox %s at %s is schema version %d, newer than this build's "
                             "%d (liboutbox %s): upgrade outbox",
                             st->prefix, st->shown, version, SCHEMA_VERSION, outbox_version());
    if (version < SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "the outbox %s at %s is schema version %d, older than %d: run "
                             "`outbox init --store %s` to upgrade it",
                             st->prefix, st->shown, version, SCHEMA_VERSION, st->shown);
    if (parts < 1 || parts > MY_MAX_PARTITIONS) parts = MY_DEFAULT_PARTITIONS;
    st->partitions = parts;
    st->schema_ok = 1;
    return OUTBOX_OK;
}

int outbox__my_need_schema(my_store *st, outbox_error *err)
{
    int code = outbox__my_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    if (st->schema_ok) return OUTBOX_OK;
    return outbox__my_check_schema(st, err);
}

/* The INSERT every enqueue runs: the trigger locks the aggregate's row
 * first.  Values are hex literals, so no connection character set or SQL
 * mode can change what is stored. */
void outbox__my_insert_sql(outbox_buf *b, const char *prefix, const outbox_msg *msg)
{
    const char *agg_type = msg->aggregate_type ? msg->aggregate_type : "";
    const char *payload = msg->payload ? msg->payload : "{}";
    const char *headers = msg->headers_json ? msg->headers_json : "{}";
    int64_t now = outbox__now_us();

    outbox__buf_reset(b);
    outbox__buf_puts(b, "INSERT INTO ");
    outbox__my_table(b, prefix, NULL);
    outbox__buf_printf(b,
                       " (id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
                       " available_at) VALUES ('%s', %lld, ",
                       msg->id, (long long)msg->occurred_at);
    outbox__my_append_text(b, msg->type, strlen(msg->type));
    outbox__buf_puts(b, ", ");
    outbox__my_append_text(b, agg_type, strlen(agg_type));
    outbox__buf_puts(b, ", ");
    outbox__my_append_text(b, msg->aggregate_id, strlen(msg->aggregate_id));
    outbox__buf_puts(b, ", ");
    outbox__my_append_text(b, payload, strlen(payload));
    outbox__buf_puts(b, ", ");
    outbox__my_append_text(b, headers, strlen(headers));
    outbox__buf_printf(b, ", %lld)", (long long)now);
}

#endif /* OUTBOX_HAVE_MARIADB */
