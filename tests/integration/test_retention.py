# Retention with a short window, end to end: mail delivered to an upstream on loopback is
# deleted by the daemon's pruner once final, recorded and older than `retention`, its outbound
# record keeps ids, subject and status but loses the text; the file shrinks (incremental
# vacuum); `posternctl store stats|prune [--dry-run]|vacuum` show and do the same by hand.
import json
import re
import smtplib
import time

from test_ops import wait_for
from upstream import upstream_section

FAST = {"retry_min": "1s", "retry_max": "2s", "debug": "yes"}


def send(d, i, size=20000):
    body = ("x" * 76 + "\r\n") * (size // 78)
    msg = (f"From: app@client.test\r\nTo: pat@example.net\r\nSubject: kept {i}\r\n\r\n"
           f"text {i}\r\n{body}").encode()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("app@client.test")
        s.rcpt("pat@example.net")
        code, resp = s.data(msg)
    assert code == 250, resp
    return re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()


def record(d, qid):
    p = d.ctl("correspondence", "show", qid, "--json", check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


def stats(d):
    return json.loads(d.ctl("store", "stats", "--json").stdout)[0]


def test_retention_prunes_delivered_mail_and_the_file_shrinks(daemon_factory, upstreams):
    up = upstreams()
    conf = upstream_section("up", up.port, host="127.0.0.1", tls="none") + \
        "\n[route default]\nupstream = up\n"
    d = daemon_factory(dict(FAST, retention="0"), conf)
    ids = [send(d, i) for i in range(150)]
    up.wait_messages(150, timeout=60)
    # retention = 0 keeps everything, however old
    out = d.ctl("store", "prune", "--dry-run").stdout
    assert out.startswith(b"would remove: 0 message(s), 0 inbound message(s)"), out
    full = wait_for(lambda: (lambda s: s if s["tables"]["messages"]["rows"] == 150 else None)(
        stats(d)), 60, "150 messages stored")
    assert full["file_bytes"] > 2_000_000, full
    rec = wait_for(lambda: record(d, ids[0]), 60, "the record of the first message")
    assert rec["text"].startswith("text 0"), rec

    # a short retention: the daemon's pruner removes them (about a second after a reload)
    d.write_config(dict(FAST, retention="2s"), conf)
    assert b"reloaded" in d.ctl("reload").stdout
    s = wait_for(lambda: (lambda s: s if s["tables"]["messages"]["rows"] == 0 and
                          s["file_bytes"] < full["file_bytes"] / 2 else None)(stats(d)),
                 60, "the pruner removed the delivered mail and the file shrank")
    assert s["tables"]["recipients"]["rows"] == 0, s
    assert s["file_bytes"] < full["file_bytes"] / 2, (s, full)
    assert "store: pruned" in d.log_text()
    rec = json.loads(d.ctl("correspondence", "show", ids[0], "--json").stdout)[0]
    assert rec["id"] == ids[0] and rec["subject"] == "kept 0" and rec["status"] == "sent", rec
    assert rec["text"] == "" and rec["content_pruned"] is True, rec
    assert s["next_prune"]["messages"] == 0

    # by hand, the same: one more message, pruned by posternctl once it is old enough
    d.write_config(dict(FAST, retention="1h"), conf)
    assert b"reloaded" in d.ctl("reload").stdout
    qid = send(d, 999)
    up.wait_messages(151)
    wait_for(lambda: (record(d, qid) or {}).get("status") == "sent", 60, "record of the last message")
    d.write_config(dict(FAST, retention="1s"), conf)     # read by posternctl, not the daemon
    time.sleep(1.5)
    out = d.ctl("store", "prune", "--dry-run").stdout.decode()
    assert out.startswith("would remove: 1 message(s)"), out
    out = d.ctl("store", "prune").stdout.decode()
    assert out.startswith("removed: 1 message(s) (1 record text(s))"), out
    assert stats(d)["tables"]["messages"]["rows"] == 0
    text = d.ctl("store", "stats").stdout.decode()
    assert "messages" in text and "next pruning removes: 0 message(s)" in text, text

    # store vacuum, postern stopped: the store stays usable
    d.stop_and_check()
    assert b"rewritten" in d.ctl("store", "vacuum").stdout
    d.start()
    assert stats(d)["tables"]["records"]["rows"] == 151


def test_store_vacuum_shrinks_a_store_that_grew_large(daemon_factory, upstreams):
    # a store made before incremental vacuum keeps its size after pruning (its pages are only
    # freed inside the file) until `posternctl store vacuum`, which postern must not be
    # running for
    import os
    import sqlite3
    up = upstreams()
    conf = upstream_section("up", up.port, host="127.0.0.1", tls="none") + \
        "\n[route default]\nupstream = up\n"
    d = daemon_factory(dict(FAST, retention="0"), conf)
    ids = [send(d, i, size=40000) for i in range(60)]
    up.wait_messages(60, timeout=60)
    wait_for(lambda: (record(d, ids[-1]) or {}).get("status") == "sent", 60, "the last record")
    p = d.ctl("store", "vacuum", check=False)
    assert p.returncode == 75 and b"postern is running: stop it" in p.stderr, p.stderr
    d.stop_and_check()
    db = os.path.join(d.data_dir, "postern.db")
    con = sqlite3.connect(db, isolation_level=None)
    try:                                     # as an older version made it
        con.execute("PRAGMA auto_vacuum = NONE")
        con.execute("VACUUM")
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    finally:
        con.close()
    d.write_config(dict(FAST, retention="1s"), conf)     # read by posternctl
    time.sleep(1.5)
    out = d.ctl("store", "prune").stdout.decode()
    assert out.startswith("removed: 60 message(s)"), out
    grown = stats(d)
    assert grown["free_bytes"] > 2_000_000 and grown["file_bytes"] > 2_000_000, grown
    assert b"rewritten" in d.ctl("store", "vacuum").stdout
    s = stats(d)
    assert s["file_bytes"] < grown["file_bytes"] - 2_000_000, (s, grown)
    assert s["free_bytes"] < 100_000, s
    assert s["tables"]["records"]["rows"] == 60, s
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2     # incremental now
    finally:
        con.close()
    d.write_config(dict(FAST, retention="0"), conf)
    d.start()
    assert stats(d)["tables"]["messages"]["rows"] == 0
