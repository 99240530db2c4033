"""``flowdppo compare``: controlled comparisons of methods (grids of runs, reports, verdicts)."""

from flowdppo.compare.spec import Run, Spec, SpecError, load_spec

__all__ = ["Run", "Spec", "SpecError", "load_spec"]
