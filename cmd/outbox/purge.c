/*
 * purge.c - `outbox purge`: deletes sent messages (kept by relays running
 * with --on-sent mark) older than a duration, and optionally inbox entries
 * older than another.  Pending and Failed messages are never purged here.
 *
 * The inbox purge is outbox_store_inbox_purge (outbox_inbox_purge_sqlite or
 * outbox_inbox_purge_pg on the store's connection).  It warns (through the
 * log) when the retention is shorter than the default relay's redelivery
 * horizon.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox purge --store URL --sent-older-than DURATION\n"
    "                    [--inbox-older-than DURATION]\n"
    "\n"
    "Deletes messages marked sent (relay --on-sent mark) whose sent_at is older\n"
    "than DURATION, and with --inbox-older-than inbox entries received longer ago\n"
    "than that.  Pending and Failed messages are never deleted.\n" CLI_FAILED_HELP "\n"
    "Options:\n"
    "  --store URL                 the database (required; default $OUTBOX_STORE)\n"
    "  --sent-older-than DUR       age of sent messages to delete (required); 0s: all\n"
    "  --inbox-older-than DUR      also delete older inbox entries (default: keep them);\n"
    "                              keep longer than the redelivery horizon\n" CLI_GLOBAL_HELP "\n"
    "Durations: 500ms, 30s, 5m, 2h, 7d (a bare number is seconds).\n"
    "\n"
    "Example:\n"
    "  outbox purge --store sqlite:app.db --sent-older-than 7d --inbox-older-than 30d\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_SENT_OLDER, OPT_INBOX_OLDER };

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
    const char *cmd = "purge", *store_opt = NULL;
    const char *sent_text = NULL, *inbox_text = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    int64_t sent_ms = 0, inbox_ms = -1, count = 0, inbox_count = 0;
    const int64_t max_ms = INT64_C(100) * 365 * 86400 * 1000; /* 100 years */
    int c, rc;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_SENT_OLDER:
            sent_text = optarg;
            break;
        case OPT_INBOX_OLDER:
            inbox_text = optarg;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox purge --help", argv[optind]);
    if (!sent_text)
        return cli_usage(cmd, "--sent-older-than is required (e.g. --sent-older-than 7d; "
                              "0s purges every sent message)");
    if ((rc = cli_parse_duration(cmd, "--sent-older-than", sent_text, max_ms, &sent_ms)) !=
        CLI_EXIT_OK)
        return rc;
    if (inbox_text && (rc = cli_parse_duration(cmd, "--inbox-older-than", inbox_text, max_ms,
                                               &inbox_ms)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_connect(cmd, store_opt, &store, NULL)) != CLI_EXIT_OK) return rc;

    rc = outbox_store_purge(store, sent_ms, &count, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    printf("%lld sent messages purged\n", (long long)count);
    if (inbox_ms >= 0) {
        rc = outbox_store_inbox_purge(store, inbox_ms, 0, &inbox_count, &err);
        if (rc == OUTBOX_ENOTBUILT) {
            rc = cli_usage(cmd,
                           "--inbox-older-than: %s: stores have no inbox to purge; drop "
                           "the option",
                           outbox_store_scheme(store));
            goto out;
        }
        if (rc != OUTBOX_OK) {
            rc = cli_fail(cmd, rc, &err);
            goto out;
        }
        printf("%lld inbox entries purged\n", (long long)inbox_count);
    }
    rc = CLI_EXIT_OK;
out:
    outbox_store_close(store);
    return rc;
}
