/*
 * bus_amqp.h: CampusCafe's RabbitMQ bus (used with --bus amqp://...).
 *
 * Events go to the durable topic exchange "campuscafe" with routing key
 * "campuscafe.<EventType>" (the library's amqp:// destination, publisher
 * confirms).  Each service has a durable quorum queue "campuscafe-<service>"
 * bound for the event types it consumes; all four queues and their
 * bindings are declared by whoever comes first (a relay's destination or a
 * consumer), so no event is unroutable because its consumer has not started
 * yet.  A service consumes its queue with manual acks and records every
 * message id in its inbox inside the same transaction as its handler,
 * acking only after COMMIT: RabbitMQ has no de-duplication, and a message
 * whose ack was lost (a crash after COMMIT) comes back and is dropped by
 * the inbox.
 *
 * Harnesses also get the queues' backlog (to decide that a run has
 * settled) and a reset (the queues deleted: a fresh bus for fresh
 * databases).
 *
 * Without librabbitmq (no OUTBOX_HAVE_RABBITMQ) every call returns
 * OUTBOX_ENOTBUILT ("--bus amqp:// needs a build with librabbitmq").
 */
#ifndef CAFE_BUS_AMQP_H
#define CAFE_BUS_AMQP_H

#include <stddef.h>
#include <stdint.h>

#include "outbox.h"

typedef struct cafe_amqp_consumer cafe_amqp_consumer;

/* Declares the exchange, queues and bindings (see above) and writes into
 * buf the relay destination URL for amqp_url ("amqp://[user:pass@]host:port
 * [/vhost]", no query), e.g. "amqp://127.0.0.1:5672?exchange=campuscafe&
 * routing_key=campuscafe.{type}".  OUTBOX_OK, or with err filled:
 * OUTBOX_EBADURL, OUTBOX_EINVAL (buffer too small), OUTBOX_EPUBLISH (cannot
 * connect), OUTBOX_ECONFIG (login refused, declarations refused). */
int cafe_amqp_destination(char *buf, size_t size, const char *amqp_url, outbox_error *err);

/* Consumes the queue "campuscafe-<service>" on its own thread: for each
 * message, on its own connection to db_path: BEGIN IMMEDIATE;
 * outbox_inbox_record_sqlite(db, service, id); the first time,
 * handler(user, db, msg, err); COMMIT; then ack.  Handler/database error:
 * ROLLBACK, the message is requeued after a short pause.  Duplicate:
 * COMMIT, ack.  A lost connection is re-established (every 250 ms).  The
 * msg given to the handler is rebuilt from the AMQP properties and ce-
 * headers the relay writes (as the webhook receiver does).  On success
 * *out owns the consumer (cafe_amqp_consumer_free); on error *out is NULL
 * and err says why. */
int cafe_amqp_consumer_start(cafe_amqp_consumer **out, const char *amqp_url, const char *service,
                             const char *const *types, const char *db_path,
                             outbox_webhook_handler_fn handler, void *user, outbox_error *err);

/* Ready messages in the four queues (0 when they do not exist yet); *out
 * is -1 on error. */
int cafe_amqp_backlog(const char *amqp_url, int64_t *out, outbox_error *err);

/* Deletes the four queues (nothing to do when absent), so a run with fresh
 * databases starts on an empty bus.  Never while services run. */
int cafe_amqp_reset(const char *amqp_url, outbox_error *err);

/* Stops the consumer thread (the message in hand is finished first), closes
 * its connection and database and frees it.  NULL is harmless. */
void cafe_amqp_consumer_free(cafe_amqp_consumer *c);

#endif /* CAFE_BUS_AMQP_H */
