/*
 * msg.c - the message model: creation, validation (guarantee 7: bad input
 * is refused before anything is written), headers, getters, and the
 * rebuilding of messages from stored rows.
 *
 * Validation gives each kind of problem its own code and a message that
 * names the field.  Payloads are parsed with jansson only to check them:
 * the text is stored verbatim.  Headers are kept as arrays in insertion
 * order plus a compact JSON rendering (headers_json) regenerated after each
 * change.  The header arrays and their strings are one allocation.
 *
 * outbox__msg_from_row is on the relay's hot path (once per claimed row):
 * it makes the message and all its strings in a single allocation and does
 * not call jansson for the common empty headers "{}".
 */
#include "internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Status names
 * ---------------------------------------------------------------------- */

/* Static name of a status ("pending", "sent", "failed"; "unknown"). */
const char *outbox_msg_status_name(int status)
{
    switch (status) {
    case OUTBOX_STATUS_PENDING:
        return "pending";
    case OUTBOX_STATUS_SENT:
        return "sent";
    case OUTBOX_STATUS_FAILED:
        return "failed";
    default:
        return "unknown";
    }
}

/* OUTBOX_STATUS_* for a name, -1 when unknown or NULL. */
int outbox_msg_status_parse(const char *name)
{
    if (!name) return -1;
    if (strcmp(name, "pending") == 0) return OUTBOX_STATUS_PENDING;
    if (strcmp(name, "sent") == 0) return OUTBOX_STATUS_SENT;
    if (strcmp(name, "failed") == 0) return OUTBOX_STATUS_FAILED;
    return -1;
}

/* The drivers' names for the two above. */
const char *outbox__status_name(int status)
{
    return outbox_msg_status_name(status);
}

int outbox__status_parse(const char *name)
{
    return outbox_msg_status_parse(name);
}

/* ------------------------------------------------------------------------
 * Text checks
 * ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at p (a byte >= 0x80), or 0
 * when it is malformed (overlong, surrogate, beyond U+10FFFF, truncated). */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c >= 0xc2 && c <= 0xdf) return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && p[1] < 0xa0) return 0; /* overlong */
        if (c == 0xed && p[1] > 0x9f) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80) return 0;
        if (c == 0xf0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xf4 && p[1] > 0x8f) return 0; /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

enum { TEXT_OK = 0, TEXT_CONTROL = 1, TEXT_UTF8 = 2 };

/* Scans s for control characters (< 0x20, 0x7f) and invalid UTF-8; on a
 * problem returns its kind and sets *at to the byte offset and *byte. */
static int scan_text(const char *s, size_t *at, unsigned *byte)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (p[i]) {
        unsigned char c = p[i];
        if (c < 0x20 || c == 0x7f) {
            *at = i;
            *byte = c;
            return TEXT_CONTROL;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        {
            size_t n = utf8_seq(p + i);
            if (n == 0) {
                *at = i;
                *byte = c;
                return TEXT_UTF8;
            }
            i += n;
        }
    }
    return TEXT_OK;
}

/* Copies s into out for use inside an error message: printable ASCII kept,
 * anything else shown as '?', cut at 48 bytes with "...". */
