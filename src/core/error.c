/*
 * error.c - result codes: the list in outbox.h (OUTBOX_ERROR_MAP) gives each
 * code its short name, its description (outbox_strerror) and whether
 * retrying may help (outbox_err_retriable); outbox__error fills a caller's
 * outbox_error.
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
#define OUTBOX__ERROR_INFO(name, value, description, retriable)                                    \
    {OUTBOX_##name, #name, description, retriable},
    OUTBOX_ERROR_MAP(OUTBOX__ERROR_INFO)
#undef OUTBOX__ERROR_INFO
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
    if (vsnprintf(err->message, sizeof err->message, fmt, ap) < 0) err->message[0] = '\0';
    va_end(ap);
    return code;
}

/* Version string of the linked library. */
const char *outbox_version(void)
{
    return OUTBOX_VERSION_STRING;
}
