/*
 * pg_conn.c - the PostgreSQL driver's connection: libpq errors mapped to
 * outbox codes, the store URL and its own settings (pg_props: schema,
 * partitions), connecting and reconnecting, server notices to the log,
 * open and close, and the ops tables the relay and the CLI use
 * (`outbox__store_postgres`, and `outbox__store_postgresql` for the other
 * scheme).  The design is in docs/POSTGRES.md.
 *
 * A store URL is libpq's, in either of its forms: a URI
 * (postgres://USER@HOST/DB?KEY=VALUE&...) or a keyword string after the
 * scheme (postgres:host=H dbname=DB KEY=VALUE ...).  In both, the entries
 * whose key is in pg_props are the store's: they are taken out and read
 * with outbox__props_parse, so both forms check them alike and say the
 * same; every other entry is libpq's and goes to it unchanged (libpq
 * refuses what it does not know when the store opens).
 */
#include "internal.h"

#include "pg.h"
#include "pg_wal.h"

#include <stddef.h>
#include <stdint.h>

#define PG_TEXT_(x) #x
#define PG_TEXT(x) PG_TEXT_(x)

/* The store's own settings, as outbox__props_parse reads them. */
typedef struct pg_config {
    char *schema;
    int64_t partitions;
    int64_t keepalives_idle_ms;
    int64_t keepalives_interval_ms;
    int64_t keepalives_count;
    int64_t tcp_user_timeout_ms;
    int64_t query_timeout_ms;
    int capture; /* 0 table, 1 wal */
    char *slot;
    char *publication;
} pg_config;

static const outbox_prop pg_props[] = {
    {"schema", OUTBOX_PROP_STRING, offsetof(pg_config, schema), DEFAULT_SCHEMA, NULL, "NAME",
     "The PostgreSQL schema that holds the outbox's tables and functions: 1 to 63 letters, "
     "digits and underscores, starting with a letter or underscore (always quoted in SQL)."},
    {"partitions", OUTBOX_PROP_INT, offsetof(pg_config, partitions), PG_TEXT(DEFAULT_PARTITIONS),
     "1.." PG_TEXT(MAX_PARTITIONS), NULL,
     "How many hash partitions of the aggregate ids the relays share (each leases its part).  "
     "Fixed when init creates the schema: on an existing one it is not applied, and init says "
     "so."},
    /* How fast a dead database is noticed.  libpq's own defaults are the
     * system's (a first keepalive probe after 2 hours, unacknowledged data
     * retransmitted for about 15 minutes): a relay blocked in a query on a
     * connection whose peer vanished would wait that long.  These are
     * libpq's parameters of the same names, given to it by the store. */
    {"keepalives_idle", OUTBOX_PROP_DURATION, offsetof(pg_config, keepalives_idle_ms), "10s",
     "1s..1d", NULL,
     "TCP keepalives: how long a connection is idle before the first probe (libpq's "
     "keepalives_idle, whole seconds).  With the two below and tcp_user_timeout, a database "
     "that vanished without closing the connection is noticed within about 30 s."},
    {"keepalives_interval", OUTBOX_PROP_DURATION, offsetof(pg_config, keepalives_interval_ms), "5s",
     "1s..1d", NULL, "TCP keepalives: time between unanswered probes (whole seconds)."},
    {"keepalives_count", OUTBOX_PROP_INT, offsetof(pg_config, keepalives_count), "3", "1..100",
     NULL, "TCP keepalives: unanswered probes before the connection is dropped."},
    {"tcp_user_timeout", OUTBOX_PROP_DURATION, offsetof(pg_config, tcp_user_timeout_ms), "30s",
     "0ms..1d", NULL,
     "How long sent data may stay unacknowledged (and keepalive probes unanswered) before the "
     "connection is dropped (TCP_USER_TIMEOUT; 0: the system's, about 15 minutes)."},
    /* Keepalives and TCP_USER_TIMEOUT notice a peer that is gone, not one
     * that keeps TCP healthy and never answers (a hung server, a proxy);
     * libpq itself waits for an answer without a limit. */
    {"query_timeout", OUTBOX_PROP_DURATION, offsetof(pg_config, query_timeout_ms), "30s", "1s..1d",
     NULL,
     "How long the relay waits for PostgreSQL to answer a statement.  When it passes, the "
     "connection is closed and opened again (a batch not yet recorded is published again), and "
     "the error says so; raise it if statements legitimately take longer.  It also bounds "
     "connecting when the URL sets no connect_timeout (whole seconds, at least 2), and, with "
     "capture=wal, a replication stream that stays silent (a keepalive is asked for at half of "
     "it)."},
    /* WAL capture (docs/WAL.md). */
    {"capture", OUTBOX_PROP_ENUM, offsetof(pg_config, capture), "table", "table|wal", NULL,
     "Where the relay reads messages: table (the outbox table) or wal (messages emitted with "
     "<schema>.emit, read from a logical replication slot; failed messages and the ones "
     "behind them still go to the table).  wal needs PostgreSQL 14 or later and "
     "wal_level = logical."},
    {"slot", OUTBOX_PROP_STRING, offsetof(pg_config, slot), NULL, NULL, "NAME",
     "capture=wal: the logical replication slot (1 to 63 of a-z, 0-9, _; default "
     "outbox_<schema>), created when missing."},
    {"publication", OUTBOX_PROP_STRING, offsetof(pg_config, publication), NULL, NULL, "NAME",
     "capture=wal: the (empty) publication the slot streams with (1 to 63 of a-z, 0-9, _; "
     "default outbox_<schema>), created when missing."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_LIBPQ

#include <libpq-events.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* Copies a message from libpq or the server into buf as one line (log
 * lines and errors are one line each): line breaks and the indentation
 * after them become one space, or ". " between a word and a capitalised
 * next line ("...unexpectedly\n\tThis probably means..."); trailing
 * blanks go.  Returns buf. */
const char *outbox__pg_message(const char *msg, char *buf, size_t len)
{
    const char *p = msg && *msg ? msg : "unknown error";
    size_t o = 0;

    if (len == 0) return buf;
    while (*p && o + 1 < len) {
        if (*p == '\n' || *p == '\r') {
            const char *q = p;
            while (*q == '\n' || *q == '\r' || *q == '\t' || *q == ' ')
                q++;
            if (!*q) break;
            if (o > 0 && isalnum((unsigned char)buf[o - 1]) && isupper((unsigned char)*q) &&
                o + 2 < len)
                buf[o++] = '.';
            if (o > 0 && buf[o - 1] != ' ') buf[o++] = ' ';
            p = q;
            continue;
        }
        buf[o++] = *p == '\t' ? ' ' : *p;
        p++;
    }
    while (o > 0 && buf[o - 1] == ' ')
        o--;
    buf[o] = '\0';
    return buf;
}

/* The error text of a failed result (res may be NULL: conn's message) as
 * one line: the server's message and its detail and hint, without the
 * severity prefix and without a "Failing row contains (...)" detail, which
 * would copy a whole row (payload included) into logs. */
const char *outbox__pg_error_text(const PGconn *conn, const PGresult *res, char *buf, size_t len)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char joined[1024];

    if (primary && *primary) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
        if (detail && strncmp(detail, "Failing row contains", 20) == 0) detail = NULL;
        snprintf(joined, sizeof joined, "%s%s%s%s%s%s", primary, detail ? " (" : "",
                 detail ? detail : "", detail ? ")" : "", hint ? "; hint: " : "", hint ? hint : "");
        return outbox__pg_message(joined, buf, len);
    }
    primary = res ? PQresultErrorMessage(res) : NULL;
    if (!primary || !*primary) primary = conn ? PQerrorMessage(conn) : "no connection";
    return outbox__pg_message(primary, buf, len);
}

