/*
 * pg_caller.c - the public PostgreSQL functions of outbox.h, on the
 * caller's PGconn (borrowed) and inside the caller's transaction: enqueue
 * and emit to the WAL, either with the COMMIT in one round trip through
 * libpq's pipeline mode, the inbox (record, purge) and schema init.  The
 * design is in docs/POSTGRES.md.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Creates or upgrades the outbox schema (NULL: "outbox") on the caller's
 * connection (borrowed), in a transaction of its own: OUTBOX_EINVAL when a
 * transaction is open, OUTBOX_ECONFIG for a bad schema name,
 * OUTBOX_ESCHEMANEWER, or a mapped database error. */
int outbox_schema_init_pg(PGconn *conn, const char *schema, outbox_error *err)
{
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_schema_init_pg: conn is NULL");
    if (!schema) schema = DEFAULT_SCHEMA;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_schema_init_pg runs its own transaction: call it with no "
                             "transaction open (COMMIT or ROLLBACK first)");
    return outbox__pg_migrate(conn, schema, 0, NULL, NULL, err);
}

/* ------------------------------------------------------------------------
 * Enqueue and inbox on the caller's connection
 * ---------------------------------------------------------------------- */

/* The insert used by outbox_enqueue_pg and the driver: ON CONFLICT DO
 * NOTHING, so a duplicate id is reported without aborting the caller's
 * transaction.  Parameters: id, occurred_at (unix us), type, aggregate_type,
 * aggregate_id, payload, headers. */
static const char insert_tmpl[] =
    "INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
    " $3, $4, $5, $6::jsonb, $7::jsonb) ON CONFLICT (id) DO NOTHING RETURNING seq";

/* The insert used by outbox_enqueue_commit_pg: the same row, but a
 * duplicate id raises unique_violation, which aborts the pipeline before
 * its COMMIT (an ON CONFLICT DO NOTHING would let the COMMIT run without
 * the message).  Nothing is returned, so it needs only INSERT rights. */
static const char insert_commit_tmpl[] =
    "INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
    " $3, $4, $5, $6::jsonb, $7::jsonb)";

/* Which (connection, backend, statement name) is already prepared: a small
 * process-wide ring.  The names carry the schema.  A miss only costs a
 * catalog look-up. */
#define PREPARED_SLOTS 64
static struct {
    const PGconn *conn;
    int backend_pid;
    char name[96];
} prepared[PREPARED_SLOTS];
static unsigned prepared_next;
static pthread_mutex_t prepared_lock = PTHREAD_MUTEX_INITIALIZER;

static int prepared_known(const PGconn *conn, int pid, const char *name)
{
    int i, found = 0;
    pthread_mutex_lock(&prepared_lock);
    for (i = 0; i < PREPARED_SLOTS && !found; i++)
        found = prepared[i].conn == conn && prepared[i].backend_pid == pid &&
                strcmp(prepared[i].name, name) == 0;
    pthread_mutex_unlock(&prepared_lock);
    return found;
}

static void prepared_remember(const PGconn *conn, int pid, const char *name)
{
    unsigned i;
    pthread_mutex_lock(&prepared_lock);
    i = prepared_next++ % PREPARED_SLOTS;
    prepared[i].conn = conn;
    prepared[i].backend_pid = pid;
    snprintf(prepared[i].name, sizeof prepared[i].name, "%s", name);
    pthread_mutex_unlock(&prepared_lock);
}

/* Makes sure the template tmpl (nparams parameters) is prepared on conn as
 * `stmt_name`, and, when it is not yet known to be, that the schema holds
 * `table` and is not newer than this build (once per connection, like
 * the statement).  Checks the catalog first (queries that cannot fail in a
 * healthy transaction), so a missing schema gives ENOSCHEMA and a newer one
 * ESCHEMANEWER without aborting the caller's transaction. */
