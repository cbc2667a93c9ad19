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
 * Also here: emitting one event (cafe_emit), seeded random choices, crash
 * points, a small SQL helper, logging.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef OUTBOX_HAVE_NATS
#include "bus_nats.h"
#endif

const char *const cafe_service_names[CAFE_SERVICES + 1] = {"order", "inventory", "payment",
                                                           "notification", NULL};

static const struct {
    const char *item;
    int cents;
} menu[] = {{"latte", 350}, {"espresso", 250}, {"croissant", 300}, {"muffin", 275}};

/* Who consumes which event (the table of cc_common.md). */
static const struct {
    const char *type;
    int target;
} routes[] = {
    {"OrderPlaced", CAFE_NOTIFICATION},
    {"ReserveStockRequested", CAFE_INVENTORY},
    {"StockReserved", CAFE_ORDER},
    {"StockUnavailable", CAFE_ORDER},
    {"PaymentRequested", CAFE_PAYMENT},
    {"PaymentSucceeded", CAFE_ORDER},
    {"PaymentFailed", CAFE_ORDER},
    {"ReleaseStockRequested", CAFE_INVENTORY},
    {"NotifyUserRequested", CAFE_NOTIFICATION},
    {"UserNotified", CAFE_ORDER},
};

/* See cafe.h. */
int cafe_price_cents(const char *item)
{
    size_t i;
    for (i = 0; item && i < sizeof menu / sizeof menu[0]; i++)
        if (strcmp(menu[i].item, item) == 0) return menu[i].cents;
    return -1;
}

/* See cafe.h. */
int cafe_stock_parse(const char *text, int (*fn)(void *user, const char *item, long qty),
                     void *user, outbox_error *err)
{
    char buf[1024], *tok, *save = NULL;
    if (strlen(text) >= sizeof buf) return cafe_error(err, OUTBOX_ECONFIG, "--stock is too long");
    snprintf(buf, sizeof buf, "%s", text);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '='), *end;
        long qty;
        int rc;
        if (eq == NULL)
            return cafe_error(err, OUTBOX_ECONFIG, "--stock: '%s' is not item=qty", tok);
        *eq = '\0';
        qty = strtol(eq + 1, &end, 10);
        if (cafe_price_cents(tok) < 0 || *end || end == eq + 1 || qty < 0 || qty > 1000000)
            return cafe_error(err, OUTBOX_ECONFIG,
                              "--stock: '%s=%s' needs a menu item (latte, espresso, croissant,"
                              " muffin) and a quantity 0..1000000",
                              tok, eq + 1);
        if (fn && (rc = fn(user, tok, qty)) != OUTBOX_OK) return rc;
    }
    return OUTBOX_OK;
}

/* See cafe.h. */
int cafe_event_target(const char *type)
{
    size_t i;
    for (i = 0; type && i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].type, type) == 0) return routes[i].target;
    return -1;
}

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static const cafe_service *log_service; /* for the library's log callback */

/* See cafe.h. */
void cafe_log(const cafe_service *svc, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "campuscafe %s[%d]: %s\n", svc ? svc->def->name : "?", (int)getpid(), line);
}

static void library_log(void *user, int level, const char *component, const char *message)
{
    (void)user;
    cafe_log(log_service, "%s %s: %s", outbox_log_level_name(level), component, message);
}

/* See cafe.h. */
int64_t cafe_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* See cafe.h. */
double cafe_random(cafe_service *svc)
{
    uint64_t v;
    pthread_mutex_lock(&svc->rng_lock);
    v = splitmix64(&svc->rng_state);
    pthread_mutex_unlock(&svc->rng_lock);
    return (double)(v >> 11) / 9007199254740992.0;
}

/* See cafe.h. */
double cafe_hash_unit(const char *text, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ seed, state;
    for (; text && *text; text++) {
        h ^= (unsigned char)*text;
        h *= 1099511628211ULL;
    }
    state = h;
    return (double)(splitmix64(&state) >> 11) / 9007199254740992.0;
}

