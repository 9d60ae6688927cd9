"""Label spaces and raw-label mappings."""

import pytest

from dorl.data.taxonomy import (
    DORL13,
    MATURE5,
    RAW_TO_FINE,
    UNKNOWN,
    TaxonomyError,
    fine_to_label,
    label_space,
    raw_to_fine,
)


def test_label_spaces():
    assert label_space("mature5") == MATURE5
    assert len(label_space("dorl13")) == 13 and label_space("dorl13")[0] == "basophil"
    with pytest.raises(TaxonomyError, match="mature6"):
        label_space("mature6")


@pytest.mark.parametrize("raw,mature,dorl", [
    ("SNE", "neutrophil", "neutrophil_segmented"),
    ("BNE", "neutrophil", "neutrophil_banded"),
    ("NEUTROPHIL", "neutrophil", UNKNOWN),  # generic: no place in the 13 classes
    ("IG", UNKNOWN, UNKNOWN),
    ("PLATELET", UNKNOWN, UNKNOWN),
    ("MMY", UNKNOWN, "metamyelocyte"),
    ("LY", "lymphocyte", "lymphocyte_typical"),
])
def test_acevedo_prefixes(raw, mature, dorl):
    fine = raw_to_fine(raw, "acevedo20")
    assert fine_to_label(fine, "mature5") == mature
    assert fine_to_label(fine, "dorl13") == dorl


def test_matek_codes_follow_the_papers():
    to13 = {code: fine_to_label(raw_to_fine(code, "matek19"), "dorl13")
            for code in RAW_TO_FINE["matek19"]}
    assert to13["MOB"] == "monocyte"  # monoblasts merged into monocytes
    assert to13["PMB"] == UNKNOWN  # bilobed promyelocytes dropped
    assert set(to13.values()) - {UNKNOWN} == set(DORL13)


def test_zheng_and_generic_names():
    assert [fine_to_label(raw_to_fine(str(i), "zheng2018"), "mature5") for i in range(1, 6)] == [
        "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    assert raw_to_fine("Lymphocytes", "class_folders") == "lymphocyte"
    assert raw_to_fine("mixed", "class_folders") == UNKNOWN
    assert raw_to_fine("mixed", "class_folders", {"mixed": "monocyte"}) == "monocyte"
    with pytest.raises(TaxonomyError, match="dragon"):
        raw_to_fine("x", "class_folders", {"x": "dragon"})
    with pytest.raises(TaxonomyError, match="dragon"):
        fine_to_label("dragon", "mature5")
