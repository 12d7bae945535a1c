# The OAuth2 token engine against a real token endpoint on loopback (tokenserver.py) and an
# aiosmtpd upstream that takes XOAUTH2 only with a currently valid token: the three flows, tokens
# that expire every few seconds, invalid_grant holding the mail until the endpoint recovers, the
# status posternctl shows, and no secret in the log at debug verbosity.
import datetime
import json
import os
import re
import subprocess
import time

import pytest

from conftest import POSTERNCTL, need_binary, secret_file
from tokenserver import TokenServer
from test_upstream import (FAST, message, submit, submit_many, upstream_conf, wait_for,
                           wait_rcpt)

USER = "noreply@clinic.test"
CLIENT_ID = "00000000-1111-2222-3333-444444444444"
CLIENT_SECRET = "cs-" + "Zq9" * 12


@pytest.fixture
def tokens():
    made = []

    def make(**kw):
        ts = TokenServer(**kw).start()
        made.append(ts)
        return ts

    yield make
    for ts in made:
        ts.stop()


def oauth2_conf(ts, flow, name="idp", secret=None, token_file=None):
    lines = [f"[oauth2 {name}]", "provider = microsoft", f"flow = {flow}", "tenant = clinic.test",
             f"client_id = {CLIENT_ID}", f"token_url = {ts.url}"]
    if secret:
        lines.append(f"client_secret_file = {secret}")
    if token_file:
        lines.append(f"token_file = {token_file}")
    return "\n".join(lines) + "\n"


def make_env(daemon_factory, upstreams, certs, tokens, tmp_path, flow, lifetime=3600, rotate=True,
          start=True, settings=None, seed_refresh=False, mech="xoauth2", check=None):
    """mech: the SASL mechanism the upstream offers (xoauth2 | oauthbearer); check(token): what
    the upstream accepts (default: the tokens the endpoint says are currently valid)."""
    ts = tokens(clients={CLIENT_ID: CLIENT_SECRET}, lifetime=lifetime, rotate=rotate)
    up = upstreams(tls="starttls", cert=certs.good, **{mech: check or ts.valid})
    secret = secret_file(tmp_path / "client.secret", CLIENT_SECRET)
    extra = "\n" + oauth2_conf(ts, flow, secret=secret)
    conf = upstream_conf(up.port, ca=certs.ca, auth=mech, username=USER,
                         extra=extra).replace("[route default]", "oauth2 = idp\n\n[route default]")
    d = daemon_factory(postern=settings or FAST, extra="\n" + conf, start=False)
    if seed_refresh:
        os.makedirs(os.path.join(d.data_dir, "oauth2"), exist_ok=True)
        secret_file(os.path.join(d.data_dir, "oauth2", "idp.json"), ts.add_refresh_token())
    if start:
        d.start()
    return d, up, ts


def status(d, name="idp"):
    return d.ctl("oauth2", "status", name).stdout.decode()


def assert_no_secrets(d, ts, up):
    text = d.log_text()
    for s in ts.secrets_issued() + [CLIENT_SECRET]:
        assert s not in text, "a token or secret appears in the daemon log"
    for a in up.xoauth2_auths + up.oauthbearer_auths:
        assert a[1] not in text


