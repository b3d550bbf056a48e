"""The docs are true: every command in the ```sh blocks of README.md and docs/*.md runs.

Each document's commands run in order, as one user session, in a clean copy of this tree (the
files git tracks or would track, as they are now: no .venv, no ./var, nothing left over) placed
beside a `shared/data` that is the real captures, so `../shared/data` means what it says. The
copy's `.venv` is a bare venv that sees the installed dependencies and the *copy's* `soar`.
The database is the session's embedded PostgreSQL from conftest.py (`SOAR_DATABASE_URL`).

`make run` does not exit: the test starts it in the background where the document does, waits
for /readyz and stops it (SIGTERM) at the end of the document. Some commands cannot run here;
they are listed in EXCLUDED with the reason and what is checked instead. The only rewrites are
in SUBSTITUTIONS (a free port for 8080, no browser, the systemd venv path). Every `soar` command
line, in a block or inline in the prose, must parse: subcommands and flags exist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from soar.cli import build_parser
from soar.config import load_settings
from tests.support import free_port, soar_env, wait_ready

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_TIMEOUT = 300  # bounds a stuck command on a busy machine; never a measurement


# -- reading the documents -------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    doc: str
    line: int  # where it starts in the document
    text: str  # one logical command: continuation lines and here-documents included

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text.splitlines()[0]}"


def shell_commands(path: Path) -> list[Command]:
    """The commands of every ```sh block, in document order."""
    commands: list[Command] = []
    lines = path.read_text().splitlines()
    in_block = False
    pending: list[str] = []
    start = 0
    heredoc: str | None = None
    for number, line in enumerate(lines, 1):
        if not in_block:
            in_block = line.strip() in ("```sh", "```bash", "```shell")
            continue
        if heredoc is None and line.strip() == "```":
            in_block = False
            continue
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        pending.append(line)
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            else:
                continue
        else:
            found = re.search(r"<<-?\s*'?\"?(\w+)", line)
            if found:
                heredoc = found.group(1)
                continue
            if line.rstrip().endswith("\\"):
                continue
        commands.append(Command(path.name, start, "\n".join(pending)))
        pending = []
    assert not in_block and not pending, f"{path.name}: unterminated block or command"
    return commands


