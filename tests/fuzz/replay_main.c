/* A main() for fuzz targets built without libFuzzer: runs LLVMFuzzerTestOneInput once on each
 * file named on the command line, or on every file in the directories named, so the ordinary
 * test suite replays the corpora (and every crash ever found) with gcc. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  unsigned char *p = NULL;
  size_t len = 0, cap = 0;
  if(!f) {
    perror(path);
    return -1;
  }
  for(;;) {
    size_t got;
    if(len == cap) {
      unsigned char *np;
      cap = cap ? cap * 2 : 4096;
      np = realloc(p, cap);
      if(!np) {
        free(p);
        fclose(f);
        return -1;
      }
      p = np;
    }
    got = fread(p + len, 1, cap - len, f);
    len += got;
    if(got == 0)
      break;
  }
  fclose(f);
  /* an exact-size copy, so a sanitizer build catches a read one past the end */
  {
    unsigned char *exact = malloc(len ? len : 1);
    if(!exact) {
      free(p);
      return -1;
    }
    if(len)
      memcpy(exact, p, len);
    free(p);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
  }
  return 0;
}

static int cmp_names(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir, size_t *count)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  char **names = NULL;
  size_t n = 0, cap = 0, i;
  int bad = 0;
  if(!d) {
    perror(dir);
    return -1;
  }
  while((e = readdir(d))) {
    if(e->d_name[0] == '.')
      continue;
    if(n == cap) {
      char **nn;
      cap = cap ? cap * 2 : 64;
      nn = realloc(names, cap * sizeof(*names));
      if(!nn)
        break;
      names = nn;
    }
    names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
    if(!names[n])
      break;
    snprintf(names[n], strlen(dir) + strlen(e->d_name) + 2, "%s/%s", dir, e->d_name);
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof(*names), cmp_names);   /* the same order on every machine */
  for(i = 0; i < n; i++) {
    struct stat st;
    if(!stat(names[i], &st) && S_ISREG(st.st_mode)) {
      if(replay_file(names[i]))
        bad = -1;
      else
        (*count)++;
    }
    free(names[i]);
  }
  free(names);
  return bad;
}

int main(int argc, char **argv)
{
  size_t count = 0;
  int i, bad = 0;
  if(argc < 2) {
    fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  for(i = 1; i < argc; i++) {
    struct stat st;
    if(stat(argv[i], &st)) {
      perror(argv[i]);
      bad = 1;
    }
    else if(S_ISDIR(st.st_mode)) {
      if(replay_dir(argv[i], &count))
        bad = 1;
    }
    else if(replay_file(argv[i]))
      bad = 1;
    else
      count++;
  }
  printf("replayed %zu inputs\n", count);
  return bad;
}
