/* postern-sendmail: the sendmail(1) command line that cron, PHP's mail(), logwatch and scripts
 * call. It reads a message (or an SMTP dialogue with -bs) and submits it over SMTP to the first
 * submission listener of the configuration, with the smtp/ client engine; -bp lists the queue
 * and -q flushes it through posternctl's code. Exit codes are sysexits.h, as Postfix's. */
#include "tools/ctl.h"
#include "auth/auth.h"
#include "smtp/smtp.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/vendor.h"
#include <gmime/gmime.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <unistd.h>
#include <sys/socket.h>

#define SM_MAX_RCPTS 1000            /* envelope recipients of one message */
#define SM_HEADER_SLACK (64 * 1024)  /* a From: we add, on top of max_message_size */
#define SM_PUMP_IDLE_MS (LIM_SMTP_IDLE_SECONDS * 1000 + 60000)   /* -bs: after the server's */

static const char usage_text[] =
  "usage: postern-sendmail [-C FILE] [-t] [-i|-oi] [-f SENDER] [-F NAME] [RECIPIENT...]\n"
  "       postern-sendmail [-C FILE] -bs      (SMTP on standard input and output)\n"
  "       postern-sendmail [-C FILE] -bp      (list the queue; also as mailq)\n"
  "       postern-sendmail [-C FILE] -q       (try every deferred message now)\n"
  "\n"
  "Reads a message on standard input and submits it to the first submission listener of\n"
  "the configuration (-C FILE, else $POSTERN_CONFIG, else " CONFIG_DEFAULT_PATH ").\n"
  "  -t          recipients also from the To:, Cc: and Bcc: headers; Bcc: is never sent\n"
  "  -i, -oi     a line with a single dot does not end the message\n"
  "  -f SENDER   the envelope sender (also -r); default: your login name @ hostname\n"
  "  -F NAME     your full name, for the From: header added when the message has none\n"
  "Ignored, as Postfix ignores them: -Am -Ac -B TYPE -G -h N -L LABEL -m -n -N DSN -o* -R RET\n"
  "-U -V ENVID -v -X FILE -qINTERVAL; -bm is the default; -bi and -I (newaliases) do nothing.\n"
  "\n"
  "AUTH: a listener on loopback relays for local clients without it (trusted_networks).\n"
  "When the listener requires it, set POSTERN_SENDMAIL_USER and POSTERN_SENDMAIL_PASSWORD_FILE\n"
  "(a file only its owner may read); the password is sent with CRAM-MD5 unless TLS is on.\n"
  "\n"
  "Exit status (sysexits.h), as Postfix's sendmail:\n"
  "  0  accepted and queued (EX_OK)\n"
  " 64  bad command line, or no recipient at all (EX_USAGE)\n"
  " 65  an address that is not an address, or the message refused (EX_DATAERR)\n"
  " 67  a recipient refused by the listener (EX_NOUSER); the others got the message\n"
  " 69  refused for another reason, or -q with postern not running (EX_UNAVAILABLE)\n"
  " 75  postern is not running or answered 4xx: try again later (EX_TEMPFAIL)\n"
  " 77  the listener wants AUTH, or refused the login (EX_NOPERM)\n"
  " 78  the configuration has problems, or no submission listener (EX_CONFIG)\n";

static void usage(FILE *out)     /* what ctl_usage_error prints, here */
{
  fputs(usage_text, out);
}

enum sm_mode { SM_SEND, SM_SMTP, SM_QUEUE, SM_FLUSH, SM_NOTHING };

struct sm {
  const char *config_arg;
  enum sm_mode mode;
  int extract;                  /* -t */
  int dot_ends;                 /* no -i: a "." line ends the message */
  const char *sender;           /* -f, -r */
  const char *fullname;         /* -F */
  char **rcpt_args;
  size_t nrcpt_args;
  struct config *cfg;
  char *rcpts[SM_MAX_RCPTS];
  size_t nrcpts;
};

