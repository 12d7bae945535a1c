/* posternctl: the operator's hands on a Postern queue — list, show, cat, retry, hold, release
 * and delete messages — through the store interface (never SQL), so it works the same while
 * the daemon runs; and on the users of AUTH (the sasldb in data_dir). Output for people by
 * default, one JSON array with --json. */
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/config.h"
#include "lib/limits.h"
#include "lib/log.h"
#include "lib/store.h"
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <jansson.h>

#define EXIT_NOTFOUND 1       /* an unknown id: the command ran, the answer is "no such" */
#define FIELD_CAP 1000        /* bytes of one stored field shown in human output */
#define PASSWORD_CAP 1024     /* what auth_user_set accepts */

struct ctl {
  const char *config_arg;     /* -c FILE */
  int json;
  const char *args[4];        /* the words after the options */
  size_t nargs;
  char id[LIM_QUEUE_ID + 1];
  struct config *cfg;
  struct store *st;
};

static void usage(FILE *out)
{
  fputs("usage: posternctl [-c FILE] queue list [--json]\n"
        "       posternctl [-c FILE] queue show|cat|retry|hold|release|delete ID [--json]\n"
        "       posternctl [-c FILE] user add|delete NAME\n"
        "       posternctl [-c FILE] user list [--json]\n"
        "       posternctl [-c FILE] oauth2 login|status NAME\n"
        "       posternctl [-c FILE] inbound list [--json]\n"
        "\n"
        "  user add reads the password from standard input (one line), or asks for it twice\n"
        "  when that is a terminal; it is never an argument.\n"
        "  -c FILE   the configuration (default: $POSTERN_CONFIG, else "
        CONFIG_DEFAULT_PATH ")\n"
        "  --json    print one JSON array instead of text\n", out);
}

static int usage_error(const char *why, const char *what)
{
  char shown[64];
  if(what)
    fprintf(stderr, "posternctl: %s: %s\n", why, log_repr(shown, sizeof(shown), what,
                                                            strlen(what)));
  else
    fprintf(stderr, "posternctl: %s\n", why);
  usage(stderr);
  return EX_USAGE;
}

/* Escapes attacker-controlled bytes (envelopes come from the network) before they reach a
 * terminal: printable ASCII as is, everything else as \xNN. */
static void put_field(FILE *out, const char *s)
{
  struct buf b;
  buf_init(&b, FIELD_CAP * 4 + 4);
  if(s && !buf_addrepr(&b, s, strlen(s), FIELD_CAP) && b.ptr)
    fwrite(b.ptr, 1, b.len, out);
  buf_free(&b);
}

static void time_iso(long long ms, char *out, size_t outsz)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(!gmtime_r(&t, &tm) || !strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(out, outsz, "?");
}

static void time_human(long long ms, char *out, size_t outsz)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(!gmtime_r(&t, &tm) || !strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm))
    snprintf(out, outsz, "?");
}

static int status_pending(enum rcpt_status s)
{
  return s == RCPT_QUEUED || s == RCPT_DEFERRED;
}

/* ---- JSON -------------------------------------------------------------------------------- */

/* jansson refuses invalid UTF-8; an 8-bit envelope then shows escaped rather than vanishing */
static json_t *jstr(const char *s)
{
  json_t *j;
  struct buf b;
  if(!s)
    return json_null();
  j = json_string(s);
  if(j)
    return j;
  buf_init(&b, strlen(s) * 4 + 4);
  if(!buf_addrepr(&b, s, strlen(s), strlen(s)) && b.ptr)
    j = json_string(b.ptr);
  buf_free(&b);
  return j ? j : json_null();
}

static json_t *jtime(long long ms)
{
  char t[40];
  time_iso(ms, t, sizeof(t));
  return json_string(t);
}

static void jset_known(json_t *o, const char *key, const char *value)
{
  if(value)
    json_object_set_new(o, key, jstr(value));
}

