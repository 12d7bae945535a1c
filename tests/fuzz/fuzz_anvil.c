/* Fuzz target for the anvil tables (smtp/anvil.c): the input is a script of connects,
 * disconnects, messages, recipients and AUTH failures from a few dozen clients (IPv4 and
 * IPv6, several in one /64) on two listeners, with time moving on. A model kept here checks
 * what callers rely on: a client never holds more sessions than max_conc, a disconnect frees
 * exactly one, a locked client stays locked (whatever else fills the table) until its lockout
 * ends, and an unknown client is never locked. */
#include "smtp/smtp.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NCLIENTS 64
#define LOCK_MS 5000

static void client_addr(unsigned c, int *family, unsigned char addr[16])
{
  memset(addr, 0, 16);
  if(c & 1) {
    *family = AF_INET;
    addr[0] = 10;
    addr[3] = (unsigned char)c;
  }
  else {
    *family = AF_INET6;
    addr[0] = 0x20;
    addr[1] = 0x01;
    addr[7] = (unsigned char)(c >> 3);    /* eight clients share each /64 */
    addr[15] = (unsigned char)c;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static unsigned held[2][NCLIENTS];       /* sessions admitted, per listener and client */
  static long long locked_until[NCLIENTS]; /* per client, as a /64 or address */
  struct anvil_limits lim = { 3, 6, 4, 8 };
  unsigned services[2];
  long long now = 1000000;
  size_t i;
  anvil_reset();
  memset(held, 0, sizeof(held));
  memset(locked_until, 0, sizeof(locked_until));
  services[0] = anvil_service("mx");
  services[1] = anvil_service("submission");
  for(i = 0; i + 1 < size; i += 2) {
    unsigned op = data[i] & 7, which = (data[i] >> 3) & 1, c = data[i + 1] % NCLIENTS;
    unsigned char addr[16], key[ANVIL_KEY_LEN];
    int family, report = 0;
    unsigned k, block;
    client_addr(c, &family, addr);
    anvil_key(family, addr, key);
    /* the model's client is the /64 for IPv6: the first of its block stands for all */
    block = (c & 1) ? c : (c & ~7u);
    now += (data[i] >> 4) * 250;
    switch(op) {
    case 0: case 1: {
      unsigned total = 0;
      enum anvil_verdict v = anvil_connect(services[which], key, &lim, now, &report);
      for(k = 0; k < NCLIENTS; k++)
        if(((k & 1) ? k : (k & ~7u)) == block)
          total += held[which][k];
      if(v == ANVIL_OK) {
        if(total + 1 > (unsigned)lim.max_conc)
          abort();                          /* more sessions than allowed */
        held[which][c]++;
      }
      else if(v == ANVIL_CONCURRENCY && total < (unsigned)lim.max_conc)
        abort();
      break;
    }
    case 2:
      if(held[which][c]) {
        anvil_disconnect(services[which], key, now);
        held[which][c]--;
      }
      break;
    case 3:
      if(held[which][c])
        (void)anvil_message(services[which], key, &lim, now, &report);
      break;
    case 4:
      if(held[which][c])
        (void)anvil_rcpt(services[which], key, &lim, now, &report);
      break;
    case 5: case 6: {
      unsigned n = anvil_auth_failure(key, 3, LOCK_MS, now);
      if(locked_until[block] && now >= locked_until[block])
        locked_until[block] = 0;
      if(n >= 3 && !locked_until[block])
        locked_until[block] = now + LOCK_MS;
      break;
    }
    default: {
      long long left = anvil_auth_locked(key, now);
      if(locked_until[block] && now >= locked_until[block])
        locked_until[block] = 0;
      if(locked_until[block] && left <= 0)
        abort();                            /* a locked client was forgotten */
      if(left > LOCK_MS)
        abort();
      if(!locked_until[block] && left > 0)
        abort();                            /* locked without reaching the limit */
      break;
    }
    }
  }
  return 0;
}
