/*
 * test_tls.c - certificate verification on every TLS connection the relay
 * makes, against real servers on 127.0.0.1 with certificates made at run
 * time by the openssl command (tls_certs.h: a CA, a server certificate for
 * 127.0.0.1/localhost, one for other.example only) plus a second CA that
 * signed none of them.
 *
 * Each server is tried three ways: trusting nothing but the system CAs,
 * trusting the second CA, trusting the CA that signed the certificate.
 * Only the last may deliver; the other two must be refused with an error
 * (or log line) that names the certificate problem, nothing sent.
 *
 *   https      the library's webhook receiver serving HTTPS; the relay's
 *              http destination with ca_file= (a refusal is the
 *              destination's outage: logged, no attempt charged).
 *   nats       nats-server requiring TLS; the nats destination with
 *              tls=true and ca_file= (a refusal fails at start-up).
 *   amqps      rabbitmq-server with a TLS listener; the amqps destination
 *              with cacert= (a refusal fails at start-up); also the host
 *              as an IP address (librabbitmq checks DNS names only), the
 *              plain port, verify=false, and a certificate for another
 *              host name (the broker restarted with it).
 *   postgres   a PostgreSQL server with ssl=on; the store URL with
 *              sslmode=verify-full and sslrootcert= (the store and a relay
 *              from it); also a certificate for another host name
 *              (verify-full refuses, verify-ca accepts), and libpq's
 *              default sslmode=prefer, which the store keeps: it connects
 *              over TLS without verifying anything, and in plain text to
 *              a server without TLS.
 *
 * A part whose server, driver or TLS support is missing is skipped with
 * the reason; the program exits 77 only when no part could run.
 */
#include "test.h"

#include "log_capture.h"
#include "support/chaos.h"
#include "support/tmp.h"
#include "support/webhook.h"
#include "tls_certs.h"

#ifdef OUTBOX_HAVE_NATS
#include "support/nats.h"
#endif
#ifdef OUTBOX_HAVE_LIBPQ
#include "support/pg.h"
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
#include "support/rabbitmq.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

static char rogue_ca[CH_PATH]; /* a CA that signed none of the certificates */
static int parts_run;

/* The three trust settings every part is tried with. */
typedef struct trust_case {
    const char *what;
    const char *ca; /* the CA file given to the client; NULL: none */
    int trusted;    /* 1 when the server's certificate must be accepted */
} trust_case;

static trust_case cases[3];

static void cases_init(void)
{
    cases[0] = (trust_case){"no CA given (the client's defaults)", NULL, 0};
    cases[1] = (trust_case){"a CA that did not sign the certificate", rogue_ca, 0};
    cases[2] = (trust_case){"the CA that signed the certificate", tls_ca, 1};
}

/* A self-signed CA of its own, which signed nothing the servers show. */
static void make_rogue_ca(void)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout rogue-ca.key -out rogue-ca.pem -days 2 -subj '/CN=outbox rogue CA' "
             ">>openssl.log 2>&1",
             test_dir());
    if (system(cmd) != 0) TEST_FAIL_("openssl could not make the second CA (see openssl.log)");
    ch_path(rogue_ca, "rogue-ca.pem");
}

/* Fails the test when text shows the secret. */
static void assert_no_secret(const char *text, const char *secret)
{
    if (strstr(text, secret) != NULL) TEST_FAIL_("the secret shows in: %s", text);
}

/* ------------------------------------------------------------------------
 * https: the relay's webhook destination to the library's HTTPS receiver
 * ---------------------------------------------------------------------- */

static int accept_all(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    (void)db;
    (void)msg;
    (void)err;
    return OUTBOX_OK;
}

/* One message relayed from a fresh SQLite outbox to url with dest_opts:
 * delivered when trusted, else held back (pending, no attempt charged)
 * with a log line naming the certificate problem. */
