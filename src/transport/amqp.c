/*
 * amqp.c - the `amqp://` and `amqps://` destinations: RabbitMQ (AMQP 0-9-1)
 * through librabbitmq.
 *
 *   amqp://[user:pass@]host[:5672][/vhost]?exchange=NAME&routing_key=TEMPLATE
 *
 * Each message is a basic.publish to the exchange with the routing key made
 * from the template, mandatory set, persistent (delivery_mode 2), message_id
 * = the outbox id, timestamp = occurred_at, type = the message type,
 * content_type application/json, and the CloudEvents attributes and the
 * message's headers in the AMQP headers table (binary content mode with the
 * ce- prefix of the CloudEvents RabbitMQ binding; docs/RABBITMQ.md has the
 * mapping).
 *
 * Confirms: the channel is in confirm mode (confirm.select), so the broker
 * acks each publication once it is stored (for a quorum queue: replicated
 * and on disk).  Delivery tags count from 1 per channel; the tags in flight
 * are kept in publish order (`flight`), and a basic.ack or basic.nack with
 * the multiple flag settles every tag up to its own.  basic.ack is OK;
 * basic.nack is retriable.  An unroutable message (no queue bound for its
 * routing key) comes back as basic.return before its ack: it is then
 * rejected for good with the reason.  A channel closed by the broker (an
 * exchange deleted: 404) or a lost connection settles every tag in flight
 * as retriable; the next batch opens a new channel or connection.  Nothing
 * is OK unless acked.  When no confirm arrives for confirm_timeout, the
 * connection is dropped and what is unconfirmed is retried.
 *
 * Pipelining and order (publish_begin / publish_end, see internal.h), as
 * the NATS destination does it: at most one unconfirmed message per
 * aggregate, across the open batches.  A batch is published in waves: each
 * wave sends every message whose previous message of its aggregate (in this
 * batch or any open one before) is confirmed, so messages of different
 * aggregates are many in flight (up to max_unconfirmed) while those of one
 * aggregate follow one another.  A message whose previous one was not
 * confirmed is not sent at all, and a batch stops sending once its
 * connection or channel was lost since it (or the open batches before it)
 * began: RabbitMQ may have stored a message whose confirm was lost with the
 * channel, and one sent on a new channel could then overtake the retry of
 * the one before it.
 *
 * The window (publish_room): the relay may keep more than two batches open
 * (up to OUTBOX_PIPELINE_MAX_DEPTH) while the messages of the open batches
 * that have no result yet, with the next batch, stay within
 * max_unconfirmed, so a relay batch smaller than max_unconfirmed still
 * keeps as many publications unconfirmed as the channel allows.  The
 * chains above cross every open batch (batch_prepare, release_chains), so
 * the order and the failure rules do not depend on the depth.
 *
 * No broker-side de-duplication exists in RabbitMQ: a republished message
 * (after a relay crash or a lost confirm) is delivered again, with the same
 * message_id; consumers drop it with an inbox (docs/RABBITMQ.md).
 *
 * Liveness: a heartbeat (heartbeat=, default 30 s) lets librabbitmq notice
 * a dead broker while it waits; before a batch, frames that arrived while
 * the relay was idle are read, so a connection the broker closed is
 * replaced before publishing.  interrupt (async-signal-safe: a flag) cuts
 * the wait for confirms short within 100 ms.
 *
 * Start-up: the exchange must exist (a passive declare), unless declare=
 * creates it: declare=exchange (a durable topic exchange) or
 * declare=quorum:QUEUE (that, and a durable quorum queue bound with '#'),
 * for quick starts.  The password never reaches errors or logs.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* What the settings (URL query and --to-opt) are read into.  The table is
 * in every build, so help and docs describe the driver without librabbitmq
 * too. */
typedef struct rmq_config {
    char *exchange;
    char *routing_key;
    char *declare;
    int64_t max_unconfirmed;
    int64_t confirm_timeout_ms;
    int64_t connect_timeout_ms;
    int64_t heartbeat_ms;
    char *cacert;
    int verify;
} rmq_config;

#define RMQ_FIELD(f) offsetof(rmq_config, f)

