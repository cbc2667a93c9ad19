/*
 * net.h - loopback ports for the servers the tests start (tests/support).
 */
#ifndef OUTBOX_TEST_SUPPORT_NET_H
#define OUTBOX_TEST_SUPPORT_NET_H

/* A port of 127.0.0.1 that was free a moment ago (bound, then closed: a small
 * race, fine in tests), below the kernel's ephemeral range, so that no
 * outgoing connection takes it before its server binds it, and never one
 * this process was given before; fails the test when none. */
int ch_free_port(void);

/* 1 when something accepts connections on 127.0.0.1:port. */
int ch_port_open(int port);

#endif /* OUTBOX_TEST_SUPPORT_NET_H */
