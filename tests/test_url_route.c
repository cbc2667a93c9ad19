/*
 * test_url_route.c - the URL parser the drivers read their settings with,
 * the property tables and their one parser (src/core/props.c), the public
 * driver list, and the subject/topic templates of the broker destinations.
 */
#include "internal.h"
#include "test.h"

#include <stddef.h>

TEST(url_parts)
{
    outbox_url u;
    outbox_error err = {0, ""};
    ASSERT_OK(outbox__url_parse(
                  &u, "NATS://alice:s%40cret@a:4222,b:4222/x%20y?stream=S&subject=o.%7Btype%7D",
                  NULL, &err),
              &err);
    ASSERT_STREQ(u.scheme, "nats");
    ASSERT_STREQ(u.user, "alice");
    ASSERT_STREQ(u.password, "s@cret");
    ASSERT_STREQ(u.hosts, "a:4222,b:4222");
    ASSERT_STREQ(u.path, "x y");
    ASSERT_EQ(u.param_count, 2);
    ASSERT_STREQ(outbox__url_param(&u, "subject"), "o.{type}");
    ASSERT(outbox__url_param(&u, "missing") == NULL);
    ASSERT_EQ(u.params[0].used, 0); /* "stream" was not asked for */
    ASSERT_EQ(u.params[1].used, 1);
    ASSERT_STREQ(outbox__url_param(&u, "stream"), "S");
    ASSERT_EQ(u.params[0].used, 1);
    outbox__url_free(&u);

    ASSERT_OK(outbox__url_parse(&u, "file:/tmp/a b.jsonl", NULL, &err), &err);
    ASSERT_STREQ(u.scheme, "file");
    ASSERT_STREQ(u.hosts, "");
    ASSERT_STREQ(u.path, "/tmp/a b.jsonl");
    ASSERT(u.user == NULL && u.password == NULL);
    outbox__url_free(&u);

    ASSERT_OK(outbox__url_parse(&u, "kafka://k1:9092", NULL, &err), &err);
    ASSERT_STREQ(u.hosts, "k1:9092");
    ASSERT_STREQ(u.path, "");
    ASSERT_EQ(u.param_count, 0);
    outbox__url_free(&u);
}

