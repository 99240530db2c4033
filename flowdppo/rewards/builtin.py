"""Imports every built-in reward module so that its rewards register by name."""

# Each reward module registers itself on import; add new modules here. Modules with optional
# dependencies import them lazily, inside the reward's constructor.
from flowdppo.rewards import clip, hps, image, ocr, remote, shapes, video  # noqa: F401
