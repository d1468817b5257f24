"""A Grid whose `send_and_receive` looks for replies every half second, not every three.

Flower's gRPC Grid sleeps 3 s between pulls of replies, so each exchange with the sites waits
1.5 s on average after the last reply has arrived: a SecAgg+ round makes four exchanges, and the
federation two more (sketch, prepare). Pulling is one cheap gRPC call to the SuperLink, so this
wrapper polls every `poll_s` and hands everything else to Flower's own Grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class PromptGrid(Grid):
    def __init__(self, inner: Grid, poll_s: float = 0.5):
        self.inner = inner
        self.poll_s = poll_s

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's contract: push, then pull until every reply is in or `timeout` (None: wait
        for ever) has passed; the replies that came."""
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.time() + timeout
        replies: list[Message] = []
        while waiting and (end is None or time.time() < end):
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if waiting:
                time.sleep(self.poll_s)
        return replies

    def __getattr__(self, name: str):  # anything else Flower's own Grid has
        return getattr(self.inner, name)
