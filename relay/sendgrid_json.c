/* The MIME -> SendGrid v3 mail/send mapping: a queued message parsed once with GMime, then one
 * JSON request per slice of at most 1,000 envelope recipients. Kept apart from the HTTP side so
 * that it can be unit-tested and fuzzed on its own. */
#include "relay/relay_int.h"
#include "lib/vendor.h"
#include "lib/buf.h"
#include <gmime/gmime.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sendgrid_addr {
  char *email;                  /* as written; compared case-insensitively */
  char *name;                   /* UTF-8 display name, or NULL */
};

struct sendgrid_msg {
  json_t *base;                 /* every member but personalizations */
  struct sendgrid_addr *to, *cc;
  size_t nto, ncc;
  size_t base_len;              /* serialized size of base, for the size limit */
};

static void why_set(char *why, size_t whysz, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t whysz, const char *fmt, ...)
{
  va_list ap;
  if(!why || !whysz)
    return;
  va_start(ap, fmt);
  vsnprintf(why, whysz, fmt, ap);
  va_end(ap);
}

/* SendGrid refuses these in `headers`: it writes them itself, or they would lie (x-sg-*,
 * Received, DKIM-Signature); the MIME ones describe a structure it rebuilds. */
static int header_forbidden(const char *name)
{
  static const char *const names[] = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
    "mime-version", "return-path", NULL
  };
  size_t i;
  for(i = 0; names[i]; i++)
    if(!strcasecmp(name, names[i]))
      return 1;
  return !strncasecmp(name, "content-", 8);
}

/* RFC 5322 field name: printable ASCII but ':' */
static int header_name_ok(const char *s)
{
  if(!*s)
    return 0;
  for(; *s; s++)
    if((unsigned char)*s < 33 || (unsigned char)*s > 126 || *s == ':')
      return 0;
  return 1;
}

/* No control characters (tab aside) and valid UTF-8: what SendGrid accepts in header values
 * and file names. */
static int text_ok(const char *s)
{
  const unsigned char *p;
  if(!g_utf8_validate(s, -1, NULL))
    return 0;
  for(p = (const unsigned char *)s; *p; p++)
    if((*p < 32 && *p != '\t') || *p == 127)
      return 0;
  return 1;
}

/* A header value unfolded: CR and LF dropped, leading blanks trimmed. */
static char *unfold(const char *raw)
{
  size_t n = strlen(raw), i, o = 0;
  char *out = malloc(n + 1);
  if(!out)
    return NULL;
  while(*raw == ' ' || *raw == '\t')
    raw++;
  n = strlen(raw);
  for(i = 0; i < n; i++)
    if(raw[i] != '\r' && raw[i] != '\n')
      out[o++] = raw[i];
  while(o && (out[o - 1] == ' ' || out[o - 1] == '\t'))
    o--;
  out[o] = '\0';
  return out;
}

static json_t *addr_json(const char *email, const char *name)
{
  json_t *o = json_object();
  if(!o || json_object_set_new(o, "email", json_string(email)))
    goto fail;
  if(name && *name && text_ok(name) && json_object_set_new(o, "name", json_string(name)))
    goto fail;
  return o;
fail:
  json_decref(o);
  return NULL;
}

/* Appends the mailboxes of list (groups flattened) to *v. */
static int addrs_collect(InternetAddressList *list, struct sendgrid_addr **v, size_t *n)
{
  int i, count = list ? internet_address_list_length(list) : 0;
  for(i = 0; i < count; i++) {
    InternetAddress *ia = internet_address_list_get_address(list, i);
    struct sendgrid_addr *nv;
    const char *addr, *name;
    if(INTERNET_ADDRESS_IS_GROUP(ia)) {
      if(addrs_collect(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia)), v, n))
        return -1;
      continue;
    }
    if(!INTERNET_ADDRESS_IS_MAILBOX(ia))
      continue;
    addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
    name = internet_address_get_name(ia);
    if(!addr || !*addr)
      continue;
    nv = realloc(*v, (*n + 1) * sizeof(**v));
    if(!nv)
      return -1;
    *v = nv;
    nv[*n].email = str_dup_n(addr, strlen(addr));
    nv[*n].name = name && *name ? str_dup_n(name, strlen(name)) : NULL;
    if(!nv[*n].email)
      return -1;
    (*n)++;
  }
  return 0;
}

static void addrs_free(struct sendgrid_addr *v, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    free(v[i].email);
    free(v[i].name);
  }
  free(v);
}

