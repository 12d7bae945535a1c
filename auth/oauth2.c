/* The OAuth2 token engine: per [oauth2 NAME], tokens cached in memory and in a 0600 file (atomic
 * rename), refreshed in the background before expiry with one request in flight, refusals sorted
 * into "retry later" and "re-authorise", and the status file `posternctl oauth2 status` reads. */
#include "auth/auth.h"
#include "lib/limits.h"
#include "global/http.h"
#include "lib/buf.h"
#include "global/config.h"
#include "lib/log.h"
#include "global/metrics.h"
#include "tls/tls.h"
#include <jansson.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#define OAUTH2_EARLY_MS (10LL * 60 * 1000)    /* Microsoft refuses tokens close to expiry */
#define OAUTH2_SKEW_MAX_MS 30000LL            /* a token this close to expiry is not handed out */
#define OAUTH2_BACKOFF_MIN_MS 1000LL
#define OAUTH2_BACKOFF_MAX_MS (5LL * 60 * 1000)
#define OAUTH2_DEFAULT_LIFETIME_S 3600L       /* when the endpoint gives no expires_in */
#define OAUTH2_HTTP_TIMEOUT_S 30L
#define OAUTH2_WAKE_MAX_MS (60LL * 1000)

enum id_state { ST_NONE = 0, ST_OK, ST_RETRYING, ST_REAUTH };
static const char *const state_words[] = { "no-token", "ok", "retrying", "reauthorize" };

/* What a refresh needs, copied from the configuration (the thread outlives reloads). */
struct settings {
  enum cfg_provider provider;
  enum cfg_flow flow;
  enum cfg_cloud cloud;
  char *tenant, *client_id, *client_secret_file, *token_url, *scope;
  char *certificate_file, *private_key_file;
  char *store_path, *status_path, *dir;
  int graph;                    /* a graph upstream uses it: Graph's scope, not Exchange's */
};

