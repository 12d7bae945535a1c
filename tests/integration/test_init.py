# posternctl init, run inside a network namespace whose dnsmasq serves the senders' domains: MX
# records that name Microsoft 365 and Google hosts, an RFC 6186 _submission._tcp SRV record for a
# generic server (at an address outside 127/8), and a domain nothing can be told of. The
# upstreams it is aimed at (aiosmtpd with certificates made by openssl, the OAuth2 token
# endpoint, the SendGrid/SES stand-in) listen in that namespace too. Each configuration written
# must pass `postern -n` and the doctor init runs must be green against them; questions are
# answered through a pseudo-terminal, secrets typed with echo off.
import base64
import hashlib
import hmac
import os
import re
import select
import shlex
import subprocess
import time

import pytest

from apiserver import APIServer
from conftest import BAD_LOG, POSTERN, POSTERNCTL, SRCDIR, need_binary, register_secret, secret_file
from dnsns import IP, dns_namespace, in_netns
from tokenserver import TokenServer

M365 = "m365.test.example"
GMAIL = "gmail.test.example"
GENERIC = "generic.test.example"
UNKNOWN = "unknown.test.example"
README_DOMAIN = "clinic.example"
SRV_HOST = "mail.generic.test.example"
SRV_ADDR = "192.0.2.25"              # TEST-NET-1, on the namespace's loopback only
SRV_PORT = 10587
CLIENT_ID = "00000000-1111-2222-3333-444444444444"
CLIENT_SECRET = register_secret("cs-" + "Init7" * 8)
PASSWORD = register_secret("app-pass-Wd-0123")
AKID = "AKIAINITTEST0000001"
AWS_SECRET = register_secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYINITKEY")


@pytest.fixture
def ns(tmp_path):
    records = [f"--mx-host={M365},m365-test-example.mail.protection.outlook.com,0",
               f"--mx-host={README_DOMAIN},clinic-example.mail.protection.outlook.com,0",
               f"--mx-host={GMAIL},aspmx.l.google.com,1",
               f"--mx-host={GMAIL},alt1.aspmx.l.google.com,5",
               f"--mx-host={GENERIC},mx.{GENERIC},10",
               f"--srv-host=_submission._tcp.{GENERIC},{SRV_HOST},{SRV_PORT},0,1",
               f"--host-record={SRV_HOST},{SRV_ADDR}",
               f"--mx-host={UNKNOWN},mx.hoster.test.example,10"]
    with dns_namespace(tmp_path, records, local=("test.example", README_DOMAIN),
                       addresses=(f"{SRV_ADDR}/32",)) as name:
        yield name


@pytest.fixture
def inside(ns, upstreams):
    """Servers made in the namespace: inside(make) -> what make() returns; stopped after."""
    made = []

    def make(f):
        obj = in_netns(ns, f)
        made.append(obj)
        return obj

    yield make
    for obj in made:
        obj.stop()


def init(ns, *args, cwd=None, timeout=120):
    need_binary(POSTERNCTL)
    p = subprocess.run([IP, "netns", "exec", ns, POSTERNCTL, "init", *args], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=timeout, cwd=cwd)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    assert not BAD_LOG.search(err), err
    for s in (CLIENT_SECRET, PASSWORD, AWS_SECRET):
        assert s not in out + err, "a secret was printed"
    return p.returncode, out, err


