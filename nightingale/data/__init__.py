"""MEDS data: reading, writing, validation, the cohort simulator, OMOP import, privacy at ingest."""
