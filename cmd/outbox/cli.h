/*
 * cli.h - what the `outbox` subcommands share.
 *
 * The CLI is a thin shell over liboutbox: main.c dispatches argv[1] to one
 * cmd_<name>() per file (git/redis style); each command parses its own
 * options with getopt_long, validates everything before it touches the
 * store, and reports failures as one line on stderr:
 *
 *     outbox <cmd>: <what is wrong>; <how to fix>
 *
 * Exit codes: CLI_EXIT_OK (0), CLI_EXIT_FAILURE (1: the store, the
 * destination or the data said no), CLI_EXIT_USAGE (2: the command line or
 * the configuration is wrong).  The helpers below print the message
 * themselves and return the exit code, so commands write
 * `return cli_usage(cmd, "...")`.
 */
#ifndef OUTBOX_CLI_H
#define OUTBOX_CLI_H

#include "outbox.h" /* the CLI uses the public API only */

#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

/* getopt_long values for the global options every command accepts. */
enum {
    CLI_OPT_LOG_LEVEL = 1000,
    CLI_OPT_LOG_FORMAT,
    CLI_OPT_COMMAND_BASE = 1100 /* commands number their long-only options from here */
};

/* Spliced into every command's `struct option` table. */
#define CLI_GLOBAL_OPTIONS                                                                         \
    {"help", no_argument, NULL, 'h'}, {"log-level", required_argument, NULL, CLI_OPT_LOG_LEVEL},   \
    {                                                                                              \
        "log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT                                  \
    }

/* How a Failed message is cleared: the same words in relay, retry, drop
 * and purge --help, docs/OPERATING.md and docs/CLI.md. */
#define CLI_FAILED_HELP                                                                            \
    "A Failed message stays in the outbox, counted by status, until an operator\n"                 \
    "clears it: `outbox retry` requeues it, `outbox drop` deletes it (with\n"                      \
    "--archive file:PATH it is written there first).  purge never deletes it.\n"

/* What stdout: is for: the same words in relay --help, docs/FILE.md and
 * docs/CLI.md. */
#define CLI_STDOUT_HELP                                                                            \
    "stdout: gives no confirmation (a reader that exits early loses what it did\n"                 \
    "not read): it is for people and for pipelines that accept loss.  file: is\n"                  \
    "the durable local destination.\n"

/* Text shown in every command's --help for the global options. */
#define CLI_GLOBAL_HELP                                                                            \
    "  --log-level L        debug, info, warn or error (default info)\n"                           \
    "  --log-format F       text or json: how log lines on stderr look (default text)\n"           \
    "  -h, --help           show this help\n"

/* The subcommands (one file each). */
int cmd_init(int argc, char **argv);
int cmd_enqueue(int argc, char **argv);
int cmd_relay(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_retry(int argc, char **argv);
int cmd_purge(int argc, char **argv);
int cmd_drop(int argc, char **argv);
int cmd_wal(int argc, char **argv); /* wal.c */

/* ---- text buffer ---------------------------------------------------- */

/* Text built up in memory (an open_memstream).  After a failed allocation
 * oom is set and text is NULL; appending goes on harmlessly. */
typedef struct cli_buf {
    FILE *stream;
    char *data; /* what cli_buf_text returns; freed by cli_buf_free */
    size_t len;
    int oom;
} cli_buf;

void cli_buf_init(cli_buf *b);
void cli_buf_append(cli_buf *b, const char *s, size_t n);
void cli_buf_puts(cli_buf *b, const char *s);
void cli_buf_printf(cli_buf *b, const char *fmt, ...) CLI_PRINTF(2, 3);
/* The text so far, NUL-terminated (b->len bytes), valid until the next
 * append; NULL when out of memory. */
const char *cli_buf_text(cli_buf *b);
void cli_buf_free(cli_buf *b);

/* ---- clock ---------------------------------------------------------- */

int64_t cli_now_us(void);       /* wall clock, unix microseconds */
int64_t cli_monotonic_us(void); /* CLOCK_MONOTONIC microseconds */
void cli_sleep_us(int64_t us);

/* ---- fault points (test builds) ------------------------------------- */

/* CLI_FAULT("name") fails on purpose when the environment variable
 * OUTBOX_FAULT names it with the error action, as the library's fault
 * points do ("name:error" or "name:error:1": the first time it is
 * reached); it is then OUTBOX_EFAULT, otherwise 0.  Without
 * OUTBOX_FAULT_INJECTION it is the constant 0. */
#ifdef OUTBOX_FAULT_INJECTION
int cli_fault(const char *name);
#define CLI_FAULT(name) cli_fault(name)
#else
#define CLI_FAULT(name) 0
#endif

/* ---- logging -------------------------------------------------------- */

/* Logs a line of the CLI's own (component e.g. "relay") through the same
 * stderr logger as the library's lines, when level is at least the
 * --log-level. */
void cli_log(int level, const char *component, const char *fmt, ...) CLI_PRINTF(3, 4);

/* Which of --log-level (1) and --log-format (2) the command line gave
 * (before the command: main.c; after it: the command sets its bits), so a
 * configuration file's log-level does not override the flag. */
extern int cli_log_flags_given;

/* Installs the stderr logger with the current level and format. */
void cli_log_install(void);

/* Handles a global option seen by a command's getopt loop.  Returns -1 when
 * opt is not a global option, else an exit code (CLI_EXIT_OK, or
 * CLI_EXIT_USAGE after printing why the value is bad). */
int cli_global_option(const char *cmd, int opt, const char *arg);

/* Sets the level/format from text ("debug".."error", "text"/"json");
 * CLI_EXIT_USAGE with a printed message when unknown. */
int cli_set_log_level(const char *cmd, const char *text);
int cli_set_log_format(const char *cmd, const char *text);

/* ---- errors --------------------------------------------------------- */

/* Fills err (when not NULL) with code and the formatted message, as the
 * library does for its errors; returns code. */
int cli_error(outbox_error *err, int code, const char *fmt, ...) CLI_PRINTF(3, 4);

/* Prints "outbox <cmd>: <formatted>" on stderr; returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);

/* Prints "outbox <cmd>: <formatted>" on stderr; returns CLI_EXIT_FAILURE. */
int cli_failure(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);

/* Reports a library failure (err may be NULL or empty: the code's
 * description is used) and returns its exit code (cli_exit_code).  A
 * missing schema gets the "run outbox init" hint when the message lacks it. */
int cli_fail(const char *cmd, int code, const outbox_error *err);

/* Exit code for a library result: 0 for OUTBOX_OK, 2 for invalid input and
 * configuration (EINVAL, EBAD*, ETOOBIG, ECONFIG, ENOTBUILT) and for a schema
 * newer than this build (ESCHEMANEWER), 1 otherwise. */
int cli_exit_code(int code);

/* Handles every getopt_long result a command does not handle itself:
 * 'h' (prints usage to stdout: return CLI_EXIT_OK), the global options
 * (CLI_CONTINUE when accepted), refused options ('?', ':') and anything
 * else (CLI_EXIT_USAGE after a message).  A command returns any value other
 * than CLI_CONTINUE as its exit code. */
enum { CLI_CONTINUE = -1 };
int cli_option(const char *cmd, int c, char **argv, const char *usage);

/* Reports the option getopt_long just refused (returned '?' or ':'). */
int cli_bad_option(const char *cmd, char **argv, int c);

/* Refuses a single-value option given twice: for the getopt_long result c,
 * finds its entry in options (NULL-terminated) and, when it takes a value
 * and its bit in *seen is already set, prints "--NAME is given twice" and
 * returns CLI_EXIT_USAGE; otherwise sets the bit and returns CLI_EXIT_OK.
 * Commands call it for every option except the repeatable ones (--header,
 * --to-opt).  Options past the 64th are not tracked. */
int cli_once(const char *cmd, const struct option *options, int c, uint64_t *seen);

/* ---- parsing -------------------------------------------------------- */

/* Parses a decimal integer strictly (digits only, whole string, in
 * [min, max]).  On failure prints a message naming opt and returns
 * CLI_EXIT_USAGE; CLI_EXIT_OK otherwise. */
int cli_parse_uint(const char *cmd, const char *opt, const char *text, uint64_t min, uint64_t max,
                   uint64_t *out);

/* Parses a duration ("500ms", "30s", "5m", "2h", "7d"; a bare number is
 * seconds) into milliseconds no larger than max_ms; CLI_EXIT_USAGE with a
 * message naming opt when malformed or too large. */
int cli_parse_duration(const char *cmd, const char *opt, const char *text, int64_t max_ms,
                       int64_t *out_ms);

/* The store URL: `value` (from --store) or $OUTBOX_STORE.  CLI_EXIT_USAGE
 * with a message when neither is set. */
int cli_store_url(const char *cmd, const char *value, const char **url);

/* Opens the store (outbox_store_open) into *store; on failure prints the
 * error and returns its exit code (*store NULL).  Close with
 * outbox_store_close.  A URL whose scheme this build has no driver for is
 * refused first (cli_check_scheme). */
int cli_store_open(const char *cmd, const char *url, outbox_store **store);

/* cli_store_url then cli_store_open: the store named by --store (value) or
 * $OUTBOX_STORE, opened.  *url (when url is not NULL) gets the URL used. */
int cli_store_connect(const char *cmd, const char *value, outbox_store **store, const char **url);

/* ---- drivers (drivers.c) --------------------------------------------- */

/* Made from outbox_driver_get only: no driver is named in the CLI. */
enum { CLI_STORES = OUTBOX_DRIVER_STORE, CLI_DESTINATIONS = OUTBOX_DRIVER_DESTINATION };

/* CLI_EXIT_OK when url's scheme is one of this build's drivers of kind
 * (CLI_STORES or CLI_DESTINATIONS); otherwise prints "<what> '<redacted
 * url>': ...; use one of <the build's URL forms>" (saying "not built" for
 * the project's drivers this build left out) and returns CLI_EXIT_USAGE. */
int cli_check_scheme(const char *cmd, const char *what, const char *url, int kind);

/* Appends this build's URL forms of kind, comma-separated, e.g.
 * "sqlite:PATH, postgres://USER@HOST/DB". */
void cli_scheme_list(cli_buf *b, int kind);

/* Prints the scheme names of this build's drivers of kind separated by
 * spaces (for --version). */
void cli_scheme_names(FILE *out, int kind);

/* Prints the drivers of kind for --help: each one's URL form at indent 2,
 * what it is, and its settings (name=VALUE, default, range, doc).
 * built_only: only this build's; otherwise the others are marked. */
void cli_drivers_help(FILE *out, int kind, int built_only);

/* `outbox help drivers [--markdown]` (argv[0] is "drivers"): every driver
 * with its settings, for people or as docs/CLI.md's Markdown.  Returns the
 * exit code. */
int cli_help_drivers(int argc, char **argv);

/* Copies a UUID given on the command line into out in lower case;
 * CLI_EXIT_USAGE when it is not a canonical UUID. */
int cli_parse_id(const char *cmd, const char *what, const char *text, char out[37]);

/* For the commands that take "(ID... | --all-failed)" (retry, drop): the
 * IDs left in argv[optind..argc).  Refuses IDs with --all-failed and
 * neither of them (the message says "nothing to <verb>"), and parses each
 * ID.  *ids gets *n pointers to canonical ids in one allocation (the
 * caller frees *ids), NULL when there are none.  Returns an exit code
 * (message printed). */
int cli_failed_ids(const char *cmd, const char *verb, int argc, char **argv, int all,
                   const char ***ids, size_t *n);

/* ---- output --------------------------------------------------------- */

/* Formats a duration in milliseconds for people: "850ms", "3.2s", "4m12s",
 * "2h03m", "3d04h". */
void cli_format_duration(int64_t ms, char *buf, size_t len);

/* Formats unix microseconds as RFC 3339 (outbox_time_format), "-" for 0. */
void cli_format_time(int64_t unix_us, char buf[32]);

/* Builds the JSON object for a stored message: seq, id, type,
 * aggregate_type, aggregate_id, occurred_at, status, attempts,
 * available_at, last_error, sent_at, headers (the object; the stored text
 * as a string if it is not one) and payload (the JSON value; a string if
 * it cannot be parsed back).  Text that is not UTF-8 is given escaped as
 * by cli_escape.  Returns a new reference
 * (caller json_decref's it) or NULL when out of memory. */
json_t *cli_msg_to_json(const outbox_msg *msg);

/* Appends s to b with what a terminal would act on made visible: CR, LF
 * and tab as \\r \\n \\t, other C0 controls, DEL and bytes that are not
 * UTF-8 as \\xNN, C1 controls (U+0080..U+009F) as \\u00NN.  Everything
 * else, backslashes included, is copied.  For human-readable output only:
 * --json output stays exact. */
void cli_escape(cli_buf *b, const char *s);

/* Writes s to out escaped as by cli_escape. */
void cli_fputs_escaped(const char *s, FILE *out);

/* Writes value as indented JSON plus a newline to stdout; CLI_EXIT_FAILURE
 * (with a message) if that fails. */
int cli_print_json(const char *cmd, json_t *value);

#endif /* OUTBOX_CLI_H */
