"""Glyphs: characters rendered in many typefaces, an image set of many classes made on this
machine from its fonts (the construction of notMNIST and EMNIST: a class is a character, an
item one rendering of it).

The classes are the Latin letters and digits, and the Greek and Cyrillic letters that do not
look like one of them: a character whose rendering in the reference font (DejaVu Sans, which
matplotlib ships) equals an earlier character's is left out (Cyrillic "A" is Latin "A"). Every
font that has a character contributes ``renderings`` images of it, 28 x 28 grey, each drawn at
a seeded size, rotation and shift with seeded noise; a font whose renderings of a probe text
equal an earlier font's (the same typeface under two names) is left out. A class needs at least
``min_fonts`` fonts. The split into train and test is by rendering, stratified by class: every
class is in both.

Fonts come from a folder tree (``*.ttf``, ``*.otf``): Debian's font packages under
/usr/share/fonts (:data:`DEBIAN_PACKAGES`), or the DejaVu fonts that matplotlib ships (a small
set that needs no package). A set is rendered once and cached as an ``.npz`` without pickles:
the images, labels, the characters, the fonts (file name and SHA-256), the parameters, a format
version and a checksum of the arrays, all checked when it is read back.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEBIAN_PACKAGES", "GlyphError", "GlyphSpec", "characters", "find_fonts",
           "load_glyphs", "render_glyphs"]

VERSION = 1
SIZE = 28
DEBIAN_PACKAGES = ("fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation2",
                   "fonts-freefont-ttf", "fonts-noto-core", "fonts-open-sans", "fonts-roboto",
                   "fonts-texgyre", "fonts-urw-base35", "fonts-linuxlibertine",
                   "fonts-paratype", "fonts-ebgaramond", "fonts-junicode",
                   "fonts-gfs-artemisia", "fonts-comic-neue", "fonts-cantarell")
SCRIPTS = {
    "latin": [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)],
    "digits": [chr(c) for c in range(ord("0"), ord("9") + 1)],
    "greek": [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2]
    + [chr(c) for c in range(0x3B1, 0x3CA)],
    "cyrillic": [chr(c) for c in range(0x410, 0x450)],
}
_PROBE = "AaBbGgQqRr&@"


class GlyphError(ValueError):
    """Fonts missing, or a cached set that does not hold what it should."""


@dataclass(frozen=True)
class GlyphSpec:
    """What a glyph set is made of (the cache key, stored in the file)."""

    fonts: str = "system"  # "system" (/usr/share/fonts), "matplotlib", or a folder
    scripts: tuple[str, ...] = ("latin", "digits", "greek", "cyrillic")
    renderings: int = 4  # per character and font
    min_fonts: int = 8  # a character in fewer fonts is left out
    max_fonts: int = 64  # at most this many typefaces (spread over the sorted list)
    test_fraction: float = 0.2
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _matplotlib_fonts() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _reference_font() -> Path:
    return _matplotlib_fonts() / "DejaVuSans.ttf"


def _font_folder(spec: GlyphSpec) -> Path:
    if spec.fonts == "system":
        return Path("/usr/share/fonts")
    if spec.fonts == "matplotlib":
        return _matplotlib_fonts()
    return Path(spec.fonts)


def _canvas(font, ch: str, angle: float = 0.0, shift=(0, 0)) -> np.ndarray:
    """``ch`` drawn centred on a 64 x 64 canvas (its vertical place kept: "o" sits lower and
    is smaller than "O"), rotated, then the 28 x 28 window at ``shift`` from the centre."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(canvas).text((32, 32), ch, fill=255, font=font, anchor="mm")
    if angle:
        canvas = canvas.rotate(angle, resample=Image.BILINEAR, center=(32, 32))
    top, left = 32 - SIZE // 2 + shift[0], 32 - SIZE // 2 + shift[1]
    return np.asarray(canvas, dtype=np.uint8)[top:top + SIZE, left:left + SIZE]


def characters(spec: GlyphSpec) -> list[str]:
    """The classes: the scripts' characters less those that render as an earlier one in the
    reference font."""
    from PIL import ImageFont

    font = ImageFont.truetype(str(_reference_font()), 22)
    kept: list[str] = []
    images: list[np.ndarray] = []
    for script in spec.scripts:
        if script not in SCRIPTS:
            raise GlyphError(f"unknown script {script!r}; one of {sorted(SCRIPTS)}")
        for ch in SCRIPTS[script]:
            image = _canvas(font, ch).astype(np.int16)
            if not any(np.abs(image - other).max() <= 8 for other in images):
                kept.append(ch)
                images.append(image)
    return kept


