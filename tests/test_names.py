from __future__ import annotations

import gzip
import random
import shutil
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from facelift.tasks.build import names
from facelift.tasks.build.names import NamesError, bundled_names_uri, clean_name, read_names

HEADER = "nconst\tprimaryName\tbirthYear\tdeathYear\tprimaryProfession\tknownForTitles\n"


def test_bundled_sample_counts_every_drop_reason():
    people, report = read_names()
    d = report.dropped
    assert report.rows == 314 and report.kept == len(people) == 166
    assert d["malformed_line"] == 2 and report.examples["malformed_line"] == [308, 309]
    assert d["empty_name"] == 3 and d["bad_year"] == 1 and d["bad_nconst"] == 1
    assert d["no_letters"] == 1 and d["control_characters"] == 1 and d["duplicate_nconst"] == 1
    assert report.rows == report.kept + report.not_acting + sum(d.values())  # nothing silently dropped
    assert people["nconst"].is_unique and people["name"].str.casefold().is_unique
    assert "Zoë Ångström" in set(people["name"])  # capitalised "Actress" counts; NFC twin removed
    assert people["nconst"].is_monotonic_increasing


def test_gzip_and_plain_give_the_same_people(tmp_path):
    gz = tmp_path / "name.basics.tsv.gz"
    with open(bundled_names_uri(), "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, _ = read_names()
    zipped, report = read_names(str(gz))
    assert plain.equals(zipped) and report.source.endswith(".gz")


def test_quotes_are_literal_and_nulls_are_nulls(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_text(HEADER + 'nm0000001\t"Big" Jim O\'Neil\t\\N\t\\N\tactor\t\\N\n'
                    "nm0000002\t\\N\t1970\t\\N\tactress\t\\N\n", encoding="utf-8")
    people, report = read_names(str(path))
    assert people["name"].tolist() == ['"Big" Jim O\'Neil']
    assert report.dropped["empty_name"] == 1


def test_invalid_utf8_is_counted_not_fatal(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_bytes(HEADER.encode() + b"nm0000001\tBad \xff Bytes\t\\N\t\\N\tactor\t\\N\n"
                     b"nm0000002\tGood Name\t\\N\t\\N\tactor\t\\N\n")
    people, report = read_names(str(path))
    assert people["name"].tolist() == ["Good Name"] and report.dropped["invalid_utf8"] == 1


def test_unusable_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_names(str(tmp_path / "missing.tsv"))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("a\tb\n1\t2\n")
    with pytest.raises(NamesError, match="not an IMDb name.basics"):
        read_names(str(wrong))
    nobody = tmp_path / "nobody.tsv"
    nobody.write_text(HEADER + "nm0000001\tA Writer\t\\N\t\\N\twriter\t\\N\n")
    with pytest.raises(NamesError, match="no eligible actor"):
        read_names(str(nobody))


@pytest.mark.parametrize(("raw", "expected"), [
    (b"  Ana   Mar\xc3\xada  ", ("Ana María", None)),
    (b"Zoe\xcc\x88", ("Zoë", None)),  # decomposed -> NFC
    (b"\\N", (None, "empty_name")),
    (b"Tab\x07Bell", (None, "control_characters")),
    (b"1234", (None, "no_letters")),
])
def test_clean_name(raw, expected):
    assert clean_name(raw) == expected


# Every drop reason and odd case that ingest handles, one line each (line 1 is the header). The expected
# values below were read off the implementation (and checked by hand against its rules): the first
# failing check wins in the order bad_nconst, bad_year, then the name (empty_name, invalid_utf8,
# control_characters, no_letters); whitespace is Python's str.split() set (so \x0b, \x1c-\x1f, \x85,
# \u2028, \u3000 collapse instead of counting as control characters); names are NFC; duplicates go by
# nconst (sorted as strings, first in file order kept) and then by casefolded name.
CRAFTED = [
    b"nm0000010\tJohn Smith\t1950\t\\N\tactor\ttt0000001",
    b"nm0000011\t  Ana   Mar\xc3\xada  \t\\N\t\\N\tactress,producer\t\\N",  # whitespace collapsed
    b"nm0000012\tZoe\xcc\x88 Smith\t1990\t\\N\tactress\t\\N",  # NFD -> NFC "Zoë Smith"
    b"nm0000013\tZo\xc3\xab Smith\t1991\t\\N\tActress\t\\N",  # NFC twin: duplicate_name
    b"nm0000014\tJOHN SMITH\t\\N\t\\N\tACTOR\t\\N",  # duplicate_name (case)
    b"nm0000015\tJohn  \x0b Smith\t\\N\t\\N\tactor\t\\N",  # duplicate_name (vertical tab is whitespace)
    b"nm0000016\tAnna Stra\xc3\x9fe\t\\N\t\\N\tactress\t\\N",
    b"nm0000017\tANNA STRASSE\t\\N\t\\N\tactress\t\\N",  # casefold(ß) == "ss": duplicate_name
    b"nm0000018\t\xef\xac\x81lm Star\t\\N\t\\N\tactor\t\\N",  # "ﬁ" ligature, kept as written
    b"nm0000019\tFilm Star\t\\N\t\\N\tactor\t\\N",  # casefold("ﬁ") == "fi": duplicate_name
    b"nm9\tLex Order\t\\N\t\\N\tactor\t\\N",  # sorts after nm10 (string order): duplicate_name
    b"nm10\tLEX ORDER\t\\N\t\\N\tactor\t\\N",
    b"nm0000020\tFirst Of Id\t\\N\t\\N\tactor\t\\N",
    b"nm0000020\tSecond Of Id\t\\N\t\\N\tactress\t\\N",  # duplicate_nconst
    b"nm0000021\tBad Year First\t19x0\t\\N\tactor\t\\N",  # bad_year, so the next one is no duplicate
    b"nm0000021\tGood After Bad\t\\N\t\\N\tactor\t\\N",
    b"xx0000022\tBad Prefix\t1970\t\\N\tactor\t\\N",  # bad_nconst x9
    b"nm\tNo Digits\t1970\t\\N\tactor\t\\N",
    b"nm12a\tLetter In Id\t1970\t\\N\tactor\t\\N",
    b"NM0000023\tUpper Prefix\t1970\t\\N\tactor\t\\N",
    b"nm\xef\xbc\x91\xef\xbc\x92\tFullwidth Digits\t1970\t\\N\tactor\t\\N",
    b"\tEmpty Id\t1970\t\\N\tactor\t\\N",
    b"\\N\tNull Id\t1970\t\\N\tactor\t\\N",
    b"nm\xff01\tBad Byte Id\t1970\t\\N\tactor\t\\N",
    b"xx0000024\t\\N\t19x0\t\\N\tactor\t\\N",  # bad id and bad year and no name: bad_nconst
    b"nm0000025\tShort Year\t123\t\\N\tactor\t\\N",  # bad_year x8
    b"nm0000026\tLong Year\t12345\t\\N\tactor\t\\N",
    b"nm0000027\tEmpty Year\t\t\\N\tactor\t\\N",
    b"nm0000028\tSpace Year\t 1990\t\\N\tactor\t\\N",
    b"nm0000029\tArabic Digits\t\xd9\xa1\xd9\xa9\xd9\xa9\xd9\xa0\t\\N\tactor\t\\N",
    b"nm0000030\tBad Death\t1900\t20x0\tactress\t\\N",
    b"nm0000031\t\\N\tabcd\t\\N\tactor\t\\N",  # bad year and no name: bad_year
    b"nm0000032\t\t1980\t\\N\tactor\t\\N",  # empty_name x5
    b"nm0000033\t\\N\t1980\t\\N\tactress\t\\N",
    b"nm0000034\t   \t\\N\t\\N\tactor\t\\N",
    b"nm0000035\t\x1c\x1d\x1f\t\\N\t\\N\tactor\t\\N",  # separators are whitespace to str.split()
    b"nm0000036\t\xe3\x80\x80\xc2\xa0\t\\N\t\\N\tactor\t\\N",  # ideographic space, no-break space
    b"nm0000037\t\\N \t\\N\t\\N\tactor\t\\N",  # not exactly \N: kept as the name "\N"
    b"nm0000038\tBad \xff Bytes\t\\N\t\\N\tactor\t\\N",  # invalid_utf8 x4
    b"nm0000039\tSurrogate \xed\xa0\x80\t\\N\t\\N\tactor\t\\N",
    b"nm0000040\tOverlong \xc0\xaf\t\\N\t\\N\tactor\t\\N",
    b"nm0000041\tTruncated \xe2\x82\t\\N\t\\N\tactor\t\\N",
    b"nm0000042\tTab\x07Bell\t\\N\t\\N\tactor\t\\N",  # control_characters x10 (Cc, Cf, Co)
    b"nm0000043\tNul\x00Char\t\\N\t\\N\tactor\t\\N",
    b"nm0000044\tDel\x7fChar\t\\N\t\\N\tactor\t\\N",
    b"nm0000045\tEsc\x1bChar\t\\N\t\\N\tactor\t\\N",
    b"nm0000046\tZero\xe2\x80\x8bWidth\t\\N\t\\N\tactor\t\\N",
    b"nm0000047\tSoft\xc2\xadHyphen\t\\N\t\\N\tactor\t\\N",
    b"nm0000048\t\xef\xbb\xbfBom Name\t\\N\t\\N\tactor\t\\N",
    b"nm0000049\tPrivate \xee\x80\x80 Use\t\\N\t\\N\tactor\t\\N",
    b"nm0000050\tLrm\xe2\x80\x8eMark\t\\N\t\\N\tactor\t\\N",
    b"nm0000051\tC1\xc2\x80Control\t\\N\t\\N\tactor\t\\N",
    b"nm0000052\tNext\xc2\x85Line\t\\N\t\\N\tactor\t\\N",  # NEL, LINE SEPARATOR, form feed: whitespace
    b"nm0000053\tLine\xe2\x80\xa8Sep\t\\N\t\\N\tactor\t\\N",
    b"nm0000054\tForm\x0cFeed\t\\N\t\\N\tactor\t\\N",
    b"nm0000055\t12345\t\\N\t\\N\tactor\t\\N",  # no_letters x5
    b"nm0000056\t!!! ...\t\\N\t\\N\tactor\t\\N",
    b"nm0000057\t\xf0\x9f\x98\x80\t\\N\t\\N\tactor\t\\N",
    b"nm0000058\t\xd9\xa1\xd9\xa2\xd9\xa3\t\\N\t\\N\tactor\t\\N",
    b"nm0000059\t\xcc\x81\t\\N\t\\N\tactor\t\\N",  # a lone combining accent
    b"nm0000060\t\xe6\x9d\x8e\xe5\xb0\x8f\xe9\xbe\x99\t\\N\t\\N\tactor\t\\N",
    "nm0000061\tИван Петров\t1970\t\\N\tactor\t\\N".encode(),
    b"nm0000062\t\"Big\" Jim O'Neil\t\\N\t\\N\tactor\t\\N",
    b"nm0000063\tHe Said \"Hi\t\\N\t\\N\tactress\t\\N",
    b"nm0000064\t'Single' Quote\t\\N\t\\N\tactor\t\\N",
    b"nm0000065\tA Writer\t\\N\t\\N\twriter,director\t\\N",  # not_acting x5
    b"nm0000066\tNo Profession\t\\N\t\\N\t\\N\t\\N",
    b"nm0000067\tEmpty Profession\t\\N\t\\N\t\t\\N",
    b"nm0000068\tA Contractor\t\\N\t\\N\tcontractor\t\\N",  # "actor" is a substring: acting
    b"nm0000069\tStunt Double\t\\N\t\\N\tstunts\t\\N",
    b"nm0000070\tBad Year Non Actor\t19x0\t\\N\tcomposer\t\\N",
    b"nm0000071\tTruncated Row\t1970",  # malformed_line x4, lines 73-76
    b"nm0000072\tToo\tMany\tFields\tactor\tx\ty",
    b"nm0000073\tTrailing Tab\t\\N\t\\N\tactor\t\\N\t",
    b"\\N",
    b"",  # a blank line is skipped, not counted
    b"nm0000074\tAfter Blank\t\\N\t\\N\tactor\t\\N",
    b"nm0000075\tCrlf Ending\t\\N\t\\N\tactor\ttt1\r",
    b"nm0000076\tKelvin \xe2\x84\xaaing\t\\N\t\\N\tactor\t\\N",  # KELVIN SIGN -> K under NFC
    b"nm0000077\tKELVIN KING\t\\N\t\\N\tactor\t\\N",  # duplicate_name
    b"nm0000078\t\xc4\xb0stanbul Star\t\\N\t\\N\tactor\t\\N",  # casefold("İ") == "i̇", not "i"
    b"nm0000079\tIstanbul Star\t\\N\t\\N\tactor\t\\N",
    b"nm0000080\tCaf\xc3\xa9\xe2\x80\x83Noir\t\\N\t\\N\tactress\t\\N",  # em space collapsed
    b"nm0000081\tCAFE\xcc\x81 NOIR\t\\N\t\\N\tactress\t\\N",  # NFC + casefold: duplicate_name
]
CRAFTED_DROPPED = {  # in the order the reasons first occur, as dataset.json records them
    "bad_year": 8, "bad_nconst": 9, "empty_name": 5, "invalid_utf8": 4, "control_characters": 10, "no_letters": 5,
    "malformed_line": 4, "duplicate_nconst": 1, "duplicate_name": 8,
}
CRAFTED_KEPT = [
    ("nm0000010", "John Smith"), ("nm0000011", "Ana María"), ("nm0000012", "Zoë Smith"),
    ("nm0000016", "Anna Straße"), ("nm0000018", "\ufb01lm Star"), ("nm0000020", "First Of Id"),
    ("nm0000021", "Good After Bad"), ("nm0000037", "\\N"), ("nm0000052", "Next Line"), ("nm0000053", "Line Sep"),
    ("nm0000054", "Form Feed"), ("nm0000060", "李小龙"), ("nm0000061", "Иван Петров"),
    ("nm0000062", '"Big" Jim O\'Neil'), ("nm0000063", 'He Said "Hi'), ("nm0000064", "'Single' Quote"),
    ("nm0000068", "A Contractor"), ("nm0000074", "After Blank"), ("nm0000075", "Crlf Ending"),
    ("nm0000076", "Kelvin King"), ("nm0000078", "İstanbul Star"), ("nm0000079", "Istanbul Star"),
    ("nm0000080", "Café Noir"), ("nm10", "LEX ORDER"),
]


def _write_crafted(path, compress: bool = False):
    data = HEADER.encode() + b"\n".join(CRAFTED) + b"\n"
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def _check_crafted(people, report) -> None:
    assert report.rows == 83 and report.not_acting == 5 and report.kept == 24
    assert list(report.dropped.items()) == list(CRAFTED_DROPPED.items())
    assert report.examples == {"malformed_line": [73, 74, 75, 76]}
    assert report.rows == report.kept + report.not_acting + sum(report.dropped.values())
    assert list(people.itertuples(index=False, name=None)) == CRAFTED_KEPT
    assert list(people.columns) == ["nconst", "name"] and isinstance(people.index, pd.RangeIndex)
    assert str(people["nconst"].dtype) == str(people["name"].dtype) == str(pd.Series(["x"]).dtype)


@pytest.mark.parametrize("compress", [False, True])
def test_crafted_file_counts_every_reason_exactly(tmp_path, compress):
    uri = _write_crafted(tmp_path / ("n.tsv.gz" if compress else "n.tsv"), compress)
    people, report = read_names(uri)
    _check_crafted(people, report)
    assert report.as_dict()["dropped"] == CRAFTED_DROPPED
    assert report.summary() == (
        f"{uri}: 83 rows, 24 actors kept, 5 non-actors, dropped: bad_nconst=9, bad_year=8, "
        "control_characters=10, duplicate_name=8, duplicate_nconst=1, empty_name=5, invalid_utf8=4, "
        "malformed_line=4, no_letters=5")


def test_crafted_file_in_many_small_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(names, "BLOCK_SIZE", 512)  # about 8 lines per batch: reasons and duplicates span batches
    _check_crafted(*read_names(_write_crafted(tmp_path / "n.tsv")))


def test_invalid_utf8_in_a_profession_is_not_fatal(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_bytes(HEADER.encode() + b"nm0000001\tA Name\t\\N\t\\N\tact\xffor\t\\N\n"
                     b"nm0000002\tB Name\t\\N\t\\N\tActor,writer\xff\t\\N\n")
    people, report = read_names(str(path))
    assert people["name"].tolist() == ["B Name"] and report.not_acting == 1


_PIECES = ["a", "A", "b", "B", "ab", " ", "  ", "1", "-", "'", '"', "\\N",
           *map(chr, [*range(0, 9), 11, 12, *range(14, 32), 127]),  # ASCII controls and separators but \t \n \r
           "é", "e\u0301", "E\u0301", "ß", "SS", "ss", "ﬁ", "fi", "\u212a", "k", "İ", "i", "\u200b", "\u00ad", "\x85",
           "\xa0", "\u3000", "\u2028", "\ue000", "١", "😀", "Ж", "ж", "李", "Σ", "σ", "ς", "\u0301", "\x80"]
_BAD_BYTES = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]


def _fuzz_rows(rng: random.Random, n: int) -> list[list[bytes]]:
    rows = []
    for _ in range(n):
        name = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 4))).encode()
        if rng.random() < 0.03:
            name += rng.choice(_BAD_BYTES)
        nconst = rng.choice([f"nm{rng.randint(0, 400)}".encode(), b"nm0000001", b"xx1", b"nm", b"nm1a", b"\\N"])
        years = [rng.choice([b"\\N", b"\\N", b"1999", b"2001", b"19x0", b"", b"12345"]) for _ in range(2)]
        prof = rng.choice([b"actor", b"actress", b"Actress,writer", b"writer", b"\\N", b"contractor", b"ACTOR"])
        rows.append([nconst, name, *years, prof, b"\\N"])
    return rows


