"""Uploaded files -> sections: every format, and every way a client can send a bad one."""

from __future__ import annotations

import io
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from ingest.parsers import (
    EXTENSIONS,
    ParsedDocument,
    Section,
    file_kind,
    parse_file,
    parse_html,
    parse_jsonl,
    parse_markdown,
    parse_pdf,
    parse_text,
)
from vectordb.errors import InvalidArgument, PayloadTooLarge


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A real PDF with one line of Helvetica text a page ("" = a page without text)."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        content = DecodedStreamObject()
        content.set_data(f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1"))
        page.replace_contents(content)
    if title is not None:
        writer.add_metadata({"/Title": title})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypt(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ---------------------------------------------------------------------------- text


def test_text_is_one_section_without_title():
    doc = parse_text(b"Hello\r\nworld.\r\n\r\nSecond paragraph.\n")
    assert doc == ParsedDocument(title=None, sections=[Section("Hello\nworld.\n\nSecond paragraph.")])


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffcafé".encode(),  # UTF-8 with a byte-order mark
        "\ufeffcafé".encode("utf-16-le"),
        "\ufeffcafé".encode("utf-16-be"),
    ],
)
def test_text_byte_order_marks(data):
    assert parse_text(data).sections == [Section("café")]


def test_text_charset_from_content_type():
    data = "déjà vu".encode("latin-1")
    with pytest.raises(InvalidArgument, match="not valid utf-8"):
        parse_text(data)
    doc = parse_file("notes.txt", data, "text/plain; charset=ISO-8859-1")
    assert doc.sections == [Section("déjà vu")]


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01",  # a JPEG header: not UTF-8
        b"abc\x00def",  # NUL bytes: binary
        bytes(range(1, 32)) * 4,  # control characters only
    ],
)
def test_text_rejects_binary(data):
    with pytest.raises(InvalidArgument):
        parse_text(data)


def test_text_rejects_unknown_charset():
    with pytest.raises(InvalidArgument, match="unknown charset"):
        parse_file("a.txt", b"abc", "text/plain; charset=no-such-codec")


def test_text_drops_stray_control_characters():
    assert parse_text(b"a\x1bb\tc\x0cd").sections == [Section("ab\tc\n\nd")]


# ---------------------------------------------------------------------------- markdown

MARKDOWN = """\
---
title: "Front matter title"
tags: [a, b]
---
Intro before any heading.

# The Title #

First paragraph.

## Install

Run this:

```bash
# not a heading: a shell comment
pip install thing
```

#hashtag is not a heading either.

### Empty section
#### Usage

Use it.
"""


def test_markdown_sections_and_title():
    doc = parse_markdown(MARKDOWN.encode())
    assert doc.title == "The Title"
    assert [(s.heading, s.page) for s in doc.sections] == [
        (None, None),
        ("The Title", None),
        ("Install", None),
        ("Usage", None),
    ]
    assert doc.sections[0].text == "Intro before any heading."
    install = doc.sections[2].text
    assert "# not a heading: a shell comment" in install
    assert install.endswith("#hashtag is not a heading either.")
    assert "tags:" not in "".join(s.text for s in doc.sections)


def test_markdown_title_falls_back_to_front_matter():
    doc = parse_markdown(b"---\ntitle: Notes\n---\n## Part\n\nText.\n")
    assert doc.title == "Notes"
    assert doc.sections == [Section("Text.", "Part")]


def test_markdown_without_headings():
    doc = parse_markdown(b"Just text.\n\n---\n\nMore text.")
    assert doc.title is None
    assert doc.sections == [Section("Just text.\n\n---\n\nMore text.")]


# ---------------------------------------------------------------------------- html

HTML = """<!DOCTYPE html>
<html><head>
  <meta charset="utf-8">
  <title>  Page   title &amp; more </title>
  <style>body { color: red }</style>
  <script>var x = "<h1>not text</h1>";</script>
</head>
<body>
  <nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>
  <p>Before the first heading.</p>
  <h1>Main <em>heading</em></h1>
  <p>First   paragraph with
     an entity: caf&eacute; &lt;tag&gt; &#8364;5.</p>
  <div>A div<br>with a line break</div>
  <ul><li>one</li><li>two</li></ul>
  <h2>Code<br>sample</h2>
  <pre>def f():
    return 1</pre>
  <noscript>enable javascript</noscript>
</body></html>
"""


