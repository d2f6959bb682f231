"""The reload planner (k4sinit/core/reload.py): pure, from two loaded configs.

What a reload does to a running daemon is tests/test_reload.py's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from k4sinit.core.config import Config, StorageSpec, SystemSpec
from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.nodespec import NodeSettings, Profile
from k4sinit.core.reload import (
    NETWORK_FIELDS,
    NODE_FIELDS,
    SERVICE_FIELDS,
    STORAGE_FIELDS,
    SYSTEM_FIELDS,
    Apply,
    Change,
    Refusal,
    ReloadPlan,
    Rule,
    plan_reload,
)
from k4sinit.core.spec import ServiceSpec
from k4sinit.daemon.reload import files_changed
from k4sinit.node import roles

from .config_helpers import load

BASE = """
services:
  db:
    command: [db]
    readinessProbe: {tcpSocket: {port: 5432}}
  api:
    command: [api]
    dependsOn: {db: Ready}
  web:
    command: [web]
    dependsOn: {api: Started}
"""


def plan(old: str, new: str, **kwargs: Any) -> ReloadPlan:
    return plan_reload(load(old), load(new), **kwargs)


@pytest.mark.parametrize(
    ("cls", "rules"),
    [
        (ServiceSpec, SERVICE_FIELDS),
        (SystemSpec, SYSTEM_FIELDS),
        (NetworkSpec, NETWORK_FIELDS),
        (StorageSpec, STORAGE_FIELDS),
        (NodeSettings, NODE_FIELDS),
    ],
)
def test_every_spec_field_has_a_reload_rule(cls: type, rules: dict[str, Rule]) -> None:
    """A field added to a spec must be classified here before a reload may meet it."""
    assert {f.name for f in dataclasses.fields(cls)} == set(rules)


def test_the_service_table_says_which_fields_restart_and_which_apply_live() -> None:
    restart = {r.key for r in SERVICE_FIELDS.values() if r.apply is Apply.RESTART}
    live = {r.key for r in SERVICE_FIELDS.values() if r.apply is Apply.LIVE}
    assert {"command", "args", "env", "workingDir", "resources"} <= restart
    assert live == {
        "critical",
        "dependsOn",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "restartPolicy",
        "restartBackoff",
        "stopSignal",
        "terminationGracePeriodSeconds",
    }
    sections = [*SYSTEM_FIELDS.values(), *NETWORK_FIELDS.values(), *STORAGE_FIELDS.values()]
    assert all(rule.apply is Apply.REFUSED for rule in sections)


def test_the_same_config_changes_nothing() -> None:
    p = plan(BASE, BASE)
    assert p.changes_nothing and not p.refused
    assert p.unchanged == ("db", "api", "web")


def test_a_new_service_starts_in_dependency_order_and_a_removed_one_stops_in_reverse() -> None:
    new = BASE.replace(
        "services:\n",
        "services:\n  late:\n    command: [late]\n    dependsOn: [early]\n  early:\n    command: [early]\n",
    )
    p = plan(BASE, new)
    assert p.start == ("early", "late")
    back = plan(new, BASE)
    assert back.stop == ("late", "early")
    assert back.unchanged == ("db", "api", "web")


def test_a_changed_command_restarts_only_that_service() -> None:
    p = plan(BASE, BASE.replace("command: [api]", "command: [api, --v2]"))
    assert p.restart == (Change("api", ("command",)),)
    assert p.unchanged == ("db", "web")
    assert not p.update


def test_probes_policy_and_stop_fields_update_in_place() -> None:
    new = BASE.replace("port: 5432", "port: 5433").replace(
        "command: [web]",
        "command: [web]\n    restartPolicy: OnFailure\n    terminationGracePeriodSeconds: 3",
    )
    p = plan(BASE, new)
    assert p.update == (
        Change("db", ("readinessProbe",)),
        Change("web", ("restartPolicy", "terminationGracePeriodSeconds")),
    )
    assert not p.restart


def test_restart_and_live_fields_together_restart_and_name_both() -> None:
    new = BASE.replace("command: [db]", "command: [db2]").replace("port: 5432", "port: 1")
    assert plan(BASE, new).restart == (Change("db", ("command", "readinessProbe")),)


def test_a_probe_switched_to_or_from_notify_restarts_for_its_notify_socket() -> None:
    """NOTIFY_SOCKET is in the environment the process started with."""
    new = BASE.replace("readinessProbe: {tcpSocket: {port: 5432}}", "readinessProbe: {notify: {}}")
    assert plan(BASE, new).restart == (
        Change("db", ("readinessProbe", "a probe to or from notify")),
    )
    assert plan(new, BASE).restart == (
        Change("db", ("readinessProbe", "a probe to or from notify")),
    )
    fd = BASE.replace("command: [web]", "command: [web]\n    notificationFd: 3")
    assert plan(BASE, fd).restart == (Change("web", ("notificationFd",)),)


def test_a_changed_dependency_applies_live() -> None:
    new = BASE.replace("dependsOn: {api: Started}", "dependsOn: {db: Ready}")
    assert plan(BASE, new).update == (Change("web", ("dependsOn",)),)


def test_changed_role_files_restart_the_role() -> None:
    p = plan(BASE, BASE, files_changed={"api": ["/etc/api.conf"]})
    assert p.restart == (Change("api", ("files /etc/api.conf",)),)


def test_changed_order_alone_changes_nothing() -> None:
    reordered = (
        "services:\n  web:\n    command: [web]\n    dependsOn: {api: Started}\n"
        + BASE.split("  web:")[0].split("services:\n")[1]
    )
    assert plan(BASE, reordered).changes_nothing


@pytest.mark.parametrize(
    ("top", "field"),
    [
        ("modules: [overlay]\n", "modules"),
        ("hostname: other\n", "hostname"),
        ("sysctls: {net.ipv4.ip_forward: 1}\n", "sysctls"),
        ("boot: {fallback: reboot}\n", "boot.fallback"),
        ("network: {interfaces: [{name: eth0, dhcp: true}]}\n", "network.interfaces"),
        ("storage: {device: {label: data}}\n", "storage"),
        ("metrics: {}\n", "metrics"),
        ("watchdog: {}\n", "watchdog"),
    ],
)
def test_a_change_to_the_boot_sections_is_refused_naming_the_field(top: str, field: str) -> None:
    p = plan(BASE, top + BASE)
    assert field in [r.field for r in p.refused]
    assert all("reboot" in str(r) for r in p.refused)


def test_line_numbers_moving_are_no_change() -> None:
    storage = "storage: {device: {label: data}}\n"
    assert not plan(storage + BASE, "\n\n" + storage + BASE).refused


# --- the node section -----------------------------------------------------------------


def node_config(
    tmp: Any, extra: str = "", profile: str = "controller"
) -> tuple[Config, NodeSettings | None]:
    text = (
        f"node: {{profile: {profile}, name: n1, dataDir: {tmp}/data, binPath: [{tmp}/bin]"
        f"{extra}, server: 'https://10.0.0.1:6443', token: abcdef.0123456789abcdef}}\n"
    )
    expanded = roles.expand_node(load(text))
    return expanded.config, expanded.settings


def test_a_node_setting_that_the_roles_use_re_expands_and_restarts_them(tmp_path: Any) -> None:
    old, old_node = node_config(tmp_path)
    new, new_node = node_config(tmp_path, ", podCIDR: 10.250.0.0/16")
    p = plan_reload(old, new, old_node=old_node, new_node=new_node)
    assert not p.refused
    assert "kube-controller-manager" in [c.name for c in p.restart]
    assert "kine" in p.unchanged


def test_a_changed_datastore_stops_one_role_and_starts_the_other(tmp_path: Any) -> None:
    old, old_node = node_config(tmp_path)
    new, new_node = node_config(tmp_path, ", datastore: etcd")
    p = plan_reload(old, new, old_node=old_node, new_node=new_node)
    assert (p.stop, p.start) == (("kine",), ("etcd",))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (", serviceCIDR: 10.200.0.0/16", "node.serviceCIDR"),
        (", clusterDomain: other.local", "node.clusterDomain"),
    ],
)
def test_node_identity_changes_are_refused(tmp_path: Any, extra: str, field: str) -> None:
    old, old_node = node_config(tmp_path)
    new, new_node = node_config(tmp_path, extra)
    p = plan_reload(old, new, old_node=old_node, new_node=new_node)
    assert [r.field for r in p.refused] == [field]


def test_a_new_node_name_and_a_worker_profile_are_refused(tmp_path: Any) -> None:
    old, old_node = node_config(tmp_path)
    assert old_node is not None
    renamed = dataclasses.replace(old_node, name="n2")
    assert [
        r.field for r in plan_reload(old, old, old_node=old_node, new_node=renamed).refused
    ] == ["node.name"]
    worker = dataclasses.replace(old_node, profile=Profile.WORKER)
    refused = plan_reload(old, old, old_node=old_node, new_node=worker).refused
    assert refused == (
        Refusal(
            "node.profile",
            "from controller to worker: a worker joins a cluster, the others make one, at boot",
        ),
    )
    added = plan_reload(old, old, old_node=None, new_node=old_node).refused
    assert [r.field for r in added] == ["node"]


def test_a_node_section_uses_the_resolved_settings_not_their_spelling(tmp_path: Any) -> None:
    old, old_node = node_config(tmp_path)
    assert old_node is not None
    same = dataclasses.replace(old_node, pod_cidr=ipaddress.ip_network(str(old_node.pod_cidr)))
    assert not plan_reload(old, old, old_node=old_node, new_node=same).refused


def test_the_role_files_a_node_setting_changes_are_found(tmp_path: Any) -> None:
    _, old_node = node_config(tmp_path, profile="single")
    _, new_node = node_config(tmp_path, ", podCIDR: 10.250.0.0/16", profile="single")
    assert files_changed(old_node, new_node) == {
        "kube-proxy": [f"{tmp_path}/data/kube-proxy/config.yaml"],
        "containerd": ["/etc/cni/net.d/10-k4sinit.conflist"],
    }
    assert files_changed(old_node, old_node) == {}
