/* What every posternctl command shares: its options, the configuration and the store opened
 * the same way, escaping of network bytes for a terminal, and the JSON output conventions. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "relay/relay.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static void (*usage_print)(FILE *out);

void ctl_usage_init(void (*usage)(FILE *out))
{
  usage_print = usage;
}

int ctl_usage_error(const char *why, const char *what)
{
  char shown[64];
  if(what)
    fprintf(stderr, "posternctl: %s: %s\n", why, log_repr(shown, sizeof(shown), what,
                                                            strlen(what)));
  else
    fprintf(stderr, "posternctl: %s\n", why);
  if(usage_print)
    usage_print(stderr);
  return EX_USAGE;
}

/* Escapes attacker-controlled bytes (envelopes come from the network) before they reach a
 * terminal: printable ASCII as is, everything else as \xNN. */
void ctl_put_field(FILE *out, const char *s)
{
  struct buf b;
  buf_init(&b, FIELD_CAP * 4 + 4);
  if(s && !buf_addrepr(&b, s, strlen(s), FIELD_CAP) && b.ptr)
    fwrite(b.ptr, 1, b.len, out);
  buf_free(&b);
}

/* Whether the locale's character set (LC_ALL, LC_CTYPE, LANG) is UTF-8; asked once, and the
 * locale put back, so nothing else in posternctl reads bytes by it. */
static int ctl_locale_utf8(void)
{
  static int utf8 = -1;
  if(utf8 < 0) {
    const char *cur = setlocale(LC_CTYPE, NULL);
    char *saved = cur ? str_dup_n(cur, strlen(cur)) : NULL;
    utf8 = setlocale(LC_CTYPE, "") && !strcmp(nl_langinfo(CODESET), "UTF-8");
    setlocale(LC_CTYPE, saved ? saved : "C");
    free(saved);
  }
  return utf8;
}

void ctl_put_text(FILE *out, const char *s)
{
  struct buf b;
  if(!ctl_locale_utf8()) {
    ctl_put_field(out, s);
    return;
  }
  buf_init(&b, FIELD_CAP * 8 + 4);
  if(s && !buf_addrepr_utf8(&b, s, strlen(s), FIELD_CAP) && b.ptr)
    fwrite(b.ptr, 1, b.len, out);
  buf_free(&b);
}

void ctl_time_iso(long long ms, char *out, size_t outsz)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(!gmtime_r(&t, &tm) || !strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(out, outsz, "?");
}

void ctl_time_human(long long ms, char *out, size_t outsz)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(!gmtime_r(&t, &tm) || !strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm))
    snprintf(out, outsz, "?");
}

/* "3d 4h", "2h 5m", "4m 10s", "12s": an age or uptime for people */
void ctl_age_human(long long secs, char *out, size_t outsz)
{
  if(secs < 0)
    secs = 0;
  if(secs >= 86400)
    snprintf(out, outsz, "%lldd %lldh", secs / 86400, secs % 86400 / 3600);
  else if(secs >= 3600)
    snprintf(out, outsz, "%lldh %lldm", secs / 3600, secs % 3600 / 60);
  else if(secs >= 60)
    snprintf(out, outsz, "%lldm %llds", secs / 60, secs % 60);
  else
    snprintf(out, outsz, "%llds", secs);
}

/* ---- JSON -------------------------------------------------------------------------------- */

/* jansson refuses invalid UTF-8; an 8-bit envelope then shows escaped rather than vanishing */
json_t *ctl_jstr(const char *s)
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

json_t *ctl_jtime(long long ms)
{
  char t[40];
  ctl_time_iso(ms, t, sizeof(t));
  return json_string(t);
}

void ctl_jset_known(json_t *o, const char *key, const char *value)
{
  if(value)
    json_object_set_new(o, key, ctl_jstr(value));
}
int ctl_store_failed(const char *what, int result)
{
  fprintf(stderr, "posternctl: %s failed: %s\n", what,
          result == STORE_FULL ? "the disk is full" : "the store reported an error");
  return EX_TEMPFAIL;
}

