"""The on-disk caches of preprocessed (regridded, memory-mappable) data."""