static int ensure_prepared(PGconn *conn, const char *schema, const char *stmt_name,
                           const char *tmpl, int nparams, const char *table_name, outbox_error *err)
{
    char qschema[160], table[200];
    const char *params[2];
    PGresult *res;
    outbox_buf b;
    int pid = PQbackendPID(conn), have, exists, code;

    if (prepared_known(conn, pid, stmt_name)) return OUTBOX_OK;
    code = outbox__pg_quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    snprintf(table, sizeof table, "%s.%s", qschema, table_name);
    params[0] = stmt_name;
    params[1] = table;
    res = PQexecParams(conn,
                       "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name = $1),"
                       " to_regclass($2) IS NOT NULL",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(conn, res, "checking the outbox schema", err);
        PQclear(res);
        return code;
    }
    have = outbox__pg_parse_i64(PQgetvalue(res, 0, 0)) > 0;
    exists = PQgetvalue(res, 0, 1)[0] == 't';
    PQclear(res);
    if (!exists)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no %s table %s.%s in this database: run `outbox init "
                             "--store postgres://...?schema=%s` or call outbox_schema_init_pg",
                             table_name, schema, table_name, schema);
    code = outbox__pg_refuse_newer_schema(conn, schema, qschema, err);
    if (code != OUTBOX_OK) return code;
    if (!have) {
        outbox__buf_init(&b);
        outbox__pg_expand(&b, tmpl, qschema, schema, 0);
        if (b.oom) {
            outbox__buf_free(&b);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory preparing a statement");
        }
        res = PQprepare(conn, stmt_name, b.data, nparams, NULL);
        outbox__buf_free(&b);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            code = outbox__pg_fail(conn, res, "preparing a statement", err);
            PQclear(res);
            return code;
        }
        PQclear(res);
    }
    prepared_remember(conn, pid, stmt_name);
    return OUTBOX_OK;
}

/* OUTBOX_OK when conn is in an open transaction that has not failed;
 * otherwise OUTBOX_ENOTXN naming function fn (idle: what fn needs, for a
 * connection outside a transaction). */
static int require_txn(PGconn *conn, const char *fn, const char *idle, outbox_error *err)
{
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        return OUTBOX_OK;
    case PQTRANS_INERROR:
        return outbox__error(err, OUTBOX_ENOTXN,
                             "%s: the caller's transaction has already failed (an earlier "
                             "statement raised an error): ROLLBACK and retry",
                             fn);
    case PQTRANS_IDLE:
        return outbox__error(err, OUTBOX_ENOTXN, "%s %s", fn, idle);
    default:
        return outbox__error(err, OUTBOX_ENOTXN,
                             "%s: the connection is busy or broken (transaction status %d): "
                             "finish the running command first",
                             fn, (int)PQtransactionStatus(conn));
    }
}

/* The seven parameters of the prepared insert of msg (occurred: room for
 * the timestamp's text). */
static void insert_params(const outbox_msg *msg, const char *params[7], char occurred[32])
{
    snprintf(occurred, 32, "%lld", (long long)msg->occurred_at);
    params[0] = msg->id;
    params[1] = occurred;
    params[2] = msg->type;
    params[3] = msg->aggregate_type ? msg->aggregate_type : "";
    params[4] = msg->aggregate_id;
    params[5] = msg->payload ? msg->payload : "{}";
    params[6] = msg->headers_json ? msg->headers_json : "{}";
}

