/* The listeners: sockets bound before privileges are dropped, one acceptor thread polling
 * them all, and one thread per SMTP session up to max_clients (the rest get 421 at once). */
#include "daemon/daemon.h"
#include "smtp/smtp.h"
#include "inbound/inbound.h"
#include "lib/log.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/pool.h"
#include "global/metrics.h"
#include <arpa/inet.h>
#include <pthread.h>
#include <poll.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

struct bound {
  int fd;
  char *listener;          /* listener name: looked up in the current generation */
  int loopback;            /* bound to a loopback address (not a wildcard) */
};

struct session {
  struct daemon *d;
  struct generation *gen;
  const struct cfg_listener *listener;
  unsigned anvil_service;          /* 0: the client is exempt from the per-client limits */
  unsigned char anvil_key[ANVIL_KEY_LEN];
  int proxied;                     /* a PROXY protocol header comes first */
  struct tls_server_ctx *tls;
  int loopback;
  int fd;
  struct session *next, *prev;
};

struct daemon {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  struct generation *gen;          /* for new sessions */
  struct generation *relay_gen;    /* the one the relay runs with */
  struct bound *socks;
  size_t nsocks;
  struct store *st;
  struct relay *relay;
  int stop_pipe[2];
  pthread_t acceptor;
  int acceptor_started;
  volatile int stopping;
  int auth_ok;
  struct session *sessions;
  size_t nsessions;
  struct pool *pool;               /* session threads, kept between connections */
  int http_fd;                     /* [inbound] http_address, bound; -1 when none */
  long long busy_logged_ms;        /* a full listener is logged once a minute */
};

/* Threads beyond max_clients: a session that has just ended still holds its thread for a
 * moment while the acceptor already admits the next client. */
#define SESSION_THREAD_SLACK 16
#define SESSION_THREAD_STACK (512 * 1024)
#define SESSION_THREAD_IDLE_MS 60000

static struct generation *gen_new(struct config *cfg, struct tls_server_ctx **tls, int refs)
{
  struct generation *g = calloc(1, sizeof(*g));
  if(!g)
    log_fatal("out of memory");
  g->cfg = cfg;
  g->tls = tls;
  g->refs = refs;
  return g;
}

/* called with d->mu held */
static void gen_put(struct generation *g)
{
  if(g && --g->refs == 0) {
    daemon_tls_free(g->tls, g->cfg->nlisteners);
    config_free(g->cfg);
    free(g);
  }
}

void daemon_tls_free(struct tls_server_ctx **tls, size_t n)
{
  size_t i;
  if(!tls)
    return;
  for(i = 0; i < n; i++)
    tls_server_ctx_free(tls[i]);
  free(tls);
}

int daemon_tls_load(const struct config *cfg, struct tls_server_ctx ***out, FILE *errs)
{
  struct tls_server_ctx **tls = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*tls));
  size_t i;
  int problems = 0;
  *out = NULL;
  if(!tls)
    log_fatal("out of memory");
  for(i = 0; i < cfg->nlisteners; i++) {
    const struct cfg_listener *l = &cfg->listeners[i];
    struct stat st;
    char err[512];
    if(l->tls != CFG_TLS_STARTTLS && l->tls != CFG_TLS_IMPLICIT)
      continue;
    /* whoever may write the certificate may swap it; whoever may read the key may be us */
    if(l->tls_cert && !stat(l->tls_cert, &st) && (st.st_mode & S_IWOTH)) {
      fprintf(errs, "%s:%d: listener %s: tls_cert %s is writable by others (chmod o-w %s)\n",
              cfg->path, l->line, l->name, l->tls_cert, l->tls_cert);
      problems++;
      continue;
    }
    if(l->tls_key && !stat(l->tls_key, &st) && (st.st_mode & (S_IROTH | S_IWOTH))) {
      fprintf(errs, "%s:%d: listener %s: tls_key %s may be read or written by others "
              "(chmod o-rw %s)\n", cfg->path, l->line, l->name, l->tls_key, l->tls_key);
      problems++;
      continue;
    }
    if(tls_server_ctx_new(l->tls_cert, l->tls_key, NULL, &tls[i], err, sizeof(err))) {
      fprintf(errs, "%s:%d: listener %s: %s\n", cfg->path, l->line, l->name, err);
      problems++;
    }
  }
  if(problems) {
    daemon_tls_free(tls, cfg->nlisteners);
    return problems;
  }
  *out = tls;
  return 0;
}