static const outbox_prop rmq_props[] = {
    {"exchange", OUTBOX_PROP_STRING, RMQ_FIELD(exchange), "outbox", NULL, "NAME",
     "The exchange messages are published to; it must exist (or use declare=).  \"\" is the "
     "default exchange, which routes to the queue named by the routing key."},
    {"routing_key", OUTBOX_PROP_STRING, RMQ_FIELD(routing_key), "outbox.{aggregate_type}.{type}",
     NULL, "TEMPLATE",
     "The routing key of each message, made of {type}, {aggregate_type} and {aggregate_id} "
     "('.' in a value becomes '_'); at most 255 bytes."},
    {"declare", OUTBOX_PROP_STRING, RMQ_FIELD(declare), NULL, NULL, "exchange|quorum:QUEUE",
     "Quick start: declare the exchange (durable, topic) at start-up; quorum:QUEUE also declares "
     "the durable quorum queue QUEUE bound to it with '#'."},
    {"max_unconfirmed", OUTBOX_PROP_INT, RMQ_FIELD(max_unconfirmed), "4096", "1..1000000", NULL,
     "Publications waiting for their confirm at once (the window on the channel); the relay "
     "also begins another batch only while its open batches' messages without a result, with "
     "that batch, stay within this many (at least two batches)."},
    {"confirm_timeout", OUTBOX_PROP_DURATION, RMQ_FIELD(confirm_timeout_ms), "10s", "1ms..", NULL,
     "How long a batch waits for the broker's confirms; then the connection is dropped and what "
     "is unconfirmed is retried."},
    {"connect_timeout", OUTBOX_PROP_DURATION, RMQ_FIELD(connect_timeout_ms), "5s", "1ms..", NULL,
     "How long connecting and logging in may take."},
    {"heartbeat", OUTBOX_PROP_DURATION, RMQ_FIELD(heartbeat_ms), "30s", "0ms..1h", NULL,
     "The AMQP heartbeat (whole seconds; 0 turns it off): a broker silent for two of them is "
     "taken as gone."},
    {"cacert", OUTBOX_PROP_PATH, RMQ_FIELD(cacert), NULL, NULL, NULL,
     "amqps: a PEM file of the CA certificates to trust (default: the system's bundle, "
     "/etc/ssl/certs/ca-certificates.crt)."},
    {"verify", OUTBOX_PROP_BOOL, RMQ_FIELD(verify), "true", NULL, NULL,
     "amqps: check the broker's certificate and host name (false only for tests)."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_RABBITMQ

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include <arpa/inet.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define COMPONENT "transport.amqp"
#define CHANNEL 1
#define ROUTING_KEY_MAX 255
#define WAIT_SLICE_MS 100 /* longest blocking read: interrupt is seen this soon */
#define WHY_MAX 512
/* librabbitmq loads no default trust store: without cacert= the system's. */
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/* One batch between publish_begin and publish_end; prev[i]: its message's
 * place in its aggregate's chain (OUTBOX_PREV_*, see internal.h). */
typedef struct rmq_batch {
    outbox_msg *const *msgs; /* NULL: the slot is free */
    outbox_publish_result *results;
    size_t n;
    int stalled;             /* 1: confirms stopped; 2: connection or channel lost */
    unsigned generation0;    /* st->generation when it (or the batch it follows) began */
    unsigned char *done;     /* per message: its result is final */
    unsigned char *started;  /* per message: published, or given its result */
    unsigned char *returned; /* per message: came back unroutable (rejected at its ack) */
    unsigned char *prev_in;  /* per message with prev <= OUTBOX_PREV_OLDER(0): the slot of the
                                open batch that holds its previous message */
    size_t finished;         /* messages done */
    size_t unstarted;        /* every message before it is started */
    long *prev;
    outbox_aggindex ids;  /* message id -> index */
    outbox_aggindex aggs; /* aggregate id -> index of its last message */
    size_t cap;
} rmq_batch;

/* prev_in holds a batch slot in an unsigned char. */
_Static_assert(OUTBOX_PIPELINE_MAX_DEPTH <= 256, "a batch slot must fit in prev_in");

/* A publication waiting for its confirm: delivery tag -> message. */
typedef struct rmq_flight {
    uint64_t tag;
    uint32_t index;
    int slot; /* batch slot; -1 once settled */
} rmq_flight;

typedef struct rmq_state {
    rmq_config c;
    char *host, *vhost, *user, *password;
    int port, tls;
    char shown[128]; /* amqp://host:port/vhost, for messages (cut) */
    outbox_route *route;
    char *source;
    outbox_buf key;

    amqp_connection_state_t conn; /* NULL: not connected */
    int channel_open;
    uint64_t next_tag;
    unsigned generation;    /* counts lost connections and channels */
    char lost_why[WHY_MAX]; /* why the last one was lost */
    atomic_int interrupted;

    rmq_batch batches[OUTBOX_PIPELINE_MAX_DEPTH];
    int first, count;

    rmq_flight *flight; /* in tag order, [flight_head, flight_len) */
    size_t flight_head, flight_len, flight_cap, in_flight;
    uint64_t settled; /* confirms applied, ever */

    amqp_table_entry_t *entries; /* headers of the message being published */
    char (*names)[80];
    size_t entries_cap;
} rmq_state;

static rmq_batch *batch_at(rmq_state *st, int k)
{
    return &st->batches[(st->first + k) % OUTBOX_PIPELINE_MAX_DEPTH];
}

/* The reply of the last RPC as text ("" when it succeeded). */
static void reply_text(amqp_rpc_reply_t r, char *out, size_t len)
{
    out[0] = '\0';
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        snprintf(out, len, "%s", amqp_error_string2(r.library_error));
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            snprintf(out, len, "%.*s (%u)", (int)m->reply_text.len, (char *)m->reply_text.bytes,
                     m->reply_code);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            snprintf(out, len, "%.*s (%u)", (int)m->reply_text.len, (char *)m->reply_text.bytes,
                     m->reply_code);
        } else {
            snprintf(out, len, "unexpected broker method 0x%08x", (unsigned)r.reply.id);
        }
    } else if (r.reply_type == AMQP_RESPONSE_NONE) {
        snprintf(out, len, "no reply from the broker");
    }
}

/* ------------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------- */

/* Settles every publication in flight with code and why (the channel or
 * connection that carried them is gone), and counts the loss. */
static void settle_all(rmq_state *st, int code, const char *why)
{
    size_t k;
    for (k = st->flight_head; k < st->flight_len; k++) {
        rmq_flight *f = &st->flight[k];
        rmq_batch *b;
        if (f->slot < 0) continue;
        b = &st->batches[f->slot];
        if (!b->done[f->index]) {
            outbox__result_set(&b->results[f->index], code, "%s", why);
            b->done[f->index] = 1;
            b->finished++;
        }
        f->slot = -1;
    }
    st->flight_head = st->flight_len = 0;
    st->in_flight = 0;
    st->settled++;
    st->generation++;
    snprintf(st->lost_why, sizeof st->lost_why, "%s", why);
}

/* Drops the connection; what is in flight is settled with code and why. */
static void disconnect(rmq_state *st, int code, const char *why)
{
    if (st->conn != NULL) {
        /* No close handshake: the peer may be gone, and a close would
         * wait for it. */
        amqp_destroy_connection(st->conn);
        st->conn = NULL;
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "connection to %s dropped: %s", st->shown, why);
    }
    st->channel_open = 0;
    settle_all(st, code, why);
}

/* Answers the broker's channel.close and forgets the channel; the next
 * batch opens it again. */
