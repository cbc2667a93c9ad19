/*
 * config.c - the relay's settings table (flags and file keys, see config.h)
 * and its configuration file reader.
 *
 * The reader is the project's own rather than libinih: the file is a
 * handful of sections and `key = value` lines, and what matters is the
 * checking around it (every problem with its line, unknown keys with a
 * suggestion, collisions between relays), which inih leaves to the caller
 * anyway.  Its callback reports a line number only through a build option
 * (INI_HANDLER_LINENO, off in Debian's libinih 55 build), and it stops or
 * goes on silently on a line without '='; a reader of our own keeps the
 * line of every key and says what is wrong with each line, and the static
 * `outbox` binary needs no library more.
 *
 * Format: `#` or `;` starts a comment line (not inside a value: URLs may
 * hold '#'); `[outbox]` holds the process-wide keys (keys before the first
 * section go there too); `[relay NAME]` one relay; `key = value`, the value
 * taken whole after the '=' with the blanks around it removed (and one pair
 * of double quotes, when it is quoted).  A destination setting is
 * `to-opt.KEY = VALUE`, checked against the destination driver's table.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Setters
 * ---------------------------------------------------------------------- */

/* yes/no for a flag: absent (a command-line flag) is yes. */
static int flag_value(const char *cmd, const char *opt, const char *text, int *out)
{
    if (text == NULL || strcmp(text, "yes") == 0 || strcmp(text, "true") == 0 ||
        strcmp(text, "1") == 0 || strcmp(text, "on") == 0)
        *out = 1;
    else if (strcmp(text, "no") == 0 || strcmp(text, "false") == 0 || strcmp(text, "0") == 0 ||
             strcmp(text, "off") == 0)
        *out = 0;
    else
        return cli_usage(cmd, "%s '%s' is not yes or no; use yes or no", opt, text);
    return CLI_EXIT_OK;
}

/* A duration into an unsigned millisecond field. */
static int duration_value(const char *cmd, const char *opt, const char *text, unsigned *out)
{
    int64_t ms = 0;
    int rc = cli_parse_duration(cmd, opt, text, (int64_t)UINT_MAX, &ms);
    if (rc == CLI_EXIT_OK) *out = (unsigned)ms;
    return rc;
}

static int set_store(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->store = text;
    return CLI_EXIT_OK;
}

static int set_to(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->to = text;
    return CLI_EXIT_OK;
}

static int set_once(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return flag_value(cmd, opt, text, &s->opts.once);
}

static int set_batch(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    uint64_t n;
    int rc = cli_parse_uint(cmd, opt, text, 1, 100000, &n);
    if (rc == CLI_EXIT_OK) s->opts.batch_size = (unsigned)n;
    return rc;
}

static int set_max_attempts(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    uint64_t n;
    int rc = cli_parse_uint(cmd, opt, text, 1, 1000000, &n);
    if (rc == CLI_EXIT_OK) s->opts.max_attempts = (unsigned)n;
    return rc;
}

static int set_backoff_base(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return duration_value(cmd, opt, text, &s->opts.backoff_base_ms);
}

static int set_backoff_max(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return duration_value(cmd, opt, text, &s->opts.backoff_max_ms);
}

static int set_on_sent(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    if (strcmp(text, "delete") == 0)
        s->opts.on_sent = OUTBOX_ON_SENT_DELETE;
    else if (strcmp(text, "mark") == 0)
        s->opts.on_sent = OUTBOX_ON_SENT_MARK;
    else
        return cli_usage(cmd, "%s '%s' is not a mode; use delete or mark", opt, text);
    return CLI_EXIT_OK;
}

static int set_failed_blocks(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    if (text == NULL || (strcmp(text, "yes") != 0 && strcmp(text, "no") != 0))
        return cli_usage(cmd, "%s '%s' is not yes or no; use yes or no", opt, text ? text : "");
    s->opts.failed_blocks_aggregate = strcmp(text, "yes") == 0;
    return CLI_EXIT_OK;
}

static int set_poll_interval(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return duration_value(cmd, opt, text, &s->opts.poll_interval_ms);
}

static int set_lease_ttl(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return duration_value(cmd, opt, text, &s->opts.lease_ttl_ms);
}

static int set_wait_lease(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return flag_value(cmd, opt, text, &s->opts.wait_for_lease);
}

static int set_source(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->opts.source = text;
    return CLI_EXIT_OK;
}

static int set_name(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->opts.name = text;
    return CLI_EXIT_OK;
}

static int set_to_opt(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    if (!strchr(text, '=') || text[0] == '=')
        return cli_usage(cmd, "%s '%s' is not KEY=VALUE", opt, text);
    if (s->to_opt_count == CLI_MAX_TO_OPTS)
        return cli_usage(cmd, "more than %d %s settings", CLI_MAX_TO_OPTS, opt);
    s->to_opts[s->to_opt_count++] = text;
    s->to_opts[s->to_opt_count] = NULL;
    return CLI_EXIT_OK;
}

static int set_max_message_bytes(const char *cmd, const char *opt, const char *text,
                                 cli_settings *s)
{
    return cli_parse_uint(cmd, opt, text, 1024, 1073741824, &s->max_message_bytes);
}

static int set_max_field_bytes(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return cli_parse_uint(cmd, opt, text, 16, 1048576, &s->max_field_bytes);
}

static int set_connect_timeout(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return cli_parse_duration(cmd, opt, text, INT64_C(31536000000), &s->connect_timeout_ms);
}