def postern_n(conf):
    need_binary(POSTERN)
    p = subprocess.run([POSTERN, "-n", "-c", conf], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def sections(conf):
    """{section header: {key: value}} of the file init wrote (comments left out)."""
    out, cur = {}, None
    for line in open(conf):
        line = line.split(";", 1)[0].strip()
        if line.startswith("["):
            cur = out.setdefault(line.strip("[]"), {})
        elif "=" in line and cur is not None:
            k, v = line.split("=", 1)
            cur[k.strip()] = v.strip()
    return out


def assert_green(rc, out, err):
    assert rc == 0, out + err
    assert "[FAIL]" not in out, out
    assert re.search(r"^  \[ ok \] (rset|key|account) ", out, re.M), out


def assert_secret_file(path, content):
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
    assert open(path).read() == content + "\n"


def common(tmp_path, certs):
    return ["-c", str(tmp_path / "etc" / "postern.conf"), "--data-dir", str(tmp_path / "data"),
            "--ca-file", certs.ca]


def ses_smtp_password(secret, region):
    """AWS's published derivation, written here from its description, not from our C."""
    sig = hmac.new(("AWS4" + secret).encode(), b"11111111", hashlib.sha256).digest()
    for m in (region, "ses", "aws4_request", "SendRawEmail"):
        sig = hmac.new(sig, m.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"\x04" + sig).decode()


# ---------------------------------------------------------------------------------------------
# Microsoft 365, told by its MX host

def test_microsoft_365_client_credentials(tmp_path, ns, inside, upstreams, certs):
    ts = inside(lambda: TokenServer(clients={CLIENT_ID: CLIENT_SECRET}).start())
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid))
    cs = secret_file(tmp_path / "cs", CLIENT_SECRET)
    rc, out, err = init(ns, f"noreply@{M365}", *common(tmp_path, certs), "--flow",
                        "client_credentials", "--client-id", CLIENT_ID, "--client-secret-file", cs,
                        "--host", "localhost", "--port", str(up.port), "--token-url", ts.url)
    assert_green(rc, out, err)
    assert "Microsoft 365, told by the MX record of m365.test.example: " \
           "m365-test-example.mail.protection.outlook.com" in err, err
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    s = sections(conf)
    assert s["upstream microsoft365"]["auth"] == "xoauth2"
    assert s["upstream microsoft365"]["username"] == f"noreply@{M365}"
    o = s["oauth2 microsoft365"]
    assert (o["provider"], o["flow"], o["tenant"], o["client_id"]) == \
        ("microsoft", "client_credentials", M365, CLIENT_ID)
    assert o["client_secret_file"] == str(tmp_path / "etc" / "microsoft365-client.secret")
    assert_secret_file(o["client_secret_file"], CLIENT_SECRET)
    assert s["route default"]["upstream"] == "microsoft365"
    # the doctor logged in with a token the endpoint gave for the client credentials
    assert [(u, ok) for u, _, ok in up.xoauth2_auths] == [(f"noreply@{M365}", True)]
    assert ts.token_requests("client_credentials")
    assert "The application: host 127.0.0.1, port 587, STARTTLS off, no AUTH" in out, out
    assert not up.received()


def test_microsoft_365_device_code(tmp_path, ns, inside, upstreams, certs):
    ts = inside(lambda: TokenServer(clients={CLIENT_ID: None}).start())
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, xoauth2=ts.valid))
    need_binary(POSTERNCTL)
    p = subprocess.Popen([IP, "netns", "exec", ns, POSTERNCTL, "init", f"clerk@{M365}",
                          *common(tmp_path, certs), "--flow", "device_code", "--tenant",
                          "organizations", "--client-id", CLIENT_ID, "--host", "localhost",
                          "--port", str(up.port), "--token-url", ts.url],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, code = b"", None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and code is None:
        line = p.stdout.readline()
        if not line:
            break
        out += line
        m = re.search(rb"^\s+(\d{4}-\d{4})\s*$", line)
        code = m and m.group(1).decode()
    assert code, out + p.stderr.read()
    assert ts.approve(code)
    rest, err = p.communicate(timeout=60)
    out, err = (out + rest).decode(), err.decode()
    assert_green(p.returncode, out, err)
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    o = sections(conf)["oauth2 microsoft365"]
    assert (o["flow"], o["tenant"]) == ("device_code", "organizations") and \
        "client_secret_file" not in o
    # the tokens are where the daemon finds them, and the doctor used them
    assert os.stat(tmp_path / "data" / "oauth2" / "microsoft365.json").st_mode & 0o777 == 0o600
    assert [(u, ok) for u, _, ok in up.xoauth2_auths] == [(f"clerk@{M365}", True)]
    for s in ts.secrets_issued():
        assert s not in out + err


# ---------------------------------------------------------------------------------------------
# Google with an app password, told by its MX hosts

def test_gmail_app_password(tmp_path, ns, inside, upstreams, certs):
    user = f"office@{GMAIL}"
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, users={user: PASSWORD}))
    # Google shows app passwords in groups of four: the blanks are not part of it
    pw = secret_file(tmp_path / "pw", " ".join(PASSWORD[i:i + 4] for i in range(0, len(PASSWORD), 4)))
    rc, out, err = init(ns, user, *common(tmp_path, certs), "--password-file", pw,
                        "--host", "localhost", "--port", str(up.port))
    assert_green(rc, out, err)
    assert "Google (Gmail, Workspace), told by the MX record of gmail.test.example: " \
           "aspmx.l.google.com" in err, err
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream google"]
    assert (u["tls"], u["auth"], u["username"]) == ("starttls", "plain", user)
    assert_secret_file(u["password_file"], PASSWORD)
    assert [(m, login, ok) for m, login, ok, _ in up.auths] == [("PLAIN", user, True)]
    # without --host the preset is Google's own server
    rc, out, err = init(ns, user, "--password-file", pw, "--dry-run")
    assert rc == 0, err
    assert "host = smtp.gmail.com\nport = 587\n" in out and PASSWORD not in out, out


