"""Tests for k4sinit.graph: start order, neighbours and cycles."""

from __future__ import annotations

import pytest

from k4sinit.graph import CycleError, DependencyGraph, find_cycles_in
from k4sinit.spec import Condition, ServiceSpec


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
    assert graph.reverse_order() == ["etcd", "kubelet", "containerd", "network"]


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


def test_unknown_dependency_is_refused() -> None:
    with pytest.raises(ValueError, match="'a' depends on unknown service 'ghost'"):
        DependencyGraph(services(a=["ghost"]))


def test_order_refuses_a_cycle_and_names_it() -> None:
    graph = DependencyGraph(services(x=[], a=["b"], b=["a"]))
    with pytest.raises(CycleError) as caught:
        graph.order()
    assert caught.value.cycles == [["a", "b", "a"]]
    assert str(caught.value) == "dependency cycle: a -> b -> a"


def test_no_cycles() -> None:
    assert DependencyGraph(services(a=[], b=["a"])).find_cycles() == []


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


def test_graph_find_cycles_matches_function() -> None:
    graph = DependencyGraph(services(a=["c"], b=["a"], c=["b"], d=["d"]))
    assert graph.find_cycles() == [["a", "c", "b", "a"], ["d", "d"]]


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
