/*
 * service_relay.c - a service's relay: the library relay on a thread of
 * this process, or an `outbox relay` child found next to this binary and
 * killed with us (PR_SET_PDEATHSIG covers a SIGKILLed parent), with its
 * destination and routing options.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "service.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef OUTBOX_HAVE_NATS
#include "bus_nats.h"
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
#include "bus_amqp.h"
#endif

/* ------------------------------------------------------------------------
 * Relay: in-process thread or `outbox relay` child
 * ---------------------------------------------------------------------- */

static void *relay_thread(void *arg)
{
    cafe_relay_side *rs = arg;
    outbox_error err;
    while (!rs->stopping) {
        memset(&err, 0, sizeof err);
        if (outbox_relay_run(rs->relay, &err) == OUTBOX_OK) break;
        if (rs->stopping) break;
        cafe_log(cafe_log_service, "relay stopped: %s; restarting in 1 s", err.message);
        sleep(1);
    }
    return NULL;
}

static int add_opt(cafe_relay_side *rs, const char *key, const char *value)
{
    size_t n = strlen(key) + strlen(value) + 2;
    if (rs->nopts + 1 >= sizeof rs->opts / sizeof rs->opts[0]) return -1;
    rs->opts[rs->nopts] = malloc(n);
    if (!rs->opts[rs->nopts]) return -1;
    snprintf(rs->opts[rs->nopts], n, "%s=%s", key, value);
    rs->nopts++;
    rs->opts[rs->nopts] = NULL;
    return 0;
}

/* Fills the destination URL and options; 0 or -1 with err filled. */
int cafe_relay_destination(cafe_service *svc, cafe_relay_side *rs, outbox_error *err)
{
    const cafe_config *cfg = &svc->cfg;
    int i, main_target = -1;

    snprintf(rs->store_url, sizeof rs->store_url, "sqlite:%s", svc->db_path);
    if (strncmp(cfg->bus, "amqp://", 7) == 0) {
#ifdef OUTBOX_HAVE_RABBITMQ
        return cafe_amqp_destination(rs->to_url, sizeof rs->to_url, cfg->bus, err) == OUTBOX_OK
                   ? 0
                   : -1;
#else
        return -1;
#endif
    }
    if (strncmp(cfg->bus, "nats://", 7) == 0) {
#ifdef OUTBOX_HAVE_NATS
        return cafe_nats_destination(rs->to_url, sizeof rs->to_url, cfg->bus, err) == OUTBOX_OK
                   ? 0
                   : -1;
#else
        return -1;
#endif
    }
    for (i = 0; svc->def->emits[i]; i++) {
        int t = cafe_event_target(svc->def->emits[i]);
        if (main_target < 0) {
            main_target = t;
            snprintf(rs->to_url, sizeof rs->to_url, "%s", cfg->peer_url[t]);
        } else if (t != main_target) {
            char key[128];
            snprintf(key, sizeof key, "endpoint.%s", svc->def->emits[i]);
            if (add_opt(rs, key, cfg->peer_url[t])) goto oom;
        }
    }
    if (cfg->secret_file && add_opt(rs, "secret_file", cfg->secret_file)) goto oom;
    return 0;
oom:
    cafe_error(err, OUTBOX_ENOMEM, "out of memory building relay options");
    return -1;
}

int cafe_relay_start_inproc(cafe_service *svc, cafe_relay_side *rs, outbox_error *err)
{
    outbox_relay_options o;
    char source[64];

    outbox_relay_options_init(&o);
    o.batch_size = 64;
    o.backoff_base_ms = 50;
    o.backoff_max_ms = 1000;
    o.max_attempts = 1000;
    o.poll_interval_ms = 200;
    o.on_sent = OUTBOX_ON_SENT_DELETE;
    o.wait_for_lease = 1;
    snprintf(source, sizeof source, "/campuscafe/%s", svc->def->name);
    o.source = source;
    o.destination_options = (const char *const *)rs->opts;
    if (outbox_relay_new(&rs->relay, rs->store_url, rs->to_url, &o, err) != OUTBOX_OK) return -1;
    if (pthread_create(&rs->thread, NULL, relay_thread, rs) != 0) {
        cafe_error(err, OUTBOX_ENOMEM, "cannot start the relay thread");
        return -1;
    }
    rs->thread_started = 1;
    return 0;
}

int cafe_relay_start_process(cafe_service *svc, cafe_relay_side *rs, outbox_error *err)
{
    char exe[4200], source[64];
    const char *argv[64];
    size_t n = 0, i;
    pid_t pid, parent;

    snprintf(exe, sizeof exe, "%s/outbox", svc->exe_dir);
    if (access(exe, X_OK) != 0) {
        cafe_error(err, OUTBOX_ECONFIG,
                   "--relay process: no executable %s; build the outbox CLI next to campuscafe",
                   exe);
        return -1;
    }
    snprintf(source, sizeof source, "/campuscafe/%s", svc->def->name);
    argv[n++] = exe;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    argv[n++] = "relay";
    argv[n++] = "--store";
    argv[n++] = rs->store_url;
    argv[n++] = "--to";
    argv[n++] = rs->to_url;
    argv[n++] = "--batch";
    argv[n++] = "64";
    argv[n++] = "--backoff-base";
    argv[n++] = "50ms";
    argv[n++] = "--backoff-max";
    argv[n++] = "1s";
    argv[n++] = "--max-attempts";
    argv[n++] = "1000";
    argv[n++] = "--poll-interval";
    argv[n++] = "200ms";
    argv[n++] = "--on-sent";
    argv[n++] = "delete";
    argv[n++] = "--wait-lease";
    argv[n++] = "--source";
    argv[n++] = source;
    for (i = 0; i < rs->nopts; i++) {
        argv[n++] = "--to-opt";
        argv[n++] = rs->opts[i];
    }
    argv[n] = NULL;
    parent = getpid();
    pid = fork();
    if (pid < 0) {
        cafe_error(err, OUTBOX_EIO, "cannot start the relay process: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(0); /* the service died before prctl */
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    rs->child = pid;
    return 0;
}

void cafe_relay_stop(cafe_relay_side *rs)
{
    size_t i;
    rs->stopping = 1;
    if (rs->relay) outbox_relay_stop(rs->relay);
    if (rs->thread_started) pthread_join(rs->thread, NULL);
    outbox_relay_free(rs->relay);
    rs->relay = NULL;
    if (rs->child > 0) {
        int status;
        kill(rs->child, SIGTERM);
        waitpid(rs->child, &status, 0);
        rs->child = 0;
    }
    for (i = 0; i < rs->nopts; i++)
        free(rs->opts[i]);
    rs->nopts = 0;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
