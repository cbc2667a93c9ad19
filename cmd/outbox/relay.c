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
#include "config.h"
#include "notify.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        "                     [--metrics-refresh DUR]] [--stop-timeout DUR]\n"
        "       outbox relay --config PATH [OPTIONS]\n"
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
        "                       (default 5s)\n"
        "  --stop-timeout DUR   how long SIGINT/SIGTERM waits for the batch in flight\n"
        "                       before exit 1 (default 30s)\n"
        "  --config PATH        run the relays of a configuration file (outbox.conf(5)),\n"
        "                       one thread each; its keys are these options without\n"
        "                       dashes; options given here override it for every relay.\n"
        "                       SIGHUP then re-reads it and starts, stops or restarts\n"
        "                       the relays that changed; `outbox config check` checks "
        "it\n" CLI_GLOBAL_HELP "\n"
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

/* ------------------------------------------------------------------------
 * Signals
 * ---------------------------------------------------------------------- */

/* What the signal thread acts on, under signal_lock: the relay once it
 * exists, and what was asked before it did (a stop or a reopen during
 * start-up is not lost).  With --config, SIGHUP only sets reload_asked:
 * the main thread reloads, and SIGTERM stops every relay (stop_all). */
static pthread_mutex_t signal_lock = PTHREAD_MUTEX_INITIALIZER;
static outbox_relay *signal_relay;
static int stop_asked, reopen_asked, reload_asked;
static void (*stop_all)(void); /* --config: stops every relay */
static sigset_t signal_set;

/* --stop-timeout: how long a stop may take before exit 1. */
static int64_t stop_timeout_ms = 30000;
static atomic_int stopped; /* set when every relay has stopped */
/* Names the relays that have not stopped yet, for the message. */
static void (*unstopped_names)(char *buf, size_t len);

static void *stop_deadline(void *arg)
{
    int64_t until = cli_monotonic_us() + stop_timeout_ms * 1000;
    char names[512] = "the relay";
    (void)arg;
    while (cli_monotonic_us() < until) {
        if (atomic_load(&stopped)) return NULL;
        cli_sleep_us(50000);
    }
    if (atomic_load(&stopped)) return NULL;
    if (unstopped_names) unstopped_names(names, sizeof names);
    cli_log(OUTBOX_LOG_ERROR, "relay",
            "%s did not stop within --stop-timeout (%lld ms); exiting 1 (their unconfirmed "
            "messages stay pending and are published again)",
            names, (long long)stop_timeout_ms);
    fflush(NULL);
    _exit(CLI_EXIT_FAILURE);
    return NULL;
}

static void *signal_thread(void *arg)
{
    int deadline_started = 0;
    (void)arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&signal_set, &sig) != 0) continue;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        pthread_mutex_lock(&signal_lock);
        if (sig == SIGHUP && stop_all) {
            cli_log(OUTBOX_LOG_INFO, "relay", "SIGHUP: reloading the configuration");
            reload_asked = 1;
        } else if (sig == SIGHUP) {
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
            if (stop_all) stop_all();
            cli_notify_stopping();
            if (!deadline_started) {
                pthread_t deadline;
                deadline_started = 1;
                if (pthread_create(&deadline, NULL, stop_deadline, NULL) == 0)
                    pthread_detach(deadline);
            }
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

/* Whether SIGINT/SIGTERM came, or (own_stop, when not NULL) this relay
 * alone is asked to stop. */
static int stop_was_asked(atomic_int *own_stop)
{
    int asked;
    pthread_mutex_lock(&signal_lock);
    asked = stop_asked;
    pthread_mutex_unlock(&signal_lock);
    return asked || (own_stop && atomic_load(own_stop));
}

/* outbox_relay_new, retried with backoff (250 ms doubling to 10 s) while
 * the store or the destination cannot be reached, for up to timeout_ms
 * (-1: for ever, 0: no retry).  Logs when it starts waiting, when the
 * reason changes and when it is over, naming the relay who (NULL: the one
 * relay of the process).  OUTBOX_ESTOPPED when SIGINT/SIGTERM (or own_stop)
 * came while waiting. */
static int relay_new_waiting(outbox_relay **relay, const char *who, const char *url, const char *to,
                             const outbox_relay_options *opts, int64_t timeout_ms,
                             atomic_int *own_stop, outbox_error *err)
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
                cli_log(OUTBOX_LOG_INFO, "relay", "%s%sconnected after waiting %lld s",
                        who ? who : "", who ? ": " : "", (long long)(waited_ms / 1000));
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
                    "%s%swaiting for the store and the destination: %s; retrying%s", who ? who : "",
                    who ? ": " : "", err->message,
                    timeout_ms > 0 ? " until --connect-timeout" : "");
            snprintf(last, sizeof last, "%s", err->message);
        }
        if (timeout_ms > 0 && pause_ms > timeout_ms - waited_ms) pause_ms = timeout_ms - waited_ms;
        for (int64_t slept = 0; slept < pause_ms; slept += 100) {
            if (stop_was_asked(own_stop)) return OUTBOX_ESTOPPED;
            cli_sleep_us(100000);
        }
        if (pause_ms < 10000) pause_ms *= 2;
    }
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

