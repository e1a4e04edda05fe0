"""Fake identities for synthetic studies, and the record of every PHI value planted."""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

__all__ = ["FakePatient", "PhiRecord", "Staff", "make_patient", "make_staff"]

# Built-in lists, so nothing is downloaded. Each name is at least five letters, is not
# made of hexadecimal letters only and is no substring of a DICOM keyword or defined
# term, so a test can search de-identified bytes for it without false positives.
LAST_NAMES = (
    "Abernathy",
    "Okonkwo",
    "Lindqvist",
    "Kowalczyk",
    "Haddadin",
    "Nakamura",
    "Ferreira",
    "Oyelaran",
    "Castellano",
    "Brannigan",
    "Dubrovsky",
    "Thorvaldsen",
    "Quintero",
    "Wojcik",
    "Achterberg",
    "Papadakis",
    "Fitzgerald",
    "Rasmussen",
    "Delacroix",
    "Gallagher",
    "Yamamoto",
    "Hollister",
    "Venkataraman",
    "Pellegrini",
    "Kristiansen",
    "Barrington",
    "Ellsworth",
    "Sandoval",
    "Whitcombe",
    "Novakovic",
    "Ramaswamy",
    "Holmberg",
    "Ostrowski",
    "Featherstone",
    "Vukovic",
    "Mendelsohn",
    "Szymanski",
    "Oduya",
    "Lombardini",
    "Petrossian",
)
FIRST_NAMES = (
    "Marta",
    "Theodora",
    "Benedikt",
    "Ingrid",
    "Oluwaseun",
    "Rafael",
    "Siobhan",
    "Tomasz",
    "Hiroshi",
    "Leonora",
    "Augustin",
    "Priyanka",
    "Cornelius",
    "Magdalena",
    "Evander",
    "Rosalind",
    "Bartholomew",
    "Anneliese",
    "Dmitri",
    "Fernanda",
    "Gwendolyn",
    "Ignatius",
    "Juliette",
    "Kasimir",
    "Ludmila",
    "Matthias",
    "Noemi",
    "Octavia",
    "Perpetua",
    "Quentin",
    "Rosamund",
    "Sebastian",
    "Tabitha",
    "Ulrike",
    "Valentin",
    "Wilhelmina",
    "Xavier",
    "Yolanda",
    "Zbigniew",
    "Henrietta",
)
MIDDLE_INITIALS = "JKLMNPRSTW"
# Staff names come from lists disjoint from the patients', so a patient never shares a
# surname with a physician (a de-identification test could not tell them apart).
STAFF_LAST_NAMES = (
    "Vandermeer",
    "Okafor",
    "Lindgren",
    "Petrakis",
    "Halvorsen",
    "Bertolini",
    "Nakashima",
    "Zielinski",
    "Moriarty",
    "Szczepanski",
    "Ekwueme",
    "Rautenberg",
    "Stenberg",
    "Quigley",
    "Marchetti",
    "Kaczmarek",
    "Dufresne",
    "Ingersoll",
    "Trevisan",
    "Oyelowo",
)
STAFF_FIRST_NAMES = (
    "Grete",
    "Anselm",
    "Florentyna",
    "Ruairi",
    "Solveig",
    "Emeka",
    "Pernille",
    "Jaroslav",
    "Isolde",
    "Casimir",
    "Wiebke",
    "Thaddeus",
)
STREETS = (
    "Larkspur Lane",
    "Quarry Hill Road",
    "Tanner's Row",
    "Old Mill Crescent",
    "Heron Way",
    "Saltmarsh Drive",
    "Juniper Close",
    "Bellfounder Street",
    "Kingfisher Walk",
)
TOWNS = ("Eastbrook", "Millhaven", "Ardmore Cross", "Wrenfield", "Otterburn Vale")


@dataclass(frozen=True)
class FakePatient:
    """One synthetic patient: every identifying value the generator plants for them."""

    patient_id: str
    last_name: str
    first_name: str
    middle_initial: str
    sex: str
    birth_date: datetime.date
    address: str
    telephone: str
    weight_kg: int
    height_m: float

    @property
    def dicom_name(self) -> str:
        """The Person Name as modalities write it: ``LAST^First^M``."""
        return f"{self.last_name.upper()}^{self.first_name}^{self.middle_initial}"

    @property
    def display_name(self) -> str:
        """The name as typed into free text by staff: ``Last First``."""
        return f"{self.last_name} {self.first_name}"


@dataclass(frozen=True)
class Staff:
    """Physicians and technologists of one site."""

    referring: str
    performing: str
    operator: str
    reading: str
    referring_phone: str


def _phone(rng: np.random.Generator) -> str:
    return f"555-{int(rng.integers(100, 1000)):03d}-{int(rng.integers(0, 10000)):04d}"


def make_patient(rng: np.random.Generator, patient_id: str) -> FakePatient:
    """Draw a fake patient with the given (unique) ``patient_id``."""
    sex = str(rng.choice(["F", "M"]))
    birth = datetime.date(1935, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 25500)))
    street = STREETS[int(rng.integers(len(STREETS)))]
    town = TOWNS[int(rng.integers(len(TOWNS)))]
    return FakePatient(
        patient_id=patient_id,
        last_name=LAST_NAMES[int(rng.integers(len(LAST_NAMES)))],
        first_name=FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))],
        middle_initial=MIDDLE_INITIALS[int(rng.integers(len(MIDDLE_INITIALS)))],
        sex=sex,
        birth_date=birth,
        address=f"{int(rng.integers(2, 240))} {street}, {town} {int(rng.integers(10, 99))}",
        telephone=_phone(rng),
        weight_kg=int(rng.integers(48, 118)),
        height_m=round(float(rng.uniform(1.50, 1.95)), 2),
    )


def make_staff(rng: np.random.Generator) -> Staff:
    """Draw the physicians and technologist named in one site's files."""
    last = rng.permutation(len(STAFF_LAST_NAMES))[:4]
    first = rng.permutation(len(STAFF_FIRST_NAMES))[:4]
    names = [
        f"{STAFF_LAST_NAMES[int(i)].upper()}^{STAFF_FIRST_NAMES[int(j)]}"
        for i, j in zip(last, first, strict=True)
    ]
    return Staff(names[0], names[1], names[2], names[3], _phone(rng))


class PhiRecord:
    """Every distinctive identifying string planted, by where it was planted.

    Only strings of at least four characters that cannot occur by chance in
    de-identified output are kept (names, IDs, addresses, free text); dates are
    kept per study in the study records instead, since a shifted date can equal
    another patient's original one.
    """

    def __init__(self) -> None:
        self.by_attribute: dict[str, set[str]] = defaultdict(set)
        self.device: set[str] = set()
        self.uids: set[str] = set()

    def add(self, where: str, *values: str) -> None:
        """Record ``values`` planted in ``where`` (a keyword path such as ``Seq/Keyword``)."""
        for value in values:
            if len(value) >= 4:
                self.by_attribute[where].add(value)

    def add_person(self, where: str, dicom_name: str) -> None:
        """Record a Person Name and each of its name components."""
        self.add(where, dicom_name, *dicom_name.split("^"))

    @property
    def values(self) -> frozenset[str]:
        return frozenset(v for values in self.by_attribute.values() for v in values)
