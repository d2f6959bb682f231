"""Spawn errors say what is actually wrong with the program or its working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from k4sinit.supervision.process import SpawnError, spawn
from k4sinit.supervision.reaper import ExitStatus, Reaper

ENV = {"PATH": "/usr/bin:/bin"}


def spawn_error(argv: list[str], *, cwd: str | None = None, env: dict[str, str] = ENV) -> str:
    """The message of the SpawnError that starting ``argv`` gives (nothing is started)."""
    reaper = Reaper()
    with pytest.raises(SpawnError) as caught:
        spawn(reaper, argv, env=env, cwd=cwd)
    assert reaper.children == 0
    return str(caught.value)


def script(path: Path, text: str = "#!/bin/sh\nexit 3\n", mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    plain = script(tmp_path / "run.sh", mode=0o644)
    assert spawn_error([str(plain)]) == f"{plain}: is not executable (mode 0644)"


def test_a_directory(tmp_path: Path) -> None:
    assert spawn_error([str(tmp_path)]) == f"{tmp_path}: is a directory, not a program"


def test_a_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert spawn_error([str(missing)]) == f"{missing}: does not exist"


def test_a_name_not_on_path_keeps_its_message() -> None:
    message = spawn_error(["no-such-binary-k4s"])
    assert message == "no-such-binary-k4s: binary not found in /usr/bin:/bin"


def test_a_name_on_path_that_is_not_executable(tmp_path: Path) -> None:
    script(tmp_path / "tool", mode=0o644)
    message = spawn_error(["tool"], env={"PATH": f"{tmp_path}:/usr/bin"})
    assert message == f"tool: {tmp_path}/tool is not executable (mode 0644)"


def test_a_name_found_only_in_the_working_directory_says_how_to_run_it(tmp_path: Path) -> None:
    script(tmp_path / "run.sh")
    assert spawn_error(["run.sh"], cwd=str(tmp_path)) == (
        f"run.sh: binary not found in /usr/bin:/bin"
        f" ({tmp_path}/run.sh is not searched: write ./run.sh to run it from workingDir)"
    )


def test_a_relative_command_missing_from_the_working_directory(tmp_path: Path) -> None:
    message = spawn_error(["./run.sh"], cwd=str(tmp_path))
    assert message == f"./run.sh: does not exist (in workingDir {tmp_path})"


def test_a_working_directory_that_is_missing_or_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert spawn_error(["true"], cwd=str(missing)) == (
        f"true: working directory {missing} does not exist"
    )
    file = script(tmp_path / "file")
    assert (
        spawn_error(["true"], cwd=str(file)) == f"true: working directory {file} is not a directory"
    )


def test_a_script_whose_interpreter_is_missing(tmp_path: Path) -> None:
    broken = script(tmp_path / "broken", "#!/no/such/interpreter -x\n")
    assert spawn_error([str(broken)]) == (
        f"{broken}: its interpreter /no/such/interpreter (from its #! line) does not exist"
    )


async def test_a_relative_command_runs_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # execvp in the child, after it changed to workingDir, finds ./run.sh: so must spawn.
    script(tmp_path / "run.sh")
    monkeypatch.chdir("/")  # nothing there named run.sh: only workingDir can make it work
    reaper = Reaper()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            spawned = spawn(reaper, ["./run.sh"], env=ENV, cwd=str(tmp_path))
            for fd in (spawned.stdout, spawned.stderr):
                os.close(fd)
            assert await spawned.child.wait() == ExitStatus(code=3)
            nursery.cancel_scope.cancel()
    assert reaper.children == 0
