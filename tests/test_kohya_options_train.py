"""The pieces of issue 17 items 4 and 6 that need torch: noise_offset_random_strength against
sd-scripts' own noise code, caption_dropout_every_n_epochs, the kohya backend's LyCORIS iA3
preset against LyCORIS' own create_network, its offline tokenizer cache, and the seeds' kohya_ss
recipes training a few steps on the tiny model."""

from __future__ import annotations

import ast
import random
import shutil
import subprocess
import types
from dataclasses import replace
from pathlib import Path

import pytest
from backend_helpers import MIRROR, folder_dataset
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from curate.cli import cli  # noqa: E402
from curate.kohya import Subset  # noqa: E402
from curate.trainer.backends import kohya  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.data import process_caption  # noqa: E402
from curate.trainer.noise import make_noise  # noqa: E402

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
RECIPES = Path(__file__).parent / "data" / "kohya_ss"
pytestmark = pytest.mark.usefixtures("one_thread")


def _functions(path: str, *names: str) -> dict[str, object]:
    """Functions of sd-scripts' pinned source, exec'd on their own."""
    if not MIRROR.is_dir():
        pytest.skip("no sd-scripts mirror here")
    source = subprocess.run(
        ["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    tree = ast.parse(source)
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert len(found) == len(names)
    namespace: dict[str, object] = {"torch": torch, "Tuple": tuple, "Optional": object}
    exec(compile(ast.Module(body=found, type_ignores=[]), path, "exec"), namespace)
    return namespace


def test_noise_offset_random_strength_matches_sd_scripts() -> None:
    from diffusers import DDPMScheduler

    custom = _functions("library/custom_train_functions.py", "apply_noise_offset")
    util = _functions("library/train_util.py", "get_noise_noisy_latents_and_timesteps", "get_timesteps")
    util["custom_train_functions"] = types.SimpleNamespace(**custom)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for adaptive in (None, 0.02):
        config = TrainConfig(
            noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=adaptive
        )
        args = types.SimpleNamespace(
            noise_offset=0.1,
            noise_offset_random_strength=True,
            adaptive_noise_scale=adaptive,
            multires_noise_iterations=None,
            min_timestep=None,
            max_timestep=None,
            ip_noise_gamma=None,
        )
        torch.manual_seed(7)  # sd-scripts draws from the global generator, in the same order as ours
        theirs = util["get_noise_noisy_latents_and_timesteps"](args, DDPMScheduler(), latents)[0]
        ours = make_noise(latents, config, torch.Generator().manual_seed(7))
        assert torch.equal(ours, theirs)
        fixed = make_noise(
            latents, replace(config, noise_offset_random_strength=False), torch.Generator().manual_seed(7)
        )
        assert not torch.equal(fixed, ours)  # the option changes the noise


def test_caption_dropout_every_n_epochs_as_sd_scripts() -> None:
    subset = Subset(image_dir=Path("."), caption_dropout_every_n_epochs=3)
    dropped = [
        epoch for epoch in range(1, 8) if process_caption("sks, red", subset, random.Random(0), epoch) == ""
    ]
    assert dropped == [3, 6]  # sd-scripts: current_epoch (from 1) % N == 0
    if MIRROR.is_dir():
        source = subprocess.run(
            ["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:library/train_util.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "and self.current_epoch % subset.caption_dropout_every_n_epochs == 0" in source
        assert (
            "current_epoch.value = epoch + 1"
            in subprocess.run(
                ["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:train_network.py"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )


@pytest.mark.parametrize("on_input", [True, False])
def test_kohya_ia3_preset_adapts_the_builtin_modules(tiny_sd: Path, tmp_path: Path, on_input: bool) -> None:
    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    from curate.trainer.model import load_models
    from curate.trainer.networks import create_network

    config = TrainConfig(network="ia3", ia3_train_on_input=on_input)
    plan = kohya.plan(folder_dataset(tmp_path / "ds"), tiny_sd, tmp_path / "out", config)
    preset = tmp_path / "out" / "lycoris-ia3-preset.toml"
    assert f"preset={preset}" in (plan.command or [])
    models = load_models(tiny_sd, torch.device("cpu"))
    ours = create_network("ia3", models.unet, models.text_encoders, train_on_input=on_input)
    mine = {a.kohya_name: bool(a.input_side) for a in ours.adapters()}
    # what sd-scripts' train_network.py calls: create_network(1.0, dim, alpha, vae, te, unet, **network_args)
    net = lycoris_kohya.create_network(
        1.0, None, 1.0, None,
        models.text_encoders[0],
        models.unet,
        algo="ia3",
        preset=str(preset),
        train_on_input=str(on_input),
    )
    # LyCORIS names the text encoder's modules below text_model: the same layers
    theirs = {
        m.lora_name.replace("lora_te_encoder_", "lora_te_text_model_encoder_"): bool(m.train_input)
        for m in net.unet_loras + net.text_encoder_loras
    }
    assert len(mine) == 41 and theirs == mine
    full = lycoris_kohya.create_network(
        1.0, None, 1.0, None, models.text_encoders[0], models.unet, algo="ia3", preset="attn-mlp"
    )
    assert len(full.unet_loras + full.text_encoder_loras) > len(mine)  # what no preset file would adapt


def test_kohya_tokenizer_cache_loads_as_sd_scripts_loads_it(tiny_sd: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    plan = kohya.plan(folder_dataset(tmp_path / "ds"), tiny_sd, tmp_path / "out", TrainConfig())
    command = plan.command or []
    cache = Path(command[command.index("--tokenizer_cache_dir") + 1])
    assert not [w for w in plan.warnings if "tokenizer" in w]
    # sd-scripts' strategy_base._load_tokenizer: os.path.join(cache, model_id.replace("/", "_"))
    local = cache / "openai/clip-vit-large-patch14".replace("/", "_")
    theirs = CLIPTokenizer.from_pretrained(str(local))
    ours = CLIPTokenizer.from_pretrained(str(tiny_sd / "tokenizer"))
    text = "sks, a photo of a red coffee cup"
    assert theirs(text).input_ids == ours(text).input_ids


def test_seed_recipes_train_a_few_steps(tiny_sd: Path, photos_dataset: Path, tmp_path: Path) -> None:
    from curate.trainer.formats import load_network

    for name, algo in (("ia3_prodigy_2023-09.json", "ia3"), ("ia3_prodigy_2023-07.json", "ia3"),
                       ("loha_dadaptation_2023-04.json", "loha")):
        data = tmp_path / name / "data"
        shutil.copytree(photos_dataset, data)  # cache_latents_to_disk writes beside the images
        out = tmp_path / name / "out"
        result = CliRunner().invoke(
            cli,
            [
                "train",
                str(data),
                "--model",
                str(tiny_sd),
                "--out",
                str(out),
                "--config",
                str(RECIPES / name),
                "--set", "resolution=64", "--set", "max_train_epochs=2", "--set",
                "gradient_accumulation_steps=1", "--set", "gradient_checkpointing=false", "--set",
                "max_token_length=75", "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        tensors, meta = load_network(out / "last.safetensors")
        assert meta["ss_network_module"] == "lycoris.kohya" and algo in meta.get("ss_network_args", ""), name
        assert any(float(t.abs().sum()) > 0 for t in tensors.values() if t.dtype.is_floating_point)
