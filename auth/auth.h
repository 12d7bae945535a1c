/* SASL for both directions (Cyrus libsasl2 kept behind this header, like Postfix's xsasl.h),
 * the sasldb user store behind `posternctl user`, XOAUTH2/OAUTHBEARER initial responses and
 * secret files, and the OAuth2 token engine (libcurl). No Cyrus type crosses this interface. */
#ifndef POSTERN_AUTH_H
#define POSTERN_AUTH_H
#include <stddef.h>
#include <stdio.h>

struct buf;

/* Every auth_* function that returns int returns one of these. The comments give the SMTP
 * reply a submission server answers with (RFC 4954). */
enum auth_result {
  AUTH_OK = 0,      /* done; for the server, user is set (235 2.7.0) */
  AUTH_CONTINUE,    /* send the challenge/response and read the peer's next line (334) */
  AUTH_FAIL,        /* wrong credentials, malformed exchange or refused input (535 5.7.8) */
  AUTH_BAD_MECH,    /* mechanism not offered, unknown or not allowed here (504 5.5.4) */
  AUTH_ERROR,       /* our side cannot check now: store, memory, library (454 4.7.0) */
  AUTH_NOUSER       /* auth_user_delete: no such user */
};

/* The mechanisms Postern speaks through Cyrus, strongest first: the default of `auto`. */
#define AUTH_MECHS_ALL "SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"
#define AUTH_USER_MAX 256          /* bytes of a login name, NUL included */
#define AUTH_SECRET_MAX (64u * 1024u)

/* ---- server: a submission listener authenticating legacy applications ----------------- */

/* Once per process, before any thread starts: loads the Cyrus plugins and points them at the
 * sasldb. Refuses a sasldb that group or others may read (it holds the passwords CRAM-MD5
 * needs in the clear). A missing sasldb is fine: nobody can log in until a user is added. */
int auth_server_init(const char *sasldb_path, char *err, size_t errsz);

/* Identities: a user added as "alice" with realm = the listener's hostname logs in as "alice"
 * or "alice@hostname" with every mechanism, and is reported as "alice". A name with an '@'
 * ("app@clinic.example") is stored under the realm after its first '@' and is reported as
 * typed. */
struct auth_server_session;

/* service is "smtp"; hostname is the realm users were added under; mechs_allowed is the
 * listener's auth_mechanisms (space separated); secure_channel (TLS or loopback) is what lets
 * PLAIN and LOGIN be offered. */
int auth_server_new(const char *service, const char *hostname, const char *mechs_allowed,
                    int secure_channel, struct auth_server_session **out);

/* The list to advertise after "250-AUTH " (empty when nothing may be offered). */
const char *auth_server_mechs(struct auth_server_session *s);

/* One step of an exchange. mech names the mechanism on the first step (AUTH MECH ...) and is
 * NULL afterwards; mech on a later call starts over after a failure or a client's "*" (after
 * AUTH_OK the session is spent: SMTP allows one successful AUTH). in is the client's data
 * already base64-decoded, NULL for "no initial response". On AUTH_CONTINUE, *out, *outlen is
 * the challenge to base64-encode after "334 " (valid until the next call). On AUTH_OK the
 * authenticated identity is in user. */
int auth_server_step(struct auth_server_session *s, const char *mech,
                     const unsigned char *in, size_t inlen,
                     const unsigned char **out, size_t *outlen,
                     char *user, size_t usersz);

void auth_server_free(struct auth_server_session *s);

/* ---- users: the sasldb behind `posternctl user add|delete|list` --------------------------- */

/* Creates the user or replaces the password; a new sasldb is created mode 0600. Not for
 * threaded callers: creating the file narrows the umask for the duration of the call. */
int auth_user_set(const char *sasldb_path, const char *user, const char *realm,
                  const char *password, size_t pwlen, char *err, size_t errsz);
int auth_user_delete(const char *sasldb_path, const char *user, const char *realm,
                     char *err, size_t errsz);
/* Calls cb once per user (a missing sasldb has none). Needs sasldblistusers2 (Debian
 * package sasl2-bin): libsasl2 has no listing API of its own. */
int auth_user_list(const char *sasldb_path,
                   void (*cb)(void *arg, const char *user, const char *realm), void *arg,
                   char *err, size_t errsz);

