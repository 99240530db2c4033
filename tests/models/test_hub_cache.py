"""Every shipped GPU recipe's ``model.pretrained`` hub id (ids with dots, such as
``black-forest-labs/FLUX.1-dev``) loads from a local hub cache: the tiny pipeline of its family is
laid out as the hub cache lays a download (``models--owner--name/snapshots/<rev>/`` and
``refs/main``), ``HF_HUB_CACHE`` points at it, and the policy is built from the id in a fresh
process, offline. An id that is not cached still fails at once with the ``hf download`` hint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowdppo.models._diffusers_common import is_hub_id

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(
    p
    for p in (REPO / "configs").glob("*.yaml")
    if (yaml.safe_load(p.read_text()) or {}).get("model", {}).get("family") not in (None, "shapes")
)
CLASSES = {
    "sd3": "flowdppo.models.sd3:SD3Policy",
    "flux": "flowdppo.models.flux:FluxPolicy",
    "qwen_image": "flowdppo.models.qwen_image:QwenImagePolicy",
    "flux2_klein": "flowdppo.models.flux2_klein:Flux2KleinPolicy",
    "wan": "flowdppo.models.wan:WanPolicy",
}


def _lay_out_cache(cache: Path, repo_id: str, folder: Path) -> None:
    rev = "0" * 40
    root = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / rev)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)


def _load_in_fresh_process(cache: Path, cls: str, name: str) -> subprocess.CompletedProcess:
    module, attr = cls.split(":")
    code = (
        f"from {module} import {attr}\n"
        f"p = {attr}.from_pretrained({name!r}, device='cpu', resolution=32, max_sequence_length=8)\n"
        "print('loaded', type(p).__name__, 'experts', len(getattr(p, 'experts', list)()) or 1)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_a_recipes_hub_id_loads_from_the_local_hub_cache(recipe, tmp_path, request):
    model = yaml.safe_load(recipe.read_text())["model"]
    family, repo_id = model["family"], model["pretrained"]
    assert is_hub_id(repo_id), f"{recipe.name}: model.pretrained {repo_id!r} is not a hub id"
    # Wan2.2 A14B: the tiny two-expert pipeline (transformer_2), as the checkpoint's layout.
    tiny = "wan22" if "A14B" in repo_id else family
    folder = request.getfixturevalue(f"tiny_{tiny}_path")
    cache = tmp_path / "hub"
    _lay_out_cache(cache, repo_id, folder)
    proc = _load_in_fresh_process(cache, CLASSES[family], repo_id)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded" in proc.stdout
    assert f"experts {2 if tiny == 'wan22' else 1}" in proc.stdout, proc.stdout
    # The same id, not cached: a clear error with the download hint, not "folder does not exist".
    proc = _load_in_fresh_process(tmp_path / "empty", CLASSES[family], repo_id)
    assert proc.returncode != 0
    assert f"hf download {repo_id}" in proc.stderr and "does not exist" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "hub"),
    [
        ("stabilityai/stable-diffusion-3.5-medium", True),
        ("black-forest-labs/FLUX.1-dev", True),
        ("black-forest-labs/FLUX.2-klein-base-9B", True),
        ("Qwen/Qwen-Image", True),
        ("owner/name", True),
        ("./model.v1", False),
        ("/abs/path/FLUX.1-dev", False),
        ("~/models/x", False),
        ("a/b/c", False),
        ("../x", False),
        ("model.safetensors", False),
        ("owner/..", False),
    ],
)
def test_hub_ids_are_told_from_paths(name, hub):
    assert is_hub_id(name) is hub
