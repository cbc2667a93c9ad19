/*
 * transport.c - the destination registry: picks a transport driver by the
 * scheme of the destination URL and opens it.
 *
 * Drivers are `const` tables (struct outbox_transport_ops).  The table below
 * lists every driver; one whose library this build leaves out has open
 * NULL, and its scheme (like those of the stores) gives OUTBOX_ENOTBUILT
 * instead of "unknown scheme".  A NULL URL with an in-process publish
 * callback opens the callback driver.  What a driver can do beyond publish
 * (pipelining, interrupt, reopen) is in its table's optional entries, which
 * the relay tests; the registry only finds and opens drivers.  URLs only
 * reach error messages through outbox__url_redact.
 */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Every destination driver, built or not (a driver whose library the
 * build leaves out has its table, with open NULL): help and docs list
 * them all, URLs open only the built ones. */
static const outbox_transport_ops *const drivers[] = {
    &outbox__transport_stdout, &outbox__transport_file,   &outbox__transport_discard,
    &outbox__transport_http,   &outbox__transport_https,  &outbox__transport_nats,
    &outbox__transport_kafka,  &outbox__transport_amqp,   &outbox__transport_amqps,
    &outbox__transport_redis,  &outbox__transport_rediss,
};

/* Schemes of destinations that exist in the design but not in this build. */
static const struct {
    const char *scheme;
    const char *what;
} not_built[] = {
    {"nats", "NATS JetStream (not built with nats.c)"},
    {"kafka", "Kafka (not built with librdkafka)"},
    {"amqp", "RabbitMQ (not built with librabbitmq)"},
    {"amqps", "RabbitMQ (not built with librabbitmq)"},
    {"http", "HTTP webhook (not built with libcurl)"},
    {"https", "HTTP webhook (not built with libcurl)"},
    /* Redis Streams: rediss:// needs a hiredis with TLS (hiredis_ssl, 1.0 on),
     * which this driver does not use yet. */
    {"redis", "Redis Streams (not built with hiredis)"},
#ifdef OUTBOX_HAVE_HIREDIS
    {"rediss", "Redis Streams over TLS (this build's hiredis has no TLS; use redis:// through a "
               "TLS tunnel such as stunnel)"},
#else
    {"rediss", "Redis Streams over TLS (not built with hiredis)"},
#endif
    {"postgres", "PostgreSQL (not built with libpq)"},
    {"postgresql", "PostgreSQL (not built with libpq)"},
};

static char supported_text[512];
static pthread_once_t supported_once = PTHREAD_ONCE_INIT;

static void make_supported(void)
{
    size_t i, len = 0;
    for (i = 0; i < sizeof drivers / sizeof drivers[0] && len < sizeof supported_text; i++)
        if (drivers[i]->open != NULL)
            len += (size_t)snprintf(supported_text + len, sizeof supported_text - len, "%s%s",
                                    len ? ", " : "", drivers[i]->usage);
}

/* The URL forms of the built destinations, "stdout:, file:PATH, ...", for
 * "use one of" in messages. */
static const char *supported(void)
{
    pthread_once(&supported_once, make_supported);
    return supported_text;
}

/* A driver without properties takes no settings: a --to-opt given to it is
 * a mistake to report at start-up, not to ignore.  Drivers with properties
 * read theirs (and refuse unknown ones) with outbox__props_parse. */