static int sm_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sm_fail(int code, const char *fmt, ...)
{
  va_list ap;
  fputs("postern-sendmail: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

/* ---- the command line, as Postfix's sendmail reads it --------------------------------------- */

static int parse_args(struct sm *s, int argc, char **argv)
{
  int i;
  const char *base = strrchr(argv[0], '/');
  base = base ? base + 1 : argv[0];
  s->dot_ends = 1;
  if(!strcmp(base, "mailq"))
    s->mode = SM_QUEUE;
  else if(!strcmp(base, "newaliases"))
    s->mode = SM_NOTHING;
  for(i = 1; i < argc; i++) {
    const char *a = argv[i], *ignored = NULL;
    const char **value = NULL;
    if(!strcmp(a, "--")) {
      i++;
      break;
    }
    if(a[0] != '-' || !a[1]) {
      if(s->nrcpt_args == 0)
        s->rcpt_args = &argv[i];
      else if(s->rcpt_args + s->nrcpt_args != &argv[i])
        return sm_fail(EX_USAGE, "options after recipients: %s", a);
      s->nrcpt_args++;
      continue;
    }
    if(!strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    }
    switch(a[1]) {
    case 't': if(a[2]) goto unknown; s->extract = 1; continue;
    case 'i': if(a[2]) goto unknown; s->dot_ends = 0; continue;
    case 'f': case 'r': value = &s->sender; break;
    case 'F': value = &s->fullname; break;
    case 'C': value = &s->config_arg; break;
    case 'o':
      if(!strcmp(a, "-oi"))
        s->dot_ends = 0;
      else if(!a[2] && ++i >= argc)      /* "-o x value": the setting goes, ignored */
        return sm_fail(EX_USAGE, "-o needs an option");
      continue;                          /* -odi, -oem, -om, -o7...: ignored, as Postfix */
    case 'b':
      if(!strcmp(a, "-bm")) s->mode = SM_SEND;
      else if(!strcmp(a, "-bs")) s->mode = SM_SMTP;
      else if(!strcmp(a, "-bp")) s->mode = SM_QUEUE;
      else if(!strcmp(a, "-bi")) s->mode = SM_NOTHING;
      else if(!strcmp(a, "-bd"))
        return sm_fail(EX_USAGE, "-bd: start the daemon with postern (or systemctl start postern)");
      else
        return sm_fail(EX_USAGE, "%s is not supported (-bm, -bs, -bp, -bi are)", a);
      continue;
    case 'q':
      if(!a[2])
        s->mode = SM_FLUSH;
      else if(a[2] == 'R' || a[2] == 'S' || a[2] == 'I')
        return sm_fail(EX_USAGE, "%s is not supported; -q flushes the whole queue", a);
      continue;                          /* -q30m: the interval is the daemon's business */
    case 'I': if(a[2]) goto unknown; s->mode = SM_NOTHING; continue;
    case 'v': case 'm': case 'n': case 'U': case 'G': case 'A':
      continue;
    case 'B': case 'h': case 'L': case 'N': case 'R': case 'V': case 'X':
      value = &ignored;        /* the value is read and dropped, as Postfix does */
      break;
    default:
      goto unknown;
    }
    /* an option with a value: -fSENDER or -f SENDER */
    if(a[2])
      *value = a + 2;
    else if(++i < argc)
      *value = argv[i];
    else
      return sm_fail(EX_USAGE, "%s needs a value", a);
    continue;
unknown:
    fprintf(stderr, "postern-sendmail: unknown option %s\n", a);
    usage(stderr);
    return EX_USAGE;
  }
  for(; i < argc; i++) {                /* after "--": recipients only */
    if(s->nrcpt_args == 0)
      s->rcpt_args = &argv[i];
    s->nrcpt_args++;
  }
  if(s->mode != SM_SEND && (s->nrcpt_args || s->extract))
    return sm_fail(EX_USAGE, "recipients and -t go with sending a message only");
  return 0;
}

/* ---- addresses ------------------------------------------------------------------------------- */

/* A mailbox as SMTP wants it: unqualified names get our hostname (cron mails "root"); anything
 * that is not a mailbox is refused. Returns a malloc'd string or NULL. */
static char *address_qualify(const struct sm *s, const char *addr, int *bad)
{
  struct buf b;
  char *out = NULL;
  size_t len;
  *bad = 0;
  buf_init(&b, LIM_SMTP_PATH + 1);
  if(buf_addstr(&b, addr) || (!strchr(addr, '@') && buf_addf(&b, "@%s", s->cfg->hostname))) {
    *bad = 1;
    goto out;
  }
  if(smtp_mailbox_valid(b.ptr, b.len, 1)) {
    *bad = 1;
    goto out;
  }
  out = buf_steal(&b, &len);
out:
  buf_free(&b);
  return out;
}

static int rcpt_add(struct sm *s, const char *addr)
{
  size_t i;
  int bad;
  char *q = address_qualify(s, addr, &bad);
  if(!q) {
    char shown[LIM_LOG_FIELD];
    return sm_fail(EX_DATAERR, "bad address syntax: %s",
                   log_repr(shown, sizeof(shown), addr, strlen(addr)));
  }
  for(i = 0; i < s->nrcpts; i++)
    if(!strcasecmp(s->rcpts[i], q)) {
      free(q);
      return 0;
    }
  if(s->nrcpts == SM_MAX_RCPTS) {
    free(q);
    return sm_fail(EX_DATAERR, "more than %d recipients", SM_MAX_RCPTS);
  }
  s->rcpts[s->nrcpts++] = q;
  return 0;
}

/* An RFC 5322 address list ("Name <a@b>, c@d, group: e@f;"), parsed by GMime; groups open up. */
static int addresses_add(struct sm *s, InternetAddressList *list)
{
  int i, n = list ? internet_address_list_length(list) : 0, result = 0;
  for(i = 0; !result && i < n; i++) {
    InternetAddress *ia = internet_address_list_get_address(list, i);
    if(INTERNET_ADDRESS_IS_GROUP(ia))
      result = addresses_add(s, internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia)));
    else if(INTERNET_ADDRESS_IS_MAILBOX(ia))
      result = rcpt_add(s, internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)));
  }
  return result;
}

