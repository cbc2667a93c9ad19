/*
 * bench_amqp.c - how fast the relay drains an outbox into RabbitMQ, next to
 * the raw publish rate of librabbitmq measured in the same run: the
 * ceiling.
 *
 * One rabbitmq-server (tests/support/rabbitmq.h: its own node, ports and
 * data in a temp dir) with a durable topic exchange "bench"; every case
 * publishes N messages of the same bytes (PAYLOAD_BYTES JSON payloads over
 * A aggregates, the relay's AMQP properties and ce- headers, mandatory,
 * persistent) into a quorum queue of its own, with the same window W of
 * unconfirmed publications on one channel:
 *
 *   ceiling           librabbitmq alone: confirm.select, then basic.publish
 *                     of N messages, reading basic.ack (multiple) whenever W
 *                     are unconfirmed, until the last is confirmed; no
 *                     database
 *   sqlite -> amqp    outbox_relay_new("sqlite:COPY", "amqp://...&
 *                     max_unconfirmed=W", once, batch B) + outbox_relay_run
 *                     over N pending messages (filled once through the
 *                     public enqueue API, copied before the run): the relay
 *                     pipelines (as many batches open as the destination's
 *                     window lets it: their unfinished messages within W;
 *                     at most one unconfirmed message per aggregate)
 *   sqlite -> discard the store side alone
 *   postgres -> amqp  the same from the PostgreSQL store (tests/support/pg.h,
 *                     rows inserted server-side), with the ceiling measured
 *                     again just before it ("again"): its ratio is to that
 *                     one; then the same with max_unconfirmed=2B (two
 *                     batches open and at most 2B unconfirmed: the relay
 *                     before the window, for comparison in the same run);
 *                     then postgres -> discard
 *
 * Each case runs in a forked child (bench_common.h): peak RSS and CPU time
 * from wait4().  A figure is printed only after the parent checked the
 * queue holds exactly N messages and the outbox has no unsent row left.
 * Exit status: 0, 1 on a failed case, 2 on bad usage, 77 when
 * rabbitmq-server or librabbitmq is missing.
 *
 * Usage: bench_amqp [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES] [--no-pg]
 */
#ifndef OUTBOX_HAVE_RABBITMQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "bench_amqp: skipped: this build has no RabbitMQ destination (librabbitmq "
                    "not found at configure time)\n");
    return 77;
}
#else

#include "support/chaos.h"
#include "support/rabbitmq.h"

#include "bench_outbox.h"

#include <amqp_tcp_socket.h>

enum { PAYLOAD_BYTES = 300 };

static long long n_msgs = 200000;
static unsigned batch = 512;
static long long window = 4096;
static unsigned aggregates = 1000;
static rmh_server broker;
static int failures;

/* In a child: the parent's exit handlers must not stop its servers or
 * remove its directories. */
static void disarm_parent_handlers(void)
{
    ch_forget_all();
    test_dir_forget();
    rmh_forget();
#ifdef OUTBOX_HAVE_LIBPQ
    pgh_forget();
#endif
}

/* Confirms of the ceiling's channel: which tags are acked (they may come
 * out of order), how many, and the tag below which all are. */
typedef struct confirms {
    unsigned char *acked; /* by tag (1..n) */
    uint64_t count, floor;
} confirms;

/* Reads frames until at most `most` publications are unconfirmed; -1 on a
 * nack, a return or a lost connection. */
static int settle_to(amqp_connection_state_t c, uint64_t published, confirms *k, long long most,
                     bench_report *r)
{
    while ((long long)(published - k->count) > most) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame(c, &f);
        if (rc != AMQP_STATUS_OK) {
            bench_fail(r, "reading confirms: %s", amqp_error_string2(rc));
            return -1;
        }
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            uint64_t t = a->multiple ? k->floor + 1 : a->delivery_tag;
            for (; t <= a->delivery_tag && t <= published; t++)
                if (!k->acked[t]) {
                    k->acked[t] = 1;
                    k->count++;
                }
            while (k->floor < published && k->acked[k->floor + 1])
                k->floor++;
        } else {
            bench_fail(r, "unexpected broker method 0x%08x (nack, return or close)",
                       (unsigned)f.payload.method.id);
            return -1;
        }
        amqp_maybe_release_buffers(c);
    }
    return 0;
}

/* Child: the ceiling.  The messages the relay builds (routing key, payload,
 * properties, ce- headers), published with librabbitmq alone. */
