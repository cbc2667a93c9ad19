/*
 * sqlite.c - the SQLite store: schema and migrations, the public SQLite
 * functions (enqueue and inbox on the caller's connection), and the
 * `outbox__store_sqlite` driver the relay and the CLI use.
 *
 * Two kinds of connection:
 *   - The caller's (outbox_enqueue_sqlite, outbox_inbox_*_sqlite,
 *     outbox_schema_init_sqlite): borrowed; statements are prepared per call
 *     and always finalized, so the caller's sqlite3_close never finds a
 *     leftover statement, and nothing here begins or ends the caller's
 *     transaction (except the documented own-transaction functions).
 *   - The store's own (driver): opened from `sqlite:PATH`, WAL,
 *     synchronous=NORMAL, busy_timeout 5000, with the hot statements
 *     (claim, complete, change check) prepared once and reused.
 *
 * The store never creates a missing database file on open (a typo in a
 * path would otherwise leave a stray empty database): only `init` does.
 *
 * The schema version lives in outbox_meta (PRAGMA user_version belongs to
 * the application that shares the database).  A schema newer than this
 * build is refused before anything touches the tables: once per driver
 * connection, and by the caller-connection writes themselves (their INSERT
 * is conditional on the version, so a refusal writes nothing).
 *
 * The table refuses what the library refuses (CHECKs and triggers), for
 * writers in any language.  Rows stored before that, or by a writer that
 * went around it, are checked again when claimed: one that does not decode
 * is quarantined (marked Failed with the reason) instead of stopping the
 * relay; list, show and drop read rows as stored.
 *
 * Ordering (guarantee 4) is done by the claim query: a due pending message
 * is claimed only when no earlier message of its aggregate is waiting in
 * backoff (or is Failed, when Failed blocks).  Only rows that were retried
 * or failed can block, and the partial index outbox_blocking holds just
 * those, so the check is free in the common case.  The relay holds the
 * lease, so claiming is a plain read; outcomes are recorded in one
 * transaction that also renews the lease, with all sent messages of a batch
 * deleted (or marked) by one statement.  A pipelined claim (the relay
 * claims the next batch while the previous one is still being published)
 * is the same read without the seqs still in flight, read as the stretches
 * of seqs between the ranges in flight.
 *
 * The lease is held by a store handle (a random instance token), not by a
 * relay name: a live holder is never shared, whatever the names.
 *
 * A store handle is used by one thread at a time (its statements are
 * cached in it); open one store per thread.  The relay's claim ahead and
 * complete behind, and the WAL checkpoints of the latter, run on threads
 * the handle starts, each with a handle (a connection) of its own ("Claim
 * ahead and complete behind" below).
 */
#include "internal.h"

#include <sqlite3.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Schema
 * ---------------------------------------------------------------------- */

/* The checks of schema version 2's triggers: what the library refuses at
 * enqueue, the table refuses for writers in any language (the payload's
 * JSON and the headers' being an object are version 1's CHECKs).  Each
 * refusal is RAISE(ABORT, 'outbox: <field> ...'), which insert_fail maps to
 * the field's code.  Every prepared INSERT compiles them (the library
 * prepares one per enqueue: about 185,000 instructions of the enqueue's
 * 450,000), so they are kept to few expressions.  Header names and values
 * (strings, no control characters) are not checked by the table: a trigger
 * over json_each cost another 123,000 instructions per enqueue, for rows the
 * library never writes; the relay's claim quarantines a foreign row with
 * such headers.  Part of a released migration: never edit; a change is a
 * new migration. */
#define HEX "[0-9a-fA-F]"
#define HEX4 HEX HEX HEX HEX
#define UUID_GLOB "'" HEX4 HEX4 "-" HEX4 "-" HEX4 "-" HEX4 "-" HEX4 HEX4 HEX4 "'"
/* '*[\x01-\x1f\x7f]*': has a control character (kept ASCII in the schema). */
#define CONTROL_GLOB "CAST(x'2a5b012d1f7f5d2a' AS TEXT)"
/* Has a character other than space and tab. */
#define NOT_BLANK_GLOB "'*[^ \t]*'"
#define LONG_OR_CONTROL(col)                                                                       \
    "length(CAST(NEW." col " AS BLOB)) > 256 OR NEW." col " GLOB " CONTROL_GLOB
#define FIELD_CHECKS                                                                               \
    " SELECT CASE"                                                                                 \
    " WHEN NEW.id NOT GLOB " UUID_GLOB " OR NEW.id = '00000000-0000-0000-0000-000000000000'"       \
    "  THEN RAISE(ABORT, 'outbox: id is not a UUID (8-4-4-4-12 hex digits, not nil)')"             \
    " WHEN typeof(NEW.occurred_at) <> 'integer'"                                                   \
    "  OR NEW.occurred_at NOT BETWEEN 0 AND 253402300799999999"                                    \
    "  THEN RAISE(ABORT, 'outbox: occurred_at is not Unix microseconds in the years"               \
    " 1970..9999')"                                                                                \
    " WHEN NEW.type NOT GLOB " NOT_BLANK_GLOB " OR " LONG_OR_CONTROL(                              \
        "type") "  THEN RAISE(ABORT, 'outbox: type is blank, longer than 256 bytes or has a "      \
                "control"                                                                          \
                " character')"                                                                     \
                " WHEN " LONG_OR_CONTROL(                                                          \
                    "aggregate_type") "  THEN RAISE(ABORT, 'outbox: aggregate_type is longer "     \
                                      "than 256 bytes or has a control"                            \
                                      " character')"                                               \
                                      " WHEN NEW.aggregate_id NOT GLOB " NOT_BLANK_GLOB            \
                                      " OR " LONG_OR_CONTROL(                                      \
                                          "aggregate_id") "  THEN RAISE(ABORT, 'outbox: "          \
                                                          "aggregate_id is blank, longer than "    \
                                                          "256 bytes or has a"                     \
                                                          " control character')"                   \
                                                          " END;"
/* migrations[i] takes the schema from version i to version i + 1.  Append
 * only: a released step is never edited. */
static const char *const migrations[] = {
    /* 1 */
    "CREATE TABLE outbox ("
    " seq            INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id             TEXT    NOT NULL UNIQUE CHECK (length(id) = 36),"
    " occurred_at    INTEGER NOT NULL,"
    " type           TEXT    NOT NULL CHECK (length(type) > 0),"
    " aggregate_type TEXT    NOT NULL DEFAULT '',"
    " aggregate_id   TEXT    NOT NULL CHECK (length(aggregate_id) > 0),"
    " payload        TEXT    NOT NULL CHECK (json_valid(payload)),"
    " headers        TEXT    NOT NULL DEFAULT '{}'"
    "                CHECK (json_valid(headers) AND json_type(headers) = 'object'),"
    " status         TEXT    NOT NULL DEFAULT 'pending'"
    "                CHECK (status IN ('pending','sent','failed')),"
    " attempts       INTEGER NOT NULL DEFAULT 0,"
    " available_at   INTEGER NOT NULL DEFAULT 0,"
    " last_error     TEXT,"
    " sent_at        INTEGER"
    ");"
    "CREATE INDEX outbox_pending  ON outbox (seq) WHERE status = 'pending';"
    "CREATE INDEX outbox_blocking ON outbox (aggregate_id, seq)"
    " WHERE status = 'failed' OR attempts > 0;"
    "CREATE INDEX outbox_sent_at  ON outbox (sent_at) WHERE status = 'sent';"
    "CREATE TABLE outbox_inbox (consumer TEXT NOT NULL, message_id TEXT NOT NULL,"
    " received_at INTEGER NOT NULL, PRIMARY KEY (consumer, message_id)) WITHOUT ROWID;"
    "CREATE INDEX outbox_inbox_received ON outbox_inbox (received_at);"
    "CREATE TABLE outbox_lease (name TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER,"
    " host TEXT, acquired_at INTEGER, expires_at INTEGER NOT NULL) WITHOUT ROWID;",
    /* 2: the lease belongs to a store handle (instance), and carries the
     * holder's note; the table refuses what the library refuses.  Rows
     * already stored are left as they are (the claim quarantines bad ones). */
    "ALTER TABLE outbox_lease ADD COLUMN instance TEXT;"
    "ALTER TABLE outbox_lease ADD COLUMN note TEXT;"
    "CREATE TRIGGER outbox_check_insert BEFORE INSERT ON outbox BEGIN" FIELD_CHECKS " END;"
    "CREATE TRIGGER outbox_check_update BEFORE UPDATE OF id, occurred_at, type,"
    " aggregate_type, aggregate_id ON outbox BEGIN" FIELD_CHECKS " END;",
};

#define SCHEMA_VERSION 2
#define TEXT_OF(x) #x
#define NUMBER_TEXT(x) TEXT_OF(x)
_Static_assert(sizeof migrations / sizeof migrations[0] == SCHEMA_VERSION,
               "SCHEMA_VERSION is the number of migrations");

/* SQL for "param when outbox_meta records a version this build can write
 * to, else NULL": the caller-connection writes put it in a NOT NULL column,
 * so that a refused version writes nothing at the cost of a subquery rather
 * than a statement of its own (version_writable says why afterwards). */
#define IF_VERSION_WRITABLE(param)                                                                 \
    "(SELECT " param " FROM outbox_meta WHERE key = 'schema_version'"                              \
    " AND CAST(value AS INTEGER) BETWEEN 1 AND " NUMBER_TEXT(SCHEMA_VERSION) ")"

#define LEASE_NAME "relay"

/* ------------------------------------------------------------------------
 * Error mapping
 * ---------------------------------------------------------------------- */

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return OUTBOX_EBUSY;
    case SQLITE_IOERR:
    case SQLITE_FULL:
        return OUTBOX_EIO;
    case SQLITE_NOMEM:
        return OUTBOX_ENOMEM;
    default:
        return OUTBOX_ESTORE;
    }
}

static const char *db_path(sqlite3 *db)
{
    const char *p = db ? sqlite3_db_filename(db, "main") : NULL;
    return p && *p ? p : ":memory:";
}

/* Fills err for a failed SQLite call on db (rc is its result) and returns
 * the outbox code.  Call before sqlite3_reset so the message is current. */
static int db_fail(sqlite3 *db, int rc, const char *what, outbox_error *err)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    const char *path = db_path(db);
    if (strstr(msg, "no such table") != NULL)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "%s: no outbox tables in %s (%s): run `outbox init --store "
                             "sqlite:%s` or call outbox_schema_init_sqlite",
                             what, path, msg, path);
    if (strstr(msg, "no such column") != NULL)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "%s: the outbox tables in %s are older than this build (%s): run "
                             "`outbox init --store sqlite:%s` to upgrade them",
                             what, path, msg, path);
    return outbox__error(err, map_rc(rc), "%s: %s (SQLite error %d)", what, msg, rc);
}

/* Runs sql (no rows expected) with sqlite3_exec. */
static int exec_sql(sqlite3 *db, const char *sql, const char *what, outbox_error *err)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) return db_fail(db, rc, what, err);
    return OUTBOX_OK;
}

/* Ends a failed transaction; harmless when SQLite already rolled back. */
static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

static const char *col_text(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? (const char *)t : "";
}

/* ------------------------------------------------------------------------
 * Migrations (shared by the driver's init and outbox_schema_init_sqlite)
 * ---------------------------------------------------------------------- */

/* What outbox_meta says about the schema version. */
typedef struct stored_version {
    enum { VERSION_SET, VERSION_NO_TABLE, VERSION_NO_ROW, VERSION_UNREADABLE } state;
    int number;    /* VERSION_SET: the version (>= 1); 0 otherwise */
    char text[40]; /* VERSION_UNREADABLE: the stored value (cut) */
} stored_version;

