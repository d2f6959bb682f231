"""Tests for k4sinit.core.graph: the dependency check, start order, neighbours and cycles."""

from __future__ import annotations

import pytest

from k4sinit.core.graph import (
    DependencyError,
    DependencyGraph,
    DependencyProblem,
    NameHints,
    check_dependencies,
    find_cycles_in,
)
from k4sinit.core.spec import Condition, RestartPolicy, ServiceSpec


def services(**deps: list[str]) -> dict[str, ServiceSpec]:
    """Specs in keyword order, each depending (Ready) on the names given."""
    return {
        name: ServiceSpec(name, ("true",), depends_on=tuple((d, Condition.READY) for d in ds))
        for name, ds in deps.items()
    }


def test_order_puts_dependencies_first_and_ties_in_config_order() -> None:
    graph = DependencyGraph(
        services(kubelet=["containerd", "network"], network=[], containerd=["network"], etcd=[])
    )
    assert graph.order() == ["network", "containerd", "kubelet", "etcd"]


def test_order_without_dependencies_is_config_order() -> None:
    graph = DependencyGraph(services(c=[], a=[], b=[]))
    assert graph.order() == ["c", "a", "b"]


def test_order_of_a_diamond() -> None:
    graph = DependencyGraph(services(top=["left", "right"], right=["base"], left=["base"], base=[]))
    assert graph.order() == ["base", "right", "left", "top"]


def test_dependencies_and_dependents_are_direct_and_ordered() -> None:
    graph = DependencyGraph(services(a=[], b=["a"], c=["b", "a"], d=["a"]))
    assert graph.names == ("a", "b", "c", "d")
    assert graph.dependencies("c") == ("b", "a")
    assert graph.dependencies("a") == ()
    assert graph.dependents("a") == ("b", "c", "d")
    assert graph.dependents("b") == ("c",)
    assert graph.dependents("d") == ()
    with pytest.raises(KeyError):
        graph.dependents("nope")


def test_the_graph_refuses_what_the_check_finds() -> None:
    with pytest.raises(DependencyError) as caught:
        DependencyGraph(services(x=[], a=["b", "ghost"], b=["a"]))
    assert caught.value.problems == [
        DependencyProblem("a", "ghost", "unknown service 'ghost' in dependsOn"),
        DependencyProblem("a", None, "dependency cycle: a -> b -> a", cycle=("a", "b", "a")),
    ]
    assert str(caught.value) == (
        "service 'a': unknown service 'ghost' in dependsOn;"
        " service 'a': dependency cycle: a -> b -> a"
    )


def test_the_graph_ignores_built_in_dependencies() -> None:
    graph = DependencyGraph(services(a=["network", "pki"], b=["a", "network"]))
    assert graph.dependencies("a") == ()
    assert graph.dependencies("b") == ("a",)
    assert graph.order() == ["a", "b"]


# --- the one dependency check: one test per rule ---------------------------------------


def spec(
    name: str,
    policy: RestartPolicy = RestartPolicy.ALWAYS,
    **deps: Condition,
) -> ServiceSpec:
    return ServiceSpec(name, ("x",), depends_on=tuple(deps.items()), restart_policy=policy)


def by_name(*specs: ServiceSpec) -> dict[str, ServiceSpec]:
    return {s.name: s for s in specs}


def test_check_passes_valid_services() -> None:
    assert check_dependencies(services(a=[], b=["a", "network", "pki"])) == []
    setup = spec("setup", RestartPolicy.ON_FAILURE)
    once = spec("once", RestartPolicy.NEVER)
    app = spec(
        "app", setup=Condition.COMPLETED, once=Condition.COMPLETED, network=Condition.STARTED
    )
    assert check_dependencies(by_name(setup, once, app)) == []


def test_rule_unknown_service_with_the_closest_name() -> None:
    problems = check_dependencies(services(containerd=[], kubelet=["containrd", "netwrk", "zzzz"]))
    assert problems == [
        DependencyProblem(
            "kubelet",
            "containrd",
            "unknown service 'containrd' in dependsOn",
            "did you mean 'containerd'?",
        ),
        DependencyProblem(
            "kubelet", "netwrk", "unknown service 'netwrk' in dependsOn", "did you mean 'network'?"
        ),
        DependencyProblem("kubelet", "zzzz", "unknown service 'zzzz' in dependsOn"),
    ]


def test_rule_unknown_service_never_suggests_the_dependent_itself() -> None:
    [problem] = check_dependencies(services(kubelet=["kubelt"]))
    assert problem.hint is None


def test_rule_unknown_role_says_the_profile_lacks_it() -> None:
    # With a profile, a role's name not among the services is a role left out.
    [problem] = check_dependencies(services(backup=["kube-apiserver"]), roles=set())
    assert problem.message == "unknown service 'kube-apiserver' in dependsOn"
    assert problem.hint == "it is not a role of this profile (or it is disabled)"
    # Without one (no node section), it is a name like any other.
    [problem] = check_dependencies(services(kube_apiserver=[], backup=["kube-apiserver"]))
    assert problem.hint == "did you mean 'kube_apiserver'?"


