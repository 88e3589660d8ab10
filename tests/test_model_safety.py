"""Hostile inputs to the model loaders and taggers (issue 14, items 6, 9, 12, 17, 19, 20).

Broken base models are copies of the tiny SD fixture corrupted one file at a time; every one must
end in one `error:` line naming the file, never "internal error". Pickles are refused unless
allowed, and a pickle carrying code is refused even then, with its payload never run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner, Result  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from curate.cli import cli  # noqa: E402
from curate.stages.ingest import ImportConfig, import_sources  # noqa: E402
from curate.stages.tag import TagConfig, tag  # noqa: E402
from curate.tagging.captions import caption_of  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.workspace import Workspace  # noqa: E402
from fixtures.scrape import jpeg, photo, write  # noqa: E402
from fixtures.tiny_tagger import build_tiny_tagger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-steps", "1", "--set", "resolution=64", "--set", "min_bucket_reso=64",
         "--set", "max_bucket_reso=128", "--set", "network_dim=4"]

pytestmark = pytest.mark.usefixtures("one_thread")


class WritesMarker:
    """Unpickling this runs os.system: the marker file appears if anyone unpickles it for real."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def one_error_line(res: Result, *needles: str) -> str:
    """The run failed with exit 2 and exactly one line, `error: ...`, holding every needle."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "internal error" not in lines[0] and "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train(dataset: Path, model: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["train", str(dataset), "--model", str(model), "--out", str(out),
                                    *SMALL, *extra])


# --- item 9: broken base models -------------------------------------------------------------

def _index_is_a_list(model: Path) -> Path:
    (model / "model_index.json").write_text("[]", encoding="utf-8")
    return model / "model_index.json"


def _scheduler_not_utf8(model: Path) -> Path:
    path = model / "scheduler" / "scheduler_config.json"
    path.write_bytes(b'\xff\xfe{"prediction_type": "eps\x80"}')
    return path


def _unet_config_wrong_type(model: Path) -> Path:
    path = model / "unet" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["layers_per_block"] = "two"  # a string where diffusers does arithmetic
    path.write_text(json.dumps(config), encoding="utf-8")
    return model / "unet"


def _truncated_vae_weights(model: Path) -> Path:
    path = model / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    return model / "vae"


@pytest.mark.parametrize("corrupt", [_index_is_a_list, _scheduler_not_utf8, _unet_config_wrong_type,
                                     _truncated_vae_weights])
def test_a_broken_base_model_is_one_line_naming_the_file(corrupt: Any, tiny_sd: Path, photos_dataset: Path,
                                                         tmp_path: Path) -> None:
    model = shutil.copytree(tiny_sd, tmp_path / "model")
    named = corrupt(model)
    one_error_line(train(photos_dataset, model, tmp_path / "out"), str(named))
    assert not (tmp_path / "out" / "last.safetensors").exists()


def _text_encoder_as_pickle(model: Path, payload: Any = None) -> Path:
    folder = model / "text_encoder"
    state: dict[str, Any] = dict(load_file(folder / "model.safetensors"))
    if payload is not None:
        state["payload"] = payload
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_pickle_only_component_needs_allow_pickle(tiny_sd: Path, photos_dataset: Path,
                                                    tmp_path: Path) -> None:
    model = shutil.copytree(tiny_sd, tmp_path / "model")
    folder = _text_encoder_as_pickle(model)
    line = one_error_line(train(photos_dataset, model, tmp_path / "out"), str(folder), "pytorch_model.bin",
                          "--allow-pickle", ".safetensors")
    assert "convert" in line
    res = CliRunner().invoke(cli, ["lora", "extract", "--base", str(model), "--tuned", str(tiny_sd),
                                   "--dim", "2", "--out", str(tmp_path / "x.safetensors")])
    one_error_line(res, str(folder), "--allow-pickle")
    res = train(photos_dataset, model, tmp_path / "out", "--allow-pickle")  # its tensors only: trains
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "last.safetensors").is_file()


def test_a_pickle_with_code_is_refused_and_never_run(tiny_sd: Path, photos_dataset: Path,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # a diffusers folder whose text encoder pickle carries a payload, even with --allow-pickle
    model = shutil.copytree(tiny_sd, tmp_path / "model")
    folder = _text_encoder_as_pickle(model, WritesMarker(marker))
    one_error_line(train(photos_dataset, model, tmp_path / "out", "--allow-pickle"), str(folder),
                   "pickled Python", ".safetensors")
    # a single-file .ckpt that is nothing but the payload: refused unread, then refused unbuilt
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {"x": WritesMarker(marker)}}))
    one_error_line(train(photos_dataset, ckpt, tmp_path / "out"), str(ckpt), "--allow-pickle")
    one_error_line(train(photos_dataset, ckpt, tmp_path / "out", "--allow-pickle"), str(ckpt),
                   "pickled Python", ".safetensors")
    assert not marker.exists()


def test_a_resume_state_with_code_is_refused_and_never_run(tiny_sd: Path, photos_dataset: Path,
                                                           tmp_path: Path) -> None:
    out, marker = tmp_path / "out", tmp_path / "pwned"
    assert train(photos_dataset, tiny_sd, out, "--save-state").exit_code == 0
    state = out / "last-state"
    (state / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": WritesMarker(marker)}))
    res = train(photos_dataset, tiny_sd, tmp_path / "again", "--resume", str(state), "--max-train-steps", "2")
    one_error_line(res, str(state), "pickled Python")
    assert not marker.exists()


# --- item 6: terminal escapes from a file's metadata ----------------------------------------

def test_lora_info_escapes_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    tensors = {"lora_unet_x.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_x.lora_up.weight": torch.zeros(8, 4), "lora_unet_x.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path), metadata={
        "ss_sd_model_name": "base\x1b[31mRED\x1b]0;title\x07", "ss_output_name": "out\x9b2J",
        "ss_tag_frequency": json.dumps({"10_x\x1b[2J": {"tag\x1b[5m": 3, "[/closing]": 2}}),
        "ss_dataset_dirs": json.dumps({"dir\x1b[1m": {"n_repeats": 1, "img_count": 1}})})
    for extra in ([], ["--json"], ["-v"]):
        res = CliRunner().invoke(cli, ["lora", "info", str(path), *extra])
        assert res.exit_code == 0, res.output
        assert not any(c in res.output for c in "\x1b\x07\x9b"), repr(res.output)
        assert "[/closing]" in res.output  # rich markup in a tag is shown, not interpreted
    assert "base\\x1b[31mRED" in res.output  # the last run's table: escaped, and visible
    data = json.loads(CliRunner().invoke(cli, ["lora", "info", str(path), "--json"]).output)
    assert data["base_model"]["ss_sd_model_name"] == "base\\x1b[31mRED\\x1b]0;title\\x07"
    assert data["training"]["output_name"] == "out\\x9b2J"
    assert list(data["folders"]) == ["dir\\x1b[1m"]


# --- item 17: Ctrl-C exits non-zero --------------------------------------------------------

def test_ctrl_c_in_curate_train_exits_130_with_a_resumable_state(tiny_sd: Path, photos_dataset: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = loop.train_step

    def step_then_ctrl_c(run: Any, batches: Any, config: Any, step: int) -> float:
        loss = real_step(run, batches, config, step)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, through the loop's own handler
        return loss

    monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["train", str(photos_dataset), "--model", str(tiny_sd), "--out", str(out),
                                   *SMALL, "--max-train-steps", "6"])
    assert res.exit_code == 130, res.output
    assert "interrupted at step 2" in res.output
    assert (out / "last-step00000002.safetensors").is_file() and (out / "last-step00000002-state").is_dir()
    assert not (out / "last.safetensors").exists()


# --- tagger: a broken model file, offline Hub, a changed threshold --------------------------

@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def _images(root: Path) -> Path:
    for name in ("astronaut", "chelsea", "coffee"):
        write(root / f"{name}.jpg", jpeg(photo(name).convert("RGB")))
    return root


def _no_input_model(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor("v", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32))
    graph = helper.make_graph([helper.make_node("Constant", [], ["output"], value=value)], "g", [],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.mark.parametrize("kind", ["garbage", "no input"])
def test_a_broken_tagger_model_is_one_line(kind: str, tagger: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = shutil.copytree(tagger, tmp_path / "wd-broken")
    if kind == "garbage":
        (model / "model.onnx").write_bytes(b"not a protobuf \x00\xff" * 50)
    else:
        _no_input_model(model / "model.onnx")
    res = CliRunner().invoke(cli, ["tag", str(_images(tmp_path / "raw")), "--model", str(model)])
    one_error_line(res, str(model / "model.onnx"))


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_default_tagger_offline_says_so_at_once(env: dict[str, str], tmp_path: Path) -> None:
    """Nothing listens on port 9 of this machine: the old code retried it for ~25 s; the timeout
    below is not a timing assertion, it only keeps such a wait from hanging the suite."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    clean |= {"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-m", "curate", "tag", str(_images(tmp_path / "raw"))],
                          capture_output=True, text=True, env=clean, timeout=20, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "torchvision" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: cannot download SmilingWolf/"), proc.stderr
    why = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else "127.0.0.1:9 cannot be reached"
    assert why in lines[0]
    assert "Retrying" not in proc.stderr


