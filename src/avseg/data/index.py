"""Index AVSBench S4, MS3 and AVSS metadata CSVs exactly as distributed (and our synthetic copies of them).

``index_videos`` turns a metadata CSV into ``VideoRecord``s, every path resolved through
``avseg.data.layout`` (files are not opened); ``scan_metadata`` collects every problem of a CSV for
``avseg data validate``; ``class_names`` gives a layout's label vocabulary.

Video-level labels (the only supervision weak methods see):
- S4: the category column.
- MS3: the optional ``labels`` column (class names separated by ';', written by our synthetic generator);
  the official MS3 CSV has no class information, so without that column every video gets the single
  class ``sounding``.
- AVSS: the union of the non-zero classes of the video's ``labels_semantic`` maps (exact, unlike the
  free-text ``a_obj`` column, whose vocabulary differs from label2idx).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path, PurePath

from avseg.data import layout as L
from avseg.data.errors import DataError

SOUNDING = "sounding"
MAX_NAME_BYTES = 200  # ids become file names with suffixes such as ".mp4_5.png"; file systems stop at 255


@dataclass(frozen=True)
class VideoRecord:
    """One video of a subset and split; paths are absolute, frame numbers as on disk."""

    video_id: str
    split: str
    category: str  # S4 category, "" for MS3, the AVSS label v1s/v1m/v2
    frame_paths: tuple[Path, ...]
    frame_numbers: tuple[int, ...]  # 1-based for S4/MS3, 0-based for AVSS
    mask_paths: tuple[Path | None, ...]  # None: this frame has no ground truth in this split
    audio_path: Path
    pkl_path: Path | None
    label_names: tuple[str, ...] | None  # from the metadata; None for AVSS (read from the maps)
    rgb_paths: tuple[Path | None, ...] = ()  # AVSS palette maps


@dataclass(frozen=True)
class MetadataProblem:
    path: str
    problem: str


def _check_name(value: str, what: str, path: Path, line: int) -> None:
    """Ids become path components: refuse anything that could escape the dataset folder or is no file name."""
    p = PurePath(value)
    if not value or value in (".", "..") or p.is_absolute() or "/" in value or "\\" in value or ".." in p.parts:
        raise DataError(path, f"line {line}: {what} {value!r} is not a plain file name (refused: path traversal)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise DataError(path, f"line {line}: {what} {value!r} holds control characters (refused)")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise DataError(path, f"line {line}: {what} {value[:40]!r}... is longer than {MAX_NAME_BYTES} bytes (refused)")


def _read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """(physical line number, stripped cells) of every non-blank row."""
    if not path.is_file():
        raise DataError(path, "metadata file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable metadata ({exc})") from exc
    rows: list[tuple[int, list[str]]] = []
    # newline="" keeps line breaks inside quoted cells in the cell (they are refused as control characters)
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                rows.append((start, [c.strip() for c in row]))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(path, f"line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        raise DataError(path, "metadata file is empty")
    return rows


def _is_s4_header(row: list[str]) -> bool:
    """The S4 CSV's header row is optional. It is recognised by a 'split' column, a first column 'name', or
    a start column that is no number while the last column is no split name. Any other first row is data,
    so a mistyped split in row 1 is reported instead of being dropped as a header."""
    cells = [c.lower() for c in row]
    if cells[0] == "name" or "split" in cells:
        return True
    start_is_number = len(cells) > 1 and cells[1].replace(".", "", 1).isdigit()
    return not start_is_number and cells[-1] not in L.SPLITS


def read_metadata(root: Path, layout: str) -> list[dict[str, str]]:
    """Parse a subset's metadata CSV into rows {video, split, category, labels, line}.

    Raises DataError naming the CSV and line for missing columns, unknown split names, duplicate ids and
    ids that are not plain file names (the first problem; ``scan_metadata`` lists them all).
    """
    rows, problems = scan_metadata(root, layout)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DataError(problems[0].path, problems[0].problem + more)
    return rows


def scan_metadata(root: Path, layout: str) -> tuple[list[dict[str, str]], list[DataError]]:
    """Like read_metadata, but returns the good rows and every problem instead of raising."""
    root = Path(root)
    if layout not in L.LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {L.LAYOUTS}")
    path = L.metadata_path(root, layout)
    try:
        rows = _read_csv(path)
    except DataError as exc:
        return [], [exc]
    problems: list[DataError] = []
    out: list[dict[str, str]] = []

    def bad(line: int, problem: str) -> None:
        problems.append(DataError(path, f"line {line}: {problem}"))

    if layout == "s4":
        # Columns by position: name, start-second, category, split; a header row is optional.
        start = 1 if _is_s4_header(rows[0][1]) else 0
        for i, row in rows[start:]:
            if len(row) < 4:
                bad(i, f"expected 4 columns (name, start, category, split), found {len(row)}")
                continue
            out.append({"video": row[0], "category": row[2], "split": row[3], "labels": row[2], "line": str(i)})
    elif layout == "ms3":
        header_line, header_row = rows[0]
        header = [h.lower() for h in header_row]
        if "split" not in header:
            return [], [DataError(path, f"line {header_line}: header has no 'split' column (found {header_row})")]
        split_col = header.index("split")
        label_col = header.index("labels") if "labels" in header else None
        for i, row in rows[1:]:
            if len(row) <= max(split_col, label_col or 0):
                bad(i, f"expected {len(header)} columns, found {len(row)}")
                continue
            labels = row[label_col] if label_col is not None else ""
            out.append({"video": row[0], "category": "", "split": row[split_col], "labels": labels, "line": str(i)})
    else:
        header_line, header_row = rows[0]
        if len(header_row) < 7:
            return [], [DataError(path, f"line {header_line}: expected 7 columns (vid, uid, s_min, s_sec, a_obj, split, label), found {len(header_row)}")]
        for i, row in rows[1:]:
            if len(row) < 7:
                bad(i, f"expected 7 columns, found {len(row)}")
                continue
            if row[6] not in L.AVSS_LABELS:
                bad(i, f"label {row[6]!r} is not one of {L.AVSS_LABELS}")
                continue
            out.append({"video": row[1], "category": row[6], "split": row[5], "labels": "", "line": str(i)})
    good: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for r in out:
        line = int(r["line"])
        if r["split"] not in L.SPLITS:
            bad(line, f"unknown split {r['split']!r} (expected one of {L.SPLITS})")
            continue
        try:
            _check_name(r["video"], "video id", path, line)
            if r["category"]:
                _check_name(r["category"], "category", path, line)
        except DataError as exc:
            problems.append(exc)
            continue
        if r["video"] in seen:
            bad(line, f"duplicate video id {r['video']!r} (first on line {seen[r['video']]})")
            continue
        seen[r["video"]] = r["line"]
        good.append(r)
    return good, problems


def class_names(root: Path, layout: str) -> list[str]:
    """The label vocabulary, index = position in the video-level label vector.

    S4: the official 23 categories in official order when every category is one of them, else the sorted
    categories of the CSV (synthetic or custom data). MS3: sorted names of the ``labels`` column, or
    ``["sounding"]``. AVSS: label2idx.json without background (class id c -> label index c - 1).
    """
    root = Path(root)
    if layout == "avss":
        return avss_classes(root)[1:]
    rows = read_metadata(root, layout)
    if layout == "s4":
        cats = sorted({r["category"] for r in rows})
        if set(cats) <= set(L.S4_CATEGORIES):
            return list(L.S4_CATEGORIES)
        return cats
    names = sorted({n.strip() for r in rows for n in r["labels"].split(";") if n.strip()})
    return names or [SOUNDING]


def avss_classes(root: Path) -> list[str]:
    """All AVSS class names by class index (0 = background) from label2idx.json."""
    path = L.label2idx_path(Path(root))
    if not path.is_file():
        raise DataError(path, "label2idx.json not found")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(path, f"malformed JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(path, "expected a non-empty JSON object {class name: index}")
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in mapping.items()):
        raise DataError(path, "every entry must map a class name (string) to an integer index")
    indices = sorted(mapping.values())
    if indices != list(range(len(mapping))):
        raise DataError(path, f"class indices must be 0..{len(mapping) - 1} without gaps or repeats")
    names = [""] * len(mapping)
    for name, idx in mapping.items():
        names[idx] = name
    return names


def index_videos(root: Path, layout: str, split: str, rows: list[dict[str, str]] | None = None) -> list[VideoRecord]:
    """Every video of ``split`` in metadata order, with all paths resolved (files are not opened).

    ``rows``: already parsed metadata rows (``scan_metadata``); read from the CSV when None.
    """
    root = Path(root)
    if split not in L.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {L.SPLITS}")
    records = []
    for r in read_metadata(root, layout) if rows is None else rows:
        if r["split"] != split:
            continue
        vid, cat = r["video"], r["category"]
        if layout == "s4":
            ks = tuple(range(1, 6))
            has = set(L.s4_mask_frames(split))
            records.append(VideoRecord(
                video_id=vid, split=split, category=cat,
                frame_paths=tuple(L.s4_frame(root, split, cat, vid, k) for k in ks), frame_numbers=ks,
                mask_paths=tuple(L.s4_mask(root, split, cat, vid, k) if k in has else None for k in ks),
                audio_path=L.s4_wav(root, split, cat, vid), pkl_path=L.s4_pkl(root, split, cat, vid),
                label_names=(cat,),
            ))  # fmt: skip
        elif layout == "ms3":
            ks = tuple(range(1, 6))
            names = tuple(n.strip() for n in r["labels"].split(";") if n.strip()) or (SOUNDING,)
            records.append(VideoRecord(
                video_id=vid, split=split, category="",
                frame_paths=tuple(L.ms3_frame(root, vid, k) for k in ks), frame_numbers=ks,
                mask_paths=tuple(L.ms3_mask(root, split, vid, k) for k in ks),
                audio_path=L.ms3_wav(root, split, vid), pkl_path=L.ms3_pkl(root, split, vid),
                label_names=names,
            ))  # fmt: skip
        else:
            ks = tuple(range(L.FRAMES_PER_VIDEO[cat]))
            has = set(L.avss_mask_frames(cat, split))
            records.append(VideoRecord(
                video_id=vid, split=split, category=cat,
                frame_paths=tuple(L.avss_frame(root, cat, vid, i) for i in ks), frame_numbers=ks,
                mask_paths=tuple(L.avss_semantic(root, cat, vid, i) if i in has else None for i in ks),
                audio_path=L.avss_wav(root, cat, vid), pkl_path=None, label_names=None,
                rgb_paths=tuple(L.avss_rgb(root, cat, vid, i) if i in has else None for i in ks),
            ))  # fmt: skip
    return records
