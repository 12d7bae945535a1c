/* postern: the daemon. Reads the configuration, binds the listeners, drops root, opens the
 * store, starts the relay and the sessions, and turns signals into reload and orderly stop. */
#include "build-config.h"
#include "daemon/daemon.h"
#include "auth/auth.h"
#include "console/console.h"
#include "inbound/inbound.h"
#include "lib/log.h"
#include "lib/proc.h"
#include "global/metrics.h"
#include "lib/buf.h"
#include <errno.h>
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* Tells systemd (Type=notify) where the daemon is: READY=1 only once the listeners are bound
 * and the store is open, so that units ordered after postern find it accepting mail. Without
 * libsystemd, or when not started by systemd, nothing happens. */
static void notify(const char *state)
{
#ifdef HAVE_SYSTEMD
  sd_notify(0, state);
#else
  (void)state;
#endif
}

static void usage(FILE *f)
{
  fprintf(f, "usage: postern [-c FILE] [-f] [-n] [-V]\n"
             "  -c FILE  configuration file (default: $POSTERN_CONFIG, else %s,\n"
             "           else the embedded default: 127.0.0.1, capture route)\n"
             "  -f       stay in the foreground and log to stderr\n"
             "  -n       check the configuration and exit (0 good, 1 with FILE:LINE: lines)\n"
             "  -V       print the version and exit\n", CONFIG_DEFAULT_PATH);
}

/* Checks that need the file system: certificate files (loaded into *tls, or only tried when
 * tls is NULL), and what the inbound path reads (secrets, the event public key). */
static int check_environment(const struct config *cfg, FILE *errs,
                             struct tls_server_ctx ***tls)
{
  struct tls_server_ctx **loaded = NULL;
  int problems = inbound_check_config(cfg, errs) + console_check_config(cfg, errs);
  problems += daemon_tls_load(cfg, &loaded, errs);
  if(tls && !problems)
    *tls = loaded;
  else
    daemon_tls_free(loaded, cfg->nlisteners);
  return problems;
}

static int auth_wanted(const struct config *cfg)
{
  size_t i;
  for(i = 0; i < cfg->nlisteners; i++)
    if(cfg->listeners[i].auth != CFG_AUTH_NONE)
      return 1;
  return 0;
}

/* The users of AUTH live in data_dir/sasldb2 (posternctl user add). Set up once, after
 * privileges are dropped, so that a file created from here on belongs to the daemon's user. */
static int auth_setup(const char *data_dir, int *auth_ok)
{
  char path[4096], err[512];
  int n = snprintf(path, sizeof(path), "%s/sasldb2", data_dir);
  *auth_ok = 0;
  if(n < 0 || (size_t)n >= sizeof(path)) {
    log_error("data_dir %s: path too long; choose a shorter data_dir in [postern]", data_dir);
    return -1;
  }
  if(auth_server_init(path, err, sizeof(err))) {
    log_error("cannot set up AUTH: %s (is libsasl2-modules installed, and data_dir writable by "
              "Postern's user?)", err);
    return -1;
  }
  if(access(path, F_OK))
    log_info("no users for AUTH yet (%s does not exist): add them with posternctl user add",
             path);
  *auth_ok = 1;
  return 0;
}

/* Gives what dirfd holds to pw, without following links, down to a few levels. Done when a
 * data_dir made by a run as root (before the user existed) first meets its user: the store and
 * the AUTH database there are root's 0600 files, which the user could not open. */
