/*
 * stdout.c - the `stdout:` destination: one CloudEvents JSON object per line
 * (structured mode) written to file descriptor 1, one write per batch.
 *
 * Standard output gives no durable confirmation: it is for people and for
 * pipelines that accept loss (file: is the durable destination).  What can
 * be detected is: a write that fails (EPIPE: the reader is gone, EBADF:
 * stdout is closed, ENOSPC, ...) fails the whole batch, so nothing of it is
 * recorded sent, and the relay backs off as for any destination outage.
 * SIGPIPE is blocked around the write and a SIGPIPE the write raised is
 * consumed, so a closed pipe is an error, not the death of the process.
 * When stdout is a pipe (Linux), a batch is confirmed only once the reader
 * has taken its bytes out of the pipe; a reader that exits leaving them
 * unread (`| head -1` after its first read) fails the batch.  Bytes the
 * reader took and then dropped cannot be seen.
 *
 * Stop: the interrupt entry (async-signal-safe, an atomic flag) ends
 * a wait for a reader that is not reading; the batch's messages then get
 * OUTBOX_ESTOPPED and stay pending.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Longest pause between two looks at a pipe the reader has not emptied. */
#define DRAIN_STEP_MAX_MS 50

typedef struct stdout_state {
    char *source;
    outbox_buf buf; /* reused for every batch */
    atomic_int interrupted;
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
    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening stdout:");
    outbox__buf_init(&st->buf);
    atomic_init(&st->interrupted, 0);
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    if (st->source == NULL) {
        outbox__free(st);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening stdout:");
    }
    *state = st;
    return OUTBOX_OK;
}

/* Writes data to fd 1 with SIGPIPE blocked in this thread; a SIGPIPE the
 * write raised is consumed (one pending before is left alone).  0, or -1
 * with errno (EINTR: a signal interrupted a blocked write after *stop was
 * set). */
static int write_stdout(const char *data, size_t len, atomic_int *stop)
{
    sigset_t pipe_set, old, pending;
    int was_pending, rc = 0, saved = 0;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0) return -1;
    while (len > 0) {
        ssize_t w = write(STDOUT_FILENO, data, len);
        if (w < 0) {
            if (errno == EINTR && !atomic_load(stop)) continue;
            rc = -1;
            saved = errno;
            break;
        }
        data += w;
        len -= (size_t)w;
    }
    if (rc != 0 && saved == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return rc;
}

/* When fd 1 is a pipe: waits until the reader has taken every byte out of
 * it.  0 when drained (or when this cannot be told), -1 when the reader
 * went away first, 1 when interrupted. */
static int wait_drained(stdout_state *st)
{
#if defined(__linux__) && defined(FIONREAD)
    struct stat sb;
    int step_ms = 1;

    if (fstat(STDOUT_FILENO, &sb) != 0 || !S_ISFIFO(sb.st_mode)) return 0;
    for (;;) {
        struct pollfd p;
        int queued = 0;
        p.fd = STDOUT_FILENO;
        p.events = 0; /* POLLERR (no reader left) is reported anyway */
        p.revents = 0;
        if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) return -1;
        if (ioctl(STDOUT_FILENO, FIONREAD, &queued) != 0) return 0;
        if (queued <= 0) return 0;
        if (atomic_load(&st->interrupted)) return 1;
        p.revents = 0;
        if (poll(&p, 1, step_ms) > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) return -1;
        if (step_ms < DRAIN_STEP_MAX_MS) step_ms *= 2;
    }
#else
    (void)st;
    return 0;
#endif
}

static int stdout_publish(void *state, outbox_msg *const *msgs, size_t n,
                          outbox_publish_result *results)
{
    stdout_state *st = state;
    size_t i;
    int drained, code = OUTBOX_OK;

    if (n == 0) return OUTBOX_OK;
    if (atomic_load(&st->interrupted)) {
        code = OUTBOX_ESTOPPED;
        goto done;
    }
    if (outbox__cloudevent_lines(&st->buf, msgs, n, st->source) != OUTBOX_OK) return OUTBOX_ENOMEM;
    if (write_stdout(st->buf.data, st->buf.len, &st->interrupted) != 0) {
        if (errno == EINTR) {
            code = OUTBOX_ESTOPPED;
            goto done;
        }
        snprintf(results[0].error, sizeof results[0].error, "write to standard output: %s%s",
                 strerror(errno), errno == EPIPE ? " (the reading end of the pipe is closed)" : "");
        return OUTBOX_EIO;
    }
    drained = wait_drained(st);
    if (drained < 0) {
        snprintf(results[0].error, sizeof results[0].error,
                 "standard output is a pipe whose reader exited before reading the batch");
        return OUTBOX_EIO;
    }
    if (drained > 0) code = OUTBOX_ESTOPPED;

done:
    for (i = 0; i < n; i++) {
        results[i].code = code;
        results[i].retry_after_ms = 0;
        if (code == OUTBOX_OK)
            results[i].error[0] = '\0';
        else
            snprintf(results[i].error, sizeof results[i].error,
                     "interrupted: the relay stopped before the pipe's reader took the batch");
    }
    return OUTBOX_OK;
}

/* Async-signal-safe: an atomic store (see the top of the file). */
static void stdout_interrupt(void *state)
{
    stdout_state *st = state;
    atomic_store(&st->interrupted, 1);
}

static void stdout_close(void *state)
{
    stdout_state *st = state;
    if (st == NULL) return;
    outbox__buf_free(&st->buf);
    outbox__free(st->source);
    outbox__free(st);
}

/* The standard output destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_stdout = {
    .version = 4,
    .scheme = "stdout",
    .open = stdout_open,
    .publish = stdout_publish,
    .close = stdout_close,
    .reopen = NULL,
    .usage = "stdout:",
    .doc = "CloudEvents 1.0 structured mode, one JSON object per line, on standard output.  "
           "Confirms nothing durably (a reader that exits early loses what it did not "
           "read): for people and for pipelines that accept loss.",
    .props = NULL, /* no settings (the registry refuses any) */
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = stdout_interrupt,
};
