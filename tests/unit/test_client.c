/* The SMTP client engine against scripted peers (curl's test904 style): each case is a
 * transcript of what the server says (S:) and the exact lines the client must send (C:), with
 * D: for a whole DATA content; the peer fails the case on the first line that differs. */
#include "unit.h"
#include "smtp/smtp.h"
#include "lib/buf.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct peer {
  int lfd, port;
  const char *const *script;
  int close_after;          /* index of the script step after which the peer hangs up */
  pthread_t thread;
  int failed;
  char err[512];
};

static int read_line(int fd, char *out, size_t outsz)
{
  size_t n = 0;
  for(;;) {
    char ch;
    ssize_t r = read(fd, &ch, 1);
    if(r <= 0)
      return -1;
    if(n + 1 < outsz)
      out[n++] = ch;
    if(ch == '\n')
      break;
  }
  out[n] = '\0';
  return (int)n;
}

static void *peer_main(void *arg)
{
  struct peer *p = arg;
  struct timeval tv = { 5, 0 };
  char line[4096];
  size_t i;
  int fd = accept(p->lfd, NULL, NULL);
  if(fd < 0) {
    p->failed = 1;
    return NULL;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  for(i = 0; p->script[i]; i++) {
    const char *step = p->script[i];
    if(!strncmp(step, "S:", 2)) {
      if(write(fd, step + 2, strlen(step + 2)) < 0)
        break;
    }
    else if(!strncmp(step, "C:", 2) || !strncmp(step, "D:", 2)) {
      /* C: one line; D: lines up to and including ".\r\n" */
      struct buf got;
      buf_init(&got, 1 << 20);
      do {
        if(read_line(fd, line, sizeof(line)) < 0) {
          snprintf(p->err, sizeof(p->err), "step %zu: connection closed, expected %s", i, step);
          p->failed = 1;
          buf_free(&got);
          goto out;
        }
        buf_addstr(&got, line);
      } while(step[0] == 'D' && strcmp(line, ".\r\n"));
      if(strcmp(got.ptr, step + 2)) {
        snprintf(p->err, sizeof(p->err), "step %zu: got \"%s\", expected \"%s\"", i, got.ptr,
                 step + 2);
        p->failed = 1;
        buf_free(&got);
        goto out;
      }
      buf_free(&got);
    }
    if(p->close_after && (int)i == p->close_after)
      break;
  }
out:
  close(fd);
  return NULL;
}

static void peer_start(struct peer *p, const char *const *script, int close_after)
{
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  memset(p, 0, sizeof(*p));
  p->script = script;
  p->close_after = close_after;
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(!bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)));
  CHECK(!listen(p->lfd, 1));
  CHECK(!getsockname(p->lfd, (struct sockaddr *)&sa, &len));
  p->port = ntohs(sa.sin_port);
  pthread_create(&p->thread, NULL, peer_main, p);
}

static void peer_end(struct peer *p)
{
  pthread_join(p->thread, NULL);
  close(p->lfd);
  if(p->failed)
    fprintf(stderr, "scripted peer: %s\n", p->err);
  CHECK(!p->failed);
}

static struct smtp_client *client_for(struct peer *p)
{
  struct smtp_client_cfg cfg;
  struct smtp_client *c = NULL;
  memset(&cfg, 0, sizeof(cfg));
  cfg.host = "127.0.0.1";
  cfg.port = p->port;
  cfg.tls = SMTP_CLIENT_TLS_NONE;
  cfg.helo = "relay.test";
  cfg.command_timeout_ms = 5000;
  CHECK(!smtp_client_new(&cfg, &c));
  return c;
}

/* Pipelined envelope, per-recipient replies, dot-stuffing, bare LF and CR made CRLF, a last
 * line without its line end, then the reused connection's next transaction with no RSET
 * before it (the server reset itself at the end of data). */
