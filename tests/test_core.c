/*
 * test_core.c - the core: validation (guarantee 7), UUIDv7, trace-context,
 * backoff and durations, the growable buffer, CloudEvents encoding, time
 * formatting, URL redaction, error table and stored-row round trips.
 */
#include "internal.h"
#include "test.h"

#include <jansson.h>
#include <time.h>

/* Expects outbox_msg_new to fail with code and a message containing want. */
static void expect_new_fails(const char *type, const char *agg_type, const char *agg_id,
                             const char *payload, int code, const char *want)
{
    outbox_msg *m = (outbox_msg *)1;
    outbox_error err_ = {0, ""}, *err = &err_;
    int rc = outbox_msg_new(&m, type, agg_type, agg_id, payload, err);
    if (rc != code)
        TEST_FAIL_("msg_new(type=%s, agg_id=%s, payload=%s): %d (%s), expected %d",
                   type ? type : "NULL", agg_id ? agg_id : "NULL", payload ? payload : "NULL", rc,
                   err->message, code);
    ASSERT(m == NULL);
    ASSERT_EQ(err->code, code);
    ASSERT_CONTAINS(err->message, want);
}

static outbox_msg *new_ok(const char *payload)
{
    outbox_msg *m = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "order-1", payload, err), err);
    ASSERT(m != NULL);
    return m;
}

TEST(msg_valid)
{
    outbox_msg *m = new_ok("{\"total\": 12.5, \"items\": [1, 2]}");
    ASSERT_STREQ(outbox_msg_type(m), "OrderPlaced");
    ASSERT_STREQ(outbox_msg_aggregate_type(m), "Order");
    ASSERT_STREQ(outbox_msg_aggregate_id(m), "order-1");
    /* stored verbatim, spaces included */
    ASSERT_STREQ(outbox_msg_payload(m), "{\"total\": 12.5, \"items\": [1, 2]}");
    ASSERT_STREQ(outbox_msg_headers_json(m), "{}");
    ASSERT_EQ(outbox_msg_header_count(m), 0);
    ASSERT_EQ(outbox_msg_seq(m), 0);
    ASSERT_EQ(outbox_msg_attempts(m), 0);
    ASSERT(outbox_uuid_valid(outbox_msg_id(m)));
    ASSERT(outbox_msg_occurred_at(m) > INT64_C(1600000000000000));
    ASSERT(llabs(outbox_msg_occurred_at(m) - outbox__now_us()) < 10 * 1000000);
    outbox_msg_free(m);

    /* NULL payload is {}, NULL aggregate type is "" */
    {
        outbox_msg *n = NULL;
        outbox_error err_ = {0, ""}, *err = &err_;
        ASSERT_OK(outbox_msg_new(&n, "T", NULL, "a", NULL, err), err);
        ASSERT_STREQ(outbox_msg_payload(n), "{}");
        ASSERT_STREQ(outbox_msg_aggregate_type(n), "");
        outbox_msg_free(n);
    }
    /* any JSON value, UTF-8 in fields, big integers */
    {
        static const char *const payloads[] = {"[]",
                                               "\"text\"",
                                               "42",
                                               "null",
                                               "true",
                                               "{\"n\":123456789012345678901234567890}",
                                               "{\"s\":\"caf\\u00e9 \xc3\xa9\"}"};
        size_t i;
        for (i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
            outbox_msg *n = NULL;
            outbox_error err_ = {0, ""}, *err = &err_;
            ASSERT_OK(outbox_msg_new(&n, "Caf\xc3\xa9", "", "\xe6\x97\xa5", payloads[i], err), err);
            ASSERT_STREQ(outbox_msg_payload(n), payloads[i]);
            outbox_msg_free(n);
        }
    }
    outbox_msg_free(NULL);
}

TEST(msg_invalid_fields)
{
    char longtext[300];
    memset(longtext, 'a', 257);
    longtext[257] = '\0';

    expect_new_fails(NULL, "", "a", "{}", OUTBOX_EBADTYPE, "type");
    expect_new_fails("", "", "a", "{}", OUTBOX_EBADTYPE, "type is empty");
    expect_new_fails(longtext, "", "a", "{}", OUTBOX_EBADTYPE, "type is 257 bytes, limit 256");
    expect_new_fails("Order\nPlaced", "", "a", "{}", OUTBOX_EBADTYPE,
                     "type contains control character 0x0a at byte 5");
    expect_new_fails("Bad\x7f", "", "a", "{}", OUTBOX_EBADTYPE, "control character 0x7f");
    expect_new_fails("Bad\xc3", "", "a", "{}", OUTBOX_EBADTYPE, "type is not valid UTF-8");
    expect_new_fails("Bad\xc0\xaf", "", "a", "{}", OUTBOX_EBADTYPE, "not valid UTF-8");
    expect_new_fails("Bad\xed\xa0\x80", "", "a", "{}", OUTBOX_EBADTYPE, "not valid UTF-8");

    expect_new_fails("T", "", NULL, "{}", OUTBOX_EBADAGGREGATE, "aggregate_id");
    expect_new_fails("T", "", "", "{}", OUTBOX_EBADAGGREGATE, "aggregate_id is empty");
    expect_new_fails("T", "", "a\tb", "{}", OUTBOX_EBADAGGREGATE,
                     "aggregate_id contains control character 0x09 at byte 1");
    expect_new_fails("T", "", longtext, "{}", OUTBOX_EBADAGGREGATE, "aggregate_id is 257");
    expect_new_fails("T", "Or\rder", "a", "{}", OUTBOX_EBADAGGREGATE,
                     "aggregate_type contains control character 0x0d");
    expect_new_fails("T", longtext, "a", "{}", OUTBOX_EBADAGGREGATE, "aggregate_type is 257");

    expect_new_fails("T", "", "a", "x", OUTBOX_EBADPAYLOAD, "payload is not valid JSON");
    expect_new_fails("T", "", "a", "{\"a\":1", OUTBOX_EBADPAYLOAD, "line 1");
    expect_new_fails("T", "", "a", "", OUTBOX_EBADPAYLOAD, "payload is not valid JSON");
    expect_new_fails("T", "", "a", "{\"a\":1,\"a\":2}", OUTBOX_EBADPAYLOAD, "duplicate");
    expect_new_fails("T", "", "a", "{} {}", OUTBOX_EBADPAYLOAD, "payload");
    expect_new_fails("T", "", "a", "{\"a\":\"\xff\"}", OUTBOX_EBADPAYLOAD, "payload");

    /* field limit is configurable */
    {
        size_t old = outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 4);
        ASSERT_EQ(old, 256);
        expect_new_fails("Typed", "", "a", "{}", OUTBOX_EBADTYPE, "type is 5 bytes, limit 4");
        ASSERT_EQ(outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, old), 4);
        ASSERT_EQ(outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, 0), 256);
    }
}