struct identity {
  struct identity *next;
  char *name;
  pthread_mutex_t mu;
  pthread_cond_t cv;            /* a refresh finished */
  struct settings s;
  int loaded, refreshing;
  char *access, *refresh;       /* secrets: wiped when replaced */
  long long expires_ms, obtained_ms;
  enum id_state state;
  char last_error[512];         /* plain words, never a secret */
  long long next_try_ms, backoff_ms, last_refresh_ms;
  struct stat store_st;         /* the file as we last read or wrote it */
  int force_refresh;            /* the upstream refused the access token: a new one, not the
                                 * file's (which may be that very token) */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv = PTHREAD_COND_INITIALIZER;
static struct identity *registry;
static pthread_t refresher;
static int refresher_started, stopping, kicked;
static int read_only;           /* posternctl: tokens are read, never refreshed */
static long long now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *dup_or_null(const char *s)
{
  return s ? str_dup_n(s, strlen(s)) : NULL;
}

static void secret_drop(char **p)
{
  if(*p)
    auth_secret_free(*p, strlen(*p));
  *p = NULL;
}

static void settings_free(struct settings *s)
{
  free(s->tenant); free(s->client_id);
  free(s->client_secret_file); free(s->token_url); free(s->scope);
  free(s->certificate_file); free(s->private_key_file);
  free(s->store_path); free(s->status_path); free(s->dir);
  memset(s, 0, sizeof(*s));
}

static int settings_copy(struct settings *dst, const struct settings *src)
{
  memset(dst, 0, sizeof(*dst));
  dst->provider = src->provider;
  dst->flow = src->flow;
  dst->tenant = dup_or_null(src->tenant);
  dst->client_id = dup_or_null(src->client_id);
  dst->client_secret_file = dup_or_null(src->client_secret_file);
  dst->token_url = dup_or_null(src->token_url);
  dst->scope = dup_or_null(src->scope);
  dst->certificate_file = dup_or_null(src->certificate_file);
  dst->private_key_file = dup_or_null(src->private_key_file);
  dst->store_path = dup_or_null(src->store_path);
  dst->status_path = dup_or_null(src->status_path);
  dst->dir = dup_or_null(src->dir);
  dst->cloud = src->cloud;
  dst->graph = src->graph;
  if(!dst->store_path || !dst->status_path || dst->flow == CFG_FLOW_NONE) {
    settings_free(dst);
    return -1;
  }
  return 0;
}

static const struct cfg_oauth2 *section(const struct config *cfg, const char *name)
{
  size_t i;
  for(i = 0; i < cfg->noauth2s; i++)
    if(!strcmp(cfg->oauth2s[i].name, name))
      return &cfg->oauth2s[i];
  return NULL;
}

int oauth2_paths(const struct config *cfg, const char *name, char *store, size_t storesz,
                 char *status, size_t statussz)
{
  const struct cfg_oauth2 *oa = section(cfg, name);
  int n;
  if(!oa)
    return -1;
  if(oa->token_file)
    n = snprintf(store, storesz, "%s", oa->token_file);
  else
    n = snprintf(store, storesz, "%s/oauth2/%s.json", cfg->data_dir, name);
  if(n < 0 || (size_t)n >= storesz)
    return -1;
  n = snprintf(status, statussz, "%s.status", store);
  return n < 0 || (size_t)n >= statussz ? -1 : 0;
}

static int used_by_graph(const struct config *cfg, const char *name)
{
  size_t i;
  for(i = 0; i < cfg->nupstreams; i++)
    if(cfg->upstreams[i].type == CFG_UP_GRAPH &&
       cfg->upstreams[i].oauth2 && !strcmp(cfg->upstreams[i].oauth2, name))
      return 1;
  return 0;
}

static int settings_from(const struct config *cfg, const struct cfg_oauth2 *oa, struct settings *s)
{
  char store[4096], status[4200];
  struct settings tmp;
  char *slash;
  if(oauth2_paths(cfg, oa->name, store, sizeof(store), status, sizeof(status)))
    return -1;
  tmp.provider = oa->provider;
  tmp.flow = oa->flow;
  tmp.tenant = oa->tenant;
  tmp.client_id = oa->client_id;
  tmp.client_secret_file = oa->client_secret_file;
  tmp.token_url = oa->token_url;
  tmp.scope = oa->scope;
  tmp.certificate_file = oa->certificate_file;
  tmp.private_key_file = oa->private_key_file;
  tmp.store_path = store;
  tmp.status_path = status;
  tmp.dir = NULL;
  tmp.cloud = oa->cloud;
  tmp.graph = used_by_graph(cfg, oa->name);
  if(settings_copy(s, &tmp))
    return -1;
  slash = strrchr(s->store_path, '/');
  s->dir = slash ? str_dup_n(s->store_path, (size_t)(slash - s->store_path)) : str_dup_n(".", 1);
  return s->dir ? 0 : -1;
}

static int str_eq(const char *a, const char *b)
{
  return (!a && !b) || (a && b && !strcmp(a, b));
}

static int settings_same(const struct settings *a, const struct settings *b)
{
  return a->provider == b->provider && a->flow == b->flow &&
         str_eq(a->tenant, b->tenant) && str_eq(a->client_id, b->client_id) &&
         str_eq(a->client_secret_file, b->client_secret_file) &&
         str_eq(a->token_url, b->token_url) && str_eq(a->scope, b->scope) &&
         str_eq(a->certificate_file, b->certificate_file) &&
         str_eq(a->private_key_file, b->private_key_file) &&
         a->cloud == b->cloud && a->graph == b->graph &&
         str_eq(a->store_path, b->store_path);
}

/* ---- classification -------------------------------------------------------------------- */

/* Errors an operator has to act on: a new login, a new secret, consent in the tenant. */
static const char *const reauth_errors[] = {
  "invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "expired_token",
  "invalid_scope", "unsupported_grant_type", "consent_required", "interaction_required", NULL };
/* Microsoft's AADSTS codes that mean the same whatever `error` says. */
static const char *const reauth_aadsts[] = {
  "AADSTS70043", "AADSTS700082", "AADSTS54005", "AADSTS50173", "AADSTS700016", "AADSTS7000215",
  "AADSTS7000222", "AADSTS65001", "AADSTS50076", "AADSTS50079", "AADSTS53003", "AADSTS90002",
  NULL };

int oauth2_classify(long status, const char *error, const char *description)
{
  size_t i;
  if(status == 0 || status == 429 || status >= 500)
    return OAUTH2_TRANSIENT;
  if(error && (!strcmp(error, "temporarily_unavailable") || !strcmp(error, "server_error") ||
               !strcmp(error, "slow_down")))
    return OAUTH2_TRANSIENT;
  for(i = 0; description && reauth_aadsts[i]; i++) {
    const char *p = strstr(description, reauth_aadsts[i]);
    size_t l = strlen(reauth_aadsts[i]);
    if(p && !(p[l] >= '0' && p[l] <= '9'))
      return OAUTH2_REAUTH;
  }
  for(i = 0; error && reauth_errors[i]; i++)
    if(!strcmp(error, reauth_errors[i]))
      return OAUTH2_REAUTH;
  /* any other refusal is not going to change by itself either */
  return status >= 400 ? OAUTH2_REAUTH : OAUTH2_TRANSIENT;
}

/* ---- files -------------------------------------------------------------------------------- */

int oauth2_file_write(const char *path, const char *data, size_t len, int mode)
{
  return oauth2_file_write_owned(path, data, len, mode, NULL);
}

int oauth2_file_write_owned(const char *path, const char *data, size_t len, int mode,
                            const struct passwd *owner)
{
  char tmp[4200], dir[4096];
  const char *slash = strrchr(path, '/');
  int fd = -1, result = -1, n;
  size_t off = 0;

  n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if(n < 0 || (size_t)n >= sizeof(tmp))
    return -1;
  unlink(tmp);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if(fd < 0)
    return -1;
  /* the umask must not widen nor narrow what we asked for; the owner is set on the file
   * written, before it has the name (a chown by name after the rename could follow whatever
   * was put at that name meanwhile) */
  if(fchmod(fd, (mode_t)mode) || (owner && fchown(fd, owner->pw_uid, owner->pw_gid)))
    goto out;
  while(off < len) {
    ssize_t w = write(fd, data + off, len - off);
    if(w < 0 && errno == EINTR)
      continue;
    if(w <= 0)
      goto out;
    off += (size_t)w;
  }
  /* the data is on disk before the name points at it: a crash leaves the old file or the new
   * one, never half of one */
  if(fsync(fd))
    goto out;
  if(close(fd)) {
    fd = -1;
    goto out;
  }
  fd = -1;
  if(rename(tmp, path))
    goto out;
  str_copy(dir, sizeof(dir), ".");
  if(slash)
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
  fd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if(fd >= 0)
    fsync(fd);
  result = 0;
out:
  if(fd >= 0)
    close(fd);
  if(result)
    unlink(tmp);
  return result;
}

static void ensure_dir(const char *dir)
{
  if(mkdir(dir, 0700) && errno != EEXIST)
    log_warn("oauth2: cannot create %s: %s; tokens are not kept across restarts: make data_dir "
             "writable by Postern's user (user = in [postern])", dir, strerror(errno));
}

static long long refresh_due(const struct identity *id);

/* Writes what posternctl shows. Called with id->mu held. */
static void status_write(struct identity *id)
{
  json_t *o = json_object();
  char *text = NULL;
  if(!o)
    return;
  json_object_set_new(o, "name", json_string(id->name));
  json_object_set_new(o, "state", json_string(state_words[id->state]));
  json_object_set_new(o, "flow", json_string(cfg_flow_words[id->s.flow]));
  json_object_set_new(o, "expires_at", json_integer(id->access ? id->expires_ms / 1000 : 0));
  json_object_set_new(o, "last_refresh", json_integer(id->last_refresh_ms / 1000));
  json_object_set_new(o, "next_try", json_integer(id->next_try_ms / 1000));
  json_object_set_new(o, "refresh_due", json_integer(refresh_due(id) / 1000));
  json_object_set_new(o, "has_refresh_token", json_boolean(id->refresh != NULL));
  json_object_set_new(o, "last_error", json_string(id->last_error));
  json_object_set_new(o, "updated", json_integer(now_ms() / 1000));
  text = json_dumps(o, JSON_INDENT(2));
  json_decref(o);
  ensure_dir(id->s.dir);
  if(text && oauth2_file_write(id->s.status_path, text, strlen(text), 0644))
    log_warn("oauth2 %s: cannot write %s: %s; `posternctl oauth2 status %s` shows stale data "
             "until data_dir is writable by Postern's user", id->name, id->s.status_path,
             strerror(errno), id->name);
  free(text);
}

/* Writes the tokens. Called with id->mu held. */
static int store_write(struct identity *id)
{
  json_t *o = json_object();
  char *text = NULL;
  int result = -1;
  if(!o)
    return -1;
  if(id->access)
    json_object_set_new(o, "access_token", json_string(id->access));
  json_object_set_new(o, "expires_at_ms", json_integer(id->expires_ms));
  json_object_set_new(o, "obtained_at_ms", json_integer(id->obtained_ms));
  if(id->refresh)
    json_object_set_new(o, "refresh_token", json_string(id->refresh));
  text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  ensure_dir(id->s.dir);
  if(text) {
    result = oauth2_file_write(id->s.store_path, text, strlen(text), 0600);
    if(!result)
      stat(id->s.store_path, &id->store_st);
    auth_secret_free(text, strlen(text));
  }
  return result;
}

/* Reads the tokens file if it changed since we last saw it (`posternctl oauth2 login` writes it
 * while the daemon runs). A file that is not JSON holds a refresh token put there by hand.
 * Called with id->mu held. */
static void store_load(struct identity *id)
{
  struct stat st;
  char *text = NULL, err[256];
  size_t len = 0;
  json_t *o = NULL, *v;

  if(stat(id->s.store_path, &st))
    return;
  if(id->loaded && st.st_ino == id->store_st.st_ino && st.st_size == id->store_st.st_size &&
     st.st_mtim.tv_sec == id->store_st.st_mtim.tv_sec &&
     st.st_mtim.tv_nsec == id->store_st.st_mtim.tv_nsec)
    return;
  id->store_st = st;
  if(auth_secret_read(id->s.store_path, &text, &len, err, sizeof(err))) {
    log_warn("oauth2 %s: cannot use the token file: %s; fix its owner and mode (0600, Postern's "
             "user) or run `posternctl oauth2 login %s` again", id->name, err, id->name);
    return;
  }
  if(text[0] != '{') {
    if(id->s.flow != CFG_FLOW_CLIENT_CREDENTIALS) {
      secret_drop(&id->refresh);
      id->refresh = text;
      text = NULL;
      secret_drop(&id->access);
      id->expires_ms = 0;
    }
    goto out;
  }
  o = json_loadb(text, len, 0, NULL);
  if(!json_is_object(o)) {
    log_warn("oauth2 %s: %s is not a token file Postern wrote; ignoring it (remove it and run "
             "`posternctl oauth2 login %s`)", id->name, id->s.store_path, id->name);
    goto out;
  }
  secret_drop(&id->access);
  id->expires_ms = 0;
  v = json_object_get(o, "access_token");
  if(json_is_string(v)) {
    id->access = str_dup_n(json_string_value(v), strlen(json_string_value(v)));
    id->expires_ms = json_integer_value(json_object_get(o, "expires_at_ms"));
    id->obtained_ms = json_integer_value(json_object_get(o, "obtained_at_ms"));
  }
  v = json_object_get(o, "refresh_token");
  if(json_is_string(v)) {
    secret_drop(&id->refresh);
    id->refresh = str_dup_n(json_string_value(v), strlen(json_string_value(v)));
  }
  /* new tokens from a login: whatever failed before may work now */
  if(id->loaded && (id->state == ST_REAUTH || id->state == ST_RETRYING)) {
    id->next_try_ms = 0;
    id->backoff_ms = 0;
    if(id->access) {
      id->state = ST_OK;
      id->last_error[0] = '\0';
      log_info("oauth2 %s: new tokens in %s (a new login); using them", id->name,
               id->s.store_path);
      status_write(id);
    }
  }
out:
  json_decref(o);
  if(text)
    auth_secret_free(text, len);
}

/* ---- the token endpoint --------------------------------------------------------------------- */

/* POSTs form to url; fills *status (0: no answer, err says why) and *json (NULL when the answer
 * is not a JSON object). */
static void endpoint_post(const char *url, const char *form, size_t formlen, long *status,
                          json_t **json, char *err, size_t errsz)
{
  static const char *const headers[] = { "Accept: application/json", NULL };
  struct http_client *c = NULL;
  struct http_response resp;
  struct http_opts o;

  *status = 0;
  *json = NULL;
  memset(&resp, 0, sizeof(resp));
  memset(&o, 0, sizeof(o));
  o.timeout_s = OAUTH2_HTTP_TIMEOUT_S;
  o.max_body = LIM_OAUTH2_BODY;
  o.wipe = 1;                  /* tokens */
  if(http_client_new(&o, &c)) {
    snprintf(err, errsz, "out of memory");
    return;
  }
  if(http_client_request(c, "POST", url, headers, form, formlen, &resp)) {
    snprintf(err, errsz, "no answer from %s: %s", url, resp.error);
    goto out;
  }
  *status = resp.status;
  *json = json_loadb(resp.body, resp.len, 0, NULL);
  if(*json && !json_is_object(*json)) {
    json_decref(*json);
    *json = NULL;
  }
  if(!*json)
    snprintf(err, errsz, "%s answered HTTP %ld without a JSON object", url, *status);
out:
  http_response_free(&resp);
  http_client_free(c);
}

static const char *jstr(json_t *o, const char *key)
{
  json_t *v = o ? json_object_get(o, key) : NULL;
  return json_is_string(v) ? json_string_value(v) : NULL;
}

static long long jnum(json_t *o, const char *key, long long dflt)
{
  json_t *v = o ? json_object_get(o, key) : NULL;
  long l;
  if(json_is_integer(v))
    return json_integer_value(v);
  /* some endpoints send "3599" */
  if(json_is_string(v) && !str_to_long(json_string_value(v), strlen(json_string_value(v)), 0,
                                       100000000L, &l))
    return l;
  return dflt;
}

/* The endpoint's refusal in plain words (error, AADSTS code, a capped description: these never
 * carry a token), and what the operator should do. */
static void refusal_words(const char *name, const struct settings *s, long status, json_t *j,
                          int cls, char *out, size_t outsz)
{
  const char *error = jstr(j, "error"), *desc = jstr(j, "error_description");
  char esc[256] = "", action[256];
  if(desc) {
    const char *nl = strpbrk(desc, "\r\n");
    log_repr(esc, sizeof(esc), desc, nl ? (size_t)(nl - desc) : strlen(desc));
  }
  if(cls != OAUTH2_REAUTH)
    str_copy(action, sizeof(action), "will retry");
  else if(s->flow == CFG_FLOW_CLIENT_CREDENTIALS)
    str_copy(action, sizeof(action), "check client_id, the client secret or certificate, and "
             "the application's consent in the tenant");
  else
    snprintf(action, sizeof(action), "run `posternctl oauth2 login %s` to authorise again", name);
  snprintf(out, outsz, "token endpoint refused (HTTP %ld, %s%s%s); %s", status,
           error ? error : "no error code", esc[0] ? ": " : "", esc, action);
}

/* Microsoft's national clouds: where to log in, the Exchange Online resource SMTP tokens are
 * for (app-only and delegated), and the Graph host. */
struct ms_cloud {
  const char *name, *login, *exchange_app, *exchange_user, *graph;
};
static const struct ms_cloud ms_clouds[] = {
  { "global", "https://login.microsoftonline.com", "https://outlook.office365.com",
    "https://outlook.office.com", "https://graph.microsoft.com" },
  { "usgov", "https://login.microsoftonline.us", "https://outlook.office365.us",
    "https://outlook.office365.us", "https://graph.microsoft.us" },
  { "usgov-dod", "https://login.microsoftonline.us", "https://outlook-dod.office365.us",
    "https://outlook-dod.office365.us", "https://dod-graph.microsoft.us" },
  { "china", "https://login.chinacloudapi.cn", "https://partner.outlook.cn",
    "https://partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn" },
};

_Static_assert(CFG_CLOUD_CHINA == 3, "ms_clouds follows enum cfg_cloud");

static const struct ms_cloud *cloud_of(enum cfg_cloud c)
{
  return (size_t)c < sizeof(ms_clouds) / sizeof(ms_clouds[0]) ? &ms_clouds[c] : &ms_clouds[0];
}

static int is_provider(const struct settings *s, enum cfg_provider p)
{
  return s->provider == p;
}

/* The scope asked for: scope =, else the provider's for SMTP (or for Graph when a graph
 * upstream uses the identity), in the identity's cloud. NULL: none (generic provider). */
static const char *default_scope(const struct settings *s, char *buf, size_t bufsz)
{
  int app = s->flow == CFG_FLOW_CLIENT_CREDENTIALS;
  const struct ms_cloud *c = cloud_of(s->cloud);
  if(s->scope)
    return s->scope;
  if(is_provider(s, CFG_PROVIDER_GOOGLE))
    return "https://mail.google.com/";
  if(!is_provider(s, CFG_PROVIDER_MICROSOFT))
    return NULL;
  if(s->graph)
    snprintf(buf, bufsz, app ? "%s/.default" : "%s/Mail.Send offline_access", c->graph);
  else
    snprintf(buf, bufsz, app ? "%s/.default" : "%s/SMTP.Send offline_access",
             app ? c->exchange_app : c->exchange_user);
  return buf;
}

/* kind: "token" or "devicecode". Microsoft's endpoints are per tenant ("organizations", any
 * work account, when none is set) in the identity's cloud. */
static int endpoint_url(const struct settings *s, const char *kind, char *out, size_t outsz)
{
  int dev = !strcmp(kind, "devicecode");
  const char *tenant = s->tenant ? s->tenant : "organizations";
  if(s->token_url) {
    size_t l = strlen(s->token_url);
    if(!dev)
      return snprintf(out, outsz, "%s", s->token_url) >= (int)outsz ? -1 : 0;
    /* .../token -> .../devicecode, the shape of Microsoft's and our tests' endpoints */
    if(l >= 6 && !strcmp(s->token_url + l - 6, "/token"))
      return snprintf(out, outsz, "%.*s/devicecode", (int)(l - 6), s->token_url) >= (int)outsz
             ? -1 : 0;
    return -1;
  }
  if(is_provider(s, CFG_PROVIDER_GOOGLE))
    return snprintf(out, outsz, "%s", dev ? "https://oauth2.googleapis.com/device/code"
                                          : "https://oauth2.googleapis.com/token") >= (int)outsz
           ? -1 : 0;
  if(is_provider(s, CFG_PROVIDER_MICROSOFT))
    return snprintf(out, outsz, "%s/%s/oauth2/v2.0/%s", cloud_of(s->cloud)->login, tenant,
                    kind) >= (int)outsz ? -1 : 0;
  return -1;
}

const char *oauth2_graph_url(const struct config *cfg, const char *name)
{
  const struct cfg_oauth2 *oa = name ? section(cfg, name) : NULL;
  return cloud_of(oa ? oa->cloud : CFG_CLOUD_GLOBAL)->graph;
}

/* Reads a public file (a certificate) of at most LIM_OAUTH2_BODY bytes; *out NUL-terminated. */
static int public_read(const char *path, char **out, size_t *len, char *err, size_t errsz)
{
  struct buf b;
  char chunk[4096];
  size_t n;
  FILE *f = fopen(path, "rb");
  *out = NULL;
  *len = 0;
  if(!f) {
    snprintf(err, errsz, "%s: %s", path, strerror(errno));
    return -1;
  }
  buf_init(&b, LIM_OAUTH2_BODY);
  while((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    if(buf_add(&b, chunk, n)) {
      snprintf(err, errsz, "%s: larger than %u bytes", path, LIM_OAUTH2_BODY);
      fclose(f);
      buf_free(&b);
      return -1;
    }
  fclose(f);
  if(!b.len) {
    snprintf(err, errsz, "%s is empty", path);
    buf_free(&b);
    return -1;
  }
  *out = buf_steal(&b, len);
  return 0;
}

/* The claims of a client assertion for url (RFC 7523 section 3): short-lived and unique, so a
 * captured one is of little use. */
static char *assertion_claims(const struct settings *s, const char *url)
{
  unsigned char rnd[16];
  char jti[33];
  json_t *o;
  char *text;
  long long now = now_ms() / 1000;
  size_t i;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if(fd < 0 || read(fd, rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd)) {
    if(fd >= 0)
      close(fd);
    return NULL;
  }
  close(fd);
  for(i = 0; i < sizeof(rnd); i++)
    snprintf(jti + 2 * i, 3, "%02x", rnd[i]);
  o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", url, "iss", s->client_id,
                "sub", s->client_id, "jti", jti, "iat", (json_int_t)now,
                "nbf", (json_int_t)now, "exp", (json_int_t)(now + 600));
  text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return text;
}

/* A certificate's signed assertion instead of a secret (client_assertion). */
static int form_assertion(struct buf *form, const struct settings *s,
                          const char *url, char *err, size_t errsz)
{
  char *key = NULL, *cert = NULL, *claims = NULL, *jwt = NULL, why[256];
  size_t keylen = 0, certlen = 0;
  int result = -1;
  if(auth_secret_read(s->private_key_file, &key, &keylen, why, sizeof(why))) {
    snprintf(err, errsz, "cannot use private_key_file: %s", why);
    goto out;
  }
  /* the certificate is public: only its size is bounded */
  if(public_read(s->certificate_file, &cert, &certlen, why, sizeof(why))) {
    snprintf(err, errsz, "cannot read certificate_file: %s", why);
    goto out;
  }
  claims = assertion_claims(s, url);
  if(!claims) {
    snprintf(err, errsz, "cannot make the client assertion");
    goto out;
  }
  if(tls_jwt_sign_rs256(key, keylen, cert, certlen, claims, strlen(claims), &jwt, err, errsz))
    goto out;
  if(http_form_add(form, "client_assertion_type",
              "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") ||
     http_form_add(form, "client_assertion", jwt)) {
    snprintf(err, errsz, "out of memory");
    goto out;
  }
  result = 0;
out:
  auth_secret_free(key, keylen);
  free(cert);
  free(claims);
  auth_secret_free(jwt, jwt ? strlen(jwt) : 0);
  return result;
}

/* The client's credentials (when configured) added to form: a certificate's assertion, else
 * the client secret. Public clients (device code without a secret) send neither. */
static int form_secret(struct buf *form, const struct settings *s,
                       const char *url, char *err, size_t errsz)
{
  char *secret = NULL, why[256];
  size_t len = 0;
  int result;
  if(s->certificate_file && s->private_key_file)
    return form_assertion(form, s, url, err, errsz);
  if(!s->client_secret_file)
    return 0;
  if(auth_secret_read(s->client_secret_file, &secret, &len, why, sizeof(why))) {
    snprintf(err, errsz, "cannot use client_secret_file: %s", why);
    return -1;
  }
  result = http_form_add(form, "client_secret", secret);
  auth_secret_free(secret, len);
  if(result)
    snprintf(err, errsz, "out of memory");
  return result;
}

static long long clamp(long long v, long long lo, long long hi)
{
  return v < lo ? lo : v > hi ? hi : v;
}

/* A token goes into an Authorization header as is: visible ASCII only (RFC 6750's b64token
 * is narrower still), so that an endpoint's answer can never add a header line. */
static int token_ok(const char *t)
{
  for(; *t; t++)
    if(*t < 0x21 || *t > 0x7e)
      return 0;
  return 1;
}

/* One request to the token endpoint with the grant the flow calls for. On OAUTH2_OK the new
 * tokens are in *access, *refresh (NULL: keep the old one), *expires_ms. */
static int grant_request(const char *name, const struct settings *s, const char *refresh_in,
                         const char *device_code, char **access, char **refresh,
                         long long *expires_ms, char *err, size_t errsz)
{
  struct buf form;
  char url[2048], scope[512];
  long status = 0;
  json_t *j = NULL;
  const char *at, *rt;
  int result = OAUTH2_REAUTH;

  *access = *refresh = NULL;
  buf_init(&form, 64 * 1024);
  if(endpoint_url(s, "token", url, sizeof(url))) {
    snprintf(err, errsz, "no token endpoint: set token_url (or provider = microsoft | google)");
    goto out;
  }
  if(!s->client_id) {
    snprintf(err, errsz, "client_id is not set");
    goto out;
  }
  if(device_code) {
    if(http_form_add(&form, "grant_type", "urn:ietf:params:oauth:grant-type:device_code") ||
       http_form_add(&form, "device_code", device_code))
      goto nomem;
  }
  else if(s->flow == CFG_FLOW_CLIENT_CREDENTIALS) {
    if(http_form_add(&form, "grant_type", "client_credentials") ||
       http_form_add(&form, "scope", default_scope(s, scope, sizeof(scope))))
      goto nomem;
  }
  else {
    if(!refresh_in) {
      snprintf(err, errsz, "no refresh token stored; run `posternctl oauth2 login %s`", name);
      goto out;
    }
    if(http_form_add(&form, "grant_type", "refresh_token") ||
       http_form_add(&form, "refresh_token", refresh_in) ||
       http_form_add(&form, "scope", default_scope(s, scope, sizeof(scope))))
      goto nomem;
  }
  if(http_form_add(&form, "client_id", s->client_id))
    goto nomem;
  if(form_secret(&form, s, url, err, errsz))
    goto out;
  endpoint_post(url, form.ptr, form.len, &status, &j, err, errsz);
  at = jstr(j, "access_token");
  if(status == 200 && at && !token_ok(at)) {
    snprintf(err, errsz, "the token endpoint's access_token holds characters an Authorization "
             "header cannot carry (a space, CR, LF or another control); not used");
    result = OAUTH2_TRANSIENT;
    goto out;
  }
  if(status == 200 && at) {
    long long life = clamp(jnum(j, "expires_in", OAUTH2_DEFAULT_LIFETIME_S), 1,
                           LIM_OAUTH2_LIFETIME_SECONDS);
    rt = jstr(j, "refresh_token");
    *access = str_dup_n(at, strlen(at));
    *refresh = rt ? str_dup_n(rt, strlen(rt)) : NULL;
    if(!*access || (rt && !*refresh)) {
      secret_drop(access);
      secret_drop(refresh);
      snprintf(err, errsz, "out of memory");
      result = OAUTH2_TRANSIENT;
      goto out;
    }
    *expires_ms = now_ms() + life * 1000;
    result = OAUTH2_OK;
    goto out;
  }
  if(!status || !j) {
    result = status && status < 500 && status != 429 ? OAUTH2_REAUTH : OAUTH2_TRANSIENT;
    goto out;                  /* err is set */
  }
  if(device_code && jstr(j, "error") && (!strcmp(jstr(j, "error"), "authorization_pending") ||
                                         !strcmp(jstr(j, "error"), "slow_down"))) {
    result = !strcmp(jstr(j, "error"), "slow_down") ? OAUTH2_SLOW_DOWN : OAUTH2_PENDING;
    goto out;
  }
  result = oauth2_classify(status, jstr(j, "error"), jstr(j, "error_description"));
  refusal_words(name, s, status, j, result, err, errsz);
  goto out;
nomem:
  snprintf(err, errsz, "out of memory");
  result = OAUTH2_TRANSIENT;
out:
  json_decref(j);
  if(form.ptr)
    memset(form.ptr, 0, form.alloc);
  buf_free(&form);
  return result;
}

/* ---- identities ---------------------------------------------------------------------------- */

static long long lifetime_ms(const struct identity *id)
{
  long long l = id->expires_ms - id->obtained_ms;
  return l > 0 ? l : 0;
}

/* When the next refresh is due: 10 minutes before expiry, or at half-life for tokens that
 * live less than 20 minutes. */
static long long refresh_at(const struct identity *id)
{
  long long l = lifetime_ms(id), at = id->expires_ms - (l >= 2 * OAUTH2_EARLY_MS ?
                                                         OAUTH2_EARLY_MS : l / 2);
  /* an endpoint that gives tokens of a second must not get a request every half second */
  return at > id->obtained_ms + LIM_OAUTH2_REFRESH_MIN_MS ? at
                                                          : id->obtained_ms + LIM_OAUTH2_REFRESH_MIN_MS;
}

/* A token is handed out only while it has some life left: it will be used a moment later,
 * and the endpoint's clock and ours differ. */
static long long use_until(const struct identity *id)
{
  long long skew = lifetime_ms(id) / 6;
  if(skew > OAUTH2_SKEW_MAX_MS)
    skew = OAUTH2_SKEW_MAX_MS;
  return id->expires_ms - skew;
}

/* When the background refresh of id is due (wall-clock ms; -1: not in the background). An
 * identity with no access token but a refresh token (put there by hand, or the access token
 * was refused) or an app's credentials gets one at once: a refresh token nobody uses must still
 * be exercised, or inactivity kills it (AADSTS70043). One that needs a login first waits until
 * someone asks (the token file is read again then). */
static long long refresh_due(const struct identity *id)
{
  long long due;
  if(id->access)
    due = refresh_at(id);
  else if(id->loaded && (id->refresh || id->s.flow == CFG_FLOW_CLIENT_CREDENTIALS))
    due = 0;
  else
    return -1;
  return id->next_try_ms > due ? id->next_try_ms : due;
}

static int usable(const struct identity *id, long long now)
{
  return id->access && now < use_until(id);
}

/* An exclusive lock on STORE.lock beside the token file, held from reading the tokens to writing
 * the new ones; -1 when it cannot be had (then unlocked: as before, not worse). */
static int token_file_lock(const struct settings *s)
{
  char path[4200];
  int fd, n = snprintf(path, sizeof(path), "%s.lock", s->store_path);
  if(n < 0 || (size_t)n >= sizeof(path))
    return -1;
  ensure_dir(s->dir);
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if(fd < 0)
    return -1;
  while(flock(fd, LOCK_EX)) {
    if(errno != EINTR) {
      close(fd);
      return -1;
    }
  }
  return fd;
}

static void token_file_unlock(int fd)
{
  if(fd >= 0)
    close(fd);                  /* closing the descriptor releases the lock */
}

/* One refresh; called with id->mu held and refreshing clear, returns with it held. Others
 * wanting a token meanwhile use the current one or wait on cv. */
static int refresh_locked(struct identity *id)
{
  struct settings s;
  char *refresh_in = NULL, *access = NULL, *refresh = NULL, err[512] = "";
  long long expires = 0, now;
  int result, lockfd;
  enum id_state before = id->state;

  if(settings_copy(&s, &id->s))
    return OAUTH2_TRANSIENT;
  id->refreshing = 1;
  /* Another process may use the same token file (a second daemon, a login): with providers
   * that rotate refresh tokens and revoke the family on reuse, two refreshes at once lose
   * both. So the file is locked from read to write, and read again once locked: if someone
   * refreshed meanwhile, their tokens are used instead of a request of ours. */
  pthread_mutex_unlock(&id->mu);
  lockfd = token_file_lock(&s);
  pthread_mutex_lock(&id->mu);
  store_load(id);
  now = now_ms();
  if(id->access && refresh_at(id) > now && !id->force_refresh) {
    id->refreshing = 0;
    id->state = ST_OK;
    id->backoff_ms = 0;
    id->next_try_ms = 0;
    id->last_error[0] = '\0';
    status_write(id);
    token_file_unlock(lockfd);
    settings_free(&s);
    pthread_cond_broadcast(&id->cv);
    return OAUTH2_OK;
  }
  refresh_in = dup_or_null(id->refresh);
  pthread_mutex_unlock(&id->mu);
  result = grant_request(id->name, &s, refresh_in, NULL, &access, &refresh, &expires, err,
                         sizeof(err));
  secret_drop(&refresh_in);
  pthread_mutex_lock(&id->mu);
  id->refreshing = 0;
  id->force_refresh = 0;
  now = now_ms();
  id->last_refresh_ms = now;
  if(result == OAUTH2_OK) {
    secret_drop(&id->access);
    id->access = access;
    id->obtained_ms = now;
    id->expires_ms = expires;
    metrics_oauth2_expiry(id->name, expires);   /* the background refresh too */
    if(refresh) {               /* rotation: the old refresh token may be dead already */
      secret_drop(&id->refresh);
      id->refresh = refresh;
    }
    id->state = ST_OK;
    id->backoff_ms = 0;
    id->next_try_ms = 0;
    id->last_error[0] = '\0';
    if(store_write(id))
      log_error("oauth2 %s: cannot write the token file %s (%s); the new tokens are kept in "
                "memory only: make data_dir writable by Postern's user", id->name, s.store_path,
                strerror(errno));
    if(before == ST_REAUTH || before == ST_RETRYING)
      log_info("oauth2 %s: the token endpoint works again; new access token valid for %lld s",
               id->name, (expires - now) / 1000);
    else
      log_debug("oauth2 %s: new access token valid for %lld s%s", id->name,
                (expires - now) / 1000, refresh ? " (refresh token rotated)" : "");
  }
  else {
    /* a failed refresh keeps every stored token: the refresh token may work again later */
    id->backoff_ms = id->backoff_ms ? id->backoff_ms * 2 : OAUTH2_BACKOFF_MIN_MS;
    if(id->backoff_ms > OAUTH2_BACKOFF_MAX_MS)
      id->backoff_ms = OAUTH2_BACKOFF_MAX_MS;
    id->next_try_ms = now + id->backoff_ms;
    id->state = result == OAUTH2_REAUTH ? ST_REAUTH : ST_RETRYING;
    str_copy(id->last_error, sizeof(id->last_error), err);
    if(id->state == ST_REAUTH && before != ST_REAUTH)
      /* err already says what to do (refusal_words) */
      log_error("oauth2 %s: %s; mail for upstreams using it is held (not bounced) and goes out "
                "by itself once a token is obtained", id->name, err);
    else if(id->state == ST_RETRYING && before != ST_RETRYING)
      log_warn("oauth2 %s: cannot refresh the access token now (%s); retrying with backoff "
               "(if it lasts, check the token endpoint of [oauth2 %s] and `posternctl oauth2 "
               "status %s`)", id->name, err, id->name, id->name);
  }
  status_write(id);
  token_file_unlock(lockfd);
  settings_free(&s);
  pthread_cond_broadcast(&id->cv);
  return result;
}

/* A caller obtained or loaded tokens: the refresher plans its next wake-up again. Called
 * without any identity's mutex (the refresher takes reg_mu before those). */
static void refresher_kick(void)
{
  pthread_mutex_lock(&reg_mu);
  kicked = 1;
  pthread_cond_signal(&reg_cv);
  pthread_mutex_unlock(&reg_mu);
}

static void identity_load(struct identity *id);

static void *refresher_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&reg_mu);
  while(!stopping) {
    struct identity *id;
    long long now = now_ms(), wake = now + OAUTH2_WAKE_MAX_MS;
    struct timespec ts;
    kicked = 0;
    for(id = registry; id; id = id->next) {
      long long due;
      pthread_mutex_lock(&id->mu);
      /* a login may have written new tokens: refreshing the old ones would undo it */
      if(!id->refreshing)
        identity_load(id);
      due = refresh_due(id);
      if(due >= 0 && due <= now && !id->refreshing) {
        pthread_mutex_unlock(&reg_mu);
        log_debug("oauth2 %s: refreshing the access token in the background", id->name);
        refresh_locked(id);
        pthread_mutex_unlock(&id->mu);
        pthread_mutex_lock(&reg_mu);
        kicked = 1;            /* plan again from the new expiry, without waiting */
        now = now_ms();
        continue;              /* the list only grows at its head: id is still in it */
      }
      if(due >= 0 && due < wake)
        wake = due > now ? due : now + 100;
      pthread_mutex_unlock(&id->mu);
    }
    if(stopping)
      break;
    ts.tv_sec = wake / 1000;
    ts.tv_nsec = (wake % 1000) * 1000000L;
    if(!kicked)
      pthread_cond_timedwait(&reg_cv, &reg_mu, &ts);
  }
  pthread_mutex_unlock(&reg_mu);
  return NULL;
}

