# The administrator's tools: postern-sendmail (the sendmail(1) interface) against a running
# daemon and a real aiosmtpd upstream, posternctl's queue filters, bulk actions and stats, and
# the daemon's control socket (flush, reload, stats, hostile input). Every test asserts what
# the upstream received, what the store holds or what the socket answered.
import email
import email.policy
import json
import os
import socket
import stat
import subprocess
import time

from conftest import BUILDDIR, HOSTNAME, POSTERNCTL, assert_serving
from upstream import free_port

SENDMAIL = os.path.join(BUILDDIR, "postern-sendmail")
EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 64, 65, 69, 75, 77


def plain_upstream(name, port, route=None):
    lines = [f"[upstream {name}]", "type = smtp", "host = 127.0.0.1", f"port = {port}",
             "tls = none", "helo = relay.test.example", ""]
    if route is not None:
        lines += [f"[route {name}]", route, f"upstream = {name}", ""]
    return "\n".join(lines)


def default_route(name):
    return f"[route default]\nupstream = {name}\n"


def sendmail(d, *args, stdin=b"", timeout=60, env=None):
    assert os.access(SENDMAIL, os.X_OK), f"{SENDMAIL} is not built"
    return subprocess.run([SENDMAIL, "-C", d.conf, *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=d.workdir,
                          env=None if env is None else dict(os.environ, **env))


def control(d, payload, timeout=15):
    """One exchange on the control socket: the raw bytes sent, the reply line parsed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(d.data_dir, "control.sock"))
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def ids_of(d, *args):
    p = d.ctl("queue", "list", "--json", *args)
    return {e["id"] for e in json.loads(p.stdout)}


def wait_for(pred, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- postern-sendmail -----------------------------------------------------------------------

def test_sendmail_t_strips_bcc_and_delivers(daemon_factory, upstreams):
    up = upstreams()
    d = daemon_factory(extra=plain_upstream("up", up.port) + default_route("up"))
    msg = (b"To: Ann <ann@example.net>, bob@example.net\n"
           b"Cc: carol@example.org\n"
           b"Bcc: hidden@example.com,\n"
           b"  hidden2@example.com\n"
           b"Subject: from cron\n"
           b"\n"
           b"first line\n"
           b".\n"
           b"after a lone dot (kept with -i)\n")
    p = sendmail(d, "-t", "-i", "-f", "cron@client.test", "-F", "Cron Daemon", stdin=msg)
    assert p.returncode == 0, p.stderr
    got = up.wait_messages(1)[0]
    assert got["mail_from"] == "cron@client.test"
    assert sorted(got["rcpts"]) == sorted(["ann@example.net", "bob@example.net",
                                           "carol@example.org", "hidden@example.com",
                                           "hidden2@example.com"])
    parsed = email.message_from_bytes(got["data"], policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert b"hidden" not in got["data"], got["data"]
    assert parsed["Subject"] == "from cron"
    # no From: in the message: one is added with -F's name and the envelope sender
    assert parsed["From"].addresses[0].display_name == "Cron Daemon"
    assert parsed["From"].addresses[0].addr_spec == "cron@client.test"
    body = parsed.get_content()
    assert "\n.\n" in body.replace("\r\n", "\n") and "after a lone dot" in body
    assert b"\n" not in got["data"].replace(b"\r\n", b"")   # CRLF only on the wire


def test_sendmail_recipients_as_arguments_and_dot_ends(daemon):
    # without -i a line with a single dot ends the message; recipients come from the arguments
    msg = b"From: me@client.test\nSubject: dot\n\nkept\n.\nnot part of the message\n"
    p = sendmail(daemon, "-f", "<sender@client.test>", "x@example.net, Y <y@example.net>",
                 "root", stdin=msg)
    assert p.returncode == 0, p.stderr
    [entry] = daemon.queue_list()
    assert entry["sender"] == "sender@client.test"
    assert sorted(r["address"] for r in entry["recipients"]) == \
        sorted(["x@example.net", "y@example.net", f"root@{HOSTNAME}"])
    stored = daemon.queue_cat(entry["id"])
    assert b"kept\r\n" in stored
    assert b"not part" not in stored
    assert stored.count(b"From:") == 1            # the message had one: none added


def test_sendmail_ignores_legacy_options(daemon):
    p = sendmail(daemon, "-odi", "-oem", "-v", "-oi", "-U", "-m", "-Am", "-B", "8BITMIME",
                 "-h", "20", "--", "z@example.net",
                 stdin=b"Subject: legacy\n\nhello\n")
    assert p.returncode == 0, p.stderr
    [entry] = daemon.queue_list()
    assert [r["address"] for r in entry["recipients"]] == ["z@example.net"]
    p = sendmail(daemon, "-k", "z@example.net", stdin=b"x\n")
    assert p.returncode == EX_USAGE


def test_sendmail_body_only_message(daemon):
    # what "echo text | sendmail root" gives: no header at all; a From: and the empty line
    # that ends the header section come first, so the text stays body
    p = sendmail(daemon, "-f", "cron@client.test", "root", stdin=b"disk is full on /var\nline 2: more\n")
    assert p.returncode == 0, p.stderr
    [entry] = daemon.queue_list()
    stored = daemon.queue_cat(entry["id"])
    assert b"\r\n\r\ndisk is full on /var\r\nline 2: more\r\n" in stored, stored
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["From"].addresses[0].addr_spec == "cron@client.test"
    assert parsed.get_content().replace("\r\n", "\n") == "disk is full on /var\nline 2: more\n"


def test_sendmail_text_with_a_colon_is_not_a_header(daemon):
    # a first line such as cron's "Backup of db1 finished: 3 errors" has a colon but no field
    # name (names have no spaces, RFC 5322 ftext): it is body, as Postfix's is_header says,
    # not a header field that mail readers never show
    p = sendmail(daemon, "-f", "cron@client.test", "root",
                 stdin=b"Backup of db1 finished: 3 errors\nsecond line\n")
    assert p.returncode == 0, p.stderr
    [entry] = daemon.queue_list()
    stored = daemon.queue_cat(entry["id"])
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed.get_content().replace("\r\n", "\n") == \
        "Backup of db1 finished: 3 errors\nsecond line\n", stored
    # "Subject : x" (blanks before the colon, obsolete syntax) is still a header
    p = sendmail(daemon, "-f", "cron@client.test", "root", stdin=b"Subject : spaced\n\nbody\n")
    assert p.returncode == 0, p.stderr
    entry = [e for e in daemon.queue_list() if e["id"] != entry["id"]][0]
    stored = daemon.queue_cat(entry["id"])
    assert b"\r\n\r\nbody\r\n" in stored and b"Subject : spaced\r\n" in stored, stored


def test_sendmail_t_with_an_empty_cc(daemon):
    # PHP's mail() and scripts write "Cc: " with nobody in it: no recipient there, not an error
    p = sendmail(daemon, "-t", "-f", "app@client.test",
                 stdin=b"To: a@example.net\nCc: \nBcc:\nSubject: e\n\nx\n")
    assert p.returncode == 0, p.stderr
    [entry] = daemon.queue_list()
    assert [r["address"] for r in entry["recipients"]] == ["a@example.net"]


def test_sendmail_bs_speaks_smtp(daemon):
    dialogue = (b"EHLO script.test\n"
                b"MAIL FROM:<bs@client.test>\n"
                b"RCPT TO:<bs-rcpt@example.net>\n"
                b"DATA\n"
                b"Subject: via -bs\n"
                b"\n"
                b"hello over stdin\n"
                b".\n"
                b"QUIT\n")
    p = sendmail(daemon, "-bs", stdin=dialogue)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.startswith("220 "), out
    assert "221 " in out, out
    qid = [l for l in out.splitlines() if "queued as" in l][0].split()[-1]
    entry = daemon.queue_entry(qid)
    assert entry["sender"] == "bs@client.test"
    assert [r["address"] for r in entry["recipients"]] == ["bs-rcpt@example.net"]
    assert b"hello over stdin\r\n" in daemon.queue_cat(qid)


def test_sendmail_exit_codes(daemon_factory):
    d = daemon_factory()
    p = sendmail(d, "not an address@@", stdin=b"Subject: x\n\nx\n")
    assert p.returncode == EX_DATAERR, (p.returncode, p.stderr)
    assert b"bad address" in p.stderr
    p = sendmail(d, "-f", "bad sender@@", "ok@example.net", stdin=b"x\n")
    assert p.returncode == EX_DATAERR, (p.returncode, p.stderr)
    p = sendmail(d, "-t", stdin=b"Subject: nobody\n\nx\n")
    assert p.returncode == EX_USAGE, (p.returncode, p.stderr)
    assert d.queue_list() == []                   # nothing was submitted
    # the daemon down: a temporary failure, and -bs says 421
    down = daemon_factory(start=False)
    p = sendmail(down, "ok@example.net", stdin=b"Subject: x\n\nx\n")
    assert p.returncode == EX_TEMPFAIL, (p.returncode, p.stderr)
    assert b"is it running" in p.stderr
    p = sendmail(down, "-bs", stdin=b"QUIT\n")
    assert p.returncode == EX_TEMPFAIL
    assert p.stdout.startswith(b"421 ")


def test_sendmail_auth_when_the_listener_requires_it(daemon_factory, tmp_path):
    password = "sendmail-Pw-0"
    d = daemon_factory(extra="auth = required\n", start=False)
    subprocess.run([POSTERNCTL, "-c", d.conf, "user", "add", "cron"], check=True,
                   input=(password + "\n").encode(), capture_output=True, timeout=60)
    d.start()
    msg = b"Subject: with auth\n\nhello\n"
    p = sendmail(d, "to@example.net", stdin=msg)
    assert p.returncode == EX_NOPERM, (p.returncode, p.stderr)
    assert b"POSTERN_SENDMAIL_USER" in p.stderr
    pwfile = tmp_path / "pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    env = {"POSTERN_SENDMAIL_USER": "cron", "POSTERN_SENDMAIL_PASSWORD_FILE": str(pwfile)}
    p = sendmail(d, "to@example.net", stdin=msg, env=env)
    assert p.returncode == 0, p.stderr
    [entry] = d.queue_list()
    assert entry["auth_user"] == "cron"
    pwfile.write_text("wrong\n")
    p = sendmail(d, "to@example.net", stdin=msg, env=env)
    assert p.returncode == EX_NOPERM, (p.returncode, p.stderr)
    assert b"wrong" not in p.stderr                  # the password is never shown
    assert len(d.queue_list()) == 1


def test_sendmail_bp_lists_the_queue(daemon):
    qid = assert_serving(daemon, "bp")
    p = sendmail(daemon, "-bp")
    assert p.returncode == 0, p.stderr
    assert qid in p.stdout.decode()
    assert p.stdout == daemon.ctl("queue", "list").stdout


# ---- posternctl queue: filters, bulk actions, stats -------------------------------------------

def submit(d, sender, rcpt, tag):
    """Through postern-sendmail; returns the new queue id."""
    before = d.stored_ids()
    p = sendmail(d, "-f", sender, rcpt, stdin=f"Subject: {tag}\n\n{tag}\n".encode())
    assert p.returncode == 0, p.stderr
    [qid] = d.stored_ids() - before
    return qid


def test_queue_filters_bulk_and_stats(daemon_factory):
    dead = free_port()                            # nothing listens: mail to "slow" defers
    d = daemon_factory({"retry_min": "1h", "retry_max": "2h"},
                       extra=plain_upstream("slow", dead, route="sender = *@a.test")
                       + default_route("capture"))
    ids = {}
    for tag, sender, rcpt in (("m1", "x@a.test", "r1@example.net"),
                              ("m2", "y@b.test", "r2@example.org"),
                              ("m3", "x@a.test", "r3@example.org")):
        ids[tag] = submit(d, sender, rcpt, tag)
    d.wait_status(ids["m1"], "deferred")
    d.wait_status(ids["m3"], "deferred")
    d.wait_status(ids["m2"], "captured")

    assert ids_of(d, "--sender", "*@A.test") == {ids["m1"], ids["m3"]}
    assert ids_of(d, "--recipient", "r2@*") == {ids["m2"]}
    assert ids_of(d, "--upstream", "slow") == {ids["m1"], ids["m3"]}
    assert ids_of(d, "--upstream", "capture") == {ids["m2"]}
    assert ids_of(d, "--state", "captured") == {ids["m2"]}
    assert ids_of(d, "--state", "deferred", "--recipient", "*@example.org") == {ids["m3"]}
    assert ids_of(d, "--older-than", "1h") == set()
    assert d.ctl("queue", "list", "--older-than=0s", check=False).returncode == EX_USAGE
    human = d.ctl("queue", "list", "--upstream", "slow").stdout.decode()
    assert ids["m1"] in human and ids["m3"] in human and ids["m2"] not in human
    assert d.ctl("queue", "list", "--older-than", "soon", check=False).returncode == EX_USAGE
    assert d.ctl("queue", "list", "--state", "lost", check=False).returncode == EX_USAGE

    # stats, human and JSON
    st = json.loads(d.ctl("queue", "stats", "--json").stdout)[0]
    assert st["messages"] == 3
    assert st["by_state"]["deferred"] == 2 and st["by_state"]["captured"] == 1
    assert st["by_upstream"]["slow"]["deferred"] == 2
    assert st["by_upstream"]["capture"]["captured"] == 1
    assert st["oldest_id"] == ids["m1"] and st["oldest_age"] >= 0
    assert st["bytes"] > 0
    text = d.ctl("queue", "stats").stdout.decode()
    assert "slow" in text and "capture" in text and ids["m1"] in text

    # bulk actions refuse to run on nothing in particular
    p = d.ctl("queue", "hold", check=False)
    assert p.returncode == EX_USAGE
    p = d.ctl("queue", "delete", ids["m1"], "--all", check=False)
    assert p.returncode == EX_USAGE
    p = d.ctl("queue", "hold", "--upstream", "slow", "--json")
    assert {o["id"] for o in json.loads(p.stdout)} == {ids["m1"], ids["m3"]}
    assert ids_of(d, "--state", "held") == {ids["m1"], ids["m3"]}
    assert d.queue_entry(ids["m2"])["recipients"][0]["status"] == "captured"
    p = d.ctl("queue", "release", "--state", "held", "--sender", "x@a.test")
    assert "2 messages released" in p.stdout.decode()
    assert ids_of(d, "--state", "held") == set()
    p = d.ctl("queue", "delete", "--recipient", "r3@*")
    assert ids["m3"] in p.stdout.decode()
    assert d.stored_ids() == {ids["m1"], ids["m2"]}
    d.ctl("queue", "delete", "--all")
    assert d.stored_ids() == set()


def test_queue_delete_older_than_a_huge_duration_deletes_nothing(daemon):
    # 10^16 seconds passes the duration parser, but in milliseconds it overflows a long long:
    # the filter must not wrap to "no age limit" and let a bulk delete take the whole queue
    qid = submit(daemon, "app@client.test", "keep@example.net", "keep")
    p = daemon.ctl("queue", "delete", "--older-than", "10000000000000000", check=False)
    assert p.returncode == 0, p
    assert daemon.stored_ids() == {qid}, p.stdout
    assert ids_of(daemon, "--older-than", "100000000000000d") == set()
    assert ids_of(daemon) == {qid}


# ---- the control socket --------------------------------------------------------------------

def test_control_socket_stats_mode_and_garbage(daemon):
    path = os.path.join(daemon.data_dir, "control.sock")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()

    r = control(daemon, b"stats\n")
    assert r["ok"] is True
    for k in ("uptime", "sessions", "deliveries_in_flight", "messages", "by_state"):
        assert k in r, r
    assert_serving(daemon, "stats")
    live = json.loads(daemon.ctl("stats", "--live", "--json").stdout)[0]
    assert live["live"] is True and live["messages"] == 1
    assert "sessions:" in daemon.ctl("stats").stdout.decode()

    # garbage is answered, not obeyed, and the daemon keeps serving
    assert control(daemon, b"\x00\xff\xfe rm -rf /\n")["ok"] is False
    assert control(daemon, b"FLUSH please\n")["ok"] is False
    assert control(daemon, b"A" * 100000 + b"\n")["ok"] is False
    # a client that says nothing does not hold the socket for long, nor the mail at all
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)
    try:
        assert_serving(daemon, "silent")
        t0 = time.monotonic()
        assert control(daemon, b"stats\n", timeout=30)["ok"] is True
        assert time.monotonic() - t0 < 20
    finally:
        silent.close()
    assert control(daemon, b"stats\n")["messages"] == 2

    # SIGTERM: the socket goes with the daemon
    daemon.stop_and_check()
    assert not os.path.exists(path)
    p = daemon.ctl("stats", "--json")
    assert b"not running" in p.stderr
    down = json.loads(p.stdout)[0]
    assert down["live"] is False
    # the store's kept totals: the same figures the daemon gave
    assert down["messages"] == 2 and down["bytes"] > 0, down
    assert sum(down["by_state"].values()) == 2 and down["by_state"]["captured"] == 2, down
    text = daemon.ctl("stats").stdout.decode()
    assert "messages:              2" in text and "recipients captured" in text, text
    assert "uptime" not in text
    assert daemon.ctl("stats", "--live", check=False).returncode == EX_UNAVAILABLE
    assert daemon.ctl("reload", check=False).returncode == EX_UNAVAILABLE


def test_control_reload(daemon):
    with daemon.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@client.test>", 250)
        c.cmd_expect("RCPT TO:<one@example.net>", 250)
        c.cmd_expect("RCPT TO:<two@example.net>", 250)
        c.cmd("QUIT")
    daemon.write_config({"max_recipients": "1"})
    p = daemon.ctl("reload")
    assert b"reloaded" in p.stdout
    assert "reload -- configuration" in daemon.log_text()
    with daemon.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@client.test>", 250)
        c.cmd_expect("RCPT TO:<one@example.net>", 250)
        r = c.cmd("RCPT TO:<two@example.net>")
        assert r.code in (452, 552), r
        c.cmd("QUIT")
    assert control(daemon, b"reload\n")["ok"] is True
    # a second reload frees the first configuration: the listeners must not have kept
    # pointers into it (new sessions were refused with 421 after it)
    assert_serving(daemon, "after two reloads")


def test_refused_reload_frees_the_certificates_it_loaded(daemon_factory, certs):
    # a reload refused by the relay's checks after the listeners' certificates were loaded
    # must free them (LeakSanitizer reports it at exit in the sanitizer build), and keep the
    # running configuration
    from upstream import free_port
    tls = (f"\n[listener tls]\naddress = 127.0.0.1:{free_port()}\nrole = submission\n"
           f"tls = starttls\ntls_cert = {certs.dir}/good.pem\ntls_key = {certs.dir}/good.key\n")
    d = daemon_factory(extra=tls)
    d.write_config(extra=tls + "\n[upstream sg]\ntype = sendgrid\n")   # no api_key_file
    r = control(d, b"reload\n")
    assert r["ok"] is False and "configuration problem" in r["error"], r
    assert_serving(d, "after a refused reload")


def test_reloads_while_refusing_busy_connections(daemon_factory):
    # the acceptor answers 421 with the hostname and max_clients of the configuration in use;
    # a reload at that moment frees the previous one: nothing of it may be read after the lock
    # is let go (AddressSanitizer reports a use after free in the sanitizer build)
    import threading
    d = daemon_factory({"max_clients": "1"})
    holder = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    assert holder.recv(512).startswith(b"220")
    stop = threading.Event()
    refused = [0]

    def knock():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                    if s.recv(512).startswith(b"421"):
                        refused[0] += 1
            except OSError:
                pass

    knockers = [threading.Thread(target=knock) for _ in range(2)]
    for t in knockers:
        t.start()
    try:
        deadline = time.monotonic() + 6
        n = 0
        while time.monotonic() < deadline:
            assert control(d, b"reload\n")["ok"] is True
            n += 1
    finally:
        stop.set()
        for t in knockers:
            t.join()
    holder.close()
    assert refused[0] > 0 and n > 0

    def greeted():
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            return s.recv(512).startswith(b"220")
    wait_for(greeted, 20, "the held session to end and a 220")   # max_clients is 1


def test_a_listener_that_cannot_get_a_socket_says_why(tmp_path):
    # with no descriptor left for the second address, socket() itself fails: the error line
    # must say so, not print whatever the stack held (the reason was never written)
    import resource
    from conftest import POSTERN, render_config
    from upstream import free_port
    port2 = free_port()
    conf = tmp_path / "postern.conf"
    conf.write_text(render_config(free_port(), str(tmp_path / "data")).replace(
        "role = submission", f"address = 127.0.0.1:{port2}\nrole = submission"))

    def few_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (4, 4))
    p = subprocess.run([POSTERN, "-f", "-c", str(conf)], capture_output=True, timeout=30,
                       preexec_fn=few_fds)
    assert p.returncode != 0
    line = [l for l in p.stderr.decode("utf-8", "replace").splitlines() if "listener submission" in l]
    assert line, p.stderr
    assert f"127.0.0.1:{port2}: Too many open files" in line[0], line[0]


BIND_SWAP_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
/* bind(), then what someone with write access to data_dir could do next: the new socket's
 * name becomes a symlink to another file */
int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
  int (*real)(int, const struct sockaddr *, socklen_t) =
    (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  int rc = real(fd, sa, len);
  const char *target = getenv("SWAP_TARGET");
  if(!rc && target && sa->sa_family == AF_UNIX) {
    const char *path = ((const struct sockaddr_un *)sa)->sun_path;
    char moved[200];
    snprintf(moved, sizeof(moved), "%s.moved", path);
    if(strstr(path, "control.sock") && !rename(path, moved))
      symlink(target, path);
  }
  return rc;
}
"""


def test_control_socket_mode_never_follows_a_symlink(tmp_path):
    # the socket is made 0600 without a chmod by name: a name swapped for a symlink between
    # bind() and that chmod would have made its target (any file the daemon's user owns, or
    # any file at all for a daemon left running as root) 0600
    import shutil
    from conftest import POSTERN, render_config
    from upstream import free_port
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler builds the test's bind() shim"
    if "libasan" in subprocess.run(["ldd", POSTERN], capture_output=True, text=True).stdout:
        import pytest
        pytest.skip("LD_PRELOAD cannot come before the ASan runtime")
    shim = tmp_path / "shim.so"
    src = tmp_path / "shim.c"
    src.write_text(BIND_SWAP_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"], check=True)
    target = tmp_path / "victim.txt"
    target.write_text("not the daemon's to change\n")
    os.chmod(target, 0o644)
    conf = tmp_path / "postern.conf"
    conf.write_text(render_config(free_port(), str(tmp_path / "data")))
    log = tmp_path / "log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([POSTERN, "-f", "-c", str(conf)], stdout=lf, stderr=lf,
                                env=dict(os.environ, LD_PRELOAD=str(shim), SWAP_TARGET=str(target)))
    try:
        wait_for(lambda: b"daemon started" in log.read_bytes() or proc.poll() is not None, 20,
                 "the daemon to start")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644, log.read_text()
    moved = tmp_path / "data" / "control.sock.moved"
    assert stat.S_IMODE(os.lstat(moved).st_mode) == 0o600, oct(os.lstat(moved).st_mode)


def test_second_daemon_on_the_same_data_dir_sends_nothing(daemon_factory, upstreams):
    # one store, one daemon: a second postern started on the same data_dir (another port,
    # another upstream) must give up before its relay starts, or it takes the first one's
    # in-flight message as left over from a crash and sends it a second time
    from conftest import Daemon
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)                          # accepts, never greets: A's delivery hangs
    up = upstreams()
    a = daemon_factory(extra=plain_upstream("slow", tarpit.getsockname()[1]) + default_route("slow"))
    qid = submit(a, "app@client.test", "once@example.net", "once")
    conn, _ = tarpit.accept()                 # A is delivering it now
    os.makedirs(a.workdir + "-b")
    b = Daemon(a.workdir + "-b", extra=plain_upstream("up", up.port) + default_route("up"),
               data_dir=a.data_dir)
    try:
        b.start(wait=False)
        assert b.proc.wait(timeout=30) != 0, b.log_tail()
        time.sleep(1)
        assert up.received() == [], "the second daemon sent the first one's message"
        assert "data_dir" in b.log_text(), b.log_tail()
        assert os.path.exists(os.path.join(a.data_dir, "control.sock"))
        assert control(a, b"stats\n")["ok"] is True
        assert a.queue_entry(qid)["recipients"][0]["attempts"] <= 1
    finally:
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        conn.close()
        tarpit.close()


