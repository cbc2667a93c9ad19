/*
 * order.c - the order service: the public API (POST /orders, GET
 * /orders/{id}, GET /stats) and the order state machine that orchestrates
 * the flow.
 *
 *   placed --StockReserved--> stock_reserved --PaymentSucceeded--> paid
 *          --UserNotified(completed)--> completed
 *   placed --StockUnavailable--> out_of_stock --UserNotified(rejected)--> rejected
 *   stock_reserved --PaymentFailed--> payment_failed
 *          --UserNotified(cancelled)--> cancelled
 *
 * Each transition is one row of a table with the follow-up events it emits;
 * an event that fits no row is logged and ignored (committed, so it is not
 * redelivered forever).  An event for an order that does not exist (yet) is
 * an error: the sender retries it.
 *
 * Outbox mode: the order row, the idempotency row and the first events
 * commit in one transaction.  Naive mode: save-then-send (commit, then POST)
 * or send-then-save (POST, then commit), with crash points in between.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const consumes[] = {"StockReserved", "StockUnavailable", "PaymentSucceeded",
                                       "PaymentFailed", "UserNotified",     NULL};
/* The first is the relay's main destination (inventory). */
static const char *const emits[] = {"ReserveStockRequested", "OrderPlaced",
                                    "PaymentRequested",      "ReleaseStockRequested",
                                    "NotifyUserRequested",   NULL};

/* ------------------------------------------------------------------------
 * State machine
 * ---------------------------------------------------------------------- */

static const struct transition {
    const char *event;
    const char *from;
    const char *kind; /* UserNotified: the kind it confirms */
    const char *to;
} transitions[] = {
    {"StockReserved", "placed", NULL, "stock_reserved"},
    {"StockUnavailable", "placed", NULL, "out_of_stock"},
    {"PaymentSucceeded", "stock_reserved", NULL, "paid"},
    {"PaymentFailed", "stock_reserved", NULL, "payment_failed"},
    {"UserNotified", "paid", "completed", "completed"},
    {"UserNotified", "out_of_stock", "rejected", "rejected"},
    {"UserNotified", "payment_failed", "cancelled", "cancelled"},
};

typedef struct order_row {
    char customer[256];
    int64_t total_cents;
    char state[32];
} order_row;

/* SQLITE_ROW when found (row filled), SQLITE_DONE when not, else an error. */
static int load_order(sqlite3 *db, const char *id, order_row *row)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT customer, total_cents, state FROM orders WHERE id = ?1",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        snprintf(row->customer, sizeof row->customer, "%s",
                 (const char *)sqlite3_column_text(st, 0));
        row->total_cents = sqlite3_column_int64(st, 1);
        snprintf(row->state, sizeof row->state, "%s", (const char *)sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
    return rc;
}

static int notify(cafe_service *svc, sqlite3 *db, const char *order_id, const order_row *o,
                  const char *kind, const char *text, const char *cause, outbox_error *err)
{
    json_t *p = json_pack("{s:s, s:s, s:s, s:s}", "order_id", order_id, "customer", o->customer,
                          "kind", kind, "text", text);
    int rc = p ? cafe_emit(svc, db, "NotifyUserRequested", order_id, p, cause, err)
               : cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    json_decref(p);
    return rc;
}

/* The events a new state emits (inside the transaction), and the reason
 * stored with it (reason_out, "" for none). */