/* The identity for name, made (or its settings updated after a reload) from cfg. Called with
 * reg_mu held. */
static struct identity *identity_get(const struct config *cfg, const char *name, char *err,
                                     size_t errsz)
{
  struct identity *id;
  const struct cfg_oauth2 *oa = cfg ? section(cfg, name) : NULL;
  struct settings s;

  for(id = registry; id; id = id->next)
    if(!strcmp(id->name, name))
      break;
  if(cfg && !oa) {
    snprintf(err, errsz, "no [oauth2 %s] section", name);
    return NULL;
  }
  if(!oa)
    return id;
  if(!oa->flow) {
    snprintf(err, errsz, "[oauth2 %s] has no flow", name);
    return NULL;
  }
  if(settings_from(cfg, oa, &s)) {
    snprintf(err, errsz, "out of memory");
    return NULL;
  }
  if(id) {
    pthread_mutex_lock(&id->mu);
    if(!settings_same(&id->s, &s) && !id->refreshing) {
      settings_free(&id->s);
      id->s = s;
      memset(&s, 0, sizeof(s));
      id->loaded = 0;          /* perhaps another file now */
      id->next_try_ms = 0;
      id->backoff_ms = 0;
    }
    pthread_mutex_unlock(&id->mu);
    settings_free(&s);
    return id;
  }
  id = calloc(1, sizeof(*id));
  if(!id || !(id->name = str_dup_n(name, strlen(name)))) {
    free(id);
    settings_free(&s);
    snprintf(err, errsz, "out of memory");
    return NULL;
  }
  id->s = s;
  pthread_mutex_init(&id->mu, NULL);
  pthread_cond_init(&id->cv, NULL);
  id->next = registry;
  registry = id;
  if(!refresher_started && !stopping && !read_only) {
    if(pthread_create(&refresher, NULL, refresher_main, NULL))
      log_warn("oauth2: cannot start the refresh thread; tokens are refreshed when needed "
               "(the system is short of threads or memory: check ulimit -u and free memory)");
    else
      refresher_started = 1;
  }
  pthread_cond_signal(&reg_cv);
  return id;
}

