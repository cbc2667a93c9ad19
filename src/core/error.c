/*
 * error.c - result codes: one table gives each code its short name, its
 * description (outbox_strerror) and whether retrying may help
 * (outbox_err_retriable); outbox__error fills a caller's outbox_error.
 */
#include "internal.h"

#include <stdio.h>

typedef struct code_info {
    int code;
    const char *name;
    const char *description;
    int retriable;
} code_info;

static const code_info codes[] = {
    {OUTBOX_OK, "OK", "success", 0},
    {OUTBOX_DUPLICATE, "DUPLICATE", "message id already recorded in the inbox", 0},
    {OUTBOX_EINVAL, "EINVAL", "invalid argument", 0},
    {OUTBOX_EBADID, "EBADID", "message id is not a canonical UUID", 0},
    {OUTBOX_EBADTYPE, "EBADTYPE", "event type is empty, too long or has control characters", 0},
    {OUTBOX_EBADAGGREGATE, "EBADAGGREGATE",
     "aggregate id or type is empty, too long or has control characters", 0},
    {OUTBOX_EBADPAYLOAD, "EBADPAYLOAD", "payload is not valid JSON", 0},
    {OUTBOX_EBADHEADERS, "EBADHEADERS", "headers are not a JSON object of strings", 0},
    {OUTBOX_EBADHEADERCHAR, "EBADHEADERCHAR", "control character in a header name or value", 0},
    {OUTBOX_EBADTRACEPARENT, "EBADTRACEPARENT",
     "traceparent or tracestate header is not W3C trace-context", 0},
    {OUTBOX_ETOOBIG, "ETOOBIG", "message larger than the configured limit", 0},
    {OUTBOX_EBADURL, "EBADURL", "URL malformed or scheme unsupported", 0},
    {OUTBOX_ECONFIG, "ECONFIG", "bad option value or combination", 0},
    {OUTBOX_ENOTBUILT, "ENOTBUILT", "driver not compiled into this build", 0},
    {OUTBOX_ENOTXN, "ENOTXN", "no transaction open on the connection", 0},
    {OUTBOX_ENOSCHEMA, "ENOSCHEMA", "outbox tables missing (run `outbox init`)", 0},
    {OUTBOX_ESCHEMANEWER, "ESCHEMANEWER", "schema is newer than this library", 0},
    {OUTBOX_EEXISTS, "EEXISTS", "a message with this id already exists", 0},
    {OUTBOX_ENOTFOUND, "ENOTFOUND", "no such message", 0},
    {OUTBOX_ELEASED, "ELEASED", "another live relay holds the lease", 1},
    {OUTBOX_ELEASELOST, "ELEASELOST", "this relay's lease was taken over", 0},
    {OUTBOX_ENOMEM, "ENOMEM", "out of memory", 1},
    {OUTBOX_EBUSY, "EBUSY", "database locked or busy", 1},
    {OUTBOX_ESTORE, "ESTORE", "database error", 0},
    {OUTBOX_EIO, "EIO", "I/O error", 1},
    {OUTBOX_EPUBLISH, "EPUBLISH", "destination failed to confirm", 1},
    {OUTBOX_EREJECTED, "EREJECTED", "destination refused the message", 0},
    {OUTBOX_EFAULT, "EFAULT", "injected fault", 0},
    {OUTBOX_ESTOPPED, "ESTOPPED", "relay was asked to stop", 0},
    {OUTBOX_EINTERNAL, "EINTERNAL", "internal error (a bug: please report it)", 0},
    {OUTBOX_ENOSIGNATURE, "ENOSIGNATURE", "webhook id, timestamp or signature header missing", 0},
    {OUTBOX_EBADTIMESTAMP, "EBADTIMESTAMP", "webhook timestamp is not Unix seconds", 0},
    {OUTBOX_ESTALE, "ESTALE", "webhook timestamp outside the tolerance", 0},
    {OUTBOX_EBADSIGNATURE, "EBADSIGNATURE", "webhook signature does not match", 0},
};

static const code_info *find(int code)
{
    size_t i;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == code) return &codes[i];
    return NULL;
}

/* Static description of code; "unknown error" for codes not in the table. */
const char *outbox_strerror(int code)
{
    const code_info *c = find(code);
    return c ? c->description : "unknown error";
}

/* Non-zero for codes where a later repeat of the call may succeed. */
int outbox_err_retriable(int code)
{
    const code_info *c = find(code);
    return c ? c->retriable : 0;
}

/* Short static name of a code ("EBADPAYLOAD"), "UNKNOWN" when not known. */
const char *outbox__error_name(int code)
{
    const code_info *c = find(code);
    return c ? c->name : "UNKNOWN";
}

/* Fills err (may be NULL) with code and the formatted, truncated message;
 * returns code. */
int outbox__error(outbox_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    if (!err) return code;
    err->code = code;
    va_start(ap, fmt);
    if (vsnprintf(err->message, sizeof err->message, fmt, ap) < 0)
        err->message[0] = '\0';
    va_end(ap);
    return code;
}

/* Version string of the linked library. */
const char *outbox_version(void)
{
    return OUTBOX_VERSION_STRING;
}