static int address_list_add(struct sm *s, const char *text)
{
  InternetAddressList *list = internet_address_list_parse(NULL, text);
  int result;
  if(!list || !internet_address_list_length(list)) {
    char shown[LIM_LOG_FIELD];
    if(list)
      g_object_unref(list);
    /* "undisclosed-recipients:;" is a list with no one in it, not an error */
    if(strchr(text, ':') && strchr(text, ';'))
      return 0;
    return sm_fail(EX_DATAERR, "bad address syntax: %s",
                   log_repr(shown, sizeof(shown), text, strlen(text)));
  }
  result = addresses_add(s, list);
  g_object_unref(list);
  return result;
}

/* The envelope sender: -f (may be "Name <a@b>" or "<>"), else the login name @ hostname. */
static int sender_make(struct sm *s, char **out)
{
  const char *given = s->sender;
  char *login_addr = NULL;
  int bad, result = 0;
  *out = NULL;
  if(given && (!strcmp(given, "<>") || !*given)) {
    *out = strdup("");
    return *out ? 0 : EX_OSERR;
  }
  if(given) {
    InternetAddressList *list = internet_address_list_parse(NULL, given);
    InternetAddress *ia = list && internet_address_list_length(list) == 1
                          ? internet_address_list_get_address(list, 0) : NULL;
    if(ia && INTERNET_ADDRESS_IS_MAILBOX(ia))
      *out = address_qualify(s, internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)),
                             &bad);
    if(list)
      g_object_unref(list);
  }
  else {
    struct passwd *pw = getpwuid(getuid());
    login_addr = address_qualify(s, pw ? pw->pw_name : "nobody", &bad);
    *out = login_addr;
  }
  if(!*out) {
    char shown[LIM_LOG_FIELD];
    const char *what = given ? given : "(login name)";
    result = sm_fail(EX_DATAERR, "bad sender address syntax: %s",
                     log_repr(shown, sizeof(shown), what, strlen(what)));
  }
  return result;
}

/* ---- the message ----------------------------------------------------------------------------- */

/* Standard input up to EOF, or to a line with a single dot unless -i. A message over the
 * listener's size is refused here rather than after sending it. */
static int message_read(struct sm *s, struct buf *msg)
{
  char line[8192];
  size_t n = 0;
  int ch, at_start = 1;
  buf_init(msg, (size_t)s->cfg->max_message_size + 2);
  for(;;) {
    ch = getc_unlocked(stdin);
    if(ch != EOF)
      line[n++] = (char)ch;
    if(ch != EOF && ch != '\n' && n < sizeof(line))
      continue;
    /* a whole line (or a full chunk of a long one, or the end) */
    if(s->dot_ends && at_start && ((n == 2 && !memcmp(line, ".\n", 2)) ||
                                   (n == 3 && !memcmp(line, ".\r\n", 3))))
      break;
    if(n && buf_add(msg, line, n))
      return sm_fail(EX_DATAERR, "message larger than max_message_size (%lld bytes)",
                     s->cfg->max_message_size);
    at_start = n && line[n - 1] == '\n';
    n = 0;
    if(ch == EOF)
      break;
  }
  if(ferror(stdin))
    return sm_fail(EX_IOERR, "reading the message: %s", strerror(errno));
  return 0;
}

