# A small OAuth2 token endpoint on loopback for the token engine's tests (http.server): the
# client_credentials, refresh_token (with rotation) and device code grants, tokens that live a
# chosen number of seconds, failure modes (invalid_grant, HTTP 500), and counts of every request.
import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import register_secret


class TokenServer:
    """clients: {client_id: client_secret or None}. lifetime: seconds an access token lives.
    rotate: every refresh answers with a new refresh token and kills the old one.
    fail: None | 'invalid_grant' | 'aadsts70043' | 'server_error' (HTTP 500)."""

    def __init__(self, clients, lifetime=3600, rotate=True, delay=0.0):
        self.clients = dict(clients)
        for secret in self.clients.values():
            register_secret(secret)
        self.assertion_certs = {}    # client_id -> PEM certificate: a signed assertion is required
        self.assertions = []         # decoded (header, claims) of every assertion received
        self.lifetime = lifetime
        self.rotate = rotate
        self.delay = delay
        self.fail = None
        self.fail_grant = None       # fail only this grant_type (None: every grant)
        self.lock = threading.Lock()
        self.access = {}             # token -> expiry (monotonic)
        self.refresh = set()         # valid refresh tokens
        self.dead_refresh = set()    # rotated away
        self.devices = {}            # device_code -> {"user_code", "approved", "client_id"}
        self.requests = []           # (path, grant_type, status)
        self.issued = []             # every secret string handed out (access and refresh)
        self.httpd = None

    # -- what the tests use
    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v2.0/token"

    def valid(self, token):
        with self.lock:
            exp = self.access.get(token)
            return exp is not None and time.monotonic() < exp

    def add_refresh_token(self):
        t = register_secret("rt-" + secrets.token_urlsafe(24))
        with self.lock:
            self.refresh.add(t)
            self.issued.append(t)
        return t

    def approve(self, user_code):
        with self.lock:
            for d in self.devices.values():
                if d["user_code"] == user_code:
                    d["approved"] = True
                    return True
        return False

    def token_requests(self, grant=None):
        with self.lock:
            return [r for r in self.requests if r[0] == "token" and (grant is None or r[1] == grant)]

    def secrets_issued(self):
        with self.lock:
            return list(self.issued)

    # -- the grants (called with lock held); return (status, body)
    def _issue(self, with_refresh):
        at = register_secret("at-" + secrets.token_urlsafe(24))
        self.access[at] = time.monotonic() + self.lifetime
        self.issued.append(at)
        body = {"token_type": "Bearer", "access_token": at, "expires_in": self.lifetime}
        if with_refresh:
            rt = register_secret("rt-" + secrets.token_urlsafe(24))
            self.refresh.add(rt)
            self.issued.append(rt)
            body["refresh_token"] = rt
        return 200, body

    def _token(self, f):
        grant = f.get("grant_type", "")
        cid = f.get("client_id")
        if cid not in self.clients:
            return 400, {"error": "invalid_client", "error_description": "AADSTS700016: unknown application"}
        if cid in self.assertion_certs:
            why = self._check_assertion(cid, f)
            if why:
                return 401, {"error": "invalid_client", "error_description": "AADSTS700027: " + why}
        elif self.clients[cid] is not None and f.get("client_secret") != self.clients[cid]:
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}
        if self.fail_grant and grant != self.fail_grant:
            pass
        elif self.fail == "server_error":
            return 500, {"error": "server_error", "error_description": "try later"}
        elif self.fail == "invalid_grant":
            return 400, {"error": "invalid_grant", "error_description": "The grant is no longer valid."}
        elif self.fail == "aadsts70043":
            return 400, {"error": "invalid_grant",
                         "error_description": "AADSTS70043: The refresh token has expired due to inactivity."}
        if grant == "client_credentials":
            return self._issue(False)
        if grant == "refresh_token":
            rt = f.get("refresh_token")
            if rt not in self.refresh:
                return 400, {"error": "invalid_grant", "error_description": "AADSTS70008: refresh token unknown or rotated away"}
            if self.rotate:
                self.refresh.discard(rt)
                self.dead_refresh.add(rt)
            st, body = self._issue(self.rotate)
            return st, body
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            d = self.devices.get(f.get("device_code"))
            if d is None:
                return 400, {"error": "expired_token"}
            if not d["approved"]:
                return 400, {"error": "authorization_pending"}
            del self.devices[f.get("device_code")]
            return self._issue(True)
        return 400, {"error": "unsupported_grant_type"}

    def _check_assertion(self, cid, f):
        """RFC 7523 client authentication: None when good, else why not."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def unb64(x):
            return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        if f.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return "wrong client_assertion_type"
        register_secret(f.get("client_assertion"))
        parts = f.get("client_assertion", "").split(".")
        if len(parts) != 3:
            return "not a JWT"
        header, claims = json.loads(unb64(parts[0])), json.loads(unb64(parts[1]))
        self.assertions.append((header, claims))
        cert = x509.load_pem_x509_certificate(self.assertion_certs[cid])
        thumb = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
        thumb256 = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
        if header.get("alg") != "RS256" or header.get("x5t") != thumb:
            return "wrong alg or x5t"
        if header.get("x5t#S256") != thumb256:
            return "wrong x5t#S256"
        try:
            cert.public_key().verify(unb64(parts[2]), f"{parts[0]}.{parts[1]}".encode(),
                                     padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return "bad signature"
        now = time.time()
        if claims.get("aud") != self.url or claims.get("iss") != cid or claims.get("sub") != cid:
            return "wrong aud, iss or sub"
        if not (claims.get("nbf", 0) <= now + 5 and now < claims.get("exp", 0) <= now + 3600):
            return "expired or not yet valid"
        if not claims.get("jti"):
            return "no jti"
        return None

    def _devicecode(self, f):
        if f.get("client_id") not in self.clients:
            return 400, {"error": "invalid_client"}
        dc = secrets.token_urlsafe(16)
        uc = "%04d-%04d" % (secrets.randbelow(10000), secrets.randbelow(10000))
        self.devices[dc] = {"user_code": uc, "approved": False}
        return 200, {"device_code": dc, "user_code": uc, "interval": 1, "expires_in": 120,
                     "verification_uri": "https://login.example.test/device"}

    # -- life cycle
    def start(self):
        ts = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                f = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                if ts.delay:
                    time.sleep(ts.delay)
                kind = self.path.rsplit("/", 1)[-1]
                with ts.lock:
                    if kind == "token":
                        st, body = ts._token(f)
                    elif kind == "devicecode":
                        st, body = ts._devicecode(f)
                    else:
                        st, body = 404, {"error": "not_found"}
                    ts.requests.append((kind, f.get("grant_type"), st))
                data = json.dumps(body).encode()
                self.send_response(st)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
