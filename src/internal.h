/*
 * internal.h - what the parts of liboutbox share and the public header does
 * not show: the message's layout, error/log helpers, the clock, backoff, a
 * growable buffer, the string hash and aggregate index, the CloudEvents
 * encoder, fault points, the in-process wake-up registry (all core), the
 * relay's policy, and the two driver interfaces (stores and transports).
 *
 * Layers: src/core knows nothing above it; src/store and src/transport
 * (drivers) build on core; src/relay and src/consumer build on those.
 *
 * Names: internal non-static functions are outbox__<object>_<verb>.
 * Drivers are `const` tables of function pointers with a version field that
 * only grows (like sqlite3_vfs), written with designated initializers;
 * entries added by later versions are optional (NULL = not supported) and
 * tested with OUTBOX__HAS, never by asking which driver a table is.  The
 * relay and the CLI know only these tables.
 */
#ifndef OUTBOX_INTERNAL_H
#define OUTBOX_INTERNAL_H

#include "outbox.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define OUTBOX__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define OUTBOX__PRINTF(a, b)
#endif

/* 1 when the driver table ops (a store's or a destination's) has the
 * optional entry `entry`, which appeared in version `since`: a table older
 * than that has no such field to read, and a newer one leaves it NULL when
 * the driver does not support it.  Callers test optional entries this
 * way, never which driver they hold. */
#define OUTBOX__HAS(ops, since, entry) ((ops)->version >= (since) && (ops)->entry != NULL)

/* ------------------------------------------------------------------------
 * Message layout
 * ---------------------------------------------------------------------- */

/* "pending", "sent", "failed"; and back (-1 when unknown): the public
 * outbox_msg_status_name and outbox_msg_status_parse. */
const char *outbox__status_name(int status);
int outbox__status_parse(const char *name);

struct outbox_msg {
    int64_t seq;         /* 0 until read from a store */
    int64_t occurred_at; /* unix microseconds, UTC */
    char id[37];         /* canonical lower-case UUID */
    char *type;
    char *aggregate_type; /* "" when none */
    char *aggregate_id;
    char *payload;      /* JSON text as given (validated) */
    char *headers_json; /* compact JSON object, "{}" when none */
    size_t header_count;
    char **header_names;  /* header_count entries each, in headers_json order */
    char **header_values; /* (header_names is one allocation holding both
                             arrays and their strings: free only it) */

    /* Relay bookkeeping, filled when read from a store. */
    int status; /* OUTBOX_STATUS_* */
    int attempts;
    int64_t available_at; /* unix microseconds */
    int64_t sent_at;      /* unix microseconds, 0 when not sent */
    char *last_error;     /* NULL when none; always its own allocation */

    /* Set by outbox__msg_from_row, which makes the message and its strings
     * one allocation: pointers into [msg, block_end) are not freed on their
     * own.  NULL for messages made otherwise. */
    char *block_end;
};

/* Builds a message from a stored row for the relay.  The row is checked as
 * enqueue checks a message (id, type, aggregate fields, header names and
 * values, occurred_at, sizes; the payload's JSON syntax is left to the
 * table's CHECK): a row that fails gets the EBAD* code with a message
 * "stored message seq N: <field and problem>", which a store's claim
 * records as the row's last_error when it quarantines it (status Failed).
 * Strings are copied.  The caller frees *out with outbox_msg_free. */
int outbox__msg_from_row(outbox_msg **out, int64_t seq, const char *id, int64_t occurred_at,
                         const char *type, const char *aggregate_type, const char *aggregate_id,
                         const char *payload, const char *headers_json, outbox_error *err);

/* The lenient twin of outbox__msg_from_row, for showing stored rows (list,
 * show, drop's archive): fails only for memory; what cannot be parsed is
 * kept as stored (headers_json verbatim with no header arrays, the id cut
 * at 36 bytes). */
int outbox__msg_from_row_lenient(outbox_msg **out, int64_t seq, const char *id, int64_t occurred_at,
                                 const char *type, const char *aggregate_type,
                                 const char *aggregate_id, const char *payload,
                                 const char *headers_json, outbox_error *err);
/* A copy of m as the relay gets it from a claim (no last_error): one
 * memcpy for a message from outbox__msg_from_row, built again otherwise. */
outbox_msg *outbox__msg_clone(const outbox_msg *m, outbox_error *err);

/* 1 when uuid (a valid UUID) is the nil UUID, all zeros. */
int outbox__uuid_is_nil(const char *uuid);

/* Copies id lower-cased into out when it is a canonical UUID (either case);
 * otherwise OUTBOX_EBADID with a message that starts with `what` (e.g.
 * "message id", "inbox message id"). */
int outbox__uuid_canonical(const char *id, char out[37], const char *what, outbox_error *err);

/* Size counted against OUTBOX_LIMIT_MESSAGE_BYTES. */
size_t outbox__msg_size(const outbox_msg *msg);

/* Checks the size limit; OUTBOX_ETOOBIG with a message naming sizes. */
int outbox__msg_check_size(const outbox_msg *msg, outbox_error *err);

/* ------------------------------------------------------------------------
 * Errors and logging
 * ---------------------------------------------------------------------- */

/* Fills err (when not NULL) with code and the formatted message; returns
 * code, so callers can write `return outbox__error(err, OUTBOX_EBADID, ...)`. */
int outbox__error(outbox_error *err, int code, const char *fmt, ...) OUTBOX__PRINTF(3, 4);

/* Short static name of a code, e.g. "EBADPAYLOAD" ("UNKNOWN" if unknown). */
const char *outbox__error_name(int code);

/* Logs through the installed callback when level >= the minimum. */
void outbox__log(int level, const char *component, const char *fmt, ...) OUTBOX__PRINTF(3, 4);
int outbox__log_enabled(int level);
/* Logs a line about message m with its fields (msg id, aggregate,
 * traceparent, attempt when not 0, destination when not NULL) for
 * callbacks installed with outbox_log_set_fields. */
void outbox__log_msg(int level, const char *component, const outbox_msg *m, unsigned attempt,
                     const char *destination, const char *fmt, ...) OUTBOX__PRINTF(6, 7);

/* Copies url into out with any password (user:PASSWORD@) and values of query
 * parameters named like secrets (password, token, secret, key, pass) replaced
 * by "***".  Always NUL-terminates. */
void outbox__url_redact(const char *url, char *out, size_t out_len);

/* A URL taken apart: scheme://[user[:password]@]hosts[/path][?query].
 * "hosts" is kept whole ("a:4222,b:4222"); for "scheme:rest" without "//"
 * everything after the colon before '?' is the path.  Query parameters and
 * then the extra "key=value" options are merged into params (percent-
 * decoded; a key given twice is an error).  Strings are owned by the
 * struct: free with outbox__url_free. */
