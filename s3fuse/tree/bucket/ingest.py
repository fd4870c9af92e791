"""One directory's ListObjectsV2 pages turned into its entries, in bounded memory.

One job of the bucket namespace (see tree/bucket/__init__.py): a listing is stored only
once its last page is in (a later page may hide a name: a prefix of the same name wins),
so every key is held until then. As Entry objects a key cost ~600 bytes at the peak (a
relisting of 1,000,000 keys: 637 MiB of RSS). Here each page's files go to a scratch
database as the page arrives (cache/liststage.py), which also sorts them by name and keeps
the last of a name a store lists twice; MetaStore.replace_staged stores them from there.

Prefixes (directories) are few and come in the order of `name/`, not of `name`: their
names are kept in memory and staged at the end, hiding the files of the same name.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ...cache.meta import version
from ...cache.liststage import ListingStage
from ...model import Entry, new_entry
from ...names import is_posix_name, is_probe_name
from ...store.protocol import ListPage, ObjectInfo
from ...util.oncelog import OnceLogger


@dataclass(slots=True)
class Hidden:
    """What one listing of a directory hid from the mount: what `rmdir` and `rename` of
    the directory, or of one of its subdirectories, must know. A file hidden by its
    directory of the same name shows once that directory is gone (writing that name then
    replaces the object, not a conflict); a directory holding keys it cannot show is not
    empty."""

    files: dict[str, Entry] = field(default_factory=dict)  # by name
    unnamed: bool = False  # keys or prefixes with names no POSIX path can have

    def __bool__(self) -> bool:
        return bool(self.files) or self.unnamed


class Ingest:
    """One directory's listing, built page by page as ListObjectsV2 answers, in `stage`
    (closed with it: a context manager). Blocking: use it in a worker thread.

    Prefixes become directories, keys become files; the directory's own marker (`prefix`
    itself) is not an entry but its version is kept (`marker`). A key that is also a
    prefix is hidden (the directory wins), and so is any name that cannot be a POSIX
    path component. The conditional-request probe's scratch keys are no entries either:
    they are set aside in `probes` (one left behind is removed, listing.py).
    """

    def __init__(self, prefix: str, hidden: OnceLogger, now: float,
                 stage: ListingStage | None = None) -> None:
        self._prefix, self._hidden, self.now = prefix, hidden, now
        self.stage = stage if stage is not None else ListingStage()
        self._dirs: list[str] = []
        self._finished = False
        #: The version of the directory's own marker object, '' when it has none (then it
        #: stores no metadata: no HEAD needed to know).
        self.marker = ""
        self.probes: list[ObjectInfo] = []  # scratch keys of conditional-request probes
        #: Files hidden by a directory of their name (see Hidden), and whether keys whose
        #: names cannot be shown were listed.
        self.hidden = Hidden()

    def add(self, page: ListPage) -> None:
        prefix, hidden = self._prefix, self._hidden
        for common in page.prefixes:
            name = common[len(prefix):-1]
            if is_posix_name(name):
                self._dirs.append(name)
            else:
                self.hidden.unnamed = True
                hidden.warning(common, "hiding s3 prefix %r: not a valid POSIX name", common)
        rows = []
        for obj in page.objects:
            name = obj.key[len(prefix):]
            if not name:
                self.marker = version(obj.etag, obj.mtime_ns)
            elif is_probe_name(name):
                self.probes.append(obj)
            elif is_posix_name(name):
                rows.append((name, obj.size, obj.mtime_ns, obj.etag))
            else:
                self.hidden.unnamed = True
                hidden.warning(obj.key, "hiding s3 key %r: not a valid POSIX name", obj.key)
        if rows:
            self.stage.add_files(rows)

    def finish(self) -> ListingStage:
        """The stage with every page in: directories added, the files they hide dropped."""
        if not self._finished:
            self._finished = True
            for name, size, mtime_ns, etag in self.stage.add_dirs(sorted(set(self._dirs))):
                key = self._prefix + name
                self._hidden.info(key, "hiding s3 key %r: a directory of the same name wins", key)
                self.hidden.files[name] = new_entry(name, False, size, mtime_ns, etag, self.now,
                                                    None)
            self._dirs = []
        return self.stage

    def entries(self) -> Iterator[Entry]:
        """Every entry, sorted by name (the directory wins a name clash), made as they
        are taken: iterate once, within the `with` block."""
        return self.finish().entries(self.now)

    def close(self) -> None:
        self.stage.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def entries_from_pages(pages: Iterable[ListPage], prefix: str, hidden: OnceLogger,
                       now: float) -> list[Entry]:
    """The entries of one directory's ListObjectsV2 pages (Ingest), in memory."""
    with Ingest(prefix, hidden, now) as ingest:
        for page in pages:
            ingest.add(page)
        return list(ingest.entries())
