"""Pipeline stages. Each stage is a package or module with one entry point that takes records
(or sources, for import) and a typed config, and records what it decided in the manifest."""
