/*
 * service.c - what every CampusCafe service does the same way: parse the
 * common options, open its SQLite database (WAL, busy timeout, its tables
 * and the outbox + inbox tables), start the consumer side, start the relay,
 * write DIR/<service>.ready, wait for SIGTERM/SIGINT and stop cleanly.
 *
 * Consumer side, outbox mode: the library's webhook receiver (inbox consumer
 * = service name) on a private loopback port; the service's event port is a
 * small front (httpd.c) that answers GET /stats itself and hands POST /events
 * to the receiver unchanged, so the receiver's answer (204 only after COMMIT)
 * is what the sender sees.  With --bus nats:// the NATS consumer (bus_nats.h)
 * takes its place.  Naive mode: the front applies deliveries itself
 * (naive.c), no inbox.
 *
 * Producer side, outbox mode: the library relay, on a thread of this process
 * or as an `outbox relay` child (found next to this binary, killed with us:
 * PR_SET_PDEATHSIG covers a SIGKILLed parent).  Webhook routing: the main
 * peer is the URL of the first event type the service emits; every other
 * type goes to its consumer through the destination option endpoint.<Type>.
 *
 * The parts are in their own files (see service.h): the options in
 * service_options.c, the front in service_front.c, the relay side in
 * service_relay.c; what the services call (emitting one event, seeded
 * random choices, crash points, a small SQL helper, logging) in
 * service_helpers.c.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "service.h"

#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef OUTBOX_HAVE_NATS
#include "bus_nats.h"
#endif
#include "bus_amqp.h"

const cafe_service *cafe_log_service; /* see service.h */

static void library_log(void *user, int level, const char *component, const char *message)
{
    (void)user;
    cafe_log(cafe_log_service, "%s %s: %s", outbox_log_level_name(level), component, message);
}

/* ------------------------------------------------------------------------
 * Start-up and shutdown
 * ---------------------------------------------------------------------- */

/* How many times this service was started in DIR (crash decisions differ
 * per start but are reproducible from the seed and the start number). */
static unsigned long bump_start_count(const cafe_service *svc)
{
    char path[4200];
    unsigned long n = 0;
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.starts", svc->cfg.dir, svc->def->name);
    if ((f = fopen(path, "r")) != NULL) {
        if (fscanf(f, "%lu", &n) != 1) n = 0;
        fclose(f);
    }
    n++;
    if ((f = fopen(path, "w")) != NULL) {
        fprintf(f, "%lu\n", n);
        fclose(f);
    }
    return n;
}

static int open_database(cafe_service *svc)
{
    outbox_error err;
    char *msg = NULL;

    memset(&err, 0, sizeof err);
    if (sqlite3_open_v2(svc->db_path, &svc->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        cafe_log(svc, "cannot open %s: %s", svc->db_path, sqlite3_errmsg(svc->db));
        return -1;
    }
    sqlite3_busy_timeout(svc->db, 10000);
    if (sqlite3_exec(svc->db, "PRAGMA journal_mode=WAL", NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(svc->db, svc->def->schema_sql, NULL, NULL, &msg) != SQLITE_OK) {
        cafe_log(svc, "setting up %s: %s", svc->db_path, msg ? msg : sqlite3_errmsg(svc->db));
        sqlite3_free(msg);
        return -1;
    }
    if (outbox_schema_init_sqlite(svc->db, &err) != OUTBOX_OK) {
        cafe_log(svc, "outbox tables in %s: %s", svc->db_path, err.message);
        return -1;
    }
    return 0;
}

static int write_ready(const cafe_service *svc)
{
    char path[4200], tmp[4300];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.ready", svc->cfg.dir, svc->def->name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL) return -1;
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0) return -1;
    return 0;
}

static void remove_ready(const cafe_service *svc)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.ready", svc->cfg.dir, svc->def->name);
    unlink(path);
}