static void client_pipelined_transactions(void)
{
  static const char *const script[] = {
    "S:220 peer.test ESMTP\r\n",
    "C:EHLO relay.test\r\n",
    "S:250-peer.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250 AUTH=PLAIN\r\n",
    "C:MAIL FROM:<a@x.test> SIZE=30 BODY=8BITMIME\r\n",
    "C:RCPT TO:<b@y.test>\r\n",
    "C:RCPT TO:<c@y.test>\r\n",
    "C:DATA\r\n",
    "S:250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550-5.1.1 No such\r\n550 5.1.1 user here\r\n354 Go\r\n",
    "D:Subject: x\r\n\r\n..dot\r\nbare\r\ncr\r\n\r\nend\r\n.\r\n",
    "S:250 2.0.0 Ok: queued as 1\r\n",
    "C:MAIL FROM:<> SIZE=2\r\n",
    "C:RCPT TO:<b@y.test>\r\n",
    "C:DATA\r\n",
    "S:250 Ok\r\n250 Ok\r\n354 Go\r\n",
    "D:x\r\n.\r\n",
    "S:451 4.3.0 Try later\r\n",
    "C:QUIT\r\n",
    "S:221 Bye\r\n",
    NULL
  };
  struct peer p;
  struct smtp_client *c;
  struct smtp_reply r;
  struct smtp_client_rcpt rc[2];
  struct smtp_client_msg m;
  static const char body[] = "Subject: x\n\n.dot\nbare\rcr\r\n\nend";
  peer_start(&p, script, 0);
  c = client_for(&p);
  CHECK_EQ_INT(smtp_client_connect(c, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(smtp_client_ehlo(c, &r), SMTP_CLIENT_OK);
  CHECK(smtp_client_caps(c)->flags & SMTP_CAP_PIPELINING);
  CHECK_EQ_INT(smtp_client_caps(c)->size, 100000);
  CHECK_EQ_STR(smtp_client_caps(c)->auth, "PLAIN");
  memset(rc, 0, sizeof(rc));
  memset(&m, 0, sizeof(m));
  rc[0].address = "b@y.test";
  rc[1].address = "c@y.test";
  m.sender = "a@x.test";
  m.body_8bit = 1;
  m.body = body;
  m.len = sizeof(body) - 1;
  CHECK_EQ_INT(smtp_client_send(c, &m, rc, 2, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc[0].reply.code, 250);
  CHECK_EQ_STR(rc[0].reply.text, "Ok: queued as 1");
  CHECK_EQ_INT(rc[1].reply.code, 550);
  CHECK_EQ_STR(rc[1].reply.enh, "5.1.1");
  CHECK_EQ_STR(rc[1].reply.text, "No such user here");
  m.sender = "";
  m.body_8bit = 0;
  m.body = "x\n";
  m.len = 2;
  CHECK_EQ_INT(smtp_client_send(c, &m, rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc[0].reply.code, 451);
  smtp_client_quit(c);
  smtp_client_free(c);
  peer_end(&p);
}

/* DSN parameters go upstream in their checked xtext form; a stored value that is not (a row
 * from before the check) is left out instead of sent as command bytes. */
static void client_dsn_values(void)
{
  static const char *const script[] = {
    "S:220 peer.test ESMTP\r\n",
    "C:EHLO relay.test\r\n",
    "S:250-peer.test\r\n250 DSN\r\n",
    "C:MAIL FROM:<a@x.test> RET=HDRS ENVID=id+2B1\r\n",
    "S:250 Ok\r\n",
    "C:RCPT TO:<b@y.test> NOTIFY=FAILURE ORCPT=rfc822;b+2Bz@y.test\r\n",
    "S:250 Ok\r\n",
    "C:RCPT TO:<c@y.test>\r\n",
    "S:250 Ok\r\n",
    "C:DATA\r\n",
    "S:354 Go\r\n",
    "D:x\r\n.\r\n",
    "S:250 2.0.0 Ok\r\n",
    "C:MAIL FROM:<a@x.test>\r\n",
    "S:250 Ok\r\n",
    "C:RCPT TO:<b@y.test>\r\n",
    "S:250 Ok\r\n",
    "C:DATA\r\n",
    "S:354 Go\r\n",
    "D:x\r\n.\r\n",
    "S:250 2.0.0 Ok\r\n",
    "C:QUIT\r\n",
    "S:221 Bye\r\n",
    NULL
  };
  struct peer p;
  struct smtp_client *c;
  struct smtp_reply r;
  struct smtp_client_rcpt rc[2];
  struct smtp_client_msg m;
  peer_start(&p, script, 0);
  c = client_for(&p);
  CHECK_EQ_INT(smtp_client_connect(c, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(smtp_client_ehlo(c, &r), SMTP_CLIENT_OK);
  memset(rc, 0, sizeof(rc));
  memset(&m, 0, sizeof(m));
  m.sender = "a@x.test";
  m.ret = "HDRS";
  m.envid = "id+2B1";
  m.body = "x\n";
  m.len = 2;
  rc[0].address = "b@y.test";
  rc[0].notify = "FAILURE";
  rc[0].orcpt = "rfc822;b+2Bz@y.test";
  rc[1].address = "c@y.test";
  rc[1].orcpt = "rfc822;c@y.test\r\nRSET";     /* not xtext: left out */
  CHECK_EQ_INT(smtp_client_send(c, &m, rc, 2, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc[0].reply.code, 250);
  m.ret = NULL;
  m.envid = "x+0D+0AQUIT";                         /* decodes to CR LF: left out */
  memset(rc, 0, sizeof(rc));
  rc[0].address = "b@y.test";
  CHECK_EQ_INT(smtp_client_send(c, &m, rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc[0].reply.code, 250);
  smtp_client_quit(c);
  smtp_client_free(c);
  peer_end(&p);
}

/* An old server: EHLO refused, HELO; no PIPELINING, so each command waits for its reply, and
 * no DATA when every recipient was refused. */
static void client_helo_lockstep(void)
{
  static const char *const script[] = {
    "S:220 old.test\r\n",
    "C:EHLO relay.test\r\n",
    "S:502 Command not implemented\r\n",
    "C:HELO relay.test\r\n",
    "S:250 old.test\r\n",
    "C:MAIL FROM:<a@x.test>\r\n",
    "S:250 Ok\r\n",
    "C:RCPT TO:<b@y.test>\r\n",
    "S:450 4.2.1 Busy\r\n",
    "C:RSET\r\n",
    "S:250 Ok\r\n",
    "C:MAIL FROM:<a@x.test>\r\n",
    "S:452 4.3.1 Full\r\n",
    "C:QUIT\r\n",
    "S:221 Bye\r\n",
    NULL
  };
  struct peer p;
  struct smtp_client *c;
  struct smtp_reply r;
  struct smtp_client_rcpt rc;
  struct smtp_client_msg m;
  peer_start(&p, script, 0);
  c = client_for(&p);
  CHECK_EQ_INT(smtp_client_connect(c, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(smtp_client_ehlo(c, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(smtp_client_caps(c)->flags, 0);
  memset(&rc, 0, sizeof(rc));
  memset(&m, 0, sizeof(m));
  rc.address = "b@y.test";
  m.sender = "a@x.test";
  m.body = "x\r\n";
  m.len = 3;
  m.body_8bit = 1;          /* not offered: not asked for */
  CHECK_EQ_INT(smtp_client_send(c, &m, &rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc.reply.code, 450);
  CHECK_EQ_INT(smtp_client_send(c, &m, &rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc.reply.code, 452);
  smtp_client_quit(c);
  smtp_client_free(c);
  peer_end(&p);
}

/* Too big for the server's SIZE: refused here, nothing sent; a connection the server closed
 * while it sat idle is reported as stale (the transport then reconnects). */
static void client_size_and_stale(void)
{
  static const char *const script[] = {
    "S:220 peer.test ESMTP\r\n",
    "C:EHLO relay.test\r\n",
    "S:250-peer.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
    "C:MAIL FROM:<a@x.test> SIZE=4\r\n",
    "C:RCPT TO:<b@y.test>\r\n",
    "C:DATA\r\n",
    "S:250 Ok\r\n250 Ok\r\n354 Go\r\n",
    "D:1234\r\n.\r\n",
    "S:250 Ok\r\n",
    NULL
  };
  struct peer p;
  struct smtp_client *c;
  struct smtp_reply r;
  struct smtp_client_rcpt rc;
  struct smtp_client_msg m;
  peer_start(&p, script, 8);
  c = client_for(&p);
  CHECK_EQ_INT(smtp_client_connect(c, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(smtp_client_ehlo(c, &r), SMTP_CLIENT_OK);
  memset(&rc, 0, sizeof(rc));
  memset(&m, 0, sizeof(m));
  rc.address = "b@y.test";
  m.sender = "a@x.test";
  m.body = "12345678901";
  m.len = 11;
  CHECK_EQ_INT(smtp_client_send(c, &m, &rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc.reply.code, 552);
  CHECK_EQ_STR(rc.reply.enh, "5.3.4");
  m.body = "1234";
  m.len = 4;
  CHECK_EQ_INT(smtp_client_send(c, &m, &rc, 1, &r), SMTP_CLIENT_OK);
  CHECK_EQ_INT(rc.reply.code, 250);
  peer_end(&p);               /* the peer hangs up */
  CHECK_EQ_INT(smtp_client_send(c, &m, &rc, 1, &r), SMTP_CLIENT_STALE);
  smtp_client_free(c);
}

/* Nothing listens: a clear reply naming the address, for the log line and the record. */
static void client_connect_refused(void)
{
  struct smtp_client_cfg cfg;
  struct smtp_client *c = NULL;
  struct smtp_reply r;
  int fd = socket(AF_INET, SOCK_STREAM, 0), port;
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, (struct sockaddr *)&sa, sizeof(sa));
  getsockname(fd, (struct sockaddr *)&sa, &len);
  port = ntohs(sa.sin_port);
  close(fd);                  /* a port nobody listens on */
  memset(&cfg, 0, sizeof(cfg));
  cfg.host = "127.0.0.1";
  cfg.port = port;
  cfg.helo = "relay.test";
  CHECK(!smtp_client_new(&cfg, &c));
  CHECK_EQ_INT(smtp_client_connect(c, &r), SMTP_CLIENT_FAILED);
  CHECK_EQ_INT(r.code, 451);
  CHECK_EQ_STR(r.enh, "4.4.1");
  CHECK(strstr(r.text, "Connection refused") != NULL);
  CHECK(!smtp_client_reply_from_server(c));
  smtp_client_free(c);
}

static const struct unit_case cases[] = {
  { "client_pipelined_transactions", client_pipelined_transactions },
  { "client_dsn_values", client_dsn_values },
  { "client_helo_lockstep", client_helo_lockstep },
  { "client_size_and_stale", client_size_and_stale },
  { "client_connect_refused", client_connect_refused },
};

UNIT_MAIN(cases)
