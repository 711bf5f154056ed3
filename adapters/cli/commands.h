/* adapters/cli/commands.h - the tally subcommands. Each takes the arguments
 * after its name (argv[0] is the subcommand) and returns the exit status. */
#ifndef TLY_CLI_COMMANDS_H
#define TLY_CLI_COMMANDS_H

int cmd_ingest(int argc, char **argv);
int cmd_ingest_influxdb(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_changelog(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_enrich(int argc, char **argv);
int cmd_topics(int argc, char **argv);
int cmd_produce(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_recover(int argc, char **argv);
int cmd_publish(int argc, char **argv);

#endif