static void https_case(outbox_webhook_receiver *rcv, const char *url, int k)
{
    const trust_case *c = &cases[k];
    char db[CH_PATH], name[32], ca_opt[CH_PATH + 16];
    const char *dest_opts[2] = {NULL, NULL};
    outbox_webhook_receiver_stats before, after;
    outbox_relay_options o;
    wh_relay r;

    snprintf(name, sizeof name, "https-%d.db", k);
    ch_path(db, name);
    wh_store_init(db);
    sqlite3 *h = ch_db_open(db);
    wh_enqueue(h, "Tls", "Case", name, "{}", NULL, NULL);
    sqlite3_close(h);
    if (c->ca) {
        snprintf(ca_opt, sizeof ca_opt, "ca_file=%s", c->ca);
        dest_opts[0] = ca_opt;
    }
    outbox_relay_options_init(&o);
    o.backoff_base_ms = 20;
    o.backoff_max_ms = 200;
    o.poll_interval_ms = 50;
    o.destination_options = dest_opts;
    outbox_webhook_receiver_get_stats(rcv, &before);
    log_reset();
    wh_relay_start(&r, db, url, &o);
    if (c->trusted) {
        wh_wait_count(db, "SELECT count(*) FROM outbox", 0, 30000);
    } else {
        if (!log_wait("is down:", "certificate", 30000))
            TEST_FAIL_("https, %s: no 'is down: ... certificate' log line", c->what);
        log_print_line(c->what, "is down:");
    }
    wh_relay_stop(&r);
    outbox_webhook_receiver_get_stats(rcv, &after);
    if (c->trusted) {
        ASSERT_EQ(after.applied - before.applied, 1);
        fprintf(stderr, "%s: delivered, verified\n", c->what);
    } else {
        ASSERT_EQ(after.applied, before.applied);
        ASSERT_EQ(wh_db_count(db, "SELECT count(*) FROM outbox WHERE status = 'pending' AND "
                                  "attempts = 0"),
                  1);
    }
}

static void part_https(void)
{
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *rcv = NULL;
    outbox_error err;
    char cdb[CH_PATH], url[100];

    fprintf(stderr, "-- https (webhook destination, ca_file=)\n");
    outbox_webhook_receiver_options_init(&ro);
    ro.db_path = ch_path(cdb, "https-consumer.db");
    ro.consumer = "tls";
    ro.handler = accept_all;
    ro.tls_cert_file = tls_cert;
    ro.tls_key_file = tls_key;
    memset(&err, 0, sizeof err);
    int rc = outbox_webhook_receiver_new(&rcv, &ro, &err);
    if (rc == OUTBOX_ENOTBUILT) {
        fprintf(stderr, "   skipped: %s\n", err.message);
        return;
    }
    ASSERT_OK(rc, &err);
    snprintf(url, sizeof url, "https://127.0.0.1:%u/hook", outbox_webhook_receiver_port(rcv));
    {
        /* The sender too may be missing from this build. */
        outbox_relay *probe = NULL;
        char db[CH_PATH];
        wh_store_init(ch_path(db, "https-probe.db"));
        if (ch_relay_new(&probe, db, url, 1, &err) == OUTBOX_ENOTBUILT) {
            fprintf(stderr, "   skipped: %s\n", err.message);
            outbox_webhook_receiver_free(rcv);
            return;
        }
        outbox_relay_free(probe);
    }
    for (int k = 0; k < 3; k++)
        https_case(rcv, url, k);
    outbox_webhook_receiver_free(rcv);
    parts_run++;
}

/* ------------------------------------------------------------------------
 * nats: the relay's NATS destination to a nats-server requiring TLS
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_NATS
static void part_nats(void)
{
    nh_server s;
    char db[CH_PATH], to[CH_PATH + 200];

    fprintf(stderr, "-- nats (tls=true, ca_file=)\n");
    if (access(NH_SERVER_BIN, X_OK) != 0) {
        fprintf(stderr, "   skipped: no %s\n", NH_SERVER_BIN);
        return;
    }
    nh_server_start_tls(&s, tls_cert, tls_key, tls_ca);
    nh_stream_create(&s, "TLS", "outbox.>");
    ch_new_store(db, "nats.db");
    sqlite3 *h = ch_db_open(db);
    wh_enqueue(h, "Tls", "Case", "n", "{}", NULL, NULL);
    sqlite3_close(h);
    for (int k = 0; k < 3; k++) {
        const trust_case *c = &cases[k];
        outbox_relay *r = NULL;
        outbox_error err;
        snprintf(to, sizeof to, "nats://127.0.0.1:%d?stream=TLS&tls=true%s%s", s.port,
                 c->ca ? "&ca_file=" : "", c->ca ? c->ca : "");
        if (c->trusted) {
            ch_drain_once(db, to);
            ASSERT_EQ(nh_stream_count(&s, "TLS"), 1);
            ASSERT_EQ(ch_outbox_count(db, NULL), 0);
            fprintf(stderr, "%s: published, verified\n", c->what);
            continue;
        }
        ASSERT(ch_relay_new(&r, db, to, 1, &err) != OUTBOX_OK);
        fprintf(stderr, "%s: %s\n", c->what, err.message);
        ASSERT_CONTAINS(err.message, "certificate");
        ASSERT_EQ(nh_stream_count(&s, "TLS"), 0);
        ASSERT_EQ(ch_outbox_count(db, "pending"), 1);
    }
    nh_server_stop(&s);
    parts_run++;
}
#endif /* OUTBOX_HAVE_NATS */

