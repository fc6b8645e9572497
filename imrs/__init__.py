"""IMRS: self-hosted image retrieval with on-demand web expansion."""
