/* Delivery status notifications (RFC 3464, multipart/report; report-type=delivery-status)
 * composed with GMime: one per delivery attempt that bounced recipients, one per delay
 * warning, and one "relayed" report per attempt that passed recipients asking NOTIFY=SUCCESS
 * to an upstream that will not report on them; each accepted into the store and routed like
 * any other message. */
#include "relay/relay_int.h"
#include "global/smtpgram.h"
#include "lib/vendor.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/log.h"
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* What we quote of the bounced message: its header section (text/rfc822-headers) */
#define DSN_HEADERS_MAX LIM_HEADER_SCAN
#define DSN_TEXT_MAX (256u * 1024u)

/* RFC 5322 date of a wall-clock ms time. */
static char *format_date(long long ms)
{
  GDateTime *dt = g_date_time_new_from_unix_local(ms / 1000);
  char *s = dt ? g_mime_utils_header_format_date(dt) : NULL;
  if(dt)
    g_date_time_unref(dt);
  return s;
}

/* The header section of a message: up to (not including) the empty line. */
static size_t header_length(const char *body, size_t len)
{
  size_t i, cap = len < DSN_HEADERS_MAX ? len : DSN_HEADERS_MAX;
  for(i = 0; i < cap; i++) {
    if(body[i] != '\n')
      continue;
    if(i + 1 < len && body[i + 1] == '\n')
      return i + 1;
    if(i + 2 < len && body[i + 1] == '\r' && body[i + 2] == '\n')
      return i + 1;
  }
  /* no empty line within the cap: stop after the last whole line */
  while(cap && body[cap - 1] != '\n')
    cap--;
  return cap;
}

/* Does NOTIFY= ask for this notice (what: "FAILURE", "DELAY" or "SUCCESS")? Absent, it means
 * FAILURE and DELAY (RFC 3461 4.1). */
static int wants_notice(const char *notify, const char *what)
{
  const char *p;
  if(!notify || !notify[0])
    return strcmp(what, "SUCCESS") != 0;
  for(p = notify; *p; ) {
    size_t n = strcspn(p, ",");
    if(!str_casecmp_n(p, n, what))
      return 1;
    p += n;
    if(*p == ',')
      p++;
  }
  return 0;
}

static const struct store_rcpt *rcpt_of(const struct store_msg *m, unsigned idx)
{
  size_t i;
  for(i = 0; i < m->nrcpts; i++)
    if(m->rcpts[i].idx == idx)
      return &m->rcpts[i];
  return NULL;
}

/* The Status: of a reported recipient: the reply's enhanced code when it is of the report's
 * class (cls: '5' failed, '2' relayed), else what the class of event says (an expired message
 * is 5.4.7). */
static void status_of(const char *reply, char cls, char *out, size_t outsz)
{
  struct smtp_reply r;
  int more = 0;
  memset(&r, 0, sizeof(r));
  if(reply && !smtp_reply_parse_line(reply, strlen(reply), &r, &more) && r.enh[0] == cls)
    str_copy(out, outsz, r.enh);
  else if(cls == '2')
    str_copy(out, outsz, "2.0.0");
  else if(r.code >= 500)
    str_copy(out, outsz, "5.0.0");
  else
    str_copy(out, outsz, "5.4.7");
}

static GMimeObject *part_with(const char *type, const char *subtype, const char *data, size_t len,
                              int eightbit)
{
  GMimePart *part = g_mime_part_new_with_type(type, subtype);
  GMimeStream *stream = g_mime_stream_mem_new_with_buffer(data, len);
  GMimeDataWrapper *content = g_mime_data_wrapper_new_with_stream(stream,
                                                                  GMIME_CONTENT_ENCODING_DEFAULT);
  g_mime_part_set_content(part, content);
  g_mime_part_set_content_encoding(part, eightbit ? GMIME_CONTENT_ENCODING_8BIT
                                                  : GMIME_CONTENT_ENCODING_7BIT);
  g_object_unref(content);
  g_object_unref(stream);
  return GMIME_OBJECT(part);
}

