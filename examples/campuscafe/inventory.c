/*
 * inventory.c - the inventory service: reserves stock for an order
 * (ReserveStockRequested -> StockReserved or StockUnavailable) and gives it
 * back when the payment failed (ReleaseStockRequested).
 *
 * A reservation takes every line of the order or none (a SAVEPOINT around
 * the lines; UPDATE ... WHERE on_hand >= qty).  Every processed request adds
 * one `handled` row, so a duplicate that slipped through (naive mode, no
 * inbox) is visible in the database as a second row.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const consumes[] = {"ReserveStockRequested", "ReleaseStockRequested", NULL};
static const char *const emits[] = {"StockReserved", "StockUnavailable", NULL};

static int store_fail(sqlite3 *db, outbox_error *err, const char *what, const char *order_id)
{
    return cafe_error(err, OUTBOX_ESTORE, "%s for order %s: %s", what, order_id,
                      sqlite3_errmsg(db));
}

/* Reserves every line or none; *short_item names the first line that could
 * not be served (empty when all were). */
static int reserve_lines(sqlite3 *db, const char *order_id, const json_t *items, char *short_item,
                         size_t short_len, char *why, size_t why_len, outbox_error *err)
{
    const json_t *line;
    size_t i;

    short_item[0] = '\0';
    if (sqlite3_exec(db, "SAVEPOINT reserve", NULL, NULL, NULL) != SQLITE_OK)
        return store_fail(db, err, "savepoint", order_id);
    json_array_foreach(items, i, line)
    {
        const char *item = cafe_json_str(line, "item");
        int64_t qty = json_integer_value(json_object_get(line, "qty")), on_hand = -1;
        if (cafe_sql(db, NULL,
                     "UPDATE stock SET on_hand = on_hand - ?1 WHERE item = ?2 AND on_hand >= ?1",
                     "it", qty, item) != SQLITE_DONE)
            return store_fail(db, err, "updating stock", order_id);
        if (sqlite3_changes(db) == 0) {
            const json_t *other;
            size_t j;
            int64_t wanted = 0;
            json_array_foreach(items, j, other)
            {
                if (strcmp(cafe_json_str(other, "item"), item) == 0)
                    wanted += json_integer_value(json_object_get(other, "qty"));
            }
            snprintf(short_item, short_len, "%s", item);
            sqlite3_exec(db, "ROLLBACK TO reserve", NULL, NULL, NULL);
            if (cafe_sql(db, &on_hand, "SELECT on_hand FROM stock WHERE item = ?1", "t", item) ==
                SQLITE_ROW)
                snprintf(why, why_len, "only %lld left, %lld wanted", (long long)on_hand,
                         (long long)wanted);
            else
                snprintf(why, why_len, "not stocked");
            break;
        }
        if (cafe_sql(db, NULL,
                     "INSERT INTO reservations(order_id, item, qty, status)"
                     " VALUES (?1, ?2, ?3, 'reserved')",
                     "tti", order_id, item, qty) != SQLITE_DONE)
            return store_fail(db, err, "inserting a reservation", order_id);
    }
    if (sqlite3_exec(db, "RELEASE reserve", NULL, NULL, NULL) != SQLITE_OK)
        return store_fail(db, err, "releasing the savepoint", order_id);
    return OUTBOX_OK;
}