static int set_listen(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    if (!strchr(text, ':'))
        return cli_usage(cmd, "%s '%s' is not ADDR:PORT; write e.g. 127.0.0.1:9464", opt, text);
    s->monitor.listen = text;
    return CLI_EXIT_OK;
}

static int set_listen_public(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    return flag_value(cmd, opt, text, &s->monitor.allow_public);
}

static int set_admin_token_file(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->token_file = text;
    return CLI_EXIT_OK;
}

static int set_metrics_refresh(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    int rc = duration_value(cmd, opt, text, &s->monitor.refresh_ms);
    if (rc == CLI_EXIT_OK && (s->monitor.refresh_ms < 100 || s->monitor.refresh_ms > 3600000))
        rc = cli_usage(cmd, "%s %s is out of range; use 100ms to 1h", opt, text);
    s->refresh_given = 1;
    return rc;
}

static int set_stop_timeout(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    int rc = cli_parse_duration(cmd, opt, text, INT64_C(86400000), &s->stop_timeout_ms);
    if (rc == CLI_EXIT_OK && s->stop_timeout_ms < 100)
        rc = cli_usage(cmd, "%s %s is out of range; use 100ms to 1d", opt, text);
    return rc;
}

static int set_log_level(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(text, levels[i]) == 0) {
            s->log_level = text;
            return CLI_EXIT_OK;
        }
    return cli_usage(cmd, "%s '%s' is not a level; use debug, info, warn or error", opt, text);
}

static int set_log_format(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    if (strcmp(text, "text") != 0 && strcmp(text, "json") != 0)
        return cli_usage(cmd, "%s '%s' is not a format; use text or json", opt, text);
    s->log_format = text;
    return CLI_EXIT_OK;
}

static int set_config(const char *cmd, const char *opt, const char *text, cli_settings *s)
{
    (void)cmd, (void)opt;
    s->config = text;
    return CLI_EXIT_OK;
}

#define R (CLI_SCOPE_RELAY | CLI_SCOPE_FLAG)
#define P (CLI_SCOPE_PROCESS | CLI_SCOPE_FLAG)

/* The order is that of `outbox relay --help` and of docs/CONFIG.md.  Append
 * freely: flags and keys come from here. */
const cli_setting cli_setting_table[] = {
    {"config", "PATH", CLI_SCOPE_FLAG,
     "run the relays of this configuration file (command line only)", set_config},
    {"store", "URL", R, "the database (required; default $OUTBOX_STORE on the command line)",
     set_store},
    {"to", "URL", R, "the destination (required; default $OUTBOX_TO on the command line)", set_to},
    {"once", NULL, CLI_SCOPE_FLAG, "publish what is due, then exit (command line only, one relay)",
     set_once},
    {"batch", "N", R, "messages claimed at once, 1..100000 (default 512)", set_batch},
    {"max-attempts", "N", R, "attempts before a message is Failed, 1..1000000 (default 10)",
     set_max_attempts},
    {"backoff-base", "DUR", R, "first retry delay cap (default 500ms)", set_backoff_base},
    {"backoff-max", "DUR", R, "largest retry delay cap (default 5m)", set_backoff_max},
    {"on-sent", "MODE", R, "delete (default) or mark: what becomes of confirmed messages",
     set_on_sent},
    {"failed-blocks", "B", R,
     "yes (default): a Failed message holds back later messages of its aggregate; no",
     set_failed_blocks},
    {"poll-interval", "DUR", R, "fallback full check for new messages (default 1s)",
     set_poll_interval},
    {"lease-ttl", "DUR", R, "relay lease lifetime, at least 1s (default 10s)", set_lease_ttl},
    {"wait-lease", NULL, R, "stand by while another relay holds the lease (default no)",
     set_wait_lease},
    {"source", "URI", R, "CloudEvents source attribute (default /outbox)", set_source},
    {"name", "NAME", R,
     "relay name in status, the lease and the metrics' relay label (default: the section's "
     "name in a file, host:pid on the command line)",
     set_name},
    {"to-opt", "KEY=VALUE", R,
     "a destination setting (repeatable; in a file: to-opt.KEY = VALUE), the keys of the "
     "destination URL's query parameters",
     set_to_opt},
    {"connect-timeout", "DUR", R,
     "how long to wait at start-up for a store or destination that cannot be reached yet "
     "(default: for ever; 30s with --once; 0: fail at once)",
     set_connect_timeout},
    {"max-message-bytes", "N", P, "largest stored message accepted (default 1048576)",
     set_max_message_bytes},
    {"max-field-bytes", "N", P, "largest type, aggregate type and id (default 256)",
     set_max_field_bytes},
    {"listen", "ADDR:PORT", P, "serve /metrics, /healthz, /readyz and the console (default off)",
     set_listen},
    {"listen-public", NULL, P, "allow a listen address that is not loopback (default no)",
     set_listen_public},
    {"admin-token-file", "PATH", P,
     "a file (mode 600) holding the token that allows the console's retry and drop",
     set_admin_token_file},
    {"metrics-refresh", "DUR", P, "how often the monitor queries the stores' counts (default 5s)",
     set_metrics_refresh},
    {"stop-timeout", "DUR", P,
     "how long SIGTERM/SIGINT waits for the relays to finish their batches before exit 1 "
     "(default 30s)",
     set_stop_timeout},
    {"log-level", "L", CLI_SCOPE_PROCESS,
     "debug, info, warn or error (default info; the --log-level flag overrides it)", set_log_level},
    {"log-format", "F", CLI_SCOPE_PROCESS,
     "text or json (default text; the --log-format flag overrides it)", set_log_format},
};
const size_t cli_setting_count = sizeof cli_setting_table / sizeof cli_setting_table[0];
_Static_assert(sizeof cli_setting_table / sizeof cli_setting_table[0] <= CLI_SETTING_MAX,
               "raise CLI_SETTING_MAX");

