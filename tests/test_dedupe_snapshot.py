"""The workspace snapshot (curate/stages/dedupe/snapshot.py): a re-run reads only the images
imported since the last one, and gives the groups a run without the snapshot gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageOps

from curate.manifest import Manifest
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import hash_key
from curate.stages.dedupe.index import INDEX_NAME
from curate.stages.dedupe.run import DedupeResult, dedupe
from curate.stages.dedupe.snapshot import SNAPSHOT_NAME, Snapshot
from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, write

CONFIG = DedupeConfig(verify=False, workers=1)


def shoot(folder: Path, names: tuple[str, ...], quality: int = 85) -> Path:
    """Each photo, and a half-size copy of it (a near duplicate)."""
    for k, name in enumerate(names):
        picture = photo(name).convert("RGB")
        write(folder / f"{name}.jpg", jpeg(picture, quality=quality))
        half = picture.resize((picture.width // 2, picture.height // 2))
        write(folder / f"{name}_small.jpg", jpeg(half, quality=70 + k))
    return folder


def groups(result: DedupeResult) -> list[tuple[str, list[tuple[str, str, int]]]]:
    return [(result.items[g.keeper].shown, [(result.items[m.index].shown, m.relation, m.distance)
                                            for m in g.duplicates]) for g in result.groups]


def from_scratch(ws: Path, config: DedupeConfig) -> DedupeResult:
    """The same run with neither the snapshot nor the index (in a copy: both stay as they are)."""
    copy = ws.with_name(ws.name + "-scratch")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ws, copy)
    for name in (SNAPSHOT_NAME, INDEX_NAME):
        (copy / ".curate" / name).unlink(missing_ok=True)
    return dedupe(copy, config, dry_run=True)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    import_sources(ws, [shoot(tmp_path / "raw", ("astronaut", "coffee", "chelsea"))], ImportConfig(workers=1))
    return ws


def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The `after` row of every read of the image rows (0: every image)."""
    seen: list[int] = []
    original = Manifest.image_rows

    def spy(self: Manifest, after: int = 0):  # type: ignore[no-untyped-def]
        seen.append(after)
        return original(self, after)

    monkeypatch.setattr(Manifest, "image_rows", spy)
    return seen


def test_a_rerun_reads_only_the_new_images_and_groups_as_from_scratch(
        ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = rows_read(monkeypatch)
    first = dedupe(ws, CONFIG)
    snapshot = ws / ".curate" / SNAPSHOT_NAME
    assert seen == [0] and snapshot.is_file() and first.duplicates == 3
    with Workspace.open(ws) as w:
        kept = Snapshot.load(snapshot, first.hash_key, False, w.manifest)
        assert kept is not None and kept.count == 6 and kept.last_rowid == 6 and len(kept.rowids) == 6
    import_sources(ws, [shoot(tmp_path / "more", ("rocket", "camera"))], ImportConfig(workers=1))
    # a copy of a known photo, imported later: joins a group made from the snapshot's images
    write(tmp_path / "again" / "coffee_again.jpg", jpeg(photo("coffee").convert("RGB"), quality=60))
    import_sources(ws, [tmp_path / "again"], ImportConfig(workers=1))
    seen.clear()
    again = dedupe(ws, CONFIG)
    assert seen == [6] and again.hashed == 5 and len(again.items) == 11
    assert groups(again) == groups(from_scratch(ws, CONFIG)) and again.duplicates == 6
    assert "coffee_again.jpg" in str(groups(again))
    seen.clear()
    unchanged = dedupe(ws, CONFIG)
    assert seen == [11] and unchanged.hashed == 0 and groups(unchanged) == groups(again)


def test_a_snapshot_of_another_manifest_or_a_torn_one_is_not_trusted(ws: Path, tmp_path: Path) -> None:
    dedupe(ws, CONFIG)
    other = tmp_path / "other"  # the same three photos, imported in another order, fewer copies
    import_sources(other, [shoot(tmp_path / "raw2", ("rocket", "coffee", "astronaut", "camera"))],
                   ImportConfig(workers=1))
    dedupe(other, CONFIG)
    shutil.copy(ws / ".curate" / SNAPSHOT_NAME, other / ".curate" / SNAPSHOT_NAME)
    with Workspace.open(other) as w:
        key = hash_key(CONFIG.hash, CONFIG.hash_size, CONFIG.decode)
        assert Snapshot.load(other / ".curate" / SNAPSHOT_NAME, key, False, w.manifest) is None
    assert groups(dedupe(other, CONFIG)) == groups(from_scratch(other, CONFIG))
    path = ws / ".curate" / SNAPSHOT_NAME
    with Workspace.open(ws) as w:  # arrays that disagree (a file from elsewhere): not used
        kept = Snapshot.load(path, key, False, w.manifest)
        assert kept is not None
        kept.words = kept.words[:-1]
        kept.save(path)
        assert Snapshot.load(path, key, False, w.manifest) is None
    assert groups(dedupe(ws, CONFIG)) == groups(from_scratch(ws, CONFIG))
    path.write_bytes(path.read_bytes()[:200])  # torn (a write is atomic; a disk is not)
    result = dedupe(ws, CONFIG)
    assert groups(result) == groups(from_scratch(ws, CONFIG)) and result.duplicates == 3
    with Workspace.open(ws) as w:
        assert Snapshot.load(path, result.hash_key, False, w.manifest) is not None  # written anew


def test_hash_settings_and_mirroring_change_what_it_holds(ws: Path, tmp_path: Path) -> None:
    dedupe(ws, CONFIG)
    mirror = ImageOps.mirror(photo("coffee").convert("RGB"))
    write(tmp_path / "flip" / "coffee_mirrored.jpg", jpeg(mirror))
    import_sources(ws, [tmp_path / "flip"], ImportConfig(workers=1))
    for config in (DedupeConfig(verify=False, workers=1, flip_invariant=True),
                   DedupeConfig(verify=False, workers=1, hash_size=16),
                   CONFIG):
        result = dedupe(ws, config)
        assert groups(result) == groups(from_scratch(ws, config))
        with Workspace.open(ws) as w:
            kept = Snapshot.load(ws / ".curate" / SNAPSHOT_NAME, result.hash_key,
                                 config.flip_invariant, w.manifest)
            assert kept is not None and kept.words.shape == (7, 1 if config.hash_size == 8 else 4)
            assert kept.flip == config.flip_invariant
    flipped = dedupe(ws, DedupeConfig(verify=False, workers=1, flip_invariant=True))
    assert "coffee_mirrored.jpg" in str(groups(flipped))
    assert "coffee_mirrored.jpg" not in str(groups(dedupe(ws, CONFIG)))


def test_an_image_that_cannot_be_hashed_is_tried_and_reported_on_every_run(ws: Path) -> None:
    dedupe(ws, CONFIG)
    with Workspace.open(ws) as w:
        row = w.manifest.image_rows()[2]
        name = w.manifest.origin_aliases()[row.sha256][0]
    stored = ws / row.stored_path
    original = stored.read_bytes()
    stored.chmod(0o644)
    stored.write_bytes(original[:300])  # a stored copy damaged on disk
    with Workspace.open(ws) as w:  # its hash is forgotten, as a new hash space would have none
        w.manifest.db.execute("DELETE FROM hashes WHERE image_sha256 = ?", (row.sha256,))
        w.manifest.db.commit()
    (ws / ".curate" / SNAPSHOT_NAME).unlink()
    for _ in range(2):
        result = dedupe(ws, CONFIG)
        assert len(result.items) == 5 and len(result.skipped) == 1
        assert result.skipped[0][0] == name and "cannot decode" in result.skipped[0][1]
    with Workspace.open(ws) as w:
        kept = Snapshot.load(ws / ".curate" / SNAPSHOT_NAME, result.hash_key, False, w.manifest)
        assert kept is not None and kept.failed.tolist() == [row.rowid]
    stored.write_bytes(original)  # repaired: hashed on the next run, from the failed list
    mended = dedupe(ws, CONFIG)
    assert len(mended.items) == 6 and not mended.skipped and mended.hashed == 1
    with Workspace.open(ws) as w:
        kept = Snapshot.load(ws / ".curate" / SNAPSHOT_NAME, mended.hash_key, False, w.manifest)
        assert kept is not None and not len(kept.failed) and np.all(np.diff(kept.rowids) > 0)


def test_a_dry_run_writes_no_snapshot(ws: Path) -> None:
    dedupe(ws, CONFIG, dry_run=True)
    assert not (ws / ".curate" / SNAPSHOT_NAME).exists()
