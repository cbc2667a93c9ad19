/*
 * wal.c - `outbox wal drop-slot`: removes what `outbox init --capture wal`
 * set up on a PostgreSQL server, the logical replication slot and the
 * publication (docs/WAL.md).  A slot nobody reads keeps WAL on the server
 * forever, so this is how WAL capture is taken out of service.  It
 * refuses while a relay streams from the slot: dropping the slot under a
 * running relay would lose what it has not confirmed yet.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox wal drop-slot --store URL [--slot NAME] [--publication NAME]\n"
    "\n"
    "Drops the logical replication slot and the publication that\n"
    "`outbox init --capture wal` created for a relay reading the WAL\n"
    "(capture=wal).  While the slot exists and no relay reads it, PostgreSQL\n"
    "keeps every WAL file written since the relay last confirmed; drop it when\n"
    "WAL capture is no longer used.  Messages emitted to the WAL and not yet\n"
    "relayed are lost with it.  Refuses (exit 1) while a relay streams from\n"
    "the slot, naming the PostgreSQL backend pid of its stream: stop that\n"
    "relay first.  Names that do not exist are not an error.\n"
    "\n"
    "Options:\n"
    "  --store URL          the PostgreSQL database (required; default\n"
    "                       $OUTBOX_STORE)\n"
    "  --slot NAME          the slot (default: the URL's slot=, else\n"
    "                       outbox_<schema>)\n"
    "  --publication NAME   the publication (default: the URL's publication=,\n"
    "                       else outbox_<schema>)\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox wal drop-slot --store postgres://outbox@db/shop\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_SLOT, OPT_PUBLICATION };

static int drop_slot(const char *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"slot", required_argument, NULL, OPT_SLOT},
        {"publication", required_argument, NULL, OPT_PUBLICATION},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *store_opt = NULL, *url = NULL, *slot = NULL, *pub = NULL;
    outbox_store *store = NULL;
    outbox_wal_slot w;
    outbox_error err = {0, ""};
    char shown[512];
    int c, rc;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_SLOT:
            slot = optarg;
            break;
        case OPT_PUBLICATION:
            pub = optarg;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox wal --help", argv[optind]);
    if ((rc = cli_store_connect(cmd, store_opt, &store, &url)) != CLI_EXIT_OK) return rc;
    outbox_url_redact(url, shown, sizeof shown);
    rc = outbox_store_wal_drop(store, slot, pub, &w, sizeof w, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    if (w.exists)
        printf("%s: dropped the replication slot %s (it held %lld bytes of WAL)", shown, w.slot,
               (long long)w.lag_bytes);
    else
        printf("%s: no replication slot %s", shown, w.slot);
    if (w.publication_kept)
        printf("; kept the publication %s: another pgoutput slot of this database may stream "
               "with it (it holds no tables; DROP PUBLICATION %s once no relay uses it)\n",
               w.publication, w.publication);
    else
        printf("%s the publication %s%s\n", w.exists ? " and dropped" : "; dropped", w.publication,
               w.exists ? "" : " if it existed");
    rc = CLI_EXIT_OK;
out:
    outbox_store_close(store);
    return rc;
}

/* `outbox wal SUBCOMMAND`.  Exit 0, 1 (store error, slot in use) or 2. */
int cmd_wal(int argc, char **argv)
{
    static const struct option options[] = {CLI_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    const char *cmd = "wal";
    int c, rc;

    /* "+": options before the subcommand only, as `outbox config` reads them. */
    while ((c = getopt_long(argc, argv, "+:h", options, NULL)) != -1)
        if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
    if (optind >= argc)
        return cli_usage(cmd, "a subcommand is required: outbox wal drop-slot --store URL");
    if (strcmp(argv[optind], "drop-slot") != 0)
        return cli_usage(cmd, "unknown subcommand '%s'; use outbox wal drop-slot --store URL",
                         argv[optind]);
    optind++;
    return drop_slot(cmd, argc, argv);
}