/* ---- client: Postern authenticating to an upstream ---------------------------------------- */

struct auth_client_session;

/* mechs_wanted: a space-separated preference list out of AUTH_MECHS_ALL, or NULL for auto
 * (the strongest both sides have). PLAIN and LOGIN are used only when secure_channel is 1.
 * The password is copied and wiped when the session is freed. */
int auth_client_new(const char *service, const char *server_host, const char *username,
                    const char *password, size_t pwlen, const char *mechs_wanted,
                    int secure_channel, struct auth_client_session **out);

/* Picks the mechanism from the server's EHLO AUTH list (AUTH_BAD_MECH when there is none in
 * common) and produces the initial response. *has_initial is 0 for server-first mechanisms
 * (send "AUTH MECH" alone); with 1, *initial, *initiallen (possibly empty: "=") go after the
 * mechanism name, or after an empty 334 when the line would be too long. */
int auth_client_start(struct auth_client_session *c, const char *server_mechs,
                      const char **mech_chosen, const unsigned char **initial,
                      size_t *initiallen, int *has_initial);

/* Answers one 334 challenge (already base64-decoded). On AUTH_CONTINUE and AUTH_OK,
 * *out, *outlen (possibly empty) is the line to send; AUTH_OK means the mechanism has finished
 * on our side, so the server's next reply must be 235. AUTH_FAIL: send "*" (e.g. the server
 * failed SCRAM's proof of knowing the password). */
int auth_client_step(struct auth_client_session *c, const unsigned char *challenge, size_t len,
                     const unsigned char **out, size_t *outlen);

void auth_client_free(struct auth_client_session *c);

/* XOAUTH2 (Google, Microsoft) and OAUTHBEARER (RFC 7628) initial responses, raw (before
 * base64), appended to out. The token must be an RFC 6750 b64token. port 0 or host NULL
 * leaves that field out. */
int auth_xoauth2_initial(const char *user, const char *token, struct buf *out);
int auth_oauthbearer_initial(const char *user, const char *host, int port, const char *token,
                             struct buf *out);

/* ---- base64 for the SMTP side ------------------------------------------------------------- */

/* Strict RFC 4648 base64 without line breaks; "" decodes to nothing. *out is malloc'd and
 * NUL-terminated (free with auth_secret_free when it may hold a password). AUTH_FAIL on bad
 * input. */
int auth_b64_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen);
int auth_b64_encode(const unsigned char *in, size_t inlen, char **out, size_t *outlen);

/* ---- secrets ---------------------------------------------------------------------------- */

/* Reads a secret file: a regular file no one but its owner may read or write, at most
 * AUTH_SECRET_MAX bytes, one trailing newline removed. *secret is malloc'd and NUL-terminated.
 * AUTH_FAIL when refused (mode, type, size, empty: err says what to chmod or fix), AUTH_ERROR
 * when it cannot be read. err never holds the secret. */
int auth_secret_read(const char *path, char **secret, size_t *len, char *err, size_t errsz);

/* Wipes then frees (NULL is fine). */
void auth_secret_free(void *secret, size_t len);

/* ---- OAuth2 token engine (oauth2.c): one identity per [oauth2 NAME] with a flow ------------ */

struct config;

enum oauth2_result {
  OAUTH2_OK = 0,
  OAUTH2_TRANSIENT,   /* network, HTTP 5xx or 429: defer, it will work again by itself */
  OAUTH2_REAUTH,      /* invalid_grant, a bad secret, no consent...: the operator must act;
                       * the upstream's mail is held */
  OAUTH2_PENDING,     /* device code not approved yet (login only) */
  OAUTH2_SLOW_DOWN    /* device code: poll less often (login only) */
};

/* Is [oauth2 name] one the engine manages (it has a flow)? Without one, the upstream's
 * token_file or password_file holds a ready access token. */
int oauth2_managed(const struct config *cfg, const char *name);

/* A current access token for [oauth2 name] (*token malloc'd: free with auth_secret_free), and
 * until when to use it (wall-clock ms: its expiry less a margin for clocks and latency). Served from memory while it has life left; refreshed
 * in the background before it expires, one request per identity however many callers wait.
 * rejected: the token an upstream just refused (535), to force one refresh; else NULL. cfg
 * registers or updates the identity (NULL: as last registered). err is for the log and the SMTP
 * reply and never holds a secret. Returns enum oauth2_result. */