static void channel_closed(rmq_state *st, const amqp_channel_close_t *m)
{
    char why[WHY_MAX];
    amqp_channel_close_ok_t ok = {0};
    snprintf(why, sizeof why, "RabbitMQ closed the channel: %.*s (%u)", (int)m->reply_text.len,
             (char *)m->reply_text.bytes, m->reply_code);
    outbox__log(OUTBOX_LOG_WARN, COMPONENT, "%s: %s", st->shown, why);
    amqp_send_method(st->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    st->channel_open = 0;
    settle_all(st, OUTBOX_EPUBLISH, why);
}

/* Opens the channel in confirm mode.  *why says what failed. */
static int open_channel(rmq_state *st, char *why, size_t len)
{
    char text[200];
    amqp_channel_open(st->conn, CHANNEL);
    reply_text(amqp_get_rpc_reply(st->conn), text, sizeof text);
    if (text[0] == '\0') {
        amqp_confirm_select(st->conn, CHANNEL);
        reply_text(amqp_get_rpc_reply(st->conn), text, sizeof text);
    }
    if (text[0] != '\0') {
        snprintf(why, len, "cannot open a confirm channel on %s: %s", st->shown, text);
        return OUTBOX_EPUBLISH;
    }
    st->channel_open = 1;
    st->next_tag = 1;
    return OUTBOX_OK;
}

/* Why TLS refused the broker (status: librabbitmq's), with what to change:
 * the library's own text, kept in parentheses, says neither.  ca: the CA
 * file that was trusted, NULL when none. */
static void tls_refusal(const rmq_state *st, int status, const char *ca, char *why, size_t len)
{
    const char *lib = amqp_error_string2(status);
    const char *trust = "no CA in cacert=", *file = ca, *after = "";
    unsigned char addr[16];

    if (st->c.cacert == NULL && ca != NULL) {
        trust = "no CA in the system's bundle ";
        after = " (no cacert= given)";
    } else if (ca == NULL) {
        trust = "no CA at all is trusted (no cacert= given, no ";
        file = SYSTEM_CA_BUNDLE;
        after = ") and none";
    }
    switch (status) {
    case AMQP_STATUS_SSL_PEER_VERIFY_FAILED:
        snprintf(why, len,
                 "cannot connect to %s: its TLS certificate is not trusted (%s): %s%s%s signed "
                 "it, or it is not valid at this time; give the CA that signed it with "
                 "cacert=PATH.pem",
                 st->shown, lib, trust, file, after);
        break;
    case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED:
        /* librabbitmq matches the host against the certificate's DNS names
         * only, so an address in the URL fails even when the certificate
         * lists it as an IP address: another certificate would not help. */
        if (inet_pton(AF_INET, st->host, addr) == 1 || strchr(st->host, ':') != NULL)
            snprintf(why, len,
                     "cannot connect to %s: its TLS certificate does not name host \"%s\" (%s); "
                     "put a DNS name the certificate lists in the URL instead of the address "
                     "(librabbitmq checks DNS names only: an IP address never matches)",
                     st->shown, st->host, lib);
        else
            snprintf(why, len,
                     "cannot connect to %s: its TLS certificate does not name host \"%s\" (%s); "
                     "put a host name the certificate lists in the URL, or give RabbitMQ a "
                     "certificate for \"%s\"",
                     st->shown, st->host, lib, st->host);
        break;
    case AMQP_STATUS_SSL_CONNECTION_FAILED:
        snprintf(why, len,
                 "cannot connect to %s: the TLS handshake failed (%s); check that port %d is "
                 "RabbitMQ's TLS listener (listeners.ssl, usually 5671), not its plain one (5672)",
                 st->shown, lib, st->port);
        break;
    default:
        snprintf(why, len, "cannot connect to %s: %s; check that RabbitMQ's TLS listener is there",
                 st->shown, lib);
        break;
    }
}

/* Connects and logs in.  Returns OUTBOX_OK, OUTBOX_ECONFIG (refused
 * credentials, TLS set-up) or OUTBOX_EPUBLISH, with why filled. */
static int connect_broker(rmq_state *st, char *why, size_t len)
{
    amqp_socket_t *sock;
    struct timeval tv;
    amqp_rpc_reply_t r;
    const char *ca = NULL; /* amqps: the CA file trusted, NULL: none */
    char text[200];
    int rc;

    st->conn = amqp_new_connection();
    if (st->conn == NULL) {
        snprintf(why, len, "out of memory connecting to %s", st->shown);
        return OUTBOX_ENOMEM;
    }
    if (st->tls) {
        sock = amqp_ssl_socket_new(st->conn);
        if (sock != NULL) {
            ca = st->c.cacert;
            if (ca == NULL && access(SYSTEM_CA_BUNDLE, R_OK) == 0) ca = SYSTEM_CA_BUNDLE;
            amqp_ssl_socket_set_verify_peer(sock, st->c.verify);
            amqp_ssl_socket_set_verify_hostname(sock, st->c.verify);
            if (ca != NULL && amqp_ssl_socket_set_cacert(sock, ca) != 0) {
                snprintf(why, len, "cannot load cacert \"%s\"; give a readable PEM file", ca);
                rc = OUTBOX_ECONFIG;
                goto fail;
            }
        }
    } else {
        sock = amqp_tcp_socket_new(st->conn);
    }
    if (sock == NULL) {
        snprintf(why, len, "cannot make a socket for %s", st->shown);
        rc = OUTBOX_ENOMEM;
        goto fail;
    }
    tv.tv_sec = (time_t)(st->c.connect_timeout_ms / 1000);
    tv.tv_usec = (suseconds_t)(st->c.connect_timeout_ms % 1000) * 1000;
    rc = amqp_socket_open_noblock(sock, st->host, st->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        if (st->tls &&
            (rc == AMQP_STATUS_SSL_ERROR || rc == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED ||
             rc == AMQP_STATUS_SSL_PEER_VERIFY_FAILED || rc == AMQP_STATUS_SSL_CONNECTION_FAILED))
            tls_refusal(st, rc, ca, why, len);
        else
            snprintf(why, len, "cannot connect to %s: %s; check that RabbitMQ runs there",
                     st->shown, amqp_error_string2(rc));
        rc = OUTBOX_EPUBLISH;
        goto fail;
    }
    amqp_set_handshake_timeout(st->conn, &tv);
    r = amqp_login(st->conn, st->vhost, 0, AMQP_DEFAULT_FRAME_SIZE,
                   (int)((st->c.heartbeat_ms + 999) / 1000), AMQP_SASL_METHOD_PLAIN,
                   st->user ? st->user : "guest", st->password ? st->password : "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        reply_text(r, text, sizeof text);
        if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION ||
            r.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
            snprintf(why, len,
                     "%s refused the login to vhost \"%s\": %s; check the user and password in "
                     "the URL and the vhost's permissions",
                     st->shown, st->vhost, text);
            rc = OUTBOX_ECONFIG;
        } else {
            snprintf(why, len, "cannot log in to %s: %s", st->shown, text);
            rc = OUTBOX_EPUBLISH;
        }
        goto fail;
    }
    {
        /* RPCs (channel open, declare) wait at most this long. */
        struct timeval rpc;
        rpc.tv_sec = (time_t)(st->c.confirm_timeout_ms / 1000);
        rpc.tv_usec = (suseconds_t)(st->c.confirm_timeout_ms % 1000) * 1000;
        amqp_set_rpc_timeout(st->conn, &rpc);
    }
    rc = open_channel(st, why, len);
    if (rc != OUTBOX_OK) goto fail;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "connected to %s (exchange \"%s\")", st->shown,
                st->c.exchange);
    return OUTBOX_OK;
fail:
    amqp_destroy_connection(st->conn);
    st->conn = NULL;
    st->channel_open = 0;
    return rc;
}

/* ------------------------------------------------------------------------
 * Confirms and returns
 * ---------------------------------------------------------------------- */

/* The open batch and index of the message with this id, or NULL. */
static rmq_batch *find_id(rmq_state *st, const char *id, size_t *index)
{
    int k;
    for (k = 0; k < st->count; k++) {
        rmq_batch *b = batch_at(st, k);
        uint32_t i;
        if (b->msgs != NULL && outbox__aggindex_lookup(&b->ids, id, &i)) {
            *index = i;
            return b;
        }
    }
    return NULL;
}

