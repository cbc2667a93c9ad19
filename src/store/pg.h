/*
 * pg.h - what the files of the PostgreSQL store (src/store/pg_*.c) share:
 * the driver's limits and defaults, its state, the SQL that reads
 * timestamps as unix microseconds, and the functions one file calls in
 * another.  Private to those files.  Only the limits and defaults are
 * there without OUTBOX_HAVE_LIBPQ: the store's property table (pg_conn.c)
 * is in every build, so help and docs describe it where libpq is absent.
 * The design is in docs/POSTGRES.md; each function's contract is at its
 * definition.
 */
#ifndef OUTBOX_PG_H
#define OUTBOX_PG_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

#define COMPONENT "store.postgres"
#define DEFAULT_SCHEMA "outbox"
#define DEFAULT_PARTITIONS 32
#define MAX_PARTITIONS 1024

/* ------------------------------------------------------------------------
 * WAL capture: the message content on the WAL (docs/WAL.md, encoding
 * version 1), decoded by pg_wal_decode.c in every build (tests use it
 * without a server).
 * ---------------------------------------------------------------------- */

/* The seven fields of a version-1 content, each a slice of the content
 * (not NUL-terminated), in the encoding's order: id, type, aggregate_type,
 * aggregate_id, occurred_at, headers, payload. */
enum {
    WAL_F_ID,
    WAL_F_TYPE,
    WAL_F_AGG_TYPE,
    WAL_F_AGG_ID,
    WAL_F_OCCURRED,
    WAL_F_HEADERS,
    WAL_F_PAYLOAD,
    WAL_F_COUNT
};

typedef struct outbox_pg_wal_fields {
    const char *at[WAL_F_COUNT];
    size_t len[WAL_F_COUNT];
} outbox_pg_wal_fields;

/* Splits content[0..len) ("v1" and seven netstrings) into out.
 * OUTBOX_EINVAL with err saying what is wrong (a version other than v1, a
 * bad length, a missing ',', a NUL byte, too few fields or bytes after the
 * seventh).  The fields' own rules are checked when the message is built
 * (outbox__pg_wal_message). */
int outbox__pg_wal_decode(const char *content, size_t len, outbox_pg_wal_fields *out,
                          outbox_error *err);

/* Decodes content and builds the message (outbox__msg_from_row's checks,
 * seq as given).  EINVAL or an EBAD* code with err naming the problem;
 * ENOMEM.  The caller frees *out with outbox_msg_free. */
int outbox__pg_wal_message(const char *content, size_t len, int64_t seq, outbox_msg **out,
                           outbox_error *err);

#ifdef OUTBOX_HAVE_LIBPQ

#include <libpq-fe.h>

