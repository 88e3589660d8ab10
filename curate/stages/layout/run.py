"""`curate layout WS --out DATASET`: the one entry point."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.folder import walk_images
from curate.paths import check_name
from curate.record import Record
from curate.stages.layout.config import LayoutConfig
from curate.stages.layout.edits import HandEdit, adopt, find_hand_edits, keep_hand_edits
from curate.stages.layout.plan import (
    Concept,
    assign_concepts,
    kohya_concepts,
    merge_folders,
    read_concepts,
    set_repeats,
)
from curate.stages.layout.write import Entry, Subset, check_target, unique_stems, write_dataset
from curate.tagging.captions import format_caption
from curate.tagging.compile import CaptionFormat, Compiled, compile_caption, subset_captions
from curate.workspace import Workspace

EXTS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


@dataclass
class LayoutResult:
    out: str
    dry_run: bool
    plan: list[dict[str, Any]] = field(default_factory=list)  # one row per subset
    total_steps: int = 0
    epochs: int = 0
    batch_size: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    kept_edits: list[HandEdit] = field(default_factory=list)  # captions edited by hand, kept
    conflicts: list[tuple[HandEdit, str]] = field(default_factory=list)  # ... with what curate had

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "dry_run": self.dry_run, "subsets": self.plan,
                "total_steps": self.total_steps, "epochs": self.epochs, "batch_size": self.batch_size,
                "warnings": [{"file": f, "reason": r} for f, r in self.warnings],
                "kept_edits": [{"file": e.file, "caption": e.text} for e in self.kept_edits],
                "conflicts": [{"file": e.file, "kept": e.text, "curate_had": ours}
                              for e, ours in self.conflicts]}


def layout(workspace: Path, out: Path, config: LayoutConfig, *, captions: CaptionFormat | None = None,
           dry_run: bool = False) -> LayoutResult:
    """Write the workspace's kept images, and captions compiled from their annotations in the
    `captions` format (curate.toml's [captions]; a concept may name its own), as a Kohya
    dataset at `out`."""
    config.check()
    captions = captions or CaptionFormat()
    if not config.shuffle_caption:  # the older switch, kept: it turns shuffling off
        captions = replace(captions, shuffle=False)
    captions.check()
    out = Path(out).absolute()
    check_target(out)
    with Workspace.open(workspace) as ws:
        settings = ws.manifest.settings()
        records = ws.active_records()
    if not records:
        raise CurateError(f"{workspace}: no images to lay out (import some, or check `curate status`)")
    result = LayoutResult(str(out), dry_run, epochs=config.epochs, batch_size=config.batch_size)
    default = Concept(config.name or settings.get("trigger") or "concept",
                      config.class_tokens or _class_tokens(settings))
    rules = read_concepts(Path(config.concepts)) if config.concepts else []
    # an imported Kohya dataset keeps its subsets unless a concepts file or --name regroups its
    # training images; its reg images stay reg images either way
    kohya, rest = kohya_concepts(records)
    if rules or config.name is not None:
        rest += [r for c in kohya if not c.is_reg for r in c.records]
        kohya = [c for c in kohya if c.is_reg]
    concepts, left = assign_concepts(rest, rules, default) if rest else ([], [])
    result.warnings += [(_shown(r), "matches no concept in the concepts file: left out") for r in left]
    reg = _reg_subset(config, concepts + kohya)
    reg_images = (len(reg.entries) if reg else 0) + sum(len(c.records) for c in kohya if c.is_reg)
    user_repeats = config.repeats is not None or config.target_steps is not None  # they win
    set_repeats(concepts + [c for c in kohya if user_repeats and not c.is_reg], config, reg_images)
    concepts = merge_folders(concepts + kohya)
    formats = {rule.name: replace(captions, format=rule.format) for rule in rules if rule.format}
    subsets = [_subset(c, formats.get(c.name, captions), settings, result) for c in concepts]
    subsets += [reg] if reg else []
    subsets, result.kept_edits, result.conflicts = keep_hand_edits(subsets, find_hand_edits(out))
    result.total_steps = _steps(subsets, config)  # close-ups count as images too
    result.plan = [{"folder": s.folder, "images": len(s.entries), "repeats": s.repeats,
                    "images_x_repeats": len(s.entries) * s.repeats, "is_reg": s.is_reg,
                    "class_tokens": s.class_tokens, "alpha_mask": s.alpha_mask} for s in subsets]
    if not dry_run:
        general = {"caption_extension": config.caption_ext}  # the caption keys are per subset
        with Workspace.open(workspace) as ws, ws.lock():
            adopt(ws, result.kept_edits)
        write_dataset(out, subsets, config, general)
    return result


def _steps(subsets: list[Subset], config: LayoutConfig) -> int:
    per_epoch = sum(len(s.entries) * s.repeats for s in subsets if not s.is_reg)
    if any(s.is_reg for s in subsets):
        per_epoch *= 2  # sd-scripts repeats reg images until they match the training images
    return -(-per_epoch * config.epochs // config.batch_size)


def _class_tokens(settings: dict[str, Any]) -> str | None:
    words = [w for w in (settings.get("trigger"), settings.get("class_token")) if w]
    return " ".join(words) or None


def _shown(record: Record) -> str:
    return record.origins[0].source_path if record.origins else str(record.path)


def _subset(concept: Concept, fmt: CaptionFormat, settings: dict[str, Any], result: LayoutResult) -> Subset:
    names = [(Path(_shown(r).split("!/")[-1]).name, r.sha256) for r in concept.records]
    # sd-scripts would caption these with class_tokens; written out, the caption is explicit
    fallback = [w for w in (settings.get("trigger"), settings.get("class_token")) if w] or [concept.name]
    if concept.kohya:  # as sd-scripts captioned them in the imported dataset
        fallback = [concept.class_tokens or concept.name]
    entries, compiled = [], {}
    for record, stem in zip(concept.records, unique_stems(names), strict=True):
        made = _compile(record, fmt, concept.class_tokens)
        if made.text:
            compiled[stem] = made
            if made.fallback and not concept.is_reg:
                result.warnings.append((_shown(record), f"no sentence for the {fmt.format!r} caption "
                                        "format: captioned with its tags (add one with a .caption file "
                                        "or a captioner)"))
        elif not concept.is_reg:  # reg images are captioned by their class
            result.warnings.append((_shown(record), f"no caption: written as {format_caption(fallback)!r}"))
        caption = made.text or format_caption(fallback)
        entries.append(Entry(record.path, stem, EXTS.get(record.format, record.path.suffix), caption,
                             record.sha256))
        # head close-ups from `curate crop --face-closeups` train as images of their own
        for n, closeup in enumerate(record.extra.get("closeups", ()), 1):
            entries.append(Entry(Path(closeup), f"{stem}-closeup{n}", Path(closeup).suffix.lower(), caption))
    keys = subset_captions(compiled)
    result.warnings += [(concept.folder, warning) for warning in keys.warnings]
    alpha = any(r.has_alpha for r in concept.records)
    return Subset(f"{'reg' if concept.is_reg else 'img'}/{concept.folder}", tuple(entries), concept.repeats,
                  concept.class_tokens, is_reg=concept.is_reg, alpha_mask=alpha, captions=keys.toml_keys())


def _compile(record: Record, fmt: CaptionFormat, class_tokens: str | None) -> Compiled:
    """The record's caption in `fmt`, from its annotations (tags, sentences, trigger, the user's
    own caption). The concept's class tokens win over the workspace's: an imported Kohya subset
    `10_sks cat` or a concepts-file concept keeps its own ("sks cat" after trigger sks: cat)."""
    return compile_caption(record.tags, record.texts, fmt, trigger=record.trigger,
                           class_tokens=class_tokens or record.class_tokens, user_caption=record.user_caption)


def _reg_subset(config: LayoutConfig, concepts: list[Concept]) -> Subset | None:
    """Regularisation images from a folder: reg/1_CLASS, captioned with the class token."""
    if not config.reg:
        return None
    root = Path(config.reg)
    if not root.is_dir():
        raise CurateError(f"{root}: no such folder of regularisation images")
    klass = config.class_tokens or next((c.class_tokens for c in concepts if c.class_tokens), None)
    if not klass:
        raise CurateError("regularisation images need a class token: pass --class-tokens "
                          "(e.g. 'woman') or run `curate captions trigger WS WORD --class-token CLASS`")
    klass = klass.split()[-1]  # "sks woman" -> "woman": reg images show the class, not the subject
    check_name(klass, "class token (it names the folder reg/1_CLASS)")
    rels = walk_images(root).relpaths
    if not rels:
        raise CurateError(f"{root}: no images found for regularisation")
    stems = unique_stems((Path(rel).name, rel) for rel in rels)
    entries = tuple(Entry(root / rel, stem, Path(rel).suffix.lower(), klass)
                    for rel, stem in zip(rels, stems, strict=True))
    return Subset(f"reg/1_{klass}", entries, 1, klass, is_reg=True)