#undef R
#undef P

void cli_settings_init(cli_settings *s)
{
    memset(s, 0, sizeof *s);
    outbox_relay_options_init(&s->opts);
    outbox_monitor_options_init(&s->monitor);
    s->connect_timeout_ms = -2;
    s->stop_timeout_ms = 30000;
}

const cli_setting *cli_setting_find(const char *name)
{
    for (size_t i = 0; i < cli_setting_count; i++)
        if (strcmp(cli_setting_table[i].name, name) == 0) return &cli_setting_table[i];
    return NULL;
}

int cli_settings_check_relay(const char *cmd, const char *dash, const cli_settings *s)
{
    char to[8];
    int rc;
    if (!s->store || !s->store[0])
        return cli_usage(cmd, "%sstore is required (the database, e.g. sqlite:app.db)", dash);
    if (!s->to || !s->to[0])
        return cli_usage(cmd, "%sto is required (the destination, e.g. file:events.jsonl)", dash);
    snprintf(to, sizeof to, "%sto", dash);
    if ((rc = cli_check_scheme(cmd, "store URL", s->store, CLI_STORES)) != CLI_EXIT_OK ||
        (rc = cli_check_scheme(cmd, to, s->to, CLI_DESTINATIONS)) != CLI_EXIT_OK)
        return rc;
    if (s->opts.backoff_max_ms < s->opts.backoff_base_ms)
        return cli_usage(cmd,
                         "%sbackoff-max (%u ms) is shorter than %sbackoff-base (%u ms); "
                         "make it at least as long",
                         dash, s->opts.backoff_max_ms, dash, s->opts.backoff_base_ms);
    return CLI_EXIT_OK;
}

int cli_settings_check_process(const char *cmd, const cli_settings *s)
{
    if (s->monitor.listen == NULL &&
        (s->monitor.allow_public || s->token_file != NULL || s->refresh_given))
        return cli_usage(cmd, "--listen-public, --admin-token-file and --metrics-refresh go with "
                              "--listen ADDR:PORT");
    if (s->token_file != NULL)
        return cli_token_read(cmd, "--admin-token-file", s->token_file, NULL);
    return CLI_EXIT_OK;
}

/* Largest admin token file read. */
#define MAX_TOKEN_BYTES 4096

/* Refuses, like ssh does for keys, a file other users can read or write. */
int cli_token_read(const char *cmd, const char *opt, const char *path, char **token)
{
    struct stat st;
    char *text;
    size_t len;
    FILE *f;

    if (token) *token = NULL;
    f = fopen(path, "r");
    if (f == NULL) return cli_usage(cmd, "%s %s cannot be read", opt, path);
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return cli_usage(cmd, "%s %s is not a regular file", opt, path);
    }
    if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
        fclose(f);
        return cli_usage(cmd,
                         "%s %s is accessible by other users (mode %04o); "
                         "restrict it: chmod 600 %s",
                         opt, path, (unsigned)(st.st_mode & 07777), path);
    }
    text = calloc(1, MAX_TOKEN_BYTES + 1);
    if (text == NULL) {
        fclose(f);
        return cli_failure(cmd, "out of memory reading %s", opt);
    }
    len = fread(text, 1, MAX_TOKEN_BYTES + 1, f);
    fclose(f);
    if (len > MAX_TOKEN_BYTES) {
        free(text);
        return cli_usage(cmd, "%s %s is larger than %d bytes", opt, path, MAX_TOKEN_BYTES);
    }
    text[len] = '\0';
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    if (len == 0 || strlen(text) != len || strpbrk(text, "\r\n") != NULL) {
        cli_token_free(text);
        return cli_usage(cmd, "%s %s must hold one line: the token", opt, path);
    }
    if (token)
        *token = text;
    else
        cli_token_free(text);
    return CLI_EXIT_OK;
}

/* Forgets the token (no copy left in freed memory). */
void cli_token_free(char *token)
{
    volatile char *p = token;
    if (token == NULL) return;
    while (*p)
        *p++ = '\0';
    free(token);
}

/* ------------------------------------------------------------------------
 * Reading a file
 * ---------------------------------------------------------------------- */

/* One `key = value` as read (or from the environment: line 0, env set). */
typedef struct entry {
    char *key, *value;
    int line;
    const char *env; /* the variable it came from; NULL: the file */
} entry;

/* A section as read. */
typedef struct section {
    char *name; /* NULL: [outbox] */
    int line;
    entry *entries;
    size_t count, cap;
} section;

typedef struct reader {
    const char *cmd, *path;
    int problems;
    int oom;
} reader;

static void problem(reader *rd, int line, const char *fmt, ...) CLI_PRINTF(3, 4);