# ---------------------------------------------------------------------------------------------
# Amazon SES, over its API and over its SMTP endpoint

def test_ses_api(tmp_path, ns, inside, certs):
    api = inside(lambda: APIServer().start())
    api.rule(lambda r: r.path == "/v2/email/account",
             (200, {}, {"SendingEnabled": True, "ProductionAccessEnabled": True,
                        "SendQuota": {"Max24HourSend": 50000.0, "SentLast24Hours": 0.0}}))
    key = secret_file(tmp_path / "aws", AWS_SECRET)
    rc, out, err = init(ns, *common(tmp_path, certs), "--provider", "ses", "--region",
                        "eu-central-1", "--access-key-id", AKID, "--secret-access-key-file", key,
                        "--api-url", api.url)
    assert_green(rc, out, err)
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream ses"]
    assert (u["type"], u["region"], u["api_url"]) == ("ses", "eu-central-1", api.url)
    assert_secret_file(u["access_key_id_file"], AKID)
    assert_secret_file(u["secret_access_key_file"], AWS_SECRET)
    req = [r for r in api.requests if r.path == "/v2/email/account"][0]
    assert f"Credential={AKID}/" in req.headers["Authorization"]
    assert "/eu-central-1/ses/aws4_request" in req.headers["Authorization"]
    assert not api.posts("/v2/email/outbound-emails")


def test_ses_smtp(tmp_path, ns, inside, upstreams, certs):
    derived = register_secret(ses_smtp_password(AWS_SECRET, "us-east-2"))
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, users={AKID: derived}))
    key = secret_file(tmp_path / "aws", AWS_SECRET)
    rc, out, err = init(ns, *common(tmp_path, certs), "--provider", "ses", "--transport", "smtp",
                        "--region", "us-east-2", "--access-key-id", AKID,
                        "--secret-access-key-file", key, "--host", "localhost",
                        "--port", str(up.port))
    assert_green(rc, out, err)
    assert derived not in out + err
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream ses"]
    assert (u["type"], u["username"], u["auth"]) == ("smtp", AKID, "plain")
    assert_secret_file(u["password_file"], derived)
    assert [(login, ok) for _, login, ok, _ in up.auths] == [(AKID, True)]
    rc, out, err = init(ns, "--provider", "ses", "--transport", "smtp", "--region", "us-east-2",
                        "--access-key-id", AKID, "--secret-access-key-file", key, "--dry-run")
    assert rc == 0 and "host = email-smtp.us-east-2.amazonaws.com\n" in out, out + err


# ---------------------------------------------------------------------------------------------
# SendGrid over its API

def test_sendgrid_api(tmp_path, ns, inside, certs):
    api = inside(lambda: APIServer(key=register_secret("SG.init-test-key-0123")).start())
    key = secret_file(tmp_path / "sg", api.key)
    rc, out, err = init(ns, "noreply@mail.test.example", *common(tmp_path, certs), "--provider",
                        "sendgrid", "--api-key-file", key, "--api-url", api.url)
    assert_green(rc, out, err)
    assert api.key not in out + err
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream sendgrid"]
    assert (u["type"], u["api_url"]) == ("sendgrid", api.url)
    assert_secret_file(u["api_key_file"], api.key)
    assert [r.path for r in api.requests] == ["/v3/scopes"]


# ---------------------------------------------------------------------------------------------
# A server found by its RFC 6186 SRV record, and the application's own AUTH user

