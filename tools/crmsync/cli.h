/*
 * crmsync - the operator CLI: one binary, one sub-command per concern.
 *
 *   crmsync lag [...]   consumer lag of every worker group with a verdict
 *   crmsync dlq [...]   list, inspect and replay dead-lettered messages
 *
 * Each sub-command owns its argument parsing; argv[0] is the sub-command's
 * name. Exit codes: 0 success, 1 runtime (Kafka) error, 2 usage error;
 * `lag` may define more (documented in its --help).
 */
#ifndef CRMSYNC_CLI_H
#define CRMSYNC_CLI_H

int cli_lag_main(int argc, char **argv);
int cli_dlq_main(int argc, char **argv);

#endif
