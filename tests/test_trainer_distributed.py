"""Data-parallel training: `accelerate launch --multi_gpu --num_processes 2 -m curate train`, here on
two CPU processes talking gloo. Both ranks must end with the same weights, rank 0 alone writes,
and each step takes one batch per process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

from PIL import Image

from fixtures.tiny_sd import build_tiny_sd

SETTINGS = ["--set", "resolution=64", "--set", "min_bucket_reso=64", "--set", "batch_size=1",
            "--set", "network_dim=4", "--set", "save_state=true", "--max-train-steps", "3", "--json"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _train(args: list[str], cwd: Path, processes: int) -> dict[str, object]:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*launcher, "-m", "curate", "train", *args, *SETTINGS], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, object] = json.loads(done.stdout)  # one JSON document: rank 1 prints nothing
    return data


def test_two_processes_agree_and_write_one_file(tmp_path: Path) -> None:
    import skimage.data

    build_tiny_sd(tmp_path / "model")
    folder = tmp_path / "data" / "1_sks"
    folder.mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo.resize((64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks, {name}", encoding="utf-8")

    two = _train(["data", "--model", "model", "--out", "two"], tmp_path, 2)
    digests = two["network_digests"]
    assert two["processes"] == 2 and isinstance(digests, list) and len(digests) == 2
    assert digests[0] == digests[1]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["last-config.toml", "last-state",
                                                                     "last.safetensors"]
    state = json.loads((tmp_path / "two" / "last-state" / "state.json").read_text(encoding="utf-8"))
    assert state["world_size"] == 2 and state["step"] == 3

    one = _train(["data", "--model", "model", "--out", "one"], tmp_path, 1)
    # four batches of one image: each process takes two of them per epoch
    assert (one["steps_per_epoch"], two["steps_per_epoch"]) == (4, 2)
    assert one["network_digests"] != digests  # a step of two batches is not a step of one
