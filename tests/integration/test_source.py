"""Source-tree checks as suite cases: banned C calls and the layering of HACKING.md."""
import os
import subprocess

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_no_banned_calls_and_layers_hold():
    r = subprocess.run([os.path.join(SRC, 'tests', 'check-source')], cwd=SRC,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_layer_check_catches_an_upward_include(tmp_path):
    """The in-tree checker is the one the suite relies on: it must fail on a lib/ file that
    includes relay/ and on relay/ including inbound/, and pass the same tree without them."""
    for d in ('lib', 'relay', 'inbound'):
        (tmp_path / d).mkdir()
    (tmp_path / 'relay' / 'relay.h').write_text('#pragma once\n')
    (tmp_path / 'inbound' / 'inbound.h').write_text('#pragma once\n')
    (tmp_path / 'lib' / 'buf.c').write_text('#include "lib/buf.h"\n')
    (tmp_path / 'lib' / 'buf.h').write_text('#pragma once\n')
    check = os.path.join(SRC, 'tests', 'check-layers')
    assert subprocess.run([check, str(tmp_path)], capture_output=True).returncode == 0
    (tmp_path / 'lib' / 'bad.c').write_text('#include "relay/relay.h"\n')
    (tmp_path / 'relay' / 'bad.c').write_text('#include "../inbound/inbound.h"\n')
    r = subprocess.run([check, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert 'lib/bad.c:1: lib/ includes relay/relay.h' in r.stdout
    assert 'relay/bad.c:1: relay/ includes inbound/inbound.h' in r.stdout


def test_no_call_cycle_between_files_of_one_folder():
    """HACKING.md: within a folder, files call each other one way (read from nm of the objects
    make left in the build directory)."""
    from conftest import BUILDDIR
    r = subprocess.run([os.path.join(SRC, 'tests', 'check-cycles'), BUILDDIR],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == '', r.stdout + r.stderr


def test_cycle_check_finds_a_cycle(tmp_path):
    """The checker itself: two files of one folder that call each other are a cycle; the same
    calls one way are not."""
    import shutil
    cc = shutil.which('cc') or shutil.which('gcc')
    assert cc, 'no C compiler'
    d = tmp_path / 'auth'
    d.mkdir()
    srcs = {'a': 'int b(void); int a(void) { return b(); }',
            'b': 'int a(void); int b(void) { return a(); }',
            'c': 'int a(void); int c(void) { return a(); }'}
    for name, text in srcs.items():
        (tmp_path / f'{name}.c').write_text(text + '\n')
        subprocess.run([cc, '-c', '-o', str(d / f'libpostern_auth_a-{name}.o'),
                        str(tmp_path / f'{name}.c')], check=True)
    check = os.path.join(SRC, 'tests', 'check-cycles')
    r = subprocess.run([check, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'auth/ (libpostern_auth_a): cycle between a.c, b.c:' in r.stdout, r.stdout
    assert 'c.c' not in r.stdout.split(':')[1], r.stdout
    (d / 'libpostern_auth_a-b.o').unlink()
    r = subprocess.run([check, str(tmp_path)], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, ''), r.stdout + r.stderr
