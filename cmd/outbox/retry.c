/*
 * retry.c - `outbox retry`: requeues Failed messages (status pending,
 * attempts 0, due now), by id or all of them.  With ids it is all or
 * nothing: an unknown id or one that is not Failed changes nothing.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

static const char usage[] =
    "usage: outbox retry --store URL (ID... | --all-failed)\n"
    "\n"
    "Requeues Failed messages: they become pending with 0 attempts and are\n"
    "due at once.  Given ids, every one must exist and be Failed, or nothing\n"
    "is changed.  Prints how many were requeued.\n" CLI_FAILED_HELP "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --all-failed         requeue every Failed message (default: only the given "
    "IDs)\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox retry --store sqlite:app.db --all-failed\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_ALL_FAILED };

/* Requeues failed messages.  Exit 0 (count printed), 1 (not found, store
 * error) or 2 (bad ids or options; nothing changed). */
int cmd_retry(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"all-failed", no_argument, NULL, OPT_ALL_FAILED},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "retry", *store_opt = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
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
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if ((rc = cli_failed_ids(cmd, "retry", argc, argv, all, &ids, &n)) != CLI_EXIT_OK) return rc;
    if ((rc = cli_store_connect(cmd, store_opt, &store, NULL)) != CLI_EXIT_OK) goto out;
    rc = outbox_store_retry(store, ids, n, all, &count, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    printf("%lld requeued\n", (long long)count);
    rc = CLI_EXIT_OK;
out:
    outbox_store_close(store);
    free(ids);
    return rc;
}