def test_client_credentials_delivers(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials")
    qid = submit(d, ["someone@example.net"], message("cc"))
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert up.received()[0]["auth"] == USER
    assert [ok for _, _, ok in up.xoauth2_auths] == [True]
    assert len(ts.token_requests("client_credentials")) == 1
    # the token is kept in a 0600 file and the status says so
    path = os.path.join(d.data_dir, "oauth2", "idp.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "state=ok" in status(d)
    assert_no_secrets(d, ts, up)
    # an app registration has nothing to log in; an unknown name is an error
    p = d.ctl("oauth2", "login", "idp", check=False)
    assert p.returncode != 0 and b"no login is needed" in p.stderr, p.stderr
    p = d.ctl("oauth2", "status", "nope", check=False)
    assert p.returncode == 1 and b"no [oauth2 nope] section" in p.stderr, p.stderr


def test_refresh_token_rotation(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "refresh_token",
                      lifetime=3, seed_refresh=True)
    first = submit(d, ["someone@example.net"], message("rt0"))
    wait_rcpt(d, first, "someone@example.net", "sent")
    time.sleep(4)                 # past one expiry: the refresh token has been used and rotated
    second = submit(d, ["someone@example.net"], message("rt1"))
    wait_rcpt(d, second, "someone@example.net", "sent")
    assert len(ts.token_requests("refresh_token")) >= 2
    assert all(st == 200 for _, g, st in ts.token_requests("refresh_token")), ts.token_requests()
    # the stored refresh token is the newest one, never one rotated away
    with open(os.path.join(d.data_dir, "oauth2", "idp.json")) as f:
        stored = json.load(f)
    assert stored["refresh_token"] in ts.refresh
    assert stored["refresh_token"] not in ts.dead_refresh
    assert_no_secrets(d, ts, up)


def login(d, ts):
    """posternctl oauth2 login idp, approving the code it prints on the endpoint."""
    need_binary(POSTERNCTL)
    p = subprocess.Popen([POSTERNCTL, "-c", d.conf, "oauth2", "login", "idp"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=d.workdir)
    out = b""
    deadline = time.monotonic() + 15
    code = None
    while time.monotonic() < deadline and code is None:
        line = p.stdout.readline()
        out += line
        m = re.search(rb"^\s+(\d{4}-\d{4})\s*$", line)
        if m:
            code = m.group(1).decode()
    assert code, out
    assert b"https://login.example.test/device" in out
    assert ts.approve(code)
    rest, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert b"Authorised" in rest
    for s in ts.secrets_issued():
        assert s.encode() not in out + rest + err


def test_device_code_login(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "device_code")
    login(d, ts)
    qid = submit(d, ["someone@example.net"], message("dc"))
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert any(ok for _, _, ok in up.xoauth2_auths)
    assert "state=ok" in status(d)


def test_login_again_releases_held_mail(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "refresh_token",
                         seed_refresh=True, start=False)
    ts.fail, ts.fail_grant = "invalid_grant", "refresh_token"
    d.start()                    # the background refresh at start is refused already
    qid = submit(d, ["someone@example.net"], message("relogin"))
    wait_rcpt(d, qid, "someone@example.net", "held")
    assert "state=reauthorize" in status(d)
    login(d, ts)                 # the operator does what the log says; nothing else
    wait_rcpt(d, qid, "someone@example.net", "sent", timeout=30)
    assert "state=ok" in status(d)
    assert_no_secrets(d, ts, up)


def test_short_lifetime_one_refresh_per_expiry(daemon_factory, upstreams, certs, tokens, tmp_path):
    lifetime = 3
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials",
                      lifetime=lifetime,
                      settings=dict(FAST, delivery_workers="4"))
    t0 = time.monotonic()
    sent = []
    # mail keeps coming across four expiries, many messages queued at a time
    for round_ in range(5):
        sent += submit_many(d, 8, tag=f"r{round_}-")
        time.sleep(2.5)
    for qid in sent:
        wait_rcpt(d, qid, "someone@example.net", "sent", timeout=30)
    elapsed = time.monotonic() - t0
    reqs = len(ts.token_requests())
    # one refresh per half-life at most (plus the first), however many messages and workers
    assert reqs <= elapsed / (lifetime / 2) + 2, f"{reqs} token requests in {elapsed:.1f} s"
    assert reqs >= 3, f"only {reqs} token requests in {elapsed:.1f} s: tokens were not refreshed"
    assert len(sent) > 2 * reqs
    # every login used a valid token: none was refused
    assert up.xoauth2_auths and all(ok for _, _, ok in up.xoauth2_auths), up.xoauth2_auths
    assert len({t for _, t, _ in up.xoauth2_auths}) >= 2
    assert_no_secrets(d, ts, up)


def test_invalid_grant_holds_then_recovers(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "refresh_token",
                      lifetime=2, seed_refresh=True)
    ok = submit(d, ["someone@example.net"], message("before"))
    wait_rcpt(d, ok, "someone@example.net", "sent")
    ts.fail = "aadsts70043"
    time.sleep(2.5)               # the access token expires; refreshing it is refused
    qids = [submit(d, ["someone@example.net"], message(f"held{i}")) for i in range(3)]
    for q in qids:
        r = wait_rcpt(d, q, "someone@example.net", "held")
        assert "AADSTS70043" in r["last_reply"], r
    time.sleep(2)
    for q in qids:                # held, never bounced
        e = d.queue_entry(q)
        assert e["recipients"][0]["status"] == "held", e
    st = status(d)
    assert "state=reauthorize" in st, st
    assert "AADSTS70043" in st and "posternctl oauth2 login idp" in st, st
    js = status_json(d)
    assert js["state"] == "reauthorize" and js["mail_held"] is True, js
    assert "AADSTS70043" in js["last_error"] and "posternctl oauth2 login idp" in js["last_error"]
    assert js["has_refresh_token"] is True and js["token_endpoint"] == ts.url, js
    text = d.log_text()
    assert re.search(r"oauth2 idp: token endpoint refused .*AADSTS70043.*run `posternctl oauth2 "
                     r"login idp`.*held", text), d.log_tail(40)
    # the stored refresh token is still there
    with open(os.path.join(d.data_dir, "oauth2", "idp.json")) as f:
        assert json.load(f).get("refresh_token")
    # the endpoint recovers: the mail goes out with no action
    ts.fail = None
    for q in qids:
        wait_rcpt(d, q, "someone@example.net", "sent", timeout=40)
    assert "state=ok" in status(d)
    js = status_json(d)
    assert js["state"] == "ok" and js["last_error"] is None and not js["mail_held"], js
    assert js["expires_in_s"] <= 3 and js["expires_at"].endswith("Z"), js
    assert_no_secrets(d, ts, up)


def test_transient_endpoint_error_defers(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials",
                         start=False)
    ts.fail = "server_error"
    d.start()
    qid = submit(d, ["someone@example.net"], message("transient"))
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert r["last_reply"].startswith("454"), r
    assert "state=retrying" in status(d)
    js = status_json(d)
    assert js["state"] == "retrying" and "HTTP 500" in js["last_error"] and not js["mail_held"], js
    ts.fail = None
    wait_rcpt(d, qid, "someone@example.net", "sent", timeout=30)


def test_refused_token_gets_one_forced_refresh(daemon_factory, upstreams, certs, tokens, tmp_path):
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials")
    first = submit(d, ["someone@example.net"], message("f0"))
    wait_rcpt(d, first, "someone@example.net", "sent")
    # the provider revokes every token it gave: the next login's 535 gets one new token
    with ts.lock:
        ts.access.clear()
    d.stop()
    d.start()
    second = submit(d, ["someone@example.net"], message("f1"))
    wait_rcpt(d, second, "someone@example.net", "sent")
    oks = [ok for _, _, ok in up.xoauth2_auths]
    assert oks == [True, False, True], oks
    assert len(ts.token_requests()) == 2


def test_client_credentials_with_certificate(daemon_factory, upstreams, certs, tokens, tmp_path):
    """A private-key JWT assertion instead of a client secret (Microsoft's certificate
    credentials): signed RS256, named by the certificate's thumbprint, never logged."""
    key = str(tmp_path / "app.key")
    crt = str(tmp_path / "app.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "2", "-subj", "/CN=postern-app"], check=True,
                   capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    ts = tokens(clients={CLIENT_ID: None})
    with open(crt, "rb") as f:
        ts.assertion_certs[CLIENT_ID] = f.read()
    up = upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid)
    extra = "\n" + oauth2_conf(ts, "client_credentials") + \
        f"certificate_file = {crt}\nprivate_key_file = {key}\n"
    conf = upstream_conf(up.port, ca=certs.ca, auth="xoauth2", username=USER,
                         extra=extra).replace("[route default]", "oauth2 = idp\n\n[route default]")
    d = daemon_factory(postern=FAST, extra="\n" + conf)
    qid = submit(d, ["someone@example.net"], message("cert"))
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert [st for _, _, st in ts.token_requests()] == [200]
    header, claims = ts.assertions[0]
    assert header["alg"] == "RS256" and claims["iss"] == CLIENT_ID
    text = d.log_text()
    assert "eyJ" not in text                      # no JWT, whole or in part
    assert_no_secrets(d, ts, up)


def test_oauthbearer_delivers(daemon_factory, upstreams, certs, tokens, tmp_path):
    """RFC 7628 OAUTHBEARER against an upstream that offers only it and checks the token."""
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "refresh_token",
                         lifetime=3, seed_refresh=True, mech="oauthbearer")
    first = submit(d, ["someone@example.net"], message("ob0"))
    wait_rcpt(d, first, "someone@example.net", "sent")
    time.sleep(3.5)                     # past an expiry: a refreshed token logs in as well
    second = submit(d, ["someone@example.net"], message("ob1"))
    wait_rcpt(d, second, "someone@example.net", "sent")
    auths = up.oauthbearer_auths
    assert auths and all(ok for _, _, ok, _, _, _ in auths), auths
    assert len({tok for _, tok, _, _, _, _ in auths}) >= 2, auths
    authzid, _, _, host, port, _ = auths[0]
    assert authzid == USER and host == "localhost" and port == str(up.port), auths[0]
    assert up.auth_commands and set(up.auth_commands) == {"OAUTHBEARER"}, up.auth_commands
    assert up.received()[0]["auth"] == USER
    assert_no_secrets(d, ts, up)


def test_token_refused_twice_defers(daemon_factory, upstreams, certs, tokens, tmp_path):
    """A 535 for a token the endpoint says is valid: one forced refresh, one retry with the new
    token; refused again, the mail is deferred (not held, not bounced) and goes out later."""
    accept = {"on": False}
    ts_box = {}
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials",
                         mech="oauthbearer",
                         check=lambda t: accept["on"] and ts_box["ts"].valid(t), start=False)
    ts_box["ts"] = ts
    d.start()
    qid = submit(d, ["someone@example.net"], message("twice"))
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert r["last_reply"].startswith("454 4.7.0") and "new OAuth2 token" in r["last_reply"], r
    first = up.oauthbearer_auths[:2]
    assert [ok for _, _, ok, _, _, _ in first] == [False, False], first
    assert first[0][1] != first[1][1], "the retry did not use a new token"
    # the client finished each refused exchange with RFC 7628's dummy ^A
    assert all(dummy == b"\x01" for _, _, _, _, _, dummy in first), first
    assert len(ts.token_requests()) >= 2
    assert d.queue_entry(qid)["recipients"][0]["status"] != "held"
    text = d.log_text()
    assert "trying once more with a new one" in text and "deferring the mail" in text
    accept["on"] = True
    wait_rcpt(d, qid, "someone@example.net", "sent", timeout=30)
    assert_no_secrets(d, ts, up)


