# Installing and running Postern like any other daemon: `make install DESTDIR=...` puts the
# binaries, man pages, example configuration and systemd unit where they belong; the unit passes
# `systemd-analyze verify`; the man pages render without a warning and document every command
# and key; the daemon speaks sd_notify and the journal's stderr protocol; conf/postern.conf is a
# valid configuration; `posternctl migrate` turns a Postfix relayhost + sasl_passwd and an
# msmtprc account into an upstream that really delivers with AUTH, and never prints a password.
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import BUILDDIR, POSTERN, POSTERNCTL, SRCDIR, good_message, need_binary
from upstream import Certs, Upstream

PASSWORD = "Migr4ted-s3cret:with spaces"
MAN_PAGES = ["postern.8", "postern.conf.5", "posternctl.8", "postern-sendmail.1"]
PRESETS = ["postern.conf", "office365.conf", "gmail.conf", "ses.conf", "sendgrid-smtp.conf",
           "smarthost-465.conf"]


def have_systemd_build():
    with open(os.path.join(BUILDDIR, "build-config.h")) as f:
        return re.search(r"^#define HAVE_SYSTEMD 1", f.read(), re.M) is not None


def run(args, timeout=120, **kw):
    return subprocess.run(args, capture_output=True, timeout=timeout, text=True, **kw)


# ---------------------------------------------------------------------------------------------
# make install

@pytest.fixture(scope="module")
def destdir(tmp_path_factory):
    need_binary(POSTERN)
    d = str(tmp_path_factory.mktemp("destdir"))
    p = run(["make", "-s", "-C", BUILDDIR, "install", f"DESTDIR={d}"], timeout=600)
    assert p.returncode == 0, f"make install failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return d


def installed(destdir):
    """{relative path: absolute path} of every installed file"""
    out = {}
    for root, _dirs, files in os.walk(destdir):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, destdir)] = full
    return out


def find_one(files, suffix):
    hits = [full for rel, full in files.items() if ("/" + rel).endswith(suffix)]
    assert len(hits) == 1, f"expected one installed */{suffix}, found {hits} in {sorted(files)}"
    return hits[0]


def test_make_install_puts_everything_in_place(destdir):
    files = installed(destdir)
    for suffix in ["/sbin/postern", "/bin/posternctl"]:
        path = find_one(files, suffix)
        assert os.access(path, os.X_OK), f"{path} is not executable"
    p = run([find_one(files, "/sbin/postern"), "-V"])
    assert p.returncode == 0 and p.stdout.startswith("postern "), p
    for page in MAN_PAGES:
        find_one(files, f"/share/man/man{page[-1]}/{page}")
    for conf in PRESETS:
        installed_conf = find_one(files, f"/postern/examples/{conf}")
        with open(installed_conf) as a, open(os.path.join(SRCDIR, "conf", conf)) as b:
            assert a.read() == b.read(), f"{installed_conf} differs from conf/{conf}"
    unit = find_one(files, "/systemd/system/postern.service")
    with open(unit) as f:
        text = f.read()
    assert not re.search(r"@[A-Za-z_]+@", text), f"unsubstituted @VAR@ in the unit:\n{text}"


def unit_settings(text):
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    return settings


def test_unit_is_hardened_and_matches_the_build(destdir):
    unit = find_one(installed(destdir), "/systemd/system/postern.service")
    with open(unit) as f:
        s = unit_settings(f.read())
    want = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/postern",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "PrivateTmp": "yes", "ProtectHome": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "StandardOutput": "journal",
        "StandardError": "journal", "SyslogIdentifier": "postern", "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for k, v in want.items():
        assert s.get(k) == [v], f"{k}: want {v!r}, the unit says {s.get(k)}"
    assert s["Type"] == ["notify" if have_systemd_build() else "simple"], s["Type"]
    # the daemon runs in the foreground (the journal has its stderr) on the default configuration
    start = s["ExecStart"][0].split()
    assert start[1:] == ["-f", "-c", "/etc/postern/postern.conf"], start
    # ...and ExecStart names the binary make installed
    assert os.access(destdir + start[0], os.X_OK), f"ExecStart {start[0]} is not what make installed"


