"""The kernel command line: known options, warnings for the rest, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4sinit.core import cmdline
from k4sinit.core.cmdline import KernelOptions


def test_every_known_option_is_read() -> None:
    options = cmdline.parse(
        "BOOT_IMAGE=/vmlinuz root=/dev/nfs console=ttyS0 "
        "k4sinit.config=/etc/k4sinit/worker.yaml k4sinit.role=worker k4sinit.debug "
        "k4sinit.hostname=node-7 k4sinit.switchroot=never ip=dhcp quiet"
    )
    assert options == KernelOptions(
        config="/etc/k4sinit/worker.yaml",
        role="worker",
        debug=True,
        hostname="node-7",
        switch_root="never",
        ip="dhcp",
        warnings=(),
    )


def test_nothing_for_k4sinit_gives_the_defaults() -> None:
    assert cmdline.parse("root=/dev/vda ro console=ttyS0 init=/sbin/k4sinit") == KernelOptions()


@pytest.mark.parametrize("role", ["controller", "worker", "single"])
def test_each_role_is_accepted(role: str) -> None:
    options = cmdline.parse(f"k4sinit.role={role}")
    assert (options.role, options.warnings) == (role, ())


@pytest.mark.parametrize("choice", ["auto", "always", "never"])
def test_each_switchroot_choice_is_accepted(choice: str) -> None:
    options = cmdline.parse(f"k4sinit.switchroot={choice}")
    assert (options.switch_root, options.warnings) == (choice, ())


@pytest.mark.parametrize(
    ("text", "debug"),
    [
        ("k4sinit.debug", True),
        ("k4sinit.debug=1", True),
        ("k4sinit.debug=0", False),
        ("k4sinit.debug=off", False),
        ("quiet", False),
    ],
)
def test_debug_bare_on_off_and_absent(text: str, debug: bool) -> None:
    options = cmdline.parse(f"console=ttyS0 {text}")
    assert (options.debug, options.warnings) == (debug, ())


@pytest.mark.parametrize(
    "ip",
    [
        "dhcp",
        "10.0.0.21:10.0.0.1:10.0.0.1:255.255.255.0:node-21:eth0:off:10.0.0.53:1.1.1.1",
        "::::node-3:eth1:dhcp",
    ],
)
def test_ip_is_kept_verbatim(ip: str) -> None:
    options = cmdline.parse(f"root=/dev/nfs nfsroot=10.0.0.1:/srv/root,vers=4 ip={ip} rw")
    assert (options.ip, options.warnings) == (ip, ())


def test_unknown_option_is_a_warning_with_a_suggestion() -> None:
    options = cmdline.parse("k4sinit.confg=/etc/x.yaml k4sinit.role=worker")
    assert options.config is None
    assert options.role == "worker"
    assert options.warnings == (
        "unknown kernel option 'k4sinit.confg', did you mean k4sinit.config?",
    )


def test_unknown_option_without_anything_close_has_no_suggestion() -> None:
    options = cmdline.parse("k4sinit.zzzzzz=1")
    assert options.warnings == ("unknown kernel option 'k4sinit.zzzzzz'",)


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        (
            "k4sinit.role=master",
            "k4sinit.role=master is not one of controller, worker, single; ignored",
        ),
        (
            "k4sinit.switchroot=yes",
            "k4sinit.switchroot=yes is not one of auto, always, never; ignored",
        ),
    ],
)
def test_a_bad_role_or_switchroot_is_a_warning_and_ignored(text: str, warning: str) -> None:
    options = cmdline.parse(f"{text} k4sinit.hostname=n1")
    assert options.role is None
    assert options.switch_root is None
    assert options.hostname == "n1"
    assert options.warnings == (warning,)


@pytest.mark.parametrize("text", ["k4sinit.config", "k4sinit.config="])
def test_an_option_without_a_value_is_a_warning(text: str) -> None:
    options = cmdline.parse(text)
    assert options.config is None
    assert options.warnings == ("kernel option k4sinit.config needs a value",)


def test_quoted_values_lose_their_quotes() -> None:
    options = cmdline.parse('k4sinit.config="/etc/k4sinit/my config.yaml" k4sinit.role=single')
    assert options.config == "/etc/k4sinit/my config.yaml"
    assert options.role == "single"
    assert options.warnings == ()


def test_an_unbalanced_quote_does_not_raise() -> None:
    options = cmdline.parse('console=ttyS0 k4sinit.role=worker k4sinit.hostname="node-1')
    assert options.role == "worker"
    assert options.hostname == '"node-1'  # split on spaces like the kernel; nothing lost


def test_options_of_others_are_ignored() -> None:
    options = cmdline.parse("systemd.unit=rescue.target k4sinitx.role=bad config=/x role=worker")
    assert options == KernelOptions()


def test_read_parses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cmdline"
    path.write_text("root=/dev/vda k4sinit.role=controller k4sinit.debug=0\n")
    options = cmdline.read(str(path))
    assert (options.role, options.debug, options.warnings) == ("controller", False, ())


def test_read_of_a_missing_file_is_a_warning(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cmdline"
    options = cmdline.read(str(missing))
    assert options == KernelOptions(warnings=(f"cannot read {missing}: No such file or directory",))


TOKEN = f"K4S1::https://10.0.0.1:6443::sha256:{'ab' * 32}::abcdef.s3cr3tt0k3nvalue"


def test_a_join_token_is_read() -> None:
    options = cmdline.parse(f"console=ttyS0 k4sinit.role=worker k4sinit.token={TOKEN} quiet")
    assert options.token is not None and str(options.token) == TOKEN
    assert options.warnings == ()
    assert "s3cr3tt0k3nvalue" not in repr(options)


@pytest.mark.parametrize(
    ("word", "warning"),
    [
        (f"k4sinit.token={TOKEN}x", "k4sinit.token: the join token's last part: not a bootstrap"),
        ("k4sinit.token=abcdef.s3cr3tt0k3nvalue", "k4sinit.token: a bare bootstrap token"),
        ("k4sinit.token", "kernel option k4sinit.token needs a value"),
    ],
)
def test_a_malformed_join_token_is_a_warning_without_its_secret(word: str, warning: str) -> None:
    options = cmdline.parse(word)
    assert options.token is None
    [found] = options.warnings
    assert found.startswith(warning)
    assert "s3cr3tt0k3nvalue" not in found
