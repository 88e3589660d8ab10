"""kohya_ss GUI configs (`.json`, as the GUI saves them and guides share them) as a `[train]` table.

`curate train --config recipe.json` reads one. Every key is either mapped to TrainConfig (with
kohya_ss' meaning: numbers saved as strings, 0 for "unset", `lr_warmup` a percentage of the
steps, `epoch` the epoch count, `optimizer_args` one string of "k=v" words, extra sd-scripts
options in `additional_parameters`) or listed in a note as ignored, with the reason: paths on the
author's machine, GUI-only keys, speed/memory/logging keys that do not change the result, and
other model families' keys. A key that would change training but that curate cannot do is a
warning when the recipe turns it on. Keys are those of bmaltais/kohya_ss `kohya_gui/lora_gui.py`
(save_configuration, 45088f0) plus older ones the seeds' guides use (`unit`, `model_list`).
A trailing comma (pasted JSON often has one) is read, with a warning; other JSON errors refuse.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.trainer.spellings import convert, key_values, network_name, normalize, optimizer_name

Messages = list[tuple[str, str]]
LORA_TYPES = {
    "Standard": "lora", "LoCon": "lora", "LyCORIS/LoCon": "lora", "Kohya LoCon": "lora", "LyCORIS/iA3": "ia3",
    "LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr",
}
# GUI keys with the same name and meaning as a TrainConfig field (0 or "" = unset where optional)
SAME = (
    "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_scheduler_num_cycles",
    "lr_scheduler_power", "max_grad_norm", "gradient_accumulation_steps", "gradient_checkpointing", "seed",
    "cache_latents", "cache_latents_to_disk", "shuffle_caption", "keep_tokens", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "caption_extension", "enable_bucket", "min_bucket_reso",
    "max_bucket_reso", "bucket_reso_steps", "clip_skip", "max_token_length", "prior_loss_weight",
    "min_snr_gamma", "scale_weight_norms", "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps",
    "save_last_n_epochs", "save_state", "save_precision", "mixed_precision", "output_name",
    "sample_every_n_steps", "sample_every_n_epochs", "sample_sampler", "v_pred_like_loss",
    "scale_v_pred_loss_like_noise_pred", "debiased_estimation_loss", "adaptive_noise_scale",
    "network_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
)
# read by the functions below
READ = {
    "LoRA_type", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "train_on_input", "optimizer",
    "optimizer_args", "lr_scheduler_type", "lr_scheduler_args", "additional_parameters", "lr_warmup",
    "lr_warmup_steps", "epoch", "max_train_epochs", "max_train_steps", "train_batch_size", "max_resolution",
    "noise_offset_type", "noise_offset", "noise_offset_random_strength", "multires_noise_iterations",
    "multires_noise_discount", "v_parameterization", "sdxl_cache_text_encoder_outputs", "save_model_as",
    "stop_text_encoder_training", "sample_prompts",
}
IGNORED = {
    "paths on the author's machine": (
        "pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "logging_dir",
        "dataset_config", "vae", "network_weights", "resume", "log_config", "log_tracker_config", "file_path",
    ),
    "kohya_ss GUI state": (
        "save_as_bool", "model_list", "training_comment", "show_timesteps", "show_timesteps_resolution",
        "LyCORIS_preset", "dim_from_weights", "unit",
    ),
    "curate reads the family from the model": ("v2", "sdxl", "sdxl_no_half_vae"),
    "speed, memory or launcher settings: the result is the same": (
        "num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
        "main_process_port", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
        "extra_accelerate_launch_args", "xformers", "mem_eff_attn", "max_data_loader_n_workers",
        "persistent_data_loader_workers", "vae_batch_size", "highvram", "lowvram", "skip_cache_check",
        "mem_eff_save", "cpu_offload_checkpointing", "blocks_to_swap", "single_blocks_to_swap",
        "double_blocks_to_swap", "no_token_padding", "save_state_on_train_end", "save_last_n_steps_state",
        "save_last_n_epochs_state",
    ),
    "logging and uploads": (
        "log_with", "wandb_api_key", "wandb_run_name", "log_tracker_name", "huggingface_repo_id",
        "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
        "huggingface_path_in_repo", "save_state_to_huggingface", "resume_from_huggingface", "async_upload",
        "metadata_author", "metadata_description", "metadata_license", "metadata_tags", "metadata_title",
    ),
}
# keys that change training, which curate does not do: a warning when the recipe turns one on
UNSUPPORTED = (
    "color_aug", "flip_aug", "random_crop", "masked_loss", "bucket_no_upscale", "weighted_captions",
    "ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep", "max_timestep", "full_fp16",
    "full_bf16", "fp8_base", "fp8_base_unet", "train_inpainting", "rank_dropout", "module_dropout",
    "rank_dropout_scale", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
    "loraplus_lr_ratio", "loraplus_text_encoder_lr_ratio", "loraplus_unet_lr_ratio", "train_lora_ggpo",
    "ggpo_sigma", "ggpo_beta", "factor", "bypass_mode", "dora_wd", "use_cp", "use_tucker", "use_scalar",
    "constrain", "rescaled", "train_norm", "decompose_both", "t5xxl_lr",
)
DEFAULT_ON = {
    "loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1, "factor": -1,
    "rank_dropout_scale": False, "ggpo_sigma": 0.03, "ggpo_beta": 0.01,
}
FAMILIES = ("flux1_", "sd3_", "hunyuan_", "anima_", "lumina_")
FAMILY_KEYS = (
    "model_type", "ae", "clip_l", "clip_g", "t5xxl", "discrete_flow_shift", "model_prediction_type",
    "timestep_sampling", "split_mode", "train_blocks", "t5xxl_max_token_length", "enable_all_linear",
    "guidance_scale", "apply_t5_attn_mask", "split_qkv", "train_t5xxl", "img_attn_dim", "img_mlp_dim",
    "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "single_mod_dim", "in_dims",
    "train_double_block_indices", "train_single_block_indices", "clip_g_dropout_rate", "logit_mean",
    "logit_std", "mode_scale", "pos_emb_random_crop_rate", "save_clip", "save_t5xxl", "t5xxl_device",
    "t5xxl_dtype", "weighting_scheme", "loss_type", "huber_schedule", "huber_c", "huber_scale",
)
TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def load_json(path: Path, messages: Messages) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CurateError(f"{path}: not UTF-8 ({exc}); re-save it as UTF-8") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            data = json.loads(TRAILING_COMMA.sub(r"\1", text))
        except json.JSONDecodeError:
            raise CurateError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix the file") from exc
        messages.append(
            ("warning", f"{path}: a trailing comma (line {exc.lineno}) is not JSON; read without it")
        )
    if not isinstance(data, dict):
        raise CurateError(f"{path}: a kohya_ss config is a JSON object of settings")
    return data


def off(value: Any) -> bool:
    """kohya_ss' "not set": 0, "", false, null, "0", "None"."""
    return value in (None, "", False, 0, "0", "0.0", "None", "none", []) or (
        isinstance(value, float) and value == 0
    )


