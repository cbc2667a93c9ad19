/*
 * test_log.c - the log callbacks: a line about a message reaches a
 * callback installed with outbox_log_set_fields with its fields (id,
 * aggregate, attempt, destination, traceparent) and a size that covers
 * them; other lines come with fields NULL; a plain outbox_log_set callback
 * gets the same text; installing one callback replaces the other; the
 * minimum level holds for both.
 */
#include "internal.h"
#include "test.h"

#include <stddef.h>

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static struct {
    int calls, level;
    char message[256], msg_id[40], aggregate_type[32], aggregate_id[32], destination[64],
        traceparent[64];
    size_t size;
    unsigned attempt;
    int had_fields;
} got;

static void copy(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "(null)");
}

static void with_fields(void *user, int level, const char *component, const char *message,
                        const outbox_log_fields *f)
{
    (void)user;
    (void)component;
    got.calls++;
    got.level = level;
    copy(got.message, sizeof got.message, message);
    got.had_fields = f != NULL;
    if (!f) return;
    got.size = f->size;
    copy(got.msg_id, sizeof got.msg_id, f->msg_id);
    copy(got.aggregate_type, sizeof got.aggregate_type, f->aggregate_type);
    copy(got.aggregate_id, sizeof got.aggregate_id, f->aggregate_id);
    copy(got.destination, sizeof got.destination, f->destination);
    copy(got.traceparent, sizeof got.traceparent, f->traceparent);
    got.attempt = f->attempt;
}

static void plain(void *user, int level, const char *component, const char *message)
{
    (void)user;
    (void)component;
    got.calls++;
    got.level = level;
    copy(got.message, sizeof got.message, message);
}

TEST(fields)
{
    outbox_msg *m = NULL;
    outbox_error err;

    ASSERT_OK(outbox_msg_new(&m, "T", "Order", "o-1", NULL, &err), &err);
    ASSERT_OK(outbox_msg_set_id(m, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", &err), &err);
    ASSERT_OK(outbox_msg_set_header(m, "traceparent", TP, &err), &err);

    memset(&got, 0, sizeof got);
    outbox_log_set_fields(with_fields, NULL, OUTBOX_LOG_INFO);
    ASSERT(outbox__log_enabled(OUTBOX_LOG_INFO));
    ASSERT(!outbox__log_enabled(OUTBOX_LOG_DEBUG));
    outbox__log_msg(OUTBOX_LOG_WARN, "relay", m, 3, "http://hook/x", "message %s attempt %u\n",
                    outbox_msg_id(m), 3u);
    ASSERT_EQ(got.calls, 1);
    ASSERT_EQ(got.level, OUTBOX_LOG_WARN);
    ASSERT_STREQ(got.message, "message 0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b attempt 3");
    ASSERT(got.had_fields);
    ASSERT(got.size >= offsetof(outbox_log_fields, traceparent) + sizeof(const char *));
    ASSERT_STREQ(got.msg_id, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b");
    ASSERT_STREQ(got.aggregate_type, "Order");
    ASSERT_STREQ(got.aggregate_id, "o-1");
    ASSERT_EQ(got.attempt, 3);
    ASSERT_STREQ(got.destination, "http://hook/x");
    ASSERT_STREQ(got.traceparent, TP);

    /* No traceparent header, no destination: NULL, not "". */
    outbox_msg_free(m);
    ASSERT_OK(outbox_msg_new(&m, "T", NULL, "o-2", NULL, &err), &err);
    outbox__log_msg(OUTBOX_LOG_ERROR, "relay", m, 0, NULL, "x");
    ASSERT_EQ(got.calls, 2);
    ASSERT_STREQ(got.traceparent, "(null)");
    ASSERT_STREQ(got.destination, "(null)");
    ASSERT_STREQ(got.aggregate_type, "");
    ASSERT_EQ(got.attempt, 0);

    /* Lines not about a message: fields NULL.  Below the level: nothing. */
    outbox__log(OUTBOX_LOG_INFO, "relay", "plain %d", 7);
    ASSERT_EQ(got.calls, 3);
    ASSERT(!got.had_fields);
    ASSERT_STREQ(got.message, "plain 7");
    outbox__log_msg(OUTBOX_LOG_DEBUG, "relay", m, 1, NULL, "hidden");
    ASSERT_EQ(got.calls, 3);

    /* outbox_log_set replaces it, and gets the text of a line with fields. */
    outbox_log_set(plain, NULL, OUTBOX_LOG_DEBUG);
    outbox__log_msg(OUTBOX_LOG_DEBUG, "relay", m, 1, NULL, "to the plain one");
    ASSERT_EQ(got.calls, 4);
    ASSERT_STREQ(got.message, "to the plain one");

    /* NULL turns logging off. */
    outbox_log_set_fields(NULL, NULL, OUTBOX_LOG_DEBUG);
    ASSERT(!outbox__log_enabled(OUTBOX_LOG_ERROR));
    outbox__log_msg(OUTBOX_LOG_ERROR, "relay", m, 1, NULL, "nobody");
    outbox__log(OUTBOX_LOG_ERROR, "relay", "nobody");
    ASSERT_EQ(got.calls, 4);
    outbox_msg_free(m);
}

int main(void)
{
    RUN(fields);
    return 0;
}