def _features(images: list[np.ndarray]) -> np.ndarray:
    """Blurred (a 5 x 5 box), centred, unit-length image vectors: their dot products compare
    shapes with some tolerance for stroke and place."""
    stack = np.stack(images).astype(np.float64)
    padded = np.pad(stack, ((0, 0), (2, 2), (2, 2)))
    blurred = sum(padded[:, i:i + SIZE, j:j + SIZE] for i in range(5) for j in range(5))
    flat = blurred.reshape(len(images), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def find_fonts(spec: GlyphSpec, chars: list[str]) -> list[tuple[Path, set[str]]]:
    """``(font file, the characters it draws)`` of the distinct typefaces under the spec's
    folder, at most ``max_fonts`` of them, taken from the families in turn.

    A font counts only where it draws Latin text (the probe's characters, each distinct) and
    a character only where the font's drawing of it is recognisably that character: among the
    reference font's drawings of all the classes, that character's is one of the ten most
    like it (a math or symbol font maps letters to other shapes)."""
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    folder = _font_folder(spec)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    reference = ImageFont.truetype(str(_reference_font()), 22)
    templates = _features([_canvas(reference, ch) for ch in chars])
    families: dict[str, list[tuple[Path, set[str]]]] = {}
    probes: list[np.ndarray] = []
    for path in files:
        try:
            face = FT2Font(str(path))
            charmap = face.get_charmap()
            font = ImageFont.truetype(str(path), 22)
        except (OSError, RuntimeError, ValueError):
            continue  # not a font FreeType reads
        if not all(ord(ch) in charmap for ch in _PROBE):
            continue  # no Latin text (another script's font)
        drawn = [_canvas(font, ch) for ch in _PROBE]
        flat = [d.astype(np.int16) for d in drawn]
        if any(np.abs(a - b).max() <= 8 for i, a in enumerate(flat) for b in flat[i + 1:]):
            continue  # one shape for different characters (a fallback font)
        probe = np.concatenate(flat, axis=1)
        if any(np.abs(probe - other).max() <= 8 for other in probes):
            continue  # the same typeface under another name
        probes.append(probe)
        claimed = [ch for ch in chars if ord(ch) in charmap]
        if not claimed:
            continue
        similarity = _features([_canvas(font, ch) for ch in claimed]) @ templates.T
        own = similarity[np.arange(len(claimed)), [chars.index(ch) for ch in claimed]]
        rank = (similarity > own[:, None]).sum(axis=1)
        has = {ch for ch, r in zip(claimed, rank, strict=True) if r < 10}
        if has:
            families.setdefault(face.family_name, []).append((path, has))
    found: list[tuple[Path, set[str]]] = []
    queues = [families[name] for name in sorted(families)]
    while queues and len(found) < spec.max_fonts:  # one style of every family in turn
        for queue in queues:
            if queue and len(found) < spec.max_fonts:
                found.append(queue.pop(0))
        queues = [q for q in queues if q]
    return found


def render_glyphs(spec: GlyphSpec) -> dict[str, np.ndarray]:
    """Render the set: the arrays of the cache file (see the module docstring)."""
    from PIL import ImageFont

    chars = characters(spec)
    fonts = find_fonts(spec, chars)
    counts = {ch: sum(ch in has for _, has in fonts) for ch in chars}
    kept = [ch for ch in chars if counts[ch] >= spec.min_fonts]
    if not kept:
        packages = " ".join(DEBIAN_PACKAGES)
        raise GlyphError(
            f"{len(fonts)} usable fonts under {_font_folder(spec)}, fewer than the "
            f"{spec.min_fonts} each character needs; install Debian's fonts (sudo apt install "
            f"{packages}) or use the small set of matplotlib's fonts (glyphs:matplotlib)")
    label_of = {ch: i for i, ch in enumerate(kept)}
    rng = np.random.default_rng(spec.seed)
    images, labels, font_ids = [], [], []
    for f, (path, has) in enumerate(fonts):
        sizes: dict[int, object] = {}
        for ch in kept:
            if ch not in has:
                continue
            for _ in range(spec.renderings):
                size = int(rng.integers(18, 25))
                font = sizes.get(size)
                if font is None:
                    font = sizes[size] = ImageFont.truetype(str(path), size)
                image = _canvas(font, ch, float(rng.uniform(-10, 10)),
                                tuple(int(v) for v in rng.integers(-2, 3, 2)))
                noisy = image + rng.normal(0, 10, image.shape)
                images.append(np.clip(noisy, 0, 255).astype(np.uint8))
                labels.append(label_of[ch])
                font_ids.append(f)
    x, y = np.stack(images), np.array(labels, dtype=np.int64)
    test = np.zeros(len(y), dtype=bool)
    for c in range(len(kept)):  # by rendering, stratified: every class in both splits
        members = np.flatnonzero(y == c)
        chosen = rng.choice(members, max(1, round(spec.test_fraction * len(members))),
                            replace=False)
        test[chosen] = True
    return {
        "x": x, "y": y, "font": np.array(font_ids, dtype=np.int64), "test": test,
        "characters": np.array(kept),
        "names": np.array([unicodedata.name(ch, f"U+{ord(ch):04X}") for ch in kept]),
        "fonts": np.array([path.name for path, _ in fonts]),
        "font_sha256": np.array([hashlib.sha256(path.read_bytes()).hexdigest()
                                 for path, _ in fonts]),
        "spec": np.array(json.dumps(asdict(spec), sort_keys=True)),
        "version": np.array(VERSION),
    }


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name != "checksum":
            a = np.ascontiguousarray(arrays[name])
            digest.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


def load_glyphs(spec: GlyphSpec, cache: Path | None = None) -> dict[str, np.ndarray]:
    """The glyph set of ``spec``: read from ``cache`` (a folder) when a checked file of the same
    spec and version is there, else rendered and written there."""
    folder = Path(cache) if cache is not None else Path.home() / ".cache" / "qkernels"
    path = folder / f"glyphs-v{VERSION}-{spec.key()}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except (OSError, ValueError) as error:
            raise GlyphError(f"{path} is not a readable glyph set ({error}); delete it to "
                             "render the set again") from None
        expected = json.dumps(asdict(spec), sort_keys=True)
        if (int(arrays.get("version", -1)) != VERSION or str(arrays.get("spec")) != expected
                or str(arrays.get("checksum")) != _checksum(arrays)):
            raise GlyphError(f"{path} does not hold the glyph set it is named for (another "
                             "version or spec, or damaged); delete it to render the set again")
        return arrays
    arrays = render_glyphs(spec)
    arrays["checksum"] = np.array(_checksum(arrays))
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(path)
    return arrays
