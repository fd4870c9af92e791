"""s3exchange data sets written into a live S3 endpoint, with what a mount must show for them.

Each public function takes ``(endpoint_url, bucket, prefix)``, writes one data set under
``s3://bucket/prefix/<name>/`` and returns a :class:`ManifestFixture`: the manifest to mount and
the exact tree (path -> bytes, xattrs) the mount must present for it.

Why the real library: s3fuse must read what s3exchange 0.1.1 writes *exactly* (see
``../shared/compat.md``), so every data set s3exchange can produce is produced by s3exchange
itself (``S3ExchangeStore.put_object``/``write_manifest``/``put_shard_archive``,
``ManifestWriter``). Only what it cannot produce is hand-made: hostile input
(:func:`hostile_manifest`) and the compression values it mishandles (:func:`mixed_compressions`).

Mount paths follow the design's tree layout: a key relative to the manifest's parent prefix
when under it (else the full key); a shard member at ``<archive path>/<member_path>``.
s3exchange installs on Python 3.11 only with ``pip install --ignore-requires-python s3exchange``.
"""
from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from s3exchange import (
    FileEntry,
    ManifestEntry,
    ManifestWriter,
    S3ExchangeStore,
    S3Settings,
    ShardEntry,
    ShardItem,
    ShardSizePolicy,
)

REGION = "us-east-1"
INTERNAL_MANIFEST = "__manifest__.jsonl"
XATTR_URI = "user.s3.uri"
XATTR_ID = "user.s3exchange.id"
XATTR_META = "user.s3exchange.meta"

# ManifestWriter flushes a part per 50,000 entries by default; tiny limits make it write several
# parts (and shards) from a handful of entries, so nesting shows up in a fast test.
WRITER_PART_ENTRIES = 3
WRITER_SHARD_ENTRIES = 2

OMITTED = "omitted"  # a shard line without the compression field (readers default to gzip)

BOMB_BLOCK = 16 << 20  # one deflate segment of zeros, repeated
BOMB_BLOCKS = 128  # 128 x 16 MiB = 2 GiB of zeros in about 2 MiB of gzip


# --------------------------------------------------------------------------------------------
# What a fixture promises
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the bytes of one visible file live: an S3 key, or a member of a shard archive."""

    key: str
    member: str | None = None

    @property
    def virtual_key(self) -> str:
        """s3exchange's name for it: the key, or ``<archive_key>#<member_path>``."""
        return self.key if self.member is None else f"{self.key}#{self.member}"

    def uri(self, bucket: str) -> str:
        """The ``user.s3.uri`` value: ``s3://bucket/key`` or ``s3://bucket/archive#member``."""
        return f"s3://{bucket}/{self.virtual_key}"


@dataclass(frozen=True)
class ManifestFixture:
    """What one fixture function wrote, stated as what a mount of the manifest must show.

    Paths are relative to the manifest's top-level directory in the mount, '/'-joined.
    ``hidden`` and ``unspecified`` hold raw path strings, some deliberately hostile
    (``../x``, ``//etc/passwd``): compare them with listed paths, never join them onto a real
    directory.
    """

    bucket: str
    manifest_key: str
    files: Mapping[str, bytes]  # must be visible, with exactly these bytes
    sources: Mapping[str, Source]  # where each visible file's bytes come from
    xattrs: Mapping[str, Mapping[str, bytes]]  # path -> xattr -> value the mount must give
    hidden: frozenset[str] = frozenset()  # must never be listed or looked up
    unspecified: frozenset[str] = frozenset()  # the mount's choice; must not hang or crash

    @property
    def uri(self) -> str:
        """The ``--manifest`` argument."""
        return f"s3://{self.bucket}/{self.manifest_key}"

    @property
    def name(self) -> str:
        """Default top-level directory name: last segment of the manifest's parent prefix."""
        return self.manifest_key.rpartition("/")[0].rpartition("/")[2]

    @property
    def directories(self) -> frozenset[str]:
        """Every directory the visible files imply (not the top-level one)."""
        return frozenset(path.rsplit("/", i)[0] for path in self.files
                         for i in range(1, path.count("/") + 1))

    def listing_problems(self, seen: Iterable[str]) -> list[str]:
        """Compare the file paths found by walking the mount with the promise; [] when right."""
        seen = set(seen)
        wanted = set(self.files)
        problems = [f"missing: {p}" for p in sorted(wanted - seen)]
        problems += [f"must be hidden: {p}" for p in sorted(seen & self.hidden)]
        problems += [f"unexpected: {p}" for p in sorted(seen - wanted - self.hidden
                                                         - self.unspecified)]
        return problems


