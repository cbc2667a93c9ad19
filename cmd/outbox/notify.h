/*
 * notify.h - `outbox relay` under systemd (Type=notify): the service
 * notification protocol of sd_notify(3), sent to $NOTIFY_SOCKET.
 *
 * READY=1 once the relay exists (store open, schema checked) and is about
 * to run; STATUS= lines with what it has done; WATCHDOG=1 while its loop
 * shows life, when systemd set WATCHDOG_USEC; STOPPING=1 when a stop is
 * asked.  Without $NOTIFY_SOCKET every call does nothing.
 */
#ifndef OUTBOX_CLI_NOTIFY_H
#define OUTBOX_CLI_NOTIFY_H

#include "outbox.h"

/* Sends READY=1 with a first STATUS= line, then starts the thread that
 * sends STATUS= every few seconds and WATCHDOG=1 every WATCHDOG_USEC/2.
 * relay is borrowed until cli_notify_end; to is the destination URL (shown
 * redacted).  A failure to send or to start the thread is logged, never
 * fatal: the relay runs on. */
void cli_notify_ready(outbox_relay *relay, const char *to);

/* Sends STOPPING=1 (once).  Safe from any thread (the signal thread). */
void cli_notify_stopping(void);

/* Stops the thread (STOPPING=1 first when not sent yet); call before the
 * relay is freed.  Harmless without cli_notify_ready. */
void cli_notify_end(void);

/* Sends one notification ("READY=1", "STATUS=...", several lines joined
 * by newlines) to $NOTIFY_SOCKET.  Returns 1 when sent, 0 when
 * NOTIFY_SOCKET is not set, -1 when sending failed (errno set). */
int cli_notify_send(const char *state);

#endif /* OUTBOX_CLI_NOTIFY_H */