def _reference(rows: list[list[bytes]]) -> tuple[list[tuple[str, str]], int, Counter]:
    """The ingest rules row by row, in plain Python (as ``read_names`` applied them before it was vectorised)."""
    dropped: Counter = Counter()
    not_acting, people = 0, []
    for nconst, raw, birth, death, prof, _ in rows:
        if b"actor" not in prof.lower() and b"actress" not in prof.lower():
            not_acting += 1
            continue
        ident = nconst.decode("ascii", "replace")
        name, reason = clean_name(raw)
        if not (ident.startswith("nm") and ident[2:].isdigit()):
            reason = "bad_nconst"
        elif not all(y == b"\\N" or (y.isdigit() and len(y) == 4) for y in (birth, death)):
            reason = "bad_year"
        if reason:
            dropped[reason] += 1
        else:
            people.append((ident, name))
    people.sort(key=lambda p: p[0])  # stable: the first in the file stays first
    unique_ids = [p for i, p in enumerate(people) if i == 0 or p[0] != people[i - 1][0]]
    dropped["duplicate_nconst"] += len(people) - len(unique_ids)
    seen, out = set(), []
    for ident, name in unique_ids:
        if name.casefold() not in seen:
            seen.add(name.casefold())
            out.append((ident, name))
    dropped["duplicate_name"] += len(unique_ids) - len(out)
    return out, not_acting, +dropped  # +: without zero counts