/* Reads schema_version from outbox_meta into *v. */
static int read_version(sqlite3 *db, stored_version *v, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code = OUTBOX_OK;

    memset(v, 0, sizeof *v);
    v->state = VERSION_NO_ROW;
    rc = sqlite3_prepare_v2(db, "SELECT value FROM outbox_meta WHERE key = 'schema_version'", -1,
                            &s, NULL);
    if (rc != SQLITE_OK) {
        v->state = VERSION_NO_TABLE;
        if (strstr(sqlite3_errmsg(db), "no such table") != NULL) return OUTBOX_OK;
        return db_fail(db, rc, "reading the outbox schema version", err);
    }
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *text = col_text(s, 0);
        char *end = NULL;
        long n;
        errno = 0;
        n = strtol(text, &end, 10);
        if (errno == 0 && end != text && *end == '\0' && n >= 1 && n <= 1000000) {
            v->state = VERSION_SET;
            v->number = (int)n;
        } else {
            v->state = VERSION_UNREADABLE;
            snprintf(v->text, sizeof v->text, "%s", text);
        }
        rc = SQLITE_DONE;
    }
    if ((rc & 0xff) == SQLITE_ERROR && strstr(sqlite3_errmsg(db), "no such table") != NULL)
        v->state = VERSION_NO_TABLE; /* dropped since this connection prepared */
    else if (rc != SQLITE_DONE)
        code = db_fail(db, rc, "reading the outbox schema version", err);
    sqlite3_finalize(s);
    return code;
}

/* OUTBOX_ESCHEMANEWER when v is newer than this build, else OUTBOX_OK. */
static int refuse_newer(sqlite3 *db, const stored_version *v, outbox_error *err)
{
    if (v->state != VERSION_SET || v->number <= SCHEMA_VERSION) return OUTBOX_OK;
    return outbox__error(err, OUTBOX_ESCHEMANEWER,
                         "the outbox schema in %s is version %d, newer than this build's %d: "
                         "upgrade outbox",
                         db_path(db), v->number, SCHEMA_VERSION);
}

/* OUTBOX_OK when outbox_meta records a version this build can write to
 * (IF_VERSION_WRITABLE is true); else why a caller-connection write was
 * refused. */
static int version_writable(sqlite3 *db, outbox_error *err)
{
    stored_version v;
    int code = read_version(db, &v, err);
    if (code != OUTBOX_OK) return code;
    if (v.state == VERSION_SET && v.number <= SCHEMA_VERSION) return OUTBOX_OK;
    code = refuse_newer(db, &v, err);
    if (code != OUTBOX_OK) return code;
    return outbox__error(err, OUTBOX_ENOSCHEMA,
                         "the outbox schema version in %s is missing or unreadable, so nothing "
                         "was written: run `outbox init --store sqlite:%s`, which says how to "
                         "repair it",
                         db_path(db), db_path(db));
}

/* Runs a one-row query on db; *out = its first column (0 without a row). */
static int query_int64(sqlite3 *db, const char *sql, const char *what, int64_t *out,
                       outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code = OUTBOX_OK;

    *out = 0;
    rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(db, rc, what, err);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) code = db_fail(db, rc, what, err);
    sqlite3_finalize(s);
    return code;
}

/* init found no usable version in outbox_meta (v) but `tables` of the
 * outbox's table names, or an unreadable version: says what it found and
 * how to repair, and changes nothing (OUTBOX_ESTORE). */
static int unversioned_tables(sqlite3 *db, const stored_version *v, int64_t tables,
                              outbox_error *err)
{
    const char *path = db_path(db);
    char found[96];
    int64_t columns, instance;
    int code;

    if (v->state == VERSION_NO_TABLE)
        snprintf(found, sizeof found, "no outbox_meta table");
    else if (v->state == VERSION_NO_ROW)
        snprintf(found, sizeof found, "no schema_version row in outbox_meta");
    else
        snprintf(found, sizeof found, "schema_version '%s' in outbox_meta, not a version number",
                 v->text);
    code = query_int64(db,
                       "SELECT count(*) FROM pragma_table_info('outbox') WHERE name IN"
                       " ('seq', 'id', 'aggregate_id', 'payload', 'headers', 'status',"
                       " 'available_at')",
                       "reading the outbox schema", &columns, err);
    if (code == OUTBOX_OK)
        code = query_int64(db,
                           "SELECT count(*) FROM pragma_table_info('outbox_lease')"
                           " WHERE name = 'instance'",
                           "reading the outbox schema", &instance, err);
    if (code != OUTBOX_OK) return code;
    if (tables == 0)
        return outbox__error(err, OUTBOX_ESTORE,
                             "%s has %s, and no outbox tables; init changed nothing: remove "
                             "the row with sqlite3 %s \"DELETE FROM outbox_meta WHERE key = "
                             "'schema_version'\" and run init again",
                             path, found, path);
    if (columns != 7)
        return outbox__error(err, OUTBOX_ESTORE,
                             "%s has tables named like the outbox's (outbox, outbox_inbox or "
                             "outbox_lease) that outbox did not make, and %s; init changed "
                             "nothing: rename those tables or use another database file",
                             path, found);
    return outbox__error(err, OUTBOX_ESTORE,
                         "%s has the outbox tables but %s, so their version is unknown and init "
                         "changed nothing.  They look like version %d: record it with sqlite3 "
                         "%s \"%sINSERT OR REPLACE INTO outbox_meta VALUES ('schema_version', "
                         "'%d')\" and run init again",
                         path, found, instance ? 2 : 1, path,
                         v->state == VERSION_NO_TABLE
                             ? "CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT "
                               "NULL) WITHOUT ROWID; "
                             : "",
                         instance ? 2 : 1);
}

/* Switches db to WAL when it is not; failing to do so is logged, not fatal
 * (the store still works, only with less concurrency). */
static void ensure_wal(sqlite3 *db)
{
    sqlite3_stmt *s = NULL;
    int is_wal = 0;

    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
        const char *mode = col_text(s, 0);
        /* In-memory databases cannot use WAL. */
        is_wal = strcmp(mode, "wal") == 0 || strcmp(mode, "memory") == 0;
    }
    sqlite3_finalize(s);
    if (is_wal) return;
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK)
        outbox__log(OUTBOX_LOG_WARN, "store.sqlite",
                    "could not switch %s to WAL journal mode (%s); the relay and writers "
                    "will block each other more",
                    db_path(db), sqlite3_errmsg(db));
}

/* Creates or upgrades the schema on db, in one BEGIN IMMEDIATE transaction.
 * db must have no transaction open.  Tables without a usable version
 * record are left alone (see unversioned_tables). */