def inline_code(path: Path) -> list[str]:
    """Code spans in the prose (outside fenced blocks)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


# -- what is not run, and what is rewritten --------------------------------------------------


@dataclass(frozen=True)
class Excluded:
    pattern: str
    reason: str


EXCLUDED = [
    Excluded(r"^make test\b", "runs lint and the whole suite, this test included: `make -n test`"
             " is checked"),
    Excluded(r"^SOAR_APRS_SERVER=aprs\.glidernet\.org", "needs the internet (the live OGN feed):"
             " its SOAR_* assignments are loaded as settings and `make -n run` is checked"),
    Excluded(r"^(docker |cd contrib/docker$|cat > \.env )", "needs a Docker daemon and root:"
             " the paths it names must exist (tests/test_contrib.py checks the files)"),
    Excluded(r"^(python3\.11 -m venv /opt/|install |systemctl |journalctl )", "installs into the"
             " system as root under systemd: the paths it names must exist"),
]

#: `make run` or `soar run …` in the foreground or the background: started by the test, which
#: waits for /readyz and stops it before the next command (it does not exit by itself).
SERVE = re.compile(r"^(make run|\.venv/bin/soar run\b[^&#]*?)( &)?\s*(#.*)?$")


def excluded(command: Command) -> Excluded | None:
    return next((e for e in EXCLUDED if re.search(e.pattern, command.text)), None)


def substitutions(port: int) -> list[tuple[str, str, str]]:
    """(pattern, replacement, why): the only changes made to a command before it runs."""
    return [
        (r"(localhost|127\.0\.0\.1):8080\b", rf"\g<1>:{port}", "a free port: 8080 may be taken"),
        (r"\bxdg-open (\S+)", r"curl -sf \1 -o /dev/null", "no browser here: the page must answer"),
        (r"/opt/soar/venv/", ".venv/", "the systemd layout's venv is the copy's .venv"),
        (r"soar-2025-12-23\.dump", "soar-$(date +%F).dump", "restore the dump just made"),
    ]


def rewrite(text: str, port: int, pg_host: str) -> str:
    for pattern, replacement, _why in substitutions(port):
        text = re.sub(pattern, replacement, text)
    # the embedded cluster's socket directory is this session's, not ./var/postgres
    return re.sub(r'"\$PWD/var/postgres"', shlex.quote(pg_host), text)


# -- checks on what commands print, where the document says what they print ------------------


def _replay_summary_matches_the_doc(out: str, doc_text: str) -> None:
    summary = json.loads(out)
    # nothing rejected but the trace's 66 repeats of a report heard by a second receiver
    assert set(summary["reject_reasons"]) <= {"duplicate"}, summary
    stated = re.search(r"(\d+) fixes and (\d+) flights? for this capture", doc_text)
    if stated:  # operations.md states the result; it must be the one the replay prints
        assert (summary["committed"]["fixes"], summary["flights"]) == (
            int(stated.group(1)), int(stated.group(2))), summary


def _ready(out: str, _doc: str) -> None:
    assert json.loads(out)["ready"] is True, out


def _healthy(out: str, _doc: str) -> None:
    assert '"status": "ok"' in out or '"status":"ok"' in out, out


def _flights_of_the_day(out: str, doc_text: str) -> None:
    flights = json.loads(out)
    flights = flights.get("flights", flights) if isinstance(flights, dict) else flights
    assert flights, "the replayed capture has flights on 2025-12-23"
    said = re.search(r"the replayed flight \((\w+)", doc_text)
    if said:
        assert said.group(1) in out, f"the doc names {said.group(1)}: {out[:500]}"


def _metrics(out: str, _doc: str) -> None:
    names = {line.split("{")[0] for line in out.splitlines()}
    assert {"soar_task_running", "soar_store_up"} <= names, out


EXPECT: list[tuple[str, Callable[[str, str], None]]] = [
    (r"soar replay .*--json", _replay_summary_matches_the_doc),
    (r"curl .*/readyz", _ready),
    (r"curl .*/healthz", _healthy),
    (r"curl .*/api/flights\?date=", _flights_of_the_day),
    (r"curl .*/metrics \| grep", _metrics),
]


# -- a clean copy of the tree with its own .venv ---------------------------------------------


def clean_copy(dest: Path, testdata: Path) -> Path:
    root = dest / "soar"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the tree is not copied
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (dest / "shared").mkdir()
    (dest / "shared" / "data").symlink_to(testdata.resolve())

    venv = root / ".venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(venv)], check=True, timeout=COMMAND_TIMEOUT)
    site = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # The copy's soar first (a plain directory beats the editable install's finder, which sits
    # after the path finder), then every installed dependency.
    (site / "soar_docs_test.pth").write_text(
        f"{root}\nimport site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    script = venv / "bin" / "soar"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom soar.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: `make venv` has nothing to do
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import soar; print(soar.__file__)"],
                           capture_output=True, text=True, check=True, cwd=dest).stdout
    assert where.startswith(str(root)), where
    return root


# -- running a document ----------------------------------------------------------------------


class Server:
    """`make run` (or `soar run`) as the document starts it, in its own process group."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], port: int, log: Path) -> None:
        text = re.sub(r"\s*&?\s*(#.*)?$", "", command)
        self.log = log.open("w")
        self.proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{port}", self.proc, COMMAND_TIMEOUT, log)
        except AssertionError as exc:
            raise AssertionError(f"`{text}`: {exc}") from None

    def stop(self) -> None:
        """SIGTERM to make and soar, as Ctrl-C would; soar drains and exits."""
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        try:
            self.proc.wait(timeout=COMMAND_TIMEOUT)  # reaped: no zombie keeps the group alive
            while True:  # soar itself, under make, is gone once the group is
                os.killpg(group, 0)
                if time.monotonic() > deadline:
                    os.killpg(group, signal.SIGKILL)
                time.sleep(0.2)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.proc.wait()
        finally:
            self.log.close()


