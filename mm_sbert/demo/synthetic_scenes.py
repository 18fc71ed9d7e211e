"""A download-free image-caption set: rendered scenes of coloured shapes whose captions differ only in details."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from mm_sbert.demo.color_swatches import SWATCH_COLORS

# The swatches' RGB values, limited to hues far apart, so any colour featurizer (and a pixel test) tells them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    name: SWATCH_COLORS[name] for name in ("red", "green", "blue", "yellow", "purple", "orange")
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
# Slot centres as fractions of the image side: the edge cells of a 3x3 grid, so slots never overlap and a grid
# featurizer with 3 cells per side sees each object in exactly one cell.
SLOTS: dict[str, tuple[float, float]] = {
    "left": (1 / 6, 0.5),
    "right": (5 / 6, 0.5),
    "top": (0.5, 1 / 6),
    "bottom": (0.5, 5 / 6),
}
# Half-side of an object's bounding box as a fraction of the image side (a large object fills most of its cell).
SIZE_RADIUS: dict[str, float] = {"small": 0.075, "large": 0.15}
# What save_images writes, for the ownership rule (mm_sbert.storage.ownership).
SCENES_KIND = "synthetic-scenes"
BACKGROUND = (245, 245, 240)
_SLOT_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# What a family's variants change: one detail each, or only which attribute belongs to which object.
FAMILY_KINDS = ("details", "binding")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: what it is and where it sits."""

    shape: str
    color: str
    size: str
    slot: str

    def phrase(self, with_size: bool = True) -> str:
        size = f"{self.size} " if with_size else ""
        return f"{size}{self.color} {self.shape}"


@dataclass
class Scene:
    """A scene: 1-4 objects in distinct slots, and the family of near-identical scenes it belongs to."""

    objects: tuple[SceneObject, ...]
    family: int
    captions: list[str] = field(default_factory=list)

    @property
    def signature(self) -> tuple[SceneObject, ...]:
        return tuple(sorted(self.objects, key=lambda obj: obj.slot))

    @property
    def gist(self) -> frozenset[str]:
        """The shapes in the scene: what a caption says once colours, sizes, sides and counts are ignored."""
        return frozenset(obj.shape for obj in self.objects)


