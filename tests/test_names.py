from __future__ import annotations

import gzip
import shutil

import pytest

from facelift.tasks.names import NamesError, bundled_names_uri, clean_name, read_names

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
