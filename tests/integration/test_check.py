# posternctl check, the doctor, against real upstreams on loopback: aiosmtpd servers (upstream.py)
# with certificates made here by openssl and AUTH against given credentials, and a SendGrid-like
# HTTP server (apiserver.py). Each test asserts the step that fails, its explanation, the exit
# code, what the upstream received (no DATA unless --send) and that no secret is printed.
import json
import os
import re
import subprocess

import pytest

from apiserver import APIServer
from conftest import BAD_LOG, POSTERNCTL, need_binary, secret_file
from upstream import free_port, upstream_section

PASSWORD = "s3cret-Passw0rd"




@pytest.fixture
def api():
    s = APIServer(key="SG.doctor-test-key").start()
    yield s
    s.stop()



def smtp_section(name, port, tls="starttls", ca=None, auth="plain", username="app",
                 password_file=None, host="localhost"):
    return upstream_section(name, port, host=host, tls=tls, ca=ca, auth=auth, username=username,
                            password_file=password_file) + "\n"


def write_conf(tmp_path, sections, routes=None):
    """routes: [(route name, upstream)]; default: one default route to the first upstream."""
    text = (f"[postern]\nhostname = relay.test.example\ndata_dir = {tmp_path / 'data'}\n\n"
            + "".join(sections))
    for rname, up in routes or []:
        text += f"[route {rname}]\nupstream = {up}\n\n"
    path = tmp_path / "postern.conf"
    path.write_text(text)
    return str(path)


def check(conf, *args, timeout=120):
    need_binary(POSTERNCTL)
    p = subprocess.run([POSTERNCTL, "-c", conf, "check", *args], capture_output=True,
                       timeout=timeout)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    # exit 1 is also the sanitizers' way out: a finding must not hide one
    assert not BAD_LOG.search(err), err
    return p.returncode, out, err


def check_json(conf, *args):
    rc, out, err = check(conf, "--json", *args)
    try:
        return rc, json.loads(out), out + err
    except ValueError:
        raise AssertionError(f"--json printed no JSON (exit {rc}):\n{out}\n{err}")


def steps_of(report):
    return {s["name"]: s for s in report["steps"]}


def failed_step(report):
    bad = [s for s in report["steps"] if not s["ok"]]
    assert bad, f"no step failed: {report['steps']}"
    return bad[0]


def good_setup(tmp_path, upstreams, certs, password=PASSWORD, **upkw):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD}, **upkw)
    pw = secret_file(tmp_path / "pw", password)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, ca=certs.ca, password_file=pw)],
                      [("default", "up")])
    return up, conf


# ---------------------------------------------------------------------------------------------
# SMTP upstreams

def test_good_upstream_every_step_ok_nothing_sent(tmp_path, upstreams, certs):
    up, conf = good_setup(tmp_path, upstreams, certs)
    rc, out, err = check(conf)
    assert rc == 0, out + err
    for name in ("dns", "tcp", "greeting", "ehlo", "tls", "certificate", "auth", "mail", "rcpt",
                 "rset"):
        assert re.search(rf"^  \[ ok \] {name}\b", out, re.M), f"no ok {name} step:\n{out}"
    assert "[FAIL]" not in out, out
    assert "issuer CN=Postern Test CA" in out and "names localhost" in out, out
    assert "AUTH CRAM-MD5 LOGIN PLAIN" in out and "STARTTLS" in out, out
    # the transcript, with the AUTH payload masked
    assert re.search(r"^    > AUTH PLAIN \*\*\*", out, re.M), out
    assert re.search(r"^    > RCPT TO:<postmaster@localhost>$", out, re.M), out
    assert re.search(r"^    > RSET$", out, re.M) and re.search(r"^    > QUIT$", out, re.M), out
    assert PASSWORD not in out + err
    # the upstream saw a login and an envelope, and no message
    assert [(m, u, ok) for m, u, ok, _ in up.auths] == [("PLAIN", "app", True)]
    assert up.mail_attempts == 1
    assert up.data_attempts == 0 and not up.received(), "check sent a message"
    assert b"DATA" not in up.raw_bytes()


