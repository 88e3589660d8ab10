"""sd-scripts' own option spellings in a `[train]` table, turned into TrainConfig's keys.

A guide's settings are written for sd-scripts (`optimizer_type = "AdamW8bit"`, `optimizer_args
= ["weight_decay=0.01"]`, `network_args = ["conv_dim=8"]`, `train_batch_size = 4`, ...). This
module reads them as sd-scripts does, so that `curate train --config` and `--set` take them:

- `optimizer_type`: any case, as sd-scripts lower-cases it (train_util.get_optimizer); a type
  curate cannot run is refused with the ones it can. "DAdaptation" is DAdaptAdam, which it was
  in sd-scripts until 5cdf4e34 (May 2023, dadaptation v3), the era of the guides that name it.
- `optimizer_args`, `lr_scheduler_args`: lists of "key=value", each split on "=" and the value
  read with ast.literal_eval, as get_optimizer / get_scheduler_fix do (a value holding "=" or
  one literal_eval cannot read is refused, as sd-scripts would stop on it).
- `lr_scheduler_type`: torch's CosineAnnealingWarmRestarts (bare or dotted, as sd-scripts
  imports it) with its T_0 / T_mult / eta_min; any other class is refused.
- `network_module` + `network_args`: networks.lora and lycoris.kohya (algo lora/locon, ia3;
  loha/lokr when TrainConfig's network offers them); network_args values are strings (sd-scripts
  passes them as such) converted to the option's type.
- `train_batch_size` is batch_size. `train_data_dir` and `reg_data_dir` keep their names (the
  dataset folder, and folder-mode regularisation folders: TrainConfig's fields).
"""

from __future__ import annotations

import ast
import typing
from typing import Any

from curate.errors import CurateError

OPTIMIZERS = {
    "adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "dadaptadam": "dadaptadam",
    "dadaptation": "dadaptadam",
}
CAWR = ("cosineannealingwarmrestarts", "torch.optim.lr_scheduler.cosineannealingwarmrestarts")
CAWR_ARGS = {"T_0": "T_0", "T_mult": "T_mult", "eta_min": "eta_min"}
# lr_scheduler_args of diffusers' schedules, by get_scheduler's keyword
SCHEDULER_ARGS = {"num_cycles": "lr_scheduler_num_cycles", "power": "lr_scheduler_power"}
# network_args keys and the TrainConfig field each sets (values arrive as strings)
NETWORK_ARGS = {
    "conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "train_on_input": "ia3_train_on_input",
    "dropout": "network_dropout", "down_lr_weight": "down_lr_weight", "mid_lr_weight": "mid_lr_weight",
    "up_lr_weight": "up_lr_weight", "block_lr_zero_threshold": "block_lr_zero_threshold",
}
ALGOS = {"lora": "lora", "locon": "lora", "ia3": "ia3", "loha": "loha", "lokr": "lokr"}
SPELLINGS = (
    "optimizer_type", "lr_scheduler_type", "lr_scheduler_args", "network_module", "network_args",
    "train_batch_size",
)
# sd-scripts spelling -> the TrainConfig key it stands for, when one table holds both
TWINS = {
    "optimizer_type": "optimizer", "train_batch_size": "batch_size", "lr_scheduler_type": "lr_scheduler",
    "network_module": "network",
}


def key_values(items: Any, option: str, literal: bool = True) -> dict[str, Any]:
    """["k=v", ...] as sd-scripts reads --optimizer_args / --lr_scheduler_args (literal_eval'd
    values) or --network_args (literal=False: strings)."""
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise CurateError(
            f'train.{option} = {items!r}: expected a list of "key=value" strings '
            "(sd-scripts' spelling) or a table"
        )
    out: dict[str, Any] = {}
    for item in items:
        parts = item.split("=")
        if len(parts) != 2 or not parts[0].strip():
            raise CurateError(
                f"train.{option}: {item!r} is not key=value (sd-scripts splits on '=', so exactly one '=')"
            )
        key, value = parts[0].strip(), parts[1].strip()
        if literal:
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError) as exc:
                raise CurateError(
                    f"train.{option}: {item!r}: sd-scripts reads the value with "
                    f"ast.literal_eval, which fails ({exc}); quote a string as 'text'"
                ) from exc
        else:
            out[key] = value
    return out


def optimizer_name(value: Any, where: str = "train.optimizer_type") -> str:
    """sd-scripts' optimizer_type (any case) as TrainConfig's optimizer."""
    if not isinstance(value, str):
        raise CurateError(f'{where} = {value!r}: expected an optimiser name such as "AdamW" or "Prodigy"')
    name = OPTIMIZERS.get(value.strip().lower() or "adamw")
    if name is None:
        raise CurateError(
            f"{where} = {value!r}: curate trains with AdamW, AdamW8bit, Prodigy and DAdaptAdam "
            "(DAdaptation); use one of those, or --backend kohya to train with sd-scripts"
        )
    return name


