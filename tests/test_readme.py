"""The README as written: its commands run on a fresh clone, in order.

Every command of the README's ```bash blocks (and every inline command that starts with
``.venv/bin/``) names a program that exists once the first line has installed fedsplit, in the
form the README writes it (``.venv/bin/X`` is the installation running these tests; a bare name
must be on ``PATH`` without activating anything). Every ``fedsplit`` command parses, and every
``fedsplit simulate`` example is a configuration that validates (``--dry-run``: nothing starts).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedsplit.cli import build_parser, main
from fedsplit.config import load_config
from tests.conftest import REPO

README = REPO / "README.md"
#: Where ``.venv/bin/`` of the README points: the installation that runs these tests.
VENV_BIN = Path(sys.prefix) / "bin"
#: Values for the placeholders the README's commands leave to the reader (a documentation address).
PLACEHOLDERS = {"HEAD_IP": "192.0.2.1"}
#: Shell words that are no program to look for.
SHELL_BUILTINS = {"cd", "export", "source", "."}
ACTIVATE = ".venv/bin/activate"


@dataclass(frozen=True)
class Command:
    """One simple command of the README: where it is written and its words (after ``VAR=x``)."""

    where: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    activated: bool = False  # an earlier command of the README activated .venv

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """``(first line number, body)`` of every fenced block in ``language``."""
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(rf"^```{re.escape(language)}\n(.*?)^```", text, flags=re.M | re.S)
    ]


def substitute(line: str) -> str:
    """Fill in the README's placeholders (``$HEAD_IP``)."""
    for name, value in PLACEHOLDERS.items():
        line = line.replace(f"${name}", value)
    assert "$" not in line, f"unknown placeholder in README command: {line}"
    return line


def split_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at ``&&``, ``||``, ``;``), as the shell splits words.

    A redirection or pipe is refused: no README command has one, and an unquoted ``<name>``
    placeholder would make the shell read a file called ``name``.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            assert word not in ("<", ">", ">>", "|"), f"README command with a redirection or pipe: {line}"
            current.append(word)
    return [c for c in [*commands, current] if c]


def readme_commands(text: str) -> list[Command]:
    """Every simple command of the README's bash blocks, in order, then its inline commands."""
    commands: list[Command] = []
    activated = False
    for first_line, body in fenced_blocks(text, "bash"):
        logical = re.sub(r"\\\n\s*", " ", body)  # join continuation lines
        for offset, line in enumerate(logical.splitlines()):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for words in split_commands(substitute(line)):
                env = []
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                    env.append(tuple(words.pop(0).split("=", 1)))
                commands.append(Command(f"README.md:{first_line + offset}", tuple(words), tuple(env), activated))
                if words[0] in ("source", ".") and words[1:] == [ACTIVATE]:
                    activated = True
    for m in re.finditer(r"`(\.venv/bin/[^`]+)`", text):
        line_no = text.count("\n", 0, m.start()) + 1
        commands.append(Command(f"README.md:{line_no}", tuple(shlex.split(substitute(m.group(1)))), (), activated))
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def resolve(command: Command) -> Path | None:
    """The program a command runs, as the README's form implies; None for a shell builtin."""
    program = command.argv[0]
    if program in SHELL_BUILTINS:
        return None
    if program.startswith(".venv/bin/"):
        return VENV_BIN / program.removeprefix(".venv/bin/")
    assert "/" not in program, f"{command}: a path other than .venv/bin/ that a fresh clone lacks"
    outside_venv = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != VENV_BIN.resolve()
    )
    found = shutil.which(program, path=outside_venv)
    if found:
        return Path(found)
    installed = VENV_BIN / program
    assert installed.exists(), f"{command}: {program!r} is not on PATH"
    assert command.activated, (
        f"{command}: {program!r} is installed into .venv/bin/ but the README has not activated "
        f"the environment here; write .venv/bin/{program} (a fresh shell says 'command not found')"
    )
    return installed