def test_implicit_tls_good(tmp_path, upstreams, certs):
    up = upstreams(tls="implicit", cert=certs.good, users={"app": PASSWORD},
                   mechs=("LOGIN",))
    pw = secret_file(tmp_path / "pw", PASSWORD)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, tls="implicit", ca=certs.ca,
                                              auth="login", password_file=pw,
                                              host="127.0.0.1")])
    rc, report, text = check_json(conf)
    assert rc == 0, text
    assert PASSWORD not in text
    # LOGIN sends the user name and the password as lines of their own: both masked
    assert report[0]["transcript"].count("> ***") == 2, report[0]["transcript"]
    st = steps_of(report[0])
    assert st["rcpt"]["detail"].startswith("RCPT TO:<postmaster@relay.test.example>"), st["rcpt"]
    assert st["tls"]["ok"] and "implicit TLS" in st["tls"]["detail"], st
    assert st["certificate"]["ok"] and "CN=localhost" in st["certificate"]["detail"], st
    assert st["auth"]["ok"] and not up.received()


def test_wrong_password(tmp_path, upstreams, certs):
    wrong = "not-the-Passw0rd-42"
    up, conf = good_setup(tmp_path, upstreams, certs, password=wrong)
    rc, out, err = check(conf)
    assert rc == 1, out + err
    m = re.search(r"^  \[FAIL\] auth +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert "535 5.7.8" in m.group(1), m.group(1)
    assert "password_file" in m.group(2) and "username" in m.group(2), m.group(2)
    # nothing after the refused login
    assert not re.search(r"^  \[.*\] (mail|rcpt)\b", out, re.M), out
    assert up.mail_attempts == 0 and not up.received()
    for secret in (wrong, PASSWORD):
        assert secret not in out + err, "a password is in the output"
    assert [(u, ok) for _, u, ok, _ in up.auths] == [("app", False)]


@pytest.mark.parametrize("reply,hint", [
    ("535 5.7.3 Authentication unsuccessful [AM0PR01CA0001.eurprd01.prod.exchangelabs.com]",
     r"Microsoft 365.*password_file.*(app password|xoauth2)"),
    ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
     "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
     r"SMTP AUTH.*(mailbox|tenant).*Security Defaults.*xoauth2"),
    ("550 5.7.30 Basic authentication is not supported for Client Submission.",
     r"basic authentication.*auth = xoauth2"),
    ("534-5.7.9 Application-specific password required. Learn more at\r\n"
     "534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor",
     r"Google.*application-specific password.*password_file"),
])
def test_provider_refusals_explained(tmp_path, upstreams, certs, reply, hint):
    up, conf = good_setup(tmp_path, upstreams, certs, password="wrong-one", auth_fail_reply=reply)
    rc, report, text = check_json(conf)
    assert rc == 1, text
    bad = failed_step(report[0])
    code = reply[:3] + " " + reply[4:9]
    assert bad["name"] == "auth" and code in bad["detail"], bad
    assert bad["hint"] and re.search(hint, bad["hint"]), bad
    assert "wrong-one" not in text


