/*
 * my.h - what the files of the MariaDB/MySQL store (src/store/my_*.c)
 * share: the driver's limits and defaults, its state, and the functions one
 * file calls in another.  Private to those files.  Only the limits and
 * defaults are there without OUTBOX_HAVE_MARIADB: the store's property
 * table (my_conn.c) is in every build, so help and docs describe it where
 * MariaDB Connector/C is absent.  The design is in docs/MARIADB.md; each
 * function's contract is at its definition.
 */
#ifndef OUTBOX_MY_H
#define OUTBOX_MY_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

#define MY_COMPONENT "store.mysql"
#define MY_DEFAULT_PREFIX "outbox"
#define MY_DEFAULT_PARTITIONS 32
#define MY_MAX_PARTITIONS 1024

/* Oldest servers with FOR UPDATE SKIP LOCKED. */
#define MY_MIN_MARIADB 100600L /* 10.6 */
#define MY_MIN_MYSQL 80000L    /* 8.0 */

/* Parses a server version string ("10.11.6-MariaDB-0+deb12u1",
 * "8.0.36", "5.5.5-10.6.12-MariaDB" from proxies) into *version
 * (major * 10000 + minor * 100 + patch) and *mariadb (1 for MariaDB).
 * Returns 0 when it cannot be read. */
int outbox__my_parse_version(const char *text, long *version, int *mariadb);

/* OUTBOX_OK when the server (version text as above) has what the store
 * needs; OUTBOX_ECONFIG naming the version found and the one needed. */
int outbox__my_check_version(const char *text, outbox_error *err);

/* A table prefix we accept: [A-Za-z_][A-Za-z0-9_]*, at most 40 bytes. */
int outbox__my_valid_prefix(const char *s);
int outbox__my_prefix_error(const char *prefix, outbox_error *err);

#ifdef OUTBOX_HAVE_MARIADB

#include <mysql.h>

typedef struct my_store {
    MYSQL *conn;
    char shown[512]; /* redacted URL for messages */
    char *host, *user, *password, *database, *socket;
    unsigned int port;
    char *tls_ca, *tls_cert, *tls_key;
    int tls;
    int64_t connect_timeout_ms;
    int64_t query_timeout_ms; /* MYSQL_OPT_READ_TIMEOUT and _WRITE_TIMEOUT */
    char prefix[48];
    int url_partitions; /* partitions= the URL gives, applied at init (0: not given) */
    int partitions;     /* from meta, 0 until read */
    int in_txn;         /* a claim transaction is open */
    int schema_ok;      /* the schema version was checked on conn */
    int had_conn;       /* a connection existed: the next connect is a reconnect */
    int notified_first; /* `changed` said 1 once */
    int64_t last_max_seq, last_epoch;

    /* Relay membership (after lease_acquire). */
    char owner[128];
    char note[256];
    int note_dirty;
    int64_t member_id;   /* row in {p}_relays, 0 when not registered */
    unsigned char *held; /* held[i] != 0 when this relay holds partition i */
    int held_count;
    int64_t next_rebalance_us; /* monotonic */
    int64_t ttl_ms;

    outbox_buf sql; /* scratch */
    char wake_key[600];
} my_store;

/* ------------------------------------------------------------------------
 * my_conn.c: errors, the connection
 * ---------------------------------------------------------------------- */

/* Maps conn's last error to an outbox code; err says `what` failed. */
int outbox__my_fail(MYSQL *conn, const char *what, outbox_error *err);
/* Runs sql (one statement or several; result sets are discarded); adds the
 * rows the statements changed to *affected (may be NULL). */
int outbox__my_exec_count(MYSQL *conn, const char *sql, const char *what, int64_t *affected,
                          outbox_error *err);
/* outbox__my_exec_count without the count. */
int outbox__my_exec(MYSQL *conn, const char *sql, const char *what, outbox_error *err);
/* Runs sql and returns its stored result (NULL on error, err filled). */
MYSQL_RES *outbox__my_query(MYSQL *conn, const char *sql, const char *what, int *code,
                            outbox_error *err);
