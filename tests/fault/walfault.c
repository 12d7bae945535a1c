/* An LD_PRELOAD shim for fault-injection tests: while the file named by POSTERN_FAULT_FLAG
 * exists, every write to a file whose name ends in "-wal" (SQLite's write-ahead log) fails
 * with ENOSPC, as on a full disk. Nothing else changes. Built by the test that uses it:
 *   cc -shared -fPIC -o walfault.so tests/fault/walfault.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int faulty(int fd)
{
  const char *flag = getenv("POSTERN_FAULT_FLAG");
  char link[64], path[4096];
  ssize_t n;
  int saved = errno;
  if(!flag || access(flag, F_OK)) {
    errno = saved;
    return 0;
  }
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof(path) - 1);
  errno = saved;
  if(n < 4)
    return 0;
  path[n] = '\0';
  return !strcmp(path + n - 4, "-wal");
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
#define NEXT(name, type) static type next; if(!next) next = (type)dlsym(RTLD_NEXT, name)

ssize_t write(int fd, const void *buf, size_t len)
{
  NEXT("write", write_fn);
  if(faulty(fd)) {
    errno = ENOSPC;
    return -1;
  }
  return next(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
  NEXT("pwrite", pwrite_fn);
  if(faulty(fd)) {
    errno = ENOSPC;
    return -1;
  }
  return next(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
  NEXT("pwrite64", pwrite64_fn);
  if(faulty(fd)) {
    errno = ENOSPC;
    return -1;
  }
  return next(fd, buf, len, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
  NEXT("writev", writev_fn);
  if(faulty(fd)) {
    errno = ENOSPC;
    return -1;
  }
  return next(fd, iov, cnt);
}
