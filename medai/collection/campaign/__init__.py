"""The campaign: its definition (TOML), its set-up in the catalog, progress and KPIs."""
