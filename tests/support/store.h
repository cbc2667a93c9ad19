/*
 * store.h - store-level helpers for tests that drive a store driver
 * directly (tests/support; needs internal.h): open a store, claim (plain or
 * pipelined), complete as sent, capture the log.  Each fails the test on an
 * error.
 */
#ifndef OUTBOX_TEST_SUPPORT_STORE_H
#define OUTBOX_TEST_SUPPORT_STORE_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* A log callback that appends "<level> <message>\n" to the outbox_buf in
 * user (levels: D, I, W, E). */
void sh_capture_log(void *user, int level, const char *component, const char *message);

/* outbox__store_open. */
void sh_store_open(outbox_store *s, const char *url);

/* Claims up to batch messages (failed messages block their aggregate),
 * plainly or pipelined with nothing in flight. */
size_t sh_claim(outbox_store *s, int pipelined, size_t batch, outbox_msg ***msgs);

/* Records every message of a claim as sent (deleted). */
void sh_complete_sent(outbox_store *s, int pipelined, outbox_msg **msgs, size_t n);

/* Frees a claim's messages and array. */
void sh_free_msgs(outbox_msg **msgs, size_t n);

/* Enqueues an "OrderPlaced" message of aggregate Order/agg_id with payload
 * {"n":1} through the driver; its id goes to id_out (may be NULL). */
void sh_put(outbox_store *s, const char *agg_id, char id_out[37]);

/* A claim's messages, owned by the caller (sh_batch_free). */
typedef struct sh_batch {
    outbox_msg **msgs;
    size_t n;
} sh_batch;

/* A plain claim of up to size messages due at now (unix us). */
sh_batch sh_claim_at(outbox_store *s, int64_t now, size_t size, int failed_blocks);

/* sh_claim_at with room for 100. */
sh_batch sh_claim_due(outbox_store *s, int64_t now, int failed_blocks);

/* Frees the batch's messages and empties it. */
void sh_batch_free(sh_batch *b);

/* Records one outcome for m (last_error "boom" when it failed); returns
 * complete's code. */
int sh_complete_one(outbox_store *s, const outbox_msg *m, int outcome, int64_t available_at,
                    int on_sent, outbox_error *err);

#endif /* OUTBOX_TEST_SUPPORT_STORE_H */
