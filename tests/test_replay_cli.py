"""`soar replay --json` as a user runs it: one JSON object on stdout, errors as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"


def soar(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")} | env
    return subprocess.run([sys.executable, "-m", "soar", *args], env=full, capture_output=True,
                          text=True, timeout=120)


def test_replay_json_summary(testdata: Path, tmp_path: Path, db_url: str) -> None:
    proc = soar("replay", str(testdata / OGN_TRACE), "--json",
                env={"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of stdout is the one object
    assert {"messages", "fixes", "flights", "rejects"} <= summary.keys()
    assert (summary["messages"], summary["fixes"], summary["flights"], summary["rejects"]) == (
        1183, 1183, 2, 0)


def test_replay_of_a_missing_or_unknown_file_is_one_line(tmp_path: Path, db_url: str) -> None:
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar("replay", str(tmp_path / "nope.txt"), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope.txt" in proc.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 this is no capture\n")
    proc = soar("replay", str(junk), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