static int inventory_handle(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    cafe_service *svc = user;
    const char *type = outbox_msg_type(msg), *order_id, *outcome;
    json_t *in = cafe_payload(msg, err), *out = NULL;
    char short_item[64] = "", why[128] = "";
    int rc = OUTBOX_OK;

    if (in == NULL) return err->code;
    order_id = cafe_json_str(in, "order_id");
    if (strcmp(type, "ReserveStockRequested") == 0) {
        json_t *items = json_object_get(in, "items");
        if (!json_is_array(items)) {
            rc = cafe_error(err, OUTBOX_EBADPAYLOAD, "%s for order %s: items is not an array", type,
                            order_id);
            goto done;
        }
        rc =
            reserve_lines(db, order_id, items, short_item, sizeof short_item, why, sizeof why, err);
        if (rc != OUTBOX_OK) goto done;
        if (short_item[0]) {
            outcome = "out_of_stock";
            out = json_pack("{s:s, s:s, s:s}", "order_id", order_id, "item", short_item, "reason",
                            why);
            rc = cafe_emit(svc, db, "StockUnavailable", order_id, out, outbox_msg_id(msg), err);
        } else {
            outcome = "reserved";
            out = json_pack("{s:s}", "order_id", order_id);
            rc = cafe_emit(svc, db, "StockReserved", order_id, out, outbox_msg_id(msg), err);
        }
    } else if (strcmp(type, "ReleaseStockRequested") == 0) {
        if (cafe_sql(db, NULL,
                     "UPDATE stock SET on_hand = on_hand + (SELECT coalesce(sum(qty), 0) FROM"
                     " reservations r WHERE r.order_id = ?1 AND r.item = stock.item AND"
                     " r.status = 'reserved')",
                     "t", order_id) != SQLITE_DONE ||
            cafe_sql(db, NULL,
                     "UPDATE reservations SET status = 'released' WHERE order_id = ?1"
                     " AND status = 'reserved'",
                     "t", order_id) != SQLITE_DONE) {
            rc = store_fail(db, err, "releasing stock", order_id);
            goto done;
        }
        outcome = sqlite3_changes(db) > 0 ? "released" : "ignored";
    } else {
        cafe_log(svc, "ignored %s %s: not an inventory event", type, outbox_msg_id(msg));
        goto done;
    }
    if (rc == OUTBOX_OK &&
        cafe_sql(db, NULL,
                 "INSERT INTO handled(order_id, event, outcome, at) VALUES (?1, ?2, ?3, ?4)",
                 "ttti", order_id, type, outcome, cafe_now_us()) != SQLITE_DONE)
        rc = store_fail(db, err, "recording the handled event", order_id);
done:
    json_decref(out);
    json_decref(in);
    return rc;
}

static int seed_item(void *user, const char *item, long qty)
{
    cafe_service *svc = user;
    return cafe_sql(svc->db, NULL,
                    "INSERT OR IGNORE INTO stock(item, initial, on_hand) VALUES (?1, ?2, ?2)", "ti",
                    item, (int64_t)qty) == SQLITE_DONE
               ? OUTBOX_OK
               : OUTBOX_ESTORE;
}

/* Seeds the stock table from --stock (rows that exist are kept). */
static int inventory_start(cafe_service *svc, outbox_error *err)
{
    int rc = cafe_stock_parse(svc->cfg.stock, seed_item, svc, err);
    if (rc == OUTBOX_ESTORE) cafe_error(err, rc, "seeding stock: %s", sqlite3_errmsg(svc->db));
    return rc;
}

static void inventory_stats(cafe_service *svc, sqlite3 *db, json_t *out)
{
    sqlite3_stmt *st = NULL;
    json_t *stock = json_object();
    int64_t n = 0;
    (void)svc;
    if (sqlite3_prepare_v2(db, "SELECT item, on_hand FROM stock ORDER BY item", -1, &st, NULL) ==
        SQLITE_OK)
        while (sqlite3_step(st) == SQLITE_ROW)
            json_object_set_new(stock, (const char *)sqlite3_column_text(st, 0),
                                json_integer(sqlite3_column_int64(st, 1)));
    sqlite3_finalize(st);
    json_object_set_new(out, "on_hand", stock);
    cafe_sql(db, &n, "SELECT count(*) FROM handled", NULL);
    json_object_set_new(out, "handled", json_integer(n));
    n = 0;
    cafe_sql(db, &n, "SELECT count(DISTINCT order_id) FROM reservations WHERE status = 'reserved'",
             NULL);
    json_object_set_new(out, "orders_reserved", json_integer(n));
}

const cafe_service_def cafe_inventory_def = {
    "inventory",      CAFE_SCHEMA_INVENTORY, consumes, emits,
    inventory_handle, inventory_start,       NULL,     inventory_stats,
};

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