/* Applies an ack (ok) or a nack to one publication in flight. */
static void settle(rmq_state *st, rmq_flight *f, int ok)
{
    rmq_batch *b = &st->batches[f->slot];
    size_t i = f->index;
    f->slot = -1;
    st->in_flight--;
    st->settled++;
    if (b->done[i]) return;
    b->done[i] = 1;
    b->finished++;
    if (!ok) {
        outbox__result_set(&b->results[i], OUTBOX_EPUBLISH,
                           "RabbitMQ did not take the message (basic.nack); it will be retried");
    } else if (OUTBOX_FAULT("amqp_ack_lost") != 0) {
        /* Tests: a confirm lost on the way back (the message is retried,
         * and delivered twice). */
        outbox__result_set(&b->results[i], OUTBOX_EPUBLISH,
                           "injected fault amqp_ack_lost: the confirm was dropped");
    } else if (!b->returned[i]) {
        outbox__result_set(&b->results[i], OUTBOX_OK, NULL);
    } /* returned: EREJECTED with the reason, set by on_return */
}

/* basic.ack / basic.nack for tag (and every tag before it: multiple). */
static void on_confirm(rmq_state *st, uint64_t tag, int multiple, int ok)
{
    size_t lo = st->flight_head, hi = st->flight_len;
    if (multiple) {
        for (; lo < hi && st->flight[lo].tag <= tag; lo++)
            if (st->flight[lo].slot >= 0) settle(st, &st->flight[lo], ok);
    } else {
        while (lo < hi) { /* tags are increasing: binary search */
            size_t mid = lo + (hi - lo) / 2;
            if (st->flight[mid].tag < tag)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < st->flight_len && st->flight[lo].tag == tag && st->flight[lo].slot >= 0)
            settle(st, &st->flight[lo], ok);
    }
    while (st->flight_head < st->flight_len && st->flight[st->flight_head].slot < 0)
        st->flight_head++;
    if (st->flight_head == st->flight_len) st->flight_head = st->flight_len = 0;
}

/* basic.return: the message (found by its message_id) was unroutable; its
 * ack follows and rejects it. */
static int on_return(rmq_state *st, const amqp_basic_return_t *m, amqp_channel_t channel)
{
    amqp_message_t msg;
    amqp_rpc_reply_t r = amqp_read_message(st->conn, channel, &msg, 0);
    rmq_batch *b;
    char id[37];
    size_t i;

    if (r.reply_type != AMQP_RESPONSE_NORMAL) return -1;
    id[0] = '\0';
    if ((msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        msg.properties.message_id.len < sizeof id) {
        memcpy(id, msg.properties.message_id.bytes, msg.properties.message_id.len);
        id[msg.properties.message_id.len] = '\0';
    }
    b = find_id(st, id, &i);
    if (b != NULL && !b->done[i]) {
        b->returned[i] = 1;
        outbox__result_set(&b->results[i], OUTBOX_EREJECTED,
                           "unroutable: no queue is bound to exchange \"%.*s\" for routing key "
                           "\"%.*s\" (%.*s %u); bind a queue or change routing_key",
                           (int)m->exchange.len, (char *)m->exchange.bytes, (int)m->routing_key.len,
                           (char *)m->routing_key.bytes, (int)m->reply_text.len,
                           (char *)m->reply_text.bytes, m->reply_code);
    }
    amqp_destroy_message(&msg);
    return 0;
}

/* Reads and applies one frame, waiting at most timeout_ms (0: only what
 * has arrived).  Returns 1 when a frame was handled, 0 on timeout, -1 when
 * the connection was lost (dropped, in flight settled). */
static int read_frame(rmq_state *st, int64_t timeout_ms)
{
    amqp_frame_t frame;
    struct timeval tv;
    char why[WHY_MAX];
    int rc;

    if (st->conn == NULL) return -1;
    tv.tv_sec = (time_t)(timeout_ms / 1000);
    tv.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
    rc = amqp_simple_wait_frame_noblock(st->conn, &frame, &tv);
    if (rc == AMQP_STATUS_TIMEOUT) return 0;
    if (rc != AMQP_STATUS_OK) {
        snprintf(why, sizeof why, "connection to %s lost: %s", st->shown, amqp_error_string2(rc));
        disconnect(st, OUTBOX_EPUBLISH, why);
        return -1;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) return 1;
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *a = frame.payload.method.decoded;
        on_confirm(st, a->delivery_tag, a->multiple, 1);
        break;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *a = frame.payload.method.decoded;
        on_confirm(st, a->delivery_tag, a->multiple, 0);
        break;
    }
    case AMQP_BASIC_RETURN_METHOD:
        if (on_return(st, frame.payload.method.decoded, frame.channel) != 0) {
            snprintf(why, sizeof why, "connection to %s lost reading a returned message",
                     st->shown);
            disconnect(st, OUTBOX_EPUBLISH, why);
            return -1;
        }
        break;
    case AMQP_CHANNEL_CLOSE_METHOD:
        channel_closed(st, frame.payload.method.decoded);
        break;
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *m = frame.payload.method.decoded;
        amqp_connection_close_ok_t ok = {0};
        snprintf(why, sizeof why, "RabbitMQ closed the connection: %.*s (%u)",
                 (int)m->reply_text.len, (char *)m->reply_text.bytes, m->reply_code);
        amqp_send_method(st->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        disconnect(st, OUTBOX_EPUBLISH, why);
        return -1;
    }
    default:
        break;
    }
    amqp_maybe_release_buffers(st->conn);
    return 1;
}

/* Applies the frames that have arrived, without waiting. */
static void drain(rmq_state *st)
{
    while (st->conn != NULL) {
        struct pollfd p = {.fd = amqp_get_sockfd(st->conn), .events = POLLIN};
        if (!amqp_data_in_buffer(st->conn) && !amqp_frames_enqueued(st->conn) &&
            poll(&p, 1, 0) <= 0)
            return;
        if (read_frame(st, 0) <= 0) return;
    }
}

/* ------------------------------------------------------------------------
 * Publish
 * ---------------------------------------------------------------------- */

/* Sizes and fills batch b, about to be the newest open one, for
 * msgs[0..n): flags, and the aggregate chains (outbox__chain_prepare
 * within b).  A message whose aggregate has no earlier message in b is
 * chained to the last one of its aggregate in the newest open batch that
 * has one (prev_in names that batch's slot), so the chains run across
 * every open batch, however deep the window. */
