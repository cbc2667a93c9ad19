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
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --json               one JSON object (default: text)\n"
    CLI_GLOBAL_HELP
    "\n"
    "Example:\n"
    "  outbox show --store sqlite:app.db 0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_JSON };

static void print_text(const outbox_msg *msg)
{
    char t[32];
    printf("seq             %lld\n", (long long)msg->seq);
    printf("id              %s\n", msg->id);
    printf("type            %s\n", msg->type);
    printf("aggregate_type  %s\n", msg->aggregate_type[0] ? msg->aggregate_type : "-");
    printf("aggregate_id    %s\n", msg->aggregate_id);
    cli_format_time(msg->occurred_at, t);
    printf("occurred_at     %s\n", t);
    printf("status          %s\n", outbox__status_name(msg->status));
    printf("attempts        %d\n", msg->attempts);
    cli_format_time(msg->available_at, t);
    printf("available_at    %s\n", t);
    printf("last_error      %s\n", msg->last_error ? msg->last_error : "-");
    cli_format_time(msg->sent_at, t);
    printf("sent_at         %s\n", t);
    printf("headers         %s\n", msg->headers_json);
    printf("payload         %s\n", msg->payload);
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
    const char *cmd = "show", *store_opt = NULL, *url = NULL;
    outbox_store store = {NULL, NULL};
    outbox_msg *msg = NULL;
    outbox_error err = {0, ""};
    json_t *o = NULL;
    char id[37];
    int c, rc, as_json = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_STORE: store_opt = optarg; break;
        case OPT_JSON: as_json = 1; break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE)
                return rc;
        }
    }
    if (optind >= argc)
        return cli_usage(cmd, "the message ID is required, e.g. outbox show --store URL "
                              "0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07");
    if (optind + 1 < argc)
        return cli_usage(cmd, "one message ID at a time; got '%s' too", argv[optind + 1]);
    if ((rc = cli_parse_id(cmd, "ID", argv[optind], id)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_open(cmd, url, &store)) != CLI_EXIT_OK)
        return rc;

    if ((rc = store.ops->get(store.state, id, &msg, &err)) != OUTBOX_OK) {
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
    outbox__store_close(&store);
    return rc;
}
