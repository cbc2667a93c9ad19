/*
 * common.c - helpers shared by the `outbox` subcommands: the stderr logger
 * (text or JSON lines), global options, the mapping from library codes to
 * exit codes and one-line error messages, strict parsing of numbers,
 * durations and ids, store opening, and the JSON form of a message.
 *
 * Nothing here prints a URL without passing it through outbox_url_redact.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * Logger
 * ---------------------------------------------------------------------- */

static int log_level = OUTBOX_LOG_INFO;
static int log_json = 0;

/* 2026-11-28T00:40:27.123Z */
static void log_timestamp(char *buf, size_t len)
{
    int64_t us = cli_now_us();
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((us % 1000000) / 1000));
}

static json_t *text_value(const char *s);

/* Does the library's fields struct f hold member m? (it may be older) */
#define LOG_FIELD(f, m)                                                                            \
    ((f) != NULL && offsetof(outbox_log_fields, m) + sizeof((f)->m) <= (f)->size ? (f)->m : 0)

/* One JSON log line: {"time","level","component","msg"}, then the line's
 * fields when it is about a message (msg_id, aggregate_type, aggregate_id,
 * attempt, destination, traceparent: each when known), and a newline;
 * NULL when out of memory. */
static char *log_json_line(const char *ts, int level, const char *component, const char *message,
                           const outbox_log_fields *fields)
{
    const char *const texts[][2] = {
        {"msg_id", LOG_FIELD(fields, msg_id)},
        {"aggregate_type", LOG_FIELD(fields, aggregate_type)},
        {"aggregate_id", LOG_FIELD(fields, aggregate_id)},
        {"destination", LOG_FIELD(fields, destination)},
        {"traceparent", LOG_FIELD(fields, traceparent)},
    };
    json_t *o = json_object();
    char *line = NULL;
    int bad = !o || json_object_set_new(o, "time", json_string(ts)) != 0 ||
              json_object_set_new(o, "level", json_string(outbox_log_level_name(level))) != 0 ||
              json_object_set_new(o, "component", text_value(component)) != 0 ||
              json_object_set_new(o, "msg", text_value(message)) != 0;
    for (size_t i = 0; !bad && i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i][1]) bad = json_object_set_new(o, texts[i][0], text_value(texts[i][1])) != 0;
    if (!bad && LOG_FIELD(fields, attempt) > 0)
        bad = json_object_set_new(o, "attempt", json_integer(fields->attempt)) != 0;
    if (!bad) line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return line;
}

/* Text lines name the message in their text already: fields are for JSON. */
static void log_to_stderr(void *user, int level, const char *component, const char *message,
                          const outbox_log_fields *fields)
{
    char ts[80];
    char *line = NULL;
    const char *text;
    cli_buf b;
    (void)user;
    log_timestamp(ts, sizeof ts);
    cli_buf_init(&b);
    if (log_json) {
        line = log_json_line(ts, level, component ? component : "", message ? message : "", fields);
        if (!line)
            b.oom = 1;
        else {
            cli_buf_puts(&b, line);
            cli_buf_puts(&b, "\n");
        }
    } else {
        cli_buf_printf(&b, "%s %s ", ts, outbox_log_level_name(level));
        cli_escape(&b, component ? component : "");
        cli_buf_puts(&b, ": ");
        cli_escape(&b, message ? message : "");
        cli_buf_puts(&b, "\n");
    }
    /* One write per line so lines from different threads do not interleave. */
    if ((text = cli_buf_text(&b)) != NULL && b.len > 0) fwrite(text, 1, b.len, stderr);
    cli_buf_free(&b);
    free(line);
}

void cli_log_install(void)
{
    outbox_log_set_fields(log_to_stderr, NULL, log_level);
}

void cli_log(int level, const char *component, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    if (level < log_level) return;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    log_to_stderr(NULL, level, component, message, NULL);
}

