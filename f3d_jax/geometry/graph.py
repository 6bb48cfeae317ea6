"""Image graphs: connected components of the images linked by pairs (union-find, host side)."""

from __future__ import annotations

from collections.abc import Iterable


def connected_components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Components of the graph on images 0..n-1 with the given (i, j) edges.

    Returns each component as a sorted list of image indices, the components sorted by their first image.
    """
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return a

    for a, b in edges:
        parent[find(int(a))] = find(int(b))
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(find(a), []).append(a)
    return sorted(groups.values())