def status_json(d, name="idp"):
    out = json.loads(d.ctl("oauth2", "status", name, "--json").stdout)
    assert isinstance(out, list) and len(out) == 1
    return out[0]


def test_status_json_endpoints_and_clouds(daemon_factory, tmp_path):
    """Token endpoints and scopes by provider, tenant and national cloud, as status --json
    shows them (no daemon needed: nothing is requested)."""
    conf = f"""
[oauth2 gov]
provider = microsoft
flow = client_credentials
cloud = usgov
tenant = contoso.onmicrosoft.us
client_id = {CLIENT_ID}

[oauth2 dod]
provider = microsoft
flow = client_credentials
cloud = usgov-dod
tenant = army.onmicrosoft.us
client_id = {CLIENT_ID}

[oauth2 cn]
provider = microsoft
flow = refresh_token
cloud = china
tenant = contoso.partner.onmschina.cn
client_id = {CLIENT_ID}

[oauth2 world]
provider = microsoft
flow = device_code
client_id = {CLIENT_ID}

[oauth2 gmail]
provider = google
flow = refresh_token
client_id = 1-x.apps.googleusercontent.com

[oauth2 mailer]
provider = microsoft
flow = client_credentials
cloud = china
tenant = contoso.partner.onmschina.cn
client_id = {CLIENT_ID}

[upstream graph]
type = graph
oauth2 = mailer
username = noreply@clinic.test

[route default]
upstream = graph
"""
    d = daemon_factory(postern=FAST, extra=conf, start=False)
    want = {
        "gov": ("usgov", "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/token",
                "https://outlook.office365.us/.default"),
        "dod": ("usgov-dod", "https://login.microsoftonline.us/army.onmicrosoft.us/oauth2/v2.0/token",
                "https://outlook-dod.office365.us/.default"),
        "cn": ("china",
               "https://login.chinacloudapi.cn/contoso.partner.onmschina.cn/oauth2/v2.0/token",
               "https://partner.outlook.cn/SMTP.Send offline_access"),
        "world": ("global", "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
                  "https://outlook.office.com/SMTP.Send offline_access"),
        "gmail": ("global", "https://oauth2.googleapis.com/token", "https://mail.google.com/"),
        # a graph upstream uses it: Graph's resource in its cloud, not Exchange's
        "mailer": ("china",
                   "https://login.chinacloudapi.cn/contoso.partner.onmschina.cn/oauth2/v2.0/token",
                   "https://microsoftgraph.chinacloudapi.cn/.default"),
    }
    for name, (cloud, url, scope) in want.items():
        st = status_json(d, name)
        assert (st["cloud"], st["token_endpoint"], st["scope"]) == (cloud, url, scope), st
        assert st["state"] == "unknown" and st["last_error"] is None and not st["mail_held"], st
    p = d.ctl("oauth2", "status", "gov", check=False)
    assert p.returncode == 0 and b"token endpoint: https://login.microsoftonline.us/" in p.stdout
    # a cloud Postern does not know is a configuration error with its line
    d.write_config(postern=FAST, extra=conf.replace("cloud = usgov\n", "cloud = mars\n", 1))
    p = d.ctl("oauth2", "status", "gov", check=False)
    assert p.returncode != 0 and b"cloud" in p.stderr, p.stderr