/* ------------------------------------------------------------------------
 * Several relays (--config)
 *
 * One thread per relay ("worker") runs outbox_relay_run.  A relay that
 * cannot start or whose run ends in an error is logged and started again
 * after a pause: it never stops the others or the process.  The monitor
 * serves the relays that exist at the moment; it is rebuilt (a short gap
 * in /metrics) whenever one appears or goes, since outbox_monitor_new
 * takes a fixed list and borrows it: a relay is freed only after a
 * monitor without it has replaced the one with it.
 * ---------------------------------------------------------------------- */

typedef struct worker {
    cli_config_relay *config; /* owned */
    pthread_t thread;
    atomic_int stop;      /* this relay is asked to stop */
    atomic_int done;      /* its thread has ended */
    atomic_int attempted; /* it has tried to start at least once */
    outbox_relay *relay;  /* the running relay, under workers_lock */
} worker;

static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static worker **workers;
static size_t worker_count;

/* The monitor over the workers' relays, under monitor_lock. */
static pthread_mutex_t monitor_lock = PTHREAD_MUTEX_INITIALIZER;
static outbox_monitor *shared_monitor;
static outbox_monitor_options shared_monitor_opts; /* listen NULL: no monitor */
static char monitor_asked[300];                    /* the listen address asked for */
static char monitor_listen[300];                   /* with the port bound first */
static outbox_relay **monitored;
static size_t monitored_count;

/* Makes the monitor serve the relays that exist now. */
static void monitor_sync(void)
{
    outbox_relay **now;
    size_t n = 0;
    int same;
    if (shared_monitor_opts.listen == NULL) return;
    pthread_mutex_lock(&monitor_lock);
    pthread_mutex_lock(&workers_lock);
    now = calloc(worker_count + 1, sizeof *now);
    for (size_t i = 0; now && i < worker_count; i++)
        if (workers[i]->relay) now[n++] = workers[i]->relay;
    pthread_mutex_unlock(&workers_lock);
    same = now && n == monitored_count && (n == 0 || memcmp(now, monitored, n * sizeof *now) == 0);
    if (same) {
        free(now);
        pthread_mutex_unlock(&monitor_lock);
        return;
    }
    outbox_monitor_free(shared_monitor);
    shared_monitor = NULL;
    free(monitored);
    monitored = now;
    monitored_count = now ? n : 0;
    if (monitored_count > 0) {
        outbox_error err = {0, ""};
        int rc = outbox_monitor_new(&shared_monitor, monitored, monitored_count,
                                    &shared_monitor_opts, &err);
        if (rc != OUTBOX_OK) {
            cli_log(OUTBOX_LOG_ERROR, "relay",
                    "monitor: %s (/metrics is off until the next "
                    "change of relays)",
                    err.message);
        } else if (monitor_listen[0] == '\0') {
            /* Rebuilt on the port it got first, even when it asked for port 0. */
            const char *listen = shared_monitor_opts.listen, *colon = strrchr(listen, ':');
            snprintf(monitor_listen, sizeof monitor_listen, "%.*s:%u", (int)(colon - listen),
                     listen, outbox_monitor_port(shared_monitor));
            shared_monitor_opts.listen = monitor_listen;
            cli_log(OUTBOX_LOG_INFO, "relay", "monitor listening on http://%s", monitor_listen);
        }
    }
    pthread_mutex_unlock(&monitor_lock);
}

