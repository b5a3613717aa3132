"""`plexbench model info` and `plexbench list models` through the real CLI (subprocess): bad
checkpoints give one line and exit code 2; the registry rows and info numbers are right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from plexbench import fileio
from plexbench.models import ModelConfig, param_shapes
from plexbench.models.checkpoint import write_random_checkpoint
from plexbench.models.registry import MODELS, get_model, list_rows

ZOO_NAME = "det-mini"


def plexbench(*args):
    env = {**os.environ, "PLEXBENCH_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "plexbench", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plexbench: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    config = get_model(ZOO_NAME).config
    (d / "text.npz").write_text("hello")
    write_random_checkpoint(config, d / "good.npz")
    data = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) * 2 // 3])
    np.savez(d / "object.npz", cls=np.array([None, 1], dtype=object))
    other = ModelConfig(image_size=28, patch_size=7, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
                        num_classes=10)
    write_random_checkpoint(other, d / "other.npz")
    return d


@pytest.mark.parametrize("name,fragments", [
    ("text.npz", ["not an .npz", "text.npz"]),
    ("truncated.npz", ["truncated", "truncated.npz"]),
    ("object.npz", ["object arrays"]),
    ("other.npz", ["does not match the model config", "shape mismatch", "missing key"]),
    ("absent.npz", ["not found"]),
])
def test_bad_checkpoint_is_one_line_exit_2(bad_checkpoints, name, fragments):
    result = plexbench("model", "info", ZOO_NAME, "--checkpoint", str(bad_checkpoints / name))
    assert_one_line_error(result, *fragments)


def test_good_checkpoint_and_info_numbers(bad_checkpoints):
    result = plexbench("model", "info", ZOO_NAME, "--checkpoint", str(bad_checkpoints / "good.npz"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["checkpoint"]["valid"] and info["checkpoint"]["sha256"] == fileio.sha256_file(bad_checkpoints / "good.npz")
    # Parameter count by hand: D = 64, M = 128, H = 4, L = 4, P = 7, N = 17, K = 10:
    # embedding 7*7*3*64 + 64 = 9472; cls 64; posemb 17*64 = 1088; encoder_norm 128;
    # per block: 2 LN 256 + qkv 3*(64*64 + 64) = 12480 + out 64*64 + 64 = 4160 + MLP (64*128 + 128)
    # + (128*64 + 64) = 16576 -> 33472; 4 blocks 133888; head 64*10 + 10 = 650.
    assert info["param_count"] == 9472 + 64 + 1088 + 128 + 133888 + 650 == 145290
    # FLOPs: embedding 2*16*147*64 = 301056; per block 2*(4*17*64*64 + 2*17*17*64 + 2*17*64*128)
    # = 2*(278528 + 36992 + 278528) = 1188096; 4 blocks 4752384; head 2*64*10 = 1280.
    assert info["flops_per_example"]["total"] == 301056 + 4752384 + 1280


def test_unknown_model_suggests_names():
    assert_one_line_error(plexbench("model", "info", "plex-minii"), "unknown model 'plex-minii'", "plex-mini")


def test_info_text_and_list_models():
    result = plexbench("model", "info", "plex-vit-l32-imagenet")
    assert result.returncode == 0, result.stderr
    n = sum(math.prod(s) for s in param_shapes(get_model("plex-vit-l32-imagenet").config).values())
    assert f"parameters: {n:,}" in result.stdout and "num_factors: 15" in result.stdout
    listing = plexbench("list", "models")
    assert listing.returncode == 0, listing.stderr
    for name in MODELS.names():
        assert name in listing.stdout


def test_registry_rows_and_preprocess_specs():
    rows = {r["name"]: r for r in list_rows(None)}
    assert {"plex-vit-l32-i21k", "plex-vit-l32-imagenet", "det-vit-l32-imagenet", "plex-vit-s32-imagenet",
            "det-vit-b32-i21k", "plex-mini", "det-mini", "plex-mini-fmnist6", "det-mini-fmnist6"} <= set(rows)
    assert rows["plex-vit-l32-imagenet"]["members"] == 3 and rows["det-vit-l32-imagenet"]["members"] == 1
    assert get_model("plex-vit-l32-imagenet").preprocess.split("|")[0] == "resize(384)"
    assert get_model("plex-vit-l32-i21k").preprocess.split("|")[:2] == ["resize_small(256)", "central_crop(224)"]
    for name in MODELS.names():
        from plexbench.data.preprocess import parse
        from plexbench.data.text import parse_text

        if get_model(name).config.architecture == "t5":  # text models: a text spec
            parse_text(get_model(name).preprocess)
            continue
        parse(get_model(name).preprocess)  # every spec string parses
        assert get_model(name).preprocess.endswith("value_range(-1,1)")
    b32 = get_model("plex-vit-b32-imagenet").config
    assert (b32.hidden_size, b32.mlp_dim, b32.num_heads, b32.num_layers, b32.be_layers) == (768, 3072, 12, 12, (9, 10, 11))