/* Runs the prepared insert of msg on conn (statement stmt_name). */
static int insert_msg(PGconn *conn, const char *stmt_name, const outbox_msg *msg, outbox_error *err)
{
    const char *params[7];
    char occurred[32];
    PGresult *res;
    int code = OUTBOX_OK;

    insert_params(msg, params, occurred);
    res = PQexecPrepared(conn, stmt_name, 7, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        code = outbox__pg_fail(conn, res, "inserting into the outbox", err);
    else if (PQntuples(res) == 0)
        code = outbox__error(err, OUTBOX_EEXISTS,
                             "a message with id %s is already in the outbox: give each message "
                             "its own id",
                             msg->id);
    PQclear(res);
    return code;
}

static void stmt_name_for(const char *schema, char *out, size_t len)
{
    snprintf(out, len, "outbox_enqueue.%s", schema);
}

/* The checks of a call that adds msg to the caller's open transaction
 * (function fn): the arguments, the schema name (*schema NULL: the
 * default), the transaction and the message's size.  Sends nothing. */
static int check_call(PGconn *conn, const char **schema, const outbox_msg *msg, const char *fn,
                      outbox_error *err)
{
    int code;
    if (!conn || !msg)
        return outbox__error(err, OUTBOX_EINVAL, "%s: %s is NULL", fn, conn ? "msg" : "conn");
    if (!*schema) *schema = DEFAULT_SCHEMA;
    if (!outbox__pg_valid_schema(*schema)) return outbox__pg_schema_error(*schema, err);
    code = require_txn(conn, fn,
                       "needs an open transaction (BEGIN ... COMMIT) so the message commits "
                       "with your business change",
                       err);
    if (code != OUTBOX_OK) return code;
    return outbox__msg_check_size(msg, err);
}

/* Inserts msg into schema's outbox inside the caller's open transaction
 * (conn, schema and msg borrowed).  OUTBOX_ENOTXN without a transaction,
 * OUTBOX_ECONFIG for a bad schema name, OUTBOX_ETOOBIG, OUTBOX_ENOSCHEMA,
 * OUTBOX_EEXISTS, or a mapped database error.  Duplicate ids and a missing
 * schema leave the caller's transaction usable. */
int outbox_enqueue_pg_schema(PGconn *conn, const char *schema, const outbox_msg *msg,
                             outbox_error *err)
{
    char name[96];
    int code = check_call(conn, &schema, msg, "outbox_enqueue_pg", err);
    if (code != OUTBOX_OK) return code;
    stmt_name_for(schema, name, sizeof name);
    code = ensure_prepared(conn, schema, name, insert_tmpl, 7, "outbox", err);
    if (code != OUTBOX_OK) return code;
    return insert_msg(conn, name, msg, err);
}

/* outbox_enqueue_pg_schema with the default schema "outbox". */
int outbox_enqueue_pg(PGconn *conn, const outbox_msg *msg, outbox_error *err)
{
    return outbox_enqueue_pg_schema(conn, DEFAULT_SCHEMA, msg, err);
}

/* ------------------------------------------------------------------------
 * Enqueue (or emit) and commit in one round trip
 *
 * The caller's transaction is open (BEGIN and the business statements have
 * run).  The n prepared statements (INSERTs, or emits to the WAL) and a
 * COMMIT go out as one pipeline with one Sync, so the client waits for the
 * server once.  The extended protocol skips every statement after an error
 * up to the Sync: a failed statement means the COMMIT never runs and the
 * transaction stays open in the failed state (the caller rolls it back),
 * so a business change cannot commit without its messages.  The INSERT
 * has no ON CONFLICT: a duplicate id is an error and aborts the pipeline
 * like any other.
 *
 * libpq stays in blocking mode: while its output is flushed it also reads
 * what the server sends, so a long pipeline cannot deadlock on full socket
 * buffers.  Every path leaves pipeline mode again; only a broken
 * connection cannot (libpq refuses while the lost results are queued), and
 * such a connection has to be reset or closed anyway.
 * ---------------------------------------------------------------------- */

/* Whether an error result ended the session (FATAL or PANIC, or the
 * connection is gone). */
static int fatal_result(const PGconn *conn, const PGresult *res)
{
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return PQstatus(conn) == CONNECTION_BAD ||
           (severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0));
}

/* Sends msg's INSERT into the pipeline (queued, not yet flushed). */
static int send_insert(PGconn *conn, const char *stmt_name, const outbox_msg *msg)
{
    const char *params[7];
    char occurred[32];

    insert_params(msg, params, occurred);
    return PQsendQueryPrepared(conn, stmt_name, 7, params, NULL, NULL, 0);
}

/* How a committing call writes its messages: its name (fn, in errors),
 * what it does to one ("inserting"), how it prepares its statement
 * `<stmt>.<schema>` on conn (prepare: ensure_prepared's checks first) and
 * sends it for one message into the pipeline (send: 0 when it could not). */
typedef struct commit_kind {
    const char *fn;
    const char *verb;
    const char *stmt;
    int (*prepare)(PGconn *conn, const char *schema, const char *name, outbox_error *err);
    int (*send)(PGconn *conn, const char *stmt_name, const outbox_msg *msg);
} commit_kind;

/* Writes msgs[0..n) as the last statements of the caller's open
 * transaction and commits it, in one round trip (see above).  See
 * outbox.h (outbox_enqueue_commit_pg) for the outcomes. */