def _captions(root: Path) -> dict[str, str]:
    with Workspace.open(root) as ws:
        return {r.sha256: caption_of(r) or "" for r in ws.active_records()}  # compiled from annotations


def test_a_changed_threshold_reselects_the_tagged_images(tagger: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    import_sources(ws, [_images(tmp_path / "raw")], ImportConfig(workers=1))
    first = tag(ws, TagConfig(model=str(tagger), threshold=0.2))
    assert first.counts == {"already tagged": 0, "tagged": 3}
    loose = _captions(ws)
    res = CliRunner().invoke(cli, ["tag", str(ws), "--model", str(tagger), "--threshold", "0.6", "-q"])
    assert res.exit_code == 0, res.output
    assert "re-selected 3 already tagged images from stored probabilities (threshold 0.6)" in res.output
    assert "threshold 0.2 -> 0.6" in res.output
    strict = _captions(ws)
    assert strict.keys() == loose.keys()
    assert sum(len(t.split(", ")) for t in strict.values()) < sum(len(t.split(", ")) for t in loose.values())
    # the same setting again: nothing to re-select, the captions stay
    again = tag(ws, TagConfig(model=str(tagger), threshold=0.6))
    assert again.counts == {"already tagged": 3} and not again.notes
    assert _captions(ws) == strict
    # back to the looser threshold: exactly the first captions, from the stored probabilities
    back = tag(ws, TagConfig(model=str(tagger), threshold=0.2))
    assert back.counts == {"already tagged": 3, "re-selected": 3}
    assert _captions(ws) == loose