/* Marks a store's own connection (need_conn registers it with the store
 * as its instance data), so that the functions of the other files, which
 * take a PGconn, find the store and its query_timeout.  Nothing to do on
 * any event. */
static int store_event(PGEventId id, void *info, void *pass_through)
{
    (void)id;
    (void)info;
    (void)pass_through;
    return 1;
}

/* The store whose connection conn is; NULL for another (the caller's). */
static pg_store *store_of(const PGconn *conn)
{
    return conn ? PQinstanceData(conn, store_event) : NULL;
}

/* Maps a failed result (res may be NULL) to an outbox code and fills err. */
int outbox__pg_fail(PGconn *conn, PGresult *res, const char *what, outbox_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const pg_store *st = store_of(conn);
    char buf[400];
    int code = OUTBOX_ESTORE;

    if (st && st->timed_out) return outbox__pg_timeout_error(st, what, err);
    outbox__pg_error_text(conn, res, buf, sizeof buf);
    if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
        return outbox__error(err, OUTBOX_EIO, "%s: the PostgreSQL connection was lost: %s", what,
                             buf);
    if (state) {
        if (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0 ||
            strcmp(state, "42883") == 0)
            code = OUTBOX_ENOSCHEMA;
        else if (strcmp(state, "23505") == 0)
            code = OUTBOX_EEXISTS;
        else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
                 strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0)
            code = OUTBOX_EBUSY;
        else if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
                 strncmp(state, "53", 2) == 0)
            code = OUTBOX_EIO;
        else if (strcmp(state, "54000") == 0)
            code = OUTBOX_ETOOBIG;
    }
    if (code == OUTBOX_ENOSCHEMA)
        return outbox__error(err, code,
                             "%s: %s: the outbox schema is missing; run `outbox init --store "
                             "postgres://...` or call outbox_schema_init_pg",
                             what, buf);
    return outbox__error(err, code, "%s: %s (SQLSTATE %s)", what, buf, state ? state : "none");
}

/* Clears res, a statement's result that should hold no rows (COMMAND_OK or
 * TUPLES_OK); otherwise maps it (on st's connection when st is given, else
 * on conn) to an outbox code. */
static int expect_done(PGresult *res, PGconn *conn, pg_store *st, const char *what,
                       outbox_error *err)
{
    ExecStatusType s = PQresultStatus(res);
    int code = OUTBOX_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        code =
            st ? outbox__pg_store_fail(st, res, what, err) : outbox__pg_fail(conn, res, what, err);
    PQclear(res);
    return code;
}

/* Runs sql without parameters; expects no rows (COMMAND_OK or TUPLES_OK). */
int outbox__pg_exec(PGconn *conn, const char *sql, const char *what, outbox_error *err)
{
    return expect_done(PQexec(conn, sql), conn, NULL, what, err);
}

void outbox__pg_rollback(PGconn *conn)
{
    if (conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(conn, "ROLLBACK");
        PQclear(res);
    }
}

/* ------------------------------------------------------------------------
 * Statements within a deadline
 *
 * libpq's calls wait for the server's answer without a limit: a server (or
 * a middlebox) that keeps the TCP connection healthy but never answers
 * would hold the relay for ever, as keepalives and TCP_USER_TIMEOUT only
 * notice a peer that is gone.  So the store's statements go through
 * libpq's asynchronous calls on its non-blocking connection, polling the
 * socket up to a deadline.
 * ---------------------------------------------------------------------- */

/* How run_within sends its statement. */
enum { SEND_QUERY, SEND_PARAMS, SEND_PREPARED, SEND_PREPARE };

/* Waits until conn's socket has one of events (or an error: libpq's next
 * call says which): 1; 0 when the monotonic deadline passed first. */
static int wait_socket(PGconn *conn, short events, int64_t deadline_us)
{
    for (;;) {
        struct pollfd pfd;
        int64_t left_ms = (deadline_us - outbox__monotonic_us() + 999) / 1000;
        int rc;

        if (left_ms <= 0) return 0;
        pfd.fd = PQsocket(conn);
        if (pfd.fd < 0) return 1;
        pfd.events = events;
        pfd.revents = 0;
        rc = poll(&pfd, 1, left_ms > INT_MAX ? INT_MAX : (int)left_ms);
        if (rc > 0 || (rc < 0 && errno != EINTR)) return 1;
    }
}

