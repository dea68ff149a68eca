"""Synthetic H&E-like slides with known metastases, written as pyramidal SVS, and PCam-format patch sets."""
