"""facelift: paired FLUX schnell/dev portrait datasets and the heads distilled from them."""

__version__ = "0.1.0"
