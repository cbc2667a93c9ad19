/*
 * proc.c - the CampusCafe harness: child processes, the cluster of four
 * services, the HTTP client, the order-placing clients and the counts read
 * from the databases.  Used by demo.c and chaos.c (see proc.h).
 *
 * Services are this same executable (`campuscafe <service> ...`), started
 * with posix_spawn so the multi-threaded harness never runs code between
 * fork and exec.  A service is up when it wrote DIR/<service>.ready.  After
 * a run every count comes from the services' own databases, opened
 * read-only and attached to one connection, never from what the harness
 * believes it did.
 */
#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "cafe.h"
#include "proc.h"
#include "bus_amqp.h"
#include "bus_nats.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <outbox.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

const char *const cafe_harness_service_names[CAFE_H_SERVICES] = {"order", "inventory", "payment",
                                                                 "notification"};

const char *const cafe_harness_states[8] = {"placed",       "stock_reserved", "paid",
                                            "out_of_stock", "payment_failed", "completed",
                                            "rejected",     "cancelled"};

/* ------------------------------------------------------------------------
 * Small utilities
 * ---------------------------------------------------------------------- */

int64_t cafe_harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cafe_harness_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

uint64_t cafe_harness_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double cafe_harness_rand01(uint64_t *state)
{
    return (double)(cafe_harness_rand(state) >> 11) / 9007199254740992.0;
}

int cafe_harness_self_exe(char *buf, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    if (n <= 0) return -1;
    buf[n] = '\0';
    return 0;
}

int cafe_harness_tempdir(char *buf, size_t size, const char *prefix)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    if ((size_t)snprintf(buf, size, "%s/%s-XXXXXX", tmp, prefix) >= size) return -1;
    if (!mkdtemp(buf)) {
        fprintf(stderr, "campuscafe: cannot create a directory under %s: %s (set TMPDIR)\n", tmp,
                strerror(errno));
        return -1;
    }
    return 0;
}

void cafe_harness_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) continue;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            cafe_harness_rmtree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int cafe_harness_write_secret(const char *path)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char key[33];
    char text[64] = "whsec_";
    size_t o = 6;
    int fd, rc = -1;

    fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, key, 32) != 32) {
        if (fd >= 0) close(fd);
        fprintf(stderr, "campuscafe: cannot read /dev/urandom for the webhook secret\n");
        return -1;
    }
    close(fd);
    key[32] = 0;
    for (int i = 0; i < 33; i += 3) { /* 33 bytes: 44 characters, no padding */
        unsigned v = (unsigned)key[i] << 16 | (unsigned)key[i + 1] << 8 | key[i + 2];
        text[o++] = b64[(v >> 18) & 63];
        text[o++] = b64[(v >> 12) & 63];
        text[o++] = b64[(v >> 6) & 63];
        text[o++] = b64[v & 63];
    }
    /* Encode exactly 32 bytes: the last group held one zero byte, which is
     * "=" padding in standard base64. */
    text[o - 1] = '=';
    text[o] = '\0';
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) goto out;
    if (write(fd, text, o) == (ssize_t)o && write(fd, "\n", 1) == 1) rc = 0;
    close(fd);
out:
    if (rc != 0) fprintf(stderr, "campuscafe: cannot write %s: %s\n", path, strerror(errno));
    return rc;
}

/* Ports are drawn below the kernel's ephemeral range (32768 and up on
 * Linux): a port found free there and released can be taken by any
 * outgoing connection's local end before the service binds it. */
int cafe_harness_free_ports(unsigned *ports, int n)
{
    static uint64_t rng;
    int fds[16];
    int rc = -1, made = 0, tries = 0;
    if (n > 16) return -1;
    if (!rng) rng = (uint64_t)getpid() << 32 ^ (uint64_t)cafe_harness_now_ms();
    while (made < n && tries++ < 2000) {
        struct sockaddr_in sa;
        int one = 1, dup = 0;
        unsigned port = 20000 + (unsigned)(cafe_harness_rand(&rng) % 12000);
        for (int i = 0; i < made; i++)
            dup |= ports[i] == port;
        if (dup) continue;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons((uint16_t)port);
        fds[made] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[made] < 0) goto out;
        setsockopt(fds[made], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fds[made], (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fds[made]);
            continue;
        }
        ports[made++] = port;
    }
    rc = made == n ? 0 : -1;