typedef struct outbox_url_param {
    char *key;
    char *value;
    int used; /* set by outbox__url_param and outbox__props_parse */
} outbox_url_param;

typedef struct outbox_url {
    char *scheme;   /* lower-case, without ':' */
    char *user;     /* NULL when absent */
    char *password; /* NULL when absent */
    char *hosts;    /* "" when absent */
    char *path;     /* "" when absent; without the leading '/' after hosts */
    outbox_url_param *params;
    size_t param_count;
} outbox_url;

/* OUTBOX_EBADURL (message shows the redacted URL) when malformed. */
int outbox__url_parse(outbox_url *out, const char *url, const char *const *extra_options,
                      outbox_error *err);
void outbox__url_free(outbox_url *url);
/* The value of parameter key (marked used), or NULL. */
const char *outbox__url_param(outbox_url *url, const char *key);

/* ------------------------------------------------------------------------
 * Driver properties (src/core/props.c): each driver describes its settings
 * in one table, librdkafka style.  outbox__props_parse reads a URL's query
 * parameters and extra options into the driver's config struct with it,
 * refusing unknown keys and malformed values with the property's own doc;
 * outbox_driver_get shows the same tables (help, docs/CLI.md).
 * ---------------------------------------------------------------------- */

/* Property types and where their values go (the field at offset). */
enum {
    OUTBOX_PROP_STRING = 0,  /* char *, owned by the config (outbox__props_free) */
    OUTBOX_PROP_SECRET,      /* char *, never shown in a message (a token) */
    OUTBOX_PROP_PATH,        /* char *, a file that must be readable at start-up */
    OUTBOX_PROP_SECRET_FILE, /* char *, a readable file holding a secret: the
                                path may be shown, the content never */
    OUTBOX_PROP_INT,         /* int64_t */
    OUTBOX_PROP_BOOL,        /* int, 0 or 1: true/false, 1/0, yes/no, on/off */
    OUTBOX_PROP_DURATION,    /* int64_t milliseconds (outbox__duration_parse_ms) */
    OUTBOX_PROP_SIZE,        /* int64_t bytes: 512, 64k, 1m, 2g (powers of 1024) */
    OUTBOX_PROP_ENUM,        /* int, the index of the value among range's choices */
    OUTBOX_PROP_TYPE_COUNT
};

/* One property.  A table is an array ended by an entry whose name is NULL.
 * A name with "<" ("endpoint.<TYPE>") is a family: every key starting with
 * the text before "<" belongs to it; the parser only checks that the rest
 * is not empty, and the driver reads those keys from the URL itself. */
typedef struct outbox_prop {
    const char *name;
    int type;                  /* OUTBOX_PROP_* */
    size_t offset;             /* offsetof the value in the driver's config struct */
    const char *default_value; /* text, parsed as a given value would be; NULL:
                                  the field stays zero (NULL) when not given */
    const char *range;         /* "MIN..MAX" or "MIN.." in the type's units
                                  ("1ms..1h", "1..1024"); enum "a|b|c"; NULL: any */
    const char *placeholder;   /* "TEMPLATE", "NAME"; NULL: the type's ("N", "PATH") */
    const char *doc;           /* one or two sentences */
} outbox_prop;

#define OUTBOX_PROPS_END                                                                           \
    {                                                                                              \
        .name = NULL                                                                               \
    }

/* Fills config (zeroed by the caller) from props: first every default, then
 * each of url's parameters, marking them used.  `what` names the driver in
 * messages ("nats destination").  OUTBOX_ECONFIG for a key no property has
 * ("<what> has no option \"x\"; its options: ..."), a family key with
 * nothing after its prefix, and a value that does not parse, is out of
 * range, or names an unreadable file (the message names the option, its
 * value unless the type is secret, the range and the doc).  props NULL:
 * the driver takes no options, and any is refused.  Whatever the result,
 * free the config's strings with outbox__props_free. */
int outbox__props_parse(const outbox_prop *props, const char *what, outbox_url *url, void *config,
                        outbox_error *err);

/* Frees the strings outbox__props_parse stored in config and sets them to
 * NULL; harmless on a zeroed config. */
void outbox__props_free(const outbox_prop *props, void *config);

/* Makes *out (as outbox__url_parse does, with scheme and no host or path)
 * from "key=value" options alone, taken verbatim (no percent-decoding):
 * for drivers whose URL query is not theirs (an HTTP target's) or that
 * take no query.  A key given twice or an entry without '=' is
 * OUTBOX_ECONFIG.  Free with outbox__url_free. */
int outbox__props_options(outbox_url *out, const char *scheme, const char *const *options,
                          outbox_error *err);

/* "string", "int", ... (outbox_driver_prop.type) and the placeholder of a
 * property ("N", "PATH", its own when it has one). */
const char *outbox__prop_type_name(int type);
const char *outbox__prop_placeholder(const outbox_prop *prop);

/* A driver as the registries list it, for outbox_driver_get. */
typedef struct outbox_driver_entry {
    const char *scheme;
    const char *usage;
    const char *doc;
    int built;
    const outbox_prop *props; /* NULL: none */
} outbox_driver_entry;

/* The i-th store (src/store/store.c) or destination (src/transport/
 * transport.c) driver, built or not: 1 with *out filled, 0 past the last. */
int outbox__store_driver(size_t i, outbox_driver_entry *out);
int outbox__transport_driver(size_t i, outbox_driver_entry *out);

/* ------------------------------------------------------------------------
 * Route templates: a subject or topic made from message fields, e.g.
 * "outbox.{aggregate_type}.{type}".  Placeholders: {type},
 * {aggregate_type}, {aggregate_id}.  An empty field renders as "none".
 * ---------------------------------------------------------------------- */

typedef struct outbox_route outbox_route;
typedef struct outbox_buf outbox_buf; /* defined below */

enum {
    OUTBOX_ROUTE_NATS_SUBJECT = 1, /* tokens split by '.', none empty; no spaces,
                                      no '*' or '>' wildcards; rendered field
                                      values have '.', ' ', '*', '>' replaced by '_' */
    OUTBOX_ROUTE_KAFKA_TOPIC = 2   /* [A-Za-z0-9._-], at most 249 bytes; other
                                      characters in field values become '_' */
};

/* Parses and checks a template at start-up: OUTBOX_ECONFIG naming the
 * problem (unknown placeholder, unbalanced brace, empty token, bad char). */