def number(value: Any, key: str) -> Any:
    if isinstance(value, str):
        try:
            return int(value) if re.fullmatch(r"[+-]?\d+", value.strip()) else float(value)
        except ValueError:
            raise CurateError(f"kohya_ss {key} = {value!r}: not a number") from None
    return value


def _value(key: str, value: Any) -> Any:
    if isinstance(value, str) and key not in (
        "lr_scheduler", "caption_extension", "save_precision", "mixed_precision", "output_name",
        "sample_sampler", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
    ):
        return convert(key, value) if value.lower() in ("true", "false") else number(value, key)
    if (
        isinstance(value, float)
        and value.is_integer()
        and key
        in (
            "gradient_accumulation_steps", "seed", "keep_tokens", "clip_skip", "max_token_length",
            "caption_dropout_every_n_epochs",
        )
    ):
        return int(value)
    return value


def _same(data: dict[str, Any], out: dict[str, Any]) -> None:
    optional = {
        "unet_lr", "text_encoder_lr", "clip_skip", "min_snr_gamma", "scale_weight_norms",
        "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps", "save_last_n_epochs",
        "sample_every_n_steps", "sample_every_n_epochs", "v_pred_like_loss", "adaptive_noise_scale",
        "network_dropout", "caption_dropout_every_n_epochs", "keep_tokens", "caption_dropout_rate",
        "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "output_name",
    }
    for key in SAME:
        if key in data and not (key in optional and off(data[key])):
            out[key] = _value(key, data[key])


