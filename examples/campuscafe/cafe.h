/*
 * cafe.h - CampusCafe, the course chapter's order flow as four services
 * (order, inventory, payment, notification), each its own process with its
 * own SQLite database, plus the demo and chaos harness.
 *
 * Shared here: the database schemas (macros, so the harness reads the same
 * tables), the service configuration and runtime object, the table of event
 * routes, and the helpers every service uses: emit one event (outbox:
 * enqueue in the caller's transaction; naive: queue it for a direct POST
 * after commit), crash points, seeded random choices, a tiny HTTP server.
 *
 * Each service is a cafe_service_def (order.c, inventory.c, payment.c,
 * notification.c); service.c starts one of them with the common options.
 */
#ifndef CAFE_H
#define CAFE_H

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "outbox.h"

/* ------------------------------------------------------------------------
 * Database schemas (exact; the demo, the chaos run and the tests read them)
 * ---------------------------------------------------------------------- */

#define CAFE_SCHEMA_ORDER                                                                          \
    "CREATE TABLE IF NOT EXISTS orders(id TEXT PRIMARY KEY, request_key TEXT,"                     \
    " customer TEXT NOT NULL, items TEXT NOT NULL, total_cents INTEGER NOT NULL,"                  \
    " state TEXT NOT NULL, reason TEXT, created_at INTEGER NOT NULL,"                              \
    " updated_at INTEGER NOT NULL);"                                                               \
    "CREATE TABLE IF NOT EXISTS idempotency(key TEXT PRIMARY KEY, order_id TEXT NOT NULL);"

#define CAFE_SCHEMA_INVENTORY                                                                      \
    "CREATE TABLE IF NOT EXISTS stock(item TEXT PRIMARY KEY, initial INTEGER NOT NULL,"            \
    " on_hand INTEGER NOT NULL CHECK(on_hand >= 0));"                                              \
    "CREATE TABLE IF NOT EXISTS reservations(id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,"      \
    " item TEXT NOT NULL, qty INTEGER NOT NULL, status TEXT NOT NULL);"                            \
    "CREATE TABLE IF NOT EXISTS handled(id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,"           \
    " event TEXT NOT NULL, outcome TEXT NOT NULL, at INTEGER NOT NULL);"

#define CAFE_SCHEMA_PAYMENT                                                                        \
    "CREATE TABLE IF NOT EXISTS payments(id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,"          \
    " amount_cents INTEGER NOT NULL, outcome TEXT NOT NULL, at INTEGER NOT NULL);"

#define CAFE_SCHEMA_NOTIFICATION                                                                   \
    "CREATE TABLE IF NOT EXISTS notifications(id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,"     \
    " kind TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL);"

/* Default initial stock of the inventory service. */
#define CAFE_DEFAULT_STOCK "latte=40,espresso=40,croissant=25,muffin=15"

/* Largest POST /orders body, and the quantity range of one line. */
#define CAFE_MAX_ORDER_BODY 16384
#define CAFE_MAX_QTY 20

/* The four services, in this order everywhere (peer URLs, routes). */
enum { CAFE_ORDER = 0, CAFE_INVENTORY, CAFE_PAYMENT, CAFE_NOTIFICATION, CAFE_SERVICES };

/* Crash points of the order service (bit flags for --crash-points). */
enum {
    CAFE_CRASH_AFTER_COMMIT = 1 << 0, /* committed; before sending (naive) or answering */
    CAFE_CRASH_AFTER_SEND = 1 << 1,   /* naive send-then-save: sent, before the DB write */
    CAFE_CRASH_MID_REQUEST = 1 << 2   /* outbox: inside the transaction, before COMMIT */
};

/* Service names ("order", ...), indexed by CAFE_ORDER...; NULL past the end. */
extern const char *const cafe_service_names[CAFE_SERVICES + 1];

/* Menu prices in cents; -1 for an unknown item. */
int cafe_price_cents(const char *item);

/* Parses "item=qty,..." (menu items, qty 0..1000000), calling fn for
 * each pair when fn is not NULL.  OUTBOX_ECONFIG naming the bad pair, or
 * fn's error, with err filled. */
int cafe_stock_parse(const char *text, int (*fn)(void *user, const char *item, long qty),
                     void *user, outbox_error *err);

/* Which service consumes an event type (CAFE_ORDER...), -1 when unknown. */
int cafe_event_target(const char *type);

/* ------------------------------------------------------------------------
 * Configuration and runtime
 * ---------------------------------------------------------------------- */

