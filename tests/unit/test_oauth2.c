/* Unit cases of the OAuth2 token engine's pure parts: the table that sorts a token endpoint's
 * refusals into "retry later" and "the operator must act", and the atomic token-file writer. */
#include "auth/auth.h"
#include "tests/unit/unit.h"
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

static void test_classify(void)
{
  static const struct { long status; const char *error, *desc; int want; } t[] = {
    { 0, NULL, NULL, OAUTH2_TRANSIENT },                         /* no answer at all */
    { 500, "server_error", NULL, OAUTH2_TRANSIENT },
    { 503, NULL, NULL, OAUTH2_TRANSIENT },
    { 429, "invalid_grant", NULL, OAUTH2_TRANSIENT },            /* throttled wins */
    { 400, "temporarily_unavailable", NULL, OAUTH2_TRANSIENT },
    { 400, "invalid_grant", "The refresh token is revoked", OAUTH2_REAUTH },
    { 401, "invalid_client", "AADSTS7000215: Invalid client secret provided.", OAUTH2_REAUTH },
    { 400, "invalid_request", "AADSTS70043: The refresh token has expired", OAUTH2_REAUTH },
    { 400, "invalid_request", "AADSTS700082: expired due to inactivity", OAUTH2_REAUTH },
    { 400, "invalid_request", "AADSTS54005: code already redeemed", OAUTH2_REAUTH },
    { 400, "unauthorized_client", NULL, OAUTH2_REAUTH },
    { 400, "something_new", NULL, OAUTH2_REAUTH },               /* won't fix itself */
    { 302, NULL, NULL, OAUTH2_TRANSIENT },
  };
  size_t i;
  for(i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    int got = oauth2_classify(t[i].status, t[i].error, t[i].desc);
    if(got != t[i].want)
      fprintf(stderr, "case %zu: %ld %s: got %d\n", i, t[i].status,
              t[i].error ? t[i].error : "-", got);
    CHECK_EQ_INT(got, t[i].want);
  }
}

static int entries(const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  if(!d)
    return -1;
  while((e = readdir(d)))
    if(strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

static void test_file_write(void)
{
  char dir[] = "/tmp/postern-oauth2-XXXXXX", path[256], bad[300], got[64];
  struct stat st;
  mode_t old = umask(0);
  int fd;
  ssize_t n;

  CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof(path), "%s/id.json", dir);
  /* a wide umask does not widen the token file */
  CHECK_EQ_INT(oauth2_file_write(path, "{\"a\":1}", 7, 0600), 0);
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
  /* replaced whole: the new content, the same mode, no temporary file left */
  CHECK_EQ_INT(oauth2_file_write(path, "{\"b\":2}", 7, 0600), 0);
  fd = open(path, O_RDONLY);
  n = fd >= 0 ? read(fd, got, sizeof(got) - 1) : -1;
  if(fd >= 0)
    close(fd);
  CHECK_EQ_INT(n, 7);
  got[n > 0 ? n : 0] = '\0';
  CHECK_EQ_STR(got, "{\"b\":2}");
  CHECK_EQ_INT(entries(dir), 1);
  /* a write that cannot happen leaves nothing behind */
  snprintf(bad, sizeof(bad), "%s/missing/id.json", dir);
  CHECK(oauth2_file_write(bad, "x", 1, 0600) != 0);
  CHECK_EQ_INT(entries(dir), 1);
  umask(old);
  unlink(path);
  rmdir(dir);
}

static const struct unit_case cases[] = {
  { "classify", test_classify },
  { "file_write", test_file_write },
};
UNIT_MAIN(cases)
