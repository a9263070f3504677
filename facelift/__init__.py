"""facelift: paired FLUX schnell/dev portrait datasets and the heads distilled from them."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy re-exports (importing facelift stays light): ``facelift.enhance``."""
    if name == "enhance":
        from facelift.enhance_api import enhance

        return enhance
    raise AttributeError(f"module 'facelift' has no attribute {name!r}")
