/*
 * relay.c - `outbox relay`: runs the relay loop (src/relay) from a store to
 * a destination until SIGINT/SIGTERM, or with --once until nothing is due.
 *
 * Options are checked here (numbers, durations, enums, the URLs' schemes
 * against the build's registries) and again by outbox_relay_new (ranges,
 * URLs, the store's schema), all before the lease is taken.
 *
 * Signals are taken by a thread of their own (sigwait), not by handlers:
 * SIGINT and SIGTERM call outbox_relay_stop (the in-flight batch is
 * finished and recorded, the lease released, exit 0), SIGHUP calls
 * outbox_relay_reopen (log rotation).  So both can be logged like any
 * other event, and no library thread is interrupted by them.
 *
 * --listen starts the library's monitor (outbox_monitor) beside the relay:
 * /metrics, /healthz, /readyz and the web console, on a loopback address
 * unless --listen-public.  The admin token is read from a file that other
 * users cannot read, and never logged.
 */
#include "cli.h"
#include "notify.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void print_usage(FILE *out)
{
    fputs(
        "usage: outbox relay --store URL --to URL [--once] [--batch N] [--max-attempts N]\n"
        "                    [--backoff-base DUR] [--backoff-max DUR] [--on-sent delete|mark]\n"
        "                    [--failed-blocks yes|no] [--poll-interval DUR] [--lease-ttl DUR]\n"
        "                    [--wait-lease] [--source URI] [--name NAME] [--to-opt KEY=VALUE]...\n"
        "                    [--max-message-bytes N] [--max-field-bytes N] [--connect-timeout "
        "DUR]\n"
        "                    [--listen ADDR:PORT [--listen-public] [--admin-token-file PATH]\n"
        "                     [--metrics-refresh DUR]]\n"
        "\n"
        "Publishes committed outbox messages to a destination, at least once, in\n"
        "enqueue order per aggregate, and marks them sent once the destination has\n"
        "confirmed them.  Runs until SIGINT or SIGTERM (then exits 0), or with\n"
        "--once until nothing is due.  SIGHUP reopens the destination's files (for\n"
        "logrotate).  One relay per SQLite outbox: a second one, whatever its\n"
        "--name, exits 1 naming the holder unless --wait-lease is given.\n"
        "\n"
        "A message is retried with backoff and after --max-attempts becomes Failed\n"
        "with its last error.  Only a failure of the message spends an attempt (the\n"
        "destination received and rejected it, or it failed while others in its\n"
        "batch succeeded); a failure of the destination itself (disk full, I/O\n"
        "error, connection refused, DNS, TLS, 5xx for a whole batch) backs off the\n"
        "whole destination and charges nothing.\n" CLI_FAILED_HELP "\n"
        "Options:\n"
        "  --store URL          the database (required; default $OUTBOX_STORE)\n"
        "  --to URL             destination (required; default $OUTBOX_TO), see below\n"
        "  --once               publish what is due, then exit: 0 when all of it was\n"
        "                       published, 1 when any publication failed (retried or Failed)\n"
        "  --batch N            messages claimed at once, 1..100000 (default 512)\n"
        "  --max-attempts N     attempts before a message is Failed (default 10)\n"
        "  --backoff-base DUR   first retry delay cap (default 500ms)\n"
        "  --backoff-max DUR    largest retry delay cap (default 5m)\n"
        "  --on-sent MODE       delete: remove confirmed messages (default);\n"
        "                       mark: keep them as sent, for outbox purge\n"
        "  --failed-blocks B    yes: a Failed message holds back later messages of its\n"
        "                       aggregate until retried or dropped (default yes); no: they go on\n"
        "  --poll-interval DUR  fallback full check for new messages (default 1s)\n"
        "  --lease-ttl DUR      relay lease lifetime, at least 1s (default 10s)\n"
        "  --connect-timeout DUR  how long to wait at start-up for a store or destination\n"
        "                       that cannot be reached yet, retrying with backoff and\n"
        "                       logging once per change (default: for ever; 30s with\n"
        "                       --once; 0: exit 1 at once)\n"
        "  --wait-lease         stand by while another relay holds the lease (default: exit 1)\n"
        "  --source URI         CloudEvents source attribute (default /outbox)\n"
        "  --name NAME          relay name shown in status (default host:pid)\n"
        "  --to-opt KEY=VALUE   a destination setting (repeatable), the same keys as the\n"
        "                       destination URL's query parameters; for settings that\n"
        "                       cannot go in the URL (an HTTP target's query is its own)\n"
        "  --max-message-bytes N  largest stored message it accepts (default 1048576);\n"
        "                       larger rows are set Failed: match what enqueuers allow\n"
        "  --max-field-bytes N  largest type, aggregate type and id (default 256), "
        "likewise\n"
        "  --listen ADDR:PORT   serve monitoring on this address (default: off):\n"
        "                       /metrics (Prometheus), /healthz, /readyz and a web console\n"
        "                       at /; 127.0.0.1:9464, [::1]:9464, port 0: any free port\n"
        "  --listen-public      allow a --listen address that is not loopback\n"
        "  --admin-token-file PATH  a file holding the token that allows the console's\n"
        "                       retry and drop (sent as Authorization: Bearer); it must\n"
        "                       not be readable by other users.  Without it: read-only\n"
        "  --metrics-refresh DUR  how often the monitor queries the store's counts\n"
        "                       (default 5s)\n" CLI_GLOBAL_HELP "\n"
        "Stores in this build:\n",
        out);
    cli_drivers_help(out, CLI_STORES, 1);
    fputs("\nDestinations in this build (settings as URL query parameters or --to-opt;\n"
          "`outbox help drivers` lists every driver):\n",
          out);
    cli_drivers_help(out, CLI_DESTINATIONS, 1);
    fputs("\n" CLI_STDOUT_HELP "\n"
          "Durations: 500ms, 30s, 5m, 2h, 7d (a bare number is seconds).\n"
          "\n"
          "Example:\n"
          "  outbox relay --store sqlite:app.db --to file:events.jsonl --on-sent mark\n",
          out);
}

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
    OPT_TO_OPT,
    OPT_MAX_MESSAGE_BYTES,
    OPT_MAX_FIELD_BYTES,
    OPT_CONNECT_TIMEOUT,
    OPT_LISTEN,
    OPT_LISTEN_PUBLIC,
    OPT_ADMIN_TOKEN_FILE,
    OPT_METRICS_REFRESH
};

