/* Unit tests of auth/: sasldb users added, listed and deleted; in-process exchanges between
 * our SASL client and our SASL server for every mechanism, good and bad passwords; mechanism
 * policy; XOAUTH2/OAUTHBEARER bytes; secret-file refusals; strict base64. */
#include "auth/auth.h"
#include "lib/buf.h"
#include "tests/unit/unit.h"
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HOST "relay.test"

static char tmpdir[PATH_MAX];
static char sasldb[PATH_MAX + 16];   /* the server's sasldb, shared by the exchange cases */

static int rm_one(const char *p, const struct stat *st, int type, struct FTW *f)
{
  return remove(p);
}

static void cleanup(void)
{
  auth_done();
  if(tmpdir[0])
    nftw(tmpdir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* One mkdtemp directory and one server set-up per process, whichever case runs first. */
static void setup(void)
{
  static int done;
  const char *base = getenv("TMPDIR");
  char err[256];
  int r;
  if(done)
    return;
  done = 1;
  snprintf(tmpdir, sizeof(tmpdir), "%s/test_auth.XXXXXX", base && *base ? base : "/tmp");
  if(!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    exit(1);
  }
  atexit(cleanup);
  snprintf(sasldb, sizeof(sasldb), "%s/sasldb2", tmpdir);
  r = auth_user_set(sasldb, "alice", HOST, "secret", 6, err, sizeof(err));
  if(r)
    fprintf(stderr, "auth_user_set: %s\n", err);
  CHECK_EQ_INT(r, AUTH_OK);
  r = auth_user_set(sasldb, "app@clinic.test", HOST, "pw-app", 6, err, sizeof(err));
  CHECK_EQ_INT(r, AUTH_OK);
  r = auth_server_init(sasldb, err, sizeof(err));
  if(r)
    fprintf(stderr, "auth_server_init: %s\n", err);
  CHECK_EQ_INT(r, AUTH_OK);
}

static void path_in(char *out, size_t outsz, const char *name)
{
  snprintf(out, outsz, "%s/%s", tmpdir, name);
}

/* Round-trips data through our base64, as the SMTP layer will. */
static unsigned char *wire(const unsigned char *p, size_t n, size_t *outn)
{
  char *enc = NULL;
  unsigned char *dec = NULL;
  size_t enclen = 0;
  CHECK_EQ_INT(auth_b64_encode(p, n, &enc, &enclen), AUTH_OK);
  CHECK_EQ_INT(auth_b64_decode(enc, enclen, &dec, outn), AUTH_OK);
  free(enc);
  return dec;
}

struct run {
  const char *mech;                  /* chosen by the client */
  char user[AUTH_USER_MAX];          /* as the server reports it */
  char first_challenge[64];          /* the server's first 334 text, if any */
  int client_result;                 /* the client's last step result */
};

/* Our client against our server until the server decides. */
static int exchange(const char *allowed, int secure, const char *client_mechs,
                    const char *user, const char *pw, struct run *run)
{
  struct auth_server_session *s = NULL;
  struct auth_client_session *c = NULL;
  const unsigned char *init = NULL, *sout = NULL, *cout = NULL;
  size_t initlen = 0, soutlen = 0, coutlen = 0, n = 0;
  int has = 0, r, rounds = 0;
  unsigned char *msg = NULL;

  memset(run, 0, sizeof(*run));
  r = auth_server_new("smtp", HOST, allowed, secure, &s);
  CHECK_EQ_INT(r, AUTH_OK);
  if(r)
    return -1;
  r = auth_client_new("smtp", HOST, user, pw, strlen(pw), client_mechs, secure, &c);
  CHECK_EQ_INT(r, AUTH_OK);
  if(r) {
    auth_server_free(s);
    return -1;
  }
  r = auth_client_start(c, auth_server_mechs(s), &run->mech, &init, &initlen, &has);
  if(r)
    goto out;
  if(has)
    msg = wire(init, initlen, &n);
  r = auth_server_step(s, run->mech, has ? msg : NULL, n, &sout, &soutlen, run->user,
                       sizeof(run->user));
  auth_secret_free(msg, n);
  msg = NULL;
  if(r == AUTH_CONTINUE && soutlen < sizeof(run->first_challenge)) {
    memcpy(run->first_challenge, sout, soutlen);
    run->first_challenge[soutlen] = '\0';
  }
  while(r == AUTH_CONTINUE && rounds++ < 10) {
    unsigned char *ch = wire(sout, soutlen, &n);
    run->client_result = auth_client_step(c, ch, n, &cout, &coutlen);
    free(ch);
    if(run->client_result != AUTH_OK && run->client_result != AUTH_CONTINUE) {
      r = run->client_result;
      break;
    }
    msg = wire(cout, coutlen, &n);
    r = auth_server_step(s, NULL, msg, n, &sout, &soutlen, run->user, sizeof(run->user));
    auth_secret_free(msg, n);
    msg = NULL;
  }
out:
  auth_client_free(c);
  auth_server_free(s);
  return r;
}

static int scram_available(void)
{
  struct auth_server_session *s = NULL;
  int yes;
  if(auth_server_new("smtp", HOST, "SCRAM-SHA-256", 1, &s))
    return 0;
  yes = strstr(auth_server_mechs(s), "SCRAM-SHA-256") != NULL;
  auth_server_free(s);
  return yes;
}

static void check_mech(const char *mech)
{
  struct run run;
  int r;
  setup();
  r = exchange(mech, 1, mech, "alice", "secret", &run);
  CHECK_EQ_INT(r, AUTH_OK);
  CHECK_EQ_STR(run.mech, mech);
  CHECK_EQ_STR(run.user, "alice");
  /* the same entry reached with the realm spelled out is still "alice" */
  r = exchange(mech, 1, mech, "alice@" HOST, "secret", &run);
  CHECK_EQ_INT(r, AUTH_OK);
  CHECK_EQ_STR(run.user, "alice");
  /* a name with its own domain is its own identity */
  r = exchange(mech, 1, mech, "app@clinic.test", "pw-app", &run);
  CHECK_EQ_INT(r, AUTH_OK);
  CHECK_EQ_STR(run.user, "app@clinic.test");
  r = exchange(mech, 1, mech, "alice", "wrong", &run);
  CHECK_EQ_INT(r, AUTH_FAIL);
  CHECK_EQ_STR(run.user, "");
  r = exchange(mech, 1, mech, "mallory", "secret", &run);
  CHECK_EQ_INT(r, AUTH_FAIL);
}

static void test_plain(void)
{
  check_mech("PLAIN");
}

static void test_login(void)
{
  struct run run;
  check_mech("LOGIN");
  CHECK_EQ_INT(exchange("LOGIN", 1, "LOGIN", "alice", "secret", &run), AUTH_OK);
  CHECK_EQ_STR(run.first_challenge, "Username:");
}

static void test_cram_md5(void)
{
  struct run run;
  check_mech("CRAM-MD5");
  /* CRAM-MD5 is safe in the clear: it is offered and works without TLS */
  CHECK_EQ_INT(exchange("CRAM-MD5", 0, "CRAM-MD5", "alice", "secret", &run), AUTH_OK);
  CHECK(run.first_challenge[0] == '<');
}

static void test_scram_sha256(void)
{
  setup();
  if(!scram_available()) {
    fprintf(stderr, "# skip: no SCRAM-SHA-256 plugin (Debian package libsasl2-modules)\n");
    return;
  }
  check_mech("SCRAM-SHA-256");
}

/* The exact bytes of PLAIN's initial response: no authorization identity. */
static void test_plain_initial_bytes(void)
{
  struct auth_client_session *c = NULL;
  const unsigned char *init = NULL;
  const char *mech = NULL;
  size_t len = 0;
  int has = 0;
  setup();
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, "PLAIN", 1, &c), AUTH_OK);
  CHECK_EQ_INT(auth_client_start(c, "LOGIN PLAIN", &mech, &init, &len, &has), AUTH_OK);
  CHECK_EQ_STR(mech, "PLAIN");
  CHECK_EQ_INT(has, 1);
  CHECK_EQ_INT(len, 13);
  CHECK(init && !memcmp(init, "\0alice\0secret", 13));
  auth_client_free(c);
  /* server-first mechanisms have no initial response */
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, "CRAM-MD5", 0, &c), AUTH_OK);
  CHECK_EQ_INT(auth_client_start(c, "CRAM-MD5", &mech, &init, &len, &has), AUTH_OK);
  CHECK_EQ_INT(has, 0);
  auth_client_free(c);
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, "LOGIN", 1, &c), AUTH_OK);
  CHECK_EQ_INT(auth_client_start(c, "LOGIN", &mech, &init, &len, &has), AUTH_OK);
  CHECK_EQ_INT(has, 0);
  auth_client_free(c);
}