/* The first half of run_within: sends and flushes.  1 when sent, 0 when
 * it could not be, -1 when the server did not read it by the deadline. */
static int send_within(PGconn *conn, int64_t deadline_us, int how, const char *name,
                       const char *sql, int nparams, const char *const *params)
{
    int sent;
    if (how == SEND_QUERY)
        sent = PQsendQuery(conn, sql);
    else if (how == SEND_PARAMS)
        sent = PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    else if (how == SEND_PREPARED)
        sent = PQsendQueryPrepared(conn, name, nparams, params, NULL, NULL, 0);
    else
        sent = PQsendPrepare(conn, name, sql, 0, NULL);
    if (!sent) return 0;
    while (PQflush(conn) > 0) {
        if (!wait_socket(conn, POLLIN | POLLOUT, deadline_us)) return -1;
        if (!PQconsumeInput(conn)) break; /* lost: PQgetResult says so */
    }
    return 1;
}

/* The second half: reads until the statement's results are in (see
 * run_within). */
static PGresult *collect_within(PGconn *conn, int64_t deadline_us, int *expired)
{
    PGresult *res, *last = NULL;

    *expired = 0;
    for (;;) {
        ExecStatusType s;
        while (PQisBusy(conn)) { /* false once the connection is lost */
            if (!wait_socket(conn, POLLIN, deadline_us)) goto expired;
            if (!PQconsumeInput(conn)) break;
        }
        res = PQgetResult(conn);
        if (!res) break;
        PQclear(last);
        last = res;
        s = PQresultStatus(res);
        if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH ||
            PQstatus(conn) == CONNECTION_BAD)
            break;
    }
    return last;

expired:
    PQclear(last);
    *expired = 1;
    return NULL;
}

/* Sends a statement (how: SEND_*) on the non-blocking conn, flushes it
 * while reading (the server may wait for room to send), and reads until
 * its results are in.  Returns the last result, as PQexec does (after a
 * failed statement the server skips the rest, so an error is the last;
 * a COPY result ends the statement's results), or NULL when it could not
 * be sent; NULL with *expired = 1 when the server did not answer within
 * timeout_ms. */
static PGresult *run_within(PGconn *conn, int64_t timeout_ms, int how, const char *name,
                            const char *sql, int nparams, const char *const *params, int *expired)
{
    int64_t deadline_us = outbox__monotonic_us() + timeout_ms * 1000;
    int sent = send_within(conn, deadline_us, how, name, sql, nparams, params);

    *expired = sent < 0;
    if (sent <= 0) return NULL;
    return collect_within(conn, deadline_us, expired);
}

int outbox__pg_send_within(PGconn *conn, int64_t deadline_us, const char *sql)
{
    return send_within(conn, deadline_us, SEND_QUERY, NULL, sql, 0, NULL);
}

PGresult *outbox__pg_collect_within(PGconn *conn, int64_t deadline_us, int *expired)
{
    return collect_within(conn, deadline_us, expired);
}

PGresult *outbox__pg_query_within(PGconn *conn, int64_t timeout_ms, const char *sql, int *expired)
{
    return run_within(conn, timeout_ms, SEND_QUERY, NULL, sql, 0, NULL, expired);
}

/* The server did not answer a statement on st->conn in time.  Its socket
 * is shut down, so that libpq reads the end of it as if the server had
 * closed it and marks the connection CONNECTION_BAD: every path that meets
 * a lost connection then takes over (the object stays for them, and
 * outbox__pg_need_conn replaces it).  No cancel request: it would go over
 * a new connection, which PQcancel opens without any timeout; the
 * server's side ends with the connection (tcp_keepalives_*, and the
 * session's end rolls back its transaction and frees its locks). */
static void drop_unanswered(pg_store *st)
{
    int fd = PQsocket(st->conn), i;

    st->timed_out = 1;
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
    /* What arrived before the shutdown is read first, then the end. */
    for (i = 0; i < 1000 && PQstatus(st->conn) == CONNECTION_OK; i++)
        if (!PQconsumeInput(st->conn)) break;
    if (PQstatus(st->conn) == CONNECTION_OK) { /* not expected: drop it outright */
        PQfinish(st->conn);
        st->conn = NULL;
    }
}

/* A statement on st->conn within query_timeout (see pg.h). */
static PGresult *store_run(pg_store *st, int how, const char *name, const char *sql, int nparams,
                           const char *const *params)
{
    PGresult *res;
    int expired;

    if (!st->conn) return NULL;
    if (st->ahead_sent) outbox__pg_store_settle(st);
    res = run_within(st->conn, st->query_timeout_ms, how, name, sql, nparams, params, &expired);
    if (expired) drop_unanswered(st);
    return res;
}

int outbox__pg_store_send_prepared(pg_store *st, const char *name, int nparams,
                                   const char *const *params)
{
    int sent;
    if (!st->conn) return 0;
    if (st->ahead_sent) outbox__pg_store_settle(st);
    st->ahead_deadline_us = outbox__monotonic_us() + st->query_timeout_ms * 1000;
    sent = send_within(st->conn, st->ahead_deadline_us, SEND_PREPARED, name, NULL, nparams, params);
    if (sent < 0) drop_unanswered(st);
    st->ahead_sent = sent > 0;
    return sent > 0;
}

void outbox__pg_store_settle(pg_store *st)
{
    int expired;
    if (!st->ahead_sent) return;
    st->ahead_sent = 0;
    PQclear(st->ahead_res);
    st->ahead_res = collect_within(st->conn, st->ahead_deadline_us, &expired);
    if (expired) drop_unanswered(st);
}

PGresult *outbox__pg_store_query(pg_store *st, const char *sql, int nparams,
                                 const char *const *params)
{
    return store_run(st, nparams > 0 ? SEND_PARAMS : SEND_QUERY, NULL, sql, nparams, params);
}

