/* posternctl migrate: reads how an existing Postfix (relayhost, smtp_tls_*, smtp_sasl_*, the
 * sasl_passwd line) or msmtp (an msmtprc account) sends mail and prints the equivalent
 * [upstream] and [route default]. The password goes to a 0600 file it names, never to stdout:
 * with --print-only nothing is written and the operator is told what to put where. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

#define MIGRATE_FILE_MAX (4u * 1024u * 1024u)   /* a main.cf, an msmtprc, a sasl_passwd */
#define MIGRATE_VALUE_MAX 1024
#define MIGRATE_DEPTH_MAX 8                      /* msmtp "account A : B" inheritance */
#define SECRET_DIR "/etc/postern"                /* where CONFIG_DEFAULT_PATH lives */

/* The command line: every option is taken before any file is read. */
struct migrate_opts {
  const char *name, *secret_file;
  const char *main_cf, *sasl_passwd;     /* postfix */
  const char *msmtprc, *account;         /* msmtp */
  int print_only;
};

/* What is printed. Every field but the password is safe to show. */
struct upstream_out {
  char name[64];
  char host[256];
  long port;
  const char *tls;            /* starttls | opportunistic | implicit | none */
  const char *verify;         /* peer | none */
  char ca_file[MIGRATE_VALUE_MAX];
  char helo[256];
  char auth[16];
  char username[256];
  char *password;             /* the secret: NULL when not found; auth_secret_free */
  size_t passwordlen;
  struct buf notes;           /* "; ..." lines printed above the section */
};

__attribute__((format(printf, 2, 3)))
static void note(struct upstream_out *u, const char *fmt, ...)
{
  va_list ap;
  buf_addstr(&u->notes, "; ");
  va_start(ap, fmt);
  buf_vaddf(&u->notes, fmt, ap);
  va_end(ap);
  buf_addstr(&u->notes, "\n");
}

