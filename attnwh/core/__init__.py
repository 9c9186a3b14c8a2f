"""The small core every layer of attnwh may import: error types, registries, where attnwh keeps its own
files, table output. It imports no stage and no face."""