PGresult *outbox__pg_store_query_prepared(pg_store *st, const char *name, int nparams,
                                          const char *const *params)
{
    return store_run(st, SEND_PREPARED, name, NULL, nparams, params);
}

PGresult *outbox__pg_store_prepare(pg_store *st, const char *name, const char *sql)
{
    return store_run(st, SEND_PREPARE, name, sql, 0, NULL);
}

int outbox__pg_timeout_error(const pg_store *st, const char *what, outbox_error *err)
{
    int64_t ms = st->query_timeout_ms;
    return outbox__error(err, OUTBOX_EIO,
                         "%s: PostgreSQL at %s did not answer within %lld %s (query_timeout): the "
                         "connection was closed and is opened again; if statements legitimately "
                         "take longer, raise query_timeout",
                         what, st->shown, (long long)(ms % 1000 ? ms : ms / 1000),
                         ms % 1000 ? "ms" : "s");
}

PGresult *outbox__pg_conn_query(PGconn *conn, const char *sql, int nparams,
                                const char *const *params)
{
    pg_store *st = store_of(conn);
    if (st) return outbox__pg_store_query(st, sql, nparams, params);
    return PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
}

int outbox__pg_store_fail(pg_store *st, PGresult *res, const char *what, outbox_error *err)
{
    if (st->timed_out) return outbox__pg_timeout_error(st, what, err);
    return outbox__pg_fail(st->conn, res, what, err);
}

int outbox__pg_store_exec(pg_store *st, const char *sql, const char *what, outbox_error *err)
{
    return expect_done(outbox__pg_store_query(st, sql, 0, NULL), st->conn, st, what, err);
}

void outbox__pg_store_rollback(pg_store *st)
{
    if (st->ahead_sent) outbox__pg_store_settle(st);
    if (st->conn && PQstatus(st->conn) == CONNECTION_OK &&
        PQtransactionStatus(st->conn) != PQTRANS_IDLE)
        PQclear(outbox__pg_store_query(st, "ROLLBACK", 0, NULL));
}

int64_t outbox__pg_parse_i64(const char *s)
{
    return s && *s ? strtoll(s, NULL, 10) : 0;
}

/* ------------------------------------------------------------------------
 * The driver: state, URL, connection
 * ---------------------------------------------------------------------- */