def iso_s(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def test_refresh_planned_ten_minutes_early(daemon_factory, upstreams, certs, tokens, tmp_path):
    """An hour-long token is refreshed 10 minutes before it expires (Microsoft's high-volume
    endpoint refuses tokens close to expiry), in the background."""
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials")
    qid = submit(d, ["someone@example.net"], message("early"))
    wait_rcpt(d, qid, "someone@example.net", "sent")
    js = status_json(d)
    assert js["state"] == "ok" and js["next_refresh"], js
    lead = iso_s(js["expires_at"]) - iso_s(js["next_refresh"])
    assert 598 <= lead <= 602, js
    assert 3590 - 10 <= js["expires_in_s"] <= 3600, js


def test_one_refresh_in_flight_under_concurrency(daemon_factory, upstreams, certs, tokens,
                                                 tmp_path):
    """Eight workers need a token while a slow endpoint is still answering the first request:
    they wait for that one request instead of each sending their own."""
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "client_credentials",
                         settings=dict(FAST, delivery_workers="8"), start=False)
    ts.delay = 2.0
    d.start()
    qids = submit_many(d, 16, tag="conc-")
    for q in qids:
        wait_rcpt(d, q, "someone@example.net", "sent", timeout=40)
    assert len(ts.token_requests()) == 1, ts.token_requests()
    assert up.xoauth2_auths and all(ok for _, _, ok in up.xoauth2_auths)
    assert len({t for _, t, _ in up.xoauth2_auths}) == 1


def test_unused_refresh_token_kept_alive(daemon_factory, upstreams, certs, tokens, tmp_path):
    """No mail at all: the refresh token is still exercised (and rotated) in the background, so
    inactivity never kills it."""
    d, up, ts = make_env(daemon_factory, upstreams, certs, tokens, tmp_path, "refresh_token",
                         lifetime=2, seed_refresh=True)
    deadline = time.monotonic() + 30
    while len(ts.token_requests("refresh_token")) < 3:
        assert time.monotonic() < deadline, ts.token_requests()
        time.sleep(0.2)
    assert all(st == 200 for _, _, st in ts.token_requests("refresh_token")), ts.token_requests()
    assert not up.received() and not up.xoauth2_auths
    wait_for(lambda: status_json(d)["state"] == "ok", what="state ok")
    assert d.stop() == 0
    # what is stored is the newest refresh token, never one rotated away
    with open(os.path.join(d.data_dir, "oauth2", "idp.json")) as f:
        stored = json.load(f)["refresh_token"]
    assert stored in ts.refresh and stored not in ts.dead_refresh
    assert_no_secrets(d, ts, up)
