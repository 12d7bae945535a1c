# The HTTP listener faces the internet (SendGrid and Twilio post to it): who may post is decided
# from the headers before any of the body is read, bodies are capped per endpoint, and a
# configuration that would leave the webhooks open says so explicitly or does not start.
import base64
import json
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest

from conftest import POSTERN, free_port, render_config
from test_inbound import (CURL, batch, db_rows, events, http_daemon, inbound, make_key, post,
                          raw_email, secret, sign, twilio_sig, wait_http, ENVELOPE)

USER, PASSWORD = "sendgrid", "s3cret-Hook"
PUBLIC = "https://relay.test.example/hooks/"


def check_config(tmp_path, inbound_settings):
    conf = tmp_path / "p.conf"
    conf.write_text(render_config(free_port(), str(tmp_path / "data")) +
                    f"\n[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{free_port()}\n"
                    + inbound_settings)
    return subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, text=True)


def test_webhooks_without_credentials_fail_the_check(tmp_path):
    p = check_config(tmp_path, "")
    assert p.returncode == 1
    # the message names the fix
    assert "http_address needs http_user and http_password_file" in p.stderr, p.stderr
    assert "http_auth = none" in p.stderr
    # a user without the password file is no better
    p = check_config(tmp_path, "http_user = sendgrid\n")
    assert p.returncode == 1 and "http_user needs http_password_file" in p.stderr
    # credentials, or open on purpose: accepted
    pw = secret(tmp_path, "pw", PASSWORD)
    assert check_config(tmp_path, f"http_user = {USER}\nhttp_password_file = {pw}\n").returncode == 0
    p = check_config(tmp_path, "http_auth = none\n")
    assert p.returncode == 0, p.stderr
    # both at once contradict each other
    p = check_config(tmp_path, f"http_auth = none\nhttp_user = {USER}\nhttp_password_file = {pw}\n")
    assert p.returncode == 1 and "contradict" in p.stderr
    p = check_config(tmp_path, "http_auth = maybe\n")
    assert p.returncode == 1


