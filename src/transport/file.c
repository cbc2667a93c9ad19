/*
 * file.c - the `file:PATH` destination: one CloudEvents JSON object per line
 * (structured mode), appended to PATH and fsync'ed once per batch.
 *
 * Durability rule (guarantee 2): a message is confirmed only after the
 * fsync that follows its write succeeded.  A write or fsync that fails
 * confirms nothing: the file is first truncated back to its size before
 * the batch (the end of the last complete line), so what a reader finds
 * afterwards is whole lines only, and the batch fails as a whole (the
 * relay treats that as the destination's outage: a full disk charges no
 * attempts).  A batch that could not be cut off is cut off before the
 * next one, at reopen and at close.  A crash can still leave a torn last
 * line: the file is repaired at open by ending it with '\n' before anything
 * new is appended.
 *
 * reopen (outbox_relay_reopen, SIGHUP) opens PATH again, for log rotation:
 * after `mv events.jsonl events.jsonl.1` the next batch goes to a new
 * events.jsonl.  The URL takes no settings; anything after '?' is refused.
 *
 * Fault points (test builds): file_write and file_fsync make the write or
 * the fsync fail (ENOSPC after writing half the batch; EIO), as a full or
 * failing disk does; file_after_write fails the batch after its write,
 * file_after_fsync after its fsync (the lines are durable then, and are
 * published again: duplicates, never a gap).  Per message: file_reject
 * refuses it for good (OUTBOX_EREJECTED, as a destination that rejects a
 * message), file_message fails it alone (retriable); either way it is not
 * written, nor the later messages of its aggregate in the batch.
 * file_sys_write, file_sys_fsync and file_sys_truncate are the system
 * calls themselves (every write(), fsync() and ftruncate() here, the
 * repairs' too), failing with ENOSPC, EIO and EIO, or the errno the entry
 * names (`file_sys_write:error=EIO:3`); a failing write() writes just over
 * half its bytes first, as a disk that fills up during the call does
 * (tests/test_io_sweep.c sweeps them).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define COMPONENT "transport.file"

typedef struct file_state {
    int fd;
    int dirty;       /* a failed batch may have left bytes after good_size */
    off_t good_size; /* the file's size before the last batch: whole lines */
    char *path;
    char *source;
    char shown[512]; /* the URL, redacted, for messages */
    outbox_buf buf;  /* reused for every batch */
#ifdef OUTBOX_FAULT_INJECTION
    unsigned char *left_out; /* per message of the batch: a fault point left it out */
    size_t left_out_cap;
#endif
} file_state;

/* The system calls the file is written with, each behind a fault point
 * (see the top of the file; in release builds they are the calls alone). */
static ssize_t sys_write(int fd, const char *data, size_t len)
{
    int injected = OUTBOX_FAULT_ERRNO("file_sys_write", ENOSPC);
    if (injected != 0) {
        /* Just over half, so that a batch of lines of one length is torn
         * inside a line, not between two. */
        ssize_t part = len > 1 ? write(fd, data, len / 2 + 1) : 0;
        (void)part; /* the call fails whatever the first part did */
        errno = injected;
        return -1;
    }
    return write(fd, data, len);
}

static int sys_fsync(int fd)
{
    int injected = OUTBOX_FAULT_ERRNO("file_sys_fsync", EIO);
    if (injected != 0) {
        errno = injected;
        return -1;
    }
    return fsync(fd);
}

static int sys_ftruncate(int fd, off_t size)
{
    int injected = OUTBOX_FAULT_ERRNO("file_sys_truncate", EIO);
    if (injected != 0) {
        errno = injected;
        return -1;
    }
    return ftruncate(fd, size);
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = sys_write(fd, data, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Ends the file open on fd with '\n' when it is non-empty and its last byte
 * is not one (a line torn by a crash).  The append descriptor is
 * write-only, so the last byte is read through a second, read-only one.
 * Returns 0 (and *repaired) or -1 with errno set. */
static int check_tail(file_state *st, int fd, int *repaired)
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
        if (write_all(fd, "\n", 1) != 0 || sys_fsync(fd) != 0) return -1;
        *repaired = 1;
    }
    return 0;
}

/* Opens path for appending and repairs a torn tail; the descriptor, or -1
 * with err filled (`what`: "open" or "reopen"). */
static int open_output(file_state *st, const char *what, outbox_error *err)
{
    /* Readable by its consumers through the group, never by others. */
    int fd = open(st->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    int repaired = 0, saved;

    if (fd < 0) {
        outbox__error(err, OUTBOX_EIO,
                      "cannot %s destination file %s for appending: %s; check that the "
                      "directory exists and is writable",
                      what, st->shown, strerror(errno));
        return -1;
    }
    if (check_tail(st, fd, &repaired) != 0) {
        saved = errno;
        close(fd);
        outbox__error(err, OUTBOX_EIO, "cannot check the end of destination file %s: %s", st->shown,
                      strerror(saved));
        return -1;
    }
    if (repaired)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "%s ended with an incomplete line (interrupted write); ended it with a "
                    "newline before appending",
                    st->shown);
    return fd;
}