int outbox__route_new(outbox_route **out, const char *tmpl, int kind, outbox_error *err);
/* Renders into b (reset first); OUTBOX_EREJECTED when the result is not a
 * valid subject/topic (e.g. too long), with the reason in err. */
int outbox__route_render(const outbox_route *route, const outbox_msg *msg, outbox_buf *b,
                         outbox_error *err);
/* Non-zero when the template has no placeholders (one fixed destination). */
int outbox__route_is_fixed(const outbox_route *route);
void outbox__route_free(outbox_route *route);

/* ------------------------------------------------------------------------
 * Clock, randomness, backoff
 * ---------------------------------------------------------------------- */

int64_t outbox__now_us(void);       /* wall clock, unix microseconds */
int64_t outbox__monotonic_us(void); /* CLOCK_MONOTONIC microseconds */
void outbox__sleep_us(int64_t us);

/* Random 64-bit value from a per-thread generator seeded from the OS. */
uint64_t outbox__random64(void);

/* Fills p with n bytes straight from the OS (getrandom, /dev/urandom);
 * never fails.  Unlike outbox__random64 it stays unique across fork(). */
void outbox__random_bytes(void *p, size_t n);

/* The longest delay before retry number `attempt` (1 = after the first
 * failure; 0 counts as 1): min(max_ms, base_ms * 2^(attempt-1)), without
 * overflow; 0 when base_ms is 0. */
uint64_t outbox__backoff_cap_ms(unsigned attempt, unsigned base_ms, unsigned max_ms);

/* Delay before retry number `attempt`: full jitter, uniform in
 * [0, outbox__backoff_cap_ms(attempt, base_ms, max_ms)]. */
int64_t outbox__backoff_ms(unsigned attempt, unsigned base_ms, unsigned max_ms);

/* Parses "500ms", "30s", "5m", "2h", "7d" (a bare number is seconds) into
 * milliseconds; -1 when malformed.  The same as outbox_duration_parse_ms. */
int64_t outbox__duration_parse_ms(const char *text);

/* Copies the caller's options struct of src_size bytes (its first field,
 * set by the _options_init function) into dst (dst_size bytes, filled with
 * the defaults beforehand): only the first src_size bytes, so fields the
 * caller's older struct lacks keep their defaults.  OUTBOX_EINVAL naming
 * fn when src_size is below min_size (0: a struct not filled by
 * <init_fn>). */
int outbox__options_copy(void *dst, size_t dst_size, const void *src, size_t src_size,
                         size_t min_size, const char *fn, const char *init_fn, outbox_error *err);

/* ------------------------------------------------------------------------
 * Growable buffer
 * ---------------------------------------------------------------------- */

typedef struct outbox_buf {
    char *data; /* always NUL-terminated when len > 0 or after any append */
    size_t len;
    size_t cap;
    int oom; /* set when an allocation failed; later appends are no-ops */
} outbox_buf;

void outbox__buf_init(outbox_buf *b);
void outbox__buf_free(outbox_buf *b);
void outbox__buf_reset(outbox_buf *b); /* len = 0, keeps memory */
void outbox__buf_append(outbox_buf *b, const char *s, size_t n);
void outbox__buf_puts(outbox_buf *b, const char *s);
void outbox__buf_printf(outbox_buf *b, const char *fmt, ...) OUTBOX__PRINTF(2, 3);
/* Appends s as a JSON string literal, with quotes and escapes. */
void outbox__buf_json_string(outbox_buf *b, const char *s);

/* ------------------------------------------------------------------------
 * String hash and the aggregate index (src/core/aggindex.c and below)
 *
 * One hash for every string the library hashes, and one index on it for
 * the publish path's per-message lookups: the relay's set of held-back
 * aggregates, the HTTP destination's per-aggregate chains, the NATS
 * destination's aggregate and message-id tables.  Keys are borrowed
 * strings; a value is a small integer (e.g. the index of the aggregate's
 * last message in a batch, or 0 for plain presence).  Open addressing in a
 * power-of-two table at most half full; only reserve allocates.
 * ---------------------------------------------------------------------- */

/* FNV-1a (64 bits) of the NUL-terminated s.  Inline, like lookup and
 * insert below: they run per message, and the library is position-
 * independent, where a call to an exported function is never inlined. */