TEST(url_extra_options)
{
    const char *extra[] = {"timeout=5s", "secret_env=HOOK_SECRET", NULL};
    const char *twice[] = {"timeout=1s", NULL};
    const char *bad[] = {"novalue", NULL};
    outbox_url u;
    outbox_error err = {0, ""};
    ASSERT_OK(outbox__url_parse(&u, "http://h/hook?x=1", extra, &err), &err);
    ASSERT_EQ(u.param_count, 3);
    ASSERT_STREQ(outbox__url_param(&u, "timeout"), "5s");
    ASSERT_STREQ(outbox__url_param(&u, "secret_env"), "HOOK_SECRET");
    outbox__url_free(&u);

    ASSERT_EQ(outbox__url_parse(&u, "http://h/?timeout=2s", twice, &err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err.message, "twice");
    ASSERT_EQ(outbox__url_parse(&u, "http://h/", bad, &err), OUTBOX_EBADURL);
    ASSERT_CONTAINS(err.message, "key=value");
}

TEST(url_malformed)
{
    static const char *const cases[] = {
        "",
        "nocolon",
        ":nothing",
        "1abc://x",
        "ht tp://x",
        "nats://h?k=%zz",
        "nats://h?k=%0",
        "nats://h?=v",
        "nats://u:p%00w@h",
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        outbox_url u;
        outbox_error err = {0, ""};
        int rc = outbox__url_parse(&u, cases[i], NULL, &err);
        if (rc != OUTBOX_EBADURL) TEST_FAIL_("\"%s\": got %d, want EBADURL", cases[i], rc);
        ASSERT(strlen(err.message) > 0);
    }
    {
        outbox_url u;
        outbox_error err = {0, ""};
        ASSERT_EQ(outbox__url_parse(&u, "nats://bob:hunter2@h?token=abc&k=%zz", NULL, &err),
                  OUTBOX_EBADURL);
        ASSERT(strstr(err.message, "hunter2") == NULL);
        ASSERT(strstr(err.message, "abc") == NULL);
    }
}

static outbox_msg *make_msg(const char *type, const char *agg_type, const char *agg_id)
{
    outbox_msg *m = NULL;
    outbox_error err = {0, ""};
    ASSERT_OK(outbox_msg_new(&m, type, agg_type, agg_id, "{}", &err), &err);
    return m;
}

static void check_render(const char *tmpl, int kind, outbox_msg *m, const char *want)
{
    outbox_route *r = NULL;
    outbox_buf b;
    outbox_error err = {0, ""};
    outbox__buf_init(&b);
    ASSERT_OK(outbox__route_new(&r, tmpl, kind, &err), &err);
    ASSERT_OK(outbox__route_render(r, m, &b, &err), &err);
    ASSERT_STREQ(b.data, want);
    outbox__route_free(r);
    outbox__buf_free(&b);
}

TEST(route_render)
{
    outbox_msg *m = make_msg("OrderPlaced", "Order", "o-1.2 *>x");
    outbox_msg *bare = make_msg("Ping", "", "p1");
    outbox_route *r = NULL;
    outbox_error err = {0, ""};

    check_render("outbox.{aggregate_type}.{type}", OUTBOX_ROUTE_NATS_SUBJECT, m,
                 "outbox.Order.OrderPlaced");
    /* Field values cannot add tokens or wildcards to a subject. */
    check_render("agg.{aggregate_id}", OUTBOX_ROUTE_NATS_SUBJECT, m, "agg.o-1_2___x");
    check_render("outbox.{aggregate_type}.{type}", OUTBOX_ROUTE_NATS_SUBJECT, bare,
                 "outbox.none.Ping");
    check_render("events", OUTBOX_ROUTE_KAFKA_TOPIC, m, "events");
    check_render("cafe.{aggregate_type}-{aggregate_id}", OUTBOX_ROUTE_KAFKA_TOPIC, m,
                 "cafe.Order-o-1.2___x");

    ASSERT_OK(outbox__route_new(&r, "fixed.subject", OUTBOX_ROUTE_NATS_SUBJECT, &err), &err);
    ASSERT(outbox__route_is_fixed(r));
    outbox__route_free(r);
    ASSERT_OK(outbox__route_new(&r, "a.{type}", OUTBOX_ROUTE_NATS_SUBJECT, &err), &err);
    ASSERT(!outbox__route_is_fixed(r));
    outbox__route_free(r);

    outbox_msg_free(m);
    outbox_msg_free(bare);
}

TEST(route_bad_templates)
{
    static const struct {
        const char *tmpl;
        int kind;
        const char *says;
    } cases[] = {
        {"", OUTBOX_ROUTE_NATS_SUBJECT, "empty"},
        {"a..b", OUTBOX_ROUTE_NATS_SUBJECT, "empty token"},
        {".a", OUTBOX_ROUTE_NATS_SUBJECT, "empty token"},
        {"a.{type}.", OUTBOX_ROUTE_NATS_SUBJECT, "empty token"},
        {"a b", OUTBOX_ROUTE_NATS_SUBJECT, "not allowed"},
        {"a.*", OUTBOX_ROUTE_NATS_SUBJECT, "not allowed"},
        {"a.>", OUTBOX_ROUTE_NATS_SUBJECT, "not allowed"},
        {"a.{kind}", OUTBOX_ROUTE_NATS_SUBJECT, "unknown placeholder"},
        {"a.{type", OUTBOX_ROUTE_NATS_SUBJECT, "without '}'"},
        {"a.type}", OUTBOX_ROUTE_NATS_SUBJECT, "without '{'"},
        {"t/x", OUTBOX_ROUTE_KAFKA_TOPIC, "not allowed"},
        {"t:{type}", OUTBOX_ROUTE_KAFKA_TOPIC, "not allowed"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        outbox_route *r = NULL;
        outbox_error err = {0, ""};
        int rc = outbox__route_new(&r, cases[i].tmpl, cases[i].kind, &err);
        if (rc != OUTBOX_ECONFIG) TEST_FAIL_("\"%s\": got %d, want ECONFIG", cases[i].tmpl, rc);
        ASSERT(r == NULL);
        ASSERT_CONTAINS(err.message, cases[i].says);
    }
}

TEST(route_topic_too_long)
{
    char id[300];
    outbox_msg *m;
    outbox_route *r = NULL;
    outbox_buf b;
    outbox_error err = {0, ""};
    memset(id, 'k', 250);
    id[250] = '\0';
    outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 512);
    m = make_msg("T", "", id);
    outbox__buf_init(&b);
    ASSERT_OK(outbox__route_new(&r, "t.{aggregate_id}", OUTBOX_ROUTE_KAFKA_TOPIC, &err), &err);
    ASSERT_EQ(outbox__route_render(r, m, &b, &err), OUTBOX_EREJECTED);
    ASSERT_CONTAINS(err.message, "249");
    outbox__route_free(r);
    outbox__buf_free(&b);
    outbox_msg_free(m);
}

/* ------------------------------------------------------------------------
 * Property tables
 * ---------------------------------------------------------------------- */

typedef struct sample_config {
    char *name;
    char *token;
    char *key_file;
    int64_t count;
    int flag;
    int64_t wait_ms;
    int64_t buffer;
    int mode;
} sample_config;

#define F(f) offsetof(sample_config, f)

static const outbox_prop sample_props[] = {
    {"name", OUTBOX_PROP_STRING, F(name), "outbox.{type}", NULL, "TEMPLATE", "The name."},
    {"token", OUTBOX_PROP_SECRET, F(token), NULL, NULL, NULL, "A token."},
    {"key_file", OUTBOX_PROP_SECRET_FILE, F(key_file), NULL, NULL, NULL, "A key file."},
    {"count", OUTBOX_PROP_INT, F(count), "16", "1..1024", NULL, "How many at once."},
    {"flag", OUTBOX_PROP_BOOL, F(flag), "false", NULL, NULL, "A switch."},
    {"wait", OUTBOX_PROP_DURATION, F(wait_ms), "5s", "1ms..1h", NULL, "How long to wait."},
    {"buffer", OUTBOX_PROP_SIZE, F(buffer), "64k", "1k..", NULL, "How much to keep."},
    {"mode", OUTBOX_PROP_ENUM, F(mode), "fast", "fast|safe|off", NULL, "How to go."},
    {"extra.<NAME>", OUTBOX_PROP_STRING, 0, NULL, NULL, "VALUE", "Passed on."},
    OUTBOX_PROPS_END,
};

/* Parses url and options into *c with sample_props; the result code. */
static int sample_parse(const char *url, const char *const *options, sample_config *c,
                        outbox_error *err)
{
    outbox_url u;
    int rc;
    memset(c, 0, sizeof *c);
    rc = outbox__url_parse(&u, url, options, err);
    if (rc != OUTBOX_OK) return rc;
    rc = outbox__props_parse(sample_props, "sample destination", &u, c, err);
    outbox__url_free(&u);
    return rc;
}

TEST(props_defaults)
{
    sample_config c;
    outbox_error err = {0, ""};
    ASSERT_OK(sample_parse("sample://h", NULL, &c, &err), &err);
    ASSERT_STREQ(c.name, "outbox.{type}");
    ASSERT(c.token == NULL && c.key_file == NULL);
    ASSERT_EQ(c.count, 16);
    ASSERT_EQ(c.flag, 0);
    ASSERT_EQ(c.wait_ms, 5000);
    ASSERT_EQ(c.buffer, 64 * 1024);
    ASSERT_EQ(c.mode, 0);
    outbox__props_free(sample_props, &c);
    ASSERT(c.name == NULL);
    outbox__props_free(sample_props, &c); /* harmless twice */
}

TEST(props_types)
{
    sample_config c;
    outbox_error err = {0, ""};
    const char *opts[] = {"flag=yes", "buffer=2m", "extra.a.b=1", NULL};
    char url[700];
    FILE *f = fopen(test_path("key"), "w");
    ASSERT(f != NULL);
    fputs("k", f);
    fclose(f);
    snprintf(url, sizeof url,
             "sample://h?name=x.%%7Bid%%7D&token=t0k&count=1024&wait=500ms&mode=off&key_file=%s",
             test_path("key"));
    ASSERT_OK(sample_parse(url, opts, &c, &err), &err);
    ASSERT_STREQ(c.name, "x.{id}");
    ASSERT_STREQ(c.token, "t0k");
    ASSERT_STREQ(c.key_file, test_path("key"));
    ASSERT_EQ(c.count, 1024);
    ASSERT_EQ(c.flag, 1);
    ASSERT_EQ(c.wait_ms, 500);
    ASSERT_EQ(c.buffer, 2 * 1024 * 1024);
    ASSERT_EQ(c.mode, 2);
    outbox__props_free(sample_props, &c);

    /* Every boolean spelling, either case. */
    static const char *const yes[] = {"true", "TRUE", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "No", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0] + sizeof no / sizeof no[0]; i++) {
        int want = i < sizeof yes / sizeof yes[0];
        snprintf(url, sizeof url, "sample://h?flag=%s",
                 want ? yes[i] : no[i - sizeof yes / sizeof yes[0]]);
        ASSERT_OK(sample_parse(url, NULL, &c, &err), &err);
        ASSERT_EQ(c.flag, want);
        outbox__props_free(sample_props, &c);
    }
    /* Sizes: bytes, k, M, g. */
    static const struct {
        const char *text;
        int64_t bytes;
    } sizes[] = {{"1024", 1024}, {"1k", 1024}, {"3M", 3 << 20}, {"1g", INT64_C(1) << 30}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        snprintf(url, sizeof url, "sample://h?buffer=%s", sizes[i].text);
        ASSERT_OK(sample_parse(url, NULL, &c, &err), &err);
        ASSERT_EQ(c.buffer, sizes[i].bytes);
        outbox__props_free(sample_props, &c);
    }
}