static void test_plain_not_in_clear(void)
{
  struct auth_server_session *s = NULL;
  struct auth_client_session *c = NULL;
  const unsigned char *out = NULL, *init = NULL;
  const char *mech = NULL;
  size_t outlen = 0, len = 0;
  int has = 0;
  char user[AUTH_USER_MAX];
  setup();
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "PLAIN LOGIN CRAM-MD5", 0, &s), AUTH_OK);
  CHECK_EQ_STR(auth_server_mechs(s), "CRAM-MD5");
  CHECK_EQ_INT(auth_server_step(s, "PLAIN", (const unsigned char *)"\0alice\0secret", 13, &out,
                                &outlen, user, sizeof(user)), AUTH_BAD_MECH);
  CHECK_EQ_INT(auth_server_step(s, "login", NULL, 0, &out, &outlen, user, sizeof(user)),
               AUTH_BAD_MECH);
  auth_server_free(s);
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "PLAIN LOGIN", 0, &s), AUTH_OK);
  CHECK_EQ_STR(auth_server_mechs(s), "");
  auth_server_free(s);
  /* over TLS, in the operator's order */
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "LOGIN PLAIN CRAM-MD5", 1, &s), AUTH_OK);
  CHECK_EQ_STR(auth_server_mechs(s), "LOGIN PLAIN CRAM-MD5");
  /* mechanism names are case-insensitive in SMTP */
  CHECK_EQ_INT(auth_server_step(s, "plain", (const unsigned char *)"\0alice\0secret", 13, &out,
                                &outlen, user, sizeof(user)), AUTH_OK);
  CHECK_EQ_STR(user, "alice");
  auth_server_free(s);
  /* the client refuses to send a password in the clear even when asked to */
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, "PLAIN LOGIN", 0, &c), AUTH_OK);
  CHECK_EQ_INT(auth_client_start(c, "PLAIN LOGIN", &mech, &init, &len, &has), AUTH_BAD_MECH);
  auth_client_free(c);
  /* unknown mechanisms are a configuration error */
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "PLAIN DIGEST-MD5", 1, &s), AUTH_BAD_MECH);
  CHECK(s == NULL);
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, "XOAUTH2", 1, &c),
               AUTH_BAD_MECH);
}

