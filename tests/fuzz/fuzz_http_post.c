/* Fuzz target for the HTTP side of /emailInbound and /sms: the input is a whole HTTP request
 * (request line, headers, body, chunked or not), read by the libmicrohttpd the daemon links,
 * over a socket pair, with no network. /emailInbound bodies go through libmicrohttpd's post
 * processor (multipart/form-data, or urlencoded) into the listener's field collector
 * (inbound_parse_form_*); /sms bodies through inbound_form_parse and Twilio's signature. Kept
 * fields stay within their caps and keep only their expected shapes. */
#include "inbound/inbound.h"
#include <microhttpd.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT (64u * 1024u)   /* what one write into the socket pair surely takes */

struct fuzz_rq {
  int parse;                    /* /emailInbound; else /sms */
  struct MHD_PostProcessor *pp;
  struct inbound_parse_form form;
  struct buf body;
};

static enum MHD_Result field(void *cls, enum MHD_ValueKind kind, const char *key,
                             const char *filename, const char *content_type,
                             const char *transfer_encoding, const char *data, uint64_t off,
                             size_t size)
{
  struct fuzz_rq *rq = cls;
  (void)kind;
  (void)content_type;
  (void)transfer_encoding;
  inbound_parse_form_field(&rq->form, key, filename, data, off, size);
  return MHD_YES;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status)
{
  static const char text[] = "x\n";
  struct MHD_Response *r = MHD_create_response_from_buffer(sizeof(text) - 1, (void *)text,
                                                           MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret;
  if(!r)
    return MHD_NO;
  ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static void check_form(struct inbound_parse_form *f)
{
  size_t i;
  if(f->envelope.len > LIM_WEBHOOK_FIELD || f->spf.len > LIM_WEBHOOK_FIELD ||
     f->sender_ip.len > LIM_WEBHOOK_FIELD || f->attachments.len > 16)
    abort();
  if(inbound_parse_form_finish(f))
    return;
  if((f->from && strpbrk(f->from, "\r\n")) || (f->to && strchr(f->to, '\r')))
    abort();
  for(i = 0; f->spf_result[i]; i++)
    if(f->spf_result[i] < 'a' || f->spf_result[i] > 'z')
      abort();
  if(strspn(f->ip, "0123456789abcdefABCDEF.:") != strlen(f->ip))
    abort();
}

static void check_sms(const struct buf *body)
{
  struct inbound_param *params = NULL;
  char *hold = NULL, sig[64];
  size_t n = 0;
  if(inbound_form_parse(body->ptr ? body->ptr : "", body->len, LIM_WEBHOOK_FIELDS, &params, &n,
                        &hold))
    return;
  if(n > LIM_WEBHOOK_FIELDS ||
     inbound_twilio_signature("token", 5, "https://x.test/sms", params, n, sig, sizeof(sig)))
    abort();
  free(params);
  free(hold);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
  struct fuzz_rq *rq = *con_cls;
  (void)cls;
  (void)method;
  (void)version;
  if(!rq) {
    int parse = !strcmp(url, "/emailInbound");
    if(!parse && strcmp(url, "/sms"))
      return answer(c, MHD_HTTP_NOT_FOUND);
    rq = calloc(1, sizeof(*rq));
    if(!rq)
      return MHD_NO;
    *con_cls = rq;
    rq->parse = parse;
    inbound_parse_form_init(&rq->form);
    buf_init(&rq->body, parse ? FUZZ_MAX_INPUT : LIM_WEBHOOK_SMS_BODY);
    if(parse && !(rq->pp = MHD_create_post_processor(c, 1024, field, rq)))
      return answer(c, MHD_HTTP_BAD_REQUEST);
    return MHD_YES;
  }
  if(*upload_size) {
    if(buf_add(&rq->body, upload, *upload_size))
      rq->form.error = 1;
    else if(rq->pp && MHD_post_process(rq->pp, upload, *upload_size) != MHD_YES)
      rq->form.error = 1;
    *upload_size = 0;
    return MHD_YES;
  }
  if(rq->parse)
    check_form(&rq->form);
  else
    check_sms(&rq->body);
  return answer(c, MHD_HTTP_OK);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
  struct fuzz_rq *rq = *con_cls;
  (void)cls;
  (void)c;
  (void)toe;
  if(!rq)
    return;
  if(rq->pp)
    MHD_destroy_post_processor(rq->pp);
  inbound_parse_form_free(&rq->form);
  buf_free(&rq->body);
  free(rq);
  *con_cls = NULL;
}

static struct MHD_Daemon *daemon_once(void)
{
  static struct MHD_Daemon *d;
  if(!d) {
    signal(SIGPIPE, SIG_IGN);
    d = MHD_start_daemon(MHD_USE_NO_LISTEN_SOCKET, 0, NULL, NULL, handle, NULL,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                         MHD_OPTION_CONNECTION_TIMEOUT, 1u, MHD_OPTION_END);
    if(!d)
      abort();
  }
  return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct MHD_Daemon *d = daemon_once();
  struct sockaddr_in peer;
  int sv[2], i;
  char out[4096];
  if(size > FUZZ_MAX_INPUT)
    return 0;
  if(socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
    return 0;
  memset(&peer, 0, sizeof(peer));
  peer.sin_family = AF_INET;
  peer.sin_port = htons(40000);
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if(MHD_add_connection(d, sv[1], (const struct sockaddr *)&peer, sizeof(peer)) != MHD_YES) {
    close(sv[0]);
    close(sv[1]);
    return 0;
  }
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  if(size && write(sv[0], data, size) < 0) {
    /* the pair takes 64 KiB at once; a failure just means a shorter request */
  }
  shutdown(sv[0], SHUT_WR);
  /* until libmicrohttpd has answered and closed its end, or gives up on a request cut short */
  for(i = 0; i < 10000; i++) {
    ssize_t got;
    MHD_run(d);
    got = read(sv[0], out, sizeof(out));
    if(got == 0 || (got < 0 && i > 100))
      break;
  }
  close(sv[0]);
  for(i = 0; i < 3; i++)
    MHD_run(d);
  return 0;
}
