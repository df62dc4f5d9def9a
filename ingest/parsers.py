"""Uploaded files -> plain text sections, ready for the chunker.

Supported: plain text (``.txt``), Markdown (``.md``), HTML (``.html``/``.htm``), PDF (text
layer, via pypdf) and JSON Lines (``.jsonl``, one document object a line, read by
:func:`parse_jsonl` since it holds many documents). The kind is chosen by file extension, else
by content type. Everything a client can get wrong -- an unsupported type, undecodable text,
a corrupt or encrypted PDF, a bad JSON line -- raises InvalidArgument (PayloadTooLarge for
size limits); third-party errors are translated here.

Text is decoded as UTF-8 unless a byte-order mark, the content type's ``charset`` or an HTML
``<meta charset>`` says otherwise; line ends become ``\\n`` and control characters are dropped.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from ingest.validate import check_id
from vectordb.errors import InvalidArgument, PayloadTooLarge

if TYPE_CHECKING:
    from pypdf import PdfReader


@dataclass(frozen=True)
class Section:
    """A run of text under one heading (or one PDF page)."""

    text: str
    heading: str | None = None
    page: int | None = None  # 1-based, PDFs only


@dataclass(frozen=True)
class ParsedDocument:
    title: str | None
    sections: list[Section]


EXTENSIONS = {
    ".txt": "text", ".text": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
}  # fmt: skip
CONTENT_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/jsonl": "jsonl", "application/x-ndjson": "jsonl",
    "application/x-jsonlines": "jsonl", "application/json-lines": "jsonl",
}  # fmt: skip


def file_kind(filename: str, content_type: str | None = None) -> str:
    """``"text"``, ``"markdown"``, ``"html"``, ``"pdf"`` or ``"jsonl"``; else InvalidArgument."""
    dot = filename.rfind(".")
    if dot >= 0 and (kind := EXTENSIONS.get(filename[dot:].lower())):
        return kind
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if kind := CONTENT_TYPES.get(media_type):
        return kind
    raise InvalidArgument(
        f"unsupported file type {filename[:200]!r} (content type {content_type!r}); supported: {', '.join(EXTENSIONS)}"
    )


def parse_file(
    filename: str, data: bytes, content_type: str | None = None, *, max_bytes: int | None = None
) -> ParsedDocument:
    """Parse one uploaded file into sections.

    Raises PayloadTooLarge past ``max_bytes``; InvalidArgument for an unsupported type, a file
    that cannot be read, a JSON Lines file (use :func:`parse_jsonl`), or one without any text
    (an empty file, a scanned PDF without a text layer).
    """
    _check_size(data, max_bytes)
    kind = file_kind(filename, content_type)
    charset = _charset_of(content_type)
    if kind == "text":
        doc = parse_text(data, charset)
    elif kind == "markdown":
        doc = parse_markdown(data, charset)
    elif kind == "html":
        doc = parse_html(data, charset)
    elif kind == "pdf":
        doc = parse_pdf(data)
    else:
        raise InvalidArgument(f"{filename[:200]!r} is JSON Lines, one document a line, not one document")
    if not doc.sections:
        hint = " (a scanned PDF without a text layer?)" if kind == "pdf" else ""
        raise InvalidArgument(f"{filename[:200]!r} contains no text{hint}")
    return doc


# ---------------------------------------------------------------------------- text


def _check_size(data: bytes, max_bytes: int | None) -> None:
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"file is {len(data)} bytes, more than the limit of {max_bytes}")


def _charset_of(content_type: str | None) -> str | None:
    match = re.search(r";\s*charset\s*=\s*\"?([\w.:-]+)", content_type or "", re.IGNORECASE)
    return match.group(1) if match else None


_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _decode(data: bytes, charset: str | None = None) -> str:
    """Bytes -> clean text; InvalidArgument for an unknown charset, bad bytes or binary data."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            data, charset = data[len(bom) :], encoding
            break
    encoding = charset or "utf-8"
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise InvalidArgument(f"unknown charset {encoding[:50]!r}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"file is not valid {encoding} text (bad byte at offset {exc.start})") from exc
    # Text files hold almost no control characters; binary data decoded by luck holds many.
    controls = len(_CONTROL.findall(text))
    if "\x00" in text or controls > 2 + len(text) // 100:
        raise InvalidArgument("file looks binary, not text")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    return _CONTROL.sub("", text)


def parse_text(data: bytes, charset: str | None = None) -> ParsedDocument:
    """A plain text file: one section, no title."""
    text = _decode(data, charset).strip()
    return ParsedDocument(title=None, sections=[Section(text)] if text else [])


# ---------------------------------------------------------------------------- markdown

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_FRONT_MATTER = re.compile(r"---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|$)", re.DOTALL)
_YAML_KEY = re.compile(r"^[\w-]+:", re.MULTILINE)
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def parse_markdown(data: bytes, charset: str | None = None) -> ParsedDocument:
    """ATX headings (``#`` to ``######``) start sections; the title is the first H1.

    YAML front matter is dropped (its ``title:`` is the title when there is no H1). Lines in
    fenced code blocks are never headings. Setext (underlined) headings stay plain text.
    """
    text = _decode(data, charset)
    front_title = None
    front = _FRONT_MATTER.match(text)
    if front and _YAML_KEY.search(front.group(1)):
        if found := _FRONT_TITLE.search(front.group(1)):
            front_title = found.group(1).strip("\"'") or None
        text = text[front.end() :]
    title: str | None = None
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        if fence is not None:
            match = _FENCE.match(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
        elif match := _FENCE.match(line):
            fence = match.group(1)
        elif match := _ATX_HEADING.fullmatch(line):
            _add_section(sections, "\n".join(lines), heading)
            heading, lines = (match.group(2) or "").strip() or None, []
            if title is None and len(match.group(1)) == 1:
                title = heading
            continue
        lines.append(line)
    _add_section(sections, "\n".join(lines), heading)
    return ParsedDocument(title=title or front_title, sections=sections)


def _add_section(sections: list[Section], text: str, heading: str | None, page: int | None = None) -> None:
    text = text.strip()
    if text:
        sections.append(Section(text, heading, page))


# ---------------------------------------------------------------------------- html

_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)


def parse_html(data: bytes, charset: str | None = None) -> ParsedDocument:
    """h1-h6 start sections; script, style, nav (and noscript, template) are dropped.

    Block elements (p, li, div, ...) break paragraphs, ``<br>`` breaks a line, whitespace is
    collapsed outside ``<pre>``, entities are decoded. The title is ``<title>``, else the
    first h1. Markup errors are tolerated, as browsers do.
    """
    if charset is None and (meta := _META_CHARSET.search(data[:4096])):
        charset = meta.group(1).decode("ascii")
    parser = _HTMLText()
    parser.feed(_decode(data, charset))
    parser.close()
    return parser.document()


class _HTMLText(HTMLParser):
    SKIP = frozenset({"script", "style", "nav", "noscript", "template"})
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    BLOCKS = frozenset(
        "p div li ul ol dl dt dd table tr td th thead tbody tfoot caption blockquote pre "
        "section article aside header footer main figure figcaption form fieldset hr "
        "address details summary".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skipping = 0  # depth inside dropped elements
        self.preformatted = 0
        self.in_title = False
        self.title_parts: list[str] = []
        self.heading_tag: str | None = None
        self.heading_parts: list[str] = []
        self.first_h1: str | None = None
        self.sections: list[Section] = []
        self.section_heading: str | None = None
        self.paragraphs: list[str] = []
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif self.skipping:
            return
        elif tag == "title" and not self.title_parts:  # not an <svg> <title> further on
            self.in_title = True
        elif tag in self.HEADINGS:
            self._end_section()
            self.heading_tag, self.heading_parts = tag, []
        elif tag == "br" and self.heading_tag:
            self.heading_parts.append(" ")
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self.BLOCKS:
            self._end_paragraph()
            if tag == "pre":
                self.preformatted += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif self.skipping:
            return
        elif tag == "title":
            self.in_title = False
        elif tag in self.HEADINGS and self.heading_tag:
            heading = _collapse("".join(self.heading_parts)) or None
            if tag == "h1" and self.first_h1 is None:
                self.first_h1 = heading
            self.section_heading, self.heading_tag = heading, None
        elif tag in self.BLOCKS:
            self._end_paragraph()
            if tag == "pre":
                self.preformatted = max(0, self.preformatted - 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.in_title:
            self.title_parts.append(data)
        elif self.heading_tag:
            self.heading_parts.append(data)
        else:
            self.parts.append(data if self.preformatted else re.sub(r"\s+", " ", data))

    def _end_paragraph(self) -> None:
        text = "".join(self.parts)
        self.parts = []
        if not self.preformatted:
            text = "\n".join(line.strip() for line in text.split("\n") if line.strip())
        if text.strip():
            self.paragraphs.append(text.strip("\n"))

    def _end_section(self) -> None:
        self._end_paragraph()
        _add_section(self.sections, "\n\n".join(self.paragraphs), self.section_heading)
        self.paragraphs = []

    def document(self) -> ParsedDocument:
        self._end_section()
        title = _collapse("".join(self.title_parts)) or self.first_h1
        return ParsedDocument(title=title, sections=self.sections)


def _collapse(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------- pdf


def parse_pdf(data: bytes) -> ParsedDocument:
    """One section per page with text (``page`` is 1-based); the title from the metadata.

    A PDF protected by a user password is refused (InvalidArgument); one whose password is
    empty (restrictions only) opens as any viewer would. A corrupt PDF is InvalidArgument.
    """
    from pypdf import PdfReader  # imported here: query workers never parse PDFs

    if b"%PDF-" not in data[:1024]:
        raise InvalidArgument("file is not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _open_with_empty_password(reader):
            raise InvalidArgument("PDF is encrypted: upload a copy without a password")
        metadata = reader.metadata
        title = _collapse(str(metadata.title or "")) if metadata else ""
        sections: list[Section] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text()
            _add_section(sections, _CONTROL.sub("", text.replace("\r\n", "\n")), None, number)
    except InvalidArgument:
        raise
    except Exception as exc:  # pypdf raises many types (KeyError, ValueError...) on bad input
        raise InvalidArgument(f"could not read PDF: {str(exc)[:200] or type(exc).__name__}") from exc
    return ParsedDocument(title=title or None, sections=sections)


def _open_with_empty_password(reader: PdfReader) -> bool:
    try:
        return bool(reader.decrypt(""))
    except Exception:  # a wrong password, an unsupported cipher, no crypto library
        return False


# ---------------------------------------------------------------------------- json lines


def parse_jsonl(data: bytes, max_docs: int, *, max_bytes: int | None = None) -> list[dict]:
    """One document object a line: ``{"id": str, "text"?: str, "title"?: str, "attributes"?: {}, ...}``.

    Returns one ``{"id", "text", "attributes"}`` per document (``text`` None if absent): a
    ``title`` and every other key of the line become attributes of that name beside those of
    ``attributes`` (records exported from elsewhere carry such fields at the top level);
    blank lines are skipped. Raises InvalidArgument naming the line for bad UTF-8, bad JSON,
    NaN/Infinity, wrong types, a ``vector`` (uploads are embedded), a key both at the top
    level and in ``attributes``, or a repeated id; PayloadTooLarge past ``max_docs``
    documents or ``max_bytes``; InvalidArgument if there is no document at all.
    """
    _check_size(data, max_bytes)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    docs: list[dict] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(docs) == max_docs:
            raise PayloadTooLarge(f"more than {max_docs} documents (line {number})")
        doc = _jsonl_document(raw, number)
        if (first := seen.setdefault(doc["id"], number)) != number:
            raise InvalidArgument(f"line {number}: id {doc['id'][:100]!r} repeats line {first}")
        docs.append(doc)
    if not docs:
        raise InvalidArgument("JSON Lines file contains no documents")
    return docs


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _jsonl_document(raw: bytes, number: int) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"line {number}: not valid UTF-8 (byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidArgument(f"line {number}: invalid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"line {number}: expected a JSON object, got {type(obj).__name__}")
    if "vector" in obj:
        raise InvalidArgument(
            f"line {number}: an uploaded file is embedded by the namespace's model and takes no 'vector'; "
            "send documents with vectors to POST /v1/namespaces/{ns}/documents"
        )
    check_id(obj.get("id"), f"line {number}")
    for key in ("text", "title"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise InvalidArgument(f"line {number}: {key!r} must be a string")
    attributes = obj.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InvalidArgument(f"line {number}: 'attributes' must be a JSON object")
    extra = {k: v for k, v in obj.items() if k not in ("id", "text", "attributes") and v is not None}
    if clash := sorted(set(extra) & set(attributes or {})):
        raise InvalidArgument(
            f"line {number}: {', '.join(map(repr, clash))} both at the top level and in 'attributes'"
        )
    return {"id": obj["id"], "text": obj.get("text"), "attributes": {**extra, **(attributes or {})}}
