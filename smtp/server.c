/* The ESMTP server engine (RFC 5321, with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES,
 * SMTPUTF8, CHUNKING, DSN, STARTTLS and AUTH): one sequential session over a struct conn, every
 * decision about who and what is accepted left to the listener's policy object. */
#include "smtp/smtp.h"
#include "tls/tls.h"
#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "global/metrics.h"
#include "global/proxy.h"
#include <arpa/inet.h>
#include "store/store.h"
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Room kept past max_message_size for what we add in front of a message (Received, and
 * Message-ID/Date): the added lines are short and bounded, this is generous. */
#define MSG_MARGIN 8192
/* A HELO name is recorded in Received bounded to this, so the header stays one sane line. */
#define HELO_IN_RECEIVED 100
/* How long the last replies of a session may take to leave, whatever the deadline says. */
#define FINAL_FLUSH_MS 5000

enum stat_idx {
  ST_HELO, ST_EHLO, ST_MAIL, ST_RCPT, ST_DATA, ST_BDAT, ST_RSET, ST_NOOP, ST_QUIT, ST_VRFY,
  ST_EXPN, ST_HELP, ST_STARTTLS, ST_AUTH, ST_UNKNOWN, ST_N
};
static const char *const stat_names[ST_N] = {
  "helo", "ehlo", "mail", "rcpt", "data", "bdat", "rset", "noop", "quit", "vrfy", "expn", "help",
  "starttls", "auth", "unknown",
};

struct session {
  struct conn *c;
  const struct smtp_server_cfg *cfg;
  const struct smtp_policy *pol;
  void *pctx;
  const char *host;
  struct smtp_session_info info;
  struct smtp_envelope env;
  size_t rcpt_alloc;
  int rcpt_tried;         /* RCPT commands in this transaction, accepted or not */
  int rcpt_overshoot;     /* RCPTs past max_recipients in this transaction */
  long long max_size;
  long max_rcpt;
  int max_errors;

  int helo_done;
  int in_mail;            /* a MAIL was accepted: a transaction is open */
  int bdat_active;        /* the transaction's content started with BDAT */
  int bdat_failed;        /* a failed BDAT transaction: absorb its chunks until LAST */
  struct smtp_reply bdat_fail;
  struct smtp_content scan;  /* the content of the transaction (DATA or every BDAT chunk) */
  struct buf msg;
  struct buf line;

  struct auth_server_session *auth;  /* NULL: AUTH is not offered in this session */
  char auth_user[AUTH_USER_MAX];      /* info.auth_user points here once AUTH succeeded */
  int auth_failures;                  /* failed AUTHs in this session */
  char tls_desc[160];                 /* "TLSv1.3 TLS_AES_256_GCM_SHA384 256/256" */

  long long helo_deadline_ms;         /* until HELO/EHLO is done (helo_ms); 0 none */
  unsigned transactions;              /* MAIL commands accepted in this session */

  int errors;
  int junk;
  int done;
  const char *last;       /* the verb being answered, for "timeout after X" */
  enum stat_idx cur;
  unsigned ok[ST_N], total[ST_N];
};

/* ---- replies and logs ------------------------------------------------------------------ */

static void reply_send(struct session *s, const struct smtp_reply *r, int count_error)
{
  /* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CR LF */
  int room = LIM_SMTP_REPLY_LINE - 2 - 4 - (r->enh[0] ? (int)strlen(r->enh) + 1 : 0);
  if(r->enh[0])
    conn_printf(s->c, "%03d %s %.*s\r\n", r->code, r->enh, room, r->text);
  else
    conn_printf(s->c, "%03d %.*s\r\n", r->code, room, r->text);
  if(r->code >= 200 && r->code < 300)
    s->ok[s->cur]++;
  /* every 5xx answer counts toward max_errors, as Postfix's smtpd_hard_error_limit does */
  if(count_error && r->code >= 500)
    s->errors++;
}

static void reply(struct session *s, int code, const char *enh, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static void reply(struct session *s, int code, const char *enh, const char *fmt, ...)
{
  struct smtp_reply r;
  va_list ap;
  char text[LIM_SMTP_REPLY_LINE];
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  smtp_reply_set(&r, code, enh, "%s", text);
  reply_send(s, &r, 1);
}

static const char *proto_name(const struct session *s)
{
  return s->info.esmtp ? "ESMTP" : "SMTP";
}

/* "reject: RCPT from [ip]: 452 4.5.3 ...; from=<a> to=<b> proto=ESMTP helo=<h>" */
static void log_reject(struct session *s, const char *what, const struct smtp_reply *r,
                       const struct smtp_path_params *mail, const char *to, size_t tolen)
{
  char raw[LIM_SMTP_REPLY_LINE + 32], rs[LIM_LOG_FIELD * 4 + 8];
  char from[LIM_LOG_FIELD * 4 + 8], rcpt[LIM_LOG_FIELD * 4 + 8], helo[LIM_LOG_FIELD * 4 + 8];
  /* a policy's reply may quote the client's address back: it is attacker bytes too */
  smtp_reply_str(r, raw, sizeof(raw));
  log_repr(rs, sizeof(rs), raw, strlen(raw));
  if(mail)
    log_repr(from, sizeof(from), mail->path, mail->pathlen);
  log_repr(helo, sizeof(helo), s->info.helo, strlen(s->info.helo));
  if(to)
    log_repr(rcpt, sizeof(rcpt), to, tolen);
  log_info("%s%sreject: %s from [%s]: %s;%s%s%s%s%s%s proto=%s helo=<%s>",
           s->env.id[0] ? s->env.id : "", s->env.id[0] ? ": " : "", what, s->info.peer_ip, rs,
           mail ? " from=<" : "", mail ? from : "", mail ? ">" : "",
           to ? " to=<" : "", to ? rcpt : "", to ? ">" : "", proto_name(s), helo);
}

static void transaction_reset(struct session *s)
{
  s->in_mail = 0;
  s->bdat_active = 0;
  s->env.nrcpts = 0;
  s->rcpt_tried = 0;
  s->rcpt_overshoot = 0;
  s->env.id[0] = '\0';
  memset(&s->env.mail, 0, sizeof(s->env.mail));
  memset(&s->scan, 0, sizeof(s->scan));
  /* a finished message gives its memory back; the next one starts small again */
  buf_free(&s->msg);
  buf_init(&s->msg, (size_t)s->max_size + MSG_MARGIN);
}

/* The idle timeout bounds the whole of the next record (command line, AUTH line, DATA line,
 * BDAT chunk), not the gap between two of its bytes (Postfix's smtpd_per_record_deadline):
 * a client that sends a byte now and then does not keep its slot. Before HELO/EHLO the
 * listener's helo_timeout caps it too. */
static void record_begin(struct session *s)
{
  long long now = time_mono_ms(), dl = now + s->c->idle_ms;
  if(!s->helo_done && s->helo_deadline_ms && s->helo_deadline_ms < dl)
    dl = s->helo_deadline_ms;
  s->c->record_deadline_ms = dl;
}

static void record_end(struct session *s)
{
  s->c->record_deadline_ms = 0;
}

/* ---- adding headers -------------------------------------------------------------------- */

static void rfc5322_date(char *out, size_t outsz, time_t t)
{
  static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
  static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                        "Sep", "Oct", "Nov", "Dec" };
  struct tm tm;
  long off;
  localtime_r(&t, &tm);
  off = tm.tm_gmtoff / 60;
  /* day and month names from tables: strftime's %a/%b follow the locale */
  snprintf(out, outsz, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday % 7],
           tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
           tm.tm_sec, off < 0 ? '-' : '+', (off < 0 ? -off : off) / 60,
           (off < 0 ? -off : off) % 60);
}

/* Where the header section of msg ends (where missing fields go), and whether it has
 * Message-ID: and Date:. Looks at most LIM_HEADER_SCAN octets. */