static int name_is(const char *p, size_t n, const char *name)
{
  return strlen(name) == n && !strncasecmp(p, name, n);
}

/* A field name is printable US-ASCII without blanks or ':' (RFC 5322 ftext), as Postfix's
 * is_header has it: a first line with a colon elsewhere is the body. */
static int name_valid(const char *p, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++)
    if((unsigned char)p[i] <= 32 || (unsigned char)p[i] >= 127)
      return 0;
  return n > 0;
}

/* Walks the header section: Bcc fields are left out of what is sent (whatever -t says: the
 * field would tell every recipient who else got it), -t takes To, Cc and Bcc, and a From: is
 * added when there is none. out receives the message to send. */
static int message_prepare(struct sm *s, const char *sender, const char *p, size_t len,
                           struct buf *out)
{
  size_t pos = 0, body;
  int has_from = 0, result = 0;
  struct buf fields;
  buf_init(&fields, len + 1);
  buf_init(out, len + SM_HEADER_SLACK);
  /* an mbox "From " line in front is not a header */
  if(len >= 5 && !memcmp(p, "From ", 5)) {
    const char *nl = memchr(p, '\n', len);
    pos = nl ? (size_t)(nl - p) + 1 : len;
  }
  body = pos;
  while(body < len) {
    const char *line = p + body, *colon, *end;
    size_t linelen, fieldlen, namelen;
    /* the field: its first line and every continuation line */
    end = memchr(line, '\n', len - body);
    linelen = end ? (size_t)(end - line) + 1 : len - body;
    if(linelen <= 2 && (line[0] == '\n' || (line[0] == '\r' && linelen == 2 && line[1] == '\n')))
      break;                              /* the empty line: the body follows */
    colon = memchr(line, ':', linelen);
    if(!colon || line[0] == ' ' || line[0] == '\t')
      break;                              /* not a header field: the body starts here */
    namelen = (size_t)(colon - line);
    while(namelen && (line[namelen - 1] == ' ' || line[namelen - 1] == '\t'))
      namelen--;
    if(!name_valid(line, namelen))
      break;                              /* "Backup finished: 3 errors" is text, not a field */
    fieldlen = linelen;
    while(body + fieldlen < len && (line[fieldlen] == ' ' || line[fieldlen] == '\t')) {
      end = memchr(line + fieldlen, '\n', len - body - fieldlen);
      fieldlen = end ? (size_t)(end - line) + 1 : len - body;
    }
    if(name_is(line, namelen, "From"))
      has_from = 1;
    if(s->extract && (name_is(line, namelen, "To") || name_is(line, namelen, "Cc") ||
                      name_is(line, namelen, "Bcc"))) {
      size_t off = (size_t)(colon + 1 - line);
      char *value = str_dup_n(colon + 1, fieldlen - off);
      if(!value)
        result = EX_OSERR;
      else {
        char *c;
        int blank = 1;
        for(c = value; *c; c++) {           /* unfold */
          if(*c == '\r' || *c == '\n')
            *c = ' ';
          blank = blank && (*c == ' ' || *c == '\t');
        }
        /* "Cc: " with nobody in it (PHP's mail() writes them): no recipient, as for Postfix */
        result = blank ? 0 : address_list_add(s, value);
        free(value);
      }
      if(result)
        goto out;
    }
    if(!name_is(line, namelen, "Bcc") && buf_add(&fields, line, fieldlen)) {
      result = EX_OSERR;
      goto out;
    }
    body += fieldlen;
  }
  if(!has_from) {
    /* Postfix's cleanup adds one too; -F gives it a name, encoded by GMime when need be */
    InternetAddress *ia = internet_address_mailbox_new(s->fullname ? s->fullname : "",
                                                      *sender ? sender : "MAILER-DAEMON");
    char *text = internet_address_to_string(ia, NULL, TRUE);
    result = !text || buf_addf(out, "From: %s\r\n", text) ? EX_DATAERR : 0;
    g_free(text);
    g_object_unref(ia);
    if(result) {
      result = sm_fail(EX_DATAERR, "cannot write a From: header for -F");
      goto out;
    }
  }
  if(fields.len && buf_add(out, fields.ptr, fields.len))
    result = EX_DATAERR;
  /* a message that is all body ("echo text | sendmail root") gets the empty line that ends
   * the header section: its first line must not pass for a header */
  if(!result && !(len > body && (p[body] == '\n' || (p[body] == '\r' && len > body + 1 &&
                                                     p[body + 1] == '\n'))))
    result = buf_add(out, "\r\n", 2) ? EX_DATAERR : 0;
  if(result || (len > body && buf_add(out, p + body, len - body)))
    result = sm_fail(EX_DATAERR, "message larger than max_message_size");
out:
  buf_free(&fields);
  return result;
}

