"""Benchmark names ingest at IMDb's real size: ``read_names`` on a synthetic full-size ``name.basics.tsv.gz``.

    .venv/bin/python bench/names_ingest.py [--rows 14800000] [--cache bench/results/names_ingest]
                                           [--old PATH_TO_OLD_names.py] [--out bench/results]

The generator writes IMDb's exact format (header, tab-separated, no quoting, ``\\N`` for null, gzip) with a
realistic mix: about 25 % actor/actress rows, most years ``\\N``, about 8 % non-ASCII names (accents, NFD
forms, Cyrillic, Greek, CJK, Arabic) and a sprinkling of every drop reason (control characters, zero-width
characters, names without letters, empty and ``\\N`` names, bad years, bad ids, duplicate ids, invalid UTF-8,
malformed lines). It is deterministic and cached by row count, so reruns reuse the file.

Each implementation runs in a fresh subprocess; its peak RSS is the child's ``ru_maxrss`` from ``os.wait4``
(per child, unlike ``RUSAGE_CHILDREN``, which is the maximum over every child waited for so far) and its
seconds are those of the ``read_names`` call alone (the interpreter start and imports are not counted).
``--old`` measures another ``names.py`` (e.g. ``git show HEAD:tasks/build/names.py > /tmp/old_names.py``) on the
same file, for a before/after table.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

log = logging.getLogger("bench.names_ingest")

FULL_ROWS = 14_800_000
HEADER = b"nconst\tprimaryName\tbirthYear\tdeathYear\tprimaryProfession\tknownForTitles\n"
PROFESSIONS = [  # (value, weight): about 25 % of rows name actor or actress
    ("actor", 11), ("actress", 6), ("actor,soundtrack", 1.5), ("actress,soundtrack", 1), ("actor,producer", 1.5),
    ("actress,producer", 1), ("director,actor", 1.5), ("writer,actress", 1), ("actor,writer,director", 1.5),
    ("miscellaneous", 13), ("camera_department", 8), ("producer", 7), ("writer", 7), ("director", 5),
    ("\\N", 12), ("soundtrack", 4), ("editor", 4), ("composer", 3), ("art_department", 3), ("sound_department", 3),
    ("cinematographer", 2), ("editorial_department", 2), ("stunts", 2), ("music_department", 1.5),
    ("producer,writer,director", 1.5),
]
SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "to", "vi", "sa", "de", "an", "el", "jo", "ma", "ri", "ta", "no", "be",
             "li", "ch", "ar", "ol", "us", "en", "is", "ha", "yu", "ko", "da", "fi", "gr", "st", "th", "wi", "zo"]
UNICODE_NAMES = [  # NFC and NFD spellings, scripts other than Latin, ligatures and casefold twins
    "Zoë", "Zoe\u0308", "José", "Jose\u0301", "Müller", "Ångström", "Søren", "Ólafsdóttir", "Nguyễn", "Çağla",
    "Đorđe", "Straße", "Иван", "Петров", "Αλέξανδρος", "Παππάς", "李小龙", "김민준", "محمد", "ธนา", "Łukasz",
    "Wójcik", "İnci", "ﬁonn", "Dvořák", "Bjørn", "Sebastián", "François", "Ngũgĩ", "Þór",
]
ODD_NAMES = [  # every drop reason of primaryName, and odd names that are kept
    "", "\\N", "   ", "12345", "!!!", "\u0301", "Ctrl\x07Char", "Zero\u200bWidth", "Soft\u00adHyphen", "\ufeffBom",
    "Tab\x1bEsc", "Del\x7fChar", "Next\x85Line", "Ideo\u3000Space", '"Big" Jim', "O'Neil", "  Ana   María  ",
]


def _pick(rng: np.random.Generator, values: list[str], n: int, p: np.ndarray | None = None) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string()).take(pa.array(rng.choice(len(values), n, p=p)))


def _chunk(rng: np.random.Generator, first_id: int, n: int, firsts: list[str], lasts: list[str]) -> bytes:
    """``n`` data lines of name.basics, vectorised with pyarrow compute."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = first_id + np.cumsum(rng.integers(1, 3, n))  # sorted, with gaps, as in IMDb
    ids[rng.random(n) < 0.0002] -= 1  # a few duplicate ids
    nconst = pc.binary_join_element_wise("nm", pc.utf8_lpad(pc.cast(pa.array(ids), pa.string()), 7, "0"), "")
    nconst = pc.if_else(pa.array(rng.random(n) < 0.0001), _pick(rng, ["nm", "xx0000001", "NM123", ""], n), nconst)
    unicode_share = rng.random(n)
    first = pc.if_else(pa.array(unicode_share < 0.04), _pick(rng, UNICODE_NAMES, n), _pick(rng, firsts, n))
    last = pc.if_else(pa.array(unicode_share > 0.96), _pick(rng, UNICODE_NAMES, n), _pick(rng, lasts, n))
    name = pc.binary_join_element_wise(first, last, " ")
    name = pc.if_else(pa.array(rng.random(n) < 0.002), _pick(rng, ODD_NAMES, n), name)
    years = pc.cast(pa.array(rng.integers(1850, 2010, n)), pa.string())
    birth = pc.if_else(pa.array(rng.random(n) < 0.7), "\\N", years)
    birth = pc.if_else(pa.array(rng.random(n) < 0.0005), _pick(rng, ["19x0", "123", "", "20100"], n), birth)
    death = pc.if_else(pa.array(rng.random(n) < 0.9), "\\N", pc.cast(pa.array(rng.integers(1900, 2025, n)),
                                                                       pa.string()))
    weights = np.array([w for _, w in PROFESSIONS], dtype=float)
    prof = _pick(rng, [p for p, _ in PROFESSIONS], n, weights / weights.sum())
    counts = rng.choice(5, n, p=[0.25, 0.4, 0.15, 0.1, 0.1])  # knownForTitles: 0-4, mostly 1
    title_ids = 1 + (20_000_000 * rng.random(int(counts.sum())) ** 3).astype(np.int64)  # popular titles repeat
    titles = pc.binary_join_element_wise("tt", pc.utf8_lpad(pc.cast(pa.array(title_ids), pa.string()), 7, "0"), "")
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    known = pc.binary_join(pa.ListArray.from_arrays(offsets, titles), ",")
    known = pc.if_else(pc.equal(known, ""), "\\N", known)
    lines = pc.binary_join_element_wise(nconst, name, birth, death, prof, known, "\t").to_pylist()
    for i in rng.choice(n, max(1, n // 500_000), replace=False):  # malformed lines: wrong column counts
        lines[i] = lines[i].rsplit("\t", 2)[0] if i % 2 else lines[i] + "\textra"
    acting = np.flatnonzero(pc.match_substring(prof, "act").to_numpy(zero_copy_only=False))
    for i in rng.choice(acting, max(1, n // 2_000_000), replace=False):  # invalid UTF-8 in a name (byte 0xff)
        lines[i] = lines[i].replace("\t", "\tBad \udcff ", 1)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def generate(path: Path, rows: int, seed: int = 15, chunk: int = 1_000_000) -> Path:
    """Write ``rows`` synthetic data lines in IMDb's exact format to ``path`` (gzip), deterministically."""
    rng = np.random.default_rng(seed)
    firsts = sorted({"".join(rng.choice(SYLLABLES, rng.integers(2, 4))).title() for _ in range(4000)})
    lasts = sorted({"".join(rng.choice(SYLLABLES, rng.integers(2, 5))).title() for _ in range(60_000)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    start, next_id = time.perf_counter(), 0
    with gzip.open(tmp, "wb", compresslevel=6) as fh:
        fh.write(HEADER)
        for done in range(0, rows, chunk):
            n = min(chunk, rows - done)
            fh.write(_chunk(rng, next_id, n, firsts, lasts))
            next_id += 2 * n
            log.info("generated %d / %d rows (%.0f s)", done + n, rows, time.perf_counter() - start)
    tmp.rename(path)
    return path


def _worker(impl: str, uri: str, result_file: str) -> None:
    """Run in the child: import the implementation, time one ``read_names`` call, write the report."""
    if impl == "new":
        from facelift.tasks.build.names import read_names
    else:
        spec = importlib.util.spec_from_file_location("old_names", impl)
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_names"] = module
        spec.loader.exec_module(module)
        read_names = module.read_names
    start, cpu = time.perf_counter(), time.process_time()
    people, report = read_names(uri)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    digest = hashlib.sha256()  # of the people, in order, to compare implementations
    for nconst, name in people.itertuples(index=False, name=None):
        digest.update(f"{nconst}\t{name}\n".encode())
    Path(result_file).write_text(json.dumps({"seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                                             "people": len(people), "people_sha256": digest.hexdigest()[:16],
                                             "dtypes": [str(t) for t in people.dtypes], **report.as_dict()}))


def measure(impl: str, uri: str) -> dict[str, Any]:
    """One fresh subprocess: seconds of read_names and the child's peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", impl, "--file", uri, "--result", out.name]
        wall = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - wall
        if proc.returncode != 0:
            return {"impl": impl, "error": f"exit code {proc.returncode}"}
        result = json.loads(Path(out.name).read_text())
    return {"impl": impl, "process_wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), **result}


def markdown(results: list[dict[str, Any]], file: Path, size_mb: float, machine: str) -> str:
    label = {r["impl"]: ("new (vectorised)" if r["impl"] == "new" else "old (Python loop)") for r in results}
    lines = [f"`{file.name}`: {results[0].get('rows', '?')} rows, {size_mb:.0f} MB gzip; {machine}", "",
             "| measure | " + " | ".join(label[r["impl"]] for r in results) + " |",
             "|---|" + "---|" * len(results)]

    def row(name: str, get: Any) -> None:
        lines.append(f"| {name} | " + " | ".join(str(get(r)) for r in results) + " |")

    row("read_names, s", lambda r: r.get("seconds", r.get("error")))
    row("read_names CPU (all threads), s", lambda r: r.get("cpu_s"))
    row("peak RSS, MB", lambda r: r.get("peak_rss_mb"))
    row("process wall (start + imports + read), s", lambda r: r.get("process_wall_s"))
    for key in ("rows", "kept", "not_acting"):
        row(key, lambda r, key=key: r.get(key))
    reasons = sorted({k for r in results for k in r.get("dropped", {})})
    for reason in reasons:
        row(f"dropped: {reason}", lambda r, reason=reason: r.get("dropped", {}).get(reason, 0))
    row("malformed example lines", lambda r: r.get("example_lines", {}).get("malformed_line"))
    row("people (nconst, name) sha256", lambda r: r.get("people_sha256"))
    row("reason order in the report", lambda r: ", ".join(r.get("dropped", {})))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--cache", default="bench/results/names_ingest", help="where the generated file is kept")
    parser.add_argument("--old", help="path of another names.py to measure on the same file")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        logging.getLogger().setLevel(logging.WARNING)
        _worker(args.worker, args.file, args.result)
        return []
    path = Path(args.cache) / f"name.basics.{args.rows}.tsv.gz"
    if not path.exists():
        generate(path, args.rows)
    size_mb = path.stat().st_size / 1e6
    log.info("names file %s: %d rows, %.0f MB", path, args.rows, size_mb)
    results = [measure("new", str(path))]
    if args.old:
        results.append(measure(str(Path(args.old).resolve()), str(path)))
    machine = (f"{os.cpu_count()}-core CPU, {platform.machine()}, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f} at the end")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "names_ingest.json").write_text(json.dumps({"file": str(path), "size_mb": round(size_mb, 1),
                                                       "machine": machine, "results": results}, indent=2))
    log.info("names ingest\n%s", markdown(results, path, size_mb, machine))
    return results


if __name__ == "__main__":
    main()
