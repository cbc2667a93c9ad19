/*
 * log.c - the process-wide log callback.  The application installs it once
 * at start-up (outbox_log_set, or outbox_log_set_fields for one that also
 * takes the line's fields); library code calls outbox__log, or
 * outbox__log_msg for a line about one message, which formats into a stack
 * buffer and hands one line to the callback.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* At most one of the two is set. */
static outbox_log_fn log_fn;
static outbox_log_fields_fn log_fields_fn;
static void *log_user;
static int log_min_level = OUTBOX_LOG_INFO;

/* Installs fn (NULL turns logging off) and the lowest level passed to it. */
void outbox_log_set(outbox_log_fn fn, void *user, int min_level)
{
    log_fn = fn;
    log_fields_fn = NULL;
    log_user = user;
    log_min_level = min_level;
}

void outbox_log_set_fields(outbox_log_fields_fn fn, void *user, int min_level)
{
    log_fn = NULL;
    log_fields_fn = fn;
    log_user = user;
    log_min_level = min_level;
}

/* Static lower-case name of a level. */
const char *outbox_log_level_name(int level)
{
    if (level >= OUTBOX_LOG_ERROR) return "error";
    if (level >= OUTBOX_LOG_WARN) return "warn";
    if (level >= OUTBOX_LOG_INFO) return "info";
    return "debug";
}

/* Non-zero when a message at level would reach a callback. */
int outbox__log_enabled(int level)
{
    return (log_fn != NULL || log_fields_fn != NULL) && level >= log_min_level;
}

/* Formats and passes one line with its fields (NULL: none) to the
 * callback; long lines are truncated and trailing newlines dropped. */
static void log_line(int level, const char *component, const outbox_log_fields *fields,
                     const char *fmt, va_list ap) OUTBOX__PRINTF(4, 0);
static void log_line(int level, const char *component, const outbox_log_fields *fields,
                     const char *fmt, va_list ap)
{
    char line[1024];
    size_t n;
    outbox_log_fn fn = log_fn;
    outbox_log_fields_fn fields_fn = log_fields_fn;
    if (vsnprintf(line, sizeof line, fmt, ap) < 0) line[0] = '\0';
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (!component) component = "outbox";
    if (fields_fn)
        fields_fn(log_user, level, component, line, fields);
    else if (fn)
        fn(log_user, level, component, line);
}

/* Never fails. */
void outbox__log(int level, const char *component, const char *fmt, ...)
{
    va_list ap;
    if (!outbox__log_enabled(level)) return;
    va_start(ap, fmt);
    log_line(level, component, NULL, fmt, ap);
    va_end(ap);
}

/* A line about message m: its id, aggregate and traceparent, the attempt
 * (0: none) and the destination (NULL: none) go to the fields.  The text
 * should still name the message for plain callbacks.  Never fails. */
void outbox__log_msg(int level, const char *component, const outbox_msg *m, unsigned attempt,
                     const char *destination, const char *fmt, ...)
{
    outbox_log_fields f;
    va_list ap;
    if (!outbox__log_enabled(level)) return;
    memset(&f, 0, sizeof f);
    f.size = sizeof f;
    if (m) {
        f.msg_id = m->id;
        f.aggregate_type = m->aggregate_type;
        f.aggregate_id = m->aggregate_id;
        f.traceparent = outbox_msg_header(m, "traceparent");
    }
    f.attempt = attempt;
    f.destination = destination;
    va_start(ap, fmt);
    log_line(level, component, &f, fmt, ap);
    va_end(ap);
}