static int migrate(sqlite3 *db, int *from, int *to, outbox_error *err)
{
    char sql[128];
    stored_version version;
    int64_t tables;
    int v, code;

    code = exec_sql(db, "BEGIN IMMEDIATE", "starting the schema transaction", err);
    if (code != OUTBOX_OK) return code;
    code = read_version(db, &version, err);
    if (code != OUTBOX_OK) goto fail;
    if (from) *from = version.number;
    if (to) *to = version.number;
    code = refuse_newer(db, &version, err);
    if (code != OUTBOX_OK) goto fail;
    if (version.state != VERSION_SET) {
        code = query_int64(db,
                           "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                           " AND name IN ('outbox', 'outbox_inbox', 'outbox_lease')",
                           "reading the outbox schema", &tables, err);
        if (code != OUTBOX_OK) goto fail;
        if (tables > 0 || version.state == VERSION_UNREADABLE) {
            code = unversioned_tables(db, &version, tables, err);
            goto fail;
        }
    }
    code = exec_sql(db,
                    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, "
                    "value TEXT NOT NULL) WITHOUT ROWID",
                    "creating outbox_meta", err);
    if (code != OUTBOX_OK) goto fail;
    for (v = version.number; v < SCHEMA_VERSION; v++) {
        snprintf(sql, sizeof sql, "migrating the outbox schema to version %d", v + 1);
        code = exec_sql(db, migrations[v], sql, err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (version.number != SCHEMA_VERSION) {
        code = exec_sql(db,
                        "INSERT OR REPLACE INTO outbox_meta (key, value) VALUES ("
                        "'schema_version', '" NUMBER_TEXT(SCHEMA_VERSION) "')",
                        "recording the outbox schema version", err);
        if (code != OUTBOX_OK) goto fail;
    }
    code = exec_sql(db, "COMMIT", "committing the schema", err);
    if (code != OUTBOX_OK) goto fail;
    if (to) *to = SCHEMA_VERSION;
    return OUTBOX_OK;

fail:
    rollback(db);
    return code;
}

/* Creates or upgrades the outbox tables on the caller's connection (db is
 * borrowed).  OUTBOX_EINVAL when db is NULL or a transaction is open;
 * OUTBOX_ESCHEMANEWER when the database was set up by a newer version;
 * database failures as mapped codes.  Switches the database to WAL. */
int outbox_schema_init_sqlite(sqlite3 *db, outbox_error *err)
{
    if (!db) return outbox__error(err, OUTBOX_EINVAL, "outbox_schema_init_sqlite: db is NULL");
    if (!sqlite3_get_autocommit(db))
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_schema_init_sqlite runs its own transaction: call it "
                             "with no transaction open (COMMIT or ROLLBACK first)");
    ensure_wal(db);
    return migrate(db, NULL, NULL, err);
}

/* ------------------------------------------------------------------------
 * Enqueue and inbox on any connection
 * ---------------------------------------------------------------------- */

/* The id is NULL (refused by NOT NULL: nothing written) unless the schema
 * version is writable. */
static const char insert_sql[] =
    "INSERT INTO outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload, headers)"
    " VALUES (" IF_VERSION_WRITABLE("?1") ", ?2, ?3, ?4, ?5, ?6, ?7)";

/* The outbox code of each field the table's triggers (message "outbox:
 * <field> ...") and CHECKs ("CHECK constraint failed: <expression>") name,
 * most specific first. */
static const struct {
    const char *text;
    int code;
} refusals[] = {
    {"outbox: id ", OUTBOX_EBADID},
    {"outbox: occurred_at ", OUTBOX_EINVAL},
    {"outbox: type ", OUTBOX_EBADTYPE},
    {"outbox: aggregate_", OUTBOX_EBADAGGREGATE},
    {"outbox: headers ", OUTBOX_EBADHEADERS},
    {"outbox: header names and values ", OUTBOX_EBADHEADERCHAR},
    {"payload", OUTBOX_EBADPAYLOAD},
    {"headers", OUTBOX_EBADHEADERS},
    {"aggregate", OUTBOX_EBADAGGREGATE},
    {"type", OUTBOX_EBADTYPE},
    {"id", OUTBOX_EBADID},
};

/* Maps a failed INSERT INTO outbox to the matching outbox code. */
static int insert_fail(sqlite3 *db, int rc, const outbox_msg *msg, outbox_error *err)
{
    int ext = sqlite3_extended_errcode(db);
    const char *text = sqlite3_errmsg(db);
    size_t i;

    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
        return outbox__error(err, OUTBOX_EEXISTS,
                             "a message with id %s is already in the outbox: give each "
                             "message its own id",
                             msg->id);
    if (ext == SQLITE_CONSTRAINT_NOTNULL && strstr(text, "outbox.id") != NULL) {
        /* msg->id is never NULL: the version refused it (see insert_sql). */
        int code = version_writable(db, err);
        return code != OUTBOX_OK ? code : outbox__error(err, OUTBOX_EINTERNAL, "%s", text);
    }
    if (ext == SQLITE_CONSTRAINT_TRIGGER || ext == SQLITE_CONSTRAINT_CHECK ||
        ext == SQLITE_CONSTRAINT_NOTNULL) {
        int code = OUTBOX_EINVAL;
        for (i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
            if (strstr(text, refusals[i].text)) {
                code = refusals[i].code;
                break;
            }
        return outbox__error(err, code, "the outbox table refused the message: %s", text);
    }
    return db_fail(db, rc, "inserting into the outbox", err);
}

/* Inserts msg with a statement prepared for this call and finalized before
 * returning.  A failed statement is rolled back by SQLite on its own; the
 * surrounding transaction stays open. */
static int insert_msg(sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code = OUTBOX_OK;

    code = outbox__msg_check_size(msg, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(db, insert_sql, (int)sizeof insert_sql, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(db, rc, "preparing the outbox insert", err);
    sqlite3_bind_text(s, 1, msg->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, msg->occurred_at);
    sqlite3_bind_text(s, 3, msg->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, msg->aggregate_type ? msg->aggregate_type : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, msg->aggregate_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, msg->payload ? msg->payload : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 7, msg->headers_json ? msg->headers_json : "{}", -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = insert_fail(db, rc, msg, err);
    sqlite3_finalize(s);
    return code;
}

/* Inserts msg into the outbox inside the caller's open transaction (db and
 * msg borrowed).  OUTBOX_ENOTXN without a transaction, OUTBOX_ETOOBIG,
 * OUTBOX_ENOSCHEMA (no tables, or no readable version), OUTBOX_ESCHEMANEWER,
 * OUTBOX_EEXISTS, EBAD* for a row the table refuses, or a mapped database
 * error; nothing is written on failure and the caller's transaction stays
 * usable.  Wakes in-process relays. */
int outbox_enqueue_sqlite(sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    int code;

    if (!db || !msg)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_enqueue_sqlite: %s is NULL",
                             db ? "msg" : "db");
    if (sqlite3_get_autocommit(db))
        return outbox__error(err, OUTBOX_ENOTXN,
                             "outbox_enqueue_sqlite needs an open transaction (BEGIN ... "
                             "COMMIT) so the message commits with your business change");
    code = insert_msg(db, msg, err);
    if (code != OUTBOX_OK) return code;
    outbox__wake_notify(sqlite3_db_filename(db, "main"));
    return OUTBOX_OK;
}

static int valid_consumer(const char *consumer)
{
    const unsigned char *p = (const unsigned char *)consumer;
    if (!*p) return 0;
    for (; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

/* An inbox record inserted nothing: a duplicate, or the version refused it
 * (its consumer was NULL, which OR IGNORE skips). */
static int duplicate_or_refused(sqlite3 *db, outbox_error *err)
{
    int code = version_writable(db, err);
    return code == OUTBOX_OK ? OUTBOX_DUPLICATE : code;
}

/* Records (consumer, message_id) in the inbox inside the caller's open
 * transaction.  OUTBOX_OK the first time, OUTBOX_DUPLICATE afterwards (ids
 * compare case-insensitively).  OUTBOX_ENOTXN, OUTBOX_EINVAL (consumer
 * empty or with control characters), OUTBOX_EBADID, OUTBOX_ENOSCHEMA,
 * OUTBOX_ESCHEMANEWER (nothing written) or a mapped database error. */
int outbox_inbox_record_sqlite(sqlite3 *db, const char *consumer, const char *message_id,
                               outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    char id[37];
    int rc, code = OUTBOX_OK;

    if (!db) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_record_sqlite: db is NULL");
    if (sqlite3_get_autocommit(db))
        return outbox__error(err, OUTBOX_ENOTXN,
                             "outbox_inbox_record_sqlite needs an open transaction (BEGIN "
                             "... COMMIT) so the record commits with the message's effect");
    if (!consumer || !valid_consumer(consumer))
        return outbox__error(err, OUTBOX_EINVAL,
                             "inbox consumer name must be non-empty text without control "
                             "characters");
    rc = outbox__uuid_canonical(message_id, id, "inbox message id", err);
    if (rc != OUTBOX_OK) return rc;

    rc = sqlite3_prepare_v2(db,
                            "INSERT OR IGNORE INTO outbox_inbox (consumer, message_id, "
                            "received_at) VALUES (" IF_VERSION_WRITABLE("?1") ", ?2, ?3)",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(db, rc, "preparing the inbox insert", err);
    sqlite3_bind_text(s, 1, consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, outbox__now_us());
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        code = db_fail(db, rc, "recording the message in the inbox", err);
    else if (sqlite3_changes(db) == 0)
        code = duplicate_or_refused(db, err);
    sqlite3_finalize(s);
    return code;
}

/* Deletes inbox entries older than retention_ms in a transaction of its own
 * (no transaction may be open: OUTBOX_EINVAL).  *purged (may be NULL) gets
 * the count.  Warns through the log when retention is shorter than the
 * redelivery horizon (0: the default relay options' horizon).
 * OUTBOX_ESCHEMANEWER (nothing deleted) for a newer schema. */
int outbox_inbox_purge_sqlite(sqlite3 *db, int64_t retention_ms, int64_t redelivery_horizon_ms,
                              int64_t *purged, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    stored_version version;
    int rc, code;

    if (purged) *purged = 0;
    if (!db) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_purge_sqlite: db is NULL");
    if (!sqlite3_get_autocommit(db))
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_inbox_purge_sqlite runs its own transaction: call it "
                             "with no transaction open");
    code = outbox__inbox_retention_check("outbox_inbox_purge_sqlite", retention_ms,
                                         redelivery_horizon_ms, err);
    if (code != OUTBOX_OK) return code;

    code = exec_sql(db, "BEGIN IMMEDIATE", "starting the inbox purge", err);
    if (code != OUTBOX_OK) return code;
    code = read_version(db, &version, err);
    if (code == OUTBOX_OK) code = refuse_newer(db, &version, err);
    if (code != OUTBOX_OK) goto fail;
    rc = sqlite3_prepare_v2(db, "DELETE FROM outbox_inbox WHERE received_at < ?1", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(db, rc, "preparing the inbox purge", err);
        goto fail;
    }
    sqlite3_bind_int64(s, 1, outbox__now_us() - retention_ms * 1000);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) {
        code = db_fail(db, rc, "purging the inbox", err);
        goto fail;
    }
    sqlite3_finalize(s);
    s = NULL;
    if (purged) *purged = sqlite3_changes(db);
    code = exec_sql(db, "COMMIT", "committing the inbox purge", err);
    if (code != OUTBOX_OK) goto fail;
    return OUTBOX_OK;

fail:
    sqlite3_finalize(s);
    rollback(db);
    if (purged) *purged = 0;
    return code;
}

/* ------------------------------------------------------------------------
 * The driver: state and cached statements
 * ---------------------------------------------------------------------- */

enum {
    S_BEGIN,
    S_COMMIT,
    S_CLAIM,
    S_CLAIM_PIPELINED,
    S_DELETE_MANY,
    S_MARK_SENT_MANY,
    S_DELETE_RANGE,
    S_MARK_SENT_RANGE,
    S_RETRY,
    S_FAIL,
    S_LEASE_RENEW,
    S_DATA_VERSION,
    S_NEXT_DUE,
    S_COUNT
};

/* The claims' ordering rule: no earlier message of the row's aggregate
 * waits in backoff (or is Failed, when ?2 says that blocks).  Only rows in
 * outbox_blocking (Failed, or retried) can block, so when it holds none (a
 * drain without failures) one look at it per claim stands in for the probe
 * per row. */
#define CLAIM_NOT_BLOCKED                                                                          \
    " AND (NOT EXISTS (SELECT 1 FROM outbox b WHERE b.status = 'failed' OR b.attempts > 0)"        \
    "  OR NOT EXISTS (SELECT 1 FROM outbox p"                                                      \
    "  WHERE p.aggregate_id = o.aggregate_id AND p.seq < o.seq"                                    \
    "  AND (p.status = 'failed' OR p.attempts > 0)"                                                \
    "  AND ((p.status = 'pending' AND p.available_at > ?1)"                                        \
    "       OR (p.status = 'failed' AND ?2))))"

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_CLAIM] = "SELECT seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
                " attempts FROM outbox o"
                " WHERE o.status = 'pending' AND o.available_at <= ?1" CLAIM_NOT_BLOCKED
                " ORDER BY o.seq LIMIT ?3",
    /* The same within the seqs ?4 to ?5: the pipelined claim reads each
     * stretch between the ranges in flight (outbox__stretches_between), one seek
     * of outbox_pending each. */
    [S_CLAIM_PIPELINED] =
        "SELECT seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
        " attempts FROM outbox o"
        " WHERE o.status = 'pending' AND o.available_at <= ?1"
        " AND o.seq BETWEEN ?4 AND ?5" CLAIM_NOT_BLOCKED " ORDER BY o.seq LIMIT ?3",
    /* ?1 is a JSON array of seqs: one statement for a whole batch. */
    [S_DELETE_MANY] = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?1))",
    [S_MARK_SENT_MANY] = "UPDATE outbox SET status = 'sent', sent_at = ?2"
                         " WHERE seq IN (SELECT value FROM json_each(?1))",
    /* The same for the seqs ?1 to ?3, every one of them sent (record_sent). */
    [S_DELETE_RANGE] = "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?3",
    [S_MARK_SENT_RANGE] =
        "UPDATE outbox SET status = 'sent', sent_at = ?2 WHERE seq BETWEEN ?1 AND ?3",
    [S_RETRY] = "UPDATE outbox SET attempts = attempts + 1, available_at = ?1, last_error = ?2"
                " WHERE seq = ?3",
    [S_FAIL] = "UPDATE outbox SET attempts = attempts + 1, status = 'failed', last_error = ?1"
               " WHERE seq = ?2",
    [S_LEASE_RENEW] = "UPDATE outbox_lease SET expires_at = ?1 WHERE name = '" LEASE_NAME "'"
                      " AND instance = ?2 AND owner = ?3",
    [S_DATA_VERSION] = "PRAGMA data_version",
    /* "+status" keeps the planner on outbox_blocking (the few retried rows)
     * instead of walking every pending row through outbox_pending. */
    [S_NEXT_DUE] = "SELECT min(available_at) FROM outbox"
                   " WHERE (status = 'failed' OR attempts > 0) AND +status = 'pending'",
};

struct sqlite_worker;

/* The store's threads: claim ahead, complete behind, checkpoint (JOB_*). */
#define SQLITE_WORKERS 3

typedef struct sqlite_store {
    sqlite3 *db; /* NULL while the database file does not exist */
    char *path;
    int version_checked; /* the schema version was found writable on db */
    char instance[33];   /* random hex token: the lease row this handle holds */
    sqlite3_stmt *stmts[S_COUNT];
    int64_t data_version;     /* -1 before the first `changed` */
    outbox_buf sent;          /* complete: JSON array of the sent seqs */
    outbox_stretches between; /* pipelined claim: the seqs not in flight */
    /* the store's threads, by job (JOB_*); NULL until their first job */
    struct sqlite_worker *worker[SQLITE_WORKERS];
} sqlite_store;

static void worker_free(struct sqlite_worker *w);

/* Returns the cached statement idx, preparing it on first use. */
static sqlite3_stmt *stmt(sqlite_store *st, int idx, int *code, outbox_error *err)
{
    int rc;
    if (st->stmts[idx]) return st->stmts[idx];
    rc = sqlite3_prepare_v3(st->db, stmt_sql[idx], -1, SQLITE_PREPARE_PERSISTENT, &st->stmts[idx],
                            NULL);
    if (rc != SQLITE_OK) {
        *code = db_fail(st->db, rc, "preparing a statement", err);
        sqlite3_finalize(st->stmts[idx]);
        st->stmts[idx] = NULL;
        return NULL;
    }
    return st->stmts[idx];
}

/* Steps a cached statement that returns no rows, then resets it. */
static int run(sqlite_store *st, int idx, const char *what, outbox_error *err)
{
    int code = OUTBOX_OK, rc;
    sqlite3_stmt *s = stmt(st, idx, &code, err);
    if (!s) return code;
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) code = db_fail(st->db, rc, what, err);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

static int connect_db(sqlite_store *st, int create, outbox_error *err)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    struct stat sb;
    int existed = stat(st->path, &sb) == 0;
    int rc = sqlite3_open_v2(st->path, &db, flags, NULL);
    int code;

    /* SQLite creates the file 0644 less the umask: the messages are no one
     * else's business.  Only the others' bits go, so writers sharing the
     * database through its group keep their access; the -wal and -shm
     * files SQLite makes later copy this mode. */
    if (rc == SQLITE_OK && create && !existed && stat(st->path, &sb) == 0)
        (void)chmod(st->path, sb.st_mode & 07770);

    if (rc != SQLITE_OK) {
        code = outbox__error(err, map_rc(rc), "cannot open the SQLite database %s: %s", st->path,
                             db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return code;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);
    /* Reading the schema cookie reads the file header: a file that is not
     * a database fails here with a clear message. */
    rc = sqlite3_exec(db, "PRAGMA schema_version", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_NOTADB)
            code = outbox__error(err, OUTBOX_ESTORE,
                                 "%s is not a SQLite database: check the --store path", st->path);
        else
            code = db_fail(db, rc, "reading the SQLite database", err);
        sqlite3_close(db);
        return code;
    }
    code = exec_sql(db, "PRAGMA synchronous=NORMAL", "configuring the SQLite connection", err);
    if (code != OUTBOX_OK) {
        sqlite3_close(db);
        return code;
    }
    ensure_wal(db);
    st->db = db;
    return OUTBOX_OK;
}