/* The path part of a file: URL ("file:PATH", "file://PATH"), up to '?';
 * a '?' is refused: the destination takes no settings. */
static int parse_url(const char *url, const char *shown, char **path, outbox_error *err)
{
    const char *p = url + strlen("file:"), *q;
    if (strncmp(p, "//", 2) == 0) p += 2;
    q = strchr(p, '?');
    if (q != NULL) {
        outbox_url u;
        const char *key = NULL;
        int rc;
        if (outbox__url_parse(&u, url, NULL, NULL) == OUTBOX_OK) {
            if (u.param_count > 0) key = u.params[0].key;
            rc = outbox__error(err, OUTBOX_ECONFIG,
                               "unknown file setting \"%s\" in destination \"%s\": file:PATH "
                               "takes no settings (the path ends before '?'; a file name "
                               "with '?' is not supported)",
                               key ? key : "", shown);
            outbox__url_free(&u);
            return rc;
        }
        return outbox__error(err, OUTBOX_ECONFIG,
                             "destination \"%s\": file:PATH takes no settings (the path ends "
                             "before '?'; a file name with '?' is not supported)",
                             shown);
    }
    if (*p == '\0')
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination \"%s\" has no path; use file:PATH, e.g. "
                             "file:/var/lib/app/events.jsonl",
                             shown);
    *path = outbox__strdup(p);
    if (*path == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening %s", shown);
    return OUTBOX_OK;
}

static void file_close(void *state);

static int file_open(void **state, const char *url, const outbox_transport_config *cfg,
                     outbox_error *err)
{
    file_state *st = NULL;
    int rc;

    *state = NULL;
    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening a file:");
    st->fd = -1;
    outbox__buf_init(&st->buf);
    outbox__url_redact(url, st->shown, sizeof st->shown);
    rc = parse_url(url, st->shown, &st->path, err);
    if (rc != OUTBOX_OK) goto fail;
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    if (st->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening %s", st->shown);
        goto fail;
    }
    st->fd = open_output(st, "open", err);
    if (st->fd < 0) {
        rc = err ? err->code : OUTBOX_EIO;
        goto fail;
    }
    *state = st;
    return OUTBOX_OK;

fail:
    file_close(st);
    return rc;
}

/* Truncates the file back to good_size after a failed batch.  0, or -1
 * with errno (the file stays dirty: the next batch tries again first). */
static int truncate_back(file_state *st)
{
    struct stat sb;
    int repaired;
    if (fstat(st->fd, &sb) != 0) return -1;
    if (sb.st_size > st->good_size) {
        if (sys_ftruncate(st->fd, st->good_size) != 0) return -1;
        if (sys_fsync(st->fd) != 0) return -1;
    } else if (sb.st_size < st->good_size && check_tail(st, st->fd, &repaired) != 0) {
        return -1; /* shortened by someone else meanwhile: only make it end a line */
    }
    st->dirty = 0;
    return 0;
}

/* A batch that failed with errnum after `what`: the partial data is cut
 * off (truncate_back), results[0].error says why, and the whole batch
 * fails (see outbox_transport_ops.publish). */
static int fail_batch(file_state *st, outbox_publish_result *results, const char *what, int errnum,
                      int cut)
{
    int cut_errno = 0;
    if (cut) {
        st->dirty = 1;
        if (truncate_back(st) != 0) cut_errno = errno;
    }
    if (cut_errno != 0)
        snprintf(results[0].error, sizeof results[0].error,
                 "%s %s: %s (and cutting the partial batch off failed: %s)", what, st->path,
                 strerror(errnum), strerror(cut_errno));
    else if (errnum != 0)
        snprintf(results[0].error, sizeof results[0].error, "%s %s: %s", what, st->path,
                 strerror(errnum));
    else
        snprintf(results[0].error, sizeof results[0].error, "%s %s", what, st->path);
    return OUTBOX_EIO;
}

#ifdef OUTBOX_FAULT_INJECTION
/* The per-message fault points (see the top of the file): marks in
 * st->left_out the messages they leave out, with their results, and
 * encodes the others into st->buf.  -1 when out of memory, else how many
 * were left out (0: st->buf is untouched). */
static long message_faults(file_state *st, outbox_msg *const *msgs, size_t n,
                           outbox_publish_result *results)
{
    size_t i, j, left = 0;

    if (n > st->left_out_cap) {
        unsigned char *p = outbox__realloc(st->left_out, n);
        if (p == NULL) return -1;
        st->left_out = p;
        st->left_out_cap = n;
    }
    memset(st->left_out, 0, n);
    for (i = 0; i < n; i++) {
        outbox_publish_result *r = &results[i];
        int held = 0;
        for (j = 0; j < i && !held; j++)
            held = st->left_out[j] && strcmp(msgs[j]->aggregate_id, msgs[i]->aggregate_id) == 0;
        r->retry_after_ms = 0;
        if (held) {
            r->code = OUTBOX_EPUBLISH;
            snprintf(r->error, sizeof r->error, "held back behind an earlier message of %s",
                     msgs[i]->aggregate_id);
        } else if (OUTBOX_FAULT("file_reject") != 0) {
            r->code = OUTBOX_EREJECTED;
            snprintf(r->error, sizeof r->error, "injected fault file_reject: %s refused %s",
                     st->path, msgs[i]->id);
        } else if (OUTBOX_FAULT("file_message") != 0) {
            r->code = OUTBOX_EPUBLISH;
            snprintf(r->error, sizeof r->error, "injected fault file_message: %s failed %s",
                     st->path, msgs[i]->id);
        } else {
            continue;
        }
        st->left_out[i] = 1;
        left++;
    }
    if (left == 0) return 0;
    outbox__buf_reset(&st->buf);
    for (i = 0; i < n; i++) {
        if (st->left_out[i]) continue;
        outbox__cloudevent_json(&st->buf, msgs[i], st->source);
        outbox__buf_append(&st->buf, "\n", 1);
    }
    return st->buf.oom ? -1 : (long)left;
}
#endif

