"""Versions and file trees, now `fsbackup.catalog.versions` and `fsbackup.catalog.tree`: kept so
that the command line's imports hold until it imports from the catalog."""
from .catalog.tree import ROOT_ID, Content, ContentRow, FileOfNode, Listed, Node, VersionTree
from .catalog.versions import VersionInfo, list_versions, resolve_version

__all__ = ["ROOT_ID", "Content", "ContentRow", "FileOfNode", "Listed", "Node", "VersionInfo", "VersionTree",
           "list_versions", "resolve_version"]