/* ---- the listener ---------------------------------------------------------------------------- */

/* The first role = submission listener's first address, as a place to connect to: a wildcard
 * address means this machine's loopback. */
static int listener_find(const struct config *cfg, const struct cfg_listener **lout,
                         char *host, size_t hostsz, int *port)
{
  size_t i;
  const char *a, *colon;
  long p;
  for(i = 0; i < cfg->nlisteners; i++)
    if(cfg->listeners[i].role == CFG_ROLE_SUBMISSION && cfg->listeners[i].naddresses)
      break;
  if(i == cfg->nlisteners)
    return sm_fail(EX_CONFIG, "%s has no role = submission listener to submit to", cfg->path);
  *lout = &cfg->listeners[i];
  a = cfg->listeners[i].addresses[0];
  colon = strrchr(a, ':');
  if(!colon || str_to_long(colon + 1, strlen(colon + 1), 1, 65535, &p))
    return sm_fail(EX_CONFIG, "listener %s: cannot read the address %s", (*lout)->name, a);
  *port = (int)p;
  if(a[0] == '[')
    snprintf(host, hostsz, "%.*s", (int)(colon - a - 2 > 0 ? colon - a - 2 : 0), a + 1);
  else
    snprintf(host, hostsz, "%.*s", (int)(colon - a), a);
  if(!host[0] || !strcmp(host, "0.0.0.0") || !strcmp(host, "*"))
    str_copy(host, hostsz, "127.0.0.1");
  else if(!strcmp(host, "::"))
    str_copy(host, hostsz, "::1");
  return 0;
}

/* A reply the listener gave, as an exit code: RFC 3463 classes say whose fault it is. */
static int reply_exit(const struct smtp_reply *r)
{
  if(r->code >= 400 && r->code < 500)
    return EX_TEMPFAIL;
  if(r->code == 530)          /* authentication required: nobody's address is at fault */
    return EX_NOPERM;
  if(!strncmp(r->enh, "5.1.", 4) || !strncmp(r->enh, "5.7.", 4))
    return EX_NOUSER;
  if(!strncmp(r->enh, "5.3.4", 5) || !strncmp(r->enh, "5.6.", 4))
    return EX_DATAERR;
  return EX_UNAVAILABLE;
}

static int reply_fail(const char *what, const struct smtp_reply *r, int code)
{
  char text[LIM_SMTP_REPLY_LINE + 32];
  smtp_reply_str(r, text, sizeof(text));
  return sm_fail(code, "%s: %s", what, text);
}