def _network(data: dict[str, Any], out: dict[str, Any], messages: Messages) -> None:
    import typing

    from curate.trainer.config import TrainConfig

    kind = data.get("LoRA_type", "Standard")
    if kind not in LORA_TYPES:
        raise CurateError(f"kohya_ss LoRA_type = {kind!r}: curate reads {', '.join(LORA_TYPES)}")
    networks = typing.get_args(typing.get_type_hints(TrainConfig)["network"])
    out["network"] = network_name(LORA_TYPES[kind], networks, f"kohya_ss LoRA_type = {kind!r}")
    rank_keys = ("network_dim", "network_alpha", "conv_dim", "conv_alpha")
    if out["network"] == "ia3":
        if "train_on_input" in data:
            out["ia3_train_on_input"] = bool(convert("ia3_train_on_input", str(data["train_on_input"])))
        given = [k for k in (*rank_keys, "network_dropout") if k in data]
        out.pop("network_dropout", None)
        if given:
            messages.append(
                (
                    "note",
                    f"ignored {', '.join(given)}: iA3 learns one scale per feature, with no "
                    "rank, alpha or dropout (LyCORIS ignores them for ia3 too)",
                )
            )
        return
    for key in rank_keys:
        if key in data and not off(data[key]):
            out[key] = number(data[key], key)
    if kind == "Standard" and "conv_dim" in out:
        messages.append(("note", "LoRA_type Standard: kohya_ss passes no conv_dim, so conv_dim is ignored"))
        out.pop("conv_dim")
        out.pop("conv_alpha", None)


def _optimizer(data: dict[str, Any], out: dict[str, Any], messages: Messages) -> None:
    name = data.get("optimizer")
    if name is not None:
        out["optimizer"] = optimizer_name(name, "kohya_ss optimizer")
        if str(name).lower() == "dadaptation":
            messages.append(
                (
                    "note",
                    "optimizer DAdaptation is DAdaptAdam, as in the kohya_ss and sd-scripts of "
                    "its time (sd-scripts maps it to DAdaptAdamPreprint since May 2023)",
                )
            )
    words = shlex.split(str(data.get("optimizer_args") or ""))
    if words and words[0] == "--optimizer_args":  # pasted with the option name, as guide 002 does
        words = words[1:]
    if words:
        out["optimizer_args"] = key_values(words, "optimizer_args")


def _extra(data: dict[str, Any], out: dict[str, Any]) -> None:
    """lr_scheduler_type/args and additional_parameters: sd-scripts options, read by spellings."""
    spelled: dict[str, Any] = {}
    if not off(data.get("lr_scheduler_type")):
        spelled["lr_scheduler_type"] = data["lr_scheduler_type"]
    if not off(data.get("lr_scheduler_args")):
        spelled["lr_scheduler_args"] = shlex.split(str(data["lr_scheduler_args"]))
    option = None
    for word in shlex.split(str(data.get("additional_parameters") or "")):
        if word.startswith("--"):
            option = word[2:]
            if option not in ("lr_scheduler_type", "lr_scheduler_args", "optimizer_args", "network_args"):
                raise CurateError(
                    f"kohya_ss additional_parameters: --{option} is not one curate reads there "
                    "(it reads --lr_scheduler_type, --lr_scheduler_args, --optimizer_args, "
                    "--network_args); set it with --set"
                )
            spelled.setdefault(option, [] if option != "lr_scheduler_type" else "")
        elif option == "lr_scheduler_type":
            spelled[option] = word
        elif option is not None:
            spelled[option].append(word)
    if spelled:
        out.update(normalize(spelled))


def _length(data: dict[str, Any], out: dict[str, Any]) -> None:
    epochs, steps = data.get("max_train_epochs"), data.get("max_train_steps")
    if not off(epochs):
        out["max_train_epochs"] = number(epochs, "max_train_epochs")
    elif not off(steps):
        out["max_train_steps"] = number(steps, "max_train_steps")
    elif not off(data.get("epoch")):
        out["max_train_epochs"] = number(data["epoch"], "epoch")
    if not off(data.get("lr_warmup_steps")):
        out["lr_warmup_steps"] = number(data["lr_warmup_steps"], "lr_warmup_steps")
    elif not off(data.get("lr_warmup")):
        if "max_train_steps" not in out:
            raise CurateError(
                f"kohya_ss lr_warmup = {data['lr_warmup']}% of the steps, which depend on the dataset "
                "here (epochs): set lr_warmup_steps instead (--set lr_warmup_steps=N)"
            )
        out["lr_warmup_steps"] = round(
            float(number(data["lr_warmup"], "lr_warmup")) * out["max_train_steps"] / 100
        )
    if not off(data.get("train_batch_size")):
        out["batch_size"] = number(data["train_batch_size"], "train_batch_size")
    resolution = str(data.get("max_resolution") or "").replace(" ", "")
    if resolution:
        sides = resolution.split(",")
        if len(set(sides)) != 1:
            raise CurateError(
                f"kohya_ss max_resolution = {resolution!r}: curate trains square resolutions; "
                "set one side (--set resolution=N)"
            )
        out["resolution"] = number(sides[0], "max_resolution")


