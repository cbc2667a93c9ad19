/*
 * show.c - `outbox show ID`: one message with every field, including the
 * relay's bookkeeping (status, attempts, next attempt, last error).
 */
#include "cli.h"

#include <stdio.h>

static const char usage[] =
    "usage: outbox show --store URL ID [--json]\n"
    "\n"
    "Shows one message: its fields, headers, payload and delivery state.\n"
    "Control characters in stored text are shown escaped (\\n, \\r, \\x1b, ...);\n"
    "--json gives the exact stored values.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --json               one JSON object (default: text)\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox show --store sqlite:app.db 0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_JSON };

/* One "name  value" line, the value escaped: stored text is shown, never
 * acted on by the terminal. */
static void field(const char *name, const char *value)
{
    printf("%-15s ", name);
    cli_fputs_escaped(value, stdout);
    putchar('\n');
}

static void print_text(const outbox_msg *msg)
{
    const char *aggregate_type = outbox_msg_aggregate_type(msg);
    const char *last_error = outbox_msg_last_error(msg);
    char t[32];
    printf("%-15s %lld\n", "seq", (long long)outbox_msg_seq(msg));
    field("id", outbox_msg_id(msg));
    field("type", outbox_msg_type(msg));
    field("aggregate_type", aggregate_type[0] ? aggregate_type : "-");
    field("aggregate_id", outbox_msg_aggregate_id(msg));
    cli_format_time(outbox_msg_occurred_at(msg), t);
    field("occurred_at", t);
    field("status", outbox_msg_status_name(outbox_msg_status(msg)));
    printf("%-15s %d\n", "attempts", outbox_msg_attempts(msg));
    cli_format_time(outbox_msg_available_at(msg), t);
    field("available_at", t);
    field("last_error", last_error ? last_error : "-");
    cli_format_time(outbox_msg_sent_at(msg), t);
    field("sent_at", t);
    field("headers", outbox_msg_headers_json(msg));
    field("payload", outbox_msg_payload(msg));
}

/* Shows one message.  Exit 0, 1 (not found, missing schema, store error)
 * or 2 (bad id or options). */
int cmd_show(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"json", no_argument, NULL, OPT_JSON},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "show", *store_opt = NULL;
    outbox_store *store = NULL;
    outbox_msg *msg = NULL;
    outbox_error err = {0, ""};
    json_t *o = NULL;
    char id[37];
    int c, rc, as_json = 0;
    uint64_t seen = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_JSON:
            as_json = 1;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind >= argc)
        return cli_usage(cmd, "the message ID is required, e.g. outbox show --store URL "
                              "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07");
    if (optind + 1 < argc)
        return cli_usage(cmd, "one message ID at a time; got '%s' too", argv[optind + 1]);
    if ((rc = cli_parse_id(cmd, "ID", argv[optind], id)) != CLI_EXIT_OK) return rc;
    if ((rc = cli_store_connect(cmd, store_opt, &store, NULL)) != CLI_EXIT_OK) return rc;

    if ((rc = outbox_store_get(store, id, &msg, &err)) != OUTBOX_OK) {
        if (rc == OUTBOX_ENOTFOUND)
            rc = cli_failure(cmd,
                             "no message with id %s in the outbox (sent messages are "
                             "deleted unless the relay runs with --on-sent mark)",
                             id);
        else
            rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    if (as_json) {
        if (!(o = cli_msg_to_json(msg))) {
            rc = cli_failure(cmd, "out of memory");
            goto out;
        }
        rc = cli_print_json(cmd, o);
    } else {
        print_text(msg);
        rc = CLI_EXIT_OK;
    }
out:
    json_decref(o);
    outbox_msg_free(msg);
    outbox_store_close(store);
    return rc;
}
