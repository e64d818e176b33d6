"""fsbackup: deduplicated, compressed, encrypted backups, browsable as a read-only FUSE filesystem."""
__version__ = "0.1.0"
