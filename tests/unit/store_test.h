/* What the store's unit tests share: a fresh data_dir per case (mkdtemp), opening a new store
 * in it, and envelopes to accept. Static inline, so each test program takes what it uses. */
#ifndef POSTERN_STORE_TEST_H
#define POSTERN_STORE_TEST_H
#include "store/store.h"
#include "tests/unit/unit.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[PATH_MAX];     /* the mkdtemp parent */
static char datadir[PATH_MAX + 8];  /* tmpdir/data: created by the store */

static inline void dir_make(void)
{
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/test_store.XXXXXX", base && *base ? base : "/tmp");
  if(!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(datadir, sizeof(datadir), "%s/data", tmpdir);
}

static inline void dir_remove(void)
{
  static const char *const names[] = { "postern.db", "postern.db-wal", "postern.db-shm",
                                       "postern.db-journal" };
  char p[PATH_MAX + 32];
  size_t i;
  for(i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    snprintf(p, sizeof(p), "%s/%s", datadir, names[i]);
    unlink(p);
  }
  rmdir(datadir);
  rmdir(tmpdir);
}

static inline long long wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline struct store *open_new(int flags)
{
  struct store *st = NULL;
  char err[256];
  int r = store_open(datadir, flags | STORE_OPEN_CREATE, &st, err, sizeof(err));
  if(r)
    fprintf(stderr, "store_open: %s\n", err);
  CHECK_EQ_INT(r, STORE_OK);
  return st;
}

/* Fills m (pointing into static-lifetime strings) with an envelope and n recipients. */
static inline void msg_fill(struct store_msg *m, struct store_rcpt *rcpts, const char *id,
                            const char *sender, long long created, const char *const *addrs, size_t n)
{
  size_t i;
  memset(m, 0, sizeof(*m));
  snprintf(m->id, sizeof(m->id), "%s", id);
  m->sender = (char *)sender;
  m->created_ms = created;
  m->source = (char *)"submission";
  m->listener = (char *)"submission";
  m->client_addr = (char *)"127.0.0.1";
  m->helo = (char *)"app.example";
  for(i = 0; i < n; i++) {
    memset(&rcpts[i], 0, sizeof(rcpts[i]));
    rcpts[i].idx = (unsigned)i;
    rcpts[i].address = (char *)addrs[i];
  }
  m->rcpts = rcpts;
  m->nrcpts = n;
}

static inline int accept_simple(struct store *st, const char *id, const char *sender,
                                long long created, const char *rcpt)
{
  struct store_msg m;
  struct store_rcpt r[1];
  const char *addrs[1] = { rcpt };
  msg_fill(&m, r, id, sender, created, addrs, 1);
  return store_accept(st, &m, "Subject: x\r\n\r\nhi\r\n", 18);
}

#endif
