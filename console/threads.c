/* Correspondence in the console: threads (the records of one conversation: the outbound
 * message, its delivery events, the replies with their reply_text, attachments, DSNs) and
 * each record's forward state. Read from the store's records; their JSON is what
 * inbound/records.c made, read here with jansson. */
#include "console/pages.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define THREADS_MAX 200               /* threads the list shows */
#define RECORDS_SCAN_MAX 20000        /* records the list reads at most */

static const char *jtext(json_t *o, const char *key)
{
  json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* "Name <address>" of a {name, address} object, written as text */
static void person(struct buf *b, json_t *p)
{
  const char *name = jtext(p, "name"), *addr = jtext(p, "address");
  if(name && *name)
    html_put(b, "{} &lt;{}&gt;", name, addr ? addr : "");
  else
    html_text(b, addr ? addr : "-");
}

static void people(struct buf *b, json_t *arr)
{
  size_t i;
  json_t *p;
  if(json_is_object(arr)) {
    person(b, arr);
    return;
  }
  json_array_foreach(arr, i, p) {
    if(i)
      html_lit(b, ", ");
    person(b, p);
  }
}

static int contains_ci(const char *hay, const char *needle)
{
  size_t n = strlen(needle), i;
  for(i = 0; hay && hay[i]; i++)
    if(!strncasecmp(hay + i, needle, n))
      return 1;
  return 0;
}

/* ---- the list -------------------------------------------------------------------------- */

struct thread_row {
  char *thread, *subject, *last_status;
  long long last_ms;
  long count;
};
struct thread_walk {
  struct thread_row rows[THREADS_MAX];
  size_t n, scanned;
  const char *search;
};

static int thread_add(void *arg, const struct store_record *r)
{
  struct thread_walk *w = arg;
  json_t *j = r->json ? json_loads(r->json, 0, NULL) : NULL;
  const char *subject = j ? jtext(j, "subject") : NULL;
  size_t i;
  if(++w->scanned > RECORDS_SCAN_MAX) {
    json_decref(j);
    return 1;
  }
  for(i = 0; i < w->n && strcmp(w->rows[i].thread, r->thread_id ? r->thread_id : ""); i++)
    ;
  if(i == w->n) {
    if(w->search && !contains_ci(subject, w->search)) {
      json_decref(j);
      return 0;
    }
    if(w->n == THREADS_MAX) {      /* the oldest thread makes room: newest are shown */
      free(w->rows[0].thread);
      free(w->rows[0].subject);
      free(w->rows[0].last_status);
      memmove(&w->rows[0], &w->rows[1], (THREADS_MAX - 1) * sizeof(w->rows[0]));
      i = --w->n;
    }
    memset(&w->rows[i], 0, sizeof(w->rows[i]));
    w->rows[i].thread = str_dup_n(r->thread_id ? r->thread_id : "",
                                  r->thread_id ? strlen(r->thread_id) : 0);
    w->rows[i].subject = subject ? str_dup_n(subject, strlen(subject)) : NULL;
    w->n++;
  }
  w->rows[i].count++;
  w->rows[i].last_ms = r->received_ms;
  free(w->rows[i].last_status);
  w->rows[i].last_status = str_dup_n(r->direction ? r->direction : "", r->direction ?
                                     strlen(r->direction) : 0);
  json_decref(j);
  return 0;
}

void threads_list(struct pages_ctx *pc, struct web_response *out)
{
  struct buf *b = &out->body;
  const char *address = pc->rq->value(pc->rq->ctx, WEB_QUERY, "address"),
             *search = pc->rq->value(pc->rq->ctx, WEB_QUERY, "q");
  struct thread_walk *w = calloc(1, sizeof(*w));
  long long waiting = 0, aside = 0;
  char t[32], n[24];
  size_t i;
  int r;
  if(!w) {
    console_plain(out, 503, "out of memory\n");
    return;
  }
  if(address && !*address)
    address = NULL;
  w->search = search && *search ? search : NULL;
  r = store_record_list(pc->st, address, NULL, thread_add, w);
  console_page_begin(b, "Correspondence", pc->session, "threads");
  html_put(b, "<form method=\"get\" action=\"/console/threads\" class=\"filters\" "
           "role=\"search\"><label>Address <input name=\"address\" value=\"{}\" "
           "placeholder=\"patient@example.com\"></label><label>Subject <input name=\"q\" "
           "value=\"{}\"></label><button type=\"submit\">Search</button></form>",
           address ? address : "", w->search ? w->search : "");
  if(!store_forward_counts(pc->st, &waiting, &aside)) {
    char wn[24], an[24];
    snprintf(wn, sizeof(wn), "%lld", waiting);
    snprintf(an, sizeof(an), "%lld", aside);
    html_put(b, "<p>Forward queue: {} waiting to be sent to the application, {} set aside.</p>",
             wn, an);
  }
  if(r)
    html_lit(b, "<p class=\"error\" role=\"alert\">The store could not be read.</p>");
  else if(!w->n)
    html_lit(b, "<p>No correspondence.</p>");
  else {
    html_lit(b, "<div class=\"scroll\"><table class=\"list\"><thead><tr>"
             "<th scope=\"col\">Subject</th><th scope=\"col\">Records</th>"
             "<th scope=\"col\">Last (UTC)</th><th scope=\"col\">Last direction</th>"
             "</tr></thead><tbody>\n");
    for(i = w->n; i-- > 0;) {
      console_when(w->rows[i].last_ms, t);
      snprintf(n, sizeof(n), "%ld", w->rows[i].count);
      html_put(b, "<tr><td><a href=\"/console/thread?id={u}\">{}</a></td><td>{}</td>"
               "<td>{}</td><td>{}</td></tr>\n", w->rows[i].thread,
               w->rows[i].subject && *w->rows[i].subject ? w->rows[i].subject : "(no subject)",
               n, t, w->rows[i].last_status);
    }
    html_lit(b, "</tbody></table></div>");
  }
  console_page_end(b);
  console_done_html(out);
  for(i = 0; i < w->n; i++) {
    free(w->rows[i].thread);
    free(w->rows[i].subject);
    free(w->rows[i].last_status);
  }
  free(w);
}

/* ---- one thread -------------------------------------------------------------------------- */

struct one_walk {
  struct pages_ctx *pc;
  struct buf *b;
  size_t n;
  char **aside;                  /* ids of set-aside records */
  size_t naside;
};

static int event_row(void *arg, const struct store_record_event *e)
{
  struct buf *b = arg;
  char t[32];
  console_when(e->at_ms, t);
  html_put(b, "<li><span class=\"state\">{}</span> {} {}{}</li>", e->event ? e->event : "?",
           e->recipient ? e->recipient : "", t, " UTC");
  return 0;
}

static int aside_add(void *arg, const struct store_forward *f)
{
  struct one_walk *w = arg;
  char **n = realloc(w->aside, (w->naside + 1) * sizeof(*n));
  if(!n)
    return 1;
  w->aside = n;
  n[w->naside] = str_dup_n(f->id, strlen(f->id));
  if(n[w->naside])
    w->naside++;
  return 0;
}

static int record_block(void *arg, const struct store_record *r)
{
  struct one_walk *w = arg;
  struct buf *b = w->b;
  json_t *j = r->json ? json_loads(r->json, 0, NULL) : NULL, *atts, *a;
  const char *subject = j ? jtext(j, "subject") : NULL,
             *reply = j ? jtext(j, "reply_text") : NULL, *text = j ? jtext(j, "text") : NULL;
  char t[32];
  size_t i;
  int aside = 0;
  for(i = 0; i < w->naside; i++)
    aside |= !strcmp(w->aside[i], r->id);
  w->n++;
  console_when(r->received_ms, t);
  html_put(b, "<article class=\"record\" aria-label=\"{} record {}\"><h2>{} \xc2\xb7 {}</h2>"
           "<div class=\"scroll\"><table class=\"kv\"><tbody>"
           "<tr><th scope=\"row\">Direction</th><td>{}</td></tr>"
           "<tr><th scope=\"row\">Received (UTC)</th><td>{}</td></tr>"
           "<tr><th scope=\"row\">Source</th><td>{}</td></tr><tr><th scope=\"row\">From</th><td>",
           r->direction, r->id, r->direction && !strcmp(r->direction, "in") ? "Reply" :
           "Sent", subject && *subject ? subject : "(no subject)", r->direction, t, r->source);
  people(b, j ? json_object_get(j, "from") : NULL);
  html_lit(b, "</td></tr><tr><th scope=\"row\">To</th><td>");
  people(b, j ? json_object_get(j, "to") : NULL);
  html_put(b, "</td></tr><tr><th scope=\"row\">Status</th><td>{}</td></tr>"
           "<tr><th scope=\"row\">Forward</th><td>{}</td></tr></tbody></table></div>",
           r->status ? r->status : "-", aside ? "set aside (posternctl correspondence forward "
           "retry)" : "not set aside");
  if(!strcmp(r->direction ? r->direction : "", "out"))
    html_put(b, "<p><a href=\"/console/msg/{u}\">The queued message</a></p>", r->id);
  if(reply && *reply && r->direction && !strcmp(r->direction, "in")) {
    html_lit(b, "<h3>Reply text</h3><pre class=\"text\">");
    html_text(b, reply);
    html_lit(b, "</pre>");
  }
  else if(text && *text) {
    html_lit(b, "<h3>Text</h3><pre class=\"text\">");
    html_text(b, text);
    html_lit(b, "</pre>");
  }
  atts = j ? json_object_get(j, "attachments") : NULL;
  if(json_array_size(atts)) {
    html_lit(b, "<h3>Attachments</h3><ul class=\"parts\">");
    json_array_foreach(atts, i, a)
      html_put(b, "<li>{} <span>{}</span></li>", jtext(a, "filename") ? jtext(a, "filename") :
               "(unnamed)", jtext(a, "content_type"));
    html_lit(b, "</ul>");
  }
  html_lit(b, "<h3>Events</h3><ul class=\"events\">");
  store_record_events(w->pc->st, r->id, event_row, b);
  html_lit(b, "</ul></article>\n");
  json_decref(j);
  return 0;
}

void threads_one(struct pages_ctx *pc, struct web_response *out)
{
  struct buf *b = &out->body;
  const char *thread = pc->rq->value(pc->rq->ctx, WEB_QUERY, "id");
  struct one_walk w = { .pc = pc, .b = b };
  size_t i;
  int r;
  if(!thread || !*thread) {
    console_plain(out, 404, "no such thread\n");
    return;
  }
  store_forward_set_aside_list(pc->st, aside_add, &w);
  console_page_begin(b, "Thread", pc->session, "threads");
  html_put(b, "<p class=\"note\">Thread {}</p>", thread);
  r = store_record_list(pc->st, NULL, thread, record_block, &w);
  if(r)
    html_lit(b, "<p class=\"error\" role=\"alert\">The store could not be read.</p>");
  else if(!w.n)
    html_lit(b, "<p>No record in this thread.</p>");
  console_page_end(b);
  console_done_html(out);
  for(i = 0; i < w.naside; i++)
    free(w.aside[i]);
  free(w.aside);
  if(!r && !w.n)
    out->status = 404;
}