static inline uint64_t outbox__hash_text(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

typedef struct outbox_aggindex_slot {
    const char *key; /* NULL: empty */
    uint32_t hash;   /* outbox__hash_text folded to 32 bits: compared before
                        the key, and places the slot again when the table grows */
    uint32_t value;
} outbox_aggindex_slot;

typedef struct outbox_aggindex {
    outbox_aggindex_slot *slots;
    size_t cap;   /* slots, a power of two (0 before the first reserve) */
    size_t count; /* keys held */
} outbox_aggindex;

void outbox__aggindex_init(outbox_aggindex *ix);
/* Frees the table (not the keys, which are borrowed); ix is empty after. */
void outbox__aggindex_free(outbox_aggindex *ix);
/* Empties ix, keeping its memory. */
void outbox__aggindex_reset(outbox_aggindex *ix);
/* Makes room for n more keys, keeping those held: OUTBOX_OK or
 * OUTBOX_ENOMEM (ix unchanged).  insert needs the room reserved first. */
int outbox__aggindex_reserve(outbox_aggindex *ix, size_t n);

static inline uint32_t outbox__aggindex_hash(const char *key)
{
    uint64_t h = outbox__hash_text(key);
    return (uint32_t)(h ^ (h >> 32));
}

/* The slot holding key, or the empty slot where it goes (ix->cap > 0). */
static inline outbox_aggindex_slot *outbox__aggindex_slot(const outbox_aggindex *ix,
                                                          const char *key, uint32_t hash)
{
    size_t mask = ix->cap - 1, i;
    for (i = hash & mask; ix->slots[i].key != NULL; i = (i + 1) & mask)
        if (ix->slots[i].hash == hash && strcmp(ix->slots[i].key, key) == 0) break;
    return &ix->slots[i];
}

/* 1 when key is held (its value in *value, when not NULL), else 0. */
static inline int outbox__aggindex_lookup(const outbox_aggindex *ix, const char *key,
                                          uint32_t *value)
{
    const outbox_aggindex_slot *s;
    if (ix->count == 0) return 0;
    s = outbox__aggindex_slot(ix, key, outbox__aggindex_hash(key));
    if (s->key == NULL) return 0;
    if (value != NULL) *value = s->value;
    return 1;
}

/* Sets key's value.  A new key is kept as given (borrowed: it must outlive
 * its entry) and 0 is returned; for a key already held the value is
 * replaced (the old one in *previous, when not NULL) and 1 is returned. */
static inline int outbox__aggindex_insert(outbox_aggindex *ix, const char *key, uint32_t value,
                                          uint32_t *previous)
{
    uint32_t hash = outbox__aggindex_hash(key);
    outbox_aggindex_slot *s = outbox__aggindex_slot(ix, key, hash);
    if (s->key != NULL) {
        if (previous != NULL) *previous = s->value;
        s->value = value;
        return 1;
    }
    s->key = key;
    s->hash = hash;
    s->value = value;
    ix->count++;
    return 0;
}

/* ------------------------------------------------------------------------
 * Stretches: what a pipelined claim may read (src/core/stretches.c)
 * ---------------------------------------------------------------------- */

/* Seqs lo to hi, both included. */
typedef struct outbox_seq_range {
    int64_t lo, hi;
} outbox_seq_range;

/* The stretches of seqs between the seqs in flight, lowest first, and
 * the memory kept for the next claim.  Zero-initialised is empty. */
typedef struct outbox_stretches {
    outbox_seq_range *r;
    size_t count, cap;
    int64_t *sorted; /* the seqs in flight, sorted (when they come unsorted) */
    size_t sorted_cap;
} outbox_stretches;

/* Fills s with the stretches of seqs that are not in exclude (the n seqs
 * in flight, in any order, duplicates allowed), lowest first, from
 * INT64_MIN to INT64_MAX.  The pipelined claims read these stretches
 * instead of passing the seqs in flight and stepping over every row in
 * flight (they are still pending): the seqs in flight are few ranges (a
 * batch is claimed in seq order and a drain's batches follow one
 * another), so a drain has two stretches: below the window, where retries
 * fall due, and above it.  0, or -1 when out of memory. */
int outbox__stretches_between(outbox_stretches *s, const int64_t *exclude, size_t n);
void outbox__stretches_free(outbox_stretches *s);

/* ------------------------------------------------------------------------
 * CloudEvents
 * ---------------------------------------------------------------------- */

/* Appends msg as one CloudEvents 1.0 structured-mode JSON object (no
 * newline): specversion, id, source, type, subject (aggregate id), time,
 * datacontenttype "application/json", data (the payload, verbatim),
 * aggregatetype when not empty, and each header as an extension attribute
 * (name lower-cased, characters outside [a-z0-9] dropped; names that would
 * clash with a standard attribute or an earlier one get the prefix "x"). */
void outbox__cloudevent_json(outbox_buf *b, const outbox_msg *msg, const char *source);

/* Encodes msgs[0..n) into b (reset first) as structured-mode JSON lines,
 * each ended by '\n', for the stdout: and file: destinations.  Returns
 * OUTBOX_OK, or OUTBOX_ENOMEM with b emptied and its memory released. */
int outbox__cloudevent_lines(outbox_buf *b, outbox_msg *const *msgs, size_t n, const char *source);

/* The extension attribute name for a header name, as described above,
 * written into out (at least 64 bytes); "" when nothing is left. */
void outbox__cloudevent_ext_name(const char *header, char *out, size_t out_len);

/* ------------------------------------------------------------------------
 * Webhook signing (src/core/webhook.c; needs OUTBOX_HAVE_CRYPTO)
 * ---------------------------------------------------------------------- */

enum { OUTBOX_WEBHOOK_KEY_MAX = 256 };

/* Decodes a "whsec_<base64>" (prefix optional) secret into key (room for
 * OUTBOX_WEBHOOK_KEY_MAX bytes).  OUTBOX_ECONFIG naming `what` (e.g. "the
 * secret in secret_file=...") when malformed; never shows the secret;
 * OUTBOX_ENOTBUILT without libcrypto. */
int outbox__webhook_key_decode(const char *secret, const char *what, unsigned char *key,
                               size_t *key_len, outbox_error *err);

/* "v1," + base64(HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")) into out.
 * OUTBOX_ENOMEM or OUTBOX_ENOTBUILT on failure. */
int outbox__webhook_sign_key(const unsigned char *key, size_t key_len, const char *msg_id,
                             int64_t timestamp, const void *body, size_t body_len,
                             char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE]);

/* ------------------------------------------------------------------------
 * Fault points
 *
 * OUTBOX_FAULT("name") marks a place where a test build can fail on purpose.
 * The environment variable OUTBOX_FAULT selects what happens:
 *   OUTBOX_FAULT=name:action[:when][,name:action[:when]...]
 *   action: crash (SIGKILL the process, as kill -9 would), exit (_exit(99)),
 *           error (the point returns OUTBOX_EFAULT); error=ENOSPC (or EIO,
 *           EDQUOT, EROFS) also names the errno of a system-call point
 *   when:   N   the N-th time the point is reached (default 1)
 *           pX  each time with probability X (0..1), seeded by
 *               OUTBOX_FAULT_SEED when set
 * The macro evaluates to 0 normally and to OUTBOX_EFAULT for "error".
 * Without OUTBOX_FAULT_INJECTION (release builds) it is the constant 0.
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_FAULT_INJECTION
int outbox__fault(const char *name);
#define OUTBOX_FAULT(name) outbox__fault(name)
#else
#define OUTBOX_FAULT(name) 0
#endif

/* I/O-failure points (src/core/fault.c, tests/test_io_sweep.c).
 * OUTBOX_FAULT_ERRNO(name, fallback) is a point in front of a system call:
 * 0 normally, else the errno the call is to fail with (the entry's
 * `error=ENOSPC|EIO|EDQUOT|EROFS`, or fallback).  outbox__fault_set
 * replaces the configuration (OUTBOX_FAULT's syntax; NULL: none) and
 * resets the counts, for sweeps inside one process: call it while no thread
 * is at a point.  outbox__fault_fired counts the faults applied since. */
#ifdef OUTBOX_FAULT_INJECTION
int outbox__fault_errno(const char *name, int fallback);
void outbox__fault_set(const char *spec);
uint64_t outbox__fault_fired(void);
#define OUTBOX_FAULT_ERRNO(name, fallback) outbox__fault_errno(name, fallback)
#else
#define OUTBOX_FAULT_ERRNO(name, fallback) 0
#endif

