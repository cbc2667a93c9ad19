/*
 * drop.c - `outbox drop`: deletes Failed messages, by id or all of them,
 * after writing each one to an archive file when --archive is given.
 *
 * The archive is written from the store's archive callback, which the
 * store calls with the messages it is about to delete, before deleting
 * any: the lines are appended and fsynced, and only when that worked does
 * the store delete them.  A write that fails is cut back to the file's
 * previous length (no partial line stays) and deletes nothing.  If the
 * deletion fails after the archive was written, the archive holds lines
 * for messages still in the outbox, which a later drop writes again: a
 * message may be archived more than once, never dropped without a trace.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: outbox drop --store URL (ID... | --all-failed) [--archive file:PATH]\n"
    "\n"
    "Deletes Failed messages, and only those.  Given ids, every one must exist and\n"
    "be Failed, or nothing is deleted (as for retry).  Prints how many were dropped.\n"
    "With --archive each message is first appended to PATH as one JSON line (the\n"
    "object of outbox show --json plus \"dropped_at\") and the file is fsynced; if\n"
    "that fails nothing is deleted, so no message disappears without a trace.\n"
    "The archive file is created with mode 0600 (it holds the payloads).\n" CLI_FAILED_HELP "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --all-failed         drop every Failed message (default: only the given IDs)\n"
    "  --archive file:PATH  append the messages to PATH before deleting them\n"
    "                       (default: no archive); only file: is accepted\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox drop --store sqlite:app.db --all-failed --archive file:dropped.jsonl\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_ALL_FAILED, OPT_ARCHIVE };

/* The archive file and what the callback reports back. */
typedef struct archive {
    const char *path;
    size_t written; /* messages archived */
} archive;

/* Parses --archive: "file:PATH" or "file://PATH".  CLI_EXIT_USAGE with a
 * message for anything else. */
static int archive_path(const char *cmd, const char *url, const char **path)
{
    size_t scheme_len = strcspn(url, ":/?");
    const char *p;
    if (url[scheme_len] != ':' || scheme_len == 0)
        return cli_usage(cmd, "--archive '%s' has no scheme; write it as file:PATH", url);
    if (scheme_len != 4 || strncasecmp(url, "file", 4) != 0)
        return cli_usage(cmd,
                         "--archive '%.*s:' is not supported; write the archive to a file, "
                         "--archive file:PATH (a record that must be durable before the "
                         "messages are deleted)",
                         (int)scheme_len, url);
    p = url + 5;
    if (strncmp(p, "//", 2) == 0) p += 2;
    if (!*p)
        return cli_usage(cmd,
                         "--archive '%s' has no path; write it as file:PATH, e.g. "
                         "file:dropped.jsonl",
                         url);
    if (strchr(p, '?'))
        return cli_usage(cmd,
                         "--archive '%s': an archive file takes no settings; remove the "
                         "'?...' part",
                         url);
    *path = p;
    return CLI_EXIT_OK;
}

/* Makes the new file's directory entry durable. */
static int sync_parent(const char *path)
{
    char *copy = strdup(path);
    int fd, rc = -1;
    if (!copy) return -1;
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        rc = fsync(fd);
        close(fd);
    }
    free(copy);
    return rc;
}

/* Writes all of data to fd; -1 with errno on failure. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The store's archive callback: appends msgs[0..n) as JSON lines and
 * fsyncs.  OUTBOX_OK only when every line is on disk; otherwise the file
 * is cut back to where it was and the error deletes nothing. */
static int archive_messages(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    archive *a = user;
    cli_buf lines;
    const char *text;
    char dropped_at[32];
    struct stat st;
    int fd = -1, created = 0, code = OUTBOX_OK, saved;
    off_t before = 0;

    if (n == 0) return OUTBOX_OK;
    outbox_time_format(cli_now_us(), dropped_at);
    cli_buf_init(&lines);
    for (size_t i = 0; i < n; i++) {
        json_t *o = cli_msg_to_json(msgs[i]);
        char *line = NULL;
        if (o && json_object_set_new(o, "dropped_at", json_string(dropped_at)) == 0)
            line = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!line) {
            cli_buf_free(&lines);
            return cli_error(err, OUTBOX_ENOMEM,
                             "out of memory archiving the messages; nothing was dropped");
        }
        cli_buf_puts(&lines, line);
        cli_buf_puts(&lines, "\n");
        free(line);
    }
    if ((text = cli_buf_text(&lines)) == NULL) {
        cli_buf_free(&lines);
        return cli_error(err, OUTBOX_ENOMEM,
                         "out of memory archiving the messages; nothing was dropped");
    }

    fd = open(a->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        created = fd >= 0;
    }
    if (fd < 0) {
        code = cli_error(err, OUTBOX_EIO,
                         "cannot open the archive %s: %s; nothing was "
                         "dropped",
                         a->path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        code = cli_error(err, OUTBOX_EIO,
                         "cannot use the archive %s: %s; nothing was "
                         "dropped",
                         a->path, strerror(errno));
        goto out;
    }
    before = st.st_size;
    errno = 0;
    if (write_all(fd, text, lines.len) != 0 || CLI_FAULT("drop_archive_written") ||
        fsync(fd) != 0 || (created && sync_parent(a->path) != 0)) {
        saved = errno;
        /* Readers of the archive never see a partial line. */
        if (S_ISREG(st.st_mode) && ftruncate(fd, before) == 0) (void)fsync(fd);
        code = cli_error(err, OUTBOX_EIO,
                         "writing the archive %s failed: %s; nothing was "
                         "dropped",
                         a->path, saved ? strerror(saved) : "injected fault");
        goto out;
    }
    a->written += n;
out:
    if (fd >= 0) close(fd);
    cli_buf_free(&lines);
    return code;
}

/* Drops Failed messages.  Exit 0 (count printed), 1 (an unknown id, the
 * archive could not be written, store error) or 2 (bad ids or options; a
 * given message that is not Failed); nothing is deleted unless exit 0. */
int cmd_drop(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"all-failed", no_argument, NULL, OPT_ALL_FAILED},
        {"archive", required_argument, NULL, OPT_ARCHIVE},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "drop", *store_opt = NULL, *archive_url = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    archive arch = {NULL, 0};
    const char **ids = NULL;
    size_t n = 0;
    int64_t count = 0;
    int c, rc, all = 0;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_ALL_FAILED:
            all = 1;
            break;
        case OPT_ARCHIVE:
            archive_url = optarg;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (archive_url && (rc = archive_path(cmd, archive_url, &arch.path)) != CLI_EXIT_OK) return rc;
    if ((rc = cli_failed_ids(cmd, "drop", argc, argv, all, &ids, &n)) != CLI_EXIT_OK) return rc;
    if ((rc = cli_store_connect(cmd, store_opt, &store, NULL)) != CLI_EXIT_OK) goto out;
    rc = outbox_store_drop(store, ids, n, all, arch.path ? archive_messages : NULL, &arch, &count,
                           &err);
    if (rc == OUTBOX_ENOTBUILT) {
        rc = cli_failure(cmd,
                         "this build's %s store cannot drop messages; requeue them with "
                         "outbox retry instead, or use a newer outbox",
                         outbox_store_scheme(store));
        goto out;
    }
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    if (arch.path)
        printf("%lld dropped (archived to %s)\n", (long long)count, arch.path);
    else
        printf("%lld dropped\n", (long long)count);
    rc = CLI_EXIT_OK;
out:
    outbox_store_close(store);
    free(ids);
    return rc;
}
