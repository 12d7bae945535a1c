# A stand-in for the HTTP mail APIs (SendGrid v3, SES v2) on loopback: it records every request
# (method, path, headers, body, time) and answers as the test scripts it — by the recipients a
# request names, so that DSNs and other messages in flight do not consume another test's answers.
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import register_secret


class Request:
    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers          # email.message.Message (case-insensitive get)
        self.body = body
        self.time = time.time()

    def json(self):
        return json.loads(self.body)

    def sendgrid_rcpts(self):
        out = []
        for p in self.json().get("personalizations", []):
            for k in ("to", "cc", "bcc"):
                out += [a["email"] for a in p.get(k, [])]
        return out

    def ses_rcpts(self):
        d = self.json().get("Destination", {})
        return d.get("ToAddresses", []) + d.get("CcAddresses", []) + d.get("BccAddresses", [])


class APIServer:
    """rules: list of (predicate(Request) -> bool, [responses]); a response is (status,
    headers dict, body bytes|dict); the first matching rule answers with its next response
    (the last one repeats). Unmatched requests get default(Request)."""

    def __init__(self, key="SG.test-key"):
        self.requests = []
        self.rules = []
        self.key = key
        self.graph_token = register_secret("eyJ0eXAi.graph-token.sig")
        self.lock = threading.Lock()
        self.counter = 0
        self.connections = 0                    # TCP connections accepted
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"       # keep-alive, as the APIs do

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections += 1

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path, self.headers, body)
                with server.lock:
                    server.requests.append(req)
                status, headers, payload = server.answer(req)
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, str(v))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def rule(self, pred, *responses):
        with self.lock:
            self.rules.append([pred, list(responses)])

    def answer(self, req):
        with self.lock:
            for r in self.rules:
                try:
                    hit = r[0](req)
                except Exception:
                    hit = False
                if hit:
                    return r[1].pop(0) if len(r[1]) > 1 else r[1][0]
            self.counter += 1
            n = self.counter
        return self.default(req, n)

    def default(self, req, n):
        auth = req.headers.get("Authorization", "")
        if req.path.startswith("/v3/"):
            if auth != f"Bearer {self.key}":
                return 401, {}, {"errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, or revoked"}]}
            if req.method == "GET" and req.path == "/v3/scopes":
                return 200, {}, {"scopes": ["mail.send"]}
            if req.method == "POST" and req.path == "/v3/mail/send":
                return 202, {"X-Message-Id": f"sgmsg{n:06d}"}, b""
        if req.method == "POST" and req.path == "/oauth2/token":
            return 200, {}, {"access_token": self.graph_token, "token_type": "Bearer",
                             "expires_in": 3600}
        if req.method == "POST" and req.path.startswith("/v1.0/users/") and req.path.endswith("/sendMail"):
            if auth != f"Bearer {self.graph_token}":
                return 401, {}, {"error": {"code": "InvalidAuthenticationToken",
                                           "message": "Access token is empty or invalid."}}
            return 202, {"request-id": f"graph-{n:06d}"}, b""
        if req.method == "POST" and req.path == "/v2/email/outbound-emails":
            return 200, {}, {"MessageId": f"ses-{n:06d}"}
        return 404, {}, {"errors": [{"message": "not found"}]}

    def posts(self, path):
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path == path]