def test_html_sections_text_and_title():
    doc = parse_html(HTML.encode())
    assert doc.title == "Page title & more"
    assert [s.heading for s in doc.sections] == [None, "Main heading", "Code sample"]
    assert doc.sections[0].text == "Before the first heading."
    assert doc.sections[1].text == (
        "First paragraph with an entity: café <tag> €5.\n\nA div\nwith a line break\n\none\n\ntwo"
    )
    assert doc.sections[2].text == "def f():\n    return 1"
    everything = " ".join(s.text for s in doc.sections)
    for dropped in ("color: red", "not text", "Home", "Docs", "javascript"):
        assert dropped not in everything


def test_html_title_falls_back_to_first_h1_and_tolerates_broken_markup():
    doc = parse_html(b"<h2>Sub</h2><p>one<p>two<h1>Top</h1>text</div></span><p>unclosed")
    assert doc.title == "Top"
    assert doc.sections == [Section("one\n\ntwo", "Sub"), Section("text\n\nunclosed", "Top")]


def test_html_meta_charset():
    data = '<html><head><meta charset="windows-1252"></head><p>“quoted” café</p></html>'.encode("cp1252")
    assert parse_html(data).sections == [Section("“quoted” café")]


# ---------------------------------------------------------------------------- pdf


def test_pdf_one_section_per_page_with_text():
    doc = parse_pdf(make_pdf(["Hello page one. Second (sentence).", "", "Page three"], title="Report"))
    assert doc.title == "Report"
    assert doc.sections == [
        Section("Hello page one. Second (sentence).", None, 1),
        Section("Page three", None, 3),
    ]


def test_pdf_without_title_metadata():
    assert parse_pdf(make_pdf(["x"])).title is None


def test_pdf_without_text_is_refused_as_upload():
    pdf = make_pdf(["", ""])
    assert parse_pdf(pdf).sections == []
    with pytest.raises(InvalidArgument, match="no text"):
        parse_file("scan.pdf", pdf)


def test_pdf_encrypted_is_refused():
    with pytest.raises(InvalidArgument, match="encrypted"):
        parse_pdf(encrypt(make_pdf(["secret"]), user_password="pw"))


def test_pdf_with_only_an_owner_password_opens():
    assert parse_pdf(encrypt(make_pdf(["open"]), user_password="")).sections == [Section("open", None, 1)]


@pytest.mark.parametrize("data", [b"", b"hello", b"%PDF-1.7\n", b"%PDF-1.4\n1 0 obj << /Type /Catalog"])
def test_pdf_garbage_is_invalid(data):
    with pytest.raises(InvalidArgument):
        parse_pdf(data)