/* Makes sure the connection is open (the database file may have been
 * created by `outbox init` in another process since open) and, once per
 * connection, that its schema is not newer than this build.  Every driver
 * function that touches the tables calls it first.  A missing or
 * unreadable version is left to the statements (no such table) and to
 * check_schema and init, which say what to do. */
static int need_db(sqlite_store *st, outbox_error *err)
{
    struct stat sb;
    stored_version v;
    int code;

    if (!st->db) {
        if (stat(st->path, &sb) != 0)
            return outbox__error(err, OUTBOX_ENOSCHEMA,
                                 "no outbox database at %s: run `outbox init --store sqlite:%s`",
                                 st->path, st->path);
        code = connect_db(st, 0, err);
        if (code != OUTBOX_OK) return code;
    }
    if (st->version_checked) return OUTBOX_OK;
    code = read_version(st->db, &v, err);
    if (code == OUTBOX_OK) code = refuse_newer(st->db, &v, err);
    if (code == OUTBOX_OK && v.state == VERSION_SET) st->version_checked = 1;
    return code;
}

static void sqlite_close(void *state)
{
    sqlite_store *st = state;
    int i;
    if (!st) return;
    /* In job order: the completing thread asks the checkpointing one. */
    for (i = 0; i < SQLITE_WORKERS; i++)
        worker_free(st->worker[i]);
    for (i = 0; i < S_COUNT; i++)
        sqlite3_finalize(st->stmts[i]);
    outbox__buf_free(&st->sent);
    outbox__stretches_free(&st->between);
    if (st->db && sqlite3_close(st->db) != SQLITE_OK)
        outbox__log(OUTBOX_LOG_WARN, "store.sqlite", "closing %s: %s", st->path,
                    sqlite3_errmsg(st->db));
    outbox__free(st->path);
    outbox__free(st);
}

/* A random token naming this store handle as a lease holder: unique
 * across processes and handles (the OS's randomness, as for fork). */
static void new_instance(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char token[16];
    size_t i;
    outbox__random_bytes(token, sizeof token);
    for (i = 0; i < sizeof token; i++) {
        out[2 * i] = hex[token[i] >> 4];
        out[2 * i + 1] = hex[token[i] & 15];
    }
    out[32] = '\0';
}

/* sqlite:PATH or sqlite://PATH (so sqlite:///tmp/a.db is /tmp/a.db). */
static int sqlite_open(void **state, const char *url, outbox_error *err)
{
    sqlite_store *st = NULL;
    const char *path;
    char shown[512];
    struct stat sb;
    int code;

    *state = NULL;
    outbox__url_redact(url, shown, sizeof shown);
    if (strncasecmp(url, "sqlite:", 7) != 0)
        return outbox__error(err, OUTBOX_EBADURL, "store URL '%s' is not a sqlite: URL", shown);
    path = url + 7;
    if (strncmp(path, "//", 2) == 0) path += 2;
    if (!*path)
        return outbox__error(err, OUTBOX_EBADURL,
                             "store URL '%s' has no database path: write sqlite:PATH, e.g. "
                             "sqlite:app.db or sqlite:///var/lib/app/app.db",
                             shown);
    if (strchr(path, '?'))
        return outbox__error(err, OUTBOX_EBADURL,
                             "store URL '%s' has a query string, which sqlite: URLs do not "
                             "take: write sqlite:PATH",
                             shown);

    st = outbox__calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    st->data_version = -1;
    new_instance(st->instance);
    outbox__buf_init(&st->sent);
    st->path = outbox__strdup(path);
    if (!st->path) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
        goto fail;
    }
    /* Do not create a missing file: only init does (see need_db). */
    if (strcmp(path, ":memory:") == 0 || stat(path, &sb) == 0) {
        code = connect_db(st, strcmp(path, ":memory:") == 0, err);
        if (code != OUTBOX_OK) goto fail;
    }
    *state = st;
    return OUTBOX_OK;

fail:
    sqlite_close(st);
    return code;
}

static int sqlite_init(void *state, int *from_version, int *to_version, outbox_error *err)
{
    sqlite_store *st = state;
    int code;
    if (from_version) *from_version = 0;
    if (to_version) *to_version = 0;
    if (!st->db) {
        code = connect_db(st, 1, err);
        if (code != OUTBOX_OK) return code;
    }
    ensure_wal(st->db);
    code = migrate(st->db, from_version, to_version, err);
    if (code == OUTBOX_OK) st->version_checked = 1;
    return code;
}

static int sqlite_check_schema(void *state, outbox_error *err)
{
    sqlite_store *st = state;
    stored_version v;
    int code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    code = read_version(st->db, &v, err);
    if (code != OUTBOX_OK) return code;
    if (v.state == VERSION_NO_TABLE)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no outbox tables in %s: run `outbox init --store sqlite:%s`",
                             st->path, st->path);
    if (v.state != VERSION_SET)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "the outbox schema version in %s is missing or unreadable: run "
                             "`outbox init --store sqlite:%s`, which says how to repair it",
                             st->path, st->path);
    code = refuse_newer(st->db, &v, err);
    if (code != OUTBOX_OK) return code;
    if (v.number < SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "the outbox schema in %s is version %d, older than %d: run "
                             "`outbox init --store sqlite:%s` to upgrade it",
                             st->path, v.number, SCHEMA_VERSION, st->path);
    return OUTBOX_OK;
}

static int sqlite_enqueue(void *state, const outbox_msg *msg, outbox_error *err)
{
    sqlite_store *st = state;
    int code;

    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "enqueue: msg is NULL");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    code = run(st, S_BEGIN, "starting the enqueue transaction", err);
    if (code != OUTBOX_OK) return code;
    code = insert_msg(st->db, msg, err);
    if (code != OUTBOX_OK) goto fail;
    code = run(st, S_COMMIT, "committing the enqueue", err);
    if (code != OUTBOX_OK) goto fail;
    outbox__wake_notify(sqlite3_db_filename(st->db, "main"));
    return OUTBOX_OK;

fail:
    rollback(st->db);
    return code;
}

/* ------------------------------------------------------------------------
 * Lease
 * ---------------------------------------------------------------------- */

static void host_name(char *buf, size_t len)
{
    if (gethostname(buf, len) != 0) snprintf(buf, len, "unknown");
    buf[len - 1] = '\0';
}

/* 1 when the process pid on host `host` is known to be gone: it ran on
 * this host and no such process exists. */
static int holder_gone(const char *host, int64_t pid)
{
    char here[256];
    host_name(here, sizeof here);
    return strcmp(host, here) == 0 && pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Takes the lease for this store handle.  A live holder is never shared,
 * whatever its name: the lease is taken over only when it expired, when
 * its holder's process is gone (same host, no such pid), or when this
 * handle holds it already. */
static int sqlite_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    char host[256];
    int64_t now = outbox__now_us();
    int rc, code;

    if (!owner || !*owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is empty");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    host_name(host, sizeof host);
    code = run(st, S_BEGIN, "starting the lease transaction", err);
    if (code != OUTBOX_OK) return code;

    rc = sqlite3_prepare_v2(st->db,
                            "SELECT owner, pid, host, expires_at, instance FROM outbox_lease"
                            " WHERE name = '" LEASE_NAME "'",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, "reading the relay lease", err);
        goto fail;
    }
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *holder = col_text(s, 0);
        int64_t pid = sqlite3_column_int64(s, 1);
        const char *holder_host = col_text(s, 2);
        int64_t expires = sqlite3_column_int64(s, 3);

        if (strcmp(col_text(s, 4), st->instance) == 0) {
            /* This handle's own lease. */
        } else if (expires < now) {
            outbox__log(OUTBOX_LOG_INFO, "store.sqlite",
                        "taking over the expired lease of relay %s", holder);
        } else if (holder_gone(holder_host, pid)) {
            outbox__log(OUTBOX_LOG_INFO, "store.sqlite",
                        "taking over the lease of relay %s: its process %lld is gone", holder,
                        (long long)pid);
        } else {
            int64_t left = (expires - now + 999999) / 1000000;
            code = outbox__error(err, OUTBOX_ELEASED,
                                 "another relay%s holds this outbox (name %s, pid %lld on host "
                                 "%s, lease expires in %llds)",
                                 strcmp(holder, owner) == 0 ? " with the same name" : "", holder,
                                 (long long)pid, holder_host, (long long)left);
            goto fail;
        }
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) {
        code = db_fail(st->db, rc, "reading the relay lease", err);
        goto fail;
    }
    sqlite3_finalize(s);
    s = NULL;

    rc = sqlite3_prepare_v2(st->db,
                            "INSERT INTO outbox_lease (name, owner, pid, host, acquired_at,"
                            " expires_at, instance, note)"
                            " VALUES ('" LEASE_NAME "', ?1, ?2, ?3, ?4, ?5, ?6, NULL)"
                            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                            " pid = excluded.pid, host = excluded.host,"
                            " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at,"
                            " instance = excluded.instance, note = NULL",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, "writing the relay lease", err);
        goto fail;
    }
    sqlite3_bind_text(s, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)getpid());
    sqlite3_bind_text(s, 3, host, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, now);
    sqlite3_bind_int64(s, 5, now + ttl_ms * 1000);
    sqlite3_bind_text(s, 6, st->instance, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) {
        code = db_fail(st->db, rc, "writing the relay lease", err);
        goto fail;
    }
    sqlite3_finalize(s);
    s = NULL;
    code = run(st, S_COMMIT, "committing the relay lease", err);
    if (code != OUTBOX_OK) goto fail;
    return OUTBOX_OK;

fail:
    sqlite3_finalize(s);
    rollback(st->db);
    return code;
}

/* Sets the expiry of the lease this handle holds as owner;
 * OUTBOX_ELEASELOST when it holds none. */