/* The first mailbox of a header as a SendGrid address object, or NULL. */
static json_t *first_mailbox(InternetAddressList *list)
{
  struct sendgrid_addr *v = NULL;
  size_t n = 0;
  json_t *o = NULL;
  if(!addrs_collect(list, &v, &n) && n)
    o = addr_json(v[0].email, v[0].name);
  addrs_free(v, n);
  return o;
}

struct walk {
  json_t *content_plain, *content_html, *content_other, *attachments;
  json_t *cids;                 /* [index in attachments, Content-ID] of parts sent as attachments */
  int count;                    /* leaves seen, for generated file names */
  int failed;                   /* out of memory */
  char *why;
  size_t whysz;
};

static int is_text_body(GMimeObject *part, const char *mime, const char *filename)
{
  GMimeContentDisposition *cd = g_mime_object_get_content_disposition(part);
  if(!GMIME_IS_TEXT_PART(part) || filename)
    return 0;
  if(cd && g_mime_content_disposition_is_attachment(cd))
    return 0;
  return !strcasecmp(mime, "text/plain") || !strcasecmp(mime, "text/html") ||
         !strcasecmp(mime, "text/calendar");
}

/* The decoded bytes of a part (or the whole of an attached message) in base64. */
static char *part_base64(GMimeObject *part, size_t *rawlen)
{
  GMimeStream *mem = g_mime_stream_mem_new();
  GByteArray *ba;
  char *out = NULL;
  if(!mem)
    return NULL;
  if(GMIME_IS_PART(part)) {
    GMimeDataWrapper *dw = g_mime_part_get_content(GMIME_PART(part));
    if(dw && g_mime_data_wrapper_write_to_stream(dw, mem) < 0)
      goto out;
  }
  else if(g_mime_object_write_to_stream(part, NULL, mem) < 0)
    goto out;
  ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
  *rawlen = ba ? ba->len : 0;
  out = g_base64_encode(ba && ba->len ? ba->data : (const guchar *)"", ba ? ba->len : 0);
out:
  g_object_unref(mem);
  return out;
}

/* Is parent a multipart/related? Its parts with a Content-ID are the HTML's pictures. */
static int in_related(GMimeObject *parent)
{
  GMimeContentType *ct = parent ? g_mime_object_get_content_type(parent) : NULL;
  return ct && g_mime_content_type_is_type(ct, "multipart", "related");
}

static void walk_leaf(struct walk *w, GMimeObject *parent, GMimeObject *part)
{
  GMimeContentType *ct = g_mime_object_get_content_type(part);
  GMimeContentDisposition *cd = g_mime_object_get_content_disposition(part);
  char *mime = ct ? g_mime_content_type_get_mime_type(ct) : g_strdup("application/octet-stream");
  const char *filename = GMIME_IS_PART(part) ? g_mime_part_get_filename(GMIME_PART(part)) : NULL;
  const char *cid = g_mime_object_get_content_id(part);
  json_t *o = NULL;
  char *b64 = NULL, gen[64];
  size_t rawlen = 0;
  int inline_part;

  w->count++;
  if(!mime) {
    w->failed = 1;
    return;
  }
  if(is_text_body(part, mime, filename)) {
    json_t **slot = !strcasecmp(mime, "text/plain") ? &w->content_plain :
                    !strcasecmp(mime, "text/html") ? &w->content_html : &w->content_other;
    if(!*slot) {
      char *text = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
      char *valid = text ? g_utf8_make_valid(text, -1) : NULL;
      char *lower = g_ascii_strdown(mime, -1);
      /* SendGrid refuses an empty value: one space stands for an empty body */
      *slot = json_pack("{s:s, s:s}", "type", lower, "value", valid && *valid ? valid : " ");
      g_free(text);
      g_free(valid);
      g_free(lower);
      if(!*slot)
        w->failed = 1;
      g_free(mime);
      return;
    }
  }
  if(filename && !text_ok(filename)) {
    why_set(w->why, w->whysz, "attachment file name has characters SendGrid does not accept");
    w->failed = 2;
    goto out;
  }
  b64 = part_base64(part, &rawlen);
  if(!b64) {
    w->failed = 1;
    goto out;
  }
  if(!rawlen)
    goto out;     /* SendGrid refuses empty content; an empty file carries nothing anyway */
  /* SendGrid wants a content_id for every inline part: without one it is an attachment. A part
   * with a Content-ID inside multipart/related is the HTML's picture whatever its disposition
   * says (Python's EmailMessage.add_related writes "attachment" there); one the HTML names by
   * cid: is found after the walk, once the HTML is known. */
  inline_part = cid && *cid && text_ok(cid) &&
                (in_related(parent) || !(cd && g_mime_content_disposition_is_attachment(cd)));
  if(!filename) {
    if(GMIME_IS_MESSAGE_PART(part))
      snprintf(gen, sizeof(gen), "message-%d.eml", w->count);
    else
      snprintf(gen, sizeof(gen), "%s-%d", inline_part ? "inline" : "attachment", w->count);
    filename = gen;
  }
  o = json_pack("{s:s, s:s, s:s, s:s}", "content", b64, "type", mime, "filename", filename,
                "disposition", inline_part ? "inline" : "attachment");
  if(!o || (inline_part && json_object_set_new(o, "content_id", json_string(cid))) ||
     (!inline_part && cid && *cid && text_ok(cid) &&
      json_array_append_new(w->cids, json_pack("[i,s]", (json_int_t)json_array_size(w->attachments),
                                               cid))) ||
     json_array_append_new(w->attachments, o)) {
    w->failed = 1;
    goto out;
  }
out:
  g_free(b64);
  g_free(mime);
}

