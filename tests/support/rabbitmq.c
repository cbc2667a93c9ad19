/*
 * rabbitmq.c - a real RabbitMQ broker for the tests (see rabbitmq.h).
 */
#include "support/rabbitmq.h"

#include "support/chaos.h"

#ifdef OUTBOX_HAVE_RABBITMQ

#include <amqp_tcp_socket.h>

#include <signal.h>
#include <sys/stat.h>

#define EPMD_BIN "/usr/bin/epmd"

static rmh_server *current;

const char *rmh_available(void)
{
    if (access(RMH_SERVER_SCRIPT, X_OK) != 0 || access(EPMD_BIN, X_OK) != 0)
        return RMH_SERVER_SCRIPT " or " EPMD_BIN " not found: install the rabbitmq-server package "
                                 "to run the RabbitMQ tests";
    return NULL;
}

static void cleanup(void)
{
    if (current != NULL) rmh_stop(current);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) TEST_FAIL_("cannot write %s", path);
}

/* A login on a fresh connection: NULL when it fails (the broker is not
 * up yet), else the connection with channel 1 open. */
static amqp_connection_state_t try_connect(const rmh_server *s)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(c);
    struct timeval tv = {5, 0};
    if (sock == NULL || amqp_socket_open_noblock(sock, "127.0.0.1", s->port, &tv) != 0) {
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);
    if (amqp_login(c, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest")
            .reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_channel_open(c, 1);
    if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

static void start_epmd(rmh_server *s)
{
    char port[16];
    const char *argv[] = {EPMD_BIN, "-port", port, "-address", "127.0.0.1", NULL};
    snprintf(port, sizeof port, "%d", s->epmd_port);
    s->epmd_pid = ch_spawn(argv, NULL, s->log, s->log);
    for (int64_t deadline = ch_now_ms() + 10000; !ch_port_open(s->epmd_port);) {
        if (!ch_alive(s->epmd_pid) || ch_now_ms() > deadline) {
            ch_dump("epmd/rabbitmq log", s->log);
            TEST_FAIL_("epmd did not listen on port %d", s->epmd_port);
        }
        ch_sleep_ms(20);
    }
}

/* rabbitmq.conf, written at each start so that a restart takes a new TLS
 * certificate. */
static void write_config(const rmh_server *s)
{
    char path[300], text[512 + 3 * CH_PATH];
    int n;
    snprintf(path, sizeof path, "%s/rabbitmq.conf", s->dir);
    n = snprintf(text, sizeof text,
                 "listeners.tcp.default = 127.0.0.1:%d\n"
                 "log.console = true\n"
                 "log.console.level = warning\n"
                 "log.file = false\n"
                 "disk_free_limit.absolute = 1MB\n",
                 s->port);
    if (s->tls_port > 0)
        snprintf(text + n, sizeof text - (size_t)n,
                 "listeners.ssl.default = 127.0.0.1:%d\n"
                 "ssl_options.certfile = %s\n"
                 "ssl_options.keyfile = %s\n"
                 "ssl_options.cacertfile = %s\n"
                 "ssl_options.verify = verify_none\n"
                 "ssl_options.fail_if_no_peer_cert = false\n",
                 s->tls_port, s->tls_cert, s->tls_key, s->tls_ca);
    write_file(path, text);
}

void rmh_start(rmh_server *s)
{
    char conf[300], plugins[300];
    char env_text[16][400];
    const char *env[17];
    const char *why = rmh_available();
    int n = 0;

    if (why) SKIP("%s", why);
    if (!s->dir[0]) {
        ch_tempdir(s->dir, sizeof s->dir, "outbox-rabbitmq");
        snprintf(s->log, sizeof s->log, "%s/rabbitmq.log", s->dir);
        s->port = ch_free_port();
        s->dist_port = ch_free_port();
        s->epmd_port = ch_free_port();
        if (s->tls_cert[0]) s->tls_port = ch_free_port();
        snprintf(s->node, sizeof s->node, "outbox-test-%d@localhost", (int)getpid());
        snprintf(s->url, sizeof s->url, "amqp://guest:guest@127.0.0.1:%d", s->port);
        snprintf(plugins, sizeof plugins, "%s/enabled_plugins", s->dir);
        write_file(plugins, "[].\n");
        current = s;
        atexit(cleanup);
    }
    write_config(s);
    snprintf(conf, sizeof conf, "%s/rabbitmq.conf", s->dir);
    snprintf(plugins, sizeof plugins, "%s/enabled_plugins", s->dir);
    if (s->epmd_pid <= 0) start_epmd(s);

#define ENV(...) (snprintf(env_text[n], sizeof env_text[n], __VA_ARGS__), env[n] = env_text[n], n++)
    ENV("HOME=%s", s->dir);
    ENV("RABBITMQ_NODENAME=%s", s->node);
    ENV("RABBITMQ_NODE_IP_ADDRESS=127.0.0.1");
    ENV("RABBITMQ_NODE_PORT=%d", s->port);
    ENV("RABBITMQ_DIST_PORT=%d", s->dist_port);
    ENV("ERL_EPMD_PORT=%d", s->epmd_port);
    ENV("RABBITMQ_MNESIA_BASE=%s/mnesia", s->dir);
    ENV("RABBITMQ_LOG_BASE=%s/log", s->dir);
    ENV("RABBITMQ_LOGS=-");
    ENV("RABBITMQ_CONFIG_FILE=%s", conf);
    ENV("RABBITMQ_ADVANCED_CONFIG_FILE=%s/advanced.config", s->dir);
    ENV("RABBITMQ_CONF_ENV_FILE=%s/rabbitmq-env.conf", s->dir);
    ENV("RABBITMQ_ENABLED_PLUGINS_FILE=%s", plugins);
    ENV("RABBITMQ_PID_FILE=%s/pid", s->dir);
    /* The script execs the VM (no signal-forwarding shell in between) and
     * the VM does not read stdin. */
    ENV("RABBITMQ_ALLOW_INPUT=1");
    ENV("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-noinput");
#undef ENV
    env[n] = NULL;
    {
        const char *argv[] = {RMH_SERVER_SCRIPT, NULL};
        s->pid = ch_spawn(argv, env, s->log, s->log);
    }
    for (int64_t deadline = ch_now_ms() + 180000;;) {
        amqp_connection_state_t c;
        if (!ch_alive(s->pid)) {
            ch_dump("rabbitmq log", s->log);
            TEST_FAIL_("rabbitmq-server exited at start (port %d)", s->port);
        }
        /* The TLS listener is waited for too: a test connects to it at
         * once. */
        if (ch_port_open(s->port) && (s->tls_port == 0 || ch_port_open(s->tls_port)) &&
            (c = try_connect(s)) != NULL) {
            amqp_destroy_connection(c);
            break;
        }
        if (ch_now_ms() > deadline) {
            ch_dump("rabbitmq log", s->log);
            TEST_FAIL_("rabbitmq-server did not accept a login on port %d (TLS port %d) within "
                       "180 s",
                       s->port, s->tls_port);
        }
        ch_sleep_ms(250);
    }
}

void rmh_start_tls(rmh_server *s, const char *cert, const char *key, const char *ca)
{
    memset(s, 0, sizeof *s);
    snprintf(s->tls_cert, sizeof s->tls_cert, "%s", cert);
    snprintf(s->tls_key, sizeof s->tls_key, "%s", key);
    snprintf(s->tls_ca, sizeof s->tls_ca, "%s", ca);
    rmh_start(s);
}

void rmh_restart_tls(rmh_server *s, const char *cert, const char *key)
{
    if (s->pid > 0) ch_stop(s->pid, SIGTERM, 30000);
    s->pid = 0;
    snprintf(s->tls_cert, sizeof s->tls_cert, "%s", cert);
    snprintf(s->tls_key, sizeof s->tls_key, "%s", key);
    rmh_start(s);
}

void rmh_kill(rmh_server *s)
{
    if (s->pid > 0) ch_kill9(s->pid);
    s->pid = 0;
}

void rmh_stop(rmh_server *s)
{
    if (s->pid > 0) ch_stop(s->pid, SIGTERM, 30000);
    s->pid = 0;
    if (s->epmd_pid > 0) ch_stop(s->epmd_pid, SIGTERM, 5000);
    s->epmd_pid = 0;
    if (s->dir[0]) ch_rmtree(s->dir);
    s->dir[0] = '\0';
    if (current == s) current = NULL;
}

void rmh_forget(void)
{
    current = NULL;
}

amqp_connection_state_t rmh_connect(const rmh_server *s)
{
    amqp_connection_state_t c = NULL;
    /* Just after a restart the broker may refuse a moment longer. */
    for (int tries = 0; tries < 100 && c == NULL; tries++) {
        c = try_connect(s);
        if (c == NULL) ch_sleep_ms(100);
    }
    if (c == NULL) TEST_FAIL_("cannot log in to RabbitMQ on port %d", s->port);
    return c;
}

static void check_reply(amqp_connection_state_t c, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        TEST_FAIL_("%s: reply type %d, library error %s", what, (int)r.reply_type,
                   amqp_error_string2(r.library_error));
}

static void disconnect(amqp_connection_state_t c)
{
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

void rmh_declare(const rmh_server *s, const char *exchange, const char *queue,
                 const char *binding_key)
{
    amqp_connection_state_t c = rmh_connect(s);
    amqp_table_entry_t arg;
    amqp_table_t args;
    arg.key = amqp_cstring_bytes("x-queue-type");
    arg.value.kind = AMQP_FIELD_KIND_UTF8;
    arg.value.value.bytes = amqp_cstring_bytes("quorum");
    args.num_entries = 1;
    args.entries = &arg;
    amqp_exchange_declare(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("topic"), 0, 1, 0,
                          0, amqp_empty_table);
    check_reply(c, "exchange.declare");
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    check_reply(c, "queue.declare");
    amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(binding_key), amqp_empty_table);
    check_reply(c, "queue.bind");
    disconnect(c);
}

static int64_t count_on(amqp_connection_state_t c, const char *queue)
{
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    check_reply(c, "queue.declare (passive)");
    return ok ? (int64_t)ok->message_count : -1;
}

int64_t rmh_queue_count(const rmh_server *s, const char *queue)
{
    amqp_connection_state_t c = rmh_connect(s);
    int64_t n = count_on(c, queue);
    disconnect(c);
    return n;
}

void rmh_queue_delete(const rmh_server *s, const char *queue)
{
    amqp_connection_state_t c = rmh_connect(s);
    amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
    check_reply(c, "queue.delete");
    disconnect(c);
}

/* The string value of header key in t, as a NUL-terminated copy in out. */
static const char *header(const amqp_table_t *t, const char *key, char *out, size_t len)
{
    out[0] = '\0';
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len == strlen(key) && memcmp(e->key.bytes, key, e->key.len) == 0 &&
            e->value.kind == AMQP_FIELD_KIND_UTF8)
            snprintf(out, len, "%.*s", (int)e->value.value.bytes.len,
                     (const char *)e->value.value.bytes.bytes);
    }
    return out;
}