static int file_publish(void *state, outbox_msg *const *msgs, size_t n,
                        outbox_publish_result *results)
{
    file_state *st = state;
    struct stat sb;
    size_t i;
    long left = 0;

    if (n == 0) return OUTBOX_OK;
#ifdef OUTBOX_FAULT_INJECTION
    left = message_faults(st, msgs, n, results);
    if (left < 0) return OUTBOX_ENOMEM;
    if ((size_t)left == n) return OUTBOX_OK; /* nothing to write */
#endif
    if (left == 0 && outbox__cloudevent_lines(&st->buf, msgs, n, st->source) != OUTBOX_OK)
        return OUTBOX_ENOMEM;

    if (st->dirty && truncate_back(st) != 0)
        return fail_batch(st, results, "cannot cut a failed batch off the end of", errno, 0);
    if (fstat(st->fd, &sb) != 0) return fail_batch(st, results, "cannot stat", errno, 0);
    st->good_size = sb.st_size;

    if (OUTBOX_FAULT("file_write") != 0) {
        /* A disk that fills up halfway through the batch. */
        if (write_all(st->fd, st->buf.data, st->buf.len / 2) != 0)
            return fail_batch(st, results, "write to", errno, 1);
        return fail_batch(st, results, "injected fault file_write: write to", ENOSPC, 1);
    }
    if (write_all(st->fd, st->buf.data, st->buf.len) != 0)
        return fail_batch(st, results, "write to", errno, 1);
    if (OUTBOX_FAULT("file_after_write") != 0)
        return fail_batch(st, results, "injected fault file_after_write on", 0, 1);
    if (OUTBOX_FAULT("file_fsync") != 0)
        return fail_batch(st, results, "injected fault file_fsync: fsync of", EIO, 1);
    if (sys_fsync(st->fd) != 0) return fail_batch(st, results, "fsync of", errno, 1);
    if (OUTBOX_FAULT("file_after_fsync") != 0)
        return fail_batch(st, results, "injected fault file_after_fsync on", 0, 0);
    for (i = 0; i < n; i++) {
#ifdef OUTBOX_FAULT_INJECTION
        if (left > 0 && st->left_out[i]) continue;
#endif
        results[i].code = OUTBOX_OK;
        results[i].retry_after_ms = 0;
        results[i].error[0] = '\0';
    }
    return OUTBOX_OK;
}

/* Opens the path again (see the top of the file).  The old descriptor is
 * closed only once the new one is open; a batch that failed on the old
 * file is cut off it first. */
static int file_reopen(void *state, outbox_error *err)
{
    file_state *st = state;
    int fd;

    if (st->dirty && truncate_back(st) != 0)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "cannot cut a failed batch off the end of %s before reopening it: %s",
                    st->shown, strerror(errno));
    fd = open_output(st, "reopen", err);
    if (fd < 0) return err ? err->code : OUTBOX_EIO;
    close(st->fd);
    st->fd = fd;
    st->dirty = 0;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "reopened %s", st->shown);
    return OUTBOX_OK;
}

static void file_close(void *state)
{
    file_state *st = state;
    if (st == NULL) return;
    /* A relay stopped while the destination is down may leave a failed
     * batch that could not be cut off yet: cut it now, or the next open
     * would only end its torn line with a newline, a broken line for the
     * file's readers. */
    if (st->fd >= 0 && st->dirty && truncate_back(st) != 0)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "cannot cut a failed batch off the end of %s before closing it: %s", st->shown,
                    strerror(errno));
    if (st->fd >= 0) close(st->fd);
    outbox__buf_free(&st->buf);
#ifdef OUTBOX_FAULT_INJECTION
    outbox__free(st->left_out);
#endif
    outbox__free(st->path);
    outbox__free(st->source);
    outbox__free(st);
}

/* The file destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_file = {
    .version = 4,
    .scheme = "file",
    .open = file_open,
    .publish = file_publish,
    .close = file_close,
    .reopen = file_reopen,
    .usage = "file:PATH",
    .doc = "CloudEvents 1.0 structured mode, one JSON object per line, appended to PATH; "
           "a batch is confirmed by its fsync: the durable local destination.  SIGHUP "
           "reopens PATH (log rotation).",
    .props = NULL, /* no settings (the registry refuses any) */
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = NULL,
};