int cli_set_log_level(const char *cmd, const char *text)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {
        {"debug", OUTBOX_LOG_DEBUG},  {"info", OUTBOX_LOG_INFO},   {"warn", OUTBOX_LOG_WARN},
        {"warning", OUTBOX_LOG_WARN}, {"error", OUTBOX_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        if (strcmp(text, levels[i].name) == 0) {
            log_level = levels[i].level;
            cli_log_install();
            return CLI_EXIT_OK;
        }
    }
    return cli_usage(cmd, "--log-level '%s' is not a level; use debug, info, warn or error", text);
}

int cli_set_log_format(const char *cmd, const char *text)
{
    if (strcmp(text, "text") == 0)
        log_json = 0;
    else if (strcmp(text, "json") == 0)
        log_json = 1;
    else
        return cli_usage(cmd, "--log-format '%s' is not a format; use text or json", text);
    cli_log_install();
    return CLI_EXIT_OK;
}

int cli_global_option(const char *cmd, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_LOG_LEVEL:
        return cli_set_log_level(cmd, arg);
    case CLI_OPT_LOG_FORMAT:
        return cli_set_log_format(cmd, arg);
    default:
        return -1;
    }
}

/* ------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------- */

/* Prints "outbox <cmd>: <text>" as one line on stderr, the text escaped
 * (it may echo stored or given text). */
static void report_line(const char *cmd, const char *text)
{
    const char *line;
    cli_buf b;
    cli_buf_init(&b);
    cli_buf_puts(&b, "outbox");
    if (cmd && cmd[0]) {
        cli_buf_puts(&b, " ");
        cli_buf_puts(&b, cmd);
    }
    cli_buf_puts(&b, ": ");
    cli_escape(&b, text);
    cli_buf_puts(&b, "\n");
    if ((line = cli_buf_text(&b)) != NULL)
        fwrite(line, 1, b.len, stderr);
    else
        fprintf(stderr, "outbox %s: out of memory reporting an error\n", cmd ? cmd : "");
    cli_buf_free(&b);
}