/* Copies the keyword string src into out with password values masked. */
static void redact_keywords(const char *src, char *out, size_t len)
{
    size_t o = 0;
    const char *p = src;
    while (*p && o + 1 < len) {
        if (strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (*q == ' ')
                q++;
            if (*q == '=') {
                const char *mask = "password=***";
                while (*mask && o + 1 < len)
                    out[o++] = *mask++;
                q++;
                while (*q == ' ')
                    q++;
                if (*q == '\'') {
                    for (q++; *q && *q != '\''; q++)
                        if (*q == '\\' && q[1]) q++;
                    if (*q) q++;
                } else {
                    while (*q && *q != ' ')
                        q++;
                }
                p = q;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

/* Is key[0..n) one of the store's own settings (pg_props)? */
static int own_key(const char *key, size_t n)
{
    const outbox_prop *p;
    for (p = pg_props; p->name; p++)
        if (strlen(p->name) == n && strncmp(key, p->name, n) == 0) return 1;
    return 0;
}

/* Keeps capture, slot and publication in st: the names given, or
 * outbox_<schema> (pg_wal.h). */
static int wal_names(pg_store *st, const pg_config *c, outbox_error *err)
{
    const char *given[2] = {c->slot, c->publication};
    const char *what[2] = {"slot", "publication"};
    int i;

    st->capture_wal = c->capture == 1;
    for (i = 0; i < 2; i++)
        if (given[i] != NULL && !outbox__pg_wal_valid_name(given[i]))
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "store URL '%s': %s=%s is not a valid name; use 1 to 63 "
                                 "lower-case letters, digits and underscores",
                                 st->shown, what[i], given[i]);
    outbox__pg_wal_names(c->schema, c->slot, c->publication, st->slot, st->publication);
    return OUTBOX_OK;
}

/* Reads the store's settings in u (and nothing else: libpq's are out)
 * with pg_props into st.  Only a partition count the URL gives is kept:
 * init applies it or says it is not applied, and 0 leaves the schema's
 * own count. */
static int read_settings(pg_store *st, outbox_url *u, outbox_error *err)
{
    pg_config c;
    char what[600];
    int code;

    memset(&c, 0, sizeof c);
    snprintf(what, sizeof what, "store URL '%s'", st->shown);
    code = outbox__props_parse(pg_props, what, u, &c, err);
    if (code == OUTBOX_OK && !outbox__pg_valid_schema(c.schema))
        code = outbox__pg_schema_error(c.schema, err);
    if (code == OUTBOX_OK) code = wal_names(st, &c, err);
    if (code == OUTBOX_OK) {
        snprintf(st->schema, sizeof st->schema, "%s", c.schema);
        st->url_partitions = outbox__url_param(u, "partitions") ? (int)c.partitions : 0;
        st->query_timeout_ms = c.query_timeout_ms;
        snprintf(st->tcp_settings, sizeof st->tcp_settings,
                 "keepalives_idle=%lld keepalives_interval=%lld keepalives_count=%lld "
                 "tcp_user_timeout=%lld",
                 (long long)(c.keepalives_idle_ms / 1000),
                 (long long)(c.keepalives_interval_ms / 1000), (long long)c.keepalives_count,
                 (long long)c.tcp_user_timeout_ms);
        snprintf(st->server_tcp_settings, sizeof st->server_tcp_settings, "%lld %lld %lld %lld",
                 (long long)(c.keepalives_idle_ms / 1000),
                 (long long)(c.keepalives_interval_ms / 1000), (long long)c.keepalives_count,
                 (long long)c.tcp_user_timeout_ms);
    }
    outbox__props_free(pg_props, &c);
    return code;
}

/* Splits a libpq URI's query: the store's settings are read (percent-
 * decoded by outbox__url_parse, as libpq decodes the rest) from the URI
 * with only them in its query; conninfo (owned by the caller) is the URI
 * without them. */
static int split_uri(pg_store *st, const char *url, char **conninfo, outbox_error *err)
{
    const char *q = strchr(url, '?');
    const char *p = q ? q + 1 : "";
    size_t base = q ? (size_t)(q - url) : strlen(url);
    outbox_buf libpq, own;
    outbox_url u;
    int code;

    outbox__buf_init(&libpq);
    outbox__buf_init(&own);
    outbox__buf_append(&libpq, url, base);
    outbox__buf_append(&own, url, base);
    while (*p) {
        size_t n = strcspn(p, "&"), key = strcspn(p, "=");
        outbox_buf *to = own_key(p, key < n ? key : n) ? &own : &libpq;
        if (n > 0) {
            outbox__buf_append(to, to->len > base ? "&" : "?", 1);
            outbox__buf_append(to, p, n);
        }
        p += n;
        if (*p == '&') p++;
    }
    if (libpq.oom || own.oom) {
        outbox__buf_free(&libpq);
        outbox__buf_free(&own);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    code = outbox__url_parse(&u, own.data, NULL, err);
    outbox__buf_free(&own);
    if (code == OUTBOX_OK) code = read_settings(st, &u, err);
    outbox__url_free(&u);
    if (code != OUTBOX_OK) {
        outbox__buf_free(&libpq);
        return code;
    }
    *conninfo = libpq.data;
    return OUTBOX_OK;
}

/* The value v[0..n) of a keyword string entry as libpq reads it (quotes
 * taken off, backslash escapes undone) after "key=", in a new string;
 * NULL when out of memory. */
static char *keyword_entry(const char *key, size_t key_len, const char *v, size_t n)
{
    char *out = outbox__malloc(key_len + 1 + n + 1), *o = out;
    const char *end = v + n;
    int quoted = n > 0 && *v == '\'';

    if (!out) return NULL;
    memcpy(o, key, key_len);
    o += key_len;
    *o++ = '=';
    for (v += quoted; v < end && !(quoted && *v == '\''); v++) {
        if (*v == '\\' && v + 1 < end) v++;
        *o++ = *v;
    }
    *o = '\0';
    return out;
}

/* Splits a libpq keyword string: the store's settings are read from its
 * entries with their keys (as "key=value", values as libpq reads them);
 * conninfo (owned by the caller) is the rest. */
static int split_keywords(pg_store *st, const char *kw, char **conninfo, outbox_error *err)
{
    outbox_buf b;
    outbox_url u;
    char **own = NULL;
    size_t own_count = 0, i;
    const char *p = kw;
    int code = OUTBOX_OK;

    outbox__buf_init(&b);
    outbox__buf_puts(&b, "");
    while (*p && code == OUTBOX_OK) {
        const char *start, *vstart;
        size_t klen;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p) break;
        start = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        klen = (size_t)(p - start);
        while (*p == ' ')
            p++;
        if (*p != '=') {
            code = outbox__error(err, OUTBOX_EBADURL,
                                 "store URL '%s' is not a libpq keyword string (key=value ...) "
                                 "nor a URI: write postgres://user@host/db or "
                                 "postgres:host=... dbname=...",
                                 st->shown);
            break;
        }
        p++;
        while (*p == ' ')
            p++;
        vstart = p;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1]) p++;
            if (*p) p++;
        } else {
            while (*p && *p != ' ' && *p != '\t')
                p++;
        }
        if (own_key(start, klen)) {
            char **grown;
            for (i = 0; i < own_count; i++)
                if (strncmp(own[i], start, klen) == 0 && own[i][klen] == '=')
                    code =
                        outbox__error(err, OUTBOX_EBADURL, "setting \"%.*s\" is given twice in %s",
                                      (int)klen, start, st->shown);
            if (code != OUTBOX_OK) break;
            grown = outbox__realloc(own, (own_count + 2) * sizeof *own);
            if (grown) own = grown;
            if (!grown ||
                !(own[own_count] = keyword_entry(start, klen, vstart, (size_t)(p - vstart))))
                code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
            else
                own[++own_count] = NULL;
        } else {
            if (b.len > 0) outbox__buf_append(&b, " ", 1);
            outbox__buf_append(&b, start, (size_t)(p - start));
        }
    }
    if (code == OUTBOX_OK && (b.oom || !b.data))
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    if (code == OUTBOX_OK) {
        code = outbox__props_options(&u, "postgres", (const char *const *)own, err);
        if (code == OUTBOX_OK) code = read_settings(st, &u, err);
        outbox__url_free(&u);
    }
    for (i = 0; i < own_count; i++)
        outbox__free(own[i]);
    outbox__free(own);
    if (code != OUTBOX_OK) {
        outbox__buf_free(&b);
        return code;
    }
    *conninfo = b.data;
    return OUTBOX_OK;
}

/* *out (owned by the caller) = conninfo, a URI (uri) or a keyword string,
 * with the space-separated "key=value" settings added. */
static int conninfo_with(const char *conninfo, int uri, const char *settings, char **out,
                         outbox_error *err)
{
    outbox_buf b;
    const char *p;

    outbox__buf_init(&b);
    outbox__buf_puts(&b, conninfo);
    if (uri)
        outbox__buf_puts(&b, strchr(conninfo, '?') ? "&" : "?");
    else if (b.len > 0)
        outbox__buf_puts(&b, " ");
    for (p = settings; *p; p++)
        outbox__buf_append(&b, uri && *p == ' ' ? "&" : p, 1);
    if (b.oom || !b.data) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    *out = b.data;
    return OUTBOX_OK;
}

/* Does conninfo (or the environment) give libpq a connect_timeout?  A
 * conninfo libpq cannot parse counts as yes: pg_open refuses it. */
static int has_connect_timeout(const char *conninfo)
{
    const char *env = getenv("PGCONNECT_TIMEOUT");
    PQconninfoOption *opts, *o;
    int found = 0;

    if (env && *env) return 1;
    opts = PQconninfoParse(conninfo, NULL);
    if (!opts) return 1;
    for (o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val) found = 1;
    PQconninfoFree(opts);
    return found;
}

