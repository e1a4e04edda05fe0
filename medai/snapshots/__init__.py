"""Dataset snapshots: frozen, labelled, split manifests between collection and training."""
