/*
 * chaos.c - `campuscafe chaos`: the chapter's failure table, measured.
 *
 * Runs the same order flow the naive way (save, commit, then POST the
 * events directly; and the send-then-save variant, half the orders each,
 * each variant in a directory of its own) and the outbox way, under the
 * same abuse:
 *   - the order service kills itself (SIGKILL) at its crash points with
 *     probability --crash-rate (naive save-then-send: after the commit,
 *     before sending; send-then-save: after sending, before saving; outbox:
 *     inside the transaction and after the commit, before answering);
 *   - the harness also SIGKILLs the order service at random moments, and
 *     restarts it with the same arguments whenever it died;
 *   - every event crosses the chaos proxy (proxy.c), which drops requests,
 *     loses responses and duplicates requests at --fault-rate;
 *   - clients retry POST /orders (same Idempotency-Key) when no answer
 *     comes, also across a restart of the order service.
 * Then faults stop, the run settles (every outbox empty and nothing changed
 * for 2 s, or a timeout), the services stop, and the counts are read FROM
 * THE DATABASES (proc.c: cafe_harness_count):
 *   order saved, event lost   orders with no ReserveStockRequested handled
 *   ghost order               order ids in inventory/payment not in orders
 *   duplicate processing      extra ReserveStockRequested handled rows per
 *                             order + extra orders per Idempotency-Key
 *   stuck                     orders not in an end state
 * Exit: 0 when the outbox mode shows all zeros (or only naive ran), 1
 * otherwise, 2 usage.
 */
#include "cafe.h"
#include "proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

typedef struct chaos_options {
    unsigned orders;
    unsigned clients;
    double crash_rate;
    double fault_rate;
    unsigned long seed;
    const char *bus;
    int run_naive, run_outbox;
    int naive_save_then_send, naive_send_then_save;
    int json;
    int keep;
    int settle_timeout_s;
    int kill_interval_ms; /* mean time between the harness's kill -9s */
} chaos_options;

typedef struct run_result {
    const char *label;
    int ran; /* the run went through (services started, counted) */
    int settled;
    unsigned orders; /* requested */
    cafe_counts counts;
    cafe_proxy_stats proxy;
    unsigned self_crashes;  /* order died by itself (crash points) */
    unsigned harness_kills; /* kill -9 by the harness */
    unsigned restarts;      /* every restart, any service */
    unsigned answered, refused, abandoned, retries;
    double seconds;
} run_result;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: campuscafe chaos [--orders N] [--crash-rate F] [--fault-rate F] [--seed N]\n"
            "                        [--mode naive|outbox|both] [--naive-variant "
            "both|save-then-send|send-then-save]\n"
            "                        [--bus nats://HOST:PORT|amqp://HOST:PORT] [--clients N]\n"
            "                        [--kill-every MS]\n"
            "                        [--settle-timeout SECONDS] [--json] [--keep]\n"
            "  Runs the order flow the naive way and the outbox way under crashes of the order\n"
            "  service and an unreliable network, then counts the failures in the databases.\n"
            "  Defaults: 60 orders per mode, crash rate 0.1, fault rate 0.1, and a kill -9 of\n"
            "  the order service by the harness every ~1000 ms (--kill-every 0 or --crash-rate 0:\n"
            "  none).  The naive mode is webhooks only.  Exit 0 when the outbox mode counts\n"
            "  are all zero (and it settled), 1 otherwise.\n");
}

static int parse_num(const char *opt, const char *v, double min, double max, double *out)
{
    char *end;
    double d;
    if (!v) {
        fprintf(stderr, "campuscafe chaos: %s needs a value\n", opt);
        return -1;
    }
    d = strtod(v, &end);
    if (*end || end == v || !(d >= min && d <= max)) {
        fprintf(stderr, "campuscafe chaos: %s must be a number %g..%g, not \"%s\"\n", opt, min, max,
                v);
        return -1;
    }
    *out = d;
    return 0;
}