/* Adds st->tcp_settings to st->conninfo: the store's keepalive and timeout
 * settings, which libpq reads under the same names, and a connect_timeout
 * of query_timeout when none is given (libpq would wait for ever for a
 * server that accepts the connection and never answers; it takes whole
 * seconds, at least 2); and, for capture=wal, makes the replication
 * connection's conninfo. */
static int add_tcp_settings(pg_store *st, int uri, outbox_error *err)
{
    char *with;
    int code;

    if (!has_connect_timeout(st->conninfo)) {
        int64_t s = (st->query_timeout_ms + 999) / 1000;
        size_t used = strlen(st->tcp_settings);
        snprintf(st->tcp_settings + used, sizeof st->tcp_settings - used, " connect_timeout=%lld",
                 (long long)(s < 2 ? 2 : s));
    }
    code = conninfo_with(st->conninfo, uri, st->tcp_settings, &with, err);
    if (code != OUTBOX_OK) return code;
    outbox__free(st->conninfo);
    st->conninfo = with;
    if (!st->capture_wal) return OUTBOX_OK;
    return conninfo_with(st->conninfo, uri, "replication=database", &st->repl_conninfo, err);
}

static void forget_connection_state(pg_store *st)
{
    /* A statement sent ahead went with the connection: its batch is read
     * again on the new one. */
    st->ahead_sent = 0;
    PQclear(st->ahead_res);
    st->ahead_res = NULL;
    st->in_txn = 0;
    st->prepared = 0;
    st->schema_ok = 0;
    st->listening = 0;
    st->sleep_held = 0;
    st->member_id = 0;
    if (st->held) memset(st->held, 0, MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
    st->release_wanted = 0;
    st->timed_out = 0;
}

/* Server notices and warnings on the store's connections go to the log
 * (one line each, never raw to stderr as libpq's default does): WARNING at
 * warn level, NOTICE and INFO at info, the rest at debug. */
static void notice_receiver(void *arg, const PGresult *res)
{
    const pg_store *st = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char text[600];
    int level = OUTBOX_LOG_DEBUG;

    if (!severity) severity = "NOTICE";
    if (strcmp(severity, "WARNING") == 0)
        level = OUTBOX_LOG_WARN;
    else if (strcmp(severity, "NOTICE") == 0 || strcmp(severity, "INFO") == 0)
        level = OUTBOX_LOG_INFO;
    if (!outbox__log_enabled(level)) return;
    outbox__log(level, COMPONENT, "%s: server %s: %s", st->shown, severity,
                outbox__pg_error_text(NULL, res, text, sizeof text));
}

PGconn *outbox__pg_connect_plain(pg_store *st, outbox_error *err)
{
    char msg[300];
    PGconn *conn = PQconnectdb(st->conninfo);
    if (!conn) {
        outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to PostgreSQL");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK || PQsetnonblocking(conn, 1) != 0) {
        outbox__error(err, OUTBOX_EIO, "cannot connect to PostgreSQL at %s: %s", st->shown,
                      outbox__pg_message(PQerrorMessage(conn), msg, sizeof msg));
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeReceiver(conn, notice_receiver, st);
    return conn;
}

/* Makes sure st->conn is up: connects (or reconnects after a loss, logging
 * it) and sets up the session (LISTEN, lock keys, relay membership). */
int outbox__pg_need_conn(pg_store *st, outbox_error *err)
{
    const char *params[1];
    PGresult *res;
    char msg[300], sql[200];
    int code;

    if (st->conn && PQstatus(st->conn) == CONNECTION_OK) return OUTBOX_OK;
    if (st->conn) {
        if (st->timed_out)
            snprintf(msg, sizeof msg, "no answer within %lld ms (query_timeout)",
                     (long long)st->query_timeout_ms);
        else
            outbox__pg_message(PQerrorMessage(st->conn), msg, sizeof msg);
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "connection to %s lost (%s); reconnecting; an unrecorded batch will be "
                    "published again",
                    st->shown, msg);
        PQfinish(st->conn);
        st->conn = NULL;
        forget_connection_state(st);
    }
    st->conn = PQconnectdb(st->conninfo);
    if (!st->conn)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to PostgreSQL");
    if (PQstatus(st->conn) != CONNECTION_OK) {
        code = outbox__error(err, OUTBOX_EIO, "cannot connect to PostgreSQL at %s: %s", st->shown,
                             outbox__pg_message(PQerrorMessage(st->conn), msg, sizeof msg));
        PQfinish(st->conn);
        st->conn = NULL;
        return code;
    }
    forget_connection_state(st);
    PQsetNoticeReceiver(st->conn, notice_receiver, st);
    /* Non-blocking for good (its output is empty now, so this does not
     * wait): the statements within query_timeout need it, and the other
     * calls do not mind (PQexec waits as before, and PQfinish no longer
     * waits to send its goodbye to a server that does not read). */
    if (PQsetnonblocking(st->conn, 1) != 0) {
        code =
            outbox__error(err, OUTBOX_EIO, "cannot make the connection to %s non-blocking: %s",
                          st->shown, outbox__pg_message(PQerrorMessage(st->conn), msg, sizeof msg));
        goto fail;
    }
    if (!PQregisterEventProc(st->conn, store_event, "outbox store", NULL) ||
        !PQsetInstanceData(st->conn, store_event, st)) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to PostgreSQL");
        goto fail;
    }
    /* The same keepalives on the server's side of the session, so that the
     * server too drops a session whose relay vanished (and the partition
     * locks it holds) instead of keeping it for hours. */
    params[0] = st->server_tcp_settings;
    res = outbox__pg_store_query(
        st,
        "SELECT set_config('tcp_keepalives_idle', split_part($1, ' ', 1), false),"
        " set_config('tcp_keepalives_interval', split_part($1, ' ', 2), false),"
        " set_config('tcp_keepalives_count', split_part($1, ' ', 3), false),"
        " set_config('tcp_user_timeout', split_part($1, ' ', 4), false)",
        1, params);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "setting the session's TCP keepalives", err);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    code = outbox__pg_quote_schema(st->conn, st->schema, st->qschema, sizeof st->qschema, err);
    if (code != OUTBOX_OK) goto fail;
    params[0] = st->schema;
    res = outbox__pg_store_query(st,
                                 "SELECT hashtext('outbox.partition:' || $1) & 2147483647,"
                                 " hashtext('outbox.relay:' || $1) & 2147483647,"
                                 " hashtext('outbox.sleep:' || $1)",
                                 1, params);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "setting up the store connection", err);
        PQclear(res);
        goto fail;
    }
    st->part_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    st->member_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 1));
    st->sleep_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 2));
    PQclear(res);
    snprintf(sql, sizeof sql, "LISTEN %s", st->qschema);
    code = outbox__pg_store_exec(st, sql, "listening for enqueue notifications", err);
    if (code != OUTBOX_OK) goto fail;
    st->listening = 1;
    if (st->had_conn) outbox__log(OUTBOX_LOG_INFO, COMPONENT, "reconnected to %s", st->shown);
    st->had_conn = 1;
    if (st->owner[0]) {
        code = outbox__pg_check_schema(st, err);
        if (code == OUTBOX_OK) code = outbox__pg_register_member(st, err);
        if (code != OUTBOX_OK) goto fail;
    }
    return OUTBOX_OK;