static int commit_pipeline(const commit_kind *kind, PGconn *conn, const char *schema,
                           const outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    char name[96], what[200];
    size_t i, sent = 0, results = 0;
    int code = OUTBOX_OK, commit_sent = 0, committed = 0, synced = 0, failed = 0;
    const char *fn = kind->fn;
    PGresult *res;

    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "%s: conn is NULL", fn);
    if (n > 0 && !msgs)
        return outbox__error(err, OUTBOX_EINVAL, "%s: msgs is NULL with n = %zu", fn, n);
    for (i = 0; i < n; i++)
        if (!msgs[i])
            return outbox__error(err, OUTBOX_EINVAL, "%s: msgs[%zu] is NULL (n = %zu)", fn, i, n);
    if (!schema) schema = DEFAULT_SCHEMA;
    if (!outbox__pg_valid_schema(schema)) return outbox__pg_schema_error(schema, err);
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: the connection is in pipeline mode: collect its results and "
                             "call PQexitPipelineMode first",
                             fn);
    code = require_txn(conn, fn,
                       "needs an open transaction (BEGIN and your business statements) to add "
                       "the messages to and commit",
                       err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < n; i++) {
        code = outbox__msg_check_size(msgs[i], err);
        if (code != OUTBOX_OK) return code;
    }
    snprintf(name, sizeof name, "%s.%s", kind->stmt, schema);
    if (n > 0) {
        /* Once per connection, outside the pipeline; the transaction stays
         * usable when this fails. */
        code = kind->prepare(conn, schema, name, err);
        if (code != OUTBOX_OK) return code;
    }

    if (!PQenterPipelineMode(conn)) {
        snprintf(what, sizeof what, "%s: entering pipeline mode", fn);
        return outbox__pg_fail(conn, NULL, what, err);
    }
    for (i = 0; i < n; i++) {
        if (!kind->send(conn, name, msgs[i])) {
            snprintf(what, sizeof what, "%s: sending message %zu of %zu, nothing was committed", fn,
                     i + 1, n);
            code = outbox__pg_fail(conn, NULL, what, err);
            failed = 1;
            break;
        }
        sent++;
    }
    if (!failed && OUTBOX_FAULT("pg_enqueue_before_commit") != 0) {
        code = outbox__error(err, OUTBOX_EFAULT,
                             "%s: fault injected before COMMIT; nothing was committed: ROLLBACK "
                             "the transaction",
                             fn);
        failed = 1;
    }
    if (!failed) {
        if (PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0)) {
            commit_sent = 1;
            sent++;
        } else {
            snprintf(what, sizeof what, "%s: sending COMMIT, nothing was committed", fn);
            code = outbox__pg_fail(conn, NULL, what, err);
            failed = 1;
        }
    }
    /* The Sync ends the pipeline (and flushes it), also after a failed
     * send, so that what was sent can be drained. */
    if (!PQpipelineSync(conn)) {
        if (!failed) {
            snprintf(what, sizeof what, "%s: sending the pipeline%s", fn,
                     commit_sent ? "; whether the transaction committed is unknown" : "");
            code = outbox__pg_fail(conn, NULL, what, err);
        }
        failed = 1;
        goto out;
    }

    /* Each statement's results end with a NULL; then comes the Sync. */
    while (!synced) {
        res = PQgetResult(conn);
        if (!res) {
            if (PQstatus(conn) == CONNECTION_BAD || ++results > sent) break;
            continue;
        }
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC:
            synced = 1;
            break;
        case PGRES_PIPELINE_ABORTED:
            break; /* skipped after an error */
        case PGRES_TUPLES_OK:
            break; /* an emit's position in the WAL */
        case PGRES_COMMAND_OK:
            if (commit_sent && results == n) {
                if (strcmp(PQcmdStatus(res), "COMMIT") == 0) {
                    committed = 1;
                } else if (!failed) {
                    code = outbox__error(err, OUTBOX_ESTORE,
                                         "%s: COMMIT answered %s: the transaction was rolled "
                                         "back, nothing was committed",
                                         fn, PQcmdStatus(res));
                    failed = 1;
                }
            }
            break;
        default:
            if (!failed) {
                /* An error without SQLSTATE comes from libpq (the
                 * connection broke): the server may have run more. */
                if (!PQresultErrorField(res, PG_DIAG_SQLSTATE))
                    snprintf(what, sizeof what, "%s: %s", fn,
                             commit_sent ? "whether the transaction committed is unknown"
                                         : "nothing was committed");
                else if (results < n)
                    snprintf(what, sizeof what,
                             "%s: %s message %zu of %zu (id %s); nothing was committed "
                             "(ROLLBACK the transaction)",
                             fn, kind->verb, results + 1, n, msgs[results]->id);
                else if (fatal_result(conn, res))
                    /* E.g. terminated while waiting for a synchronous
                     * standby: committed locally, or not. */
                    snprintf(what, sizeof what,
                             "%s: the session ended during COMMIT; whether the transaction "
                             "committed is unknown",
                             fn);
                else
                    snprintf(what, sizeof what,
                             "%s: COMMIT failed and the transaction was rolled back", fn);
                code = outbox__pg_fail(conn, res, what, err);
                failed = 1;
            }
            break;
        }
        PQclear(res);
    }
    if (!synced && !failed && !committed) {
        /* The connection broke before the pipeline's results arrived (a
         * COMMIT confirmed before that stays OUTBOX_OK). */
        snprintf(what, sizeof what, "%s: %s", fn,
                 commit_sent ? "waiting for COMMIT; whether the transaction committed is unknown"
                             : "nothing was committed");
        code = outbox__pg_fail(conn, NULL, what, err);
    }

