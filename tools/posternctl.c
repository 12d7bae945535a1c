/* posternctl: the operator's tool. This file reads the command line and hands it to the
 * command's own file (tools/ctl_*.c); what they share is in tools/ctl.h. */
#include "tools/ctl.h"
#include "lib/proc.h"
#include "auth/auth.h"
#include "lib/log.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

/* One row per command: adding a command is one line here and one file. */
static const struct command {
  const char *name;
  int (*run)(struct ctl *c);
  const char *usage;          /* its lines of the usage text */
} commands[] = {
  { "queue", ctl_queue,
    "queue list [FILTERS] [--json]\n"
    "queue show|cat|retry|hold|release|delete ID [--json]\n"
    "queue retry|hold|release|delete --all|FILTERS [--json]\n"
    "queue stats [FILTERS] [--json]\n"
    "queue flush   (the same as flush)\n"
    "  FILTERS: --sender GLOB --recipient GLOB --upstream NAME --state STATE\n"
    "           --older-than DURATION (90, 30s, 10m, 1h, 5d)\n" },
  { "flush", ctl_flush, "flush   (the running daemon tries every deferred message now)\n" },
  { "reload", ctl_reload, "reload   (the running daemon reads its configuration again)\n" },
  { "store", ctl_store_command,
    "store stats [--json]   (file and WAL size, rows per table, what pruning removes next)\n"
    "store prune [--dry-run] [--json]   (what retention allows, now)\n"
    "store vacuum   (postern stopped: an older store rewritten to shrink as it is pruned)\n" },
  { "stats", ctl_stats,
    "stats [--live] [--json]   (the daemon's live counters; the store's when it is down)\n" },
  { "user", ctl_user,
    "user add|delete NAME   (the password is read from standard input or asked for twice)\n"
    "user list [--json]\n" },
  { "oauth2", ctl_oauth2, "oauth2 login NAME\noauth2 status NAME [--json]\n" },
  { "ses", ctl_ses,
    "ses smtp-password --region REGION [--key-file FILE]   (the AWS secret key: standard input)\n" },
  { "inbound", ctl_inbound, "inbound list [--json]\n" },
  { "sendgrid", ctl_sendgrid,
    "sendgrid setup --inbound-host HOST [--raw] [--upstream NAME] [--json]\n"
    "sendgrid check [--inbound-host HOST] [--upstream NAME] [--json]\n" },
  { "twilio", ctl_twilio, "twilio check|setup NUMBER [--fix-service] [--detach-app] [--json]\n" },
  { "migrate", ctl_migrate,
    "migrate postfix [--main-cf FILE] [--sasl-passwd FILE] [--name NAME] [--secret-file FILE]"
    " [--print-only]\n"
    "migrate msmtp [--msmtprc FILE] [--account NAME] [--name NAME] [--secret-file FILE]"
    " [--print-only]\n" },
  { "check", ctl_check,
    "check [ROUTE] [--rcpt ADDR] [--from ADDR] [--send TO] [--json]   (the doctor: exit 0 all "
    "good, 1 problems found, 2 could not check)\n" },
  { "init", ctl_init,
    "init [ADDRESS] [--provider microsoft|google|ses|sendgrid|smtp] [--output FILE] [--dry-run]\n"
    "  [--yes] [--app-user NAME] [--no-check] and the provider's flags: see posternctl(8)\n"
    "   (a first configuration: the provider told from ADDRESS, what is missing asked for)\n" },
  { "dkim", ctl_dkim,
    "dkim keygen DOMAIN SELECTOR [--algorithm rsa-sha256|ed25519-sha256] [--bits N]"
    " [--key-file FILE]\n"
    "dkim check [DOMAIN] [--json]   (is each [dkim] key published in DNS, and is it that key)\n" },
  { "correspondence", ctl_correspondence,
    "correspondence list [--json] [--address A] [--thread T]\n"
    "correspondence show ID [--json]\n"
    "correspondence forward list [--json] | forward retry ID|--all\n" },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
  size_t i;
  const char *line, *nl;
  int first = 1;
  for(i = 0; i < NCOMMANDS; i++)
    for(line = commands[i].usage; *line; line = nl + 1) {
      nl = strchr(line, '\n');
      if(*line == ' ') {        /* a note under the command above */
        fprintf(out, "%7s%.*s\n", "", (int)(nl - line), line);
        continue;
      }
      fprintf(out, "%s posternctl [-c FILE] %.*s\n", first ? "usage:" : "      ",
              (int)(nl - line), line);
      first = 0;
    }
  fputs("\n"
        "  -c FILE   the configuration (default: $POSTERN_CONFIG, else "
        CONFIG_DEFAULT_PATH ")\n"
        "  --json    print JSON instead of text\n", out);
}

static int parse_args(struct ctl *c, int argc, char **argv)
{
  int i, options = 1;
  for(i = 1; i < argc; i++) {
    const char *a = argv[i];
    if(options && !strcmp(a, "--")) {
      options = 0;
      continue;
    }
    if(options && a[0] == '-' && a[1]) {
      if(!strcmp(a, "--json"))
        c->json = 1;
      else if(!strcmp(a, "-h") || !strcmp(a, "--help")) {
        usage(stdout);
        exit(0);
      }
      else if(!strcmp(a, "-c")) {
        if(++i >= argc)
          return ctl_usage_error("-c needs a FILE", NULL);
        c->config_arg = argv[i];
      }
      else if(!strncmp(a, "-c", 2))
        c->config_arg = a + 2;
      else if(c->nargs < CTL_MAX_ARGS) {
        c->isopt[c->nargs] = 1;   /* the command's own option: ctl_opt takes it */
        c->args[c->nargs++] = a;
      }
      else
        return ctl_usage_error("too many arguments", a);
      continue;
    }
    if(c->nargs == sizeof(c->args) / sizeof(c->args[0]))
      return ctl_usage_error("too many arguments", a);
    c->args[c->nargs++] = a;
  }
  return 0;
}

int main(int argc, char **argv)
{
  struct ctl c;
  size_t i;
  int result;

  memset(&c, 0, sizeof(c));
  log_open("posternctl", 1, 0);
  ctl_usage_init(usage);
  /* no core file with the keys and tokens the commands read */
  proc_no_core_dumps();
  oauth2_read_only();
  /* a daemon or peer closing mid-exchange is an error to report with our exit code, not a
   * signal that kills us with 141 */
  signal(SIGPIPE, SIG_IGN);
  result = parse_args(&c, argc, argv);
  if(result)
    return result;
  if(!c.nargs || c.isopt[0])
    return ctl_usage_error("no command given", c.nargs ? c.args[0] : NULL);
  for(i = 0; i < NCOMMANDS; i++)
    if(!strcmp(c.args[0], commands[i].name))
      break;
  result = i < NCOMMANDS ? commands[i].run(&c) : ctl_usage_error("unknown command", c.args[0]);
  store_close(c.st);
  if(c.cfg)
    config_free(c.cfg);
  auth_done();
  return result;
}
