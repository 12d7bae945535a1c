# The C unit tests and the fuzz corpora, one pytest case each, so the suite's closing line counts
# them too. Unit binaries are TAP programs: `BIN --list` names the cases, `BIN NAME` runs one.
import os
import subprocess

import pytest

from conftest import BUILDDIR, SRCDIR

def _unit_binaries():
    """The UNIT_TESTS of Makefile.am: one list, so a new unit binary cannot be forgotten here."""
    import re
    with open(os.path.join(SRCDIR, "Makefile.am")) as f:
        text = f.read().replace("\\\n", " ")
    m = re.search(r"^UNIT_TESTS\s*=(.*)$", text, re.M)
    return [os.path.basename(w) for w in m.group(1).split()] if m else []


UNIT_BINARIES = _unit_binaries()
FUZZ_TARGETS = ["smtpgram", "session", "sendgrid_json", "inbound_events", "inbound_envelope", "mime", "content",
                "http_post", "anvil", "longlines", "dns", "proxy", "mailauth", "console_form"]


def _unit_params():
    params = []
    for b in UNIT_BINARIES:
        path = os.path.join(BUILDDIR, "tests", "unit", b)
        if not os.access(path, os.X_OK):
            params.append(pytest.param(b, None, f"{path} is not built", id=f"{b}:NOT-BUILT"))
            continue
        try:
            p = subprocess.run([path, "--list"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            params.append(pytest.param(b, None, f"{path} --list: {e}", id=f"{b}:LIST-FAILED"))
            continue
        names = [n.strip() for n in p.stdout.decode("utf-8", "replace").splitlines() if n.strip()]
        if p.returncode != 0 or not names:
            params.append(pytest.param(b, None, f"{path} --list exited {p.returncode} with "
                                       f"{len(names)} names: {p.stderr[:500]!r}",
                                       id=f"{b}:LIST-FAILED"))
            continue
        for n in names:
            params.append(pytest.param(b, n, None, id=f"{b}:{n}"))
    return params


@pytest.mark.parametrize("binary,case,problem", _unit_params())
def test_unit(binary, case, problem, tmp_path):
    if problem:
        pytest.fail(problem)
    path = os.path.join(BUILDDIR, "tests", "unit", binary)
    env = dict(os.environ, TMPDIR=str(tmp_path), srcdir=os.environ.get("srcdir", SRCDIR))
    p = subprocess.run([path, case], capture_output=True, timeout=60, cwd=tmp_path, env=env)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    detail = f"\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    assert p.returncode == 0, f"{binary} {case} exited {p.returncode}{detail}"
    assert f"ok 1 - {case}" in out.splitlines(), f"{binary} {case} did not report ok{detail}"
    assert "not ok" not in out, f"{binary} {case} reported a failure{detail}"
    assert "AddressSanitizer" not in err and "runtime error" not in err, f"sanitizer report{detail}"


@pytest.mark.parametrize("target", FUZZ_TARGETS)
def test_fuzz_corpus(target, tmp_path):
    path = os.path.join(BUILDDIR, "tests", "fuzz", f"fuzz_replay_{target}")
    corpus = os.path.join(SRCDIR, "tests", "fuzz", "corpus", target)
    assert os.access(path, os.X_OK), f"{path} is not built"
    assert os.path.isdir(corpus), f"no corpus directory {corpus}"
    files = [f for f in os.listdir(corpus) if os.path.isfile(os.path.join(corpus, f))]
    assert files, f"corpus {corpus} is empty: the replay would prove nothing"
    p = subprocess.run([path, corpus], capture_output=True, timeout=300, cwd=tmp_path)
    err = p.stderr.decode("utf-8", "replace")
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, \
        f"fuzz_replay_{target} over {len(files)} inputs exited {p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert "AddressSanitizer" not in err and "runtime error" not in err, err[-4000:]
