"""Ingest IMDb ``name.basics.tsv[.gz]``: actors and actresses with clean, unique names.

IMDb's format: tab-separated, a header row, no quoting (quotes are literal characters), ``\\N`` for null.
Columns: nconst, primaryName, birthYear, deathYear, primaryProfession, knownForTitles.
Malformed lines are counted by reason and reported, never fatal and never dropped silently.

The file is streamed in blocks and the checks run on whole columns with pyarrow compute, so the full IMDb
file (14.8M rows) reads in seconds within about a gigabyte (``bench/names_ingest.py``, ``docs/build.md``).
Pure-ASCII names (nearly all) are cleaned with character classes derived from Python's own ``str.split``,
``str.isalpha`` and ``unicodedata`` rules, so they come out exactly as ``clean_name`` makes them; the few
others go through ``clean_name`` itself, so that NFC, the Unicode categories and ``str.casefold`` stay
Python's (pyarrow's utf8proc and RE2 tables may be of another Unicode version).
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from facelift.storage import open_uri

log = logging.getLogger(__name__)

COLUMNS = ["nconst", "primaryName", "birthYear", "deathYear", "primaryProfession", "knownForTitles"]
ACTING = ("actor", "actress")
NULL = b"\\N"
CONTROL_CATEGORIES = ("Cc", "Cf", "Cs", "Co")
BLOCK_SIZE = 16 << 20  # bytes of TSV per streamed batch


class NamesError(ValueError):
    """The names file cannot be used at all (missing, wrong header, no eligible names)."""


@dataclass
class NamesReport:
    """What ingest kept and dropped, by reason (all counts are rows)."""

    source: str
    rows: int = 0
    kept: int = 0
    not_acting: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first line numbers

    def drop(self, reason: str, line: int | None = None) -> None:
        self.dropped[reason] += 1
        if line is not None and len(self.examples.setdefault(reason, [])) < 5:
            self.examples[reason].append(line)

    def as_dict(self) -> dict:
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "not_acting": self.not_acting,
                "dropped": dict(self.dropped), "example_lines": self.examples}

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"{self.source}: {self.rows} rows, {self.kept} actors kept, {self.not_acting} non-actors, "
                f"dropped: {drops}")


def bundled_names_uri() -> str:
    """The synthetic sample shipped with facelift (IMDb's exact format)."""
    return str(resources.files("facelift") / "data" / "name.basics.sample.tsv")


def clean_name(raw: bytes) -> tuple[str | None, str | None]:
    """Decode and normalise one primaryName; returns (name, None) or (None, drop_reason)."""
    if raw is None or raw == NULL:
        return None, "empty_name"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    name = " ".join(unicodedata.normalize("NFC", text).split())
    if not name:
        return None, "empty_name"
    # str.isprintable() is False for every "Other" category (Cc, Cf, Cs, Co, Cn): a fast exact pre-check
    if not name.isprintable() and any(unicodedata.category(ch) in CONTROL_CATEGORIES for ch in name):
        return None, "control_characters"
    if not (name[0].isalpha() or any(ch.isalpha() for ch in name)):
        return None, "no_letters"
    return name, None


# Row checks, in the order they apply: the first failing one is the row's reason (0 = kept).
REASONS = ("", "bad_nconst", "bad_year", "empty_name", "invalid_utf8", "control_characters", "no_letters")
_CODE = {reason: code for code, reason in enumerate(REASONS)}
_NCONST = r"^nm[0-9]+$"  # "nm" then ASCII digits: what ascii-decoding and str.isdigit() accept
_KEEP = ["nconst", "primaryName", "birthYear", "deathYear"]


def _ascii_class(keep: Callable[[str], bool]) -> str:
    """A regex character class of the ASCII characters for which ``keep(ch)`` holds (as Python decides)."""
    return "[" + "".join(f"\\x{i:02x}" for i in range(128) if keep(chr(i))) + "]"


_ASCII_SPACE = _ascii_class(str.isspace) + "+"  # what str.split() splits on, within ASCII
_ASCII_CONTROL = _ascii_class(lambda ch: not ch.isspace() and unicodedata.category(ch) in CONTROL_CATEGORIES)
_ASCII_LETTER = _ascii_class(str.isalpha)


def read_names(uri: str | None = None, endpoint_url: str | None = None) -> tuple[pd.DataFrame, NamesReport]:
    """Eligible people as a DataFrame (nconst, name), sorted by nconst, plus the ingest report."""
    uri = uri or bundled_names_uri()
    report = NamesReport(source=uri)
    bad_lines: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row.number or -1)
        return "skip"

    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                               newlines_in_values=False, invalid_row_handler=on_invalid)
    convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in COLUMNS}, strings_can_be_null=False,
                                   include_columns=COLUMNS)
    read = pacsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=False)  # row numbers need 1 thread
    # pyarrow reads (and so decompresses) the file on its IO thread while this one parses and filters.
    with open_uri(uri, endpoint_url) as fh:
        try:
            reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, KeyError) as exc:
            raise NamesError(f"{uri} is not an IMDb name.basics TSV (expected columns {COLUMNS}): {exc}") \
                from None
        pieces = [piece for batch in reader if (piece := _filter_batch(batch, report)) is not None]
    for line in bad_lines:
        report.drop("malformed_line", line)
    report.rows += len(bad_lines)
    people = _dedupe(pa.concat_tables(pieces), report) if pieces else pd.DataFrame(columns=["nconst", "name"])
    del pieces
    report.kept = len(people)
    log.info("names: %s", report.summary())
    if people.empty:
        raise NamesError(f"no eligible actor/actress names in {uri} ({report.summary()})")
    return people, report