static void walk_cb(GMimeObject *parent, GMimeObject *part, gpointer data)
{
  struct walk *w = data;
  if(w->failed || GMIME_IS_MULTIPART(part))
    return;
  walk_leaf(w, parent, part);
}

/* An attachment the HTML shows with <img src="cid:ID"> goes inline with its content_id, or
 * SendGrid sends it as a file and the picture breaks. 0, or -1 out of memory. */
static int cids_referenced(struct walk *w)
{
  const char *html = json_string_value(json_object_get(w->content_html, "value"));
  size_t i;
  json_t *v;
  if(!html)
    return 0;
  json_array_foreach(w->cids, i, v) {
    json_t *att = json_array_get(w->attachments, (size_t)json_integer_value(json_array_get(v, 0)));
    const char *cid = json_string_value(json_array_get(v, 1));
    char *ref = g_strconcat("cid:", cid, NULL);
    int found = ref && strcasestr(html, ref) != NULL;
    g_free(ref);
    if(!ref)
      return -1;
    if(found && att && (json_object_set_new(att, "disposition", json_string("inline")) ||
                        json_object_set_new(att, "content_id", json_string(cid))))
      return -1;
  }
  return 0;
}

static int headers_add(json_t *base, GMimeObject *top, char *why, size_t whysz)
{
  GMimeHeaderList *hl = g_mime_object_get_header_list(top);
  json_t *h = json_object();
  int i, count = hl ? g_mime_header_list_get_count(hl) : 0, result = 0;
  if(!h)
    return -1;
  for(i = 0; i < count; i++) {
    GMimeHeader *hd = g_mime_header_list_get_header_at(hl, i);
    const char *name = g_mime_header_get_name(hd);
    const char *raw = g_mime_header_get_raw_value(hd);
    char *value;
    if(!name || header_forbidden(name) || json_object_get(h, name))
      continue;
    if(!header_name_ok(name)) {
      why_set(why, whysz, "header field name not accepted by SendGrid");
      result = 1;
      goto out;
    }
    value = unfold(raw ? raw : "");
    if(!value) {
      result = -1;
      goto out;
    }
    if(!text_ok(value)) {
      why_set(why, whysz, "header field %.64s has characters SendGrid does not accept", name);
      free(value);
      result = 1;
      goto out;
    }
    if(*value && json_object_set_new(h, name, json_string(value))) {
      free(value);
      result = -1;
      goto out;
    }
    free(value);
  }
  if(json_object_size(h))
    result = json_object_set(base, "headers", h) ? -1 : 0;
out:
  json_decref(h);
  return result;
}

int sendgrid_msg_parse(const char *body, size_t len, const char *queue_id, const char *sender,
                       struct sendgrid_msg **out, char *why, size_t whysz)
{
  GMimeStream *stream = NULL;
  GMimeParser *parser = NULL;
  GMimeMessage *msg = NULL;
  struct sendgrid_msg *sm = NULL;
  struct walk w;
  json_t *o, *content = NULL;
  const char *subject;
  char *dump;
  int result = SENDGRID_NOMEM, n;