static int parse(int argc, char **argv, chaos_options *o)
{
    double d;
    memset(o, 0, sizeof *o);
    o->orders = 60;
    o->clients = 4;
    o->crash_rate = 0.1;
    o->fault_rate = 0.1;
    o->seed = (unsigned long)time(NULL) % 100000;
    o->run_naive = o->run_outbox = 1;
    o->naive_save_then_send = o->naive_send_then_save = 1;
    o->settle_timeout_s = 60;
    o->kill_interval_ms = 1000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        } else if (strcmp(a, "--keep") == 0) {
            o->keep = 1;
            continue;
        } else if (strcmp(a, "--orders") == 0) {
            if (parse_num(a, v, 2, 100000, &d) != 0) return -1;
            o->orders = (unsigned)d;
        } else if (strcmp(a, "--clients") == 0) {
            if (parse_num(a, v, 1, 64, &d) != 0) return -1;
            o->clients = (unsigned)d;
        } else if (strcmp(a, "--crash-rate") == 0) {
            if (parse_num(a, v, 0, 1, &d) != 0) return -1;
            o->crash_rate = d;
        } else if (strcmp(a, "--fault-rate") == 0) {
            if (parse_num(a, v, 0, 1, &d) != 0) return -1;
            o->fault_rate = d;
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_num(a, v, 0, 4294967295.0, &d) != 0) return -1;
            o->seed = (unsigned long)d;
        } else if (strcmp(a, "--kill-every") == 0) {
            if (parse_num(a, v, 0, 600000, &d) != 0) return -1;
            o->kill_interval_ms = (int)d;
        } else if (strcmp(a, "--settle-timeout") == 0) {
            if (parse_num(a, v, 1, 3600, &d) != 0) return -1;
            o->settle_timeout_s = (int)d;
        } else if (strcmp(a, "--bus") == 0) {
            if (!v || (strcmp(v, "webhook") != 0 && strncmp(v, "nats://", 7) != 0 &&
                       strncmp(v, "amqp://", 7) != 0)) {
                fprintf(
                    stderr,
                    "campuscafe chaos: --bus is webhook, nats://HOST:PORT or amqp://HOST:PORT\n");
                return -1;
            }
            o->bus = strcmp(v, "webhook") == 0 ? NULL : v;
        } else if (strcmp(a, "--mode") == 0) {
            if (v && strcmp(v, "both") == 0)
                o->run_naive = o->run_outbox = 1;
            else if (v && strcmp(v, "naive") == 0)
                o->run_naive = 1, o->run_outbox = 0;
            else if (v && strcmp(v, "outbox") == 0)
                o->run_naive = 0, o->run_outbox = 1;
            else {
                fprintf(stderr, "campuscafe chaos: --mode is naive, outbox or both\n");
                return -1;
            }
        } else if (strcmp(a, "--naive-variant") == 0) {
            if (v && strcmp(v, "both") == 0)
                o->naive_save_then_send = o->naive_send_then_save = 1;
            else if (v && strcmp(v, "save-then-send") == 0)
                o->naive_save_then_send = 1, o->naive_send_then_save = 0;
            else if (v && strcmp(v, "send-then-save") == 0)
                o->naive_save_then_send = 0, o->naive_send_then_save = 1;
            else {
                fprintf(stderr, "campuscafe chaos: --naive-variant is both, save-then-send or"
                                " send-then-save\n");
                return -1;
            }
        } else {
            fprintf(stderr, "campuscafe chaos: unknown option \"%s\"\n", a);
            usage(stderr);
            return -1;
        }
        i++;
    }
    return 0;
}

/* Restarts a service that died; counts why it died. */
static int revive(cafe_cluster *c, int service, run_result *r, int killed_by_us)
{
    cafe_proc *p = &c->procs[service];
    if (!killed_by_us && service == CAFE_H_ORDER && WIFSIGNALED(p->last_status) &&
        WTERMSIG(p->last_status) == SIGKILL)
        r->self_crashes++;
    else if (!killed_by_us) {
        fprintf(stderr, "campuscafe chaos: the %s service exited unexpectedly (status %d)\n",
                cafe_harness_service_names[service], p->last_status);
        cafe_cluster_print_log_tail(c, service, 10);
    }
    /* The clients are already retrying: a restarted order service can take
     * a request and hit a crash point before its ready file is written.
     * Such a death is one more crash; start it again. */
    for (int attempt = 0; attempt < 50; attempt++) {
        r->restarts++;
        if (cafe_proc_restart(p, 15000) == 0) return 0;
        if (p->pid != 0 || !WIFSIGNALED(p->last_status) || WTERMSIG(p->last_status) != SIGKILL)
            break;
        r->self_crashes++;
    }
    fprintf(stderr, "campuscafe chaos: the %s service did not come back\n",
            cafe_harness_service_names[service]);
    cafe_cluster_print_log_tail(c, service, 15);
    return -1;
}