static void vreport(const char *cmd, const char *fmt, va_list ap) CLI_PRINTF(2, 0);
static void vreport(const char *cmd, const char *fmt, va_list ap)
{
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    report_line(cmd, line);
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_failure(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

int cli_exit_code(int code)
{
    switch (code) {
    case OUTBOX_OK:
        return CLI_EXIT_OK;
    case OUTBOX_EINVAL:
    case OUTBOX_EBADID:
    case OUTBOX_EBADTYPE:
    case OUTBOX_EBADAGGREGATE:
    case OUTBOX_EBADPAYLOAD:
    case OUTBOX_EBADHEADERS:
    case OUTBOX_EBADHEADERCHAR:
    case OUTBOX_EBADTRACEPARENT:
    case OUTBOX_ETOOBIG:
    case OUTBOX_EBADURL:
    case OUTBOX_ECONFIG:
    case OUTBOX_ENOTBUILT:
    case OUTBOX_ESCHEMANEWER: /* this binary is too old for the database: not a runtime fault */
        return CLI_EXIT_USAGE;
    default:
        return code > 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
    }
}

int cli_fail(const char *cmd, int code, const outbox_error *err)
{
    const char *what = (err && err->message[0]) ? err->message : outbox_strerror(code);
    const char *hint = "";
    if (code == OUTBOX_ENOSCHEMA && !strstr(what, "outbox init"))
        hint = "; run outbox init --store URL first";
    else if (code == OUTBOX_ESCHEMANEWER && !strstr(what, "newer"))
        hint = "; the database was set up by a newer outbox: upgrade this one";
    char line[sizeof err->message + 128];
    snprintf(line, sizeof line, "%s%s", what, hint);
    report_line(cmd, line);
    return cli_exit_code(code);
}

int cli_bad_option(const char *cmd, char **argv, int c)
{
    const char *text = (optind > 0) ? argv[optind - 1] : "?";
    if (c == ':') {
        if (optopt && optopt < 256)
            return cli_usage(cmd, "option -%c needs a value; see outbox %s --help", optopt, cmd);
        return cli_usage(cmd, "option %s needs a value; see outbox %s --help", text, cmd);
    }
    if (optopt && optopt < 256)
        return cli_usage(cmd, "unknown option -%c; see outbox %s --help", optopt, cmd);
    return cli_usage(cmd, "unknown option %s; see outbox %s --help", text, cmd);
}

int cli_once(const char *cmd, const struct option *options, int c, uint64_t *seen)
{
    for (size_t i = 0; options[i].name && i < 64; i++) {
        if (options[i].val != c || options[i].flag != NULL) continue;
        if (options[i].has_arg != required_argument) return CLI_EXIT_OK;
        if (*seen & (UINT64_C(1) << i))
            return cli_usage(cmd,
                             "--%s is given twice; give it once (a repeated option does "
                             "not replace the earlier one)",
                             options[i].name);
        *seen |= UINT64_C(1) << i;
        return CLI_EXIT_OK;
    }
    return CLI_EXIT_OK;
}

int cli_option(const char *cmd, int c, char **argv, const char *usage)
{
    int rc;
    if (c == 'h') {
        fputs(usage, stdout);
        return CLI_EXIT_OK;
    }
    if (c == '?' || c == ':') return cli_bad_option(cmd, argv, c);
    rc = cli_global_option(cmd, c, optarg);
    if (rc == CLI_EXIT_OK) return CLI_CONTINUE;
    if (rc > 0) return rc;
    return cli_bad_option(cmd, argv, '?');
}

/* ------------------------------------------------------------------------
 * Parsing
 * ---------------------------------------------------------------------- */

int cli_parse_uint(const char *cmd, const char *opt, const char *text, uint64_t min, uint64_t max,
                   uint64_t *out)
{
    unsigned long long v;
    char *end = NULL;
    if (!text[0]) return cli_usage(cmd, "%s needs a number; got an empty value", opt);
    for (const char *p = text; *p; p++)
        if (!isdigit((unsigned char)*p))
            return cli_usage(cmd,
                             "%s '%s' is not a whole number; give digits only, from %llu to %llu",
                             opt, text, (unsigned long long)min, (unsigned long long)max);
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno == ERANGE || *end != '\0' || v < min || v > max)
        return cli_usage(cmd, "%s %s is out of range; give a number from %llu to %llu", opt, text,
                         (unsigned long long)min, (unsigned long long)max);
    *out = v;
    return CLI_EXIT_OK;
}

int cli_parse_duration(const char *cmd, const char *opt, const char *text, int64_t max_ms,
                       int64_t *out_ms)
{
    int64_t ms = outbox_duration_parse_ms(text);
    if (ms < 0)
        return cli_usage(cmd, "%s '%s' is not a duration; write e.g. 500ms, 30s, 5m, 2h or 7d", opt,
                         text);
    if (ms > max_ms)
        return cli_usage(cmd, "%s %s is too long; the largest allowed is %lld ms", opt, text,
                         (long long)max_ms);
    *out_ms = ms;
    return CLI_EXIT_OK;
}

int cli_store_url(const char *cmd, const char *value, const char **url)
{
    if (!value || !value[0]) value = getenv("OUTBOX_STORE");
    if (!value || !value[0])
        return cli_usage(cmd, "--store is required (e.g. --store sqlite:app.db); "
                              "or set OUTBOX_STORE");
    *url = value;
    return CLI_EXIT_OK;
}

int cli_store_open(const char *cmd, const char *url, outbox_store **store)
{
    outbox_error err = {0, ""};
    int rc;
    *store = NULL;
    if ((rc = cli_check_scheme(cmd, "store URL", url, CLI_STORES)) != CLI_EXIT_OK) return rc;
    rc = outbox_store_open(url, store, &err);
    if (rc != OUTBOX_OK) return cli_fail(cmd, rc, &err);
    return CLI_EXIT_OK;
}

int cli_store_connect(const char *cmd, const char *value, outbox_store **store, const char **url)
{
    const char *used = NULL;
    int rc;
    *store = NULL;
    if ((rc = cli_store_url(cmd, value, &used)) != CLI_EXIT_OK) return rc;
    if (url) *url = used;
    return cli_store_open(cmd, used, store);
}

int cli_parse_id(const char *cmd, const char *what, const char *text, char out[37])
{
    if (!outbox_uuid_valid(text))
        return cli_usage(cmd,
                         "%s '%s' is not a UUID; write it as 8-4-4-4-12 hex digits, "
                         "e.g. 0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07",
                         what, text);
    for (size_t i = 0; i < 36; i++)
        out[i] = (char)tolower((unsigned char)text[i]);
    out[36] = '\0';
    return CLI_EXIT_OK;
}

int cli_failed_ids(const char *cmd, const char *verb, int argc, char **argv, int all,
                   const char ***ids, size_t *n)
{
    size_t count = argc > optind ? (size_t)(argc - optind) : 0;
    const char **ptrs;
    char *text;
    int rc;

    *ids = NULL;
    *n = 0;
    if (all && count > 0) return cli_usage(cmd, "give message IDs or --all-failed, not both");
    if (!all && count == 0)
        return cli_usage(cmd, "nothing to %s; give the IDs of Failed messages or --all-failed",
                         verb);
    if (count == 0) return CLI_EXIT_OK;
    ptrs = malloc(count * (sizeof *ptrs + 37));
    if (!ptrs) return cli_failure(cmd, "out of memory");
    text = (char *)(ptrs + count);
    for (size_t i = 0; i < count; i++) {
        ptrs[i] = text + i * 37;
        if ((rc = cli_parse_id(cmd, "ID", argv[optind + (int)i], text + i * 37)) != CLI_EXIT_OK) {
            free(ptrs);
            return rc;
        }
    }
    *ids = ptrs;
    *n = count;
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Output
 * ---------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p (2 to 4), or 0 when p
 * does not start one (overlong forms and surrogates included). */
static size_t utf8_sequence(const unsigned char *p)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xbf;
    size_t n;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    return n;
}

void cli_escape(cli_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        const unsigned char *run = p;
        size_t n;
        while (*p >= 0x20 && *p < 0x7f)
            p++;
        if (p > run) cli_buf_append(b, (const char *)run, (size_t)(p - run));
        if (!*p) break;
        n = *p < 0x80 ? 0 : utf8_sequence(p);
        if (n == 2 && p[0] == 0xc2 && p[1] < 0xa0) /* C1 control, U+0080..U+009F */
            cli_buf_printf(b, "\\u%04x", p[1]);
        else if (n > 0)
            cli_buf_append(b, (const char *)p, n);
        else if (*p == '\n')
            cli_buf_puts(b, "\\n");
        else if (*p == '\r')
            cli_buf_puts(b, "\\r");
        else if (*p == '\t')
            cli_buf_puts(b, "\\t");
        else
            cli_buf_printf(b, "\\x%02x", *p);
        p += n > 0 ? n : 1;
    }
}