typedef struct pg_store {
    PGconn *conn;
    char *conninfo;  /* what libpq gets (may hold a password: never shown) */
    char shown[512]; /* redacted URL for messages */
    char schema[64];
    char qschema[160];
    /* keepalives and tcp_user_timeout (pg_props): for libpq as keywords,
     * and for the server's side of the session as "IDLE INTERVAL COUNT MS" */
    char tcp_settings[200];
    char server_tcp_settings[96];
    /* query_timeout (pg_props): how long a statement on conn may go
     * unanswered; timed_out: the last one did not answer in time, so conn
     * was closed (outbox__pg_store_fail says so). */
    int64_t query_timeout_ms;
    int timed_out;
    int url_partitions; /* partitions= the URL gives, applied at init (0: not given) */
    int partitions;     /* from meta, 0 until read */
    int32_t part_key;   /* advisory lock class of partitions */
    int32_t member_key; /* advisory lock class of relay membership */
    int32_t sleep_key;  /* advisory lock class of "a relay is asleep" (key 0) */
    int sleep_held;     /* this session holds the shared "asleep" lock */
    int in_txn;         /* a claim transaction is open */
    int prepared;       /* the hot statements are prepared on conn */
    int schema_ok;      /* the schema version was checked on conn */
    int listening;
    int had_conn;       /* a connection existed: the next connect is a reconnect */
    int notified_first; /* `changed` said 1 once */
    int waiting;        /* the relay's last `idle` request (kept over reconnects) */
    int live_seen;      /* live relays at the last rebalance */
    int once_waited;    /* a --once relay waited for busy partitions already */

    /* Relay membership (after lease_acquire). */
    char owner[128];
    char note[256];      /* lease_note's text, kept for re-registering */
    int note_dirty;      /* note not yet written (set during a claim) */
    int64_t member_id;   /* row in {s}.relays, 0 when not registered */
    unsigned char *held; /* partitions[i] != 0 when this session holds i */
    int held_count;
    int64_t next_rebalance_us; /* monotonic */
    int release_wanted;        /* holds more than its share; releases with nothing in flight */
    int64_t ttl_ms;

    /* Claim floor (see "Claim floor" in docs/POSTGRES.md). */
    int64_t floor;         /* no row below it is pending; 0: none known */
    char floor_epoch[64];  /* meta 'requeue_epoch' when floor was found */
    int floor_off;         /* this session cannot read what the floor needs */
    int64_t floor_next_us; /* monotonic time of the next refresh */
    int64_t wait_seq;      /* L of a refresh waiting for wait_xacts to end */
    char *wait_xacts;      /* array literal of their virtual xids; NULL: none */

    outbox_buf sql;           /* scratch */
    outbox_buf a1, a2, a3;    /* array literals for complete */
    outbox_stretches between; /* pipelined claim: the seqs not in flight */

    /* WAL capture (capture=wal, pg_wal_capture.c). */
    int capture_wal;      /* the relay reads the replication stream */
    char slot[64];        /* its logical replication slot */
    char publication[64]; /* and publication */
    char *repl_conninfo;  /* conninfo with replication=database */
    struct pg_wal *wal;   /* the stream's state; NULL in table mode */

    /* Claim ahead (pg_claim.c): the pipelined claim sent without waiting. */
    int ahead_out;             /* 1: sent (its result to come), 2: nothing to read */
    int ahead_sent;            /* its results are still to be read from conn */
    int64_t ahead_deadline_us; /* monotonic: query_timeout from its sending */
    PGresult *ahead_res;       /* its result, read by outbox__pg_store_settle */

    /* Complete behind (pg_claim.c): a wholly sent batch's outcomes, sent on
     * a connection of their own without waiting. */
    PGconn *rec_conn;        /* NULL until the first, or after a failure */
    int rec_sent;            /* its result is still to be read */
    int64_t rec_deadline_us; /* monotonic: query_timeout from its sending */
} pg_store;

/* Timestamps as unix microseconds, total: no stored value can make a
 * statement that serves every row fail ('infinity' and years past 294276
 * do not fit a bigint).  US_OR_NULL gives NULL outside the years 1970 to
 * 9999 (what a message may hold: the claim quarantines such a row); US
 * clamps into them (for showing and counting). */
#define IN_YEARS(col)                                                                              \
    "(" col " >= '1970-01-01 00:00:00+00' AND " col " < '10000-01-01 00:00:00+00')"
#define US_OR_NULL(col)                                                                            \
    "CASE WHEN " IN_YEARS(col) " THEN (extract(epoch FROM " col ") * 1000000)::bigint END"
#define US(col)                                                                                    \
    "(extract(epoch FROM least(greatest(" col ", '1970-01-01 00:00:00+00'::timestamptz),"          \
    " '9999-12-31 23:59:59.999999+00'::timestamptz)) * 1000000)::bigint"

/* ------------------------------------------------------------------------
 * pg_conn.c: libpq errors, the connection
 * ---------------------------------------------------------------------- */

/* msg as one line in buf; returns buf. */
const char *outbox__pg_message(const char *msg, char *buf, size_t len);
/* The error of res (NULL: conn's) as one line in buf, without row data. */
const char *outbox__pg_error_text(const PGconn *conn, const PGresult *res, char *buf, size_t len);
/* Maps a failed result (res may be NULL) to an outbox code, err filled
 * (on a store's connection whose statement timed out, the timeout). */
int outbox__pg_fail(PGconn *conn, PGresult *res, const char *what, outbox_error *err);
/* Runs sql without parameters, expecting no rows. */
int outbox__pg_exec(PGconn *conn, const char *sql, const char *what, outbox_error *err);
/* Rolls back an open transaction on conn, if any. */
void outbox__pg_rollback(PGconn *conn);

/* Runs sql on conn (in non-blocking mode) as PQexec does and returns the
 * last result, or NULL when it could not be sent; waits at most timeout_ms
 * for the server: then *expired = 1, NULL is returned and the connection
 * is left as it was, for the caller to close. */
PGresult *outbox__pg_query_within(PGconn *conn, int64_t timeout_ms, const char *sql, int *expired);