static json_t *msg_json(const struct store_msg *m)
{
  json_t *o = json_object(), *rcpts = json_array();
  size_t i;
  if(!o || !rcpts) {
    json_decref(o);
    json_decref(rcpts);
    return NULL;
  }
  json_object_set_new(o, "id", json_string(m->id));
  json_object_set_new(o, "sender", jstr(m->sender));
  json_object_set_new(o, "size", json_integer(m->size));
  json_object_set_new(o, "created", jtime(m->created_ms));
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    json_t *jr = json_object();
    if(!jr)
      continue;
    json_object_set_new(jr, "address", jstr(r->address));
    json_object_set_new(jr, "status", json_string(rcpt_status_name(r->status)));
    json_object_set_new(jr, "attempts", json_integer(r->attempts));
    json_object_set_new(jr, "last_reply", jstr(r->last_reply));
    json_object_set_new(jr, "next_attempt",
                        status_pending(r->status) ? jtime(r->next_attempt_ms) : json_null());
    json_object_set_new(jr, "upstream", jstr(r->upstream));
    if(r->updated_ms)
      json_object_set_new(jr, "updated", jtime(r->updated_ms));
    jset_known(jr, "orcpt", r->orcpt);
    jset_known(jr, "notify", r->notify);
    json_array_append_new(rcpts, jr);
  }
  json_object_set_new(o, "recipients", rcpts);
  jset_known(o, "source", m->source);
  jset_known(o, "listener", m->listener);
  jset_known(o, "client_addr", m->client_addr);
  jset_known(o, "helo", m->helo);
  jset_known(o, "auth_user", m->auth_user);
  jset_known(o, "envid", m->envid);
  jset_known(o, "ret", m->ret);
  json_object_set_new(o, "body_8bit", json_boolean(m->body_8bit));
  json_object_set_new(o, "smtputf8", json_boolean(m->smtputf8));
  jset_known(o, "body_sha256", m->body_sha256);
  return o;
}

/* ---- human output ------------------------------------------------------------------------ */

static void msg_print_show(const struct store_msg *m)
{
  char t[40];
  size_t i;
  printf("id: %s\n", m->id);
  time_human(m->created_ms, t, sizeof(t));
  printf("created: %s UTC\n", t);
  printf("size: %lld\n", m->size);
  fputs("sender: <", stdout);
  put_field(stdout, m->sender);
  fputs(">\n", stdout);
#define SHOW_KNOWN(key, v) do { if(v) { fputs(key ": ", stdout); put_field(stdout, v); \
  fputc('\n', stdout); } } while(0)
  SHOW_KNOWN("source", m->source);
  SHOW_KNOWN("listener", m->listener);
  SHOW_KNOWN("client_addr", m->client_addr);
  SHOW_KNOWN("helo", m->helo);
  SHOW_KNOWN("auth_user", m->auth_user);
  SHOW_KNOWN("envid", m->envid);
  SHOW_KNOWN("ret", m->ret);
  printf("body_8bit: %s\n", m->body_8bit ? "yes" : "no");
  printf("smtputf8: %s\n", m->smtputf8 ? "yes" : "no");
  SHOW_KNOWN("body_sha256", m->body_sha256);
  for(i = 0; i < m->nrcpts; i++) {
    const struct store_rcpt *r = &m->rcpts[i];
    fputs("recipient: <", stdout);
    put_field(stdout, r->address);
    fputs(">\n", stdout);
    printf("  status: %s\n", rcpt_status_name(r->status));
    printf("  attempts: %d\n", r->attempts);
    if(status_pending(r->status)) {
      time_human(r->next_attempt_ms, t, sizeof(t));
      printf("  next_attempt: %s UTC\n", t);
    }
    SHOW_KNOWN("  last_reply", r->last_reply);
    SHOW_KNOWN("  upstream", r->upstream);
    SHOW_KNOWN("  orcpt", r->orcpt);
    SHOW_KNOWN("  notify", r->notify);
  }
#undef SHOW_KNOWN
}

/* ---- queue list -------------------------------------------------------------------------- */

struct list_state {
  int json;
  size_t count;
  long long bytes;
  int failed;                 /* a JSON element could not be built or written */
};