def _mask(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def _digits(values: pa.Array) -> np.ndarray:
    """Non-empty and ASCII digits only (``bytes.isdigit()``); the bytes are not read as UTF-8."""
    return _mask(pc.ascii_is_decimal(pc.cast(values, pa.string(), safe=False)))


def _valid_years(values: pa.Array) -> np.ndarray:
    return _mask(pc.equal(values, pa.scalar(NULL, pa.binary()))) | (
        (_mask(pc.binary_length(values)) == 4) & _digits(values))


def _filter_batch(batch: pa.RecordBatch, report: NamesReport) -> pa.Table | None:
    """Count one batch's rows by reason; the kept ones as a table (pos, nconst, name, key), ``pos`` being the
    row's place in the file (the rows themselves come grouped by how their names were cleaned)."""
    offset = report.rows
    report.rows += batch.num_rows
    # Lower-casing ASCII bytes finds "actor"/"actress" exactly where utf8_lower would (no other character
    # lower-cases to one of their letters), and a stray invalid byte in a profession is not fatal.
    prof = pc.ascii_lower(pc.cast(batch.column("primaryProfession"), pa.string(), safe=False))
    act = _mask(pc.match_substring(prof, "act"))  # one pass over every row, the exact test on a quarter
    acting = np.zeros(batch.num_rows, bool)
    some = np.flatnonzero(act)
    candidates = prof.take(some)
    acting[some] = _mask(pc.or_(pc.match_substring(candidates, "actor"), pc.match_substring(candidates, "actress")))
    n_acting = int(acting.sum())
    report.not_acting += batch.num_rows - n_acting
    if not n_acting:
        return None
    kept = batch.select(_KEEP).filter(acting)
    nconst, raw = kept.column("nconst"), kept.column("primaryName")
    code = np.zeros(kept.num_rows, np.int8)
    code[~(_valid_years(kept.column("birthYear")) & _valid_years(kept.column("deathYear")))] = _CODE["bad_year"]
    code[~_mask(pc.match_substring_regex(nconst, _NCONST))] = _CODE["bad_nconst"]
    text = pc.cast(raw, pa.string(), safe=False)  # not validated: only its ASCII rows are read as text
    is_ascii = _mask(pc.string_is_ascii(text))
    groups = _clean_ascii(raw, text, is_ascii, code)  # [(row indices, names)] of the kept ASCII names
    idx_u = np.flatnonzero((code == 0) & ~is_ascii)
    kept_u, names_u, keys_u = [], [], []
    for i, value in zip(idx_u, raw.take(idx_u).to_pylist(), strict=True):
        clean, reason = clean_name(value)
        if reason:
            code[i] = _CODE[reason]
        else:
            kept_u.append(i)
            names_u.append(clean)
            keys_u.append(clean.casefold())
    _count_reasons(code, report)
    pieces = [pa.table({"pos": pa.array(offset + idx), "name": names, "key": pc.ascii_lower(names)})
              for idx, names in groups]  # str.casefold() of ASCII is its lower case
    idx = np.concatenate([idx for idx, _ in groups] + [np.array(kept_u, np.int64)])
    pieces.append(pa.table({"pos": pa.array(offset + np.array(kept_u, np.int64)),
                            "name": pa.array(names_u, pa.string()), "key": pa.array(keys_u, pa.string())}))
    table = pa.concat_tables(pieces)
    return table.append_column("nconst", pc.cast(nconst.take(idx), pa.string()))  # "nm" + digits: valid UTF-8


def _clean_ascii(raw: pa.Array, text: pa.Array, is_ascii: np.ndarray, code: np.ndarray
                 ) -> list[tuple[np.ndarray, pa.Array]]:
    """``clean_name`` for the pure-ASCII names still at code 0 (NFC and casefold are identities there): sets
    their reason codes in ``code`` and returns the kept ones as (row indices, cleaned names) groups."""
    todo = (code == 0) & is_ascii
    # Most names are printable ASCII with single inner spaces: already clean, with no control characters.
    simple = todo & _mask(pc.and_not(pc.ascii_is_printable(text), pc.or_(
        pc.match_substring(text, "  "), pc.or_(pc.starts_with(text, " "), pc.ends_with(text, " ")))))
    empty = _mask(pc.equal(raw, pa.scalar(NULL, pa.binary()))) | _mask(pc.equal(text, ""))
    no_letter = ~_mask(pc.match_substring_regex(text, _ASCII_LETTER))
    code[simple] = np.select([empty, no_letter], [_CODE["empty_name"], _CODE["no_letters"]], 0)[simple]
    groups = [(np.flatnonzero(simple & (code == 0)), text.filter(simple & (code == 0)))]
    other = np.flatnonzero(todo & ~simple)
    if len(other):  # runs of whitespace, separators or control characters: the full rule, on these few
        cleaned = pc.utf8_trim(pc.replace_substring_regex(text.take(other), _ASCII_SPACE, " "), " ")
        reasons = np.select([_mask(pc.equal(raw.take(other), pa.scalar(NULL, pa.binary())))
                             | _mask(pc.equal(cleaned, "")),
                             _mask(pc.match_substring_regex(cleaned, _ASCII_CONTROL)),
                             ~_mask(pc.match_substring_regex(cleaned, _ASCII_LETTER))],
                            [_CODE["empty_name"], _CODE["control_characters"], _CODE["no_letters"]], 0)
        code[other] = reasons
        groups.append((other[reasons == 0], cleaned.filter(reasons == 0)))
    return groups


def _count_reasons(code: np.ndarray, report: NamesReport) -> None:
    """Add one batch's drops to the report, each reason first counted where it first occurs in the file."""
    dropped = code[code != 0]
    if not len(dropped):
        return
    values, first, counts = np.unique(dropped, return_index=True, return_counts=True)
    for j in np.argsort(first):
        report.dropped[REASONS[values[j]]] += int(counts[j])


def _dedupe(table: pa.Table, report: NamesReport) -> pd.DataFrame:
    """First (in file order) of each nconst, sorted by nconst; then first of each casefolded name.

    The sort and the hashing of the names run side by side (pyarrow releases the GIL); both work on index
    arrays and each column is taken once, so memory stays near the size of the table."""
    if not table.num_rows:
        return pd.DataFrame(columns=["nconst", "name"])
    with ThreadPoolExecutor(1, thread_name_prefix="names-dedupe") as pool:
        hashing = pool.submit(lambda: pc.dictionary_encode(table.column("key").combine_chunks().cast(pa.binary())))
        order = _mask(pc.sort_indices(table, [("nconst", "ascending"), ("pos", "ascending")]))
        codes = _mask(hashing.result().indices)  # one code per distinct casefolded name
    nconst = table.column("nconst").take(order).combine_chunks()
    dup_id = np.zeros(len(order), bool)
    dup_id[1:] = _mask(pc.equal(nconst.slice(1), nconst.slice(0, len(order) - 1)))
    if dup_id.any():
        report.dropped["duplicate_nconst"] += int(dup_id.sum())
        order = order[~dup_id]
    del nconst, dup_id
    first = np.unique(codes[order], return_index=True)[1]  # where each name first occurs, in nconst order
    if len(first) < len(order):
        report.dropped["duplicate_name"] += len(order) - len(first)
        order = order[np.sort(first)]
    return pa.table({"nconst": table.column("nconst").take(order), "name": table.column("name").take(order)}
                    ).to_pandas()