/* The store's own connection (st->conn), with its query_timeout: these
 * run a statement as PQexec (nparams 0: several statements may be given),
 * PQexecParams, PQexecPrepared and PQprepare do, with text parameters, and
 * return the last result (NULL when it could not be sent).  When the
 * server does not answer within query_timeout, the connection is closed:
 * NULL is returned, PQstatus(st->conn) says CONNECTION_BAD (the
 * connection stays allocated; outbox__pg_need_conn opens a new one) and
 * outbox__pg_store_fail says what happened. */
PGresult *outbox__pg_store_query(pg_store *st, const char *sql, int nparams,
                                 const char *const *params);
PGresult *outbox__pg_store_query_prepared(pg_store *st, const char *name, int nparams,
                                          const char *const *params);
PGresult *outbox__pg_store_prepare(pg_store *st, const char *name, const char *sql);
/* Sends a prepared statement on st->conn without waiting for its answer
 * (the claim ahead): 1 when sent, 0 when not (the connection was lost,
 * or the server did not read it within query_timeout, which closes the
 * connection as above).  Until outbox__pg_store_settle its results are due
 * on st->conn; every statement above settles first. */
int outbox__pg_store_send_prepared(pg_store *st, const char *name, int nparams,
                                   const char *const *params);
/* Reads the results of the statement sent ahead, if one is due, into
 * st->ahead_res (NULL when the connection was lost or the server did not
 * answer within query_timeout from its sending). */
void outbox__pg_store_settle(pg_store *st);
/* The error of a statement (what) the server did not answer within st's
 * query_timeout: OUTBOX_EIO, saying what was done and what to change. */
int outbox__pg_timeout_error(const pg_store *st, const char *what, outbox_error *err);
/* outbox__pg_store_query when conn is a store's connection (the other
 * files' functions that take a PGconn); PQexec or PQexecParams on any
 * other (the caller's). */
PGresult *outbox__pg_conn_query(PGconn *conn, const char *sql, int nparams,
                                const char *const *params);
/* outbox__pg_fail for st->conn: a timed-out statement is said as such. */
int outbox__pg_store_fail(pg_store *st, PGresult *res, const char *what, outbox_error *err);
/* outbox__pg_exec and outbox__pg_rollback on st->conn, within query_timeout. */
int outbox__pg_store_exec(pg_store *st, const char *sql, const char *what, outbox_error *err);
void outbox__pg_store_rollback(pg_store *st);
/* A decimal text as int64 (0 for NULL or ""). */
int64_t outbox__pg_parse_i64(const char *s);
/* The two halves of a statement within a deadline (monotonic us), for a
 * connection other than st->conn: outbox__pg_send_within sends sql (several
 * statements may be given) on the non-blocking conn: 1 when sent, 0 when
 * not, -1 when the server did not read it by the deadline;
 * outbox__pg_collect_within reads its last result (NULL and *expired = 1
 * past the deadline). */
int outbox__pg_send_within(PGconn *conn, int64_t deadline_us, const char *sql);
PGresult *outbox__pg_collect_within(PGconn *conn, int64_t deadline_us, int *expired);
/* A non-blocking connection with st's settings and no session set-up
 * (no lease, no LISTEN): NULL with err filled when it cannot connect. */
PGconn *outbox__pg_connect_plain(pg_store *st, outbox_error *err);
/* Connects or reconnects st and sets up its session. */
int outbox__pg_need_conn(pg_store *st, outbox_error *err);

/* ------------------------------------------------------------------------
 * pg_schema.c: schema names, migrations, version checks
 * ---------------------------------------------------------------------- */

int outbox__pg_valid_schema(const char *s);
int outbox__pg_schema_error(const char *schema, outbox_error *err);
/* Expands a schema template ({s}, {n}, {P}) into b. */
void outbox__pg_expand(outbox_buf *b, const char *tmpl, const char *qschema, const char *schema,
                       int partitions);
int outbox__pg_quote_schema(PGconn *conn, const char *schema, char *out, size_t len,
                            outbox_error *err);
/* Creates or upgrades the schema in a transaction of its own. */
int outbox__pg_migrate(PGconn *conn, const char *schema, int requested, int *from, int *to,
                       outbox_error *err);
int outbox__pg_refuse_newer_schema(PGconn *conn, const char *schema, const char *qschema,
                                   outbox_error *err);
int outbox__pg_check_schema(pg_store *st, outbox_error *err);
/* outbox__pg_need_conn, and the schema version checked once per connection. */
int outbox__pg_need_schema(pg_store *st, outbox_error *err);
/* The schema version this build creates and needs. */
int outbox__pg_schema_version(void);

/* ------------------------------------------------------------------------
 * pg_lease.c: relays, partitions
 * ---------------------------------------------------------------------- */