/* Prints "outbox CMD: PATH:LINE: ..." and counts it. */
static void problem(reader *rd, int line, const char *fmt, ...)
{
    char text[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cli_usage(rd->cmd, "%s:%d: %s", rd->path, line, text);
    rd->problems++;
}

/* "CMD: PATH:LINE" (or "CMD: environment VAR") into buf: the cmd the
 * setters print their messages with. */
static void where(const reader *rd, const entry *e, int line, char *buf, size_t len)
{
    if (e && e->env)
        snprintf(buf, len, "%s: environment %s", rd->cmd, e->env);
    else
        snprintf(buf, len, "%s: %s:%d", rd->cmd, rd->path, e ? e->line : line);
}

static char *trim(char *s)
{
    char *end;
    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int add_entry(section *sec, const char *key, const char *value, int line, const char *env)
{
    entry *e;
    if (sec->count == sec->cap) {
        size_t cap = sec->cap ? sec->cap * 2 : 16;
        entry *grown = realloc(sec->entries, cap * sizeof *grown);
        if (!grown) return -1;
        sec->entries = grown;
        sec->cap = cap;
    }
    e = &sec->entries[sec->count];
    e->key = strdup(key);
    e->value = strdup(value);
    e->line = line;
    e->env = env;
    if (!e->key || !e->value) {
        free(e->key);
        free(e->value);
        return -1;
    }
    sec->count++;
    return 0;
}

static void section_free(section *sec)
{
    for (size_t i = 0; i < sec->count; i++) {
        free(sec->entries[i].key);
        free(sec->entries[i].value);
    }
    free(sec->entries);
    free(sec->name);
}

/* A relay name: letters, digits, '-', '_' and '.'. */
static int valid_name(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.') return 0;
    return 1;
}

/* Reads the file into sections[0] ([outbox]) and the relays after it. */
static int read_sections(reader *rd, FILE *f, section **out, size_t *count)
{
    section *secs = calloc(1, sizeof *secs);
    size_t n = 1;
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0;
    int outbox_seen = 0;

    if (!secs) return -1;
    secs[0].line = 1;
    while (getline(&line, &cap, f) >= 0) {
        char *s = trim(line), *eq;
        section *cur = &secs[n - 1];
        lineno++;
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            char *close = strchr(s, ']'), *name;
            if (!close || trim(close + 1)[0] != '\0') {
                problem(rd, lineno,
                        "section header '%s' is not closed; write [relay NAME] or "
                        "[outbox]",
                        s);
                continue;
            }
            *close = '\0';
            name = trim(s + 1);
            if (strcmp(name, "outbox") == 0) {
                if (outbox_seen || secs[0].count > 0)
                    problem(rd, lineno,
                            "a second [outbox] section; put the process-wide keys in "
                            "one");
                outbox_seen = 1;
                /* Keys under it go to sections[0], wherever it is. */
                if (n > 1 && secs[n - 1].name) {
                    section *grown = realloc(secs, (n + 1) * sizeof *secs);
                    if (!grown) goto oom;
                    secs = grown;
                    memset(&secs[n], 0, sizeof secs[n]);
                    secs[n].line = -1; /* a marker: keys go to [outbox] */
                    n++;
                }
                continue;
            }
            if (strncmp(name, "relay", 5) != 0 || !isspace((unsigned char)name[5]) ||
                !valid_name(trim(name + 5))) {
                problem(rd, lineno,
                        "section [%s] is not [outbox] or [relay NAME] (NAME: letters, digits, "
                        "'-', '_', '.')",
                        name);
                continue;
            }
            {
                section *grown = realloc(secs, (n + 1) * sizeof *secs);
                if (!grown) goto oom;
                secs = grown;
                memset(&secs[n], 0, sizeof secs[n]);
                secs[n].line = lineno;
                secs[n].name = strdup(trim(name + 5));
                n++;
                if (!secs[n - 1].name) goto oom;
            }
            continue;
        }
        eq = strchr(s, '=');
        if (!eq || eq == s) {
            problem(rd, lineno, "'%s' is not 'key = value' (or a [section] header)", s);
            continue;
        }
        *eq = '\0';
        {
            char *key = trim(s), *value = trim(eq + 1);
            size_t vlen = strlen(value);
            if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
                value[vlen - 1] = '\0';
                value++;
            }
            if (cur->line == -1) cur = &secs[0];
            if (add_entry(cur, key, value, lineno, NULL) != 0) goto oom;
        }
    }
    free(line);
    *out = secs;
    *count = n;
    return 0;
oom:
    free(line);
    for (size_t i = 0; i < n; i++)
        section_free(&secs[i]);
    free(secs);
    return -1;
}

/* Levenshtein distance, for "did you mean". */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 63 || lb >= 63) return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* The key of the table closest to key, when close enough to be a typo. */
static const char *suggestion(const char *key, int scope)
{
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < cli_setting_count; i++) {
        size_t d;
        if (!(cli_setting_table[i].scope & scope)) continue;
        d = distance(key, cli_setting_table[i].name);
        if (d < best_d) {
            best_d = d;
            best = cli_setting_table[i].name;
        }
    }
    return best;
}

/* The environment variable for key of relay (NULL: [outbox]):
 * OUTBOX_[RELAY_]KEY, upper case, other characters as '_'. */
static void env_name(const char *relay, const char *key, char *buf, size_t len)
{
    size_t n;
    if (relay)
        snprintf(buf, len, "OUTBOX_%s_%s", relay, key);
    else
        snprintf(buf, len, "OUTBOX_%s", key);
    for (n = 0; buf[n]; n++)
        buf[n] = isalnum((unsigned char)buf[n]) ? (char)toupper((unsigned char)buf[n]) : '_';
}

