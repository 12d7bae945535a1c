# The daemon's command line and signals: -n reports every configuration mistake as FILE:LINE,
# -V prints the version, SIGHUP reloads while serving, SIGTERM lets a session in the middle of
# DATA finish (within shutdown_grace) and then exits 0 with the message stored.
import os
import re
import signal
import subprocess
import time

from conftest import POSTERN, SRCDIR, check_stored, dot_stuff, free_port, need_binary, render_config


def run_postern(*args, timeout=30):
    need_binary(POSTERN)
    p = subprocess.run([POSTERN, *args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def test_check_reports_three_mistakes(tmp_path):
    conf = tmp_path / "bad.conf"
    data = tmp_path / "data"
    data.mkdir()
    conf.write_text(
        "[postern]\n"                                   # 1
        "hostname = relay.test.example\n"               # 2
        f"data_dir = {data}\n"                          # 3
        "max_mesage_size = 35M\n"                       # 4  unknown key (typo)
        "max_recipients = 100\n"                        # 5
        "idle_timeout = soon\n"                         # 6  not a duration
        "\n"                                            # 7
        "[listener submission]\n"                       # 8
        f"address = 127.0.0.1:{free_port()}\n"          # 9
        "role = postmaster\n")                          # 10 not submission | mx
    rc, out = run_postern("-c", str(conf), "-n")
    assert rc == 1, f"postern -n exited {rc} on a bad file\n{out}"
    lines = [l for l in out.splitlines() if l.startswith(f"{conf}:")]
    where = sorted(int(m.group(1)) for m in (re.match(re.escape(str(conf)) + r":(\d+): \S", l) for l in lines) if m)
    assert where == [4, 6, 10], f"expected FILE:LINE: messages for lines 4, 6 and 10, got:\n{out}"
    assert "max_mesage_size" in out, f"the unknown key is not named:\n{out}"


def test_check_good_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "good.conf"
    conf.write_text(render_config(free_port(), str(data)))
    rc, out = run_postern("-c", str(conf), "-n")
    assert rc == 0, f"postern -n exited {rc} on a good file\n{out}"
    assert f"{conf}:" not in out, out


def test_unknown_section_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "sect.conf"
    conf.write_text(render_config(free_port(), str(data)) + "\n[frobnicate]\nx = 1\n")
    rc, out = run_postern("-c", str(conf), "-n")
    assert rc == 1, out
    assert re.search(re.escape(str(conf)) + r":\d+: .*frobnicate", out), out


def test_version():
    rc, out = run_postern("-V")
    assert rc == 0, out
    with open(os.path.join(SRCDIR, "configure.ac")) as f:
        version = re.search(r"AC_INIT\(\[postern\],\s*\[([^\]]+)\]", f.read()).group(1)
    assert version in out, f"-V printed {out!r}, expected version {version}"


def test_sighup_reload(daemon):
    d = daemon       # max_recipients = 100
    before = d.smtp()
    try:
        before.greet()
        with d.smtp() as c:
            c.greet()
            c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
            for i in range(3):
                c.cmd_expect(f"RCPT TO:<r{i}@example.test>", 250)
            c.cmd_expect("QUIT", 221)
        d.write_config({"max_recipients": "2"})
        pid = d.proc.pid
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            with d.smtp() as c:
                c.greet()
                c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
                c.cmd_expect("RCPT TO:<r0@example.test>", 250)
                c.cmd_expect("RCPT TO:<r1@example.test>", 250)
                r = c.cmd("RCPT TO:<r2@example.test>")
                if r.code == 452:
                    assert r.enhanced == "4.5.3", r
                    break
                assert r.code == 250, r
                assert time.monotonic() < deadline, "max_recipients = 2 not in force 10s after SIGHUP"
            time.sleep(0.2)
        assert d.running() and d.proc.pid == pid, "the daemon restarted instead of reloading"
        # A session opened before the reload still works.
        content = b"From: a@clinic.test\r\nSubject: across reload\r\n\r\nbody\r\n"
        r = before.send_message("a@clinic.test", ["b@example.test"], content)
        assert r.code == 250, r
        check_stored(d.queue_cat(r.queue_id()), content)
    finally:
        before.close()


def test_sighup_bad_config_keeps_running(daemon):
    d = daemon
    with open(d.conf, "a") as f:
        f.write("\nnonsense_key = 1\n")
    d.signal(signal.SIGHUP)
    time.sleep(1)
    assert d.running(), "a bad configuration on SIGHUP killed the daemon\n" + d.log_tail()
    with d.smtp() as c:
        c.greet()
        r = c.send_message("a@clinic.test", ["b@example.test"],
                           b"From: a@clinic.test\r\nSubject: x\r\n\r\nstill here\r\n")
        assert r.code == 250, r
    d.write_config(d.settings)      # a good file again, for the final SIGTERM


def test_sigterm_lets_data_finish(daemon_factory):
    d = daemon_factory({"shutdown_grace": "10s"})
    content = (b"From: a@clinic.test\r\nTo: b@example.test\r\nSubject: during shutdown\r\n\r\n"
               + b"line of the message that is in flight\r\n" * 2000)
    wire = dot_stuff(content) + b".\r\n"
    with d.smtp(timeout=30) as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        c.send(wire[:len(wire) // 2])
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert d.running(), "daemon exited with a session in the middle of DATA\n" + d.log_tail()
        # It stops accepting: a new connection is refused or told 421.
        try:
            with d.smtp(timeout=5) as late:
                r = late.read_reply(5)
                assert r.code == 421, f"new session accepted after SIGTERM: {r!r}"
        except (ConnectionRefusedError, EOFError, ConnectionResetError, TimeoutError):
            pass
        c.send(wire[len(wire) // 2:])
        r = c.read_reply(10)
        if r.code != 250:
            c.fail(f"message in flight at SIGTERM refused: {r!r}")
        qid = r.queue_id()
        try:
            r = c.cmd("QUIT", timeout=5)
            assert r.code in (221, 421), r
        except (EOFError, OSError):
            pass
    rc = d.proc.wait(timeout=15)
    assert rc == 0, f"exit status {rc} after SIGTERM\n{d.log_tail()}"
    assert time.monotonic() - t0 < 12, "took longer than shutdown_grace to exit"
    d.check_log()
    # The store is consistent and holds the message (posternctl reads it without the daemon).
    check_stored(d.queue_cat(qid), content)


def test_sigterm_idle_session_bounded_by_grace(daemon_factory):
    d = daemon_factory({"shutdown_grace": "2s"})
    with d.smtp() as c:
        c.greet()
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=15)
        took = time.monotonic() - t0
    assert rc == 0, f"exit status {rc}\n{d.log_tail()}"
    assert took < 6, f"an idle session kept the daemon alive {took:.1f}s past SIGTERM (grace 2s)"
    d.check_log()