TEST(msg_size_limit)
{
    size_t old = outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0);
    char *big;
    outbox_msg *m = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    ASSERT_EQ(old, 1048576);

    outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 100);
    /* oversized payload: refused before parsing (it is not even JSON) */
    big = malloc(200);
    memset(big, 'x', 150);
    big[150] = '\0';
    expect_new_fails("T", "", "a", big, OUTBOX_ETOOBIG, "payload is 150 bytes, limit 100");
    /* payload under the limit but the whole message over it */
    memcpy(big, "\"", 1);
    memset(big + 1, 'y', 60);
    memcpy(big + 61, "\"", 2);
    expect_new_fails("T", "", "aggregate-1", big, OUTBOX_ETOOBIG, "OUTBOX_LIMIT_MESSAGE_BYTES");
    /* exactly at the limit passes: 36 (id) + 1 + 0 + 1 + 2 (headers "{}")
     * + a 60-byte payload */
    memset(big, 0, 200);
    big[0] = '"';
    memset(big + 1, 'z', 58);
    big[59] = '"';
    ASSERT_OK(outbox_msg_new(&m, "T", "", "a", big, err), err);
    ASSERT_EQ(outbox__msg_size(m), 100);
    ASSERT_OK(outbox__msg_check_size(m, err), err);
    /* headers count: any header now pushes it over */
    ASSERT_EQ(outbox_msg_set_header(m, "k", "v", err), OUTBOX_ETOOBIG);
    ASSERT_CONTAINS(err->message, "limit 100");
    ASSERT_STREQ(outbox_msg_headers_json(m), "{}");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"k\":\"v\"}", err), OUTBOX_ETOOBIG);
    ASSERT_EQ(outbox_msg_header_count(m), 0);
    outbox_msg_free(m);
    free(big);
    outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, old);
}

TEST(msg_headers)
{
    outbox_msg *m = new_ok("{}");
    outbox_error err_ = {0, ""}, *err = &err_;
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "c-1", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "b", "quote \" and \\ \xc3\xa9", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "a", "1", err), err);
    ASSERT_STREQ(outbox_msg_headers_json(m),
                 "{\"correlation_id\":\"c-1\",\"b\":\"quote \\\" and \\\\ \xc3\xa9\",\"a\":\"1\"}");
    /* replace keeps the position */
    ASSERT_OK(outbox_msg_set_header(m, "b", "two", err), err);
    ASSERT_STREQ(outbox_msg_headers_json(m),
                 "{\"correlation_id\":\"c-1\",\"b\":\"two\",\"a\":\"1\"}");
    ASSERT_EQ(outbox_msg_header_count(m), 3);
    ASSERT_STREQ(outbox_msg_header_name(m, 1), "b");
    ASSERT_STREQ(outbox_msg_header_value(m, 1), "two");
    ASSERT(outbox_msg_header_name(m, 3) == NULL);
    ASSERT(outbox_msg_header_value(m, 3) == NULL);
    ASSERT_STREQ(outbox_msg_header(m, "a"), "1");
    ASSERT(outbox_msg_header(m, "zz") == NULL);

    /* bad single headers leave the headers as they were */
    ASSERT_EQ(outbox_msg_set_header(m, "x-a", "ab\ncd", err), OUTBOX_EBADHEADERCHAR);
    ASSERT_CONTAINS(err->message, "header \"x-a\" value contains control character 0x0a at byte 2");
    ASSERT_EQ(outbox_msg_set_header(m, "x\x01y", "v", err), OUTBOX_EBADHEADERCHAR);
    ASSERT_CONTAINS(err->message, "header name");
    ASSERT_EQ(outbox_msg_set_header(m, "", "v", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "header name is empty");
    ASSERT_EQ(outbox_msg_set_header(m, "k", NULL, err), OUTBOX_EBADHEADERS);
    ASSERT_EQ(outbox_msg_set_header(m, "k", "\xc3", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "UTF-8");
    ASSERT_EQ(outbox_msg_set_header(m, "traceparent", "00-abc", err), OUTBOX_EBADTRACEPARENT);
    ASSERT_CONTAINS(err->message, "traceparent");
    ASSERT_EQ(outbox_msg_set_header(m, "tracestate", "no equals", err), OUTBOX_EBADTRACEPARENT);
    ASSERT_CONTAINS(err->message, "tracestate");
    ASSERT_EQ(outbox_msg_header_count(m), 3);

    ASSERT_OK(outbox_msg_set_header(m, "traceparent",
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", err),
              err);
    ASSERT_OK(
        outbox_msg_set_header(m, "tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", err),
        err);
    ASSERT_EQ(outbox_msg_header_count(m), 5);

    /* set_headers_json: replace all, check each, keep old on failure */
    ASSERT_OK(outbox_msg_set_headers_json(m, "{ \"z\" : \"1\", \"y\": \"2\" }", err), err);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{\"z\":\"1\",\"y\":\"2\"}");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "[1]", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "got an array");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"n\": 5}", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "header \"n\" is a number");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"o\": {}}", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "header \"o\" is an object");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"a\":\"1\",\"a\":\"2\"}", err), OUTBOX_EBADHEADERS);
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"a\":", err), OUTBOX_EBADHEADERS);
    ASSERT_CONTAINS(err->message, "headers are not valid JSON");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"a\":\"x\\ny\"}", err), OUTBOX_EBADHEADERCHAR);
    ASSERT_CONTAINS(err->message, "header \"a\" value contains control character 0x0a at byte 1");
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"a\\u0007\":\"x\"}", err), OUTBOX_EBADHEADERCHAR);
    ASSERT_EQ(outbox_msg_set_headers_json(m, "{\"traceparent\":\"00-0-0-0\"}", err),
              OUTBOX_EBADTRACEPARENT);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{\"z\":\"1\",\"y\":\"2\"}");
    ASSERT_EQ(outbox_msg_header_count(m), 2);

    ASSERT_OK(outbox_msg_set_headers_json(m, NULL, err), err);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{}");
    ASSERT_EQ(outbox_msg_header_count(m), 0);
    ASSERT_OK(outbox_msg_set_headers_json(m, "{\"k\":\"v\"}", err), err);
    ASSERT_OK(outbox_msg_set_headers_json(m, "", err), err);
    ASSERT_EQ(outbox_msg_header_count(m), 0);
    outbox_msg_free(m);
}