@pytest.mark.parametrize("silent,what", [(40, "timed out"), (1, "lost connection")])
def test_silence_inside_auth_gets_no_wrong_fix(tmp_path, upstreams, certs, silent, what):
    # the upstream takes the credentials over STARTTLS and then says nothing (or hangs up);
    # the doctor used to answer "fix: set tls = starttls" on an upstream that has exactly that
    up, conf = good_setup(tmp_path, upstreams, certs, auth_silent=silent)
    rc, out, err = check(conf)
    assert rc == 1, out + err
    m = re.search(r"^  \[FAIL\] auth +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert what in m.group(1), m.group(1)
    assert "tls = starttls" not in m.group(2) and "no rule fits" in m.group(2), m.group(2)
    assert re.search(r"^  \[ ok \] tls ", out, re.M), out
    assert up.auth_commands == ["PLAIN"]


def test_no_starttls_offered(tmp_path, upstreams):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False)   # AUTH offered in clear
    pw = secret_file(tmp_path / "pw", PASSWORD)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, password_file=pw)])
    rc, out, err = check(conf)
    assert rc == 1, out + err
    m = re.search(r"^  \[FAIL\] tls +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert "does not offer STARTTLS" in m.group(1), m.group(1)
    assert "tls = starttls" in m.group(2) and "465" in m.group(2), m.group(2)
    assert not up.auth_commands, "a password went out in clear"
    assert PASSWORD.encode() not in up.raw_bytes() and PASSWORD not in out


def test_must_issue_starttls(tmp_path, upstreams, certs):
    up = upstreams(tls="starttls", cert=certs.good, require_starttls=True)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, tls="none", auth=None,
                                              username=None)])
    rc, report, text = check_json(conf)
    assert rc == 1, text
    st = steps_of(report[0])
    assert st["tls"]["ok"] and "offers STARTTLS" in st["tls"]["detail"], st["tls"]
    bad = failed_step(report[0])
    assert bad["name"] == "mail" and "530" in bad["detail"], bad
    assert "tls = starttls" in bad["hint"], bad