@dataclass(frozen=True)
class Obj:
    """A loose object to upload and list as a ``file`` entry."""

    key: str
    data: bytes
    id: str | None = None
    meta: dict[str, Any] | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Member:
    """A file to put into a shard archive at ``path``."""

    path: str
    data: bytes
    id: str | None = None
    meta: dict[str, Any] | None = None
    content_type: str | None = None

    @property
    def stored_meta(self) -> dict[str, Any] | None:
        """The meta s3exchange records: ``add_to_shard`` folds content_type into meta."""
        merged = dict(self.meta or {})
        if self.content_type:
            merged["content_type"] = self.content_type
        return merged or None


def mount_path(manifest_key: str, key: str) -> str:
    """A key's path in the mount: relative to the manifest's parent prefix, else the full key."""
    parent = manifest_key.rpartition("/")[0]
    return key[len(parent) + 1:] if parent and key.startswith(parent + "/") else key


def compact_json(value: object) -> bytes:
    """Compact JSON as s3exchange writes manifest lines (ASCII escapes), and the meta xattr.

    Fixture metas are ASCII only, so the xattr bytes do not depend on ``ensure_ascii``."""
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class _Expected:
    """Collects a fixture's promise while its data is written."""

    bucket: str
    manifest_key: str
    files: dict[str, bytes] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    unspecified: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.hide_keys([self.manifest_key])  # a manifest is never an entry of itself

    def path(self, source: Source) -> str:
        base = mount_path(self.manifest_key, source.key)
        return base if source.member is None else f"{base}/{source.member}"

    def visible(self, source: Source, data: bytes, id: str | None = None,
                meta: Mapping[str, Any] | None = None) -> None:
        path = self.path(source)
        self.files[path] = data
        self.sources[path] = source
        attrs = {XATTR_URI: source.uri(self.bucket).encode()}
        if id is not None:
            attrs[XATTR_ID] = id.encode()
        if meta is not None:
            attrs[XATTR_META] = compact_json(meta)
        self.xattrs[path] = attrs

    def file(self, obj: Obj, id: str | None) -> None:
        self.visible(Source(obj.key), obj.data, id, obj.meta)

    def members(self, archive_key: str, members: Iterable[Member]) -> None:
        for m in members:
            self.visible(Source(archive_key, m.path), m.data, m.id, m.stored_meta)
        self.hidden.add(self.path(Source(archive_key, INTERNAL_MANIFEST)))

    def hide_keys(self, keys: Iterable[str]) -> None:
        self.hidden.update(mount_path(self.manifest_key, k) for k in keys)

    def build(self) -> ManifestFixture:
        return ManifestFixture(self.bucket, self.manifest_key, dict(self.files),
                               dict(self.sources), dict(self.xattrs), frozenset(self.hidden),
                               frozenset(self.unspecified))


# --------------------------------------------------------------------------------------------
# Writing through s3exchange
# --------------------------------------------------------------------------------------------


def exchange_store(endpoint_url: str, bucket: str, *, access_key: str = "testing",
                   secret_key: str = "testing") -> S3ExchangeStore:
    """An s3exchange store built the way its users build one: from ``S3Settings``."""
    settings = S3Settings(endpoint_url=endpoint_url, region=REGION, bucket=bucket,
                          aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    store = S3ExchangeStore(settings)
    _ensure_bucket(store, bucket)
    return store


def _ensure_bucket(store: S3ExchangeStore, bucket: str) -> None:
    """Fixtures may be the first writers of a bucket (demo, benchmarks)."""
    client: Any = store.s3_client
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def _base(prefix: str, name: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), name) if p)


def _blob(label: str, size: int = 256) -> bytes:
    """Deterministic binary content, distinct per label."""
    return random.Random(label).randbytes(size)


def _text(label: str) -> bytes:
    return f"{label}\n".encode()


def _put_loose(store: S3ExchangeStore, exp: _Expected, obj: Obj) -> FileEntry:
    """Upload through s3exchange and promise the file with the id s3exchange recorded."""
    entry = store.put_object(obj.key, obj.data, id=obj.id, meta=obj.meta,
                             content_type=obj.content_type)
    exp.file(obj, entry["id"])
    return entry


