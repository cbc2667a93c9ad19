/*
 * net.h - loopback ports for the servers the tests start (tests/support).
 */
#ifndef OUTBOX_TEST_SUPPORT_NET_H
#define OUTBOX_TEST_SUPPORT_NET_H

/* A port of 127.0.0.1 that was free a moment ago (bound to port 0, then
 * closed: a small race, fine in tests); fails the test when none. */
int ch_free_port(void);

/* 1 when something accepts connections on 127.0.0.1:port. */
int ch_port_open(int port);

#endif /* OUTBOX_TEST_SUPPORT_NET_H */
