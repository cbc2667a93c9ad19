/*
 * config_cmd.c - `outbox config check PATH`: reads a relay configuration
 * file (config.c) as `outbox relay --config PATH` and a SIGHUP would, with
 * the environment applied, and says whether it would run, without
 * connecting to any store or destination.  Exit 0 ("PATH: N relays, OK"),
 * or 2 with one "PATH:LINE: what; how to fix" line per problem.
 */
#include "config.h"

#include <string.h>

static const char usage[] =
    "usage: outbox config check PATH\n"
    "\n"
    "Checks a relay configuration file (outbox.conf(5)) without connecting to\n"
    "anything: its syntax, every key (unknown ones with a suggestion) and value,\n"
    "the URLs' schemes against this build's drivers, destination settings\n"
    "(to-opt.KEY) against the driver's table, secret files (readable, and not by\n"
    "other users), and relays that would collide (two on one store, one\n"
    "destination with different settings, a name given twice).  The environment\n"
    "overrides are applied as `outbox relay --config` applies them.\n"
    "\n"
    "Exit 0 and \"PATH: N relays, OK\" on stdout; exit 2 with one line per\n"
    "problem on stderr: outbox config: PATH:LINE: what is wrong; how to fix.\n"
    "`outbox help config --keys` lists the keys.\n"
    "\n"
    "Options:\n" CLI_GLOBAL_HELP;

int cmd_config(int argc, char **argv)
{
    static const struct option options[] = {CLI_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    const char *cmd = "config";
    cli_config *config = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "+:h", options, NULL)) != -1)
        if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
    if (optind >= argc) return cli_usage(cmd, "a subcommand is required: outbox config check PATH");
    if (strcmp(argv[optind], "check") != 0)
        return cli_usage(cmd, "unknown subcommand '%s'; use outbox config check PATH",
                         argv[optind]);
    optind++;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1)
        if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
    if (optind + 1 != argc)
        return cli_usage(cmd, "config check takes one PATH; e.g. outbox config check "
                              "/etc/outbox/example.conf");
    if ((rc = cli_config_load(cmd, argv[optind], NULL, 0, &config)) != CLI_EXIT_OK) return rc;
    printf("%s: %zu relay%s, OK\n", argv[optind], config->relay_count,
           config->relay_count == 1 ? "" : "s");
    cli_config_free(config);
    return CLI_EXIT_OK;
}