/* Most --to-opt settings one relay takes. */
#define MAX_TO_OPTS 64

/* ------------------------------------------------------------------------
 * Signals
 * ---------------------------------------------------------------------- */

/* What the signal thread acts on, under signal_lock: the relay once it
 * exists, and what was asked before it did (a stop or a reopen during
 * start-up is not lost). */
static pthread_mutex_t signal_lock = PTHREAD_MUTEX_INITIALIZER;
static outbox_relay *signal_relay;
static int stop_asked, reopen_asked;
static sigset_t signal_set;

static void *signal_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&signal_set, &sig) != 0) continue;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        pthread_mutex_lock(&signal_lock);
        if (sig == SIGHUP) {
            cli_log(OUTBOX_LOG_INFO, "relay", "SIGHUP: reopening destination files");
            if (signal_relay)
                outbox_relay_reopen(signal_relay);
            else
                reopen_asked = 1;
        } else {
            cli_log(OUTBOX_LOG_INFO, "relay", "%s: stopping after the batch in flight",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
            stop_asked = 1;
            if (signal_relay) outbox_relay_stop(signal_relay);
            cli_notify_stopping();
        }
        pthread_mutex_unlock(&signal_lock);
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
    }
    return NULL;
}

/* Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread
 * the relay starts later) and starts the thread that takes them.  Returns
 * 0, or -1 when the thread cannot be started (errno-style failure). */