/* The stored tokens, at first use and whenever the file changed. Called with id->mu held. */
static void identity_load(struct identity *id)
{
  store_load(id);
  if(!id->loaded) {
    id->loaded = 1;
    if(id->access && !id->state)
      id->state = ST_OK;
  }
}

int oauth2_token_get(const struct config *cfg, const char *name, const char *rejected,
                     char **token, long long *expires_ms, char *err, size_t errsz)
{
  struct identity *id;
  int result = OAUTH2_TRANSIENT, tried = 0, changed;
  long long expires_before;

  *token = NULL;
  if(expires_ms)
    *expires_ms = 0;
  err[0] = '\0';
  pthread_mutex_lock(&reg_mu);
  id = identity_get(cfg, name, err, errsz);
  pthread_mutex_unlock(&reg_mu);
  if(!id) {
    if(!err[0])
      snprintf(err, errsz, "oauth2 %s is not configured", name);
    return OAUTH2_REAUTH;
  }
  pthread_mutex_lock(&id->mu);
  expires_before = id->expires_ms;
  identity_load(id);
  /* the upstream refused this very token: it is no good whatever its expiry says (a revoked
   * grant, a changed password); others may have replaced it already */
  if(rejected && id->access && !strcmp(id->access, rejected)) {
    secret_drop(&id->access);
    id->expires_ms = 0;
    id->next_try_ms = 0;
    id->force_refresh = 1;
  }
  /* a refresh token is the daemon's to use: a second refresher beside it, with a provider that
   * rotates refresh tokens and revokes the family on reuse, would lose both */
  if(read_only && id->s.flow != CFG_FLOW_CLIENT_CREDENTIALS) {
    if(usable(id, now_ms()))
      result = OAUTH2_OK;
    else
      snprintf(err, errsz, "oauth2 %s: no access token with life left in %s; the daemon keeps "
               "it fresh (is postern running? `posternctl oauth2 status %s`); posternctl reads "
               "tokens, it does not refresh them", name, id->s.store_path, name);
    goto done;
  }
  for(;;) {
    long long now = now_ms();
    int ok = usable(id, now);
    if(ok && (now < refresh_at(id) || id->refreshing || tried || now < id->next_try_ms)) {
      result = OAUTH2_OK;
      break;
    }
    if(id->refreshing) {
      pthread_cond_wait(&id->cv, &id->mu);
      continue;
    }
    if(tried || now < id->next_try_ms) {
      if(ok) {
        result = OAUTH2_OK;
        break;
      }
      result = id->state == ST_REAUTH ? OAUTH2_REAUTH : OAUTH2_TRANSIENT;
      snprintf(err, errsz, "oauth2 %s: %s", name,
               id->last_error[0] ? id->last_error : "no access token yet");
      break;
    }
    refresh_locked(id);
    tried = 1;
  }
done:
  if(result == OAUTH2_OK) {
    *token = str_dup_n(id->access, strlen(id->access));
    if(!*token) {
      snprintf(err, errsz, "out of memory");
      result = OAUTH2_TRANSIENT;
    }
    else if(expires_ms)
      *expires_ms = use_until(id);
  }
  changed = expires_before != id->expires_ms;
  metrics_oauth2_expiry(id->name, id->access ? id->expires_ms : 0);
  pthread_mutex_unlock(&id->mu);
  /* new tokens from this call: the background refresh is planned from them */
  if(changed)
    refresher_kick();
  return result;
}