void cli_fputs_escaped(const char *s, FILE *out)
{
    const char *text;
    cli_buf b;
    cli_buf_init(&b);
    cli_escape(&b, s);
    if ((text = cli_buf_text(&b)) != NULL && b.len > 0) fwrite(text, 1, b.len, out);
    cli_buf_free(&b);
}

void cli_format_duration(int64_t ms, char *buf, size_t len)
{
    if (ms < 0) ms = 0;
    if (ms < 1000)
        snprintf(buf, len, "%lldms", (long long)ms);
    else if (ms < 60000)
        snprintf(buf, len, "%lld.%llds", (long long)(ms / 1000), (long long)(ms % 1000 / 100));
    else if (ms < 3600000)
        snprintf(buf, len, "%lldm%02llds", (long long)(ms / 60000), (long long)(ms % 60000 / 1000));
    else if (ms < 86400000)
        snprintf(buf, len, "%lldh%02lldm", (long long)(ms / 3600000),
                 (long long)(ms % 3600000 / 60000));
    else
        snprintf(buf, len, "%lldd%02lldh", (long long)(ms / 86400000),
                 (long long)(ms % 86400000 / 3600000));
}

void cli_format_time(int64_t unix_us, char buf[32])
{
    if (unix_us == 0)
        snprintf(buf, 32, "-");
    else
        outbox_time_format(unix_us, buf);
}