/* ------------------------------------------------------------------------
 * amqps: the relay's RabbitMQ destination to a broker with a TLS listener
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_RABBITMQ

static rmh_server rmq;
static char amqps_db[CH_PATH];
static char amqps_id[40]; /* the message pending in amqps_db, "" when none */
static int amqps_reads;

/* An amqps URL to host:port of the broker, exchange "tls", with opts. */
static void amqps_url(char *out, size_t len, const char *host, int port, const char *opts)
{
    snprintf(out, len, "amqps://guest:guest@%s:%d/?exchange=tls%s", host, port, opts);
}

/* Relays the one pending message (enqueued when none is) to url.  expect
 * NULL: it is delivered (read back from queue "tls" by its id); else the
 * relay is refused at start-up with an error containing expect and fix,
 * the message stays pending with no attempt charged, the queue empty. */
static void amqps_case(const char *what, const char *url, const char *expect, const char *fix)
{
    outbox_relay *r = NULL;
    outbox_error err;

    if (!amqps_id[0]) {
        sqlite3 *h = ch_db_open(amqps_db);
        wh_enqueue(h, "Tls", "Case", "a", "{}", NULL, amqps_id);
        sqlite3_close(h);
    }
    if (expect == NULL) {
        char out[CH_PATH], name[32], *text;
        ch_drain_once(amqps_db, url);
        ASSERT_EQ(ch_outbox_count(amqps_db, "pending"), 0);
        snprintf(name, sizeof name, "amqps-%d.jsonl", ++amqps_reads);
        ASSERT_EQ(rmh_queue_drain(&rmq, "tls", ch_path(out, name)), 1);
        text = test_read_file(out, NULL);
        ASSERT_CONTAINS(text, amqps_id);
        free(text);
        amqps_id[0] = '\0';
        fprintf(stderr, "%s: delivered\n", what);
        return;
    }
    ASSERT(ch_relay_new(&r, amqps_db, url, 1, &err) != OUTBOX_OK);
    fprintf(stderr, "%s: %s\n", what, err.message);
    ASSERT_CONTAINS(err.message, expect);
    ASSERT_CONTAINS(err.message, fix);
    assert_no_secret(err.message, "guest");
    ASSERT_EQ(rmh_queue_count(&rmq, "tls"), 0);
    ASSERT_EQ(wh_db_count(amqps_db, "SELECT count(*) FROM outbox WHERE status = 'pending' AND "
                                    "attempts = 0"),
              1);
}