/* One pass of the supervisor: restart whatever died. */
static int supervise(cafe_cluster *c, run_result *r)
{
    for (int i = 0; i < CAFE_H_SERVICES; i++)
        if (cafe_proc_reap(&c->procs[i], 0) && revive(c, i, r, 0) != 0) return -1;
    return 0;
}

static int run_one(const chaos_options *o, const char *base, const char *label, const char *mode,
                   const char *variant, unsigned orders, run_result *r)
{
    char dir[PATH_MAX - 256], secret[PATH_MAX], api[64], crash[32];
    cafe_cluster cluster;
    cafe_cluster_options co;
    cafe_client_options clo;
    cafe_clients *clients = NULL;
    cafe_proxy *proxy = NULL;
    cafe_stats s;
    uint64_t rng = o->seed * 31u + 17u;
    int started = 0, rc = -1;
    int64_t t0 = cafe_harness_now_ms(), next_kill, quiet_since, deadline;
    char last[sizeof s.fingerprint];

    memset(r, 0, sizeof *r);
    r->label = label;
    r->orders = orders;
    snprintf(dir, sizeof dir, "%s/%s", base, label);
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "campuscafe chaos: cannot create %s\n", dir);
        return -1;
    }
    snprintf(secret, sizeof secret, "%s/webhook.secret", dir);
    if (cafe_harness_write_secret(secret) != 0) return -1;
    if (cafe_cluster_prepare(&cluster, dir) != 0) return -1;
    if (cafe_proxy_new(&proxy, cluster.event_port, CAFE_H_SERVICES, o->seed, o->fault_rate) != 0)
        return -1;
    memset(&co, 0, sizeof co);
    co.dir = dir;
    co.bus = strcmp(mode, "outbox") == 0 ? o->bus : NULL; /* naive is webhook only */
    co.mode = mode;
    co.naive_variant = variant;
    co.secret_file = secret;
    co.seed = o->seed;
    snprintf(crash, sizeof crash, "%g", o->crash_rate);
    if (o->crash_rate > 0) {
        co.crash_rate = crash;
        co.crash_points = !variant                                 ? "mid_request,after_commit"
                          : strcmp(variant, "send-then-save") == 0 ? "after_send"
                                                                   : "after_commit";
    }
    for (int i = 0; i < CAFE_H_SERVICES; i++)
        co.peer_port[i] = cafe_proxy_port(proxy, i);
    if (cafe_cluster_start(&cluster, &co) != 0) goto out;
    started = 1;

    snprintf(api, sizeof api, "http://127.0.0.1:%u", cluster.api_port);
    memset(&clo, 0, sizeof clo);
    clo.orders = orders;
    clo.clients = o->clients;
    clo.seed = o->seed;
    clo.pace_ms = 100; /* the orders flow for a few seconds, across crashes */
    clo.retry_deadline_ms = 30000;
    clo.max_qty = 2;
    clo.api_url = api;
    if (cafe_clients_start(&clients, &clo) != 0) goto out;

    /* Fault phase: supervise, kill the order service now and then. */
    next_kill =
        cafe_harness_now_ms() + (int64_t)((0.5 + cafe_harness_rand01(&rng)) * o->kill_interval_ms);
    while (!cafe_clients_done(clients) && !interrupted) {
        int64_t now = cafe_harness_now_ms();
        if (supervise(&cluster, r) != 0) goto out;
        if (o->crash_rate > 0 && o->kill_interval_ms > 0 && now >= next_kill) {
            cafe_proc_signal(&cluster.procs[CAFE_H_ORDER], SIGKILL);
            cafe_proc_reap(&cluster.procs[CAFE_H_ORDER], 1);
            r->harness_kills++;
            if (revive(&cluster, CAFE_H_ORDER, r, 1) != 0) goto out;
            next_kill = cafe_harness_now_ms() +
                        (int64_t)((0.5 + cafe_harness_rand01(&rng)) * o->kill_interval_ms);
        }
        cafe_harness_sleep_ms(30);
    }
    if (interrupted) cafe_clients_stop(clients);
    cafe_clients_progress(clients, &r->answered, &r->refused, &r->abandoned, &r->retries);

    /* Settle phase: a reliable network; wait until every outbox (and, with
     * NATS, every consumer) is empty and nothing changed for 2 s. */
    cafe_proxy_set_fault_rate(proxy, 0);
    deadline = cafe_harness_now_ms() + o->settle_timeout_s * 1000LL;
    quiet_since = cafe_harness_now_ms();
    last[0] = '\0';
    while (!interrupted && cafe_harness_now_ms() < deadline) {
        int quiet = 1;
        if (supervise(&cluster, r) != 0) goto out;
        cafe_cluster_stats(&cluster, &s);
        for (int i = 0; i < CAFE_H_SERVICES; i++)
            if (!s.up[i] || s.pending[i] != 0) quiet = 0;
        if (s.bus_backlog != 0) quiet = 0;
        if (!quiet || strcmp(last, s.fingerprint) != 0) quiet_since = cafe_harness_now_ms();
        memcpy(last, s.fingerprint, sizeof last);
        if (quiet && cafe_harness_now_ms() - quiet_since >= 2000) {
            r->settled = 1;
            break;
        }
        cafe_harness_sleep_ms(200);
    }
    cafe_clients_free(clients);
    clients = NULL;
    cafe_cluster_stop(&cluster);
    started = 0;
    cafe_proxy_get_stats(proxy, &r->proxy);
    if (cafe_harness_count(dir, &r->counts) != 0) {
        fprintf(stderr, "campuscafe chaos: cannot read the databases of %s: %s\n", label,
                r->counts.error);
        goto out;
    }
    r->ran = 1;
    rc = 0;