int ctl_print_json_one(json_t *o)
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
int ctl_config(struct ctl *c)
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

int ctl_store(struct ctl *c, int flags)
{
  char err[512];
  if(store_open(c->cfg->data_dir, flags, &c->st, err, sizeof(err))) {
    fprintf(stderr, "posternctl: cannot open the queue: %s\n", err);
    return EX_TEMPFAIL;
  }
  return 0;
}

int ctl_config_and_store(struct ctl *c, int flags)
{
  int result = ctl_config(c);
  return result ? result : ctl_store(c, flags);
}

/* "--name VALUE", "--name=VALUE" (value != NULL) or the flag "--name" (value == NULL), taken
 * out of c->args wherever it stands. 1 found, 0 absent, -1 when its value is missing. */
int ctl_opt(struct ctl *c, const char *name, const char **value)
{
  size_t i, n = strlen(name), take;
  for(i = 0; i < c->nargs; i++) {
    const char *a = c->args[i];
    if(!c->isopt[i] || strncmp(a, name, n) || (a[n] && (a[n] != '=' || !value)))
      continue;
    take = 1;
    if(value) {
      if(a[n] == '=')
        *value = a + n + 1;
      else if(i + 1 < c->nargs) {
        *value = c->args[i + 1];
        take = 2;
      }
      else
        return -1;
    }
    memmove(&c->args[i], &c->args[i + take], (c->nargs - i - take) * sizeof(c->args[0]));
    memmove(&c->isopt[i], &c->isopt[i + take], (c->nargs - i - take) * sizeof(c->isopt[0]));
    c->nargs -= take;
    return 1;
  }
  return 0;
}

/* After a command has taken its options: any other one is a usage error. */
int ctl_no_options(struct ctl *c)
{
  size_t i;
  for(i = 0; i < c->nargs; i++)
    if(c->isopt[i])
      return ctl_usage_error("unknown option", c->args[i]);
  return 0;
}

/* ---- provider wiring ----------------------------------------------------------------------- */

static const char *const status_names[] = { "ok", "changed", "finding", "unchecked" };

void ctl_report_init(struct ctl_report *r, int json)
{
  memset(r, 0, sizeof(*r));
  r->json = json;
  r->items = json_array();
}

void ctl_report(struct ctl_report *r, enum ctl_status st, const char *check, const char *fix,
                const char *fmt, ...)
{
  char detail[1024];
  struct buf esc;
  json_t *o;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  if(st == CTL_FINDING)
    r->findings++;
  else if(st == CTL_UNCHECKED)
    r->unchecked++;
  /* details quote the API's answers (host names, URLs): escaped like any network bytes */
  buf_init(&esc, 4 * sizeof(detail) + 4);
  if(!buf_addrepr(&esc, detail, strlen(detail), sizeof(detail)) && esc.ptr)
    log_msg(st == CTL_OK || st == CTL_CHANGED ? LOG_LVL_INFO : LOG_LVL_WARN,
            "check=%s status=%s detail=\"%s\"%s%s%s", check, status_names[st], esc.ptr,
            fix ? " fix=\"" : "", fix ? fix : "", fix ? "\"" : "");
  buf_free(&esc);
  if(r->json) {
    o = json_object();
    if(o) {
      json_object_set_new(o, "check", json_string(check));
      json_object_set_new(o, "status", json_string(status_names[st]));
      json_object_set_new(o, "detail", ctl_jstr(detail));
      json_object_set_new(o, "fix", ctl_jstr(fix));
      if(!r->items || json_array_append_new(r->items, o))
        r->unchecked++;           /* a report that cannot be shown is not a clean one */
    }
    return;
  }
  /* the loud ones in capitals: they are what the operator must act on */
  printf("%-9s %s: ", st == CTL_FINDING ? "PROBLEM" : st == CTL_UNCHECKED ? "UNCHECKED" :
         status_names[st], check);
  ctl_put_field(stdout, detail);
  putchar('\n');
  if(fix) {
    printf("%-9s fix: ", "");
    ctl_put_field(stdout, fix);
    putchar('\n');
  }
}

