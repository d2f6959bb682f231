"""Tests for the Kubernetes roles: k4sinit.node.roles, k4sinit.services, the node: section.

The golden tests compare, for each profile and datastore, every role's
command line, probes, dependencies (``services.yaml``, as ``k4sinit config``
prints it) and every file the boot writes (``files/``, the tree under the
root) with ``tests/golden/<case>/``. After a deliberate change, regenerate
them with ``UPDATE_GOLDEN=1 pytest tests/test_roles.py`` and read the diff.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from k4sinit import cli
from k4sinit.config import ConfigError, ConfigErrors, load_config, load_config_text
from k4sinit.core.config import Config
from k4sinit.core.jointoken import parse_join_token
from k4sinit.core.nodespec import Datastore, NodeSettings, PodNetwork, Profile, profile_roles
from k4sinit.core.spec import Condition, HTTPGetAction, Resources, TCPSocketAction
from k4sinit.node import roles
from k4sinit.supervision.process import SpawnError, spawn
from k4sinit.supervision.reaper import Reaper

GOLDEN = Path(__file__).parent / "golden"
SINGLE_YAML = Path(__file__).parent.parent / "etc" / "k4sinit" / "single.yaml"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

JOIN_TOKEN = f"K4S1::https://192.168.1.10:6443::sha256:{'ab' * 32}::abcdef.0123456789abcdef"
CASES = {
    "controller-kine": "node: {profile: controller, name: node-1, datastore: kine}",
    "controller-etcd": "node: {profile: controller, name: node-1, datastore: etcd}",
    "single-kine": "node: {profile: single, name: node-1}",
    "single-etcd": """
        node:
          profile: single
          name: node-1
          datastore: etcd
          advertiseAddress: 192.168.1.10
          serviceCIDR: 10.43.0.0/16
          podCIDR: 10.42.0.0/16
          clusterDomain: k4s.local
        """,
    "worker-token": """
        node:
          profile: worker
          name: worker-1
          server: https://192.168.1.10:6443
          token: abcdef.0123456789abcdef
        """,
    "worker-join": f"""
        node:
          profile: worker
          name: worker-1
          joinToken: {JOIN_TOKEN}
        """,
    "worker-kubeconfig": """
        node:
          profile: worker
          name: worker-1
          datastore: etcd
          bootstrapKubeconfig: /etc/k4sinit/bootstrap.conf
          advertiseAddress: 192.168.1.11
        """,
    "single-hostgw": """
        node:
          profile: single
          name: node-1
          podNetwork: hostGateway
        """,
}


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text).lstrip("\n"), "test.yaml")


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as caught:
        load(text)
    return caught.value.errors


def expanded(text: str, **kwargs: Any) -> Config:
    return roles.expand(load(text), **kwargs)


def settings_of(text: str, **kwargs: Any) -> NodeSettings:
    result = roles.settings(load(text), **kwargs)
    assert result is not None
    return result


def tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- golden --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, tmp_path: Path) -> None:
    config = load(CASES[case])
    settings = roles.settings(config)
    assert settings is not None
    services = yaml.safe_dump(
        roles.describe(roles.expand(config), settings), sort_keys=False, default_flow_style=False
    )
    root = tmp_path / "root"
    roles.write_files(settings, root)
    got = {"services.yaml": services} | {f"files/{p}": t for p, t in tree(root).items()}
    golden = GOLDEN / case
    if UPDATE:
        shutil.rmtree(golden, ignore_errors=True)
        for path, text in got.items():
            (golden / path).parent.mkdir(parents=True, exist_ok=True)
            (golden / path).write_text(text)
    want = tree(golden)
    assert sorted(got) == sorted(want), f"files differ from {golden} (UPDATE_GOLDEN=1 rewrites)"
    for path in want:
        assert got[path] == want[path], f"{golden / path} differs (UPDATE_GOLDEN=1 rewrites)"


def test_golden_cases_cover_every_profile_and_datastore() -> None:
    profiles = {settings_of(text).profile.value for text in CASES.values()}
    datastores = {
        settings_of(text).datastore.value for text in CASES.values() if "worker" not in text
    }
    assert profiles == {"controller", "worker", "single"}
    assert datastores == {"kine", "etcd"}


# --- what each profile runs --------------------------------------------------------


def test_profiles_run_their_roles_in_order() -> None:
    single = expanded("node: {name: n}")
    assert list(single.services) == [
        "kine",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
        "manifests",
        "coredns",
        "containerd",
        "images",
        "kubelet",
        "kube-proxy",
    ]
    controller = expanded("node: {profile: controller, name: n, datastore: etcd}")
    assert list(controller.services) == [
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
        "manifests",
        "coredns",
    ]
    worker = CASES["worker-token"]
    assert list(expanded(worker).services) == ["containerd", "images", "kubelet", "kube-proxy"]


def test_dependencies_follow_the_roles_needs() -> None:
    single = expanded("node: {name: n}").services
    deps = {name: dict(spec.depends_on) for name, spec in single.items()}
    ready = Condition.READY
    assert deps["kine"] == {}
    assert deps["kube-apiserver"] == {"kine": ready, "network": ready, "pki": ready}
    assert deps["kube-scheduler"] == {"kube-apiserver": ready}
    assert deps["kube-controller-manager"] == {"kube-apiserver": ready}
    assert deps["manifests"] == {"kube-apiserver": ready}
    assert deps["coredns"] == {"kube-apiserver": ready, "manifests": ready, "network": ready}
    assert deps["kube-proxy"] == {"kubelet": ready, "manifests": ready, "network": ready}
    done = Condition.COMPLETED
    assert deps["images"] == {"containerd": ready}
    assert deps["kubelet"] == {
        "containerd": ready,
        "images": done,
        "network": ready,
        "kube-apiserver": ready,
    }
    worker = expanded(CASES["worker-token"]).services
    assert dict(worker["kubelet"].depends_on) == {
        "containerd": ready,
        "images": done,
        "network": ready,
        "pki": ready,  # a worker's pki is the join: the cluster's CA, the bootstrap kubeconfig
    }
    # A worker has no manifests role: its kube-proxy waits for its kubelet only
    # (the controller's manifests role made the binding it needs).
    assert dict(worker["kube-proxy"].depends_on) == {"kubelet": ready, "network": ready}


def test_apiserver_readiness_uses_the_admin_client_certificate() -> None:
    spec = expanded("node: {name: n, pkiDir: /pki}").services["kube-apiserver"]
    assert spec.readiness_probe is not None
    action = spec.readiness_probe.action
    assert isinstance(action, HTTPGetAction)
    assert (action.scheme, action.port, action.path) == ("HTTPS", 6443, "/readyz")
    assert (action.tls.ca_file, action.tls.cert_file, action.tls.key_file) == (
        "/pki/ca.crt",
        "/pki/admin.crt",
        "/pki/admin.key",
    )
    assert spec.readiness_probe.timeout >= 15  # kubeadm's: a slow answer is not a failure
    # kubeadm's budget: 4 minutes to start, then a minute and more of failures to restart.
    assert spec.startup_probe is not None
    assert spec.startup_probe.failure_threshold * spec.startup_probe.period >= 240
    assert spec.liveness_probe is not None
    assert spec.liveness_probe.failure_threshold * spec.liveness_probe.period >= 60


def test_defaults_resolve_from_the_node_section() -> None:
    s = settings_of("node: {dataDir: /data, serviceCIDR: 10.43.0.0/16}", hostname="Node-7")
    assert s.name == "node-7"  # lowercased, as kubelet does
    assert s.pki_dir == "/data/pki"
    assert s.kubeconfig("admin") == "/data/kubeconfigs/admin.conf"
    assert str(s.cluster_dns) == "10.43.0.10"
    assert s.images_dir == "/data/images"
    assert s.manifests_dir == "/data/manifests"
    assert s.path == "/bbin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"
    named = settings_of("hostname: from-config\nnode: {pkiDir: /persist/pki}")
    assert named.name == "from-config"
    assert named.kubeconfig_dir == "/persist/kubeconfigs"


# --- overrides ---------------------------------------------------------------------


def test_a_disabled_role_is_left_out_and_so_are_dependencies_on_it() -> None:
    config = expanded(
        """
        node:
          name: n
          roles:
            kube-scheduler: {disabled: true}
            kine: {disabled: true}
            kube-apiserver:
              extraArgs: {etcd-servers: "https://db.example:2379"}
        """
    )
    assert "kube-scheduler" not in config.services
    assert "kine" not in config.services
    assert dict(config.services["kube-apiserver"].depends_on) == {
        "network": Condition.READY,
        "pki": Condition.READY,
    }


def test_a_service_of_the_file_takes_a_disabled_roles_place() -> None:
    config = expanded(
        """
        node:
          name: n
          roles: {kine: {disabled: true}}
        services:
          kine:
            command: [/opt/my-kine]
        """
    )
    assert config.services["kine"].command == ("/opt/my-kine",)
    assert ("kine", Condition.READY) in config.services["kube-apiserver"].depends_on


def test_extra_args_replace_a_default_flag_and_are_appended() -> None:
    args = (
        expanded(
            """
            node:
              name: n
              roles:
                kube-apiserver:
                  extraArgs: {secure-port: "7443", "--v": "2", profiling: null}
            """
        )
        .services["kube-apiserver"]
        .args
    )
    assert "--secure-port=6443" not in args
    assert not any(a.startswith("--profiling") for a in args)
    assert args[-2:] == ("--secure-port=7443", "--v=2")


def test_probe_resources_and_env_overrides() -> None:
    spec = expanded(
        """
        node:
          name: n
          roles:
            kubelet:
              readinessProbe:
                tcpSocket: {port: 10250}
                periodSeconds: 2
              resources: {limits: {memory: 1Gi, pids: 4096}}
              env: {GODEBUG: "x509ignoreCN=0"}
        """
    ).services["kubelet"]
    assert spec.readiness_probe is not None
    assert spec.readiness_probe.action == TCPSocketAction(port=10250)
    assert spec.readiness_probe.period == 2
    assert spec.resources == Resources(memory=2**30, pids=4096)
    assert dict(spec.env) == {
        "PATH": "/bbin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin",
        "GODEBUG": "x509ignoreCN=0",
    }


def test_the_files_own_services_follow_the_roles_and_may_depend_on_them() -> None:
    config = expanded(
        """
        node: {name: n}
        services:
          import-images:
            command: [/bin/true]
            dependsOn: {containerd: Ready}
            restartPolicy: OnFailure
        """
    )
    assert list(config.services)[-1] == "import-images"


def test_a_service_may_not_take_a_roles_name() -> None:
    errors = errors_of("node: {}\nservices:\n  kubelet:\n    command: [x]\n")
    assert [(e.line, e.service) for e in errors] == [(3, "kubelet")]
    assert errors[0].message == "'kubelet' is a role of profile single"
    assert "node.roles" in (errors[0].hint or "")


def test_the_kernels_role_wins_and_is_checked_again() -> None:
    config = load("node: {profile: single, name: n}")
    assert list(roles.expand(config, role_from_kernel="controller").services)[-1] == "coredns"
    with pytest.raises(ConfigErrors) as caught:
        roles.expand(config, role_from_kernel="worker")  # no server, no token
    [error] = caught.value.errors
    assert error.field == "node"
    assert "k4sinit.role=" in error.message
    with pytest.raises(ConfigErrors, match="'master' is not a profile"):
        roles.expand(config, role_from_kernel="master")


def test_a_dependency_on_a_role_the_kernels_profile_lacks_is_an_error() -> None:
    config = load(
        """
        node: {profile: single, name: n}
        services:
          backup:
            command: [x]
            dependsOn: [kube-apiserver]
        """
    )
    with pytest.raises(ConfigErrors) as caught:
        roles.expand(config, role_from_kernel="worker")
    assert "server" in str(caught.value)  # the worker's join is checked first
    config = load(
        """
        node: {profile: single, name: n, server: "https://c:6443", token: abcdef.0123456789abcdef}
        services:
          backup:
            command: [x]
            dependsOn: [kube-apiserver]
        """
    )
    with pytest.raises(ConfigErrors) as caught:
        roles.expand(config, role_from_kernel="worker")
    [error] = caught.value.errors
    # Found only after expansion, yet where the file wrote it, as the loader would say.
    assert (error.line, error.service, error.field) == (5, "backup", "dependsOn[0]")
    assert error.message == "unknown service 'kube-apiserver' in dependsOn"
    assert error.hint == "it is not a role of this profile (or it is disabled)"


def test_without_a_node_section_the_config_is_unchanged() -> None:
    config = load("services:\n  a:\n    command: [x]\n")
    assert roles.expand(config) is config
    assert roles.settings(config) is None


# --- validation of the node section --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("{profile: worker}", "node", "profile worker needs a control plane to join"),
        (
            "{profile: worker, token: abcdef.0123456789abcdef}",
            "node",
            "a token needs a server",
        ),
        ("{profile: worker, server: 'https://c:6443'}", "node", "a server needs a token"),
        (
            "{profile: worker, server: 'https://c:6443', token: abc}",
            "node.token",
            "invalid bootstrap token",
        ),
        (
            "{profile: worker, bootstrapKubeconfig: /b.conf, token: abcdef.0123456789abcdef}",
            "node.token",
            "give token or bootstrapKubeconfig, not both",
        ),
        ("{server: 'http://c:6443'}", "node.server", "expected an https:// URL"),
        (
            "{profile: worker, joinToken: abcdef.0123456789abcdef}",
            "node.joinToken",
            "invalid join token: a bare bootstrap token, not a join token",
        ),
        ("{joinToken: 'K4S1::https://c::sha256:00::x'}", "node.joinToken", "CA hash: expected"),
        (
            f"{{profile: worker, joinToken: '{JOIN_TOKEN}', server: 'https://c:6443'}}",
            "node.joinToken",
            "give joinToken or server, not both",
        ),
        (
            f"{{profile: worker, joinToken: '{JOIN_TOKEN}', bootstrapKubeconfig: /b.conf}}",
            "node.joinToken",
            "give joinToken or bootstrapKubeconfig, not both",
        ),
        ("{profil: worker}", "node.profil", "unknown key 'profil'"),
        (
            "{podNetwork: hostgw}",
            "node.podNetwork",
            "expected one of bridge, hostGateway, none, got 'hostgw'",
        ),
        ("{profile: workr}", "node.profile", "expected one of controller, worker, single"),
        ("{datastore: etc}", "node.datastore", "expected one of kine, etcd"),
        ("{name: Node_1}", "node.name", "invalid node name"),
        ("{clusterDNS: 10.0.0.10}", "node.clusterDNS", "not in serviceCIDR"),
        ("{podCIDR: 10.96.0.0/16}", "node.podCIDR", "overlaps serviceCIDR"),
        ("{podCIDR: 10.244.0.0/25}", "node.podCIDR", "too small"),
        ("{serviceCIDR: 100.0.0.0/8}", "node.serviceCIDR", "too large"),
        ("{serviceCIDR: 10.96.0.1/12}", "node.serviceCIDR", "invalid network"),
        ("{binPath: [bbin]}", "node.binPath[0]", "invalid directory"),
        ("{dataDir: data}", "node.dataDir", "must be an absolute path"),
        ("{roles: {kubelett: {}}}", "node.roles.kubelett", "unknown role"),
        ("{roles: {kubelet: {disable: true}}}", "node.roles.kubelet.disable", "unknown key"),
        (
            "{roles: {kubelet: {extraArgs: {v: 2}}}}",
            "node.roles.kubelet.extraArgs.v",
            "expected a string or null",
        ),
    ],
)
def test_node_section_errors(body: str, field: str, message: str) -> None:
    errors = errors_of(f"services: {{}}\nnode: {body}\n")
    assert [(e.line, e.service, e.field) for e in errors] == [(2, None, field)]
    assert message in errors[0].message


def test_a_bad_join_token_is_one_error_at_its_line_without_the_secret() -> None:
    token = f"K4S1::https://c:6443::sha256:{'ab' * 32}::abcdef.s3cr3tt0k3nvaluex"
    [error] = errors_of(f"services: {{}}\nnode:\n  profile: worker\n  joinToken: {token}\n")
    assert (error.line, error.field) == (4, "node.joinToken")
    assert error.message.startswith("invalid join token: the join token's last part")
    assert error.hint is not None and "k4sinit token create" in error.hint
    assert "s3cr3tt0k3nvalue" not in f"{error.message} {error.hint}"


def test_a_join_token_is_all_a_worker_needs_and_config_hides_its_secret() -> None:
    config = load(CASES["worker-join"])
    settings = roles.settings(config)
    assert settings is not None and settings.join_token is not None
    assert str(settings.join_token) == JOIN_TOKEN
    described = roles.describe(roles.expand(config), settings)
    assert described["node"]["joinToken"] == (
        f"K4S1::https://192.168.1.10:6443::sha256:{'ab' * 32}::abcdef.<hidden>"
    )
    assert "0123456789abcdef" not in yaml.safe_dump(described)


def test_the_kernels_token_makes_a_worker_join_with_it() -> None:
    kernel = parse_join_token(JOIN_TOKEN.replace("192.168.1.10", "10.0.0.9"))
    node = settings_of(CASES["worker-token"], token_from_kernel=kernel)
    assert node.join_token == kernel  # over the file's server and token
    assert (node.server, node.token, node.bootstrap_kubeconfig) == (None, None, None)
    # A shared image's config need not name a control plane: the kernel's role and token do.
    node = settings_of("node: {}", role_from_kernel="worker", token_from_kernel=kernel)
    assert node.join_token == kernel
    services = expanded("node: {}", role_from_kernel="worker", token_from_kernel=kernel).services
    assert "pki" in dict(services["kubelet"].depends_on)
    # A controller keeps its own token (the Secret it applies); the kernel's is a worker's.
    controller = settings_of(
        "node: {profile: controller, token: abcdef.0123456789abcdef}", token_from_kernel=kernel
    )
    assert (controller.join_token, controller.token) == (None, "abcdef.0123456789abcdef")


def test_errors_suggest_the_likely_fix() -> None:
    [error] = errors_of("node:\n  roles:\n    kubelett: {}\n")
    assert error.hint == "did you mean 'kubelet'?"
    assert error.line == 3
    [error] = errors_of("node:\n  dataDr: /x\n")
    assert error.hint == "did you mean 'dataDir'?"


def test_services_may_be_left_out_only_with_a_node_section() -> None:
    assert load("node: {}").services == {}
    [error] = errors_of("hostname: x\n")
    assert error.message == "missing required key 'services'"


def test_completed_on_a_role_is_an_error() -> None:
    [error] = errors_of(
        "node: {}\nservices:\n  a:\n    command: [x]\n    dependsOn: {kubelet: Completed}\n"
    )
    assert error.field == "dependsOn.kubelet"
    assert "never completes" in error.message


REPLACED_IMAGES = """
node:
  name: n
  roles: {images: {disabled: true}}