  memset(&w, 0, sizeof(w));
  w.why = why;
  w.whysz = whysz;
  *out = NULL;
  why_set(why, whysz, "out of memory");
  vendor_gmime_start();
  if(len > SENDGRID_MAX_SIZE) {
    why_set(why, whysz, "message is larger than SendGrid's 30 MB limit");
    return SENDGRID_REFUSED;
  }
  sm = calloc(1, sizeof(*sm));
  if(!sm)
    goto out;
  sm->base = json_object();
  w.attachments = json_array();
  w.cids = json_array();
  stream = g_mime_stream_mem_new_with_buffer(body, len);
  if(!sm->base || !w.attachments || !w.cids || !stream)
    goto out;
  parser = g_mime_parser_new_with_stream(stream);
  msg = parser ? g_mime_parser_construct_message(parser, NULL) : NULL;
  if(!msg) {
    why_set(why, whysz, "message cannot be parsed as MIME");
    result = SENDGRID_REFUSED;
    goto out;
  }

  o = first_mailbox(g_mime_message_get_from(msg));
  if(!o && sender && *sender)
    o = addr_json(sender, NULL);
  if(!o) {
    why_set(why, whysz, "message has no From address (and the envelope sender is empty)");
    result = SENDGRID_REFUSED;
    goto out;
  }
  if(json_object_set_new(sm->base, "from", o))
    goto out;
  {
    struct sendgrid_addr *rt = NULL;
    size_t nrt = 0, i;
    InternetAddressList *l = g_mime_message_get_reply_to(msg);
    if(addrs_collect(l, &rt, &nrt)) {
      addrs_free(rt, nrt);
      goto out;
    }
    if(nrt == 1)
      o = addr_json(rt[0].email, rt[0].name);
    else if(nrt > 1) {
      o = json_array();
      for(i = 0; o && i < nrt && i < SENDGRID_MAX_RCPTS; i++)
        if(json_array_append_new(o, addr_json(rt[i].email, rt[i].name))) {
          json_decref(o);
          o = NULL;
        }
    }
    addrs_free(rt, nrt);
    if(nrt && (!o || json_object_set_new(sm->base, nrt == 1 ? "reply_to" : "reply_to_list", o)))
      goto out;
  }
  subject = g_mime_message_get_subject(msg);
  if(subject && *subject) {
    char *s = g_utf8_make_valid(subject, -1), *p;
    /* a subject is one line */
    for(p = s; p && *p; p++)
      if(*p == '\r' || *p == '\n' || *p == '\t')
        *p = ' ';
    n = s ? json_object_set_new(sm->base, "subject", json_string(s)) : -1;
    g_free(s);
    if(n)
      goto out;
  }
  if(addrs_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_TO), &sm->to, &sm->nto) ||
     addrs_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_CC), &sm->cc, &sm->ncc))
    goto out;

  if(g_mime_message_get_mime_part(msg)) {
    GMimeObject *top = g_mime_message_get_mime_part(msg);
    if(GMIME_IS_MULTIPART(top))
      g_mime_multipart_foreach(GMIME_MULTIPART(top), walk_cb, &w);
    else
      walk_cb(NULL, top, &w);
  }
  if(w.failed) {
    result = w.failed == 2 ? SENDGRID_REFUSED : SENDGRID_NOMEM;
    goto out;
  }
  if(cids_referenced(&w))
    goto out;
  content = json_array();
  if(!content)
    goto out;
  /* text/plain first, then text/html, then the rest: SendGrid's order */
  if(w.content_plain && json_array_append(content, w.content_plain))
    goto out;
  if(w.content_html && json_array_append(content, w.content_html))
    goto out;
  if(w.content_other && json_array_append(content, w.content_other))
    goto out;
  if(!json_array_size(content)) {
    json_t *c = json_pack("{s:s, s:s}", "type", "text/plain", "value", " ");
    if(!c || json_array_append_new(content, c))
      goto out;
  }
  if(json_object_set(sm->base, "content", content))
    goto out;
  if(json_array_size(w.attachments) && json_object_set(sm->base, "attachments", w.attachments))
    goto out;
  n = headers_add(sm->base, GMIME_OBJECT(msg), why, whysz);
  if(n) {
    result = n > 0 ? SENDGRID_REFUSED : SENDGRID_NOMEM;
    goto out;
  }
  /* how Event Webhook events find their way back to the queue entry */
  o = json_pack("{s:s}", "postern_id", queue_id ? queue_id : "");
  if(!o || json_object_set_new(sm->base, "custom_args", o))
    goto out;
  dump = json_dumps(sm->base, JSON_COMPACT);
  if(!dump)
    goto out;
  sm->base_len = strlen(dump);
  free(dump);
  if(sm->base_len > SENDGRID_MAX_SIZE) {
    why_set(why, whysz, "message is larger than SendGrid's 30 MB limit once encoded");
    result = SENDGRID_REFUSED;
    goto out;
  }
  *out = sm;
  sm = NULL;
  result = SENDGRID_OK;
  why_set(why, whysz, "%s", "");