out:
    for (int i = 0; i < made; i++)
        close(fds[i]);
    if (rc != 0) fprintf(stderr, "campuscafe: cannot find %d free ports in 20000-31999\n", n);
    return rc;
}

/* ------------------------------------------------------------------------
 * Child processes
 * ---------------------------------------------------------------------- */

int cafe_proc_start(cafe_proc *p, char *const argv[], const char *ready_path, const char *log_path)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int rc;

    if (!p->argv) {
        size_t n = 0;
        while (argv[n])
            n++;
        p->argv = calloc(n + 1, sizeof *p->argv);
        if (!p->argv) return -1;
        for (size_t i = 0; i < n; i++) {
            p->argv[i] = strdup(argv[i]);
            if (!p->argv[i]) return -1;
        }
        snprintf(p->ready_path, sizeof p->ready_path, "%s", ready_path);
        snprintf(p->log_path, sizeof p->log_path, "%s", log_path);
    }
    unlink(p->ready_path);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, p->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    rc = posix_spawn(&pid, p->argv[0], &fa, NULL, p->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "campuscafe: cannot start %s: %s\n", p->argv[0], strerror(rc));
        return -1;
    }
    p->pid = pid;
    p->starts++;
    return 0;
}

int cafe_proc_reap(cafe_proc *p, int block)
{
    int status;
    pid_t r;
    if (p->pid <= 0) return 1;
    do {
        r = waitpid(p->pid, &status, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return 0;
    if (r == p->pid) p->last_status = status;
    p->pid = 0;
    return 1;
}

int cafe_proc_wait_ready(cafe_proc *p, int timeout_ms)
{
    int64_t end = cafe_harness_now_ms() + timeout_ms;
    struct stat st;
    while (cafe_harness_now_ms() < end) {
        if (stat(p->ready_path, &st) == 0 && st.st_size > 0) return 0;
        if (cafe_proc_reap(p, 0)) return -1;
        cafe_harness_sleep_ms(20);
    }
    return -1;
}

void cafe_proc_signal(cafe_proc *p, int sig)
{
    if (p->pid > 0) kill(p->pid, sig);
}

int cafe_proc_restart(cafe_proc *p, int timeout_ms)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        cafe_proc_reap(p, 1);
    }
    if (cafe_proc_start(p, p->argv, p->ready_path, p->log_path) != 0) return -1;
    return cafe_proc_wait_ready(p, timeout_ms);
}

int cafe_proc_stop(cafe_proc *p, int timeout_ms)
{
    int64_t end = cafe_harness_now_ms() + timeout_ms;
    if (p->pid <= 0) return 0;
    kill(p->pid, SIGTERM);
    while (cafe_harness_now_ms() < end) {
        if (cafe_proc_reap(p, 0))
            return WIFEXITED(p->last_status) && WEXITSTATUS(p->last_status) == 0 ? 0 : -1;
        cafe_harness_sleep_ms(20);
    }
    kill(p->pid, SIGKILL);
    cafe_proc_reap(p, 1);
    return -1;
}

void cafe_proc_free(cafe_proc *p)
{
    if (p->argv) {
        for (size_t i = 0; p->argv[i]; i++)
            free(p->argv[i]);
        free(p->argv);
        p->argv = NULL;
    }
}

/* ------------------------------------------------------------------------
 * The cluster
 * ---------------------------------------------------------------------- */

int cafe_cluster_prepare(cafe_cluster *c, const char *dir)
{
    unsigned ports[CAFE_H_SERVICES + 1];
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    if (cafe_harness_free_ports(ports, CAFE_H_SERVICES + 1) != 0) return -1;
    for (int i = 0; i < CAFE_H_SERVICES; i++)
        c->event_port[i] = ports[i];
    c->api_port = ports[CAFE_H_SERVICES];
    return 0;
}