static int chown_below(int dirfd, const char *dir, const struct passwd *pw, int depth)
{
  DIR *d;
  struct dirent *e;
  int result = 0;
  d = fdopendir(dirfd);
  if(!d) {
    close(dirfd);
    return -1;
  }
  while((e = readdir(d))) {
    int sub;
    if(!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    if(fchownat(dirfd, e->d_name, pw->pw_uid, pw->pw_gid, AT_SYMLINK_NOFOLLOW)) {
      log_error("cannot give %s/%s to user %s: %s; chown it by hand", dir, e->d_name,
                pw->pw_name, strerror(errno));
      result = -1;
      continue;
    }
    if(depth > 0 &&
       (sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) >= 0 &&
       chown_below(sub, dir, pw, depth - 1))
      result = -1;
  }
  closedir(d);
  return result;
}

/* A secret file only another user may read (root's 0600, written by posternctl as root before
 * the postern user existed) fails each delivery that reads it, long after the start: say so
 * at the start, with the fix. */
static void secret_readable(const char *path, const struct passwd *pw)
{
  struct stat st;
  if(!path || stat(path, &st) || st.st_uid == pw->pw_uid ||
     (st.st_mode & (S_IRGRP | S_IROTH)))
    return;
  log_warn("%s is readable by its owner only and user %s does not own it: what reads it will "
           "fail (chown %s %s)", path, pw->pw_name, pw->pw_name, path);
}

static void secrets_readable(const struct config *cfg, const struct passwd *pw)
{
  size_t i;
  for(i = 0; i < cfg->nupstreams; i++) {
    secret_readable(cfg->upstreams[i].password_file, pw);
    secret_readable(cfg->upstreams[i].api_key_file, pw);
    secret_readable(cfg->upstreams[i].access_key_id_file, pw);
    secret_readable(cfg->upstreams[i].secret_access_key_file, pw);
  }
  for(i = 0; i < cfg->noauth2s; i++) {
    secret_readable(cfg->oauth2s[i].client_secret_file, pw);
    secret_readable(cfg->oauth2s[i].private_key_file, pw);
    secret_readable(cfg->oauth2s[i].token_file, pw);
  }
  for(i = 0; i < cfg->ndkims; i++)
    secret_readable(cfg->dkims[i].key_file, pw);
  secret_readable(cfg->inbound.http_password_file, pw);
  secret_readable(cfg->inbound.event_public_key_file, pw);
  secret_readable(cfg->inbound.twilio_auth_token_file, pw);
  secret_readable(cfg->inbound.forward_secret_file, pw);
  secret_readable(cfg->console.users_file, pw);
}

static int make_data_dir(const char *dir, const struct passwd *pw)
{
  struct stat st;
  if(mkdir(dir, 0700) && errno != EEXIST) {
    log_error("cannot create data_dir %s: %s; create it (owned by Postern's user, mode 0700) or "
              "set data_dir in [postern]", dir, strerror(errno));
    return -1;
  }
  if(stat(dir, &st)) {
    log_error("data_dir %s: %s; check data_dir in [postern] and its permissions", dir,
              strerror(errno));
    return -1;
  }
  if(!S_ISDIR(st.st_mode)) {
    log_error("data_dir %s is not a directory; set data_dir in [postern] to a directory", dir);
    return -1;
  }
  if(st.st_mode & S_IWOTH) {
    log_error("data_dir %s is writable by others; refusing to use it (chmod o-w)", dir);
    return -1;
  }
  if(pw && st.st_uid != pw->pw_uid) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if(fd < 0 || fchown(fd, pw->pw_uid, pw->pw_gid)) {
      log_error("cannot give data_dir %s to user %s: %s; chown -R it to that user by hand", dir,
                pw->pw_name, strerror(errno));
      if(fd >= 0)
        close(fd);
      return -1;
    }
    if(chown_below(fd, dir, pw, 4))       /* closes fd; says which file and why */
      return -1;
    log_info("data_dir %s given to user %s", dir, pw->pw_name);
  }
  return 0;
}

/* One daemon per store: a second one on the same data_dir would take the first one's
 * deliveries in flight for leftovers of a crash and send them again. The lock is on the
 * directory itself, held (by the descriptor, never closed) until the process ends. */