fail:
    PQfinish(st->conn);
    st->conn = NULL;
    forget_connection_state(st);
    return code;
}

static void pg_close(void *state)
{
    pg_store *st = state;
    if (!st) return;
    outbox__pg_wal_close(st);
    PQclear(st->ahead_res);
    if (st->rec_conn) PQfinish(st->rec_conn);
    if (st->conn) PQfinish(st->conn);
    outbox__free(st->conninfo);
    outbox__free(st->repl_conninfo);
    outbox__free(st->held);
    outbox__free(st->wait_xacts);
    outbox__buf_free(&st->sql);
    outbox__buf_free(&st->a1);
    outbox__buf_free(&st->a2);
    outbox__buf_free(&st->a3);
    outbox__stretches_free(&st->between);
    outbox__free(st);
}

/* postgres://... or postgresql://... (libpq URI) or postgres:KEYWORDS. */
static int pg_open(void **state, const char *url, outbox_error *err)
{
    pg_store *st = NULL;
    const char *rest;
    int code;

    *state = NULL;
    st = outbox__calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    outbox__buf_init(&st->sql);
    outbox__buf_init(&st->a1);
    outbox__buf_init(&st->a2);
    outbox__buf_init(&st->a3);
    st->held = outbox__calloc(MAX_PARTITIONS, 1);
    if (!st->held) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
        goto fail;
    }

    if (strncasecmp(url, "postgresql:", 11) == 0)
        rest = url + 11;
    else if (strncasecmp(url, "postgres:", 9) == 0)
        rest = url + 9;
    else {
        code = outbox__error(err, OUTBOX_EBADURL, "store URL is not a postgres:// URL");
        goto fail;
    }
    if (strncmp(rest, "//", 2) == 0) {
        outbox__url_redact(url, st->shown, sizeof st->shown);
        code = split_uri(st, url, &st->conninfo, err);
    } else {
        char masked[400];
        redact_keywords(rest, masked, sizeof masked);
        snprintf(st->shown, sizeof st->shown, "postgres:%s", masked);
        code = split_keywords(st, rest, &st->conninfo, err);
    }
    if (code == OUTBOX_OK) code = add_tcp_settings(st, strncmp(rest, "//", 2) == 0, err);
    if (code != OUTBOX_OK) goto fail;
    {
        /* Let libpq check the syntax now: a bad URL is a start-up error.
         * libpq names a key it does not know; the store's own are said
         * too, for a misspelt one of them. */
        char *msg = NULL;
        PQconninfoOption *opts = PQconninfoParse(st->conninfo, &msg);
        if (!opts) {
            char buf[300], *quoted;
            /* libpq quotes the text it could not parse after ': "' (the
             * whole URI, or a percent-encoded value): it may hold the
             * password, and the redacted URL is shown already. */
            outbox__pg_message(msg, buf, sizeof buf);
            if ((quoted = strstr(buf, ": \"")) != NULL) *quoted = '\0';
            code = outbox__error(err, OUTBOX_EBADURL,
                                 "store URL '%s' is not valid for libpq: %s (the store's own "
                                 "settings: %s=%s, %s=%s)",
                                 st->shown, buf, pg_props[0].name,
                                 outbox__prop_placeholder(&pg_props[0]), pg_props[1].name,
                                 outbox__prop_placeholder(&pg_props[1]));
            PQfreemem(msg);
            goto fail;
        }
        PQconninfoFree(opts);
    }
    code = outbox__pg_need_conn(st, err);
    if (code == OUTBOX_OK && st->capture_wal) code = outbox__pg_wal_open(st, err);
    if (code != OUTBOX_OK) goto fail;
    *state = st;
    return OUTBOX_OK;

fail:
    pg_close(st);
    return code;
}

static int pg_init(void *state, int *from_version, int *to_version, outbox_error *err)
{
    pg_store *st = state;
    int code = outbox__pg_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_rollback(st->conn);
    st->in_txn = 0;
    code =
        outbox__pg_migrate(st->conn, st->schema, st->url_partitions, from_version, to_version, err);
    st->partitions = 0;
    st->schema_ok = 0;
    return code;
}

static int pg_check_schema(void *state, outbox_error *err)
{
    return outbox__pg_check_schema(state, err);
}

static int pg_enqueue(void *state, const outbox_msg *msg, outbox_error *err)
{
    pg_store *st = state;
    int code;

    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "enqueue: msg is NULL");
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_rollback(st->conn);
    st->in_txn = 0;
    code = outbox__pg_exec(st->conn, "BEGIN", "starting the enqueue transaction", err);
    if (code != OUTBOX_OK) return code;
    code = outbox_enqueue_pg_schema(st->conn, st->schema, msg, err);
    if (code != OUTBOX_OK) goto fail;
    code = outbox__pg_exec(st->conn, "COMMIT", "committing the enqueue", err);
    if (code != OUTBOX_OK) goto fail;
    return OUTBOX_OK;