int daemon_http_fd(struct daemon *d)
{
  int fd = d->http_fd;
  d->http_fd = -1;
  return fd;
}

struct config *daemon_config(struct daemon *d)
{
  return d->gen->cfg;
}

size_t daemon_sessions(struct daemon *d)
{
  size_t n;
  pthread_mutex_lock(&d->mu);
  n = d->nsessions;
  pthread_mutex_unlock(&d->mu);
  return n;
}

/* "127.0.0.1:587", "[::1]:587", "localhost:587" */
static int split_address(const char *a, char *host, size_t hostsz, char *port, size_t portsz)
{
  const char *colon;
  if(a[0] == '[') {
    const char *end = strchr(a, ']');
    if(!end || end[1] != ':' || (size_t)(end - a - 1) >= hostsz)
      return -1;
    memcpy(host, a + 1, (size_t)(end - a - 1));
    host[end - a - 1] = '\0';
    colon = end + 1;
  }
  else {
    colon = strrchr(a, ':');
    if(!colon || (size_t)(colon - a) >= hostsz)
      return -1;
    memcpy(host, a, (size_t)(colon - a));
    host[colon - a] = '\0';
  }
  if(!colon[1] || strlen(colon + 1) >= portsz)
    return -1;
  str_copy(port, portsz, colon + 1);
  return 0;
}

/* Is the socket bound to a loopback address? A wildcard address is not: anyone may connect. */
static int bound_to_loopback(int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if(getsockname(fd, (struct sockaddr *)&ss, &len))
    return 0;
  if(ss.ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
    return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
  }
  if(ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
    return IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
  }
  return 0;
}

