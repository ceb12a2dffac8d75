import pytest
from torch import nn

from batude.errors import BatudeError
from batude.functional.cost import LayerKind
from batude.nn.profile import profile_model
from batude.rank.filter import LayerFilter


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),  # 0: stem, 3 input channels
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # 1: depthwise
        nn.Conv2d(32, 64, 1),  # 2: pointwise
        nn.Conv2d(64, 64, 3, padding=1),  # 3
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),  # 6
    )


def _eligible(f: LayerFilter):
    return [l.name for l in profile_model(_model(), (1, 3, 8, 8)).layers if f.reason_excluded(l) is None]


def test_default_filter():
    assert _eligible(LayerFilter()) == ["2", "3", "6"]


def test_reasons():
    layers = {l.name: l for l in profile_model(_model(), (1, 3, 8, 8)).layers}
    f = LayerFilter()
    assert "groups=32" in f.reason_excluded(layers["1"])
    assert "3 input channels" in f.reason_excluded(layers["0"])


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"include": ("3", "6")}, ["3", "6"]),
        ({"exclude": ("6",)}, ["2", "3"]),
        ({"kinds": (LayerKind.TUCKER2,)}, ["3"]),
        ({"kinds": ("lowrank_conv1x1", "lowrank_linear")}, ["2", "6"]),
        ({"min_in_channels": 1}, ["0", "2", "3", "6"]),
        ({"include": "[23]"}, ["2", "3"]),
    ],
    ids=["include", "exclude", "tucker-only", "lowrank-only", "no-floor", "glob-class"],
)
def test_filter_options(kwargs, expected):
    assert _eligible(LayerFilter(**kwargs)) == expected


def test_round_trip_and_validation():
    f = LayerFilter(include=("layer*",), exclude=("fc",), kinds=("tucker2",), min_in_channels=8)
    assert LayerFilter.from_dict(f.to_dict()) == f
    with pytest.raises(BatudeError, match="unknown layer kind"):
        LayerFilter(kinds=("conv3d",))
    with pytest.raises(BatudeError, match="min_in_channels"):
        LayerFilter(min_in_channels=0)