out:
    /* Fails only with results left unread, i.e. on a broken connection,
     * which the outcome above already reports (a COMMIT confirmed before
     * the break stays OUTBOX_OK). */
    if (!PQexitPipelineMode(conn)) {
        char buf[300];
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "%s: could not leave pipeline mode: %s", fn,
                    outbox__pg_message(PQerrorMessage(conn), buf, sizeof buf));
    }
    if (code == OUTBOX_OK && !committed)
        code = outbox__error(err, OUTBOX_ESTORE, "%s: the server did not confirm the COMMIT", fn);
    return code;
}

static int prepare_insert_commit(PGconn *conn, const char *schema, const char *name,
                                 outbox_error *err)
{
    return ensure_prepared(conn, schema, name, insert_commit_tmpl, 7, "outbox", err);
}

/* Enqueues msgs[0..n) as the last statements of the caller's open
 * transaction and commits it, in one round trip (see above).  See
 * outbox.h for the outcomes. */
int outbox_enqueue_commit_pg(PGconn *conn, const char *schema, const outbox_msg *const *msgs,
                             size_t n, outbox_error *err)
{
    static const commit_kind enqueue = {"outbox_enqueue_commit_pg", "inserting",
                                        "outbox_enqueue_commit", prepare_insert_commit,
                                        send_insert};
    return commit_pipeline(&enqueue, conn, schema, msgs, n, err);
}

/* ------------------------------------------------------------------------
 * Emit to the WAL
 *
 * The message goes into the WAL as a transactional logical decoding
 * message (pg_logical_emit_message): it commits or rolls back with the
 * caller's transaction and writes no table.  The content is built here, in
 * the encoding <schema>.emit writes (docs/WAL.md), and sent as one text
 * parameter: building it on the server from the seven fields costs that
 * server about 9 us more per message (the JSON parsed and printed again).
 * The payload goes as the caller gave it (validated JSON); the headers as
 * PostgreSQL prints a jsonb object (they hold no control characters, so
 * JSON's escapes of '"' and '\' are jsonb's), so that a message whose
 * payload is written that way has the same bytes from both.
 * ---------------------------------------------------------------------- */

static const char emit_tmpl[] = "SELECT pg_logical_emit_message(true, 'outbox:{n}', $1::text)";

static void put_netstring(outbox_buf *b, const char *s, size_t n)
{
    outbox__buf_printf(b, "%zu:", n);
    outbox__buf_append(b, s, n);
    outbox__buf_append(b, ",", 1);
}

typedef struct header_pair {
    const char *name, *value;
} header_pair;

/* jsonb's key order: shorter first, then by bytes. */
static int jsonb_key_order(const void *a, const void *b)
{
    const char *x = ((const header_pair *)a)->name, *y = ((const header_pair *)b)->name;
    size_t nx = strlen(x), ny = strlen(y);
    if (nx != ny) return nx < ny ? -1 : 1;
    return memcmp(x, y, nx);
}

/* The WAL content of msg (version 1: "v1" and seven netstrings) into b;
 * b->oom on allocation failure. */
