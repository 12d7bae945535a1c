/* Prints the record inbound_mime_parse makes of a message file (or, with --post
 * CONTENT-TYPE, the record inbound_mime_parse_post makes of a stored Inbound Parse body) as
 * one JSON object; with --att DIR it also writes each attachment's decoded bytes to
 * DIR/N; --text-max BYTES is record_text_max; --hwm prints the peak memory (VmHWM) on stderr; with --threads N it first parses the file 50 times in each of N threads at once and
 * fails unless every record equals the single-threaded one (GMime's start and use are
 * thread-safe). tests/integration/test_mime.py compares the output with the corpus's
 * expectations. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "inbound/inbound.h"

static size_t text_max;         /* --text-max: record_text_max */

/* --hwm: this process's peak memory on stderr (a child's rusage would count the memory of
 * the process that forked it) */
static void print_hwm(void)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  while(f && fgets(line, sizeof(line), f))
    if(!strncmp(line, "VmHWM:", 6))
      fputs(line, stderr);
  if(f)
    fclose(f);
}

static unsigned char *slurp(const char *path, size_t *len)
{
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  unsigned char *p = NULL;
  size_t cap = 0, got;
  *len = 0;
  if(!f)
    return NULL;
  for(;;) {
    if(*len == cap) {
      unsigned char *np;
      cap = cap ? cap * 2 : 65536;
      np = realloc(p, cap);
      if(!np) {
        free(p);
        p = NULL;
        break;
      }
      p = np;
    }
    got = fread(p + *len, 1, cap - *len, f);
    *len += got;
    if(!got)
      break;
  }
  if(f != stdin)
    fclose(f);
  return p;
}

struct job {
  const unsigned char *data;
  size_t len;
  const char *post;
  const char *want;
  int bad;
};

static void *worker(void *arg)
{
  struct job *j = arg;
  int i;
  for(i = 0; i < 50; i++) {
    struct inbound_mime *m = NULL;
    int r = j->post ? inbound_mime_parse_post(j->data, j->len, j->post, text_max, &m)
                    : inbound_mime_parse(j->data, j->len, text_max, &m);
    if(r || !m || (j->want && strcmp(m->json, j->want)))
      j->bad = 1;
    inbound_mime_free(m);
  }
  return NULL;
}

/* threads parse at once from a cold start; then each record is compared with a fresh one */
static int run_threads(const unsigned char *data, size_t len, const char *post, int n)
{
  pthread_t t[64];
  struct job jobs[64];
  struct inbound_mime *ref = NULL;
  int i, bad = 0;
  if(n > 64)
    n = 64;
  for(i = 0; i < n; i++) {
    jobs[i].data = data;
    jobs[i].len = len;
    jobs[i].post = post;
    jobs[i].want = NULL;
    jobs[i].bad = 0;
    if(pthread_create(&t[i], NULL, worker, &jobs[i]))
      return 1;
  }
  for(i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    bad |= jobs[i].bad;
  }
  if(post ? inbound_mime_parse_post(data, len, post, text_max, &ref)
          : inbound_mime_parse(data, len, text_max, &ref))
    return 1;
  for(i = 0; i < n; i++) {
    jobs[i].want = ref->json;
    if(pthread_create(&t[i], NULL, worker, &jobs[i]))
      return 1;
  }
  for(i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    bad |= jobs[i].bad;
  }
  inbound_mime_free(ref);
  if(bad)
    fprintf(stderr, "records made in threads differ or failed\n");
  return bad;
}

int main(int argc, char **argv)
{
  const char *post = NULL, *attdir = NULL, *path = NULL;
  int threads = 0, hwm = 0;
  struct inbound_mime *m = NULL;
  unsigned char *data;
  size_t len, i;
  int r, a;
  for(a = 1; a < argc; a++) {
    if(!strcmp(argv[a], "--post") && a + 1 < argc)
      post = argv[++a];
    else if(!strcmp(argv[a], "--att") && a + 1 < argc)
      attdir = argv[++a];
    else if(!strcmp(argv[a], "--hwm"))
      hwm = 1;
    else if(!strcmp(argv[a], "--text-max") && a + 1 < argc)
      text_max = (size_t)strtoull(argv[++a], NULL, 10);
    else if(!strcmp(argv[a], "--threads") && a + 1 < argc)
      threads = (int)strtol(argv[++a], NULL, 10);
    else
      path = argv[a];
  }
  if(!path) {
    fprintf(stderr, "usage: %s [--post CONTENT-TYPE] [--att DIR] [--text-max BYTES] [--hwm] [--threads N] FILE|-\n", argv[0]);
    return 2;
  }
  data = slurp(path, &len);
  if(!data) {
    perror(path);
    return 1;
  }
  if(threads > 0 && run_threads(data, len, post, threads)) {
    free(data);
    return 1;
  }
  r = post ? inbound_mime_parse_post(data, len, post, text_max, &m)
           : inbound_mime_parse(data, len, text_max, &m);
  free(data);
  if(r || !m) {
    fprintf(stderr, "%s: out of memory\n", path);
    return 1;
  }
  printf("%s\n", m->json);
  for(i = 0; attdir && i < m->natt; i++) {
    char name[4096];
    FILE *f;
    snprintf(name, sizeof(name), "%s/%zu", attdir, i);
    f = fopen(name, "wb");
    if(!f || fwrite(m->att[i].data, 1, m->att[i].size, f) != m->att[i].size) {
      perror(name);
      r = 1;
    }
    if(f)
      fclose(f);
  }
  inbound_mime_free(m);
  if(hwm)
    print_hwm();
  return r ? 1 : 0;
}