TEST(props_unknown_key)
{
    sample_config c;
    outbox_error err = {0, ""};
    const char *opts[] = {"colour=blue", NULL};
    ASSERT_EQ(sample_parse("sample://h?count=2", opts, &c, &err), OUTBOX_ECONFIG);
    outbox__props_free(sample_props, &c);
    ASSERT_CONTAINS(err.message, "sample destination has no option \"colour\"");
    ASSERT_CONTAINS(err.message, "its options: name=TEMPLATE, token=SECRET, key_file=PATH, "
                                 "count=N, flag=true|false, wait=DURATION, buffer=SIZE, "
                                 "mode=fast|safe|off, extra.<NAME>=VALUE");

    /* A family needs a name after its prefix. */
    ASSERT_EQ(sample_parse("sample://h?extra.=1", NULL, &c, &err), OUTBOX_ECONFIG);
    outbox__props_free(sample_props, &c);
    ASSERT_CONTAINS(err.message, "extra.<NAME>=VALUE");

    /* No table: nothing is accepted. */
    outbox_url u;
    ASSERT_OK(outbox__url_parse(&u, "plain:", opts, &err), &err);
    ASSERT_EQ(outbox__props_parse(NULL, "plain destination", &u, NULL, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "plain destination has no option \"colour\"; it takes none");
    outbox__url_free(&u);
}

TEST(props_bad_values)
{
    static const struct {
        const char *query;
        const char *says[3];
    } cases[] = {
        {"count=many", {"count=many is not a whole number from 1 to 1024", "How many at once."}},
        {"count=0", {"count=0 is out of range: give from 1 to 1024", "How many at once."}},
        {"count=1025", {"count=1025 is out of range"}},
        {"count=1e3", {"count=1e3 is not a whole number"}},
        {"count=", {"count= is not a whole number"}},
        {"flag=maybe", {"flag=maybe is not true or false", "A switch."}},
        {"wait=soon", {"wait=soon is not a duration", "from 1ms to 1h", "How long to wait."}},
        {"wait=0", {"wait=0 is out of range: give from 1ms to 1h"}},
        {"wait=2h", {"wait=2h is out of range"}},
        {"buffer=12q", {"buffer=12q is not a size", "1k or more"}},
        {"buffer=512", {"buffer=512 is out of range: give 1k or more", "How much to keep."}},
        {"mode=slow", {"mode=slow is not one of fast, safe, off", "How to go."}},
        {"key_file=/nonexistent/k",
         {"cannot read key file \"/nonexistent/k\" (key_file=/nonexistent/k): ", "A key file."}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sample_config c;
        outbox_error err = {0, ""};
        char url[200];
        int rc;
        snprintf(url, sizeof url, "sample://h?%s", cases[i].query);
        rc = sample_parse(url, NULL, &c, &err);
        outbox__props_free(sample_props, &c);
        if (rc != OUTBOX_ECONFIG) TEST_FAIL_("%s: got %d, want ECONFIG", cases[i].query, rc);
        ASSERT_CONTAINS(err.message, "sample destination: ");
        for (size_t k = 0; k < 3 && cases[i].says[k]; k++)
            ASSERT_CONTAINS(err.message, cases[i].says[k]);
    }
}

/* A secret's value never reaches a message, whatever goes wrong. */
static const outbox_prop secret_props[] = {
    {"token", OUTBOX_PROP_SECRET, 0, NULL, NULL, NULL, "A token."},
    OUTBOX_PROPS_END,
};

TEST(props_secret_never_shown)
{
    outbox_error err = {0, ""};
    char *token = NULL;
    outbox_url u;
    const char *twice[] = {"token=hunter2-b", NULL};
    const char *bad[] = {"token", NULL};

    /* Given twice (URL and option): the URL parser says so, without it. */
    ASSERT_EQ(outbox__url_parse(&u, "x://h?token=hunter2-a", twice, &err), OUTBOX_EBADURL);
    ASSERT(strstr(err.message, "hunter2") == NULL);
    /* As --to-opt options alone (HTTP): twice, then not KEY=VALUE. */
    const char *opts[] = {"token=hunter2-a", "token=hunter2-b", NULL};
    ASSERT_EQ(outbox__props_options(&u, "x", opts, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "token is given twice");
    ASSERT(strstr(err.message, "hunter2") == NULL);
    ASSERT_EQ(outbox__props_options(&u, "x", bad, &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "is not KEY=VALUE");
    /* Read fine; a malformed neighbour does not echo it either. */
    const char *good[] = {"token=hunter2-c", NULL};
    ASSERT_OK(outbox__props_options(&u, "x", good, &err), &err);
    ASSERT_OK(outbox__props_parse(secret_props, "x destination", &u, &token, &err), &err);
    ASSERT_STREQ(token, "hunter2-c");
    outbox__props_free(secret_props, &token);
    outbox__url_free(&u);

    /* Every error of the sample table, with the token given: never shown. */
    sample_config c;
    ASSERT_EQ(sample_parse("sample://h?token=hunter2-d&count=x", NULL, &c, &err), OUTBOX_ECONFIG);
    outbox__props_free(sample_props, &c);
    ASSERT(strstr(err.message, "hunter2") == NULL);
    ASSERT_EQ(sample_parse("sample://h?token=hunter2-d&nope=1", NULL, &c, &err), OUTBOX_ECONFIG);
    outbox__props_free(sample_props, &c);
    ASSERT(strstr(err.message, "hunter2") == NULL);
}

/* --to-opt options alone are taken verbatim: no percent-decoding (an
 * endpoint URL keeps its escapes). */
TEST(props_options_verbatim)
{
    outbox_url u;
    outbox_error err = {0, ""};
    const char *opts[] = {"endpoint.A=http://h/a%20b?x=1&y=2", "timeout=5s", NULL};
    ASSERT_OK(outbox__props_options(&u, "http", opts, &err), &err);
    ASSERT_STREQ(u.scheme, "http");
    ASSERT_EQ(u.param_count, 2);
    ASSERT_STREQ(u.params[0].key, "endpoint.A");
    ASSERT_STREQ(u.params[0].value, "http://h/a%20b?x=1&y=2");
    ASSERT_STREQ(outbox__url_param(&u, "timeout"), "5s");
    outbox__url_free(&u);
    ASSERT_OK(outbox__props_options(&u, "http", NULL, &err), &err);
    ASSERT_EQ(u.param_count, 0);
    outbox__url_free(&u);
}

/* Every driver's table, through the public list: known types, defaults
 * that parse and lie in the range, sane names and docs.  The defaults are
 * parsed with the driver's own property, as open would. */
static void check_table(const outbox_driver_info *d)
{
    for (size_t k = 0; k < d->prop_count; k++) {
        const outbox_driver_prop *p = &d->props[k];
        ASSERT(p->name && *p->name && p->doc && *p->doc && p->placeholder && *p->placeholder);
        ASSERT(strcmp(p->type, "unknown") != 0);
        ASSERT(strchr(p->name, '=') == NULL && strchr(p->name, ' ') == NULL);
        ASSERT(p->doc[strlen(p->doc) - 1] == '.');
        for (size_t j = 0; j < k; j++)
            if (strcmp(d->props[j].name, p->name) == 0)
                TEST_FAIL_("%s: option %s twice", d->scheme, p->name);
    }
}

TEST(driver_list)
{
    static const char *const stores[] = {"sqlite", "postgres", "postgresql", "mysql", "mariadb"};
    static const char *const destinations[] = {"stdout", "file",  "discard", "http",
                                               "https",  "nats",  "kafka",   "amqp",
                                               "amqps",  "redis", "rediss"};
    const outbox_driver_info *d;
    size_t i;

    for (i = 0; (d = outbox_driver_get(OUTBOX_DRIVER_STORE, i)) != NULL; i++) {
        ASSERT(i < sizeof stores / sizeof stores[0]);
        ASSERT_STREQ(d->scheme, stores[i]);
        ASSERT_EQ(d->kind, OUTBOX_DRIVER_STORE);
        ASSERT(d->usage && strncmp(d->usage, d->scheme, strlen(d->scheme)) == 0);
        ASSERT(d->doc && *d->doc);
        check_table(d);
    }
    ASSERT_EQ(i, sizeof stores / sizeof stores[0]);
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_STORE, 0)->built, 1);
#ifdef OUTBOX_HAVE_LIBPQ
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_STORE, 1)->built, 1);
#else
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_STORE, 1)->built, 0);
#endif
    /* The PostgreSQL store's own table, built or not, shared by
     * postgresql://; its doc says libpq's parameters are taken as well. */
    d = outbox_driver_get(OUTBOX_DRIVER_STORE, 1);
    /* schema, partitions, the TCP keepalive settings, query_timeout, then
     * WAL capture's */
    ASSERT_EQ(d->prop_count, 10);
    ASSERT_STREQ(d->props[0].name, "schema");
    ASSERT_STREQ(d->props[0].default_value, "outbox");
    ASSERT_STREQ(d->props[1].name, "partitions");
    ASSERT_STREQ(d->props[1].type, "int");
    ASSERT_STREQ(d->props[1].default_value, "32");
    ASSERT_STREQ(d->props[1].range, "1..1024");
    ASSERT_STREQ(d->props[2].name, "keepalives_idle");
    ASSERT_STREQ(d->props[5].name, "tcp_user_timeout");
    ASSERT_STREQ(d->props[5].default_value, "30s");
    ASSERT_STREQ(d->props[6].name, "query_timeout");
    ASSERT_STREQ(d->props[6].default_value, "30s");
    ASSERT_STREQ(d->props[7].name, "capture");
    ASSERT_STREQ(d->props[7].default_value, "table");
    ASSERT_STREQ(d->props[7].range, "table|wal");
    ASSERT_STREQ(d->props[8].name, "slot");
    ASSERT_STREQ(d->props[9].name, "publication");
    ASSERT_CONTAINS(d->doc, "libpq's own parameters");
    ASSERT(outbox_driver_get(OUTBOX_DRIVER_STORE, 2)->props == d->props);
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_STORE, 2)->built, d->built);

    for (i = 0; (d = outbox_driver_get(OUTBOX_DRIVER_DESTINATION, i)) != NULL; i++) {
        ASSERT(i < sizeof destinations / sizeof destinations[0]);
        ASSERT_STREQ(d->scheme, destinations[i]);
        ASSERT_EQ(d->kind, OUTBOX_DRIVER_DESTINATION);
        ASSERT(d->usage && strncmp(d->usage, d->scheme, strlen(d->scheme)) == 0);
        ASSERT(d->doc && *d->doc);
        ASSERT_EQ(d->props == NULL, d->prop_count == 0);
        check_table(d);
    }
    ASSERT_EQ(i, sizeof destinations / sizeof destinations[0]);
    ASSERT(outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 99) == NULL);
    ASSERT(outbox_driver_get(0, 0) == NULL);

    /* The tables are listed whole, built or not (the docs need them). */
    d = outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 3); /* http */
    ASSERT_EQ(d->prop_count, 8);
    ASSERT_STREQ(d->props[4].name, "max_in_flight");
    ASSERT_STREQ(d->props[4].type, "int");
    ASSERT_STREQ(d->props[4].default_value, "16");
    ASSERT_STREQ(d->props[4].range, "1..1024");
    ASSERT_STREQ(d->props[4].placeholder, "N");
    ASSERT(outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 4)->props == d->props); /* https */
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 5)->prop_count, 12); /* nats */
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 6)->prop_count, 5);  /* kafka */
    ASSERT_EQ(outbox_driver_get(OUTBOX_DRIVER_DESTINATION, 0)->prop_count, 0);  /* stdout */