def test_flush_and_retry_wake_the_scheduler(daemon_factory, upstreams):
    up = upstreams(fail_first=2)                  # the first two tries are deferred
    d = daemon_factory({"retry_min": "1h", "retry_max": "2h"},
                       extra=plain_upstream("up", up.port) + default_route("up"))
    qid = submit(d, "app@client.test", "someone@example.net", "flush")
    d.wait_status(qid, "deferred")
    assert up.received() == []
    r = json.loads(d.ctl("flush", "--json").stdout)[0]
    assert r["live"] is True and r["flushed"] == 1
    # the next try comes now, not in an hour: the upstream defers it once more
    wait_for(lambda: d.queue_entry(qid)["recipients"][0]["attempts"] >= 2, 20, "second attempt")
    d.wait_status(qid, "deferred")
    # queue retry marks it due and wakes the scheduler (without the kick it waits its timer)
    d.ctl("queue", "retry", qid)
    up.wait_messages(1, timeout=20)
    d.wait_status(qid, "sent")
    # queue flush is the same command
    assert b"0 deferred" in d.ctl("queue", "flush").stdout
    d.stop_and_check()
    # with the daemon down, flush still makes mail due and says nobody is there to send it
    p = d.ctl("flush", check=False)
    assert p.returncode == EX_UNAVAILABLE and b"not running" in p.stderr
