"""The LongPerceptualThoughts method as plain, typed functions (no Dagster, no engines)."""
