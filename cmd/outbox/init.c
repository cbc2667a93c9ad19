/*
 * init.c - `outbox init`: creates or upgrades the outbox tables in a store
 * (idempotent).  For SQLite this is the only command that creates the
 * database file; every other command refuses a missing one.  With
 * --capture wal (PostgreSQL) it also sets up what a relay reading the WAL
 * needs: the replication slot and the publication (docs/WAL.md).
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox init --store URL [--capture table|wal]\n"
    "\n"
    "Creates the outbox, inbox and lease tables, or upgrades them to this\n"
    "version's schema.  Running it again is harmless.\n"
    "\n"
    "With --capture wal (PostgreSQL 14 or newer) it then checks the server for\n"
    "WAL capture (wal_level = logical, the role has REPLICATION, a free slot)\n"
    "and creates the logical replication slot and the publication a relay\n"
    "with capture=wal in its store URL reads from (named by the URL's slot=\n"
    "and publication=, default outbox_<schema>).  It warns when the server\n"
    "keeps WAL for a slot without limit (max_slot_wal_keep_size = -1).\n"
    "`outbox wal drop-slot` removes them.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE),\n"
    "                       e.g. sqlite:app.db or sqlite:///var/lib/app.db\n"
    "  --capture MODE       table (default): the relay reads the outbox table;\n"
    "                       wal: also set up the replication slot (PostgreSQL)\n" CLI_GLOBAL_HELP
    "\n"
    "Example:\n"
    "  outbox init --store sqlite:app.db\n"
    "  outbox init --store postgres://outbox@db/shop --capture wal\n";

enum { OPT_CAPTURE = CLI_OPT_COMMAND_BASE };

/* --capture wal: sets up the slot and the publication after the schema,
 * and says what it made and what the server will keep for it. */
static int setup_wal(const char *cmd, outbox_store *store, const char *shown)
{
    outbox_wal_slot w;
    outbox_error err = {0, ""};
    int rc = outbox_store_wal_setup(store, NULL, NULL, &w, sizeof w, &err);

    if (rc != OUTBOX_OK) return cli_fail(cmd, rc, &err);
    if (w.created)
        printf("%s: created the replication slot %s and the publication %s for WAL capture\n",
               shown, w.slot, w.publication);
    else
        printf("%s: the replication slot %s and the publication %s for WAL capture are in place\n",
               shown, w.slot, w.publication);
    if (w.keep_size_mb < 0)
        cli_log(OUTBOX_LOG_WARN, cmd,
                "max_slot_wal_keep_size is -1 (unlimited): while no relay reads the slot %s, "
                "PostgreSQL keeps all WAL written since until the disk fills; set a limit the "
                "disk can hold (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '20GB'; SELECT "
                "pg_reload_conf()), and alert on outbox_wal_slot_lag_bytes well below it (past "
                "it the slot is lost and the relay cannot resume: docs/WAL.md)",
                w.slot);
    return CLI_EXIT_OK;
}

/* Creates or upgrades the schema.  Exit 0, 1 (store error, newer schema) or 2. */
int cmd_init(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, 's'},
        {"capture", required_argument, NULL, OPT_CAPTURE},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "init", *store_opt = NULL, *url = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    char shown[512];
    int c, rc, from = 0, to = 0, wal = 0;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case 's':
            store_opt = optarg;
            break;
        case OPT_CAPTURE:
            if (strcmp(optarg, "wal") != 0 && strcmp(optarg, "table") != 0)
                return cli_usage(cmd, "--capture '%s' is not known; use table (the default) or wal",
                                 optarg);
            wal = strcmp(optarg, "wal") == 0;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; init takes only options", argv[optind]);
    if ((rc = cli_store_connect(cmd, store_opt, &store, &url)) != CLI_EXIT_OK) return rc;
    if (wal && strcmp(outbox_store_scheme(store), "postgres") != 0 &&
        strcmp(outbox_store_scheme(store), "postgresql") != 0) {
        rc = cli_usage(cmd, "--capture wal needs a PostgreSQL store (postgres://...), not %s:",
                       outbox_store_scheme(store));
        goto out;
    }

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
    rc = wal ? setup_wal(cmd, store, shown) : CLI_EXIT_OK;
out:
    outbox_store_close(store);
    return rc;
}
