/* Unit tests of lib/buf.c: the cap is never exceeded, the bounded string helpers, and the
 * escaping used for attacker bytes in log lines. */
#include "lib/buf.h"
#include "lib/log.h"
#include "tests/unit/unit.h"
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_cap_enforced(void)
{
  struct buf b;
  buf_init(&b, 10);
  CHECK_EQ_INT(buf_add(&b, "0123456789", 10), BUF_OK);
  CHECK_EQ_INT(buf_add(&b, "x", 1), BUF_TOO_BIG);
  CHECK_EQ_INT(b.len, 10);
  CHECK(b.alloc <= 11);
  buf_reset(&b);
  CHECK_EQ_INT(buf_addf(&b, "%d-%s", 42, "abcdefgh"), BUF_TOO_BIG);
  CHECK_EQ_INT(buf_addf(&b, "%d-%s", 42, "abc"), BUF_OK);
  CHECK_EQ_STR(b.ptr, "42-abc");
  buf_free(&b);
}

static void test_growth_and_binary(void)
{
  struct buf b;
  size_t i, len;
  char *p;
  buf_init(&b, 1 << 20);
  for(i = 0; i < 100000; i++)
    CHECK_EQ_INT(buf_add(&b, "\0\r\n", 3), BUF_OK);
  CHECK_EQ_INT(b.len, 300000);
  CHECK(b.ptr[299999] == '\n' && b.ptr[0] == '\0');
  p = buf_steal(&b, &len);
  CHECK_EQ_INT(len, 300000);
  CHECK(b.ptr == NULL && b.len == 0);
  free(p);
}

static void test_reserve_overflow(void)
{
  struct buf b;
  buf_init(&b, SIZE_MAX - 1);
  CHECK_EQ_INT(buf_add(&b, "a", 1), BUF_OK);
  CHECK_EQ_INT(buf_reserve(&b, SIZE_MAX), BUF_TOO_BIG);
  buf_free(&b);
}

static void test_repr(void)
{
  static const struct { const char *in; size_t n; size_t cap; const char *out; } rows[] = {
    { "plain", 5, 100, "plain" },
    { "a\r\nb", 4, 100, "a\\x0d\\x0ab" },
    { "back\\slash", 10, 100, "back\\\\slash" },
    { "\xff\x00z", 3, 100, "\\xff\\x00z" },
    { "abcdef", 6, 3, "abc..." },
  };
  size_t i;
  for(i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    struct buf b;
    buf_init(&b, 1000);
    CHECK_EQ_INT(buf_addrepr(&b, rows[i].in, rows[i].n, rows[i].cap), BUF_OK);
    CHECK_EQ_STR(b.ptr, rows[i].out);
    buf_free(&b);
  }
}

/* for a UTF-8 terminal: characters as they are, controls and ill-formed bytes escaped, the cap
 * never inside a character */
static void test_repr_utf8(void)
{
  static const struct { const char *in; size_t n; size_t cap; const char *out; } rows[] = {
    { "caf\xc3\xa9 \xe2\x9c\x94", 9, 100, "caf\xc3\xa9 \xe2\x9c\x94" },
    { "a\r\n\tb", 5, 100, "a\\x0d\\x0a\\x09b" },
    { "\x1b]2;x\x07", 6, 100, "\\x1b]2;x\\x07" },
    { "del\x7f", 4, 100, "del\\x7f" },
    { "c1\xc2\x9b", 4, 100, "c1\\u{009b}" },
    { "rlo\xe2\x80\xaetxt", 9, 100, "rlo\\u{202e}txt" },
    { "\xe2\x81\xa6iso", 6, 100, "\\u{2066}iso" },
    { "alm\xd8\x9c" "1", 6, 100, "alm\\u{061c}1" },
    { "l\xe2\x80\xa8p\xe2\x80\xa9", 8, 100, "l\\u{2028}p\\u{2029}" },
    { "bad \xff\xc3(", 7, 100, "bad \\xff\\xc3(" },
    { "overlong \xc0\xaf", 11, 100, "overlong \\xc0\\xaf" },
    { "surrogate \xed\xa0\x80", 13, 100, "surrogate \\xed\\xa0\\x80" },
    { "\xf0\x9f\x98\x80!", 5, 100, "\xf0\x9f\x98\x80!" },
    { "back\\slash", 10, 100, "back\\\\slash" },
    { "ab\xc3\xa9", 4, 3, "ab..." },
    { "ab\xc3\xa9", 4, 4, "ab\xc3\xa9" },
  };
  size_t i;
  for(i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    struct buf b;
    buf_init(&b, 1000);
    CHECK_EQ_INT(buf_addrepr_utf8(&b, rows[i].in, rows[i].n, rows[i].cap), BUF_OK);
    CHECK_EQ_STR(b.ptr ? b.ptr : "", rows[i].out);
    buf_free(&b);
  }
}