/* Sleeps up to ms, less when the worker is asked to stop. */
static void worker_pause(worker *w, int64_t ms)
{
    for (int64_t slept = 0; slept < ms && !stop_was_asked(&w->stop); slept += 100)
        cli_sleep_us(100000);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    cli_settings *s = &w->config->settings;
    const char *name = w->config->name;
    int64_t pause_ms = 1000;

    s->to_opts[s->to_opt_count] = NULL;
    s->opts.destination_options = s->to_opts;
    while (!stop_was_asked(&w->stop)) {
        outbox_error err = {0, ""};
        outbox_relay *relay = NULL;
        int rc = relay_new_waiting(&relay, name, s->store, s->to, &s->opts,
                                   s->connect_timeout_ms == -2 ? -1 : s->connect_timeout_ms,
                                   &w->stop, &err);
        atomic_store(&w->attempted, 1);
        if (rc == OUTBOX_ESTOPPED) break;
        if (rc != OUTBOX_OK) {
            cli_log(OUTBOX_LOG_ERROR, "relay", "relay %s cannot start: %s; trying again in %lld s",
                    name, err.message[0] ? err.message : outbox_strerror(rc),
                    (long long)(pause_ms / 1000));
            worker_pause(w, pause_ms);
            if (pause_ms < 60000) pause_ms *= 2;
            continue;
        }
        pthread_mutex_lock(&workers_lock);
        w->relay = relay;
        pthread_mutex_unlock(&workers_lock);
        if (stop_was_asked(&w->stop)) outbox_relay_stop(relay);
        monitor_sync();
        rc = outbox_relay_run(relay, &err);
        pthread_mutex_lock(&workers_lock);
        w->relay = NULL;
        pthread_mutex_unlock(&workers_lock);
        monitor_sync(); /* before the free: the monitor borrows the relay */
        outbox_relay_free(relay);
        if (stop_was_asked(&w->stop)) break;
        cli_log(OUTBOX_LOG_ERROR, "relay", "relay %s stopped: %s; starting it again in %lld s",
                name, rc == OUTBOX_OK ? "its loop ended" : err.message,
                (long long)(pause_ms / 1000));
        worker_pause(w, pause_ms);
        if (pause_ms < 60000) pause_ms *= 2;
    }
    atomic_store(&w->done, 1);
    return NULL;
}

/* Starts a worker for config (taken); NULL when its thread cannot start. */
static worker *worker_start(cli_config_relay *config)
{
    worker *w = calloc(1, sizeof *w);
    worker **grown;
    if (!w) goto fail;
    w->config = config;
    pthread_mutex_lock(&workers_lock);
    grown = realloc(workers, (worker_count + 1) * sizeof *grown);
    if (grown) {
        workers = grown;
        workers[worker_count++] = w;
    }
    pthread_mutex_unlock(&workers_lock);
    if (!grown) goto fail;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        pthread_mutex_lock(&workers_lock);
        worker_count--;
        pthread_mutex_unlock(&workers_lock);
        goto fail;
    }
    return w;
fail:
    cli_log(OUTBOX_LOG_ERROR, "relay",
            "relay %s: cannot start its thread (out of memory or "
            "threads); check the process limits",
            config->name);
    free(w);
    cli_config_relay_free(config);
    return NULL;
}

/* Asks w to stop (after its batch in flight). */
static void worker_ask_stop(worker *w)
{
    atomic_store(&w->stop, 1);
    pthread_mutex_lock(&workers_lock);
    if (w->relay) outbox_relay_stop(w->relay);
    pthread_mutex_unlock(&workers_lock);
}

/* Waits for w's thread, takes it out of the list and frees it. */
static void worker_end(worker *w)
{
    pthread_join(w->thread, NULL);
    pthread_mutex_lock(&workers_lock);
    for (size_t i = 0; i < worker_count; i++)
        if (workers[i] == w) {
            workers[i] = workers[--worker_count];
            break;
        }
    pthread_mutex_unlock(&workers_lock);
    cli_config_relay_free(w->config);
    free(w);
}

