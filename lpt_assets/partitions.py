"""Image shards: one dynamic partition per fixed group of images from one caption source."""

from dagster import DynamicPartitionsDefinition

shards = DynamicPartitionsDefinition(name="shards")
