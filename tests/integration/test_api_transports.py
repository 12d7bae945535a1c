# The HTTP API transports against a recording HTTP server on loopback (apiserver.py): every
# SendGrid request of a corpus of messages validates against SendGrid's published schema and
# carries the right values; SES requests are SigV4-signed (checked by recomputing the signature)
# and carry the message byte for byte; each answer class leads to its queue state.
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import (POSTERNCTL, SRCDIR, free_port, need_binary, register_secret, secret_file,
                      sha256)
from apiserver import APIServer
from api_corpus import SENDER, corpus

try:
    import jsonschema
except ImportError:             # a missing test package must not pass as a skipped check
    jsonschema = None

# SendGrid's published OpenAPI description, vendored with its MIT licence (tests/specs/)
SPEC = os.environ.get("SENDGRID_SPEC", os.path.join(SRCDIR, "tests", "specs",
                                                    "sendgrid_tsg_mail_v3.json"))
FAST = {"retry_min": "1s", "retry_max": "2s", "debug": "yes"}
SEND = "/v3/mail/send"
SES = "/v2/email/outbound-emails"


# ---------------------------------------------------------------------------------------------
# helpers

def mail_send_schema():
    """SendGrid's mail/send request schema with its $refs inlined; custom_args as SendGrid's own
    libraries send it (an object of strings; the published schema says string)."""
    if not os.path.exists(SPEC):
        pytest.fail(f"no SendGrid schema at {SPEC} (set SENDGRID_SPEC)")
    with open(SPEC) as f:
        spec = json.load(f)

    def inline(o):
        if isinstance(o, dict):
            if "$ref" in o:
                parts = o["$ref"].lstrip("#/").split("/")
                target = spec
                for p in parts:
                    target = target[p]
                merged = dict(inline(target))
                merged.update({k: inline(v) for k, v in o.items() if k != "$ref"})
                return merged
            return {k: inline(v) for k, v in o.items()}
        if isinstance(o, list):
            return [inline(x) for x in o]
        return o

    body = spec["paths"]["/v3/mail/send"]["post"]["requestBody"]
    schema = inline(body)["content"]["application/json"]["schema"]
    schema["properties"]["custom_args"] = {"type": "object",
                                           "additionalProperties": {"type": "string"}}
    return schema


@pytest.fixture(scope="module")
def validator():
    if jsonschema is None:
        pytest.fail("python3-jsonschema is not installed (scripts/dev.sh installs TEST_PKGS)")
    schema = mail_send_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def api():
    s = APIServer().start()
    yield s
    s.stop()


def sendgrid_conf(api, keyfile, name="sg", extra=""):
    """api: an APIServer, or the api_url itself."""
    url = getattr(api, "url", api)
    return (f"[upstream {name}]\ntype = sendgrid\napi_key_file = {keyfile}\napi_url = {url}\n"
            f"{extra}\n[route default]\nupstream = {name}\n")


def submit(d, rcpts, content, sender=SENDER):
    with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as s:
        s.ehlo("client.test")
        code, resp = s.mail(sender)
        assert code == 250, resp
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, resp
        code, resp = s.data(content)
        assert code == 250, resp
    return re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def wait_all(d, qid, status, timeout=30):
    def ok():
        e = d.queue_entry(qid)
        return e if e and e["recipients"] and all(r["status"] == status for r in e["recipients"]) else None
    try:
        return wait_for(ok, timeout, f"{qid} -> {status}")
    except AssertionError:
        raise AssertionError(f"{qid} did not become {status}: {d.queue_entry(qid)}\n{d.log_tail(60)}")