int64_t rmh_queue_drain(const rmh_server *s, const char *queue, const char *path)
{
    amqp_connection_state_t c = rmh_connect(s);
    int64_t total = count_on(c, queue), got = 0;
    FILE *f = fopen(path, "a");
    if (!f) TEST_FAIL_("cannot write %s", path);
    if (total > 0) {
        amqp_basic_qos(c, 1, 0, 1000, 0);
        check_reply(c, "basic.qos");
        amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1, 0,
                           amqp_empty_table);
        check_reply(c, "basic.consume");
    }
    while (got < total) {
        amqp_envelope_t env;
        struct timeval tv = {30, 0};
        amqp_rpc_reply_t r;
        char id[64], subject[256];
        json_error_t je;
        json_t *o, *data;
        char *text;
        amqp_maybe_release_buffers(c);
        r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            TEST_FAIL_("reading queue %s: %s after %lld of %lld", queue,
                       amqp_error_string2(r.library_error), (long long)got, (long long)total);
        const amqp_basic_properties_t *p = &env.message.properties;
        snprintf(id, sizeof id, "%.*s",
                 (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? (int)p->message_id.len : 0,
                 (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? (const char *)p->message_id.bytes : "");
        if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
            header(&p->headers, "ce-subject", subject, sizeof subject);
        else
            subject[0] = '\0';
        data = json_loadb(env.message.body.bytes, env.message.body.len, 0, &je);
        o = json_object();
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "subject", json_string(subject));
        json_object_set_new(o, "data", data ? data : json_null());
        text = json_dumps(o, JSON_COMPACT);
        if (!text) TEST_FAIL_("out of memory");
        fprintf(f, "%s\n", text);
        free(text);
        json_decref(o);
        amqp_destroy_envelope(&env);
        got++;
    }
    fclose(f);
    disconnect(c);
    return got;
}

#endif /* OUTBOX_HAVE_RABBITMQ */
