/* The overview's lower half, from the daemon's own counters (global/metrics.c) and the store:
 * the last hour's throughput drawn as an SVG chart on the server (no script, no library), each
 * upstream's health, where inbound mail comes in, and the warnings that need someone, each
 * naming its fix as the log line does. */
#include "console/pages.h"
#include "global/metrics.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHART_W 600                     /* viewBox units: 10 per minute */
#define CHART_H 120
#define OAUTH2_SOON_MS (10LL * 60 * 1000)   /* a token this close to expiry is worth a look */

static const char *const result_words[METRICS_NRESULTS] = {
  [METRICS_SENT] = "sent", [METRICS_DEFERRED] = "deferred", [METRICS_BOUNCED] = "bounced",
  [METRICS_HELD] = "held", [METRICS_CAPTURED] = "captured",
};

static void num(unsigned long long v, char out[24])
{
  snprintf(out, 24, "%llu", v);
}

static void chart(struct buf *b, long long now)
{
  unsigned long long (*flows)[METRICS_NFLOWS] = calloc(METRICS_MINUTES, sizeof(*flows));
  unsigned long long max = 1, tot[METRICS_NFLOWS] = { 0 };
  static const char *const cls[METRICS_NFLOWS] = { "accepted", "delivered", "failed" };
  char a[24], d[24], n[24], m[24];
  size_t j, k;
  if(!flows) {
    html_lit(b, "<p class=\"error\">Out of memory for the chart.</p>");
    return;
  }
  metrics_throughput(now, flows);
  for(j = 0; j < METRICS_MINUTES; j++)
    for(k = 0; k < METRICS_NFLOWS; k++) {
      tot[k] += flows[j][k];
      if(flows[j][k] > max)
        max = flows[j][k];
    }
  num(tot[METRICS_FLOW_ACCEPTED], a);
  num(tot[METRICS_FLOW_DELIVERED], d);
  num(tot[METRICS_FLOW_NOT], n);
  num(max, m);
  html_put(b, "<section aria-labelledby=\"tp\"><h2 id=\"tp\">Throughput, last hour</h2>"
           "<figure class=\"chart\"><svg viewBox=\"0 0 600 140\" role=\"img\" "
           "aria-labelledby=\"tpcap\" preserveAspectRatio=\"none\">"
           "<line class=\"axis\" x1=\"0\" y1=\"120\" x2=\"600\" y2=\"120\"></line>"
           "<text class=\"tick\" x=\"0\" y=\"136\">-60 min</text>"
           "<text class=\"tick\" x=\"300\" y=\"136\">-30 min</text>"
           "<text class=\"tick\" x=\"560\" y=\"136\">now</text>"
           "<text class=\"tick\" x=\"2\" y=\"10\">{} / min</text>", m);
  for(j = 0; j < METRICS_MINUTES; j++)
    for(k = 0; k < METRICS_NFLOWS; k++) {
      char x[24], y[24], h[24], title[96];
      unsigned long long hh = flows[j][k] * CHART_H / max;
      if(!flows[j][k])
        continue;
      if(!hh)
        hh = 1;
      num((unsigned long long)(j * 10 + k * 3 + 1), x);
      num(CHART_H - hh, y);
      num(hh, h);
      snprintf(title, sizeof(title), "%llu %s, %zu min ago", flows[j][k], cls[k],
               (size_t)(METRICS_MINUTES - 1 - j));
      html_put(b, "<rect class=\"{}\" x=\"{}\" y=\"{}\" width=\"3\" height=\"{}\">"
               "<title>{}</title></rect>", cls[k], x, y, h, title);
    }
  html_put(b, "</svg><figcaption id=\"tpcap\">Per minute: "
           "<span class=\"key accepted\">messages accepted</span> <span data-flow=\"accepted\">"
           "{}</span>, <span class=\"key delivered\">recipients delivered or captured</span> "
           "<span data-flow=\"delivered\">{}</span>, <span class=\"key failed\">recipients "
           "deferred, bounced or held</span> <span data-flow=\"failed\">{}</span> in the last "
           "hour (counted since the daemon started).</figcaption></figure></section>\n", a, d,
           n);
  free(flows);
}

struct held {
  char names[32][128];
  size_t n;
};

static int held_one(void *arg, const char *upstream)
{
  struct held *h = arg;
  if(h->n < sizeof(h->names) / sizeof(h->names[0]))
    str_copy(h->names[h->n++], sizeof(h->names[0]), upstream);
  return 0;
}

static int is_held(const struct held *h, const char *name)
{
  size_t i;
  for(i = 0; i < h->n; i++)
    if(!strcmp(h->names[i], name))
      return 1;
  return 0;
}

