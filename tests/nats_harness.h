/*
 * nats_harness.h - helpers of the NATS JetStream tests (test_nats,
 * test_crash_nats), on top of crash_harness.h.
 *
 * - A real nats-server (-js, file storage in a temp dir) on 127.0.0.1 and a
 *   free port, started with fork/exec (its PID is remembered by the crash
 *   harness, so it is SIGKILLed at exit even when a test fails), killed and
 *   restarted on the same port and store dir.  Absent binary: exit 77.
 * - Stream set-up through nats.c (js_AddStream with a duplicate window).
 * - Reading a stream back in stream order with an ordered consumer, and
 *   writing what it holds as CloudEvents-like JSON lines ({"id", "subject",
 *   "data"}) so that ch_check_file counts lost, duplicates (messages in the
 *   stream beyond the first of an id) and per-aggregate order violations.
 * - An extra configuration file (conf: nats-server -c, the command-line
 *   options above still win) and a user credentials file (creds) for the
 *   harness's own connections, for servers in operator (JWT) mode.
 */
#ifndef OUTBOX_NATS_HARNESS_H
#define OUTBOX_NATS_HARNESS_H

#include "crash_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nats/nats.h>
#include <sys/socket.h>

#define NH_SERVER_BIN "/usr/sbin/nats-server"

typedef struct nh_server {
    pid_t pid;
    int port;
    char dir[CH_PATH]; /* JetStream store dir */
    char log[CH_PATH];
    char user[64], pass[64]; /* "" for no auth */
    char token[64];          /* "" for no token auth */
    char tls_cert[CH_PATH];  /* with tls_key: TLS required ("" for plain) */
    char tls_key[CH_PATH];
    char tls_ca[CH_PATH];    /* the CA the harness's own client trusts */
    char url[128];           /* nats://127.0.0.1:PORT (no credentials) */
    char conf[CH_PATH];      /* "" or a config file given with -c */
    char creds[CH_PATH];     /* "" or the .creds file the harness connects with */
} nh_server;

/* A port that was free a moment ago (bind port 0). */
static inline int nh_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) TEST_FAIL_("socket: %s", strerror(errno));
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        TEST_FAIL_("bind: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static inline int nh_port_open(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    if (fd < 0) return 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static inline void nh_require_server(void)
{
    if (access(NH_SERVER_BIN, X_OK) != 0)
        SKIP("%s not found: install the nats-server package to run the NATS tests", NH_SERVER_BIN);
}

/* Starts (or restarts) s on s->port (0: pick one) with s->dir as store. */
static inline void nh_server_start(nh_server *s)
{
    char port[16];
    const char *argv[24];
    int i = 0;
    nh_require_server();
    if (s->port == 0) s->port = nh_free_port();
    if (!s->dir[0]) {
        char name[64];
        snprintf(name, sizeof name, "nats-%d", s->port);
        ch_path(s->dir, name);
        mkdir(s->dir, 0755);
        snprintf(name, sizeof name, "nats-%d.log", s->port);
        ch_path(s->log, name);
    }
    snprintf(s->url, sizeof s->url, "nats://127.0.0.1:%d", s->port);
    snprintf(port, sizeof port, "%d", s->port);
    argv[i++] = NH_SERVER_BIN;
    if (s->conf[0]) {
        argv[i++] = "-c";
        argv[i++] = s->conf;
    }
    argv[i++] = "-js";
    argv[i++] = "-a";
    argv[i++] = "127.0.0.1";
    argv[i++] = "-p";
    argv[i++] = port;
    argv[i++] = "-sd";
    argv[i++] = s->dir;
    if (s->user[0]) {
        argv[i++] = "--user";
        argv[i++] = s->user;
        argv[i++] = "--pass";
        argv[i++] = s->pass;
    }
    if (s->token[0]) {
        argv[i++] = "--auth";
        argv[i++] = s->token;
    }
    if (s->tls_cert[0]) {
        argv[i++] = "--tls";
        argv[i++] = "--tlscert";
        argv[i++] = s->tls_cert;
        argv[i++] = "--tlskey";
        argv[i++] = s->tls_key;
    }
    argv[i] = NULL;
    s->pid = ch_spawn(argv, NULL, s->log, s->log);
    int64_t deadline = ch_now_ms() + 15000;
    while (!nh_port_open(s->port)) {
        if (!ch_alive(s->pid)) {
            ch_dump("nats-server log", s->log);
            TEST_FAIL_("nats-server exited at start (port %d)", s->port);
        }
        if (ch_now_ms() > deadline) {
            ch_dump("nats-server log", s->log);
            TEST_FAIL_("nats-server did not listen on port %d within 15 s", s->port);
        }
        ch_sleep_ms(10);
    }
}

/* SIGKILLs the server (as a crash would) or stops it with SIGTERM. */
static inline void nh_server_kill(nh_server *s)
{
    if (s->pid > 0) ch_kill9(s->pid);
    s->pid = 0;
}

static inline void nh_server_stop(nh_server *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGTERM);
    if (ch_wait(s->pid, 10000) == -1) ch_kill9(s->pid);
    s->pid = 0;
}

/* nats.c 3.4 leaves the "sig" field out of CONNECT when the ed25519
 * signature of the server's nonce starts with a zero byte (1 connection in
 * 256 with creds or an nkey; the server logs "Signature missing" and
 * answers Authorization Violation).  The nonce differs on each attempt, so
 * the harness's own connections with creds try a few times. */
#define NH_CREDS_ATTEMPTS 4

/* A connection to s (with its credentials), failing the test otherwise.
 * JetStream may need a moment after a start: callers retry requests. */
