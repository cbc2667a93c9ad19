/*
 * config.h - the relay's settings: one table for the `outbox relay` flags
 * and the keys of its configuration file (outbox.conf(5), docs/CONFIG.md).
 *
 * A setting is named once (cli_setting_table): its flag is "--NAME", its
 * key in a file is "NAME", it is checked by the same setter with the same
 * message (prefixed "FILE:LINE:" in a file), and `outbox help config
 * --markdown` writes the key table of docs/CONFIG.md from it.
 *
 * A file (cli_config_load) has process-wide keys in an [outbox] section (or
 * before the first section) and one [relay NAME] section per relay.  It is
 * parsed and checked whole, without connecting to anything; every problem
 * is printed as one line "outbox CMD: FILE:LINE: what; how to fix".
 */
#ifndef OUTBOX_CLI_CONFIG_H
#define OUTBOX_CLI_CONFIG_H

#include "cli.h"

#include <stdint.h>
#include <stdio.h>

/* Most to-opt settings one relay takes. */
#define CLI_MAX_TO_OPTS 64

/* Where a setting may be given. */
enum {
    CLI_SCOPE_RELAY = 1,   /* a [relay NAME] key, or a flag of a one-relay run */
    CLI_SCOPE_PROCESS = 2, /* an [outbox] key: the whole process */
    CLI_SCOPE_FLAG = 4     /* a command-line flag */
};

/* Everything one `outbox relay` run is given.  Strings are borrowed (argv,
 * or the configuration's own copies). */
typedef struct cli_settings {
    /* one relay */
    outbox_relay_options opts;
    const char *store, *to;
    const char *to_opts[CLI_MAX_TO_OPTS + 1]; /* "KEY=VALUE", NULL-terminated */
    size_t to_opt_count;
    int64_t connect_timeout_ms; /* -2: not given (30 s with --once, else for ever) */
    /* the process */
    outbox_monitor_options monitor;
    const char *token_file;
    int refresh_given;
    uint64_t max_message_bytes, max_field_bytes; /* 0: not given */
    int64_t stop_timeout_ms;
    const char *log_level, *log_format;
    const char *config; /* --config PATH */
} cli_settings;

typedef struct cli_setting {
    const char *name;        /* the flag without its dashes, and the file's key */
    const char *placeholder; /* its value in usage lines ("N", "DUR"); NULL: a flag
                                without value (yes/no in a file) */
    int scope;               /* CLI_SCOPE_* bits */
    const char *help;        /* what it does, for docs/CONFIG.md */
    /* Checks text and sets it into s; opt names it in messages ("--batch",
     * "batch").  Returns an exit code after printing why it is bad. */
    int (*set)(const char *cmd, const char *opt, const char *text, cli_settings *s);
} cli_setting;

/* Room for the table's entries (checked at compile time in config.c). */
#define CLI_SETTING_MAX 48

extern const cli_setting cli_setting_table[];
extern const size_t cli_setting_count;

/* The defaults: outbox_relay_options_init, outbox_monitor_options_init,
 * --stop-timeout 30s, nothing else given. */
void cli_settings_init(cli_settings *s);

/* The setting named name (no dashes), or NULL. */
const cli_setting *cli_setting_find(const char *name);

/* The checks across settings of one relay (a store and a destination, their
 * URLs' schemes, --backoff-max not below --backoff-base); dash is "--" for
 * flags, "" for keys.  Returns an exit code after printing why. */
int cli_settings_check_relay(const char *cmd, const char *dash, const cli_settings *s);

/* The checks across process-wide settings (--listen-public and friends
 * need --listen; the admin token file is private). */
int cli_settings_check_process(const char *cmd, const cli_settings *s);

/* Checks an admin token file as the relay reads it (exists, regular, not
 * readable or writable by other users, one line of at most 4096 bytes) and,
 * when token is not NULL, returns a malloc'd copy of the token in *token
 * (free with cli_token_free).  opt names it in messages. */
int cli_token_read(const char *cmd, const char *opt, const char *path, char **token);
void cli_token_free(char *token);

/* ---- configuration files ------------------------------------------- */

/* One [relay NAME] section, parsed and checked.  Owns its strings, which
 * settings points into. */
typedef struct cli_config_relay {
    char *name;
    int line;   /* of its [relay NAME] line */
    char *text; /* its keys and values as written, one per line, sorted:
                   two sections are the same relay when these match */
    cli_settings settings;
    char **owned; /* the strings settings borrows */
    size_t owned_count;
} cli_config_relay;

typedef struct cli_config {
    char *path;
    cli_settings process; /* the [outbox] keys (its relay part unused) */
    cli_config_relay **relays;
    size_t relay_count;
    char **owned;
    size_t owned_count;
} cli_config;

/* A flag given on the command line beside --config: it overrides the file
 * and the environment, for every relay or for the process. */
typedef struct cli_override {
    const cli_setting *setting;
    const char *value;
} cli_override;

/* Reads path, applies the environment (OUTBOX_<KEY> for [outbox] keys,
 * OUTBOX_<RELAY>_<KEY> for a relay's, upper case, '-' and '.' as '_') and
 * then the overrides, and checks everything (keys, values, URL schemes,
 * secret files, relays that would collide) without connecting to anything.
 * Every problem is printed ("outbox CMD: PATH:LINE: ..."); returns
 * CLI_EXIT_OK with *out set (free with cli_config_free), else
 * CLI_EXIT_USAGE (or CLI_EXIT_FAILURE when out of memory) with *out NULL. */
int cli_config_load(const char *cmd, const char *path, const cli_override *overrides,
                    size_t override_count, cli_config **out);

/* cli_config_load on an open stream (path names it in messages): the
 * config fuzz target reads from memory. */
int cli_config_read(const char *cmd, const char *path, FILE *f, const cli_override *overrides,
                    size_t override_count, cli_config **out);

/* Takes relay i out of config (its slot becomes NULL): the caller owns it
 * and frees it with cli_config_relay_free. */
cli_config_relay *cli_config_take(cli_config *config, size_t i);

void cli_config_relay_free(cli_config_relay *relay);
void cli_config_free(cli_config *config);

/* `outbox config check PATH` (config_cmd.c). */
int cmd_config(int argc, char **argv);

/* `outbox help config --keys|--markdown` (argv[0] is "config"): the keys,
 * from the table, for people or as docs/CONFIG.md's table. */
int cli_help_config(int argc, char **argv);

#endif /* OUTBOX_CLI_CONFIG_H */