static int file_read(const char *path, struct buf *b)
{
  char chunk[8192];
  size_t n;
  int result = 0;
  FILE *f = fopen(path, "r");
  if(!f) {
    fprintf(stderr, "posternctl: %s: %s\n", path, strerror(errno));
    return EX_NOINPUT;
  }
  while((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    if(buf_add(b, chunk, n)) {
      fprintf(stderr, "posternctl: %s: larger than %u bytes\n", path, MIGRATE_FILE_MAX);
      result = EX_DATAERR;
      break;
    }
  if(!result && ferror(f)) {
    fprintf(stderr, "posternctl: %s: %s\n", path, strerror(errno));
    result = EX_IOERR;
  }
  fclose(f);
  if(!result && buf_add(b, "", 0))   /* an empty file still has a NUL-terminated ptr */
    result = EX_SOFTWARE;
  return result;
}

/* The next line of text at *pos: [*start, *end) without its newline (and CR). 0 at the end. */
static int line_next(const struct buf *b, size_t *pos, const char **start, size_t *len)
{
  const char *p, *nl;
  if(*pos >= b->len)
    return 0;
  p = b->ptr + *pos;
  nl = memchr(p, '\n', b->len - *pos);
  *len = nl ? (size_t)(nl - p) : b->len - *pos;
  *pos += *len + (nl ? 1 : 0);
  if(*len && p[*len - 1] == '\r')
    (*len)--;
  *start = p;
  return 1;
}

static int is_space(char ch)
{
  return ch == ' ' || ch == '\t';
}

static void trim(const char **s, size_t *n)
{
  while(*n && is_space(**s)) {
    (*s)++;
    (*n)--;
  }
  while(*n && is_space((*s)[*n - 1]))
    (*n)--;
}

static void copy_n(char *dst, size_t dstsz, const char *s, size_t n)
{
  if(n >= dstsz)
    n = dstsz - 1;
  memcpy(dst, s, n);
  dst[n] = '\0';
}

static int word_is(const char *s, size_t n, const char *word)
{
  return strlen(word) == n && !strncasecmp(s, word, n);
}

/* ---- Postfix ----------------------------------------------------------------------------- */

/* main.cf: "key = value", continued on lines that start with white space, '#' comments. The
 * last assignment wins, as in Postfix. */
static int postfix_get(const struct buf *cf, const char *key, char *out, size_t outsz)
{
  size_t pos = 0, n, klen = strlen(key);
  const char *s;
  int found = 0, in_key = 0;
  while(line_next(cf, &pos, &s, &n)) {
    const char *t = s, *eq;
    size_t tn = n;
    trim(&t, &tn);
    if(!tn || t[0] == '#')
      continue;
    if(is_space(s[0])) {                 /* a continuation of the previous line */
      if(in_key && strlen(out) + 1 + tn < outsz) {
        size_t l = strlen(out);
        out[l] = ' ';
        copy_n(out + l + 1, outsz - l - 1, t, tn);
      }
      continue;
    }
    in_key = 0;
    eq = memchr(t, '=', tn);
    if(eq) {
      const char *k = t, *v = eq + 1;
      size_t kn = (size_t)(eq - t), vn = tn - kn - 1;
      trim(&k, &kn);
      trim(&v, &vn);
      if(kn == klen && !memcmp(k, key, klen)) {
        copy_n(out, outsz, v, vn);
        found = in_key = 1;
      }
    }
  }
  if(!found && outsz)
    out[0] = '\0';
  return found;
}

static int yes(const char *v)
{
  return !strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "on") ||
         !strcmp(v, "1");
}

/* "[host]:port", "host:port", "[host]", "host", "[ipv6]:port"; the first of a list */
static int relayhost_parse(const char *v, char *host, size_t hostsz, long *port, int *bracketed)
{
  const char *end = v + strcspn(v, " ,\t"), *colon;
  *port = 25;
  *bracketed = 0;
  if(v[0] == '[') {
    const char *close = memchr(v, ']', (size_t)(end - v));
    if(!close)
      return -1;
    copy_n(host, hostsz, v + 1, (size_t)(close - v - 1));
    *bracketed = 1;
    colon = close + 1 < end && close[1] == ':' ? close + 1 : NULL;
  }
  else {
    colon = memchr(v, ':', (size_t)(end - v));
    copy_n(host, hostsz, v, (size_t)((colon ? colon : end) - v));
  }
  if(colon && str_to_long(colon + 1, (size_t)(end - colon - 1), 1, 65535, port)) {
    /* Postfix also takes a service name from /etc/services */
    static const struct { const char *name; long port; } services[] = {
      { "smtp", 25 }, { "submission", 587 }, { "smtps", 465 }, { "submissions", 465 } };
    size_t i, n = (size_t)(end - colon - 1);
    for(i = 0; i < sizeof(services) / sizeof(services[0]); i++)
      if(word_is(colon + 1, n, services[i].name))
        break;
    if(i == sizeof(services) / sizeof(services[0]))
      return -1;
    *port = services[i].port;
  }
  return host[0] ? 0 : -1;
}

/* The sasl_passwd line for the relayhost: "KEY USER:PASSWORD", KEY as relayhost says it (or
 * the host alone, bracketed or not, as Postfix also looks up). */
static int sasl_passwd_find(const struct buf *map, const char *relayhost, const char *host,
                            struct upstream_out *u)
{
  char bracketed[300];
  const char *keys[3];
  size_t k, pos, n;
  const char *s;
  snprintf(bracketed, sizeof(bracketed), "[%s]", host);
  keys[0] = relayhost;
  keys[1] = bracketed;
  keys[2] = host;
  for(k = 0; k < 3; k++) {
    pos = 0;
    while(line_next(map, &pos, &s, &n)) {
      const char *t = s, *v, *colon;
      size_t tn = n, kn, vn;
      trim(&t, &tn);
      if(!tn || t[0] == '#')
        continue;
      kn = strcspn(t, " \t");
      if(kn > tn)
        kn = tn;
      if(kn != strlen(keys[k]) || strncasecmp(t, keys[k], kn))
        continue;
      v = t + kn;
      vn = tn - kn;
      trim(&v, &vn);
      colon = memchr(v, ':', vn);
      if(!colon)
        return -1;
      copy_n(u->username, sizeof(u->username), v, (size_t)(colon - v));
      u->passwordlen = vn - (size_t)(colon - v) - 1;
      u->password = str_dup_n(colon + 1, u->passwordlen);
      return u->password ? 0 : -1;
    }
  }
  return -1;
}

/* "hash:/etc/postfix/sasl_passwd" -> "/etc/postfix/sasl_passwd" */
static void map_path(const char *maps, char *out, size_t outsz)
{
  const char *p = maps, *colon;
  size_t n = strcspn(p, " ,\t");
  colon = memchr(p, ':', n);
  if(colon) {
    n -= (size_t)(colon + 1 - p);
    p = colon + 1;
  }
  copy_n(out, outsz, p, n);
}

static int migrate_postfix(const struct migrate_opts *o, struct upstream_out *u,
                           const char **secret_from)
{
  const char *main_cf = o->main_cf ? o->main_cf : "/etc/postfix/main.cf", *sasl = o->sasl_passwd;
  static char sasl_path[MIGRATE_VALUE_MAX];
  char v[MIGRATE_VALUE_MAX], level[64], relayhost[MIGRATE_VALUE_MAX];
  struct buf cf, map;
  int bracketed, result = 0;

  buf_init(&cf, MIGRATE_FILE_MAX);
  buf_init(&map, MIGRATE_FILE_MAX);
  result = file_read(main_cf, &cf);
  if(result)
    goto out;
  if(!postfix_get(&cf, "relayhost", relayhost, sizeof(relayhost)) || !relayhost[0]) {
    fprintf(stderr, "posternctl: %s sets no relayhost: this Postfix delivers by itself (MX "
            "lookups); there is no smarthost to migrate\n", main_cf);
    result = EX_DATAERR;
    goto out;
  }
  if(strchr(relayhost, '$')) {
    fprintf(stderr, "posternctl: %s: relayhost = %s uses a $variable; write the host itself "
            "there (or see postconf -h relayhost)\n", main_cf, relayhost);
    result = EX_DATAERR;
    goto out;
  }
  if(relayhost_parse(relayhost, u->host, sizeof(u->host), &u->port, &bracketed)) {
    fprintf(stderr, "posternctl: %s: relayhost = %s is not [HOST]:PORT\n", main_cf, relayhost);
    result = EX_DATAERR;
    goto out;
  }
  note(u, "from %s: relayhost = %s", main_cf, relayhost);
  if(relayhost[strcspn(relayhost, " ,\t")])
    note(u, "relayhost lists several hosts; only the first is migrated (see fallback = in "
         "postern.conf(5))");
  if(!bracketed)
    note(u, "Postfix looked up MX records for %s (no [brackets]); Postern connects to it "
         "directly", u->host);

  /* TLS: the wrapper mode first, then the security level, then the pre-2.3 switches */
  postfix_get(&cf, "smtp_tls_security_level", level, sizeof(level));
  u->verify = "peer";
  if(postfix_get(&cf, "smtp_tls_wrappermode", v, sizeof(v)) && yes(v))
    u->tls = "implicit";
  else if(!strcasecmp(level, "none"))
    u->tls = "none";
  else if(!strcasecmp(level, "may"))
    u->tls = "opportunistic";
  else if(level[0])
    u->tls = "starttls";                 /* encrypt, verify, secure, dane, fingerprint */
  else if(postfix_get(&cf, "smtp_enforce_tls", v, sizeof(v)) && yes(v))
    u->tls = "starttls";
  else if(postfix_get(&cf, "smtp_use_tls", v, sizeof(v)) && yes(v))
    u->tls = "opportunistic";
  else
    u->tls = "none";
  if(!strcasecmp(level, "may") || !strcasecmp(level, "encrypt"))
    note(u, "Postfix did not check the certificate (smtp_tls_security_level = %s); Postern "
         "does (verify = peer): for a private CA set ca_file", level);
  if(postfix_get(&cf, "smtp_tls_CAfile", v, sizeof(v)) && v[0])
    copy_n(u->ca_file, sizeof(u->ca_file), v, strlen(v));
  if(postfix_get(&cf, "smtp_helo_name", v, sizeof(v)) && v[0] && !strchr(v, '$'))
    copy_n(u->helo, sizeof(u->helo), v, strlen(v));

  if(!(postfix_get(&cf, "smtp_sasl_auth_enable", v, sizeof(v)) && yes(v))) {
    copy_n(u->auth, sizeof(u->auth), "none", 4);
    goto out;
  }
  copy_n(u->auth, sizeof(u->auth), "auto", 4);
  if(!strcmp(u->tls, "none") || !strcmp(u->tls, "opportunistic")) {
    note(u, "Postfix may have sent the password unencrypted (tls %s); Postern will not, so "
         "tls = starttls", !strcmp(u->tls, "none") ? "off" : "only when offered");
    u->tls = "starttls";
  }
  if(!sasl) {
    if(postfix_get(&cf, "smtp_sasl_password_maps", v, sizeof(v)) && v[0])
      map_path(v, sasl_path, sizeof(sasl_path));
    else
      copy_n(sasl_path, sizeof(sasl_path), "/etc/postfix/sasl_passwd", 24);
    sasl = sasl_path;
  }
  result = file_read(sasl, &map);
  if(result)
    goto out;
  if(sasl_passwd_find(&map, relayhost, u->host, u)) {
    fprintf(stderr, "posternctl: %s has no \"%s USER:PASSWORD\" line for the relayhost\n", sasl,
            relayhost);
    result = EX_DATAERR;
    goto out;
  }
  *secret_from = sasl;
out:
  if(map.ptr)
    explicit_bzero(map.ptr, map.len);
  buf_free(&map);
  buf_free(&cf);
  return result;
}

/* ---- msmtp ------------------------------------------------------------------------------- */

struct msmtp_acct {
  char host[256], port[16], tls[8], starttls[8], trust[MIGRATE_VALUE_MAX], certcheck[8];
  char fingerprint[8], auth[32], user[256], domain[256], eval[MIGRATE_VALUE_MAX];
  char password[MIGRATE_VALUE_MAX];
  int has_password, has_eval;
};

/* An msmtprc value: the rest of the line, or a "quoted string" with \" and \\ escapes. */
static void msmtp_value(const char *v, size_t vn, char *out, size_t outsz)
{
  size_t i, o = 0;
  if(!vn || v[0] != '"') {
    copy_n(out, outsz, v, vn);
    return;
  }
  for(i = 1; i < vn && v[i] != '"' && o + 1 < outsz; i++) {
    if(v[i] == '\\' && i + 1 < vn)
      i++;
    out[o++] = v[i];
  }
  out[o] = '\0';
}

static void msmtp_set(struct msmtp_acct *a, const char *k, size_t kn, const char *v, size_t vn)
{
  static const struct { const char *key; size_t off, size; } keys[] = {
#define K(name, field) { name, offsetof(struct msmtp_acct, field), \
                         sizeof(((struct msmtp_acct *)0)->field) }
    K("host", host), K("port", port), K("tls", tls), K("tls_starttls", starttls),
    K("tls_trust_file", trust), K("tls_certcheck", certcheck), K("auth", auth),
    K("user", user), K("domain", domain), K("passwordeval", eval), K("password", password),
    K("tls_fingerprint", fingerprint),
#undef K
  };
  size_t i;
  for(i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
    if(!word_is(k, kn, keys[i].key))
      continue;
    /* a switch alone ("tls", "auth") means on */
    msmtp_value(vn ? v : "on", vn ? vn : 2, (char *)a + keys[i].off, keys[i].size);
    if(word_is(k, kn, "password"))
      a->has_password = 1;
    if(word_is(k, kn, "passwordeval"))
      a->has_eval = 1;
    return;
  }
}