/* Keeps s alive as long as the owner (a relay or the config). */
static const char *own(char ***owned, size_t *count, char *s, reader *rd)
{
    char **grown;
    if (!s) {
        rd->oom = 1;
        return "";
    }
    grown = realloc(*owned, (*count + 1) * sizeof *grown);
    if (!grown) {
        free(s);
        rd->oom = 1;
        return "";
    }
    *owned = grown;
    (*owned)[(*count)++] = s;
    return s;
}

static const outbox_driver_info *destination_driver(const char *url)
{
    const outbox_driver_info *d;
    size_t n = strcspn(url, ":");
    for (size_t i = 0; (d = outbox_driver_get(OUTBOX_DRIVER_DESTINATION, i)) != NULL; i++)
        if (strlen(d->scheme) == n && strncasecmp(d->scheme, url, n) == 0) return d;
    return NULL;
}

/* The driver's setting named key ("endpoint.<TYPE>" families match by
 * their prefix). */
static const outbox_driver_prop *driver_prop(const outbox_driver_info *d, const char *key)
{
    for (size_t i = 0; i < d->prop_count; i++) {
        const char *name = d->props[i].name, *family = strchr(name, '<');
        if (strcmp(name, key) == 0) return &d->props[i];
        if (family && strncmp(name, key, (size_t)(family - name)) == 0 &&
            key[family - name] != '\0')
            return &d->props[i];
    }
    return NULL;
}

/* Checks a to-opt value by its driver's table, without connecting: the key
 * exists, enums and numbers fit, files can be read (a secret file is not
 * readable by other users). */
static void check_to_opt(reader *rd, const entry *e, const char *key, const char *to)
{
    const outbox_driver_info *d = destination_driver(to);
    const outbox_driver_prop *p;
    char at[600];
    if (!d) return; /* the scheme is reported by itself */
    p = driver_prop(d, key);
    if (!p) {
        cli_buf keys;
        cli_buf_init(&keys);
        for (size_t i = 0; i < d->prop_count; i++)
            cli_buf_printf(&keys, "%s%s", i ? ", " : "", d->props[i].name);
        problem(rd, e->line, "unknown to-opt key '%s' for %s:; use one of %s", key, d->scheme,
                cli_buf_text(&keys) ? cli_buf_text(&keys) : "(out of memory)");
        cli_buf_free(&keys);
        return;
    }
    where(rd, e, 0, at, sizeof at);
    if (strcmp(p->type, "enum") == 0 && p->range) {
        size_t n = strlen(e->value);
        const char *r = p->range;
        int found = 0;
        while (*r && !found) {
            size_t m = strcspn(r, "|");
            found = m == n && strncmp(r, e->value, n) == 0;
            r += m + (r[m] == '|');
        }
        if (!found)
            problem(rd, e->line, "to-opt.%s '%s' is not one of %s", key, e->value, p->range);
    } else if (strcmp(p->type, "bool") == 0) {
        int v;
        if (flag_value(at, key, e->value, &v) != CLI_EXIT_OK) rd->problems++;
    } else if (strcmp(p->type, "duration") == 0) {
        if (outbox_duration_parse_ms(e->value) < 0)
            problem(rd, e->line, "to-opt.%s '%s' is not a duration; write e.g. 500ms, 30s, 5m", key,
                    e->value);
    } else if (strcmp(p->type, "int") == 0) {
        unsigned long long lo = 0, hi = ULLONG_MAX;
        uint64_t v;
        if (p->range) {
            char *end;
            lo = strtoull(p->range, &end, 10);
            if (strncmp(end, "..", 2) == 0 && end[2]) hi = strtoull(end + 2, NULL, 10);
        }
        if (cli_parse_uint(at, key, e->value, lo, hi, &v) != CLI_EXIT_OK) rd->problems++;
    } else if (strcmp(p->type, "path") == 0) {
        if (access(e->value, R_OK) != 0)
            problem(rd, e->line, "to-opt.%s %s cannot be read (%s); fix the path", key, e->value,
                    strerror(errno));
    } else if (strcmp(p->type, "secret-file") == 0) {
        struct stat st;
        if (access(e->value, R_OK) != 0 || stat(e->value, &st) != 0)
            problem(rd, e->line, "to-opt.%s: the secret file %s cannot be read (%s); fix the path",
                    key, e->value, strerror(errno));
        else if (st.st_mode & (S_IROTH | S_IWOTH))
            problem(rd, e->line,
                    "to-opt.%s: the secret file %s is accessible by other users (mode %04o); "
                    "restrict it: chmod 600 %s",
                    key, e->value, (unsigned)(st.st_mode & 07777), e->value);
    }
}

/* Applies a section's entries (the file's, then the environment's, then
 * the overrides) to *s through the table.  scope: CLI_SCOPE_RELAY or
 * CLI_SCOPE_PROCESS.  Strings are kept in owned. */