static void run_ceiling(void *arg, bench_report *r)
{
    const char *key = arg;
    amqp_connection_state_t c = rmh_connect(&broker);
    char payload[PAYLOAD_BYTES + 1], id[48], agg[32];
    amqp_table_entry_t h[7];
    amqp_basic_properties_t p;
    confirms k = {calloc((size_t)n_msgs + 2, 1), 0, 0};
    uint64_t i;
    double t0 = bench_now();
    static const char *const names[7] = {"ce-specversion", "ce-id",   "ce-source",       "ce-type",
                                         "ce-subject",     "ce-time", "ce-aggregatetype"};
    const char *values[7] = {
        "1.0", id, "/outbox", "OrderPlaced", agg, "2026-11-28T02:00:00.000000Z", "Order"};

    if (k.acked == NULL) {
        bench_fail(r, "out of memory");
        goto out;
    }
    amqp_confirm_select(c, 1);
    if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) {
        bench_fail(r, "confirm.select failed");
        goto out;
    }
    for (i = 0; i < 7; i++) {
        h[i].key = amqp_cstring_bytes(names[i]);
        h[i].value.kind = AMQP_FIELD_KIND_UTF8;
    }
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.timestamp = 1795831200;
    p.type = amqp_cstring_bytes("OrderPlaced");
    p.app_id = amqp_cstring_bytes("/outbox");
    p.headers.num_entries = 7;
    p.headers.entries = h;
    for (i = 0; i < (uint64_t)n_msgs; i++) {
        unsigned a = (unsigned)(i % aggregates);
        int rc, e;
        bench_payload(payload, PAYLOAD_BYTES, (long long)i, a);
        snprintf(id, sizeof id, "0190a5c8-0000-7000-8000-%012llu", (unsigned long long)i);
        snprintf(agg, sizeof agg, "order-%06u", a);
        for (e = 0; e < 7; e++)
            h[e].value.value.bytes = amqp_cstring_bytes(values[e]);
        p.message_id = amqp_cstring_bytes(id);
        rc = amqp_basic_publish(c, 1, amqp_cstring_bytes("bench"), amqp_cstring_bytes(key), 1, 0,
                                &p, amqp_cstring_bytes(payload));
        if (rc != AMQP_STATUS_OK) {
            bench_fail(r, "basic.publish of message %llu: %s", (unsigned long long)i,
                       amqp_error_string2(rc));
            goto out;
        }
        if (settle_to(c, i + 1, &k, window, r) != 0) goto out;
    }
    if (settle_to(c, (uint64_t)n_msgs, &k, 0, r) != 0) goto out;
    r->seconds = bench_now() - t0;
    r->count = n_msgs;
    r->ok = 1;
out:
    free(k.acked);
    t0 = bench_now();
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    r->teardown_seconds = bench_now() - t0;
}

/* A fresh quorum queue `name` bound to exchange "bench" with "<name>.#". */
static void queue_new(const char *name)
{
    char binding[64];
    snprintf(binding, sizeof binding, "%s.#", name);
    rmh_declare(&broker, "bench", name, binding);
}

/* The queue must hold exactly n_msgs messages; deleted afterwards (frees
 * the disk for the next case).  0 or -1 (printed). */
static int queue_check(const char *what, const char *name)
{
    int64_t n = rmh_queue_count(&broker, name);
    rmh_queue_delete(&broker, name);
    if (n != n_msgs) {
        fprintf(stderr, "bench_amqp: %s: queue %s holds %lld messages, expected %lld\n", what, name,
                (long long)n, n_msgs);
        return -1;
    }
    return 0;
}

/* The ceiling into queue `name`; its rate, or 0 when it failed. */
static double ceiling(const char *row, const char *name)
{
    char key[64];
    bench_result res;
    snprintf(key, sizeof key, "%s.Order.OrderPlaced", name);
    queue_new(name);
    if (bench_run_child(row, run_ceiling, key, disarm_parent_handlers, &res) ||
        queue_check(row, name)) {
        failures++;
        return 0;
    }
    bench_print_row(row, &res, 0);
    return (double)res.count / res.seconds;
}

static void amqp_url(char *out, size_t len, const char *name, long long w)
{
    snprintf(out, len,
             "%s?exchange=bench&routing_key=%s.{aggregate_type}.{type}&max_unconfirmed=%lld",
             broker.url, name, w);
}

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;

