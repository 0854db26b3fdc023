"""A local Maildir (Maildir++ folders, as Dovecot lays them out): offline use, tests, the demo.

Maildir has no UIDs, so the cursor is the file's inode change time (ctime) in nanoseconds:
it is set when a file arrives or is renamed and, unlike the modification time, cannot be set
back (mail restored with `cp -p` or rsync keeps an old mtime but gets a new ctime).

Ties: ctimes are only as fine as the kernel's clock tick, so a file may arrive after a scan
with the very ctime the scan committed. A file that was already SETTLED_NS old when the
folder was listed cannot have such a late twin, and its cursor is its ctime + 1: the next
scan starts past it. A newer file's cursor is its ctime, and the next scan reads that time
again (Message-ID dedupe drops the repeat). So an unchanged folder reads nothing.
The modification time stands in for INTERNALDATE. Files are only read, never renamed.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .. import defaults
from ..errors import FolderMissingError, MailboxError
from .base import FolderInfo, FolderStatus, Item, MailboxSource, RawMessage

#: Read at most this many bytes of a file's header block: hostile mail has huge headers.
MAX_HEADER_BYTES = 512 * 1024
#: How old (by ctime, at listing time) a file must be for no file of the same ctime to be
#: still on its way (see the module's docstring).
SETTLED_NS = 2_000_000_000


class MaildirSource(MailboxSource):
    def __init__(self, name: str, path: Path, clock: Callable[[], int] = time.time_ns,
                 configured: Sequence[str] = ()) -> None:
        self.name = name
        self.configured = configured
        self.path = path
        self._clock = clock

    def open(self) -> None:
        try:
            found = self.path.is_dir()
        except OSError as exc:  # a name too long, a folder that may not be looked into
            raise MailboxError(f"cannot look at Maildir {self.path}: {exc.strerror or exc}",
                               where=f"mailbox {self.name!r}") from None
        if not found:
            raise MailboxError(f"Maildir {self.path} does not exist", where=f"mailbox {self.name!r}")

    def close(self) -> None:
        pass

    def folder_dir(self, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return self.path
        for cand in (self.path / ("." + folder.replace("/", ".")), self.path / folder):
            if (cand / "cur").is_dir() or (cand / "new").is_dir():
                return cand
        raise FolderMissingError(f"folder {folder!r} not found in {self.path}"
                                 f"{self.not_found_hint(folder)}", where=f"mailbox {self.name!r}")

    def list_folders(self) -> list[FolderInfo]:
        """INBOX, then the Maildir++ folders (".Sent", ".Archive.2024" is "Archive/2024") and
        plain sub-folders that hold mail, by name."""
        found = []
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    if e.is_dir() and e.name not in ("cur", "new", "tmp") and \
                            (os.path.isdir(os.path.join(e.path, "cur")) or os.path.isdir(os.path.join(e.path, "new"))):
                        found.append(e.name[1:].replace(".", "/") if e.name.startswith(".") else e.name)
        except OSError as exc:
            raise MailboxError(f"cannot list {self.path}: {exc.strerror}", where=f"mailbox {self.name!r}") from None
        return [FolderInfo("INBOX")] + [FolderInfo(n) for n in sorted(found)]

    def _files(self, folder: str) -> list[tuple[int, str]]:
        d = self.folder_dir(folder)
        out: list[tuple[int, str]] = []
        for sub in ("cur", "new"):
            try:
                with os.scandir(d / sub) as it:
                    for e in it:
                        if e.is_file() and not e.name.startswith("."):
                            out.append((e.stat().st_ctime_ns, e.path))
            except FileNotFoundError:
                continue
        out.sort()
        return out

    def folder_status(self, folder: str) -> FolderStatus:
        d = self.folder_dir(folder)
        # A stable stand-in for UIDVALIDITY: the folder's identity on disk.
        validity = zlib.crc32(str(d.resolve()).encode()) or 1
        return FolderStatus(uidvalidity=validity, uidnext=None, messages=len(self._files(folder)))

    def new_items(self, folder: str, after_cursor: int) -> Sequence[Item]:
        settled = self._clock() - SETTLED_NS
        return [Item(key=p, cursor=m + 1 if m < settled else m) for m, p in self._files(folder) if m >= after_cursor]

    def _read_header(self, path: str) -> tuple[bytes, bytes]:
        with open(path, "rb") as fh:
            data = fh.read(MAX_HEADER_BYTES + defaults.SNIPPET_BYTES)
        for sep in (b"\r\n\r\n", b"\n\n"):
            i = data.find(sep)
            if i >= 0:
                return data[: i + len(sep)], data[i + len(sep):]
        return data[:MAX_HEADER_BYTES], b""

    def fetch(self, folder: str, items: Sequence[Item], snippets: bool = False) -> list[RawMessage]:
        out = []
        for it in items:
            try:
                header, body = self._read_header(str(it.key))
                mtime = os.stat(str(it.key)).st_mtime
            except FileNotFoundError:
                continue  # expunged meanwhile
            out.append(RawMessage(it, header, datetime.fromtimestamp(mtime, UTC),
                                  body[: defaults.SNIPPET_BYTES] if snippets else None))
        return out

    def fetch_snippets(self, folder: str, items: Sequence[Item]) -> dict[Hashable, bytes]:
        out: dict[Hashable, bytes] = {}
        for it in items:
            try:
                _, body = self._read_header(str(it.key))
            except FileNotFoundError:
                continue
            out[it.key] = body[: defaults.SNIPPET_BYTES]
        return out
