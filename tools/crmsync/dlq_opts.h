/*
 * dlq_opts - the command line of `crmsync dlq`: parsing, --help text and
 * the message filters (--class, --worker, --since/--until, -p,
 * --offset-from/--offset-to, --limit).
 *
 * Ownership: every string in struct dlq_opts is borrowed from argv (or the
 * environment) and lives as long as the process. Thread-safety: none.
 */
#ifndef CRMSYNC_TOOLS_DLQ_OPTS_H
#define CRMSYNC_TOOLS_DLQ_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "dlq_conf.h"
#include "dlq_read.h"

#define DLQ_OPTS_MAX_CLASSES 32

enum dlq_cmd { DLQ_CMD_LIST, DLQ_CMD_SHOW, DLQ_CMD_REPLAY };

struct dlq_opts {
    enum dlq_cmd cmd;
    struct dlq_conf_opts kafka;                /* -b, -X, -F */
    const char *topic;                         /* -t, the dead-letter topic */
    int32_t partition;                         /* -p, -1 = all */
    int64_t offset;                            /* -o (show), -1 = unset */
    const char *classes[DLQ_OPTS_MAX_CLASSES]; /* --class */
    int nclasses;
    const char *worker;       /* --worker, NULL = any */
    int64_t since_ms;         /* --since, -1 = unset */
    int64_t until_ms;         /* --until, -1 = unset */
    int64_t offset_from;      /* --offset-from, -1 = unset */
    int64_t offset_to;        /* --offset-to (inclusive), -1 = unset */
    long limit;               /* --limit, 0 = none */
    bool execute;             /* --execute (replay) */
    bool hex;                 /* --hex (show): always add a hex dump */
    const char *schemas_dir;  /* -s */
    const char *registry_url; /* -r, "" = local schemas */
    int timeout_ms;           /* --timeout */
};

/** @brief Writes the whole --help text. */
void dlq_opts_usage(FILE *out);

/**
 * @brief Parses argv (argv[0] = "dlq", argv[1] = the sub-command).
 * @returns 0 to go on, 1 when --help was printed (exit 0), -1 on a usage
 *          error (already reported on stderr; exit 2).
 */
int dlq_opts_parse(int argc, char **argv, struct dlq_opts *o);

/** @returns true when the DLQ message at @p offset with @p meta passes
 *           every filter except --limit and -p. */
bool dlq_opts_match(const struct dlq_opts *o, int64_t offset,
                    const struct dlq_meta *meta);

#endif
