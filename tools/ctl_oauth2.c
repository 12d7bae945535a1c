/* posternctl oauth2: login NAME (the device code flow) and status NAME [--json]. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

int ctl_oauth2(struct ctl *c)
{
  char err[512] = "";
  int problems, result;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs != 3 || (strcmp(c->args[1], "login") && strcmp(c->args[1], "status")))
    return ctl_usage_error("oauth2 takes login NAME or status NAME", c->nargs > 1 ? c->args[1] : NULL);
  problems = ctl_config(c);
  if(problems)
    return problems;
  if(!strcmp(c->args[1], "status")) {
    if(oauth2_status_print(c->cfg, c->args[2], c->json, stdout, err, sizeof(err))) {
      fprintf(stderr, "posternctl: %s\n", err);
      return EXIT_NOTFOUND;
    }
    return 0;
  }
  result = oauth2_login(c->cfg, c->args[2], stdout, err, sizeof(err));
  if(result) {
    fprintf(stderr, "posternctl: oauth2 login %s: %s\n", c->args[2], err);
    return result == OAUTH2_TRANSIENT ? EX_TEMPFAIL : EX_NOPERM;
  }
  return 0;
}

