"""The s3exchange fixtures are real: what each one promises is in S3, byte for byte.

Mount tests trust these descriptions, so every one is checked here twice, without s3fuse:
with plain boto3 + tarfile (which trusts magic bytes, as the mount must) and with s3exchange's
own reader, configured from the ``S3_*`` environment variables as its users configure it.
Where s3exchange cannot read its own formats (bzip2, wrong declarations, hostile input) the
test pins that down too, since it is why s3fuse reads them itself.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import struct
import tarfile
import zlib
from typing import Any

import pytest
from s3exchange import (
    InvalidManifestError,
    ObjectNotFoundError,
    S3ExchangeStore,
    S3Settings,
    Shard,
    ShardReadError,
)

from tests.conftest import Backend
from tests.support.s3exchange_fixtures import (
    BOMB_BLOCK,
    BOMB_BLOCKS,
    INTERNAL_MANIFEST,
    XATTR_ID,
    XATTR_META,
    XATTR_URI,
    ManifestFixture,
    Source,
    append_more,
    append_parts_manifest,
    compact_json,
    crc32_zeros,
    gzip_with_zeros,
    hostile_manifest,
    mixed_compressions,
    overwrite_manifest,
    targz_shards,
    writer_manifest,
)

BUCKET = "s3exchange-fixtures"
PART_KEY = re.compile(r"ap/parts/manifests/part-\d{8}-\d{6}-[0-9a-f]{8}\.jsonl")
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


@pytest.fixture(scope="module")
def s3(moto_backend: Backend) -> Any:
    moto_backend.client.create_bucket(Bucket=BUCKET)
    return moto_backend.client


@pytest.fixture
def endpoint(moto_endpoint: str, s3: Any) -> str:
    return moto_endpoint


@pytest.fixture
def store(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3ExchangeStore:
    """s3exchange set up from its environment variables only (compat.md's settings claim)."""
    for name, value in {"S3_ENDPOINT_URL": endpoint, "S3_REGION": "us-east-1",
                        "S3_BUCKET": BUCKET, "S3_AWS_ACCESS_KEY_ID": "testing",
                        "S3_AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    return S3ExchangeStore(S3Settings())  # type: ignore[call-arg]  # fields come from env


# --------------------------------------------------------------------------------------------
# Checks shared by every fixture
# --------------------------------------------------------------------------------------------


def get(s3: Any, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def lines(s3: Any, key: str) -> list[dict[str, Any]]:
    """A manifest's entries exactly as stored (every line must be compact JSON)."""
    raw = [line for line in get(s3, key).decode().split("\n") if line]
    entries = [json.loads(line) for line in raw]
    assert [compact_json(e).decode() for e in entries] == raw
    return entries


def magic(data: bytes) -> str | None:
    """The compression the bytes really use (None: a plain tar)."""
    return next((name for head, name in MAGIC.items() if data.startswith(head)), None)


def read_source(s3: Any, source: Source, archives: dict[str, bytes]) -> bytes:
    """The bytes behind a source, tar members found the way s3fuse must: by magic bytes."""
    if source.member is None:
        return get(s3, source.key)
    if source.key not in archives:
        archives[source.key] = get(s3, source.key)
    with tarfile.open(fileobj=io.BytesIO(archives[source.key]), mode="r:*") as tar:
        member = tar.extractfile(tar.getmember(source.member))
        assert member is not None
        return member.read()


def assert_in_s3(s3: Any, fx: ManifestFixture) -> None:
    """Every promised file is in S3 with the promised bytes, and its uri xattr names it."""
    archives: dict[str, bytes] = {}
    assert set(fx.files) == set(fx.sources) == set(fx.xattrs)
    for path, data in fx.files.items():
        source = fx.sources[path]
        assert read_source(s3, source, archives) == data, path
        assert fx.xattrs[path][XATTR_URI] == f"s3://{BUCKET}/{source.virtual_key}".encode()
    assert fx.listing_problems(fx.files) == []


def xattrs_of(entry: dict[str, Any]) -> dict[str, bytes]:
    """The id/meta xattrs an s3exchange entry calls for."""
    attrs = {}
    if entry.get("id") is not None:
        attrs[XATTR_ID] = entry["id"].encode()
    if entry.get("meta") is not None:
        attrs[XATTR_META] = compact_json(entry["meta"])
    return attrs


def assert_s3exchange_reads(store: S3ExchangeStore, fx: ManifestFixture) -> None:
    """s3exchange resolves the manifest to exactly the promised files, bytes, ids and metas."""
    objects: Any = store.iter_objects(fx.manifest_key)  # entries typed as a TypedDict union
    got = {entry["key"]: stream.read() for stream, entry in objects}
    assert got == {fx.sources[p].virtual_key: data for p, data in fx.files.items()}
    files: Any = store.list_manifest_files(fx.manifest_key)
    listed = {e["key"]: e for e in files}
    for path, source in fx.sources.items():
        want = {k: v for k, v in fx.xattrs[path].items() if k != XATTR_URI}
        assert xattrs_of(listed[source.virtual_key]) == want, path


# --------------------------------------------------------------------------------------------
# One test per fixture
# --------------------------------------------------------------------------------------------


def test_overwrite_manifest(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = overwrite_manifest(endpoint, BUCKET, "ow")
    assert fx.manifest_key == "ow/overwrite/manifest.jsonl" and fx.name == "overwrite"
    assert_in_s3(s3, fx)
    assert_s3exchange_reads(store, fx)
    assert "ow/outside/loose.txt" in fx.files  # outside the manifest dir: its full key
    assert fx.directories == {"sub", "sub/dir", "ow", "ow/outside"}
    entries = {e["key"]: e for e in lines(s3, fx.manifest_key)}
    a = entries["ow/overwrite/a.txt"]
    assert list(a) == ["kind", "key", "id", "meta", "content_type", "size_bytes", "etag"]
    head = s3.head_object(Bucket=BUCKET, Key="ow/overwrite/a.txt")
    assert (a["size_bytes"], a["etag"]) == (head["ContentLength"], head["ETag"].strip('"'))
    assert entries["ow/overwrite/sub/dir/b.bin"]["id"] == "b"  # inferred from the basename
    assert entries["ow/overwrite/minimal.txt"] == {"kind": "file",
                                                   "key": "ow/overwrite/minimal.txt"}


def test_append_parts_then_more(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = append_parts_manifest(endpoint, BUCKET, "ap")
    assert_in_s3(s3, fx)
    assert_s3exchange_reads(store, fx)
    root = lines(s3, fx.manifest_key)
    assert [e["kind"] for e in root] == ["file", "file", "manifest_ref", "manifest_ref"]
    for ref in root[2:]:
        assert PART_KEY.fullmatch(ref["key"])
        assert {e["kind"] for e in lines(s3, ref["key"])} == {"file"}

    later = append_more(endpoint, BUCKET, "ap")
    assert set(later.files) > set(fx.files) and len(lines(s3, fx.manifest_key)) == 5
    assert_in_s3(s3, later)
    assert_s3exchange_reads(store, later)


def test_writer_manifest(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = writer_manifest(endpoint, BUCKET, "wr")
    assert_in_s3(s3, fx)
    assert_s3exchange_reads(store, fx)
    assert sorted(store.list_keys("wr/writer/shards/")) == [
        f"wr/writer/shards/shard-{n:06d}.tar" for n in (1, 2, 3)]
    root = lines(s3, fx.manifest_key)
    assert {e["kind"] for e in root} == {"manifest_ref"} and len(root) == 3
    parts = [e for ref in root for e in lines(s3, ref["key"])]
    assert {"kind": "manifest_ref", "key": "wr/writer/nested/manifest.jsonl"} in parts
    for shard in (e for e in parts if e["kind"] == "shard"):
        assert_writer_shard(s3, shard)


def assert_writer_shard(s3: Any, entry: dict[str, Any]) -> None:
    """A ManifestWriter shard: uncompressed PAX tar, internal manifest first, as compat.md says."""
    data = get(s3, entry["archive_key"])
    assert magic(data) is None and data[257:263] == b"ustar\x00"
    assert entry == {"kind": "shard", "archive_key": entry["archive_key"], "format": "tar",
                     "compression": None, "internal_manifest_path": INTERNAL_MANIFEST,
                     "count": entry["count"], "size_bytes": len(data),
                     "meta": {"etag": s3.head_object(Bucket=BUCKET, Key=entry["archive_key"])
                              ["ETag"].strip('"')}}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
        internal = tar.extractfile(INTERNAL_MANIFEST)
        assert internal is not None
        rows = [json.loads(line) for line in internal.read().splitlines()]
    assert names[0] == INTERNAL_MANIFEST and len(names) == entry["count"] + 1
    assert [list(r) for r in rows] == [["kind", "key", "member_path", "id", "meta",
                                        "size_bytes"]] * len(rows)
    assert [r["key"] for r in rows] == [f"{entry['archive_key']}#{n}" for n in names[1:]]


def test_targz_shards(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = targz_shards(endpoint, BUCKET, "tg")
    assert_in_s3(s3, fx)
    assert_s3exchange_reads(store, fx)  # omitted compression = gzip, null = plain tar
    root = lines(s3, fx.manifest_key)
    assert [e.get("compression", "omitted") for e in root] == ["gzip", "omitted", None]
    assert [magic(get(s3, e["archive_key"])) for e in root] == ["gzip", "gzip", None]


def test_mixed_compressions(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = mixed_compressions(endpoint, BUCKET, "mx")
    assert_in_s3(s3, fx)  # tarfile's "r:*" goes by magic bytes: every member is there
    shards = {e["archive_key"].rpartition("/")[2]: e for e in lines(s3, fx.manifest_key)}
    declared = {name: e.get("compression", "omitted") for name, e in shards.items()}
    real = {name: magic(get(s3, e["archive_key"])) for name, e in shards.items()}
    assert declared == {"xz.tar.xz": "xz", "bz2.tar.bz2": "bz2", "bzip2.tar.bz2": "bzip2",
                        "liar.tar.gz": "gzip", "default.tar.gz": "omitted",
                        "null.tar.gz": None, "shard-000001.tar": "xz"}
    assert real == {"xz.tar.xz": "xz", "bz2.tar.bz2": "bz2", "bzip2.tar.bz2": "bz2",
                    "liar.tar.gz": "bz2", "default.tar.gz": None, "null.tar.gz": "gzip",
                    "shard-000001.tar": "xz"}
    readable = {name for name, e in shards.items() if s3exchange_can_list(store, e)}
    assert readable == {"xz.tar.xz", "bz2.tar.bz2", "shard-000001.tar"}
    # By key s3exchange guesses from the extension: ".tar.bz2" -> "bzip2", ".tar" -> plain.
    for name in ("bz2.tar.bz2", "shard-000001.tar"):
        path = next(p for p in fx.files if p.startswith(f"shards/{name}/"))
        with pytest.raises(ObjectNotFoundError):
            store.get_object(fx.sources[path].virtual_key)


def s3exchange_can_list(store: S3ExchangeStore, entry: dict[str, Any]) -> bool:
    try:
        Shard.from_entry(store, entry).get_manifest()  # type: ignore[arg-type]
    except ShardReadError:
        return False
    return True


def test_hostile_manifest(endpoint: str, s3: Any, store: S3ExchangeStore) -> None:
    fx = hostile_manifest(endpoint, BUCKET, "ho")
    assert_in_s3(s3, fx)
    with pytest.raises(InvalidManifestError):  # s3exchange is strict; the mount must not be
        list(store.iter_manifest_entries(fx.manifest_key))
    for path, source in fx.sources.items():  # ... but it reads every promised file
        assert store.get_object(source.virtual_key).read() == fx.files[path]
    for key in ("ho/hostile/../escape.txt", "//etc/passwd", "ho/hostile//double.txt",
                "ho/hostile/no-kind.txt"):  # hidden, although the objects exist
        assert get(s3, key).startswith(b"HOSTILE")
    assert "../escape.txt" in fx.hidden and "shards/hostile.tar/link" in fx.hidden
    assert fx.listing_problems([*fx.files, "../escape.txt", "bogus"]) == [
        "must be hidden: ../escape.txt", "unexpected: bogus"]
    assert_hostile_archives(s3, store)
    assert_bomb(get(s3, "ho/hostile/shards/bomb.tar.gz"))


def assert_hostile_archives(s3: Any, store: S3ExchangeStore) -> None:
    """The hostile tar really holds links, devices, escapes; the broken shards are broken."""
    with tarfile.open(fileobj=io.BytesIO(get(s3, "ho/hostile/shards/hostile.tar"))) as tar:
        kinds = {m.name: m.type for m in tar.getmembers()}
    assert next(iter(kinds)) == INTERNAL_MANIFEST
    assert {kinds[n] for n in ("link", "hard", "dev", "fifo", "dirent")} == {
        tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE}
    assert {"../escape.txt", "/abs/member.txt", "a//b.txt", "./dotslash.txt"} <= set(kinds)
    # s3exchange serves the escaping member: the mount must not.
    assert store.get_object("ho/hostile/shards/hostile.tar#../escape.txt").read().startswith(
        b"HOSTILE")
    corrupt = io.BytesIO(get(s3, "ho/hostile/shards/corrupt.tar.gz"))
    with pytest.raises(tarfile.TarError), tarfile.open(fileobj=corrupt) as tar:
        tar.getmembers()
    assert not store.exists("ho/hostile/shards/missing.tar.gz")


def assert_bomb(data: bytes) -> None:
    """~2 MiB that claims, and inflates to, a 2 GiB member: headers from the first MiB, the
    rest from the gzip trailer (CRC and size of everything), without inflating 2 GiB here."""
    assert len(data) < 4 << 20
    head = zlib.decompressobj(31).decompress(data, 1 << 20)
    members: list[tarfile.TarInfo] = []
    with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
        for member in tar:
            members.append(member)
            if member.name == "bomb.bin":
                break  # its data is the 2 GiB
    assert [m.name for m in members] == [INTERNAL_MANIFEST, "small.txt", "bomb.bin"]
    bomb = members[-1]
    assert bomb.size == BOMB_BLOCK * BOMB_BLOCKS == 2 << 30
    rest = bomb.size + 2 * tarfile.BLOCKSIZE  # member data, then the end-of-archive blocks
    assert head[bomb.offset_data:] == bytes(len(head) - bomb.offset_data)
    crc = crc32_zeros(rest, zlib.crc32(head[:bomb.offset_data]))
    assert struct.unpack("<II", data[-8:]) == (crc, (bomb.offset_data + rest) & 0xFFFFFFFF)


def test_gzip_with_zeros_is_valid_gzip() -> None:
    """The bomb's construction, at a size that can be fully checked."""
    data = gzip_with_zeros(b"head", 5, 70_000, tail=b"tail")
    assert gzip.decompress(data) == b"head" + bytes(5 * 70_000) + b"tail"
    for count, crc in ((0, 0), (1, 7), (513, 0xDEADBEEF), (100_003, 12345)):
        assert crc32_zeros(count, crc) == zlib.crc32(bytes(count), crc)