out:
  json_decref(w.content_plain);
  json_decref(w.content_html);
  json_decref(w.content_other);
  json_decref(w.attachments);
  json_decref(w.cids);
  json_decref(content);
  if(msg)
    g_object_unref(msg);
  if(parser)
    g_object_unref(parser);
  if(stream)
    g_object_unref(stream);
  sendgrid_msg_free(sm);
  return result;
}

static const struct sendgrid_addr *addr_find(const struct sendgrid_addr *v, size_t n,
                                             const char *email)
{
  size_t i;
  for(i = 0; i < n; i++)
    if(!strcasecmp(v[i].email, email))
      return &v[i];
  return NULL;
}

static int append_addr(json_t *arr, const char *email, const struct sendgrid_addr *known)
{
  json_t *o = addr_json(email, known ? known->name : NULL);
  return !o || json_array_append_new(arr, o);
}

char *sendgrid_msg_request(const struct sendgrid_msg *sm, const char *const *rcpts, size_t n,
                           size_t *len, char *why, size_t whysz)
{
  json_t *req = NULL, *pers = NULL, *to = NULL, *cc = NULL, *bcc = NULL, *p;
  char *out = NULL;
  size_t i, j;

  why_set(why, whysz, "out of memory");
  if(!sm || n > SENDGRID_MAX_RCPTS) {
    why_set(why, whysz, "more than %d recipients in one request", SENDGRID_MAX_RCPTS);
    return NULL;
  }
  req = json_copy(sm->base);    /* shallow: the big members are shared, not copied */
  pers = json_array();
  to = json_array();
  cc = json_array();
  bcc = json_array();
  if(!req || !pers || !to || !cc || !bcc)
    goto out;
  for(i = 0; i < n; i++) {
    const struct sendgrid_addr *a;
    int dup = 0;
    /* each address once, whatever the envelope repeats */
    for(j = 0; j < i && !dup; j++)
      dup = !strcasecmp(rcpts[i], rcpts[j]);
    if(dup)
      continue;
    if((a = addr_find(sm->to, sm->nto, rcpts[i]))) {
      if(append_addr(to, rcpts[i], a))
        goto out;
    }
    else if((a = addr_find(sm->cc, sm->ncc, rcpts[i]))) {
      if(append_addr(cc, rcpts[i], a))
        goto out;
    }
    else if(append_addr(bcc, rcpts[i], NULL))
      goto out;
  }
  if(json_array_size(to)) {
    p = json_object();
    if(!p || json_object_set(p, "to", to) ||
       (json_array_size(cc) && json_object_set(p, "cc", cc)) ||
       (json_array_size(bcc) && json_object_set(p, "bcc", bcc)) ||
       json_array_append_new(pers, p)) {
      json_decref(p);
      goto out;
    }
  }
  else {
    /* no envelope recipient is in To: SendGrid needs a `to`, and a shared one would disclose
     * the Bcc list, so each recipient gets a personalization of their own */
    json_t *all[2] = { cc, bcc };
    size_t k;
    for(k = 0; k < 2; k++)
      for(i = 0; i < json_array_size(all[k]); i++) {
        p = json_pack("{s:[O]}", "to", json_array_get(all[k], i));
        if(!p || json_array_append_new(pers, p))
          goto out;
      }
  }
  if(!json_array_size(pers)) {
    why_set(why, whysz, "no recipients");
    goto out;
  }
  if(json_object_set(req, "personalizations", pers))
    goto out;
  out = json_dumps(req, JSON_COMPACT);
  if(out) {
    *len = strlen(out);
    if(*len > SENDGRID_MAX_SIZE) {
      why_set(why, whysz, "message is larger than SendGrid's 30 MB limit once encoded");
      free(out);
      out = NULL;
    }
    else
      why_set(why, whysz, "%s", "");
  }
out:
  json_decref(req);
  json_decref(pers);
  json_decref(to);
  json_decref(cc);
  json_decref(bcc);
  return out;
}

void sendgrid_msg_free(struct sendgrid_msg *sm)
{
  if(!sm)
    return;
  json_decref(sm->base);
  addrs_free(sm->to, sm->nto);
  addrs_free(sm->cc, sm->ncc);
  free(sm);
}