/* "account NAME" or "account NAME : PARENT, PARENT": is it NAME? Parents go to *parents. */
static int msmtp_account_line(const char *t, size_t tn, const char *name,
                              const char **parents, size_t *pn)
{
  const char *v = t + 7, *colon;
  size_t vn = tn - 7, nn;
  trim(&v, &vn);
  colon = memchr(v, ':', vn);
  nn = colon ? (size_t)(colon - v) : vn;
  *parents = colon ? colon + 1 : v + vn;
  *pn = colon ? vn - nn - 1 : 0;
  while(nn && is_space(v[nn - 1]))
    nn--;
  return name ? nn == strlen(name) && !strncmp(v, name, nn) : 1;
}

static int line_is(const char *t, size_t tn, const char *word)
{
  size_t n = strlen(word);
  return tn >= n && !strncmp(t, word, n) && (tn == n || is_space(t[n]));
}

/* Applies what account NAME gets: the defaults above it, its parents', then its own lines.
 * -1: no such account; -2: the inheritance loops or is too deep. */
static int msmtp_resolve(const struct buf *rc, const char *name, struct msmtp_acct *a, int depth)
{
  struct msmtp_acct defaults;
  size_t pos = 0, n;
  const char *s;
  int mode = 0;                          /* 0 defaults, 1 our account, 2 another account */
  if(depth > MIGRATE_DEPTH_MAX)
    return -2;
  memset(&defaults, 0, sizeof(defaults));
  while(line_next(rc, &pos, &s, &n)) {
    const char *t = s, *parents;
    size_t tn = n, pn, kn;
    trim(&t, &tn);
    if(!tn || t[0] == '#')
      continue;
    if(line_is(t, tn, "defaults")) {
      mode = mode == 1 ? 3 : 0;          /* defaults after our account do not apply to it */
      continue;
    }
    if(line_is(t, tn, "account")) {
      if(mode == 1 || mode == 3)
        break;
      if(!msmtp_account_line(t, tn, name, &parents, &pn)) {
        mode = 2;
        continue;
      }
      mode = 1;
      if(depth == 0)
        *a = defaults;
      while(pn) {                        /* the parents, in order */
        char parent[128];
        const char *p = parents;
        size_t len = strcspn(p, ",");
        if(len > pn)
          len = pn;
        parents += len + (len < pn ? 1 : 0);
        pn -= len + (len < pn ? 1 : 0);
        trim(&p, &len);
        copy_n(parent, sizeof(parent), p, len);
        if(parent[0]) {
          int r = msmtp_resolve(rc, parent, a, depth + 1);
          if(r)
            return r;
        }
      }
      continue;
    }
    if(mode == 2 || mode == 3)
      continue;
    kn = strcspn(t, " \t");
    if(kn > tn)
      kn = tn;
    {
      const char *v = t + kn;
      size_t vn = tn - kn;
      trim(&v, &vn);
      msmtp_set(mode == 0 ? &defaults : a, t, kn, v, vn);
    }
  }
  explicit_bzero(&defaults, sizeof(defaults));
  return mode == 1 || mode == 3 ? 0 : -1;
}

