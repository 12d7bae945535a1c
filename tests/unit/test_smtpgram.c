/* Table-driven tests of the SMTP grammar (paths and parameters, commands, replies, HELO names)
 * and of the server engine, driven over a socketpair with a fake policy: dot-stuffing, the
 * smuggling endings, bare CR, NUL, long lines, pipelining, BDAT and every session limit. */
#include "unit.h"
#include "global/smtpgram.h"
#include "lib/conn.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "smtp/smtp.h"
#include <errno.h>
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

/* table rows name only the columns they check; the rest are zero on purpose */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* ---- smtp_path_parse ------------------------------------------------------------------- */

struct path_row {
  int is_mail;
  const char *in;
  enum smtp_path_result res;
  const char *path;          /* expected path when res is OK */
  int code;                  /* expected reply code when res is not OK */
  long long size;            /* 0: not checked; -1: absent */
  int utf8;
  int body;
  const char *notify, *orcpt, *ret, *envid;
};

#define M 1
#define R 0
static const struct path_row path_rows[] = {
  { M, "FROM:<a@b.example>", SMTP_PATH_OK, "a@b.example", 0, -1 },
  { M, "from:<A@B.EXAMPLE>", SMTP_PATH_OK, "A@B.EXAMPLE", 0 },
  { M, "FROM: <a@b.example>", SMTP_PATH_OK, "a@b.example", 0 },
  { M, "FROM:   <a@b.example>", SMTP_PATH_OK, "a@b.example", 0 },
  { M, "FROM:<>", SMTP_PATH_OK, "", 0 },
  { M, "FROM:<> SIZE=1000", SMTP_PATH_OK, "", 0, 1000 },
  { M, "FROM:<a@b.c>  SIZE=5  BODY=8BITMIME", SMTP_PATH_OK, "a@b.c", 0, 5, 0, SMTP_BODY_8BITMIME },
  { M, "FROM:<a@b.c> SIZE=abc", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> SIZE=", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> SIZE", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> SIZE=1 SIZE=2", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> SIZE=99999999999999999999", SMTP_PATH_OK, "a@b.c", 0, LLONG_MAX },
  { M, "FROM:<a@b.c> SIZE=123456789012345678901", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> BODY=8BITMIME", SMTP_PATH_OK, "a@b.c", 0, -1, 0, SMTP_BODY_8BITMIME },
  { M, "FROM:<a@b.c> body=binarymime", SMTP_PATH_OK, "a@b.c", 0, -1, 0, SMTP_BODY_BINARYMIME },
  { M, "FROM:<a@b.c> body=7bit", SMTP_PATH_OK, "a@b.c", 0, -1, 0, SMTP_BODY_7BIT },
  { M, "FROM:<a@b.c> BODY=9BIT", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> BODY=7BIT BODY=7BIT", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> FOO=bar", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { M, "FROM:<a@b.c> AUTH=<>", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { M, "FROM:<a@b.c> X-FOO", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { M, "FROM:<a@b.c> NOTIFY=NEVER", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { M, "FROM:<a@b.c> =x", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<\"john doe\"@b.c>", SMTP_PATH_OK, "\"john doe\"@b.c", 0 },
  { M, "FROM:<\"a\\\"b>c\"@b.c>", SMTP_PATH_OK, "\"a\\\"b>c\"@b.c", 0 },
  { M, "FROM:<\"\"@b.c>", SMTP_PATH_OK, "\"\"@b.c", 0 },
  { M, "FROM:<\"unterminated@b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@[192.0.2.1]>", SMTP_PATH_OK, "a@[192.0.2.1]", 0 },
  { M, "FROM:<a@[IPv6:2001:db8::1]>", SMTP_PATH_OK, "a@[IPv6:2001:db8::1]", 0 },
  { M, "FROM:<a@[ipv6:::1]>", SMTP_PATH_OK, "a@[ipv6:::1]", 0 },
  { M, "FROM:<a@[999.1.1.1]>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@[IPv6:zz::]>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@[x-tag:foo]>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@[]>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<@r1.example,@r2.example:a@b.c>", SMTP_PATH_OK, "a@b.c", 0 },
  { M, "FROM:<@r1.example:a@b.c>", SMTP_PATH_OK, "a@b.c", 0 },
  { M, "FROM:<@r1.example:>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<@:a@b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<pel\xc3\xa9@example.com>", SMTP_PATH_NEEDS_UTF8, NULL, 553 },
  { M, "FROM:<pel\xc3\xa9@example.com> SMTPUTF8", SMTP_PATH_OK, "pel\xc3\xa9@example.com", 0, -1, 1 },
  { M, "FROM:<a@\xc3\xa9xample.com> SMTPUTF8", SMTP_PATH_OK, "a@\xc3\xa9xample.com", 0, -1, 1 },
  { M, "FROM:<a@b.c> SMTPUTF8", SMTP_PATH_OK, "a@b.c", 0, -1, 1 },
  { M, "FROM:<a@b.c> SMTPUTF8=yes", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> SMTPUTF8 smtputf8", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<\xc3\x28@example.com> SMTPUTF8", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<\xed\xa0\x80@example.com> SMTPUTF8", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<\xc0\xaf@example.com> SMTPUTF8", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> RET=HDRS ENVID=QQ314159", SMTP_PATH_OK, "a@b.c", 0, -1, 0, 0, NULL, NULL,
    "HDRS", "QQ314159" },
  { M, "FROM:<a@b.c> ret=full", SMTP_PATH_OK, "a@b.c", 0, -1, 0, 0, NULL, NULL, "FULL" },
  { M, "FROM:<a@b.c> RET=PART", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=a+2Bb", SMTP_PATH_OK, "a@b.c", 0, -1, 0, 0, NULL, NULL, NULL, "a+2Bb" },
  { M, "FROM:<a@b.c> ENVID=a+2b", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=a+", SMTP_PATH_SYNTAX, NULL, 501 },
  /* RFC 3461 4.4: the decoded value is printable; CR LF would land in a DSN's header fields */
  { M, "FROM:<a@b.c> ENVID=x+0D+0Ay", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=x+00", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=x+09", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=x+7F", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> ENVID=x+20y", SMTP_PATH_OK, "a@b.c", 0, -1, 0, 0, NULL, NULL, NULL, "x+20y" },
  { M, "FROM:a@b.c", SMTP_PATH_OK, "a@b.c", 0 },
  { M, "FROM:a@b.c SIZE=7", SMTP_PATH_OK, "a@b.c", 0, 7 },
  { M, "FROM:", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c>SIZE=1", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "TO:<a@b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM <a@b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a..b@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<.a@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a.@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@-b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b-.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b..c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c.>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b_c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a b@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<ab.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<@b.c>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a(b)@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { M, "FROM:<a@b.c> RCPT=1", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { R, "TO:<b@c.d>", SMTP_PATH_OK, "b@c.d", 0 },
  { R, "to: <b@c.d>", SMTP_PATH_OK, "b@c.d", 0 },
  { R, "TO:<>", SMTP_PATH_BAD_ADDRESS, NULL, 553 },
  { R, "TO:<postmaster>", SMTP_PATH_OK, "postmaster", 0 },
  { R, "TO:<Postmaster>", SMTP_PATH_OK, "Postmaster", 0 },
  { R, "TO:<postmaster@x.y>", SMTP_PATH_OK, "postmaster@x.y", 0 },
  { R, "TO:<user>", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> NOTIFY=SUCCESS,FAILURE", SMTP_PATH_OK, "b@c.d", 0, 0, 0, 0, "SUCCESS,FAILURE" },
  { R, "TO:<b@c.d> notify=never", SMTP_PATH_OK, "b@c.d", 0, 0, 0, 0, "NEVER" },
  { R, "TO:<b@c.d> NOTIFY=NEVER,SUCCESS", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> NOTIFY=SUCCESS,SUCCESS", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> NOTIFY=SUCCESS,", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> NOTIFY=DELAY NOTIFY=DELAY", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;b@c.d", SMTP_PATH_OK, "b@c.d", 0, 0, 0, 0, NULL, "rfc822;b@c.d" },
  { R, "TO:<b@c.d> ORCPT=rfc822;b+40c.d", SMTP_PATH_OK, "b@c.d", 0, 0, 0, 0, NULL, "rfc822;b+40c.d" },
  { R, "TO:<b@c.d> ORCPT=b@c.d", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;a+zz", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;b@c.d+0D+0ABcc:x@y", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;b+0A@c.d", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> ORCPT=rfc822;b+1F@c.d", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<b@c.d> SIZE=10", SMTP_PATH_BAD_PARAM, NULL, 555 },
  { R, "TO:<b@c.d> SMTPUTF8", SMTP_PATH_BAD_PARAM, NULL, 555 },
  /* the RCPT's need for SMTPUTF8 is decided against the transaction, by the server */
  { R, "TO:<\xce\xb4@\xcf\x80.example>", SMTP_PATH_OK, "\xce\xb4@\xcf\x80.example", 0 },
  { R, "TO:<\xff@x.example>", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "FROM:<b@c.d>", SMTP_PATH_SYNTAX, NULL, 501 },
  { R, "TO:<@relay.example:b@c.d>", SMTP_PATH_OK, "b@c.d", 0 },
  { R, "TO:b@c.d", SMTP_PATH_OK, "b@c.d", 0 },
};

static void test_path_table(void)
{
  size_t i;
  for(i = 0; i < sizeof(path_rows) / sizeof(path_rows[0]); i++) {
    const struct path_row *t = &path_rows[i];
    struct smtp_path_params p;
    struct smtp_reply r;
    enum smtp_path_result res;
    memset(&r, 0, sizeof(r));
    res = smtp_path_parse(t->in, strlen(t->in), t->is_mail, &p, &r);
    if(res != t->res) {
      fprintf(stderr, "row %zu \"%s\": result %d, expected %d (%d %s %s)\n", i, t->in, res, t->res,
              r.code, r.enh, r.text);
      unit_failed = 1;
      continue;
    }
    if(res != SMTP_PATH_OK) {
      if(r.code != t->code || !r.enh[0]) {
        fprintf(stderr, "row %zu \"%s\": reply %d %s, expected %d\n", i, t->in, r.code, r.enh,
                t->code);
        unit_failed = 1;
      }
      continue;
    }
    if(strcmp(p.path, t->path) || p.pathlen != strlen(t->path)) {
      fprintf(stderr, "row %zu \"%s\": path \"%s\", expected \"%s\"\n", i, t->in, p.path, t->path);
      unit_failed = 1;
    }
    if(t->size && p.size != t->size) {
      fprintf(stderr, "row %zu: size %lld expected %lld\n", i, p.size, t->size);
      unit_failed = 1;
    }
    if(p.smtputf8 != t->utf8 || (int)p.body != t->body) {
      fprintf(stderr, "row %zu: smtputf8 %d body %d\n", i, p.smtputf8, (int)p.body);
      unit_failed = 1;
    }
    if((t->notify && strcmp(p.notify, t->notify)) || (!t->notify && p.notify[0]) ||
       (t->orcpt && strcmp(p.orcpt, t->orcpt)) || (!t->orcpt && p.orcpt[0]) ||
       (t->ret && strcmp(p.ret, t->ret)) || (!t->ret && p.ret[0]) ||
       (t->envid && strcmp(p.envid, t->envid)) || (!t->envid && p.envid[0])) {
      fprintf(stderr, "row %zu: notify=%s orcpt=%s ret=%s envid=%s\n", i, p.notify, p.orcpt,
              p.ret, p.envid);
      unit_failed = 1;
    }
  }
}

/* the 256-octet cap counts the angle brackets (RFC 5321 4.5.3.1.3) */
static void test_path_lengths(void)
{
  char in[600], dom[300];
  struct smtp_path_params p;
  struct smtp_reply r;
  size_t local, i;
  /* domain: 3 labels of 63 + "com" = 195 octets */
  memset(dom, 'd', 63);
  dom[63] = '.';
  memset(dom + 64, 'e', 63);
  dom[127] = '.';
  memset(dom + 128, 'f', 63);
  memcpy(dom + 191, ".com", 5);
  /* "<" + local + "@" + 195 + ">" == 256 -> local = 58 */
  for(local = 58; local <= 59; local++) {
    size_t n = 0;
    memcpy(in, "FROM:<", 6);
    n = 6;
    for(i = 0; i < local; i++)
      in[n++] = 'l';
    in[n++] = '@';
    memcpy(in + n, dom, 195);
    n += 195;
    in[n++] = '>';
    in[n] = '\0';
    CHECK_EQ_INT(smtp_path_parse(in, n, 1, &p, &r), local == 58 ? SMTP_PATH_OK : SMTP_PATH_TOO_LONG);
    if(local == 58)
      CHECK_EQ_INT(p.pathlen, 254);
    else
      CHECK_EQ_INT(r.code, 501);
  }
  /* a label of 64 octets is not a DNS label */
  memcpy(in, "TO:<a@", 6);
  memset(in + 6, 'x', 64);
  memcpy(in + 70, ".com>", 6);
  CHECK_EQ_INT(smtp_path_parse(in, strlen(in), 0, &p, &r), SMTP_PATH_SYNTAX);
  /* ENVID over 100 characters */
  memcpy(in, "FROM:<> ENVID=", 14);
  memset(in + 14, 'e', 101);
  in[115] = '\0';
  CHECK_EQ_INT(smtp_path_parse(in, strlen(in), 1, &p, &r), SMTP_PATH_SYNTAX);
  in[114] = '\0';
  CHECK_EQ_INT(smtp_path_parse(in, strlen(in), 1, &p, &r), SMTP_PATH_OK);
  /* explicit lengths: a NUL inside the argument is not an end */
  CHECK_EQ_INT(smtp_path_parse("TO:<a@b.c>\0 X=1", 16, 0, &p, &r), SMTP_PATH_SYNTAX);
  CHECK_EQ_INT(smtp_path_parse("TO:<a\0@b.c>", 11, 0, &p, &r), SMTP_PATH_SYNTAX);
  /* only the given length is read */
  CHECK_EQ_INT(smtp_path_parse("TO:<a@b.c> SIZE=1", 10, 0, &p, &r), SMTP_PATH_OK);
}

/* ---- smtp_command_parse ---------------------------------------------------------------- */

struct cmd_row {
  const char *in;
  size_t len;                /* 0: strlen */
  int res;
  enum smtp_verb verb;
  const char *arg;
};

static const struct cmd_row cmd_rows[] = {
  { "EHLO foo.example", 0, 0, SMTP_VERB_EHLO, "foo.example" },
  { "ehlo  foo  ", 0, 0, SMTP_VERB_EHLO, "foo" },
  { "Helo x", 0, 0, SMTP_VERB_HELO, "x" },
  { "MAIL FROM:<a@b.c> SIZE=10", 0, 0, SMTP_VERB_MAIL, "FROM:<a@b.c> SIZE=10" },
  { "rcpt TO:<a@b.c>", 0, 0, SMTP_VERB_RCPT, "TO:<a@b.c>" },
  { "DATA", 0, 0, SMTP_VERB_DATA, "" },
  { "BDAT 100 LAST", 0, 0, SMTP_VERB_BDAT, "100 LAST" },
  { "RSET", 0, 0, SMTP_VERB_RSET, "" },
  { "NOOP anything", 0, 0, SMTP_VERB_NOOP, "anything" },
  { "QUIT", 0, 0, SMTP_VERB_QUIT, "" },
  { "VRFY x", 0, 0, SMTP_VERB_VRFY, "x" },
  { "EXPN list", 0, 0, SMTP_VERB_EXPN, "list" },
  { "HELP", 0, 0, SMTP_VERB_HELP, "" },
  { "starttls", 0, 0, SMTP_VERB_STARTTLS, "" },
  { "AUTH PLAIN", 0, 0, SMTP_VERB_AUTH, "PLAIN" },
  { "MAILX FROM:<a@b>", 0, 0, SMTP_VERB_UNKNOWN, "FROM:<a@b>" },
  { "MAI", 0, 0, SMTP_VERB_UNKNOWN, "" },
  { "", 0, 0, SMTP_VERB_UNKNOWN, "" },
  { "QUIT\tnow", 0, 0, SMTP_VERB_UNKNOWN, "" },
  { "RCPT TO:<pel\xc3\xa9@x.y>", 0, 0, SMTP_VERB_RCPT, "TO:<pel\xc3\xa9@x.y>" },
  { "DATA\0x", 6, -1, SMTP_VERB_UNKNOWN, NULL },
  { "NOOP\r", 0, -1, SMTP_VERB_UNKNOWN, NULL },
  { "NOOP\rQUIT", 0, -1, SMTP_VERB_UNKNOWN, NULL },
  { "HELO \x7f", 0, -1, SMTP_VERB_UNKNOWN, NULL },
  { "HELO \x1b[0m", 0, -1, SMTP_VERB_UNKNOWN, NULL },
  { "QUIT", 3, 0, SMTP_VERB_UNKNOWN, "" },
};

static void test_command_table(void)
{
  size_t i;
  for(i = 0; i < sizeof(cmd_rows) / sizeof(cmd_rows[0]); i++) {
    const struct cmd_row *t = &cmd_rows[i];
    struct smtp_command c;
    size_t len = t->len ? t->len : strlen(t->in);
    int res = smtp_command_parse(t->in, len, &c);
    if(res != t->res) {
      fprintf(stderr, "cmd row %zu: result %d\n", i, res);
      unit_failed = 1;
      continue;
    }
    if(res)
      continue;
    if(c.verb != t->verb) {
      fprintf(stderr, "cmd row %zu: verb %d expected %d\n", i, c.verb, t->verb);
      unit_failed = 1;
    }
    if(t->verb != SMTP_VERB_UNKNOWN || t->arg[0]) {
      if(c.arglen != strlen(t->arg) || memcmp(c.arg, t->arg, c.arglen)) {
        fprintf(stderr, "cmd row %zu: arg \"%.*s\" expected \"%s\"\n", i, (int)c.arglen, c.arg,
                t->arg);
        unit_failed = 1;
      }
    }
  }
}

/* ---- smtp_reply_parse_line ------------------------------------------------------------- */

struct reply_row {
  const char *in;
  int res, code, more;
  const char *enh, *text;
};

static const struct reply_row reply_rows[] = {
  { "250 2.0.0 Ok", 0, 250, 0, "2.0.0", "Ok" },
  { "250-PIPELINING", 0, 250, 1, "", "PIPELINING" },
  { "250-2.1.5 Ok", 0, 250, 1, "2.1.5", "Ok" },
  { "250", 0, 250, 0, "", "" },
  { "250 ", 0, 250, 0, "", "" },
  { "250 2.0.0", 0, 250, 0, "2.0.0", "" },
  { "550 5.1.1 <x@y>: Recipient address rejected", 0, 550, 0, "5.1.1",
    "<x@y>: Recipient address rejected" },
  { "421 4.4.2 host Error: timeout exceeded", 0, 421, 0, "4.4.2", "host Error: timeout exceeded" },
  { "451 4.3.123 x", 0, 451, 0, "4.3.123", "x" },
  { "250 4.0.0 class mismatch", 0, 250, 0, "", "4.0.0 class mismatch" },
  { "250 2.0.1234 x", 0, 250, 0, "", "2.0.1234 x" },
  { "250 2.0 x", 0, 250, 0, "", "2.0 x" },
  { "354 End data with <CR><LF>.<CR><LF>", 0, 354, 0, "", "End data with <CR><LF>.<CR><LF>" },
  { "220 mx.example ESMTP", 0, 220, 0, "", "mx.example ESMTP" },
  { "25", -1 },
  { "2500 x", -1 },
  { "250x", -1 },
  { "abc def", -1 },
  { "600 x", -1 },
  { "150 x", -1 },
  { "250 a\rb", -1 },
};

static void test_reply_table(void)
{
  size_t i;
  for(i = 0; i < sizeof(reply_rows) / sizeof(reply_rows[0]); i++) {
    const struct reply_row *t = &reply_rows[i];
    struct smtp_reply r;
    int more = -1;
    int res = smtp_reply_parse_line(t->in, strlen(t->in), &r, &more);
    if(res != t->res) {
      fprintf(stderr, "reply row %zu \"%s\": result %d\n", i, t->in, res);
      unit_failed = 1;
      continue;
    }
    if(res)
      continue;
    if(r.code != t->code || more != t->more || strcmp(r.enh, t->enh) || strcmp(r.text, t->text)) {
      fprintf(stderr, "reply row %zu \"%s\": %d more=%d enh=\"%s\" text=\"%s\"\n", i, t->in,
              r.code, more, r.enh, r.text);
      unit_failed = 1;
    }
  }
  /* a reply line is never NUL-terminated where it is read */
  {
    struct smtp_reply r;
    int more;
    CHECK_EQ_INT(smtp_reply_parse_line("250 2.0.0 Ok trailing", 12, &r, &more), 0);
    CHECK_EQ_STR(r.text, "Ok");
  }
}

static void test_reply_helpers(void)
{
  struct smtp_reply r;
  char out[600];
  smtp_reply_set(&r, 550, "5.7.1", "bad %s", "x\r\n250 ok");
  CHECK_EQ_STR(r.text, "bad x??250 ok");
  CHECK(smtp_reply_is_perm(&r));
  CHECK(!smtp_reply_is_temp(&r));
  CHECK_EQ_STR(smtp_reply_str(&r, out, sizeof(out)), "550 5.7.1 bad x??250 ok");
  smtp_reply_set(&r, 451, NULL, "later");
  CHECK(smtp_reply_is_temp(&r));
  CHECK_EQ_STR(smtp_reply_str(&r, out, sizeof(out)), "451 later");
}

/* ---- mailboxes, HELO names, domains ---------------------------------------------------- */

struct valid_row {
  const char *in;
  int mailbox_ascii, mailbox_utf8, helo;   /* expected results: 0 good, -1 bad */
};

static const struct valid_row valid_rows[] = {
  { "a@b.c", 0, 0, -1 },
  { "a@[10.0.0.1]", 0, 0, -1 },
  { "x@localhost", 0, 0, -1 },
  { "pel\xc3\xa9@x.y", -1, 0, -1 },
  { "mail.example.com", -1, -1, 0 },
  { "CLINIC_PC01", -1, -1, 0 },
  { "[192.0.2.7]", -1, -1, 0 },
  { "[IPv6:::1]", -1, -1, 0 },
  { "192.0.2.7", -1, -1, 0 },
  { "::1", -1, -1, 0 },
  { "bad host", -1, -1, -1 },
  { "a..b", -1, -1, -1 },
  { ".a", -1, -1, -1 },
  { "h\xc3\xa9", -1, -1, -1 },
  { "x(y)", -1, -1, -1 },
  { "", -1, -1, -1 },
};

static void test_valid_table(void)
{
  size_t i;
  for(i = 0; i < sizeof(valid_rows) / sizeof(valid_rows[0]); i++) {
    const struct valid_row *t = &valid_rows[i];
    size_t n = strlen(t->in);
    if(smtp_mailbox_valid(t->in, n, 0) != t->mailbox_ascii ||
       smtp_mailbox_valid(t->in, n, 1) != t->mailbox_utf8 || smtp_helo_valid(t->in, n) != t->helo) {
      fprintf(stderr, "valid row %zu \"%s\": %d %d %d\n", i, t->in, smtp_mailbox_valid(t->in, n, 0),
              smtp_mailbox_valid(t->in, n, 1), smtp_helo_valid(t->in, n));
      unit_failed = 1;
    }
  }
  {
    char longhelo[300];
    memset(longhelo, 'h', sizeof(longhelo));
    CHECK_EQ_INT(smtp_helo_valid(longhelo, 256), -1);
    CHECK_EQ_INT(smtp_helo_valid(longhelo, 255), 0);
  }
}

/* ORCPT travels as xtext; a DSN's Original-Recipient carries the address decoded, the
 * addr-type as it came (RFC 3461 4.2, RFC 3464 2.3.1) */
static const struct { const char *in, *out; } orcpt_rows[] = {
  { "rfc822;b@c.d", "rfc822;b@c.d" },
  { "rfc822;a+2Bb@c.d", "rfc822;a+b@c.d" },
  { "rfc822;b+40c.d", "rfc822;b@c.d" },
  { "rfc822;+2B+3D+20x@c.d", "rfc822;+= x@c.d" },       /* each escape once, not again */
  { "rfc822;a+2B2Bb@c.d", "rfc822;a+2Bb@c.d" },
  { "x+41;a@b", "x+41;a@b" },                            /* the addr-type is not xtext */
  { "RFC822;a;b@c", "RFC822;a;b@c" },
  { "utf-8;user+40example.com", "utf-8;user@example.com" },
  /* not valid ORCPT values: no field rather than a guess */
  { "rfc822;b+0D+0ABcc:x@y", NULL },
  { "rfc822;a+2b@c.d", NULL },                           /* hex digits are upper case */
  { "rfc822;a+2", NULL },
  { "rfc822;", NULL },
  { ";a@b", NULL },
  { "b@c.d", NULL },
  { "rfc822;a b@c", NULL },
  { "rfc822;a=b@c", NULL },
};

static void test_orcpt_decode(void)
{
  size_t i;
  char out[LIM_SMTP_PATH + 16];
  for(i = 0; i < sizeof(orcpt_rows) / sizeof(orcpt_rows[0]); i++) {
    const char *in = orcpt_rows[i].in, *want = orcpt_rows[i].out;
    int rc = smtp_orcpt_decode(in, strlen(in), out, sizeof(out));
    if(want ? rc || strcmp(out, want) : rc != -1) {
      fprintf(stderr, "orcpt row %zu \"%s\": %d \"%s\", expected %s\n", i, in, rc,
              rc ? "" : out, want ? want : "-1");
      unit_failed = 1;
    }
  }
  /* the output is bounded by its size, never written past */
  memset(out, 'Z', sizeof(out));
  CHECK_EQ_INT(smtp_orcpt_decode("rfc822;a+2Bb@c.d", 16, out, 16), -1);
  CHECK_EQ_INT(smtp_orcpt_decode("rfc822;a+2Bb@c.d", 16, out, 17), 0);
  CHECK_EQ_STR(out, "rfc822;a+b@c.d");
  CHECK(out[15] == 'Z' && out[16] == 'Z');
}

static void test_address_domain(void)
{
  size_t n = 0;
  const char *d = smtp_address_domain("a@b.example", 11, &n);
  CHECK(d && n == 9 && !memcmp(d, "b.example", 9));
  d = smtp_address_domain("\"x@y\"@z.example", 15, &n);
  CHECK(d && n == 9 && !memcmp(d, "z.example", 9));
  CHECK(smtp_address_domain("postmaster", 10, &n) == NULL);
  CHECK(smtp_address_domain("a@", 2, &n) == NULL);
  CHECK(smtp_address_domain("", 0, &n) == NULL);
  CHECK(smtp_text_is_ascii("abc", 3));
  CHECK(!smtp_text_is_ascii("a\xc3\xa9", 3));
}

/* ---- the server engine over a socketpair ----------------------------------------------- */

struct fake {
  int nmsg;
  char *last;                /* the last message handed to the policy */
  size_t lastlen;
  size_t last_nrcpts;
  int reject_connect;
  int stop;
};

static int fake_connect(void *ctx, const struct smtp_session_info *s, struct smtp_reply *r)
{
  struct fake *f = ctx;
  if(f->reject_connect) {
    smtp_reply_set(r, 554, "5.7.1", "Go away");
    return 1;
  }
  return 0;
}

static int fake_rcpt(void *ctx, const struct smtp_session_info *s, const struct smtp_envelope *env,
                     const struct smtp_path_params *to, struct smtp_reply *r)
{
  if(!strncmp(to->path, "bad", 3)) {
    smtp_reply_set(r, 550, "5.1.1", "<%s>: Recipient address rejected", to->path);
    return 1;
  }
  return 0;
}

static void fake_message(void *ctx, const struct smtp_session_info *s,
                         const struct smtp_envelope *env, const char *msg, size_t len,
                         struct smtp_reply *r)
{
  struct fake *f = ctx;
  f->nmsg++;
  free(f->last);
  f->last = str_dup_n(msg, len);
  f->lastlen = len;
  f->last_nrcpts = env->nrcpts;
  smtp_reply_set(r, 250, "2.0.0", "Ok: queued as %s", env->id);
}

static const struct smtp_policy fake_policy = {
  fake_connect, NULL, fake_rcpt, fake_message,
};

struct run_opts {
  long long max_size;
  long max_rcpt;
  int max_errors;
  int idle_ms;
  int add_headers;
  int hold_ms;               /* the client keeps its side open this long after writing */
  long long session_ms;
};

struct server_arg {
  int fd;
  struct smtp_server_cfg cfg;
  struct fake *fake;
  volatile int stopping;
};

static void *server_thread(void *p)
{
  struct server_arg *a = p;
  struct conn c;
  conn_init(&c, a->fd, 5000);
  smtp_server_run(&c, &a->cfg, &fake_policy, a->fake);
  conn_free(&c);
  return NULL;
}

struct writer_arg {
  int fd;
  const char *p;
  size_t n;
  int hold_ms;
};

static void *writer_thread(void *p)
{
  struct writer_arg *w = p;
  size_t off = 0;
  while(off < w->n) {
    ssize_t r = send(w->fd, w->p + off, w->n - off, MSG_NOSIGNAL);
    if(r <= 0) {
      if(r < 0 && errno == EINTR)
        continue;
      break;
    }
    off += (size_t)r;
  }
  if(w->hold_ms)
    usleep((useconds_t)w->hold_ms * 1000);
  shutdown(w->fd, SHUT_WR);
  return NULL;
}

/* Runs one session with in as the client's bytes; returns the server's replies. */
static char *session_run(const char *in, size_t n, const struct run_opts *o, struct fake *f)
{
  int sv[2];
  pthread_t st, wt;
  struct server_arg sa;
  struct writer_arg wa;
  struct buf out;
  char tmp[4096];
  memset(&sa, 0, sizeof(sa));
  buf_init(&out, 1u << 24);
  if(socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
    return NULL;
  sa.fd = sv[0];
  sa.fake = f;
  sa.stopping = f->stop;
  sa.cfg.hostname = "mx.test";
  sa.cfg.listener = "test";
  sa.cfg.max_message_size = o && o->max_size ? o->max_size : 100000;
  sa.cfg.max_recipients = o && o->max_rcpt ? o->max_rcpt : 10;
  sa.cfg.max_errors = o && o->max_errors ? o->max_errors : 10;
  sa.cfg.idle_ms = o && o->idle_ms ? o->idle_ms : 5000;
  sa.cfg.session_ms = o && o->session_ms ? o->session_ms : 20000;
  sa.cfg.add_missing_headers = o ? o->add_headers : 0;
  sa.cfg.stopping = &sa.stopping;
  wa.fd = sv[1];
  wa.p = in;
  wa.n = n;
  wa.hold_ms = o ? o->hold_ms : 0;
  pthread_create(&st, NULL, server_thread, &sa);
  pthread_create(&wt, NULL, writer_thread, &wa);
  for(;;) {
    struct pollfd pfd = { sv[1], POLLIN, 0 };
    ssize_t r;
    if(poll(&pfd, 1, 15000) <= 0) {
      fprintf(stderr, "session hung\n");
      unit_failed = 1;
      break;
    }
    r = recv(sv[1], tmp, sizeof(tmp), 0);
    if(r <= 0)
      break;
    buf_add(&out, tmp, (size_t)r);
  }
  pthread_join(wt, NULL);
  pthread_join(st, NULL);
  close(sv[1]);
  if(!out.ptr)
    buf_add(&out, "", 0);
  return buf_steal(&out, NULL);
}

/* The codes of the final lines of each reply, e.g. "220 250 250 354 250 221". */
static void reply_codes(const char *out, char *codes, size_t sz)
{
  size_t len = 0;
  const char *p = out;
  codes[0] = '\0';
  while(*p) {
    const char *nl = strstr(p, "\r\n");
    if(!nl)
      break;
    if(nl - p >= 4 && p[3] == ' ' && len + 5 < sz) {
      if(len)
        codes[len++] = ' ';
      memcpy(codes + len, p, 3);
      len += 3;
      codes[len] = '\0';
    }
    p = nl + 2;
  }
}

static char *run_codes(const char *in, const struct run_opts *o, struct fake *f, char *codes,
                       size_t sz)
{
  char *out = session_run(in, strlen(in), o, f);
  reply_codes(out ? out : "", codes, sz);
  return out;
}

#define HDR "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"

static void test_session_basic(void)
{
  struct fake f = { 0 };
  struct run_opts o = { 0 };
  char codes[256];
  char *out;
  o.add_headers = 1;
  out = run_codes(HDR "Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n", &o, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 250 221");
  CHECK(strstr(out, "220 mx.test ESMTP Postern\r\n") == out);
  CHECK(strstr(out, "250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
                    "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n"));
  CHECK(strstr(out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 "));
  CHECK(strstr(out, "250 2.0.0 Ok: queued as "));
  CHECK(strstr(out, "221 2.0.0 Bye\r\n"));
  CHECK_EQ_INT(f.nmsg, 1);
  CHECK_EQ_INT(f.last_nrcpts, 1);
  if(f.last) {
    const char *body = strstr(f.last, "\r\n\r\n");
    static const char rcvd[] = "Received: from client.example (unknown [unknown])\r\n\tby mx.test "
                               "(Postern) with ESMTP id ";
    CHECK(!strncmp(f.last, rcvd, sizeof(rcvd) - 1));
    CHECK(strstr(f.last, "\r\n\tfor <c@d.example>; "));
    CHECK(strstr(f.last, "Subject: hi\r\nMessage-ID: <"));
    CHECK(strstr(f.last, "@mx.test>\r\nDate: "));
    CHECK(body && !strcmp(body, "\r\n\r\n.leading dot\r\n"));
  }
  free(out);
  free(f.last);
}

static void test_session_headers(void)
{
  struct fake f = { 0 };
  struct run_opts o = { 0 };
  char codes[256];
  char *out;
  o.add_headers = 1;
  /* existing fields (names in any case) are not added twice; folding stays intact */
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                  "RCPT TO:<e@d.example>\r\nDATA\r\nmessage-id: <x@y>\r\nSubject: one\r\n two\r\n"
                  "DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n.\r\nQUIT\r\n", &o, &f,
                  codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 354 250 221");
  CHECK(f.last && !strstr(f.last, "Message-ID:") && !strstr(f.last, "\r\nDate:"));
  CHECK(f.last && strstr(f.last, "Subject: one\r\n two\r\nDATE:"));
  CHECK(f.last && !strstr(f.last, "\tfor <"));   /* two recipients: no "for" */
  CHECK_EQ_INT(f.last_nrcpts, 2);
  free(out);
  /* a folded header ending the section: the new fields go after its continuation */
  out = run_codes(HDR "Subject: one\r\n two\r\n\r\nbody\r\n.\r\nQUIT\r\n", &o, &f, codes,
                  sizeof(codes));
  CHECK(f.last && strstr(f.last, "Subject: one\r\n two\r\nMessage-ID: <"));
  free(out);
  /* no header section at all: the fields go on top, after Received */
  out = run_codes(HDR "just a body line\r\n.\r\nQUIT\r\n", &o, &f, codes, sizeof(codes));
  CHECK(f.last && strstr(f.last, "\r\nMessage-ID: <") && strstr(f.last, "\r\njust a body line\r\n"));
  CHECK(f.last && strstr(f.last, "\r\nDate: ") < strstr(f.last, "just a body"));
  free(out);
  /* add_missing_headers off: only Received */
  o.add_headers = 0;
  out = run_codes(HDR "Subject: x\r\n\r\nb\r\n.\r\nQUIT\r\n", &o, &f, codes, sizeof(codes));
  CHECK(f.last && !strstr(f.last, "Message-ID:") && !strstr(f.last, "\r\nDate:"));
  CHECK(f.last && strstr(f.last, "Received: ") == f.last);
  free(out);
  free(f.last);
}

static void smuggle_case(const char *content, const char *expect_text)
{
  struct fake f = { 0 };
  char codes[256];
  char in[1024];
  char *out;
  snprintf(in, sizeof(in), HDR "%s", content);
  out = run_codes(in, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 550 221");
  CHECK(out && strstr(out, expect_text));
  CHECK_EQ_INT(f.nmsg, 0);
  free(out);
  free(f.last);
}

static void neutralised_case(const char *content, const char *stored)
{
  struct fake f = { 0 };
  char codes[256];
  char in[1024];
  char *out;
  snprintf(in, sizeof(in), HDR "%s", content);
  out = run_codes(in, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 250 221");
  CHECK_EQ_INT(f.nmsg, 1);
  CHECK(f.last && memmem(f.last, f.lastlen, stored, strlen(stored)));
  free(out);
  free(f.last);
}

static void test_session_smuggling(void)
{
  /* the embedded MAIL/RCPT/DATA must never run as commands: a bare LF is a line end, so the
   * fake ends and what follows them are content of the one message */
  neutralised_case("Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@x.example>"
                   "\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n",
                   "\r\nbody\r\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@x.example>\r\n"
                   "DATA\r\nevil\r\n");
  neutralised_case("body\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nevil"
                   "\r\n.\r\nQUIT\r\n", "\r\nbody\r\n.\r\nMAIL FROM:<evil@x.example>\r\n");
  neutralised_case("body\r\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nevil"
                   "\r\n.\r\nQUIT\r\n", "\r\nbody\r\n.\r\nMAIL FROM:<evil@x.example>\r\n");
  /* a stuffed dot line ended by a bare LF is unstuffed like any other */
  neutralised_case("a\n..b\n..\r\n.\r\nQUIT\r\n", "\r\na\r\n.b\r\n.\r\n");
  smuggle_case("body\r.\r\nMAIL FROM:<evil@x.example>\r\n.\r\nQUIT\r\n",
               "550 5.6.0 Message refused: bare CR not allowed");
  smuggle_case("body\r\n.\rMAIL FROM:<evil@x.example>\r\n.\r\nQUIT\r\n", "bare CR not allowed");
  smuggle_case("bare cr\r in text\r\n.\r\nQUIT\r\n", "bare CR not allowed");
  smuggle_case("cr before crlf\r\r\n.\r\nQUIT\r\n", "bare CR not allowed");
}

static void test_session_nul_and_long(void)
{
  struct fake f = { 0 };
  char codes[256];
  static const char nul_in[] = HDR "a\0b\r\n.\r\nQUIT\r\n";
  char *out = session_run(nul_in, sizeof(nul_in) - 1, NULL, &f);
  char *big;
  size_t n;
  reply_codes(out, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 550 221");
  CHECK(strstr(out, "550 5.6.0 Message refused: NUL not allowed"));
  CHECK_EQ_INT(f.nmsg, 0);
  free(out);
  /* 998 octets + CR LF = 1000: the longest line allowed */
  big = malloc(5000);
  n = (size_t)snprintf(big, 5000, "%s", HDR);
  memset(big + n, 'x', 998);
  n += 998;
  n += (size_t)snprintf(big + n, 5000 - n, "\r\n.\r\nQUIT\r\n");
  out = run_codes(big, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 250 221");
  CHECK_EQ_INT(f.nmsg, 1);
  free(out);
  /* 999 + CR LF: accepted, as Postfix does (legacy applications write such lines) */
  n = (size_t)snprintf(big, 5000, "%s", HDR);
  memset(big + n, 'x', 999);
  n += 999;
  n += (size_t)snprintf(big + n, 5000 - n, "\r\n.\r\nNOOP\r\nQUIT\r\n");
  out = run_codes(big, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 250 250 221");
  CHECK_EQ_INT(f.nmsg, 2);
  free(out);
  free(big);
  /* a line longer than the message may be: refused after the real end, the session goes on */
  big = malloc(200000);
  n = (size_t)snprintf(big, 200000, "%s", HDR);
  memset(big + n, 'x', 150000);
  n += 150000;
  n += (size_t)snprintf(big + n, 200000 - n, "\r\n.\r\nNOOP\r\nQUIT\r\n");
  out = run_codes(big, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 500 250 221");
  CHECK(strstr(out, "500 5.6.0 Message refused: line longer than 100000 octets"));
  CHECK_EQ_INT(f.nmsg, 2);
  free(out);
  /* a command line over 512 octets */
  memset(big, 'N', 600);
  memcpy(big + 600, "\r\nNOOP\r\nQUIT\r\n", 15);
  out = run_codes(big, NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 500 250 221");
  CHECK(strstr(out, "500 5.5.2 Error: line too long"));
  free(out);
  free(big);
  free(f.last);
}

static void test_session_pipelining(void)
{
  struct fake f = { 0 };
  char codes[256];
  /* one write with everything; a rejected RCPT in the middle; order must hold */
  char *out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bad@d.example>\r\n"
                        "RCPT TO:<ok@d.example>\r\nDATA\r\nline one\r\n.\r\n"
                        "MAIL FROM:<>\r\nRCPT TO:<x@d.example>\r\nDATA\r\nsecond\r\n.\r\n"
                        "RSET\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 550 250 354 250 250 250 354 250 250 221");
  CHECK_EQ_INT(f.nmsg, 2);
  CHECK(f.last && strstr(f.last, "\r\nsecond\r\n"));
  CHECK(strstr(out, "550 5.1.1 <bad@d.example>: Recipient address rejected\r\n"));
  free(out);
  free(f.last);
}

/* The content scanner on its own: what is stored, the verdict and where DATA ends, fed whole
 * and one octet at a time. */
static const struct {
  int dot;
  const char *in;
  const char *stored;       /* NULL: spoilt */
  unsigned bad;
  int ended;
  size_t used;              /* (size_t)-1: all of it */
} content_cases[] = {
  { 1, "a\r\nb\r\n.\r\nNEXT", "a\r\nb\r\n", 0, 1, 9 },
  { 1, ".\r\n", "", 0, 1, 3 },
  { 1, "a\nb\n.\r\n", "a\r\nb\r\n.\r\n", 0, 0, (size_t)-1 },   /* after a bare LF: content */
  { 1, "a\r\n.\nb\r\n.\r\n", "a\r\n.\r\nb\r\n", 0, 1, (size_t)-1 },
  { 1, "..x\r\n..\r\n", ".x\r\n.\r\n", 0, 0, (size_t)-1 },
  { 1, "a\rb\r\n.\r\n", NULL, SMTP_CONTENT_BAD_CR, 1, (size_t)-1 },
  { 1, "a\r\r\n.\r\n", NULL, SMTP_CONTENT_BAD_CR, 1, (size_t)-1 },
  { 1, "12345678901\r\n.\r\n", NULL, SMTP_CONTENT_BAD_LONG, 1, (size_t)-1 },
  { 1, "1234567890\r\n.\r\n", "1234567890\r\n", 0, 1, (size_t)-1 },
  { 0, "a\nb\r\n.\n", "a\r\nb\r\n.\r\n", 0, 0, (size_t)-1 },
  { 0, "no end", "no end", 0, 0, (size_t)-1 },
  { 0, "end\r", NULL, SMTP_CONTENT_BAD_CR, 0, (size_t)-1 },
  { 0, "1234567890\n1234567890\n123", NULL, SMTP_CONTENT_BAD_SIZE, 0, (size_t)-1 },
};

static void test_content_scanner(void)
{
  size_t i, k;
  for(i = 0; i < sizeof(content_cases) / sizeof(content_cases[0]); i++) {
    size_t n = strlen(content_cases[i].in);
    size_t want_used = content_cases[i].used == (size_t)-1 ? n : content_cases[i].used;
    for(k = 0; k < 2; k++) {
      struct smtp_content sc;
      struct buf out;
      size_t used = 0;
      buf_init(&out, 1000);
      smtp_content_init(&sc, content_cases[i].dot, 10, 24);
      if(k == 0)
        used = smtp_content_scan(&sc, content_cases[i].in, n, &out);
      else
        while(used < n && !sc.ended)
          used += smtp_content_scan(&sc, content_cases[i].in + used, 1, &out);
      if(!content_cases[i].dot)
        smtp_content_finish(&sc);
      CHECK_EQ_INT(sc.bad, content_cases[i].bad);
      CHECK_EQ_INT(sc.ended, content_cases[i].ended);
      CHECK_EQ_INT(used, want_used);
      if(content_cases[i].stored) {
        CHECK_EQ_INT(out.len, strlen(content_cases[i].stored));
        CHECK(out.len == strlen(content_cases[i].stored) &&
              !memcmp(out.ptr ? out.ptr : "", content_cases[i].stored, out.len));
      }
      buf_free(&out);
    }
  }
}

static void test_session_bdat(void)
{
  struct fake f = { 0 };
  struct run_opts o = { 0 };
  char codes[256];
  static const char in[] = "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                           "BDAT 12\r\nSubject: x\r\n" "BDAT 7 LAST\r\nb\x80i\nn\r\n" "QUIT\r\n";
  char *out = session_run(in, sizeof(in) - 1, &o, &f);
  reply_codes(out, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 250 221");
  CHECK(strstr(out, "250 2.0.0 Ok: 12 octets\r\n"));
  CHECK_EQ_INT(f.nmsg, 1);
  /* 8-bit content is kept as it came, a bare LF made a CR LF */
  CHECK(f.last && f.lastlen > 20 &&
        !memcmp(f.last + f.lastlen - 20, "Subject: x\r\nb\x80i\r\nn\r\n", 20));
  free(out);
  /* NUL, and a bare CR whose would-be LF starts the next chunk: 250 to the chunk, DATA's
   * refusal at LAST, nothing delivered */
  f.nmsg = 0;
  {
    static const char nul[] = "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>"
                              "\r\nBDAT 3\r\na\0b" "BDAT 2 LAST\r\n\r\n" "NOOP\r\nQUIT\r\n";
    out = session_run(nul, sizeof(nul) - 1, &o, &f);
    reply_codes(out, codes, sizeof(codes));
    CHECK_EQ_STR(codes, "220 250 250 250 250 550 250 221");
    CHECK(strstr(out, "550 5.6.0 Message refused: NUL not allowed\r\n"));
    free(out);
  }
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                  "BDAT 2\r\na\rBDAT 2 LAST\r\nx\n" "NOOP\r\nQUIT\r\n", NULL, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 550 250 221");
  CHECK(strstr(out, "550 5.6.0 Message refused: bare CR not allowed\r\n"));
  CHECK_EQ_INT(f.nmsg, 0);
  free(out);
  /* a CR at the end of one chunk and its LF at the start of the next is a line end */
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                  "BDAT 2\r\na\rBDAT 3 LAST\r\n\nb\n" "QUIT\r\n", NULL, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 250 221");
  CHECK(f.last && f.lastlen > 6 && !memcmp(f.last + f.lastlen - 6, "a\r\nb\r\n", 6));
  free(out);
  /* chunk of 0 LAST; DATA after BDAT is a bad sequence */
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                  "BDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 503 250 221");
  CHECK(f.last && f.lastlen >= 3 && !memcmp(f.last + f.lastlen - 3, "abc", 3));
  free(out);
  /* a chunk without a transaction is skipped, never read as commands */
  out = run_codes("EHLO c.example\r\nBDAT 6\r\nQUIT\r\nNOOP\r\nQUIT\r\n", NULL, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 503 250 221");
  free(out);
  /* unparseable size: 501 and the session ends */
  out = run_codes("EHLO c.example\r\nBDAT x\r\nNOOP\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 501");
  free(out);
  out = run_codes("EHLO c.example\r\nBDAT 1 LASTX\r\nNOOP\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 501");
  free(out);
  /* over the size limit: drained, 552, the rest of the transaction's chunks absorbed */
  o.max_size = 10;
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                  "BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 4 LAST\r\nabcdNOOP\r\nQUIT\r\n", &o, &f,
                  codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 552 552 250 221");
  CHECK(strstr(out, "552 5.3.4 "));
  CHECK_EQ_INT(f.nmsg, 2);
  free(out);
  free(f.last);
}

static void test_session_limits(void)
{
  struct fake f = { 0 };
  struct run_opts o = { 0 };
  char codes[256];
  char *out;
  char big[400];
  int i;
  o.max_rcpt = 2;
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r1@d.example>\r\n"
                  "RCPT TO:<r2@d.example>\r\nRCPT TO:<r3@d.example>\r\nQUIT\r\n", &o, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 250 452 221");
  CHECK(strstr(out, "452 4.5.3 Error: too many recipients\r\n"));
  free(out);
  memset(&o, 0, sizeof(o));
  o.max_errors = 3;
  out = run_codes("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n", &o, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 500 500 500 421");
  CHECK(strstr(out, "421 4.7.0 mx.test Error: too many errors\r\n"));
  free(out);
  /* size: by SIZE= and by the content itself */
  o.max_errors = 0;
  o.max_size = 100;
  out = run_codes("EHLO c.example\r\nMAIL FROM:<a@b.example> SIZE=101\r\nQUIT\r\n", &o, &f, codes,
                  sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 552 221");
  CHECK(strstr(out, "552 5.3.4 "));
  free(out);
  memset(big, 0, sizeof(big));
  for(i = 0; i < 30; i++)
    memcpy(big + i * 12, "0123456789\r\n", 12);
  {
    char in[1024];
    snprintf(in, sizeof(in), HDR "%s.\r\nNOOP\r\nQUIT\r\n", big);
    out = run_codes(in, &o, &f, codes, sizeof(codes));
    CHECK_EQ_STR(codes, "220 250 250 250 354 552 250 221");
    CHECK(strstr(out, "552 5.3.4 Error: message size exceeds fixed limit"));
    CHECK_EQ_INT(f.nmsg, 0);
    free(out);
  }
  free(f.last);
}

static void test_session_sequence(void)
{
  struct fake f = { 0 };
  char codes[256];
  char *out = run_codes("MAIL FROM:<a@b.example>\r\nHELO c.example\r\nRCPT TO:<c@d.example>\r\n"
                        "DATA\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n"
                        "RCPT TO:<bad@d.example>\r\nDATA\r\nRSET\r\nRCPT TO:<c@d.example>\r\n"
                        "QUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 503 250 503 503 250 503 503 550 554 250 503 221");
  CHECK(strstr(out, "503 5.5.1 Error: send HELO/EHLO first\r\n"));
  CHECK(strstr(out, "503 5.5.1 Error: need MAIL command\r\n"));
  CHECK(strstr(out, "503 5.5.1 Error: nested MAIL command\r\n"));
  CHECK(strstr(out, "554 5.5.1 Error: no valid recipients\r\n"));
  CHECK(strstr(out, "250 mx.test\r\n"));
  free(out);
  out = run_codes("EHLO c.example\r\nVRFY x\r\nEXPN y\r\nHELP\r\nSTARTTLS\r\nAUTH PLAIN\r\n"
                  "XYZZY\r\nEHLO\r\nEHLO bad host\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 252 502 214 502 502 500 501 501 221");
  CHECK(strstr(out, "252 2.5.0 "));
  CHECK(strstr(out, "500 5.5.2 Error: command not recognized\r\n"));
  free(out);
  /* after a message the transaction is over but the session goes on */
  out = run_codes(HDR "x\r\n.\r\nDATA\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354 250 503 221");
  free(out);
  /* an HTTP request ends the session */
  out = run_codes("GET / HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 221");
  free(out);
  free(f.last);
}

static void test_session_utf8(void)
{
  struct fake f = { 0 };
  char codes[256];
  char *out = run_codes("HELO c.example\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\n"
                        "MAIL FROM:<a@b.example> SIZE=10\r\nEHLO c.example\r\n"
                        "MAIL FROM:<pel\xc3\xa9@b.example>\r\nMAIL FROM:<a@b.example>\r\n"
                        "RCPT TO:<\xce\xb4@d.example>\r\nRSET\r\n"
                        "MAIL FROM:<pel\xc3\xa9@b.example> SMTPUTF8\r\nRCPT TO:<\xce\xb4@d.example>\r\n"
                        "DATA\r\nx\r\n.\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 555 555 250 553 250 553 250 250 250 354 250 221");
  CHECK(strstr(out, "553 5.6.7 "));
  CHECK(f.last && strstr(f.last, " with UTF8SMTP id "));
  CHECK(f.last && strstr(f.last, "for <\xce\xb4@d.example>"));
  free(out);
  free(f.last);
}

static void test_session_end_states(void)
{
  struct fake f = { 0 };
  struct run_opts o = { 0 };
  char codes[256];
  char *out;
  f.reject_connect = 1;
  out = run_codes("EHLO c.example\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "554");
  CHECK(strstr(out, "554 5.7.1 Go away\r\n") == out);
  free(out);
  f.reject_connect = 0;
  f.stop = 1;
  out = run_codes("EHLO c.example\r\nQUIT\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 421");
  CHECK(strstr(out, "421 4.3.2 mx.test Service shutting down\r\n"));
  free(out);
  f.stop = 0;
  /* idle timeout while the client says nothing more */
  o.idle_ms = 200;
  o.hold_ms = 1500;
  out = run_codes("EHLO c.example\r\n", &o, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 421");
  CHECK(strstr(out, "421 4.4.2 mx.test Error: timeout exceeded\r\n"));
  free(out);
  /* the session deadline, with a client that keeps talking */
  o.idle_ms = 5000;
  o.session_ms = 300;
  out = run_codes("EHLO c.example\r\n", &o, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 421");
  CHECK(strstr(out, "421 4.4.2 mx.test Error: timeout exceeded\r\n"));
  free(out);
  /* EOF in the middle of DATA: no message, no hang */
  out = run_codes(HDR "half a message\r\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 250 354");
  CHECK_EQ_INT(f.nmsg, 0);
  free(out);
  /* a command cut by EOF is not run */
  out = run_codes("EHLO c.example\r\nQUIT", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250");
  free(out);
  /* bare LF command endings are tolerated (legacy clients); only DATA refuses them */
  out = run_codes("EHLO c.example\nNOOP\nQUIT\n", NULL, &f, codes, sizeof(codes));
  CHECK_EQ_STR(codes, "220 250 250 221");
  free(out);
  free(f.last);
}

/* ---- conn_read_line -------------------------------------------------------------------- */

static void test_conn_lines(void)
{
  int sv[2];
  struct conn c;
  struct buf line;
  unsigned fl;
  static const char in[] = "one\r\ntwo\nthr\ree\r\nn\0l\r\n0123456789\r\n\r\ntail";
  CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  CHECK_EQ_INT(send(sv[1], in, sizeof(in) - 1, 0), (long)sizeof(in) - 1);
  shutdown(sv[1], SHUT_WR);
  conn_init(&c, sv[0], 2000);
  buf_init(&line, 100);
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_OK);
  CHECK(line.len == 3 && !memcmp(line.ptr, "one", 3) && fl == CONN_LINE_CRLF);
  CHECK(conn_has_input(&c));
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_OK);
  CHECK(line.len == 3 && !memcmp(line.ptr, "two", 3) && fl == 0);
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_OK);
  CHECK(line.len == 6 && !memcmp(line.ptr, "thr\ree", 6) && fl == (CONN_LINE_CRLF | CONN_LINE_BARE_CR));
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_OK);
  CHECK(line.len == 3 && !memcmp(line.ptr, "n\0l", 3) && fl == (CONN_LINE_CRLF | CONN_LINE_NUL));
  /* 10 + CR LF = 12 > 11: drained, the first 11 kept */
  CHECK_EQ_INT(conn_read_line(&c, &line, 11, &fl), CONN_TOO_LONG);
  CHECK(line.len == 10 && fl == CONN_LINE_CRLF);
  CHECK_EQ_INT(conn_read_line(&c, &line, 11, &fl), CONN_OK);
  CHECK(line.len == 0 && fl == CONN_LINE_CRLF);
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_OK);
  CHECK(line.len == 4 && fl == CONN_LINE_EOF);
  CHECK_EQ_INT(conn_read_line(&c, &line, 50, &fl), CONN_EOF);
  CHECK(!conn_has_input(&c));
  buf_free(&line);
  conn_free(&c);
  close(sv[1]);
}


/* A stream like tls/ will install: it hands out a few bytes at a time and says EAGAIN every
 * other call, so conn must poll and retry in the direction asked. */
struct fake_stream {
  int fd;
  int calls;
  int closed;
};

static ssize_t fs_read(void *ctx, void *p, size_t n, int *want_write)
{
  struct fake_stream *f = ctx;
  ssize_t r;
  if(f->calls++ % 2) {
    *want_write = f->calls % 4 == 0;
    errno = EAGAIN;
    return -1;
  }
  r = recv(f->fd, p, n > 3 ? 3 : n, MSG_DONTWAIT);
  if(r < 0 && errno == EWOULDBLOCK)
    errno = EAGAIN;
  return r;
}

static ssize_t fs_write(void *ctx, const void *p, size_t n, int *want_read)
{
  struct fake_stream *f = ctx;
  if(f->calls++ % 2) {
    *want_read = 0;
    errno = EAGAIN;
    return -1;
  }
  return send(f->fd, p, n > 1000 ? 1000 : n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static size_t fs_pending(void *ctx)
{
  return 0;
}

static void fs_close(void *ctx)
{
  ((struct fake_stream *)ctx)->closed = 1;
}

static const struct conn_stream_ops fake_ops = { fs_read, fs_write, fs_pending, fs_close };

struct drain {
  int fd;
  char *p;
  size_t cap, got;
};

static void *drain_run(void *arg)
{
  struct drain *d = arg;
  for(;;) {
    char tmp[4096];
    ssize_t r = recv(d->fd, tmp, sizeof(tmp), 0);
    size_t take;
    if(r <= 0)
      break;
    take = (size_t)r;
    if(d->got < d->cap)
      memcpy(d->p + d->got, tmp, take < d->cap - d->got ? take : d->cap - d->got);
    d->got += take;
  }
  return NULL;
}

static void test_conn_stream(void)
{
  int sv[2];
  struct conn c;
  struct buf line, blk;
  struct fake_stream fs = { 0 };
  unsigned fl;
  static char big[70000], back[70010];
  char some[8];
  size_t got = 0;
  static const char in[] = "HELLO there\r\n0123456789rest";
  CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  CHECK_EQ_INT(send(sv[1], in, sizeof(in) - 1, 0), (long)sizeof(in) - 1);
  shutdown(sv[1], SHUT_WR);
  conn_init(&c, sv[0], 2000);
  fs.fd = sv[0];
  conn_set_stream(&c, &fake_ops, &fs);
  buf_init(&line, 100);
  buf_init(&blk, 100);
  CHECK_EQ_INT(conn_read_line(&c, &line, 100, &fl), CONN_OK);
  CHECK(line.len == 11 && !memcmp(line.ptr, "HELLO there", 11) && fl == CONN_LINE_CRLF);
  CHECK_EQ_INT(conn_read_exact(&c, &blk, 10), CONN_OK);
  CHECK(blk.len == 10 && !memcmp(blk.ptr, "0123456789", 10));
  CHECK_EQ_INT(conn_read_exact(&c, NULL, 2), CONN_OK);
  CHECK_EQ_INT(conn_read_some(&c, some, sizeof(some)), 2);   /* what is buffered */
  CHECK(!memcmp(some, "st", 2));
  CHECK_EQ_INT(conn_read_some(&c, some, sizeof(some)), 0);
  CHECK_EQ_INT(conn_read_exact(&c, NULL, 1), CONN_EOF);
  /* writes: more than the 64 KiB write buffer, through the same stream, while the peer
   * reads at its own pace */
  {
    struct drain d = { sv[1], back, sizeof(back), 0 };
    pthread_t t;
    memset(big, 'w', sizeof(big));
    pthread_create(&t, NULL, drain_run, &d);
    CHECK_EQ_INT(conn_write(&c, "x", 1), CONN_OK);
    CHECK_EQ_INT(conn_write(&c, big, sizeof(big)), CONN_OK);
    CHECK_EQ_INT(conn_printf(&c, "%s", "end"), CONN_OK);
    CHECK_EQ_INT(conn_flush(&c), CONN_OK);
    shutdown(sv[0], SHUT_WR);
    pthread_join(t, NULL);
    got = d.got;
  }
  CHECK_EQ_INT(got, sizeof(big) + 4);
  CHECK(back[0] == 'x' && back[1] == 'w' && !memcmp(back + sizeof(big) + 1, "end", 3));
  conn_free(&c);
  CHECK(fs.closed);
  buf_free(&line);
  buf_free(&blk);
  close(sv[1]);
}

/* A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d; conn shows it as IPv4. */
static void test_conn_peer_mapped(void)
{
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  socklen_t alen = sizeof(a6);
  int ls, cs, as, off = 0;
  struct conn c;
  ls = socket(AF_INET6, SOCK_STREAM, 0);
  if(ls < 0)
    return;                  /* no IPv6 here: nothing to map */
  setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
  memset(&a6, 0, sizeof(a6));
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_any;
  if(bind(ls, (struct sockaddr *)&a6, sizeof(a6)) || listen(ls, 1) ||
     getsockname(ls, (struct sockaddr *)&a6, &alen)) {
    close(ls);
    return;
  }
  cs = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a4, 0, sizeof(a4));
  a4.sin_family = AF_INET;
  a4.sin_port = a6.sin6_port;
  a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_EQ_INT(connect(cs, (struct sockaddr *)&a4, sizeof(a4)), 0);
  as = accept(ls, NULL, NULL);
  CHECK(as >= 0);
  conn_init(&c, as, 1000);
  CHECK_EQ_STR(c.peer_ip, "127.0.0.1");
  CHECK_EQ_INT(c.peer.ss_family, AF_INET);
  CHECK(c.peer_port > 0);
  conn_free(&c);
  close(cs);
  close(ls);
}

static const struct unit_case cases[] = {
  { "path_table", test_path_table },
  { "path_lengths", test_path_lengths },
  { "command_table", test_command_table },
  { "reply_table", test_reply_table },
  { "reply_helpers", test_reply_helpers },
  { "valid_table", test_valid_table },
  { "orcpt_decode", test_orcpt_decode },
  { "address_domain", test_address_domain },
  { "conn_lines", test_conn_lines },
  { "conn_stream", test_conn_stream },
  { "conn_peer_mapped", test_conn_peer_mapped },
  { "session_basic", test_session_basic },
  { "session_headers", test_session_headers },
  { "session_smuggling", test_session_smuggling },
  { "session_nul_and_long", test_session_nul_and_long },
  { "session_pipelining", test_session_pipelining },
  { "session_bdat", test_session_bdat },
  { "content_scanner", test_content_scanner },
  { "session_limits", test_session_limits },
  { "session_sequence", test_session_sequence },
  { "session_utf8", test_session_utf8 },
  { "session_end_states", test_session_end_states },
};

UNIT_MAIN(cases)