static int batch_prepare(rmq_state *st, rmq_batch *b, outbox_msg *const *msgs, size_t n)
{
    size_t i;
    if (n > b->cap) {
        unsigned char *flags = outbox__realloc(b->done, 4 * n);
        long *prev;
        if (flags == NULL) return -1;
        b->done = flags;
        prev = outbox__realloc(b->prev, n * sizeof *prev);
        if (prev == NULL) return -1;
        b->prev = prev;
        b->cap = n;
    }
    b->started = b->done + b->cap;
    b->returned = b->done + 2 * b->cap;
    b->prev_in = b->done + 3 * b->cap;
    memset(b->done, 0, 4 * b->cap);
    b->msgs = msgs;
    b->n = n;
    b->finished = b->unstarted = 0;
    if (outbox__chain_prepare(&b->ids, &b->aggs, NULL, msgs, n, b->prev) != OUTBOX_OK) return -1;
    for (i = 0; i < n; i++) {
        int k;
        if (b->prev[i] != OUTBOX_PREV_NONE) continue;
        for (k = st->count - 1; k >= 0; k--) {
            const rmq_batch *older = batch_at(st, k);
            uint32_t j;
            if (outbox__aggindex_lookup(&older->aggs, msgs[i]->aggregate_id, &j)) {
                b->prev[i] = OUTBOX_PREV_OLDER(j);
                b->prev_in[i] = (unsigned char)(older - st->batches);
                break;
            }
        }
    }
    return 0;
}

/* Batch `ended` ended with its results: the open batches no longer point
 * into its slot (OUTBOX_PREV_NONE where that message was confirmed, else
 * OUTBOX_PREV_FAILED), as outbox__chain_release does for one batch. */
static void release_chains(rmq_state *st, const rmq_batch *ended)
{
    unsigned char slot = (unsigned char)(ended - st->batches);
    int k;
    for (k = 0; k < st->count; k++) {
        rmq_batch *c = batch_at(st, k);
        size_t i;
        if (c == ended) continue;
        for (i = 0; i < c->n; i++)
            if (c->prev[i] <= OUTBOX_PREV_OLDER(0) && c->prev_in[i] == slot)
                c->prev[i] = ended->results[OUTBOX_PREV_OLDER_INDEX(c->prev[i])].code == OUTBOX_OK
                                 ? OUTBOX_PREV_NONE
                                 : OUTBOX_PREV_FAILED;
    }
}

static const char *const ce_reserved[] = {
    "specversion",     "id",         "source", "type",         "subject", "time",
    "datacontenttype", "dataschema", "data",   "aggregatetype"};

/* Adds a string header to st->entries[*count]. */
static void add_header(rmq_state *st, size_t *count, const char *name, const char *value)
{
    amqp_table_entry_t *e = &st->entries[*count];
    snprintf(st->names[*count], sizeof st->names[0], "%s", name);
    e->key = amqp_cstring_bytes(st->names[*count]);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(value);
    (*count)++;
}

/* Is "ce-<ext>" taken by a standard attribute or an earlier header? */
static int ext_taken(const rmq_state *st, size_t count, const char *ext)
{
    size_t j;
    for (j = 0; j < sizeof ce_reserved / sizeof ce_reserved[0]; j++)
        if (strcmp(ce_reserved[j], ext) == 0) return 1;
    for (j = 0; j < count; j++)
        if (strncmp(st->names[j], "ce-", 3) == 0 && strcmp(st->names[j] + 3, ext) == 0) return 1;
    return 0;
}

/* Publishes m with routing key key.  Returns an AMQP_STATUS_* code. */
static int send_message(rmq_state *st, const outbox_msg *m, const char *key)
{
    amqp_basic_properties_t p;
    char time_text[32], ext[64], name[80];
    size_t count = 0, i, need = 8 + m->header_count;

    if (need > st->entries_cap) {
        amqp_table_entry_t *e = outbox__realloc(st->entries, need * sizeof *e);
        char(*names)[80];
        if (e == NULL) return AMQP_STATUS_NO_MEMORY;
        st->entries = e;
        names = outbox__realloc(st->names, need * sizeof *names);
        if (names == NULL) return AMQP_STATUS_NO_MEMORY;
        st->names = names;
        st->entries_cap = need;
    }
    outbox_time_format(m->occurred_at, time_text);
    add_header(st, &count, "ce-specversion", "1.0");
    add_header(st, &count, "ce-id", m->id);
    add_header(st, &count, "ce-source", st->source);
    add_header(st, &count, "ce-type", m->type);
    add_header(st, &count, "ce-subject", m->aggregate_id);
    add_header(st, &count, "ce-time", time_text);
    if (m->aggregate_type[0] != '\0') add_header(st, &count, "ce-aggregatetype", m->aggregate_type);
    for (i = 0; i < m->header_count; i++) {
        outbox__cloudevent_ext_name(m->header_names[i], ext, sizeof ext);
        if (ext[0] == '\0') continue;
        while (ext_taken(st, count, ext) && strlen(ext) + 2 <= sizeof ext) {
            memmove(ext + 1, ext, strlen(ext) + 1);
            ext[0] = 'x';
        }
        if (ext_taken(st, count, ext)) continue;
        snprintf(name, sizeof name, "ce-%s", ext);
        add_header(st, &count, name, m->header_values[i]);
    }

    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.message_id = amqp_cstring_bytes(m->id);
    p.timestamp = (uint64_t)(m->occurred_at / 1000000);
    p.type = amqp_cstring_bytes(m->type);
    p.app_id = amqp_cstring_bytes(st->source);
    p.headers.num_entries = (int)count;
    p.headers.entries = st->entries;
    for (i = 0; i < m->header_count; i++) {
        if (strcmp(m->header_names[i], "correlation_id") == 0) {
            p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
            p.correlation_id = amqp_cstring_bytes(m->header_values[i]);
        }
    }
    return amqp_basic_publish(st->conn, CHANNEL, amqp_cstring_bytes(st->c.exchange),
                              amqp_cstring_bytes(key), 1, 0, &p, amqp_cstring_bytes(m->payload));
}

/* Records message i of slot as in flight with the next delivery tag. */
static int track(rmq_state *st, int slot, size_t i)
{
    if (st->flight_len == st->flight_cap) {
        size_t cap = st->flight_cap ? 2 * st->flight_cap : 1024;
        rmq_flight *f;
        if (st->flight_head > 0) { /* room at the front: slide down */
            memmove(st->flight, st->flight + st->flight_head,
                    (st->flight_len - st->flight_head) * sizeof *f);
            st->flight_len -= st->flight_head;
            st->flight_head = 0;
        } else {
            f = outbox__realloc(st->flight, cap * sizeof *f);
            if (f == NULL) return -1;
            st->flight = f;
            st->flight_cap = cap;
        }
    }
    st->flight[st->flight_len].tag = st->next_tag++;
    st->flight[st->flight_len].index = (uint32_t)i;
    st->flight[st->flight_len].slot = slot;
    st->flight_len++;
    st->in_flight++;
    return 0;
}