static void apply_section(reader *rd, section *sec, int scope, const cli_override *overrides,
                          size_t override_count, cli_settings *s, char ***owned,
                          size_t *owned_count, int lines[CLI_SETTING_MAX])
{
    const entry *last[sizeof cli_setting_table / sizeof cli_setting_table[0]];
    const char *value[sizeof cli_setting_table / sizeof cli_setting_table[0]];
    entry *to_opt_entries[CLI_MAX_TO_OPTS];
    size_t to_opt_count = 0;
    char at[600];

    memset(last, 0, sizeof last);
    memset(value, 0, sizeof value);
    for (size_t i = 0; i < sec->count; i++) {
        entry *e = &sec->entries[i];
        const cli_setting *set;
        if (scope == CLI_SCOPE_RELAY && strncmp(e->key, "to-opt.", 7) == 0 && e->key[7]) {
            for (size_t j = 0; j < to_opt_count; j++)
                if (strcmp(to_opt_entries[j]->key, e->key) == 0) {
                    problem(rd, e->line, "%s is given twice (first at line %d); keep one", e->key,
                            to_opt_entries[j]->line);
                    goto next;
                }
            if (to_opt_count == CLI_MAX_TO_OPTS)
                problem(rd, e->line, "more than %d to-opt settings", CLI_MAX_TO_OPTS);
            else
                to_opt_entries[to_opt_count++] = e;
            continue;
        }
        set = cli_setting_find(e->key);
        if (!set || !(set->scope & (CLI_SCOPE_RELAY | CLI_SCOPE_PROCESS))) {
            const char *hint = suggestion(e->key, scope);
            if (set)
                problem(rd, e->line, "'%s' is a command-line option only; remove it", e->key);
            else if (hint)
                problem(rd, e->line, "unknown key '%s'; did you mean '%s'?", e->key, hint);
            else
                problem(rd, e->line, "unknown key '%s'; see `outbox help config --keys`%s", e->key,
                        scope == CLI_SCOPE_RELAY ? " (destination settings: to-opt.KEY = VALUE)"
                                                 : "");
            continue;
        }
        if (!(set->scope & scope)) {
            if (scope == CLI_SCOPE_RELAY)
                problem(rd, e->line,
                        "'%s' is process-wide: put it in the [outbox] section (or before the "
                        "first [relay])",
                        e->key);
            else
                problem(rd, e->line, "'%s' belongs to one relay: put it in a [relay NAME] section",
                        e->key);
            continue;
        }
        if (last[set - cli_setting_table] && !last[set - cli_setting_table]->env) {
            problem(rd, e->line, "'%s' is given twice (first at line %d); keep one", e->key,
                    last[set - cli_setting_table]->line);
            continue;
        }
        last[set - cli_setting_table] = e;
        value[set - cli_setting_table] = e->value;
    next:;
    }

    /* The environment overrides the file. */
    for (size_t i = 0; i < cli_setting_count; i++) {
        const cli_setting *set = &cli_setting_table[i];
        char name[300];
        const char *v;
        if (!(set->scope & scope) || !(set->scope & (CLI_SCOPE_RELAY | CLI_SCOPE_PROCESS)) ||
            strcmp(set->name, "to-opt") == 0)
            continue;
        env_name(sec->name, set->name, name, sizeof name);
        if ((v = getenv(name)) == NULL) continue;
        if (add_entry(sec, set->name, v, 0, NULL) != 0) {
            rd->oom = 1;
            return;
        }
        sec->entries[sec->count - 1].env = own(owned, owned_count, strdup(name), rd);
        /* entries may have moved: the to-opt pointers are rebuilt below */
        value[i] = sec->entries[sec->count - 1].value;
        last[i] = NULL;
    }
    to_opt_count = 0;
    for (size_t i = 0; i < sec->count; i++)
        if (!sec->entries[i].env && scope == CLI_SCOPE_RELAY &&
            strncmp(sec->entries[i].key, "to-opt.", 7) == 0 && sec->entries[i].key[7] &&
            to_opt_count < CLI_MAX_TO_OPTS) {
            int dup = 0;
            for (size_t j = 0; j < to_opt_count; j++)
                dup |= strcmp(to_opt_entries[j]->key, sec->entries[i].key) == 0;
            if (!dup) to_opt_entries[to_opt_count++] = &sec->entries[i];
        }

    /* Then the command line overrides both. */
    for (size_t i = 0; i < override_count; i++) {
        const cli_setting *set = overrides[i].setting;
        if ((set->scope & scope) && strcmp(set->name, "to-opt") != 0) {
            value[set - cli_setting_table] = overrides[i].value ? overrides[i].value : "yes";
        }
    }

    for (size_t i = 0; i < cli_setting_count; i++) {
        const entry *e = NULL;
        if (!value[i]) continue;
        for (size_t j = 0; j < sec->count; j++)
            if (strcmp(sec->entries[j].key, cli_setting_table[i].name) == 0 &&
                sec->entries[j].value == value[i])
                e = &sec->entries[j];
        if (e)
            where(rd, e, 0, at, sizeof at);
        else
            snprintf(at, sizeof at, "%s: command line", rd->cmd);
        lines[i] = e ? e->line : 0;
        if (cli_setting_table[i].set(at, cli_setting_table[i].name,
                                     own(owned, owned_count, strdup(value[i]), rd),
                                     s) != CLI_EXIT_OK)
            rd->problems++;
    }
    for (size_t i = 0; i < to_opt_count; i++) {
        entry *e = to_opt_entries[i];
        size_t n = strlen(e->key + 7) + strlen(e->value) + 2;
        char *kv = malloc(n);
        if (kv) snprintf(kv, n, "%s=%s", e->key + 7, e->value);
        where(rd, e, 0, at, sizeof at);
        if (set_to_opt(at, "to-opt", own(owned, owned_count, kv, rd), s) != CLI_EXIT_OK)
            rd->problems++;
        else if (s->to)
            check_to_opt(rd, e, e->key + 7, s->to);
    }
    for (size_t i = 0; i < override_count; i++)
        if ((overrides[i].setting->scope & scope) &&
            strcmp(overrides[i].setting->name, "to-opt") == 0 &&
            set_to_opt(rd->cmd, "--to-opt", overrides[i].value, s) != CLI_EXIT_OK)
            rd->problems++;
}