/* SIGTERM/SIGINT with --config (signal thread). */
static void workers_stop_all(void)
{
    pthread_mutex_lock(&workers_lock);
    for (size_t i = 0; i < worker_count; i++) {
        atomic_store(&workers[i]->stop, 1);
        if (workers[i]->relay) outbox_relay_stop(workers[i]->relay);
    }
    pthread_mutex_unlock(&workers_lock);
}

static void workers_unstopped(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    pthread_mutex_lock(&workers_lock);
    for (size_t i = 0; i < worker_count && used < len; i++)
        if (!atomic_load(&workers[i]->done))
            used += (size_t)snprintf(buf + used, len - used, "%srelay %s", used ? ", " : "",
                                     workers[i]->config->name);
    pthread_mutex_unlock(&workers_lock);
}

/* The text of a list of names, "none" when empty. */
static const char *list_text(cli_buf *b)
{
    const char *text = cli_buf_text(b);
    return text && text[0] ? text : "none";
}

/* Appends name to a "a, b" list. */
static void list_add(cli_buf *b, const char *name)
{
    cli_buf_printf(b, "%s%s", strcmp(list_text(b), "none") != 0 ? ", " : "", name);
}

/* SIGHUP with --config: reads path again; when it is valid, applies the
 * difference by relay name (removed: stopped; changed: stopped, then
 * started once; added: started; unchanged: untouched, files reopened).
 * An invalid file changes nothing. */
static void config_reload(const char *path, const cli_override *overrides, size_t override_count)
{
    cli_config *next = NULL;
    cli_buf added, removed, restarted, unchanged;
    worker **old;
    size_t old_count;

    if (cli_config_load("relay", path, overrides, override_count, &next) != CLI_EXIT_OK) {
        cli_log(OUTBOX_LOG_ERROR, "relay",
                "config reload refused: %s has errors (above); the relays keep running with "
                "the configuration they have",
                path);
        return;
    }
    cli_buf_init(&added);
    cli_buf_init(&removed);
    cli_buf_init(&restarted);
    cli_buf_init(&unchanged);
    pthread_mutex_lock(&workers_lock);
    old_count = worker_count;
    old = malloc((old_count + 1) * sizeof *old);
    if (old) memcpy(old, workers, old_count * sizeof *old);
    pthread_mutex_unlock(&workers_lock);
    if (!old) {
        cli_log(OUTBOX_LOG_ERROR, "relay", "config reload refused: out of memory");
        cli_config_free(next);
        return;
    }

    /* Stop the removed and changed ones first: a changed relay's store
     * lease is released before its new version takes it. */
    for (size_t i = 0; i < old_count; i++) {
        const char *name = old[i]->config->name;
        size_t j;
        for (j = 0; j < next->relay_count; j++)
            if (next->relays[j] && strcmp(next->relays[j]->name, name) == 0) break;
        if (j < next->relay_count && strcmp(next->relays[j]->text, old[i]->config->text) == 0) {
            list_add(&unchanged, name);
            cli_config_relay_free(cli_config_take(next, j)); /* it goes on as it is */
            pthread_mutex_lock(&workers_lock);
            if (old[i]->relay) outbox_relay_reopen(old[i]->relay);
            pthread_mutex_unlock(&workers_lock);
            old[i] = NULL;
            continue;
        }
        list_add(j < next->relay_count ? &restarted : &removed, name);
        worker_ask_stop(old[i]);
    }
    for (size_t i = 0; i < old_count; i++)
        if (old[i]) worker_end(old[i]);
    for (size_t j = 0; j < next->relay_count; j++) {
        cli_config_relay *r = cli_config_take(next, j);
        int was_running = 0;
        if (!r) continue;
        {
            /* in the restarted list when it replaced a relay of that name */
            const char *list = list_text(&restarted);
            size_t n = strlen(r->name);
            for (const char *p = list; p && (p = strstr(p, r->name)) != NULL; p += n)
                if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0')) was_running = 1;
        }
        if (!was_running) list_add(&added, r->name);
        worker_start(r);
    }
    cli_log(OUTBOX_LOG_INFO, "relay",
            "config reloaded: added %s; removed %s; restarted %s; unchanged %s", list_text(&added),
            list_text(&removed), list_text(&restarted), list_text(&unchanged));
    cli_buf_free(&added);
    cli_buf_free(&removed);
    cli_buf_free(&restarted);
    cli_buf_free(&unchanged);
    free(old);
    cli_config_free(next);
    monitor_sync();
}