static const char *auto_choice(const char *server_mechs, int secure)
{
  struct auth_client_session *c = NULL;
  const unsigned char *init = NULL;
  const char *mech = NULL;
  size_t len = 0;
  int has = 0, r;
  CHECK_EQ_INT(auth_client_new("smtp", HOST, "alice", "secret", 6, NULL, secure, &c), AUTH_OK);
  r = auth_client_start(c, server_mechs, &mech, &init, &len, &has);
  auth_client_free(c);
  return r ? "(none)" : mech;       /* mech points at a static name */
}

static void test_auto_choice(void)
{
  struct run run;
  setup();
  CHECK_EQ_STR(auto_choice("PLAIN LOGIN CRAM-MD5", 1), "CRAM-MD5");
  CHECK_EQ_STR(auto_choice("LOGIN PLAIN", 1), "PLAIN");
  CHECK_EQ_STR(auto_choice("login", 1), "LOGIN");
  CHECK_EQ_STR(auto_choice("PLAIN LOGIN", 0), "(none)");
  CHECK_EQ_STR(auto_choice("PLAIN LOGIN CRAM-MD5", 0), "CRAM-MD5");
  CHECK_EQ_STR(auto_choice("XOAUTH2 GSSAPI", 1), "(none)");
  CHECK_EQ_STR(auto_choice("", 1), "(none)");
  if(scram_available()) {
    CHECK_EQ_STR(auto_choice("PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256", 1),
                 "SCRAM-SHA-256");
    CHECK_EQ_INT(exchange(AUTH_MECHS_ALL, 1, NULL, "alice", "secret", &run), AUTH_OK);
    CHECK_EQ_STR(run.mech, "SCRAM-SHA-256");
  }
  else
    fprintf(stderr, "# skip: SCRAM cases (no SCRAM plugin)\n");
  CHECK_EQ_INT(exchange("PLAIN LOGIN CRAM-MD5", 1, NULL, "alice", "secret", &run), AUTH_OK);
  CHECK_EQ_STR(run.mech, "CRAM-MD5");
  /* an explicit preference list is followed in its own order */
  CHECK_EQ_INT(exchange("PLAIN LOGIN CRAM-MD5", 1, "LOGIN PLAIN", "alice", "secret", &run),
               AUTH_OK);
  CHECK_EQ_STR(run.mech, "LOGIN");
}

