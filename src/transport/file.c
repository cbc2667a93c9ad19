/*
 * file.c - the `file:PATH` destination: one CloudEvents JSON object per line
 * (structured mode), appended to PATH and fsync'ed once per batch.
 *
 * Durability rule (guarantee 2): a message is confirmed only after the
 * fsync that follows its write succeeded; any failure confirms nothing in
 * the batch (every message gets OUTBOX_EIO and is republished later, so a
 * reader may see duplicates, never a gap).  A crash can leave a torn last
 * line: the file is repaired at open (and after a failed write) by ending
 * it with '\n' before anything new is appended, so every complete line
 * stays one valid JSON object.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct file_state {
    int fd;
    int needs_repair; /* a write failed: the last line may be torn */
    char *path;
    char *source;
    outbox_buf buf; /* reused for every batch */
} file_state;

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Ends the file with '\n' when it is non-empty and its last byte is not one
 * (a line torn by a crash or a failed write).  The append descriptor is
 * write-only, so the last byte is read through a second, read-only one.
 * Returns 0 (and *repaired) or -1 with errno set. */
static int check_tail(file_state *st, int *repaired)
{
    struct stat sb;
    char last = '\n';
    ssize_t r = 0;
    int rfd, rc, saved;

    *repaired = 0;
    rfd = open(st->path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return errno == ENOENT ? 0 : -1;
    rc = fstat(rfd, &sb);
    if (rc == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0) {
        do {
            r = pread(rfd, &last, 1, sb.st_size - 1);
        } while (r < 0 && errno == EINTR);
        if (r < 0) rc = -1;
    }
    saved = errno;
    close(rfd);
    errno = saved;
    if (rc != 0) return -1;
    if (r == 1 && last != '\n') {
        if (write_all(st->fd, "\n", 1) != 0 || fsync(st->fd) != 0) return -1;
        *repaired = 1;
    }
    return 0;
}

static int file_open(void **state, const char *url, const outbox_transport_config *cfg,
                     outbox_error *err)
{
    file_state *st = NULL;
    const char *path;
    char shown[512];
    int repaired = 0;
    int rc;

    *state = NULL;
    outbox__url_redact(url, shown, sizeof shown);
    path = url + strlen("file:");
    if (strncmp(path, "//", 2) == 0) path += 2;
    if (*path == '\0')
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination \"%s\" has no path; use file:PATH, e.g. "
                             "file:/var/lib/app/events.jsonl",
                             shown);

    st = calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening %s", shown);
    st->fd = -1;
    outbox__buf_init(&st->buf);
    st->path = strdup(path);
    st->source = strdup(cfg->source ? cfg->source : "/outbox");
    if (st->path == NULL || st->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening %s", shown);
        goto fail;
    }
    st->fd = open(st->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (st->fd < 0) {
        rc = outbox__error(err, OUTBOX_EIO,
                           "cannot open destination file %s for appending: %s; check that "
                           "the directory exists and is writable",
                           shown, strerror(errno));
        goto fail;
    }
    if (check_tail(st, &repaired) != 0) {
        rc = outbox__error(err, OUTBOX_EIO, "cannot check the end of destination file %s: %s",
                           shown, strerror(errno));
        goto fail;
    }
    if (repaired)
        outbox__log(OUTBOX_LOG_WARN, "transport.file",
                    "%s ended with an incomplete line (interrupted write); ended it with a "
                    "newline before appending",
                    shown);
    *state = st;
    return OUTBOX_OK;

fail:
    if (st->fd >= 0) close(st->fd);
    outbox__buf_free(&st->buf);
    free(st->path);
    free(st->source);
    free(st);
    return rc;
}

static void fail_all(outbox_publish_result *results, size_t n, int code, const char *what,
                     const char *path, int errnum)
{
    size_t i;
    for (i = 0; i < n; i++) {
        results[i].code = code;
        results[i].retry_after_ms = 0;
        if (errnum)
            snprintf(results[i].error, sizeof results[i].error, "%s %s: %s", what, path,
                     strerror(errnum));
        else
            snprintf(results[i].error, sizeof results[i].error, "%s %s", what, path);
    }
}

static int file_publish(void *state, outbox_msg *const *msgs, size_t n,
                        outbox_publish_result *results)
{
    file_state *st = state;
    size_t i;
    int repaired;

    if (n == 0) return OUTBOX_OK;
    if (outbox__cloudevent_lines(&st->buf, msgs, n, st->source) != OUTBOX_OK)
        return OUTBOX_ENOMEM;

    if (st->needs_repair) {
        if (check_tail(st, &repaired) != 0) {
            fail_all(results, n, OUTBOX_EIO, "cannot repair the end of", st->path, errno);
            return OUTBOX_OK;
        }
        st->needs_repair = 0;
    }
    if (write_all(st->fd, st->buf.data, st->buf.len) != 0) {
        st->needs_repair = 1;
        fail_all(results, n, OUTBOX_EIO, "write to", st->path, errno);
        return OUTBOX_OK;
    }
    if (OUTBOX_FAULT("file_after_write") != 0) {
        st->needs_repair = 1;
        fail_all(results, n, OUTBOX_EIO, "injected fault file_after_write on", st->path, 0);
        return OUTBOX_OK;
    }
    if (fsync(st->fd) != 0) {
        st->needs_repair = 1;
        fail_all(results, n, OUTBOX_EIO, "fsync of", st->path, errno);
        return OUTBOX_OK;
    }
    if (OUTBOX_FAULT("file_after_fsync") != 0) {
        fail_all(results, n, OUTBOX_EIO, "injected fault file_after_fsync on", st->path, 0);
        return OUTBOX_OK;
    }
    for (i = 0; i < n; i++) {
        results[i].code = OUTBOX_OK;
        results[i].retry_after_ms = 0;
        results[i].error[0] = '\0';
    }
    return OUTBOX_OK;
}

static void file_close(void *state)
{
    file_state *st = state;
    if (st == NULL) return;
    if (st->fd >= 0) close(st->fd);
    outbox__buf_free(&st->buf);
    free(st->path);
    free(st->source);
    free(st);
}

/* The file destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_file = {
    1, "file", file_open, file_publish, file_close,
};
