/* The console's pages, server-rendered (usable without JavaScript), every value through the
 * HTML writer. The queue is paged by key (created_ms, id), never by offset, so a page costs
 * the same at the end of 100,000 messages as at the start. */
#include "console/pages.h"
#include "global/config.h"
#include "lib/log.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define RAW_INLINE_MAX (256u * 1024u)   /* raw source shown on the message page; more: /raw */
#define SEARCH_SCAN_MAX 20000           /* captured messages a search reads at most */
#define STREAM_SECONDS 300              /* an event stream ends (the browser reconnects) */

static const char *const state_names[] = { "queued", "deferred", "sent", "bounced", "held",
                                           "captured" };

static void num(long long v, char out[24])
{
  snprintf(out, 24, "%lld", v);
}

static int id_ok(const char *id, size_t n)
{
  size_t i;
  if(!n || n > LIM_QUEUE_ID)
    return 0;
  for(i = 0; i < n; i++)
    if(!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'F')))
      return 0;
  return 1;
}

void pages_login(struct buf *b, const char *token, const char *message)
{
  console_page_begin(b, "Log in", NULL, "");
  if(message)
    html_put(b, "<p class=\"error\" role=\"alert\">{}</p>", message);
  html_put(b, "<form method=\"post\" action=\"/console/login\" class=\"login\">"
           "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
           "<label for=\"user\">User</label>"
           "<input id=\"user\" name=\"user\" autocomplete=\"username\" required autofocus>"
           "<label for=\"password\">Password</label>"
           "<input id=\"password\" name=\"password\" type=\"password\" "
           "autocomplete=\"current-password\" required>"
           "<button type=\"submit\">Log in</button></form>", token);
  console_page_end(b);
}

/* ---- overview ------------------------------------------------------------------------------ */

struct up_count {
  char name[128];
  long long n[RCPT_CAPTURED + 1];
};
struct up_walk {
  struct up_count ups[32];
  size_t nups;
  int capped;                    /* more upstreams than the table shows */
};

static int count_upstream(void *arg, const char *upstream, enum rcpt_status st, long long n)
{
  struct up_walk *w = arg;
  const char *name = upstream ? upstream : "(not tried yet)";
  size_t j;
  for(j = 0; j < w->nups && strcmp(w->ups[j].name, name); j++)
    ;
  if(j == w->nups) {
    if(w->nups == sizeof(w->ups) / sizeof(w->ups[0])) {
      w->capped = 1;
      return 0;
    }
    str_copy(w->ups[j].name, sizeof(w->ups[j].name), name);
    w->nups++;
  }
  w->ups[j].n[st] += n;
  return 0;
}

static void page_overview(struct pages_ctx *pc, struct web_response *out)
{
  struct buf *b = &out->body;
  struct store_counts sc;
  struct up_walk *w = calloc(1, sizeof(*w));
  char t[32], n[24];
  size_t i;
  if(!w || store_counts(pc->st, &sc)) {
    free(w);
    console_plain(out, 503, "the store cannot be read\n");
    return;
  }
  console_page_begin(b, "Overview", pc->session, "overview");
  html_lit(b, "<section aria-labelledby=\"states\"><h2 id=\"states\">Recipients by state</h2>"
           "<dl class=\"counts\" data-live=\"counts\">");
  for(i = 0; i <= RCPT_CAPTURED; i++) {
    num(sc.rcpts[i], n);
    html_put(b, "<div><dt><a href=\"/console/queue?state={u}\">{}</a></dt>"
             "<dd data-count=\"{}\">{}</dd></div>", state_names[i], state_names[i],
             state_names[i], n);
  }
  num(sc.messages, n);
  html_put(b, "<div><dt>messages stored</dt><dd data-count=\"messages\">{}</dd></div>", n);
  num(sc.bytes, n);
  html_put(b, "<div><dt>bytes stored</dt><dd data-count=\"bytes\">{}</dd></div></dl>", n);
  console_when(sc.oldest_unfinished_ms, t);
  html_put(b, "<p>Oldest waiting message: <span data-count=\"oldest\">{}</span> UTC</p>"
           "</section>\n", sc.oldest_unfinished_ms < 0 ? "none" : t);

  /* waiting recipients by the upstream that last had them */
  store_waiting_by_upstream(pc->st, count_upstream, w);
  html_lit(b, "<section aria-labelledby=\"ups\"><h2 id=\"ups\">Waiting recipients by upstream"
           "</h2>");
  if(!w->nups)
    html_lit(b, "<p>Nothing is waiting.</p>");
  else {
    html_lit(b, "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Upstream</th>"
             "<th scope=\"col\">queued</th><th scope=\"col\">deferred</th>"
             "<th scope=\"col\">held</th></tr></thead><tbody>");
    for(i = 0; i < w->nups; i++) {
      char q[24], d[24], h[24];
      num(w->ups[i].n[RCPT_QUEUED], q);
      num(w->ups[i].n[RCPT_DEFERRED], d);
      num(w->ups[i].n[RCPT_HELD], h);
      html_put(b, "<tr><th scope=\"row\"><a href=\"/console/queue?upstream={u}\">{}</a></th>"
               "<td>{}</td><td>{}</td><td>{}</td></tr>", w->ups[i].name, w->ups[i].name, q, d,
               h);
    }
    html_lit(b, "</tbody></table></div>");
    if(w->capped)
      html_lit(b, "<p class=\"note\">The first 32 upstreams are shown.</p>");
  }
  html_lit(b, "</section>");
  overview_more(pc, b, (long long)time(NULL) * 1000);
  console_page_end(b);
  free(w);
  console_done_html(out);
}