def test_pdf_corruptions_are_invalid_or_parse():
    """Truncations and flipped bytes of a real PDF: an answer or InvalidArgument, never a crash."""
    pdf = make_pdf(["Some text on page one.", "And page two."], title="T")
    rng = random.Random(7)
    variants = [pdf[:cut] for cut in range(0, len(pdf), max(1, len(pdf) // 40))]
    for _ in range(60):
        data = bytearray(pdf)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        variants.append(bytes(data))
    for data in variants:
        try:
            doc = parse_pdf(data)
        except InvalidArgument:
            continue
        assert all(isinstance(s.text, str) and s.page for s in doc.sections)


# ---------------------------------------------------------------------------- json lines


def test_jsonl_documents():
    data = (b'{"id": "a", "text": "hello"}\r\n\n  \n{"id": "b", "title": "T", "attributes": {"k": [1, 2]}}\n'
            b'{"id": "c", "text": "x", "url": "https://e.org", "meta": {"y": 1}, "lang": null}')
    assert parse_jsonl(data, max_docs=10) == [
        {"id": "a", "text": "hello", "attributes": {}},
        {"id": "b", "text": None, "attributes": {"title": "T", "k": [1, 2]}},
        # Other top-level keys are attributes too (a null one is left out).
        {"id": "c", "text": "x", "attributes": {"url": "https://e.org", "meta": {"y": 1}}},
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a"}', "{nope"], "line 2: invalid JSON"),
        (['{"id": "a"}', "[1, 2]"], "line 2: expected a JSON object"),
        (['{"text": "no id"}'], "line 1: id must be a non-empty string"),
        (['{"id": 7}'], "line 1: id must be"),
        (['{"id": ""}'], "line 1: id must be"),
        (['{"id": "a", "text": 5}'], "line 1: 'text' must be a string"),
        (['{"id": "a", "title": ["x"]}'], "line 1: 'title' must be a string"),
        (['{"id": "a", "attributes": [1]}'], "line 1: 'attributes' must be a JSON object"),
        (['{"id": "a", "vector": [1]}'], "line 1: an uploaded file is embedded"),
        (['{"id": "a", "k": 1, "attributes": {"k": 2}}'], "line 1: 'k' both at the top level and in 'attributes'"),
        (['{"id": "a", "attributes": {"x": NaN}}'], "line 1: invalid JSON: NaN"),
        (['{"id": "a"}', "", '{"id": "a"}'], "line 3: id 'a' repeats line 1"),
        ([], "no documents"),
    ],
)
def test_jsonl_errors_name_the_line(lines, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_jsonl("\n".join(lines).encode(), max_docs=10)


def test_jsonl_bad_utf8_names_the_line():
    with pytest.raises(InvalidArgument, match="line 2: not valid UTF-8"):
        parse_jsonl(b'{"id": "a"}\n{"id": "\xff"}', max_docs=10)


def test_jsonl_limits():
    data = "\n".join(json.dumps({"id": str(n)}) for n in range(4)).encode()
    assert len(parse_jsonl(data, max_docs=4)) == 4
    with pytest.raises(PayloadTooLarge, match="more than 3 documents"):
        parse_jsonl(data, max_docs=3)
    with pytest.raises(PayloadTooLarge):
        parse_jsonl(data, max_docs=10, max_bytes=10)


# ---------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("a.TXT", None, "text"),
        ("a.md", "application/octet-stream", "markdown"),
        ("page.HTM", None, "html"),
        ("report.pdf", None, "pdf"),
        ("docs.jsonl", None, "jsonl"),
        ("upload", "text/markdown; charset=utf-8", "markdown"),
        ("blob.bin", "Application/PDF", "pdf"),
        ("noext", "application/x-ndjson", "jsonl"),
    ],
)
def test_file_kind(filename, content_type, kind):
    assert file_kind(filename, content_type) == kind


def test_unsupported_type_lists_supported_ones():
    with pytest.raises(InvalidArgument) as info:
        parse_file("deck.pptx", b"PK\x03\x04", "application/vnd.ms-powerpoint")
    for extension in EXTENSIONS:
        assert extension in info.value.message


def test_parse_file_dispatches():
    assert parse_file("a.md", b"# T\n\nx").title == "T"
    assert parse_file("a.html", b"<title>T</title><p>x</p>").title == "T"
    assert parse_file("a.pdf", make_pdf(["x"])).sections == [Section("x", None, 1)]
    assert parse_file("a", b"plain", "text/plain").sections == [Section("plain")]


def test_parse_file_refuses_jsonl_empty_files_and_large_ones():
    with pytest.raises(InvalidArgument, match="JSON Lines"):
        parse_file("docs.jsonl", b'{"id": "a"}')
    with pytest.raises(InvalidArgument, match="no text"):
        parse_file("empty.txt", b"  \n\n ")
    with pytest.raises(PayloadTooLarge):
        parse_file("a.txt", b"x" * 11, max_bytes=10)
    assert parse_file("a.txt", b"x" * 10, max_bytes=10).sections == [Section("x" * 10)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), filename=st.sampled_from(["a.txt", "a.md", "a.html", "a.pdf"]))
def test_any_bytes_parse_or_are_invalid(data, filename):
    try:
        doc = parse_file(filename, data)
    except InvalidArgument:
        return
    assert doc.sections and all(s.text.strip() for s in doc.sections)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(st.binary(max_size=40), st.just(b'{"id": "x"}')), max_size=6))
def test_any_jsonl_bytes_parse_or_are_invalid(lines):
    try:
        docs = parse_jsonl(b"\n".join(lines), max_docs=3)
    except InvalidArgument:
        return
    assert 1 <= len(docs) <= 3
