/*
 * relay.c - `outbox relay`: runs the relay loop (src/relay) from a store to
 * a destination until SIGINT/SIGTERM, or with --once until nothing is due.
 *
 * Options are checked here (numbers, durations, enums) and again by
 * outbox_relay_new (ranges, URLs, the store's schema), all before the lease
 * is taken.  The signal handlers only call outbox_relay_stop(), which is
 * async-signal-safe; the in-flight batch is finished and recorded, the lease
 * released, and the command exits 0.
 */
#include "cli.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: outbox relay --store URL --to URL [--once] [--batch N] [--max-attempts N]\n"
    "                    [--backoff-base DUR] [--backoff-max DUR] [--on-sent delete|mark]\n"
    "                    [--failed-blocks yes|no] [--poll-interval DUR] [--lease-ttl DUR]\n"
    "                    [--wait-lease] [--source URI] [--name NAME] [--to-opt KEY=VALUE]...\n"
    "\n"
    "Publishes committed outbox messages to a destination, at least once, in\n"
    "enqueue order per aggregate, and marks them sent once the destination has\n"
    "confirmed them.  Runs until SIGINT or SIGTERM (then exits 0), or with\n"
    "--once until nothing is due.  One relay per SQLite outbox: a second one\n"
    "exits 1 unless --wait-lease is given.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --to URL             destination (required; default $OUTBOX_TO):\n"
    "                       stdout:, file:PATH (CloudEvents JSON lines, fsynced),\n"
    "                       discard: (confirms everything, for benchmarks)\n"
    "  --once               publish what is due, then exit\n"
    "  --batch N            messages claimed at once, 1..100000 (default 512)\n"
    "  --max-attempts N     attempts before a message is Failed (default 10)\n"
    "  --backoff-base DUR   first retry delay cap (default 500ms)\n"
    "  --backoff-max DUR    largest retry delay cap (default 5m)\n"
    "  --on-sent MODE       delete: remove confirmed messages (default);\n"
    "                       mark: keep them as sent, for outbox purge\n"
    "  --failed-blocks B    yes: a Failed message holds back later messages of its\n"
    "                       aggregate until retried or purged (default yes); no: they go on\n"
    "  --poll-interval DUR  fallback full check for new messages (default 1s)\n"
    "  --lease-ttl DUR      relay lease lifetime, at least 1s (default 10s)\n"
    "  --wait-lease         stand by while another relay holds the lease (default: exit 1)\n"
    "  --source URI         CloudEvents source attribute (default /outbox)\n"
    "  --name NAME          relay name shown in status (default host:pid)\n"
    "  --to-opt KEY=VALUE   a destination setting (repeatable), the same keys as the\n"
    "                       destination URL's query parameters; for settings that\n"
    "                       cannot go in the URL (an HTTP target's query is its own)\n"
    CLI_GLOBAL_HELP
    "\n"
    "Durations: 500ms, 30s, 5m, 2h, 7d (a bare number is seconds).\n"
    "\n"
    "Example:\n"
    "  outbox relay --store sqlite:app.db --to file:events.jsonl --on-sent mark\n";

enum {
    OPT_STORE = CLI_OPT_COMMAND_BASE,
    OPT_TO,
    OPT_ONCE,
    OPT_BATCH,
    OPT_MAX_ATTEMPTS,
    OPT_BACKOFF_BASE,
    OPT_BACKOFF_MAX,
    OPT_ON_SENT,
    OPT_FAILED_BLOCKS,
    OPT_POLL_INTERVAL,
    OPT_LEASE_TTL,
    OPT_WAIT_LEASE,
    OPT_SOURCE,
    OPT_NAME,
    OPT_TO_OPT
};

/* Most --to-opt settings one relay takes. */
#define MAX_TO_OPTS 64

/* The relay the signal handlers stop, set once it exists; and whether a
 * stop signal came before that (during start-up), so it is not lost. */
static outbox_relay *volatile running_relay;
static volatile sig_atomic_t stop_signalled;

static void on_stop_signal(int sig)
{
    outbox_relay *relay = running_relay;
    (void)sig;
    stop_signalled = 1;
    if (relay)
        outbox_relay_stop(relay);
}