/* ---- the queue and the captured inbox ------------------------------------------------------- */

struct list_walk {
  struct pages_ctx *pc;
  struct buf *b;
  const char *upstream;          /* a recipient's last upstream must be this */
  const char *search;            /* captured: in sender, recipients or subject */
  int captured;
  size_t rows, scanned;
  int more;
  long long last_ms;
  char last_id[LIM_QUEUE_ID + 1];
};

static int contains_ci(const char *hay, const char *needle)
{
  size_t n = strlen(needle), i;
  if(!hay)
    return 0;
  for(i = 0; hay[i]; i++)
    if(!strncasecmp(hay + i, needle, n))
      return 1;
  return 0;
}

static int list_row(void *arg, const struct store_msg *m)
{
  struct list_walk *w = arg;
  struct buf *b = w->b;
  char t[32], sz[24];
  char *subject = NULL;
  size_t i;
  if(w->upstream) {
    for(i = 0; i < m->nrcpts; i++)
      if(m->rcpts[i].upstream ? !strcmp(m->rcpts[i].upstream, w->upstream) :
                                !strcmp(w->upstream, "-"))
        break;
    if(i == m->nrcpts)
      return 0;
  }
  if(w->captured) {
    char *body = NULL;
    size_t len = 0;
    if(!store_body(w->pc->st, m->id, &body, &len))
      subject = mail_subject(body, len < 65536 ? len : 65536);
    free(body);
    if(w->search && *w->search) {
      int hit = contains_ci(m->sender, w->search) || contains_ci(subject, w->search);
      for(i = 0; !hit && i < m->nrcpts; i++)
        hit = contains_ci(m->rcpts[i].address, w->search);
      if(!hit) {
        free(subject);
        return ++w->scanned >= SEARCH_SCAN_MAX;
      }
    }
  }
  if(w->rows == LIM_CONSOLE_PAGE_ROWS) {
    w->more = 1;
    free(subject);
    return 1;
  }
  w->rows++;
  w->last_ms = m->created_ms;
  str_copy(w->last_id, sizeof(w->last_id), m->id);
  console_when(m->created_ms, t);
  num(m->size, sz);
  html_put(b, "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{}\" form=\"bulk\" "
           "aria-label=\"select {}\"></td><td><a href=\"/console/msg/{u}\">{}</a></td>"
           "<td>{}</td><td>{}</td><td>", m->id, m->id, m->id, m->id, t,
           *m->sender ? m->sender : "<>");
  for(i = 0; i < m->nrcpts; i++)
    html_put(b, "<span class=\"rcpt\">{} <span class=\"state state-{}\">{}</span></span> ",
             m->rcpts[i].address, rcpt_status_name(m->rcpts[i].status),
             rcpt_status_name(m->rcpts[i].status));
  html_lit(b, "</td><td>");
  if(w->captured)
    html_text(b, subject ? subject : "");
  else
    html_text(b, sz);
  html_lit(b, "</td></tr>\n");
  free(subject);
  return 0;
}

