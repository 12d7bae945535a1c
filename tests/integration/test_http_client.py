# The rules of the one HTTP client (global/http.c) seen from outside: no key, token, record or
# webhook password goes over plain http to anything but this machine -- refused by `postern -n`
# for every URL setting, and refused where the request is made even when a name only resolves
# to a remote address (a test namespace, whose DNS names a non-loopback address); an upstream's
# Retry-After far in the future defers by retry_max at most; no process keeps a core file.
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import POSTERN, POSTERNCTL, need_binary, secret_file
from dnsns import IP, dns_namespace, in_netns
from apiserver import APIServer
from test_api_transports import FAST, iso_ms, rcpt_is, simple, submit, wait_all

REMOTE = "192.0.2.25"            # TEST-NET-1, on the namespace's loopback only
NAME = "api.test.example"        # resolves to REMOTE inside the namespace


def run(argv, netns=None, **kw):
    pre = [IP, "netns", "exec", netns] if netns else []
    return subprocess.run(pre + argv, capture_output=True, text=True, timeout=120, **kw)


def api_upstreams(tmp_path, url, graph_oauth2="app"):
    """A sendgrid, an ses and a graph upstream (routed) and a client-credentials [oauth2 app],
    every one of them at url."""
    key = secret_file(tmp_path / "sg.key", "SG.plain-http-key")
    kid = secret_file(tmp_path / "aws.id", "AKIDPLAINHTTP00")
    sec = secret_file(tmp_path / "aws.secret", "aws-secret-plain-http-0000")
    csec = secret_file(tmp_path / "client.secret", "client-secret-plain-http")
    return f"""
[upstream sg]
type = sendgrid
api_key_file = {key}
api_url = {url}

[upstream ses]
type = ses
region = eu-west-1
access_key_id_file = {kid}
secret_access_key_file = {sec}
api_url = {url}

[upstream graph]
type = graph
username = noreply@client.test
oauth2 = {graph_oauth2}
api_url = {url}

[oauth2 app]
provider = generic
flow = client_credentials
client_id = 11111111-2222-3333-4444-555555555555
client_secret_file = {csec}
token_url = {url}/token

[route sg]
recipient = *@sg.test
upstream = sg

[route ses]
recipient = *@ses.test
upstream = ses
"""


def test_postern_n_refuses_plain_http_for_every_url(daemon_factory, tmp_path):
    tok = secret_file(tmp_path / "graph.token", "graph-token-plain-http")
    fsec = secret_file(tmp_path / "forward.secret", "forward-secret-plain-http")
    url = f"http://{NAME}:8080"
    extra = api_upstreams(tmp_path, url, graph_oauth2="static") + f"""
[upstream graph2]
type = graph
username = noreply@client.test
oauth2 = app

[oauth2 static]
token_file = {tok}

[route graph]
recipient = *@graph.test
upstream = graph

[route default]
upstream = graph2

[inbound]
domains = client.test
public_url = {url}/
forward_url = {url}/records
forward_secret_file = {fsec}
twilio_api_url = {url}
twilio_messaging_url = {url}
"""
    d = daemon_factory(extra=extra, start=False)
    p = run([POSTERN, "-n", "-c", d.conf])
    assert p.returncode != 0, p.stderr
    for what in ("upstream sg: api_url", "upstream ses: api_url", "upstream graph: api_url",
                 "[oauth2 app] token_url", "[inbound] public_url", "[inbound] forward_url",
                 "[inbound] twilio_api_url", "[inbound] twilio_messaging_url"):
        assert what in p.stderr, f"{what} not refused:\n{p.stderr}"
    # the same URLs on this machine are fine
    d.write_config(extra=extra.replace(NAME, "127.0.0.1"))
    p = run([POSTERN, "-n", "-c", d.conf])
    assert "in clear" not in p.stderr, p.stderr


class Listener:
    """A TCP server inside the namespace on REMOTE: it counts connections (none may come)."""

    def __init__(self, netns):
        self.sock = in_netns(netns, lambda: socket.create_server((REMOTE, 0)))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            c.close()

    def stop(self):
        self.sock.close()


