# Upgrading: a store written by the release before the store's life cycle (schema version 4;
# tests/fixtures/store-v4.db, made by tests/fixtures/make_old_store.py with that release's
# binaries) is opened by this daemon: migrated in one transaction, rewritten once for
# incremental vacuum, its deferred message delivered, its record with the attachment kept and
# linked (so retention can later take the attachment along), and prunable like new mail.
import json
import os
import shutil
import sqlite3
import time

from conftest import SRCDIR
from test_upstream import FAST, wait_rcpt
from upstream import upstream_section

FIXTURE = os.path.join(SRCDIR, "tests", "fixtures", "store-v4.db")


def test_store_of_the_previous_release_migrates(daemon_factory, upstreams):
    sink = upstreams()
    conf = (upstream_section("sink", sink.port, host="127.0.0.1", tls="none") +
            "\n[route default]\nupstream = sink\n")
    d = daemon_factory(FAST, conf, start=False)
    shutil.copyfile(FIXTURE, os.path.join(d.data_dir, "postern.db"))
    os.chmod(os.path.join(d.data_dir, "postern.db"), 0o600)
    # The fixture was made on a given day: its mail is moved to a minute ago, and its deferred
    # recipient kept due a day from now, so that the test, not the clock, decides what happens
    # (left as made, the deferred one would be delivered at start an hour later, get a delay
    # warning after four hours and expire after five days, and retention would take it all
    # after thirty).
    now_ms = int(time.time() * 1000)
    db = sqlite3.connect(os.path.join(d.data_dir, "postern.db"))
    try:
        with db:
            assert db.execute("UPDATE messages SET created_ms = ?",
                              (now_ms - 60000,)).rowcount == 2
            db.execute("UPDATE recipients SET updated_ms = ?", (now_ms - 60000,))
            db.execute("UPDATE records SET received_ms = ?", (now_ms - 60000,))
            n = db.execute("UPDATE recipients SET next_attempt_ms = ? WHERE status = 'deferred'",
                           (now_ms + 86400 * 1000,)).rowcount
        assert n == 1, n
    finally:
        db.close()
    old = {e["id"]: e for e in json.loads(d.ctl("queue", "list", "--json", check=False).stdout
                                         or b"[]")}
    assert not old, "posternctl must not read an unmigrated store as if it were current"
    d.start()
    assert "rewritten once for incremental vacuum" in d.log_text(), d.log_tail(30)

    queue = {e["id"]: e for e in d.queue_list()}
    assert len(queue) == 2, queue
    deferred = [q for q, e in queue.items() if e["recipients"][0]["status"] == "deferred"]
    assert len(deferred) == 1, queue
    d.ctl("queue", "retry", deferred[0])
    got = sink.wait_messages(1, timeout=30)
    assert b"Subject: deferred" in got[0]["data"]
    wait_rcpt(d, deferred[0], "pat@down.example", "sent")

    records = json.loads(d.ctl("correspondence", "list", "--json").stdout)
    withatt = [r for r in records if r["subject"] == "with attachment"]
    assert len(withatt) == 1 and withatt[0]["attachments"][0]["filename"] == "a.csv", records

    db = sqlite3.connect(os.path.join(d.data_dir, "postern.db"))
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        assert version >= 8, version
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert db.execute("SELECT count(*) FROM record_attachments").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM forward_queue").fetchone()[0] == 0
    finally:
        db.close()

    # what the old release delivered is pruned like anything else once old enough
    d.write_config(dict(FAST, retention="1s"), conf)
    removed = 0
    deadline = time.monotonic() + 30
    while removed < 2 and time.monotonic() < deadline:
        out = d.ctl("store", "prune").stdout.decode()
        removed += int(out.split("removed: ")[1].split(" ")[0])
        time.sleep(0.5)
    assert removed == 2 and not d.queue_list(), d.log_tail(30)
    assert json.loads(d.ctl("store", "stats", "--json").stdout)[0]["tables"]["records"]["rows"] == 2