static const char *q(struct pages_ctx *pc, const char *name)
{
  const char *v = pc->rq->value(pc->rq->ctx, WEB_QUERY, name);
  return v && *v ? v : NULL;
}

static void filter_input(struct buf *b, const char *name, const char *label, const char *value,
                         const char *placeholder)
{
  html_put(b, "<label>{} <input name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>", label,
           name, value ? value : "", placeholder);
}

static void bulk_buttons(struct buf *b, const struct console_session *s, const char *back)
{
  html_put(b, "<form id=\"bulk\" method=\"post\" action=\"/console/action\" class=\"actions\">"
           "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
           "<input type=\"hidden\" name=\"back\" value=\"{}\">"
           "<button name=\"action\" value=\"retry\">Retry selected</button>"
           "<button name=\"action\" value=\"hold\">Hold selected</button>"
           "<button name=\"action\" value=\"release\">Release selected</button>"
           "<button name=\"action\" value=\"delete\" class=\"danger\">Delete selected</button>"
           "</form>", s->csrf, back);
}

static void page_list(struct pages_ctx *pc, struct web_response *out, int captured)
{
  struct buf *b = &out->body;
  struct store_filter f = { .status = -1 };
  struct list_walk w = { .pc = pc, .b = b, .captured = captured };
  const char *sender = q(pc, "sender"), *recipient = q(pc, "recipient"),
             *state = q(pc, "state"), *age = q(pc, "age"), *after = q(pc, "after"),
             *search = q(pc, "q");
  char after_id[LIM_QUEUE_ID + 1];
  enum rcpt_status st;
  long long secs;
  int result;
  struct buf back;

  w.upstream = q(pc, "upstream");
  w.search = search;
  f.sender_glob = sender;
  f.recipient_glob = recipient;
  if(captured) {
    f.status = RCPT_CAPTURED;
    f.newest_first = 1;
  }
  else if(state) {
    if(rcpt_status_parse(state, &st)) {
      console_plain(out, 400, "unknown state\n");
      return;
    }
    f.status = (int)st;
  }
  if(age) {
    if(config_parse_duration(age, &secs)) {
      console_plain(out, 400, "age is a duration: 30m, 2h, 3d\n");
      return;
    }
    f.older_than_ms = secs * 1000;
  }
  if(after) {
    const char *dot = strchr(after, '.');
    long ms;
    if(!dot || !id_ok(dot + 1, strlen(dot + 1)) ||
       str_to_long(after, (size_t)(dot - after), 0, 0x7fffffffffffffffL, &ms)) {
      console_plain(out, 400, "bad page cursor\n");
      return;
    }
    str_copy(after_id, sizeof(after_id), dot + 1);
    f.after_ms = ms;
    f.after_id = after_id;
  }
  console_page_begin(b, captured ? "Captured mail" : "Queue", pc->session,
             captured ? "captured" : "queue");
  html_put(b, "<form method=\"get\" action=\"{}\" class=\"filters\" role=\"search\">",
           captured ? "/console/captured" : "/console/queue");
  if(captured)
    filter_input(b, "q", "Search", search, "address or subject");
  else {
    size_t i;
    filter_input(b, "sender", "Sender", sender, "*@example.com");
    filter_input(b, "recipient", "Recipient", recipient, "*@example.org");
    filter_input(b, "upstream", "Upstream", w.upstream, "name");
    html_lit(b, "<label>State <select name=\"state\"><option value=\"\">any</option>");
    for(i = 0; i <= RCPT_CAPTURED; i++)
      if(state && !strcmp(state, state_names[i]))
        html_put(b, "<option selected>{}</option>", state_names[i]);
      else
        html_put(b, "<option>{}</option>", state_names[i]);
    html_lit(b, "</select></label>");
    filter_input(b, "age", "Older than", age, "1h");
  }
  html_lit(b, "<button type=\"submit\">Filter</button></form>\n");
  buf_init(&back, 4096);
  buf_addstr(&back, captured ? "/console/captured" : "/console/queue");
  bulk_buttons(b, pc->session, back.ptr ? back.ptr : "/console/queue");
  buf_free(&back);
  html_put(b, "<div class=\"scroll\"><table class=\"list\" data-live=\"{}\"><thead><tr>"
           "<th scope=\"col\"><span class=\"sr\">Select</span></th><th scope=\"col\">Id</th>"
           "<th scope=\"col\">Received (UTC)</th><th scope=\"col\">Sender</th>"
           "<th scope=\"col\">Recipients</th><th scope=\"col\">{}</th></tr></thead><tbody>\n",
           captured ? "captured" : "queue", captured ? "Subject" : "Bytes");
  result = store_list(pc->st, &f, list_row, &w);
  html_lit(b, "</tbody></table></div>\n");
  if(result)
    html_lit(b, "<p class=\"error\" role=\"alert\">The store could not be read.</p>");
  else if(!w.rows)
    html_lit(b, "<p>No message.</p>");
  html_lit(b, "<nav class=\"pager\" aria-label=\"Pages\">");
  if(after)
    html_put(b, "<a href=\"{}\">First page</a> ", captured ? "/console/captured" :
             "/console/queue");
  if(w.more) {
    char ms[24];
    num(w.last_ms, ms);
    html_put(b, "<a rel=\"next\" href=\"?after={u}.{u}&amp;sender={u}&amp;recipient={u}"
             "&amp;upstream={u}&amp;state={u}&amp;age={u}&amp;q={u}\">Next page</a>", ms,
             w.last_id, sender, recipient, w.upstream, state, age, search);
  }
  html_lit(b, "</nav>");
  console_page_end(b);
  console_done_html(out);
}