static void wal_content(outbox_buf *b, const outbox_msg *msg)
{
    outbox_buf h;
    char us[32];
    size_t i, n = msg->header_count;
    header_pair *order = n ? malloc(n * sizeof *order) : NULL;

    outbox__buf_init(&h);
    outbox__buf_append(&h, "{", 1);
    if (n && !order) {
        b->oom = 1;
    } else {
        for (i = 0; i < n; i++) {
            order[i].name = msg->header_names[i];
            order[i].value = msg->header_values[i];
        }
        if (n) qsort(order, n, sizeof *order, jsonb_key_order);
        for (i = 0; i < n; i++) {
            if (i) outbox__buf_append(&h, ", ", 2);
            outbox__buf_json_string(&h, order[i].name);
            outbox__buf_append(&h, ": ", 2);
            outbox__buf_json_string(&h, order[i].value);
        }
    }
    outbox__buf_append(&h, "}", 1);
    snprintf(us, sizeof us, "%lld", (long long)msg->occurred_at);
    outbox__buf_append(b, "v1", 2);
    put_netstring(b, msg->id, strlen(msg->id));
    put_netstring(b, msg->type, strlen(msg->type));
    put_netstring(b, msg->aggregate_type ? msg->aggregate_type : "",
                  msg->aggregate_type ? strlen(msg->aggregate_type) : 0);
    put_netstring(b, msg->aggregate_id, strlen(msg->aggregate_id));
    put_netstring(b, us, strlen(us));
    put_netstring(b, h.data ? h.data : "{}", h.data ? h.len : 2);
    put_netstring(b, msg->payload ? msg->payload : "{}", msg->payload ? strlen(msg->payload) : 2);
    if (h.oom) b->oom = 1;
    outbox__buf_free(&h);
    free(order);
}

/* ensure_prepared for the emit statement, and, the first time on this
 * connection, a refusal of a server whose wal_level is below logical: no
 * slot could decode what it emits (the setting needs a restart, which ends
 * the connection).  Leaves the caller's transaction usable. */
static int prepare_emit(PGconn *conn, const char *schema, const char *name, outbox_error *err)
{
    PGresult *res;
    int code = OUTBOX_OK;

    if (!prepared_known(conn, PQbackendPID(conn), name)) {
        res = PQexec(conn, "SELECT current_setting('wal_level')");
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            code = outbox__pg_fail(conn, res, "reading wal_level", err);
        else if (strcmp(PQgetvalue(res, 0, 0), "logical") != 0)
            code = outbox__error(err, OUTBOX_ECONFIG,
                                 "outbox_emit_pg: wal_level is %s; set wal_level = logical in "
                                 "postgresql.conf and restart PostgreSQL (nothing can capture a "
                                 "message emitted now); nothing was emitted",
                                 PQgetvalue(res, 0, 0));
        PQclear(res);
        if (code != OUTBOX_OK) return code;
    }
    return ensure_prepared(conn, schema, name, emit_tmpl, 1, "outbox", err);
}

/* Sends msg's emit into the pipeline (queued, not yet flushed). */
static int send_emit(PGconn *conn, const char *stmt_name, const outbox_msg *msg)
{
    outbox_buf b;
    const char *params[1];
    int ok = 0;

    outbox__buf_init(&b);
    wal_content(&b, msg);
    params[0] = b.data;
    if (!b.oom) ok = PQsendQueryPrepared(conn, stmt_name, 1, params, NULL, NULL, 0);
    outbox__buf_free(&b);
    return ok;
}

/* Emits msg to the WAL inside the caller's open transaction (see outbox.h;
 * conn, schema and msg borrowed). */
int outbox_emit_pg(PGconn *conn, const char *schema, const outbox_msg *msg, outbox_error *err)
{
    const char *params[1];
    char name[96];
    outbox_buf b;
    PGresult *res;
    int code = check_call(conn, &schema, msg, "outbox_emit_pg", err);

    if (code != OUTBOX_OK) return code;
    snprintf(name, sizeof name, "outbox_emit.%s", schema);
    code = prepare_emit(conn, schema, name, err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_init(&b);
    wal_content(&b, msg);
    if (b.oom) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "outbox_emit_pg: out of memory");
    }
    params[0] = b.data;
    res = PQexecPrepared(conn, name, 1, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        code = outbox__pg_fail(conn, res, "emitting the message to the WAL", err);
    PQclear(res);
    outbox__buf_free(&b);
    return code;
}

/* Emits msgs[0..n) to the WAL as the last statements of the caller's open
 * transaction and commits it, in one round trip (see above). */
int outbox_emit_commit_pg(PGconn *conn, const char *schema, const outbox_msg *const *msgs, size_t n,
                          outbox_error *err)
{
    static const commit_kind emit = {"outbox_emit_commit_pg", "emitting", "outbox_emit",
                                     prepare_emit, send_emit};
    return commit_pipeline(&emit, conn, schema, msgs, n, err);
}

/* The inbox insert, prepared once per connection as
 * "outbox_inbox_record.<schema>". */
