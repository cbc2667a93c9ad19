/*
 * bus_nats.h: CampusCafe's NATS JetStream bus (used with --bus nats://...).
 *
 * Events travel on the stream "CAMPUSCAFE" (subjects "campuscafe.>", file
 * storage, created when missing), one subject per event type:
 * "campuscafe.<EventType>".  The relay publishes to them (Nats-Msg-Id = the
 * outbox message id, so JetStream drops re-publications within its
 * duplicate window); each service consumes through a durable pull consumer
 * and records every message id in its inbox inside the same transaction as
 * its handler, acking only after COMMIT.
 *
 * Harnesses also get the consumers' backlog (to decide that a run has
 * settled) and a reset of the stream (a fresh bus for fresh databases).
 *
 * Without nats.c (no OUTBOX_HAVE_NATS) every call returns OUTBOX_ENOTBUILT
 * ("--bus nats:// needs a build with nats.c").
 */
#ifndef CAFE_BUS_NATS_H
#define CAFE_BUS_NATS_H

#include <stddef.h>
#include <stdint.h>

#include "outbox.h"

typedef struct cafe_nats_consumer cafe_nats_consumer;

/* Stream "CAMPUSCAFE" (subjects "campuscafe.>", file storage, created when missing),
 * subjects "campuscafe.<EventType>".  Writes into buf the relay destination URL for
 * nats_url (e.g. "nats://127.0.0.1:4222?stream=CAMPUSCAFE&subject=campuscafe.{type}").
 * Returns OUTBOX_OK, or with err filled: OUTBOX_EBADURL (not nats://host:port),
 * OUTBOX_EINVAL (buffer too small), OUTBOX_EPUBLISH (cannot connect),
 * OUTBOX_ECONFIG (credentials refused, stream cannot be created). */
int cafe_nats_destination(char *buf, size_t size, const char *nats_url, outbox_error *err);

/* Durable pull consumer "campuscafe-<service>" filtered to the given event types
 * (NULL-terminated), run on its own thread: for each message, on its own connection to
 * db_path: BEGIN IMMEDIATE; outbox_inbox_record_sqlite(db, service, id); the first time,
 * handler(user, db, msg, err) (same signature and contract as the webhook receiver's
 * handler); COMMIT; then ack.  Handler/database error: ROLLBACK, nak (redelivered later).
 * Duplicate: COMMIT, ack.  The msg given to the handler carries id, type, aggregate type
 * and id, payload and headers rebuilt from the NATS headers the relay writes.
 * On success *out owns the consumer (free with cafe_nats_consumer_free); on
 * error *out is NULL and err says why. */
int cafe_nats_consumer_start(cafe_nats_consumer **out, const char *nats_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err);

/* Messages of the stream not yet acknowledged by CampusCafe's consumers: the
 * sum, over the durable consumers "campuscafe-*", of their pending (not yet
 * delivered) and ack-pending (delivered, not acked) counts; 0 when the
 * stream does not exist yet.  For a harness deciding that a run has
 * settled: a message delivered to a service that was then killed comes
 * back only after AckWait (5 s), so empty outboxes alone do not mean the
 * flow is done.  Connects for the call; *out is -1 on error. */
int cafe_nats_backlog(const char *nats_url, int64_t *out, outbox_error *err);

/* Deletes the stream CAMPUSCAFE with its consumers (nothing to do when it
 * does not exist), so that a run with fresh databases starts on an empty
 * bus: events a previous run left unconsumed would otherwise reach the new
 * services (e.g. a stock reservation for an order they never saw).  For a
 * harness, before it starts the services; never while services run. */
int cafe_nats_reset(const char *nats_url, outbox_error *err);

/* Stops the consumer thread (waits for the message in hand to finish), closes
 * its connections and frees it.  NULL is harmless. */
void cafe_nats_consumer_free(cafe_nats_consumer *c);

#endif /* CAFE_BUS_NATS_H */
