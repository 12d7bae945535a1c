/* Unit tests of global/metrics.c: label values escaped as the Prometheus text format 0.0.4 wants,
 * histogram buckets cumulative with +Inf equal to _count, unknown and excess names folded into
 * "other", and the cap of the output buffer answered, not overrun. */
#include "global/metrics.h"
#include "lib/limits.h"
#include "tests/unit/unit.h"
#include <stdlib.h>
#include <time.h>

static char *render(const struct metrics_queue *q, long long now)
{
  struct buf b;
  char *s;
  size_t len;
  buf_init(&b, LIM_METRICS_BODY);
  CHECK_EQ_INT(metrics_render(&b, q, now), 0);
  s = buf_steal(&b, &len);
  return s;
}

static int has_line(const char *text, const char *line)
{
  size_t n = strlen(line);
  const char *p = text;
  while((p = strstr(p, line))) {
    if((p == text || p[-1] == '\n') && p[n] == '\n')
      return 1;
    p += n;
  }
  return 0;
}

static void test_label_escaping(void)
{
  char *t;
  metrics_reset();
  metrics_name_add(METRICS_UPSTREAMS, "a\"b\\c\nd");
  metrics_name_add(METRICS_UPSTREAMS, "plain");
  metrics_rcpt_result("a\"b\\c\nd", METRICS_SENT);
  metrics_rcpt_result("a\"b\\c\nd", METRICS_SENT);
  metrics_rcpt_result("plain", METRICS_BOUNCED);
  t = render(NULL, 0);
  CHECK(has_line(t, "postern_recipients_total{upstream=\"a\\\"b\\\\c\\nd\",result=\"sent\"} 2"));
  CHECK(has_line(t, "postern_recipients_total{upstream=\"plain\",result=\"bounced\"} 1"));
  CHECK(has_line(t, "postern_recipients_total{upstream=\"plain\",result=\"sent\"} 0"));
  CHECK(has_line(t, "# TYPE postern_recipients_total counter"));
  /* no raw line feed inside a sample: every line starts a comment or a metric name */
  {
    const char *p = t;
    while(*p) {
      CHECK(!strncmp(p, "# ", 2) || !strncmp(p, "postern_", 8));
      p = strchr(p, '\n');
      if(!p)
        break;
      p++;
    }
  }
  free(t);
}

