/*
 * rabbitmq.h - a real RabbitMQ broker for the tests (tests/support;
 * test_contract_dest, test_crash_amqp, bench_amqp):
 *
 * - rabbitmq-server (the Debian package's) started as a child of proc.h on
 *   127.0.0.1 and free ports, with a node name, Mnesia and log directories,
 *   config file, Erlang cookie (HOME) and an empty plugin list of its own in
 *   a fresh temporary directory, and its own epmd on a free port (started
 *   here in the foreground, so two tests never share one and it is stopped
 *   by PID).  The broker runs as the Erlang VM itself (RABBITMQ_ALLOW_INPUT
 *   makes the script exec it, -noinput keeps it off stdin), so the PID is
 *   the broker's: SIGKILL is a crash, SIGTERM a clean stop.  Start-up takes
 *   10-20 s (minutes on a loaded machine): rmh_start waits up to 180 s for an
 *   AMQP login.  Absent package:
 *   exit 77 (rmh_available() says why beforehand).
 * - Restart after a kill on the same ports and data (quorum queues recover
 *   from their log).
 * - A TLS listener besides the plain one (rmh_start_tls: the amqps://
 *   destination's tests), on 127.0.0.1 and a free port, with a certificate
 *   and key of the test's and no client certificate asked for; a restart
 *   with another certificate (rmh_restart_tls).  The helpers' own
 *   connections below use the plain listener.
 * - Declaring a durable topic exchange and a quorum queue bound to it, and
 *   reading a queue back through librabbitmq as the JSON lines ch_check_file
 *   reads ({"id": message_id, "subject": ce-subject, "data": body}),
 *   consuming (and acking) what it reads: the lines are appended to a file
 *   that keeps every message read so far, in delivery order.
 */
#ifndef OUTBOX_TEST_SUPPORT_RABBITMQ_H
#define OUTBOX_TEST_SUPPORT_RABBITMQ_H

#include "support/tmp.h"

#include <amqp.h>

#include <stdint.h>
#include <sys/types.h>

#define RMH_SERVER_SCRIPT "/usr/lib/rabbitmq/bin/rabbitmq-server"

typedef struct rmh_server {
    pid_t pid;      /* the broker (beam), 0 when stopped */
    pid_t epmd_pid; /* its epmd */
    int port, dist_port, epmd_port;
    char dir[256]; /* temp dir: mnesia/, log/, config, HOME */
    char log[300];
    char node[64];
    char url[128];          /* amqp://guest:guest@127.0.0.1:PORT (the default vhost) */
    int tls_port;           /* the TLS listener's, 0 without one */
    char tls_cert[CH_PATH]; /* with tls_key and tls_ca: a TLS listener ("" for none) */
    char tls_key[CH_PATH];
    char tls_ca[CH_PATH]; /* the CA the listener sends with its certificate */
} rmh_server;

/* NULL when a broker can be started here, else why not (for a skip). */
const char *rmh_available(void);

/* Starts a broker in a fresh directory (skips the test, 77, when RabbitMQ
 * is not installed), or restarts one that was killed or stopped on its
 * ports and data.  Waits until it accepts a login. */
void rmh_start(rmh_server *s);

/* Starts a new broker (as rmh_start) with a TLS listener too, on
 * s->tls_port, showing the PEM certificate cert (signed by ca) and its key;
 * it asks no certificate of the client.  Waits until that port accepts
 * too. */
void rmh_start_tls(rmh_server *s, const char *cert, const char *key, const char *ca);

/* Stops the broker (SIGTERM) and starts it again on its ports and data,
 * its TLS listener showing cert and key (signed by s->tls_ca) instead. */
void rmh_restart_tls(rmh_server *s, const char *cert, const char *key);

/* SIGKILLs the broker (as a crash would); epmd stays. */
void rmh_kill(rmh_server *s);

/* Stops the broker (SIGTERM, SIGKILL after 30 s) and its epmd, and removes
 * the directory. */
void rmh_stop(rmh_server *s);

/* In a forked child: this process's exit no longer stops the broker. */
void rmh_forget(void);

/* A connection with channel 1 open, failing the test otherwise. */
amqp_connection_state_t rmh_connect(const rmh_server *s);

/* Declares a durable topic exchange, a durable quorum queue, and binds the
 * queue to it with binding_key. */
void rmh_declare(const rmh_server *s, const char *exchange, const char *queue,
                 const char *binding_key);

/* Ready messages in queue. */
int64_t rmh_queue_count(const rmh_server *s, const char *queue);

/* Deletes queue (with its messages). */
void rmh_queue_delete(const rmh_server *s, const char *queue);

/* Consumes every ready message of queue, appending one line per message to
 * path (see above); returns how many it read. */
int64_t rmh_queue_drain(const rmh_server *s, const char *queue, const char *path);

#endif /* OUTBOX_TEST_SUPPORT_RABBITMQ_H */