static int list_one(void *arg, const struct store_msg *m)
{
  struct list_state *ls = arg;
  size_t i;
  if(ls->json) {
    json_t *o = msg_json(m);
    fputs(ls->count ? ",\n" : "\n", stdout);
    if(!o || json_dumpf(o, stdout, JSON_COMPACT)) {
      ls->failed = 1;
      json_decref(o);
      return 1;
    }
    json_decref(o);
  }
  else {
    char t[40];
    if(!ls->count)
      printf("%-12s %10s  %-19s  %s\n", "-Queue ID-", "--Size--", "---Arrival (UTC)---",
             "-Sender/Recipient-------");
    time_human(m->created_ms, t, sizeof(t));
    printf("%-12s %10lld  %-19s  ", m->id, m->size, t);
    if(m->sender && *m->sender)
      put_field(stdout, m->sender);
    else
      fputs("<>", stdout);
    fputc('\n', stdout);
    for(i = 0; i < m->nrcpts; i++) {
      const struct store_rcpt *r = &m->rcpts[i];
      printf("%46s%-9s ", "", rcpt_status_name(r->status));
      put_field(stdout, r->address);
      if(r->attempts || r->last_reply) {
        printf(" (%d attempt%s", r->attempts, r->attempts == 1 ? "" : "s");
        if(r->status == RCPT_DEFERRED) {
          time_human(r->next_attempt_ms, t, sizeof(t));
          printf(", next %s", t);
        }
        if(r->last_reply) {
          fputs(": ", stdout);
          put_field(stdout, r->last_reply);
        }
        fputc(')', stdout);
      }
      fputc('\n', stdout);
    }
    fputc('\n', stdout);
  }
  ls->count++;
  ls->bytes += m->size;
  return 0;
}

static int queue_list(struct ctl *c)
{
  struct list_state ls;
  int result;
  memset(&ls, 0, sizeof(ls));
  ls.json = c->json;
  if(c->json)
    fputc('[', stdout);
  result = store_list(c->st, NULL, list_one, &ls);
  if(c->json)
    fputs(ls.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !ls.count)
    puts("Mail queue is empty");
  else if(!result)
    printf("-- %lld Kbytes in %zu Request%s.\n", (ls.bytes + 1023) / 1024, ls.count,
           ls.count == 1 ? "" : "s");
  if(result) {
    fprintf(stderr, "posternctl: reading the queue failed\n");
    return EX_TEMPFAIL;
  }
  if(ls.failed) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    return EX_IOERR;
  }
  return 0;
}

/* ---- one message ------------------------------------------------------------------------- */

static int not_found(const struct ctl *c)
{
  fprintf(stderr, "posternctl: no message %s in the queue\n", c->id);
  return EXIT_NOTFOUND;
}

static int store_failed(const char *what, int result)
{
  fprintf(stderr, "posternctl: %s failed: %s\n", what,
          result == STORE_FULL ? "the disk is full" : "the store reported an error");
  return EX_TEMPFAIL;
}

static int print_json_one(json_t *o)
{
  json_t *arr = json_array();
  int bad = !o || !arr || json_array_append_new(arr, o);
  if(bad && !arr)
    json_decref(o);
  if(!bad)
    bad = json_dumpf(arr, stdout, JSON_INDENT(2)) || fputc('\n', stdout) == EOF;
  json_decref(arr);
  if(bad) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    return EX_IOERR;
  }
  return 0;
}

static int queue_show(struct ctl *c)
{
  struct store_msg m;
  int result = store_get(c->st, c->id, &m);
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return store_failed("reading the message", result);
  if(c->json)
    result = print_json_one(msg_json(&m));
  else
    msg_print_show(&m);
  store_msg_free(&m);
  return result;
}

static int queue_cat(struct ctl *c)
{
  char *body = NULL;
  size_t len = 0;
  int result = store_body(c->st, c->id, &body, &len);
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return store_failed("reading the message", result);
  /* byte-exact: the stored bytes, nothing added */
  if(fwrite(body, 1, len, stdout) != len || fflush(stdout)) {
    fprintf(stderr, "posternctl: cannot write the message: %s\n", strerror(errno));
    result = EX_IOERR;
  }
  free(body);
  return result;
}

