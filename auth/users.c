/* The sasldb behind `posternctl user add|delete|list`, through libsasl2's own sasl_setpass
 * (so the format is always what the sasldb plugin reads). */
#include "auth/auth.h"
#include "auth/auth_int.h"
#include "lib/buf.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PASSWORD_MAX 1024
#define LIST_OUT_MAX (64u * 1024u * 1024u)
#define LIST_ERR_MAX 1024

/* ---- users -------------------------------------------------------------------------------- */

static int bad_name(const char *s, size_t max)
{
  size_t i, n = strlen(s);
  if(!n || n >= max)
    return 1;
  for(i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    /* control bytes would break sasldblistusers2's line format and every log line */
    if(c < 0x20 || c == 0x7f)
      return 1;
  }
  return 0;
}

static int check_names(const char *path, const char *user, const char *realm, char *err,
                       size_t errsz)
{
  if(!path || !*path) {
    snprintf(err, errsz, "no sasldb path given");
    return AUTH_FAIL;
  }
  if(!user || bad_name(user, AUTH_USER_MAX)) {
    snprintf(err, errsz, "a user name must be 1 to %d printable bytes", AUTH_USER_MAX - 1);
    return AUTH_FAIL;
  }
  if(!realm || bad_name(realm, AUTH_USER_MAX) || strchr(realm, '@')) {
    snprintf(err, errsz, "the realm must be a host name");
    return AUTH_FAIL;
  }
  return AUTH_OK;
}

/* A server connection whose getopt points Cyrus at this sasldb, realm = serverFQDN so that
 * "alice" is stored exactly where auth_server_step looks for it. */
static int user_conn(struct auth_opts *opts, sasl_callback_t cbs[3], const char *path,
                     const char *realm, sasl_conn_t **conn, char *err, size_t errsz)
{
  int rc, result;
  opts->sasldb_path = path;
  opts->mech_list = AUTH_MECHS_ALL;
  auth_sasl_conn_callbacks(cbs, opts);
  result = auth_sasl_server_ready(err, errsz);
  if(result)
    return result;
  rc = sasl_server_new("smtp", realm, NULL, NULL, NULL, cbs, 0, conn);
  if(rc != SASL_OK) {
    snprintf(err, errsz, "cannot start Cyrus SASL: %s", sasl_errstring(rc, NULL, NULL));
    return AUTH_ERROR;
  }
  return AUTH_OK;
}

int auth_user_set(const char *sasldb_path, const char *user, const char *realm,
                  const char *password, size_t pwlen, char *err, size_t errsz)
{
  struct auth_opts opts;
  sasl_callback_t cbs[3];
  sasl_conn_t *conn = NULL;
  struct stat st;
  int rc, creating = 0, result;
  mode_t old = 0;

  result = check_names(sasldb_path, user, realm, err, errsz);
  if(result)
    return result;
  /* PLAIN carries the password between NUL bytes, so one with a NUL could never log in. */
  if(!password || !pwlen || pwlen > PASSWORD_MAX || memchr(password, '\0', pwlen)) {
    snprintf(err, errsz, "a password must be 1 to %d bytes, without NUL", PASSWORD_MAX);
    return AUTH_FAIL;
  }
  result = user_conn(&opts, cbs, sasldb_path, realm, &conn, err, errsz);
  if(result)
    goto out;
  if(stat(sasldb_path, &st)) {
    if(errno != ENOENT) {
      snprintf(err, errsz, "%s: %s", sasldb_path, strerror(errno));
      result = AUTH_ERROR;
      goto out;
    }
    creating = 1;
  }
  /* The database library creates the file with 0660 less the umask; the umask is the only
   * way to have it born 0600 rather than chmod'ed after it already held a password. */
  if(creating)
    old = umask(077);
  rc = sasl_setpass(conn, user, password, (unsigned)pwlen, NULL, 0, SASL_SET_CREATE);
  if(creating)
    umask(old);
  if(rc != SASL_OK) {
    const char *d = sasl_errdetail(conn);
    snprintf(err, errsz, "%s: cannot store the password: %s", sasldb_path,
             d ? d : sasl_errstring(rc, NULL, NULL));
    result = AUTH_ERROR;
    goto out;
  }
  if(creating && !stat(sasldb_path, &st) && (st.st_mode & 077) && chmod(sasldb_path, 0600)) {
    snprintf(err, errsz, "%s: %s", sasldb_path, strerror(errno));
    result = AUTH_ERROR;
    goto out;
  }
out:
  if(conn)
    sasl_dispose(&conn);
  return result;
}