static int bind_one(const char *addr, int *fdout, char *why, size_t whysz)
{
  char host[256], port[32];
  struct addrinfo hints, *res = NULL, *ai;
  int fd = -1, on = 1, rc;
  if(split_address(addr, host, sizeof(host), port, sizeof(port))) {
    snprintf(why, whysz, "address %s is not HOST:PORT or [IPV6]:PORT", addr);
    return -1;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  rc = getaddrinfo(host[0] && strcmp(host, "*") ? host : NULL, port, &hints, &res);
  if(rc) {
    snprintf(why, whysz, "address %s: %s", addr, gai_strerror(rc));
    return -1;
  }
  for(ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if(fd < 0) {
      /* the caller prints why: it must be written on every way out */
      snprintf(why, whysz, "cannot listen on %s: %s", addr, strerror(errno));
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if(ai->ai_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    if(!bind(fd, ai->ai_addr, ai->ai_addrlen) && !listen(fd, 256))
      break;
    snprintf(why, whysz, "cannot listen on %s: %s", addr, strerror(errno));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if(fd < 0)
    return -1;
  *fdout = fd;
  return 0;
}

int daemon_bind(struct daemon **out, struct config *cfg, struct tls_server_ctx **tls,
                FILE *errs)
{
  struct daemon *d = calloc(1, sizeof(*d));
  size_t i, j, total = 0;
  int problems = 0;
  if(!d)
    log_fatal("out of memory");
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cond, NULL);
  d->stop_pipe[0] = d->stop_pipe[1] = -1;
  d->http_fd = -1;
  d->gen = gen_new(cfg, tls, 2);
  d->relay_gen = d->gen;
  for(i = 0; i < cfg->nlisteners; i++)
    total += cfg->listeners[i].naddresses;
  d->socks = calloc(total ? total : 1, sizeof(*d->socks));
  if(!d->socks)
    log_fatal("out of memory");
  for(i = 0; i < cfg->nlisteners; i++) {
    const struct cfg_listener *l = &cfg->listeners[i];
    for(j = 0; j < l->naddresses; j++) {
      char why[512];
      int fd;
      if(bind_one(l->addresses[j], &fd, why, sizeof(why))) {
        fprintf(errs, "%s:%d: listener %s: %s\n", cfg->path, l->line, l->name, why);
        problems++;
        continue;
      }
      d->socks[d->nsocks].fd = fd;
      /* a copy: the configuration it comes from is freed by the second reload */
      d->socks[d->nsocks].listener = strdup(l->name);
      if(!d->socks[d->nsocks].listener)
        log_fatal("out of memory");
      d->socks[d->nsocks].loopback = bound_to_loopback(fd);
      d->nsocks++;
    }
  }
  if(cfg->inbound.http_address) {
    char why[512];
    if(bind_one(cfg->inbound.http_address, &d->http_fd, why, sizeof(why))) {
      fprintf(errs, "%s:%d: [inbound] http_address: %s\n", cfg->path, cfg->inbound.line, why);
      problems++;
    }
  }
  if(pipe2(d->stop_pipe, O_CLOEXEC))
    log_fatal("pipe: %s", strerror(errno));
  *out = d;
  return problems;
}

static const struct cfg_listener *find_listener(const struct config *cfg, const char *name)
{
  size_t i;
  for(i = 0; i < cfg->nlisteners; i++)
    if(!strcmp(cfg->listeners[i].name, name))
      return &cfg->listeners[i];
  return NULL;
}

/* The per-client limits of a listener, its role's defaults filled in. */
static void listener_limits(const struct cfg_listener *l, struct anvil_limits *a)
{
  a->max_conc = l->max_clients_per_ip ? l->max_clients_per_ip :
                l->role == CFG_ROLE_MX ? LIM_ANVIL_PER_IP_MX : LIM_ANVIL_PER_IP_SUBMISSION;
  a->conn_rate = l->connection_rate;
  a->msg_rate = l->message_rate;
  a->rcpt_rate = l->recipient_rate;
}

static long listener_max_clients(const struct config *cfg, const struct cfg_listener *l)
{
  return l->max_clients ? l->max_clients : cfg->max_clients;
}

/* Sessions of the pool: every listener's max_clients */
static size_t pool_size(const struct config *cfg)
{
  size_t i, n = 0;
  for(i = 0; i < cfg->nlisteners; i++)
    n += (size_t)listener_max_clients(cfg, &cfg->listeners[i]);
  return n ? n : (size_t)cfg->max_clients;
}

/* Does this client escape the per-client limits of l? limits_exempt = auto spares loopback
 * and trusted_networks on submission (the applications Postern exists for), nobody on mx. */
static int limits_exempt(const struct cfg_listener *l, const struct sockaddr_storage *ss)
{
  int family = ss->ss_family;
  const void *addr = NULL;
  int loopback = 0;
  enum cfg_exempt e = l->limits_exempt;
  if(e == CFG_EXEMPT_AUTO)
    e = l->role == CFG_ROLE_MX ? CFG_EXEMPT_NONE : CFG_EXEMPT_TRUSTED;
  if(e == CFG_EXEMPT_NONE)
    return 0;
  if(family == AF_INET) {
    addr = &((const struct sockaddr_in *)ss)->sin_addr;
    loopback = ((const unsigned char *)addr)[0] == 127;
  }
  else if(family == AF_INET6) {
    addr = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    loopback = IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)addr);
  }
  else
    return 1;                        /* a local socket */
  if(loopback)
    return 1;
  return e == CFG_EXEMPT_TRUSTED && cidr_match(l->trusted, l->ntrusted, family, addr);
}

/* The peer of an accepted socket, an IPv4-mapped IPv6 address made IPv4 */
static void peer_of(int fd, struct sockaddr_storage *ss, unsigned char addr[16])
{
  socklen_t len = sizeof(*ss);
  memset(ss, 0, sizeof(*ss));
  memset(addr, 0, 16);
  if(getpeername(fd, (struct sockaddr *)ss, &len))
    return;
  conn_sockaddr_unmap(ss, &len);
  if(ss->ss_family == AF_INET)
    memcpy(addr, &((struct sockaddr_in *)ss)->sin_addr, 4);
  else if(ss->ss_family == AF_INET6)
    memcpy(addr, &((struct sockaddr_in6 *)ss)->sin6_addr, 16);
}

static size_t listener_sessions(const struct daemon *d, const char *name)
{
  const struct session *s;
  size_t n = 0;
  for(s = d->sessions; s; s = s->next)
    if(!strcmp(s->listener->name, name))
      n++;
  return n;
}

static const char *const limit_words[] = {
  "", "max_clients_per_ip", "connection_rate", "message_rate", "recipient_rate",
  "the client table is full",
};

/* The per-client limits at connect: 0 admitted (*service set, 0 when exempt), else refused
 * (logged once a minute per client, counted). Called with d->mu held or from the session. */
static int client_admit(const struct cfg_listener *l, const struct sockaddr_storage *ss,
                        const unsigned char *addr, unsigned *service,
                        unsigned char key[ANVIL_KEY_LEN])
{
  struct anvil_limits lim;
  enum anvil_verdict v;
  int report = 0;
  *service = 0;
  memset(key, 0, ANVIL_KEY_LEN);
  if(limits_exempt(l, ss))
    return 0;
  listener_limits(l, &lim);
  anvil_key(ss->ss_family, addr, key);
  v = anvil_connect(anvil_service(l->name), key, &lim, time_mono_ms(), &report);
  if(v == ANVIL_OK) {
    *service = anvil_service(l->name);
    return 0;
  }
  metrics_limit_refused(l->name, v == ANVIL_CONCURRENCY ? METRICS_LIMIT_PER_IP :
                                 v == ANVIL_CONN_RATE ? METRICS_LIMIT_CONN_RATE :
                                 METRICS_LIMIT_TABLE);
  if(report) {
    char ip[64] = "unknown";
    inet_ntop(ss->ss_family, addr, ip, sizeof(ip));
    log_warn("client [%s] refused on listener %s: %s exceeded (%ld; logged once a minute per "
             "client)", ip, l->name, limit_words[v],
             v == ANVIL_CONCURRENCY ? lim.max_conc : lim.conn_rate);
  }
  return -1;
}

/* A connection from one of proxy_networks: the PROXY header names the client, which then
 * goes through the per-client limits. 0: the connection is to be closed. */
static int proxy_admit(struct session *s, struct conn *c, long long helo_ms, const char *host)
{
  char why[160];
  unsigned char addr[16];
  memset(addr, 0, sizeof(addr));
  if(smtp_proxy_read(c, time_mono_ms() + (helo_ms > 0 ? helo_ms : 30000), why, sizeof(why))) {
    log_info("PROXY protocol from [%s] on listener %s: %s; closing", c->peer_ip,
             s->listener->name, why);
    return 0;
  }
  if(c->peer.ss_family == AF_INET)
    memcpy(addr, &((struct sockaddr_in *)&c->peer)->sin_addr, 4);
  else if(c->peer.ss_family == AF_INET6)
    memcpy(addr, &((struct sockaddr_in6 *)&c->peer)->sin6_addr, 16);
  if(client_admit(s->listener, &c->peer, addr, &s->anvil_service, s->anvil_key)) {
    conn_printf(c, "421 4.7.0 %s Error: too many connections from your address, try again "
                "later\r\n", host);
    conn_flush(c);
    return 0;
  }
  return 1;
}

static void session_main(void *arg)
{
  struct session *s = arg;
  struct daemon *d = s->d;
  const struct config *cfg = s->gen->cfg;
  const struct cfg_listener *l = s->listener;
  struct smtp_server_cfg scfg;
  struct relay_policy_ctx pctx;
  struct inbound_policy_ctx ictx;
  struct conn c;

  memset(&scfg, 0, sizeof(scfg));
  scfg.hostname = cfg->hostname;
  scfg.listener = l->name;
  scfg.max_message_size = cfg->max_message_size;
  scfg.max_recipients = cfg->max_recipients;
  scfg.max_errors = (int)cfg->max_errors;
  scfg.idle_ms = (int)(cfg->idle_timeout * 1000);
  scfg.session_ms = cfg->session_timeout * 1000;
  scfg.add_missing_headers = l->role == CFG_ROLE_SUBMISSION;
  scfg.stopping = &d->stopping;
  scfg.wake_fd = d->stop_pipe[0];
  scfg.tls = s->tls;
  scfg.tls_mode = !s->tls ? SMTP_TLS_NONE :
                  l->tls == CFG_TLS_IMPLICIT ? SMTP_TLS_IMPLICIT : SMTP_TLS_STARTTLS;
  /* an MX takes mail from anyone for our domains: it never offers AUTH */
  scfg.auth_mechs = l->auth != CFG_AUTH_NONE && l->role != CFG_ROLE_MX ? l->auth_mechanisms : NULL;
  scfg.auth_plaintext_mechs = l->auth_plaintext_mechanisms;
  scfg.auth_available = d->auth_ok;
  scfg.loopback_listener = s->loopback;
  scfg.max_auth_failures = (int)cfg->max_auth_failures;
  scfg.auth_lockout_ms = cfg->auth_lockout * 1000;
  scfg.max_transactions = (unsigned)cfg->max_transactions;
  /* an MX hears from anyone: who has not said HELO within a short time is not a mail server */
  scfg.helo_ms = (l->helo_timeout ? l->helo_timeout :
                  l->role == CFG_ROLE_MX ? LIM_SMTP_HELO_TIMEOUT_MX : cfg->idle_timeout) * 1000;
  scfg.anvil_service = s->anvil_service;
  listener_limits(l, &scfg.anvil);
  pctx.cfg = cfg;
  pctx.listener = l;
  pctx.store = d->st;
  pctx.relay = d->relay;
  memset(&ictx, 0, sizeof(ictx));
  ictx.cfg = cfg;
  ictx.listener = l;
  ictx.store = d->st;

  conn_init(&c, s->fd, scfg.idle_ms);
  if(scfg.session_ms > 0)
    c.deadline_ms = time_mono_ms() + scfg.session_ms;
  if(s->proxied && !proxy_admit(s, &c, scfg.helo_ms, cfg->hostname))
    goto done;
  scfg.anvil_service = s->anvil_service;
  /* the daemon is the only code that knows both paths: the role picks the policy */
  if(l->role == CFG_ROLE_MX)
    smtp_server_run(&c, &scfg, &inbound_mx_policy, &ictx);
  else
    smtp_server_run(&c, &scfg, &relay_submission_policy, &pctx);
done:
  /* The slot and the client's count are given back before the socket closes: a client that
   * sees the connection end and connects again must find them free, not race this thread. */
  if(s->anvil_service)
    anvil_disconnect(s->anvil_service, s->anvil_key, time_mono_ms());
  pthread_mutex_lock(&d->mu);
  s->fd = -1;         /* daemon_stop must not shut down a descriptor number reused elsewhere */
  if(s->prev)
    s->prev->next = s->next;
  else
    d->sessions = s->next;
  if(s->next)
    s->next->prev = s->prev;
  pthread_mutex_unlock(&d->mu);
  conn_free(&c);      /* closes the socket */
  tls_thread_done();  /* the pool keeps this thread: free OpenSSL's state for it now */

  pthread_mutex_lock(&d->mu);
  d->nsessions--;
  gen_put(s->gen);
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->mu);
  free(s);
}

