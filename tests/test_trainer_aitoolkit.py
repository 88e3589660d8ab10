"""`curate train --backend aitoolkit`: the job file ostris/ai-toolkit reads (issue 17).

Two checks of the file against ai-toolkit itself: every key written is one its config classes
read (tests/data/aitoolkit_config_keys.json, extracted from its source by
tests/data/extract_aitoolkit_keys.py: pinned, so it runs everywhere), and, when its source is at
hand (AI_TOOLKIT_SRC, a checkout or git directory), its own config loading and classes run on
the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from curate.cli import cli
from fixtures.scrape import jpeg, photo, write

KEYS = json.loads((Path(__file__).parent / "data" / "aitoolkit_config_keys.json").read_text())
TABLES = {"network": "NetworkConfig", "train": "TrainConfig", "model": "ModelConfig", "save": "SaveConfig",
          "sample": "SampleConfig"}
MIRROR = Path("/work/.mirror/ostris+ai-toolkit/repo")


def model_folder(root: Path, pipeline: str) -> Path:
    """A base model as ai-toolkit's plan sees it: the pipeline class names the family (no
    weights are read to plan a job)."""
    write(root / "model_index.json", json.dumps({"_class_name": pipeline, "_diffusers_version": "0.35.0"}))
    return root


def dataset(root: Path, captions: list[str]) -> Path:
    """A `curate layout`-shaped folder: img/10_sks woman, reg/1_woman."""
    for i, caption in enumerate(captions):
        write(root / "img" / "10_sks woman" / f"{i}.png", jpeg(photo("astronaut").convert("RGB")))
        write(root / "img" / "10_sks woman" / f"{i}.txt", caption)
    write(root / "reg" / "1_woman" / "r.png", jpeg(photo("camera").convert("RGB")))
    return root


def plan(tmp_path: Path, pipeline: str, *args: str, captions: list[str] | None = None) -> tuple[Any, dict]:
    ds = dataset(tmp_path / "ds", captions or ["sks woman standing in a field of flowers at dusk"] * 2)
    model = model_folder(tmp_path / "model", pipeline)
    res = CliRunner().invoke(cli, ["train", str(ds), "--model", str(model), "--out", str(tmp_path / "out"),
                                   "--backend", "aitoolkit", "--print-command", "--json", *args])
    assert res.exit_code == 0, res.output
    job = yaml.safe_load((tmp_path / "out" / "ai-toolkit-job.yaml").read_text(encoding="utf-8"))
    return res, job


def written_keys_are_read(job: dict[str, Any]) -> None:
    process = job["config"]["process"][0]
    assert set(process) <= set(KEYS["process"]), set(process) - set(KEYS["process"])
    for table, cls in TABLES.items():
        extra = set(process[table]) - set(KEYS["classes"][cls])
        assert not extra, f"{table}: ai-toolkit's {cls} never reads {extra}"
    for entry in process["datasets"]:
        read = set(KEYS["classes"]["DatasetConfig"])
        assert set(entry) <= read, set(entry) - read
    assert process["model"]["arch"] in KEYS["arch"]
    assert process["train"]["optimizer"] in KEYS["optimizers"]
    assert process["train"]["lr_scheduler"] in KEYS["schedulers"]


@pytest.mark.parametrize(("pipeline", "arch"), [
    ("FluxPipeline", "flux"), ("QwenImagePipeline", "qwen_image"), ("ZImagePipeline", "zimage"),
    ("WanPipeline", "wan21"), ("StableDiffusion3Pipeline", "sd3"), ("Flux2Pipeline", "flux2")])
def test_each_family_job_uses_only_keys_ai_toolkit_reads(tmp_path: Path, pipeline: str, arch: str) -> None:
    res, job = plan(tmp_path, pipeline, "--set", "network_dim=16", "--set", "network_alpha=8",
                    "--set", "optimizer=prodigy", "--set", "lr_scheduler=cosine", "--set", "learning_rate=1",
                    "--max-train-steps", "1200")
    written_keys_are_read(job)
    process = job["config"]["process"][0]
    assert job["job"] == "extension" and process["type"] == "sd_trainer"
    assert process["model"]["arch"] == arch
    assert process["network"] == {"type": "lora", "linear": 16, "linear_alpha": 8.0}
    assert process["train"]["steps"] == 1200 and process["train"]["noise_scheduler"] == "flowmatch"
    assert process["train"]["optimizer"] == "prodigy" and process["train"]["train_text_encoder"] is False
    train, reg = process["datasets"]
    assert train["folder_path"].endswith("10_sks woman") and train["num_repeats"] == 10
    assert train["default_caption"] == "sks woman" and train["caption_ext"] == "txt"
    assert reg["is_reg"] is True and reg["num_repeats"] == 1
    shell = json.loads(res.stdout)["shell"]
    assert shell.startswith("python run.py ") and shell.endswith("ai-toolkit-job.yaml")


def test_epochs_become_steps_and_unexpressible_settings_are_said(tmp_path: Path) -> None:
    res, job = plan(tmp_path, "FluxPipeline", "--max-train-epochs", "3", "--set", "batch_size=2",
                    "--set", "clip_skip=2", "--set", "lr_warmup_steps=50", "--set", "lr_scheduler=cosine")
    # 2 images x 10 repeats / batch 2 = 10 steps an epoch (reg images are not counted)
    assert job["config"]["process"][0]["train"]["steps"] == 30
    assert "train.clip_skip = 2 has no ai-toolkit setting" in res.output
    assert "lr_warmup_steps = 50: ai-toolkit's cosine schedule has no warm-up" in res.output


def test_tag_captions_on_a_flow_model_are_said(tmp_path: Path) -> None:
    tags = "sks, woman, 1girl, solo, long hair, smile, outdoors"
    res, _ = plan(tmp_path, "FluxPipeline", captions=[tags] * 2)
    assert "these captions read as tags" in res.output


def test_what_ai_toolkit_cannot_train_is_refused(tmp_path: Path) -> None:
    ds = dataset(tmp_path / "ds", ["a photo"])
    model = model_folder(tmp_path / "model", "FluxPipeline")
    ia3 = CliRunner().invoke(cli, ["train", str(ds), "--model", str(model), "--out", str(tmp_path / "o"),
                                   "--backend", "aitoolkit", "--network", "ia3", "--print-command"])
    assert ia3.exit_code == 2 and "ai-toolkit trains lora and lokr networks" in ia3.output
    unknown = CliRunner().invoke(cli, ["train", str(ds), "--model", "someone/unknown-model", "--out",
                                       str(tmp_path / "o"), "--backend", "aitoolkit", "--print-command"])
    assert unknown.exit_code == 2 and "not a folder here nor a Hub repo" in unknown.output
    assert not (tmp_path / "o").exists()  # a refused plan leaves nothing behind
    hub = CliRunner().invoke(cli, ["train", str(ds), "--model", "black-forest-labs/FLUX.1-dev", "--out",
                                   str(tmp_path / "o"), "--backend", "aitoolkit", "--print-command"])
    assert hub.exit_code == 0, hub.output
    # other backends still need the model here
    missing = CliRunner().invoke(cli, ["train", str(ds), "--model", "black-forest-labs/FLUX.1-dev", "--out",
                                       str(tmp_path / "o2"), "--print-command", "--backend", "kohya"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


# ---- ai-toolkit's own code on the file, when its source is here ----

def _source(tmp_path: Path) -> Path:
    given = os.environ.get("AI_TOOLKIT_SRC")
    src = Path(given) if given else MIRROR
    if (src / "toolkit" / "config_modules.py").is_file():
        return src
    if (src / "HEAD").is_file():  # a bare git directory: take the two files out of it
        out = tmp_path / "ai-toolkit"
        (out / "toolkit").mkdir(parents=True)
        for name in ("config.py", "config_modules.py"):
            text = subprocess.run(["git", "--git-dir", str(src), "show", f"HEAD:toolkit/{name}"],
                                  check=True, capture_output=True, text=True).stdout
            (out / "toolkit" / name).write_text(text, encoding="utf-8")
        return out
    pytest.skip("ai-toolkit source not found: set AI_TOOLKIT_SRC to an ostris/ai-toolkit checkout "
                "to load the job with its own code (the pinned key check above ran)")


def _stubs(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for what config_modules imports and the config classes never call (audio,
    quantisation tables, prompt embeddings): only the classes under test are ai-toolkit's."""
    def module(name: str, **attrs: Any) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)

    module("torchaudio")
    module("torchao")
    module("torchao.quantization")
    module("torchao.quantization.quant_primitives", _DTYPE_TO_BIT_WIDTH={})
    module("oyaml", **yaml.__dict__)
    toolkit = types.ModuleType("toolkit")
    toolkit.__path__ = [str(src / "toolkit")]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "toolkit", toolkit)
    module("toolkit.paths", TOOLKIT_ROOT=str(src))
    module("toolkit.audio")
    module("toolkit.audio.album_artwork", add_album_artwork=None)
    module("toolkit.prompt_utils", PromptEmbeds=object)
    for name in ("toolkit.config", "toolkit.config_modules"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_ai_toolkit_loads_the_job_with_its_own_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    _, _job = plan(tmp_path, "FluxPipeline", "--set", "optimizer=adamw8bit", "--set", "conv_dim=4",
                   "--set", "lr_scheduler=constant", "--set", "lr_warmup_steps=20")
    _stubs(src, monkeypatch)
    from toolkit import config_modules as cm  # type: ignore[import-not-found]
    from toolkit.config import get_config  # type: ignore[import-not-found]

    config = get_config(str(tmp_path / "out" / "ai-toolkit-job.yaml"))
    process = config["config"]["process"][0]
    network = cm.NetworkConfig(**process["network"])
    assert (network.type, network.linear, network.conv, network.conv_alpha) == ("lora", 8, 4, 1.0)
    train = cm.TrainConfig(**process["train"])
    assert train.optimizer == "adamw8bit" and train.lr_scheduler == "constant_with_warmup"
    assert train.lr_scheduler_params == {"num_warmup_steps": 20} and train.steps == 1600
    model = cm.ModelConfig(**process["model"])
    assert model.is_flux and model.name_or_path.endswith("model")
    cm.SaveConfig(**process["save"])
    cm.SampleConfig(**process["sample"])
    datasets = [cm.DatasetConfig(**d) for d in cm.preprocess_dataset_raw_config(process["datasets"])]
    assert [(d.num_repeats, d.is_reg, d.caption_ext, d.resolution) for d in datasets] == [
        (10, False, ".txt", 512), (1, True, ".txt", 512)]