static void quote_for_message(const char *s, char out[64])
{
    size_t i, o = 0;
    for (i = 0; s[i] && o < 48; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (s[i]) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* Checks a required (or, with allow_empty, optional) short text field:
 * non-empty, <= OUTBOX_LIMIT_FIELD_BYTES, valid UTF-8, no control chars.
 * Fails with `code` and a message naming `field`. */
static int check_field(const char *s, const char *field, int allow_empty, int code,
                       outbox_error *err)
{
    size_t len, limit = outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 0), at;
    unsigned byte;
    int kind;
    if (!s || !*s) {
        if (allow_empty) return OUTBOX_OK;
        return outbox__error(err, code, "%s is %s: give a non-empty value", field,
                             s ? "empty" : "missing (NULL)");
    }
    len = strlen(s);
    if (!allow_empty && strspn(s, " \t") == len)
        return outbox__error(err, code, "%s is blank: give a value that is not only spaces", field);
    if (len > limit)
        return outbox__error(err, code,
                             "%s is %zu bytes, limit %zu (outbox_limit OUTBOX_LIMIT_FIELD_BYTES)",
                             field, len, limit);
    kind = scan_text(s, &at, &byte);
    if (kind == TEXT_CONTROL)
        return outbox__error(err, code, "%s contains control character 0x%02x at byte %zu", field,
                             byte, at);
    if (kind == TEXT_UTF8)
        return outbox__error(err, code, "%s is not valid UTF-8 (byte 0x%02x at byte %zu)", field,
                             byte, at);
    return OUTBOX_OK;
}

/* json_loads, telling a failed allocation from malformed text: jansson
 * flags some of its allocation failures (json_error_out_of_memory), returns
 * from others without recording an error, and reports others as a syntax
 * error at the place it ran out.  Text that fails again at the same place
 * with the same message is malformed; anything else (no error recorded, a
 * second parse that succeeds or fails elsewhere) was memory: *oom = 1.
 * Calling a valid payload or stored row malformed because of a failed
 * allocation would refuse it, or quarantine the row, for good. */
static json_t *load_json(const char *text, size_t flags, json_error_t *jerr, int *oom)
{
    json_error_t again;
    json_t *doc = json_loads(text, flags, jerr);
    *oom = 0;
    if (doc != NULL) return doc;
    if (json_error_code(jerr) == json_error_out_of_memory || jerr->text[0] == '\0') {
        *oom = 1;
        return NULL;
    }
    doc = json_loads(text, flags, &again);
    if (doc == NULL && (again.position != jerr->position || strcmp(again.text, jerr->text) != 0))
        *oom = 1;
    return doc;
}

/* Checks a payload: size first (before parsing), then JSON syntax. */
static int check_payload(const char *payload, outbox_error *err)
{
    size_t len = strlen(payload), limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
    json_error_t jerr;
    json_t *doc;
    int oom;
    if (len > limit)
        return outbox__error(err, OUTBOX_ETOOBIG,
                             "payload is %zu bytes, limit %zu (outbox_limit "
                             "OUTBOX_LIMIT_MESSAGE_BYTES)",
                             len, limit);
    /* Integers become reals so that large numbers (valid JSON) are not
     * refused for not fitting json_int_t; the text is kept verbatim. */
    doc = load_json(payload, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL,
                    &jerr, &oom);
    if (!doc && oom)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory checking the payload's JSON");
    if (!doc)
        return outbox__error(err, OUTBOX_EBADPAYLOAD,
                             "payload is not valid JSON: %s (line %d, column %d)", jerr.text,
                             jerr.line, jerr.column);
    json_decref(doc);
    return OUTBOX_OK;
}

static int ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return *a == *b;
}

/* W3C tracestate, checked loosely: printable ASCII, <= 512 bytes, at most
 * 32 comma-separated key=value members (empty members allowed), keys of
 * [a-z0-9_*-/@] starting with a letter or digit, values without ',' '='.
 * Returns NULL when valid, else why. */
static const char *tracestate_problem(const char *v)
{
    size_t len = strlen(v), i;
    int members = 0;
    const char *p = v;
    if (len > 512) return "is longer than 512 bytes";
    for (i = 0; i < len; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            if (v[i] != '\t') return "contains a character outside printable ASCII";
    while (*p) {
        const char *end = strchr(p, ','), *eq, *k, *ke, *ve;
        if (!end) end = p + strlen(p);
        k = p;
        ke = end;
        while (k < ke && (*k == ' ' || *k == '\t'))
            k++;
        while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        if (k < ke) {
            const char *q;
            if (++members > 32) return "has more than 32 members";
            eq = memchr(k, '=', (size_t)(ke - k));
            if (!eq || eq == k || eq + 1 == ke) return "has a member that is not key=value";
            if (!((*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9')))
                return "has a key not starting with a lower-case letter or digit";
            if (eq - k > 256) return "has a key longer than 256 bytes";
            for (q = k; q < eq; q++)
                if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '_' ||
                      *q == '-' || *q == '*' || *q == '/' || *q == '@'))
                    return "has a key with a character outside [a-z0-9_*-/@]";
            ve = ke;
            if (ve - (eq + 1) > 256) return "has a value longer than 256 bytes";
            for (q = eq + 1; q < ve; q++)
                if (*q == '=' || *q == '\t') return "has a value containing '=' or a tab";
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

/* Checks one header (name, value); EBADHEADERS for empty/too long names or
 * invalid UTF-8, EBADHEADERCHAR for control characters, EBADTRACEPARENT for
 * a malformed traceparent or tracestate. */
static int check_header(const char *name, const char *value, outbox_error *err)
{
    size_t len, limit = outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 0), at;
    unsigned byte;
    int kind;
    char q[64];
    const char *why;
    if (!name || !*name)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "header name is empty: give a non-empty name");
    quote_for_message(name, q);
    if (!value)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "header \"%s\" has no value (NULL): give a string", q);
    len = strlen(name);
    if (len > limit)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "header name \"%s\" is %zu bytes, limit %zu (outbox_limit "
                             "OUTBOX_LIMIT_FIELD_BYTES)",
                             q, len, limit);
    kind = scan_text(name, &at, &byte);
    if (kind == TEXT_CONTROL)
        return outbox__error(err, OUTBOX_EBADHEADERCHAR,
                             "header name \"%s\" contains control character 0x%02x at byte %zu", q,
                             byte, at);
    if (kind == TEXT_UTF8)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "header name \"%s\" is not valid UTF-8 (byte 0x%02x at byte %zu)", q,
                             byte, at);
    kind = scan_text(value, &at, &byte);
    if (kind == TEXT_CONTROL)
        return outbox__error(err, OUTBOX_EBADHEADERCHAR,
                             "header \"%s\" value contains control character 0x%02x at byte %zu", q,
                             byte, at);
    if (kind == TEXT_UTF8)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "header \"%s\" value is not valid UTF-8 (byte 0x%02x at byte %zu)", q,
                             byte, at);
    if (ieq(name, "traceparent") && !outbox_traceparent_valid(value))
        return outbox__error(err, OUTBOX_EBADTRACEPARENT,
                             "header \"%s\" is not W3C trace-context: expected "
                             "00-<32 lower-case hex trace id>-<16 hex parent id>-<2 hex flags>, "
                             "ids not all zero",
                             q);
    if (ieq(name, "tracestate") && (why = tracestate_problem(value)) != NULL)
        return outbox__error(err, OUTBOX_EBADTRACEPARENT,
                             "header \"%s\" (W3C tracestate) %s: expected up to 32 "
                             "comma-separated key=value members",
                             q, why);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Memory
 * ---------------------------------------------------------------------- */

