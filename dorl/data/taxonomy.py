"""Label spaces and the mappings from each dataset's raw labels into them.

Every raw label is first mapped to a *fine* label (the most specific cell type the dataset
states); the fine label is then mapped into the configured *label space*. Anything without a
mapping becomes the explicit label ``unknown``: it is counted and reported, never relabelled.
"""

from __future__ import annotations

from types import MappingProxyType

from dorl.errors import InputError

UNKNOWN = "unknown"

#: The five mature white cells shared by every public WBC dataset.
MATURE5 = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")

#: The 13-class space of the DoRL / BC-SAM / AE-CFE papers, in their id order.
DORL13 = (
    "basophil", "eosinophil", "erythroblast", "myeloblast", "promyelocyte", "myelocyte",
    "metamyelocyte", "neutrophil_banded", "neutrophil_segmented", "monocyte",
    "lymphocyte_typical", "lymphocyte_atypical", "smudge_cell",
)

LABEL_SPACES = MappingProxyType({"mature5": MATURE5, "dorl13": DORL13})

#: Fine labels: DORL13 plus the coarser or extra types some datasets use.
FINE_LABELS = DORL13 + (
    "neutrophil", "lymphocyte", "immature_granulocyte", "monoblast", "promyelocyte_bilobed",
    "platelet",
)

_FINE_TO_SPACE = {
    "mature5": {
        "neutrophil": "neutrophil", "neutrophil_segmented": "neutrophil",
        "neutrophil_banded": "neutrophil", "lymphocyte": "lymphocyte",
        "lymphocyte_typical": "lymphocyte", "monocyte": "monocyte", "eosinophil": "eosinophil",
        "basophil": "basophil",
    },
    # As in the papers: monoblasts merge into monocytes; generic IG/neutrophil/platelet and
    # bilobed promyelocytes have no place. A generic "lymphocyte" is taken as typical.
    "dorl13": {**{name: name for name in DORL13}, "monoblast": "monocyte",
               "lymphocyte": "lymphocyte_typical"},
}

#: Raw label -> fine label, per dataset format.
RAW_TO_FINE = MappingProxyType({
    "acevedo20": {
        "SNE": "neutrophil_segmented", "BNE": "neutrophil_banded", "NEUTROPHIL": "neutrophil",
        "MY": "myelocyte", "MMY": "metamyelocyte", "PMY": "promyelocyte",
        "IG": "immature_granulocyte", "BA": "basophil", "EO": "eosinophil",
        "ERB": "erythroblast", "LY": "lymphocyte_typical", "MO": "monocyte",
        "PLATELET": "platelet",
    },
    "matek19": {
        "BAS": "basophil", "EBO": "erythroblast", "EOS": "eosinophil", "KSC": "smudge_cell",
        "LYA": "lymphocyte_atypical", "LYT": "lymphocyte_typical", "MMZ": "metamyelocyte",
        "MOB": "monoblast", "MON": "monocyte", "MYB": "myelocyte", "MYO": "myeloblast",
        "NGB": "neutrophil_banded", "NGS": "neutrophil_segmented", "PMB": "promyelocyte_bilobed",
        "PMO": "promyelocyte",
    },
    "zheng2018": {
        "1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil",
    },
})

#: Folder names a generic class-folder dataset may use (lower-cased) -> fine label.
COMMON_ALIASES = MappingProxyType({
    **{name: name for name in FINE_LABELS},
    "neutrophils": "neutrophil", "lymphocytes": "lymphocyte", "monocytes": "monocyte",
    "eosinophils": "eosinophil", "basophils": "basophil", "neut": "neutrophil",
    "lymph": "lymphocyte", "mono": "monocyte", "eos": "eosinophil", "baso": "basophil",
    "ig": "immature_granulocyte", "erythroblasts": "erythroblast", "platelets": "platelet",
})


class TaxonomyError(InputError, ValueError):
    """A label space, fine label or alias is not part of the taxonomy."""


def label_space(name: str) -> tuple[str, ...]:
    """Return the ordered class names of a label space (``mature5`` or ``dorl13``)."""
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise TaxonomyError(
            f"unknown label space {name!r}; choose one of {sorted(LABEL_SPACES)}") from None


def fine_to_label(fine: str, space: str) -> str:
    """Map a fine label into ``space``; labels without a place there become ``unknown``."""
    label_space(space)
    if fine not in FINE_LABELS and fine != UNKNOWN:
        raise TaxonomyError(f"{fine!r} is not a fine label; known: {', '.join(FINE_LABELS)}")
    return _FINE_TO_SPACE[space].get(fine, UNKNOWN)


def raw_to_fine(raw: str, dataset: str, aliases: dict[str, str] | None = None) -> str:
    """Map a dataset's raw label to a fine label, or ``unknown`` when it has no mapping.

    ``aliases`` (raw name -> fine label) take precedence; for the generic formats the common
    folder names are tried case-insensitively.
    """
    if aliases and raw in aliases:
        fine = aliases[raw]
        if fine not in FINE_LABELS and fine != UNKNOWN:
            raise TaxonomyError(f"alias {raw!r} -> {fine!r}: {fine!r} is not a fine label; "
                                f"known: {', '.join(FINE_LABELS)}")
        return fine
    table = RAW_TO_FINE.get(dataset)
    if table is not None:
        return table.get(raw, UNKNOWN)
    return COMMON_ALIASES.get(raw.strip().lower().replace(" ", "_"), UNKNOWN)