int auth_user_delete(const char *sasldb_path, const char *user, const char *realm,
                     char *err, size_t errsz)
{
  struct auth_opts opts;
  sasl_callback_t cbs[3];
  sasl_conn_t *conn = NULL;
  struct stat st;
  int rc, result;

  result = check_names(sasldb_path, user, realm, err, errsz);
  if(result)
    return result;
  if(stat(sasldb_path, &st)) {
    if(errno == ENOENT) {
      snprintf(err, errsz, "no such user: %s", user);
      return AUTH_NOUSER;
    }
    snprintf(err, errsz, "%s: %s", sasldb_path, strerror(errno));
    return AUTH_ERROR;
  }
  result = user_conn(&opts, cbs, sasldb_path, realm, &conn, err, errsz);
  if(result)
    goto out;
  /* Deleting a missing entry succeeds in Cyrus, and the operator deserves to hear about a
   * typo: ask first. */
  rc = sasl_user_exists(conn, "smtp", NULL, user);
  if(rc == SASL_NOUSER) {
    snprintf(err, errsz, "no such user: %s", user);
    result = AUTH_NOUSER;
    goto out;
  }
  if(rc != SASL_OK) {
    snprintf(err, errsz, "%s: cannot read the sasldb: %s", sasldb_path,
             sasl_errstring(rc, NULL, NULL));
    result = AUTH_ERROR;
    goto out;
  }
  rc = sasl_setpass(conn, user, NULL, 0, NULL, 0, SASL_SET_DISABLE);
  if(rc != SASL_OK) {
    const char *d = sasl_errdetail(conn);
    snprintf(err, errsz, "%s: cannot delete the user: %s", sasldb_path,
             d ? d : sasl_errstring(rc, NULL, NULL));
    result = AUTH_ERROR;
    goto out;
  }
out:
  if(conn)
    sasl_dispose(&conn);
  return result;
}

/* ---- listing ------------------------------------------------------------------------------ */

/* libsasl2 has no call that enumerates sasldb: the enumeration code (_sasldb_getkeyhandle
 * and friends) lives inside the sasldb plugin and its backend (Berkeley DB on Debian 12,
 * LMDB elsewhere). Cyrus's own sasldblistusers2 is that code with a documented output, one
 * "user@realm: property" line per stored property, whatever the backend; reading it keeps us
 * off the database format. */
static const char *const lister_paths[] = {
  "/usr/sbin/sasldblistusers2", "/usr/bin/sasldblistusers2", "/usr/local/sbin/sasldblistusers2",
  "/sbin/sasldblistusers2"
};

struct user_entry {
  char *user;
  char *realm;
};

static int entry_cmp(const void *a, const void *b)
{
  const struct user_entry *x = a, *y = b;
  int c = strcmp(x->realm, y->realm);
  return c ? c : strcmp(x->user, y->user);
}

/* Runs the lister with stdout and stderr captured (bounded). */
static int run_lister(const char *tool, const char *path, struct buf *outb, struct buf *errb,
                      int *status, char *err, size_t errsz)
{
  posix_spawn_file_actions_t fa;
  char *const argv[] = { (char *)"sasldblistusers2", (char *)"-f", (char *)path, NULL };
  char *const envp[] = { (char *)"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
  int po[2] = { -1, -1 }, pe[2] = { -1, -1 };
  int fa_ready = 0, result = AUTH_OK, rc;
  pid_t pid = -1;

  if(pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) {
    snprintf(err, errsz, "pipe: %s", strerror(errno));
    result = AUTH_ERROR;
    goto out;
  }
  if(posix_spawn_file_actions_init(&fa)) {
    snprintf(err, errsz, "out of memory");
    result = AUTH_ERROR;
    goto out;
  }
  fa_ready = 1;
  if(posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) ||
     posix_spawn_file_actions_adddup2(&fa, po[1], 1) ||
     posix_spawn_file_actions_adddup2(&fa, pe[1], 2)) {
    snprintf(err, errsz, "out of memory");
    result = AUTH_ERROR;
    goto out;
  }
  rc = posix_spawn(&pid, tool, &fa, NULL, argv, envp);
  if(rc) {
    snprintf(err, errsz, "%s: %s", tool, strerror(rc));
    pid = -1;
    result = AUTH_ERROR;
    goto out;
  }
  close(po[1]);
  close(pe[1]);
  po[1] = pe[1] = -1;
  for(;;) {
    struct pollfd pf[2];
    int nf = 0, i;
    if(po[0] >= 0) {
      pf[nf].fd = po[0];
      pf[nf++].events = POLLIN;
    }
    if(pe[0] >= 0) {
      pf[nf].fd = pe[0];
      pf[nf++].events = POLLIN;
    }
    if(!nf)
      break;
    if(poll(pf, (nfds_t)nf, -1) < 0) {
      if(errno == EINTR)
        continue;
      snprintf(err, errsz, "poll: %s", strerror(errno));
      result = AUTH_ERROR;
      goto out;
    }
    for(i = 0; i < nf; i++) {
      char chunk[4096];
      ssize_t n;
      int *fdp = pf[i].fd == po[0] ? &po[0] : &pe[0];
      struct buf *b = fdp == &po[0] ? outb : errb;
      if(!pf[i].revents)
        continue;
      n = read(*fdp, chunk, sizeof(chunk));
      if(n < 0 && errno == EINTR)
        continue;
      if(n <= 0) {
        close(*fdp);
        *fdp = -1;
        continue;
      }
      if(buf_add(b, chunk, (size_t)n) && b == outb) {
        snprintf(err, errsz, "%s: output larger than %u bytes", tool, LIST_OUT_MAX);
        result = AUTH_ERROR;
        goto out;
      }
      /* stderr past its cap is dropped: its start says enough */
    }
  }
out:
  if(fa_ready)
    posix_spawn_file_actions_destroy(&fa);
  for(rc = 0; rc < 2; rc++) {
    if(po[rc] >= 0)
      close(po[rc]);
    if(pe[rc] >= 0)
      close(pe[rc]);
  }
  if(pid > 0) {
    if(result)
      kill(pid, SIGKILL);
    while(waitpid(pid, status, 0) < 0 && errno == EINTR)
      ;
  }
  return result;
}

