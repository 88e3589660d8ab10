"""Sources at fsspec URLs: a scrape served over HTTP (as nginx serves a folder, with byte
ranges, and as `python -m http.server` does, without) and a file:// URL import exactly what the
same files import from disk, archives and shard tables included; bad files and server errors
are one-line skips; a re-import asks only for what changed."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import build_kohya
from tests.http_files import FileServer
from tests.snapshots import remote_site, same_as_disk

pytest.importorskip("aiohttp", reason="fsspec's HTTP backend: pip install -e .[dev]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return remote_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(params=[True, False], ids=["ranges", "no-ranges"])
def server(site: Path, request: pytest.FixtureRequest) -> Iterator[FileServer]:
    with FileServer(site, ranges=request.param) as srv:
        yield srv


def test_a_scrape_over_http_imports_as_from_disk(site: Path, server: FileServer, tmp_path: Path) -> None:
    url = f"{server.url}/scrapers"
    disk = import_sources(tmp_path / "disk", [site / "scrapers"], ImportConfig())
    remote = import_sources(tmp_path / "url", [url], ImportConfig())
    assert remote.counts == disk.counts
    assert remote.counts["imported"] >= 20 and remote.counts["skipped"] == 8
    assert [r for _, r in remote.skipped] == [r for _, r in disk.skipped]
    assert {f for f, _ in remote.skipped} >= {f"{url}/bad/truncated.jpg", f"{url}/archive.zip!/../escape.jpg"}
    same_as_disk(tmp_path / "url", tmp_path / "disk", url, site / "scrapers")
    db = sqlite3.connect(tmp_path / "url" / ".curate" / "manifest.sqlite")
    kohya = db.execute("SELECT metadata FROM origins WHERE source_path LIKE ?",
                       ("%10_sks cat/chelsea_1.png",)).fetchone()
    assert json.loads(kohya[0])["kohya"]["repeats"] == 10  # the decoded folder name, not 10_sks%20cat
    captions = {p: c for p, c in db.execute(
        "SELECT o.source_path, c.text FROM origins o JOIN captions c ON c.image_sha256 = o.image_sha256")}
    assert captions[f"{url}/img2dataset/webdataset/00001.tar!/000010000.jpg"] == \
        "a photograph of a retina, in black and white, taken indoors"  # from the tar in the listing
    tar_reads = [h for m, p, h in server.requests if m == "GET" and p.endswith("00001.tar")]
    if server.ranges:  # the shard is read by ranges, never downloaded whole
        assert tar_reads and all(h and h.startswith("bytes=") for h in tar_reads)


def test_a_file_url_is_the_folder(site: Path, tmp_path: Path) -> None:
    url = (site / "scrapers").as_uri()
    disk = import_sources(tmp_path / "disk", [site / "scrapers"], ImportConfig())
    remote = import_sources(tmp_path / "url", [url], ImportConfig())
    assert remote.counts == disk.counts
    same_as_disk(tmp_path / "url", tmp_path / "disk", url, site / "scrapers")


def test_a_reimport_reads_nothing_and_an_edited_sidecar_comes_back(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build_kohya(site)
    with FileServer(site) as server:
        url = f"{server.url}/kohya"
        first = import_sources(tmp_path / "ws", [url], ImportConfig())
        assert first.counts["imported"] == 3
        server.requests.clear()
        again = import_sources(tmp_path / "ws", [url], ImportConfig())
        assert again.nothing_new and again.counts["unchanged"] == 3
        assert not [r for r in server.requests if r[0] == "GET" and not r[1].endswith("/") and "." in r[1]]
        sidecar = site / "kohya" / "img" / "10_sks cat" / "chelsea_1.txt"
        sidecar.write_text("sks cat, cat, night\n")
        os.utime(sidecar, (os.path.getmtime(sidecar) + 5,) * 2)
        third = import_sources(tmp_path / "ws", [url], ImportConfig())
    assert third.counts["imported"] == 1 and third.counts["unchanged"] == 2
    db = sqlite3.connect(tmp_path / "ws" / ".curate" / "manifest.sqlite")
    assert ("night",) in db.execute("SELECT tag FROM tags").fetchall()


def test_a_server_error_on_one_file_is_a_one_line_skip(site: Path, tmp_path: Path) -> None:
    with FileServer(site) as server:
        server.fail["scrapers/imgbrd-grabber/a75b2e6c.jpg"] = 503
        result = import_sources(tmp_path / "ws", [f"{server.url}/scrapers"], ImportConfig())
    reasons = dict(result.skipped)
    reason = reasons[f"{server.url}/scrapers/imgbrd-grabber/a75b2e6c.jpg"]
    # fsspec's HTTP backend reports any status of its HEAD request as "not found"
    assert reason.startswith("cannot read (the server has no such file or answered with an error)")
    assert "\n" not in reason
    assert result.counts["imported"] >= 19  # the rest came in


def test_what_cannot_be_reached_is_said_in_one_line(site: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    with FileServer(site) as server:
        missing = runner.invoke(cli, ["import", f"{server.url}/nothing-here", "--into", str(tmp_path / "ws")])
    assert missing.exit_code != 0 and "no such file or folder" in missing.output
    closed = runner.invoke(cli, ["import", "http://127.0.0.1:9/raw", "--into", str(tmp_path / "ws")])
    assert closed.exit_code != 0 and "cannot reach it" in closed.output
    for result in (missing, closed):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()


def test_a_protocol_without_its_backend_names_the_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("gcsfs") is not None:  # not in curate's dependencies or dev
        pytest.skip("gcsfs is installed here")
    with pytest.raises(CurateError, match=r"gs://bucket/scrape: .*gcsfs.*install it on every machine"):
        import_sources(tmp_path / "ws", ["gs://bucket/scrape"], ImportConfig())


def import_counts(output: str) -> dict[str, int]:
    (stage,) = [s for s in json.loads(output)["stages"] if s["stage"] == "import"]
    return stage["result"]["counts"]  # type: ignore[no-any-return]


def test_curate_run_takes_a_url_and_imports_it_again_from_the_record(site: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "ws"
    with FileServer(site) as server:
        url = f"{server.url}/scrapers/gallery-dl"
        first = runner.invoke(cli, ["run", str(ws), "--sources", url, "--stages", "import", "--json"])
        assert first.exit_code == 0, first.output
        assert import_counts(first.output)["imported"] == 4
        again = runner.invoke(cli, ["run", str(ws), "--stages", "import", "--json"])  # sources recorded
        assert again.exit_code == 0, again.output
        assert import_counts(again.output)["unchanged"] == 4


def test_an_archive_from_a_server_without_ranges_is_copied_only_up_to_a_cap(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Range support a zip must be copied to a temporary file to be read; an answer
    past the cap (an endless one) is a one-line skip, not a full disk."""
    from curate.stages.ingest import remote

    monkeypatch.setattr(remote, "SPOOL_MAX", 1_000)
    with FileServer(site, ranges=False) as server:
        result = import_sources(tmp_path / "ws", [f"{server.url}/scrapers"], ImportConfig())
    reasons = dict(result.skipped)
    for archive in ("archive.zip", "img2dataset/webdataset/00001.tar"):
        assert "without byte ranges: download the archive and import the file" in \
            reasons[f"{server.url}/scrapers/{archive}"]
    assert result.counts["imported"] == 18  # everything else came in (22 less 2 x 2 archived)


@pytest.mark.parametrize(("source", "url"), [
    ("s3://bucket/scrape", True), ("https://host/raw", True), ("file:///mnt/raw", True),
    ("zip://*::s3://bucket/a.zip", True), ("gs://b", True),
    ("C:\\raw", False), ("C:/raw", False), ("a::b", False), ("./raw", False), ("/mnt/raw", False),
])
def test_what_counts_as_a_url(source: str, url: bool) -> None:
    from curate.paths import is_url

    assert is_url(source) is url
