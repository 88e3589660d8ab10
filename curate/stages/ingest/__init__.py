"""`curate import`: folders, zips, scraper sidecars and Kohya datasets into a workspace.

sources.py walks what the user named; sidecars.py reads tags and captions; decode.py checks
and normalises pixels; plan.py decides what is new; run.py stores and records it.
"""

from curate.stages.ingest.config import ImportConfig
from curate.stages.ingest.run import ImportResult, import_sources

__all__ = ["ImportConfig", "ImportResult", "import_sources"]
