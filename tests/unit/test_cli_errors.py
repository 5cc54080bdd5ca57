"""The CLI's bad-input contract: one line on stderr, exit 125, nothing else (no usage block)."""

from __future__ import annotations

import pytest

from minibox.cli import main


@pytest.mark.parametrize(("argv", "words"), [
    (["run", "--isolation", "bogus", "true"], "--isolation: invalid choice"),
    (["run", "--net", "x", "true"], "--net: invalid choice"),
    (["run", "--memory", "1" + "0" * 400, "true"], "--memory:"),
    (["run", "--pids", str(10**12), "true"], "--pids:"),
    (["run", "--cpuset", "1-0", "true"], "--cpuset:"),
    (["run", "--cpus", "lots", "true"], "--cpus"),
    (["run", "--no-such-flag", "true"], "unrecognized arguments"),
    (["run", "--rootfs", "/", "--rootfs-overlay-size", "64M", "true"], "--rootfs-overlay-size:"),
    (["rootfs", "nope", "/tmp/x"], "invalid choice"),
])
def test_bad_input_is_one_line_and_125(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's exit
        code = e.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 125
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("minibox: "), err
    assert words in err
