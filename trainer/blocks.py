"""Per-block weights of an SD 1.x / 2.x network, as the "LoRA Block Weight" extension and sd-scripts
write them.

Users name UNet blocks after the original (LDM) layout, one id per slot of the UNet:
`IN00`..`IN11` (input_blocks; IN00 is conv_in, IN03/06/09 the down-samplers), `M00` (the middle
block) and `OUT00`..`OUT11` (output_blocks; the up-samplers sit in OUT02/05/08), plus `BASE` for
the text encoder. A diffusers module `down_blocks.i.{resnets,attentions}.j` is input block
1 + 3i + j, its down-sampler 3(i + 1); `up_blocks.i.{resnets,attentions}.j` is output block 3i + j,
its up-sampler 3i + 2: A1111's diffusers -> CompVis key conversion, which the extension relies on,
and sd-scripts' `get_block_index`, both hard-code SD's three slots per block, so this does too.
UNet layers outside those slots (time embedding, conv_out) have no block and keep weight 1, as in
the extension.

A weight spec (`parse_block_weights`) is a preset name (the extension's defaults), a list of 17
values (LoRA: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11; the blocks a LierLa
LoRA has) or 26 values (LyCORIS / LoCon: every block), or named groups `IN=0,MID=0,OUT=1` (also
single ids and ranges such as `IN04-OUT05`; unnamed blocks keep 1). A 17-value list leaves the
other nine blocks at 0, as the extension's `to26` does.

`lr_weights` turns sd-scripts' `down_lr_weight` / `mid_lr_weight` / `up_lr_weight` (or a block
weight spec) into a learning-rate multiplier per kohya module name; weights at or below
`block_lr_zero_threshold` become 0, meaning the module is not trained.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from curate.errors import CurateError

BLOCKS_PER_SIDE = 12  # sd-scripts' LoRANetwork.NUM_OF_BLOCKS
BLOCK_IDS_26 = ["BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12))]
BLOCK_IDS_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                *(f"OUT{i:02d}" for i in range(3, 12))]
# the extension's DEF_WEIGHT_PRESET (sd-webui-lora-block-weight, scripts/lora_block_weight.py)
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
GROUPS: dict[str, list[str]] = {
    "ALL": BLOCK_IDS_26,
    "BASE": ["BASE"], "TE": ["BASE"],
    "IN": [b for b in BLOCK_IDS_26 if b.startswith("IN")],
    "MID": ["M00"], "M00": ["M00"],
    "OUT": [b for b in BLOCK_IDS_26 if b.startswith("OUT")],
}
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")

_DIFFUSERS = re.compile(r"(down|up)_blocks_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_")
_LDM = re.compile(r"(input|output)_blocks_(\d+)_")
_TEXT = ("lora_te", "text_model", "transformer_resblocks", "cond_stage_model")


def block_of(name: str) -> str | None:
    """The block id of a kohya module name (`lora_unet_down_blocks_1_attentions_0_...`) or a
    diffusers module path (`down_blocks.1.attentions.0...`); LDM-named keys work too. None for a
    UNet layer outside every block (time embedding, conv_out)."""
    key = name.replace(".", "_") + "_"
    if key.startswith(_TEXT) or any(t in key for t in _TEXT[1:]):
        return "BASE"
    if m := _DIFFUSERS.search(key):
        side, i, kind, j = m[1], int(m[2]), m[3], int(m[4])
        if side == "down":
            return f"IN{3 * (i + 1) if kind == 'downsamplers' else 1 + 3 * i + j:02d}"
        return f"OUT{3 * i + 2 if kind == 'upsamplers' else 3 * i + j:02d}"
    if m := _LDM.search(key):
        return f"{'IN' if m[1] == 'input' else 'OUT'}{int(m[2]):02d}"
    if "mid_block_" in key or "middle_block_" in key:
        return "M00"
    if re.match(r"(lora_unet_)?conv_in_", key):
        return "IN00"
    return None


def _floats(values: list[str], spec: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise CurateError(f"block weights {spec!r}: {values} are not all numbers") from None


def _named(spec: str) -> dict[str, float]:
    weights = dict.fromkeys(BLOCK_IDS_26, 1.0)
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().upper()
        if not sep:
            raise CurateError(f"block weights {spec!r}: {item.strip()!r} is not NAME=VALUE; "
                              "write e.g. IN=0,MID=0,OUT=1")
        (weight,) = _floats([value.strip()], spec)
        for block in _group(key, spec):
            weights[block] = weight
    return weights


def _group(key: str, spec: str) -> list[str]:
    if key in GROUPS:
        return GROUPS[key]
    ids = [("M00" if part == "MID" else part) for part in key.split("-")]
    if all(part in BLOCK_IDS_26 for part in ids) and len(ids) in (1, 2):
        positions = sorted(BLOCK_IDS_26.index(part) for part in ids)
        lo, hi = positions[0], positions[-1]
        return BLOCK_IDS_26[lo:hi + 1]
    raise CurateError(f"block weights {spec!r}: unknown block {key!r}; use BASE, IN, MID, OUT, ALL, "
                      "an id IN00..IN11 / M00 / OUT00..OUT11 or a range like IN04-OUT05")


def parse_block_weights(spec: str) -> dict[str, float]:
    """Block id -> weight for all 26 ids, from a preset name, 17 or 26 values, or NAME=VALUE groups."""
    text = spec.strip()
    if not text:
        raise CurateError(f"block weights: empty; give a preset ({', '.join(PRESETS)}), 17 or 26 values, "
                          "or groups like IN=0,MID=0,OUT=1")
    if text.upper() in PRESETS:
        text = PRESETS[text.upper()]
    if "=" in text:
        return _named(text)
    if "," not in text:
        raise CurateError(f"block weights {spec!r}: unknown preset; choose one of {', '.join(PRESETS)}, "
                          "or give 17 / 26 values or groups like IN=0,MID=0,OUT=1")
    values = _floats([v.strip() for v in text.split(",")], spec)
    if len(values) == 26:
        return dict(zip(BLOCK_IDS_26, values, strict=True))
    if len(values) == 17:
        weights = dict.fromkeys(BLOCK_IDS_26, 0.0)  # the extension's to26: unlisted blocks are off
        weights.update(zip(BLOCK_IDS_17, values, strict=True))
        return weights
    raise CurateError(f"block weights {spec!r}: {len(values)} values; SD 1.x/2.x takes 17 (LoRA: "
                      f"{','.join(BLOCK_IDS_17)}) or 26 (LyCORIS: BASE, IN00-IN11, M00, OUT00-OUT11)")


def block_weight(weights: dict[str, float] | None, name: str) -> float:
    """The weight of the module `name` under `weights` (1 without weights or outside every block)."""
    if weights is None:
        return 1.0
    block = block_of(name)
    return 1.0 if block is None else weights[block]


def _lr_list(value: str | None, count: int, what: str) -> list[float]:
    """sd-scripts' get_list: a preset name with an optional `+base`, or comma values (blank = 0),
    padded with 1 when short; too many values are an error here rather than silently cut."""
    if value is None:
        return [1.0] * count
    if "," not in value and count > 1:
        name, _, base_text = value.strip().partition("+")
        base = _floats([base_text], value)[0] if base_text else 0.0
        steps = [i / (count - 1) for i in range(count)]
        curves = {"sine": [math.sin(math.pi * s / 2) for s in steps], "linear": steps,
                  "zeros": [0.0] * count}
        curves["cosine"] = curves["sine"][::-1]
        curves["reverse_linear"] = steps[::-1]
        if name not in curves:
            raise CurateError(f"{what} {value!r}: choose one of {', '.join(LR_PRESETS)} (optionally +NUMBER) "
                              f"or {count} comma-separated values")
        return [w + base for w in curves[name]]
    values = [float(v) if v.strip() else 0.0 for v in _checked(value, what).split(",")]
    if len(values) > count:
        raise CurateError(f"{what} {value!r}: {len(values)} values, at most {count}")
    return values + [1.0] * (count - len(values))


def _checked(value: str, what: str) -> str:
    try:
        [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CurateError(f"{what} {value!r}: not comma-separated numbers") from None
    return value


def lr_weights(names: Iterable[str], *, down_lr_weight: str | None = None, mid_lr_weight: str | None = None,
               up_lr_weight: str | None = None, block_weights: str | None = None,
               zero_threshold: float = 0.0) -> dict[str, float]:
    """Learning-rate multiplier per kohya module name; 0 means "do not train this module".

    Either sd-scripts' down/mid/up lists (down: IN00..IN11, mid: M00, up: OUT00..OUT11; text-encoder
    modules keep 1, as in sd-scripts) or a block weight spec (whose BASE also scales the text
    encoder); weights not above `zero_threshold` become 0, as sd-scripts' block_lr_zero_threshold.
    """
    sd_scripts = (down_lr_weight, mid_lr_weight, up_lr_weight) != (None, None, None)
    if sd_scripts and block_weights is not None:
        raise CurateError("block learning rates: give down/mid/up_lr_weight or block_lr_weights, not both")
    if block_weights is None and not sd_scripts:
        return dict.fromkeys(names, 1.0)
    if block_weights is not None:
        table = parse_block_weights(block_weights)
    else:
        down = _lr_list(down_lr_weight, BLOCKS_PER_SIDE, "down_lr_weight")
        mid = _lr_list(mid_lr_weight, 1, "mid_lr_weight")
        up = _lr_list(up_lr_weight, BLOCKS_PER_SIDE, "up_lr_weight")
        table = dict(zip(BLOCK_IDS_26[1:], [*down, *mid, *up], strict=True))
    table = {block: (w if w > zero_threshold else 0.0) for block, w in table.items()}
    table.setdefault("BASE", 1.0)  # sd-scripts' lists leave the text encoder alone
    return {name: block_weight(table, name) for name in names}


def weighted_param_groups(network: Any, multipliers: dict[str, float], unet_lr: float | None,
                          te_lr: float | None, default_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups of an AdapterNetwork with per-module learning-rate `multipliers`
    (lr_weights): one group per (side, multiplier), lr = side lr x multiplier, as sd-scripts'
    prepare_optimizer_params groups by block. Modules at 0 are frozen and left out."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for side, names in (("unet", network.unet_names), ("te", network.te_names)):
        for name in names:
            module = network.get_submodule(name)
            weight = multipliers.get(name, 1.0)
            if weight == 0:
                module.requires_grad_(False)
                continue
            groups.setdefault((side, weight), []).extend(module.parameters())
    out = []
    for (side, weight), params in groups.items():
        lr = unet_lr if side == "unet" else te_lr
        out.append({"params": params, "lr": (default_lr if lr is None else lr) * weight})
    return out


def block_contents(block: str) -> str:
    """What an SD 1.x/2.x block holds, in diffusers module names (for `curate lora blocks`)."""
    if block == "BASE":
        return "text encoder"
    if block == "M00":
        return "mid_block"
    side, n = block[:-2], int(block[-2:])
    if side == "IN":
        if n == 0:
            return "conv_in"
        i, j = divmod(n - 1, 3)
        if j == 2:
            return f"down_blocks.{i}.downsamplers.0"
        # SD's last down block and first up block have no attentions
        names = [f"down_blocks.{i}.resnets.{j}"] + ([] if i == 3 else [f"down_blocks.{i}.attentions.{j}"])
    else:
        i, j = divmod(n, 3)
        names = [f"up_blocks.{i}.resnets.{j}"] + ([] if i == 0 else [f"up_blocks.{i}.attentions.{j}"])
        names += [f"up_blocks.{i}.upsamplers.0"] if j == 2 and i < 3 else []
    return " + ".join(names)


def block_table(spec: str | None = None) -> list[tuple[str, str, bool, float | None]]:
    """(block id, SD 1.x contents, in the 17-value LoRA list, weight under `spec` or None) per block."""
    weights = parse_block_weights(spec) if spec is not None else None
    return [(block, block_contents(block), block in BLOCK_IDS_17, None if weights is None else weights[block])
            for block in BLOCK_IDS_26]