static void test_log_repr_bounded(void)
{
  char big[5000], out[64];
  memset(big, '\n', sizeof(big));
  log_repr(out, sizeof(out), big, sizeof(big));
  CHECK(strlen(out) < sizeof(out));
  CHECK(!strncmp(out, "\\x0a", 4));
  log_repr(out, sizeof(out), "ok", 2);
  CHECK_EQ_STR(out, "ok");
}

static void test_str_to_long(void)
{
  static const struct { const char *s; long min, max; int ok; long v; } rows[] = {
    { "0", 0, 10, 0, 0 }, { "10", 0, 10, 0, 10 }, { "11", 0, 10, -1, 0 },
    { "-5", -10, 10, 0, -5 }, { "-11", -10, 10, -1, 0 }, { "", 0, 10, -1, 0 },
    { "-", -10, 10, -1, 0 }, { "1a", 0, 100, -1, 0 }, { " 1", 0, 100, -1, 0 },
    { "99999999999999999999999", 0, LONG_MAX, -1, 0 },
    { "9223372036854775807", 0, LONG_MAX, 0, LONG_MAX },
    { "9223372036854775808", 0, LONG_MAX, -1, 0 },
    { "-9223372036854775808", LONG_MIN, 0, 0, LONG_MIN },
    /* 20 digits: v * 10 wrapped an unsigned long long to a small number before the check */
    { "92233720368547758080", 0, LONG_MAX, -1, 0 },
    { "18446744073709551616", 0, LONG_MAX, -1, 0 },
    { "18446744073709551626", 0, LONG_MAX, -1, 0 },
    { "-92233720368547758080", LONG_MIN, 0, -1, 0 },
    { "-18446744073709551617", LONG_MIN, 0, -1, 0 },
    { "00000000000000000000000000042", 0, 100, 0, 42 },
    { "-9223372036854775809", LONG_MIN, 0, -1, 0 },
    { "9223372036854775807", 0, 100, -1, 0 },
    { "-0", 0, 10, 0, 0 }, { "+7", 0, 10, 0, 7 }, { "+", 0, 10, -1, 0 },
    { "-9223372036854775808", -1, 0, -1, 0 },
  };
  size_t i;
  for(i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    long v = 12345;
    int r = str_to_long(rows[i].s, strlen(rows[i].s), rows[i].min, rows[i].max, &v);
    CHECK_EQ_INT(r, rows[i].ok);
    if(!r)
      CHECK_EQ_INT(v, rows[i].v);
  }
}

static void test_str_helpers(void)
{
  char small[4];
  char *d;
  CHECK_EQ_INT(str_copy(small, sizeof(small), "abcdef"), 3);
  CHECK_EQ_STR(small, "abc");
  CHECK_EQ_INT(str_casecmp_n("MAIL", 4, "mail"), 0);
  CHECK(str_casecmp_n("MAI", 3, "mail") != 0);
  CHECK(str_casecmp_n("MAILX", 5, "mail") != 0);
  d = str_dup_n("a\0b", 3);
  CHECK(d && d[0] == 'a' && d[1] == '\0' && d[2] == 'b' && d[3] == '\0');
  free(d);
}

/* A zero cap is a cap someone forgot: a debug build stops at buf_init, not at the first byte
 * refused far away. Run in a child, which must die of the assertion. */
static void test_zero_cap_refused(void)
{
#ifdef NDEBUG
  CHECK(1);                      /* release builds without assertions: nothing to see */
#else
  int status = 0;
  pid_t pid = fork();
  if(pid == 0) {
    struct buf b;
    /* the assertion's message is expected: keep it out of the test's output */
    if(!freopen("/dev/null", "w", stderr))
      _exit(3);
    buf_init(&b, 0);
    _exit(0);
  }
  CHECK(pid > 0);
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
#endif
}

static const struct unit_case cases[] = {
  { "zero_cap_refused", test_zero_cap_refused },
  { "cap_enforced", test_cap_enforced },
  { "growth_and_binary", test_growth_and_binary },
  { "reserve_overflow", test_reserve_overflow },
  { "repr", test_repr },
  { "repr_utf8", test_repr_utf8 },
  { "log_repr_bounded", test_log_repr_bounded },
  { "str_to_long", test_str_to_long },
  { "str_helpers", test_str_helpers },
};
UNIT_MAIN(cases)