/* ---- one message ---------------------------------------------------------------------------- */

static void action_buttons(struct buf *b, const struct console_session *s, const char *id)
{
  html_put(b, "<form method=\"post\" action=\"/console/action\" class=\"actions\">"
           "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
           "<input type=\"hidden\" name=\"id\" value=\"{}\">"
           "<input type=\"hidden\" name=\"back\" value=\"/console/msg/{u}\">"
           "<button name=\"action\" value=\"retry\">Retry</button>"
           "<button name=\"action\" value=\"hold\">Hold</button>"
           "<button name=\"action\" value=\"release\">Release</button>"
           "<button name=\"action\" value=\"delete\" class=\"danger\">Delete</button></form>",
           s->csrf, id, id);
}

/* Captured mail sent on after all: the upstream is picked here, the next page asks to confirm
 * (release_to), and only that page's form does it. */
static void release_form(struct pages_ctx *pc, const struct store_msg *m, struct buf *b)
{
  size_t i, captured = 0;
  for(i = 0; i < m->nrcpts; i++)
    captured += m->rcpts[i].status == RCPT_CAPTURED;
  if(!captured)
    return;
  html_lit(b, "<section aria-labelledby=\"rl\"><h2 id=\"rl\">Send on</h2>");
  if(!pc->nupstreams) {
    html_lit(b, "<p>No [upstream] is configured to release captured mail to.</p></section>\n");
    return;
  }
  html_put(b, "<form method=\"post\" action=\"/console/release-to\" class=\"actions\">"
           "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
           "<input type=\"hidden\" name=\"id\" value=\"{}\">"
           "<label>Release to upstream <select name=\"upstream\" id=\"release-upstream\">",
           pc->session->csrf, m->id);
  for(i = 0; i < pc->nupstreams; i++)
    html_put(b, "<option>{}</option>", pc->upstreams[i]);
  html_lit(b, "</select></label><button type=\"submit\" id=\"release-to\">Release\xe2\x80\xa6"
           "</button></form><p class=\"note\">Its captured recipients are delivered by that "
           "upstream, whatever the routes say. You are asked to confirm first.</p>"
           "</section>\n");
}

static void row(struct buf *b, const char *k, const char *v)
{
  html_put(b, "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", k, v ? v : "-");
}

