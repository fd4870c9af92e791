"""The fast ListObjectsV2 reader (store/listxml.py) reads what ElementTree reads, or
refuses (ValueError: the page is then read by ElementTree); and S3Store lists through it,
asking for the next page while the caller works on the one it has."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from s3fuse.store import listxml, s3 as s3_store
from s3fuse.store.presigned import parse_list_v2
from tests.conftest import Backend
from tests.test_presigned import LIST_XML
from tests.test_store_contract import moto_store, new_bucket

HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'


def page(*elements: bytes, truncated: bool = False, url: bool = True) -> bytes:
    return (HEAD + b"<Name>b</Name><Prefix>d/</Prefix><MaxKeys>1000</MaxKeys>"
            + b"<IsTruncated>" + (b"true" if truncated else b"false") + b"</IsTruncated>"
            + b"".join(elements)
            + (b"<EncodingType>url</EncodingType>" if url else b"")
            + (b"<NextContinuationToken>t&amp;k=</NextContinuationToken>" if truncated else b"")
            + b"</ListBucketResult>")


def obj(key: bytes, size: bytes = b"1", etag: bytes = b"&quot;e1&quot;",
        modified: bytes = b"2024-01-02T03:04:05.000Z") -> bytes:
    return (b"<Contents><Key>" + key + b"</Key><LastModified>" + modified + b"</LastModified>"
            b"<ETag>" + etag + b"</ETag><Size>" + size + b"</Size>"
            b"<StorageClass>STANDARD</StorageClass></Contents>")


def prefix(name: bytes) -> bytes:
    return b"<CommonPrefixes><Prefix>" + name + b"</Prefix></CommonPrefixes>"


def as_tree(body: bytes) -> tuple[list[str], list[tuple[str, str, str, str]], bool, str | None]:
    """What ElementTree's reading (parse_list_v2) says, in FastPage's terms."""
    resp = parse_list_v2(body)
    return ([p["Prefix"] for p in resp["CommonPrefixes"]],
            [(o["Key"], str(o["Size"]), o["LastModified"] or "", o["ETag"]) for o in resp["Contents"]],
            resp["IsTruncated"], resp.get("NextContinuationToken"))


def as_fast(body: bytes) -> tuple[list[str], list[tuple[str, str, str, str]], bool, str | None]:
    fast = listxml.parse(body)
    return fast.prefixes, fast.objects, fast.truncated, fast.token


SAME = {
    "boto3's sample, pretty-printed": LIST_XML,
    "many keys": page(*(obj(b"d/f%d" % i, str(i).encode()) for i in range(50)), truncated=True),
    "prefixes only": page(prefix(b"d/a/"), prefix(b"d/b%20c/")),
    "empty": page(),
    "entities and references": page(obj(b"d/a&amp;b&#x41;&#66;&lt;&gt;&apos;", etag=b"&#34;x&#34;"),
                                    prefix(b"d/q&quot;/")),
    "not url-encoded": page(obj(b"d/a+b%20c"), url=False),
    "url-encoded, not UTF-8": page(obj(b"d/bad%FF%FE"), obj(b"d/caf%C3%A9"), prefix(b"d/s%FF/")),
    "sizes no file has": page(obj(b"d/huge", b"18446744073709551616"), obj(b"d/nan", b"12e3"),
                              obj(b"d/minus", b"-1")),
    "owner nested": page(*(b"<Contents><Key>d/%d</Key><Size>3</Size><Owner><ID>o</ID>"
                           b"<DisplayName>n</DisplayName></Owner><ETag>e</ETag></Contents>" % i
                           for i in range(3))),
    "no LastModified": page(b"<Contents><Key>d/k</Key><Size>1</Size><ETag>e</ETag></Contents>"),
    "only a Key": page(b"<Contents><Key>d/k</Key></Contents>", b"<Contents><Key>d/l</Key></Contents>"),
}


@pytest.mark.parametrize("body", SAME.values(), ids=SAME.keys())
def test_reads_what_elementtree_reads(body: bytes) -> None:
    assert as_fast(body) == as_tree(body)


REFUSED = {
    "elements of two shapes": page(obj(b"d/a"), b"<Contents><Key>d/b</Key><Size>1</Size></Contents>"),
    "an empty element written short": page(obj(b"d/a"), obj(b"d/b").replace(b"<ETag>&quot;e1&quot;</ETag>", b"<ETag/>")),
    "CDATA": page(obj(b"<![CDATA[d/a]]>")),
    "a comment": page(b"<!-- hi -->", obj(b"d/a")),
    "an entity of a DTD": page(obj(b"d/&copy;")),
    "an attribute on a Prefix": page(b'<CommonPrefixes><Prefix a="1">d/x/</Prefix></CommonPrefixes>'),
    "another document": b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>',
    "a carriage return": page(obj(b"d/a\r\nb")),
    "no Key": page(b"<Contents><Size>1</Size></Contents>"),
    "two tokens": page(b"<NextContinuationToken>a</NextContinuationToken>", truncated=True),
    "an entity in a Size": page(obj(b"d/a", b"&#49;2")),
    "not UTF-8": page(obj("d/é".encode("latin-1"))),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_refuses_what_it_does_not_read(body: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        listxml.parse(body)


def test_a_refused_page_is_read_by_elementtree() -> None:
    """The store's reader falls back: the same answer, more slowly."""
    body = REFUSED["a comment"]
    assert s3_store._parse_page(body) == parse_list_v2(body)
    fast = s3_store._parse_page(SAME["many keys"])
    assert isinstance(fast, listxml.FastPage)
    listed = s3_store._fast_page("b", fast)
    assert [(i.key, i.size, i.etag) for i in listed.objects[:2]] == [("d/f0", 0, "e1"), ("d/f1", 1, "e1")]
    assert listed.objects[0].mtime_ns == 1704164645 * 10**9


def test_sizes_no_file_can_have_are_hidden_by_the_fast_reader(caplog: pytest.LogCaptureFixture) -> None:
    fast = listxml.parse(SAME["sizes no file has"] .replace(b"</ListBucketResult>",
                                                            obj(b"d/fine", b"9223372036854775807")
                                                            + b"</ListBucketResult>"))
    listed = s3_store._fast_page("b", fast)
    assert [(i.key, i.size) for i in listed.objects] == [("d/fine", (1 << 63) - 1)]
    assert sum("hiding" in r.message for r in caplog.records) == 3


def test_pages_are_asked_for_ahead(moto_backend: Backend, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """While the caller holds a page, the next one is already being asked for (in another
    thread), and every key comes once, in order."""
    store = moto_store(moto_backend, tmp_path)
    bucket = new_bucket(moto_backend)
    keys = [f"d/k{i:02d}" for i in range(10)]
    for key in keys:
        moto_backend.client.put_object(Bucket=bucket, Key=key, Body=b"x")
    asked = threading.Semaphore(0)
    real = store._list_page

    def counted(*args: Any) -> Any:
        asked.release()
        return real(*args)

    monkeypatch.setattr(store, "_list_page", counted)
    seen = []
    for page in store.list_pages(bucket, "d/"):  # PAGE keys a page
        assert asked.acquire(timeout=30)  # this page's request
        if len(seen) + len(page.objects) < len(keys):
            assert asked.acquire(timeout=30)  # the next one's, asked before this one is used
            asked.release()
        seen += [o.key for o in page.objects]
    assert seen == keys
    assert store.request_counts()["ListObjectsV2"] == 4