static int follow_up(cafe_service *svc, sqlite3 *db, const char *order_id, const order_row *o,
                     const char *state, const json_t *in, const char *cause, char *reason_out,
                     size_t reason_len, outbox_error *err)
{
    char text[512];
    json_t *p = NULL;
    int rc = OUTBOX_OK;

    reason_out[0] = '\0';
    if (strcmp(state, "stock_reserved") == 0) {
        p = json_pack("{s:s, s:s, s:I}", "order_id", order_id, "customer", o->customer,
                      "amount_cents", (json_int_t)o->total_cents);
        rc = p ? cafe_emit(svc, db, "PaymentRequested", order_id, p, cause, err) : OUTBOX_ENOMEM;
    } else if (strcmp(state, "out_of_stock") == 0) {
        snprintf(reason_out, reason_len, "out of stock: %s (%s)", cafe_json_str(in, "item"),
                 cafe_json_str(in, "reason"));
        snprintf(text, sizeof text, "Sorry %s, order %s cannot be made: %s", o->customer, order_id,
                 reason_out);
        rc = notify(svc, db, order_id, o, "rejected", text, cause, err);
    } else if (strcmp(state, "paid") == 0) {
        snprintf(text, sizeof text, "Enjoy, %s! Order %s is paid (%lld cents) and on its way.",
                 o->customer, order_id, (long long)o->total_cents);
        rc = notify(svc, db, order_id, o, "completed", text, cause, err);
    } else if (strcmp(state, "payment_failed") == 0) {
        snprintf(reason_out, reason_len, "payment failed: %s", cafe_json_str(in, "reason"));
        p = json_pack("{s:s}", "order_id", order_id);
        rc = p ? cafe_emit(svc, db, "ReleaseStockRequested", order_id, p, cause, err)
               : OUTBOX_ENOMEM;
        snprintf(text, sizeof text, "Sorry %s, order %s is cancelled: %s", o->customer, order_id,
                 reason_out);
        if (rc == OUTBOX_OK) rc = notify(svc, db, order_id, o, "cancelled", text, cause, err);
    }
    json_decref(p);
    if (rc == OUTBOX_ENOMEM && err->code != OUTBOX_ENOMEM)
        cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    return rc;
}

/* The handler for every event the order service consumes. */
static int order_handle(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    cafe_service *svc = user;
    const char *type = outbox_msg_type(msg);
    json_t *in = cafe_payload(msg, err);
    const struct transition *t = NULL;
    const char *order_id, *kind;
    char reason[300];
    order_row o;
    size_t i;
    int rc;

    if (in == NULL) return err->code;
    order_id = cafe_json_str(in, "order_id");
    kind = cafe_json_str(in, "kind");
    rc = load_order(db, order_id, &o);
    if (rc != SQLITE_ROW) {
        rc = rc == SQLITE_DONE ? cafe_error(err, OUTBOX_ENOTFOUND,
                                            "%s for order %s: no such order (yet)", type, order_id)
                               : cafe_error(err, OUTBOX_ESTORE, "reading order %s: %s", order_id,
                                            sqlite3_errmsg(db));
        goto out;
    }
    for (i = 0; i < sizeof transitions / sizeof transitions[0]; i++) {
        const struct transition *c = &transitions[i];
        if (strcmp(c->event, type) == 0 && strcmp(c->from, o.state) == 0 &&
            (c->kind == NULL || strcmp(c->kind, kind) == 0)) {
            t = c;
            break;
        }
    }
    if (t == NULL) {
        cafe_log(svc, "ignored %s %s: order %s is %s", type, outbox_msg_id(msg), order_id, o.state);
        rc = OUTBOX_OK;
        goto out;
    }
    rc =
        follow_up(svc, db, order_id, &o, t->to, in, outbox_msg_id(msg), reason, sizeof reason, err);
    if (rc != OUTBOX_OK) goto out;
    rc = cafe_sql(db, NULL,
                  "UPDATE orders SET state = ?1, reason = COALESCE(NULLIF(?2, ''), reason),"
                  " updated_at = ?3 WHERE id = ?4",
                  "ttit", t->to, reason, cafe_now_us(), order_id);
    rc = rc == SQLITE_DONE ? OUTBOX_OK
                           : cafe_error(err, OUTBOX_ESTORE, "updating order %s: %s", order_id,
                                        sqlite3_errmsg(db));
out:
    json_decref(in);
    return rc;
}

/* ------------------------------------------------------------------------
 * API
 * ---------------------------------------------------------------------- */

typedef struct new_order {
    const char *customer;
    json_t *items; /* normalised [{item, qty}] */
    int64_t total_cents;
} new_order;