static void page_message(struct pages_ctx *pc, const char *id, struct web_response *out)
{
  struct buf *b = &out->body;
  struct store_msg m = { 0 };
  struct mail_view v = { 0 };
  char *body = NULL;
  size_t len = 0, i, hl;
  char t[32], n[24];
  int r = store_get(pc->st, id, &m);
  if(r) {
    console_plain(out, r == STORE_NOTFOUND ? 404 : 503,
                  r == STORE_NOTFOUND ? "no such message\n" : "the store cannot be read\n");
    return;
  }
  if(!store_body(pc->st, id, &body, &len))
    mail_view_parse(body, len, &v);
  console_page_begin(b, v.subject && *v.subject ? v.subject : "(no subject)", pc->session, "queue");
  action_buttons(b, pc->session, m.id);
  html_lit(b, "<section aria-labelledby=\"env\"><h2 id=\"env\">Envelope</h2>"
           "<div class=\"scroll\"><table class=\"kv\"><tbody>");
  row(b, "Id", m.id);
  console_when(m.created_ms, t);
  row(b, "Received (UTC)", t);
  row(b, "Sender", *m.sender ? m.sender : "<>");
  row(b, "From", v.from);
  row(b, "To", v.to);
  row(b, "Date", v.date);
  num(m.size, n);
  row(b, "Bytes", n);
  row(b, "Source", m.source);
  row(b, "Listener", m.listener);
  row(b, "Client", m.client_addr);
  row(b, "HELO", m.helo);
  row(b, "Authenticated as", m.auth_user);
  html_lit(b, "</tbody></table></div></section>\n<section aria-labelledby=\"rc\">"
           "<h2 id=\"rc\">Recipients</h2><div class=\"scroll\"><table><thead><tr>"
           "<th scope=\"col\">Address</th><th scope=\"col\">State</th>"
           "<th scope=\"col\">Attempts</th><th scope=\"col\">Next attempt (UTC)</th>"
           "<th scope=\"col\">Upstream</th><th scope=\"col\">Last reply</th></tr></thead><tbody>");
  for(i = 0; i < m.nrcpts; i++) {
    const struct store_rcpt *rc = &m.rcpts[i];
    char a[24];
    num(rc->attempts, a);
    console_when(rc->status == RCPT_QUEUED || rc->status == RCPT_DEFERRED ? rc->next_attempt_ms : 0, t);
    html_put(b, "<tr><td>{}</td><td><span class=\"state state-{}\">{}</span></td><td>{}</td>"
             "<td>{}</td><td>{}</td><td>{}</td></tr>", rc->address,
             rcpt_status_name(rc->status), rcpt_status_name(rc->status), a, t,
             rc->upstream ? rc->upstream : "-", rc->last_reply ? rc->last_reply : "-");
  }
  html_lit(b, "</tbody></table></div></section>\n");
  release_form(pc, &m, b);
  if(body) {
    hl = mail_header_len(body, len);
    html_lit(b, "<section aria-labelledby=\"hd\"><h2 id=\"hd\">Headers</h2><pre class=\"src\">");
    html_textn(b, body, hl);
    html_lit(b, "</pre></section>\n");
    if(v.text) {
      html_lit(b, "<section aria-labelledby=\"tx\"><h2 id=\"tx\">Text</h2><pre class=\"text\">");
      html_text(b, v.text);
      html_lit(b, "</pre></section>\n");
    }
    /* no allow-scripts and no allow-same-origin: the mail's HTML runs nothing and reaches
     * nothing; its own CSP (CSP_MAIL) blocks every fetch, remote images included, until the
     * reader asks for them (a remote image tells the sender the mail was read) */
    if(v.html && console_wants_images(pc->rq))
      html_put(b, "<section aria-labelledby=\"hb\"><h2 id=\"hb\">HTML</h2>"
               "<iframe class=\"mail\" sandbox src=\"/console/msg/{u}/html?images=1\" "
               "title=\"The message's HTML, with remote images, without scripts\"></iframe>"
               "<p class=\"note\" id=\"images\">Scripts are not run; remote images are "
               "loaded. <a href=\"/console/msg/{u}#hb\">Block remote images</a></p>"
               "</section>\n", m.id, m.id);
    else if(v.html)
      html_put(b, "<section aria-labelledby=\"hb\"><h2 id=\"hb\">HTML</h2>"
               "<iframe class=\"mail\" sandbox src=\"/console/msg/{u}/html\" "
               "title=\"The message's HTML, without scripts or remote content\"></iframe>"
               "<p class=\"note\" id=\"images\">Scripts are not run and remote images are "
               "not loaded. <a href=\"/console/msg/{u}?images=1#hb\">Load remote images</a>"
               "</p></section>\n", m.id, m.id);
    html_lit(b, "<section aria-labelledby=\"at\"><h2 id=\"at\">Parts</h2><ul class=\"parts\">");
    for(i = 0; i < v.nparts; i++) {
      char idx[24];
      num((long long)i, idx);
      html_put(b, "<li><a href=\"/console/msg/{u}/part/{u}\" download>{}</a> <span>{}</span>"
               "{}</li>", m.id, idx, v.parts[i].filename ? v.parts[i].filename : "(unnamed)",
               v.parts[i].type, v.parts[i].attachment ? " (attachment)" : "");
    }
    html_put(b, "</ul></section>\n<section aria-labelledby=\"rw\"><h2 id=\"rw\">Raw source</h2>"
             "<p><a href=\"/console/msg/{u}/raw\">Download the raw message</a></p>"
             "<details><summary>Show</summary><pre class=\"src\">", m.id);
    html_textn(b, body, len < RAW_INLINE_MAX ? len : RAW_INLINE_MAX);
    if(len > RAW_INLINE_MAX)
      html_lit(b, "\n[... cut: download it for the rest]");
    html_lit(b, "</pre></details></section>\n");
  }
  console_page_end(b);
  console_done_html(out);
  free(body);
  mail_view_free(&v);
  store_msg_free(&m);
}