static int queue_change(struct ctl *c, const char *verb)
{
  int result;
  const char *done;
  if(!strcmp(verb, "delete")) {
    result = store_delete(c->st, c->id);
    done = "deleted";
  }
  else if(!strcmp(verb, "hold")) {
    result = store_set_pending(c->st, c->id, RCPT_HELD);
    done = "held";
  }
  else {
    /* retry and release both make every unfinished recipient due now */
    result = store_set_pending(c->st, c->id, RCPT_QUEUED);
    done = !strcmp(verb, "retry") ? "queued for delivery now" : "released";
  }
  if(result == STORE_NOTFOUND)
    return not_found(c);
  if(result)
    return store_failed(verb, result);
  if(!c->json) {
    printf("%s: %s\n", c->id, done);
    return 0;
  }
  if(!strcmp(verb, "delete")) {
    json_t *o = json_object();
    if(o) {
      json_object_set_new(o, "id", json_string(c->id));
      json_object_set_new(o, "deleted", json_true());
    }
    return print_json_one(o);
  }
  return queue_show(c);       /* the message as it is now */
}

/* ---- users ------------------------------------------------------------------------------- */

static int config_only(struct ctl *c)
{
  const char *path = config_choose_path(c->config_arg);
  int problems = config_load(path, stderr, &c->cfg);
  if(problems) {
    fprintf(stderr, "posternctl: %d problem%s in the configuration\n", problems,
            problems == 1 ? "" : "s");
    return EX_CONFIG;
  }
  return 0;
}

static int sasldb_path(const struct config *cfg, char *out, size_t outsz)
{
  int n = snprintf(out, outsz, "%s/sasldb2", cfg->data_dir);
  if(n < 0 || (size_t)n >= outsz) {
    fprintf(stderr, "posternctl: data_dir is too long\n");
    return EX_CONFIG;
  }
  return 0;
}

/* Run as root, files made here must belong to the daemon's user, which reads them after it
 * has dropped root; as anyone else they already belong to whoever runs the daemon. */
static const struct passwd *daemon_user(const struct config *cfg)
{
  if(geteuid() != 0 || !cfg->user || !cfg->user[0])
    return NULL;
  return getpwnam(cfg->user);
}

static int give_to(const char *path, const struct passwd *pw)
{
  if(pw && chown(path, pw->pw_uid, pw->pw_gid)) {
    fprintf(stderr, "posternctl: cannot give %s to user %s: %s\n", path, pw->pw_name,
            strerror(errno));
    return EX_NOPERM;
  }
  return 0;
}

static struct termios tty_saved;
static volatile sig_atomic_t tty_changed;

static void tty_restore(int sig)
{
  if(tty_changed)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* One line from fd into pw (at most PASSWORD_CAP bytes, without its LF or CR LF). Returns
 * its length, or -1 when it is too long or unreadable. */
static ssize_t line_read(int fd, char *pw, size_t cap)
{
  size_t n = 0;
  int too_long = 0;
  for(;;) {
    char ch;
    ssize_t r = read(fd, &ch, 1);
    if(r < 0 && errno == EINTR)
      continue;
    if(r < 0)
      return -1;
    if(r == 0 || ch == '\n')
      break;
    if(n < cap)
      pw[n++] = ch;
    else
      too_long = 1;
  }
  if(n && pw[n - 1] == '\r')
    n--;
  return too_long ? -1 : (ssize_t)n;
}

/* With echo off; the terminal is put back even when the user presses ^C. */
static ssize_t tty_prompt(const char *prompt, char *pw, size_t cap)
{
  struct termios quiet;
  ssize_t n;
  if(tcgetattr(STDIN_FILENO, &tty_saved))
    return -1;
  quiet = tty_saved;
  quiet.c_lflag &= (tcflag_t)~(ECHO | ECHONL);
  quiet.c_lflag |= ICANON;
  signal(SIGINT, tty_restore);
  signal(SIGTERM, tty_restore);
  signal(SIGQUIT, tty_restore);
  fputs(prompt, stderr);
  fflush(stderr);
  tty_changed = 1;
  if(tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)) {
    tty_changed = 0;
    return -1;
  }
  n = line_read(STDIN_FILENO, pw, cap);
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
  tty_changed = 0;
  fputc('\n', stderr);
  return n;
}

