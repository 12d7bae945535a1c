# Faults of the store never multiply mail. An LD_PRELOAD shim (tests/fault/walfault.c, built
# here with the system compiler) makes every write to postern.db-wal fail with ENOSPC while a
# flag file exists: for 5 s of a steady load against a slow upstream on loopback, accepts get
# 4xx, delivery results cannot be written, and every message acknowledged with 250 must still
# reach the upstream exactly once, with the fault said once and its end said once.
import os
import re
import shutil
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import SRCDIR
from upstream import upstream_section

FAST = {"retry_min": "1s", "retry_max": "2s", "debug": "yes"}


@pytest.fixture(scope="session")
def walfault(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.fail("no C compiler (cc) to build tests/fault/walfault.c: install gcc")
    out = str(tmp_path_factory.mktemp("walfault") / "walfault.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out,
                    os.path.join(SRCDIR, "tests", "fault", "walfault.c"), "-ldl"], check=True)
    return out


def fault_env(monkeypatch, so, flag):
    monkeypatch.setenv("LD_PRELOAD", so)
    monkeypatch.setenv("POSTERN_FAULT_FLAG", str(flag))
    # the sanitizer build: our shim comes before the ASan runtime in the library list
    opts = os.environ.get("ASAN_OPTIONS", "")
    monkeypatch.setenv("ASAN_OPTIONS", (opts + ":" if opts else "") + "verify_asan_link_order=0")


def send(port, seq):
    """One message tagged X-Seq; True when it was acknowledged with 250."""
    msg = (f"From: app@client.test\r\nTo: someone@example.net\r\nSubject: load {seq}\r\n"
           f"X-Seq: {seq}\r\n\r\nmessage {seq}\r\n").encode()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("client.test")
            s.sendmail("app@client.test", ["someone@example.net"], msg)
        return True
    except (smtplib.SMTPException, OSError):
        return False


def test_wal_write_faults_never_multiply_mail(daemon_factory, upstreams, tmp_path, walfault,
                                              monkeypatch):
    flag = tmp_path / "fault.on"
    fault_env(monkeypatch, walfault, flag)
    up = upstreams(data_delay=0.05)
    d = daemon_factory(FAST, upstream_section("up", up.port, host="127.0.0.1", tls="none")
                       + "\n[route default]\nupstream = up\n")
    acked, refused = [], []
    stop = threading.Event()

    def load():
        seq = 0
        while not stop.is_set():
            (acked if send(d.port, seq) else refused).append(seq)
            seq += 1
            time.sleep(0.03)

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(2)
        flag.write_text("on")
        time.sleep(5)
        flag.unlink()
        time.sleep(3)
    finally:
        stop.set()
        t.join()
    assert refused, "the fault refused no message: the shim did not act"
    assert len(acked) > 50, acked

    def seqs():
        got = {}
        for m in up.received():
            s = int(re.search(rb"X-Seq: (\d+)", m["data"]).group(1))
            got[s] = got.get(s, 0) + 1
        return got

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not set(acked) <= set(seqs()):
        time.sleep(0.2)
    time.sleep(3)      # long enough for a wrongly repeated delivery to arrive too
    got = seqs()
    missing = sorted(set(acked) - set(got))
    twice = sorted(s for s, n in got.items() if n > 1)
    unacked = sorted(set(got) & set(refused))
    assert not missing and not twice and not unacked, (
        f"missing {missing[:20]}, more than once {twice[:20]}, delivered without 250 "
        f"{unacked[:20]}\n{d.log_tail(60)}")

    log = d.log_text()
    assert log.count("store: writes to postern.db fail") == 1, d.log_tail(80)
    assert log.count("store: writes to postern.db work again") == 1, d.log_tail(80)
    # results that met the fault were kept and written later, said once each way
    assert log.count("relay: the store refuses delivery results") == 1, d.log_tail(80)
    assert log.count("relay: the store takes delivery results again") == 1, d.log_tail(80)
    assert "may arrive twice" not in log
    # and the daemon serves on by itself
    assert send(d.port, 999999)
    up.wait_messages(len(acked) + 1, timeout=30)
