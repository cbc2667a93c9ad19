/*
 * nats.c - a real nats-server for the tests (see nats.h).
 */
#include "support/nats.h"

#include "support/chaos.h"

#include <signal.h>
#include <sys/stat.h>

#ifdef OUTBOX_HAVE_NATS

void nh_require_server(void)
{
    if (access(NH_SERVER_BIN, X_OK) != 0)
        SKIP("%s not found: install the nats-server package to run the NATS tests", NH_SERVER_BIN);
}

void nh_server_start(nh_server *s)
{
    char port[16];
    const char *argv[24];
    int i = 0;
    nh_require_server();
    if (s->port == 0) s->port = ch_free_port();
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
    while (!ch_port_open(s->port)) {
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

void nh_server_start_tls(nh_server *s, const char *cert, const char *key, const char *ca)
{
    memset(s, 0, sizeof *s);
    snprintf(s->tls_cert, sizeof s->tls_cert, "%s", cert);
    snprintf(s->tls_key, sizeof s->tls_key, "%s", key);
    snprintf(s->tls_ca, sizeof s->tls_ca, "%s", ca);
    nh_server_start(s);
}

void nh_server_kill(nh_server *s)
{
    if (s->pid > 0) ch_kill9(s->pid);
    s->pid = 0;
}

void nh_server_stop(nh_server *s)
{
    if (s->pid > 0) ch_stop(s->pid, SIGTERM, 10000);
    s->pid = 0;
}

/* s->url, one URL or a comma-separated list (a cluster's nodes), into o:
 * nats.c 3.4 takes a list only through natsOptions_SetServers. */
static natsStatus nh_set_url(natsOptions *o, const char *url)
{
    char copy[sizeof((nh_server *)0)->url], *save = NULL, *u;
    const char *list[NH_CLUSTER_SIZE + 1];
    int n = 0;
    if (strchr(url, ',') == NULL) return natsOptions_SetURL(o, url);
    snprintf(copy, sizeof copy, "%s", url);
    for (u = strtok_r(copy, ",", &save); u && n < NH_CLUSTER_SIZE + 1;
         u = strtok_r(NULL, ",", &save))
        list[n++] = u;
    return natsOptions_SetServers(o, list, n);
}

natsConnection *nh_connect(const nh_server *s, jsCtx **js)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    int attempts = s->creds[0] ? NH_CREDS_ATTEMPTS : 1;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK) st = nh_set_url(o, s->url);
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

void nh_stream_create(const nh_server *s, const char *name, const char *subjects)
{
    nh_stream_create_replicated(s, name, subjects, 1);
}

void nh_stream_create_replicated(const nh_server *s, const char *name, const char *subjects,
                                 int replicas)
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
    sc.Replicas = replicas;
    for (int tries = 0; tries < 50 * replicas; tries++) {
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

int64_t nh_stream_count(const nh_server *s, const char *name)
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

/* An ordered consumer of stream name (so), for nh_stream_read. */
static natsSubscription *read_subscribe(jsCtx *js, const char *name, const char *filter,
                                        jsSubOptions *so)
{
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus st = NATS_OK;
    /* A cluster that just got a node back may take a moment to create
     * the consumer. */
    for (int tries = 0; tries < 20; tries++) {
        st = js_SubscribeSync(&sub, js, filter, NULL, so, &jerr);
        if (st != NATS_TIMEOUT) break;
        ch_sleep_ms(500);
    }
    if (st != NATS_OK) TEST_FAIL_("subscribe %s: %s (%d)", name, natsStatus_GetText(st), (int)jerr);
    /* No limit on what waits to be read: a reader slowed by a loaded
     * machine (or a sanitizer) would otherwise be a slow consumer and
     * lose messages past nats.c's default 65,536. */
    st = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (st != NATS_OK) TEST_FAIL_("pending limits: %s", natsStatus_GetText(st));
    return sub;
}

/* Whether subject matches filter (NATS wildcards: "*" one token, ">" one
 * or more at the end; no filter matches all). */
static int subject_matches(const char *filter, const char *subject)
{
    if (!filter || !*filter) return 1;
    for (;;) {
        const char *fe = strchr(filter, '.'), *se = strchr(subject, '.');
        size_t fl = fe ? (size_t)(fe - filter) : strlen(filter);
        size_t sl = se ? (size_t)(se - subject) : strlen(subject);
        int star = fl == 1 && filter[0] == '*';
        if (fl == 1 && filter[0] == '>') return sl > 0;
        if (star ? sl == 0 : fl != sl || memcmp(filter, subject, fl) != 0) return 0;
        if (!fe || !se) return !fe && !se;
        filter = fe + 1;
        subject = se + 1;
    }
}

/* Hands fn the messages of stream name from sequence `from` to its last,
 * each fetched by sequence (from the stream's leader), those of filter's
 * subjects; how many. */
static int64_t read_by_sequence(jsCtx *js, const char *name, const char *filter, uint64_t from,
                                nh_msg_fn fn, void *user)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st;
    uint64_t seq, last;
    int64_t n = 0;
    st = js_GetStreamInfo(&si, js, name, NULL, &jerr);
    if (st != NATS_OK) TEST_FAIL_("stream info %s: %s", name, natsStatus_GetText(st));
    last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    for (seq = from; seq <= last; seq++) {
        natsMsg *m = NULL;
        for (int tries = 0; tries < 20; tries++) {
            st = js_GetMsg(&m, js, name, seq, NULL, &jerr);
            if (st != NATS_TIMEOUT) break;
            ch_sleep_ms(500);
        }
        if (st == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) continue; /* deleted */
        if (st != NATS_OK)
            TEST_FAIL_("stream %s: message %llu: %s (%d)", name, (unsigned long long)seq,
                       natsStatus_GetText(st), (int)jerr);
        if (subject_matches(filter, natsMsg_GetSubject(m))) {
            fn(user, m);
            n++;
        }
        natsMsg_Destroy(m);
    }
    return n;
}

int64_t nh_stream_read(const nh_server *s, const char *name, const char *filter, nh_msg_fn fn,
                       void *user)
{
    int64_t total = nh_stream_count(s, name), got = 0;
    jsCtx *js = NULL;
    natsConnection *nc = nh_connect(s, &js);
    natsSubscription *sub = NULL;
    jsSubOptions so;
    natsStatus st;
    if (total < 0) TEST_FAIL_("stream %s does not exist", name);
    jsSubOptions_Init(&so);
    so.Stream = name;
    so.Ordered = true;
    if (total > 0) {
        sub = read_subscribe(js, name, filter, &so);
        uint64_t last = 0; /* the stream sequence of the last message handed to fn */
        while (got < total) {
            natsMsg *m = NULL;
            jsMsgMetaData *meta = NULL;
            uint64_t seq;
            st = natsSubscription_NextMsg(&m, sub, 10000);
            if (st == NATS_TIMEOUT) {
                /* An ordered consumer on a cluster that just lost and got
                 * back a node can stall: the rest is read by sequence from
                 * the stream's leader, the stream's own record. */
                fprintf(stderr,
                        "reading stream %s: no message for 10 s after %lld of %lld; reading on "
                        "from sequence %llu by sequence\n",
                        name, (long long)got, (long long)total, (unsigned long long)(last + 1));
                got += read_by_sequence(js, name, filter, last + 1, fn, user);
                if (got != total)
                    TEST_FAIL_("reading stream %s: %lld of %lld messages by sequence", name,
                               (long long)got, (long long)total);
                break;
            }
            if (st != NATS_OK)
                TEST_FAIL_("reading stream %s: %s after %lld of %lld", name, natsStatus_GetText(st),
                           (long long)got, (long long)total);
            st = natsMsg_GetMetaData(&meta, m);
            if (st != NATS_OK)
                TEST_FAIL_("reading stream %s: no metadata: %s", name, natsStatus_GetText(st));
            seq = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
            /* A consumer that restarted itself (ordered consumers do) may
             * deliver again what was read: each stream sequence is read
             * once, so a message stored twice is seen twice and one
             * delivered twice is not. */
            if (seq <= last) {
                natsMsg_Destroy(m);
                continue;
            }
            last = seq;
            fn(user, m);
            natsMsg_Destroy(m);
            got++;
            if (got == total) {
                /* The count came from one stream info, which a cluster that
                 * just got a node back can answer with a state a message
                 * behind: read on while the stream says it holds more. */
                int64_t now = nh_stream_count(s, name);
                if (now > total) {
                    fprintf(stderr, "reading stream %s: it holds %lld, not %lld; reading on\n",
                            name, (long long)now, (long long)total);
                    total = now;
                }
            }
        }
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return got;
}

const char *nh_header(natsMsg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK) return NULL;
    return v;
}

/* Writes one line per stream message: {"id": Nats-Msg-Id, "subject":
 * ce-subject, "data": payload} (the shape ch_check_file reads). */
static void nh_line_writer(void *user, natsMsg *m)
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

int64_t nh_stream_dump(const nh_server *s, const char *name, const char *filter, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) TEST_FAIL_("cannot write %s", path);
    int64_t n = nh_stream_read(s, name, filter, nh_line_writer, f);
    fclose(f);
    return n;
}