/* See cafe.h. */
void cafe_crash_point(cafe_service *svc, unsigned point, const char *what, const char *key)
{
    double draw;
    if (!(svc->cfg.crash_points & point) || svc->cfg.crash_rate <= 0 || !svc->ready) return;
    if (key) {
        char text[512];
        snprintf(text, sizeof text, "%lu|%s|%s", svc->start_number, what, key);
        draw = cafe_hash_unit(text, svc->cfg.seed);
    } else {
        draw = cafe_random(svc);
    }
    if (draw >= svc->cfg.crash_rate) return;
    cafe_log(svc, "crash point %s: kill -9 self", what);
    kill(getpid(), SIGKILL);
    pause();
}

/* See cafe.h. */
int cafe_sql(sqlite3 *db, int64_t *row_out, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    va_list ap;
    int rc, i;

    rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    va_start(ap, types);
    for (i = 0; types && types[i]; i++) {
        if (types[i] == 't')
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
        else
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
    }
    va_end(ap);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && row_out) *row_out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc;
}

/* See cafe.h. */
int64_t cafe_outbox_pending(sqlite3 *db)
{
    int64_t n = -1;
    if (cafe_sql(db, &n, "SELECT count(*) FROM outbox WHERE status = 'pending'", NULL) !=
        SQLITE_ROW)
        return -1;
    return n;
}

/* ------------------------------------------------------------------------
 * Emitting events
 * ---------------------------------------------------------------------- */

/* See cafe.h. */
int cafe_emit(cafe_service *svc, sqlite3 *db, const char *type, const char *order_id,
              json_t *payload, const char *causation_id, outbox_error *err)
{
    outbox_msg *msg = NULL;
    char *text = json_dumps(payload, JSON_COMPACT);
    int rc;

    if (text == NULL) {
        return cafe_error(err, OUTBOX_ENOMEM, "out of memory encoding %s", type);
    }
    rc = outbox_msg_new(&msg, type, "Order", order_id, text, err);
    if (rc == OUTBOX_OK) rc = outbox_msg_set_header(msg, "correlation_id", order_id, err);
    if (rc == OUTBOX_OK && causation_id)
        rc = outbox_msg_set_header(msg, "causation_id", causation_id, err);
    if (rc != OUTBOX_OK) goto out;
    if (!svc->cfg.naive) {
        rc = outbox_enqueue_sqlite(db, msg, err);
        goto out;
    }
    if (svc->npending == sizeof svc->pending / sizeof svc->pending[0]) {
        rc = cafe_error(err, OUTBOX_EINTERNAL, "too many events from one handler");
        goto out;
    }
    svc->pending[svc->npending++] = msg;
    msg = NULL;
out:
    outbox_msg_free(msg);
    free(text);
    return rc;
}

/* See cafe.h. */
int cafe_error(outbox_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL) return code;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

/* See cafe.h. */
json_t *cafe_payload(const outbox_msg *msg, outbox_error *err)
{
    json_t *obj = json_loads(outbox_msg_payload(msg), 0, NULL);
    if (!json_is_object(obj) || !json_is_string(json_object_get(obj, "order_id"))) {
        json_decref(obj);
        cafe_error(err, OUTBOX_EBADPAYLOAD,
                   "%s %s: payload is not an object with a string order_id", outbox_msg_type(msg),
                   outbox_msg_id(msg));
        return NULL;
    }
    return obj;
}

/* See cafe.h. */
const char *cafe_json_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* See cafe.h. */
void cafe_pending_clear(cafe_service *svc)
{
    size_t i;
    for (i = 0; i < svc->npending; i++)
        outbox_msg_free(svc->pending[i]);
    svc->npending = 0;
}

/* ------------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------- */

static void usage(const cafe_service_def *def, FILE *to)
{
    fprintf(to,
            "usage: campuscafe %s --dir DIR [--port N] [options]\n"
            "  --dir DIR               database DIR/%s.db, ready file DIR/%s.ready (required)\n"
            "  --port N                event endpoint 127.0.0.1:N (POST /events, GET /stats)\n"
            "  --api-port N            order only: the public API (POST /orders, GET /orders/ID)\n"
            "  --order-url URL         where events for each service go\n"
            "  --inventory-url URL     (http://127.0.0.1:P/events)\n"
            "  --payment-url URL\n"
            "  --notification-url URL\n"
            "  --bus webhook|nats://H:P  event transport (default webhook)\n"
            "  --mode outbox|naive     outbox + inbox (default) or direct sends\n"
            "  --relay inproc|process  relay on a thread (default) or an `outbox relay` child\n"
            "  --secret-file F         webhook signing secret (whsec_...)\n"
            "  --seed N                seeds every random choice (default 1)\n"
            "  --fail-rate F           payment only: fraction declined, 0..1 (default 0.2)\n"
            "  --stock item=qty,...    inventory only (default " CAFE_DEFAULT_STOCK ")\n"
            "  --crash-rate F          order only: SIGKILL self at a crash point, 0..1\n"
            "  --crash-points LIST     after_commit,after_send,mid_request\n"
            "  --naive-variant V       order, naive mode: save-then-send (default) or\n"
            "                          send-then-save\n",
            def->name, def->name, def->name);
}

