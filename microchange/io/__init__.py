"""The only modules that open files: rasters, GeoParquet tables and the run manifest."""