static void upstream_row(struct buf *b, const char *name, const char *identity,
                         const struct held *h, long long now)
{
  struct metrics_upstream mu;
  char s[24], d[24], bo[24], when[32], last[64], tok[64], pace[96];
  long long exp = identity ? metrics_oauth2_expiry_get(identity) : 0, next;
  int slow;
  metrics_upstream_get(name, &mu);
  metrics_rate_get(name, &next, &slow);
  if(next > now) {
    console_when(next, when);
    snprintf(pace, sizeof(pace), "next message at %s", when);
  }
  else
    str_copy(pace, sizeof(pace), "none");
  if(slow > 1) {
    size_t at = strlen(pace);
    snprintf(pace + at, sizeof(pace) - at, "; slowed down %dx after 4.7.x replies", slow);
  }
  num(mu.results[METRICS_SENT] + mu.results[METRICS_CAPTURED], s);
  num(mu.results[METRICS_DEFERRED], d);
  num(mu.results[METRICS_BOUNCED], bo);
  if(mu.last < 0 || mu.last >= METRICS_NRESULTS)
    str_copy(last, sizeof(last), "none yet");
  else {
    console_when(mu.last_ms, when);
    snprintf(last, sizeof(last), "%s at %s", result_words[mu.last], when);
  }
  if(!identity)
    str_copy(tok, sizeof(tok), "-");
  else if(!exp)
    snprintf(tok, sizeof(tok), "%s: no token yet", identity);
  else {
    console_when(exp, when);
    snprintf(tok, sizeof(tok), "%s: %s %s", identity, exp <= now ? "expired" : "until", when);
  }
  html_put(b, "<tr><th scope=\"row\"><a href=\"/console/queue?upstream={u}\">{}</a></th>"
           "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
           name, name, last, s, d, bo, is_held(h, name) ? "held: its login failed" : "no", tok,
           pace);
}

static void warn(struct buf *b, size_t *n, const char *what, const char *fix)
{
  if(!(*n)++)
    html_lit(b, "<ul class=\"warnings\">");
  html_put(b, "<li role=\"alert\"><strong>{}</strong> {}</li>", what, fix);
}

void overview_more(struct pages_ctx *pc, struct buf *b, long long now)
{
  struct held *h = calloc(1, sizeof(*h));
  long long waiting = 0, aside = 0, unrecorded = metrics_results_unrecorded_get();
  size_t i, nw = 0;
  char line[512];
  if(!h)
    return;
  chart(b, now);

  store_held_upstreams(pc->st, held_one, h);
  html_lit(b, "<section aria-labelledby=\"uh\"><h2 id=\"uh\">Upstream health</h2>"
           "<div class=\"scroll\"><table class=\"health\"><thead><tr>"
           "<th scope=\"col\">Upstream</th><th scope=\"col\">Last result (UTC)</th>"
           "<th scope=\"col\">delivered</th><th scope=\"col\">deferred</th>"
           "<th scope=\"col\">bounced</th><th scope=\"col\">Credential hold</th>"
           "<th scope=\"col\">OAuth2 token (UTC)</th><th scope=\"col\">Rate-limit wait (UTC)"
           "</th></tr></thead><tbody>");
  for(i = 0; i < pc->nupstreams; i++)
    upstream_row(b, pc->upstreams[i], pc->oauth2 ? pc->oauth2[i] : NULL, h, now);
  upstream_row(b, "capture", NULL, h, now);
  html_lit(b, "</tbody></table></div><p class=\"note\">Counts since the daemon started.</p>"
           "</section>\n");

  html_lit(b, "<section aria-labelledby=\"src\"><h2 id=\"src\">Inbound sources</h2>"
           "<ul class=\"sources\">");
  for(i = 0; i < pc->nsources; i++)
    html_put(b, "<li>{}</li>", pc->sources[i]);
  if(!pc->nsources)
    html_lit(b, "<li>None: no MX listener and no [inbound] http_address.</li>");
  html_lit(b, "</ul><p>Received since the daemon started:");
  for(i = 0; i < METRICS_NSOURCES; i++) {
    char c[24];
    num(metrics_inbound_get((enum metrics_source)i), c);
    const char *name = metrics_source_name((enum metrics_source)i);
    html_put(b, " {} <span data-inbound=\"{}\">{}</span>", name, name, c);
  }
  html_lit(b, ".</p></section>\n");

  html_lit(b, "<section aria-labelledby=\"wn\"><h2 id=\"wn\">Warnings</h2>");
  for(i = 0; i < h->n; i++) {
    snprintf(line, sizeof(line), "Upstream %s refused the login: its mail is held, not "
             "bounced.", h->names[i]);
    warn(b, &nw, line, "Fix username and password_file (or [oauth2]) of that [upstream] and "
         "send SIGHUP: the mail goes out by itself after the next successful login.");
  }
  for(i = 0; pc->oauth2 && i < pc->nupstreams; i++) {
    long long exp = pc->oauth2[i] ? metrics_oauth2_expiry_get(pc->oauth2[i]) : 0;
    if(exp && exp < now + OAUTH2_SOON_MS) {
      snprintf(line, sizeof(line), "The OAuth2 token of [oauth2 %s] (upstream %s) %s.",
               pc->oauth2[i], pc->upstreams[i], exp <= now ? "has expired" :
               "expires within 10 minutes");
      warn(b, &nw, line, "Check the identity's token_url and credentials with `posternctl "
           "check` for that upstream; the log says why a renewal failed.");
    }
  }
  if(!store_forward_counts(pc->st, &waiting, &aside) && aside > 0) {
    snprintf(line, sizeof(line), "%lld correspondence record%s set aside: the application "
             "behind forward_url kept refusing %s.", aside, aside == 1 ? " is" : "s are",
             aside == 1 ? "it" : "them");
    warn(b, &nw, line, "Fix the application, then `posternctl correspondence forward retry "
         "--all` sends them again.");
  }
  if(unrecorded > 0 || store_writes_failing(pc->st)) {
    snprintf(line, sizeof(line), "The store refuses writes%s.", unrecorded > 0 ?
             ": delivery results wait in memory" : "");
    warn(b, &nw, line, "Free space where data_dir is (the log names the error); the results "
         "are written once the store takes them.");
  }
  if(nw)
    html_lit(b, "</ul>");
  else
    html_lit(b, "<p>None.</p>");
  html_lit(b, "</section>\n");
  free(h);
}