def test_bad_certificate_name(tmp_path, upstreams, certs):
    up = upstreams(tls="starttls", cert=certs.wrongname, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, ca=certs.ca, password_file=pw)])
    rc, out, err = check(conf)
    assert rc == 1, out + err
    m = re.search(r"^  \[FAIL\] certificate +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert "hostname mismatch" in m.group(1) and "mail.other.example" in m.group(1), m.group(1)
    assert "issuer CN=Postern Test CA" in m.group(1), m.group(1)   # what the server presents
    assert "set host" in m.group(2), m.group(2)
    assert not up.auth_commands and not up.received(), "talked to an unverified server"


def test_self_signed_certificate(tmp_path, upstreams, certs):
    up = upstreams(tls="starttls", cert=certs.selfsigned, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    conf = write_conf(tmp_path, [smtp_section("up", up.port, ca=certs.ca, password_file=pw)])
    rc, report, text = check_json(conf)
    assert rc == 1, text
    bad = failed_step(report[0])
    assert bad["name"] == "certificate" and "ca_file" in bad["hint"], bad


def test_connection_refused(tmp_path):
    port = free_port()          # nothing listens there
    conf = write_conf(tmp_path, [smtp_section("up", port, host="127.0.0.1",
                                              password_file=secret_file(tmp_path / "pw",
                                                                        PASSWORD))])
    rc, out, err = check(conf)
    assert rc == 1, out + err
    assert re.search(r"^  \[ ok \] dns +127\.0\.0\.1 resolves to 127\.0\.0\.1", out, re.M), out
    m = re.search(r"^  \[FAIL\] tcp +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert "Connection refused" in m.group(1) and str(port) in m.group(1), m.group(1)
    assert "port" in m.group(2) and "firewall" in m.group(2), m.group(2)


def test_unresolvable_host(tmp_path):
    conf = write_conf(tmp_path, [smtp_section("up", 587, host="no-such-host.invalid")])
    rc, report, text = check_json(conf)
    assert rc == 1, text
    bad = failed_step(report[0])
    assert bad["name"] == "dns" and "host" in bad["hint"], bad


def test_send_delivers_exactly_one(tmp_path, upstreams, certs):
    up, conf = good_setup(tmp_path, upstreams, certs)
    rc, out, err = check(conf, "--send", "someone@example.net", "--from", "app@client.test")
    assert rc == 0, out + err
    assert re.search(r"^  \[ ok \] send +one test message sent to someone@example.net: 250",
                     out, re.M), out
    msgs = up.wait_messages(1)
    assert len(msgs) == 1 and up.data_attempts == 1, msgs
    assert msgs[0]["rcpts"] == ["someone@example.net"], msgs
    assert msgs[0]["mail_from"] == "app@client.test" and msgs[0]["tls"] and msgs[0]["auth"] == "app"
    assert b"Subject: Postern check of upstream up" in msgs[0]["data"]
    assert PASSWORD not in out + err


def test_json_shape_and_route(tmp_path, upstreams, certs):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    dead = free_port()
    conf = write_conf(tmp_path, [smtp_section("good", up.port, ca=certs.ca, password_file=pw),
                                 smtp_section("dead", dead, host="127.0.0.1", password_file=pw)],
                      [("billing", "dead"), ("default", "good")])
    rc, report, text = check_json(conf)
    assert rc == 1, text
    assert isinstance(report, list) and [r["upstream"] for r in report] == ["good", "dead"]
    for r in report:
        assert set(r) >= {"upstream", "type", "ok", "steps", "transcript"}, r.keys()
        assert r["type"] == "smtp" and isinstance(r["transcript"], list)
        for s in r["steps"]:
            assert set(s) == {"name", "ok", "detail", "hint"}, s
            assert isinstance(s["ok"], bool) and isinstance(s["detail"], str)
            assert s["hint"] is None or isinstance(s["hint"], str)
    assert report[0]["ok"] and not report[1]["ok"]
    assert any(line.startswith("> AUTH PLAIN ***") for line in report[0]["transcript"])
    assert PASSWORD not in text
    # one route: only its upstream
    rc, report, text = check_json(conf, "default")
    assert rc == 0 and [r["upstream"] for r in report] == ["good"], text
    rc, report, text = check_json(conf, "billing")
    assert rc == 1 and [r["upstream"] for r in report] == ["dead"], text
    assert failed_step(report[0])["name"] == "tcp"


def test_cannot_check_exits_2(tmp_path, upstreams, certs):
    up, conf = good_setup(tmp_path, upstreams, certs)
    rc, out, err = check(conf, "nosuchroute")
    assert rc == 2 and "nosuchroute" in err, out + err
    with open(conf, "a") as f:
        f.write("[upstream broken]\ntype = smtp\nno_such_key = 1\n")
    rc, out, err = check(conf)
    assert rc == 2 and "no_such_key" in err, out + err
    assert up.connections == 0


# ---------------------------------------------------------------------------------------------
# HTTP upstreams: the key is checked, nothing is sent

def sendgrid_conf(tmp_path, api, key):
    kf = secret_file(tmp_path / "sg.key", key)
    return write_conf(tmp_path, [f"[upstream sg]\ntype = sendgrid\napi_key_file = {kf}\n"
                                 f"api_url = {api.url}\n\n"], [("default", "sg")])


def test_sendgrid_key_with_mail_send(tmp_path, api):
    conf = sendgrid_conf(tmp_path, api, api.key)
    rc, out, err = check(conf)
    assert rc == 0, out + err
    assert re.search(r"^  \[ ok \] key +the API key is valid and has the mail.send scope", out,
                     re.M), out
    assert [r.path for r in api.requests] == ["/v3/scopes"]
    assert api.requests[0].headers["Authorization"] == f"Bearer {api.key}"
    assert api.key not in out + err


def test_sendgrid_key_without_mail_send(tmp_path, api):
    api.rule(lambda r: r.path == "/v3/scopes", (200, {}, {"scopes": ["stats.read", "user.profile.read"]}))
    conf = sendgrid_conf(tmp_path, api, api.key)
    rc, report, text = check_json(conf)
    assert rc == 1, text
    bad = failed_step(report[0])
    assert bad["name"] == "key" and "lacks the mail.send scope" in bad["detail"], bad
    assert "Mail Send" in bad["hint"] and "API Keys" in bad["hint"], bad
    assert not api.posts("/v3/mail/send")


def test_sendgrid_wrong_key_401(tmp_path, api):
    conf = sendgrid_conf(tmp_path, api, "SG.wrong-key-do-not-print")
    rc, out, err = check(conf)
    assert rc == 1, out + err
    m = re.search(r"^  \[FAIL\] key +(.*)\n +fix: +(.*)$", out, re.M)
    assert m, out
    assert "HTTP 401" in m.group(1) and "authorization grant is invalid" in m.group(1), m.group(1)
    assert "api_key_file" in m.group(2) and "API Keys" in m.group(2), m.group(2)
    assert "SG.wrong-key-do-not-print" not in out + err
    assert not api.posts("/v3/mail/send")


def test_ses_sandbox_and_refused_key(tmp_path, api):
    kid = secret_file(tmp_path / "aws.id", "AKIDEXAMPLE123")
    sec = secret_file(tmp_path / "aws.secret", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    conf = write_conf(tmp_path, [f"[upstream ses]\ntype = ses\nregion = eu-west-1\n"
                                 f"api_url = {api.url}\naccess_key_id_file = {kid}\n"
                                 f"secret_access_key_file = {sec}\n\n"])
    api.rule(lambda r: r.path == "/v2/email/account",
             (200, {}, {"SendingEnabled": True, "ProductionAccessEnabled": False,
                        "SendQuota": {"Max24HourSend": 200.0, "SentLast24Hours": 3.0}}),
             (403, {"x-amzn-ErrorType": "UnrecognizedClientException:http://internal"},
              {"message": "The security token included in the request is invalid."}))
    rc, report, text = check_json(conf)
    assert rc == 0, text
    st = steps_of(report[0])
    assert st["account"]["ok"] and "sandbox" in st["account"]["detail"], st
    assert "production access" in st["account"]["hint"], st
    req = [r for r in api.requests if r.path == "/v2/email/account"][0]
    assert req.method == "GET" and req.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    rc, report, text = check_json(conf)
    assert rc == 1, text
    bad = failed_step(report[0])
    assert bad["name"] == "credentials" and "access_key_id_file" in bad["hint"], bad
    assert "wJalrXUtnFEMI" not in text
    assert not api.posts("/v2/email/outbound-emails")


# ---------------------------------------------------------------------------------------------
# OAuth2: the live token from the engine, then XOAUTH2

def test_xoauth2_with_live_token(tmp_path, upstreams, certs):
    from tokenserver import TokenServer
    client_id, client_secret = "00000000-1111-2222-3333-444444444444", "cs-" + "Zq9" * 12
    ts = TokenServer(clients={client_id: client_secret}, lifetime=3600).start()
    try:
        up = upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid)
        secret = secret_file(tmp_path / "client.secret", client_secret)
        section = smtp_section("m365", up.port, ca=certs.ca, auth="xoauth2",
                               username="noreply@clinic.test") + "oauth2 = idp\n\n"
        idp = (f"[oauth2 idp]\nprovider = microsoft\nflow = client_credentials\n"
               f"tenant = clinic.test\nclient_id = {client_id}\ntoken_url = {ts.url}\n"
               f"client_secret_file = {secret}\n\n")
        conf = write_conf(tmp_path, [section.replace("\n\noauth2", "\noauth2"), idp])
        rc, report, text = check_json(conf)
        assert rc == 0, text
        st = steps_of(report[0])
        assert st["token"]["ok"] and "[oauth2 idp]" in st["token"]["detail"], st
        assert st["auth"]["ok"] and "XOAUTH2" in st["auth"]["detail"], st
        assert st["rcpt"]["detail"].startswith("RCPT TO:<postmaster@clinic.test>"), st["rcpt"]
        assert [(u, ok) for u, _, ok in up.xoauth2_auths] == [("noreply@clinic.test", True)]
        for s in ts.secrets_issued() + [client_secret]:
            assert s not in text, "a token or the client secret is in the output"
        assert not up.received()
    finally:
        ts.stop()
