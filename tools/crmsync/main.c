/*
 * crmsync - operator CLI entry point: dispatches to a sub-command.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: crmsync <command> [options]\n"
                 "\n"
                 "commands:\n"
                 "  lag   consumer lag per worker group, topic and partition,\n"
                 "        with a verdict (OK / lagging / stalled / rewinding)\n"
                 "  dlq   list, inspect and replay dead-lettered messages\n"
                 "\n"
                 "`crmsync <command> --help` describes a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "lag"))
        return cli_lag_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "dlq"))
        return cli_dlq_main(argc - 1, argv + 1);
    fprintf(stderr, "crmsync: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