/* Which account: --account, else "default", else the only one. */
static int msmtp_pick(const struct buf *rc, const char *path, char *name, size_t namesz)
{
  size_t pos = 0, n, count = 0;
  const char *s, *parents;
  char names[512] = "";
  int have_default = 0;
  while(line_next(rc, &pos, &s, &n)) {
    const char *t = s, *v;
    size_t tn = n, pn, vn;
    trim(&t, &tn);
    if(!line_is(t, tn, "account"))
      continue;
    msmtp_account_line(t, tn, NULL, &parents, &pn);
    v = t + 7;
    vn = tn - 7;
    trim(&v, &vn);
    vn = strcspn(v, ": \t") < vn ? strcspn(v, ": \t") : vn;
    if(word_is(v, vn, "default"))
      have_default = 1;
    if(!count++)
      copy_n(name, namesz, v, vn);
    if(strlen(names) + vn + 2 < sizeof(names)) {
      size_t l = strlen(names);
      if(l)
        names[l++] = ' ';
      copy_n(names + l, sizeof(names) - l, v, vn);
    }
  }
  if(have_default) {
    copy_n(name, namesz, "default", 7);
    return 0;
  }
  if(count == 1)
    return 0;
  if(!count)
    fprintf(stderr, "posternctl: %s has no account\n", path);
  else
    fprintf(stderr, "posternctl: %s has several accounts (%s) and none is \"default\": "
            "choose one with --account NAME\n", path, names);
  return -1;
}