static size_t header_scan(const char *p, size_t len, int *has_mid, int *has_date)
{
  size_t pos = 0;
  *has_mid = *has_date = 0;
  while(pos < len) {
    const char *nl;
    size_t next, llen, k;
    if(pos >= LIM_HEADER_SCAN)
      return 0;      /* no end in sight: a place at the top is at least never inside a field */
    nl = memchr(p + pos, '\n', len - pos);
    if(!nl)
      return pos;    /* an unfinished last line: insert before it, not inside it */
    next = (size_t)(nl - p) + 1;
    llen = (size_t)(nl - p) - pos;
    if(llen && p[pos + llen - 1] == '\r')
      llen--;
    if(llen == 0)
      return pos;    /* the empty line that ends the header section */
    if(p[pos] == ' ' || p[pos] == '\t') {
      if(pos == 0)
        return 0;
      pos = next;    /* a folded continuation of the field before */
      continue;
    }
    /* field-name = 1*ftext (RFC 5322 3.6.8), then obsolete WSP before ':' (4.5.3) */
    for(k = 0; k < llen; k++) {
      unsigned char ch = (unsigned char)p[pos + k];
      if(ch == ':' || ch < 33 || ch > 126)
        break;
    }
    {
      size_t namelen = k;
      while(k < llen && (p[pos + k] == ' ' || p[pos + k] == '\t'))
        k++;
      if(namelen == 0 || k >= llen || p[pos + k] != ':')
        return pos;  /* not a header field: the body starts here without an empty line */
      if(!str_casecmp_n(p + pos, namelen, "message-id"))
        *has_mid = 1;
      else if(!str_casecmp_n(p + pos, namelen, "date"))
        *has_date = 1;
    }
    pos = next;
  }
  return pos;
}

/* The Received clause naming the TLS session, in Postfix's words so that existing tools read
 * it: "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"; "" without
 * TLS. */
static void tls_using(const struct session *s, char *out, size_t outsz)
{
  const char *d = s->tls_desc, *sp1, *sp2;
  out[0] = '\0';
  if(!s->info.tls || !d[0])
    return;
  sp1 = strchr(d, ' ');
  sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
  if(sp1 && sp2 && !strchr(sp2 + 1, ' '))
    snprintf(out, outsz, "\t(using %.*s with cipher %.*s (%s bits))\r\n", (int)(sp1 - d), d,
             (int)(sp2 - sp1 - 1), sp1 + 1, sp2 + 1);
  else
    snprintf(out, outsz, "\t(using %s)\r\n", d);
}

/* Inserts add[0..alen) at offset at of s->msg. */
static int msg_insert(struct session *s, size_t at, const char *add, size_t alen)
{
  struct buf *b = &s->msg;
  if(!alen)
    return 0;
  if(buf_reserve(b, alen))
    return -1;
  memmove(b->ptr + at + alen, b->ptr + at, b->len - at);
  memcpy(b->ptr + at, add, alen);
  b->len += alen;
  b->ptr[b->len] = '\0';
  return 0;
}

static int add_headers(struct session *s)
{
  char date[64], helo[HELO_IN_RECEIVED + 4];
  char rcvd[LIM_SMTP_PATH + LIM_SMTP_HELO + 768];
  char extra[LIM_QUEUE_ID + 512];
  char using[sizeof(s->tls_desc) + 64];
  const char *proto;
  size_t i, h = 0, at = 0, elen = 0;
  int has_mid = 1, has_date = 1, n;
  time_t now = (time_t)(time_real_ms() / 1000);
  int utf8 = s->env.mail.smtputf8;
  int tls = s->info.tls, auth = s->info.auth_user != NULL;

  rfc5322_date(date, sizeof(date), now);
  /* the HELO name was validated, but it lands inside a comment-free header: keep it to
   * characters that cannot end the clause or the line, and short */
  for(i = 0; s->info.helo[i] && h < HELO_IN_RECEIVED; i++) {
    unsigned char ch = (unsigned char)s->info.helo[i];
    if(ch > 32 && ch < 127 && ch != '(' && ch != ')' && ch != '\\' && ch != ';')
      helo[h++] = (char)ch;
  }
  helo[h] = '\0';
  /* RFC 3848 and RFC 6531 3.7.3 protocol names */
  if(utf8)
    proto = tls && auth ? "UTF8SMTPSA" : tls ? "UTF8SMTPS" : auth ? "UTF8SMTPA" : "UTF8SMTP";
  else if(s->info.esmtp)
    proto = tls && auth ? "ESMTPSA" : tls ? "ESMTPS" : auth ? "ESMTPA" : "ESMTP";
  else
    proto = "SMTP";
  tls_using(s, using, sizeof(using));
  if(s->env.nrcpts == 1)
    n = snprintf(rcvd, sizeof(rcvd), "Received: from %s (%s [%s%s])\r\n%s\tby %s (Postern) with %s"
                 " id %s\r\n\tfor <%s>; %s\r\n", h ? helo : "unknown", s->info.peer_ip,
                 s->info.family == AF_INET6 ? "IPv6:" : "", s->info.peer_ip, using, s->host,
                 proto, s->env.id, s->env.rcpts[0].path, date);
  else
    n = snprintf(rcvd, sizeof(rcvd), "Received: from %s (%s [%s%s])\r\n%s\tby %s (Postern) with %s"
                 " id %s; %s\r\n", h ? helo : "unknown", s->info.peer_ip,
                 s->info.family == AF_INET6 ? "IPv6:" : "", s->info.peer_ip, using, s->host, proto,
                 s->env.id, date);
  if(n < 0 || (size_t)n >= sizeof(rcvd))
    return -1;

  if(s->cfg->add_missing_headers) {
    at = header_scan(s->msg.ptr ? s->msg.ptr : "", s->msg.len, &has_mid, &has_date);
    if(!has_mid) {
      n = snprintf(extra + elen, sizeof(extra) - elen, "Message-ID: <%s.%lld@%s>\r\n",
                   s->env.id, (long long)now, s->host);
      if(n < 0 || (size_t)n >= sizeof(extra) - elen)
        return -1;
      elen += (size_t)n;
    }
    if(!has_date) {
      n = snprintf(extra + elen, sizeof(extra) - elen, "Date: %s\r\n", date);
      if(n < 0 || (size_t)n >= sizeof(extra) - elen)
        return -1;
      elen += (size_t)n;
    }
  }
  if(msg_insert(s, at, extra, elen) || msg_insert(s, 0, rcvd, strlen(rcvd)))
    return -1;
  return 0;
}

/* The content is complete and clean: add our headers, let the policy make it durable, and
 * answer what it says. Any outcome ends the transaction. */
static void message_deliver(struct session *s, const char *what)
{
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  if(add_headers(s))
    smtp_reply_set(&r, 451, "4.3.0", "Error: insufficient system resources");
  else if(s->pol->message)
    s->pol->message(s->pctx, &s->info, &s->env, s->msg.ptr ? s->msg.ptr : "", s->msg.len, &r);
  if(r.code < 200 || r.code > 599 || (r.code >= 300 && r.code < 400)) {
    /* never a false 250: a policy that said nothing did not make the message durable */
    smtp_reply_set(&r, 451, "4.3.0", "Error: message not accepted");
  }
  reply_send(s, &r, 1);
  if(r.code >= 400)
    log_reject(s, what, &r, &s->env.mail, NULL, 0);
  transaction_reset(s);
}

/* ---- TLS and AUTH state ----------------------------------------------------------------- */

static int starttls_offered(const struct session *s)
{
  return s->cfg->tls_mode == SMTP_TLS_STARTTLS && s->cfg->tls && !s->info.tls;
}

/* PLAIN and LOGIN show the password to anyone on the path: only over TLS, or between two ends
 * of a loopback connection (a socket bound to a loopback address, and a loopback peer), where
 * the path is this host's kernel. A wildcard or network address is not loopback, whoever
 * connects to it. */
static int channel_secure(const struct session *s)
{
  return s->info.tls || (s->cfg->loopback_listener && s->info.peer_loopback);
}

static int word_listed(const char *list, const char *word);