def run_script(commands: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run commands in one bash (variables carry over); return what each printed."""
    marker = "@@soar-docs-test@@"
    script = "set -e\n" + "".join(f"echo {marker}\n{text}\n" for text in commands)
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT * max(1, len(commands)))
    outputs = proc.stdout.split(marker + "\n")[1:]
    if proc.returncode != 0:
        failed = commands[len(outputs) - 1] if outputs else commands[0]
        raise AssertionError(f"`{failed}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return outputs


def runnable_docs() -> list[Path]:
    return [doc for doc in DOCS
            if any(excluded(c) is None for c in shell_commands(doc))]


@pytest.fixture
def session_env(db_url: str) -> Iterator[dict[str, str]]:
    yield soar_env(SOAR_DATABASE_URL=db_url)


@pytest.mark.slow
@pytest.mark.time_limit(15 * 60)  # two starts of soar and a replay; bounded, on a busy machine
@pytest.mark.parametrize("doc", runnable_docs(), ids=lambda p: p.name)
def test_every_command_of_the_document_runs(
    doc: Path, testdata: Path, tmp_path: Path, session_env: dict[str, str], db_url: str
) -> None:
    root = clean_copy(tmp_path, testdata)
    port = free_port()
    env = session_env | {"SOAR_HTTP_ADDR": f"127.0.0.1:{port}"}
    pg_host = str(conninfo_to_dict(db_url)["host"])
    doc_text = doc.read_text()
    server: Server | None = None
    ran = 0
    try:
        batch: list[Command] = []

        def flush() -> None:
            nonlocal ran
            if not batch:
                return
            texts = [rewrite(c.text, port, pg_host) for c in batch]
            for command, text, out in zip(batch, texts, run_script(texts, root, env), strict=True):
                for pattern, check in EXPECT:
                    if re.search(pattern, text):
                        try:
                            check(out, doc_text)
                        except (AssertionError, ValueError, KeyError) as exc:
                            raise AssertionError(f"{command}: {exc}") from exc
            ran += len(batch)
            batch.clear()

        for command in shell_commands(doc):
            if excluded(command):
                continue
            if SERVE.match(command.text):
                flush()
                if server is not None:
                    server.stop()
                server = Server(command.text, root, env, port, tmp_path / f"server-{command.line}.log")
                ran += 1
                continue
            batch.append(command)
        flush()
    finally:
        if server is not None:
            server.stop()
    assert ran


# -- what cannot run is still checked -------------------------------------------------------


def soar_invocations(text: str) -> list[list[str]]:
    """The arguments of every simple command in `text` whose program is soar."""
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote in prose: not a command line
            continue
        simple: list[str] = []
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|()"):
                while simple and re.fullmatch(r"\w+=.*", simple[0]):  # VAR=value soar ...
                    simple.pop(0)
                if simple and (simple[0] == "soar" or simple[0].endswith("bin/soar")):
                    found.append(simple[1:])
                elif simple[:3] and re.fullmatch(r"(\S*/)?python3?(\.\d+)?", simple[0]) and \
                        simple[1:3] == ["-m", "soar"]:
                    found.append(simple[3:])
                simple = []
            else:
                simple.append(word)
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_soar_arguments(words: list[str]) -> None:
    """Every subcommand and --flag exists in soar's argparse tree (values are not checked)."""
    parser = build_parser()
    for word in words:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            assert flag in parser._option_string_actions, (
                f"soar {' '.join(words)}: {flag} is not a flag of `{parser.prog}`")
            continue
        commands = _subcommands(parser)
        if word in commands:
            parser = commands[word]
        elif commands and re.fullmatch(r"[a-z][a-z-]*", word):
            raise AssertionError(f"soar {' '.join(words)}: {word} is not a command of `{parser.prog}`")


def test_every_soar_command_line_in_the_docs_parses() -> None:
    seen = 0
    for doc in DOCS:
        texts = [c.text for c in shell_commands(doc)]
        texts += [span for span in inline_code(doc) if re.match(r"(\S*/)?(soar|python3? -m soar)\b", span)]
        for text in texts:
            for words in soar_invocations(text):
                check_soar_arguments(words)
                seen += 1
    assert seen > 10  # the docs do name commands; a broken extractor would find none


def test_a_wrong_flag_or_command_is_caught() -> None:
    check_soar_arguments(["bench", "pipeline", "--timeline", "--profile", "DIR"])
    check_soar_arguments(["ddb", "import"])
    with pytest.raises(AssertionError, match="--verbose"):
        check_soar_arguments(["run", "--verbose"])
    with pytest.raises(AssertionError, match="serve"):
        check_soar_arguments(["serve"])
    with pytest.raises(AssertionError, match="--speed"):
        check_soar_arguments(["web", "--speed", "2"])


def test_excluded_commands_are_listed_and_checked(tmp_path: Path) -> None:
    used: set[str] = set()
    for doc in DOCS:
        for command in shell_commands(doc):
            rule = excluded(command)
            if rule is None:
                continue
            used.add(rule.pattern)
            text = command.text
            # the repository files it names exist
            for path in re.findall(r"\bcontrib/[\w./@-]+", text):
                assert (REPO / path).exists(), f"{command}: {path} does not exist"
            # its SOAR_* assignments are valid settings
            assignments = dict(re.findall(r"\b(SOAR_\w+)=(\"[^\"]*\"|\S+)", text.split("make")[0]))
            if assignments:
                load_settings(environ={k: v.strip('"') for k, v in assignments.items()})
            # its make targets exist
            for target in re.findall(r"\bmake (\w+)", text):
                proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT)
                assert proc.returncode == 0, f"{command}: make -n {target}: {proc.stderr}"
    unused = {e.pattern for e in EXCLUDED} - used
    assert not unused, f"exclusions that match no command any more: {unused}"


def test_make_targets_named_in_the_prose_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    for doc in DOCS:
        for span in inline_code(doc):
            found = re.fullmatch(r"make (\w+)", span)
            if found:
                assert found.group(1) in targets, f"{doc.name}: `{span}`: no such make target"


def test_readme_works_on_linux() -> None:
    for command in shell_commands(REPO / "README.md"):
        assert not re.match(r"^open\s", command.text), f"{command}: macOS `open`; use xdg-open"
