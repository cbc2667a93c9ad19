/*
 * notification.c - the notification service: tells the customer (here: a
 * notifications row) that an order was received (OrderPlaced) and how it
 * ended (NotifyUserRequested -> UserNotified, which lets the order reach
 * its end state).
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <stdio.h>
#include <string.h>

static const char *const consumes[] = {"OrderPlaced", "NotifyUserRequested", NULL};
static const char *const emits[] = {"UserNotified", NULL};

static int notification_handle(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    cafe_service *svc = user;
    const char *type = outbox_msg_type(msg), *order_id, *kind, *text;
    json_t *in = cafe_payload(msg, err), *out = NULL;
    char received[512];
    int rc = OUTBOX_OK;

    if (in == NULL) return err->code;
    order_id = cafe_json_str(in, "order_id");
    if (strcmp(type, "OrderPlaced") == 0) {
        kind = "received";
        snprintf(received, sizeof received, "Hi %s, we got order %s (%lld cents).",
                 cafe_json_str(in, "customer"), order_id,
                 (long long)json_integer_value(json_object_get(in, "total_cents")));
        text = received;
    } else if (strcmp(type, "NotifyUserRequested") == 0) {
        kind = cafe_json_str(in, "kind");
        text = cafe_json_str(in, "text");
    } else {
        cafe_log(svc, "ignored %s %s: not a notification event", type, outbox_msg_id(msg));
        goto out;
    }
    if (cafe_sql(db, NULL,
                 "INSERT INTO notifications(order_id, kind, text, at) VALUES (?1, ?2, ?3, ?4)",
                 "ttti", order_id, kind, text, cafe_now_us()) != SQLITE_DONE) {
        rc = cafe_error(err, OUTBOX_ESTORE, "recording a notification for order %s: %s", order_id,
                        sqlite3_errmsg(db));
        goto out;
    }
    if (strcmp(type, "NotifyUserRequested") == 0) {
        out = json_pack("{s:s, s:s}", "order_id", order_id, "kind", kind);
        rc = cafe_emit(svc, db, "UserNotified", order_id, out, outbox_msg_id(msg), err);
    }
out:
    json_decref(out);
    json_decref(in);
    return rc;
}

static void notification_stats(cafe_service *svc, sqlite3 *db, json_t *out)
{
    sqlite3_stmt *st = NULL;
    json_t *by_kind = json_object();
    (void)svc;
    if (sqlite3_prepare_v2(db, "SELECT kind, count(*) FROM notifications GROUP BY kind", -1, &st,
                           NULL) == SQLITE_OK)
        while (sqlite3_step(st) == SQLITE_ROW)
            json_object_set_new(by_kind, (const char *)sqlite3_column_text(st, 0),
                                json_integer(sqlite3_column_int64(st, 1)));
    sqlite3_finalize(st);
    json_object_set_new(out, "by_kind", by_kind);
}

const cafe_service_def cafe_notification_def = {
    "notification", CAFE_SCHEMA_NOTIFICATION, consumes, emits, notification_handle, NULL,
    NULL,           notification_stats,
};

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