static int refuse_options(const outbox_transport_ops *ops, const outbox_transport_config *cfg,
                          outbox_error *err)
{
    outbox_url u;
    char what[64];
    int rc;

    if (ops->props != NULL || cfg->options == NULL || cfg->options[0] == NULL) return OUTBOX_OK;
    rc = outbox__props_options(&u, ops->scheme, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    snprintf(what, sizeof what, "%s destination", ops->scheme);
    rc = outbox__props_parse(NULL, what, &u, NULL, err);
    outbox__url_free(&u);
    return rc;
}

/* Opens the destination for url (see internal.h).  On failure t->ops and
 * t->state are NULL and err names the URL (redacted) and how to fix it. */
int outbox__transport_open(outbox_transport *t, const char *url, const outbox_transport_config *cfg,
                           outbox_error *err)
{
    char shown[512];
    size_t scheme_len;
    size_t i;

    if (t == NULL || cfg == NULL)
        return outbox__error(err, OUTBOX_EINVAL, "outbox__transport_open: NULL argument");
    t->ops = NULL;
    t->state = NULL;

    if (url == NULL) {
        if (cfg->publish == NULL)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "no destination: give a destination URL (%s) or a publish "
                                 "callback",
                                 supported());
        int rc = refuse_options(&outbox__transport_callback, cfg, err);
        if (rc != OUTBOX_OK) return rc;
        t->ops = &outbox__transport_callback;
        return t->ops->open(&t->state, NULL, cfg, err);
    }

    outbox__url_redact(url, shown, sizeof shown);
    scheme_len = strcspn(url, ":");
    if (url[scheme_len] != ':' || scheme_len == 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination URL \"%s\" has no scheme; use one of %s", shown,
                             supported());
    for (i = 0; i < scheme_len; i++) {
        char c = url[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '-' || c == '.'))
            return outbox__error(err, OUTBOX_EBADURL,
                                 "destination URL \"%s\" has a malformed scheme; use one of %s",
                                 shown, supported());
    }

    for (i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
        const char *s = drivers[i]->scheme;
        if (drivers[i]->open == NULL) continue; /* not built: below */
        if (strlen(s) == scheme_len && strncasecmp(s, url, scheme_len) == 0) {
            int rc = refuse_options(drivers[i], cfg, err);
            if (rc != OUTBOX_OK) return rc;
            rc = drivers[i]->open(&t->state, url, cfg, err);
            if (rc != OUTBOX_OK) {
                t->state = NULL;
                return rc;
            }
            t->ops = drivers[i];
            return OUTBOX_OK;
        }
    }
    for (i = 0; i < sizeof not_built / sizeof not_built[0]; i++) {
        const char *s = not_built[i].scheme;
        if (strlen(s) == scheme_len && strncasecmp(s, url, scheme_len) == 0)
            return outbox__error(err, OUTBOX_ENOTBUILT,
                                 "this build has no %s destination (\"%s\"); use one of %s or "
                                 "rebuild with that driver",
                                 not_built[i].what, shown, supported());
    }
    return outbox__error(err, OUTBOX_EBADURL,
                         "unsupported destination scheme in \"%s\"; use one of %s", shown,
                         supported());
}

/* Closes the destination; harmless on a transport that failed to open. */
void outbox__transport_close(outbox_transport *t)
{
    if (t == NULL) return;
    if (t->ops != NULL && t->state != NULL) t->ops->close(t->state);
    t->ops = NULL;
    t->state = NULL;
}

/* The i-th destination driver, built or not, for outbox_driver_get. */
int outbox__transport_driver(size_t i, outbox_driver_entry *out)
{
    const outbox_transport_ops *ops;
    if (i >= sizeof drivers / sizeof drivers[0]) return 0;
    ops = drivers[i];
    out->scheme = ops->scheme;
    out->usage = ops->usage;
    out->doc = ops->doc;
    out->built = ops->open != NULL;
    out->props = ops->props;
    return 1;
}

/* ------------------------------------------------------------------------
 * Helpers for destinations (see internal.h)
 * ---------------------------------------------------------------------- */

void outbox__result_set(outbox_publish_result *r, int code, const char *fmt, ...)
{
    va_list ap;
    r->code = code;
    r->retry_after_ms = 0;
    if (fmt == NULL) {
        r->error[0] = '\0';
        return;
    }
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
}

int outbox__chain_prepare(outbox_aggindex *ids, outbox_aggindex *aggs,
                          const outbox_aggindex *older_aggs, outbox_msg *const *msgs, size_t n,
                          long *prev)
{
    size_t i;
    outbox__aggindex_reset(ids);
    outbox__aggindex_reset(aggs);
    if (outbox__aggindex_reserve(ids, n) != OUTBOX_OK ||
        outbox__aggindex_reserve(aggs, n) != OUTBOX_OK)
        return OUTBOX_ENOMEM;
    for (i = 0; i < n; i++) {
        const char *agg = msgs[i]->aggregate_id;
        uint32_t before;
        if (outbox__aggindex_insert(ids, msgs[i]->id, (uint32_t)i, &before))
            outbox__aggindex_insert(ids, msgs[i]->id, before, NULL);
        if (outbox__aggindex_insert(aggs, agg, (uint32_t)i, &before))
            prev[i] = (long)before;
        else if (older_aggs != NULL && outbox__aggindex_lookup(older_aggs, agg, &before))
            prev[i] = OUTBOX_PREV_OLDER(before);
        else
            prev[i] = OUTBOX_PREV_NONE;
    }
    return OUTBOX_OK;
}

void outbox__chain_release(long *prev, size_t n, const outbox_publish_result *older_results)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (prev[i] <= OUTBOX_PREV_OLDER(0))
            prev[i] = older_results[OUTBOX_PREV_OLDER_INDEX(prev[i])].code == OUTBOX_OK
                          ? OUTBOX_PREV_NONE
                          : OUTBOX_PREV_FAILED;
}

/* A whole batch through publish_begin and publish_end (see internal.h). */
int outbox__publish_whole(const outbox_transport_ops *ops, void *state, outbox_msg *const *msgs,
                          size_t n, outbox_publish_result *results)
{
    int rc;
    if (n == 0) return OUTBOX_OK;
    rc = ops->publish_begin(state, msgs, n, results);
    if (rc != OUTBOX_OK) return rc;
    return ops->publish_end(state, msgs, n, results);
}