static void not_sent(rmq_batch *b, size_t i, int code, const char *why)
{
    outbox__result_set(&b->results[i], code, "%s", why);
    b->done[i] = 1;
    b->finished++;
}

/* One wave of open batch b: sends each message not started yet whose
 * previous message of its aggregate (in b or an open batch before it) is
 * confirmed (or that has none), while the window has room; gives a result
 * without sending to those whose previous message failed, and to all once
 * b is stalled.  Never waits for confirms.  Sets *progressed when it
 * started one. */
static void wave(rmq_state *st, rmq_batch *b, int *progressed)
{
    outbox_error rerr;
    size_t i;
    int slot = (int)(b - st->batches), sent = 0;

    while (b->unstarted < b->n && b->started[b->unstarted])
        b->unstarted++;
    for (i = b->unstarted; i < b->n; i++) {
        const outbox_msg *m = b->msgs[i];
        long p = b->prev[i];
        int held = 0, rc;

        if (b->started[i]) continue;
        if (p == OUTBOX_PREV_FAILED) {
            held = 1;
        } else if (p != OUTBOX_PREV_NONE) {
            rmq_batch *pb = p >= 0 ? b : &st->batches[b->prev_in[i]];
            size_t j = p >= 0 ? (size_t)p : OUTBOX_PREV_OLDER_INDEX(p);
            if (!pb->done[j] && !b->stalled && st->generation == b->generation0) continue;
            held = !pb->done[j] || pb->results[j].code != OUTBOX_OK;
        }
        if (!b->stalled && st->generation != b->generation0) b->stalled = 2;
        if (!b->stalled && !held && st->in_flight >= (size_t)st->c.max_unconfirmed) {
            drain(st); /* the window is full: take what confirms have come */
            if (st->in_flight >= (size_t)st->c.max_unconfirmed) return;
            if (st->generation != b->generation0) b->stalled = 2;
        }
        b->started[i] = 1;
        *progressed = 1;
        if (b->stalled) {
            char why[WHY_MAX];
            snprintf(why, sizeof why, "not sent: %.400s",
                     b->stalled == 1 ? "RabbitMQ's confirms stopped coming back" : st->lost_why);
            not_sent(b, i, OUTBOX_EPUBLISH, why);
            continue;
        }
        if (held) {
            not_sent(b, i, OUTBOX_EPUBLISH,
                     "not sent: an earlier message of its aggregate was not confirmed");
            continue;
        }
        rerr.code = 0;
        rerr.message[0] = '\0';
        if (outbox__route_render(st->route, m, &st->key, &rerr) != OUTBOX_OK) {
            not_sent(b, i, rerr.code == OUTBOX_ENOMEM ? OUTBOX_ENOMEM : OUTBOX_EREJECTED,
                     rerr.message);
            continue;
        }
        if (st->key.len > ROUTING_KEY_MAX) {
            char why[WHY_MAX];
            snprintf(why, sizeof why, "the routing key is %zu bytes, more than AMQP's %d: %.60s...",
                     st->key.len, ROUTING_KEY_MAX, st->key.data);
            not_sent(b, i, OUTBOX_EREJECTED, why);
            continue;
        }
        if (OUTBOX_FAULT("amqp_unroutable") != 0) {
            /* Tests: a routing key no queue is bound for. */
            outbox__buf_reset(&st->key);
            outbox__buf_puts(&st->key, "outbox-fault.unroutable");
        }
        if (track(st, slot, i) != 0) {
            not_sent(b, i, OUTBOX_ENOMEM, "out of memory publishing to RabbitMQ");
            continue;
        }
        rc = send_message(st, m, st->key.data);
        if (rc != AMQP_STATUS_OK) {
            char why[WHY_MAX];
            snprintf(why, sizeof why, "publish to %s failed: %s", st->shown,
                     amqp_error_string2(rc));
            if (rc == AMQP_STATUS_NO_MEMORY || rc == AMQP_STATUS_TABLE_TOO_BIG) {
                /* Not sent, and the channel is fine: take its tag back. */
                st->flight_len--;
                st->in_flight--;
                st->next_tag--;
                not_sent(b, i, rc == AMQP_STATUS_NO_MEMORY ? OUTBOX_ENOMEM : OUTBOX_EREJECTED, why);
                continue;
            }
            disconnect(st, OUTBOX_EPUBLISH, why);
            continue; /* b is stalled at the next message */
        }
        if (++sent % 256 == 0) drain(st); /* keep the broker's confirms flowing */
    }
}

/* The connection and channel for a batch begun with nothing open: frames
 * that came while idle are applied (a closed connection is noticed), then
 * whatever is missing is opened. */
static int ready(rmq_state *st, char *why, size_t len)
{
    int rc;
    drain(st);
    if (st->conn == NULL) {
        rc = connect_broker(st, why, len);
        if (rc != OUTBOX_OK) return rc;
    }
    if (!st->channel_open) {
        rc = open_channel(st, why, len);
        if (rc != OUTBOX_OK) {
            disconnect(st, OUTBOX_EPUBLISH, why);
            return rc;
        }
    }
    return OUTBOX_OK;
}

/* Waves every open batch, oldest first (the older ones take the window's
 * room first); *progressed as for wave. */
static void waves(rmq_state *st, int *progressed)
{
    int k;
    for (k = 0; k < st->count; k++)
        wave(st, batch_at(st, k), progressed);
}

/* The window (publish_room in internal.h): two batches, as without one;
 * more while the messages of the open batches without a result, with the
 * next batch, stay within max_unconfirmed (so that many can be in flight
 * at once where the aggregates allow it), and none once the connection
 * the open batches began on is lost (they are stalled: the next batch
 * waits for them to end and a new connection). */
static int rmq_publish_room(void *state, int open, size_t next)
{
    rmq_state *st = state;
    const rmq_batch *newest;
    size_t waiting = 0;
    int k;

    if (open != st->count || st->count >= OUTBOX_PIPELINE_MAX_DEPTH) return 0;
    if (st->count < OUTBOX_PIPELINE_DEPTH) return 1;
    newest = batch_at(st, st->count - 1);
    if (newest->stalled || st->generation != newest->generation0) return 0;
    for (k = 0; k < st->count; k++) {
        const rmq_batch *b = batch_at(st, k);
        waiting += b->n - b->finished;
    }
    return (int64_t)(waiting + next) <= st->c.max_unconfirmed;
}

