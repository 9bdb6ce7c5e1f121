"""Real-size checkpoint builders: every family at its published widths, built offline from configs."""

import json

import pytest

from sapindex.families import FAMILIES, inspect_model_dir
from sapindex.testing.real_size import COLSMOL_500M, REAL_SIZES, build_real_size

pytestmark = pytest.mark.slow  # real widths: hundreds of MB per checkpoint, even one layer deep


@pytest.mark.parametrize("family", sorted(REAL_SIZES))
def test_one_layer_at_real_width_is_a_checkpoint_of_its_family(family, tmp_path):
    """At one decoder layer and one vision block, the checkpoint has the published widths."""
    out = build_real_size(tmp_path / family, family, text_layers=1, vision_blocks=1)
    info = inspect_model_dir(out)
    assert info.family.name == family
    assert info.n_layers == 1 and info.hidden_size == REAL_SIZES[family].hidden
    config = json.loads((out / "config.json").read_text())
    vision = config.get("vision_config") or config["vlm_config"]["vision_config"]
    width = vision.get("hidden_size") if family not in ("colqwen2",) else vision["embed_dim"]
    assert width in (768, 1152, 1280)


def test_full_depth_is_the_default_and_every_family_has_one():
    assert set(REAL_SIZES) == set(FAMILIES)
    assert REAL_SIZES["colqwen2"].text_layers == 28 and REAL_SIZES["colqwen2"].vision_blocks == 32
    assert COLSMOL_500M.hidden == 960
    with pytest.raises(ValueError, match="no real-size builder"):
        build_real_size("unused", "colnothing")