void cafe_cluster_print_log_tail(const cafe_cluster *c, int service, int lines)
{
    char buf[64 * 1024];
    const char *path = c->procs[service].log_path;
    FILE *f = fopen(path, "r");
    size_t n;
    long size;
    int count = 0;
    char *startp;
    if (!f) return;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    if (size > (long)sizeof buf - 1)
        fseek(f, size - (long)sizeof buf + 1, SEEK_SET);
    else
        fseek(f, 0, SEEK_SET);
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    startp = buf + n;
    while (startp > buf) {
        if (startp[-1] == '\n' && startp != buf + n && ++count > lines) break;
        startp--;
    }
    fprintf(stderr, "--- last lines of %s ---\n%s", path, startp);
    if (n && buf[n - 1] != '\n') fputc('\n', stderr);
}

int cafe_cluster_start(cafe_cluster *c, const cafe_cluster_options *o)
{
    char exe[PATH_MAX];
    char ports[CAFE_H_SERVICES][16], api[16], seed[32], urls[CAFE_H_SERVICES][96];
    /* Services start consumers first, so order's first events find them. */
    static const int start_order[CAFE_H_SERVICES] = {CAFE_H_INVENTORY, CAFE_H_PAYMENT,
                                                     CAFE_H_NOTIFICATION, CAFE_H_ORDER};
    static const char *const url_opts[CAFE_H_SERVICES] = {"--order-url", "--inventory-url",
                                                          "--payment-url", "--notification-url"};

    if (cafe_harness_self_exe(exe, sizeof exe) != 0) {
        fprintf(stderr, "campuscafe: cannot find its own executable (/proc/self/exe)\n");
        return -1;
    }
    snprintf(c->bus, sizeof c->bus, "%s",
             o->bus && (strncmp(o->bus, "nats://", 7) == 0 || strncmp(o->bus, "amqp://", 7) == 0)
                 ? o->bus
                 : "");
    if (c->bus[0]) {
        outbox_error err;
        memset(&err, 0, sizeof err);
        int amqp = strncmp(c->bus, "amqp://", 7) == 0;
        if ((amqp ? cafe_amqp_reset(c->bus, &err) : cafe_nats_reset(c->bus, &err)) != OUTBOX_OK) {
            fprintf(stderr, "campuscafe: cannot reset the %s bus: %s\n", amqp ? "AMQP" : "NATS",
                    err.message);
            return -1;
        }
    }
    snprintf(api, sizeof api, "%u", c->api_port);
    snprintf(seed, sizeof seed, "%lu", o->seed);
    for (int i = 0; i < CAFE_H_SERVICES; i++) {
        unsigned peer = o->peer_port[i] ? o->peer_port[i] : c->event_port[i];
        snprintf(ports[i], sizeof ports[i], "%u", c->event_port[i]);
        snprintf(urls[i], sizeof urls[i], "http://127.0.0.1:%u/events", peer);
    }
    for (int k = 0; k < CAFE_H_SERVICES; k++) {
        int s = start_order[k];
        const char *argv[48];
        char ready[PATH_MAX], logp[PATH_MAX];
        int a = 0;
        argv[a++] = exe;
        argv[a++] = cafe_harness_service_names[s];
        argv[a++] = "--dir";
        argv[a++] = c->dir;
        argv[a++] = "--port";
        argv[a++] = ports[s];
        for (int i = 0; i < CAFE_H_SERVICES; i++) {
            argv[a++] = url_opts[i];
            argv[a++] = urls[i];
        }
        argv[a++] = "--seed";
        argv[a++] = seed;
        if (o->bus) {
            argv[a++] = "--bus";
            argv[a++] = o->bus;
        }
        if (o->relay) {
            argv[a++] = "--relay";
            argv[a++] = o->relay;
        }
        if (o->mode) {
            argv[a++] = "--mode";
            argv[a++] = o->mode;
        }
        if (o->secret_file) {
            argv[a++] = "--secret-file";
            argv[a++] = o->secret_file;
        }
        if (s == CAFE_H_ORDER) {
            argv[a++] = "--api-port";
            argv[a++] = api;
            if (o->crash_rate) {
                argv[a++] = "--crash-rate";
                argv[a++] = o->crash_rate;
            }
            if (o->crash_points) {
                argv[a++] = "--crash-points";
                argv[a++] = o->crash_points;
            }
            if (o->naive_variant) {
                argv[a++] = "--naive-variant";
                argv[a++] = o->naive_variant;
            }
        }
        if (s == CAFE_H_INVENTORY && o->stock) {
            argv[a++] = "--stock";
            argv[a++] = o->stock;
        }
        if (s == CAFE_H_PAYMENT && o->fail_rate) {
            argv[a++] = "--fail-rate";
            argv[a++] = o->fail_rate;
        }
        argv[a] = NULL;
        snprintf(ready, sizeof ready, "%s/%s.ready", c->dir, cafe_harness_service_names[s]);
        snprintf(logp, sizeof logp, "%s/%s.log", c->dir, cafe_harness_service_names[s]);
        if (cafe_proc_start(&c->procs[s], (char *const *)argv, ready, logp) != 0) goto fail;
        if (cafe_proc_wait_ready(&c->procs[s], 15000) != 0) {
            fprintf(stderr, "campuscafe: the %s service did not become ready (see %s)\n",
                    cafe_harness_service_names[s], logp);
            cafe_cluster_print_log_tail(c, s, 15);
            goto fail;
        }
    }
    return 0;
fail:
    cafe_cluster_stop(c);
    return -1;
}

