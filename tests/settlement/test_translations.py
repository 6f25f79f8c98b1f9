"""The staff pages' catalogs kept whole, like the tidy rules: every piece of text a template
shows is marked for translation, and every marked message (templates and Python, as
`scripts/translations` extracts them with babel.cfg) has its Indonesian, with the same
placeholders. A failure names the template or the message; `scripts/translations` refreshes
the .po, and you write the Indonesian of what it added."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from jinja2 import nodes

from settlement import i18n

project_root = Path(__file__).resolve().parent.parent.parent
templates = project_root / "settlement" / "templates"
catalog_path = project_root / "settlement" / "locale" / "id" / "LC_MESSAGES" / "messages.po"
# Text that reads the same in both languages.
untranslated_words = {"CSV"}
# Attributes a person reads (the rest are names, types and values for the server).
read_attributes = {"placeholder", "title", "aria-label", "alt"}
jinja_block = re.compile(
    r"\{%-?\s*trans\b.*?\{%-?\s*endtrans\s*-?%\}|\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S
)


class TextFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.texts += [value or "" for name, value in attrs if name in read_attributes]

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def unmarked_text(source: str) -> list[str]:
    """Words of the markup itself: what is left once the template's own tags (translated
    blocks and expressions) are taken out and the HTML's tags are read."""
    finder = TextFinder()
    finder.feed(jinja_block.sub("", source))
    words = re.findall(r"[^\W\d_]{2,}", " ".join(finder.texts))
    return [word for word in words if word not in untranslated_words]


def unmarked_literals(source: str) -> list[str]:
    """Strings written in an output expression (`{{ x or "same bank" }}`) that read as
    words (a space or a capital; lower-case keys like "approve" are values, not text), outside
    a gettext call."""
    env = i18n.environment("settlement", "en")
    found = []

    def walk(node: nodes.Node) -> None:
        called = isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name)
        if called and node.node.name in ("_", "gettext", "ngettext"):  # type: ignore[attr-defined]
            return
        words = isinstance(node, nodes.Const) and isinstance(node.value, str)
        if words and re.search(r"[^\W\d_]", node.value) and re.search(r"[\sA-Z]", node.value):  # type: ignore[attr-defined]
            found.append(node.value)  # type: ignore[attr-defined]
        for child in node.iter_child_nodes():
            walk(child)

    for output in env.parse(source).find_all(nodes.Output):
        for child in output.nodes:
            if not isinstance(child, nodes.TemplateData):
                walk(child)
    return found


def test_every_template_text_is_marked_for_translation() -> None:
    found = []
    for path in sorted(templates.glob("*.html")):
        source = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {word!r}" for word in unmarked_text(source)]
        found += [f"{path.name}: {text!r}" for text in unmarked_literals(source)]
    assert not found, "text not marked for translation ({% trans %} or _()): " + ", ".join(found)


def test_the_checks_catch_unmarked_text() -> None:
    assert unmarked_text('<p>Saldo <b>{{ x }}</b></p><input placeholder="why">') == ["Saldo", "why"]
    assert unmarked_text('<p>{{ _("Saldo") }} {% trans %}Hello {{ n }}{% endtrans %}</p>') == []
    assert unmarked_text('<a href="/finance/x" data-action="ask-again">CSV</a>') == []
    assert unmarked_literals('{{ x or "same bank" }}{{ "BLOCKED" if y }}') == [
        "same bank",
        "BLOCKED",
    ]
    assert unmarked_literals('{{ form("approve", _("Approve it")) }}{{ x or "-" }}') == []


def extracted_messages(package: str) -> set[str]:
    """What scripts/translations extracts from the package (the sections of babel.cfg)."""
    mapping = (project_root / "babel.cfg").read_text()
    method_map = [
        (pattern, method) for method, pattern in re.findall(r"^\[(\w+): ([^\]]+)\]", mapping, re.M)
    ]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    return {
        message[0] if isinstance(message, tuple) else message
        for _, _, message, _, _ in extract_from_dir(
            str(project_root / package), method_map=method_map, keywords=keywords
        )
    }


def test_every_message_has_its_indonesian() -> None:
    with catalog_path.open("rb") as source:
        catalog = read_po(source, locale="id")
    translated = {
        (m.id[0] if isinstance(m.id, tuple) else m.id): m
        for m in catalog
        if m.id and not m.fuzzy and all(m.string if isinstance(m.string, tuple) else [m.string])
    }
    wanted = extracted_messages("settlement")
    assert len(wanted) > 100  # the extraction found the pages' text at all
    missing = sorted(wanted - set(translated))
    assert not missing, f"no Indonesian in {catalog_path.name} for: {missing}"
    stale = sorted(set(translated) - wanted)
    assert not stale, (
        f"{catalog_path.name} has messages nothing uses (run scripts/translations): {stale}"
    )
    problems = [f"{message.id!r}: {errors}" for message, errors in catalog.check()]
    assert not problems, problems  # e.g. a placeholder dropped or renamed in the Indonesian


def test_indonesian_is_the_default_and_english_the_choice() -> None:
    assert i18n.negotiate("") == "id"
    assert i18n.negotiate("fr-FR,fr;q=0.9") == "id"
    assert i18n.negotiate("en-US,en;q=0.9,id;q=0.8") == "en"
    assert i18n.negotiate("en;q=0.4, id-ID;q=0.9") == "id"
    indonesian = i18n.environment("settlement", "id")
    assert indonesian.from_string('{{ _("Exceptions") }} {{ 1500000 | rupiah }}').render() == (
        "Pengecualian Rp 1.500.000"
    )
    english = i18n.environment("settlement", "en")
    assert english.from_string('{{ _("Exceptions") }} {{ 1500000 | rupiah }}').render() == (
        "Exceptions Rp 1,500,000"
    )