int ctl_report_finish(struct ctl_report *r)
{
  int result = r->unchecked ? CTL_EXIT_UNCHECKED : r->findings ? CTL_EXIT_FINDINGS : 0;
  if(r->json && (!r->items || json_dumpf(r->items, stdout, JSON_INDENT(2)) ||
                 fputc('\n', stdout) == EOF)) {
    fprintf(stderr, "posternctl: cannot write the JSON output\n");
    result = CTL_EXIT_UNCHECKED;
  }
  json_decref(r->items);
  r->items = NULL;
  if(!r->json)
    printf("%d problem%s, %d unchecked\n", r->findings, r->findings == 1 ? "" : "s",
           r->unchecked);
  return result;
}

char *ctl_url_join(const char *base, const char *path)
{
  struct buf b;
  size_t n = strlen(base);
  while(n && base[n - 1] == '/')
    n--;
  buf_init(&b, n + strlen(path) + 2);
  if(buf_add(&b, base, n) || buf_addstr(&b, path)) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b, &n);
}

int ctl_api(struct http_client *hc, const char *auth_header, const char *method,
            const char *base, const char *path, const char *ctype, const char *body,
            struct http_response *resp, json_t **json)
{
  const char *headers[4];
  char ct[128], shown[LIM_LOG_FIELD + 1];
  char *url = ctl_url_join(base, path);
  size_t nh = 0;
  int result;
  *json = NULL;
  if(!url) {
    memset(resp, 0, sizeof(*resp));
    str_copy(resp->error, sizeof(resp->error), "out of memory");
    return -1;
  }
  if(auth_header)
    headers[nh++] = auth_header;
  headers[nh++] = "Accept: application/json";
  if(ctype) {
    snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    headers[nh++] = ct;
  }
  headers[nh] = NULL;
  result = http_client_request(hc, method, url, headers, body, body ? strlen(body) : 0, resp);
  /* the URLs hold no secret: keys go in headers or basic authentication, never in the URL */
  log_repr(shown, sizeof(shown), url, strlen(url));
  if(result)
    log_msg(LOG_LVL_WARN, "request method=%s url=%s error=\"%s\"", method, shown, resp->error);
  else {
    log_msg(LOG_LVL_INFO, "request method=%s url=%s status=%ld", method, shown, resp->status);
    if(resp->len)
      *json = json_loadb(resp->body, resp->len, 0, NULL);
  }
  free(url);
  return result;
}

/* Run as root, files made here must belong to the daemon's user, which reads them after it
 * has dropped root; as anyone else they already belong to whoever runs the daemon. */
const struct passwd *ctl_daemon_user(const struct config *cfg)
{
  if(geteuid() != 0 || !cfg->user || !cfg->user[0])
    return NULL;
  return getpwnam(cfg->user);
}

int ctl_data_dir_make(const struct config *cfg)
{
  struct stat st;
  if(!stat(cfg->data_dir, &st))
    return 0;
  if(errno != ENOENT || mkdir(cfg->data_dir, 0700)) {
    fprintf(stderr, "posternctl: cannot create data_dir %s: %s\n", cfg->data_dir,
            strerror(errno));
    return EX_CANTCREAT;
  }
  return ctl_give_to(cfg->data_dir, ctl_daemon_user(cfg));
}

int ctl_give_to(const char *path, const struct passwd *pw)
{
  if(pw && chown(path, pw->pw_uid, pw->pw_gid)) {
    fprintf(stderr, "posternctl: cannot give %s to user %s: %s\n", path, pw->pw_name,
            strerror(errno));
    return EX_NOPERM;
  }
  return 0;
}

/* Written aside at 0600 and renamed over the name (oauth2_file_write): an old file there, or a
 * hard link planted at that name, is replaced, never written through, and a failure leaves the
 * old secret whole. Given to the postern user when we are root, since the daemon reads it after
 * dropping root (or runs as that user under systemd). */
