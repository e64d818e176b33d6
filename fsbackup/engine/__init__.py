"""The use cases: each talks to the repository and the catalog, never to another engine module.

    backup.py    scan -> blocks -> dedup -> volumes -> upload -> version, then verify and retention
    restore.py   a version (or part of it) back onto disk, checked end to end
    check.py     finding damage (structure, and with --read-data every block), and repairing it
    prune.py     forgetting versions by policy, and deleting or repacking what no version uses
"""