out:
    if (clients) {
        cafe_clients_stop(clients);
        if (started) cafe_cluster_stop(&cluster);
        started = 0;
        cafe_clients_free(clients);
    }
    if (started) cafe_cluster_stop(&cluster);
    cafe_proxy_free(proxy);
    r->seconds = (double)(cafe_harness_now_ms() - t0) / 1000.0;
    if (!o->json)
        fprintf(stderr,
                "  %-22s %u orders in %.1f s: %u self-crashes, %u kills, %u client retries,"
                " %s\n",
                label, orders, r->seconds, r->self_crashes, r->harness_kills, r->retries,
                !r->ran      ? "FAILED to run"
                : r->settled ? "settled"
                             : "did NOT settle");
    return rc;
}

static long dup_total(const cafe_counts *c)
{
    return c->dup_handled + c->dup_orders;
}

/* Sums the naive variants into one column. */
static void add_run(run_result *sum, const run_result *r)
{
    sum->ran |= r->ran;
    sum->settled = sum->orders ? (sum->settled && r->settled) : r->settled;
    sum->orders += r->orders;
    sum->counts.orders += r->counts.orders;
    sum->counts.lost += r->counts.lost;
    sum->counts.ghost += r->counts.ghost;
    sum->counts.dup_handled += r->counts.dup_handled;
    sum->counts.dup_orders += r->counts.dup_orders;
    sum->counts.stuck += r->counts.stuck;
    sum->proxy.requests += r->proxy.requests;
    for (int k = 0; k < CAFE_FAULT_KINDS; k++)
        sum->proxy.faults[k] += r->proxy.faults[k];
    sum->self_crashes += r->self_crashes;
    sum->harness_kills += r->harness_kills;
    sum->retries += r->retries;
    sum->seconds += r->seconds;
}

static json_t *run_json(const run_result *r)
{
    return json_pack("{s:b, s:b, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:{s:i, s:i, s:i, s:i,"
                     " s:i, s:i}, s:f}",
                     "ran", r->ran, "settled", r->settled, "orders_requested", (int)r->orders,
                     "orders", (int)r->counts.orders, "lost", (int)r->counts.lost, "ghost",
                     (int)r->counts.ghost, "duplicate", (int)dup_total(&r->counts),
                     "duplicate_handled", (int)r->counts.dup_handled, "duplicate_orders",
                     (int)r->counts.dup_orders, "stuck", (int)r->counts.stuck, "faults",
                     "order_self_crashes", (int)r->self_crashes, "order_killed",
                     (int)r->harness_kills, "dropped", (int)r->proxy.faults[CAFE_FAULT_DROP],
                     "response_lost", (int)r->proxy.faults[CAFE_FAULT_LOSE_RESPONSE], "duplicated",
                     (int)r->proxy.faults[CAFE_FAULT_DUPLICATE], "client_retries", (int)r->retries,
                     "seconds", r->seconds);
}