def iso_ms(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def by_postern_id(api, qid):
    return [r for r in api.posts(SEND) if r.json().get("custom_args", {}).get("postern_id") == qid]


# ---------------------------------------------------------------------------------------------
# the corpus through SendGrid

def check_sendgrid_request(req, case, qid, validator):
    body = req.json()
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{case['name']}: request does not validate: " + \
        "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    ex = case["expect"]
    assert req.headers.get("Content-Type") == "application/json"
    assert body["custom_args"] == {"postern_id": qid}
    frm = ex["from"]
    assert body["from"]["email"] == frm[0]
    assert body["from"].get("name") == frm[1], body["from"]
    if "subject" in ex:
        assert body.get("subject") == ex["subject"], body.get("subject")
    if "content" in ex:
        got = [(c["type"], c["value"]) for c in body["content"]]
        assert [t for t, _ in got] == [t for t, _ in ex["content"]], got
        for (t, v), (_, want) in zip(got, ex["content"]):
            assert want in v, f"{case['name']}: {t} content {v!r} lacks {want!r}"
    types = [c["type"] for c in body["content"]]
    if "text/plain" in types and "text/html" in types:
        assert types.index("text/plain") < types.index("text/html")
    if "attachments" in ex:
        atts = body.get("attachments", [])
        assert len(atts) == len(ex["attachments"]), atts
        for a, want in zip(atts, ex["attachments"]):
            data = base64.b64decode(a["content"], validate=True)
            if "data" in want:
                assert data == want["data"], f"{case['name']}: attachment bytes differ"
            if "contains" in want:
                assert want["contains"] in data
            for k in ("filename", "type", "disposition", "content_id"):
                if k in want:
                    assert a.get(k) == want[k], f"{case['name']}: {k} {a.get(k)!r} != {want[k]!r}"
            if a.get("disposition") != "inline":
                assert "content_id" not in a
    else:
        assert "attachments" not in body
    if "headers" in ex:
        for k, v in ex["headers"].items():
            assert body["headers"].get(k) == v, body.get("headers")
    for k in ex.get("no_headers", []) + ["Received", "Content-Type", "To", "From", "Subject"]:
        assert k.lower() not in {h.lower() for h in body.get("headers", {})}, body["headers"]
    if "reply_to" in ex:
        assert body["reply_to"] == {"email": ex["reply_to"][0], "name": ex["reply_to"][1]}
    # recipients: each address once, in the right place
    pers = body["personalizations"]
    all_rcpts = [a["email"].lower() for p in pers for k in ("to", "cc", "bcc") for a in p.get(k, [])]
    assert len(all_rcpts) == len(set(all_rcpts)), all_rcpts
    assert set(all_rcpts) == {r.lower() for r in case["rcpts"]}
    if "each" in ex:
        assert [[a["email"] for a in p["to"]] for p in pers] == [[e] for e in ex["each"]]
        assert all(set(p) == {"to"} for p in pers)
    else:
        assert len(pers) == 1, pers
        p = pers[0]
        for k in ("to", "cc", "bcc"):
            assert [a["email"] for a in p.get(k, [])] == ex.get(k, case["rcpts"] if k == "to" else []), (k, p)
        for p in pers:
            for k in ("to", "cc", "bcc"):
                for a in p.get(k, []):
                    if a["email"] in ex.get("names", {}):
                        assert a.get("name") == ex["names"][a["email"]], a


def test_sendgrid_corpus(daemon_factory, api, tmp_path, validator):
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    cases = corpus()
    assert len(cases) >= 20
    ids = [(submit(d, c["rcpts"], c["data"]), c) for c in cases]
    for qid, c in ids:
        e = wait_all(d, qid, "sent")
        for r in e["recipients"]:
            assert re.search(r"X-Message-Id=sgmsg\d+", r["last_reply"]), r
        reqs = by_postern_id(api, qid)
        assert len(reqs) == 1, f"{c['name']}: {len(reqs)} requests"
        check_sendgrid_request(reqs[0], c, qid, validator)
    # one connection carried them all (keep-alive), and the key was sent as a bearer token only
    assert all(r.headers.get("Authorization") == f"Bearer {api.key}" for r in api.requests)
    assert api.key not in d.log_text()


def test_sendgrid_inline_images_as_python_writes_them(daemon_factory, api, tmp_path, validator):
    # EmailMessage.add_related(..., cid=..., filename=...) puts the picture in multipart/related
    # with "Content-Disposition: attachment": it used to go to SendGrid as a plain attachment
    # without content_id, and the HTML's <img src="cid:..."> broke
    import email.message
    import email.policy
    import email.utils
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    logo_cid = email.utils.make_msgid(domain="client.test")       # "<...@client.test>"
    m = email.message.EmailMessage(policy=email.policy.SMTP)
    m["From"], m["To"], m["Subject"] = SENDER, "pics@example.net", "inline pictures"
    m.set_content("Our logo is in the HTML part.")
    m.add_alternative(f'<p>Logo: <img src="cid:{logo_cid[1:-1]}"></p>'
                      '<p>Chart: <img src="cid:chart@client.test"></p>', subtype="html")
    m.get_payload()[1].add_related(png, "image", "png", cid=logo_cid, filename="logo.png")
    # a picture the HTML names by cid: but that sits outside multipart/related
    m.add_attachment(png[::-1], "image", "png", cid="<chart@client.test>", filename="chart.png")
    # an attachment with a Content-ID the HTML does not name: stays an attachment
    m.add_attachment(b"a,b\r\n1,2\r\n", "text", "csv", cid="<data@client.test>",
                     filename="data.csv")
    raw = m.as_bytes()
    assert b'Content-Disposition: attachment; filename="logo.png"' in raw    # as Python writes it
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["pics@example.net"], raw)
    wait_all(d, qid, "sent")
    (req,) = by_postern_id(api, qid)
    body = req.json()
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    atts = {a["filename"]: a for a in body["attachments"]}
    assert set(atts) == {"logo.png", "chart.png", "data.csv"}, atts.keys()
    assert atts["logo.png"]["disposition"] == "inline", atts["logo.png"]
    assert atts["logo.png"]["content_id"] == logo_cid[1:-1]
    assert base64.b64decode(atts["logo.png"]["content"]) == png
    assert atts["chart.png"]["disposition"] == "inline"
    assert atts["chart.png"]["content_id"] == "chart@client.test"
    assert atts["data.csv"]["disposition"] == "attachment" and "content_id" not in atts["data.csv"]
    html = [c["value"] for c in body["content"] if c["type"] == "text/html"][0]
    assert f"cid:{logo_cid[1:-1]}" in html


