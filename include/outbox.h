/*
 * outbox.h - the public contract of liboutbox.
 *
 * A transactional outbox: an application writes its business rows and an
 * outbox message in its OWN database transaction; a relay publishes the
 * committed messages afterwards, at least once; consumers record message ids
 * in an inbox inside their own transaction to apply each message once.
 *
 * Conventions (the same everywhere in this header):
 *   - Every fallible call returns an int: OUTBOX_OK (0) on success, a
 *     negative OUTBOX_E* code on failure, or a documented positive status
 *     (OUTBOX_DUPLICATE).  outbox_strerror() names any code.
 *   - Details go to a caller-provided outbox_error (may be NULL).  Its
 *     message names the offending field or setting and never contains a
 *     secret (passwords in URLs are masked).
 *   - Pointer parameters are borrowed unless the comment says otherwise.
 *     The caller's sqlite3 * is always borrowed: the library never opens,
 *     begins, commits or closes the caller's connection or transaction.
 *   - Objects are created with _new and released with _free; _free(NULL) is
 *     harmless.
 *   - The library never aborts and never prints: it reports through return
 *     codes and through the log callback installed with outbox_log_set().
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* OUTBOX_API marks what the shared library exports: the library is built
 * with hidden visibility (-fvisibility=hidden), so only the declarations in
 * this header are part of its ABI (the list is src/liboutbox.exports,
 * checked by tests/test_exports.sh). */
#if defined(__GNUC__) || defined(__clang__)
#define OUTBOX_API __attribute__((visibility("default")))
#else
#define OUTBOX_API
#endif

#define OUTBOX_VERSION_MAJOR 0
#define OUTBOX_VERSION_MINOR 1
#define OUTBOX_VERSION_PATCH 0
#define OUTBOX_VERSION_STRING "0.1.0"

/* Returns OUTBOX_VERSION_STRING of the library actually linked. */
OUTBOX_API const char *outbox_version(void);

/* ------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------- */

/* Result codes, from one list: XX(NAME, value, description, retriable)
 * makes the enum constant OUTBOX_<NAME>, and src/core/error.c makes from
 * the same list the names, outbox_strerror and outbox_err_retriable, so
 * they cannot drift apart.  Append only: a value is never reused. */
#define OUTBOX_ERROR_MAP(XX)                                                                       \
    XX(OK, 0, "success", 0)                                                                        \
    XX(DUPLICATE, 1, "message id already recorded in the inbox", 0) /* not an error */             \
    /* Invalid input: refused before anything is written (guarantee 7). */                         \
    XX(EINVAL, -1, "invalid argument", 0)                                                          \
    XX(EBADID, -2, "message id is not a canonical UUID", 0)                                        \
    XX(EBADTYPE, -3, "event type is empty, too long or has control characters", 0)                 \
    XX(EBADAGGREGATE, -4, "aggregate id or type is empty, too long or has control characters", 0)  \
    XX(EBADPAYLOAD, -5, "payload is not valid JSON", 0)                                            \
    XX(EBADHEADERS, -6, "headers are not a JSON object of strings", 0)                             \
    XX(EBADHEADERCHAR, -7, "control character in a header name or value", 0)                       \
    XX(EBADTRACEPARENT, -8, "traceparent or tracestate header is not W3C trace-context", 0)        \
    XX(ETOOBIG, -9, "message larger than the configured limit", 0)                                 \
    XX(EBADURL, -10, "URL malformed or scheme unsupported", 0)                                     \
    XX(ECONFIG, -11, "bad option value or combination", 0)                                         \
    XX(ENOTBUILT, -12, "driver not compiled into this build", 0)                                   \
    /* State of the store or the caller's connection. */                                           \
    XX(ENOTXN, -20, "no transaction open on the connection", 0)                                    \
    XX(ENOSCHEMA, -21, "outbox tables missing (run `outbox init`)", 0)                             \
    XX(ESCHEMANEWER, -22, "schema is newer than this library", 0)                                  \
    XX(EEXISTS, -23, "a message with this id already exists", 0)                                   \
    XX(ENOTFOUND, -24, "no such message", 0)                                                       \
    XX(ELEASED, -25, "another live relay holds the lease", 1)                                      \
    XX(ELEASELOST, -26, "this relay's lease was taken over", 0)                                    \
    /* Runtime failures. */                                                                        \
    XX(ENOMEM, -40, "out of memory", 1)                                                            \
    XX(EBUSY, -41, "database locked or busy", 1)                                                   \
    XX(ESTORE, -42, "database error", 0)                                                           \
    XX(EIO, -43, "I/O error", 1)                                                                   \
    XX(EPUBLISH, -44, "destination failed to confirm", 1)                                          \
    XX(EREJECTED, -45, "destination refused the message", 0)                                       \
    XX(EFAULT, -46, "injected fault", 0) /* test builds only */                                    \
    XX(ESTOPPED, -47, "relay was asked to stop", 0)                                                \
    XX(EINTERNAL, -48, "internal error (a bug: please report it)", 0)                              \
    /* Webhook verification (outbox_webhook_verify, the receiver). */                              \
    XX(ENOSIGNATURE, -60, "webhook id, timestamp or signature header missing", 0)                  \
    XX(EBADTIMESTAMP, -61, "webhook timestamp is not Unix seconds", 0)                             \
    XX(ESTALE, -62, "webhook timestamp outside the tolerance", 0)                                  \
    XX(EBADSIGNATURE, -63, "webhook signature does not match", 0)

enum {
#define OUTBOX__ERROR_ENUM(name, value, description, retriable) OUTBOX_##name = value,
    OUTBOX_ERROR_MAP(OUTBOX__ERROR_ENUM)
#undef OUTBOX__ERROR_ENUM
};

/* Error detail filled by fallible calls.  Zero-initialise or leave as is:
 * calls overwrite both fields when they fail and leave them alone otherwise. */
typedef struct outbox_error {
    int code;
    char message[512];
} outbox_error;

/* Short static description of a code, e.g. "payload is not valid JSON".
 * Never NULL; unknown codes give "unknown error". */
OUTBOX_API const char *outbox_strerror(int code);

/* Non-zero when repeating the same call later may succeed (busy database,
 * I/O or publish failure); zero for invalid input and permanent failures. */
OUTBOX_API int outbox_err_retriable(int code);

/* ------------------------------------------------------------------------
 * Logging
 * ---------------------------------------------------------------------- */

enum { OUTBOX_LOG_DEBUG = 10, OUTBOX_LOG_INFO = 20, OUTBOX_LOG_WARN = 30, OUTBOX_LOG_ERROR = 40 };

/* Log callback: level, component ("relay", "store.sqlite", "transport.file",
 * "inbox", ...), and a one-line message without trailing newline.  Messages
 * never contain secrets.  Called from whichever thread logs. */
typedef void (*outbox_log_fn)(void *user, int level, const char *component, const char *message);

/* Installs the process-wide log callback (NULL: logging off, the default)
 * and the lowest level passed to it.  Not thread-safe against concurrent
 * logging: call it at start-up. */
OUTBOX_API void outbox_log_set(outbox_log_fn fn, void *user, int min_level);

/* "debug", "info", "warn", "error". */
OUTBOX_API const char *outbox_log_level_name(int level);

/* What a log line is about, beside its text: filled for the relay's lines
 * about one message (a publication that failed, will be retried, ...).
 * size is sizeof(outbox_log_fields) in the library that filled it: the
 * struct only grows at its end, so a callback built against an older
 * header reads the members it knows, and one built against a newer header
 * reads a member only when offsetof(member) + sizeof(member) <= size.
 * Strings are NULL when unknown and valid only during the call; they are
 * stored text, unescaped (a writer must escape them for its format). */