def _scheduler(table: dict[str, Any], out: dict[str, Any]) -> None:
    kind = table.get("lr_scheduler_type")
    args = key_values(table.get("lr_scheduler_args", []), "lr_scheduler_args")
    if kind:
        if not isinstance(kind, str) or kind.strip().lower() not in CAWR:
            raise CurateError(
                f"train.lr_scheduler_type = {kind!r}: curate runs torch's CosineAnnealingWarmRestarts "
                "as a custom scheduler; other ones: lr_scheduler = constant, linear, cosine, "
                "cosine_with_restarts, polynomial, constant_with_warmup"
            )
        out["lr_scheduler"] = "cosine_annealing_warm_restarts"
        names = CAWR_ARGS
    else:
        names = SCHEDULER_ARGS
    for key, value in args.items():
        if key not in names:
            raise CurateError(
                f"train.lr_scheduler_args: {key!r} is not an argument curate passes "
                f"({', '.join(names)} with this scheduler)"
            )
        out[names[key]] = value


def _network(table: dict[str, Any], out: dict[str, Any], networks: tuple[str, ...]) -> None:
    module = table.get("network_module")
    args = key_values(table.get("network_args", []), "network_args", literal=False)
    algo = args.pop("algo", None)
    preset = args.pop("preset", None)
    if module not in (None, "networks.lora", "lycoris.kohya"):
        raise CurateError(
            f"train.network_module = {module!r}: curate trains networks.lora (LoRA/LoCon) and "
            "lycoris.kohya's algos lora, locon and ia3"
        )
    if module == "lycoris.kohya" or algo is not None:
        name = ALGOS.get(str(algo or "lora").strip().strip("\"'").lower())
        if name is None:
            raise CurateError(f"train.network_args: algo={algo}: curate trains lora, locon and ia3")
        out["network"] = network_name(name, networks, f"train.network_args algo={algo}")
    elif module == "networks.lora":
        out["network"] = "lora"
    if preset is not None and not (out.get("network") == "ia3" and preset.strip("\"'") == "ia3"):
        raise CurateError(
            f"train.network_args: preset={preset}: curate adapts fixed modules: iA3 LyCORIS' ia3 "
            "preset's (to_k, to_v, ff.net.2; k_proj, v_proj, mlp.fc2), LoRA networks.lora's; "
            "leave the preset out"
        )
    for key, value in args.items():
        if key not in NETWORK_ARGS:
            raise CurateError(
                f"train.network_args: {key}={value} is not one curate trains with; known: "
                f"{', '.join(['algo', 'preset', *NETWORK_ARGS])}"
            )
        out[NETWORK_ARGS[key]] = convert(NETWORK_ARGS[key], value.strip().strip("\"'"))


def network_name(name: str, networks: tuple[str, ...], where: str) -> str:
    """`name` when TrainConfig's network offers it, else a "not yet" refusal."""
    if name not in networks:
        raise CurateError(
            f"{where}: network {name!r} is not trained by this curate yet (it trains "
            f"{', '.join(networks)}); use --backend kohya with LyCORIS for it"
        )
    return name


def convert(field_name: str, text: str) -> Any:
    """A string value (network_args, a kohya_ss GUI field) as the TrainConfig field's type."""
    from curate.trainer.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)[field_name]
    kinds = [k for k in typing.get_args(hint) or (hint,) if k is not type(None)]
    try:
        if bool in kinds:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if int in kinds:
            return int(float(text)) if float(text).is_integer() else float(text)
        if float in kinds:
            return float(text)
    except ValueError as exc:
        raise CurateError(f"train.{field_name} = {text!r}: not a {kinds[0].__name__}") from exc
    return text


def normalize(table: dict[str, Any], later: bool = False) -> dict[str, Any]:
    """`table` with sd-scripts' spellings turned into TrainConfig keys. Both spellings of one
    setting in one table are refused, unless `later` (the sd-scripts ones came from --set after
    the file's own keys: they win)."""
    from curate.trainer.config import TrainConfig

    spelled = [k for k in SPELLINGS if k in table]
    if not spelled and not isinstance(table.get("optimizer_args"), list | str):
        return table
    networks = typing.get_args(typing.get_type_hints(TrainConfig)["network"])
    out: dict[str, Any] = {k: v for k, v in table.items() if k not in SPELLINGS}
    for key in spelled:
        twin = TWINS.get(key)
        if twin in table and not later:
            raise CurateError(f"train: both {key} (sd-scripts' spelling) and {twin}; keep one")
    if "optimizer_type" in table:
        out["optimizer"] = optimizer_name(table["optimizer_type"])
    if "optimizer_args" in table:
        out["optimizer_args"] = key_values(table["optimizer_args"], "optimizer_args")
    if "lr_scheduler_type" in table or "lr_scheduler_args" in table:
        _scheduler(table, out)
    if "network_module" in table or "network_args" in table:
        _network(table, out, networks)
    if "train_batch_size" in table:
        out["batch_size"] = table["train_batch_size"]
    return out