/* A failed AUTH leaves the session ready for another attempt (SMTP allows it). */
static void test_retry_after_failure(void)
{
  struct auth_server_session *s = NULL;
  const unsigned char *out = NULL;
  size_t outlen = 0;
  char user[AUTH_USER_MAX];
  setup();
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "PLAIN LOGIN", 1, &s), AUTH_OK);
  CHECK_EQ_INT(auth_server_step(s, "PLAIN", (const unsigned char *)"\0alice\0nope", 11, &out,
                                &outlen, user, sizeof(user)), AUTH_FAIL);
  /* a client that answers "*" mid-exchange simply starts again */
  CHECK_EQ_INT(auth_server_step(s, "LOGIN", NULL, 0, &out, &outlen, user, sizeof(user)),
               AUTH_CONTINUE);
  CHECK(outlen == 9 && !memcmp(out, "Username:", 9));
  /* PLAIN without an initial response: an empty 334 first */
  CHECK_EQ_INT(auth_server_step(s, "PLAIN", NULL, 0, &out, &outlen, user, sizeof(user)),
               AUTH_CONTINUE);
  CHECK_EQ_INT(outlen, 0);
  CHECK_EQ_INT(auth_server_step(s, NULL, (const unsigned char *)"\0alice\0secret", 13, &out,
                                &outlen, user, sizeof(user)), AUTH_OK);
  CHECK_EQ_STR(user, "alice");
  auth_server_free(s);
  /* LOGIN with the user name as initial response goes straight to the password prompt */
  CHECK_EQ_INT(auth_server_new("smtp", HOST, "PLAIN LOGIN", 1, &s), AUTH_OK);
  CHECK_EQ_INT(auth_server_step(s, "LOGIN", (const unsigned char *)"alice", 5, &out, &outlen,
                                user, sizeof(user)), AUTH_CONTINUE);
  CHECK(outlen == 9 && !memcmp(out, "Password:", 9));
  CHECK_EQ_INT(auth_server_step(s, NULL, (const unsigned char *)"secret", 6, &out, &outlen,
                                user, sizeof(user)), AUTH_OK);
  /* a step with no exchange under way is the caller's bug */
  CHECK_EQ_INT(auth_server_step(s, NULL, (const unsigned char *)"x", 1, &out, &outlen, user,
                                sizeof(user)), AUTH_ERROR);
  auth_server_free(s);
}

/* Listener threads authenticate at once: Cyrus connections are per session, sasldb is opened
 * per lookup. */
static void *exchange_thread(void *arg)
{
  static const char *const mechs[] = { "PLAIN", "CRAM-MD5", "LOGIN" };
  long failures = 0;
  int i;
  struct run run;
  for(i = 0; i < 15; i++) {
    const char *m = mechs[i % 3];
    const char *pw = i % 5 == 4 ? "wrong" : "secret";
    int want = i % 5 == 4 ? AUTH_FAIL : AUTH_OK;
    if(exchange(m, 1, m, "alice", pw, &run) != want)
      failures++;
  }
  return (void *)failures;
}

static void test_threads(void)
{
  pthread_t t[8];
  int i, started = 0;
  setup();
  for(i = 0; i < 8; i++)
    if(!pthread_create(&t[i], NULL, exchange_thread, NULL))
      started++;
  CHECK_EQ_INT(started, 8);
  for(i = 0; i < started; i++) {
    void *rv = NULL;
    pthread_join(t[i], &rv);
    CHECK_EQ_INT((long)rv, 0);
  }
}

struct seen {
  char names[8][2 * AUTH_USER_MAX];
  int n;
};

