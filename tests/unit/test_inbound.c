/* Unit tests of the inbound webhooks' pure parts: Twilio's published signature vector,
 * SendGrid's published Event Webhook vector, form and event parsing, base64, and the inbound
 * tables of the store (idempotent events, SMS by MessageSid). */
#include "inbound/inbound.h"
#include "tls/tls.h"
#include "store/store.h"
#include "tests/unit/unit.h"
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>

/* twilio.com/docs/usage/security: the documented example */
static void test_twilio_vector(void)
{
  static const struct inbound_param p[] = {
    { "CallSid", "CA1234567890ABCDE", 7, 17 },
    { "Caller", "+14158675309", 6, 12 },
    { "Digits", "1234", 6, 4 },
    { "From", "+14158675309", 4, 12 },
    { "To", "+18005551212", 2, 12 },
  };
  struct inbound_param shuffled[5] = { p[4], p[2], p[0], p[3], p[1] };
  char sig[64];
  CHECK_EQ_INT(inbound_twilio_signature("12345", 5, "https://mycompany.com/myapp.php?foo=1&bar=2",
                                        p, 5, sig, sizeof(sig)), 0);
  CHECK_EQ_STR(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
  /* the order they arrive in does not matter: they are sorted */
  CHECK_EQ_INT(inbound_twilio_signature("12345", 5, "https://mycompany.com/myapp.php?foo=1&bar=2",
                                        shuffled, 5, sig, sizeof(sig)), 0);
  CHECK_EQ_STR(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
  CHECK_EQ_INT(inbound_twilio_signature("12346", 5, "https://mycompany.com/myapp.php?foo=1&bar=2",
                                        p, 5, sig, sizeof(sig)), 0);
  CHECK(strcmp(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
}

/* the vector SendGrid's own libraries test with (sendgrid-python, -nodejs, -go, -java) */
static const char sg_key[] = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
static const char sg_sig[] = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
static const char sg_signed[] = "1588788367{\"category\":\"example_payload\",\"event\":\"test_event\",\"message_id\":\"message_id\"}";

static void test_sendgrid_vector(void)
{
  unsigned char sig[128];
  size_t siglen = 0;
  char tampered[sizeof(sg_signed)];
  CHECK_EQ_INT(tls_base64_decode(sg_sig, strlen(sg_sig), sig, sizeof(sig), &siglen), 0);
  CHECK_EQ_INT(tls_public_key_check(sg_key, strlen(sg_key)), 0);
  CHECK_EQ_INT(tls_ecdsa_verify_sha256(sg_key, strlen(sg_key), sg_signed, strlen(sg_signed),
                                       sig, siglen), 0);
  memcpy(tampered, sg_signed, sizeof(sg_signed));
  tampered[strlen(tampered) - 3] = 'X';
  CHECK_EQ_INT(tls_ecdsa_verify_sha256(sg_key, strlen(sg_key), tampered, strlen(tampered),
                                       sig, siglen), -1);
  /* another timestamp is another signed text */
  tampered[0] = '2';
  CHECK_EQ_INT(tls_ecdsa_verify_sha256(sg_key, strlen(sg_key), tampered, strlen(tampered),
                                       sig, siglen), -1);
  CHECK_EQ_INT(tls_ecdsa_verify_sha256("bm90IGEga2V5", 12, sg_signed, strlen(sg_signed),
                                       sig, siglen), -1);
}

/* sendgrid setup writes the key SendGrid returns (base64 DER) as PEM; check compares keys by it */
static void test_event_key_pem(void)
{
  char pem[TLS_PUBKEY_PEM_MAX], again[TLS_PUBKEY_PEM_MAX], expect[300];
  unsigned char sig[128];
  size_t siglen = 0;
  snprintf(expect, sizeof(expect), "-----BEGIN PUBLIC KEY-----\n%.64s\n%s\n-----END PUBLIC KEY-----\n",
           sg_key, sg_key + 64);
  CHECK_EQ_INT(tls_public_key_pem(sg_key, strlen(sg_key), pem, sizeof(pem)), 0);
  CHECK_EQ_STR(pem, expect);
  /* the PEM is the same key: it verifies SendGrid's vector, and converts to itself */
  CHECK_EQ_INT(tls_base64_decode(sg_sig, strlen(sg_sig), sig, sizeof(sig), &siglen), 0);
  CHECK_EQ_INT(tls_ecdsa_verify_sha256(pem, strlen(pem), sg_signed, strlen(sg_signed), sig,
                                       siglen), 0);
  CHECK_EQ_INT(tls_public_key_pem(pem, strlen(pem), again, sizeof(again)), 0);
  CHECK_EQ_STR(again, pem);
  /* not a key, or no room for it */
  CHECK_EQ_INT(tls_public_key_pem("bm90IGEga2V5", 12, pem, sizeof(pem)), -1);
  CHECK_EQ_INT(tls_public_key_pem("", 0, pem, sizeof(pem)), -1);
  CHECK_EQ_INT(tls_public_key_pem(sg_key, strlen(sg_key), pem, 100), -1);
}

static void test_base64(void)
{
  unsigned char out[16];
  size_t n = 0;
  char enc[16];
  CHECK_EQ_INT(tls_base64_decode("aGVsbG8=", 8, out, sizeof(out), &n), 0);
  CHECK(n == 5 && !memcmp(out, "hello", 5));
  CHECK_EQ_INT(tls_base64_decode("aGVs\nbG8", 8, out, sizeof(out), &n), 0);
  CHECK_EQ_INT(n, 5);
  CHECK_EQ_INT(tls_base64_decode("aGV*bG8=", 8, out, sizeof(out), &n), -1);
  CHECK_EQ_INT(tls_base64_decode("aGVsbG8=QQ", 10, out, sizeof(out), &n), -1);
  CHECK_EQ_INT(tls_base64_decode("aGVsbG8gd29ybGQgaGVsbG8=", 24, out, 4, &n), -1);
  CHECK_EQ_INT(tls_base64_encode((const unsigned char *)"hello", 5, enc, sizeof(enc)), 0);
  CHECK_EQ_STR(enc, "aGVsbG8=");
  CHECK_EQ_INT(tls_base64_encode((const unsigned char *)"hello", 5, enc, 8), -1);
}

static void test_form_parse(void)
{
  static const char body[] = "From=%2B14158675309&Body=Hello+there%21&Empty=&NumMedia=0&&Flag";
  struct inbound_param *p = NULL;
  size_t n = 0;
  char *hold = NULL;
  CHECK_EQ_INT(inbound_form_parse(body, strlen(body), 10, &p, &n, &hold), 0);
  CHECK_EQ_INT(n, 5);
  if(n == 5) {
    CHECK_EQ_STR(p[0].name, "From");
    CHECK_EQ_STR(p[0].value, "+14158675309");
    CHECK_EQ_STR(p[1].value, "Hello there!");
    CHECK_EQ_STR(p[2].name, "Empty");
    CHECK_EQ_INT(p[2].valuelen, 0);
    CHECK_EQ_STR(p[4].name, "Flag");
  }
  free(p);
  free(hold);
  CHECK_EQ_INT(inbound_form_parse("a=%4", 4, 10, &p, &n, &hold), -1);
  CHECK_EQ_INT(inbound_form_parse("a=%zz", 5, 10, &p, &n, &hold), -1);
  CHECK_EQ_INT(inbound_form_parse("a=1&b=2&c=3", 11, 2, &p, &n, &hold), -1);
}

static void test_events_parse(void)
{
  static const char batch[] = "[{\"email\":\"a@x.test\",\"event\":\"delivered\",\"sg_event_id\":\"ev1\","
    "\"sg_message_id\":\"m1.filter\",\"timestamp\":1700000000},{\"event\":\"open\"}]";
  struct inbound_events *e = NULL;
  const struct store_event *ev = NULL;
  const char *why = NULL;
  size_t n = 0;
  CHECK_EQ_INT(inbound_events_parse(batch, strlen(batch), 100, &e, &ev, &n, &why), 0);
  CHECK_EQ_INT(n, 2);
  if(n == 2) {
    CHECK_EQ_STR(ev[0].key, "ev1");
    CHECK_EQ_STR(ev[0].event, "delivered");
    CHECK_EQ_STR(ev[0].sg_message_id, "m1.filter");
    CHECK_EQ_INT(ev[0].timestamp, 1700000000);
    CHECK(!strncmp(ev[1].key, "sha256:", 7));
  }
  inbound_events_free(e);
  CHECK_EQ_INT(inbound_events_parse("{}", 2, 100, &e, &ev, &n, &why), 0);
  CHECK_EQ_INT(n, 1);
  inbound_events_free(e);
  CHECK_EQ_INT(inbound_events_parse("\"x\"", 3, 100, &e, &ev, &n, &why), -1);
  CHECK(why != NULL);
  CHECK_EQ_INT(inbound_events_parse("[1]", 3, 100, &e, &ev, &n, &why), -1);
  CHECK_EQ_INT(inbound_events_parse("[{},{}]", 7, 1, &e, &ev, &n, &why), -1);
  CHECK_EQ_INT(inbound_events_parse("[{\"a\":1,\"a\":2}]", 15, 10, &e, &ev, &n, &why), -1);
}

static void test_envelope(void)
{
  char *from = NULL, *to = NULL;
  static const char env[] = "{\"to\":[\"a@reply.test\",\"b@reply.test\"],\"from\":\"s@x.test\"}";
  CHECK_EQ_INT(inbound_parse_envelope(env, strlen(env), &from, &to), 0);
  CHECK_EQ_STR(from, "s@x.test");
  CHECK_EQ_STR(to, "a@reply.test\nb@reply.test");
  free(from);
  free(to);
  CHECK_EQ_INT(inbound_parse_envelope("{\"to\":[\"a\\nb\"]}", 15, &from, &to), -1);
  CHECK_EQ_INT(inbound_parse_envelope("[]", 2, &from, &to), -1);
  CHECK_EQ_INT(inbound_parse_envelope("{\"to\":\"x\"}", 10, &from, &to), -1);
}

static void test_store_inbound(void)
{
  char dir[] = "/tmp/postern-test-inbound-XXXXXX", err[256], path[128];
  struct store *st = NULL;
  struct store_inbound m;
  struct store_event ev[2];
  size_t added = 9;
  int dup = -1;
  char *body = NULL;
  size_t len = 0;
  CHECK(mkdtemp(dir) != NULL);
  CHECK_EQ_INT(store_open(dir, STORE_OPEN_CREATE, &st, err, sizeof(err)), STORE_OK);
  if(!st)
    return;
  memset(&m, 0, sizeof(m));
  store_new_id(m.id);
  m.source = "sms";
  m.external_id = "SM1";
  CHECK_EQ_INT(store_inbound_accept(st, &m, "Body=hi", 7, &dup), STORE_OK);
  CHECK_EQ_INT(dup, 0);
  store_new_id(m.id);
  CHECK_EQ_INT(store_inbound_accept(st, &m, "Body=hi", 7, &dup), STORE_OK);
  CHECK_EQ_INT(dup, 1);
  m.source = "bogus";
  m.external_id = NULL;
  store_new_id(m.id);
  CHECK(store_inbound_accept(st, &m, "x", 1, NULL) != STORE_OK);
  memset(ev, 0, sizeof(ev));
  ev[0].key = "k1"; ev[0].payload = "{}"; ev[0].payloadlen = 2;
  ev[1].key = "k2"; ev[1].payload = "{}"; ev[1].payloadlen = 2;
  CHECK_EQ_INT(store_events_add(st, ev, 2, &added), STORE_OK);
  CHECK_EQ_INT(added, 2);
  CHECK_EQ_INT(store_events_add(st, ev, 2, &added), STORE_OK);
  CHECK_EQ_INT(added, 0);
  CHECK_EQ_INT(store_ping(st), STORE_OK);
  CHECK_EQ_INT(store_inbound_body(st, "nope", &body, &len), STORE_NOTFOUND);
  store_close(st);
  snprintf(path, sizeof(path), "rm -rf %s", dir);
  CHECK_EQ_INT(system(path), 0);
}

/* SPF through libspf2's zone layer: results, and a Received-SPF field that attacker bytes in
 * HELO or MAIL FROM cannot break out of */
static void test_spf_zone(void)
{
  char zone[] = "/tmp/postern-test-zone-XXXXXX", result[16], header[1024];
  unsigned char addr[4] = { 192, 0, 2, 10 };
  FILE *f;
  int fd = mkstemp(zone);
  CHECK(fd >= 0);
  if(fd < 0)
    return;
  f = fdopen(fd, "w");
  fputs("pass.test TXT v=spf1 ip4:192.0.2.10 -all\n"
        "fail.test TXT v=spf1 ip4:198.51.100.1 -all\n"
        "# a comment\n"
        "temp.test TEMPFAIL\n"
        "helo.test TXT v=spf1 ip4:192.0.2.0/24 -all\n", f);
  fclose(f);
  setenv("POSTERN_SPF_ZONE_FILE", zone, 1);
  unsetenv("POSTERN_SPF_TEST_CLIENT_IP");
  CHECK_EQ_INT(inbound_init(stderr), 0);
  CHECK_EQ_INT(inbound_spf_check(AF_INET, addr, "helo.test", "a@pass.test", "mx.test", result,
                                 sizeof(result), header, sizeof(header)), 0);
  CHECK_EQ_STR(result, "pass");
  CHECK(!strncmp(header, "Received-SPF: pass (mx.test: domain of \"pass.test\" designates "
                 "192.0.2.10 as permitted sender)\r\n\tclient-ip=192.0.2.10;", 98));
  CHECK(strstr(header, "identity=mailfrom\r\n") != NULL);
  inbound_spf_check(AF_INET, addr, "helo.test", "a@fail.test", "mx.test", result,
                    sizeof(result), header, sizeof(header));
  CHECK_EQ_STR(result, "fail");
  {
    /* an IPv4 client on a dual-stack socket */
    unsigned char mapped[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10 };
    inbound_spf_check(AF_INET6, mapped, "helo.test", "a@pass.test", "mx.test", result,
                      sizeof(result), header, sizeof(header));
    CHECK_EQ_STR(result, "pass");
    CHECK(strstr(header, "client-ip=192.0.2.10;") != NULL);
  }
  inbound_spf_check(AF_INET, addr, "helo.test", "a@temp.test", "mx.test", result,
                    sizeof(result), header, sizeof(header));
  CHECK_EQ_STR(result, "temperror");
  inbound_spf_check(AF_INET, addr, "helo.test", "a@unknown.test", "mx.test", result,
                    sizeof(result), header, sizeof(header));
  CHECK_EQ_STR(result, "none");
  /* the null sender: the HELO identity */
  inbound_spf_check(AF_INET, addr, "helo.test", "", "mx.test", result, sizeof(result), header,
                    sizeof(header));
  CHECK_EQ_STR(result, "pass");
  CHECK(strstr(header, "identity=helo\r\n") != NULL);
  /* hostile bytes stay quoted, and every line of the field is a continuation */
  inbound_spf_check(AF_INET, addr, "x\")\r\nBcc: (evil", "a\"b)@pass.test", "mx.test", result,
                    sizeof(result), header, sizeof(header));
  CHECK(strstr(header, "\r\nBcc") == NULL);
  CHECK(strstr(header, "helo=\"x\\\"\\)??Bcc: \\(evil\";") != NULL);
  {
    const char *p = header;
    while((p = strstr(p, "\r\n")) && p[2]) {
      CHECK(p[2] == '\t');
      p += 2;
    }
  }
  inbound_done();
  unsetenv("POSTERN_SPF_ZONE_FILE");
  unlink(zone);
}

/* The client key of an address written as text (IPv6 when it has a colon). */
static void key_of(const char *text, unsigned char key[CONN_CLIENT_KEY_LEN])
{
  struct sockaddr_storage ss;
  struct sockaddr_in *a4 = (struct sockaddr_in *)(void *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)&ss;
  int v6 = strchr(text, ':') != NULL;
  memset(&ss, 0, sizeof(ss));
  ss.ss_family = v6 ? AF_INET6 : AF_INET;
  CHECK(inet_pton(ss.ss_family, text, v6 ? (void *)&a6->sin6_addr : (void *)&a4->sin_addr) == 1);
  CHECK(!conn_client_key((struct sockaddr *)&ss, key));
}

/* IPv6 clients count per /64; an IPv4 client is the same client on a dual-stack socket */
static void test_client_key(void)
{
  static const struct { const char *a, *b; int same; const char *text; } t[] = {
    { "2001:db8:1:2::1", "2001:db8:1:2:ffff:eeee:dddd:cccc", 1, "2001:db8:1:2::/64" },
    { "2001:db8:1:2::1", "2001:db8:1:3::1", 0, "2001:db8:1:2::/64" },
    { "192.0.2.7", "::ffff:192.0.2.7", 1, "192.0.2.7" },
    { "192.0.2.7", "192.0.2.8", 0, "192.0.2.7" },
  };
  unsigned char a[CONN_CLIENT_KEY_LEN], b[CONN_CLIENT_KEY_LEN];
  char text[64];
  size_t i;
  for(i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    key_of(t[i].a, a);
    key_of(t[i].b, b);
    CHECK((memcmp(a, b, sizeof(a)) == 0) == t[i].same);
    conn_client_key_text(a, text, sizeof(text));
    CHECK_EQ_STR(text, t[i].text);
  }
}

static const struct unit_case cases[] = {
  { "client_key", test_client_key },
  { "spf_zone", test_spf_zone },
  { "twilio_vector", test_twilio_vector },
  { "sendgrid_vector", test_sendgrid_vector },
  { "event_key_pem", test_event_key_pem },
  { "base64", test_base64 },
  { "form_parse", test_form_parse },
  { "events_parse", test_events_parse },
  { "envelope", test_envelope },
  { "store_inbound", test_store_inbound },
};
UNIT_MAIN(cases)
