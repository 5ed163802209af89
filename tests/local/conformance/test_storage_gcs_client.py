"""google-cloud-storage against the local Cloud Storage: each check is behaviour Google documents
for the JSON / XML API (https://cloud.google.com/storage/docs/json_api/v1)."""

from __future__ import annotations

import gzip
import uuid

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud.storage import transfer_manager


@pytest.fixture(scope="module")
def bucket(gcs):
    return gcs.create_bucket(f"conf-{uuid.uuid4().hex[:12]}")


def _fill(bucket, prefix, names):
    for n in names:
        bucket.blob(prefix + n).upload_from_string(n.encode())
    return [prefix + n for n in names]


def test_list_max_results_and_page_tokens(gcs, bucket):
    names = _fill(bucket, "page/", [f"o{i:02d}" for i in range(7)])
    assert [b.name for b in gcs.list_blobs(bucket, prefix="page/", max_results=3)] == names[:3]
    pages = gcs.list_blobs(bucket, prefix="page/", page_size=3).pages
    got = [[b.name for b in page] for page in pages]
    assert got == [names[0:3], names[3:6], names[6:7]]
    it = gcs.list_blobs(bucket, prefix="page/", page_size=3)
    first = next(it.pages)
    assert it.next_page_token
    rest = gcs.list_blobs(bucket, prefix="page/", page_token=it.next_page_token)
    assert [b.name for b in first] + [b.name for b in rest] == names


def test_prefix_and_delimiter(gcs, bucket):
    _fill(bucket, "tree/", ["a", "d1/x", "d1/y", "d2/z", "b"])
    it = gcs.list_blobs(bucket, prefix="tree/", delimiter="/")
    assert [b.name for b in it] == ["tree/a", "tree/b"]
    assert it.prefixes == {"tree/d1/", "tree/d2/"}


def test_prefixes_paginate_with_objects(gcs, bucket):
    _fill(bucket, "pp/", ["a/1", "b/1", "c", "d/1", "e"])
    it = gcs.list_blobs(bucket, prefix="pp/", delimiter="/", page_size=2)
    names, prefixes = [], set()
    for page in it.pages:
        names += [b.name for b in page]
        prefixes |= set(page.prefixes)
    assert names == ["pp/c", "pp/e"] and prefixes == {"pp/a/", "pp/b/", "pp/d/"}


def test_start_and_end_offset(gcs, bucket):
    _fill(bucket, "off/", ["a", "b", "c", "d", "e"])
    got = [b.name for b in gcs.list_blobs(bucket, prefix="off/", start_offset="off/b", end_offset="off/d")]
    assert got == ["off/b", "off/c"]  # start inclusive, end exclusive


def test_ranged_reads(bucket):
    blob = bucket.blob("range/ten")
    blob.upload_from_string(b"0123456789")
    assert blob.download_as_bytes(start=2, end=5) == b"2345"  # end inclusive
    assert blob.download_as_bytes(start=7) == b"789"
    assert blob.download_as_bytes(start=-3) == b"789"  # bytes=-3: the last 3 bytes
    assert blob.download_as_bytes(start=8, end=100) == b"89"  # clamped


def test_range_past_the_end_is_416(bucket):
    blob = bucket.blob("range/short")
    blob.upload_from_string(b"0123456789")
    with pytest.raises(gexc.RequestRangeNotSatisfiable):
        blob.download_as_bytes(start=10)


def test_generations_and_preconditions(bucket):
    blob = bucket.blob("gen/obj")
    blob.upload_from_string(b"one", if_generation_match=0)
    g1 = blob.generation
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("gen/obj").upload_from_string(b"x", if_generation_match=0)
    blob.upload_from_string(b"two", if_generation_match=g1)
    g2 = blob.generation
    assert g2 != g1 and bucket.get_blob("gen/obj").generation == g2
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("gen/obj").upload_from_string(b"x", if_generation_match=g1)
    assert bucket.blob("gen/obj", generation=g2).download_as_bytes() == b"two"
    with pytest.raises(gexc.NotFound):  # no versioning: the replaced generation is gone
        bucket.blob("gen/obj", generation=g1).download_as_bytes()
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("gen/obj").delete(if_generation_match=g1)
    bucket.blob("gen/obj").delete(if_generation_match=g2)
    assert bucket.get_blob("gen/obj") is None


def test_metageneration_match(bucket):
    blob = bucket.blob("gen/meta")
    blob.upload_from_string(b"m")
    assert blob.metageneration == 1
    blob.metadata = {"k": "v"}
    blob.patch(if_metageneration_match=1)
    assert blob.metageneration == 2 and blob.metadata == {"k": "v"}
    blob.metadata = {"k": "w"}
    with pytest.raises(gexc.PreconditionFailed):
        blob.patch(if_metageneration_match=1)