fail:
    outbox__pg_rollback(st->conn);
    return code;
}

/* The entries whose work differs in capture=wal: each goes to the
 * capture mode (pg_wal_capture.c) when the store was opened with it. */
#define PG_MODE(ret, name, params, args)                                                           \
    static ret pg_##name params                                                                    \
    {                                                                                              \
        const pg_store *st = state;                                                                \
        return st->wal ? outbox__pg_wal_##name args : outbox__pg_##name args;                      \
    }
PG_MODE(int, lease_acquire, (void *state, const char *owner, int64_t ttl_ms, outbox_error *err),
        (state, owner, ttl_ms, err))
PG_MODE(int, lease_renew, (void *state, const char *owner, int64_t ttl_ms, outbox_error *err),
        (state, owner, ttl_ms, err))
PG_MODE(int, lease_release, (void *state, const char *owner, outbox_error *err),
        (state, owner, err))
PG_MODE(int, claim,
        (void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
         outbox_error *err),
        (state, p, msgs, n, err))
PG_MODE(int, claim_pipelined,
        (void *state, const outbox_claim_params *p, const int64_t *exclude, size_t exclude_count,
         outbox_msg ***msgs, size_t *n, outbox_error *err),
        (state, p, exclude, exclude_count, msgs, n, err))
PG_MODE(int, complete,
        (void *state, const outbox_completion *c, size_t n, const outbox_complete_params *p,
         outbox_error *err),
        (state, c, n, p, err))
PG_MODE(int, complete_pipelined,
        (void *state, const outbox_completion *c, size_t n, const outbox_complete_params *p,
         int in_flight, outbox_error *err),
        (state, c, n, p, in_flight, err))
PG_MODE(int, changed, (void *state, int *changed, outbox_error *err), (state, changed, err))
PG_MODE(int, next_due, (void *state, int64_t *due_us, outbox_error *err), (state, due_us, err))
PG_MODE(int, idle, (void *state, int waiting, outbox_error *err), (state, waiting, err))
PG_MODE(int, wait_fd, (void *state), (state))

#define PG_ENTRY(f) f

#else

#define PG_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_LIBPQ */

/* The PostgreSQL store driver, as postgres:// and as postgresql:// (the
 * other scheme libpq takes): one driver, two descriptions for help. */
/* clang-format off */
#define PG_STORE_OPS(scheme_, usage_, doc_)                                                        \
    {                                                                                              \
        .version = 9,                                                                              \
        .scheme = scheme_,                                                                         \
        .open = PG_ENTRY(pg_open),                                                                 \
        .close = PG_ENTRY(pg_close),                                                               \
        .init = PG_ENTRY(pg_init),                                                                 \
        .check_schema = PG_ENTRY(pg_check_schema),                                                 \
        .enqueue = PG_ENTRY(pg_enqueue),                                                           \
        .lease_acquire = PG_ENTRY(pg_lease_acquire),                                               \
        .lease_renew = PG_ENTRY(pg_lease_renew),                                                   \
        .lease_release = PG_ENTRY(pg_lease_release),                                               \
        .claim = PG_ENTRY(pg_claim),                                                               \
        .complete = PG_ENTRY(pg_complete),                                                         \
        .changed = PG_ENTRY(pg_changed),                                                           \
        .next_due = PG_ENTRY(pg_next_due),                                                         \
        .wake_path = PG_ENTRY(outbox__pg_wake_path),                                               \
        .status = PG_ENTRY(outbox__pg_status),                                                     \
        .list = PG_ENTRY(outbox__pg_list),                                                         \
        .get = PG_ENTRY(outbox__pg_get),                                                           \
        .retry = PG_ENTRY(outbox__pg_retry),                                                       \
        .purge = PG_ENTRY(outbox__pg_purge),                                                       \
        .idle = PG_ENTRY(pg_idle),                                                                 \
        .wait_fd = PG_ENTRY(pg_wait_fd),                                                           \
        .inbox_purge = PG_ENTRY(outbox__pg_inbox_purge),                                           \
        .claim_pipelined = PG_ENTRY(pg_claim_pipelined),                                           \
        .complete_pipelined = PG_ENTRY(pg_complete_pipelined),                                     \
        .drop = PG_ENTRY(outbox__pg_drop),                                                         \
        .lease_note = PG_ENTRY(outbox__pg_lease_note),                                             \
        .partitions_held = PG_ENTRY(outbox__pg_partitions_held),                                   \
        .rebalance_wanted = PG_ENTRY(outbox__pg_rebalance_wanted),                                 \
        .claim_ahead = PG_ENTRY(outbox__pg_claim_ahead),                                           \
        .claim_ahead_end = PG_ENTRY(outbox__pg_claim_ahead_end),                                   \
        .complete_behind = PG_ENTRY(outbox__pg_complete_behind),                                   \
        .complete_behind_end = PG_ENTRY(outbox__pg_complete_behind_end),                           \
        .usage = usage_,                                                                           \
        .doc = doc_,                                                                               \
        .props = pg_props,                                                                         \
    }
/* clang-format on */

const outbox_store_ops outbox__store_postgres = PG_STORE_OPS(
    "postgres", "postgres://USER@HOST/DB",
    "PostgreSQL: a libpq connection URI, or libpq keywords after postgres: (postgres:host=HOST "
    "dbname=DB ...).  The settings below are the store's, as query parameters or as keywords; "
    "libpq's own parameters (sslmode, connect_timeout, application_name, ...) are accepted as "
    "they are and passed to libpq.");

const outbox_store_ops outbox__store_postgresql =
    PG_STORE_OPS("postgresql", "postgresql://USER@HOST/DB", "The same store as postgres://.");