def test_rule_completed_on_a_service_with_restart_policy_always() -> None:
    problems = check_dependencies(by_name(spec("daemon"), spec("app", daemon=Condition.COMPLETED)))
    assert problems == [
        DependencyProblem(
            "app",
            "daemon",
            "condition Completed on 'daemon', which has restartPolicy Always and so never completes",
            "use Ready, or set its restartPolicy to OnFailure or Never",
        )
    ]


def test_rule_completed_on_a_role_with_restart_policy_always() -> None:
    # A role's restartPolicy is not the user's to change: only Ready helps.
    problems = check_dependencies(
        by_name(spec("kubelet"), spec("app", kubelet=Condition.COMPLETED)), roles={"kubelet"}
    )
    assert problems == [
        DependencyProblem(
            "app",
            "kubelet",
            "condition Completed on the role 'kubelet', which has restartPolicy Always"
            " and so never completes",
            "use Ready",
        )
    ]


def test_rule_completed_hints_only_the_fixes_open_to_the_user() -> None:
    # kubelet is a role: its dependsOn is the profile's, only images can change.
    images, kubelet = spec("images"), spec("kubelet", images=Condition.COMPLETED)
    [problem] = check_dependencies(by_name(images, kubelet), roles={"kubelet"})
    assert problem.message == (
        "condition Completed on 'images', which has restartPolicy Always and so never completes"
    )
    assert problem.hint == "set its restartPolicy to OnFailure or Never"
    # Both roles (a profile never does this): nothing is the user's to change.
    [problem] = check_dependencies(by_name(images, kubelet), roles={"images", "kubelet"})
    assert problem.hint is None


def test_rule_completed_on_a_built_in() -> None:
    problems = check_dependencies(
        by_name(spec("app", network=Condition.COMPLETED, pki=Condition.READY))
    )
    assert problems == [
        DependencyProblem(
            "app",
            "network",
            "condition Completed on the built-in 'network', which never completes",
            "use Ready",
        )
    ]


def test_rule_no_cycles_self_loops_included() -> None:
    problems = check_dependencies(services(ok=[], a=["b"], b=["a", "ok"], s=["s"]))
    assert problems == [
        DependencyProblem("a", None, "dependency cycle: a -> b -> a", cycle=("a", "b", "a")),
        DependencyProblem("s", None, "dependency cycle: s -> s", cycle=("s", "s")),
    ]


def test_problems_come_per_service_in_order_then_the_cycles() -> None:
    problems = check_dependencies(
        by_name(
            spec("a", b=Condition.READY),
            spec("b", a=Condition.READY, ghost=Condition.READY),
            spec("c", network=Condition.COMPLETED, b=Condition.COMPLETED),
        )
    )
    assert [(p.service, p.dependency) for p in problems] == [
        ("b", "ghost"),
        ("c", "network"),
        ("c", "b"),
        ("a", None),
    ]


def test_name_hints_prefer_a_name_differing_only_in_case() -> None:
    hints = NameHints(["containerd", "Kubelet"])
    assert hints.hint("kubelet") == "did you mean 'Kubelet'?"
    assert hints.hint("kubelet", exclude="Kubelet") is None
    many = NameHints([f"service-{i}" for i in range(100)])
    assert many.hint("servce-42") == "did you mean 'service-42'?"


def test_cycles_one_per_component_plus_self_loops_in_config_order() -> None:
    edges = {
        "ok": [],
        "s": ["s"],
        "b": ["c"],
        "a": ["b", "ok"],
        "c": ["a"],
        "x": ["y"],
        "y": ["x", "ok"],
    }
    assert find_cycles_in(edges) == [["s", "s"], ["b", "c", "a", "b"], ["x", "y", "x"]]


def test_cycle_path_is_a_shortest_one_through_the_first_member() -> None:
    # a -> b -> c -> d -> a, with a shortcut c -> a: one component, one cycle.
    edges = {"a": ["b"], "b": ["c"], "c": ["d", "a"], "d": ["a"]}
    assert find_cycles_in(edges) == [["a", "b", "c", "a"]]


def test_self_loop_inside_a_larger_cycle_is_reported_too() -> None:
    assert find_cycles_in({"a": ["a", "b"], "b": ["a"]}) == [["a", "b", "a"], ["a", "a"]]


def test_find_cycles_in_ignores_unknown_names_and_repeats() -> None:
    assert find_cycles_in({"a": ["ghost", "b", "b"], "b": ["a"]}) == [["a", "b", "a"]]


def test_a_chain_longer_than_the_recursion_limit() -> None:
    # s0 depends on s1, which depends on s2, ... : 20,000 deep, no recursion needed.
    count = 20_000
    chain = {f"s{i}": [f"s{i + 1}"] for i in range(count - 1)} | {f"s{count - 1}": []}
    assert find_cycles_in(chain) == []
    graph = DependencyGraph(services(**chain))
    assert graph.order() == [f"s{i}" for i in reversed(range(count))]
    looped = chain | {f"s{count - 1}": ["s0"]}
    assert find_cycles_in(looped) == [[*chain, "s0"]]


def test_components_found_iteratively_match_a_small_hand_checked_graph() -> None:
    # Two cycles joined one way (a<->b -> c<->d), a tail, and a node reaching both.
    edges = {"e": ["a", "c"], "a": ["b"], "b": ["a", "c"], "c": ["d"], "d": ["c"], "t": []}
    assert find_cycles_in(edges) == [["a", "b", "a"], ["c", "d", "c"]]