#ifdef OUTBOX_HAVE_CURL
    ASSERT_EQ(d->built, 1);
#else
    ASSERT_EQ(d->built, 0);
#endif
}

/* The defaults of a driver's table parse as their type and range say. */
static void check_defaults(const outbox_prop *props, const char *what)
{
    char config[512]; /* larger than any driver's config struct */
    outbox_error err = {0, ""};
    const outbox_prop *p;
    memset(config, 0, sizeof config);
    for (p = props; p->name; p++)
        ASSERT(p->offset + sizeof(int64_t) <= sizeof config);
    ASSERT_OK(outbox__props_parse(props, what, NULL, config, &err), &err);
    outbox__props_free(props, config);
}

/* Every driver's defaults, read through its ops: the transports' tables
 * and the PostgreSQL store's (the SQLite store takes no settings). */
TEST(driver_defaults_parse)
{
    static const outbox_transport_ops *const ops[] = {
        &outbox__transport_http, &outbox__transport_nats, &outbox__transport_kafka};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        check_defaults(ops[i]->props, ops[i]->scheme);
    check_defaults(outbox__store_postgres.props, outbox__store_postgres.scheme);
    ASSERT(outbox__store_sqlite.props == NULL);
}

int main(void)
{
    RUN(url_parts);
    RUN(url_extra_options);
    RUN(url_malformed);
    RUN(route_render);
    RUN(route_bad_templates);
    RUN(route_topic_too_long);
    RUN(props_defaults);
    RUN(props_types);
    RUN(props_unknown_key);
    RUN(props_bad_values);
    RUN(props_secret_never_shown);
    RUN(props_options_verbatim);
    RUN(driver_list);
    RUN(driver_defaults_parse);
    fprintf(stderr, "all passed\n");
    return 0;
}
