"""The glyph image set (training/glyphs.py), rendered from the fonts matplotlib ships: no Debian
font package is needed here."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from training import data as data_module
from training.data import DatasetError, load_dataset
from training.glyphs import (
    SCRIPTS,
    GlyphError,
    GlyphSpec,
    characters,
    find_fonts,
    load_glyphs,
    render_glyphs,
)

SMALL = GlyphSpec(fonts="matplotlib", scripts=("digits", "greek"), renderings=2, min_fonts=4,
                  max_fonts=8)


@pytest.fixture(scope="module")
def small():
    return render_glyphs(SMALL)


def test_homoglyphs_of_earlier_characters_are_no_class():
    latin_first = characters(GlyphSpec(scripts=("latin", "cyrillic")))
    cyrillic_alone = characters(GlyphSpec(scripts=("cyrillic",)))
    assert "A" in latin_first and "\u0410" not in latin_first  # Cyrillic A draws as Latin A
    assert "\u0410" in cyrillic_alone and "\u0416" in latin_first  # Zhe looks like nothing
    assert len(cyrillic_alone) == len(SCRIPTS["cyrillic"])
    assert len(latin_first) < len(SCRIPTS["latin"]) + len(SCRIPTS["cyrillic"])


def test_fonts_that_do_not_draw_the_characters_are_left_out():
    fonts = {path.name: has for path, has in find_fonts(GlyphSpec(fonts="matplotlib"),
                                                        characters(GlyphSpec()))}
    assert "LastResortHE-Regular.ttf" not in fonts  # one box for every character
    assert "cmex10.ttf" not in fonts                  # big delimiters, not letters
    assert fonts["DejaVuSans.ttf"] == set(characters(GlyphSpec()))
    assert len(fonts.get("cmsy10.ttf", ())) < 10      # math symbols: few shapes are letters


def test_a_small_set_has_every_class_in_both_splits(small):
    x, y, test = small["x"], small["y"], small["test"]
    classes = len(small["characters"])
    assert x.shape == (len(y), 28, 28) and x.dtype == np.uint8
    kept = list(small["characters"])
    assert kept[:10] == list("0123456789") and set(kept) <= set(characters(SMALL))
    assert classes > 40  # the Greek letters that look like no digit (in at least 4 fonts)
    assert set(y[test]) == set(y[~test]) == set(range(classes))
    per_class = np.bincount(y)
    fonts = len(small["fonts"])
    assert per_class.min() >= SMALL.min_fonts * SMALL.renderings
    assert per_class.max() <= fonts * SMALL.renderings
    assert 0.15 < test.mean() < 0.25
    assert x[y == 0].mean() > 5  # ink, not empty canvases
    assert len(set(small["font_sha256"])) == fonts


def test_rendering_is_deterministic(small):
    again = render_glyphs(SMALL)
    for name in ("x", "y", "test", "font", "characters", "fonts"):
        np.testing.assert_array_equal(again[name], small[name])
    other = render_glyphs(replace(SMALL, seed=1))
    assert not np.array_equal(other["x"], small["x"])


def test_the_cache_round_trips_and_refuses_what_it_should_not_hold(tmp_path, small):
    first = load_glyphs(SMALL, tmp_path)
    (path,) = tmp_path.glob("glyphs-*.npz")
    np.testing.assert_array_equal(first["x"], small["x"])
    second = load_glyphs(SMALL, tmp_path)  # read back, checked
    np.testing.assert_array_equal(second["x"], small["x"])
    with np.load(path, allow_pickle=False) as f:  # no pickle inside
        arrays = {name: f[name] for name in f.files}
    assert json.loads(str(arrays["spec"]))["renderings"] == SMALL.renderings
    damaged = dict(arrays, x=arrays["x"].copy())
    damaged["x"][0, 0, 0] ^= 1
    np.savez(path, **damaged)
    with pytest.raises(GlyphError, match="damaged"):
        load_glyphs(SMALL, tmp_path)
    np.savez(path, **dict(arrays, spec=np.array(json.dumps({"renderings": 9}))))
    with pytest.raises(GlyphError, match="another"):
        load_glyphs(SMALL, tmp_path)
    path.write_bytes(b"not a zip")
    with pytest.raises(GlyphError, match="not a readable glyph set"):
        load_glyphs(SMALL, tmp_path)


def test_no_fonts_names_the_debian_packages(tmp_path):
    with pytest.raises(GlyphError, match=r"apt install fonts-dejavu-core .*fonts-noto-core"):
        render_glyphs(replace(SMALL, fonts=str(tmp_path)))


def test_the_training_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "GLYPH_CACHE", tmp_path)
    data = load_dataset("glyphs:matplotlib")
    assert data.is_image and data.x_train.shape[1:] == (1, 28, 28)
    assert data.num_classes == len(characters(GlyphSpec())) == 142
    assert abs(float(data.x_train.mean())) < 1e-3  # standardised by the train split
    with pytest.raises(DatasetError, match="apt install"):
        load_dataset(f"glyphs:{tmp_path}")