class SyntheticScenes:
    """A deterministic-by-seed image-caption set of rendered scenes with hard negatives.

    Each image shows 2-3 coloured shapes (circle, square, triangle, star; six colours; small or large) in distinct
    slots (left, right, top, bottom) on a plain background. Images come in *families* of look-alikes, so only
    details tell a family's images apart: the case where the paper finds the cross-encoder stronger than the
    bi-encoder. With ``families="details"`` the variants of a base scene change exactly one detail (one object's
    colour or size, two objects swapping sides, one object moving to an empty slot, or one object more or less).
    With ``families="binding"`` the objects of a base scene have distinct shapes and colours, and each variant
    exchanges one attribute between two objects (their colours, their shapes, or their slots): every image of a
    family shows the same colours, shapes, sizes and slots and its captions use the same words, so only which
    colour belongs to which shape and which object is where tell them apart ("a red circle on the left and a blue
    square on the right" vs "a blue circle on the left and a red square on the right"). Every caption of an image
    describes all its objects (so each caption identifies its image); captions of one image differ in wording and
    order.

    Args:
        num_images: how many images (scenes) to generate. All scenes are distinct.
        captions_per_image: captions per image (COCO and Flickr30k have 5).
        seed: the whole set (scenes, captions, pixels) is a function of the arguments; same seed, same set.
        image_size: side of the square images in pixels.
        family_size: images per family (the base scene and ``family_size - 1`` one-detail variants).
        exclude: scenes that must not occur, e.g. ``train.signatures`` for a held-out set that shares no scene with
            the training set.
        families: what a family's variants change: ``"details"`` (one detail each) or ``"binding"`` (which
            attribute belongs to which object, at most 7 variants per base scene).

    Example:
        >>> scenes = SyntheticScenes(200, captions_per_image=3, seed=0)
        >>> scenes.images[0].size, scenes.captions[0], scenes.caption_image_ids[0]
        ((64, 64), 'a large purple triangle at the bottom and a large blue star on the left', 0)
        >>> train_dataset = scenes.to_dataset()  # columns: caption, image, label
    """

    def __init__(
        self,
        num_images: int,
        captions_per_image: int = 5,
        seed: int = 0,
        image_size: int = 64,
        family_size: int = 4,
        exclude: Iterable[tuple[SceneObject, ...]] = (),
        families: str = "details",
    ) -> None:
        if num_images < 1:
            raise ValueError(f"SyntheticScenes needs num_images >= 1, got {num_images}")
        if captions_per_image < 1:
            raise ValueError(f"SyntheticScenes needs captions_per_image >= 1, got {captions_per_image}")
        if image_size < 16:
            raise ValueError(f"SyntheticScenes needs image_size >= 16 pixels, got {image_size}")
        if family_size < 1:
            raise ValueError(f"SyntheticScenes needs family_size >= 1, got {family_size}")
        if families not in FAMILY_KINDS:
            raise ValueError(f"SyntheticScenes needs families in {FAMILY_KINDS}, got {families!r}")
        self.num_images = num_images
        self.captions_per_image = captions_per_image
        self.seed = seed
        self.image_size = image_size
        self.family_size = family_size
        self.family_kind = families

        rng = random.Random(seed)
        self.scenes = self._generate_scenes(rng, set(exclude))
        for scene in self.scenes:
            scene.captions = [self._caption(scene, template, rng) for template in self._templates(rng)]
        self._images: list[Image.Image] | None = None

    # ------------------------------------------------------------------ public views

    @property
    def images(self) -> list[Image.Image]:
        """The rendered scenes as RGB PIL images (rendered on first access)."""
        if self._images is None:
            self._images = [self.render(scene) for scene in self.scenes]
        return self._images

    @property
    def captions(self) -> list[str]:
        """All captions, image by image: ``captions_per_image`` consecutive captions per image."""
        return [caption for scene in self.scenes for caption in scene.captions]

    @property
    def caption_image_ids(self) -> list[int]:
        """For each caption, the index of its image in :attr:`images`."""
        return [image_id for image_id, scene in enumerate(self.scenes) for _ in scene.captions]

    @property
    def signatures(self) -> list[tuple[SceneObject, ...]]:
        """A hashable description of each scene (pass to ``exclude`` of another set to keep them disjoint)."""
        return [scene.signature for scene in self.scenes]

    @property
    def families(self) -> list[int]:
        """For each image, the id of its family (images of one family differ in one detail)."""
        return [scene.family for scene in self.scenes]

    def save_images(self, folder: str, prefix: str = "scene") -> list[str]:
        """Write the images as PNG files into ``folder`` and return their paths, in image order.

        ``folder`` follows the ownership rule (:func:`~mm_sbert.storage.check_output_path`): a new or empty folder, or
        one this method wrote; a folder of the user's (where ``scene_00000.png`` could be a photo) is refused.
        """
        from mm_sbert.storage import check_output_path, mark_owned_folder

        check_output_path(folder, SCENES_KIND, folder=True, what="The scene folder")
        os.makedirs(folder, exist_ok=True)
        mark_owned_folder(folder, SCENES_KIND, patterns=[f"{prefix}_*.png"])
        paths = []
        for image_id, image in enumerate(self.images):
            path = os.path.join(folder, f"{prefix}_{image_id:05d}.png")
            image.save(path)
            paths.append(path)
        return paths

    def save_caption_file(self, folder: str) -> str:
        """Write the images into ``folder/images`` (:meth:`save_images`) and one row per caption into
        ``folder/captions.csv`` (columns ``caption``, ``image`` relative to ``folder``, ``label`` the image id): the
        caption-file layout :meth:`~mm_sbert.data.ImageCaptionCorpus.from_file` reads. Returns the CSV's path."""
        import csv

        paths = self.save_images(os.path.join(folder, "images"))
        csv_path = os.path.join(folder, "captions.csv")
        with open(csv_path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["caption", "image", "label"])
            for caption, image_id in zip(self.captions, self.caption_image_ids):
                writer.writerow([caption, os.path.relpath(paths[image_id], folder), image_id])
        return csv_path

    def to_dataset(self, image_paths: Sequence[str] | None = None) -> Any:
        """A ``datasets.Dataset`` with one row per (caption, image): columns ``caption``, ``image``, ``label``.

        Args:
            image_paths: paths of the images as saved by :meth:`save_images`; the ``image`` column then holds path
                strings (light, picklable). Without it the column holds PIL images.
        """
        from datasets import Dataset, Features, Value
        from datasets import Image as ImageFeature

        ids = self.caption_image_ids
        if image_paths is not None:
            if len(image_paths) != len(self.scenes):
                raise ValueError(f"Got {len(image_paths)} image paths for {len(self.scenes)} images")
            images: list[Any] = [image_paths[i] for i in ids]
            image_feature: Any = Value("string")
        else:
            images = [self.images[i] for i in ids]
            image_feature = ImageFeature()
        features = Features({"caption": Value("string"), "image": image_feature, "label": Value("int64")})
        return Dataset.from_dict({"caption": self.captions, "image": images, "label": ids}, features=features)

    def slot_center(self, slot: str) -> tuple[int, int]:
        """Pixel coordinates of a slot's centre, where an object in that slot is always painted."""
        fx, fy = SLOTS[slot]
        return round(fx * (self.image_size - 1)), round(fy * (self.image_size - 1))

    def render(self, scene: Scene) -> Image.Image:
        """Draw a scene as an RGB image."""
        side = self.image_size
        image = Image.new("RGB", (side, side), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for obj in scene.objects:
            cx, cy = self.slot_center(obj.slot)
            r = SIZE_RADIUS[obj.size] * side
            color = COLORS[obj.color]
            if obj.shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
            elif obj.shape == "square":
                s = r * 0.85
                draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=color)
            elif obj.shape == "triangle":
                draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=color)
            else:
                draw.polygon(_star_points(cx, cy, r), fill=color)
        return image

    def __len__(self) -> int:
        return len(self.scenes)

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(num_images={self.num_images}, captions_per_image={self.captions_per_image}, "
            f"seed={self.seed}, image_size={self.image_size}, family_size={self.family_size}, "
            f"families={self.family_kind!r})"
        )

    # ------------------------------------------------------------------ generation

    def _generate_scenes(self, rng: random.Random, seen: set[tuple[SceneObject, ...]]) -> list[Scene]:
        scenes: list[Scene] = []
        family = 0
        binding = self.family_kind == "binding"
        while len(scenes) < self.num_images:
            base = Scene(self._random_objects(rng, distinct=binding), family)
            if base.signature in seen:
                continue
            members = [base]
            seen.add(base.signature)
            if binding:
                exchanges = [Scene(objects, family) for objects in self._exchanges(base.objects)]
                rng.shuffle(exchanges)
                variants = iter(exchanges)
            else:
                variants = (Scene(self._mutate(base.objects, rng), family) for _ in range(50 * self.family_size))
            # The size is checked before the next variant is drawn: drawing one more would consume the random
            # stream and change every later scene of a seed (the "details" sets must stay as they were).
            while len(members) < self.family_size:
                variant = next(variants, None)
                if variant is None:
                    break
                if variant.signature not in seen:
                    seen.add(variant.signature)
                    members.append(variant)
            scenes.extend(members[: self.num_images - len(scenes)])
            family += 1
        return scenes

    @staticmethod
    def _random_objects(rng: random.Random, distinct: bool = False) -> tuple[SceneObject, ...]:
        """2-3 objects in distinct slots; with ``distinct`` also of distinct shapes and distinct colours."""
        count = rng.choice((2, 2, 3))
        slots = rng.sample(list(SLOTS), count)
        if not distinct:
            # Drawn object by object, in the order every earlier seed's sets were drawn.
            return tuple(
                SceneObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), slot) for slot in slots
            )
        shapes, colors = rng.sample(SHAPES, count), rng.sample(list(COLORS), count)
        return tuple(
            SceneObject(shape, color, rng.choice(SIZES), slot) for shape, color, slot in zip(shapes, colors, slots)
        )

    @staticmethod
    def _exchanges(objects: tuple[SceneObject, ...]) -> list[tuple[SceneObject, ...]]:
        """Every scene made by exchanging one attribute (colour, shape or slot) between two of ``objects``.

        Exchanging slots moves two whole objects; exchanging colours or shapes keeps sizes and slots. The words
        that describe the scene stay the same, only their binding to objects changes.
        """
        variants = []
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                a, b = objects[i], objects[j]
                for new_a, new_b in (
                    (SceneObject(a.shape, b.color, a.size, a.slot), SceneObject(b.shape, a.color, b.size, b.slot)),
                    (SceneObject(b.shape, a.color, a.size, a.slot), SceneObject(a.shape, b.color, b.size, b.slot)),
                    (SceneObject(a.shape, a.color, a.size, b.slot), SceneObject(b.shape, b.color, b.size, a.slot)),
                ):
                    objs = list(objects)
                    objs[i], objs[j] = new_a, new_b
                    variants.append(tuple(objs))
        return variants

    @staticmethod
    def _mutate(objects: tuple[SceneObject, ...], rng: random.Random) -> tuple[SceneObject, ...]:
        """Change one detail: a colour, a size, two objects swapping slots, a move, or one object more/less."""
        objs = list(objects)
        free_slots = [slot for slot in SLOTS if slot not in {obj.slot for obj in objs}]
        kinds = ["color", "size", "swap"]
        if free_slots:
            kinds += ["move", "add"]
        shapes = [o.shape for o in objs]
        duplicates = [k for k, o in enumerate(objs) if shapes.count(o.shape) > 1]
        if len(objs) > 2 and duplicates:
            kinds.append("remove")
        kind = rng.choice(kinds)
        i = rng.randrange(len(objs))
        obj = objs[i]
        if kind == "color":
            objs[i] = SceneObject(obj.shape, rng.choice([c for c in COLORS if c != obj.color]), obj.size, obj.slot)
        elif kind == "size":
            objs[i] = SceneObject(obj.shape, obj.color, "small" if obj.size == "large" else "large", obj.slot)
        elif kind == "swap":
            j = rng.choice([j for j in range(len(objs)) if j != i])
            other = objs[j]
            objs[i] = SceneObject(obj.shape, obj.color, obj.size, other.slot)
            objs[j] = SceneObject(other.shape, other.color, other.size, obj.slot)
        elif kind == "move":
            objs[i] = SceneObject(obj.shape, obj.color, obj.size, rng.choice(free_slots))
        elif kind == "add":
            # The same shape again in another colour: the gist (which shapes) stays, the count changes.
            objs.append(SceneObject(obj.shape, rng.choice(list(COLORS)), rng.choice(SIZES), rng.choice(free_slots)))
        else:
            # Drop an object whose shape also appears elsewhere, so the gist stays the same.
            objs.pop(rng.choice(duplicates))
        return tuple(objs)

    # ------------------------------------------------------------------ captions

    def _templates(self, rng: random.Random) -> list[int]:
        order = list(range(len(_TEMPLATES)))
        rng.shuffle(order)
        return [order[k % len(order)] for k in range(self.captions_per_image)]

    @staticmethod
    def _caption(scene: Scene, template: int, rng: random.Random) -> str:
        objs = list(scene.objects)
        rng.shuffle(objs)
        return SyntheticScenes.describe(objs, template)

    @staticmethod
    def describe(objects: Sequence[SceneObject], template: int = 0) -> str:
        """A caption naming ``objects`` in the given order, in one of the generator's wordings.

        Args:
            objects: the objects to name (1-4), e.g. a scene's ``objects`` with two sides exchanged, to probe
                whether a model tells the two captions apart.
            template: which of the generator's five wordings, ``0`` to ``4`` (``0``: "a large red circle on the
                left and ...").
        """
        if not 0 <= template < len(_TEMPLATES):
            raise ValueError(f"template must be between 0 and {len(_TEMPLATES) - 1}, got {template}")
        if not 1 <= len(objects) <= len(_NUMBER_WORDS):
            raise ValueError(f"describe names 1-{len(_NUMBER_WORDS)} objects, got {len(objects)}")
        return _TEMPLATES[template](list(objects))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _by_slot(objs: list[SceneObject]) -> str:
    return _join([f"a {obj.phrase()} {_SLOT_PHRASES[obj.slot]}" for obj in objs])


def _slot_first(objs: list[SceneObject]) -> str:
    return "; ".join(f"{_SLOT_PHRASES[obj.slot]} a {obj.phrase()}" for obj in objs)


def _counted(objs: list[SceneObject]) -> str:
    return f"{_NUMBER_WORDS[len(objs)]} shapes: " + _join(
        [f"a {obj.phrase()} {_SLOT_PHRASES[obj.slot]}" for obj in objs]
    )


def _colour_counts(objs: list[SceneObject]) -> str:
    counts: dict[str, int] = {}
    for obj in objs:
        counts[obj.color] = counts.get(obj.color, 0) + 1
    summary = _join([f"{_NUMBER_WORDS[n]} {color}" for color, n in counts.items()])
    return f"{summary} on a white background: " + _join(
        [f"the {obj.phrase()} {_SLOT_PHRASES[obj.slot]}" for obj in objs]
    )


def _there_is(objs: list[SceneObject]) -> str:
    return "there is " + _join([f"a {obj.size} {obj.shape} in {obj.color} {_SLOT_PHRASES[obj.slot]}" for obj in objs])


_TEMPLATES = (_by_slot, _slot_first, _counted, _colour_counts, _there_is)


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points
