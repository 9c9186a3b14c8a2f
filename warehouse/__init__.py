"""The warehouse: layout on disk, schemas, the part commit protocol and the DuckDB catalog.

Nothing here imports torch; everything that writes into a warehouse goes through this package.
"""