def raw_request(port, head, body=b"", wait=5.0):
    """Sends the request head (and body, if any) and returns what the server answers within
    wait seconds, reading until it closes or the answer is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                headers, rest = data.split(b"\r\n\r\n", 1)
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and \
                            len(rest) >= int(line.split(b":")[1]):
                        return data
        return data


def status(answer):
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def head(path, length, extra=b"", method=b"POST"):
    return (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra +
            b"Content-Length: " + str(length).encode() + b"\r\n\r\n")


@pytest.fixture
def guarded(daemon_factory, tmp_path):
    """A listener with every credential: basic auth, the event key, the Twilio token."""
    priv, pub = make_key(tmp_path)
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    tok = secret(tmp_path, "twilio.token", "tw-token-123")
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\n"
                    f"event_public_key_file = {pub}\nevent_max_age = 10m\n"
                    f"twilio_auth_token_file = {tok}\npublic_url = {PUBLIC}\n")
    d.http_port = int(d.http.rsplit(":", 1)[1])
    d.priv = priv
    return d


def auth_header(user, password):
    return b"Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


def test_refused_before_the_body_is_read(guarded):
    """The answer comes from the headers alone: the client has sent none of its (declared 20 MB)
    body, and a client asking Expect: 100-continue is never told to send it."""
    d = guarded
    big = 20 * 1024 * 1024
    ts = str(int(time.time()))
    cases = [
        (b"/emailInbound", b"Content-Type: multipart/form-data; boundary=x\r\n", 401),
        (b"/emailInbound", auth_header(USER, "wrong"), 401),
        (b"/events", b"Content-Type: application/json\r\n", 403),          # no signature
        (b"/events", b"X-Twilio-Email-Event-Webhook-Signature: AAAA\r\n"
                     b"X-Twilio-Email-Event-Webhook-Timestamp: 1000\r\n", 403),   # stale
        (b"/events", b"X-Twilio-Email-Event-Webhook-Signature: !!\r\n"
                     b"X-Twilio-Email-Event-Webhook-Timestamp: " + ts.encode() + b"\r\n", 403),
        (b"/sms", b"Content-Type: application/x-www-form-urlencoded\r\n", 403),   # no signature
    ]
    for path, extra, want in cases:
        for expect in (b"", b"Expect: 100-continue\r\n"):
            answer = raw_request(d.http_port, head(path, big, extra + expect))
            assert status(answer) == want, (path, extra, answer[:300])
            assert b"100 Continue" not in answer
    # /metrics needs the credentials too; /healthz stays open
    answer = raw_request(d.http_port, head(b"/metrics", 0, method=b"GET"))
    assert status(answer) == 401
    answer = raw_request(d.http_port, head(b"/metrics", 0, auth_header(USER, PASSWORD), b"GET"))
    assert status(answer) == 200 and b"postern_webhook_requests_total" in answer
    assert status(raw_request(d.http_port, head(b"/healthz", 0, method=b"GET"))) == 200
    assert inbound(d) == [] and events(d) == []


def test_body_caps_per_endpoint(guarded):
    """/sms 64 KiB, /events 1 MiB, /emailInbound max_message_size plus the form's overhead: a
    declared length beyond the cap gets 413 from the headers, a chunked one is cut."""
    d = guarded
    ts = str(int(time.time()))
    sig = b"X-Twilio-Email-Event-Webhook-Signature: " + sign(d.priv, ts, b"[]").encode() + \
        b"\r\nX-Twilio-Email-Event-Webhook-Timestamp: " + ts.encode() + b"\r\n"
    sms = b"X-Twilio-Signature: RSOYDt4T1cUTdK1PDd93/VVr8B8=\r\n"
    for path, extra, cap in ((b"/sms", sms, 64 * 1024), (b"/events", sig, 1024 * 1024),
                             (b"/emailInbound", auth_header(USER, PASSWORD),
                              35 * 1024 * 1024 + 1024 * 1024)):
        answer = raw_request(d.http_port, head(path, cap + 1, extra))
        assert status(answer) == 413, (path, answer[:300])
    # within the cap the same request is read (and judged on its content)
    answer = raw_request(d.http_port, head(b"/sms", 5, sms), b"a=b&c")
    assert status(answer) == 403          # the signature does not match
    # chunked past the cap: 413, nothing stored
    body = urllib.parse.urlencode({"Body": "x" * (70 * 1024)}).encode()
    params = {"Body": "x" * (70 * 1024)}
    p = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", "Transfer-Encoding: chunked",
                        "-H", "X-Twilio-Signature: " + twilio_sig("tw-token-123", PUBLIC + "sms", params),
                        "--data-binary", "@-", d.http + "/sms"],
                       input=body, capture_output=True, timeout=60)
    assert p.stdout == b"413", p
    assert inbound(d) == []
    # a chunked body without end is not read for ever: past the cap and 1M more, the
    # connection is closed (3M offered, and the end never sent: the old listener read on,
    # waiting for it)
    sent, chunk = 0, b"x" * 65536
    with socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as s:
        s.sendall(b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + sms + b"\r\n")
        try:
            while sent < 3 * 1024 * 1024:
                s.sendall(b"10000\r\n" + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
    assert inbound(d) == []


def test_email_inbound_cap_follows_max_message_size(daemon_factory, tmp_path):
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    port = free_port()
    d = daemon_factory(postern={"max_message_size": "100K"},
                       extra=f"\n[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{port}\n"
                             f"http_user = {USER}\nhttp_password_file = {pw}\n")
    d.http = f"http://127.0.0.1:{port}"
    wait_http(d)
    cap = 100 * 1024 + 1024 * 1024
    assert status(raw_request(port, head(b"/emailInbound", cap + 1, auth_header(USER, PASSWORD)))) == 413
    # a message at max_message_size, raw mode, fits
    email = raw_email() + "x" * (100 * 1024 - len(raw_email()) - 10)
    p = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{USER}:{PASSWORD}",
                        "--form-string", f"envelope={ENVELOPE}", "--form-string", f"email={email}",
                        d.http + "/emailInbound"], capture_output=True, timeout=60)
    assert p.stdout == b"200", p
    assert len(inbound(d)) == 1


def test_events_need_a_key_or_basic_auth_on_purpose(daemon_factory, tmp_path):
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    creds = f"http_user = {USER}\nhttp_password_file = {pw}\n"
    # no key: refused whatever the client sends, basic credentials included
    d = http_daemon(daemon_factory, tmp_path, creds)
    hdr = {"Content-Type": "application/json",
           "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    code, _, text = post(d.http + "/events", batch("ev-1"), hdr)
    assert code == 403 and b"event_public_key_file" in text
    assert events(d) == []
    d.stop_and_check()
    # events_auth = basic: the credentials, as for /emailInbound
    d = http_daemon(daemon_factory, tmp_path, creds + "events_auth = basic\n")
    code, _, _ = post(d.http + "/events", batch("ev-1"), {"Content-Type": "application/json"})
    assert code == 401
    code, _, _ = post(d.http + "/events", batch("ev-1"),
                      dict(hdr, Authorization="Basic " + base64.b64encode(b"sendgrid:nope").decode()))
    assert code == 401
    assert events(d) == []
    code, _, text = post(d.http + "/events", batch("ev-1"), hdr)
    assert code == 200, text
    assert [e["event_key"] for e in events(d)] == ["ev-1"]


def test_open_on_purpose(daemon_factory, tmp_path):
    """http_auth = none: what the file says, /emailInbound and /metrics answer anyone. Loopback
    (a proxy in front, local processes) is exempt from the per-client limits by default."""
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\nhttp_request_rate = 2\n")
    for _ in range(5):
        assert get_from("127.0.0.1", int(d.http.rsplit(":", 1)[1]), "/metrics")[0] == 200
    p = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "--form-string", f"envelope={ENVELOPE}", "--form-string", f"email={raw_email()}",
                        d.http + "/emailInbound"], capture_output=True, timeout=60)
    assert p.stdout == b"200"
    answer = raw_request(int(d.http.rsplit(":", 1)[1]), head(b"/metrics", 0, method=b"GET"))
    assert status(answer) == 200


def test_event_key_written_after_start(daemon_factory, tmp_path):
    """A first install: the daemon starts before `posternctl sendgrid setup` writes the key;
    /events answers 503 (SendGrid retries) and the log names the fix until a SIGHUP finds it."""
    priv, pub = make_key(tmp_path)
    later = tmp_path / "keys" / "sendgrid-event.pem"
    later.parent.mkdir()
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    settings = (f"http_user = {USER}\nhttp_password_file = {pw}\n"
                f"event_public_key_file = {later}\nevent_max_age = 10m\n")
    p = check_config(tmp_path, settings)
    assert p.returncode == 0, p.stderr
    assert "does not exist yet" in p.stderr and "posternctl sendgrid setup" in p.stderr
    d = http_daemon(daemon_factory, tmp_path, settings)

    def send(key):
        body = batch(key)
        ts = str(int(time.time()))
        return post(d.http + "/events", body, {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": sign(priv, ts, body),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts})

    code, _, text = send("ev-1")
    assert code == 503 and b"posternctl sendgrid setup" in text
    assert "event_public_key_file" in d.log_text() and "posternctl sendgrid setup" in d.log_text()
    # the file appears; without a reload nothing changes
    later.write_text(pub.read_text())
    assert send("ev-1")[0] == 503
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (code := send("ev-1")[0]) == 503:
        assert time.monotonic() < deadline, "key not picked up 10 s after SIGHUP"
        time.sleep(0.2)
    assert code == 200
    assert [e["event_key"] for e in events(d)] == ["ev-1"]
    # a key that is there but is no key still fails the check (and the start)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    p = check_config(tmp_path, f"http_auth = none\nevent_public_key_file = {bad}\n")
    assert p.returncode == 1 and "not an EC P-256 public key" in p.stderr


def get_from(src, port, path, auth=None):
    """GET path from the loopback address src; (status, headers)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(src, 0))
    hdr = {}
    if auth:
        hdr["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        c.request("GET", path, headers=hdr)
        r = c.getresponse()
        r.read()
        return r.status, r.headers
    finally:
        c.close()


def test_per_client_connections(daemon_factory, tmp_path):
    """Connections at once, requests a minute and wrong passwords are counted per client: the
    one over a limit is refused, another client is not. First, connections at once."""
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\n"
                    "http_clients_per_ip = 3\n"
                    "http_exempt_networks = 192.0.2.0/24\n")    # loopback is exempt by default
    port = int(d.http.rsplit(":", 1)[1])

    # three silent connections from 127.0.0.4: a fourth is closed at once, unanswered; another
    # client is served meanwhile
    idle = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.4", 0))
        s.connect(("127.0.0.1", port))
        idle.append(s)
    time.sleep(0.3)
    s = socket.socket()
    s.bind(("127.0.0.4", 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    s.close()
    assert get_from("127.0.0.5", port, "/healthz")[0] == 200
    for s in idle:
        s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            if get_from("127.0.0.4", port, "/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "connections not given back after they closed"
        time.sleep(0.2)
    assert "127.0.0.4 has 3 connections open (http_clients_per_ip" in d.log_text()


def test_per_client_request_rate_and_lockout(daemon_factory, tmp_path):
    # no limit on connections at once here: a client's closed connection is counted until the
    # listener's thread notices, and these requests follow each other closely
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\n"
                    "http_clients_per_ip = 0\nhttp_request_rate = 10\n"
                    "http_auth_failures = 3\nhttp_auth_lockout = 3s\n"
                    "http_exempt_networks = 192.0.2.0/24\n")
    port = int(d.http.rsplit(":", 1)[1])
    good, wrong = (USER, PASSWORD), (USER, "guess")

    # requests a minute: the eleventh gets 429 with Retry-After; /healthz and others go on
    for _ in range(10):
        assert get_from("127.0.0.6", port, "/metrics", good)[0] == 200
    code, hdr = get_from("127.0.0.6", port, "/metrics", good)
    assert code == 429 and 0 < int(hdr["Retry-After"]) <= 60
    assert get_from("127.0.0.6", port, "/healthz")[0] == 200
    assert get_from("127.0.0.7", port, "/metrics", good)[0] == 200

    # wrong passwords: after the third, the right one is refused without being checked until
    # the lockout ends; a request without credentials does not count
    assert get_from("127.0.0.8", port, "/metrics")[0] == 401
    for _ in range(3):
        assert get_from("127.0.0.8", port, "/metrics", wrong)[0] == 401
    code, hdr = get_from("127.0.0.8", port, "/metrics", good)
    assert code == 429 and 1 <= int(hdr["Retry-After"]) <= 3
    assert get_from("127.0.0.9", port, "/metrics", good)[0] == 200
    assert "127.0.0.8 sent wrong credentials 3 times" in d.log_text()
    assert PASSWORD not in d.log_text() and "guess" not in d.log_text()
    time.sleep(3.2)
    assert get_from("127.0.0.8", port, "/metrics", good)[0] == 200


def test_exempt_clients_still_locked_out_after_wrong_passwords(daemon_factory, tmp_path):
    """http_exempt_networks (loopback by default: a proxy, an SSH tunnel) spares a client the
    connection and request limits, never the failed-login throttling: a password is not
    guessed over HTTP from loopback any faster than over SMTP AUTH. Real requests with curl."""
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\nhttp_request_rate = 2\n"
                    "http_auth_failures = 3\nhttp_auth_lockout = 3s\n")

    def curl(path, auth=None, post=False):
        argv = [CURL, "-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"]
        if post:
            argv += ["--form-string", f"envelope={ENVELOPE}", "--form-string", "email=x"]
        if auth:
            argv += ["-u", f"{auth[0]}:{auth[1]}"]
        out = subprocess.run(argv + [d.http + path], capture_output=True, text=True,
                             timeout=30).stdout
        return int(out[-3:]), out
    # the request rate does not apply to loopback
    for _ in range(4):
        assert curl("/metrics", (USER, PASSWORD))[0] == 200
    for i in range(3):
        assert curl("/metrics", (USER, f"guess-{i}"))[0] == 401
    # locked: the right password is not looked at until the lockout ends
    code, head_text = curl("/metrics", (USER, PASSWORD))
    assert code == 429 and "Retry-After:" in head_text, head_text
    code, _ = curl("/emailInbound", (USER, PASSWORD), post=True)
    assert code == 429
    # what needs no password goes on
    assert curl("/healthz")[0] == 200
    assert "127.0.0.1 sent wrong credentials 3 times" in d.log_text()
    time.sleep(3.2)
    assert curl("/metrics", (USER, PASSWORD))[0] == 200


def test_concurrent_guesses_get_no_more_checks_than_the_limit(daemon_factory, tmp_path):
    """Many wrong passwords sent at once are checked no more often than one after another:
    each check is reserved before it is made (as SMTP AUTH's are), so at most
    http_auth_failures of them get 401; the others get 429 unchecked."""
    import threading
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\nhttp_clients_per_ip = 0\n"
                    "http_request_rate = 0\nhttp_auth_failures = 3\nhttp_auth_lockout = 10m\n"
                    "http_exempt_networks = 192.0.2.0/24\n")
    port = int(d.http.rsplit(":", 1)[1])
    codes, start = [], threading.Barrier(24)

    def guess(i):
        start.wait()
        codes.append(get_from("127.0.0.21", port, "/metrics", (USER, f"guess-{i}"))[0])
    threads = [threading.Thread(target=guess, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(codes) == 24 and set(codes) <= {401, 429}, codes
    assert codes.count(401) <= 3, codes
    assert get_from("127.0.0.21", port, "/metrics", (USER, PASSWORD))[0] == 429


def test_lockout_shared_with_smtp_auth(daemon_factory, tmp_path):
    """Wrong webhook passwords lock the client out of SMTP AUTH too: one table, one count."""
    from test_submission_security import Client, PASSWORD as SMTP_PASSWORD, make_daemon
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    port = free_port()
    d = make_daemon(daemon_factory,
                    extra=f"\n[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{port}\n"
                          f"http_user = {USER}\nhttp_password_file = {pw}\n"
                          "http_auth_failures = 3\nhttp_auth_lockout = 3s\n"
                          "http_exempt_networks = 192.0.2.0/24\n")
    d.http = f"http://127.0.0.1:{port}"
    wait_http(d)
    for _ in range(3):
        assert get_from("127.0.0.11", port, "/metrics", (USER, "guess"))[0] == 401
    with Client(d.port, source="127.0.0.11") as c:
        c.greet()
        r = c.auth_plain("alice", SMTP_PASSWORD)
        assert (r.code, r.enhanced) == (454, "4.7.0"), r
    with Client(d.port, source="127.0.0.12") as c:
        c.greet()
        assert c.auth_plain("alice", SMTP_PASSWORD).code == 235
    time.sleep(3.2)
    with Client(d.port, source="127.0.0.11") as c:
        c.greet()
        assert c.auth_plain("alice", SMTP_PASSWORD).code == 235


def test_forged_signatures_logged_once_a_minute(guarded):
    """Anyone may post a forged /sms or /events: each is refused, but the warning that tells the
    operator about a wrong token or key is written once a minute, not once per forged post."""
    d = guarded
    base = f"http://127.0.0.1:{d.http_port}"
    params = {"MessageSid": "SM1", "From": "+15550001", "To": "+15550002", "Body": "hi"}
    body = urllib.parse.urlencode(params).encode()
    ts = str(int(time.time()))
    for i in range(8):
        assert post(base + "/sms", body, {"X-Twilio-Signature": "Zm9yZ2Vk"})[0] == 403
        assert post(base + "/sms", body)[0] == 403
        forged = sign(d.priv, ts, batch(f"other{i}"))
        assert post(base + "/events", batch(f"e{i}"),
                    {"X-Twilio-Email-Event-Webhook-Signature": forged,
                     "X-Twilio-Email-Event-Webhook-Timestamp": ts})[0] == 403
    log = d.log_text()
    assert log.count("sms: X-Twilio-Signature") == 1, d.log_tail()
    assert log.count("events: signature verification failed") == 1, d.log_tail()
    assert "from 127.0.0.1" in log
    assert inbound(d) == [] and events(d) == []


def _trickle(port, head, step=0.5, limit=15.0):
    """Sends head one byte every step seconds, then more bytes the same way, until the server
    closes the connection; returns the seconds it took (limit if it never did)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t = time.monotonic()
    data = head + b"x" * 1000
    try:
        for i in range(len(data)):
            if time.monotonic() - t > limit:
                return limit
            s.sendall(data[i:i + 1])
            s.settimeout(step)
            try:
                if s.recv(4096) == b"":
                    return time.monotonic() - t
            except socket.timeout:
                pass
    except OSError:
        return time.monotonic() - t
    finally:
        s.close()
    return limit


def test_request_deadline(daemon_factory, tmp_path):
    """http_request_timeout bounds a whole request, not the gap between two bytes: headers or a
    body sent one byte every half second are cut off once it has passed; two requests on one
    connection each get the whole time."""
    pw = secret(tmp_path, "inbound.secret", PASSWORD)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = {USER}\nhttp_password_file = {pw}\nhttp_request_timeout = 3s\n")
    port = int(d.http.rsplit(":", 1)[1])
    took = _trickle(port, b"")                                             # slow headers
    assert 2.5 <= took < 8, took
    took = _trickle(port, head(b"/emailInbound", 100000, auth_header(USER, PASSWORD) +
                               b"Content-Type: multipart/form-data; boundary=x\r\n"), step=0.3)
    assert took < 8, took                                                  # a slow body
    # keep-alive: two quick requests 2 s apart (4 s in all) are both answered
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(2):
            s.sendall(head(b"/healthz", 0, method=b"GET"))
            data = b""
            while b"ok\n" not in data:
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data
            time.sleep(2)
    assert d.log_text().count("took longer than http_request_timeout (3s") == 1, d.log_tail()


def test_connection_place_given_back_across_a_reload(daemon_factory, tmp_path):
    """A connection's place among http_clients_per_ip is given back as it was taken: a reload
    that makes the client exempt while the connection is open must not keep the place for
    good (nor one that makes it limited release a place never taken)."""
    import signal as sig
    pw = secret(tmp_path, "inbound.secret", PASSWORD)

    def settings(exempt):
        return (f"http_user = {USER}\nhttp_password_file = {pw}\nhttp_clients_per_ip = 1\n"
                f"http_exempt_networks = {exempt}\n")
    d = http_daemon(daemon_factory, tmp_path, settings("192.0.2.0/24"))
    port = int(d.http.rsplit(":", 1)[1])

    def reload(exempt):
        n = d.log_text().count("reload -- configuration")
        d.write_config(d.settings, f"\n[inbound]\ndomains = reply.test\n"
                                   f"http_address = 127.0.0.1:{port}\n" + settings(exempt))
        d.signal(sig.SIGHUP)
        deadline = time.monotonic() + 15
        while d.log_text().count("reload -- configuration") == n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.log_text().count("reload -- configuration") == n + 1, d.log_tail(20)

    idle = socket.socket()
    idle.bind(("127.0.0.6", 0))
    idle.connect(("127.0.0.1", port))          # holds 127.0.0.6's one place
    time.sleep(0.3)
    reload("127.0.0.0/8")                       # now exempt while the connection is open
    idle.close()
    time.sleep(0.5)
    reload("192.0.2.0/24")                      # limited again: its place must be free
    deadline = time.monotonic() + 10
    while True:
        try:
            if get_from("127.0.0.6", port, "/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the place of a closed connection was kept"
        time.sleep(0.2)