def test_generic_host_found_by_srv(tmp_path, ns, inside, upstreams, certs):
    crt = certs.leaf("generic", SRV_HOST, f"DNS:{SRV_HOST}")
    up = inside(lambda: upstreams(tls="starttls", cert=crt, users={"relay": PASSWORD},
                                  host=SRV_ADDR, port=SRV_PORT))
    pw = secret_file(tmp_path / "pw", PASSWORD)
    app_pw = secret_file(tmp_path / "app.pw", register_secret("the-apps-own-pass"))
    rc, out, err = init(ns, f"billing@{GENERIC}", *common(tmp_path, certs), "--username", "relay",
                        "--password-file", pw, "--app-user", "legacyapp", "--app-password-file",
                        app_pw)
    assert_green(rc, out, err)
    assert f"found by the RFC 6186 SRV record of {GENERIC}: {SRV_HOST} port {SRV_PORT}" in err, err
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream smarthost"]
    assert (u["host"], u["port"], u["tls"], u["username"]) == \
        (SRV_HOST, str(SRV_PORT), "starttls", "relay")
    assert re.search(rf"^  \[ ok \] dns +{re.escape(SRV_HOST)} .*{SRV_ADDR}", out, re.M), out
    assert [(login, ok) for _, login, ok, _ in up.auths] == [("relay", True)]
    # the application's user is in the sasldb, and the line says how to log in
    p = subprocess.run([POSTERNCTL, "-c", conf, "user", "list"], capture_output=True, timeout=60)
    assert p.stdout.decode().split() == ["legacyapp"], p.stdout + p.stderr
    assert ("The application: host 127.0.0.1, port 587, STARTTLS off, AUTH LOGIN (or PLAIN), "
            "user legacyapp") in out, out


# ---------------------------------------------------------------------------------------------
# A domain whose provider cannot be told: scripts are told which flag, a terminal is asked

def test_unknown_provider_needs_host_without_a_terminal(tmp_path, ns):
    rc, out, err = init(ns, f"someone@{UNKNOWN}", "-c", str(tmp_path / "p.conf"))
    assert rc == 64, out + err
    assert f"the provider of {UNKNOWN} could not be told (MX mx.hoster.test.example" in err, err
    assert "give --host" in err, err
    assert not os.path.exists(tmp_path / "p.conf")


class Pty:
    """A program on a pseudo-terminal: what it printed, and answers typed at its prompts."""

    def __init__(self, argv, cwd=None):
        self.master, slave = os.openpty()
        self.p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                  start_new_session=True)
        os.close(slave)
        self.text = b""

    def expect(self, pattern, timeout=30):
        deadline = time.monotonic() + timeout
        while not re.search(pattern.encode(), self.text):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in:\n{self.text.decode('utf-8', 'replace')}"
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"ended before {pattern!r}:\n{self.text.decode('utf-8', 'replace')}"
                self.text += chunk

    def type(self, line):
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                self.text += chunk
                if not chunk:
                    break
            elif self.p.poll() is not None:
                break
        rc = self.p.wait(timeout=10)
        os.close(self.master)
        return rc, self.text.decode("utf-8", "replace").replace("\r\n", "\n")


def test_unknown_provider_asks_host_and_port_on_a_terminal(tmp_path, ns, inside, upstreams,
                                                           certs):
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, users={"me": PASSWORD}))
    need_binary(POSTERNCTL)
    t = Pty([IP, "netns", "exec", ns, POSTERNCTL, "init", f"someone@{UNKNOWN}",
             *common(tmp_path, certs)])
    t.expect(r"SMTP server to send through \(host name\): ")
    t.type("localhost")
    t.expect(r"Its port \(587 STARTTLS, 465 TLS\) \[587\]: ")
    t.type(str(up.port))
    t.expect(rf"Login at localhost \(- for none\) \[someone@{UNKNOWN}\]: ")
    t.type("me")
    t.expect(r"Password for me at localhost: ")
    t.type(PASSWORD)
    t.expect(r"Local user for the application's AUTH \(- for none\) \[-\]: ")
    t.type("-")
    rc, text = t.finish()
    assert rc == 0, text
    assert PASSWORD not in text, "the password was echoed"
    assert "[FAIL]" not in text and re.search(r"^  \[ ok \] rset ", text, re.M), text
    conf = str(tmp_path / "etc" / "postern.conf")
    postern_n(conf)
    u = sections(conf)["upstream smarthost"]
    assert (u["host"], u["port"], u["username"]) == ("localhost", str(up.port), "me")
    assert_secret_file(u["password_file"], PASSWORD)
    assert [(login, ok) for _, login, ok, _ in up.auths] == [("me", True)]


# ---------------------------------------------------------------------------------------------
# The commands the README and posternctl(8) show, run as written (posternctl: the one built)