static void set_handler(int sig, void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* Parses a duration option into an unsigned millisecond field. */
static int duration_option(const char *cmd, const char *opt, const char *text, unsigned *out)
{
    int64_t ms = 0;
    int rc = cli_parse_duration(cmd, opt, text, (int64_t)UINT_MAX, &ms);
    if (rc == CLI_EXIT_OK)
        *out = (unsigned)ms;
    return rc;
}

/* Runs the relay.  Exit 0 after a graceful stop or a finished --once; 1 for
 * a runtime failure (lease held by another relay, lease lost, store error,
 * missing schema); 2 for bad options or URLs. */
int cmd_relay(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"to", required_argument, NULL, OPT_TO},
        {"once", no_argument, NULL, OPT_ONCE},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"max-attempts", required_argument, NULL, OPT_MAX_ATTEMPTS},
        {"backoff-base", required_argument, NULL, OPT_BACKOFF_BASE},
        {"backoff-max", required_argument, NULL, OPT_BACKOFF_MAX},
        {"on-sent", required_argument, NULL, OPT_ON_SENT},
        {"failed-blocks", required_argument, NULL, OPT_FAILED_BLOCKS},
        {"poll-interval", required_argument, NULL, OPT_POLL_INTERVAL},
        {"lease-ttl", required_argument, NULL, OPT_LEASE_TTL},
        {"wait-lease", no_argument, NULL, OPT_WAIT_LEASE},
        {"source", required_argument, NULL, OPT_SOURCE},
        {"name", required_argument, NULL, OPT_NAME},
        {"to-opt", required_argument, NULL, OPT_TO_OPT},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "relay", *store_opt = NULL, *url = NULL, *to = NULL;
    outbox_relay_options opts;
    outbox_relay *relay = NULL;
    const char *to_opts[MAX_TO_OPTS + 1];
    size_t to_opt_count = 0;
    outbox_error err = {0, ""};
    uint64_t n;
    int c, rc;

    outbox_relay_options_init(&opts);
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        rc = CLI_EXIT_OK;
        switch (c) {
        case OPT_STORE: store_opt = optarg; break;
        case OPT_TO: to = optarg; break;
        case OPT_ONCE: opts.once = 1; break;
        case OPT_WAIT_LEASE: opts.wait_for_lease = 1; break;
        case OPT_SOURCE: opts.source = optarg; break;
        case OPT_NAME: opts.name = optarg; break;
        case OPT_TO_OPT:
            if (!strchr(optarg, '=') || optarg[0] == '=')
                rc = cli_usage(cmd, "--to-opt '%s' is not KEY=VALUE", optarg);
            else if (to_opt_count == MAX_TO_OPTS)
                rc = cli_usage(cmd, "more than %d --to-opt settings", MAX_TO_OPTS);
            else
                to_opts[to_opt_count++] = optarg;
            break;
        case OPT_BATCH:
            if ((rc = cli_parse_uint(cmd, "--batch", optarg, 1, 100000, &n)) == CLI_EXIT_OK)
                opts.batch_size = (unsigned)n;
            break;
        case OPT_MAX_ATTEMPTS:
            if ((rc = cli_parse_uint(cmd, "--max-attempts", optarg, 1, 1000000, &n)) == CLI_EXIT_OK)
                opts.max_attempts = (unsigned)n;
            break;
        case OPT_BACKOFF_BASE:
            rc = duration_option(cmd, "--backoff-base", optarg, &opts.backoff_base_ms);
            break;
        case OPT_BACKOFF_MAX:
            rc = duration_option(cmd, "--backoff-max", optarg, &opts.backoff_max_ms);
            break;
        case OPT_POLL_INTERVAL:
            rc = duration_option(cmd, "--poll-interval", optarg, &opts.poll_interval_ms);
            break;
        case OPT_LEASE_TTL:
            rc = duration_option(cmd, "--lease-ttl", optarg, &opts.lease_ttl_ms);
            break;
        case OPT_ON_SENT:
            if (strcmp(optarg, "delete") == 0)
                opts.on_sent = OUTBOX_ON_SENT_DELETE;
            else if (strcmp(optarg, "mark") == 0)
                opts.on_sent = OUTBOX_ON_SENT_MARK;
            else
                rc = cli_usage(cmd, "--on-sent '%s' is not a mode; use delete or mark", optarg);
            break;
        case OPT_FAILED_BLOCKS:
            if (strcmp(optarg, "yes") == 0)
                opts.failed_blocks_aggregate = 1;
            else if (strcmp(optarg, "no") == 0)
                opts.failed_blocks_aggregate = 0;
            else
                rc = cli_usage(cmd, "--failed-blocks '%s' is not yes or no; use yes or no", optarg);
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE)
                return rc;
            rc = CLI_EXIT_OK;
        }
        if (rc != CLI_EXIT_OK)
            return rc;
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox relay --help", argv[optind]);
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK)
        return rc;
    if (!to || !to[0])
        to = getenv("OUTBOX_TO");
    if (!to || !to[0])
        return cli_usage(cmd, "--to is required (the destination, e.g. --to file:events.jsonl "
                              "or --to stdout:); or set OUTBOX_TO");
    if (opts.backoff_max_ms < opts.backoff_base_ms)
        return cli_usage(cmd, "--backoff-max (%u ms) is shorter than --backoff-base (%u ms); "
                              "make it at least as long", opts.backoff_max_ms, opts.backoff_base_ms);

    to_opts[to_opt_count] = NULL;
    opts.destination_options = to_opts;

    /* Handlers first: a SIGTERM during start-up is a clean stop too. */
    set_handler(SIGPIPE, SIG_IGN);
    set_handler(SIGINT, on_stop_signal);
    set_handler(SIGTERM, on_stop_signal);
    if ((rc = outbox_relay_new(&relay, url, to, &opts, &err)) != OUTBOX_OK) {
        set_handler(SIGINT, SIG_DFL);
        set_handler(SIGTERM, SIG_DFL);
        return cli_fail(cmd, rc, &err);
    }
    running_relay = relay;
    if (stop_signalled)
        outbox_relay_stop(relay);

    rc = outbox_relay_run(relay, &err);

    set_handler(SIGINT, SIG_DFL);
    set_handler(SIGTERM, SIG_DFL);
    running_relay = NULL;

    if (rc == OUTBOX_OK || rc == OUTBOX_ESTOPPED)
        rc = CLI_EXIT_OK;
    else
        rc = cli_fail(cmd, rc, &err);
    outbox_relay_free(relay);
    return rc;
}
