"""The checklist for adding a family: every layer's table covers every family of sapindex.families.

A new ``FamilySpec`` (or ``Backbone``) makes this test fail with the list of what is missing,
layer by layer; CONTRIBUTING.md ("Adding a family") says where each piece goes.
"""

import importlib

import click

from sapindex.families import BACKBONES, FAMILIES


def _missing() -> list[str]:
    from sapindex.cli.demo import demo
    from sapindex.exporter.graphs import DTYPES, GRAPHS, graph_axes, graph_spec
    from sapindex.models.adapters import adapter_class
    from sapindex.runtime.preprocess import PREPROCESSORS
    from sapindex.testing import tiny
    from sapindex.testing.real_size import REAL_SIZES

    demo_choices = next(p for p in demo.params if p.name == "family").type
    assert isinstance(demo_choices, click.Choice)
    missing = []
    for name, spec in FAMILIES.items():
        where = f"family {name!r} (backbone {spec.backbone!r})"
        if spec.backbone not in BACKBONES:
            missing.append(f"{where}: no Backbone in sapindex/families.py BACKBONES")
            continue
        if spec.backbone not in PREPROCESSORS:
            missing.append(f"{where}: no torch-free preprocessing in sapindex/runtime/preprocess PREPROCESSORS")
        if spec.backbone not in GRAPHS:
            missing.append(f"{where}: no export graphs in sapindex/exporter/graphs GRAPHS")
        else:
            graph = graph_spec(spec.backbone)
            io = spec.graph_io()
            inputs = {n for graph_io in io.values() for n in graph_io["inputs"]} - {"image_embeds"}
            axes = {n for name in io for n in graph_axes(graph, name)}
            if not inputs <= axes | {"image_grid_thw"}:
                missing.append(f"{where}: graph inputs {sorted(inputs - axes)} have no dynamic axes in its GraphSpec")
            for dtype in DTYPES:
                if dtype not in graph.tolerances:
                    missing.append(f"{where}: no {dtype} validation tolerance in its GraphSpec")
        try:
            adapter_class(spec)
        except KeyError:
            missing.append(f"{where}: no torch adapter in sapindex/models/adapters.py ADAPTERS")
        if name in tiny.TINY_OWN_LAYOUT:
            module, function = tiny.TINY_OWN_LAYOUT[name].split(":")
            if not callable(getattr(importlib.import_module(module), function, None)):
                missing.append(f"{where}: no tiny checkpoint builder {tiny.TINY_OWN_LAYOUT[name]}")
        elif spec.backbone not in tiny.TINY_BUILDERS or name not in tiny.TINY_FAMILIES:
            missing.append(f"{where}: no tiny checkpoint builder in sapindex/testing/tiny.py TINY_BUILDERS")
        elif name not in demo_choices.choices:
            missing.append(f"{where}: not offered by `sapindex demo --pipeline --family`")
        if name not in REAL_SIZES:
            missing.append(f"{where}: no real-size builder in sapindex/testing/real_size.py REAL_SIZES")
    return missing


def test_every_layer_covers_every_family():
    missing = _missing()
    assert not missing, "families incomplete:\n  " + "\n  ".join(missing)


def test_the_checklist_names_a_missing_layer(monkeypatch):
    """Adding a family to the table alone makes the checklist name every layer it lacks."""
    from sapindex.families import Backbone, FamilySpec

    monkeypatch.setitem(BACKBONES, "newvl", Backbone("newvl", "scheme", "causal",
                                                       {"vision": ("pixel_values",), "text": ("input_ids",)}))
    monkeypatch.setitem(FAMILIES, "colnew", FamilySpec("colnew", "newvl", "ColNew", "ColNewProcessor", "newvl"))
    missing = [m for m in _missing() if "colnew" in m]
    assert any("PREPROCESSORS" in m for m in missing)
    assert any("GRAPHS" in m for m in missing)
    assert any("ADAPTERS" in m for m in missing)
    assert any("TINY_BUILDERS" in m for m in missing)
    assert any("REAL_SIZES" in m for m in missing)