/* Validates the body; 0, or -1 with res filled (400). */
static int parse_order(const cafe_request *req, json_t **root_out, new_order *o, cafe_response *res)
{
    json_error_t jerr;
    json_t *root, *items, *line;
    size_t i;

    *root_out = NULL;
    if (req->too_big) {
        cafe_respond_error(res, 400, "body is over %d bytes", CAFE_MAX_ORDER_BODY);
        return -1;
    }
    root = json_loadb(req->body, req->body_len, 0, &jerr);
    if (root == NULL) {
        cafe_respond_error(res, 400, "malformed JSON: %s (line %d, column %d)", jerr.text,
                           jerr.line, jerr.column);
        return -1;
    }
    *root_out = root;
    if (!json_is_object(root)) {
        cafe_respond_error(res, 400, "body must be a JSON object with customer and items");
        return -1;
    }
    o->customer = json_string_value(json_object_get(root, "customer"));
    if (o->customer == NULL || o->customer[0] == '\0' || strlen(o->customer) > 100) {
        cafe_respond_error(res, 400, "customer must be a non-empty string of at most 100 bytes");
        return -1;
    }
    items = json_object_get(root, "items");
    if (!json_is_array(items) || json_array_size(items) == 0 || json_array_size(items) > 20) {
        cafe_respond_error(res, 400,
                           "items must be a non-empty array (at most 20 lines) of "
                           "{\"item\": name, \"qty\": 1..20}");
        return -1;
    }
    o->items = json_array();
    o->total_cents = 0;
    json_array_foreach(items, i, line)
    {
        const char *item = json_string_value(json_object_get(line, "item"));
        json_t *qty = json_object_get(line, "qty");
        int price = cafe_price_cents(item);
        if (item == NULL) {
            cafe_respond_error(res, 400, "items[%zu].item must be a string", i);
            return -1;
        }
        if (price < 0) {
            cafe_respond_error(res, 400,
                               "items[%zu].item: unknown item '%.60s'; the menu is latte, "
                               "espresso, croissant, muffin",
                               i, item);
            return -1;
        }
        if (!json_is_integer(qty) || json_integer_value(qty) < 1 ||
            json_integer_value(qty) > CAFE_MAX_QTY) {
            cafe_respond_error(res, 400, "items[%zu].qty must be an integer from 1 to %d", i,
                               CAFE_MAX_QTY);
            return -1;
        }
        json_array_append_new(
            o->items, json_pack("{s:s, s:I}", "item", item, "qty", json_integer_value(qty)));
        o->total_cents += price * json_integer_value(qty);
    }
    return 0;
}

static json_t *created_body(const char *id, const char *state)
{
    return json_pack("{s:s, s:s}", "id", id, "state", state);
}

/* Inserts the order row (+ idempotency row in outbox mode) in the open
 * transaction on svc->db. */
static int insert_order(cafe_service *svc, const char *id, const char *key, const new_order *o,
                        outbox_error *err)
{
    char *items_text = json_dumps(o->items, JSON_COMPACT);
    int64_t now = cafe_now_us();
    int rc = OUTBOX_OK;

    if (!items_text) return cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    if (cafe_sql(svc->db, NULL,
                 "INSERT INTO orders(id, request_key, customer, items, total_cents, state,"
                 " created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'placed', ?6, ?6)",
                 "ttttii", id, key, o->customer, items_text, o->total_cents, now) != SQLITE_DONE)
        rc = cafe_error(err, OUTBOX_ESTORE, "inserting order %s: %s", id, sqlite3_errmsg(svc->db));
    else if (key && !svc->cfg.naive &&
             cafe_sql(svc->db, NULL, "INSERT INTO idempotency(key, order_id) VALUES (?1, ?2)", "tt",
                      key, id) != SQLITE_DONE)
        rc = cafe_error(err, OUTBOX_ESTORE, "inserting idempotency key: %s",
                        sqlite3_errmsg(svc->db));
    free(items_text);
    return rc;
}

/* Emits OrderPlaced and ReserveStockRequested (outbox: into the open
 * transaction; naive: into svc->pending). */
static int emit_first_events(cafe_service *svc, const char *id, const new_order *o,
                             outbox_error *err)
{
    json_t *placed = json_pack("{s:s, s:s, s:O, s:I}", "order_id", id, "customer", o->customer,
                               "items", o->items, "total_cents", (json_int_t)o->total_cents);
    json_t *reserve = json_pack("{s:s, s:O}", "order_id", id, "items", o->items);
    int rc;
    if (!placed || !reserve)
        rc = cafe_error(err, OUTBOX_ENOMEM, "out of memory");
    else {
        rc = cafe_emit(svc, svc->db, "OrderPlaced", id, placed, NULL, err);
        if (rc == OUTBOX_OK)
            rc = cafe_emit(svc, svc->db, "ReserveStockRequested", id, reserve, NULL, err);
    }
    json_decref(placed);
    json_decref(reserve);
    return rc;
}