TEST(tracestate)
{
    static const struct {
        const char *value;
        int ok;
    } cases[] = {
        {"", 1},
        {"a=1", 1},
        {"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 1},
        {"a=1,,b=2", 1},
        {"tenant@vendor=x", 1},
        {"a", 0},
        {"=1", 0},
        {"a=", 0},
        {"A=1", 0},
        {"a=1\x01", 0},
        {"a=\xc3\xa9", 0},
        {"a=b=c", 0},
    };
    size_t i;
    char many[600];
    outbox_msg *m = new_ok("{}");
    outbox_error err_ = {0, ""}, *err = &err_;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = outbox_msg_set_header(m, "tracestate", cases[i].value, err);
        /* control characters are refused as such before the tracestate rules */
        if (cases[i].ok && rc != OUTBOX_OK)
            TEST_FAIL_("tracestate \"%s\" refused: %s", cases[i].value, err->message);
        if (!cases[i].ok && rc == OUTBOX_OK)
            TEST_FAIL_("tracestate \"%s\" accepted", cases[i].value);
    }
    /* 33 members */
    many[0] = '\0';
    for (i = 0; i < 33; i++) {
        char member[16];
        snprintf(member, sizeof member, "%sk%zu=v", i ? "," : "", i);
        strcat(many, member);
    }
    ASSERT_EQ(outbox_msg_set_header(m, "tracestate", many, err), OUTBOX_EBADTRACEPARENT);
    ASSERT_CONTAINS(err->message, "32");
    /* over 512 bytes */
    memset(many, 'a', 520);
    many[0] = 'k';
    many[1] = '=';
    many[520] = '\0';
    ASSERT_EQ(outbox_msg_set_header(m, "tracestate", many, err), OUTBOX_EBADTRACEPARENT);
    ASSERT_CONTAINS(err->message, "512");
    outbox_msg_free(m);
}

TEST(uuid_v7)
{
    char prev[37], cur[37];
    int i;
    int64_t now_ms = outbox__now_us() / 1000;
    ASSERT_OK(outbox_uuid_v7(prev), (outbox_error *)NULL);
    ASSERT_EQ(strlen(prev), 36);
    ASSERT(outbox_uuid_valid(prev));
    ASSERT_EQ(prev[14], '7');                 /* version */
    ASSERT(strchr("89ab", prev[19]) != NULL); /* variant 10 */
    {
        /* the first 48 bits are the unix milliseconds */
        char hex[13];
        long long ms;
        memcpy(hex, prev, 8);
        memcpy(hex + 8, prev + 9, 4);
        hex[12] = '\0';
        ms = strtoll(hex, NULL, 16);
        ASSERT(llabs(ms - now_ms) < 5000);
    }
    for (i = 0; i < 100000; i++) {
        ASSERT_OK(outbox_uuid_v7(cur), (outbox_error *)NULL);
        if (strcmp(prev, cur) >= 0) TEST_FAIL_("not increasing at %d: %s then %s", i, prev, cur);
        if (cur[14] != '7' || !strchr("89ab", cur[19]) || !outbox_uuid_valid(cur))
            TEST_FAIL_("bad v7 id %s", cur);
        {
            int j;
            for (j = 0; j < 36; j++)
                if (cur[j] >= 'A' && cur[j] <= 'F') TEST_FAIL_("upper case in %s", cur);
        }
        memcpy(prev, cur, 37);
    }
}

TEST(uuid_set_id)
{
    static const char *const bad[] = {
        "",
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2",   /* short */
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2bc", /* long */
        "0190a1b2c3d4-7e5f-8a6b-7c8d9e0f1a2b0",  /* dash moved */
        "0190a1b2-c3d47e5f-8a6b-7c8d9e0f1a2b0",
        "0190a1b2-c3d4-7e5f8a6b-7c8d9e0f1a2b0",
        "0190a1b2-c3d4-7e5f-8a6b7c8d9e0f1a2b0",
        "0190a1b2_c3d4_7e5f_8a6b_7c8d9e0f1a2b",   /* wrong separator */
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2g",   /* non-hex */
        "{0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b}", /* braces */
        "urn:uuid:0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
        " 0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", /* leading space */
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b ", /* trailing space */
        "0190a1b2c3d47e5f8a6b7c8d9e0f1a2b",      /* no dashes */
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2\n",
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a-b",
        "g190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
        "0190a1b2--c3d4-7e5f-8a6b-7c8d9e0f1a2",
        "not-a-uuid",
        "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2Z",
    };
    size_t i;
    outbox_msg *m = new_ok("{}");
    outbox_error err_ = {0, ""}, *err = &err_;
    char before[37];
    ASSERT_EQ(sizeof bad / sizeof bad[0], 20);
    memcpy(before, outbox_msg_id(m), 37);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = outbox_msg_set_id(m, bad[i], err);
        if (rc != OUTBOX_EBADID) TEST_FAIL_("id \"%s\" gave %d", bad[i], rc);
        ASSERT_CONTAINS(err->message, "id");
        ASSERT_STREQ(outbox_msg_id(m), before);
    }
    ASSERT_EQ(outbox_msg_set_id(m, NULL, err), OUTBOX_EBADID);
    ASSERT_OK(outbox_msg_set_id(m, "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B", err), err);
    ASSERT_STREQ(outbox_msg_id(m), "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b");
    /* any version */
    ASSERT_OK(outbox_msg_set_id(m, "123e4567-e89b-12d3-a456-426614174000", err), err);
    ASSERT_STREQ(outbox_msg_id(m), "123e4567-e89b-12d3-a456-426614174000");
    outbox_msg_free(m);
}

