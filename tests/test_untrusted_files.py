"""No code runs from a file or a request: the package has no pickle load, every ``torch.load``
is ``weights_only=True``, and YAML is read with ``yaml.safe_load`` only (a grep of the source)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flowdppo"

UNSAFE = {
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "the pickle module": re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", re.M),
    "pickle loads": re.compile(r"\b(pickle|dill|joblib)\.loads?\("),
    "torch.load without weights_only=True": re.compile(
        r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"
    ),
    "yaml.load without SafeLoader": re.compile(r"yaml\.(load|load_all)\((?![^)]*SafeLoader)"),
    "yaml.unsafe_load / full_load": re.compile(r"yaml\.(unsafe_load|full_load)"),
    "numpy allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
}


def test_the_package_has_no_unsafe_deserialisation() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{text[: m.start()].count(chr(10)) + 1}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for text in [path.read_text()]
        for what, pattern in UNSAFE.items()
        for m in pattern.finditer(text)
    ]
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_should() -> None:
    bad = [
        "torch.load(p, weights_only=False)",
        "torch.load(p)",
        "import pickle",
        "yaml.load(text)",
        "yaml.load(text, Loader=yaml.FullLoader)",
        "pickle.loads(data)",
    ]
    good = ["torch.load(p, map_location='cpu', weights_only=True)", "yaml.safe_load(text)"]
    assert all(any(p.search(b) for p in UNSAFE.values()) for b in bad)
    assert not any(p.search(g) for g in good for p in UNSAFE.values())
