"""PromptGrid keeps Flower's send_and_receive contract (every reply, or those in by the timeout)
while looking for replies every poll_s instead of Flower's 3 s. The SuperLink side is a stand-in
here (the real one runs in tests/federated/test_federation.py, through this same class)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from nightingale.federated.flower.grid import PromptGrid


class SlowSites:
    """Replies to pushed ids arrive one per pull, the first after `first` pulls; `never` never do."""

    def __init__(self, first: int = 2, never: frozenset = frozenset()):
        self.first, self.never, self.pulls, self.pending = first, never, 0, []

    def push_messages(self, messages):
        ids = [m for m in messages]
        self.pending.extend(i for i in ids if i not in self.never)
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls < self.first or not self.pending:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=self.pending.pop(0)))]

    def get_node_ids(self):
        return [7, 8]


def test_every_reply_comes_back_at_the_grids_pace():
    inner = SlowSites(first=3)
    grid = PromptGrid(inner, poll_s=0.01)
    t0 = time.time()
    replies = grid.send_and_receive(["a", "b", "c"])
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert inner.pulls == 5 and time.time() - t0 < 1.0  # Flower's own Grid would have slept 12 s
    assert list(grid.get_node_ids()) == [7, 8]  # the rest is Flower's Grid's


def test_a_timeout_returns_the_replies_that_came():
    grid = PromptGrid(SlowSites(first=1, never=frozenset({"lost"})), poll_s=0.01)
    t0 = time.time()
    replies = grid.send_and_receive(["a", "lost"], timeout=0.2)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.2 <= time.time() - t0 < 1.0
