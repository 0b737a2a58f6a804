"""Entry file that Ikomia looks for: it imports ``IkomiaPlugin`` from here."""

from .ikomia_plugin import IkomiaPlugin

__all__ = ["IkomiaPlugin"]