typedef struct outbox_log_fields {
    size_t size;
    const char *msg_id;         /* the message's id */
    const char *aggregate_type; /* "" when the message has none */
    const char *aggregate_id;
    unsigned attempt;        /* the attempt just made, 1-based; 0 when none */
    const char *destination; /* the destination's URL, secrets masked */
    const char *traceparent; /* the message's W3C traceparent header */
} outbox_log_fields;

/* Log callback with fields: as outbox_log_fn, plus fields, NULL for lines
 * not about a message. */
typedef void (*outbox_log_fields_fn)(void *user, int level, const char *component,
                                     const char *message, const outbox_log_fields *fields);

/* Installs a log callback that also receives the fields of a line (NULL:
 * logging off).  It replaces a callback installed with outbox_log_set, and
 * outbox_log_set replaces it: one callback at a time.  Not thread-safe
 * against concurrent logging: call it at start-up. */
OUTBOX_API void outbox_log_set_fields(outbox_log_fields_fn fn, void *user, int min_level);

/* ------------------------------------------------------------------------
 * Limits
 * ---------------------------------------------------------------------- */

enum {
    OUTBOX_LIMIT_MESSAGE_BYTES = 0, /* payload+headers+type+ids; default 1 MiB */
    OUTBOX_LIMIT_FIELD_BYTES = 1    /* type, aggregate type and id; default 256 (the
                                       tables refuse more than 256 bytes whatever
                                       this is set to) */
};

/* Sets a process-wide limit; returns the previous value.  A value of 0
 * only queries.  Thread-safe. */
OUTBOX_API size_t outbox_limit(int which, size_t value);

/* ------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------- */

typedef struct outbox_msg outbox_msg;

/* Creates a message with a fresh UUIDv7 id and occurred_at = now.
 * type and aggregate_id are required; aggregate_type may be NULL or "";
 * payload_json is any JSON text (NULL stands for the empty object "{}").
 * Every field is validated here (guarantee 7); on failure *out is NULL and
 * nothing is allocated.  The caller frees the message with outbox_msg_free. */
OUTBOX_API int outbox_msg_new(outbox_msg **out, const char *type, const char *aggregate_type,
                              const char *aggregate_id, const char *payload_json,
                              outbox_error *err);

/* Replaces the generated id with a caller-given UUID (any version, canonical
 * 8-4-4-4-12 hex form, either case; stored lower-case).  OUTBOX_EBADID when
 * malformed. */
OUTBOX_API int outbox_msg_set_id(outbox_msg *msg, const char *uuid, outbox_error *err);

/* Sets occurred_at, microseconds since the Unix epoch, UTC. */
OUTBOX_API int outbox_msg_set_occurred_at(outbox_msg *msg, int64_t unix_us, outbox_error *err);

/* Adds or replaces one header.  Names are non-empty; names and values must
 * not contain control characters; a "traceparent" value must be W3C
 * trace-context (version 00: 00-<32 hex>-<16 hex>-<2 hex>, ids not all zero). */
OUTBOX_API int outbox_msg_set_header(outbox_msg *msg, const char *name, const char *value,
                                     outbox_error *err);

/* Replaces all headers with a JSON object of string values (NULL or "" clears
 * them).  Each entry is checked as in outbox_msg_set_header.  On failure the
 * previous headers are kept. */
OUTBOX_API int outbox_msg_set_headers_json(outbox_msg *msg, const char *headers_json,
                                           outbox_error *err);

/* Read access.  Strings are owned by the message and live until it is freed
 * or the field is set again.  aggregate_type is "" when unset; headers_json
 * is a compact JSON object ("{}" when none).  seq and attempts are 0 for a
 * message that was not read from a store. */