def test_sendgrid_1500_recipients_split(daemon_factory, api, tmp_path, validator):
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=dict(FAST, max_recipients="2000"), extra=sendgrid_conf(api, key))
    rcpts = [f"user{i:04d}@example.net" for i in range(1500)]
    data = (b"From: App <app@client.test>\r\nTo: user0000@example.net\r\nSubject: many\r\n\r\n"
            b"To many.\r\n")
    qid = submit(d, rcpts, data)
    wait_all(d, qid, "sent", timeout=60)
    reqs = by_postern_id(api, qid)
    assert sorted(len(r.sendgrid_rcpts()) for r in reqs) == [500, 1000]
    seen = [a for r in reqs for a in r.sendgrid_rcpts()]
    assert sorted(seen) == rcpts
    for r in reqs:
        assert not list(validator.iter_errors(r.json()))
        assert len(r.json()["personalizations"]) <= 1000


# ---------------------------------------------------------------------------------------------
# answer classes

def rcpt_is(addr):
    return lambda req: req.path == SEND and addr in req.sendgrid_rcpts()


def simple(rcpt, subject="t"):
    return (f"From: App <app@client.test>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\n"
            f"body\r\n").encode()


def test_sendgrid_429_defers_until_reset(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", api.key)
    reset = int(time.time()) + 4
    api.rule(rcpt_is("slow@example.net"),
             (429, {"X-RateLimit-Reset": reset, "X-RateLimit-Limit": 600},
              {"errors": [{"message": "too many requests"}]}),
             (202, {"X-Message-Id": "after-reset"}, b""))
    # retry_max above the reset: the reset is obeyed (past retry_max it is cut to retry_max)
    d = daemon_factory(postern=dict(FAST, retry_max="10s"), extra=sendgrid_conf(api, key))
    qid = submit(d, ["slow@example.net"], simple("slow@example.net"))
    e = wait_all(d, qid, "deferred")
    r = e["recipients"][0]
    assert r["last_reply"].startswith("451 4.7.0") and "429" in r["last_reply"], r
    assert abs(iso_ms(r["next_attempt"]) - reset) <= 1.5, (r["next_attempt"], reset)
    e = wait_all(d, qid, "sent", timeout=20)
    assert "after-reset" in e["recipients"][0]["last_reply"]
    reqs = by_postern_id(api, qid)
    assert len(reqs) == 2 and reqs[1].time >= reset - 0.5, [x.time for x in reqs]


def test_sendgrid_500_defers_then_sends(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", api.key)
    api.rule(rcpt_is("flaky@example.net"),
             (500, {}, {"errors": [{"message": "internal error"}]}),
             (202, {"X-Message-Id": "second-try"}, b""))
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["flaky@example.net"], simple("flaky@example.net"))
    e = wait_all(d, qid, "sent")
    r = e["recipients"][0]
    assert r["attempts"] == 2 and "second-try" in r["last_reply"], r
    assert "status=deferred" in d.log_text() and "internal error" in d.log_text()


@pytest.mark.parametrize("status", [404, 429, 501])
def test_sendgrid_odd_key_check_answer_lets_the_send_decide(daemon_factory, api, tmp_path, status):
    # a proxy or regional endpoint that answers GET /v3/scopes with something other than
    # 401/403 proves nothing about the key; it used to defer every message with "SendGrid
    # answered HTTP 501 to the key check"
    key = secret_file(tmp_path / "sg.key", api.key)
    api.rule(lambda r: r.path == "/v3/scopes", (status, {}, b"Not Implemented"))
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["odd@example.net"], simple("odd@example.net"))
    e = wait_all(d, qid, "sent")
    assert e["recipients"][0]["attempts"] == 1, e
    assert len(by_postern_id(api, qid)) == 1
    assert "to the key check" not in d.log_text()
    # 401 and 403 still hold the upstream's mail before anything is sent
    api.rule(lambda r: r.path == "/v3/scopes", (403, {}, {"errors": [{"message": "access forbidden"}]}))
    api.rules.insert(0, api.rules.pop())
    d2 = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d2, ["odd@example.net"], simple("odd@example.net"))
    wait_all(d2, qid, "held")
    assert not by_postern_id(api, qid)


def test_sendgrid_network_error_defers(daemon_factory, tmp_path):
    key = secret_file(tmp_path / "sg.key", "SG.k")
    conf = sendgrid_conf(f"http://127.0.0.1:{free_port()}", key)
    d = daemon_factory(postern=FAST, extra=conf)
    qid = submit(d, ["x@example.net"], simple("x@example.net"))
    e = wait_all(d, qid, "deferred")
    assert "cannot reach SendGrid" in e["recipients"][0]["last_reply"]