static int rmq_publish_begin(void *state, outbox_msg *const *msgs, size_t n,
                             outbox_publish_result *results)
{
    rmq_state *st = state;
    rmq_batch *b, *older = NULL;
    int progressed = 0;
    size_t i;

    if (st->count >= OUTBOX_PIPELINE_MAX_DEPTH) return OUTBOX_EINVAL;
    if (st->count > 0) {
        older = batch_at(st, st->count - 1);
        waves(st, &progressed); /* what their confirms let go */
    } else {
        char why[WHY_MAX];
        int rc = ready(st, why, sizeof why);
        if (rc != OUTBOX_OK) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT, "%s", why);
            if (n > 0) outbox__result_set(&results[0], rc, "%s", why);
            return rc == OUTBOX_ECONFIG || rc == OUTBOX_ENOMEM ? rc : OUTBOX_EPUBLISH;
        }
    }
    b = batch_at(st, st->count);
    if (batch_prepare(st, b, msgs, n) != 0) {
        b->msgs = NULL;
        b->n = 0;
        return OUTBOX_ENOMEM;
    }
    if (n > 0)
        outbox__result_set(&results[0], OUTBOX_EPUBLISH, "no confirm from RabbitMQ within %lld ms",
                           (long long)st->c.confirm_timeout_ms);
    for (i = 1; i < n; i++)
        results[i] = results[0];
    b->results = results;
    b->stalled = older ? older->stalled : 0;
    b->generation0 = older ? older->generation0 : st->generation;
    st->count++;
    wave(st, b, &progressed);
    return OUTBOX_OK;
}

/* Ends the oldest open batch: sends its remaining waves (and those of
 * the batches after it) as confirms come back, until each of its messages
 * has a result.  No confirm for confirm_timeout drops the connection (what is
 * unconfirmed is retried); an interrupt settles what is left as stopped. */
static int rmq_publish_end(void *state, outbox_msg *const *msgs, size_t n,
                           outbox_publish_result *results)
{
    rmq_state *st = state;
    rmq_batch *b;
    int64_t deadline = 0;
    uint64_t settled_before = st->settled - 1; /* the first pass runs the waves */
    size_t i;

    if (st->count == 0) return OUTBOX_EINVAL;
    b = batch_at(st, 0);
    if (b->msgs != msgs || b->n != n || b->results != results) return OUTBOX_EINVAL;

    /* The waves run again only when a confirm (or a loss) settled
     * something: then a waiting message may go, or the window has room. */
    for (;;) {
        int progressed = 0;
        int64_t now = outbox__monotonic_us();

        if (st->settled != settled_before) { /* progress: a fresh timeout */
            settled_before = st->settled;
            deadline = now + st->c.confirm_timeout_ms * 1000;
            waves(st, &progressed);
            if (b->finished == n) break;
            continue; /* the waves may have settled more (a lost connection) */
        }
        if (atomic_load(&st->interrupted)) {
            settle_all(st, OUTBOX_ESTOPPED,
                       "interrupted: the relay stopped before RabbitMQ confirmed");
            b->stalled = 1;
            for (i = 0; i < n; i++)
                if (!b->done[i])
                    not_sent(b, i, OUTBOX_ESTOPPED, "interrupted: the relay stopped first");
            continue;
        }
        if (now >= deadline) {
            char why[WHY_MAX];
            snprintf(why, sizeof why, "no confirm from RabbitMQ within %lld ms",
                     (long long)st->c.confirm_timeout_ms);
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "%zu messages not confirmed by %s within %lld ms; they will be retried",
                        st->in_flight, st->shown, (long long)st->c.confirm_timeout_ms);
            disconnect(st, OUTBOX_EPUBLISH, why);
            b->stalled = 1;
            continue;
        }
        {
            int64_t left = (deadline - now) / 1000 + 1;
            if (read_frame(st, left < WAIT_SLICE_MS ? left : WAIT_SLICE_MS) > 0) drain(st);
        }
    }

    release_chains(st, b);
    b->results = NULL;
    b->msgs = NULL;
    b->n = 0;
    st->first = (st->first + 1) % OUTBOX_PIPELINE_MAX_DEPTH;
    st->count--;
    {
        int ignored = 0;
        waves(st, &ignored); /* what this batch's last confirms let go */
    }
    return OUTBOX_OK;
}

static int rmq_publish(void *state, outbox_msg *const *msgs, size_t n,
                       outbox_publish_result *results)
{
    int rc;
    if (n == 0) return OUTBOX_OK;
    rc = rmq_publish_begin(state, msgs, n, results);
    if (rc != OUTBOX_OK) return rc;
    return rmq_publish_end(state, msgs, n, results);
}

static void rmq_interrupt(void *state)
{
    rmq_state *st = state;
    atomic_store(&st->interrupted, 1);
}

/* ------------------------------------------------------------------------
 * Open and close
 * ---------------------------------------------------------------------- */

/* Checks the exchange exists, or declares what declare= asks for. */
static int check_exchange(rmq_state *st, outbox_error *err)
{
    const char *d = st->c.declare, *queue = NULL;
    amqp_bytes_t exchange = amqp_cstring_bytes(st->c.exchange);
    char text[200];
    int declare_exchange = 0;

    if (d != NULL) {
        if (strcmp(d, "exchange") == 0) {
            declare_exchange = 1;
        } else if (strncmp(d, "quorum:", 7) == 0 && d[7] != '\0') {
            declare_exchange = 1;
            queue = d + 7;
        } else {
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "amqp destination: declare=%s is not understood; use "
                                 "declare=exchange or declare=quorum:QUEUE",
                                 d);
        }
        if (st->c.exchange[0] == '\0')
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "amqp destination: declare= needs a named exchange "
                                 "(exchange=NAME), not the default exchange");
    }
    if (st->c.exchange[0] == '\0') return OUTBOX_OK; /* the default exchange always exists */

    amqp_exchange_declare(st->conn, CHANNEL, exchange, amqp_cstring_bytes("topic"),
                          !declare_exchange, 1, 0, 0, amqp_empty_table);
    reply_text(amqp_get_rpc_reply(st->conn), text, sizeof text);
    if (text[0] != '\0') {
        int not_found = strstr(text, "(404)") != NULL;
        if (not_found)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "amqp destination: exchange \"%s\" not found in vhost \"%s\" "
                                 "on %s; create it or pass declare=exchange (or "
                                 "declare=quorum:QUEUE for a quick start)",
                                 st->c.exchange, st->vhost, st->shown);
        return outbox__error(
            err, OUTBOX_ECONFIG, "amqp destination: cannot %s exchange \"%s\" on %s: %s",
            declare_exchange ? "declare" : "check", st->c.exchange, st->shown, text);
    }
    if (queue != NULL) {
        amqp_table_entry_t arg;
        amqp_table_t args;
        arg.key = amqp_cstring_bytes("x-queue-type");
        arg.value.kind = AMQP_FIELD_KIND_UTF8;
        arg.value.value.bytes = amqp_cstring_bytes("quorum");
        args.num_entries = 1;
        args.entries = &arg;
        amqp_queue_declare(st->conn, CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
        reply_text(amqp_get_rpc_reply(st->conn), text, sizeof text);
        if (text[0] == '\0') {
            amqp_queue_bind(st->conn, CHANNEL, amqp_cstring_bytes(queue), exchange,
                            amqp_cstring_bytes("#"), amqp_empty_table);
            reply_text(amqp_get_rpc_reply(st->conn), text, sizeof text);
        }
        if (text[0] != '\0')
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "amqp destination: cannot declare quorum queue \"%s\" bound to "
                                 "exchange \"%s\" on %s: %s (a queue of that name with other "
                                 "settings exists?)",
                                 queue, st->c.exchange, st->shown, text);
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "declared exchange %s (topic) and quorum queue %s bound with '#'",
                    st->c.exchange, queue);
    }
    return OUTBOX_OK;
}