typedef struct cafe_config {
    int service;                         /* CAFE_ORDER ... */
    const char *dir;                     /* required */
    unsigned port;                       /* event endpoint; 0: none */
    unsigned api_port;                   /* order's public API; 0: none */
    const char *peer_url[CAFE_SERVICES]; /* where events for each service go */
    const char *bus;                     /* "webhook" or "nats://..." */
    int naive;                           /* --mode naive */
    int relay_process;                   /* --relay process */
    const char *secret_file;             /* NULL: unsigned */
    char secret[256];                    /* its content, "" without */
    uint64_t seed;
    double fail_rate;      /* payment */
    const char *stock;     /* inventory */
    double crash_rate;     /* order */
    unsigned crash_points; /* CAFE_CRASH_* flags */
    int send_then_save;    /* order, naive variant */
} cafe_config;

typedef struct cafe_service cafe_service;
typedef struct cafe_httpd cafe_httpd;
typedef struct cafe_naive_sender cafe_naive_sender;

/* One service: its name, schema, what it consumes and emits, and hooks. */
typedef struct cafe_service_def {
    const char *name;
    const char *schema_sql;
    const char *const *consumes; /* event types, NULL-terminated */
    const char *const *emits;    /* event types, NULL-terminated */
    /* Applies one event inside the caller's transaction on db (the same
     * contract as outbox_webhook_handler_fn; user is the cafe_service). */
    outbox_webhook_handler_fn handle;
    /* Optional: runs after the database is ready, before serving. */
    int (*start)(cafe_service *svc, outbox_error *err);
    /* Optional: runs at shutdown, before the database closes. */
    void (*stop)(cafe_service *svc);
    /* Adds the service's own counts to the GET /stats object (read-only db). */
    void (*stats)(cafe_service *svc, sqlite3 *db, json_t *out);
} cafe_service_def;

/* Runtime of one service process.  db is the service's own connection,
 * used under db_lock by the order API and the naive receiver (the webhook
 * receiver, NATS consumer and relay open connections of their own). */
struct cafe_service {
    const cafe_service_def *def;
    cafe_config cfg;
    char db_path[4096];
    char exe_dir[4096]; /* folder of this binary (finds `outbox`) */
    sqlite3 *db;
    pthread_mutex_t db_lock;
    uint64_t rng_state;         /* seeded per start; under rng_lock */
    unsigned long start_number; /* 1 for the first start in DIR, then 2, ... */
    _Atomic int ready;          /* ready file written: crash points armed */
    pthread_mutex_t rng_lock;
    /* Naive mode: events emitted by the handler in progress (under db_lock),
     * sent after its commit; the background sender for consumers. */
    outbox_msg *pending[8];
    size_t npending;
    cafe_naive_sender *sender;
    void *state; /* service-specific (order API) */
};

/* The service definitions. */
extern const cafe_service_def cafe_order_def;
extern const cafe_service_def cafe_inventory_def;
extern const cafe_service_def cafe_payment_def;
extern const cafe_service_def cafe_notification_def;

/* Runs `campuscafe <service> ...`: parses the common options, starts, waits
 * for SIGTERM/SIGINT, stops.  Returns the process exit code (0 clean stop,
 * 1 runtime failure, 2 usage error); messages go to stderr. */
int cafe_service_main(const cafe_service_def *def, int argc, char **argv);

/* Harness entry points (demo.c, chaos.c); exit codes as above. */
int cafe_demo_main(int argc, char **argv);
int cafe_chaos_main(int argc, char **argv);

/* ------------------------------------------------------------------------
 * Helpers shared by the services (service_helpers.c; cafe_stats_answer in
 * service_front.c)
 * ---------------------------------------------------------------------- */

/* Emits one event of the flow, aggregate "Order"/order_id, with headers
 * correlation_id = order_id and causation_id (when not NULL).  payload is
 * borrowed.  Outbox mode: enqueued in the caller's open transaction on db.
 * Naive mode: kept in svc->pending and sent by the caller after COMMIT.
 * Returns OUTBOX_OK or an error code with err filled. */
int cafe_emit(cafe_service *svc, sqlite3 *db, const char *type, const char *order_id,
              json_t *payload, const char *causation_id, outbox_error *err);