static int data_dir_lock(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if(fd < 0) {
    log_error("data_dir %s: %s; check data_dir in [postern] and its permissions", dir,
              strerror(errno));
    return -1;
  }
  if(flock(fd, LOCK_EX | LOCK_NB)) {
    if(errno == EWOULDBLOCK)
      log_error("data_dir %s is in use by another postern (give each daemon its own data_dir "
                "in [postern], or stop the other one)", dir);
    else
      log_error("data_dir %s: cannot lock it: %s", dir, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

static int drop_privileges(const struct passwd *pw)
{
  if(setgroups(0, NULL) || setgid(pw->pw_gid) || setuid(pw->pw_uid)) {
    log_error("cannot drop privileges to user %s: %s; check the user (user = in [postern]) "
              "and that postern starts as root", pw->pw_name, strerror(errno));
    return -1;
  }
  if(setuid(0) == 0) {
    log_error("privileges could be regained after dropping them; refusing to run (start postern "
              "as root with user = in [postern], or as that user directly)");
    return -1;
  }
  return 0;
}

static void detach(void)
{
  pid_t pid = fork();
  int fd;
  if(pid < 0)
    log_fatal("fork: %s", strerror(errno));
  if(pid > 0)
    _exit(0);
  if(setsid() < 0)
    log_fatal("setsid: %s", strerror(errno));
  fd = open("/dev/null", O_RDWR);
  if(fd >= 0) {
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if(fd > 2)
      close(fd);
  }
}

/* What a reload touches; SIGHUP (main thread) and the control socket's reload (its thread)
 * both come through reload_run, one at a time. */
struct reloader {
  pthread_mutex_t mu;
  const char *path;
  struct daemon *d;
  struct inbound_http *http;
  struct console *console;
  struct inbound_records *records;
  struct store_pruner *pruner;
  int auth_ok;
  struct config *cfg;           /* the one in use; the daemon owns it */
};

static void warn_to_file(void *arg, const char *line)
{
  fprintf((FILE *)arg, "warning: %s\n", line);
}

static void warn_to_log(void *arg, const char *line)
{
  (void)arg;
  log_warn("%s", line);
}

/* Where mail goes, said once at start and at each reload: a configuration that keeps mail
 * in the store, or an upstream nothing routes to, shows in the first lines of the log. */
static void log_routes(const struct config *cfg)
{
  char where[1024];
  relay_route_warnings(cfg, warn_to_log, NULL);
  relay_describe_routes(cfg, where, sizeof(where));
  log_info("%s", where);
}

static void retention_of(const struct config *cfg, struct store_retention *ret)
{
  ret->retention_ms = cfg->retention * 1000LL;
  ret->capture_ms = cfg->capture_retention * 1000LL;
  ret->records_ms = cfg->records_retention * 1000LL;
}

static int reload_run(void *arg, char *err, size_t errsz)
{
  struct reloader *rl = arg;
  struct store_retention ret;
  struct config *ncfg = NULL;
  struct tls_server_ctx **ntls = NULL;
  int n, result = -1;
  pthread_mutex_lock(&rl->mu);
  notify("RELOADING=1\nSTATUS=reloading the configuration");
  n = config_load(rl->path, stderr, &ncfg);
  if(!n && ncfg)
    n = relay_check_config(ncfg, stderr) + check_environment(ncfg, stderr, &ntls);
  if(n) {
    log_error("reload: %d configuration problem(s); keeping the running configuration (`postern "
              "-n -c %s` lists them)", n, rl->path);
    if(err)
      snprintf(err, errsz, "%d configuration problem(s) (see the log: postern -n shows them); "
               "the running configuration stays", n);
    /* the certificates load even when the relay's checks failed: they go with ncfg */
    if(ncfg)
      daemon_tls_free(ntls, ncfg->nlisteners);
    config_free(ncfg);
    notify("READY=1\nSTATUS=accepting mail; the last reload was refused (see the log)");
    goto out;
  }
  if(!rl->auth_ok && auth_wanted(ncfg))
    log_warn("reload: AUTH was not set up at start (all listeners had auth = none); "
             "restart to offer it");
  if(rl->records && inbound_records_reload(rl->records, ncfg))
    log_error("reload: correspondence records keep the previous forward_url settings (see above: "
              "fix forward_url / forward_secret_file in [inbound] and send SIGHUP again)");
  if(rl->console && console_reload(rl->console, ncfg))
    log_error("reload: the console keeps its users (see above: fix [console] users or "
              "users_file and send SIGHUP again)");
  if(!rl->console && ncfg->console.enabled)
    log_warn("reload: [console] was not enabled at start; restart to serve it");
  if(rl->http && inbound_http_reload(rl->http, ncfg))
    log_error("reload: the HTTP listener keeps its credentials and keys (see above: fix the "
              "files named in [inbound] and send SIGHUP again)");
  if(!rl->http && ncfg->inbound.http_address)
    log_warn("reload: [inbound] http_address was not set at start; restart to listen on %s",
             ncfg->inbound.http_address);
  metrics_configure(ncfg);
  retention_of(ncfg, &ret);
  store_pruner_set(rl->pruner, &ret);
  daemon_reload(rl->d, ncfg, ntls);
  rl->cfg = ncfg;
  log_info("reload -- configuration %s", ncfg->path);
  log_routes(ncfg);
  notify("READY=1\nSTATUS=accepting mail");
  result = 0;
out:
  pthread_mutex_unlock(&rl->mu);
  return result;
}

int main(int argc, char **argv)
{
  const char *cpath = NULL, *path;
  int foreground = 0, check_only = 0, opt, problems, result = 1;
  struct config *cfg = NULL;
  struct daemon *d = NULL;
  struct store *st = NULL;
  struct relay *relay = NULL;
  struct inbound_http *http = NULL;
  struct console *console = NULL;
  struct inbound_records *records = NULL;
  struct store_pruner *pruner = NULL;
  struct store_retention retention;
  struct passwd *pw = NULL;
  struct tls_server_ctx **tls = NULL;
  struct control *control = NULL;
  struct control_env cenv;
  struct reloader rl;
  int auth_ok = 0;
  char err[512];
  char *data_dir = NULL;
  sigset_t sigs;

  /* before the first secret is read */
  proc_no_core_dumps();
  while((opt = getopt(argc, argv, "c:fnVh")) != -1) {
    switch(opt) {
    case 'c': cpath = optarg; break;
    case 'f': foreground = 1; break;
    case 'n': check_only = 1; break;
    case 'V': printf("postern %s\n", PACKAGE_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 64;
    }
  }
  if(optind != argc) {
    usage(stderr);
    return 64;
  }

  path = config_choose_path(cpath);
  problems = config_load(path, stderr, &cfg);
  if(!problems && cfg)
    problems += relay_check_config(cfg, stderr) +
                check_environment(cfg, stderr, check_only ? NULL : &tls);
  if(!problems && cfg)
    problems += inbound_init(stderr);
  if(check_only) {
    if(!problems && cfg)
      relay_route_warnings(cfg, warn_to_file, stderr);
    inbound_done();
    config_free(cfg);
    return problems ? 1 : 0;
  }
  if(problems) {
    fprintf(stderr, "postern: %d configuration problem(s); not starting\n", problems);
    inbound_done();
    if(cfg)
      daemon_tls_free(tls, cfg->nlisteners);
    config_free(cfg);
    return 1;
  }

  log_open("postern", foreground, cfg->debug);
  if(geteuid() == 0 && cfg->user && cfg->user[0]) {
    pw = getpwnam(cfg->user);
    /* fail closed: a missing user (the default one too) must not leave an internet-facing
     * daemon running as root; staying root is the operator's explicit choice (user =) */
    if(!pw)
      log_fatal("user %s does not exist; not starting as root in its place (create it: useradd "
                "--system --home-dir /var/lib/postern --shell /usr/sbin/nologin %s; or set "
                "user = empty in [postern] to stay root on purpose)", cfg->user, cfg->user);
  }
  else if(geteuid() == 0 && cfg->embedded)
    log_info("embedded default: running as root on loopback, as started (a configuration "
             "file drops to its user =, postern by default)");
  else if(geteuid() == 0)
    log_warn("running as root because user = is empty in [postern]: every listener and parser "
             "keeps root's privileges; set user = to a system user to drop them after binding");

  /* the data directory is resolved now: detaching and dropping root must not move it */
  data_dir = realpath(cfg->data_dir, NULL);
  if(!data_dir) {
    if(mkdir(cfg->data_dir, 0700) && errno != EEXIST)
      log_fatal("cannot create data_dir %s: %s", cfg->data_dir, strerror(errno));
    data_dir = realpath(cfg->data_dir, NULL);
    if(!data_dir)
      log_fatal("data_dir %s: %s", cfg->data_dir, strerror(errno));
  }

  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* glibc gives the top of a thread arena back to the kernel (madvise) whenever more than
   * 128 KiB is free there, and the store writer crosses that line with every savepoint it
   * releases: a TLB shootdown per accepted message. Keep up to 32 MiB instead. */
  mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);

  /* the daemon owns the certificates from here, with the configuration */
  problems = daemon_bind(&d, cfg, tls, stderr);
  tls = NULL;
  if(problems) {
    log_error("cannot bind the listeners; not starting (see above: another program on the "
              "address, or a port below 1024 without root; change address = in [listener])");
    goto out;
  }
  if(make_data_dir(data_dir, pw))
    goto out;
  if(pw)
    secrets_readable(cfg, pw);
  if(pw && drop_privileges(pw))
    goto out;
  /* a change of user made the process dumpable again */
  proc_no_core_dumps();
  if(!foreground)
    detach();
  if(data_dir_lock(data_dir) < 0)
    goto out;

  if(auth_wanted(cfg) && auth_setup(data_dir, &auth_ok))
    goto out;
  metrics_configure(cfg);      /* the label values of /metrics, before any traffic */
  if(store_open(data_dir, STORE_OPEN_WRITER | STORE_OPEN_CREATE, &st, err, sizeof(err))) {
    log_error("cannot open the store in %s: %s", data_dir, err);
    goto out;
  }
  retention_of(cfg, &retention);
  if(store_pruner_start(st, &retention, &pruner)) {
    log_error("cannot start the store's pruner thread (check ulimit -u and free memory)");
    goto out;
  }
  if(relay_start(cfg, st, &relay)) {
    log_error("cannot start the relay (see the messages above; `postern -n` checks the "
              "configuration)");
    goto out;
  }
  /* the HTTP listener's address is bound once; its credentials and keys follow reloads */
  if(cfg->inbound.http_address &&
     inbound_http_start(cfg, st, daemon_http_fd(d), &http)) {
    log_error("cannot start the HTTP listener (see above; check http_address and the secrets "
              "in [inbound])");
    goto out;
  }
  if(http && cfg->console.enabled) {
    if(console_new(cfg, st, &console))
      goto out;
    inbound_http_set_console(http, console_handle, console);
  }
  /* correspondence records: made from what the store holds, so mail accepted while the
   * daemon was down becomes records too */
  if(inbound_records_start(cfg, st, &records)) {
    log_error("cannot start the record builder (see above; check forward_url and "
              "forward_secret_file in [inbound])");
    goto out;
  }
  if(daemon_serve(d, st, relay, auth_ok)) {
    log_error("cannot start the listeners (see above; check ulimit -u and free memory)");
    goto out;
  }
  memset(&rl, 0, sizeof(rl));
  pthread_mutex_init(&rl.mu, NULL);
  rl.path = path;
  rl.d = d;
  rl.http = http;
  rl.console = console;
  rl.records = records;
  rl.pruner = pruner;
  rl.auth_ok = auth_ok;
  rl.cfg = cfg;
  memset(&cenv, 0, sizeof(cenv));
  cenv.d = d;
  cenv.st = st;
  cenv.relay = relay;
  cenv.reload = reload_run;
  cenv.reload_arg = &rl;
  /* after dropping root: the socket belongs to the daemon's user */
  if(control_start(data_dir, &cenv, &control)) {
    pthread_mutex_destroy(&rl.mu);
    goto out;
  }
  log_info("daemon started -- version %s, configuration %s", PACKAGE_VERSION, cfg->path);
  log_routes(cfg);
  notify("READY=1\nSTATUS=accepting mail");

  for(;;) {
    int sig = 0;
    if(sigwait(&sigs, &sig))
      continue;
    if(sig == SIGHUP) {
      reload_run(&rl, NULL, 0);
      continue;
    }
    log_info("terminating on signal %d", sig);
    notify("STOPPING=1\nSTATUS=finishing the sessions in progress");
    break;
  }
  control_stop(control);
  control = NULL;
  pthread_mutex_destroy(&rl.mu);
  cfg = rl.cfg;
  result = 0;

out:
  if(d)
    daemon_stop(d, (cfg ? cfg->shutdown_grace : 30) * 1000LL);
  inbound_http_stop(http);
  console_free(console);       /* after the listener: no request uses it any more */
  inbound_records_stop(records);
  {
    /* deliveries in progress get a few seconds once no client waits any more (a silent
     * upstream must not hold the stop); one whose upstream is taking a message gets the whole
     * grace, as cutting it could send the message twice */
    long long grace = cfg ? cfg->shutdown_grace * 1000LL : 30000;
    relay_stop(relay, grace < RELAY_STOP_EARLY_MS ? grace : RELAY_STOP_EARLY_MS, grace);
  }
  store_pruner_stop(pruner);
  store_close(st);
  if(d) {
    daemon_free(d);         /* frees the configurations it holds */
    cfg = NULL;
  }
  if(cfg)
    daemon_tls_free(tls, cfg->nlisteners);
  config_free(cfg);
  free(data_dir);
  auth_done();
  inbound_done();
  if(!result)
    log_info("stopped");
  return result;
}