void cafe_cluster_stop(cafe_cluster *c)
{
    /* The order service first: it produces the requests. */
    for (int i = 0; i < CAFE_H_SERVICES; i++)
        cafe_proc_signal(&c->procs[i], SIGTERM);
    for (int i = 0; i < CAFE_H_SERVICES; i++) {
        cafe_proc_stop(&c->procs[i], 8000);
        cafe_proc_free(&c->procs[i]);
    }
}

/* ------------------------------------------------------------------------
 * HTTP client
 * ---------------------------------------------------------------------- */

int cafe_http(const char *method, const char *url, const char *body, const char *idempotency_key,
              long timeout_ms, long *status, char **response)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    cafe_body b = {NULL, 0, 1024 * 1024, 0};
    char keyh[128];
    CURLcode cc;
    int rc = -1;

    *status = 0;
    if (response) *response = NULL;
    if (!h) return -1;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 1000 ? timeout_ms : 1000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, cafe_body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (body) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (idempotency_key) {
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", idempotency_key);
        hdrs = curl_slist_append(hdrs, keyh);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    cc = curl_easy_perform(h);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        rc = 0;
        if (response) {
            *response = b.data ? b.data : strdup("");
            b.data = NULL;
        }
    }
    free(b.data);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return rc;
}

/* ------------------------------------------------------------------------
 * Clients placing orders
 * ---------------------------------------------------------------------- */

struct cafe_clients {
    cafe_client_options o;
    pthread_t *threads;
    unsigned nthreads;
    pthread_mutex_t lock;
    unsigned next; /* next order index to place */
    unsigned answered, refused, abandoned, retries, finished;
    int stop; /* under lock */
};

static int stopping(cafe_clients *c)
{
    int stop;
    pthread_mutex_lock(&c->lock);
    stop = c->stop;
    pthread_mutex_unlock(&c->lock);
    return stop;
}

void cafe_clients_stop(cafe_clients *c)
{
    pthread_mutex_lock(&c->lock);
    c->stop = 1;
    pthread_mutex_unlock(&c->lock);
}

static const char *const customers[] = {"ana", "ben",  "chloe", "dev",  "eli",  "fatima",
                                        "gus", "hana", "ivan",  "jade", "kofi", "lena"};