static void part_amqps(void)
{
    const char *why = rmh_available();
    const char *untrusted = "TLS certificate is not trusted";
    char url[CH_PATH + 200], opt[CH_PATH + 20];
    int64_t t0 = ch_now_ms(), t1;

    fprintf(stderr, "-- amqps (cacert=, verify=)\n");
    if (why) {
        fprintf(stderr, "   skipped: %s\n", why);
        return;
    }
    rmh_start_tls(&rmq, tls_cert, tls_key, tls_ca);
    t1 = ch_now_ms();
    fprintf(stderr, "   (rabbitmq-server started in %lld ms)\n", (long long)(t1 - t0));
    rmh_declare(&rmq, "tls", "tls", "#");
    ch_new_store(amqps_db, "amqps.db");

    /* The certificate names 127.0.0.1 (as an IP address) and localhost:
     * the trust cases connect to localhost. */
    for (int k = 0; k < 3; k++) {
        const trust_case *c = &cases[k];
        snprintf(opt, sizeof opt, "%s%s", c->ca ? "&cacert=" : "", c->ca ? c->ca : "");
        amqps_url(url, sizeof url, "localhost", rmq.tls_port, opt);
        amqps_case(c->what, url, c->trusted ? NULL : untrusted, "cacert=PATH");
    }
    snprintf(opt, sizeof opt, "&cacert=%s", tls_ca);
    amqps_url(url, sizeof url, "127.0.0.1", rmq.tls_port, opt);
    amqps_case("the signing CA, host given as 127.0.0.1", url, "does not name host \"127.0.0.1\"",
               "an IP address never matches");
    amqps_url(url, sizeof url, "localhost", rmq.port, opt);
    amqps_case("the signing CA, the plain AMQP port", url, "TLS handshake failed",
               "RabbitMQ's TLS listener");
    log_reset();
    amqps_url(url, sizeof url, "localhost", rmq.tls_port, "&verify=false");
    amqps_case("verify=false, no CA given", url, NULL, NULL);
    if (!log_has_line("warn transport.amqp verify=false", "NOT verified"))
        TEST_FAIL_("verify=false: no warning that the certificate is not verified");
    log_print_line("verify=false", "NOT verified");

    /* A certificate from the signing CA for another host name: only the
     * host name check catches it. */
    t0 = ch_now_ms();
    rmh_restart_tls(&rmq, tls_other_cert, tls_other_key);
    fprintf(stderr,
            "   (rabbitmq-server restarted with the other.example certificate in %lld ms)\n",
            (long long)(ch_now_ms() - t0));
    amqps_url(url, sizeof url, "localhost", rmq.tls_port, opt);
    amqps_case("the signing CA, certificate for other.example", url,
               "does not name host \"localhost\"", "a certificate for \"localhost\"");
    amqps_url(url, sizeof url, "localhost", rmq.tls_port, "&verify=false");
    amqps_case("verify=false, certificate for other.example", url, NULL, NULL);
    rmh_stop(&rmq);
    parts_run++;
}
#endif /* OUTBOX_HAVE_RABBITMQ */

/* ------------------------------------------------------------------------
 * postgres: the store with sslmode and sslrootcert
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_HAVE_LIBPQ

#define PG_PASSWORD "tls-test-password" /* in every URL; trust auth ignores it */

static pgh_server pg;

/* Lines in the file at path (0 when it does not exist). */
static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, ch;
    if (!f) return 0;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

/* Copies src to pg.dir/name, owned by the server's user, mode 0600 (the
 * server refuses a key others can read); the copy's path into out. */
static void pg_install_file(const char *src, const char *name, char *out, size_t len)
{
    char buf[8192];
    ssize_t n;
    snprintf(out, len, "%s/%s", pg.dir, name);
    int in = open(src, O_RDONLY);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || fd < 0) TEST_FAIL_("copying %s to %s: %s", src, out, strerror(errno));
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(fd, buf, (size_t)n) != n) TEST_FAIL_("writing %s: %s", out, strerror(errno));
    if (fchown(fd, pg.uid, pg.gid) != 0) TEST_FAIL_("chown %s: %s", out, strerror(errno));
    close(in);
    close(fd);
}

/* Sets the server's TLS (ssl=on with cert/key, or off) and waits until
 * the reload took effect. */
