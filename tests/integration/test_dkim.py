# DKIM signing of mail leaving through an smtp upstream: what the upstream (aiosmtpd on loopback)
# receives is checked by two independent verifiers, dkimpy and OpenDKIM's opendkim-testmsg, each
# looking the public keys up in real DNS: dnsmasq in a network namespace the test creates serves
# the TXT records, and the verifiers run inside that namespace. RSA and Ed25519 (RFC 8463),
# relaxed and simple canonicalization, long lines, 8-bit bodies, SMTPUTF8, folded headers.
import base64
import itertools
import os
import re
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import POSTERN, POSTERNCTL, need_binary
from test_upstream import FAST, wait_rcpt
from upstream import upstream_section

PY = "/usr/bin/python3"
IP = shutil.which("ip") or "/usr/sbin/ip"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
TESTMSG = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
DOMAIN = "sign.test.example"
OTHER = "other.test.example"
SENDER = f"app@{DOMAIN}"
_ns_counter = itertools.count()


def _run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, timeout=60, **kw)


def make_key(path, kind):
    args = ["genpkey", "-algorithm", "ed25519"] if kind == "ed25519" else \
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    assert _run(OPENSSL, *args, "-out", str(path)).returncode == 0
    os.chmod(path, 0o600)
    return str(path)


def dns_txt(keyfile, kind):
    """The DKIM TXT record of a private key, as an operator publishes it."""
    der = _run(OPENSSL, "pkey", "-in", keyfile, "-pubout", "-outform", "DER").stdout
    p = base64.b64encode(der[-32:] if kind == "ed25519" else der).decode()
    return f"v=DKIM1; k={'ed25519' if kind == 'ed25519' else 'rsa'}; p={p}"