/* passwordeval runs a command, as msmtp would: only from a file of the one who runs us, so
 * that root never runs what another user wrote. */
static int msmtp_eval(const char *rcpath, const char *cmd, struct upstream_out *u)
{
  struct stat st;
  char out[MIGRATE_VALUE_MAX];
  size_t n = 0, got;
  FILE *p;
  int status;
  if(stat(rcpath, &st) || st.st_uid != geteuid()) {
    fprintf(stderr, "posternctl: %s belongs to another user: its passwordeval command is not "
            "run; run it yourself and put its output in the secret file (--print-only)\n",
            rcpath);
    return EX_NOPERM;
  }
  fflush(NULL);
  p = popen(cmd, "r");
  if(!p) {
    fprintf(stderr, "posternctl: passwordeval: %s\n", strerror(errno));
    return EX_OSERR;
  }
  while(n < sizeof(out) && (got = fread(out + n, 1, sizeof(out) - n, p)) > 0)
    n += got;
  status = pclose(p);
  if(status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) || n == sizeof(out)) {
    explicit_bzero(out, sizeof(out));
    fprintf(stderr, "posternctl: the passwordeval command of %s failed (or printed more than "
            "%zu bytes)\n", rcpath, sizeof(out) - 1);
    return EX_DATAERR;
  }
  while(n && (out[n - 1] == '\n' || out[n - 1] == '\r'))   /* msmtp drops these too */
    n--;
  u->password = str_dup_n(out, n);
  u->passwordlen = n;
  explicit_bzero(out, sizeof(out));
  return u->password ? 0 : EX_OSERR;
}