def _shard_items(members: Iterable[Member]) -> list[ShardItem]:
    return [ShardItem(source=m.data, member_path=m.path, id=m.id, meta=m.stored_meta,
                      size_bytes=len(m.data)) for m in members]


def _put_shard(store: S3ExchangeStore, exp: _Expected, archive_key: str,
               members: Sequence[Member], compression: str | None) -> ShardEntry:
    """Write a shard archive through s3exchange and promise its members."""
    shard = store.put_shard_archive(archive_key, _shard_items(members), compression=compression)
    exp.members(archive_key, members)
    return shard.entry


def _hide_parts(store: S3ExchangeStore, exp: _Expected, manifest_dir: str) -> None:
    """Part manifests have random names: hide whichever exist."""
    exp.hide_keys(store.list_keys(f"{manifest_dir}/manifests/"))


# --------------------------------------------------------------------------------------------
# Hand-made bytes (hostile input and what s3exchange cannot write)
# --------------------------------------------------------------------------------------------


def jsonl(lines: Iterable[object]) -> bytes:
    """A manifest body: objects as compact JSON lines, strings verbatim (broken lines)."""
    return b"".join((line.encode() if isinstance(line, str) else compact_json(line)) + b"\n"
                    for line in lines)


def _member_line(archive_key: str, path: str, id: str | None = None,
                 meta: dict[str, Any] | None = None, size: int | None = None) -> dict[str, Any]:
    """An internal-manifest line, field for field as s3exchange writes one."""
    return {"kind": "file", "key": f"{archive_key}#{path}", "member_path": path, "id": id,
            "meta": meta, "size_bytes": size}


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    """A tar member that is not a regular file (link, device, FIFO, directory)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed PAX tar like s3exchange's, with members exactly as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    """A 32x32 GF(2) matrix (as its columns) times a 32-bit vector."""
    total, column = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[column]
        vector >>= 1
        column += 1
    return total


def crc32_zeros(count: int, crc: int = 0) -> int:
    """``zlib.crc32(bytes(count), crc)`` in O(log count) (zlib's crc32_combine method)."""
    operator = [0xEDB88320] + [1 << i for i in range(31)]  # the register after one zero bit
    for _ in range(3):  # ... after one zero byte
        operator = [_gf2_times(operator, column) for column in operator]
    register = crc ^ 0xFFFFFFFF
    while count:
        if count & 1:
            register = _gf2_times(operator, register)
        count >>= 1
        if count:
            operator = [_gf2_times(operator, column) for column in operator]
    return register ^ 0xFFFFFFFF


def gzip_with_zeros(head: bytes, zero_blocks: int, block_size: int, tail: bytes = b"") -> bytes:
    """gzip of ``head + zeros(zero_blocks * block_size) + tail`` without compressing every zero.

    After a full flush deflate output is byte aligned and never refers back, so one compressed
    block of zeros can be repeated: a 2 GiB bomb is built in a fraction of a second, in ~2 MiB.
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(block_size)) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.compress(tail) + deflate.flush(zlib.Z_FINISH)
    crc = zlib.crc32(tail, crc32_zeros(zero_blocks * block_size, zlib.crc32(head)))
    size = len(head) + zero_blocks * block_size + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, mtime 0
    return header + start + block * zero_blocks + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _tar_prefix(data: bytes) -> bytes:
    """A tar without its end-of-archive blocks, so that more members can follow."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        last = tar.getmembers()[-1]
        end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return data[:end]


def _bomb_archive(archive_key: str) -> bytes:
    """A valid tar.gz of ~2 MiB whose last member, ``bomb.bin``, is 2 GiB of zeros."""
    bomb_size = BOMB_BLOCK * BOMB_BLOCKS
    small = _text("before the bomb")
    manifest = jsonl([_member_line(archive_key, "small.txt", size=len(small)),
                      _member_line(archive_key, "bomb.bin", size=bomb_size)])
    bomb = tarfile.TarInfo("bomb.bin")
    bomb.size = bomb_size
    head = (_tar_prefix(tar_bytes([regular(INTERNAL_MANIFEST, manifest),
                                   regular("small.txt", small)]))
            + bomb.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
    return gzip_with_zeros(head, BOMB_BLOCKS, BOMB_BLOCK, tail=bytes(2 * tarfile.BLOCKSIZE))


def _upload(store: S3ExchangeStore, key: str, body: bytes, *, refusable: bool = False) -> None:
    """Plain PUT (no s3exchange). ``refusable``: a hostile key some servers reject or rewrite
    (SeaweedFS refuses ``.``/``..`` segments and collapses ``//``); its entry stays hidden."""
    client: Any = store.s3_client
    try:
        client.put_object(Bucket=store.bucket, Key=key, Body=body)
    except ClientError:
        if not refusable:
            raise


# --------------------------------------------------------------------------------------------
# 1. overwrite
# --------------------------------------------------------------------------------------------


def overwrite_manifest(endpoint_url: str, bucket: str, prefix: str, *,
                       access_key: str = "testing", secret_key: str = "testing"
                       ) -> ManifestFixture:
    """Loose files in one manifest written in overwrite mode (``write_manifest``).

    Covers every ``file`` field (id, meta, content_type, size_bytes, etag), an id s3exchange
    infers from the basename, nested sub-directories, an empty file, a non-ASCII key, a minimal
    ``{"kind","key"}`` entry, and one key outside the manifest's parent prefix (shown under its
    full key).
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    base = _base(prefix, "overwrite")
    exp = _Expected(bucket, f"{base}/manifest.jsonl")
    objs = [
        Obj(f"{base}/a.txt", _text("a"), id="custom-a", content_type="text/plain",
            meta={"label": "cat", "score": 0.5, "tags": ["x", "y"]}),
        Obj(f"{base}/sub/dir/b.bin", _blob("b", 70_000)),  # id inferred: "b"
        Obj(f"{base}/sub/c.json", b'{"c": 1}\n', id="c-id", content_type="application/json",
            meta={"nested": {"k": [1, 2, None]}, "flag": False}),
        Obj(f"{base}/empty.txt", b""),
        Obj(f"{base}/sub/\u00fcn\u00efc\u00f8de.txt", _text("unicode key")),
        Obj(_base(prefix, "outside/loose.txt"), _text("outside"), id="outside",
            meta={"where": "outside the manifest dir"}),
    ]
    entries: list[ManifestEntry] = [_put_loose(store, exp, obj) for obj in objs]
    minimal = Obj(f"{base}/minimal.txt", _text("minimal"))
    _upload(store, minimal.key, minimal.data)
    entries.append({"kind": "file", "key": minimal.key})
    exp.file(minimal, id=None)
    store.write_manifest(exp.manifest_key, entries, mode="overwrite")
    return exp.build()


# --------------------------------------------------------------------------------------------
# 2. append_parts
# --------------------------------------------------------------------------------------------


def _parts_root(prefix: str) -> str:
    return f"{_base(prefix, 'parts')}/manifest.jsonl"


def _part_objs(prefix: str, part: int) -> list[Obj]:
    """The files of part number ``part`` (1-based); part 0 is the root's own entries."""
    base = _base(prefix, "parts")
    where = "root" if part == 0 else f"part{part}"
    return [Obj(f"{base}/{where}/item-{part}.txt", _text(f"{where} item"), id=f"{where}-item",
                meta={"part": part}),
            Obj(f"{base}/{where}/deep/blob-{part}.bin", _blob(f"{where} blob"), id=f"{where}-blob")]


def _parts_fixture(store: S3ExchangeStore, bucket: str, prefix: str, parts: int
                   ) -> ManifestFixture:
    exp = _Expected(bucket, _parts_root(prefix))
    for part in range(parts + 1):
        for obj in _part_objs(prefix, part):
            exp.file(obj, obj.id)
    _hide_parts(store, exp, _base(prefix, "parts"))
    return exp.build()


def _write_part(store: S3ExchangeStore, prefix: str, part: int) -> None:
    """Part 0: the root itself, in overwrite mode; any later part: one ``append_parts`` call
    (uploads the part's files, writes the part, rewrites the root with a ref appended)."""
    entries = [store.put_object(o.key, o.data, id=o.id, meta=o.meta)
               for o in _part_objs(prefix, part)]
    store.write_manifest(_parts_root(prefix), entries,
                         mode="overwrite" if part == 0 else "append_parts")


def append_parts_manifest(endpoint_url: str, bucket: str, prefix: str, *,
                          access_key: str = "testing", secret_key: str = "testing"
                          ) -> ManifestFixture:
    """A root manifest with its own entries, then two ``append_parts`` calls.

    Each call writes ``parts/manifests/part-YYYYMMDD-HHMMSS-<8 hex>.jsonl`` and rewrites the
    root with a ``manifest_ref`` appended.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    for part in (0, 1, 2):
        _write_part(store, prefix, part)
    return _parts_fixture(store, bucket, prefix, parts=2)


def append_more(endpoint_url: str, bucket: str, prefix: str, *,
                access_key: str = "testing", secret_key: str = "testing") -> ManifestFixture:
    """Append one more part to :func:`append_parts_manifest`'s root; returns the whole new tree.

    For the test that a mounted manifest picks up a root changed under it (after the TTL).
    Callable repeatedly: each call adds the next part.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    refs = [e for e in store.iter_manifest_entries(_parts_root(prefix), resolve_refs=False)
            if e["kind"] == "manifest_ref"]
    _write_part(store, prefix, len(refs) + 1)
    return _parts_fixture(store, bucket, prefix, parts=len(refs) + 1)


# --------------------------------------------------------------------------------------------
# 3. ManifestWriter
# --------------------------------------------------------------------------------------------


def _writer_members(label: str, count: int) -> list[Member]:
    dirs = ["audio", "audio/train", "audio/train/deep", "labels", ""]
    return [Member("/".join(p for p in (dirs[i % len(dirs)], f"{label}-{i:04d}.wav") if p),
                   _blob(f"{label} member {i}", 300 + i), id=f"{label}-{i:04d}" if i % 2 else None,
                   meta={"index": i} if i % 3 else None,
                   content_type="audio/wav" if i % 2 == 0 else None)
            for i in range(count)]


def _add_member(writer: ManifestWriter, m: Member) -> None:
    """``add_to_shard`` with a copy of meta: s3exchange adds content_type into the dict given."""
    writer.add_to_shard(m.path, m.data, id=m.id, meta=dict(m.meta) if m.meta else None,
                        content_type=m.content_type)


def _write_with_writer(store: S3ExchangeStore, exp: _Expected, manifest_key: str,
                       loose: Sequence[Obj], members: Sequence[Member],
                       refs: Sequence[str] = ()) -> None:
    """Everything through one ``ManifestWriter`` (append_parts, tiny part and shard sizes)."""
    with store.open_manifest_writer(manifest_key, part_max_entries=WRITER_PART_ENTRIES,
                                    shard_size=ShardSizePolicy(max_entries=WRITER_SHARD_ENTRIES)
                                    ) as writer:
        for obj in loose:
            exp.file(obj, writer.put_object(obj.key, obj.data, id=obj.id, meta=obj.meta,
                                            content_type=obj.content_type)["id"])
        for m in members:
            _add_member(writer, m)
        for ref in refs:
            writer.add_manifest(ref)
    # The writer names shards shard-%06d.tar from 1, in order, WRITER_SHARD_ENTRIES each.
    manifest_dir = manifest_key.rpartition("/")[0]
    for n, start in enumerate(range(0, len(members), WRITER_SHARD_ENTRIES), start=1):
        exp.members(f"{manifest_dir}/shards/shard-{n:06d}.tar",
                    members[start:start + WRITER_SHARD_ENTRIES])
    _hide_parts(store, exp, manifest_dir)


def writer_manifest(endpoint_url: str, bucket: str, prefix: str, *,
                    access_key: str = "testing", secret_key: str = "testing"
                    ) -> ManifestFixture:
    """``ManifestWriter`` output: parts, refs nested in parts, auto-named uncompressed shards.

    The root holds only refs to parts; one part refs a second writer's root (``nested/``),
    whose own refs point at its parts: root -> part -> nested root -> nested part -> entries.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    base = _base(prefix, "writer")
    exp = _Expected(bucket, f"{base}/manifest.jsonl")
    nested_key = f"{base}/nested/manifest.jsonl"
    _write_with_writer(store, exp, nested_key,
                       [Obj(f"{base}/nested/notes/n.txt", _text("nested loose"), id="n")],
                       _writer_members("nested", 3))
    exp.hide_keys([nested_key])
    existing = Obj(f"{base}/loose/existing.bin", _blob("existing"), id="existing",
                   meta={"added_with": "add_file"})
    etag = store.put_object(existing.key, existing.data)["etag"]
    _write_with_writer(store, exp, exp.manifest_key,
                       [Obj(f"{base}/loose/l1.txt", _text("l1"), meta={"k": "v"},
                            content_type="text/plain")],
                       _writer_members("root", 5), refs=[nested_key])
    _add_existing_file(store, exp, existing, etag)
    return exp.build()


def _add_existing_file(store: S3ExchangeStore, exp: _Expected, obj: Obj, etag: str | None
                       ) -> None:
    """``ManifestWriter.add_file`` for an object already in S3, in a later writer session."""
    with store.open_manifest_writer(exp.manifest_key) as writer:
        writer.add_file(obj.key, id=obj.id, meta=obj.meta, size_bytes=len(obj.data), etag=etag)
    exp.file(obj, obj.id)
    _hide_parts(store, exp, exp.manifest_key.rpartition("/")[0])


# --------------------------------------------------------------------------------------------
# 4. tar.gz shards
# --------------------------------------------------------------------------------------------


def _shard_members(label: str) -> list[Member]:
    return [Member(f"{label}.txt", _text(f"{label} top"), id=f"{label}-top",
                   meta={"shard": label}),
            Member(f"sub/{label}.bin", _blob(f"{label} sub", 5000), id=f"{label}-sub"),
            Member(f"sub/deeper/{label}.json", b'{"deep": true}\n', meta={"deep": True})]


def targz_shards(endpoint_url: str, bucket: str, prefix: str, *,
                 access_key: str = "testing", secret_key: str = "testing") -> ManifestFixture:
    """``put_shard_archive`` shards named ``shards/shard-%05d.tar.gz`` listed by a manifest.

    shard-00000: ``compression: "gzip"`` as s3exchange writes it; shard-00001: the field removed
    (readers default to gzip); shard-00002.tar: explicit ``null`` and an uncompressed tar.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    base = _base(prefix, "targz")
    exp = _Expected(bucket, f"{base}/manifest.jsonl")
    explicit = _put_shard(store, exp, f"{base}/shards/shard-00000.tar.gz",
                          _shard_members("s0"), "gzip")
    omitted = _put_shard(store, exp, f"{base}/shards/shard-00001.tar.gz",
                         _shard_members("s1"), "gzip")
    del omitted["compression"]
    plain = _put_shard(store, exp, f"{base}/shards/shard-00002.tar", _shard_members("s2"), None)
    store.write_manifest(exp.manifest_key, [explicit, omitted, plain], mode="overwrite")
    return exp.build()


# --------------------------------------------------------------------------------------------
# 5. hostile input (hand-made)
# --------------------------------------------------------------------------------------------


def hostile_manifest(endpoint_url: str, bucket: str, prefix: str, *,
                     access_key: str = "testing", secret_key: str = "testing"
                     ) -> ManifestFixture:
    """A hand-made manifest full of what a mount must survive; only good entries are visible.

    Broken lines (not JSON, not an object, unknown or missing kind, missing key/archive_key,
    non-string key) are skipped; refs to missing manifests and ref cycles end; keys that are
    not POSIX paths (``..``, ``.``, ``//``, leading ``/``) stay hidden although their objects
    exist; shards that are corrupt, missing, hostile (links, devices, FIFO, ``../`` and
    absolute members) or a gzip bomb never break the rest of the tree.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    base = _base(prefix, "hostile")
    exp = _Expected(bucket, f"{base}/manifest.jsonl")
    good = _hostile_good_files(store, exp, base)
    hidden_keys = _hostile_hidden_files(store, exp, base)
    refs = _hostile_ref_cycle(store, exp, base)
    shards = _hostile_shards(store, exp, base)
    lines: list[object] = [  # the first and the last good entries bracket all the junk
        good[0], "this is not JSON {", "", [1, 2, 3], 42, "null",
        {"kind": "directory", "key": hidden_keys[0]}, {"key": hidden_keys[1]},
        {"kind": "file", "id": "no-key"}, {"kind": "file", "key": 123},
        {"kind": "shard", "format": "tar", "compression": None},
        {"kind": "manifest_ref", "key": f"{base}/refs/missing.jsonl"},
        *refs, *good[1:-1],
        *({"kind": "file", "key": k} for k in hidden_keys[2:]),
        *shards, "   ", good[-1],
    ]
    _upload(store, exp.manifest_key, jsonl(lines))
    return exp.build()


def _hostile_good_files(store: S3ExchangeStore, exp: _Expected, base: str) -> list[object]:
    """Valid entries between the junk: null fields, unknown fields, a real key with '#'."""
    specs: list[tuple[Obj, dict[str, Any]]] = [
        (Obj(f"{base}/good.txt", _text("good"), id="good", meta={"ok": True}), {}),
        (Obj(f"{base}/nulls.txt", _text("nulls")),
         {"id": None, "meta": None, "content_type": None, "size_bytes": None, "etag": None}),
        (Obj(f"{base}/extra-fields.txt", _text("extra"), id="extra", meta={"v": 2}),
         {"x-custom": {"a": [1, 2]}, "future_field": "v2"}),
        (Obj(f"{base}/hash#tag.txt", _text("a real key with a hash"), id="hash"), {}),
        (Obj(f"{base}/last.txt", _text("after all the junk"), id="last"), {}),
    ]
    for obj, _ in specs:
        _upload(store, obj.key, obj.data)
        exp.file(obj, obj.id)
    return [_file_line(obj, **extra) for obj, extra in specs]


def _file_line(obj: Obj, **extra: object) -> dict[str, object]:
    """A hand-made ``file`` line: kind, key, id and meta when set, then ``extra`` verbatim."""
    optional = {"id": obj.id, "meta": obj.meta}
    return {"kind": "file", "key": obj.key,
            **{k: v for k, v in optional.items() if v is not None}, **extra}


def _hostile_hidden_files(store: S3ExchangeStore, exp: _Expected, base: str) -> list[str]:
    """Objects that exist but must not show: the first two under bad lines, the rest bad keys."""
    keys = [f"{base}/unknown-kind.txt", f"{base}/no-kind.txt", f"{base}/../escape.txt",
            f"{base}/sub/../../escape2.txt", f"{base}/./dot.txt", f"{base}//double.txt",
            "//etc/passwd", "/abs.txt", f"{base}/trailing/"]
    for key in keys:
        _upload(store, key, _text(f"HOSTILE {key}"), refusable=True)
    exp.hide_keys(keys)
    return keys


def _hostile_ref_cycle(store: S3ExchangeStore, exp: _Expected, base: str) -> list[object]:
    """refs/a.jsonl -> refs/b.jsonl -> refs/a.jsonl (and back to the root): each file once."""
    a, b = f"{base}/refs/a.jsonl", f"{base}/refs/b.jsonl"
    for name, ref_to in (("a", [b]), ("b", [a, exp.manifest_key])):
        obj = Obj(f"{base}/cycle-{name}.txt", _text(f"cycle {name}"), id=f"cycle-{name}")
        _upload(store, obj.key, obj.data)
        exp.file(obj, obj.id)
        _upload(store, f"{base}/refs/{name}.jsonl",
                jsonl([_file_line(obj), *({"kind": "manifest_ref", "key": k} for k in ref_to)]))
    exp.hide_keys([a, b])
    return [{"kind": "manifest_ref", "key": a}]


def _hostile_shards(store: S3ExchangeStore, exp: _Expected, base: str) -> list[object]:
    """Shard lines for: corrupt, missing, hostile members, all-null fields, a gzip bomb."""
    shards = f"{base}/shards"
    corrupt = f"{shards}/corrupt.tar.gz"
    _upload(store, corrupt, b"\x1f\x8b\x08\x00" + _blob("corrupt", 4096))
    hostile, nulls, bomb = f"{shards}/hostile.tar", f"{shards}/nulls.tar", f"{shards}/bomb.tar.gz"
    _upload(store, hostile, _hostile_tar(exp, hostile))
    _upload(store, nulls, _nulls_tar(exp, nulls))
    _upload(store, bomb, _bomb_archive(bomb))
    exp.unspecified.update(exp.path(Source(bomb, m)) for m in ("small.txt", "bomb.bin"))
    exp.hidden.add(exp.path(Source(bomb, INTERNAL_MANIFEST)))
    return [
        {"kind": "shard", "archive_key": corrupt, "count": 3},
        {"kind": "shard", "archive_key": f"{shards}/missing.tar.gz", "compression": "gzip"},
        {"kind": "shard", "archive_key": hostile, "compression": None},
        {"kind": "shard", "archive_key": nulls, "format": None, "compression": None,
         "internal_manifest_path": None, "count": None, "size_bytes": None, "meta": None},
        {"kind": "shard", "archive_key": bomb, "compression": "gzip", "count": 2},
    ]


def _hostile_tar(exp: _Expected, archive_key: str) -> bytes:
    """Uncompressed (so ranged reads see it too): two good members among hostile ones.

    The internal manifest lists the hostile members and a ghost absent from the tar (a mount
    trusting it would show them), omits ``sub/unlisted.txt`` (still a member) and gives
    ``ok.txt`` a null size (the tar header size counts).
    """
    ok = Member("ok.txt", _text("ok member"), id="ok", meta={"fine": 1})
    unlisted = Member("sub/unlisted.txt", _text("unlisted member"))
    bad_regular = ["../escape.txt", "/abs/member.txt", "a//b.txt"]
    bad_special = [special("link", tarfile.SYMTYPE, "/etc/passwd"),
                   special("hard", tarfile.LNKTYPE, "ok.txt"),
                   special("dev", tarfile.CHRTYPE), special("fifo", tarfile.FIFOTYPE)]
    listed = [ok.path, *bad_regular, *(i.name for i, _ in bad_special), "ghost.txt"]
    manifest = jsonl(_member_line(archive_key, p, id=ok.id if p == ok.path else p,
                                  meta=ok.meta if p == ok.path else None) for p in listed)
    members = [regular(INTERNAL_MANIFEST, manifest), regular(ok.path, ok.data),
               regular(unlisted.path, unlisted.data),
               *(regular(p, _text(f"HOSTILE member {p}")) for p in bad_regular), *bad_special,
               special("dirent", tarfile.DIRTYPE), regular("./dotslash.txt", _text("dotslash"))]
    exp.members(archive_key, [ok])
    exp.visible(Source(archive_key, unlisted.path), unlisted.data)
    exp.hidden.update(exp.path(Source(archive_key, p)) for p in listed[1:])
    exp.unspecified.update(exp.path(Source(archive_key, p))
                           for p in ("dirent", "./dotslash.txt", "dotslash.txt"))
    return tar_bytes(members)


def _nulls_tar(exp: _Expected, archive_key: str) -> bytes:
    """Members whose internal lines carry only nulls, in a shard line of only nulls."""
    members = [Member("n/one.txt", _text("null fields one")), Member("two.txt", _text("two"))]
    manifest = jsonl(_member_line(archive_key, m.path) for m in members)
    exp.members(archive_key, members)
    return tar_bytes([regular(INTERNAL_MANIFEST, manifest),
                      *(regular(m.path, m.data) for m in members)])


# --------------------------------------------------------------------------------------------
# 6. compressions
# --------------------------------------------------------------------------------------------


def mixed_compressions(endpoint_url: str, bucket: str, prefix: str, *,
                       access_key: str = "testing", secret_key: str = "testing"
                       ) -> ManifestFixture:
    """xz and bz2 shards, and shards whose declared compression is wrong: trust the bytes.

    Every member is visible. Declared vs. real: ``xz.tar.xz`` xz/xz; ``bz2.tar.bz2`` bz2/bz2;
    ``bzip2.tar.bz2`` "bzip2"/bz2 (s3exchange cannot read it); ``shards/shard-000001.tar``
    xz/xz behind a ``.tar`` name (what ``ManifestWriter(shard_compression="xz")`` writes);
    ``liar.tar.gz`` "gzip"/bz2; ``default.tar.gz`` field omitted (gzip)/plain tar;
    ``null.tar.gz`` null/gzip.
    """
    store = exchange_store(endpoint_url, bucket, access_key=access_key, secret_key=secret_key)
    base = _base(prefix, "mixed")
    exp = _Expected(bucket, f"{base}/manifest.jsonl")
    shards: list[tuple[str, str | None, str | None]] = [  # name, real, declared compression
        ("xz.tar.xz", "xz", "xz"), ("bz2.tar.bz2", "bz2", "bz2"),
        ("bzip2.tar.bz2", "bz2", "bzip2"), ("liar.tar.gz", "bz2", "gzip"),
        ("default.tar.gz", None, OMITTED), ("null.tar.gz", "gzip", None)]
    entries: list[ShardEntry] = []
    for name, real, declared in shards:
        entry = _put_shard(store, exp, f"{base}/shards/{name}", _shard_members(name), real)
        entry["compression"] = declared
        if declared == OMITTED:
            del entry["compression"]
        entries.append(entry)
    members = _shard_members("writer-xz")
    with store.open_manifest_writer(exp.manifest_key, mode="overwrite",
                                    shard_size=ShardSizePolicy(max_entries=len(members)),
                                    shard_compression="xz") as writer:
        for entry in entries:
            writer.add_entry(entry)
        for m in members:
            _add_member(writer, m)
    exp.members(f"{base}/shards/shard-000001.tar", members)
    return exp.build()
