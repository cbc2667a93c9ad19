/*
 * payment.c - the payment service: charges an order (PaymentRequested ->
 * PaymentSucceeded or PaymentFailed) and records one payments row per
 * charge.  Whether a card is declined is a hash of (order id, --seed)
 * against --fail-rate, so a redelivered request decides the same way and a
 * seed reproduces a run.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include <string.h>

static const char *const consumes[] = {"PaymentRequested", NULL};
static const char *const emits[] = {"PaymentSucceeded", "PaymentFailed", NULL};

static int payment_handle(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    cafe_service *svc = user;
    json_t *in = cafe_payload(msg, err), *out = NULL;
    const char *order_id;
    json_int_t amount;
    int declined, rc;

    if (in == NULL) return err->code;
    if (strcmp(outbox_msg_type(msg), "PaymentRequested") != 0) {
        cafe_log(svc, "ignored %s %s: not a payment event", outbox_msg_type(msg),
                 outbox_msg_id(msg));
        json_decref(in);
        return OUTBOX_OK;
    }
    order_id = cafe_json_str(in, "order_id");
    amount = json_integer_value(json_object_get(in, "amount_cents"));
    declined = cafe_hash_unit(order_id, svc->cfg.seed) < svc->cfg.fail_rate;
    if (cafe_sql(
            db, NULL,
            "INSERT INTO payments(order_id, amount_cents, outcome, at) VALUES (?1, ?2, ?3, ?4)",
            "titi", order_id, (int64_t)amount, declined ? "failed" : "succeeded",
            cafe_now_us()) != SQLITE_DONE) {
        rc = cafe_error(err, OUTBOX_ESTORE, "recording the payment of order %s: %s", order_id,
                        sqlite3_errmsg(db));
        goto out;
    }
    if (declined)
        out = json_pack("{s:s, s:s}", "order_id", order_id, "reason", "card declined");
    else
        out = json_pack("{s:s, s:I}", "order_id", order_id, "amount_cents", amount);
    rc = cafe_emit(svc, db, declined ? "PaymentFailed" : "PaymentSucceeded", order_id, out,
                   outbox_msg_id(msg), err);
out:
    json_decref(out);
    json_decref(in);
    return rc;
}

static void payment_stats(cafe_service *svc, sqlite3 *db, json_t *out)
{
    int64_t ok = 0, failed = 0;
    (void)svc;
    cafe_sql(db, &ok, "SELECT count(*) FROM payments WHERE outcome = 'succeeded'", NULL);
    cafe_sql(db, &failed, "SELECT count(*) FROM payments WHERE outcome = 'failed'", NULL);
    json_object_set_new(out, "succeeded", json_integer(ok));
    json_object_set_new(out, "failed", json_integer(failed));
}

const cafe_service_def cafe_payment_def = {
    "payment", CAFE_SCHEMA_PAYMENT, consumes, emits, payment_handle, NULL, NULL, payment_stats,
};

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