static int is_on(const char *v)
{
  return !strcasecmp(v, "on");
}

static int migrate_msmtp(const struct migrate_opts *o, struct upstream_out *u,
                         const char **secret_from)
{
  static char home_rc[MIGRATE_VALUE_MAX];
  const char *rcpath = o->msmtprc, *account = o->account, *home = getenv("HOME");
  char picked[128];
  struct msmtp_acct *a = calloc(1, sizeof(*a));
  struct buf rc;
  int result = 0;
  size_t i;

  buf_init(&rc, MIGRATE_FILE_MAX);
  if(!a)
    return EX_OSERR;
  if(!rcpath) {
    snprintf(home_rc, sizeof(home_rc), "%s/.msmtprc", home ? home : "");
    rcpath = home && *home && !access(home_rc, F_OK) ? home_rc : "/etc/msmtprc";
  }
  result = file_read(rcpath, &rc);
  if(result)
    goto out;
  if(!account) {
    if(msmtp_pick(&rc, rcpath, picked, sizeof(picked))) {
      result = EX_DATAERR;
      goto out;
    }
    account = picked;
  }
  result = msmtp_resolve(&rc, account, a, 0);
  if(result) {
    if(result == -2)
      fprintf(stderr, "posternctl: %s: the accounts account %s inherits from loop, or go more "
              "than %d deep\n", rcpath, account, MIGRATE_DEPTH_MAX);
    else
      fprintf(stderr, "posternctl: %s has no account %s (or one it inherits from)\n", rcpath,
              account);
    result = EX_DATAERR;
    goto out;
  }
  note(u, "from %s: account %s", rcpath, account);
  if(!a->host[0]) {
    fprintf(stderr, "posternctl: account %s in %s has no host\n", account, rcpath);
    result = EX_DATAERR;
    goto out;
  }
  copy_n(u->host, sizeof(u->host), a->host, strlen(a->host));
  if(is_on(a->tls))
    u->tls = a->starttls[0] && !is_on(a->starttls) ? "implicit" : "starttls";
  else
    u->tls = "none";
  u->port = !strcmp(u->tls, "implicit") ? 465 : 25;
  if(a->port[0] && str_to_long(a->port, strlen(a->port), 1, 65535, &u->port)) {
    fprintf(stderr, "posternctl: account %s: port %s is not a port\n", account, a->port);
    result = EX_DATAERR;
    goto out;
  }
  u->verify = a->certcheck[0] && !is_on(a->certcheck) ? "none" : "peer";
  if(!strcmp(u->verify, "none"))
    note(u, "msmtp did not check the certificate (tls_certcheck off): neither will Postern; "
         "set verify = peer (and ca_file) as soon as you can");
  if(a->fingerprint[0])
    note(u, "msmtp pinned a certificate fingerprint; Postern checks the certificate chain "
         "and name instead (ca_file)");
  if(a->trust[0] && strcmp(a->trust, "system"))
    copy_n(u->ca_file, sizeof(u->ca_file), a->trust, strlen(a->trust));
  if(a->domain[0])
    copy_n(u->helo, sizeof(u->helo), a->domain, strlen(a->domain));

  if(!a->auth[0] || !strcasecmp(a->auth, "off")) {
    copy_n(u->auth, sizeof(u->auth), "none", 4);
    goto out;
  }
  if(!strcasecmp(a->auth, "plain") || !strcasecmp(a->auth, "login") ||
     !strcasecmp(a->auth, "cram-md5")) {
    for(i = 0; a->auth[i]; i++)
      u->auth[i] = (char)(a->auth[i] >= 'A' && a->auth[i] <= 'Z' ? a->auth[i] + 32 : a->auth[i]);
    u->auth[i] = '\0';
  }
  else {
    if(strcasecmp(a->auth, "on"))
      note(u, "msmtp used auth %s; Postern picks the best mechanism the server offers (for "
           "xoauth2 and oauthbearer see the [oauth2] section in postern.conf(5))", a->auth);
    copy_n(u->auth, sizeof(u->auth), "auto", 4);
  }
  copy_n(u->username, sizeof(u->username), a->user, strlen(a->user));
  if(!strcmp(u->tls, "none")) {
    note(u, "msmtp had TLS off; Postern never sends a password unencrypted, so tls = starttls");
    u->tls = "starttls";
  }
  if(a->has_password) {
    u->passwordlen = strlen(a->password);
    u->password = str_dup_n(a->password, u->passwordlen);
    *secret_from = rcpath;
  }
  else if(a->has_eval && o->print_only)
    note(u, "the password is what `%s` prints", a->eval);
  else if(a->has_eval) {
    result = msmtp_eval(rcpath, a->eval, u);
    *secret_from = rcpath;
  }
  else
    note(u, "msmtp found the password in a keyring or ~/.netrc: put it in the secret file "
         "yourself");
out:
  if(a) {
    explicit_bzero(a, sizeof(*a));
    free(a);
  }
  if(rc.ptr)
    explicit_bzero(rc.ptr, rc.len);
  buf_free(&rc);
  return result;
}

