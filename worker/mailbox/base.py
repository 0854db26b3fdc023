"""What every mailbox source offers ingest: folder status, new items, header and snippet fetch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType


@dataclass(frozen=True, slots=True)
class Item:
    """One message in a folder: `key` fetches it, `cursor` (ascending) is what a scan commits."""

    key: Hashable
    cursor: int


@dataclass(slots=True)
class RawMessage:
    item: Item
    header: bytes
    internal_date: datetime | None


@dataclass(frozen=True, slots=True)
class FolderStatus:
    uidvalidity: int
    #: The next UID the server will assign (IMAP), None where unknown (Maildir).
    uidnext: int | None
    messages: int


class MailboxSource(ABC):
    """A read-only view of one mailbox. Sources never change flags, move or delete mail."""

    name: str

    def __enter__(self) -> MailboxSource:
        self.open()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def folder_status(self, folder: str) -> FolderStatus: ...

    @abstractmethod
    def new_items(self, folder: str, after_cursor: int) -> list[Item]:
        """Items with a cursor above `after_cursor`, ascending."""

    @abstractmethod
    def fetch(self, folder: str, items: list[Item]) -> list[RawMessage]:
        """Header fields and INTERNALDATE of `items`. Missing items (deleted meanwhile) are absent."""

    @abstractmethod
    def fetch_snippets(self, folder: str, items: list[Item]) -> dict[Hashable, bytes]:
        """The first few hundred bytes of each item's body text, keyed by item key."""

    def start_fetch(self, folder: str, items: list[Item]) -> Callable[[], list[RawMessage]]:
        """Begin fetch(); the returned function completes it. A source that can let the server
        work while the caller computes (IMAP pipelining) does so; the default fetches now.
        Completions are called in the order the fetches were started."""
        out = self.fetch(folder, items)
        return lambda: out

    def start_fetch_snippets(self, folder: str, items: list[Item]) -> Callable[[], dict[Hashable, bytes]]:
        """Begin fetch_snippets(), as start_fetch()."""
        out = self.fetch_snippets(folder, items)
        return lambda: out
