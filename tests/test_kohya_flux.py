"""--backend kohya for FLUX.1 and SD3/3.5 (issue 17): the family from the base model, the text
encoder / autoencoder files its sd-scripts script loads, and a command whose every option that
script's own parser accepts (flux_options / sd3_options, extracted from sd-scripts' source)."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from backend_helpers import IA3_PRODIGY, RICH, SPEC, cli_train, fake_model, folder_dataset, sd_args
from PIL import Image

from curate.errors import CurateError
from curate.trainer.backends import builtin, kohya
from curate.trainer.backends.kohya_flow import FAMILY_OPTIONS
from curate.trainer.backends.kohya_model import flow_family, safetensors_header
from curate.trainer.config import TrainConfig
from fixtures.tiny_flux import build_tiny_flux, build_tiny_flux_diffusers
from fixtures.tiny_sd3 import build_tiny_sd3

FLUX = "flux_train_network.py"
SD3 = "sd3_train_network.py"
# the rich configs of the SD tests, iA3 as LoRA (iA3 is refused for these families)
CONFIGS = {**{k: v for k, v in RICH.items() if v.network == "lora"},
           "prodigy_cawr": replace(IA3_PRODIGY, network="lora")}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return folder_dataset(tmp_path / "ds")


@pytest.fixture
def flux(tmp_path: Path) -> dict[str, Path]:
    return build_tiny_flux(tmp_path / "flux")


def args_of(plan: kohya.Plan, script: str):  # type: ignore[no-untyped-def]
    return sd_args(plan.command or [], script=script)


def test_extracted_lists_know_the_family_options() -> None:
    for key, script in (("flux_options", FLUX), ("sd3_options", SD3)):
        options = SPEC[key]
        assert SPEC[key.replace("options", "script")] == script
        # both scripts start from train_network.setup_parser(): everything it takes, plus their own
        assert {k: v for k, v in options.items() if k in SPEC["options"]} == SPEC["options"]
        assert {"--clip_l", "--t5xxl", "--blocks_to_swap", "--cache_text_encoder_outputs"} <= set(options)
    assert {"--ae", "--guidance_scale", "--model_prediction_type", "--discrete_flow_shift",
            "--apply_t5_attn_mask"} <= set(SPEC["flux_options"])
    assert SPEC["flux_options"]["--timestep_sampling"]["choices"] == ["sigma", "uniform", "sigmoid", "shift",
                                                                      "flux_shift"]
    assert {"--clip_g", "--vae", "--training_shift", "--weighting_scheme"} <= set(SPEC["sd3_options"])
    assert "--clip_g" not in SPEC["flux_options"] and "--ae" not in SPEC["sd3_options"]
    assert FAMILY_OPTIONS["sd3"][1] in SPEC["sd3_options"]["--weighting_scheme"]["choices"]


def test_family_from_the_file_header(tmp_path: Path, flux: dict[str, Path]) -> None:
    assert flow_family(safetensors_header(flux["model"])) == "flux"
    comfy = build_tiny_flux(tmp_path / "prefixed", prefix="model.diffusion_model.")
    assert flow_family(safetensors_header(comfy["model"])) == "flux"
    assert flow_family(safetensors_header(build_tiny_sd3(tmp_path / "sd3")["model"])) == "sd3"
    assert flow_family(safetensors_header(flux["clip_l"])) is None
    # the fixtures are deterministic: the same call gives the same bytes
    again = build_tiny_flux(tmp_path / "again")
    assert all(again[k].read_bytes() == flux[k].read_bytes() for k in flux)
    assert sum(p.stat().st_size for p in flux.values()) < 100_000


@pytest.mark.parametrize("name", CONFIGS)
def test_flux_command_is_one_flux_train_network_accepts(name: str, dataset: Path, flux: dict[str, Path],
                                                        tmp_path: Path) -> None:
    plan = kohya.plan(dataset, flux["model"], tmp_path / "out", CONFIGS[name])
    args = args_of(plan, FLUX)
    assert Path(plan.command[4]).name == FLUX  # type: ignore[index]
    assert args.pretrained_model_name_or_path == str(flux["model"])
    assert (args.clip_l, args.t5xxl, args.ae) == (str(flux["clip_l"]), str(flux["t5xxl"]), str(flux["ae"]))
    assert args.network_module == "networks.lora_flux"
    # docs/flux_train_network.md's recommendations for LoRA
    assert (args.guidance_scale, args.timestep_sampling, args.model_prediction_type) == (
        1.0, "flux_shift", "raw")
    # SD-only settings are not written: the FLUX trainer does not read them
    assert not (args.v2 or args.v_parameterization) and args.clip_skip is None and args.min_snr_gamma is None
    assert args.max_token_length is None and args.noise_offset is None
    assert shlex.split(plan.shell()) == plan.command


def test_flux_values_and_warnings(dataset: Path, flux: dict[str, Path], tmp_path: Path) -> None:
    from backend_helpers import LORA_CONV

    plan = kohya.plan(dataset, flux["model"], tmp_path / "out", LORA_CONV)
    args = args_of(plan, FLUX)
    assert (args.network_dim, args.network_alpha, args.network_dropout) == (16, 8.0, 0.1)
    # lora_flux.create_network reads an unset conv_alpha as 1.0, and so is it written
    assert args.network_args == ["conv_dim=4", "conv_alpha=1"] and args.network_train_unet_only
    assert (args.optimizer_type, args.max_train_epochs, args.mixed_precision) == ("AdamW8bit", 10, "bf16")
    assert args.cache_latents_to_disk and args.gradient_checkpointing and args.save_state
    warned = " ".join(plan.warnings)
    for key in ("clip_skip", "min_snr_gamma", "noise_offset", "v_parameterization", "max_token_length"):
        assert f"train.{key} = " in warned, key
    assert "does not use it" in warned


def test_cli_print_command_for_flux_and_missing_files(dataset: Path, flux: dict[str, Path],
                                                      tmp_path: Path) -> None:
    result = cli_train(str(dataset), "--model", str(flux["model"]), "--out", str(tmp_path / "out"),
                       "--backend", "kohya", "--print-command", "--set", "train_text_encoder=false")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"accelerate launch --num_cpu_threads_per_process 1 {FLUX} ")
    assert sd_args(shlex.split(line), script=FLUX).network_module == "networks.lora_flux"
    flux["t5xxl"].unlink()
    out = tmp_path / "refused"
    result = cli_train(str(dataset), "--model", str(flux["model"]), "--out", str(out), "--backend", "kohya",
                       "--print-command")
    assert result.exit_code == 2
    (error,) = result.stderr.splitlines()
    assert "set t5xxl = PATH" in error and "t5xxl_fp16.safetensors" in error and "clip_l" not in error
    assert not out.exists() or not any(out.iterdir())  # a refused plan writes nothing
    result = cli_train(str(dataset), "--model", str(flux["model"]), "--out", str(out), "--backend", "kohya",
                       "--print-command", "--set", f"t5xxl={flux['clip_l']}")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "is a CLIP-L text encoder, not the T5-XXL text encoder" in result.stderr


def test_explicit_files_win_and_are_checked(dataset: Path, flux: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_flux(tmp_path / "elsewhere")
    plan = kohya.plan(dataset, flux["model"], tmp_path / "o", TrainConfig(t5xxl=str(other["t5xxl"]),
                                                                          ae=str(other["ae"])))
    args = args_of(plan, FLUX)
    assert (args.t5xxl, args.ae, args.clip_l) == (str(other["t5xxl"]), str(other["ae"]), str(flux["clip_l"]))
    assert not any("t5xxl" in w or "train.ae" in w for w in plan.warnings)
    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(other["t5xxl"].read_bytes())
    for value, reason in ((str(shard), "one shard"), (str(tmp_path), "a folder"),
                          (str(tmp_path / "no"), "no such"),
                          (str(other["ae"]), "is a 16-channel autoencoder")):
        with pytest.raises(CurateError, match=reason):
            kohya.plan(dataset, flux["model"], tmp_path / "o", TrainConfig(t5xxl=value))


def test_comfyui_tree_and_prefixed_model(dataset: Path, tmp_path: Path) -> None:
    files = build_tiny_flux(tmp_path / "comfy", comfy=True, prefix="model.diffusion_model.")
    # a broken download beside them is not taken for one of them, nor refuses the plan
    (tmp_path / "comfy" / "models" / "vae" / "partial.safetensors").write_bytes(b"\xff" * 12)
    plan = kohya.plan(dataset, tmp_path / "comfy" / "models", tmp_path / "o", TrainConfig())
    args = args_of(plan, FLUX)
    assert args.pretrained_model_name_or_path == str(files["model"])
    assert (args.clip_l, args.t5xxl, args.ae) == (str(files["clip_l"]), str(files["t5xxl"]), str(files["ae"]))
    # the model file itself: its ComfyUI siblings (text_encoders/, vae/) are found too
    direct = kohya.plan(dataset, files["model"], tmp_path / "o", TrainConfig())
    assert args_of(direct, FLUX).ae == str(files["ae"])


def test_flux_diffusers_folder(dataset: Path, flux: dict[str, Path], tmp_path: Path) -> None:
    folder = build_tiny_flux_diffusers(tmp_path / "FLUX.1-dev")
    with pytest.raises(CurateError) as refused:
        kohya.plan(dataset, folder, tmp_path / "o", TrainConfig())
    text = str(refused.value)
    assert "text_encoder_2/ is split into shards" in text and "set ae = PATH" in text
    assert "diffusers-layout VAE" in text and "set clip_l" not in text
    given = TrainConfig(t5xxl=str(flux["t5xxl"]), ae=str(flux["ae"]))
    plan = kohya.plan(dataset, folder, tmp_path / "o", given)
    args = args_of(plan, FLUX)
    assert args.pretrained_model_name_or_path == str(folder)
    assert args.clip_l == str(folder / "text_encoder" / "model.safetensors")
    # strategy_flux's tokenizers from the folder, so the command needs no Hub
    assert args.tokenizer_cache_dir == str(tmp_path / "o" / "tokenizer-cache")
    assert (tmp_path / "o" / "tokenizer-cache" / "google_t5-v1_1-xxl" / "tokenizer_config.json").is_file()
    (folder / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors").unlink()
    with pytest.raises(CurateError, match=r"flux1-dev\.safetensors"):
        kohya.plan(dataset, folder, tmp_path / "o", given)


def test_sd3_single_file_and_its_encoders(dataset: Path, tmp_path: Path) -> None:
    files = build_tiny_sd3(tmp_path / "sd3")
    plan = kohya.plan(dataset, files["model"], tmp_path / "o", TrainConfig(train_text_encoder=False))
    args = args_of(plan, SD3)
    assert args.network_module == "networks.lora_sd3" and args.weighting_scheme == "uniform"
    assert (args.clip_l, args.clip_g, args.t5xxl) == (str(files["clip_l"]), str(files["clip_g"]),
                                                      str(files["t5xxl"]))
    assert args.vae is None  # the checkpoint holds first_stage_model.*
    inside = build_tiny_sd3(tmp_path / "incl", with_encoders=True, separate=False)["model"]
    args = args_of(kohya.plan(dataset, inside, tmp_path / "o", TrainConfig()), SD3)
    assert (args.clip_l, args.clip_g, args.t5xxl, args.vae) == (None, None, None, None)
    bare = build_tiny_sd3(tmp_path / "bare", vae=False, separate=False)["model"]
    with pytest.raises(CurateError, match=r"set clip_l = PATH.*set clip_g = PATH.*set t5xxl.*set ae = PATH"):
        kohya.plan(dataset, bare, tmp_path / "o", TrainConfig())
    vae = build_tiny_flux(tmp_path / "ae")["ae"]
    config = TrainConfig(clip_l=str(files["clip_l"]), clip_g=str(files["clip_g"]), t5xxl=str(files["t5xxl"]),
                         ae=str(vae))
    args = args_of(kohya.plan(dataset, bare, tmp_path / "o", config), SD3)
    assert (args.vae, args.clip_g) == (str(vae), str(files["clip_g"]))
    with pytest.raises(CurateError, match="is a CLIP-L text encoder, not the CLIP-G"):
        kohya.plan(dataset, bare, tmp_path / "o", replace(config, clip_g=str(files["clip_l"])))


def test_sd3_cli_print_command(dataset: Path, tmp_path: Path) -> None:
    files = build_tiny_sd3(tmp_path / "sd3")
    result = cli_train(str(dataset), "--model", str(files["model"]), "--out", str(tmp_path / "out"),
                       "--backend", "kohya", "--print-command", "--set", "min_snr_gamma=5")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    args = sd_args(shlex.split(line), script=SD3)
    assert args.network_module == "networks.lora_sd3" and args.min_snr_gamma is None
    assert "min_snr_gamma" in result.stderr


def test_models_the_scripts_cannot_load_are_refused(dataset: Path, tmp_path: Path) -> None:
    sd3 = fake_model(tmp_path / "sd3-diffusers", index={"_class_name": "StableDiffusion3Pipeline"})
    with pytest.raises(CurateError, match="not a diffusers folder"):
        kohya.plan(dataset, sd3, tmp_path / "o", TrainConfig())
    unprefixed = tmp_path / "mmdit.safetensors"
    header = json.dumps({"joint_blocks.0.x_block.attn.qkv.weight": {"dtype": "F16", "shape": [1],
                                                                    "data_offsets": [0, 2]}}).encode()
    unprefixed.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    with pytest.raises(CurateError, match=r"model\.diffusion_model\. prefix"):
        kohya.plan(dataset, unprefixed, tmp_path / "o", TrainConfig())
    flux = build_tiny_flux(tmp_path / "flux")
    with pytest.raises(CurateError, match=r"networks\.lora_flux"):
        kohya.plan(dataset, flux["model"], tmp_path / "o", TrainConfig(network="ia3"))
    with pytest.raises(CurateError, match="multiple of 32"):
        kohya.plan(dataset, flux["model"], tmp_path / "o", TrainConfig(bucket_reso_steps=48))
    build_tiny_flux(tmp_path / "two" / "a")["model"].rename(tmp_path / "two" / "flux-a.safetensors")
    build_tiny_flux(tmp_path / "two" / "b")["model"].rename(tmp_path / "two" / "flux-b.safetensors")
    with pytest.raises(CurateError, match=r"several FLUX\.1/SD3 models"):
        kohya.plan(dataset, tmp_path / "two", tmp_path / "o", TrainConfig())


def test_tag_captions_are_said_for_flux(tmp_path: Path, flux: dict[str, Path]) -> None:
    for kind, text in (("tags", "1girl, solo, red hair, smile, outdoors, sky"),
                       ("sentences", "A photo of a woman with red hair smiling outdoors under a clear sky.")):
        folder = tmp_path / kind / "img" / "5_sks"
        folder.mkdir(parents=True)
        for n in range(2):
            Image.new("RGB", (64, 64)).save(folder / f"{n}.png")
            (folder / f"{n}.txt").write_text(text, encoding="utf-8")
        plan = kohya.plan(tmp_path / kind, flux["model"], tmp_path / f"out-{kind}", TrainConfig())
        said = [w for w in plan.warnings if "read as tags" in w]
        assert bool(said) == (kind == "tags"), plan.warnings


def test_family_files_on_other_families_warn(dataset: Path, flux: dict[str, Path], tmp_path: Path) -> None:
    config = TrainConfig(t5xxl=str(flux["t5xxl"]))
    plan = kohya.plan(dataset, fake_model(tmp_path / "sd15"), tmp_path / "o", config)
    assert [w for w in plan.warnings if w.startswith("train.t5xxl")] == [
        f"train.t5xxl = {flux['t5xxl']}: used for FLUX.1/SD3 only; train_network.py does not read it"]
    assert "--t5xxl" not in (plan.command or [])
    warnings = builtin.plan(dataset, tmp_path / "m", tmp_path / "o", config).warnings
    assert any("train.t5xxl" in w for w in warnings)
