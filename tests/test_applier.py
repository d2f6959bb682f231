"""``k4sinit apply-manifests`` (k4sinit/node/applier.py): when it applies, retries and is ready.

The loop runs on trio's virtual clock with a recording stand-in for kubectl (it
says it is one: :class:`FakeKubectl`), so rounds and backoff happen at exact
times. The real kubectl against a real apiserver is tests/test_control_plane.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from k4sinit.node import applier
from k4sinit.node.applier import Applier, ApplyResult


class FakeKubectl:
    """A stand-in for ``kubectl apply``: records each call, answers from a script."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.calls: list[tuple[float, Path | None, str | None]] = []
        self.codes = list(codes or [])

    async def __call__(self, directory: Path | None, stdin: str | None) -> ApplyResult:
        self.calls.append((trio.current_time(), directory, stdin))
        await trio.sleep(0.5)  # kubectl takes a while
        code = self.codes.pop(0) if self.codes else 0
        return ApplyResult(code, "error: the server is unavailable" if code else "applied")


def run_for(seconds: float, applier_: Applier) -> None:
    async def main() -> None:
        with trio.move_on_after(seconds):
            await applier_.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_applies_once_at_start_then_again_only_when_a_file_changes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: A\n")
    (tmp_path / "notes.txt").write_text("not a manifest\n")
    kubectl = FakeKubectl()
    said: list[str] = []
    ready = tmp_path / "run/applied"
    loop = Applier(tmp_path, kubectl, ready_file=ready, say=said.append, period=2.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            await trio.sleep(10)  # rounds at t=0 only: nothing changed
            assert [t for t, _, _ in kubectl.calls] == [0.0]
            assert ready.read_text() == "applied\n"
            (tmp_path / "b.yaml").write_text("kind: B\n")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # The change at t=10 is seen at the next look, t=10.5 (0.5 s of kubectl, then 2 s periods).
    assert [t for t, _, _ in kubectl.calls] == [0.0, 10.5]
    assert all(directory == tmp_path and stdin is None for _, directory, stdin in kubectl.calls)
    assert "applied 1 file(s) under" in said[1] and "applied 2 file(s) under" in said[3]


def test_a_file_replaced_with_the_same_size_and_mtime_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("kind: A\n")
    before = applier.fingerprint(tmp_path)
    st = path.stat()
    replacement = tmp_path / ".a.yaml.tmp"
    replacement.write_text("kind: B\n")
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    replacement.replace(path)  # atomically, as k4sinit.node.roles.write_files does
    assert applier.fingerprint(tmp_path) != before


def test_hidden_files_and_other_suffixes_are_not_manifests(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.yaml", "b.yml", "c.json", "sub/d.yaml", ".e.yaml", ".hidden/f.yaml", "g.txt"):
        (tmp_path / name).write_text("{}\n")
    names = [entry[0] for entry in applier.fingerprint(tmp_path)]
    assert names == ["a.yaml", "b.yml", "c.json", "sub/d.yaml"]
    assert applier.fingerprint(tmp_path / "missing") == ()


def test_a_failure_is_retried_with_backoff_and_ready_waits_for_success(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: A\n")
    kubectl = FakeKubectl(codes=[1, 1, 1, 0])
    said: list[str] = []
    ready = tmp_path / "applied"
    ready.write_text("from a previous run\n")  # removed at start: not ready until applied
    loop = Applier(tmp_path, kubectl, ready_file=ready, say=said.append, period=1.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            await trio.sleep(0.1)
            assert not ready.exists()
            await trio.sleep(30)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # kubectl fails 0.5 s after each start; the next try is 2, 4, then 8 s after that.
    times = [t for t, _, _ in kubectl.calls]
    assert times == [0.0, 2.5, 7.0, 15.5]
    assert "kubectl: error: the server is unavailable" in said
    assert "trying again in 2s, or as soon as a file changes" in said
    assert "trying again in 8s, or as soon as a file changes" in said
    assert ready.exists()


def test_a_changed_file_is_tried_at_once_even_during_a_backoff(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: A\n")
    kubectl = FakeKubectl(codes=[1])
    loop = Applier(tmp_path, kubectl, say=lambda line: None, period=1.0, backoff_initial=60)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            await trio.sleep(5)
            (tmp_path / "a.yaml").write_text("kind: A, fixed\n")
            await trio.sleep(5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [t for t, _, _ in kubectl.calls] == [0.0, 5.5]


def test_the_dns_endpoint_slice_follows_the_nodes_address(tmp_path: Path) -> None:
    addresses = iter([None, None, "10.0.2.15", "10.0.2.15", "10.0.2.16"])
    kubectl = FakeKubectl()
    said: list[str] = []
    loop = Applier(
        tmp_path,  # no manifest files: only the generated object
        kubectl,
        dns_service="kube-system/kube-dns",
        say=said.append,
        period=2.0,
        address_of_node=lambda: next(addresses, "10.0.2.16"),
    )
    run_for(11, loop)
    # t=0, 2: no address (said once); t=4: applied; t=6: same; t=8: the new address.
    assert [t for t, _, _ in kubectl.calls] == [4.0, 8.5]
    assert said.count("kube-system/kube-dns: no address for this node yet (no default route)") == 1
    assert all(directory is None for _, directory, _ in kubectl.calls)  # no files: no -f DIR
    slices = [json.loads(stdin or "") for _, _, stdin in kubectl.calls]
    assert [s["endpoints"][0]["addresses"] for s in slices] == [["10.0.2.15"], ["10.0.2.16"]]
    first = slices[0]
    assert first["metadata"] == {
        "name": "kube-dns-k4sinit",
        "namespace": "kube-system",
        "labels": {
            "kubernetes.io/service-name": "kube-dns",
            "endpointslice.kubernetes.io/managed-by": "k4sinit",
        },
    }
    assert {(p["port"], p["protocol"]) for p in first["ports"]} == {(53, "UDP"), (53, "TCP")}


def test_an_empty_directory_is_ready_without_kubectl(tmp_path: Path) -> None:
    kubectl = FakeKubectl()
    ready = tmp_path / "applied"
    run_for(5, Applier(tmp_path / "none", kubectl, ready_file=ready, say=lambda line: None))
    assert kubectl.calls == [] and ready.exists()


def test_a_missing_kubectl_is_a_failed_round_not_a_crash(tmp_path: Path) -> None:
    apply = applier.kubectl_apply(str(tmp_path / "no-kubectl"), "/dev/null")

    async def main() -> ApplyResult:
        return await apply(tmp_path, None)

    result = trio.run(main)
    assert result.code == 127 and "cannot run" in result.output


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        applier.main(["--kubeconfig", "k", "--dir", "d", "--dns-service", "kube-dns"])
    assert caught.value.code == 2
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err


def test_a_thousand_failures_in_a_row_keep_the_backoff_at_its_max(tmp_path: Path) -> None:
    """The delay was 2 ** failures before the cap: the 1,025th failure overflowed."""
    (tmp_path / "a.yaml").write_text("kind: A\n")
    kubectl = FakeKubectl(codes=[1] * 1100)
    said: list[str] = []
    loop = Applier(tmp_path, kubectl, say=said.append, period=60.0, backoff_max=60.0)
    run_for(1060 * 61.0, loop)  # ends before the 1,100 failures run out
    assert len(kubectl.calls) >= 1050
    assert said.count("trying again in 60s, or as soon as a file changes") >= 1040