/* ------------------------------------------------------------------------
 * Memory (src/core/alloc.c): every allocation in src/ goes through these,
 * so a test build can fail the N-th one (tests/test_alloc_sweep.c).  The
 * memory is libc's: outbox__free and free are interchangeable, and memory
 * the caller releases with an outbox_*_free is released through the hook.
 * In OUTBOX_FAULT_INJECTION builds outbox__alloc_fail_at(n) (or the
 * environment variable OUTBOX_ALLOC_FAIL=N, read at the first allocation)
 * makes the n-th allocation after arming return NULL, once; release builds
 * call libc directly.
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_FAULT_INJECTION
void *outbox__malloc(size_t n);
void *outbox__calloc(size_t count, size_t size);
void *outbox__realloc(void *p, size_t n);
char *outbox__strdup(const char *s);
char *outbox__strndup(const char *s, size_t n);
void outbox__free(void *p);
/* Counts one allocation and says whether it must fail (1) or not (0): for
 * allocators the library does not own (a test's sqlite3_mem_methods,
 * jansson's json_set_alloc_funcs). */
int outbox__alloc_fault(void);
/* Arms the n-th allocation from now on to fail (0: none) and resets the
 * counts below. */
void outbox__alloc_fail_at(uint64_t n);
/* Allocations counted, and failures injected, since the last arming. */
uint64_t outbox__alloc_count(void);
uint64_t outbox__alloc_failures(void);
#else
#include <stdlib.h>
#define outbox__malloc malloc
#define outbox__calloc calloc
#define outbox__realloc realloc
#define outbox__strdup strdup
#define outbox__strndup strndup
#define outbox__free free
#endif

/* ------------------------------------------------------------------------
 * In-process wake-up (src/core/wake.c): a registry from a key (a database
 * file's path) to callbacks.  A relay registers the file it drains with a
 * callback that wakes it; outbox_enqueue_sqlite notifies its connection's
 * file, so a relay in the same process publishes right after the commit
 * instead of at its next change check.  Keys are matched as given and
 * canonicalised (realpath), so two spellings of one file meet.  Wake-ups
 * are hints: correctness never depends on them.
 * ---------------------------------------------------------------------- */

typedef void (*outbox_wake_fn)(void *user);

/* Calls fn(user) on every notify of key from now on (key NULL or "": there
 * is nothing to register, e.g. an in-memory database: OUTBOX_OK).
 * OUTBOX_ENOMEM when out of memory: only the fast wake-up is lost. */
int outbox__wake_register(const char *key, outbox_wake_fn fn, void *user);
/* Removes every registration of (fn, user); harmless when there is none.
 * Once it returns, fn is not running for user and will not be called. */
void outbox__wake_unregister(outbox_wake_fn fn, void *user);
/* Calls the callbacks registered on key (fn runs under the registry's
 * lock: it must be quick and must not register or unregister).  With
 * nothing registered it costs one atomic load: it runs in every enqueue. */
void outbox__wake_notify(const char *key);

/* ------------------------------------------------------------------------
 * Relay policy (src/relay/options.c): the defaults, outbox_relay_options_init
 * and outbox_redelivery_horizon_ms are public (outbox.h).
 * ---------------------------------------------------------------------- */

/* Checks an inbox purge's retention (OUTBOX_EINVAL when negative, naming
 * `fn`) and logs a warning when it is shorter than the redelivery horizon
 * (<= 0: the default options' horizon), shared by the SQLite and
 * PostgreSQL inbox purges. */
int outbox__inbox_retention_check(const char *fn, int64_t retention_ms,
                                  int64_t redelivery_horizon_ms, outbox_error *err);

/* ------------------------------------------------------------------------
 * Stores
 * ---------------------------------------------------------------------- */

/* What the relay claims and how it records outcomes. */
typedef struct outbox_claim_params {
    size_t batch_size;
    int64_t now_us;
    int failed_blocks_aggregate;
    int once;              /* the relay drains what is due and exits: a store that shares
                              its outbox between relays takes every partition it can get */
    uint64_t *quarantined; /* not NULL: increased by the number of rows the
                              claim quarantined (set Failed, see claim) */
} outbox_claim_params;

enum {
    OUTBOX_OUTCOME_SENT = 0,   /* confirmed: delete or mark sent */
    OUTBOX_OUTCOME_RETRY = 1,  /* attempts+1, available_at, last_error */
    OUTBOX_OUTCOME_FAILED = 2, /* attempts+1, status failed, last_error */
    OUTBOX_OUTCOME_UNSENT = 3  /* nothing changes (held back in the batch) */
};

typedef struct outbox_completion {
    const outbox_msg *msg;
    int outcome;          /* OUTBOX_OUTCOME_* */
    int64_t available_at; /* RETRY: when it is due again (unix us) */
    const char *error;    /* RETRY/FAILED: stored as last_error */
} outbox_completion;

typedef struct outbox_complete_params {
    int on_sent;             /* OUTBOX_ON_SENT_* */
    int64_t now_us;          /* sent_at */
    const char *lease_owner; /* renew this lease in the same transaction;
                                OUTBOX_ELEASELOST (and nothing recorded) if
                                another owner holds it.  NULL: no check. */
    int64_t lease_ttl_ms;
} outbox_complete_params;

/* outbox_status (the store's counts and lease), outbox_list_params,
 * outbox_list_fn and outbox_drop_archive_fn are public: see outbox.h,
 * "Store handle". */

/* A store driver.  Every driver has the entries of version 1 but wake_path;
 * wake_path and the entries of later versions are optional: NULL = not
 * supported, and callers test them (OUTBOX__HAS) before use. */