static int signals_start(pthread_t *thread)
{
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, NULL); /* a closed pipe is an error to report, not a death */

    sigemptyset(&signal_set);
    sigaddset(&signal_set, SIGINT);
    sigaddset(&signal_set, SIGTERM);
    sigaddset(&signal_set, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &signal_set, NULL) != 0) return -1;
    return pthread_create(thread, NULL, signal_thread, NULL) == 0 ? 0 : -1;
}

/* Hands the relay to the signal thread (NULL: takes it back), applying
 * what was asked before it existed. */
static void signals_attach(outbox_relay *relay)
{
    pthread_mutex_lock(&signal_lock);
    signal_relay = relay;
    if (relay && stop_asked) outbox_relay_stop(relay);
    if (relay && reopen_asked) outbox_relay_reopen(relay);
    reopen_asked = 0;
    pthread_mutex_unlock(&signal_lock);
}

/* Ends the signal thread.  The signals stay blocked: one arriving now is
 * left pending and the process exits with the code it was going to. */
static void signals_stop(pthread_t thread)
{
    pthread_cancel(thread);
    pthread_join(thread, NULL);
}

/* Whether a start-up failure is the store or the destination not being
 * reachable yet (connection refused, a server starting, a locked file),
 * which a daemon waits out, rather than a mistake to report at once. */
static int startup_retriable(int rc)
{
    return rc == OUTBOX_EIO || rc == OUTBOX_EBUSY || rc == OUTBOX_EPUBLISH;
}

static int stop_was_asked(void)
{
    int asked;
    pthread_mutex_lock(&signal_lock);
    asked = stop_asked;
    pthread_mutex_unlock(&signal_lock);
    return asked;
}

/* outbox_relay_new, retried with backoff (250 ms doubling to 10 s) while
 * the store or the destination cannot be reached, for up to timeout_ms
 * (-1: for ever, 0: no retry).  Logs when it starts waiting, when the
 * reason changes and when it is over.  OUTBOX_ESTOPPED when SIGINT/SIGTERM
 * came while waiting. */
static int relay_new_waiting(outbox_relay **relay, const char *url, const char *to,
                             const outbox_relay_options *opts, int64_t timeout_ms,
                             outbox_error *err)
{
    int64_t start = cli_monotonic_us(), pause_ms = 250;
    char last[sizeof err->message] = "";
    int rc;

    for (;;) {
        int64_t waited_ms;
        rc = outbox_relay_new(relay, url, to, opts, err);
        waited_ms = (cli_monotonic_us() - start) / 1000;
        if (rc == OUTBOX_OK) {
            if (last[0])
                cli_log(OUTBOX_LOG_INFO, "relay", "connected after waiting %lld s",
                        (long long)(waited_ms / 1000));
            return OUTBOX_OK;
        }
        if (!startup_retriable(rc) || timeout_ms == 0) return rc;
        if (timeout_ms > 0 && waited_ms >= timeout_ms) {
            char why[sizeof err->message];
            snprintf(why, sizeof why, "%s", err->message);
            return cli_error(err, rc, "%.400s; gave up after %lld s (--connect-timeout)", why,
                             (long long)(waited_ms / 1000));
        }
        if (strcmp(last, err->message) != 0) {
            cli_log(OUTBOX_LOG_WARN, "relay",
                    "waiting for the store and the destination: %s; retrying%s", err->message,
                    timeout_ms > 0 ? " until --connect-timeout" : "");
            snprintf(last, sizeof last, "%s", err->message);
        }
        if (timeout_ms > 0 && pause_ms > timeout_ms - waited_ms) pause_ms = timeout_ms - waited_ms;
        for (int64_t slept = 0; slept < pause_ms; slept += 100) {
            if (stop_was_asked()) return OUTBOX_ESTOPPED;
            cli_sleep_us(100000);
        }
        if (pause_ms < 10000) pause_ms *= 2;
    }
}

