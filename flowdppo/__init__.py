"""flowdppo: online RL of flow-matching generators with Flow-DPPO (divergence-proximal PPO)."""

__version__ = "0.1.0"