/* One integer from sql's first row and column (0 for NULL). */
int outbox__my_query_i64(MYSQL *conn, const char *sql, const char *what, int64_t *out,
                         outbox_error *err);
/* Rolls back an open transaction on conn, if any. */
void outbox__my_rollback(MYSQL *conn);
/* A decimal text as int64 (0 for NULL or ""). */
int64_t outbox__my_i64(const char *s);
/* Appends s (n bytes) as a string literal that any connection character
 * set reads alike: _utf8mb4 X'hex' (text columns) or X'hex' (bytes). */
void outbox__my_append_text(outbox_buf *b, const char *s, size_t n);
/* Appends the table name prefix + suffix, quoted with backticks. */
void outbox__my_table(outbox_buf *b, const char *prefix, const char *suffix);
/* Connects or reconnects st and sets up its session. */
int outbox__my_need_conn(my_store *st, outbox_error *err);

/* ------------------------------------------------------------------------
 * my_schema.c: migrations, version checks
 * ---------------------------------------------------------------------- */

/* Expands a schema template ({t} the quoted outbox table, {t:x} the quoted
 * table of suffix x, {P} the partition count) into b. */
void outbox__my_expand(outbox_buf *b, const char *tmpl, const char *prefix, int partitions);
/* Creates or upgrades the schema.  No transaction may be open. */
int outbox__my_migrate(MYSQL *conn, const char *prefix, int requested, int *from, int *to,
                       outbox_error *err);
/* The schema's version (0 when there is none) into *version. */
int outbox__my_read_version(MYSQL *conn, const char *prefix, int *version, int *partitions,
                            outbox_error *err);
int outbox__my_check_schema(my_store *st, outbox_error *err);
/* outbox__my_need_conn, and the schema version checked once per connection. */
int outbox__my_need_schema(my_store *st, outbox_error *err);
int outbox__my_schema_version(void);
/* The INSERT of msg into prefix's outbox (the enqueue of every writer). */
void outbox__my_insert_sql(outbox_buf *b, const char *prefix, const outbox_msg *msg);

/* ------------------------------------------------------------------------
 * my_lease.c: relays, partitions
 * ---------------------------------------------------------------------- */

int outbox__my_register_member(my_store *st, outbox_error *err);
int outbox__my_rebalance(my_store *st, int force, int take_all, outbox_error *err);

/* ------------------------------------------------------------------------
 * my_claim.c
 * ---------------------------------------------------------------------- */

/* Ends an open claim transaction (the relay dropped its batch). */
void outbox__my_end_claim(my_store *st);

/* ------------------------------------------------------------------------
 * Entry points, gathered in outbox__store_mysql and outbox__store_mariadb
 * (my_conn.c); their contracts are those of outbox_store_ops.
 * ---------------------------------------------------------------------- */

int outbox__my_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__my_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
int outbox__my_lease_release(void *state, const char *owner, outbox_error *err);
int outbox__my_lease_note(void *state, const char *owner, const char *note, outbox_error *err);
int outbox__my_partitions_held(void *state);
int outbox__my_changed(void *state, int *changed, outbox_error *err);
const char *outbox__my_wake_path(void *state);

int outbox__my_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                     outbox_error *err);
int outbox__my_complete(void *state, const outbox_completion *c, size_t n,
                        const outbox_complete_params *p, outbox_error *err);
int outbox__my_next_due(void *state, int64_t *due_us, outbox_error *err);

int outbox__my_status(void *state, outbox_status *out, outbox_error *err);
int outbox__my_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                    outbox_error *err);
int outbox__my_get(void *state, const char *id, outbox_msg **msg, outbox_error *err);
int outbox__my_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                     outbox_error *err);
int outbox__my_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err);
int outbox__my_drop(void *state, const char *const *ids, size_t n, int all,
                    outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err);
int outbox__my_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                           int64_t *count, outbox_error *err);

#endif /* OUTBOX_HAVE_MARIADB */

#endif /* OUTBOX_MY_H */