def test_not_found_messages(gcs, bucket):
    with pytest.raises(gexc.NotFound) as e:
        bucket.blob("missing/obj").download_as_bytes()
    assert f"No such object: {bucket.name}/missing/obj" in str(e.value)
    with pytest.raises(gexc.NotFound) as e:
        bucket.blob("missing/obj").reload()
    assert f"No such object: {bucket.name}/missing/obj" in str(e.value)
    with pytest.raises(gexc.NotFound) as e:
        gcs.get_bucket(f"nope-{uuid.uuid4().hex[:8]}")
    assert "The specified bucket does not exist." in str(e.value)


def test_gzip_decompressive_transcoding(storage_url, bucket, auth):
    plain = b"hello transcoding " * 100
    blob = bucket.blob("gz/text.txt")
    blob.content_encoding = "gzip"
    blob.upload_from_string(gzip.compress(plain), content_type="text/plain")
    assert blob.download_as_bytes() == plain
    url = f"{storage_url}/download/storage/v1/b/{bucket.name}/o/gz%2Ftext.txt?alt=media"
    r = requests.get(url, headers={"Accept-Encoding": "identity", **auth})
    assert r.status_code == 200 and r.content == plain and "gzip" not in r.headers.get("Content-Encoding", "")
    r = requests.get(url, headers={"Accept-Encoding": "gzip", **auth}, stream=True)
    assert r.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(r.raw.read()) == plain  # served as stored


def test_delete_answers_204(storage_url, bucket, auth):
    bucket.blob("del/x").upload_from_string(b"x")
    r = requests.delete(f"{storage_url}/storage/v1/b/{bucket.name}/o/del%2Fx", headers=auth)
    assert r.status_code == 204 and r.content == b""
    with pytest.raises(gexc.NotFound):
        bucket.blob("del/x").delete()


def test_copy_and_rewrite(gcs, bucket):
    src = bucket.blob("cp/src")
    src.metadata = {"a": "1"}
    src.upload_from_string(b"payload", content_type="text/plain")
    copied = bucket.copy_blob(src, bucket, "cp/copy")
    assert copied.download_as_bytes() == b"payload" and copied.content_type == "text/plain"
    dst = bucket.blob("cp/rewritten")
    token, done, total = dst.rewrite(src)
    while token is not None:
        token, done, total = dst.rewrite(src, token=token)
    assert (done, total) == (7, 7) and dst.download_as_bytes() == b"payload"
    assert bucket.get_blob("cp/rewritten").metadata == {"a": "1"}


def test_compose(bucket):
    parts = []
    for i in range(3):
        b = bucket.blob(f"compose/p{i}")
        b.upload_from_string(f"part{i};".encode())
        parts.append(b)
    out = bucket.blob("compose/out")
    out.compose(parts)
    assert out.download_as_bytes() == b"part0;part1;part2;"
    assert bucket.get_blob("compose/out").component_count == 3
    out.compose([out, parts[0]])  # onto itself (an existing destination)
    assert out.download_as_bytes() == b"part0;part1;part2;part0;"


def test_move(bucket):
    bucket.blob("mv/src").upload_from_string(b"moving")
    bucket.move_blob(bucket.blob("mv/src"), "mv/dst")
    assert bucket.blob("mv/dst").download_as_bytes() == b"moving"
    assert bucket.get_blob("mv/src") is None


def test_xml_multipart_upload(bucket, tmp_path):
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB: parts of 5, 5, 1 MiB
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    blob = bucket.blob("xml/big.bin")
    transfer_manager.upload_chunks_concurrently(str(path), blob, chunk_size=5 * 1024 * 1024,
                                                worker_type=transfer_manager.THREAD, max_workers=3)
    assert bucket.get_blob("xml/big.bin").size == len(data)
    assert blob.download_as_bytes() == data


def test_resumable_upload(bucket):
    blob = bucket.blob("resumable/obj", chunk_size=256 * 1024)
    data = b"r" * (600 * 1024)
    blob.upload_from_string(data)
    assert bucket.get_blob("resumable/obj").size == len(data)
    assert blob.download_as_bytes() == data


def test_a_caller_without_the_access_token_is_refused(storage_url, bucket, auth):
    """Only the user who started the local cloud reaches it (GCS answers 401 to anonymous
    callers of a private bucket)."""
    if not auth:
        pytest.skip("the server under test has no access token")
    r = requests.get(f"{storage_url}/storage/v1/b/{bucket.name}/o")
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    r = requests.get(f"{storage_url}/storage/v1/b/{bucket.name}/o", headers={"Authorization": "Bearer ya29.guess"})
    assert r.status_code == 401
    assert requests.get(f"{storage_url}/storage/v1/b/{bucket.name}/o", headers=auth).status_code == 200
