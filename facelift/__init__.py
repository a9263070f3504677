"""facelift: paired FLUX schnell/dev portrait datasets and the heads distilled from them.

Layers (each imports only the ones below it; see docs/architecture.md): ``facelift.cli`` / ``facelift.api``
-> ``facelift.flows`` -> ``facelift.tasks`` -> ``facelift.models`` -> ground (``config``, ``storage``,
``dataset``). This module imports nothing, so ``import facelift`` is instant.
"""

__version__ = "0.1.0"
