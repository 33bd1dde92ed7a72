"""Where each node of a generated UI workflow sits in the editor: data flows left to right.

An example workflow is read by an artist before it is run. Nodes go in columns by their distance from the
loaders (a node sits one column right of its furthest input), then move right to just before their
first consumer; each column is ordered by where its inputs and consumers are (the barycentre heuristic of
layered graph drawing), so links run rightwards and rarely cross.
"""

from __future__ import annotations

from typing import Mapping

COLUMN_WIDTH, GAP_X, GAP_Y, TOP = 340, 60, 30, 80
TITLE_HEIGHT = 30  # drawn above a node's `pos`; `size` is the body only


def _sources(node: Mapping) -> list[str]:
    return [str(v[0]) for v in node["inputs"].values()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)]


def columns(api: Mapping) -> dict[str, int]:
    """{node id: column}: longest path from a loader, then every node pulled right to just before its
    first consumer (a prompt box sits by its sampler, a mask loader by the node it feeds)."""
    column: dict[str, int] = {}

    def depth(node_id: str, seen: tuple = ()) -> int:
        if node_id not in column:
            if node_id in seen:
                raise ValueError(f"node {node_id} is in a cycle")
            column[node_id] = 1 + max((depth(s, seen + (node_id,)) for s in _sources(api[node_id])), default=-1)
        return column[node_id]

    for node_id in api:
        depth(node_id)
    consumers: dict[str, list[str]] = {}
    for node_id, node in api.items():
        for source in _sources(node):
            consumers.setdefault(source, []).append(node_id)
    for node_id in sorted(api, key=lambda n: -column[n]):  # consumers are settled before their sources
        if node_id in consumers:
            column[node_id] = min(column[c] for c in consumers[node_id]) - 1
    return column


def _ordered_columns(api: Mapping, column: Mapping[str, int], consumers: Mapping[str, list], sweeps: int = 4) -> list:
    """Each column's nodes top to bottom: alternate sweeps sort a column by the mean rank of its inputs
    (left to right) and of its consumers (right to left); ties keep the previous order."""
    layers = [[n for n in api if column[n] == col] for col in range(max(column.values(), default=-1) + 1)]
    rank = {n: i for layer in layers for i, n in enumerate(layer)}

    def resort(layer: list, neighbours) -> None:
        def key(node_id):
            ranks = [rank[m] for m in neighbours(node_id)]
            return sum(ranks) / len(ranks) if ranks else rank[node_id]
        layer.sort(key=lambda n: (key(n), rank[n]))
        rank.update({n: i for i, n in enumerate(layer)})

    for _ in range(sweeps):
        for layer in layers[1:]:
            resort(layer, lambda n: _sources(api[n]))
        for layer in reversed(layers[:-1]):
            resort(layer, lambda n: consumers.get(n, []))
    return layers


def positions(api: Mapping, heights: Mapping[str, float]) -> dict[str, tuple[int, int]]:
    """{node id: (x, y)} for nodes of the given heights (title bar included): columns in the order
    `_ordered_columns` gives, each node as level with its inputs as the nodes above it allow."""
    column = columns(api)
    consumers: dict[str, list[str]] = {}
    for node_id, node in api.items():
        for source in _sources(node):
            consumers.setdefault(source, []).append(node_id)
    top: dict[str, int] = {}  # of each node's title bar
    placed: dict[str, tuple[int, int]] = {}
    for col, layer in enumerate(_ordered_columns(api, column, consumers)):
        y = TOP
        for node_id in layer:
            inputs = [top[s] for s in _sources(api[node_id])]
            y = top[node_id] = max(y, int(sum(inputs) / len(inputs)) if inputs else y)
            placed[node_id] = (TOP + col * (COLUMN_WIDTH + GAP_X), y + TITLE_HEIGHT)
            y += int(heights[node_id]) + GAP_Y
    return placed
