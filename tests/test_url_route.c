/*
 * test_url_route.c - the URL parser the drivers read their settings with,
 * and the subject/topic templates of the broker destinations.
 */
#include "internal.h"
#include "test.h"

TEST(url_parts)
{
    outbox_url u;
    outbox_error err = {0, ""};
    ASSERT_OK(outbox__url_parse(&u, "NATS://alice:s%40cret@a:4222,b:4222/x%20y?stream=S&subject=o.%7Btype%7D",
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
    /* "stream" was not asked for: reported, and the password is not shown. */
    ASSERT_EQ(outbox__url_check_unused(&u, "subject", &err), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(err.message, "\"stream\"");
    ASSERT_CONTAINS(err.message, "known: subject");
    ASSERT_STREQ(outbox__url_param(&u, "stream"), "S");
    ASSERT_OK(outbox__url_check_unused(&u, "subject, stream", &err), &err);
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
        "", "nocolon", ":nothing", "1abc://x", "ht tp://x", "nats://h?k=%zz", "nats://h?k=%0",
        "nats://h?=v", "nats://u:p%00w@h",
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

int main(void)
{
    RUN(url_parts);
    RUN(url_extra_options);
    RUN(url_malformed);
    RUN(route_render);
    RUN(route_bad_templates);
    RUN(route_topic_too_long);
    fprintf(stderr, "all passed\n");
    return 0;
}