static int password_get(const char *name, char *pw, size_t cap, size_t *len)
{
  char again[PASSWORD_CAP + 1], prompt[AUTH_USER_MAX + 64], shown[AUTH_USER_MAX * 4 + 8];
  ssize_t n, m;
  int result = 0;
  if(!isatty(STDIN_FILENO)) {
    n = line_read(STDIN_FILENO, pw, cap);
    if(n < 0) {
      fprintf(stderr, "posternctl: cannot read the password from standard input (at most %d "
              "bytes on one line)\n", PASSWORD_CAP);
      return EX_DATAERR;
    }
  }
  else {
    snprintf(prompt, sizeof(prompt), "Password for %s: ",
             log_repr(shown, sizeof(shown), name, strlen(name)));
    n = tty_prompt(prompt, pw, cap);
    m = n < 0 ? -1 : tty_prompt("Again: ", again, sizeof(again) - 1);
    if(n < 0 || m < 0) {
      fprintf(stderr, "posternctl: cannot read the password (at most %d bytes)\n", PASSWORD_CAP);
      result = EX_DATAERR;
    }
    else if(n != m || memcmp(pw, again, (size_t)n)) {
      fprintf(stderr, "posternctl: the passwords differ; nothing changed\n");
      result = EX_DATAERR;
    }
    explicit_bzero(again, sizeof(again));
    if(result)
      return result;
  }
  if(n == 0) {
    fprintf(stderr, "posternctl: an empty password is not allowed\n");
    return EX_DATAERR;
  }
  *len = (size_t)n;
  return 0;
}

static int auth_failed_exit(const char *what, int result, const char *err)
{
  fprintf(stderr, "posternctl: %s: %s\n", what, err);
  return result == AUTH_FAIL ? EX_DATAERR : EX_TEMPFAIL;
}

static int user_add(struct ctl *c, const char *name, const char *path)
{
  const struct passwd *owner = daemon_user(c->cfg);
  char pw[PASSWORD_CAP + 1], err[512], shown[AUTH_USER_MAX * 4 + 8];
  size_t pwlen = 0;
  struct stat st;
  int result;

  /* the data directory may not exist yet when users come before the first start */
  if(stat(c->cfg->data_dir, &st)) {
    if(errno != ENOENT || mkdir(c->cfg->data_dir, 0700)) {
      fprintf(stderr, "posternctl: cannot create data_dir %s: %s\n", c->cfg->data_dir,
              strerror(errno));
      return EX_CANTCREAT;
    }
    result = give_to(c->cfg->data_dir, owner);
    if(result)
      return result;
  }
  result = password_get(name, pw, PASSWORD_CAP, &pwlen);
  if(result)
    goto out;
  result = auth_user_set(path, name, c->cfg->hostname, pw, pwlen, err, sizeof(err));
  if(result) {
    result = auth_failed_exit("cannot set the password", result, err);
    goto out;
  }
  result = give_to(path, owner);
  if(result)
    goto out;
  printf("%s: password set\n", log_repr(shown, sizeof(shown), name, strlen(name)));
out:
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
      json_object_set_new(o, "name", jstr(name.ptr));
      json_object_set_new(o, "realm", jstr(realm));
      json_object_set_new(o, "senders", list ? list : json_null());
      json_array_append_new(ls->arr, o);
    }
    else
      json_decref(list);
  }
  else {
    put_field(stdout, name.ptr);
    if(senders) {
      fputs("  senders: ", stdout);
      put_field(stdout, senders);
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

static int cmd_user(struct ctl *c)
{
  char path[4096];
  const char *verb;
  int result;
  if(c->nargs < 2)
    return usage_error("user needs a command", NULL);
  verb = c->args[1];
  if(!strcmp(verb, "list")) {
    if(c->nargs > 2)
      return usage_error("user list takes no argument", c->args[2]);
  }
  else if(!strcmp(verb, "add") || !strcmp(verb, "delete")) {
    if(c->nargs != 3)
      return usage_error(c->nargs < 3 ? "this command needs a user NAME" :
                         "too many arguments (the password is read from standard input)",
                         c->nargs < 3 ? verb : c->args[3]);
  }
  else
    return usage_error("unknown user command", verb);
  result = config_only(c);
  if(!result)
    result = sasldb_path(c->cfg, path, sizeof(path));
  if(result)
    return result;
  if(!strcmp(verb, "list"))
    return user_list(c, path);
  if(!strcmp(verb, "add"))
    return user_add(c, c->args[2], path);
  return user_delete(c, c->args[2], path);
}

/* ---- command line ------------------------------------------------------------------------ */

/* Queue ids are hex (store_new_id); anything else never reaches the store. */
static int id_parse(const char *arg, char out[LIM_QUEUE_ID + 1])
{
  size_t i, n = strlen(arg);
  if(!n || n > LIM_QUEUE_ID)
    return -1;
  for(i = 0; i < n; i++) {
    char ch = arg[i];
    if(ch >= 'a' && ch <= 'f')
      ch = (char)(ch - 'a' + 'A');
    else if(!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F')))
      return -1;
    out[i] = ch;
  }
  out[n] = '\0';
  return 0;
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
          return usage_error("-c needs a FILE", NULL);
        c->config_arg = argv[i];
      }
      else if(!strncmp(a, "-c", 2))
        c->config_arg = a + 2;
      else
        return usage_error("unknown option", a);
      continue;
    }
    if(c->nargs == sizeof(c->args) / sizeof(c->args[0]))
      return usage_error("too many arguments", a);
    c->args[c->nargs++] = a;
  }
  return 0;
}