/* ------------------------------------------------------------------------
 * Cluster
 * ---------------------------------------------------------------------- */

void nh_cluster_start(nh_cluster *c)
{
    char routes[300] = "";
    int i;
    nh_require_server();
    memset(c, 0, sizeof *c);
    for (i = 0; i < NH_CLUSTER_SIZE; i++) {
        c->node[i].port = ch_free_port();
        c->route_port[i] = ch_free_port();
        snprintf(routes + strlen(routes), sizeof routes - strlen(routes),
                 "%snats-route://127.0.0.1:%d", i ? ", " : "", c->route_port[i]);
    }
    for (i = 0; i < NH_CLUSTER_SIZE; i++) {
        nh_server *s = &c->node[i];
        char name[64];
        FILE *f;
        snprintf(name, sizeof name, "cluster-n%d.conf", i);
        ch_path(s->conf, name);
        f = fopen(s->conf, "w");
        if (!f) TEST_FAIL_("cannot write %s", s->conf);
        fprintf(f,
                "server_name: n%d\n"
                "cluster {\n  name: outbox-test\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
                i, c->route_port[i], routes);
        fclose(f);
        nh_server_start(s);
        snprintf(c->url + strlen(c->url), sizeof c->url - strlen(c->url), "%s127.0.0.1:%d",
                 i ? "," : "nats://", s->port);
    }
    c->client = c->node[0];
    snprintf(c->client.url, sizeof c->client.url,
             "nats://127.0.0.1:%d,nats://127.0.0.1:%d,"
             "nats://127.0.0.1:%d",
             c->node[0].port, c->node[1].port, c->node[2].port);
}