void oauth2_read_only(void)
{
  read_only = 1;
}

void oauth2_start(const struct config *cfg)
{
  size_t i;
  char err[256];
  for(i = 0; i < cfg->noauth2s; i++) {
    struct identity *id;
    if(!cfg->oauth2s[i].flow)
      continue;
    pthread_mutex_lock(&reg_mu);
    id = identity_get(cfg, cfg->oauth2s[i].name, err, sizeof(err));
    pthread_mutex_unlock(&reg_mu);
    if(!id)
      continue;
    pthread_mutex_lock(&id->mu);
    identity_load(id);
    pthread_mutex_unlock(&id->mu);
  }
  refresher_kick();
}

int oauth2_managed(const struct config *cfg, const char *name)
{
  const struct cfg_oauth2 *oa = name ? section(cfg, name) : NULL;
  return oa && oa->flow;
}

void oauth2_done(void)
{
  struct identity *id, *next;
  pthread_mutex_lock(&reg_mu);
  stopping = 1;
  pthread_cond_broadcast(&reg_cv);
  pthread_mutex_unlock(&reg_mu);
  if(refresher_started)
    pthread_join(refresher, NULL);
  refresher_started = 0;
  for(id = registry; id; id = next) {
    next = id->next;
    secret_drop(&id->access);
    secret_drop(&id->refresh);
    settings_free(&id->s);
    pthread_mutex_destroy(&id->mu);
    pthread_cond_destroy(&id->cv);
    free(id->name);
    free(id);
  }
  registry = NULL;
}

