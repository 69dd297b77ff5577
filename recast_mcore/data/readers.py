"""Readers for interaction logs in real formats -> ``RawInteractions`` (raw string ids, float times).

Formats:
  * MovieLens: GroupLens ``u.data`` (tab: user item rating timestamp), ``ratings.dat``
    (``user::item::rating::timestamp``), RecBole ``.inter`` (tab, header ``user_id:token item_id:token
    rating:float timestamp:float``; columns found by name).
  * Amazon reviews: 5-core JSON lines (``reviewerID``, ``asin``, ``unixReviewTime``, optional
    ``overall``), or the ratings-only CSV ``user,item,rating,timestamp`` (no header).
  * Generic CSV/TSV: ``user, item, timestamp[, rating]`` (tab when the file is ``.tsv`` or the first
    line contains a tab, else comma; a first line whose timestamp is not a number is a header).
Files ending in ``.gz`` are read through gzip.

Bytes are decoded as UTF-8 with ``surrogateescape``: an id holding bytes that are not valid UTF-8 keeps
them (two such ids never merge); data/ids.py writes it escaped. JSON ids must be strings or integers
(``null`` is a malformed row, never the user "None").

A malformed row raises ``MalformedRowError`` naming the file and the 1-based line number, unless
``skip_malformed`` is set: then it is counted in ``RawInteractions.skipped_rows`` (first examples
kept in ``skipped_examples``) and the dataset is built from the remaining rows. A file that cannot be
read to its end (a truncated or non-gzip ``.gz``, an I/O error) always raises ``MalformedRowError``
naming the file and the line it broke at: skipping the rest of a file is not a malformed row.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

MAX_SKIP_EXAMPLES = 5


class MalformedRowError(ValueError):
    """A row of an input file cannot be parsed; the message is ``file:line: reason: row``."""


@dataclass
class RawInteractions:
    """Interactions with raw ids, in file order (n rows)."""

    users: list[str]
    """[n] raw user ids."""
    items: list[str]
    """[n] raw item ids."""
    timestamps: np.ndarray
    """[n] float64 event times (ties are broken by file order later)."""
    ratings: np.ndarray | None = None
    """[n] float64 ratings, or None when the format has none."""
    source: str = ""
    """Where the rows came from (file path or generator name)."""
    skipped_rows: int = 0
    """Malformed rows skipped (only with skip_malformed)."""
    skipped_examples: list[str] = field(default_factory=list)
    """The first few skipped rows as ``file:line: reason``."""
    item_features: dict[str, np.ndarray] | None = None
    """Optional raw item id -> float feature vector (all the same length), e.g. ml-100k genres + year."""

    def __len__(self) -> int:
        return len(self.users)


# --------------------------------------------------------------------------- plumbing
class _TextFile:
    """A text input (gzip when ``.gz``) whose read errors become ``MalformedRowError`` with file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines_read = 0
        opener = gzip.open if path.suffix == ".gz" else open
        self._file = opener(path, "rt", encoding="utf-8", errors="surrogateescape")

    def __enter__(self) -> "_TextFile":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    @contextmanager
    def _read_errors(self):
        try:
            yield
        except (EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, gzip.BadGzipFile):
                why = f"it is not gzip data ({exc}); decompress it or drop the .gz suffix"
            elif isinstance(exc, (EOFError, zlib.error)):
                why = f"the compressed data ends or breaks here ({exc or 'unexpected end of stream'}); the file is truncated or damaged, download it again"
            else:
                why = f"read error: {exc}"
            raise MalformedRowError(f"{self.path}:{self.lines_read + 1}: cannot read this line: {why}") from None

    def readline(self) -> str:
        with self._read_errors():
            text = self._file.readline()
        self.lines_read += bool(text)
        return text

    def __iter__(self) -> Iterator[str]:
        while text := self.readline():
            yield text


def _open_text(path: Path) -> _TextFile:
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    return _TextFile(path)


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not finite")
    return value


def _require_id(value: object, what: str) -> str:
    """A raw id: a non-empty string (stripped) or an integer; null and other JSON types are errors."""
    if value is None:
        raise ValueError(f"{what} is null")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{what} must be a string or an integer, got {type(value).__name__} {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"empty {what}")
    return text


def _json_number(record: dict, key: str) -> float:
    value = record[key]
    if value is None or isinstance(value, bool):
        raise ValueError(f"{key} is {json.dumps(value)}, not a number")
    return _number(str(value), key)