static const char *const items[] = {"latte", "espresso", "croissant", "muffin"};

static void place_one(cafe_clients *c, unsigned index)
{
    uint64_t rng = c->o.seed * 1000003ULL + index;
    char body[512], key[37], url[256];
    int nitems = 1 + (int)(cafe_harness_rand(&rng) % 2);
    size_t o;
    long status = 0;
    int64_t deadline;
    int tries = 0;

    o = (size_t)snprintf(body, sizeof body, "{\"customer\":\"%s\",\"items\":[",
                         customers[cafe_harness_rand(&rng) % 12]);
    for (int i = 0; i < nitems; i++) {
        const char *item = items[(cafe_harness_rand(&rng) + (uint64_t)i) % 4];
        int qty =
            1 + (int)(cafe_harness_rand(&rng) % (uint64_t)(c->o.max_qty > 0 ? c->o.max_qty : 2));
        o += (size_t)snprintf(body + o, sizeof body - o, "%s{\"item\":\"%s\",\"qty\":%d}",
                              i ? "," : "", item, qty);
    }
    snprintf(body + o, sizeof body - o, "]}");
    outbox_uuid_v7(key);
    snprintf(url, sizeof url, "%s/orders", c->o.api_url);
    deadline = cafe_harness_now_ms() + c->o.retry_deadline_ms;
    for (;;) {
        /* No answer (refused, cut, timed out) or a 5xx: send the same
         * request again with the same key, as a careful client does. */
        if (cafe_http("POST", url, body, key, 3000, &status, NULL) == 0 && status < 500) break;
        tries++;
        if (cafe_harness_now_ms() > deadline || stopping(c)) break;
        cafe_harness_sleep_ms(100 + (int)(cafe_harness_rand(&rng) % 200));
    }
    pthread_mutex_lock(&c->lock);
    c->retries += (unsigned)tries;
    if (status == 200 || status == 201)
        c->answered++;
    else if (status >= 400 && status < 500)
        c->refused++;
    else
        c->abandoned++;
    pthread_mutex_unlock(&c->lock);
}