/* Fills err (when not NULL) with code and the formatted message; returns code. */
int cafe_error(outbox_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Parses msg's payload as a JSON object (new reference) with a string
 * "order_id"; NULL with err filled (OUTBOX_EBADPAYLOAD) otherwise. */
json_t *cafe_payload(const outbox_msg *msg, outbox_error *err);

/* A string member of obj, or "" when absent or not a string. */
const char *cafe_json_str(const json_t *obj, const char *key);

/* Frees the naive pending events (after a rollback, or once handed over). */
void cafe_pending_clear(cafe_service *svc);

/* Unix time in microseconds. */
int64_t cafe_now_us(void);

/* A seeded random number in [0, 1) from the service's generator. */
double cafe_random(cafe_service *svc);

/* Deterministic number in [0, 1) from a text and a seed (FNV-1a + mixing). */
double cafe_hash_unit(const char *text, uint64_t seed);

/* At a crash point: with probability cfg.crash_rate, when the point is in
 * cfg.crash_points, the process SIGKILLs itself (nothing is cleaned up).
 * Armed only once the ready file is written, so a restart always comes up.
 * The decision is a hash of (seed, start number, point, key) when key (the
 * client's Idempotency-Key) is given, so a seed reproduces it whatever the
 * thread timing; without a key it comes from the seeded generator. */
void cafe_crash_point(cafe_service *svc, unsigned point, const char *what, const char *key);

/* Logs one line to stderr: "campuscafe <service>[pid]: ...". */
void cafe_log(const cafe_service *svc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Runs one SQL statement with text/int64 parameters given as a format:
 * "t" text, "i" int64 (variadic), returns the SQLite result code of the
 * step (SQLITE_DONE / SQLITE_ROW) or of preparing.  When row_out is not
 * NULL and a row comes back, its first column as int64 is stored. */
int cafe_sql(sqlite3 *db, int64_t *row_out, const char *sql, const char *types, ...);

/* Answers GET /stats: {"service", "mode", "outbox_pending", ...the
 * service's own counts} from a read-only connection of its own. */
struct cafe_response;
void cafe_stats_answer(cafe_service *svc, struct cafe_response *res);

/* Reads the count of pending outbox messages (read connection). */
int64_t cafe_outbox_pending(sqlite3 *db);

/* ------------------------------------------------------------------------
 * HTTP server (httpd.c, libmicrohttpd)
 * ---------------------------------------------------------------------- */

typedef struct cafe_request {
    const char *method;
    const char *url;
    const char *body; /* NUL-terminated; "" when none */
    size_t body_len;
    int too_big; /* body was over the limit (body then empty) */
    void *conn;  /* struct MHD_Connection * */
} cafe_request;

typedef struct cafe_response {
    unsigned status;
    char *body; /* malloc'd JSON text; NULL: empty */
} cafe_response;

typedef void (*cafe_route_fn)(void *user, const cafe_request *req, cafe_response *res);

/* Starts a server on 127.0.0.1:port calling route for every complete
 * request (body collected up to max_body bytes).  threaded: one thread per
 * connection (handlers may block); else one thread serves all.  *out is
 * freed with cafe_httpd_free; on error NULL and err filled. */
int cafe_httpd_start(cafe_httpd **out, unsigned port, int threaded, size_t max_body,
                     cafe_route_fn route, void *user, outbox_error *err);

/* Stops serving (waits for requests in progress) and frees; NULL harmless. */
void cafe_httpd_free(cafe_httpd *h);

/* A request header's value, or NULL. */
const char *cafe_request_header(const cafe_request *req, const char *name);

/* Calls fn for every request header (name, value). */
void cafe_request_headers(const cafe_request *req,
                          void (*fn)(void *user, const char *name, const char *value), void *user);

/* Answers status with obj as JSON (obj is stolen; NULL: empty body). */
void cafe_respond_json(cafe_response *res, unsigned status, json_t *obj);

/* Answers status with {"error": "<formatted>"}. */
void cafe_respond_error(cafe_response *res, unsigned status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ------------------------------------------------------------------------
 * Naive mode (naive.c): direct POSTs, no outbox, no inbox
 * ---------------------------------------------------------------------- */

/* POSTs msg to the URL of its type's consumer with the same headers as the
 * library's webhook destination: up to 3 attempts, 1 s timeout each.
 * OUTBOX_OK on a 2xx, OUTBOX_EPUBLISH when every attempt failed. */
int cafe_naive_post(cafe_service *svc, const outbox_msg *msg, outbox_error *err);

/* Background sender of a naive consumer: an in-memory queue (lost when the
 * process dies, which is the point).  Free stops it, dropping what is left. */
int cafe_naive_sender_start(cafe_naive_sender **out, cafe_service *svc, outbox_error *err);
void cafe_naive_sender_free(cafe_naive_sender *s);

/* Hands every svc->pending event to the sender (they are then owned by it). */
void cafe_naive_sender_push_pending(cafe_naive_sender *s, cafe_service *svc);

/* Naive receiver: applies one POST /events with def->handle in its own
 * transaction on svc->db (no inbox), then queues its follow-up events.
 * Fills the response (204, 400, 401, 500). */
void cafe_naive_receive(cafe_service *svc, const cafe_request *req, cafe_response *res);

/* A libcurl response body kept in memory (CURLOPT_WRITEFUNCTION
 * cafe_body_write, CURLOPT_WRITEDATA the cafe_body): data is malloc'd and
 * NUL-terminated (NULL while empty; the caller frees it).  Past `limit`
 * bytes the transfer fails, or with keep_start the rest is dropped. */
typedef struct cafe_body {
    char *data;
    size_t len;
    size_t limit;
    int keep_start;
} cafe_body;

size_t cafe_body_write(char *ptr, size_t size, size_t nmemb, void *user);

#endif /* CAFE_H */