/* Frees p unless it lies inside the message's single block. */
static void free_owned(outbox_msg *m, void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (!p) return;
    if (m->block_end && a >= (uintptr_t)m && a < (uintptr_t)m->block_end) return;
    outbox__free(p);
}

static char *dup_text(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = outbox__malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Releases a message and everything it owns; NULL is harmless. */
void outbox_msg_free(outbox_msg *msg)
{
    if (!msg) return;
    free_owned(msg, msg->type);
    free_owned(msg, msg->aggregate_type);
    free_owned(msg, msg->aggregate_id);
    free_owned(msg, msg->payload);
    free_owned(msg, msg->headers_json);
    free_owned(msg, msg->header_names);
    outbox__free(msg->last_error);
    outbox__free(msg);
}

/* ------------------------------------------------------------------------
 * Size
 * ---------------------------------------------------------------------- */

static size_t slen(const char *s)
{
    return s ? strlen(s) : 0;
}

/* Bytes counted against OUTBOX_LIMIT_MESSAGE_BYTES: the text fields, the
 * headers' JSON and 36 for the id. */
size_t outbox__msg_size(const outbox_msg *msg)
{
    return slen(msg->type) + slen(msg->aggregate_type) + slen(msg->aggregate_id) +
           slen(msg->payload) + slen(msg->headers_json) + 36;
}

static int size_error(size_t size, size_t limit, outbox_error *err)
{
    return outbox__error(err, OUTBOX_ETOOBIG,
                         "message is %zu bytes, limit %zu (outbox_limit "
                         "OUTBOX_LIMIT_MESSAGE_BYTES): make the payload or headers smaller "
                         "or raise the limit",
                         size, limit);
}

/* OUTBOX_ETOOBIG when msg is over the size limit. */
int outbox__msg_check_size(const outbox_msg *msg, outbox_error *err)
{
    size_t size = outbox__msg_size(msg), limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
    if (size > limit) return size_error(size, limit, err);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Headers
 * ---------------------------------------------------------------------- */

/* A set of headers being built: arrays and strings in one allocation. */
typedef struct header_set {
    size_t count;
    char **names; /* the allocation; NULL when count == 0 */
    char **values;
    char *json; /* compact JSON object, own allocation */
} header_set;

/* Builds a header_set from borrowed name/value arrays (not validated here).
 * OUTBOX_ENOMEM on allocation failure. */
static int header_set_build(header_set *hs, size_t n, const char *const *names,
                            const char *const *values, outbox_error *err)
{
    outbox_buf b;
    size_t i, total = 2 * n * sizeof(char *);
    char *p;
    memset(hs, 0, sizeof *hs);
    outbox__buf_init(&b);
    outbox__buf_append(&b, "{", 1);
    for (i = 0; i < n; i++) {
        if (i) outbox__buf_append(&b, ",", 1);
        outbox__buf_json_string(&b, names[i]);
        outbox__buf_append(&b, ":", 1);
        outbox__buf_json_string(&b, values[i]);
        total += strlen(names[i]) + strlen(values[i]) + 2;
    }
    outbox__buf_append(&b, "}", 1);
    if (b.oom) goto nomem;
    if (n > 0) {
        hs->names = outbox__malloc(total);
        if (!hs->names) goto nomem;
        hs->values = hs->names + n;
        p = (char *)(hs->values + n);
        for (i = 0; i < n; i++) {
            size_t ln = strlen(names[i]) + 1, lv = strlen(values[i]) + 1;
            memcpy(p, names[i], ln);
            hs->names[i] = p;
            p += ln;
            memcpy(p, values[i], lv);
            hs->values[i] = p;
            p += lv;
        }
    }
    hs->count = n;
    hs->json = b.data; /* ownership moves from the buffer */
    return OUTBOX_OK;
nomem:
    outbox__buf_free(&b);
    outbox__free(hs->names);
    memset(hs, 0, sizeof *hs);
    return outbox__error(err, OUTBOX_ENOMEM, "out of memory building message headers");
}

static void header_set_free(header_set *hs)
{
    outbox__free(hs->names);
    outbox__free(hs->json);
    memset(hs, 0, sizeof *hs);
}

/* Installs hs into msg after checking the size limit; on success msg owns
 * hs's memory, on failure the caller still does. */
static int header_set_install(outbox_msg *msg, header_set *hs, outbox_error *err)
{
    size_t size = outbox__msg_size(msg) - slen(msg->headers_json) + strlen(hs->json);
    size_t limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
    if (size > limit) return size_error(size, limit, err);
    free_owned(msg, msg->headers_json);
    free_owned(msg, msg->header_names);
    msg->headers_json = hs->json;
    msg->header_names = hs->names;
    msg->header_values = hs->values;
    msg->header_count = hs->count;
    memset(hs, 0, sizeof *hs);
    return OUTBOX_OK;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* Parses a headers JSON object into borrowed name/value arrays pointing
 * into *doc (freed by the caller with json_decref and outbox__free(*names)).
 * With validate, each entry is checked as by outbox_msg_set_header. */
static int headers_parse(const char *text, json_t **doc_out, size_t *n_out, const char ***names_out,
                         const char ***values_out, int validate, outbox_error *err)
{
    json_error_t jerr;
    json_t *doc, *value;
    const char *key;
    const char **names = NULL;
    size_t n, i = 0;
    int rc, oom;
    *doc_out = NULL;
    *names_out = *values_out = NULL;
    *n_out = 0;
    doc = load_json(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr, &oom);
    if (!doc && oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory parsing headers");
    if (!doc)
        return outbox__error(err, OUTBOX_EBADHEADERS,
                             "headers are not valid JSON: %s (line %d, column %d)", jerr.text,
                             jerr.line, jerr.column);
    if (!json_is_object(doc)) {
        rc = outbox__error(err, OUTBOX_EBADHEADERS,
                           "headers must be a JSON object of strings, got %s", json_type_name(doc));
        goto fail;
    }
    n = json_object_size(doc);
    if (n > 0) {
        names = outbox__malloc(2 * n * sizeof *names);
        if (!names) {
            rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory parsing headers");
            goto fail;
        }
    }
    json_object_foreach(doc, key, value)
    {
        char q[64];
        if (!json_is_string(value)) {
            quote_for_message(key, q);
            rc = outbox__error(err, OUTBOX_EBADHEADERS,
                               "header \"%s\" is %s: header values must be strings", q,
                               json_type_name(value));
            goto fail;
        }
        if (strlen(json_string_value(value)) != json_string_length(value)) {
            quote_for_message(key, q);
            rc = outbox__error(err, OUTBOX_EBADHEADERCHAR,
                               "header \"%s\" value contains control character 0x00", q);
            goto fail;
        }
        names[i] = key;
        names[n + i] = json_string_value(value);
        if (validate && (rc = check_header(key, names[n + i], err)) != OUTBOX_OK) goto fail;
        i++;
    }
    *doc_out = doc;
    *n_out = n;
    *names_out = names;
    *values_out = names ? names + n : NULL;
    return OUTBOX_OK;
fail:
    outbox__free(names);
    json_decref(doc);
    return rc;
}

/* Validates and replaces all headers (NULL or "" clears them); on failure
 * the previous headers stay. */
int outbox_msg_set_headers_json(outbox_msg *msg, const char *headers_json, outbox_error *err)
{
    json_t *doc = NULL;
    const char **names = NULL, **values = NULL;
    size_t n = 0;
    header_set hs = {0, NULL, NULL, NULL};
    int rc;
    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "outbox_msg_set_headers_json: msg is NULL");
    if (headers_json && *headers_json) {
        size_t len = strlen(headers_json), limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
        if (len > limit)
            return outbox__error(err, OUTBOX_ETOOBIG,
                                 "headers are %zu bytes, limit %zu (outbox_limit "
                                 "OUTBOX_LIMIT_MESSAGE_BYTES)",
                                 len, limit);
        rc = headers_parse(headers_json, &doc, &n, &names, &values, 1, err);
        if (rc != OUTBOX_OK) return rc;
    }
    rc = header_set_build(&hs, n, names, values, err);
    if (rc == OUTBOX_OK) rc = header_set_install(msg, &hs, err);
    header_set_free(&hs);
    outbox__free(names);
    json_decref(doc);
    return rc;
}

/* Adds a header, or replaces the value of an existing one in place. */
int outbox_msg_set_header(outbox_msg *msg, const char *name, const char *value, outbox_error *err)
{
    const char **arr = NULL;
    size_t n, i, at;
    header_set hs = {0, NULL, NULL, NULL};
    int rc;
    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "outbox_msg_set_header: msg is NULL");
    rc = check_header(name, value, err);
    if (rc != OUTBOX_OK) return rc;
    n = msg->header_count;
    for (at = 0; at < n; at++)
        if (strcmp(msg->header_names[at], name) == 0) break;
    if (at == n) n++;
    arr = outbox__malloc(2 * n * sizeof *arr);
    if (!arr) return outbox__error(err, OUTBOX_ENOMEM, "out of memory setting a header");
    for (i = 0; i < msg->header_count; i++) {
        arr[i] = msg->header_names[i];
        arr[n + i] = msg->header_values[i];
    }
    arr[at] = name;
    arr[n + at] = value;
    rc = header_set_build(&hs, n, arr, arr + n, err);
    if (rc == OUTBOX_OK) rc = header_set_install(msg, &hs, err);
    header_set_free(&hs);
    outbox__free(arr);
    return rc;
}

/* ------------------------------------------------------------------------
 * Creation
 * ---------------------------------------------------------------------- */

/* Validates every field and creates a message with a new UUIDv7 id and
 * occurred_at = now.  On failure *out is NULL and nothing is allocated. */
int outbox_msg_new(outbox_msg **out, const char *type, const char *aggregate_type,
                   const char *aggregate_id, const char *payload_json, outbox_error *err)
{
    outbox_msg *m = NULL;
    int rc;
    if (!out) return outbox__error(err, OUTBOX_EINVAL, "outbox_msg_new: out is NULL");
    *out = NULL;
    if (!payload_json) payload_json = "{}";
    if (!aggregate_type) aggregate_type = "";
    if ((rc = check_field(type, "type", 0, OUTBOX_EBADTYPE, err)) != OUTBOX_OK) return rc;
    if ((rc = check_field(aggregate_type, "aggregate_type", 1, OUTBOX_EBADAGGREGATE, err)) !=
        OUTBOX_OK)
        return rc;
    if ((rc = check_field(aggregate_id, "aggregate_id", 0, OUTBOX_EBADAGGREGATE, err)) != OUTBOX_OK)
        return rc;
    if ((rc = check_payload(payload_json, err)) != OUTBOX_OK) return rc;

    m = outbox__calloc(1, sizeof *m);
    if (!m) goto nomem;
    m->status = OUTBOX_STATUS_PENDING;
    m->type = dup_text(type);
    m->aggregate_type = dup_text(aggregate_type);
    m->aggregate_id = dup_text(aggregate_id);
    m->payload = dup_text(payload_json);
    m->headers_json = dup_text("{}");
    if (!m->type || !m->aggregate_type || !m->aggregate_id || !m->payload || !m->headers_json)
        goto nomem;
    outbox_uuid_v7(m->id);
    m->occurred_at = outbox__now_us();
    m->available_at = m->occurred_at;
    if ((rc = outbox__msg_check_size(m, err)) != OUTBOX_OK) goto fail;
    *out = m;
    return OUTBOX_OK;
nomem:
    rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating a message");
fail:
    outbox_msg_free(m);
    return rc;
}

/* Replaces the id with a canonical UUID (stored lower-case). */
int outbox_msg_set_id(outbox_msg *msg, const char *uuid, outbox_error *err)
{
    int i;
    char q[64];
    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "outbox_msg_set_id: msg is NULL");
    if (uuid && outbox_uuid_valid(uuid) && outbox__uuid_is_nil(uuid))
        return outbox__error(err, OUTBOX_EBADID,
                             "id is the nil UUID (all zeros), which cannot tell messages apart: "
                             "give a real UUID or let the library make one");
    if (!outbox_uuid_valid(uuid)) {
        if (!uuid) return outbox__error(err, OUTBOX_EBADID, "id is missing (NULL)");
        quote_for_message(uuid, q);
        return outbox__error(err, OUTBOX_EBADID,
                             "id \"%s\" is not a canonical UUID: expected 8-4-4-4-12 hex "
                             "digits, e.g. 0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
                             q);
    }
    for (i = 0; i < 36; i++) {
        char c = uuid[i];
        msg->id[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    msg->id[36] = '\0';
    return OUTBOX_OK;
}

/* Sets occurred_at (unix microseconds, UTC, years 1970..9999). */
int outbox_msg_set_occurred_at(outbox_msg *msg, int64_t unix_us, outbox_error *err)
{
    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "outbox_msg_set_occurred_at: msg is NULL");
    if (unix_us < 0 || unix_us > INT64_C(253402300799999999))
        return outbox__error(err, OUTBOX_EINVAL,
                             "occurred_at %lld is out of range: give microseconds since the "
                             "Unix epoch, up to the year 9999",
                             (long long)unix_us);
    msg->occurred_at = unix_us;
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Rows
 * ---------------------------------------------------------------------- */

/* Prefixes err's message with "stored message seq N: " (the row has no
 * trustworthy id to name it by). */
static void stored_prefix(int64_t seq, outbox_error *err)
{
    char text[sizeof err->message];
    if (!err) return;
    snprintf(text, sizeof text, "%s", err->message);
    snprintf(err->message, sizeof err->message, "stored message seq %lld: %.460s", (long long)seq,
             text);
}

/* Checks a stored row as enqueue checks a new message (what the tables of
 * older schema versions, or a writer that bypassed the library, let in):
 * a canonical non-nil UUID, type and aggregate fields, occurred_at in range,
 * the payload's size (its JSON syntax is the table's CHECK), the whole
 * message's size.  Headers are checked while they are parsed. */
static int check_stored(int64_t seq, const char *id, int64_t occurred_at, const char *type,
                        const char *aggregate_type, const char *aggregate_id, const char *payload,
                        const char *headers_json, outbox_error *err)
{
    size_t size, limit = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
    int rc;
    if (!outbox_uuid_valid(id) || outbox__uuid_is_nil(id)) {
        char q[64];
        quote_for_message(id ? id : "(null)", q);
        rc = outbox__error(err, OUTBOX_EBADID,
                           "id \"%s\" is not a canonical UUID (8-4-4-4-12 hex digits, not nil)", q);
        goto fail;
    }
    if ((rc = check_field(type, "type", 0, OUTBOX_EBADTYPE, err)) != OUTBOX_OK) goto fail;
    if ((rc = check_field(aggregate_type, "aggregate_type", 1, OUTBOX_EBADAGGREGATE, err)) !=
        OUTBOX_OK)
        goto fail;
    if ((rc = check_field(aggregate_id, "aggregate_id", 0, OUTBOX_EBADAGGREGATE, err)) != OUTBOX_OK)
        goto fail;
    if (occurred_at < 0 || occurred_at > INT64_C(253402300799999999)) {
        rc =
            outbox__error(err, OUTBOX_EINVAL, "occurred_at %lld us is outside the years 1970..9999",
                          (long long)occurred_at);
        goto fail;
    }
    if (!payload || !*payload) {
        rc = outbox__error(err, OUTBOX_EBADPAYLOAD, "payload is empty");
        goto fail;
    }
    size = strlen(payload) + strlen(type) + strlen(aggregate_id) +
           (aggregate_type ? strlen(aggregate_type) : 0) +
           (headers_json ? strlen(headers_json) : 0);
    if (size > limit) {
        rc = outbox__error(err, OUTBOX_ETOOBIG, "message is %zu bytes, over the %zu-byte limit",
                           size, limit);
        goto fail;
    }
    return OUTBOX_OK;
fail:
    stored_prefix(seq, err);
    return rc;
}

/* Rebuilds a stored message in one allocation (see the top comment).  The
 * payload is not re-validated; headers other than "{}" are parsed (and must
 * be an object of strings) and rendered compactly.  Strict (the
 * relay's claim): the row is checked as enqueue checks a message and a
 * problem is an EBAD* code whose message names the seq and the field.
 * Lenient (list, show, drop): only memory can fail; what cannot be parsed
 * is kept as stored (headers_json verbatim with no header arrays, the id
 * cut at 36 bytes). */
static int msg_from_row(outbox_msg **out, int64_t seq, const char *id, int64_t occurred_at,
                        const char *type, const char *aggregate_type, const char *aggregate_id,
                        const char *payload, const char *headers_json, int lenient,
                        outbox_error *err)
{
    json_t *doc = NULL;
    const char **names = NULL, **values = NULL;
    size_t n = 0, i, lt, la, li, lp, lh, total;
    outbox_buf hb;
    const char *hjson = "{}";
    outbox_msg *m;
    char *p;
    int rc, lower;

    outbox__buf_init(&hb);
    if (!out) return outbox__error(err, OUTBOX_EINVAL, "outbox__msg_from_row: out is NULL");
    *out = NULL;
    if (!lenient) {
        rc = check_stored(seq, id, occurred_at, type, aggregate_type, aggregate_id, payload,
                          headers_json, err);
        if (rc != OUTBOX_OK) return rc;
    }
    if (!id) id = "";
    if (!type) type = "";
    if (!aggregate_id) aggregate_id = "";
    if (!aggregate_type) aggregate_type = "";
    if (!payload) payload = "{}";
    if (headers_json && *headers_json && strcmp(headers_json, "{}") != 0) {
        outbox_error ignored;
        rc = headers_parse(headers_json, &doc, &n, &names, &values, !lenient,
                           lenient ? &ignored : err);
        if (rc == OUTBOX_ENOMEM) goto nomem;
        if (rc != OUTBOX_OK && !lenient) goto out_prefixed;
        if (rc != OUTBOX_OK) {
            /* Kept as stored, with no header arrays: for showing only. */
            n = 0;
            names = values = NULL;
            doc = NULL;
            hjson = headers_json;
            goto build;
        }
        outbox__buf_append(&hb, "{", 1);
        for (i = 0; i < n; i++) {
            if (i) outbox__buf_append(&hb, ",", 1);
            outbox__buf_json_string(&hb, names[i]);
            outbox__buf_append(&hb, ":", 1);
            outbox__buf_json_string(&hb, values[i]);
        }
        outbox__buf_append(&hb, "}", 1);
        if (hb.oom) goto nomem;
        hjson = hb.data;
    }

build:
    lt = strlen(type) + 1;
    la = strlen(aggregate_type) + 1;
    li = strlen(aggregate_id) + 1;
    lp = strlen(payload) + 1;
    lh = strlen(hjson) + 1;
    total = sizeof *m + 2 * n * sizeof(char *) + lt + la + li + lp + lh;
    for (i = 0; i < n; i++)
        total += strlen(names[i]) + strlen(values[i]) + 2;
    m = outbox__malloc(total);
    if (!m) goto nomem;
    memset(m, 0, sizeof *m);
    m->block_end = (char *)m + total;
    p = (char *)(m + 1);
    if (n > 0) {
        m->header_names = (char **)(void *)p;
        m->header_values = m->header_names + n;
        p += 2 * n * sizeof(char *);
    }
#define PUT(field, src, len)                                                                       \
    do {                                                                                           \
        memcpy(p, src, len);                                                                       \
        m->field = p;                                                                              \
        p += len;                                                                                  \
    } while (0)
    PUT(type, type, lt);
    PUT(aggregate_type, aggregate_type, la);
    PUT(aggregate_id, aggregate_id, li);
    PUT(payload, payload, lp);
    PUT(headers_json, hjson, lh);
#undef PUT
    for (i = 0; i < n; i++) {
        size_t ln = strlen(names[i]) + 1, lv = strlen(values[i]) + 1;
        memcpy(p, names[i], ln);
        m->header_names[i] = p;
        p += ln;
        memcpy(p, values[i], lv);
        m->header_values[i] = p;
        p += lv;
    }
    m->header_count = n;
    /* A canonical id is stored lower-case; anything else is shown as stored. */
    lower = outbox_uuid_valid(id);
    for (i = 0; i < 36 && id[i]; i++)
        m->id[i] = (lower && id[i] >= 'A' && id[i] <= 'F') ? (char)(id[i] - 'A' + 'a') : id[i];
    m->id[i] = '\0';
    m->seq = seq;
    m->occurred_at = occurred_at;
    m->status = OUTBOX_STATUS_PENDING;
    *out = m;
    rc = OUTBOX_OK;
    goto out;
nomem:
    rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a stored message");
    goto out;
out_prefixed:
    stored_prefix(seq, err);
out:
    outbox__buf_free(&hb);
    outbox__free(names);
    json_decref(doc);
    return rc;
}

int outbox__msg_from_row(outbox_msg **out, int64_t seq, const char *id, int64_t occurred_at,
                         const char *type, const char *aggregate_type, const char *aggregate_id,
                         const char *payload, const char *headers_json, outbox_error *err)
{
    outbox_error first, again;
    int rc = msg_from_row(out, seq, id, occurred_at, type, aggregate_type, aggregate_id, payload,
                          headers_json, 0, &first);
    if (rc != OUTBOX_OK && rc != OUTBOX_ENOMEM) {
        /* A refused row is quarantined for good, so the refusal must be the
         * row's fault.  jansson's lexer drops a character when an
         * allocation fails, without saying so (it ignores a failed append),
         * which can look like a malformed field: a malformed row fails the
         * same way twice, a failed allocation does not. */
        int rc2 = msg_from_row(out, seq, id, occurred_at, type, aggregate_type, aggregate_id,
                               payload, headers_json, 0, &again);
        if (rc2 == OUTBOX_OK) return OUTBOX_OK;
        if (rc2 != rc || strcmp(again.message, first.message) != 0)
            return outbox__error(err, OUTBOX_ENOMEM,
                                 "out of memory decoding stored message seq %lld", (long long)seq);
    }
    if (rc != OUTBOX_OK && err != NULL) *err = first;
    return rc;
}

int outbox__msg_from_row_lenient(outbox_msg **out, int64_t seq, const char *id, int64_t occurred_at,
                                 const char *type, const char *aggregate_type,
                                 const char *aggregate_id, const char *payload,
                                 const char *headers_json, outbox_error *err)
{
    return msg_from_row(out, seq, id, occurred_at, type, aggregate_type, aggregate_id, payload,
                        headers_json, 1, err);
}

/* ------------------------------------------------------------------------
 * Getters (strings owned by the message; NULL msg gives NULL or 0)
 * ---------------------------------------------------------------------- */

/* Canonical lower-case id. */
const char *outbox_msg_id(const outbox_msg *msg)
{
    return msg ? msg->id : NULL;
}

/* Event type. */
const char *outbox_msg_type(const outbox_msg *msg)
{
    return msg ? msg->type : NULL;
}

/* Aggregate type, "" when unset. */
const char *outbox_msg_aggregate_type(const outbox_msg *msg)
{
    return msg ? msg->aggregate_type : NULL;
}

/* Aggregate id. */
const char *outbox_msg_aggregate_id(const outbox_msg *msg)
{
    return msg ? msg->aggregate_id : NULL;
}

/* Payload JSON text, verbatim. */
const char *outbox_msg_payload(const outbox_msg *msg)
{
    return msg ? msg->payload : NULL;
}

/* Compact headers JSON object, "{}" when none. */
const char *outbox_msg_headers_json(const outbox_msg *msg)
{
    return msg ? msg->headers_json : NULL;
}

/* occurred_at, unix microseconds. */
int64_t outbox_msg_occurred_at(const outbox_msg *msg)
{
    return msg ? msg->occurred_at : 0;
}

/* Store sequence number, 0 when not read from a store. */
int64_t outbox_msg_seq(const outbox_msg *msg)
{
    return msg ? msg->seq : 0;
}

/* Failed publication attempts so far. */
int outbox_msg_attempts(const outbox_msg *msg)
{
    return msg ? msg->attempts : 0;
}

/* The relay's bookkeeping, as read from a store (see outbox.h). */
int outbox_msg_status(const outbox_msg *msg)
{
    return msg ? msg->status : OUTBOX_STATUS_PENDING;
}

int64_t outbox_msg_available_at(const outbox_msg *msg)
{
    return msg ? msg->available_at : 0;
}

int64_t outbox_msg_sent_at(const outbox_msg *msg)
{
    return msg ? msg->sent_at : 0;
}

const char *outbox_msg_last_error(const outbox_msg *msg)
{
    return msg ? msg->last_error : NULL;
}

/* Number of headers. */
size_t outbox_msg_header_count(const outbox_msg *msg)
{
    return msg ? msg->header_count : 0;
}

/* i-th header name, NULL when out of range. */
const char *outbox_msg_header_name(const outbox_msg *msg, size_t i)
{
    return msg && i < msg->header_count ? msg->header_names[i] : NULL;
}

/* i-th header value, NULL when out of range. */
const char *outbox_msg_header_value(const outbox_msg *msg, size_t i)
{
    return msg && i < msg->header_count ? msg->header_values[i] : NULL;
}

/* Value of the header named exactly name, or NULL. */
const char *outbox_msg_header(const outbox_msg *msg, const char *name)
{
    size_t i;
    if (!msg || !name) return NULL;
    for (i = 0; i < msg->header_count; i++)
        if (strcmp(msg->header_names[i], name) == 0) return msg->header_values[i];
    return NULL;
}

/* A message from outbox__msg_from_row is one allocation from itself to
 * block_end: copied whole, its string pointers moved to the copy, which
 * costs a fraction of building it again (no validation, no strlen). */
outbox_msg *outbox__msg_clone(const outbox_msg *m, outbox_error *err)
{
    const char *from = (const char *)m;
    size_t size, i;
    outbox_msg *c;
    char *to;

    if (!m->block_end) {
        if (outbox__msg_from_row_lenient(&c, m->seq, m->id, m->occurred_at, m->type,
                                         m->aggregate_type, m->aggregate_id, m->payload,
                                         m->headers_json, err) != OUTBOX_OK)
            return NULL;
        c->attempts = m->attempts;
        return c;
    }
    size = (size_t)(m->block_end - from);
    c = outbox__malloc(size);
    if (!c) {
        outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
        return NULL;
    }
    memcpy(c, m, size);
    to = (char *)c;
#define MOVE(field) (c->field = to + (m->field - from))
    MOVE(type);
    MOVE(aggregate_type);
    MOVE(aggregate_id);
    MOVE(payload);
    MOVE(headers_json);
    MOVE(block_end);
    if (m->header_count > 0) {
        c->header_names = (char **)(void *)(to + ((const char *)m->header_names - from));
        c->header_values = (char **)(void *)(to + ((const char *)m->header_values - from));
        for (i = 0; i < m->header_count; i++) {
            MOVE(header_names[i]);
            MOVE(header_values[i]);
        }
    }
#undef MOVE
    c->last_error = NULL;
    return c;
}
