"""The coded concepts a DICOM Segmentation gives each structure, from its name.

A structure whose name is a SNOMED CT concept in pydicom's code dictionary gets that concept
("white matter" -> 389080008 White Matter; British spellings as the dictionary's American ones:
"grey matter" -> 389081007 Gray Matter), under the category "Anatomical Structure", or
"Morphologically Abnormal Structure" for lesions, tumours and the like. Any other name gets a
local code (coding scheme ``99ASSFT``, DICOM's convention for a private scheme) whose meaning is
the name itself, so that no structure is given a code it does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LOCAL_SCHEME", "SegmentCodes", "segment_codes"]

LOCAL_SCHEME = "99ASSFT"
_SPELLING = {"grey": "gray", "tumour": "tumor", "oedema": "edema", "haemorrhage": "hemorrhage"}
_ABNORMAL = {"tumor", "lesion", "edema", "neoplasm", "necrosis", "hemorrhage", "metastasis", "cyst"}
_ANATOMICAL = ("91723000", "SCT", "Anatomical Structure")
_MORPHOLOGICAL = ("49755003", "SCT", "Morphologically Abnormal Structure")


@dataclass(frozen=True)
class SegmentCodes:
    """(code value, coding scheme, meaning) of a structure's category and type."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]

    @property
    def is_snomed(self) -> bool:
        return self.type[1] == "SCT"


def segment_codes(name: str) -> SegmentCodes:
    """The category and type codes of a structure named ``name``."""
    from pydicom.sr.codedict import codes

    words = [_SPELLING.get(word, word) for word in re.findall(r"[a-z0-9]+", name.lower())]
    category = _MORPHOLOGICAL if _ABNORMAL & set(words) else _ANATOMICAL
    keyword = "".join(word.capitalize() for word in words)
    if keyword and keyword[0].isalpha():
        try:
            concept = getattr(codes.SCT, keyword)
        except AttributeError:
            concept = None
        if concept is not None:
            return SegmentCodes(category, (concept.value, "SCT", concept.meaning))
    local = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:16] or "structure"
    return SegmentCodes(category, (local, LOCAL_SCHEME, name[:64]))
