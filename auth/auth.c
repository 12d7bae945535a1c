/* auth/'s life cycle for the process: what auth_done ends (Cyrus's server and client sides,
 * the OAuth2 token engine) is set up by each on first use. */
#include "auth/auth.h"
#include "auth/auth_int.h"

void auth_done(void)
{
  auth_sasl_server_done();
  auth_sasl_client_done();
  oauth2_done();
}
