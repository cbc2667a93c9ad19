/*
 * list.c - `outbox list`: messages in seq order, optionally of one status,
 * as a table (last errors truncated) or as a JSON array of message objects.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox list --store URL [--status pending|sent|failed] [--limit N] [--json]\n"
    "\n"
    "Lists messages in enqueue (seq) order.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --status S           only pending, sent or failed messages (default: all)\n"
    "  --limit N            at most N messages; 0 for no limit (default 100)\n"
    "  --json               a JSON array of message objects (default: a table)\n" CLI_GLOBAL_HELP
    "\n"
    "Example:\n"
    "  outbox list --store sqlite:app.db --status failed\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_STATUS, OPT_LIMIT, OPT_JSON };

typedef struct list_state {
    json_t *array; /* --json: collects the objects */
    int oom;
    size_t count;
} list_state;

/* Copies s into out (len > 4 bytes) escaped as by cli_escape, cut to fit
 * with "..." (never inside a UTF-8 character). */
static void cell(const char *s, char *out, size_t len)
{
    const char *text;
    cli_buf b;
    size_t n;
    cli_buf_init(&b);
    cli_escape(&b, s);
    text = cli_buf_text(&b);
    n = text ? b.len : 0;
    if (n >= len) {
        n = len - 4;
        while (n > 0 && ((unsigned char)text[n] & 0xc0) == 0x80)
            n--;
        memcpy(out + n, "...", 4);
    } else {
        out[n] = '\0';
    }
    if (n > 0) memcpy(out, text, n);
    cli_buf_free(&b);
}

static void print_header(void)
{
    printf("%-8s %-36s %-8s %8s  %-24s %-24s %s\n", "SEQ", "ID", "STATUS", "ATTEMPTS", "TYPE",
           "AGGREGATE_ID", "LAST_ERROR");
}

static int on_message(void *user, const outbox_msg *msg)
{
    list_state *ls = user;
    ls->count++;
    if (ls->array) {
        json_t *o = cli_msg_to_json(msg);
        if (!o || json_array_append_new(ls->array, o) != 0) {
            ls->oom = 1;
            return 1;
        }
        return 0;
    }
    if (ls->count == 1) print_header(); /* not before the store answered: an error alone */
    {
        char id[37], type[25], agg[25], error[41];
        const char *last_error = outbox_msg_last_error(msg);
        cell(outbox_msg_id(msg), id, sizeof id); /* a foreign writer's row may hold anything */
        cell(outbox_msg_type(msg), type, sizeof type);
        cell(outbox_msg_aggregate_id(msg), agg, sizeof agg);
        cell(last_error ? last_error : "-", error, sizeof error);
        printf("%-8lld %-36s %-8s %8d  %-24s %-24s %s\n", (long long)outbox_msg_seq(msg), id,
               outbox_msg_status_name(outbox_msg_status(msg)), outbox_msg_attempts(msg), type, agg,
               error);
    }
    return 0;
}

/* Lists messages.  Exit 0, 1 (missing schema, store error) or 2. */
int cmd_list(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"status", required_argument, NULL, OPT_STATUS},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"json", no_argument, NULL, OPT_JSON},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "list", *store_opt = NULL;
    outbox_store *store = NULL;
    outbox_list_params params;
    outbox_list_params_init(&params);
    params.limit = 100;
    list_state ls = {NULL, 0, 0};
    outbox_error err = {0, ""};
    uint64_t n;
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
        case OPT_STATUS:
            params.status = outbox_msg_status_parse(optarg);
            if (params.status < 0)
                return cli_usage(cmd, "--status '%s' is not a status; use pending, sent or failed",
                                 optarg);
            break;
        case OPT_LIMIT:
            if ((rc = cli_parse_uint(cmd, "--limit", optarg, 0, INT64_MAX, &n)) != CLI_EXIT_OK)
                return rc;
            params.limit = (int64_t)n;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox list --help", argv[optind]);
    if ((rc = cli_store_connect(cmd, store_opt, &store, NULL)) != CLI_EXIT_OK) return rc;

    if (as_json && !(ls.array = json_array())) {
        rc = cli_failure(cmd, "out of memory");
        goto out;
    }
    rc = outbox_store_list(store, &params, on_message, &ls, &err);
    if (rc != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    if (ls.oom) {
        rc = cli_failure(cmd, "out of memory building the JSON output; use --limit");
        goto out;
    }
    if (!as_json && ls.count == 0) print_header();
    rc = as_json ? cli_print_json(cmd, ls.array) : CLI_EXIT_OK;
out:
    json_decref(ls.array);
    outbox_store_close(store);
    return rc;
}