static void pg_cases(void)
{
    bench_relay_case c = {0};
    bench_result res;
    outbox_error err = {0};
    double rate;
    PGconn *conn;
    const char *why = pgh_available();

    if (why != NULL) {
        printf("%-34s skipped: %s\n", "postgres -> amqp (relay)", why);
        return;
    }
    pgh_start(&pg);
    conn = pgh_connect(&pg);
    pgh_exec(conn, "DROP SCHEMA IF EXISTS bench_outbox CASCADE");
    if (outbox_schema_init_pg(conn, "bench_outbox", &err) != OUTBOX_OK)
        TEST_FAIL_("outbox_schema_init_pg: %s", err.message);
    c.batch = batch;
    c.expect = n_msgs;
    snprintf(c.store_url, sizeof c.store_url, "%s?schema=bench_outbox", pg.url);

    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    rate = ceiling("amqp ceiling (again)", "rawpg");
    queue_new("pg");
    amqp_url(c.to_url, sizeof c.to_url, "pg", window);
    if (bench_run_child("postgres -> amqp", bench_run_relay, &c, disarm_parent_handlers, &res) ||
        bench_pg_left(conn) != 0 || queue_check("postgres -> amqp", "pg"))
        failures++;
    else
        bench_print_row("postgres -> amqp (relay)", &res, rate);

    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    queue_new("pg2");
    amqp_url(c.to_url, sizeof c.to_url, "pg2", 2 * (long long)batch);
    if (bench_run_child("postgres -> amqp, 2 batches", bench_run_relay, &c, disarm_parent_handlers,
                        &res) ||
        bench_pg_left(conn) != 0 || queue_check("postgres -> amqp, 2 batches", "pg2"))
        failures++;
    else
        bench_print_row("postgres -> amqp, 2 batches", &res, rate);

    bench_pg_fill(conn, n_msgs, aggregates, PAYLOAD_BYTES);
    snprintf(c.to_url, sizeof c.to_url, "discard:");
    if (bench_run_child("postgres -> discard", bench_run_relay, &c, disarm_parent_handlers, &res) ||
        bench_pg_left(conn) != 0)
        failures++;
    else
        bench_print_row("postgres -> discard: (store alone)", &res, rate);
    PQfinish(conn);
}
#endif

static int usage(void)
{
    fprintf(stderr, "usage: bench_amqp [-n N] [-b BATCH] [-w WINDOW] [-a AGGREGATES] [--no-pg]\n");
    return 2;
}

int main(int argc, char **argv)
{
    char master[CH_PATH], copy[CH_PATH], to[700];
    bench_result res;
    double rate;
    int no_pg = 0, i;
    const char *why;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n_msgs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-b") && i + 1 < argc)
            batch = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "-w") && i + 1 < argc)
            window = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-a") && i + 1 < argc)
            aggregates = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-pg"))
            no_pg = 1;
        else
            return usage();
    }
    if (n_msgs < 1 || batch < 1 || batch > 100000 || window < 1 || window > 1000000 ||
        aggregates < 1) {
        fprintf(stderr, "bench_amqp: -n, -b (1-100000), -w (1-1000000) and -a must be positive\n");
        return 2;
    }
    if ((why = rmh_available()) != NULL) {
        fprintf(stderr, "bench_amqp: skipped: %s\n", why);
        return 77;
    }
    printf("bench_amqp: N=%lld, payload %d bytes, %u aggregates, relay batch %u, window %lld"
           " unconfirmed; load average %.2f at start\n",
           n_msgs, PAYLOAD_BYTES, aggregates, batch, window, bench_loadavg());
    rmh_start(&broker);
    printf("rabbitmq-server on %s (quorum queues, one node, data in %s); librabbitmq %s\n",
           broker.url + strlen("amqp://guest:guest@"), broker.dir, amqp_version());

    ch_path(master, "master.db");
    ch_path(copy, "copy.db");
    if (bench_sqlite_fill(master, n_msgs, aggregates, PAYLOAD_BYTES)) return 1;
    bench_print_header();

    rate = ceiling("amqp raw confirms (ceiling)", "raw");

    queue_new("sq");
    amqp_url(to, sizeof to, "sq", window);
    if (bench_sqlite_relay_case("sqlite -> amqp", master, copy, to, 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0 &&
        queue_check("sqlite -> amqp", "sq") == 0)
        bench_print_row("sqlite -> amqp (relay)", &res, rate);
    else
        failures++;
    if (bench_sqlite_relay_case("sqlite -> discard", master, copy, "discard:", 0, batch, n_msgs,
                                disarm_parent_handlers, &res) == 0)
        bench_print_row("sqlite -> discard: (store alone)", &res, rate);
    else
        failures++;

#ifdef OUTBOX_HAVE_LIBPQ
    if (!no_pg) pg_cases();
#else
    if (!no_pg)
        printf("%-34s skipped: this build has no PostgreSQL store\n", "postgres -> amqp (relay)");
#endif

    rmh_stop(&broker);
    bench_remove_db(master);
    printf("load average %.2f at the end; %s\n", bench_loadavg(),
           failures ? "SOME CASES FAILED (no figure printed for them)" : "all results checked");
    return failures ? 1 : 0;
}

#endif /* OUTBOX_HAVE_RABBITMQ */