static void cell(char *buf, size_t size, int ran, long v)
{
    if (ran)
        snprintf(buf, size, "%ld", v);
    else
        snprintf(buf, size, "-");
}

static void print_table(const chaos_options *o, const run_result *naive, const run_result *outbox,
                        const run_result *variants, int nvariants)
{
    static const char *const rows[] = {
        "order saved, event lost (flow stops)", "event sent, order missing (ghost order)",
        "duplicate processing (double reservation)", "orders stuck after the run settles"};
    char a[32], b[32];
    printf("\nCampusCafe chaos run: %u orders per mode, crash rate %g, network fault rate %g,"
           " seed %lu, %s bus\n\n",
           o->orders, o->crash_rate, o->fault_rate, o->seed, o->bus ? o->bus : "webhook");
    printf("| %-42s | %6s | %6s |\n", "failure mode", "naive", "outbox");
    printf("|%.44s|%.8s|%.8s|\n", "--------------------------------------------",
           "-------:", "-------:");
    for (int k = 0; k < 4; k++) {
        long nv = k == 0   ? naive->counts.lost
                  : k == 1 ? naive->counts.ghost
                  : k == 2 ? dup_total(&naive->counts)
                           : naive->counts.stuck;
        long ov = k == 0   ? outbox->counts.lost
                  : k == 1 ? outbox->counts.ghost
                  : k == 2 ? dup_total(&outbox->counts)
                           : outbox->counts.stuck;
        cell(a, sizeof a, naive->ran, nv);
        cell(b, sizeof b, outbox->ran, ov);
        printf("| %-42s | %6s | %6s |\n", rows[k], a, b);
    }
    printf("\n%-46s %6s   %6s\n", "what was done to them", "naive", "outbox");
#define FAULT_ROW(title, field)                                                                    \
    do {                                                                                           \
        cell(a, sizeof a, naive->ran, (long)naive->field);                                         \
        cell(b, sizeof b, outbox->ran, (long)outbox->field);                                       \
        printf("  %-44s %6s   %6s\n", title, a, b);                                                \
    } while (0)
    FAULT_ROW("orders the service saved", counts.orders);
    FAULT_ROW("order service crashed itself (crash points)", self_crashes);
    FAULT_ROW("order service killed -9 by the harness", harness_kills);
    FAULT_ROW("event requests dropped by the proxy", proxy.faults[CAFE_FAULT_DROP]);
    FAULT_ROW("event responses lost by the proxy", proxy.faults[CAFE_FAULT_LOSE_RESPONSE]);
    FAULT_ROW("event requests duplicated by the proxy", proxy.faults[CAFE_FAULT_DUPLICATE]);
    FAULT_ROW("client retries of POST /orders", retries);
#undef FAULT_ROW
    if (o->bus && o->run_outbox)
        printf("  (outbox mode over %s: events travel through JetStream, not the proxy,\n"
               "   so only the crashes and the client retries apply to it)\n",
               o->bus);
    if (nvariants) {
        printf("\nnaive, per variant:\n");
        for (int i = 0; i < nvariants; i++)
            printf("  %-16s %ld orders: lost %ld, ghost %ld, duplicate %ld (%ld extra"
                   " reservations, %ld extra orders), stuck %ld%s\n",
                   variants[i].label + 6, variants[i].counts.orders, variants[i].counts.lost,
                   variants[i].counts.ghost, dup_total(&variants[i].counts),
                   variants[i].counts.dup_handled, variants[i].counts.dup_orders,
                   variants[i].counts.stuck, variants[i].settled ? "" : " (did not settle)");
    }
    if (outbox->ran) {
        const cafe_counts *c = &outbox->counts;
        printf("\noutbox: %ld orders, completed %ld, rejected %ld, cancelled %ld%s; stock conserved"
               " %s, reserved stock only for completed orders %s, one payment per paid order %s\n",
               c->orders, c->by_state[5], c->by_state[6], c->by_state[7],
               outbox->settled ? "" : " (did NOT settle)", c->stock_violations ? "NO" : "yes",
               c->reserved_not_completed ? "NO" : "yes", c->payment_not_once ? "NO" : "yes");
    }
}

