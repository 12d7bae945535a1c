/* Prints the record inbound_mime_parse makes of a message file (or, with --post
 * CONTENT-TYPE, the record inbound_mime_parse_post makes of a stored Inbound Parse body) as
 * one JSON object; with --att DIR it also writes each attachment's decoded bytes to
 * DIR/N. tests/integration/test_mime.py compares the output with the corpus's expectations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "inbound/inbound.h"

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

int main(int argc, char **argv)
{
  const char *post = NULL, *attdir = NULL, *path = NULL;
  struct inbound_mime *m = NULL;
  unsigned char *data;
  size_t len, i;
  int r, a;
  for(a = 1; a < argc; a++) {
    if(!strcmp(argv[a], "--post") && a + 1 < argc)
      post = argv[++a];
    else if(!strcmp(argv[a], "--att") && a + 1 < argc)
      attdir = argv[++a];
    else
      path = argv[a];
  }
  if(!path) {
    fprintf(stderr, "usage: %s [--post CONTENT-TYPE] [--att DIR] FILE|-\n", argv[0]);
    return 2;
  }
  data = slurp(path, &len);
  if(!data) {
    perror(path);
    return 1;
  }
  r = post ? inbound_mime_parse_post(data, len, post, &m) : inbound_mime_parse(data, len, &m);
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
  return r ? 1 : 0;
}