/* WATCHDOG_USEC when it is meant for this process, else 0 (notify.c reads
 * it the same way for one relay). */
static int64_t watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    long long v;
    if (!usec || !usec[0]) return 0;
    if (pid && pid[0] && strtoll(pid, NULL, 10) != (long long)getpid()) return 0;
    v = strtoll(usec, NULL, 10);
    return v > 0 ? (int64_t)v : 0;
}

/* The service manager's view of several relays: READY=1 once each has
 * tried to start (one that cannot reach its store does not hold the others
 * back), STATUS= with the totals, WATCHDOG=1 while every running relay's
 * loop turns within its deadline. */
static void config_notify(int *ready_sent, int64_t *watchdog_due)
{
    int64_t period = watchdog_usec(), now = cli_monotonic_us();
    outbox_relay_stats total = {0}, one;
    size_t running = 0, attempted = 0, count;
    int alive = 1;
    char line[256];

    if (!getenv("NOTIFY_SOCKET")) return;
    pthread_mutex_lock(&workers_lock);
    count = worker_count;
    for (size_t i = 0; i < worker_count; i++) {
        attempted += atomic_load(&workers[i]->attempted) != 0;
        if (!workers[i]->relay) continue;
        outbox_relay_metrics m;
        running++;
        outbox_relay_get_stats(workers[i]->relay, &one);
        total.published += one.published;
        total.failed += one.failed;
        memset(&m, 0, sizeof m);
        m.size = sizeof m;
        if (outbox_relay_get_metrics(workers[i]->relay, &m) == OUTBOX_OK &&
            m.loop_age_us > m.deadline_us)
            alive = 0;
    }
    pthread_mutex_unlock(&workers_lock);
    snprintf(line, sizeof line, "%sSTATUS=%zu of %zu relays running: %llu published, %llu failed",
             *ready_sent || attempted < count ? "" : "READY=1\n", running, count,
             (unsigned long long)total.published, (unsigned long long)total.failed);
    if (!*ready_sent && attempted == count) *ready_sent = 1;
    cli_notify_send(line);
    if (period > 0 && now >= *watchdog_due) {
        if (alive) cli_notify_send("WATCHDOG=1");
        *watchdog_due = now + period / 2;
    }
}