@pytest.fixture
def remote(tmp_path):
    with dns_namespace(tmp_path, [f"--host-record={NAME},{REMOTE}"],
                       addresses=[f"{REMOTE}/32"]) as ns:
        lst = Listener(ns)
        yield ns, lst
        lst.stop()


def test_plain_http_to_a_remote_address_is_refused_where_the_request_is_made(
        remote, daemon_factory, tmp_path):
    """posternctl reads the configuration without the -n checks, so its requests meet the
    client's own rule: every API upstream type, a token endpoint and Twilio's API, each named
    by a host name that resolves to a remote address, are refused before any connection."""
    ns, lst = remote
    need_binary(POSTERNCTL)
    url = f"http://{NAME}:{lst.port}"
    tw = secret_file(tmp_path / "twilio.token", "twilio-token-remote-plain")
    extra = api_upstreams(tmp_path, url) + f"""
[route default]
upstream = graph

[inbound]
domains = client.test
public_url = https://relay.client.test/
twilio_account_sid = AC0123456789abcdef0123456789abcdef
twilio_auth_token_file = {tw}
twilio_api_url = {url}
twilio_messaging_url = {url}
"""
    d = daemon_factory(extra=extra, start=False)
    p = run([POSTERNCTL, "-c", d.conf, "check", "--json"], netns=ns)
    assert p.stdout, p.stderr
    reports = {r["upstream"]: r for r in json.loads(p.stdout)}
    for name in ("sg", "ses", "graph"):
        steps = reports[name]["steps"]
        bad = [s for s in steps if not s["ok"]]
        assert bad and "https://" in bad[0]["detail"], (name, steps)
    p = run([POSTERNCTL, "-c", d.conf, "twilio", "check", "+15005550006"], netns=ns)
    assert p.returncode != 0 and "https://" in p.stdout + p.stderr, p.stdout + p.stderr
    assert lst.connections == 0, "a plain-http request reached a remote address"


