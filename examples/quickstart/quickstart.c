/*
 * quickstart.c - the smallest complete use of liboutbox, shown in the README.
 *
 * A coffee-shop order service saves an order and, in the SAME SQLite
 * transaction, enqueues an OrderPlaced event.  Both commit together or not
 * at all.  The last order fails a business check after its event was
 * enqueued and is rolled back: its event must never be published.
 *
 * Usage: quickstart DATABASE
 * Then:  outbox relay --store sqlite:DATABASE --to stdout: --once
 */
#include <outbox.h>
#include <sqlite3.h>
#include <stdio.h>

static int place_order(sqlite3 *db, const char *order_id, const char *item, int qty,
                       int fail_after_enqueue)
{
    outbox_error err = {0};
    outbox_msg *msg = NULL;
    sqlite3_stmt *ins = NULL;
    char payload[256];
    int rc = -1;

    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) goto out;

    /* 1. The business change. */
    if (sqlite3_prepare_v2(db, "INSERT INTO orders(id, item, qty) VALUES (?1, ?2, ?3)", -1, &ins,
                           NULL) != SQLITE_OK)
        goto rollback;
    sqlite3_bind_text(ins, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, item, -1, SQLITE_STATIC);
    sqlite3_bind_int(ins, 3, qty);
    if (sqlite3_step(ins) != SQLITE_DONE) goto rollback;

    /* 2. The event, in the same transaction. */
    snprintf(payload, sizeof payload, "{\"order_id\":\"%s\",\"item\":\"%s\",\"qty\":%d}", order_id,
             item, qty);
    if (outbox_msg_new(&msg, "OrderPlaced", "Order", order_id, payload, &err) != OUTBOX_OK ||
        outbox_msg_set_header(msg, "correlation_id", order_id, &err) != OUTBOX_OK ||
        outbox_enqueue_sqlite(db, msg, &err) != OUTBOX_OK) {
        fprintf(stderr, "quickstart: %s\n", err.message);
        goto rollback;
    }

    if (fail_after_enqueue) {
        printf("order %-8s %-10s x%d  -> business check failed: ROLLBACK (event %s discarded)\n",
               order_id, item, qty, outbox_msg_id(msg));
        goto rollback;
    }

    /* 3. One commit for both. */
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto rollback;
    printf("order %-8s %-10s x%d  -> COMMIT   (event %s enqueued)\n", order_id, item, qty,
           outbox_msg_id(msg));
    rc = 0;
    goto out;

rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
out:
    sqlite3_finalize(ins);
    outbox_msg_free(msg);
    return rc;
}

int main(int argc, char **argv)
{
    sqlite3 *db = NULL;
    outbox_error err = {0};
    int rc = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: quickstart DATABASE\n");
        return 2;
    }
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "quickstart: cannot open %s: %s\n", argv[1], sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_busy_timeout(db, 5000);
    if (outbox_schema_init_sqlite(db, &err) != OUTBOX_OK) {
        fprintf(stderr, "quickstart: %s\n", err.message);
        goto out;
    }
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS orders(id TEXT PRIMARY KEY, item TEXT NOT NULL,"
                     " qty INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "quickstart: %s\n", sqlite3_errmsg(db));
        goto out;
    }
    if (place_order(db, "o-1001", "latte", 2, 0) || place_order(db, "o-1002", "croissant", 1, 0) ||
        place_order(db, "o-1003", "espresso", 3, 0))
        goto out;
    place_order(db, "o-1004", "muffin", 99, 1); /* rolled back on purpose */
    rc = 0;
out:
    sqlite3_close(db);
    return rc;
}
