# The README as a new user reads it: every command its code blocks show runs as written (the
# exceptions below say why they cannot run here, and what runs instead), after what
# `scripts/dev.sh run` starts — the daemon on its embedded default, 127.0.0.1:587 as root,
# capturing — in a network namespace of its own, so the port is free and nothing leaves it.
# And no document names a file the repository lacks.
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BAD_LOG, BUILDDIR, POSTERN, SRCDIR, need_binary

IP = shutil.which("ip") or "/usr/sbin/ip"

# Commands of README.md's code blocks that this test does not run, and why.
EXCEPTIONS = {
    "bash scripts/dev.sh run":
        "installs packages, builds in the source tree and execs `_build/release/postern -f` "
        "in the foreground: the test runs that daemon, the same way, from the same directory",
    "bash scripts/dev.sh test":
        "runs the whole suite, of which this test is part",
    "autoreconf -fi && ./configure && make && make check && make install":
        "builds in the source tree and installs into the system; test_install.py runs "
        "`make install DESTDIR=...` of the build under test",
    "posternctl init noreply@clinic.example --dry-run":
        "asks its questions on a terminal and looks up clinic.example's MX: test_init.py runs it "
        "as written through a pseudo-terminal in a namespace whose dnsmasq serves that domain",
    "posternctl init app@clinic.example --provider sendgrid --api-key-file sendgrid.key "
    "--app-user app --dry-run":
        "reads sendgrid.key, a 0600 file of the reader's: test_init.py runs it as written in a "
        "directory that has one",
}


def code_blocks(path):
    """[(language, [lines])] of the fenced code blocks of a Markdown file."""
    blocks, lang, lines = [], None, None
    with open(path) as f:
        for line in f:
            m = re.match(r"^```(\w*)\s*$", line)
            if m and lines is None:
                lang, lines = m.group(1), []
            elif m:
                blocks.append((lang, lines))
                lines = None
            elif lines is not None:
                lines.append(line.rstrip("\n"))
    assert lines is None, f"{path}: a code block is not closed"
    return blocks


def readme_commands():
    cmds = []
    for lang, lines in code_blocks(os.path.join(SRCDIR, "README.md")):
        if lang in ("sh", "bash", "console", "shell", ""):
            for line in lines:
                cmd = re.sub(r"\s+#\s.*$", "", line).strip()    # a trailing shell comment
                if cmd and not cmd.startswith("#"):
                    cmds.append(cmd)
    return cmds


def test_every_exception_is_still_in_the_readme():
    # an exception that no longer matches a command would silently let a new one through
    cmds = readme_commands()
    for cmd in EXCEPTIONS:
        assert cmd in cmds, f"EXCEPTIONS names {cmd!r}, which README.md no longer shows"


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace, and port 587 as `scripts/dev.sh run` has it")
    name = f"preadme{os.getpid()}"
    p = subprocess.run([IP, "netns", "add", name], capture_output=True)
    if p.returncode:
        pytest.skip(f"this container cannot create network namespaces: {p.stderr.decode().strip()}")
    try:
        assert subprocess.run([IP, "-n", name, "link", "set", "lo", "up"]).returncode == 0
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True)


def wait_port(ns, port, proc, log, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"postern exited with {proc.returncode}:\n{log.read_text()}"
        out = subprocess.run([IP, "netns", "exec", ns, "ss", "-Hltn"], capture_output=True,
                             text=True).stdout
        if f"127.0.0.1:{port} " in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}:\n{log.read_text()}")