/* The settings of a relay as one text, to compare on reload. */
static char *relay_text(const cli_settings *s, const char *name)
{
    cli_buf b;
    char *text;
    const cli_settings *d = s;
    cli_buf_init(&b);
    cli_buf_printf(&b, "name=%s\nstore=%s\nto=%s\nsource=%s\n", name, d->store ? d->store : "",
                   d->to ? d->to : "", d->opts.source ? d->opts.source : "");
    cli_buf_printf(&b, "relay-name=%s\nbatch=%u\nattempts=%u\nbackoff=%u..%u\non-sent=%d\n",
                   d->opts.name ? d->opts.name : "", d->opts.batch_size, d->opts.max_attempts,
                   d->opts.backoff_base_ms, d->opts.backoff_max_ms, d->opts.on_sent);
    cli_buf_printf(&b, "failed-blocks=%d\npoll=%u\nlease=%u\nwait=%d\nconnect=%lld\n",
                   d->opts.failed_blocks_aggregate, d->opts.poll_interval_ms, d->opts.lease_ttl_ms,
                   d->opts.wait_for_lease, (long long)d->connect_timeout_ms);
    for (size_t i = 0; i < d->to_opt_count; i++)
        cli_buf_printf(&b, "to-opt=%s\n", d->to_opts[i]);
    text = cli_buf_text(&b) ? strdup(cli_buf_text(&b)) : NULL;
    cli_buf_free(&b);
    return text;
}

/* What two relays of one file must not share: an outbox (one lease each),
 * or a destination with different settings. */
static void check_collisions(reader *rd, cli_config *c)
{
    for (size_t i = 0; i < c->relay_count; i++)
        for (size_t j = 0; j < i; j++) {
            const cli_config_relay *a = c->relays[j], *b = c->relays[i];
            const cli_settings *x = &a->settings, *y = &b->settings;
            int same_opts = x->to_opt_count == y->to_opt_count;
            char shown[512];
            if (!x->store || !y->store || !x->to || !y->to) continue;
            for (size_t k = 0; same_opts && k < x->to_opt_count; k++) {
                int found = 0;
                for (size_t m = 0; m < y->to_opt_count; m++)
                    found |= strcmp(x->to_opts[k], y->to_opts[m]) == 0;
                same_opts = found;
            }
            if (strcmp(x->to, y->to) == 0 && !same_opts) {
                outbox_url_redact(y->to, shown, sizeof shown);
                problem(rd, b->line,
                        "relay '%s' publishes to %s like relay '%s' (line %d) but with other "
                        "to-opt settings; give both the same settings",
                        b->name, shown, a->name, a->line);
            } else if (strcmp(x->store, y->store) == 0) {
                outbox_url_redact(y->store, shown, sizeof shown);
                problem(rd, b->line,
                        "relay '%s' has the same store %s as relay '%s' (line %d); one relay "
                        "per outbox: merge them or remove one",
                        b->name, shown, a->name, a->line);
            }
        }
}

/* cli_settings_check_relay for a [relay NAME] section, each problem at
 * the line of its key (lines: by table index; 0 when not in the file). */
static void check_relay(reader *rd, const cli_config_relay *r, const int *lines)
{
    const cli_settings *s = &r->settings;
    char at[600];
    int line;
    if (!s->store || !s->store[0] || !s->to || !s->to[0]) {
        problem(rd, r->line, "relay '%s' has no %s; add %s = URL to its section", r->name,
                !s->store || !s->store[0] ? "store" : "destination",
                !s->store || !s->store[0] ? "store" : "to");
        return;
    }
    line = lines[cli_setting_find("store") - cli_setting_table];
    snprintf(at, sizeof at, "%s: %s:%d", rd->cmd, rd->path, line ? line : r->line);
    if (cli_check_scheme(at, "store URL", s->store, CLI_STORES) != CLI_EXIT_OK) rd->problems++;
    line = lines[cli_setting_find("to") - cli_setting_table];
    snprintf(at, sizeof at, "%s: %s:%d", rd->cmd, rd->path, line ? line : r->line);
    if (cli_check_scheme(at, "to", s->to, CLI_DESTINATIONS) != CLI_EXIT_OK) rd->problems++;
    line = lines[cli_setting_find("backoff-max") - cli_setting_table];
    if (!line) line = lines[cli_setting_find("backoff-base") - cli_setting_table];
    snprintf(at, sizeof at, "%s: %s:%d", rd->cmd, rd->path, line ? line : r->line);
    if (s->opts.backoff_max_ms < s->opts.backoff_base_ms &&
        cli_settings_check_relay(at, "", s) != CLI_EXIT_OK)
        rd->problems++;
}

void cli_config_relay_free(cli_config_relay *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->owned_count; i++)
        free(r->owned[i]);
    free(r->owned);
    free(r->name);
    free(r->text);
    free(r);
}

void cli_config_free(cli_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->relay_count; i++)
        cli_config_relay_free(c->relays[i]);
    free(c->relays);
    for (size_t i = 0; i < c->owned_count; i++)
        free(c->owned[i]);
    free(c->owned);
    free(c->path);
    free(c);
}

cli_config_relay *cli_config_take(cli_config *c, size_t i)
{
    cli_config_relay *r = c->relays[i];
    c->relays[i] = NULL;
    return r;
}