TEST(traceparent)
{
    static const struct {
        const char *value;
        int ok;
    } cases[] = {
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 1},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", 1},
        {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 1},
        {"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds", 1},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", 0}, /* 00: exact */
        {"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", 0},
        {"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 0},
        {"00-00000000000000000000000000000000-00f067aa0ba902b7-01", 0},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", 0},
        {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", 0},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", 0},
        {"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", 0},
        {"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", 0},
        {"0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 0},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01", 0},
        {"", 0},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (outbox_traceparent_valid(cases[i].value) != cases[i].ok)
            TEST_FAIL_("traceparent \"%s\": expected %s", cases[i].value,
                       cases[i].ok ? "valid" : "invalid");
    ASSERT_EQ(outbox_traceparent_valid(NULL), 0);
}

TEST(backoff)
{
    unsigned attempt;
    int i;
    /* bounds, and the cap (largest sample seen) grows then saturates */
    int64_t prev_max = 0;
    for (attempt = 1; attempt <= 12; attempt++) {
        int64_t cap = 500LL << (attempt - 1), lo = INT64_MAX, hi = -1;
        if (cap > 300000) cap = 300000;
        for (i = 0; i < 4000; i++) {
            int64_t d = outbox__backoff_ms(attempt, 500, 300000);
            if (d < 0 || d > cap)
                TEST_FAIL_("attempt %u: %lld outside [0, %lld]", attempt, (long long)d,
                           (long long)cap);
            if (d < lo) lo = d;
            if (d > hi) hi = d;
        }
        /* full jitter: samples spread over the whole range */
        ASSERT(lo < cap / 10);
        ASSERT(hi > cap - cap / 10);
        if (cap < 300000) ASSERT(hi > prev_max);
        prev_max = hi;
    }
    /* no overflow for huge attempt numbers; degenerate settings */
    for (i = 0; i < 1000; i++) {
        int64_t d = outbox__backoff_ms(4000000000u, 500, 300000);
        ASSERT(d >= 0 && d <= 300000);
        d = outbox__backoff_ms(63, 4000000000u, 4000000000u);
        ASSERT(d >= 0 && d <= 4000000000LL);
    }
    ASSERT_EQ(outbox__backoff_ms(3, 0, 1000), 0);
    ASSERT_EQ(outbox__backoff_ms(3, 100, 0), 0);
    {
        int64_t d = outbox__backoff_ms(0, 100, 1000);
        ASSERT(d >= 0 && d <= 100);
    }
}

TEST(duration_parse)
{
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"250ms", 250},
        {"30s", 30000},
        {"5m", 300000},
        {"2h", 7200000},
        {"7d", 604800000},
        {"45", 45000},
        {"0", 0},
        {"0ms", 0},
        {"", -1},
        {"-5s", -1},
        {"s", -1},
        {"5x", -1},
        {"5 s", -1},
        {" 5s", -1},
        {"5s ", -1},
        {"1.5s", -1},
        {"5mss", -1},
        {"5S", -1},
        {"ms", -1},
        {"+5", -1},
        {"99999999999999999999", -1},
        {"9223372036854775807d", -1},
        {"9223372036854775807ms", INT64_MAX},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t got = outbox__duration_parse_ms(cases[i].text);
        if (got != cases[i].ms)
            TEST_FAIL_("duration \"%s\": %lld, expected %lld", cases[i].text, (long long)got,
                       (long long)cases[i].ms);
    }
    ASSERT_EQ(outbox__duration_parse_ms(NULL), -1);
}

TEST(options_and_horizon)
{
    outbox_relay_options o;
    outbox_relay_options_init(&o);
    ASSERT_EQ(o.batch_size, 512);
    ASSERT_EQ(o.max_attempts, 10);
    ASSERT_EQ(o.backoff_base_ms, 500);
    ASSERT_EQ(o.backoff_max_ms, 300000);
    ASSERT_EQ(o.on_sent, OUTBOX_ON_SENT_DELETE);
    ASSERT_EQ(o.failed_blocks_aggregate, 1);
    ASSERT_EQ(o.poll_interval_ms, 1000);
    ASSERT_EQ(o.change_check_ms, 2);
    ASSERT_EQ(o.lease_ttl_ms, 10000);
    ASSERT_EQ(o.wait_for_lease, 0);
    ASSERT_EQ(o.once, 0);
    ASSERT_STREQ(o.source, "/outbox");
    ASSERT(o.publish == NULL);

    /* 500+1000+...+128000 (9 retries) */
    ASSERT_EQ(outbox_redelivery_horizon_ms(NULL), 255500);
    ASSERT_EQ(outbox_redelivery_horizon_ms(&o), 255500);
    o.max_attempts = 12; /* caps 256000, then 300000 */
    ASSERT_EQ(outbox_redelivery_horizon_ms(&o), 255500 + 256000 + 300000);
    o.max_attempts = 1;
    ASSERT_EQ(outbox_redelivery_horizon_ms(&o), 0);
    o.max_attempts = 0;
    ASSERT_EQ(outbox_redelivery_horizon_ms(&o), 0);
    o.max_attempts = 4000000000u;
    o.backoff_base_ms = 1000;
    o.backoff_max_ms = 1000;
    ASSERT_EQ(outbox_redelivery_horizon_ms(&o), 3999999999LL * 1000);
}