/* ---- posternctl: the device code flow and the status, for tools/ctl_oauth2.c --------------- */

/* The settings of [oauth2 name] for a login: err set and -1 when it has none or needs none. */
static int login_settings(const struct config *cfg, const char *name, struct settings *s,
                          char *err, size_t errsz)
{
  const struct cfg_oauth2 *oa = section(cfg, name);
  if(!oa) {
    snprintf(err, errsz, "no [oauth2 %s] section in the configuration", name);
    return -1;
  }
  if(!oa->flow || oa->flow == CFG_FLOW_CLIENT_CREDENTIALS) {
    snprintf(err, errsz, "[oauth2 %s] uses flow = %s: no login is needed (or possible); the "
             "daemon gets its tokens itself", name,
             oa->flow ? cfg_flow_words[oa->flow] : "(none)");
    return -1;
  }
  if(settings_from(cfg, oa, s)) {
    snprintf(err, errsz, "out of memory");
    return -1;
  }
  return 0;
}

int oauth2_device_start(const struct config *cfg, const char *name, struct oauth2_device *dev,
                        char *err, size_t errsz)
{
  const struct cfg_oauth2 *oa = section(cfg, name);
  struct settings s;
  struct buf form;
  char url[2048], scope[512];
  long status = 0;
  json_t *j = NULL;
  const char *dc, *uc, *vu;
  int result = OAUTH2_REAUTH;

  memset(dev, 0, sizeof(*dev));
  memset(&s, 0, sizeof(s));
  buf_init(&form, 64 * 1024);
  err[0] = '\0';
  if(login_settings(cfg, name, &s, err, errsz))
    goto out;
  if(endpoint_url(&s, "devicecode", url, sizeof(url))) {
    snprintf(err, errsz, "no device authorisation endpoint: token_url must end in /token, or "
             "set provider = microsoft | google");
    goto out;
  }
  if(!oa->client_id || http_form_add(&form, "client_id", oa->client_id) ||
     http_form_add(&form, "scope", default_scope(&s, scope, sizeof(scope)))) {
    snprintf(err, errsz, oa->client_id ? "out of memory" : "client_id is not set");
    goto out;
  }
  endpoint_post(url, form.ptr, form.len, &status, &j, err, errsz);
  dc = jstr(j, "device_code");
  uc = jstr(j, "user_code");
  vu = jstr(j, "verification_uri");
  if(!vu)
    vu = jstr(j, "verification_url");          /* Google's spelling */
  if(status != 200 || !dc || !uc || !vu) {
    if(j)
      refusal_words(name, &s, status, j, OAUTH2_REAUTH, err, errsz);
    result = status && status < 500 ? OAUTH2_REAUTH : OAUTH2_TRANSIENT;
    goto out;
  }
  dev->device_code = str_dup_n(dc, strlen(dc));
  dev->user_code = str_dup_n(uc, strlen(uc));
  dev->verification_uri = str_dup_n(vu, strlen(vu));
  if(!dev->device_code || !dev->user_code || !dev->verification_uri) {
    oauth2_device_free(dev);
    snprintf(err, errsz, "out of memory");
    result = OAUTH2_TRANSIENT;
    goto out;
  }
  /* the endpoint's numbers bound a loop: a polling storm or a wait of years is not obeyed */
  dev->interval_s = clamp(jnum(j, "interval", 5), 1, LIM_OAUTH2_DEVICE_INTERVAL_SECONDS);
  dev->expires_at_ms = now_ms() + clamp(jnum(j, "expires_in", 900), 1,
                                        LIM_OAUTH2_DEVICE_CODE_SECONDS) * 1000;
  result = OAUTH2_OK;
out:
  json_decref(j);
  settings_free(&s);
  if(form.ptr)
    memset(form.ptr, 0, form.alloc);
  buf_free(&form);
  return result;
}