class BigAnswerServer:
    """An API on loopback that answers every POST with 202 and a body far larger than anyone
    keeps, and counts what it managed to send before the client went away."""
    TOTAL = 200 * 1024 * 1024

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sent = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            while m and len(body) < int(m.group(1)):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            if head.startswith(b"GET"):
                j = b'{"scopes": ["mail.send"]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(j), j))
                return
            conn.sendall(b"HTTP/1.1 202 Accepted\r\nX-Message-Id: capped\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % self.TOTAL)
            n, block = 0, b"x" * 65536
            try:
                while n < self.TOTAL:
                    conn.sendall(block)
                    n += len(block)
            except OSError:
                pass
            self.sent.append(n)

    def stop(self):
        self.sock.close()


def test_answer_past_the_cap_is_not_downloaded(daemon_factory, tmp_path):
    """An answer longer than the client keeps ends the transfer at the cap: its status still
    counts (the message is sent), and the other 200 MB are never read."""
    key = secret_file(tmp_path / "sg.key", "SG.cap-test-key")
    big = BigAnswerServer()
    try:
        d = daemon_factory(postern=FAST, extra=sendgrid_conf(big.url, key))
        qid = submit(d, ["cap@example.net"], simple("cap@example.net"))
        e = wait_all(d, qid, "sent")
        assert "X-Message-Id=capped" in e["recipients"][0]["last_reply"], e
        wait_for(lambda: big.sent, what="the server to see the client go")
        assert big.sent[0] < 32 * 1024 * 1024, f"the client read {big.sent[0]} bytes"
    finally:
        big.stop()


@pytest.mark.parametrize("status,code,text", [
    (400, "550 5.6.0", "The from address does not match a verified Sender Identity"),
    (413, "552 5.3.4", "Payload too large"),
])
def test_sendgrid_4xx_bounces_with_errors(daemon_factory, api, tmp_path, status, code, text):
    key = secret_file(tmp_path / "sg.key", api.key)
    api.rule(rcpt_is("bad@example.net"),
             (status, {}, {"errors": [{"field": "from", "message": text, "help": None}]}))
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["bad@example.net"], simple("bad@example.net"))
    e = wait_all(d, qid, "bounced")
    r = e["recipients"][0]
    assert r["last_reply"].startswith(code) and text in r["last_reply"], r
    assert text in d.log_text()
    # the DSN to the sender says why
    dsn = wait_for(lambda: [x for x in d.queue_list() if x["sender"] == ""], what="a DSN")
    assert text.encode() in d.queue_cat(dsn[0]["id"])


def test_sendgrid_401_holds_then_releases(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", "SG.wrong-key")
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["held@example.net"], simple("held@example.net"))
    e = wait_all(d, qid, "held")
    assert "invalid, expired, or revoked" in e["recipients"][0]["last_reply"], e
    assert "ALARM upstream sg" in d.log_text()
    assert not by_postern_id(api, qid) or all(True for _ in by_postern_id(api, qid))
    # the right key in the file: it goes out by itself, no reload
    secret_file(tmp_path / "sg.key", api.key)
    e = wait_all(d, qid, "sent", timeout=30)
    assert "X-Message-Id" in e["recipients"][0]["last_reply"]
    assert "SG.wrong-key" not in d.log_text() and api.key not in d.log_text()


