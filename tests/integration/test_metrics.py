# GET /metrics on the HTTP listener, read with the Prometheus client library's own text-format
# parser (Debian's python3-prometheus-client): the exposition parses, and its counters move as
# real traffic flows: messages through the submission listener to a capture route and to an
# aiosmtpd upstream that accepts some recipients and refuses others (4xx, 5xx), TLS handshakes
# that fail on both sides, a failed AUTH at the listener and a refused login upstream, an
# OAuth2 token from a loopback token endpoint, Inbound Parse and signed Event Webhook posts.
# The queue gauges are compared with posternctl's view.
import base64
import json
import os
import smtplib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import POSTERNCTL, need_binary, secret_file
from test_oauth2 import CLIENT_ID, CLIENT_SECRET, USER, oauth2_conf, tokens  # noqa: F401
from upstream import free_port

SENDER = "app@client.test"
PASSWORD = "alice-Passw0rd"
HTTP_USER = "prom"
HTTP_PASSWORD = "scrape-S3cret"


def metrics_daemon(daemon_factory, tmp_path, upstream_port, extra="", users=(), routes=""):
    http_port = free_port()
    pw = secret_file(tmp_path / "http.secret", HTTP_PASSWORD)
    conf = (f"\n[upstream up]\ntype = smtp\nhost = 127.0.0.1\nport = {upstream_port}\n"
            "tls = none\nhelo = relay.test.example\n\n" + routes +
            "[route captured]\nrecipient = *@capture.test\nupstream = capture\n\n"
            "[route default]\nupstream = up\n\n"
            f"[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{http_port}\n"
            f"http_user = {HTTP_USER}\nhttp_password_file = {pw}\n" + extra)
    d = daemon_factory(postern={"retry_min": "1s", "retry_max": "2s"}, extra=conf,
                       start=not users)
    if users:
        need_binary(POSTERNCTL)
        for name, password in users:
            p = subprocess.run([POSTERNCTL, "-c", d.conf, "user", "add", name],
                               input=(password + "\n").encode(), capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
        d.start()
    d.http = f"http://127.0.0.1:{http_port}"
    return d


def http_get(url, auth=(HTTP_USER, HTTP_PASSWORD), timeout=30):
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def post(url, body, headers, timeout=30):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def scrape(d, timeout=20):
    """{(sample name, frozenset(labels)): value} of one scrape, plus the families by name."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            code, ctype, body = http_get(d.http + "/metrics")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert code == 200, body
    assert ctype == "text/plain; version=0.0.4; charset=utf-8", ctype
    text = body.decode("utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_metric(d, pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(d)
        if pred(samples):
            return samples
        if time.monotonic() > deadline:
            interesting = {k: v for k, v in samples.items() if v}
            raise AssertionError(f"timed out waiting for {what}; non-zero samples: {interesting}"
                                 f"\n{d.log_tail(40)}")
        time.sleep(0.2)


def submit(port, rcpts, tag):
    content = (f"From: {SENDER}\r\nTo: x@example.net\r\nSubject: {tag}\r\n"
               f"Message-ID: <{tag}@client.test>\r\n\r\nbody of {tag}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail(SENDER)
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, resp
        code, resp = s.data(content)
        assert code == 250, resp


def queue_counts(d):
    counts = {"queued": 0, "deferred": 0, "held": 0}
    for e in d.queue_list():
        for r in e["recipients"]:
            if r["status"] in counts:
                counts[r["status"]] += 1
    return counts


def test_metrics_format_and_access(daemon_factory, tmp_path, upstreams):
    up = upstreams()
    d = metrics_daemon(daemon_factory, tmp_path, up.port)
    # the credentials of the webhooks: Prometheus sends them with basic_auth
    code, _, _ = http_get(d.http + "/metrics", auth=None)
    assert code == 401
    code, _, _ = http_get(d.http + "/metrics", auth=(HTTP_USER, "wrong"))
    assert code == 401
    assert post(d.http + "/metrics", b"x", {"Authorization": "Basic " + base64.b64encode(
        f"{HTTP_USER}:{HTTP_PASSWORD}".encode()).decode()}) == 405
    samples, families = scrape(d)
    types = {n: f.type for n, f in families.items()}
    # the parser strips _total from counter family names
    for name, typ in (("postern_messages_accepted", "counter"),
                      ("postern_recipients", "counter"),
                      ("postern_tls_handshake_failures", "counter"),
                      ("postern_auth_failures", "counter"),
                      ("postern_inbound_messages", "counter"),
                      ("postern_webhook_requests", "counter"),
                      ("postern_delivery_duration_seconds", "histogram"),
                      ("postern_queue_recipients", "gauge"),
                      ("postern_queue_oldest_age_seconds", "gauge"),
                      ("postern_oauth2_token_expiry_seconds", "gauge")):
        assert types.get(name) == typ, (name, types.get(name))
        assert families[name].documentation, name
    # every configured name is there from the start, at zero
    assert (("postern_messages_accepted_total", frozenset({("listener", "submission")}))
            in samples)
    for up_name in ("up", "capture"):
        for result in ("sent", "deferred", "bounced", "held", "captured"):
            assert val(samples, "postern_recipients_total", upstream=up_name, result=result) == 0
        assert val(samples, "postern_delivery_duration_seconds_count", upstream=up_name) == 0
    assert val(samples, "postern_queue_recipients", state="queued") == 0
    # the refused scrapes above were counted
    assert val(samples, "postern_webhook_requests_total", path="/metrics", code="401") == 2
    assert val(samples, "postern_webhook_requests_total", path="/metrics", code="405") == 1
    # /healthz stays open
    code, _, body = http_get(d.http + "/healthz", auth=None)
    assert (code, body) == (200, b"ok\n")


def test_counters_move_as_mail_flows(daemon_factory, tmp_path, upstreams):
    up = upstreams(reject={"bad@example.net"}, defer={"later@example.net"})
    d = metrics_daemon(daemon_factory, tmp_path, up.port)
    before, _ = scrape(d)
    t0 = time.time()
    submit(d.port, ["ok@example.net", "bad@example.net", "later@example.net"], "mixed")
    submit(d.port, ["someone@capture.test"], "captured")

    def moved(s):
        return (val(s, "postern_recipients_total", upstream="up", result="sent") >= 1 and
                val(s, "postern_recipients_total", upstream="up", result="bounced") >= 1 and
                val(s, "postern_recipients_total", upstream="up", result="deferred") >= 1 and
                val(s, "postern_recipients_total", upstream="capture", result="captured") >= 1)
    s = wait_metric(d, moved, "sent, bounced, deferred and captured results")
    assert (val(s, "postern_messages_accepted_total", listener="submission") -
            val(before, "postern_messages_accepted_total", listener="submission")) == 2
    # the upstream really saw what the counters say
    assert any("ok@example.net" in m["rcpts"] for m in up.messages)
    # latency: at least one attempt per upstream, buckets cumulative up to +Inf == _count
    for name in ("up", "capture"):
        count = val(s, "postern_delivery_duration_seconds_count", upstream=name)
        assert count >= 1, name
        assert val(s, "postern_delivery_duration_seconds_bucket", upstream=name, le="+Inf") == count
        les = sorted((float(dict(k[1])["le"]), v) for k, v in s.items()
                     if k[0] == "postern_delivery_duration_seconds_bucket" and
                     dict(k[1]).get("upstream") == name)
        assert [v for _, v in les] == sorted(v for _, v in les), les
        assert val(s, "postern_delivery_duration_seconds_sum", upstream=name) < count * 120

    # the queue gauges agree with posternctl: later@ stays deferred (and the DSN to the sender
    # of bad@ goes out), so wait for a quiet queue and compare
    def agree(samples):
        want = queue_counts(d)
        got = {st: val(samples, "postern_queue_recipients", state=st) for st in want}
        agree.last = (want, got)
        return want == got and want["deferred"] == 1 and want["queued"] == 0
    try:
        s = wait_metric(d, agree, "queue gauges matching posternctl queue list --json")
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast: {agree.last}")
    age = val(s, "postern_queue_oldest_age_seconds")
    assert 0 <= age <= time.time() - t0 + 2, age


def test_tls_and_auth_failures(daemon_factory, tmp_path, upstreams, certs):
    os.chmod(certs.good[1], 0o600)       # a listener's key must be private
    bad_tls = upstreams(tls="implicit", cert=certs.wrongname)
    locked = upstreams(users={"app": "the-right-one"}, auth_require_tls=False, mechs=("CRAM-MD5",))
    ok = upstreams()
    wrong_pw = secret_file(tmp_path / "locked.secret", "a-wrong-Password")
    tls_port = free_port()
    routes = (f"[upstream wrongname]\ntype = smtp\nhost = localhost\nport = {bad_tls.port}\n"
              f"tls = implicit\nverify = peer\nca_file = {certs.ca}\nhelo = relay.test.example\n\n"
              f"[upstream locked]\ntype = smtp\nhost = 127.0.0.1\nport = {locked.port}\n"
              "tls = none\nauth = cram-md5\nusername = app\n"
              f"password_file = {wrong_pw}\nhelo = relay.test.example\n\n"
              "[route wrongname]\nrecipient = *@wrongname.test\nupstream = wrongname\n\n"
              "[route locked]\nrecipient = *@locked.test\nupstream = locked\n\n")
    listener = (f"\n[listener tls]\naddress = 127.0.0.1:{tls_port}\nrole = submission\n"
                f"tls = implicit\ntls_cert = {certs.good[0]}\ntls_key = {certs.good[1]}\n")
    d = metrics_daemon(daemon_factory, tmp_path, ok.port, users=(("alice", PASSWORD),),
                       routes=routes, extra=listener)
    before, _ = scrape(d)

    def delta(s, name, **labels):
        return val(s, name, **labels) - val(before, name, **labels)

    # to an upstream whose certificate names another host
    submit(d.port, ["x@wrongname.test"], "tls")
    # the failure is counted at the handshake, the deferral once the store has it
    wait_metric(d, lambda s: delta(s, "postern_tls_handshake_failures_total", side="upstream")
                >= 1 and val(s, "postern_recipients_total", upstream="wrongname",
                             result="deferred") >= 1,
                "an upstream TLS handshake failure and the recipient deferred")
    assert bad_tls.messages == []
    # plaintext to our implicit-TLS listener
    with socket.create_connection(("127.0.0.1", tls_port), timeout=15) as c:
        c.sendall(b"EHLO not-tls.example\r\n")
        c.settimeout(15)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
    s = wait_metric(d, lambda s: delta(s, "postern_tls_handshake_failures_total", side="listener")
                    == 1, "a listener TLS handshake failure")
    # an upstream that refuses our login: held, counted as an upstream AUTH failure
    submit(d.port, ["y@locked.test"], "locked")
    s = wait_metric(d, lambda s: delta(s, "postern_auth_failures_total", side="upstream") >= 1 and
                    val(s, "postern_recipients_total", upstream="locked", result="held") >= 1,
                    "an upstream AUTH failure holding the mail")
    assert locked.messages == []
    s = wait_metric(d, lambda s: val(s, "postern_queue_recipients", state="held") ==
                    queue_counts(d)["held"] == 1, "the held gauge matching posternctl")

    # one wrong password at the listener (smtplib's login() would try every mechanism)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as c:
        c.ehlo("client.test")
        assert "PLAIN" in c.esmtp_features.get("auth", "")
        code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0not-the-password").decode())
        assert code == 535
    s, _ = scrape(d)
    assert (val(s, "postern_auth_failures_total", side="listener") -
            val(before, "postern_auth_failures_total", side="listener")) == 1
    # a good login is not a failure
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as c:
        c.ehlo("client.test")
        c.login("alice", PASSWORD)
    s, _ = scrape(d)
    assert (val(s, "postern_auth_failures_total", side="listener") -
            val(before, "postern_auth_failures_total", side="listener")) == 1
    log = d.log_text()
    assert PASSWORD not in log and "not-the-password" not in log and "a-wrong-Password" not in log


def test_inbound_and_webhook_counters(daemon_factory, tmp_path, upstreams):
    up = upstreams()
    priv, pub = tmp_path / "ec.pem", tmp_path / "ec.pub.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                    str(priv)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(priv), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True)
    d = metrics_daemon(daemon_factory, tmp_path, up.port,
                       extra=f"event_public_key_file = {pub}\nevent_max_age = 10m\n")
    before, _ = scrape(d)
    # an Inbound Parse post (raw mode), with the webhook credentials, then one without
    auth = ["-u", f"{HTTP_USER}:{HTTP_PASSWORD}"]
    form = ["--form-string", "email=From: pat@example.test\r\nTo: r@reply.test\r\n"
            "Subject: hi\r\n\r\nhello\r\n", "--form-string",
            "envelope=" + json.dumps({"to": ["r@reply.test"], "from": "pat@example.test"})]
    for creds, want in ((auth, "200"), ([], "401")):
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                            "30", *creds, *form, d.http + "/emailInbound"],
                           capture_output=True, timeout=60)
        assert p.stdout.decode() == want, (p.stdout, p.stderr)
    # a signed Event Webhook batch
    ts = str(int(time.time()))
    body = json.dumps([{"email": "pat@example.test", "event": "delivered", "sg_event_id": "e1",
                        "sg_message_id": "m1.filter", "timestamp": 1700000000}]).encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(priv)],
                         input=ts.encode() + body, capture_output=True, check=True).stdout
    hdr = {"Content-Type": "application/json",
           "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
           "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    assert post(d.http + "/events", body, hdr) == 200
    assert post(d.http + "/events", body.replace(b"e1", b"e2"), hdr) == 403   # tampered
    code, _, _ = http_get(d.http + "/nowhere")
    assert code == 404

    s, _ = scrape(d)

    def delta(name, **labels):
        return val(s, name, **labels) - val(before, name, **labels)
    assert delta("postern_inbound_messages_total", source="inbound-parse") == 1
    assert delta("postern_inbound_messages_total", source="mx") == 0
    assert delta("postern_webhook_requests_total", path="/emailInbound", code="200") == 1
    assert delta("postern_webhook_requests_total", path="/emailInbound", code="401") == 1
    assert delta("postern_webhook_requests_total", path="/events", code="200") == 1
    assert delta("postern_webhook_requests_total", path="/events", code="403") == 1
    assert delta("postern_webhook_requests_total", path="other", code="404") == 1
    # the scrape before this one was counted too
    assert delta("postern_webhook_requests_total", path="/metrics", code="200") >= 1


def test_oauth2_token_expiry_gauge(daemon_factory, tmp_path, upstreams, certs, tokens):
    ts = tokens(clients={CLIENT_ID: CLIENT_SECRET}, lifetime=3600)
    up = upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid)
    secret = secret_file(tmp_path / "client.secret", CLIENT_SECRET)
    http_port = free_port()
    pw = secret_file(tmp_path / "http.secret", HTTP_PASSWORD)
    conf = (f"\n[upstream o365]\ntype = smtp\nhost = localhost\nport = {up.port}\n"
            f"tls = starttls\nca_file = {certs.ca}\nauth = xoauth2\nusername = {USER}\n"
            "oauth2 = idp\nhelo = relay.test.example\n\n"
            "[route default]\nupstream = o365\n\n" + oauth2_conf(ts, "client_credentials",
                                                                secret=secret) +
            f"\n[inbound]\nhttp_address = 127.0.0.1:{http_port}\n"
            f"http_user = {HTTP_USER}\nhttp_password_file = {pw}\n")
    d = daemon_factory(postern={"retry_min": "1s", "retry_max": "2s"}, extra=conf)
    d.http = f"http://127.0.0.1:{http_port}"
    # the token may be fetched at start already (client_credentials); the message makes sure
    _, families = scrape(d)
    assert families["postern_oauth2_token_expiry_seconds"].type == "gauge"
    submit(d.port, ["someone@example.net"], "oauth2")
    s = wait_metric(d, lambda s: (("postern_oauth2_token_expiry_seconds",
                                   frozenset({("identity", "idp")})) in s),
                    "the expiry of the idp token")
    left = val(s, "postern_oauth2_token_expiry_seconds", identity="idp")
    assert 3000 < left <= 3600, left
    wait_metric(d, lambda s: val(s, "postern_recipients_total", upstream="o365", result="sent")
                >= 1, "the message sent with that token")
    assert up.received() and up.received()[0]["auth"] == USER
