/* posternctl user: the users of AUTH (the sasldb in data_dir), with passwords read from standard
 * input or a terminal prompt, never from an argument. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>
#include <sys/stat.h>

#define PASSWORD_CAP 1024     /* what auth_user_set accepts */

static int sasldb_path(const struct config *cfg, char *out, size_t outsz)
{
  int n = snprintf(out, outsz, "%s/sasldb2", cfg->data_dir);
  if(n < 0 || (size_t)n >= outsz) {
    fprintf(stderr, "posternctl: data_dir is too long\n");
    return EX_CONFIG;
  }
  return 0;
}

static int auth_failed_exit(const char *what, int result, const char *err)
{
  fprintf(stderr, "posternctl: %s: %s\n", what, err);
  return result == AUTH_FAIL ? EX_DATAERR : EX_TEMPFAIL;
}

int ctl_user_set(const struct config *cfg, const char *name, const char *pw, size_t pwlen)
{
  const struct passwd *owner = ctl_daemon_user(cfg);
  char path[4096], err[512], shown[AUTH_USER_MAX * 4 + 8];
  int result = sasldb_path(cfg, path, sizeof(path));

  /* the data directory may not exist yet when users come before the first start */
  if(!result)
    result = ctl_data_dir_make(cfg);
  if(result)
    return result;
  result = auth_user_set(path, name, cfg->hostname, pw, pwlen, err, sizeof(err));
  if(result)
    return auth_failed_exit("cannot set the password", result, err);
  result = ctl_give_to(path, owner);
  if(!result)
    printf("%s: password set\n", log_repr(shown, sizeof(shown), name, strlen(name)));
  return result;
}

static int user_add(struct ctl *c, const char *name)
{
  char pw[PASSWORD_CAP + 1], shown[AUTH_USER_MAX * 4 + 8], prompt[AUTH_USER_MAX * 4 + 32];
  size_t pwlen = 0;
  int result;

  snprintf(prompt, sizeof(prompt), "Password for %s: ",
           log_repr(shown, sizeof(shown), name, strlen(name)));
  result = ctl_secret_get("password", prompt, 1, pw, PASSWORD_CAP, &pwlen);
  if(!result)
    result = ctl_user_set(c->cfg, name, pw, pwlen);
  explicit_bzero(pw, sizeof(pw));
  return result;
}

static int user_delete(struct ctl *c, const char *name, const char *path)
{
  char err[512], shown[AUTH_USER_MAX * 4 + 8];
  int result = auth_user_delete(path, name, c->cfg->hostname, err, sizeof(err));
  log_repr(shown, sizeof(shown), name, strlen(name));
  if(result == AUTH_NOUSER) {
    fprintf(stderr, "posternctl: no user %s\n", shown);
    return EXIT_NOTFOUND;
  }
  if(result)
    return auth_failed_exit("cannot delete the user", result, err);
  printf("%s: deleted\n", shown);
  return 0;
}

struct user_list_state {
  const struct config *cfg;
  int json;
  json_t *arr;
  size_t count;
};

static const char *user_senders(const struct config *cfg, const char *name)
{
  size_t i;
  for(i = 0; i < cfg->nusers; i++)
    if(!strcmp(cfg->users[i].name, name))
      return cfg->users[i].senders;
  return NULL;
}

/* "alice" for users of the configured hostname (the realm AUTH checks), "app@clinic.example"
 * for names added with their own domain: the name a client logs in with either way. */
static void user_one(void *arg, const char *user, const char *realm)
{
  struct user_list_state *ls = arg;
  struct buf name;
  const char *senders;
  buf_init(&name, AUTH_USER_MAX * 2 + 2);
  if(buf_addstr(&name, user) ||
     (strcmp(realm, ls->cfg->hostname) && (buf_add(&name, "@", 1) || buf_addstr(&name, realm)))) {
    buf_free(&name);
    return;
  }
  senders = user_senders(ls->cfg, name.ptr);
  if(ls->json) {
    json_t *o = json_object(), *list = senders ? json_array() : json_null();
    const char *p = senders;
    while(p && list) {
      size_t n;
      while(*p == ' ' || *p == '\t' || *p == ',')
        p++;
      if(!*p)
        break;
      n = strcspn(p, " \t,");
      json_array_append_new(list, json_stringn(p, n));
      p += n;
    }
    if(o) {
      json_object_set_new(o, "name", ctl_jstr(name.ptr));
      json_object_set_new(o, "realm", ctl_jstr(realm));
      json_object_set_new(o, "senders", list ? list : json_null());
      json_array_append_new(ls->arr, o);
    }
    else
      json_decref(list);
  }
  else {
    ctl_put_field(stdout, name.ptr);
    if(senders) {
      fputs("  senders: ", stdout);
      ctl_put_field(stdout, senders);
    }
    fputc('\n', stdout);
  }
  ls->count++;
  buf_free(&name);
}

static int user_list(struct ctl *c, const char *path)
{
  struct user_list_state ls;
  char err[512];
  int result;
  memset(&ls, 0, sizeof(ls));
  ls.cfg = c->cfg;
  ls.json = c->json;
  if(c->json && !(ls.arr = json_array()))
    return EX_OSERR;
  result = auth_user_list(path, user_one, &ls, err, sizeof(err));
  if(result) {
    json_decref(ls.arr);
    return auth_failed_exit("cannot list the users", result, err);
  }
  if(c->json) {
    result = json_dumpf(ls.arr, stdout, JSON_INDENT(2)) || fputc('\n', stdout) == EOF;
    json_decref(ls.arr);
    if(result) {
      fprintf(stderr, "posternctl: cannot write the JSON output\n");
      return EX_IOERR;
    }
  }
  else if(!ls.count)
    puts("No users (add one with: posternctl user add NAME)");
  return 0;
}

int ctl_user(struct ctl *c)
{
  char path[4096];
  const char *verb;
  int result;
  if(ctl_no_options(c))
    return EX_USAGE;
  if(c->nargs < 2)
    return ctl_usage_error("user needs a command", NULL);
  verb = c->args[1];
  if(!strcmp(verb, "list")) {
    if(c->nargs > 2)
      return ctl_usage_error("user list takes no argument", c->args[2]);
  }
  else if(!strcmp(verb, "add") || !strcmp(verb, "delete")) {
    if(c->nargs != 3)
      return ctl_usage_error(c->nargs < 3 ? "this command needs a user NAME" :
                         "too many arguments (the password is read from standard input)",
                         c->nargs < 3 ? verb : c->args[3]);
  }
  else
    return ctl_usage_error("unknown user command", verb);
  result = ctl_config(c);
  if(!result)
    result = sasldb_path(c->cfg, path, sizeof(path));
  if(result)
    return result;
  if(!strcmp(verb, "list"))
    return user_list(c, path);
  if(!strcmp(verb, "add"))
    return user_add(c, c->args[2]);
  return user_delete(c, c->args[2], path);
}