Row = tuple[str, str, float, float | None]
"""(user, item, timestamp, rating or None)."""


def _collect(
    path: Path,
    lines: Iterator[tuple[int, str]],
    parse: Callable[[str], Row | None],
    skip_malformed: bool,
    with_ratings: bool,
) -> RawInteractions:
    """Run ``parse`` on every (line_no, text); ``None`` from parse means 'not a data row' (blank)."""
    users, items, times, ratings = [], [], [], []
    skipped, examples = 0, []
    for line_no, text in lines:
        if not text.strip():
            continue
        try:
            row = parse(text)
        except (ValueError, KeyError, TypeError) as exc:
            message = f"{path}:{line_no}: {exc}: {text.strip()[:120]!r}"
            if not skip_malformed:
                raise MalformedRowError(message) from None
            skipped += 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append(message)
            continue
        if row is None:
            continue
        users.append(row[0])
        items.append(row[1])
        times.append(row[2])
        ratings.append(row[3] if row[3] is not None else float("nan"))
    if not users:
        raise ValueError(f"{path}: no valid interaction rows ({skipped} malformed rows skipped)")
    rating_array = np.asarray(ratings, dtype=np.float64) if with_ratings else None
    return RawInteractions(
        users=users,
        items=items,
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=rating_array,
        source=str(path),
        skipped_rows=skipped,
        skipped_examples=examples,
    )


def _numbered_lines(handle, start: int = 1) -> Iterator[tuple[int, str]]:
    for line_no, text in enumerate(handle, start=start):
        yield line_no, text.rstrip("\n").rstrip("\r")


def _split_fields(text: str, sep: str, expected: tuple[int, ...]) -> list[str]:
    parts = text.split(sep)
    if len(parts) not in expected:
        want = " or ".join(map(str, expected))
        raise ValueError(f"expected {want} fields separated by {sep!r}, got {len(parts)}")
    return parts


# --------------------------------------------------------------------------- MovieLens
def read_movielens(path: str | Path, skip_malformed: bool = False) -> RawInteractions:
    """GroupLens ``u.data`` / ``ratings.dat`` or a RecBole ``.inter`` file (chosen by name/content)."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".inter"):
        return _read_recbole_inter(path, skip_malformed)
    with _open_text(path) as handle:
        first = handle.readline()
    sep = "::" if "::" in first else "\t"

    def parse(text: str) -> Row:
        user, item, rating, ts = _split_fields(text, sep, (4,))
        return (_require_id(user, "user"), _require_id(item, "item"), _number(ts, "timestamp"), _number(rating, "rating"))

    with _open_text(path) as handle:
        return _collect(path, _numbered_lines(handle), parse, skip_malformed, with_ratings=True)


def _read_recbole_inter(path: Path, skip_malformed: bool) -> RawInteractions:
    with _open_text(path) as handle:
        header = handle.readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        for needed in ("user_id", "item_id", "timestamp"):
            if needed not in names:
                raise MalformedRowError(f"{path}:1: RecBole header lacks '{needed}' (header: {header})")
        u_col, i_col, t_col = names.index("user_id"), names.index("item_id"), names.index("timestamp")
        r_col = names.index("rating") if "rating" in names else None

        def parse(text: str) -> Row:
            parts = _split_fields(text, "\t", (len(names),))
            rating = _number(parts[r_col], "rating") if r_col is not None else None
            return (_require_id(parts[u_col], "user"), _require_id(parts[i_col], "item"), _number(parts[t_col], "timestamp"), rating)

        return _collect(path, _numbered_lines(handle, start=2), parse, skip_malformed, with_ratings=r_col is not None)


# --------------------------------------------------------------------------- Amazon
def read_amazon(path: str | Path, skip_malformed: bool = False) -> RawInteractions:
    """Amazon 5-core JSON lines (``.json``/``.jsonl``[.gz]) or ratings-only CSV ``user,item,rating,timestamp``."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name.endswith((".json", ".jsonl")):
        parse = _parse_amazon_json
        with_ratings = True
    elif name.endswith(".csv"):
        parse = _parse_amazon_csv
        with_ratings = True
    else:
        raise ValueError(f"{path}: Amazon reader expects .json/.jsonl (5-core reviews) or .csv (ratings only)")
    with _open_text(path) as handle:
        return _collect(path, _numbered_lines(handle), parse, skip_malformed, with_ratings)


