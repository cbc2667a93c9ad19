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
 * Ordering (guarantee 4) is done by the claim query: a due pending message
 * is claimed only when no earlier message of its aggregate is waiting in
 * backoff (or is Failed, when Failed blocks).  Only rows that were retried
 * or failed can block, and the partial index outbox_blocking holds just
 * those, so the check is free in the common case.  The relay holds the
 * lease, so claiming is a plain read; outcomes are recorded in one
 * transaction that also renews the lease, with all sent messages of a batch
 * deleted (or marked) by one statement.  A pipelined claim (the relay
 * claims the next batch while the previous one is still being published)
 * is the same read without the seqs still in flight.
 *
 * A store handle is used by one thread at a time (its statements are
 * cached in it); open one store per thread.
 *
 * The schema version lives in outbox_meta (PRAGMA user_version belongs to
 * the application that shares the database).
 */
#include "internal.h"

#include <sqlite3.h>

#include <errno.h>
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
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

#define LEASE_NAME "relay"

/* ------------------------------------------------------------------------
 * Error mapping
 * ---------------------------------------------------------------------- */

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return OUTBOX_EBUSY;
    case SQLITE_IOERR:
    case SQLITE_FULL: return OUTBOX_EIO;
    case SQLITE_NOMEM: return OUTBOX_ENOMEM;
    default: return OUTBOX_ESTORE;
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
    if (strstr(msg, "no such table") != NULL) {
        const char *path = db_path(db);
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "%s: no outbox tables in %s (%s): run `outbox init --store "
                             "sqlite:%s` or call outbox_schema_init_sqlite",
                             what, path, msg, path);
    }
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

/* Reads schema_version from outbox_meta; 0 when the table or row is absent. */
static int read_version(sqlite3 *db, int *version, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc;

    *version = 0;
    rc = sqlite3_prepare_v2(db, "SELECT value FROM outbox_meta WHERE key = 'schema_version'",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        if (strstr(sqlite3_errmsg(db), "no such table") != NULL) return OUTBOX_OK;
        return db_fail(db, rc, "reading the outbox schema version", err);
    }
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(s, 0);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) {
        int code = db_fail(db, rc, "reading the outbox schema version", err);
        sqlite3_finalize(s);
        return code;
    }
    sqlite3_finalize(s);
    return OUTBOX_OK;
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
 * db must have no transaction open. */