def _noise(data: dict[str, Any], out: dict[str, Any]) -> None:
    kind = data.get("noise_offset_type", "Original")
    if kind == "Multires":
        if not off(data.get("multires_noise_iterations")):
            out["multires_noise_iterations"] = number(
                data["multires_noise_iterations"], "multires_noise_iterations"
            )
            out["multires_noise_discount"] = number(
                data.get("multires_noise_discount", 0.3), "multires_noise_discount"
            )
        out.pop("adaptive_noise_scale", None)  # kohya_ss passes it with the Original offset only
        return
    if not off(data.get("noise_offset")):
        out["noise_offset"] = number(data["noise_offset"], "noise_offset")
        out["noise_offset_random_strength"] = bool(data.get("noise_offset_random_strength", False))
    else:
        out.pop("adaptive_noise_scale", None)


def _misc(data: dict[str, Any], out: dict[str, Any], messages: Messages) -> None:
    if data.get("v_parameterization") in (True, "true", "True"):
        out["v_parameterization"] = True  # false: the model's scheduler config decides, as for the builtin
    if data.get("sdxl_cache_text_encoder_outputs") in (True, "true", "True"):
        out["cache_text_encoder_outputs"] = True
    if data.get("save_model_as", "safetensors") != "safetensors":
        messages.append(("warning", f"save_model_as = {data['save_model_as']!r}: curate saves .safetensors"))
    if not off(data.get("stop_text_encoder_training")):
        messages.append(
            (
                "warning",
                "stop_text_encoder_training: kohya_ss itself ignores it ('not yet "
                "supported'); so does curate",
            )
        )
    prompts = data.get("sample_prompts")
    if prompts and Path(str(prompts)).expanduser().is_file():
        out["sample_prompts"] = str(prompts)
    elif prompts:
        messages.append(
            (
                "note",
                "sample_prompts holds prompt text, not a file: save it to prompts.txt and "
                "--set sample_prompts=prompts.txt to sample while training",
            )
        )


def read_recipe(path: Path, messages: Messages) -> dict[str, Any]:
    """The TrainConfig keys a kohya_ss GUI .json sets (module doc); notes and warnings go to `messages`."""
    data = load_json(path, messages)
    out: dict[str, Any] = {}
    _same(data, out)
    _network(data, out, messages)
    _optimizer(data, out, messages)
    _extra(data, out)
    _length(data, out)
    _noise(data, out)
    _misc(data, out, messages)
    _unread(path, data, messages)
    return out


def _family(key: str) -> bool:
    return key.startswith(FAMILIES) or key in FAMILY_KEYS or key.endswith("_checkbox")


def _unread(path: Path, data: dict[str, Any], messages: Messages) -> None:
    """Notes for the keys read as ignored; a warning for each that changes training."""
    reasons: dict[str, list[str]] = {}
    for key, value in data.items():
        if key in SAME or key in READ:
            continue
        if key.endswith("_checkbox") and value in (True, "true", "True"):
            raise CurateError(
                f"{path}: {key} is on: this recipe trains another model family; curate's builtin "
                "trainer trains SD 1.x/2.x/SDXL"
            )
        reason = next((r for r, keys in IGNORED.items() if key in keys), None)
        if key in UNSUPPORTED and not off(value) and DEFAULT_ON.get(key) != value:
            messages.append(
                ("warning", f"{key} = {value!r}: curate does not train with it; training differs")
            )
        elif key == "loss_type" and value not in ("l2", None, ""):
            messages.append(
                ("warning", f"loss_type = {value!r}: curate trains with the l2 loss; training differs")
            )
        elif reason is None and key in UNSUPPORTED:
            reason = "off in this recipe"
        elif reason is None and _family(key):
            reason = "another model family's setting"
        elif reason is None:
            messages.append(("warning", f"{key}: not a kohya_ss key curate knows; ignored"))
        if reason is not None:
            reasons.setdefault(reason, []).append(key)
    for reason, keys in reasons.items():
        messages.append(("note", f"{path.name}: ignored ({reason}): {', '.join(keys)}"))