static int submit(struct sm *s, const char *sender, const struct buf *msg)
{
  const struct cfg_listener *l;
  struct smtp_client_cfg ccfg;
  struct smtp_client *c = NULL;
  struct smtp_client_msg m;
  struct smtp_client_rcpt rcpts[SM_MAX_RCPTS];
  struct smtp_reply r;
  char host[256], where[300];
  const char *user = getenv("POSTERN_SENDMAIL_USER");
  size_t i, accepted = 0;
  int port, rc, result;

  result = listener_find(s->cfg, &l, host, sizeof(host), &port);
  if(result)
    return result;
  snprintf(where, sizeof(where), "%s port %d (listener %s)", host, port, l->name);
  memset(&ccfg, 0, sizeof(ccfg));
  ccfg.host = host;
  ccfg.port = port;
  /* our own daemon: its certificate names the public host, not the loopback address */
  ccfg.tls = l->tls == CFG_TLS_IMPLICIT ? SMTP_CLIENT_TLS_IMPLICIT :
             l->tls == CFG_TLS_STARTTLS ? SMTP_CLIENT_TLS_OPPORTUNISTIC : SMTP_CLIENT_TLS_NONE;
  ccfg.verify_peer = 0;
  ccfg.helo = s->cfg->hostname;
  ccfg.connect_timeout_ms = 10000;
  ccfg.log_name = "postern";
  memset(&r, 0, sizeof(r));
  if(smtp_client_new(&ccfg, &c))
    return sm_fail(EX_OSERR, "out of memory");
  rc = smtp_client_connect(c, &r);
  if(rc == SMTP_CLIENT_FAILED) {
    char text[LIM_SMTP_REPLY_LINE + 32];
    result = sm_fail(EX_TEMPFAIL, "cannot reach postern at %s: is it running? (%s)", where,
                     smtp_reply_str(&r, text, sizeof(text)));
    goto out;
  }
  if(rc || (rc = smtp_client_ehlo(c, &r))) {
    result = reply_fail(where, &r, rc == SMTP_CLIENT_REPLY ? reply_exit(&r) : EX_TEMPFAIL);
    goto out;
  }
  if(l->tls == CFG_TLS_STARTTLS && (smtp_client_caps(c)->flags & SMTP_CAP_STARTTLS) &&
     (rc = smtp_client_starttls(c, &r))) {
    result = reply_fail("STARTTLS", &r, EX_TEMPFAIL);
    goto out;
  }
  if(user) {
    const char *file = getenv("POSTERN_SENDMAIL_PASSWORD_FILE");
    char *secret = NULL, err[256];
    size_t slen = 0;
    if(!file) {
      result = sm_fail(EX_CONFIG, "POSTERN_SENDMAIL_USER is set without "
                       "POSTERN_SENDMAIL_PASSWORD_FILE");
      goto out;
    }
    if(auth_secret_read(file, &secret, &slen, err, sizeof(err))) {
      result = sm_fail(EX_CONFIG, "POSTERN_SENDMAIL_PASSWORD_FILE: %s", err);
      goto out;
    }
    rc = smtp_client_auth(c, NULL, user, secret, slen, &r);
    auth_secret_free(secret, slen);
    if(rc) {
      result = reply_fail("AUTH", &r, rc == SMTP_CLIENT_AUTH ? EX_NOPERM : EX_TEMPFAIL);
      goto out;
    }
  }
  memset(&m, 0, sizeof(m));
  m.sender = sender;
  m.body = msg->ptr ? msg->ptr : "";
  m.len = msg->len;
  for(i = 0; i < msg->len && !m.body_8bit; i++)
    m.body_8bit = (unsigned char)msg->ptr[i] >= 0x80;
  memset(rcpts, 0, sizeof(rcpts[0]) * s->nrcpts);
  for(i = 0; i < s->nrcpts; i++)
    rcpts[i].address = s->rcpts[i];
  rc = smtp_client_send(c, &m, rcpts, s->nrcpts, &r);
  if(rc) {
    result = reply_fail(where, &r, EX_TEMPFAIL);
    goto out;
  }
  for(i = 0; i < s->nrcpts; i++) {
    int code;
    if(rcpts[i].reply.code >= 200 && rcpts[i].reply.code < 300) {
      accepted++;
      continue;
    }
    /* every refusal is told; the exit code is the first one's (4xx wins: try again) */
    code = reply_fail(s->rcpts[i], &rcpts[i].reply, reply_exit(&rcpts[i].reply));
    if(code == EX_NOPERM && !user) {
      fprintf(stderr, "postern-sendmail: listener %s requires AUTH: set POSTERN_SENDMAIL_USER "
              "and POSTERN_SENDMAIL_PASSWORD_FILE\n", l->name);
      result = code;
      break;
    }
    if(!result || code == EX_TEMPFAIL)
      result = code;
  }
  smtp_client_quit(c);
out:
  smtp_client_free(c);
  return result;
}

/* ---- -bs: the SMTP dialogue, relayed ----------------------------------------------------------- */

