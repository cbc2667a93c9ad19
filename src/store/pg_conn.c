/*
 * pg_conn.c - the PostgreSQL driver's connection: libpq errors mapped to
 * outbox codes, the store URL and its own options (schema, partitions),
 * connecting and reconnecting, server notices to the log, open and close,
 * and the `outbox__store_postgres` ops table the relay and the CLI use.
 * The design is in docs/POSTGRES.md.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
            while (*q == '\n' || *q == '\r' || *q == '\t' || *q == ' ') q++;
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
    while (o > 0 && buf[o - 1] == ' ') o--;
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
                 detail ? detail : "", detail ? ")" : "", hint ? "; hint: " : "",
                 hint ? hint : "");
        return outbox__pg_message(joined, buf, len);
    }
    primary = res ? PQresultErrorMessage(res) : NULL;
    if (!primary || !*primary) primary = conn ? PQerrorMessage(conn) : "no connection";
    return outbox__pg_message(primary, buf, len);
}

/* Maps a failed result (res may be NULL) to an outbox code and fills err. */
int outbox__pg_fail(PGconn *conn, PGresult *res, const char *what, outbox_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char buf[400];
    int code = OUTBOX_ESTORE;

    outbox__pg_error_text(conn, res, buf, sizeof buf);
    if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
        return outbox__error(err, OUTBOX_EIO, "%s: the PostgreSQL connection was lost: %s",
                             what, buf);
    if (state) {
        if (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0 ||
            strcmp(state, "42883") == 0)
            code = OUTBOX_ENOSCHEMA;
        else if (strcmp(state, "23505") == 0) code = OUTBOX_EEXISTS;
        else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
                 strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0)
            code = OUTBOX_EBUSY;
        else if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
                 strncmp(state, "53", 2) == 0)
            code = OUTBOX_EIO;
        else if (strcmp(state, "54000") == 0) code = OUTBOX_ETOOBIG;
    }
    if (code == OUTBOX_ENOSCHEMA)
        return outbox__error(err, code,
                             "%s: %s: the outbox schema is missing; run `outbox init --store "
                             "postgres://...` or call outbox_schema_init_pg",
                             what, buf);
    return outbox__error(err, code, "%s: %s (SQLSTATE %s)", what, buf, state ? state : "none");
}

/* Runs sql without parameters; expects no rows (COMMAND_OK or TUPLES_OK). */
int outbox__pg_exec(PGconn *conn, const char *sql, const char *what, outbox_error *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType s = PQresultStatus(res);
    int code = OUTBOX_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) code = outbox__pg_fail(conn, res, what, err);
    PQclear(res);
    return code;
}

