"""`nanogpt-monitor serve`: bad input is one line on stderr and exit code 2, before anything listens."""

from __future__ import annotations

import pytest

from exporter import cli


def test_a_port_out_of_range_is_refused_by_the_argument_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--dir", "unused", "--port", "70000"])
    assert exit_.value.code == 2
    assert "--port: expected a port from 0 to 65535, got 70000" in capsys.readouterr().err


def test_a_run_directory_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["serve", "--dir", str(blocker / "run")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == f"error: cannot use {blocker / 'run'} as the run directory: Not a directory\n"