static int connect_to(const char *host, int port)
{
  struct addrinfo hints, *res = NULL, *ai;
  char portstr[16];
  int fd = -1;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  snprintf(portstr, sizeof(portstr), "%d", port);
  if(getaddrinfo(host, portstr, &hints, &res))
    return -1;
  for(ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if(fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen)) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
  while(n) {
    ssize_t w = write(fd, p, n);
    if(w < 0 && errno == EINTR)
      continue;
    if(w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Bytes both ways until either side is done. A bare LF from the client becomes CR LF: the
 * listener refuses bare LFs (SMTP smuggling) and scripts piping to sendmail -bs send them. */
static int smtp_relay(struct sm *s)
{
  const struct cfg_listener *l;
  char host[256], in[4096], out[8192 + 2];
  int port, fd, result, last_cr = 0;
  struct pollfd p[2];

  result = listener_find(s->cfg, &l, host, sizeof(host), &port);
  if(result)
    return result;
  if(l->tls == CFG_TLS_IMPLICIT)
    return sm_fail(EX_CONFIG, "-bs: listener %s uses implicit TLS; give postern a plain or "
                   "STARTTLS submission listener first", l->name);
  fd = connect_to(host, port);
  if(fd < 0) {
    printf("421 4.3.2 %s postern is not running, try again later\r\n", s->cfg->hostname);
    fflush(stdout);
    return sm_fail(EX_TEMPFAIL, "cannot reach postern at %s port %d: %s", host, port,
                   strerror(errno));
  }
  p[0].fd = 0;
  p[1].fd = fd;
  for(;;) {
    ssize_t n;
    size_t i, o = 0;
    p[0].events = p[1].events = POLLIN;
    if(poll(p, 2, SM_PUMP_IDLE_MS) <= 0)
      break;
    if(p[1].revents) {
      n = read(fd, out, sizeof(out));
      if(n <= 0 || write_all(1, out, (size_t)n))
        break;
    }
    if(p[0].revents) {
      n = read(0, in, sizeof(in));
      if(n <= 0)
        break;
      for(i = 0; i < (size_t)n; i++) {
        if(in[i] == '\n' && !last_cr)
          out[o++] = '\r';
        out[o++] = in[i];
        last_cr = in[i] == '\r';
      }
      if(write_all(fd, out, o))
        break;
    }
  }
  /* what the server says after the client went (the reply to QUIT) still reaches it */
  shutdown(fd, SHUT_WR);
  for(;;) {
    struct pollfd q = { .fd = fd, .events = POLLIN };
    ssize_t n;
    if(poll(&q, 1, 5000) <= 0 || (n = read(fd, out, sizeof(out))) <= 0 ||
       write_all(1, out, (size_t)n))
      break;
  }
  close(fd);
  return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
  struct sm s;
  struct buf raw, msg;
  char *sender = NULL;
  size_t i;
  int result;

  memset(&s, 0, sizeof(s));
  /* message_read and message_prepare set the caps (max_message_size) */
  memset(&raw, 0, sizeof(raw));
  memset(&msg, 0, sizeof(msg));
  log_open("postern-sendmail", 1, 0);
  ctl_usage_init(usage);
  /* a daemon or peer closing mid-exchange is an error to report with our exit code, not a
   * signal that kills us with 141 */
  signal(SIGPIPE, SIG_IGN);
  result = parse_args(&s, argc, argv);
  if(result || s.mode == SM_NOTHING)
    return result;
  if(s.mode == SM_QUEUE || s.mode == SM_FLUSH) {
    /* posternctl's own code: the same table, the same daemon-down handling */
    struct ctl c;
    memset(&c, 0, sizeof(c));
    c.config_arg = s.config_arg;
    c.args[c.nargs++] = "queue";
    c.args[c.nargs++] = s.mode == SM_QUEUE ? "list" : "flush";
    result = ctl_queue(&c);
    store_close(c.st);
    if(c.cfg)
      config_free(c.cfg);
    return result;
  }
  if(config_load(config_choose_path(s.config_arg), stderr, &s.cfg))
    return sm_fail(EX_CONFIG, "the configuration has problems (see above)");
  if(s.mode == SM_SMTP) {
    result = smtp_relay(&s);
    goto out;
  }
  vendor_gmime_start();
  result = sender_make(&s, &sender);
  for(i = 0; !result && i < s.nrcpt_args; i++)
    result = address_list_add(&s, s.rcpt_args[i]);
  if(!result)
    result = message_read(&s, &raw);
  if(!result)
    result = message_prepare(&s, sender, raw.ptr ? raw.ptr : "", raw.len, &msg);
  if(!result && !s.nrcpts)
    result = sm_fail(EX_USAGE, s.extract ? "no recipient addresses found in message header"
                     : "recipients must be given on the command line or with -t");
  if(!result)
    result = submit(&s, sender, &msg);
out:
  for(i = 0; i < s.nrcpts; i++)
    free(s.rcpts[i]);
  free(sender);
  buf_free(&raw);
  buf_free(&msg);
  config_free(s.cfg);
  auth_done();
  return result;
}