/* <meta http-equiv="refresh" content="0;url=..."> could navigate the frame to another host
 * (CSP does not govern navigation; Chromium's sandbox stops it, other browsers may not): every
 * http-equiv becomes an attribute with no meaning, of the same length. */
static void defuse_http_equiv(char *p, size_t n)
{
  size_t i;
  for(i = 0; i + 10 <= n; i++)
    if(!strncasecmp(p + i, "http-equiv", 10))
      memcpy(p + i, "x-no-equiv", 10);
}

/* /msg/ID/raw, /msg/ID/html and /msg/ID/part/N */
static void message_sub(struct pages_ctx *pc, const char *id, const char *what,
                        struct web_response *out)
{
  char *body = NULL;
  size_t len = 0;
  int r = store_body(pc->st, id, &body, &len);
  if(r) {
    console_plain(out, r == STORE_NOTFOUND ? 404 : 503, "no such message\n");
    return;
  }
  buf_reset(&out->body);
  if(!strcmp(what, "raw")) {
    out->status = 200;
    out->content_type = "text/plain; charset=utf-8";
    buf_add(&out->body, body, len);
  }
  else if(!strcmp(what, "html")) {
    struct mail_view v;
    out->status = 200;
    out->content_type = "text/html; charset=utf-8";
    if(!mail_view_parse(body, len, &v)) {
      if(v.html && !buf_addstr(&out->body, v.html))
        defuse_http_equiv(out->body.ptr, out->body.len);
      mail_view_free(&v);
    }
  }
  else if(!strncmp(what, "part/", 5)) {
    long idx;
    if(str_to_long(what + 5, strlen(what + 5), 0, 100000, &idx) ||
       mail_part_bytes(body, len, (size_t)idx, &out->body))
      console_plain(out, 404, "no such part\n");
    else {
      struct mail_view v;
      const char *name = NULL;
      int parsed = !mail_view_parse(body, len, &v);
      if(parsed && (size_t)idx < v.nparts)
        name = v.parts[idx].filename;
      /* never shown in the console's origin: a download, its type not to be guessed */
      out->status = 200;
      out->content_type = "application/octet-stream";
      if(console_disposition(out, name, idx))
        console_plain(out, 500, "no room for the answer's headers\n");
      if(parsed)
        mail_view_free(&v);
    }
  }
  else
    console_plain(out, 404, "not found\n");
  free(body);
}

/* ---- actions --------------------------------------------------------------------------------- */

static int safe_back(const char *back)
{
  return back && !strncmp(back, "/console/", 9) && !strstr(back, "//") &&
         !strpbrk(back, "\\\r\n");
}

