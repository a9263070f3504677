"""Provenance metadata that other tools read: written into PNG, JPEG and WebP outputs, read back from inputs.

- PNG: an iTXt chunk ``facelift`` (the whole provenance as JSON), a ``parameters`` text chunk in the format
  AUTOMATIC1111's web UI writes and reads (prompt, then ``Steps: .., Seed: .., ..``), and XMP
  (iTXt ``XML:com.adobe.xmp``). No chunk is named ``prompt``: ComfyUI stores its workflow graph there.
- JPEG and WebP: the XMP packet (they have no text chunks).
- XMP: IPTC ``DigitalSourceType`` (``trainedAlgorithmicMedia`` for generated images; an enhanced image that
  was not generated is ``compositeWithTrainedAlgorithmicMedia``), ``xmp:CreatorTool`` and the provenance JSON
  as ``facelift:provenance``, so that it survives in every format.
Nothing secret is ever written: provenance holds model ids, revisions, hashes and settings only.
Only the standard library is imported at module import time.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from xml.sax.saxutils import quoteattr

PROVENANCE_KEY = "facelift"
PARAMETERS_KEY = "parameters"
XMP_KEY = "XML:com.adobe.xmp"
SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = SOURCE_TYPES + "trainedAlgorithmicMedia"
COMPOSITE = SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
FACELIFT_NS = "https://github.com/facelift/ns/1.0/"


def head_sha256(head_uri: str, endpoint_url: str | None = None) -> str:
    """sha256 of a head's weights file (``model.safetensors``): a local file is hashed streaming and memoised by
    (path, size, mtime); an object is read once."""
    from facelift.models.heads import WEIGHTS_FILE, HeadError, read_head_config

    store, _ = read_head_config(str(head_uri), endpoint_url)
    if store.is_local:
        from facelift.models.metrics import file_sha256

        try:
            return file_sha256(store.path(WEIGHTS_FILE))
        except FileNotFoundError:
            raise HeadError(f"head folder {store.where()} has no {WEIGHTS_FILE}") from None
    try:
        return hashlib.sha256(store.read_bytes(WEIGHTS_FILE)).hexdigest()
    except FileNotFoundError:
        raise HeadError(f"head folder {store.where()} has no {WEIGHTS_FILE}") from None


def public_uri(uri: str) -> str:
    """``uri`` without credentials: no ``user:password@`` and no query string (which may hold a signature)."""
    import re

    return re.sub(r"^([A-Za-z][\w+.-]*://)[^/@]*@", r"\1", str(uri)).split("?", 1)[0]


def head_run_id(head_uri: str) -> str:
    """The run id of a head URI (``<root>/runs/<id>`` or ``.../runs/<id>/head``), else the folder's name."""
    parts = [p for p in str(head_uri).rstrip("/").split("/") if p]
    if parts and parts[-1] == "head":
        parts = parts[:-1]
    return parts[-1] if parts else str(head_uri)


def head_info(name: str, flavor: str, head_uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """What an output records about the head that made it: name, flavor, URI, run id, weights sha256, version."""
    from facelift import __version__

    return {"head": name, "head_flavor": flavor, "head_uri": public_uri(head_uri),
            "head_run_id": head_run_id(head_uri), "head_sha256": head_sha256(head_uri, endpoint_url),
            "facelift_version": __version__}


def xmp_packet(provenance: dict[str, Any], source_type: str = TRAINED) -> str:
    """An XMP packet with the IPTC DigitalSourceType, the creator tool and the provenance JSON."""
    tool = f"facelift {provenance.get('facelift_version', '')}".strip()
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about=""'
            ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
            ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
            f' xmlns:facelift="{FACELIFT_NS}"'
            f' Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}'
            f' xmp:CreatorTool={quoteattr(tool)}'
            f' facelift:provenance={quoteattr(json.dumps(provenance, sort_keys=True))}/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>')


def xmp_fields(xmp: str | bytes) -> dict[str, str]:
    """The attributes of an XMP packet's rdf:Description, by local name ({} if it cannot be parsed)."""
    import xml.etree.ElementTree as ET

    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    start, end = text.find("<x:xmpmeta"), text.find("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    try:
        root = ET.fromstring(text[start:end + len("</x:xmpmeta>")])
    except ET.ParseError:
        return {}
    fields: dict[str, str] = {}
    for desc in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"):
        fields.update({k.rsplit("}", 1)[-1]: v for k, v in desc.attrib.items()})
    return fields


def attach(img: Any, provenance: dict[str, Any], parameters: str | None = None, source_type: str = TRAINED) -> Any:
    """``img`` with its provenance in ``info`` and in ``encoderinfo``, so that a plain ``img.save(path)`` writes it
    (Pillow applies an image's ``encoderinfo`` on every save: PNG chunks, JPEG/WebP XMP). A copy or a converted
    image has none: pass ``**save_params(fmt, provenance, parameters)`` to its ``save``."""
    img.info[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True)
    if parameters:
        img.info[PARAMETERS_KEY] = parameters
    img.encoderinfo = {**save_params("PNG", provenance, parameters, source_type),
                       **save_params("JPEG", provenance, parameters, source_type)}
    return img


def save_params(fmt: str, provenance: dict[str, Any], parameters: str | None = None,
                source_type: str = TRAINED) -> dict[str, Any]:
    """Keyword arguments for ``PIL.Image.save`` in ``fmt`` (PNG, JPEG, WEBP) that write the provenance."""
    xmp = xmp_packet(provenance, source_type)
    if fmt.upper() != "PNG":
        return {"xmp": xmp.encode()}
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))
    if parameters:
        info.add_itxt(PARAMETERS_KEY, parameters)
    info.add_itxt(XMP_KEY, xmp)
    return {"pnginfo": info}


def read_metadata(img: Any) -> tuple[dict[str, Any], str | None]:
    """(provenance, A1111 parameters) of an open PIL image: PNG text chunks first, else its XMP."""
    text = getattr(img, "text", None) or img.info  # a PNG file's chunks, or an in-memory image's info
    raw = text.get(PROVENANCE_KEY)
    parameters = text.get(PARAMETERS_KEY)
    parameters = parameters if isinstance(parameters, str) else None
    if raw is None:
        xmp = img.info.get("xmp") or text.get(XMP_KEY)  # JPEG/WebP (and PNG): the XMP packet
        raw = xmp_fields(xmp).get("provenance") if xmp else None
    try:
        provenance = json.loads(raw) if isinstance(raw, str | bytes) and raw else {}
    except json.JSONDecodeError:
        provenance = {}
    return (provenance if isinstance(provenance, dict) else {}), parameters


def a1111_value(value: Any) -> str:
    """A value in A1111's settings line: quoted when it holds a comma, colon, quote or newline."""
    text = str(value).replace("\n", " ")
    return f'"{text.replace(chr(34), chr(39))}"' if any(c in text for c in ',:"') else text


def enhance_parameters(parameters: str | None, head: str, head_hash: str) -> str | None:
    """An input's ``parameters`` with the enhance head appended to its settings line (None if it had none)."""
    if not parameters:
        return None
    return f"{parameters.rstrip()}, Enhance head: {a1111_value(head)}, Enhance head hash: {head_hash[:10]}"
