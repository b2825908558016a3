from __future__ import annotations

import subprocess
import sys

from hami.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: hami" in out


def test_python_dash_m_runs():
    proc = subprocess.run([sys.executable, "-m", "hami", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("hami-py ")