typedef struct outbox_store_ops {
    int version;        /* 1; 2 adds idle and wait_fd; 3 adds inbox_purge;
                           4 adds the pipelined claim and complete; 5 adds drop
                           and lease_note; 6 adds usage, doc and props;
                           7 adds partitions_held; 8 adds the claim ahead and the
                           complete behind; 9 adds rebalance_wanted */
    const char *scheme; /* "sqlite" */

    /* Opens the store named by url (scheme included).  Does not create the
     * schema.  On failure *state is NULL. */
    int (*open)(void **state, const char *url, outbox_error *err);
    void (*close)(void *state);

    /* Creates or upgrades the schema; *from_version and *to_version get the versions. */
    int (*init)(void *state, int *from_version, int *to_version, outbox_error *err);
    /* OUTBOX_OK when the schema is current; ENOSCHEMA / ESCHEMANEWER. */
    int (*check_schema)(void *state, outbox_error *err);

    /* Enqueues msg in a transaction of the store's own. */
    int (*enqueue)(void *state, const outbox_msg *msg, outbox_error *err);

    /* Lease (one relay per outbox, or per partition for stores that share).
     * acquire: OUTBOX_OK, or OUTBOX_ELEASED with the holder described in
     * err->message.  renew: OUTBOX_ELEASELOST when taken over. */
    int (*lease_acquire)(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
    int (*lease_renew)(void *state, const char *owner, int64_t ttl_ms, outbox_error *err);
    int (*lease_release)(void *state, const char *owner, outbox_error *err);

    /* Claims up to p->batch_size due pending messages in seq order, applying
     * the per-aggregate ordering rule (guarantee 4).  A row that
     * outbox__msg_from_row refuses is quarantined, never returned as the
     * claim's error: it is marked Failed (attempts + 1, last_error = the
     * decode error naming the seq and field) in a statement of its own, an
     * error is logged, and the claim reads again, so the rest of its
     * aggregate is held as behind any Failed message and every other
     * aggregate flows.  *msgs receives an
     * array of *n messages owned by the caller (free each with
     * outbox_msg_free and the array with free). */
    int (*claim)(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                 outbox_error *err);
    /* Records outcomes in one transaction. */
    int (*complete)(void *state, const outbox_completion *c, size_t n,
                    const outbox_complete_params *p, outbox_error *err);

    /* Cheap check: *changed = 1 when anything committed to the store since
     * the previous call (the first call says 1). */
    int (*changed)(void *state, int *changed, outbox_error *err);
    /* Earliest available_at among pending messages; 0 when none. */
    int (*next_due)(void *state, int64_t *due_us, outbox_error *err);
    /* The key for in-process wake-up (outbox__wake_register): the path of
     * the database file, or NULL when there is none (in-memory).  Optional:
     * NULL = not supported. */
    const char *(*wake_path)(void *state);

    /* Operator commands. */
    int (*status)(void *state, outbox_status *out, outbox_error *err);
    int (*list)(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                outbox_error *err);
    /* *msg gets the message with its bookkeeping fields; ENOTFOUND. */
    int (*get)(void *state, const char *id, outbox_msg **msg, outbox_error *err);
    /* Requeues: failed messages by id (ids n > 0) or all failed (all != 0):
     * status pending, attempts 0, available_at now.  *count: how many. */
    int (*retry)(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                 outbox_error *err);
    /* Deletes sent messages with sent_at < before_us. */
    int (*purge)(void *state, int64_t before_us, int64_t *count, outbox_error *err);

    /* Version 2 (optional: NULL = not supported, e.g. SQLite, which needs
     * no hint). */

    /* waiting != 0: the relay is about to sleep and wants a wake-up hint
     * for new commits; 0: it is awake again and needs none.  After a
     * successful idle(1) the relay claims once more before it sleeps, so a
     * commit made before the store saw the flag is not left waiting. */
    int (*idle)(void *state, int waiting, outbox_error *err);
    /* A descriptor that becomes readable when `changed` may say 1 (the
     * relay polls it in its idle wait), or -1. */
    int (*wait_fd)(void *state);

    /* Version 3 (optional: NULL = not supported). */

    /* Deletes inbox entries received more than retention_ms ago, in a
     * transaction of its own; warns when retention_ms is shorter than the
     * redelivery horizon (<= 0: the default options').  *count: how many. */
    int (*inbox_purge)(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                       int64_t *count, outbox_error *err);

    /* Version 4 (optional, both or neither: NULL = not supported, the relay
     * does not pipeline with this store). */

    /* Like claim, for a relay that claims the next batch while the one
     * before is still being published: returns none of the exclude_count
     * messages whose seqs are in exclude (the batch in flight), keeps
     * nothing open between claim and complete_pipelined, and while
     * exclude_count > 0 keeps the partitions it holds (hands none to
     * another relay). */
    int (*claim_pipelined)(void *state, const outbox_claim_params *p, const int64_t *exclude,
                           size_t exclude_count, outbox_msg ***msgs, size_t *n, outbox_error *err);
    /* Records the outcomes of a batch from claim_pipelined in one
     * transaction; in_flight != 0: another batch is still out (keep the
     * partitions, as above). */
    int (*complete_pipelined)(void *state, const outbox_completion *c, size_t n,
                              const outbox_complete_params *p, int in_flight, outbox_error *err);

    /* Version 5 (optional: NULL = not supported). */

    /* Deletes Failed messages, by id (ids, n > 0) or all of them (all != 0),
     * in one transaction.  With ids it is all or nothing, as for retry: an
     * unknown id (ENOTFOUND) or one that is not Failed (EINVAL) deletes
     * nothing.  archive (may be NULL) is called once with every message to
     * be deleted, before the deletion; its error deletes nothing.  *count:
     * how many were deleted. */
    int (*drop)(void *state, const char *const *ids, size_t n, int all,
                outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err);
    /* Stores a short note about the relay holding the lease `owner` (NULL or
     * "" clears it), shown by status as relay_note.  NULL: not supported. */
    int (*lease_note)(void *state, const char *owner, const char *note, outbox_error *err);

    /* Version 6: what help and docs show (outbox_driver_get).  The tables
     * of drivers whose library this build leaves out exist too, with the
     * function entries NULL: open == NULL means "not built". */
    const char *usage;        /* "sqlite:PATH" */
    const char *doc;          /* what it is, one or two sentences */
    const outbox_prop *props; /* its URL options (outbox__props_parse); NULL: none */

    /* Version 7 (optional: NULL = the store is not partitioned; the relay
     * then reports 1 while it holds the lease). */

    /* How many partitions this handle holds now (0 when it holds none or
     * lost its session), as its last lease or claim call left it: no I/O,
     * so the relay reads it after those calls, on its own thread (the
     * handle is not thread-safe). */
    int (*partitions_held)(void *state);

    /* Version 8 (optional, both or neither: NULL = the relay claims with
     * claim_pipelined only). */

    /* The pipelined claim, started ahead: claim_ahead starts reading what
     * claim_pipelined(p, exclude) would return and comes back without
     * waiting for it (on a connection or thread of the store's own: the
     * store copies what it needs, exclude included).  Until
     * claim_ahead_end the relay goes on with the handle as usual
     * (complete_pipelined of batches in exclude, lease renewals, notes), so
     * the read sees the store as of some moment in between: safe, because
     * everything in flight is in exclude, and the relay discards the batch
     * when an outcome in between could change what may be claimed (a
     * failure, a message held back).  OUTBOX_ENOTBUILT: this handle cannot
     * claim ahead (e.g. an in-memory database); any other error: not
     * started this time.  Neither changes the store. */
    int (*claim_ahead)(void *state, const outbox_claim_params *p, const int64_t *exclude,
                       size_t exclude_count, outbox_error *err);
    /* Waits for the claim started by claim_ahead.  keep != 0: returns its
     * batch as claim_pipelined would (p: the params for a read again that
     * the store may need, e.g. to quarantine rows on the handle's own
     * connection, and its quarantined counter); keep == 0: discards it
     * (*msgs NULL, *n 0; never fails).  Without a claim started it returns
     * nothing. */
    int (*claim_ahead_end)(void *state, int keep, const outbox_claim_params *p, outbox_msg ***msgs,
                           size_t *n, outbox_error *err);

    /* Version 8 too (optional, both or neither): complete_pipelined, left
     * to run (on a connection or thread of the store's own) while the
     * relay goes on; c, its messages and p must stay as they are until
     * complete_behind_end, which waits for it and returns what
     * complete_pipelined would have (OUTBOX_OK: recorded).  One at a time;
     * claims in between must exclude its messages (the relay keeps them in
     * its exclude list until the end).  OUTBOX_ENOTBUILT from
     * complete_behind: this handle cannot (then nothing was started);
     * complete_behind_end without one started returns OUTBOX_OK. */
    int (*complete_behind)(void *state, const outbox_completion *c, size_t n,
                           const outbox_complete_params *p, int in_flight, outbox_error *err);
    int (*complete_behind_end)(void *state, outbox_error *err);

    /* Version 9 (optional: NULL = the relay empties its window at least
     * every 0.5 s so that a partitioned store can rebalance). */

    /* Nonzero when the handle holds partitions it should give up (another
     * relay joined) and can do so only with nothing in flight; its claims
     * and completes with batches out take free partitions and set this.
     * No I/O, like partitions_held; the relay then empties its window. */
    int (*rebalance_wanted)(void *state);
} outbox_store_ops;

/* An open store: its driver and the driver's state.  The public
 * outbox_store handle (opaque in outbox.h) is this struct; the library's
 * own users keep one on the stack with outbox__store_open. */
typedef struct outbox_store {
    const outbox_store_ops *ops;
    void *state;
} outbox_store;

/* Finds the driver for url's scheme and opens it.  OUTBOX_EBADURL for an
 * unknown scheme, OUTBOX_ENOTBUILT for a known one left out of the build. */
int outbox__store_open(outbox_store *store, const char *url, outbox_error *err);
void outbox__store_close(outbox_store *store);

extern const outbox_store_ops outbox__store_sqlite;
extern const outbox_store_ops outbox__store_postgres;   /* open NULL without LIBPQ */
extern const outbox_store_ops outbox__store_postgresql; /* the same, as postgresql:// */

/* The MariaDB/MySQL store (src/store/my_*.c): open NULL without Connector/C. */
extern const outbox_store_ops outbox__store_mysql;
extern const outbox_store_ops outbox__store_mariadb; /* the same, as mariadb:// */

/* ------------------------------------------------------------------------
 * Transports
 * ---------------------------------------------------------------------- */

typedef struct outbox_publish_result {
    int code;               /* OUTBOX_OK: confirmed durably; a retriable code:
                               retry with backoff; OUTBOX_EREJECTED: fail */
    int64_t retry_after_ms; /* > 0: the destination asked to wait this long */
    char error[256];        /* why, for last_error ("" on success) */
} outbox_publish_result;

typedef struct outbox_transport_config {
    const char *source;        /* CloudEvents source */
    outbox_publish_fn publish; /* for the callback transport */
    void *publish_user;
    const char *const *options; /* "key=value", NULL-terminated, or NULL */
} outbox_transport_config;

typedef struct outbox_transport_ops {
    int version;        /* 1; 2 adds reopen; 3 adds usage, doc and props; 4 adds
                           publish_begin, publish_end and interrupt; 5 adds
                           publish_room */
    const char *scheme; /* "file", "stdout", "discard", "callback" */

    /* Checks url and opens the destination.  Configuration problems are
     * reported here (start-up), not at publish time. */
    int (*open)(void **state, const char *url, const outbox_transport_config *cfg,
                outbox_error *err);
    /* Publishes msgs[0..n) in order and fills results[i] for each.  Returns
     * OUTBOX_OK when results were filled, or a negative code when the whole
     * batch failed: nothing of it was confirmed, results are ignored except
     * results[0].error, which may say why (the caller empties it first).
     * A message gets OUTBOX_OK only once durably confirmed; OUTBOX_EREJECTED
     * only when the destination refused that message for good (too large,
     * invalid); a retriable code otherwise.  The relay treats a batch that
     * failed as a whole, or whose every message failed with a retriable
     * code, as the destination's own outage (no attempt charged). */
    int (*publish)(void *state, outbox_msg *const *msgs, size_t n, outbox_publish_result *results);
    void (*close)(void *state);

    /* Version 2. */

    /* Reopens the destination's output files (log rotation: the path now
     * names a new file), called by the relay between batches after
     * outbox_relay_reopen.  On failure the old files stay in use and err
     * says why.  NULL: not supported (the destination has no files to
     * reopen). */
    int (*reopen)(void *state, outbox_error *err);

    /* Version 3: what help and docs show (outbox_driver_get), and the
     * settings its open reads with outbox__props_parse.  The tables of
     * drivers whose library this build leaves out exist too, with the
     * function entries NULL: open == NULL means "not built". */
    const char *usage;        /* "file:PATH" */
    const char *doc;          /* what it is and what confirms a message */
    const outbox_prop *props; /* NULL: it takes no settings (any is refused) */

    /* Version 4. */

    /* Pipelining: publish split in two, so the relay can work while a
     * batch's confirmations are outstanding.  Both or neither; NULL: not
     * supported (the relay publishes batch by batch).  nats:// and
     * kafka:// have them.
     *
     * publish_begin starts sending msgs[0..n) and returns without waiting;
     * it keeps msgs and results (borrowed) until publish_end is called with
     * the same arrays.  Batches end in the order they began, and at most
     * OUTBOX_PIPELINE_DEPTH are open (more when publish_room says so).  The destination keeps each
     * aggregate's messages in order across the open batches, and does not
     * send a message whose aggregate had an earlier one it could not send
     * (its result says why): nats:// sends a message only once the previous
     * one of its aggregate is confirmed (at most one unconfirmed per
     * aggregate); kafka:// relies on the idempotent producer's per-partition
     * order (the key is the aggregate).  publish_begin returns OUTBOX_OK
     * (the batch is open: call publish_end), or a negative code when it
     * sent nothing (not open; every message is retried).  publish_end waits
     * for the batch's confirmations and fills results as publish does; it
     * returns OUTBOX_OK, or a negative code for the whole batch. */
    int (*publish_begin)(void *state, outbox_msg *const *msgs, size_t n,
                         outbox_publish_result *results);
    int (*publish_end)(void *state, outbox_msg *const *msgs, size_t n,
                       outbox_publish_result *results);

    /* Cuts a publish short; NULL: not supported (a publish runs to its own
     * timeouts).  Called by outbox_relay_stop, possibly from a signal
     * handler while publish runs in another thread: async-signal-safe
     * (sets a flag, writes a pipe).  The publish in progress then returns
     * soon, its unfinished messages with OUTBOX_ESTOPPED, which a stopping
     * relay leaves unchanged (pending, no attempt counted).  http(s): and
     * stdout: have one. */
    void (*interrupt)(void *state);

    /* Version 5 (optional: NULL = at most OUTBOX_PIPELINE_DEPTH open). */

    /* The publish window: may one more batch of up to next messages be
     * begun, with open batches open now (publish_begin'ed, not ended)?
     * Nonzero: yes; then at most OUTBOX_PIPELINE_MAX_DEPTH are open.
     * kafka:// bounds its unconfirmed messages and bytes this way, amqp://
     * its max_unconfirmed, redis:// its window_messages. */
    int (*publish_room)(void *state, int open, size_t next);
} outbox_transport_ops;

/* A pipelining destination's publish: publish_begin, then publish_end on
 * the same arrays (n == 0: OUTBOX_OK, nothing sent). */
int outbox__publish_whole(const outbox_transport_ops *ops, void *state, outbox_msg *const *msgs,
                          size_t n, outbox_publish_result *results);

/* Batches a pipelining transport may have open at once (without
 * publish_room). */
#define OUTBOX_PIPELINE_DEPTH 2
/* With publish_room: the most the relay ever has open. */
#define OUTBOX_PIPELINE_MAX_DEPTH 64

/* Helpers for destinations (src/transport/transport.c). */

/* Sets r's code and error (fmt NULL: "") and clears retry_after_ms. */
void outbox__result_set(outbox_publish_result *r, int code, const char *fmt, ...)
    OUTBOX__PRINTF(3, 4);

/* Per-aggregate chains across a pipelining destination's open batches:
 * prev[i] is the index of the previous message of msgs[i]'s aggregate in
 * the same batch (>= 0), OUTBOX_PREV_OLDER(j) for message j of the open
 * batch before, OUTBOX_PREV_NONE, or OUTBOX_PREV_FAILED once that batch
 * ended without it confirmed. */
#define OUTBOX_PREV_NONE (-1L)
#define OUTBOX_PREV_FAILED (-2L)
#define OUTBOX_PREV_OLDER(j) (-3L - (long)(j))
#define OUTBOX_PREV_OLDER_INDEX(p) ((size_t)(-3L - (p)))

/* Fills prev[0..n) for msgs, ids (message id -> index; an id given twice
 * keeps its first index) and aggs (aggregate id -> index of its last
 * message), both emptied first; older_aggs: the open batch before's aggs,
 * or NULL.  OUTBOX_OK or OUTBOX_ENOMEM. */
int outbox__chain_prepare(outbox_aggindex *ids, outbox_aggindex *aggs,
                          const outbox_aggindex *older_aggs, outbox_msg *const *msgs, size_t n,
                          long *prev);

/* The batch before ended with older_results: prev[0..n) no longer points
 * into it (OUTBOX_PREV_NONE where that message was confirmed, else
 * OUTBOX_PREV_FAILED). */
void outbox__chain_release(long *prev, size_t n, const outbox_publish_result *older_results);

/* An open destination: its driver and the driver's state. */
typedef struct outbox_transport {
    const outbox_transport_ops *ops;
    void *state;
} outbox_transport;

/* Finds the driver for url's scheme ("stdout:", "file:PATH", "discard:") and
 * opens it; url NULL with cfg->publish set opens the callback transport. */
int outbox__transport_open(outbox_transport *t, const char *url, const outbox_transport_config *cfg,
                           outbox_error *err);
void outbox__transport_close(outbox_transport *t);

extern const outbox_transport_ops outbox__transport_stdout;
extern const outbox_transport_ops outbox__transport_file;
extern const outbox_transport_ops outbox__transport_discard;
extern const outbox_transport_ops outbox__transport_callback;
extern const outbox_transport_ops outbox__transport_http;  /* open NULL without CURL */
extern const outbox_transport_ops outbox__transport_https; /* open NULL without CURL */
extern const outbox_transport_ops outbox__transport_nats;  /* open NULL without NATS */
extern const outbox_transport_ops outbox__transport_kafka; /* open NULL without RDKAFKA */
/* Redis Streams */
extern const outbox_transport_ops outbox__transport_redis;  /* open NULL without HIREDIS */
extern const outbox_transport_ops outbox__transport_rediss; /* open NULL: no TLS in hiredis 0.14 */

/* RabbitMQ (src/transport/amqp.c). */
extern const outbox_transport_ops outbox__transport_amqp;  /* open NULL without RABBITMQ */
extern const outbox_transport_ops outbox__transport_amqps; /* open NULL without RABBITMQ */

/* ------------------------------------------------------------------------
 * Relay internals the monitor reads (src/relay/relay.c, src/monitor)
 * ---------------------------------------------------------------------- */

/* The store URL the relay was created with, secrets included (for the
 * monitor's own store handle; never shown).  Valid until the relay is
 * freed. */
const char *outbox__relay_store_url(const outbox_relay *relay);

/* ------------------------------------------------------------------------
 * Webhook receiver (src/consumer/receiver.c, with OUTBOX_HAVE_MHD): the
 * handling of one complete request, without the socket, for the MHD
 * callback and for tests/fuzz/fuzz_receiver.c.
 * ---------------------------------------------------------------------- */

typedef struct outbox_receiver_header {
    const char *name; /* as received; matched case-insensitively */
    const char *value;
} outbox_receiver_header;

typedef struct outbox_receiver_request {
    const char *method;
    const outbox_receiver_header *headers; /* header_count entries (borrowed) */
    size_t header_count;
    const char *body; /* body_len bytes, followed by a NUL (borrowed) */
    size_t body_len;
} outbox_receiver_request;

/* Verifies rq (signature, timestamp), rebuilds the message, applies it
 * through the inbox and the handler (outbox_webhook_receiver_new), and
 * returns the HTTP status to answer, with why (why_len bytes) saying why
 * when it is not 2xx: 4xx for a request that cannot be right, 5xx (503
 * when out of memory) when the receiver failed and the sender should
 * retry.  Counts applied and duplicate messages; the caller counts the
 * rest.  Runs on the receiver's one serving thread (its database
 * connection is not shared). */
unsigned outbox__receiver_handle(outbox_webhook_receiver *r, const outbox_receiver_request *rq,
                                 char *why, size_t why_len);

#endif /* OUTBOX_INTERNAL_H */