static int parse_rate(const char *opt, const char *text, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0 && v <= 1)) {
        fprintf(stderr, "campuscafe: %s '%s' is not a number from 0 to 1\n", opt, text);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_port(const char *opt, const char *text, unsigned *out)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno || end == text || *end || v == 0 || v > 65535) {
        fprintf(stderr, "campuscafe: %s '%s' is not a port number 1..65535\n", opt, text);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_crash_points(const char *text, unsigned *out)
{
    char buf[256], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", text);
    *out = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "after_commit") == 0)
            *out |= CAFE_CRASH_AFTER_COMMIT;
        else if (strcmp(tok, "after_send") == 0)
            *out |= CAFE_CRASH_AFTER_SEND;
        else if (strcmp(tok, "mid_request") == 0)
            *out |= CAFE_CRASH_MID_REQUEST;
        else {
            fprintf(stderr,
                    "campuscafe: --crash-points: unknown point '%s'; use after_commit, "
                    "after_send, mid_request\n",
                    tok);
            return -1;
        }
    }
    return 0;
}

static int read_secret(cafe_config *cfg)
{
    FILE *f = fopen(cfg->secret_file, "r");
    size_t n;
    if (!f) {
        fprintf(stderr, "campuscafe: cannot read --secret-file %s: %s\n", cfg->secret_file,
                strerror(errno));
        return -1;
    }
    n = fread(cfg->secret, 1, sizeof cfg->secret - 1, f);
    fclose(f);
    cfg->secret[n] = '\0';
    while (n > 0 &&
           (cfg->secret[n - 1] == '\n' || cfg->secret[n - 1] == '\r' || cfg->secret[n - 1] == ' '))
        cfg->secret[--n] = '\0';
    if (n == 0) {
        fprintf(stderr, "campuscafe: --secret-file %s is empty; put a whsec_ secret in it\n",
                cfg->secret_file);
        return -1;
    }
    return 0;
}