class DNS:
    """A network namespace whose loopback has dnsmasq answering TXT records; run() executes a
    command inside it (its resolv.conf points at that dnsmasq)."""

    def __init__(self, tmp, records, log_queries=None):
        if not os.path.exists(DNSMASQ):
            pytest.fail("dnsmasq is not installed (dnsmasq-base, TEST_PKGS in scripts/dev.sh)")
        self.name = f"pdkim{os.getpid()}x{next(_ns_counter)}"
        self.etc = f"/etc/netns/{self.name}"
        self.proc = None
        p = _run(IP, "netns", "add", self.name)
        if p.returncode:
            pytest.skip(f"this container cannot create network namespaces: {p.stderr.decode().strip()}")
        try:
            assert _run(IP, "-n", self.name, "link", "set", "lo", "up").returncode == 0
            os.makedirs(self.etc, exist_ok=True)
            with open(f"{self.etc}/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
            args = [IP, "netns", "exec", self.name, DNSMASQ, "--keep-in-foreground",
                    "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
                    "--pid-file=", "--listen-address=127.0.0.1", "--bind-interfaces", "--port=53",
                    "--local=/example/", "--local=/org/"]
            if log_queries:
                args += ["--log-queries", f"--log-facility={log_queries}"]
            for name, text in records.items():
                # one character-string holds at most 255 octets (RFC 1035 3.3.14); dnsmasq
                # takes each comma-separated piece as one (quotes would be kept as text)
                assert "," not in text
                parts = ",".join(text[i:i + 250] for i in range(0, len(text), 250))
                args.append(f"--txt-record={name},{parts}")
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=open(os.path.join(tmp, "dnsmasq.log"), "wb"))
            deadline = time.monotonic() + 20
            while b":53" not in _run(IP, "netns", "exec", self.name, "ss", "-Hlun").stdout:
                assert self.proc.poll() is None, open(os.path.join(tmp, "dnsmasq.log")).read()
                assert time.monotonic() < deadline, "dnsmasq did not start"
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def run(self, *args, **kw):
        return _run(IP, "netns", "exec", self.name, *args, **kw)

    def close(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        _run(IP, "netns", "del", self.name)
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkimkeys")
    return {"rsa": make_key(d / "rsa.pem", "rsa"), "ed25519": make_key(d / "ed.pem", "ed25519"),
            "other": make_key(d / "other.pem", "rsa")}


@pytest.fixture(scope="module")
def dns(tmp_path_factory, keys):
    d = DNS(str(tmp_path_factory.mktemp("dkimdns")), {
        f"rsa1._domainkey.{DOMAIN}": dns_txt(keys["rsa"], "rsa"),
        f"ed1._domainkey.{DOMAIN}": dns_txt(keys["ed25519"], "ed25519"),
        f"rsa1._domainkey.{OTHER}": dns_txt(keys["other"], "rsa"),
    })
    yield d
    d.close()


def dkim_sections(keys, canon="relaxed/relaxed", match=None, which=("rsa", "ed25519")):
    out = ""
    for kind in which:
        sel, alg = ("rsa1", "rsa-sha256") if kind == "rsa" else ("ed1", "ed25519-sha256")
        out += (f"\n[dkim {kind}]\ndomain = {DOMAIN}\nselector = {sel}\nkey_file = {keys[kind]}\n"
                f"algorithm = {alg}\ncanonicalization = {canon}\n")
        if match:
            out += f"match = {match}\n"
    return out


def relay_conf(port, extra):
    return upstream_section("up", port, tls="none") + "\n[route default]\nupstream = up\n" + extra


def header_fields(raw):
    """The header section of raw as a list of whole fields (folded lines kept)."""
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return re.findall(rb"[^ \t\r\n][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", head)


def signatures(raw):
    return [f for f in header_fields(raw) if f.lower().startswith(b"dkim-signature:")]


def only_signature(raw, i):
    """raw with every DKIM-Signature but the i-th taken out (each verifier checks one)."""
    sigs = signatures(raw)
    out = raw
    for j, s in enumerate(sigs):
        if j != i:
            out = out.replace(s, b"", 1)
    return out


DKIMPY = r"""
import sys, dkim
raw = open(sys.argv[1], 'rb').read()
try:
    print(dkim.DKIM(raw).verify())
except dkim.ValidationError as e:     # a body hash mismatch is raised, not returned
    print('False', e)
"""


def verdicts(dns, tmp_path, raw):
    """For each DKIM-Signature of raw: (d=, s=, dkimpy's verdict, opendkim-testmsg's)."""
    out = []
    for i, sig in enumerate(signatures(raw)):
        one = only_signature(raw, i)
        path = tmp_path / f"verify{i}.eml"
        path.write_bytes(one)
        py = dns.run(PY, "-c", DKIMPY, str(path))
        assert py.returncode == 0, py.stderr.decode()
        with open(path, "rb") as f:
            od = dns.run(TESTMSG, stdin=f)
        tags = dict(re.findall(rb"\b([ds])=([^;\s]+)", re.sub(rb"\s+", b" ", sig)))
        out.append((tags[b"d"].decode(), tags[b"s"].decode(), py.stdout.strip() == b"True",
                    od.returncode == 0 and not od.stdout.strip() and not od.stderr.strip()))
    return out


def submit(d, sender, rcpts, content, options=()):
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        code, resp = s.mail(sender, list(options))
        assert code == 250, resp
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, resp = s.data(content)
        assert code == 250, resp
    return re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()


LONG = "x" * 998          # the longest line RFC 5321 allows
MESSAGES = {
    "plain": (f"From: App <{SENDER}>\r\nTo: someone@example.net\r\nSubject: plain\r\n\r\n"
              "Hello.\r\n.a line that starts with a dot\r\n\r\n\r\n").encode(),
    "folded": (f"From:\r\n  \"App, the clinic one\"\r\n\t<{SENDER}>\r\nTo: a@example.net,\r\n"
               "    b@example.net\r\nSubject: a subject folded\r\n  over   two lines \r\n"
               "Content-Type: text/plain;\r\n\tcharset=us-ascii\r\n\r\nBody  with   blanks \t\r\n"
               "trailing blanks   \r\n").encode(),
    "long": (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: long lines\r\n\r\n"
             f"{LONG}\r\nshort\r\n{'word ' * 199}abc\r\n").encode(),
    # over 998 octets: Postern re-encodes the part as quoted-printable, then signs
    "reencoded": (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: re-encoded\r\n"
                  "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                  f"{'Zürich ' * 400}\r\nend\r\n").encode(),
    "8bit": (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Zürich, ½ € ✓\r\n").encode(),
    # bigger than any buffer of the signer's own: an attachment of 300 KB
    "large": (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: large\r\n"
              "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
              "--b\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n--b\r\n"
              "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
              "Content-Disposition: attachment; filename=a.bin\r\n\r\n" +
              ("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
               * 4200) + "--b--\r\n").encode(),
    "smtputf8": (f"From: Jörg <jörg@{DOMAIN}>\r\nTo: pépé@example.net\r\nSubject: Grüße\r\n"
                 "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\nÜmlauts everywhere\r\n").encode(),
}


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_signed_for_both_verifiers(daemon_factory, upstreams, keys, dns, tmp_path, canon):
    need_binary(TESTMSG)
    up = upstreams()
    d = daemon_factory(FAST, relay_conf(up.port, dkim_sections(keys, canon)))
    for n, (tag, content) in enumerate(MESSAGES.items(), 1):
        opts = {"8bit": ["BODY=8BITMIME"], "reencoded": ["BODY=8BITMIME"],
                "smtputf8": ["SMTPUTF8", "BODY=8BITMIME"]}.get(tag, [])
        sender = f"jörg@{DOMAIN}" if tag == "smtputf8" else SENDER
        rcpt = "pépé@example.net" if tag == "smtputf8" else "someone@example.net"
        qid = submit(d, sender, [rcpt], content, opts)
        got = up.wait_messages(n)[-1]["data"]
        wait_rcpt(d, qid, rcpt, "sent")
        sigs = signatures(got)
        assert len(sigs) == 2, (tag, got[:800])
        if tag == "reencoded":
            assert b"Content-Transfer-Encoding: quoted-printable" in got, got[:1000]
            assert max(len(l) for l in got.split(b"\r\n")) <= 998
        assert any(b"a=rsa-sha256" in s for s in sigs) and any(b"a=ed25519-sha256" in s for s in sigs)
        assert all(f"c={canon}".encode() in re.sub(rb"\s+", b"", s) for s in sigs), sigs
        got_v = sorted(verdicts(dns, tmp_path, got))
        assert got_v == [(DOMAIN, "ed1", True, True), (DOMAIN, "rsa1", True, True)], (tag, got_v, got[:600])
        # a verifier that says yes to everything would pass the above: a changed body fails
        tampered = got.replace(b"\r\n\r\n", b"\r\n\r\nInserted line.\r\n", 1)
        assert [v[2:] for v in verdicts(dns, tmp_path, tampered)] == [(False, False)] * 2, tag


def test_oversigned_headers(daemon_factory, upstreams, keys, dns, tmp_path):
    """From, Subject, To... are signed once more than they occur: a second From or a Subject
    added on the way breaks the signature."""
    up = upstreams()
    d = daemon_factory(FAST, relay_conf(up.port, dkim_sections(keys, which=("rsa",))))
    submit(d, SENDER, ["someone@example.net"], MESSAGES["plain"])
    got = up.wait_messages(1)[0]["data"]
    h = re.search(rb"\bh=([^;]+)", re.sub(rb"\s+", b"", signatures(got)[0])).group(1).lower().split(b":")
    for name in (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"cc",
                 b"mime-version", b"content-type"):
        assert h.count(name) == got.lower().count(b"\r\n" + name + b":") + \
            got.lower().startswith(name + b":") + 1, (name, h)
    assert verdicts(dns, tmp_path, got)[0][2:] == (True, True)
    added = got.replace(b"\r\n\r\n", b"\r\nFrom: ceo@" + DOMAIN.encode() + b"\r\n\r\n", 1)
    assert verdicts(dns, tmp_path, added)[0][2:] == (False, False)


def test_what_is_signed_and_what_not(daemon_factory, upstreams, keys, dns, tmp_path):
    """Only a From: domain with a key is signed; a message that already has a signature of the
    same domain and selector is not signed again; match = sender follows the envelope."""
    import dkim
    up = upstreams()
    d = daemon_factory(FAST, relay_conf(up.port, dkim_sections(keys)))
    submit(d, SENDER, ["someone@example.net"],
           b"From: someone@" + OTHER.encode() + b"\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n")
    assert signatures(up.wait_messages(1)[0]["data"]) == []
    # the application signed with rsa1 itself: Postern adds ed1 only
    msg = (f"From: {SENDER}\r\nTo: x@example.net\r\nSubject: pre-signed\r\n\r\nbody\r\n").encode()
    with open(keys["rsa"], "rb") as f:
        pre = dkim.sign(msg, b"rsa1", DOMAIN.encode(), f.read(), include_headers=[b"from", b"subject"])
    submit(d, SENDER, ["someone@example.net"], pre + msg)
    got = up.wait_messages(2)[1]["data"]
    assert sorted(v[:2] for v in verdicts(dns, tmp_path, got)) == [(DOMAIN, "ed1"), (DOMAIN, "rsa1")]
    assert all(v[2] and v[3] for v in verdicts(dns, tmp_path, got))
    assert got.count(b"s=rsa1") == 1

    up2 = upstreams()
    d2 = daemon_factory(FAST, relay_conf(up2.port, dkim_sections(keys, match="sender",
                                                                 which=("rsa",))))
    submit(d2, SENDER, ["someone@example.net"],
           b"From: someone@" + OTHER.encode() + b"\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n")
    got = up2.wait_messages(1)[0]["data"]
    assert [v for v in verdicts(dns, tmp_path, got)] == [(DOMAIN, "rsa1", True, True)]


def test_key_file_checked_at_start(tmp_path, keys):
    need_binary(POSTERN)
    key = tmp_path / "k.pem"
    key.write_bytes(open(keys["rsa"], "rb").read())
    conf = tmp_path / "p.conf"

    def check(extra):
        conf.write_text(f"[postern]\ndata_dir = {tmp_path}/data\n" + extra)
        p = _run(POSTERN, "-n", "-c", str(conf))
        return p.returncode, p.stdout.decode() + p.stderr.decode()

    sec = f"[dkim a]\ndomain = {DOMAIN}\nselector = s1\nkey_file = {key}\n"
    os.chmod(key, 0o644)
    rc, out = check(sec)
    assert rc == 1 and f"chmod 600 {key}" in out, out
    os.chmod(key, 0o600)
    assert check(sec)[0] == 0
    rc, out = check(sec + "algorithm = ed25519-sha256\n")
    assert rc == 1 and "needs an ed25519 key" in out, out
    rc, out = check(f"[dkim a]\ndomain = {DOMAIN}\nselector = s1\nkey_file = {tmp_path}/none.pem\n")
    assert rc == 1 and f"posternctl dkim keygen {DOMAIN} s1" in out, out
    rc, out = check(f"[dkim a]\ndomain = {DOMAIN}\n")
    assert rc == 1 and "needs domain, selector and key_file" in out, out


# ---------------------------------------------------------------------------------------------
# posternctl dkim keygen and dkim check, against the namespace's DNS

def zone_record(out):
    """The TXT record text of keygen's zone-file line: its quoted strings joined."""
    line = next(l for l in out.splitlines() if "._domainkey." in l and " IN TXT " in l)
    return line.split(" IN TXT ")[0].rstrip("."), "".join(re.findall(r'"([^"]*)"', line))


def test_keygen_and_check(tmp_path):
    need_binary(POSTERNCTL)
    conf = tmp_path / "p.conf"
    conf.write_text(f"[postern]\ndata_dir = {tmp_path}/data\nuser = nobody\n"
                    f"[dkim rsa]\ndomain = {DOMAIN}\nselector = k1\nkey_file = {tmp_path}/k1.pem\n"
                    f"[dkim ed]\ndomain = {DOMAIN}\nselector = k2\nkey_file = {tmp_path}/k2.pem\n"
                    "algorithm = ed25519-sha256\n"
                    f"[dkim stale]\ndomain = {DOMAIN}\nselector = k3\nkey_file = {tmp_path}/k3.pem\n"
                    f"[dkim unpublished]\ndomain = {OTHER}\nselector = k4\nkey_file = {tmp_path}/k4.pem\n")

    def ctl(*args):
        p = _run(POSTERNCTL, "-c", str(conf), "dkim", *args)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    records = {}
    for sel in ("k1", "k2", "k3", "k4"):
        rc, out, err = ctl("keygen", DOMAIN if sel != "k4" else OTHER, sel)
        assert rc == 0, err
        st = os.stat(tmp_path / f"{sel}.pem")
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == 65534, (oct(st.st_mode), st.st_uid)
        assert "and sign with it" not in out, out          # its [dkim] section is there already
        name, text = zone_record(out)
        records[name] = text
    assert records[f"k1._domainkey.{DOMAIN}"].startswith("v=DKIM1; k=rsa; p=MIIB")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", records[f"k2._domainkey.{DOMAIN}"])
    # a key is never replaced, and one of another kind than its section says is refused
    rc, _, err = ctl("keygen", DOMAIN, "k1")
    assert rc != 0 and "never replaced" in err, err
    rc, _, err = ctl("keygen", DOMAIN, "k2", "--algorithm", "rsa-sha256")
    assert rc != 0 and "algorithm = ed25519-sha256" in err, err
    # outside a section: the key file named, and the section to add printed
    rc, out, err = ctl("keygen", "new.test.example", "s9", "--key-file", str(tmp_path / "n.pem"),
                       "--algorithm", "ed25519-sha256")
    assert rc == 0 and f"[dkim new.test.example-s9]\ndomain = new.test.example\nselector = s9\n" \
        f"key_file = {tmp_path}/n.pem\nalgorithm = ed25519-sha256" in out, out

    stale_key = make_key(tmp_path / "other.pem", "rsa")
    published = {n: t for n, t in records.items() if not n.endswith(OTHER)}
    published[f"k3._domainkey.{DOMAIN}"] = dns_txt(stale_key, "rsa")   # not k3's key
    dns = DNS(str(tmp_path), published)
    try:
        p = dns.run(POSTERNCTL, "-c", str(conf), "dkim", "check")
        out = p.stdout.decode()
        assert p.returncode == 1, out + p.stderr.decode()
        assert re.search(rf"^ok\s+dkim rsa: k1._domainkey.{DOMAIN} publishes the key", out, re.M), out
        assert re.search(rf"^ok\s+dkim ed: k2._domainkey.{DOMAIN} publishes the key", out, re.M), out
        assert re.search(rf"^PROBLEM\s+dkim stale: k3._domainkey.{DOMAIN} publishes another key", out, re.M), out
        assert "replace the record with: k3._domainkey." + DOMAIN + '. IN TXT ( "v=DKIM1; k=rsa; p=' in out
        assert re.search(rf"^PROBLEM\s+dkim unpublished: k4._domainkey.{OTHER}: ", out, re.M), out
        assert "publish: k4._domainkey." + OTHER + ". IN TXT (" in out
        # one domain, as JSON; every one of its keys good: exit 0
        p = dns.run(POSTERNCTL, "-c", str(conf), "--json", "dkim", "check", OTHER)
        assert p.returncode == 1
        import json
        items = json.loads(p.stdout)
        assert [i["status"] for i in items] == ["finding"], items
        conf.write_text(conf.read_text().split("[dkim stale]")[0])
        p = dns.run(POSTERNCTL, "-c", str(conf), "dkim", "check", DOMAIN)
        assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    finally:
        dns.close()


# ---------------------------------------------------------------------------------------------
# Inbound: DKIM verified and DMARC evaluated on mail to the MX listener. The daemon runs in the
# namespace (its resolver is dnsmasq there); the test speaks SMTP to it from a thread that has
# entered the namespace. Messages are signed here with dkimpy, whose verdicts are the reference.

CLONE_NEWNET = 0x40000000


class in_ns:
    """The calling thread inside the network namespace for the with-block."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            assert self.libc.setns(there, CLONE_NEWNET) == 0
        finally:
            os.close(there)
        return self

    def __exit__(self, *a):
        assert self.libc.setns(self.here, CLONE_NEWNET) == 0
        os.close(self.here)


SPF_ZONE = """\
goodmail.org TXT v=spf1 ip4:192.0.2.10 -all
quarmail.org TXT v=spf1 ip4:192.0.2.10 -all
evilmail.org TXT v=spf1 -all
"""


@pytest.fixture(scope="module")
def inbound_dns(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("indns")
    recs = {}
    for dom in ("goodmail.org", "quarmail.org", "sub.parentmail.org", "strictmail.org",
                "relaxedmail.org", "nonemail.org"):
        recs[f"rsa1._domainkey.{dom}"] = dns_txt(keys["rsa"], "rsa")
        recs[f"ed1._domainkey.{dom}"] = dns_txt(keys["ed25519"], "ed25519")
    recs["_dmarc.goodmail.org"] = "v=DMARC1; p=reject"
    recs["_dmarc.quarmail.org"] = "v=DMARC1; p=quarantine"
    recs["_dmarc.parentmail.org"] = "v=DMARC1; p=none; sp=reject"
    recs["_dmarc.strictmail.org"] = "v=DMARC1; p=reject; adkim=s; aspf=s"
    recs["_dmarc.relaxedmail.org"] = "v=DMARC1; p=reject"
    d = DNS(str(tmp), recs)
    d.keys = keys
    yield d
    d.close()


def ns_daemon(daemon_factory, dns, monkeypatch, tmp_path, mode):
    zone = tmp_path / "spf.zone"
    zone.write_text(SPF_ZONE)
    monkeypatch.setenv("POSTERN_SPF_ZONE_FILE", str(zone))
    monkeypatch.setenv("POSTERN_SPF_TEST_CLIENT_IP", "192.0.2.10")
    port = free_mx_port()
    d = daemon_factory(FAST, f"\n[listener mx]\naddress = 127.0.0.1:{port}\nrole = mx\n\n"
                             f"[inbound]\ndomains = in.example\nspf = tag\ndmarc = {mode}\n",
                       start=False)
    d.mx_port = port
    return ns_start(d, dns)


def ns_start(d, dns):
    """Starts the daemon made with start=False inside the namespace (its DNS is dnsmasq)."""
    log = open(d.logpath, "ab")
    d.proc = subprocess.Popen([IP, "netns", "exec", dns.name, POSTERN, "-c", d.conf, "-f"],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=d.workdir)
    log.close()
    with in_ns(dns.name):
        d.wait_ready()
    return d


def free_mx_port():
    from upstream import free_port
    return free_port()


def mx_send(d, dns, sender, raw):
    """(code, text) of the end of DATA for raw, sent to the MX listener inside the namespace."""
    with in_ns(dns.name):
        with smtplib.SMTP("127.0.0.1", d.mx_port, timeout=60) as s:
            s.ehlo("client.test")
            assert s.mail(sender)[0] == 250
            assert s.rcpt("bob@in.example")[0] == 250
            code, resp = s.data(raw)
    return code, resp.decode()


def sign(msg, domain, sel="rsa1", key="rsa", _at=None, _sel_tail="", **kw):
    import dkim
    if _at is not None:
        now = time.time
        time.time = lambda: _at
        try:
            return sign(msg, domain, sel, key, _sel_tail=_sel_tail, **kw)
        finally:
            time.time = now
    with open(key if os.path.exists(key) else _KEYS[key], "rb") as f:
        k = f.read()
    if sel == "ed1":
        der = _run(OPENSSL, "pkey", "-in", _KEYS["ed25519"], "-outform", "DER").stdout
        k = base64.b64encode(der[-32:])
        kw["signature_algorithm"] = b"ed25519-sha256"
    return dkim.sign(msg, (sel + _sel_tail).encode(), domain.encode(), k, **kw) + msg


_KEYS = {}


def records_by_subject(d, n, timeout=30):
    import json
    deadline = time.monotonic() + timeout
    while True:
        recs = json.loads(d.ctl("correspondence", "list", "--json").stdout)
        # keyed by the subject the Message-ID was made from (a test changes the Subject)
        got = {(r.get("message_id") or "").strip("<>").split("@")[0].replace("-", " "): r
               for r in recs if r.get("direction") == "in"}
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def plain(frm, subject, body="Hello there.\r\n"):
    return (f"From: {frm}\r\nTo: bob@in.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@x>\r\n\r\n{body}").encode()


def test_dkim_corpus_same_verdicts_as_dkimpy(daemon_factory, inbound_dns, monkeypatch, tmp_path):
    _KEYS.update(inbound_dns.keys)
    dns = inbound_dns
    base = lambda s: plain("Alice <alice@goodmail.org>", s)
    corpus = {}
    corpus["good rsa"] = sign(base("good rsa"), "goodmail.org")
    corpus["good ed25519"] = sign(base("good ed25519"), "goodmail.org", sel="ed1")
    corpus["good simple"] = sign(base("good simple"), "goodmail.org",
                                 canonicalize=(b"simple", b"simple"))
    m = sign(base("body changed"), "goodmail.org")
    corpus["body changed"] = m.replace(b"Hello there.", b"Hello there!")
    m = sign(base("header changed"), "goodmail.org")
    corpus["header changed"] = m.replace(b"Subject: header changed", b"Subject: header changeD")
    corpus["wrong key"] = sign(base("wrong key"), "goodmail.org", key="other")
    # dkimpy has no parameter for x=: the tag rides in on s= (tags are joined with "; "),
    # signed two days ago with a minute's lifetime (dkimpy forgives 10 hours of clock skew)
    past = int(time.time()) - 2 * 86400
    corpus["expired"] = sign(base("expired"), "goodmail.org", _at=past,
                             _sel_tail=f"; x={past + 60}")
    m = sign(base("l= appended"), "goodmail.org", length=True)
    corpus["l= appended"] = m + b"Appended after the signed length.\r\n"
    m = sign(base("l= changed"), "goodmail.org", length=True)
    corpus["l= changed"] = m.replace(b"Hello there.", b"Hello world.")
    m = sign(base("duplicate From"), "goodmail.org")
    corpus["duplicate From"] = b"From: ceo@goodmail.org\r\n" + m
    ed = sign(base("two signatures"), "goodmail.org", sel="ed1")
    corpus["two signatures"] = sign(ed, "goodmail.org")

    d = ns_daemon(daemon_factory, dns, monkeypatch, tmp_path, "tag")
    expect = {}
    for subject, raw in corpus.items():
        path = tmp_path / "m.eml"
        path.write_bytes(raw)
        ref = []
        for i in range(len(signatures(raw))):
            path.write_bytes(only_signature(raw, i))
            py = dns.run(PY, "-c", DKIMPY, str(path))
            ref.append(py.stdout.strip() == b"True")
        expect[subject] = ref
        code, text = mx_send(d, dns, "alice@goodmail.org", raw)
        assert code == 250, (subject, code, text)
    recs = records_by_subject(d, len(corpus))
    got = {s: [k["result"] == "pass" for k in recs[s]["authentication"]["dkim"]] for s in corpus}
    # signatures are listed top down by both
    assert got == expect, (got, expect)
    assert expect["good rsa"] == [True] and expect["body changed"] == [False], expect
    a = recs["good rsa"]["authentication"]
    assert a["spf"] == "pass"
    assert a["dkim"] == [{"domain": "goodmail.org", "selector": "rsa1", "result": "pass"}]
    assert a["dmarc"] == {"result": "pass", "policy": "reject", "from_domain": "goodmail.org"}
    assert recs["duplicate From"]["authentication"]["dmarc"]["result"] == "permerror"


@pytest.mark.parametrize("mode", ["tag", "enforce"])
def test_dmarc_policies_and_alignment(daemon_factory, inbound_dns, monkeypatch, tmp_path, mode):
    _KEYS.update(inbound_dns.keys)
    dns = inbound_dns
    cases = [
        # (subject, MAIL FROM, message, dmarc result, policy, refused under enforce)
        ("aligned dkim", "x@evilmail.org",
         sign(plain("a@goodmail.org", "aligned dkim"), "goodmail.org"), "pass", "reject", False),
        ("aligned spf", "bounce@goodmail.org", plain("a@goodmail.org", "aligned spf"),
         "pass", "reject", False),
        ("unaligned reject", "x@evilmail.org", plain("a@goodmail.org", "unaligned reject"),
         "fail", "reject", True),
        ("other domain signs", "x@evilmail.org",
         sign(plain("a@goodmail.org", "other domain signs"), "quarmail.org"), "fail", "reject", True),
        ("quarantine", "x@evilmail.org", plain("a@quarmail.org", "quarantine"),
         "fail", "quarantine", False),
        ("subdomain policy", "x@evilmail.org", plain("a@sub.parentmail.org", "subdomain policy"),
         "fail", "reject", True),
        ("strict alignment", "x@evilmail.org",
         sign(plain("a@mail.strictmail.org", "strict alignment"), "strictmail.org"),
         "fail", "reject", True),
        ("relaxed alignment", "x@evilmail.org",
         sign(plain("a@mail.relaxedmail.org", "relaxed alignment"), "relaxedmail.org"),
         "pass", "reject", False),
        ("no record", "x@evilmail.org", sign(plain("a@nonemail.org", "no record"), "nonemail.org"),
         "none", None, False),
    ]
    d = ns_daemon(daemon_factory, dns, monkeypatch, tmp_path, mode)
    kept = 0
    for subject, sender, raw, *_ , refused in cases:
        code, text = mx_send(d, dns, sender, raw)
        if mode == "enforce" and refused:
            assert code == 550 and text.startswith("5.7.1"), (subject, code, text)
        else:
            assert code == 250, (subject, code, text)
            kept += 1
    recs = records_by_subject(d, kept)
    for subject, sender, raw, result, policy, refused in cases:
        if mode == "enforce" and refused:
            assert subject not in recs, subject
            continue
        dm = recs[subject]["authentication"]["dmarc"]
        assert dm["result"] == result and dm["policy"] == policy, (subject, dm)
        assert dm["from_domain"] == re.search(rb"^From: \S+@(\S+)\r$", raw, re.M).group(1).decode()
    # the stored message carries the verdicts for any reader, below our Received-SPF
    import sqlite3
    con = sqlite3.connect(f"file:{d.data_dir}/postern.db?mode=ro", uri=True)
    bodies = [r[0] for r in con.execute("SELECT body FROM inbound_messages")]
    con.close()
    q = next(b for b in bodies if b"Subject: quarantine" in b)
    fields = header_fields(q)
    assert fields[0].startswith(b"Received-SPF: ")
    assert fields[1].startswith(b"Authentication-Results: relay.test.example;\r\n\tspf=fail "
                                b"smtp.mailfrom=evilmail.org;\r\n\tdkim=none;\r\n\tdmarc=fail "
                                b"(p=quarantine) header.from=quarmail.org\r\n"), fields[1]
    if mode == "enforce":
        assert "reject: DMARC policy of goodmail.org (p=reject)" in d.log_text()


def test_sendgrid_verdicts_kept_as_sendgrids(daemon_factory, tmp_path):
    """A parsed-mode Inbound Parse post carries SendGrid's dkim and SPF fields: the record keeps
    them as SendGrid's verdict, not as one of ours."""
    from test_inbound import curl_parse, http_daemon, parsed_fields
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\n")
    fields = [(k, v) for k, v in parsed_fields(attachments=0) if k not in ("dkim", "SPF",
                                                                          "attachment-info")]
    code, text = curl_parse(d, fields + [("dkim", "{@example.test : pass, @ESP.example : fail}"),
                                         ("SPF", "SoftFail")])
    assert code == 200, text
    other = {"subject": "Re: no verdicts",
             "headers": "From: Pat <pat@example.test>\nTo: reply+abc@reply.test\n"
                        "Subject: Re: no verdicts\nMessage-ID: <no-verdicts@example.test>\n"}
    code, text = curl_parse(d, [(k, other.get(k, v)) for k, v in fields])
    assert code == 200, text
    import json
    deadline = time.monotonic() + 30
    while True:
        recs = json.loads(d.ctl("correspondence", "list", "--json").stdout)
        if len(recs) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    by = {r["subject"]: r for r in recs}
    assert len(by) == 2, [(r["subject"], r.get("authentication")) for r in recs]
    assert by["Re: results"]["authentication"] == {
        "verdict_by": "sendgrid", "spf": "softfail", "dmarc": None,
        "dkim": [{"domain": "example.test", "selector": None, "result": "pass"},
                 {"domain": "esp.example", "selector": None, "result": "fail"}]}
    assert "authentication" not in by["Re: no verdicts"]


FORGED = [
    # what a sender writes to have its mail taken for one we passed (RFC 8601 5): our name,
    # and our name dressed up in a comment, quotes, another case and a version
    b"Authentication-Results: relay.test.example;\r\n\tdkim=pass header.d=goodmail.org;\r\n"
    b"\tdmarc=pass (p=reject) header.from=goodmail.org\r\n",
    b"Authentication-Results: (ours) \"RELAY.Test.Example\" 1; dmarc=pass header.from=goodmail.org\r\n",
]
KEPT = b"Authentication-Results: mx.other.example; dkim=pass header.d=goodmail.org\r\n"


def stored_bodies(d):
    import sqlite3
    con = sqlite3.connect(f"file:{d.data_dir}/postern.db?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT body FROM inbound_messages ORDER BY received_ms")]
    finally:
        con.close()


def test_forged_authentication_results_removed_smtp(daemon_factory, inbound_dns, monkeypatch,
                                                    tmp_path):
    """Authentication-Results fields that arrive over SMTP claiming our authserv-id are taken
    out before ours goes on: the stored message and the record carry only our verdict."""
    dns = inbound_dns
    d = ns_daemon(daemon_factory, dns, monkeypatch, tmp_path, "tag")
    msg = plain("a@goodmail.org", "forged verdict")
    raw = FORGED[0] + KEPT + FORGED[1] + msg
    code, text = mx_send(d, dns, "x@evilmail.org", raw)
    assert code == 250, text
    rec = records_by_subject(d, 1)["forged verdict"]
    assert rec["authentication"]["dmarc"] == {"result": "fail", "policy": "reject",
                                              "from_domain": "goodmail.org"}
    assert rec["authentication"]["dkim"] == []
    (body,) = stored_bodies(d)
    fields = header_fields(body)
    ours = [f for f in fields if f.lower().startswith(b"authentication-results:")]
    assert len(ours) == 2 and ours[0] == fields[1] and ours[1] == KEPT, fields
    assert ours[0].startswith(b"Authentication-Results: relay.test.example;\r\n\tspf=fail ")
    assert b"dmarc=fail (p=reject)" in ours[0]
    for f in FORGED:
        assert f not in body
    assert body.endswith(msg)
    assert "removed 2 Authentication-Results fields that claimed to be ours" in d.log_text()


def ns_http_daemon(daemon_factory, dns, tmp_path, mode):
    """A daemon inside the namespace whose Inbound Parse listener takes unauthenticated posts."""
    port = free_mx_port()
    d = daemon_factory(FAST, f"\n[inbound]\ndomains = in.example\nhttp_address = 127.0.0.1:{port}\n"
                             f"http_auth = none\ndmarc = {mode}\n", start=False)
    d.http = f"http://127.0.0.1:{port}"
    return ns_start(d, dns)


def post_raw(d, dns, sender, raw, spf):
    """SendGrid's raw-mode post of raw, from inside the namespace: the message in "email",
    SendGrid's own verdicts in "dkim" and "SPF" (which a record of ours must not take)."""
    import json
    from test_inbound import CURL
    fields = [("email", raw.decode()), ("dkim", "{@goodmail.org : pass}"), ("SPF", spf),
              ("sender_ip", "192.0.2.10"),
              ("envelope", json.dumps({"to": ["bob@in.example"], "from": sender}))]
    args = [CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"]
    for k, v in fields:
        args += ["--form-string", f"{k}={v}"]
    p = dns.run(*args, d.http + "/emailInbound")
    assert p.returncode == 0, p.stderr
    return int(p.stdout)


def test_raw_inbound_parse_verified_like_mx(daemon_factory, inbound_dns, tmp_path):
    """A raw-mode Inbound Parse post is DKIM and DMARC checked by the same code as a message
    to the MX listener: the verdicts agree with dkimpy's, DMARC takes SendGrid's SPF verdict,
    and an Authentication-Results field in the message that claims our name counts for
    nothing."""
    _KEYS.update(inbound_dns.keys)
    dns = inbound_dns
    cases = {
        # subject: (envelope sender, SendGrid's SPF, message, dkim results, dmarc, policy)
        "raw good": ("x@evilmail.org", "fail",
                     sign(plain("a@goodmail.org", "raw good"), "goodmail.org"),
                     ["pass"], "pass", "reject"),
        "raw body changed": ("x@evilmail.org", "fail",
                             sign(plain("a@goodmail.org", "raw body changed"), "goodmail.org")
                             .replace(b"Hello there.", b"Hello there!"),
                             ["fail"], "fail", "reject"),
        "raw wrong key": ("x@evilmail.org", "fail",
                          sign(plain("a@goodmail.org", "raw wrong key"), "goodmail.org",
                               key="other"), ["fail"], "fail", "reject"),
        "raw aligned spf": ("bounce@goodmail.org", "pass", plain("a@goodmail.org", "raw aligned spf"),
                            [], "pass", "reject"),
        "raw quarantine": ("x@evilmail.org", "fail", plain("a@quarmail.org", "raw quarantine"),
                           [], "fail", "quarantine"),
        "raw forged": ("x@evilmail.org", "fail",
                       FORGED[0] + FORGED[1] + plain("a@goodmail.org", "raw forged"),
                       [], "fail", "reject"),
    }
    d = ns_http_daemon(daemon_factory, dns, tmp_path, "tag")
    for subject, (sender, spf, raw, *_) in cases.items():
        assert post_raw(d, dns, sender, raw, spf) == 200, subject
    recs = records_by_subject(d, len(cases))
    for subject, (sender, spf, raw, dkims, dmarc, policy) in cases.items():
        a = recs[subject]["authentication"]
        assert "verdict_by" not in a, (subject, a)
        assert a["spf"] == spf, (subject, a)
        assert [k["result"] for k in a["dkim"]] == dkims, (subject, a)
        for k in a["dkim"]:
            assert (k["domain"], k["selector"]) == ("goodmail.org", "rsa1"), (subject, a)
        assert a["dmarc"] == {"result": dmarc, "policy": policy,
                              "from_domain": subject == "raw quarantine" and "quarmail.org"
                              or "goodmail.org"}, (subject, a)
        # dkimpy, asked in the same DNS, agrees on each signature
        path = tmp_path / "raw.eml"
        path.write_bytes(raw)
        if dkims:
            py = dns.run(PY, "-c", DKIMPY, str(path))
            assert (py.stdout.strip() == b"True") == (dkims == ["pass"]), (subject, py.stdout)


def test_raw_inbound_parse_not_verified_when_off(daemon_factory, inbound_dns, tmp_path):
    """dmarc = off: a raw post's record has no verdicts of ours (nor SendGrid's)."""
    _KEYS.update(inbound_dns.keys)
    d = ns_http_daemon(daemon_factory, inbound_dns, tmp_path, "off")
    raw = FORGED[0] + sign(plain("a@goodmail.org", "raw off"), "goodmail.org")
    assert post_raw(d, inbound_dns, "x@evilmail.org", raw, "pass") == 200
    rec = records_by_subject(d, 1)["raw off"]
    assert "authentication" not in rec, rec


def test_key_decoded_once_and_again_after_sighup(daemon_factory, upstreams, keys, tmp_path):
    """The key is read once per configuration: a key file replaced under a running daemon is
    not picked up until SIGHUP brings a new configuration, and then it is."""
    import shutil as sh
    import signal
    import dkim
    key = tmp_path / "k.pem"
    sh.copyfile(keys["rsa"], key)
    os.chmod(key, 0o600)
    up = upstreams()
    conf = relay_conf(up.port, f"\n[dkim k]\ndomain = {DOMAIN}\nselector = rsa1\n"
                               f"key_file = {key}\nalgorithm = rsa-sha256\n")
    d = daemon_factory(FAST, conf)
    txt = {kind: dns_txt(keys[kind], "rsa").encode() for kind in ("rsa", "other")}

    def signed_with(n):
        got = up.wait_messages(n)[-1]["data"]
        return [k for k, t in txt.items()
                if dkim.verify(got, dnsfunc=lambda name, timeout=5, t=t: t)]

    submit(d, SENDER, ["someone@example.net"], MESSAGES["plain"])
    assert signed_with(1) == ["rsa"]
    sh.copyfile(keys["other"], key)
    submit(d, SENDER, ["someone@example.net"], MESSAGES["folded"])
    assert signed_with(2) == ["rsa"]          # the running configuration keeps its key
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while d.log_text().count("reload -- configuration") < 1:
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.1)
    submit(d, SENDER, ["someone@example.net"], MESSAGES["long"])
    assert signed_with(3) == ["other"]


def test_signatures_checked_are_capped(daemon_factory, keys, monkeypatch, tmp_path):
    """The sender writes the DKIM-Signature fields, and each costs a key look-up and a hash of
    the body: only the first 8 (the ones the record reports) are checked, however many come.
    Seen from the DNS server: 8 selectors asked for of 20, and the stored message keeps all."""
    _KEYS.update(keys)
    qlog = tmp_path / "queries.log"
    dns = DNS(str(tmp_path), {"rsa1._domainkey.goodmail.org": dns_txt(keys["rsa"], "rsa")},
              log_queries=str(qlog))
    try:
        d = ns_daemon(daemon_factory, dns, monkeypatch, tmp_path, "tag")
        raw = sign(plain("Alice <alice@goodmail.org>", "many signatures"), "goodmail.org")
        junk = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=goodmail.org;"
                        b" s=k%d; l=%d; h=from; bh=AAAA; b=AAAA\r\n" % (i, 100 - i)
                        for i in range(19))
        code, text = mx_send(d, dns, "alice@goodmail.org", junk + raw)
        assert code == 250, text
        rec = records_by_subject(d, 1)["many signatures"]
        assert [k["selector"] for k in rec["authentication"]["dkim"]] == \
            [f"k{i}" for i in range(8)], rec["authentication"]
        asked = set(re.findall(r"query\[\w+\] (k\d+)\._domainkey\.goodmail\.org", qlog.read_text()))
        assert asked == {f"k{i}" for i in range(8)}, sorted(asked)
        from test_inbound import db_rows
        body = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
        assert body.count(b"DKIM-Signature:") == 20, body[:400]
    finally:
        dns.close()
