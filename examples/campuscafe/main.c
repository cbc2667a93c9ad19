/*
 * main.c - `campuscafe`: one program, one subcommand per service plus the
 * demo and the chaos run.
 *
 *   campuscafe order|inventory|payment|notification --dir DIR --port N ...
 *   campuscafe demo [options]       (demo.c)
 *   campuscafe chaos [options]      (chaos.c)
 *
 * Exit codes: 0 success, 1 runtime failure, 2 usage error.
 */
#include "cafe.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *to)
{
    fprintf(to,
            "usage: campuscafe COMMAND [OPTIONS]\n"
            "\n"
            "The course chapter's coffee-shop order flow as four services, each its own\n"
            "process with its own SQLite database, connected by webhooks (or NATS JetStream)\n"
            "through a transactional outbox and an inbox.\n"
            "\n"
            "Services (each: campuscafe SERVICE --help):\n"
            "  order          the public API (POST /orders, GET /orders/ID) and the saga\n"
            "  inventory      reserves and releases stock\n"
            "  payment        charges orders; declines --fail-rate of them\n"
            "  notification   tells the customer\n"
            "Runs:\n"
            "  demo           start everything, place orders, show progress, check consistency\n"
            "  chaos          the same flow the naive way and the outbox way under crashes,\n"
            "                 dropped and duplicated deliveries; prints the failure table\n");
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;

    if (cmd == NULL) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)
    {
        static const cafe_service_def *const services[] = {
            &cafe_order_def, &cafe_inventory_def, &cafe_payment_def, &cafe_notification_def};
        size_t i;
        for (i = 0; i < sizeof services / sizeof services[0]; i++)
            if (strcmp(cmd, services[i]->name) == 0)
                return cafe_service_main(services[i], argc - 1, argv + 1);
        if (strcmp(cmd, "demo") == 0) return cafe_demo_main(argc - 1, argv + 1);
        if (strcmp(cmd, "chaos") == 0) return cafe_chaos_main(argc - 1, argv + 1);
    }
#else
    if (strcmp(cmd, "order") == 0 || strcmp(cmd, "inventory") == 0 || strcmp(cmd, "payment") == 0 ||
        strcmp(cmd, "notification") == 0 || strcmp(cmd, "demo") == 0 || strcmp(cmd, "chaos") == 0) {
        fprintf(stderr, "campuscafe: this build has no libmicrohttpd/libcurl\n");
        return 2;
    }
#endif
    fprintf(stderr, "campuscafe: unknown command '%s'; see campuscafe --help\n", cmd);
    return 2;
}