static void test_histogram_cumulative(void)
{
  char *t;
  metrics_reset();
  metrics_name_add(METRICS_UPSTREAMS, "up");
  metrics_delivery_time("up", 10000);        /* 0.01 s: first bucket */
  metrics_delivery_time("up", 50000);        /* 0.05 s: le is inclusive */
  metrics_delivery_time("up", 700000);       /* 0.7 s */
  metrics_delivery_time("up", 300000000);    /* 300 s: only +Inf */
  t = render(NULL, 0);
  CHECK(has_line(t, "# TYPE postern_delivery_duration_seconds histogram"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_bucket{upstream=\"up\",le=\"0.05\"} 2"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_bucket{upstream=\"up\",le=\"0.5\"} 2"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_bucket{upstream=\"up\",le=\"1\"} 3"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_bucket{upstream=\"up\",le=\"120\"} 3"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_bucket{upstream=\"up\",le=\"+Inf\"} 4"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_count{upstream=\"up\"} 4"));
  CHECK(has_line(t, "postern_delivery_duration_seconds_sum{upstream=\"up\"} 300.760000"));
  free(t);
}

static void test_other_and_cap(void)
{
  char *t, name[32];
  int i;
  metrics_reset();
  metrics_name_add(METRICS_LISTENERS, "submission");
  metrics_accepted("submission");
  metrics_accepted("never-registered");
  for(i = 0; i < LIM_METRICS_NAMES + 5; i++) {
    snprintf(name, sizeof(name), "up%d", i);
    metrics_name_add(METRICS_UPSTREAMS, name);
  }
  metrics_rcpt_result("up3", METRICS_HELD);
  snprintf(name, sizeof(name), "up%d", LIM_METRICS_NAMES + 2);   /* past the cap */
  metrics_rcpt_result(name, METRICS_DEFERRED);
  t = render(NULL, 0);
  CHECK(has_line(t, "postern_messages_accepted_total{listener=\"submission\"} 1"));
  CHECK(has_line(t, "postern_messages_accepted_total{listener=\"other\"} 1"));
  CHECK(has_line(t, "postern_recipients_total{upstream=\"up3\",result=\"held\"} 1"));
  CHECK(has_line(t, "postern_recipients_total{upstream=\"other\",result=\"deferred\"} 1"));
  CHECK(!strstr(t, name));
  free(t);
}

static void test_gauges_and_webhooks(void)
{
  struct metrics_queue q = { 3, 2, 1, 1000000 };
  char *t;
  metrics_reset();
  metrics_name_add(METRICS_IDENTITIES, "contoso");
  metrics_name_add(METRICS_IDENTITIES, "none-yet");
  metrics_oauth2_expiry("contoso", 1000000 + 3600 * 1000);
  metrics_webhook(METRICS_PATH_EVENTS, 200);
  metrics_webhook(METRICS_PATH_EVENTS, 200);
  metrics_webhook(METRICS_PATH_PARSE, 401);
  metrics_webhook(METRICS_PATH_PARSE, 42);       /* not an HTTP status: ignored */
  metrics_tls_failure(METRICS_SIDE_UPSTREAM);
  metrics_auth_failure(METRICS_SIDE_LISTENER);
  metrics_inbound(METRICS_SRC_SMS);
  t = render(&q, 1000000 + 90 * 1000);
  CHECK(has_line(t, "postern_queue_recipients{state=\"queued\"} 3"));
  CHECK(has_line(t, "postern_queue_recipients{state=\"held\"} 1"));
  CHECK(has_line(t, "postern_queue_oldest_age_seconds 90"));
  CHECK(has_line(t, "postern_oauth2_token_expiry_seconds{identity=\"contoso\"} 3510"));
  CHECK(!strstr(t, "none-yet"));
  CHECK(has_line(t, "postern_webhook_requests_total{path=\"/events\",code=\"200\"} 2"));
  CHECK(has_line(t, "postern_webhook_requests_total{path=\"/emailInbound\",code=\"401\"} 1"));
  CHECK(!strstr(t, "code=\"42\""));
  CHECK(has_line(t, "postern_tls_handshake_failures_total{side=\"upstream\"} 1"));
  CHECK(has_line(t, "postern_tls_handshake_failures_total{side=\"listener\"} 0"));
  CHECK(has_line(t, "postern_auth_failures_total{side=\"listener\"} 1"));
  CHECK(has_line(t, "postern_inbound_messages_total{source=\"sms\"} 1"));
  free(t);
  /* without queue figures (store unreadable) the queue families are absent, not zero */
  t = render(NULL, 0);
  CHECK(!strstr(t, "postern_queue_"));
  free(t);
}

static void test_throughput_and_upstream_view(void)
{
  unsigned long long (*f)[METRICS_NFLOWS] = calloc(METRICS_MINUTES, sizeof(*f));
  struct metrics_upstream mu;
  struct timespec ts;
  long long now;
  size_t j;
  metrics_reset();
  metrics_name_add(METRICS_LISTENERS, "submission");
  metrics_name_add(METRICS_UPSTREAMS, "office");
  metrics_upstream_get("office", &mu);
  CHECK_EQ_INT(mu.last, -1);
  metrics_accepted("submission");
  metrics_accepted("submission");
  metrics_rcpt_result("office", METRICS_SENT);
  metrics_rcpt_result("office", METRICS_DEFERRED);
  clock_gettime(CLOCK_REALTIME, &ts);
  now = (long long)ts.tv_sec * 1000;
  metrics_throughput(now, f);
  /* everything in the current minute (or the one before, had the minute just turned) */
  CHECK_EQ_INT((int)(f[METRICS_MINUTES - 1][METRICS_FLOW_ACCEPTED] +
                     f[METRICS_MINUTES - 2][METRICS_FLOW_ACCEPTED]), 2);
  CHECK_EQ_INT((int)(f[METRICS_MINUTES - 1][METRICS_FLOW_DELIVERED] +
                     f[METRICS_MINUTES - 2][METRICS_FLOW_DELIVERED]), 1);
  CHECK_EQ_INT((int)(f[METRICS_MINUTES - 1][METRICS_FLOW_NOT] +
                     f[METRICS_MINUTES - 2][METRICS_FLOW_NOT]), 1);
  for(j = 0; j < METRICS_MINUTES - 2; j++)
    CHECK_EQ_INT((int)f[j][METRICS_FLOW_ACCEPTED], 0);
  /* an hour later the same slots count for nothing */
  metrics_throughput(now + 3600 * 1000, f);
  for(j = 0; j < METRICS_MINUTES; j++)
    CHECK_EQ_INT((int)f[j][METRICS_FLOW_ACCEPTED], 0);
  metrics_upstream_get("office", &mu);
  CHECK_EQ_INT(mu.last, METRICS_DEFERRED);
  CHECK(mu.last_ms >= now - 1000);
  CHECK_EQ_INT((int)mu.results[METRICS_SENT], 1);
  metrics_upstream_get("never-configured", &mu);
  CHECK_EQ_INT(mu.last, -1);
  free(f);
}

static void test_limit_refusals(void)
{
  char *t;
  metrics_reset();
  metrics_name_add(METRICS_LISTENERS, "mx");
  metrics_name_add(METRICS_LISTENERS, "submission");
  metrics_limit_refused("mx", METRICS_LIMIT_PER_IP);
  metrics_limit_refused("mx", METRICS_LIMIT_PER_IP);
  metrics_limit_refused("mx", METRICS_LIMIT_MAX_CLIENTS);
  metrics_limit_refused("submission", METRICS_LIMIT_RCPT_RATE);
  metrics_limit_refused("nowhere", METRICS_LIMIT_CONN_RATE);   /* never registered: other */
  metrics_limit_refused("mx", METRICS_NLIMITS);                /* not a limit: ignored */
  t = render(NULL, 0);
  CHECK(has_line(t, "postern_client_limit_refusals_total{listener=\"mx\",limit=\"max_clients_per_ip\"} 2"));
  CHECK(has_line(t, "postern_client_limit_refusals_total{listener=\"mx\",limit=\"max_clients\"} 1"));
  CHECK(has_line(t, "postern_client_limit_refusals_total{listener=\"submission\",limit=\"recipient_rate\"} 1"));
  CHECK(has_line(t, "postern_client_limit_refusals_total{listener=\"other\",limit=\"connection_rate\"} 1"));
  CHECK(strstr(t, "# TYPE postern_client_limit_refusals_total counter") != NULL);
  free(t);
}

static void test_buffer_cap(void)
{
  struct buf b;
  metrics_reset();
  buf_init(&b, 100);
  CHECK_EQ_INT(metrics_render(&b, NULL, 0), BUF_TOO_BIG);
  CHECK(b.len <= 100);
  buf_free(&b);
}

static const struct unit_case cases[] = {
  { "throughput_and_upstream_view", test_throughput_and_upstream_view },
  { "label_escaping", test_label_escaping },
  { "histogram_cumulative", test_histogram_cumulative },
  { "other_and_cap", test_other_and_cap },
  { "gauges_and_webhooks", test_gauges_and_webhooks },
  { "buffer_cap", test_buffer_cap },
  { "limit_refusals", test_limit_refusals },
};
UNIT_MAIN(cases)