OUTBOX_API const char *outbox_msg_id(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_type(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_aggregate_type(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_aggregate_id(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_payload(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_headers_json(const outbox_msg *msg);
OUTBOX_API int64_t outbox_msg_occurred_at(const outbox_msg *msg);
OUTBOX_API int64_t outbox_msg_seq(const outbox_msg *msg);
OUTBOX_API int outbox_msg_attempts(const outbox_msg *msg);

/* Delivery status of a stored message. */
enum { OUTBOX_STATUS_PENDING = 0, OUTBOX_STATUS_SENT = 1, OUTBOX_STATUS_FAILED = 2 };

/* The relay's bookkeeping of a message read from a store (outbox_store_get,
 * outbox_store_list): its OUTBOX_STATUS_*, when it is due next
 * (available_at; 0 or a past time: due now) and when it was confirmed (sent_at, kept only by relays
 * with OUTBOX_ON_SENT_MARK), in unix microseconds, and the error of its
 * last failed attempt.  For a message not read from a store: status
 * pending, times 0, last_error NULL.  last_error is owned by the message
 * and NULL when there is none. */
OUTBOX_API int outbox_msg_status(const outbox_msg *msg);
OUTBOX_API int64_t outbox_msg_available_at(const outbox_msg *msg);
OUTBOX_API int64_t outbox_msg_sent_at(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_last_error(const outbox_msg *msg);

/* "pending", "sent", "failed" ("unknown" for any other value); and back:
 * the OUTBOX_STATUS_* of a name, -1 for an unknown name or NULL. */
OUTBOX_API const char *outbox_msg_status_name(int status);
OUTBOX_API int outbox_msg_status_parse(const char *name);

/* Number of headers, and the i-th name/value (NULL when i is out of range). */
OUTBOX_API size_t outbox_msg_header_count(const outbox_msg *msg);
OUTBOX_API const char *outbox_msg_header_name(const outbox_msg *msg, size_t i);
OUTBOX_API const char *outbox_msg_header_value(const outbox_msg *msg, size_t i);
/* Value of a named header, or NULL. */
OUTBOX_API const char *outbox_msg_header(const outbox_msg *msg, const char *name);

OUTBOX_API void outbox_msg_free(outbox_msg *msg);

/* Utilities used by the message model, public because other code needs the
 * same rules.  uuid_out must hold 37 bytes. */
OUTBOX_API int outbox_uuid_v7(char uuid_out[37]);
OUTBOX_API int outbox_uuid_valid(const char *uuid);
OUTBOX_API int outbox_traceparent_valid(const char *value);

/* Formats unix microseconds as RFC 3339 UTC with microseconds
 * ("2026-11-28T00:40:27.123456Z"); buf must hold 32 bytes. */
OUTBOX_API void outbox_time_format(int64_t unix_us, char buf[32]);

/* Parses what outbox_time_format writes (RFC 3339 UTC; the fraction may have
 * any number of digits or be absent; "Z" or "+00:00") into unix microseconds.
 * Returns 0, or -1 when text is malformed (*out untouched). */
OUTBOX_API int outbox_time_parse(const char *text, int64_t *out);

/* Parses a duration: "500ms", "30s", "5m", "2h", "7d" (a bare number is
 * seconds) into milliseconds.  Returns -1 when text is NULL, empty,
 * negative, malformed or too large for int64_t milliseconds. */
OUTBOX_API int64_t outbox_duration_parse_ms(const char *text);

/* Copies url into out (out_len bytes; always NUL-terminated when out_len >
 * 0, cut short when it does not fit) with the secrets masked as "***": the
 * password of user:password@ and the values of query parameters whose names
 * look like secrets (password, pass, token, secret, key, credentials).  Use
 * it before a URL reaches a log or a message.  url NULL gives "". */
OUTBOX_API void outbox_url_redact(const char *url, char *out, size_t out_len);

/* ------------------------------------------------------------------------
 * SQLite: schema, enqueue, inbox
 *
 * These take the caller's open connection (borrowed) and write inside the
 * caller's transaction.  They refuse with OUTBOX_ENOTXN when no transaction
 * is open (sqlite3_get_autocommit() is true): an enqueue outside a
 * transaction is not atomic with any business change, so it is treated as a
 * mistake rather than silently committed on its own.
 * ---------------------------------------------------------------------- */

typedef struct sqlite3 sqlite3;

/* Creates or upgrades the outbox and inbox tables in the connection's main
 * database (idempotent).  Runs its own transaction, so call it with no
 * transaction open.  OUTBOX_ESCHEMANEWER when the database was set up by a
 * newer version; OUTBOX_ESTORE, changing nothing, for outbox tables without
 * a readable version record (the message says what was found and how to
 * repair it). */
OUTBOX_API int outbox_schema_init_sqlite(sqlite3 *db, outbox_error *err);

/* Inserts msg into the outbox inside the caller's open transaction.  The
 * message becomes visible to the relay if and only if that transaction
 * commits.  OUTBOX_EEXISTS when the id is already in the outbox;
 * OUTBOX_ETOOBIG over the size limit; OUTBOX_ENOSCHEMA without `init` (or
 * without a readable schema version); OUTBOX_ESCHEMANEWER when the database
 * was set up by a newer version; EBAD* when the table refuses a field.
 * On failure nothing is written (the caller's transaction stays open and
 * usable).  A relay running in the same process on the same database file
 * is woken right after the caller commits. */
OUTBOX_API int outbox_enqueue_sqlite(sqlite3 *db, const outbox_msg *msg, outbox_error *err);

/* Records that `consumer` received `message_id`, inside the caller's open
 * transaction.  Returns OUTBOX_OK the first time and OUTBOX_DUPLICATE every
 * later time: the caller then skips the message's effect.  Recording and the
 * effect commit together, which makes the effect happen once.
 * OUTBOX_ENOSCHEMA / OUTBOX_ESCHEMANEWER as for outbox_enqueue_sqlite,
 * nothing written. */
OUTBOX_API int outbox_inbox_record_sqlite(sqlite3 *db, const char *consumer, const char *message_id,
                                          outbox_error *err);

/* Deletes inbox entries older than retention_ms (in its own transaction:
 * call with no transaction open).  *purged (may be NULL) receives the count.
 * Logs a warning when retention_ms is shorter than redelivery_horizon_ms
 * (pass outbox_redelivery_horizon_ms() of the relay's options; 0 means the
 * default options): a message redelivered after its entry was purged would
 * be applied twice.  OUTBOX_ENOSCHEMA / OUTBOX_ESCHEMANEWER as for
 * outbox_enqueue_sqlite, nothing deleted. */
OUTBOX_API int outbox_inbox_purge_sqlite(sqlite3 *db, int64_t retention_ms,
                                         int64_t redelivery_horizon_ms, int64_t *purged,
                                         outbox_error *err);

/* ------------------------------------------------------------------------
 * Webhooks (Standard Webhooks signatures; a receiver for C consumers)
 *
 * The http:// and https:// destinations POST each message with the headers
 * webhook-id (the message id), webhook-timestamp (Unix seconds) and, when a
 * secret is configured, webhook-signature: "v1," + base64(HMAC-SHA256(key,
 * "<id>.<timestamp>.<body>")).  A secret is "whsec_" + base64 of the key
 * bytes (the prefix is optional).  Signing needs OpenSSL (libcrypto) and the
 * receiver libmicrohttpd: without them these calls return OUTBOX_ENOTBUILT.
 * ---------------------------------------------------------------------- */

/* Room for one "v1,<base64 of 32 bytes>" signature and its NUL. */
#define OUTBOX_WEBHOOK_SIGNATURE_SIZE 48

/* Default tolerance for webhook-timestamp, in seconds, both directions. */
#define OUTBOX_WEBHOOK_TOLERANCE_S 300

/* Writes the signature of (msg_id, timestamp, body) under secret into out
 * (OUTBOX_WEBHOOK_SIGNATURE_SIZE bytes).  OUTBOX_ECONFIG when the secret is
 * not valid base64 (the message never shows the secret). */
OUTBOX_API int outbox_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp,
                                   const void *body, size_t body_len,
                                   char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE], outbox_error *err);

/* Verifies a received webhook: the three header values as received (each
 * may be NULL when absent), the raw body, the tolerance in seconds (0: the
 * default 300) and the current time in Unix seconds (0: the clock).
 * signature may list several space-separated "v1,..." entries; any match
 * passes, compared in constant time.  Returns OUTBOX_OK, or:
 *   OUTBOX_ENOSIGNATURE   a header is missing or empty
 *   OUTBOX_EBADTIMESTAMP  timestamp is not a decimal number of seconds
 *   OUTBOX_ESTALE         timestamp further than tolerance from now
 *   OUTBOX_EBADSIGNATURE  no v1 entry matched
 *   OUTBOX_ECONFIG        the secret itself is malformed */
OUTBOX_API int outbox_webhook_verify(const char *secret, const char *msg_id, const char *timestamp,
                                     const char *signature, const void *body, size_t body_len,
                                     int64_t tolerance_s, int64_t now_s, outbox_error *err);

typedef struct outbox_webhook_receiver outbox_webhook_receiver;

/* Consumer callback: runs inside BEGIN IMMEDIATE ... COMMIT on the
 * receiver's own connection db (borrowed: do not commit or close it), after
 * the message id was recorded in the inbox for the first time.  Return
 * OUTBOX_OK to commit (the sender then gets 204); any error rolls back the
 * inbox entry and the handler's writes and answers 500, so the sender
 * retries.  msg is borrowed for the call.  Duplicates never reach it. */
typedef int (*outbox_webhook_handler_fn)(void *user, sqlite3 *db, const outbox_msg *msg,
                                         outbox_error *err);

/* Fill the options with outbox_webhook_receiver_options_init, then set
 * fields: it sets size, which lets the struct grow (see
 * outbox_relay_options). */
typedef struct outbox_webhook_receiver_options {
    size_t size;                       /* sizeof the caller's struct: set by _init */
    const char *bind_address;          /* IPv4 address; default "127.0.0.1" */
    unsigned port;                     /* 0 (default): an ephemeral port */
    const char *secret;                /* "whsec_..."; NULL: accept unsigned requests
                                          (testing only, logged at WARN) */
    int64_t tolerance_s;               /* webhook-timestamp tolerance; default 300 */
    const char *db_path;               /* the consumer's SQLite database (required);
                                          the receiver opens its own connection */
    const char *consumer;              /* inbox consumer name (required) */
    outbox_webhook_handler_fn handler; /* required */
    void *handler_user;
    size_t max_body_bytes;         /* larger bodies get 413; default 1 MiB */
    unsigned max_headers;          /* more request headers get 431; default 64 */
    unsigned connection_timeout_s; /* idle/slow clients are cut; default 10 */
    unsigned connection_limit;     /* concurrent connections; default 64 */
    const char *init_sql;          /* run once on the receiver's connection after
                                      opening, e.g. "PRAGMA synchronous=NORMAL"
                                      (NULL: none) */
    const char *tls_cert_file;     /* PEM certificate (chain) and its unencrypted */
    const char *tls_key_file;      /* private key: both set = serve HTTPS instead
                                      of HTTP; ENOTBUILT when libmicrohttpd has
                                      no TLS; NULL (default): plain HTTP */
} outbox_webhook_receiver_options;

/* Fills opts with the defaults above (required fields NULL) and sets
 * opts->size.  outbox_webhook_receiver_new reads only the first size bytes
 * and takes the defaults for the rest; it refuses (OUTBOX_EINVAL) a size
 * below the layout up to init_sql, e.g. 0 from a struct not filled by
 * this function. */
OUTBOX_API void outbox_webhook_receiver_options_init(outbox_webhook_receiver_options *opts);

/* Counters since the receiver started. */
typedef struct outbox_webhook_receiver_stats {
    uint64_t applied;    /* committed with the handler's effect */
    uint64_t duplicates; /* acknowledged without running the handler */
    uint64_t rejected;   /* answered 4xx (bad signature, malformed, too big) */
    uint64_t failed;     /* answered 5xx (handler or database failed) */
} outbox_webhook_receiver_stats;

/* Starts a receiver: opens db_path (creating the inbox table when needed),
 * binds, and serves POSTs on a thread of its own until freed.  Any path is
 * accepted.  Answers: 204 applied or duplicate (only after COMMIT); 400
 * malformed (bad headers, payload not JSON, bad timestamp); 401 unsigned,
 * bad signature or stale; 405 not POST; 413 body over the limit; 431 too
 * many headers; 500 handler or database failure (rolled back); 503 busy
 * database.  On failure *out is NULL and err says which option to fix. */
OUTBOX_API int outbox_webhook_receiver_new(outbox_webhook_receiver **out,
                                           const outbox_webhook_receiver_options *opts,
                                           outbox_error *err);

/* The port the receiver listens on (the ephemeral one when port was 0). */
OUTBOX_API unsigned outbox_webhook_receiver_port(const outbox_webhook_receiver *r);

OUTBOX_API void outbox_webhook_receiver_get_stats(outbox_webhook_receiver *r,
                                                  outbox_webhook_receiver_stats *stats);

/* Stops serving (waits for the request in progress), closes the database
 * connection and frees r.  NULL is harmless. */
OUTBOX_API void outbox_webhook_receiver_free(outbox_webhook_receiver *r);

/* ------------------------------------------------------------------------
 * PostgreSQL: schema, enqueue, inbox
 *
 * The same contract as the SQLite functions, on the caller's PGconn
 * (borrowed): the library never opens, begins, commits or closes it.  The
 * outbox lives in a PostgreSQL schema of its own ("outbox" unless given;
 * names are 1-63 letters, digits and underscores).  The same operations
 * are available to any language as SQL functions (<schema>.enqueue,
 * <schema>.inbox_record), documented in docs/POSTGRES.md.
 * ---------------------------------------------------------------------- */

typedef struct pg_conn PGconn;

/* Creates or upgrades the outbox tables and SQL functions in `schema`
 * (NULL: "outbox"), idempotent, in a transaction of its own: call it with
 * no transaction open (OUTBOX_EINVAL otherwise).  OUTBOX_ECONFIG for a bad
 * schema name, OUTBOX_ESCHEMANEWER when set up by a newer version. */
OUTBOX_API int outbox_schema_init_pg(PGconn *conn, const char *schema, outbox_error *err);

/* Inserts msg into the outbox (schema "outbox") inside the caller's open
 * transaction (PQtransactionStatus must be PQTRANS_INTRANS, else
 * OUTBOX_ENOTXN).  The message is visible to the relay if and only if that
 * transaction commits.  Uses a prepared statement, prepared once per
 * connection.  OUTBOX_EEXISTS (duplicate id) and OUTBOX_ENOSCHEMA leave the
 * caller's transaction usable; OUTBOX_ETOOBIG is refused before anything
 * is sent. */
OUTBOX_API int outbox_enqueue_pg(PGconn *conn, const outbox_msg *msg, outbox_error *err);

/* outbox_enqueue_pg into the outbox of `schema` (NULL: "outbox"). */
OUTBOX_API int outbox_enqueue_pg_schema(PGconn *conn, const char *schema, const outbox_msg *msg,
                                        outbox_error *err);

/* Inserts msgs[0..n) (n >= 0; msgs may be NULL when n is 0) into the
 * outbox of `schema` (NULL: "outbox") as the last statements of the
 * caller's open transaction and COMMITs that transaction, all in one
 * network round trip (libpq pipeline mode): use it in place of the last
 * outbox_enqueue_pg and the COMMIT.  conn, schema and msgs are borrowed.
 *   OUTBOX_OK: the transaction committed, with every message.
 *   Refused before anything is sent, the transaction as it was (still
 *   open and usable unless it had failed already): OUTBOX_EINVAL (NULL
 *   conn or message, conn in pipeline mode), OUTBOX_ENOTXN (no open
 *   transaction, or it already failed), OUTBOX_ECONFIG (schema name),
 *   OUTBOX_ETOOBIG, OUTBOX_ENOSCHEMA.
 *   An INSERT failed (OUTBOX_EEXISTS for an id already in the outbox,
 *   or a mapped database error naming the message), or sending stopped
 *   before the COMMIT went out: the COMMIT was not executed and the
 *   transaction is left open (in the failed state after a failed INSERT);
 *   the caller must ROLLBACK.  Nothing was committed.
 *   The COMMIT failed (e.g. a deferred constraint, a serialization
 *   failure: OUTBOX_EBUSY): the server rolled the transaction back.
 *   OUTBOX_EIO with the connection lost: if the message says so, whether
 *   the transaction committed is unknown (the COMMIT was sent, its answer
 *   never came); the caller finds out after reconnecting.
 * The connection is out of pipeline mode again on return (a broken one
 * at the latest after PQreset). */
OUTBOX_API int outbox_enqueue_commit_pg(PGconn *conn, const char *schema,
                                        const outbox_msg *const *msgs, size_t n, outbox_error *err);

/* PostgreSQL, WAL capture: the message is written to the WAL instead of the
 * outbox table, as a transactional logical decoding message with prefix
 * "outbox:<schema>" in the encoding of docs/WAL.md (what <schema>.emit
 * writes, byte for byte); a relay with capture=wal reads it from a
 * replication slot.  It commits or rolls back with the caller's
 * transaction and writes no table row.  Needs wal_level = logical (else
 * OUTBOX_ECONFIG, nothing emitted, checked once per connection) and the
 * outbox schema (OUTBOX_ENOSCHEMA); a message emitted before the relay's
 * slot exists is not captured. */

/* Emits msg to the WAL inside the caller's open transaction, with the
 * checks and outcomes of outbox_enqueue_pg_schema (schema NULL: "outbox"),
 * except that ids are not checked for duplicates (the destination's
 * de-duplication by id covers them).  Uses a statement prepared once per
 * connection ("outbox_emit.<schema>").  conn, schema and msg are
 * borrowed. */
OUTBOX_API int outbox_emit_pg(PGconn *conn, const char *schema, const outbox_msg *msg,
                              outbox_error *err);

/* outbox_enqueue_commit_pg for the WAL: emits msgs[0..n) as the last
 * statements of the caller's open transaction and COMMITs it in one round
 * trip, with the same outcomes (an emit that fails leaves the transaction
 * failed, uncommitted: ROLLBACK).  conn, schema and msgs are borrowed. */
OUTBOX_API int outbox_emit_commit_pg(PGconn *conn, const char *schema,
                                     const outbox_msg *const *msgs, size_t n, outbox_error *err);

/* Records that `consumer` received `message_id` inside the caller's open
 * transaction: OUTBOX_OK the first time, OUTBOX_DUPLICATE afterwards (the
 * caller then skips the effect).  OUTBOX_ENOTXN, OUTBOX_EINVAL, OUTBOX_EBADID
 * as for SQLite. */
OUTBOX_API int outbox_inbox_record_pg(PGconn *conn, const char *consumer, const char *message_id,
                                      outbox_error *err);

/* outbox_inbox_record_pg in the inbox of `schema` (NULL: "outbox"). */
OUTBOX_API int outbox_inbox_record_pg_schema(PGconn *conn, const char *schema, const char *consumer,
                                             const char *message_id, outbox_error *err);

/* Deletes the inbox entries of `schema` (NULL: "outbox") received more than
 * retention_ms ago (by the server's clock), in one statement: call it with
 * no transaction open on conn (OUTBOX_EINVAL otherwise).  *purged (may be
 * NULL) receives the count.  Warns, as outbox_inbox_purge_sqlite does, when
 * retention_ms is shorter than redelivery_horizon_ms (0: the default
 * options' horizon). */
OUTBOX_API int outbox_inbox_purge_pg(PGconn *conn, const char *schema, int64_t retention_ms,
                                     int64_t redelivery_horizon_ms, int64_t *purged,
                                     outbox_error *err);

/* ------------------------------------------------------------------------
 * MariaDB / MySQL: schema, enqueue, inbox
 *
 * The same contract as the PostgreSQL functions, on the caller's MYSQL
 * connection (borrowed, MariaDB Connector/C or libmysqlclient): the library
 * never begins, commits or closes it.  The outbox's tables live in the
 * connection's current database, named after `prefix` (NULL: "outbox":
 * outbox, outbox_inbox, ...; 1-40 letters, digits and underscores).  Needs
 * MariaDB 10.6+ or MySQL 8.0+.  Any language can enqueue with the stored
 * procedure <prefix>_enqueue or a plain INSERT (docs/MARIADB.md).  In a
 * build without MariaDB Connector/C these return OUTBOX_ENOTBUILT.
 * ---------------------------------------------------------------------- */

typedef struct st_mysql MYSQL;

/* Creates or upgrades the outbox tables, trigger and procedure, idempotent
 * (DDL commits on its own in MySQL: call it with no transaction open,
 * OUTBOX_EINVAL otherwise).  OUTBOX_ECONFIG for a bad prefix or a server
 * older than MariaDB 10.6 / MySQL 8.0, OUTBOX_ESCHEMANEWER when set up by
 * a newer version. */
OUTBOX_API int outbox_schema_init_mysql(MYSQL *conn, const char *prefix, outbox_error *err);

/* Inserts msg into the outbox (prefix "outbox") inside the caller's open
 * transaction: START TRANSACTION (or autocommit off) first, else
 * OUTBOX_ENOTXN (autocommit mode is refused: the message would not commit
 * with the business change).  The insert locks the aggregate's row in
 * <prefix>_aggregate until the transaction ends, so two messages of one
 * aggregate commit in the order of their seq.  OUTBOX_EEXISTS (duplicate
 * id) and OUTBOX_ENOSCHEMA roll back that statement only: the caller's
 * transaction stays usable.  OUTBOX_ETOOBIG is refused before anything is
 * sent. */
OUTBOX_API int outbox_enqueue_mysql(MYSQL *conn, const outbox_msg *msg, outbox_error *err);

/* outbox_enqueue_mysql into the tables of `prefix` (NULL: "outbox"). */
OUTBOX_API int outbox_enqueue_mysql_prefix(MYSQL *conn, const char *prefix, const outbox_msg *msg,
                                           outbox_error *err);

/* Records that `consumer` received `message_id` inside the caller's open
 * transaction (tables of `prefix`, NULL: "outbox"): OUTBOX_OK the first
 * time, OUTBOX_DUPLICATE afterwards (the caller then skips the effect; the
 * transaction stays usable).  OUTBOX_ENOTXN, OUTBOX_EINVAL, OUTBOX_EBADID as
 * for SQLite. */
OUTBOX_API int outbox_inbox_record_mysql(MYSQL *conn, const char *prefix, const char *consumer,
                                         const char *message_id, outbox_error *err);

/* Deletes the inbox entries of `prefix` (NULL: "outbox") received more than
 * retention_ms ago, in one statement: call it with no transaction open
 * (OUTBOX_EINVAL otherwise).  *purged (may be NULL) receives the count.
 * Warns, as the other inbox purges do, when retention_ms is shorter than
 * redelivery_horizon_ms (0: the default options' horizon). */
OUTBOX_API int outbox_inbox_purge_mysql(MYSQL *conn, const char *prefix, int64_t retention_ms,
                                        int64_t redelivery_horizon_ms, int64_t *purged,
                                        outbox_error *err);

/* ------------------------------------------------------------------------
 * Store handle
 *
 * A store opened by URL, with a database connection of its own: what the
 * `outbox` CLI does (init, enqueue, status, list, show, retry, drop, purge),
 * a C program can do with these calls.  Applications enqueue inside their
 * own transaction with the SQLite and PostgreSQL functions above; this
 * handle is for tools, operators and tests.  A handle is used by one thread
 * at a time.  Every call below returns OUTBOX_EINVAL for a NULL store or a
 * NULL required pointer, and OUTBOX_ENOSCHEMA / OUTBOX_ESCHEMANEWER when
 * the schema is missing or newer than this library (init excepted).
 * ---------------------------------------------------------------------- */

typedef struct outbox_store outbox_store;

/* Opens the store named by url: "sqlite:PATH", "postgres://USER@HOST/DB"
 * or "postgres:KEY=VALUE ...".  Does not create or check the schema, and
 * never creates a missing SQLite file: only outbox_store_init does (a typo
 * in a path does not leave a stray empty database).  OUTBOX_EBADURL for a
 * malformed URL or an unknown scheme, OUTBOX_ENOTBUILT for a store this
 * build left out, or the driver's error (e.g. OUTBOX_EIO when the database
 * cannot be reached).  The message shows the URL with secrets masked.
 * On success the caller closes *out with outbox_store_close; on failure
 * *out is NULL. */
OUTBOX_API int outbox_store_open(const char *url, outbox_store **out, outbox_error *err);

/* Closes the connection and frees store.  NULL is harmless. */
OUTBOX_API void outbox_store_close(outbox_store *store);

/* The URL scheme of the store's driver ("sqlite", "postgres"), static. */
OUTBOX_API const char *outbox_store_scheme(const outbox_store *store);

/* Creates or upgrades the outbox tables, idempotent, in a transaction of
 * its own.  *from_version and *to_version (each may be NULL) get the schema
 * version found (0: none) and the one left.  OUTBOX_ESCHEMANEWER when set
 * up by a newer version. */
OUTBOX_API int outbox_store_init(outbox_store *store, int *from_version, int *to_version,
                                 outbox_error *err);

/* OUTBOX_OK when the schema is this library's; OUTBOX_ENOSCHEMA or
 * OUTBOX_ESCHEMANEWER otherwise. */
OUTBOX_API int outbox_store_check_schema(outbox_store *store, outbox_error *err);

/* Enqueues msg (borrowed) in a transaction of its own: committed on
 * OUTBOX_OK, nothing written otherwise.  Errors as for
 * outbox_enqueue_sqlite (OUTBOX_EEXISTS, OUTBOX_ETOOBIG, ...). */
OUTBOX_API int outbox_store_enqueue(outbox_store *store, const outbox_msg *msg, outbox_error *err);

/* A store's counts and relay lease, as `outbox status` shows them.  Times
 * are unix microseconds.  Fields are only ever appended: pass sizeof your
 * struct to outbox_store_status, which fills that many bytes. */
typedef struct outbox_status {
    int schema_version;
    int64_t pending;     /* all pending */
    int64_t pending_due; /* pending with available_at <= now */
    int64_t retrying;    /* pending with attempts > 0 */
    int64_t sent;        /* kept with on_sent=mark */
    int64_t failed;
    int64_t oldest_pending_us; /* occurred_at of the first pending in outbox order, or 0 */
    int64_t next_due_us;       /* earliest available_at of pending, 0 if none */
    char lease_owner[128];     /* "" when no relay holds a live lease */
    int64_t lease_expires_us;
    int64_t blocked;            /* pending messages behind a Failed message of
                                   their aggregate (held while Failed blocks) */
    int64_t aggregates_blocked; /* aggregates with such messages */
    int64_t lease_pid;          /* the lease holder's process id, 0 when unknown */
    char lease_host[128];       /* its host name, "" when unknown */
    int lease_holder_gone;      /* 1: the lease has not expired, but its holder's
                                   process is gone (same host, no such pid) */
    char relay_note[256];       /* what the lease holder last reported about
                                   itself (e.g. "destination down since ...:
                                   <error>"), "" when nothing */
    int blocked_counted;        /* 1 when the store's driver counts blocked,
                                   aggregates_blocked and lease_holder_gone
                                   (and fills lease_pid, lease_host and
                                   relay_note); 0: those are 0, unknown */
    /* PostgreSQL WAL capture (docs/WAL.md): the store's replication slot,
     * filled when it exists; "" and 0 otherwise (and for other stores). */
    char wal_slot[64];     /* its name */
    int wal_slot_exists;   /* 1: the slot exists */
    int wal_slot_active;   /* 1: a relay streams from it now */
    int64_t wal_lag_bytes; /* WAL the server keeps for it: written since
                              the relay's last confirmed position */
    int64_t wal_lag_us;    /* how long the relay is behind, 0 when caught up
                              or unknown (docs/WAL.md says how it is measured) */
} outbox_status;

/* Fills the first out_size bytes of *out (out_size: sizeof of the caller's
 * outbox_status, at most sizeof(outbox_status) is used) with the store's
 * status; strings are NUL-terminated.  OUTBOX_EINVAL when out_size is 0. */
OUTBOX_API int outbox_store_status(outbox_store *store, outbox_status *out, size_t out_size,
                                   outbox_error *err);

/* What outbox_store_list returns.  Fill it with outbox_list_params_init,
 * then set fields: it sets size, which lets the struct grow (as
 * outbox_relay_options does). */
typedef struct outbox_list_params {
    size_t size;   /* sizeof the caller's struct: set by _init */
    int status;    /* OUTBOX_STATUS_* or -1 (the default) for all */
    int64_t limit; /* at most this many messages; 0 (the default): no limit */
} outbox_list_params;

/* Fills params with the defaults above (every message) and sets size. */
OUTBOX_API void outbox_list_params_init(outbox_list_params *params);

/* Called once per message in seq order; msg is borrowed for the call
 * (copy what you keep).  Return non-zero to stop early. */
typedef int (*outbox_list_fn)(void *user, const outbox_msg *msg);

/* Lists messages, with their bookkeeping (outbox_msg_status, ...).  Rows
 * are read as stored, even ones the relay would refuse.  params NULL: every
 * message; otherwise only its first params->size bytes are read (a size
 * below the first layout, e.g. 0 from a struct not filled by
 * outbox_list_params_init, is OUTBOX_EINVAL).  Stopping early is
 * OUTBOX_OK; a store error after some calls is returned as it is. */
OUTBOX_API int outbox_store_list(outbox_store *store, const outbox_list_params *params,
                                 outbox_list_fn fn, void *user, outbox_error *err);

/* Reads the message with id (a UUID, either case) into *out, which the
 * caller frees with outbox_msg_free.  OUTBOX_EBADID for a malformed id,
 * OUTBOX_ENOTFOUND when there is none (sent messages are deleted unless
 * the relay keeps them with OUTBOX_ON_SENT_MARK).  *out is NULL on failure. */
OUTBOX_API int outbox_store_get(outbox_store *store, const char *id, outbox_msg **out,
                                outbox_error *err);

/* Requeues Failed messages (status pending, attempts 0, due now): the n
 * messages ids[0..n) (UUIDs, either case), or with all != 0 (ids NULL, n
 * 0) every Failed one.  With ids it is all or nothing, in one transaction:
 * OUTBOX_ENOTFOUND for an unknown id, OUTBOX_EINVAL for one that is not
 * Failed, and nothing changes.  *count (may be NULL) gets how many were
 * requeued.  OUTBOX_EINVAL for ids and all together, or neither. */
OUTBOX_API int outbox_store_retry(outbox_store *store, const char *const *ids, size_t n, int all,
                                  int64_t *count, outbox_error *err);

/* Called by outbox_store_drop with every message about to be deleted
 * (borrowed, read as stored), before anything is deleted.  Return
 * OUTBOX_OK to go on; any other code (with err filled) deletes nothing and
 * is the drop's result. */
typedef int (*outbox_drop_archive_fn)(void *user, outbox_msg *const *msgs, size_t n,
                                      outbox_error *err);

/* Deletes Failed messages, and only those: ids and all as for
 * outbox_store_retry, all or nothing, in one transaction.  archive (may be
 * NULL) is called first with the messages (see outbox_drop_archive_fn);
 * its error deletes nothing.  *count (may be NULL) gets how many were
 * deleted.  OUTBOX_ENOTBUILT when the store's driver cannot drop. */
OUTBOX_API int outbox_store_drop(outbox_store *store, const char *const *ids, size_t n, int all,
                                 outbox_drop_archive_fn archive, void *user, int64_t *count,
                                 outbox_error *err);

/* Deletes the messages marked sent (OUTBOX_ON_SENT_MARK) whose sent_at is
 * more than older_than_ms ago (0: every sent message); pending and Failed
 * messages are never deleted.  *count (may be NULL) gets how many.
 * OUTBOX_EINVAL when older_than_ms is negative. */
OUTBOX_API int outbox_store_purge(outbox_store *store, int64_t older_than_ms, int64_t *count,
                                  outbox_error *err);

/* Deletes inbox entries received more than retention_ms ago, as
 * outbox_inbox_purge_sqlite / outbox_inbox_purge_pg do (and with the same
 * warning against redelivery_horizon_ms, 0: the default options').
 * *count (may be NULL) gets how many.  OUTBOX_ENOTBUILT when the store's
 * driver has no inbox purge. */
OUTBOX_API int outbox_store_inbox_purge(outbox_store *store, int64_t retention_ms,
                                        int64_t redelivery_horizon_ms, int64_t *count,
                                        outbox_error *err);

/* ------------------------------------------------------------------------
 * PostgreSQL WAL capture: the replication slot
 *
 * A postgres:// store whose relay reads the WAL (capture=wal, docs/WAL.md)
 * needs a logical replication slot and a publication on the server: these
 * create and remove them (`outbox init --capture wal`, `outbox wal
 * drop-slot`).  Names given as NULL are the store URL's slot= and
 * publication=, else outbox_<schema>.  Other stores: OUTBOX_ECONFIG.
 * ---------------------------------------------------------------------- */

/* A slot as these calls leave it.  Fields are only ever appended: pass
 * sizeof your struct, which is how many bytes are filled. */
typedef struct outbox_wal_slot {
    char slot[64];        /* the replication slot's name */
    char publication[64]; /* the publication's name */
    int created;          /* setup: 1 when the call created the slot */
    int exists;           /* the slot exists (drop: it existed) */
    int active;           /* a relay streams from it now */
    int64_t active_pid;   /* that walsender's backend pid, 0 when none */
    int64_t lag_bytes;    /* as outbox_status.wal_lag_bytes */
    int64_t lag_us;       /* as outbox_status.wal_lag_us */
    int64_t keep_size_mb; /* the server's max_slot_wal_keep_size in MB; -1:
                             unlimited (a relay that is down keeps WAL
                             until the disk fills) */
    int publication_kept; /* drop: 1 when the publication was kept because
                             another pgoutput slot of the database may
                             stream with it */
} outbox_wal_slot;

/* Checks the server (PostgreSQL 14 or newer, wal_level = logical, a UTF8
 * database, the role has REPLICATION, a free replication slot) and creates
 * the publication and the slot when missing; idempotent.  out (may be
 * NULL) gets the names and the slot's state.  OUTBOX_ECONFIG, creating
 * nothing, with a message that says what to set, when the server or role
 * does not allow it. */
OUTBOX_API int outbox_store_wal_setup(outbox_store *store, const char *slot,
                                      const char *publication, outbox_wal_slot *out,
                                      size_t out_size, outbox_error *err);

/* Drops the slot and the publication (either may be missing: OUTBOX_OK).
 * out (may be NULL) gets the state found before the drop.  OUTBOX_EBUSY,
 * dropping nothing, while a relay streams from the slot (the message names
 * the walsender's pid: stop that relay first). */
OUTBOX_API int outbox_store_wal_drop(outbox_store *store, const char *slot, const char *publication,
                                     outbox_wal_slot *out, size_t out_size, outbox_error *err);

/* ------------------------------------------------------------------------
 * Drivers
 *
 * What stores and destinations the library knows, whether this build has
 * them, and the settings each takes (URL query parameters, or "key=value"
 * options beside the URL: the relay's --to-opt).  Help texts and docs are
 * made from this, so they say what the code accepts.
 * ---------------------------------------------------------------------- */

enum {
    OUTBOX_DRIVER_STORE = 1,      /* where messages are stored: sqlite:, postgres:// */
    OUTBOX_DRIVER_DESTINATION = 2 /* where the relay publishes: file:, nats://, ... */
};

/* One setting of a driver.  Every string is static; NULL when absent. */
typedef struct outbox_driver_prop {
    const char *name;          /* "max_in_flight"; "endpoint.<TYPE>" names a family:
                                  every key that starts with "endpoint." */
    const char *type;          /* "string", "secret" (a value never shown), "int",
                                  "bool", "duration" (500ms, 30s, 5m, 2h, 7d), "size"
                                  (512, 64k, 1m, 2g), "enum", "path" (a file to read),
                                  "secret-file" (a file holding a secret) */
    const char *default_value; /* as it would be written; NULL: none */
    const char *range;         /* numbers "MIN..MAX" or "MIN.." in the type's units;
                                  enum the choices "a|b|c"; NULL: any value */
    const char *doc;           /* what it does, one or two sentences */
    const char *placeholder;   /* how a value is written in usage lines: "N", "PATH" */
} outbox_driver_prop;

typedef struct outbox_driver_info {
    int kind;           /* OUTBOX_DRIVER_* */
    const char *scheme; /* "sqlite", "nats" (one per URL scheme) */
    const char *usage;  /* how its URL is written: "file:PATH" */
    const char *doc;    /* what it is (and what confirms a message) */
    int built;          /* 1: in this build; 0: known, its library left out */
    size_t prop_count;
    const outbox_driver_prop *props; /* prop_count settings; NULL when none */
} outbox_driver_info;

/* The i-th driver (0, 1, ...) of kind, in registry order, or NULL past the
 * last (and for an unknown kind).  Lists the drivers of this build and the
 * ones the project has that this build left out (built = 0).  The result
 * is static: never freed, valid for the life of the process, safe to read
 * from any thread. */
OUTBOX_API const outbox_driver_info *outbox_driver_get(int kind, size_t i);

/* ------------------------------------------------------------------------
 * Relay
 * ---------------------------------------------------------------------- */

enum {
    OUTBOX_ON_SENT_DELETE = 0, /* delete a message once confirmed (default) */
    OUTBOX_ON_SENT_MARK = 1    /* keep it as 'sent' with sent_at, for `purge` */
};

/* In-process destination: called once per message, in enqueue order per
 * aggregate.  Return OUTBOX_OK once the message is durably handled,
 * OUTBOX_EPUBLISH (or any retriable code) to retry later with backoff, or
 * OUTBOX_EREJECTED to fail this attempt permanently.  A message for err is
 * stored as the message's last_error.  When every message of a batch gets
 * a retriable code, the relay takes it as the destination's outage (see
 * outbox_relay_run): no attempt is spent and nothing is stored. */
typedef int (*outbox_publish_fn)(void *user, const outbox_msg *msg, outbox_error *err);

/* Fill the options with outbox_relay_options_init, then set fields.  The
 * struct carries its size so that fields can be appended without breaking
 * compiled programs: outbox_relay_new reads only the first size bytes and
 * takes the defaults for the fields past them. */
typedef struct outbox_relay_options {
    size_t size;                 /* sizeof the caller's struct: set by _init */
    unsigned batch_size;         /* messages claimed at once; default 512 */
    unsigned max_attempts;       /* then Failed; default 10 */
    unsigned backoff_base_ms;    /* first retry delay cap; default 500 (also the
                                    first pause of a destination outage) */
    unsigned backoff_max_ms;     /* largest delay cap; default 300000 (5 min);
                                    outage pauses stop at min(this, 30 s) */
    int on_sent;                 /* OUTBOX_ON_SENT_DELETE or _MARK */
    int failed_blocks_aggregate; /* 1 (default): a Failed message holds back
                                    later messages of its aggregate until
                                    retried or dropped; 0: they go on */
    unsigned poll_interval_ms;   /* fallback full check; default 1000 */
    unsigned change_check_ms;    /* cheap cross-process change check; default 2 */
    unsigned lease_ttl_ms;       /* relay lease; default 10000 */
    int wait_for_lease;          /* 0 (default): refuse when another relay holds
                                    the lease; 1: stand by until it is free */
    int once;                    /* drain what is due, then return */
    const char *source;          /* CloudEvents source; default "/outbox" */
    const char *name;            /* relay name for the lease; default host:pid */
    outbox_publish_fn publish;   /* in-process destination (to_url NULL) */
    void *publish_user;
    /* Destination settings as "key=value" strings, NULL-terminated (NULL:
     * none); the same keys as the destination URL's query parameters, for
     * settings that cannot go in the URL (an HTTP target's query belongs to
     * the target).  Unknown keys are a start-up error.  Read by outbox_relay_new only. */
    const char *const *destination_options;
} outbox_relay_options;

/* Fills opts with the defaults above and sets opts->size.  outbox_relay_new
 * refuses (OUTBOX_EINVAL) a size below the layout up to publish_user, e.g.
 * 0 from a struct not filled by this function. */
OUTBOX_API void outbox_relay_options_init(outbox_relay_options *opts);

/* Longest time after a message's first publication during which it may be
 * published again by retries under these options (NULL: defaults).  Inbox
 * retention should exceed it. */
OUTBOX_API int64_t outbox_redelivery_horizon_ms(const outbox_relay_options *opts);

typedef struct outbox_relay outbox_relay;

/* Counters since the relay was created. */
typedef struct outbox_relay_stats {
    uint64_t published;      /* confirmed by the destination and recorded */
    uint64_t retried;        /* attempts that failed and were rescheduled */
    uint64_t failed;         /* messages moved to Failed */
    uint64_t batches;        /* claims that returned at least one message */
    uint64_t publish_errors; /* publications that did not succeed, whether an
                                attempt was charged (retried, failed) or not
                                (a destination outage, see outbox_relay_run) */
    uint64_t quarantined;    /* stored rows the relay could not decode (a writer
                                bypassed the checks, or an older schema let
                                them in), set Failed with the reason */
} outbox_relay_stats;

/* Creates a relay from store_url (e.g. "sqlite:app.db") to to_url (e.g.
 * "file:events.jsonl", "stdout:") or, with to_url NULL, to opts->publish.
 * Checks URLs and options, opens the store, and checks the schema; does not
 * take the lease yet.  opts may be NULL for defaults; strings in opts are
 * copied. */
OUTBOX_API int outbox_relay_new(outbox_relay **out, const char *store_url, const char *to_url,
                                const outbox_relay_options *opts, outbox_error *err);

/* Takes the lease and runs the loop until outbox_relay_stop() is called
 * (returns OUTBOX_OK) or, with opts.once, until nothing is due (OUTBOX_OK).
 * Returns OUTBOX_ELEASED when another relay holds the lease (and
 * wait_for_lease is 0), OUTBOX_ELEASELOST if it was taken over, or another
 * error for a failure it cannot ride out.  Never marks a message sent
 * before the destination confirmed it.
 *
 * Only failures of a message spend its attempts: the destination rejected
 * it, or it failed while other messages of its batch went through.  A batch
 * the destination failed as a whole, or whose every message failed with a
 * retriable code (connection refused, DNS, TLS, disk full, 5xx on each), is
 * a destination outage: nothing is recorded for it, the relay pauses the
 * whole destination (from backoff_base_ms, doubling, up to min(backoff_max_ms,
 * 30 s), with jitter; longer if the destination asked with Retry-After),
 * logs once when it goes down and once when it is back, and tries the same
 * messages again.  With opts.once, run() returns the destination's error
 * (e.g. OUTBOX_EIO, OUTBOX_EPUBLISH) once it has been down for 10 s.
 * Either way every failed publication counts in stats.publish_errors. */
OUTBOX_API int outbox_relay_run(outbox_relay *relay, outbox_error *err);

/* Asks a running relay to stop after its in-flight batch.  Safe from any
 * thread and from a signal handler.  An http(s) destination cuts a batch
 * waiting on a slow destination short: its unconfirmed messages stay
 * pending and are sent again later. */
OUTBOX_API void outbox_relay_stop(outbox_relay *relay);

/* Wakes the relay to check for new messages now.  Safe from any thread.
 * (outbox_enqueue_sqlite does this by itself for relays in the process.) */
OUTBOX_API void outbox_relay_wake(outbox_relay *relay);

OUTBOX_API void outbox_relay_get_stats(const outbox_relay *relay, outbox_relay_stats *stats);

/* Asks a running relay to reopen its destination's files (a file:
 * destination's output, for log rotation) before its next batch.  Safe
 * from any thread and from a signal handler (SIGHUP). */
OUTBOX_API void outbox_relay_reopen(outbox_relay *relay);

/* Releases the lease if held and frees everything. */
OUTBOX_API void outbox_relay_free(outbox_relay *relay);

/* ------------------------------------------------------------------------
 * Relay metrics and the monitor
 *
 * outbox_relay_metrics is what a monitoring endpoint needs of a running
 * relay beyond outbox_relay_stats (which keeps its layout): counters by
 * outcome and reason, three histograms, the destination's outage state,
 * the lease and the last turn of the loop.  The relay keeps it at the cost
 * of a few atomic additions and one histogram merge per batch; reading it
 * never makes the relay wait.
 *
 * outbox_monitor serves it over HTTP (libmicrohttpd): GET /metrics
 * (Prometheus text or OpenMetrics), /healthz, /readyz, a web console at /
 * and its JSON API under /api/ (docs/MONITORING.md and docs/CLI.md's
 * `outbox relay` describe them).
 * ---------------------------------------------------------------------- */

/* Buckets of every histogram below, the last one +Inf. */
#define OUTBOX_HISTOGRAM_BUCKETS 16

/* A histogram with fixed buckets.  counts[i] is the number of observations
 * in (le[i-1], le[i]] (not cumulative); le is ascending and ends with
 * INFINITY. */
typedef struct outbox_histogram {
    double le[OUTBOX_HISTOGRAM_BUCKETS];
    uint64_t counts[OUTBOX_HISTOGRAM_BUCKETS];
    uint64_t count; /* all observations */
    double sum;     /* of the observed values */
} outbox_histogram;

/* Where a relay is in its life (outbox_relay_metrics.state). */
enum {
    OUTBOX_RELAY_STARTING = 0, /* created, run() not called or taking the lease */
    OUTBOX_RELAY_RUNNING = 1,  /* holds the lease, publishing or idle */
    OUTBOX_RELAY_STANDBY = 2,  /* waiting for another relay's lease (wait_for_lease) */
    OUTBOX_RELAY_STOPPED = 3   /* run() returned */
};

/* "starting", "running", "standby", "stopped" ("unknown" otherwise). */
OUTBOX_API const char *outbox_relay_state_name(int state);

/* A relay's metrics since it was created.  Fill size (sizeof your struct)
 * before outbox_relay_get_metrics: fields are only ever appended. */
typedef struct outbox_relay_metrics {
    size_t size;
    /* Counters. */
    uint64_t published;           /* as outbox_relay_stats */
    uint64_t retried;             /* publications that failed and were rescheduled */
    uint64_t failed;              /* messages moved to Failed by publication */
    uint64_t failed_rejected;     /*   of which the destination refused for good */
    uint64_t failed_max_attempts; /*   of which ran out of attempts */
    uint64_t quarantined;         /* stored rows that could not be decoded (Failed) */
    uint64_t outage_publications; /* failed during a destination outage (not charged) */
    uint64_t publish_errors;      /* as outbox_relay_stats */
    uint64_t batches;             /* claims that returned messages */
    uint64_t store_errors;        /* store calls of the loop that failed */
    /* State. */
    int state;                          /* OUTBOX_RELAY_* */
    int lease_held;                     /* 1 while it holds its lease */
    int64_t partitions_owned;           /* partitions it publishes (1 for a store with
                                           one lease, such as SQLite), 0 without lease */
    int destination_up;                 /* 0 during a destination outage */
    double destination_backoff_seconds; /* the current outage pause, 0 when up */
    int64_t down_since_us;              /* unix us when the outage began, 0 when up */
    int64_t loop_age_us;                /* since the loop last turned (a claim, a wait
                                           step, a lease try), monotonic */
    int64_t deadline_us;                /* the longest loop_age_us of a healthy relay:
                                           max(3 x poll interval, lease TTL, 10 s) */
    char name[128];                     /* the relay's name (lease owner) */
    char store[256];                    /* store URL, secrets masked */
    char store_scheme[32];              /* "sqlite", "postgres" */
    char destination[256];              /* scheme and host only ("https://hooks.example.com",
                                           "file:"): no path, query or credentials */
    char last_error[256];               /* the last publication, store or outage error,
                                           "" when none */
    char outage_error[256];             /* why the destination is down, "" when up */
    /* Histograms: commit to publish = from the message's occurred_at (the
     * time it was created, just before the enqueue committed) to the
     * destination's confirmation, seconds; publish duration = one batch's
     * publication, seconds; batch messages = messages per claimed batch. */
    outbox_histogram commit_to_publish;
    outbox_histogram publish_duration;
    outbox_histogram batch_messages;
} outbox_relay_metrics;

/* Fills the first out->size bytes of *out (out->size must be set: at
 * most sizeof(outbox_relay_metrics) is used) with relay's metrics.  Safe
 * from any thread while run() executes.  OUTBOX_EINVAL for a NULL
 * argument or a size below the first fields. */
OUTBOX_API int outbox_relay_get_metrics(const outbox_relay *relay, outbox_relay_metrics *out);

/* Fill with outbox_monitor_options_init, then set fields (it sets size,
 * which lets the struct grow, as outbox_relay_options does). */
typedef struct outbox_monitor_options {
    size_t size;             /* sizeof the caller's struct: set by _init */
    const char *listen;      /* "127.0.0.1:9464", "[::1]:9464", "localhost:0" (port 0:
                                an ephemeral port, see outbox_monitor_port); required */
    int allow_public;        /* 0 (default): refuse an address that is not loopback */
    const char *admin_token; /* bearer token for the console's retry and drop; NULL
                                or "": read-only.  Copied; never logged */
    unsigned refresh_ms;     /* the store's counts are queried at most this often,
                                in the monitor's own thread; default 5000 */
} outbox_monitor_options;

/* Fills opts with the defaults above and sets opts->size. */
OUTBOX_API void outbox_monitor_options_init(outbox_monitor_options *opts);

typedef struct outbox_monitor outbox_monitor;

/* Starts serving the relays relays[0..n) (n >= 1; borrowed: they must
 * outlive the monitor, which may be started before or after their run())
 * on opts->listen, with an HTTP thread and a refresh thread of its own.
 * The store counts come from a store handle of the monitor's own on each
 * relay's store.  OUTBOX_ECONFIG for a malformed or non-loopback address
 * without allow_public, OUTBOX_EIO when it cannot bind, OUTBOX_ENOTBUILT
 * without libmicrohttpd.  On failure *out is NULL. */
OUTBOX_API int outbox_monitor_new(outbox_monitor **out, outbox_relay *const *relays, size_t n,
                                  const outbox_monitor_options *opts, outbox_error *err);

/* The port it listens on (the ephemeral one when the port was 0). */
OUTBOX_API unsigned outbox_monitor_port(const outbox_monitor *monitor);

/* Stops serving (waits for the requests in progress) and frees monitor.
 * Free it before the relays.  NULL is harmless. */
OUTBOX_API void outbox_monitor_free(outbox_monitor *monitor);

#ifdef __cplusplus
}
#endif
#endif /* OUTBOX_H */