static void action(struct pages_ctx *pc, struct web_response *out)
{
  const char *verb = form_get(pc->form, "action"), *back = form_get(pc->form, "back");
  enum rcpt_status to = RCPT_QUEUED;
  size_t i, done = 0, missing = 0, failed = 0;
  if(!verb || (strcmp(verb, "retry") && strcmp(verb, "hold") && strcmp(verb, "release") &&
               strcmp(verb, "delete"))) {
    console_plain(out, 400, "unknown action\n");
    return;
  }
  if(!strcmp(verb, "hold"))
    to = RCPT_HELD;
  for(i = 0; i < pc->form->n; i++) {
    const char *id = pc->form->f[i].value;
    int r;
    if(strcmp(pc->form->f[i].name, "id"))
      continue;
    if(!id_ok(id, strlen(id))) {
      missing++;
      continue;
    }
    /* the same store calls as posternctl queue retry|hold|release|delete */
    r = !strcmp(verb, "delete") ? store_delete(pc->st, id) : store_set_pending(pc->st, id, to);
    log_info("console: %s: %s %s: %s", pc->session->user, verb, id,
             r == STORE_OK ? "done" : r == STORE_NOTFOUND ? "no such message" : "store error");
    if(r == STORE_OK)
      done++;
    else if(r == STORE_NOTFOUND)
      missing++;
    else
      failed++;
  }
  if(failed) {
    console_plain(out, 503, "the store refused the change; see the log\n");
    return;
  }
  if(!strcmp(verb, "delete") && back && !strncmp(back, "/console/msg/", 13))
    back = "/console/queue";
  console_redirect(out, safe_back(back) ? back : "/console/queue");
}

/* POST /release-to: id and upstream; without confirm=yes the page that asks, with it the
 * release (logged with the console user) and back to the message. */
static void release_to(struct pages_ctx *pc, struct web_response *out)
{
  const char *id = form_get(pc->form, "id"), *up = form_get(pc->form, "upstream"),
             *confirm = form_get(pc->form, "confirm");
  struct buf *b = &out->body;
  struct store_msg m = { 0 };
  char back[64];
  size_t i, n = 0;
  int r;
  if(!id || !id_ok(id, strlen(id))) {
    console_plain(out, 400, "no message id\n");
    return;
  }
  for(i = 0; up && i < pc->nupstreams && strcmp(pc->upstreams[i], up); i++)
    ;
  if(!up || i == pc->nupstreams) {
    console_plain(out, 400, "not a configured upstream\n");
    return;
  }
  snprintf(back, sizeof(back), "/console/msg/%s", id);
  if(!confirm || strcmp(confirm, "yes")) {
    if((r = store_get(pc->st, id, &m)) != STORE_OK) {
      console_plain(out, r == STORE_NOTFOUND ? 404 : 503, r == STORE_NOTFOUND ?
                    "no such message\n" : "the store cannot be read\n");
      return;
    }
    console_page_begin(b, "Release to an upstream?", pc->session, "captured");
    html_put(b, "<p>Deliver the captured recipients of message <a href=\"{}\">{}</a> through "
             "upstream <strong>{}</strong>? They leave the captured mail and go out for real:"
             "</p><ul class=\"release\">", back, id, up);
    for(i = 0; i < m.nrcpts; i++)
      if(m.rcpts[i].status == RCPT_CAPTURED)
        html_put(b, "<li>{}</li>", m.rcpts[i].address);
    html_put(b, "</ul><form method=\"post\" action=\"/console/release-to\" class=\"actions\">"
             "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
             "<input type=\"hidden\" name=\"id\" value=\"{}\">"
             "<input type=\"hidden\" name=\"upstream\" value=\"{}\">"
             "<button name=\"confirm\" value=\"yes\" id=\"confirm\" class=\"danger\">"
             "Release to upstream {}</button> <a href=\"{}\">Cancel</a></form>",
             pc->session->csrf, id, up, up, back);
    console_page_end(b);
    console_done_html(out);
    store_msg_free(&m);
    return;
  }
  r = store_release_to(pc->st, id, up, &n);
  log_info("console: %s: release %s to upstream %s: %s (%zu captured recipients)",
           pc->session->user, id, up, r == STORE_OK ? "done" : r == STORE_NOTFOUND ?
           "no such message" : "store error", n);
  if(r != STORE_OK && r != STORE_NOTFOUND) {
    console_plain(out, 503, "the store refused the change; see the log\n");
    return;
  }
  console_redirect(out, r == STORE_NOTFOUND ? "/console/captured" : back);
}

