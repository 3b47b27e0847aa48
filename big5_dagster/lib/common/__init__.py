"""Shared by every stage: atomic files, content hashes, resumable chunks, JSON values,
package data, code versions and the lineage schema."""