TEST(buf)
{
    outbox_buf b;
    int i;
    outbox__buf_init(&b);
    outbox__buf_json_string(&b, "a\"b\\c\n\t\r\b\f\x01\x1f\x7f \xc3\xa9/");
    ASSERT_STREQ(b.data, "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f \xc3\xa9/\"");
    /* the escaped form parses back to the original */
    {
        json_error_t jerr;
        json_t *s = json_loads(b.data, JSON_DECODE_ANY, &jerr);
        ASSERT(s != NULL);
        ASSERT_STREQ(json_string_value(s), "a\"b\\c\n\t\r\b\f\x01\x1f\x7f \xc3\xa9/");
        json_decref(s);
    }
    outbox__buf_reset(&b);
    ASSERT_EQ(b.len, 0);
    outbox__buf_json_string(&b, "");
    ASSERT_STREQ(b.data, "\"\"");
    outbox__buf_reset(&b);
    for (i = 0; i < 10000; i++)
        outbox__buf_printf(&b, "%d,", i);
    ASSERT_EQ(b.len, strlen(b.data));
    ASSERT(strncmp(b.data, "0,1,2,", 6) == 0);
    ASSERT_CONTAINS(b.data, ",9999,");
    outbox__buf_puts(&b, "end");
    outbox__buf_append(&b, "xyz", 1);
    ASSERT(strcmp(b.data + b.len - 4, "endx") == 0);
    ASSERT_EQ(b.oom, 0);
    outbox__buf_free(&b);
    ASSERT(b.data == NULL);
    ASSERT_EQ(b.len, 0);
}

TEST(cloudevent)
{
    outbox_msg *m = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_buf b;
    json_t *doc, *v;
    json_error_t jerr;
    const char *payload = "{\"total\": 12.5, \"items\": [1, {\"sku\": \"A\"}]}";
    const char *key;
    const char *order[32];
    size_t n = 0;
    char ext[64];

    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", "order-7", payload, err), err);
    ASSERT_OK(outbox_msg_set_id(m, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", err), err);
    ASSERT_OK(outbox_msg_set_occurred_at(m, INT64_C(1795826427123456), err), err);
    ASSERT_OK(outbox_msg_set_header(m, "Correlation-ID", "c-1", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "id", "header id", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "xid", "second", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "correlation_id", "dup", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "---", "skipped", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "note", "quote \" \\", err), err);

    outbox__buf_init(&b);
    outbox__buf_puts(&b, "prefix,\"xid\":"); /* earlier text does not count as keys */
    {
        size_t start = b.len;
        outbox__cloudevent_json(&b, m, "/shop");
        ASSERT_EQ(b.oom, 0);
        doc = json_loads(b.data + start, JSON_REJECT_DUPLICATES, &jerr);
    }
    if (!doc) TEST_FAIL_("cloudevent is not JSON: %s: %s", jerr.text, b.data);
    ASSERT_STREQ(json_string_value(json_object_get(doc, "specversion")), "1.0");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "id")),
                 "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "source")), "/shop");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "type")), "OrderPlaced");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "subject")), "order-7");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "time")), "2026-11-28T00:40:27.123456Z");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "datacontenttype")), "application/json");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "aggregatetype")), "Order");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "correlationid")), "c-1");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "xid")), "header id");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "xxid")), "second");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "xcorrelationid")), "dup");
    ASSERT_STREQ(json_string_value(json_object_get(doc, "note")), "quote \" \\");
    ASSERT_EQ(json_object_size(doc), 14);
    /* data is the payload: equal as JSON and verbatim as text */
    {
        json_t *want = json_loads(payload, 0, &jerr);
        ASSERT(want != NULL);
        ASSERT(json_equal(json_object_get(doc, "data"), want));
        json_decref(want);
        ASSERT_CONTAINS(b.data, ",\"data\":{\"total\": 12.5, \"items\": [1, {\"sku\": \"A\"}]}}");
    }
    /* key order */
    json_object_foreach(doc, key, v)
    {
        if (n < 32) order[n++] = key;
    }
    {
        static const char *const want[] = {"specversion",
                                           "id",
                                           "source",
                                           "type",
                                           "subject",
                                           "time",
                                           "datacontenttype",
                                           "aggregatetype",
                                           "correlationid",
                                           "xid",
                                           "xxid",
                                           "xcorrelationid",
                                           "note",
                                           "data"};
        size_t i;
        ASSERT_EQ(n, 14);
        for (i = 0; i < n; i++)
            ASSERT_STREQ(order[i], want[i]);
    }
    json_decref(doc);

    /* no aggregate type, no headers, default source */
    outbox__buf_reset(&b);
    outbox_msg_free(m);
    ASSERT_OK(outbox_msg_new(&m, "T", NULL, "a", "[1]", err), err);
    outbox__cloudevent_json(&b, m, NULL);
    doc = json_loads(b.data, JSON_REJECT_DUPLICATES, &jerr);
    ASSERT(doc != NULL);
    ASSERT(json_object_get(doc, "aggregatetype") == NULL);
    ASSERT_STREQ(json_string_value(json_object_get(doc, "source")), "/outbox");
    ASSERT_EQ(json_array_size(json_object_get(doc, "data")), 1);
    ASSERT_EQ(json_object_size(doc), 8);
    json_decref(doc);
    outbox__buf_free(&b);
    outbox_msg_free(m);

    outbox__cloudevent_ext_name("X-Request_Id.2", ext, sizeof ext);
    ASSERT_STREQ(ext, "xrequestid2");
    outbox__cloudevent_ext_name("-_-", ext, sizeof ext);
    ASSERT_STREQ(ext, "");
    outbox__cloudevent_ext_name("abcdef", ext, 4);
    ASSERT_STREQ(ext, "abc");
}

