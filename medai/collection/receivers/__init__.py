"""How DICOM reaches the ingest pipeline: folder import, C-STORE, STOW-RS, DICOMweb pull."""
