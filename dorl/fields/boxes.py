"""White-cell box files as the public field datasets ship them: YOLO txt and Pascal VOC xml.

Boxes are float arrays of shape (n, 4), ``(x0, y0, x1, y1)`` in pixels of the field, with a
label per box (the YOLO class index as text, or the VOC object name).
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from dorl.errors import InputError

#: A box file is a few lines per cell; anything larger is not one.
MAX_BOX_FILE_BYTES = 10 * 1024 ** 2
#: Box file suffixes and their format.
FORMATS = {".txt": "yolo", ".xml": "voc"}


class BoxFileError(InputError, ValueError):
    """A box file is missing, malformed, or gives a box outside its field."""


def read_yolo(path: str | Path, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """Boxes of a YOLO txt file: ``class x_centre y_centre width height`` per line, as
    fractions of the field's side; an empty file is a field without white cells."""
    path = Path(path)
    boxes, labels = [], []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise BoxFileError(f"{path}, line {number}: expected 'class x_centre y_centre width "
                               f"height' (5 numbers), got {line.strip()[:60]!r}") from None
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise BoxFileError(f"{path}, line {number}: YOLO values are fractions of the side "
                               f"(0..1, width and height > 0), got {line.strip()[:60]!r}")
        boxes.append(((cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height))
        labels.append(parts[0])
    return _clipped(np.asarray(boxes, np.float64).reshape(-1, 4), width, height), labels


def read_voc(path: str | Path, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """Boxes of a Pascal VOC xml file: each ``object`` with a ``name`` and a ``bndbox``
    (``xmin ymin xmax ymax`` in pixels, 1-based as VOC writes them)."""
    path = Path(path)
    try:
        root = ElementTree.fromstring(_text(path))
    except ElementTree.ParseError as exc:
        raise BoxFileError(f"{path}: not a Pascal VOC xml file ({exc})") from None
    boxes, labels = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise BoxFileError(f"{path}: object {number} has no numeric bndbox "
                               f"xmin/ymin/xmax/ymax") from None
        if x1 <= x0 or y1 <= y0:
            raise BoxFileError(f"{path}: object {number}'s box is empty ({x0}, {y0}, {x1}, {y1})")
        boxes.append((x0 - 1, y0 - 1, x1, y1))
        name = obj.find("name")
        labels.append(name.text.strip() if name is not None and name.text else "")
    return _clipped(np.asarray(boxes, np.float64).reshape(-1, 4), width, height), labels


def read_boxes(path: str | Path, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """The boxes of a YOLO (``.txt``) or VOC (``.xml``) file of a ``width`` x ``height`` field.

    Raises
    ------
    BoxFileError
        In one line naming the file: missing, too large, not text, malformed, or unknown suffix.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BoxFileError(f"{path}: unknown box file type; use YOLO .txt or Pascal VOC .xml")
    return (read_yolo if kind == "yolo" else read_voc)(path, width, height)


def _text(path: Path) -> str:
    if not path.is_file():
        raise BoxFileError(f"{path}: box file not found")
    size = path.stat().st_size
    if size > MAX_BOX_FILE_BYTES:
        raise BoxFileError(f"{path}: {size:,} bytes, more than a box file may hold "
                           f"({MAX_BOX_FILE_BYTES:,})")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BoxFileError(f"{path}: not a UTF-8 text file") from None


def _clipped(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the field (exports round a border box a pixel past it)."""
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes
