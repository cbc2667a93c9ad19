/*
 * test_monitor.c - the relay monitor (src/monitor) against a real relay:
 * a SQLite outbox drained to a scripted webhook server that rejects some
 * messages, with outbox_monitor on an ephemeral loopback port, scraped over
 * HTTP (libcurl) while and after it drains.
 *
 * Checked: every metric family's value against the known counts and
 * `outbox status --json`; histogram counts against the published total;
 * /api/summary against status --json; /api/failed and /api/blocked (with
 * stored text full of <, ", \ that must come back as valid, escaped JSON);
 * retry and drop with the admin token (and 401, 403, 404, 405, 409 without
 * it or on the wrong message); /readyz turning 503 while the webhook server
 * is stopped and 200 once it is back; /healthz; OpenMetrics negotiation;
 * a non-loopback --listen refused without --listen-public; the admin
 * token file's permission check; and `promtool check metrics` on a real
 * scrape (when promtool is installed).  And the exposition's number
 * writer on its own: integral values byte for byte as "%.1f", others to
 * the microsecond.
 */
#include "test.h"

#include "monitor/monitor.h"

#include "support/proc.h"
#include "support/tmp.h"
#include "support/webhook.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#ifdef OUTBOX_HAVE_CURL
#include <curl/curl.h>
#endif

#if defined(OUTBOX_HAVE_CURL) && defined(OUTBOX_HAVE_MHD)

#define TOKEN "s3cret-token"
/* Stored text that must reach the JSON escaped. */
#define XSS_AGGREGATE "<script>alert(1)</script>\"\\x"

/* ------------------------------------------------------------------------
 * HTTP client
 * ---------------------------------------------------------------------- */

typedef struct http_reply {
    long status;
    char *body;
    size_t len;
    char content_type[128];
    char www_authenticate[64];
    char allow[64];
} http_reply;

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
    http_reply *r = user;
    char *nb = realloc(r->body, r->len + size * n + 1);
    ASSERT(nb != NULL);
    memcpy(nb + r->len, p, size * n);
    r->len += size * n;
    nb[r->len] = '\0';
    r->body = nb;
    return size * n;
}

static void header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    if (len > nlen + 1 && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
        const char *v = line + nlen + 1;
        size_t vlen = len - nlen - 1;
        while (vlen > 0 && *v == ' ')
            v++, vlen--;
        while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'))
            vlen--;
        snprintf(out, cap, "%.*s", (int)vlen, v);
    }
}

static size_t on_header(char *p, size_t size, size_t n, void *user)
{
    http_reply *r = user;
    header_value(p, size * n, "Content-Type", r->content_type, sizeof r->content_type);
    header_value(p, size * n, "WWW-Authenticate", r->www_authenticate, sizeof r->www_authenticate);
    header_value(p, size * n, "Allow", r->allow, sizeof r->allow);
    return size * n;
}

/* method path on 127.0.0.1:port, with up to two extra header lines. */
static void http(http_reply *r, const char *method, unsigned port, const char *path, const char *h1,
                 const char *h2)
{
    CURL *c = curl_easy_init();
    struct curl_slist *headers = NULL;
    char url[300];
    CURLcode rc;

    memset(r, 0, sizeof *r);
    ASSERT(c != NULL);
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", port, path);
    if (h1) headers = curl_slist_append(headers, h1);
    if (h2) headers = curl_slist_append(headers, h2);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0) curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    rc = curl_easy_perform(c);
    if (rc != CURLE_OK) TEST_FAIL_("%s %s: %s", method, url, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->body == NULL) r->body = calloc(1, 1);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
}

static json_t *http_json(unsigned port, const char *path, long want_status)
{
    http_reply r;
    json_error_t jerr;
    json_t *j;
    http(&r, "GET", port, path, NULL, NULL);
    if (r.status != want_status) TEST_FAIL_("GET %s: %ld %s", path, r.status, r.body);
    ASSERT_STREQ(r.content_type, "application/json");
    j = json_loads(r.body, 0, &jerr);
    if (j == NULL) TEST_FAIL_("GET %s: not JSON (%s): %s", path, jerr.text, r.body);
    free(r.body);
    return j;
}

/* ------------------------------------------------------------------------
 * Exposition parsing: one sample by name and labels
 * ---------------------------------------------------------------------- */

/* The value of the sample `name` whose label set contains every
 * "k=\"v\"" of labels (comma-separated, may be ""); NAN when absent. */
static double metric(const char *text, const char *name, const char *labels)
{
    const char *line = text;
    size_t nlen = strlen(name);
    while (line && *line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (line[0] != '#' && strncmp(line, name, nlen) == 0 &&
            (line[nlen] == '{' || line[nlen] == ' ')) {
            char buf[2048], want[512], *tok, *save = NULL;
            int all = 1;
            snprintf(buf, sizeof buf, "%.*s", (int)len, line);
            snprintf(want, sizeof want, "%s", labels);
            for (tok = strtok_r(want, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                if (!strstr(buf, tok)) all = 0;
            if (all) return strtod(strrchr(buf, ' ') + 1, NULL);
        }
        line = end ? end + 1 : NULL;
    }
    return NAN;
}

static char *scrape(unsigned port)
{
    http_reply r;
    http(&r, "GET", port, "/metrics", NULL, NULL);
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    return r.body;
}

/* ------------------------------------------------------------------------
 * The scenario
 * ---------------------------------------------------------------------- */

typedef struct script_cfg {
    atomic_int accept_all; /* answer 200 to everything */
} script_cfg;

/* 400 (rejected for good) for type Reject, 200 otherwise. */
static void script(void *user, const sv_request *rq, int n, sv_action *act)
{
    script_cfg *cfg = user;
    char type[64];
    (void)n;
    sv_header(rq->head, "ce-type", type, sizeof type);
    if (!atomic_load(&cfg->accept_all) && strcmp(type, "Reject") == 0) {
        act->status = 400;
        snprintf(act->body, sizeof act->body, "refused: <b>\"bad\"</b> \\ payload");
    } else {
        act->status = 200;
    }
}

/* status --json of the store, parsed. */
static json_t *status_json(const char *db)
{
    char store[700], out[CH_PATH];
    const char *argv[] = {test_outbox_bin(), "status", "--store", store, "--json", NULL};
    json_error_t jerr;
    json_t *j;
    snprintf(store, sizeof store, "sqlite:%s", db);
    ch_path(out, "status.json");
    ASSERT_EQ(ch_run(argv, NULL, out, test_path("status.err"), 30000), 0);
    j = json_load_file(out, 0, &jerr);
    if (j == NULL) TEST_FAIL_("status --json: %s", jerr.text);
    return j;
}

static int64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) TEST_FAIL_("\"%s\" is not an integer", key);
    return (int64_t)json_integer_value(v);
}

/* Waits until GET path answers want_status (fails after timeout_ms). */
static void wait_status(unsigned port, const char *path, long want_status, int64_t timeout_ms)
{
    int64_t end = ch_now_ms() + timeout_ms;
    for (;;) {
        http_reply r;
        http(&r, "GET", port, path, NULL, NULL);
        free(r.body);
        if (r.status == want_status) return;
        if (ch_now_ms() > end)
            TEST_FAIL_("GET %s: still %ld, not %ld", path, r.status, want_status);
        ch_sleep_ms(50);
    }
}

/* Waits for a store refresh that started after now (refresh every 100 ms,
 * or 50 times the last count's duration when longer: a count slowed to
 * 0.3 s by a loaded machine and AddressSanitizer holds the next one back
 * 15 s). */
static void wait_refresh(unsigned port)
{
    int64_t end = ch_now_ms() + 40000;
    struct timespec ts;
    double since;
    clock_gettime(CLOCK_REALTIME, &ts);
    since = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    for (;;) {
        json_t *s = http_json(port, "/api/summary", 200);
        double at = json_real_value(json_object_get(s, "refreshed_at"));
        json_decref(s);
        if (at > since) return;
        if (ch_now_ms() > end) TEST_FAIL_("the monitor did not refresh its store counts");
        ch_sleep_ms(50);
    }
}

TEST(monitor_end_to_end)
{
    char db[CH_PATH], url[200], promfile[CH_PATH], cmd[800];
    char reject_ids[5][37], held_ids[2][37], agg[64];
    outbox_monitor_options mo;
    outbox_monitor *mon = NULL, *readonly = NULL;
    outbox_relay_options o;
    outbox_error err = {0, ""};
    script_cfg cfg;
    sv_server s;
    wh_relay r;
    sqlite3 *conn;
    json_t *st, *sum, *store, *failed, *blocked, *relay0;
    http_reply h;
    char *text, auth[128];
    const char *rl;
    unsigned port, sv_port;
    int64_t before_ms;
    double between_s;
    int i, k;

    atomic_store(&cfg.accept_all, 0);
    ch_path(db, "monitor.db");
    wh_store_init(db);
    ASSERT_EQ(sqlite3_open(db, &conn), SQLITE_OK);
    /* 30 messages that go through, on 10 aggregates; 5 rejected ones, each
     * on an aggregate of its own (one with an id full of markup); 2 more on
     * the first rejected one's aggregate, held behind it. */
    for (k = 0; k < 3; k++)
        for (i = 0; i < 10; i++) {
            snprintf(agg, sizeof agg, "a%d", i);
            wh_enqueue(conn, "Ok", "Order", agg, "{}", NULL, NULL);
        }
    for (i = 0; i < 5; i++) {
        snprintf(agg, sizeof agg, "r%d", i);
        wh_enqueue(conn, "Reject", "Order", i == 4 ? XSS_AGGREGATE : agg, "{}", NULL,
                   reject_ids[i]);
    }
    wh_enqueue(conn, "Ok", "Order", "r0", "{}", NULL, held_ids[0]);
    wh_enqueue(conn, "Ok", "Order", "r0", "{}", NULL, held_ids[1]);
    sqlite3_close(conn);

    sv_start(&s, 0, script, &cfg);
    sv_port = s.port;
    snprintf(url, sizeof url, "http://127.0.0.1:%u/hook", sv_port);
    outbox_relay_options_init(&o);
    o.name = "relay-1";
    o.batch_size = 8;
    o.backoff_base_ms = 20;
    o.backoff_max_ms = 200;
    o.poll_interval_ms = 100;
    wh_relay_start(&r, db, url, &o);

    outbox_monitor_options_init(&mo);
    mo.listen = "127.0.0.1:0";
    mo.admin_token = TOKEN;
    mo.refresh_ms = 100;
    ASSERT_OK(outbox_monitor_new(&mon, &r.relay, 1, &mo, &err), &err);
    port = outbox_monitor_port(mon);
    ASSERT(port > 0);

    /* A scrape during the drain parses and has the relay. */
    text = scrape(port);
    ASSERT(!isnan(metric(text, "outbox_messages_published_total", "relay=\"relay-1\"")));
    free(text);

    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status = 'failed'", 5, 30000);
    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status = 'pending'", 2, 30000);
    ch_sleep_ms(200); /* the relay records, then idles */
    wait_refresh(port);

    /* Every family against the known counts and status --json (the oldest
     * age grows between the two by the time that passes). */
    before_ms = ch_now_ms();
    st = status_json(db);
    text = scrape(port);
    between_s = (double)(ch_now_ms() - before_ms) / 1000.0;
    rl = "relay=\"relay-1\"";
    ASSERT_EQ(metric(text, "outbox_messages_published_total", rl), 30);
    ASSERT_EQ(metric(text, "outbox_publish_attempts_total", "outcome=\"ok\""), 30);
    ASSERT_EQ(metric(text, "outbox_publish_attempts_total", "outcome=\"failed\""), 5);
    ASSERT_EQ(metric(text, "outbox_publish_attempts_total", "outcome=\"retry\""), 0);
    ASSERT_EQ(metric(text, "outbox_publish_attempts_total", "outcome=\"outage\""), 0);
    ASSERT_EQ(metric(text, "outbox_messages_failed_total", "reason=\"rejected\""), 5);
    ASSERT_EQ(metric(text, "outbox_messages_failed_total", "reason=\"max_attempts\""), 0);
    ASSERT_EQ(metric(text, "outbox_messages_failed_total", "reason=\"quarantined\""), 0);
    ASSERT_EQ(metric(text, "outbox_messages_pending", rl), jint(st, "pending"));
    ASSERT_EQ(metric(text, "outbox_messages_pending", rl), 2);
    ASSERT_EQ(metric(text, "outbox_messages_failed", rl), jint(st, "failed"));
    ASSERT_EQ(metric(text, "outbox_messages_failed", rl), 5);
    ASSERT_EQ(metric(text, "outbox_messages_blocked", rl), jint(st, "blocked"));
    ASSERT_EQ(metric(text, "outbox_messages_blocked", rl), 2);
    ASSERT_EQ(metric(text, "outbox_aggregates_blocked", rl), jint(st, "aggregates_blocked"));
    ASSERT_EQ(metric(text, "outbox_aggregates_blocked", rl), 1);
    {
        double diff = metric(text, "outbox_oldest_pending_age_seconds", rl) -
                      (double)jint(st, "oldest_pending_age_ms") / 1000.0;
        if (diff < -1.0 || diff > between_s + 1.0)
            TEST_FAIL_("oldest pending age: metric - status = %.3f s, %.3f s apart", diff,
                       between_s);
    }
    ASSERT_EQ(metric(text, "outbox_commit_to_publish_seconds_count", rl), 30);
    ASSERT_EQ(metric(text, "outbox_commit_to_publish_seconds_bucket", "le=\"+Inf\""), 30);
    ASSERT_EQ(metric(text, "outbox_publish_duration_seconds_count", rl),
              metric(text, "outbox_batches_total", rl));
    ASSERT_EQ(metric(text, "outbox_batch_messages_count", rl),
              metric(text, "outbox_batches_total", rl));
    ASSERT_GE(metric(text, "outbox_batch_messages_sum", rl), 35); /* and the held, if claimed */
    ASSERT_EQ(metric(text, "outbox_destination_up", rl), 1);
    ASSERT_EQ(metric(text, "outbox_destination_backoff_seconds", rl), 0);
    ASSERT_EQ(metric(text, "outbox_relay_partitions_owned", rl), 1);
    ASSERT_EQ(metric(text, "outbox_store_errors_total", rl), 0);
    ASSERT_EQ(metric(text, "outbox_relay_info", "version=\"" OUTBOX_VERSION_STRING "\""), 1);
    ASSERT(!isnan(metric(text, "outbox_relay_info", "destination=\"http://127.0.0.1:")));
    ASSERT_GE(metric(text, "process_open_fds", ""), 3);
    ASSERT_GE(metric(text, "process_resident_memory_bytes", ""), 1);
    ASSERT_GE(metric(text, "process_start_time_seconds", ""), 1e9);
    ASSERT(!isnan(metric(text, "process_cpu_seconds_total", "")));
    /* No message, aggregate or type in a label. */
    ASSERT(strstr(text, "\"r0\"") == NULL && strstr(text, "alert(") == NULL &&
           strstr(text, "\"Reject\"") == NULL);

    /* promtool on this real scrape. */
    ch_path(promfile, "scrape.prom");
    {
        FILE *f = fopen(promfile, "w");
        ASSERT(f != NULL);
        fputs(text, f);
        fclose(f);
    }
    free(text);
    if (system("command -v promtool >/dev/null 2>&1") == 0) {
        snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", promfile);
        ASSERT_EQ(system(cmd), 0);
    } else {
        fprintf(stderr, "promtool not installed: skipping promtool check metrics\n");
    }

    /* /api/summary == status --json. */
    sum = http_json(port, "/api/summary", 200);
    store = json_object_get(sum, "store");
    {
        static const char *const keys[] = {"schema_version", "pending", "pending_due",
                                           "retrying",       "blocked", "aggregates_blocked",
                                           "sent",           "failed"};
        for (i = 0; i < (int)(sizeof keys / sizeof keys[0]); i++)
            if (jint(store, keys[i]) != jint(st, keys[i]))
                TEST_FAIL_("summary store.%s %lld != status %lld", keys[i],
                           (long long)jint(store, keys[i]), (long long)jint(st, keys[i]));
    }
    ASSERT_STREQ(json_string_value(json_object_get(json_object_get(store, "relay"), "owner")),
                 "relay-1");
    ASSERT(json_is_true(json_object_get(sum, "admin")));
    relay0 = json_array_get(json_object_get(sum, "relays"), 0);
    ASSERT_EQ(jint(relay0, "published"), 30);
    ASSERT_EQ(jint(relay0, "failed"), 5);
    ASSERT_STREQ(json_string_value(json_object_get(relay0, "state")), "running");
    ASSERT(json_is_true(json_object_get(relay0, "destination_up")));
    ASSERT_CONTAINS(json_string_value(json_object_get(relay0, "last_error")), "400");
    json_decref(sum);
    json_decref(st);

    /* /api/failed: the stored markup comes back exactly (valid, escaped JSON). */
    failed = http_json(port, "/api/failed?limit=10", 200);
    ASSERT_EQ(jint(failed, "total"), 5);
    ASSERT_EQ(json_array_size(json_object_get(failed, "messages")), 5);
    {
        int found = 0;
        size_t idx;
        json_t *m;
        json_array_foreach(json_object_get(failed, "messages"), idx, m)
        {
            if (strcmp(json_string_value(json_object_get(m, "aggregate_id")), XSS_AGGREGATE) == 0)
                found = 1;
            ASSERT_EQ(jint(m, "attempts"), 1);
            ASSERT_CONTAINS(json_string_value(json_object_get(m, "last_error")), "400");
        }
        ASSERT(found);
    }
    json_decref(failed);
    http(&h, "GET", port, "/api/failed?limit=5000", NULL, NULL);
    ASSERT_EQ(h.status, 400);
    free(h.body);

    /* /api/blocked: r0, held by its Failed message. */
    blocked = http_json(port, "/api/blocked", 200);
    ASSERT_EQ(jint(blocked, "total"), 1);
    {
        json_t *a = json_array_get(json_object_get(blocked, "aggregates"), 0);
        ASSERT_STREQ(json_string_value(json_object_get(a, "aggregate_id")), "r0");
        ASSERT_STREQ(json_string_value(json_object_get(a, "failed_id")), reject_ids[0]);
        ASSERT_EQ(jint(a, "held"), 2);
    }
    json_decref(blocked);

    /* Retry and drop: refused without the token, with a wrong one, by GET,
     * on an unknown or a pending message. */
    snprintf(cmd, sizeof cmd, "/api/messages/%s/retry", reject_ids[0]);
    http(&h, "POST", port, cmd, NULL, NULL);
    ASSERT_EQ(h.status, 401);
    ASSERT_STREQ(h.www_authenticate, "Bearer");
    free(h.body);
    http(&h, "POST", port, cmd, "Authorization: Bearer wrong-token-xx", NULL);
    ASSERT_EQ(h.status, 401);
    free(h.body);
    http(&h, "GET", port, cmd, "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 405);
    ASSERT_STREQ(h.allow, "POST");
    free(h.body);
    http(&h, "POST", port, "/api/messages/01890000-0000-7000-8000-000000000000/retry",
         "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 404);
    free(h.body);
    snprintf(auth, sizeof auth, "/api/messages/%s/drop", held_ids[0]);
    http(&h, "POST", port, auth, "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 409);
    free(h.body);

    /* With the token: the retried message and the two held behind it are
     * published; the dropped one is gone. */
    atomic_store(&cfg.accept_all, 1);
    http(&h, "POST", port, cmd, "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 200);
    ASSERT_STREQ(h.body, "{\"ok\":true,\"count\":1}");
    free(h.body);
    snprintf(cmd, sizeof cmd, "/api/messages/%s/drop", reject_ids[4]);
    http(&h, "POST", port, cmd, "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 200);
    free(h.body);
    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status = 'pending'", 0, 30000);
    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status = 'failed'", 3, 30000);
    ch_sleep_ms(200);
    text = scrape(port);
    ASSERT_EQ(metric(text, "outbox_messages_published_total", rl), 33);
    ASSERT_EQ(metric(text, "outbox_commit_to_publish_seconds_count", rl), 33);
    free(text);

    /* A monitor without a token is read-only. */
    mo.admin_token = NULL;
    ASSERT_OK(outbox_monitor_new(&readonly, &r.relay, 1, &mo, &err), &err);
    snprintf(cmd, sizeof cmd, "/api/messages/%s/retry", reject_ids[1]);
    http(&h, "POST", outbox_monitor_port(readonly), cmd, "Authorization: Bearer " TOKEN, NULL);
    ASSERT_EQ(h.status, 403);
    ASSERT_CONTAINS(h.body, "read-only");
    free(h.body);
    outbox_monitor_free(readonly);

    /* Health and readiness; the destination goes down and comes back. */
    wait_status(port, "/healthz", 200, 5000);
    wait_status(port, "/readyz", 200, 5000);
    sv_stop(&s);
    ASSERT_EQ(sqlite3_open(db, &conn), SQLITE_OK);
    wh_enqueue(conn, "Ok", "Order", "late", "{}", NULL, NULL);
    sqlite3_close(conn);
    wait_status(port, "/readyz", 503, 20000);
    {
        json_t *ready = http_json(port, "/readyz", 503);
        json_t *r0 = json_array_get(json_object_get(ready, "relays"), 0);
        ASSERT_STREQ(json_string_value(json_object_get(ready, "status")), "not ready");
        ASSERT_CONTAINS(json_string_value(json_object_get(r0, "destination")), "down: ");
        json_decref(ready);
    }
    text = scrape(port);
    ASSERT_EQ(metric(text, "outbox_destination_up", rl), 0);
    ASSERT(metric(text, "outbox_destination_backoff_seconds", rl) > 0);
    ASSERT_GE(metric(text, "outbox_publish_attempts_total", "outcome=\"outage\""), 1);
    free(text);
    wait_status(port, "/healthz", 200, 5000); /* alive while backing off */
    sv_start(&s, sv_port, script, &cfg);
    wait_status(port, "/readyz", 200, 20000);
    wh_wait_count(db, "SELECT count(*) FROM outbox WHERE status = 'pending'", 0, 30000);

    /* OpenMetrics when asked for. */
    http(&h, "GET", port, "/metrics", "Accept: application/openmetrics-text; version=1.0.0", NULL);
    ASSERT_EQ(h.status, 200);
    ASSERT_STREQ(h.content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    ASSERT_CONTAINS(h.body, "# TYPE outbox_messages_published counter\n");
    ASSERT_CONTAINS(h.body, "\noutbox_messages_published_total{");
    ASSERT(h.len > 6 && strcmp(h.body + h.len - 6, "# EOF\n") == 0);
    free(h.body);

    /* The console page, with its headers; anything else is a JSON 404. */
    http(&h, "GET", port, "/", NULL, NULL);
    ASSERT_EQ(h.status, 200);
    ASSERT_STREQ(h.content_type, "text/html; charset=utf-8");
    ASSERT_CONTAINS(h.body, "<html");
    free(h.body);
    http(&h, "GET", port, "/api/summary", "Host: rebound.example.com:9464", NULL);
    ASSERT_EQ(h.status, 403); /* a DNS-rebinding page */
    free(h.body);
    http(&h, "GET", port, "/api/summary", "Host: localhost:9464", NULL);
    ASSERT_EQ(h.status, 200);
    free(h.body);
    http(&h, "GET", port, "/nothing-here", NULL, NULL);
    ASSERT_EQ(h.status, 404);
    ASSERT_STREQ(h.content_type, "application/json");
    free(h.body);

    {
        json_t *hist = http_json(port, "/api/history", 200);
        ASSERT_EQ(jint(hist, "interval_seconds"), 10);
        ASSERT_GE(json_array_size(json_object_get(hist, "points")), 1);
        json_decref(hist);
    }

    outbox_monitor_free(mon);
    wh_relay_stop(&r);
    sv_stop(&s);
}

/* A non-loopback address needs allow_public (--listen-public). */
TEST(listen_address_checks)
{
    outbox_monitor_options mo;
    outbox_monitor *mon = NULL;
    outbox_relay *relay = NULL;
    outbox_relay_options o;
    outbox_error err = {0, ""};
    char db[CH_PATH], store[700];

    ch_path(db, "listen.db");
    wh_store_init(db);
    snprintf(store, sizeof store, "sqlite:%s", db);
    outbox_relay_options_init(&o);
    ASSERT_OK(outbox_relay_new(&relay, store, "discard:", &o, &err), &err);
    outbox_monitor_options_init(&mo);
    mo.listen = "0.0.0.0:0";
    ASSERT_EQ(outbox_monitor_new(&mon, &relay, 1, &mo, &err), OUTBOX_ECONFIG);
    ASSERT_STREQ(err.message, "--listen 0.0.0.0:0 is not a loopback address: pass "
                              "--listen-public to serve metrics on it");
    ASSERT(mon == NULL);
    mo.allow_public = 1;
    ASSERT_OK(outbox_monitor_new(&mon, &relay, 1, &mo, &err), &err);
    outbox_monitor_free(mon);
    mo.allow_public = 0;
    mo.listen = "[::1]:0";
    ASSERT_OK(outbox_monitor_new(&mon, &relay, 1, &mo, &err), &err);
    outbox_monitor_free(mon);
    mo.listen = "127.0.0.1";
    ASSERT_EQ(outbox_monitor_new(&mon, &relay, 1, &mo, &err), OUTBOX_ECONFIG);
    mo.listen = "127.0.0.1:70000";
    ASSERT_EQ(outbox_monitor_new(&mon, &relay, 1, &mo, &err), OUTBOX_ECONFIG);
    outbox_relay_free(relay);

    /* The CLI: exit 2 with the same words; a token file others can read. */
    {
        char token[CH_PATH], errfile[CH_PATH], *msg;
        const char *argv[] = {test_outbox_bin(), "relay",    "--store",      store, "--to",
                              "discard:",        "--listen", "0.0.0.0:9464", NULL};
        const char *argv2[] = {test_outbox_bin(),
                               "relay",
                               "--store",
                               store,
                               "--to",
                               "discard:",
                               "--listen",
                               "127.0.0.1:0",
                               "--admin-token-file",
                               token,
                               NULL};
        FILE *f;
        ch_path(errfile, "cli.err");
        ASSERT_EQ(ch_run(argv, NULL, NULL, errfile, 30000), 2);
        msg = test_read_file(errfile, NULL);
        ASSERT_CONTAINS(msg, "--listen 0.0.0.0:9464 is not a loopback address: pass "
                             "--listen-public to serve metrics on it");
        free(msg);
        ch_path(token, "token");
        f = fopen(token, "w");
        ASSERT(f != NULL);
        fputs(TOKEN "\n", f);
        fclose(f);
        chmod(token, 0644);
        ASSERT_EQ(ch_run(argv2, NULL, NULL, errfile, 30000), 2);
        msg = test_read_file(errfile, NULL);
        ASSERT_CONTAINS(msg, "chmod 600");
        ASSERT(strstr(msg, TOKEN) == NULL);
        free(msg);
    }
}

/* The value written for v. */
static const char *written(outbox_buf *b, double v)
{
    outbox__buf_reset(b);
    outbox__monitor_write_double(b, v);
    ASSERT(!b->oom);
    return b->data;
}

TEST(number_format)
{
    static const double integral[] = {
        0.0,    1.0,        2.0,         10.0,         512.0,
        2000.0, 14221312.0, 187469824.0, 4294967296.0, 999999999999999.0,
        -3.0,   -0.0};
    static const struct {
        double v;
        const char *text;
    } fixed[] = {
        {0.005, "0.005"},
        {0.25, "0.25"},
        {2.5, "2.5"},
        {0.000447, "0.000447"},
        {0.00202, "0.00202"},
        {152.90768, "152.90768"},
        {299691.384, "299691.384"},
        {1796576617.555373, "1796576617.555373"},
        {0.0000005, "0.000001"}, /* rounded to the microsecond */
        {1.9999999, "2.0"},
        {-0.5, "-0.5"},
        {1e-9, "1e-09"},                   /* below a microsecond: "%.9g" */
        {12345678901.5, "1.23456789e+10"}, /* past FIXED_LIMIT: "%.9g" */
        {1e300, "1e+300"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {NAN, "NaN"},
    };
    outbox_buf b;
    char expect[64];
    size_t i;
    unsigned seed = 12345;

    outbox__buf_init(&b);
    for (i = 0; i < sizeof integral / sizeof integral[0]; i++) {
        snprintf(expect, sizeof expect, "%.1f", integral[i]);
        ASSERT_STREQ(written(&b, integral[i]), expect);
    }
    for (i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        ASSERT_STREQ(written(&b, fixed[i].v), fixed[i].text);
    /* Microsecond times up to FIXED_LIMIT come back whole. */
    for (i = 0; i < 100000; i++) {
        uint64_t us;
        double v;
        seed = seed * 1103515245u + 12345u;
        us = ((uint64_t)seed << 20 ^ (uint64_t)(seed >> 7)) % 4294967296000000ULL;
        v = (double)us / 1e6;
        snprintf(expect, sizeof expect, "%.6f", v);
        while (strchr(expect, '.') && expect[strlen(expect) - 1] == '0' &&
               expect[strlen(expect) - 2] != '.')
            expect[strlen(expect) - 1] = '\0';
        ASSERT_STREQ(written(&b, v), expect);
    }
    outbox__buf_free(&b);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    RUN(number_format);
    RUN(listen_address_checks);
    RUN(monitor_end_to_end);
    curl_global_cleanup();
    return 0;
}

#else

int main(void)
{
    printf("skip: this build has no libcurl or no libmicrohttpd\n");
    return 77;
}

#endif
