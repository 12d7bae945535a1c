/* The web console: users and sessions, the security headers of every answer, and the routes.
 * The pages themselves are in console/pages.c. */
#include "console/console.h"
#include "console/console_int.h"
#include "console/pages.h"
#include "tls/tls.h"
#include "lib/conn.h"
#include "lib/log.h"
#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define COOKIE "postern_console"
#define LOGIN_COOKIE "postern_console_login"
#define LOGIN_COOKIE_SECONDS 1800

struct console_user {
  char *name, *hash;
};

struct console {
  struct store *st;
  pthread_mutex_t mu;
  struct console_user *users;   /* under mu */
  size_t nusers;
  long long timeout_ms;
  int secure_cookie;
  struct pages_ctx view;        /* under mu: upstreams, oauth2 and sources from the config */
  struct console_session sessions[LIM_CONSOLE_SESSIONS];   /* under mu */
};

/* ---- users -------------------------------------------------------------------------------- */

static void users_free(struct console_user *u, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    free(u[i].name);
    free(u[i].hash);
  }
  free(u);
}

/* A hash crypt(3) can check: $id$...: yescrypt ($y$), sha512-crypt ($6$), sha256-crypt ($5$),
 * bcrypt ($2b$). A plain password (or anything else) is refused. */
static int hash_ok(const char *h)
{
  return !strncmp(h, "$y$", 3) || !strncmp(h, "$6$", 3) || !strncmp(h, "$5$", 3) ||
         !strncmp(h, "$2b$", 4) || !strncmp(h, "$2y$", 4) || !strncmp(h, "$gy$", 4) ||
         !strncmp(h, "$7$", 3);
}