/* The mechanisms this session may offer. Before TLS on a listener that is not bound to
 * loopback, CRAM-MD5 and SCRAM are left out too (a password-equivalent exchange in the clear
 * is open to offline guessing and to a man in the middle choosing the mechanism), unless
 * auth_plaintext_mechanisms lists them; PLAIN and LOGIN are auth/'s rule (channel_secure). */
static const char *auth_offerable(const struct session *s, char *out, size_t outsz)
{
  const char *p = s->cfg->auth_mechs;
  size_t len = 0;
  if(s->info.tls || s->cfg->loopback_listener)
    return p;
  out[0] = '\0';
  while(*p) {
    char word[64];
    size_t n = strcspn(p, " ");
    if(n && n < sizeof(word)) {
      memcpy(word, p, n);
      word[n] = '\0';
      if((!strcmp(word, "PLAIN") || !strcmp(word, "LOGIN") ||
          (s->cfg->auth_plaintext_mechs && word_listed(s->cfg->auth_plaintext_mechs, word))) &&
         len + n + 2 < outsz) {
        if(len)
          out[len++] = ' ';
        memcpy(out + len, word, n);
        len += n;
        out[len] = '\0';
      }
    }
    p += n;
    while(*p == ' ')
      p++;
  }
  return out;
}

/* A fresh SASL session: at the start, and after STARTTLS (which changes what may be offered
 * and forgets any exchange begun before it). */
static void auth_open(struct session *s)
{
  char mechs[256];
  auth_server_free(s->auth);
  s->auth = NULL;
  if(!s->cfg->auth_available || !s->cfg->auth_mechs || !s->cfg->auth_mechs[0])
    return;
  if(auth_server_new("smtp", s->host, auth_offerable(s, mechs, sizeof(mechs)),
                     channel_secure(s), &s->auth)) {
    s->auth = NULL;
    log_warn("AUTH not offered to [%s]: cannot start a SASL session (is libsasl2-modules "
             "installed? `posternctl user list` checks the user database)", s->info.peer_ip);
  }
}

/* Waits before the answer to the nth failure: nothing for the first few (typing errors), then
 * 1 s, 2 s, 4 s... up to a cap. A shutdown or the session deadline cuts the wait short. */
static void auth_fail_delay(struct session *s, unsigned n)
{
  long long ms, left;
  unsigned shift;
  struct pollfd pfd;
  if(n <= LIM_AUTH_FAILURES_FREE)
    return;
  shift = n - LIM_AUTH_FAILURES_FREE - 1;
  ms = shift >= 5 ? LIM_AUTH_DELAY_SECONDS * 1000LL : 1000LL << shift;
  if(ms > LIM_AUTH_DELAY_SECONDS * 1000LL)
    ms = LIM_AUTH_DELAY_SECONDS * 1000LL;
  if(s->c->deadline_ms > 0) {
    left = s->c->deadline_ms - time_mono_ms();
    if(left < ms)
      ms = left > 0 ? left : 0;
  }
  /* what was answered before this goes out now; only this reply waits */
  if(conn_flush(s->c))
    return;
  pfd.fd = s->cfg->wake_fd > 0 ? s->cfg->wake_fd : -1;
  pfd.events = POLLIN;
  pfd.revents = 0;
  poll(&pfd, 1, (int)ms);
}

/* The handshake, at connect (implicit TLS) or after "220 Ready to start TLS". */
static int tls_begin(struct session *s)
{
  char err[256];
  long long ms = LIM_TLS_HANDSHAKE_SECONDS * 1000;
  if(!s->helo_done && s->helo_deadline_ms) {
    long long left = s->helo_deadline_ms - time_mono_ms();
    if(left < ms)
      ms = left > 1 ? left : 1;
  }
  if(tls_server_start(s->cfg->tls, s->c, (int)ms, err, sizeof(err))) {
    log_info("TLS handshake failed from [%s]: %s", s->info.peer_ip, err);
    return -1;
  }
  s->info.tls = 1;
  tls_conn_describe(s->c, s->tls_desc, sizeof(s->tls_desc));
  log_info("TLS connection established from [%s]: %s", s->info.peer_ip, s->tls_desc);
  return 0;
}

/* ---- commands -------------------------------------------------------------------------- */