/* See cafe.h. */
int cafe_service_main(const cafe_service_def *def, int argc, char **argv)
{
    cafe_service svc;
    cafe_relay_side rs;
    cafe_front fr;
    cafe_httpd *events = NULL;
    outbox_webhook_receiver *receiver = NULL;
#ifdef OUTBOX_HAVE_NATS
    cafe_nats_consumer *consumer = NULL;
#endif
    cafe_amqp_consumer *amqp_consumer = NULL;
    outbox_error err;
    sigset_t sigs;
    ssize_t n;
    int rc, sig = 0, exit_code = 1, started = 0;

    memset(&svc, 0, sizeof svc);
    memset(&rs, 0, sizeof rs);
    memset(&fr, 0, sizeof fr);
    memset(&err, 0, sizeof err);
    svc.def = def;
    pthread_mutex_init(&svc.db_lock, NULL);
    pthread_mutex_init(&svc.rng_lock, NULL);
    cafe_log_service = &svc;

    rc = cafe_parse_options(&svc, argc, argv);
    if (rc != 0) {
        exit_code = rc < 0 ? 0 : rc;
        goto done;
    }

    /* Signals: blocked in every thread, taken by sigtimedwait below. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    outbox_log_set(library_log, NULL, OUTBOX_LOG_WARN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    started = 1;

    snprintf(svc.db_path, sizeof svc.db_path, "%s/%s.db", svc.cfg.dir, def->name);
    n = readlink("/proc/self/exe", svc.exe_dir, sizeof svc.exe_dir - 1);
    if (n > 0) {
        char *slash;
        svc.exe_dir[n] = '\0';
        if ((slash = strrchr(svc.exe_dir, '/')) != NULL) *slash = '\0';
    } else {
        snprintf(svc.exe_dir, sizeof svc.exe_dir, ".");
    }
    remove_ready(&svc);
    svc.start_number = bump_start_count(&svc);
    svc.rng_state = svc.cfg.seed * 0x100000001b3ULL + svc.start_number;
    if (open_database(&svc)) goto done;

    /* Consumer side. */
    fr.svc = &svc;
    if (svc.cfg.naive) {
        if (cafe_naive_sender_start(&svc.sender, &svc, &err) != OUTBOX_OK) goto fail;
    } else if (strcmp(svc.cfg.bus, "webhook") == 0) {
        outbox_webhook_receiver_options ro;
        outbox_webhook_receiver_options_init(&ro);
        ro.bind_address = "127.0.0.1";
        ro.port = 0;
        ro.secret = svc.cfg.secret[0] ? svc.cfg.secret : NULL;
        ro.db_path = svc.db_path;
        ro.consumer = def->name;
        ro.handler = def->handle;
        ro.handler_user = &svc;
        if (outbox_webhook_receiver_new(&receiver, &ro, &err) != OUTBOX_OK) goto fail;
        fr.receiver_port = outbox_webhook_receiver_port(receiver);
        if ((fr.curl = curl_easy_init()) == NULL) {
            cafe_error(&err, OUTBOX_ENOMEM, "cannot create a curl handle");
            goto fail;
        }
    } else if (strncmp(svc.cfg.bus, "amqp://", 7) == 0) {
        if (cafe_amqp_consumer_start(&amqp_consumer, svc.cfg.bus, def->name, def->consumes,
                                     svc.db_path, def->handle, &svc, &err) != OUTBOX_OK)
            goto fail;
    } else {
#ifdef OUTBOX_HAVE_NATS
        if (cafe_nats_consumer_start(&consumer, svc.cfg.bus, def->name, def->consumes, svc.db_path,
                                     def->handle, &svc, &err) != OUTBOX_OK)
            goto fail;
#endif
    }
    if (svc.cfg.port && cafe_httpd_start(&events, svc.cfg.port, 0, 1 << 20, cafe_front_route, &fr,
                                         &err) != OUTBOX_OK)
        goto fail;

    /* Producer side. */
    if (!svc.cfg.naive) {
        if (cafe_relay_destination(&svc, &rs, &err)) goto fail;
        if (svc.cfg.relay_process ? cafe_relay_start_process(&svc, &rs, &err)
                                  : cafe_relay_start_inproc(&svc, &rs, &err))
            goto fail;
    }
    if (def->start && def->start(&svc, &err) != OUTBOX_OK) goto fail;
    if (write_ready(&svc)) {
        cafe_log(&svc, "cannot write %s/%s.ready: %s", svc.cfg.dir, def->name, strerror(errno));
        goto stop;
    }
    svc.ready = 1;
    cafe_log(&svc, "ready: %s mode, bus %s, events on port %u%s",
             svc.cfg.naive ? "naive" : "outbox", svc.cfg.bus, svc.cfg.port,
             svc.cfg.relay_process ? ", relay process" : "");

    for (;;) {
        struct timespec tick = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) break;
        if (rs.child > 0 && waitpid(rs.child, NULL, WNOHANG) == rs.child) {
            /* The relay process died (crash, lease lost): start another. */
            cafe_log(&svc, "relay process %d exited; starting another", (int)rs.child);
            rs.child = 0;
            if (cafe_relay_start_process(&svc, &rs, &err)) cafe_log(&svc, "%s", err.message);
        }
    }
    cafe_log(&svc, "signal %d: stopping", sig);
    exit_code = 0;
    goto stop;

fail:
    cafe_log(&svc, "cannot start: %s", err.message);
    if (err.code == OUTBOX_ECONFIG || err.code == OUTBOX_EBADURL) exit_code = 2;
stop:
    remove_ready(&svc);
    if (def->stop) def->stop(&svc);
    cafe_httpd_free(events);
    outbox_webhook_receiver_free(receiver);
#ifdef OUTBOX_HAVE_NATS
    cafe_nats_consumer_free(consumer);
#endif
    cafe_amqp_consumer_free(amqp_consumer);
    cafe_relay_stop(&rs);
    cafe_naive_sender_free(svc.sender);
    if (fr.curl) curl_easy_cleanup(fr.curl);
done:
    cafe_pending_clear(&svc);
    sqlite3_close(svc.db);
    if (started) curl_global_cleanup();
    pthread_mutex_destroy(&svc.db_lock);
    pthread_mutex_destroy(&svc.rng_lock);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_WARN);
    cafe_log_service = NULL;
    return exit_code;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
