"""Weighted fair sharing of request slots between teams (stride scheduling).

Each team has a pass value that grows by 1/weight for every request it is given; the next
request goes to the team with the smallest pass. Over time each busy team gets slots in
proportion to its weight, whatever the size of its batches. A team that was idle rejoins at the
smallest pass of the others, so idleness is never banked as credit.
"""

from __future__ import annotations

import heapq


class FairShare:
    def __init__(self) -> None:
        self._pass: dict[str, float] = {}
        self._vtime = 0.0  # the smallest pass among the teams served last time

    def allocate(self, weights: dict[str, float], units: int) -> dict[str, int]:
        """Split `units` slots between the teams in `weights` (team -> weight > 0)."""
        if not weights or units <= 0:
            return {}
        for team in weights:  # newcomers and returning teams start at the current virtual time
            self._pass[team] = max(self._pass.get(team, self._vtime), self._vtime)
        allocation = dict.fromkeys(weights, 0)
        heap = [(self._pass[t], t) for t in weights]
        heapq.heapify(heap)
        for _ in range(units):
            value, team = heapq.heappop(heap)
            allocation[team] += 1
            value += 1.0 / weights[team]
            self._pass[team] = value
            heapq.heappush(heap, (value, team))
        self._vtime = min(self._pass[t] for t in weights)
        return allocation

    def refund(self, team: str, units: int, weight: float) -> None:
        """Give back slots a team was allocated but had no work for."""
        if units > 0 and team in self._pass:
            self._pass[team] -= units / weight
            self._vtime = min(self._vtime, self._pass[team])