static int renew(sqlite_store *st, const char *owner, int64_t expires, outbox_error *err)
{
    int code = OUTBOX_OK, rc;
    sqlite3_stmt *s = stmt(st, S_LEASE_RENEW, &code, err);
    if (!s) return code;
    sqlite3_bind_int64(s, 1, expires);
    sqlite3_bind_text(s, 2, st->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, owner, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        code = db_fail(st->db, rc, "renewing the relay lease", err);
    else if (sqlite3_changes(st->db) == 0)
        code = outbox__error(err, OUTBOX_ELEASELOST,
                             "the relay lease of %s was taken over by another relay "
                             "(its lease expired or it judged this process dead)",
                             owner);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

static int sqlite_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    sqlite_store *st = state;
    int code;
    if (!owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is NULL");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    return renew(st, owner, outbox__now_us() + ttl_ms * 1000, err);
}

/* Runs sql on the lease row this handle holds as owner (?1: instance,
 * ?2: owner, ?3: text or NULL); a row held by another handle is left alone. */
static int lease_write(sqlite_store *st, const char *sql, const char *owner, const char *text,
                       const char *what, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code;

    if (!owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is NULL");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, what, err);
    sqlite3_bind_text(s, 1, st->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, owner, -1, SQLITE_STATIC);
    if (text && *text) sqlite3_bind_text(s, 3, text, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    code = rc == SQLITE_DONE ? OUTBOX_OK : db_fail(st->db, rc, what, err);
    sqlite3_finalize(s);
    return code;
}

static int sqlite_lease_release(void *state, const char *owner, outbox_error *err)
{
    return lease_write(state,
                       "DELETE FROM outbox_lease WHERE name = '" LEASE_NAME "'"
                       " AND instance = ?1 AND owner = ?2",
                       owner, NULL, "releasing the relay lease", err);
}

/* Stores the note of the lease this handle holds as owner; nothing when it
 * holds none (the note describes a holder). */
static int sqlite_lease_note(void *state, const char *owner, const char *note, outbox_error *err)
{
    return lease_write(state,
                       "UPDATE outbox_lease SET note = ?3 WHERE name = '" LEASE_NAME "'"
                       " AND instance = ?1 AND owner = ?2",
                       owner, note, "writing the relay note", err);
}

/* ------------------------------------------------------------------------
 * Claim and complete (the relay's hot path)
 * ---------------------------------------------------------------------- */

/* Builds a message from columns 0..8 (seq .. attempts) of s: checked as
 * enqueue checks a message (the claim), or read as stored (lenient). */
static int row_msg(sqlite3_stmt *s, int lenient, outbox_msg **out, outbox_error *err)
{
    int code = (lenient ? outbox__msg_from_row_lenient : outbox__msg_from_row)(
        out, sqlite3_column_int64(s, 0), col_text(s, 1), sqlite3_column_int64(s, 2), col_text(s, 3),
        col_text(s, 4), col_text(s, 5), col_text(s, 6), col_text(s, 7), err);
    if (code != OUTBOX_OK) return code;
    (*out)->attempts = sqlite3_column_int(s, 8);
    (*out)->status = OUTBOX_STATUS_PENDING;
    return OUTBOX_OK;
}

static void free_msgs(outbox_msg **msgs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    outbox__free(msgs);
}

/* Copies s into out (out_len bytes) for a log line: printable ASCII kept,
 * '"' and '\' escaped, any other byte as \xNN, cut with "..." when long. */
static void escape_text(const char *s, char *out, size_t out_len)
{
    size_t o = 0;
    for (; *s && o + 8 < out_len; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else
            o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
    }
    if (*s) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* A stored row the claim could not decode. */
typedef struct bad_row {
    int64_t seq;
    char *aggregate_id; /* as stored */
    char id[80];        /* as stored, escaped for the log */
    char error[sizeof((outbox_error *)0)->message];
} bad_row;

/* Marks the bad rows Failed (attempts + 1, last_error = why) in one
 * transaction and logs each: they leave the claim, and their aggregates
 * are held as behind any Failed message. */
static int quarantine(sqlite_store *st, const bad_row *bad, size_t n, outbox_error *err)
{
    sqlite3_stmt *s;
    size_t i;
    int rc, code;

    code = run(st, S_BEGIN, "starting the quarantine of undecodable messages", err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < n; i++) {
        if (!(s = stmt(st, S_FAIL, &code, err))) goto fail;
        sqlite3_bind_text(s, 1, bad[i].error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, bad[i].seq);
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "quarantining a stored message", err);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (code != OUTBOX_OK) goto fail;
    }
    code = run(st, S_COMMIT, "committing the quarantine of undecodable messages", err);
    if (code != OUTBOX_OK) goto fail;
    for (i = 0; i < n; i++)
        outbox__log(OUTBOX_LOG_ERROR, "store.sqlite",
                    "%s (id as stored: \"%s\"): marked Failed; fix the row and retry it, or "
                    "drop it",
                    bad[i].error, bad[i].id);
    return OUTBOX_OK;

fail:
    rollback(st->db);
    return code;
}

/* Removes from msgs[0..*n) the messages a quarantined row now holds back:
 * later ones of its aggregate, when Failed blocks. */
static void hold_back(outbox_msg **msgs, size_t *n, const bad_row *bad, size_t nbad)
{
    size_t i, j, kept = 0;
    for (i = 0; i < *n; i++) {
        int held = 0;
        for (j = 0; j < nbad && !held; j++)
            held = msgs[i]->seq > bad[j].seq &&
                   strcmp(msgs[i]->aggregate_id, bad[j].aggregate_id) == 0;
        if (held)
            outbox_msg_free(msgs[i]);
        else
            msgs[kept++] = msgs[i];
    }
    *n = kept;
}

/* How often one claim reads again after quarantining rows and finding
 * nothing else to return. */
#define CLAIM_ROUNDS 8
/* claim() without may_write met a row to quarantine (not an OUTBOX_E*). */
#define CLAIM_NEEDS_WRITE 2

/* One read of the claim statement s (bound): decodable rows into *arr
 * (count, cap), undecodable ones into *bad (nbad).  The statement is
 * stepped to its end and reset before anything is written. */
static int claim_read(sqlite_store *st, sqlite3_stmt *s, size_t batch_size, outbox_msg ***arr,
                      size_t *count, size_t *cap, bad_row **bad, size_t *nbad, outbox_error *err)
{
    outbox_error row_err;
    int rc, code = OUTBOX_OK;

    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        outbox_msg *m = NULL;
        if (*count == *cap) {
            /* A batch's worth at once (a drain fills it), bounded so that
             * a huge batch size does not allocate for rows not there. */
            size_t ncap = *cap ? *cap * 2 : (batch_size < 1024 ? batch_size : 1024);
            outbox_msg **na = outbox__realloc(*arr, ncap * sizeof *na);
            if (!na) goto nomem;
            *arr = na;
            *cap = ncap;
        }
        row_err.code = 0;
        row_err.message[0] = '\0';
        code = row_msg(s, 0, &m, &row_err);
        if (code == OUTBOX_OK) {
            (*arr)[(*count)++] = m;
        } else if (code == OUTBOX_ENOMEM) {
            goto nomem;
        } else {
            bad_row *nb = outbox__realloc(*bad, (*nbad + 1) * sizeof *nb);
            if (!nb) goto nomem;
            *bad = nb;
            nb += (*nbad)++;
            nb->seq = sqlite3_column_int64(s, 0);
            escape_text(col_text(s, 1), nb->id, sizeof nb->id);
            snprintf(nb->error, sizeof nb->error, "%s", row_err.message);
            nb->aggregate_id = outbox__strdup(col_text(s, 5));
            if (!nb->aggregate_id) goto nomem;
            code = OUTBOX_OK;
        }
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "claiming messages", err);
    sqlite3_reset(s);
    return code;

nomem:
    sqlite3_reset(s);
    return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming messages");
}

static void free_bad(bad_row *bad, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        outbox__free(bad[i].aggregate_id);
    outbox__free(bad);
}

/* The plain claim, or (pipelined) the same read without the seqs in
 * exclude: the stretches between them (outbox__stretches_between), lowest first, each
 * for what the batch still lacks, which returns the same rows as the plain
 * read with the seqs in flight taken out.  Rows that do not decode are
 * quarantined, not returned as an error; when that leaves nothing to
 * return, the claim reads again. */
static int claim(void *state, const outbox_claim_params *p, int pipelined, const int64_t *exclude,
                 size_t exclude_count, int may_write, outbox_msg ***msgs, size_t *n,
                 outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s;
    outbox_msg **arr = NULL;
    bad_row *bad = NULL;
    size_t count = 0, cap = 0, nbad = 0, stretches = 1, k;
    int round, code = OUTBOX_OK;

    *msgs = NULL;
    *n = 0;
    if (!p || p->batch_size == 0)
        return outbox__error(err, OUTBOX_EINVAL, "claim: batch_size must be at least 1");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    /* The relay is alone (lease): claiming is a plain read, so only the
     * messages still in flight need leaving out. */
    if (pipelined) {
        if (outbox__stretches_between(&st->between, exclude, exclude_count) != 0)
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming messages");
        stretches = st->between.count;
    }
    s = stmt(st, pipelined ? S_CLAIM_PIPELINED : S_CLAIM, &code, err);
    if (!s) return code;
    for (round = 0; round < CLAIM_ROUNDS; round++) {
        for (k = 0; k < stretches && count + nbad < p->batch_size; k++) {
            size_t want = p->batch_size - count - nbad;
            sqlite3_bind_int64(s, 1, p->now_us);
            sqlite3_bind_int(s, 2, p->failed_blocks_aggregate ? 1 : 0);
            sqlite3_bind_int64(s, 3, want > INT64_MAX ? INT64_MAX : (int64_t)want);
            if (pipelined) {
                sqlite3_bind_int64(s, 4, st->between.r[k].lo);
                sqlite3_bind_int64(s, 5, st->between.r[k].hi);
            }
            code = claim_read(st, s, p->batch_size, &arr, &count, &cap, &bad, &nbad, err);
            sqlite3_clear_bindings(s);
            if (code != OUTBOX_OK) break;
        }
        if (code != OUTBOX_OK || nbad == 0) break;
        if (!may_write) {
            code = CLAIM_NEEDS_WRITE;
            break;
        }
        code = quarantine(st, bad, nbad, err);
        if (code != OUTBOX_OK) break;
        if (p->quarantined) *p->quarantined += nbad;
        if (p->failed_blocks_aggregate) hold_back(arr, &count, bad, nbad);
        free_bad(bad, nbad);
        bad = NULL;
        nbad = 0;
        if (count > 0) break;
    }
    free_bad(bad, nbad);
    if (code != OUTBOX_OK) {
        free_msgs(arr, count);
        return code;
    }
    *msgs = arr;
    *n = count;
    return OUTBOX_OK;
}

static int sqlite_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                        outbox_error *err)
{
    return claim(state, p, 0, NULL, 0, 1, msgs, n, err);
}

static int sqlite_claim_pipelined(void *state, const outbox_claim_params *p, const int64_t *exclude,
                                  size_t exclude_count, outbox_msg ***msgs, size_t *n,
                                  outbox_error *err)
{
    return claim(state, p, 1, exclude, exclude_count, 1, msgs, n, err);
}

/* Records one RETRY or FAILED completion with its cached statement. */
static int record(sqlite_store *st, const outbox_completion *c, outbox_error *err)
{
    sqlite3_stmt *s;
    int code = OUTBOX_OK, rc;

    if (c->outcome == OUTBOX_OUTCOME_RETRY) {
        if (!(s = stmt(st, S_RETRY, &code, err))) return code;
        sqlite3_bind_int64(s, 1, c->available_at);
        if (c->error) sqlite3_bind_text(s, 2, c->error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, c->msg->seq);
    } else {
        if (!(s = stmt(st, S_FAIL, &code, err))) return code;
        if (c->error) sqlite3_bind_text(s, 1, c->error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, c->msg->seq);
    }
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "recording a message outcome", err);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

/* Deletes or marks the sent messages whose seqs are lo to hi (idx:
 * S_DELETE_RANGE or S_MARK_SENT_RANGE), or those in the JSON array in
 * st->sent (S_DELETE_MANY or S_MARK_SENT_MANY). */
static int sent_statement(sqlite_store *st, int idx, int64_t lo, int64_t hi, int64_t now_us,
                          outbox_error *err)
{
    sqlite3_stmt *s;
    int code = OUTBOX_OK, rc;

    if (!(s = stmt(st, idx, &code, err))) return code;
    if (idx == S_DELETE_RANGE || idx == S_MARK_SENT_RANGE) {
        sqlite3_bind_int64(s, 1, lo);
        sqlite3_bind_int64(s, 3, hi);
    } else {
        sqlite3_bind_text(s, 1, st->sent.data, (int)st->sent.len, SQLITE_STATIC);
    }
    if (idx == S_MARK_SENT_RANGE || idx == S_MARK_SENT_MANY) sqlite3_bind_int64(s, 2, now_us);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "recording sent messages", err);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

/* At most this many runs of consecutive seqs are written as ranges. */
#define SENT_RUNS_MAX 8

/* Deletes or marks every sent message of c.  A drain's batch is one run
 * of consecutive seqs, or a few: each run is written as a range of the
 * primary key (a seek, then a walk), which costs less than a lookup per
 * seq through a JSON array of them.  Every seq of a run is in the batch,
 * so the range holds no other row.  More runs than SENT_RUNS_MAX: one
 * statement over the JSON array of the seqs. */
static int record_sent(sqlite_store *st, const outbox_completion *c, size_t n,
                       const outbox_complete_params *p, outbox_error *err)
{
    int mark = p->on_sent == OUTBOX_ON_SENT_MARK, open = 0, code;
    int64_t lo = 0, hi = 0;
    size_t i, runs = 0, sent = 0;

    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_SENT) continue;
        if (!open || hi == INT64_MAX || c[i].msg->seq != hi + 1) runs++;
        open = 1;
        hi = c[i].msg->seq;
    }
    if (runs > SENT_RUNS_MAX) {
        outbox__buf_reset(&st->sent);
        outbox__buf_append(&st->sent, "[", 1);
        for (i = 0; i < n; i++)
            if (c[i].outcome == OUTBOX_OUTCOME_SENT)
                outbox__buf_printf(&st->sent, sent++ ? ",%lld" : "%lld", (long long)c[i].msg->seq);
        outbox__buf_append(&st->sent, "]", 1);
        if (st->sent.oom)
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording message outcomes");
        return sent_statement(st, mark ? S_MARK_SENT_MANY : S_DELETE_MANY, 0, 0, p->now_us, err);
    }
    open = 0;
    for (i = 0; i < n; i++) {
        int64_t seq;
        if (c[i].outcome != OUTBOX_OUTCOME_SENT) continue;
        seq = c[i].msg->seq;
        if (open && hi != INT64_MAX && seq == hi + 1) {
            hi = seq;
            continue;
        }
        if (open && (code = sent_statement(st, mark ? S_MARK_SENT_RANGE : S_DELETE_RANGE, lo, hi,
                                           p->now_us, err)) != OUTBOX_OK)
            return code;
        lo = hi = seq;
        open = 1;
    }
    if (!open) return OUTBOX_OK;
    return sent_statement(st, mark ? S_MARK_SENT_RANGE : S_DELETE_RANGE, lo, hi, p->now_us, err);
}