static inline natsConnection *nh_connect(const nh_server *s, jsCtx **js)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    int attempts = s->creds[0] ? NH_CREDS_ATTEMPTS : 1;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK) st = natsOptions_SetURL(o, s->url);
    if (st == NATS_OK && s->user[0]) st = natsOptions_SetUserInfo(o, s->user, s->pass);
    if (st == NATS_OK && s->token[0]) st = natsOptions_SetToken(o, s->token);
    if (st == NATS_OK && s->creds[0])
        st = natsOptions_SetUserCredentialsFromFiles(o, s->creds, NULL);
    if (st == NATS_OK && s->tls_cert[0]) st = natsOptions_SetSecure(o, true);
    if (st == NATS_OK && s->tls_ca[0]) st = natsOptions_LoadCATrustedCertificates(o, s->tls_ca);
    if (st == NATS_OK) st = natsOptions_SetTimeout(o, 5000);
    if (st == NATS_OK) {
        do
            st = natsConnection_Connect(&nc, o);
        while (st == NATS_CONNECTION_AUTH_FAILED && --attempts > 0);
    }
    natsOptions_Destroy(o);
    if (st != NATS_OK) TEST_FAIL_("connect %s: %s", s->url, natsStatus_GetText(st));
    if (js) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        st = natsConnection_JetStream(js, nc, &jo);
        if (st != NATS_OK) TEST_FAIL_("JetStream context: %s", natsStatus_GetText(st));
    }
    return nc;
}

/* Creates stream `name` on subjects (file storage, duplicate window
 * 10 minutes: longer than any test). */
static inline void nh_stream_create(const nh_server *s, const char *name, const char *subjects)
{
    jsCtx *js = NULL;
    natsConnection *nc = nh_connect(s, &js);
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subj[1] = {subjects};
    natsStatus st = NATS_OK;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subj;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Duplicates = (int64_t)600 * 1000000000LL;
    for (int tries = 0; tries < 50; tries++) {
        st = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (st == NATS_OK) break;
        ch_sleep_ms(100);
    }
    if (st != NATS_OK)
        TEST_FAIL_("js_AddStream %s: %s (%d)", name, natsStatus_GetText(st), (int)jerr);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* Messages in the stream, or -1 when it does not exist. */
static inline int64_t nh_stream_count(const nh_server *s, const char *name)
{
    jsCtx *js = NULL;
    natsConnection *nc = nh_connect(s, &js);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int64_t n = -1;
    natsStatus st = NATS_TIMEOUT;
    for (int tries = 0; tries < 50; tries++) {
        st = js_GetStreamInfo(&si, js, name, NULL, &jerr);
        if (st == NATS_OK || st == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) break;
        ch_sleep_ms(100);
    }
    if (st == NATS_OK) {
        n = (int64_t)si->State.Msgs;
        jsStreamInfo_Destroy(si);
    } else if (st != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr) {
        TEST_FAIL_("stream info %s: %s", name, natsStatus_GetText(st));
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* Called for each stream message in order; msg is borrowed. */
typedef void (*nh_msg_fn)(void *user, natsMsg *msg);

/* Reads every message of stream `name` (subjects `filter`) in stream order
 * with an ordered consumer; returns how many. */
static inline int64_t nh_stream_read(const nh_server *s, const char *name, const char *filter,
                                     nh_msg_fn fn, void *user)
{
    int64_t total = nh_stream_count(s, name), got = 0;
    jsCtx *js = NULL;
    natsConnection *nc = nh_connect(s, &js);
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus st;
    if (total < 0) TEST_FAIL_("stream %s does not exist", name);
    jsSubOptions_Init(&so);
    so.Stream = name;
    so.Ordered = true;
    if (total > 0) {
        st = js_SubscribeSync(&sub, js, filter, NULL, &so, &jerr);
        if (st != NATS_OK)
            TEST_FAIL_("subscribe %s: %s (%d)", name, natsStatus_GetText(st), (int)jerr);
        while (got < total) {
            natsMsg *m = NULL;
            st = natsSubscription_NextMsg(&m, sub, 10000);
            if (st != NATS_OK)
                TEST_FAIL_("reading stream %s: %s after %lld of %lld", name, natsStatus_GetText(st),
                           (long long)got, (long long)total);
            fn(user, m);
            natsMsg_Destroy(m);
            got++;
        }
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return got;
}

static inline const char *nh_header(natsMsg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK) return NULL;
    return v;
}

/* Writes one line per stream message: {"id": Nats-Msg-Id, "subject":
 * ce-subject, "data": payload} (the shape ch_check_file reads). */
static inline void nh_line_writer(void *user, natsMsg *m)
{
    FILE *f = user;
    const char *id = nh_header(m, "Nats-Msg-Id");
    const char *subject = nh_header(m, "ce-subject");
    json_t *o = json_object();
    json_error_t je;
    json_t *data = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, &je);
    json_object_set_new(o, "id", json_string(id ? id : ""));
    json_object_set_new(o, "subject", json_string(subject ? subject : ""));
    json_object_set_new(o, "data", data ? data : json_null());
    char *text = json_dumps(o, JSON_COMPACT);
    if (!text) TEST_FAIL_("out of memory");
    fprintf(f, "%s\n", text);
    free(text);
    json_decref(o);
}

/* Dumps stream `name` into path as lines for ch_check_file; returns count. */
static inline int64_t nh_stream_dump(const nh_server *s, const char *name, const char *filter,
                                     const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) TEST_FAIL_("cannot write %s", path);
    int64_t n = nh_stream_read(s, name, filter, nh_line_writer, f);
    fclose(f);
    return n;
}

#endif /* OUTBOX_NATS_HARNESS_H */