int cafe_chaos_main(int argc, char **argv)
{
    chaos_options o;
    char base[PATH_MAX - 512];
    run_result naive, outbox, variants[2];
    int nvariants = 0, rc = 1, outbox_ok = 0;
    struct sigaction sa;

    switch (parse(argc, argv, &o)) {
    case 1:
        return 0;
    case 0:
        break;
    default:
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    memset(&naive, 0, sizeof naive);
    memset(&outbox, 0, sizeof outbox);
    memset(variants, 0, sizeof variants);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    base[0] = '\0';
    if (cafe_harness_tempdir(base, sizeof base, "campuscafe-chaos") != 0) goto out;
    if (!o.json) fprintf(stderr, "campuscafe chaos: seed %lu, directory %s\n", o.seed, base);
    if (o.run_naive) {
        unsigned half = o.naive_save_then_send && o.naive_send_then_save ? o.orders / 2 : o.orders;
        naive.label = "naive";
        if (o.naive_save_then_send) {
            if (run_one(&o, base, "naive-save-then-send", "naive", "save-then-send", half,
                        &variants[nvariants]) != 0)
                goto out;
            add_run(&naive, &variants[nvariants++]);
        }
        if (o.naive_send_then_save && !interrupted) {
            if (run_one(&o, base, "naive-send-then-save", "naive", "send-then-save",
                        o.orders - (o.naive_save_then_send ? half : 0), &variants[nvariants]) != 0)
                goto out;
            add_run(&naive, &variants[nvariants++]);
        }
    }
    if (o.run_outbox && !interrupted) {
        if (run_one(&o, base, "outbox", "outbox", NULL, o.orders, &outbox) != 0) goto out;
        outbox_ok = outbox.settled && outbox.counts.lost == 0 && outbox.counts.ghost == 0 &&
                    dup_total(&outbox.counts) == 0 && outbox.counts.stuck == 0;
    }
    if (interrupted) {
        fprintf(stderr, "campuscafe chaos: interrupted\n");
        goto out;
    }
    if (o.json) {
        json_t *j =
            json_pack("{s:I, s:i, s:f, s:f, s:s, s:{}, s:b}", "seed", (json_int_t)o.seed, "orders",
                      (int)o.orders, "crash_rate", o.crash_rate, "fault_rate", o.fault_rate, "bus",
                      o.bus ? o.bus : "webhook", "modes", "outbox_all_zero", outbox_ok);
        char *text;
        json_t *modes = json_object_get(j, "modes");
        if (naive.ran) {
            json_t *n = run_json(&naive), *v = json_object();
            for (int i = 0; i < nvariants; i++)
                json_object_set_new(v, variants[i].label + 6, run_json(&variants[i]));
            json_object_set_new(n, "variants", v);
            json_object_set_new(modes, "naive", n);
        }
        if (outbox.ran) {
            json_t *ob = run_json(&outbox);
            json_object_set_new(
                ob, "consistency",
                json_pack("{s:i, s:i, s:i, s:i, s:i}", "stock_violations",
                          (int)outbox.counts.stock_violations, "reserved_not_completed",
                          (int)outbox.counts.reserved_not_completed, "payment_without_order",
                          (int)outbox.counts.payment_no_order, "reserve_not_once",
                          (int)outbox.counts.reserve_not_once, "payment_not_once",
                          (int)outbox.counts.payment_not_once));
            json_object_set_new(modes, "outbox", ob);
        }
        text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text) printf("%s\n", text);
        free(text);
        json_decref(j);
    } else {
        print_table(&o, &naive, &outbox, variants, nvariants);
        if (o.run_outbox)
            printf("\n%s\n", outbox_ok ? "outbox mode: every failure count is zero."
                                       : "outbox mode: NOT all zero (see above).");
    }
    rc = !o.run_outbox || outbox_ok ? 0 : 1;
out:
    if (base[0] && !o.keep && rc == 0)
        cafe_harness_rmtree(base);
    else if (base[0])
        fprintf(stderr, "campuscafe chaos: kept %s\n", base);
    curl_global_cleanup();
    return rc;
}

#else /* no libmicrohttpd/libcurl */

int cafe_chaos_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "campuscafe chaos: this build has no libmicrohttpd/libcurl\n");
    return 2;
}

#endif