/* Parses a duration option into an unsigned millisecond field. */
static int duration_option(const char *cmd, const char *opt, const char *text, unsigned *out)
{
    int64_t ms = 0;
    int rc = cli_parse_duration(cmd, opt, text, (int64_t)UINT_MAX, &ms);
    if (rc == CLI_EXIT_OK) *out = (unsigned)ms;
    return rc;
}

/* Largest admin token file read. */
#define MAX_TOKEN_BYTES 4096

/* Reads the admin token from path into a malloc'd string (trailing
 * newline stripped) in *token.  Refuses, like ssh does for keys, a file
 * other users can read or write. */
static int read_admin_token(const char *cmd, const char *path, char **token)
{
    struct stat st;
    char *text;
    size_t len;
    FILE *f;

    *token = NULL;
    f = fopen(path, "r");
    if (f == NULL) return cli_usage(cmd, "--admin-token-file %s cannot be read", path);
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return cli_usage(cmd, "--admin-token-file %s is not a regular file", path);
    }
    if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
        fclose(f);
        return cli_usage(cmd,
                         "--admin-token-file %s is accessible by other users (mode %04o); "
                         "restrict it: chmod 600 %s",
                         path, (unsigned)(st.st_mode & 07777), path);
    }
    text = calloc(1, MAX_TOKEN_BYTES + 1);
    if (text == NULL) {
        fclose(f);
        return cli_failure(cmd, "out of memory reading --admin-token-file");
    }
    len = fread(text, 1, MAX_TOKEN_BYTES + 1, f);
    fclose(f);
    if (len > MAX_TOKEN_BYTES) {
        free(text);
        return cli_usage(cmd, "--admin-token-file %s is larger than %d bytes", path,
                         MAX_TOKEN_BYTES);
    }
    text[len] = '\0';
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    if (len == 0 || strlen(text) != len || strpbrk(text, "\r\n") != NULL) {
        free(text);
        return cli_usage(cmd, "--admin-token-file %s must hold one line: the token", path);
    }
    *token = text;
    return CLI_EXIT_OK;
}

/* Forgets the token (no copy left in freed memory). */
static void free_admin_token(char *token)
{
    volatile char *p = token;
    if (token == NULL) return;
    while (*p)
        *p++ = '\0';
    free(token);
}

/* Starts the monitor for relay on opts->listen and logs where it
 * listens. */
static int monitor_start(const char *cmd, outbox_relay *relay, const outbox_monitor_options *opts,
                         outbox_monitor **monitor)
{
    outbox_error err = {0, ""};
    const char *colon = strrchr(opts->listen, ':');
    int rc = outbox_monitor_new(monitor, &relay, 1, opts, &err);
    if (rc != OUTBOX_OK) return cli_fail(cmd, rc, &err);
    cli_log(OUTBOX_LOG_INFO, "relay", "monitor listening on http://%.*s:%u",
            (int)(colon - opts->listen), opts->listen, outbox_monitor_port(*monitor));
    return CLI_EXIT_OK;
}

/* Says how a --once run went when not everything due was published, and
 * returns its exit code: CLI_EXIT_OK when every publication succeeded and
 * no message went Failed, CLI_EXIT_FAILURE (with one line on stderr)
 * otherwise, rows the store could not decode and set Failed included. */