static int config_and_store(struct ctl *c, int flags)
{
  char err[512];
  const char *path = config_choose_path(c->config_arg);
  int problems = config_load(path, stderr, &c->cfg);
  if(problems) {
    fprintf(stderr, "posternctl: %d problem%s in the configuration\n", problems,
            problems == 1 ? "" : "s");
    return EX_CONFIG;
  }
  if(store_open(c->cfg->data_dir, flags, &c->st, err, sizeof(err))) {
    fprintf(stderr, "posternctl: cannot open the queue: %s\n", err);
    return EX_TEMPFAIL;
  }
  return 0;
}

static int cmd_queue(struct ctl *c)
{
  static const char *const with_id[] = { "show", "cat", "retry", "hold", "release", "delete" };
  const char *verb;
  size_t i;
  int result, reads;

  if(c->nargs < 2)
    return usage_error("queue needs a command", NULL);
  verb = c->args[1];
  if(!strcmp(verb, "list")) {
    if(c->nargs > 2)
      return usage_error("queue list takes no argument", c->args[2]);
    result = config_and_store(c, STORE_OPEN_READONLY);
    return result ? result : queue_list(c);
  }
  for(i = 0; i < sizeof(with_id) / sizeof(with_id[0]); i++)
    if(!strcmp(verb, with_id[i]))
      break;
  if(i == sizeof(with_id) / sizeof(with_id[0]))
    return usage_error("unknown queue command", verb);
  if(c->nargs != 3)
    return usage_error(c->nargs < 3 ? "this command needs a queue ID" : "too many arguments",
                       c->nargs < 3 ? verb : c->args[3]);
  if(id_parse(c->args[2], c->id))
    return usage_error("not a queue ID (1 to 24 hex digits)", c->args[2]);

  /* reads never take the write lock, so they cannot slow the daemon down */
  reads = !strcmp(verb, "show") || !strcmp(verb, "cat");
  result = config_and_store(c, reads ? STORE_OPEN_READONLY : 0);
  if(result)
    return result;
  if(!strcmp(verb, "show"))
    return queue_show(c);
  if(!strcmp(verb, "cat"))
    return queue_cat(c);
  return queue_change(c, verb);
}

/* ---- inbound list: what the MX listener and the webhooks stored, raw ------------------------ */

