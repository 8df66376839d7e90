"""Micro-benchmarks: ``gc2bench bench selection|hooks|prefill|gpu`` (BENCHMARKS.md)."""

# ``bench prefill``'s default methods: the uncompressed reference and the papers' main methods
# (``bench gpu`` runs every conf/compressor).
PREFILL_COMPRESSORS = ("none", "globalcom2", "fastervlm", "fastv", "pdrop", "sparsevlm")