/* A payload written over several lines is still one event per line in the
 * line format (found by fuzz_cloudevents); its value is unchanged. */
TEST(cloudevent_lines_multiline_payload)
{
    outbox_msg *m = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    outbox_buf b;
    json_t *doc, *want;
    json_error_t jerr;
    const char *payload = "{\n  \"a\": [1,\r\n 2],\n\t\"b\": \"x y\"\n}";
    char *nl;

    ASSERT_OK(outbox_msg_new(&m, "T", "A", "agg", payload, err), err);
    outbox__buf_init(&b);
    ASSERT_OK(outbox__cloudevent_lines(&b, &m, 1, "/s"), err);
    nl = strchr(b.data, '\n');
    ASSERT(nl != NULL && nl[1] == '\0'); /* one line */
    ASSERT(strchr(b.data, '\r') == NULL);
    doc = json_loads(b.data, 0, &jerr);
    ASSERT(doc != NULL);
    want = json_loads(payload, 0, &jerr);
    ASSERT(want != NULL);
    ASSERT(json_equal(json_object_get(doc, "data"), want));
    json_decref(want);
    json_decref(doc);
    outbox__buf_free(&b);
    outbox_msg_free(m);
}

TEST(time_format)
{
    char buf[32];
    outbox_time_format(0, buf);
    ASSERT_STREQ(buf, "1970-01-01T00:00:00.000000Z");
    outbox_time_format(INT64_C(1795826427123456), buf);
    ASSERT_STREQ(buf, "2026-11-28T00:40:27.123456Z");
    outbox_time_format(INT64_C(951782400000001), buf); /* leap day 2000 */
    ASSERT_STREQ(buf, "2000-02-29T00:00:00.000001Z");
    outbox_time_format(INT64_C(253402300799999999), buf);
    ASSERT_STREQ(buf, "9999-12-31T23:59:59.999999Z");
    outbox_time_format(-5, buf); /* clamped */
    ASSERT_STREQ(buf, "1970-01-01T00:00:00.000000Z");
    /* Agrees with gmtime_r: every day of 1970-2400 (a time inside each day
     * moving back a second a day; 2100, 2200, 2300 are not leap years,
     * 2000 and 2400 are), then every 97 days and 13 s up to 9999. */
    for (int64_t sec = 0; sec <= INT64_C(253402300799);
         sec += sec < INT64_C(13574563200) ? 86400 - 1 : 97 * 86400 + 13) {
        struct tm tm;
        time_t t = (time_t)sec;
        char want[96];
        ASSERT(gmtime_r(&t, &tm) != NULL);
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.000042Z", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        outbox_time_format(sec * 1000000 + 42, buf);
        if (strcmp(buf, want) != 0)
            TEST_FAIL_("%lld s: %s, gmtime_r says %s", (long long)sec, buf, want);
    }
}

TEST(time_parse)
{
    static const int64_t values[] = {0, INT64_C(1795826427123456), INT64_C(951782400000001),
                                     INT64_C(253402300799999999)};
    static const char *const bad[] = {"",
                                      /* signs and blanks where digits belong (found by
                                         fuzz_msg: sscanf's %d took them) */
                                      "-999-01-01T00:00:00Z", "2026- 1-01T00:00:00Z",
                                      "2026-11-28T+0:40:27Z", "2026-11-28", "2026-11-28T00:40:27",
                                      "2026-11-28T00:40:27.Z", "2026-11-28T00:40:27.1+01:00",
                                      "2026-13-28T00:40:27Z", "2026-11-28T24:40:27Z",
                                      "2026-11-28 00:40:27Z", "2026-11-28T00:40:27Zjunk"};
    char buf[32];
    int64_t v = 42;
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        outbox_time_format(values[i], buf);
        ASSERT_EQ(outbox_time_parse(buf, &v), 0);
        ASSERT_EQ(v, values[i]);
    }
    ASSERT_EQ(outbox_time_parse("2026-11-28T00:40:27Z", &v), 0);
    ASSERT_EQ(v, INT64_C(1795826427000000));
    ASSERT_EQ(outbox_time_parse("2026-11-28T00:40:27.5+00:00", &v), 0);
    ASSERT_EQ(v, INT64_C(1795826427500000));
    ASSERT_EQ(outbox_time_parse("2026-11-28T00:40:27.1234567Z", &v), 0); /* extra digits cut */
    ASSERT_EQ(v, INT64_C(1795826427123456));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 42;
        if (outbox_time_parse(bad[i], &v) != -1) TEST_FAIL_("accepted \"%s\"", bad[i]);
        ASSERT_EQ(v, 42);
    }
}

TEST(url_redact)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"postgres://app:s3cret@db:5432/shop", "postgres://app:***@db:5432/shop"},
        {"postgres://app@db/shop", "postgres://app@db/shop"},
        {"nats://u:p@a@host:4222", "nats://u:***@host:4222"},
        {"http://host/path?token=abc&x=1", "http://host/path?token=***&x=1"},
        {"https://h/?a=1&API_KEY=zz&password=p&sslpasswd=q#frag",
         "https://h/?a=1&API_KEY=***&password=***&sslpasswd=***#frag"},
        {"kafka://b:9092?client_secret=s&credentials=c&flag",
         "kafka://b:9092?client_secret=***&credentials=***&flag"},
        {"sqlite:app.db", "sqlite:app.db"},
        {"file:/tmp/x#a?token=1", "file:/tmp/x#a?token=1"},
        {"http://u:p@h/x?pass=1", "http://u:***@h/x?pass=***"},
        {"http://h/a@b:c", "http://h/a@b:c"},
    };
    size_t i;
    char out[256];
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        outbox__url_redact(cases[i].in, out, sizeof out);
        if (strcmp(out, cases[i].out) != 0)
            TEST_FAIL_("redact \"%s\": \"%s\", expected \"%s\"", cases[i].in, out, cases[i].out);
    }
    /* truncation keeps a NUL and never reveals more than fits */
    outbox__url_redact("postgres://app:s3cret@db/shop", out, 16);
    ASSERT_STREQ(out, "postgres://app:");
    outbox__url_redact(NULL, out, sizeof out);
    ASSERT_STREQ(out, "");
}

