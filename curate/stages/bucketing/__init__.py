"""`curate buckets`: how a dataset falls into sd-scripts' aspect-ratio buckets, and fixes."""

from curate.stages.bucketing.run import BucketsResult, buckets_for

__all__ = ["BucketsResult", "buckets_for"]