static int inbound_one(void *arg, const struct store_inbound *m)
{
  struct list_state *ls = arg;
  char when[40];
  if(ls->json) {
    json_t *o = json_object(), *to = json_array();
    const char *p = m->envelope_to;
    int bad = !o || !to;
    while(!bad && p && *p) {
      size_t n = strcspn(p, "\n");
      char *one = str_dup_n(p, n);
      bad = !one || json_array_append_new(to, jstr(one));
      free(one);
      p += n + (p[n] == '\n');
    }
    if(!bad)
      bad = json_object_set_new(o, "id", json_string(m->id)) ||
            json_object_set_new(o, "source", jstr(m->source)) ||
            json_object_set_new(o, "received_at", jtime(m->received_ms)) ||
            json_object_set_new(o, "listener", jstr(m->listener)) ||
            json_object_set_new(o, "client_addr", jstr(m->client_addr)) ||
            json_object_set_new(o, "helo", jstr(m->helo)) ||
            json_object_set_new(o, "envelope_from", jstr(m->envelope_from)) ||
            json_object_set_new(o, "envelope_to", to) ||
            json_object_set_new(o, "spf", jstr(m->spf)) ||
            json_object_set_new(o, "content_type", jstr(m->content_type)) ||
            json_object_set_new(o, "external_id", jstr(m->external_id)) ||
            json_object_set_new(o, "size", json_integer(m->size)) ||
            json_object_set_new(o, "body_sha256", jstr(m->body_sha256));
    else
      json_decref(to);
    fputs(ls->count ? ",\n" : "\n", stdout);
    if(bad || json_dumpf(o, stdout, JSON_COMPACT))
      ls->failed = 1;
    json_decref(o);
  }
  else {
    time_human(m->received_ms, when, sizeof(when));
    printf("%-12s %s %-13s %8lld  ", m->id, when, m->source ? m->source : "?", m->size);
    put_field(stdout, m->envelope_from ? m->envelope_from : "");
    fputs(" -> ", stdout);
    put_field(stdout, m->envelope_to ? m->envelope_to : "");
    if(m->spf) {
      fputs("  spf=", stdout);
      put_field(stdout, m->spf);
    }
    fputc('\n', stdout);
  }
  ls->count++;
  return 0;
}

static int cmd_inbound(struct ctl *c)
{
  struct list_state ls;
  int result;
  if(c->nargs != 2 || strcmp(c->args[1], "list"))
    return usage_error("inbound takes list", c->nargs > 1 ? c->args[1] : NULL);
  result = config_and_store(c, STORE_OPEN_READONLY);
  if(result)
    return result;
  memset(&ls, 0, sizeof(ls));
  ls.json = c->json;
  if(c->json)
    fputc('[', stdout);
  result = store_inbound_list(c->st, inbound_one, &ls);
  if(c->json)
    fputs(ls.count ? "\n]\n" : "]\n", stdout);
  else if(!result && !ls.count)
    puts("Nothing received");
  if(result) {
    fprintf(stderr, "posternctl: reading the inbound store failed\n");
    return EX_TEMPFAIL;
  }
  if(ls.failed) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    return EX_IOERR;
  }
  return 0;
}

/* oauth2 login NAME (the device code flow, for refresh_token and device_code identities) and
 * oauth2 status NAME (what the daemon last wrote next to the tokens). */
static int cmd_oauth2(struct ctl *c)
{
  char err[512] = "";
  const char *path;
  int problems, result;
  if(c->nargs != 3 || (strcmp(c->args[1], "login") && strcmp(c->args[1], "status")))
    return usage_error("oauth2 takes login NAME or status NAME", c->nargs > 1 ? c->args[1] : NULL);
  path = config_choose_path(c->config_arg);
  problems = config_load(path, stderr, &c->cfg);
  if(problems) {
    fprintf(stderr, "posternctl: %d problem%s in the configuration\n", problems,
            problems == 1 ? "" : "s");
    return EX_CONFIG;
  }
  if(!strcmp(c->args[1], "status")) {
    if(oauth2_status_print(c->cfg, c->args[2], stdout, err, sizeof(err))) {
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

int main(int argc, char **argv)
{
  static const char *const later[] = { "correspondence", "check" };
  struct ctl c;
  size_t i;
  int result;

  memset(&c, 0, sizeof(c));
  log_open("posternctl", 1, 0);
  result = parse_args(&c, argc, argv);
  if(result)
    return result;
  if(!c.nargs)
    return usage_error("no command given", NULL);
  if(!strcmp(c.args[0], "queue"))
    result = cmd_queue(&c);
  else if(!strcmp(c.args[0], "user"))
    result = cmd_user(&c);
  else if(!strcmp(c.args[0], "oauth2"))
    result = cmd_oauth2(&c);
  else if(!strcmp(c.args[0], "inbound"))
    result = cmd_inbound(&c);
  else {
    for(i = 0; i < sizeof(later) / sizeof(later[0]); i++)
      if(!strcmp(c.args[0], later[i]))
        break;
    if(i < sizeof(later) / sizeof(later[0])) {
      fprintf(stderr, "posternctl: '%s' is not available yet\n", later[i]);
      result = EX_USAGE;
    }
    else
      result = usage_error("unknown command", c.args[0]);
  }
  store_close(c.st);
  if(c.cfg)
    config_free(c.cfg);
  auth_done();
  return result;
}
