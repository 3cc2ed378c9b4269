"""SYNTHETIC AID-like data: procedurally drawn top-down scenes, NOT the real AID data set.

Used when no AID copy is at hand, so the whole pipeline runs offline: the same 30 class folders,
file names and labels as AID (`Airport/airport_1.jpg`, ...), JPEG images drawn here from simple
shapes and noise. Classes differ by layout and structure, and every scene is randomly rotated,
zoomed, colour-shifted and noised, so that a classifier has to look at structure: the residential
trio share one palette and differ by building density alone. Each image is a pure function of
(seed, class, index). Numbers measured on this set say nothing about accuracy on real AID.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eas.data.aid import AID_CLASS_DIRS, AID_LABELS, SYNTHETIC_MARKER
from eas.errors import DataError
from eas.io.files import read_json, write_text_atomic

SYNTHETIC_NOTICE = ("SYNTHETIC DATA: procedurally drawn AID-like scenes, not the real AID data "
                    "set (Xia et al. 2017); its numbers say nothing about accuracy on AID.")
GENERATOR_VERSION = 1  # bump when drawing changes, so stale caches are regenerated

GRASS, DARK_GREEN, LIGHT_GREEN = (95, 128, 62), (38, 72, 40), (150, 175, 95)
CONCRETE, ASPHALT, SAND, SOIL = (165, 163, 155), (72, 72, 76), (212, 190, 140), (140, 105, 72)
WATER, POOL, TRACK, SHADOW = (42, 82, 118), (70, 190, 215), (175, 75, 60), (40, 40, 44)
ROOFS = ((168, 72, 58), (120, 120, 125), (205, 200, 190), (110, 80, 60), (80, 95, 120),
         (185, 140, 100))
VIVID = ((200, 40, 40), (230, 230, 230), (30, 30, 30), (40, 70, 170), (200, 180, 50),
         (150, 150, 155))


class Canvas:
    """A square drawing surface with one random generator; `u` scales the 96-px design unit."""

    def __init__(self, rng: np.random.Generator, d: int):
        self.rng, self.d, self.u = rng, d, d / 96
        self.image = Image.new("RGB", (d, d))
        self.draw = ImageDraw.Draw(self.image)
        sun = rng.uniform(0, 2 * math.pi)  # one light direction per scene for all shadows
        self.shadow = (math.cos(sun) * 1.5 * self.u, math.sin(sun) * 1.5 * self.u)
        self._gauss: list[float] = []

    def uni(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def n(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def xy(self, margin: float = 0.0) -> tuple[float, float]:
        return self.uni(margin, self.d - margin), self.uni(margin, self.d - margin)

    def colour(self, base, spread: float = 12) -> tuple[int, ...]:
        if len(self._gauss) < 3:  # normals drawn in blocks: per-call numpy overhead dominated
            self._gauss = self.rng.standard_normal(384).tolist()
        return tuple(min(255, max(0, int(b + spread * self._gauss.pop()))) for b in base)

    def pick(self, palette, spread: float = 12) -> tuple[int, ...]:
        return self.colour(palette[self.n(0, len(palette) - 1)], spread)

    def smooth(self, cells: int) -> np.ndarray:
        """Value noise in about [-1, 1], with `cells` features across the canvas."""
        grid = self.rng.random((cells + 1, cells + 1), dtype=np.float32) * 2 - 1
        return np.asarray(Image.fromarray(grid).resize((self.d, self.d), Image.BICUBIC))

    def texture(self, base, amp: float = 12, cells: int = 6, spread: float = 14) -> None:
        """Fill with a jittered colour under smooth luminance noise (ground is never flat)."""
        field = self.smooth(cells)[..., None] * amp + self.smooth(cells * 3)[..., None] * amp / 3
        self.paste(np.asarray(self.colour(base, spread), np.float32) + field)

    def paste(self, array: np.ndarray) -> None:
        self.image.paste(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)))

    def pixels(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.float32)

    def box(self, cx, cy, w, h, angle=0.0, fill=None, outline=None, shadow=False):
        """A w x h rectangle centred at (cx, cy), turned by `angle` radians; optional shadow."""
        if angle == 0 and not shadow:  # the common axis-aligned case, several times faster
            self.draw.rectangle((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=fill,
                                outline=outline)
            return
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(cx + x * ca - y * sa, cy + x * sa + y * ca)
               for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
        if shadow:
            sx, sy = self.shadow
            self.draw.polygon([(x + sx, y + sy) for x, y in pts], fill=SHADOW)
        self.draw.polygon(pts, fill=fill, outline=outline)

    def oval(self, cx, cy, rx, ry, fill=None, outline=None, width=1):
        self.draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill, outline=outline,
                          width=max(1, round(width)))

    def blob(self, cx, cy, r, fill, wobble=0.3):
        """An irregular round shape (pond, tree crown): a polygon with a noisy radius."""
        k = 14
        phase, amp = self.rng.uniform(0, 2 * math.pi, 3), self.rng.uniform(0, wobble, 3)
        pts = []
        for i in range(k):
            t = 2 * math.pi * i / k
            bumps = sum(a * math.sin((j + 2) * t + p) for j, (a, p) in enumerate(zip(amp, phase)))
            rr = r * (1 + bumps / 2)
            pts.append((cx + rr * math.cos(t), cy + rr * math.sin(t)))
        self.draw.polygon(pts, fill=fill)

    def line(self, pts, fill, width):
        self.draw.line(pts, fill=fill, width=max(1, round(width)), joint="curve")

    def wavy(self, y0, amp, wavelength, steps=24):
        """Points of a horizontal meandering line across the canvas."""
        phase = self.uni(0, 2 * math.pi)
        return [(x, y0 + amp * math.sin(2 * math.pi * x / wavelength + phase))
                for x in np.linspace(-4, self.d + 4, steps)]

    def trees(self, count, r=(1.5, 3.0), area=None):
        x0, y0, x1, y1 = area or (0, 0, self.d, self.d)
        for _ in range(count):
            cx, cy, rr = self.uni(x0, x1), self.uni(y0, y1), self.uni(*r) * self.u
            self.oval(cx + self.shadow[0], cy + self.shadow[1], rr, rr, fill=(30, 45, 28))
            self.oval(cx, cy, rr, rr, fill=self.colour(DARK_GREEN, 10))

    def road_grid(self, spacing, width, fill):
        """Straight streets on both axes; returns the offsets used so blocks can avoid them."""
        offsets = self.uni(0, spacing), self.uni(0, spacing)
        for axis, off in enumerate(offsets):
            for p in np.arange(off, self.d, spacing):
                pts = [(p, 0), (p, self.d)] if axis == 0 else [(0, p), (self.d, p)]
                self.line(pts, fill, width)
        return offsets


# -- scene painters: one per label, each fills a Canvas ------------------------------------------

def _houses(c: Canvas, count: int, pitch: float, spacing: float, trees: int,
            green_share: float) -> None:
    """The residential trio: one palette, one street style; only density and spacing differ."""
    ground = tuple(np.add(np.multiply(GRASS, green_share), np.multiply(CONCRETE, 1 - green_share)))
    c.texture(ground, amp=12, cells=6, spread=16)
    road, spacing, pitch = 3 * c.u, spacing * c.u, pitch * c.u
    ox, oy = c.road_grid(spacing, road, c.colour(ASPHALT, 10))
    clear = road / 2 + 2.5 * c.u  # a house never sits on a street
    free = [p for p in np.arange(pitch / 2, c.d, pitch)]
    free_x = [x for x in free if min((x - ox) % spacing, (ox - x) % spacing) > clear]
    free_y = [y for y in free if min((y - oy) % spacing, (oy - y) % spacing) > clear]
    slots = [(x, y) for x in free_x for y in free_y]
    palette = [ROOFS[i] for i in c.rng.choice(len(ROOFS), 2, replace=False)]
    for i in c.rng.permutation(len(slots))[:count]:
        x, y = slots[i]
        c.box(x + c.uni(-0.6, 0.6) * c.u, y + c.uni(-0.6, 0.6) * c.u, c.uni(3.6, 5.0) * c.u,
              c.uni(3.0, 4.2) * c.u, c.uni(-0.1, 0.1) + c.n(0, 1) * math.pi / 2,
              fill=c.colour(palette[c.n(0, 1)], 14), shadow=True)
    c.trees(trees)


def dense(c):
    _houses(c, c.n(110, 160), 5.6, c.uni(18, 24), c.n(0, 4), c.uni(0.0, 0.7))


def medium(c):
    _houses(c, c.n(28, 42), 7.0, c.uni(22, 30), c.n(6, 14), c.uni(0.1, 0.9))


def sparse(c):
    _houses(c, c.n(6, 14), 8.0, c.uni(30, 46), c.n(12, 24), c.uni(0.3, 1.0))


def forest(c):
    c.texture(DARK_GREEN, amp=10, cells=8)
    for _ in range(c.n(160, 220)):
        x, y, r = *c.xy(), c.uni(2.0, 4.0) * c.u
        c.oval(x, y, r, r, fill=c.colour((45, 85, 45), 14))
        c.oval(x - r / 3, y - r / 3, r / 3, r / 3, fill=c.colour((70, 110, 60), 10))


def meadow(c):
    c.texture(LIGHT_GREEN, amp=8, cells=4, spread=18)
    if c.rng.random() < 0.5:  # a faint tractor track
        c.line(c.wavy(c.uni(10, 86) * c.u, c.uni(2, 8) * c.u, c.uni(60, 140) * c.u),
               c.colour((165, 170, 120), 8), 1)


def farmland(c):
    c.texture(SOIL, amp=6)
    crops = (GRASS, LIGHT_GREEN, (200, 185, 100), SOIL, (120, 150, 70), (170, 140, 90))
    split = c.uni(30, 66) * c.u  # two blocks of strips, at right angles, meeting at a lane
    for block, (lo, hi) in enumerate(((0, split), (split, c.d))):
        p = lo
        while p < hi:
            w = c.uni(6, 13) * c.u
            fill = c.colour(crops[c.n(0, len(crops) - 1)], 10)
            if block == 0:
                c.draw.rectangle((p, 0, min(p + w, hi), c.d), fill=fill)
            else:
                c.draw.rectangle((0, p, c.d, min(p + w, hi)), fill=fill)
            p += w
    c.line([(split, 0), (split, c.d)], c.colour((150, 140, 110), 8), 1.5 * c.u)


def desert(c):
    c.texture(SAND, amp=8, cells=4, spread=12)
    yy, xx = np.mgrid[0:c.d, 0:c.d].astype(np.float32)
    warp = c.smooth(3) * c.uni(4, 10) * c.u
    ridges = np.sin(2 * math.pi * (yy + warp) / (c.uni(9, 16) * c.u) + c.uni(0, 6.3))
    shade = np.where(ridges > 0, ridges ** 3, ridges * 0.4)  # sharp crests, soft lee sides
    c.paste(c.pixels() + shade[..., None] * c.uni(18, 30))


def bareland(c):
    c.texture(SOIL, amp=18, cells=10, spread=20)
    grain = c.rng.normal(0, 9, (c.d, c.d, 1)).astype(np.float32)
    c.paste(c.pixels() + grain)
    for _ in range(c.n(0, 3)):
        c.line(c.wavy(c.uni(0, 96) * c.u, c.uni(3, 12) * c.u, c.uni(50, 150) * c.u),
               c.colour((175, 145, 110), 10), c.uni(1, 2) * c.u)


def beach(c):
    c.texture(SAND, amp=8)
    yy, xx = np.mgrid[0:c.d, 0:c.d].astype(np.float32)
    wave = np.sin(xx / (c.uni(8, 16) * c.u) + c.uni(0, 6.3))
    shore = c.d * c.uni(0.35, 0.6) + c.uni(3, 8) * c.u * wave
    depth = np.clip((yy - shore) / (20 * c.u), 0, 1)[..., None]
    water = np.asarray(c.colour(WATER, 14), np.float32) + (1 - depth) * 40  # shallow is lighter
    img = np.where(yy[..., None] > shore[..., None], water, c.pixels())
    foam = np.abs(yy - shore)[..., None] < 1.2 * c.u
    c.paste(np.where(foam, 235.0, img))


def river(c):
    c.texture(GRASS, amp=14, cells=5)
    pts = c.wavy(c.d / 2, c.uni(10, 20) * c.u, c.uni(50, 90) * c.u)
    width = c.uni(7, 13) * c.u
    c.line(pts, c.colour((170, 160, 115), 10), width + 3 * c.u)
    c.line(pts, c.colour(WATER, 12), width)
    c.trees(c.n(5, 20))


def pond(c):
    c.texture(GRASS, amp=12)
    cx, cy, r = c.d / 2 + c.uni(-8, 8), c.d / 2 + c.uni(-8, 8), c.uni(13, 22) * c.u
    c.blob(cx, cy, r + 2 * c.u, c.colour((120, 130, 80), 8))
    c.blob(cx, cy, r, c.colour(WATER, 14))
    c.trees(c.n(4, 15))


def port(c):
    c.texture(CONCRETE, amp=10)
    coast = c.d * c.uni(0.45, 0.6)
    c.draw.rectangle((0, coast, c.d, c.d), fill=c.colour(WATER, 12))
    for _ in range(c.n(12, 30)):  # container stacks on the quay
        c.box(c.uni(0, c.d), c.uni(0, coast - 4 * c.u), 5 * c.u, 2 * c.u, 0,
              fill=c.pick(VIVID, 20))
    for x in np.linspace(c.uni(6, 14) * c.u, c.d - 6 * c.u, c.n(2, 4)):
        length = c.uni(14, 30) * c.u
        c.box(x, coast + length / 2, 4 * c.u, length, 0, fill=c.colour(CONCRETE, 8))
        if c.rng.random() < 0.8:  # a ship moored beside the pier
            c.box(x + 6 * c.u, coast + length / 2, 3.5 * c.u, c.uni(10, 22) * c.u, 0,
                  fill=c.pick(VIVID, 15), shadow=True)


def bridge(c):
    c.texture(GRASS if c.rng.random() < 0.6 else CONCRETE, amp=12)
    width = c.uni(18, 30) * c.u
    pts = c.wavy(c.d / 2, c.uni(0, 4) * c.u, c.uni(80, 200) * c.u)
    c.line(pts, c.colour((170, 160, 115), 8), width + 4 * c.u)
    c.line(pts, c.colour(WATER, 12), width)
    x = c.d / 2 + c.uni(-10, 10) * c.u
    c.line([(x + c.shadow[0] * 2, 0), (x + c.shadow[0] * 2, c.d)], SHADOW, 5 * c.u)
    c.line([(x, 0), (x, c.d)], c.colour((185, 182, 175), 8), c.uni(4, 6) * c.u)


def viaduct(c):
    c.texture(GRASS if c.rng.random() < 0.5 else CONCRETE, amp=14, cells=8)
    c.trees(c.n(0, 10))
    pts = c.wavy(c.d / 2, c.uni(2, 14) * c.u, c.uni(90, 200) * c.u)
    off = 4 * c.u  # elevated: its shadow falls well to the side, with the pillars in it
    c.line([(x, y + off) for x, y in pts], SHADOW, 6 * c.u)
    for x, y in pts[::2]:
        c.box(x, y + off / 2, 1.5 * c.u, off, 0, fill=(55, 55, 58))
    c.line(pts, c.colour((190, 188, 180), 8), c.uni(6, 8) * c.u)
    c.line(pts, c.colour((120, 120, 120), 5), 0.6 * c.u)


def airport(c):
    c.texture(GRASS if c.rng.random() < 0.7 else SOIL, amp=8)
    y = c.d * c.uni(0.3, 0.45)
    c.draw.rectangle((0, y - 4 * c.u, c.d, y + 4 * c.u), fill=c.colour(ASPHALT, 8))
    for x in np.arange(c.uni(0, 8), c.d, 8 * c.u):
        c.draw.rectangle((x, y - 0.5 * c.u, x + 4 * c.u, y + 0.5 * c.u), fill=(230, 230, 230))
    ty = y + c.uni(10, 14) * c.u  # parallel taxiway, then the apron and terminal
    c.line([(0, ty), (c.d, ty)], c.colour(ASPHALT, 8), 2 * c.u)
    c.draw.rectangle((0, ty + 4 * c.u, c.d, c.d), fill=c.colour(CONCRETE, 8))
    c.box(c.d / 2, ty + 24 * c.u, c.uni(40, 70) * c.u, 8 * c.u, 0,
          fill=c.colour((200, 200, 205), 8), shadow=True)
    for x in np.linspace(10 * c.u, c.d - 10 * c.u, c.n(2, 5)):
        px, py = x + c.uni(-3, 3), ty + 12 * c.u
        c.box(px, py, 1.6 * c.u, 9 * c.u, 0, fill=(240, 240, 240))
        c.box(px, py - c.u, 10 * c.u, 1.6 * c.u, 0, fill=(240, 240, 240))


def railwaystation(c):
    c.texture(CONCRETE, amp=8)
    tracks = c.n(6, 11)
    y0, pitch = c.uni(14, 24) * c.u, 5 * c.u
    for i in range(tracks):
        y = y0 + i * pitch
        c.line([(0, y), (c.d, y)], c.colour((120, 105, 90), 6), 2.6 * c.u)
        for dy in (-0.7 * c.u, 0.7 * c.u):
            c.line([(0, y + dy), (c.d, y + dy)], (60, 55, 52), 1)
        if i % 3 == 1:  # a platform between tracks
            c.box(c.d / 2, y + pitch / 2, c.d * c.uni(0.6, 0.95), 1.8 * c.u, 0,
                  fill=c.colour((210, 205, 195), 6))
        if c.rng.random() < 0.3:  # a train
            c.box(c.uni(0, c.d), y, c.uni(25, 50) * c.u, 2 * c.u, 0, fill=c.pick(VIVID, 10))
    c.box(c.d / 2, y0 - 8 * c.u, c.uni(30, 60) * c.u, 9 * c.u, 0, fill=c.pick(ROOFS, 10),
          shadow=True)


def parking(c):
    c.texture(ASPHALT, amp=6, spread=10)
    occupancy = c.uni(0.5, 0.95)
    for row in np.arange(c.uni(2, 6), c.d, 14 * c.u):
        for dy in (0, 5 * c.u):
            stalls = np.arange(0, c.d, 3 * c.u)
            taken = c.rng.random(len(stalls)) < occupancy
            kinds = c.rng.integers(0, len(VIVID), len(stalls))
            for x, car, kind in zip(stalls, taken, kinds):
                c.draw.line([(x, row + dy), (x, row + dy + 4.5 * c.u)], (200, 200, 200))
                if car:
                    c.box(x + 1.5 * c.u, row + dy + 2.3 * c.u, 1.9 * c.u, 3.6 * c.u, 0,
                          fill=c.colour(VIVID[kind], 20))


def storagetanks(c):
    c.texture(SOIL if c.rng.random() < 0.4 else CONCRETE, amp=10)
    for _ in range(c.n(3, 9)):
        x, y, r = *c.xy(14 * c.u), c.uni(4, 10) * c.u
        c.oval(x + c.shadow[0] * 1.5, y + c.shadow[1] * 1.5, r, r, fill=SHADOW)
        c.oval(x, y, r, r, fill=c.colour((215, 215, 210), 12), outline=(140, 140, 140), width=c.u)
        c.oval(x, y, r * 0.55, r * 0.55, outline=(170, 170, 170), width=c.u)


def _oval_field(c, rx, ry, track_w, stands_w):
    cx, cy = c.d / 2 + c.uni(-4, 4), c.d / 2 + c.uni(-4, 4)
    if stands_w:
        ox, oy = rx + track_w + stands_w, ry + track_w + stands_w
        c.oval(cx, cy, ox, oy, fill=c.colour((175, 175, 180), 12))
        for t in np.linspace(0, 2 * math.pi, 24, endpoint=False):  # seating sections
            c.line([(cx, cy), (cx + ox * math.cos(t), cy + oy * math.sin(t))], (135, 135, 140), 1)
    c.oval(cx, cy, rx + track_w, ry + track_w, fill=c.colour(TRACK, 14))
    c.oval(cx, cy, rx, ry, fill=c.colour(GRASS, 10))
    c.line([(cx, cy - ry), (cx, cy + ry)], (225, 225, 225), 1)


def stadium(c):
    c.texture(CONCRETE, amp=10)
    c.road_grid(c.uni(40, 60) * c.u, 3 * c.u, c.colour(ASPHALT, 8))
    _oval_field(c, c.uni(16, 20) * c.u, c.uni(10, 13) * c.u, 3 * c.u, c.uni(6, 9) * c.u)


def playground(c):
    c.texture(GRASS if c.rng.random() < 0.6 else CONCRETE, amp=12)
    c.trees(c.n(6, 18))
    _oval_field(c, c.uni(14, 20) * c.u, c.uni(8, 11) * c.u, c.uni(2.5, 4) * c.u, 0)
    if c.rng.random() < 0.5:  # courts beside the track
        c.box(c.d * 0.2, c.d * 0.2, 10 * c.u, 6 * c.u, 0, fill=c.colour((60, 120, 160), 15))


def baseballfield(c):
    c.texture(GRASS, amp=10)
    for _ in range(c.n(1, 2)):
        x, y, r = *c.xy(30 * c.u), c.uni(18, 26) * c.u
        a = c.uni(0, 360)
        c.draw.pieslice((x - r, y - r, x + r, y + r), a, a + 90, fill=c.colour((120, 160, 80), 8))
        c.draw.pieslice((x - r * 0.55, y - r * 0.55, x + r * 0.55, y + r * 0.55), a, a + 90,
                        fill=c.colour((185, 140, 95), 10))  # the dirt infield
        diagonal = math.radians(a + 45)  # the grass square inside the diamond of bases
        c.box(x + r * 0.22 * math.cos(diagonal), y + r * 0.22 * math.sin(diagonal),
              r * 0.22, r * 0.22, diagonal, fill=c.colour((110, 150, 70), 8))
    c.trees(c.n(0, 10))


def church(c):
    _houses(c, c.n(20, 50), 7.0, c.uni(22, 30), c.n(2, 8), c.uni(0.0, 0.6))
    cx, cy, a = c.d / 2, c.d / 2, c.uni(0, math.pi)
    roof = c.colour((95, 105, 110) if c.rng.random() < 0.5 else (160, 80, 60), 12)
    c.oval(cx, cy, 22 * c.u, 22 * c.u, fill=c.colour(CONCRETE, 8))  # churchyard
    c.box(cx, cy, 30 * c.u, 9 * c.u, a, fill=roof, shadow=True)  # nave
    tx, ty = cx + 6 * c.u * math.cos(a), cy + 6 * c.u * math.sin(a)
    c.box(tx, ty, 8 * c.u, 24 * c.u, a, fill=roof, shadow=True)  # transept
    c.box(cx, cy, 30 * c.u, 9 * c.u, a, fill=roof)
    c.box(tx, ty, 8 * c.u, 0.8 * c.u, a, fill=tuple(v // 2 + 20 for v in roof))


def school(c):
    _houses(c, c.n(10, 30), 7.0, c.uni(30, 40), c.n(4, 10), c.uni(0.3, 0.9))
    x, y = c.d * c.uni(0.3, 0.4), c.d * c.uni(0.3, 0.4)
    roof = c.colour((200, 195, 185), 15)
    wing, arm = c.uni(26, 36) * c.u, c.uni(16, 24) * c.u
    c.box(x, y, wing, 7 * c.u, 0, fill=roof, shadow=True)  # L or U of classroom wings
    c.box(x - wing / 2 + 3.5 * c.u, y + arm / 2, 7 * c.u, arm, 0, fill=roof, shadow=True)
    if c.rng.random() < 0.5:
        c.box(x + wing / 2 - 3.5 * c.u, y + arm / 2, 7 * c.u, arm, 0, fill=roof, shadow=True)
    fx, fy = c.d * 0.68, c.d * 0.68
    c.box(fx, fy, 26 * c.u, 16 * c.u, 0, fill=c.colour(GRASS, 10), outline=(230, 230, 230))
    c.oval(fx, fy, 4 * c.u, 4 * c.u, outline=(230, 230, 230))


def center(c):
    c.texture(CONCRETE, amp=10)
    c.road_grid(c.uni(40, 70) * c.u, 3 * c.u, c.colour(ASPHALT, 8))
    c.trees(c.n(4, 14))
    cx, cy, r = c.d / 2 + c.uni(-5, 5), c.d / 2 + c.uni(-5, 5), c.uni(15, 24) * c.u
    c.oval(cx + c.shadow[0] * 2, cy + c.shadow[1] * 2, r, r, fill=SHADOW)
    c.oval(cx, cy, r, r, fill=c.colour((205, 205, 200), 12))
    for k in (0.75, 0.5, 0.25):  # a ribbed dome
        c.oval(cx, cy, r * k, r * k, outline=c.colour((150, 150, 155), 8), width=c.u)
    for t in np.linspace(0, 2 * math.pi, c.n(6, 12), endpoint=False):
        c.line([(cx, cy), (cx + r * math.cos(t), cy + r * math.sin(t))], (150, 150, 155), 1)


def commercial(c):
    c.texture(CONCRETE, amp=8)
    spacing = c.uni(22, 30) * c.u
    c.road_grid(spacing, 4 * c.u, c.colour(ASPHALT, 8))
    for _ in range(c.n(14, 24)):
        x, y = c.xy()
        c.box(x, y, c.uni(8, 14) * c.u, c.uni(6, 11) * c.u, 0,
              fill=c.pick(((190, 190, 195), (120, 135, 150), (170, 160, 150)), 12), shadow=True)
    for _ in range(c.n(10, 30)):  # cars
        c.box(*c.xy(), 1.5 * c.u, 1.5 * c.u, 0, fill=c.pick(VIVID, 15))


def industrial(c):
    c.texture(CONCRETE if c.rng.random() < 0.7 else SOIL, amp=10)
    c.road_grid(c.uni(45, 70) * c.u, 5 * c.u, c.colour(ASPHALT, 8))
    for _ in range(c.n(3, 6)):
        x, y, w, h = *c.xy(), c.uni(18, 36) * c.u, c.uni(12, 22) * c.u
        roof = c.pick(((150, 155, 160), (200, 200, 200), (90, 120, 150)), 10)
        c.box(x, y, w, h, 0, fill=roof, shadow=True)
        for k in np.arange(x - w / 2 + 3 * c.u, x + w / 2, 3 * c.u):  # corrugated roof ridges
            c.line([(k, y - h / 2), (k, y + h / 2)], tuple(v - 25 for v in roof), 1)


def square(c):
    c.texture(CONCRETE, amp=8)
    c.road_grid(c.uni(60, 80) * c.u, 3 * c.u, c.colour(ASPHALT, 8))
    cx, cy, r = c.d / 2, c.d / 2, c.uni(20, 30) * c.u
    paving = c.colour((200, 190, 170), 10)
    c.box(cx, cy, 2 * r, 2 * r, 0, fill=paving)
    pattern = tuple(v - 40 for v in paving)
    for k in (0.8, 0.55, 0.3):
        c.oval(cx, cy, r * k, r * k, outline=pattern, width=c.u)
    for t in np.linspace(0, 2 * math.pi, 8, endpoint=False):
        c.line([(cx, cy), (cx + r * math.cos(t), cy + r * math.sin(t))], pattern, 1)
    c.oval(cx, cy, 3 * c.u, 3 * c.u, fill=c.colour(POOL, 10))  # fountain
    for s in (-1, 1):  # buildings flanking the plaza
        c.box(cx + s * (r + 6 * c.u), cy, 8 * c.u, 2 * r, 0, fill=c.pick(ROOFS, 10),
              shadow=True)


def resort(c):
    c.texture(GRASS, amp=12)
    c.trees(c.n(15, 35))
    for _ in range(c.n(4, 9)):
        c.box(*c.xy(8 * c.u), c.uni(5, 10) * c.u, c.uni(5, 9) * c.u, c.uni(0, math.pi),
              fill=c.pick(((190, 100, 60), (220, 210, 190), (150, 80, 50)), 12), shadow=True)
    for _ in range(c.n(2, 4)):  # pools
        x, y = c.xy(10 * c.u)
        c.box(x, y, c.uni(7, 12) * c.u, c.uni(3, 6) * c.u, c.uni(0, math.pi), fill=(225, 225, 215))
        c.box(x, y, c.uni(5, 7) * c.u, c.uni(2, 3) * c.u, 0, fill=c.colour(POOL, 12))


def mountain(c):
    height = c.smooth(3) + 0.4 * c.smooth(6) + 0.15 * c.smooth(12)
    ridges = 1 - np.abs(height)  # folded noise gives sharp crests and valleys between
    gy, gx = np.gradient(ridges * 7 / c.u)
    light = c.rng.uniform(0, 2 * math.pi)
    shade = np.clip(0.9 + gx * math.cos(light) + gy * math.sin(light), 0.45, 1.25)
    low, high = np.asarray(c.colour((85, 105, 60), 14)), np.asarray(c.colour((140, 125, 105), 14))
    t = np.clip(ridges, 0, 1)[..., None]
    c.paste((low * (1 - t) + high * t) * shade[..., None])


def park(c):
    c.texture(GRASS, amp=12, cells=5)
    for _ in range(c.n(2, 4)):  # footpaths
        c.line(c.wavy(c.uni(0, 96) * c.u, c.uni(4, 14) * c.u, c.uni(40, 100) * c.u),
               c.colour((200, 190, 160), 8), c.uni(1.2, 2.2) * c.u)
    for _ in range(c.n(3, 6)):  # tree clumps
        x, y = c.xy()
        half = 10 * c.u
        c.trees(c.n(5, 12), r=(1.8, 3.2), area=(x - half, y - half, x + half, y + half))
    if c.rng.random() < 0.4:
        c.blob(*c.xy(20 * c.u), c.uni(6, 10) * c.u, c.colour(WATER, 12))


PAINTERS = {
    "airport": airport, "bareland": bareland, "baseballfield": baseballfield, "beach": beach,
    "bridge": bridge, "center": center, "church": church, "commercial": commercial,
    "denseresidential": dense, "desert": desert, "farmland": farmland, "forest": forest,
    "industrial": industrial, "meadow": meadow, "mediumresidential": medium, "mountain": mountain,
    "park": park, "parking": parking, "playground": playground, "pond": pond, "port": port,
    "railwaystation": railwaystation, "resort": resort, "river": river, "school": school,
    "sparseresidential": sparse, "square": square, "stadium": stadium,
    "storagetanks": storagetanks, "viaduct": viaduct,
}
if set(PAINTERS) != set(AID_LABELS):  # a painter per AID label, no more, no less
    raise RuntimeError("synthetic painters do not match the AID labels: "
                       f"{sorted(set(PAINTERS) ^ set(AID_LABELS))}")


# -- rendering and the on-disk set ---------------------------------------------------------------

def render(label: str, index: int, size: int = 64, seed: int = 0) -> Image.Image:
    """One synthetic scene, a pure function of its arguments."""
    rng = np.random.default_rng([seed, AID_LABELS.index(label), index])
    # Draw on a canvas 1.5x larger so that any rotation still covers the centre crop.
    c = Canvas(rng, math.ceil(size * 1.5))
    PAINTERS[label](c)
    side = size * rng.uniform(0.9, 1.05)  # zoom jitter; <= d / sqrt(2) keeps corners filled
    lo = (c.d - side) / 2
    view = c.image.rotate(rng.uniform(0, 360), Image.BILINEAR)
    view = view.resize((size, size), Image.BILINEAR, box=(lo, lo, lo + side, lo + side))
    x = np.asarray(view, np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    x = x * rng.uniform(0.93, 1.07, 3) + rng.normal(0, rng.uniform(2, 6), x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def write_synthetic_aid(root: str | Path, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """Draw the whole set into `root` (AID layout) and write the marker file last."""
    root = Path(root)
    for class_dir, label in zip(AID_CLASS_DIRS, AID_LABELS):
        (root / class_dir).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            quality = 80 + (n * 7 + len(label)) % 16  # varied JPEG artefacts, deterministic
            render(label, n, size, seed).save(root / class_dir / f"{label}_{n}.jpg", "JPEG",
                                              quality=quality)
    manifest = {"notice": SYNTHETIC_NOTICE, **_params(per_class, size, seed)}
    write_text_atomic(root / SYNTHETIC_MARKER, json.dumps(manifest, indent=1) + "\n", DataError)
    return root


def ensure_synthetic_aid(cache_dir: str | Path, per_class: int = 100, size: int = 64,
                         seed: int = 0) -> Path:
    """Root of a complete synthetic set under cache_dir, generating it only when needed.

    Generation goes to a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half set where a later run would trust it.
    """
    if per_class < 1 or size < 8:
        raise DataError(f"synthetic AID needs per_class >= 1 and size >= 8, got {per_class}, {size}")
    cache_dir = Path(cache_dir)
    root = cache_dir / f"synthetic_aid_{size}px_{per_class}pc_seed{seed}"
    if _complete(root, per_class, size, seed):
        return root
    try:
        return _generate(root, per_class, size, seed)
    except OSError as e:
        raise DataError(f"cannot write the synthetic AID set under {cache_dir}: {e.strerror or e}") from e


def _generate(root: Path, per_class: int, size: int, seed: int) -> Path:
    cache_dir = root.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache_dir))
    try:
        write_synthetic_aid(tmp, per_class, size, seed)
        if _complete(root, per_class, size, seed):  # a concurrent run finished first
            return root
        if root.exists():  # stale or partial: move it aside first, rename() cannot replace it
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale.", dir=cache_dir))
            os.replace(root, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _complete(root, per_class, size, seed):  # not a concurrent writer's success
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _params(per_class: int, size: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "per_class": per_class, "size": size,
            "seed": seed}


def _complete(root: Path, per_class: int, size: int, seed: int) -> bool:
    try:
        manifest = read_json(root / SYNTHETIC_MARKER, "synthetic AID marker", DataError)
        expected = _params(per_class, size, seed)
        if not isinstance(manifest, dict) or {k: manifest.get(k) for k in expected} != expected:
            return False
        return all(sum(1 for _ in os.scandir(root / d)) == per_class for d in AID_CLASS_DIRS)
    except (OSError, DataError):  # absent, partial or foreign: regenerate
        return False
