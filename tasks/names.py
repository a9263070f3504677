"""Ingest IMDb ``name.basics.tsv[.gz]``: actors and actresses with clean, unique names.

IMDb's format: tab-separated, a header row, no quoting (quotes are literal characters), ``\\N`` for null.
Columns: nconst, primaryName, birthYear, deathYear, primaryProfession, knownForTitles.
Malformed lines are counted by reason and reported, never fatal and never dropped silently.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from facelift.storage import open_uri

log = logging.getLogger(__name__)

COLUMNS = ["nconst", "primaryName", "birthYear", "deathYear", "primaryProfession", "knownForTitles"]
ACTING = ("actor", "actress")
NULL = b"\\N"


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
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in name):
        return None, "control_characters"
    if not any(ch.isalpha() for ch in name):
        return None, "no_letters"
    return name, None


def _valid_year(raw: bytes | None) -> bool:
    return raw is None or raw == NULL or (raw.isdigit() and len(raw) == 4)


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
    read = pacsv.ReadOptions(block_size=16 << 20, use_threads=False)  # row numbers need 1 thread
    with open_uri(uri, endpoint_url) as fh:
        try:
            reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, KeyError) as exc:
            raise NamesError(f"{uri} is not an IMDb name.basics TSV (expected columns {COLUMNS}): {exc}") \
                from None
        frames = []
        for batch in reader:
            frames.append(_filter_batch(batch, report))
    for line in bad_lines:
        report.drop("malformed_line", line)
    report.rows += len(bad_lines)
    people = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["nconst", "name"])
    people = _dedupe(people, report)
    report.kept = len(people)
    log.info("names: %s", report.summary())
    if people.empty:
        raise NamesError(f"no eligible actor/actress names in {uri} ({report.summary()})")
    return people, report


def _filter_batch(batch: pa.RecordBatch, report: NamesReport) -> pd.DataFrame:
    report.rows += batch.num_rows
    prof = pc.utf8_lower(pc.cast(batch.column("primaryProfession"), pa.string(), safe=False))
    acting = pc.or_(pc.match_substring(prof, "actor"), pc.match_substring(prof, "actress"))
    acting = pc.fill_null(acting, False)
    report.not_acting += batch.num_rows - (pc.sum(acting).as_py() or 0)
    kept = batch.filter(acting)
    rows = []
    for nconst, raw_name, birth, death in zip(
        kept.column("nconst").to_pylist(), kept.column("primaryName").to_pylist(),
        kept.column("birthYear").to_pylist(), kept.column("deathYear").to_pylist(), strict=True,
    ):
        nconst_s = (nconst or b"").decode("ascii", "replace")
        if not (nconst_s.startswith("nm") and nconst_s[2:].isdigit()):
            report.drop("bad_nconst")
            continue
        if not (_valid_year(birth) and _valid_year(death)):
            report.drop("bad_year")
            continue
        name, reason = clean_name(raw_name)
        if reason:
            report.drop(reason)
            continue
        rows.append((nconst_s, name))
    return pd.DataFrame(rows, columns=["nconst", "name"])


def _dedupe(people: pd.DataFrame, report: NamesReport) -> pd.DataFrame:
    people = people.sort_values("nconst", kind="stable")
    dup_id = people.duplicated("nconst")
    if dup_id.any():
        report.dropped["duplicate_nconst"] += int(dup_id.sum())
    people = people[~dup_id]
    key = people["name"].str.casefold()
    dup_name = key.duplicated()
    if dup_name.any():
        report.dropped["duplicate_name"] += int(dup_name.sum())
    return people[~dup_name].reset_index(drop=True)
