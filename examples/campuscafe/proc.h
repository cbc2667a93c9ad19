/*
 * proc.h - the CampusCafe harness shared by `campuscafe demo` and
 * `campuscafe chaos`: child processes (spawn a service, wait for its ready
 * file, kill, reap, restart with the same argv), a cluster of the four
 * services, the chaos HTTP proxy, a small HTTP client and the counts read
 * from the services' databases after a run.
 *
 * Everything here runs in the harness process, never inside a service.
 * Functions return 0 on success and -1 on failure after printing what went
 * wrong to stderr (the harness is a command-line program, not the library).
 */
#ifndef CAFE_PROC_H
#define CAFE_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <limits.h>
#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

/* ------------------------------------------------------------------------
 * Child processes (proc.c)
 * ---------------------------------------------------------------------- */

typedef struct cafe_proc {
    pid_t pid;                 /* 0 when not running */
    char **argv;               /* owned copy, NULL-terminated */
    char ready_path[PATH_MAX]; /* the service writes it when it serves */
    char log_path[PATH_MAX];   /* stdout and stderr, appended */
    int last_status;           /* waitpid status of the last exit */
    unsigned starts;           /* how many times it was started */
} cafe_proc;

/* Starts argv[0] (a path) with argv, stdin from /dev/null and stdout/stderr
 * appended to log_path.  Copies argv, ready_path and log_path into p (p must
 * be zeroed before the first start); removes a stale ready file first. */
int cafe_proc_start(cafe_proc *p, char *const argv[], const char *ready_path, const char *log_path);

/* Waits until the ready file exists and is not empty.  -1 when the child
 * exited first or timeout_ms passed. */
int cafe_proc_wait_ready(cafe_proc *p, int timeout_ms);

/* Sends sig to the running child (no-op when not running). */
void cafe_proc_signal(cafe_proc *p, int sig);

/* Collects the child's exit: returns 1 when it has exited (p->pid becomes 0,
 * also when it was not running), 0 when it still runs.  block: wait. */
int cafe_proc_reap(cafe_proc *p, int block);

/* Kills the child with SIGKILL when it runs, reaps it, and starts it again
 * with the same argv; waits for its ready file up to timeout_ms. */
int cafe_proc_restart(cafe_proc *p, int timeout_ms);

/* SIGTERM, then waits up to timeout_ms; SIGKILL after that.  Returns 0 when
 * the child exited by itself with status 0. */
int cafe_proc_stop(cafe_proc *p, int timeout_ms);

/* Frees the argv copy (the child must have been reaped). */
void cafe_proc_free(cafe_proc *p);

/* Path of the running executable into buf.  -1 when unknown. */
int cafe_harness_self_exe(char *buf, size_t size);

/* mkdtemp under $TMPDIR (or /tmp) from a prefix like "campuscafe-demo". */
int cafe_harness_tempdir(char *buf, size_t size, const char *prefix);

/* Removes a directory tree (the run's temporary directory). */
void cafe_harness_rmtree(const char *dir);

/* Writes a fresh random "whsec_" secret into path (mode 0600). */
int cafe_harness_write_secret(const char *path);

/* Fills ports[0..n-1] with distinct free loopback TCP ports. */
int cafe_harness_free_ports(unsigned *ports, int n);

/* Monotonic milliseconds. */
int64_t cafe_harness_now_ms(void);
void cafe_harness_sleep_ms(int ms);

/* Small seeded random generator (splitmix64); not thread-safe per state. */
uint64_t cafe_harness_rand(uint64_t *state);
double cafe_harness_rand01(uint64_t *state);

/* ------------------------------------------------------------------------
 * The four services (proc.c)
 * ---------------------------------------------------------------------- */

enum { CAFE_H_ORDER = 0, CAFE_H_INVENTORY, CAFE_H_PAYMENT, CAFE_H_NOTIFICATION, CAFE_H_SERVICES };

extern const char *const cafe_harness_service_names[CAFE_H_SERVICES];

typedef struct cafe_cluster_options {
    const char *dir;           /* required: databases, ready files, logs */
    const char *bus;           /* NULL/"webhook" or "nats://..." */
    const char *relay;         /* NULL (inproc) or "process" */
    const char *mode;          /* NULL (outbox) or "naive" */
    const char *naive_variant; /* NULL or "save-then-send"/"send-then-save" */
    const char *secret_file;   /* NULL: unsigned */
    const char *stock;         /* inventory --stock, NULL: default */
    const char *fail_rate;     /* payment --fail-rate, NULL: default */
    const char *crash_rate;    /* order --crash-rate, NULL: none */
    const char *crash_points;  /* order --crash-points */
    unsigned long seed;
    /* Where each service sends its events to: peer_port[i] is the port the
     * others use for service i (a proxy's port, or 0 for its own event
     * port). */
    unsigned peer_port[CAFE_H_SERVICES];
} cafe_cluster_options;

typedef struct cafe_cluster {
    char dir[PATH_MAX - 64]; /* room for "/<service>.ready" */
    cafe_proc procs[CAFE_H_SERVICES];
    unsigned event_port[CAFE_H_SERVICES];
    unsigned api_port; /* order's public API */
    char bus[256];     /* "" (webhook) or the nats:// URL the services use */
} cafe_cluster;

/* Picks the event and API ports (call before creating a proxy that points
 * at them); then cafe_cluster_start starts the services. */
int cafe_cluster_prepare(cafe_cluster *c, const char *dir);

/* Starts the four services with o (event ports from cafe_cluster_prepare)
 * and waits for their ready files.  With a nats:// bus the CampusCafe stream
 * is reset first, so fresh databases start on an empty bus.  On failure the
 * started ones are stopped and their logs' last lines printed. */
