/*
 * log.c - the process-wide log callback.  The application installs it once
 * at start-up (outbox_log_set); library code calls outbox__log, which
 * formats into a stack buffer and hands one line to the callback.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static outbox_log_fn log_fn;
static void *log_user;
static int log_min_level = OUTBOX_LOG_INFO;

/* Installs fn (NULL turns logging off) and the lowest level passed to it. */
void outbox_log_set(outbox_log_fn fn, void *user, int min_level)
{
    log_fn = fn;
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
    return log_fn != NULL && level >= log_min_level;
}

/* Formats and passes one line to the callback; long lines are truncated
 * and trailing newlines dropped.  Never fails. */
void outbox__log(int level, const char *component, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    size_t n;
    outbox_log_fn fn = log_fn;
    if (!fn || level < log_min_level) return;
    va_start(ap, fmt);
    if (vsnprintf(line, sizeof line, fmt, ap) < 0) line[0] = '\0';
    va_end(ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    fn(log_user, level, component ? component : "outbox", line);
}