static void cmd_helo(struct session *s, const struct smtp_command *cmd, int ehlo)
{
  char arg[LIM_SMTP_HELO + 1];
  if(!cmd->arglen) {
    reply(s, 501, "5.5.4", "Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
    return;
  }
  if(smtp_helo_valid(cmd->arg, cmd->arglen)) {
    reply(s, 501, "5.5.2", "Error: invalid %s hostname", ehlo ? "EHLO" : "HELO");
    return;
  }
  memcpy(arg, cmd->arg, cmd->arglen);
  arg[cmd->arglen] = '\0';
  /* RFC 5321 4.1.4: a repeated EHLO is a reset */
  transaction_reset(s);
  s->bdat_failed = 0;
  s->helo_done = 1;
  s->info.esmtp = ehlo;
  str_copy(s->info.helo, sizeof(s->info.helo), arg);
  if(!ehlo) {
    conn_printf(s->c, "250 %s\r\n", s->host);
    s->ok[s->cur]++;
    return;
  }
  conn_printf(s->c, "250-%s\r\n250-PIPELINING\r\n", s->host);
  conn_printf(s->c, "250-SIZE %lld\r\n", s->max_size);
  if(starttls_offered(s))
    conn_printf(s->c, "250-STARTTLS\r\n");
  if(s->auth && !s->info.auth_user && auth_server_mechs(s->auth)[0])
    conn_printf(s->c, "250-AUTH %s\r\n", auth_server_mechs(s->auth));
  conn_printf(s->c, "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n"
              "250-CHUNKING\r\n250 DSN\r\n");
  s->ok[s->cur]++;
}

/* The listener's message (rcpt 0) or recipient rate per client; logged once a minute. */
static int anvil_refuses(struct session *s, int rcpt)
{
  unsigned char key[ANVIL_KEY_LEN];
  enum anvil_verdict v;
  int report = 0;
  if(!s->cfg->anvil_service)
    return 0;
  anvil_key(s->info.family, s->info.peer_addr, key);
  v = rcpt ? anvil_rcpt(s->cfg->anvil_service, key, &s->cfg->anvil, time_mono_ms(), &report) :
             anvil_message(s->cfg->anvil_service, key, &s->cfg->anvil, time_mono_ms(), &report);
  if(v == ANVIL_OK)
    return 0;
  metrics_limit_refused(s->info.listener, rcpt ? METRICS_LIMIT_RCPT_RATE : METRICS_LIMIT_MSG_RATE);
  if(report)
    log_warn("%s rate limit exceeded for [%s] on listener %s (%ld per minute; %s in "
             "[listener %s])", rcpt ? "recipient" : "message", s->info.peer_ip,
             s->info.listener, rcpt ? s->cfg->anvil.rcpt_rate : s->cfg->anvil.msg_rate,
             rcpt ? "recipient_rate" : "message_rate", s->info.listener);
  return 1;
}

static void cmd_mail(struct session *s, const struct smtp_command *cmd)
{
  struct smtp_path_params p;
  struct smtp_reply r;
  char raw[LIM_LOG_FIELD * 4 + 8];
  if(!s->helo_done) {
    reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
    return;
  }
  if(s->in_mail) {
    reply(s, 503, "5.5.1", "Error: nested MAIL command");
    return;
  }
  /* each transaction may cost a policy its look-ups (SPF): a session does not get to run
   * them without end; a new connection goes through the per-client limits again */
  if(s->transactions >= (s->cfg->max_transactions ? s->cfg->max_transactions :
                         LIM_SMTP_TRANSACTIONS_DEFAULT)) {
    reply(s, 421, "4.7.0", "%s Error: too many transactions in one session", s->host);
    log_info("too many transactions from [%s]; closing (max_transactions in [postern])",
             s->info.peer_ip);
    s->done = 1;
    return;
  }
  if(smtp_path_parse(cmd->arg, cmd->arglen, 1, &p, &r)) {
    reply_send(s, &r, 1);
    log_info("reject: MAIL from [%s]: %03d %s %s; arg=%s", s->info.peer_ip, r.code, r.enh,
             r.text, log_repr(raw, sizeof(raw), cmd->arg, cmd->arglen));
    return;
  }
  /* ESMTP parameters, SMTPUTF8 included, exist only after EHLO (RFC 5321 4.1.1.11: 555) */
  if(!s->info.esmtp && (p.size >= 0 || p.body != SMTP_BODY_7BIT || p.smtputf8 || p.ret[0] ||
                        p.envid[0]))
    smtp_reply_set(&r, 555, "5.5.4", "Error: ESMTP parameters require EHLO");
  /* BINARYMIME (RFC 3030) is not offered: the relay could not pass binary content on */
  else if(p.body == SMTP_BODY_BINARYMIME)
    smtp_reply_set(&r, 555, "5.5.4", "Error: BODY=BINARYMIME not supported");
  else if(p.size > s->max_size)
    smtp_reply_set(&r, 552, "5.3.4", "Message size exceeds fixed limit");
  else if(s->pol->mail && s->pol->mail(s->pctx, &s->info, &p, &r)) {
    if(r.code < 400 || r.code > 599)
      smtp_reply_set(&r, 550, "5.7.1", "Error: sender rejected");
  }
  else
    r.code = 0;
  if(!r.code && anvil_refuses(s, 0)) {
    smtp_reply_set(&r, 421, "4.7.0", "%s Error: too much mail from [%s]", s->host,
                   s->info.peer_ip);
    s->done = 1;
  }
  if(r.code) {
    reply_send(s, &r, 1);
    /* a refusal for now counts as an error too (Postfix's error_count): a sender whose SPF
     * look-ups fail gets 451 and may not have them run again and again in one session */
    if(r.code < 500)
      s->errors++;
    log_reject(s, "MAIL", &r, &p, NULL, 0);
    return;
  }
  s->env.mail = p;
  s->env.nrcpts = 0;
  s->rcpt_tried = 0;
  s->rcpt_overshoot = 0;
  s->in_mail = 1;
  s->transactions++;
  reply(s, 250, "2.1.0", "Ok");
}

static void cmd_rcpt(struct session *s, const struct smtp_command *cmd)
{
  struct smtp_path_params p;
  struct smtp_reply r;
  char raw[LIM_LOG_FIELD * 4 + 8];
  if(!s->in_mail) {
    reply(s, 503, "5.5.1", "Error: need MAIL command");
    return;
  }
  if(s->bdat_active) {
    reply(s, 503, "5.5.1", "Error: RCPT after BDAT");
    return;
  }
  s->rcpt_tried++;
  if(smtp_path_parse(cmd->arg, cmd->arglen, 0, &p, &r)) {
    reply_send(s, &r, 1);
    log_info("reject: RCPT from [%s]: %03d %s %s; arg=%s", s->info.peer_ip, r.code, r.enh,
             r.text, log_repr(raw, sizeof(raw), cmd->arg, cmd->arglen));
    return;
  }
  if(!s->env.mail.smtputf8 && !smtp_text_is_ascii(p.path, p.pathlen))
    smtp_reply_set(&r, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
  else if(s->env.nrcpts >= (size_t)s->max_rcpt) {
    /* RFC 5321 4.5.3.1.10: a client sends the rest in another transaction. One line is
     * logged per transaction, and past an overshoot as large as Postfix's the 452s count as
     * errors: a client that never stops is neither a log flood nor a session without end. */
    smtp_reply_set(&r, 452, "4.5.3", "Error: too many recipients");
    reply_send(s, &r, 1);
    if(++s->rcpt_overshoot == 1)
      log_reject(s, "RCPT", &r, &s->env.mail, p.path, p.pathlen);
    if(s->rcpt_overshoot > LIM_SMTP_RCPT_OVERSHOOT)
      s->errors++;
    return;
  }
  else if(s->pol->rcpt && s->pol->rcpt(s->pctx, &s->info, &s->env, &p, &r)) {
    if(r.code < 400 || r.code > 599)
      smtp_reply_set(&r, 550, "5.1.1", "Error: recipient rejected");
  }
  else
    r.code = 0;
  if(!r.code && anvil_refuses(s, 1))
    smtp_reply_set(&r, 452, "4.7.0", "Error: too many recipients from [%s]; try again later",
                   s->info.peer_ip);
  if(!r.code && s->env.nrcpts == s->rcpt_alloc) {
    size_t na = s->rcpt_alloc ? s->rcpt_alloc * 2 : 4;
    struct smtp_path_params *nr;
    if(na > (size_t)s->max_rcpt)
      na = (size_t)s->max_rcpt;
    nr = realloc(s->env.rcpts, na * sizeof(*nr));
    if(!nr)
      smtp_reply_set(&r, 452, "4.3.1", "Error: insufficient system resources");
    else {
      s->env.rcpts = nr;
      s->rcpt_alloc = na;
    }
  }
  if(r.code) {
    reply_send(s, &r, 1);
    if(r.code < 500)
      s->errors++;      /* as for MAIL: a temporary refusal is an error too */
    log_reject(s, "RCPT", &r, &s->env.mail, p.path, p.pathlen);
    return;
  }
  s->env.rcpts[s->env.nrcpts++] = p;
  reply(s, 250, "2.1.5", "Ok");
}

/* Starts the content of a transaction: the queue id exists from here on. */
static void content_begin(struct session *s)
{
  store_new_id(s->env.id);
  buf_free(&s->msg);
  buf_init(&s->msg, (size_t)s->max_size + MSG_MARGIN);
  log_info("%s: client=%s", s->env.id, s->info.peer_ip);
}

/* Ends the session on a lost or timed-out connection; returns -1 so callers can stop. */
static int conn_lost(struct session *s, int result, const char *during)
{
  if(result == CONN_TIMEOUT) {
    reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->host);
    log_info("timeout after %s from [%s]", during ? during : s->last, s->info.peer_ip);
  }
  else
    log_info("lost connection after %s from [%s]", during ? during : s->last, s->info.peer_ip);
  s->done = 1;
  return -1;
}

/* The scanner for a transaction's content: lines up to LIM_SMTP_CONTENT_LINE (never more
 * than the message may hold), the message up to its size limit. */
static void content_scan_init(struct session *s, int dot)
{
  size_t max_line = LIM_SMTP_CONTENT_LINE;
  if((long long)max_line > s->max_size)
    max_line = (size_t)s->max_size;
  smtp_content_init(&s->scan, dot, max_line, (unsigned long long)s->max_size);
}

/* Feeds p[0..n) to the transaction's scanner; a spoilt message stops holding memory. */
static size_t content_feed(struct session *s, const char *p, size_t n)
{
  size_t used = smtp_content_scan(&s->scan, p, n, &s->msg);
  if(s->scan.bad && s->msg.ptr)
    buf_free(&s->msg);
  return used;
}

/* The answer to content the scanner refused, the same for DATA and BDAT. */
static void content_refusal(const struct smtp_content *sc, struct smtp_reply *r)
{
  if(sc->bad & SMTP_CONTENT_BAD_CR)
    smtp_reply_set(r, 550, "5.6.0", "Message refused: bare CR not allowed");
  else if(sc->bad & SMTP_CONTENT_BAD_NUL)
    smtp_reply_set(r, 550, "5.6.0", "Message refused: NUL not allowed");
  else if(sc->bad & SMTP_CONTENT_BAD_LONG)
    /* the enhanced code is a media error (RFC 3463 X.6.0): it is the content that cannot be
     * carried, and it ends the transaction */
    smtp_reply_set(r, 500, "5.6.0", "Message refused: line longer than %zu octets",
                   sc->max_line);
  else
    smtp_reply_set(r, 552, "5.3.4", "Error: message size exceeds fixed limit");
}

/* Reads DATA content up to the end-of-data line. RFC 5321 4.1.1.4 ends it only at CR LF "."
 * CR LF; anything that other software may read as an end ("\n.\n", "\n.\r\n", "\r\n.\n")
 * never ends it here: a bare LF is a line end inside the content, and a message holding a bare
 * CR or a NUL is refused as a whole once its real end is found (the SMTP smuggling class). */
static int data_read(struct session *s)
{
  struct conn *c = s->c;
  content_scan_init(s, 1);
  record_begin(s);
  for(;;) {
    size_t used;
    if(c->rstart == c->rend) {
      int result = conn_fill(c);
      if(result) {
        record_end(s);
        return conn_lost(s, result, "DATA");
      }
    }
    used = content_feed(s, c->rbuf + c->rstart, c->rend - c->rstart);
    /* each line of content is a record of its own */
    if(memchr(c->rbuf + c->rstart, '\n', used))
      record_begin(s);
    c->rstart += used;
    if(s->scan.ended) {
      record_end(s);
      return 0;
    }
  }
}

static void cmd_data(struct session *s, const struct smtp_command *cmd)
{
  struct smtp_reply r;
  int result;
  if(!s->in_mail) {
    reply(s, 503, "5.5.1", "Error: need RCPT command");
    return;
  }
  if(s->bdat_active) {
    reply(s, 503, "5.5.1", "Error: DATA after BDAT");
    return;
  }
  if(!s->env.nrcpts) {
    if(s->rcpt_tried)
      reply(s, 554, "5.5.1", "Error: no valid recipients");
    else
      reply(s, 503, "5.5.1", "Error: need RCPT command");
    return;
  }
  if(cmd->arglen) {
    reply(s, 501, "5.5.4", "Syntax: DATA");
    return;
  }
  content_begin(s);
  conn_printf(s->c, "354 End data with <CR><LF>.<CR><LF>\r\n");
  result = conn_flush(s->c);
  if(result) {
    conn_lost(s, result, "DATA");
    return;
  }
  if(data_read(s))
    return;
  if(!s->scan.bad) {
    message_deliver(s, "DATA");
    return;
  }
  content_refusal(&s->scan, &r);
  reply_send(s, &r, 1);
  log_reject(s, "DATA", &r, &s->env.mail, NULL, 0);
  transaction_reset(s);
}

/* "BDAT" SP chunk-size [ SP end-marker ] (RFC 3030 2); 0 ok */
static int bdat_args(const char *p, size_t n, unsigned long long *size, int *last)
{
  size_t i = 0, d = 0;
  *size = 0;
  *last = 0;
  while(i < n && p[i] >= '0' && p[i] <= '9') {
    if(++d > 18)
      return -1;
    *size = *size * 10 + (unsigned)(p[i] - '0');
    i++;
  }
  if(!d)
    return -1;
  if(i == n)
    return 0;
  if(p[i] != ' ')
    return -1;
  while(i < n && p[i] == ' ')
    i++;
  if(str_casecmp_n(p + i, n - i, "LAST"))
    return -1;
  *last = 1;
  return 0;
}

/* Reads one BDAT chunk of n octets through the content scanner, in place. */
static int bdat_read(struct session *s, size_t n)
{
  struct conn *c = s->c;
  while(n) {
    size_t take;
    if(c->rstart == c->rend) {
      int result = conn_fill(c);
      if(result)
        return result;
    }
    take = c->rend - c->rstart;
    if(take > n)
      take = n;
    content_feed(s, c->rbuf + c->rstart, take);
    c->rstart += take;
    n -= take;
  }
  return CONN_OK;
}

static void cmd_bdat(struct session *s, const struct smtp_command *cmd)
{
  unsigned long long n;
  int last, result;
  struct smtp_reply r;
  if(bdat_args(cmd->arg, cmd->arglen, &n, &last)) {
    /* The chunk cannot be delimited, so what follows can be neither read as commands nor
     * skipped: answer and end the session (RFC 3030 leaves no other way to resynchronise). */
    reply(s, 501, "5.5.4", "Syntax: BDAT count [LAST]");
    log_info("reject: BDAT from [%s]: 501 5.5.4 bad chunk size; closing", s->info.peer_ip);
    s->done = 1;
    return;
  }
  /* the chunk follows the command whatever we answer: it is read (or skipped) first */
  if(s->c->rend - s->c->rstart < n) {
    result = conn_flush(s->c);
    if(result) {
      conn_lost(s, result, "BDAT");
      return;
    }
  }
  if(s->bdat_failed) {
    record_begin(s);
    result = conn_read_exact(s->c, NULL, (size_t)n);
    record_end(s);
    if(result) {
      conn_lost(s, result, "BDAT");
      return;
    }
    /* one failure, one error: the chunks already on their way do not count again */
    reply_send(s, &s->bdat_fail, 0);
    if(last)
      s->bdat_failed = 0;
    return;
  }
  r.code = 0;
  if(!s->in_mail)
    smtp_reply_set(&r, 503, "5.5.1", "Error: need MAIL command");
  else if(!s->env.nrcpts && s->rcpt_tried)
    smtp_reply_set(&r, 554, "5.5.1", "Error: no valid recipients");
  else if(!s->env.nrcpts)
    smtp_reply_set(&r, 503, "5.5.1", "Error: need RCPT command");
  if(r.code) {
    record_begin(s);
    result = conn_read_exact(s->c, NULL, (size_t)n);
    record_end(s);
    if(result) {
      conn_lost(s, result, "BDAT");
      return;
    }
    reply_send(s, &r, 1);
    return;
  }
  if(!s->bdat_active) {
    s->bdat_active = 1;
    content_begin(s);
    content_scan_init(s, 0);
  }
  if(n > (unsigned long long)s->max_size - s->scan.size) {
    record_begin(s);
    result = conn_read_exact(s->c, NULL, (size_t)n);
    record_end(s);
    if(result) {
      conn_lost(s, result, "BDAT");
      return;
    }
    smtp_reply_set(&r, 552, "5.3.4", "Error: message size exceeds fixed limit");
    reply_send(s, &r, 1);
    log_reject(s, "BDAT", &r, &s->env.mail, NULL, 0);
    transaction_reset(s);
    if(!last) {
      s->bdat_failed = 1;
      s->bdat_fail = r;
    }
    return;
  }
  record_begin(s);      /* a chunk is one record */
  result = bdat_read(s, (size_t)n);
  record_end(s);
  if(result) {
    conn_lost(s, result, "BDAT");
    return;
  }
  if(!last) {
    /* a spoilt chunk is answered at LAST, as DATA answers at its end */
    reply(s, 250, "2.0.0", "Ok: %llu octets", n);
    return;
  }
  smtp_content_finish(&s->scan);
  if(!s->scan.bad) {
    message_deliver(s, "BDAT");
    return;
  }
  content_refusal(&s->scan, &r);
  reply_send(s, &r, 1);
  log_reject(s, "BDAT", &r, &s->env.mail, NULL, 0);
  transaction_reset(s);
}

/* RFC 3207. Whatever the client pipelined after STARTTLS was sent in the clear and is thrown
 * away unread (the STARTTLS command injection class); after the handshake the session starts
 * over: no HELO, no transaction, no authentication, and the client must EHLO again. */
static void cmd_starttls(struct session *s, const struct smtp_command *cmd)
{
  size_t pending;
  int result;
  if(s->info.tls) {
    reply(s, 503, "5.5.1", "Error: TLS already active");
    return;
  }
  if(!starttls_offered(s)) {
    reply(s, 502, "5.5.1", "Error: command not implemented");
    return;
  }
  if(cmd->arglen) {
    reply(s, 501, "5.5.4", "Syntax: STARTTLS");
    return;
  }
  if(s->in_mail) {
    reply(s, 503, "5.5.1", "Error: MAIL transaction in progress");
    return;
  }
  reply(s, 220, "2.0.0", "Ready to start TLS");
  result = conn_flush(s->c);
  if(result) {
    conn_lost(s, result, "STARTTLS");
    return;
  }
  pending = s->c->rend - s->c->rstart;
  if(pending)
    log_warn("STARTTLS from [%s]: %zu octets pipelined after STARTTLS discarded (an injection "
             "attempt or a broken client; nothing to change here)", s->info.peer_ip, pending);
  conn_discard_input(s->c);
  if(tls_begin(s)) {
    s->done = 1;
    return;
  }
  transaction_reset(s);
  s->bdat_failed = 0;
  s->helo_done = 0;
  /* the new EHLO gets a helo_timeout of its own: the first one ran from the connect, and
   * may have passed while the client was (rightly) busy with EHLO and STARTTLS */
  if(s->cfg->helo_ms > 0)
    s->helo_deadline_ms = time_mono_ms() + s->cfg->helo_ms;
  s->info.helo[0] = '\0';
  s->info.esmtp = 0;
  s->info.auth_user = NULL;
  s->auth_user[0] = '\0';
  auth_open(s);
}

/* Is word one of the blank-separated words of list (exactly, as the lists are upper case)? */
static int word_listed(const char *list, const char *word)
{
  size_t len = strlen(word);
  const char *cur = list;
  while(len && cur && (cur = strstr(cur, word))) {
    if((cur == list || cur[-1] == ' ') && (cur[len] == ' ' || !cur[len]))
      return 1;
    cur += len;
  }
  return 0;
}

/* "AUTH" SP mechanism [SP initial-response] (RFC 4954 4) */
static int auth_args(const struct smtp_command *cmd, char *mech, size_t mechsz,
                     const char **ir, size_t *irlen)
{
  const char *p = cmd->arg, *sp;
  size_t n = cmd->arglen;
  sp = memchr(p, ' ', n);
  *ir = NULL;
  *irlen = 0;
  if(!n || sp == p)
    return -1;
  if(sp) {
    *ir = sp + 1;
    *irlen = n - (size_t)(sp + 1 - p);
    n = (size_t)(sp - p);
  }
  if(n >= mechsz)
    n = mechsz - 1;                   /* no mechanism name is this long: it stays unknown */
  memcpy(mech, p, n);
  mech[n] = '\0';
  return 0;
}

/* "=" is an empty response (RFC 4954 4); anything else must be strict base64. */
static int auth_decode(const char *p, size_t n, unsigned char **out, size_t *outlen)
{
  if(n == 1 && p[0] == '=')
    p = "", n = 0;
  return auth_b64_decode(p, n, out, outlen);
}

static int auth_max_failures(const struct session *s)
{
  return s->cfg->max_auth_failures > 0 ? s->cfg->max_auth_failures : LIM_AUTH_FAILURES_DEFAULT;
}

/* Failed AUTHs count per client (an IPv4 address or an IPv6 /64) across sessions and
 * listeners; at max_auth_failures the client is locked out for auth_lockout, and while it is
 * no credentials of its are checked at all (cmd_auth asks before the exchange starts). */
static void auth_failed(struct session *s, const char *mech, unsigned n)
{
  int max = auth_max_failures(s);
  s->auth_failures++;
  metrics_auth_failure(METRICS_SIDE_LISTENER);
  if(n < (unsigned)s->auth_failures)
    n = (unsigned)s->auth_failures;   /* the shared table forgot this address meanwhile */
  /* the user name is not logged: it is often the password typed into the wrong field */
  log_info("authentication failed from [%s]: sasl_method=%s, failures=%u", s->info.peer_ip, mech,
           n);
  auth_fail_delay(s, n);
  if(n >= (unsigned)max) {
    reply(s, 421, "4.7.0", "%s Error: too many authentication failures", s->host);
    log_warn("too many authentication failures from [%s]; closing and locking the client out "
             "(if it is one of ours, set its password again with `posternctl user add`; the "
             "limits are max_auth_failures and auth_lockout in [postern])", s->info.peer_ip);
    s->done = 1;
    return;
  }
  reply(s, 535, "5.7.8", "Error: authentication failed");
}

/* A client locked out (or with as many checks under way as it has failures left): nothing it
 * sends is checked, no guess costs us a hash or tells it anything. */
static void auth_refuse_locked(struct session *s, long long left, int report)
{
  if(s->line.len)
    explicit_bzero(s->line.ptr, s->line.len);
  metrics_auth_failure(METRICS_SIDE_LISTENER);
  reply(s, 454, "4.7.0", "Error: too many authentication failures; try again later");
  s->errors++;     /* asking again and again ends the session like other errors do */
  if(report)
    log_info("AUTH from [%s] refused: locked out for %llds more after max_auth_failures "
             "(logged once a minute per client)", s->info.peer_ip, (left + 999) / 1000);
}

static void cmd_auth(struct session *s, const struct smtp_command *cmd)
{
  unsigned char key[ANVIL_KEY_LEN];
  long long lock_ms = s->cfg->auth_lockout_ms > 0 ? s->cfg->auth_lockout_ms :
                      LIM_AUTH_LOCKOUT_DEFAULT * 1000LL;
  unsigned max = (unsigned)auth_max_failures(s), failures = 0;
  char mech[32], esc[LIM_LOG_FIELD * 4 + 8];
  const char *ir;
  const unsigned char *chal;
  unsigned char *in = NULL;
  size_t irlen, inlen = 0, challen;
  int result, first = 1;

  if(!s->auth) {
    reply(s, 502, "5.5.1", "Error: authentication not enabled");
    return;
  }
  if(!s->helo_done || !s->info.esmtp) {
    reply(s, 503, "5.5.1", "Error: send EHLO first");
    return;
  }
  if(s->info.auth_user) {
    reply(s, 503, "5.5.1", "Error: already authenticated");
    return;
  }
  if(s->in_mail) {
    reply(s, 503, "5.5.1", "Error: MAIL transaction in progress");
    return;
  }
  if(auth_args(cmd, mech, sizeof(mech), &ir, &irlen)) {
    reply(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    return;
  }
  for(result = 0; mech[result]; result++)
    if(mech[result] >= 'a' && mech[result] <= 'z')
      mech[result] = (char)(mech[result] - 'a' + 'A');
  if(!word_listed(auth_server_mechs(s->auth), mech)) {
    /* RFC 4954 6: a mechanism this listener has, but not without TLS */
    if(!s->info.tls && word_listed(s->cfg->auth_mechs, mech))
      reply(s, 538, "5.7.11", "Encryption required for requested authentication mechanism");
    else
      reply(s, 504, "5.5.4", "Unrecognized authentication type");
    return;
  }
  if(ir) {
    result = auth_decode(ir, irlen, &in, &inlen);
    /* PLAIN's initial response is the password: it does not stay in the line buffer */
    explicit_bzero(s->line.ptr, s->line.len);
    if(result) {
      reply(s, 501, "5.5.2", "Error: malformed authentication response");
      return;
    }
  }
  anvil_key(s->info.family, s->info.peer_addr, key);
  for(;;) {
    unsigned fl = 0;
    char *enc = NULL;
    size_t enclen = 0;
    int reserved, report;
    /* asked before every step, not once at AUTH: an exchange begun before the client was
     * locked out (or many sent at once) gets no check past the limit */
    long long left = anvil_auth_begin(key, max, time_mono_ms(), &reserved, &report);
    if(left > 0) {
      auth_secret_free(in, inlen);
      auth_refuse_locked(s, left, report);
      return;
    }
    result = auth_server_step(s->auth, first ? mech : NULL, in, inlen, &chal, &challen,
                              s->auth_user, sizeof(s->auth_user));
    failures = anvil_auth_end(key, reserved, result == AUTH_FAIL, max, lock_ms, time_mono_ms());
    auth_secret_free(in, inlen);
    in = NULL;
    inlen = 0;
    first = 0;
    if(result != AUTH_CONTINUE)
      break;
    if(auth_b64_encode(chal, challen, &enc, &enclen)) {
      result = AUTH_ERROR;
      break;
    }
    conn_printf(s->c, "334 %s\r\n", enc);
    free(enc);
    result = conn_flush(s->c);
    if(result) {
      conn_lost(s, result, "AUTH");
      return;
    }
    record_begin(s);
    result = conn_read_line(s->c, &s->line, LIM_SMTP_AUTH_LINE, &fl);
    record_end(s);
    if(result == CONN_TOO_LONG && !(fl & CONN_LINE_EOF)) {
      buf_reset(&s->line);
      reply(s, 500, "5.5.6", "Authentication exchange line is too long");
      return;
    }
    if(result || (fl & CONN_LINE_EOF)) {
      conn_lost(s, result ? result : CONN_EOF, "AUTH");
      return;
    }
    if(s->line.len == 1 && s->line.ptr[0] == '*') {
      reply(s, 501, "5.7.0", "Authentication cancelled");
      return;
    }
    result = auth_decode(s->line.ptr, s->line.len, &in, &inlen);
    /* the line may be a password (LOGIN): it is not kept */
    if(s->line.len)
      explicit_bzero(s->line.ptr, s->line.len);
    buf_reset(&s->line);
    if(result) {
      reply(s, 501, "5.5.2", "Error: malformed authentication response");
      return;
    }
  }
  switch(result) {
  case AUTH_OK:
    s->info.auth_user = s->auth_user;
    /* authenticated clients are not junk talkers (LIM_SMTP_PREAUTH_COMMANDS) */
    s->junk = 0;
    reply(s, 235, "2.7.0", "Authentication successful");
    log_info("client=[%s], sasl_method=%s, sasl_username=%s", s->info.peer_ip, mech,
             log_repr(esc, sizeof(esc), s->auth_user, strlen(s->auth_user)));
    break;
  case AUTH_FAIL:
    auth_failed(s, mech, failures);
    break;
  case AUTH_BAD_MECH:
    reply(s, 504, "5.5.4", "Unrecognized authentication type");
    break;
  default:
    log_warn("AUTH from [%s]: the SASL library could not check the credentials (the user database "
             "sasldb2 in data_dir must be readable by Postern's user; `posternctl user list` "
             "checks it)", s->info.peer_ip);
    reply(s, 454, "4.7.0", "Temporary authentication failure");
    break;
  }
}

/* ---- the session ----------------------------------------------------------------------- */

static const char *const verb_names[ST_N] = {
  "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
  "STARTTLS", "AUTH", "UNKNOWN",
};

static enum stat_idx stat_of(enum smtp_verb v)
{
  switch(v) {
  case SMTP_VERB_HELO: return ST_HELO;
  case SMTP_VERB_EHLO: return ST_EHLO;
  case SMTP_VERB_MAIL: return ST_MAIL;
  case SMTP_VERB_RCPT: return ST_RCPT;
  case SMTP_VERB_DATA: return ST_DATA;
  case SMTP_VERB_BDAT: return ST_BDAT;
  case SMTP_VERB_RSET: return ST_RSET;
  case SMTP_VERB_NOOP: return ST_NOOP;
  case SMTP_VERB_QUIT: return ST_QUIT;
  case SMTP_VERB_VRFY: return ST_VRFY;
  case SMTP_VERB_EXPN: return ST_EXPN;
  case SMTP_VERB_HELP: return ST_HELP;
  case SMTP_VERB_STARTTLS: return ST_STARTTLS;
  case SMTP_VERB_AUTH: return ST_AUTH;
  default: return ST_UNKNOWN;
  }
}

static void command_run(struct session *s, const char *line, size_t len)
{
  struct smtp_command cmd;
  if(smtp_command_parse(line, len, &cmd)) {
    s->cur = ST_UNKNOWN;
    s->total[ST_UNKNOWN]++;
    reply(s, 500, "5.5.2", "Error: bad characters in command");
    return;
  }
  s->cur = stat_of(cmd.verb);
  s->total[s->cur]++;
  s->last = verb_names[s->cur];
  /* Postfix's smtpd_junk_command_limit: an unauthenticated client that only chatters starts
   * paying errors, so max_errors ends it */
  if((cmd.verb == SMTP_VERB_NOOP || cmd.verb == SMTP_VERB_VRFY || cmd.verb == SMTP_VERB_RSET ||
      cmd.verb == SMTP_VERB_HELP) && !s->info.auth_user &&
     ++s->junk > LIM_SMTP_PREAUTH_COMMANDS)
    s->errors++;
  if(cmd.verb != SMTP_VERB_BDAT)
    s->bdat_failed = 0;
  switch(cmd.verb) {
  case SMTP_VERB_HELO:
    cmd_helo(s, &cmd, 0);
    break;
  case SMTP_VERB_EHLO:
    cmd_helo(s, &cmd, 1);
    break;
  case SMTP_VERB_MAIL:
    cmd_mail(s, &cmd);
    break;
  case SMTP_VERB_RCPT:
    cmd_rcpt(s, &cmd);
    break;
  case SMTP_VERB_DATA:
    cmd_data(s, &cmd);
    break;
  case SMTP_VERB_BDAT:
    cmd_bdat(s, &cmd);
    break;
  case SMTP_VERB_RSET:
    if(cmd.arglen) {
      reply(s, 501, "5.5.4", "Syntax: RSET");
      break;
    }
    transaction_reset(s);
    reply(s, 250, "2.0.0", "Ok");
    break;
  case SMTP_VERB_NOOP:
    reply(s, 250, "2.0.0", "Ok");
    break;
  case SMTP_VERB_QUIT:
    reply(s, 221, "2.0.0", "Bye");
    s->done = 1;
    break;
  case SMTP_VERB_VRFY:
    if(!cmd.arglen)
      reply(s, 501, "5.5.4", "Syntax: VRFY address");
    else
      reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
    break;
  case SMTP_VERB_EXPN:
    reply(s, 502, "5.5.1", "Error: EXPN not implemented");
    break;
  case SMTP_VERB_HELP:
    reply(s, 214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY");
    break;
  case SMTP_VERB_STARTTLS:
    cmd_starttls(s, &cmd);
    break;
  case SMTP_VERB_AUTH:
    cmd_auth(s, &cmd);
    break;
  default:
    /* an HTTP request is a cross-protocol attack through a browser or proxy: hang up, as
     * Postfix's smtpd_forbidden_commands does */
    if(!str_casecmp_n(line, len < 4 ? len : 4, "GET ") ||
       !str_casecmp_n(line, len < 5 ? len : 5, "POST ") ||
       !str_casecmp_n(line, len < 8 ? len : 8, "CONNECT ")) {
      char raw[64];
      reply(s, 221, "2.7.0", "Error: I can break rules, too. Goodbye.");
      log_warn("non-SMTP command from [%s]: %s (a client speaking another protocol, HTTP or "
               "TLS, to this port: point it at the right port, or tls = implicit on the "
               "listener)", s->info.peer_ip, log_repr(raw, sizeof(raw), line, len));
      s->done = 1;
      break;
    }
    reply(s, 500, "5.5.2", "Error: command not recognized");
    break;
  }
}

static void info_fill(struct session *s)
{
  const struct conn *c = s->c;
  s->info.listener = s->cfg->listener ? s->cfg->listener : "smtp";
  s->info.peer_ip = c->peer_ip;
  s->info.peer_port = c->peer_port;
  s->info.family = c->peer.ss_family;
  if(c->peer.ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&c->peer;
    memcpy(s->info.peer_addr, &s4->sin_addr, 4);
    s->info.peer_loopback = s->info.peer_addr[0] == 127;
  }
  else if(c->peer.ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&c->peer;
    memcpy(s->info.peer_addr, &s6->sin6_addr, 16);
    s->info.peer_loopback = IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
  }
  else if(c->peer.ss_family == AF_UNIX)
    s->info.peer_loopback = 1;    /* a local socket (tests, a local submission socket) */
  s->info.helo[0] = '\0';
  s->info.esmtp = 0;
  s->info.tls = 0;
  s->info.auth_user = NULL;
}

static void stats_log(struct session *s)
{
  char line[512];
  size_t len = 0;
  unsigned ok = 0, total = 0;
  int i, n;
  line[0] = '\0';
  for(i = 0; i < ST_N; i++) {
    if(!s->total[i])
      continue;
    ok += s->ok[i] > s->total[i] ? s->total[i] : s->ok[i];
    total += s->total[i];
    if(s->ok[i] >= s->total[i])
      n = snprintf(line + len, sizeof(line) - len, " %s=%u", stat_names[i], s->total[i]);
    else
      n = snprintf(line + len, sizeof(line) - len, " %s=%u/%u", stat_names[i], s->ok[i],
                   s->total[i]);
    if(n > 0 && (size_t)n < sizeof(line) - len)
      len += (size_t)n;
  }
  if(ok == total)
    log_info("disconnect from %s%s commands=%u", s->info.peer_ip, line, total);
  else
    log_info("disconnect from %s%s commands=%u/%u", s->info.peer_ip, line, ok, total);
}

/* A shutdown ends a session between transactions; an open transaction may still finish */
static int stopping(const struct session *s)
{
  return s->cfg->stopping && *s->cfg->stopping && !s->in_mail && !s->bdat_failed;
}

void smtp_server_run(struct conn *c, const struct smtp_server_cfg *cfg,
                     const struct smtp_policy *pol, void *pol_ctx)
{
  struct session *s;
  struct smtp_reply r;
  int result;

  static const struct smtp_policy accept_nothing = { NULL, NULL, NULL, NULL };
  if(!pol)
    pol = &accept_nothing;     /* no message callback: every message gets a 451 */
  s = calloc(1, sizeof(*s));
  if(!s) {
    conn_printf(c, "421 4.3.2 Service not available: out of memory\r\n");
    conn_flush(c);
    return;
  }
  s->c = c;
  s->cfg = cfg;
  s->pol = pol;
  s->pctx = pol_ctx;
  s->last = "CONNECT";
  s->host = cfg->hostname ? cfg->hostname : "localhost";
  s->max_size = cfg->max_message_size > 0 && cfg->max_message_size <= LIM_MESSAGE_SIZE_MAX ?
                cfg->max_message_size : LIM_MESSAGE_SIZE_MAX;
  s->max_rcpt = cfg->max_recipients > 0 ? cfg->max_recipients : LIM_SMTP_RCPT_DEFAULT;
  s->max_errors = cfg->max_errors > 0 ? cfg->max_errors : LIM_SMTP_ERRORS;
  c->idle_ms = cfg->idle_ms > 0 ? cfg->idle_ms :
               c->idle_ms > 0 ? c->idle_ms : LIM_SMTP_IDLE_SECONDS * 1000;
  if(cfg->session_ms > 0)
    c->deadline_ms = time_mono_ms() + cfg->session_ms;
  if(cfg->helo_ms > 0)
    s->helo_deadline_ms = time_mono_ms() + cfg->helo_ms;
  buf_init(&s->msg, (size_t)s->max_size + MSG_MARGIN);
  buf_init(&s->line, LIM_SMTP_AUTH_LINE + 16);
  info_fill(s);
  log_info("connect from %s", s->info.peer_ip);
  if(cfg->tls_mode == SMTP_TLS_IMPLICIT && (!cfg->tls || tls_begin(s)))
    goto out;                /* no greeting: a client that cannot speak TLS hears nothing */
  auth_open(s);

  memset(&r, 0, sizeof(r));
  if(pol->connect && pol->connect(pol_ctx, &s->info, &r)) {
    if(r.code < 400 || r.code > 599)
      smtp_reply_set(&r, 554, "5.7.1", "Error: connection refused");
    reply_send(s, &r, 0);
    log_info("reject: CONNECT from [%s]: %03d %s %s", s->info.peer_ip, r.code, r.enh, r.text);
    goto out;
  }
  conn_printf(c, "220 %s ESMTP Postern\r\n", s->host);

  while(!s->done) {
    unsigned fl = 0;
    if(stopping(s)) {
      reply(s, 421, "4.3.2", "%s Service shutting down", s->host);
      break;
    }
    /* RFC 2920: replies wait while more pipelined commands are already here */
    if(!conn_has_input(c) && conn_flush(c))
      break;
    /* an idle session between transactions is told of a shutdown at once; one inside a
     * transaction may finish it (the daemon's grace period bounds that) */
    c->wake_fd = s->cfg->wake_fd > 0 && !s->in_mail && !s->bdat_failed ? s->cfg->wake_fd : -1;
    /* RFC 4954 4: AUTH lines may be longer; only where AUTH is offered */
    record_begin(s);
    result = conn_read_line(c, &s->line, s->auth ? LIM_SMTP_AUTH_LINE : LIM_SMTP_COMMAND_LINE,
                            &fl);
    record_end(s);
    c->wake_fd = -1;
    if(result == CONN_WOKEN) {
      reply(s, 421, "4.3.2", "%s Service shutting down", s->host);
      break;
    }
    if(result == CONN_TOO_LONG && !(fl & CONN_LINE_EOF)) {
      s->cur = ST_UNKNOWN;
      s->total[ST_UNKNOWN]++;
      reply(s, 500, "5.5.2", "Error: line too long");
    }
    else if(result) {
      if(result == CONN_TIMEOUT)
        conn_lost(s, result, NULL);
      break;
    }
    else if(fl & CONN_LINE_EOF)
      break;         /* a command cut off by EOF is not a command */
    else if(s->line.len + ((fl & CONN_LINE_CRLF) ? 2 : 1) > LIM_SMTP_COMMAND_LINE &&
            str_casecmp_n(s->line.ptr, 5, "AUTH ")) {
      s->cur = ST_UNKNOWN;
      s->total[ST_UNKNOWN]++;
      reply(s, 500, "5.5.2", "Error: line too long");
    }
    else if(stopping(s)) {
      reply(s, 421, "4.3.2", "%s Service shutting down", s->host);
      break;
    }
    else
      command_run(s, s->line.ptr, s->line.len);
    if(!s->done && s->errors >= s->max_errors) {
      reply(s, 421, "4.7.0", "%s Error: too many errors", s->host);
      log_info("too many errors from [%s]", s->info.peer_ip);
      break;
    }
  }

out:
  /* the last words (a 421 for a spent deadline among them) get a short grace of their own */
  c->deadline_ms = time_mono_ms() + FINAL_FLUSH_MS;
  c->record_deadline_ms = 0;
  if(c->idle_ms <= 0 || c->idle_ms > FINAL_FLUSH_MS)
    c->idle_ms = FINAL_FLUSH_MS;
  conn_flush(c);
  stats_log(s);
  auth_server_free(s->auth);
  buf_free(&s->msg);
  if(s->line.ptr)
    explicit_bzero(s->line.ptr, s->line.len);
  buf_free(&s->line);
  free(s->env.rcpts);
  free(s);
}

/* ---- PROXY protocol ----------------------------------------------------------------------- */

int smtp_proxy_read(struct conn *c, long long deadline_ms, char *why, size_t whysz)
{
  struct proxy_info pi;
  size_t used = 0;
  int result = -1;
  enum proxy_result pr = PROXY_MORE;
  c->record_deadline_ms = deadline_ms;
  while(pr == PROXY_MORE) {
    int r;
    pr = proxy_parse((const unsigned char *)c->rbuf + c->rstart, c->rend - c->rstart, &pi, &used);
    if(pr != PROXY_MORE)
      break;
    if(c->rend - c->rstart >= PROXY_V2_MAX) {
      pr = PROXY_BAD;
      break;
    }
    r = conn_fill(c);
    if(r) {
      snprintf(why, whysz, "%s before the PROXY header ended",
               r == CONN_TIMEOUT ? "timeout" : "connection lost");
      goto out;
    }
  }
  if(pr == PROXY_BAD) {
    snprintf(why, whysz, "no valid PROXY protocol header (is proxy_protocol = yes right for "
             "this balancer, and does it send version 1 or 2?)");
    goto out;
  }
  c->rstart += used;
  if(!pi.local) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if(pi.family == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      s4->sin_family = AF_INET;
      memcpy(&s4->sin_addr, pi.src, 4);
      s4->sin_port = htons((unsigned short)pi.src_port);
    }
    else {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
      s6->sin6_family = AF_INET6;
      memcpy(&s6->sin6_addr, pi.src, 16);
      s6->sin6_port = htons((unsigned short)pi.src_port);
    }
    conn_peer_set(c, &ss);
  }
  result = 0;
out:
  c->record_deadline_ms = 0;
  return result;
}