/* `outbox relay --config PATH`: the relays of the file until SIGTERM. */
static int run_config(const char *cmd, const char *path, const cli_override *overrides,
                      size_t override_count)
{
    cli_config *config = NULL;
    char *token = NULL;
    pthread_t signals;
    int rc, ready_sent = 0;
    int64_t watchdog_due = 0, notify_due = 0;

    if ((rc = cli_config_load(cmd, path, overrides, override_count, &config)) != CLI_EXIT_OK)
        return rc;
    if (!(cli_log_flags_given & 1) && config->process.log_level)
        cli_set_log_level(cmd, config->process.log_level);
    if (!(cli_log_flags_given & 2) && config->process.log_format)
        cli_set_log_format(cmd, config->process.log_format);
    if (config->process.max_message_bytes)
        outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, (size_t)config->process.max_message_bytes);
    if (config->process.max_field_bytes)
        outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, (size_t)config->process.max_field_bytes);
    stop_timeout_ms = config->process.stop_timeout_ms;
    shared_monitor_opts = config->process.monitor;
    if (config->process.token_file &&
        (rc = cli_token_read(cmd, "admin-token-file", config->process.token_file, &token)) !=
            CLI_EXIT_OK) {
        cli_config_free(config);
        return rc;
    }
    shared_monitor_opts.admin_token = token; /* kept while monitors are rebuilt */
    if (shared_monitor_opts.listen) {
        /* The file's strings go with it: the monitor keeps a copy. */
        snprintf(monitor_asked, sizeof monitor_asked, "%s", shared_monitor_opts.listen);
        shared_monitor_opts.listen = monitor_asked;
    }

    stop_all = workers_stop_all;
    unstopped_names = workers_unstopped;
    if (signals_start(&signals) != 0) {
        cli_token_free(token);
        cli_config_free(config);
        return cli_failure(cmd, "could not start the signal thread; check the process limits");
    }
    cli_log(OUTBOX_LOG_INFO, "relay", "%s: starting %zu relay%s", path, config->relay_count,
            config->relay_count == 1 ? "" : "s");
    for (size_t i = 0; i < config->relay_count; i++)
        worker_start(cli_config_take(config, i));
    cli_config_free(config);

    for (;;) {
        int reload, stop;
        pthread_mutex_lock(&signal_lock);
        reload = reload_asked;
        reload_asked = 0;
        stop = stop_asked;
        pthread_mutex_unlock(&signal_lock);
        if (stop) break;
        if (reload) config_reload(path, overrides, override_count);
        if (cli_monotonic_us() >= notify_due) {
            config_notify(&ready_sent, &watchdog_due);
            notify_due = cli_monotonic_us() + 1000000;
        }
        cli_sleep_us(100000);
    }

    workers_stop_all();
    for (;;) {
        worker *w = NULL;
        pthread_mutex_lock(&workers_lock);
        if (worker_count > 0) w = workers[worker_count - 1];
        pthread_mutex_unlock(&workers_lock);
        if (!w) break;
        worker_end(w);
    }
    atomic_store(&stopped, 1);
    signals_stop(signals);
    cli_notify_end();
    pthread_mutex_lock(&monitor_lock);
    outbox_monitor_free(shared_monitor);
    shared_monitor = NULL;
    free(monitored);
    monitored = NULL;
    monitored_count = 0;
    pthread_mutex_unlock(&monitor_lock);
    cli_token_free(token);
    free(workers);
    workers = NULL;
    cli_log(OUTBOX_LOG_INFO, "relay", "all relays stopped");
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * The command
 * ---------------------------------------------------------------------- */

/* Runs the relay (or, with --config, the relays of a file).  Exit 0 after
 * a graceful stop or a --once run that published everything due; 1 for a
 * runtime failure (a --once run with a failed publication, lease held by
 * another relay, lease lost, store error, missing schema, a stop longer
 * than --stop-timeout); 2 for bad options, URLs or configuration. */