def fedsplit_args(command: Command) -> list[str] | None:
    """The arguments of a ``fedsplit`` command (any form of the program), or None."""
    return list(command.argv[1:]) if Path(command.argv[0]).name == "fedsplit" else None


def test_the_readme_opens_with_install_and_run_then_the_tests_as_ci_runs_them():
    _, first = fenced_blocks(README.read_text(encoding="utf-8"), "bash")[0]
    install_and_run, tests = [line.strip() for line in first.strip().splitlines()]
    assert install_and_run.startswith("python3.11 -m venv .venv && ")
    assert install_and_run.endswith(" simulate")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert any(line == tests or line.startswith(f"{tests} --") for line in ci), "CI runs the README's test command"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_readme_command_names_a_program_that_exists_after_installation(command):
    program = resolve(command)
    if program is None:
        return
    assert program.is_file() and os.access(program, os.X_OK), f"{command}: {program} is not an installed program"
    args = list(command.argv[1:])
    if program.name.startswith("python"):
        if args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"{command}: no module {args[1]!r}"
        elif args and args[0].endswith(".py"):
            assert (REPO / args[0]).is_file(), f"{command}: no script {args[0]!r}"
    if program.name == "fedsplit" and args:  # (a bare program name in the text has no arguments)
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:  # 0 after --help; 2 on arguments fedsplit does not take
            assert exc.code == 0, f"{command}: fedsplit does not take these arguments"


SIMULATE = [c for c in COMMANDS if (fedsplit_args(c) or [None])[0] == "simulate" and not {"--help", "--resume"} & set(c.argv)]
RESUME = [c for c in COMMANDS if (fedsplit_args(c) or [None])[0] == "simulate" and "--resume" in c.argv]


def test_the_readme_has_simulate_examples():
    assert len(SIMULATE) >= 6  # the main job, the configuration examples, the cluster


@pytest.mark.parametrize("command", SIMULATE, ids=str)
def test_every_simulate_example_is_a_valid_configuration(command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # --config paths are relative to the clone
    code = main([*fedsplit_args(command), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, f"{command}: {err}"
    assert out.splitlines()[-1].startswith("# config OK: ")
    tomllib.loads(out)  # the resolved configuration is TOML


@pytest.mark.parametrize("command", RESUME, ids=str)
def test_every_resume_example_sets_only_what_resume_accepts(command):
    """A ``--resume`` example names a run folder the reader has: its ``--set`` keys are checked."""
    from fedsplit.config import parse_override
    from fedsplit.simulation.cli import RESUME_PLACEMENT_KEYS

    args = fedsplit_args(command)
    keys = [".".join(parse_override(args[i + 1])[0]) for i, arg in enumerate(args) if arg in ("--set", "-s")]
    assert keys and set(keys) <= set(RESUME_PLACEMENT_KEYS), command


def test_the_installed_fedsplit_command_dry_runs_the_main_job(tmp_path):
    main_job = SIMULATE[0]
    proc = subprocess.run(
        [str(resolve(main_job)), *fedsplit_args(main_job), "--dry-run", "--set", f"out_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        "# config OK: 10 rounds of fl (strategy fedavg) on 10 terminals (engine fedsplit); --dry-run started nothing"
    )
    assert proc.stderr == ""  # no warning
    assert not any(tmp_path.iterdir())  # nothing ran


def test_the_flwr_run_example_configures_as_many_terminals_as_supernodes():
    text = README.read_text(encoding="utf-8")
    flower = next(tomllib.loads(body) for _, body in fenced_blocks(text, "toml") if "superlink" in body)
    supernodes = flower["superlink"]["local"]["options"]["num-supernodes"]
    (flwr_run,) = [c for c in COMMANDS if c.argv[0].endswith("flwr")]
    assert dict(flwr_run.env) == {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    run_config = tomllib.loads(flwr_run.argv[flwr_run.argv.index("--run-config") + 1])
    overrides = [o for o in run_config["overrides"].split(";") if o.strip()]  # as flower_app.main reads it
    assert load_config(None, overrides).num_terminals == supernodes