def wait_captured(ns, repo, env, qid, timeout=20):
    """The relay captures a message a moment after its 250, as a reader takes a moment to type
    the next line: wait for that, not for a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run([IP, "netns", "exec", ns, "_build/release/posternctl", "queue", "show",
                            qid, "--json"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=60)
        if q.returncode == 0 and all(r["status"] == "captured"
                                     for m in json.loads(q.stdout) for r in m["recipients"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{qid} was not captured: {q.stdout}{q.stderr}")


def test_readme_try_it_runs_as_written(tmp_path, netns):
    need_binary(POSTERN)
    if os.path.exists("/etc/postern/postern.conf"):
        pytest.skip("/etc/postern/postern.conf exists: the programs would use it, not the "
                    "embedded default the README shows")
    # the repository's directory as `scripts/dev.sh run` leaves it: the build in _build/release
    repo = tmp_path / "repo"
    (repo / "_build").mkdir(parents=True)
    os.symlink(BUILDDIR, repo / "_build" / "release")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTERN_", "SMTP_"))}
    log = tmp_path / "postern.log"
    daemon = subprocess.Popen([IP, "netns", "exec", netns, "_build/release/postern", "-f"],
                              cwd=repo, env=env, stdin=subprocess.DEVNULL,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(netns, 587, daemon, log)
        deadline = time.monotonic() + 20          # the start-up lines follow the bind
        while "all mail ->" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert "configuration (embedded default)" in text, text
        assert "all mail -> capture" in text, text
        ran = []
        qid = None
        for cmd in readme_commands():
            if cmd in EXCEPTIONS:
                continue
            if re.search(r"\bID\b", cmd):
                assert qid, f"{cmd!r} needs a queue ID, and no command before it made a message"
                cmd = re.sub(r"\bID\b", qid, cmd)
            p = subprocess.run([IP, "netns", "exec", netns, "bash", "-c", cmd], cwd=repo,
                               env=env, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, f"{cmd!r} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
            ran.append((cmd, p.stdout))
            if qid is None:
                q = subprocess.run([IP, "netns", "exec", netns, "_build/release/posternctl",
                                    "queue", "list", "--json"], cwd=repo, env=env,
                                   capture_output=True, text=True, timeout=60)
                if q.returncode == 0 and json.loads(q.stdout):
                    qid = json.loads(q.stdout)[0]["id"]
                    wait_captured(netns, repo, env, qid)
        assert qid, f"no command of the README put a message in the queue: {[c for c, _ in ran]}"
        outs = "\n".join(o for _, o in ran)
        assert re.search(rf"^{qid}\b", outs, re.M) and "captured  someone@example.net" in outs, outs
        assert "Subject: hello" in outs and "It works." in outs, outs
        # the mail is where the README says: ./postern-data of the repository's directory
        assert (repo / "postern-data" / "postern.db").exists()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    text = log.read_text()
    assert daemon.returncode == 0 and not BAD_LOG.search(text), text



POSTERN_UID = 64991


def with_postern_user(tmp_path, ns, argv, cwd, env, log):
    """Starts argv in ns where the postern system user exists, as `adduser --system --group
    postern` makes it, seen only by this process (a mount namespace of its own): the machine's
    files stay as they are."""
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(open("/etc/passwd").read() +
                      f"postern:x:{POSTERN_UID}:{POSTERN_UID}:Postern:/nonexistent:/usr/sbin/nologin\n")
    group.write_text(open("/etc/group").read() + f"postern:x:{POSTERN_UID}:\n")
    script = (f"mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && "
              'getent passwd postern >/dev/null && exec "$@"')
    return subprocess.Popen([IP, "netns", "exec", ns, "unshare", "-m", "sh", "-c", script, "sh"]
                            + argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_dev_run_starts_where_a_package_made_the_postern_user(tmp_path, netns):
    """`scripts/dev.sh run` from a checkout under /root (0700) on a machine where the `postern`
    system user exists (a package, or an earlier `make install` made it): the embedded default
    keeps its mail in ./postern-data there, which that user cannot reach, so it stays as started
    rather than drop to it and stop on "Permission denied"."""
    need_binary(POSTERN)
    if os.path.exists("/etc/postern/postern.conf"):
        pytest.skip("/etc/postern/postern.conf exists: the daemon would use it")
    home = tmp_path / "root"                 # as /root: nobody else may enter
    repo = home / "postern"
    (repo / "_build").mkdir(parents=True)
    os.chmod(home, 0o700)
    os.symlink(BUILDDIR, repo / "_build" / "release")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTERN_", "SMTP_"))}
    log = tmp_path / "postern.log"
    daemon = with_postern_user(tmp_path, netns, ["_build/release/postern", "-f"], repo, env, log)
    try:
        wait_port(netns, 587, daemon, log)
        p = subprocess.run([IP, "netns", "exec", netns, "bash", "-c",
                            "printf 'Subject: hello\\n\\nIt works.\\n' | _build/release/"
                            "postern-sendmail -f app@example.org someone@example.net"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr + log.read_text()
        q = subprocess.run([IP, "netns", "exec", netns, "_build/release/posternctl", "queue",
                            "list", "--json"], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=60)
        assert q.returncode == 0 and len(json.loads(q.stdout)) == 1, q.stdout + q.stderr
        wait_captured(netns, repo, env, json.loads(q.stdout)[0]["id"])
        text = log.read_text()
        assert "embedded default: running as root on loopback" in text, text
        assert "all mail -> capture" in text, text
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    text = log.read_text()
    assert daemon.returncode == 0 and not BAD_LOG.search(text), text
    assert "Permission denied" not in text and "warning" not in text.lower(), text


@pytest.fixture
def shared_dir():
    import pathlib
    import tempfile
    d = tempfile.mkdtemp(prefix="postern-user-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_data_dir_of_a_root_run_goes_to_the_user_made_later(tmp_path, netns, shared_dir):
    """Started as root before the postern user exists, the daemon refuses (it does not run as
    root in the user's place) and says how to fix it; a run as root on purpose (user = empty)
    leaves the store as root's 0600 files; once the user exists the daemon hands the data_dir
    over, and does not stop on "cannot open the store: Permission denied"."""
    need_binary(POSTERN)
    # where the user can reach it (pytest's own directories are root's 0700)
    data = shared_dir / "data"
    conf = tmp_path / "postern.conf"
    # and a password file as `posternctl init` run as root then wrote it: root's, 0600
    secret = tmp_path / "smarthost.secret"
    secret.write_text("app-password\n")
    os.chmod(secret, 0o600)
    conf.write_text(f"[postern]\ndata_dir = {data}\n\n[listener submission]\n"
                    "address = 127.0.0.1:2587\nrole = submission\n\n[upstream smarthost]\ntype = smtp\n"
                    "host = 127.0.0.1\nport = 2599\ntls = none\nusername = app@example.test\n"
                    f"password_file = {secret}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTERN_", "SMTP_"))}
    log = tmp_path / "postern.log"
    # no postern user yet: refused, before anything is made or bound
    p = subprocess.run([IP, "netns", "exec", netns, os.path.abspath(POSTERN), "-f", "-c",
                        str(conf)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert ("user postern does not exist; not starting as root in its place (create it: useradd "
            "--system --home-dir /var/lib/postern --shell /usr/sbin/nologin postern; or set "
            "user = empty in [postern] to stay root on purpose)") in p.stderr, p.stderr
    assert "daemon started" not in p.stderr and not data.exists(), p.stderr
    # the operator stays root on purpose for a while (user = empty: a loud warning)
    as_root = tmp_path / "as-root.conf"
    as_root.write_text(conf.read_text().replace("[postern]\n", "[postern]\nuser =\n", 1))
    for run in ("before", "after"):
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh"] if run == "before" else None
        cmd = [os.path.abspath(POSTERN), "-f", "-c", str(as_root if run == "before" else conf)]
        daemon = (subprocess.Popen([IP, "netns", "exec", netns] + argv + cmd, cwd=tmp_path,
                                   env=env, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                                   stderr=subprocess.STDOUT)
                  if argv else with_postern_user(tmp_path, netns, cmd, tmp_path, env, log))
        try:
            wait_port(netns, 2587, daemon, log)
            deadline = time.monotonic() + 20
            while log.read_text().count("daemon started") < (1 if run == "before" else 2):
                assert time.monotonic() < deadline and daemon.poll() is None, log.read_text()
                time.sleep(0.05)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        assert daemon.returncode == 0, log.read_text()
        owner = 0 if run == "before" else POSTERN_UID
        assert os.stat(data / "postern.db").st_uid == owner, (run, log.read_text())
    text = log.read_text()
    assert "running as root because user = is empty in [postern]" in text, text
    assert f"data_dir {data} given to user postern" in text, text
    # the password is read at each delivery, long after the start: the start says so
    assert (f"{secret} is readable by its owner only and user postern does not own it" in text
            and f"(chown postern {secret})" in text), text

# ---------------------------------------------------------------------------------------------
# Documents stand alone: none names a file the repository lacks.

DOCS = ["README.md", "HACKING.md"] + [os.path.join(d, f) for d in ("doc", "conf")
                        for f in sorted(os.listdir(os.path.join(SRCDIR, d)))]


def named_files(text):
    """Repository paths a text names: X.md, a path below a top-level directory of the
    repository (or _build/release, the build), anything reached through ../"""
    found = set(re.findall(r"(?<![\w/.-])(\.\./[\w./-]*)", text))
    found |= set(re.findall(r"(?<![\w/.-])([A-Z][\w-]*\.md)\b", text))
    tops = {e for e in os.listdir(SRCDIR) if os.path.isdir(os.path.join(SRCDIR, e))} | {"_build"}
    for m in re.finditer(r"(?<![\w/.$@-])((\.?[\w-]+)/[\w./-]*[\w-])", text):
        # "auth/password_file" is prose (auth or password_file); a file has an extension, or
        # lives where scripts and build outputs do
        if m.group(2) in tops and ("." in m.group(1).rsplit("/", 1)[1] or
                                   m.group(2) in (".ci", "scripts", "tests", "_build")):
            found.add(m.group(1))
    return found


def exists(path):
    if path.startswith("_build/release/"):
        return os.path.exists(os.path.join(BUILDDIR, path[len("_build/release/"):]))
    return not path.startswith("../") and os.path.exists(os.path.join(SRCDIR, path))


def test_no_document_names_a_missing_file():
    missing = {}
    for doc in DOCS:
        with open(os.path.join(SRCDIR, doc), errors="replace") as f:
            for name in named_files(f.read()):
                if not exists(name):
                    missing.setdefault(doc, []).append(name)
    assert not missing, f"documents name files the repository does not have: {missing}"


def test_missing_file_detection_can_fail():
    assert named_files("see DESIGN.md and ../shared/specs, or scripts/dev.sh") == {
        "DESIGN.md", "../shared/specs", "scripts/dev.sh"}
    assert not exists("DESIGN.md") and not exists("../shared/specs") and exists("scripts/dev.sh")