def _parse_amazon_json(text: str) -> Row:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("a JSON line must be an object")
    for key in ("reviewerID", "asin", "unixReviewTime"):
        if key not in record:
            raise ValueError(f"missing key '{key}'")
    rating = _json_number(record, "overall") if "overall" in record else None
    return (
        _require_id(record["reviewerID"], "reviewerID"),
        _require_id(record["asin"], "asin"),
        _json_number(record, "unixReviewTime"),
        rating,
    )


def _parse_amazon_csv(text: str) -> Row:
    user, item, rating, ts = _split_fields(text, ",", (4,))
    return (_require_id(user, "user"), _require_id(item, "item"), _number(ts, "timestamp"), _number(rating, "rating"))


# --------------------------------------------------------------------------- generic CSV/TSV
def read_csv(path: str | Path, skip_malformed: bool = False) -> RawInteractions:
    """Generic ``user, item, timestamp[, rating]`` CSV or TSV (see module docstring for detection)."""
    path = Path(path)
    with _open_text(path) as handle:
        first = handle.readline().rstrip("\n").rstrip("\r")
    name = path.name.removesuffix(".gz")
    sep = "\t" if name.endswith(".tsv") or "\t" in first else ","
    first_fields = first.split(sep)
    has_header = len(first_fields) >= 3 and not _is_number(first_fields[2])
    counts: set[int] = set()

    def parse(text: str) -> Row:
        parts = _split_fields(text, sep, (3, 4))
        if counts and len(parts) not in counts:
            raise ValueError(f"{len(parts)} columns, but earlier rows have {counts.pop() if len(counts) == 1 else counts}")
        counts.add(len(parts))
        rating = _number(parts[3], "rating") if len(parts) == 4 else None
        return (_require_id(parts[0], "user"), _require_id(parts[1], "item"), _number(parts[2], "timestamp"), rating)

    with _open_text(path) as handle:
        lines = _numbered_lines(handle)
        if has_header:
            next(lines)
        raw = _collect(path, lines, parse, skip_malformed, with_ratings=True)
    if counts == {3}:
        raw.ratings = None
    return raw


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- MovieLens item features
ML100K_GENRES = 19


def read_ml100k_item_features(path: str | Path) -> dict[str, np.ndarray]:
    """RecBole ``ml-100k.item`` -> item id -> [genre multi-hot (19) | standardized release year].

    The header is ``item_id:token movie_title:token_seq release_year:token class:token_seq``; genres
    are space-separated names in ``class``. Unknown years get the mean year.
    """
    path = Path(path)
    with _open_text(path) as handle:
        header = [h.split(":")[0] for h in handle.readline().rstrip("\n").split("\t")]
        for needed in ("item_id", "release_year", "class"):
            if needed not in header:
                raise MalformedRowError(f"{path}:1: item header lacks '{needed}' (header: {header})")
        rows = []
        for line_no, text in _numbered_lines(handle, start=2):
            if not text.strip():
                continue
            parts = text.split("\t")
            if len(parts) != len(header):
                raise MalformedRowError(f"{path}:{line_no}: expected {len(header)} fields, got {len(parts)}")
            rows.append(dict(zip(header, parts)))
    genres = sorted({g for r in rows for g in r["class"].split() if g})
    years = np.array([_year(r["release_year"]) for r in rows], dtype=np.float64)
    known = years[~np.isnan(years)]
    years = np.where(np.isnan(years), known.mean() if known.size else 0.0, years)
    years = (years - years.mean()) / (years.std() or 1.0)
    features = {}
    for r, year in zip(rows, years):
        vec = np.zeros(len(genres) + 1)
        for g in r["class"].split():
            vec[genres.index(g)] = 1.0
        vec[-1] = year
        features[r["item_id"].strip()] = vec
    return features


def _year(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


DatasetFormat = Literal["movielens", "amazon", "csv"]
READERS: dict[str, Callable[..., RawInteractions]] = {
    "movielens": read_movielens,
    "amazon": read_amazon,
    "csv": read_csv,
}


def read_interactions(fmt: str, path: str | Path, skip_malformed: bool = False) -> RawInteractions:
    """Dispatch to the reader of ``fmt`` (one of ``READERS``)."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(sorted(READERS))}")
    return READERS[fmt](path, skip_malformed=skip_malformed)
