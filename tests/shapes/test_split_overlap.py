"""benchmarks/shapes_split_overlap.py: the memorising model's cases on hand-made splits."""

from __future__ import annotations

from benchmark_modules import load_benchmark

from flowdppo.shapes.prompts import parse_prompt

overlap_mod = load_benchmark("shapes_split_overlap")


def _specs(*texts: str):
    return [parse_prompt(t) for t in texts]


def test_position_cases_follow_the_layout_not_the_words():
    train = _specs(
        "a blue square to the left of a red circle",  # blue first on x
        "a green circle above a red circle",  # green first on y
        "a red circle below a green circle",  # the same layout, other words
        "a yellow square to the left of a white circle",
        "a white circle to the left of a yellow square",
    )
    test = _specs(
        "a red circle to the right of a blue square",  # blue first on x: only the same
        "a red circle to the left of a blue square",  # red first: only the other
        "a green circle below a red circle",  # red first on y: only the other
        "a yellow square to the right of a white circle",  # both layouts trained
        "a blue square above a red circle",  # this pair never on the y axis
    )
    got = overlap_mod.overlap(train, test)
    assert got == {"only_same": 1, "only_other": 2, "both": 1, "unseen": 1}
    assert overlap_mod.memoriser_accuracy(got) == (1 + 0.5 * 2) / 5


def test_color_attr_cases_follow_the_binding():
    train = _specs("a green square and a red circle", "a blue square and a white triangle")
    test = _specs(
        "a red square and a green circle",  # other binding trained
        "a red circle and a green square",  # the same binding, other order
        "a white triangle and a yellow square",  # other colours: unseen
    )
    got = overlap_mod.overlap(train, test)
    assert got == {"only_same": 1, "only_other": 1, "both": 0, "unseen": 1}