static const char inbox_record_tmpl[] =
    "INSERT INTO {s}.inbox (consumer, message_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING";

/* Records (consumer, message_id) in schema's inbox inside the caller's open
 * transaction.  OUTBOX_OK the first time, OUTBOX_DUPLICATE afterwards.
 * OUTBOX_ENOTXN, OUTBOX_EINVAL (consumer), OUTBOX_EBADID, OUTBOX_ECONFIG
 * (schema name), OUTBOX_ENOSCHEMA, OUTBOX_ESCHEMANEWER (both leave the
 * transaction usable) or a mapped database error. */
int outbox_inbox_record_pg_schema(PGconn *conn, const char *schema, const char *consumer,
                                  const char *message_id, outbox_error *err)
{
    char name[96];
    const char *params[2];
    const unsigned char *c;
    PGresult *res;
    int code = OUTBOX_OK;

    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_record_pg: conn is NULL");
    if (!schema) schema = DEFAULT_SCHEMA;
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return outbox__error(err, OUTBOX_ENOTXN,
                             "outbox_inbox_record_pg needs an open, healthy transaction (BEGIN "
                             "... COMMIT) so the record commits with the message's effect");
    if (!consumer || !*consumer)
        return outbox__error(err, OUTBOX_EINVAL,
                             "inbox consumer name must be non-empty text without control "
                             "characters");
    for (c = (const unsigned char *)consumer; *c; c++)
        if (*c < 0x20 || *c == 0x7f)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "inbox consumer name must be non-empty text without control "
                                 "characters");
    if (!message_id || !outbox_uuid_valid(message_id))
        return outbox__error(err, OUTBOX_EBADID,
                             "inbox message id must be a UUID (8-4-4-4-12 hex digits)");
    if (!outbox__pg_valid_schema(schema)) return outbox__pg_schema_error(schema, err);
    snprintf(name, sizeof name, "outbox_inbox_record.%s", schema);
    code = ensure_prepared(conn, schema, name, inbox_record_tmpl, 2, "inbox", err);
    if (code != OUTBOX_OK) return code;
    params[0] = consumer;
    params[1] = message_id;
    res = PQexecPrepared(conn, name, 2, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = outbox__pg_fail(conn, res, "recording the message in the inbox", err);
    else if (strcmp(PQcmdTuples(res), "0") == 0)
        code = OUTBOX_DUPLICATE;
    PQclear(res);
    return code;
}

/* Deletes the inbox entries of `schema` received more than retention_ms
 * ago, in one statement (its own transaction: no transaction may be open
 * on conn).  See outbox.h. */
int outbox_inbox_purge_pg(PGconn *conn, const char *schema, int64_t retention_ms,
                          int64_t redelivery_horizon_ms, int64_t *purged, outbox_error *err)
{
    char qschema[160], sql[320], cutoff[32];
    const char *params[1];
    PGresult *res;
    int code;

    if (purged) *purged = 0;
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_purge_pg: conn is NULL");
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_inbox_purge_pg runs its own transaction: call it with no "
                             "transaction open");
    code = outbox__inbox_retention_check("outbox_inbox_purge_pg", retention_ms,
                                         redelivery_horizon_ms, err);
    if (code != OUTBOX_OK) return code;
    if (!schema) schema = DEFAULT_SCHEMA;
    code = outbox__pg_quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    code = outbox__pg_refuse_newer_schema(conn, schema, qschema, err);
    if (code != OUTBOX_OK) return code;
    /* The cutoff in microseconds, as the server's clock sees it. */
    snprintf(cutoff, sizeof cutoff, "%lld",
             (long long)(retention_ms > INT64_MAX / 1000 ? INT64_MAX : retention_ms * 1000));
    snprintf(sql, sizeof sql,
             "DELETE FROM %s.inbox WHERE received_at < now() - $1::bigint * interval '1 "
             "microsecond'",
             qschema);
    params[0] = cutoff;
    res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = outbox__pg_fail(conn, res, "purging the inbox", err);
    else if (purged)
        *purged = outbox__pg_parse_i64(PQcmdTuples(res));
    PQclear(res);
    return code;
}

/* outbox_inbox_record_pg_schema with the default schema "outbox". */
int outbox_inbox_record_pg(PGconn *conn, const char *consumer, const char *message_id,
                           outbox_error *err)
{
    return outbox_inbox_record_pg_schema(conn, DEFAULT_SCHEMA, consumer, message_id, err);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_caller_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