/* 0, or the exit code (2 usage, or -1 for --help handled). */
static int parse_options(cafe_service *svc, int argc, char **argv)
{
    enum {
        O_DIR = 256,
        O_PORT,
        O_API,
        O_OURL,
        O_IURL,
        O_PURL,
        O_NURL,
        O_BUS,
        O_MODE,
        O_RELAY,
        O_SECRET,
        O_SEED,
        O_FAIL,
        O_STOCK,
        O_CRATE,
        O_CPOINTS,
        O_VARIANT,
        O_HELP
    };
    static const struct option longopts[] = {{"dir", required_argument, NULL, O_DIR},
                                             {"port", required_argument, NULL, O_PORT},
                                             {"api-port", required_argument, NULL, O_API},
                                             {"order-url", required_argument, NULL, O_OURL},
                                             {"inventory-url", required_argument, NULL, O_IURL},
                                             {"payment-url", required_argument, NULL, O_PURL},
                                             {"notification-url", required_argument, NULL, O_NURL},
                                             {"bus", required_argument, NULL, O_BUS},
                                             {"mode", required_argument, NULL, O_MODE},
                                             {"relay", required_argument, NULL, O_RELAY},
                                             {"secret-file", required_argument, NULL, O_SECRET},
                                             {"seed", required_argument, NULL, O_SEED},
                                             {"fail-rate", required_argument, NULL, O_FAIL},
                                             {"stock", required_argument, NULL, O_STOCK},
                                             {"crash-rate", required_argument, NULL, O_CRATE},
                                             {"crash-points", required_argument, NULL, O_CPOINTS},
                                             {"naive-variant", required_argument, NULL, O_VARIANT},
                                             {"help", no_argument, NULL, O_HELP},
                                             {NULL, 0, NULL, 0}};
    cafe_config *cfg = &svc->cfg;
    const cafe_service_def *def = svc->def;
    int c, i;

    for (i = 0; cafe_service_names[i]; i++)
        if (strcmp(cafe_service_names[i], def->name) == 0) cfg->service = i;
    cfg->bus = "webhook";
    cfg->seed = 1;
    cfg->fail_rate = 0.2;
    cfg->stock = CAFE_DEFAULT_STOCK;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_DIR:
            cfg->dir = optarg;
            break;
        case O_PORT:
            if (parse_port("--port", optarg, &cfg->port)) return 2;
            break;
        case O_API:
            if (parse_port("--api-port", optarg, &cfg->api_port)) return 2;
            break;
        case O_OURL:
            cfg->peer_url[CAFE_ORDER] = optarg;
            break;
        case O_IURL:
            cfg->peer_url[CAFE_INVENTORY] = optarg;
            break;
        case O_PURL:
            cfg->peer_url[CAFE_PAYMENT] = optarg;
            break;
        case O_NURL:
            cfg->peer_url[CAFE_NOTIFICATION] = optarg;
            break;
        case O_BUS:
            if (strcmp(optarg, "webhook") != 0 && strncmp(optarg, "nats://", 7) != 0) {
                fprintf(stderr, "campuscafe: --bus '%s': use webhook or nats://HOST:PORT\n",
                        optarg);
                return 2;
            }
            cfg->bus = optarg;
            break;
        case O_MODE:
            if (strcmp(optarg, "outbox") != 0 && strcmp(optarg, "naive") != 0) {
                fprintf(stderr, "campuscafe: --mode '%s': use outbox or naive\n", optarg);
                return 2;
            }
            cfg->naive = strcmp(optarg, "naive") == 0;
            break;
        case O_RELAY:
            if (strcmp(optarg, "inproc") != 0 && strcmp(optarg, "process") != 0) {
                fprintf(stderr, "campuscafe: --relay '%s': use inproc or process\n", optarg);
                return 2;
            }
            cfg->relay_process = strcmp(optarg, "process") == 0;
            break;
        case O_SECRET:
            cfg->secret_file = optarg;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            cfg->seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "campuscafe: --seed '%s' is not a whole number\n", optarg);
                return 2;
            }
            break;
        }
        case O_FAIL:
            if (parse_rate("--fail-rate", optarg, &cfg->fail_rate)) return 2;
            break;
        case O_STOCK:
            cfg->stock = optarg;
            break;
        case O_CRATE:
            if (parse_rate("--crash-rate", optarg, &cfg->crash_rate)) return 2;
            break;
        case O_CPOINTS:
            if (parse_crash_points(optarg, &cfg->crash_points)) return 2;
            break;
        case O_VARIANT:
            if (strcmp(optarg, "save-then-send") != 0 && strcmp(optarg, "send-then-save") != 0) {
                fprintf(stderr,
                        "campuscafe: --naive-variant '%s': use save-then-send or "
                        "send-then-save\n",
                        optarg);
                return 2;
            }
            cfg->send_then_save = strcmp(optarg, "send-then-save") == 0;
            break;
        case O_HELP:
            usage(def, stdout);
            return -1;
        default:
            fprintf(stderr, "campuscafe %s: unknown or incomplete option '%s' (see --help)\n",
                    def->name, argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "campuscafe %s: unexpected argument '%s' (see --help)\n", def->name,
                argv[optind]);
        return 2;
    }
    if (!cfg->dir) {
        fprintf(stderr, "campuscafe %s: --dir DIR is required (the service's database folder)\n",
                def->name);
        return 2;
    }
    if (cfg->naive && strcmp(cfg->bus, "webhook") != 0) {
        fprintf(stderr, "campuscafe %s: --mode naive works with --bus webhook only\n", def->name);
        return 2;
    }
    if (strcmp(cfg->bus, "webhook") == 0) {
        if (!cfg->port) {
            fprintf(stderr, "campuscafe %s: --port N is required with --bus webhook\n", def->name);
            return 2;
        }
        for (i = 0; def->emits[i]; i++) {
            int t = cafe_event_target(def->emits[i]);
            if (t >= 0 && !cfg->peer_url[t]) {
                fprintf(stderr,
                        "campuscafe %s: --%s-url is required (where %s events go), e.g. "
                        "http://127.0.0.1:P/events\n",
                        def->name, cafe_service_names[t], def->emits[i]);
                return 2;
            }
        }
    }
