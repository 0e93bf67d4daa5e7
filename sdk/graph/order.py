"""Dependencies between steps: cycles (named) and the order levels that can run together."""

from __future__ import annotations

from .model import Graph, GraphError
from .parsing import _refs


def _edges(graph: Graph) -> dict[str, list[str]]:
    """Each step's upstream steps (references and `after`), without self-loops."""
    upstream: dict[str, list[str]] = {}
    for step in graph.steps.values():
        names = [r.name for v in step.args.values() for r in _refs(v)] + list(step.after)
        deps: list[str] = []
        for name in names:
            if name in graph.steps and name != step.name and name not in deps:
                deps.append(name)
        upstream[step.name] = deps
    return upstream


def _cycles(graph: Graph) -> list[str]:
    """One problem per cycle (strongly connected group of steps), named in data-flow order."""
    upstream = _edges(graph)
    downstream: dict[str, list[str]] = {name: [] for name in graph.steps}
    for name, deps in upstream.items():
        for dep in deps:
            downstream[dep].append(name)
    order = list(graph.steps)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(start: str) -> None:  # iterative Tarjan, so deep graphs cannot overflow
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = downstream[node]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    for name in order:
        if name not in index:
            strongconnect(name)
    problems = []
    for group in groups:
        if len(group) < 2:
            continue
        members = set(group)
        first = min(group, key=order.index)
        path = _cycle_path(first, members, downstream)
        problems.append(
            "steps form a cycle: "
            + " → ".join([*path, first])
            + " (each step needs the one before it)"
        )
    problems.sort()
    return problems


def _cycle_path(first: str, members: set[str], downstream: dict[str, list[str]]) -> list[str]:
    """A simple path first → … → (back to first) inside one strongly connected group."""
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:  # breadth first: the shortest cycle through `first`
        nxt: list[str] = []
        for node in frontier:
            for succ in downstream[node]:
                if succ not in members:
                    continue
                if succ == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if succ not in parents:
                    parents[succ] = node
                    nxt.append(succ)
        frontier = nxt
    return sorted(members)  # unreachable for a strongly connected group


def topological_order(graph: Graph) -> list[list[str]]:
    """Levels of steps: each step's upstream steps are all in earlier levels.

    Steps within a level are independent of each other; raises GraphError on a cycle.
    """
    upstream = _edges(graph)
    problems = _cycles(graph)
    problems.extend(
        f"step {s.name!r}: `after` lists the step itself"
        for s in graph.steps.values()
        if s.name in s.after
    )
    if problems:
        raise GraphError(problems)
    done: set[str] = set()
    levels: list[list[str]] = []
    while len(done) < len(graph.steps):
        level = [n for n in graph.steps if n not in done and all(d in done for d in upstream[n])]
        levels.append(level)
        done.update(level)
    return levels
