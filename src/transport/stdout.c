/*
 * stdout.c - the `stdout:` destination: one CloudEvents JSON object per line
 * (structured mode) written to file descriptor 1, one write per batch.
 *
 * Confirmation is the successful write (standard output may be a pipe or a
 * terminal, where fsync means nothing): this destination is for
 * development and for piping into another program, not for durability.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct stdout_state {
    char *source;
    outbox_buf buf; /* reused for every batch */
} stdout_state;

static int stdout_open(void **state, const char *url, const outbox_transport_config *cfg,
                       outbox_error *err)
{
    stdout_state *st;
    const char *rest = url + strlen("stdout:");

    *state = NULL;
    if (strcmp(rest, "") != 0 && strcmp(rest, "//") != 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination \"stdout:\" takes nothing after the colon; "
                             "use \"stdout:\" or file:PATH");
    st = calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening stdout:");
    outbox__buf_init(&st->buf);
    st->source = strdup(cfg->source ? cfg->source : "/outbox");
    if (st->source == NULL) {
        free(st);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening stdout:");
    }
    *state = st;
    return OUTBOX_OK;
}

static int stdout_publish(void *state, outbox_msg *const *msgs, size_t n,
                          outbox_publish_result *results)
{
    stdout_state *st = state;
    const char *data;
    size_t len, i;
    int code = OUTBOX_OK, errnum = 0;

    if (n == 0) return OUTBOX_OK;
    if (outbox__cloudevent_lines(&st->buf, msgs, n, st->source) != OUTBOX_OK)
        return OUTBOX_ENOMEM;
    data = st->buf.data;
    len = st->buf.len;
    while (len > 0) {
        ssize_t w = write(STDOUT_FILENO, data, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            code = OUTBOX_EIO;
            errnum = errno;
            break;
        }
        data += w;
        len -= (size_t)w;
    }
    for (i = 0; i < n; i++) {
        results[i].code = code;
        results[i].retry_after_ms = 0;
        if (code == OUTBOX_OK)
            results[i].error[0] = '\0';
        else
            snprintf(results[i].error, sizeof results[i].error, "write to standard output: %s",
                     strerror(errnum));
    }
    return OUTBOX_OK;
}

static void stdout_close(void *state)
{
    stdout_state *st = state;
    if (st == NULL) return;
    outbox__buf_free(&st->buf);
    free(st->source);
    free(st);
}

/* The standard output destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_stdout = {
    1, "stdout", stdout_open, stdout_publish, stdout_close,
};