/* A timestamp as an RFC 3339 string, or null for 0 ("never"). */
static json_t *time_or_null(int64_t unix_us)
{
    char buf[32];
    if (unix_us == 0) return json_null();
    outbox_time_format(unix_us, buf);
    return json_string(buf);
}

/* A JSON string for stored text; text that is not UTF-8 (a foreign
 * writer's) cannot be a JSON string as it is, so it is given escaped as by
 * cli_escape rather than left out. */
static json_t *text_value(const char *s)
{
    json_t *v = json_string(s ? s : "");
    if (!v) {
        const char *text;
        cli_buf b;
        cli_buf_init(&b);
        cli_escape(&b, s);
        text = cli_buf_text(&b);
        v = text ? json_string(text) : NULL;
        cli_buf_free(&b);
    }
    return v;
}

json_t *cli_msg_to_json(const outbox_msg *msg)
{
    json_t *o = json_object();
    json_t *headers, *payload;
    const char *headers_json = outbox_msg_headers_json(msg), *body = outbox_msg_payload(msg);
    const char *last_error = outbox_msg_last_error(msg);
    if (!o) return NULL;
    headers = json_loads(headers_json ? headers_json : "{}", 0, NULL);
    if (!headers || !json_is_object(headers)) { /* a foreign writer's row: keep the text */
        json_decref(headers);
        headers = text_value(headers_json);
    }
    payload = json_loads(body ? body : "null", JSON_DECODE_ANY, NULL);
    if (!payload) /* e.g. an integer beyond 64 bits: keep the text */
        payload = text_value(body);
    json_object_set_new(o, "seq", json_integer((json_int_t)outbox_msg_seq(msg)));
    json_object_set_new(o, "id", text_value(outbox_msg_id(msg)));
    json_object_set_new(o, "type", text_value(outbox_msg_type(msg)));
    json_object_set_new(o, "aggregate_type", text_value(outbox_msg_aggregate_type(msg)));
    json_object_set_new(o, "aggregate_id", text_value(outbox_msg_aggregate_id(msg)));
    json_object_set_new(o, "occurred_at", time_or_null(outbox_msg_occurred_at(msg)));
    json_object_set_new(o, "status", json_string(outbox_msg_status_name(outbox_msg_status(msg))));
    json_object_set_new(o, "attempts", json_integer(outbox_msg_attempts(msg)));
    json_object_set_new(o, "available_at", time_or_null(outbox_msg_available_at(msg)));
    json_object_set_new(o, "last_error", last_error ? text_value(last_error) : json_null());
    json_object_set_new(o, "sent_at", time_or_null(outbox_msg_sent_at(msg)));
    json_object_set_new(o, "headers", headers ? headers : json_null());
    json_object_set_new(o, "payload", payload ? payload : json_null());
    return o;
}

int cli_print_json(const char *cmd, json_t *value)
{
    if (!value || json_dumpf(value, stdout, JSON_INDENT(2)) != 0 || fputc('\n', stdout) == EOF)
        return cli_failure(cmd, "could not write JSON output; check that stdout is writable");
    return CLI_EXIT_OK;
}