/* One transaction: renew the lease (when asked), then RETRY/FAILED rows one
 * statement each (they are few), then the SENT rows (record_sent). */
static int sqlite_complete(void *state, const outbox_completion *c, size_t n,
                           const outbox_complete_params *p, outbox_error *err)
{
    sqlite_store *st = state;
    size_t i, sent = 0;
    int code, written = 0;

    if (!p || (n > 0 && !c))
        return outbox__error(err, OUTBOX_EINVAL, "complete: completions or params are NULL");
    for (i = 0; i < n; i++) {
        if (!c[i].msg)
            return outbox__error(err, OUTBOX_EINVAL, "complete: completion %zu has no message", i);
        if (c[i].outcome < OUTBOX_OUTCOME_SENT || c[i].outcome > OUTBOX_OUTCOME_UNSENT)
            return outbox__error(err, OUTBOX_EINVAL, "complete: unknown outcome %d for message %s",
                                 c[i].outcome, c[i].msg->id);
    }
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < n; i++)
        if (c[i].outcome == OUTBOX_OUTCOME_SENT) sent++;

    code = run(st, S_BEGIN, "starting the completion transaction", err);
    if (code != OUTBOX_OK) return code;
    if (p->lease_owner) {
        code = renew(st, p->lease_owner, p->now_us + p->lease_ttl_ms * 1000, err);
        if (code != OUTBOX_OK) goto fail;
    }
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_RETRY && c[i].outcome != OUTBOX_OUTCOME_FAILED) continue;
        code = record(st, &c[i], err);
        if (code != OUTBOX_OK) goto fail;
        written++;
    }
    if (sent > 0) {
        code = record_sent(st, c, n, p, err);
        if (code != OUTBOX_OK) goto fail;
        written++;
    }
    if (written > 0 && OUTBOX_FAULT("during_mark_sent") != 0) {
        code = outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
        goto fail;
    }
    code = run(st, S_COMMIT, "committing message outcomes", err);
    if (code != OUTBOX_OK) goto fail;
    return OUTBOX_OK;

fail:
    rollback(st->db);
    return code;
}

/* Completion holds no claim state here: the same transaction. */
static int sqlite_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                     const outbox_complete_params *p, int in_flight,
                                     outbox_error *err)
{
    (void)in_flight;
    return sqlite_complete(state, c, n, p, err);
}

/* ------------------------------------------------------------------------
 * Claim ahead and complete behind: the store's threads
 * ---------------------------------------------------------------------- */

/* Threads, each with a handle (a connection) of its own, run the relay's
 * hot store work while the relay's thread publishes: the pipelined claim
 * of the next batch (claim_ahead), the outcomes of a wholly sent batch
 * (complete_behind), and the checkpoints of the WAL those write.
 *
 * A claim and a complete run side by side (WAL mode lets one connection
 * read while another writes).  The claiming connection's page cache is
 * dropped whenever the completing one has written since its last read,
 * so each claim reads the b-tree's upper pages again (from the OS's
 * cache); a claim queued behind a complete on one connection cost more
 * (docs/BENCHMARKS.md).  The claim only reads: a row that must be
 * quarantined (a write the relay's connection makes, counted and logged),
 * or any error, makes claim_ahead_end claim again on the handle's own
 * connection, which says what is wrong as a claim would.  The completing
 * handle holds the lease token of the relay's, so its transaction renews
 * the lease as complete does.
 *
 * Checkpoints: SQLite checkpoints in the connection whose commit takes
 * the WAL past 1,000 pages, so a complete paid for copying the WAL into
 * the database and its two fsyncs (1.5 of its 4 ms, measured).  The completing
 * connection asks the checkpoint thread instead (a WAL hook in place of
 * the automatic checkpoint), which runs a PASSIVE checkpoint (it waits
 * for no reader or writer) on its own connection.  Should it fall behind,
 * past CHECKPOINT_INLINE_FRAMES, the completing connection checkpoints
 * itself as before, so the WAL stays bounded.  Other connections (the
 * relay's own, the application's) keep their automatic checkpoint.
 *
 * A job's fields are the relay thread's while it is not asked, the
 * runner's while it is. */
enum { JOB_CLAIM, JOB_COMPLETE, JOB_CHECKPOINT, JOB_COUNT };
_Static_assert(JOB_COUNT == SQLITE_WORKERS, "one thread per job");

/* WAL pages after which a checkpoint is asked for (SQLite's default
 * automatic checkpoint), and after which the completing connection runs
 * one itself. */
#define CHECKPOINT_FRAMES 1000
#define CHECKPOINT_INLINE_FRAMES 8000

typedef struct worker_job {
    int asked; /* asked for, result not yet taken */
    int taken; /* being run (by the thread, or by the caller in worker_wait) */
    int done;  /* its result is in */
    int code;
    outbox_error err;
} worker_job;

typedef struct sqlite_worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;
    int busy; /* a job runs on h: one at a time */
    sqlite_store *h;
    worker_job job[JOB_COUNT];
    /* JOB_CLAIM */
    outbox_claim_params p;
    int64_t *exclude;
    size_t exclude_count, exclude_cap;
    outbox_msg **msgs;
    size_t n;
    /* JOB_COMPLETE: the caller's, kept until complete_behind_end */
    const outbox_completion *c;
    size_t nc;
    outbox_complete_params cp;
    struct sqlite_worker *checkpointer; /* NULL: h->db checkpoints itself */
    int hooked;                         /* h->db asks checkpointer */
} sqlite_worker;

static void worker_ask(sqlite_worker *w, int k);

/* The completing connection's WAL hook (see above): called after each of
 * its commits with the pages in the WAL. */
