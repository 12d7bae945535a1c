/* A table-driven unit-test harness in one header: each test binary lists its cases in a
 * table; `prog` runs them all, `prog --list` names them, `prog NAME` runs one. Output is TAP
 * ("ok N - name" / "not ok N - name"), exit status 1 if any failed. */
#ifndef POSTERN_UNIT_H
#define POSTERN_UNIT_H
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

struct unit_case { const char *name; void (*fn)(void); };

static int unit_failed;
#define CHECK(cond) do { if(!(cond)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
  __FILE__, __LINE__, #cond); unit_failed = 1; } } while(0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if(a_ != b_) { \
  fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_); \
  unit_failed = 1; } } while(0)
#define CHECK_EQ_STR(a, b) do { const char *a_ = (a), *b_ = (b); if(!a_ || !b_ || strcmp(a_, b_)) { \
  fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
  a_ ? a_ : "(null)", b_ ? b_ : "(null)"); unit_failed = 1; } } while(0)

static int unit_main(int argc, char **argv, const struct unit_case *cases, size_t n)
{
  int bad = 0;
  size_t i, ran = 0;
  if(argc > 1 && !strcmp(argv[1], "--list")) {
    for(i = 0; i < n; i++)
      printf("%s\n", cases[i].name);
    return 0;
  }
  for(i = 0; i < n; i++) {
    if(argc > 1 && strcmp(argv[1], cases[i].name))
      continue;
    unit_failed = 0;
    cases[i].fn();
    ran++;
    printf("%s %zu - %s\n", unit_failed ? "not ok" : "ok", ran, cases[i].name);
    bad |= unit_failed;
  }
  printf("1..%zu\n", ran);
  if(!ran) {
    fprintf(stderr, "no test case matched\n");
    return 1;
  }
  return bad;
}
#define UNIT_MAIN(table) int main(int argc, char **argv) { \
  return unit_main(argc, argv, table, sizeof(table) / sizeof(table[0])); }

#endif