static void *client_main(void *arg)
{
    cafe_clients *c = arg;
    uint64_t rng;
    pthread_mutex_lock(&c->lock);
    rng = c->o.seed ^ ((uint64_t)c->next * 7919u + (uint64_t)(uintptr_t)&rng);
    pthread_mutex_unlock(&c->lock);
    for (;;) {
        unsigned index;
        pthread_mutex_lock(&c->lock);
        index = c->next < c->o.orders && !c->stop ? c->next++ : c->o.orders;
        pthread_mutex_unlock(&c->lock);
        if (index >= c->o.orders) break;
        place_one(c, index);
        if (c->o.pace_ms > 0)
            cafe_harness_sleep_ms(
                (int)(cafe_harness_rand(&rng) % (uint64_t)(2 * c->o.pace_ms + 1)));
    }
    pthread_mutex_lock(&c->lock);
    c->finished++;
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int cafe_clients_start(cafe_clients **out, const cafe_client_options *o)
{
    cafe_clients *c = calloc(1, sizeof *c);
    *out = NULL;
    if (!c) return -1;
    c->o = *o;
    if (c->o.clients == 0) c->o.clients = 1;
    pthread_mutex_init(&c->lock, NULL);
    c->threads = calloc(c->o.clients, sizeof *c->threads);
    if (!c->threads) {
        free(c);
        return -1;
    }
    for (unsigned i = 0; i < c->o.clients; i++) {
        if (pthread_create(&c->threads[i], NULL, client_main, c) != 0) break;
        c->nthreads++;
    }
    *out = c;
    return c->nthreads ? 0 : -1;
}

void cafe_clients_progress(cafe_clients *c, unsigned *answered, unsigned *refused,
                           unsigned *abandoned, unsigned *retries)
{
    pthread_mutex_lock(&c->lock);
    if (answered) *answered = c->answered;
    if (refused) *refused = c->refused;
    if (abandoned) *abandoned = c->abandoned;
    if (retries) *retries = c->retries;
    pthread_mutex_unlock(&c->lock);
}

int cafe_clients_done(cafe_clients *c)
{
    int done;
    pthread_mutex_lock(&c->lock);
    done = c->finished == c->nthreads;
    pthread_mutex_unlock(&c->lock);
    return done;
}

void cafe_clients_free(cafe_clients *c)
{
    if (!c) return;
    for (unsigned i = 0; i < c->nthreads; i++)
        pthread_join(c->threads[i], NULL);
    pthread_mutex_destroy(&c->lock);
    free(c->threads);
    free(c);
}

/* ------------------------------------------------------------------------
 * Stats while running
 * ---------------------------------------------------------------------- */

void cafe_cluster_stats(const cafe_cluster *c, cafe_stats *s)
{
    size_t fp = 0;
    memset(s, 0, sizeof *s);
    for (int i = 0; i <= CAFE_H_SERVICES; i++) {
        char url[128], *resp = NULL;
        long status = 0;
        json_t *j;
        if (i < CAFE_H_SERVICES)
            snprintf(url, sizeof url, "http://127.0.0.1:%u/stats", c->event_port[i]);
        else
            snprintf(url, sizeof url, "http://127.0.0.1:%u/stats", c->api_port);
        if (cafe_http("GET", url, NULL, NULL, 2000, &status, &resp) != 0 || status != 200) {
            free(resp);
            if (i < CAFE_H_SERVICES) s->pending[i] = -1;
            fp += (size_t)snprintf(s->fingerprint + fp, sizeof s->fingerprint - fp, "|down");
            if (fp >= sizeof s->fingerprint) fp = sizeof s->fingerprint - 1;
            continue;
        }
        fp += (size_t)snprintf(s->fingerprint + fp, sizeof s->fingerprint - fp, "|%s", resp);
        if (fp >= sizeof s->fingerprint) fp = sizeof s->fingerprint - 1;
        j = json_loads(resp, 0, NULL);
        free(resp);
        if (!j) continue;
        if (i < CAFE_H_SERVICES) {
            s->up[i] = 1;
            s->pending[i] = (long)json_integer_value(json_object_get(j, "outbox_pending"));
        } else {
            json_t *by = json_object_get(j, "by_state");
            s->orders = (long)json_integer_value(json_object_get(j, "orders"));
            for (int k = 0; k < 8; k++)
                s->by_state[k] =
                    (long)json_integer_value(json_object_get(by, cafe_harness_states[k]));
        }
        json_decref(j);
    }
    if (c->bus[0]) {
        /* A message delivered to a service that was then killed comes back
         * only after the consumer's ack wait: empty outboxes are not enough. */
        outbox_error err;
        int64_t n = -1;
        memset(&err, 0, sizeof err);
        if ((strncmp(c->bus, "amqp://", 7) == 0 ? cafe_amqp_backlog(c->bus, &n, &err)
                                                : cafe_nats_backlog(c->bus, &n, &err)) != OUTBOX_OK)
            n = -1;
        s->bus_backlog = (long)n;
        fp += (size_t)snprintf(s->fingerprint + fp, sizeof s->fingerprint - fp, "|bus %ld",
                               s->bus_backlog);
        if (fp >= sizeof s->fingerprint) fp = sizeof s->fingerprint - 1;
    }
}

/* ------------------------------------------------------------------------
 * Counting from the databases
 * ---------------------------------------------------------------------- */

static long scalar(sqlite3 *db, const char *sql, cafe_counts *c)
{
    sqlite3_stmt *st = NULL;
    long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) goto fail;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
    else
        goto fail;
    sqlite3_finalize(st);
    return v;
fail:
    if (!c->error[0])
        snprintf(c->error, sizeof c->error, "query failed: %s (%.120s)", sqlite3_errmsg(db), sql);
    sqlite3_finalize(st);
    return -1;
}

