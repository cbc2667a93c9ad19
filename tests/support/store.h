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

#endif /* OUTBOX_TEST_SUPPORT_STORE_H */