/* Adds "name:hash" entries from text (separated by white space); problems to errs. */
static int users_add(const char *text, const char *where, FILE *errs, struct console_user **u,
                     size_t *n)
{
  const char *p = text;
  int problems = 0;
  while(*p) {
    const char *e, *colon;
    while(*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
      p++;
    if(!*p)
      break;
    if(*p == '#') {               /* a comment line in users_file */
      while(*p && *p != '\n')
        p++;
      continue;
    }
    for(e = p; *e && *e != ' ' && *e != '\t' && *e != '\n' && *e != '\r'; e++)
      ;
    colon = memchr(p, ':', (size_t)(e - p));
    if(!colon || colon == p || colon + 1 == e) {
      fprintf(errs, "%s: [console] users: an entry is not name:hash\n", where);
      problems++;
    }
    else if(*n >= LIM_CONSOLE_USERS) {
      fprintf(errs, "%s: [console] users: more than %u users\n", where, LIM_CONSOLE_USERS);
      problems++;
    }
    else {
      struct console_user *nu = realloc(*u, (*n + 1) * sizeof(*nu));
      char *hash;
      if(!nu)
        return problems + 1;
      *u = nu;
      nu[*n].name = str_dup_n(p, (size_t)(colon - p));
      nu[*n].hash = hash = str_dup_n(colon + 1, (size_t)(e - colon - 1));
      (*n)++;
      if(!nu[*n - 1].name || !hash)
        return problems + 1;
      if(!hash_ok(hash)) {
        /* the entry itself is not printed: it may be a password */
        fprintf(errs, "%s: [console] users: the entry for %s is not a crypt(3) hash "
                "($y$ yescrypt, $6$ sha512-crypt ...: make one with mkpasswd or "
                "`openssl passwd -6`); plain passwords are refused\n", where, nu[*n - 1].name);
        problems++;
      }
    }
    p = e;
  }
  return problems;
}

static int users_load(const struct config *cfg, FILE *errs, struct console_user **u, size_t *n)
{
  char where[512];
  int problems = 0;
  *u = NULL;
  *n = 0;
  snprintf(where, sizeof(where), "%s:%d", cfg->path ? cfg->path : "(embedded default)",
           cfg->console.line);
  if(cfg->console.users)
    problems += users_add(cfg->console.users, where, errs, u, n);
  if(cfg->console.users_file) {
    FILE *f = fopen(cfg->console.users_file, "r");
    struct buf b;
    char chunk[4096];
    size_t got;
    buf_init(&b, 1024u * 1024u);
    if(!f) {
      fprintf(errs, "%s: [console] users_file %s: %s\n", where, cfg->console.users_file,
              strerror(errno));
      problems++;
    }
    else {
      while((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if(buf_add(&b, chunk, got)) {
          fprintf(errs, "%s: [console] users_file %s is too big\n", where,
                  cfg->console.users_file);
          problems++;
          break;
        }
      fclose(f);
      if(b.ptr)
        problems += users_add(b.ptr, where, errs, u, n);
    }
    buf_free(&b);
  }
  if(cfg->console.enabled && !problems && !*n) {
    fprintf(errs, "%s: [console] is enabled but has no users (users or users_file)\n", where);
    problems++;
  }
  return problems;
}

int console_check_config(const struct config *cfg, FILE *errs)
{
  struct console_user *u;
  size_t n;
  int problems;
  if(!cfg->console.present)
    return 0;
  problems = users_load(cfg, errs, &u, &n);
  users_free(u, n);
  if(cfg->console.enabled && !cfg->inbound.http_address) {
    fprintf(errs, "%s:%d: [console] is enabled but [inbound] http_address is not set: the "
            "console is served by the HTTP listener\n", cfg->path ? cfg->path : "(embedded)",
            cfg->console.line);
    problems++;
  }
  return problems;
}

static void names_free(char **names, size_t n)
{
  size_t i;
  for(i = 0; names && i < n; i++)
    free(names[i]);
  free(names);
}

/* A copy of names[0..n) (NULL entries stay NULL); -1 without memory. */
static int names_copy(char *const *names, size_t n, char ***out)
{
  size_t i;
  *out = n ? calloc(n, sizeof(**out)) : NULL;
  if(n && !*out)
    return -1;
  for(i = 0; i < n; i++)
    if(names[i] && !((*out)[i] = str_dup_n(names[i], strlen(names[i])))) {
      names_free(*out, n);
      *out = NULL;
      return -1;
    }
  return 0;
}

static void view_free(struct pages_ctx *v)
{
  names_free(v->upstreams, v->nupstreams);
  names_free(v->oauth2, v->nupstreams);
  names_free(v->sources, v->nsources);
  v->upstreams = v->oauth2 = v->sources = NULL;
  v->nupstreams = v->nsources = 0;
}

/* the view's lists copied into pc; on failure pc has none (the pages say so) */
static void view_copy(const struct pages_ctx *v, struct pages_ctx *pc)
{
  if(names_copy(v->upstreams, v->nupstreams, &pc->upstreams) ||
     names_copy(v->oauth2, v->nupstreams, &pc->oauth2) ||
     names_copy(v->sources, v->nsources, &pc->sources)) {
    names_free(pc->upstreams, v->nupstreams);
    names_free(pc->oauth2, v->nupstreams);
    pc->upstreams = pc->oauth2 = pc->sources = NULL;
    pc->nupstreams = pc->nsources = 0;
    return;
  }
  pc->nupstreams = v->nupstreams;
  pc->nsources = v->nsources;
}

/* What the pages show of cfg: the upstreams (with their OAuth2 identities) and the ways
 * inbound mail arrives. Entries that cannot be had (no memory) are left out. */
static void view_make(const struct config *cfg, struct pages_ctx *v)
{
  size_t i, j;
  memset(v, 0, sizeof(*v));
  v->upstreams = cfg->nupstreams ? calloc(cfg->nupstreams, sizeof(char *)) : NULL;
  v->oauth2 = cfg->nupstreams ? calloc(cfg->nupstreams, sizeof(char *)) : NULL;
  v->sources = calloc(cfg->nlisteners + 2, sizeof(char *));
  if((cfg->nupstreams && (!v->upstreams || !v->oauth2)) || !v->sources) {
    view_free(v);
    return;
  }
  for(i = 0; i < cfg->nupstreams; i++) {
    const struct cfg_upstream *up = &cfg->upstreams[i];
    if(up->type == CFG_UP_CAPTURE || !up->name ||
       !(v->upstreams[v->nupstreams] = str_dup_n(up->name, strlen(up->name))))
      continue;
    v->oauth2[v->nupstreams++] = up->oauth2 ? str_dup_n(up->oauth2, strlen(up->oauth2)) : NULL;
  }
  for(i = 0; i < cfg->nlisteners; i++) {
    const struct cfg_listener *l = &cfg->listeners[i];
    struct buf line;
    if(l->role != CFG_ROLE_MX)
      continue;
    buf_init(&line, 1024);
    buf_addf(&line, "SMTP (MX) listener %s on", l->name);
    for(j = 0; j < l->naddresses; j++)
      buf_addf(&line, "%s %s", j ? "," : "", l->addresses[j]);
    if(line.ptr && (v->sources[v->nsources] = str_dup_n(line.ptr, line.len)))
      v->nsources++;
    buf_free(&line);
  }
  if(cfg->inbound.http_address) {
    struct buf line;
    buf_init(&line, 1024);
    buf_addf(&line, "HTTP listener on %s: SendGrid Inbound Parse (/emailInbound), SendGrid "
             "events (/events), SMS (/sms)", cfg->inbound.http_address);
    if(line.ptr && (v->sources[v->nsources] = str_dup_n(line.ptr, line.len)))
      v->nsources++;
    buf_free(&line);
  }
}

/* ---- passwords and sessions -------------------------------------------------------------- */

static int random_hex(char *out, size_t bytes)
{
  unsigned char r[64];
  static const char hex[] = "0123456789abcdef";
  size_t i;
  if(bytes > sizeof(r) || getrandom(r, bytes, 0) != (ssize_t)bytes)
    return -1;
  for(i = 0; i < bytes; i++) {
    out[2 * i] = hex[r[i] >> 4];
    out[2 * i + 1] = hex[r[i] & 15];
  }
  out[2 * bytes] = '\0';
  return 0;
}

/* 1 when pass is name's password. Without such a user a hash is computed all the same, so the
 * answer takes the same time either way. */
static int password_ok(struct console *c, const char *name, const char *pass)
{
  struct crypt_data *cd = calloc(1, sizeof(*cd));
  char hash[512] = "$6$postern.console$";
  const char *h;
  size_t i;
  int found = 0, ok = 0;
  if(!cd)
    return 0;
  pthread_mutex_lock(&c->mu);
  for(i = 0; i < c->nusers; i++)
    if(!strcmp(c->users[i].name, name)) {
      str_copy(hash, sizeof(hash), c->users[i].hash);
      found = 1;
      break;
    }
  pthread_mutex_unlock(&c->mu);
  h = crypt_r(pass, hash, cd);
  ok = found && h && h[0] != '*' && strlen(h) == strlen(hash) && tls_memeq(h, hash, strlen(h));
  explicit_bzero(cd, sizeof(*cd));
  free(cd);
  return ok;
}

/* The session of the request's cookie (copied to *out), touching it; 0 found, -1 not. */
static int session_find(struct console *c, const struct web_request *rq,
                        struct console_session *out)
{
  const char *id = rq->value(rq->ctx, WEB_COOKIE, COOKIE);
  long long now = time_mono_ms();
  size_t i;
  int found = -1;
  if(!id || strlen(id) != CONSOLE_TOKEN_HEX)
    return -1;
  pthread_mutex_lock(&c->mu);
  for(i = 0; i < LIM_CONSOLE_SESSIONS; i++) {
    struct console_session *s = &c->sessions[i];
    if(!s->used)
      continue;
    if(now - s->last_ms > c->timeout_ms) {
      explicit_bzero(s, sizeof(*s));
      continue;
    }
    if(tls_memeq(s->id, id, CONSOLE_TOKEN_HEX)) {
      s->last_ms = now;
      *out = *s;
      found = 0;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return found;
}

static const struct console_user *user_find(const struct console_user *u, size_t n,
                                            const char *name)
{
  size_t i;
  for(i = 0; i < n; i++)
    if(!strcmp(u[i].name, name))
      return &u[i];
  return NULL;
}

/* Under mu, the new users in place: a session ends when its user is gone or has another
 * password hash now (removing a user, or changing a leaked password, must lock its holder out
 * at the reload, not when the session times out; a new hash of the same password cannot be
 * told from a new password, so it ends the session too). */
static void sessions_revoke(struct console *c, const struct console_user *old, size_t nold)
{
  size_t i;
  for(i = 0; i < LIM_CONSOLE_SESSIONS; i++) {
    struct console_session *s = &c->sessions[i];
    const struct console_user *was, *now;
    if(!s->used)
      continue;
    was = user_find(old, nold, s->user);
    now = user_find(c->users, c->nusers, s->user);
    if(now && was && !strcmp(now->hash, was->hash))
      continue;
    log_info("console: the session of %s ended: the user was %s by a reload", s->user,
             now ? "given another password hash" : "removed");
    explicit_bzero(s, sizeof(*s));
  }
}

static int session_new(struct console *c, const char *user, struct console_session *out)
{
  size_t i, slot = 0;
  long long oldest = -1;
  struct console_session s = { 0 };
  s.used = 1;
  s.last_ms = time_mono_ms();
  str_copy(s.user, sizeof(s.user), user);
  if(random_hex(s.id, CONSOLE_TOKEN_HEX / 2) || random_hex(s.csrf, CONSOLE_TOKEN_HEX / 2))
    return -1;
  pthread_mutex_lock(&c->mu);
  /* a free slot, else the one used longest ago */
  for(i = 0; i < LIM_CONSOLE_SESSIONS; i++) {
    if(!c->sessions[i].used) {
      slot = i;
      break;
    }
    if(oldest < 0 || c->sessions[i].last_ms < oldest) {
      oldest = c->sessions[i].last_ms;
      slot = i;
    }
  }
  c->sessions[slot] = s;
  pthread_mutex_unlock(&c->mu);
  *out = s;
  return 0;
}

static void session_end(struct console *c, const char *id)
{
  size_t i;
  pthread_mutex_lock(&c->mu);
  for(i = 0; i < LIM_CONSOLE_SESSIONS; i++)
    if(c->sessions[i].used && tls_memeq(c->sessions[i].id, id, CONSOLE_TOKEN_HEX))
      explicit_bzero(&c->sessions[i], sizeof(c->sessions[i]));
  pthread_mutex_unlock(&c->mu);
}

/* ---- answers ----------------------------------------------------------------------------- */

static void set_cookie(struct console *c, struct web_response *out, const char *name,
                       const char *value, long max_age)
{
  char v[256];
  int secure;
  pthread_mutex_lock(&c->mu);
  secure = c->secure_cookie;
  pthread_mutex_unlock(&c->mu);
  if(max_age >= 0)
    snprintf(v, sizeof(v), "%s=%s; Path=/console/; HttpOnly; SameSite=Strict; Max-Age=%ld%s",
             name, value, max_age, secure ? "; Secure" : "");
  else
    snprintf(v, sizeof(v), "%s=%s; Path=/console/; HttpOnly; SameSite=Strict%s", name, value,
             secure ? "; Secure" : "");
  web_header(out, "Set-Cookie", v);
}

/* ---- login ------------------------------------------------------------------------------- */

static void login_page(struct console *c, const struct web_request *rq, struct web_response *out,
                       unsigned status, const char *message)
{
  char token[CONSOLE_TOKEN_HEX + 1];
  const char *have = rq->value(rq->ctx, WEB_COOKIE, LOGIN_COOKIE);
  /* the login form's CSRF token is the double of a cookie only this site can set */
  if(have && strlen(have) == CONSOLE_TOKEN_HEX && strspn(have, "0123456789abcdef") ==
     CONSOLE_TOKEN_HEX)
    str_copy(token, sizeof(token), have);
  else if(random_hex(token, CONSOLE_TOKEN_HEX / 2)) {
    console_plain(out, 500, "no randomness\n");
    return;
  }
  else
    set_cookie(c, out, LOGIN_COOKIE, token, LOGIN_COOKIE_SECONDS);
  out->status = status;
  pages_login(&out->body, token, message);
  out->content_type = "text/html; charset=utf-8";
}

static void login_post(struct console *c, const struct web_request *rq, const struct form *fm,
                       struct web_response *out)
{
  const char *want = rq->value(rq->ctx, WEB_COOKIE, LOGIN_COOKIE);
  const char *token = form_get(fm, "csrf"), *user = form_get(fm, "user"),
             *pass = form_get(fm, "password");
  struct console_session s;
  if(!want || !token || strlen(want) != CONSOLE_TOKEN_HEX ||
     strlen(token) != CONSOLE_TOKEN_HEX || !tls_memeq(want, token, CONSOLE_TOKEN_HEX)) {
    console_plain(out, 403, "missing or wrong CSRF token: reload the login page\n");
    return;
  }
  if(!user || !pass || !*user || strlen(user) >= sizeof(s.user) ||
     !password_ok(c, user, pass)) {
    out->auth_failed = 1;
    log_warn("console: a wrong user name or password from %s", rq->client);
    login_page(c, rq, out, 403, "Wrong user name or password.");
    return;
  }
  if(session_new(c, user, &s)) {
    console_plain(out, 500, "no randomness\n");
    return;
  }
  log_info("console: %s logged in from %s", s.user, rq->client);
  set_cookie(c, out, COOKIE, s.id, -1);
  set_cookie(c, out, LOGIN_COOKIE, "", 0);
  console_redirect(out, "/console/");
  explicit_bzero(&s, sizeof(s));
}

/* ---- routing ------------------------------------------------------------------------------ */

static int asset(const char *name, struct web_response *out)
{
  size_t i;
  for(i = 0; i < console_nassets; i++)
    if(!strcmp(console_assets[i].name, name)) {
      size_t n = strlen(name);
      out->status = 200;
      out->content_type = n > 4 && !strcmp(name + n - 4, ".css") ? "text/css; charset=utf-8" :
                          n > 3 && !strcmp(name + n - 3, ".js") ?
                          "text/javascript; charset=utf-8" : "image/png";
      buf_add(&out->body, console_assets[i].data, console_assets[i].len);
      return 0;
    }
  return -1;
}

void console_handle(void *arg, const struct web_request *rq, struct web_response *out)
{
  struct console *c = arg;
  const char *path = rq->path + strlen("/console");
  int post = !strcmp(rq->method, "POST");
  struct console_session s;
  struct form fm = { 0 };
  struct pages_ctx pc = { 0 };

  console_security_headers(out, strncmp(path, "/msg/", 5) || !strstr(path, "/html") ?
                           FRAME_PAGE : console_wants_images(rq) ? FRAME_MAIL_IMAGES :
                           FRAME_MAIL);
  out->content_type = "text/html; charset=utf-8";
  if(!*path) {
    console_redirect(out, "/console/");
    return;
  }
  if(!strncmp(path, "/assets/", 8) && !post) {
    if(asset(path + 8, out))
      console_plain(out, 404, "not found\n");
    return;
  }
  if(post && form_parse(rq->body, rq->bodylen, LIM_CONSOLE_FORM_FIELDS, &fm)) {
    console_plain(out, 400, "malformed form\n");
    return;
  }
  if(!strcmp(path, "/login")) {
    if(post)
      login_post(c, rq, &fm, out);
    else
      login_page(c, rq, out, 200, NULL);
    goto out;
  }
  if(session_find(c, rq, &s)) {
    if(post)
      console_plain(out, 403, "not logged in\n");
    else
      console_redirect(out, WEB_LOGIN_PATH);
    goto out;
  }
  if(post) {
    const char *token = form_get(&fm, "csrf");
    if(!token || strlen(token) != CONSOLE_TOKEN_HEX ||
       !tls_memeq(token, s.csrf, CONSOLE_TOKEN_HEX)) {
      log_warn("console: a form from %s (user %s) without its CSRF token refused", rq->client,
               s.user);
      console_plain(out, 403, "missing or wrong CSRF token\n");
      goto out;
    }
    if(!strcmp(path, "/logout")) {
      session_end(c, s.id);
      log_info("console: %s logged out", s.user);
      set_cookie(c, out, COOKIE, "", 0);
      console_redirect(out, WEB_LOGIN_PATH);
      goto out;
    }
  }
  pc.st = c->st;
  pc.session = &s;
  pc.rq = rq;
  pc.form = post ? &fm : NULL;
  /* a copy: a reload may replace the lists while the page is made */
  pthread_mutex_lock(&c->mu);
  view_copy(&c->view, &pc);
  pthread_mutex_unlock(&c->mu);
  pages_route(&pc, path, out);
  view_free(&pc);
out:
  form_free(&fm);
  explicit_bzero(&s, sizeof(s));
}

/* ---- life cycle --------------------------------------------------------------------------- */

static void settings_apply(struct console *c, const struct config *cfg, struct console_user *u,
                           size_t n)
{
  struct console_user *old;
  struct pages_ctx view, oldview;
  size_t nold;
  view_make(cfg, &view);
  pthread_mutex_lock(&c->mu);
  oldview = c->view;
  c->view = view;
  pthread_mutex_unlock(&c->mu);
  view_free(&oldview);
  pthread_mutex_lock(&c->mu);
  old = c->users;
  nold = c->nusers;
  c->users = u;
  c->nusers = n;
  c->timeout_ms = cfg->console.session_timeout * 1000;
  c->secure_cookie = cfg->console.secure_cookie;
  sessions_revoke(c, old, nold);
  pthread_mutex_unlock(&c->mu);
  users_free(old, nold);
}

int console_new(const struct config *cfg, struct store *st, struct console **out)
{
  struct console *c = calloc(1, sizeof(*c));
  struct console_user *u;
  size_t n;
  *out = NULL;
  if(!c)
    return -1;
  pthread_mutex_init(&c->mu, NULL);
  c->st = st;
  if(users_load(cfg, stderr, &u, &n)) {
    users_free(u, n);
    log_error("console: cannot read its users (see above; [console] users, users_file)");
    console_free(c);
    return -1;
  }
  settings_apply(c, cfg, u, n);
  *out = c;
  return 0;
}

int console_reload(struct console *c, const struct config *cfg)
{
  struct console_user *u;
  size_t n;
  if(users_load(cfg, stderr, &u, &n)) {
    users_free(u, n);
    log_error("console: reload: the users cannot be read (see above); the old ones stay");
    return -1;
  }
  settings_apply(c, cfg, u, n);
  return 0;
}

void console_free(struct console *c)
{
  if(!c)
    return;
  users_free(c->users, c->nusers);
  view_free(&c->view);
  explicit_bzero(c->sessions, sizeof(c->sessions));
  pthread_mutex_destroy(&c->mu);
  free(c);
}
