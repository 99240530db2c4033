"""Imports every built-in reward module so that its rewards register by name."""

# Each reward module registers itself on import; add new modules here.
