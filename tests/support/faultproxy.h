/*
 * faultproxy.h - a TCP fault proxy for the network fault tests
 * (tests/support; test_netfault).
 *
 * A thread of the test process listens on a free port of 127.0.0.1 and
 * forwards every connection to a target port; the test switches its mode
 * at any moment, mid-drain:
 *
 *   pass       forward both ways.
 *   stall      forward nothing either way and keep every connection (new
 *              ones are accepted and held); forwarding resumes at pass, as
 *              with a peer process that hangs and comes back.  TCP itself
 *              stays healthy: only application timeouts notice.
 *   reset      every connection, open or new, is reset (SO_LINGER 0 +
 *              close: an RST).
 *   halfopen   the open connections go silent at the TCP level, as when a
 *              cable is pulled or the peer host dies: a socket filter drops
 *              every segment that reaches them (no data, no ACK, no answer
 *              to keepalive probes) and they are never closed, not even
 *              after pass.  New connections get no SYN-ACK while it lasts.
 *              TCP keepalives and TCP_USER_TIMEOUT notice this.
 *   drip       forward at most drip_bytes per drip_ms each way per
 *              connection (a congested link).
 *   blackhole  open and new connections are read and discarded and never
 *              answered (a peer that swallows everything); they stay so
 *              after pass, new ones then forward again.
 *
 * poll()-based: it wakes only for I/O, a mode change, a drip tick or stop.
 */
#ifndef OUTBOX_TEST_SUPPORT_FAULTPROXY_H
#define OUTBOX_TEST_SUPPORT_FAULTPROXY_H

#include <stdint.h>

typedef enum fp_mode {
    FP_PASS = 0,
    FP_STALL,
    FP_RESET,
    FP_HALFOPEN,
    FP_DRIP,
    FP_BLACKHOLE,
    FP_MODE_COUNT
} fp_mode;

typedef struct fp_counters {
    int64_t accepted;   /* connections accepted, ever */
    int64_t open;       /* connections open now (halfopen ones included) */
    int64_t resets;     /* connections reset by the proxy */
    int64_t bytes_up;   /* client -> target, forwarded */
    int64_t bytes_down; /* target -> client, forwarded */
    int64_t discarded;  /* bytes read and thrown away (blackhole) */
} fp_counters;

typedef struct fp_proxy fp_proxy;

/* Starts a proxy on a free port of 127.0.0.1 forwarding to
 * 127.0.0.1:target_port, in pass mode; fails the test when it cannot. */
fp_proxy *fp_start(int target_port);

/* The port the proxy listens on. */
int fp_port(const fp_proxy *p);

/* Switches the mode (takes effect within milliseconds). */
void fp_set_mode(fp_proxy *p, fp_mode mode);

/* Rate of drip mode: bytes each way per connection every interval_ms
 * (default 64 bytes per 100 ms). */
void fp_set_drip(fp_proxy *p, int bytes, int interval_ms);

void fp_counters_get(fp_proxy *p, fp_counters *out);

const char *fp_mode_name(fp_mode mode);

/* Stops the thread, closes every connection and frees p (NULL: nothing). */
void fp_stop(fp_proxy *p);

#endif /* OUTBOX_TEST_SUPPORT_FAULTPROXY_H */