enum dsn_kind { DSN_FAILED, DSN_DELAYED, DSN_RELAYED };

/* The recipients a report is about: bounced ones in a failure report, those still waiting in
 * a delay warning, sent ones in a relayed report; each only when its NOTIFY asks for that
 * kind. */
static int reported(enum dsn_kind kind, const struct store_rcpt_update *u,
                    const struct store_rcpt *rc)
{
  if(!rc)
    return 0;
  switch(kind) {
  case DSN_DELAYED:
    return u->status != RCPT_BOUNCED && u->status != RCPT_SENT && u->status != RCPT_CAPTURED &&
           wants_notice(rc->notify, "DELAY");
  case DSN_RELAYED:
    return u->status == RCPT_SENT && wants_notice(rc->notify, "SUCCESS");
  case DSN_FAILED:
    break;
  }
  return u->status == RCPT_BOUNCED && wants_notice(rc->notify, "FAILURE");
}

/* RET=FULL (RFC 3461 4.3) asks for the whole message in a failure report; every other report,
 * and a message over the cap, gets its header section. */
static int return_full(enum dsn_kind kind, const struct store_msg *m, size_t len)
{
  return kind == DSN_FAILED && m->ret && !str_casecmp_n(m->ret, strlen(m->ret), "FULL") &&
         len <= LIM_DSN_RETURN_FULL;
}