/* ---- live counters: Server-Sent Events -------------------------------------------------------- */

struct stream {
  struct store *st;
  long long started, last_sent;
  char last[512];
  size_t pending_off;
  struct buf pending;
};

static ssize_t stream_read(void *arg, char *outp, size_t max)
{
  struct stream *s = arg;
  long long now = time(NULL);
  if(s->pending_off >= s->pending.len) {
    struct store_counts sc;
    char json[512];
    buf_reset(&s->pending);
    s->pending_off = 0;
    if(now - s->started > STREAM_SECONDS)
      return -1;
    if(s->last_sent)
      sleep(1);
    if(!store_counts(s->st, &sc)) {
      snprintf(json, sizeof(json), "{\"queued\":%lld,\"deferred\":%lld,\"sent\":%lld,"
               "\"bounced\":%lld,\"held\":%lld,\"captured\":%lld,\"messages\":%lld,"
               "\"bytes\":%lld,\"oldest\":%lld}", sc.rcpts[RCPT_QUEUED],
               sc.rcpts[RCPT_DEFERRED], sc.rcpts[RCPT_SENT], sc.rcpts[RCPT_BOUNCED],
               sc.rcpts[RCPT_HELD], sc.rcpts[RCPT_CAPTURED], sc.messages, sc.bytes,
               sc.oldest_unfinished_ms);
      if(strcmp(json, s->last)) {
        str_copy(s->last, sizeof(s->last), json);
        buf_addf(&s->pending, "event: counts\ndata: %s\n\n", json);
        s->last_sent = now;
      }
    }
    if(!s->pending.len && now - s->last_sent >= 15) {
      buf_addstr(&s->pending, ": still here\n\n");
      s->last_sent = now;
    }
    if(!s->pending.len)
      return 0;
  }
  {
    size_t n = s->pending.len - s->pending_off;
    if(n > max)
      n = max;
    memcpy(outp, s->pending.ptr + s->pending_off, n);
    s->pending_off += n;
    return (ssize_t)n;
  }
}

static void stream_done(void *arg)
{
  struct stream *s = arg;
  buf_free(&s->pending);
  free(s);
}

static void events(struct pages_ctx *pc, struct web_response *out)
{
  struct stream *s = calloc(1, sizeof(*s));
  if(!s) {
    console_plain(out, 503, "out of memory\n");
    return;
  }
  s->st = pc->st;
  s->started = time(NULL);
  buf_init(&s->pending, 4096);
  out->status = 200;
  out->content_type = "text/event-stream";
  out->stream.read = stream_read;
  out->stream.done = stream_done;
  out->stream.arg = s;
}

/* ---- routes ----------------------------------------------------------------------------------- */

void pages_route(struct pages_ctx *pc, const char *path, struct web_response *out)
{
  if(pc->form) {
    if(!strcmp(path, "/action"))
      action(pc, out);
    else if(!strcmp(path, "/release-to"))
      release_to(pc, out);
    else
      console_plain(out, 404, "not found\n");
    return;
  }
  if(!strcmp(path, "/"))
    page_overview(pc, out);
  else if(!strcmp(path, "/queue"))
    page_list(pc, out, 0);
  else if(!strcmp(path, "/captured"))
    page_list(pc, out, 1);
  else if(!strcmp(path, "/threads"))
    threads_list(pc, out);
  else if(!strcmp(path, "/thread"))
    threads_one(pc, out);
  else if(!strcmp(path, "/events"))
    events(pc, out);
  else if(!strncmp(path, "/msg/", 5)) {
    const char *id = path + 5, *slash = strchr(id, '/');
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    char idbuf[LIM_QUEUE_ID + 1];
    if(!id_ok(id, n)) {
      console_plain(out, 404, "not found\n");
      return;
    }
    memcpy(idbuf, id, n);
    idbuf[n] = '\0';
    if(slash)
      message_sub(pc, idbuf, slash + 1, out);
    else
      page_message(pc, idbuf, out);
  }
  else
    console_plain(out, 404, "not found\n");
}