int oauth2_device_poll(const struct config *cfg, const char *name,
                       const struct oauth2_device *dev, char *stored, size_t storedsz,
                       int *got_refresh, char *err, size_t errsz)
{
  struct identity id;
  char *access = NULL, *refresh = NULL;
  long long expires = 0;
  int result;

  memset(&id, 0, sizeof(id));
  err[0] = '\0';
  *got_refresh = 0;
  if(login_settings(cfg, name, &id.s, err, errsz))
    return OAUTH2_REAUTH;
  result = grant_request(name, &id.s, NULL, dev->device_code, &access, &refresh, &expires, err,
                         errsz);
  if(result)
    goto out;
  id.name = (char *)name;
  id.access = access;
  id.refresh = refresh;
  id.obtained_ms = now_ms();
  id.expires_ms = expires;
  if(store_write(&id)) {
    snprintf(err, errsz, "cannot write %s: %s", id.s.store_path, strerror(errno));
    result = OAUTH2_TRANSIENT;
    goto out;
  }
  id.state = ST_OK;
  id.last_refresh_ms = id.obtained_ms;
  status_write(&id);
  str_copy(stored, storedsz, id.s.store_path);
  *got_refresh = refresh != NULL;
out:
  secret_drop(&id.access);
  secret_drop(&id.refresh);
  settings_free(&id.s);
  return result;
}

