"""Source-tree checks as suite cases: banned C calls and the layering of DESIGN.md."""
import os
import subprocess

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_no_banned_calls_and_layers_hold():
    r = subprocess.run([os.path.join(SRC, 'tests', 'check-source')], cwd=SRC,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