def test_sendgrid_unsendable_bounces_before_sending(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    data = (b"From: App <app@client.test>\r\nTo: <f@example.net>\r\nSubject: bad name\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''evil%0Aname.txt\r\n\r\ndata\r\n--B--\r\n")
    qid = submit(d, ["f@example.net"], data)
    e = wait_all(d, qid, "bounced")
    assert "file name" in e["recipients"][0]["last_reply"], e
    assert not by_postern_id(api, qid)


def test_sendgrid_config_checks(tmp_path):
    import subprocess
    from conftest import POSTERN, render_config, need_binary
    need_binary(POSTERN)
    key = tmp_path / "k"
    key.write_text("SG.x\n")
    os.chmod(key, 0o644)
    conf = tmp_path / "p.conf"
    conf.write_text(render_config(2525, str(tmp_path / "data")) +
                    f"[upstream sg]\ntype = sendgrid\napi_key_file = {key}\n"
                    "api_url = http://api.sendgrid.example\nfallback = nowhere\n")
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "chmod 600" in err and "in clear" in err and "fallback = nowhere" in err, err


# ---------------------------------------------------------------------------------------------
# SES

def sigv4_check(req, key_id, secret, region, service="ses"):
    """Recomputes the SigV4 signature of a recorded request."""
    auth = req.headers.get("Authorization", "")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", auth)
    assert m, f"Authorization is not SigV4-shaped: {auth!r}"
    kid, day, reg, svc, signed, sig = m.groups()
    assert (kid, reg, svc) == (key_id, region, service)
    amzdate = req.headers.get("X-Amz-Date")
    assert amzdate and amzdate.startswith(day)
    path, _, query = req.path.partition("?")
    names = signed.split(";")
    assert "host" in names and "x-amz-date" in names
    canon_headers = "".join(f"{n}:{' '.join(req.headers.get(n, '').split())}\n" for n in names)
    canon_query = "&".join(sorted(query.split("&"))) if query else ""
    creq = "\n".join([req.method, urllib.parse.quote(path), canon_query, canon_headers, signed,
                      hashlib.sha256(req.body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    want = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    assert sig == want, "SigV4 signature does not verify"
    sigv4_botocore(req, key_id, secret, region, service)


def sigv4_botocore(req, key_id, secret, region, service):
    """The same signature made by an independent signer, AWS's own botocore, over the headers
    the request carried: a header that was signed but not sent (libcurl 7.88 signs an empty
    "Expect:" and drops it) makes the lists, and so the signatures, differ."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    m = re.search(r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
                  req.headers.get("Authorization", ""))
    signed, sig = m.groups()
    carried = {n: req.headers[n] for n in signed.split(";") if req.headers.get(n) is not None}
    r = AWSRequest(method=req.method, url=f"http://{req.headers['Host']}{req.path}",
                   data=req.body, headers=carried)
    r.context["timestamp"] = req.headers["X-Amz-Date"]
    auth = SigV4Auth(Credentials(key_id, secret), service, region)
    names = auth.signed_headers(auth.headers_to_sign(r))
    want = auth.signature(auth.string_to_sign(r, auth.canonical_request(r)), r)
    assert (signed, sig) == (names, want), \
        f"botocore does not verify the signature (signed {signed!r}, carried {sorted(carried)!r})"


def ses_conf(api, tmp_path, name="ses"):
    kid = secret_file(tmp_path / "aws.id", "AKIDEXAMPLE123")
    sec = secret_file(tmp_path / "aws.secret", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    return (f"[upstream {name}]\ntype = ses\nregion = eu-west-1\napi_url = {api.url}\n"
            f"access_key_id_file = {kid}\nsecret_access_key_file = {sec}\n\n"
            f"[route default]\nupstream = {name}\n")


def test_ses_signed_raw_byte_for_byte(daemon_factory, api, tmp_path):
    d = daemon_factory(postern=dict(FAST, max_recipients="200"), extra=ses_conf(api, tmp_path))
    cases = corpus()[:6]
    ids = [(submit(d, c["rcpts"], c["data"]), c) for c in cases]
    rcpts = [f"r{i:03d}@example.net" for i in range(120)]
    big = submit(d, rcpts, b"From: App <app@client.test>\r\nSubject: many\r\n\r\nx\r\n")
    for qid, c in ids + [(big, None)]:
        e = wait_all(d, qid, "sent")
        assert all("MessageId=ses-" in r["last_reply"] for r in e["recipients"]), e
        stored = d.queue_cat(qid)
        reqs = [r for r in api.posts(SES)
                if {"Name": "postern_id", "Value": qid} in r.json().get("EmailTags", [])]
        assert reqs, qid
        for r in reqs:
            body = r.json()
            assert base64.b64decode(body["Content"]["Raw"]["Data"]) == stored
            assert len(r.ses_rcpts()) <= 50
            sigv4_check(r, "AKIDEXAMPLE123", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1")
        got = sorted(a for r in reqs for a in r.ses_rcpts())
        want = sorted(c["rcpts"] if c else rcpts)
        assert got == want
        if c is None:
            assert sorted(len(r.ses_rcpts()) for r in reqs) == [20, 50, 50]
    assert "wJalrXUtnFEMI" not in d.log_text()


def test_ses_throttle_defers_and_403_holds(daemon_factory, api, tmp_path):
    api.rule(lambda r: r.path == SES and "slow@example.net" in r.ses_rcpts(),
             (429, {"x-amzn-ErrorType": "TooManyRequestsException:"}, {"message": "Maximum sending rate exceeded."}),
             (200, {}, {"MessageId": "later"}))
    api.rule(lambda r: r.path == SES and "deny@example.net" in r.ses_rcpts(),
             (403, {"x-amzn-ErrorType": "InvalidSignatureException:"},
              {"message": "The request signature we calculated does not match"}))
    api.rule(lambda r: r.path == SES and "reject@example.net" in r.ses_rcpts(),
             (400, {"x-amzn-ErrorType": "MessageRejected:"}, {"message": "Email address is not verified."}))
    d = daemon_factory(postern=FAST, extra=ses_conf(api, tmp_path))
    slow = submit(d, ["slow@example.net"], simple("slow@example.net"))
    e = wait_all(d, slow, "sent")
    assert e["recipients"][0]["attempts"] == 2 and "later" in e["recipients"][0]["last_reply"], \
        (e, d.log_tail(30))
    assert "Maximum sending rate" in d.log_text()
    rej = submit(d, ["reject@example.net"], simple("reject@example.net"))
    e = wait_all(d, rej, "bounced")
    assert "not verified" in e["recipients"][0]["last_reply"], e
    deny = submit(d, ["deny@example.net"], simple("deny@example.net"))
    e = wait_all(d, deny, "held")
    assert "signature" in e["recipients"][0]["last_reply"], e


# ---------------------------------------------------------------------------------------------
# failover

@pytest.mark.parametrize("answer", ["503", "401"])
def test_fallback_when_primary_down_or_holding(daemon_factory, tmp_path, answer):
    primary, spare = APIServer().start(), APIServer(key="SG.spare").start()
    try:
        if answer == "503":
            primary.rule(lambda r: r.path == SEND,
                         (503, {}, {"errors": [{"message": "service unavailable"}]}))
        else:
            primary.key = "SG.something-else"        # every request of ours is refused
        k1 = secret_file(tmp_path / "p.key", "SG.test-key")
        k2 = secret_file(tmp_path / "s.key", "SG.spare")
        conf = (f"[upstream primary]\ntype = sendgrid\napi_key_file = {k1}\napi_url = {primary.url}\n"
                f"fallback = spare\n\n"
                f"[upstream spare]\ntype = sendgrid\napi_key_file = {k2}\napi_url = {spare.url}\n\n"
                f"[route default]\nupstream = primary\n")
        d = daemon_factory(postern=FAST, extra=conf)
        qid = submit(d, ["fo@example.net"], simple("fo@example.net"))
        e = wait_all(d, qid, "sent")
        assert by_postern_id(spare, qid), "the fallback got nothing"
        assert e["recipients"][0]["upstream"] == "spare", e
        if answer == "503":
            assert by_postern_id(primary, qid), "the primary was not tried first"
        assert re.search(rf"{qid}: to=<fo@example.net>, upstream primary cannot take it now "
                         rf".*trying its fallback spare", d.log_text()), d.log_tail()
        if answer == "401":
            assert "ALARM upstream primary" in d.log_text()
    finally:
        primary.stop()
        spare.stop()


# ---------------------------------------------------------------------------------------------
# Microsoft Graph

def graph_posts(api):
    with api.lock:
        return [r for r in api.requests if r.method == "POST" and r.path.endswith("/sendMail")]


@pytest.mark.parametrize("tokens", ["oauth2", "token_file"])
def test_graph_sends_mime_with_bearer(daemon_factory, api, tmp_path, tokens):
    if tokens == "oauth2":
        sec = secret_file(tmp_path / "client.secret", "client-secret-value")
        auth = (f"oauth2 = tenant\n\n[oauth2 tenant]\nprovider = generic\nflow = client_credentials\n"
                f"client_id = 11111111-2222-3333-4444-555555555555\nclient_secret_file = {sec}\n"
                f"token_url = {api.url}/oauth2/token\nscope = https://graph.microsoft.com/.default\n")
    else:
        # a token kept fresh by something else: an [oauth2] section with only token_file
        tok = secret_file(tmp_path / "graph.token", api.graph_token)
        auth = f"oauth2 = static\n\n[oauth2 static]\ntoken_file = {tok}\n"
    conf = (f"[route default]\nupstream = graph\n\n"
            f"[upstream graph]\ntype = graph\napi_url = {api.url}\nusername = noreply@client.test\n"
            + auth)
    d = daemon_factory(postern=FAST, extra=conf)
    data = simple("pat@example.net")
    qid = submit(d, ["pat@example.net", "hidden@example.org"], data)
    e = wait_all(d, qid, "sent")
    assert all("Microsoft Graph" in r["last_reply"] for r in e["recipients"]), e
    reqs = graph_posts(api)
    assert len(reqs) == 1
    r = reqs[0]
    assert r.path == "/v1.0/users/noreply@client.test/sendMail"
    assert r.headers.get("Authorization") == f"Bearer {api.graph_token}"
    assert r.headers.get("Content-Type") == "text/plain"
    mime = base64.b64decode(r.body)
    stored = d.queue_cat(qid)
    # the message as queued, with the envelope-only recipient as a Bcc: field in front
    assert mime == b"Bcc: <hidden@example.org>\r\n" + stored
    assert api.graph_token not in d.log_text()


def test_graph_401_holds(daemon_factory, api, tmp_path):
    tok = secret_file(tmp_path / "graph.token", "stale-token")
    conf = (f"[upstream graph]\ntype = graph\napi_url = {api.url}\nusername = noreply@client.test\n"
            f"oauth2 = static\n\n[oauth2 static]\ntoken_file = {tok}\n\n"
            f"[route default]\nupstream = graph\n")
    d = daemon_factory(postern=FAST, extra=conf)
    qid = submit(d, ["pat@example.net"], simple("pat@example.net"))
    e = wait_all(d, qid, "held")
    assert "Access token is empty or invalid" in e["recipients"][0]["last_reply"]
    secret_file(tmp_path / "graph.token", api.graph_token)
    wait_all(d, qid, "sent")


def test_graph_429_defers_until_retry_after(daemon_factory, api, tmp_path):
    tok = secret_file(tmp_path / "graph.token", api.graph_token)
    # the body is base64 MIME: the rule looks for the To inside it
    api.rule(lambda r: r.path.endswith("/sendMail") and
             b"slowgraph@example.net" in base64.b64decode(r.body),
             (429, {"Retry-After": "3"}, {"error": {"code": "ApplicationThrottled", "message":
                                                    "Application is over its MailboxConcurrency limit."}}),
             (202, {}, b""))
    conf = (f"[upstream graph]\ntype = graph\napi_url = {api.url}\nusername = noreply@client.test\n"
            f"oauth2 = static\n\n[oauth2 static]\ntoken_file = {tok}\n\n"
            f"[route default]\nupstream = graph\n")
    # retry_max above Retry-After: it is obeyed (past retry_max it is cut to retry_max)
    d = daemon_factory(postern=dict(FAST, retry_max="10s"), extra=conf)
    t0 = time.time()
    qid = submit(d, ["slowgraph@example.net"], simple("slowgraph@example.net"))
    e = wait_all(d, qid, "deferred")
    r = e["recipients"][0]
    assert r["last_reply"].startswith("451 4.7.0") and "MailboxConcurrency" in r["last_reply"], r
    # not before Retry-After (3 s, counted in whole seconds), although retry_min is 1 s
    assert iso_ms(r["next_attempt"]) >= t0 + 1.9, (r["next_attempt"], t0)
    e = wait_all(d, qid, "sent", timeout=20)
    posts = graph_posts(api)
    assert len(posts) == 2 and posts[1].time - posts[0].time >= 1.9, [p.time for p in posts]


def test_ses_credentials_from_environment(daemon_factory, api, tmp_path, monkeypatch):
    """No *_file keys: the usual AWS environment variables, region included."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV456")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", register_secret("envSecretKeyEXAMPLE/abc+123"))
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    conf = (f"[upstream ses]\ntype = ses\napi_url = {api.url}\n\n"
            f"[route default]\nupstream = ses\n")
    d = daemon_factory(postern=FAST, extra=conf)
    qid = submit(d, ["env@example.net"], simple("env@example.net"))
    wait_all(d, qid, "sent")
    reqs = [r for r in api.posts(SES) if "env@example.net" in r.ses_rcpts()]
    assert len(reqs) == 1
    sigv4_check(reqs[0], "AKIDFROMENV456", "envSecretKeyEXAMPLE/abc+123", "ap-southeast-2")


# ---------------------------------------------------------------------------------------------
# posternctl ses smtp-password

def ses_smtp_password(secret, region):
    """AWS's published derivation, written here independently of Postern's C."""
    def sign(key, msg):
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()
    sig = sign(("AWS4" + secret).encode("utf-8"), "11111111")
    for part in (region, "ses", "aws4_request", "SendRawEmail"):
        sig = sign(sig, part)
    return base64.b64encode(bytes([0x04]) + sig).decode("ascii")


def ctl_ses(*args, stdin=b""):
    need_binary(POSTERNCTL)
    return subprocess.run([POSTERNCTL, "ses", "smtp-password", *args], input=stdin,
                          capture_output=True, timeout=30)


def test_ses_smtp_password(tmp_path):
    cases = [("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1"),
             ("je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY", "eu-west-1"),
             (secrets.token_urlsafe(30), "us-gov-west-1")]
    for secret, region in cases:
        want = ses_smtp_password(secret, region)
        for fed in (secret.encode() + b"\n", secret.encode() + b"\r\n", secret.encode()):
            p = ctl_ses("--region", region, stdin=fed)
            assert p.returncode == 0, p.stderr
            assert p.stdout.decode() == want + "\n", (region, p.stdout)
        assert secret.encode() not in p.stdout + p.stderr
    # from a 0600 file; a file others may read is refused
    kf = tmp_path / "aws.secret"
    kf.write_text(cases[1][0] + "\n")
    os.chmod(kf, 0o600)
    p = ctl_ses("--region", "eu-west-1", "--key-file", str(kf))
    assert p.returncode == 0 and p.stdout.decode().strip() == ses_smtp_password(*cases[1]), p
    os.chmod(kf, 0o644)
    p = ctl_ses("--region", "eu-west-1", "--key-file", str(kf))
    assert p.returncode != 0 and not p.stdout, p
    # never from an argument, and an argument is not echoed back
    p = ctl_ses("--region", "eu-west-1", "SECRETKEYINARGV")
    assert p.returncode == 64 and b"SECRETKEYINARGV" not in p.stdout + p.stderr, p
    # a region is required and must look like one; an empty key is refused
    assert ctl_ses(stdin=b"k\n").returncode == 64
    assert ctl_ses("--region", "eu west", stdin=b"k\n").returncode == 64
    assert ctl_ses("--region", "eu-west-1", stdin=b"\n").returncode == 65


# ---------------------------------------------------------------------------------------------
# the HTTP client: keep-alive, TLS always verified, HTTP/2 where offered

def test_sendgrid_keepalive_one_connection_per_worker(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=dict(FAST, delivery_workers="1"), extra=sendgrid_conf(api, key))
    qids = [submit(d, [f"k{i}@example.net"], simple(f"k{i}@example.net")) for i in range(6)]
    for q in qids:
        wait_all(d, q, "sent")
    assert len(api.posts(SEND)) == 6
    # the key check and six requests over the worker's one kept-alive connection
    assert api.connections == 1, api.connections


def test_sendgrid_https_verified_and_http2(daemon_factory, certs, tmp_path):
    """TLS is verified whatever the configuration says (a private CA needs ca_file), and
    HTTP/2 is used where the server offers it: nghttpd speaks nothing else."""
    nghttpd = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
    if not os.access(nghttpd, os.X_OK):
        pytest.fail("nghttpd is not installed (Debian package nghttp2-server, in TEST_PKGS)")
    docroot = tmp_path / "htdocs"
    (docroot / "v3").mkdir(parents=True)
    (docroot / "v3" / "scopes").write_text('{"scopes": ["mail.send"]}')
    (docroot / "v3" / "mail").mkdir()
    (docroot / "v3" / "mail" / "send").write_text("")
    port = free_port()
    crt, keyf = certs.good
    out = open(tmp_path / "nghttpd.log", "wb")
    srv = subprocess.Popen([nghttpd, "-a", "127.0.0.1", "-d", str(docroot), "--echo-upload",
                            "-v", str(port), keyf, crt], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and srv.poll() is None, "nghttpd did not start"
                time.sleep(0.05)
        key = secret_file(tmp_path / "sg.key", "SG.h2-key")
        conf = sendgrid_conf(f"https://localhost:{port}", key)
        d = daemon_factory(postern=FAST, extra=conf)
        qid = submit(d, ["h2@example.net"], simple("h2@example.net"))
        e = wait_all(d, qid, "deferred")
        assert "cannot reach SendGrid" in e["recipients"][0]["last_reply"], e
        assert re.search(r"certificate|SSL", e["recipients"][0]["last_reply"]), e
        log = (tmp_path / "nghttpd.log").read_bytes()
        assert b"/v3/mail/send" not in log        # nothing was sent over an unverified channel
        # the private CA named: verified, and over HTTP/2
        d.stop()
        d.write_config(postern=FAST, extra=sendgrid_conf(f"https://localhost:{port}", key,
                                                         extra=f"ca_file = {certs.ca}\n"))
        d.start()
        e = wait_all(d, qid, "sent", timeout=30)
        assert "accepted by SendGrid (HTTP 200)" in e["recipients"][0]["last_reply"], e
        log = (tmp_path / "nghttpd.log").read_bytes()
        assert b":path: /v3/mail/send" in log and b":method: POST" in log, log[-2000:]
        assert b"SG.h2-key" not in d.log_text().encode()
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        out.close()


def test_long_lines_go_unchanged_to_the_api_transports(daemon_factory, api, tmp_path, validator):
    # Lines over 998 octets are re-encoded only for SMTP upstreams: SendGrid gets the text as
    # it was written and SES the stored message byte for byte.
    html = "<html><body>" + "<p>Row of a template written on one line</p>" * 2500 + "</body></html>"
    assert len(html) > 100 * 1000
    raw = (f"From: App <{SENDER}>\r\nTo: long@example.net\r\nSubject: one long line\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           f"{html}\r\n").encode()
    key = secret_file(tmp_path / "sg.key", api.key)
    d = daemon_factory(postern=FAST, extra=sendgrid_conf(api, key))
    qid = submit(d, ["long@example.net"], raw)
    wait_all(d, qid, "sent")
    (req,) = by_postern_id(api, qid)
    body = req.json()
    assert not list(validator.iter_errors(body))
    got = [c["value"] for c in body["content"] if c["type"] == "text/html"][0]
    assert got.rstrip("\r\n") == html
    d.stop()

    d = daemon_factory(postern=FAST, extra=ses_conf(api, tmp_path))
    qid = submit(d, ["long@example.net"], raw)
    wait_all(d, qid, "sent")
    stored = d.queue_cat(qid)
    assert html.encode() + b"\r\n" in stored
    (req,) = [r for r in api.posts(SES)
              if {"Name": "postern_id", "Value": qid} in r.json().get("EmailTags", [])]
    assert base64.b64decode(req.json()["Content"]["Raw"]["Data"]) == stored


def test_notify_success_gets_a_relayed_report_from_an_api_transport(daemon_factory, api,
                                                                    upstreams, tmp_path):
    # an HTTP API reports nothing back by DSN: the sender who asked NOTIFY=SUCCESS hears from
    # Postern that the message was relayed (RFC 3461 6.2.2.3)
    from upstream import upstream_section
    key = secret_file(tmp_path / "sg.key", api.key)
    sink = upstreams()
    d = daemon_factory(postern=FAST, extra=(
        f"[upstream sg]\ntype = sendgrid\napi_key_file = {key}\napi_url = {api.url}\n" +
        upstream_section("sink", sink.port, host="127.0.0.1", tls="none") +
        "\n[route notices]\nrecipient = *@client.test\nupstream = sink\n"
        "\n[route default]\nupstream = sg\n"))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as s:
        s.ehlo("client.test")
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("pat@example.net", ["NOTIFY=SUCCESS"])[0] == 250
        code, resp = s.data(simple("pat@example.net"))
        assert code == 250, resp
    qid = re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()
    wait_all(d, qid, "sent")
    msgs = sink.wait_messages(1)
    text = msgs[0]["data"].decode("utf-8", "replace")
    assert msgs[0]["mail_from"] == "" and msgs[0]["rcpts"] == [SENDER]
    assert "Subject: Successful Mail Delivery Report" in text
    assert "Action: relayed" in text and "Status: 2.0.0" in text, text
    assert "Final-Recipient: rfc822; pat@example.net" in text
