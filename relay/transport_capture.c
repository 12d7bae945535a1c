/* The capture transport, the embedded default: delivery means "keep it in the store", so a
 * new user can see what an application sends with nothing else installed. */
#include "relay/relay_int.h"
#include "lib/buf.h"

static int capture_open(const struct config *cfg, const struct cfg_upstream *up, void **session,
                        struct smtp_reply *r)
{
  *session = NULL;
  return 0;
}

static int capture_send(void *session, const struct store_msg *m, const char *body, size_t len,
                        struct transport_rcpt *rcpts, size_t n, struct smtp_reply *r)
{
  size_t i;
  for(i = 0; i < n; i++)
    smtp_reply_set(&rcpts[i].reply, 250, "2.0.0", "Ok: captured, kept in the store");
  return 0;
}

static void capture_close(void *session)
{
}

static void capture_describe(void *session, char *out, size_t outsz)
{
  str_copy(out, outsz, "capture");
}

const struct transport transport_capture = {
  .type = CFG_UP_CAPTURE,
  .delivered_status = RCPT_CAPTURED,
  .open = capture_open,
  .send = capture_send,
  .close = capture_close,
  .describe = capture_describe,
};
