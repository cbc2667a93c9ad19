/*
 * init.c - `outbox init`: creates or upgrades the outbox tables in a store
 * (idempotent).  For SQLite this is the only command that creates the
 * database file; every other command refuses a missing one.
 */
#include "cli.h"

#include <stdio.h>

static const char usage[] =
    "usage: outbox init --store URL\n"
    "\n"
    "Creates the outbox, inbox and lease tables, or upgrades them to this\n"
    "version's schema.  Running it again is harmless.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE),\n"
    "                       e.g. sqlite:app.db or sqlite:///var/lib/app.db\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox init --store sqlite:app.db\n";

/* Creates or upgrades the schema.  Exit 0, 1 (store error, newer schema) or 2. */
int cmd_init(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, 's'},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "init", *store_opt = NULL, *url = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    char shown[512];
    int c, rc, from = 0, to = 0;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case 's':
            store_opt = optarg;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; init takes only --store", argv[optind]);
    if ((rc = cli_store_connect(cmd, store_opt, &store, &url)) != CLI_EXIT_OK) return rc;

    outbox_url_redact(url, shown, sizeof shown);
    rc = outbox_store_init(store, &from, &to, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    if (from == to)
        printf("%s: schema version %d is up to date\n", shown, to);
    else if (from == 0)
        printf("%s: created the outbox schema (version %d)\n", shown, to);
    else
        printf("%s: upgraded the outbox schema from version %d to %d\n", shown, from, to);
    rc = CLI_EXIT_OK;
out:
    outbox_store_close(store);
    return rc;
}