int cli_config_load(const char *cmd, const char *path, const cli_override *overrides,
                    size_t override_count, cli_config **out)
{
    FILE *f;
    int code;

    *out = NULL;
    f = fopen(path, "r");
    if (!f) return cli_usage(cmd, "%s: cannot be read (%s); check the path", path, strerror(errno));
    code = cli_config_read(cmd, path, f, overrides, override_count, out);
    fclose(f);
    return code;
}

int cli_config_read(const char *cmd, const char *path, FILE *f, const cli_override *overrides,
                    size_t override_count, cli_config **out)
{
    reader rd = {cmd, path, 0, 0};
    section *secs = NULL;
    size_t n = 0;
    cli_config *c;
    char at[600];
    int lines[CLI_SETTING_MAX];

    *out = NULL;
    c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path)) || read_sections(&rd, f, &secs, &n) != 0) {
        cli_config_free(c);
        return cli_failure(cmd, "out of memory reading %s", path);
    }
    cli_settings_init(&c->process);
    memset(lines, 0, sizeof lines);
    apply_section(&rd, &secs[0], CLI_SCOPE_PROCESS, overrides, override_count, &c->process,
                  &c->owned, &c->owned_count, lines);
    /* The process-wide checks, at the line of the key they are about. */
    {
        const char *key = c->process.token_file ? "admin-token-file" : "listen";
        int line = lines[cli_setting_find(key) - cli_setting_table];
        if (c->process.monitor.listen == NULL && line == 0)
            line = lines[cli_setting_find("listen-public") - cli_setting_table];
        if (c->process.monitor.listen == NULL && line == 0)
            line = lines[cli_setting_find("metrics-refresh") - cli_setting_table];
        snprintf(at, sizeof at, "%s: %s:%d", cmd, path, line ? line : 1);
        if (rd.problems == 0 && cli_settings_check_process(at, &c->process) != CLI_EXIT_OK)
            rd.problems++;
    }

    c->relays = calloc(n, sizeof *c->relays);
    if (!c->relays) rd.oom = 1;
    for (size_t i = 1; i < n && !rd.oom; i++) {
        cli_config_relay *r;
        if (!secs[i].name) continue; /* an [outbox] marker */
        for (size_t j = 0; j < c->relay_count; j++)
            if (strcmp(c->relays[j]->name, secs[i].name) == 0)
                problem(&rd, secs[i].line,
                        "relay '%s' is defined twice (first at line %d); rename one or merge them",
                        secs[i].name, c->relays[j]->line);
        r = calloc(1, sizeof *r);
        if (!r || !(r->name = strdup(secs[i].name))) {
            free(r);
            rd.oom = 1;
            break;
        }
        r->line = secs[i].line;
        c->relays[c->relay_count++] = r;
        cli_settings_init(&r->settings);
        r->settings.opts.name = r->name;
        memset(lines, 0, sizeof lines);
        apply_section(&rd, &secs[i], CLI_SCOPE_RELAY, overrides, override_count, &r->settings,
                      &r->owned, &r->owned_count, lines);
        check_relay(&rd, r, lines);
        if (!(r->text = relay_text(&r->settings, r->name))) rd.oom = 1;
    }
    if (!rd.oom && c->relay_count == 0)
        problem(&rd, 1, "no [relay NAME] section; add one with at least store = URL and to = URL");
    if (!rd.oom) check_collisions(&rd, c);
    for (size_t i = 0; i < n; i++)
        section_free(&secs[i]);
    free(secs);
    if (rd.oom) {
        cli_config_free(c);
        return cli_failure(cmd, "out of memory reading %s", path);
    }
    if (rd.problems > 0) {
        cli_config_free(c);
        return CLI_EXIT_USAGE;
    }
    *out = c;
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Generated documentation
 * ---------------------------------------------------------------------- */

int cli_help_config(int argc, char **argv)
{
    int markdown = argc == 2 && strcmp(argv[1], "--markdown") == 0;
    if (argc != 2 || (!markdown && strcmp(argv[1], "--keys") != 0))
        return cli_usage("help", "usage: outbox help config --keys|--markdown");
    if (markdown) {
        fputs("| Key | Value | Where | What it does |\n|---|---|---|---|\n", stdout);
        for (size_t i = 0; i < cli_setting_count; i++) {
            const cli_setting *set = &cli_setting_table[i];
            if (!(set->scope & (CLI_SCOPE_RELAY | CLI_SCOPE_PROCESS))) continue;
            printf("| `%s` | %s | %s | %s |\n", set->name,
                   set->placeholder ? set->placeholder : "yes/no",
                   set->scope & CLI_SCOPE_RELAY ? "[relay NAME]" : "[outbox]", set->help);
        }
        return CLI_EXIT_OK;
    }
    fputs("Keys of a configuration file (outbox.conf(5)); each is also the `outbox relay`\n"
          "flag of the same name unless marked (file only).\n\n[outbox] (process-wide):\n",
          stdout);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) fputs("\n[relay NAME] (one relay):\n", stdout);
        for (size_t i = 0; i < cli_setting_count; i++) {
            const cli_setting *set = &cli_setting_table[i];
            int scope = pass == 0 ? CLI_SCOPE_PROCESS : CLI_SCOPE_RELAY;
            if (!(set->scope & scope)) continue;
            printf("  %s = %s%s\n      %s\n", set->name,
                   set->placeholder ? set->placeholder : "yes|no",
                   set->scope & CLI_SCOPE_FLAG ? "" : "  (file only)", set->help);
        }
    }
    fputs("  to-opt.KEY = VALUE\n      a destination setting (`outbox help drivers`)\n", stdout);
    return CLI_EXIT_OK;
}
