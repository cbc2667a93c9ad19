/*
 * net.c - loopback ports for the servers the tests start (see net.h).
 */
#include "support/net.h"

#include "support/chaos.h"

#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    return a;
}

/* The low end of the kernel's ephemeral range, whose ports connect() hands
 * out as local ports: a port picked there can be taken by any process's
 * outgoing connection before the server binds it. */
static int ephemeral_low(void)
{
    int lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768;
        fclose(f);
    }
    return lo;
}

static int bind_free(int port)
{
    struct sockaddr_in a = loopback(port);
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), got = -1;
    if (fd < 0) TEST_FAIL_("cannot open a socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        got = ntohs(a.sin_port);
    close(fd);
    return got;
}

int ch_free_port(void)
{
    enum { FIRST = 15000, TRIES = 200 };
    static int given[256], ngiven;
    static uint64_t state;
    int lo = ephemeral_low(), port = -1;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec;
    }
    for (int t = 0; t < TRIES && port < 0; t++) {
        int cand = lo - FIRST >= 1000 ? (int)ch_rand_range(&state, FIRST, lo - 1) : 0, dup = 0;
        port = bind_free(cand);
        for (int i = 0; i < ngiven && port > 0; i++)
            dup |= given[i] == port;
        if (dup) port = -1;
    }
    if (port < 0) TEST_FAIL_("cannot find a free port of 127.0.0.1 in %d tries", (int)TRIES);
    if (ngiven < (int)(sizeof given / sizeof given[0])) given[ngiven++] = port;
    return port;
}

int ch_port_open(int port)
{
    struct sockaddr_in a = loopback(port);
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    if (fd < 0) return 0;
    ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}