def documented_init_commands():
    cmds = set()
    for doc in ("README.md", os.path.join("doc", "posternctl.8")):
        for line in open(os.path.join(SRCDIR, doc)):
            m = re.match(r"^(posternctl init .*?)\s*(#.*)?$", line.strip().replace("\\-", "-"))
            if m:
                cmds.add(m.group(1))
    return cmds


README_INTERACTIVE = f"posternctl init noreply@{README_DOMAIN} --dry-run"
README_SCRIPTED = ("posternctl init app@clinic.example --provider sendgrid --api-key-file "
                   "sendgrid.key --app-user app --dry-run")


def test_documented_commands_are_these():
    assert documented_init_commands() == {README_INTERACTIVE, README_SCRIPTED}


def test_readme_interactive_dry_run(tmp_path, ns):
    argv = shlex.split(README_INTERACTIVE)
    t = Pty([IP, "netns", "exec", ns, POSTERNCTL] + argv[1:], cwd=tmp_path)
    t.expect(r"Mailbox that sends \(the login\) \[noreply@clinic.example\]: ")
    t.type("")
    t.expect(r"OAuth2 flow: .* \[client_credentials\]: ")
    t.type("")
    t.expect(r"Tenant \(its domain or directory ID\) \[clinic.example\]: ")
    t.type("")
    t.expect(r"Application \(client\) ID: ")
    t.type(CLIENT_ID)
    t.expect(r"Client secret \(its value\): ")
    t.type(CLIENT_SECRET)
    rc, text = t.finish()
    assert rc == 0, text
    assert CLIENT_SECRET not in text
    assert "Microsoft 365, told by the MX record of clinic.example" in text, text
    assert f"client_id = {CLIENT_ID}\n" in text and "host = smtp.office365.com\n" in text, text
    assert "would write the client secret to /etc/postern/microsoft365-client.secret" in text
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["dnsmasq.log"], os.listdir(tmp_path)


def test_readme_scripted_dry_run(tmp_path, ns):
    secret_file(tmp_path / "sendgrid.key", register_secret("SG.readme-example-key"))
    before = sorted(os.listdir(tmp_path))
    p = subprocess.run([IP, "netns", "exec", ns, POSTERNCTL] + shlex.split(README_SCRIPTED)[1:],
                       capture_output=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 0, out + err
    assert "[upstream sendgrid]\ntype = sendgrid\n" in out, out
    assert "SG.readme-example-key" not in out + err
    assert "The application: host 127.0.0.1, port 587, STARTTLS off, AUTH LOGIN (or PLAIN), " \
           "user app" in out, out
    assert sorted(os.listdir(tmp_path)) == before


def test_existing_configuration_is_replaced_only_with_yes(tmp_path, ns):
    conf = tmp_path / "p.conf"
    conf.write_text("[postern]\n")
    key = secret_file(tmp_path / "sg", register_secret("SG.replace-test-key"))
    args = ("--provider", "sendgrid", "--api-key-file", key, "-c", str(conf), "--data-dir",
            str(tmp_path / "data"), "--no-check")
    rc, out, err = init(ns, *args)
    assert rc == 73 and "exists; nothing written (--yes replaces it" in err, out + err
    assert conf.read_text() == "[postern]\n" and not os.path.exists(tmp_path / "sendgrid.key")
    rc, out, err = init(ns, *args, "--yes")
    assert rc == 0, out + err
    assert "[upstream sendgrid]" in conf.read_text() and "The doctor" not in out
    assert_secret_file(tmp_path / "sendgrid.key", "SG.replace-test-key")
    postern_n(str(conf))


def test_a_red_doctor_is_the_exit_status(tmp_path, ns, inside, upstreams, certs):
    user = f"office@{GMAIL}"
    up = inside(lambda: upstreams(tls="starttls", cert=certs.good, users={user: PASSWORD}))
    pw = secret_file(tmp_path / "pw", register_secret("not-the-app-password"))
    rc, out, err = init(ns, user, *common(tmp_path, certs), "--password-file", pw,
                        "--host", "localhost", "--port", str(up.port))
    assert rc == 1, out + err
    assert re.search(r"^  \[FAIL\] auth ", out, re.M), out
    assert "the doctor found a problem (above); fix it in" in err, err
    # the file is written all the same, and still one postern accepts
    postern_n(str(tmp_path / "etc" / "postern.conf"))
    assert [(login, ok) for _, login, ok, _ in up.auths] == [(user, False)]