static int once_outcome(const char *cmd, const outbox_relay *relay)
{
    outbox_relay_stats stats;
    uint64_t errors;

    outbox_relay_get_stats(relay, &stats);
    /* publish_errors counts every failed publication, charged or not;
     * retried + failed is a lower bound from the counters every relay has. */
    errors = stats.publish_errors;
    if (errors < stats.retried + stats.failed) errors = stats.retried + stats.failed;
    if (stats.quarantined > 0)
        return cli_failure(cmd,
                           "%llu stored message%s could not be read and went Failed; "
                           "%llu published, %llu publication%s failed; see outbox list "
                           "--status failed",
                           (unsigned long long)stats.quarantined, stats.quarantined == 1 ? "" : "s",
                           (unsigned long long)stats.published, (unsigned long long)errors,
                           errors == 1 ? "" : "s");
    if (errors == 0 && stats.failed == 0) return CLI_EXIT_OK;
    return cli_failure(cmd,
                       "not everything due was published: %llu published, %llu "
                       "publication%s failed (%llu to retry later, %llu now Failed); see "
                       "outbox status and outbox list --status failed",
                       (unsigned long long)stats.published, (unsigned long long)errors,
                       errors == 1 ? "" : "s", (unsigned long long)stats.retried,
                       (unsigned long long)stats.failed);
}

