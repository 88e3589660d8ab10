"""Aspect-ratio buckets, computed exactly as sd-scripts' BucketManager does (issue 6)."""
