"""Domain errors of medai.

They carry no HTTP or DIMSE detail: each edge translates them once (the ingest
pipeline into a quarantine reason, the C-STORE handler into a status code, the
web service into a JSON error, the CLI into a message and an exit code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiKeyError",
    "AuditChainBroken",
    "BatcherStopped",
    "BurnedInAnnotation",
    "CampaignError",
    "CampaignNotSetUp",
    "CannotDeidentify",
    "DemoFailed",
    "DicomwebNotFound",
    "DicomwebQueryError",
    "EdgeIdentified",
    "EdgeNotDeidentified",
    "ExportFailed",
    "GateFailure",
    "IncompleteResponse",
    "KeyEscrowError",
    "KeyFileError",
    "KeyMismatch",
    "LabelSheetError",
    "MalformedMultipart",
    "MedaiError",
    "MissingAttribute",
    "ModelConfigError",
    "ModelUnavailable",
    "NotAcceptable",
    "NotAudited",
    "NotDicom",
    "PromotionRefused",
    "PullError",
    "PullStopped",
    "QuarantineActionRefused",
    "QuarantineEntryNotFound",
    "Rejected",
    "RequestTooLarge",
    "ResumeRefused",
    "SeriesRefused",
    "SnapshotError",
    "SnapshotExists",
    "SnapshotNotFound",
    "SnapshotTampered",
    "StoreCorrupt",
    "TlsError",
    "TooLarge",
    "TruncatedDicom",
    "UndecodableTransferSyntax",
    "UnknownSite",
    "UnlabelledSnapshot",
    "UnreadableStudy",
    "UnsupportedMediaType",
    "UnsupportedObject",
    "WeightsError",
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


class DecompressionBomb(TooLarge):
    """An input that inflates past its limit (a deflated data set, a zip member).

    Inflation stopped at the limit; nothing inflated is kept, only what was received.

    Parameters
    ----------
    limit
        The most bytes the input was allowed to inflate to.
    compressed
        Its compressed size in bytes.
    """

    def __init__(self, limit: int, compressed: int) -> None:
        self.limit = limit
        self.compressed = compressed
        super().__init__(
            f"the input inflates past {limit} bytes from {compressed} compressed bytes, "
            "its limit (MEDAI_MAX_INSTANCE_BYTES, or MEDAI_MAX_INFLATE_RATIO times its "
            "compressed size): a corrupt or hostile input (a decompression bomb)"
        )


class BurnedInAnnotation(Rejected):
    """The pixels may show identifying text and no clean-pixel rule exists."""

    reason_code = "burned-in-annotation"


class UnsupportedObject(Rejected):
    """An object whose content may hold free text (SR, PDF, ...) with no rule for it."""

    reason_code = "unsupported-object"


class CannotDeidentify(Rejected):
    reason_code = "cannot-deidentify"


class EdgeNotDeidentified(Rejected):
    """An instance sent by a site's edge gateway without medai's de-identification markers.

    PatientIdentityRemoved YES, medai's DeidentificationMethod stamp and 2.25 UIDs are
    required: the centre stores edge instances as they are and never de-identifies them.
    """

    reason_code = "edge-not-deidentified"


class EdgeIdentified(Rejected):
    """An instance sent by a site's edge gateway that still looks identified.

    It carries the markers, but something de-identification removes or replaces is
    there (a name, a private tag, text the allow-list would clean, burned-in text).
    """

    reason_code = "edge-identified"


class UnknownSite(MedaiError):
    """A site id or AE title that the campaign does not define."""


class CampaignError(MedaiError):
    """A campaign definition that is invalid, or a campaign that is not set up."""


class CampaignNotSetUp(CampaignError):
    """The catalog is missing, unreachable, not migrated, or holds no campaign yet.

    Its message is one sentence that says what to run (``medai campaign init``).
    """


class KeyFileError(MedaiError):
    """The pseudonymization key file is missing, unreadable or malformed."""


class StoreCorrupt(MedaiError):
    """An object in the store does not hash to its key, or is missing."""


class AuditChainBroken(MedaiError):
    """The audit log's hash chain does not verify: a record was edited or removed."""