static void refuse_busy(int fd, const char *hostname, const char *enh, const char *why)
{
  char line[300];
  int n = snprintf(line, sizeof(line), "421 %s %s Error: %s, try again later\r\n", enh,
                   hostname, why);
  /* non-blocking: a peer that does not read must not stall the acceptor */
  if(n > 0 && send(fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    /* it goes away without the reason */
  }
  close(fd);
}

static void *acceptor_main(void *arg)
{
  struct daemon *d = arg;
  struct pollfd *pfd = calloc(d->nsocks + 1, sizeof(*pfd));
  size_t i;
  if(!pfd)
    log_fatal("out of memory");
  for(i = 0; i < d->nsocks; i++) {
    pfd[i].fd = d->socks[i].fd;
    pfd[i].events = POLLIN;
  }
  pfd[d->nsocks].fd = d->stop_pipe[0];
  pfd[d->nsocks].events = POLLIN;
  while(!d->stopping) {
    int n = poll(pfd, d->nsocks + 1, -1);
    if(n < 0) {
      if(errno == EINTR)
        continue;
      log_error("poll: %s; the listeners stop accepting: restart postern", strerror(errno));
      break;
    }
    if(pfd[d->nsocks].revents)
      break;
    for(i = 0; i < d->nsocks; i++) {
      struct session *s;
      const struct cfg_listener *l;
      char host[256];           /* copied under the lock: a reload may free the generation */
      char lname[128];
      long max_clients;
      int fd, on = 1, proxied = 0;
      struct sockaddr_storage ss;
      unsigned char addr[16], key[ANVIL_KEY_LEN];
      unsigned service = 0;
      if(!(pfd[i].revents & POLLIN))
        continue;
      fd = accept4(d->socks[i].fd, NULL, NULL, SOCK_CLOEXEC);
      if(fd < 0) {
        if(errno == EMFILE || errno == ENFILE) {
          log_warn("accept: %s; pausing (raise the open-file limit, LimitNOFILE= in the systemd "
                   "unit or ulimit -n, or lower max_clients in [postern])", strerror(errno));
          usleep(100000);
        }
        continue;
      }
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
      pthread_mutex_lock(&d->mu);
      l = find_listener(d->gen->cfg, d->socks[i].listener);
      str_copy(host, sizeof(host), d->gen->cfg->hostname);
      /* slots are per listener: a flood on the MX port never starves submission */
      max_clients = l ? listener_max_clients(d->gen->cfg, l) : 0;
      if(!l || listener_sessions(d, l->name) >= (size_t)max_clients) {
        long long now = time_mono_ms();
        int due = now - d->busy_logged_ms >= 60000 || !d->busy_logged_ms;
        str_copy(lname, sizeof(lname), l ? l->name : "?");
        if(due)
          d->busy_logged_ms = now;
        pthread_mutex_unlock(&d->mu);
        metrics_limit_refused(lname, METRICS_LIMIT_MAX_CLIENTS);
        if(due)
          log_warn("too many connections on listener %s (max_clients=%ld): refusing with 421 "
                   "(raise max_clients in [listener %s] or [postern] if this is normal load)",
                   lname, max_clients, lname);
        refuse_busy(fd, host, "4.3.2", "too many connections");
        continue;
      }
      /* per client: concurrency and connection rate (Postfix's anvil); behind a balancer
       * speaking the PROXY protocol the client is known only once its header is read */
      peer_of(fd, &ss, addr);
      proxied = l->proxy_protocol &&
                cidr_match(l->proxy_nets, l->nproxy_nets, ss.ss_family, addr);
      if(!proxied && client_admit(l, &ss, addr, &service, key)) {
        pthread_mutex_unlock(&d->mu);
        refuse_busy(fd, host, "4.7.0", "too many connections from your address");
        continue;
      }
      s = calloc(1, sizeof(*s));
      if(!s) {
        pthread_mutex_unlock(&d->mu);
        close(fd);
        continue;
      }
      s->d = d;
      s->fd = fd;
      s->gen = d->gen;
      s->gen->refs++;
      s->listener = l;
      s->anvil_service = service;
      memcpy(s->anvil_key, key, sizeof(key));
      s->proxied = proxied;
      s->tls = d->gen->tls ? d->gen->tls[l - d->gen->cfg->listeners] : NULL;
      s->loopback = d->socks[i].loopback;
      s->next = d->sessions;
      if(d->sessions)
        d->sessions->prev = s;
      d->sessions = s;
      d->nsessions++;
      if(pool_run(d->pool, session_main, s)) {
        d->sessions = s->next;
        if(s->next)
          s->next->prev = NULL;
        d->nsessions--;
        gen_put(s->gen);
        pthread_mutex_unlock(&d->mu);
        if(service)
          anvil_disconnect(service, key, time_mono_ms());
        log_warn("cannot start a session thread: %s; refused with 421 (check ulimit -u / "
                 "TasksMax= and free memory, or lower max_clients in [postern])", strerror(errno));
        refuse_busy(fd, host, "4.3.2", "too many connections");
        free(s);
      }
      else
        pthread_mutex_unlock(&d->mu);
    }
  }
  free(pfd);
  return NULL;
}

int daemon_serve(struct daemon *d, struct store *st, struct relay *r, int auth_ok)
{
  d->st = st;
  d->relay = r;
  d->auth_ok = auth_ok;
  d->pool = pool_new(pool_size(d->gen->cfg) + SESSION_THREAD_SLACK,
                     SESSION_THREAD_STACK, SESSION_THREAD_IDLE_MS);
  if(!d->pool)
    return -1;
  if(pthread_create(&d->acceptor, NULL, acceptor_main, d))
    return -1;
  d->acceptor_started = 1;
  return 0;
}

/* The relay lets go of a configuration once no delivery uses it any more. */
struct relay_letgo {
  struct daemon *d;
  struct generation *g;
};

static void relay_let_go(void *arg)
{
  struct relay_letgo *l = arg;
  pthread_mutex_lock(&l->d->mu);
  gen_put(l->g);
  pthread_mutex_unlock(&l->d->mu);
  free(l);
}

void daemon_reload(struct daemon *d, struct config *cfg, struct tls_server_ctx **tls)
{
  struct generation *g = gen_new(cfg, tls, 2);   /* current + the relay's */
  struct generation *oldrelay;
  size_t i;
  for(i = 0; i < d->nsocks; i++)
    if(!find_listener(cfg, d->socks[i].listener))
      log_warn("reload: listener %s is gone from the configuration; its sockets stay open until a "
               "restart (systemctl restart postern)", d->socks[i].listener);
  pthread_mutex_lock(&d->mu);
  gen_put(d->gen);
  d->gen = g;
  pthread_mutex_unlock(&d->mu);
  if(d->pool)
    pool_set_max(d->pool, pool_size(cfg) + SESSION_THREAD_SLACK);
  /* the relay swaps at once and lets go of the old configuration when its last delivery
   * ends: a reload never waits for deliveries */
  pthread_mutex_lock(&d->mu);
  oldrelay = d->relay_gen;
  d->relay_gen = g;
  pthread_mutex_unlock(&d->mu);
  if(d->relay) {
    struct relay_letgo *l = calloc(1, sizeof(*l));
    if(!l)
      log_fatal("out of memory");
    l->d = d;
    l->g = oldrelay;
    if(relay_reload(d->relay, cfg, relay_let_go, l))
      log_fatal("out of memory");
  }
  else {
    pthread_mutex_lock(&d->mu);
    gen_put(oldrelay);
    pthread_mutex_unlock(&d->mu);
  }
}

void daemon_stop(struct daemon *d, long long grace_ms)
{
  struct timespec ts;
  size_t i;
  d->stopping = 1;
  if(d->stop_pipe[1] >= 0 && write(d->stop_pipe[1], "x", 1) < 0)
    log_warn("stop pipe: %s; if postern does not exit, stop it with SIGKILL", strerror(errno));
  if(d->acceptor_started) {
    pthread_join(d->acceptor, NULL);
    d->acceptor_started = 0;
  }
  for(i = 0; i < d->nsocks; i++) {
    close(d->socks[i].fd);
    d->socks[i].fd = -1;
  }
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += grace_ms / 1000;
  ts.tv_nsec += (grace_ms % 1000) * 1000000L;
  if(ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&d->mu);
  while(d->nsessions && pthread_cond_timedwait(&d->cond, &d->mu, &ts) != ETIMEDOUT)
    ;
  if(d->nsessions) {
    struct session *s;
    log_warn("shutdown: %zu session(s) still open after the grace period; closing them (their "
             "clients retry: nothing acknowledged is lost)", d->nsessions);
    for(s = d->sessions; s; s = s->next)
      if(s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR);
    while(d->nsessions)
      pthread_cond_wait(&d->cond, &d->mu);
  }
  pthread_mutex_unlock(&d->mu);
}

void daemon_free(struct daemon *d)
{
  size_t i;
  if(!d)
    return;
  pool_free(d->pool);      /* sessions have ended (daemon_stop): this joins idle threads */
  for(i = 0; i < d->nsocks; i++) {
    if(d->socks[i].fd >= 0)
      close(d->socks[i].fd);
    free(d->socks[i].listener);
  }
  if(d->http_fd >= 0)
    close(d->http_fd);
  if(d->stop_pipe[0] >= 0)
    close(d->stop_pipe[0]);
  if(d->stop_pipe[1] >= 0)
    close(d->stop_pipe[1]);
  pthread_mutex_lock(&d->mu);
  if(d->relay_gen != d->gen)
    gen_put(d->relay_gen);
  else
    d->gen->refs--;
  gen_put(d->gen);
  pthread_mutex_unlock(&d->mu);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->cond);
  free(d->socks);
  free(d);
}