int cafe_harness_count(const char *dir, cafe_counts *c)
{
    sqlite3 *db = NULL;
    char uri[PATH_MAX + 64], sql[PATH_MAX + 128];
    static const char *const alias[CAFE_H_SERVICES] = {"main", "inv", "pay", "noti"};
    const char *end_states = "('completed','rejected','cancelled')";
    int rc = -1;

    memset(c, 0, sizeof *c);
    snprintf(uri, sizeof uri, "file:%s/order.db?mode=ro", dir);
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
        snprintf(c->error, sizeof c->error, "cannot open %s/order.db: %s", dir, sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_busy_timeout(db, 5000);
    for (int i = 1; i < CAFE_H_SERVICES; i++) {
        char *q = sqlite3_mprintf("ATTACH 'file:%q/%q.db?mode=ro' AS %s", dir,
                                  cafe_harness_service_names[i], alias[i]);
        int r = q ? sqlite3_exec(db, q, NULL, NULL, NULL) : SQLITE_NOMEM;
        sqlite3_free(q);
        if (r != SQLITE_OK) {
            snprintf(c->error, sizeof c->error, "cannot attach %s/%s.db: %s", dir,
                     cafe_harness_service_names[i], sqlite3_errmsg(db));
            goto out;
        }
    }
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL); /* one snapshot for all */
    c->orders = scalar(db, "SELECT count(*) FROM orders", c);
    for (int k = 0; k < 8; k++) {
        snprintf(sql, sizeof sql, "SELECT count(*) FROM orders WHERE state = '%s'",
                 cafe_harness_states[k]);
        c->by_state[k] = scalar(db, sql, c);
    }
    c->lost = scalar(db,
                     "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM inv.handled h"
                     " WHERE h.order_id = o.id AND h.event = 'ReserveStockRequested')",
                     c);
    c->ghost = scalar(db,
                      "SELECT count(*) FROM (SELECT order_id FROM inv.handled UNION"
                      " SELECT order_id FROM inv.reservations UNION SELECT order_id FROM"
                      " pay.payments) g WHERE g.order_id NOT IN (SELECT id FROM orders)",
                      c);
    c->dup_handled = scalar(db,
                            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM"
                            " inv.handled WHERE event = 'ReserveStockRequested' GROUP BY order_id)",
                            c);
    c->dup_orders = scalar(db,
                           "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM orders"
                           " WHERE request_key IS NOT NULL GROUP BY request_key)",
                           c);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM orders WHERE state NOT IN %s", end_states);
    c->stuck = scalar(db, sql, c);
    c->stock_violations = scalar(db,
                                 "SELECT count(*) FROM inv.stock s WHERE s.initial != s.on_hand +"
                                 " (SELECT coalesce(sum(qty), 0) FROM inv.reservations r"
                                 " WHERE r.item = s.item AND r.status = 'reserved')",
                                 c);
    c->reserved_not_completed = scalar(db,
                                       "SELECT count(*) FROM inv.reservations r WHERE r.status ="
                                       " 'reserved' AND NOT EXISTS (SELECT 1 FROM orders o"
                                       " WHERE o.id = r.order_id AND o.state = 'completed')",
                                       c);
    c->payment_no_order = scalar(db,
                                 "SELECT count(*) FROM pay.payments p WHERE p.order_id NOT IN"
                                 " (SELECT id FROM orders)",
                                 c);
    c->reserve_not_once = scalar(db,
                                 "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM"
                                 " inv.handled h WHERE h.order_id = o.id AND h.event ="
                                 " 'ReserveStockRequested') != 1",
                                 c);
    c->payment_not_once =
        scalar(db,
               "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM"
               " pay.payments p WHERE p.order_id = o.id) != (CASE WHEN o.state IN"
               " ('paid','completed','payment_failed','cancelled') THEN 1 ELSE 0 END)",
               c);
    c->payments = scalar(db, "SELECT count(*) FROM pay.payments", c);
    c->notifications = scalar(db, "SELECT count(*) FROM noti.notifications", c);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    rc = c->error[0] ? -1 : 0;
out:
    sqlite3_close(db);
    return rc;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */
