"""`curate dedupe` on plain folders and workspaces: groups, keep policy, moves, decisions, cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.record import DUPLICATE
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import hash_file
from curate.stages.dedupe.move import undo_moves
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, png, write
from tests.conftest import tree_state

FAST = DedupeConfig(verify=False, workers=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))


def build_folder(root: Path) -> Path:
    """astronaut: original PNG, byte copy, lossless re-encode, half-size JPEG;
    rocket: a cut-out with transparency and the same on white;
    coffee: original and a mirrored copy; chelsea: alone."""
    astro = photo("astronaut").convert("RGB")
    write(root / "a/astro.png", png(astro))
    write(root / "a/astro.png.txt", "1girl\nspacesuit\n")
    write(root / "b/astro.png", png(astro))  # same bytes, same name, other folder
    write(root / "b/astro_again.png", png(astro, compress_level=1))  # same pixels, other bytes
    write(root / "c/astro_small.jpg", jpeg(astro.resize((256, 256)), quality=85))
    write(root / "c/astro_small.txt", "astronaut, small\n")
    rocket = photo("rocket").convert("RGB")
    cutout = rocket.convert("RGBA")
    alpha = Image.new("L", rocket.size, 255)
    alpha.paste(0, (0, 0, rocket.width // 3, rocket.height))  # background removed on the left
    cutout.putalpha(alpha)
    white = rocket.copy()
    white.paste((255, 255, 255), (0, 0, rocket.width // 3, rocket.height))
    # transparent pixels keep their old colours: hashed as-is they would not match the white copy
    write(root / "d/rocket_cutout.png", png(cutout))
    write(root / "d/rocket_on_white.jpg", jpeg(white, quality=92))
    coffee = photo("coffee").convert("RGB")
    write(root / "coffee.jpg", jpeg(coffee))
    write(root / "coffee_mirror.jpg", jpeg(coffee.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    write(root / "chelsea.jpg", jpeg(photo("chelsea").convert("RGB")))
    write(root / "notes.md", "not an image")
    return root


def groups_by_name(result) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    return {result.items[g.keeper].shown: {result.items[i].shown for i in g.members} for g in result.groups}


def test_folder_report_groups_and_keeps_largest(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    before = tree_state(root)
    result = dedupe(root, FAST)
    assert tree_state(root) == before  # report only: nothing touched
    groups = groups_by_name(result)
    astro = {"a/astro.png", "b/astro.png", "b/astro_again.png", "c/astro_small.jpg"}
    assert len(groups) == 2 and groups["b/astro_again.png"] == astro
    assert {"d/rocket_cutout.png", "d/rocket_on_white.jpg"} in groups.values()
    first = dedupe(root, DedupeConfig(verify=False, workers=1, keep="first"))
    relations = {first.items[m.index].shown: m.relation for g in first.groups for m in g.duplicates}
    assert relations["b/astro.png"] == "same-file"
    assert relations["b/astro_again.png"] == "same-pixels"
    assert relations["c/astro_small.jpg"] == "near"
    assert "coffee_mirror.jpg" not in relations and "chelsea.jpg" not in relations
    # equal pixels: the larger file wins (the faster-compressed PNG)
    assert result.items[result.groups[0].keeper].shown == "b/astro_again.png"
    assert [i for i in result.ignored if i[0].endswith("notes.md")]


@pytest.mark.parametrize("flip", [False, True])
def test_flip_invariant_groups_mirrored_copies(tmp_path: Path, flip: bool) -> None:
    root = build_folder(tmp_path / "raw")
    result = dedupe(root, DedupeConfig(verify=False, workers=1, flip_invariant=flip))
    assert ("coffee.jpg" in groups_by_name(result)) == flip
    if flip:
        assert groups_by_name(result)["coffee.jpg"] == {"coffee.jpg", "coffee_mirror.jpg"}
    # each duplicate's distance to its keeper: the least over either side mirrored
    for g in result.groups:
        kept = hash_file(result.items[g.keeper].path, flip_invariant=True)
        for m in g.duplicates:
            dup = hash_file(result.items[m.index].path, flip_invariant=True)
            plain = [(dup.value, kept.value)]
            sides = [*plain, (dup.mirrored, kept.value), (dup.value, kept.mirrored)] if flip else plain
            assert m.distance == min(bin(a ^ b).count("1") for a, b in sides)


@pytest.mark.parametrize(("policy", "kept"), [("largest", "b/astro_again.png"), ("first", "a/astro.png"),
                                              ("newest", "c/astro_small.jpg")])
def test_keep_policies(tmp_path: Path, policy: str, kept: str) -> None:
    root = build_folder(tmp_path / "raw")
    for i, name in enumerate(["a/astro.png", "b/astro.png", "b/astro_again.png", "c/astro_small.jpg"]):
        os.utime(root / name, (1_700_000_000 + i, 1_700_000_000 + i))
    result = dedupe(root, DedupeConfig(verify=False, workers=1, keep=policy))  # type: ignore[arg-type]
    assert kept in groups_by_name(result)


def test_keep_txt_always_wins(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    (root / "keep.txt").write_text("# mine\nc/astro_small.jpg\nmissing.png\n")
    result = dedupe(root, FAST)
    group = groups_by_name(result)
    assert "c/astro_small.jpg" in group and "a/astro.png" not in group
    assert any("missing.png" in reason for _f, reason in result.warnings)


def test_similarity_alias_and_threshold_bounds() -> None:
    assert DedupeConfig(similarity=90).effective_threshold() == 6
    assert DedupeConfig(similarity=100).effective_threshold() == 0
    assert DedupeConfig().effective_threshold() == 2  # feature matching confirms the rest
    assert DedupeConfig(verify=False).effective_threshold() == 10
    assert DedupeConfig(threshold=3, similarity=50).effective_threshold() == 3
    assert DedupeConfig(hash_size=16, verify=False).effective_threshold() == 40
    with pytest.raises(Exception, match=r"0\.\.64"):
        DedupeConfig(threshold=65).effective_threshold()


def test_move_to_and_undo_restore_everything(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    before = tree_state(root)
    dest = tmp_path / "dups"
    dry = dedupe(root, FAST, move_to=dest, dry_run=True)
    assert dry.moved and not dest.exists() and tree_state(root) == before
    result = dedupe(root, FAST, move_to=dest)
    moved = {Path(a).relative_to(root).as_posix() for a, _b in result.moved}
    assert moved == {"a/astro.png", "a/astro.png.txt", "b/astro.png", "c/astro_small.jpg",
                     "c/astro_small.txt", "d/rocket_on_white.jpg"}
    assert (dest / "c/astro_small.txt").read_text() == "astronaut, small\n"  # sidecar went along
    assert (dest / "a/astro.png.txt").read_text() == "1girl\nspacesuit\n"
    assert (root / "b/astro_again.png").exists()  # the kept image stays
    record = json.loads((dest / "dedupe.json").read_text())
    assert {Path(m["source"]).relative_to(root).as_posix() for m in record["moves"]} == moved
    assert groups_by_name(dedupe(root, FAST)) == {}  # nothing left to find; dest not scanned
    restored, refused = undo_moves(dest / "dedupe.json")
    assert len(restored) == len(moved) and not refused
    after = tree_state(root)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}


def test_move_never_overwrites(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    dest = tmp_path / "dups"
    write(dest / "b/astro.png", b"someone else's file")
    result = dedupe(root, FAST, move_to=dest)
    assert (dest / "b/astro.png").read_bytes() == b"someone else's file"
    assert (root / "b/astro.png").exists()
    assert any("already exists" in reason for _f, reason in result.skipped)


def test_folder_hash_cache_skips_unchanged_files(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    assert dedupe(root, FAST).hashed == 9
    assert dedupe(root, FAST).hashed == 0
    write(root / "new.jpg", jpeg(photo("moon").convert("RGB")))
    assert dedupe(root, FAST).hashed == 1
    full = dedupe(root, DedupeConfig(verify=False, workers=1, decode="full"))
    assert full.hashed == 10  # a different decode mode never reuses draft hashes


def test_bad_input_gives_clear_answers(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli, ["dedupe", str(empty)])
    assert res.exit_code == 0 and "no images" in res.output
    write(tmp_path / "one/a.jpg", jpeg(photo("coffee").convert("RGB")))
    write(tmp_path / "one/broken.jpg", b"\xff\xd8\xff\xe0 truncated")
    write(tmp_path / "one/noise.png", bytes(range(256)) * 4)
    res = runner.invoke(cli, ["dedupe", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    assert "only one image" in res.output and "broken.jpg" in res.output
    assert "noise.png: not a readable image (unknown or damaged image format)" in res.output
    res = runner.invoke(cli, ["dedupe", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not exist" in res.output


def test_cli_json_and_html_report(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "raw")
    report = tmp_path / "dedupe.html"
    res = CliRunner().invoke(cli, ["dedupe", str(root), "--no-verify", "--json", "--report", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["counts"]["groups"] == 2 and data["counts"]["duplicates"] == 4
    page = report.read_text()
    assert page.count('class="group"') == 2 and page.count("data:image/") == 6
    assert page.count(">KEPT<") == 2 and "b/astro_again.png" in page


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    import_sources(ws, [build_folder(tmp_path / "raw")], ImportConfig(workers=1))
    return ws


def test_workspace_marks_duplicates_and_later_stages_skip_them(workspace: Path) -> None:
    result = dedupe(workspace, FAST)
    # b/astro.png is a byte copy, stored once at import: 8 images, 2 groups, 3 duplicates
    assert len(result.items) == 8 and result.duplicates == 3
    with Workspace.open(workspace) as ws:
        dups = ws.manifest.decisions(stage="dedupe", verdict=DUPLICATE)
        assert len(dups) == 3 and all(d["reason"].startswith("duplicate-of ") for d in dups)
        assert len(ws.active_records()) == 5
        assert sum(r.excluded for r in ws.records()) == 3


def test_workspace_rerun_replaces_decisions_and_dry_run_writes_nothing(workspace: Path) -> None:
    first = dedupe(workspace, FAST)
    assert first.hashed == 8
    again = dedupe(workspace, DedupeConfig(verify=False, workers=1, threshold=0))
    assert again.hashed == 0  # hashes come from the manifest
    with Workspace.open(workspace) as ws:
        assert len(ws.manifest.decisions(stage="dedupe", verdict=DUPLICATE)) == again.duplicates
        assert again.duplicates < first.duplicates
        total = ws.manifest.count("decisions")
    dedupe(workspace, FAST, dry_run=True)
    with Workspace.open(workspace) as ws:
        assert ws.manifest.count("decisions") == total


def test_a_rerun_keeps_the_rows_of_unchanged_decisions_and_drops_superseded_ones(workspace: Path) -> None:
    """Each run decides about every image again: writing them all anew took most of an unchanged
    re-run's time and grew the table by a run's decisions per run, for rows no query reads."""
    def rows() -> dict[int, tuple[str, str, str]]:
        with Workspace.open(workspace) as ws:
            return {r["id"]: (r["image_sha256"], r["verdict"], r["reason"])
                    for r in ws.manifest.rows("SELECT * FROM decisions WHERE stage = 'dedupe'")}

    def current() -> dict[int, tuple[str, str, str]]:
        with Workspace.open(workspace) as ws:
            return {r["id"]: (r["image_sha256"], r["verdict"], r["reason"])
                    for r in ws.manifest.decisions(stage="dedupe")}

    dedupe(workspace, FAST)
    first = rows()
    assert len(first) == 5 and current() == first  # 2 kept, 3 duplicates
    dedupe(workspace, FAST)
    assert rows() == first and current() == first  # the same rows: nothing written again
    dedupe(workspace, DedupeConfig(verify=False, workers=1, threshold=0))  # fewer duplicates
    fewer = rows()
    assert fewer == current() and len(fewer) < len(first)
    assert fewer.items() <= first.items()  # what it decided again kept its row
    dedupe(workspace, DedupeConfig(verify=False, workers=1, keep="first"))  # other keepers
    after = rows()
    assert after == current() and len(after) == len(first)
    assert set(after) - set(fewer) and set(after.values()) != set(first.values())


def test_workspace_items_are_made_when_asked_for_and_a_keep_list_sees_them_all(workspace: Path) -> None:
    from curate.stages.dedupe.scan import WorkspaceItems, scan_workspace

    with Workspace.open(workspace) as ws:  # items not yet made are read while it is open
        items = scan_workspace(ws, FAST).items
        assert isinstance(items, WorkspaceItems) and len(items) == 8 and not items.made
        assert items[-1] is items[7] and items[2:4] == [items[2], items[3]] and len(items.made) == 3
        with pytest.raises(IndexError):
            items[8]
        assert [i.order for i in items] == list(range(1, 9)) and len({i.sha256 for i in items}) == 8
    # keep.txt is matched against every image's names: a duplicate listed there stays
    first = dedupe(workspace, FAST)
    listed = first.items[first.groups[0].duplicates[0].index]
    (workspace / "keep.txt").write_text(listed.sha256 + "\n")
    again = dedupe(workspace, FAST)
    assert listed.sha256 not in {again.items[m.index].sha256 for g in again.groups for m in g.duplicates}
    assert listed.sha256 in {again.items[g.keeper].sha256 for g in again.groups}


def test_workspace_refuses_move_to(workspace: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["dedupe", str(workspace), "--move-to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "plain folders" in res.output


def test_undo_after_partial_move_is_safe(tmp_path: Path) -> None:
    """A run killed after writing its record but before some moves: undo restores what moved."""
    root = build_folder(tmp_path / "raw")
    before = tree_state(root)
    dest = tmp_path / "dups"
    dedupe(root, FAST, move_to=dest)
    shutil.move(dest / "b/astro.png", root / "b/astro.png")  # as if never moved
    restored, refused = undo_moves(dest / "dedupe.json")
    assert not refused and len(restored) == 5
    assert {k: v[0] for k, v in tree_state(root).items()} == {k: v[0] for k, v in before.items()}


def test_same_pixels_across_formats_and_exact_jpeg_rewraps(tmp_path: Path) -> None:
    """A PNG saved from a JPEG's pixels, and a JPEG with only its metadata changed, are the
    same picture as the JPEG: 'same-pixels', not merely near."""
    import io

    root = tmp_path / "raw"
    original = jpeg(photo("coffee").convert("RGB"), quality=88)
    write(root / "a.jpg", original)
    with Image.open(io.BytesIO(original)) as im:
        write(root / "b.png", png(im.convert("RGB")))
    write(root / "c.jpg", original[:2] + b"\xff\xfe\x00\x08comment" + original[2:])  # a COM segment
    write(root / "d.jpg", jpeg(photo("coffee").convert("RGB"), quality=70))
    result = dedupe(root, DedupeConfig(verify=False, workers=1, keep="first"))
    relations = {result.items[m.index].shown: m.relation for g in result.groups for m in g.duplicates}
    assert relations == {"b.png": "same-pixels", "c.jpg": "same-pixels", "d.jpg": "near"}


def test_a_workspace_rerun_decodes_no_image_twice_for_same_pixels(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pixel digests are remembered by content in the manifest: the re-run tells same-pixels
    from near without decoding, and says the same."""
    import io

    from curate.stages.dedupe import relation as relation_module

    root = tmp_path / "raw"
    original = jpeg(photo("coffee").convert("RGB"), quality=88)
    write(root / "a.jpg", original)
    with Image.open(io.BytesIO(original)) as im:
        write(root / "b.png", png(im.convert("RGB")))
    write(root / "c.jpg", original[:2] + b"\xff\xfe\x00\x08comment" + original[2:])
    write(root / "d.jpg", jpeg(photo("coffee").convert("RGB"), quality=70))
    ws = tmp_path / "ws"
    import_sources(ws, [root], ImportConfig(workers=1))
    decoded: list[str] = []
    real = relation_module.pixel_digest

    def spy(path: object, reduced: bool = False) -> str | None:
        decoded.append(str(path))
        return real.__wrapped__(path, reduced)  # past the in-process lru_cache

    monkeypatch.setattr(relation_module, "pixel_digest", spy)
    config = DedupeConfig(verify=False, workers=1, keep="first")

    def relations() -> list[str]:
        result = dedupe(ws, config)
        return sorted(m.relation for g in result.groups for m in g.duplicates)

    first = relations()
    assert first.count("same-pixels") == 2 and decoded
    decoded.clear()
    assert relations() == first and decoded == []
