"""The data pipeline: iMaterialist sources, collapse rules, splits and JSONL datasets."""