TEST(errors)
{
    /* Every code of the list: a code added to it is checked here too. */
    static const int all[] = {
#define ALL_CODES(name, value, description, retriable) OUTBOX_##name,
        OUTBOX_ERROR_MAP(ALL_CODES)
#undef ALL_CODES
    };
    size_t i, j, n = sizeof all / sizeof all[0];
    outbox_error err_ = {0, ""}, *err = &err_;
    for (i = 0; i < n; i++) {
        const char *s = outbox_strerror(all[i]);
        ASSERT(s != NULL && s[0] != '\0');
        ASSERT(strcmp(s, "unknown error") != 0);
        ASSERT(strcmp(outbox__error_name(all[i]), "UNKNOWN") != 0);
        for (j = 0; j < i; j++) {
            if (strcmp(s, outbox_strerror(all[j])) == 0)
                TEST_FAIL_("codes %d and %d share \"%s\"", all[i], all[j], s);
            ASSERT(strcmp(outbox__error_name(all[i]), outbox__error_name(all[j])) != 0);
        }
    }
    ASSERT_STREQ(outbox_strerror(-999), "unknown error");
    ASSERT_STREQ(outbox__error_name(OUTBOX_EBADPAYLOAD), "EBADPAYLOAD");
    ASSERT_STREQ(outbox__error_name(OUTBOX_EBADTRACEPARENT), "EBADTRACEPARENT");
    ASSERT_STREQ(outbox__error_name(OUTBOX_EBADSIGNATURE), "EBADSIGNATURE");
    ASSERT(outbox_err_retriable(OUTBOX_EBUSY));
    ASSERT(outbox_err_retriable(OUTBOX_EIO));
    ASSERT(outbox_err_retriable(OUTBOX_EPUBLISH));
    ASSERT(outbox_err_retriable(OUTBOX_ENOMEM));
    ASSERT(outbox_err_retriable(OUTBOX_ELEASED));
    ASSERT(!outbox_err_retriable(OUTBOX_EBADPAYLOAD));
    ASSERT(!outbox_err_retriable(OUTBOX_EREJECTED));
    ASSERT(!outbox_err_retriable(OUTBOX_OK));
    ASSERT(!outbox_err_retriable(-999));

    ASSERT_EQ(outbox__error(err, OUTBOX_ECONFIG, "batch %d too big", 7), OUTBOX_ECONFIG);
    ASSERT_EQ(err->code, OUTBOX_ECONFIG);
    ASSERT_STREQ(err->message, "batch 7 too big");
    ASSERT_EQ(outbox__error(NULL, OUTBOX_EIO, "x"), OUTBOX_EIO);
    {
        char long_text[2000];
        memset(long_text, 'q', sizeof long_text - 1);
        long_text[sizeof long_text - 1] = '\0';
        outbox__error(err, OUTBOX_EIO, "%s", long_text);
        ASSERT_EQ(strlen(err->message), sizeof err->message - 1);
    }
    ASSERT_STREQ(outbox_version(), OUTBOX_VERSION_STRING);
    ASSERT_STREQ(outbox__status_name(OUTBOX_STATUS_FAILED), "failed");
    ASSERT_EQ(outbox__status_parse("sent"), OUTBOX_STATUS_SENT);
    ASSERT_EQ(outbox__status_parse("pending"), OUTBOX_STATUS_PENDING);
    ASSERT_EQ(outbox__status_parse("bogus"), -1);
}

static int log_calls;
static char log_last[1100];
static void capture_log(void *user, int level, const char *component, const char *message)
{
    (void)user;
    log_calls++;
    snprintf(log_last, sizeof log_last, "%s %s %s", outbox_log_level_name(level), component,
             message);
}

TEST(logging)
{
    char big[3000];
    outbox__log(OUTBOX_LOG_ERROR, "x", "nobody listens");
    ASSERT_EQ(outbox__log_enabled(OUTBOX_LOG_ERROR), 0);
    outbox_log_set(capture_log, NULL, OUTBOX_LOG_WARN);
    ASSERT(outbox__log_enabled(OUTBOX_LOG_WARN));
    ASSERT(!outbox__log_enabled(OUTBOX_LOG_INFO));
    outbox__log(OUTBOX_LOG_INFO, "relay", "hidden");
    ASSERT_EQ(log_calls, 0);
    outbox__log(OUTBOX_LOG_WARN, "relay", "seen %d\n", 3);
    ASSERT_EQ(log_calls, 1);
    ASSERT_STREQ(log_last, "warn relay seen 3");
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    outbox__log(OUTBOX_LOG_ERROR, "relay", "%s", big);
    ASSERT_EQ(log_calls, 2);
    ASSERT_EQ(strlen(log_last), strlen("error relay ") + 1023);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_DEBUG);
    outbox__log(OUTBOX_LOG_ERROR, "relay", "off");
    ASSERT_EQ(log_calls, 2);
    ASSERT_STREQ(outbox_log_level_name(OUTBOX_LOG_DEBUG), "debug");
    ASSERT_STREQ(outbox_log_level_name(OUTBOX_LOG_INFO), "info");
}