void outbox__pg_host_name(char *out, size_t len);
int outbox__pg_register_member(pg_store *st, outbox_error *err);
int outbox__pg_maybe_rebalance(pg_store *st, int force, outbox_error *err);
int outbox__pg_rebalance_in_flight(pg_store *st, outbox_error *err);
int outbox__pg_take_all_for_once(pg_store *st, outbox_error *err);

/* ------------------------------------------------------------------------
 * pg_claim.c
 * ---------------------------------------------------------------------- */

/* Ends an open claim transaction (the relay dropped its batch). */
void outbox__pg_end_claim(pg_store *st);

/* ------------------------------------------------------------------------
 * The driver's entry points, gathered in outbox__store_postgres and
 * outbox__store_postgresql (pg_conn.c); their contracts are those of
 * outbox_store_ops (internal.h).
 * ---------------------------------------------------------------------- */

/* pg_lease.c */
int outbox__pg_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__pg_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__pg_lease_release(void *state, const char *owner, outbox_error *err);
int outbox__pg_lease_note(void *state, const char *owner, const char *note, outbox_error *err);
int outbox__pg_partitions_held(void *state);
int outbox__pg_rebalance_wanted(void *state);
int outbox__pg_changed(void *state, int *changed, outbox_error *err);
const char *outbox__pg_wake_path(void *state);
int outbox__pg_idle(void *state, int waiting, outbox_error *err);
int outbox__pg_wait_fd(void *state);

/* pg_claim.c */
int outbox__pg_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                     outbox_error *err);
int outbox__pg_claim_pipelined(void *state, const outbox_claim_params *p, const int64_t *exclude,
                               size_t exclude_count, outbox_msg ***msgs, size_t *n,
                               outbox_error *err);
int outbox__pg_claim_ahead(void *state, const outbox_claim_params *p, const int64_t *exclude,
                           size_t exclude_count, outbox_error *err);
int outbox__pg_claim_ahead_end(void *state, int keep, const outbox_claim_params *p,
                               outbox_msg ***msgs, size_t *n, outbox_error *err);
int outbox__pg_complete_behind(void *state, const outbox_completion *c, size_t n,
                               const outbox_complete_params *p, int in_flight, outbox_error *err);
int outbox__pg_complete_behind_end(void *state, outbox_error *err);
int outbox__pg_complete(void *state, const outbox_completion *c, size_t n,
                        const outbox_complete_params *p, outbox_error *err);
int outbox__pg_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                  const outbox_complete_params *p, int in_flight,
                                  outbox_error *err);
int outbox__pg_next_due(void *state, int64_t *due_us, outbox_error *err);

/* pg_admin.c */
int outbox__pg_status(void *state, outbox_status *out, outbox_error *err);
int outbox__pg_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                    outbox_error *err);
int outbox__pg_get(void *state, const char *id, outbox_msg **msg, outbox_error *err);
int outbox__pg_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                     outbox_error *err);
int outbox__pg_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err);
int outbox__pg_drop(void *state, const char *const *ids, size_t n, int all,
                    outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err);
int outbox__pg_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                           int64_t *count, outbox_error *err);

/* pg_wal_capture.c: the capture mode (capture=wal).  open makes st->wal
 * (no connection yet), close frees it; the others are the driver's entry
 * points in capture mode, dispatched from pg_conn.c when st->wal is set. */
int outbox__pg_wal_open(pg_store *st, outbox_error *err);
void outbox__pg_wal_close(pg_store *st);
int outbox__pg_wal_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__pg_wal_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__pg_wal_lease_release(void *state, const char *owner, outbox_error *err);
int outbox__pg_wal_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                         outbox_error *err);
int outbox__pg_wal_claim_pipelined(void *state, const outbox_claim_params *p,
                                   const int64_t *exclude, size_t exclude_count, outbox_msg ***msgs,
                                   size_t *n, outbox_error *err);
int outbox__pg_wal_complete(void *state, const outbox_completion *c, size_t n,
                            const outbox_complete_params *p, outbox_error *err);
int outbox__pg_wal_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                      const outbox_complete_params *p, int in_flight,
                                      outbox_error *err);
int outbox__pg_wal_changed(void *state, int *changed, outbox_error *err);
int outbox__pg_wal_next_due(void *state, int64_t *due_us, outbox_error *err);
int outbox__pg_wal_idle(void *state, int waiting, outbox_error *err);
int outbox__pg_wal_wait_fd(void *state);

#endif /* OUTBOX_HAVE_LIBPQ */

#endif /* OUTBOX_PG_H */
