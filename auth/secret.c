/* Secret files: the one reader of every *_file setting, refusing files others could read, and
 * the wipe-and-free every secret in memory ends with. Calls nothing else in auth/. */
#include "auth/auth.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void auth_secret_free(void *secret, size_t len)
{
  if(!secret)
    return;
  explicit_bzero(secret, len);
  free(secret);
}

int auth_secret_read(const char *path, char **secret, size_t *len, char *err, size_t errsz)
{
  struct stat st;
  char *b = NULL;
  size_t got = 0, cap = AUTH_SECRET_MAX + 2;
  int fd = -1, result = AUTH_OK;

  *secret = NULL;
  *len = 0;
  /* O_NONBLOCK: a FIFO put where a secret should be must not hang start-up; the type check
   * below then refuses it. */
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if(fd < 0) {
    snprintf(err, errsz, "%s: %s", path, strerror(errno));
    return AUTH_ERROR;
  }
  /* Checked on the open descriptor, so the file read is the file judged. */
  if(fstat(fd, &st)) {
    snprintf(err, errsz, "%s: %s", path, strerror(errno));
    result = AUTH_ERROR;
    goto out;
  }
  if(!S_ISREG(st.st_mode)) {
    snprintf(err, errsz, "%s: a secret must be a regular file", path);
    result = AUTH_FAIL;
    goto out;
  }
  if(st.st_mode & 077) {
    snprintf(err, errsz, "%s: group or others may read or write this secret (mode %04o); "
             "run chmod 600 %s", path, (unsigned)(st.st_mode & 07777), path);
    result = AUTH_FAIL;
    goto out;
  }
  if(st.st_size > (off_t)AUTH_SECRET_MAX + 2) {
    snprintf(err, errsz, "%s: larger than %u bytes, not a secret", path, AUTH_SECRET_MAX);
    result = AUTH_FAIL;
    goto out;
  }
  b = malloc(cap + 1);
  if(!b) {
    snprintf(err, errsz, "%s: out of memory", path);
    result = AUTH_ERROR;
    goto out;
  }
  /* Read to the cap rather than to st_size: the file may grow between fstat and read. */
  for(;;) {
    ssize_t n = read(fd, b + got, cap - got);
    if(n < 0 && errno == EINTR)
      continue;
    if(n < 0) {
      snprintf(err, errsz, "%s: %s", path, strerror(errno));
      result = AUTH_ERROR;
      goto out;
    }
    if(!n)
      break;
    got += (size_t)n;
    if(got == cap)
      break;
  }
  /* Editors add a final newline (CRLF on Windows); the secret never contains one there. */
  if(got && b[got - 1] == '\n') {
    got--;
    if(got && b[got - 1] == '\r')
      got--;
  }
  if(got > AUTH_SECRET_MAX) {
    snprintf(err, errsz, "%s: larger than %u bytes, not a secret", path, AUTH_SECRET_MAX);
    result = AUTH_FAIL;
    goto out;
  }
  if(!got) {
    snprintf(err, errsz, "%s: the file is empty", path);
    result = AUTH_FAIL;
    goto out;
  }
  b[got] = '\0';
  *secret = b;
  *len = got;
  b = NULL;
out:
  auth_secret_free(b, cap + 1);
  if(fd >= 0)
    close(fd);
  return result;
}