int auth_user_list(const char *sasldb_path,
                   void (*cb)(void *arg, const char *user, const char *realm), void *arg,
                   char *err, size_t errsz)
{
  struct buf outb, errb;
  struct user_entry *ents = NULL;
  size_t nents = 0, alloc = 0, i;
  const char *tool = NULL;
  struct stat st;
  char *line, *end;
  int status = 0, result = AUTH_OK;

  buf_init(&outb, LIST_OUT_MAX);
  buf_init(&errb, LIST_ERR_MAX);
  if(!sasldb_path || !*sasldb_path || !cb) {
    snprintf(err, errsz, "no sasldb path given");
    return AUTH_FAIL;
  }
  if(stat(sasldb_path, &st)) {
    if(errno == ENOENT)
      return AUTH_OK;              /* nobody added yet */
    snprintf(err, errsz, "%s: %s", sasldb_path, strerror(errno));
    return AUTH_ERROR;
  }
  for(i = 0; i < sizeof(lister_paths) / sizeof(lister_paths[0]) && !tool; i++)
    if(!access(lister_paths[i], X_OK))
      tool = lister_paths[i];
  if(!tool) {
    snprintf(err, errsz, "sasldblistusers2 not found: on Debian install the package sasl2-bin");
    return AUTH_ERROR;
  }
  result = run_lister(tool, sasldb_path, &outb, &errb, &status, err, errsz);
  if(result)
    goto out;
  /* It exits 0 even when it could not open the database; its stderr is the only sign. */
  if(!WIFEXITED(status) || WEXITSTATUS(status) || errb.len) {
    struct buf r;
    buf_init(&r, 160 * 4 + 4);     /* every byte may become \xNN */
    end = errb.len ? memchr(errb.ptr, '\n', errb.len) : NULL;
    buf_addrepr(&r, errb.ptr ? errb.ptr : "", end ? (size_t)(end - errb.ptr) : errb.len, 160);
    snprintf(err, errsz, "%s: cannot list %s: %s", tool, sasldb_path,
             r.ptr ? r.ptr : "failed");
    buf_free(&r);
    result = AUTH_ERROR;
    goto out;
  }
  for(line = outb.ptr; line && line < outb.ptr + outb.len; line = end + 1) {
    char *colon, *at, *p;
    end = memchr(line, '\n', (size_t)(outb.ptr + outb.len - line));
    if(!end) {
      snprintf(err, errsz, "%s: output cut short", tool);
      result = AUTH_ERROR;
      goto out;
    }
    *end = '\0';
    /* "user@realm: property": Cyrus splits a stored name at its first '@', so the user part
     * never has one; property names never hold ": ". */
    colon = NULL;
    for(p = line; (p = strstr(p, ": ")); p++)
      colon = p;
    at = strchr(line, '@');
    if(!colon || !at || at > colon) {
      snprintf(err, errsz, "%s: unexpected output", tool);
      result = AUTH_ERROR;
      goto out;
    }
    *at = '\0';
    *colon = '\0';
    if(nents == alloc) {
      size_t na = alloc ? alloc * 2 : 16;
      struct user_entry *ne = realloc(ents, na * sizeof(*ents));
      if(!ne) {
        snprintf(err, errsz, "out of memory");
        result = AUTH_ERROR;
        goto out;
      }
      ents = ne;
      alloc = na;
    }
    ents[nents].user = line;
    ents[nents].realm = at + 1;
    nents++;
  }
  /* One line per stored property: sort, then report each user once. */
  if(nents)
    qsort(ents, nents, sizeof(*ents), entry_cmp);
  for(i = 0; i < nents; i++)
    if(!i || entry_cmp(&ents[i], &ents[i - 1]))
      cb(arg, ents[i].user, ents[i].realm);
out:
  free(ents);
  buf_free(&outb);
  buf_free(&errb);
  return result;
}