/* Stream info from the leader, or NULL (timeout_ms per try, a few tries). */
static jsStreamInfo *nh_stream_info(nh_cluster *c, const char *name)
{
    jsCtx *js = NULL;
    natsConnection *nc = nh_connect(&c->client, &js);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 2000;
    if (js_GetStreamInfo(&si, js, name, &jo, &jerr) != NATS_OK) si = NULL;
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return si;
}

int nh_cluster_stream_leader(nh_cluster *c, const char *name, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    int leader = -1;
    while (leader < 0 && ch_now_ms() < deadline) {
        jsStreamInfo *si = nh_stream_info(c, name);
        if (si && si->Cluster && si->Cluster->Leader &&
            sscanf(si->Cluster->Leader, "n%d", &leader) == 1 &&
            (leader < 0 || leader >= NH_CLUSTER_SIZE || c->node[leader].pid <= 0))
            leader = -1;
        jsStreamInfo_Destroy(si);
        if (leader < 0) ch_sleep_ms(100);
    }
    return leader;
}

int nh_cluster_stream_current(nh_cluster *c, const char *name, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    for (;;) {
        jsStreamInfo *si = nh_stream_info(c, name);
        int ok = si && si->Cluster && si->Cluster->Leader &&
                 si->Cluster->ReplicasLen == NH_CLUSTER_SIZE - 1;
        for (int i = 0; ok && i < si->Cluster->ReplicasLen; i++) {
            const jsPeerInfo *p = si->Cluster->Replicas[i];
            if (!p->Current || p->Offline) ok = 0;
        }
        jsStreamInfo_Destroy(si);
        if (ok) return 1;
        if (ch_now_ms() > deadline) return 0;
        ch_sleep_ms(200);
    }
}

void nh_stream_describe(nh_cluster *c, const char *name)
{
    jsStreamInfo *si = nh_stream_info(c, name);
    if (!si) {
        fprintf(stderr, "stream %s: no answer\n", name);
        return;
    }
    fprintf(stderr, "stream %s: %llu messages, sequences %llu..%llu, leader %s\n", name,
            (unsigned long long)si->State.Msgs, (unsigned long long)si->State.FirstSeq,
            (unsigned long long)si->State.LastSeq,
            si->Cluster && si->Cluster->Leader ? si->Cluster->Leader : "(none)");
    for (int i = 0; si->Cluster && i < si->Cluster->ReplicasLen; i++) {
        const jsPeerInfo *p = si->Cluster->Replicas[i];
        fprintf(stderr, "  replica %s: current %d, offline %d, lag %llu\n", p->Name,
                (int)p->Current, (int)p->Offline, (unsigned long long)p->Lag);
    }
    jsStreamInfo_Destroy(si);
}

void nh_cluster_stop(nh_cluster *c)
{
    for (int i = 0; i < NH_CLUSTER_SIZE; i++)
        nh_server_stop(&c->node[i]);
}

#endif /* OUTBOX_HAVE_NATS */