#ifndef OUTBOX_HAVE_NATS
    if (strncmp(cfg->bus, "nats://", 7) == 0) {
        fprintf(stderr, "campuscafe: --bus nats:// needs a build with nats.c\n");
        return 2;
    }
#endif
    if (cfg->secret_file && read_secret(cfg)) return 2;
    if (cfg->service == CAFE_INVENTORY) {
        outbox_error err;
        memset(&err, 0, sizeof err);
        if (cafe_stock_parse(cfg->stock, NULL, NULL, &err) != OUTBOX_OK) {
            fprintf(stderr, "campuscafe %s: %s\n", def->name, err.message);
            return 2;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Event endpoint front: GET /stats, POST /events
 * ---------------------------------------------------------------------- */

typedef struct front {
    cafe_service *svc;
    unsigned receiver_port; /* outbox mode: the library receiver; 0 otherwise */
    CURL *curl;             /* used by the single serving thread only */
} front;

static void stats_answer(cafe_service *svc, cafe_response *res)
{
    sqlite3 *rdb = NULL;
    json_t *obj;

    if (sqlite3_open_v2(svc->db_path, &rdb, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(rdb);
        cafe_respond_error(res, 503, "cannot open %s", svc->db_path);
        return;
    }
    sqlite3_busy_timeout(rdb, 2000);
    obj = json_object();
    json_object_set_new(obj, "service", json_string(svc->def->name));
    json_object_set_new(obj, "mode", json_string(svc->cfg.naive ? "naive" : "outbox"));
    json_object_set_new(obj, "outbox_pending", json_integer(cafe_outbox_pending(rdb)));
    if (svc->def->stats) svc->def->stats(svc, rdb, obj);
    sqlite3_close(rdb);
    cafe_respond_json(res, 200, obj);
}

/* GET /stats; see cafe.h. */
void cafe_stats_answer(cafe_service *svc, cafe_response *res)
{
    stats_answer(svc, res);
}

typedef struct forward_headers {
    struct curl_slist *list;
    int oom;
} forward_headers;

static void add_forward_header(void *user, const char *name, const char *value)
{
    forward_headers *fh = user;
    char line[8192];
    struct curl_slist *l;
    if (!strcasecmp(name, "host") || !strcasecmp(name, "content-length") ||
        !strcasecmp(name, "connection") || !strcasecmp(name, "transfer-encoding") ||
        !strcasecmp(name, "expect"))
        return;
    snprintf(line, sizeof line, "%s: %s", name, value ? value : "");
    l = curl_slist_append(fh->list, line);
    if (!l)
        fh->oom = 1;
    else
        fh->list = l;
}

/* Hands the request to the library receiver and relays its answer. */
static void forward_event(front *f, const cafe_request *req, cafe_response *res)
{
    forward_headers fh = {NULL, 0};
    cafe_body body = {NULL, 0, 65536, 1}; /* the receiver's answer: its start is enough */
    char url[64];
    long status = 0;
    CURLcode cc;

    cafe_request_headers(req, add_forward_header, &fh);
    if (!fh.oom) fh.list = curl_slist_append(fh.list, "Expect:");
    if (fh.oom || !fh.list) {
        curl_slist_free_all(fh.list);
        cafe_respond_error(res, 503, "out of memory");
        return;
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%u/events", f->receiver_port);
    curl_easy_reset(f->curl);
    curl_easy_setopt(f->curl, CURLOPT_URL, url);
    curl_easy_setopt(f->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(f->curl, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(f->curl, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
    curl_easy_setopt(f->curl, CURLOPT_HTTPHEADER, fh.list);
    curl_easy_setopt(f->curl, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(f->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, cafe_body_write);
    curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, &body);
    cc = curl_easy_perform(f->curl);
    if (cc == CURLE_OK) curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(fh.list);
    if (cc != CURLE_OK || status < 100) {
        free(body.data);
        cafe_respond_error(res, 503, "inbox receiver unavailable: %s", curl_easy_strerror(cc));
        return;
    }
    res->status = (unsigned)status;
    res->body = body.data;
}

static void front_route(void *user, const cafe_request *req, cafe_response *res)
{
    front *f = user;
    if (strcmp(req->method, "GET") == 0 && strcmp(req->url, "/stats") == 0) {
        stats_answer(f->svc, res);
        return;
    }
    if (strcmp(req->method, "POST") != 0 || strcmp(req->url, "/events") != 0) {
        cafe_respond_error(res, 404, "no such endpoint: use POST /events or GET /stats");
        return;
    }
    if (req->too_big) {
        cafe_respond_error(res, 413, "event body too large");
        return;
    }
    if (f->svc->cfg.naive)
        cafe_naive_receive(f->svc, req, res);
    else if (f->receiver_port)
        forward_event(f, req, res);
    else
        cafe_respond_error(res, 404, "this service takes events from the NATS bus, not HTTP");
}

/* ------------------------------------------------------------------------
 * Relay: in-process thread or `outbox relay` child
 * ---------------------------------------------------------------------- */

typedef struct relay_side {
    outbox_relay *relay;
    pthread_t thread;
    int thread_started;
    volatile int stopping;
    pid_t child;
    char store_url[4200];
    char to_url[1024];
    char *opts[16]; /* "key=value", malloc'd */
    size_t nopts;
} relay_side;

static void *relay_thread(void *arg)
{
    relay_side *rs = arg;
    outbox_error err;
    while (!rs->stopping) {
        memset(&err, 0, sizeof err);
        if (outbox_relay_run(rs->relay, &err) == OUTBOX_OK) break;
        if (rs->stopping) break;
        cafe_log(log_service, "relay stopped: %s; restarting in 1 s", err.message);
        sleep(1);
    }
    return NULL;
}

static int add_opt(relay_side *rs, const char *key, const char *value)
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
static int relay_destination(cafe_service *svc, relay_side *rs, outbox_error *err)
{
    const cafe_config *cfg = &svc->cfg;
    int i, main_target = -1;

    snprintf(rs->store_url, sizeof rs->store_url, "sqlite:%s", svc->db_path);
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

static int relay_start_inproc(cafe_service *svc, relay_side *rs, outbox_error *err)
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

static int relay_start_process(cafe_service *svc, relay_side *rs, outbox_error *err)
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

static void relay_stop(relay_side *rs)
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
    relay_side rs;
    front fr;
    cafe_httpd *events = NULL;
    outbox_webhook_receiver *receiver = NULL;
#ifdef OUTBOX_HAVE_NATS
    cafe_nats_consumer *consumer = NULL;
#endif
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
    log_service = &svc;

    rc = parse_options(&svc, argc, argv);
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
    } else {
#ifdef OUTBOX_HAVE_NATS
        if (cafe_nats_consumer_start(&consumer, svc.cfg.bus, def->name, def->consumes, svc.db_path,
                                     def->handle, &svc, &err) != OUTBOX_OK)
            goto fail;
#endif
    }
    if (svc.cfg.port &&
        cafe_httpd_start(&events, svc.cfg.port, 0, 1 << 20, front_route, &fr, &err) != OUTBOX_OK)
        goto fail;

    /* Producer side. */
    if (!svc.cfg.naive) {
        if (relay_destination(&svc, &rs, &err)) goto fail;
        if (svc.cfg.relay_process ? relay_start_process(&svc, &rs, &err)
                                  : relay_start_inproc(&svc, &rs, &err))
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
            if (relay_start_process(&svc, &rs, &err)) cafe_log(&svc, "%s", err.message);
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
    relay_stop(&rs);
    cafe_naive_sender_free(svc.sender);
    if (fr.curl) curl_easy_cleanup(fr.curl);
done:
    cafe_pending_clear(&svc);
    sqlite3_close(svc.db);
    if (started) curl_global_cleanup();
    pthread_mutex_destroy(&svc.db_lock);
    pthread_mutex_destroy(&svc.rng_lock);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_WARN);
    log_service = NULL;
    return exit_code;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