static int migrate(sqlite3 *db, int *from, int *to, outbox_error *err)
{
    char sql[128];
    int version = 0, v, code;

    code = exec_sql(db, "BEGIN IMMEDIATE", "starting the schema transaction", err);
    if (code != OUTBOX_OK) return code;
    code = exec_sql(db,
                    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, "
                    "value TEXT NOT NULL) WITHOUT ROWID",
                    "creating outbox_meta", err);
    if (code != OUTBOX_OK) goto fail;
    code = read_version(db, &version, err);
    if (code != OUTBOX_OK) goto fail;
    if (from) *from = version;
    if (to) *to = version;
    if (version > SCHEMA_VERSION) {
        code = outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox schema in %s is version %d, newer than version %d "
                             "known to liboutbox %s: upgrade outbox",
                             db_path(db), version, SCHEMA_VERSION, outbox_version());
        goto fail;
    }
    for (v = version; v < SCHEMA_VERSION; v++) {
        snprintf(sql, sizeof sql, "migrating the outbox schema to version %d", v + 1);
        code = exec_sql(db, migrations[v], sql, err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (version != SCHEMA_VERSION) {
        snprintf(sql, sizeof sql,
                 "INSERT OR REPLACE INTO outbox_meta (key, value) "
                 "VALUES ('schema_version', '%d')",
                 SCHEMA_VERSION);
        code = exec_sql(db, sql, "recording the outbox schema version", err);
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

static const char insert_sql[] =
    "INSERT INTO outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload, headers)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/* Maps a failed INSERT INTO outbox to the matching outbox code. */
static int insert_fail(sqlite3 *db, int rc, const outbox_msg *msg, outbox_error *err)
{
    int ext = sqlite3_extended_errcode(db);
    const char *text = sqlite3_errmsg(db);

    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
        return outbox__error(err, OUTBOX_EEXISTS,
                             "a message with id %s is already in the outbox: give each "
                             "message its own id",
                             msg->id);
    if (ext == SQLITE_CONSTRAINT_CHECK || ext == SQLITE_CONSTRAINT_NOTNULL) {
        int code = OUTBOX_EINVAL;
        if (strstr(text, "payload")) code = OUTBOX_EBADPAYLOAD;
        else if (strstr(text, "headers")) code = OUTBOX_EBADHEADERS;
        else if (strstr(text, "aggregate")) code = OUTBOX_EBADAGGREGATE;
        else if (strstr(text, "type")) code = OUTBOX_EBADTYPE;
        else if (strstr(text, "id")) code = OUTBOX_EBADID;
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
 * OUTBOX_ENOSCHEMA, OUTBOX_EEXISTS, EBAD* for a row the table's CHECKs
 * refuse, or a mapped database error; nothing is written on failure and
 * the caller's transaction stays usable.  Wakes in-process relays. */
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

/* Records (consumer, message_id) in the inbox inside the caller's open
 * transaction.  OUTBOX_OK the first time, OUTBOX_DUPLICATE afterwards (ids
 * compare case-insensitively).  OUTBOX_ENOTXN, OUTBOX_EINVAL (consumer
 * empty or with control characters), OUTBOX_EBADID, OUTBOX_ENOSCHEMA or a
 * mapped database error. */
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
                            "received_at) VALUES (?1, ?2, ?3)",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(db, rc, "preparing the inbox insert", err);
    sqlite3_bind_text(s, 1, consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, outbox__now_us());
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(db, rc, "recording the message in the inbox", err);
    else if (sqlite3_changes(db) == 0) code = OUTBOX_DUPLICATE;
    sqlite3_finalize(s);
    return code;
}

/* Deletes inbox entries older than retention_ms in a transaction of its own
 * (no transaction may be open: OUTBOX_EINVAL).  *purged (may be NULL) gets
 * the count.  Warns through the log when retention is shorter than the
 * redelivery horizon (0: the default relay options' horizon). */
int outbox_inbox_purge_sqlite(sqlite3 *db, int64_t retention_ms, int64_t redelivery_horizon_ms,
                              int64_t *purged, outbox_error *err)
{
    sqlite3_stmt *s = NULL;
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
    S_RETRY,
    S_FAIL,
    S_LEASE_RENEW,
    S_DATA_VERSION,
    S_NEXT_DUE,
    S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_CLAIM] =
        "SELECT seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
        " attempts FROM outbox o"
        " WHERE o.status = 'pending' AND o.available_at <= ?1"
        " AND NOT EXISTS (SELECT 1 FROM outbox p"
        "  WHERE p.aggregate_id = o.aggregate_id AND p.seq < o.seq"
        "  AND (p.status = 'failed' OR p.attempts > 0)"
        "  AND ((p.status = 'pending' AND p.available_at > ?1)"
        "       OR (p.status = 'failed' AND ?2)))"
        " ORDER BY o.seq LIMIT ?3",
    /* The same, without the messages in flight (?4: JSON array of seqs). */
    [S_CLAIM_PIPELINED] =
        "SELECT seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers,"
        " attempts FROM outbox o"
        " WHERE o.status = 'pending' AND o.available_at <= ?1"
        " AND o.seq NOT IN (SELECT value FROM json_each(?4))"
        " AND NOT EXISTS (SELECT 1 FROM outbox p"
        "  WHERE p.aggregate_id = o.aggregate_id AND p.seq < o.seq"
        "  AND (p.status = 'failed' OR p.attempts > 0)"
        "  AND ((p.status = 'pending' AND p.available_at > ?1)"
        "       OR (p.status = 'failed' AND ?2)))"
        " ORDER BY o.seq LIMIT ?3",
    /* ?1 is a JSON array of seqs: one statement for a whole batch. */
    [S_DELETE_MANY] = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?1))",
    [S_MARK_SENT_MANY] = "UPDATE outbox SET status = 'sent', sent_at = ?2"
                         " WHERE seq IN (SELECT value FROM json_each(?1))",
    [S_RETRY] = "UPDATE outbox SET attempts = attempts + 1, available_at = ?1, last_error = ?2"
                " WHERE seq = ?3",
    [S_FAIL] = "UPDATE outbox SET attempts = attempts + 1, status = 'failed', last_error = ?1"
               " WHERE seq = ?2",
    [S_LEASE_RENEW] = "UPDATE outbox_lease SET expires_at = ?1 WHERE name = '" LEASE_NAME "'"
                      " AND owner = ?2",
    [S_DATA_VERSION] = "PRAGMA data_version",
    /* "+status" keeps the planner on outbox_blocking (the few retried rows)
     * instead of walking every pending row through outbox_pending. */
    [S_NEXT_DUE] = "SELECT min(available_at) FROM outbox"
                   " WHERE (status = 'failed' OR attempts > 0) AND +status = 'pending'",
};

typedef struct sqlite_store {
    sqlite3 *db;        /* NULL while the database file does not exist */
    char *path;
    sqlite3_stmt *stmts[S_COUNT];
    int64_t data_version; /* -1 before the first `changed` */
    outbox_buf sent;      /* complete: JSON array of the sent seqs */
    outbox_buf exclude;   /* pipelined claim: JSON array of the seqs in flight */
} sqlite_store;

/* Returns the cached statement idx, preparing it on first use. */
static sqlite3_stmt *stmt(sqlite_store *st, int idx, int *code, outbox_error *err)
{
    int rc;
    if (st->stmts[idx]) return st->stmts[idx];
    rc = sqlite3_prepare_v3(st->db, stmt_sql[idx], -1, SQLITE_PREPARE_PERSISTENT,
                            &st->stmts[idx], NULL);
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
    int rc = sqlite3_open_v2(st->path, &db, flags, NULL);
    int code;

    if (rc != SQLITE_OK) {
        code = outbox__error(err, map_rc(rc), "cannot open the SQLite database %s: %s",
                             st->path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
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
                                 "%s is not a SQLite database: check the --store path",
                                 st->path);
        else code = db_fail(db, rc, "reading the SQLite database", err);
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

/* Makes sure the connection is open; the database file may have been
 * created by `outbox init` in another process since open. */
static int need_db(sqlite_store *st, outbox_error *err)
{
    struct stat sb;
    if (st->db) return OUTBOX_OK;
    if (stat(st->path, &sb) == 0) return connect_db(st, 0, err);
    return outbox__error(err, OUTBOX_ENOSCHEMA,
                         "no outbox database at %s: run `outbox init --store sqlite:%s`",
                         st->path, st->path);
}

static void sqlite_close(void *state)
{
    sqlite_store *st = state;
    int i;
    if (!st) return;
    for (i = 0; i < S_COUNT; i++) sqlite3_finalize(st->stmts[i]);
    outbox__buf_free(&st->sent);
    outbox__buf_free(&st->exclude);
    if (st->db && sqlite3_close(st->db) != SQLITE_OK)
        outbox__log(OUTBOX_LOG_WARN, "store.sqlite", "closing %s: %s", st->path,
                    sqlite3_errmsg(st->db));
    free(st->path);
    free(st);
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

    st = calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    st->data_version = -1;
    outbox__buf_init(&st->sent);
    outbox__buf_init(&st->exclude);
    st->path = strdup(path);
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
    return migrate(st->db, from_version, to_version, err);
}

static int sqlite_check_schema(void *state, outbox_error *err)
{
    sqlite_store *st = state;
    int version, code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    code = read_version(st->db, &version, err);
    if (code != OUTBOX_OK) return code;
    if (version == 0)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no outbox tables in %s: run `outbox init --store sqlite:%s`",
                             st->path, st->path);
    if (version > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox schema in %s is version %d, newer than version %d "
                             "known to liboutbox %s: upgrade outbox",
                             st->path, version, SCHEMA_VERSION, outbox_version());
    if (version < SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "the outbox schema in %s is version %d, older than %d: run "
                             "`outbox init --store sqlite:%s` to upgrade it",
                             st->path, version, SCHEMA_VERSION, st->path);
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

static int sqlite_lease_acquire(void *state, const char *owner, int64_t ttl_ms,
                                outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    char host[256];
    int64_t now = outbox__now_us();
    int rc, code;

    if (!owner || !*owner)
        return outbox__error(err, OUTBOX_EINVAL, "lease owner name is empty");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    host_name(host, sizeof host);
    code = run(st, S_BEGIN, "starting the lease transaction", err);
    if (code != OUTBOX_OK) return code;

    rc = sqlite3_prepare_v2(st->db,
                            "SELECT owner, pid, host, expires_at FROM outbox_lease"
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
        int free_to_take = 0;

        if (expires < now) {
            free_to_take = 1;
            outbox__log(OUTBOX_LOG_INFO, "store.sqlite",
                        "taking over the expired lease of relay %s", holder);
        } else if (strcmp(holder, owner) == 0) {
            free_to_take = 1;
        } else if (strcmp(holder_host, host) == 0 && pid > 0 &&
                   kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            free_to_take = 1;
            outbox__log(OUTBOX_LOG_INFO, "store.sqlite",
                        "taking over the lease of relay %s: its process %lld is gone", holder,
                        (long long)pid);
        }
        if (!free_to_take) {
            int64_t left = (expires - now + 999999) / 1000000;
            code = outbox__error(err, OUTBOX_ELEASED,
                                 "another relay holds this outbox (owner %s, pid %lld on host "
                                 "%s, lease expires in %llds); stop it, or pass --wait-lease "
                                 "to stand by",
                                 holder, (long long)pid, holder_host, (long long)left);
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
                            " expires_at) VALUES ('" LEASE_NAME "', ?1, ?2, ?3, ?4, ?5)"
                            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                            " pid = excluded.pid, host = excluded.host,"
                            " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at",
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

/* Sets our lease's expiry; OUTBOX_ELEASELOST when the row is not ours. */
static int renew(sqlite_store *st, const char *owner, int64_t expires, outbox_error *err)
{
    int code = OUTBOX_OK, rc;
    sqlite3_stmt *s = stmt(st, S_LEASE_RENEW, &code, err);
    if (!s) return code;
    sqlite3_bind_int64(s, 1, expires);
    sqlite3_bind_text(s, 2, owner, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "renewing the relay lease", err);
    else if (sqlite3_changes(st->db) == 0)
        code = outbox__error(err, OUTBOX_ELEASELOST,
                             "the relay lease of %s was taken over by another relay "
                             "(its lease expired or it judged this process dead)",
                             owner);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

static int sqlite_lease_renew(void *state, const char *owner, int64_t ttl_ms,
                              outbox_error *err)
{
    sqlite_store *st = state;
    int code;
    if (!owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is NULL");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    return renew(st, owner, outbox__now_us() + ttl_ms * 1000, err);
}

static int sqlite_lease_release(void *state, const char *owner, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    int rc, code;

    if (!owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is NULL");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(st->db,
                            "DELETE FROM outbox_lease WHERE name = '" LEASE_NAME "'"
                            " AND owner = ?1",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "releasing the relay lease", err);
    sqlite3_bind_text(s, 1, owner, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    code = rc == SQLITE_DONE ? OUTBOX_OK : db_fail(st->db, rc, "releasing the relay lease", err);
    sqlite3_finalize(s);
    return code;
}

/* ------------------------------------------------------------------------
 * Claim and complete (the relay's hot path)
 * ---------------------------------------------------------------------- */

/* Builds a message from columns 0..8 (seq .. attempts) of s. */
static int row_msg(sqlite3_stmt *s, outbox_msg **out, outbox_error *err)
{
    int code = outbox__msg_from_row(out, sqlite3_column_int64(s, 0), col_text(s, 1),
                                    sqlite3_column_int64(s, 2), col_text(s, 3),
                                    col_text(s, 4), col_text(s, 5), col_text(s, 6),
                                    col_text(s, 7), err);
    if (code != OUTBOX_OK) return code;
    (*out)->attempts = sqlite3_column_int(s, 8);
    (*out)->status = OUTBOX_STATUS_PENDING;
    return OUTBOX_OK;
}

static void free_msgs(outbox_msg **msgs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) outbox_msg_free(msgs[i]);
    free(msgs);
}

/* The plain claim, or (pipelined) the same read without the seqs in
 * exclude. */
static int claim(void *state, const outbox_claim_params *p, int pipelined, const int64_t *exclude,
                 size_t exclude_count, outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s;
    outbox_msg **arr = NULL;
    size_t count = 0, cap = 0;
    int rc, code;

    *msgs = NULL;
    *n = 0;
    if (!p || p->batch_size == 0)
        return outbox__error(err, OUTBOX_EINVAL, "claim: batch_size must be at least 1");
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    if (pipelined) {
        /* The relay is alone (lease): claiming is a plain read, so only
         * the messages still in flight need excluding. */
        size_t i;
        outbox__buf_reset(&st->exclude);
        outbox__buf_append(&st->exclude, "[", 1);
        for (i = 0; i < exclude_count; i++)
            outbox__buf_printf(&st->exclude, i ? ",%lld" : "%lld", (long long)exclude[i]);
        outbox__buf_append(&st->exclude, "]", 1);
        if (st->exclude.oom)
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming messages");
    }
    s = stmt(st, pipelined ? S_CLAIM_PIPELINED : S_CLAIM, &code, err);
    if (!s) return code;
    sqlite3_bind_int64(s, 1, p->now_us);
    sqlite3_bind_int(s, 2, p->failed_blocks_aggregate ? 1 : 0);
    sqlite3_bind_int64(s, 3, p->batch_size > INT64_MAX ? INT64_MAX : (int64_t)p->batch_size);
    if (pipelined)
        sqlite3_bind_text(s, 4, st->exclude.data, (int)st->exclude.len, SQLITE_STATIC);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : (p->batch_size < 64 ? p->batch_size : 64);
            outbox_msg **na = realloc(arr, ncap * sizeof *na);
            if (!na) {
                code = outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming messages");
                goto fail;
            }
            arr = na;
            cap = ncap;
        }
        code = row_msg(s, &arr[count], err);
        if (code != OUTBOX_OK) goto fail;
        count++;
    }
    if (rc != SQLITE_DONE) {
        code = db_fail(st->db, rc, "claiming messages", err);
        goto fail;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    *msgs = arr;
    *n = count;
    return OUTBOX_OK;

fail:
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    free_msgs(arr, count);
    return code;
}

static int sqlite_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs,
                        size_t *n, outbox_error *err)
{
    return claim(state, p, 0, NULL, 0, msgs, n, err);
}

static int sqlite_claim_pipelined(void *state, const outbox_claim_params *p,
                                  const int64_t *exclude, size_t exclude_count,
                                  outbox_msg ***msgs, size_t *n, outbox_error *err)
{
    return claim(state, p, 1, exclude, exclude_count, msgs, n, err);
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

/* Deletes or marks every sent message (their seqs are the JSON array in
 * st->sent) with one statement. */
static int record_sent(sqlite_store *st, const outbox_complete_params *p, outbox_error *err)
{
    sqlite3_stmt *s;
    int code = OUTBOX_OK, rc;
    int mark = p->on_sent == OUTBOX_ON_SENT_MARK;

    if (!(s = stmt(st, mark ? S_MARK_SENT_MANY : S_DELETE_MANY, &code, err))) return code;
    sqlite3_bind_text(s, 1, st->sent.data, (int)st->sent.len, SQLITE_STATIC);
    if (mark) sqlite3_bind_int64(s, 2, p->now_us);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "recording sent messages", err);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return code;
}

/* One transaction: renew the lease (when asked), then RETRY/FAILED rows one
 * statement each (they are few), then all SENT rows in one statement. */
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
            return outbox__error(err, OUTBOX_EINVAL, "complete: completion %zu has no message",
                                 i);
        if (c[i].outcome < OUTBOX_OUTCOME_SENT || c[i].outcome > OUTBOX_OUTCOME_UNSENT)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "complete: unknown outcome %d for message %s", c[i].outcome,
                                 c[i].msg->id);
    }
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;

    outbox__buf_reset(&st->sent);
    outbox__buf_append(&st->sent, "[", 1);
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_SENT) continue;
        outbox__buf_printf(&st->sent, sent++ ? ",%lld" : "%lld", (long long)c[i].msg->seq);
    }
    outbox__buf_append(&st->sent, "]", 1);
    if (st->sent.oom)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording message outcomes");

    code = run(st, S_BEGIN, "starting the completion transaction", err);
    if (code != OUTBOX_OK) return code;
    if (p->lease_owner) {
        code = renew(st, p->lease_owner, p->now_us + p->lease_ttl_ms * 1000, err);
        if (code != OUTBOX_OK) goto fail;
    }
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_RETRY && c[i].outcome != OUTBOX_OUTCOME_FAILED)
            continue;
        code = record(st, &c[i], err);
        if (code != OUTBOX_OK) goto fail;
        written++;
    }
    if (sent > 0) {
        code = record_sent(st, p, err);
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

#define FULL_COLUMNS                                                                  \
    "seq, id, occurred_at, type, aggregate_type, aggregate_id, payload, headers, attempts," \
    " status, available_at, last_error, sent_at"

/* Builds a message with its bookkeeping fields from FULL_COLUMNS of s. */
static int full_row_msg(sqlite3_stmt *s, outbox_msg **out, outbox_error *err)
{
    outbox_msg *m = NULL;
    const unsigned char *last_error;
    int code = row_msg(s, &m, err);
    if (code != OUTBOX_OK) return code;
    m->status = outbox__status_parse(col_text(s, 9));
    m->available_at = sqlite3_column_int64(s, 10);
    last_error = sqlite3_column_text(s, 11);
    if (last_error) {
        m->last_error = strdup((const char *)last_error);
        if (!m->last_error) {
            outbox_msg_free(m);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a message");
        }
    }
    m->sent_at = sqlite3_column_int64(s, 12);
    *out = m;
    return OUTBOX_OK;
}

/* Runs a one-row query with up to one int64 parameter; *out = column 0. */
static int scalar(sqlite_store *st, const char *sql, const int64_t *arg, int64_t *out,
                  outbox_error *err)
{
    sqlite3_stmt *s = NULL;
    int rc, code = OUTBOX_OK;

    *out = 0;
    rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "reading the outbox status", err);
    if (arg) sqlite3_bind_int64(s, 1, *arg);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(s, 0);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "reading the outbox status", err);
    sqlite3_finalize(s);
    return code;
}