void outbox__pg_rollback(PGconn *conn)
{
    if (conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(conn, "ROLLBACK");
        PQclear(res);
    }
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
            while (*q == ' ') q++;
            if (*q == '=') {
                const char *mask = "password=***";
                while (*mask && o + 1 < len) out[o++] = *mask++;
                q++;
                while (*q == ' ') q++;
                if (*q == '\'') {
                    for (q++; *q && *q != '\''; q++)
                        if (*q == '\\' && q[1]) q++;
                    if (*q) q++;
                } else {
                    while (*q && *q != ' ') q++;
                }
                p = q;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

/* Takes our parameters out of a libpq URI's query.  Writes the rest to
 * conninfo (owned by the caller). */
static int split_uri(pg_store *st, const char *url, char **conninfo, outbox_error *err)
{
    const char *q = strchr(url, '?');
    outbox_buf b;
    int first = 1;

    outbox__buf_init(&b);
    outbox__buf_append(&b, url, q ? (size_t)(q - url) : strlen(url));
    if (q) {
        const char *p = q + 1;
        while (*p) {
            const char *amp = strchr(p, '&');
            size_t n = amp ? (size_t)(amp - p) : strlen(p);
            if (n > 7 && strncmp(p, "schema=", 7) == 0) {
                if (n - 7 >= sizeof st->schema) {
                    outbox__buf_free(&b);
                    return outbox__error(err, OUTBOX_ECONFIG,
                                         "store URL '%s': schema name is too long (at most 63 "
                                         "characters)",
                                         st->shown);
                }
                memcpy(st->schema, p + 7, n - 7);
                st->schema[n - 7] = '\0';
            } else if (n > 11 && strncmp(p, "partitions=", 11) == 0) {
                char num[16];
                char *end;
                long v;
                snprintf(num, sizeof num, "%.*s", (int)(n - 11 < 15 ? n - 11 : 15), p + 11);
                v = strtol(num, &end, 10);
                if (*end || v < 1 || v > MAX_PARTITIONS) {
                    outbox__buf_free(&b);
                    return outbox__error(err, OUTBOX_ECONFIG,
                                         "store URL '%s': partitions must be a number from 1 "
                                         "to %d (default %d)",
                                         st->shown, MAX_PARTITIONS, DEFAULT_PARTITIONS);
                }
                st->url_partitions = (int)v;
            } else if (n > 0) {
                outbox__buf_append(&b, first ? "?" : "&", 1);
                outbox__buf_append(&b, p, n);
                first = 0;
            }
            p += n;
            if (*p == '&') p++;
        }
    }
    if (b.oom) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    *conninfo = b.data ? b.data : strdup(url);
    return *conninfo ? OUTBOX_OK
                     : outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
}

/* Takes schema=... and partitions=... out of a keyword string. */
static int split_keywords(pg_store *st, const char *kw, char **conninfo, outbox_error *err)
{
    outbox_buf b;
    const char *p = kw;

    outbox__buf_init(&b);
    outbox__buf_puts(&b, "");
    while (*p) {
        const char *start, *eq, *vstart, *vend;
        size_t klen;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        start = p;
        while (*p && *p != '=' && *p != ' ') p++;
        klen = (size_t)(p - start);
        while (*p == ' ') p++;
        if (*p != '=') {
            outbox__buf_free(&b);
            return outbox__error(err, OUTBOX_EBADURL,
                                 "store URL '%s' is not a libpq keyword string (key=value ...) "
                                 "nor a URI: write postgres://user@host/db or "
                                 "postgres:host=... dbname=...",
                                 st->shown);
        }
        eq = p++;
        (void)eq;
        while (*p == ' ') p++;
        vstart = p;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1]) p++;
            if (*p) p++;
        } else {
            while (*p && *p != ' ' && *p != '\t') p++;
        }
        vend = p;
        if (klen == 6 && strncmp(start, "schema", 6) == 0) {
            size_t n = (size_t)(vend - vstart);
            if (n >= sizeof st->schema) n = sizeof st->schema - 1;
            memcpy(st->schema, vstart, n);
            st->schema[n] = '\0';
        } else if (klen == 10 && strncmp(start, "partitions", 10) == 0) {
            char num[16];
            char *end;
            long v;
            snprintf(num, sizeof num, "%.*s", (int)((size_t)(vend - vstart) < 15 ? vend - vstart : 15),
                     vstart);
            v = strtol(num, &end, 10);
            if (*end || v < 1 || v > MAX_PARTITIONS) {
                outbox__buf_free(&b);
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "store URL '%s': partitions must be a number from 1 to %d "
                                     "(default %d)",
                                     st->shown, MAX_PARTITIONS, DEFAULT_PARTITIONS);
            }
            st->url_partitions = (int)v;
        } else {
            if (b.len > 0) outbox__buf_append(&b, " ", 1);
            outbox__buf_append(&b, start, (size_t)(vend - start));
        }
    }
    if (b.oom || !b.data) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    *conninfo = b.data;
    return OUTBOX_OK;
}

