"""Model artifacts: schema, demo model, manifest, loading, merging and verification."""
