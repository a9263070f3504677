"""Regenerate ``name.basics.sample.tsv``: synthetic people in IMDb's exact name.basics format.

Run: ``python -m facelift.data.make_sample``. Deterministic; includes Unicode names, ``\\N`` fields,
literal quotes, duplicates, non-actors and a few malformed lines, as the tests expect.
"""

from __future__ import annotations

import random
from pathlib import Path

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Émilie", "Farah", "Günther", "Hiroshi", "Ifeoma", "José",
         "Kalani", "Léa", "Mateo", "Nguyễn", "Olu", "Priya", "Quentin", "Rūta", "Søren", "Thandiwe",
         "Uma", "Vikram", "Wei", "Ximena", "Yusuf", "Zoë", "Ana-María", "Björn", "Çağla", "Đorđe"]
LAST = ["Okafor", "Müller", "Nakamura", "García", "Kowalski", "Ångström", "O'Brien", "Dubois", "Haddad",
        "Ivanova", "Sørensen", "Rossi", "Chen", "Patel", "Mbeki", "Fernández", "Kim", "Novák", "Yılmaz",
        "Ólafsdóttir", "Nguyen", "Santos", "Singh", "Lefèvre", "Tanaka", "Schwarzenegger-Lee"]
SCRIPTS = ["李小龙", "Αλέξανδρος Παππάς", "Иван Петров", "ธนา ศรีสุข", "محمد علي", "김민준", "Ngũgĩ wa Thiong'o"]
PROFESSIONS = ["actor", "actress", "actor,producer", "actress,soundtrack", "writer,actress",
               "director,actor", "composer", "producer,writer", "stunts", "miscellaneous"]


def rows(seed: int = 7, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    out = ["nconst\tprimaryName\tbirthYear\tdeathYear\tprimaryProfession\tknownForTitles"]
    for i in range(1, n + 1):
        if i % 41 == 0:
            name = rng.choice(SCRIPTS)
        elif i % 53 == 0:
            name = f'"{rng.choice(FIRST)}" {rng.choice(LAST)}'  # literal quotes, as in IMDb
        else:
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        birth = str(rng.randint(1930, 2005)) if rng.random() > 0.3 else "\\N"
        death = str(rng.randint(2006, 2024)) if rng.random() > 0.9 else "\\N"
        prof = rng.choice(PROFESSIONS) if rng.random() > 0.05 else "\\N"
        titles = ",".join(f"tt{rng.randint(1, 9999999):07d}" for _ in range(rng.randint(0, 4))) or "\\N"
        out.append(f"nm{i:07d}\t{name}\t{birth}\t{death}\t{prof}\t{titles}")
    out += [
        "nm0900001\t\t1980\t\\N\tactor\t\\N",  # empty name
        "nm0900002\t\\N\t1980\t\\N\tactress\t\\N",  # null name
        "nm0900003\t   \t\\N\t\\N\tactor\t\\N",  # blank name
        "nm0900004\tAda Okafor\t1999\t\\N\tactress\t\\N",  # duplicate name (case-insensitively, maybe)
        "nm0900005\tADA OKAFOR\t1999\t\\N\tactress\t\\N",
        "nm0000001\tDuplicate Nconst\t1970\t\\N\tactor\t\\N",  # duplicate nconst
        "nm0900006\tTruncated Row\t1970",  # malformed: too few fields
        "nm0900007\tToo\tMany\tFields\tactor\tx\ty",  # malformed: too many fields
        "nm0900008\tBad Year\t19x0\t\\N\tactor\t\\N",  # bad year
        "xx0900009\tBad Id\t1970\t\\N\tactor\t\\N",  # bad nconst
        "nm0900010\t12345\t1970\t\\N\tactor\t\\N",  # no letters
        "nm0900011\tCtrl\x07Char\t1970\t\\N\tactress\t\\N",  # control character
        "nm0900012\tZoë Ångström\t1990\t\\N\tActress\t\\N",  # capitalised profession
        "nm0900013\tZoe\u0308 Ångström\t1990\t\\N\tactress\t\\N",  # decomposed Unicode: same name after NFC
    ]
    return out


if __name__ == "__main__":
    target = Path(__file__).with_name("name.basics.sample.tsv")
    target.write_text("\n".join(rows()) + "\n", encoding="utf-8")