TEST(msg_from_row)
{
    outbox_msg *src = NULL, *m = NULL;
    outbox_error err_ = {0, ""}, *err = &err_;
    ASSERT_OK(outbox_msg_new(&src, "OrderPlaced", "Order", "o-1", "{\"a\": [1,2]}", err), err);
    ASSERT_OK(outbox_msg_set_header(src, "traceparent",
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", err),
              err);
    ASSERT_OK(outbox_msg_set_header(src, "k", "v \xc3\xa9 \"q\"", err), err);

    ASSERT_OK(outbox__msg_from_row(&m, 42, outbox_msg_id(src), outbox_msg_occurred_at(src),
                                   outbox_msg_type(src), outbox_msg_aggregate_type(src),
                                   outbox_msg_aggregate_id(src), outbox_msg_payload(src),
                                   outbox_msg_headers_json(src), err),
              err);
    ASSERT_EQ(outbox_msg_seq(m), 42);
    ASSERT_STREQ(outbox_msg_id(m), outbox_msg_id(src));
    ASSERT_EQ(outbox_msg_occurred_at(m), outbox_msg_occurred_at(src));
    ASSERT_STREQ(outbox_msg_type(m), "OrderPlaced");
    ASSERT_STREQ(outbox_msg_aggregate_type(m), "Order");
    ASSERT_STREQ(outbox_msg_aggregate_id(m), "o-1");
    ASSERT_STREQ(outbox_msg_payload(m), "{\"a\": [1,2]}");
    ASSERT_STREQ(outbox_msg_headers_json(m), outbox_msg_headers_json(src));
    ASSERT_EQ(outbox_msg_header_count(m), 2);
    ASSERT_STREQ(outbox_msg_header(m, "k"), "v \xc3\xa9 \"q\"");
    ASSERT_STREQ(outbox_msg_header_name(m, 0), "traceparent");
    ASSERT_EQ(outbox__msg_size(m), outbox__msg_size(src));

    /* a row-built message can be changed like any other, then freed */
    ASSERT_OK(outbox_msg_set_header(m, "k", "new", err), err);
    ASSERT_OK(outbox_msg_set_header(m, "extra", "1", err), err);
    ASSERT_STREQ(outbox_msg_header(m, "k"), "new");
    ASSERT_EQ(outbox_msg_header_count(m), 3);
    m->last_error = malloc(8);
    ASSERT(m->last_error != NULL);
    strcpy(m->last_error, "oops");
    outbox_msg_free(m);
    m = NULL;

    /* empty and spaced headers, NULL aggregate type, upper-case id */
    ASSERT_OK(outbox__msg_from_row(&m, 1, "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B", 5, "T", NULL, "a",
                                   "1", "{}", err),
              err);
    ASSERT_STREQ(outbox_msg_id(m), "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b");
    ASSERT_STREQ(outbox_msg_aggregate_type(m), "");
    ASSERT_EQ(outbox_msg_header_count(m), 0);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{}");
    outbox_msg_free(m);
    ASSERT_OK(outbox__msg_from_row(&m, 2, outbox_msg_id(src), 5, "T", "", "a", "1",
                                   "{ \"x\" : \"y\" }", err),
              err);
    ASSERT_STREQ(outbox_msg_headers_json(m), "{\"x\":\"y\"}");
    ASSERT_STREQ(outbox_msg_header(m, "x"), "y");
    outbox_msg_free(m);

    m = (outbox_msg *)1;
    ASSERT_EQ(outbox__msg_from_row(&m, 3, outbox_msg_id(src), 5, "T", "", "a", "1", "[\"x\"]", err),
              OUTBOX_EBADHEADERS);
    ASSERT(m == NULL);
    ASSERT_EQ(
        outbox__msg_from_row(&m, 3, outbox_msg_id(src), 5, "T", "", "a", "1", "{\"x\":1}", err),
        OUTBOX_EBADHEADERS);
    ASSERT_EQ(outbox__msg_from_row(&m, 3, "nope", 5, "T", "", "a", "1", "{}", err), OUTBOX_EBADID);
    outbox_msg_free(src);
}

#ifdef OUTBOX_FAULT_INJECTION
TEST(fault_points)
{
    int i, fired = 0;
    /* parsed once from the environment set in main() */
    ASSERT_EQ(OUTBOX_FAULT("test.unlisted"), 0);
    ASSERT_EQ(OUTBOX_FAULT("test.third"), 0);
    ASSERT_EQ(OUTBOX_FAULT("test.third"), 0);
    ASSERT_EQ(OUTBOX_FAULT("test.third"), OUTBOX_EFAULT);
    ASSERT_EQ(OUTBOX_FAULT("test.third"), 0);
    ASSERT_EQ(OUTBOX_FAULT("test.first"), OUTBOX_EFAULT);
    ASSERT_EQ(OUTBOX_FAULT("test.first"), 0);
    ASSERT_EQ(OUTBOX_FAULT("test.bad"), 0);
    for (i = 0; i < 2000; i++)
        if (OUTBOX_FAULT("test.half") == OUTBOX_EFAULT) fired++;
    ASSERT(fired > 800 && fired < 1200);
    for (i = 0; i < 100; i++)
        ASSERT_EQ(OUTBOX_FAULT("test.never"), 0);
}
#endif

int main(void)
{
#ifdef OUTBOX_FAULT_INJECTION
    setenv("OUTBOX_FAULT",
           "test.third:error:3,test.first:error,test.bad:explode,test.half:error:p0.5,"
           "test.never:error:p0,broken",
           1);
    setenv("OUTBOX_FAULT_SEED", "7", 1);
#endif
    RUN(msg_valid);
    RUN(msg_invalid_fields);
    RUN(msg_size_limit);
    RUN(msg_headers);
    RUN(tracestate);
    RUN(uuid_v7);
    RUN(uuid_set_id);
    RUN(traceparent);
    RUN(backoff);
    RUN(duration_parse);
    RUN(options_and_horizon);
    RUN(buf);
    RUN(cloudevent);
    RUN(cloudevent_lines_multiline_payload);
    RUN(time_format);
    RUN(time_parse);
    RUN(url_redact);
    RUN(errors);
    RUN(logging);
    RUN(msg_from_row);
#ifdef OUTBOX_FAULT_INJECTION
    RUN(fault_points);
#endif
    return 0;
}
