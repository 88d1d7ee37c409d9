import pytest
import torch

from deepis_rt.errors import ConfigError, ShapeError
from deepis_rt.model import PRESETS, ModelConfig, build_model, complexity, nearest_valid_size


@pytest.mark.parametrize("preset", ["deepis", "deepis-lite"])
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shape(preset, batch, tiny_overrides):
    torch.manual_seed(0)
    model = build_model(preset, **tiny_overrides).eval()
    x = torch.randn(batch, 1, 16, 32, 48)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (batch, 1, 16, 32, 48)
    assert torch.isfinite(y).all()
    # the GCN kernels of the preset are kept by the tiny override
    assert model.config.gcn_kernels == PRESETS[preset].gcn_kernels


@pytest.mark.parametrize("shape, nearest", [((60, 128, 128), (64, 128, 128)), ((16, 33, 20), (16, 32, 16))])
def test_bad_spatial_size_names_nearest_valid(shape, nearest, tiny_overrides):
    model = build_model("deepis-lite", **tiny_overrides).eval()
    with pytest.raises(ShapeError) as err:
        model(torch.zeros(1, 1, *shape))
    assert str(nearest) in str(err.value)
    assert "multiple of 16" in str(err.value)


def test_wrong_rank_rejected(tiny_overrides):
    model = build_model("deepis-lite", **tiny_overrides).eval()
    with pytest.raises(ShapeError, match="5-D"):
        model(torch.zeros(1, 16, 16, 16))


def test_nearest_valid_size():
    assert nearest_valid_size(60, 16) == 64
    assert nearest_valid_size(5, 16) == 16
    assert nearest_valid_size(40, 16) in (32, 48)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"widths": [8, 16], "gcn_kernels": [3, 3], "bogus": 1})
    with pytest.raises(ConfigError, match="one kernel per level"):
        ModelConfig(widths=(8, 16, 32), gcn_kernels=(3, 3))
    with pytest.raises(ConfigError, match="odd"):
        ModelConfig(widths=(8, 16), gcn_kernels=(4, 3))
    with pytest.raises(ConfigError, match="positive integer"):
        ModelConfig(skip_width=0)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_model("unet")
    cfg = ModelConfig.from_dict(PRESETS["deepis"].to_dict())
    assert cfg == PRESETS["deepis"]


def test_paper_preset_structure():
    cfg = PRESETS["deepis"]
    assert cfg.widths == (32, 64, 128, 256, 512)
    assert cfg.skip_width == 64
    assert cfg.gcn_kernels == (13, 13, 9, 7, 5)
    assert cfg.size_multiple == 16
    model = build_model("deepis")
    ups = [m for m in model.modules() if isinstance(m, torch.nn.Upsample)]
    assert not ups  # up-sampling is functional (trilinear, align_corners=True) in forward


def test_complexity_measured():
    paper = complexity(PRESETS["deepis"])
    lite = complexity(PRESETS["deepis-lite"])
    # documented in docs/model.md: 4.41 M parameters, 1206 GFLOP per 64x128x128 tile
    assert 4.0e6 < paper.parameters < 4.8e6
    assert 1.1e12 < paper.flops_per_tile < 1.35e12
    assert lite.flops_per_tile * 6 <= paper.flops_per_tile
    assert paper.parameters == sum(p.numel() for p in build_model("deepis").parameters())


def test_upsampling_is_trilinear_align_corners(tiny_overrides):
    model = build_model("deepis-lite", **tiny_overrides).eval()
    calls = []
    orig = torch.nn.functional.interpolate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return orig(*args, **kwargs)

    torch.nn.functional.interpolate = spy
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 16, 16, 16))
    finally:
        torch.nn.functional.interpolate = orig
    assert len(calls) == 4
    assert all(c["mode"] == "trilinear" and c["align_corners"] is True for c in calls)


def test_each_architecture_builds_its_own_network(tiny_overrides):
    from deepis_rt.errors import ConfigError
    from deepis_rt.model import DeepIS, DeepIS2020, DeepISNetwork, preset_config

    paper = build_model("deepis-lite", **tiny_overrides)
    published = build_model("deepis-2020", feature_scale=16, trans_feature=4)
    assert type(paper) is DeepIS and type(published) is DeepIS2020
    assert isinstance(paper, DeepISNetwork) and isinstance(published, DeepISNetwork)
    assert not isinstance(published, DeepIS)  # no longer a DeepIS whose __init__ is skipped
    with pytest.raises(ConfigError, match="DeepIS needs architecture 'deepis'.*build_model"):
        DeepIS(preset_config("deepis-2020"))