int ctl_secret_write(const char *path, const char *what, const char *secret, size_t len,
                     const char *hint)
{
  struct passwd *pw = geteuid() == 0 ? getpwnam("postern") : NULL;
  char *line = malloc(len + 1);
  int result = 0;
  if(!line)
    return EX_OSERR;
  memcpy(line, secret, len);
  line[len] = '\n';
  if(oauth2_file_write_owned(path, line, len + 1, 0600, pw)) {
    fprintf(stderr, "posternctl: cannot write %s: %s (%s)\n", path, strerror(errno), hint);
    result = EX_CANTCREAT;
  }
  auth_secret_free(line, len + 1);
  if(!result)
    fprintf(stderr, "posternctl: wrote the %s to %s (mode 0600%s)\n", what, path,
            pw ? ", owner postern" : "");
  return result;
}

int ctl_id_parse(const char *arg, char out[LIM_QUEUE_ID + 1])
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

/* ---- secrets from standard input or a terminal, never from an argument ------------------- */

static struct termios tty_saved;
static volatile sig_atomic_t tty_changed;

static void tty_restore(int sig)
{
  if(tty_changed)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* One line from fd into pw (at most cap bytes, without its LF or CR LF). Returns
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

int ctl_ask(const char *prompt, const char *def, char *out, size_t outsz)
{
  ssize_t n;
  size_t b = 0;
  if(def && *def)
    fprintf(stderr, "%s [%s]: ", prompt, def);
  else
    fprintf(stderr, "%s: ", prompt);
  fflush(stderr);
  n = outsz ? line_read(STDIN_FILENO, out, outsz - 1) : -1;
  if(n < 0)
    return -1;
  while(n && (out[n - 1] == ' ' || out[n - 1] == '\t'))
    n--;
  while(b < (size_t)n && (out[b] == ' ' || out[b] == '\t'))
    b++;
  memmove(out, out + b, (size_t)n - b);
  out[(size_t)n - b] = '\0';
  if(!out[0] && def)
    str_copy(out, outsz, def);
  return 0;
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
  tty_changed = 1;
  if(tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)) {
    tty_changed = 0;
    return -1;
  }
  /* only now: what is typed after the prompt shows must not be flushed with the type-ahead */
  fputs(prompt, stderr);
  fflush(stderr);
  n = line_read(STDIN_FILENO, pw, cap);
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
  tty_changed = 0;
  fputc('\n', stderr);
  return n;
}

int ctl_secret_get(const char *what, const char *prompt, int twice, char *pw, size_t cap,
                   size_t *len)
{
  char again[CTL_SECRET_CAP + 1];
  ssize_t n, m;
  int result = 0;
  if(cap > CTL_SECRET_CAP)
    cap = CTL_SECRET_CAP;
  if(!isatty(STDIN_FILENO)) {
    n = line_read(STDIN_FILENO, pw, cap);
    if(n < 0) {
      fprintf(stderr, "posternctl: cannot read the %s from standard input (at most %zu bytes "
              "on one line)\n", what, cap);
      return EX_DATAERR;
    }
  }
  else {
    n = tty_prompt(prompt, pw, cap);
    m = n < 0 || !twice ? n : tty_prompt("Again: ", again, sizeof(again) - 1);
    if(n < 0 || m < 0) {
      fprintf(stderr, "posternctl: cannot read the %s (at most %zu bytes)\n", what, cap);
      result = EX_DATAERR;
    }
    else if(twice && (n != m || memcmp(pw, again, (size_t)n))) {
      fprintf(stderr, "posternctl: the %ss differ; nothing changed\n", what);
      result = EX_DATAERR;
    }
    explicit_bzero(again, sizeof(again));
    if(result)
      return result;
  }
  if(n == 0) {
    fprintf(stderr, "posternctl: an empty %s is not allowed\n", what);
    return EX_DATAERR;
  }
  *len = (size_t)n;
  return 0;
}
