/*
 * service_helpers.c - what the CampusCafe services share (declared in
 * cafe.h): the menu and the table of event routes, emitting one event
 * (cafe_emit: outbox enqueue in the caller's transaction, or queued for a
 * direct send in naive mode), seeded random choices, crash points, a small
 * SQL helper and logging.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "service.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
