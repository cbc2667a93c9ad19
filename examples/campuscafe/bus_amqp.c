/*
 * bus_amqp.c - CampusCafe's RabbitMQ bus (--bus amqp://host:port).
 *
 * Producing side: every service's relay (in-process or `outbox relay`)
 * publishes its outbox with the library's amqp:// destination to the
 * exchange "campuscafe", routing key "campuscafe.<EventType>".
 *
 * Topology: the queue "campuscafe-<service>" of each of the four services
 * (durable, quorum: replicated log, survives a broker crash) is bound for
 * the types it consumes, from the service definitions.  Whoever starts
 * first declares all of it (the declarations are idempotent), so an event
 * is never unroutable (the destination would fail it for good) because its
 * consumer was not started yet.
 *
 * Consuming side: one thread per service with its own connection and
 * SQLite connection, prefetch 1, manual acks:
 *
 *   BEGIN IMMEDIATE; outbox_inbox_record_sqlite(service, id);
 *     first time: handler(db, msg) -> COMMIT -> basic.ack
 *     duplicate:  COMMIT -> basic.ack (the handler does not run)
 *   handler or database error: ROLLBACK -> pause -> basic.reject, requeue
 *   malformed message (cannot be rebuilt): basic.reject, not requeued
 *
 * The ack goes only after COMMIT.  A crash between the two leaves the
 * message unacked: RabbitMQ requeues it when the connection closes, and the
 * inbox turns the redelivery into a duplicate.  A lost connection (broker
 * restart) is re-established every 250 ms; the queue keeps the messages.
 *
 * The message handed to the handler is rebuilt as the webhook receiver and
 * the NATS bus do: message_id (the outbox id), ce-type, ce-subject (the
 * aggregate id), ce-aggregatetype, ce-time, every other ce-<ext> header as
 * a message header <ext>.
 *
 * Crash test hook: CAFE_AMQP_KILL_AFTER_COMMIT=N makes the process SIGKILL
 * itself right after the COMMIT of the N-th message it applies, before the
 * ack (tests/test_campuscafe_amqp.sh).
 */
#include "bus_amqp.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(OUTBOX_HAVE_RABBITMQ) && defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "cafe.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define EXCHANGE "campuscafe"
#define ROUTING_KEY_TEMPLATE "campuscafe.{type}"
#define RETRY_SLEEP_MS 250
#define REQUEUE_DELAY_MS 250
#define CONSUME_WAIT_MS 500 /* also the longest wait for a stop request */
#define BUSY_TIMEOUT_MS 5000

static const cafe_service_def *const services[] = {&cafe_order_def, &cafe_inventory_def,
                                                   &cafe_payment_def, &cafe_notification_def};
#define SERVICE_COUNT (sizeof services / sizeof services[0])

/* The parts of --bus amqp://[user[:pass]@]host[:port][/vhost]. */
typedef struct bus_url {
    char host[256], user[128], pass[128], vhost[128];
    int port;
    char where[420]; /* amqp://host:port/vhost, for messages (no credentials) */
} bus_url;

struct cafe_amqp_consumer {
    char *service;
    char queue[128];
    bus_url url;
    outbox_webhook_handler_fn handler;
    void *user;
    amqp_connection_state_t conn; /* NULL: to (re)connect */
    sqlite3 *db;
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    long kill_after; /* CAFE_AMQP_KILL_AFTER_COMMIT; 0: off */
    long applied;
};