def test_no_core_files(daemon):
    """postern and posternctl hold keys and tokens: no core file (RLIMIT_CORE 0)."""
    with open(f"/proc/{daemon.proc.pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max core file size"))
    assert line.split()[4:6] == ["0", "0"], line
    need_binary(POSTERNCTL)
    # posternctl waiting for a password on its standard input
    p = subprocess.Popen([POSTERNCTL, "-c", daemon.conf, "user", "add", "coreless"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        line = None
        while time.monotonic() < deadline and p.poll() is None and line is None:
            try:
                with open(f"/proc/{p.pid}/limits") as f:
                    line = next(x for x in f if x.startswith("Max core file size"))
                if line.split()[4:6] != ["0", "0"]:
                    line = None
                    time.sleep(0.05)
            except (OSError, StopIteration):
                time.sleep(0.05)
        assert line and line.split()[4:6] == ["0", "0"], line
    finally:
        p.stdin.close()
        p.wait(timeout=30)


@pytest.fixture
def api():
    s = APIServer().start()
    yield s
    s.stop()


def test_a_reset_a_year_ahead_defers_by_retry_max_at_most(daemon_factory, api, tmp_path):
    key = secret_file(tmp_path / "sg.key", api.key)
    year = int(time.time()) + 365 * 24 * 3600
    api.rule(rcpt_is("parked@example.net"),
             (429, {"X-RateLimit-Reset": year}, {"errors": [{"message": "too many requests"}]}),
             (202, {"X-Message-Id": "not-parked"}, b""))
    conf = (f"[upstream sg]\ntype = sendgrid\napi_key_file = {key}\napi_url = {api.url}\n\n"
            f"[route default]\nupstream = sg\n")
    d = daemon_factory(postern=FAST, extra=conf)          # retry_max = 2s
    t0 = time.time()
    qid = submit(d, ["parked@example.net"], simple("parked@example.net"))
    e = wait_all(d, qid, "deferred")
    assert iso_ms(e["recipients"][0]["next_attempt"]) <= t0 + 10, e
    e = wait_all(d, qid, "sent", timeout=30)
    assert "not-parked" in e["recipients"][0]["last_reply"], e


def graph_conf(api, auth):
    return (f"[upstream graph]\ntype = graph\napi_url = {api.url}\nusername = noreply@client.test\n"
            f"oauth2 = t\n\n[route default]\nupstream = graph\n\n[oauth2 t]\n" + auth)


def test_a_token_with_cr_lf_never_reaches_a_header(daemon_factory, api, tmp_path):
    """From the token endpoint: refused by the token engine; from a token file: refused by
    the HTTP client. Either way no request carries the extra line."""
    api.graph_token = "tok\r\nX-Injected: 1"
    sec = secret_file(tmp_path / "client.secret", "client-secret-crlf-test")
    d = daemon_factory(postern=FAST, extra=graph_conf(api, (
        f"provider = generic\nflow = client_credentials\n"
        f"client_id = 11111111-2222-3333-4444-555555555555\nclient_secret_file = {sec}\n"
        f"token_url = {api.url}/oauth2/token\n")))
    qid = submit(d, ["crlf@example.net"], simple("crlf@example.net"))
    e = wait_all(d, qid, "deferred")
    assert "Authorization header cannot carry" in e["recipients"][0]["last_reply"], e
    tok = tmp_path / "graph.token"
    tok.write_text("tok-from-file\r\nX-Injected: 1\n")
    os.chmod(tok, 0o600)
    d2 = daemon_factory(postern=FAST, extra=graph_conf(api, f"token_file = {tok}\n"))
    qid = submit(d2, ["crlf2@example.net"], simple("crlf2@example.net"))
    e = wait_all(d2, qid, "deferred")
    assert "CR or LF" in e["recipients"][0]["last_reply"], e
    assert not [r for r in api.requests if r.headers.get("X-Injected")], "a header was injected"
    assert not api.posts("/v1.0/users/noreply@client.test/sendMail")


@pytest.mark.parametrize("section,why", [
    ("[upstream graph]\ntype = graph\noauth2 = t\n\n[oauth2 t]\ntoken_file = {tok}\n",
     "type = graph needs username"),
    ("[upstream ses]\ntype = ses\nregion = eu-west-1.evil.example/x\n",
     "region = eu-west-1.evil.example/x is not an AWS region name"),
])
def test_postern_n_refuses(daemon_factory, tmp_path, section, why):
    tok = secret_file(tmp_path / "graph.token", "graph-token-for-n-check")
    d = daemon_factory(extra="\n" + section.format(tok=tok), start=False)
    p = run([POSTERN, "-n", "-c", d.conf])
    assert p.returncode != 0 and why in p.stderr, p.stderr


def test_two_processes_share_a_rotating_refresh_token(daemon_factory, upstreams, certs, tmp_path):
    """Two daemons keep one identity's tokens in one file, and the endpoint rotates refresh
    tokens, killing the old one on use: each refresh happens under a lock on the file and after
    reading it again, so neither ever sends a refresh token the other has used up."""
    from tokenserver import TokenServer
    from test_oauth2 import CLIENT_ID, CLIENT_SECRET, USER, oauth2_conf
    from test_upstream import FAST as UFAST, message, submit as usubmit, upstream_conf, wait_rcpt
    ts = TokenServer(clients={CLIENT_ID: CLIENT_SECRET}, lifetime=2, rotate=True).start()
    try:
        up = upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid)
        secret = secret_file(tmp_path / "client.secret", CLIENT_SECRET)
        shared = str(tmp_path / "shared-tokens.json")
        secret_file(shared, ts.add_refresh_token())
        extra = "\n" + oauth2_conf(ts, "refresh_token", secret=secret, token_file=shared)
        conf = upstream_conf(up.port, ca=certs.ca, auth="xoauth2", username=USER,
                             extra=extra).replace("[route default]",
                                                  "oauth2 = idp\n\n[route default]")
        d1 = daemon_factory(postern=UFAST, extra="\n" + conf)
        d2 = daemon_factory(postern=UFAST, extra="\n" + conf)
        time.sleep(8)                 # tokens of 2 s: each daemon refreshes every second or so
        refused = [r for r in ts.token_requests() if r[2] != 200]
        assert not refused, f"a refresh was refused: {refused}"
        assert len(ts.token_requests("refresh_token")) >= 4, ts.token_requests()
        for i, d in enumerate((d1, d2)):
            qid = usubmit(d, [f"shared{i}@example.net"], message(f"shared {i}"))
            wait_rcpt(d, qid, f"shared{i}@example.net", "sent")
    finally:
        ts.stop()
