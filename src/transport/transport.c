/*
 * transport.c - the destination registry: picks a transport driver by the
 * scheme of the destination URL and opens it.
 *
 * Drivers are `const` tables (struct outbox_transport_ops).  The table below
 * lists the drivers compiled in; schemes of drivers this build leaves out
 * (brokers, HTTP, databases) are known by name so that they give
 * OUTBOX_ENOTBUILT instead of "unknown scheme".  A NULL URL with an
 * in-process publish callback opens the callback driver.  What a driver can
 * do beyond publish (pipelining, interrupt, reopen) is in its table's
 * optional entries, which the relay tests; the registry only finds and
 * opens drivers.  URLs only reach error messages through outbox__url_redact.
 */
#include "internal.h"

#include <string.h>
#include <strings.h>

static const outbox_transport_ops *const drivers[] = {
    &outbox__transport_stdout,
    &outbox__transport_file,
    &outbox__transport_discard,
#ifdef OUTBOX_HAVE_CURL
    &outbox__transport_http,
    &outbox__transport_https,
#endif
#ifdef OUTBOX_HAVE_NATS
    &outbox__transport_nats,
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
    &outbox__transport_kafka,
#endif
};

/* Schemes of destinations that exist in the design but not in this build. */
static const struct {
    const char *scheme;
    const char *what;
} not_built[] = {
    {"nats", "NATS JetStream (not built with nats.c)"},
    {"kafka", "Kafka (not built with librdkafka)"},
    {"http", "HTTP webhook (not built with libcurl)"},
    {"https", "HTTP webhook (not built with libcurl)"},
    {"postgres", "PostgreSQL (not built with libpq)"},
    {"postgresql", "PostgreSQL (not built with libpq)"},
};

#define SUPPORTED "stdout:, file:PATH, discard:"

/* The simple destinations take no settings: a --to-opt given to one of them
 * is a mistake to report at start-up, not to ignore.  Drivers with settings
 * check theirs with outbox__url_check_unused. */
static int refuse_settings(const outbox_transport_ops *ops, const outbox_transport_config *cfg,
                           outbox_error *err)
{
    if (ops != &outbox__transport_stdout && ops != &outbox__transport_file &&
        ops != &outbox__transport_discard && ops != &outbox__transport_callback)
        return OUTBOX_OK;
    if (cfg->options == NULL || cfg->options[0] == NULL) return OUTBOX_OK;
    return outbox__error(err, OUTBOX_ECONFIG,
                         "the %s destination takes no settings (got \"%.64s\")", ops->scheme,
                         cfg->options[0]);
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
                                 "no destination: give a destination URL (" SUPPORTED
                                 ") or a publish callback");
        int rc = refuse_settings(&outbox__transport_callback, cfg, err);
        if (rc != OUTBOX_OK) return rc;
        t->ops = &outbox__transport_callback;
        return t->ops->open(&t->state, NULL, cfg, err);
    }

    outbox__url_redact(url, shown, sizeof shown);
    scheme_len = strcspn(url, ":");
    if (url[scheme_len] != ':' || scheme_len == 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination URL \"%s\" has no scheme; use one of " SUPPORTED, shown);
    for (i = 0; i < scheme_len; i++) {
        char c = url[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '-' || c == '.'))
            return outbox__error(
                err, OUTBOX_EBADURL,
                "destination URL \"%s\" has a malformed scheme; use one of " SUPPORTED, shown);
    }

    for (i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
        const char *s = drivers[i]->scheme;
        if (strlen(s) == scheme_len && strncasecmp(s, url, scheme_len) == 0) {
            int rc = refuse_settings(drivers[i], cfg, err);
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
                                 "this build has no %s destination (\"%s\"); use one of " SUPPORTED
                                 " or rebuild with that driver",
                                 not_built[i].what, shown);
    }
    return outbox__error(err, OUTBOX_EBADURL,
                         "unsupported destination scheme in \"%s\"; use one of " SUPPORTED, shown);
}

/* Closes the destination; harmless on a transport that failed to open. */
void outbox__transport_close(outbox_transport *t)
{
    if (t == NULL) return;
    if (t->ops != NULL && t->state != NULL) t->ops->close(t->state);
    t->ops = NULL;
    t->state = NULL;
}

/* The i-th URL scheme of the destination drivers compiled into this build,
 * in registry order, or NULL when i is past the last.  The in-process
 * callback destination has no URL and is not listed. */
const char *outbox__transport_scheme(size_t i)
{
    return i < sizeof drivers / sizeof drivers[0] ? drivers[i]->scheme : NULL;
}