/* Runs the relay.  Exit 0 after a graceful stop or a --once run that
 * published everything due; 1 for a runtime failure (a --once run with a
 * failed publication, lease held by another relay, lease lost, store
 * error, missing schema); 2 for bad options or URLs. */
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
        {"max-message-bytes", required_argument, NULL, OPT_MAX_MESSAGE_BYTES},
        {"max-field-bytes", required_argument, NULL, OPT_MAX_FIELD_BYTES},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"listen-public", no_argument, NULL, OPT_LISTEN_PUBLIC},
        {"admin-token-file", required_argument, NULL, OPT_ADMIN_TOKEN_FILE},
        {"metrics-refresh", required_argument, NULL, OPT_METRICS_REFRESH},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "relay", *store_opt = NULL, *url = NULL, *to = NULL;
    outbox_relay_options opts;
    outbox_relay *relay = NULL;
    outbox_monitor_options monitor_opts;
    outbox_monitor *monitor = NULL;
    const char *token_file = NULL;
    char *token = NULL;
    int refresh_given = 0;
    const char *to_opts[MAX_TO_OPTS + 1];
    size_t to_opt_count = 0;
    outbox_error err = {0, ""};
    pthread_t signals;
    int64_t connect_timeout_ms = -2; /* -2: not given (the default), -1: for ever */
    uint64_t n, seen = 0;
    int c, rc;

    outbox_relay_options_init(&opts);
    outbox_monitor_options_init(&monitor_opts);
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (c != OPT_TO_OPT && (rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        rc = CLI_EXIT_OK;
        switch (c) {
        case 'h':
            print_usage(stdout);
            return CLI_EXIT_OK;
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_TO:
            to = optarg;
            break;
        case OPT_ONCE:
            opts.once = 1;
            break;
        case OPT_WAIT_LEASE:
            opts.wait_for_lease = 1;
            break;
        case OPT_SOURCE:
            opts.source = optarg;
            break;
        case OPT_NAME:
            opts.name = optarg;
            break;
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
        case OPT_MAX_MESSAGE_BYTES:
            if ((rc = cli_parse_uint(cmd, "--max-message-bytes", optarg, 1024, 1073741824, &n)) ==
                CLI_EXIT_OK)
                outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, (size_t)n);
            break;
        case OPT_CONNECT_TIMEOUT:
            rc = cli_parse_duration(cmd, "--connect-timeout", optarg, INT64_C(31536000000),
                                    &connect_timeout_ms);
            break;
        case OPT_MAX_FIELD_BYTES:
            if ((rc = cli_parse_uint(cmd, "--max-field-bytes", optarg, 16, 1048576, &n)) ==
                CLI_EXIT_OK)
                outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, (size_t)n);
            break;
        case OPT_LISTEN:
            monitor_opts.listen = optarg;
            break;
        case OPT_LISTEN_PUBLIC:
            monitor_opts.allow_public = 1;
            break;
        case OPT_ADMIN_TOKEN_FILE:
            token_file = optarg;
            break;
        case OPT_METRICS_REFRESH:
            refresh_given = 1;
            rc = duration_option(cmd, "--metrics-refresh", optarg, &monitor_opts.refresh_ms);
            if (rc == CLI_EXIT_OK &&
                (monitor_opts.refresh_ms < 100 || monitor_opts.refresh_ms > 3600000))
                rc =
                    cli_usage(cmd, "--metrics-refresh %s is out of range; use 100ms to 1h", optarg);
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
            if ((rc = cli_option(cmd, c, argv, "")) != CLI_CONTINUE) return rc;
            rc = CLI_EXIT_OK;
        }
        if (rc != CLI_EXIT_OK) return rc;
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox relay --help", argv[optind]);
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK) return rc;
    if (!to || !to[0]) to = getenv("OUTBOX_TO");
    if (!to || !to[0])
        return cli_usage(cmd, "--to is required (the destination, e.g. --to file:events.jsonl "
                              "or --to stdout:); or set OUTBOX_TO");
    if ((rc = cli_check_scheme(cmd, "store URL", url, CLI_STORES)) != CLI_EXIT_OK ||
        (rc = cli_check_scheme(cmd, "--to", to, CLI_DESTINATIONS)) != CLI_EXIT_OK)
        return rc;
    if (opts.backoff_max_ms < opts.backoff_base_ms)
        return cli_usage(cmd,
                         "--backoff-max (%u ms) is shorter than --backoff-base (%u ms); "
                         "make it at least as long",
                         opts.backoff_max_ms, opts.backoff_base_ms);

    if (monitor_opts.listen == NULL &&
        (monitor_opts.allow_public || token_file != NULL || refresh_given))
        return cli_usage(cmd, "--listen-public, --admin-token-file and --metrics-refresh go with "
                              "--listen ADDR:PORT");
    if (token_file != NULL) {
        if ((rc = read_admin_token(cmd, token_file, &token)) != CLI_EXIT_OK) return rc;
        monitor_opts.admin_token = token;
    }

    to_opts[to_opt_count] = NULL;
    opts.destination_options = to_opts;

    /* The signal thread first: a SIGTERM during start-up is a clean stop too. */
    if (signals_start(&signals) != 0)
        return cli_failure(cmd, "could not start the signal thread; check the process limits");
    if (connect_timeout_ms == -2) connect_timeout_ms = opts.once ? 30000 : -1;
    if ((rc = relay_new_waiting(&relay, url, to, &opts, connect_timeout_ms, &err)) != OUTBOX_OK) {
        signals_stop(signals);
        free_admin_token(token);
        if (rc == OUTBOX_ESTOPPED) return CLI_EXIT_OK;
        return cli_fail(cmd, rc, &err);
    }
    if (monitor_opts.listen != NULL &&
        (rc = monitor_start(cmd, relay, &monitor_opts, &monitor)) != CLI_EXIT_OK) {
        signals_stop(signals);
        free_admin_token(token);
        outbox_relay_free(relay);
        return rc;
    }
    free_admin_token(token); /* the monitor has its copy */
    signals_attach(relay);
    cli_notify_ready(relay, to);
    rc = outbox_relay_run(relay, &err);
    cli_notify_end();
    signals_attach(NULL);
    signals_stop(signals);
    outbox_monitor_free(monitor);

    if (rc == OUTBOX_OK || rc == OUTBOX_ESTOPPED) {
        rc = opts.once ? once_outcome(cmd, relay) : CLI_EXIT_OK;
    } else if (rc == OUTBOX_ELEASED && !strstr(err.message, "--wait-lease")) {
        /* The store says who holds the lease; what to do is the CLI's to say. */
        rc = cli_failure(cmd, "%s; stop it, or pass --wait-lease to stand by", err.message);
    } else {
        rc = cli_fail(cmd, rc, &err);
    }
    outbox_relay_free(relay);
    return rc;
}
