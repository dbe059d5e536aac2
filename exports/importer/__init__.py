"""Importing a GitLab project export archive (``POST /api/v4/projects/import``).

- ``archive``: checks the upload (decompressed size while streaming, then every member's
  name and type) and extracts it into a private work directory.
- ``ndjson``: reads the archive's JSON files with a bound on each line.
- ``writer``: turns the relations into rows, in batches, mapping users and recording
  what failed or is not modelled.
- ``services``: the import job (request, run, status, cancel), as the export's services.
"""
