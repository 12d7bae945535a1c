# Correspondence records end to end with real peers on loopback: Postern sends a message to an
# aiosmtpd sink upstream, replies come back through the MX listener (swaks/smtplib, SPF from a
# hermetic zone) and SendGrid Inbound Parse (curl, multipart/form-data), signed Event Webhook
# batches move the outbound record's status, a DSN bounces it, and a small HTTP server on
# loopback plays the application behind forward_url (answering 500 at first, checking the
# HMAC of every body).
import base64
import os
import hashlib
import hmac
import json
import signal
import smtplib
import urllib.parse
import urllib.request
import subprocess
import threading
import time
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import POSTERNCTL, SRCDIR, free_port
from test_inbound import CURL, ZONE, db_rows, make_key, post, secret, sign, twilio_sig, wait_http
from apiserver import APIServer
from upstream import Upstream

FORWARD_SECRET = "fw-secret-0123456789"
CSV = b"day,time\nTuesday,10:00\nTuesday,11:00\n"
FAST = {"retry_min": "1s", "retry_max": "2s", "debug": "yes"}


class App:
    """The application behind forward_url: answers 500 to the first `fail_first` requests
    (or while `failing` is set), 200 after; keeps every request."""

    def __init__(self, fail_first=0, answer=None):
        self.fail_first = fail_first
        self.failing = False
        self.answer = answer          # answer(record) -> a status for it, or None: the usual
        self.requests = []            # (status answered, headers dict, body bytes)
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with app.lock:
                    status = 500 if (len(app.requests) < app.fail_first or app.failing) else 200
                    if app.answer and status == 200:
                        status = app.answer(json.loads(body)) or 200
                    app.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/correspondence"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, event="record.created"):
        """Bodies of one X-Postern-Event (new records; status changes) answered 2xx, in the
        order they came."""
        with self.lock:
            return [json.loads(b) for s, h, b in self.requests
                    if s == 200 and h.get("X-Postern-Event") == event]

    def all(self):
        with self.lock:
            return list(self.requests)

    def wait_accepted(self, n, timeout=40, event="record.created"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted(event)
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"forward_url got {len(self.accepted(event))} {event} with a 2xx, "
                             f"expected {n}: {[(s, b[:200]) for s, h, b in self.all()]}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app():
    made = []

    def make(**kw):
        a = App(**kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


@pytest.fixture
def sink(tmp_path):
    up = Upstream(tmp_path / "sink", reject=("nobody@example.test",)).start()
    yield up
    up.stop()


@pytest.fixture
def spf_env(tmp_path, monkeypatch):
    zone = tmp_path / "spf.zone"
    zone.write_text(ZONE)
    monkeypatch.setenv("POSTERN_SPF_ZONE_FILE", str(zone))
    monkeypatch.setenv("POSTERN_SPF_TEST_CLIENT_IP", "192.0.2.10")


def corr_daemon(daemon_factory, tmp_path, sink, forward_url=None, name=None, upstream=None,
                inbound_extra=""):
    mx, http = free_port(), free_port()
    priv, pub = make_key(tmp_path)
    fw = secret(tmp_path, "forward.secret", FORWARD_SECRET)
    upstream = upstream or (f"[upstream sink]\ntype = smtp\nhost = 127.0.0.1\nport = {sink.port}\n"
                            "tls = none\nhelo = relay.test.example\n")
    extra = (f"\n[listener mx]\naddress = 127.0.0.1:{mx}\nrole = mx\n\n{upstream}\n"
             "[route default]\nupstream = sink\n\n"
             "[inbound]\ndomains = reply.test\nspf = tag\n"
             f"http_address = 127.0.0.1:{http}\nevent_public_key_file = {pub}\n"
             "http_auth = none\n"
             "reply_address = reply+{token}@reply.test\n"
             f"twilio_auth_token_file = {secret(tmp_path, 'twilio.token', 'tw-token-123')}\n"
             "public_url = https://relay.test.example/hooks/\n")
    if forward_url:
        extra += f"forward_url = {forward_url}\nforward_secret_file = {fw}\n"
    extra += inbound_extra
    d = daemon_factory(FAST, extra, name=name)
    d.mx_port, d.http, d.event_key, d.extra_conf = mx, f"http://127.0.0.1:{http}", priv, extra
    wait_http(d)
    return d


def records(d, *args):
    return json.loads(d.ctl("correspondence", "list", "--json", *args).stdout)


def record(d, rid):
    p = d.ctl("correspondence", "show", rid, "--json", check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


def wait_record(d, rid, pred=lambda r: True, timeout=30, what="record"):
    deadline = time.monotonic() + timeout
    r = None
    while time.monotonic() < deadline:
        r = record(d, rid)
        if r is not None and pred(r):
            return r
        time.sleep(0.2)
    raise AssertionError(f"{what} {rid} not as expected: {r}\n{d.log_tail()}")


def wait_records(d, n, timeout=30):
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        got = records(d)
        if len(got) >= n:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{len(got)} record(s), expected {n}: {got}\n{d.log_tail()}")


def send_out(d, subject="Appointment reminder", to="pat@example.test"):
    msg = (f"From: Clinic <app@clinic.test>\r\nTo: Pat <{to}>\r\nSubject: {subject}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "Your appointment is on Tuesday at 10:00.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="app.test", timeout=15) as s:
        s.ehlo()
        assert s.mail("app@clinic.test")[0] == 250
        assert s.rcpt(to)[0] == 250
        code, text = s.data(msg)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def header(raw, name):
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    for line in head.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


def mx_send(d, sender, rcpt, content):
    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=15) as s:
        s.sendmail(sender, [rcpt], content)


def sg_events(d, events):
    body = json.dumps(events).encode()
    ts = str(int(time.time()))
    code, _, text = post(d.http + "/events", body, {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": sign(d.event_key, ts, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": ts})
    assert code == 200, text


def parse_post(d, email, to):
    env = json.dumps({"to": [to], "from": "pat@example.test"})
    p = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                        "--form-string", f"envelope={env}", "--form-string", f"to={to}",
                        "--form-string", "from=Pat <pat@example.test>",
                        "--form-string", f"email={email}", d.http + "/emailInbound"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b"200", (p.stdout, p.stderr)


def readme_verifier():
    """The receiver's check of X-Postern-Signature exactly as README.md shows it."""
    with open(os.path.join(SRCDIR, "README.md"), encoding="utf-8") as f:
        text = f.read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "def postern_verified(" in code
    scope = {}
    exec(code, scope)
    return scope["postern_verified"]


def php_verified(tmp_path, header, body):
    """README.md's PHP check of X-Postern-Signature, run by php on one request."""
    with open(os.path.join(SRCDIR, "README.md"), encoding="utf-8") as f:
        code = f.read().split("```php\n", 1)[1].split("```", 1)[0]
    script, data = tmp_path / "verify.php", tmp_path / "body.json"
    script.write_text("<?php\n" + code + "\necho postern_verified($argv[1], $argv[2], "
                      "file_get_contents($argv[3])) ? 'ok' : 'bad';\n")
    data.write_bytes(body)
    p = subprocess.run(["php", str(script), FORWARD_SECRET, header, str(data)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout == b"ok"


def hmac_ok(headers, body):
    return readme_verifier()(FORWARD_SECRET.encode(), headers.get("X-Postern-Signature", ""), body)


def sent_message(sink, n):
    raw = sink.wait_messages(n)[n - 1]["data"]
    return raw, header(raw, "Message-ID").strip("<>"), header(raw, "Reply-To").strip("<>")


# ---------------------------------------------------------------------------------------------

def test_end_to_end(daemon_factory, tmp_path, sink, spf_env, app):
    fwd = app(fail_first=2)
    d = corr_daemon(daemon_factory, tmp_path, sink, fwd.url)
    qid = send_out(d)
    raw, msgid, reply_to = sent_message(sink, 1)
    # Postern's Message-ID and a per-message Reply-To went out with it
    assert msgid and msgid.endswith("@relay.test.example"), raw[:600]
    assert reply_to.startswith("reply+") and reply_to.endswith("@reply.test"), raw[:600]
    out = wait_record(d, qid, lambda r: r["status"] == "sent", what="outbound record")
    assert out["direction"] == "out" and out["source"] == "submission"
    assert out["message_id"] == msgid and out["thread_id"] == qid and out["parent_id"] is None
    assert out["envelope_from"] == "app@clinic.test" and out["envelope_to"] == ["pat@example.test"]
    assert out["subject"] == "Appointment reminder"
    assert [e["event"] for e in out["events"]] == ["sent"]

    # a reply through the MX listener, threaded by In-Reply-To
    mx_reply = (f"From: Pat <pat@pass.test>\r\nTo: <{reply_to}>\r\nSubject: Re: Appointment reminder\r\n"
                f"Message-ID: {make_msgid(domain='pass.test')}\r\nIn-Reply-To: <{msgid}>\r\n"
                f"References: <{msgid}>\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed; boundary=\"m1\"\r\n\r\n"
                "--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                "Yes, Tuesday works.\r\n\r\nOn Mon, Clinic wrote:\r\n> Your appointment is on Tuesday.\r\n"
                "--m1\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=slots.csv\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(CSV).decode() + "\r\n"
                "--m1--\r\n")
    mx_send(d, "pat@pass.test", reply_to, mx_reply.encode())
    # another through Inbound Parse (raw mode), threaded by References only
    parse_reply = (f"From: Pat <pat@example.test>\r\nTo: {reply_to}\r\nSubject: Re: Appointment reminder\r\n"
                   f"Message-ID: <parse-1@example.test>\r\nReferences: <other@example.test> <{msgid}>\r\n"
                   "Content-Type: text/plain; charset=utf-8\r\n\r\nCan we make it 11:00 instead?\r\n")
    parse_post(d, parse_reply, reply_to)
    recs = wait_records(d, 3)
    ins = [r for r in recs if r["direction"] == "in"]
    assert [r["source"] for r in ins] == ["mx", "inbound-parse"], recs
    for r in ins:
        assert r["parent_id"] == qid and r["thread_id"] == qid, r
    assert ins[0]["spf"] == "pass" and ins[0]["envelope_from"] == "pat@pass.test"
    assert ins[0]["in_reply_to"] == msgid
    assert "Yes, Tuesday works." in ins[0]["text"]
    assert ins[0]["reply_text"].strip() == "Yes, Tuesday works."
    (att,) = ins[0]["attachments"]
    assert att["filename"] == "slots.csv" and att["sha256"] == hashlib.sha256(CSV).hexdigest()
    stored = db_rows(d, "SELECT sha256, size, data FROM attachments")
    assert [(r["sha256"], r["data"]) for r in stored] == [(att["sha256"], CSV)]

    # signed SendGrid events: delivered, then open
    now = int(time.time())
    sg_events(d, [{"email": "pat@example.test", "event": "delivered", "sg_event_id": "ev-delivered",
                   "sg_message_id": "sgid1.filter0001", "timestamp": now, "postern_id": qid}])
    wait_record(d, qid, lambda r: r["status"] == "delivered", what="delivered record")
    sg_events(d, [{"email": "pat@example.test", "event": "open", "sg_event_id": "ev-open",
                   "sg_message_id": "sgid1.filter0001", "timestamp": now + 5, "postern_id": qid}])
    out = wait_record(d, qid, lambda r: r["status"] == "opened", what="opened record")
    assert [e["event"] for e in out["events"]] == ["sent", "delivered", "open"], out["events"]
    # a replayed batch changes nothing
    sg_events(d, [{"email": "pat@example.test", "event": "delivered", "sg_event_id": "ev-delivered",
                   "sg_message_id": "sgid1.filter0001", "timestamp": now, "postern_id": qid}])
    time.sleep(1)
    out = record(d, qid)
    assert out["status"] == "opened" and len(out["events"]) == 3

    # forward_url: 500 twice, then every record once, in record order, each signed
    got = fwd.wait_accepted(3)
    time.sleep(1.5)
    reqs = fwd.all()
    assert [s for s, h, b in reqs[:2]] == [500, 500]
    assert [r["id"] for r in fwd.accepted()] == [qid, ins[0]["id"], ins[1]["id"]], reqs
    assert json.loads(reqs[0][2])["id"] == qid     # the head waits: order is kept
    for s, h, b in reqs:
        assert hmac_ok(h, b), h
        assert h.get("Content-Type") == "application/json"
    assert got[1]["parent_id"] == qid and got[2]["thread_id"] == qid

    # the filters
    assert {r["id"] for r in records(d, "--thread", qid)} == {qid, ins[0]["id"], ins[1]["id"]}
    assert [r["id"] for r in records(d, "--address", "PAT@pass.test")] == [ins[0]["id"]]
    assert {r["id"] for r in records(d, "--address", "pat@example.test")} == {qid, ins[1]["id"]}
    assert records(d, "--address", "nobody@example.test") == []
    text = d.ctl("correspondence", "list").stdout.decode()
    assert qid in text and "status=opened" in text


def test_reply_token_only_and_dsn(daemon_factory, tmp_path, sink, spf_env):
    d = corr_daemon(daemon_factory, tmp_path, sink)
    q1 = send_out(d, "First")
    q2 = send_out(d, "Second", to="gone@example.test")
    sink.wait_messages(2)
    msgs = {header(m["data"], "Subject"): m["data"] for m in sink.received()}
    tok1 = header(msgs["First"], "Reply-To").strip("<>")
    id2 = header(msgs["Second"], "Message-ID").strip("<>")
    wait_record(d, q2, lambda r: r["status"] == "sent")

    # a reply whose client dropped In-Reply-To and References: the token still links it
    mx_send(d, "pat@pass.test", tok1, (f"From: pat@pass.test\r\nTo: {tok1}\r\nSubject: ok\r\n\r\n"
                                       "Fine by me.\r\n").encode())
    # a DSN for the second message
    dsn = ("From: Mail Delivery System <MAILER-DAEMON@pass.test>\r\nTo: app@clinic.test\r\n"
           "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n"
           "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
           "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.pass.test\r\n\r\n"
           "Final-Recipient: rfc822; gone@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
           f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{id2}>\r\nSubject: Second\r\n\r\n"
           "--b1--\r\n")
    mx_send(d, "", "bounces@reply.test", dsn.encode())
    recs = wait_records(d, 4)
    by_subject = {r["subject"]: r for r in recs}
    assert by_subject["ok"]["parent_id"] == q1 and by_subject["ok"]["thread_id"] == q1
    assert by_subject["Undelivered Mail Returned to Sender"]["parent_id"] == q2
    out2 = wait_record(d, q2, lambda r: r["status"] == "bounced", what="bounced record")
    b = [e for e in out2["events"] if e["event"] == "bounced"]
    assert b and b[0]["recipient"] == "gone@example.test", out2["events"]
    assert record(d, q1)["status"] == "sent"
    # an SMS becomes a record of its own
    params = {"MessageSid": "SM0123456789", "From": "+14158675309", "To": "+18005551212",
              "Body": "Running 10 minutes late", "NumMedia": "0"}
    code, _, _ = post(d.http + "/sms", urllib.parse.urlencode(params).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_sig("tw-token-123", "https://relay.test.example/hooks/sms", params)})
    assert code == 200
    sms = [r for r in wait_records(d, 5) if r["source"] == "sms"]
    assert len(sms) == 1 and sms[0]["text"] == "Running 10 minutes late", sms
    assert sms[0]["from"]["address"] == "+14158675309" and sms[0]["envelope_to"] == ["+18005551212"]
    assert [r["id"] for r in records(d, "--address", "+14158675309")] == [sms[0]["id"]]
    # a recipient the upstream refuses: the relay's bounce is the record's status
    q3 = send_out(d, "Third", to="nobody@example.test")
    out3 = wait_record(d, q3, lambda r: r["status"] == "bounced", what="relay-bounced record")
    assert out3["events"][0]["event"] == "bounced" and out3["events"][0]["detail"]["reply"].startswith("550")
    # the DSN the relay sent to the application is not correspondence of its own
    time.sleep(1)
    assert not [r for r in records(d) if r["source"] == "submission" and r["id"] not in (q1, q2, q3)]
    # show without --json, and an unknown id
    assert b"Fine by me." in d.ctl("correspondence", "show", by_subject["ok"]["id"]).stdout
    assert d.ctl("correspondence", "show", "ABCDEF123456", check=False).returncode == 1


def test_forward_restart_exactly_once(daemon_factory, tmp_path, sink, spf_env, app):
    fwd = app()
    d = corr_daemon(daemon_factory, tmp_path, sink, fwd.url)
    q1 = send_out(d, "One")
    fwd.wait_accepted(1)
    # the application goes down; two more records wait in the forward queue
    fwd.failing = True
    q2 = send_out(d, "Two")
    q3 = send_out(d, "Three")
    deadline = time.monotonic() + 30
    while len(fwd.all()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    d.kill()
    assert [r["id"] for r in fwd.accepted()] == [q1]
    # back up, and a fresh daemon on the same store carries on where it stopped
    fwd.failing = False
    d.start()
    got = fwd.wait_accepted(3)
    time.sleep(2)
    assert [r["id"] for r in fwd.accepted()] == [q1, q2, q3]
    for s, h, b in fwd.all():
        assert hmac_ok(h, b)


def test_forward_sets_aside_a_refused_record(daemon_factory, tmp_path, sink, spf_env, app):
    # one record the application always refuses (422) no longer blocks the ones behind it:
    # after forward_max_attempts refusals it is set aside, listed, counted and sent again by
    # hand; answers that say the application is away (503) do not count towards that
    away = [4]

    def answer(rec):
        if rec.get("subject") != "Poison":
            return None
        if away[0] > 0:
            away[0] -= 1
            return 503
        return 422 if refusing[0] else None
    refusing = [True]
    fwd = app(answer=answer)
    d = corr_daemon(daemon_factory, tmp_path, sink, fwd.url,
                    inbound_extra="forward_max_attempts = 3\n")
    poison = send_out(d, "Poison")
    fine = send_out(d, "Fine")
    got = fwd.wait_accepted(1, timeout=60)
    assert got[0]["id"] == fine
    statuses = [s for s, h, b in fwd.all() if json.loads(b)["id"] == poison]
    assert statuses == [503, 503, 503, 503, 422, 422, 422], statuses
    assert f"{poison}: forward set aside after 7 attempts (HTTP 422)" in d.log_text()
    listed = json.loads(d.ctl("correspondence", "forward", "list", "--json").stdout)
    assert [(e["id"], e["attempts"], e["last_error"]) for e in listed] == \
        [(poison, 7, "HTTP 422")], listed
    assert poison in d.ctl("correspondence", "forward", "list").stdout.decode()
    with urllib.request.urlopen(d.http + "/metrics", timeout=10) as r:
        assert "postern_forward_set_aside_total 1\n" in r.read().decode()

    # the application is fixed: retry by id sends it once; it is no longer set aside after
    refusing[0] = False
    p = d.ctl("correspondence", "forward", "retry", poison)
    assert b"1 record(s) back in the forward queue" in p.stdout
    fwd.wait_accepted(2)
    assert [r["id"] for r in fwd.accepted()] == [fine, poison]
    p = d.ctl("correspondence", "forward", "retry", poison, check=False)
    assert p.returncode == 1 and b"is not set aside" in p.stderr
    assert b"0 record(s)" in d.ctl("correspondence", "forward", "retry", "--all").stdout
    assert json.loads(d.ctl("correspondence", "forward", "list", "--json").stdout) == []


def test_sendgrid_events_by_x_message_id(daemon_factory, tmp_path, spf_env):
    # through the SendGrid transport: the request carries the queue id in custom_args and
    # the per-message Reply-To; an event that only has sg_message_id (the 202's X-Message-Id
    # plus SendGrid's suffix) still finds the record
    api = APIServer().start()
    try:
        key = secret(tmp_path, "sg.key", api.key)
        d = corr_daemon(daemon_factory, tmp_path, None, upstream=(
            f"[upstream sink]\ntype = sendgrid\napi_key_file = {key}\napi_url = {api.url}\n"))
        qid = send_out(d)
        deadline = time.monotonic() + 30
        while not api.posts("/v3/mail/send") and time.monotonic() < deadline:
            time.sleep(0.1)
        (req,) = api.posts("/v3/mail/send")
        body = req.json()
        assert body["custom_args"] == {"postern_id": qid}
        assert body["reply_to"]["email"].startswith("reply+"), body.get("reply_to")
        out = wait_record(d, qid, lambda r: r["status"] == "sent")
        assert "X-Message-Id=sgmsg" in out["events"][0]["detail"]["reply"]
        xid = out["events"][0]["detail"]["reply"].split("X-Message-Id=")[1].split()[0]
        sg_events(d, [{"email": "pat@example.test", "event": "bounce", "sg_event_id": "ev-b",
                       "sg_message_id": f"{xid}.filterdrecv-1.0", "timestamp": int(time.time()),
                       "reason": "550 5.1.1 unknown user"}])
        out = wait_record(d, qid, lambda r: r["status"] == "bounced")
        assert out["events"][-1]["event"] == "bounce"
        assert out["events"][-1]["detail"]["reason"] == "550 5.1.1 unknown user"
        # an event for mail Postern never sent is kept in inbound_events, applied to nothing
        sg_events(d, [{"email": "x@example.test", "event": "delivered", "sg_event_id": "ev-x",
                       "sg_message_id": "unknown.filter", "timestamp": int(time.time())}])
        time.sleep(1)
        assert len(record(d, qid)["events"]) == 2
    finally:
        api.stop()


def test_reload_starts_forwarding(daemon_factory, tmp_path, sink, spf_env, app):
    fwd = app()
    d = corr_daemon(daemon_factory, tmp_path, sink)
    q1 = send_out(d, "Before")
    wait_record(d, q1)
    d.write_config(FAST, d.extra_conf + f"forward_url = {fwd.url}\n"
                   f"forward_secret_file = {tmp_path / 'forward.secret'}\n")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload -- configuration" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    # (a reply through Inbound Parse: the HTTP listener follows reloads)
    parse_post(d, "From: pat@example.test\r\nTo: someone@reply.test\r\nSubject: After\r\n\r\nhi\r\n",
               "someone@reply.test")
    got = fwd.wait_accepted(1)
    time.sleep(1)
    # records made from now on are forwarded; the one made before was never owed
    assert len(fwd.accepted()) == 1 and got[0]["subject"] == "After" and got[0]["id"] != q1
    assert hmac_ok(fwd.all()[0][1], fwd.all()[0][2])


def test_forward_needs_secret(tmp_path):
    from conftest import POSTERN, render_config
    conf = tmp_path / "p.conf"
    conf.write_text(render_config(free_port(), str(tmp_path / "data")) +
                    "\n[inbound]\nforward_url = http://127.0.0.1:9/x\n"
                    "reply_address = reply@reply.test\n")
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True)
    assert p.returncode == 1
    assert b"forward_url needs forward_secret_file" in p.stderr
    assert b"reply_address must be an address with one {token}" in p.stderr


def test_event_timestamp_out_of_range(daemon_factory, tmp_path, sink, spf_env):
    # SendGrid's timestamp is whatever integer the batch carries: one past year 9999 (or past
    # what milliseconds hold in 64 bits) is no time; the event is applied at its arrival
    # instead of overflowing (undefined behaviour) or giving an "at" no RFC 3339 reader takes
    from datetime import datetime, timezone
    d = corr_daemon(daemon_factory, tmp_path, sink)
    qid = send_out(d)
    wait_record(d, qid, lambda r: r["status"] == "sent")
    before = time.time()
    sg_events(d, [{"email": "pat@example.test", "event": "delivered", "sg_event_id": "ev-huge",
                   "timestamp": 2**63 - 1, "postern_id": qid},
                  {"email": "pat@example.test", "event": "open", "sg_event_id": "ev-far",
                   "timestamp": 10**15, "postern_id": qid}])
    out = wait_record(d, qid, lambda r: r["status"] == "opened", what="opened record")
    got = {e["event"]: e["at"] for e in out["events"]}
    for name in ("delivered", "open"):
        at = datetime.strptime(got[name], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert before - 60 <= at.timestamp() <= time.time() + 60, (name, got)


def test_overlong_attachment_type_still_recorded(daemon_factory, tmp_path, sink, spf_env):
    # anyone may send to the MX: an attachment whose Content-Type no buffer of the parser holds
    # must not leave its message unrecorded (tried again every poll, forever)
    d = corr_daemon(daemon_factory, tmp_path, sink)
    msg = ("From: pat@pass.test\r\nTo: someone@reply.test\r\nSubject: long type\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           "--b\r\nContent-Type: application/" + "x" * 300 + "\r\n"
           "Content-Disposition: attachment; filename=a.bin\r\n\r\ndata\r\n--b--\r\n")
    mx_send(d, "pat@pass.test", "someone@reply.test", msg.encode())
    (rec,) = wait_records(d, 1, timeout=20)
    assert rec["subject"] == "long type" and rec["attachments"][0]["filename"] == "a.bin"
    assert "cannot make its correspondence record" not in d.log_text()


def test_show_escapes_event_names(daemon_factory, tmp_path, sink, spf_env):
    # an event's name is the webhook's text: `correspondence show` writes it to a terminal,
    # so control bytes (here a title-setting escape sequence) are shown escaped, never raw
    d = corr_daemon(daemon_factory, tmp_path, sink)
    qid = send_out(d)
    wait_record(d, qid, lambda r: r["status"] == "sent", what="outbound record")
    sg_events(d, [{"email": "pat@example.test", "event": "odd\x1b]2;owned\x07", "sg_event_id": "ev-odd",
                   "sg_message_id": "sgid9.filter0001", "timestamp": int(time.time()), "postern_id": qid}])
    wait_record(d, qid, lambda r: len(r["events"]) == 2, what="record with the odd event")
    out = d.ctl("correspondence", "show", qid).stdout
    assert b"odd" in out, out
    assert b"\x1b" not in out and b"\x07" not in out, out


def test_record_text_max(daemon_factory, tmp_path, sink, spf_env):
    # a long message through the MX: its record keeps record_text_max bytes of text and says
    # so; the raw message stays whole in the store
    d = corr_daemon(daemon_factory, tmp_path, sink, inbound_extra="record_text_max = 64K\n")
    body = "Caf\u00e9 au lait, line after line of a long letter.\r\n" * 8000
    msg = ("From: pat@pass.test\r\nTo: someone@reply.test\r\nSubject: long letter\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()
    mx_send(d, "pat@pass.test", "someone@reply.test", msg)
    (rec,) = wait_records(d, 1, timeout=20)
    assert 64 * 1024 - 3 <= len(rec["text"].encode()) <= 64 * 1024
    assert body.replace("\r\n", "\n").startswith(rec["text"])
    assert rec["truncated"] == ["text"]
    (raw,) = json.loads(d.ctl("inbound", "list", "--json").stdout)
    assert raw["size"] >= len(msg)


def test_list_prints_utf8_and_envelope(daemon_factory, tmp_path, sink, spf_env):
    # the human list on a UTF-8 locale prints names and subjects as UTF-8, escaping only
    # control characters; on another locale every non-ASCII byte is escaped. The envelope
    # recipient is shown, and To: beside it where it names someone else.
    d = corr_daemon(daemon_factory, tmp_path, sink)
    mx_send(d, "zoe@pass.test", "someone@reply.test",
            b"From: =?utf-8?q?Zo=C3=AB?= <zoe@pass.test>\r\nTo: Clinic list <list@clinic.test>\r\n"
            b"Subject: =?utf-8?q?Rendez-vous_confirm=C3=A9_=1B]2;owned=07_=E2=80=AEtxt.exe?=\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nMerci\r\n")
    mx_send(d, "pat@pass.test", "desk@reply.test",
            b"From: Pat <pat@pass.test>\r\nTo: Desk <DESK@reply.test>\r\nSubject: same\r\n\r\nhi\r\n")
    wait_records(d, 2)

    def listing(locale):
        env = dict(os.environ, LC_ALL=locale)
        p = subprocess.run([POSTERNCTL, "-c", d.conf, "correspondence", "list"], env=env,
                           capture_output=True, timeout=60, check=True)
        return p.stdout

    out = listing("C.UTF-8")
    line = [l for l in out.split(b"\n") if b"Rendez-vous" in l][0]
    assert "Zo\u00eb <zoe@pass.test> -> someone@reply.test (To: Clinic list <list@clinic.test>)".encode() in line, line
    assert "Rendez-vous confirm\u00e9 \\x1b]2;owned\\x07 \\u{202e}txt.exe".encode() in line, line
    assert b"\x1b" not in out and b"\x07" not in out and "\u202e".encode() not in out
    same = [l for l in out.split(b"\n") if b"same" in l][0]
    assert b"-> desk@reply.test  thread=" in same, same       # To: is the envelope's: not repeated
    out = listing("C")
    assert b"Zo\\xc3\\xab <zoe@pass.test>" in out and b"confirm\\xc3\\xa9" in out, out
    assert all(b < 0x80 for b in out)


def test_status_changes_forwarded_across_restart(daemon_factory, tmp_path, sink, spf_env, app):
    # the application hears of every status change, not only of new records: the relay's
    # "sent", a signed SendGrid "delivered" and a DSN arriving at the MX listener each POST
    # record.status once, in order, with the move and the event that made it, through a
    # restart while the application is down; each request's signature covers its timestamp
    fwd = app()
    d = corr_daemon(daemon_factory, tmp_path, sink, fwd.url)
    qid = send_out(d, "Status")
    raw, msgid, _ = sent_message(sink, 1)
    moves = fwd.wait_accepted(1, event="record.status")
    assert moves[0]["id"] == qid and (moves[0]["old_status"], moves[0]["status"]) == ("queued", "sent")
    assert moves[0]["event"]["event"] == "sent" and moves[0]["event"]["recipient"] == "pat@example.test"

    fwd.failing = True
    sg_events(d, [{"email": "pat@example.test", "event": "delivered", "sg_event_id": "ev-del-1",
                   "sg_message_id": "sgid1.filter0001", "timestamp": int(time.time()),
                   "postern_id": qid}])
    wait_record(d, qid, lambda r: r["status"] == "delivered", what="delivered record")
    dsn = ("From: Mail Delivery System <MAILER-DAEMON@pass.test>\r\nTo: app@clinic.test\r\n"
           "Subject: Delivery Status Notification (Failure)\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n"
           "--b1\r\nContent-Type: text/plain\r\n\r\nThe mailbox was closed.\r\n"
           "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.pass.test\r\n\r\n"
           "Final-Recipient: rfc822; pat@example.test\r\nAction: failed\r\nStatus: 5.2.1\r\n"
           "Diagnostic-Code: smtp; 550 5.2.1 mailbox disabled\r\n\r\n"
           f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{msgid}>\r\n\r\n"
           "--b1--\r\n")
    mx_send(d, "", "bounces@reply.test", dsn.encode())
    wait_record(d, qid, lambda r: r["status"] == "bounced", what="bounced record")
    deadline = time.monotonic() + 20
    while len(fwd.all()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    d.kill()
    fwd.failing = False
    d.start()
    fwd.wait_accepted(3, event="record.status")
    fwd.wait_accepted(2)                   # the outbound record and the DSN's own
    time.sleep(2)

    moves = fwd.accepted("record.status")
    assert [(m["id"], m["old_status"], m["status"], m["event"]["event"]) for m in moves] == [
        (qid, "queued", "sent", "sent"), (qid, "sent", "delivered", "delivered"),
        (qid, "delivered", "bounced", "bounced")], moves
    assert moves[2]["event"]["detail"]["status"] == "5.2.1"
    assert moves[1]["event"]["detail"]["sg_event_id"] == "ev-del-1"
    created = fwd.accepted()
    assert [r["id"] for r in created][0] == qid and created[1]["dsn"]["recipients"][0]["action"] == "failed"
    # each request once it was answered 2xx, and the application's view in queue order
    ok = [(h["X-Postern-Event"], b) for s, h, b in fwd.all() if s == 200]
    assert len(ok) == len(set(ok)) == 5
    for s, h, b in fwd.all():
        assert hmac_ok(h, b), h
        t = int(h["X-Postern-Signature"].split(",")[0][2:])
        assert abs(time.time() - t) < 120
        assert h["X-Postern-Record"] == json.loads(b)["id"]
    # a captured request presented again an hour later, or with another timestamp, is refused
    # by the documented check
    s, h, b = fwd.all()[0]
    verified = readme_verifier()
    assert not verified(FORWARD_SECRET.encode(), h["X-Postern-Signature"], b, now=time.time() + 3600)
    moved = "t=%d,%s" % (int(time.time()), h["X-Postern-Signature"].split(",", 1)[1])
    assert moved == h["X-Postern-Signature"] or not verified(FORWARD_SECRET.encode(), moved, b)
    assert not verified(FORWARD_SECRET.encode(), h["X-Postern-Signature"], b + b" ")
    # and the PHP one
    assert php_verified(tmp_path, h["X-Postern-Signature"], b)
    assert not php_verified(tmp_path, h["X-Postern-Signature"], b + b" ")
    assert not php_verified(tmp_path, moved.replace("v1=", "v1=0"), b)


def test_inbound_parse_repeat_is_one_record(daemon_factory, tmp_path, sink, spf_env):
    # SendGrid posts a message again when our 200 did not reach it: the same Message-ID and
    # content within dedupe_window makes no second record (the post itself is kept raw); the
    # same Message-ID with other content, or the same content under another id, is new
    d = corr_daemon(daemon_factory, tmp_path, sink)
    email = ("From: pat@example.test\r\nTo: someone@reply.test\r\nMessage-ID: <dup-1@example.test>\r\n"
             "Subject: Twice\r\n\r\nPosted twice.\r\n")
    parse_post(d, email, "someone@reply.test")
    (first,) = wait_records(d, 1)
    parse_post(d, email, "someone@reply.test")
    parse_post(d, email.replace("Posted twice.", "Changed."), "someone@reply.test")
    parse_post(d, email.replace("dup-1@", "dup-2@"), "someone@reply.test")
    deadline = time.monotonic() + 20
    while len(json.loads(d.ctl("inbound", "list", "--json").stdout)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    recs = wait_records(d, 3)
    time.sleep(1.5)
    recs = records(d)
    assert [(r["message_id"], r["text"]) for r in recs] == [
        ("dup-1@example.test", "Posted twice.\n"), ("dup-1@example.test", "Changed.\n"),
        ("dup-2@example.test", "Posted twice.\n")], recs
    assert recs[0]["id"] == first["id"]
    assert f"the same Message-ID and content as record {first['id']}" in d.log_text()
    assert len(json.loads(d.ctl("inbound", "list", "--json").stdout)) == 4


def test_inbound_parse_repeat_window_off(daemon_factory, tmp_path, sink, spf_env):
    d = corr_daemon(daemon_factory, tmp_path, sink, inbound_extra="dedupe_window = 0\n")
    email = ("From: pat@example.test\r\nTo: someone@reply.test\r\nMessage-ID: <dup-1@example.test>\r\n"
             "Subject: Twice\r\n\r\nPosted twice.\r\n")
    parse_post(d, email, "someone@reply.test")
    parse_post(d, email, "someone@reply.test")
    assert len(wait_records(d, 2)) == 2


def test_inbound_parse_repeat_parsed_mode(daemon_factory, tmp_path, sink, spf_env):
    # parsed mode (no raw "email" field): a repeat is the same header section, text and html,
    # whatever boundary curl picks each time
    d = corr_daemon(daemon_factory, tmp_path, sink)

    def post_parsed(text):
        fields = {"headers": "Message-ID: <parsed-1@example.test>\nFrom: pat@example.test\n"
                             "To: someone@reply.test\nSubject: Parsed\n",
                  "from": "pat@example.test", "to": "someone@reply.test", "subject": "Parsed",
                  "text": text, "html": f"<p>{text}</p>",
                  "envelope": json.dumps({"to": ["someone@reply.test"], "from": "pat@example.test"})}
        args = [CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"]
        for k, v in fields.items():
            args += ["--form-string", f"{k}={v}"]
        p = subprocess.run(args + [d.http + "/emailInbound"], capture_output=True, timeout=60)
        assert p.returncode == 0 and p.stdout == b"200", (p.stdout, p.stderr)

    post_parsed("Once.")
    wait_records(d, 1)
    post_parsed("Once.")
    post_parsed("Other words.")
    wait_records(d, 2)
    time.sleep(1.5)
    assert [r["text"] for r in records(d)] == ["Once.", "Other words."]
    assert "a repeated post, no new record" in d.log_text()


def test_dsn_moves_only_outbound_records(daemon_factory, tmp_path, sink, spf_env, app):
    # anyone can reach the MX listener: a message of one's own followed by a "DSN" naming its
    # Message-ID must not give that inbound record a status, nor tell the application of one
    fwd = app()
    d = corr_daemon(daemon_factory, tmp_path, sink, fwd.url)
    mx_send(d, "eve@pass.test", "bounces@reply.test",
            b"From: eve@pass.test\r\nTo: app@clinic.test\r\nSubject: hello\r\n"
            b"Message-ID: <eve-1@pass.test>\r\n\r\nhi\r\n")
    first = fwd.wait_accepted(1)[0]
    assert first["message_id"] == "eve-1@pass.test" and first["status"] is None
    dsn = ("From: Mail Delivery System <MAILER-DAEMON@pass.test>\r\nTo: app@clinic.test\r\n"
           "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n"
           "--b1\r\nContent-Type: text/plain\r\n\r\nNo.\r\n"
           "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.pass.test\r\n\r\n"
           "Final-Recipient: rfc822; app@clinic.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
           "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <eve-1@pass.test>\r\n\r\n"
           "--b1--\r\n")
    mx_send(d, "", "bounces@reply.test", dsn.encode())
    fwd.wait_accepted(2)                    # the DSN's own record
    time.sleep(2)
    assert record(d, first["id"])["status"] is None
    assert not [e for e in record(d, first["id"])["events"] if e["event"] == "bounced"]
    assert fwd.accepted("record.status") == []


def _dsn(msgid, blocks):
    return ("From: Mail Delivery System <MAILER-DAEMON@pass.test>\r\nTo: app@clinic.test\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain\r\n\r\nNo.\r\n"
            "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.pass.test\r\n\r\n"
            + "".join(b + "Action: failed\r\nStatus: 5.1.1\r\n\r\n" for b in blocks) +
            f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{msgid}>\r\n\r\n"
            "--b1--\r\n").encode()


def test_dsn_applies_only_to_recipients_of_the_record(daemon_factory, tmp_path, sink, spf_env):
    # Every recipient knows the Message-ID of what it received: a "DSN" naming a stranger must
    # not bounce the record; a real bounce for an alias comes back with our ORCPT and does.
    d = corr_daemon(daemon_factory, tmp_path, sink)
    q1 = send_out(d, "First", to="pat@example.test")
    q2 = send_out(d, "Second", to="sam@example.test")
    sink.wait_messages(2)
    ids = {header(m["data"], "Subject"): header(m["data"], "Message-ID").strip("<>")
           for m in sink.received()}
    wait_record(d, q1, lambda r: r["status"] == "sent")
    wait_record(d, q2, lambda r: r["status"] == "sent")
    mx_send(d, "", "bounces@reply.test",
            _dsn(ids["First"], ["Final-Recipient: rfc822; stranger@elsewhere.test\r\n"]))
    mx_send(d, "", "bounces@reply.test",
            _dsn(ids["Second"], ["Original-Recipient: rfc822;sam@example.test\r\n"
                                 "Final-Recipient: rfc822; samuel@mailbox.example.test\r\n"]))
    wait_record(d, q2, lambda r: r["status"] == "bounced", what="the aliased bounce applied")
    wait_records(d, 4)                      # both DSNs made their own records
    time.sleep(1)
    r1 = record(d, q1)
    assert r1["status"] == "sent", r1
    assert not [e for e in r1["events"] if e["event"] == "bounced"], r1["events"]
    assert "names no recipient of record " + q1 in d.log_text()