static void forget_connection_state(pg_store *st)
{
    st->in_txn = 0;
    st->prepared = 0;
    st->schema_ok = 0;
    st->listening = 0;
    st->sleep_held = 0;
    st->member_id = 0;
    if (st->held) memset(st->held, 0, MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
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
    if (strcmp(severity, "WARNING") == 0) level = OUTBOX_LOG_WARN;
    else if (strcmp(severity, "NOTICE") == 0 || strcmp(severity, "INFO") == 0)
        level = OUTBOX_LOG_INFO;
    if (!outbox__log_enabled(level)) return;
    outbox__log(level, COMPONENT, "%s: server %s: %s", st->shown, severity,
                outbox__pg_error_text(NULL, res, text, sizeof text));
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
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "connection to %s lost (%s); reconnecting; an unrecorded batch will be "
                    "published again",
                    st->shown, outbox__pg_message(PQerrorMessage(st->conn), msg, sizeof msg));
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
    code = outbox__pg_quote_schema(st->conn, st->schema, st->qschema, sizeof st->qschema, err);
    if (code != OUTBOX_OK) goto fail;
    params[0] = st->schema;
    res = PQexecParams(st->conn,
                       "SELECT hashtext('outbox.partition:' || $1) & 2147483647,"
                       " hashtext('outbox.relay:' || $1) & 2147483647,"
                       " hashtext('outbox.sleep:' || $1)",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(st->conn, res, "setting up the store connection", err);
        PQclear(res);
        goto fail;
    }
    st->part_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    st->member_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 1));
    st->sleep_key = (int32_t)outbox__pg_parse_i64(PQgetvalue(res, 0, 2));
    PQclear(res);
    snprintf(sql, sizeof sql, "LISTEN %s", st->qschema);
    code = outbox__pg_exec(st->conn, sql, "listening for enqueue notifications", err);
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
    if (st->conn) PQfinish(st->conn);
    free(st->conninfo);
    free(st->held);
    free(st->wait_xacts);
    outbox__buf_free(&st->sql);
    outbox__buf_free(&st->a1);
    outbox__buf_free(&st->a2);
    outbox__buf_free(&st->a3);
    free(st);
}

/* postgres://... or postgresql://... (libpq URI) or postgres:KEYWORDS. */
static int pg_open(void **state, const char *url, outbox_error *err)
{
    pg_store *st = NULL;
    const char *rest;
    int code;

    *state = NULL;
    st = calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    outbox__buf_init(&st->sql);
    outbox__buf_init(&st->a1);
    outbox__buf_init(&st->a2);
    outbox__buf_init(&st->a3);
    snprintf(st->schema, sizeof st->schema, "%s", DEFAULT_SCHEMA);
    st->held = calloc(MAX_PARTITIONS, 1);
    if (!st->held) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
        goto fail;
    }

    if (strncasecmp(url, "postgresql:", 11) == 0) rest = url + 11;
    else if (strncasecmp(url, "postgres:", 9) == 0) rest = url + 9;
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
    if (code != OUTBOX_OK) goto fail;
    if (!outbox__pg_valid_schema(st->schema)) {
        code = outbox__pg_schema_error(st->schema, err);
        goto fail;
    }
    {
        /* Let libpq check the syntax now: a bad URL is a start-up error. */
        char *msg = NULL;
        PQconninfoOption *opts = PQconninfoParse(st->conninfo, &msg);
        if (!opts) {
            char buf[300];
            code = outbox__error(err, OUTBOX_EBADURL, "store URL '%s' is not valid for libpq: %s",
                                 st->shown, outbox__pg_message(msg, buf, sizeof buf));
            PQfreemem(msg);
            goto fail;
        }
        PQconninfoFree(opts);
    }
    code = outbox__pg_need_conn(st, err);
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

/* The PostgreSQL store driver (schemes "postgres" and "postgresql"). */
const outbox_store_ops outbox__store_postgres = {
    .version = 5,
    .scheme = "postgres",
    .open = pg_open,
    .close = pg_close,
    .init = pg_init,
    .check_schema = pg_check_schema,
    .enqueue = pg_enqueue,
    .lease_acquire = outbox__pg_lease_acquire,
    .lease_renew = outbox__pg_lease_renew,
    .lease_release = outbox__pg_lease_release,
    .claim = outbox__pg_claim,
    .complete = outbox__pg_complete,
    .changed = outbox__pg_changed,
    .next_due = outbox__pg_next_due,
    .wake_path = outbox__pg_wake_path,
    .status = outbox__pg_status,
    .list = outbox__pg_list,
    .get = outbox__pg_get,
    .retry = outbox__pg_retry,
    .purge = outbox__pg_purge,
    .idle = outbox__pg_idle,
    .wait_fd = outbox__pg_wait_fd,
    .inbox_purge = outbox__pg_inbox_purge,
    .claim_pipelined = outbox__pg_claim_pipelined,
    .complete_pipelined = outbox__pg_complete_pipelined,
    .drop = outbox__pg_drop,
    .lease_note = outbox__pg_lease_note,
};

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_conn_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
