"""`curate import s3://bucket/prefix` against a real S3 API: moto's server (the HTTP API of S3,
run in a thread here) read through s3fs, as a user's bucket is read. The endpoint and keys come
from the environment, as they do for users of MinIO, R2 and other S3-compatible stores
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), so nothing here is curate's own S3 code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from curate.stages.ingest import ImportConfig, import_sources
from tests.snapshots import remote_site, same_as_disk

moto_server = pytest.importorskip("moto.server", reason="the S3 test server: pip install -e .[dev]")
s3fs = pytest.importorskip("s3fs", reason="fsspec's S3 backend: pip install -e .[dev]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return remote_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def bucket(site: Path) -> Iterator[s3fs.S3FileSystem]:
    """A bucket `scrapes` holding the site's scrapers folder under `scrapers/` (one server for
    the module: moto keeps its buckets in the process, whatever server serves them)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps one per settings: not another server's
        fs = s3fs.S3FileSystem()
        fs.mkdir("scrapes")
        fs.put(str(site / "scrapers"), "scrapes/scrapers", recursive=True)
        try:
            yield fs
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


def test_a_scrape_in_a_bucket_imports_as_from_disk(site: Path, bucket: s3fs.S3FileSystem,
                                                   tmp_path: Path) -> None:
    url = "s3://scrapes/scrapers"
    disk = import_sources(tmp_path / "disk", [site / "scrapers"], ImportConfig())
    remote = import_sources(tmp_path / "s3", [url], ImportConfig())
    assert remote.counts == disk.counts and remote.counts["imported"] >= 20
    assert [r for _, r in remote.skipped] == [r for _, r in disk.skipped]
    assert f"{url}/bad/truncated.jpg" in {f for f, _ in remote.skipped}
    same_as_disk(tmp_path / "s3", tmp_path / "disk", url, site / "scrapers")
    # objects carry an ETag: a re-import compares it and reads nothing; a changed object comes back
    again = import_sources(tmp_path / "s3", [url], ImportConfig())
    assert again.nothing_new
    bucket.pipe("scrapes/scrapers/kohya/img/10_sks cat/chelsea_1.txt", b"sks cat, cat, night\n")
    third = import_sources(tmp_path / "s3", [url], ImportConfig())
    assert third.counts["imported"] == 1


def test_a_missing_bucket_is_one_line(bucket: s3fs.S3FileSystem, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from curate.cli import cli

    result = CliRunner().invoke(cli, ["import", "s3://no-such-bucket/scrape", "--into", str(tmp_path / "ws")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "s3://no-such-bucket/scrape" in result.output