int cmd_relay(int argc, char **argv)
{
    struct option options[CLI_SETTING_MAX + 4];
    const struct option globals[] = {CLI_GLOBAL_OPTIONS};
    const char *cmd = "relay", *url = NULL, *to = NULL;
    cli_settings s;
    cli_override *overrides;
    size_t override_count = 0, n_options = 0;
    outbox_relay *relay = NULL;
    outbox_monitor *monitor = NULL;
    char *token = NULL;
    outbox_error err = {0, ""};
    pthread_t signals;
    uint64_t seen = 0;
    int c, rc;

    for (size_t i = 0; i < cli_setting_count; i++) {
        const cli_setting *set = &cli_setting_table[i];
        if (!(set->scope & CLI_SCOPE_FLAG)) continue;
        options[n_options].name = set->name;
        options[n_options].has_arg = set->placeholder ? required_argument : no_argument;
        options[n_options].flag = NULL;
        options[n_options].val = CLI_OPT_COMMAND_BASE + (int)i;
        n_options++;
    }
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++)
        options[n_options++] = globals[i];
    memset(&options[n_options], 0, sizeof options[n_options]);

    overrides = calloc((size_t)argc + 1, sizeof *overrides);
    if (!overrides) return cli_failure(cmd, "out of memory");
    cli_settings_init(&s);
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        const cli_setting *set = NULL;
        char flag[64];
        if (c >= CLI_OPT_COMMAND_BASE && (size_t)(c - CLI_OPT_COMMAND_BASE) < cli_setting_count)
            set = &cli_setting_table[c - CLI_OPT_COMMAND_BASE];
        if ((!set || strcmp(set->name, "to-opt") != 0) &&
            (rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK)
            goto out;
        if (c == 'h') {
            print_usage(stdout);
            rc = CLI_EXIT_OK;
            goto out;
        }
        if (!set) {
            if (c == CLI_OPT_LOG_LEVEL) cli_log_flags_given |= 1;
            if (c == CLI_OPT_LOG_FORMAT) cli_log_flags_given |= 2;
            if ((rc = cli_option(cmd, c, argv, "")) != CLI_CONTINUE) goto out;
            continue;
        }
        snprintf(flag, sizeof flag, "--%s", set->name);
        if ((rc = set->set(cmd, flag, optarg, &s)) != CLI_EXIT_OK) goto out;
        if (strcmp(set->name, "config") != 0) {
            overrides[override_count].setting = set;
            overrides[override_count++].value = optarg;
        }
    }
    if (optind < argc) {
        rc = cli_usage(cmd, "unexpected argument '%s'; see outbox relay --help", argv[optind]);
        goto out;
    }
    if (s.config) {
        if (s.store || s.to || s.opts.once) {
            rc = cli_usage(cmd, "--store, --to and --once go with one relay, not with --config: "
                                "put the stores and destinations in the file's [relay NAME] "
                                "sections");
            goto out;
        }
        rc = run_config(cmd, s.config, overrides, override_count);
        goto out;
    }

    if ((rc = cli_store_url(cmd, s.store, &url)) != CLI_EXIT_OK) goto out;
    to = s.to;
    if (!to || !to[0]) to = getenv("OUTBOX_TO");
    if (!to || !to[0]) {
        rc = cli_usage(cmd, "--to is required (the destination, e.g. --to file:events.jsonl "
                            "or --to stdout:); or set OUTBOX_TO");
        goto out;
    }
    s.store = url;
    s.to = to;
    if ((rc = cli_settings_check_relay(cmd, "--", &s)) != CLI_EXIT_OK ||
        (rc = cli_settings_check_process(cmd, &s)) != CLI_EXIT_OK)
        goto out;
    if (s.token_file != NULL) {
        if ((rc = cli_token_read(cmd, "--admin-token-file", s.token_file, &token)) != CLI_EXIT_OK)
            goto out;
        s.monitor.admin_token = token;
    }
    if (s.max_message_bytes) outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, (size_t)s.max_message_bytes);
    if (s.max_field_bytes) outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, (size_t)s.max_field_bytes);
    stop_timeout_ms = s.stop_timeout_ms;
    s.to_opts[s.to_opt_count] = NULL;
    s.opts.destination_options = s.to_opts;

    /* The signal thread first: a SIGTERM during start-up is a clean stop too. */
    if (signals_start(&signals) != 0) {
        cli_token_free(token);
        rc = cli_failure(cmd, "could not start the signal thread; check the process limits");
        goto out;
    }
    if (s.connect_timeout_ms == -2) s.connect_timeout_ms = s.opts.once ? 30000 : -1;
    if ((rc = relay_new_waiting(&relay, NULL, url, to, &s.opts, s.connect_timeout_ms, NULL,
                                &err)) != OUTBOX_OK) {
        signals_stop(signals);
        cli_token_free(token);
        rc = rc == OUTBOX_ESTOPPED ? CLI_EXIT_OK : cli_fail(cmd, rc, &err);
        goto out;
    }
    if (s.monitor.listen != NULL &&
        (rc = monitor_start(cmd, relay, &s.monitor, &monitor)) != CLI_EXIT_OK) {
        signals_stop(signals);
        cli_token_free(token);
        outbox_relay_free(relay);
        goto out;
    }
    cli_token_free(token); /* the monitor has its copy */
    signals_attach(relay);
    cli_notify_ready(relay, to);
    rc = outbox_relay_run(relay, &err);
    atomic_store(&stopped, 1);
    cli_notify_end();
    signals_attach(NULL);
    signals_stop(signals);
    outbox_monitor_free(monitor);

    if (rc == OUTBOX_OK || rc == OUTBOX_ESTOPPED) {
        rc = s.opts.once ? once_outcome(cmd, relay) : CLI_EXIT_OK;
    } else if (rc == OUTBOX_ELEASED && !strstr(err.message, "--wait-lease")) {
        /* The store says who holds the lease; what to do is the CLI's to say. */
        rc = cli_failure(cmd, "%s; stop it, or pass --wait-lease to stand by", err.message);
    } else {
        rc = cli_fail(cmd, rc, &err);
    }
    outbox_relay_free(relay);
out:
    free(overrides);
    return rc;
}
