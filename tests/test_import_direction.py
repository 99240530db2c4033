"""flowdppo.core must stay plain PyTorch: no model, training or serialisation library (STYLE.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("diffusers", "accelerate", "peft", "transformers", "safetensors")
CORE = Path(__file__).resolve().parents[1] / "flowdppo" / "core"


def test_importing_core_loads_no_forbidden_module():
    code = (
        "import json, sys\n"
        "import flowdppo.core\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_core_sources_import_only_torch_numpy_stdlib_and_core():
    allowed_third_party = {"torch", "numpy"}
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in FORBIDDEN, f"{path.name} imports {name}"
                ok = (
                    top in allowed_third_party
                    or top in sys.stdlib_module_names
                    or top == "__future__"
                )
                assert ok or name.startswith("flowdppo.core"), f"{path.name} imports {name}"
