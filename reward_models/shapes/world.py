"""The shapes world's vocabulary: classes, colours and the palette. Imports nothing of the project."""

from __future__ import annotations

CLASSES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLORS = {  # name -> RGB; well separated from each other and from the #999 background
    "red": (220, 40, 40),
    "yellow": (240, 210, 30),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "purple": (150, 50, 180),
    "black": (20, 20, 20),
}
BACKGROUND = (153, 153, 153)  # #999, as GenEval's colour crops
NUMBERS = {2: "two", 3: "three", 4: "four"}