/* ---- output ------------------------------------------------------------------------------ */

static void upstream_print(const struct upstream_out *u, const char *secret_file)
{
  if(u->notes.ptr)
    fputs(u->notes.ptr, stdout);
  printf("[upstream %s]\ntype = smtp\nhost = %s\nport = %ld\ntls = %s\nverify = %s\n", u->name,
         u->host, u->port, u->tls, u->verify);
  if(u->ca_file[0])
    printf("ca_file = %s\n", u->ca_file);
  if(u->helo[0])
    printf("helo = %s\n", u->helo);
  printf("auth = %s\n", u->auth);
  if(strcmp(u->auth, "none")) {
    printf("username = %s\n", u->username);
    printf("password_file = %s\n", secret_file);
  }
  printf("\n[route default]\nupstream = %s\n", u->name);
}

int ctl_migrate(struct ctl *c)
{
  struct upstream_out u;
  struct migrate_opts o;
  const char *name, *secret_file, *secret_from = NULL;
  char secret_default[sizeof(SECRET_DIR) + 80];
  int result, postfix;
  size_t i;

  memset(&u, 0, sizeof(u));
  memset(&o, 0, sizeof(o));
  buf_init(&u.notes, 16384);
  o.print_only = ctl_opt(c, "--print-only", NULL) > 0;
  if(ctl_opt(c, "--name", &o.name) < 0 || ctl_opt(c, "--secret-file", &o.secret_file) < 0 ||
     ctl_opt(c, "--main-cf", &o.main_cf) < 0 || ctl_opt(c, "--sasl-passwd", &o.sasl_passwd) < 0 ||
     ctl_opt(c, "--msmtprc", &o.msmtprc) < 0 || ctl_opt(c, "--account", &o.account) < 0) {
    result = ctl_usage_error("an option of migrate needs its value", NULL);
    goto out;
  }
  if(ctl_no_options(c)) {
    result = EX_USAGE;
    goto out;
  }
  if(c->nargs != 2 || (strcmp(c->args[1], "postfix") && strcmp(c->args[1], "msmtp"))) {
    result = ctl_usage_error("migrate takes postfix or msmtp", c->nargs > 1 ? c->args[1] : NULL);
    goto out;
  }
  postfix = !strcmp(c->args[1], "postfix");
  if((postfix && (o.msmtprc || o.account)) || (!postfix && (o.main_cf || o.sasl_passwd))) {
    result = ctl_usage_error("options of the other migration", c->args[1]);
    goto out;
  }
  result = postfix ? migrate_postfix(&o, &u, &secret_from) : migrate_msmtp(&o, &u, &secret_from);
  if(result)
    goto out;
  name = o.name;
  secret_file = o.secret_file;

  copy_n(u.name, sizeof(u.name), name ? name : c->args[1], strlen(name ? name : c->args[1]));
  for(i = 0; u.name[i]; i++)
    if(!((u.name[i] >= 'a' && u.name[i] <= 'z') || (u.name[i] >= 'A' && u.name[i] <= 'Z') ||
         (u.name[i] >= '0' && u.name[i] <= '9') || u.name[i] == '-' || u.name[i] == '_')) {
      result = ctl_usage_error("--name takes letters, digits, - and _", name);
      goto out;
    }
  if(!secret_file) {
    snprintf(secret_default, sizeof(secret_default), SECRET_DIR "/%s.secret", u.name);
    secret_file = secret_default;
  }
  if(strcmp(u.auth, "none") && u.password && !o.print_only) {
    result = ctl_secret_write(secret_file, "password", u.password, u.passwordlen,
                              "choose another file with --secret-file, or --print-only");
    if(result)
      goto out;
  }
  else if(strcmp(u.auth, "none")) {
    if(secret_from)
      note(&u, "put the password (from %s) alone on one line in %s: chmod 600, owned by the "
           "postern user", secret_from, secret_file);
    else
      note(&u, "put the password alone on one line in %s: chmod 600, owned by the postern "
           "user", secret_file);
  }
  note(&u, "add these sections to postern.conf (a [route default] already there: replace it),"
       " then run postern -n");
  upstream_print(&u, secret_file);
out:
  auth_secret_free(u.password, u.passwordlen);
  buf_free(&u.notes);
  return result;
}