void oauth2_device_free(struct oauth2_device *dev)
{
  secret_drop(&dev->device_code);
  free(dev->user_code);
  free(dev->verification_uri);
  dev->user_code = dev->verification_uri = NULL;
}

int oauth2_status_get(const struct config *cfg, const char *name, struct oauth2_status *st,
                      char *err, size_t errsz)
{
  const struct cfg_oauth2 *oa = section(cfg, name);
  struct settings s;
  json_t *j = NULL;
  const char *sc;

  memset(st, 0, sizeof(*st));
  memset(&s, 0, sizeof(s));
  if(!oa || oauth2_paths(cfg, name, st->token_file, sizeof(st->token_file), st->status_file,
                         sizeof(st->status_file))) {
    snprintf(err, errsz, "no [oauth2 %s] section in the configuration", name);
    return -1;
  }
  st->flow = oa->flow ? cfg_flow_words[oa->flow] : NULL;
  st->provider = oa->provider ? cfg_provider_words[oa->provider] : NULL;
  st->cloud = cloud_of(oa->cloud)->name;
  if(oa->flow && !settings_from(cfg, oa, &s)) {
    if(endpoint_url(&s, "token", st->token_endpoint, sizeof(st->token_endpoint)))
      st->token_endpoint[0] = '\0';
    sc = default_scope(&s, st->scope, sizeof(st->scope));
    if(sc && sc != st->scope)
      str_copy(st->scope, sizeof(st->scope), sc);
    st->has_scope = sc != NULL;
  }
  j = json_load_file(st->status_file, 0, NULL);
  st->have = json_is_object(j);
  if(st->have) {
    const char *state = jstr(j, "state"), *last = jstr(j, "last_error");
    if(state)
      str_copy(st->state, sizeof(st->state), state);
    if(last)
      str_copy(st->last_error, sizeof(st->last_error), last);
    st->expires_at = jnum(j, "expires_at", 0);
    st->last_refresh = jnum(j, "last_refresh", 0);
    st->refresh_due = jnum(j, "refresh_due", 0);
    st->has_refresh_token = json_is_true(json_object_get(j, "has_refresh_token"));
  }
  json_decref(j);
  settings_free(&s);
  return 0;
}
