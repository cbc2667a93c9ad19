/*
 * purge.c - `outbox purge`: deletes sent messages (kept by relays running
 * with --on-sent mark) older than a duration, and optionally inbox entries
 * older than another.  Pending and Failed messages are never purged here.
 *
 * The store driver interface has no inbox operation, so the inbox purge
 * goes through the public outbox_inbox_purge_sqlite() on a connection of
 * its own to the store's database file (SQLite stores only).  It warns
 * (through the log) when the retention is shorter than the default relay's
 * redelivery horizon.
 */
#include "cli.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox purge --store URL --sent-older-than DURATION\n"
    "                    [--inbox-older-than DURATION]\n"
    "\n"
    "Deletes messages marked sent (relay --on-sent mark) whose sent_at is older\n"
    "than DURATION, and with --inbox-older-than inbox entries received longer ago\n"
    "than that.  Pending and Failed messages are never deleted.\n"
    "\n"
    "Options:\n"
    "  --store URL                 the database (required; default $OUTBOX_STORE)\n"
    "  --sent-older-than DUR       age of sent messages to delete (required); 0s: all\n"
    "  --inbox-older-than DUR      also delete older inbox entries (default: keep them);\n"
    "                              keep longer than the redelivery horizon (SQLite only)\n"
    CLI_GLOBAL_HELP
    "\n"
    "Durations: 500ms, 30s, 5m, 2h, 7d (a bare number is seconds).\n"
    "\n"
    "Example:\n"
    "  outbox purge --store sqlite:app.db --sent-older-than 7d --inbox-older-than 30d\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_SENT_OLDER, OPT_INBOX_OLDER };

/* Purges inbox entries through a separate connection to the store's file. */
static int purge_inbox(const char *cmd, outbox_store *store, int64_t retention_ms,
                       int64_t *purged)
{
    const char *path = store->ops->wake_path ? store->ops->wake_path(store->state) : NULL;
    sqlite3 *db = NULL;
    outbox_error err = {0, ""};
    int rc;

    if (strcmp(store->ops->scheme, "sqlite") != 0 || !path || !path[0])
        return cli_usage(cmd, "--inbox-older-than works only with sqlite: stores; "
                              "drop the option");
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        rc = cli_failure(cmd, "cannot open the database for the inbox purge: %s; "
                              "check the file's permissions", db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(db, 5000);
    rc = outbox_inbox_purge_sqlite(db, retention_ms, 0, purged, &err);
    rc = rc == OUTBOX_OK ? CLI_EXIT_OK : cli_fail(cmd, rc, &err);
out:
    sqlite3_close(db);
    return rc;
}

/* Deletes old sent messages (and inbox entries).  Exit 0 (counts printed),
 * 1 (missing schema, store error) or 2 (bad durations or options). */
int cmd_purge(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"sent-older-than", required_argument, NULL, OPT_SENT_OLDER},
        {"inbox-older-than", required_argument, NULL, OPT_INBOX_OLDER},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "purge", *store_opt = NULL, *url = NULL;
    const char *sent_text = NULL, *inbox_text = NULL;
    outbox_store store = {NULL, NULL};
    outbox_error err = {0, ""};
    int64_t sent_ms = 0, inbox_ms = -1, count = 0, inbox_count = 0;
    const int64_t max_ms = INT64_C(100) * 365 * 86400 * 1000; /* 100 years */
    int c, rc;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_STORE: store_opt = optarg; break;
        case OPT_SENT_OLDER: sent_text = optarg; break;
        case OPT_INBOX_OLDER: inbox_text = optarg; break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE)
                return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox purge --help", argv[optind]);
    if (!sent_text)
        return cli_usage(cmd, "--sent-older-than is required (e.g. --sent-older-than 7d; "
                              "0s purges every sent message)");
    if ((rc = cli_parse_duration(cmd, "--sent-older-than", sent_text, max_ms, &sent_ms)) != CLI_EXIT_OK)
        return rc;
    if (inbox_text &&
        (rc = cli_parse_duration(cmd, "--inbox-older-than", inbox_text, max_ms, &inbox_ms)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_open(cmd, url, &store)) != CLI_EXIT_OK)
        return rc;

    rc = store.ops->purge(store.state, outbox__now_us() - sent_ms * 1000, &count, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    printf("%lld sent messages purged\n", (long long)count);
    if (inbox_ms >= 0) {
        if ((rc = purge_inbox(cmd, &store, inbox_ms, &inbox_count)) != CLI_EXIT_OK)
            goto out;
        printf("%lld inbox entries purged\n", (long long)inbox_count);
    }
    rc = CLI_EXIT_OK;
out:
    outbox__store_close(&store);
    return rc;
}