def test_unit_passes_systemd_analyze_verify(destdir, tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = find_one(installed(destdir), "/systemd/system/postern.service")
    with open(unit) as f:
        text = f.read()
    daemon = unit_settings(text)["ExecStart"][0].split()[0]
    # verify checks that the commands exist: point them at the DESTDIR copy, nothing else changes
    copy = tmp_path / "postern.service"
    copy.write_text(text.replace(daemon, destdir + daemon))
    p = run([tool, "verify", "--man=no", str(copy)], cwd=str(tmp_path))
    ours = [l for l in (p.stdout + p.stderr).splitlines() if "postern" in l]
    if p.returncode != 0 and not ours and re.search(r"Failed to (initialize|set up|setup) manager",
                                                       p.stderr):
        pytest.skip(f"systemd-analyze cannot run in this container: {p.stderr.strip()[:300]}")
    assert p.returncode == 0 and not ours, f"systemd-analyze verify:\n{p.stdout}\n{p.stderr}"


def test_without_libsystemd_the_unit_is_type_simple(tmp_path):
    """configure --without-systemd makes the other variant of the unit (no compiling needed)"""
    configure = os.path.join(SRCDIR, "configure")
    if not os.access(configure, os.X_OK):
        pytest.skip("no configure script in the source tree (run autoreconf -fi)")
    if os.path.exists(os.path.join(SRCDIR, "config.status")):
        pytest.skip("the source tree is configured in place: automake allows no second build tree")
    p = run([configure, "-q", "--without-systemd", "--prefix=/opt/postern"], cwd=str(tmp_path),
            timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(tmp_path / "build-config.h") as f:
        assert not re.search(r"^#define HAVE_SYSTEMD", f.read(), re.M)
    p = run(["make", "-s", "postern.service"], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    s = unit_settings((tmp_path / "postern.service").read_text())
    assert s["Type"] == ["simple"], s["Type"]
    assert s["ExecStart"][0].startswith("/opt/postern/sbin/postern "), s["ExecStart"]


# ---------------------------------------------------------------------------------------------
# The manual

@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_without_warnings(destdir, page):
    if not shutil.which("man"):
        pytest.skip("man is not installed (Debian package man-db)")
    path = find_one(installed(destdir), f"/man{page[-1]}/{page}")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    p = run(["man", "-l", path], env=env)
    assert p.returncode == 0 and p.stderr == "", f"man -l {page}:\n{p.stderr}"
    assert "NAME" in p.stdout and "SEE ALSO" in p.stdout, p.stdout[:500]
    # the strict checkers, where they are installed
    p = run(["groff", "-ww", "-man", "-z", path])
    assert p.returncode == 0 and p.stderr == "", f"groff -ww {page}:\n{p.stderr}"
    if shutil.which("mandoc"):
        p = run(["mandoc", "-T", "lint", "-W", "warning", path])
        assert p.returncode == 0 and p.stdout + p.stderr == "", f"mandoc -T lint {page}:\n{p.stdout}{p.stderr}"


def config_keys():
    with open(os.path.join(SRCDIR, "global", "config.c")) as f:
        keys = re.findall(r'\{ SEC_(\w+), "(\w+)"', f.read())
    assert len(keys) > 50, "global/config.c's table was not found"
    return keys


def test_every_config_key_is_documented_and_in_the_example():
    with open(os.path.join(SRCDIR, "doc", "postern.conf.5")) as f:
        man = f.read()
    with open(os.path.join(SRCDIR, "conf", "postern.conf")) as f:
        conf = f.read()
    missing_man = [f"{sec.lower()}.{k}" for sec, k in config_keys()
                   if not re.search(r"^\.B " + re.escape(k) + "$", man, re.M)]
    missing_conf = [f"{sec.lower()}.{k}" for sec, k in config_keys()
                    if not re.search(r"^;?" + re.escape(k) + " = ", conf, re.M)]
    assert not missing_man, f"keys of global/config.c missing in postern.conf(5): {missing_man}"
    assert not missing_conf, f"keys of global/config.c missing in conf/postern.conf: {missing_conf}"
    for sec in {s for s, _ in config_keys()}:
        word = sec.lower()
        assert re.search(r'^\.SH "\[' + word + r"( NAME)?\]\"$", man, re.M), f"no [{word}] section in postern.conf(5)"


def test_every_posternctl_command_is_documented():
    with open(os.path.join(SRCDIR, "tools", "posternctl.c")) as f:
        commands = re.findall(r'\{ "([a-z0-9]+)", ctl_', f.read())
    assert "queue" in commands and "migrate" in commands, commands
    with open(os.path.join(SRCDIR, "doc", "posternctl.8")) as f:
        man = f.read()
    for cmd in commands + ["check", "correspondence", "sendgrid", "twilio"]:
        assert re.search(r'^\.(B|BR|BI) "?' + cmd + r"\b", man, re.M), f"posternctl {cmd} is not in posternctl(8)"


# ---------------------------------------------------------------------------------------------
# The example configuration

def test_example_configuration_passes_check(destdir):
    """conf/postern.conf as shipped, and as installed, is a configuration postern accepts (the
    provider presets are checked in test_upstream.py)"""
    need_binary(POSTERN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_")}
    for path in [os.path.join(SRCDIR, "conf", "postern.conf"),
                 find_one(installed(destdir), "/postern/examples/postern.conf")]:
        p = run([POSTERN, "-n", "-c", path], env=env)
        assert p.returncode == 0 and p.stderr == "", f"postern -n {path}:\n{p.stdout}{p.stderr}"


# ---------------------------------------------------------------------------------------------
# Running under systemd: readiness and the journal

@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def notify_recv(s):
    return s.recv(4096).decode()


def test_sd_notify_ready_reloading_stopping(daemon_factory, notify_socket):
    if not have_systemd_build():
        pytest.skip("built without libsystemd (configure --with-systemd)")
    d = daemon_factory(start=False)
    d.start(wait=False)
    msg = notify_recv(notify_socket)
    assert "READY=1" in msg.splitlines(), msg
    # ready means ready: the listener answers at once
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as c:
        c.settimeout(10)
        assert c.recv(512).startswith(b"220"), "READY=1 came before the listener greets"
        c.sendall(b"QUIT\r\n")
    d.signal(signal.SIGHUP)
    first, second = notify_recv(notify_socket), notify_recv(notify_socket)
    assert "RELOADING=1" in first.splitlines(), first
    assert "READY=1" in second.splitlines(), second
    d.signal(signal.SIGTERM)
    msg = notify_recv(notify_socket)
    assert "STOPPING=1" in msg.splitlines(), msg
    assert d.proc.wait(timeout=60) == 0


def test_journal_stderr_gets_priorities_not_timestamps(daemon_factory, monkeypatch):
    d = daemon_factory(start=False)
    open(d.logpath, "ab").close()            # the harness appends: the same inode is stderr
    st = os.stat(d.logpath)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    d.start()
    d.stop_and_check()
    lines = [l for l in d.log_text().splitlines() if not l.startswith("=== test harness")]
    assert any(re.match(r"^<6>daemon started", l) for l in lines), "\n".join(lines)
    assert not any(re.search(r"postern\[\d+\]:", l) for l in lines), \
        "the journal adds time and identifier itself:\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Migration


@pytest.fixture
def auth_upstream(tmp_path, certs):
    made = []

    def make(tls):
        up = Upstream(tmp_path / f"sink{len(made)}", tls=tls, cert=certs.good,
                      users={"alice@client.test": PASSWORD}).start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()


def migrate(*args):
    need_binary(POSTERNCTL)
    p = run([POSTERNCTL, "migrate", *args])
    assert PASSWORD not in p.stdout and PASSWORD not in p.stderr, "posternctl migrate printed the password"
    return p


def deliver_through(daemon_factory, up, migrated):
    """A daemon with the migrated sections passes postern -n and delivers through them."""
    d = daemon_factory(extra="\n" + migrated, start=False)
    p = run([POSTERN, "-n", "-c", d.conf])
    assert p.returncode == 0, f"postern -n refuses the migrated configuration:\n{p.stderr}\n{migrated}"
    d.start()
    with d.smtp() as c:
        c.greet()
        r = c.send_message("app@client.test", ["rcpt@example.test"], good_message("migrated"))
        assert r.code == 250, r
    msgs = up.wait_messages(1)
    assert msgs[0]["rcpts"] == ["rcpt@example.test"], msgs[0]
    assert msgs[0]["tls"], "the migrated upstream did not use TLS"
    assert [a for a in up.auths if a[1] == "alice@client.test" and a[2]], \
        f"no successful AUTH as alice upstream: {up.auths}"
    return d


def secret_ok(path):
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    with open(path) as f:
        assert f.read() == PASSWORD + "\n"


def test_migrate_postfix_relayhost_and_sasl_passwd(tmp_path, daemon_factory, auth_upstream, certs):
    up = auth_upstream("starttls")
    sasl = tmp_path / "sasl_passwd"
    sasl.write_text("# smarthost login\n"
                    "[mail.other.example]:587 bob:not-this-one\n"
                    f"[127.0.0.1]:{up.port}    alice@client.test:{PASSWORD}\n")
    os.chmod(sasl, 0o600)
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("# Debian's main.cf, trimmed\n"
                       "myhostname = relay.clinic.example\n"
                       f"relayhost = [127.0.0.1]:{up.port}\n"
                       "smtp_tls_security_level = encrypt\n"
                       f"smtp_tls_CAfile = {certs.ca}\n"
                       "smtp_sasl_auth_enable = yes\n"
                       f"smtp_sasl_password_maps = hash:{sasl}\n"
                       "smtp_sasl_security_options =\n"
                       "    noanonymous\n")
    secret = tmp_path / "postfix.secret"
    p = migrate("postfix", "--main-cf", str(main_cf), "--secret-file", str(secret))
    assert p.returncode == 0, p.stderr
    assert "[upstream postfix]" in p.stdout and "[route default]" in p.stdout, p.stdout
    assert re.search(r"^tls = starttls$", p.stdout, re.M) and re.search(r"^verify = peer$", p.stdout, re.M), p.stdout
    assert f"password_file = {secret}" in p.stdout, p.stdout
    secret_ok(secret)
    deliver_through(daemon_factory, up, p.stdout)


def test_migrate_postfix_print_only_writes_nothing(tmp_path):
    sasl = tmp_path / "sasl_passwd"
    sasl.write_text(f"smtp.example.net:smtps alice@client.test:{PASSWORD}\n")
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("relayhost = smtp.example.net:smtps\nsmtp_tls_wrappermode = yes\n"
                       f"smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = {sasl}\n")
    secret = tmp_path / "never.secret"
    p = migrate("postfix", "--main-cf", str(main_cf), "--secret-file", str(secret), "--print-only")
    assert p.returncode == 0, p.stderr
    assert not secret.exists(), "--print-only wrote the secret file"
    assert re.search(r"^tls = implicit$", p.stdout, re.M) and re.search(r"^port = 465$", p.stdout, re.M), p.stdout
    assert f"in {secret}" in p.stdout and str(sasl) in p.stdout, "the operator is not told where the password goes"
    assert "MX" in p.stdout, "the MX lookup of an unbracketed relayhost is not mentioned"


def test_migrate_postfix_without_relayhost_says_so(tmp_path):
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("myhostname = mx.example\n")
    p = migrate("postfix", "--main-cf", str(main_cf), "--print-only")
    assert p.returncode == 65 and "relayhost" in p.stderr and p.stdout == "", p


def test_migrate_msmtp_account(tmp_path, daemon_factory, auth_upstream, certs):
    up = auth_upstream("implicit")
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text(PASSWORD + "\n")
    rc = tmp_path / "msmtprc"
    rc.write_text("# msmtp configuration\n"
                  "defaults\n"
                  "tls on\n"
                  f"tls_trust_file {certs.ca}\n"
                  "logfile ~/.msmtp.log\n\n"
                  "account personal\n"
                  "host smtp.example.com\n"
                  "user someone\n"
                  "password not-this-one\n\n"
                  "account clinic\n"
                  "host 127.0.0.1\n"
                  f"port {up.port}\n"
                  "tls_starttls off\n"
                  "auth on\n"
                  "user alice@client.test\n"
                  f"passwordeval \"cat {pwfile}\"\n"
                  "from app@client.test\n\n"
                  "account default : clinic\n")
    os.chmod(rc, 0o600)
    secret = tmp_path / "msmtp.secret"
    p = migrate("msmtp", "--msmtprc", str(rc), "--secret-file", str(secret), "--name", "clinic")
    assert p.returncode == 0, p.stderr
    assert "[upstream clinic]" in p.stdout and re.search(r"^tls = implicit$", p.stdout, re.M), p.stdout
    assert "upstream = clinic" in p.stdout, p.stdout
    secret_ok(secret)
    deliver_through(daemon_factory, up, p.stdout)


def test_migrate_msmtp_needs_a_choice_of_account(tmp_path):
    rc = tmp_path / "msmtprc"
    rc.write_text(f"account a\nhost a.example\nauth on\nuser u\npassword {PASSWORD}\n\n"
                  "account b\nhost b.example\n")
    p = migrate("msmtp", "--msmtprc", str(rc), "--print-only")
    assert p.returncode == 65 and "--account" in p.stderr and p.stdout == "", p
    p = migrate("msmtp", "--msmtprc", str(rc), "--account", "a", "--print-only")
    assert p.returncode == 0 and "host = a.example" in p.stdout, p
    assert re.search(r"^tls = starttls$", p.stdout, re.M), "a password must not go out in clear"


def test_migrate_replaces_the_secret_file_never_writes_through_it(tmp_path):
    """The secret file is replaced by a new 0600 file (written aside, then renamed): an old file
    at that name that is a hard link to another file (a world-readable one, say) is not written
    through, so the password never lands in the other file nor changes its mode."""
    sasl = tmp_path / "sasl_passwd"
    sasl.write_text(f"[smtp.example.net]:587 alice@client.test:{PASSWORD}\n")
    os.chmod(sasl, 0o600)
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("relayhost = [smtp.example.net]:587\nsmtp_sasl_auth_enable = yes\n"
                       f"smtp_sasl_password_maps = hash:{sasl}\n")
    other = tmp_path / "public.txt"
    other.write_text("public text\n")
    os.chmod(other, 0o644)
    secret = tmp_path / "postfix.secret"
    os.link(other, secret)
    p = migrate("postfix", "--main-cf", str(main_cf), "--secret-file", str(secret))
    assert p.returncode == 0, p.stderr
    secret_ok(secret)
    assert other.read_text() == "public text\n", "the password went into another file through a hard link"
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o644
    assert os.stat(other).st_nlink == 1
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f], "a temporary file was left behind"