int cafe_cluster_start(cafe_cluster *c, const cafe_cluster_options *o);

/* Stops every service (SIGTERM, then SIGKILL after a few seconds). */
void cafe_cluster_stop(cafe_cluster *c);

/* Prints the last lines of a service's log to stderr. */
void cafe_cluster_print_log_tail(const cafe_cluster *c, int service, int lines);

/* ------------------------------------------------------------------------
 * HTTP client (proc.c; needs libcurl)
 * ---------------------------------------------------------------------- */

/* One request.  body may be NULL (GET).  idempotency_key may be NULL.
 * *status is the HTTP status, 0 when no answer came (connection refused,
 * cut or timed out).  *response (may be NULL) receives the body, to be
 * freed by the caller.  Returns 0 when an HTTP answer arrived. */
int cafe_http(const char *method, const char *url, const char *body, const char *idempotency_key,
              long timeout_ms, long *status, char **response);

/* ------------------------------------------------------------------------
 * Order placement (proc.c)
 * ---------------------------------------------------------------------- */

typedef struct cafe_client_options {
    unsigned orders;       /* how many orders to place */
    unsigned clients;      /* concurrent clients */
    uint64_t seed;         /* each order is derived from (seed, index) */
    int pace_ms;           /* pause between a client's orders (0..2*pace) */
    int retry_deadline_ms; /* keep retrying one order that long */
    int max_qty;           /* items' qty drawn in 1..max_qty */
    const char *api_url;   /* "http://127.0.0.1:P" */
} cafe_client_options;

typedef struct cafe_clients cafe_clients;

/* Starts the client threads (each POSTs orders with an Idempotency-Key and
 * retries the same request, same key, while no answer comes). */
int cafe_clients_start(cafe_clients **out, const cafe_client_options *o);

/* Progress: orders answered 201/200, refused (4xx) and abandoned. */
void cafe_clients_progress(cafe_clients *c, unsigned *answered, unsigned *refused,
                           unsigned *abandoned, unsigned *retries);

/* Asks the clients to stop: no new orders, no more retries.  Thread-safe. */
void cafe_clients_stop(cafe_clients *c);

/* Non-zero when every client thread has finished. */
int cafe_clients_done(cafe_clients *c);

/* Joins the threads and frees. */
void cafe_clients_free(cafe_clients *c);

/* ------------------------------------------------------------------------
 * Settling and counting (proc.c)
 * ---------------------------------------------------------------------- */

typedef struct cafe_stats {
    int up[CAFE_H_SERVICES];       /* answered GET /stats */
    long pending[CAFE_H_SERVICES]; /* outbox_pending of each */
    long orders;                   /* order service's count */
    long by_state[8];              /* see cafe_harness_states */
    long bus_backlog;              /* nats bus: messages the consumers have not
                                      acked yet (-1: unknown); webhook: 0 */
    char fingerprint[2048];        /* all answers, to see change */
} cafe_stats;

extern const char *const cafe_harness_states[8];

/* Reads GET /stats from every service (and the order API's /stats). */
void cafe_cluster_stats(const cafe_cluster *c, cafe_stats *s);

/* Counts read from the four databases after a run (read-only). */
typedef struct cafe_counts {
    long orders;
    long by_state[8];
    long lost;        /* order saved, no ReserveStockRequested handled */
    long ghost;       /* order ids in inventory/payment that are not orders */
    long dup_handled; /* extra ReserveStockRequested handled rows per order */
    long dup_orders;  /* extra orders per request_key */
    long stuck;       /* orders not in an end state */
    /* consistency checks */
    long stock_violations;       /* items where initial != on_hand + reserved */
    long reserved_not_completed; /* reserved rows of orders not completed */
    long payment_no_order;       /* payments whose order does not exist */
    long reserve_not_once;       /* orders without exactly one RSR handled row */
    long payment_not_once;       /* orders that reached payment without exactly one */
    long payments;
    long notifications;
    char error[512]; /* non-empty when the databases could not be read */
} cafe_counts;

/* Reads dir's four databases. Returns -1 (with counts->error) on failure. */
int cafe_harness_count(const char *dir, cafe_counts *counts);

/* ------------------------------------------------------------------------
 * The chaos proxy (proxy.c; needs libmicrohttpd and libcurl)
 * ---------------------------------------------------------------------- */

typedef struct cafe_proxy cafe_proxy;

enum { CAFE_FAULT_DROP = 0, CAFE_FAULT_LOSE_RESPONSE, CAFE_FAULT_DUPLICATE, CAFE_FAULT_KINDS };

typedef struct cafe_proxy_stats {
    uint64_t requests;        /* POSTs received */
    uint64_t forwarded;       /* forwards made (a duplicate counts 2) */
    uint64_t upstream_errors; /* forwards that got no answer (502 sent) */
    uint64_t faults[CAFE_FAULT_KINDS];
} cafe_proxy_stats;

/* Starts one listener (127.0.0.1, ephemeral port) per upstream port given
 * (n of them), forwarding to http://127.0.0.1:<upstream>.  Faults are drawn
 * from a generator seeded with seed at the given rate (0..1). */
int cafe_proxy_new(cafe_proxy **out, const unsigned *upstream_ports, int n, uint64_t seed,
                   double fault_rate);

/* The listening port in front of upstream i. */
unsigned cafe_proxy_port(const cafe_proxy *p, int i);

/* Changes the fault rate (0 turns faults off for the settle phase). */
void cafe_proxy_set_fault_rate(cafe_proxy *p, double rate);

void cafe_proxy_get_stats(cafe_proxy *p, cafe_proxy_stats *stats);

/* Stops the listeners and frees.  NULL harmless. */
void cafe_proxy_free(cafe_proxy *p);

#endif /* CAFE_PROC_H */
