"""What a scan reports: per folder and in all, and its progress as it goes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from .. import defaults

log = logging.getLogger(__name__)


class Progress(Protocol):
    def start(self, mailbox: str, folder: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class LogProgress:
    """Plain log lines for non-terminals (containers, CI): one line per ~10% of a folder."""

    def __init__(self) -> None:
        self.total = self.done = self.next_report = 0
        self.label = ""

    def start(self, mailbox: str, folder: str, total: int) -> None:
        self.total, self.done, self.label = total, 0, f"{mailbox}/{folder}"
        self.next_report = max(total // 10, defaults.SCAN_BATCH_SIZE)
        if total:
            log.info("scanning %s: %d new message(s)", self.label, total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.total and self.done >= self.next_report and self.done < self.total:
            log.info("scanning %s: %d/%d", self.label, self.done, self.total)
            self.next_report += max(self.total // 10, defaults.SCAN_BATCH_SIZE)

    def finish(self) -> None:
        pass


@dataclass
class FolderReport:
    mailbox: str
    folder: str
    new: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    automated: int = 0
    uidvalidity_reset: bool = False
    unchanged: bool = False
    interrupted: bool = False
    seconds: float = 0.0


@dataclass
class ScanReport:
    folders: list[FolderReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(f.stored for f in self.folders)

    @property
    def ok(self) -> bool:
        return not self.errors


def merge_reports(reports: list[FolderReport], extra: list[FolderReport]) -> list[FolderReport]:
    """`reports` with the counts of `extra` (read meanwhile, for the same folders) added in."""
    by_folder = {r.folder: r for r in reports}
    for e in extra:
        r = by_folder.get(e.folder)
        if r is None:
            reports.append(e)
            by_folder[e.folder] = e
            continue
        r.new = max(r.new, e.new)  # each read counts what was new when it began
        r.stored += e.stored
        r.duplicates += e.duplicates
        r.skipped += e.skipped
        r.automated += e.automated
        r.seconds += e.seconds
        r.unchanged = r.unchanged and e.new == 0
    return reports
