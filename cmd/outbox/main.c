/*
 * main.c - the `outbox` command: global options, then dispatch of the
 * subcommand through one table {name, function, summary}, like git's
 * builtins.  Global options (--log-level, --log-format) may come before the
 * command name; every command also accepts them after it.
 */
#include "cli.h"
#include "config.h"

#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"init", cmd_init, "create or upgrade the outbox tables in a store"},
    {"enqueue", cmd_enqueue, "add one message to the outbox (prints its id)"},
    {"relay", cmd_relay, "publish committed messages to a destination, at least once"},
    {"status", cmd_status, "counts, blocked messages, relay lease; --check exits 1 past a limit"},
    {"list", cmd_list, "list messages, optionally by status"},
    {"show", cmd_show, "show one message with all its fields"},
    {"retry", cmd_retry, "requeue Failed messages"},
    {"drop", cmd_drop, "delete Failed messages, archiving them first with --archive"},
    {"purge", cmd_purge, "delete sent messages (and old inbox entries)"},
    {"config", cmd_config, "check a relay configuration file (outbox relay --config)"},
    {"wal", cmd_wal, "PostgreSQL WAL capture: drop-slot removes the replication slot"},
};

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static void print_help(FILE *out)
{
    fprintf(out, "usage: outbox [--log-level L] [--log-format F] COMMAND [OPTIONS]\n"
                 "\n"
                 "A transactional outbox: messages written in the same database transaction\n"
                 "as the business change, published afterwards at least once.\n"
                 "\n"
                 "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n"
                 "Global options:\n"
                 "  --log-level L    debug, info, warn or error (default info)\n"
                 "  --log-format F   text or json (default text); logs go to stderr\n"
                 "  --version        print the version and exit\n"
                 "  -h, --help       show this help; `outbox help COMMAND` or\n"
                 "                   `outbox COMMAND --help` for a command;\n"
                 "                   `outbox help drivers` for the stores and destinations,\n"
                 "                   `outbox help config --keys` for the configuration file\n"
                 "\n"
                 "Environment: OUTBOX_STORE stands in for --store, OUTBOX_TO for --to.\n"
                 "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.\n"
                 "\n"
                 "Example:\n"
                 "  outbox init --store sqlite:app.db\n"
                 "  outbox enqueue --store sqlite:app.db --type OrderPlaced --aggregate-id 42 \\\n"
                 "      --payload '{\"total\":12.5}'\n"
                 "  outbox relay --store sqlite:app.db --to file:events.jsonl --once\n");
}

/* `outbox help [COMMAND | drivers [--markdown] | config --markdown]` */
static int run_help(int argc, char **argv)
{
    const command *cmd;
    char help_flag[] = "--help";
    char *sub_argv[3];
    if (argc < 2) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "drivers") == 0) return cli_help_drivers(argc - 1, argv + 1);
    if (strcmp(argv[1], "config") == 0 && argc > 2) return cli_help_config(argc - 1, argv + 1);
    cmd = find_command(argv[1]);
    if (!cmd)
        return cli_usage("help", "unknown command '%s'; run outbox --help for the list", argv[1]);
    sub_argv[0] = argv[1];
    sub_argv[1] = help_flag;
    sub_argv[2] = NULL;
    optind = 0;
    opterr = 0;
    return cmd->fn(2, sub_argv);
}

/* Value of a global option written "--name VALUE" or "--name=VALUE" at
 * argv[*i]; advances *i past a separate value.  NULL when argv[*i] is not
 * that option; *missing set when the value is absent. */
static const char *global_value(const char *name, int argc, char **argv, int *i, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    *missing = 0;
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

int cli_log_flags_given;

/* Exit code: 0 success, 1 runtime failure, 2 usage or configuration error. */
int main(int argc, char **argv)
{
    const command *cmd;
    int i;
    cli_log_install();

    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        const char *v;
        int missing, rc;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help(stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("outbox %s (liboutbox %s)\n", OUTBOX_VERSION_STRING, outbox_version());
            fputs("stores: ", stdout);
            cli_scheme_names(stdout, CLI_STORES);
            fputs("\ndestinations: ", stdout);
            cli_scheme_names(stdout, CLI_DESTINATIONS);
            fputs("\n", stdout);
            return CLI_EXIT_OK;
        }
        if ((v = global_value("--log-level", argc, argv, &i, &missing)) || missing) {
            if (missing)
                return cli_usage("", "--log-level needs a value: debug, info, warn or error");
            if ((rc = cli_set_log_level("", v)) != CLI_EXIT_OK) return rc;
            cli_log_flags_given |= 1;
            continue;
        }
        if ((v = global_value("--log-format", argc, argv, &i, &missing)) || missing) {
            if (missing) return cli_usage("", "--log-format needs a value: text or json");
            if ((rc = cli_set_log_format("", v)) != CLI_EXIT_OK) return rc;
            cli_log_flags_given |= 2;
            continue;
        }
        return cli_usage("", "unknown option %s before the command; run outbox --help", argv[i]);
    }
    if (i >= argc) {
        print_help(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[i], "help") == 0) return run_help(argc - i, argv + i);
    cmd = find_command(argv[i]);
    if (!cmd) return cli_usage("", "unknown command '%s'; run outbox --help for the list", argv[i]);
    optind = 0; /* glibc: full re-initialisation of getopt for the command */
    opterr = 0; /* commands print their own messages */
    return cmd->fn(argc - i, argv + i);
}