class MalformedMultipart(MedaiError):
    """The request body is not a well-formed multipart/related body (HTTP 400)."""


class UnsupportedMediaType(MedaiError):
    """The request or one of its parts is not ``application/dicom`` (HTTP 415)."""


class DicomwebQueryError(MedaiError):
    """A QIDO-RS or WADO-RS request that cannot be answered as asked (HTTP 400)."""


class DicomwebNotFound(MedaiError):
    """A WADO-RS request for a study, series, instance or frame medai does not hold (HTTP 404)."""


class NotAcceptable(MedaiError):
    """No media type the client accepts can be produced for the resource (HTTP 406)."""


class TooManyParts(MedaiError):
    """A multipart request with more parts than one request may hold (HTTP 413).

    Refused before any part is offered to the pipeline, so nothing of it is recorded.
    """

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        super().__init__(
            f"the request holds more than {max_parts} parts, the limit of one request "
            f"(MEDAI_MAX_STOW_PARTS): send at most {max_parts} instances per request"
        )


class PullError(MedaiError):
    """A pull that cannot go on: refused by the server, unreachable, or retries exhausted.

    The message names the operation and the server (without credentials), never a
    study or instance UID.
    """


class IncompleteResponse(MedaiError):
    """An answer that ended before its end (a cut connection): worth retrying."""


class PullStopped(PullError):
    """A pull that stopped part-way; ``summary`` says what it did until then."""

    # ``summary`` is a medai.collection.receivers.dicomweb_pull.PullSummary: typed loosely
    # because this module sits below every part and imports none of them.
    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary


class LabelSheetError(MedaiError):
    """A label sheet that cannot be read, or whose header does not fit the campaign's mapping.

    The message names the problem, the columns involved and what to do; never a value
    from the sheet.
    """


class ModelConfigError(MedaiError):
    """A model configuration file that cannot be read or is invalid."""


class WeightsError(MedaiError):
    """A weights file that is missing, unreadable, or does not fit the network."""


class ResumeRefused(MedaiError):
    """A training run that cannot be resumed (unknown, finished, or of another model)."""


@dataclass(frozen=True)
class GateFailure:
    """One check of the promotion gate that a label failed (``ci_low`` NaN: not measured).

    ``kind`` says which check: ``"auroc"`` (the lower AUROC bound on the whole test set),
    ``"site"`` (the lower bound at ``site``, a site with enough positives), or
    ``"champion"`` (the lower bound of the AUROC difference to the champion version
    ``champion`` on ``cases`` shared test cases; ``required`` is minus the margin).
    A value, not an error: :class:`PromotionRefused` carries a list of them.
    """

    label: str
    ci_low: float
    required: float
    kind: str = "auroc"
    site: str | None = None
    champion: str | None = None
    cases: int = 0

    def __str__(self) -> str:
        if self.kind == "champion":
            if math.isnan(self.ci_low):
                return (
                    f"{self.label}: cannot be compared with champion version {self.champion} "
                    f"on the same test cases ({self.cases} shared, one class only or no "
                    "per-case predictions)"
                )
            return (
                f"{self.label}: AUROC minus champion version {self.champion}'s on {self.cases} "
                f"shared test cases has a lower CI bound {self.ci_low:+.3f} < "
                f"{self.required:+.3f} (worse beyond the margin)"
            )
        where = f"{self.label} at {self.site}" if self.kind == "site" else self.label
        if math.isnan(self.ci_low):
            return f"{where}: no test AUROC confidence interval was logged (one class only?)"
        return (
            f"{where}: lower CI bound of AUROC {self.ci_low:.3f} < {self.required:.3f} "
            f"(short by {self.required - self.ci_low:.3f})"
        )