services:
  images:
    command: [/opt/import]
"""


def test_the_same_mistake_reads_the_same_written_by_the_file_or_by_a_role() -> None:
    # The file's images always restarts: Completed on it can never happen. Once the
    # file asks for it (found at load), once the kubelet role does (found at expansion).
    [by_file] = errors_of(
        REPLACED_IMAGES + "  app:\n    command: [x]\n    dependsOn: {images: Completed}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        expanded(REPLACED_IMAGES)
    [by_role] = caught.value.errors
    message = (
        "condition Completed on 'images', which has restartPolicy Always and so never completes"
    )
    hint = "use Ready, or set its restartPolicy to OnFailure or Never"
    assert (by_file.line, by_file.service, by_file.field) == (9, "app", "dependsOn.images")
    assert (by_file.message, by_file.hint) == (message, hint)
    # The role's dependency is written nowhere in the file: the node section it came
    # from; and it is not the file's to change, so only the other fix is offered.
    assert (by_role.line, by_role.service, by_role.field) == (1, "kubelet", "dependsOn.images")
    assert by_role.message == message + " (a dependency of the role, from profile single)"
    assert by_role.hint == "set its restartPolicy to OnFailure or Never"


def test_dependency_errors_found_at_expansion_keep_the_files_lines() -> None:
    # single lets a service wait for the apiserver; the kernel's controller profile
    # has no kubelet, and the loader could not know: the expansion finds it.
    config = load(
        """
        node: {profile: single, name: n}
        hostname: x
        services:
          a:
            command: [x]
            dependsOn: {kube-apiserver: Ready, kubelet: Started}
          b:
            command: [x]
            dependsOn: [network, kube-proxy]
        """
    )
    with pytest.raises(ConfigErrors) as caught:
        roles.expand(config, role_from_kernel="controller")
    assert [(e.line, e.service, e.field, e.message) for e in caught.value.errors] == [
        (6, "a", "dependsOn.kubelet", "unknown service 'kubelet' in dependsOn"),
        (9, "b", "dependsOn[1]", "unknown service 'kube-proxy' in dependsOn"),
    ]


def test_a_cycle_through_roles_is_put_at_the_files_own_service() -> None:
    # The file's containerd waits for kubelet, which (through images) waits for it.
    config = load(
        """
        node:
          name: n
          roles: {containerd: {disabled: true}}
        services:
          containerd:
            command: [x]
            dependsOn: [kubelet]
        """
    )
    with pytest.raises(ConfigErrors) as caught:
        roles.expand(config)
    [error] = caught.value.errors
    assert (error.line, error.service, error.field) == (5, "containerd", None)
    assert error.message == "dependency cycle: images -> containerd -> kubelet -> images"


def test_completed_on_the_images_oneshot_is_valid() -> None:
    # images is restartPolicy OnFailure: a service may wait for the import to finish.
    text = "node: {}\nservices:\n  a:\n    command: [x]\n    dependsOn: {images: Completed}\n"
    config = roles.expand(load(text))
    assert dict(config.services["a"].depends_on) == {"images": Condition.COMPLETED}


# --- busybox dispatch ------------------------------------------------------------------


def make_executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_multicall_runs_with_argv0_the_role_unless_binpath_has_the_binary(
    tmp_path: Path,
) -> None:
    bbin = tmp_path / "bbin"
    make_executable(bbin / "kubelet")
    multicall = tmp_path / "k4s"
    multicall.symlink_to(shutil.which("bash") or "/bin/bash")  # reads a script from stdin
    config = expanded(
        f"""
        node:
          name: n
          binPath: [{bbin}]
          multicall: {multicall}
        """
    )
    kubelet = config.services["kubelet"]
    assert kubelet.executable is None  # a symlink or binary on binPath wins
    apiserver = config.services["kube-apiserver"]
    assert apiserver.executable == str(multicall)
    assert apiserver.argv[0] == "kube-apiserver"
    # What process.spawn does with it: execute the file, with argv[0] the role
    # (bash, as the multicall binary here, shows its argv[0] as $0).
    ran = subprocess.run(
        apiserver.argv[:1],
        executable=apiserver.executable,
        input='echo "$0"',
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout == "kube-apiserver\n"


def test_a_missing_binary_says_where_it_was_looked_for(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = expanded(f"node: {{name: n, binPath: [{empty}, /nonexistent]}}").services[
        "kube-apiserver"
    ]
    assert spec.executable is None
    # spawn resolves the binary before it forks, so no reaper is reached.
    with pytest.raises(SpawnError) as caught:
        spawn(Reaper(), spec.argv, env=dict(spec.env))
    assert str(caught.value) == f"kube-apiserver: binary not found in {empty}:/nonexistent"


# --- files -----------------------------------------------------------------------------


def test_write_files_makes_private_files_and_the_directories(tmp_path: Path) -> None:
    settings = settings_of(CASES["single-kine"])
    written = roles.write_files(settings, tmp_path)
    assert "/var/lib/k4sinit/kubelet/config.yaml" in written
    for path in written:
        mode = stat.S_IMODE((tmp_path / path.lstrip("/")).stat().st_mode)
        assert mode == 0o600, path
    assert (tmp_path / "var/lib/k4sinit/db").is_dir()
    assert (tmp_path / "var/lib/k4sinit/manifests").is_dir()
    assert roles.write_files(settings, tmp_path) == written  # every boot, the same


def test_generated_files_parse() -> None:
    import json
    import tomllib

    settings = settings_of(CASES["single-kine"])
    files = roles.files(settings)
    toml = tomllib.loads(files["/var/lib/k4sinit/containerd/config.toml"])
    assert toml["version"] == 3  # containerd 2's layout
    plugins = toml["plugins"]
    images = plugins["io.containerd.cri.v1.images"]
    assert images["pinned_images"] == {"sandbox": "registry.k8s.io/pause:3.10.2"}
    runc = plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["disable_pause_image_pull"] is True  # air-gapped: imported, never pulled
    # The shims leave containerd's cgroup for k4sinit's leaf, so pods outlive containerd.
    assert runc["options"] == {"SystemdCgroup": False, "ShimCgroup": "/shims"}
    kubelet = yaml.safe_load(files["/var/lib/k4sinit/kubelet/config.yaml"])
    assert kubelet["kind"] == "KubeletConfiguration"
    assert kubelet["clusterDNS"] == ["10.96.0.10"]
    assert kubelet["staticPodPath"] == "/var/lib/k4sinit/pod-manifests"
    conflist = json.loads(files["/etc/cni/net.d/10-k4sinit.conflist"])
    assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/16"}]]
    proxy = yaml.safe_load(files["/var/lib/k4sinit/kube-proxy/config.yaml"])
    assert proxy["kind"] == "KubeProxyConfiguration" and proxy["mode"] == "iptables"
    assert proxy["clientConnection"]["kubeconfig"] == "/var/lib/k4sinit/kubeconfigs/kubelet.conf"
    corefile = files["/var/lib/k4sinit/coredns/Corefile"]
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in corefile
    assert "kubeconfig /var/lib/k4sinit/kubeconfigs/coredns.conf" in corefile
    objects = [
        o
        for path in ("k4sinit-nodes.yaml", "k4sinit-coredns.yaml")
        for o in yaml.safe_load_all(files[f"/var/lib/k4sinit/manifests/{path}"])
    ]
    service = next(o for o in objects if o["kind"] == "Service")
    assert (service["metadata"]["name"], service["spec"]["clusterIP"]) == ("kube-dns", "10.96.0.10")
    assert "selector" not in service["spec"]  # its EndpointSlice is the applier's
    bindings = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRoleBinding"}
    assert bindings["k4sinit:node-proxier"]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    ]


# --- k4sinit config and the shipped config -------------------------------------------


def test_config_command_prints_the_expansion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node: {profile: controller, name: n}\nservices: {}\n")
    assert cli.main(["config", "--config", str(path), "--profile", "single"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = load_config(path)
    want = roles.describe(
        roles.expand(config, role_from_kernel="single"),
        roles.settings(config, role_from_kernel="single"),
    )
    assert printed == want
    assert printed["node"]["profile"] == "single"
    assert "--secure-port=6443" in printed["services"]["kube-apiserver"]["args"]


def test_config_command_exits_1_with_the_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node: {profile: worker}\n")
    assert cli.main(["config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "node.yaml:1: field node: profile worker needs a control plane to join" in err


def test_the_pod_network_follows_node_pod_network() -> None:
    def of(text: str) -> tuple[str, list[str], bool]:
        settings = settings_of(text)
        has_conflist = any(p.endswith("10-k4sinit.conflist") for p in roles.files(settings))
        return settings.pod_network.value, list(settings.roles), has_conflist

    # The defaults: a single node bridges its pods on the whole range; a worker waits
    # for a CNI add-on; neither runs the pod-network role.
    assert of("node: {profile: single}")[0::2] == ("bridge", True)
    assert of(f"node: {{profile: worker, joinToken: '{JOIN_TOKEN}'}}")[0::2] == ("none", False)
    # hostGateway: the role after the worker's, no conflist at boot (it waits for the Node).
    network, single, conflist = of("node: {profile: single, podNetwork: hostGateway}")
    assert (network, single[-2:], conflist) == ("hostGateway", ["kube-proxy", "pod-network"], False)
    _, worker, _ = of(
        f"node: {{profile: worker, podNetwork: hostGateway, joinToken: '{JOIN_TOKEN}'}}"
    )
    assert worker == ["containerd", "images", "kubelet", "kube-proxy", "pod-network"]
    # A controller runs no pods: nothing to route for.
    _, controller, conflist = of("node: {profile: controller, podNetwork: hostGateway}")
    assert "pod-network" not in controller and not conflist
    # A worker may bridge its pods alone, as a single node does.
    assert of(f"node: {{profile: worker, podNetwork: bridge, joinToken: '{JOIN_TOKEN}'}}")[2]
    # The kernel's role brings the pod network along.
    kernel = settings_of(
        "node: {podNetwork: hostGateway}",
        role_from_kernel="worker",
        token_from_kernel=parse_join_token(JOIN_TOKEN),
    )
    assert kernel.roles[-1] == "pod-network"


def test_the_pod_network_role_watches_with_the_kubelets_identity() -> None:
    spec = expanded("node: {profile: single, name: node-1, podNetwork: hostGateway}").services[
        "pod-network"
    ]
    assert spec.command == ("k4sinit",)
    assert spec.args == (
        "pod-network",
        "--kubeconfig=/var/lib/k4sinit/kubeconfigs/kubelet.conf",
        "--node=node-1",
        "--cluster-cidr=10.244.0.0/16",
        "--cni-conf=/etc/cni/net.d/10-k4sinit.conflist",
    )
    assert dict(spec.depends_on) == {"kubelet": Condition.READY, "network": Condition.READY}


def test_the_lab_configs_expand() -> None:
    etc = SINGLE_YAML.parent
    controller = roles.settings(load_config(etc / "cluster-controller.yaml"), hostname="controller")
    assert controller is not None and controller.roles[-1] == "pod-network"
    assert controller.data_dir == "/var/lib/k4sinit/data"
    assert controller.images_dir == "/var/lib/k4sinit/images"  # not hidden by the disk's mount
    worker = roles.settings(
        load_config(etc / "cluster-worker.yaml"),
        role_from_kernel="worker",
        token_from_kernel=parse_join_token(JOIN_TOKEN),
        hostname="worker-1",
    )
    assert worker is not None and worker.profile is Profile.WORKER
    assert worker.pod_network is PodNetwork.HOST_GATEWAY and worker.join_token is not None


def test_the_shipped_single_node_config_expands() -> None:
    config = load_config(SINGLE_YAML)
    expanded_config = roles.expand(config, hostname="node-1")
    assert list(expanded_config.services) == list(profile_roles(Profile.SINGLE, Datastore.KINE))
    assert config.network.interfaces[0].dhcp
    assert "br_netfilter" in config.system.modules


def test_a_node_name_kubelet_cannot_register_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh kernel's hostname, when neither the config nor the kernel names the node.
    monkeypatch.setattr(socket, "gethostname", lambda: "(none)")  # the socket module node calls
    with pytest.raises(ConfigErrors) as caught:
        roles.settings(load("node: {profile: single}\n"))
    (error,) = caught.value.errors
    assert error.field == "node.name"
    assert error.message == "node name '(none)' (from the system's hostname) is not a DNS subdomain"
    assert "k4sinit.hostname=" in (error.hint or "")
    # Any of the names given wins over the system's, lowercased as kubelet does.
    assert settings_of("node: {profile: single}\n", hostname="Node-1").name == "node-1"
    assert settings_of("hostname: n2\nnode: {profile: single}\n").name == "n2"
    assert settings_of("node: {profile: single, name: a.b-c}\n").name == "a.b-c"
