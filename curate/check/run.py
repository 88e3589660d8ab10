"""`curate check`: the one entry point, `check(paths, config, only_files)`.

Folders are searched for datasets (dataset.toml, or train/reg data dirs of `N_name` folders)
and training configs. With `only_files` (what pre-commit passes: the staged files) each file
leads to the dataset it belongs to; that whole dataset is looked at, because duplicates and
shared stems involve other files, but only findings that involve one of the files are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from curate.check.captions import CaptionRules, check_caption
from curate.check.config import DEFAULT_MIN_SIZE, CheckConfig
from curate.check.dataset import (
    DATASET_TOML,
    Dataset,
    dataset_at,
    discover,
    load_dataset,
    read_network_config,
)
from curate.check.images import (
    Facts,
    alpha_mode,
    dedupe_config,
    duplicates,
    read_headers,
    scan_paths,
)
from curate.check.layout_rules import check_subset, folder_rules
from curate.check.rules import Finding, make, shown
from curate.errors import CurateError
from curate.paths import display
from curate.tagging.rules import load_rules
from curate.tagging.tags import tag_key
from curate.tagging.tokens import TokenCounter

IMAGE_RULES = ("image-unreadable", "image-too-small", "alpha-without-mask")
DUPLICATE_RULES = ("duplicate-exact", "duplicate-near")


@dataclass
class Scope:
    """What to report on: everything (None), or findings involving these files/folders."""

    files: set[Path] = field(default_factory=set)
    dirs: list[Path] = field(default_factory=list)

    def covers(self, finding: Finding) -> bool:
        return any(p in self.files or any(d == p or d in p.parents for d in self.dirs)
                   for p in finding.files())


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    images: int = 0  # images sd-scripts reads, in all datasets checked
    hashed: int = 0  # images hashed in this run (the rest came from the cache)
    configs: int = 0  # training configs with network_dim / network_alpha
    tokens: str = "bounds"  # "exact" when CLIP's tokenizer was loaded (see tokens.py)

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": [{"rule": f.rule, "severity": f.severity, "file": shown(f.path), "line": f.line,
                          "message": f.message, "hint": f.hint, "related": [shown(p) for p in f.related]}
                         for f in self.findings],
            "counts": {"errors": self.errors, "warnings": self.warnings, "images": self.images,
                       "datasets": len(self.datasets), "hashed": self.hashed, "configs": self.configs},
            "datasets": self.datasets, "tokens": self.tokens,
        }


@dataclass
class Plan:
    # dataset.toml or data dir -> the dataset and what to report on (None: everything)
    datasets: dict[Path, tuple[Dataset, Scope | None]] = field(default_factory=dict)
    configs: list[Path] = field(default_factory=list)  # candidate training configs


def plan(paths: Sequence[Path], only_files: Sequence[Path] | None) -> Plan:
    """The datasets and training configs to look at, each with what to report on."""
    out, cache = Plan(), {}
    for raw in paths:
        folder = Path(os.path.abspath(raw))
        if not folder.is_dir():
            raise CurateError(f"{display(raw)}: no such folder")
        key = dataset_at(folder, cache)
        root = key.parent if key is not None and key.name == DATASET_TOML else key
        if key is not None and root != folder and root in folder.parents:
            _add(out, key, load_dataset, Scope(dirs=[folder]))
            continue
        found = discover(folder)
        out.configs += found.configs
        for dataset in found.datasets:
            _add(out, dataset.config_file or dataset.root, lambda _k, d=dataset: d, None)
    for raw in only_files or ():
        file = Path(os.path.abspath(raw))
        if file.suffix.lower() in (".toml", ".json"):
            out.configs.append(file)
        key = dataset_at(file.parent, cache)
        if key is not None:
            _add(out, key, load_dataset, Scope(files={file}))
    out.configs = list(dict.fromkeys(out.configs))
    return out


def _add(out: Plan, key: Path, load: Callable[[Path], Dataset], scope: Scope | None) -> None:
    if key not in out.datasets:
        out.datasets[key] = (load(key), scope)
        return
    dataset, current = out.datasets[key]
    if current is None or scope is None:
        out.datasets[key] = (dataset, None)
    else:
        current.files |= scope.files
        current.dirs += scope.dirs


def check(paths: Sequence[Path], config: CheckConfig,
          only_files: Sequence[Path] | None = None) -> CheckResult:
    """Lint the datasets under `paths` (folders) and those `only_files` belong to; see module doc."""
    config.validate("[check]")
    if not paths and not only_files:
        paths = [Path.cwd()]
    work = plan(paths, only_files)
    rules = load_rules([Path(p) for p in config.rules])
    blacklist = rules.blacklist | {tag_key(t) for t in config.blacklist}
    ctx = CaptionRules(config, rules, blacklist, TokenCounter(config.tokenizer))
    result = CheckResult()
    per_dataset: list[tuple[Dataset, Scope | None, list[Finding], list[tuple[Path, bool]]]] = []
    for dataset, scope in work.datasets.values():
        found, images = _dataset_findings(dataset, ctx)
        per_dataset.append((dataset, scope, found, images))
        result.datasets.append(shown(dataset.config_file or dataset.root))
        result.images += len(images)
    facts = _facts([p for *_, images in per_dataset for p, _ in images], config)
    result.hashed = facts.hashed
    for dataset, scope, found, images in per_dataset:
        found += _image_findings(dataset, images, facts, config)
        result.findings += [f for f in found if scope is None or scope.covers(f)]
    network = [c for c in map(read_network_config, work.configs) if c is not None]
    result.configs = len(network)
    for net in network:
        if net.dim > 0 and net.alpha > net.dim:
            result.findings.append(make("network-alpha", net.path, net.line, config=net.path.name,
                                        alpha=f"{net.alpha:g}", dim=f"{net.dim:g}",
                                        scale=f"{net.alpha / net.dim:g}"))
    if paths and not work.datasets and not network:
        raise CurateError(f"no Kohya dataset under {', '.join(map(display, paths))}: expected a "
                          f"{DATASET_TOML} or a folder of N_name image folders (e.g. img/10_sks)")
    result.findings = _levelled(result.findings, config)
    result.tokens = "exact" if ctx.counter.used_exact else "bounds"
    return result


def _dataset_findings(dataset: Dataset, ctx: CaptionRules) -> tuple[list[Finding], list[tuple[Path, bool]]]:
    """Findings of the layout and caption rules, and the images sd-scripts reads (with alpha_mask)."""
    found = [make("dataset-config", p.path, p.line, config=p.path.name, problem=p.problem, fix=p.fix)
             for p in dataset.problems]
    found += folder_rules(dataset)
    images: list[tuple[Path, bool]] = []
    implicit_ext: set[str] = set()
    subset_dirs = {s.image_dir for s in dataset.subsets}
    for subset in dataset.subsets:
        listing = check_subset(subset, subset_dirs)
        found += listing.findings
        images += [(p, subset.alpha_mask) for p in listing.images]
        if not subset.captions_from_files:
            continue
        ext = subset.caption_extension or ctx.config.caption_ext
        if subset.caption_extension is None and any(n.endswith(ext) for n in listing.names):
            implicit_ext.add(ext)
        for image in listing.images:
            found += check_caption(image, subset, ext, listing.names, ctx, (dataset.root, subset.image_dir))
    for ext in sorted(implicit_ext - {".caption"}):
        where = (f"{DATASET_TOML} sets no caption_extension" if dataset.config_file else
                 f"no dataset.toml sets caption_extension for the N_name folders in {dataset.root.name}")
        found.append(make("caption-extension-default", dataset.config_file or dataset.root, None,
                          where=where, ext=ext))
    return found, images


def _facts(paths: list[Path], config: CheckConfig) -> Facts:
    if config.check_duplicates and config.enabled(*DUPLICATE_RULES):
        return scan_paths(list(dict.fromkeys(paths)), dedupe_config(config.near_threshold, config.workers))
    if config.enabled(*IMAGE_RULES):
        return read_headers(list(dict.fromkeys(paths)))
    return Facts()


def _image_findings(dataset: Dataset, images: list[tuple[Path, bool]], facts: Facts,
                    config: CheckConfig) -> Iterable[Finding]:
    limit = config.min_size or dataset.min_bucket_reso or DEFAULT_MIN_SIZE
    for path, alpha_mask in images:
        if path in facts.errors:
            yield make("image-unreadable", path, image=path.name, reason=facts.errors[path])
            continue
        item = facts.items.get(path)
        if item is None:
            continue
        if min(item.width, item.height) < limit:
            yield make("image-too-small", path, image=path.name, width=item.width, height=item.height,
                       limit=limit)
        wanted = not alpha_mask and config.enabled("alpha-without-mask")
        mode = alpha_mode(path, item.format) if wanted else None
        if mode is not None:
            yield make("alpha-without-mask", path, image=path.name, mode=mode)
    if facts.hashes and config.check_duplicates:
        dedupe = dedupe_config(config.near_threshold, config.workers)
        for dup in duplicates([p for p, _ in images], facts, dedupe):
            if dup.exact:
                yield make("duplicate-exact", dup.path, related=(dup.other,), image=dup.path.name,
                           relation=dup.relation, other=shown(dup.other))
            else:
                yield make("duplicate-near", dup.path, related=(dup.other,), image=dup.path.name,
                           other=shown(dup.other), distance=dup.distance)


def _levelled(findings: list[Finding], config: CheckConfig) -> list[Finding]:
    """Disabled rules dropped, severities as configured, in file and line order."""
    out = []
    for f in findings:
        level = config.level(f.rule, f.severity)
        if level != "off":
            out.append(f if level == f.severity else replace(f, severity=level))  # type: ignore[arg-type]
    return sorted(out, key=lambda f: (shown(f.path), f.line or 0, f.rule, f.message))
