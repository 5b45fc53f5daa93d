"""The Sluice worker SDK: a Django-free package that runs operator functions against the
internal worker API (DESIGN.md §6). It depends only on the standard library and pyarrow."""

__version__ = "0.1.0"