static int set_error(outbox_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_error(outbox_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    if (err != NULL) {
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int parse_url(const char *text, bus_url *u, outbox_error *err)
{
    const char *p, *at, *slash, *colon;
    memset(u, 0, sizeof u[0]);
    if (text == NULL || strncmp(text, "amqp://", 7) != 0 || strchr(text, '?') != NULL)
        return set_error(err, OUTBOX_EBADURL,
                         "--bus: not an AMQP URL without a query; use --bus "
                         "amqp://127.0.0.1:5672");
    p = text + 7;
    slash = strchr(p, '/');
    at = strchr(p, '@');
    if (at != NULL && (slash == NULL || at < slash)) {
        colon = memchr(p, ':', (size_t)(at - p));
        snprintf(u->user, sizeof u->user, "%.*s", (int)((colon ? colon : at) - p), p);
        if (colon) snprintf(u->pass, sizeof u->pass, "%.*s", (int)(at - colon - 1), colon + 1);
        p = at + 1;
    } else {
        snprintf(u->user, sizeof u->user, "guest");
        snprintf(u->pass, sizeof u->pass, "guest");
    }
    slash = strchr(p, '/');
    colon = memchr(p, ':', slash ? (size_t)(slash - p) : strlen(p));
    snprintf(u->host, sizeof u->host, "%.*s",
             (int)((colon   ? colon
                    : slash ? slash
                            : p + strlen(p)) -
                   p),
             p);
    u->port = colon ? atoi(colon + 1) : 5672;
    snprintf(u->vhost, sizeof u->vhost, "%s", slash && slash[1] ? slash + 1 : "/");
    if (u->host[0] == '\0' || u->port <= 0 || u->port > 65535)
        return set_error(err, OUTBOX_EBADURL, "--bus: give amqp://HOST:PORT (e.g. 127.0.0.1:5672)");
    snprintf(u->where, sizeof u->where, "amqp://%s:%d/%s", u->host, u->port,
             strcmp(u->vhost, "/") == 0 ? "" : u->vhost);
    return OUTBOX_OK;
}

/* The text of the last RPC's failure ("" when it succeeded). */
static const char *rpc_failure(amqp_connection_state_t c, char *buf, size_t len)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    buf[0] = '\0';
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        snprintf(buf, len, "%s", amqp_error_string2(r.library_error));
    else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
             r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        snprintf(buf, len, "%.*s", (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else if (r.reply_type != AMQP_RESPONSE_NORMAL)
        snprintf(buf, len, "the broker closed the connection");
    return buf;
}

/* Connects and opens channel 1. */
static int connect_amqp(const bus_url *u, amqp_connection_state_t *out, outbox_error *err)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *sock = c ? amqp_tcp_socket_new(c) : NULL;
    struct timeval tv = {2, 0};
    amqp_rpc_reply_t r;
    char why[200];
    int rc;

    *out = NULL;
    if (sock == NULL) {
        if (c) amqp_destroy_connection(c);
        return set_error(err, OUTBOX_ENOMEM, "out of memory connecting to %s", u->where);
    }
    rc = amqp_socket_open_noblock(sock, u->host, u->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        amqp_destroy_connection(c);
        return set_error(err, OUTBOX_EPUBLISH,
                         "--bus %s: cannot connect: %s; check that RabbitMQ runs there", u->where,
                         amqp_error_string2(rc));
    }
    amqp_set_handshake_timeout(c, &tv);
    tv.tv_sec = 10;
    amqp_set_rpc_timeout(c, &tv);
    r = amqp_login(c, u->vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 30, AMQP_SASL_METHOD_PLAIN, u->user,
                   u->pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(c);
        return set_error(err, OUTBOX_ECONFIG,
                         "--bus %s: the broker refused the login; check the user and password",
                         u->where);
    }
    amqp_channel_open(c, 1);
    if (rpc_failure(c, why, sizeof why)[0] != '\0') {
        amqp_destroy_connection(c);
        return set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot open a channel: %s", u->where,
                         why);
    }
    *out = c;
    return OUTBOX_OK;
}

static void disconnect(amqp_connection_state_t c)
{
    if (c == NULL) return;
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

/* Declares the exchange, the four quorum queues and their bindings; adds
 * the queues' ready messages to *ready (when not NULL). */
static int declare_topology(amqp_connection_state_t c, const bus_url *u, int64_t *ready,
                            outbox_error *err)
{
    amqp_table_entry_t arg = {
        .key = amqp_cstring_bytes("x-queue-type"),
        .value = {.kind = AMQP_FIELD_KIND_UTF8, .value = {.bytes = amqp_cstring_bytes("quorum")}}};
    amqp_table_t args = {1, &arg};
    char why[200], queue[128], key[128];
    size_t s, t;

    amqp_exchange_declare(c, 1, amqp_cstring_bytes(EXCHANGE), amqp_cstring_bytes("topic"), 0, 1, 0,
                          0, amqp_empty_table);
    if (rpc_failure(c, why, sizeof why)[0] != '\0')
        return set_error(err, OUTBOX_ECONFIG, "--bus %s: cannot declare exchange %s: %s", u->where,
                         EXCHANGE, why);
    for (s = 0; s < SERVICE_COUNT; s++) {
        amqp_queue_declare_ok_t *ok;
        snprintf(queue, sizeof queue, "campuscafe-%s", services[s]->name);
        ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
        if (rpc_failure(c, why, sizeof why)[0] != '\0')
            return set_error(err, OUTBOX_ECONFIG, "--bus %s: cannot declare queue %s: %s", u->where,
                             queue, why);
        if (ready != NULL && ok != NULL) *ready += ok->message_count;
        for (t = 0; services[s]->consumes[t] != NULL; t++) {
            snprintf(key, sizeof key, "campuscafe.%s", services[s]->consumes[t]);
            amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(EXCHANGE),
                            amqp_cstring_bytes(key), amqp_empty_table);
            if (rpc_failure(c, why, sizeof why)[0] != '\0')
                return set_error(err, OUTBOX_ECONFIG, "--bus %s: cannot bind %s to %s: %s",
                                 u->where, queue, key, why);
        }
    }
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * One-call sessions (destination, backlog, reset)
 * ---------------------------------------------------------------------- */

/* See bus_amqp.h. */
int cafe_amqp_destination(char *buf, size_t size, const char *amqp_url, outbox_error *err)
{
    amqp_connection_state_t c = NULL;
    bus_url u;
    int rc, n;

    if (buf == NULL || size == 0)
        return set_error(err, OUTBOX_EINVAL, "cafe_amqp_destination: no buffer given");
    buf[0] = '\0';
    rc = parse_url(amqp_url, &u, err);
    if (rc == OUTBOX_OK) rc = connect_amqp(&u, &c, err);
    if (rc == OUTBOX_OK) rc = declare_topology(c, &u, NULL, err);
    disconnect(c);
    if (rc != OUTBOX_OK) return rc;
    n = snprintf(buf, size, "%s?exchange=%s&routing_key=%s", amqp_url, EXCHANGE,
                 ROUTING_KEY_TEMPLATE);
    if (n < 0 || (size_t)n >= size) {
        buf[0] = '\0';
        return set_error(err, OUTBOX_EINVAL,
                         "--bus %s: the destination URL does not fit in %zu bytes", u.where, size);
    }
    return OUTBOX_OK;
}

/* See bus_amqp.h. */
int cafe_amqp_backlog(const char *amqp_url, int64_t *out, outbox_error *err)
{
    amqp_connection_state_t c = NULL;
    bus_url u;
    int64_t ready = 0;
    int rc;

    if (out == NULL) return set_error(err, OUTBOX_EINVAL, "cafe_amqp_backlog: out is NULL");
    *out = -1;
    rc = parse_url(amqp_url, &u, err);
    if (rc == OUTBOX_OK) rc = connect_amqp(&u, &c, err);
    if (rc == OUTBOX_OK) rc = declare_topology(c, &u, &ready, err);
    disconnect(c);
    if (rc == OUTBOX_OK) *out = ready;
    return rc;
}

/* See bus_amqp.h. */
int cafe_amqp_reset(const char *amqp_url, outbox_error *err)
{
    amqp_connection_state_t c = NULL;
    char queue[128], why[200];
    bus_url u;
    size_t s;
    int rc;

    rc = parse_url(amqp_url, &u, err);
    if (rc == OUTBOX_OK) rc = connect_amqp(&u, &c, err);
    for (s = 0; rc == OUTBOX_OK && s < SERVICE_COUNT; s++) {
        snprintf(queue, sizeof queue, "campuscafe-%s", services[s]->name);
        amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
        if (rpc_failure(c, why, sizeof why)[0] != '\0')
            rc = set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot delete queue %s: %s", u.where,
                           queue, why);
    }
    disconnect(c);
    return rc;
}

/* ------------------------------------------------------------------------
 * Consumer
 * ---------------------------------------------------------------------- */

/* A copy of the string header key of t into out ("" and 0 when absent). */
static int header(const amqp_table_t *t, const char *key, char *out, size_t len)
{
    int i;
    out[0] = '\0';
    for (i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len == strlen(key) && memcmp(e->key.bytes, key, e->key.len) == 0 &&
            e->value.kind == AMQP_FIELD_KIND_UTF8) {
            snprintf(out, len, "%.*s", (int)e->value.value.bytes.len,
                     (const char *)e->value.value.bytes.bytes);
            return 1;
        }
    }
    return 0;
}

static const char *const standard_attrs[] = {"specversion",   "id",         "source",
                                             "type",          "subject",    "time",
                                             "aggregatetype", "dataschema", "datacontenttype"};

/* Builds the outbox message from a delivery; OUTBOX_OK or an error with
 * err filled (the message can never be applied). */
static int rebuild(const amqp_message_t *m, outbox_msg **out, outbox_error *err)
{
    const amqp_basic_properties_t *p = &m->properties;
    static const amqp_table_t none = {0, NULL};
    const amqp_table_t *h = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : &none;
    char id[64], type[256], subject[512], atype[256], when[64], name[80], value[1024];
    char *payload = NULL;
    outbox_msg *msg = NULL;
    int64_t at = 0;
    int rc, i;

    *out = NULL;
    snprintf(id, sizeof id, "%.*s",
             (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? (int)p->message_id.len : 0,
             (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? (const char *)p->message_id.bytes : "");
    if (!header(h, "ce-type", type, sizeof type) ||
        !header(h, "ce-subject", subject, sizeof subject) || id[0] == '\0')
        return set_error(err, OUTBOX_EBADHEADERS,
                         "a message lacks message_id, ce-type or ce-subject");
    header(h, "ce-aggregatetype", atype, sizeof atype);
    if (header(h, "ce-time", when, sizeof when) && outbox_time_parse(when, &at) != 0)
        return set_error(err, OUTBOX_EBADHEADERS, "message %s: ce-time \"%s\" is not RFC 3339", id,
                         when);
    payload = malloc(m->body.len + 1);
    if (payload == NULL)
        return set_error(err, OUTBOX_ENOMEM, "out of memory reading message %s", id);
    memcpy(payload, m->body.bytes, m->body.len);
    payload[m->body.len] = '\0';
    rc = outbox_msg_new(&msg, type, atype, subject, m->body.len ? payload : NULL, err);
    if (rc == OUTBOX_OK) rc = outbox_msg_set_id(msg, id, err);
    if (rc == OUTBOX_OK && at != 0) rc = outbox_msg_set_occurred_at(msg, at, err);
    for (i = 0; rc == OUTBOX_OK && i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        size_t j, n = e->key.len;
        int standard = 0;
        if (n <= 3 || n - 3 >= sizeof name || memcmp(e->key.bytes, "ce-", 3) != 0 ||
            e->value.kind != AMQP_FIELD_KIND_UTF8)
            continue;
        snprintf(name, sizeof name, "%.*s", (int)(n - 3), (const char *)e->key.bytes + 3);
        for (j = 0; j < sizeof standard_attrs / sizeof standard_attrs[0]; j++)
            if (strcmp(name, standard_attrs[j]) == 0) standard = 1;
        if (standard) continue;
        snprintf(value, sizeof value, "%.*s", (int)e->value.value.bytes.len,
                 (const char *)e->value.value.bytes.bytes);
        rc = outbox_msg_set_header(msg, name, value, err);
    }
    free(payload);
    if (rc != OUTBOX_OK) {
        outbox_msg_free(msg);
        return rc;
    }
    *out = msg;
    return OUTBOX_OK;
}

/* Applies msg once through the inbox, in one transaction: OUTBOX_OK
 * (applied), OUTBOX_DUPLICATE (nothing done) or an error (rolled back). */
static int apply_once(cafe_amqp_consumer *c, const outbox_msg *msg, outbox_error *err)
{
    int rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return set_error(err, OUTBOX_ESTORE, "BEGIN IMMEDIATE: %s", sqlite3_errmsg(c->db));
    rc = outbox_inbox_record_sqlite(c->db, c->service, outbox_msg_id(msg), err);
    if (rc == OUTBOX_OK) {
        rc = c->handler(c->user, c->db, msg, err);
        if (rc > 0) rc = set_error(err, OUTBOX_EINTERNAL, "handler returned %d", rc);
    }
    if ((rc == OUTBOX_OK || rc == OUTBOX_DUPLICATE) &&
        sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = set_error(err, OUTBOX_ESTORE, "COMMIT: %s", sqlite3_errmsg(c->db));
    if (rc != OUTBOX_OK && rc != OUTBOX_DUPLICATE && !sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static void handle(cafe_amqp_consumer *c, const amqp_envelope_t *env)
{
    outbox_error err;
    outbox_msg *msg = NULL;
    int rc;

    memset(&err, 0, sizeof err);
    rc = rebuild(&env->message, &msg, &err);
    if (rc != OUTBOX_OK) {
        fprintf(stderr, "campuscafe %s: amqp: dropping a malformed message: %s\n", c->service,
                err.message);
        amqp_basic_reject(c->conn, 1, env->delivery_tag, 0);
        return;
    }
    rc = apply_once(c, msg, &err);
    if (rc == OUTBOX_OK && c->kill_after > 0 && ++c->applied == c->kill_after) {
        fprintf(stderr,
                "campuscafe %s: amqp: %s committed; CAFE_AMQP_KILL_AFTER_COMMIT: SIGKILL before "
                "the ack\n",
                c->service, outbox_msg_id(msg));
        kill(getpid(), SIGKILL);
    }
    if (rc == OUTBOX_DUPLICATE)
        fprintf(stderr,
                "campuscafe %s: amqp: %s %s was already applied (redelivery); acked, not applied "
                "again\n",
                c->service, outbox_msg_type(msg), outbox_msg_id(msg));
    if (rc == OUTBOX_OK || rc == OUTBOX_DUPLICATE) {
        amqp_basic_ack(c->conn, 1, env->delivery_tag, 0);
    } else {
        fprintf(stderr, "campuscafe %s: amqp: %s not applied (%s); it will be redelivered\n",
                c->service, outbox_msg_id(msg), err.message);
        sleep_ms(REQUEUE_DELAY_MS);
        amqp_basic_reject(c->conn, 1, env->delivery_tag, 1);
    }
    outbox_msg_free(msg);
}

/* Connects, declares, and starts consuming the service's queue. */
static int subscribe(cafe_amqp_consumer *c, outbox_error *err)
{
    char why[200];
    int rc = connect_amqp(&c->url, &c->conn, err);
    if (rc == OUTBOX_OK) rc = declare_topology(c->conn, &c->url, NULL, err);
    if (rc == OUTBOX_OK) {
        amqp_basic_qos(c->conn, 1, 0, 1, 0);
        amqp_basic_consume(c->conn, 1, amqp_cstring_bytes(c->queue), amqp_empty_bytes, 0, 0, 0,
                           amqp_empty_table);
        if (rpc_failure(c->conn, why, sizeof why)[0] != '\0')
            rc = set_error(err, OUTBOX_EPUBLISH, "--bus %s: cannot consume %s: %s", c->url.where,
                           c->queue, why);
    }
    if (rc != OUTBOX_OK) {
        disconnect(c->conn);
        c->conn = NULL;
    }
    return rc;
}

static void *consume(void *arg)
{
    cafe_amqp_consumer *c = arg;
    int complained = 0;

    while (!atomic_load(&c->stop)) {
        amqp_envelope_t env;
        amqp_rpc_reply_t r;
        struct timeval tv = {0, CONSUME_WAIT_MS * 1000};
        outbox_error err;

        if (c->conn == NULL) {
            if (subscribe(c, &err) != OUTBOX_OK) {
                if (!complained)
                    fprintf(stderr, "campuscafe %s: amqp: %s; retrying\n", c->service, err.message);
                complained = 1;
                sleep_ms(RETRY_SLEEP_MS);
                continue;
            }
            if (complained)
                fprintf(stderr, "campuscafe %s: amqp: consuming %s again\n", c->service, c->queue);
            complained = 0;
        }
        amqp_maybe_release_buffers(c->conn);
        r = amqp_consume_message(c->conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            /* Connection or channel lost (broker restart): unacked messages
             * are requeued by the broker; connect again. */
            fprintf(stderr, "campuscafe %s: amqp: connection to %s lost; reconnecting\n",
                    c->service, c->url.where);
            amqp_destroy_connection(c->conn);
            c->conn = NULL;
            continue;
        }
        handle(c, &env);
        amqp_destroy_envelope(&env);
    }
    return NULL;
}

/* See bus_amqp.h. */
int cafe_amqp_consumer_start(cafe_amqp_consumer **out, const char *amqp_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err)
{
    cafe_amqp_consumer *c = NULL;
    int rc;

    (void)types; /* the queue's bindings come from the service definitions */
    if (out != NULL) *out = NULL;
    if (out == NULL || service == NULL || service[0] == '\0' || db_path == NULL || handler == NULL)
        return set_error(
            err, OUTBOX_EINVAL,
            "cafe_amqp_consumer_start: out, service, db_path and handler are required");
    c = calloc(1, sizeof *c);
    if (c == NULL || (c->service = strdup(service)) == NULL) {
        free(c);
        return set_error(err, OUTBOX_ENOMEM, "out of memory starting the consumer");
    }
    c->handler = handler;
    c->user = user;
    if (getenv("CAFE_AMQP_KILL_AFTER_COMMIT") != NULL)
        c->kill_after = strtol(getenv("CAFE_AMQP_KILL_AFTER_COMMIT"), NULL, 10);
    snprintf(c->queue, sizeof c->queue, "campuscafe-%s", service);
    rc = parse_url(amqp_url, &c->url, err);
    if (rc != OUTBOX_OK) goto fail;
    if (sqlite3_open_v2(db_path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        rc = set_error(err, OUTBOX_ESTORE, "--dir: cannot open %s: %s", db_path,
                       c->db ? sqlite3_errmsg(c->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    rc = outbox_schema_init_sqlite(c->db, err);
    if (rc == OUTBOX_OK) rc = subscribe(c, err);
    if (rc != OUTBOX_OK) goto fail;
    if (pthread_create(&c->thread, NULL, consume, c) != 0) {
        rc = set_error(err, OUTBOX_ENOMEM, "cannot start the AMQP consumer thread");
        goto fail;
    }
    c->thread_started = 1;
    *out = c;
    return OUTBOX_OK;
fail:
    cafe_amqp_consumer_free(c);
    return rc;
}

/* See bus_amqp.h. */
void cafe_amqp_consumer_free(cafe_amqp_consumer *c)
{
    if (c == NULL) return;
    atomic_store(&c->stop, 1);
    if (c->thread_started) pthread_join(c->thread, NULL);
    disconnect(c->conn);
    if (c->db) sqlite3_close(c->db);
    free(c->service);
    free(c);
}

#else /* no librabbitmq (or no services in this build) */

static int not_built(outbox_error *err)
{
    if (err != NULL) {
        err->code = OUTBOX_ENOTBUILT;
        snprintf(err->message, sizeof err->message, "--bus amqp:// needs a build with librabbitmq");
    }
    return OUTBOX_ENOTBUILT;
}

/* Without librabbitmq: OUTBOX_ENOTBUILT. */
int cafe_amqp_destination(char *buf, size_t size, const char *amqp_url, outbox_error *err)
{
    (void)amqp_url;
    if (buf != NULL && size > 0) buf[0] = '\0';
    return not_built(err);
}

/* Without librabbitmq: OUTBOX_ENOTBUILT, *out NULL. */
int cafe_amqp_consumer_start(cafe_amqp_consumer **out, const char *amqp_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err)
{
    (void)amqp_url;
    (void)service;
    (void)types;
    (void)db_path;
    (void)handler;
    (void)user;
    if (out != NULL) *out = NULL;
    return not_built(err);
}

/* Without librabbitmq: OUTBOX_ENOTBUILT, *out -1. */
int cafe_amqp_backlog(const char *amqp_url, int64_t *out, outbox_error *err)
{
    (void)amqp_url;
    if (out != NULL) *out = -1;
    return not_built(err);
}

/* Without librabbitmq: OUTBOX_ENOTBUILT. */
int cafe_amqp_reset(const char *amqp_url, outbox_error *err)
{
    (void)amqp_url;
    return not_built(err);
}

/* Without librabbitmq nothing is ever started. */
void cafe_amqp_consumer_free(cafe_amqp_consumer *c)
{
    (void)c;
}

#endif /* OUTBOX_HAVE_RABBITMQ */