static void rmq_close(void *state)
{
    rmq_state *st = state;
    int k;
    if (st == NULL) return;
    if (st->conn != NULL) {
        if (st->channel_open) amqp_channel_close(st->conn, CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(st->conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(st->conn);
    }
    for (k = 0; k < OUTBOX_PIPELINE_MAX_DEPTH; k++) {
        outbox__aggindex_free(&st->batches[k].ids);
        outbox__aggindex_free(&st->batches[k].aggs);
        outbox__free(st->batches[k].done);
        outbox__free(st->batches[k].prev);
    }
    outbox__props_free(rmq_props, &st->c);
    outbox__route_free(st->route);
    outbox__buf_free(&st->key);
    outbox__free(st->flight);
    outbox__free(st->entries);
    outbox__free(st->names);
    outbox__free(st->host);
    outbox__free(st->vhost);
    outbox__free(st->user);
    outbox__free(st->password);
    outbox__free(st->source);
    outbox__free(st);
}

static int rmq_open(void **state, const char *url, const outbox_transport_config *cfg,
                    outbox_error *err)
{
    rmq_state *st = NULL;
    outbox_url u;
    char why[WHY_MAX];
    const char *colon;
    int rc;

    *state = NULL;
    memset(&u, 0, sizeof u);
    rc = outbox__url_parse(&u, url, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the amqp destination");
        goto fail;
    }
    outbox__buf_init(&st->key);
    atomic_init(&st->interrupted, 0);
    rc = outbox__props_parse(rmq_props, "amqp destination", &u, &st->c, err);
    if (rc != OUTBOX_OK) goto fail;
    st->tls = strcmp(u.scheme, "amqps") == 0;
    if (u.hosts[0] == '\0' || strchr(u.hosts, ',') != NULL) {
        rc = outbox__error(err, OUTBOX_EBADURL,
                           "amqp destination needs one broker: use %s://HOST[:PORT][/VHOST]",
                           u.scheme);
        goto fail;
    }
    colon = strrchr(u.hosts, ':');
    if (colon != NULL && strchr(u.hosts, ']') > colon) colon = NULL; /* [v6] without port */
    st->port = st->tls ? 5671 : 5672;
    if (colon != NULL) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end != '\0' || port < 1 || port > 65535) {
            rc = outbox__error(err, OUTBOX_EBADURL,
                               "amqp destination: port \"%s\" is not a number from 1 to 65535",
                               colon + 1);
            goto fail;
        }
        st->port = (int)port;
    }
    st->host =
        colon ? outbox__strndup(u.hosts, (size_t)(colon - u.hosts)) : outbox__strdup(u.hosts);
    st->vhost = outbox__strdup(u.path[0] ? u.path : "/");
    st->user = u.user ? outbox__strdup(u.user) : NULL;
    st->password = u.password ? outbox__strdup(u.password) : NULL;
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    if (st->host == NULL || st->vhost == NULL || st->source == NULL ||
        (u.user && st->user == NULL) || (u.password && st->password == NULL)) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the amqp destination");
        goto fail;
    }
    snprintf(st->shown, sizeof st->shown, "%s://%s:%d/%s", u.scheme, st->host, st->port,
             strcmp(st->vhost, "/") == 0 ? "" : st->vhost);
    rc = outbox__route_new(&st->route, st->c.routing_key, OUTBOX_ROUTE_NATS_SUBJECT, err);
    if (rc != OUTBOX_OK) goto fail;

    if (st->tls && !st->c.verify)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "verify=false: the TLS certificate of %s is NOT verified (neither its CA nor "
                    "its host name); anyone on the path can pose as the broker and read the "
                    "password and every message; use it for local testing only",
                    st->shown);
    rc = connect_broker(st, why, sizeof why);
    if (rc != OUTBOX_OK) {
        rc = outbox__error(err, rc, "amqp destination: %s", why);
        goto fail;
    }
    rc = check_exchange(st, err);
    if (rc != OUTBOX_OK) goto fail;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "publishing to %s: exchange \"%s\", routing key %s, max unconfirmed %lld, "
                "confirm timeout %lld ms",
                st->shown, st->c.exchange, st->c.routing_key, (long long)st->c.max_unconfirmed,
                (long long)st->c.confirm_timeout_ms);
    outbox__url_free(&u);
    *state = st;
    return OUTBOX_OK;

fail:
    outbox__url_free(&u);
    if (st != NULL) rmq_close(st);
    return rc;
}

#define RMQ_ENTRY(f) f

#else

#define RMQ_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_RABBITMQ */

/* The RabbitMQ destination drivers (see the top of this file): one for each
 * scheme, the same entries. */
#define RMQ_OPS(scheme_, usage_, doc_)                                                             \
    {                                                                                              \
        .version = 5, .scheme = scheme_, .open = RMQ_ENTRY(rmq_open),                              \
        .publish = RMQ_ENTRY(rmq_publish), .close = RMQ_ENTRY(rmq_close),                          \
        .publish_begin = RMQ_ENTRY(rmq_publish_begin), .publish_end = RMQ_ENTRY(rmq_publish_end),  \
        .interrupt = RMQ_ENTRY(rmq_interrupt), .usage = usage_, .doc = doc_, .props = rmq_props,   \
        .publish_room = RMQ_ENTRY(rmq_publish_room),                                               \
    }

const outbox_transport_ops outbox__transport_amqp =
    RMQ_OPS("amqp", "amqp://HOST:5672/VHOST?exchange=X",
            "RabbitMQ (AMQP 0-9-1): the broker's publisher confirm confirms a message (message_id "
            "= its id; no broker-side de-duplication: use an inbox).  user:password@ in the URL "
            "(default guest).");

const outbox_transport_ops outbox__transport_amqps =
    RMQ_OPS("amqps", "amqps://HOST:5671/VHOST?exchange=X",
            "RabbitMQ over TLS, as amqp:// (the certificate is verified; cacert= to trust a CA).");