static void pg_set_tls(const char *cert, const char *key)
{
    char sql[CH_PATH + 100], c_path[CH_PATH] = "", k_path[CH_PATH], conninfo[600];
    PGconn *c = pgh_connect(&pg);
    if (cert) {
        pg_install_file(cert, "server.pem", c_path, sizeof c_path);
        pg_install_file(key, "server.key", k_path, sizeof k_path);
        snprintf(sql, sizeof sql, "ALTER SYSTEM SET ssl_cert_file = '%s'", c_path);
        pgh_exec(c, sql);
        snprintf(sql, sizeof sql, "ALTER SYSTEM SET ssl_key_file = '%s'", k_path);
        pgh_exec(c, sql);
    }
    pgh_exec(c, cert ? "ALTER SYSTEM SET ssl = on" : "ALTER SYSTEM SET ssl = off");
    pgh_exec(c, "SELECT pg_reload_conf()");
    PQfinish(c);
    /* The postmaster reloads asynchronously: wait until a new session sees
     * the new settings (the postmaster loads the certificate with them). */
    snprintf(conninfo, sizeof conninfo, "%s sslmode=disable", pg.conninfo);
    for (int waited = 0;; waited += 50) {
        c = PQconnectdb(conninfo);
        PGresult *r = PQexec(c, "SELECT current_setting('ssl'), current_setting('ssl_cert_file')");
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK &&
                 strcmp(PQgetvalue(r, 0, 0), cert ? "on" : "off") == 0 &&
                 (!cert || strcmp(PQgetvalue(r, 0, 1), c_path) == 0);
        PQclear(r);
        PQfinish(c);
        if (ok) break;
        if (waited > 20000) TEST_FAIL_("PostgreSQL did not take ssl=%s", cert ? "on" : "off");
        ch_sleep_ms(50);
    }
}

/* The store URL with a password (which no error may show) and params. */
static void pg_url(char *out, size_t len, const char *params)
{
    snprintf(out, len,
             "postgres://postgres:" PG_PASSWORD "@127.0.0.1:%d/postgres?application_name=tls_test"
             "%s%s",
             pg.port, *params ? "&" : "", params);
}

/* Whether the store's session (application_name tls_test) uses TLS, as the
 * server sees it: 1 yes, 0 no. */
static int pg_store_session_ssl(void)
{
    PGconn *c = pgh_connect(&pg);
    int64_t n = pgh_count(c, "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s "
                             "USING (pid) WHERE a.application_name = 'tls_test' AND s.ssl");
    int64_t all = pgh_count(c, "SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = 'tls_test'");
    PQfinish(c);
    ASSERT_EQ(all, 1);
    return n == 1;
}

/* Opens the store at params; OUTBOX_OK, or the error (its message checked
 * for the password) with the message in err. */
static int pg_try(const char *params, int *ssl, outbox_error *err)
{
    char url[CH_PATH + 300];
    outbox_store *st = NULL;
    pg_url(url, sizeof url, params);
    memset(err, 0, sizeof *err);
    int rc = outbox_store_open(url, &st, err);
    if (rc != OUTBOX_OK) {
        assert_no_secret(err->message, PG_PASSWORD);
        return rc;
    }
    if (ssl) *ssl = pg_store_session_ssl();
    outbox_store_close(st);
    return OUTBOX_OK;
}

/* The store must refuse params, naming `expect`. */
static void pg_refused(const char *what, const char *params, const char *expect)
{
    outbox_error err;
    ASSERT(pg_try(params, NULL, &err) != OUTBOX_OK);
    fprintf(stderr, "%s: %s\n", what, err.message);
    ASSERT_CONTAINS(err.message, expect);
}

/* sslmode=verify-full with each trust case: the store, and a relay from it
 * to a file (the message published) when trusted. */
static void pg_verify_full(void)
{
    char params[CH_PATH + 100], url[CH_PATH + 300], out[CH_PATH], to[CH_PATH + 10];
    outbox_error err;
    int ssl = 0;

    for (int k = 0; k < 3; k++) {
        const trust_case *c = &cases[k];
        /* No sslrootcert: libpq looks for its default root certificate
         * (PGSSLROOTCERT here, a file that does not exist). */
        snprintf(params, sizeof params, "sslmode=verify-full%s%s", c->ca ? "&sslrootcert=" : "",
                 c->ca ? c->ca : "");
        if (!c->trusted) {
            pg_refused(c->what, params,
                       c->ca ? "certificate verify failed" : "root certificate file");
            continue;
        }
        ASSERT_OK(pg_try(params, &ssl, &err), &err);
        ASSERT(ssl);
        pg_url(url, sizeof url, params);
        outbox_store *st = NULL;
        ASSERT_OK(outbox_store_open(url, &st, &err), &err);
        ASSERT_OK(outbox_store_init(st, NULL, NULL, &err), &err);
        outbox_store_close(st);
        PGconn *conn = pgh_connect(&pg);
        outbox_msg *m = NULL;
        ASSERT_OK(outbox_msg_new(&m, "Tls", "Case", "p", "{}", &err), &err);
        pgh_exec(conn, "BEGIN");
        ASSERT_OK(outbox_enqueue_pg(conn, m, &err), &err);
        pgh_exec(conn, "COMMIT");
        outbox_msg_free(m);
        PQfinish(conn);

        outbox_relay *r = NULL;
        outbox_relay_options o;
        outbox_relay_options_init(&o);
        o.once = 1;
        snprintf(to, sizeof to, "file:%s", ch_path(out, "pg-out.jsonl"));
        ASSERT_OK(outbox_relay_new(&r, url, to, &o, &err), &err);
        ASSERT_OK(outbox_relay_run(r, &err), &err);
        outbox_relay_free(r);
        ASSERT_EQ(pgh_outbox_count(&pg, "pending"), 0);
        ASSERT_EQ(count_lines(out), 1);
        fprintf(stderr, "%s: connected over verified TLS, one message relayed\n", c->what);
    }
}