static int wal_written(void *arg, sqlite3 *db, const char *name, int frames)
{
    if (frames >= CHECKPOINT_INLINE_FRAMES)
        (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    else if (frames >= CHECKPOINT_FRAMES)
        worker_ask(arg, JOB_CHECKPOINT);
    return SQLITE_OK;
}

/* A PASSIVE checkpoint on h's connection.  SQLITE_BUSY (another
 * checkpoint runs) is no error: the next request catches up. */
static int checkpoint(sqlite_store *h, outbox_error *err)
{
    int code = need_db(h, err), rc;
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_wal_checkpoint_v2(h->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        code = db_fail(h->db, rc, "checkpointing the WAL", err);
        outbox__log(OUTBOX_LOG_WARN, "store.sqlite", "%s", err->message);
    }
    return code;
}

/* Runs job k on w->h (taken and busy set under the lock by the caller)
 * and stores its result; called without the lock. */
static void worker_run(sqlite_worker *w, int k)
{
    outbox_msg **msgs = NULL;
    size_t n = 0;
    outbox_error e;
    int code;

    e.code = 0;
    e.message[0] = '\0';
    if (k == JOB_COMPLETE)
        code = sqlite_complete(w->h, w->c, w->nc, &w->cp, &e);
    else if (k == JOB_CLAIM)
        code = claim(w->h, &w->p, 1, w->exclude, w->exclude_count, 0, &msgs, &n, &e);
    else
        code = checkpoint(w->h, &e);
    /* The connection is opened by its first job. */
    if (k == JOB_COMPLETE && w->checkpointer && !w->hooked && w->h->db) {
        (void)sqlite3_wal_hook(w->h->db, wal_written, w->checkpointer);
        w->hooked = 1;
    }
    pthread_mutex_lock(&w->mu);
    if (k == JOB_CLAIM) {
        w->msgs = msgs;
        w->n = n;
    }
    w->job[k].code = code;
    w->job[k].err = e;
    w->job[k].done = 1;
    w->busy = 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The job to run next: asked, not taken; -1: none. */
static int worker_next(const sqlite_worker *w)
{
    int k;
    if (w->busy) return -1;
    for (k = 0; k < JOB_COUNT; k++)
        if (w->job[k].asked && !w->job[k].taken) return k;
    return -1;
}

static void *worker_main(void *arg)
{
    sqlite_worker *w = arg;
    int k;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->quit && (k = worker_next(w)) < 0)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) break;
        w->job[k].taken = 1;
        w->busy = 1;
        pthread_mutex_unlock(&w->mu);
        worker_run(w, k);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void worker_ask(sqlite_worker *w, int k)
{
    pthread_mutex_lock(&w->mu);
    w->job[k].asked = 1;
    w->job[k].taken = 0;
    w->job[k].done = 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits for job k, if asked; its result stays in w.  When the thread has
 * not taken it and runs nothing (on a loaded machine it may not have been
 * scheduled since), the caller runs it itself rather than wait for the
 * thread to get a CPU. */
static void worker_wait(sqlite_worker *w, int k)
{
    worker_job *j = &w->job[k];
    pthread_mutex_lock(&w->mu);
    if (j->asked && !j->taken && !w->busy) {
        j->taken = 1;
        w->busy = 1;
        pthread_mutex_unlock(&w->mu);
        worker_run(w, k);
        pthread_mutex_lock(&w->mu);
    }
    while (j->asked && !j->done)
        pthread_cond_wait(&w->cv, &w->mu);
    j->asked = 0;
    j->taken = 0;
    j->done = 0;
    pthread_mutex_unlock(&w->mu);
}

static void worker_free(sqlite_worker *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    free_msgs(w->msgs, w->n);
    sqlite_close(w->h);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    outbox__free(w->exclude);
    outbox__free(w);
}

/* The thread of job k, started on first use, with a handle on the same
 * file as st holding st's lease token.  The completing one starts the
 * checkpointing one first; without it, its connection checkpoints itself. */
static int need_worker(sqlite_store *st, int k, outbox_error *err)
{
    sqlite_worker *w;
    sqlite_store *h;

    if (st->worker[k]) return OUTBOX_OK;
    if (k == JOB_COMPLETE) {
        outbox_error e;
        e.message[0] = '\0';
        if (need_worker(st, JOB_CHECKPOINT, &e) != OUTBOX_OK)
            outbox__log(OUTBOX_LOG_WARN, "store.sqlite",
                        "no checkpoint thread (%s): the relay's completes checkpoint themselves",
                        e.message);
    }
    /* Another connection would open another, empty, in-memory database. */
    if (strcmp(st->path, ":memory:") == 0 || !sqlite3_threadsafe())
        return outbox__error(err, OUTBOX_ENOTBUILT,
                             "no claim ahead or complete behind on an in-memory database or a "
                             "single-threaded SQLite library");
    w = outbox__calloc(1, sizeof *w);
    h = outbox__calloc(1, sizeof *h);
    if (w) w->h = h;
    if (h) h->path = outbox__strdup(st->path);
    if (!w || !h || !h->path) {
        if (h) outbox__free(h->path);
        outbox__free(h);
        outbox__free(w);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory starting a store thread");
    }
    h->data_version = -1;
    outbox__buf_init(&h->sent);
    memcpy(h->instance, st->instance, sizeof h->instance);
    if (pthread_mutex_init(&w->mu, NULL) != 0) goto fail_h;
    if (pthread_cond_init(&w->cv, NULL) != 0) goto fail_mu;
    w->checkpointer = k == JOB_COMPLETE ? st->worker[JOB_CHECKPOINT] : NULL;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) goto fail_cv;
    st->worker[k] = w;
    return OUTBOX_OK;

fail_cv:
    pthread_cond_destroy(&w->cv);
fail_mu:
    pthread_mutex_destroy(&w->mu);
fail_h:
    sqlite_close(h);
    outbox__free(w);
    return outbox__error(err, OUTBOX_EIO, "cannot start a store thread");
}

static int sqlite_claim_ahead(void *state, const outbox_claim_params *p, const int64_t *exclude,
                              size_t exclude_count, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite_worker *w;
    int code;

    if (!p || p->batch_size == 0)
        return outbox__error(err, OUTBOX_EINVAL, "claim_ahead: batch_size must be at least 1");
    if ((code = need_worker(st, JOB_CLAIM, err)) != OUTBOX_OK) return code;
    w = st->worker[JOB_CLAIM];
    if (w->job[JOB_CLAIM].asked)
        return outbox__error(err, OUTBOX_EINVAL, "claim_ahead: the one before is still out");
    if (exclude_count > w->exclude_cap) {
        int64_t *e = outbox__realloc(w->exclude, exclude_count * sizeof *e);
        if (!e) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming ahead");
        w->exclude = e;
        w->exclude_cap = exclude_count;
    }
    if (exclude_count > 0) memcpy(w->exclude, exclude, exclude_count * sizeof *exclude);
    w->exclude_count = exclude_count;
    w->p = *p;
    w->p.quarantined = NULL; /* it never quarantines */
    worker_ask(w, JOB_CLAIM);
    return OUTBOX_OK;
}

static int sqlite_claim_ahead_end(void *state, int keep, const outbox_claim_params *p,
                                  outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite_worker *w = st->worker[JOB_CLAIM];
    outbox_msg **got;
    size_t count;
    int code;

    *msgs = NULL;
    *n = 0;
    if (!w || !w->job[JOB_CLAIM].asked) return OUTBOX_OK;
    worker_wait(w, JOB_CLAIM);
    got = w->msgs;
    count = w->n;
    code = w->job[JOB_CLAIM].code;
    w->msgs = NULL;
    w->n = 0;
    if (!keep || code != OUTBOX_OK) {
        free_msgs(got, count);
        if (!keep) return OUTBOX_OK;
        if (code != CLAIM_NEEDS_WRITE && outbox__log_enabled(OUTBOX_LOG_DEBUG))
            outbox__log(OUTBOX_LOG_DEBUG, "store.sqlite", "claim ahead: %s (claiming again)",
                        w->job[JOB_CLAIM].err.message);
        return claim(st, p, 1, w->exclude, w->exclude_count, 1, msgs, n, err);
    }
    *msgs = got;
    *n = count;
    return OUTBOX_OK;
}

static int sqlite_complete_behind(void *state, const outbox_completion *c, size_t n,
                                  const outbox_complete_params *p, int in_flight, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite_worker *w;
    int code;

    (void)in_flight; /* the relay is alone: nothing to keep */
    if (!p || (n > 0 && !c))
        return outbox__error(err, OUTBOX_EINVAL, "complete: completions or params are NULL");
    if ((code = need_worker(st, JOB_COMPLETE, err)) != OUTBOX_OK) return code;
    w = st->worker[JOB_COMPLETE];
    if (w->job[JOB_COMPLETE].asked)
        return outbox__error(err, OUTBOX_EINVAL, "complete_behind: the one before is still out");
    w->c = c;
    w->nc = n;
    w->cp = *p;
    worker_ask(w, JOB_COMPLETE);
    return OUTBOX_OK;
}

static int sqlite_complete_behind_end(void *state, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite_worker *w = st->worker[JOB_COMPLETE];
    worker_job *j;

    if (!w || !w->job[JOB_COMPLETE].asked) return OUTBOX_OK;
    worker_wait(w, JOB_COMPLETE);
    j = &w->job[JOB_COMPLETE];
    w->c = NULL;
    w->nc = 0;
    if (j->code != OUTBOX_OK && err) *err = j->err;
    return j->code;
}

static int sqlite_changed(void *state, int *changed, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s;
    int64_t v;
    int rc, code;

    *changed = 0;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    if (!(s = stmt(st, S_DATA_VERSION, &code, err))) return code;
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        code = db_fail(st->db, rc, "checking for changes", err);
        sqlite3_reset(s);
        return code;
    }
    v = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    *changed = st->data_version < 0 || v != st->data_version;
    st->data_version = v;
    return OUTBOX_OK;
}

static int sqlite_next_due(void *state, int64_t *due_us, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s;
    int rc, code;

    *due_us = 0;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    if (!(s = stmt(st, S_NEXT_DUE, &code, err))) return code;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *due_us = sqlite3_column_int64(s, 0); /* NULL (none) reads as 0 */
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "finding the next due message", err);
    sqlite3_reset(s);
    return code;
}

static const char *sqlite_wake_path(void *state)
{
    sqlite_store *st = state;
    const char *p;
    if (!st->db) return NULL;
    p = sqlite3_db_filename(st->db, "main");
    return p && *p ? p : NULL;
}

/* ------------------------------------------------------------------------
 * Operator commands
 * ---------------------------------------------------------------------- */

/* A stored id equal to the canonical (lower-case) ?1: the library stores
 * ids in lower case, the table also takes them in upper case. */
#define ID_IS "id IN (?1, upper(?1))"

#define FULL_COLUMNS                                                                               \
    "seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers, attempts,"        \
    " status, available_at, last_error, sent_at"

/* Builds a message with its bookkeeping fields from FULL_COLUMNS of s, read
 * as stored (a row the relay could not decode still shows). */
static int full_row_msg(sqlite3_stmt *s, outbox_msg **out, outbox_error *err)
{
    outbox_msg *m = NULL;
    const unsigned char *last_error;
    int code = row_msg(s, 1, &m, err);
    if (code != OUTBOX_OK) return code;
    m->status = outbox__status_parse(col_text(s, 9));
    m->available_at = sqlite3_column_int64(s, 10);
    last_error = sqlite3_column_text(s, 11);
    if (last_error) {
        m->last_error = outbox__strdup((const char *)last_error);
        if (!m->last_error) {
            outbox_msg_free(m);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a message");
        }
    }
    m->sent_at = sqlite3_column_int64(s, 12);
    *out = m;
    return OUTBOX_OK;
}

/* Copies src into dst (size bytes), cut at a character boundary. */
static void copy_text(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The live lease's holder into out (nothing when no live lease). */
static int status_lease(sqlite_store *st, int64_t now, outbox_status *out, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code = OUTBOX_OK;

    rc = sqlite3_prepare_v2(st->db,
                            "SELECT owner, expires_at, pid, host, note FROM outbox_lease"
                            " WHERE name = '" LEASE_NAME "' AND expires_at >= ?1",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "reading the relay lease", err);
    sqlite3_bind_int64(s, 1, now);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        copy_text(out->lease_owner, sizeof out->lease_owner, col_text(s, 0));
        out->lease_expires_us = sqlite3_column_int64(s, 1);
        out->lease_pid = sqlite3_column_int64(s, 2);
        copy_text(out->lease_host, sizeof out->lease_host, col_text(s, 3));
        copy_text(out->relay_note, sizeof out->relay_note, col_text(s, 4));
        out->lease_holder_gone = holder_gone(out->lease_host, out->lease_pid);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "reading the relay lease", err);
    sqlite3_finalize(s);
    return code;
}

/* Pending messages behind a Failed one of their aggregate, and their
 * aggregates.  Only the pending rows after the first Failed seq are
 * walked, each probing outbox_blocking: nothing when none is Failed.
 * ("+": the first Failed seq comes from outbox_blocking, the few retried
 * or failed rows, not from walking the table in seq order.) */
static const char blocked_sql[] =
    "SELECT count(*), count(DISTINCT aggregate_id) FROM outbox o"
    " WHERE o.status = 'pending'"
    " AND o.seq > (SELECT min(+seq) FROM outbox"
    "  WHERE (status = 'failed' OR attempts > 0) AND +status = 'failed')"
    " AND EXISTS (SELECT 1 FROM outbox f"
    "  WHERE f.aggregate_id = o.aggregate_id AND f.seq < o.seq"
    "  AND (f.status = 'failed' OR f.attempts > 0) AND +f.status = 'failed')";

static int sqlite_status(void *state, outbox_status *out, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    stored_version version;
    int64_t now = outbox__now_us(), rows, not_due;
    const char *what = "reading the outbox status";
    int rc, code;

    memset(out, 0, sizeof *out);
    code = sqlite_check_schema(st, err);
    if (code != OUTBOX_OK) return code;
    /* One read transaction: the numbers are one consistent snapshot. */
    code = exec_sql(st->db, "BEGIN", what, err);
    if (code != OUTBOX_OK) return code;
    code = read_version(st->db, &version, err);
    if (code != OUTBOX_OK) goto out;
    out->schema_version = version.number;

    /* Counting the pending rows one by one costs about 400 instructions
     * a row even on the outbox_pending index alone: they are all rows but
     * the sent and failed ones, and SQLite counts a whole table by its
     * pages (about 20 a row).  Only pending rows that were retried can wait
     * for a later available_at (an enqueue leaves it 0, a retry command
     * resets it with attempts): those and the retrying count come from
     * outbox_blocking, which holds only retried and failed rows. */
    code = query_int64(st->db, "SELECT count(*) FROM outbox", what, &rows, err);
    if (code != OUTBOX_OK) goto out;
    rc = sqlite3_prepare_v2(st->db,
                            "SELECT count(*), coalesce(sum(available_at > ?1), 0) FROM outbox"
                            " WHERE (status = 'failed' OR attempts > 0) AND +status = 'pending'",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, what, err);
        goto out;
    }
    sqlite3_bind_int64(s, 1, now);
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        code = db_fail(st->db, rc, what, err);
        goto out;
    }
    out->retrying = sqlite3_column_int64(s, 0);
    not_due = sqlite3_column_int64(s, 1);
    sqlite3_finalize(s);
    s = NULL;
    /* The oldest is the head of the queue: the first pending message in
     * outbox order, one probe of outbox_pending.  (The least occurred_at
     * would read every pending row: a whole backlog's pages at each count.) */
    code = query_int64(st->db,
                       "SELECT coalesce((SELECT occurred_at FROM outbox WHERE status = 'pending'"
                       " ORDER BY seq LIMIT 1), 0)",
                       what, &out->oldest_pending_us, err);
    if (code != OUTBOX_OK) goto out;

    rc = sqlite3_prepare_v2(st->db, blocked_sql, (int)sizeof blocked_sql, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, what, err);
        goto out;
    }
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        code = db_fail(st->db, rc, what, err);
        goto out;
    }
    out->blocked = sqlite3_column_int64(s, 0);
    out->aggregates_blocked = sqlite3_column_int64(s, 1);
    sqlite3_finalize(s);
    s = NULL;

    code = query_int64(st->db, "SELECT count(*) FROM outbox WHERE status = 'sent'", what,
                       &out->sent, err);
    if (code == OUTBOX_OK)
        code = query_int64(st->db, "SELECT count(*) FROM outbox WHERE status = 'failed'", what,
                           &out->failed, err);
    if (code == OUTBOX_OK) {
        out->pending = rows - out->sent - out->failed; /* status is one of the three */
        out->pending_due = out->pending - not_due;
        code = query_int64(st->db, stmt_sql[S_NEXT_DUE], what, &out->next_due_us, err);
    }
    if (code == OUTBOX_OK) code = status_lease(st, now, out, err);