@pytest.mark.parametrize(("seed", "block_size"), [(0, None), (1, 4096), (2, 1 << 20)])
def test_random_names_match_the_row_by_row_rules(tmp_path, monkeypatch, seed, block_size):
    if block_size:
        monkeypatch.setattr(names, "BLOCK_SIZE", block_size)
    rows = _fuzz_rows(random.Random(seed), 3000)
    path = tmp_path / "n.tsv"
    path.write_bytes(HEADER.encode() + b"".join(b"\t".join(r) + b"\n" for r in rows))
    people, report = read_names(str(path))
    expected, not_acting, dropped = _reference(rows)
    assert list(people.itertuples(index=False, name=None)) == expected
    assert (report.rows, report.not_acting, report.kept) == (len(rows), not_acting, len(expected))
    assert list(report.dropped.items()) == list(dropped.items())


def test_resume_uses_the_committed_plan_without_reading_names_again(tmp_path, monkeypatch):
    from facelift.config import resolve_config
    from facelift.tasks.build import steps as build

    def cfg(**over):
        return resolve_config("tiny", environ={}, overrides={"storage.root": str(tmp_path), "plan.count": 6,
                                                            "plan.shard_size": 3, **over})

    def prepare(c):  # each call is a build that finishes: it releases the dataset's lease
        prepared = build.prepare(c)
        prepared.lease.release()
        return prepared

    first = prepare(cfg())
    assert not first.resumed and first.names_report["rows"] == 314
    calls = []
    monkeypatch.setattr(build, "read_names", lambda *a, **k: calls.append(a) or read_names(*a, **k))
    again = prepare(cfg())
    assert again.resumed and not calls and again.dataset.uri == first.dataset.uri
    pd.testing.assert_frame_equal(again.plan, first.plan)
    assert again.names_report == first.names_report and again.fingerprint == first.fingerprint
    named = prepare(cfg(dataset_id="mine"))  # an explicit id: created (names read), then resumed
    assert not named.resumed and len(calls) == 1
    assert prepare(cfg(dataset_id="mine")).resumed and len(calls) == 1
    other = tmp_path / "other.tsv"  # other names bytes: another fingerprint, so the names are read
    other.write_bytes(Path(bundled_names_uri()).read_bytes() + b"nm0999999\tNew Actor\t\\N\t\\N\tactor\t\\N\n")
    assert not prepare(cfg(**{"plan.names_uri": str(other)})).resumed and len(calls) == 2
    with pytest.raises(build.DatasetError, match="different parameters"):  # same id, other names: refused
        prepare(cfg(dataset_id="mine", **{"plan.names_uri": str(other)}))
    assert len(calls) == 3


def test_the_printable_shortcut_of_clean_name_skips_no_control_character():
    assert not [i for i in range(sys.maxunicode + 1) if chr(i).isprintable()
                and unicodedata.category(chr(i)) in names.CONTROL_CATEGORIES]