static int sqlite_status(void *state, outbox_status *out, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    int64_t now = outbox__now_us();
    int rc, code, version;

    memset(out, 0, sizeof *out);
    code = sqlite_check_schema(st, err);
    if (code != OUTBOX_OK) return code;
    /* One read transaction: the numbers are one consistent snapshot. */
    code = exec_sql(st->db, "BEGIN", "reading the outbox status", err);
    if (code != OUTBOX_OK) return code;
    code = read_version(st->db, &version, err);
    if (code != OUTBOX_OK) goto out;
    out->schema_version = version;

    rc = sqlite3_prepare_v2(st->db,
                            "SELECT count(*), coalesce(sum(available_at <= ?1), 0),"
                            " coalesce(sum(attempts > 0), 0), coalesce(min(occurred_at), 0)"
                            " FROM outbox WHERE status = 'pending'",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, "reading the outbox status", err);
        goto out;
    }
    sqlite3_bind_int64(s, 1, now);
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        code = db_fail(st->db, rc, "reading the outbox status", err);
        goto out;
    }
    out->pending = sqlite3_column_int64(s, 0);
    out->pending_due = sqlite3_column_int64(s, 1);
    out->retrying = sqlite3_column_int64(s, 2);
    out->oldest_pending_us = sqlite3_column_int64(s, 3);
    sqlite3_finalize(s);
    s = NULL;

    code = scalar(st, "SELECT count(*) FROM outbox WHERE status = 'sent'", NULL, &out->sent,
                  err);
    if (code != OUTBOX_OK) goto out;
    code = scalar(st, "SELECT count(*) FROM outbox WHERE status = 'failed'", NULL,
                  &out->failed, err);
    if (code != OUTBOX_OK) goto out;
    code = scalar(st, stmt_sql[S_NEXT_DUE], NULL, &out->next_due_us, err);
    if (code != OUTBOX_OK) goto out;

    rc = sqlite3_prepare_v2(st->db,
                            "SELECT owner, expires_at FROM outbox_lease"
                            " WHERE name = '" LEASE_NAME "' AND expires_at >= ?1",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(st->db, rc, "reading the relay lease", err);
        goto out;
    }
    sqlite3_bind_int64(s, 1, now);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        snprintf(out->lease_owner, sizeof out->lease_owner, "%s", col_text(s, 0));
        out->lease_expires_us = sqlite3_column_int64(s, 1);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "reading the relay lease", err);

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
    rc = sqlite3_prepare_v2(st->db, "SELECT " FULL_COLUMNS " FROM outbox WHERE id = ?1", -1, &s,
                            NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "reading a message", err);
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) code = full_row_msg(s, msg, err);
    else if (rc == SQLITE_DONE)
        code = outbox__error(err, OUTBOX_ENOTFOUND,
                             "no message with id %s in the outbox (sent messages are deleted "
                             "unless the relay runs with on_sent=mark)",
                             key);
    else code = db_fail(st->db, rc, "reading a message", err);
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
        rc = sqlite3_prepare_v2(st->db, "SELECT status FROM outbox WHERE id = ?1", -1, &sel,
                                NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_prepare_v2(st->db,
                                    "UPDATE outbox SET status = 'pending', attempts = 0,"
                                    " available_at = 0 WHERE id = ?1 AND status = 'failed'",
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

static int sqlite_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err)
{
    sqlite_store *st = state;
    sqlite3_stmt *s = NULL;
    int rc, code;

    if (count) *count = 0;
    code = need_db(st, err);
    if (code != OUTBOX_OK) return code;
    rc = sqlite3_prepare_v2(st->db, "DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?1",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(st->db, rc, "purging sent messages", err);
    sqlite3_bind_int64(s, 1, before_us);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) code = db_fail(st->db, rc, "purging sent messages", err);
    else if (count) *count = sqlite3_changes(st->db);
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
    4, /* no idle/wait_fd (NULL); pipelined claims */
    "sqlite",
    sqlite_open,
    sqlite_close,
    sqlite_init,
    sqlite_check_schema,
    sqlite_enqueue,
    sqlite_lease_acquire,
    sqlite_lease_renew,
    sqlite_lease_release,
    sqlite_claim,
    sqlite_complete,
    sqlite_changed,
    sqlite_next_due,
    sqlite_wake_path,
    sqlite_status,
    sqlite_list,
    sqlite_get,
    sqlite_retry,
    sqlite_purge,
    NULL, /* idle: in-process wake-up and data_version need no hint */
    NULL, /* wait_fd */
    sqlite_inbox_purge,
    sqlite_claim_pipelined,
    sqlite_complete_pipelined,
    NULL, /* drop */
    NULL, /* lease_note */
};
