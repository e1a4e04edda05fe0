"""Domain errors of medai.

They carry no HTTP or DIMSE detail: each edge translates them once (the ingest
pipeline into a quarantine reason, the C-STORE handler into a status code, the
web service into a JSON error, the CLI into a message and an exit code).
"""

from __future__ import annotations

__all__ = [
    "AuditChainBroken",
    "BurnedInAnnotation",
    "CampaignError",
    "CannotDeidentify",
    "KeyFileError",
    "MedaiError",
    "MissingAttribute",
    "NotDicom",
    "Rejected",
    "StoreCorrupt",
    "TooLarge",
    "TruncatedDicom",
    "UndecodableTransferSyntax",
    "UnknownSite",
    "UnsupportedObject",
]


class MedaiError(Exception):
    """Base of every error medai raises on purpose."""


class Rejected(MedaiError):
    """An offered instance that cannot be accepted; the pipeline quarantines it.

    ``reason_code`` is a short stable identifier (used in summaries and the
    catalog); the message says what is wrong in words a data steward can act on.
    A message must never contain identifying values from the file itself.
    """

    reason_code = "rejected"


class NotDicom(Rejected):
    reason_code = "not-dicom"


class TruncatedDicom(Rejected):
    reason_code = "truncated"


class MissingAttribute(Rejected):
    reason_code = "missing-attribute"


class UndecodableTransferSyntax(Rejected):
    reason_code = "undecodable-transfer-syntax"


class TooLarge(Rejected):
    reason_code = "too-large"


class BurnedInAnnotation(Rejected):
    """The pixels may show identifying text and no clean-pixel rule exists."""

    reason_code = "burned-in-annotation"


class UnsupportedObject(Rejected):
    """An object whose content may hold free text (SR, PDF, ...) with no rule for it."""

    reason_code = "unsupported-object"


class CannotDeidentify(Rejected):
    reason_code = "cannot-deidentify"


class UnknownSite(MedaiError):
    """A site id or AE title that the campaign does not define."""


class CampaignError(MedaiError):
    """A campaign definition that is invalid, or a campaign that is not set up."""


class KeyFileError(MedaiError):
    """The pseudonymization key file is missing, unreadable or malformed."""


class StoreCorrupt(MedaiError):
    """An object in the store does not hash to its key, or is missing."""


class AuditChainBroken(MedaiError):
    """The audit log's hash chain does not verify: a record was edited or removed."""
