/*
 * store.c - store-level helpers for the tests (see store.h).
 */
#include "support/store.h"

#include "test.h"

void sh_capture_log(void *user, int level, const char *component, const char *message)
{
    outbox_buf *b = user;
    (void)component;
    outbox__buf_puts(b, level >= OUTBOX_LOG_ERROR  ? "E "
                        : level >= OUTBOX_LOG_WARN ? "W "
                        : level >= OUTBOX_LOG_INFO ? "I "
                                                   : "D ");
    outbox__buf_puts(b, message);
    outbox__buf_puts(b, "\n");
}

void sh_store_open(outbox_store *s, const char *url)
{
    outbox_error err;
    int rc = outbox__store_open(s, url, &err);
    if (rc != OUTBOX_OK) TEST_FAIL_("opening %s: %d %s", url, rc, err.message);
}

size_t sh_claim(outbox_store *s, int pipelined, size_t batch, outbox_msg ***msgs)
{
    outbox_claim_params p = {batch, outbox__now_us(), 1, 0, NULL};
    outbox_error err;
    size_t n = 0;
    int rc = pipelined ? s->ops->claim_pipelined(s->state, &p, NULL, 0, msgs, &n, &err)
                       : s->ops->claim(s->state, &p, msgs, &n, &err);
    if (rc != OUTBOX_OK) TEST_FAIL_("claim: %d %s", rc, err.message);
    return n;
}

void sh_complete_sent(outbox_store *s, int pipelined, outbox_msg **msgs, size_t n)
{
    outbox_completion *c = calloc(n ? n : 1, sizeof *c);
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 10000};
    outbox_error err;
    int rc;
    if (!c) TEST_FAIL_("out of memory");
    for (size_t i = 0; i < n; i++) {
        c[i].msg = msgs[i];
        c[i].outcome = OUTBOX_OUTCOME_SENT;
    }
    rc = pipelined ? s->ops->complete_pipelined(s->state, c, n, &p, 0, &err)
                   : s->ops->complete(s->state, c, n, &p, &err);
    free(c);
    if (rc != OUTBOX_OK) TEST_FAIL_("complete: %d %s", rc, err.message);
}

void sh_free_msgs(outbox_msg **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    free(msgs);
}

void sh_put(outbox_store *s, const char *agg_id, char id_out[37])
{
    outbox_error err = {0};
    outbox_msg *m = NULL;
    ASSERT_OK(outbox_msg_new(&m, "OrderPlaced", "Order", agg_id, "{\"n\":1}", &err), &err);
    ASSERT_OK(s->ops->enqueue(s->state, m, &err), &err);
    if (id_out) memcpy(id_out, m->id, 37);
    outbox_msg_free(m);
}

sh_batch sh_claim_at(outbox_store *s, int64_t now, size_t size, int failed_blocks)
{
    outbox_error err = {0};
    outbox_claim_params p = {size, now, failed_blocks, 0, NULL};
    sh_batch b = {NULL, 0};
    ASSERT_OK(s->ops->claim(s->state, &p, &b.msgs, &b.n, &err), &err);
    return b;
}

sh_batch sh_claim_due(outbox_store *s, int64_t now, int failed_blocks)
{
    return sh_claim_at(s, now, 100, failed_blocks);
}

void sh_batch_free(sh_batch *b)
{
    sh_free_msgs(b->msgs, b->n);
    b->msgs = NULL;
    b->n = 0;
}

int sh_complete_one(outbox_store *s, const outbox_msg *m, int outcome, int64_t available_at,
                    int on_sent, outbox_error *err)
{
    outbox_completion c = {m, outcome, available_at, "boom"};
    outbox_complete_params p = {on_sent, outbox__now_us(), NULL, 0};
    return s->ops->complete(s->state, &c, 1, &p, err);
}