int oauth2_token_get(const struct config *cfg, const char *name, const char *rejected,
                     char **token, long long *expires_ms, char *err, size_t errsz);

/* Registers every [oauth2] identity with a flow and loads its stored tokens, so that the
 * background refresh keeps them (and their refresh tokens) alive from the start, used or not.
 * The daemon calls it at start and after a reload. */
void oauth2_start(const struct config *cfg);

/* Sorts a token endpoint's refusal: OAUTH2_TRANSIENT or OAUTH2_REAUTH. status 0: no answer. */
int oauth2_classify(long status, const char *error, const char *description);

/* Where [oauth2 name] keeps its tokens (token_file, else DATA_DIR/oauth2/NAME.json) and the
 * status file the daemon writes next to it. 0 ok, -1 no such section or too long. */
int oauth2_paths(const struct config *cfg, const char *name, char *store, size_t storesz,
                 char *status, size_t statussz);

/* Writes a file atomically (temporary file, fsync, rename, fsync of the directory) with the
 * given mode. 0 ok, -1 with errno set. */
int oauth2_file_write(const char *path, const char *data, size_t len, int mode);
/* The same, owned by owner (NULL: by whoever writes it). */
struct passwd;
int oauth2_file_write_owned(const char *path, const char *data, size_t len, int mode,
                            const struct passwd *owner);

/* `posternctl oauth2 login NAME` is the device code flow in two steps the tool drives (it
 * shows the code and waits between polls). Start: asks the device authorisation endpoint for
 * a code (interval and lifetime bounded); OAUTH2_OK, else err says why. */
struct oauth2_device {
  char *device_code;            /* a secret: wiped by oauth2_device_free */
  char *user_code, *verification_uri;
  long long interval_s;         /* between polls; a SLOW_DOWN answer asks for 5 s more */
  long long expires_at_ms;      /* wall clock: the code is no good after */
};
int  oauth2_device_start(const struct config *cfg, const char *name, struct oauth2_device *dev,
                         char *err, size_t errsz);
/* One poll: OAUTH2_PENDING, OAUTH2_SLOW_DOWN, OAUTH2_OK (the tokens are stored where the daemon
 * finds them, in stored; *got_refresh says whether a refresh token came), or a failure. */
int  oauth2_device_poll(const struct config *cfg, const char *name,
                        const struct oauth2_device *dev, char *stored, size_t storedsz,
                        int *got_refresh, char *err, size_t errsz);
void oauth2_device_free(struct oauth2_device *dev);

/* Microsoft Graph's base URL in the cloud of [oauth2 name] (its cloud = key; the global
 * https://graph.microsoft.com when unset or unknown). */
const char *oauth2_graph_url(const struct config *cfg, const char *name);

/* For `posternctl oauth2 status NAME`: state, expiry and last error from the daemon's status
 * file, and the token endpoint and scope the configuration gives. -1 (err set) when there is no
 * such section. */
struct oauth2_status {
  int have;                     /* the daemon's status file was read */
  char state[32];               /* "ok", "retrying", "reauthorize", "no-token"; "": unknown */
  char last_error[512];
  long long expires_at, last_refresh, refresh_due;   /* epoch seconds; 0: none */
  int has_refresh_token;
  const char *flow, *provider;  /* the configuration's words, or NULL */
  const char *cloud;            /* the Microsoft cloud's name */
  char token_endpoint[2048];    /* "" when unknown */
  char scope[512];
  int has_scope;
  char token_file[4096], status_file[4200];
};
int oauth2_status_get(const struct config *cfg, const char *name, struct oauth2_status *st,
                      char *err, size_t errsz);

/* For posternctl: tokens of delegated flows (refresh tokens) are read from the token file and
 * never refreshed, and no refresh thread starts; the daemon is the one refresher. */
void oauth2_read_only(void);

/* Stops the refresh thread and wipes the cached tokens (at exit; called by auth_done). */
void oauth2_done(void);

/* Releases the Cyrus plugins at exit (optional; keeps valgrind quiet). */
void auth_done(void);

#endif