/* Naive mode: sends the pending events taken out of svc (owned here). */
static void send_all(cafe_service *svc, outbox_msg **msgs, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        outbox_error err;
        memset(&err, 0, sizeof err);
        if (cafe_naive_post(svc, msgs[i], &err) != OUTBOX_OK)
            cafe_log(svc, "event lost: %s", err.message);
        outbox_msg_free(msgs[i]);
    }
}

static size_t take_pending(cafe_service *svc, outbox_msg **out)
{
    size_t n = svc->npending;
    memcpy(out, svc->pending, n * sizeof *out);
    svc->npending = 0;
    return n;
}

static void place_order(cafe_service *svc, const cafe_request *req, cafe_response *res)
{
    const char *key = cafe_request_header(req, "Idempotency-Key");
    outbox_msg *msgs[8];
    size_t nmsgs;
    outbox_error err;
    json_t *root = NULL;
    new_order o;
    char id[40], uuid[37];
    int rc, locked = 0, in_txn = 0;

    memset(&o, 0, sizeof o);
    memset(&err, 0, sizeof err);
    if (parse_order(req, &root, &o, res)) goto out;
    if (key && (key[0] == '\0' || strlen(key) > 200)) {
        cafe_respond_error(res, 400, "Idempotency-Key must be 1 to 200 characters");
        goto out;
    }
    outbox_uuid_v7(uuid);
    snprintf(id, sizeof id, "o-%s", uuid);

    pthread_mutex_lock(&svc->db_lock);
    locked = 1;
    if (svc->cfg.naive && svc->cfg.send_then_save) {
        /* Send first, then save: a crash in between leaves a ghost order. */
        rc = emit_first_events(svc, id, &o, &err);
        if (rc != OUTBOX_OK) goto fail;
        nmsgs = take_pending(svc, msgs);
        pthread_mutex_unlock(&svc->db_lock);
        locked = 0;
        send_all(svc, msgs, nmsgs);
        cafe_crash_point(svc, CAFE_CRASH_AFTER_SEND, "after_send", key);
        pthread_mutex_lock(&svc->db_lock);
        locked = 1;
        if (sqlite3_exec(svc->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) goto db_fail;
        in_txn = 1;
        if ((rc = insert_order(svc, id, key, &o, &err)) != OUTBOX_OK) goto fail;
        if (sqlite3_exec(svc->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto db_fail;
        in_txn = 0;
        cafe_respond_json(res, 201, created_body(id, "placed"));
        goto out;
    }

    if (sqlite3_exec(svc->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) goto db_fail;
    in_txn = 1;
    if (key && !svc->cfg.naive) {
        sqlite3_stmt *st = NULL;
        char existing[64] = "", state[32] = "";
        if (sqlite3_prepare_v2(svc->db,
                               "SELECT o.id, o.state FROM idempotency i JOIN orders o"
                               " ON o.id = i.order_id WHERE i.key = ?1",
                               -1, &st, NULL) != SQLITE_OK)
            goto db_fail;
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(existing, sizeof existing, "%s", (const char *)sqlite3_column_text(st, 0));
            snprintf(state, sizeof state, "%s", (const char *)sqlite3_column_text(st, 1));
        }
        sqlite3_finalize(st);
        if (existing[0]) {
            sqlite3_exec(svc->db, "COMMIT", NULL, NULL, NULL);
            in_txn = 0;
            cafe_respond_json(res, 200, created_body(existing, state));
            goto out;
        }
    }
    rc = insert_order(svc, id, key, &o, &err);
    if (rc == OUTBOX_OK) rc = emit_first_events(svc, id, &o, &err);
    if (rc != OUTBOX_OK) goto fail;
    if (!svc->cfg.naive) cafe_crash_point(svc, CAFE_CRASH_MID_REQUEST, "mid_request", key);
    if (sqlite3_exec(svc->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto db_fail;
    in_txn = 0;
    nmsgs = take_pending(svc, msgs);
    pthread_mutex_unlock(&svc->db_lock);
    locked = 0;
    cafe_crash_point(svc, CAFE_CRASH_AFTER_COMMIT, "after_commit", key);
    send_all(svc, msgs, nmsgs); /* naive save-then-send; nothing in outbox mode */
    cafe_respond_json(res, 201, created_body(id, "placed"));
    goto out;

db_fail:
    cafe_error(&err, OUTBOX_ESTORE, "order database: %s", sqlite3_errmsg(svc->db));
fail:
    cafe_log(svc, "POST /orders failed: %s", err.message);
    cafe_respond_error(res, 503,
                       "could not place the order: %s; retry with the same "
                       "Idempotency-Key",
                       err.message);
out:
    if (in_txn) sqlite3_exec(svc->db, "ROLLBACK", NULL, NULL, NULL);
    if (locked) {
        cafe_pending_clear(svc);
        pthread_mutex_unlock(&svc->db_lock);
    }
    json_decref(o.items);
    json_decref(root);
}

static void get_order(cafe_service *svc, const char *id, cafe_response *res)
{
    sqlite3_stmt *st = NULL;
    json_t *obj = NULL;

    pthread_mutex_lock(&svc->db_lock);
    if (sqlite3_prepare_v2(svc->db,
                           "SELECT id, customer, items, total_cents, state, reason FROM orders"
                           " WHERE id = ?1",
                           -1, &st, NULL) != SQLITE_OK) {
        cafe_respond_error(res, 503, "order database: %s", sqlite3_errmsg(svc->db));
        goto out;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        cafe_respond_error(res, 404, "no order %.80s", id);
        goto out;
    }
    obj = json_pack("{s:s, s:s, s:o, s:I, s:s}", "id", (const char *)sqlite3_column_text(st, 0),
                    "customer", (const char *)sqlite3_column_text(st, 1), "items",
                    json_loads((const char *)sqlite3_column_text(st, 2), 0, NULL), "total_cents",
                    (json_int_t)sqlite3_column_int64(st, 3), "state",
                    (const char *)sqlite3_column_text(st, 4));
    if (obj)
        json_object_set_new(obj, "reason",
                            sqlite3_column_type(st, 5) == SQLITE_NULL
                                ? json_null()
                                : json_string((const char *)sqlite3_column_text(st, 5)));
    cafe_respond_json(res, obj ? 200 : 500, obj);
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&svc->db_lock);
}

static void api_route(void *user, const cafe_request *req, cafe_response *res)
{
    cafe_service *svc = user;
    if (strcmp(req->method, "POST") == 0 && strcmp(req->url, "/orders") == 0)
        place_order(svc, req, res);
    else if (strcmp(req->method, "GET") == 0 && strncmp(req->url, "/orders/", 8) == 0)
        get_order(svc, req->url + 8, res);
    else if (strcmp(req->method, "GET") == 0 && strcmp(req->url, "/stats") == 0)
        cafe_stats_answer(svc, res);
    else
        cafe_respond_error(res, 404,
                           "no such endpoint: use POST /orders, GET /orders/ID, "
                           "GET /stats");
}

static int order_start(cafe_service *svc, outbox_error *err)
{
    cafe_httpd *api = NULL;
    if (!svc->cfg.api_port) return OUTBOX_OK;
    if (cafe_httpd_start(&api, svc->cfg.api_port, 1, CAFE_MAX_ORDER_BODY, api_route, svc, err) !=
        OUTBOX_OK)
        return err->code;
    svc->state = api;
    return OUTBOX_OK;
}

static void order_stop(cafe_service *svc)
{
    cafe_httpd_free(svc->state);
    svc->state = NULL;
}

static void order_stats(cafe_service *svc, sqlite3 *db, json_t *out)
{
    sqlite3_stmt *st = NULL;
    json_t *by_state = json_object();
    int64_t total = 0;
    (void)svc;
    if (sqlite3_prepare_v2(db, "SELECT state, count(*) FROM orders GROUP BY state", -1, &st,
                           NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_object_set_new(by_state, (const char *)sqlite3_column_text(st, 0),
                                json_integer(sqlite3_column_int64(st, 1)));
            total += sqlite3_column_int64(st, 1);
        }
    }
    sqlite3_finalize(st);
    json_object_set_new(out, "orders", json_integer(total));
    json_object_set_new(out, "by_state", by_state);
}

const cafe_service_def cafe_order_def = {
    "order", CAFE_SCHEMA_ORDER, consumes, emits, order_handle, order_start, order_stop, order_stats,
};

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