class PromotionRefused(MedaiError):
    """The version does not pass the promotion gate."""

    def __init__(self, name: str, version: str, failures: list[GateFailure]) -> None:
        self.failures = failures
        lines = "\n".join(f"  {failure}" for failure in failures)
        super().__init__(f"{name} version {version} does not pass the promotion gate:\n{lines}")


class SeriesRefused(MedaiError):
    """The instances of a series do not make one volume (a gap, duplicates, mixed geometry).

    ``reason_code`` is a short stable identifier (``missing-slice``, ``duplicate-position``,
    ``mixed-orientation``, ...); the message says what is wrong without any identifying value.
    """

    def __init__(self, reason_code: str, message: str) -> None:
        self.reason_code = reason_code
        super().__init__(message)


class SnapshotError(MedaiError):
    """A snapshot cannot be created, found, read or exported as asked."""


class SnapshotExists(SnapshotError):
    """A snapshot of that name exists already (snapshots are immutable)."""


class SnapshotNotFound(SnapshotError):
    """No snapshot of that name."""


class UnlabelledSnapshot(SnapshotError):
    """A snapshot lacks labels for findings a model is configured to learn."""


class SnapshotTampered(SnapshotError):
    """The manifest on disk no longer has the content hash recorded at creation."""


class ModelUnavailable(MedaiError):
    """The served model cannot be loaded (not registered, no alias, artifacts missing)."""


class ExportFailed(MedaiError):
    """A model export (MONAI bundle, ONNX) cannot be made or does not give the served outputs."""


class BatcherStopped(MedaiError):
    """The service is stopping: the image was not (or will not be) forwarded."""


class ApiKeyError(MedaiError):
    """A key name or role that cannot be used, or a key that does not exist."""


class DemoFailed(MedaiError):
    """A step did not give what the demo needs to go on; the message says which."""


class RequestTooLarge(MedaiError):
    """A request body over its size limit; the rest of it is not read.

    Parameters
    ----------
    max_bytes
        The limit.
    setting
        The ``MEDAI_*`` setting that sets it.
    advice
        What the sender can do instead.
    what
        What was too large, for the message.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        setting: str = "MEDAI_MAX_REQUEST_BYTES",
        advice: str = "send fewer instances per request",
        what: str = "the request body",
    ) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"{what} is larger than the {max_bytes}-byte limit ({setting}): {advice}")


class UnreadableStudy(MedaiError):
    """Instances sent for a prediction that cannot be used as one study.

    Not DICOM, unreadable, without an image, of several studies, or an image that cannot
    be decoded. The message names an instance by its position, never by a value of it.
    """


class NotAudited(MedaiError):
    """An action that needs its audit record first was not done: the record could not be written."""


class KeyMismatch(KeyFileError):
    """The campaign key file is missing or differs from the key whose fingerprint the catalog holds.

    Pseudonymizing with another key would file every patient again under new pseudonyms;
    the message says how to restore the campaign's key from its escrow.
    """


class KeyEscrowError(KeyFileError):
    """A key escrow file cannot be written, read, decrypted or does not belong to this campaign."""


class BadAuditAnchor(MedaiError):
    """An audit anchor that is not ``SEQ:HASH`` (a sequence number and a sha256 hex digest)."""


class NothingToImport(MedaiError):
    """An import path that yields no regular file to read (an empty folder, a device, a FIFO)."""


class EdgeError(MedaiError):
    """The edge gateway cannot go on: no or a broken site kit or edge.toml, bad windows."""


class BackupError(MedaiError):
    """A backup cannot be made, read or restored: a bad destination, a damaged or partial set."""


class TlsError(MedaiError):
    """A TLS certificate, key or CA file that is missing, unreadable, not PEM or mismatched."""


class QuarantineEntryNotFound(MedaiError):
    """No quarantine entry has that id (``medai collect quarantine list`` shows the ids)."""


class QuarantineActionRefused(MedaiError):
    """A quarantine release or purge that cannot be done: nothing chosen, or not releasable."""