static int dsn_report(struct store *st, const struct config *cfg, const struct store_msg *m,
                      const char *body, size_t len, const struct store_rcpt_update *upd,
                      size_t n, enum dsn_kind kind, char id[LIM_QUEUE_ID + 1])
{
  int delayed = kind == DSN_DELAYED, full = return_full(kind, m, len);
  struct buf text, status;
  char orcpt[LIM_SMTP_PATH + 16];
  GMimeMessage *msg = NULL;
  GMimeMultipart *report = NULL;
  GMimeTextPart *human = NULL;
  GMimeFormatOptions *fo = NULL;
  GMimeStream *out = NULL;
  GByteArray *bytes;
  char *arrival = NULL, *now_date = NULL, *msgid = NULL, *until = NULL;
  const char *host = cfg->hostname ? cfg->hostname : "localhost";
  struct store_msg d;
  struct store_rcpt to;
  char qid[LIM_QUEUE_ID + 1], sha[TLS_SHA256_HEX_LEN + 1], from[LIM_SMTP_DOMAIN + 32];
  size_t i, hlen, notices = 0;
  int result = STORE_ERROR, eightbit;
  long long now = time_real_ms();

  id[0] = '\0';
  if(!m->sender || !m->sender[0])
    return STORE_OK;              /* never to the null sender: no loops of bounces */
  vendor_gmime_start();
  buf_init(&text, DSN_TEXT_MAX);
  buf_init(&status, DSN_TEXT_MAX);
  arrival = format_date(m->created_ms);
  now_date = format_date(now);
  until = format_date(m->created_ms + cfg->queue_lifetime * 1000LL);
  if(!arrival || !now_date || !until)
    goto out;

  /* the words Postfix uses, which senders and their filters know */
  if((kind == DSN_RELAYED ?
      buf_addf(&text, "This is the mail system at host %s.\n\n"
               "Your message was successfully relayed to the destination(s) listed below,\n"
               "whose mail system does not send delivery notifications: you will get no\n"
               "further notice of its delivery from there (only, perhaps, of an error).\n\n"
               "                   The mail system\n\n", host) :
      delayed ?
      buf_addf(&text, "This is the mail system at host %s.\n\n"
               "####################################################################\n"
               "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
               "####################################################################\n\n"
               "Your message could not be delivered for %.1f hours.\n"
               "It will be retried until it is %.1f days old.\n\n"
               "For further assistance, please contact your system administrator.\n\n"
               "                   The mail system\n\n", host,
               (double)(now - m->created_ms) / 3600000.0,
               (double)cfg->queue_lifetime / 86400.0) :
      buf_addf(&text, "This is the mail system at host %s.\n\n"
               "I'm sorry to have to inform you that your message could not be delivered to "
               "one or more\nrecipients. %s is attached below.\n\n"
               "For further assistance, please contact your system administrator.\n\n"
               "                   The mail system\n\n", host,
               full ? "The message" : "Its header section")) ||
     buf_addf(&status, "Reporting-MTA: dns; %s\nX-Postern-Queue-ID: %s\n"
              "X-Postern-Sender: rfc822; %s\n", host, m->id, m->sender) ||
     (m->envid && !smtp_dsn_value_valid(m->envid, strlen(m->envid), 0) &&
      buf_addf(&status, "Original-Envelope-Id: %s\n", m->envid)) ||
     buf_addf(&status, "Arrival-Date: %s\n", arrival))
    goto out;
  for(i = 0; i < n; i++) {
    const struct store_rcpt *rc = rcpt_of(m, upd[i].idx);
    const struct cfg_upstream *up = upd[i].upstream ? config_upstream(cfg, upd[i].upstream) : NULL;
    char st_code[16];
    if(!reported(kind, &upd[i], rc))
      continue;
    notices++;
    if(delayed)
      str_copy(st_code, sizeof(st_code), "4.4.7");
    else
      status_of(upd[i].reply, kind == DSN_RELAYED ? '2' : '5', st_code, sizeof(st_code));
    if(buf_addf(&text, "<%s>: %s%s%s%s%s\n\n", rc->address,
                kind == DSN_RELAYED ? "relayed via " : "",
                up && up->host ? "host " : kind == DSN_RELAYED && upd[i].upstream ?
                upd[i].upstream : "",
                up && up->host ? up->host : "", up && up->host ? " said: " :
                kind == DSN_RELAYED ? ": " : "",
                upd[i].reply ? upd[i].reply : "(no reply)") ||
       buf_addf(&status, "\nFinal-Recipient: rfc822; %s\n", rc->address))
      goto out;
    /* ORCPT came as xtext; the field carries the address decoded. A stored value that is no
     * valid ORCPT (a store older than the check at RCPT) is left out, not guessed at. */
    if(rc->orcpt && !smtp_orcpt_decode(rc->orcpt, strlen(rc->orcpt), orcpt, sizeof(orcpt)) &&
       buf_addf(&status, "Original-Recipient: %s\n", orcpt))
      goto out;
    if(buf_addf(&status, "Action: %s\nStatus: %s\n", delayed ? "delayed" :
                kind == DSN_RELAYED ? "relayed" : "failed", st_code) ||
       (delayed && buf_addf(&status, "Will-Retry-Until: %s\n", until)) ||
       (up && up->host && buf_addf(&status, "Remote-MTA: dns; %s\n", up->host)) ||
       (upd[i].reply && buf_addf(&status, "Diagnostic-Code: smtp; %s\n", upd[i].reply)) ||
       buf_addf(&status, "Last-Attempt-Date: %s\n", now_date))
      goto out;
  }
  if(!notices) {
    result = STORE_OK;
    goto out;
  }

  msg = g_mime_message_new(TRUE);
  snprintf(from, sizeof(from), "MAILER-DAEMON@%s", host);
  g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM, "Mail Delivery System", from);
  g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_TO, NULL, m->sender);
  g_mime_message_set_subject(msg, delayed ? "Delayed Mail (still being retried)" :
                             kind == DSN_RELAYED ? "Successful Mail Delivery Report" :
                             "Undelivered Mail Returned to Sender", NULL);
  {
    GDateTime *dt = g_date_time_new_from_unix_local(now / 1000);
    if(dt) {
      g_mime_message_set_date(msg, dt);
      g_date_time_unref(dt);
    }
  }
  msgid = g_mime_utils_generate_message_id(host);
  if(msgid)
    g_mime_message_set_message_id(msg, msgid);
  /* RFC 3834: an automatic reply, which nobody should answer automatically in turn */
  g_mime_object_set_header(GMIME_OBJECT(msg), "Auto-Submitted", "auto-replied", NULL);

  report = g_mime_multipart_new_with_subtype("report");
  g_mime_object_set_content_type_parameter(GMIME_OBJECT(report), "report-type", "delivery-status");
  human = g_mime_text_part_new_with_subtype("plain");
  g_mime_text_part_set_text(human, text.ptr);
  g_mime_object_set_header(GMIME_OBJECT(human), "Content-Description", "Notification", NULL);
  g_mime_multipart_add(report, GMIME_OBJECT(human));
  {
    GMimeObject *ds = part_with("message", "delivery-status", status.ptr, status.len,
                                !smtp_text_is_ascii(status.ptr, status.len));
    g_mime_object_set_header(ds, "Content-Description", "Delivery report", NULL);
    g_mime_multipart_add(report, ds);
    g_object_unref(ds);
  }
  hlen = full ? len : header_length(body, len);
  eightbit = !smtp_text_is_ascii(body, hlen);
  {
    GMimeObject *hp = full ? part_with("message", "rfc822", body, hlen, eightbit)
                           : part_with("text", "rfc822-headers", body, hlen, eightbit);
    g_mime_object_set_header(hp, "Content-Description", full ? "Undelivered Message" :
                             kind == DSN_RELAYED ? "Message Headers" :
                             "Undelivered Message Headers", NULL);
    g_mime_multipart_add(report, hp);
    g_object_unref(hp);
  }
  g_mime_message_set_mime_part(msg, GMIME_OBJECT(report));

  fo = g_mime_format_options_new();
  g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
  out = g_mime_stream_mem_new();
  if(g_mime_object_write_to_stream(GMIME_OBJECT(msg), fo, out) < 0)
    goto out;
  bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out));

  memset(&d, 0, sizeof(d));
  memset(&to, 0, sizeof(to));
  store_new_id(qid);
  str_copy(d.id, sizeof(d.id), qid);
  d.sender = (char *)"";
  d.created_ms = now;
  d.size = (long long)bytes->len;
  d.body_8bit = eightbit || !smtp_text_is_ascii(text.ptr, text.len);
  d.smtputf8 = !smtp_text_is_ascii(m->sender, strlen(m->sender));
  d.source = (char *)"dsn";
  d.body_sha256 = tls_sha256_hex(bytes->data, bytes->len, sha) ? NULL : sha;
  to.idx = 0;
  to.address = m->sender;
  to.notify = (char *)"NEVER";   /* RFC 3461 5.2.1: a DSN asks for no DSN about itself */
  d.rcpts = &to;
  d.nrcpts = 1;
  result = store_accept(st, &d, bytes->data, bytes->len);
  if(!result) {
    str_copy(id, LIM_QUEUE_ID + 1, qid);
    log_info("%s: from=<>, size=%u, nrcpt=1 (%s for %s)", qid, bytes->len,
             delayed ? "delay notification" : kind == DSN_RELAYED ? "success notification" :
             "non-delivery notification", m->id);
  }
out:
  if(out)
    g_object_unref(out);
  if(fo)
    g_mime_format_options_free(fo);
  if(human)
    g_object_unref(human);
  if(report)
    g_object_unref(report);
  if(msg)
    g_object_unref(msg);
  g_free(msgid);
  g_free(arrival);
  g_free(now_date);
  g_free(until);
  buf_free(&text);
  buf_free(&status);
  return result;
}

int dsn_bounce(struct store *st, const struct config *cfg, const struct store_msg *m,
               const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
               char id[LIM_QUEUE_ID + 1])
{
  return dsn_report(st, cfg, m, body, len, upd, n, DSN_FAILED, id);
}

int dsn_relayed(struct store *st, const struct config *cfg, const struct store_msg *m,
                const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
                char id[LIM_QUEUE_ID + 1])
{
  return dsn_report(st, cfg, m, body, len, upd, n, DSN_RELAYED, id);
}

int dsn_delay(struct store *st, const struct config *cfg, const struct store_msg *m,
              const char *body, size_t len, const struct store_rcpt_update *upd, size_t n,
              char id[LIM_QUEUE_ID + 1])
{
  return dsn_report(st, cfg, m, body, len, upd, n, DSN_DELAYED, id);
}
