/*
 * util.c - the small tools the subcommands need besides the library: a
 * text buffer, the clock, the error helper and the CLI's fault points.
 * The CLI is a client of outbox.h like any other program, so it keeps its
 * own rather than reaching into the library's internals.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * Text buffer
 * ---------------------------------------------------------------------- */

void cli_buf_init(cli_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->stream = open_memstream(&b->data, &b->len);
    b->oom = b->stream == NULL;
}

void cli_buf_append(cli_buf *b, const char *s, size_t n)
{
    if (b->stream && n > 0 && fwrite(s, 1, n, b->stream) != n) b->oom = 1;
}

void cli_buf_puts(cli_buf *b, const char *s)
{
    cli_buf_append(b, s, strlen(s));
}

void cli_buf_printf(cli_buf *b, const char *fmt, ...)
{
    va_list ap;
    if (!b->stream) return;
    va_start(ap, fmt);
    if (vfprintf(b->stream, fmt, ap) < 0) b->oom = 1;
    va_end(ap);
}

const char *cli_buf_text(cli_buf *b)
{
    if (!b->stream || fflush(b->stream) != 0 || ferror(b->stream)) b->oom = 1;
    return b->oom ? NULL : b->data;
}

void cli_buf_free(cli_buf *b)
{
    if (b->stream) fclose(b->stream);
    free(b->data);
    b->stream = NULL;
    b->data = NULL;
    b->len = 0;
}

/* ------------------------------------------------------------------------
 * Clock
 * ---------------------------------------------------------------------- */

static int64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t cli_now_us(void)
{
    return clock_us(CLOCK_REALTIME);
}

int64_t cli_monotonic_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

void cli_sleep_us(int64_t us)
{
    struct timespec ts;
    if (us <= 0) return;
    ts.tv_sec = (time_t)(us / 1000000);
    ts.tv_nsec = (long)(us % 1000000) * 1000;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------- */

int cli_error(outbox_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    if (!err) return code;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

/* ------------------------------------------------------------------------
 * Fault points
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_FAULT_INJECTION
int cli_fault(const char *name)
{
    static int fired; /* the CLI has one point, reached once a run */
    const char *p = getenv("OUTBOX_FAULT");
    size_t n = strlen(name);

    while (p && *p && !fired) {
        size_t len = strcspn(p, ",");
        if (len > n && strncmp(p, name, n) == 0 &&
            ((len - n == 6 && strncmp(p + n, ":error", 6) == 0) ||
             (len - n == 8 && strncmp(p + n, ":error:1", 8) == 0))) {
            fired = 1;
            return OUTBOX_EFAULT;
        }
        p += len + (p[len] == ',');
    }
    return 0;
}
#endif