out:
    sqlite3_finalize(s);
    rollback(st->db); /* ends the read transaction */
    return code;
}

static int sqlite_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                       outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    outbox_msg *m = NULL;
    char sql[512];
    int rc, code;
    int status = p ? p->status : -1;
    int64_t limit = p && p->limit > 0 ? p->limit : -1;

    if (!fn) return outbox__error(err, OUTBOX_EINVAL, "list: callback is NULL");
    if (status != -1 && status != OUTBOX_STATUS_PENDING && status != OUTBOX_STATUS_SENT &&
        status != OUTBOX_STATUS_FAILED)
        return outbox__error(err, OUTBOX_EINVAL,
                             "list: unknown status %d: use pending, sent or failed", status);
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    /* The status is a literal so the partial indexes apply. */
    if (status == -1)
        snprintf(sql, sizeof sql, "SELECT " FULL_COLUMNS " FROM outbox ORDER BY seq LIMIT ?1");
    else
        snprintf(sql, sizeof sql,
                 "SELECT " FULL_COLUMNS " FROM outbox WHERE status = '%s' ORDER BY seq LIMIT ?1",
                 outbox__status_name(status));
    rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "listing messages", err);
    sqlite3_bind_int64(s, 1, limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int stop;
        code = full_row_msg(s, &m, err);
        if (code != OUTBOX_OK) goto out;
        stop = fn(user, m);
        outbox_msg_free(m);
        m = NULL;
        if (stop) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "listing messages", err);

out:
    sqlite3_finalize(s);
    return code;
}

static int sqlite_get(void *state, const char *id, outbox_msg **msg, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    char key[37];
    int rc, code;

    *msg = NULL;
    code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(st->db, "SELECT " FULL_COLUMNS " FROM outbox WHERE " ID_IS, -1, &s,
                            NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "reading a message", err);
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        code = full_row_msg(s, msg, err);
    else if (rc == SQLITE_DONE)
        code = outbox__error(err, OUTBOX_ENOTFOUND,
                             "no message with id %s in the outbox (sent messages are deleted "
                             "unless the relay runs with --on-sent mark)",
                             key);
    else
        code = db_fail(st->db, rc, "reading a message", err);
    sqlite3_finalize(s);
    return code;
}

static int sqlite_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                        outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *sel = NULL, *upd = NULL;
    int64_t total = 0;
    size_t i;
    int rc, code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "retry: give message ids or ask for all failed messages");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    code = run(st, S_BEGIN, "starting the retry transaction", err);
    if (code != OUTBOX_OK) return code;

    if (all) {
        code = exec_sql(st->db,
                        "UPDATE outbox SET status = 'pending', attempts = 0, available_at = 0"
                        " WHERE status = 'failed'",
                        "requeueing failed messages", err);
        if (code != OUTBOX_OK) goto fail;
        total = sqlite3_changes(st->db);
    } else {
        rc = sqlite3_prepare_v2(st->db, "SELECT status FROM outbox WHERE " ID_IS, -1, &sel, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_prepare_v2(st->db,
                                    "UPDATE outbox SET status = 'pending', attempts = 0,"
                                    " available_at = 0 WHERE " ID_IS " AND status = 'failed'",
                                    -1, &upd, NULL);
        if (rc != SQLITE_OK) {
            code = db_fail(st->db, rc, "requeueing failed messages", err);
            goto fail;
        }
        for (i = 0; i < n; i++) {
            char key[37];
            code = outbox__uuid_canonical(ids[i], key, "message id", err);
            if (code != OUTBOX_OK) goto fail;
            sqlite3_bind_text(sel, 1, key, -1, SQLITE_TRANSIENT);
            rc = sqlite3_step(sel);
            if (rc == SQLITE_DONE) {
                code = outbox__error(err, OUTBOX_ENOTFOUND,
                                     "no message with id %s in the outbox: nothing was "
                                     "requeued",
                                     key);
                goto fail;
            }
            if (rc != SQLITE_ROW) {
                code = db_fail(st->db, rc, "requeueing failed messages", err);
                goto fail;
            }
            if (strcmp(col_text(sel, 0), "failed") != 0) {
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s is %s, not failed: only failed messages can "
                                     "be requeued; nothing was requeued",
                                     key, col_text(sel, 0));
                goto fail;
            }
            sqlite3_reset(sel);
            sqlite3_bind_text(upd, 1, key, -1, SQLITE_TRANSIENT);
            rc = sqlite3_step(upd);
            if (rc != SQLITE_DONE) {
                code = db_fail(st->db, rc, "requeueing failed messages", err);
                goto fail;
            }
            total += sqlite3_changes(st->db);
            sqlite3_reset(upd);
        }
        sqlite3_finalize(sel);
        sqlite3_finalize(upd);
        sel = upd = NULL;
    }
    code = run(st, S_COMMIT, "committing the retry", err);
    if (code != OUTBOX_OK) goto fail;
    if (count) *count = total;
    return OUTBOX_OK;

fail:
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    rollback(st->db);
    return code;
}

/* Appends the message in the FULL_COLUMNS row of s to (*msgs, *n, *cap). */
static int push_full_row(sqlite3_stmt *s, outbox_msg ***msgs, size_t *n, size_t *cap,
                         outbox_error *err)
{
    int code;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        outbox_msg **na = outbox__realloc(*msgs, ncap * sizeof *na);
        if (!na) return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading messages");
        *msgs = na;
        *cap = ncap;
    }
    code = full_row_msg(s, &(*msgs)[*n], err);
    if (code == OUTBOX_OK) (*n)++;
    return code;
}

/* Reads the Failed messages drop is asked for into (*msgs, *count), inside
 * its transaction: all of them, or those of ids[0..n), all or nothing. */
static int drop_select(sqlite_store *st, const char *const *ids, size_t n, int all,
                       outbox_msg ***msgs, size_t *count, outbox_error *err)
{
    const char *what = "reading the messages to drop";
    sqlite3_stmt *s = NULL;
    size_t cap = 0, i, j;
    int rc, code = OUTBOX_OK;

    rc = sqlite3_prepare_v2(st->db,
                            all ? "SELECT " FULL_COLUMNS " FROM outbox WHERE status = 'failed'"
                                  " ORDER BY seq"
                                : "SELECT " FULL_COLUMNS " FROM outbox WHERE " ID_IS,
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, what, err);
    if (all) {
        while (code == OUTBOX_OK && (rc = sqlite3_step(s)) == SQLITE_ROW)
            code = push_full_row(s, msgs, count, &cap, err);
        if (code == OUTBOX_OK && rc != SQLITE_DONE) code = db_fail(st->db, rc, what, err);
    }
    for (i = 0; !all && i < n && code == OUTBOX_OK; i++) {
        char key[37];
        code = outbox__uuid_canonical(ids[i], key, "message id", err);
        if (code != OUTBOX_OK) break;
        sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
            code = outbox__error(err, OUTBOX_ENOTFOUND,
                                 "no message with id %s in the outbox: nothing was dropped", key);
        else if (rc != SQLITE_ROW)
            code = db_fail(st->db, rc, what, err);
        else if (strcmp(col_text(s, 9), "failed") != 0)
            code = outbox__error(err, OUTBOX_EINVAL,
                                 "message %s is %s, not failed: only failed messages can be "
                                 "dropped; nothing was dropped",
                                 key, col_text(s, 9));
        else {
            for (j = 0; j < *count; j++)
                if ((*msgs)[j]->seq == sqlite3_column_int64(s, 0)) break; /* given twice */
            if (j == *count) code = push_full_row(s, msgs, count, &cap, err);
        }
        sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    return code;
}

/* Deletes Failed messages (see outbox_store_ops.drop): selects them, hands
 * them to archive, then deletes them by seq, all in one BEGIN IMMEDIATE
 * transaction. */
static int sqlite_drop(void *state, const char *const *ids, size_t n, int all,
                       outbox_drop_archive_fn archive, void *user, int64_t *count,
                       outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    outbox_msg **msgs = NULL;
    outbox_buf seqs;
    size_t nmsgs = 0, i;
    int rc, code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "drop: give message ids or ask for all failed messages");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&seqs);
    code = run(st, S_BEGIN, "starting the drop transaction", err);
    if (code != OUTBOX_OK) return code;
    code = drop_select(st, ids, n, all, &msgs, &nmsgs, err);
    if (code != OUTBOX_OK || nmsgs == 0) goto out;
    if (archive) {
        code = archive(user, msgs, nmsgs, err);
        if (code != OUTBOX_OK) goto out;
    }
    outbox__buf_append(&seqs, "[", 1);
    for (i = 0; i < nmsgs; i++)
        outbox__buf_printf(&seqs, i ? ",%lld" : "%lld", (long long)msgs[i]->seq);
    outbox__buf_append(&seqs, "]", 1);
    if (seqs.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto out;
    }
    rc = sqlite3_prepare_v2(st->db,
                            "DELETE FROM outbox WHERE status = 'failed'"
                            " AND seq IN (SELECT value FROM json_each(?1))",
                            -1, &s, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(s, 1, seqs.data, (int)seqs.len, SQLITE_STATIC);
        rc = sqlite3_step(s);
    }
    if (rc != SQLITE_DONE) {
        code = db_fail(st->db, rc, "dropping failed messages", err);
        goto out;
    }
    if (count) *count = sqlite3_changes(st->db);

out:
    sqlite3_finalize(s);
    if (code == OUTBOX_OK) code = run(st, S_COMMIT, "committing the drop", err);
    if (code != OUTBOX_OK) {
        rollback(st->db);
        if (count) *count = 0;
    }
    free_msgs(msgs, nmsgs);
    outbox__buf_free(&seqs);
    return code;
}

static int sqlite_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    int rc, code;

    if (count) *count = 0;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(st->db, "DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?1", -1,
                            &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "purging sent messages", err);
    sqlite3_bind_int64(s, 1, before_us);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        code = db_fail(st->db, rc, "purging sent messages", err);
    else if (count)
        *count = sqlite3_changes(st->db);
    sqlite3_finalize(s);
    return code;
}

static int sqlite_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                              int64_t *count, outbox_error *err)
{
    sqlite_store *st = state;
    int code;

    if (count) *count = 0;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    return outbox_inbox_purge_sqlite(st->db, retention_ms, redelivery_horizon_ms, count, err);
}

/* The SQLite store driver (scheme "sqlite"). */
const outbox_store_ops outbox__store_sqlite = {
    .version = 8,
    .scheme = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .init = sqlite_init,
    .check_schema = sqlite_check_schema,
    .enqueue = sqlite_enqueue,
    .lease_acquire = sqlite_lease_acquire,
    .lease_renew = sqlite_lease_renew,
    .lease_release = sqlite_lease_release,
    .claim = sqlite_claim,
    .complete = sqlite_complete,
    .changed = sqlite_changed,
    .next_due = sqlite_next_due,
    .wake_path = sqlite_wake_path,
    .status = sqlite_status,
    .list = sqlite_list,
    .get = sqlite_get,
    .retry = sqlite_retry,
    .purge = sqlite_purge,
    .idle = NULL, /* in-process wake-up and data_version need no hint */
    .wait_fd = NULL,
    .inbox_purge = sqlite_inbox_purge,
    .claim_pipelined = sqlite_claim_pipelined,
    .complete_pipelined = sqlite_complete_pipelined,
    .drop = sqlite_drop,
    .lease_note = sqlite_lease_note,
    .usage = "sqlite:PATH",
    .doc = "An SQLite database file: sqlite:PATH (relative or absolute) or sqlite://PATH "
           "(sqlite:///var/lib/app.db is /var/lib/app.db).  Only init creates a missing file.",
    .props = NULL,           /* the URL takes no query: a '?' is refused (sqlite_open) */
    .partitions_held = NULL, /* one relay holds the whole outbox */
    .claim_ahead = sqlite_claim_ahead,
    .claim_ahead_end = sqlite_claim_ahead_end,
    .complete_behind = sqlite_complete_behind,
    .complete_behind_end = sqlite_complete_behind_end,
};