static void collect(void *arg, const char *user, const char *realm)
{
  struct seen *s = arg;
  if(s->n < 8)
    snprintf(s->names[s->n++], sizeof(s->names[0]), "%s|%s", user, realm);
}

static int have_lister(void)
{
  return !access("/usr/sbin/sasldblistusers2", X_OK) || !access("/usr/bin/sasldblistusers2", X_OK);
}

static void test_users(void)
{
  char db[PATH_MAX + 16], err[512];
  struct seen seen;
  struct stat st;
  struct run run;
  setup();
  path_in(db, sizeof(db), "users.db");
  /* nothing there yet */
  memset(&seen, 0, sizeof(seen));
  CHECK_EQ_INT(auth_user_list(db, collect, &seen, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(seen.n, 0);
  CHECK_EQ_INT(auth_user_delete(db, "alice", HOST, err, sizeof(err)), AUTH_NOUSER);

  CHECK_EQ_INT(auth_user_set(db, "carol", HOST, "pw1", 3, err, sizeof(err)), AUTH_OK);
  CHECK(!stat(db, &st) && (st.st_mode & 0777) == 0600);
  CHECK_EQ_INT(auth_user_set(db, "bob@other.test", HOST, "pw2", 3, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(auth_user_set(db, "carol", HOST, "pw3", 3, err, sizeof(err)), AUTH_OK);
  if(have_lister()) {
    memset(&seen, 0, sizeof(seen));
    CHECK_EQ_INT(auth_user_list(db, collect, &seen, err, sizeof(err)), AUTH_OK);
    CHECK_EQ_INT(seen.n, 2);
    CHECK_EQ_STR(seen.names[0], "bob|other.test");
    CHECK_EQ_STR(seen.names[1], "carol|" HOST);
  }
  else
    fprintf(stderr, "# skip: listing (sasldblistusers2 from sasl2-bin not installed)\n");

  CHECK_EQ_INT(auth_user_delete(db, "carol", HOST, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(auth_user_delete(db, "carol", HOST, err, sizeof(err)), AUTH_NOUSER);
  CHECK(strstr(err, "no such user") != NULL);
  if(have_lister()) {
    memset(&seen, 0, sizeof(seen));
    CHECK_EQ_INT(auth_user_list(db, collect, &seen, err, sizeof(err)), AUTH_OK);
    CHECK_EQ_INT(seen.n, 1);
    CHECK_EQ_STR(seen.names[0], "bob|other.test");
  }
  CHECK_EQ_INT(auth_user_delete(db, "bob@other.test", HOST, err, sizeof(err)), AUTH_OK);

  /* refused input */
  CHECK_EQ_INT(auth_user_set(db, "", HOST, "pw", 2, err, sizeof(err)), AUTH_FAIL);
  CHECK_EQ_INT(auth_user_set(db, "eve\nroot", HOST, "pw", 2, err, sizeof(err)), AUTH_FAIL);
  CHECK_EQ_INT(auth_user_set(db, "eve", HOST, "", 0, err, sizeof(err)), AUTH_FAIL);
  CHECK_EQ_INT(auth_user_set(db, "eve", HOST, "a\0b", 3, err, sizeof(err)), AUTH_FAIL);
  CHECK_EQ_INT(auth_user_set(db, "eve", "a@b", "pw", 2, err, sizeof(err)), AUTH_FAIL);

  /* a corrupt database is an error, not an empty list */
  if(have_lister()) {
    FILE *f;
    path_in(db, sizeof(db), "corrupt.db");
    f = fopen(db, "w");
    if(f) {
      fputs("not a database\n", f);
      fclose(f);
    }
    CHECK_EQ_INT(auth_user_list(db, collect, &seen, err, sizeof(err)), AUTH_ERROR);
  }

  /* a changed password takes effect on the server's own sasldb at once */
  CHECK_EQ_INT(auth_user_set(sasldb, "dave", HOST, "old", 3, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(exchange("CRAM-MD5", 0, NULL, "dave", "old", &run), AUTH_OK);
  CHECK_EQ_INT(auth_user_set(sasldb, "dave", HOST, "new", 3, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(exchange("CRAM-MD5", 0, NULL, "dave", "old", &run), AUTH_FAIL);
  CHECK_EQ_INT(exchange("CRAM-MD5", 0, NULL, "dave", "new", &run), AUTH_OK);
  CHECK_EQ_INT(auth_user_delete(sasldb, "dave", HOST, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(exchange("CRAM-MD5", 0, NULL, "dave", "new", &run), AUTH_FAIL);
}

static void test_server_init_refuses_open_sasldb(void)
{
  char db[PATH_MAX + 16], err[512];
  FILE *f;
  setup();
  path_in(db, sizeof(db), "open.db");
  f = fopen(db, "w");
  if(f)
    fclose(f);
  chmod(db, 0644);
  CHECK_EQ_INT(auth_server_init(db, err, sizeof(err)), AUTH_ERROR);
  CHECK(strstr(err, "chmod 600") != NULL);
  /* the process keeps the sasldb it was started with */
  chmod(db, 0600);
  CHECK_EQ_INT(auth_server_init(db, err, sizeof(err)), AUTH_ERROR);
  CHECK_EQ_INT(auth_server_init(sasldb, err, sizeof(err)), AUTH_OK);
}

static void check_bytes(struct buf *b, const char *want, size_t wantlen)
{
  CHECK_EQ_INT(b->len, wantlen);
  CHECK(b->len == wantlen && !memcmp(b->ptr, want, wantlen));
}

static void test_oauth_strings(void)
{
  struct buf b;
  static const char x[] = "user=someone@example.com\001auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\001\001";
  static const char o[] = "n,a=user@example.com,\001host=server.example.com\001port=587\001"
                          "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001";
  static const char o2[] = "n,a=a=3Db=2Cc,\001auth=Bearer t\001\001";
  buf_init(&b, 4096);
  CHECK_EQ_INT(auth_xoauth2_initial("someone@example.com",
                                    "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", &b), AUTH_OK);
  check_bytes(&b, x, sizeof(x) - 1);
  buf_reset(&b);
  CHECK_EQ_INT(auth_oauthbearer_initial("user@example.com", "server.example.com", 587,
                                        "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", &b),
               AUTH_OK);
  check_bytes(&b, o, sizeof(o) - 1);
  buf_reset(&b);
  CHECK_EQ_INT(auth_oauthbearer_initial("a=b,c", NULL, 0, "t", &b), AUTH_OK);
  check_bytes(&b, o2, sizeof(o2) - 1);
  buf_reset(&b);
  /* nothing that could forge a field gets through */
  CHECK_EQ_INT(auth_xoauth2_initial("u", "tok\001auth=x", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_xoauth2_initial("u", "tok en", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_xoauth2_initial("u", "", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_xoauth2_initial("u", "=abc", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_xoauth2_initial("u\001", "tok", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_oauthbearer_initial("u", "h\001", 25, "tok", &b), AUTH_FAIL);
  CHECK_EQ_INT(auth_oauthbearer_initial("u", "h", 70000, "tok", &b), AUTH_FAIL);
  CHECK_EQ_INT(b.len, 0);
  /* a buffer too small is an error, not a truncated token */
  buf_free(&b);
  buf_init(&b, 16);
  CHECK_EQ_INT(auth_xoauth2_initial("someone@example.com", "tok", &b), AUTH_ERROR);
  buf_free(&b);
}

static void write_file(const char *path, const char *data, size_t n, mode_t mode)
{
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if(!f)
    return;
  CHECK_EQ_INT(fwrite(data, 1, n, f), n);
  fclose(f);
  chmod(path, mode);
}

static void test_secret_files(void)
{
  char p[PATH_MAX + 16], err[512];
  char *sec = NULL, *big;
  size_t len = 0;
  setup();
  path_in(p, sizeof(p), "pw.secret");
  write_file(p, "hunter2\n", 8, 0600);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_INT(len, 7);
  CHECK_EQ_STR(sec, "hunter2");
  auth_secret_free(sec, len);
  /* only one newline goes; CRLF counts as one */
  write_file(p, "a b\r\n\n", 6, 0400);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_OK);
  CHECK(len == 5 && !memcmp(sec, "a b\r\n", 5));
  auth_secret_free(sec, len);
  write_file(p, "x\r\n", 3, 0600);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_OK);
  CHECK_EQ_STR(sec, "x");
  auth_secret_free(sec, len);
  /* readable by others or the group: refused, with the fix named and no secret shown */
  write_file(p, "hunter2\n", 8, 0644);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_FAIL);
  CHECK(sec == NULL);
  CHECK(strstr(err, "chmod 600") != NULL);
  CHECK(strstr(err, "hunter2") == NULL);
  chmod(p, 0640);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_FAIL);
  chmod(p, 0602);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_FAIL);
  /* not a regular file, missing, empty, too big */
  CHECK_EQ_INT(auth_secret_read(tmpdir, &sec, &len, err, sizeof(err)), AUTH_FAIL);
  path_in(p, sizeof(p), "missing.secret");
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_ERROR);
  path_in(p, sizeof(p), "empty.secret");
  write_file(p, "\n", 1, 0600);
  CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_FAIL);
  path_in(p, sizeof(p), "big.secret");
  big = malloc(AUTH_SECRET_MAX + 2);
  if(big) {
    memset(big, 'k', AUTH_SECRET_MAX + 2);
    write_file(p, big, AUTH_SECRET_MAX, 0600);
    CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_OK);
    CHECK_EQ_INT(len, AUTH_SECRET_MAX);
    auth_secret_free(sec, len);
    write_file(p, big, AUTH_SECRET_MAX + 2, 0600);
    CHECK_EQ_INT(auth_secret_read(p, &sec, &len, err, sizeof(err)), AUTH_FAIL);
    free(big);
  }
}

static void test_base64(void)
{
  static const struct { const char *in; const char *out; size_t outlen; } good[] = {
    { "", "", 0 }, { "QQ==", "A", 1 }, { "QUI=", "AB", 2 }, { "QUJD", "ABC", 3 },
    { "AGFsaWNlAHNlY3JldA==", "\0alice\0secret", 13 }, { "+/+/", "\xfb\xff\xbf", 3 },
  };
  static const char *const bad[] = {
    "=", "*", "Q", "QQ", "QQ=", "Q===", "====", "QR==", "QUJ=", "QQ==QQ==", "QU I=",
    "QUI=\r\n", " QUI=", "QUI-", "QU_=", "QQ=A", "\xc3\xa9QQ=",
  };
  unsigned char all[256], *dec = NULL;
  char *enc = NULL;
  size_t i, n = 0, enclen = 0;
  for(i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    CHECK_EQ_INT(auth_b64_decode(good[i].in, strlen(good[i].in), &dec, &n), AUTH_OK);
    CHECK(dec && n == good[i].outlen && !memcmp(dec, good[i].out, n) && dec[n] == '\0');
    free(dec);
    CHECK_EQ_INT(auth_b64_encode((const unsigned char *)good[i].out, good[i].outlen, &enc,
                                 &enclen), AUTH_OK);
    CHECK_EQ_STR(enc, good[i].in);
    free(enc);
  }
  for(i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    dec = (unsigned char *)"x";
    if(auth_b64_decode(bad[i], strlen(bad[i]), &dec, &n) != AUTH_FAIL) {
      fprintf(stderr, "accepted bad base64 \"%s\"\n", bad[i]);
      unit_failed = 1;
    }
    CHECK(dec == NULL);
  }
  /* a NUL inside the encoded text is not base64 either */
  CHECK_EQ_INT(auth_b64_decode("QU\0=", 4, &dec, &n), AUTH_FAIL);
  for(i = 0; i < sizeof(all); i++)
    all[i] = (unsigned char)i;
  dec = wire(all, sizeof(all), &n);
  CHECK(dec && n == sizeof(all) && !memcmp(dec, all, n));
  free(dec);
}

static const struct unit_case cases[] = {
  { "plain", test_plain },
  { "login", test_login },
  { "cram_md5", test_cram_md5 },
  { "scram_sha256", test_scram_sha256 },
  { "plain_initial_bytes", test_plain_initial_bytes },
  { "plain_not_in_clear", test_plain_not_in_clear },
  { "auto_choice", test_auto_choice },
  { "retry_after_failure", test_retry_after_failure },
  { "threads", test_threads },
  { "users", test_users },
  { "server_init_refuses_open_sasldb", test_server_init_refuses_open_sasldb },
  { "oauth_strings", test_oauth_strings },
  { "secret_files", test_secret_files },
  { "base64", test_base64 },
};

UNIT_MAIN(cases)