static void part_postgres(void)
{
    const char *why = pgh_available();
    char params[CH_PATH + 100];
    outbox_error err;
    int ssl = -1;

    fprintf(stderr, "-- postgres (sslmode=, sslrootcert=)\n");
    if (why) {
        fprintf(stderr, "   skipped: %s\n", why);
        return;
    }
    /* libpq's default root certificate (~/.postgresql/root.crt) must not
     * exist, so that "no CA given" means no CA at all. */
    setenv("PGSSLROOTCERT", test_path("no-root.crt"), 1);
    pgh_start(&pg);
    pg_set_tls(tls_cert, tls_key);
    pg_verify_full();

    /* A certificate from the trusted CA for another host name: only the
     * host name check (verify-full) catches it. */
    pg_set_tls(tls_other_cert, tls_other_key);
    snprintf(params, sizeof params, "sslmode=verify-full&sslrootcert=%s", tls_ca);
    pg_refused("verify-full, certificate for other.example", params, "does not match host name");
    snprintf(params, sizeof params, "sslmode=verify-ca&sslrootcert=%s", tls_ca);
    ASSERT_OK(pg_try(params, &ssl, &err), &err);
    ASSERT(ssl);
    fprintf(stderr, "verify-ca, certificate for other.example: accepted (no host name check)\n");

    /* The default, sslmode=prefer, kept as libpq has it: TLS without any
     * verification (no CA is trusted here, and the certificate names
     * another host), and plain text when the server has no TLS. */
    ASSERT_OK(pg_try("", &ssl, &err), &err);
    ASSERT(ssl);
    fprintf(stderr, "default sslmode (prefer): connected over TLS, certificate NOT verified\n");
    pg_set_tls(NULL, NULL);
    ASSERT_OK(pg_try("", &ssl, &err), &err);
    ASSERT(!ssl);
    fprintf(stderr, "default sslmode (prefer), server without TLS: connected in plain text\n");
    snprintf(params, sizeof params, "sslmode=verify-full&sslrootcert=%s", tls_ca);
    pg_refused("verify-full, server without TLS", params, "SSL");
    parts_run++;
}
#endif /* OUTBOX_HAVE_LIBPQ */

int main(void)
{
    log_capture_install(OUTBOX_LOG_INFO);
    if (make_certs() != 0) SKIP("the openssl command is not installed");
    make_rogue_ca();
    cases_init();

    part_https();
#ifdef OUTBOX_HAVE_NATS
    part_nats();
#else
    fprintf(stderr, "-- nats\n   skipped: this build has no NATS destination\n");
#endif
#ifdef OUTBOX_HAVE_RABBITMQ
    part_amqps();
#else
    fprintf(stderr, "-- amqps\n   skipped: this build has no RabbitMQ destination\n");
#endif
#ifdef OUTBOX_HAVE_LIBPQ
    part_postgres();
#else
    fprintf(stderr, "-- postgres\n   skipped: this build has no PostgreSQL store\n");
#endif
    if (parts_run == 0) SKIP("no TLS server could run here (see above)");
    fprintf(stderr, "all tls tests passed (%d of 4 parts ran)\n", parts_run);
    return 0;
}
